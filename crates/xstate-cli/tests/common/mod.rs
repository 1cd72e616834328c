//! Helpers shared by the CLI tests: run the built `xstate` binary, locate the fixtures.
#![allow(dead_code)] // each test crate uses its own subset

use std::process::Command;

/// Runs `xstate ARGS…` and returns (exit status, stdout, stderr).
pub fn xstate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xstate"))
        .args(args)
        .output()
        .expect("run xstate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The path of a CPUID dump fixture, `rel` below `crates/xstate/tests/fixtures/cpuid/`.
pub fn fixture(rel: &str) -> String {
    format!(
        "{}/../xstate/tests/fixtures/cpuid/{rel}",
        env!("CARGO_MANIFEST_DIR")
    )
}
