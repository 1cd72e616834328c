//! Permissions for dynamically enabled state components (AMX TILEDATA today), through
//! `arch_prctl(2)` (DESIGN §6): what the kernel supports, what this process may use, what its
//! guests may use, and requests for more.
//!
//! Rules of the kernel (DESIGN §6): a request names one component *index*, not a mask;
//! index ≥ the kernel's maximum → `EINVAL`; not a dynamic component or not supported →
//! `EOPNOTSUPP`; already granted → success; guest permissions are locked once the first vCPU's
//! state is allocated → `EBUSY`; a host request fails with `ENOSPC` when a thread's
//! sigaltstack is too small for the larger signal frame.
//!
//! Permissions are per process. Guest permissions must be requested *before* the first vCPU
//! is created and before KVM_GET_SUPPORTED_CPUID; [`crate::KvmSetup`] makes that order the only
//! one its types allow.

use std::fmt;
use std::io;

/// `arch_prctl` code: the features the kernel supports for user space (a mask).
pub const ARCH_GET_XCOMP_SUPP: i32 = 0x1021;
/// `arch_prctl` code: the features this process may use (a mask).
pub const ARCH_GET_XCOMP_PERM: i32 = 0x1022;
/// `arch_prctl` code: request permission for one dynamic feature (an index) for this process.
pub const ARCH_REQ_XCOMP_PERM: i32 = 0x1023;
/// `arch_prctl` code: the features this process's guests may use (a mask).
pub const ARCH_GET_XCOMP_GUEST_PERM: i32 = 0x1024;
/// `arch_prctl` code: request permission for one dynamic feature (an index) for guests.
pub const ARCH_REQ_XCOMP_GUEST_PERM: i32 = 0x1025;

/// Which `arch_prctl` operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermOp {
    /// ARCH_GET_XCOMP_SUPP.
    GetSupported,
    /// ARCH_GET_XCOMP_PERM.
    GetPerm,
    /// ARCH_REQ_XCOMP_PERM.
    ReqPerm,
    /// ARCH_GET_XCOMP_GUEST_PERM.
    GetGuestPerm,
    /// ARCH_REQ_XCOMP_GUEST_PERM.
    ReqGuestPerm,
}

impl PermOp {
    /// The `arch_prctl` code.
    pub fn code(self) -> i32 {
        match self {
            PermOp::GetSupported => ARCH_GET_XCOMP_SUPP,
            PermOp::GetPerm => ARCH_GET_XCOMP_PERM,
            PermOp::ReqPerm => ARCH_REQ_XCOMP_PERM,
            PermOp::GetGuestPerm => ARCH_GET_XCOMP_GUEST_PERM,
            PermOp::ReqGuestPerm => ARCH_REQ_XCOMP_GUEST_PERM,
        }
    }

    /// The kernel's name of the code.
    pub fn name(self) -> &'static str {
        match self {
            PermOp::GetSupported => "ARCH_GET_XCOMP_SUPP",
            PermOp::GetPerm => "ARCH_GET_XCOMP_PERM",
            PermOp::ReqPerm => "ARCH_REQ_XCOMP_PERM",
            PermOp::GetGuestPerm => "ARCH_GET_XCOMP_GUEST_PERM",
            PermOp::ReqGuestPerm => "ARCH_REQ_XCOMP_GUEST_PERM",
        }
    }
}

impl fmt::Display for PermOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "arch_prctl({}, {:#x})", self.name(), self.code())
    }
}

/// A failed `arch_prctl` permission call, with the real errno mapped to the kernel's reasons.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PermError {
    /// `EINVAL`: the component index is at or above the kernel's maximum.
    #[error("{op} for component {feature}: EINVAL: the index is beyond the components this kernel knows")]
    InvalidFeature {
        /// The call.
        op: PermOp,
        /// The component index requested.
        feature: u8,
    },
    /// `EOPNOTSUPP`: the component is not dynamic (only AMX TILEDATA is) or this CPU/kernel
    /// does not support it.
    #[error("{op} for component {feature} ({name}): EOPNOTSUPP: not a dynamic component or not supported by this CPU/kernel", name = xstate::components::Component::name_of(*feature))]
    NotSupported {
        /// The call.
        op: PermOp,
        /// The component index requested.
        feature: u8,
    },
    /// `EBUSY`: guest permissions are locked because a vCPU of this process already exists.
    #[error("{op} for component {feature} ({name}): EBUSY: guest permissions are locked once the first vCPU exists; request them before creating any vCPU", name = xstate::components::Component::name_of(*feature))]
    Busy {
        /// The call.
        op: PermOp,
        /// The component index requested.
        feature: u8,
    },
    /// `ENOSPC`: a thread's sigaltstack is too small for the signal frame the feature needs.
    #[error("{op} for component {feature} ({name}): ENOSPC: a thread's sigaltstack is too small for the larger signal frame", name = xstate::components::Component::name_of(*feature))]
    SigaltstackTooSmall {
        /// The call.
        op: PermOp,
        /// The component index requested.
        feature: u8,
    },
    /// Any other errno (ENOSYS or EINVAL from a kernel without the call, EFAULT …).
    #[error("{op}: {source}")]
    Os {
        /// The call.
        op: PermOp,
        /// The OS error with its errno.
        source: io::Error,
    },
}

impl PermError {
    /// The errno the kernel returned.
    pub fn errno(&self) -> i32 {
        match self {
            PermError::InvalidFeature { .. } => libc::EINVAL,
            PermError::NotSupported { .. } => libc::EOPNOTSUPP,
            PermError::Busy { .. } => libc::EBUSY,
            PermError::SigaltstackTooSmall { .. } => libc::ENOSPC,
            PermError::Os { source, .. } => source.raw_os_error().unwrap_or(0),
        }
    }

    /// The call that failed.
    pub fn op(&self) -> PermOp {
        match self {
            PermError::InvalidFeature { op, .. }
            | PermError::NotSupported { op, .. }
            | PermError::Busy { op, .. }
            | PermError::SigaltstackTooSmall { op, .. }
            | PermError::Os { op, .. } => *op,
        }
    }

    fn from_request(op: PermOp, feature: u8, errno: i32) -> Self {
        match errno {
            libc::EINVAL => PermError::InvalidFeature { op, feature },
            libc::EOPNOTSUPP => PermError::NotSupported { op, feature },
            libc::EBUSY => PermError::Busy { op, feature },
            libc::ENOSPC => PermError::SigaltstackTooSmall { op, feature },
            e => PermError::Os {
                op,
                source: io::Error::from_raw_os_error(e),
            },
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod sys {
    use super::PermOp;

    /// Runs a GET code; returns the mask or the errno.
    pub(super) fn get(op: PermOp) -> Result<u64, i32> {
        let mut out: u64 = 0;
        // SAFETY: the GET codes write exactly one u64 through the pointer argument; `out` is a
        // live, aligned u64 for the duration of the call. No other memory is touched.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                libc::c_long::from(op.code()),
                &mut out as *mut u64,
            )
        };
        if r == 0 {
            Ok(out)
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    /// Runs a REQ code with a component index.
    pub(super) fn req(op: PermOp, feature: u8) -> Result<(), i32> {
        // SAFETY: the REQ codes take the component index by value and touch no user memory.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                libc::c_long::from(op.code()),
                libc::c_ulong::from(feature),
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod sys {
    use super::PermOp;
    pub(super) fn get(_op: PermOp) -> Result<u64, i32> {
        Err(libc::ENOSYS)
    }
    pub(super) fn req(_op: PermOp, _feature: u8) -> Result<(), i32> {
        Err(libc::ENOSYS)
    }
}

fn get(op: PermOp) -> Result<u64, PermError> {
    sys::get(op).map_err(|e| PermError::Os {
        op,
        source: io::Error::from_raw_os_error(e),
    })
}

/// The features the kernel supports for user space (`ARCH_GET_XCOMP_SUPP`).
///
/// ```no_run
/// let supp = xstate_kvm::perm::supported().unwrap();
/// assert!(supp & 0x3 == 0x3); // x87 and SSE are always there
/// ```
pub fn supported() -> Result<u64, PermError> {
    get(PermOp::GetSupported)
}

/// The features this process may use (`ARCH_GET_XCOMP_PERM`).
///
/// ```no_run
/// let perm = xstate_kvm::perm::permitted().unwrap();
/// println!("this process may use {perm:#x}");
/// ```
pub fn permitted() -> Result<u64, PermError> {
    get(PermOp::GetPerm)
}

/// The features this process's guests may use (`ARCH_GET_XCOMP_GUEST_PERM`).
///
/// ```no_run
/// let perm = xstate_kvm::perm::guest_permitted().unwrap();
/// println!("guests of this process may use {perm:#x}");
/// ```
pub fn guest_permitted() -> Result<u64, PermError> {
    get(PermOp::GetGuestPerm)
}

/// Requests permission for dynamic component `feature` (an index, e.g. 18 for AMX TILEDATA)
/// for this process (`ARCH_REQ_XCOMP_PERM`). Already granted is success.
///
/// ```no_run
/// use xstate_kvm::perm::{request, PermError};
/// match request(18) {
///     Ok(()) => println!("AMX granted"),
///     Err(PermError::NotSupported { .. }) => println!("no AMX here"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
pub fn request(feature: u8) -> Result<(), PermError> {
    sys::req(PermOp::ReqPerm, feature)
        .map_err(|e| PermError::from_request(PermOp::ReqPerm, feature, e))
}

/// Requests permission for dynamic component `feature` for this process's *guests*
/// (`ARCH_REQ_XCOMP_GUEST_PERM`). Fails with [`PermError::Busy`] once a vCPU exists: use
/// [`crate::KvmSetup::request_guest_feature`], which can only be called before.
///
/// ```no_run
/// let r = xstate_kvm::perm::request_guest(18);
/// println!("{r:?}");
/// ```
pub fn request_guest(feature: u8) -> Result<(), PermError> {
    sys::req(PermOp::ReqGuestPerm, feature)
        .map_err(|e| PermError::from_request(PermOp::ReqGuestPerm, feature, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_names_the_kernel_reasons() {
        let op = PermOp::ReqGuestPerm;
        assert!(matches!(
            PermError::from_request(op, 99, libc::EINVAL),
            PermError::InvalidFeature { feature: 99, .. }
        ));
        assert!(matches!(
            PermError::from_request(op, 2, libc::EOPNOTSUPP),
            PermError::NotSupported { .. }
        ));
        assert!(matches!(
            PermError::from_request(op, 18, libc::EBUSY),
            PermError::Busy { .. }
        ));
        assert!(matches!(
            PermError::from_request(PermOp::ReqPerm, 18, libc::ENOSPC),
            PermError::SigaltstackTooSmall { .. }
        ));
        let e = PermError::from_request(op, 18, libc::EFAULT);
        assert_eq!(e.errno(), libc::EFAULT);
        assert_eq!(e.op(), op);
        let text = PermError::from_request(op, 18, libc::EBUSY).to_string();
        assert!(
            text.contains("ARCH_REQ_XCOMP_GUEST_PERM") && text.contains("EBUSY"),
            "{text}"
        );
        assert!(text.contains("tiledata") || text.contains("TILEDATA") || text.contains("18"));
    }
}
