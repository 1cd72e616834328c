//! The [`Backend`] trait: one interface to the XSAVE machinery, implemented by the model
//! ([`ModelCpu`](super::ModelCpu)), by the user-mode hardware backends ([`HwBackend`](crate::hw::HwBackend) on the
//! live registers, [`CheckedHwBackend`](crate::hw::CheckedHwBackend) on a context image) and, for kernels and hypervisors,
//! by `Ring0Backend` (`xstate::hw::ring0`, cargo feature `ring0`).
//!
//! The register state a backend operates on is *its* register file: for the model the
//! modelled registers; for [`HwBackend`](crate::hw::HwBackend) the calling thread's
//! live registers (one instruction per call, the hot path); for [`CheckedHwBackend`](crate::hw::CheckedHwBackend) a
//! context image that every operation loads into the real registers, operates on, and saves
//! back, inside one `asm!` block (compiled Rust code clobbers vector registers between calls,
//! so the real registers cannot carry state from one call to the next: tests that compare
//! register states across calls with the model use it). Memory operands are plain byte slices: their address is the linear
//! address the instruction sees (alignment rules apply to it).

use alloc::vec::Vec;

use super::fault::Fault;
use super::profile::CpuProfile;
use super::sealed::{Seal, SealedMut, SealedRef};

/// A save instruction (64-bit forms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveInsn {
    /// XSAVE: standard form (SDM Vol. 1 §13.7).
    Xsave,
    /// XSAVEOPT: standard form with the init and modified optimizations (§13.9).
    Xsaveopt,
    /// XSAVEC: compacted form with the init optimization (§13.10).
    Xsavec,
    /// XSAVES: compacted form, supervisor components, both optimizations; CPL 0 (§13.11).
    Xsaves,
    /// FXSAVE: the 512-byte legacy area (Vol. 2 "FXSAVE").
    Fxsave,
}

/// A restore instruction (64-bit forms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreInsn {
    /// XRSTOR, standard or compacted form as XCOMP_BV\[63\] says (§13.8).
    Xrstor,
    /// XRSTORS: compacted form, supervisor components; CPL 0 (§13.12).
    Xrstors,
    /// FXRSTOR: the 512-byte legacy area (Vol. 2 "FXRSTOR").
    Fxrstor,
}

impl SaveInsn {
    /// The mnemonic.
    pub fn name(self) -> &'static str {
        match self {
            SaveInsn::Xsave => "XSAVE",
            SaveInsn::Xsaveopt => "XSAVEOPT",
            SaveInsn::Xsavec => "XSAVEC",
            SaveInsn::Xsaves => "XSAVES",
            SaveInsn::Fxsave => "FXSAVE",
        }
    }
}

impl RestoreInsn {
    /// The mnemonic.
    pub fn name(self) -> &'static str {
        match self {
            RestoreInsn::Xrstor => "XRSTOR",
            RestoreInsn::Xrstors => "XRSTORS",
            RestoreInsn::Fxrstor => "FXRSTOR",
        }
    }
}

/// The MSRs of the XSAVE feature set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Msr {
    /// IA32_XSS (0xDA0): supervisor components enabled for XSAVES/XRSTORS.
    Xss,
    /// IA32_XFD (0x1C4): extended feature disable.
    Xfd,
    /// IA32_XFD_ERR (0x1C5): the XFD-armed components that caused the last #NM.
    XfdErr,
}

impl Msr {
    /// The MSR number.
    pub fn index(self) -> u32 {
        match self {
            Msr::Xss => 0xda0,
            Msr::Xfd => 0x1c4,
            Msr::XfdErr => 0x1c5,
        }
    }
}

/// The XSAVE machinery the guest FPU engine and the tests drive. Every operation returns the
/// fault the instruction would raise as a value.
///
pub trait Backend {
    /// The CPU profile (capabilities, layout, vendor differences).
    fn profile(&self) -> &CpuProfile;

    /// XGETBV: ECX = 0 reads XCR0, ECX = 1 reads XCR0 & XINUSE (SDM Vol. 2 "XGETBV").
    fn xgetbv(&mut self, ecx: u32) -> Result<u64, Fault>;

    /// XSETBV: ECX = 0 writes XCR0, checking every rule of SDM Vol. 2 "XSETBV" (CPL 0).
    fn xsetbv(&mut self, ecx: u32, value: u64) -> Result<(), Fault>;

    /// RDMSR of an XSAVE-related MSR (CPL 0).
    fn rdmsr(&mut self, msr: Msr) -> Result<u64, Fault>;

    /// WRMSR of an XSAVE-related MSR (CPL 0), with its #GP rules.
    fn wrmsr(&mut self, msr: Msr, value: u64) -> Result<(), Fault>;

    /// Executes a save instruction to `mem` with EDX:EAX = `rfbm`. Bytes the instruction does
    /// not write keep their values.
    fn save(&mut self, insn: SaveInsn, mem: &mut [u8], rfbm: u64) -> Result<(), Fault>;

    /// Executes a restore instruction from `mem` with EDX:EAX = `rfbm` (ignored by FXRSTOR).
    fn restore(&mut self, insn: RestoreInsn, mem: &[u8], rfbm: u64) -> Result<(), Fault>;

    /// Loads test values into the registers: `state` is a standard-form image read as a
    /// standard XRSTOR with RFBM = all ones would read it (components whose XSTATE_BV bit is set
    /// are loaded, the others put in init state), except that MXCSR always comes from bytes
    /// 24..27. `xinuse`, when given, sets XINUSE (the model honours it exactly; the hardware
    /// decides its own XINUSE). Never faults on header bits: unknown XSTATE_BV bits, XCOMP_BV
    /// and reserved bytes are ignored; an MXCSR outside MXCSR_MASK is a #GP.
    fn load_state(&mut self, state: &[u8], xinuse: Option<u64>) -> Result<(), Fault>;

    /// The user registers as a standard-form image for XCR0 (what XSAVE with RFBM = all ones
    /// into zeroed memory would write): XSTATE_BV is XINUSE & XCR0.
    fn read_state(&mut self) -> Result<Vec<u8>, Fault>;

    /// [`save`](Self::save) into a buffer that travels with its [`Seal`]. A backend may record
    /// in the seal that the buffer now holds an image its own save instruction wrote (see
    /// [`Seal`]); the default unseals it and saves as usual. Only this crate can make a
    /// [`SealedMut`], and its bytes are reachable only by this crate's code: a backend outside
    /// the crate can forward it to another backend or ignore it, never write behind a seal.
    fn save_sealed(&mut self, insn: SaveInsn, buf: SealedMut<'_>, rfbm: u64) -> Result<(), Fault> {
        let (mem, seal) = buf.split();
        *seal = Seal::NONE;
        self.save(insn, mem, rfbm)
    }

    /// [`restore`](Self::restore) from a buffer with its [`Seal`]. A backend may skip checks
    /// the seal proves hold; the default checks everything.
    fn restore_sealed(
        &mut self,
        insn: RestoreInsn,
        buf: SealedRef<'_>,
        rfbm: u64,
    ) -> Result<(), Fault> {
        self.restore(insn, buf.mem(), rfbm)
    }

    /// A context switch: [`save_sealed`](Self::save_sealed) of the outgoing state into `into`,
    /// then [`restore_sealed`](Self::restore_sealed) of the incoming state from `from`, nothing
    /// in between. A backend may issue the two instructions back to back once it has proved
    /// neither can fault (both buffers trusted); the default makes the two calls. The error
    /// says which step faulted: after [`SwitchFault::Save`] nothing was done, after
    /// [`SwitchFault::Restore`] the outgoing state is saved in `into` (and may also still be in
    /// the registers, partly overwritten: the caller puts back what it needs).
    fn switch_sealed(
        &mut self,
        save: (SaveInsn, u64),
        into: SealedMut<'_>,
        restore: (RestoreInsn, u64),
        from: SealedRef<'_>,
    ) -> Result<(), SwitchFault> {
        switch_in_two_calls(self, save, into, restore, from)
    }
}

/// [`Backend::switch_sealed`] as its two calls, [`Backend::save_sealed`] then
/// [`Backend::restore_sealed`] (the trait's default, and a backend's path for buffers it
/// cannot trust).
pub(crate) fn switch_in_two_calls<B: Backend + ?Sized>(
    b: &mut B,
    save: (SaveInsn, u64),
    into: SealedMut<'_>,
    restore: (RestoreInsn, u64),
    from: SealedRef<'_>,
) -> Result<(), SwitchFault> {
    b.save_sealed(save.0, into, save.1)
        .map_err(SwitchFault::Save)?;
    b.restore_sealed(restore.0, from, restore.1)
        .map_err(SwitchFault::Restore)
}

/// Which step of a [`Backend::switch_sealed`] faulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchFault {
    /// The save faulted: nothing was changed.
    Save(Fault),
    /// The save was done, the restore faulted.
    Restore(Fault),
}
