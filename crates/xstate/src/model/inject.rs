//! Fault injection: a [`Backend`] wrapper that makes a chosen call fault, to prove that code
//! driving a backend (the guest FPU engine) leaves every container and register as it was when
//! an instruction fails.
//!
//! Counted calls are the ones that change state: XSETBV, WRMSR, the save and restore
//! instructions and `load_state`. Reads (XGETBV, RDMSR, `read_state`) are never failed, so a
//! test can always look at the registers. An injected fault is a #GP whose rule says it was
//! injected; the call is not forwarded, so the wrapped backend is unchanged by it.
//!
//! ```
//! use xstate::model::inject::FaultInjector;
//! use xstate::model::{Backend, CpuProfile, ModelCpu, SaveInsn};
//! # use xstate::cpuid::{CpuidDump, Regs};
//! # let mut d = CpuidDump::new("doc");
//! # d.insert(1, 0, Regs { eax: 0, ebx: 0, ecx: (1 << 26) | (1 << 27), edx: 1 << 24 });
//! # d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
//! # d.insert(0xd, 1, Regs { eax: 0x7, ebx: 0x340, ecx: 0, edx: 0 });
//! # d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! let mut cpu = FaultInjector::new(ModelCpu::new(CpuProfile::from_dump(&d)));
//! cpu.xsetbv(0, 0x7).unwrap();
//! let mut mem = xstate::model::AlignedBuf::new(832);
//! cpu.fail_call(2);                                   // the second counted call from now
//! assert!(cpu.save(SaveInsn::Xsave, &mut mem, 0x7).is_ok());
//! assert!(cpu.save(SaveInsn::Xsave, &mut mem, 0x7).is_err());
//! assert!(cpu.save(SaveInsn::Xsave, &mut mem, 0x7).is_ok());
//! assert_eq!(cpu.injected(), 1);
//! ```

use alloc::format;
use alloc::vec::Vec;

use super::backend::{Backend, Msr, RestoreInsn, SaveInsn};
use super::fault::{Exception, Fault};
use super::profile::CpuProfile;

/// The rule of an injected fault.
pub const INJECTED: &str = "fault injected by model::inject::FaultInjector (not a CPU rule)";

/// A backend whose chosen call faults (see the module documentation).
#[derive(Clone, Debug)]
pub struct FaultInjector<B> {
    inner: B,
    calls: u64,
    fail_at: Option<u64>,
    fail_next_restore: bool,
    injected: u64,
}

impl<B: Backend> FaultInjector<B> {
    /// Wraps `inner`; nothing fails until asked.
    pub fn new(inner: B) -> Self {
        FaultInjector {
            inner,
            calls: 0,
            fail_at: None,
            fail_next_restore: false,
            injected: 0,
        }
    }

    /// Makes the `n`-th counted call from now fault (`n` = 1: the next one), once. 0 disarms.
    pub fn fail_call(&mut self, n: u64) {
        self.fail_at = n.checked_sub(1).map(|k| self.calls + k);
    }

    /// Makes the next restore instruction (XRSTOR, XRSTORS, FXRSTOR) fault, once.
    pub fn fail_next_restore(&mut self) {
        self.fail_next_restore = true;
    }

    /// Counted calls so far (failed ones included).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, mutable.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Unwraps.
    pub fn into_inner(self) -> B {
        self.inner
    }

    fn count(&mut self, what: &str, restore: bool) -> Result<(), Fault> {
        let n = self.calls;
        self.calls += 1;
        let hit = self.fail_at == Some(n) || (restore && self.fail_next_restore);
        if !hit {
            return Ok(());
        }
        if self.fail_at == Some(n) {
            self.fail_at = None;
        } else {
            self.fail_next_restore = false;
        }
        self.injected += 1;
        Err(Fault::with(
            Exception::Gp,
            INJECTED,
            format!("{what}, counted call {}", n + 1),
        ))
    }
}

impl<B: Backend> Backend for FaultInjector<B> {
    fn profile(&self) -> &CpuProfile {
        self.inner.profile()
    }

    fn xgetbv(&mut self, ecx: u32) -> Result<u64, Fault> {
        self.inner.xgetbv(ecx)
    }

    fn xsetbv(&mut self, ecx: u32, value: u64) -> Result<(), Fault> {
        self.count("XSETBV", false)?;
        self.inner.xsetbv(ecx, value)
    }

    fn rdmsr(&mut self, msr: Msr) -> Result<u64, Fault> {
        self.inner.rdmsr(msr)
    }

    fn wrmsr(&mut self, msr: Msr, value: u64) -> Result<(), Fault> {
        self.count("WRMSR", false)?;
        self.inner.wrmsr(msr, value)
    }

    fn save(&mut self, insn: SaveInsn, mem: &mut [u8], rfbm: u64) -> Result<(), Fault> {
        self.count(insn.name(), false)?;
        self.inner.save(insn, mem, rfbm)
    }

    fn restore(&mut self, insn: RestoreInsn, mem: &[u8], rfbm: u64) -> Result<(), Fault> {
        self.count(insn.name(), true)?;
        self.inner.restore(insn, mem, rfbm)
    }

    fn load_state(&mut self, state: &[u8], xinuse: Option<u64>) -> Result<(), Fault> {
        self.count("register write", false)?;
        self.inner.load_state(state, xinuse)
    }

    fn read_state(&mut self) -> Result<Vec<u8>, Fault> {
        self.inner.read_state()
    }
}
