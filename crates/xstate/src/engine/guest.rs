//! What a running guest does that the engine must see, and CPUID policy changes.
//!
//! * **XSETBV** ([`Engine::xsetbv`]): the XCR0 rules of DESIGN.md §4 against the guest's CPUID
//!   policy; a broken rule is a #GP for the guest and changes nothing. A valid value that
//!   enables a feature the container lacks (`xcr0 & !xfd & !xfeatures`, seed 001) sets a
//!   realloc request and ends the run: the detach serves it.
//! * **WRMSR** ([`Engine::wrmsr`]): IA32_XFD accepts the XFD-capable user features of the
//!   policy (DESIGN.md §6) and is switched on the CPU at once (the container is current); a
//!   value that disarms a feature the container lacks ends the run like XSETBV. IA32_XFD_ERR is
//!   kept per vCPU. IA32_XSS accepts the policy's supervisor features.
//! * **Register use** ([`Engine::guest_write`]): #UD for a user feature outside the guest's
//!   XCR0, #NM (recording XFD_ERR) for one XFD arms, #GP for a supervisor feature the policy
//!   does not expose.
//! * **Policy changes** ([`Engine::set_policy`], seed 004): the container is resized, grown or
//!   shrunk, keeping the state of every component the new policy still allows.
//!
//! Stale state never leaks (XSA-62, DESIGN.md §7): a container starts with every component in
//! init state; compacted restores use every enabled feature as RFBM, so what a container does
//! not hold is initialized; a feature can only become usable by the guest once it is in the
//! container. And a component the guest disables stays in the container and is saved with it
//! (saves use the container's features, not the guest's XCR0): re-enabled, it has its old
//! value — Xen's `xcr0_accum`, for free.

use alloc::format;
use alloc::string::String;

use super::error::{err, EngineError, ErrorKind};
use super::vcpu::GuestPolicy;
use super::{Engine, Scope};
use crate::components::{mask, mask_names, Component};
use crate::layout::check_xcr0_rules;
use crate::model::{Backend, Exception};

/// A guest MSR of the XSAVE feature set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestMsr {
    /// IA32_XFD (0x1C4).
    Xfd,
    /// IA32_XFD_ERR (0x1C5).
    XfdErr,
    /// IA32_XSS (0xDA0).
    Xss,
}

impl GuestMsr {
    /// Parses `xfd`, `xfd_err`, `xss`.
    pub fn parse(s: &str) -> Option<GuestMsr> {
        Some(match s {
            "xfd" => GuestMsr::Xfd,
            "xfd_err" => GuestMsr::XfdErr,
            "xss" => GuestMsr::Xss,
            _ => return None,
        })
    }
}

/// What a VMM-side setter of the restore path did ([`Engine::set_xcr0`], [`Engine::set_msr`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    /// The container grew to hold what the new value enables (with permission).
    pub realloc: bool,
    /// XSTATE_BV bits of the container that the new IA32_XFD arms were cleared (Linux 6.19,
    /// DESIGN.md §8): those components are now in init state.
    pub cleared_by_xfd: u64,
}

/// What a guest action did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// The exception the guest receives instead, if any (nothing changed then).
    pub fault: Option<Exception>,
    /// Why, in words (empty without a fault).
    pub detail: String,
    /// The action needs a larger container: the run ended with a realloc request; detach the
    /// vCPU (the detach reallocates).
    pub realloc: bool,
}

impl Outcome {
    fn fault(e: Exception, detail: String) -> Outcome {
        Outcome {
            fault: Some(e),
            detail,
            realloc: false,
        }
    }
}

impl<B: Backend> Engine<B> {
    fn running(&self, id: u32) -> Result<(), EngineError> {
        let v = self.vcpu(id)?;
        if self.attached != Some(id) {
            return err(
                ErrorKind::Einval,
                format!("vCPU {id} is not running: attach it first"),
            );
        }
        if !self.guest_live {
            return err(
                ErrorKind::Ebusy,
                format!("vCPU {id} is scheduled out: schedule_in first"),
            );
        }
        if v.run_ended {
            return err(
                ErrorKind::Ebusy,
                format!(
                    "the run of vCPU {id} ended with a realloc request for {:#x} ({}): detach it",
                    v.realloc_request,
                    mask_names(v.realloc_request)
                ),
            );
        }
        Ok(())
    }

    /// Ends the run if XCR0 & !XFD enables features the container lacks (seed 001:
    /// `expand = enabled & ~guest_fpu.xfeatures`).
    fn check_expand(&mut self, id: u32) -> Result<bool, EngineError> {
        let v = self.vcpu_mut(id)?;
        let need = v.xcr0 & !v.fpstate.xfd() & !v.fpstate.xfeatures();
        if need == 0 {
            return Ok(false);
        }
        if v.fpstate.is_confidential() {
            // Nothing of a confidential guest is ever saved by the engine: track the features
            // (no buffer, no allocation) and keep the guest running.
            let (features, xfd, in_use) = (
                v.fpstate.xfeatures() | need,
                v.fpstate.xfd(),
                v.fpstate.in_use(),
            );
            let mut n = self.alloc(features, xfd, true, true, None)?;
            n.set_in_use(in_use);
            self.vcpu_mut(id)?.fpstate = n;
            return Ok(false);
        }
        v.realloc_request |= need;
        v.run_ended = true;
        Ok(true)
    }

    /// The guest executes XSETBV with ECX = 0 and `value`.
    ///
    /// ```
    /// # use xstate::cpuid::{CpuidDump, Regs};
    /// # use xstate::engine::{Engine, GuestPolicy, Options};
    /// # use xstate::model::{CpuProfile, Exception, ModelCpu};
    /// # let mut d = CpuidDump::new("doc");
    /// # d.insert(1, 0, Regs { eax: 0, ebx: 0, ecx: (1 << 26) | (1 << 27), edx: 1 << 24 });
    /// # d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
    /// # d.insert(0xd, 1, Regs { eax: 0x7, ebx: 0x340, ecx: 0, edx: 0 });
    /// # d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
    /// let opts = Options { xcr0: Some(0x7), ..Options::default() };
    /// let mut e = Engine::new(ModelCpu::new(CpuProfile::from_dump(&d)), opts).unwrap();
    /// e.create_vcpu(0, GuestPolicy { xcr0_max: 0x7, xss: 0 }, false).unwrap();
    /// e.attach(0).unwrap();
    /// // AVX without SSE breaks an XCR0 rule: #GP, XCR0 unchanged.
    /// assert_eq!(e.xsetbv(0, 0x5).unwrap().fault, Some(Exception::Gp));
    /// assert_eq!(e.vcpu(0).unwrap().xcr0(), 0x1);
    /// assert_eq!(e.xsetbv(0, 0x7).unwrap().fault, None);
    /// ```
    pub fn xsetbv(&mut self, id: u32, value: u64) -> Result<Outcome, EngineError> {
        self.running(id)?;
        let policy = self.vcpu(id)?.policy;
        if let Err(e) = check_xcr0_rules(value, policy.xcr0_max, self.cfg.layout.xss_supported()) {
            return Ok(Outcome::fault(
                Exception::Gp,
                format!("guest CPUID exposes XCR0 {:#x}: {e}", policy.xcr0_max),
            ));
        }
        let v = self.vcpu_mut(id)?;
        v.xcr0 = value;
        v.xcr0_accum |= value;
        let realloc = self.check_expand(id)?;
        Ok(Outcome {
            realloc,
            ..Outcome::default()
        })
    }

    /// The guest executes WRMSR of an XSAVE MSR.
    pub fn wrmsr(&mut self, id: u32, msr: GuestMsr, value: u64) -> Result<Outcome, EngineError> {
        self.running(id)?;
        let policy = self.vcpu(id)?.policy;
        let xfd_ok = policy.xcr0_max & self.xfd_capable;
        match msr {
            GuestMsr::Xfd | GuestMsr::XfdErr => {
                let name = if msr == GuestMsr::Xfd {
                    "IA32_XFD"
                } else {
                    "IA32_XFD_ERR"
                };
                if !self.has_xfd {
                    return Ok(Outcome::fault(
                        Exception::Gp,
                        format!("{name} does not exist: CPUID.(0xD,1):EAX[4] (XFD) is clear"),
                    ));
                }
                let bad = value & !xfd_ok;
                if bad != 0 {
                    return Ok(Outcome::fault(
                        Exception::Gp,
                        format!(
                            "{name} {value:#x}: bits {bad:#x} ({}) are not XFD-capable features of the guest CPUID ({xfd_ok:#x})",
                            mask_names(bad)
                        ),
                    ));
                }
                if msr == GuestMsr::XfdErr {
                    self.vcpu_mut(id)?.xfd_err = value;
                    return Ok(Outcome::default());
                }
                // The WRMSR first: if it faults, the guest's XFD is unchanged.
                self.switch_xfd(value)?;
                self.vcpu_mut(id)?.fpstate.set_xfd(value);
                let realloc = self.check_expand(id)?;
                Ok(Outcome {
                    realloc,
                    ..Outcome::default()
                })
            }
            GuestMsr::Xss => {
                let bad = value & !policy.xss;
                if bad != 0 {
                    return Ok(Outcome::fault(
                        Exception::Gp,
                        format!(
                            "IA32_XSS {value:#x}: bits {bad:#x} ({}) are not in the guest CPUID's supervisor features {:#x}",
                            mask_names(bad),
                            policy.xss
                        ),
                    ));
                }
                self.vcpu_mut(id)?.xss = value;
                Ok(Outcome::default())
            }
        }
    }

    /// The guest's value of an XSAVE MSR.
    pub fn rdmsr(&self, id: u32, msr: GuestMsr) -> Result<u64, EngineError> {
        let v = self.vcpu(id)?;
        Ok(match msr {
            GuestMsr::Xfd => v.fpstate.xfd(),
            GuestMsr::XfdErr => v.xfd_err,
            GuestMsr::Xss => v.xss,
        })
    }

    /// The running guest writes the register bytes of component `id` (see
    /// [`Engine::register_len`]), as its code would.
    pub fn guest_write(&mut self, vcpu: u32, id: u8, data: &[u8]) -> Result<Outcome, EngineError> {
        self.running(vcpu)?;
        let bit = super::fpstate::bit(id);
        let (xcr0, xfd, policy, held) = {
            let v = self.vcpu(vcpu)?;
            (v.xcr0, v.fpstate.xfd(), v.policy, v.fpstate.xfeatures())
        };
        let name = Component::name_of(id);
        if bit == 0 {
            return err(ErrorKind::Einval, format!("{id} is not a component"));
        }
        if self.cfg.layout.is_supervisor(id) {
            if policy.xss & bit == 0 || held & bit == 0 {
                return Ok(Outcome::fault(
                    Exception::Gp,
                    format!(
                        "WRMSR to {name} state: the guest CPUID does not expose it (xss {:#x})",
                        policy.xss
                    ),
                ));
            }
        } else {
            if xcr0 & bit == 0 {
                return Ok(Outcome::fault(
                    Exception::Ud,
                    format!("{name} is not enabled in the guest's XCR0 {xcr0:#x}"),
                ));
            }
            if xfd & bit != 0 {
                self.vcpu_mut(vcpu)?.xfd_err |= bit;
                return Ok(Outcome::fault(
                    Exception::Nm,
                    format!("{name} is armed by the guest's IA32_XFD {xfd:#x}: IA32_XFD_ERR |= {bit:#x}"),
                ));
            }
            if held & bit == 0 {
                // Cannot happen: XCR0 & !XFD ⊆ container features while running.
                return err(
                    ErrorKind::Fault,
                    format!("{name} is enabled but not in the container: realloc invariant broken"),
                );
            }
        }
        match self.live_write(id, data)? {
            Ok(()) => Ok(Outcome::default()),
            Err(f) => {
                if f.exception == Exception::Nm {
                    self.vcpu_mut(vcpu)?.xfd_err |= bit;
                }
                Ok(Outcome::fault(f.exception, format!("{f}")))
            }
        }
    }

    fn detached_for_restore(&self, id: u32, what: &str) -> Result<(), EngineError> {
        self.vcpu(id)?;
        if self.attached == Some(id) {
            return err(
                ErrorKind::Ebusy,
                format!("vCPU {id} is attached: {what} is set between runs (KVM_SET_* on a stopped vCPU)"),
            );
        }
        Ok(())
    }

    /// Grows a detached vCPU's container (by conversion) so it holds `need` too: the restore
    /// path of seed 001 ("XCR0 and XFD have to be restored before XSTATE"; `kvm_fpu_realloc`:
    /// `expand = (xcr0 & ~xfd) & ~xfeatures`, then the permission checks). Dynamic features
    /// need the guest permission (`eperm`); nothing changes on failure.
    fn grow_for(&mut self, id: u32, need: u64, what: &str) -> Result<bool, EngineError> {
        if need == 0 {
            return Ok(false);
        }
        let unpermitted = need & mask::DYNAMIC & !self.perms.get(Scope::Guest);
        if unpermitted != 0 {
            return err(
                ErrorKind::Eperm,
                format!(
                    "{what} enables {} without the guest permission (ARCH_REQ_XCOMP_GUEST_PERM)",
                    mask_names(unpermitted)
                ),
            );
        }
        let old = self.vcpu(id)?.fpstate.clone();
        let features = old.xfeatures() | need;
        let n = self.alloc(features, old.xfd(), true, old.is_confidential(), Some(&old))?;
        let v = self.vcpu_mut(id)?;
        v.fpstate = n;
        v.realloc_request &= !need;
        // A confidential container has no buffer: nothing was allocated.
        Ok(!old.is_confidential())
    }

    /// The VMM restores vCPU `id`'s XCR0 (`KVM_SET_XCRS`), detached: the XSETBV rules against
    /// the guest's CPUID policy (`einval` naming the rule — KVM's answer, where the running
    /// guest gets #GP). A value that enables (with XFD clear) a feature the container lacks
    /// grows it now, permission checked, so the XSAVE image that follows can carry that
    /// feature's state (seed 001: "XCR0 and XFD have to be restored before XSTATE"). With
    /// [`Growth::Lazy`](super::Growth::Lazy) this is the only way a VMM gets a tile-sized
    /// container for a fresh vCPU. On any error nothing changed.
    ///
    /// ```
    /// # use xstate::cpuid::CpuidDump;
    /// # use xstate::engine::{Engine, GuestPolicy, Options, Scope};
    /// # use xstate::model::{CpuProfile, ModelCpu};
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"),
    /// #     "/tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt");
    /// # let d = CpuidDump::parse(&std::fs::read_to_string(path).unwrap(), "spr").unwrap();
    /// let cpu = ModelCpu::new(CpuProfile::from_dump(&d));
    /// let opts = Options { xcr0: Some(0x602e7), xss: Some(0x1800), ..Options::default() };
    /// let mut e = Engine::new(cpu, opts).unwrap();
    /// e.request_perm(Scope::Guest, 18).unwrap();
    /// e.create_vcpu(0, GuestPolicy { xcr0_max: 0x602e7, xss: 0x1800 }, false).unwrap();
    /// assert_eq!(e.vcpu(0).unwrap().fpstate().size(), 2560);
    /// assert!(e.set_xcr0(0, 0x602e7).unwrap().realloc);          // restore XCR0 first …
    /// assert_eq!(e.vcpu(0).unwrap().fpstate().size(), 10752);    // … then the image fits
    /// ```
    pub fn set_xcr0(&mut self, id: u32, value: u64) -> Result<Restored, EngineError> {
        self.detached_for_restore(id, "XCR0")?;
        let (policy, xfd, held) = {
            let v = self.vcpu(id)?;
            (v.policy, v.fpstate.xfd(), v.fpstate.xfeatures())
        };
        if let Err(e) = check_xcr0_rules(value, policy.xcr0_max, self.cfg.layout.xss_supported()) {
            return err(
                ErrorKind::Einval,
                format!(
                    "KVM_SET_XCRS XCR0 {value:#x} against the guest CPUID {:#x}: {e}",
                    policy.xcr0_max
                ),
            );
        }
        let realloc = self.grow_for(id, value & !xfd & !held, &format!("XCR0 {value:#x}"))?;
        let v = self.vcpu_mut(id)?;
        v.xcr0 = value;
        v.xcr0_accum |= value;
        Ok(Restored {
            realloc,
            cleared_by_xfd: 0,
        })
    }

    /// The VMM restores one of vCPU `id`'s XSAVE MSRs (`KVM_SET_MSRS`), detached: IA32_XFD
    /// and IA32_XFD_ERR take only XFD-capable features of the guest's CPUID, IA32_XSS only
    /// its supervisor features (`einval` otherwise: KVM_SET_MSRS stops at that MSR). Writing
    /// IA32_XFD clears the XSTATE_BV bits of the container that it arms (Linux 6.19, see
    /// [`Restored::cleared_by_xfd`]), and a value that disarms a feature the guest's XCR0
    /// enables grows the container like [`set_xcr0`](Self::set_xcr0). On any error nothing
    /// changed.
    pub fn set_msr(&mut self, id: u32, msr: GuestMsr, value: u64) -> Result<Restored, EngineError> {
        self.detached_for_restore(id, "an XSAVE MSR")?;
        let (policy, xcr0, held) = {
            let v = self.vcpu(id)?;
            (v.policy, v.xcr0, v.fpstate.xfeatures())
        };
        let (name, allowed) = match msr {
            GuestMsr::Xfd => ("IA32_XFD", policy.xcr0_max & self.xfd_capable),
            GuestMsr::XfdErr => ("IA32_XFD_ERR", policy.xcr0_max & self.xfd_capable),
            GuestMsr::Xss => ("IA32_XSS", policy.xss),
        };
        if msr != GuestMsr::Xss && !self.has_xfd {
            return err(
                ErrorKind::Einval,
                format!("{name} does not exist here: CPUID.(0xD,1):EAX[4] (XFD) is clear"),
            );
        }
        let bad = value & !allowed;
        if bad != 0 {
            return err(
                ErrorKind::Einval,
                format!(
                    "KVM_SET_MSRS {name} = {value:#x}: bits {bad:#x} ({}) are not allowed by the guest CPUID ({allowed:#x})",
                    mask_names(bad)
                ),
            );
        }
        let mut out = Restored::default();
        match msr {
            GuestMsr::Xfd => {
                out.realloc =
                    self.grow_for(id, xcr0 & !value & !held, &format!("{name} {value:#x}"))?;
                let v = self.vcpu_mut(id)?;
                v.fpstate.set_xfd(value);
                out.cleared_by_xfd = v.fpstate.clear_armed(value);
            }
            GuestMsr::XfdErr => self.vcpu_mut(id)?.xfd_err = value,
            GuestMsr::Xss => self.vcpu_mut(id)?.xss = value,
        }
        Ok(out)
    }

    /// A new CPUID policy for vCPU `id` (seed 004: "re-size save area when CPUID policy
    /// changes"). Allowed while the vCPU is detached (`ebusy` otherwise). The container is
    /// resized to the new policy's default features plus the dynamic features it holds and
    /// the policy still allows; every component kept keeps its state. The guest's XCR0, XFD,
    /// XFD_ERR and XSS lose the bits the policy no longer allows. Returns true when a resized
    /// buffer was allocated (never for a confidential vCPU, which has none); on `enomem`
    /// nothing changed.
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
    /// e.attach(0).unwrap();
    /// e.xsetbv(0, 0xe7).unwrap();
    /// e.guest_write(0, 6, &[0xab; 512]).unwrap();                // ZMM_Hi256
    /// e.detach(0).unwrap();
    /// // Shrink to AVX-512 without PKRU, AMX and CET: 2432 bytes, ZMM kept.
    /// assert!(e.set_policy(0, GuestPolicy { xcr0_max: 0xe7, xss: 0 }).unwrap());
    /// assert_eq!(e.vcpu(0).unwrap().fpstate().size(), 2432);
    /// assert_eq!(e.vcpu(0).unwrap().fpstate().component(6).unwrap(), vec![0xab; 512]);
    /// ```
    pub fn set_policy(&mut self, id: u32, policy: GuestPolicy) -> Result<bool, EngineError> {
        if self.attached == Some(id) {
            return err(
                ErrorKind::Ebusy,
                format!("vCPU {id} is attached: change its CPUID policy between runs"),
            );
        }
        self.check_policy(&policy)?;
        let base = self.base_features(&policy);
        let (old_features, old_fp, xcr0, xfd) = {
            let v = self.vcpu(id)?;
            let mut xcr0 = v.xcr0 & (policy.xcr0_max | mask::X87);
            if check_xcr0_rules(xcr0, policy.xcr0_max, self.cfg.layout.xss_supported()).is_err() {
                xcr0 = mask::X87;
            }
            (
                v.fpstate.xfeatures(),
                v.fpstate.clone(),
                xcr0,
                v.fpstate.xfd() & policy.xcr0_max,
            )
        };
        let dynamic_kept = (old_features | self.vcpu(id)?.realloc_request)
            & mask::DYNAMIC
            & policy.xcr0_max
            & self.perms.get(Scope::Guest);
        let features = self.cfg.guest.max_features & (base | dynamic_kept);
        let resized = features != old_features;
        let new_fp = if resized {
            Some(self.alloc(features, xfd, true, old_fp.is_confidential(), Some(&old_fp))?)
        } else {
            None
        };
        let v = self.vcpu_mut(id)?;
        if let Some(n) = new_fp {
            v.fpstate = n;
        }
        v.fpstate.set_xfd(xfd);
        v.fpstate.clear_armed(xfd);
        v.policy = policy;
        v.xcr0 = xcr0;
        v.xcr0_accum &= policy.xcr0_max | mask::X87;
        v.xfd_err &= policy.xcr0_max;
        v.xss &= policy.xss;
        v.realloc_request = xcr0 & !xfd & !v.fpstate.xfeatures();
        // A confidential container has no buffer: nothing was allocated.
        Ok(resized && !v.fpstate.is_confidential())
    }
}
