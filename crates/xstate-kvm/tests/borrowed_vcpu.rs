//! [`xstate_kvm::BorrowedVcpu`] on a VMM's own kvm-ioctls objects: the ordering its docs
//! require is checked, and the VMM keeps using its fds.

/// The ordering the borrowed mode documents is checked on the VMM's own fds: a restore before
/// KVM_SET_CPUID2 is refused naming it, and nothing is written; after it the same restore
/// works and the VMM's vCPU reads back exactly the state.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn borrowed_vcpu_refuses_a_restore_before_the_guest_cpuid_and_writes_nothing() {
    use xstate_kvm::{BorrowedVcpu, KvmFacts, VcpuXstate};
    if let Some(why) = xstate_kvm::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().expect("kvm");
    let facts = KvmFacts::read(&kvm).expect("facts");
    let vm = kvm.create_vm().expect("vm");
    let (a, b) = (vm.create_vcpu(0).expect("a"), vm.create_vcpu(1).expect("b"));
    a.set_cpuid2(facts.supported_cpuid()).expect("cpuid a");
    let src = BorrowedVcpu::new(&facts, &vm, &a).expect("borrow a");
    let xcr0 = facts.guest_supported_xcr0() & facts.layout().xcr0_supported() & 0x7;
    let mut state: VcpuXstate = src.capture().expect("capture");
    state.controls.xcr0 = xcr0;
    if xcr0 == 1 {
        println!("skipped: no SSE/AVX for guests");
        return;
    }
    let dst = BorrowedVcpu::new(&facts, &vm, &b).expect("borrow b");
    let before = dst.capture().expect("capture b");
    let e = dst.restore(&state).expect_err("no guest CPUID yet");
    assert!(e.to_string().contains("KVM_SET_CPUID2"), "{e}");
    assert_eq!(dst.capture().expect("capture b"), before, "nothing written");
    b.set_cpuid2(facts.supported_cpuid()).expect("cpuid b");
    dst.restore(&state).expect("restore after KVM_SET_CPUID2");
    assert_eq!(dst.capture().expect("capture b"), state);
    // The VMM still owns and uses its fds.
    assert_eq!(b.get_xcrs().expect("xcrs").xcrs[0].value, xcr0);
}
