//! Runs the example `vmm_owned_fds` (the VMM owns its Kvm, VmFd and VcpuFds; xstate-kvm works
//! on borrowed ones): the example's own code, compiled into this test, must end in `ok`, or
//! print `skipped: <reason>` where /dev/kvm is absent. Alone in its test binary: the example
//! requests guest permissions, which the kernel refuses (EBUSY) once any vCPU of the process
//! exists.

#[path = "../examples/vmm_owned_fds.rs"]
mod example;

#[test]
fn vmm_owned_fds_example_restores_and_verifies() {
    let line = example::run().unwrap_or_else(|e| panic!("vmm_owned_fds: {e}"));
    println!("{line}");
    assert!(
        line.starts_with("ok") || line.starts_with("skipped: "),
        "{line}"
    );
}
