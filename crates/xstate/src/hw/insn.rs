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

/// One `asm!` block issuing save `$save` to `$p` with RFBM `$sl`/`$sh`, then restore
/// `$restore` from `$q` with RFBM `$rl`/`$rh`.
macro_rules! pair {
    ($save:literal, $restore:literal, $p:expr, $q:expr, $sl:expr, $sh:expr, $rl:expr, $rh:expr) => {
        core::arch::asm!(
            concat!($save, " [{p}]"),
            "mov eax, {rl:e}", "mov edx, {rh:e}", concat!($restore, " [{q}]"),
            p = in(reg) $p, q = in(reg) $q, rl = in(reg) $rl, rh = in(reg) $rh,
            inout("eax") $sl => _, inout("edx") $sh => _,
            clobber_abi("C"), options(nostack),
        )
    };
}

/// XSAVEC to `into` with RFBM `srfbm`, then XRSTOR from `from` with RFBM `rrfbm`, in one
/// `asm!` block: the user-mode engine's context switch with nothing between the two
/// instructions (the operands of both are in registers before the first one runs).
///
/// # Safety
/// The contracts of [`save`] for `(Xsavec, into, srfbm)` and of [`restore`] for
/// `(Xrstor, from, rrfbm)`, where the restore's contract must hold *after* the save (`into`
/// and `from` are distinct buffers: one is borrowed mutably, the other shared).
#[inline(always)]
pub(crate) unsafe fn xsavec_then_xrstor(into: &mut [u8], srfbm: u64, from: &[u8], rrfbm: u64) {
    let (p, q) = (into.as_mut_ptr(), from.as_ptr());
    let (sl, sh) = (srfbm as u32, (srfbm >> 32) as u32);
    let (rl, rh) = (rrfbm as u32, (rrfbm >> 32) as u32);
    // SAFETY: the caller's contract (above): each instruction on its own would be sound where
    // it is issued; every register the restore writes is declared clobbered, the save writes
    // only `into` (borrowed mutably) and the restore reads only `from`.
    unsafe { pair!("xsavec64", "xrstor64", p, q, sl, sh, rl, rh) }
}

/// Save instruction `s` to `into` with RFBM `srfbm`, then restore instruction `r` from `from`
/// with RFBM `rrfbm`, as [`xsavec_then_xrstor`] does for that pair: one `asm!` block for
/// each pair a context switch uses, two for pairs no switch uses (a save with another
/// family's restore).
///
/// # Safety
/// The contracts of [`save`] for `(s, into, srfbm)` and of [`restore`] for
/// `(r, from, rrfbm)`, where the restore's contract must hold *after* the save (`into` and
/// `from` are distinct buffers: one is borrowed mutably, the other shared).
pub(crate) unsafe fn save_then_restore(
    s: SaveInsn,
    into: &mut [u8],
    srfbm: u64,
    r: RestoreInsn,
    from: &[u8],
    rrfbm: u64,
) {
    let (p, q) = (into.as_mut_ptr(), from.as_ptr());
    let (sl, sh) = (srfbm as u32, (srfbm >> 32) as u32);
    let (rl, rh) = (rrfbm as u32, (rrfbm >> 32) as u32);
    // SAFETY: the caller's contract (above), as in xsavec_then_xrstor.
    unsafe {
        match (s, r) {
            (SaveInsn::Xsavec, RestoreInsn::Xrstor) => xsavec_then_xrstor(into, srfbm, from, rrfbm),
            (SaveInsn::Xsave, RestoreInsn::Xrstor) => {
                pair!("xsave64", "xrstor64", p, q, sl, sh, rl, rh)
            }
            (SaveInsn::Xsaveopt, RestoreInsn::Xrstor) => {
                pair!("xsaveopt64", "xrstor64", p, q, sl, sh, rl, rh)
            }
            (SaveInsn::Xsaves, RestoreInsn::Xrstors) => {
                pair!("xsaves64", "xrstors64", p, q, sl, sh, rl, rh)
            }
            (SaveInsn::Fxsave, RestoreInsn::Fxrstor) => {
                pair!("fxsave64", "fxrstor64", p, q, sl, sh, rl, rh)
            }
            _ => {
                save(s, into, srfbm);
                restore(r, from, rrfbm);
            }
        }
    }
}
