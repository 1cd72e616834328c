//! Every CPUID dump fixture (tests/fixtures/cpuid, copies of real dumps: see the README there)
//! parses, and the layout engine reproduces what the CPUs and the Linux kernel report
//! (DESIGN.md §3, §4, §9).

use std::path::{Path, PathBuf};
use xstate::components::mask;
use xstate::cpuid::{CpuidDump, Vendor};
use xstate::layout::{check_xcr0_rules, Inconsistency, Layout, Xcr0Rule};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpuid")
}

/// Every fixture as ("kind/name", dump), in a stable order.
fn all_fixtures() -> Vec<(String, CpuidDump)> {
    let mut out = Vec::new();
    for kind in ["hwloc", "aida64", "cpuid-r"] {
        let mut files: Vec<_> = std::fs::read_dir(fixture_dir().join(kind))
            .unwrap_or_else(|e| panic!("fixture directory {kind}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        for p in files {
            let name = format!("{kind}/{}", p.file_stem().unwrap().to_string_lossy());
            let text = std::fs::read_to_string(&p).unwrap();
            let d = CpuidDump::parse(&text, &name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(d.format, kind, "{name}: detected format");
            out.push((name, d));
        }
    }
    out
}

fn fixture(name: &str) -> (CpuidDump, Layout) {
    let (_, d) = all_fixtures()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    let l = Layout::from_dump(&d);
    (d, l)
}

#[test]
fn every_fixture_parses_and_consistent_ones_match_cpuid_max_size() {
    let all = all_fixtures();
    assert_eq!(all.len(), 43, "24 hwloc + 17 aida64 + 2 cpuid-r fixtures");
    let mut inconsistent = Vec::new();
    for (name, d) in &all {
        let l = Layout::from_dump(d);
        let problems = l.consistency();
        println!(
            "{name:58} {:8} xcr0_supported={:#018x} xss_supported={:#07x} max_size={:5} consistent={}",
            format!("{:?}", d.vendor()),
            l.xcr0_supported(),
            l.xss_supported(),
            l.max_standard_size(),
            problems.is_empty()
        );
        for p in &problems {
            println!("    inconsistent: {p}");
        }
        for n in &d.notes {
            println!("    note: {n}");
        }
        assert!(d.get(0, 0).is_some(), "{name}: leaf 0 kept");
        assert_ne!(d.vendor(), Vendor::Other, "{name}: vendor");
        // Every kept leaf the CPU implements is present (KEPT_LEAVES within CPUID.0:EAX).
        let max_basic = d.get(0, 0).unwrap().eax;
        for leaf in [1u32, 7, 0xd] {
            if leaf <= max_basic {
                assert!(d.get(leaf, 0).is_some(), "{name}: leaf {leaf:#x} kept");
            }
        }
        if !problems.is_empty() {
            inconsistent.push(name.clone());
            continue;
        }
        if l.has_xsave() {
            // The fact of DESIGN §3: ECX of subleaf 0 is the standard size for all supported
            // user components; the engine computes it from the subleaves.
            assert_eq!(
                l.max_standard_size(),
                l.leaf().max_standard_size(),
                "{name}: computed max standard size vs CPUID.(0xD,0).ECX"
            );
            let all_user = l.xcr0_supported();
            assert_eq!(
                l.standard(all_user).unwrap().size,
                l.leaf().max_standard_size(),
                "{name}"
            );
            assert!(
                l.check_xcr0(all_user).is_ok(),
                "{name}: full supported XCR0 is valid"
            );
            l.compacted(all_user | l.xss_supported())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // The project's JSON carries the whole dump.
        assert_eq!(
            &CpuidDump::parse(&d.to_json(), "json").unwrap(),
            d,
            "{name}: JSON round trip"
        );
    }
    // Checked by hand against the files:
    // - aida64/amd-a10-5800k: Piledriver. Subleaf 0 is EAX 7, ECX 0x3C0, EDX 0x40000000: LWP
    //   (component 62) is supported and the maximum size 960 = 832 + 128 counts it (the hwloc
    //   Piledriver dump reports (0xD,62) = size 0x80 at 0x340). This old untagged AIDA64 dump
    //   lists only two leaf-0xD lines, subleaf 0 and AVX's subleaf 2, so LWP's geometry is
    //   missing and the computed size (832) cannot reach 960.
    // - aida64/intel-core-i7-4765t: Haswell (CPUID.1:EAX 0x306C3, AVX and XSAVE in ECX).
    //   Subleaf 0 says x87|SSE|AVX with a maximum size of 0x340 = 832, i.e. AVX at 576..832,
    //   but subleaf 2 reads all zero (size 0, offset 0): the data contradicts itself, as in
    //   dumps taken under some hypervisors (DESIGN §3).
    assert_eq!(
        inconsistent,
        [
            "aida64/amd-a10-5800k-apu-with-radeon-hd-graphics",
            "aida64/intel-core-i7-4765t-cpu",
        ]
    );
}

#[test]
fn inconsistent_fixtures_name_the_problem() {
    let (_, l) = fixture("aida64/intel-core-i7-4765t-cpu");
    assert_eq!(
        l.consistency(),
        [
            Inconsistency::ZeroSize { id: 2 },
            Inconsistency::MaxSizeMismatch {
                computed: 576,
                reported: 832
            }
        ]
    );
    assert!(l.standard(0x7).is_err(), "AVX has no usable geometry");
    let (d, l) = fixture("aida64/amd-a10-5800k-apu-with-radeon-hd-graphics");
    assert_eq!(l.xcr0_supported(), mask::LWP | 0x7);
    assert_eq!(
        l.consistency(),
        [
            Inconsistency::MissingSubleaf { id: 62 },
            Inconsistency::MaxSizeMismatch {
                computed: 832,
                reported: 960
            }
        ]
    );
    assert!(d
        .notes
        .iter()
        .any(|n| n.contains("numbered as subleaves 0, 2")));
    // Its hwloc sibling (Piledriver Opteron) has subleaf 62 and is consistent.
    let (_, l) = fixture("hwloc/AMD-15h-Piledriver-4xOpteron-6348");
    assert!(l.consistency().is_empty());
    let s = l.standard(mask::LWP | 0x7).unwrap();
    assert_eq!((s.offset_of(62), s.size), (Some(832), 960));
}

#[test]
fn cpus_without_xsave_parse_and_report_it() {
    for name in [
        "hwloc/Intel-Nehalem-2xXeon-X5550",
        "hwloc/AMD-K10-Istanbul-8xOpteron-8439SE",
        "hwloc/Intel-CPUID.1F-Qemu-2p3d3c2t",
    ] {
        let (d, l) = fixture(name);
        assert!(!d.has_xsave(), "{name}");
        assert!(d.has_fxsr(), "{name}: FXSAVE's 512-byte area");
        assert!(!l.has_xsave(), "{name}");
        assert_eq!((l.xcr0_supported(), l.xss_supported()), (0, 0), "{name}");
        assert!(l.consistency().is_empty(), "{name}");
    }
}

#[test]
fn sapphire_rapids_compacted_layout_matches_the_kernel() {
    let (d, l) = fixture("hwloc/Intel-SapphireRapids-2xXeonMax9460");
    assert_eq!(d.vendor(), Vendor::Intel);
    assert_eq!(l.xcr0_supported(), 0x602e7);
    let c = l.compacted(0x602e7).unwrap();
    let got: Vec<(u8, u32)> = c.placements.iter().map(|p| (p.id, p.offset)).collect();
    assert_eq!(
        got,
        [
            (0, 0),
            (1, 160),
            (2, 576),
            (5, 832),
            (6, 896),
            (7, 1408),
            (9, 2432),
            (17, 2496),
            (18, 2560)
        ]
    );
    assert_eq!(c.size, 10752);
    // Standard form: Intel offsets of DESIGN §2, AMX at the end; max 11008 = CPUID ECX.
    let s = l.standard(0x602e7).unwrap();
    assert_eq!(s.offset_of(5), Some(1088));
    assert_eq!(s.offset_of(9), Some(2688));
    assert_eq!(s.offset_of(18), Some(2816));
    assert_eq!(s.size, 11008);
    // TILEDATA is 64-byte aligned and XFD-capable (CPUID.(0xD,18).ECX = 6).
    let g = l.geometry(18);
    assert!(g.align64 && g.xfd && !g.supervisor);
}

#[test]
fn skylake_sp_compacted_layout_matches_the_kernel() {
    let (_, l) = fixture("hwloc/Intel-Skylake-2xXeon6140");
    let c = l.compacted(0x2ff).unwrap();
    let got: Vec<(u8, u32)> = c
        .placements
        .iter()
        .skip(3)
        .map(|p| (p.id, p.offset))
        .collect();
    assert_eq!(
        got,
        [
            (3, 832),
            (4, 896),
            (5, 960),
            (6, 1024),
            (7, 1536),
            (9, 2560)
        ]
    );
    assert_eq!(c.size, 2568);
}

#[test]
fn zen3_compacted_layout_matches_the_kernel() {
    let (d, l) = fixture("hwloc/AMD-19h-Zen3-2xEpyc-7763");
    assert_eq!(d.vendor(), Vendor::Amd);
    assert_eq!((l.xcr0_supported(), l.xss_supported()), (0x207, 0x1800));
    let c = l.compacted(0x1a07).unwrap();
    assert_eq!(c.offset_of(9), Some(832));
    assert_eq!(c.offset_of(11), Some(840));
    assert_eq!(c.offset_of(12), Some(856));
    assert_eq!(c.size, 880);
    // Zen 3 standard form has a hole: PKRU at 2432 right after AVX's 832 (DESIGN §3).
    assert_eq!(l.standard(0x207).unwrap().offset_of(9), Some(2432));
}

#[test]
fn this_machine_kind_matches_design_section_9() {
    let (d, l) = fixture("cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind");
    assert_eq!(d.vendor(), Vendor::Amd);
    assert_eq!(d.family_model_stepping().0, 0x1a);
    assert_eq!((l.xcr0_supported(), l.xss_supported()), (0xe7, 0x1800));
    let s = l.standard(0xe7).unwrap();
    assert_eq!(s.offset_of(2), Some(576));
    assert_eq!(s.offset_of(5), Some(832));
    assert_eq!(s.offset_of(6), Some(896));
    assert_eq!(s.offset_of(7), Some(1408));
    assert_eq!(s.size, 2432);
    // CPUID.(0xD,0).EBX is the standard size for the XCR0 in force: 0xe7 gives 2432.
    assert_eq!(l.leaf().current_standard_size(), 2432);
    let c = l.compacted(0x18e7).unwrap();
    assert_eq!(c.size, 2472);
    assert_eq!(c.offset_of(11), Some(2432));
    assert_eq!(c.offset_of(12), Some(2448));
    // CPUID.(0xD,1).EBX = 2472 reveals that the kernel enabled CET_U and CET_S in IA32_XSS.
    assert_eq!(l.infer_xss(0xe7), [0x1800]);
    let (leaf1, sub1) = (l.leaf(), l.leaf().subleaf1());
    assert!(
        leaf1.has_xsaveopt() && leaf1.has_xsavec() && leaf1.has_xgetbv1() && leaf1.has_xsaves()
    );
    assert!(!leaf1.has_xfd());
    assert_eq!(sub1.ebx, 2472);
}

/// The Intel kind of this project's machines (recorded with `cpuid -r -1` on one): AVX-512 in
/// the Intel layout and AMX, the Sapphire Rapids facts of DESIGN §4 and §10.
#[test]
fn intel_machine_kind_has_the_intel_layout_and_amx() {
    let (d, l) = fixture("cpuid-r/Intel-Xeon-AMX-family6-model-A7-this-machine-kind");
    assert_eq!(d.vendor(), Vendor::Intel);
    assert_eq!(d.family_model_stepping().0, 6);
    assert_eq!((l.xcr0_supported(), l.xss_supported()), (0x600e7, 0));
    let s = l.standard(0x600e7).unwrap();
    assert_eq!(s.offset_of(5), Some(1088));
    assert_eq!(s.offset_of(6), Some(1152));
    assert_eq!(s.offset_of(7), Some(1664));
    assert_eq!(s.offset_of(17), Some(2752));
    assert_eq!(s.offset_of(18), Some(2816));
    assert_eq!(s.size, 11008);
    assert_eq!(l.leaf().current_standard_size(), 11008);
    // Compacted: TILECFG and TILEDATA are 64-byte aligned (already aligned here).
    let c = l.compacted(0x600e7).unwrap();
    assert_eq!(c.offset_of(5), Some(832));
    assert_eq!(c.offset_of(17), Some(2432));
    assert_eq!(c.offset_of(18), Some(2496));
    assert_eq!(c.size, 10688);
    assert_eq!(l.leaf().subleaf1().ebx, 10688);
    assert!(l.leaf().has_xfd());
    assert!(l.geometry(18).xfd && l.geometry(18).align64 && !l.geometry(17).xfd);
}

/// Every XCR0 rule of DESIGN §4 (SDM Vol. 2B XSETBV) against real CPUs.
#[test]
fn xcr0_rules_on_real_cpus() {
    let (_, spr) = fixture("hwloc/Intel-SapphireRapids-2xXeonMax9460");
    let (_, skx) = fixture("hwloc/Intel-Skylake-2xXeon6140");
    let (_, hsw) = fixture("hwloc/Intel-Haswell-2xXeon-E5-2680v3");
    let (_, zen5) = fixture("cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind");
    let rules = |l: &Layout, x: u64| l.check_xcr0(x).map_err(|e| e.rules);
    assert_eq!(rules(&spr, 0x602e7), Ok(()));
    assert_eq!(rules(&skx, 0x2ff), Ok(()));
    assert_eq!(rules(&zen5, 0xe7), Ok(()));
    assert_eq!(rules(&spr, 0x3), Ok(()));
    // Bit 0 set.
    assert_eq!(rules(&spr, 0x602e6), Err(vec![Xcr0Rule::X87Required]));
    // No bit outside the supported mask: AVX-512 on Haswell, PKRU on this machine kind.
    assert_eq!(rules(&hsw, 0xe7), Err(vec![Xcr0Rule::Unsupported]));
    assert_eq!(rules(&zen5, 0x2e7), Err(vec![Xcr0Rule::Unsupported]));
    assert_eq!(
        rules(&hsw, 0x7 | (1 << 40)),
        Err(vec![Xcr0Rule::Unsupported])
    );
    // No supervisor bit: PT on Sapphire Rapids, CET_U on Zen 5.
    assert_eq!(
        rules(&spr, 0x602e7 | mask::PT),
        Err(vec![Xcr0Rule::SupervisorBit])
    );
    assert_eq!(
        rules(&zen5, 0xe7 | mask::CET_U),
        Err(vec![Xcr0Rule::SupervisorBit])
    );
    // AVX needs SSE.
    assert_eq!(rules(&skx, 0x5), Err(vec![Xcr0Rule::AvxNeedsSse]));
    // AVX-512: all three or none, and only with AVX.
    assert_eq!(rules(&spr, 0x67), Err(vec![Xcr0Rule::Avx512AllOrNone]));
    assert_eq!(rules(&zen5, 0x27), Err(vec![Xcr0Rule::Avx512AllOrNone]));
    assert_eq!(rules(&spr, 0xe3), Err(vec![Xcr0Rule::Avx512NeedsAvx]));
    // MPX: both or neither.
    assert_eq!(rules(&skx, 0xf), Err(vec![Xcr0Rule::MpxPair]));
    assert_eq!(rules(&skx, 0x17), Err(vec![Xcr0Rule::MpxPair]));
    // AMX: both or neither.
    assert_eq!(rules(&spr, 0x202e7), Err(vec![Xcr0Rule::AmxPair]));
    assert_eq!(rules(&spr, 0x402e7), Err(vec![Xcr0Rule::AmxPair]));
    // APX never with MPX. No fixture has APX, so Skylake-SP's masks plus APX.
    let l = &skx;
    assert_eq!(
        check_xcr0_rules(0x8001f, l.xcr0_supported() | mask::APX, l.xss_supported())
            .map_err(|e| e.rules),
        Err(vec![Xcr0Rule::ApxWithMpx])
    );
    // Several rules at once are all reported.
    assert_eq!(
        rules(&spr, 0x602e6 & !0x2),
        Err(vec![Xcr0Rule::X87Required, Xcr0Rule::AvxNeedsSse])
    );
}

/// The O(1) standard-extent table of a layout (validation's size rule) is exact on every real
/// CPU's dump: for every mask of its user components it equals the size `Layout::standard`
/// computes, and it answers None exactly where `standard` refuses the mask.
#[test]
fn standard_extent_table_is_exact_on_real_cpus() {
    let mut checked = 0;
    for (name, d) in all_fixtures() {
        let l = Layout::from_dump(&d);
        let user = l.xcr0_supported();
        let ids: Vec<u8> = xstate::components::bits(user & !3).collect();
        for k in 0..(1u64 << ids.len().min(12)) {
            let mut m = 3u64;
            for (j, id) in ids.iter().enumerate() {
                if k & (1 << j) != 0 {
                    m |= 1u64 << id;
                }
            }
            let exact = l.standard(m).ok().map(|g| g.size);
            assert_eq!(l.standard_extent_bound(m), exact, "{name}: mask {m:#x}");
            checked += 1;
        }
    }
    assert!(checked > 500, "{checked} masks");
}
