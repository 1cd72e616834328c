//! The guest FPU engine of the seeds: configurations, permissions, per-vCPU state containers
//! swapped on guest entry and exit, lazy reallocation on guest XCR0/XFD writes, resizing on
//! CPUID policy changes — as a library a hypervisor can embed, generic over the instruction
//! [`Backend`] (the executable model everywhere, the real CPU where it allows).
//!
//! The design is the one Thomas Gleixner lays out in seed 002 and DESIGN.md §6:
//!
//! * [`config`]: the host, user and guest configurations (max/default features and sizes);
//! * [`perm`]: per-process permissions for dynamic features, host and guest scope;
//! * [`fpstate`]: the container — buffer, sizes, features, XFD, flags — swapped as a whole;
//! * [`vcpu`]: the vCPU life cycle: create → allocate, run → attach … detach, destroy → free
//!   (`vcpu_create() -> alloc()`, `vcpu_run() -> attach() -> vmenter_loop() -> detach()`,
//!   `vcpu_destroy() -> free()`, seed 002);
//! * [`guest`]: what a running guest does that the engine must see — XSETBV, WRMSR of
//!   IA32_XFD / IA32_XFD_ERR / IA32_XSS, register use — and CPUID policy changes (seed 004);
//! * [`uabi`]: `KVM_GET_XSAVE2` / `KVM_SET_XSAVE2` copy-out/copy-in and the compacted-form
//!   interface that also carries supervisor state.
//!
//! The design, the rules and what was measured are written up in `docs/engine.md`.
//!
//! One [`Engine`] models one host thread (the VMM's vCPU thread) on one CPU: the thread's own
//! container and the vCPUs it holds; at most one vCPU is attached at a time. The permissions
//! belong to the process and are shared by every thread's engine
//! ([`Engine::with_permissions`]); a vCPU ([`Vcpu`] is `Send`) moves between threads with
//! [`Engine::take_vcpu`] and [`Engine::put_vcpu`]. The save instruction is chosen by
//! [`crate::strategy`] (Linux or Xen order) or forced; the buffers follow its form.
//!
//! Invariants the tests check:
//! * a vCPU container holds exactly the features its guest can use without an exit, in the
//!   compacted form when the instruction has one — 8 KiB of tiles only once AMX is enabled;
//! * attach saves the host only if its registers are live, switches XFD *before* the restore
//!   and restores the guest; detach saves the guest (unless preemption already saved it) and
//!   restores the host; no copy, no allocation, one vCPU lookup each;
//! * attach, detach, reallocation and policy changes are atomic: a vCPU is attached only once
//!   its state is loaded, and any failing instruction leaves every container and register as
//!   it was (rolled back where it had started), the error reaching the caller;
//! * restores in the compacted form use every enabled feature as RFBM, so any component a
//!   container does not hold is put in init state (SDM Vol. 1 §13.8: XCOMP_BV bit i = 0 ⇒ init):
//!   registers never carry another context's values (XSA-62, DESIGN.md §7); and when a
//!   container grows (a guest's realloc, the host's first use of AMX), the added components
//!   are put in init state in the registers before the save, so a standard-form engine never
//!   saves another context's tiles into the new container either;
//! * a failed allocation leaves the old container and the guest state in place and reaches
//!   the caller as `enomem`.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::engine::{Engine, GuestPolicy, Options};
//! use xstate::model::{CpuProfile, ModelCpu};
//! // A small AVX host with XSAVEC: x87, SSE, AVX.
//! let mut d = CpuidDump::new("doc");
//! d.insert(1, 0, Regs { eax: 0, ebx: 0, ecx: (1 << 26) | (1 << 27), edx: 1 << 24 });
//! d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
//! d.insert(0xd, 1, Regs { eax: 0x7, ebx: 0x340, ecx: 0, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! let cpu = ModelCpu::new(CpuProfile::from_dump(&d));
//! let mut e = Engine::new(cpu, Options { xcr0: Some(0x7), ..Options::default() }).unwrap();
//! e.create_vcpu(0, GuestPolicy { xcr0_max: 0x7, xss: 0 }, false).unwrap();
//! e.attach(0).unwrap();
//! e.xsetbv(0, 0x7).unwrap();
//! e.guest_write(0, 2, &[0xab; 256]).unwrap();
//! e.detach(0).unwrap();
//! assert_eq!(e.vcpu(0).unwrap().fpstate().component(2).unwrap(), vec![0xab; 256]);
//! assert_eq!(e.vcpu(0).unwrap().fpstate().size(), 832);
//! ```

pub mod config;
pub mod error;
pub mod fpstate;
pub mod guest;
pub mod perm;
mod table;
pub mod uabi;
pub mod vcpu;

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;

pub use error::{EngineError, ErrorKind};
pub use guest::{GuestMsr, Outcome, Restored};
pub use perm::{Grant, Permissions, Scope};
pub use uabi::CopyIn;
pub use vcpu::{Detached, GuestPolicy, RejectedVcpu, Vcpu};

use crate::components::{mask, mask_names, Component};
use crate::image::XsaveImage;
use crate::layout::FormLayout;
use crate::model::{Backend, Fault, Msr, RestoreInsn, SwitchFault};
use crate::strategy::{choose, Caps, Policy, SaveInsn};
use config::Configs;
use error::err;
use fpstate::FpState;

/// How to set up an [`Engine`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The host's XCR0. `None`: what the backend's XCR0 is now (XGETBV) — on a fresh
    /// `ModelCpu` that is the RESET value 1, so give it there.
    pub xcr0: Option<u64>,
    /// The host's IA32_XSS. `None`: what the backend's is now, 0 when it cannot be read.
    pub xss: Option<u64>,
    /// The order of preference of the save instruction (DESIGN.md §7).
    pub policy: Policy,
    /// Force a save instruction instead of choosing one (refused when the CPU lacks it).
    pub insn: Option<SaveInsn>,
    /// Whether the engine runs at CPL 0 (XSAVES, XSETBV, WRMSR). `None`: probe the backend
    /// (RDMSR of IA32_XSS succeeds only at CPL 0 on a CPU with XSAVES).
    pub ring0: Option<bool>,
    /// When a vCPU's container grows for dynamic features (see [`Growth`]).
    pub growth: Growth,
}

/// When a vCPU container grows for a dynamic feature (AMX tile data) its guest may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Growth {
    /// The seeds' design (seed 001, seed 002, DESIGN.md §6): only when the guest's XCR0 and
    /// XFD enable the feature (`xcr0 & !xfd & !xfeatures`): a guest XSETBV/WRMSR sets a realloc
    /// request served at the next exit; a VMM restoring XCR0/XFD grows it then. A guest that
    /// never uses AMX never pays for its 8 KiB.
    #[default]
    Lazy,
    /// Linux as merged (`kvm_check_cpuid()` → `fpu_enable_guest_xfd_features()`, DESIGN.md §6):
    /// as soon as the CPUID policy exposes a dynamic feature the guest is permitted to use —
    /// at vCPU creation and on a policy change.
    Eager,
}

/// Instructions and allocations the engine issued (for tests and the benchmark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Save instructions.
    pub saves: u64,
    /// WRMSR of IA32_XFD. (Between the two counters a switch increments, so that the
    /// compiler keeps those increments scalar: a vector add right after XRSTOR would use an
    /// XMM register the restore just loaded.)
    pub xfd_writes: u64,
    /// Restore instructions.
    pub restores: u64,
    /// Containers allocated.
    pub allocations: u64,
    /// Bytes of register state copied by software (container resizing, UABI copies).
    pub copied_bytes: u64,
}

/// Whose registers: the host thread's or a vCPU's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// The host thread (the VMM).
    Host,
    /// A vCPU by id.
    Vcpu(u32),
}

/// The guest FPU engine: one host thread on one CPU, its vCPUs and permissions. See the
/// module documentation.
pub struct Engine<B: Backend> {
    cpu: B,
    cfg: Configs,
    reason: &'static str,
    perms: Arc<Permissions>,
    growth: Growth,
    host: FpState,
    host_live: bool,
    /// The attached vCPU's registers are in the CPU (false after `schedule_out`: they are in
    /// its container, "already saved").
    guest_live: bool,
    hw_xfd: u64,
    has_xfd: bool,
    /// The engine programs IA32_XFD: only at CPL 0. In user mode the OS owns it (Linux arms
    /// it for TILEDATA until the process holds the permission and first uses AMX, DESIGN.md
    /// §6): the values are tracked per container, never written.
    writes_xfd: bool,
    xfd_capable: u64,
    mxcsr_mask: u32,
    attached: Option<u32>,
    vcpus: table::VcpuTable,
    allocs: Allocs,
    stats: Stats,
}

/// What a container allocation is for.
#[derive(Clone, Copy)]
pub(crate) struct AllocReq {
    pub(crate) features: u64,
    pub(crate) xfd: u64,
    pub(crate) is_guest: bool,
    pub(crate) confidential: bool,
}

/// The engine's container allocator: the injected failure and the geometries shared between
/// containers of the same features. Apart from the rest of the engine so that the hot paths
/// can allocate while holding their one borrow of a vCPU.
#[derive(Default)]
pub(crate) struct Allocs {
    fail_next: bool,
    geometries: Vec<Arc<FormLayout>>,
}

impl Allocs {
    /// A container for `req`, filled from `from` by conversion when given; confidential
    /// containers have no buffer (and count as no allocation).
    pub(crate) fn alloc(
        &mut self,
        cfg: &Configs,
        stats: &mut Stats,
        req: AllocReq,
        from: Option<&FpState>,
    ) -> Result<FpState, EngineError> {
        let features = req.features;
        if core::mem::take(&mut self.fail_next) {
            return err(
                ErrorKind::Enomem,
                format!(
                    "allocation of a {} byte container for {features:#x} ({}) failed (injected)",
                    cfg.size_of(features).unwrap_or(0),
                    mask_names(features)
                ),
            );
        }
        let g = self.geometry_for(cfg, features)?;
        let n = match from {
            Some(old) => {
                let mut n = old.resized_with(cfg, g)?;
                n.set_xfd(req.xfd);
                stats.copied_bytes += u64::from(old.size());
                n
            }
            None => FpState::with_geometry(cfg, g, req.xfd, req.is_guest, req.confidential)?,
        };
        if !req.confidential {
            stats.allocations += 1;
        }
        Ok(n)
    }

    /// The geometry of a container for `features`, shared by every container of the same
    /// features (a small cache: a vCPU never pays for its own copy).
    fn geometry_for(
        &mut self,
        cfg: &Configs,
        features: u64,
    ) -> Result<Arc<FormLayout>, EngineError> {
        let xf = FpState::features_for(cfg, features);
        if let Some(g) = self
            .geometries
            .iter()
            .find(|g| g.mask & !mask::COMPACTED == xf)
        {
            return Ok(Arc::clone(g));
        }
        let g = Arc::new(fpstate::geometry(cfg, cfg.insn, xf)?);
        if self.geometries.len() < GEOMETRY_CACHE {
            self.geometries.push(Arc::clone(&g));
        }
        Ok(g)
    }
}

/// Feature sets whose geometry the engine keeps (one per distinct guest policy in practice).
const GEOMETRY_CACHE: usize = 16;

/// The backend fault as an engine error (the engine only issues instructions it expects to
/// succeed; a fault is a broken invariant or a backend that cannot do the operation).
pub(crate) fn fault_err(what: &str, f: &Fault) -> EngineError {
    EngineError::new(ErrorKind::Fault, format!("{what}: {f}"))
}

/// A save or restore of a container that faulted, as an engine error (kept out of the hot
/// paths).
#[cold]
#[inline(never)]
fn insn_fault(insn: &str, dir: &str, f: &Fault) -> EngineError {
    fault_err(&format!("{insn} {dir} the container"), f)
}

/// A WRMSR of IA32_XFD that faulted.
#[cold]
#[inline(never)]
fn xfd_fault(xfd: u64, f: &Fault) -> EngineError {
    fault_err(&format!("WRMSR IA32_XFD {xfd:#x}"), f)
}

/// The model's save and restore instructions for the strategy's save instruction.
#[inline]
pub(crate) fn insns(insn: SaveInsn) -> (crate::model::SaveInsn, RestoreInsn) {
    use crate::model::SaveInsn as M;
    match insn {
        SaveInsn::Xsaves => (M::Xsaves, RestoreInsn::Xrstors),
        SaveInsn::Xsavec => (M::Xsavec, RestoreInsn::Xrstor),
        SaveInsn::Xsaveopt => (M::Xsaveopt, RestoreInsn::Xrstor),
        SaveInsn::Xsave => (M::Xsave, RestoreInsn::Xrstor),
        SaveInsn::Fxsave => (M::Fxsave, RestoreInsn::Fxrstor),
    }
}

impl<B: Backend> Engine<B> {
    /// Sets up the engine on `cpu`: chooses the save instruction, programs XCR0 and IA32_XSS
    /// when they differ (CPL 0 only), computes the configurations, allocates the host thread's
    /// container (default features) and arms XFD for the dynamic features it lacks.
    pub fn new(cpu: B, opts: Options) -> Result<Self, EngineError> {
        Self::build(cpu, opts, None)
    }

    /// An engine for another host thread of the same process: it shares `perms` (take them
    /// from [`process_permissions`](Self::process_permissions) of the first thread's engine),
    /// so a grant on any thread holds on all, and the guest lock set by any thread's first
    /// vCPU holds on all (Linux keeps permissions per process, DESIGN.md §6). `einval` when
    /// `perms` belongs to a host with other supported features.
    pub fn with_permissions(
        cpu: B,
        opts: Options,
        perms: Arc<Permissions>,
    ) -> Result<Self, EngineError> {
        Self::build(cpu, opts, Some(perms))
    }

    fn build(
        mut cpu: B,
        opts: Options,
        perms: Option<Arc<Permissions>>,
    ) -> Result<Self, EngineError> {
        let profile = cpu.profile().clone();
        let layout = profile.layout.clone();
        if !profile.xsave && !profile.fxsr {
            return err(
                ErrorKind::Eopnotsupp,
                "the CPU has neither XSAVE (CPUID.1:ECX[26]) nor FXSAVE (CPUID.1:EDX[24])",
            );
        }
        let ring0 = match opts.ring0 {
            Some(r) => r,
            None => profile.xsaves && cpu.rdmsr(Msr::Xss).is_ok(),
        };
        let caps = Caps::of(&layout, ring0);
        let choice = choose(caps, opts.policy);
        let insn = opts.insn.unwrap_or(choice.insn);
        let allowed = match insn {
            SaveInsn::Xsaves => caps.xsaves && ring0,
            SaveInsn::Xsavec => caps.xsavec,
            SaveInsn::Xsaveopt => caps.xsaveopt,
            SaveInsn::Xsave => caps.xsave,
            SaveInsn::Fxsave => profile.fxsr,
        };
        if !allowed {
            return err(
                ErrorKind::Eopnotsupp,
                format!(
                    "save instruction {} is not available here (CPUID or privilege: ring0 = {ring0})",
                    insn.name()
                ),
            );
        }
        let reason = if opts.insn.is_some() {
            "forced by the caller"
        } else {
            choice.reason
        };
        let xcr0 = match opts.xcr0 {
            Some(v) => v,
            None if profile.xsave => cpu.xgetbv(0).map_err(|f| fault_err("reading XCR0", &f))?,
            None => mask::LEGACY,
        };
        if profile.xsave && cpu.xgetbv(0).ok() != Some(xcr0) {
            cpu.xsetbv(0, xcr0)
                .map_err(|f| fault_err(&format!("setting the host XCR0 to {xcr0:#x}"), &f))?;
        }
        let xss = match opts.xss {
            Some(v) => v,
            None if ring0 => cpu.rdmsr(Msr::Xss).unwrap_or(0),
            None => 0,
        };
        if ring0 && profile.xsaves && cpu.rdmsr(Msr::Xss).ok() != Some(xss) {
            cpu.wrmsr(Msr::Xss, xss)
                .map_err(|f| fault_err(&format!("setting the host IA32_XSS to {xss:#x}"), &f))?;
        }
        let cfg = Configs::new(&layout, xcr0, xss, insn)?;
        let perms = match perms {
            None => Arc::new(Permissions::new(&cfg)),
            Some(p) if p.supported() == cfg.user.max_features => p,
            Some(p) => {
                return err(
                    ErrorKind::Einval,
                    format!(
                        "the shared permissions are for a host supporting {:#x} ({}), this engine's host supports {:#x} ({})",
                        p.supported(),
                        mask_names(p.supported()),
                        cfg.user.max_features,
                        mask_names(cfg.user.max_features)
                    ),
                )
            }
        };
        let xfd_capable = if profile.xfd {
            profile.xfd_capable() & xcr0
        } else {
            0
        };
        let host_features = cfg.host.default_features;
        // Linux arms XFD for every dynamic feature the task's buffer lacks (DESIGN.md §6).
        let host_xfd = xfd_capable & mask::DYNAMIC & !host_features;
        let mut host = FpState::new(&cfg, host_features, host_xfd, false, false)?;
        host.set_in_use(true);
        let mut e = Engine {
            cpu,
            cfg,
            reason,
            perms,
            growth: opts.growth,
            host,
            host_live: true,
            guest_live: false,
            hw_xfd: 0,
            has_xfd: profile.xfd,
            writes_xfd: profile.xfd && ring0,
            xfd_capable,
            mxcsr_mask: profile.mxcsr_mask,
            attached: None,
            vcpus: table::VcpuTable::default(),
            allocs: Allocs::default(),
            stats: Stats::default(),
        };
        if e.writes_xfd {
            e.hw_xfd = e.cpu.rdmsr(Msr::Xfd).unwrap_or(0);
            e.switch_xfd(host_xfd)?;
        }
        Ok(e)
    }

    /// The configurations.
    pub fn config(&self) -> &Configs {
        &self.cfg
    }

    /// The save instruction in use and why it was chosen.
    pub fn save_insn(&self) -> (SaveInsn, &'static str) {
        (self.cfg.insn, self.reason)
    }

    /// The process's permissions.
    pub fn permissions(&self) -> &Permissions {
        &self.perms
    }

    /// The process's permissions, to share with another host thread's engine
    /// ([`with_permissions`](Self::with_permissions)).
    pub fn process_permissions(&self) -> Arc<Permissions> {
        Arc::clone(&self.perms)
    }

    /// When vCPU containers grow for dynamic features.
    pub fn growth(&self) -> Growth {
        self.growth
    }

    /// `ARCH_REQ_XCOMP_PERM` / `ARCH_REQ_XCOMP_GUEST_PERM` (rules in [`perm`]).
    pub fn request_perm(&self, scope: Scope, idx: u32) -> Result<Grant, EngineError> {
        self.perms.request(scope, idx)
    }

    /// The installed sigaltstack size of the process's threads (see
    /// [`Permissions::set_sigaltstack_size`]).
    pub fn set_sigaltstack_size(&self, size: Option<u32>) {
        self.perms.set_sigaltstack_size(size);
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.cpu
    }

    /// The backend, mutable (tests use it to look at or disturb the registers).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.cpu
    }

    /// The host thread's container.
    pub fn host_fpstate(&self) -> &FpState {
        &self.host
    }

    /// True while the registers hold the host thread's live state (not yet saved).
    pub fn host_live(&self) -> bool {
        self.host_live
    }

    /// Instructions and allocations issued so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The attached vCPU, if any.
    pub fn attached(&self) -> Option<u32> {
        self.attached
    }

    /// The value of IA32_XFD the engine last wrote (0 without XFD, and in user mode, where the
    /// OS owns the MSR).
    pub fn hw_xfd(&self) -> u64 {
        self.hw_xfd
    }

    /// The MXCSR mask of the CPU.
    pub fn mxcsr_mask(&self) -> u32 {
        self.mxcsr_mask
    }

    /// Makes the next container allocation fail (`enomem`), once: the failure path of seed
    /// 002 ("If that fails, it does a save and restore with the existing fpstates and return
    /// an error code").
    pub fn fail_next_alloc(&mut self) {
        self.allocs.fail_next = true;
    }

    /// Allocates a container (honours [`fail_next_alloc`](Self::fail_next_alloc)).
    pub(crate) fn alloc(
        &mut self,
        features: u64,
        xfd: u64,
        is_guest: bool,
        confidential: bool,
        from: Option<&FpState>,
    ) -> Result<FpState, EngineError> {
        let req = AllocReq {
            features,
            xfd,
            is_guest,
            confidential,
        };
        self.allocs.alloc(&self.cfg, &mut self.stats, req, from)
    }

    /// Writes IA32_XFD when the value really changes ("when the XFD value really changes then
    /// a wrmsrl", seed 002).
    pub(crate) fn switch_xfd(&mut self, xfd: u64) -> Result<(), EngineError> {
        Self::xfd_to(
            &mut self.cpu,
            self.writes_xfd,
            &mut self.hw_xfd,
            &mut self.stats,
            xfd,
        )
    }

    /// [`switch_xfd`](Self::switch_xfd) on borrowed fields (the hot path holds a vCPU borrow).
    #[inline(always)]
    pub(crate) fn xfd_to(
        cpu: &mut B,
        writes_xfd: bool,
        hw_xfd: &mut u64,
        stats: &mut Stats,
        xfd: u64,
    ) -> Result<(), EngineError> {
        if !writes_xfd || xfd == *hw_xfd {
            return Ok(());
        }
        cpu.wrmsr(Msr::Xfd, xfd).map_err(|f| xfd_fault(xfd, &f))?;
        stats.xfd_writes += 1;
        *hw_xfd = xfd;
        Ok(())
    }

    /// Saves the registers into a container (RFBM = its features).
    #[inline(always)]
    pub(crate) fn save_into(
        cpu: &mut B,
        stats: &mut Stats,
        fp: &mut FpState,
    ) -> Result<(), EngineError> {
        let (s, _) = fp.insns();
        let rfbm = fp.xfeatures();
        match cpu.save_sealed(s, fp.save_target(), rfbm) {
            Ok(()) => {
                stats.saves += 1;
                Ok(())
            }
            Err(f) => Err(insn_fault(s.name(), "into", &f)),
        }
    }

    /// Restores the registers from a container.
    #[inline(always)]
    pub(crate) fn restore_from(
        cpu: &mut B,
        stats: &mut Stats,
        fp: &FpState,
        rfbm: u64,
    ) -> Result<(), EngineError> {
        let (_, r) = fp.insns();
        match cpu.restore_sealed(r, fp.restore_source(), rfbm) {
            Ok(()) => {
                stats.restores += 1;
                Ok(())
            }
            Err(f) => Err(insn_fault(r.name(), "from", &f)),
        }
    }

    /// Saves the registers into `out` (RFBM = its features), then restores them from `inn`
    /// with `rfbm`, nothing in between: one backend call, which may issue both instructions
    /// back to back. Err((saved, e)): `saved` tells whether `out` was written (the restore
    /// faulted) or nothing happened (the save faulted).
    #[inline(always)]
    pub(crate) fn switch(
        cpu: &mut B,
        stats: &mut Stats,
        out: &mut FpState,
        inn: &FpState,
        rfbm: u64,
    ) -> Result<(), (bool, EngineError)> {
        let (s, _) = out.insns();
        let (_, r) = inn.insns();
        let save_rfbm = out.xfeatures();
        match cpu.switch_sealed(
            (s, save_rfbm),
            out.save_target(),
            (r, rfbm),
            inn.restore_source(),
        ) {
            Ok(()) => {
                stats.saves += 1;
                stats.restores += 1;
                Ok(())
            }
            Err(SwitchFault::Save(f)) => Err((false, insn_fault(s.name(), "into", &f))),
            Err(SwitchFault::Restore(f)) => {
                stats.saves += 1;
                Err((true, insn_fault(r.name(), "from", &f)))
            }
        }
    }

    /// The number of register bytes of component `id` (see [`fpstate::register_ranges`]), on
    /// this host.
    pub fn register_len(&self, id: u8) -> Option<usize> {
        let g = self.cfg.layout.geometry(id);
        match id {
            0 => Some(160 - 8),
            1 => Some(256),
            _ if g.size == 0 => None,
            _ => Some(g.size as usize),
        }
    }

    /// Reads the register bytes of component `id` from the live registers.
    fn live_read(&mut self, id: u8) -> Result<Vec<u8>, EngineError> {
        let bit = fpstate::bit(id);
        if bit & self.cfg.xcr0 != 0 {
            let img = self
                .cpu
                .read_state()
                .map_err(|f| fault_err("reading the registers", &f))?;
            let g = self
                .cfg
                .layout
                .standard(self.cfg.xcr0)
                .or_else(|e| err(ErrorKind::Einval, format!("standard layout of XCR0: {e}")))?;
            let bv = fpstate::rd_u64(&img, fpstate::XSTATE_BV);
            return fpstate::component_of(&img, &g, bv, id).ok_or_else(|| {
                EngineError::new(ErrorKind::Einval, format!("component {id} not in XCR0"))
            });
        }
        if bit & self.cfg.xss != 0 && self.cfg.insn == SaveInsn::Xsaves {
            let g = self.cfg.layout.compacted(bit).or_else(|e| {
                err(
                    ErrorKind::Einval,
                    format!("compacted layout of component {id}: {e}"),
                )
            })?;
            let mut img = XsaveImage::new(&g);
            self.cpu
                .save(crate::model::SaveInsn::Xsaves, img.as_mut_bytes(), bit)
                .map_err(|f| fault_err("XSAVES of one component", &f))?;
            return fpstate::component_of(img.as_bytes(), &g, img.xstate_bv(), id).ok_or_else(
                || EngineError::new(ErrorKind::Einval, format!("component {id} not placed")),
            );
        }
        err(
            ErrorKind::Eopnotsupp,
            format!(
                "component {id} ({}) is not enabled on this host (XCR0 {:#x}, IA32_XSS {:#x} with {})",
                Component::name_of(id),
                self.cfg.xcr0,
                self.cfg.xss,
                self.cfg.insn.name()
            ),
        )
    }

    /// Writes the register bytes of component `id` into the live registers, as code using
    /// the registers would. Faults (e.g. #NM for an XFD-armed component) are returned.
    fn live_write(&mut self, id: u8, data: &[u8]) -> Result<Result<(), Fault>, EngineError> {
        let bit = fpstate::bit(id);
        if bit & self.cfg.xcr0 != 0 {
            let mut img = match self.cpu.read_state() {
                Ok(i) => i,
                Err(f) => return Ok(Err(f)),
            };
            let g = self
                .cfg
                .layout
                .standard(self.cfg.xcr0)
                .or_else(|e| err(ErrorKind::Einval, format!("standard layout of XCR0: {e}")))?;
            let bv = fpstate::rd_u64(&img, fpstate::XSTATE_BV);
            if !fpstate::write_component(&mut img, &g, id, data) {
                return err(
                    ErrorKind::Einval,
                    format!(
                        "component {id} ({}): {} register bytes given, {} expected",
                        Component::name_of(id),
                        data.len(),
                        self.register_len(id).unwrap_or(0)
                    ),
                );
            }
            fpstate::wr(&mut img, fpstate::XSTATE_BV, &(bv | bit).to_le_bytes());
            return Ok(self.cpu.load_state(&img, None));
        }
        if bit & self.cfg.xss != 0 && self.cfg.insn == SaveInsn::Xsaves {
            let g = self.cfg.layout.compacted(bit).or_else(|e| {
                err(
                    ErrorKind::Einval,
                    format!("compacted layout of component {id}: {e}"),
                )
            })?;
            let mut img = XsaveImage::new(&g);
            if !fpstate::write_component(img.as_mut_bytes(), &g, id, data) {
                return err(
                    ErrorKind::Einval,
                    format!("component {id}: {} register bytes given", data.len()),
                );
            }
            img.set_xstate_bv(bit);
            return Ok(self.cpu.restore(RestoreInsn::Xrstors, img.as_bytes(), bit));
        }
        err(
            ErrorKind::Eopnotsupp,
            format!(
                "component {id} ({}) is not enabled on this host",
                Component::name_of(id)
            ),
        )
    }

    /// The host thread uses component `id` (writes `data` into its registers). A dynamic
    /// feature armed by XFD takes the first-use path of Linux (DESIGN.md §6): with the host
    /// permission the thread's container grows and XFD is disarmed (returns `true`: the
    /// container was reallocated); without it the thread would get SIGILL (`eperm`).
    pub fn host_write(&mut self, id: u8, data: &[u8]) -> Result<bool, EngineError> {
        if let Some(v) = self.attached {
            return err(
                ErrorKind::Ebusy,
                format!("vCPU {v} is attached: the registers hold its state, not the host's"),
            );
        }
        self.schedule_in()?;
        let bit = fpstate::bit(id);
        let in_host = bit & self.host.xfeatures() != 0;
        let dynamic = bit & mask::DYNAMIC & self.cfg.host.max_features != 0;
        if bit == 0 || (!in_host && !dynamic) {
            return err(
                ErrorKind::Einval,
                format!(
                    "component {id} ({}) is not in the host thread's state {:#x} ({}): the instruction would raise #UD",
                    Component::name_of(id),
                    self.host.xfeatures(),
                    mask_names(self.host.xfeatures())
                ),
            );
        }
        let mut realloc = false;
        if bit & self.host.xfeatures() == 0 {
            // A dynamic feature: permission first, then the first-use reallocation.
            if self.perms.get(Scope::Host) & bit == 0 {
                return err(
                    ErrorKind::Eperm,
                    format!(
                        "the host thread has no permission for component {id} ({}): #NM with XFD_ERR {bit:#x}, then SIGILL (request it with ARCH_REQ_XCOMP_PERM)",
                        Component::name_of(id)
                    ),
                );
            }
            let features = self.host.xfeatures() | bit;
            let xfd = self.host.xfd() & !bit;
            let mut n = self.alloc(features, xfd, false, false, None)?;
            // The registers are live: put the new component in init state (it may hold a
            // guest's values: restores in the standard form do not cover it), save them into
            // the new container, then disarm XFD.
            // Any failure drops the new container: the old one and XFD stay as they were.
            Self::restore_from(&mut self.cpu, &mut self.stats, &n, bit)?;
            Self::save_into(&mut self.cpu, &mut self.stats, &mut n)?;
            self.switch_xfd(xfd)?;
            n.set_in_use(true);
            self.host = n;
            realloc = true;
        }
        match self.live_write(id, data)? {
            Ok(()) => Ok(realloc),
            Err(f) => Err(fault_err(
                &format!("host use of component {id} ({})", Component::name_of(id)),
                &f,
            )),
        }
    }

    /// The register bytes of component `id` of a context, wherever they live: the registers
    /// when the context is current and live, its container otherwise.
    pub fn read_component(&mut self, ctx: Context, id: u8) -> Result<Vec<u8>, EngineError> {
        let not_held = |fp: &FpState| {
            EngineError::new(
                ErrorKind::Einval,
                format!(
                    "component {id} ({}) is not in the container ({})",
                    Component::name_of(id),
                    fp.describe()
                ),
            )
        };
        match ctx {
            Context::Host => {
                if self.attached.is_none() && self.host_live {
                    if self.host.xfeatures() & fpstate::bit(id) == 0 {
                        return Err(not_held(&self.host));
                    }
                    self.live_read(id)
                } else {
                    self.host.component(id).ok_or_else(|| not_held(&self.host))
                }
            }
            Context::Vcpu(v) => {
                let vc = self.vcpu(v)?;
                if vc.fpstate().is_confidential() {
                    return err(
                        ErrorKind::Einval,
                        format!("vCPU {v} is confidential: its registers are not accessible"),
                    );
                }
                if vc.fpstate().xfeatures() & fpstate::bit(id) == 0 {
                    return Err(not_held(vc.fpstate()));
                }
                if self.attached == Some(v) && self.guest_live {
                    self.live_read(id)
                } else {
                    let fp = vc.fpstate();
                    fp.component(id).ok_or_else(|| not_held(fp))
                }
            }
        }
    }

    /// Consumes the engine, returning the backend.
    pub fn into_backend(self) -> B {
        self.cpu
    }
}
