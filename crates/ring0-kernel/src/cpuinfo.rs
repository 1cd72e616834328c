//! The CPUID of the processor the kernel runs on, read once into an `xstate::cpuid::CpuidDump`
//! and printed in Linux `cpuid -r` format (lines prefixed `CPUID ` for the runner), which
//! `xstate layout --cpuid` reads.

use xstate::cpuid::{CpuidDump, KEPT_LEAVES};

use crate::arch::cpuid;

/// Reads the leaves that gate extended state (`KEPT_LEAVES`) with their subleaves.
pub fn read() -> CpuidDump {
    let mut d = CpuidDump::new("bochs");
    d.format = "cpuid-r".into();
    let max = cpuid(0, 0).eax;
    let max_ext = cpuid(0x8000_0000, 0).eax;
    for &leaf in KEPT_LEAVES.iter() {
        let present = if leaf >= 0x8000_0000 {
            leaf <= max_ext
        } else {
            leaf <= max
        };
        if !present {
            continue;
        }
        let subleaves = match leaf {
            0x7 => cpuid(7, 0).eax.min(3) + 1,
            0xd => 64,
            0x14 | 0x1d => 2,
            _ => 1,
        };
        for sub in 0..subleaves {
            d.insert(leaf, sub, cpuid(leaf, sub));
        }
    }
    d
}

/// Prints the dump, one `CPUID    0xLLLLLLLL 0xSS: eax=… ebx=… ecx=… edx=…` line per entry.
pub fn print(d: &CpuidDump) {
    for (leaf, sub, r) in d.entries() {
        crate::println!(
            "CPUID    {leaf:#010x} {sub:#04x}: eax={:#010x} ebx={:#010x} ecx={:#010x} edx={:#010x}",
            r.eax,
            r.ebx,
            r.ecx,
            r.edx
        );
    }
}
