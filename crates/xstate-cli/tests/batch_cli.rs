//! `xstate batch`: many files in one process give, file by file, what the single commands
//! give (same output bytes, same lines), a failure on one file does not stop the others, and
//! the exit status is the worst of them.

mod common;

use common::{fixture, xstate};

fn snapshot() -> String {
    format!(
        "{}/../../examples/snapshots/avx512.xsnap",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn batch_convert_equals_single_converts() {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out, single) = (
        dir.path().join("in"),
        dir.path().join("out"),
        dir.path().join("single"),
    );
    for d in [&inp, &out, &single] {
        std::fs::create_dir(d).unwrap();
    }
    let zen5 = fixture("cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt");
    let mut files = Vec::new();
    for i in 0..5 {
        let p = inp.join(format!("v{i}.xsnap"));
        std::fs::copy(snapshot(), &p).unwrap();
        files.push(p.display().to_string());
    }
    // One damaged input in the middle: reported, the others still converted.
    let bad = inp.join("bad.xsnap");
    std::fs::write(&bad, b"XSNAP\0\0\0not a snapshot").unwrap();
    files.insert(2, bad.display().to_string());
    let mut args = vec![
        "batch",
        "--out-dir",
        out.to_str().unwrap(),
        "convert",
        "--to",
        "compacted",
        "--to-cpuid",
        &zen5,
        "--",
    ];
    args.extend(files.iter().map(String::as_str));
    let (code, stdout, stderr) = xstate(&args);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("xstate: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("bad.xsnap"), "{stderr}");
    for i in 0..5 {
        let f = inp.join(format!("v{i}.xsnap"));
        let o = single.join(format!("v{i}.xsnap.compacted"));
        let (c, s, e) = xstate(&[
            "convert",
            f.to_str().unwrap(),
            "--to",
            "compacted",
            "--to-cpuid",
            &zen5,
            "-o",
            o.to_str().unwrap(),
        ]);
        assert_eq!(c, 0, "{e}");
        let want = std::fs::read(&o).unwrap();
        let got = std::fs::read(out.join(format!("v{i}.xsnap.compacted"))).unwrap();
        assert_eq!(got, want, "file {i}");
        // The same report line, with the batch's output path.
        let line = stdout.lines().nth(i).unwrap();
        assert_eq!(
            line.split(": ").nth(1),
            s.trim_end().split(": ").nth(1),
            "{line} / {s}"
        );
    }
    // Outputs exist now: without --force each file is refused, none replaced.
    let (code, _, stderr) = xstate(&args);
    assert_eq!(code, 2);
    assert_eq!(stderr.matches("already exists").count(), 5, "{stderr}");
}

#[test]
fn batch_validate_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let zen5 = fixture("cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt");
    let good = dir.path().join("good.img");
    let (c, _, e) = xstate(&[
        "convert",
        &snapshot(),
        "--to",
        "standard",
        "--to-cpuid",
        &zen5,
        "-o",
        good.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{e}");
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[530] = 1; // reserved header byte
    let bad = dir.path().join("bad.img");
    std::fs::write(&bad, &bytes).unwrap();
    let (g, b) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let v = |files: &[&str]| {
        let mut a = vec![
            "batch",
            "validate",
            "--profile",
            "xrstor",
            "--cpuid",
            &zen5,
            "--xcr0",
            "0xe7",
            "--",
        ];
        a.extend_from_slice(files);
        xstate(&a)
    };
    assert_eq!(v(&[g, g]).0, 0);
    let (code, out, _) = v(&[g, b, g]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("header_reserved"), "{out}");
    // Usage errors once, before any work.
    let (code, _, err) = xstate(&["batch", "validate", "--bogus", "--", g, g]);
    assert_eq!(code, 2);
    assert_eq!(err.matches("xstate: error:").count(), 1, "{err}");
    assert!(err.contains("--bogus"), "{err}");
    let (code, _, err) = xstate(&["batch", "convert", "--to", "standard", "--", g]);
    assert_eq!(code, 2);
    assert!(err.contains("--out-dir"), "{err}");
    let (code, _, err) = xstate(&["batch", "validate", "--profile", "xrstor", g]);
    assert_eq!(code, 2);
    assert!(err.contains("after `--`"), "{err}");
}
