//! `xstate host` and `xstate layout` on this machine, checked against the kernel's view of it
//! recorded in DESIGN.md §9 (AMD Zen 5 EPYC, XCR0 0xe7, IA32_XSS support 0x1800: standard
//! offsets 576/832/896/1408, size 2432; the kernel's compacted format for 0x18e7 is 2472
//! bytes). Elsewhere the machine-specific assertions are skipped with a printed reason and only
//! the output contract is checked.

mod common;
use common::{fixture, xstate};

use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let (code, out, err) = xstate(args);
    assert_eq!(code, 0, "xstate {args:?} failed: {err}");
    serde_json::from_str(&out).expect("valid JSON")
}

fn is_project_machine(host: &Value) -> bool {
    host["cpu"]["vendor"] == "AuthenticAMD"
        && host["xcr0"] == "0xe7"
        && host["xss_supported"] == "0x1800"
}

#[test]
fn host_matches_the_kernels_view_on_this_machine() {
    if !cfg!(target_arch = "x86_64") {
        println!("skipped: not an x86-64 machine");
        return;
    }
    let host = json(&["host", "--json"]);
    // The contract holds everywhere.
    for key in [
        "xcr0",
        "xss",
        "standard_size",
        "compacted_size",
        "components",
        "kvm",
    ] {
        assert!(host.get(key).is_some(), "missing {key}");
    }
    if !is_project_machine(&host) {
        println!("skipped: not the project's AMD Zen 5 machine (DESIGN.md §9)");
        return;
    }
    let comps = host["components"].as_array().unwrap();
    let std_off = |name: &str| {
        comps.iter().find(|c| c["name"] == name).unwrap()["standard_offset"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(std_off("avx"), 576);
    assert_eq!(std_off("opmask"), 832);
    assert_eq!(std_off("zmm_hi256"), 896);
    assert_eq!(std_off("hi16_zmm"), 1408);
    assert_eq!(host["standard_size"], 2432);
    // The kernel's own compacted buffer (CPUID.(0xD,1).EBX) is for XCR0 | 0x1800.
    assert_eq!(host["kernel_xss"], "0x1800");
    assert_eq!(host["compacted_size"], 2472);
    assert_eq!(host["kernel_compacted_size"], 2472);
    assert_eq!(host["consistent"], true);
    assert_eq!(host["save_instruction"]["user"]["insn"], "xsavec");
    assert_eq!(host["save_instruction"]["ring0"]["insn"], "xsaves");
    // DESIGN.md §9: this machine's KVM answers KVM_CAP_XSAVE2 = 4096 and guest XCR0 0xe7.
    if host["kvm"]["usable"] == true {
        assert_eq!(host["kvm"]["api_version"], 12);
        assert_eq!(host["kvm"]["xsave2_size"], 4096);
        assert_eq!(host["kvm"]["guest_xcr0"], "0xe7");
    } else {
        println!("skipped: KVM part ({})", host["kvm"]["detail"]);
    }
}

#[test]
fn layout_json_contract_and_xcr0_rules() {
    if !cfg!(target_arch = "x86_64") {
        println!("skipped: not an x86-64 machine");
        return;
    }
    let v = json(&["layout", "--host", "--json"]);
    let comps = v["components"].as_array().unwrap();
    assert_eq!(comps[0]["id"], 0);
    assert_eq!(comps[1]["id"], 1);
    for c in comps {
        if c["supervisor"] == true {
            assert!(c["standard_offset"].is_null(), "{c}");
        }
    }
    assert!(v["xcr0"].as_str().unwrap().starts_with("0x"));
    // x87 is mandatory: exit 2 and the rule named.
    let (code, _, err) = xstate(&["layout", "--host", "--xcr0", "0x6"]);
    assert_eq!(code, 2);
    assert!(err.contains("x87_required"), "{err}");
    // AVX without SSE.
    let (code, _, err) = xstate(&["layout", "--host", "--xcr0", "0x5"]);
    assert_eq!(code, 2);
    assert!(err.contains("avx_needs_sse"), "{err}");
    // Not hex.
    let (code, _, err) = xstate(&["layout", "--host", "--xcr0", "zz"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a hex value"), "{err}");
}

#[test]
fn layout_svg_is_written() {
    if !cfg!(target_arch = "x86_64") {
        println!("skipped: not an x86-64 machine");
        return;
    }
    let dir = std::env::temp_dir().join(format!("xstate-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host.svg");
    let (code, _, err) = xstate(&["layout", "--svg", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.contains("standard form:") && svg.contains("compacted form:"));
    assert!(svg.contains(">x87<") && svg.contains(">sse<"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn layout_of_sapphire_rapids_matches_the_kernel_print() {
    // DESIGN.md §4: Linux prints, for Sapphire Rapids with XCR0 0x602e7 (no supervisor state
    // in the task buffer): opmask 832, zmm_hi256 896, hi16_zmm 1408, pkru 2432, xtilecfg 2496,
    // xtiledata 2560, total 10752.
    let f = fixture("hwloc/Intel-SapphireRapids-2xXeonMax9460.txt");
    let v = json(&[
        "layout", "--cpuid", &f, "--xcr0", "0x602e7", "--xss", "0", "--json",
    ]);
    assert_eq!(v["compacted_size"], 10752);
    assert_eq!(v["consistent"], true);
    let comps = v["components"].as_array().unwrap();
    let off = |name: &str| {
        comps.iter().find(|c| c["name"] == name).unwrap()["compacted_offset"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        [
            off("opmask"),
            off("zmm_hi256"),
            off("hi16_zmm"),
            off("pkru"),
            off("xtilecfg"),
            off("xtiledata")
        ],
        [832, 896, 1408, 2432, 2496, 2560]
    );
    let tiles = comps.iter().find(|c| c["name"] == "xtiledata").unwrap();
    assert_eq!(tiles["align64"], true);
    assert_eq!(tiles["xfd"], true);
    // Standard size for all supported user components equals CPUID.(0xD,0).ECX.
    assert_eq!(v["max_standard_size"], v["cpuid_max_standard_size"]);
}

#[test]
fn inconsistent_dump_is_reported_not_used() {
    // AIDA64 dump of a Haswell whose subleaf 2 is all zero although AVX is supported.
    let f = fixture("aida64/intel-core-i7-4765t-cpu.txt");
    let (code, out, _) = xstate(&["layout", "--cpuid", &f, "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["consistent"], false);
    assert!(v["standard_size"].is_null());
    let w = v["warnings"].to_string();
    assert!(w.contains("avx") && w.contains("size 0"), "{w}");
}

#[test]
fn cpu_without_xsave_is_reported_as_such() {
    let f = fixture("hwloc/Intel-Nehalem-2xXeon-X5550.txt");
    let v = json(&["layout", "--cpuid", &f, "--json"]);
    assert_eq!(v["xsave"], false);
    assert_eq!(v["standard_size"], 512);
    assert!(v["warnings"].to_string().contains("FXSAVE"));
}

#[test]
fn dump_cpuid_round_trips_through_layout() {
    if !cfg!(target_arch = "x86_64") {
        println!("skipped: not an x86-64 machine");
        return;
    }
    let dir = std::env::temp_dir().join(format!("xstate-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host.json");
    let p = path.to_str().unwrap();
    let (code, _, err) = xstate(&["host", "--dump-cpuid", p]);
    assert!(code == 0 || code == 1, "{err}");
    let from_file = json(&["layout", "--cpuid", p, "--json"]);
    let from_host = json(&["layout", "--host", "--json"]);
    assert_eq!(from_file["components"], from_host["components"]);
    assert_eq!(from_file["standard_size"], from_host["standard_size"]);
    std::fs::remove_dir_all(&dir).ok();
}
