//! Memory per vCPU over every CPUID fixture: a vCPU holds exactly the compacted size of the
//! features its guest can use now — the default features without AMX tiles, the maximum once
//! the guest enabled AMX — next to what a fixed maximum-size area costs (the compacted maximum
//! of pre-fpstate KVM, the standard maximum CPUID.(0xD,0).ECX that Xen allocates per vCPU,
//! DESIGN.md §7). Prints the table (`cargo test -p xstate --test engine_memory -- --nocapture`).

use std::path::Path;

use xstate::components::mask;
use xstate::cpuid::CpuidDump;
use xstate::engine::{Engine, GuestPolicy, Options, Scope};
use xstate::model::{CpuProfile, ModelCpu};

fn fixtures() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpuid");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap().flatten() {
        if let Ok(files) = std::fs::read_dir(dir.path()) {
            for f in files.flatten() {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// The XCR0 an OS would enable: every supported user feature, MPX dropped when APX is there.
fn os_xcr0(l: &xstate::layout::Layout) -> Option<u64> {
    let sup = l.xcr0_supported();
    [sup, sup & !mask::MPX]
        .into_iter()
        .find(|&x| l.check_xcr0(x).is_ok())
}

#[test]
fn memory_per_vcpu_over_all_fixtures() {
    println!(
        "{:<52} {:>18} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6}",
        "fixture", "xcr0", "insn", "no AMX", "AMX on", "fixed-cmp", "fixed-std", "saved"
    );
    let mut rows = 0;
    let mut spr_seen = false;
    for p in fixtures() {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&p).unwrap();
        let Ok(d) = CpuidDump::parse(&text, &name) else {
            println!("{name:<52} (not parsed)");
            continue;
        };
        let profile = CpuProfile::from_dump(&d);
        let l = profile.layout.clone();
        if !profile.xsave || !l.consistency().is_empty() {
            println!(
                "{name:<52} (no XSAVE or inconsistent leaf 0xD: {} notes)",
                l.consistency().len()
            );
            continue;
        }
        let Some(xcr0) = os_xcr0(&l) else {
            println!("{name:<52} (no valid XCR0)");
            continue;
        };
        let xss = if l.leaf().has_xsaves() {
            l.xss_supported() & (mask::CET_U | mask::CET_S)
        } else {
            0
        };
        let cpu = ModelCpu::new(profile);
        let mut e = match Engine::new(
            cpu,
            Options {
                xcr0: Some(xcr0),
                xss: Some(xss),
                ring0: Some(true),
                ..Options::default()
            },
        ) {
            Ok(e) => e,
            Err(err) => {
                println!("{name:<52} (engine: {err})");
                continue;
            }
        };
        let _ = e.request_perm(Scope::Guest, 18);
        let policy = GuestPolicy {
            xcr0_max: xcr0,
            xss,
        };
        e.create_vcpu(0, policy, false).unwrap();
        let fp = e.vcpu(0).unwrap().fpstate().clone();
        // The container is exactly the compacted (or standard) size of its features.
        assert_eq!(
            fp.size(),
            e.config().size_of(fp.xfeatures()).unwrap(),
            "{name}"
        );
        assert_eq!(
            fp.xfeatures() & mask::XTILEDATA,
            0,
            "{name}: no tiles before AMX is used"
        );
        let mut with_amx = fp.size();
        if xcr0 & mask::AMX == mask::AMX {
            e.attach(0).unwrap();
            assert!(e.xsetbv(0, xcr0).unwrap().realloc, "{name}");
            e.detach(0).unwrap();
            with_amx = e.vcpu(0).unwrap().fpstate().size();
            assert_eq!(with_amx, e.config().guest.max_size, "{name}");
        }
        let fixed_cmp = e.config().guest.max_size;
        let fixed_std = l.leaf().max_standard_size();
        assert!(
            fp.size() <= fixed_cmp && fixed_cmp <= fixed_std + 1024,
            "{name}"
        );
        let saved = 100.0 * (1.0 - f64::from(fp.size()) / f64::from(fixed_std.max(1)));
        println!(
            "{name:<52} {xcr0:>#18x} {:>8} {:>8} {:>8} {:>9} {:>9} {:>5.0}%",
            e.save_insn().0.name(),
            fp.size(),
            with_amx,
            fixed_cmp,
            fixed_std,
            saved
        );
        if name.starts_with("Intel-SapphireRapids") {
            spr_seen = true;
            assert_eq!((fp.size(), with_amx, fixed_std), (2560, 10752, 11008));
        }
        rows += 1;
    }
    assert!(spr_seen, "the Sapphire Rapids fixture is in the table");
    assert!(rows >= 20, "{rows} fixtures measured");
}
