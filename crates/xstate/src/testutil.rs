//! Layouts of real CPUs for unit tests, built from their CPUID leaf 0xD values
//! (../shared/fixtures/cpuid: the Zen 5 `cpuid -r` dump and the hwloc Sapphire Rapids and
//! Skylake-SP dumps).

use crate::cpuid::{CpuidDump, Regs};
use crate::layout::Layout;

fn dump(name: &str, rows: &[(u32, u32, u32, u32, u32)]) -> Layout {
    let mut d = CpuidDump::new(name);
    for &(sub, eax, ebx, ecx, edx) in rows {
        d.insert(0xd, sub, Regs { eax, ebx, ecx, edx });
    }
    Layout::from_dump(&d)
}

/// AMD Zen 5 EPYC (this project's machine kind): XCR0 0xe7, XSS 0x1800.
pub fn zen5() -> Layout {
    dump(
        "zen5",
        &[
            (0, 0xe7, 0x980, 0x980, 0),
            (1, 0xf, 0x9a8, 0x1800, 0),
            (2, 0x100, 0x240, 0, 0),
            (5, 0x40, 0x340, 0, 0),
            (6, 0x200, 0x380, 0, 0),
            (7, 0x400, 0x580, 0, 0),
            (11, 0x10, 0, 1, 0),
            (12, 0x18, 0, 1, 0),
        ],
    )
}

/// Intel Sapphire Rapids (Xeon Max 9460): XCR0 supported 0x602e7 (AMX), many supervisor
/// components.
pub fn spr() -> Layout {
    dump(
        "spr",
        &[
            (0, 0x602e7, 0x2b00, 0x2b00, 0),
            (1, 0x1f, 0x2d00, 0xdd00, 0),
            (2, 0x100, 0x240, 0, 0),
            (5, 0x40, 0x440, 0, 0),
            (6, 0x200, 0x480, 0, 0),
            (7, 0x400, 0x680, 0, 0),
            (8, 0x80, 0, 1, 0),
            (9, 0x8, 0xa80, 0, 0),
            (10, 0x8, 0, 1, 0),
            (11, 0x10, 0, 1, 0),
            (12, 0x18, 0, 1, 0),
            (14, 0x30, 0, 1, 0),
            (15, 0x328, 0, 1, 0),
            (17, 0x40, 0xac0, 2, 0),
            (18, 0x2000, 0xb00, 6, 0),
        ],
    )
}

/// Intel Skylake-SP: MPX and AVX-512 (XCR0 0x2ff).
pub fn skx() -> Layout {
    dump(
        "skx",
        &[
            (0, 0x2ff, 0xa88, 0xa88, 0),
            (1, 0xf, 0xa08, 0x100, 0),
            (2, 0x100, 0x240, 0, 0),
            (3, 0x40, 0x3c0, 0, 0),
            (4, 0x40, 0x400, 0, 0),
            (5, 0x40, 0x440, 0, 0),
            (6, 0x200, 0x480, 0, 0),
            (7, 0x400, 0x680, 0, 0),
            (8, 0x80, 0, 1, 0),
            (9, 0x8, 0xa80, 0, 0),
        ],
    )
}
