//! The README runs as written: every command of its operator walkthrough ("An operator's
//! session") is run, in a fresh directory where `examples/` is the repository's, and its exit
//! status compared with the `# exit N` the README gives. Lines marked "needs /dev/kvm" are
//! skipped with the reason where KVM cannot be used.

use std::path::Path;
use std::process::{Command, Stdio};

/// (command words, expected exit status, needs KVM) of each walkthrough line.
fn walkthrough(readme: &str) -> Vec<(Vec<String>, i32, bool)> {
    let start = readme
        .find("### An operator's session")
        .expect("README has the operator's session");
    let rest = &readme[start..];
    let block = rest.find("```sh").expect("a ```sh block") + "```sh".len();
    let end = rest[block..].find("```").expect("the block ends") + block;
    let mut lines = Vec::new();
    for line in rest[block..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (cmd, comment) = line
            .split_once('#')
            .unwrap_or_else(|| panic!("README line without `# exit N`: {line}"));
        let code = comment
            .trim()
            .strip_prefix("exit ")
            .and_then(|c| c.chars().next())
            .and_then(|c| c.to_digit(10))
            .unwrap_or_else(|| panic!("README line without `# exit N`: {line}"));
        let words: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        assert_eq!(words.first().map(String::as_str), Some("xstate"), "{line}");
        lines.push((words, code as i32, comment.contains("needs /dev/kvm")));
    }
    lines
}

#[test]
fn the_readme_walkthrough_runs_with_the_exit_statuses_it_gives() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = walkthrough(&readme);
    assert!(lines.len() >= 8, "{lines:?}");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples")).unwrap();
    let no_kvm = xstate_kvm::unavailable();
    let mut ran = 0;
    let mut failures = Vec::new();
    for (words, code, kvm) in &lines {
        let shown = words.join(" ");
        if *kvm {
            if let Some(why) = &no_kvm {
                println!("skipped: {shown}: {why}");
                continue;
            }
        }
        let o = Command::new(env!("CARGO_BIN_EXE_xstate"))
            .args(&words[1..])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        ran += 1;
        if o.status.code() != Some(*code) {
            failures.push(format!(
                "{shown}: exit {:?}, the README says {code}\n{}{}",
                o.status.code(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(ran >= 8);
    println!("{ran} README commands ran as the README says");
}
