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
//!   neither saves nor restores them, only the host's, and switches XFD (seed 002); their
//!   containers have no buffer.
//! * **atomicity**: attach and detach commit (mark attached/detached, replace a container)
//!   only after every instruction succeeded; a fault rolls XFD and the registers back.
//! * **preemption** ([`Engine::schedule_out`] / [`Engine::schedule_in`]): the current context
//!   is saved once; the detach of a scheduled-out vCPU saves nothing (seed 002).
//! * **threads**: "the thread which creates the vCPU is not necessarily the same as the one
//!   which runs it" (seed 002): [`Engine::take_vcpu`] / [`Engine::put_vcpu`].

use alloc::format;

use super::error::{err, EngineError, ErrorKind};
use super::fpstate::FpState;
use super::{AllocReq, Engine};
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
    /// The host configuration the container is stored for: XCR0, IA32_XSS, save instruction.
    pub(crate) host: (u64, u64, crate::strategy::SaveInsn),
}

/// A vCPU [`Engine::put_vcpu`] refused, handed back with the reason.
#[derive(Debug)]
pub struct RejectedVcpu {
    /// Why.
    pub error: EngineError,
    /// The vCPU, unchanged.
    pub vcpu: alloc::boxed::Box<Vcpu>,
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

// vCPU state moves between host threads (seed 002: "the thread which creates the vCPU is not
// necessarily the same as the one which runs it").
const _: () = {
    const fn send<T: Send>() {}
    send::<Vcpu>();
};

/// What a successful detach did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Detached {
    /// The guest's container was replaced by a larger one (a realloc request was served).
    pub realloc: bool,
}

/// A switch failed and putting the host's registers back failed too.
#[cold]
fn host_rollback_failed(e: EngineError, b: &EngineError) -> EngineError {
    EngineError::new(
        e.kind,
        format!(
            "{}; rolling back also failed ({b}): the host's state is in its container",
            e.message
        ),
    )
}

/// A switch failed and putting the guest's registers back failed too.
#[cold]
fn guest_rollback_failed(e: EngineError, b: &EngineError, id: u32) -> EngineError {
    EngineError::new(
        e.kind,
        format!(
            "{}; rolling back also failed ({b}): vCPU {id} stays attached, its state in its container",
            e.message
        ),
    )
}

impl<B: Backend> Engine<B> {
    /// The vCPU `id`.
    pub fn vcpu(&self, id: u32) -> Result<&Vcpu, EngineError> {
        self.vcpus
            .get(id)
            .ok_or_else(|| EngineError::new(ErrorKind::Enoent, format!("no vCPU {id}")))
    }

    pub(crate) fn vcpu_mut(&mut self, id: u32) -> Result<&mut Vcpu, EngineError> {
        self.vcpus
            .get_mut(id)
            .ok_or_else(|| EngineError::new(ErrorKind::Enoent, format!("no vCPU {id}")))
    }

    /// The ids of every vCPU.
    pub fn vcpu_ids(&self) -> alloc::vec::Vec<u32> {
        self.vcpus.ids().collect()
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

    /// The features a container for `policy` holds before the guest enables anything: the
    /// guest default features the policy exposes (x87 and SSE always), plus, with
    /// [`Growth::Eager`](super::Growth::Eager), the permitted dynamic features it exposes.
    pub(crate) fn base_features(&self, p: &GuestPolicy) -> u64 {
        let eager = match self.growth {
            super::Growth::Lazy => 0,
            super::Growth::Eager => {
                p.xcr0_max & mask::DYNAMIC & self.perms.get(super::Scope::Guest)
            }
        };
        self.cfg.guest.max_features
            & ((self.cfg.guest.default_features & (p.xcr0_max | p.xss | mask::LEGACY)) | eager)
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
        if self.vcpus.contains(id) {
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
            host: (self.cfg.xcr0, self.cfg.xss, self.cfg.insn),
        };
        Ok(self.vcpus.insert(v))
    }

    /// `vcpu_run() -> attach()`: makes vCPU `id` current. A realloc request left pending by a
    /// failed detach is served first (the guest never runs with a container smaller than what
    /// its XCR0 and XFD enable); its failure is returned and the vCPU stays detached.
    /// Returns true when that reallocation happened.
    ///
    /// Atomic: the vCPU is marked attached only once its state is loaded. If saving the host,
    /// switching XFD or restoring the guest fails, XFD and the host's registers are put back
    /// (restored from the container the host was just saved into), the guest's container is
    /// untouched, and the error is returned.
    ///
    /// Errors: `enoent`, `ebusy` (a vCPU is attached), `enomem`, `fault` (backend).
    #[inline(always)]
    pub fn attach(&mut self, id: u32) -> Result<bool, EngineError> {
        // The hot path: the host's registers live, no request pending, XFD already right for
        // the guest (always so in user mode) — save the host and restore the guest in one
        // backend call (`Backend::switch_sealed`), nothing between the two instructions.
        // Every other case goes step by step.
        if self.attached.is_some() || !self.host_live {
            return self.attach_steps(id);
        }
        // XFD matters only where the engine writes it (as a mask: no branch on the hot path).
        let (xfd_bits, hw_xfd) = ((self.writes_xfd as u64).wrapping_neg(), self.hw_xfd);
        let Some(v) = self.vcpus.get_mut_hinted(id) else {
            return self.attach_steps(id);
        };
        let fp = &v.fpstate;
        if v.realloc_request != 0 || fp.is_confidential() || (fp.xfd() ^ hw_xfd) & xfd_bits != 0 {
            return self.attach_steps(id);
        }
        let rfbm = fp.restore_rfbm();
        match Self::switch(&mut self.cpu, &mut self.stats, &mut self.host, fp, rfbm) {
            Ok(()) => {}
            Err((false, e)) => return Err(e),
            Err((true, e)) => return Err(self.attach_switch_rollback(e)),
        }
        self.host_live = false;
        self.host.set_in_use(false);
        v.fpstate.set_in_use(true);
        v.run_ended = false;
        self.attached = Some(id);
        self.guest_live = true;
        Ok(false)
    }

    /// The guest's restore of [`attach`](Self::attach)'s hot path faulted after the host
    /// was saved: the host's registers back from its container (XFD was not switched).
    #[cold]
    #[inline(never)]
    fn attach_switch_rollback(&mut self, e: EngineError) -> EngineError {
        let rfbm = self.host.restore_rfbm();
        match Self::restore_from(&mut self.cpu, &mut self.stats, &self.host, rfbm) {
            Ok(()) => e,
            Err(b) => {
                self.host_live = false;
                host_rollback_failed(e, &b)
            }
        }
    }

    /// [`attach`](Self::attach) step by step: every case (a pending request, XFD to switch,
    /// the host's state not live, a confidential vCPU, every error).
    #[cold]
    #[inline(never)]
    fn attach_steps(&mut self, id: u32) -> Result<bool, EngineError> {
        if let Some(cur) = self.attached {
            return err(
                ErrorKind::Ebusy,
                format!("vCPU {cur} is attached to this CPU: detach it before attaching vCPU {id}"),
            );
        }
        // The hot path: one lookup, then disjoint borrows of the engine's fields.
        let Some(v) = self.vcpus.get_mut(id) else {
            return err(ErrorKind::Enoent, format!("no vCPU {id}"));
        };
        // A request left pending by a failed detach is served first: its state is in its
        // container, grow by conversion (committed only with the attach).
        let grown = if v.realloc_request != 0 {
            let req = AllocReq {
                features: v.fpstate.xfeatures() | v.realloc_request,
                xfd: v.fpstate.xfd(),
                is_guest: true,
                confidential: v.fpstate.is_confidential(),
            };
            Some(
                self.allocs
                    .alloc(&self.cfg, &mut self.stats, req, Some(&v.fpstate))?,
            )
        } else {
            None
        };
        let cur = grown.as_ref().unwrap_or(&v.fpstate);
        let cpu = &mut self.cpu;
        let stats = &mut self.stats;
        // 1. Save the host's registers if they are live (they stay in the registers too).
        let host_was_live = self.host_live;
        if host_was_live {
            Self::save_into(cpu, stats, &mut self.host)?;
        }
        // 2. Switch XFD before the restore; 3. restore the guest, unless the firmware does.
        let host_xfd = self.hw_xfd;
        let step =
            Self::xfd_to(cpu, self.writes_xfd, &mut self.hw_xfd, stats, cur.xfd()).and_then(|()| {
                if cur.is_confidential() {
                    Ok(())
                } else {
                    let rfbm = cur.restore_rfbm();
                    Self::restore_from(cpu, stats, cur, rfbm)
                }
            });
        if let Err(e) = step {
            // Roll back: the host's XFD, then its registers from the container (a restore
            // that faulted may have loaded part of the guest's state).
            let back = Self::xfd_to(cpu, self.writes_xfd, &mut self.hw_xfd, stats, host_xfd)
                .and_then(|()| {
                    if host_was_live {
                        let rfbm = self.host.restore_rfbm();
                        Self::restore_from(cpu, stats, &self.host, rfbm)
                    } else {
                        Ok(())
                    }
                });
            if let Err(b) = back {
                // The host's state is safe in its container: it is no longer live, the next
                // schedule_in restores it.
                self.host_live = false;
                return Err(host_rollback_failed(e, &b));
            }
            return Err(e);
        }
        // 4. Commit: the current container is the guest's (a flag and an id, no copy).
        // Only a real buffer counts as a reallocation (a confidential container has none).
        let realloc = grown.is_some() && !v.fpstate.is_confidential();
        if let Some(n) = grown {
            v.fpstate = n; // the old container is freed here
            v.realloc_request = 0;
        }
        self.host_live = false;
        self.host.set_in_use(false);
        v.fpstate.set_in_use(true);
        v.run_ended = false;
        self.attached = Some(id);
        self.guest_live = true;
        Ok(realloc)
    }

    /// `detach()` at the end of `vcpu_run()`: saves the guest (unless it was already saved by
    /// [`schedule_out`](Self::schedule_out): "no save at exit", seed 002) and restores the
    /// host. With a realloc request pending (seed 002): allocates the larger container, saves
    /// the guest into it, frees the old one. If that allocation fails, the guest is saved into
    /// its old container, the host is restored as usual, and `enomem` is returned: the vCPU is
    /// detached, its state intact, the request still pending (the next attach serves it).
    ///
    /// Atomic for backend failures: if a save, the XFD switch or the host's restore faults,
    /// the vCPU stays attached with its registers live (re-restored from the container it was
    /// saved into when the host's restore had started), no container is replaced, the request
    /// stays pending, and the error is returned.
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
    #[inline(always)]
    pub fn detach(&mut self, id: u32) -> Result<Detached, EngineError> {
        // The hot path: the guest's registers live, no request pending, XFD already right for
        // the host — save the guest and restore the host in one backend call, nothing between
        // the two instructions. Every other case goes step by step.
        if self.attached != Some(id) || !self.guest_live {
            return self.detach_steps(id);
        }
        let xfd_ok = (self.host.xfd() ^ self.hw_xfd) & (self.writes_xfd as u64).wrapping_neg() == 0;
        let Some(v) = self.vcpus.get_mut_hinted(id) else {
            return self.detach_steps(id);
        };
        if v.realloc_request != 0 || v.fpstate.is_confidential() || !xfd_ok {
            return self.detach_steps(id);
        }
        let rfbm = self.host.restore_rfbm();
        match Self::switch(
            &mut self.cpu,
            &mut self.stats,
            &mut v.fpstate,
            &self.host,
            rfbm,
        ) {
            Ok(()) => {}
            Err((false, e)) => return Err(e),
            Err((true, e)) => return Err(self.detach_switch_rollback(id, e)),
        }
        v.fpstate.set_in_use(false);
        v.run_ended = false;
        self.attached = None;
        self.guest_live = false;
        self.host.set_in_use(true);
        self.host_live = true;
        Ok(Detached { realloc: false })
    }

    /// The host's restore of [`detach`](Self::detach)'s hot path faulted after the guest
    /// was saved: the guest's registers back from its container (XFD was not switched); the
    /// vCPU stays attached.
    #[cold]
    #[inline(never)]
    fn detach_switch_rollback(&mut self, id: u32, e: EngineError) -> EngineError {
        let Some(v) = self.vcpus.get_mut(id) else {
            return e;
        };
        let rfbm = v.fpstate.restore_rfbm();
        match Self::restore_from(&mut self.cpu, &mut self.stats, &v.fpstate, rfbm) {
            Ok(()) => e,
            Err(b) => {
                self.guest_live = false;
                guest_rollback_failed(e, &b, id)
            }
        }
    }

    /// [`detach`](Self::detach) step by step: every case (a pending request, XFD to switch,
    /// state already saved by `schedule_out`, a confidential vCPU, every error).
    #[cold]
    #[inline(never)]
    fn detach_steps(&mut self, id: u32) -> Result<Detached, EngineError> {
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
        // One lookup; the allocator, the CPU and the host container are borrowed apart.
        let Some(v) = self.vcpus.get_mut(id) else {
            return err(ErrorKind::Enoent, format!("no vCPU {id}"));
        };
        let req = v.realloc_request;
        let confidential = v.fpstate.is_confidential();
        // A pending realloc request gets its new container (seed 002).
        let mut grown: Option<FpState> = None;
        let mut failure = None;
        if req != 0 {
            let r = AllocReq {
                features: v.fpstate.xfeatures() | req,
                xfd: v.fpstate.xfd(),
                is_guest: true,
                confidential,
            };
            // Scheduled out: the state is in the old container; grow by conversion.
            let from = (!self.guest_live && !confidential).then_some(&v.fpstate);
            match self.allocs.alloc(&self.cfg, &mut self.stats, r, from) {
                Ok(n) => grown = Some(n),
                Err(e) => failure = Some(e),
            }
        }
        let cpu = &mut self.cpu;
        let stats = &mut self.stats;
        let saves_guest = self.guest_live && !confidential;
        // 1. Save the guest (into the new container when there is one).
        if saves_guest {
            let saved = match grown.as_mut() {
                Some(n) => {
                    // The added components are in init state for this guest (seed 002: "the
                    // XFD controlled component is in init state at that point"), but the
                    // registers may still hold another context's values for them (a
                    // standard-form restore only covers the old container's features): put
                    // them in init state from the fresh container, then save.
                    let added = n.xfeatures() & req;
                    Self::restore_from(cpu, stats, n, added)
                        .and_then(|()| Self::save_into(cpu, stats, n))
                }
                None => Self::save_into(cpu, stats, &mut v.fpstate),
            };
            saved?;
        }
        // 2. XFD to the host's, 3. restore the host.
        let guest_xfd = v.fpstate.xfd();
        let host_xfd = self.host.xfd();
        let step =
            Self::xfd_to(cpu, self.writes_xfd, &mut self.hw_xfd, stats, host_xfd).and_then(|()| {
                let rfbm = self.host.restore_rfbm();
                Self::restore_from(cpu, stats, &self.host, rfbm)
            });
        if let Err(e) = step {
            // Roll back: the guest's XFD and registers, from where they were just saved.
            let back = Self::xfd_to(cpu, self.writes_xfd, &mut self.hw_xfd, stats, guest_xfd)
                .and_then(|()| {
                    if !saves_guest {
                        return Ok(());
                    }
                    let from = grown.as_ref().unwrap_or(&v.fpstate);
                    let rfbm = from.restore_rfbm();
                    Self::restore_from(cpu, stats, from, rfbm)
                });
            if let Err(b) = back {
                // The guest's state is in a container: keep it, not live (scheduled out).
                if let Some(n) = grown.take() {
                    let mut n = n;
                    n.set_in_use(true);
                    v.fpstate = n;
                    v.realloc_request = 0;
                }
                self.guest_live = false;
                return Err(guest_rollback_failed(e, &b, id));
            }
            return Err(e);
        }
        // 4. Commit. Only a real buffer counts as a reallocation.
        let realloc = grown.is_some() && !confidential;
        if let Some(n) = grown {
            v.fpstate = n; // the old container is freed here
            v.realloc_request = 0;
        }
        v.fpstate.set_in_use(false);
        v.run_ended = false;
        self.attached = None;
        self.guest_live = false;
        self.host.set_in_use(true);
        self.host_live = true;
        match failure {
            Some(e) => Err(e),
            None => Ok(Detached { realloc }),
        }
    }

    /// The host thread is scheduled out (preempted, or the kernel is about to use the FPU):
    /// the registers are saved into the current container — the attached vCPU's if any, the
    /// host's otherwise — and are no longer live. State already saved is not saved again:
    /// a second `schedule_out`, and the `detach` that follows, issue no save (seed 002:
    /// "if (!test_thread_flag(TIF_NEED_FPU_LOAD)) save_fpregs_to_fpstate").
    pub fn schedule_out(&mut self) -> Result<(), EngineError> {
        match self.attached {
            Some(id) => {
                if !self.guest_live {
                    return Ok(());
                }
                let Some(v) = self.vcpus.get_mut(id) else {
                    return err(ErrorKind::Enoent, format!("no vCPU {id}"));
                };
                if !v.fpstate.is_confidential() {
                    Self::save_into(&mut self.cpu, &mut self.stats, &mut v.fpstate)?;
                }
                self.guest_live = false;
            }
            None => {
                if self.host_live {
                    Self::save_into(&mut self.cpu, &mut self.stats, &mut self.host)?;
                    self.host_live = false;
                }
            }
        }
        Ok(())
    }

    /// The host thread runs again: the current container's state goes back into the
    /// registers if it is not live (XFD switched first). On failure the state stays in the
    /// container (not live) and XFD as it was.
    pub fn schedule_in(&mut self) -> Result<(), EngineError> {
        let cur_xfd = self.hw_xfd;
        let r = match self.attached {
            Some(id) => {
                if self.guest_live {
                    return Ok(());
                }
                let Some(v) = self.vcpus.get(id) else {
                    return err(ErrorKind::Enoent, format!("no vCPU {id}"));
                };
                let cpu = &mut self.cpu;
                let stats = &mut self.stats;
                Self::xfd_to(
                    cpu,
                    self.writes_xfd,
                    &mut self.hw_xfd,
                    stats,
                    v.fpstate.xfd(),
                )
                .and_then(|()| {
                    if v.fpstate.is_confidential() {
                        return Ok(());
                    }
                    let rfbm = v.fpstate.restore_rfbm();
                    Self::restore_from(cpu, stats, &v.fpstate, rfbm)
                })
                .map(|()| self.guest_live = true)
            }
            None => {
                if self.host_live {
                    return Ok(());
                }
                let cpu = &mut self.cpu;
                let stats = &mut self.stats;
                Self::xfd_to(
                    cpu,
                    self.writes_xfd,
                    &mut self.hw_xfd,
                    stats,
                    self.host.xfd(),
                )
                .and_then(|()| {
                    let rfbm = self.host.restore_rfbm();
                    Self::restore_from(cpu, stats, &self.host, rfbm)
                })
                .map(|()| self.host_live = true)
            }
        };
        if r.is_err() {
            let _ = self.switch_xfd(cur_xfd);
        }
        r
    }

    /// True while the attached vCPU's registers are in the CPU (false when none is attached
    /// or it was scheduled out).
    pub fn guest_live(&self) -> bool {
        self.guest_live
    }

    /// Takes vCPU `id` out of this engine, to be put into another host thread's engine with
    /// [`put_vcpu`](Self::put_vcpu) (the creating thread need not be the running one, seed
    /// 002). Refused (`ebusy`) while it is attached.
    pub fn take_vcpu(&mut self, id: u32) -> Result<Vcpu, EngineError> {
        if self.attached == Some(id) {
            return err(
                ErrorKind::Ebusy,
                format!("vCPU {id} is attached to this thread: detach it before moving it"),
            );
        }
        self.vcpus
            .remove(id)
            .ok_or_else(|| EngineError::new(ErrorKind::Enoent, format!("no vCPU {id}")))
    }

    /// Puts a vCPU taken from another engine into this one. Refused — the vCPU is handed
    /// back inside the error, nothing lost — when the id exists here (`einval`), when this
    /// engine stores containers differently (another save instruction, XCR0 or IA32_XSS:
    /// `einval`), or when its policy is not allowed here (the permissions are per process:
    /// share them with [`with_permissions`](Self::with_permissions)).
    pub fn put_vcpu(&mut self, v: Vcpu) -> Result<u32, RejectedVcpu> {
        let reject = |error: EngineError, vcpu: Vcpu| RejectedVcpu {
            error,
            vcpu: alloc::boxed::Box::new(vcpu),
        };
        if self.vcpus.contains(v.id) {
            let id = v.id;
            return Err(reject(
                EngineError::new(ErrorKind::Einval, format!("vCPU {id} already exists here")),
                v,
            ));
        }
        if v.host != (self.cfg.xcr0, self.cfg.xss, self.cfg.insn) {
            let e = EngineError::new(
                ErrorKind::Einval,
                format!(
                    "vCPU {} was created for host XCR0 {:#x}, IA32_XSS {:#x}, {}; this engine has {:#x}, {:#x}, {}",
                    v.id,
                    v.host.0,
                    v.host.1,
                    v.host.2.name(),
                    self.cfg.xcr0,
                    self.cfg.xss,
                    self.cfg.insn.name()
                ),
            );
            return Err(reject(e, v));
        }
        if let Err(e) = self.check_policy(&v.policy) {
            return Err(reject(e, v));
        }
        let id = v.id;
        // A vCPU's state exists: the guest permissions are locked (they sized it).
        self.perms.lock_guest();
        self.vcpus.insert(v);
        Ok(id)
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
        match self.vcpus.remove(id) {
            Some(_) => Ok(()),
            None => err(ErrorKind::Enoent, format!("no vCPU {id}")),
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::engine::Options;
    use crate::hw::HwBackend;
    use crate::model::Seal;

    /// The trusted-container path on the real CPU: a container the engine's save wrote is
    /// sealed; a copy-in (`set_xsave2`, bytes from outside) unseals it, so the next attach
    /// checks the image; the next detach seals it again.
    #[test]
    fn copy_in_unseals_the_container() {
        let Some(hw) = HwBackend::new() else {
            std::println!("skipped: XSAVE is not usable");
            return;
        };
        let opts = Options {
            ring0: Some(false),
            ..Options::default()
        };
        let mut e = match Engine::new(hw, opts) {
            Ok(e) => e,
            Err(err) => {
                std::println!("skipped: engine: {err}");
                return;
            }
        };
        if e.save_insn().0 == crate::strategy::SaveInsn::Fxsave {
            std::println!("skipped: FXSAVE containers are never sealed");
            return;
        }
        let xcr0 = e.config().xcr0 & !mask::AMX;
        e.create_vcpu(
            0,
            GuestPolicy {
                xcr0_max: xcr0,
                xss: 0,
            },
            false,
        )
        .unwrap();
        let sealed = |e: &Engine<HwBackend>| *e.vcpu(0).unwrap().fpstate().seal() != Seal::NONE;
        assert!(!sealed(&e), "a fresh container is software-written");
        e.attach(0).unwrap();
        e.detach(0).unwrap();
        assert!(sealed(&e));
        assert!(*e.host_fpstate().seal() != Seal::NONE);
        let n = e.uabi_size().unwrap() as usize;
        let mut buf = alloc::vec![0u8; n];
        e.get_xsave2(0, &mut buf).unwrap();
        e.set_xsave2(0, &buf).unwrap();
        assert!(!sealed(&e), "copy-in must unseal");
        let restores = e.stats().restores;
        e.attach(0).unwrap();
        assert_eq!(e.stats().restores, restores + 1);
        e.detach(0).unwrap();
        assert!(sealed(&e));
        // A clone of the vCPU (another buffer) carries no seal.
        let v = e.vcpu(0).unwrap().clone();
        assert_eq!(*v.fpstate().seal(), Seal::NONE);
    }
}
