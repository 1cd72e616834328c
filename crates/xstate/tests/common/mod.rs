//! CPUs for the snapshot, compatibility and guest CPUID tests: the fixture dumps in
//! tests/fixtures/cpuid (copies of ../shared/fixtures/cpuid), read by the dump parser.
#![allow(dead_code)]

use std::path::PathBuf;
use xstate::cpuid::CpuidDump;

/// Reads and parses a fixture dump; a missing or unreadable fixture fails the test.
pub fn fixture(rel: &str) -> CpuidDump {
    let p = fixture_path(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    CpuidDump::parse(&text, &p.display().to_string()).unwrap_or_else(|e| panic!("{e}"))
}

/// Skylake-SP (2× Xeon Gold 6140, hwloc dump): XCR0 supported 0x2ff, opmask at 1088.
pub const SKYLAKE: &str = "hwloc/Intel-Skylake-2xXeon6140.txt";
/// Sapphire Rapids (2× Xeon Max 9460, hwloc dump): AMX, PKRU, XCR0 supported 0x602e7.
pub const SPR: &str = "hwloc/Intel-SapphireRapids-2xXeonMax9460.txt";
/// AMD Zen 5 EPYC (this machine's kind, `cpuid -r` dump): XCR0 supported 0xe7, opmask at 832.
pub const ZEN5: &str = "cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt";

/// The Skylake-SP dump.
pub fn skylake() -> CpuidDump {
    fixture(SKYLAKE)
}

/// The Sapphire Rapids dump.
pub fn sapphire_rapids() -> CpuidDump {
    fixture(SPR)
}

/// The Zen 5 dump.
pub fn zen5() -> CpuidDump {
    fixture(ZEN5)
}

/// The absolute path of a fixture dump (for CLI tests).
pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cpuid")
        .join(rel)
}
