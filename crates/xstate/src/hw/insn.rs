//! The XSAVE-family instructions themselves, one `asm!` each: what every hardware path issues
//! (the live-register backend, the ring-0 backend, [`Host`](super::Host)) once its own guard
//! has ruled out every fault. Kept in one place so that the encodings, register operands and
//! clobbers are written once.

use crate::model::{RestoreInsn, SaveInsn};

/// Issues save instruction `insn` to `mem` with RFBM `rfbm` (EDX:EAX).
///
/// # Safety
/// The CPU supports `insn` and has it enabled (CPUID, CR4.OSXSAVE; XSAVES also needs CPL 0),
/// `mem` is aligned as it requires (64 bytes, FXSAVE 16) and holds every byte it writes for
/// `rfbm` & (XCR0 | IA32_XSS for XSAVES).
#[inline(always)]
pub(crate) unsafe fn save(insn: SaveInsn, mem: &mut [u8], rfbm: u64) {
    let p = mem.as_mut_ptr();
    let (lo, hi) = (rfbm as u32, (rfbm >> 32) as u32);
    // SAFETY: the caller's contract (above). Saves read registers and write only `mem`,
    // borrowed mutably.
    unsafe {
        match insn {
            SaveInsn::Xsave => core::arch::asm!("xsave64 [{p}]", p = in(reg) p,
                in("eax") lo, in("edx") hi, options(nostack, preserves_flags)),
            SaveInsn::Xsaveopt => core::arch::asm!("xsaveopt64 [{p}]", p = in(reg) p,
                in("eax") lo, in("edx") hi, options(nostack, preserves_flags)),
            SaveInsn::Xsavec => core::arch::asm!("xsavec64 [{p}]", p = in(reg) p,
                in("eax") lo, in("edx") hi, options(nostack, preserves_flags)),
            SaveInsn::Xsaves => core::arch::asm!("xsaves64 [{p}]", p = in(reg) p,
                in("eax") lo, in("edx") hi, options(nostack, preserves_flags)),
            SaveInsn::Fxsave => core::arch::asm!("fxsave64 [{p}]", p = in(reg) p,
                options(nostack, preserves_flags)),
        }
    }
}

/// Issues restore instruction `insn` from `mem` with RFBM `rfbm` (EDX:EAX).
///
/// # Safety
/// The CPU supports `insn` (XRSTORS also needs CPL 0), `mem` is aligned, holds every byte it
/// reads, and its image breaks no restore rule (header, MXCSR, supervisor values: no #GP) and
/// loads no component IA32_XFD arms (no #NM).
#[inline(always)]
pub(crate) unsafe fn restore(insn: RestoreInsn, mem: &[u8], rfbm: u64) {
    let p = mem.as_ptr();
    let (lo, hi) = (rfbm as u32, (rfbm >> 32) as u32);
    // SAFETY: the caller's contract (above). Every register the restore writes is declared
    // clobbered; memory is only read.
    unsafe {
        match insn {
            RestoreInsn::Xrstor => core::arch::asm!("xrstor64 [{p}]", p = in(reg) p,
                in("eax") lo, in("edx") hi, clobber_abi("C"), options(nostack, readonly)),
            RestoreInsn::Xrstors => core::arch::asm!("xrstors64 [{p}]", p = in(reg) p,
                in("eax") lo, in("edx") hi, clobber_abi("C"), options(nostack, readonly)),
            RestoreInsn::Fxrstor => core::arch::asm!("fxrstor64 [{p}]", p = in(reg) p,
                clobber_abi("C"), options(nostack, readonly)),
        }
    }
}
