//! Parsers for CPUID dump files (placeholder: implemented in the parsers change).

use super::CpuidDump;
use alloc::string::String;

/// Why a dump could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: line {line}: {message}")]
pub struct ParseError {
    /// The file or source name.
    pub source_name: String,
    /// 1-based line number (0 when the error is about the whole file).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl CpuidDump {
    /// Parses a dump, detecting its format.
    pub fn parse(text: &str, source: &str) -> Result<CpuidDump, ParseError> {
        let _ = text;
        Err(ParseError {
            source_name: String::from(source),
            line: 0,
            message: String::from("dump parsing not implemented yet"),
        })
    }
}
