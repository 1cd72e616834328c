//! Capture a vCPU's complete extended state and restore it into another vCPU: what a VMM does
//! for snapshots and live migration. Run with `cargo run -p xstate-kvm --example capture_restore`.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use xstate_kvm::KvmSetup;

    // 1. Guest permissions for dynamic components (AMX) before any VM or vCPU exists.
    let mut setup = KvmSetup::open()?;
    let supported = setup.guest_supported_xcr0()?;
    setup.request_guest_features(supported)?;
    let kvm = setup.ready()?; // now: supported CPUID, VMs

    // 2. Source vCPU; a real VMM has set its CPUID, registers and run it.
    let vm = kvm.create_vm()?;
    let src = vm.create_vcpu(0)?;
    src.fd().set_cpuid2(kvm.supported_cpuid())?;

    // 3. Capture: XCR0, IA32_XSS/XFD/CET MSRs KVM lists, the XSAVE image sized by KVM_CAP_XSAVE2.
    let state = src.capture()?;

    // 4. Restore into the destination vCPU (after its KVM_SET_CPUID2): everything is checked
    //    first, then XCR0 → MSRs → XSAVE image, the order the kernel requires.
    let dst = vm.create_vcpu(1)?;
    dst.fd().set_cpuid2(kvm.supported_cpuid())?;
    dst.restore(&state)?;
    assert_eq!(dst.capture()?, state);
    println!("restored and verified");
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("this example needs KVM (Linux on x86-64)");
}
