//! Converts a CPUID dump in any supported format (Linux `cpuid -r`, AIDA64, hwloc-gather-cpuid,
//! xstate JSON) into this project's JSON (schema `xstate-cpuid/1`) on standard output.
//!
//! ```sh
//! cargo run -p xstate --example cpuid2json -- crates/xstate/tests/fixtures/cpuid/hwloc/Intel-Skylake-2xXeon6140.txt
//! ```

use std::process::ExitCode;
use xstate::cpuid::CpuidDump;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: cpuid2json DUMP-FILE");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match CpuidDump::parse_bytes(&bytes, &path) {
        Ok(d) => {
            print!("{}", d.to_json());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
