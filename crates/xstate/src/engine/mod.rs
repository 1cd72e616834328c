//! The guest FPU engine of the seeds (placeholder module header; see below).

pub mod config;
pub mod error;
pub mod perm;

pub use error::{EngineError, ErrorKind};
