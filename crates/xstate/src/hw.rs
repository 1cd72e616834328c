//! Safe wrappers around the user-mode instructions this crate needs from the real CPU
//! (x86-64 only): CPUID, XGETBV, and the XSAVE family (XSAVE, XSAVEOPT, XSAVEC, XRSTOR,
//! FXSAVE, FXRSTOR, 64-bit forms).
//!
//! Every `unsafe` block here is an instruction whose preconditions are checked first, so that
//! the safe functions cannot fault:
//!
//! * **CPU support**: XSAVE needs CPUID.1:ECX.XSAVE and CR4.OSXSAVE (CPUID.1:ECX.OSXSAVE),
//!   XSAVEOPT / XSAVEC need CPUID.(0xD,1):EAX bits 0 / 1, FXSAVE needs CPUID.1:EDX.FXSR
//!   (otherwise #UD, SDM Vol. 2 "XSAVE", "XSAVEOPT", "XSAVEC", "FXSAVE").
//! * **Alignment**: the memory operand must be 64-byte aligned for the XSAVE family and 16-byte
//!   aligned for FXSAVE/FXRSTOR (otherwise #GP). [`AlignedBuf`] gives such memory.
//! * **Size**: the buffer must hold every byte the instruction may touch for the requested
//!   feature bitmap, computed from CPUID leaf 0xD (a shorter slice would let the CPU write
//!   past it).
//! * **Restores**: XRSTOR/FXRSTOR of an arbitrary image raise #GP on a bad header or MXCSR
//!   (SDM Vol. 1 §13.8). [`Host::xrstor`] and [`Host::fxrstor`] validate the image first
//!   and return [`HwError::WouldFault`] instead. They also refuse images that would leave
//!   the calling thread in a state where *later* ordinary code traps (unmasked x87/SSE
//!   exceptions, a PKRU that denies access to protection key 0, components the OS may arm
//!   with XFD). Arbitrary images belong in [`sandbox`], which runs the restore in a forked
//!   child where a fault is an answer rather than a crash.
//!
//! Register contents are changed only by the restore wrappers and [`Host::sequence`]; their
//! `asm!` blocks declare every vector, mask and x87 register clobbered (`clobber_abi("C")`).
//!
//! ```
//! use xstate::hw::{AlignedBuf, Host};
//! let host = Host::detect();
//! if host.xsave_usable() {
//!     let mut buf = AlignedBuf::new(host.standard_size() as usize);
//!     host.xsave(buf.as_mut_slice(), u64::MAX).unwrap();
//!     // XSAVE wrote the legacy area: FCW is never 0 in a running program.
//!     assert_ne!(u16::from_le_bytes([buf[0], buf[1]]), 0);
//! }
//! ```

use crate::components::mask;
use crate::cpuid::{CpuidDump, Regs};
use crate::layout::{Layout, EXTENDED_START, LEGACY_SIZE};

pub mod checked;
pub mod guard;
mod host_cpuid;
mod insn;
pub mod live;
#[cfg(feature = "ring0")]
pub mod ring0;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod sandbox;

pub use checked::CheckedHwBackend;
pub use live::HwBackend;
#[cfg(feature = "ring0")]
pub use ring0::Ring0Backend;

/// Executes CPUID with EAX = `leaf`, ECX = `subleaf`.
///
/// ```
/// let r = xstate::hw::cpuid(0, 0);
/// assert!(r.eax >= 1);
/// ```
pub fn cpuid(leaf: u32, subleaf: u32) -> Regs {
    // CPUID exists on every x86-64 processor; the intrinsic is safe.
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    Regs {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// True when CR4.OSXSAVE is set (CPUID.1:ECX bit 27), i.e. XGETBV may be executed.
pub fn os_xsave() -> bool {
    cpuid(1, 0).ecx & (1 << 27) != 0
}

/// True when XGETBV with ECX = 1 is supported (CPUID.(0xD,1):EAX bit 2).
pub fn has_xgetbv1() -> bool {
    os_xsave() && cpuid(0, 0).eax >= 0xd && cpuid(0xd, 1).eax & 4 != 0
}

/// Executes XGETBV(`xcr`) when the CPU allows it: ECX = 0 reads XCR0, ECX = 1 reads
/// XCR0 & XINUSE. Returns 0 when CR4.OSXSAVE is clear, or for ECX = 1 without XGETBV1
/// support (where the instruction would raise #UD or #GP), and for any other `xcr`.
///
/// ```
/// let xcr0 = xstate::hw::xgetbv(0);
/// if xstate::hw::os_xsave() { assert_eq!(xcr0 & 3, 3); }
/// ```
pub fn xgetbv(xcr: u32) -> u64 {
    let allowed = match xcr {
        0 => os_xsave(),
        1 => has_xgetbv1(),
        _ => false,
    };
    xgetbv_if(xcr, allowed)
}

/// XGETBV(`xcr`) when `allowed` says CPUID permits it (CR4.OSXSAVE for ECX = 0, plus
/// CPUID.(0xD,1):EAX\[2\] for ECX = 1), from CPUID answers the caller already holds (CPUID
/// executes in microseconds in a VM; these bits do not change under a running process).
pub(crate) fn xgetbv_if(xcr: u32, allowed: bool) -> u64 {
    if !allowed || xcr > 1 {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set (the caller's CPUID answer) so XGETBV does not raise #UD;
    // ECX is 0 or a supported 1, so it does not raise #GP. It touches no memory.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") xcr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub use crate::image::AlignedBuf;

/// Why a hardware wrapper refused to execute its instruction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HwError {
    /// The CPU or the OS does not provide the instruction (it would raise #UD).
    #[error("{insn} is not available: {why}")]
    Unsupported {
        /// Instruction name.
        insn: &'static str,
        /// Which CPUID bit or control bit is missing.
        why: &'static str,
    },
    /// The memory operand is not aligned as the instruction requires (it would raise #GP).
    #[error("{insn}: memory operand at {addr:#x} is not {align}-byte aligned (#GP)")]
    Misaligned {
        /// Instruction name.
        insn: &'static str,
        /// Address of the buffer.
        addr: usize,
        /// Required alignment.
        align: usize,
    },
    /// The buffer is shorter than what the instruction may touch.
    #[error("{insn}: buffer of {have} bytes, but the instruction may touch {need} bytes for this feature bitmap")]
    TooSmall {
        /// Instruction name.
        insn: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The image breaks an architectural rule of the restore (the instruction would raise
    /// #GP): the first violation the [`validate`](crate::validate) profile of this CPU reports.
    #[error("{insn}: {violation}")]
    Violates {
        /// Instruction name.
        insn: &'static str,
        /// The broken rule, its offset and value.
        violation: crate::validate::Violation,
    },
    /// The image would leave a state in which later ordinary code traps (or is refused
    /// conservatively); see the module docs.
    #[error("{insn}: {field} at offset {offset}: {rule}")]
    WouldFault {
        /// Instruction name.
        insn: &'static str,
        /// Field of the image.
        field: &'static str,
        /// Byte offset of the field.
        offset: usize,
        /// The rule (SDM section) the image breaks.
        rule: &'static str,
    },
}

/// A save instruction of the hardware wrappers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SaveOp {
    /// XSAVE64 (standard form).
    Xsave,
    /// XSAVEOPT64 (standard form, init and modified optimizations).
    Xsaveopt,
    /// XSAVEC64 (compacted form, init optimization).
    Xsavec,
    /// FXSAVE64 (512-byte legacy area).
    Fxsave,
}

impl SaveOp {
    /// The mnemonic.
    pub fn name(self) -> &'static str {
        match self {
            SaveOp::Xsave => "XSAVE",
            SaveOp::Xsaveopt => "XSAVEOPT",
            SaveOp::Xsavec => "XSAVEC",
            SaveOp::Fxsave => "FXSAVE",
        }
    }
}

/// An instruction [`Host::sequence`] runs between its restore and its save. Each changes
/// registers the way ordinary software does, which changes XINUSE and the modified-optimization
/// tracking the way the CPU really does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mid {
    /// Nothing.
    None,
    /// VZEROUPPER: zeroes bits 511:128 of ZMM0-15 (AVX and ZMM_Hi256 to init).
    Vzeroupper,
    /// VZEROALL: zeroes ZMM0-15 bits 511:0.
    Vzeroall,
    /// FNINIT: x87 control/status/tag words to their init values (FCW 0x37F).
    Fninit,
    /// `PXOR XMM0, XMM0`: writes an SSE register (with its value zero).
    PxorXmm0,
    /// `VPXOR YMM1, YMM1, YMM1`: writes a full YMM register (upper half zeroed).
    VpxorYmm1,
    /// `KXORW K1, K1, K1`: writes an opmask register (AVX-512 only).
    KxorK1,
    /// `LDMXCSR` of 0x1F80 (the init MXCSR).
    LdmxcsrInit,
    /// `FLD1`: pushes +1.0 on the x87 stack (sets FOP and FIP as every non-control x87
    /// instruction does).
    Fld1,
    /// `FLD qword ptr [rsp-16]`: pushes a double from memory (sets FOP, FIP and FDP).
    FldMem,
    /// `FNCLEX`: clears the x87 exception flags, ES and B.
    Fnclex,
}

impl Mid {
    fn code(self) -> u64 {
        match self {
            Mid::None => 0,
            Mid::Vzeroupper => 1,
            Mid::Vzeroall => 2,
            Mid::Fninit => 3,
            Mid::PxorXmm0 => 4,
            Mid::VpxorYmm1 => 5,
            Mid::KxorK1 => 6,
            Mid::LdmxcsrInit => 7,
            Mid::Fld1 => 8,
            Mid::FldMem => 9,
            Mid::Fnclex => 10,
        }
    }
}

/// The restore step of a [`Sequence`].
#[derive(Debug)]
pub enum Restore<'a> {
    /// XRSTOR64 of `mem` with EDX:EAX = `rfbm` (standard or compacted, as XCOMP_BV\[63\] says).
    Xrstor {
        /// The image (64-byte aligned); mutable because a patch may write into it.
        mem: &'a mut [u8],
        /// EDX:EAX.
        rfbm: u64,
    },
    /// FXRSTOR64 of `mem` (16-byte aligned, 512 bytes).
    Fxrstor {
        /// The legacy area.
        mem: &'a mut [u8],
    },
}

/// Steps run by [`Host::sequence`], in this order, each optional.
#[derive(Debug)]
pub struct Sequence<'a> {
    /// A standard-form image restored first with RFBM = all ones (sets every XCR0 component:
    /// the "register file" to start from; XSTATE_BV bits clear put components in init state).
    pub pre: Option<&'a [u8]>,
    /// The restore under test.
    pub restore: Option<Restore<'a>>,
    /// An instruction that changes registers the way ordinary code does.
    pub mid: Mid,
    /// Bytes copied (by `rep movsb`, no vector register involved) into the restore buffer at
    /// an offset after the restore: memory changed behind XSAVEOPT's modified optimization.
    pub patch: Option<(usize, &'a [u8])>,
    /// The save under test: instruction, memory, EDX:EAX.
    pub save: Option<(SaveOp, &'a mut [u8], u64)>,
    /// Instead of `save`: the save instruction and EDX:EAX, writing into the restore buffer
    /// itself (same linear address as the restore, as XSAVEOPT's modified optimization needs).
    pub save_in_place: Option<(SaveOp, u64)>,
}

impl Default for Sequence<'_> {
    fn default() -> Self {
        Sequence {
            pre: None,
            restore: None,
            mid: Mid::None,
            patch: None,
            save: None,
            save_in_place: None,
        }
    }
}

/// What [`Host::sequence`] reports besides the memory it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceReport {
    /// XGETBV(1) after the restore and the middle instruction, before the save (None without
    /// XGETBV1 support).
    pub xinuse: Option<u64>,
}

/// The parameter block of the sequence routine; read by the `asm!` through one pointer.
#[repr(C)]
pub(crate) struct SeqParams {
    pub ctx: *mut u8,
    pub src: *const u8,
    pub rrfbm: u64,
    pub do_restore: u64,
    pub mid: u64,
    pub patch_dst: *mut u8,
    pub patch_src: *const u8,
    pub patch_len: u64,
    pub dst: *mut u8,
    pub srfbm: u64,
    pub save: u64,
    pub want_xinuse: u64,
    pub xinuse: u64,
    pub restore_ctx: u64,
    pub pre: *const u8,
    pub do_pre: u64,
}

/// Runs: XSAVE64 of the caller's state to `ctx` (RFBM all ones) when `restore_ctx`; XRSTOR64 of
/// `pre` with RFBM all ones when `do_pre`; XRSTOR64 of `src` with `rrfbm` when `do_restore` is 1
/// (FXRSTOR64 when 2); the middle instruction; XGETBV(1) into `xinuse` when
/// asked; a `rep movsb` of `patch_len` bytes; the save instruction `save` (1 XSAVE, 2 XSAVEOPT,
/// 3 XSAVEC, 4 FXSAVE, 0 none) to `dst` with `srfbm`; XRSTOR64 of `ctx` when `restore_ctx`.
///
/// # Safety
/// Every pointer must be valid for what the instructions touch, aligned, and every instruction
/// chosen must be supported; the restore of `src` may fault if its image is invalid.
pub(crate) unsafe fn run_sequence(p: &mut SeqParams) {
    let pp: *mut SeqParams = p;
    // SAFETY: the caller guarantees the preconditions listed above. Every vector, mask and x87
    // register is declared clobbered (clobber_abi), the caller's values of them are saved to
    // and restored from `ctx` when `restore_ctx` is set, and the flags are not preserved.
    unsafe {
        core::arch::asm!(
            "cmp qword ptr [r12 + 104], 0",
            "je 2f",
            "mov rdi, [r12]",
            "mov eax, -1",
            "mov edx, -1",
            "xsave64 [rdi]",
            "2:",
            "cmp qword ptr [r12 + 120], 0",
            "je 22f",
            "mov rdi, [r12 + 112]",
            "mov eax, -1",
            "mov edx, -1",
            "xrstor64 [rdi]",
            "22:",
            "cmp qword ptr [r12 + 24], 0",
            "je 3f",
            "mov rdi, [r12 + 8]",
            "cmp qword ptr [r12 + 24], 2",
            "jne 23f",
            "fxrstor64 [rdi]",
            "jmp 3f",
            "23:",
            "mov eax, [r12 + 16]",
            "mov edx, [r12 + 20]",
            "xrstor64 [rdi]",
            "3:",
            "mov rax, [r12 + 32]",
            "cmp rax, 1",
            "jne 4f",
            "vzeroupper",
            "jmp 20f",
            "4:",
            "cmp rax, 2",
            "jne 5f",
            "vzeroall",
            "jmp 20f",
            "5:",
            "cmp rax, 3",
            "jne 6f",
            "fninit",
            "jmp 20f",
            "6:",
            "cmp rax, 4",
            "jne 7f",
            "pxor xmm0, xmm0",
            "jmp 20f",
            "7:",
            "cmp rax, 5",
            "jne 8f",
            "vpxor ymm1, ymm1, ymm1",
            "jmp 20f",
            "8:",
            "cmp rax, 6",
            "jne 9f",
            "kxorw k1, k1, k1",
            "jmp 20f",
            "9:",
            "cmp rax, 7",
            "jne 12f",
            "mov dword ptr [rsp - 8], 0x1f80",
            "ldmxcsr [rsp - 8]",
            "jmp 20f",
            "12:",
            "cmp rax, 8",
            "jne 13f",
            "fld1",
            "jmp 20f",
            "13:",
            "cmp rax, 10",
            "jne 14f",
            "fnclex",
            "jmp 20f",
            "14:",
            "cmp rax, 9",
            "jne 20f",
            "mov dword ptr [rsp - 16], 0",
            "mov dword ptr [rsp - 12], 0x3ff00000",
            "fld qword ptr [rsp - 16]",
            "20:",
            "cmp qword ptr [r12 + 88], 0",
            "je 21f",
            "mov ecx, 1",
            "xgetbv",
            "mov [r12 + 96], eax",
            "mov [r12 + 100], edx",
            "21:",
            "mov rcx, [r12 + 56]",
            "mov rdi, [r12 + 40]",
            "mov rsi, [r12 + 48]",
            "rep movsb",
            "mov rdi, [r12 + 64]",
            "mov eax, [r12 + 72]",
            "mov edx, [r12 + 76]",
            "mov rcx, [r12 + 80]",
            "cmp rcx, 1",
            "jne 31f",
            "xsave64 [rdi]",
            "jmp 40f",
            "31:",
            "cmp rcx, 2",
            "jne 32f",
            "xsaveopt64 [rdi]",
            "jmp 40f",
            "32:",
            "cmp rcx, 3",
            "jne 33f",
            "xsavec64 [rdi]",
            "jmp 40f",
            "33:",
            "cmp rcx, 4",
            "jne 40f",
            "fxsave64 [rdi]",
            "40:",
            "cmp qword ptr [r12 + 104], 0",
            "je 41f",
            "mov rdi, [r12]",
            "mov eax, -1",
            "mov edx, -1",
            "xrstor64 [rdi]",
            "41:",
            in("r12") pp,
            clobber_abi("C"),
        );
    }
}

/// The real CPU's XSAVE facilities, read once from CPUID and XGETBV. All XSAVE-family
/// wrappers are methods so that their checks use this cached data.
#[derive(Clone, Debug)]
pub struct Host {
    layout: Layout,
    xcr0: u64,
    xsave: bool,
    fxsr: bool,
    xsaveopt: bool,
    xsavec: bool,
    xgetbv1: bool,
    xfd: bool,
    avx: bool,
    avx512: bool,
    mxcsr_mask: u32,
}

impl Host {
    /// Reads this CPU. Never fails: what is missing shows in the capability methods and makes
    /// the corresponding wrappers return [`HwError::Unsupported`].
    pub fn detect() -> Host {
        let dump = CpuidDump::from_host();
        let layout = Layout::from_dump(&dump);
        let xsave = dump.has_xsave() && dump.os_xsave();
        let leaf = dump.leaf_0d();
        let xcr0 = xgetbv_if(0, xsave);
        let mut h = Host {
            layout,
            xcr0,
            xsave,
            fxsr: dump.has_fxsr(),
            xsaveopt: xsave && leaf.has_xsaveopt(),
            xsavec: xsave && leaf.has_xsavec(),
            xgetbv1: xsave && leaf.has_xgetbv1(),
            xfd: xsave && leaf.has_xfd(),
            avx: xcr0 & mask::AVX != 0,
            avx512: xcr0 & mask::AVX512 == mask::AVX512,
            mxcsr_mask: 0xffbf,
        };
        if h.fxsr {
            let mut b = AlignedBuf::new(512);
            if h.fxsave(&mut b).is_ok() {
                let m = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
                // SDM Vol. 1 §11.6.6: a zero MXCSR_MASK field means the default 0xFFBF.
                h.mxcsr_mask = if m == 0 { 0xffbf } else { m };
            }
        }
        h
    }

    /// The layout engine for this CPU.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// XCR0 as set by the OS (0 without XSAVE).
    pub fn xcr0(&self) -> u64 {
        self.xcr0
    }

    /// XSAVE, XRSTOR and XGETBV are usable (CPUID.1:ECX.XSAVE and CR4.OSXSAVE).
    pub fn xsave_usable(&self) -> bool {
        self.xsave
    }

    /// XSAVEOPT is usable.
    pub fn has_xsaveopt(&self) -> bool {
        self.xsaveopt
    }

    /// XSAVEC and the compacted form of XRSTOR are usable.
    pub fn has_xsavec(&self) -> bool {
        self.xsavec
    }

    /// XGETBV with ECX = 1 is usable.
    pub fn has_xgetbv1(&self) -> bool {
        self.xgetbv1
    }

    /// FXSAVE/FXRSTOR are usable.
    pub fn has_fxsr(&self) -> bool {
        self.fxsr
    }

    /// The CPU supports XFD (the OS may arm IA32_XFD for XFD-capable components).
    pub fn has_xfd(&self) -> bool {
        self.xfd
    }

    /// MXCSR_MASK of this CPU (from FXSAVE; 0xFFBF when it stores 0).
    pub fn mxcsr_mask(&self) -> u32 {
        self.mxcsr_mask
    }

    /// Standard-form size for the current XCR0 (at least 576), 0 without XSAVE.
    pub fn standard_size(&self) -> u32 {
        if !self.xsave {
            return 0;
        }
        self.layout
            .standard(self.xcr0)
            .map(|l| l.size.max(EXTENDED_START))
            .unwrap_or(0)
    }

    /// Compacted-form size for the current XCR0 (user components only; at least 576).
    pub fn compacted_size(&self) -> u32 {
        if !self.xsave {
            return 0;
        }
        self.layout
            .compacted(self.xcr0)
            .map(|l| l.size.max(EXTENDED_START))
            .unwrap_or(0)
    }

    /// XGETBV(1): XCR0 & XINUSE.
    pub fn xinuse(&self) -> Result<u64, HwError> {
        if !self.xgetbv1 {
            return Err(HwError::Unsupported {
                insn: "XGETBV(1)",
                why: "CPUID.(0xD,1):EAX[2] is clear or CR4.OSXSAVE is clear",
            });
        }
        Ok(xgetbv(1))
    }

    /// The bytes a save/restore of `mask` touches in the given form.
    fn need(&self, insn: &'static str, compacted: bool, m: u64) -> Result<usize, HwError> {
        let l = if compacted {
            self.layout.compacted(m & !mask::COMPACTED)
        } else {
            self.layout.standard(m)
        };
        match l {
            Ok(l) => Ok(l.size.max(EXTENDED_START) as usize),
            Err(_) => Err(HwError::Unsupported {
                insn,
                why: "CPUID leaf 0xD does not describe every component of the feature bitmap",
            }),
        }
    }

    fn check_save(&self, op: SaveOp, mem: &[u8], rfbm: u64) -> Result<(), HwError> {
        let insn = op.name();
        let (ok, why) = match op {
            SaveOp::Xsave => (self.xsave, "CPUID.1:ECX.XSAVE or CR4.OSXSAVE is clear"),
            SaveOp::Xsaveopt => (self.xsaveopt, "CPUID.(0xD,1):EAX[0] is clear"),
            SaveOp::Xsavec => (self.xsavec, "CPUID.(0xD,1):EAX[1] is clear"),
            SaveOp::Fxsave => (self.fxsr, "CPUID.1:EDX.FXSR is clear"),
        };
        if !ok {
            return Err(HwError::Unsupported { insn, why });
        }
        let align = if op == SaveOp::Fxsave { 16 } else { 64 };
        let addr = mem.as_ptr() as usize;
        if addr % align != 0 {
            return Err(HwError::Misaligned { insn, addr, align });
        }
        let need = match op {
            SaveOp::Fxsave => LEGACY_SIZE as usize,
            SaveOp::Xsave | SaveOp::Xsaveopt => self.need(insn, false, rfbm & self.xcr0)?,
            SaveOp::Xsavec => self.need(insn, true, rfbm & self.xcr0)?,
        };
        if mem.len() < need {
            return Err(HwError::TooSmall {
                insn,
                need,
                have: mem.len(),
            });
        }
        Ok(())
    }

    fn save(&self, op: SaveOp, mem: &mut [u8], rfbm: u64) -> Result<(), HwError> {
        self.check_save(op, mem, rfbm)?;
        let insn = match op {
            SaveOp::Xsave => crate::model::SaveInsn::Xsave,
            SaveOp::Xsaveopt => crate::model::SaveInsn::Xsaveopt,
            SaveOp::Xsavec => crate::model::SaveInsn::Xsavec,
            SaveOp::Fxsave => crate::model::SaveInsn::Fxsave,
        };
        // SAFETY: check_save verified CPU/OS support (no #UD), alignment (no #GP) and that `mem`
        // holds every byte the instruction writes for RFBM = rfbm & XCR0 (no write outside the
        // slice, which we borrow mutably). Saves only read registers.
        unsafe { insn::save(insn, mem, rfbm) };
        Ok(())
    }

    /// XSAVE64 to `mem` with EDX:EAX = `rfbm` (SDM Vol. 2 "XSAVE", Vol. 1 §13.7).
    pub fn xsave(&self, mem: &mut [u8], rfbm: u64) -> Result<(), HwError> {
        self.save(SaveOp::Xsave, mem, rfbm)
    }

    /// XSAVEOPT64 to `mem` with EDX:EAX = `rfbm` (SDM Vol. 2 "XSAVEOPT", Vol. 1 §13.9).
    pub fn xsaveopt(&self, mem: &mut [u8], rfbm: u64) -> Result<(), HwError> {
        self.save(SaveOp::Xsaveopt, mem, rfbm)
    }

    /// XSAVEC64 to `mem` with EDX:EAX = `rfbm` (SDM Vol. 2 "XSAVEC", Vol. 1 §13.10).
    pub fn xsavec(&self, mem: &mut [u8], rfbm: u64) -> Result<(), HwError> {
        self.save(SaveOp::Xsavec, mem, rfbm)
    }

    /// FXSAVE64 to `mem` (SDM Vol. 2 "FXSAVE").
    pub fn fxsave(&self, mem: &mut [u8]) -> Result<(), HwError> {
        self.save(SaveOp::Fxsave, mem, 0)
    }

    /// Checks that XRSTOR64 of `mem` with `rfbm` cannot fault (SDM Vol. 1 §13.8, Vol. 2
    /// "XRSTOR") and leaves no state in which later ordinary code traps (module docs).
    pub fn check_xrstor(&self, mem: &[u8], rfbm: u64) -> Result<(), HwError> {
        const I: &str = "XRSTOR";
        if !self.xsave {
            return Err(HwError::Unsupported {
                insn: I,
                why: "CPUID.1:ECX.XSAVE or CR4.OSXSAVE is clear",
            });
        }
        let addr = mem.as_ptr() as usize;
        if addr % 64 != 0 {
            return Err(HwError::Misaligned {
                insn: I,
                addr,
                align: 64,
            });
        }
        if mem.len() < EXTENDED_START as usize {
            return Err(HwError::TooSmall {
                insn: I,
                need: EXTENDED_START as usize,
                have: mem.len(),
            });
        }
        let q = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&mem[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let wf = |field, offset, rule| HwError::WouldFault {
            insn: I,
            field,
            offset,
            rule,
        };
        // The architectural #GP rules (SDM Vol. 1 §13.8): one implementation, the validate
        // profiles, which the test suite checks against this CPU's XRSTOR.
        let cfg = crate::validate::RestoreConfig {
            xcr0: self.xcr0,
            xss: 0,
            request: rfbm,
            mxcsr_mask: self.mxcsr_mask,
            xsavec: self.xsavec,
            xsaves: false,
            linear_address_bits: 48,
        };
        if let Some(violation) = crate::validate::xrstor_any(mem, &cfg).into_iter().next() {
            return Err(HwError::Violates { insn: I, violation });
        }
        let xstate_bv = q(512);
        let xcomp_bv = q(520);
        let rfbm = rfbm & self.xcr0;
        let compacted = self.xsavec && xcomp_bv & mask::COMPACTED != 0;
        let loaded = xstate_bv & rfbm;
        // Conservative: a CPU without XSAVEC has no use for header bytes 24..63; refuse rather
        // than rely on a reading of the SDM no such CPU here can confirm.
        if !self.xsavec && mem[536..576].iter().any(|&b| b != 0) {
            return Err(wf(
                "header bytes 24..63",
                536,
                "reserved header bytes are not zero on a CPU without XSAVEC (refused conservatively)",
            ));
        }
        let need = if compacted {
            self.need(I, true, xcomp_bv)?
        } else {
            self.need(I, false, rfbm)?
        };
        if mem.len() < need {
            return Err(HwError::TooSmall {
                insn: I,
                need,
                have: mem.len(),
            });
        }
        // MXCSR is loaded with SSE restored from a compacted image, or with RFBM[1] or
        // RFBM[2] in the standard form (DESIGN.md §5).
        let mxcsr_loaded = if compacted {
            loaded & mask::SSE != 0
        } else {
            rfbm & (mask::SSE | mask::AVX) != 0
        };
        if mxcsr_loaded {
            check_mxcsr_masked(I, mem)?;
        }
        // Beyond the instruction itself: the state left behind must not make later code trap.
        if self.xfd {
            let mut capable = 0u64;
            for i in 2..63u8 {
                if self.layout.geometry(i).xfd {
                    capable |= 1 << i;
                }
            }
            if loaded & capable != 0 {
                return Err(wf("XSTATE_BV", 512, "loads an XFD-capable component the OS may have armed in IA32_XFD (#NM, SDM §13.14); use the sandbox"));
            }
        }
        if loaded & mask::X87 != 0 {
            check_x87_env(mem)?;
        }
        if loaded & mask::PKRU != 0 {
            let placed = if compacted {
                self.layout.compacted(xcomp_bv & !mask::COMPACTED)
            } else {
                self.layout.standard(self.xcr0)
            };
            if let Some(p) = placed.ok().and_then(|l| l.offset_of(9)) {
                let p = p as usize;
                if p + 4 <= mem.len() && mem[p] & 3 != 0 {
                    return Err(wf("PKRU", p, "PKRU denies access to protection key 0: every memory access after the restore would fault"));
                }
            }
        }
        Ok(())
    }

    /// XRSTOR64 of `mem` with EDX:EAX = `rfbm`, after [`check_xrstor`](Self::check_xrstor).
    /// The registers of the calling thread change.
    pub fn xrstor(&self, mem: &[u8], rfbm: u64) -> Result<(), HwError> {
        self.check_xrstor(mem, rfbm)?;
        // SAFETY: check_xrstor verified support, alignment, size, the header rules and MXCSR,
        // so XRSTOR cannot #GP/#UD; XFD-capable components are not loaded (no #NM).
        unsafe { insn::restore(crate::model::RestoreInsn::Xrstor, mem, rfbm) };
        Ok(())
    }

    /// FXRSTOR64 of `mem` (SDM Vol. 2 "FXRSTOR"), after checking alignment, size and MXCSR
    /// (#GP when it has bits outside MXCSR_MASK) and the trap rules of the module docs.
    pub fn fxrstor(&self, mem: &[u8]) -> Result<(), HwError> {
        self.check_fxrstor(mem)?;
        // SAFETY: check_fxrstor verified FXSR support, 16-byte alignment, 512 bytes and MXCSR
        // within MXCSR_MASK (no #GP, no #UD).
        unsafe { insn::restore(crate::model::RestoreInsn::Fxrstor, mem, 0) };
        Ok(())
    }

    /// The checks of [`fxrstor`](Self::fxrstor) without executing it.
    pub fn check_fxrstor(&self, mem: &[u8]) -> Result<(), HwError> {
        const I: &str = "FXRSTOR";
        if !self.fxsr {
            return Err(HwError::Unsupported {
                insn: I,
                why: "CPUID.1:EDX.FXSR is clear",
            });
        }
        let addr = mem.as_ptr() as usize;
        if addr % 16 != 0 {
            return Err(HwError::Misaligned {
                insn: I,
                addr,
                align: 16,
            });
        }
        if mem.len() < 512 {
            return Err(HwError::TooSmall {
                insn: I,
                need: 512,
                have: mem.len(),
            });
        }
        let m = u32::from_le_bytes([mem[24], mem[25], mem[26], mem[27]]);
        if m & !self.mxcsr_mask != 0 {
            return Err(HwError::WouldFault {
                insn: I,
                field: "MXCSR",
                offset: 24,
                rule: "MXCSR has bits outside MXCSR_MASK (SDM Vol. 2A FXRSTOR: #GP)",
            });
        }
        check_mxcsr_masked(I, mem)?;
        check_x87_env(mem)
    }

    /// Runs a [`Sequence`] in one `asm!` block so that no compiled code disturbs the registers
    /// between its steps. The calling thread's registers are saved before and restored after,
    /// so the sequence has no lasting effect on them.
    ///
    /// Restore images must pass [`check_xrstor`](Self::check_xrstor) (or the FXRSTOR checks)
    /// except for the rules about traps in *later* code (unmasked exceptions), which cannot
    /// happen inside the sequence. XFD-capable components and a PKRU denying key 0 are still
    /// refused (they would fault inside it).
    ///
    /// ```
    /// use xstate::hw::{AlignedBuf, Host, Mid, SaveOp, Sequence, Restore};
    /// let host = Host::detect();
    /// if host.xsave_usable() {
    ///     let n = host.standard_size() as usize;
    ///     let mut src = AlignedBuf::new(n);
    ///     src[0] = 0x7f; src[1] = 0x03;                          // FCW 0x37F
    ///     src[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());  // MXCSR
    ///     src[160] = 0xaa;                                        // XMM0 byte 0
    ///     src[512] = 3;                                           // XSTATE_BV: x87, SSE
    ///     let mut dst = AlignedBuf::new(n);
    ///     host.sequence(Sequence {
    ///         restore: Some(Restore::Xrstor { mem: &mut src, rfbm: u64::MAX }),
    ///         save: Some((SaveOp::Xsave, &mut dst, u64::MAX)),
    ///         ..Sequence::default()
    ///     }).unwrap();
    ///     assert_eq!(dst[160], 0xaa);
    /// }
    /// ```
    pub fn sequence(&self, seq: Sequence<'_>) -> Result<SequenceReport, HwError> {
        if !self.xsave {
            return Err(HwError::Unsupported {
                insn: "XSAVE",
                why: "CPUID.1:ECX.XSAVE or CR4.OSXSAVE is clear",
            });
        }
        let Sequence {
            pre,
            restore,
            mid,
            patch,
            save,
            save_in_place,
        } = seq;
        let mid_ok = match mid {
            Mid::Vzeroupper | Mid::Vzeroall | Mid::VpxorYmm1 => self.avx,
            Mid::KxorK1 => self.avx512,
            _ => true,
        };
        if !mid_ok {
            return Err(HwError::Unsupported {
                insn: "middle instruction",
                why: "needs AVX (or AVX-512) enabled in XCR0",
            });
        }
        // x87 instructions that wait (FLD) raise #MF at once on a pending unmasked exception.
        if matches!(mid, Mid::Fld1 | Mid::FldMem) {
            if let Some(m) = pre {
                check_x87_env(m)?;
            }
            match &restore {
                Some(Restore::Xrstor { mem, .. }) | Some(Restore::Fxrstor { mem }) => {
                    check_x87_env(mem)?
                }
                None => {}
            }
        }
        let (pre_ptr, do_pre) = match pre {
            Some(m) => {
                self.check_restore_for_sequence(m, u64::MAX)?;
                (m.as_ptr(), 1u64)
            }
            None => (core::ptr::null(), 0),
        };
        if save.is_some() && save_in_place.is_some() {
            return Err(HwError::Unsupported {
                insn: "sequence",
                why: "give either `save` or `save_in_place`, not both",
            });
        }
        let mut in_place = None;
        let (src, rrfbm, do_restore, src_len) = match restore {
            Some(Restore::Xrstor { mem, rfbm }) => {
                self.check_restore_for_sequence(mem, rfbm)?;
                if let Some((op, r)) = save_in_place {
                    self.check_save(op, mem, r)?;
                    in_place = Some((op, r));
                }
                (mem.as_mut_ptr(), rfbm, 1u64, mem.len())
            }
            Some(Restore::Fxrstor { mem }) => {
                if let Some((op, r)) = save_in_place {
                    self.check_save(op, mem, r)?;
                    in_place = Some((op, r));
                }
                match self.check_fxrstor(mem) {
                    Err(HwError::WouldFault { rule, .. }) if rule.contains("later ordinary") => {}
                    other => other?,
                }
                (mem.as_mut_ptr(), 0, 2u64, mem.len())
            }
            None => (core::ptr::null_mut(), 0, 0, 0),
        };
        let (patch_dst, patch_src, patch_len) = match patch {
            Some((off, bytes)) if do_restore != 0 => {
                let end = off.saturating_add(bytes.len());
                if end > src_len {
                    return Err(HwError::TooSmall {
                        insn: "patch",
                        need: end,
                        have: src_len,
                    });
                }
                (src.wrapping_add(off), bytes.as_ptr(), bytes.len() as u64)
            }
            _ => (core::ptr::null_mut(), core::ptr::null(), 0),
        };
        let (dst, srfbm, save_code) = match save {
            Some((op, mem, rfbm)) => {
                self.check_save(op, mem, rfbm)?;
                (mem.as_mut_ptr(), rfbm, save_code(op))
            }
            None => match in_place {
                Some((op, rfbm)) => (src, rfbm, save_code(op)),
                None => (core::ptr::null_mut(), 0, 0),
            },
        };
        let mut ctx = AlignedBuf::new(self.standard_size() as usize);
        let mut p = SeqParams {
            ctx: ctx.as_mut_ptr(),
            src,
            rrfbm,
            do_restore,
            mid: mid.code(),
            patch_dst,
            patch_src,
            patch_len,
            dst,
            srfbm,
            save: save_code,
            want_xinuse: u64::from(self.xgetbv1),
            xinuse: 0,
            restore_ctx: 1,
            pre: pre_ptr,
            do_pre,
        };
        // SAFETY: `ctx` holds the standard size for XCR0 (what XSAVE with RFBM all ones writes)
        // and is 64-byte aligned; the pre-image and the restore image passed the fault rules of
        // check_xrstor/check_fxrstor (no #GP, no #NM); the patch lies inside the restore buffer,
        // which we borrow mutably; the save was checked by check_save (support, alignment,
        // size); the middle instruction is supported (checked above); XGETBV(1) runs only when
        // supported. The caller's register state is restored from `ctx` at the end.
        unsafe { run_sequence(&mut p) };
        Ok(SequenceReport {
            xinuse: if self.xgetbv1 { Some(p.xinuse) } else { None },
        })
    }

    pub(crate) fn check_restore_for_sequence(&self, m: &[u8], r: u64) -> Result<(), HwError> {
        match self.check_xrstor(m, r) {
            Err(HwError::WouldFault { rule, .. }) if rule.contains("later ordinary") => Ok(()),
            other => other,
        }
    }
}

fn save_code(op: SaveOp) -> u64 {
    match op {
        SaveOp::Xsave => 1,
        SaveOp::Xsaveopt => 2,
        SaveOp::Xsavec => 3,
        SaveOp::Fxsave => 4,
    }
}

/// MXCSR with an exception unmasked: later ordinary SSE code could trap (#XM).
pub(crate) fn check_mxcsr_masked(insn: &'static str, mem: &[u8]) -> Result<(), HwError> {
    let m = u32::from_le_bytes([mem[24], mem[25], mem[26], mem[27]]);
    if m & 0x1f80 != 0x1f80 {
        return Err(HwError::WouldFault {
            insn,
            field: "MXCSR",
            offset: 24,
            rule: "MXCSR unmasks SSE exceptions, so later ordinary floating-point code could trap (#XM); use the sandbox",
        });
    }
    Ok(())
}

pub(crate) fn check_x87_env(mem: &[u8]) -> Result<(), HwError> {
    let fcw = u16::from_le_bytes([mem[0], mem[1]]);
    let fsw = u16::from_le_bytes([mem[2], mem[3]]);
    if fsw & 0x80 != 0 || fsw & 0x3f & !fcw != 0 {
        return Err(HwError::WouldFault {
            insn: "XRSTOR",
            field: "FSW",
            offset: 2,
            rule: "FSW has a pending unmasked x87 exception, so later ordinary x87 code would trap (#MF); use the sandbox",
        });
    }
    Ok(())
}
