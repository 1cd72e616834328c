//! The end-to-end proof behind `xstate kvm demo`: VM A's guest loads distinct values into
//! every supported user component with its own XRSTOR; the host captures the vCPU's complete
//! xstate; VM B is restored from it; VM B's guest stores its registers with its own XSAVE; the
//! host compares them with what VM A loaded.
//!
//! The two halves are separate functions so a caller can put any capture format between them
//! (a file, a snapshot format).

use xstate::components::{bits, mask, Component};
use xstate::layout::FormLayout;

use super::{code, pattern, GuestVm, DST_ADDR, EXIT_PORT, SRC_ADDR};
use crate::error::{Error, Result};
use crate::kvm::{Kvm, KvmFacts};
use crate::state::VcpuXstate;
use crate::xsave::XsaveBuffer;

/// The XCR0 the demo gives its guests: every user component KVM supports for guests and this
/// process may use, without AMX (TILECFG needs a valid configuration and guest AMX set-up).
pub fn demo_xcr0(kvm: &impl AsRef<KvmFacts>) -> u64 {
    let kvm = kvm.as_ref();
    let supported = kvm.guest_supported_xcr0() & kvm.layout().xcr0_supported();
    let not_permitted = mask::DYNAMIC & !kvm.guest_permitted();
    supported & !not_permitted & !mask::AMX
}

/// The names of the components whose values the demo verifies for an XCR0.
///
/// ```
/// assert_eq!(
///     xstate_kvm::guest::demo::verified_components(0xe7),
///     vec!["x87", "sse", "avx", "opmask", "zmm_hi256", "hi16_zmm"]
/// );
/// ```
pub fn verified_components(xcr0: u64) -> Vec<String> {
    bits(xcr0 & pattern::PATTERNED)
        .map(Component::name_of)
        .collect()
}

/// What VM A loaded and what the host captured from it.
#[derive(Debug)]
pub struct Loaded {
    /// The guest's XCR0.
    pub xcr0: u64,
    /// The standard layout of `xcr0` on this KVM.
    pub layout: FormLayout,
    /// The image VM A's guest restored with XRSTOR (the expected register values).
    pub expected: XsaveBuffer,
    /// The complete vCPU xstate captured after the guest's OUT.
    pub state: VcpuXstate,
    /// KVM_CAP_XSAVE2 of VM A.
    pub xsave2_size: usize,
}

/// VM A: the guest XRSTORs a pattern image from its memory and leaves; the host captures.
pub fn run_vm_a(kvm: &Kvm) -> Result<Loaded> {
    let xcr0 = demo_xcr0(kvm);
    let layout = kvm.layout().standard(xcr0).map_err(|e| Error::Unexpected {
        op: format!("standard layout of XCR0 {xcr0:#x} from KVM_GET_SUPPORTED_CPUID"),
        what: e.to_string(),
    })?;
    let mut g = GuestVm::new(kvm, xcr0)?;
    let xsave2_size = g.vm().xsave2_size()?;
    let mxcsr_mask = g.vcpu().mxcsr_mask()?;
    let expected = pattern::image(&layout, layout.size as usize, mxcsr_mask);
    g.memory_mut().write(SRC_ADDR, expected.as_bytes())?;
    g.load_program(&code::xrstor_then_out(xcr0, SRC_ADDR as u32, EXIT_PORT))?;
    g.run_to_exit_port()?;
    let state = g.vcpu().capture()?;
    Ok(Loaded {
        xcr0,
        layout,
        expected,
        state,
        xsave2_size,
    })
}

/// VM B: a fresh VM restored from `state`; its guest XSAVEs to its memory and leaves. Returns
/// the image the guest wrote (standard form, `layout.size` bytes).
pub fn run_vm_b(kvm: &Kvm, state: &VcpuXstate, layout: &FormLayout) -> Result<XsaveBuffer> {
    let xcr0 = state.controls.xcr0;
    // XCR0 1 at set-up; the restore writes the captured one.
    let mut g = GuestVm::new(kvm, 1)?;
    g.vcpu().restore(state)?;
    let len = layout.size as usize;
    g.memory_mut().write(DST_ADDR, &vec![0u8; len])?;
    g.load_program(&code::xsave_then_out(xcr0, DST_ADDR as u32, EXIT_PORT))?;
    g.run_to_exit_port()?;
    Ok(XsaveBuffer::from_bytes(g.memory().read(DST_ADDR, len)?))
}

/// The demo's verdict.
#[derive(Debug)]
pub struct Report {
    /// KVM_CAP_XSAVE2 of the VMs.
    pub xsave2_size: usize,
    /// The guest XCR0.
    pub guest_xcr0: u64,
    /// Components whose every register matched at every stage.
    pub components_verified: Vec<String>,
    /// Every register that differed (capture of VM A, XSAVE of VM B's guest).
    pub mismatches: Vec<pattern::Mismatch>,
}

/// Compares what VM A loaded with the capture and with VM B's guest XSAVE.
pub fn verdict(loaded: &Loaded, vm_b_image: &XsaveBuffer) -> Report {
    let m = loaded.xcr0 & pattern::PATTERNED;
    let mut mismatches = pattern::compare(
        "capture",
        &loaded.expected,
        &loaded.state.xsave,
        &loaded.layout,
        m,
    );
    mismatches.extend(pattern::compare(
        "vm_b",
        &loaded.expected,
        vm_b_image,
        &loaded.layout,
        m,
    ));
    let components_verified = verified_components(m)
        .into_iter()
        .filter(|n| !mismatches.iter().any(|x| &x.component == n))
        .collect();
    Report {
        xsave2_size: loaded.xsave2_size,
        guest_xcr0: loaded.xcr0,
        components_verified,
        mismatches,
    }
}
