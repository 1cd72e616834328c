//! Inconsistent CPUID data is never used as if fine (issue 9, item 1): each consistency rule
//! is broken by editing one subleaf of a real dump (tests/fixtures/cpuid), and every verdict
//! that rests on a layout — `Layout::trusted`, the standard layout itself, the compatibility
//! check and the guest CPUID — refuses it, naming the rule. The unedited dumps and this
//! machine's own CPUID (with the XCR0 in force, so the CPUID.(0xD,0).EBX and (0xD,1).EBX
//! rules apply) are trusted.

mod common;

use common::{sapphire_rapids, skylake, zen5};
use xstate::compat::{check, Destination};
use xstate::cpuid::{CpuidDump, Regs};
use xstate::guest_cpuid::{guest_cpuid, GuestCpuidError};
use xstate::layout::{Layout, LayoutError};
use xstate::snapshot::{Snapshot, SourceCpu};

/// The dump with CPUID.(0xD, sub) replaced by `f` of its registers.
fn edit(d: &CpuidDump, sub: u32, f: impl Fn(&mut Regs)) -> CpuidDump {
    let mut e = d.clone();
    let mut r = d.get(0xd, sub).unwrap_or_else(|| panic!("subleaf {sub}"));
    f(&mut r);
    e.insert(0xd, sub, r);
    e
}

/// Every rule, each from one edit of a real dump: (name, edited dump, expected rule).
fn broken() -> Vec<(&'static str, CpuidDump, &'static str)> {
    let sky = skylake();
    let spr = sapphire_rapids();
    let mut no_sub6 = CpuidDump::new("skylake without (0xD,6)");
    for (l, s, r) in sky.entries() {
        if (l, s) != (0xd, 6) {
            no_sub6.insert(l, s, r);
        }
    }
    let mut no_sub0 = CpuidDump::new("skylake without (0xD,0)");
    for (l, s, r) in sky.entries() {
        if (l, s) != (0xd, 0) {
            no_sub0.insert(l, s, r);
        }
    }
    vec![
        // Issue 9's reproduction: opmask (subleaf 5) moved onto AVX's bytes.
        ("overlap", edit(&sky, 5, |r| r.ebx = 0x240), "overlap"),
        ("zero size", edit(&sky, 6, |r| r.eax = 0), "zero_size"),
        (
            "offset in the header",
            edit(&sky, 2, |r| r.ebx = 0x200),
            "offset_in_legacy",
        ),
        (
            "ECX disagrees",
            edit(&sky, 0, |r| r.ecx += 64),
            "max_size_mismatch",
        ),
        (
            "EBX above ECX",
            edit(&sky, 0, |r| r.ebx = r.ecx + 64),
            "current_size_above_max",
        ),
        (
            "absurd component size",
            edit(&spr, 18, |r| r.eax = 0x0100_0000),
            "absurd_size",
        ),
        (
            "absurd area size",
            edit(&sky, 0, |r| r.ecx = 0x4000_0000),
            "absurd_area_size",
        ),
        ("missing subleaf", no_sub6, "missing_subleaf"),
        ("missing subleaf 0", no_sub0, "missing_subleaf"),
        (
            "user component flagged supervisor",
            edit(&sky, 7, |r| r.ecx |= 1),
            "kind_mismatch",
        ),
    ]
}

#[test]
fn unedited_fixtures_are_trusted() {
    for d in [skylake(), sapphire_rapids(), zen5()] {
        let l = Layout::trusted(&d).unwrap_or_else(|e| panic!("{e}"));
        l.verify(&d.source).unwrap();
    }
}

#[test]
fn every_rule_is_refused_and_named() {
    for (what, d, rule) in broken() {
        let e = Layout::trusted(&d).expect_err(what);
        assert!(
            e.problems.iter().any(|p| p.rule() == rule),
            "{what}: expected {rule}, got {e}"
        );
        let text = e.to_string();
        assert!(text.contains(&format!("[{rule}]")), "{what}: {text}");
        assert!(text.starts_with(&d.source), "{what}: {text}");
        assert!(Layout::from_dump(&d).verify("x").is_err(), "{what}");
    }
}

/// The overlap of issue 9 no longer lays out: the standard form refuses it, so no image is
/// read or written with opmask on top of ymm_hi0-3.
#[test]
fn overlapping_components_have_no_standard_layout() {
    let d = edit(&skylake(), 5, |r| r.ebx = 0x240);
    let l = Layout::from_dump(&d);
    match l.standard(0xe7) {
        Err(LayoutError::Overlap { a: 2, b: 5, .. }) => {}
        other => panic!("{other:?}"),
    }
    let e = l.standard(0xe7).unwrap_err().to_string();
    assert!(
        e.contains("avx") && e.contains("opmask") && e.contains("576"),
        "{e}"
    );
}

/// A snapshot checked against an inconsistent destination is never "compatible", whatever
/// else is true; the reason names the rule.
#[test]
fn compat_refuses_an_inconsistent_destination() {
    let src = zen5();
    let l = Layout::from_dump(&src);
    let mut s = Snapshot {
        source: SourceCpu::from_dump(&src),
        xcr0: 0x7,
        ..Default::default()
    };
    s.source.xcr0_supported = l.xcr0_supported();
    let good = check(&s, &Destination::from_dump(&skylake(), None, None));
    assert!(good.compatible, "{:?}", good.reasons);
    for (what, d, rule) in broken() {
        let v = check(&s, &Destination::from_dump(&d, None, None));
        assert!(!v.compatible, "{what}");
        assert!(
            v.reasons.iter().any(|r| r.rule == format!("cpuid.{rule}")),
            "{what}: {:?}",
            v.reasons
        );
    }
}

#[test]
fn guest_cpuid_refuses_an_inconsistent_host_table() {
    assert!(guest_cpuid(&skylake(), 0xe7, 0).is_ok());
    for (what, d, rule) in broken() {
        match guest_cpuid(&d, 0x7, 0) {
            Err(GuestCpuidError::Inconsistent(e)) => {
                assert!(e.problems.iter().any(|p| p.rule() == rule), "{what}: {e}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// This machine's CPUID with its XCR0: the EBX rules hold on the real CPU (an Intel with AMX
/// here, AMD Zen on the project's other machines), and changing the recorded XCR0 or either
/// EBX breaks them.
#[test]
fn host_cpuid_is_trusted_and_its_ebx_rules_bite() {
    if !cfg!(target_arch = "x86_64") {
        println!("skipped: not x86-64");
        return;
    }
    let host = CpuidDump::from_host();
    let Some(xcr0) = host.xcr0 else {
        println!("skipped: this CPU has no XSAVE enabled (XCR0 unknown)");
        return;
    };
    let l = Layout::trusted(&host).unwrap_or_else(|e| panic!("{e}"));
    assert!(l.consistency_with(Some(xcr0), None).is_empty());
    let bad = edit(&host, 0, |r| r.ebx += 64);
    let e = Layout::trusted(&bad).unwrap_err();
    assert!(
        e.problems
            .iter()
            .any(|p| p.rule() == "current_size_mismatch" || p.rule() == "current_size_above_max"),
        "{e}"
    );
    // Another XCR0 (only x87/SSE, when the host enables more) gives another size.
    if xcr0 != 0x3 {
        let mut other = host.clone();
        other.xcr0 = Some(0x3);
        let e = Layout::trusted(&other).unwrap_err();
        assert_eq!(e.problems[0].rule(), "current_size_mismatch", "{e}");
    }
    if l.leaf().has_xsaves() {
        let bad = edit(&host, 1, |r| r.ebx += 8);
        let e = Layout::trusted(&bad).unwrap_err();
        assert_eq!(e.problems[0].rule(), "compacted_size_mismatch", "{e}");
    } else {
        println!("skipped (compacted EBX rule): no XSAVES");
    }
}
