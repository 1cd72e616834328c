//! Structure-aware fuzzing of the layout engine behind the readers: the input is read as
//! records of one byte of subleaf and four little-endian registers, giving CPUID.(0xD, n) for
//! n < 64 (the first record also sets leaf 1 with XSAVE). Random geometry — sizes near 4 GiB,
//! offsets inside the header, overlapping components — must never panic the engine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::cpuid::{CpuidDump, Regs};

mod common;

fuzz_target!(|data: &[u8]| {
    let mut d = CpuidDump::new("fuzz");
    d.insert(1, 0, Regs { eax: 0, ebx: 0, ecx: 1 << 26, edx: 1 << 24 });
    for rec in data.chunks_exact(17) {
        let word = |i: usize| {
            let b = [rec[1 + 4 * i], rec[2 + 4 * i], rec[3 + 4 * i], rec[4 + 4 * i]];
            u32::from_le_bytes(b)
        };
        let regs = Regs { eax: word(0), ebx: word(1), ecx: word(2), edx: word(3) };
        d.insert(0xd, u32::from(rec[0] & 63), regs);
    }
    common::exercise(&d);
});
