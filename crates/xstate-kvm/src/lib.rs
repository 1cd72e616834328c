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
//! On targets other than Linux x86-64 the crate compiles to [`SUPPORTED`] = false and the
//! portable parts ([`xsave`], [`msr`], [`perm`] errors); every call into KVM is absent.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod msr;
pub mod perm;
pub mod state;
pub mod xsave;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod guest;
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
pub use kvm::{Kvm, KvmSetup};
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use vcpu::{ControlsSet, Vcpu};
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
