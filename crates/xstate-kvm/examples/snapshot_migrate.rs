//! Snapshot a vCPU's extended state to a portable `.xsnap` file, check the destination, and
//! restore it: the flow of a VMM's snapshot/migration path. The image inside the file is not
//! a host blob: it is rebuilt from the destination's own layout, so Intel↔AMD works.
//! Run with `cargo run -p xstate-kvm --example snapshot_migrate [FILE]`.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use xstate::{compat, snapshot::Snapshot};
    use xstate_kvm::{snapshot, KvmSetup};

    let file = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/vcpu0.xsnap".into());
    // Source side: permissions (AMX) first, then the VM; capture XCR0, MSRs, XSAVE image.
    let mut setup = KvmSetup::open()?;
    let all = setup.guest_supported_xcr0()?;
    setup.request_guest_features(all)?;
    let kvm = setup.ready()?;
    let vm = kvm.create_vm()?;
    let src = vm.create_vcpu(0)?;
    src.fd().set_cpuid2(kvm.supported_cpuid())?;
    let state = src.capture()?;
    std::fs::write(&file, snapshot::snapshot_of(&kvm, &state)?.encode()?)?;

    // Destination side: decode, check every reason it could fail, rebuild, restore.
    let snap = Snapshot::decode(&std::fs::read(&file)?)?;
    let verdict = compat::check(&snap, &snapshot::destination(&kvm));
    if !verdict.compatible {
        for r in &verdict.reasons {
            eprintln!("[{}] {}", r.rule, r.message);
        }
        return Err("snapshot cannot be restored here".into());
    }
    let dst = vm.create_vcpu(1)?;
    dst.fd().set_cpuid2(kvm.supported_cpuid())?;
    dst.restore(&snapshot::state_of(&kvm, &snap)?)?; // XCR0 → MSRs → image
    assert_eq!(dst.capture()?, state);
    println!("{file}: restored and verified");
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("this example needs KVM (Linux on x86-64)");
}
