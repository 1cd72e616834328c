//! AMX through KVM end to end, in a process of its own (guest permissions are per process and
//! locked at the first vCPU): guest permission for TILEDATA requested before KVM is read, a
//! guest that XRSTORs TILECFG/TILEDATA patterns, capture, restore into another VM whose guest
//! XSAVEs them back, and IA32_XFD/IA32_XFD_ERR carried where KVM lists them.
//!
//! Skips with the reason where the CPU, the kernel or KVM gives guests no AMX. Measured on this
//! project's Intel machine (Xeon model 0xa7, Linux 6.18, nested KVM): ARCH_REQ_XCOMP_GUEST_PERM
//! (18) succeeds (guest permissions 0x600e7) but KVM_X86_XCOMP_GUEST_SUPP stays 0xe7,
//! KVM_CAP_XSAVE2 stays 4096 and the MSR index list has neither IA32_XFD nor IA32_XSS, so the
//! test skips there too.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use xstate::components::mask;
use xstate_kvm::guest::{code, demo, pattern, GuestVm, DST_ADDR, EXIT_PORT, SRC_ADDR};
use xstate_kvm::msr::{IA32_XFD, IA32_XFD_ERR};
use xstate_kvm::{perm, Error, Kvm, KvmSetup, XsaveBuffer};

/// KVM after the guest AMX request, or why there is no AMX for guests here.
fn amx_kvm() -> Result<Kvm, String> {
    if let Some(why) = xstate_kvm::unavailable() {
        return Err(why);
    }
    let mut setup = KvmSetup::open().map_err(|e| e.to_string())?;
    let supp = setup.guest_supported_xcr0().map_err(|e| e.to_string())?;
    if supp & mask::AMX != mask::AMX {
        return Err(format!(
            "KVM_X86_XCOMP_GUEST_SUPP is {supp:#x}: this KVM gives guests no AMX (guest permissions {:#x})",
            perm::request_guest(18).and_then(|()| perm::guest_permitted()).unwrap_or(0)
        ));
    }
    setup
        .request_guest_feature(18)
        .map_err(|e| format!("guest AMX permission: {e}"))?;
    let kvm = setup.ready().map_err(|e| e.to_string())?;
    if kvm.layout().xcr0_supported() & mask::AMX != mask::AMX {
        return Err(format!(
            "KVM_GET_SUPPORTED_CPUID leaf 0xD.0 is {:#x} after the permission: no AMX",
            kvm.layout().xcr0_supported()
        ));
    }
    Ok(kvm)
}

#[test]
fn amx_tiles_and_xfd_survive_capture_and_restore() {
    let kvm = match amx_kvm() {
        Ok(k) => k,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let xcr0 = demo::demo_xcr0(&kvm) | mask::AMX;
    let layout = kvm.layout().standard(xcr0).expect("layout");
    // KVM_CAP_XSAVE2 grew to the standard size of what guests may now enable (DESIGN §6).
    assert_eq!(kvm.xsave2_size(), layout.size.max(4096), "KVM_CAP_XSAVE2");

    // VM A: the guest XRSTORs x87…AVX-512 and AMX patterns, then leaves.
    let mut a = GuestVm::new(&kvm, xcr0).expect("VM A");
    let mut expected = pattern::image(&layout, layout.size as usize, xstate_kvm::host_mxcsr_mask());
    pattern::add_amx(&mut expected, &layout).expect("AMX pattern");
    a.memory_mut()
        .write(SRC_ADDR, expected.as_bytes())
        .expect("mem");
    a.load_program(&code::xrstor_then_out(xcr0, SRC_ADDR as u32, EXIT_PORT))
        .expect("program");
    a.run_to_exit_port().expect("guest XRSTOR with AMX");
    let state = a.vcpu().capture().expect("capture");
    assert_eq!(state.xsave.len(), kvm.xsave2_size() as usize);
    let m = (xcr0 & pattern::PATTERNED) | mask::AMX;
    let bad = pattern::compare("capture", &expected, &state.xsave, &layout, m);
    assert!(bad.is_empty(), "{bad:#?}");
    let listed = kvm.xstate_msrs();
    if listed.contains(&IA32_XFD) {
        assert!(
            state.controls.msrs.contains_key(&IA32_XFD),
            "{:?}",
            state.controls
        );
        assert!(
            state.controls.msrs.contains_key(&IA32_XFD_ERR),
            "{:?}",
            state.controls
        );
    } else {
        println!("note: KVM does not list IA32_XFD; the XFD part is skipped");
    }

    // VM B: restored from the capture, its guest XSAVEs every register back.
    let mut b = GuestVm::new(&kvm, 1).expect("VM B");
    b.vcpu().restore(&state).expect("restore with AMX");
    assert_eq!(b.vcpu().capture().expect("capture B"), state);
    b.memory_mut()
        .write(DST_ADDR, &vec![0u8; layout.size as usize])
        .expect("mem");
    b.load_program(&code::xsave_then_out(xcr0, DST_ADDR as u32, EXIT_PORT))
        .expect("program");
    b.run_to_exit_port().expect("guest XSAVE with AMX");
    let saved = XsaveBuffer::from_bytes(
        b.memory()
            .read(DST_ADDR, layout.size as usize)
            .expect("read"),
    );
    let bad = pattern::compare("vm_b", &expected, &saved, &layout, m);
    assert!(bad.is_empty(), "{bad:#?}");

    if !listed.contains(&IA32_XFD) {
        return;
    }
    // IA32_XFD_ERR travels with the state.
    let mut with_err = state.clone();
    with_err.controls.msrs.insert(IA32_XFD_ERR, mask::XTILEDATA);
    b.vcpu().restore(&with_err).expect("restore XFD_ERR");
    assert_eq!(b.vcpu().capture().expect("capture"), with_err);
    // XFD arming TILEDATA while the image holds tile data: refused before any write.
    let before = b.vcpu().capture().expect("capture");
    let mut armed = state.clone();
    armed.controls.msrs.insert(IA32_XFD, mask::XTILEDATA);
    let e = b
        .vcpu()
        .restore(&armed)
        .expect_err("XFD-armed state refused");
    assert!(
        matches!(e, Error::Restore(_)) && e.to_string().contains("IA32_XFD"),
        "{e}"
    );
    assert_eq!(
        b.vcpu().capture().expect("capture"),
        before,
        "nothing written"
    );
    // XFD armed with TILEDATA in its init state: accepted and read back.
    armed
        .xsave
        .set_xstate_bv(armed.xsave.xstate_bv() & !mask::XTILEDATA)
        .expect("header");
    b.vcpu().restore(&armed).expect("XFD armed, no tile data");
    let back = b.vcpu().capture().expect("capture");
    assert_eq!(back.controls, armed.controls);
}

/// The AMX pattern the KVM test loads is checked on this CPU itself: XRSTOR of it in a
/// sandboxed child (after ARCH_REQ_XCOMP_PERM) and the XSAVE right after give every tile byte
/// back; a TILECFG with an unsupported palette is dropped to its init state.
#[test]
fn the_amx_pattern_is_valid_on_this_cpu() {
    use xstate::hw::{sandbox, Host};
    let host = Host::detect();
    if !host.xsave_usable() || host.xcr0() & mask::AMX != mask::AMX {
        println!("skipped: XCR0 {:#x} has no AMX on this CPU/OS", host.xcr0());
        return;
    }
    if let Err(e) = perm::request(18) {
        println!("skipped: ARCH_REQ_XCOMP_PERM(18): {e}");
        return;
    }
    let xcr0 = host.xcr0();
    let layout = host.layout().standard(xcr0).expect("layout");
    let mut img = pattern::image(&layout, layout.size as usize, host.mxcsr_mask());
    pattern::add_amx(&mut img, &layout).expect("AMX pattern");
    let out = sandbox::xrstor(&host, img.as_bytes(), xcr0, 0).expect("sandbox");
    let sandbox::Outcome::Restored(after) = out else {
        panic!("XRSTOR of the AMX pattern faulted: {out:?}");
    };
    let got = XsaveBuffer::from_bytes(after.image);
    let m = (xcr0 & pattern::PATTERNED) | mask::AMX;
    let bad = pattern::compare("cpu", &img, &got, &layout, m);
    assert!(bad.is_empty(), "{bad:#?}");
    // Palette 2 does not exist (CPUID.(0x1D,0).EAX = 1 is the highest). Measured on this
    // project's Xeon (model 0xa7): XRSTOR does not fault; it leaves TILECFG in its init state
    // (XINUSE[17] = 0, TILECFG reads back zero) and still loads TILEDATA. A wrong TILECFG is
    // lost silently, so the pattern needs the valid one.
    let cfg = layout.offset_of(17).expect("TILECFG") as usize;
    img.as_mut_bytes()[cfg] = 2;
    match sandbox::xrstor(&host, img.as_bytes(), xcr0, 0).expect("sandbox") {
        sandbox::Outcome::Restored(a) => {
            let got = XsaveBuffer::from_bytes(a.image);
            assert_eq!(got.xstate_bv() & mask::AMX, mask::XTILEDATA, "TILECFG init, TILEDATA loaded");
            assert!(got.as_bytes()[cfg..cfg + 64].iter().all(|&x| x == 0));
            if let Some(x) = a.xinuse {
                assert_eq!(x & mask::AMX, mask::XTILEDATA, "XINUSE {x:#x}");
            }
        }
        o => println!("note: XRSTOR of TILECFG palette 2 here: {o:?} (this project's Xeon restores it as init)"),
    }
}
