//! Portable snapshots on the real /dev/kvm (DESIGN.md §9): capture → `.xsnap` → restore →
//! capture is identical; VM B restored from a snapshot file holds every value VM A loaded; a
//! Sapphire Rapids snapshot with PKRU/AMX is refused by the compatibility check and by the
//! restore path, naming the components. Each test prints `skipped: <reason>` where KVM is
//! absent.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::path::PathBuf;

use xstate::compat::check;
use xstate::cpuid::CpuidDump;
use xstate::layout::Layout;
use xstate::snapshot::{ControlRegs, Snapshot, SnapshotError};
use xstate_kvm::guest::{demo, GuestVm};
use xstate_kvm::snapshot::{destination, snapshot_of, state_of};
use xstate_kvm::Kvm;

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

fn fixture(rel: &str) -> CpuidDump {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../xstate/tests/fixtures/cpuid")
        .join(rel);
    let text = std::fs::read_to_string(&p).unwrap();
    CpuidDump::parse(&text, &p.display().to_string()).unwrap()
}

#[test]
fn capture_snapshot_restore_capture_is_identical() {
    let Some(kvm) = kvm() else { return };
    let loaded = demo::run_vm_a(&kvm).expect("VM A");
    let first = loaded.state.clone();
    let file = snapshot_of(&kvm, &first).unwrap().encode().unwrap();
    let snap = Snapshot::decode(&file).unwrap();
    assert!(xstate::snapshot::validate(&snap).is_empty());
    let v = check(&snap, &destination(&kvm));
    assert!(v.compatible, "{:#?}", v.reasons);
    let g = GuestVm::new(&kvm, 1).expect("VM");
    assert_ne!(
        g.vcpu().capture().unwrap(),
        first,
        "a fresh vCPU must differ"
    );
    g.vcpu()
        .restore(&state_of(&kvm, &snap).unwrap())
        .expect("restore");
    let second = g.vcpu().capture().expect("capture after");
    assert_eq!(second.controls, first.controls);
    let diff: Vec<usize> = (0..first.xsave.len())
        .filter(|&i| first.xsave.as_bytes().get(i) != second.xsave.as_bytes().get(i))
        .take(16)
        .collect();
    assert!(diff.is_empty(), "images differ at {diff:?}");
}

#[test]
fn vm_b_restored_from_a_snapshot_file_holds_vm_a_values() {
    let Some(kvm) = kvm() else { return };
    let loaded = demo::run_vm_a(&kvm).expect("VM A");
    let file = snapshot_of(&kvm, &loaded.state).unwrap().encode().unwrap();
    let state = state_of(&kvm, &Snapshot::decode(&file).unwrap()).unwrap();
    let image = demo::run_vm_b(&kvm, &state, &loaded.layout).expect("VM B");
    let r = demo::verdict(&loaded, &image);
    assert!(r.mismatches.is_empty(), "{:#?}", r.mismatches);
    assert_eq!(
        r.components_verified,
        demo::verified_components(loaded.xcr0)
    );
    println!(
        "verified through a {}-byte .xsnap: {}",
        file.len(),
        r.components_verified.join(", ")
    );
}

#[test]
fn a_snapshot_from_the_intel_layout_restores_here() {
    // Skylake-SP image (opmask at 1088) → snapshot → this KVM (its own layout).
    let Some(kvm) = kvm() else { return };
    let sky = fixture("hwloc/Intel-Skylake-2xXeon6140.txt");
    let guest_xcr0 = kvm.guest_supported_xcr0() & 0xe7;
    let li = Layout::from_dump(&sky);
    let fl = li.standard(guest_xcr0).unwrap();
    let mut img = vec![0u8; fl.size as usize];
    img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    for (n, p) in fl.placements.iter().enumerate() {
        if p.id >= 2 {
            let len = xstate::snapshot::content_len(p.id, p.size) as usize;
            for (i, b) in img[p.offset as usize..p.offset as usize + len]
                .iter_mut()
                .enumerate()
            {
                *b = (i as u8) ^ (n as u8).wrapping_mul(37) ^ 0xa5;
            }
        }
    }
    img[160..416].fill(0x3c);
    img[512..520].copy_from_slice(&guest_xcr0.to_le_bytes());
    let snap = Snapshot::from_image(&img, &sky, &ControlRegs::with_xcr0(guest_xcr0)).unwrap();
    let v = check(&snap, &destination(&kvm));
    assert!(v.compatible, "{:#?}", v.reasons);
    let g = GuestVm::new(&kvm, 1).expect("VM");
    g.vcpu()
        .restore(&state_of(&kvm, &snap).unwrap())
        .expect("restore");
    let back = snapshot_of(&kvm, &g.vcpu().capture().unwrap()).unwrap();
    assert_eq!(
        back.components, snap.components,
        "registers changed through KVM"
    );
    assert_eq!(back.xcr0, guest_xcr0);
}

#[test]
fn sapphire_rapids_pkru_amx_snapshot_is_refused_here_by_name() {
    let Some(kvm) = kvm() else { return };
    let spr = fixture("hwloc/Intel-SapphireRapids-2xXeonMax9460.txt");
    let ls = Layout::from_dump(&spr);
    let xcr0 = 0x602e7u64;
    let fl = ls.standard(xcr0).unwrap();
    let mut img = vec![0u8; fl.size as usize];
    img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    let pkru = fl.placement(9).unwrap().offset as usize;
    img[pkru] = 0x55;
    let cfg = fl.placement(17).unwrap().offset as usize;
    img[cfg] = 1;
    img[512..520].copy_from_slice(&(0x3u64 | 1 << 9 | 1 << 17).to_le_bytes());
    let snap = Snapshot::from_image(&img, &spr, &ControlRegs::with_xcr0(xcr0)).unwrap();
    let dest = destination(&kvm);
    let unsupported = xcr0 & !dest.xcr0;
    if unsupported == 0 {
        println!("skipped: this KVM supports PKRU and AMX for guests");
        return;
    }
    let v = check(&snap, &dest);
    assert!(!v.compatible);
    for id in xstate::components::bits(unsupported) {
        let name = xstate::components::Component::name_of(id);
        assert!(
            v.reasons
                .iter()
                .any(|r| r.component.as_deref() == Some(name.as_str())),
            "{name} not named: {:#?}",
            v.reasons
        );
    }
    // The restore path refuses before any ioctl, naming the first component it cannot hold.
    match state_of(&kvm, &snap) {
        Err(SnapshotError::CannotHold { name, .. }) => {
            assert!(["pkru", "xtilecfg", "xtiledata"].contains(&name.as_str()))
        }
        other => panic!("expected CannotHold, got {other:?}"),
    }
}

#[test]
fn kvm_honours_the_guest_cpuid_without_avx512() {
    use xstate::components::mask;
    use xstate::guest_cpuid::{guest_cpuid, guest_masks};
    use xstate_kvm::XstateControls;
    let Some(kvm) = kvm() else { return };
    if kvm.guest_supported_xcr0() & mask::AVX512 != mask::AVX512 {
        println!("skipped: this KVM does not give guests AVX-512");
        return;
    }
    let (xcr0, xss) = guest_masks(kvm.layout(), None, mask::AVX512).unwrap();
    assert_eq!(xcr0 & mask::AVX512, 0);
    let g = guest_cpuid(kvm.supported_cpuid_dump(), xcr0, xss).unwrap();
    let table = xstate_kvm::guest_cpuid::apply(kvm.supported_cpuid(), &g).unwrap();
    let d0 = table
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .copied()
        .unwrap();
    assert_eq!((d0.eax, d0.ecx), (xcr0 as u32, g.standard_size));
    assert!(table
        .as_slice()
        .iter()
        .all(|e| e.function != 0xd || e.index < 5));
    let vm = kvm.create_vm().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.fd().set_cpuid2(&table).unwrap();
    let back = vcpu.fd().get_cpuid2(256).unwrap();
    let b0 = back
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .copied()
        .unwrap();
    if (b0.eax, b0.ecx) != (d0.eax, d0.ecx) {
        // Measured on this project's machine (DESIGN.md §9 KVM): KVM_SET_CPUID2 returns 0 and
        // KVM_GET_CPUID2 still answers the supported table.
        println!(
            "skipped: this KVM ignores KVM_SET_CPUID2 (0xD.0 set to EAX {:#x} ECX {:#x}, reads back EAX {:#x} ECX {:#x})",
            d0.eax, d0.ecx, b0.eax, b0.ecx
        );
        return;
    }
    // KVM_SET_XCRS now refuses AVX-512 and accepts the guest's XCR0.
    let with = XstateControls {
        xcr0: xcr0 | mask::AVX512,
        ..Default::default()
    };
    assert!(vcpu.set_controls(&with).is_err(), "AVX-512 must be refused");
    let without = XstateControls {
        xcr0,
        ..Default::default()
    };
    vcpu.set_controls(&without)
        .expect("the guest XCR0 is accepted");
    assert_eq!(vcpu.get_xcr0().unwrap(), xcr0);
}
