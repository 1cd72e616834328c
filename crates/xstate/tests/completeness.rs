//! State outside the image (issue 13.4, the Firecracker "Bad FPU state" class): what the
//! source CPU's leaf 0xD (real dumps: Sapphire Rapids with AMX and XFD, this project's Zen 5
//! with XSAVES and CET) or the record's own XCR0/IA32_XSS shows must be in the snapshot.

mod common;

use std::collections::BTreeMap;
use xstate::compat::{check, completeness, Destination, OutsideImage};
use xstate::components::mask;
use xstate::snapshot::{ControlRegs, Snapshot, SourceCpu};

fn rules(src: &SourceCpu, rec: &OutsideImage<'_>) -> Vec<String> {
    completeness(src, rec).into_iter().map(|r| r.rule).collect()
}

#[test]
fn amx_with_xfd_on_the_source_needs_xfd_and_xfd_err() {
    let src = SourceCpu::from_dump(&common::sapphire_rapids());
    // The dump's own facts: XFD in CPUID.(0xD,1):EAX and TILEDATA XFD-capable.
    assert_ne!(src.xsave_features & (1 << 4), 0, "SPR has XFD");
    let msrs = BTreeMap::new();
    let mut rec = OutsideImage {
        xcr0: 0x602e7,
        xss: Some(0),
        xfd: None,
        xfd_err: None,
        msrs: &msrs,
        in_image: 0x602e7,
    };
    let r = completeness(&src, &rec);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].rule, "completeness.xfd_missing");
    assert!(
        r[0].message.contains("IA32_XFD and IA32_XFD_ERR") && r[0].message.contains("xtiledata"),
        "{}",
        r[0].message
    );
    rec.xfd = Some(0);
    assert!(completeness(&src, &rec)[0]
        .message
        .contains("lacks IA32_XFD_ERR"));
    rec.xfd_err = Some(0);
    assert!(rules(&src, &rec).is_empty());
    // XCR0 without AMX: XFD has nothing to arm, nothing is missing.
    let rec = OutsideImage {
        xcr0: 0x2e7,
        xfd: None,
        xfd_err: None,
        ..rec
    };
    assert!(rules(&src, &rec).is_empty());
}

/// This project's Intel machine kind (Xeon model 0xa7, `cpuid -r`): XFD and AMX, IA32_XSS
/// supporting nothing — only the XFD rule can apply.
#[test]
fn this_intel_machine_kind_needs_xfd_with_amx_and_no_ia32_xss() {
    let path =
        common::fixture_path("cpuid-r/Intel-Xeon-AMX-family6-model-A7-this-machine-kind.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let d = xstate::cpuid::CpuidDump::parse(&text, "xeon-a7").unwrap();
    let src = SourceCpu::from_dump(&d);
    assert_eq!(src.xss_supported, 0);
    let msrs = BTreeMap::new();
    let rec = OutsideImage {
        xcr0: 0x600e7,
        xss: None,
        xfd: None,
        xfd_err: None,
        msrs: &msrs,
        in_image: 0x600e7,
    };
    assert_eq!(rules(&src, &rec), ["completeness.xfd_missing"]);
    assert!(rules(&src, &OutsideImage { xcr0: 0xe7, ..rec }).is_empty());
}

#[test]
fn a_source_with_xsaves_and_cet_needs_ia32_xss() {
    let src = SourceCpu::from_dump(&common::zen5());
    assert_eq!(
        src.xss_supported,
        mask::CET_U | mask::CET_S,
        "Zen 5: CET_U, CET_S"
    );
    let msrs = BTreeMap::new();
    let rec = OutsideImage {
        xcr0: 0xe7,
        xss: None,
        xfd: None,
        xfd_err: None,
        msrs: &msrs,
        in_image: 0xe7,
    };
    let r = completeness(&src, &rec);
    assert_eq!(rules(&src, &rec), ["completeness.xss_missing"]);
    assert!(r[0].message.contains("cet_u"), "{}", r[0].message);
    // Zen 5 has no XFD: no XFD rule, whatever XCR0 says.
    assert!(rules(
        &src,
        &OutsideImage {
            xss: Some(0),
            ..rec
        }
    )
    .is_empty());
}

#[test]
fn cet_in_ia32_xss_needs_the_cet_msrs_unless_the_image_holds_it() {
    let src = SourceCpu::from_dump(&common::zen5());
    let mut msrs = BTreeMap::new();
    let rec = |msrs: &BTreeMap<u32, u64>, in_image: u64| {
        rules(
            &src,
            &OutsideImage {
                xcr0: 0xe7,
                xss: Some(mask::CET_U | mask::CET_S),
                xfd: None,
                xfd_err: None,
                msrs,
                in_image,
            },
        )
    };
    assert_eq!(
        rec(&msrs, 0xe7),
        ["completeness.cet_missing", "completeness.cet_missing"]
    );
    for i in [0x6a0, 0x6a7] {
        msrs.insert(i, 0);
    }
    assert_eq!(rec(&msrs, 0xe7), ["completeness.cet_missing"]);
    for i in [0x6a2, 0x6a4, 0x6a5, 0x6a6, 0x6a8] {
        msrs.insert(i, 0);
    }
    assert!(rec(&msrs, 0xe7).is_empty());
    // A compacted XSAVES image that holds both components needs no MSR.
    assert!(rec(&BTreeMap::new(), 0xe7 | mask::CET_U | mask::CET_S).is_empty());
}

#[test]
fn check_reports_a_snapshot_missing_its_cet_msrs() {
    let d = common::zen5();
    let mut img = vec![0u8; 2432];
    img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    let regs = ControlRegs {
        xcr0: 0xe7,
        xss: mask::CET_U,
        ..Default::default()
    };
    let mut s = Snapshot::from_image(&img, &d, &regs).unwrap();
    let dest = Destination::from_dump(&d, None, None);
    let v = check(&s, &dest);
    let r: Vec<&str> = v.reasons.iter().map(|r| r.rule.as_str()).collect();
    assert_eq!(r, ["completeness.cet_missing"], "{:?}", v.reasons);
    assert_eq!(v.reasons[0].component.as_deref(), Some("cet_u"));
    assert!(!v.compatible);
    s.msrs.insert(0x6a0, 1);
    s.msrs.insert(0x6a7, 0x7fff_f000);
    assert!(
        check(&s, &dest).compatible,
        "{:?}",
        check(&s, &dest).reasons
    );
}
