//! # xstate-kvm
//!
//! Linux/KVM glue for [`xstate`]: safe, correctly sized KVM_GET/SET_XSAVE2, guest permissions
//! for dynamic components (AMX), a vCPU's complete extended state (XSAVE image, XCR0,
//! IA32_XSS, XFD, CET MSRs) captured and restored in the order the kernel requires, and a
//! tiny real guest for end-to-end tests.
//!
//! Thin safe wrappers over [kvm-ioctls](https://docs.rs/kvm-ioctls): every `unsafe` block is a
//! syscall or ioctl with a `// SAFETY:` comment; callers never need `unsafe`.
//!
//! Two ways in: this crate's own handles ([`KvmSetup`] → [`Kvm`] → [`Vm`] → [`Vcpu`]), or a
//! VMM's own kvm-ioctls objects, which it keeps: [`KvmFacts::read`] on its `Kvm` (after its
//! guest permission requests) and [`BorrowedVcpu`] on its `VmFd`/`VcpuFd` (example
//! `vmm_owned_fds`). Both share one implementation, checks and ordering.
//!
//! The order the kernel requires is carried by the types:
//! [`KvmSetup`] (query, request guest permissions) → [`Kvm`] (supported CPUID, VMs) →
//! [`Vm`] → [`Vcpu`]; on restore, [`Vcpu::set_controls`] (XCR0, XSS, XFD, CET MSRs) returns
//! the [`ControlsSet`] token that alone can write the XSAVE image.
//!
//! ```no_run
//! use xstate_kvm::KvmSetup;
//! let kvm = KvmSetup::open()?.ready()?;
//! let vm = kvm.create_vm()?;
//! let (a, b) = (vm.create_vcpu(0)?, vm.create_vcpu(1)?);
//! let state = a.capture()?;      // XCR0, extended-state MSRs, XSAVE image
//! b.restore(&state)?;            // checked first, then XCR0 → MSRs → image
//! # Ok::<(), xstate_kvm::Error>(())
//! ```
//!
//! ## Measured on this project's machines (AMD Zen 5, Linux 6.18, DESIGN §9)
//!
//! The integration tests (`tests/real_kvm.rs`) check these on every run:
//! - KVM API 12; KVM_CAP_XSAVE2 = 4096; KVM_X86_XCOMP_GUEST_SUPP = 0xe7; guest, process and
//!   kernel permissions 0xe7; KVM_GET_MSR_INDEX_LIST lists none of IA32_XSS, IA32_XFD,
//!   IA32_XFD_ERR or the CET MSRs (so a complete vCPU xstate here is XCR0 plus the image).
//! - ARCH_REQ_XCOMP_(GUEST_)PERM for AMX TILEDATA (18): EOPNOTSUPP; index 64: EINVAL; a
//!   static component (2): EOPNOTSUPP; after a vCPU exists the AMX request still answers
//!   EOPNOTSUPP (the support check comes before the lock).
//! - KVM_SET_XSAVE: EINVAL for XCOMP_BV ≠ 0, a non-zero byte at 528 or 560, XSTATE_BV bit 9,
//!   11 or 63, MXCSR bit 16; accepted: XSTATE_BV 0, bytes at 420/464, MXCSR with DAZ. The
//!   MXCSR_MASK KVM reports in the image is 0x2FFFF. [`KvmXsaveRules::check`] agrees with KVM
//!   on 300 mutated images per run.
//! - A fresh vCPU: XCR0 1, image XSTATE_BV 0, FCW 0x37F, MXCSR 0x1F80.
//! - KVM_GET_SUPPORTED_CPUID leaf 1 does not set XSAVE/AVX and leaf 0xD.1 EAX is 0, yet a CPL 3
//!   guest with CR4.OSXSAVE runs XRSTOR/XSAVE of x87, SSE, AVX and AVX-512 natively.
//! - KVM_SET_CPUID2 with leaf 0xD.0 EAX reduced (e.g. without AVX-512) reads back as 0xe7 via
//!   KVM_GET_CPUID2 and KVM_SET_XCRS still accepts XCR0 0xe7: this KVM does not honour a
//!   reduced guest leaf 0xD. With no guest CPUID at all, KVM_SET_XCRS(0xe7) is EINVAL.
//! - A guest fault with no IDT (XRSTOR of an image with XSTATE_BV bit 63 → #GP) ends in
//!   KVM_EXIT_SHUTDOWN with RIP still at the XRSTOR.
//!
//! ## Measured on this project's Intel machine (Xeon family 6 model 0xa7, Linux 6.18)
//!
//! - The host has AMX (XCR0 0x600e7, MXCSR_MASK 0xFFFF) and ARCH_REQ_XCOMP_GUEST_PERM(18)
//!   succeeds (guest permissions 0x600e7), yet this (nested) KVM gives guests no AMX:
//!   KVM_X86_XCOMP_GUEST_SUPP stays 0xe7, KVM_CAP_XSAVE2 stays 4096, KVM_GET_SUPPORTED_CPUID
//!   leaf 0xD.0 EAX is 0xe7 and 0xD.1 EAX 0 (no XSAVES, no XFD), and the MSR index list has
//!   none of IA32_XSS, IA32_XFD, IA32_XFD_ERR (`tests/amx_kvm.rs` skips with that reason).
//! - KVM_SET_XSAVE copies bytes 28..31 (MXCSR_MASK) of the image it is given into the vCPU:
//!   KVM_GET_XSAVE2 then reports them. The mask the checks use is the host's
//!   ([`host_mxcsr_mask`]), which equals what KVM reports for a fresh vCPU.
//! - XRSTOR of a TILECFG naming palette 2 (which does not exist) does not fault on this CPU: it
//!   leaves TILECFG in its init state and loads TILEDATA.
//!
//! On targets other than Linux x86-64 the crate compiles to [`SUPPORTED`] = false and the
//! portable parts ([`xsave`], [`msr`], [`perm`] errors); every call into KVM is absent.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod msr;
pub mod perm;
pub mod snapshot;
pub mod state;
#[cfg(test)]
mod testdata;
pub mod xsave;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod guest;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod guest_cpuid;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod kvm;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod sys;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod vcpu;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod vm;

pub use error::{Error, Result};
pub use state::{VcpuXstate, XstateControls};
pub use xsave::{KvmXsaveRules, Refused, XsaveBuffer};

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use kvm::{Kvm, KvmFacts, KvmSetup};
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use vcpu::{host_mxcsr_mask, BorrowedVcpu, ControlsSet, Vcpu};
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use vm::Vm;

/// True where this crate can talk to KVM (Linux on x86-64).
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

/// Why KVM is unavailable here, or `None` when `/dev/kvm` can be opened. For tests and
/// tools that skip with a reason.
///
/// ```
/// if let Some(why) = xstate_kvm::unavailable() {
///     println!("skipped: {why}");
/// }
/// ```
pub fn unavailable() -> Option<String> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        match kvm_ioctls::Kvm::new() {
            Ok(_) => None,
            Err(e) => Some(format!(
                "cannot open /dev/kvm: {}",
                std::io::Error::from_raw_os_error(e.errno())
            )),
        }
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        Some(Error::Unsupported.to_string())
    }
}
