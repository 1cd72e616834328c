//! `xstate sim`: every example script under `examples/sim/` replays with exit status 0 and the
//! key results of its flow (sizes, the two phases of a reallocation, guest faults, errors);
//! the script contract (unknown keys, script errors after printed results, expected errors).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/sim")
        .join(name)
}

const KEYS: [&str; 13] = [
    "step",
    "do",
    "ok",
    "error",
    "expected_error",
    "guest_fault",
    "realloc",
    "realloc_request",
    "run_ended",
    "cleared_by_xfd",
    "attached",
    "vcpu",
    "host_size",
];

/// Runs `xstate sim --json` on a script; returns the exit status, one value per step and
/// stderr.
fn run(path: &std::path::Path) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xstate"))
        .args(["sim", "--json"])
        .arg(path)
        .output()
        .expect("run xstate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], i, "steps numbered from 0");
        for k in KEYS {
            assert!(l.get(k).is_some(), "step {i} lacks `{k}`");
        }
        if let Some(v) = l["vcpu"].as_object() {
            for k in ["xfeatures", "size", "xcr0", "xfd", "xfd_err", "xss"] {
                assert!(v.contains_key(k), "step {i}: vcpu lacks `{k}`");
            }
        }
    }
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sim(name: &str) -> Vec<Value> {
    let (code, s, err) = run(&example(name));
    assert_eq!(code, 0, "{name}: {s:#?} {err}");
    assert!(
        s.iter().all(|x| x["ok"] == true),
        "{name}: every step ok: {s:#?}"
    );
    s
}

fn size(step: &Value) -> u64 {
    step["vcpu"]["size"].as_u64().unwrap_or(0)
}

fn expected(step: &Value, kind: &str) {
    assert_eq!(step["expected_error"], kind, "{step}");
    assert!(
        step["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{kind}:")),
        "{step}"
    );
}

#[test]
fn amx_enable_through_xfd_in_two_phases() {
    let s = sim("amx_xfd.json");
    assert_eq!(size(&s[1]), 2560, "no tiles before AMX is enabled");
    assert_eq!(
        s[4]["run_ended"], false,
        "XCR0 with AMX while XFD arms it needs no space"
    );
    assert_eq!(s[5]["guest_fault"], "#NM");
    assert_eq!(s[5]["vcpu"]["xfd_err"], "0x40000");
    // Phase one: disarming XFD ends the run with a request; nothing grew yet.
    assert_eq!(s[8]["run_ended"], true);
    assert_eq!(s[8]["realloc_request"], "0x40000");
    assert_eq!(s[8]["realloc"], false);
    assert_eq!(size(&s[8]), 2560);
    assert_eq!(s[8]["attached"], true);
    expected(&s[9], "ebusy");
    // Phase two: the exit allocates.
    assert_eq!(s[10]["realloc"], true);
    assert_eq!(s[10]["attached"], false);
    assert_eq!(s[10]["realloc_request"], "0x0");
    assert_eq!(size(&s[10]), 10752);
    assert_eq!(s[10]["vcpu"]["xfeatures"], "0x61ae7");
    assert_eq!(s[11]["realloc"], false, "the entry has nothing to allocate");
    assert_eq!(s[12]["guest_fault"], Value::Null);
    assert_eq!(s[14]["realloc"], false, "a plain exit allocates nothing");
    assert_eq!(
        s[10]["host_size"], 2560,
        "the host never pays for the tiles"
    );
    expected(&s[16], "einval");
}

#[test]
fn guest_only_cet_s() {
    let s = sim("cet_guest_only.json");
    assert_eq!(s[0]["host_size"], 2448, "host default: 0x8e7 without CET_S");
    assert_eq!(size(&s[0]), 2472, "guest with CET_S: 24 bytes more");
    assert_eq!(size(&s[1]), 2432, "no CET in its CPUID: pays nothing");
    assert_eq!(s[3]["vcpu"]["xss"], "0x1800");
    expected(&s[7], "einval");
    assert!(s[7]["error"]
        .as_str()
        .unwrap()
        .contains("not in the container"));
    assert_eq!(
        s[9]["guest_fault"], "#GP",
        "IA32_XSS beyond the guest CPUID"
    );
    assert_eq!(s[10]["guest_fault"], "#GP");
}

#[test]
fn permission_rules_of_linux() {
    let s = sim("perm_locked.json");
    expected(&s[0], "einval");
    expected(&s[1], "einval");
    expected(&s[2], "eopnotsupp");
    expected(&s[3], "eopnotsupp");
    expected(&s[4], "eopnotsupp");
    expected(&s[6], "ebusy");
    expected(&s[7], "eperm");
    assert_eq!(
        s[8]["error"],
        Value::Null,
        "the process scope is never locked"
    );
    assert_eq!(s[9]["error"], Value::Null, "already granted: 0");
    assert_eq!(
        s[10]["realloc"], true,
        "host first use of AMX grows its buffer"
    );
    assert_eq!(s[10]["host_size"], 10752);
    assert_eq!(s[13]["guest_fault"], "#GP", "the guest may not enable AMX");
}

#[test]
fn realloc_failure_at_exit() {
    let s = sim("realloc_failure.json");
    assert_eq!(s[5]["run_ended"], true);
    assert_eq!(s[5]["realloc_request"], "0x40000");
    expected(&s[7], "enomem");
    assert_eq!(s[7]["attached"], false, "the vCPU is out");
    assert_eq!(s[7]["realloc"], false);
    assert_eq!(s[7]["realloc_request"], "0x40000", "still pending");
    assert_eq!(size(&s[7]), 2560, "old container kept");
    assert_eq!(s[9]["realloc"], true, "the next entry serves it first");
    assert_eq!(size(&s[9]), 10752);
    assert_eq!(s[13]["realloc"], false);
}

#[test]
fn xsa62_stale_state() {
    let s = sim("xsa62_stale_state.json");
    assert_eq!(s[4]["guest_fault"], "#UD", "AVX-512 not enabled yet");
}

#[test]
fn policy_shrink() {
    let s = sim("policy_shrink.json");
    assert_eq!(s[3]["run_ended"], true);
    assert_eq!(s[4]["realloc"], true);
    assert_eq!(size(&s[4]), 10752);
    expected(&s[10], "ebusy");
    assert_eq!(s[12]["realloc"], true);
    assert_eq!(s[12]["vcpu"]["xfeatures"], "0x10e7");
    assert_eq!(size(&s[12]), 2456);
    assert_eq!(size(&s[16]), 2560, "grown back without tiles (lazy)");
    assert_eq!(s[19]["realloc"], true);
}

#[test]
fn amx_snapshot_restored_into_a_fresh_vcpu() {
    let s = sim("restore_amx_snapshot.json");
    expected(&s[11], "einval");
    let e = s[11]["error"].as_str().unwrap();
    assert!(
        e.contains("offset 512") && e.contains("restore XCR0"),
        "{e}"
    );
    assert_eq!(size(&s[11]), 2560, "refused: nothing changed");
    assert_eq!(s[12]["realloc"], true, "XCR0 first grows the container");
    assert_eq!(size(&s[12]), 10752);
    assert_eq!(s[14]["cleared_by_xfd"], "0x0");
}

#[test]
fn copy_in_with_xfd_armed_and_a_faulting_attach() {
    let s = sim("xfd_copy_in.json");
    assert_eq!(s[3]["realloc"], true);
    assert_eq!(s[8]["cleared_by_xfd"], "0x40000");
    assert_eq!(s[10]["cleared_by_xfd"], "0x40000", "XSTATE_BV[18] cleared");
    expected(&s[13], "fault");
    assert_eq!(
        s[13]["attached"], false,
        "atomic: not attached after the fault"
    );
    assert_eq!(s[15]["attached"], true);
    assert_eq!(s[16]["guest_fault"], "#NM");
}

#[test]
fn preemption_saves_once() {
    let s = sim("preemption.json");
    expected(&s[6], "ebusy");
    assert_eq!(s[5]["attached"], true);
    assert_eq!(s[8]["attached"], false);
}

#[test]
fn eager_growth_and_confidential_vcpus() {
    let s = sim("eager_growth.json");
    assert_eq!(size(&s[1]), 10752, "eager: tiles at creation");
    assert_eq!(size(&s[2]), 2480, "no AMX in the CPUID: no tiles");
    assert_eq!(size(&s[3]), 0, "confidential: nothing allocated");
    assert_eq!(s[5]["run_ended"], false);
    assert_eq!(s[9]["realloc"], true);
    assert_eq!(size(&s[9]), 10752);
}

/// Every script under examples/sim is run by a test above.
#[test]
fn every_example_is_tested() {
    let me =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sim.rs"))
            .unwrap();
    for f in std::fs::read_dir(example("")).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            assert!(me.contains(&format!("\"{name}\"")), "{name} has no test");
        }
    }
}

fn script(name: &str, steps: Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xstate-sim-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spr = example(
        "../../crates/xstate/tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt",
    );
    let s = serde_json::json!({
        "host": {"cpuid": spr, "xss": "0x0"},
        "guest": {"xcr0_max": "0xe7", "xss": "0x0"},
        "steps": steps,
    });
    let p = dir.join("script.json");
    std::fs::write(&p, s.to_string()).unwrap();
    p
}

#[test]
fn check_mismatch_and_missing_expected_error_fail_the_run() {
    let p = script(
        "mismatch",
        serde_json::json!([
            {"do": "create_vcpu", "vcpu": 0},
            {"do": "enter", "vcpu": 0},
            {"do": "xsetbv", "vcpu": 0, "value": "0xe7"},
            {"do": "dirty", "vcpu": 0, "component": "avx", "byte": "0x12"},
            {"do": "check", "vcpu": 0, "component": "avx", "expect": "0x13"},
            {"do": "enter", "vcpu": 0},
            {"do": "exit", "vcpu": 0, "expect_error": "enomem"}
        ]),
    );
    let (code, lines, _) = run(&p);
    assert_eq!(code, 1);
    assert_eq!(lines[4]["ok"], false);
    assert!(lines[4]["error"].as_str().unwrap().starts_with("mismatch:"));
    assert!(lines[5]["error"].as_str().unwrap().starts_with("ebusy:"));
    assert_eq!(lines[6]["ok"], false);
    let e = lines[6]["error"].as_str().unwrap();
    assert!(e.contains("step 6") && e.contains("enomem"), "{e}");
    let _ = std::fs::remove_dir_all(p.parent().unwrap());
}

#[test]
fn script_errors_print_earlier_results_then_exit_2() {
    for (name, bad, needle) in [
        (
            "key",
            serde_json::json!({"do": "enter", "vcpuu": 0}),
            "unknown key `vcpuu`",
        ),
        (
            "action",
            serde_json::json!({"do": "jump", "vcpu": 0}),
            "unknown action `jump`",
        ),
        (
            "component",
            serde_json::json!({"do": "dirty", "vcpu": 0, "component": "zmm9", "byte": "1"}),
            "unknown component",
        ),
        (
            "hex",
            serde_json::json!({"do": "xsetbv", "vcpu": 0, "value": "0xzz"}),
            "not a hex value",
        ),
    ] {
        let p = script(
            name,
            serde_json::json!([
                {"do": "create_vcpu", "vcpu": 0},
                {"do": "enter", "vcpu": 0},
                bad,
                {"do": "exit", "vcpu": 0}
            ]),
        );
        let (code, lines, err) = run(&p);
        assert_eq!(code, 2, "{name}: {err}");
        assert_eq!(
            lines.len(),
            2,
            "{name}: the steps before the error are printed"
        );
        assert!(
            err.contains("step 2") && err.contains(needle),
            "{name}: {err}"
        );
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}

#[test]
fn text_output_has_one_line_per_step() {
    let out = Command::new(env!("CARGO_BIN_EXE_xstate"))
        .arg("sim")
        .arg(example("realloc_failure.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| !l.starts_with("      ") && !l.contains("every step as expected"))
            .count(),
        15,
        "{text}"
    );
    assert!(
        text.contains("run-ended") && text.contains("expected error"),
        "{text}"
    );
}
