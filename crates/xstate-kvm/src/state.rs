//! A vCPU's complete extended state, as a value.

use std::collections::BTreeMap;

use crate::msr;
use crate::xsave::XsaveBuffer;

/// What must be in place before an XSAVE image is loaded (seed 001): XCR0 and the
/// extended-state MSRs (IA32_XSS, IA32_XFD, IA32_XFD_ERR, CET).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XstateControls {
    /// XCR0 (KVM_GET_XCRS).
    pub xcr0: u64,
    /// Extended-state MSRs by index, every one KVM listed and let the host read.
    pub msrs: BTreeMap<u32, u64>,
}

impl XstateControls {
    /// IA32_XSS, when captured.
    pub fn xss(&self) -> Option<u64> {
        self.msrs.get(&msr::IA32_XSS).copied()
    }

    /// IA32_XFD, when captured.
    pub fn xfd(&self) -> Option<u64> {
        self.msrs.get(&msr::IA32_XFD).copied()
    }

    /// IA32_XFD_ERR, when captured.
    pub fn xfd_err(&self) -> Option<u64> {
        self.msrs.get(&msr::IA32_XFD_ERR).copied()
    }
}

/// A vCPU's complete extended state: controls and the XSAVE image (standard form, KVM's
/// layout). Capture with [`crate::Vcpu::capture`], restore with [`crate::Vcpu::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuXstate {
    /// XCR0 and the MSRs, restored first.
    pub controls: XstateControls,
    /// The XSAVE image, restored last.
    pub xsave: XsaveBuffer,
}
