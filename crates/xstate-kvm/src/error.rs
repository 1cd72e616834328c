//! The error type of every fallible call in this crate.

use std::io;

/// What went wrong, naming the operation (ioctl, arch_prctl, MSR, file offset) and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This target has no KVM (xstate-kvm needs Linux on x86-64).
    #[error("KVM is not available on this platform: xstate-kvm needs Linux on x86-64")]
    Unsupported,
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {source}")]
    Open {
        /// The OS error (ENOENT when KVM is absent, EACCES without permission).
        source: io::Error,
    },
    /// An ioctl failed; `source` carries the real errno.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The ioctl (and its argument where useful), e.g. `KVM_SET_XSAVE`.
        op: String,
        /// The OS error with the errno the kernel returned.
        source: io::Error,
    },
    /// A permission request or query (arch_prctl) failed.
    #[error(transparent)]
    Perm(#[from] crate::perm::PermError),
    /// KVM answered something this crate cannot use (a size below 4096, an unknown MSR count…).
    #[error("{op}: unexpected answer from KVM: {what}")]
    Unexpected {
        /// The operation.
        op: String,
        /// What was wrong with the answer.
        what: String,
    },
    /// An XSAVE image was refused before KVM_SET_XSAVE; every reason is listed.
    #[error(transparent)]
    Refused(#[from] crate::xsave::Refused),
    /// A vCPU xstate to restore is inconsistent with the vCPU (an MSR KVM does not list, …).
    #[error("cannot restore the vCPU xstate: {0}")]
    Restore(String),
    /// The guest harness failed (guest memory, an unexpected VM exit, …).
    #[error("guest: {0}")]
    Guest(String),
}

impl Error {
    /// The errno of a failed ioctl or arch_prctl, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Open { source } | Error::Ioctl { source, .. } => source.raw_os_error(),
            Error::Perm(p) => Some(p.errno()),
            _ => None,
        }
    }

    /// An ioctl error from a kvm-ioctls error value.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    pub(crate) fn ioctl(op: impl Into<String>, e: kvm_ioctls::Error) -> Self {
        Error::Ioctl {
            op: op.into(),
            source: io::Error::from_raw_os_error(e.errno()),
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
