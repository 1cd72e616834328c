//! Errors of the engine: a kind named after the errno a Linux/KVM caller would see (DESIGN.md
//! §6) and a message naming the field, value and rule. Displayed as `"kind: message"`, the
//! form `xstate sim` prints.

use alloc::string::String;
use core::fmt;

/// The class of an engine error, named after the errno Linux returns in the same situation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// Invalid argument: a bad index, value, buffer or state for the operation (EINVAL).
    Einval,
    /// The feature is not a dynamic feature, or the host does not support it (EOPNOTSUPP).
    Eopnotsupp,
    /// The object is in use: permissions locked, vCPU attached, CPU busy (EBUSY).
    Ebusy,
    /// A container could not be allocated (ENOMEM).
    Enomem,
    /// The caller lacks the permission for a dynamic feature (EPERM).
    Eperm,
    /// No such vCPU (ENOENT).
    Enoent,
    /// A thread's signal stack is too small for the grown signal frame (ENOSPC).
    Enospc,
    /// The backend raised a fault the engine did not expect (a bug or a broken backend).
    Fault,
}

impl ErrorKind {
    /// The lower-case name (`einval`, `ebusy`, …).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Einval => "einval",
            ErrorKind::Eopnotsupp => "eopnotsupp",
            ErrorKind::Ebusy => "ebusy",
            ErrorKind::Enomem => "enomem",
            ErrorKind::Eperm => "eperm",
            ErrorKind::Enoent => "enoent",
            ErrorKind::Enospc => "enospc",
            ErrorKind::Fault => "fault",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An engine error: its kind and what exactly was wrong.
///
/// ```
/// use xstate::engine::{EngineError, ErrorKind};
/// let e = EngineError::new(ErrorKind::Ebusy, "guest permissions are locked");
/// assert_eq!(e.to_string(), "ebusy: guest permissions are locked");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct EngineError {
    /// The class.
    pub kind: ErrorKind,
    /// Field, value and rule in words.
    pub message: String,
}

impl EngineError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EngineError {
            kind,
            message: message.into(),
        }
    }
}

pub(crate) fn err<T>(kind: ErrorKind, message: impl Into<String>) -> Result<T, EngineError> {
    Err(EngineError::new(kind, message))
}
