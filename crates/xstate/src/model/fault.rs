//! Faults of the modelled instructions, as values (never panics).

use alloc::string::String;
use core::fmt;

/// The exception an instruction raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Exception {
    /// #GP(0): general protection (bad header, MXCSR, XCR0 value, CPL, alignment …).
    #[serde(rename = "#GP")]
    Gp,
    /// #NM: device not available (CR0.TS, or XFD armed for a component being restored or used).
    #[serde(rename = "#NM")]
    Nm,
    /// #UD: invalid opcode (instruction not supported or not enabled by CR4.OSXSAVE).
    #[serde(rename = "#UD")]
    Ud,
    /// #PF-like: the memory operand extends past the end of the buffer given (the model's
    /// stand-in for a page fault on the first byte past it).
    #[serde(rename = "#PF")]
    Pf,
    /// Not an exception of the CPU: the backend cannot execute this operation (for example a
    /// ring-0 instruction on the user-mode hardware backend, or a state the OS would intercept).
    #[serde(rename = "refused")]
    Refused,
}

impl Exception {
    /// The mnemonic (`#GP`, `#NM`, …).
    pub fn mnemonic(self) -> &'static str {
        match self {
            Exception::Gp => "#GP",
            Exception::Nm => "#NM",
            Exception::Ud => "#UD",
            Exception::Pf => "#PF",
            Exception::Refused => "refused",
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mnemonic())
    }
}

/// A fault of one instruction: the exception, the rule (with its SDM section) and details
/// (field, offset, values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The exception.
    pub exception: Exception,
    /// The rule broken, in words, citing the SDM.
    pub rule: &'static str,
    /// The offending field, offset and values, when there are some (may be empty).
    pub detail: String,
}

impl Fault {
    /// A fault without details.
    pub fn new(exception: Exception, rule: &'static str) -> Fault {
        Fault {
            exception,
            rule,
            detail: String::new(),
        }
    }

    /// A fault with details.
    pub fn with(exception: Exception, rule: &'static str, detail: String) -> Fault {
        Fault {
            exception,
            rule,
            detail,
        }
    }

    /// #GP with this rule.
    pub fn gp(rule: &'static str) -> Fault {
        Fault::new(Exception::Gp, rule)
    }

    /// #UD with this rule.
    pub fn ud(rule: &'static str) -> Fault {
        Fault::new(Exception::Ud, rule)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.exception, self.rule)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Fault {}
