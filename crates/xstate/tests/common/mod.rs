//! CPUs for the snapshot tests: the fixture dumps of ../shared/fixtures/cpuid (copied to
//! tests/fixtures/cpuid) when the dump parser can read them, else the same leaves typed in.
#![allow(dead_code)]

use std::path::PathBuf;
use xstate::cpuid::{CpuidDump, Regs};

type Row = (u32, u32, u32, u32, u32, u32);

fn typed(name: &str, rows: &[Row]) -> CpuidDump {
    let mut d = CpuidDump::new(name);
    for &(leaf, sub, eax, ebx, ecx, edx) in rows {
        d.insert(leaf, sub, Regs { eax, ebx, ecx, edx });
    }
    d
}

fn fixture(rel: &str) -> Option<CpuidDump> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cpuid")
        .join(rel);
    let text = std::fs::read_to_string(&p).ok()?;
    CpuidDump::parse(&text, &p.display().to_string()).ok()
}

/// Skylake-SP (2× Xeon Gold 6140, hwloc dump): XCR0 supported 0x2ff, opmask at 1088.
pub fn skylake() -> CpuidDump {
    fixture("hwloc/Intel-Skylake-2xXeon6140.txt").unwrap_or_else(|| {
        typed(
            "skylake",
            &[
                (0, 0, 0x16, 0x756e6547, 0x6c65746e, 0x49656e69),
                (1, 0, 0x50654, 0x400800, 0x7ffefbff, 0xbfebfbff),
                (7, 0, 0, 0xd39ffffb, 0x18, 0),
                (0xd, 0, 0x2ff, 0xa88, 0xa88, 0),
                (0xd, 1, 0xf, 0xa08, 0x100, 0),
                (0xd, 2, 0x100, 0x240, 0, 0),
                (0xd, 3, 0x40, 0x3c0, 0, 0),
                (0xd, 4, 0x40, 0x400, 0, 0),
                (0xd, 5, 0x40, 0x440, 0, 0),
                (0xd, 6, 0x200, 0x480, 0, 0),
                (0xd, 7, 0x400, 0x680, 0, 0),
                (0xd, 8, 0x80, 0, 1, 0),
                (0xd, 9, 0x8, 0xa80, 0, 0),
            ],
        )
    })
}

/// Sapphire Rapids (2× Xeon Max 9460, hwloc dump): AMX, PKRU, XCR0 supported 0x602e7.
pub fn sapphire_rapids() -> CpuidDump {
    fixture("hwloc/Intel-SapphireRapids-2xXeonMax9460.txt").unwrap_or_else(|| {
        typed(
            "spr",
            &[
                (0, 0, 0x20, 0x756e6547, 0x6c65746e, 0x49656e69),
                (1, 0, 0x806f8, 0x800800, 0x7ffefbff, 0xbfebfbff),
                (7, 0, 2, 0xf3bfb7ef, 0xfb417ffe, 0xffdd4432),
                (7, 1, 0x1c30, 0, 0, 0x40000),
                (0xd, 0, 0x602e7, 0x2b00, 0x2b00, 0),
                (0xd, 1, 0x1f, 0x2d00, 0xdd00, 0),
                (0xd, 2, 0x100, 0x240, 0, 0),
                (0xd, 5, 0x40, 0x440, 0, 0),
                (0xd, 6, 0x200, 0x480, 0, 0),
                (0xd, 7, 0x400, 0x680, 0, 0),
                (0xd, 8, 0x80, 0, 1, 0),
                (0xd, 9, 0x8, 0xa80, 0, 0),
                (0xd, 0xa, 0x8, 0, 1, 0),
                (0xd, 0xb, 0x10, 0, 1, 0),
                (0xd, 0xc, 0x18, 0, 1, 0),
                (0xd, 0xe, 0x30, 0, 1, 0),
                (0xd, 0xf, 0x328, 0, 1, 0),
                (0xd, 0x11, 0x40, 0xac0, 2, 0),
                (0xd, 0x12, 0x2000, 0xb00, 6, 0),
                (0x1d, 0, 1, 0, 0, 0),
                (0x1d, 1, 0x4002000, 0x80040, 0x10, 0),
                (0x1e, 0, 0, 0x4010, 0, 0),
            ],
        )
    })
}

/// AMD Zen 5 EPYC (this machine's kind, `cpuid -r` dump): XCR0 supported 0xe7, opmask at 832.
pub fn zen5() -> CpuidDump {
    fixture("cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt").unwrap_or_else(|| {
        typed(
            "zen5",
            &[
                (0, 0, 0x1c, 0x68747541, 0x444d4163, 0x69746e65),
                (1, 0, 0xb00f21, 0x20800, 0xfffa3203, 0x178bfbff),
                (7, 0, 1, 0xf1bf07ab, 0x405fc6, 0x110),
                (7, 1, 0x30, 0, 0, 0),
                (0xd, 0, 0xe7, 0x980, 0x980, 0),
                (0xd, 1, 0xf, 0x9a8, 0x1800, 0),
                (0xd, 2, 0x100, 0x240, 0, 0),
                (0xd, 5, 0x40, 0x340, 0, 0),
                (0xd, 6, 0x200, 0x380, 0, 0),
                (0xd, 7, 0x400, 0x580, 0, 0),
                (0xd, 0xb, 0x10, 0, 1, 0),
                (0xd, 0xc, 0x18, 0, 1, 0),
            ],
        )
    })
}

/// The path of a fixture dump (for CLI tests), if it was copied into tests/fixtures.
pub fn fixture_path(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cpuid")
        .join(rel);
    p.exists().then_some(p)
}
