//! One module per subcommand; each has `Args` and `run(Args) -> anyhow::Result<i32>` returning
//! the exit status.

pub mod batch;
pub mod check;
pub mod convert;
pub mod diff;
pub mod host;
pub mod inspect;
pub mod kvm;
pub mod kvm_cpuid;
pub mod layout;
pub mod model;
pub mod sim;
pub mod validate;
pub mod xsnap;
