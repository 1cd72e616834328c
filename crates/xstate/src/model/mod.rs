//! An executable model of the XSAVE instruction family (Intel SDM Vol. 1 ch. 13, Vol. 2
//! XSAVE/XSAVEOPT/XSAVEC/XSAVES/XRSTOR/XRSTORS/FXSAVE/FXRSTOR/XGETBV/XSETBV), checked against
//! the real CPU, and the [`Backend`] trait shared by the model and the hardware.
//!
//! * [`CpuProfile`]: capability bits and vendor differences, from CPUID;
//! * [`Fault`]: every fault as a value (exception + SDM rule);
//! * [`Backend`]: the interface the guest FPU engine drives; [`HwBackend`] runs it on this CPU
//!   (user mode).

pub mod aligned;
pub mod backend;
pub mod cpu;
pub mod fault;
pub mod profile;

pub use aligned::AlignedBuf;
#[cfg(target_arch = "x86_64")]
pub use backend::HwBackend;
pub use backend::{Backend, Msr, RestoreInsn, SaveInsn};
pub use cpu::{ModelCpu, SimpleInsn, XrstorInfo, X87};
pub use fault::{Exception, Fault};
pub use profile::{CpuProfile, X87Pointers, XinuseTracking};
