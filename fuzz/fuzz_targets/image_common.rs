//! Shared by the image targets: the layouts of real CPUs (CPUID leaf 0xD values of this
//! project's Zen 5, Sapphire Rapids with AMX and Skylake-SP with MPX, from the fixture dumps)
//! and a small reader of fuzz bytes.

#![allow(dead_code)]

use xstate::cpuid::{CpuidDump, Regs};
use xstate::layout::Layout;

fn dump(rows: &[(u32, u32, u32, u32, u32)]) -> Layout {
    let mut d = CpuidDump::new("fuzz");
    for &(sub, eax, ebx, ecx, edx) in rows {
        d.insert(0xd, sub, Regs { eax, ebx, ecx, edx });
    }
    Layout::from_dump(&d)
}

/// (layout, its XCR0, its IA32_XSS support) for selector `i`.
pub fn layout(i: u8) -> (Layout, u64, u64) {
    match i % 3 {
        0 => (
            dump(&[
                (0, 0xe7, 0x980, 0x980, 0),
                (1, 0xf, 0x9a8, 0x1800, 0),
                (2, 0x100, 0x240, 0, 0),
                (5, 0x40, 0x340, 0, 0),
                (6, 0x200, 0x380, 0, 0),
                (7, 0x400, 0x580, 0, 0),
                (11, 0x10, 0, 1, 0),
                (12, 0x18, 0, 1, 0),
            ]),
            0xe7,
            0x1800,
        ),
        1 => (
            dump(&[
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
            ]),
            0x602e7,
            0xdd00,
        ),
        _ => (
            dump(&[
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
            ]),
            0x2ff,
            0x100,
        ),
    }
}

/// Reads little-endian integers off the front of the fuzz input.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |v, i| v | u64::from(self.u8()) << (8 * i))
    }
}
