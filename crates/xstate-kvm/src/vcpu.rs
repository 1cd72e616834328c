//! Safe access to one vCPU's extended state: the XSAVE image sized by KVM_CAP_XSAVE2, XCR0
//! and the extended-state MSRs, and a restore whose order (XCR0, XSS, XFD before the image,
//! seed 001) is the only one the types allow: an image cannot be written before the controls.
//!
//! Two handles share one implementation: [`Vcpu`], created by this crate ([`crate::Vm`]), and
//! [`BorrowedVcpu`], a view of a `kvm_ioctls::VcpuFd` the VMM created, configured and keeps.
//!
//! What does not change for a vCPU is read once and cached (DESIGN §6): KVM_CAP_XSAVE2 (it
//! depends only on the process's guest permissions, which the kernel locks when the first vCPU
//! is created, so it is fixed once any vCPU exists), the host MXCSR mask (FXSAVE of this CPU,
//! never bytes of a guest image), the guest CPUID's leaf 0xD (read on first need and read again
//! before anything is refused because of it), and the ioctl buffers. A capture issues exactly
//! KVM_GET_XCRS, one KVM_GET_MSRS for every listed extended-state MSR, and KVM_GET_XSAVE2; a
//! restore exactly KVM_SET_XCRS, one KVM_SET_MSRS and KVM_SET_XSAVE.
//!
//! ```compile_fail
//! # let vcpu: xstate_kvm::Vcpu = unimplemented!();
//! # let img = xstate_kvm::XsaveBuffer::zeroed(4096);
//! vcpu.set_xsave(&img)?; // only `ControlsSet` (from `set_controls`) has `set_xsave`
//! # Ok::<(), xstate_kvm::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kvm_bindings::{kvm_msr_entry, kvm_xcr, kvm_xcrs, Msrs, Xsave};
use kvm_ioctls::{VcpuFd, VmFd};
use xstate::components::mask;

use crate::error::{Error, Result};
use crate::kvm::KvmFacts;
use crate::msr;
use crate::state::{VcpuXstate, XstateControls};
use crate::vm::xsave2_size_of;
use crate::xsave::{KvmXsaveRules, XsaveBuffer, KVM_XSAVE_SIZE};

/// The MXCSR mask of this CPU: the MXCSR_MASK field an FXSAVE writes (SDM Vol. 1 §10.5.1.2,
/// §11.6.6; 0 there means the default 0xFFBF). KVM_SET_XSAVE refuses MXCSR bits outside the
/// mask the kernel computed the same way at boot (DESIGN §6), so this is KVM's mask; bytes
/// 28..31 of a vCPU image are whatever the last KVM_SET_XSAVE wrote and must not be trusted.
pub fn host_mxcsr_mask() -> u32 {
    static MASK: OnceLock<u32> = OnceLock::new();
    *MASK.get_or_init(|| xstate::hw::Host::detect().mxcsr_mask())
}

/// Number of u32 entries past `struct kvm_xsave` for a buffer of `size` bytes.
fn fam_len(size: usize) -> usize {
    size.saturating_sub(KVM_XSAVE_SIZE).div_ceil(4)
}

/// Copies the first `out.len()` bytes of a kvm-bindings XSAVE buffer into `out` (the fixed
/// 4096-byte region, then the FAM words; little-endian, as the kernel wrote them).
fn xsave_to_bytes(x: &Xsave, out: &mut [u8]) {
    let (head, tail) = out.split_at_mut(out.len().min(KVM_XSAVE_SIZE));
    copy_words_out(&x.as_fam_struct_ref().xsave.region, head);
    copy_words_out(x.as_slice(), tail);
}

fn copy_words_out(words: &[u32], out: &mut [u8]) {
    let full = out.len() / 4;
    let mut chunks = out.chunks_exact_mut(4);
    for (c, w) in (&mut chunks).zip(words) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if let Some(w) = words.get(full) {
        let n = rest.len();
        rest.copy_from_slice(&w.to_le_bytes()[..n]);
    }
}

/// Fills a kvm-bindings XSAVE buffer with `bytes`, zero-padded to its end.
fn bytes_to_xsave(bytes: &[u8], x: &mut Xsave) {
    let (head, tail) = bytes.split_at(bytes.len().min(KVM_XSAVE_SIZE));
    // SAFETY: the reference is used only to fill the fixed 1024-word `region`; the FAM
    // length field, which this function must not change, is left alone.
    copy_words_in(head, unsafe { &mut x.as_mut_fam_struct().xsave.region });
    copy_words_in(tail, x.as_mut_slice());
}

fn copy_words_in(bytes: &[u8], words: &mut [u32]) {
    let chunks = bytes.chunks_exact(4);
    let rest = chunks.remainder();
    let full = bytes.len() / 4;
    for (w, c) in words.iter_mut().zip(chunks) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    if let Some(w) = words.get_mut(full) {
        let mut b = [0u8; 4];
        b[..rest.len()].copy_from_slice(rest);
        *w = u32::from_le_bytes(b);
    }
    let zero_from = full + usize::from(!rest.is_empty());
    if let Some(z) = words.get_mut(zero_from..) {
        z.fill(0);
    }
}

fn alloc_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Unexpected {
        op: format!("allocating {what}"),
        what: format!("{e:?}"),
    }
}

/// Reusable ioctl buffers and the facts read lazily.
struct Scratch {
    /// The KVM_GET_XSAVE2 / KVM_SET_XSAVE buffer (4096 + FAM bytes ≥ KVM_CAP_XSAVE2).
    xsave: Xsave,
    /// KVM_GET_MSRS request: every listed extended-state MSR.
    get_msrs: Msrs,
    /// KVM_SET_MSRS request, rebuilt only when the set of MSRs changes.
    set_msrs: Msrs,
    /// CPUID.(0xD,0):EDX:EAX of the guest CPUID (KVM_GET_CPUID2), when read.
    guest_0d: Option<u64>,
    /// The KVM_SET_XSAVE rules for the current `guest_0d`.
    rules: Option<KvmXsaveRules>,
}

/// What does not change for one vCPU, and its buffers.
struct VcpuCache {
    /// KVM_CAP_XSAVE2 (`None`: a kernel without it, 4096-byte KVM_GET/SET_XSAVE).
    xsave2: Option<usize>,
    mxcsr_mask: u32,
    scratch: Mutex<Scratch>,
}

impl VcpuCache {
    /// Reads KVM_CAP_XSAVE2 of `vm` (fixed from now on: a vCPU exists, so the guest
    /// permissions it depends on are locked) and allocates the buffers.
    ///
    /// Facts read before a later permission grant stay valid but conservative: permissions
    /// only grow, so a component permitted after [`KvmFacts::read`] is refused, never assumed.
    fn new(vm: &VmFd, facts: &KvmFacts) -> Result<Self> {
        let xsave2 = xsave2_size_of(vm)?;
        let size = xsave2.unwrap_or(KVM_XSAVE_SIZE);
        let xsave = Xsave::new(fam_len(size)).map_err(|e| alloc_error("the XSAVE buffer", e))?;
        let entries: Vec<kvm_msr_entry> = facts
            .xstate_msrs
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let get_msrs = Msrs::from_entries(&entries).map_err(|e| alloc_error("KVM_GET_MSRS", e))?;
        let set_msrs = Msrs::new(0).map_err(|e| alloc_error("KVM_SET_MSRS", e))?;
        Ok(VcpuCache {
            xsave2,
            mxcsr_mask: host_mxcsr_mask(),
            scratch: Mutex::new(Scratch {
                xsave,
                get_msrs,
                set_msrs,
                guest_0d: None,
                rules: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Scratch> {
        // The scratch buffers hold no invariant a panic could break (their sizes never change
        // after construction): a poisoned lock is still usable.
        self.scratch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The implementation both handles share: a vCPU fd, the KVM facts and the vCPU's cache.
#[derive(Clone, Copy)]
struct Access<'a> {
    fd: &'a VcpuFd,
    facts: &'a KvmFacts,
    cache: &'a VcpuCache,
}

impl Access<'_> {
    fn xsave_size(&self) -> usize {
        self.cache.xsave2.unwrap_or(KVM_XSAVE_SIZE)
    }

    /// KVM_GET_XSAVE2 (or KVM_GET_XSAVE) into `out`, resized to the buffer size.
    fn get_xsave_into(&self, s: &mut Scratch, out: &mut XsaveBuffer) -> Result<()> {
        match self.cache.xsave2 {
            Some(_) => {
                // SAFETY: `s.xsave` holds 4096 + 4·fam_len(size) ≥ `size` bytes, and `size` is
                // KVM_CAP_XSAVE2 read after this vCPU existed: the kernel derives it from the
                // process's guest permissions, which it locks when the first vCPU is created
                // (DESIGN §6: later requests fail with EBUSY), so it cannot grow since; KVM
                // writes at most that many bytes. The kernel cannot write past `s.xsave`.
                unsafe { self.fd.get_xsave2(&mut s.xsave) }
                    .map_err(|e| Error::ioctl("KVM_GET_XSAVE2", e))?;
            }
            None => {
                let x = self
                    .fd
                    .get_xsave()
                    .map_err(|e| Error::ioctl("KVM_GET_XSAVE", e))?;
                // SAFETY: only the fixed 1024-word `region` is written; the FAM length stays.
                unsafe { s.xsave.as_mut_fam_struct().xsave.region = x.region };
            }
        }
        let v = out.bytes_mut_vec();
        v.resize(self.xsave_size(), 0);
        xsave_to_bytes(&s.xsave, v);
        Ok(())
    }

    fn get_xcr0(&self) -> Result<u64> {
        let x = self
            .fd
            .get_xcrs()
            .map_err(|e| Error::ioctl("KVM_GET_XCRS", e))?;
        let n = (x.nr_xcrs as usize).min(x.xcrs.len());
        x.xcrs[..n]
            .iter()
            .find(|c| c.xcr == 0)
            .map(|c| c.value)
            .ok_or_else(|| Error::Unexpected {
                op: "KVM_GET_XCRS".into(),
                what: format!("no XCR0 among {n} entries"),
            })
    }

    fn get_msr(&self, index: u32) -> Result<Option<u64>> {
        let mut m = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| alloc_error("KVM_GET_MSRS", e))?;
        let n = self
            .fd
            .get_msrs(&mut m)
            .map_err(|e| Error::ioctl(format!("KVM_GET_MSRS({})", msr::name_of(index)), e))?;
        Ok(if n == 1 {
            m.as_slice().first().map(|e| e.data)
        } else {
            None
        })
    }

    /// Every listed extended-state MSR this vCPU lets the host read, in one KVM_GET_MSRS.
    /// KVM stops at the first MSR it refuses (the count it returns says which); that one is
    /// left out and the rest are read again, so a refusal costs one more ioctl, never a value.
    fn get_xstate_msrs_into(&self, s: &mut Scratch, out: &mut BTreeMap<u32, u64>) -> Result<()> {
        let want = s.get_msrs.as_slice().len();
        if want == 0 {
            out.clear();
            return Ok(());
        }
        let n = self
            .fd
            .get_msrs(&mut s.get_msrs)
            .map_err(|e| Error::ioctl("KVM_GET_MSRS(extended-state MSRs)", e))?;
        if n == want {
            let entries = s.get_msrs.as_slice();
            let same_keys =
                out.len() == want && out.keys().zip(entries).all(|(k, e)| *k == e.index);
            if same_keys {
                for (v, e) in out.values_mut().zip(entries) {
                    *v = e.data;
                }
            } else {
                out.clear();
                out.extend(entries.iter().map(|e| (e.index, e.data)));
            }
            return Ok(());
        }
        // Slow path: one MSR at a time past the refused one.
        out.clear();
        let entries: Vec<kvm_msr_entry> = s.get_msrs.as_slice().to_vec();
        out.extend(entries[..n.min(want)].iter().map(|e| (e.index, e.data)));
        for e in entries.iter().skip(n + 1) {
            if let Some(v) = self.get_msr(e.index)? {
                out.insert(e.index, v);
            }
        }
        Ok(())
    }

    fn capture_into(&self, out: &mut VcpuXstate) -> Result<()> {
        let mut s = self.cache.lock();
        out.controls.xcr0 = self.get_xcr0()?;
        self.get_xstate_msrs_into(&mut s, &mut out.controls.msrs)?;
        self.get_xsave_into(&mut s, &mut out.xsave)
    }

    fn guest_cpuid(&self) -> Result<xstate::cpuid::CpuidDump> {
        let c = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::ioctl("KVM_GET_CPUID2", e))?;
        Ok(crate::kvm::cpuid_dump(&c, "KVM_GET_CPUID2"))
    }

    /// Reads the guest CPUID's leaf 0xD.0 EDX:EAX again and drops the rules built on the old.
    fn refresh_guest_0d(&self, s: &mut Scratch) -> Result<u64> {
        let m = self
            .guest_cpuid()?
            .get(0xd, 0)
            .map(|r| u64::from(r.eax) | u64::from(r.edx) << 32)
            .unwrap_or(0);
        s.guest_0d = Some(m);
        // The rules depend on the leaf only through the dynamic components in the buffer.
        let dynamic = self.facts.guest_permitted & mask::DYNAMIC & m;
        if s.rules
            .as_ref()
            .is_some_and(|r| r.dynamic_in_buffer != dynamic)
        {
            s.rules = None;
        }
        Ok(m)
    }

    fn guest_0d(&self, s: &mut Scratch) -> Result<u64> {
        match s.guest_0d {
            Some(m) => Ok(m),
            None => self.refresh_guest_0d(s),
        }
    }

    /// Dynamic components the vCPU's buffer holds: guest permission and enumerated by the
    /// guest CPUID (KVM grows the buffer at KVM_SET_CPUID2 and never shrinks it).
    fn dynamic_in_buffer(&self, s: &mut Scratch) -> Result<u64> {
        let permitted = self.facts.guest_permitted & mask::DYNAMIC;
        if permitted == 0 {
            return Ok(0);
        }
        Ok(permitted & self.guest_0d(s)?)
    }

    fn rules<'s>(&self, s: &'s mut Scratch) -> Result<&'s KvmXsaveRules> {
        if s.rules.is_none() {
            let layout = self.facts.standard.clone().map_err(|e| Error::Unexpected {
                op: "the standard layout of the guest-supported XCR0".into(),
                what: e.to_string(),
            })?;
            let dynamic_in_buffer = self.dynamic_in_buffer(s)?;
            s.rules = Some(KvmXsaveRules {
                buffer_size: self.xsave_size(),
                supported_xcr0: self.facts.guest_xcr0,
                dynamic_in_buffer,
                mxcsr_mask: self.cache.mxcsr_mask,
                layout,
            });
        }
        s.rules.as_ref().ok_or_else(|| Error::Unexpected {
            op: "the KVM_SET_XSAVE rules".into(),
            what: "not built".into(),
        })
    }

    /// Checks an image against the cached rules; a refusal that rests on the guest CPUID
    /// (a dynamic component not in the buffer yet) is re-checked against a fresh read of it.
    fn check_image(&self, s: &mut Scratch, img: &XsaveBuffer) -> Result<()> {
        match self.rules(s)?.check(img) {
            Ok(()) => Ok(()),
            Err(r)
                if r.reasons
                    .iter()
                    .any(|x| x.id() == "xstate_bv_not_permitted") =>
            {
                self.refresh_guest_0d(s)?;
                Ok(self.rules(s)?.check(img)?)
            }
            Err(r) => Err(r.into()),
        }
    }

    fn check_controls(&self, s: &mut Scratch, c: &XstateControls) -> Result<()> {
        let supported = self.facts.guest_xcr0;
        if let Err(e) = xstate::layout::check_xcr0_rules(c.xcr0, supported, 0) {
            return Err(Error::Restore(format!(
                "XCR0 {:#x} is not valid for guests of this KVM (guest-supported XCR0 {supported:#x}): {e}",
                c.xcr0
            )));
        }
        if c.xcr0 & !mask::X87 != 0 {
            let mut enumerated = self.guest_0d(s)?;
            if c.xcr0 & !enumerated & !mask::X87 != 0 {
                // The cached leaf may predate a KVM_SET_CPUID2: refuse only on a fresh read.
                enumerated = self.refresh_guest_0d(s)?;
            }
            let missing = c.xcr0 & !enumerated & !mask::X87;
            if missing != 0 {
                return Err(Error::Restore(format!(
                    "XCR0 {:#x} has components {missing:#x} ({}) that this vCPU's guest CPUID leaf 0xD does not enumerate ({enumerated:#x}); set the guest CPUID (KVM_SET_CPUID2) before restoring",
                    c.xcr0,
                    xstate::components::mask_names(missing)
                )));
            }
        }
        if c.msrs.keys().any(|i| !self.facts.xstate_msrs.contains(i)) {
            let unlisted: Vec<String> = c
                .msrs
                .keys()
                .filter(|i| !self.facts.xstate_msrs.contains(i))
                .map(|&i| format!("{} ({i:#x})", msr::name_of(i)))
                .collect();
            return Err(Error::Restore(format!(
                "KVM_GET_MSR_INDEX_LIST of this KVM lacks {}: that state would be lost",
                unlisted.join(", ")
            )));
        }
        Ok(())
    }

    /// A restore's own rule across controls and image: a component armed in IA32_XFD cannot
    /// be loaded (XRSTOR raises #NM for it, SDM Vol. 1 §13.14), and Linux before 6.19 lets
    /// KVM_SET_XSAVE accept such an image and then faults in the host restore (DESIGN §8).
    fn check_xfd(&self, c: &XstateControls, img: &XsaveBuffer) -> Result<()> {
        let armed = c.xfd().unwrap_or(0) & img.xstate_bv();
        if armed != 0 {
            return Err(Error::Restore(format!(
                "XSTATE_BV {:#x} holds components {armed:#x} ({}) that IA32_XFD {:#x} arms: a vCPU cannot have state in a component XFD disables (SDM Vol. 1 §13.14)",
                img.xstate_bv(),
                xstate::components::mask_names(armed),
                c.xfd().unwrap_or(0)
            )));
        }
        Ok(())
    }

    fn set_xcr0(&self, xcr0: u64) -> Result<()> {
        let mut x = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        x.xcrs[0] = kvm_xcr {
            xcr: 0,
            reserved: 0,
            value: xcr0,
        };
        self.fd.set_xcrs(&x).map_err(|e| {
            Error::ioctl(
                format!(
                    "KVM_SET_XCRS(XCR0 = {xcr0:#x}) (was the guest CPUID with XSAVE set first?)"
                ),
                e,
            )
        })
    }

    /// KVM_SET_MSRS with every MSR of `c` in restore order, in one call (KVM writes the
    /// entries in array order and stops at the first it refuses).
    fn set_msrs(&self, s: &mut Scratch, c: &XstateControls) -> Result<()> {
        if c.msrs.is_empty() {
            return Ok(());
        }
        let mut order: [(usize, u32, u64); msr::XSTATE_MSRS.len()] =
            [(0, 0, 0); msr::XSTATE_MSRS.len()];
        let mut extra: Vec<(usize, u32, u64)> = Vec::new();
        let mut n = 0;
        for (&i, &v) in &c.msrs {
            let (rank, _) = msr::restore_rank(i);
            if n < order.len() {
                order[n] = (rank, i, v);
                n += 1;
            } else {
                extra.push((rank, i, v));
            }
        }
        let order = &mut order[..n];
        order.sort_unstable_by_key(|&(rank, i, _)| (rank, i));
        extra.sort_unstable_by_key(|&(rank, i, _)| (rank, i));
        let total = n + extra.len();
        if s.set_msrs.as_slice().len() != total {
            let entries = vec![kvm_msr_entry::default(); total];
            s.set_msrs =
                Msrs::from_entries(&entries).map_err(|e| alloc_error("KVM_SET_MSRS", e))?;
        }
        for (slot, &(_, index, data)) in s
            .set_msrs
            .as_mut_slice()
            .iter_mut()
            .zip(order.iter().chain(extra.iter()))
        {
            *slot = kvm_msr_entry {
                index,
                data,
                ..Default::default()
            };
        }
        let written = self
            .fd
            .set_msrs(&s.set_msrs)
            .map_err(|e| Error::ioctl("KVM_SET_MSRS(extended-state MSRs)", e))?;
        if written != total {
            let e = s
                .set_msrs
                .as_slice()
                .get(written)
                .copied()
                .unwrap_or_default();
            return Err(Error::Restore(format!(
                "KVM_SET_MSRS({} = {:#x}): KVM refused the value after writing XCR0 and {written} MSR(s) before it (the guest CPUID may lack the feature, or the value has bits the guest cannot have)",
                msr::name_of(e.index),
                e.data
            )));
        }
        Ok(())
    }

    fn set_controls(&self, c: &XstateControls) -> Result<()> {
        self.set_xcr0(c.xcr0)?;
        let mut s = self.cache.lock();
        self.set_msrs(&mut s, c)
    }

    /// KVM_SET_XSAVE of `bytes` padded with zeros (or cut) to the vCPU's buffer.
    fn set_xsave_ioctl(&self, s: &mut Scratch, bytes: &[u8]) -> Result<()> {
        let cut = bytes.len().min(self.xsave_size());
        bytes_to_xsave(&bytes[..cut], &mut s.xsave);
        match self.cache.xsave2 {
            // SAFETY: `s.xsave` holds at least KVM_CAP_XSAVE2 bytes, fixed since a vCPU exists
            // (see `get_xsave_into`); the kernel reads the vCPU's uabi size, which never
            // exceeds it. It only reads.
            Some(_) => unsafe { self.fd.set_xsave2(&s.xsave) },
            // SAFETY: without KVM_CAP_XSAVE2 the kernel reads exactly
            // sizeof(struct kvm_xsave) = 4096 bytes, which `s.xsave` holds.
            None => unsafe { self.fd.set_xsave(&s.xsave.as_fam_struct_ref().xsave) },
        }
        .map_err(|e| Error::ioctl("KVM_SET_XSAVE", e))
    }

    fn set_xsave_checked(&self, img: &XsaveBuffer) -> Result<()> {
        let mut s = self.cache.lock();
        self.check_image(&mut s, img)?;
        self.set_xsave_ioctl(&mut s, img.as_bytes())
    }

    fn restore(&self, state: &VcpuXstate) -> Result<()> {
        let mut s = self.cache.lock();
        self.check_image(&mut s, &state.xsave)?;
        self.check_controls(&mut s, &state.controls)?;
        self.check_xfd(&state.controls, &state.xsave)?;
        self.set_xcr0(state.controls.xcr0)?;
        self.set_msrs(&mut s, &state.controls)?;
        self.set_xsave_ioctl(&mut s, state.xsave.as_bytes())
    }

    /// [`restore`](Self::restore), and when it fails after a write (KVM refusing an MSR
    /// value or the image after XCR0 was set), the state captured just before written back.
    fn restore_or_roll_back(&self, state: &VcpuXstate) -> Result<()> {
        let mut before = VcpuXstate {
            controls: XstateControls::default(),
            xsave: XsaveBuffer::zeroed(0),
        };
        self.capture_into(&mut before)?;
        let Err(e) = self.restore(state) else {
            return Ok(());
        };
        // KVM wrote `before` itself: it is written back without this crate's checks.
        let back = (|| {
            self.set_xcr0(before.controls.xcr0)?;
            let mut s = self.cache.lock();
            self.set_msrs(&mut s, &before.controls)?;
            self.set_xsave_ioctl(&mut s, before.xsave.as_bytes())
        })();
        match back {
            Ok(()) => Err(e),
            Err(b) => Err(Error::Restore(format!(
                "{e}; writing back the state captured before it failed too: {b}"
            ))),
        }
    }

    fn xsave_rules(&self) -> Result<KvmXsaveRules> {
        let mut s = self.cache.lock();
        Ok(self.rules(&mut s)?.clone())
    }
}

/// The methods [`Vcpu`] and [`BorrowedVcpu`] share, each forwarding to [`Access`].
macro_rules! xstate_methods {
    () => {
        /// The XSAVE buffer size KVM uses for this vCPU (KVM_CAP_XSAVE2 of its VM, read once:
        /// it is fixed once a vCPU exists), 4096 without the capability.
        pub fn xsave_size(&self) -> Result<usize> {
            Ok(self.access().xsave_size())
        }

        /// Reads the vCPU's XSAVE image (KVM_GET_XSAVE2, or KVM_GET_XSAVE on kernels without
        /// KVM_CAP_XSAVE2), standard form, exactly KVM_CAP_XSAVE2 bytes.
        pub fn get_xsave(&self) -> Result<XsaveBuffer> {
            let a = self.access();
            let mut out = XsaveBuffer::zeroed(0);
            let mut s = a.cache.lock();
            a.get_xsave_into(&mut s, &mut out)?;
            Ok(out)
        }

        /// The host MXCSR mask KVM_SET_XSAVE applies ([`host_mxcsr_mask`]: FXSAVE of this
        /// CPU), never bytes 28..31 of the vCPU's image, which the last KVM_SET_XSAVE wrote.
        pub fn mxcsr_mask(&self) -> Result<u32> {
            Ok(self.access().cache.mxcsr_mask)
        }

        /// The rules KVM_SET_XSAVE applies to this vCPU (DESIGN §6).
        pub fn xsave_rules(&self) -> Result<KvmXsaveRules> {
            self.access().xsave_rules()
        }

        /// Dynamic components this vCPU's XSAVE buffer holds: permitted for guests and
        /// enumerated by its guest CPUID leaf 0xD (KVM grows the buffer when KVM_SET_CPUID2
        /// exposes them). Reads the guest CPUID.
        pub fn dynamic_in_buffer(&self) -> Result<u64> {
            let a = self.access();
            let mut s = a.cache.lock();
            a.refresh_guest_0d(&mut s)?;
            a.dynamic_in_buffer(&mut s)
        }

        /// XCR0 (KVM_GET_XCRS).
        pub fn get_xcr0(&self) -> Result<u64> {
            self.access().get_xcr0()
        }

        /// Reads one MSR (KVM_GET_MSRS with one entry); `None` when KVM refuses it for this
        /// vCPU (for example a CET MSR while the guest CPUID has no CET).
        pub fn get_msr(&self, index: u32) -> Result<Option<u64>> {
            self.access().get_msr(index)
        }

        /// Every extended-state MSR KVM lists that this vCPU lets the host read (one
        /// KVM_GET_MSRS).
        pub fn get_xstate_msrs(&self) -> Result<BTreeMap<u32, u64>> {
            let a = self.access();
            let mut out = BTreeMap::new();
            let mut s = a.cache.lock();
            a.get_xstate_msrs_into(&mut s, &mut out)?;
            Ok(out)
        }

        /// The extended-state MSRs KVM lists (in restore order); those a capture cannot read
        /// are refused by this vCPU (its CPUID lacks the feature).
        pub fn listed_xstate_msrs(&self) -> &[u32] {
            &self.access().facts.xstate_msrs
        }

        /// Captures the vCPU's complete extended state: XCR0 (KVM_GET_XCRS), the
        /// extended-state MSRs (one KVM_GET_MSRS), the XSAVE image (KVM_GET_XSAVE2). The vCPU
        /// must not be running.
        pub fn capture(&self) -> Result<VcpuXstate> {
            let mut out = VcpuXstate {
                controls: XstateControls::default(),
                xsave: XsaveBuffer::zeroed(0),
            };
            self.access().capture_into(&mut out)?;
            Ok(out)
        }

        /// [`capture`](Self::capture) into an existing value, reusing its buffers: no
        /// allocation once `out` has held a capture of this vCPU. On error `out` is
        /// unspecified (partly overwritten); the vCPU is untouched.
        pub fn capture_into(&self, out: &mut VcpuXstate) -> Result<()> {
            self.access().capture_into(out)
        }

        /// Restores a complete extended state. Everything is checked first (the image
        /// against [`KvmXsaveRules`], XCR0 against the guest-supported mask, the XSETBV rules
        /// and the guest CPUID's leaf 0xD, every MSR listed by KVM, no state in a component
        /// IA32_XFD arms); then XCR0 (KVM_SET_XCRS), IA32_XSS, IA32_XFD, IA32_XFD_ERR and the
        /// CET MSRs (one KVM_SET_MSRS, in that order) and the XSAVE image last.
        ///
        /// The guest CPUID (KVM_SET_CPUID2) must be set before: KVM checks XCR0 and the MSRs
        /// against it. A refusal by these checks writes nothing; should KVM itself refuse a
        /// later step (an MSR value, which these checks cannot judge), the error names the step
        /// and what was already written: use
        /// [`restore_or_roll_back`](Self::restore_or_roll_back) where the vCPU must then be as
        /// it was.
        pub fn restore(&self, state: &VcpuXstate) -> Result<()> {
            self.access().restore(state)
        }

        /// [`restore`](Self::restore) that leaves the vCPU as it was when it fails: the
        /// current state is captured first (KVM_GET_XCRS, KVM_GET_MSRS, KVM_GET_XSAVE2) and
        /// written back should KVM refuse a step after the first write. A refusal by the checks
        /// writes nothing anyway. Costs the capture on every call (about twice a restore).
        pub fn restore_or_roll_back(&self, state: &VcpuXstate) -> Result<()> {
            self.access().restore_or_roll_back(state)
        }

        /// The guest CPUID set with KVM_SET_CPUID2 (KVM_GET_CPUID2), as a [`CpuidDump`];
        /// empty when none was set yet.
        ///
        /// [`CpuidDump`]: xstate::cpuid::CpuidDump
        pub fn guest_cpuid(&self) -> Result<xstate::cpuid::CpuidDump> {
            self.access().guest_cpuid()
        }

        /// Checks controls against this KVM and this vCPU's guest CPUID without writing
        /// anything: XCR0 valid (XSETBV rules) within the guest-supported XCR0 and within what
        /// the guest CPUID's leaf 0xD enumerates (KVM_SET_XCRS checks that), every MSR listed
        /// by KVM.
        pub fn check_controls(&self, c: &XstateControls) -> Result<()> {
            let a = self.access();
            let mut s = a.cache.lock();
            a.check_controls(&mut s, c)
        }

        /// Step 1 of a restore: writes XCR0 (KVM_SET_XCRS) and then the extended-state MSRs in
        /// restore order (IA32_XSS, IA32_XFD, IA32_XFD_ERR, CET; one KVM_SET_MSRS). The
        /// returned token is the only way to write an XSAVE image, so the image always comes
        /// after them (seed 001).
        pub fn set_controls(&self, c: &XstateControls) -> Result<ControlsSet<'_>> {
            let a = self.access();
            a.set_controls(c)?;
            Ok(ControlsSet { access: a })
        }
    };
}

/// A vCPU created by [`crate::Vm::create_vcpu`].
///
/// ```no_run
/// let vm = xstate_kvm::Kvm::open()?.create_vm()?;
/// let vcpu = vm.create_vcpu(0)?;
/// let state = vcpu.capture()?;
/// let other = vm.create_vcpu(1)?;
/// other.restore(&state)?;
/// # Ok::<(), xstate_kvm::Error>(())
/// ```
pub struct Vcpu {
    fd: VcpuFd,
    facts: Arc<KvmFacts>,
    cache: VcpuCache,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").finish_non_exhaustive()
    }
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, vm: &VmFd, facts: Arc<KvmFacts>) -> Result<Self> {
        let cache = VcpuCache::new(vm, &facts)?;
        Ok(Vcpu { fd, facts, cache })
    }

    fn access(&self) -> Access<'_> {
        Access {
            fd: &self.fd,
            facts: &self.facts,
            cache: &self.cache,
        }
    }

    /// The kvm-ioctls vCPU handle (registers, CPUID, …).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The kvm-ioctls vCPU handle, mutable (KVM_RUN).
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    xstate_methods!();
}

/// A vCPU the VMM created, configured and keeps, seen through a borrowed
/// `kvm_ioctls::VcpuFd`: the same checks, ordering and caching as [`Vcpu`].
///
/// What the caller must have done, in the kernel's order (DESIGN §6, §10):
/// 1. requested guest permissions for dynamic components (ARCH_REQ_XCOMP_GUEST_PERM,
///    [`crate::perm::request_guest`]) before KVM_GET_SUPPORTED_CPUID, before
///    [`KvmFacts::read`] and before creating any vCPU (the kernel locks them then);
/// 2. created the VM and the vCPU with kvm-ioctls;
/// 3. set the guest CPUID (KVM_SET_CPUID2) before a restore: KVM checks XCR0 and the MSRs
///    against it, and grows the vCPU's buffer for dynamic components it enumerates.
///
/// Facts read before a permission request are not wrong, only conservative (a component
/// permitted after [`KvmFacts::read`] is refused as not permitted); a restore checks (3) before
/// writing anything. The vCPU must not be running
/// during a capture or a restore.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let kvm = kvm_ioctls::Kvm::new()?;
/// let facts = xstate_kvm::KvmFacts::read(&kvm)?; // after any guest permission request
/// let vm = kvm.create_vm()?;
/// let (a, b) = (vm.create_vcpu(0)?, vm.create_vcpu(1)?);
/// a.set_cpuid2(facts.supported_cpuid())?;
/// b.set_cpuid2(facts.supported_cpuid())?;
/// let src = xstate_kvm::BorrowedVcpu::new(&facts, &vm, &a)?;
/// let dst = xstate_kvm::BorrowedVcpu::new(&facts, &vm, &b)?;
/// dst.restore(&src.capture()?)?;
/// # Ok(()) }
/// ```
pub struct BorrowedVcpu<'a> {
    fd: &'a VcpuFd,
    facts: &'a KvmFacts,
    cache: VcpuCache,
}

impl std::fmt::Debug for BorrowedVcpu<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BorrowedVcpu").finish_non_exhaustive()
    }
}

impl<'a> BorrowedVcpu<'a> {
    /// A view of `fd`, a vCPU of `vm`, with the facts of the KVM that created them. Reads
    /// KVM_CAP_XSAVE2 of `vm` once; allocates the buffers.
    pub fn new(facts: &'a KvmFacts, vm: &VmFd, fd: &'a VcpuFd) -> Result<Self> {
        let cache = VcpuCache::new(vm, facts)?;
        Ok(BorrowedVcpu { fd, facts, cache })
    }

    fn access(&self) -> Access<'_> {
        Access {
            fd: self.fd,
            facts: self.facts,
            cache: &self.cache,
        }
    }

    /// The borrowed kvm-ioctls vCPU handle.
    pub fn fd(&self) -> &'a VcpuFd {
        self.fd
    }

    xstate_methods!();
}

/// Proof that XCR0 and the extended-state MSRs of a vCPU were written: the only way to write
/// its XSAVE image.
pub struct ControlsSet<'a> {
    access: Access<'a>,
}

impl std::fmt::Debug for ControlsSet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlsSet").finish_non_exhaustive()
    }
}

impl ControlsSet<'_> {
    /// Writes the XSAVE image after checking it against [`KvmXsaveRules`]: an image KVM would
    /// refuse, or whose size or XSTATE_BV does not fit this vCPU, never reaches the ioctl.
    pub fn set_xsave(&self, img: &XsaveBuffer) -> Result<()> {
        self.access.set_xsave_checked(img)
    }

    /// Sends an image to KVM without this crate's checks (KVM still applies its own): for
    /// measuring what KVM accepts. The buffer is still sized from KVM_CAP_XSAVE2 (padded with
    /// zeros or cut), so this is memory-safe; bytes beyond the buffer are dropped.
    pub fn set_xsave_unchecked(&self, img: &XsaveBuffer) -> Result<()> {
        let mut s = self.access.cache.lock();
        self.access.set_xsave_ioctl(&mut s, img.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_copies_round_trip_every_length_and_zero_pad() {
        for size in [4096usize, 4100, 11008] {
            let mut x = Xsave::new(fam_len(size)).unwrap();
            for len in [0usize, 1, 3, 4, 5, 4095, 4096, 4097, 4099, size - 1, size] {
                if len > size {
                    continue;
                }
                let src: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
                // Dirty the buffer first: bytes past `len` must come back zero.
                let full = vec![0xffu8; size];
                bytes_to_xsave(&full, &mut x);
                bytes_to_xsave(&src, &mut x);
                let mut out = vec![0xeeu8; size];
                xsave_to_bytes(&x, &mut out);
                assert_eq!(&out[..len], &src[..], "size {size} len {len}");
                assert!(out[len..].iter().all(|&b| b == 0), "size {size} len {len}");
                // A shorter output takes a prefix.
                let mut short = vec![0u8; len];
                xsave_to_bytes(&x, &mut short);
                assert_eq!(short, src);
            }
        }
    }

    /// The batched MSR paths against the real KVM. No KVM of this project lists an
    /// extended-state MSR, so the facts are given always-present MSRs instead (SYSENTER_CS/
    /// ESP/EIP, SDM Vol. 4) and one KVM refuses where the vCPU has no CET (IA32_U_CET): one
    /// KVM_GET_MSRS reads them, a refusal in the middle costs no value, a restore writes them
    /// in one KVM_SET_MSRS and a refused value is reported by name.
    #[test]
    fn batched_msrs_on_the_real_kvm() {
        if let Some(why) = crate::unavailable() {
            println!("skipped: {why}");
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let mut facts = KvmFacts::read(&kvm).unwrap();
        let vm = kvm.create_vm().unwrap();
        let fd = vm.create_vcpu(0).unwrap();
        fd.set_cpuid2(facts.supported_cpuid()).unwrap();
        let u_cet = msr::IA32_U_CET;
        let sysenter = [0x174u32, 0x175, 0x176];
        let cet_readable = {
            let mut m = Msrs::from_entries(&[kvm_msr_entry {
                index: u_cet,
                ..Default::default()
            }])
            .unwrap();
            fd.get_msrs(&mut m).unwrap() == 1
        };
        facts.xstate_msrs = vec![sysenter[0], u_cet, sysenter[1], sysenter[2]];
        let v = BorrowedVcpu::new(&facts, &vm, &fd).unwrap();
        let mut state = v.capture().unwrap();
        for i in sysenter {
            assert!(
                state.controls.msrs.contains_key(&i),
                "{i:#x}: {:?}",
                state.controls
            );
        }
        assert_eq!(state.controls.msrs.contains_key(&u_cet), cet_readable);
        // Restore new values in one KVM_SET_MSRS, read them back.
        state.controls.msrs.remove(&u_cet);
        state.controls.xcr0 = 1;
        for (k, i) in sysenter.into_iter().enumerate() {
            state.controls.msrs.insert(i, 0x10 + 8 * k as u64);
        }
        v.restore(&state).unwrap();
        assert_eq!(v.capture().unwrap().controls.msrs.get(&0x176), Some(&0x20));
        if cet_readable {
            println!("skipped part: this vCPU lets the host read IA32_U_CET");
            return;
        }
        // A value KVM refuses: the error names the MSR and what was written before it. The
        // catalogued CET MSR comes before the others in restore order, so no MSR was.
        state.controls.msrs.insert(u_cet, 1);
        let e = v.restore(&state).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("IA32_U_CET") && text.contains("0 MSR(s) before it"),
            "{text}"
        );
        // XCR0 was written before KVM refused: visible without a roll-back, undone with one.
        assert_eq!(v.get_xcr0().unwrap(), 1);
        let other = VcpuXstate {
            controls: XstateControls {
                xcr0: facts.guest_xcr0 & facts.layout.xcr0_supported() & 0x3,
                msrs: state.controls.msrs.clone(),
            },
            xsave: state.xsave.clone(),
        };
        let before = v.capture().unwrap();
        let e = v.restore_or_roll_back(&other).unwrap_err();
        assert!(e.to_string().contains("IA32_U_CET"), "{e}");
        assert_eq!(v.capture().unwrap(), before, "rolled back");
        if other.controls.xcr0 != 1 {
            // Without the roll-back the refused restore leaves the new XCR0 behind.
            assert!(v.restore(&other).is_err());
            assert_eq!(v.get_xcr0().unwrap(), other.controls.xcr0);
        }
    }
}
