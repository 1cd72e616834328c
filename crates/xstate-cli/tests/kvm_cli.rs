//! `xstate kvm info` and `xstate kvm demo` on the real /dev/kvm (skipped with a printed reason
//! where it is absent).

mod common;
use common::xstate;

fn kvm_missing() -> bool {
    match xstate_kvm::unavailable() {
        Some(why) => {
            println!("skipped: {why}");
            true
        }
        None => false,
    }
}

#[test]
fn demo_json_contract_and_every_supported_component() {
    if kvm_missing() {
        let (code, _, err) = xstate(&["kvm", "demo", "--json"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("KVM is not available"), "{err}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("xstate-kvm-cli-{}", std::process::id()));
    let (code, out, err) = xstate(&["kvm", "demo", "--json", "--keep", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["ok"], true);
    assert!(v["kvm"]["xsave2_size"].as_u64().unwrap() >= 4096);
    let xcr0 = v["kvm"]["guest_xcr0"].as_str().unwrap();
    assert!(xcr0.starts_with("0x"));
    let xcr0 = u64::from_str_radix(&xcr0[2..], 16).unwrap();
    let verified: Vec<&str> = v["components_verified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // Every user component the guest XCR0 enables among x87, SSE, AVX and AVX-512 (on this
    // project's machines: all six).
    let names = [
        "x87",
        "sse",
        "avx",
        "",
        "",
        "opmask",
        "zmm_hi256",
        "hi16_zmm",
    ];
    for (bit, name) in names.iter().enumerate() {
        if !name.is_empty() && xcr0 & (1 << bit) != 0 {
            assert!(verified.contains(name), "{name} missing from {verified:?}");
        }
    }
    assert_eq!(v["mismatches"].as_array().unwrap().len(), 0);
    let snap = v["snapshot"].as_str().unwrap();
    let len = std::fs::metadata(snap).expect("kept snapshot").len();
    assert_eq!(Some(len), v["snapshot_bytes"].as_u64());
    assert!(dir.join("vm_b_saved.xsave").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_reports_the_kvm_numbers() {
    if kvm_missing() {
        let (code, _, _) = xstate(&["kvm", "info"]);
        assert_eq!(code, 2);
        return;
    }
    let (code, out, err) = xstate(&["kvm", "info", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["api_version"], 12);
    assert!(v["xsave2_size"].as_u64().unwrap() >= 4096);
    let g = v["guest_xcr0"].as_str().unwrap();
    let g = u64::from_str_radix(g.trim_start_matches("0x"), 16).unwrap();
    assert_eq!(g & 3, 3, "x87 and SSE are always supported");
    let listed = v["msrs"].as_array().unwrap().len();
    let not_listed = v["msrs_not_listed"].as_array().unwrap().len();
    assert_eq!(listed + not_listed, xstate_kvm::msr::XSTATE_MSRS.len());
}

#[test]
fn cpuid_is_wired() {
    let (code, out, err) = xstate(&["kvm", "cpuid", "--without", "avx512", "--json"]);
    if cfg!(not(target_arch = "x86_64")) {
        println!("skipped: --host needs x86-64");
        return;
    }
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(v.is_object(), "{out}");
}
