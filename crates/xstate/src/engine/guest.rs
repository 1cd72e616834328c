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
                self.vcpu_mut(id)?.fpstate.set_xfd(value);
                self.switch_xfd(value)?;
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

    /// A new CPUID policy for vCPU `id` (seed 004: "re-size save area when CPUID policy
    /// changes"). Allowed while the vCPU is detached (`ebusy` otherwise). The container is
    /// resized to the new policy's default features plus the dynamic features it holds and
    /// the policy still allows; every component kept keeps its state. The guest's XCR0, XFD,
    /// XFD_ERR and XSS lose the bits the policy no longer allows. Returns true when the
    /// container was resized; on `enomem` nothing changed.
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
        v.policy = policy;
        v.xcr0 = xcr0;
        v.xcr0_accum &= policy.xcr0_max | mask::X87;
        v.xfd_err &= policy.xcr0_max;
        v.xss &= policy.xss;
        v.realloc_request = xcr0 & !xfd & !v.fpstate.xfeatures();
        Ok(resized)
    }
}
