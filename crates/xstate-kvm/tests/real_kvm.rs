//! End-to-end tests on the real /dev/kvm (DESIGN §9). Each prints `skipped: <reason>` and
//! returns where KVM is absent or not permitted.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use xstate::components::mask;
use xstate_kvm::guest::{demo, pattern, GuestVm};
use xstate_kvm::perm::{self, PermError};
use xstate_kvm::{Error, Kvm, XsaveBuffer};

fn kvm() -> Option<Kvm> {
    if let Some(why) = xstate_kvm::unavailable() {
        println!("skipped: {why}");
        return None;
    }
    match Kvm::open() {
        Ok(k) => Some(k),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

#[test]
fn demo_round_trip_verifies_every_supported_user_component() {
    let Some(kvm) = kvm() else { return };
    let loaded = demo::run_vm_a(&kvm).expect("VM A");
    let image = demo::run_vm_b(&kvm, &loaded.state, &loaded.layout).expect("VM B");
    let r = demo::verdict(&loaded, &image);
    assert!(r.mismatches.is_empty(), "{:#?}", r.mismatches);
    assert_eq!(
        r.components_verified,
        demo::verified_components(loaded.xcr0)
    );
    // x87 and SSE always; AVX and AVX-512 wherever KVM gives them to guests (this project's
    // machines: x87, sse, avx, opmask, zmm_hi256, hi16_zmm).
    let want: u64 = kvm.guest_supported_xcr0() & (mask::LEGACY | mask::AVX | mask::AVX512);
    for id in xstate::components::bits(want) {
        let name = xstate::components::Component::name_of(id);
        assert!(
            r.components_verified.contains(&name),
            "{name} not verified: {r:?}"
        );
    }
    // The guest's own XSAVE really ran: VM B's image is not the zeros the host put there.
    assert_eq!(
        image.xstate_bv() & loaded.xcr0 & pattern::PATTERNED,
        loaded.xcr0 & pattern::PATTERNED
    );
}

#[test]
fn demo_detects_a_corrupted_capture() {
    let Some(kvm) = kvm() else { return };
    let loaded = demo::run_vm_a(&kvm).expect("VM A");
    // Flip one byte of XMM5 in the captured image before VM B is restored from it.
    let mut state = loaded.state.clone();
    state.xsave.as_mut_bytes()[160 + 16 * 5 + 3] ^= 0x80;
    let image = demo::run_vm_b(&kvm, &state, &loaded.layout).expect("VM B");
    let r = demo::verdict(&loaded, &image);
    assert_eq!(r.mismatches.len(), 1, "{:#?}", r.mismatches);
    assert_eq!(r.mismatches[0].field, "XMM5");
    assert_eq!(r.mismatches[0].stage, "vm_b");
    assert!(!r.components_verified.contains(&"sse".to_string()));
}

#[test]
fn capture_restore_capture_is_identical() {
    let Some(kvm) = kvm() else { return };
    let loaded = demo::run_vm_a(&kvm).expect("VM A");
    let first = loaded.state;
    // A fresh vCPU in another VM, XCR0 1 and init state until the restore.
    let g = GuestVm::new(&kvm, 1).expect("VM");
    let before = g.vcpu().capture().expect("capture before");
    assert_ne!(
        before, first,
        "the fresh vCPU must differ for the test to mean anything"
    );
    g.vcpu().restore(&first).expect("restore");
    let second = g.vcpu().capture().expect("capture after");
    assert_eq!(second.controls, first.controls);
    if second.xsave != first.xsave {
        let diff: Vec<usize> = (0..first.xsave.len())
            .filter(|&i| first.xsave.as_bytes().get(i) != second.xsave.as_bytes().get(i))
            .take(16)
            .collect();
        panic!("images differ at {diff:?}");
    }
}

/// A valid base image from a real vCPU: XSTATE_BV = x87|SSE, MXCSR 0x1F80.
fn base(g: &GuestVm) -> XsaveBuffer {
    let mut img = g.vcpu().get_xsave().expect("KVM_GET_XSAVE2");
    img.set_xstate_bv(mask::X87 | mask::SSE).expect("header");
    img
}

fn set_u32(img: &mut XsaveBuffer, off: usize, v: u32) {
    img.as_mut_bytes()[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn kvm_set_xsave_verdicts_of_design_9_and_the_validator_agree() {
    let Some(kvm) = kvm() else { return };
    let g = GuestVm::new(&kvm, 1).expect("VM");
    let rules = g.vcpu().xsave_rules().expect("rules");
    let controls = g.vcpu().capture().expect("capture").controls;
    let set = g.vcpu().set_controls(&controls).expect("controls");
    type Mutation = (&'static str, bool, fn(&mut XsaveBuffer));
    let cases: [Mutation; 11] = [
        ("XCOMP_BV != 0", false, |i| i.as_mut_bytes()[520] = 1),
        ("byte 528", false, |i| i.as_mut_bytes()[528] = 1),
        ("byte 560", false, |i| i.as_mut_bytes()[560] = 1),
        ("XSTATE_BV bit 9 (PKRU)", false, |i| {
            i.set_xstate_bv(0x3 | 1 << 9).unwrap()
        }),
        ("XSTATE_BV bit 11 (CET_U)", false, |i| {
            i.set_xstate_bv(0x3 | 1 << 11).unwrap()
        }),
        ("XSTATE_BV bit 63", false, |i| {
            i.set_xstate_bv(0x3 | 1 << 63).unwrap()
        }),
        ("MXCSR bit 16", false, |i| set_u32(i, 24, 0x1F80 | 1 << 16)),
        ("XSTATE_BV 0", true, |i| i.set_xstate_bv(0).unwrap()),
        ("byte 420", true, |i| i.as_mut_bytes()[420] = 0x5a),
        ("byte 464", true, |i| i.as_mut_bytes()[464] = 0x5a),
        ("MXCSR DAZ", true, |i| set_u32(i, 24, 0x1F80 | 0x40)),
    ];
    let supported = kvm.guest_supported_xcr0();
    for (name, accepted, mutate) in cases {
        if name.contains("PKRU") && supported & mask::PKRU != 0 {
            println!("skipped case {name}: this KVM supports PKRU for guests");
            continue;
        }
        let mut img = base(&g);
        mutate(&mut img);
        let kvm_says = set.set_xsave_unchecked(&img);
        let we_say = rules.check(&img);
        match (&kvm_says, accepted) {
            (Ok(()), true) => {}
            (Err(e), false) => assert_eq!(e.errno(), Some(libc::EINVAL), "{name}: {e}"),
            _ => {
                panic!("{name}: KVM answered {kvm_says:?}, DESIGN §9 measured accepted={accepted}")
            }
        }
        assert_eq!(we_say.is_ok(), accepted, "{name}: validator {we_say:?}");
        // The checked path refuses exactly the same images, before the ioctl.
        match set.set_xsave(&img) {
            Ok(()) => assert!(accepted, "{name}"),
            Err(Error::Refused(r)) => assert!(!accepted && !r.reasons.is_empty(), "{name}"),
            Err(e) => panic!("{name}: reached KVM: {e}"),
        }
    }
    // Accepted values are really loaded: MXCSR with DAZ reads back.
    let mut img = base(&g);
    set_u32(&mut img, 24, 0x1F80 | 0x40);
    set.set_xsave(&img).expect("set");
    assert_eq!(g.vcpu().get_xsave().expect("get").mxcsr(), 0x1FC0);
}

/// Mutations of header, MXCSR and XSTATE_BV bytes: the validator and KVM agree on each.
#[test]
fn validator_and_kvm_agree_on_mutated_images() {
    let Some(kvm) = kvm() else { return };
    let g = GuestVm::new(&kvm, 1).expect("VM");
    let rules = g.vcpu().xsave_rules().expect("rules");
    let controls = g.vcpu().capture().expect("capture").controls;
    let set = g.vcpu().set_controls(&controls).expect("controls");
    // A small deterministic generator (xorshift) picks offsets and values.
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let offsets = [
        24usize, 25, 26, 27, 420, 464, 511, 512, 513, 514, 515, 519, 520, 527, 528, 540, 575,
    ];
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..300 {
        let mut img = base(&g);
        for _ in 0..(1 + next() % 3) {
            let off = offsets[(next() % offsets.len() as u64) as usize];
            let bit = (next() % 8) as u8;
            img.as_mut_bytes()[off] ^= 1 << bit;
        }
        let kvm_ok = set.set_xsave_unchecked(&img).is_ok();
        let ours = rules.check(&img);
        assert_eq!(ours.is_ok(), kvm_ok, "validator {ours:?} vs KVM {kvm_ok}");
        if kvm_ok {
            accepted += 1
        } else {
            refused += 1
        }
    }
    assert!(
        accepted > 10 && refused > 10,
        "accepted {accepted}, refused {refused}"
    );
}

#[test]
fn restore_refuses_before_any_write() {
    let Some(kvm) = kvm() else { return };
    let loaded = demo::run_vm_a(&kvm).expect("VM A");
    let g = GuestVm::new(&kvm, 1).expect("VM");
    let before = g.vcpu().capture().expect("capture");
    // An image naming a component this KVM cannot give guests.
    let mut bad = loaded.state.clone();
    let missing = !kvm.guest_supported_xcr0() & (mask::PKRU | mask::AMX | mask::CET_U);
    let bit = missing & missing.wrapping_neg();
    bad.xsave
        .set_xstate_bv(bad.xsave.xstate_bv() | bit)
        .expect("header");
    let e = g.vcpu().restore(&bad).expect_err("refused");
    assert!(matches!(e, Error::Refused(_)), "{e}");
    assert!(e.to_string().contains("xstate_bv_unsupported"), "{e}");
    // An invalid XCR0 (AVX-512 without AVX) is refused too.
    let mut bad = loaded.state.clone();
    bad.controls.xcr0 = 0x3 | (kvm.guest_supported_xcr0() & mask::AVX512);
    if bad.controls.xcr0 & mask::AVX512 != 0 {
        let e = g.vcpu().restore(&bad).expect_err("refused");
        assert!(e.to_string().contains("XCR0"), "{e}");
    }
    // An MSR KVM does not list.
    let mut bad = loaded.state.clone();
    bad.controls.msrs.insert(0x10, 1);
    let e = g.vcpu().restore(&bad).expect_err("refused");
    assert!(e.to_string().contains("MSR_0x10"), "{e}");
    // Nothing was written.
    assert_eq!(g.vcpu().capture().expect("capture"), before);
}

#[test]
fn amx_permission_request_gets_the_documented_answer() {
    let Some(_kvm) = kvm() else { return };
    // Whether the kernel supports AMX at all (ARCH_GET_XCOMP_SUPP); KVM's supported guest XCR0
    // leaves TILEDATA out until the guest permission is granted, so it cannot tell.
    let amx = perm::supported().expect("ARCH_GET_XCOMP_SUPP") & mask::XTILEDATA != 0;
    for (what, r) in [
        ("guest", perm::request_guest(18)),
        ("host", perm::request(18)),
    ] {
        match (amx, r) {
            (false, Err(PermError::NotSupported { feature: 18, .. })) => {}
            (true, Ok(())) => {}
            (true, Err(PermError::Busy { .. })) if what == "guest" => {}
            (_, r) => panic!("{what} AMX request on a host with AMX={amx}: {r:?}"),
        }
    }
    // Index beyond the kernel's components: EINVAL; a static component: EOPNOTSUPP.
    let e = perm::request_guest(64).expect_err("EINVAL");
    assert!(
        matches!(e, PermError::InvalidFeature { feature: 64, .. }),
        "{e:?}"
    );
    assert_eq!(e.errno(), libc::EINVAL);
    let e = perm::request(2).expect_err("EOPNOTSUPP");
    assert_eq!(e.errno(), libc::EOPNOTSUPP);
    // Permissions always include x87 and SSE, and never exceed what the kernel supports.
    let supp = perm::supported().expect("ARCH_GET_XCOMP_SUPP");
    let gperm = perm::guest_permitted().expect("ARCH_GET_XCOMP_GUEST_PERM");
    assert_eq!(gperm & 0x3, 0x3);
    assert_eq!(
        gperm & !supp,
        0,
        "guest perm {gperm:#x} outside supported {supp:#x}"
    );
}

#[test]
fn xsave_buffer_is_sized_from_kvm_cap_xsave2() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm().expect("vm");
    let size = vm.xsave2_size().expect("cap");
    assert!(size >= 4096);
    assert!(
        size >= kvm
            .layout()
            .standard(kvm.guest_supported_xcr0() & kvm.guest_permitted())
            .map(|l| l.size as usize)
            .unwrap_or(0)
    );
    let vcpu = vm.create_vcpu(0).expect("vcpu");
    assert_eq!(vcpu.get_xsave().expect("get").len(), size);
    assert_eq!(vcpu.get_xcr0().expect("xcr0"), 1);
}

#[test]
fn restore_needs_a_guest_cpuid_that_enumerates_xcr0() {
    let Some(kvm) = kvm() else { return };
    let loaded = demo::run_vm_a(&kvm).expect("VM A");
    if loaded.xcr0 == 1 {
        println!("skipped: the guest XCR0 is x87 only");
        return;
    }
    // A vCPU without any guest CPUID.
    let vm = kvm.create_vm().expect("vm");
    let bare = vm.create_vcpu(0).expect("vcpu");
    let e = bare.restore(&loaded.state).expect_err("no CPUID");
    assert!(e.to_string().contains("KVM_SET_CPUID2"), "{e}");
    // A guest CPUID without AVX-512 in leaf 0xD ("host minus AVX-512").
    if loaded.xcr0 & mask::AVX512 == 0 {
        println!("skipped: no AVX-512 for guests here");
        return;
    }
    let mut cpuid = kvm.supported_cpuid().clone();
    for e in cpuid.as_mut_slice() {
        if e.function == 0xd && e.index == 0 {
            e.eax &= !(mask::AVX512 as u32);
        }
    }
    let g = GuestVm::with_cpuid(&kvm, &cpuid, 0x7).expect("VM without AVX-512");
    let read_back = g.vcpu().guest_cpuid().expect("KVM_GET_CPUID2");
    let eax = read_back.get(0xd, 0).map(|r| r.eax).unwrap_or(0);
    if u64::from(eax) & mask::AVX512 != 0 {
        // Measured on this project's machines: KVM_GET_CPUID2 reads leaf 0xD.0 EAX back as the
        // supported 0xe7 whatever KVM_SET_CPUID2 set, and KVM_SET_XCRS accepts AVX-512.
        println!("skipped: this KVM overrides guest CPUID leaf 0xD.0 EAX (set without AVX-512, reads back {eax:#x})");
        return;
    }
    let before = g.vcpu().capture().expect("capture");
    let e = g.vcpu().restore(&loaded.state).expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains("opmask") && text.contains("hi16_zmm"),
        "{text}"
    );
    assert_eq!(
        g.vcpu().capture().expect("capture"),
        before,
        "nothing written"
    );
    // KVM itself agrees: XCR0 with AVX-512 is EINVAL for this guest CPUID.
    let ctl = xstate_kvm::XstateControls {
        xcr0: 0xe7,
        ..Default::default()
    };
    let e = g
        .vcpu()
        .set_controls(&ctl)
        .expect_err("KVM_SET_XCRS refuses");
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
}

#[test]
fn guest_runs_in_64_bit_mode_at_cpl3_and_its_faults_are_reported() {
    let Some(kvm) = kvm() else { return };
    use xstate_kvm::guest::{code, EXIT_PORT, SRC_ADDR};
    let layout = kvm.layout().standard(0x3).expect("layout");
    let good = pattern::image(&layout, layout.size as usize, 0xffff);
    let mut g = GuestVm::new(&kvm, 0x3).expect("VM");
    g.memory_mut()
        .write(SRC_ADDR, good.as_bytes())
        .expect("write");
    g.load_program(&code::xrstor_then_out(0x3, SRC_ADDR as u32, EXIT_PORT))
        .expect("program");
    g.run_to_exit_port().expect("run");
    let s = g.vcpu().fd().get_sregs().expect("sregs");
    assert_eq!(
        (s.cs.l, s.cs.dpl, s.ss.dpl),
        (1, 3, 3),
        "64-bit code segment at CPL 3"
    );
    assert_ne!(s.efer & (1 << 10), 0, "EFER.LMA");
    // XSTATE_BV bit 63 in a standard-form image: XRSTOR raises #GP; with no IDT the guest
    // cannot deliver it and the harness reports the exit.
    let mut bad = good.clone();
    bad.set_xstate_bv(0x3 | 1 << 63).expect("header");
    let mut g = GuestVm::new(&kvm, 0x3).expect("VM");
    g.memory_mut()
        .write(SRC_ADDR, bad.as_bytes())
        .expect("write");
    g.load_program(&code::xrstor_then_out(0x3, SRC_ADDR as u32, EXIT_PORT))
        .expect("program");
    let e = g.run_to_exit_port().expect_err("#GP");
    println!("measured: XRSTOR with XSTATE_BV bit 63 in the guest ends in: {e}");
    assert!(matches!(e, Error::Guest(_)), "{e}");
    assert!(
        e.to_string().contains("0x1000f"),
        "the faulting XRSTOR (code + 15)'s RIP: {e}"
    );
}

/// Issue 11: the MXCSR mask comes from the host, never from bytes 28..31 of the vCPU's image,
/// which KVM_SET_XSAVE copies from whatever image was restored last.
#[test]
fn a_restored_mxcsr_mask_field_does_not_poison_later_restores() {
    let Some(kvm) = kvm() else { return };
    let g = GuestVm::new(&kvm, 1).expect("VM");
    let host = xstate_kvm::host_mxcsr_mask();
    // KVM reports the host's mask in a fresh vCPU's image: the FXSAVE of this CPU and KVM agree.
    let fresh = g.vcpu().get_xsave().expect("KVM_GET_XSAVE2").mxcsr_mask();
    assert_eq!(
        if fresh == 0 { 0xffbf } else { fresh },
        host,
        "host FXSAVE vs KVM"
    );
    let controls = g.vcpu().capture().expect("capture").controls;
    // A patterned image: MXCSR_MASK bytes that are no CPU's mask, MXCSR valid.
    let mut patterned = base(&g);
    set_u32(&mut patterned, 28, 0xd9d3_cbc5);
    let state = xstate_kvm::VcpuXstate {
        controls: controls.clone(),
        xsave: patterned,
    };
    g.vcpu().restore(&state).expect("KVM ignores MXCSR_MASK");
    let echoed = g.vcpu().get_xsave().expect("get").mxcsr_mask();
    if echoed == 0xd9d3_cbc5 {
        println!("KVM echoes the restored MXCSR_MASK field (0xd9d3cbc5) in KVM_GET_XSAVE2");
    } else {
        println!("note: KVM answers MXCSR_MASK {echoed:#x} after restoring 0xd9d3cbc5");
    }
    assert_eq!(g.vcpu().mxcsr_mask().expect("mask"), host);
    // A valid image whose MXCSR uses bits of the host mask (DAZ where the CPU has it) that the
    // patterned field lacks: accepted by the check and by KVM, and read back.
    let mxcsr = 0x1f80 | (host & 0x40);
    assert_ne!(
        0x1f80 & !0xd9d3_cbc5u32,
        0,
        "the patterned mask must refuse 0x1F80 for the test to mean anything"
    );
    let mut valid = base(&g);
    set_u32(&mut valid, 24, mxcsr);
    set_u32(&mut valid, 28, host);
    let state = xstate_kvm::VcpuXstate {
        controls,
        xsave: valid,
    };
    g.vcpu()
        .restore(&state)
        .expect("valid image after a patterned one");
    assert_eq!(g.vcpu().get_xsave().expect("get").mxcsr(), mxcsr);
}
