//! `xstate sim`: every example script under `examples/sim/` replays with exit status 0 and the
//! key results of its flow (sizes, reallocations, guest faults, errors).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/sim")
        .join(name)
}

/// Runs `xstate sim --json` on an example; returns the exit status and one value per step.
fn sim(name: &str) -> (i32, Vec<Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_xstate"))
        .args(["sim", "--json"])
        .arg(example(name))
        .output()
        .expect("run xstate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: bad JSON line {l}: {e}"))
        })
        .collect();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], i, "{name}: steps numbered from 0");
        for k in [
            "do",
            "ok",
            "error",
            "guest_fault",
            "realloc",
            "vcpu",
            "host_size",
        ] {
            assert!(l.get(k).is_some(), "{name}: step {i} lacks `{k}`");
        }
    }
    (out.status.code().unwrap_or(-1), lines)
}

fn size(step: &Value) -> u64 {
    step["vcpu"]["size"].as_u64().unwrap_or(0)
}

#[test]
fn amx_enable_through_xfd() {
    let (code, s) = sim("amx_xfd.json");
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(size(&s[1]), 2560, "no tiles before AMX is enabled");
    assert_eq!(
        s[4]["realloc"], false,
        "XCR0 with AMX while XFD arms it needs no space"
    );
    assert_eq!(s[5]["guest_fault"], "#NM");
    assert_eq!(s[6]["ok"], true, "XFD_ERR recorded");
    assert_eq!(s[8]["realloc"], true, "disarming XFD grows the container");
    assert_eq!(size(&s[8]), 10752);
    assert_eq!(s[8]["vcpu"]["xfeatures"], "0x61ae7");
    assert_eq!(s[9]["guest_fault"], Value::Null);
    assert_eq!(
        s[8]["host_size"], 2560,
        "the host never pays for the guest's tiles"
    );
    assert!(s[13]["error"].as_str().unwrap().starts_with("einval:"));
    assert!(s
        .iter()
        .filter(|x| x["do"] == "check")
        .all(|x| x["ok"] == true || x["error"].as_str().unwrap_or("").starts_with("einval")));
}

#[test]
fn guest_only_cet_s() {
    let (code, s) = sim("cet_guest_only.json");
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(s[0]["host_size"], 2448, "host: 0x8e7 without CET_S");
    assert_eq!(size(&s[0]), 2472, "guest with CET_S: 24 bytes more");
    assert_eq!(
        size(&s[1]),
        2432,
        "a guest without CET in its CPUID pays nothing for it"
    );
    assert_eq!(s[4]["guest_fault"], Value::Null);
    assert_eq!(s[6]["ok"], true);
    assert!(s[7]["error"]
        .as_str()
        .unwrap()
        .contains("not in the container"));
    assert_eq!(
        s[9]["guest_fault"], "#GP",
        "IA32_XSS beyond the guest CPUID"
    );
    assert_eq!(s[10]["guest_fault"], "#GP");
    assert_eq!(s[13]["ok"], true);
}

#[test]
fn permission_locked() {
    let (code, s) = sim("perm_locked.json");
    assert_eq!(code, 0, "{s:#?}");
    assert!(s[0]["error"].as_str().unwrap().starts_with("einval:"));
    assert!(s[1]["error"].as_str().unwrap().starts_with("eopnotsupp:"));
    assert_eq!(s[2]["ok"], true, "a default feature is already granted");
    assert!(s[4]["error"].as_str().unwrap().starts_with("ebusy:"));
    assert!(s[5]["error"].as_str().unwrap().starts_with("eperm:"));
    assert_eq!(s[6]["ok"], true, "the host scope is never locked");
    assert_eq!(
        s[7]["realloc"], true,
        "host first use of AMX grows the host container"
    );
    assert_eq!(s[7]["host_size"], 10752);
    assert_eq!(s[10]["guest_fault"], "#GP", "the guest may not enable AMX");
    assert_eq!(s[12]["ok"], true, "host tiles survive the guest run");
}

#[test]
fn realloc_failure() {
    let (code, s) = sim("realloc_failure.json");
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(s[6]["ok"], false);
    assert!(s[6]["error"].as_str().unwrap().starts_with("enomem:"));
    assert_eq!(size(&s[6]), 2560, "old container kept");
    assert_eq!(s[7]["ok"], true, "guest state intact");
    assert_eq!(s[8]["realloc"], true, "the next entry reallocates");
    assert_eq!(size(&s[8]), 10752);
    assert_eq!(s[9]["ok"], true);
    assert_eq!(s[13]["ok"], true);
}

#[test]
fn xsa62_stale_state() {
    let (code, s) = sim("xsa62_stale_state.json");
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(s[4]["guest_fault"], "#UD", "AVX-512 not enabled yet");
    for i in [6, 11] {
        assert_eq!(s[i]["ok"], true, "step {i}: first enable starts in init");
    }
    assert_eq!(
        s[17]["ok"], true,
        "disabled then re-enabled keeps its state"
    );
    assert_eq!(s[19]["ok"], true, "host pattern intact");
    assert_eq!(s[20]["ok"], true, "vCPU 0 pattern intact");
}

#[test]
fn policy_shrink() {
    let (code, s) = sim("policy_shrink.json");
    assert_eq!(code, 0, "{s:#?}");
    assert_eq!(size(&s[3]), 10752);
    assert!(s[8]["error"].as_str().unwrap().starts_with("ebusy:"));
    assert_eq!(s[10]["realloc"], true);
    assert_eq!(s[10]["vcpu"]["xfeatures"], "0x10e7");
    assert_eq!(size(&s[10]), 2456);
    assert_eq!(s[11]["ok"], true);
    assert_eq!(s[12]["ok"], true);
    assert_eq!(size(&s[14]), 2560, "grown back without tiles (lazy)");
    assert_eq!(s[16]["realloc"], true);
    assert_eq!(
        s[17]["ok"], true,
        "tiles dropped by the shrink come back in init state"
    );
    assert_eq!(s[18]["ok"], true);
}

#[test]
fn check_mismatch_fails_the_run() {
    let dir = std::env::temp_dir().join(format!("xstate-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spr = example(
        "../../crates/xstate/tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt",
    );
    let script = serde_json::json!({
        "host": {"cpuid": spr, "xss": "0x0"},
        "guest": {"xcr0_max": "0xe7", "xss": "0x0"},
        "steps": [
            {"do": "create_vcpu", "vcpu": 0},
            {"do": "enter", "vcpu": 0},
            {"do": "xsetbv", "vcpu": 0, "value": "0xe7"},
            {"do": "dirty", "vcpu": 0, "component": "avx", "byte": "0x12"},
            {"do": "check", "vcpu": 0, "component": "avx", "expect": "0x13"},
            {"do": "enter", "vcpu": 0}
        ]
    });
    let p = dir.join("mismatch.json");
    std::fs::write(&p, script.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xstate"))
        .args(["sim", "--json"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[4]["ok"], false);
    assert!(lines[4]["error"].as_str().unwrap().starts_with("mismatch:"));
    assert!(lines[5]["error"].as_str().unwrap().starts_with("ebusy:"));
    // The text form prints one line per step too.
    let out = Command::new(env!("CARGO_BIN_EXE_xstate"))
        .arg("sim")
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .filter(|l| l
                .get(..3)
                .is_some_and(|n| n.trim().parse::<usize>().is_ok()))
            .count()
            == 6,
        "{text}"
    );
    // The summary names every step that was not as expected.
    assert!(text.contains("2 step(s) not as expected"), "{text}");
    assert!(text.contains("step 4 (check): mismatch"), "{text}");
    assert!(text.contains("step 5 (enter): ebusy"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
