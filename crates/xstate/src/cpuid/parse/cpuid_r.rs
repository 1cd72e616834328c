//! Linux `cpuid -r` output (the `cpuid` tool by Todd Allen, Debian package `cpuid`).
//!
//! ```text
//! CPU 0:
//!    0x0000000d 0x01: eax=0x0000000f ebx=0x000009a8 ecx=0x00001800 edx=0x00000000
//! ```
//!
//! Each logical CPU starts with `CPU N:` (or `CPU:` with `-1`); only the first is read. Data
//! lines before any header are accepted as the first CPU. Every other non-blank line is an error.

use super::{empty_error, hex_u32, Ctx, DumpFormat, ParseError, Table};
use crate::cpuid::{CpuidDump, Regs};

const EXPECTED: &str =
    "   0x0000000d 0x01: eax=0x0000000f ebx=0x000009a8 ecx=0x00001800 edx=0x00000000";

/// `CPU:` or `CPU <decimal>:`.
pub(super) fn is_cpu_header(l: &str) -> bool {
    let Some(rest) = l.strip_prefix("CPU") else {
        return false;
    };
    let Some(num) = rest.strip_suffix(':') else {
        return false;
    };
    let num = num.trim();
    num.chars().all(|c| c.is_ascii_digit()) && (num.is_empty() || rest.starts_with(' '))
}

/// `0x` followed by hex digits.
fn prefixed_hex(tok: &str) -> Option<u32> {
    hex_u32(tok.strip_prefix("0x")?)
}

fn parse_line(l: &str) -> Option<(u32, u32, Regs)> {
    let mut t = l.split_whitespace();
    let leaf = prefixed_hex(t.next()?)?;
    let subleaf = prefixed_hex(t.next()?.strip_suffix(':')?)?;
    let mut regs = [0u32; 4];
    for (slot, name) in regs.iter_mut().zip(["eax=", "ebx=", "ecx=", "edx="]) {
        *slot = prefixed_hex(t.next()?.strip_prefix(name)?)?;
    }
    if t.next().is_some() {
        return None;
    }
    let [eax, ebx, ecx, edx] = regs;
    Some((leaf, subleaf, Regs { eax, ebx, ecx, edx }))
}

pub(super) fn parse(text: &str, ctx: &Ctx<'_>) -> Result<CpuidDump, ParseError> {
    let mut table = Table::default();
    let mut header_seen = false;
    let mut cpus_after_first = false;
    for (i, line) in text.lines().enumerate() {
        let no = i + 1;
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        if is_cpu_header(l) {
            if header_seen || !table.is_empty() {
                // The second logical CPU starts here: the first one is complete.
                cpus_after_first = true;
                break;
            }
            header_seen = true;
            continue;
        }
        match parse_line(l) {
            Some((leaf, sub, regs)) => table.put(ctx, no, leaf, sub, regs)?,
            None => {
                return Err(ctx.err(
                    no,
                    alloc::format!(
                        "expected a `cpuid -r` data line like `{}` or a `CPU N:` header",
                        EXPECTED.trim()
                    ),
                ))
            }
        }
    }
    if table.is_empty() {
        return Err(empty_error(ctx, DumpFormat::CpuidR, EXPECTED.trim()));
    }
    let mut d = ctx.dump(DumpFormat::CpuidR);
    table.fill(&mut d);
    if cpus_after_first {
        d.notes.push(alloc::string::String::from(
            "cpuid-r: the file holds several logical CPUs; the first was read",
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use crate::cpuid::parse::DumpFormat;
    use crate::cpuid::{CpuidDump, Regs};

    const TWO_CPUS: &str = "CPU 0:\n   0x00000000 0x00: eax=0x0000000d ebx=0x68747541 ecx=0x444d4163 edx=0x69746e65\n   0x0000000d 0x00: eax=0x00000007 ebx=0x00000340 ecx=0x00000340 edx=0x00000000\r\n   0x0000000d 0x02: eax=0x00000100 ebx=0x00000240 ecx=0x00000000 edx=0x00000000\n\nCPU 1:\n   0x0000000d 0x00: eax=0x000000e7 ebx=0x00000340 ecx=0x00000340 edx=0x00000000\n";

    #[test]
    fn first_cpu_only() {
        let d = CpuidDump::parse(TWO_CPUS, "two.txt").unwrap();
        assert_eq!(d.format, "cpuid-r");
        assert_eq!(d.source, "two.txt");
        assert_eq!(d.len(), 3);
        assert_eq!(d.get(0xd, 0).unwrap().eax, 7);
        assert_eq!(
            d.get(0xd, 2),
            Some(Regs {
                eax: 0x100,
                ebx: 0x240,
                ecx: 0,
                edx: 0
            })
        );
        assert_eq!(d.notes.len(), 1);
        assert_eq!(d.vendor_string(), "AuthenticAMD");
    }

    #[test]
    fn headerless_and_single_cpu_forms() {
        let d = CpuidDump::parse(
            "   0x0000000d 0x00: eax=0x7 ebx=0x340 ecx=0x340 edx=0x0\n",
            "h",
        )
        .unwrap();
        assert_eq!(d.get(0xd, 0).unwrap().ecx, 0x340);
        assert!(d.notes.is_empty());
        let d = CpuidDump::parse(
            "CPU:\n   0x80000008 0x00: eax=0x3030 ebx=0x0 ecx=0x0 edx=0x0\n",
            "h",
        )
        .unwrap();
        assert_eq!(d.get(0x8000_0008, 0).unwrap().eax, 0x3030);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let cases: &[(&str, usize)] = &[
            (
                "CPU:\n   0x0000000d 0x00 eax=0x7 ebx=0x0 ecx=0x0 edx=0x0\n",
                2,
            ),
            ("CPU:\n   0x0000000d 0x00: eax=0x7 ebx=0x0 ecx=0x0\n", 2),
            (
                "CPU:\n   0x0000000d 0x00: eax=0x7 ebx=0x0 ecx=0x0 edx=0x0 extra\n",
                2,
            ),
            (
                "CPU:\n   0x0000000d 0x00: ebx=0x7 eax=0x0 ecx=0x0 edx=0x0\n",
                2,
            ),
            (
                "CPU:\n\n   0x0000000d 0x00: eax=0x100000000 ebx=0x0 ecx=0x0 edx=0x0\n",
                3,
            ),
            ("CPU:\n   0xd 0x0: eax=7 ebx=0x0 ecx=0x0 edx=0x0\n", 2),
            (
                "CPU:\n   0x0000000d 0x0g: eax=0x7 ebx=0x0 ecx=0x0 edx=0x0\n",
                2,
            ),
            (
                "CPU:\n   0x0000000d 0x00: eax=0x7 ebx=0x0 ecx=0x0 edx=0x0\ngarbage\n",
                3,
            ),
        ];
        for &(text, line) in cases {
            let e = CpuidDump::parse_as(text, "bad.txt", DumpFormat::CpuidR).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert_eq!(e.source_name, "bad.txt");
            assert!(e.message.contains("expected"), "{e}");
        }
    }

    #[test]
    fn conflicting_and_empty() {
        let e = CpuidDump::parse(
            "CPU:\n   0x00000001 0x00: eax=0x1 ebx=0x0 ecx=0x0 edx=0x0\n   0x00000001 0x00: eax=0x2 ebx=0x0 ecx=0x0 edx=0x0\n",
            "c",
        )
        .unwrap_err();
        assert_eq!(e.line, 3);
        let e = CpuidDump::parse("CPU:\n\nCPU 1:\n", "c").unwrap_err();
        assert_eq!(e.line, 0);
        assert!(e.message.contains("no CPUID data"), "{e}");
    }

    #[test]
    fn header_recognition() {
        use super::is_cpu_header;
        assert!(is_cpu_header("CPU:"));
        assert!(is_cpu_header("CPU 12:"));
        assert!(!is_cpu_header("CPU12:"));
        assert!(!is_cpu_header("CPU x:"));
        assert!(!is_cpu_header("CPUID 0000000D: 1-2-3-4"));
    }
}
