//! Cloud Hypervisor `state.json` (fixtures in `crates/xstate/tests/fixtures/vmm/
//! cloud-hypervisor/`, see the README there): the same registers saved on three layouts read
//! back identically; `check` reports a layout move of the raw region as a misplacement;
//! `convert --to state-json` repairs it, keeping every other byte.

mod common;

use common::xstate;
use serde_json::Value;

fn ch(name: &str) -> String {
    format!(
        "{}/../xstate/tests/fixtures/vmm/cloud-hypervisor/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

const FILES: [&str; 3] = [
    "intel-xeon-6-a7-kvm.state.json",
    "skylake-sp.state.json",
    "zen4.state.json",
];

fn inspect(path: &str) -> Value {
    let (rc, out, err) = xstate(&["inspect", path, "--json"]);
    assert_eq!(rc, 0, "{path}: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn three_layouts_read_back_the_same_registers() {
    let a = inspect(&ch(FILES[0]));
    assert_eq!(a["xstate_bv"], "0xe7");
    for f in &FILES[1..] {
        let b = inspect(&ch(f));
        assert_eq!(a["components"], b["components"], "{f}");
    }
}

#[test]
fn a_layout_move_is_reported_as_misplacement_and_repaired() {
    // Intel layout (opmask 1088) against a Zen 4 destination (832).
    let zen4 = common::fixture("hwloc/AMD-19h-Zen4-2xEpyc-9654.txt");
    let (rc, out, _) = xstate(&["check", &ch(FILES[1]), "--to-cpuid", &zen4, "--json"]);
    assert_eq!(rc, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let moved: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rule"] == "layout.raw_region_misplaced")
        .map(|r| r["component"].as_str().unwrap())
        .collect();
    assert_eq!(moved, ["opmask", "zmm_hi256", "hi16_zmm"], "{out}");
    // Skylake-SP and this project's Intel host share the Intel offsets: no move.
    let sky = common::fixture("hwloc/Intel-Skylake-2xXeon6140.txt");
    let (rc, out, _) = xstate(&["check", &ch(FILES[0]), "--to-cpuid", &sky]);
    assert_eq!(rc, 0, "{out}");

    // Repair for Zen 4, then check and read back.
    let dir = std::env::temp_dir().join(format!("xstate-ch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rep = dir.join("repaired.json");
    let (rc, out, err) = xstate(&[
        "convert",
        &ch(FILES[1]),
        "--to",
        "state-json",
        "--to-cpuid",
        &zen4,
        "-o",
        rep.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    let (rc, out, _) = xstate(&["check", rep.to_str().unwrap(), "--to-cpuid", &zen4]);
    assert_eq!(rc, 0, "{out}");
    let a = inspect(&ch(FILES[1]));
    let b = inspect(rep.to_str().unwrap());
    assert_eq!(a["components"], b["components"]);
    // The repaired region is byte for byte the Zen 4 fixture's (same registers, same layout).
    let region = |p: &str| -> Value {
        let j: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        let st: Value = serde_json::from_str(
            j["snapshots"]["cpu-manager"]["snapshots"]["0"]["snapshot_data"]["state"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        st["Kvm"]["xsave"].clone()
    };
    assert_eq!(region(rep.to_str().unwrap()), region(&ch(FILES[2])));
    // Every byte outside the vCPU state string is as it was; inside it, outside `xsave` and
    // leaf 0xD's offsets, too.
    let orig = std::fs::read_to_string(ch(FILES[1])).unwrap();
    let new = std::fs::read_to_string(&rep).unwrap();
    let cut = |t: &str| {
        let s = t.find("\"state\":\"{\\\"Kvm").unwrap();
        let e = s + t[s..].find("\"hyperv_synic\\\":false}}\"").unwrap();
        (t[..s].to_string(), t[e..].to_string())
    };
    assert_eq!(cut(&orig), cut(&new));
    // Writing over the input is refused; the input is unchanged.
    let copy = dir.join("in.json");
    std::fs::copy(ch(FILES[1]), &copy).unwrap();
    let c = copy.to_str().unwrap();
    let (rc, _, err) = xstate(&[
        "convert",
        c,
        "--to",
        "state-json",
        "--to-cpuid",
        &zen4,
        "-o",
        c,
    ]);
    assert_eq!(rc, 2, "{err}");
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), orig);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_ia32_xss_is_reported_as_incomplete() {
    // Zen 4 has XSAVES with CET_U/CET_S for IA32_XSS: the fixture's msrs list carries IA32_XSS
    // (as KVM's MSR list does); without it a restore leaves IA32_XSS 0 (the Firecracker
    // "Bad FPU state" class, issue 13 item 4).
    let zen4 = common::fixture("hwloc/AMD-19h-Zen4-2xEpyc-9654.txt");
    let orig = std::fs::read_to_string(ch(FILES[2])).unwrap();
    let (rc, out, _) = xstate(&["check", &ch(FILES[2]), "--to-cpuid", &zen4]);
    assert_eq!(rc, 0, "{out}");
    let entry = ",{\\\"index\\\":3488,\\\"data\\\":0}";
    assert!(orig.contains(entry), "fixture has no IA32_XSS entry");
    let dir = std::env::temp_dir().join(format!("xstate-ch-xss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("no-xss.json");
    std::fs::write(&p, orig.replacen(entry, "", 1)).unwrap();
    let (rc, out, _) = xstate(&["check", p.to_str().unwrap(), "--to-cpuid", &zen4, "--json"]);
    assert_eq!(rc, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rules: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["completeness.xss_missing"], "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_state_files_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("xstate-ch-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let orig = std::fs::read_to_string(ch(FILES[0])).unwrap();
    let p = dir.join("bad.json");
    let ps = p.to_str().unwrap();
    for len in [orig.len() / 3, orig.len() - 1] {
        std::fs::write(&p, &orig[..len]).unwrap();
        let (rc, _, err) = xstate(&["inspect", ps]);
        assert_eq!(rc, 2, "{err}");
    }
    // A region of 1023 words.
    let bad = orig.clone();
    let i = bad.find("\\\"region\\\":[").unwrap() + 12;
    let j = i + bad[i..].find(',').unwrap() + 1;
    std::fs::write(&p, format!("{}{}", &bad[..i], &bad[j..])).unwrap();
    let (rc, _, err) = xstate(&["inspect", ps]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("1023 words"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn firecracker_and_crosvm_files_are_named_not_misread() {
    let dir = std::env::temp_dir().join(format!("xstate-fc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("vmstate");
    let mut b = 0x0710_1984_8664_0000u64.to_le_bytes().to_vec();
    b.extend_from_slice(&6u64.to_le_bytes());
    b.extend_from_slice(b"7.0.0");
    b.extend_from_slice(&[0u8; 64]);
    std::fs::write(&p, &b).unwrap();
    let (rc, _, err) = xstate(&["inspect", p.to_str().unwrap()]);
    assert_eq!(rc, 2);
    assert!(
        err.contains("Firecracker vmstate") && err.contains("not read yet"),
        "{err}"
    );
    let cbor = [
        0xa2, 0x65, b'x', b's', b'a', b'v', b'e', 0x01, 0x64, b'x', b'c', b'r', b's', 0x02,
    ];
    std::fs::write(&p, cbor).unwrap();
    let (rc, _, err) = xstate(&[
        "check",
        p.to_str().unwrap(),
        "--to-cpuid",
        &common::fixture("hwloc/AMD-19h-Zen4-2xEpyc-9654.txt"),
    ]);
    assert_eq!(rc, 2);
    assert!(
        err.contains("crosvm") && err.contains("not read yet"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
