//! `xstate`: inspect, validate, convert and migrate x86 extended processor state.
//!
//! Exit status: 0 success (valid, compatible, equal), 1 a negative verdict (invalid,
//! incompatible, different, inconsistent CPUID data), 2 usage or I/O error (a failed write to
//! standard output included), 3 a modelled instruction faulted.

use clap::{Parser, Subcommand};

#[macro_use]
mod output;
mod cmd;
mod common;
mod input;
mod svg;
mod trust;

/// x86 extended processor state (XSAVE) for hypervisors, VMMs and their operators.
#[derive(Parser)]
#[command(name = "xstate", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Use CPUID data that breaks a consistency rule (overlapping components, a size of 0, a
    /// size disagreeing with CPUID.(0xD,0).ECX, …) instead of refusing it (exit 1): for
    /// forensics only; every line of output then carries the warning (JSON: the
    /// `trusted_inconsistent` and `warnings` fields). `check` still never says compatible.
    #[arg(long, global = true)]
    trust_cpuid: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// This machine: CPU, XCR0, IA32_XSS support, XINUSE, every component's offsets and sizes,
    /// the save instruction the engine would use and /dev/kvm.
    Host(cmd::host::Args),
    /// The XSAVE layout (standard and compacted) of a CPU for an XCR0/IA32_XSS, from CPUID
    /// leaf 0xD of this host or of a dump file.
    Layout(cmd::layout::Args),
    /// Show the header and registers of an XSAVE image or snapshot.
    Inspect(cmd::inspect::Args),
    /// Check an image against the rules of XRSTOR, XRSTORS or KVM_SET_XSAVE.
    Validate(cmd::validate::Args),
    /// Convert an image between standard and compacted forms, layouts and snapshots.
    Convert(cmd::convert::Args),
    /// Compare two images or snapshots register by register.
    Diff(cmd::diff::Args),
    /// Run one XSAVE-family instruction on the executable model.
    Model(cmd::model::Args),
    /// Replay a guest FPU scenario script against the engine.
    Sim(cmd::sim::Args),
    /// KVM: capabilities, guest CPUID leaf 0xD, the end-to-end demo.
    Kvm(cmd::kvm::Args),
    /// Check whether a snapshot can be restored on a destination.
    Check(cmd::check::Args),
}

/// Restores the default SIGPIPE action, so that `xstate … | head` ends quietly like any Unix
/// tool instead of failing on a write to a closed pipe (Rust ignores SIGPIPE by default).
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: signal(2) with SIG_DFL installs no handler code; it only changes this process's
    // disposition of SIGPIPE, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    default_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version end with 0, usage errors with 2; a failed write of the help
            // text is an I/O error (2).
            let code = if e.use_stderr() { 2 } else { 0 };
            if let Err(w) = e.print() {
                errln!(
                    "xstate: error: cannot write to standard output: {w} (the help or usage text)"
                );
                std::process::exit(2);
            }
            std::process::exit(code);
        }
    };
    // `--json` is the one spelling of machine-readable output in every subcommand.
    trust::configure(cli.trust_cpuid, std::env::args_os().any(|a| a == "--json"));
    let result = match cli.command {
        Command::Host(a) => cmd::host::run(a),
        Command::Layout(a) => cmd::layout::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Model(a) => cmd::model::run(a),
        Command::Sim(a) => cmd::sim::run(a),
        Command::Kvm(a) => cmd::kvm::run(a),
        Command::Check(a) => cmd::check::run(a),
    };
    let result = result.and_then(|code| trust::finish().map(|()| code));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            let _ = trust::finish();
            errln!("xstate: error: {}", common::message(&e));
            // Inputs judged unusable (inconsistent CPUID data) are a negative verdict (1);
            // anything else is usage or I/O (2).
            if e.chain().any(|c| c.is::<trust::Refused>()) {
                1
            } else {
                2
            }
        }
    };
    // Output that could not be written is an I/O error (exit 2), whatever the verdict was.
    if let Some(why) = output::finish() {
        errln!("xstate: error: {why}");
        std::process::exit(2);
    }
    std::process::exit(code);
}
