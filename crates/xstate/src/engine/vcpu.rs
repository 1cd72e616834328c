//! The vCPU life cycle (seed 002): `vcpu_create() -> alloc()`, `vcpu_run() -> attach() ->
//! vmenter_loop() -> detach()`, `vcpu_destroy() -> free()`. Creation only allocates: the
//! creating thread need not be the one that runs the vCPU, so it never touches the registers.
//!
//! * **attach**: save the host's registers if they are live; switch IA32_XFD to the guest
//!   container's value *before* the restore (a restore of a component XFD arms raises #NM,
//!   DESIGN.md §5 and §8); swap the current container (no copy); restore the guest.
//! * **detach**: save the guest (into a larger container first if the guest asked for more
//!   space during the run: the realloc request of seed 002); switch XFD to the host's;
//!   restore the host.
//! * **confidential guests**: their registers belong to the firmware (TDX, SEV-ES); the engine
//!   neither saves nor restores them, only the host's, and switches XFD (seed 002).

use alloc::format;

use super::error::{err, EngineError, ErrorKind};
use super::fpstate::FpState;
use super::Engine;
use crate::components::{mask, mask_names};
use crate::layout::check_xcr0_rules;
use crate::model::Backend;

/// A guest's CPUID policy for extended state: what its CPUID leaf 0xD exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GuestPolicy {
    /// CPUID.(0xD,0):EDX:EAX for the guest: the user features its XCR0 may enable.
    pub xcr0_max: u64,
    /// CPUID.(0xD,1):EDX:ECX for the guest: the supervisor features its IA32_XSS may enable.
    pub xss: u64,
}

/// One vCPU: its container and the guest registers the engine tracks.
#[derive(Clone, Debug)]
pub struct Vcpu {
    pub(crate) id: u32,
    pub(crate) fpstate: FpState,
    pub(crate) policy: GuestPolicy,
    pub(crate) xcr0: u64,
    pub(crate) xss: u64,
    pub(crate) xfd_err: u64,
    pub(crate) xcr0_accum: u64,
    pub(crate) realloc_request: u64,
    pub(crate) run_ended: bool,
}

impl Vcpu {
    /// The vCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its container.
    pub fn fpstate(&self) -> &FpState {
        &self.fpstate
    }

    /// Its CPUID policy.
    pub fn policy(&self) -> GuestPolicy {
        self.policy
    }

    /// The guest's XCR0 (1 after reset).
    pub fn xcr0(&self) -> u64 {
        self.xcr0
    }

    /// The guest's IA32_XSS.
    pub fn xss(&self) -> u64 {
        self.xss
    }

    /// The guest's IA32_XFD (kept in its container, switched before every restore).
    pub fn xfd(&self) -> u64 {
        self.fpstate.xfd()
    }

    /// The guest's IA32_XFD_ERR (per vCPU).
    pub fn xfd_err(&self) -> u64 {
        self.xfd_err
    }

    /// Every XCR0 bit the guest ever enabled (Xen's `xcr0_accum`).
    pub fn xcr0_accum(&self) -> u64 {
        self.xcr0_accum
    }

    /// Features the guest enabled that its container lacks: the pending realloc request.
    pub fn realloc_request(&self) -> u64 {
        self.realloc_request
    }
}

/// What a successful detach did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Detached {
    /// The guest's container was replaced by a larger one (a realloc request was served).
    pub realloc: bool,
}

impl<B: Backend> Engine<B> {
    /// The vCPU `id`.
    pub fn vcpu(&self, id: u32) -> Result<&Vcpu, EngineError> {
        self.vcpus
            .get(&id)
            .ok_or_else(|| EngineError::new(ErrorKind::Enoent, format!("no vCPU {id}")))
    }

    pub(crate) fn vcpu_mut(&mut self, id: u32) -> Result<&mut Vcpu, EngineError> {
        self.vcpus
            .get_mut(&id)
            .ok_or_else(|| EngineError::new(ErrorKind::Enoent, format!("no vCPU {id}")))
    }

    /// The ids of every vCPU.
    pub fn vcpu_ids(&self) -> alloc::vec::Vec<u32> {
        self.vcpus.keys().copied().collect()
    }

    /// Checks a policy against the host and the guest permissions: user features the host
    /// supports and that form a valid XCR0 (`eopnotsupp` / `einval`), dynamic features only
    /// with the guest permission (`eperm`, as `KVM_SET_CPUID2` refuses them), supervisor
    /// features of the guest configuration only (PASID never; `eopnotsupp`).
    pub(crate) fn check_policy(&self, p: &GuestPolicy) -> Result<(), EngineError> {
        let user_ok = self.cfg.user.max_features;
        let bad = p.xcr0_max & !user_ok;
        if bad != 0 {
            return err(
                ErrorKind::Eopnotsupp,
                format!(
                    "policy xcr0_max {:#x}: bits {bad:#x} ({}) are not user features the host supports ({user_ok:#x})",
                    p.xcr0_max,
                    mask_names(bad)
                ),
            );
        }
        if let Err(e) = check_xcr0_rules(p.xcr0_max, user_ok, self.cfg.layout.xss_supported()) {
            return err(
                ErrorKind::Einval,
                format!("policy xcr0_max must itself be a valid XCR0: {e}"),
            );
        }
        let unpermitted = p.xcr0_max & mask::DYNAMIC & !self.perms.get(super::Scope::Guest);
        if unpermitted != 0 {
            return err(
                ErrorKind::Eperm,
                format!(
                    "policy xcr0_max {:#x} exposes dynamic {} without the guest permission (ARCH_REQ_XCOMP_GUEST_PERM)",
                    p.xcr0_max,
                    mask_names(unpermitted)
                ),
            );
        }
        let sup_ok = self.cfg.guest.max_features & !self.cfg.user.max_features;
        let bad = p.xss & !sup_ok;
        if bad != 0 {
            return err(
                ErrorKind::Eopnotsupp,
                format!(
                    "policy xss {:#x}: bits {bad:#x} ({}) are not supervisor features a guest can have here ({sup_ok:#x} with {})",
                    p.xss,
                    mask_names(bad),
                    self.cfg.insn.name()
                ),
            );
        }
        Ok(())
    }

    /// The features a container for `policy` holds without any dynamic feature enabled:
    /// the guest default features the policy exposes (x87 and SSE always).
    pub(crate) fn base_features(&self, p: &GuestPolicy) -> u64 {
        self.cfg.guest.default_features & (p.xcr0_max | p.xss | mask::LEGACY)
    }

    /// `vcpu_create() -> alloc()`: allocates the vCPU's container for `policy` (default
    /// features it exposes, never the dynamic ones) and locks the guest permissions. Touches
    /// no register: any thread may create a vCPU.
    ///
    /// Errors: `einval` for an existing id, policy errors (see [`GuestPolicy`]), `enomem`.
    pub fn create_vcpu(
        &mut self,
        id: u32,
        policy: GuestPolicy,
        confidential: bool,
    ) -> Result<&Vcpu, EngineError> {
        if self.vcpus.contains_key(&id) {
            return err(ErrorKind::Einval, format!("vCPU {id} already exists"));
        }
        self.check_policy(&policy)?;
        let features = self.base_features(&policy);
        let fp = self.alloc(features, 0, true, confidential, None)?;
        self.perms.lock_guest();
        let v = Vcpu {
            id,
            fpstate: fp,
            policy,
            xcr0: mask::X87,
            xss: 0,
            xfd_err: 0,
            xcr0_accum: mask::X87,
            realloc_request: 0,
            run_ended: false,
        };
        Ok(self.vcpus.entry(id).or_insert(v))
    }

    /// Serves a pending realloc request of a detached vCPU: its state is in its container, so
    /// the larger container is filled by conversion. Returns true when it reallocated.
    fn grow_detached(&mut self, id: u32) -> Result<bool, EngineError> {
        let (req, features, xfd) = {
            let v = self.vcpu(id)?;
            (
                v.realloc_request,
                v.fpstate.xfeatures() | v.realloc_request,
                v.fpstate.xfd(),
            )
        };
        if req == 0 {
            return Ok(false);
        }
        let old = self.vcpu(id)?.fpstate.clone();
        let n = self.alloc(features, xfd, true, old.is_confidential(), Some(&old))?;
        let v = self.vcpu_mut(id)?;
        v.fpstate = n;
        v.realloc_request = 0;
        Ok(true)
    }

    /// `vcpu_run() -> attach()`: makes vCPU `id` current. A realloc request left pending by a
    /// failed detach is served first (the guest never runs with a container smaller than what
    /// its XCR0 and XFD enable); its failure is returned and the vCPU stays detached.
    /// Returns true when that reallocation happened.
    ///
    /// Errors: `enoent`, `ebusy` (a vCPU is attached), `enomem`, `fault` (backend).
    pub fn attach(&mut self, id: u32) -> Result<bool, EngineError> {
        if let Some(cur) = self.attached {
            return err(
                ErrorKind::Ebusy,
                format!("vCPU {cur} is attached to this CPU: detach it before attaching vCPU {id}"),
            );
        }
        let realloc = self.grow_detached(id)?;
        // 1. Save the host's registers if they are live.
        if self.host_live {
            Self::save_into(&mut self.cpu, &mut self.stats, &mut self.host)?;
            self.host_live = false;
        }
        // 2. Switch XFD before the restore.
        let (xfd, confidential) = {
            let v = self.vcpu(id)?;
            (v.fpstate.xfd(), v.fpstate.is_confidential())
        };
        self.switch_xfd(xfd)?;
        // 3. Swap the current container: a flag and an index, no copy.
        self.host.set_in_use(false);
        self.attached = Some(id);
        // 4. Restore the guest, unless the firmware does (confidential guests).
        let rfbm = {
            let v = self.vcpu(id)?;
            self.restore_rfbm(&v.fpstate)
        };
        let v = self
            .vcpus
            .get_mut(&id)
            .ok_or_else(|| EngineError::new(ErrorKind::Enoent, format!("no vCPU {id}")))?;
        v.fpstate.set_in_use(true);
        v.run_ended = false;
        if !confidential {
            Self::restore_from(&mut self.cpu, &mut self.stats, &v.fpstate, rfbm)?;
        }
        Ok(realloc)
    }

    /// `detach()` at the end of `vcpu_run()`: saves the guest and restores the host. With a
    /// realloc request pending (seed 002): allocates the larger container, saves the guest
    /// into it, frees the old one. If that allocation fails, the guest is saved into its old
    /// container, the host is restored as usual, and `enomem` is returned: the vCPU is
    /// detached, its state intact, the request still pending (the next attach retries).
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
    /// assert_eq!(e.vcpu(0).unwrap().fpstate().size(), 2560);   // no tiles yet
    /// e.attach(0).unwrap();
    /// let o = e.xsetbv(0, 0x602e7).unwrap();                    // AMX on, XFD clear
    /// assert!(o.realloc);                                        // the run ends
    /// e.fail_next_alloc();
    /// assert_eq!(e.detach(0).unwrap_err().kind, xstate::engine::ErrorKind::Enomem);
    /// assert_eq!(e.vcpu(0).unwrap().fpstate().size(), 2560);   // old container kept
    /// assert!(e.attach(0).unwrap());                             // the retry reallocates
    /// assert_eq!(e.detach(0).unwrap().realloc, false);
    /// assert_eq!(e.vcpu(0).unwrap().fpstate().size(), 10752);
    /// ```
    pub fn detach(&mut self, id: u32) -> Result<Detached, EngineError> {
        if self.attached != Some(id) {
            return err(
                ErrorKind::Einval,
                format!(
                    "vCPU {id} is not attached (attached: {})",
                    match self.attached {
                        Some(a) => format!("vCPU {a}"),
                        None => "none".into(),
                    }
                ),
            );
        }
        let (req, features, xfd, confidential) = {
            let v = self.vcpu(id)?;
            (
                v.realloc_request,
                v.fpstate.xfeatures() | v.realloc_request,
                v.fpstate.xfd(),
                v.fpstate.is_confidential(),
            )
        };
        let mut failure = None;
        let mut realloc = false;
        if req != 0 {
            match self.alloc(features, xfd, true, confidential, None) {
                Ok(mut n) => {
                    if !confidential {
                        // The added components are in init state for this guest (seed 002:
                        // "the XFD controlled component is in init state at that point"), but
                        // the registers may still hold another context's values for them
                        // (a standard-form restore only covers the old container's features):
                        // put them in init state from the fresh container, then save.
                        let added = n.xfeatures() & req;
                        Self::restore_from(&mut self.cpu, &mut self.stats, &n, added)?;
                        Self::save_into(&mut self.cpu, &mut self.stats, &mut n)?;
                    }
                    let v = self.vcpu_mut(id)?;
                    n.set_in_use(true);
                    v.fpstate = n; // the old container is freed here
                    v.realloc_request = 0;
                    realloc = true;
                }
                Err(e) => failure = Some(e),
            }
        }
        if !realloc && !confidential {
            let v = self
                .vcpus
                .get_mut(&id)
                .ok_or_else(|| EngineError::new(ErrorKind::Enoent, format!("no vCPU {id}")))?;
            Self::save_into(&mut self.cpu, &mut self.stats, &mut v.fpstate)?;
        }
        if let Ok(v) = self.vcpu_mut(id) {
            v.fpstate.set_in_use(false);
            v.run_ended = false;
        }
        self.attached = None;
        self.host.set_in_use(true);
        self.switch_xfd(self.host.xfd())?;
        let rfbm = self.restore_rfbm(&self.host);
        Self::restore_from(&mut self.cpu, &mut self.stats, &self.host, rfbm)?;
        self.host_live = true;
        match failure {
            Some(e) => Err(e),
            None => Ok(Detached { realloc }),
        }
    }

    /// `vcpu_destroy() -> free()`: frees the vCPU's container. Refused (`ebusy`) while it is
    /// attached.
    pub fn destroy_vcpu(&mut self, id: u32) -> Result<(), EngineError> {
        if self.attached == Some(id) {
            return err(
                ErrorKind::Ebusy,
                format!("vCPU {id} is attached: detach it before destroying it"),
            );
        }
        match self.vcpus.remove(&id) {
            Some(_) => Ok(()),
            None => err(ErrorKind::Enoent, format!("no vCPU {id}")),
        }
    }
}
