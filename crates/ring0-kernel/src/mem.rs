//! The memory functions the compiler calls (`memcpy`, `memmove`, `memset`, `memcmp`, `bcmp`):
//! there is no libc. Written with `rep movsb`/`rep stosb` and a byte loop the compiler cannot
//! turn back into a call to itself.

/// memcpy.
///
/// # Safety
/// `d` and `s` are valid for `n` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; REP MOVSB with DF = 0 (System V ABI) copies n bytes forward.
    unsafe {
        core::arch::asm!("rep movsb", inout("rdi") d => _, inout("rsi") s => _, inout("rcx") n => _,
            options(nostack, preserves_flags));
    }
    d
}

/// memmove.
///
/// # Safety
/// `d` and `s` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) <= (s as usize) || (d as usize) >= (s as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when the destination starts before the source or
        // past its end.
        return unsafe { memcpy(d, s, n) };
    }
    // SAFETY: overlapping with d > s: copy backwards with DF = 1, restored to 0 after.
    unsafe {
        core::arch::asm!("std", "rep movsb", "cld",
            inout("rdi") d.add(n - 1) => _, inout("rsi") s.add(n - 1) => _, inout("rcx") n => _,
            options(nostack));
    }
    d
}

/// memset.
///
/// # Safety
/// `d` is valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; REP STOSB writes n bytes forward.
    unsafe {
        core::arch::asm!("rep stosb", inout("rdi") d => _, inout("rcx") n => _, in("al") c as u8,
            options(nostack, preserves_flags));
    }
    d
}

/// memcmp.
///
/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, within the caller's ranges; volatile keeps this a loop, not a call.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// bcmp.
///
/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// The unwinding personality routine the precompiled `alloc` refers to; never called with
/// panic = "abort".
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// The unwinder entry the precompiled `alloc` refers to on its cleanup paths; never reached
/// with panic = "abort" (a panic stops the kernel before any unwinding).
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::println!("{{\"fatal\": \"_Unwind_Resume called\"}}");
    crate::arch::shutdown()
}
