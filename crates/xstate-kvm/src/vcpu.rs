//! Safe access to one vCPU's extended state: the XSAVE image sized by KVM_CAP_XSAVE2, XCR0
//! and the extended-state MSRs, and a restore whose order (XCR0, XSS, XFD before the image,
//! seed 001) is the only one the types allow: an image cannot be written before the controls.
//!
//! ```compile_fail
//! # let vcpu: xstate_kvm::Vcpu = unimplemented!();
//! # let img = xstate_kvm::XsaveBuffer::zeroed(4096);
//! vcpu.set_xsave(&img)?; // only `ControlsSet` (from `set_controls`) has `set_xsave`
//! # Ok::<(), xstate_kvm::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::{kvm_msr_entry, kvm_xcr, kvm_xcrs, Msrs, Xsave};
use kvm_ioctls::{VcpuFd, VmFd};
use xstate::components::mask;

use crate::error::{Error, Result};
use crate::kvm::Facts;
use crate::msr;
use crate::state::{VcpuXstate, XstateControls};
use crate::vm::xsave2_size_of;
use crate::xsave::{KvmXsaveRules, XsaveBuffer, KVM_XSAVE_SIZE};

/// The MXCSR mask the SDM prescribes when a CPU saves MXCSR_MASK as 0 (no DAZ).
const MXCSR_MASK_DEFAULT: u32 = 0xFFBF;

/// A vCPU created by [`crate::Vm::create_vcpu`].
pub struct Vcpu {
    fd: VcpuFd,
    vm: Arc<VmFd>,
    facts: Arc<Facts>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").finish_non_exhaustive()
    }
}

/// Number of u32 entries past `struct kvm_xsave` for a buffer of `size` bytes.
fn fam_len(size: usize) -> usize {
    size.saturating_sub(KVM_XSAVE_SIZE).div_ceil(4)
}

fn xsave_to_bytes(x: &Xsave, size: usize) -> Vec<u8> {
    let s = x.as_fam_struct_ref();
    let mut out = Vec::with_capacity(size.max(KVM_XSAVE_SIZE));
    for w in s.xsave.region.iter().chain(x.as_slice().iter()) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.truncate(size.max(KVM_XSAVE_SIZE));
    out
}

fn bytes_to_xsave(bytes: &[u8], size: usize) -> Result<Xsave> {
    let mut x = Xsave::new(fam_len(size)).map_err(|e| Error::Unexpected {
        op: "allocating the KVM_SET_XSAVE buffer".into(),
        what: format!("{e:?}"),
    })?;
    let mut words = bytes.chunks(4).map(|c| {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        u32::from_le_bytes(w)
    });
    // SAFETY: the reference is used only to fill the fixed 1024-word `region`; the FAM
    // length field, which this function must not change, is left alone.
    let region = unsafe { &mut x.as_mut_fam_struct().xsave.region };
    for slot in region.iter_mut() {
        *slot = words.next().unwrap_or(0);
    }
    for slot in x.as_mut_slice().iter_mut() {
        *slot = words.next().unwrap_or(0);
    }
    Ok(x)
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, vm: Arc<VmFd>, facts: Arc<Facts>) -> Self {
        Vcpu { fd, vm, facts }
    }

    /// The kvm-ioctls vCPU handle (registers, CPUID, …).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The kvm-ioctls vCPU handle, mutable (KVM_RUN).
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// The XSAVE buffer size KVM uses for this vCPU now (KVM_CAP_XSAVE2 on its VM), 4096
    /// without the capability.
    pub fn xsave_size(&self) -> Result<usize> {
        Ok(xsave2_size_of(&self.vm)?.unwrap_or(KVM_XSAVE_SIZE))
    }

    /// Reads the vCPU's XSAVE image (KVM_GET_XSAVE2, or KVM_GET_XSAVE on kernels without
    /// KVM_CAP_XSAVE2), standard form, exactly KVM_CAP_XSAVE2 bytes.
    ///
    /// ```no_run
    /// let vm = xstate_kvm::Kvm::open()?.create_vm()?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let img = vcpu.get_xsave()?;
    /// assert_eq!(img.len(), vm.xsave2_size()?);
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn get_xsave(&self) -> Result<XsaveBuffer> {
        match xsave2_size_of(&self.vm)? {
            Some(size) => {
                let mut x = Xsave::new(fam_len(size)).map_err(|e| Error::Unexpected {
                    op: "allocating the KVM_GET_XSAVE2 buffer".into(),
                    what: format!("{e:?}"),
                })?;
                // SAFETY: `x` holds 4096 + 4·fam_len(size) ≥ `size` bytes, and `size` is
                // KVM_CAP_XSAVE2 queried just now for this process: the kernel sizes it from
                // this process's guest permissions, which only grow, and it writes at most the
                // vCPU's uabi size, which never exceeds it. The kernel cannot write past `x`.
                unsafe { self.fd.get_xsave2(&mut x) }
                    .map_err(|e| Error::ioctl("KVM_GET_XSAVE2", e))?;
                Ok(XsaveBuffer::from_bytes(xsave_to_bytes(&x, size)))
            }
            None => {
                let x = self
                    .fd
                    .get_xsave()
                    .map_err(|e| Error::ioctl("KVM_GET_XSAVE", e))?;
                let mut v = Vec::with_capacity(KVM_XSAVE_SIZE);
                for w in x.region.iter() {
                    v.extend_from_slice(&w.to_le_bytes());
                }
                Ok(XsaveBuffer::from_bytes(v))
            }
        }
    }

    /// The host MXCSR mask as KVM reports it in this vCPU's image (bytes 28..31), or the SDM
    /// default 0xFFBF when it reports 0.
    pub fn mxcsr_mask(&self) -> Result<u32> {
        let m = self.get_xsave()?.mxcsr_mask();
        Ok(if m == 0 { MXCSR_MASK_DEFAULT } else { m })
    }

    /// The rules KVM_SET_XSAVE applies to this vCPU (DESIGN §6).
    pub fn xsave_rules(&self) -> Result<KvmXsaveRules> {
        let supported = self.facts.guest_xcr0;
        let layout = self
            .facts
            .layout
            .standard(supported & !mask::COMPACTED)
            .map_err(|e| Error::Unexpected {
                op: "the standard layout of the guest-supported XCR0".into(),
                what: e.to_string(),
            })?;
        Ok(KvmXsaveRules {
            buffer_size: self.xsave_size()?,
            supported_xcr0: supported,
            dynamic_in_buffer: self.dynamic_in_buffer()?,
            mxcsr_mask: self.mxcsr_mask()?,
            layout,
        })
    }

    /// Dynamic components this vCPU's XSAVE buffer holds: permitted for guests and enumerated
    /// by its guest CPUID leaf 0xD (KVM grows the buffer when KVM_SET_CPUID2 exposes them).
    pub fn dynamic_in_buffer(&self) -> Result<u64> {
        let permitted = crate::perm::guest_permitted()? & mask::DYNAMIC;
        if permitted == 0 {
            return Ok(0);
        }
        let enumerated = self
            .guest_cpuid()?
            .get(0xd, 0)
            .map(|r| u64::from(r.eax) | u64::from(r.edx) << 32)
            .unwrap_or(0);
        Ok(permitted & enumerated)
    }

    /// XCR0 (KVM_GET_XCRS).
    pub fn get_xcr0(&self) -> Result<u64> {
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

    /// Reads one MSR (KVM_GET_MSRS with one entry); `None` when KVM refuses it for this vCPU
    /// (for example a CET MSR while the guest CPUID has no CET).
    pub fn get_msr(&self, index: u32) -> Result<Option<u64>> {
        let mut m = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| Error::Unexpected {
            op: "allocating KVM_GET_MSRS".into(),
            what: format!("{e:?}"),
        })?;
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

    /// Every extended-state MSR KVM lists that this vCPU lets the host read.
    pub fn get_xstate_msrs(&self) -> Result<BTreeMap<u32, u64>> {
        let mut out = BTreeMap::new();
        for &i in &self.facts.xstate_msrs {
            if let Some(v) = self.get_msr(i)? {
                out.insert(i, v);
            }
        }
        Ok(out)
    }

    /// The extended-state MSRs KVM lists (in restore order); those [`get_xstate_msrs`]
    /// cannot read are refused by this vCPU (its CPUID lacks the feature).
    ///
    /// [`get_xstate_msrs`]: Self::get_xstate_msrs
    pub fn listed_xstate_msrs(&self) -> &[u32] {
        &self.facts.xstate_msrs
    }

    /// Captures the vCPU's complete extended state: XCR0, the extended-state MSRs, the XSAVE
    /// image. The vCPU must not be running.
    ///
    /// ```no_run
    /// let vm = xstate_kvm::Kvm::open()?.create_vm()?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let state = vcpu.capture()?;
    /// let other = vm.create_vcpu(1)?;
    /// other.restore(&state)?;
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn capture(&self) -> Result<VcpuXstate> {
        Ok(VcpuXstate {
            controls: XstateControls {
                xcr0: self.get_xcr0()?,
                msrs: self.get_xstate_msrs()?,
            },
            xsave: self.get_xsave()?,
        })
    }

    /// Restores a complete extended state. Everything is checked first (XCR0 against the
    /// guest-supported mask and the XSETBV rules, every MSR listed by KVM, the image against
    /// [`KvmXsaveRules`]); then XCR0, IA32_XSS, IA32_XFD, IA32_XFD_ERR and the CET MSRs are
    /// written, and the XSAVE image last.
    ///
    /// The guest CPUID (KVM_SET_CPUID2) must be set before: KVM checks XCR0 and the MSRs
    /// against it.
    pub fn restore(&self, state: &VcpuXstate) -> Result<()> {
        let rules = self.xsave_rules()?;
        rules.check(&state.xsave)?;
        self.check_controls(&state.controls)?;
        self.set_controls(&state.controls)?
            .set_xsave_with(&state.xsave, &rules)
    }

    /// The guest CPUID set with KVM_SET_CPUID2 (KVM_GET_CPUID2), as a [`CpuidDump`]; empty
    /// when none was set yet.
    ///
    /// [`CpuidDump`]: xstate::cpuid::CpuidDump
    pub fn guest_cpuid(&self) -> Result<xstate::cpuid::CpuidDump> {
        let c = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::ioctl("KVM_GET_CPUID2", e))?;
        Ok(crate::kvm::cpuid_dump(&c, "KVM_GET_CPUID2"))
    }

    /// Checks controls against this KVM and this vCPU's guest CPUID without writing
    /// anything: XCR0 valid (XSETBV rules) within the guest-supported XCR0 and within what
    /// the guest CPUID's leaf 0xD enumerates (KVM_SET_XCRS checks that), every MSR listed by
    /// KVM.
    pub fn check_controls(&self, c: &XstateControls) -> Result<()> {
        let supported = self.facts.guest_xcr0;
        if let Err(e) = xstate::layout::check_xcr0_rules(c.xcr0, supported, 0) {
            return Err(Error::Restore(format!(
                "XCR0 {:#x} is not valid for guests of this KVM (guest-supported XCR0 {supported:#x}): {e}",
                c.xcr0
            )));
        }
        if c.xcr0 & !mask::X87 != 0 {
            let cpuid = self.guest_cpuid()?;
            let enumerated = match cpuid.get(0xd, 0) {
                Some(r) => u64::from(r.eax) | u64::from(r.edx) << 32,
                None => 0,
            };
            let missing = c.xcr0 & !enumerated & !mask::X87;
            if missing != 0 {
                return Err(Error::Restore(format!(
                    "XCR0 {:#x} has components {missing:#x} ({}) that this vCPU's guest CPUID leaf 0xD does not enumerate ({enumerated:#x}); set the guest CPUID (KVM_SET_CPUID2) before restoring",
                    c.xcr0,
                    xstate::components::mask_names(missing)
                )));
            }
        }
        let unlisted: Vec<String> = c
            .msrs
            .keys()
            .filter(|i| !self.facts.xstate_msrs.contains(i))
            .map(|&i| format!("{} ({i:#x})", msr::name_of(i)))
            .collect();
        if !unlisted.is_empty() {
            return Err(Error::Restore(format!(
                "KVM_GET_MSR_INDEX_LIST of this KVM lacks {}: that state would be lost",
                unlisted.join(", ")
            )));
        }
        Ok(())
    }

    /// Step 1 of a restore: writes XCR0 (KVM_SET_XCRS) and then the extended-state MSRs in
    /// restore order (IA32_XSS, IA32_XFD, IA32_XFD_ERR, CET). The returned token is the only
    /// way to write an XSAVE image, so the image always comes after them (seed 001).
    ///
    /// ```no_run
    /// # use xstate_kvm::{Kvm, XstateControls, XsaveBuffer};
    /// let vm = Kvm::open()?.create_vm()?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let state = vcpu.capture()?;
    /// vcpu.set_controls(&state.controls)?.set_xsave(&state.xsave)?;
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn set_controls(&self, c: &XstateControls) -> Result<ControlsSet<'_>> {
        self.set_xcr0(c.xcr0)?;
        let mut order: Vec<(&u32, &u64)> = c.msrs.iter().collect();
        order.sort_by_key(|(i, _)| msr::restore_rank(**i));
        for (&i, &v) in order {
            self.set_msr(i, v)?;
        }
        Ok(ControlsSet { vcpu: self })
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

    fn set_msr(&self, index: u32, value: u64) -> Result<()> {
        let m = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        }])
        .map_err(|e| Error::Unexpected {
            op: "allocating KVM_SET_MSRS".into(),
            what: format!("{e:?}"),
        })?;
        let op = format!("KVM_SET_MSRS({} = {value:#x})", msr::name_of(index));
        let n = self
            .fd
            .set_msrs(&m)
            .map_err(|e| Error::ioctl(op.clone(), e))?;
        if n != 1 {
            return Err(Error::Restore(format!(
                "{op}: KVM refused the value (the guest CPUID may lack the feature, or the value has bits the guest cannot have)"
            )));
        }
        Ok(())
    }
}

/// Proof that XCR0 and the extended-state MSRs of a vCPU were written: the only way to write
/// its XSAVE image.
#[derive(Debug)]
pub struct ControlsSet<'a> {
    vcpu: &'a Vcpu,
}

impl ControlsSet<'_> {
    /// Writes the XSAVE image after checking it against [`KvmXsaveRules`]: an image KVM would
    /// refuse, or whose size or XSTATE_BV does not fit this vCPU, never reaches the ioctl.
    pub fn set_xsave(&self, img: &XsaveBuffer) -> Result<()> {
        let rules = self.vcpu.xsave_rules()?;
        self.set_xsave_with(img, &rules)
    }

    fn set_xsave_with(&self, img: &XsaveBuffer, rules: &KvmXsaveRules) -> Result<()> {
        let bytes = rules.fit(img)?;
        self.ioctl(&bytes)
    }

    /// Sends an image to KVM without this crate's checks (KVM still applies its own): for
    /// measuring what KVM accepts. The buffer is still sized from KVM_CAP_XSAVE2 (padded with
    /// zeros or cut), so this is memory-safe; bytes beyond the buffer are dropped.
    pub fn set_xsave_unchecked(&self, img: &XsaveBuffer) -> Result<()> {
        let size = self.vcpu.xsave_size()?;
        let mut bytes = img.as_bytes().to_vec();
        bytes.resize(size, 0);
        self.ioctl(&bytes)
    }

    fn ioctl(&self, bytes: &[u8]) -> Result<()> {
        match xsave2_size_of(&self.vcpu.vm)? {
            Some(size) => {
                let x = bytes_to_xsave(bytes, size)?;
                // SAFETY: `x` holds 4096 + 4·fam_len(size) ≥ `size` bytes where `size` is
                // KVM_CAP_XSAVE2 queried just now; the kernel reads the vCPU's uabi size,
                // which never exceeds it (see `Vcpu::get_xsave`). It only reads.
                unsafe { self.vcpu.fd.set_xsave2(&x) }.map_err(|e| Error::ioctl("KVM_SET_XSAVE", e))
            }
            None => {
                let x = bytes_to_xsave(bytes, KVM_XSAVE_SIZE)?;
                // SAFETY: without KVM_CAP_XSAVE2 the kernel reads exactly
                // sizeof(struct kvm_xsave) = 4096 bytes, which `x` holds.
                unsafe { self.vcpu.fd.set_xsave(&x.as_fam_struct_ref().xsave) }
                    .map_err(|e| Error::ioctl("KVM_SET_XSAVE", e))
            }
        }
    }
}
