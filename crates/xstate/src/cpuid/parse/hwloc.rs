//! hwloc-gather-cpuid output (one file per logical CPU, `pu0`, `pu1`, …):
//!
//! ```text
//! # mask e[abcd]x => e[abcd]x
//! 1 0 0 0 0 => 20 756e6547 6c65746e 49656e69
//! 5 d 0 1 0 => 1f 2d00 dd00 0
//! ```
//!
//! Left of `=>`: an input mask and the four input registers; right: the four outputs, all hex
//! without prefix. Mask bit 0 says the EAX input (the leaf) matters, bit 1 EBX, bit 2 ECX (the
//! subleaf), bit 3 EDX. A query whose mask lacks bit 2 does not depend on ECX and is stored at
//! subleaf 0. Lines starting with `#` are comments. When several CPUs are concatenated, the
//! second query of leaf 0 starts the next CPU and reading stops there.

use super::{empty_error, hex_u32, Ctx, DumpFormat, ParseError, Table};
use crate::cpuid::{CpuidDump, Regs};
use alloc::format;
use alloc::string::String;

const EXPECTED: &str = "5 d 0 1 0 => f 9a8 1800 0";

/// Mask bits: EAX input used.
const IN_EAX: u32 = 1;
/// Mask bits: ECX input used.
const IN_ECX: u32 = 4;
/// Mask bits hwloc defines (EAX, EBX, ECX, EDX inputs).
const IN_ALL: u32 = 0xf;

fn hex_fields<const N: usize>(s: &str) -> Result<[u32; N], String> {
    let mut out = [0u32; N];
    let mut t = s.split_whitespace();
    for (i, slot) in out.iter_mut().enumerate() {
        let Some(tok) = t.next() else {
            return Err(format!("{N} hex numbers, found {i}"));
        };
        let tok_digits = tok
            .strip_prefix("0x")
            .or_else(|| tok.strip_prefix("0X"))
            .unwrap_or(tok);
        *slot = hex_u32(tok_digits).ok_or_else(|| format!("a 32-bit hex number, found `{tok}`"))?;
    }
    if let Some(tok) = t.next() {
        return Err(format!("{N} hex numbers, found more (`{tok}`)"));
    }
    Ok(out)
}

pub(super) fn parse(text: &str, ctx: &Ctx<'_>) -> Result<CpuidDump, ParseError> {
    let mut table = Table::default();
    let mut more_cpus = false;
    for (i, line) in text.lines().enumerate() {
        let no = i + 1;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((input, output)) = l.split_once("=>") else {
            return Err(ctx.err(
                no,
                format!("expected `mask eax ebx ecx edx => eax ebx ecx edx` (hex, e.g. `{EXPECTED}`) or a `#` comment"),
            ));
        };
        let [mask, eax_in, _ebx_in, ecx_in, _edx_in] = hex_fields::<5>(input).map_err(|m| {
            ctx.err(
                no,
                format!("left of `=>`: expected {m} (mask eax ebx ecx edx)"),
            )
        })?;
        let [eax, ebx, ecx, edx] = hex_fields::<4>(output)
            .map_err(|m| ctx.err(no, format!("right of `=>`: expected {m} (eax ebx ecx edx)")))?;
        if mask & !IN_ALL != 0 || mask & IN_EAX == 0 {
            return Err(ctx.err(
                no,
                format!(
                    "input mask {mask:#x}: expected bit 0 (EAX input) set and no bit above 3 \
                     (bits: 0 EAX, 1 EBX, 2 ECX, 3 EDX)"
                ),
            ));
        }
        let leaf = eax_in;
        let subleaf = if mask & IN_ECX != 0 { ecx_in } else { 0 };
        if leaf == 0 && subleaf == 0 && !table.is_empty() {
            more_cpus = true;
            break;
        }
        table.put(ctx, no, leaf, subleaf, Regs { eax, ebx, ecx, edx })?;
    }
    if table.is_empty() {
        return Err(empty_error(ctx, DumpFormat::Hwloc, EXPECTED));
    }
    let mut d = ctx.dump(DumpFormat::Hwloc);
    table.fill(&mut d);
    if more_cpus {
        d.notes.push(String::from(
            "hwloc: leaf 0 appears again, so the text holds several logical CPUs; the first was read",
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use crate::cpuid::parse::DumpFormat;
    use crate::cpuid::{CpuidDump, Regs};

    #[test]
    fn masks_and_subleaves() {
        let t = "# mask e[abcd]x => e[abcd]x\n1 0 0 0 0 => d 756e6547 6c65746e 49656e69\n1 7 0 3 0 => 1 2 3 4\n5 d 0 2 0 => 100 240 0 0\n0xd 0x14 0 1 0 => 0x1 0X2 3 4\n";
        let d = CpuidDump::parse(t, "pu0").unwrap();
        assert_eq!(d.format, "hwloc");
        assert_eq!(d.vendor_string(), "GenuineIntel");
        // Mask 1: ECX input ignored, stored at subleaf 0.
        assert_eq!(d.get(7, 0).unwrap().eax, 1);
        assert_eq!(d.get(7, 3), None);
        assert_eq!(
            d.get(0xd, 2),
            Some(Regs {
                eax: 0x100,
                ebx: 0x240,
                ecx: 0,
                edx: 0
            })
        );
        assert_eq!(d.get(0x14, 1).unwrap().ebx, 2);
        assert!(d.notes.is_empty());
    }

    #[test]
    fn concatenated_cpus_yield_the_first() {
        let t = "1 0 0 0 0 => d 0 0 0\n5 d 0 0 0 => 7 340 340 0\n1 0 0 0 0 => d 0 0 0\n5 d 0 0 0 => 3 240 240 0\n";
        let d = CpuidDump::parse(t, "cat").unwrap();
        assert_eq!(d.get(0xd, 0).unwrap().eax, 7);
        assert_eq!(d.notes.len(), 1);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "1 0 0 0 0 => 1 2 3 4\n5 d 0 0 => 1 2 3 4\n",
                2,
                "5 hex numbers, found 4",
            ),
            (
                "1 0 0 0 0 => 1 2 3 4\n5 d 0 0 0 0 => 1 2 3 4\n",
                2,
                "found more",
            ),
            ("1 0 0 0 0 => 1 2 3\n", 1, "4 hex numbers, found 3"),
            ("# c\n1 0 0 0 0 => 1 2 3 x\n", 2, "found `x`"),
            (
                "1 0 0 0 0 => 1 2 3 4\n5 d 0 0 0 1 2 3 4\n",
                2,
                "expected `mask",
            ),
            ("4 d 0 0 0 => 1 2 3 4\n", 1, "input mask 0x4"),
            ("11 d 0 0 0 => 1 2 3 4\n", 1, "input mask 0x11"),
            ("1 0 0 0 0 => 1 2 3 123456789\n", 1, "123456789"),
            (
                "1 1 0 0 0 => 1 0 0 0\n1 1 0 0 0 => 2 0 0 0\n",
                2,
                "already given on line 1",
            ),
        ];
        for &(text, line, what) in cases {
            let e = CpuidDump::parse_as(text, "pu0", DumpFormat::Hwloc).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
            assert!(e.to_string().starts_with("pu0: line "), "{e}");
        }
        let e = CpuidDump::parse_as("# nothing\n", "pu0", DumpFormat::Hwloc).unwrap_err();
        assert_eq!(e.line, 0);
    }
}
