//! A VMM that owns its KVM objects: it opens /dev/kvm, creates the VM, its memory and two
//! vCPUs with kvm-ioctls, runs the project's test guest on the first (the guest XRSTORs
//! distinct values into every user component it has), captures that vCPU's complete extended
//! state through xstate-kvm on the borrowed `VcpuFd`, restores it into the second vCPU, lets
//! that guest XSAVE its registers and compares. xstate-kvm never takes ownership of anything.
//! Prints `ok` and exits 0; prints `skipped: <reason>` and exits 0 where /dev/kvm is absent.
//! Run with `cargo run -p xstate-kvm --example vmm_owned_fds`.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn run() -> Result<String, Box<dyn std::error::Error>> {
    use xstate::components::mask;
    use xstate_kvm::guest::{self, code, demo, memory::GuestMemory, pattern};
    use xstate_kvm::{perm, BorrowedVcpu, KvmFacts};

    if let Some(why) = xstate_kvm::unavailable() {
        return Ok(format!("skipped: {why}"));
    }
    // 1. Guest permissions for dynamic components (AMX) before KVM_GET_SUPPORTED_CPUID and
    //    before any vCPU exists; EOPNOTSUPP where the CPU has none.
    match perm::request_guest(18) {
        Ok(()) | Err(perm::PermError::NotSupported { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // 2. The VMM's own objects; xstate-kvm reads what it needs from the /dev/kvm handle.
    let kvm = kvm_ioctls::Kvm::new()?;
    let facts = KvmFacts::read(&kvm)?;
    let mut mem = GuestMemory::new(guest::MEM_SIZE)?;
    let vm = kvm.create_vm()?;
    // SAFETY: `mem` is a live mapping of MEM_SIZE bytes that outlives `vm` and its vCPUs (it
    // is declared before them, so it is dropped after them).
    unsafe { vm.set_user_memory_region(mem.region(0))? };
    guest::write_tables(&mut mem)?;
    let mut a = vm.create_vcpu(0)?;
    let mut b = vm.create_vcpu(1)?;

    // 3. vCPU A runs the test guest: XRSTOR of a pattern image, then OUT.
    let xcr0 = demo::demo_xcr0(&facts);
    let layout = facts.layout().standard(xcr0)?;
    let expected = pattern::image(&layout, layout.size as usize, xstate_kvm::host_mxcsr_mask());
    guest::enter_long_mode(&a, facts.supported_cpuid(), xcr0)?;
    mem.write(guest::SRC_ADDR, expected.as_bytes())?;
    guest::load_program(
        &mut mem,
        &a,
        &code::xrstor_then_out(xcr0, guest::SRC_ADDR as u32, guest::EXIT_PORT),
    )?;
    guest::run_to_exit_port(&mut a)?;

    // 4. Capture through xstate-kvm on the borrowed fd: XCR0, MSRs, XSAVE image.
    let state = BorrowedVcpu::new(&facts, &vm, &a)?.capture()?;

    // 5. Restore into vCPU B (its guest CPUID set first, XCR0 1 until the restore).
    guest::enter_long_mode(&b, facts.supported_cpuid(), mask::X87)?;
    let dst = BorrowedVcpu::new(&facts, &vm, &b)?;
    dst.restore(&state)?;
    if dst.capture()? != state {
        return Err("vCPU B's captured state differs from vCPU A's".into());
    }

    // 6. vCPU B's guest stores its registers with its own XSAVE; compare with what A loaded.
    mem.write(guest::DST_ADDR, &vec![0u8; layout.size as usize])?;
    guest::load_program(
        &mut mem,
        &b,
        &code::xsave_then_out(xcr0, guest::DST_ADDR as u32, guest::EXIT_PORT),
    )?;
    guest::run_to_exit_port(&mut b)?;
    let saved =
        xstate_kvm::XsaveBuffer::from_bytes(mem.read(guest::DST_ADDR, layout.size as usize)?);
    let m = xcr0 & pattern::PATTERNED;
    let mut bad = pattern::compare("capture", &expected, &state.xsave, &layout, m);
    bad.extend(pattern::compare("vcpu_b", &expected, &saved, &layout, m));
    if let Some(x) = bad.first() {
        return Err(format!(
            "{} registers differ, first {} {} at {}: expected {} got {}",
            bad.len(),
            x.stage,
            x.field,
            x.offset,
            x.expected,
            x.got
        )
        .into());
    }
    Ok(format!(
        "ok: XCR0 {xcr0:#x} ({}) moved from vCPU 0 to vCPU 1, {} MSR(s), {}-byte image",
        demo::verified_components(m).join(","),
        state.controls.msrs.len(),
        state.xsave.len()
    ))
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn run() -> Result<String, Box<dyn std::error::Error>> {
    Ok("skipped: this example needs KVM (Linux on x86-64)".into())
}

#[allow(dead_code)] // the test that runs this file calls `run` only
fn main() {
    match run() {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("vmm_owned_fds: {e}");
            std::process::exit(1);
        }
    }
}
