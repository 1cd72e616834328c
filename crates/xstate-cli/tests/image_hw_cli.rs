//! `xstate inspect --host` shows the values the CPU saved: random registers are loaded with
//! XRSTOR, saved with XSAVE and XSAVEC on this machine, and every register of the JSON output
//! is compared with the value written. Skips with a printed reason without XSAVE (or XSAVEC).
#![cfg(target_arch = "x86_64")]

use std::process::Command;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use xstate::components::{bits, Component};
use xstate::hw::{AlignedBuf, Host, Restore, SaveOp, Sequence};
use xstate::image::registers::{le_hex, registers};
use xstate::image::XsaveImage;

fn file(bytes: &[u8], name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("xstate-image-hw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn xstate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xstate"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn inspect_json(bytes: &[u8], name: &str) -> Value {
    let p = file(bytes, name);
    let (code, out) = xstate(&["inspect", &p, "--host", "--json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn inspect_shows_the_values_written_by_xrstor() {
    let host = Host::detect();
    if !host.xsave_usable() {
        println!("skipped: XSAVE is not usable on this CPU/OS");
        return;
    }
    let l = host.layout();
    let xcr0 = host.xcr0();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut src = XsaveImage::new(&l.standard(xcr0).unwrap());
    // Every component of XCR0 with random non-zero values; exceptions masked, PKRU allowing
    // key 0, no component the OS may arm with XFD (its restore would raise #NM) and no AMX
    // (TILECFG must be a valid configuration).
    let xfd = if host.has_xfd() {
        bits(xcr0)
            .filter(|&id| l.geometry(id).xfd)
            .fold(0u64, |m, id| m | 1 << id)
    } else {
        0
    } | (xcr0 & xstate::components::mask::AMX);
    let xcr0 = xcr0 & !xfd;
    for id in bits(xcr0) {
        match id {
            9 => src.set_pkru((rng.gen::<u32>() & !3) | 4).unwrap(),
            0 => {
                src.set_fcw((rng.gen::<u16>() & 0x1f3f) | 0x7f);
                for i in 0..8 {
                    src.set_st(i, rng.gen::<u128>() & ((1u128 << 80) - 1))
                        .unwrap();
                }
                src.set_ftw(0xff);
            }
            1 => {
                for i in 0..16 {
                    src.set_xmm(i, rng.gen::<u128>() | 1).unwrap();
                }
            }
            _ => {
                let p = src.placement(id).unwrap();
                let data: Vec<u8> = (0..p.size).map(|_| rng.gen::<u8>() | 1).collect();
                src.set_component_bytes(id, &data).unwrap();
            }
        }
    }
    src.as_mut_bytes()[24..28].copy_from_slice(&(0x1f80u32 | 0x6000).to_le_bytes()); // RC toward zero
    let mut ops = vec![(SaveOp::Xsave, host.standard_size())];
    if host.has_xsavec() {
        ops.push((SaveOp::Xsavec, host.compacted_size()));
    } else {
        println!("skipped: XSAVEC part (CPUID.(0xD,1):EAX[1] = 0)");
    }
    let mut saved: Vec<(SaveOp, Vec<u8>)> = Vec::new();
    for (op, size) in ops {
        let mut mem = AlignedBuf::from_bytes(src.as_bytes());
        let mut dst = AlignedBuf::new(size as usize);
        host.sequence(Sequence {
            restore: Some(Restore::Xrstor {
                mem: &mut mem,
                rfbm: u64::MAX,
            }),
            save: Some((op, &mut dst, u64::MAX)),
            ..Sequence::default()
        })
        .unwrap();
        let j = inspect_json(&dst, op.name());
        assert_eq!(
            j["form"],
            if op == SaveOp::Xsavec {
                "compacted"
            } else {
                "standard"
            }
        );
        assert_eq!(
            j["xstate_bv"],
            format!("{xcr0:#x}"),
            "{op:?}: every component in use"
        );
        let mut checked = 0;
        for id in bits(xcr0) {
            let c = &j["components"][Component::name_of(id).as_str()];
            for spec in registers(id) {
                if matches!(spec.name, "mxcsr_mask" | "fsw" | "fop" | "fip" | "fdp") {
                    continue; // not written by the test (AMD saves FIP/FDP/FOP only on errors)
                }
                for i in 0..spec.count as usize {
                    let want = le_hex(&src.register(id, spec.name, i).unwrap());
                    let got = if spec.array {
                        &c[spec.name][i]
                    } else {
                        &c[spec.name]
                    };
                    assert_eq!(
                        got,
                        &Value::String(want),
                        "{op:?} {} {}{i}",
                        Component::name_of(id),
                        spec.name
                    );
                    checked += 1;
                }
            }
        }
        println!(
            "{}: inspect shows all {checked} registers written",
            op.name()
        );
        saved.push((op, dst.to_vec()));
    }
    // validate --host accepts what this CPU saved, with the profile of its form, and refuses
    // it after a reserved header byte is set; diff --host finds XSAVE and XSAVEC equal.
    for (op, bytes) in &saved {
        let profile = if *op == SaveOp::Xsavec {
            "xrstor-compacted"
        } else {
            "xrstor"
        };
        let f = file(bytes, &format!("{}-v", op.name()));
        let (code, out) = xstate(&["validate", &f, "--profile", profile, "--host"]);
        assert_eq!(code, 0, "{out}");
        let mut bad = bytes.clone();
        bad[530] = 1;
        let fb = file(&bad, &format!("{}-bad", op.name()));
        let (code, out) = xstate(&["validate", &fb, "--profile", profile, "--host"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("[header_reserved] offset 528"), "{out}");
    }
    if let [(_, a), (_, b)] = &saved[..] {
        let (fa, fb) = (file(a, "diff-a"), file(b, "diff-b"));
        let (code, out) = xstate(&["diff", &fa, &fb, "--host"]);
        assert_eq!(code, 0, "{out}");
    }
    match xstate_kvm::unavailable() {
        Some(why) => println!("skipped: validate --profile kvm --host ({why})"),
        None => {
            let f = file(&saved[0].1, "kvm");
            let (code, out) = xstate(&["validate", &f, "--profile", "kvm", "--host"]);
            assert_eq!(code, 0, "{out}");
            println!("{}", out.trim());
        }
    }
}
