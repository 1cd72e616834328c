//! Compatibility verdicts (snapshot vs destination) and guest CPUID leaf 0xD, on the fixture
//! CPUs (Skylake-SP, Sapphire Rapids, this machine's Zen 5).

mod common;

use proptest::prelude::*;
use xstate::compat::{check, Destination};
use xstate::components::{bits, mask};
use xstate::cpuid::CpuidDump;
use xstate::guest_cpuid::{guest_cpuid, guest_masks, GuestCpuidError};
use xstate::layout::{Form, Layout};
use xstate::snapshot::{ControlRegs, Snapshot};

/// A standard image with every component of `bv` filled with `fill` (MXCSR init).
fn image(layout: &Layout, xcr0: u64, bv: u64, fill: u8) -> Vec<u8> {
    let fl = layout.standard(xcr0).unwrap();
    let mut img = vec![0u8; fl.size as usize];
    img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    for id in bits(bv) {
        match id {
            0 => img[32..160].fill(fill),
            1 => img[160..416].fill(fill),
            _ => {
                let p = fl.placement(id).unwrap();
                let n = xstate::snapshot::content_len(id, p.size) as usize;
                img[p.offset as usize..p.offset as usize + n].fill(fill);
            }
        }
    }
    img[512..520].copy_from_slice(&bv.to_le_bytes());
    img
}

fn snap_of(d: &CpuidDump, xcr0: u64, bv: u64) -> Snapshot {
    let l = Layout::from_dump(d);
    Snapshot::from_image(&image(&l, xcr0, bv, 0x5a), d, &ControlRegs::with_xcr0(xcr0)).unwrap()
}

/// What KVM on this machine reports (DESIGN.md §9): guest XCR0 0xe7, KVM_CAP_XSAVE2 4096.
fn zen5_kvm() -> Destination {
    let mut d = Destination::from_dump(&common::zen5(), Some(0xe7), Some(0));
    d.name = String::from("KVM on Zen 5");
    d.form = Some(Form::Standard);
    d.xsave_size = Some(4096);
    d.msrs = Some(vec![0xda0, 0x1c4, 0x1c5]);
    d
}

#[test]
fn spr_amx_and_pkru_snapshot_refused_on_zen5_with_named_components() {
    let spr = common::sapphire_rapids();
    let s = snap_of(&spr, 0x602e7, 0x602e7);
    for dest in [
        Destination::from_dump(&common::zen5(), None, None),
        zen5_kvm(),
    ] {
        let v = check(&s, &dest);
        assert!(!v.compatible);
        let named: Vec<&str> = v
            .reasons
            .iter()
            .filter(|r| r.rule == "component.unsupported")
            .filter_map(|r| r.component.as_deref())
            .collect();
        assert_eq!(
            named,
            vec!["pkru", "xtilecfg", "xtiledata"],
            "{:#?}",
            v.reasons
        );
        assert!(v.reasons.iter().all(|r| !r.message.is_empty()));
    }
    // PKRU alone (no AMX) is refused too, naming only PKRU.
    let s = snap_of(&spr, 0x2e7, 0x207);
    let v = check(&s, &zen5_kvm());
    assert_eq!(v.reasons.len(), 1, "{:#?}", v.reasons);
    assert_eq!(v.reasons[0].component.as_deref(), Some("pkru"));
}

#[test]
fn skylake_avx512_snapshot_is_compatible_with_zen5_and_notes_the_move() {
    let s = snap_of(&common::skylake(), 0xe7, 0xe7);
    let v = check(&s, &zen5_kvm());
    assert!(v.compatible, "{:#?}", v.reasons);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("opmask") && n.contains("1088") && n.contains("832")),
        "{:?}",
        v.notes
    );
    // MPX enabled in the snapshot's XCR0: Zen 5 has no MPX.
    let s = snap_of(&common::skylake(), 0x2ff, 0x7);
    let v = check(&s, &zen5_kvm());
    let named: Vec<_> = v
        .reasons
        .iter()
        .filter_map(|r| r.component.clone())
        .collect();
    assert_eq!(named, vec!["bndregs", "bndcsr", "pkru"], "{:#?}", v.reasons);
}

#[test]
fn every_kind_of_reason() {
    let spr = common::sapphire_rapids();
    // AMX image larger than KVM_CAP_XSAVE2.
    let s = snap_of(&spr, 0x602e7, 0x60003);
    let mut dest = Destination::from_dump(&spr, None, None);
    dest.xsave_size = Some(4096);
    dest.form = Some(Form::Standard);
    let v = check(&s, &dest);
    assert!(
        v.reasons.iter().any(|r| r.rule == "size.xsave2"),
        "{:#?}",
        v.reasons
    );
    dest.xsave_size = Some(11008);
    assert!(check(&s, &dest).compatible);

    // The guest is not offered AVX-512.
    let s = snap_of(&common::skylake(), 0xe7, 0x3);
    let dest = Destination::from_dump(&common::zen5(), Some(0x7), None);
    let v = check(&s, &dest);
    let offered: Vec<_> = v
        .reasons
        .iter()
        .filter(|r| r.rule == "component.not_offered")
        .filter_map(|r| r.component.clone())
        .collect();
    assert_eq!(offered, vec!["opmask", "zmm_hi256", "hi16_zmm"]);

    // The offered guest XCR0 is itself invalid.
    let dest = Destination::from_dump(&common::zen5(), Some(0x67), None);
    let v = check(&s, &dest);
    assert!(v
        .reasons
        .iter()
        .any(|r| r.rule == "destination.xcr0.avx512_all_or_none"));

    // MSRs the destination does not list; IA32_XSS without the MSR.
    let mut s = snap_of(&common::zen5(), 0xe7, 0x3);
    s.msrs.insert(0x6a0, 1);
    s.xss = 0x800;
    s.source.xss_supported = 0x1800;
    let mut dest = zen5_kvm();
    dest.msrs = Some(vec![]);
    dest.xss = 0x1800;
    let v = check(&s, &dest);
    let msr: Vec<_> = v
        .reasons
        .iter()
        .filter(|r| r.rule == "msr.unavailable")
        .collect();
    assert_eq!(msr.len(), 2, "{:#?}", v.reasons);
    assert!(msr.iter().any(|r| r.message.contains("IA32_U_CET")));
    assert!(msr.iter().any(|r| r.message.contains("IA32_XSS")));

    // MXCSR with DAZ (bit 6) where the destination's MXCSR_MASK lacks it.
    let mut s = snap_of(&common::zen5(), 0xe7, 0x3);
    s.legacy.mxcsr = 0x1fc0;
    s.legacy.mxcsr_mask = 0xffff; // the source CPU has DAZ
    let mut dest = zen5_kvm();
    assert!(check(&s, &dest).compatible, "mask unknown: not checked");
    dest.mxcsr_mask = Some(0);
    let v = check(&s, &dest);
    assert_eq!(v.reasons.len(), 1, "{:#?}", v.reasons);
    assert_eq!(v.reasons[0].rule, "mxcsr.unsupported_bits");
    assert!(
        v.reasons[0].message.contains("0x40"),
        "{}",
        v.reasons[0].message
    );
    dest.mxcsr_mask = Some(0xffff);
    assert!(check(&s, &dest).compatible);

    // A snapshot that breaks its own profile is refused with the profile's rule.
    let mut s = snap_of(&common::zen5(), 0xe7, 0x3);
    s.components.insert(2, vec![0; 3]);
    let v = check(&s, &zen5_kvm());
    assert!(v
        .reasons
        .iter()
        .any(|r| r.rule == "snapshot.component.size"));

    // Verdicts serialize with every reason.
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["compatible"], false);
    assert!(!j["reasons"].as_array().unwrap().is_empty());
}

fn dumps() -> Vec<CpuidDump> {
    vec![common::skylake(), common::zen5(), common::sapphire_rapids()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A compatible verdict means the image can be rebuilt on the destination, and its
    /// registers survive: source image → snapshot → destination image → snapshot.
    #[test]
    fn compatible_means_restorable(src in 0usize..3, dst in 0usize..3, bv in any::<u64>(), sub in any::<u64>(), fill in 1u8..) {
        let ds = dumps();
        let ls = Layout::from_dump(&ds[src]);
        let xcr0 = ls.xcr0_supported() & (sub | mask::LEGACY);
        prop_assume!(ls.check_xcr0(xcr0).is_ok());
        let bv = bv & xcr0;
        let s = Snapshot::from_image(&image(&ls, xcr0, bv, fill), &ds[src], &ControlRegs::with_xcr0(xcr0)).unwrap();
        let dest = Destination::from_dump(&ds[dst], None, None);
        let v = check(&s, &dest);
        let fits = xcr0 & !dest.layout.xcr0_supported() == 0;
        prop_assert_eq!(v.compatible, fits, "{:?}", v.reasons);
        if v.compatible {
            let img = s.to_image(&dest.layout, Form::Standard, xcr0).unwrap();
            let back = Snapshot::from_image(&img, &ds[dst], &ControlRegs::with_xcr0(xcr0)).unwrap();
            prop_assert_eq!(back.components, s.components);
        }
    }
}

#[test]
fn guest_without_avx512_on_skylake_sp() {
    let d = common::skylake();
    let host = Layout::from_dump(&d);
    let (xcr0, xss) = guest_masks(&host, None, mask::AVX512).unwrap();
    assert_eq!(xcr0, 0x21f);
    assert_eq!(xss, 0x100); // PT: the only supervisor component Skylake-SP reports
    let g = guest_cpuid(&d, xcr0, xss).unwrap();
    let s0 = g.entry(0xd, 0).unwrap();
    let want = host.standard(0x21f).unwrap().size;
    assert_eq!(want, 2696); // PKRU at 2688 still ends the standard layout
    assert_eq!((s0.eax, s0.ebx, s0.ecx, s0.edx), (0x21f, want, want, 0));
    let s1 = g.entry(0xd, 1).unwrap();
    assert_eq!(s1.ebx, host.compacted(0x21f | 0x100).unwrap().size);
    assert_eq!(s1.ecx, 0x100);
    assert_eq!(
        s1.eax & 0x8,
        0x8,
        "XSAVES offered with a supervisor component"
    );
    for id in [5u32, 6, 7] {
        assert!(g.entry(0xd, id).is_none(), "subleaf {id} must be gone");
    }
    assert_eq!(g.entry(0xd, 9).unwrap().ebx, 2688);
    let l7 = g.entry(7, 0).unwrap();
    let host7 = d.get(7, 0).unwrap();
    for bit in [16, 17, 28, 30, 31] {
        assert_ne!(
            host7.ebx & (1 << bit),
            0,
            "Skylake-SP has leaf 7 EBX bit {bit}"
        );
        assert_eq!(l7.ebx & (1 << bit), 0, "bit {bit} must be cleared");
    }
    assert_ne!(l7.ebx & (1 << 5), 0, "AVX2 stays");
    assert!(g.cleared.iter().any(|c| c.feature.name == "AVX512F"));
    // The guest table is itself a consistent leaf 0xD.
    let gl = Layout::from_dump(&g.to_dump());
    assert_eq!(gl.xcr0_supported(), 0x21f);
    assert_eq!(gl.standard(0x21f).unwrap().size, want);
    assert!(gl.consistency().is_empty(), "{:?}", gl.consistency());
}

#[test]
fn guest_without_avx512_on_this_machine_kind() {
    let d = common::zen5();
    let host = Layout::from_dump(&d);
    let (xcr0, xss) = guest_masks(&host, None, mask::AVX512).unwrap();
    assert_eq!((xcr0, xss), (0x7, 0x1800));
    let g = guest_cpuid(&d, xcr0, xss).unwrap();
    let s0 = g.entry(0xd, 0).unwrap();
    assert_eq!(s0.ecx, host.standard(0x7).unwrap().size);
    assert_eq!(s0.ecx, 832);
    let s1 = g.entry(0xd, 1).unwrap();
    assert_eq!(s1.ebx, host.compacted(0x1807).unwrap().size);
    assert_eq!(s1.ebx, 832 + 16 + 24);
    assert_eq!(g.entry(7, 0).unwrap().ebx & (1 << 16), 0);
    assert!(Layout::from_dump(&g.to_dump()).consistency().is_empty());
    // Without CET: no supervisor component, so no XSAVES, and CET_SS is cleared.
    let (xcr0, xss) = guest_masks(&host, None, mask::CET_U | mask::CET_S).unwrap();
    let g = guest_cpuid(&d, xcr0, xss).unwrap();
    assert_eq!(xss, 0);
    let s1 = g.entry(0xd, 1).unwrap();
    assert_eq!((s1.eax & 0x8, s1.ecx, s1.edx), (0, 0, 0));
    assert_eq!(g.entry(7, 0).unwrap().ecx & (1 << 7), 0, "CET_SS");
}

#[test]
fn guest_without_amx_or_pkru_on_sapphire_rapids() {
    let d = common::sapphire_rapids();
    let host = Layout::from_dump(&d);
    // Withholding either AMX component withholds both.
    let (xcr0, xss) = guest_masks(&host, None, mask::XTILEDATA).unwrap();
    assert_eq!(xcr0, 0x2e7);
    let g = guest_cpuid(&d, xcr0, xss).unwrap();
    let e7 = g.entry(7, 0).unwrap();
    for bit in [22, 24, 25] {
        assert_ne!(d.get(7, 0).unwrap().edx & (1 << bit), 0);
        assert_eq!(e7.edx & (1 << bit), 0, "AMX bit {bit}");
    }
    for (l, s) in [(0x1d, 0), (0x1d, 1), (0x1e, 0)] {
        let e = g.entry(l, s).unwrap();
        assert_eq!(
            (e.eax, e.ebx, e.ecx, e.edx),
            (0, 0, 0, 0),
            "leaf {l:#x}.{s}"
        );
    }
    assert_eq!(
        g.entry(0xd, 1).unwrap().eax & 0x10,
        0,
        "no XFD without tile data"
    );
    assert!(g.entry(0xd, 18).is_none());
    assert_eq!(
        g.entry(0xd, 0).unwrap().ecx,
        host.standard(0x2e7).unwrap().size
    );
    // With AMX: XFD offered and subleaf 18 keeps its XFD flag.
    let (xcr0, xss) = guest_masks(&host, None, 0).unwrap();
    let g = guest_cpuid(&d, xcr0, xss).unwrap();
    assert_eq!(xcr0, 0x602e7);
    assert_ne!(g.entry(0xd, 1).unwrap().eax & 0x10, 0);
    assert_eq!(g.entry(0xd, 18).unwrap().ecx, 6);
    assert_eq!(g.entry(0xd, 0).unwrap().ecx, 0x2b00);
    assert_eq!(xss & mask::PASID, 0, "PASID is host-only");
    // PKRU withheld: PKU and OSPKE cleared.
    let (xcr0, xss) = guest_masks(&host, None, mask::PKRU).unwrap();
    let g = guest_cpuid(&d, xcr0, xss).unwrap();
    assert_eq!(g.entry(7, 0).unwrap().ecx & 0x18, 0);
    assert!(g.cleared.iter().any(|c| c.feature.name == "PKU"));
}

#[test]
fn guest_mask_rules_and_errors() {
    let zen = Layout::from_dump(&common::zen5());
    // Without SSE: AVX and AVX-512 go too.
    assert_eq!(guest_masks(&zen, None, mask::SSE).unwrap().0, 0x1);
    // Without one AVX-512 component: all three go.
    assert_eq!(guest_masks(&zen, None, mask::OPMASK).unwrap().0, 0x7);
    assert_eq!(guest_masks(&zen, Some(0x3), 0).unwrap(), (0x3, 0));
    assert_eq!(
        guest_masks(&zen, None, mask::X87),
        Err(GuestCpuidError::X87Required)
    );
    let e = guest_masks(&zen, Some(mask::AMX | 0x3), 0).unwrap_err();
    assert!(
        matches!(e, GuestCpuidError::NotSupported { mask: 0x60000, .. }),
        "{e}"
    );
    let spr = Layout::from_dump(&common::sapphire_rapids());
    let e = guest_masks(&spr, Some(mask::PASID | 0x3), 0).unwrap_err();
    assert!(matches!(e, GuestCpuidError::HostOnly { id: 10, .. }), "{e}");
    // --with x87,sse on Sapphire Rapids: AVX cleared in leaf 1.
    let d = common::sapphire_rapids();
    let g = guest_cpuid(&d, 0x3, 0).unwrap();
    assert_eq!(g.entry(1, 0).unwrap().ecx & (1 << 28), 0);
    assert_eq!(g.entry(0xd, 0).unwrap().ecx, 576);
}

/// Every fixture dump whose leaf 0xD is consistent: for several withheld sets, the guest's
/// 0xD.0 ECX/EBX and 0xD.1 EBX equal the layout engine's sizes, the guest table is itself a
/// consistent leaf 0xD, and no feature bit of a withheld component survives.
#[test]
fn guest_tables_of_every_consistent_fixture() {
    use xstate::guest_cpuid::FEATURE_BITS;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpuid");
    let mut checked = 0;
    for dir in ["hwloc", "aida64", "cpuid-r"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for p in files {
            let Ok(d) = CpuidDump::parse(
                &std::fs::read_to_string(&p).unwrap(),
                &p.display().to_string(),
            ) else {
                continue;
            };
            let host = Layout::from_dump(&d);
            if !host.has_xsave() || !host.consistency().is_empty() || host.xcr0_supported() == 0 {
                continue;
            }
            for without in [
                0,
                mask::AVX512,
                mask::AMX,
                mask::PKRU,
                mask::AVX,
                mask::CET_U | mask::CET_S,
            ] {
                let (xcr0, xss) = guest_masks(&host, None, without).unwrap();
                let g = guest_cpuid(&d, xcr0, xss).unwrap();
                let s0 = g.entry(0xd, 0).unwrap();
                let std_size = host.standard(xcr0).unwrap().size;
                assert_eq!((s0.ebx, s0.ecx), (std_size, std_size), "{}", p.display());
                assert_eq!(
                    g.entry(0xd, 1).unwrap().ebx,
                    host.compacted(xcr0 | xss).unwrap().size
                );
                let gl = Layout::from_dump(&g.to_dump());
                assert_eq!(gl.xcr0_supported(), xcr0);
                assert!(
                    gl.consistency().is_empty(),
                    "{}: {:?}",
                    p.display(),
                    gl.consistency()
                );
                let withheld = (host.xcr0_supported() | host.xss_supported()) & !(xcr0 | xss);
                for f in FEATURE_BITS.iter().filter(|f| f.needs & withheld != 0) {
                    if let Some(e) = g.entry(f.leaf, f.subleaf) {
                        let r = match f.reg {
                            xstate::guest_cpuid::Reg::Eax => e.eax,
                            xstate::guest_cpuid::Reg::Ebx => e.ebx,
                            xstate::guest_cpuid::Reg::Ecx => e.ecx,
                            xstate::guest_cpuid::Reg::Edx => e.edx,
                        };
                        assert_eq!(r & (1 << f.bit), 0, "{}: {} survives", p.display(), f.name);
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} fixtures checked");
    println!("guest tables checked on {checked} fixture CPUs");
}
