//! `xstate inspect`, `validate`, `convert` and `diff` run as a user would, on images built with
//! the library for the layouts of real CPUs (the fixture dumps of crates/xstate/tests/fixtures:
//! this project's Zen 5 and an Intel Sapphire Rapids).

mod common;
use common::xstate;

use std::path::PathBuf;

use serde_json::Value;
use xstate::cpuid::CpuidDump;
use xstate::image::XsaveImage;
use xstate::layout::Layout;

const ZEN5: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../xstate/tests/fixtures/cpuid/cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt"
);
const SPR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../xstate/tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt"
);

fn layout(path: &str) -> Layout {
    let text = std::fs::read_to_string(path).unwrap();
    Layout::from_dump(&CpuidDump::parse(&text, path).unwrap())
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xstate-image-cmds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write(name: &str, bytes: &[u8]) -> String {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

/// A Zen 5 standard image with known registers in x87, SSE, AVX and opmask.
fn zen5_image() -> XsaveImage {
    let l = layout(ZEN5);
    let mut img = XsaveImage::new(&l.standard(0xe7).unwrap());
    img.set_fcw(0x27f);
    img.set_st(1, (0x3fffu128 << 64) | (1u128 << 63)).unwrap(); // 1.0
    img.set_xmm(2, 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10)
        .unwrap();
    img.set_ymm_hi(15, 0xffu128 << 120).unwrap();
    img.set_k(7, 0x8000_0000_0000_0001).unwrap();
    img.set_mxcsr(0x1fc0);
    img.set_mxcsr_mask(0xffff);
    img
}

#[test]
fn inspect_json_contract() {
    let f = write("inspect.bin", zen5_image().as_bytes());
    let (code, out, err) = xstate(&["inspect", &f, "--cpuid", ZEN5, "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["form"], "standard");
    assert_eq!(j["xstate_bv"], "0x27");
    assert_eq!(j["xcomp_bv"], "0x0");
    assert_eq!(j["size"], 2432);
    let c = &j["components"];
    let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["x87", "sse", "avx", "opmask"]);
    assert_eq!(c["x87"]["fcw"], "0x27f");
    assert_eq!(c["x87"]["fsw"], "0x0");
    assert_eq!(c["x87"]["ftw"], "0x0");
    assert_eq!(c["x87"]["st"].as_array().unwrap().len(), 8);
    assert_eq!(c["x87"]["st"][1], "0x3fff8000000000000000");
    assert_eq!(c["sse"]["mxcsr"], "0x1fc0");
    assert_eq!(c["sse"]["mxcsr_mask"], "0xffff");
    assert_eq!(c["sse"]["xmm"].as_array().unwrap().len(), 16);
    assert_eq!(c["sse"]["xmm"][2], "0x102030405060708090a0b0c0d0e0f10");
    assert_eq!(c["avx"]["ymm_hi"][15], "0xff000000000000000000000000000000");
    assert_eq!(c["opmask"]["k"].as_array().unwrap().len(), 8);
    assert_eq!(c["opmask"]["k"][7], "0x8000000000000001");
    // Human output: masks decoded, x87 in decimal.
    let (code, out, _) = xstate(&["inspect", &f, "--cpuid", ZEN5]);
    assert_eq!(code, 0);
    assert!(out.contains("XSTATE_BV 0x27 (x87,sse,avx,opmask)"), "{out}");
    assert!(
        out.contains("st1        0x3fff8000000000000000 (1)"),
        "{out}"
    );
    assert!(out.contains("DAZ"), "{out}");
    // Vector registers assembled from XMM and the YMM upper halves.
    assert!(
        out.contains("ymm2        0x102030405060708090a0b0c0d0e0f10\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("ymm15       0xff{}\n", "0".repeat(62))),
        "{out}"
    );
}

#[test]
fn inspect_compacted_and_broken_inputs() {
    let l = layout(ZEN5);
    let img = xstate::convert::convert(&zen5_image(), &l.compacted(0x27).unwrap()).unwrap();
    let f = write("inspect-c.bin", img.as_bytes());
    let (code, out, err) = xstate(&["inspect", &f, "--cpuid", ZEN5, "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["form"], "compacted");
    assert_eq!(j["xcomp_bv"], "0x8000000000000027");
    assert_eq!(j["size"], 896);
    assert_eq!(j["components"]["opmask"]["k"][7], "0x8000000000000001");
    // Too short: usage/IO error, exit 2.
    let f = write("short.bin", &[0u8; 100]);
    let (code, _, err) = xstate(&["inspect", &f, "--cpuid", ZEN5]);
    assert_eq!(code, 2);
    assert!(err.contains("576"), "{err}");
    // Missing file.
    let (code, _, _) = xstate(&["inspect", "/nonexistent/x.bin", "--cpuid", ZEN5]);
    assert_eq!(code, 2);
}

#[test]
fn validate_exit_codes_and_every_violation() {
    let mut img = zen5_image();
    // KVM_SET_XSAVE reads a whole `struct kvm_xsave` (4096 bytes): the image is padded as a
    // VMM's buffer is.
    let padded = |b: &[u8]| {
        let mut v = b.to_vec();
        v.resize(4096, 0);
        v
    };
    let f = write("valid.bin", &padded(img.as_bytes()));
    for p in ["xrstor", "kvm"] {
        let (code, out, err) = xstate(&[
            "validate",
            &f,
            "--profile",
            p,
            "--cpuid",
            ZEN5,
            "--xcr0",
            "0xe7",
        ]);
        assert_eq!(code, 0, "{p}: {out}{err}");
        assert!(out.starts_with("valid"), "{out}");
    }
    img.as_mut_bytes()[520] = 1; // XCOMP_BV
    img.as_mut_bytes()[560] = 1; // reserved byte 48 of the header
    img.as_mut_bytes()[514] = 2; // XSTATE_BV bit 17 (AMX TILECFG)
    let f = write("invalid.bin", &padded(img.as_bytes()));
    let (code, out, _) = xstate(&[
        "validate",
        &f,
        "--profile",
        "kvm",
        "--cpuid",
        ZEN5,
        "--xcr0",
        "0xe7",
        "--json",
    ]);
    assert_eq!(code, 1);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["valid"], false);
    let rules: Vec<&str> = j["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            "xstate_bv_unsupported",
            "xcomp_bv_not_zero",
            "header_reserved"
        ]
    );
    assert_eq!(j["violations"][2]["offset"], 560);
    // XRSTOR standard ignores header bytes 24..63 but not XCOMP_BV.
    let (code, out, _) = xstate(&[
        "validate",
        &f,
        "--profile",
        "xrstor",
        "--cpuid",
        ZEN5,
        "--xcr0",
        "0xe7",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("2 violations"), "{out}");
    assert!(out.contains("[xcomp_bv_not_zero] offset 520"), "{out}");
    // Usage error: unknown profile.
    let (code, _, _) = xstate(&["validate", &f, "--profile", "nope", "--cpuid", ZEN5]);
    assert_eq!(code, 2);
}

#[test]
fn convert_round_trip_and_cross_vendor() {
    let zen = layout(ZEN5);
    let img = zen5_image();
    let f = write("conv-src.bin", img.as_bytes());
    let c = tmp("conv-c.bin").display().to_string();
    let s = tmp("conv-s.bin").display().to_string();
    let (code, out, err) = xstate(&[
        "convert",
        &f,
        "--to",
        "compacted",
        "-o",
        &c,
        "--cpuid",
        ZEN5,
        "--xcr0",
        "0xe7",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("compacted, 2432 bytes"), "{out}");
    let (code, _, err) = xstate(&[
        "convert", &c, "--to", "standard", "-o", &s, "--cpuid", ZEN5, "--xcr0", "0xe7",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&s).unwrap(), img.as_bytes());
    // AMD -> Intel: opmask moves from 832 to 1088.
    let i = tmp("conv-intel.bin").display().to_string();
    let (code, _, err) = xstate(&[
        "convert",
        &f,
        "--to",
        "standard",
        "-o",
        &i,
        "--cpuid",
        ZEN5,
        "--to-cpuid",
        SPR,
        "--xcr0",
        "0x2e7",
    ]);
    assert_eq!(code, 0, "{err}");
    let intel = std::fs::read(&i).unwrap();
    assert_eq!(intel.len(), 2696);
    assert_eq!(
        &intel[1088 + 56..1096 + 56],
        &0x8000_0000_0000_0001u64.to_le_bytes()
    );
    let (code, out, _) = xstate(&["diff", &f, &i, "--cpuid", ZEN5, "--b-cpuid", SPR]);
    assert_eq!(code, 0, "{out}");
    // Intel image with AMX tile data -> AMD: an error naming the component.
    let spr = layout(SPR);
    let mut amx = XsaveImage::new(&spr.standard(0x602e7).unwrap());
    amx.set_tile_row(2, 3, &[7; 64]).unwrap();
    let fa = write("amx.bin", amx.as_bytes());
    let amx_out = tmp("conv-amx-out.bin").display().to_string();
    let (code, _, err) = xstate(&[
        "convert",
        &fa,
        "--to",
        "standard",
        "-o",
        &amx_out,
        "--cpuid",
        SPR,
        "--to-cpuid",
        ZEN5,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("xtiledata"), "{err}");
    assert!(
        !std::path::Path::new(&amx_out).exists(),
        "a failed convert left {amx_out}"
    );
    // FXSAVE out and back.
    let fx = tmp("conv.fx").display().to_string();
    let mut legacy_only = zen5_image();
    legacy_only.clear_component(2).unwrap();
    legacy_only.clear_component(5).unwrap();
    let fl = write("legacy.bin", legacy_only.as_bytes());
    let (code, _, err) = xstate(&["convert", &fl, "--to", "fxsave", "-o", &fx, "--cpuid", ZEN5]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&fx).unwrap().len(), 512);
    let (code, out, _) = xstate(&["diff", &fl, &fx, "--cpuid", ZEN5]);
    assert_eq!(code, 0, "{out}");
    let before = std::fs::read(&fx).unwrap();
    let (code, _, err) = xstate(&[
        "convert", &f, "--to", "fxsave", "-o", &fx, "--cpuid", ZEN5, "--force",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("avx"), "{err}");
    assert_eq!(
        std::fs::read(&fx).unwrap(),
        before,
        "a failed convert changed {fx}"
    );
    let _ = zen;
}

#[test]
fn diff_reports_registers() {
    let a = zen5_image();
    let mut b = a.clone();
    b.set_k(3, 5).unwrap();
    b.as_mut_bytes()[2000] = 0xff; // inside Hi16_ZMM, which is absent: no meaning
    let fa = write("diff-a.bin", a.as_bytes());
    let fb = write("diff-b.bin", b.as_bytes());
    let (code, out, _) = xstate(&["diff", &fa, &fb, "--cpuid", ZEN5, "--json"]);
    assert_eq!(code, 1);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["equal"], false);
    assert_eq!(j["differences"].as_array().unwrap().len(), 1);
    assert_eq!(j["differences"][0]["register"], "k3");
    assert_eq!(j["differences"][0]["a"], "0x0");
    assert_eq!(j["differences"][0]["b"], "0x5");
    let (code, out, _) = xstate(&["diff", &fa, &fa, "--cpuid", ZEN5]);
    assert_eq!(code, 0);
    assert!(out.contains("equal in meaning"));
}
