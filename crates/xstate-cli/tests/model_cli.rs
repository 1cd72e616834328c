//! `xstate model`: the worked examples of the model's crate docs (`xstate::model`), each
//! checked against what the SDM pseudo-code says, on fixed CPUID dumps (this machine's kind,
//! AMD Zen 5, and an Intel Sapphire Rapids for AMX/XFD).

mod common;
use common::{fixture, xstate};

use std::path::PathBuf;

use serde_json::Value;

fn zen5() -> String {
    fixture("cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt")
}

fn spr() -> String {
    fixture("hwloc/Intel-SapphireRapids-2xXeonMax9460.txt")
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d =
            std::env::temp_dir().join(format!("xstate-model-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn q(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A standard-form state: x87 init, MXCSR 0x1F80, XMM0 = 0x11 × 16, XSTATE_BV = SSE.
fn state_xmm0(len: usize) -> Vec<u8> {
    let mut s = vec![0u8; len];
    s[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    s[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    s[160..176].fill(0x11);
    s[512..520].copy_from_slice(&2u64.to_le_bytes());
    s
}

/// Worked example 1 (SDM Vol. 1 §13.7): XSAVE with RFBM = 3 writes x87 (init values) and SSE
/// (MXCSR, MXCSR_MASK, XMM0-15); XSTATE_BV[1:0] := XINUSE[1:0] = 10b, its other bits and
/// every other byte (416..511, the rest of the header, the extended area) stay as they were.
#[test]
fn example_xsave_rfbm_3() {
    let d = Dir::new("ex1");
    let st = d.file("state.bin", &state_xmm0(2432));
    let mem = d.file("mem.bin", &[0xff; 2432]);
    let out = d.path("out.bin");
    let z = zen5();
    let (code, stdout, err) = xstate(&[
        "model", "--insn", "xsave", "--state", &st, "--mem", &mem, "-o", &out, "--rfbm", "0x3",
        "--cpuid", &z, "--xcr0", "0xe7", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["changed_ranges"],
        serde_json::json!(["0..28", "30..416", "512..513"])
    );
    let o = std::fs::read(&out).unwrap();
    assert_eq!(&o[0..2], &[0x7f, 0x03], "FCW init");
    assert_eq!(&o[24..28], &0x1f80u32.to_le_bytes());
    assert_eq!(&o[160..176], &[0x11; 16]);
    assert!(o[416..512].iter().all(|&b| b == 0xff));
    assert_eq!(q(&o, 512), 0xffff_ffff_ffff_fffe);
    assert!(o[520..].iter().all(|&b| b == 0xff));
}

/// Worked example 2 (SDM Vol. 1 §13.10): XSAVEC of the same state with RFBM = all ones:
/// XSTATE_BV = RFBM & XINUSE = 0x2, XCOMP_BV = XCR0 | bit 63; x87 is not in use so its bytes
/// are not written (init optimization); only XSTATE_BV and XCOMP_BV of the header are written.
#[test]
fn example_xsavec_init_optimization() {
    let d = Dir::new("ex2");
    let st = d.file("state.bin", &state_xmm0(2432));
    let mem = d.file("mem.bin", &[0xff; 2432]);
    let out = d.path("out.bin");
    let z = zen5();
    let (code, _, err) = xstate(&[
        "model", "--insn", "xsavec", "--state", &st, "--mem", &mem, "-o", &out, "--cpuid", &z,
        "--xcr0", "0xe7",
    ]);
    assert_eq!(code, 0, "{err}");
    let o = std::fs::read(&out).unwrap();
    assert!(o[0..24].iter().all(|&b| b == 0xff), "x87 not written");
    assert_eq!(&o[160..176], &[0x11; 16]);
    assert_eq!(q(&o, 512), 0x2);
    assert_eq!(q(&o, 520), 0x8000_0000_0000_00e7);
    assert!(o[528..].iter().all(|&b| b == 0xff));
}

/// Worked example 3 (SDM Vol. 1 §13.8.1): a standard-form XRSTOR with XCOMP_BV ≠ 0 raises
/// #GP: exit status 3, the rule in JSON, no output file.
#[test]
fn example_xrstor_gp_on_xcomp_bv() {
    let d = Dir::new("ex3");
    let mut img = state_xmm0(2432);
    img[520] = 1;
    let mem = d.file("img.bin", &img);
    let out = d.path("out.bin");
    let z = zen5();
    let (code, stdout, _) = xstate(&[
        "model", "--insn", "xrstor", "--mem", &mem, "-o", &out, "--cpuid", &z, "--xcr0", "0xe7",
        "--json",
    ]);
    assert_eq!(code, 3);
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["fault"], "#GP");
    assert!(v["rule"].as_str().unwrap().contains("§13.8.1"));
    assert!(!std::path::Path::new(&out).exists());
}

/// Worked example 4 (SDM Vol. 1 §13.8.2): a compacted XRSTOR with RFBM[1] = 1 and
/// XSTATE_BV[1] = 0 initializes SSE and sets MXCSR to 0x1F80 whatever bytes 24..27 hold; the
/// state after has XINUSE = 0.
#[test]
fn example_compacted_xrstor_initializes_mxcsr() {
    let d = Dir::new("ex4");
    let st = d.file("state.bin", &state_xmm0(2432));
    let mut img = vec![0u8; 2432];
    img[24..28].copy_from_slice(&0x1fc0u32.to_le_bytes());
    img[520..528].copy_from_slice(&0x8000_0000_0000_0007u64.to_le_bytes());
    let mem = d.file("img.bin", &img);
    let out = d.path("out.bin");
    let z = zen5();
    let (code, stdout, err) = xstate(&[
        "model", "--insn", "xrstor", "--state", &st, "--mem", &mem, "-o", &out, "--cpuid", &z,
        "--xcr0", "0xe7", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["mxcsr_after"], "0x1f80");
    assert_eq!(v["xinuse_after"], "0x0");
    let o = std::fs::read(&out).unwrap();
    assert_eq!(&o[24..28], &0x1f80u32.to_le_bytes());
    assert_eq!(&o[160..176], &[0; 16], "XMM0 initialized");
    assert_eq!(q(&o, 512), 0);
}

/// Worked example 5 (SDM Vol. 2 XSAVES): XSAVES at CPL 3 raises #GP.
#[test]
fn example_xsaves_at_cpl3() {
    let d = Dir::new("ex5");
    let mem = d.file("mem.bin", &[0; 2432]);
    let out = d.path("out.bin");
    let z = zen5();
    let (code, stdout, _) = xstate(&[
        "model", "--insn", "xsaves", "--mem", &mem, "-o", &out, "--cpuid", &z, "--xcr0", "0xe7",
        "--cpl", "3", "--json",
    ]);
    assert_eq!(code, 3);
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["fault"], "#GP");
}

/// Worked example 6 (SDM Vol. 1 §13.14, the amx_test scenario): on Sapphire Rapids with XFD
/// arming TILEDATA, XSAVEC of a state whose tiles hold data writes XSTATE_BV[18] = 0 but keeps
/// XCOMP_BV[18] = 1; restoring that data (XSTATE_BV[18] = 1) raises #NM.
#[test]
fn example_amx_with_xfd() {
    let s = spr();
    if !std::path::Path::new(&s).exists() {
        println!("skipped: no Sapphire Rapids fixture at {s}");
        return;
    }
    let d = Dir::new("ex6");
    // Standard layout of SPR: TILECFG at 2752, TILEDATA at 2816, size 11008.
    let mut st = vec![0u8; 11008];
    st[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    st[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    st[2752] = 1;
    st[2816..2816 + 8192].fill(0x5a);
    st[512..520].copy_from_slice(&0x60000u64.to_le_bytes());
    let stf = d.file("state.bin", &st);
    let mem = d.file("mem.bin", &[0xee; 10752]);
    let out = d.path("out.bin");
    let (code, _, err) = xstate(&[
        "model", "--insn", "xsavec", "--state", &stf, "--mem", &mem, "-o", &out, "--cpuid", &s,
        "--xcr0", "0x602e7", "--xfd", "0x40000",
    ]);
    assert_eq!(code, 0, "{err}");
    let o = std::fs::read(&out).unwrap();
    assert_eq!(q(&o, 512), 0x20000, "XSTATE_BV: TILECFG only");
    assert_eq!(q(&o, 520), 0x8000_0000_0006_02e7, "XCOMP_BV keeps bit 18");
    // The same image with XSTATE_BV[18] = 1, restored with XFD armed: #NM.
    // XSAVEC does not write header bytes 16..63: zero them, or the restore's #GP comes first.
    let mut img = o.clone();
    img[512..520].copy_from_slice(&0x60000u64.to_le_bytes());
    img[528..576].fill(0);
    let imgf = d.file("img.bin", &img);
    let faulted = d.path("faulted.bin");
    let (code, stdout, _) = xstate(&[
        "model", "--insn", "xrstor", "--mem", &imgf, "-o", &faulted, "--cpuid", &s, "--xcr0",
        "0x602e7", "--xfd", "0x40000", "--json",
    ]);
    assert_eq!(code, 3);
    assert!(
        !std::path::Path::new(&faulted).exists(),
        "a fault wrote {faulted}"
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["fault"], "#NM");
    assert!(v["detail"]
        .as_str()
        .unwrap()
        .contains("IA32_XFD_ERR |= 0x40000"));
}
