//! The three feature configurations of DESIGN.md §6 — host (the kernel's own buffers), user
//! (the UABI) and guest — each with a maximum and a default feature set and the sizes of the
//! buffers in the form they are stored in.
//!
//! * **host**: every feature the host enabled (XCR0 | IA32_XSS) minus the independent ones
//!   (arch LBR, saved by hand outside the buffers). Its maximum *includes* the guest-only
//!   features (CET_S): Linux keeps them in `fpu_kernel_cfg.max_features`, from which IA32_XSS
//!   is programmed (0x18e7 / 2472 bytes on the Zen machines, DESIGN.md §9), and only clears
//!   them from the default (seed 000: `default_features &= ~XFEATURE_MASK_KERNEL_DYNAMIC`, the
//!   later guest-only mask): a host thread's buffer never pays for them. Stored in the form of the save
//!   instruction: compacted for XSAVES/XSAVEC, standard for XSAVE/XSAVEOPT, the legacy area
//!   for FXSAVE. Supervisor features are only stored when the instruction is XSAVES (SDM Vol. 1
//!   §13.11: no other save instruction writes them).
//! * **user**: the user features of XCR0, always in the standard form (the UABI of
//!   `KVM_GET_XSAVE2`, ptrace and signal frames).
//! * **guest**: the host maximum plus the guest-only features, minus the host-only features
//!   (PASID never reaches a guest).
//!
//! Every default set is its maximum minus the dynamic features (AMX tile data): those need a
//! permission and are allocated when first used; the host default also lacks the guest-only
//! features.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::layout::Layout;
//! use xstate::engine::config::Configs;
//! use xstate::strategy::SaveInsn;
//! // A Zen-3-like host: x87, SSE, AVX, PKRU; CET_U and CET_S in IA32_XSS.
//! let mut d = CpuidDump::new("doc");
//! d.insert(0xd, 0, Regs { eax: 0x207, ebx: 0x988, ecx: 0x988, edx: 0 });
//! d.insert(0xd, 1, Regs { eax: 0xf, ebx: 0, ecx: 0x1800, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! d.insert(0xd, 9, Regs { eax: 8, ebx: 0x980, ecx: 0, edx: 0 });
//! d.insert(0xd, 11, Regs { eax: 16, ebx: 0, ecx: 1, edx: 0 });
//! d.insert(0xd, 12, Regs { eax: 24, ebx: 0, ecx: 1, edx: 0 });
//! let c = Configs::new(&Layout::from_dump(&d), 0x207, 0x1800, SaveInsn::Xsaves).unwrap();
//! assert_eq!(c.host.max_features, 0x1a07);      // Linux: guest-only CET_S in the max …
//! assert_eq!(c.host.max_size, 880);
//! assert_eq!(c.host.default_features, 0xa07);   // … and out of the default
//! assert_eq!(c.host.default_size, 856);
//! assert_eq!(c.guest.max_features, 0x1a07);
//! assert_eq!(c.guest.max_size, 880);            // the 880 bytes of DESIGN.md §4
//! assert_eq!(c.user.max_size, 0x988);           // standard form
//! ```

use alloc::format;

use super::error::{err, EngineError, ErrorKind};
use crate::components::{mask, mask_names};
use crate::layout::{Form, Layout};
use crate::strategy::SaveInsn;

/// What a buffer stored with `insn` can hold out of `features`: only XSAVES writes supervisor
/// state (SDM Vol. 1 §13.11); FXSAVE writes the legacy area alone.
pub fn storable(insn: SaveInsn, features: u64, layout: &Layout) -> u64 {
    match insn {
        SaveInsn::Fxsave => features & mask::LEGACY,
        SaveInsn::Xsaves => features,
        _ => features & !layout.xss_supported() & !mask::SUPERVISOR_KNOWN,
    }
}

/// The size of a buffer holding `features` as `insn` stores them: compacted (SDM §13.4.3) for
/// XSAVES/XSAVEC, standard (§13.4.2) for XSAVE/XSAVEOPT, 512 bytes for FXSAVE.
pub fn size_of(insn: SaveInsn, layout: &Layout, features: u64) -> Result<u32, EngineError> {
    let r = match insn.form() {
        None => return Ok(512),
        Some(Form::Compacted) => layout.compacted(features),
        Some(Form::Standard) => layout.standard(features),
    };
    let size = r.map(|f| f.size).or_else(|e| {
        err(
            ErrorKind::Einval,
            format!(
                "cannot size a {} buffer for features {features:#x} ({}): {e}",
                insn.name(),
                mask_names(features)
            ),
        )
    })?;
    if size > MAX_BUFFER {
        return err(
            ErrorKind::Einval,
            format!(
                "CPUID leaf 0xD describes a {size}-byte {} area for features {features:#x} ({}): implausible (every known CPU needs under 16 KiB), refused above {MAX_BUFFER} bytes",
                insn.name(),
                mask_names(features)
            ),
        );
    }
    Ok(size)
}

/// The largest buffer the engine allocates (1 MiB): real CPUs need under 16 KiB (AMX: 11008
/// bytes standard); a dump reporting more is broken or hostile.
pub const MAX_BUFFER: u32 = 1 << 20;

/// One configuration: maximum and default features and their buffer sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FeatureConfig {
    /// Every feature a buffer of this configuration may ever hold.
    pub max_features: u64,
    /// The features a fresh buffer holds (max minus the dynamic features; for the host, also
    /// minus the guest-only features).
    pub default_features: u64,
    /// Size of a buffer holding `max_features`.
    pub max_size: u32,
    /// Size of a buffer holding `default_features`.
    pub default_size: u32,
    /// The form the sizes are computed in (`None`: FXSAVE legacy area).
    pub form: Option<Form>,
}

impl FeatureConfig {
    fn new(
        layout: &Layout,
        insn: SaveInsn,
        form: Option<Form>,
        max: u64,
        not_default: u64,
    ) -> Result<Self, EngineError> {
        let default = max & !mask::DYNAMIC & !not_default;
        let size = |m: u64| -> Result<u32, EngineError> {
            match form {
                Some(Form::Standard) => size_of(SaveInsn::Xsave, layout, m),
                _ => size_of(insn, layout, m),
            }
        };
        Ok(FeatureConfig {
            max_features: max,
            default_features: default,
            max_size: size(max)?,
            default_size: size(default)?,
            form,
        })
    }
}

/// The host, user and guest configurations of one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configs {
    /// The host's XCR0 (user features enabled by the host OS).
    pub xcr0: u64,
    /// The host's IA32_XSS (supervisor features enabled by the host OS).
    pub xss: u64,
    /// The save instruction, which decides how buffers are stored.
    pub insn: SaveInsn,
    /// The host (kernel) configuration.
    pub host: FeatureConfig,
    /// The user (UABI, standard form) configuration.
    pub user: FeatureConfig,
    /// The guest configuration.
    pub guest: FeatureConfig,
    /// Independent features (kept out of every buffer).
    pub independent: u64,
    /// The host's CPU layout.
    pub layout: Layout,
}

impl Configs {
    /// The configurations of a host whose CPU has `layout`, whose OS enabled `xcr0` and
    /// `xss`, saving with `insn`. `xcr0` must pass the XSETBV rules and `xss` must be
    /// supported (EINVAL otherwise, naming the rule).
    pub fn new(layout: &Layout, xcr0: u64, xss: u64, insn: SaveInsn) -> Result<Self, EngineError> {
        if let Err(e) = layout.check_xcr0(xcr0) {
            return err(ErrorKind::Einval, format!("host XCR0: {e}"));
        }
        if let Err(e) = layout.check_xss(xss) {
            return err(ErrorKind::Einval, format!("host IA32_XSS: {e}"));
        }
        let enabled = storable(insn, xcr0 | xss, layout);
        let host_max = enabled & !mask::INDEPENDENT;
        let guest_max = host_max & !mask::HOST_ONLY;
        let form = insn.form();
        Ok(Configs {
            xcr0,
            xss,
            insn,
            host: FeatureConfig::new(layout, insn, form, host_max, mask::GUEST_ONLY)?,
            user: FeatureConfig::new(
                layout,
                insn,
                Some(Form::Standard),
                storable(insn, xcr0, layout),
                0,
            )?,
            guest: FeatureConfig::new(layout, insn, form, guest_max, 0)?,
            independent: (xcr0 | xss) & mask::INDEPENDENT,
            layout: layout.clone(),
        })
    }

    /// The size of a buffer holding `features` in this host's storage.
    pub fn size_of(&self, features: u64) -> Result<u32, EngineError> {
        size_of(self.insn, &self.layout, features)
    }

    /// The standard-form (UABI) size of the user features in `features`.
    pub fn user_size_of(&self, features: u64) -> Result<u32, EngineError> {
        size_of(
            SaveInsn::Xsave,
            &self.layout,
            features & self.user.max_features,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpuid::{CpuidDump, Regs};

    /// Sapphire Rapids leaf 0xD as Linux prints it (DESIGN.md §4): XCR0 0x602e7, CET in XSS.
    pub(crate) fn spr_like() -> Layout {
        let mut d = CpuidDump::new("spr-like");
        d.insert(
            0xd,
            0,
            Regs {
                eax: 0x602e7,
                ebx: 0x2b00,
                ecx: 0x2b00,
                edx: 0,
            },
        );
        d.insert(
            0xd,
            1,
            Regs {
                eax: 0x1f,
                ebx: 0,
                ecx: 0x1800,
                edx: 0,
            },
        );
        for (i, size, off, ecx) in [
            (2u32, 256u32, 576u32, 0u32),
            (5, 64, 1088, 0),
            (6, 512, 1152, 0),
            (7, 1024, 1664, 0),
            (9, 8, 2688, 0),
            (11, 16, 0, 1),
            (12, 24, 0, 1),
            (17, 64, 2752, 2),
            (18, 8192, 2816, 6),
        ] {
            d.insert(
                0xd,
                i,
                Regs {
                    eax: size,
                    ebx: off,
                    ecx,
                    edx: 0,
                },
            );
        }
        Layout::from_dump(&d)
    }

    #[test]
    fn spr_xsaves_configs() {
        let c = Configs::new(&spr_like(), 0x602e7, 0x1800, SaveInsn::Xsaves).unwrap();
        assert_eq!(c.host.max_features, 0x61ae7);
        assert_eq!(c.host.default_features, 0x20ae7);
        assert_eq!(c.guest.max_features, 0x61ae7);
        assert_eq!(c.guest.default_features, 0x21ae7);
        // Compacted: PKRU 2432, CET_U 2440..2456, CET_S 2456..2480, TILECFG 2496 (aligned),
        // TILEDATA 2560: CET_S fits in TILECFG's alignment padding.
        assert_eq!(c.host.default_size, 2560);
        assert_eq!(c.guest.default_size, 2560);
        assert_eq!(c.host.max_size, 10752);
        assert_eq!(c.guest.max_size, 2560 + 8192);
        assert_eq!(c.host.max_features, c.guest.max_features);
        assert_eq!(c.user.max_size, 0x2b00);
        assert_eq!(c.user.default_features, 0x202e7);
    }

    #[test]
    fn user_mode_storage_drops_supervisor_features() {
        let c = Configs::new(&spr_like(), 0x602e7, 0x1800, SaveInsn::Xsavec).unwrap();
        assert_eq!(c.guest.max_features, 0x602e7);
        let c = Configs::new(&spr_like(), 0x602e7, 0x1800, SaveInsn::Fxsave).unwrap();
        assert_eq!(c.guest.max_features, 0x3);
        assert_eq!(c.host.max_size, 512);
    }

    #[test]
    fn implausible_sizes_are_refused() {
        let mut d = CpuidDump::new("huge");
        d.insert(
            0xd,
            0,
            Regs {
                eax: 0x7,
                ebx: 0,
                ecx: 0,
                edx: 0,
            },
        );
        d.insert(
            0xd,
            2,
            Regs {
                eax: 0x7fff_0000,
                ebx: 576,
                ecx: 0,
                edx: 0,
            },
        );
        let e = Configs::new(&Layout::from_dump(&d), 0x7, 0, SaveInsn::Xsave).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Einval);
        assert!(e.message.contains("implausible"), "{e}");
    }

    #[test]
    fn bad_host_values_are_refused() {
        let e = Configs::new(&spr_like(), 0x202e7, 0, SaveInsn::Xsaves).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Einval);
        assert!(e.message.contains("amx_pair"), "{e}");
        let e = Configs::new(&spr_like(), 0x2e7, 0x400, SaveInsn::Xsaves).unwrap_err();
        assert!(e.message.contains("IA32_XSS"), "{e}");
    }
}
