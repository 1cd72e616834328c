//! Cloud Hypervisor `state.json` against the real KVM: the fixture whose layout differs from
//! this host's (derived from KVM's supported CPUID, never from the vendor) is restored as
//! Cloud Hypervisor would, raw, and KVM accepts it and misplaces the registers; the file
//! `xstate::vmm::cloud_hypervisor::repair` writes for this host restores into a real vCPU
//! with every register kept. Skips with a reason without /dev/kvm.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use xstate::snapshot::Snapshot;
use xstate::vmm::cloud_hypervisor::{blob_moves, repair, StateJson};
use xstate_kvm::{KvmSetup, VcpuXstate, XsaveBuffer, XstateControls};

const FIXTURES: [&str; 3] = [
    "intel-xeon-6-a7-kvm.state.json",
    "skylake-sp.state.json",
    "zen4.state.json",
];

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../xstate/tests/fixtures/vmm/cloud-hypervisor/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Restores `image` (a standard-form KVM region) with XCR0 `xcr0` into a fresh vCPU and reads
/// the state back as a snapshot on the host's layout.
fn restore_and_read(kvm: &xstate_kvm::Kvm, image: &[u8], xcr0: u64) -> Snapshot {
    let vm = kvm.create_vm().expect("VM");
    let vcpu = vm.create_vcpu(0).expect("vCPU");
    vcpu.fd().set_cpuid2(kvm.supported_cpuid()).expect("CPUID");
    let size = vcpu.xsave_size().expect("xsave size");
    let mut buf = image.to_vec();
    buf.resize(size.max(buf.len()), 0);
    buf.truncate(size);
    let state = VcpuXstate {
        controls: XstateControls {
            xcr0,
            msrs: Default::default(),
        },
        xsave: XsaveBuffer::from_bytes(buf),
    };
    vcpu.restore(&state).expect("KVM accepts the region");
    let back = vcpu.capture().expect("capture");
    xstate_kvm::snapshot::to_snapshot(&back, kvm.supported_cpuid_dump()).expect("read back")
}

#[test]
fn a_moved_region_is_misplaced_raw_and_kept_after_repair() {
    if let Some(why) = xstate_kvm::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let mut setup = KvmSetup::open().expect("KVM");
    let supported = setup.guest_supported_xcr0().expect("supported XCR0");
    setup
        .request_guest_features(supported)
        .expect("permissions");
    let kvm = setup.ready().expect("KVM ready");
    let host = kvm.layout().clone();

    // The fixture whose saved layout differs from this host's.
    let mut chosen = None;
    for f in FIXTURES {
        let bytes = fixture(f);
        let st = StateJson::parse(&bytes).unwrap();
        let snap = st.vcpus[0].to_snapshot().unwrap();
        if snap.xcr0 & !kvm.guest_supported_xcr0() != 0 {
            continue;
        }
        if !blob_moves(&snap, &host).is_empty() {
            chosen = Some((f, bytes, st, snap));
            break;
        }
    }
    let Some((name, bytes, st, orig)) = chosen else {
        println!("skipped: no fixture's layout differs from this host's (no AVX-512 here?)");
        return;
    };
    let moves = blob_moves(&orig, &host);
    println!("{name}: moves {moves:?}");

    // What Cloud Hypervisor does: KVM_SET_XSAVE of the raw region. KVM accepts it (rc 0) and
    // the registers of the moved components are not where they were.
    let raw = restore_and_read(&kvm, &st.vcpus[0].image, orig.xcr0);
    for m in &moves {
        assert_ne!(
            raw.component(m.id),
            orig.component(m.id),
            "component {} should be misplaced by a raw restore",
            m.id
        );
    }

    // The repaired file restores with every register kept.
    let fixed = repair(&bytes, &host).expect("repair");
    let st2 = StateJson::parse(&fixed).unwrap();
    let back = restore_and_read(&kvm, &st2.vcpus[0].image, orig.xcr0);
    assert_eq!(back.components, orig.components);
    let (mut a, mut b) = (back.legacy, orig.legacy);
    a.mxcsr_mask = 0; // the host's MXCSR_MASK, not a register
    b.mxcsr_mask = 0;
    assert_eq!(a, b);
    assert_eq!(back.xcr0, orig.xcr0);
}
