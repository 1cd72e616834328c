//! The ring-0 differential under QEMU TCG (`scripts/ring0 --emulator qemu --cpu max`,
//! docs/ring0.md "QEMU TCG"): the same test kernel as on Bochs, a second, independent opinion on
//! x87/SSE/AVX/MPX/PKRU and XSAVE/XSAVEOPT/XRSTOR/FXSAVE/FXRSTOR/XSETBV/XGETBV at CPL 0, with the
//! QEMU profile (x87 pointers never kept, FCW as loaded) and QEMU's listed deviations. 1000
//! cases (about 4 s): no disagreement, every QEMU entry explains at least one case (the list
//! stays true: QEMU entries have no directed case, the CPU has no XSAVES), the engine
//! scenarios that apply pass. Skips with the reason printed where QEMU is not installed
//! (scripts/setup-qemu installs it).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// QEMU's entries of the known-differences list (crates/ring0-kernel/src/quirks.rs).
const QEMU_ENTRIES: &[&str] = &[
    "no_modified_optimization",
    "xinuse_all_ones",
    "fop_not_written",
    "st_slot_reserved_bytes_not_written",
    "xsave_ignores_cr0_ts",
    "mxcsr_reserved_bits_accepted",
    "bndcsr_bytes_16_63_not_written",
    "mxcsr_only_with_sse",
    "fsw_es_b_as_loaded",
];

#[test]
fn qemu_tcg_at_ring0_agrees_with_the_model_and_its_listed_deviations() {
    let cases = 1000u64;
    let out = Command::new(root().join("scripts/ring0"))
        .args([
            "--emulator",
            "qemu",
            "--cpu",
            "max",
            "--seed",
            "7",
            "--json",
        ])
        .args(["--cases", &cases.to_string()])
        .arg("--out")
        .arg(root().join("target/ring0/test-qemu-max-7"))
        .output()
        .expect("run scripts/ring0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        return println!("{}", stderr.trim());
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "scripts/ring0 --emulator qemu failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let s: Value = serde_json::from_str(stdout.lines().last().expect("a summary line"))
        .expect("the summary is JSON");
    assert_eq!(s["cases"], cases);
    assert_eq!(s["disagree"], 0, "{s}");
    assert_eq!(
        s["agree"].as_u64().unwrap() + s["known_differences"].as_u64().unwrap(),
        cases,
        "{s}"
    );
    assert_eq!(s["engine_scenarios"]["failed"], 0, "{s}");
    assert_eq!(s["engine_scenarios"]["passed"], 3, "{s}");
    assert_eq!(s["heap_leaks"], 0, "{s}");
    for f in ["xsave", "xsaveopt", "xrstor", "fxsave", "xsetbv", "pkru"] {
        assert!(s["covered"][f].as_u64().unwrap_or(0) > 0, "{f}: {s}");
    }
    for v in ["gp", "nm", "ud"] {
        assert!(s["faults_agreed"][v].as_u64().unwrap_or(0) > 0, "{v}: {s}");
    }
    for e in QEMU_ENTRIES {
        assert!(
            s["known_difference_hits"][e].as_u64().unwrap_or(0) > 0,
            "listed QEMU deviation {e} explained no case: {s}"
        );
    }
    // Bochs's entries are off under QEMU.
    for e in [
        "tiledata_xinuse_inverted",
        "fip_keeps_64_bits",
        "xsave_sse_bit_from_mxcsr",
    ] {
        assert_eq!(s["known_difference_hits"][e], 0, "{e}: {s}");
    }
}
