//! Safe wrappers around the user-mode instructions this crate needs from the real CPU
//! (x86-64 only): CPUID and XGETBV. The XSAVE-family wrappers used by the hardware backend
//! live in [`crate::model::hw`].
//!
//! Every `unsafe` block here is an instruction whose preconditions are checked first.

use crate::cpuid::Regs;

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
    if !allowed {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set (checked above) so XGETBV does not raise #UD; ECX is 0 or a
    // supported 1, so it does not raise #GP. It touches no memory.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") xcr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}
