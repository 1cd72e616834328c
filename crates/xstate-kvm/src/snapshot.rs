//! A vCPU's captured extended state ([`VcpuXstate`]) as a portable [`Snapshot`] (`.xsnap`,
//! `docs/xsnap.md`) and back, and this KVM as a compatibility [`Destination`](xstate::compat::Destination).
//!
//! The snapshot keeps each component's architectural content, XCR0, IA32_XSS, IA32_XFD,
//! IA32_XFD_ERR, the other extended-state MSRs and the source CPU's leaf 0xD; the image a
//! restore needs is rebuilt from the destination KVM's own layout (DESIGN.md §7), so a
//! snapshot taken where opmask lives at 1088 restores where it lives at 832.
//!
//! ```no_run
//! # #[cfg(all(target_os = "linux", target_arch = "x86_64"))] {
//! use xstate_kvm::snapshot::{destination, snapshot_of, state_of};
//! let kvm = xstate_kvm::Kvm::open()?;
//! let vm = kvm.create_vm()?;
//! let (a, b) = (vm.create_vcpu(0)?, vm.create_vcpu(1)?);
//! for v in [&a, &b] { v.fd().set_cpuid2(kvm.supported_cpuid())?; }
//! let file = snapshot_of(&kvm, &a.capture()?)?.encode()?;            // → disk, network …
//! let snap = xstate::snapshot::Snapshot::decode(&file)?;
//! let verdict = xstate::compat::check(&snap, &destination(&kvm));
//! assert!(verdict.compatible, "{:?}", verdict.reasons);
//! b.restore(&state_of(&kvm, &snap)?)?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use xstate::compat::{completeness, OutsideImage};
use xstate::cpuid::CpuidDump;
use xstate::layout::{Form, Layout};
use xstate::snapshot::{ControlRegs, Snapshot, SnapshotError, SourceCpu};

use crate::msr::{IA32_XFD, IA32_XFD_ERR, IA32_XSS};
use crate::state::{VcpuXstate, XstateControls};
use crate::xsave::{XsaveBuffer, KVM_XSAVE_SIZE};

/// The snapshot of a captured state whose image was laid out by the CPU `cpu` describes
/// (for KVM: its supported CPUID, whose leaf 0xD is the host's).
///
/// IA32_XSS, IA32_XFD and IA32_XFD_ERR move from the MSR map to their own fields (0 when not
/// captured); every other MSR is kept by index.
///
/// A capture that lacks state the CPU shows ([`xstate::compat::completeness`]: IA32_XSS where
/// the CPU has XSAVES and supervisor components, IA32_XFD/IA32_XFD_ERR where XCR0 enables an
/// XFD-capable component, the CET MSRs IA32_XSS calls for) is refused: `.xsnap` v1 always has
/// those fields, and a 0 written for "not captured" would be a lie.
pub fn to_snapshot(state: &VcpuXstate, cpu: &CpuidDump) -> Result<Snapshot, SnapshotError> {
    let source = SourceCpu::from_dump(cpu);
    complete(state, &source)?;
    Snapshot::from_image_with(
        state.xsave.as_bytes(),
        &Layout::from_dump(cpu),
        source,
        &control_regs(state),
    )
}

/// Refuses a captured state that lacks what `source` shows (see [`to_snapshot`]).
fn complete(state: &VcpuXstate, source: &SourceCpu) -> Result<(), SnapshotError> {
    let c = &state.controls;
    let rec = OutsideImage {
        xcr0: c.xcr0,
        xss: c.xss(),
        xfd: c.xfd(),
        xfd_err: c.xfd_err(),
        msrs: &c.msrs,
        // KVM's image is the standard form: it never holds supervisor components.
        in_image: c.xcr0,
    };
    let reasons = completeness(source, &rec);
    if reasons.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = reasons
        .iter()
        .map(|r| format!("[{}] {}", r.rule, r.message))
        .collect();
    Err(SnapshotError::Malformed {
        location: String::from("captured vCPU state"),
        message: text.join("; "),
    })
}

/// The snapshot's control registers of a captured state: IA32_XSS, IA32_XFD and IA32_XFD_ERR
/// in their own fields (0 when not captured), the other MSRs by index.
fn control_regs(state: &VcpuXstate) -> ControlRegs {
    let c = &state.controls;
    let mut msrs: BTreeMap<u32, u64> = c.msrs.clone();
    for i in [IA32_XSS, IA32_XFD, IA32_XFD_ERR] {
        msrs.remove(&i);
    }
    ControlRegs {
        xcr0: c.xcr0,
        xss: c.xss().unwrap_or(0),
        xfd: c.xfd().unwrap_or(0),
        xfd_err: c.xfd_err().unwrap_or(0),
        msrs,
    }
}

/// The state to restore from a snapshot on a destination whose KVM uses `layout` (its
/// supported CPUID's leaf 0xD), with a `xsave_size`-byte buffer (KVM_CAP_XSAVE2; at least 4096
/// is used) and the MSR indices it lists.
///
/// The image is the standard form of the snapshot's XCR0 built with the destination's offsets
/// and zero-padded to the buffer size. IA32_XSS, IA32_XFD and IA32_XFD_ERR go into the MSR map
/// when non-zero or listed. A component the destination cannot hold is an error naming it
/// (nothing is written to any vCPU).
pub fn from_snapshot(
    snap: &Snapshot,
    layout: &Layout,
    xsave_size: usize,
    listed_msrs: &[u32],
) -> Result<VcpuXstate, SnapshotError> {
    let mut img = snap.to_image(layout, Form::Standard, snap.xcr0)?;
    let size = xsave_size.max(KVM_XSAVE_SIZE);
    if img.len() < size {
        img.resize(size, 0);
    }
    let mut msrs = snap.msrs.clone();
    for (i, v) in [
        (IA32_XSS, snap.xss),
        (IA32_XFD, snap.xfd),
        (IA32_XFD_ERR, snap.xfd_err),
    ] {
        if v != 0 || listed_msrs.contains(&i) {
            msrs.insert(i, v);
        }
    }
    Ok(VcpuXstate {
        controls: XstateControls {
            xcr0: snap.xcr0,
            msrs,
        },
        xsave: XsaveBuffer::from_bytes(img),
    })
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use kvm_side::{destination, snapshot_of, state_of};

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod kvm_side {
    use super::*;
    use crate::kvm::KvmFacts;
    use xstate::compat::Destination;
    use xstate::components::mask;

    /// The snapshot of a state captured from a vCPU of `kvm` (a [`Kvm`](crate::Kvm) or the
    /// [`KvmFacts`] of a VMM's own KVM). Uses the layout and source-CPU record the facts hold:
    /// nothing is rebuilt from the CPUID table per call.
    pub fn snapshot_of(
        kvm: &impl AsRef<KvmFacts>,
        state: &VcpuXstate,
    ) -> Result<Snapshot, SnapshotError> {
        let f = kvm.as_ref();
        complete(state, f.source_cpu())?;
        Snapshot::from_image_with(
            state.xsave.as_bytes(),
            f.layout(),
            f.source_cpu().clone(),
            &control_regs(state),
        )
    }

    /// The state to restore on a vCPU of `kvm` (see [`from_snapshot`]).
    pub fn state_of(
        kvm: &impl AsRef<KvmFacts>,
        snap: &Snapshot,
    ) -> Result<VcpuXstate, SnapshotError> {
        let f = kvm.as_ref();
        from_snapshot(snap, f.layout(), f.xsave2_size() as usize, f.xstate_msrs())
    }

    /// This KVM as a compatibility destination: its layout (supported CPUID leaf 0xD), the
    /// guest-supported XCR0 less dynamic components this process may not give guests, the
    /// supervisor components its supported CPUID offers, KVM_CAP_XSAVE2 and the
    /// extended-state MSRs it lists, the host MXCSR mask ([`crate::host_mxcsr_mask`], the
    /// mask KVM_SET_XSAVE applies). KVM restores standard-form images.
    pub fn destination(kvm: &impl AsRef<KvmFacts>) -> Destination {
        let f = kvm.as_ref();
        let layout = f.layout().clone();
        let not_permitted = mask::DYNAMIC & !f.guest_permitted();
        let xcr0 = f.guest_supported_xcr0() & !not_permitted;
        let xss = layout.xss_supported();
        let size = f.xsave2_size();
        Destination {
            name: String::from("this host's KVM"),
            layout,
            xcr0,
            xss,
            form: Some(Form::Standard),
            xsave_size: Some(if size == 0 {
                KVM_XSAVE_SIZE as u32
            } else {
                size
            }),
            msrs: Some(f.xstate_msrs().to_vec()),
            mxcsr_mask: Some(crate::host_mxcsr_mask()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xstate::cpuid::Regs;

    fn zen5_like() -> CpuidDump {
        let mut d = CpuidDump::new("zen5");
        let r = |eax, ebx, ecx| Regs {
            eax,
            ebx,
            ecx,
            edx: 0,
        };
        d.insert(0xd, 0, r(0xe7, 0x980, 0x980));
        d.insert(0xd, 2, r(256, 576, 0));
        d.insert(0xd, 5, r(64, 832, 0));
        d.insert(0xd, 6, r(512, 896, 0));
        d.insert(0xd, 7, r(1024, 1408, 0));
        d
    }

    #[test]
    fn state_snapshot_state_is_identity_and_msrs_move_to_fields() {
        let d = zen5_like();
        let mut img = vec![0u8; 4096];
        img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        img[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        img[160..416].fill(0x11);
        img[832..896].fill(0x22);
        img[512] = 0x22; // SSE | opmask
        let mut msrs = BTreeMap::new();
        msrs.insert(IA32_XSS, 0);
        msrs.insert(0x6a0, 4);
        let state = VcpuXstate {
            controls: XstateControls { xcr0: 0xe7, msrs },
            xsave: XsaveBuffer::from_bytes(img),
        };
        let s = to_snapshot(&state, &d).unwrap();
        assert_eq!(s.xstate_bv(), 0x22);
        assert_eq!(s.msrs.len(), 1);
        assert_eq!(s.msrs.get(&0x6a0), Some(&4));
        let back = from_snapshot(
            &s,
            &xstate::layout::Layout::from_dump(&d),
            4096,
            &[IA32_XSS, 0x6a0],
        )
        .unwrap();
        assert_eq!(back, state);
        // A CPU with XSAVES and CET (Zen 5's CPUID.(0xD,1)): a capture without IA32_XSS is
        // refused rather than written with XSS = 0.
        let mut cet = d.clone();
        cet.insert(
            0xd,
            1,
            Regs {
                eax: 0xf,
                ebx: 0,
                ecx: 0x1800,
                edx: 0,
            },
        );
        let mut no_xss = state.clone();
        no_xss.controls.msrs.remove(&IA32_XSS);
        let e = to_snapshot(&no_xss, &cet).unwrap_err();
        assert!(e.to_string().contains("completeness.xss_missing"), "{e}");
        assert!(to_snapshot(&state, &cet).is_ok());
        // Not listed and zero: IA32_XSS is left out.
        let back =
            from_snapshot(&s, &xstate::layout::Layout::from_dump(&d), 4096, &[0x6a0]).unwrap();
        assert!(!back.controls.msrs.contains_key(&IA32_XSS));
    }
}
