//! `xstate convert --to snapshot`, `convert SNAP --to standard --cpuid DEST`, `inspect`/`diff`
//! of snapshots and `xstate check` (exit 0 compatible, 1 incompatible, 2 usage/I-O), on the
//! fixture CPUs: Skylake-SP (opmask at 1088), Sapphire Rapids (AMX, PKRU) and this machine's
//! Zen 5 (opmask at 832).

mod common;
use common::{fixture, xstate};

use std::path::{Path, PathBuf};

use serde_json::Value;
use xstate::cpuid::CpuidDump;
use xstate::layout::Layout;
use xstate::snapshot::{ControlRegs, Snapshot};

const SKYLAKE: &str = "hwloc/Intel-Skylake-2xXeon6140.txt";
const SPR: &str = "hwloc/Intel-SapphireRapids-2xXeonMax9460.txt";
const ZEN5: &str = "cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt";

fn dump(rel: &str) -> CpuidDump {
    let p = fixture(rel);
    CpuidDump::parse(&std::fs::read_to_string(&p).unwrap(), &p).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xstate-snapcli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A standard image on `rel`'s layout: XSTATE_BV = `bv`, every byte of every present
/// component distinct from its neighbours.
fn write_image(rel: &str, xcr0: u64, bv: u64, path: &Path) -> Vec<u8> {
    let l = Layout::from_dump(&dump(rel));
    let fl = l.standard(xcr0).unwrap();
    let mut img = vec![0u8; fl.size as usize];
    img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    img[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    for id in xstate::components::bits(bv & !0x3) {
        let p = fl.placement(id).unwrap();
        let n = xstate::snapshot::content_len(id, p.size) as usize;
        for (i, b) in img[p.offset as usize..p.offset as usize + n]
            .iter_mut()
            .enumerate()
        {
            *b = (i as u8).wrapping_mul(7) ^ id;
        }
    }
    if bv & 2 != 0 {
        for (i, b) in img[160..416].iter_mut().enumerate() {
            *b = i as u8;
        }
    }
    img[512..520].copy_from_slice(&bv.to_le_bytes());
    std::fs::write(path, &img).unwrap();
    img
}

#[test]
fn intel_image_through_a_snapshot_file_to_the_amd_layout() {
    let img = tmp("sky.img");
    let snap = tmp("sky.xsnap");
    let out = tmp("zen.img");
    let orig = write_image(SKYLAKE, 0xe7, 0xe7, &img);
    let (code, o, e) = xstate(&[
        "convert",
        img.to_str().unwrap(),
        "--to",
        "snapshot",
        "-o",
        snap.to_str().unwrap(),
        "--cpuid",
        &fixture(SKYLAKE),
        "--xcr0",
        "0xe7",
    ]);
    assert_eq!(code, 0, "{o}{e}");
    let bytes = std::fs::read(&snap).unwrap();
    assert!(xstate::snapshot::is_snapshot(&bytes));
    let (code, o, e) = xstate(&[
        "convert",
        snap.to_str().unwrap(),
        "--to",
        "standard",
        "-o",
        out.to_str().unwrap(),
        "--to-cpuid",
        &fixture(ZEN5),
    ]);
    assert_eq!(code, 0, "{o}{e}");
    let amd = std::fs::read(&out).unwrap();
    assert_eq!(amd.len(), 2432);
    assert_eq!(
        amd[832..896],
        orig[1088..1152],
        "opmask moved from 1088 to 832"
    );
    assert_eq!(
        amd[896..1408],
        orig[1152..1664],
        "ZMM_Hi256 moved from 1152 to 896"
    );
    assert_eq!(
        amd[1408..2432],
        orig[1664..2688],
        "Hi16_ZMM moved from 1664 to 1408"
    );
    assert_eq!(amd[160..416], orig[160..416]);
    // diff by meaning across the two layouts, and image vs snapshot.
    let (code, o, _) = xstate(&[
        "diff",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
        "--cpuid",
        &fixture(SKYLAKE),
        "--b-cpuid",
        &fixture(ZEN5),
    ]);
    assert_eq!(code, 0, "{o}");
    let (code, o, _) = xstate(&[
        "diff",
        img.to_str().unwrap(),
        snap.to_str().unwrap(),
        "--cpuid",
        &fixture(SKYLAKE),
    ]);
    assert_eq!(code, 0, "{o}");
    // A changed register is a difference.
    let mut changed = amd.clone();
    changed[840] ^= 1; // k1
    std::fs::write(&out, &changed).unwrap();
    let (code, o, _) = xstate(&[
        "diff",
        snap.to_str().unwrap(),
        out.to_str().unwrap(),
        "--cpuid",
        &fixture(ZEN5),
    ]);
    assert_eq!(code, 1, "{o}");
    assert!(o.contains("k1"), "{o}");
    // inspect shows the snapshot's registers and what it carries.
    let (code, o, e) = xstate(&["inspect", snap.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{e}");
    let v: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["xstate_bv"], "0xe7");
    assert_eq!(v["snapshot"]["xcr0"], "0xe7");
    assert_eq!(v["snapshot"]["source"]["vendor"], "GenuineIntel");
    let k0 = u64::from_le_bytes(orig[1088..1096].try_into().unwrap());
    assert_eq!(v["components"]["opmask"]["k"][0], format!("{k0:#x}"));
}

fn spr_snapshot(path: &Path) {
    let d = dump(SPR);
    let l = Layout::from_dump(&d);
    let bv = 0x3 | 1 << 9 | 1 << 17 | 1 << 18;
    let fl = l.standard(0x602e7).unwrap();
    let mut img = vec![0u8; fl.size as usize];
    img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    img[fl.placement(9).unwrap().offset as usize] = 0x54; // PKRU
    img[fl.placement(17).unwrap().offset as usize] = 1; // TILECFG palette 1
    img[fl.placement(18).unwrap().offset as usize] = 0x99;
    img[512..520].copy_from_slice(&(bv as u64).to_le_bytes());
    let s = Snapshot::from_image(&img, &d, &ControlRegs::with_xcr0(0x602e7)).unwrap();
    std::fs::write(path, s.encode().unwrap()).unwrap();
}

#[test]
fn check_refuses_an_amx_pkru_snapshot_naming_the_components() {
    let snap = tmp("spr.xsnap");
    spr_snapshot(&snap);
    let (code, o, e) = xstate(&[
        "check",
        snap.to_str().unwrap(),
        "--to-cpuid",
        &fixture(ZEN5),
    ]);
    assert_eq!(code, 1, "{o}{e}");
    for name in ["pkru", "xtilecfg", "xtiledata"] {
        assert!(o.contains(&format!("] {name}:")), "{name} not named:\n{o}");
    }
    let (code, o, _) = xstate(&[
        "check",
        snap.to_str().unwrap(),
        "--to-cpuid",
        &fixture(ZEN5),
        "--json",
    ]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["compatible"], false);
    let named: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["component"].as_str())
        .collect();
    assert_eq!(named, vec!["pkru", "xtilecfg", "xtiledata"]);
    // The same snapshot is compatible with its own CPU.
    let (code, o, _) = xstate(&["check", snap.to_str().unwrap(), "--to-cpuid", &fixture(SPR)]);
    assert_eq!(code, 0, "{o}");
    // ... unless the guest is not offered AMX.
    let (code, o, _) = xstate(&[
        "check",
        snap.to_str().unwrap(),
        "--to-cpuid",
        &fixture(SPR),
        "--xcr0",
        "0x2e7",
    ]);
    assert_eq!(code, 1, "{o}");
    assert!(o.contains("component.not_offered"), "{o}");
}

#[test]
fn check_kvm_refuses_an_amx_pkru_snapshot_here() {
    if !Path::new("/dev/kvm").exists() {
        println!("skipped: /dev/kvm is not present");
        return;
    }
    let snap = tmp("spr-kvm.xsnap");
    spr_snapshot(&snap);
    let (code, o, e) = xstate(&["check", snap.to_str().unwrap(), "--kvm", "--json"]);
    if code == 2 {
        println!("skipped: KVM not usable here: {e}");
        return;
    }
    assert_eq!(code, 1, "{o}{e}");
    let v: Value = serde_json::from_str(&o).unwrap();
    let named: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["component"].as_str())
        .collect();
    let guest_xcr0 = u64::from_str_radix(
        v["destination"]["guest_xcr0"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    for (bit, name) in [(9, "pkru"), (17, "xtilecfg"), (18, "xtiledata")] {
        if guest_xcr0 & (1 << bit) == 0 {
            assert!(named.contains(&name), "{name} not named: {named:?}");
        }
    }
    assert!(
        !named.is_empty(),
        "this KVM supports PKRU and AMX: nothing to refuse"
    );
}

#[test]
fn check_usage_and_io_errors_exit_2() {
    let (code, _, _) = xstate(&["check", "/nonexistent.xsnap", "--to-cpuid", &fixture(ZEN5)]);
    assert_eq!(code, 2);
    let junk = tmp("junk.xsnap");
    std::fs::write(&junk, b"not a snapshot at all").unwrap();
    let (code, _, e) = xstate(&[
        "check",
        junk.to_str().unwrap(),
        "--to-cpuid",
        &fixture(ZEN5),
    ]);
    assert_eq!(code, 2);
    assert!(
        e.contains("is a text file") && e.contains("expected an .xsnap snapshot"),
        "{e}"
    );
    let (code, _, _) = xstate(&["check", junk.to_str().unwrap()]);
    assert_eq!(code, 2, "neither --kvm nor --cpuid");
    let (code, _, _) = xstate(&[
        "check",
        junk.to_str().unwrap(),
        "--kvm",
        "--to-cpuid",
        &fixture(ZEN5),
    ]);
    assert_eq!(code, 2, "--kvm with --cpuid");
}

#[test]
fn validate_profile_snapshot_reports_every_violation() {
    let good = tmp("good.xsnap");
    spr_snapshot(&good);
    let (code, o, _) = xstate(&["validate", good.to_str().unwrap(), "--profile", "snapshot"]);
    assert_eq!(code, 0, "{o}");
    let mut s = Snapshot::decode(&std::fs::read(&good).unwrap()).unwrap();
    s.components.insert(9, vec![0; 4]); // PKRU holds 8 bytes
    s.xcr0 &= !(1 << 18); // TILECFG without TILEDATA
    s.legacy.mxcsr = 0x1_0000;
    let bad = tmp("bad.xsnap");
    std::fs::write(&bad, s.encode().unwrap()).unwrap();
    let (code, o, _) = xstate(&[
        "validate",
        bad.to_str().unwrap(),
        "--profile",
        "snapshot",
        "--json",
    ]);
    assert_eq!(code, 1, "{o}");
    let v: Value = serde_json::from_str(&o).unwrap();
    let rules: Vec<&str> = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["rule"].as_str().unwrap())
        .collect();
    for want in [
        "xcr0.amx_pair",
        "component.size",
        "component.not_enabled",
        "legacy.mxcsr_reserved",
    ] {
        assert!(rules.contains(&want), "{want} missing: {rules:?}");
    }
    let size = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["rule"] == "component.size")
        .unwrap();
    assert_eq!(size["location"], "components[9]");
    // A damaged file: one `decode` violation naming the CRC.
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&bad, &bytes).unwrap();
    let (code, o, _) = xstate(&["validate", bad.to_str().unwrap(), "--profile", "snapshot"]);
    assert_eq!(code, 1);
    assert!(o.contains("[decode]") && o.contains("CRC-32"), "{o}");
}

#[test]
fn kvm_cpuid_host_minus_avx512_on_the_fixtures() {
    let (code, o, e) = xstate(&[
        "kvm",
        "cpuid",
        "--cpuid",
        &fixture(SKYLAKE),
        "--without",
        "avx512",
        "--json",
    ]);
    assert_eq!(code, 0, "{e}");
    let v: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["xcr0"], "0x21f");
    let l = Layout::from_dump(&dump(SKYLAKE));
    assert_eq!(v["standard_size"], l.standard(0x21f).unwrap().size);
    let d0 = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["leaf"] == "0xd" && e["subleaf"] == "0x0")
        .unwrap();
    assert_eq!(d0["eax"], "0x21f");
    assert_eq!(d0["ecx"], format!("{:#x}", l.standard(0x21f).unwrap().size));
    let cleared: Vec<&str> = v["cleared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["feature"].as_str().unwrap())
        .collect();
    for f in ["AVX512F", "AVX512DQ", "AVX512CD", "AVX512BW", "AVX512VL"] {
        assert!(cleared.contains(&f), "{f} not cleared: {cleared:?}");
    }
    // This machine's kind: 832 bytes without AVX-512.
    let (code, o, _) = xstate(&[
        "kvm",
        "cpuid",
        "--cpuid",
        &fixture(ZEN5),
        "--without",
        "avx512",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(
        (v["xcr0"].as_str(), v["standard_size"].as_u64()),
        (Some("0x7"), Some(832))
    );
    // Human output and usage errors.
    let (code, o, _) = xstate(&[
        "kvm",
        "cpuid",
        "--cpuid",
        &fixture(SPR),
        "--with",
        "x87,sse,avx",
    ]);
    assert_eq!(code, 0);
    assert!(o.contains("guest XCR0 0x7"), "{o}");
    let (code, _, e) = xstate(&[
        "kvm",
        "cpuid",
        "--cpuid",
        &fixture(ZEN5),
        "--without",
        "ymm",
    ]);
    assert_eq!(code, 2);
    assert!(e.contains("ymm"), "{e}");
    let (code, _, e) = xstate(&["kvm", "cpuid", "--cpuid", &fixture(ZEN5), "--with", "amx"]);
    assert_eq!(code, 2);
    assert!(e.contains("xtilecfg"), "{e}");
}
