//! Copying a vCPU's state out and in.
//!
//! * **UABI** ([`Engine::get_xsave2`] / [`Engine::set_xsave2`]): the `KVM_GET_XSAVE2` /
//!   `KVM_SET_XSAVE2` semantics of DESIGN.md §6. The size is discoverable
//!   ([`Engine::uabi_size`] = `KVM_CAP_XSAVE2` = max(4096, standard size of the user
//!   features the guest permissions allow); seed 003: "the required size should be
//!   discoverable, not hardcoded"). Copy-out writes the standard form: XSTATE_BV of the user
//!   features only, XCOMP_BV and reserved bytes 0, absent components and gaps zero-filled
//!   (init values), supervisor state left out. Copy-in is checked with the `kvm` profile of
//!   [`crate::validate`] (XSTATE_BV within the host-supported XCR0 and within the container's
//!   user features — AMX before the container grew is refused —, XCOMP_BV 0, bytes 528..575
//!   zero, MXCSR within the host mask); components not in XSTATE_BV go to init; the
//!   container's supervisor state is kept.
//! * **Compacted form** ([`Engine::get_compacted`] / [`Engine::set_compacted`]): the
//!   container's image with supervisor state (CET_S …), for snapshots; copy-in is checked with
//!   the XRSTORS (or compacted XRSTOR) rules and must fit the container.
//!
//! * **XFD on copy-in**: XSTATE_BV bits of components the vCPU's IA32_XFD arms are *cleared*
//!   (the component is loaded as init) and reported in [`CopyIn::cleared_by_xfd`] — Linux
//!   6.19's behaviour ("x86/fpu: Clear XSTATE_BV\[i\] in guest XSAVE state whenever
//!   XFD\[i\]=1", the fix of DESIGN.md §8's regression: with the bit kept, the restore before
//!   the next guest entry raised #NM in the host). Refusing would break Linux's own
//!   `amx_test`, which loads XSAVE state while XFD is armed (DESIGN.md §10). So no later
//!   attach can fault because of what was copied in.
//! * **Order** (seed 001): XCR0 and XFD are restored before the image
//!   ([`Engine::set_xcr0`], [`Engine::set_msr`]); an image carrying a feature the container
//!   does not hold yet (AMX tile data into a fresh vCPU) is refused with that reason.
//!
//! Both are refused while the vCPU is attached (`ebusy`: its state is in the registers) and
//! for confidential vCPUs (`einval`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::error::{err, EngineError, ErrorKind};
use super::{Engine, Scope};
use crate::components::{bits, mask, mask_names};
use crate::convert::{convert, from_fxsave, to_fxsave};
use crate::image::{Xsave, XsaveImage};
use crate::model::Backend;
use crate::strategy::SaveInsn;
use crate::validate::{self, KvmConfig, RestoreConfig, Violation};

fn violations_text(v: &[Violation]) -> String {
    let mut s = String::new();
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&format!("{x}"));
    }
    s
}

/// What a successful copy-in did besides loading the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyIn {
    /// XSTATE_BV bits that were set in the image for components the vCPU's IA32_XFD arms,
    /// cleared (those components are in init state): Linux 6.19, see the module docs.
    pub cleared_by_xfd: u64,
}

fn einval(e: impl core::fmt::Display) -> EngineError {
    EngineError::new(ErrorKind::Einval, format!("{e}"))
}

impl<B: Backend> Engine<B> {
    /// `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)`: the size of a `KVM_GET_XSAVE2` buffer,
    /// max(4096, standard size of the user features the guest permissions allow).
    pub fn uabi_size(&self) -> Result<u32, EngineError> {
        Ok(self.perms.sizes(Scope::Guest, &self.cfg)?.uabi_size)
    }

    fn detached_accessible(&self, id: u32) -> Result<(), EngineError> {
        let v = self.vcpu(id)?;
        if self.attached == Some(id) {
            return err(
                ErrorKind::Ebusy,
                format!(
                    "vCPU {id} is attached: its state is in the registers, not in its container"
                ),
            );
        }
        if v.fpstate.is_confidential() {
            return err(
                ErrorKind::Einval,
                format!("vCPU {id} is confidential: its registers are not accessible"),
            );
        }
        Ok(())
    }

    /// The container's image with only the components of `keep` (others in init state).
    fn container_image(&self, id: u32, keep: u64) -> Result<XsaveImage, EngineError> {
        let fp = &self.vcpu(id)?.fpstate;
        let mut img = if fp.insn() == SaveInsn::Fxsave {
            let g = self.cfg.layout.standard(mask::LEGACY).map_err(einval)?;
            from_fxsave(fp.as_bytes().get(..512).unwrap_or(&[]), &g).map_err(einval)?
        } else {
            fp.image()
                .ok_or_else(|| einval(format!("vCPU {id} has no buffer")))?
                .to_owned_image()
        };
        for c in bits(img.xstate_bv() & !keep) {
            img.clear_component(c).map_err(einval)?;
        }
        Ok(img)
    }

    /// `KVM_GET_XSAVE2`: writes vCPU `id`'s user state in the standard form into `buf` (at
    /// least [`uabi_size`](Self::uabi_size) bytes) and returns the number of bytes written.
    ///
    /// Errors: `enoent`, `ebusy` (attached), `einval` (confidential, short buffer).
    ///
    /// ```
    /// # use xstate::cpuid::CpuidDump;
    /// # use xstate::engine::{Engine, GuestPolicy, Options, Scope};
    /// # use xstate::model::{CpuProfile, ModelCpu};
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"),
    /// #     "/tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt");
    /// # let d = CpuidDump::parse(&std::fs::read_to_string(path).unwrap(), "spr").unwrap();
    /// // Sapphire Rapids (AMX, CET) on the model, XSAVES.
    /// let cpu = ModelCpu::new(CpuProfile::from_dump(&d));
    /// let opts = Options { xcr0: Some(0x602e7), xss: Some(0x1800), ..Options::default() };
    /// let mut e = Engine::new(cpu, opts).unwrap();
    /// e.request_perm(Scope::Guest, 18).unwrap();
    /// e.create_vcpu(0, GuestPolicy { xcr0_max: 0x602e7, xss: 0x1800 }, false).unwrap();
    /// assert_eq!(e.uabi_size().unwrap(), 11008);                // KVM_CAP_XSAVE2
    /// e.attach(0).unwrap();
    /// e.xsetbv(0, 0xe7).unwrap();
    /// e.guest_write(0, 6, &[0xab; 512]).unwrap();
    /// e.detach(0).unwrap();
    /// let mut buf = vec![0u8; 11008];
    /// e.get_xsave2(0, &mut buf).unwrap();
    /// assert_eq!(&buf[1152..1152 + 512], &[0xab; 512][..]);     // standard offset on SPR
    /// assert_eq!(&buf[520..528], &[0; 8]);                       // XCOMP_BV = 0
    /// buf[520] = 1;
    /// let err = e.set_xsave2(0, &buf).unwrap_err();
    /// assert!(err.to_string().starts_with("einval:") && err.message.contains("offset 520"));
    /// ```
    pub fn get_xsave2(&mut self, id: u32, buf: &mut [u8]) -> Result<usize, EngineError> {
        self.detached_accessible(id)?;
        let size = self.uabi_size()? as usize;
        if buf.len() < size {
            return err(
                ErrorKind::Einval,
                format!(
                    "buffer of {} bytes is shorter than KVM_CAP_XSAVE2 = {size} bytes",
                    buf.len()
                ),
            );
        }
        let user = self.vcpu(id)?.fpstate.user_xfeatures();
        let src = self.container_image(id, user)?;
        let g = self.cfg.layout.standard(user).map_err(einval)?;
        let out = convert(&src, &g).map_err(einval)?;
        let b = out.as_bytes();
        let n = b.len().min(size);
        let (head, tail) = buf.split_at_mut(n);
        head.copy_from_slice(b.get(..n).unwrap_or(&[]));
        if let Some(t) = tail.get_mut(..size - n) {
            t.fill(0);
        }
        self.stats.copied_bytes += n as u64;
        Ok(size)
    }

    /// `KVM_SET_XSAVE2`: loads vCPU `id`'s user state from a standard-form `buf`, checked with
    /// the `kvm` rules; the container's supervisor state is kept.
    ///
    /// Errors: `enoent`, `ebusy`, `einval` naming every broken rule with its offset.
    pub fn set_xsave2(&mut self, id: u32, buf: &[u8]) -> Result<CopyIn, EngineError> {
        self.detached_accessible(id)?;
        let fp = &self.vcpu(id)?.fpstate;
        let bv = crate::image::raw_xstate_bv(buf);
        let beyond = bv & self.cfg.user.max_features & !fp.user_xfeatures();
        if buf.len() >= 576 && beyond != 0 {
            return err(
                ErrorKind::Einval,
                format!(
                    "KVM_SET_XSAVE2: XSTATE_BV (offset 512) = {bv:#x} carries {} that vCPU {id}'s container ({}) does not hold yet: restore XCR0 (set_xcr0, KVM_SET_XCRS) and IA32_XFD (set_msr) before the XSAVE image (seed 001: \"XCR0 and XFD have to be restored before XSTATE\")",
                    crate::components::mask_names(beyond),
                    fp.describe()
                ),
            );
        }
        let kcfg = KvmConfig {
            supported_xcr0: self.cfg.user.max_features,
            user_features: fp.user_xfeatures(),
            mxcsr_mask: validate::normalize_mxcsr_mask(self.mxcsr_mask),
        };
        let v = validate::kvm(buf, &kcfg);
        if !v.is_empty() {
            return err(
                ErrorKind::Einval,
                format!("KVM_SET_XSAVE2: {}", violations_text(&v)),
            );
        }
        let g = self
            .cfg
            .layout
            .standard(fp.user_xfeatures())
            .map_err(einval)?;
        let geometry = fp
            .geometry()
            .ok_or_else(|| einval(format!("vCPU {id} has no buffer")))?;
        let own_image = fp
            .image()
            .ok_or_else(|| einval(format!("vCPU {id} has no buffer")))?;
        // KVM copies MXCSR only when x87, SSE or AVX is in XSTATE_BV (the same condition
        // under which it checks it): otherwise MXCSR keeps its init value.
        let mut own;
        let mut bytes = buf;
        if crate::image::raw_xstate_bv(buf) & (mask::X87 | mask::SSE | mask::AVX) == 0 {
            own = buf.to_vec();
            if let Some(m) = own.get_mut(24..28) {
                m.copy_from_slice(&super::fpstate::MXCSR_INIT.to_le_bytes());
            }
            bytes = &own[..];
        }
        let src = Xsave::with_geometry(bytes, g).map_err(einval)?;
        let supervisor = fp.xstate_bv() & !fp.user_xfeatures() & !mask::COMPACTED;
        let mut img = if fp.insn() == SaveInsn::Fxsave {
            let fx = to_fxsave(&src).map_err(einval)?;
            let mut i = own_image.to_owned_image();
            if let Some(d) = i.as_mut_bytes().get_mut(..512) {
                d.copy_from_slice(&fx);
            }
            i
        } else {
            convert(&src, geometry).map_err(einval)?
        };
        for c in bits(supervisor) {
            let data = own_image.component_bytes(c).map_err(einval)?.to_vec();
            img.set_component_bytes(c, &data).map_err(einval)?;
        }
        self.stats.copied_bytes += buf.len() as u64;
        let fp = &mut self.vcpu_mut(id)?.fpstate;
        let xfd = fp.xfd();
        fp.replace_image(img)?;
        Ok(CopyIn {
            cleared_by_xfd: fp.clear_armed(xfd),
        })
    }

    /// The container's image in the compacted form, supervisor state included (for
    /// snapshots): XCOMP_BV = bit 63 | the container's features.
    pub fn get_compacted(&self, id: u32) -> Result<XsaveImage, EngineError> {
        self.detached_accessible(id)?;
        let fp = &self.vcpu(id)?.fpstate;
        let src = self.container_image(id, !mask::COMPACTED)?;
        if src.form() == crate::layout::Form::Compacted {
            return Ok(src);
        }
        let g = self.cfg.layout.compacted(fp.xfeatures()).map_err(einval)?;
        convert(&src, &g).map_err(einval)
    }

    /// Loads a compacted image (as [`get_compacted`](Self::get_compacted) returns) into vCPU
    /// `id`'s container. Checked with the XRSTORS rules (compacted XRSTOR without XSAVES
    /// storage) of the host, and XCOMP_BV must be within the container's features.
    pub fn set_compacted(&mut self, id: u32, bytes: &[u8]) -> Result<CopyIn, EngineError> {
        self.detached_accessible(id)?;
        let fp = &self.vcpu(id)?.fpstate;
        let rc = RestoreConfig::for_layout(
            &self.cfg.layout,
            self.cfg.xcr0,
            self.cfg.xss,
            self.mxcsr_mask,
        );
        let v = if self.cfg.insn == SaveInsn::Xsaves {
            validate::xrstors_with_layout(bytes, &rc, Some(&self.cfg.layout))
        } else {
            validate::xrstor_compacted(bytes, &rc)
        };
        if !v.is_empty() {
            return err(
                ErrorKind::Einval,
                format!("compacted image: {}", violations_text(&v)),
            );
        }
        let src = XsaveImage::from_bytes(bytes, &self.cfg.layout).map_err(einval)?;
        let extra = src.xcomp_bv() & !mask::COMPACTED & !fp.xfeatures();
        if extra != 0 {
            return err(
                ErrorKind::Einval,
                format!(
                    "XCOMP_BV (offset 520) = {:#x} holds {} that vCPU {id}'s container ({:#x}) does not",
                    src.xcomp_bv(),
                    mask_names(extra),
                    fp.xfeatures()
                ),
            );
        }
        let (Some(own_image), Some(geometry)) = (fp.image(), fp.geometry()) else {
            return Err(einval(format!("vCPU {id} has no buffer")));
        };
        let img = if fp.insn() == SaveInsn::Fxsave {
            let fx = to_fxsave(&src).map_err(einval)?;
            let mut i = own_image.to_owned_image();
            if let Some(d) = i.as_mut_bytes().get_mut(..512) {
                d.copy_from_slice(&fx);
            }
            i
        } else {
            convert(&src, geometry).map_err(einval)?
        };
        self.stats.copied_bytes += bytes.len() as u64;
        let fp = &mut self.vcpu_mut(id)?.fpstate;
        let xfd = fp.xfd();
        fp.replace_image(img)?;
        Ok(CopyIn {
            cleared_by_xfd: fp.clear_armed(xfd),
        })
    }

    /// The standard-form bytes of the user features of any context (host thread or vCPU) as
    /// `KVM_GET_XSAVE2` would lay them out — a helper for reports and tests.
    pub fn user_image(&mut self, id: u32) -> Result<Vec<u8>, EngineError> {
        let mut buf = alloc::vec![0u8; self.uabi_size()? as usize];
        self.get_xsave2(id, &mut buf)?;
        Ok(buf)
    }
}
