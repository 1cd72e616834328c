//! Which save instruction to use, and why.
//!
//! The choice trades memory traffic against what the instruction can hold (SDM Vol. 1 §13.6,
//! §13.9-§13.11; DESIGN.md §7):
//!
//! | instruction | form | init optimization | modified optimization | supervisor state | privilege |
//! |---|---|---|---|---|---|
//! | XSAVES | compacted | yes | yes | yes | CPL 0 |
//! | XSAVEC | compacted | yes | no | no | any |
//! | XSAVEOPT | standard | yes | yes | no | any |
//! | XSAVE | standard | no | no | no | any |
//! | FXSAVE | legacy 512 bytes | no | no | no | any |
//!
//! * **Linux order** ([`Policy::Linux`]): XSAVES > XSAVEC > XSAVEOPT > XSAVE > FXSAVE: the
//!   compacted form keeps buffers small, and every optimization the CPU offers is used.
//! * **Xen order** ([`Policy::Xen`]): XSAVES > XSAVE > FXSAVE. Xen's maintainers argue XSAVEC is
//!   never better than XSAVES (no modified optimization, and no CPU has XSAVEC without
//!   XSAVES), and that XSAVEOPT's modified optimization is unsafe when one buffer is restored
//!   on several logical processors or the tracking is defeated by a VMM; standard XSAVE is
//!   predictable.
//! * A user-mode program (this crate's hardware backend) cannot run XSAVES: the best it has
//!   is XSAVEC.
//!
//! What the choice means for the guest FPU engine ([`crate::engine`], which takes a
//! [`Policy`] or a forced instruction in its `Options`):
//!
//! * its containers are stored in the instruction's form, so the *memory* per vCPU follows
//!   the choice: compacted (XSAVES, XSAVEC) holds exactly the enabled features — 2560 bytes for
//!   a Sapphire Rapids guest without AMX —, standard (XSAVE, XSAVEOPT) pays for the holes up
//!   to the highest enabled component (2816 bytes for the same guest); FXSAVE holds x87 and
//!   SSE only;
//! * only XSAVES stores supervisor state: with any other instruction the guest configuration
//!   has no CET_S/CET_U (a policy exposing them is refused with `eopnotsupp`), so CET guests
//!   need CPL 0 and XSAVES;
//! * compacted restores let the engine put every component a container lacks in init state
//!   in the same instruction (RFBM = all enabled features, XCOMP_BV bit i = 0 ⇒ init): the
//!   XSA-62 protection costs nothing; with the standard form the protection rests on the
//!   container always holding every feature the guest can enable;
//! * XSAVEOPT's modified optimization is sound for the engine's pattern (a container is
//!   saved to the address it was restored from, on the same CPU), but a VMM that migrates
//!   containers between CPUs or restores them elsewhere should use the Xen order.
//!
//! ```
//! use xstate::strategy::{choose, Caps, Policy, SaveInsn};
//! let caps = Caps { xsave: true, xsaveopt: true, xsavec: true, xsaves: true, ring0: false };
//! assert_eq!(choose(caps, Policy::Linux).insn, SaveInsn::Xsavec);
//! assert_eq!(choose(Caps { ring0: true, ..caps }, Policy::Linux).insn, SaveInsn::Xsaves);
//! assert_eq!(choose(caps, Policy::Xen).insn, SaveInsn::Xsave);
//! ```

use crate::layout::{Form, Layout};

/// A save instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveInsn {
    /// XSAVES: compacted, init + modified optimizations, supervisor state, CPL 0 only.
    Xsaves,
    /// XSAVEC: compacted, init optimization.
    Xsavec,
    /// XSAVEOPT: standard form, init + modified optimizations.
    Xsaveopt,
    /// XSAVE: standard form, no optimization.
    Xsave,
    /// FXSAVE: the 512-byte legacy area only (x87 and SSE).
    Fxsave,
}

impl SaveInsn {
    /// Lower-case mnemonic.
    pub fn name(&self) -> &'static str {
        match self {
            SaveInsn::Xsaves => "xsaves",
            SaveInsn::Xsavec => "xsavec",
            SaveInsn::Xsaveopt => "xsaveopt",
            SaveInsn::Xsave => "xsave",
            SaveInsn::Fxsave => "fxsave",
        }
    }

    /// The image form this instruction writes (`None` for FXSAVE's legacy area).
    pub fn form(&self) -> Option<Form> {
        match self {
            SaveInsn::Xsaves | SaveInsn::Xsavec => Some(Form::Compacted),
            SaveInsn::Xsaveopt | SaveInsn::Xsave => Some(Form::Standard),
            SaveInsn::Fxsave => None,
        }
    }

    /// Parses a mnemonic.
    pub fn parse(s: &str) -> Option<SaveInsn> {
        Some(match s {
            "xsaves" => SaveInsn::Xsaves,
            "xsavec" => SaveInsn::Xsavec,
            "xsaveopt" => SaveInsn::Xsaveopt,
            "xsave" => SaveInsn::Xsave,
            "fxsave" => SaveInsn::Fxsave,
            _ => return None,
        })
    }
}

/// The order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// XSAVES > XSAVEC > XSAVEOPT > XSAVE > FXSAVE.
    #[default]
    Linux,
    /// XSAVES > XSAVE > FXSAVE.
    Xen,
}

/// What the CPU and the caller's privilege allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Caps {
    /// CPUID.1:ECX.XSAVE.
    pub xsave: bool,
    /// CPUID.(0xD,1):EAX\[0\].
    pub xsaveopt: bool,
    /// CPUID.(0xD,1):EAX\[1\].
    pub xsavec: bool,
    /// CPUID.(0xD,1):EAX\[3\].
    pub xsaves: bool,
    /// The caller runs at CPL 0 (kernel, hypervisor).
    pub ring0: bool,
}

impl Caps {
    /// The capabilities a layout's CPUID data reports, for code running at `ring0` or not.
    pub fn of(layout: &Layout, ring0: bool) -> Caps {
        let l = layout.leaf();
        let xsave = layout.has_xsave();
        Caps {
            xsave,
            xsaveopt: xsave && l.has_xsaveopt(),
            xsavec: xsave && l.has_xsavec(),
            xsaves: xsave && l.has_xsaves(),
            ring0,
        }
    }
}

/// The chosen instruction and the reason in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The instruction.
    pub insn: SaveInsn,
    /// Why, starting with the instruction's mnemonic (`"XSAVEC: …"`).
    pub reason: &'static str,
}

/// Chooses the save instruction for `caps` under `policy`.
pub fn choose(caps: Caps, policy: Policy) -> Choice {
    let pick = |insn, reason| Choice { insn, reason };
    if !caps.xsave {
        return pick(
            SaveInsn::Fxsave,
            "FXSAVE: no XSAVE on this CPU; only the 512-byte legacy area (x87, SSE) is saved",
        );
    }
    if caps.xsaves && caps.ring0 {
        return pick(
            SaveInsn::Xsaves,
            "XSAVES: compacted form, init and modified optimizations, and supervisor state",
        );
    }
    match policy {
        Policy::Linux if caps.xsavec => pick(
            SaveInsn::Xsavec,
            if caps.xsaves {
                "XSAVEC: XSAVES needs CPL 0; XSAVEC is the compacted form with the init optimization"
            } else {
                "XSAVEC: compacted form with the init optimization (no XSAVES on this CPU)"
            },
        ),
        Policy::Linux if caps.xsaveopt => pick(
            SaveInsn::Xsaveopt,
            "XSAVEOPT: standard form with init and modified optimizations (no XSAVEC)",
        ),
        Policy::Linux => pick(SaveInsn::Xsave, "XSAVE: the only XSAVE variant this CPU has"),
        Policy::Xen => pick(
            SaveInsn::Xsave,
            "XSAVE: the Xen order never uses XSAVEC (never better than XSAVES) nor XSAVEOPT (unsafe modified optimization)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_and_capability_combination() {
        let none = Caps::default();
        assert_eq!(choose(none, Policy::Linux).insn, SaveInsn::Fxsave);
        assert_eq!(choose(none, Policy::Xen).insn, SaveInsn::Fxsave);
        let x = Caps {
            xsave: true,
            ..none
        };
        assert_eq!(choose(x, Policy::Linux).insn, SaveInsn::Xsave);
        let opt = Caps {
            xsaveopt: true,
            ..x
        };
        assert_eq!(choose(opt, Policy::Linux).insn, SaveInsn::Xsaveopt);
        assert_eq!(choose(opt, Policy::Xen).insn, SaveInsn::Xsave);
        let all = Caps {
            xsavec: true,
            xsaves: true,
            ..opt
        };
        assert_eq!(choose(all, Policy::Linux).insn, SaveInsn::Xsavec);
        let r0 = Caps { ring0: true, ..all };
        assert_eq!(choose(r0, Policy::Linux).insn, SaveInsn::Xsaves);
        assert_eq!(choose(r0, Policy::Xen).insn, SaveInsn::Xsaves);
    }
}
