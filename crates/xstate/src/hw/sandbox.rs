//! Runs an XRSTOR of arbitrary bytes in a forked child process (Linux), so that a fault is an
//! answer rather than a crash: a #GP arrives in the child as SIGSEGV, a #UD or an XFD #NM the
//! kernel does not resolve as SIGILL. When the restore succeeds, the child reports the register
//! state it left: XGETBV(1) and a standard-form XSAVE with RFBM = all ones, taken in the same
//! `asm!` block as the restore (no compiled code runs in between).
//!
//! The image agent and the KVM agent use this for hardware-agreement tests.
//!
//! ```
//! # #[cfg(all(target_arch = "x86_64", target_os = "linux"))] {
//! use xstate::hw::{sandbox, Host};
//! let host = Host::detect();
//! if host.xsave_usable() {
//!     let mut img = vec![0u8; host.standard_size() as usize];
//!     img[0] = 0x7f; img[1] = 0x03;                 // FCW 0x37F
//!     img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
//!     img[520] = 1;                                 // XCOMP_BV != 0 in the standard form: #GP
//!     assert_eq!(sandbox::xrstor(&host, &img, u64::MAX, 0).unwrap(), sandbox::Outcome::Fault(sandbox::Signal::Segv));
//!     img[520] = 0;
//!     let sandbox::Outcome::Restored(after) = sandbox::xrstor(&host, &img, u64::MAX, 0).unwrap() else { panic!() };
//!     assert_eq!(&after.image[0..2], &[0x7f, 0x03]);
//! }
//! # }
//! ```

use alloc::vec::Vec;

use super::{run_sequence, Host, SeqParams};

/// The signal that ended the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGSEGV: a #GP (bad header, MXCSR, alignment) or a page fault.
    Segv,
    /// SIGILL: #UD, or a #NM the kernel did not resolve.
    Ill,
    /// SIGFPE.
    Fpe,
    /// SIGBUS.
    Bus,
    /// Any other signal number.
    Other(i32),
}

/// The register state after a successful restore in the child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct After {
    /// XGETBV(1) right after the restore (None without XGETBV1).
    pub xinuse: Option<u64>,
    /// Standard-form XSAVE with RFBM = all ones right after the restore (the size of
    /// [`Host::standard_size`]); its XSTATE_BV is what the CPU reports in use for XCR0.
    pub image: Vec<u8>,
}

/// What the restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The child died of this signal during the restore.
    Fault(Signal),
    /// The restore completed.
    Restored(After),
}

/// The sandbox itself failed (not the instruction).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// XSAVE is not usable on this CPU/OS.
    #[error("XSAVE is not usable here (CPUID.1:ECX.XSAVE or CR4.OSXSAVE clear)")]
    NoXsave,
    /// A system call failed.
    #[error("{call} failed: errno {errno}")]
    Sys {
        /// The call.
        call: &'static str,
        /// errno.
        errno: i32,
    },
    /// The child exited in a way the sandbox does not expect.
    #[error("child exited with status {0}")]
    Child(i32),
    /// The `pre` image was refused.
    #[error("pre image refused: {0}")]
    Pre(super::HwError),
    /// `offset` must be below 4096.
    #[error("offset {0} is not below 4096")]
    Offset(usize),
}

/// A shared anonymous mapping, unmapped on drop.
struct Shared {
    ptr: *mut u8,
    len: usize,
}

impl Shared {
    fn new(len: usize) -> Result<Shared, SandboxError> {
        // SAFETY: an anonymous shared mapping of a fresh region; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys("mmap"));
        }
        Ok(Shared { ptr: p.cast(), len })
    }

    fn slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and lives as long as `self`; the child
        // that could write it has been reaped before this is called.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `slice`, and `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; no reference to it outlives self.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

fn sys(call: &'static str) -> SandboxError {
    SandboxError::Sys {
        call,
        errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    }
}

/// Runs XRSTOR64 of `image` with EDX:EAX = `rfbm` in a forked child. The image is copied to
/// a page-aligned buffer at byte `offset` (non-zero offsets not multiple of 64 test the
/// alignment #GP); bytes past `image.len()` read as zero. The form (standard or compacted) is
/// the CPU's choice from XCOMP_BV\[63\], as for any XRSTOR.
pub fn xrstor(
    host: &Host,
    image: &[u8],
    rfbm: u64,
    offset: usize,
) -> Result<Outcome, SandboxError> {
    xrstor_after(host, None, image, rfbm, offset)
}

/// Runs XRSTOR64 of `image` with EDX:EAX = `rfbm` in a forked child, with the image placed so
/// that the readable memory ends right after it: the image (rounded up to 64 bytes, the
/// alignment XRSTOR requires; the slack reads as zero) ends at a page boundary and the next
/// page is inaccessible (PROT_NONE). A restore that reads byte `image.len()` or beyond (past
/// the rounding) dies of SIGSEGV: this measures how many bytes the instruction reads for a
/// given header. The child first asks Linux for permission to use dynamic components
/// (ARCH_REQ_XCOMP_PERM 0x1023 for AMX TILEDATA, component 18) so that restoring tile data
/// raises no XFD #NM; where that fails (no AMX), restoring TILEDATA gives SIGILL.
pub fn xrstor_fenced(host: &Host, image: &[u8], rfbm: u64) -> Result<Outcome, SandboxError> {
    if !host.xsave_usable() {
        return Err(SandboxError::NoXsave);
    }
    let span = (image.len().max(64) + 63) & !63;
    let pages = span.div_ceil(4096);
    let mut src = Shared::new((pages + 1) * 4096)?;
    let start = pages * 4096 - span;
    src.slice_mut()[start..start + image.len()].copy_from_slice(image);
    // SAFETY: changes the protection of the last page of the mapping `src` owns; nothing in
    // this process reads it (the slices used below end before it).
    if unsafe { libc::mprotect(src.ptr.add(pages * 4096).cast(), 4096, libc::PROT_NONE) } != 0 {
        return Err(sys("mprotect"));
    }
    run_child(host, None, src.ptr.wrapping_add(start), rfbm, true, false)
}

/// Like [`xrstor`], but the child first restores `pre` (a standard-form image, RFBM = all
/// ones, from a different address) so that the state before the restore under test is known
/// exactly, and the modified-optimization record points elsewhere. `pre` must pass
/// [`Host::check_xrstor`] (trap-only rules aside): it is refused otherwise.
pub fn xrstor_after(
    host: &Host,
    pre: Option<&[u8]>,
    image: &[u8],
    rfbm: u64,
    offset: usize,
) -> Result<Outcome, SandboxError> {
    if !host.xsave_usable() {
        return Err(SandboxError::NoXsave);
    }
    if offset >= 4096 {
        return Err(SandboxError::Offset(offset));
    }
    let big = host.layout().max_standard_size().max(16384) as usize;
    let src_len = (offset + image.len().max(big) + 4095) & !4095;
    let mut src = Shared::new(src_len)?;
    src.slice_mut()[offset..offset + image.len()].copy_from_slice(image);
    run_child(host, pre, src.ptr.wrapping_add(offset), rfbm, false, false)
}

/// Like [`xrstor_after`] in a child that first asks Linux for permission to use AMX TILEDATA
/// (ARCH_REQ_XCOMP_PERM 0x1023 with component 18, which disarms XFD for it in that child
/// only), so that `pre` and `image` may load tile data: the way to measure what XRSTOR does
/// to TILECFG and TILEDATA. `pre` may then load XFD-capable components; the other rules of
/// [`Host::check_xrstor`] still apply to it. When the kernel refuses the permission the
/// answer is [`SandboxError::Sys`] naming `arch_prctl(ARCH_REQ_XCOMP_PERM)`.
pub fn xrstor_after_with_amx_permission(
    host: &Host,
    pre: Option<&[u8]>,
    image: &[u8],
    rfbm: u64,
) -> Result<Outcome, SandboxError> {
    if !host.xsave_usable() {
        return Err(SandboxError::NoXsave);
    }
    let big = host.layout().max_standard_size().max(16384) as usize;
    let src_len = (image.len().max(big) + 4095) & !4095;
    let mut src = Shared::new(src_len)?;
    src.slice_mut()[..image.len()].copy_from_slice(image);
    run_child(host, pre, src.ptr, rfbm, true, true)
}

/// Forks a child that restores from `src` (and first from `pre`), then reports XINUSE and a
/// standard-form XSAVE. `src` stays mapped (and owned by the caller) until this returns.
/// With `request_dynamic` the child asks for AMX permission first; with `require_dynamic` a
/// refusal is an error and `pre` may load XFD-capable components.
fn run_child(
    host: &Host,
    pre: Option<&[u8]>,
    src: *mut u8,
    rfbm: u64,
    request_dynamic: bool,
    require_dynamic: bool,
) -> Result<Outcome, SandboxError> {
    let std_size = host.standard_size() as usize;
    // Results: [0..8) XINUSE, [8..16) errno of a refused permission request, [64..64+std)
    // the XSAVE image.
    let out_len = (64 + std_size + 4095) & !4095;
    let out = Shared::new(out_len)?;
    let mut ctx = super::AlignedBuf::new(std_size);
    let pre_buf = match pre {
        Some(p) => {
            let b = super::AlignedBuf::from_bytes(p);
            match host.check_restore_for_sequence(&b, u64::MAX) {
                Ok(()) => {}
                // The child has AMX permission: XFD does not arm TILEDATA there.
                Err(super::HwError::WouldFault { rule, .. })
                    if require_dynamic && rule.contains("XFD-capable") => {}
                Err(e) => return Err(SandboxError::Pre(e)),
            }
            Some(b)
        }
        None => None,
    };
    let mut p = SeqParams {
        ctx: ctx.as_mut_ptr(),
        src,
        rrfbm: rfbm,
        do_restore: 1,
        mid: 0,
        patch_dst: core::ptr::null_mut(),
        patch_src: core::ptr::null(),
        patch_len: 0,
        dst: out.ptr.wrapping_add(64),
        srfbm: u64::MAX,
        save: 1,
        want_xinuse: u64::from(host.has_xgetbv1()),
        xinuse: 0,
        restore_ctx: 0,
        pre: pre_buf.as_ref().map_or(core::ptr::null(), |b| b.as_ptr()),
        do_pre: u64::from(pre_buf.is_some()),
    };
    // SAFETY: fork in a possibly multi-threaded process: the child only runs the asm sequence,
    // plain stores into memory mapped before the fork, prctl and _exit (no allocation, no
    // locks), which is what is allowed after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork"));
    }
    if pid == 0 {
        // SAFETY: in the child. PR_SET_DUMPABLE 0 stops a core dump on the expected SIGSEGV.
        // The pre image (if any) passed check_restore_for_sequence's fault rules.
        // The sequence restores from the shared source buffer (valid for the largest image
        // the CPU can read: max standard size, at least 16 KiB past `offset`) — a fault here
        // kills only this child, which is the point. XSAVE to `out` (std_size bytes, 64-byte
        // aligned) with RFBM all ones writes at most XCR0's standard size. XGETBV(1) runs only
        // when supported. The child exits without returning to Rust code.
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            if request_dynamic {
                // ARCH_REQ_XCOMP_PERM for XTILEDATA (Linux arch/x86 prctl ABI; DESIGN.md §6).
                if libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) != 0 && require_dynamic {
                    let e = *libc::__errno_location();
                    core::ptr::write_volatile(out.ptr.add(8).cast::<u64>(), e as u64);
                    libc::_exit(3);
                }
            }
            run_sequence(&mut p);
            core::ptr::write_volatile(out.ptr.cast::<u64>(), p.xinuse);
            libc::_exit(0);
        }
    }
    let mut status = 0i32;
    loop {
        // SAFETY: waits for the child created above; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(sys("waitpid"));
        }
    }
    drop(ctx);
    if libc::WIFSIGNALED(status) {
        let s = match libc::WTERMSIG(status) {
            libc::SIGSEGV => Signal::Segv,
            libc::SIGILL => Signal::Ill,
            libc::SIGFPE => Signal::Fpe,
            libc::SIGBUS => Signal::Bus,
            n => Signal::Other(n),
        };
        return Ok(Outcome::Fault(s));
    }
    let o = out.slice();
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3 && require_dynamic {
        let mut e = [0u8; 8];
        e.copy_from_slice(&o[8..16]);
        return Err(SandboxError::Sys {
            call: "arch_prctl(ARCH_REQ_XCOMP_PERM)",
            errno: u64::from_le_bytes(e) as i32,
        });
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(SandboxError::Child(status));
    }
    let mut x = [0u8; 8];
    x.copy_from_slice(&o[0..8]);
    Ok(Outcome::Restored(After {
        xinuse: if host.has_xgetbv1() {
            Some(u64::from_le_bytes(x))
        } else {
            None
        },
        image: o[64..64 + std_size].to_vec(),
    }))
}
