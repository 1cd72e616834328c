//! The ring-0 differential on Bochs (`scripts/ring0`, docs/ring0.md): the test kernel runs the
//! XSAVE family at CPL 0 on two emulated Intel CPUs against `ModelCpu`; a few hundred cases per
//! model, every listed Bochs deviation shown by its directed case, the guest FPU engine's
//! scenarios on `Ring0Backend` (six on Sapphire Rapids: AMX and CET_S need it; four on
//! Skylake-X), and the CPUID the kernel read
//! laid out by `xstate layout --cpuid` as DESIGN.md §4 says (Sapphire Rapids: 11008 bytes,
//! TILEDATA at 2816; Skylake-X: opmask at 1088). Skips with the reason printed where Bochs
//! cannot be built (no C++ compiler or make).

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `scripts/ring0 --cpu MODEL --seed SEED --cases N --json`; None when it skipped.
fn ring0(model: &str, seed: u64, cases: u64) -> Option<Value> {
    let out_dir = root().join(format!("target/ring0/test-{model}-{seed}"));
    let out = Command::new(root().join("scripts/ring0"))
        .args([
            "--cpu",
            model,
            "--seed",
            &seed.to_string(),
            "--cases",
            &cases.to_string(),
            "--json",
        ])
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("run scripts/ring0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        // scripts/build-bochs wrote "skipped: <reason>".
        println!("{}", stderr.trim());
        return None;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "scripts/ring0 --cpu {model} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let last = stdout.lines().last().expect("a summary line");
    Some(serde_json::from_str(last).expect("the summary is JSON"))
}

fn layout(dump: &str) -> Value {
    let (code, out, err) = common::xstate(&["layout", "--cpuid", dump, "--json"]);
    assert_eq!(code, 0, "xstate layout --cpuid {dump}: {err}");
    serde_json::from_str(&out).expect("layout JSON")
}

fn component(l: &Value, id: u64) -> &Value {
    l["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("component {id} in {l}"))
}

fn check_summary(s: &Value, model: &str, cases: u64, families: &[&str], scenarios: u64) {
    assert_eq!(s["cpu"], model);
    assert_eq!(s["cases"], cases);
    assert_eq!(s["disagree"], 0, "{s}");
    assert_eq!(
        s["agree"].as_u64().unwrap() + s["known_differences"].as_u64().unwrap(),
        cases,
        "{s}"
    );
    assert_eq!(
        s["stale_known_differences"].as_array().map(Vec::len),
        Some(0),
        "{s}"
    );
    assert_eq!(s["engine_scenarios"]["failed"], 0, "{s}");
    assert_eq!(s["engine_scenarios"]["passed"], scenarios, "{s}");
    // Faults compared too: #GP (header, MXCSR, XSETBV, alignment rules), #NM (CR0.TS), #UD
    // (CR4.OSXSAVE clear, TILERELEASE without AMX).
    for v in ["gp", "nm", "ud"] {
        assert!(
            s["faults_agreed"][v].as_u64().unwrap_or(0) > 0,
            "no agreeing {v}: {s}"
        );
    }
    for f in families {
        assert!(
            s["covered"][f].as_u64().unwrap_or(0) > 0,
            "family {f} not covered: {s}"
        );
    }
}

#[test]
fn sapphire_rapids_at_ring0_agrees_with_the_model() {
    let Some(s) = ring0("sapphire_rapids", 1, 300) else {
        return;
    };
    check_summary(
        &s,
        "sapphire_rapids",
        300,
        &[
            "xsave", "xsaveopt", "xsavec", "xsaves", "xrstor", "xrstors", "fxsave", "xsetbv",
            "amx", "cet_s", "pkru", "avx512",
        ],
        6,
    );
    let l = layout(s["cpuid_dump"].as_str().expect("cpuid_dump path"));
    assert_eq!(l["consistent"], true, "{l}");
    assert_eq!(l["max_standard_size"], 11008, "{l}");
    assert_eq!(component(&l, 18)["standard_offset"], 2816);
    assert_eq!(component(&l, 18)["size"], 8192);
    assert_eq!(component(&l, 5)["standard_offset"], 1088);
}

#[test]
fn skylake_x_at_ring0_agrees_with_the_model() {
    let Some(s) = ring0("corei7_skylake_x", 2, 300) else {
        return;
    };
    check_summary(
        &s,
        "corei7_skylake_x",
        300,
        &[
            "xsave", "xsaveopt", "xsavec", "xsaves", "xrstor", "xrstors", "fxsave", "xsetbv",
            "avx512",
        ],
        4,
    );
    let l = layout(s["cpuid_dump"].as_str().expect("cpuid_dump path"));
    assert_eq!(l["consistent"], true, "{l}");
    assert_eq!(component(&l, 5)["standard_offset"], 1088, "{l}");
    assert_eq!(component(&l, 6)["standard_offset"], 1152, "{l}");
    assert_eq!(component(&l, 7)["standard_offset"], 1664, "{l}");
}
