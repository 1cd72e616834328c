//! One contract for every command (issue 9): the exit status the README gives (0 yes, 1 a
//! negative verdict, 2 usage or I/O, 3 a modelled fault), every `--json` output valid against
//! its schema in `schemas/` (checked with the `jsonschema` crate), a full standard output is
//! exit 2 with a message and no panic, a closed pipe ends quietly, and outputs never destroy
//! an input or leave a partial file (ENOSPC on a small tmpfs where the test runs as root).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use xstate::cpuid::CpuidDump;
use xstate::image::XsaveImage;
use xstate::layout::Layout;

fn fixture(rel: &str) -> String {
    common::fixture(rel)
}

fn zen5() -> String {
    fixture("cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt")
}

fn spr() -> String {
    fixture("hwloc/Intel-SapphireRapids-2xXeonMax9460.txt")
}

fn layout(path: &str) -> Layout {
    let text = std::fs::read_to_string(path).unwrap();
    Layout::from_dump(&CpuidDump::parse(&text, path).unwrap())
}

fn run(args: &[&str], stdout: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xstate"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("run xstate")
}

fn kvm_unavailable() -> Option<String> {
    xstate_kvm::unavailable()
}

/// The files every case uses, in a private directory.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let w = Work {
            dir: tempfile::tempdir().unwrap(),
        };
        // A Zen 5 image with registers in x87, SSE, AVX and opmask.
        let l = layout(&zen5());
        let mut img = XsaveImage::new(&l.standard(0xe7).unwrap());
        img.set_fcw(0x27f);
        img.set_xmm(2, 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10)
            .unwrap();
        img.set_k(7, 0x8000_0000_0000_0001).unwrap();
        img.set_mxcsr_mask(0xffff);
        std::fs::write(w.p("zen5.img"), img.as_bytes()).unwrap();
        let mut other = img.clone();
        other.set_k(3, 5).unwrap();
        std::fs::write(w.p("zen5-other.img"), other.as_bytes()).unwrap();
        // XSTATE_BV naming a component outside XCR0: XRSTOR's #GP, an invalid image.
        let mut bad = img.as_bytes().to_vec();
        bad[512] |= 0x08;
        std::fs::write(w.p("bad.img"), bad).unwrap();
        // A Sapphire Rapids image with AMX tile data (its snapshot cannot go to Zen 5).
        let s = layout(&spr());
        let mut amx = XsaveImage::new(&s.standard(0x602e7).unwrap());
        amx.set_tile_row(2, 3, &[7; 64]).unwrap();
        std::fs::write(w.p("amx.img"), amx.as_bytes()).unwrap();
        std::fs::write(w.p("mem.bin"), [0u8; 4096]).unwrap();
        // Opmask (present, at 832..896) lies beyond the end.
        std::fs::write(w.p("short.img"), &img.as_bytes()[..800]).unwrap();
        // Zen 5 with opmask moved onto AVX (CPUID.(0xD,5).EBX = 0x240): overlapping components.
        let overlap: String = std::fs::read_to_string(zen5())
            .unwrap()
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("0x0000000d 0x05:") {
                    l.replace("ebx=0x00000340", "ebx=0x00000240")
                } else {
                    l.to_string()
                }
            })
            .map(|l| l + "\n")
            .collect();
        assert!(overlap.contains("ebx=0x00000240"), "the Zen 5 dump changed");
        std::fs::write(w.p("overlap.txt"), overlap).unwrap();
        let sim = serde_json::json!({"host": {"cpuid": w.s("overlap.txt")}, "steps": []});
        std::fs::write(w.p("overlap-sim.json"), sim.to_string()).unwrap();
        for (img, cpuid, snap) in [
            ("zen5.img", zen5(), "zen5.xsnap"),
            ("amx.img", spr(), "amx.xsnap"),
        ] {
            let o = run(
                &[
                    "convert",
                    &w.s(img),
                    "--to",
                    "snapshot",
                    "-o",
                    &w.s(snap),
                    "--cpuid",
                    &cpuid,
                ],
                Stdio::piped(),
            );
            assert_eq!(o.status.code(), Some(0), "{o:?}");
        }
        let script = serde_json::json!({
            "host": {"cpuid": zen5(), "xss": "0x0"},
            "guest": {"xcr0_max": "0xe7", "xss": "0x0"},
            "steps": [
                {"do": "create_vcpu", "vcpu": 0},
                {"do": "enter", "vcpu": 0},
                {"do": "xsetbv", "vcpu": 0, "value": "0xe7"},
                {"do": "dirty", "vcpu": 0, "component": "avx", "byte": "0x12"},
                {"do": "check", "vcpu": 0, "component": "avx", "expect": "0x12"}
            ]
        });
        std::fs::write(w.p("ok.json"), script.to_string()).unwrap();
        let mut failing = script.clone();
        failing["steps"][4]["expect"] = serde_json::json!("0x13");
        std::fs::write(w.p("fail.json"), failing.to_string()).unwrap();
        w
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }

    /// A fresh output path, unique per call.
    fn out(&self, tag: &str) -> String {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        self.s(&format!("out-{tag}-{}", N.fetch_add(1, Ordering::Relaxed)))
    }
}

/// One command line, its expected exit status and, for `--json`, its schema.
struct Case {
    args: Vec<String>,
    code: i32,
    schema: Option<&'static str>,
    /// The output is JSON lines (sim).
    lines: bool,
    /// Needs /dev/kvm.
    kvm: bool,
}

fn case(args: &[&str], code: i32, schema: Option<&'static str>) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        code,
        schema,
        lines: false,
        kvm: false,
    }
}

fn cases(w: &Work) -> Vec<Case> {
    let (z, s) = (zen5(), spr());
    let (img, other, bad, amx) = (
        w.s("zen5.img"),
        w.s("zen5-other.img"),
        w.s("bad.img"),
        w.s("amx.img"),
    );
    let (snap, amxsnap, mem) = (w.s("zen5.xsnap"), w.s("amx.xsnap"), w.s("mem.bin"));
    let missing = w.s("no-such-file");
    let mut v = vec![
        case(&["host"], 0, None),
        case(&["host", "--json"], 0, Some("host")),
        case(&["layout", "--cpuid", &s], 0, None),
        case(&["layout", "--cpuid", &s, "--json"], 0, Some("layout")),
        case(&["layout", "--cpuid", &missing], 2, None),
        case(&["layout", "--cpuid", &s, "--xcr0", "0x4"], 2, None),
        case(&["inspect", &img, "--cpuid", &z], 0, None),
        case(
            &["inspect", &img, "--cpuid", &z, "--json"],
            0,
            Some("inspect"),
        ),
        case(&["inspect", &snap, "--json"], 0, Some("inspect")),
        case(&["inspect", &missing, "--cpuid", &z], 2, None),
        // Truncated: a component present that the file does not hold.
        case(
            &["inspect", &w.s("short.img"), "--cpuid", &z, "--json"],
            1,
            Some("inspect"),
        ),
        // Inconsistent CPUID data: refused (1), or used for forensics and said so.
        case(&["inspect", &img, "--cpuid", &w.s("overlap.txt")], 1, None),
        // Every line prefixed through a pipe: a full stdout must still be exit 2.
        case(
            &[
                "inspect",
                &img,
                "--cpuid",
                &w.s("overlap.txt"),
                "--trust-cpuid",
            ],
            1,
            None,
        ),
        case(
            &[
                "inspect",
                &img,
                "--cpuid",
                &w.s("overlap.txt"),
                "--trust-cpuid",
                "--json",
            ],
            1, // the standard form refuses overlapping components: opmask unreadable
            Some("inspect"),
        ),
        case(
            &["layout", "--cpuid", &w.s("overlap.txt"), "--json"],
            1,
            Some("layout"),
        ),
        case(
            &[
                "check",
                &snap,
                "--to-cpuid",
                &w.s("overlap.txt"),
                "--trust-cpuid",
                "--json",
            ],
            1,
            Some("check"),
        ),
        case(
            &[
                "validate",
                &img,
                "--profile",
                "xrstor",
                "--cpuid",
                &z,
                "--json",
            ],
            0,
            Some("validate"),
        ),
        case(
            &[
                "validate",
                &bad,
                "--profile",
                "xrstor",
                "--cpuid",
                &z,
                "--json",
            ],
            1,
            Some("validate"),
        ),
        case(
            &["validate", &bad, "--profile", "kvm", "--cpuid", &z],
            1,
            None,
        ),
        case(
            &["validate", &snap, "--profile", "snapshot", "--json"],
            0,
            Some("validate"),
        ),
        case(&["validate", &img, "--profile", "nonsense"], 2, None),
        case(
            &[
                "convert",
                &img,
                "--to",
                "compacted",
                "-o",
                &w.out("c"),
                "--cpuid",
                &z,
                "--json",
            ],
            0,
            Some("convert"),
        ),
        case(
            &[
                "convert",
                &snap,
                "--to",
                "standard",
                "-o",
                &w.out("s"),
                "--to-cpuid",
                &s,
                "--json",
            ],
            0,
            Some("convert"),
        ),
        // The output is the input.
        case(
            &[
                "convert",
                &img,
                "--to",
                "compacted",
                "-o",
                &img,
                "--cpuid",
                &z,
            ],
            2,
            None,
        ),
        // AMX tile data has no place on Zen 5.
        case(
            &[
                "convert",
                &amx,
                "--to",
                "standard",
                "-o",
                &w.out("amx"),
                "--cpuid",
                &s,
                "--to-cpuid",
                &z,
            ],
            2,
            None,
        ),
        case(
            &["diff", &img, &img, "--cpuid", &z, "--json"],
            0,
            Some("diff"),
        ),
        case(
            &["diff", &img, &other, "--cpuid", &z, "--json"],
            1,
            Some("diff"),
        ),
        case(&["diff", &img, &other, "--cpuid", &z], 1, None),
        case(&["diff", &img, &missing, "--cpuid", &z], 2, None),
        case(
            &["check", &snap, "--to-cpuid", &s, "--json"],
            0,
            Some("check"),
        ),
        case(
            &["check", &amxsnap, "--to-cpuid", &z, "--json"],
            1,
            Some("check"),
        ),
        case(&["check", &amxsnap, "--to-cpuid", &z], 1, None),
        case(&["check", &snap], 2, None),
        case(&["check", &snap, "--kvm", "--to-cpuid", &z], 2, None),
        case(
            &[
                "model",
                "--insn",
                "xsave",
                "--mem",
                &mem,
                "-o",
                &w.out("m"),
                "--cpuid",
                &z,
                "--json",
            ],
            0,
            Some("model"),
        ),
        case(
            &[
                "model",
                "--insn",
                "xsave",
                "--mem",
                &mem,
                "-o",
                &w.out("m"),
                "--cpuid",
                &z,
                "--addr",
                "0x8",
                "--json",
            ],
            3,
            Some("model"),
        ),
        case(
            &[
                "model", "--insn", "xsave", "--mem", &mem, "-o", &mem, "--cpuid", &z,
            ],
            2,
            None,
        ),
        case(&["sim", &w.s("ok.json")], 0, None),
        Case {
            lines: true,
            ..case(&["sim", &w.s("ok.json"), "--json"], 0, Some("sim"))
        },
        Case {
            lines: true,
            ..case(&["sim", &w.s("fail.json"), "--json"], 1, Some("sim"))
        },
        case(&["sim", &missing], 2, None),
        case(
            &["kvm", "cpuid", "--cpuid", &s, "--json"],
            0,
            Some("kvm-cpuid"),
        ),
        case(
            &["kvm", "cpuid", "--cpuid", &s, "--without", "nonsense"],
            2,
            None,
        ),
        case(&["nonsense"], 2, None),
        case(&["--help"], 0, None),
        case(&["--version"], 0, None),
        case(&["inspect", "--help"], 0, None),
    ];
    // Inconsistent CPUID data is a negative verdict (1) in every command that uses a layout,
    // and nothing is written.
    let ov = w.s("overlap.txt");
    v.extend([
        case(
            &[
                "convert",
                &img,
                "--to",
                "compacted",
                "-o",
                &w.out("ov"),
                "--cpuid",
                &ov,
            ],
            1,
            None,
        ),
        case(
            &[
                "model",
                "--insn",
                "xsave",
                "--mem",
                &mem,
                "-o",
                &w.out("ov"),
                "--cpuid",
                &ov,
            ],
            1,
            None,
        ),
        case(&["kvm", "cpuid", "--cpuid", &ov], 1, None),
        case(&["diff", &img, &img, "--cpuid", &ov], 1, None),
        case(
            &["validate", &img, "--profile", "xrstor", "--cpuid", &ov],
            1,
            None,
        ),
        case(&["sim", &w.s("overlap-sim.json")], 1, None),
    ]);
    for c in [
        case(&["kvm", "info", "--json"], 0, Some("kvm-info")),
        case(&["kvm", "info"], 0, None),
        case(&["kvm", "demo", "--json"], 0, Some("kvm-demo")),
    ] {
        v.push(Case { kvm: true, ..c });
    }
    v
}

/// Why a message is not one a person can act on: Rust internals (Debug formatting), a
/// "line 0", or the same clause twice.
fn unreadable(err: &str) -> Option<&'static str> {
    if err.contains("Error {") || err.contains("kind: ") || err.contains("Os {") {
        return Some("Debug formatting");
    }
    if err.contains("line 0") {
        return Some("line 0");
    }
    let parts: Vec<&str> = err
        .split([':', ';', '\n'])
        .map(str::trim)
        .filter(|p| p.len() >= 15)
        .collect();
    for (i, p) in parts.iter().enumerate() {
        if parts[i + 1..].contains(p) {
            return Some("the same clause twice");
        }
    }
    None
}

fn schema(name: &str) -> jsonschema::Validator {
    let p = format!(
        "{}/../../schemas/{name}.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"));
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn check_schema(name: &str, doc: &Value, what: &str) -> Vec<String> {
    schema(name)
        .iter_errors(doc)
        .map(|e| format!("{what}: {} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn every_command_exits_as_documented_and_its_json_matches_its_schema() {
    let w = Work::new();
    let no_kvm = kvm_unavailable();
    let mut failures = Vec::new();
    let mut validated = std::collections::BTreeSet::new();
    for c in cases(&w) {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let line = format!("xstate {}", args.join(" "));
        if c.kvm {
            if let Some(why) = &no_kvm {
                println!("skipped: {line}: {why}");
                continue;
            }
        }
        let o = run(&args, Stdio::piped());
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.code() != Some(c.code) {
            failures.push(format!(
                "{line}: exit {:?}, expected {}\n{out}{err}",
                o.status.code(),
                c.code
            ));
            continue;
        }
        if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
            failures.push(format!("{line}: panicked: {err}"));
        }
        if c.code == 2 && !err.contains("error: ") {
            failures.push(format!("{line}: exit 2 without a message: {err}"));
        }
        if let Some(why) = unreadable(&err) {
            failures.push(format!("{line}: {why}: {err}"));
        }
        if let Some(name) = c.schema {
            let docs: Vec<&str> = if c.lines {
                out.lines().collect()
            } else {
                vec![&out]
            };
            assert!(!docs.is_empty(), "{line}: no output");
            for d in docs {
                match serde_json::from_str::<Value>(d) {
                    Ok(v) => failures.extend(check_schema(name, &v, &line)),
                    Err(e) => failures.push(format!("{line}: not JSON: {e}\n{d}")),
                }
            }
            validated.insert(name);
        }
    }
    // No refused or failed command left an output behind.
    let leftovers: Vec<String> = entries(w.dir.path())
        .into_iter()
        .filter(|n| n.starts_with("out-ov") || n.contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every schema in the repository is exercised (KVM's only where KVM is).
    let dir = format!("{}/../../schemas", env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(&dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        let name = n.trim_end_matches(".schema.json");
        if name.starts_with("kvm-") && name != "kvm-cpuid" && no_kvm.is_some() {
            continue;
        }
        assert!(validated.contains(name), "schema {n} was not checked");
    }
}

#[test]
fn the_schemas_reject_what_the_contract_forbids() {
    // The schemas are not vacuous: a bare-integer mask, a comma-joined component list and
    // `function/index` keys are refused.
    let w = Work::new();
    let o = run(
        &[
            "validate",
            &w.s("bad.img"),
            "--profile",
            "xrstor",
            "--cpuid",
            &zen5(),
            "--json",
        ],
        Stdio::piped(),
    );
    let mut v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(check_schema("validate", &v, "real").is_empty());
    v["violations"][0]["value"] = serde_json::json!(8u64);
    assert!(!check_schema("validate", &v, "bare integer").is_empty());
    let o = run(
        &["kvm", "cpuid", "--cpuid", &spr(), "--json"],
        Stdio::piped(),
    );
    let mut v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(check_schema("kvm-cpuid", &v, "real").is_empty());
    v["xcr0_components"] = serde_json::json!("x87,sse");
    assert!(!check_schema("kvm-cpuid", &v, "joined").is_empty());
    let mut v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = v["entries"][0].as_object_mut().unwrap();
    let leaf = e.remove("leaf").unwrap();
    e.insert(String::from("function"), leaf);
    assert!(!check_schema("kvm-cpuid", &v, "function").is_empty());
}

#[test]
fn a_full_stdout_is_exit_2_with_a_message_for_every_command() {
    let w = Work::new();
    let no_kvm = kvm_unavailable();
    let mut failures = Vec::new();
    for c in cases(&w).into_iter().filter(|c| c.code != 2) {
        if c.kvm && no_kvm.is_some() {
            continue;
        }
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        // Outputs get fresh names so that the write is not refused first.
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains("/out-") {
                    format!("{a}-full")
                } else {
                    a.to_string()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Only commands that print something on standard output.
        let normal = run(&args, Stdio::piped());
        if normal.stdout.is_empty() {
            continue;
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains("/out-") {
                    format!("{a}-again")
                } else {
                    a.to_string()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let full = File::options().write(true).open("/dev/full").unwrap();
        let o = run(&args, Stdio::from(full));
        let err = String::from_utf8_lossy(&o.stderr);
        let line = format!("xstate {} > /dev/full", args.join(" "));
        if o.status.code() != Some(2) || !err.contains("cannot write to standard output") {
            failures.push(format!("{line}: exit {:?}: {err}", o.status.code()));
        }
        if err.contains("panicked") {
            failures.push(format!("{line}: panicked: {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let w = Work::new();
    for args in [
        vec!["host"],
        vec!["layout", "--cpuid", &spr()],
        vec!["inspect", &w.s("zen5.img"), "--cpuid", &zen5()],
    ]
    .iter()
    .map(|a| a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two descriptors of a new pipe.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fds[0] is the read end just created and owned by nobody else; closing it
        // before the child starts makes every write to the pipe fail with EPIPE.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is the write end just created; File takes its ownership.
        let write_end = unsafe { File::from_raw_fd(fds[1]) };
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&a, Stdio::from(write_end));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.is_empty(), "{a:?} into a closed pipe: {err}");
        assert!(
            o.status.signal() == Some(libc::SIGPIPE) || o.status.code() == Some(0),
            "{a:?}: {:?}",
            o.status
        );
    }
}

/// Directory entries, sorted, to show that nothing was added or left behind.
fn entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn sim_says_expected_errors_are_expected_and_names_a_step_whose_error_did_not_happen() {
    let w = Work::new();
    let script = serde_json::json!({
        "host": {"cpuid": zen5(), "xss": "0x0"},
        "guest": {"xcr0_max": "0xe7", "xss": "0x0"},
        "steps": [
            {"do": "create_vcpu", "vcpu": 0},
            {"do": "enter", "vcpu": 0},
            {"do": "enter", "vcpu": 0, "expect_error": "ebusy"},
            {"do": "exit", "vcpu": 0, "expect_error": "ebusy"}
        ]
    });
    let p = w.p("expect.json");
    std::fs::write(&p, script.to_string()).unwrap();
    let o = run(&["sim", &p.display().to_string()], Stdio::piped());
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let step = |n: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(n))
            .unwrap_or_else(|| panic!("no step {n}: {text}"))
    };
    assert!(step("2 ").contains("expected error"), "{text}");
    assert!(!step("2 ").contains("FAIL"), "{text}");
    assert!(
        step("3 ").contains("FAIL (expected error did not happen)"),
        "{text}"
    );
    assert!(
        text.contains("step 3 (exit): expected error `ebusy`, but the step succeeded"),
        "{text}"
    );
}

#[test]
fn binary_input_to_a_text_reader_says_so() {
    let w = Work::new();
    for a in [
        vec!["layout", "--cpuid", &w.s("zen5.xsnap")],
        vec!["sim", &w.s("zen5.img")],
    ] {
        let o = run(&a, Stdio::piped());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {err}");
        // What the file is, and what was expected instead.
        assert!(
            err.contains(" is ") && err.contains("; expected "),
            "{a:?}: {err}"
        );
        assert!(
            !err.contains("line 0") && !err.contains("UTF-8"),
            "{a:?}: {err}"
        );
    }
}

#[test]
fn a_dump_without_leaf_0xd_is_named_as_such_not_blamed_on_xcr0() {
    let w = Work::new();
    // Sapphire Rapids without its leaf 0xD lines (hwloc: `mask eax ecx … =>`, eax = d).
    let text: String = std::fs::read_to_string(spr())
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) != Some("d"))
        .map(|l| format!("{l}\n"))
        .collect();
    let p = w.s("no-leaf-d.txt");
    std::fs::write(&p, text).unwrap();
    for a in [
        vec!["layout", "--cpuid", &p],
        vec!["check", &w.s("zen5.xsnap"), "--to-cpuid", &p],
        vec!["inspect", &w.s("zen5.img"), "--cpuid", &p],
    ] {
        let o = run(&a, Stdio::piped());
        // `layout` reports (stdout), the others refuse (stderr).
        let err = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(1), "{a:?}: {err}");
        assert!(err.contains("no CPUID.(0xD,0) subleaf"), "{a:?}: {err}");
        assert!(!err.contains("invalid XCR0"), "{a:?}: {err}");
    }
}

#[test]
fn check_without_a_destination_names_both_ways() {
    let w = Work::new();
    let o = run(&["check", &w.s("zen5.xsnap")], Stdio::piped());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("--kvm") && err.contains("--to-cpuid"), "{err}");
}

#[test]
fn outputs_never_replace_an_input_or_an_existing_file() {
    let w = Work::new();
    let z = zen5();
    let img = w.s("zen5.img");
    let snap = w.s("zen5.xsnap");
    let before = std::fs::read(&snap).unwrap();
    let link = w.s("link.xsnap");
    std::os::unix::fs::symlink(&snap, &link).unwrap();
    let hard = w.s("hard.xsnap");
    std::fs::hard_link(&snap, &hard).unwrap();
    let listing = entries(w.dir.path());
    for out in [&snap, &link, &hard] {
        for force in [false, true] {
            let mut a = vec![
                "convert",
                &snap,
                "--to",
                "standard",
                "-o",
                out,
                "--to-cpuid",
                &z,
            ];
            if force {
                a.push("--force");
            }
            let o = run(&a, Stdio::piped());
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{a:?}: {err}");
            assert!(err.contains("is the input"), "{a:?}: {err}");
        }
    }
    // model -o onto --mem or --state.
    for a in [
        vec![
            "model", "--insn", "xsave", "--mem", &img, "-o", &img, "--cpuid", &z, "--force",
        ],
        vec![
            "model", "--insn", "xrstor", "--state", &img, "--mem", &snap, "-o", &hard, "--cpuid",
            &z, "--force",
        ],
    ] {
        let o = run(&a, Stdio::piped());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {err}");
        assert!(err.contains("is the input"), "{a:?}: {err}");
    }
    // layout --svg onto its CPUID dump.
    let dump = w.s("dump.txt");
    std::fs::copy(spr(), &dump).unwrap();
    let o = run(
        &["layout", "--cpuid", &dump, "--svg", &dump, "--force"],
        Stdio::piped(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&dump).unwrap(), std::fs::read(spr()).unwrap());
    std::fs::remove_file(&dump).unwrap();
    assert_eq!(std::fs::read(&snap).unwrap(), before);
    assert_eq!(entries(w.dir.path()), listing);
    // An existing file: refused without --force, replaced whole with it.
    let out = w.s("existing.svg");
    std::fs::write(&out, b"keep me").unwrap();
    let o = run(
        &["layout", "--cpuid", &spr(), "--svg", &out],
        Stdio::piped(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let o = run(
        &["layout", "--cpuid", &spr(), "--svg", &out, "--force"],
        Stdio::piped(),
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(std::fs::read_to_string(&out).unwrap().ends_with("</svg>\n"));
    let o = run(&["host", "--dump-cpuid", &out], Stdio::piped());
    assert_eq!(o.status.code(), Some(2));
    assert!(std::fs::read_to_string(&out).unwrap().ends_with("</svg>\n"));
}

#[test]
fn kvm_demo_keep_does_not_overwrite_an_earlier_snapshot() {
    if let Some(why) = kvm_unavailable() {
        println!("skipped: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().display().to_string();
    let o = run(&["kvm", "demo", "--keep", &dir], Stdio::piped());
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let snap = d.path().join("vcpu0.xsnap");
    std::fs::write(&snap, b"an earlier snapshot").unwrap();
    let o = run(&["kvm", "demo", "--keep", &dir], Stdio::piped());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("vcpu0.xsnap") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&snap).unwrap(), b"an earlier snapshot");
    let o = run(&["kvm", "demo", "--keep", &dir, "--force"], Stdio::piped());
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_ne!(std::fs::read(&snap).unwrap(), b"an earlier snapshot");
    assert_eq!(entries(d.path()).len(), 4, "{:?}", entries(d.path()));
}

/// A full filesystem (ENOSPC) leaves no partial file: a 64 KiB tmpfs, nearly filled, gets an
/// SVG of Sapphire Rapids (larger than what is left). Needs root (mount); skipped elsewhere.
#[test]
fn a_full_filesystem_leaves_no_partial_output() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: mounting a tmpfs needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(mnt)
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        println!("skipped: cannot mount a tmpfs here ({st:?})");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.to_path_buf());
    // Leave about 8 KiB free.
    std::fs::write(mnt.join("filler"), vec![0xa5u8; 56 * 1024]).unwrap();
    let listing = entries(mnt);
    let svg = mnt.join("spr.svg").display().to_string();
    let o = run(
        &["layout", "--cpuid", &spr(), "--svg", &svg],
        Stdio::piped(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(entries(mnt), listing, "a partial file was left");
    // A replaced file stays whole when the new one does not fit.
    let img = mnt.join("keep.img");
    std::fs::write(&img, b"old").unwrap();
    let o = run(
        &[
            "layout",
            "--cpuid",
            &spr(),
            "--svg",
            &img.display().to_string(),
            "--force",
        ],
        Stdio::piped(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&img).unwrap(), b"old");
}

#[test]
fn the_message_check_catches_what_issue_9_saw() {
    assert!(unreadable(
        "xstate: error: x: component 18 has no place in the layout: component 18 has no place in the layout"
    )
    .is_some());
    assert!(unreadable("cannot read: Error { kind: UnexpectedEof, message: \"x\" }").is_some());
    assert!(unreadable("d.txt: line 0: unrecognised").is_some());
    assert!(unreadable("xstate: error: d.txt: unrecognised CPUID dump format").is_none());
}
