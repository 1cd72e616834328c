//! AIDA64 / InstLatX64 CPUID text:
//!
//! ```text
//! CPUID 00000000: 00000010-68747541-444D4163-69746E65 [AuthenticAMD]
//! CPUID 0000000D: 0000000F-00000990-00001800-00000000 [SL 01] [SSE]
//! ```
//!
//! Registers are EAX-EBX-ECX-EDX in hex. `[SL nn]` right after them is the subleaf; any other
//! bracketed text is an annotation. Every logical CPU is listed in turn, each starting with
//! leaf 0: reading stops where leaf 0 appears again. Lines that do not start with `CPUID`
//! (report headers) are passed over and counted in the notes.
//!
//! Older dumps have no `[SL nn]` tags. Then a leaf that appears once is subleaf 0; a leaf whose
//! subleaves the SDM defines as a dense index from 0 (4, 7, 0xB, 0x14, 0x17, 0x18, 0x1D, 0x1F,
//! 0x8000001D, 0x80000026) is numbered 0, 1, 2, … in order; repeated lines of leaf 0xD are
//! numbered by the rule explained at [`infer_0d`]; any other repeated leaf is dropped (with a
//! note), or refused when it is one of [`KEPT_LEAVES`](crate::cpuid::KEPT_LEAVES).

use super::{empty_error, hex_u32, Ctx, DumpFormat, ParseError, Table};
use crate::components::bits;
use crate::components::EXTENDED_START;
use crate::cpuid::{CpuidDump, Regs, KEPT_LEAVES};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

const EXPECTED: &str = "CPUID 0000000D: 0000000F-00000990-00001800-00000000 [SL 01]";

/// Leaves whose subleaves are, by their SDM/APM definition, an index counting up from 0.
const DENSE_LEAVES: [u32; 10] = [
    0x4,
    0x7,
    0xb,
    0x14,
    0x17,
    0x18,
    0x1d,
    0x1f,
    0x8000_001d,
    0x8000_0026,
];

/// CPUID.(0xD,1).EAX bits the SDM defines: XSAVEOPT, XSAVEC, XGETBV1, XSAVES, XFD.
const SUBLEAF1_EAX_DEFINED: u32 = 0x1f;

struct Line {
    no: usize,
    leaf: u32,
    tag: Option<u32>,
    regs: Regs,
}

fn parse_line(l: &str) -> Result<(u32, Option<u32>, Regs), String> {
    let bad =
        || format!("expected `CPUID LLLLLLLL: EAX-EBX-ECX-EDX [SL nn]` in hex, like `{EXPECTED}`");
    let rest = l.strip_prefix("CPUID ").ok_or_else(bad)?;
    let (leaf_s, rest) = rest.split_once(':').ok_or_else(bad)?;
    let leaf = hex_u32(leaf_s.trim()).ok_or_else(bad)?;
    let rest = rest.trim_start();
    let (regs_s, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let mut r = [0u32; 4];
    let mut parts = regs_s.split('-');
    for slot in r.iter_mut() {
        *slot = parts.next().and_then(hex_u32).ok_or_else(bad)?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    let tail = tail.trim_start();
    let tag = match tail.strip_prefix("[SL ") {
        Some(t) => {
            let tag = t
                .split_once(']')
                .and_then(|(n, _)| hex_u32(n.trim()))
                .ok_or_else(|| {
                    String::from("expected a subleaf tag `[SL nn]` with a hex number nn")
                })?;
            Some(tag)
        }
        None => None,
    };
    let [eax, ebx, ecx, edx] = r;
    Ok((leaf, tag, Regs { eax, ebx, ecx, edx }))
}

pub(super) fn parse(text: &str, ctx: &Ctx<'_>) -> Result<CpuidDump, ParseError> {
    let mut lines: Vec<Line> = Vec::new();
    let mut ignored = 0usize;
    let mut first_ignored = 0usize;
    let mut more_cpus = false;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        if !l.starts_with("CPUID") {
            if ignored == 0 {
                first_ignored = no;
            }
            ignored += 1;
            continue;
        }
        let (leaf, tag, regs) = parse_line(l).map_err(|m| ctx.err(no, m))?;
        if leaf == 0 && !lines.is_empty() {
            // Leaf 0 opens the listing of every logical CPU: the first CPU is complete.
            more_cpus = true;
            break;
        }
        lines.push(Line {
            no,
            leaf,
            tag,
            regs,
        });
    }
    if lines.is_empty() {
        return Err(empty_error(ctx, DumpFormat::Aida64, EXPECTED));
    }
    let mut d = ctx.dump(DumpFormat::Aida64);
    let mut table = Table::default();
    // Per leaf: its untagged lines in order, and the first tagged line.
    let mut by_leaf: BTreeMap<u32, (Vec<&Line>, Option<usize>)> = BTreeMap::new();
    for line in &lines {
        let e = by_leaf.entry(line.leaf).or_default();
        match line.tag {
            Some(sub) => {
                table.put(ctx, line.no, line.leaf, sub, line.regs)?;
                e.1.get_or_insert(line.no);
            }
            None => e.0.push(line),
        }
    }
    for (&leaf, (untagged, tagged)) in &by_leaf {
        let (Some(first), Some(last)) = (untagged.first(), untagged.last()) else {
            continue;
        };
        if let Some(t) = tagged {
            return Err(ctx.err(
                first.no,
                format!(
                    "leaf {leaf:#x} has `[SL nn]`-tagged lines (line {t}) and untagged ones, so the \
                     subleaf of this line is unknown; expected every line of a leaf tagged, or none"
                ),
            ));
        }
        if untagged.len() == 1 {
            table.put(ctx, first.no, leaf, 0, first.regs)?;
        } else if leaf == 0xd {
            infer_0d(ctx, untagged, &mut table, &mut d.notes)?;
        } else if DENSE_LEAVES.contains(&leaf) {
            for (sub, line) in (0u32..).zip(untagged.iter()) {
                table.put(ctx, line.no, leaf, sub, line.regs)?;
            }
            d.notes.push(format!(
                "aida64: leaf {leaf:#x}: {} untagged lines (lines {}-{}) numbered as subleaves 0-{} \
                 in order: the SDM defines this leaf's subleaves as an index counting from 0",
                untagged.len(),
                first.no,
                last.no,
                untagged.len() - 1
            ));
        } else if untagged.iter().all(|l| l.regs == first.regs) {
            table.put(ctx, first.no, leaf, 0, first.regs)?;
        } else if KEPT_LEAVES.contains(&leaf) {
            return Err(ctx.err(
                untagged.get(1).map_or(first.no, |l| l.no),
                format!(
                    "leaf {leaf:#x} is repeated with different values and no `[SL nn]` tag; \
                     expected one line per leaf (it has no subleaves)"
                ),
            ));
        } else {
            d.notes.push(format!(
                "aida64: leaf {leaf:#x}: {} untagged lines with different values (lines {}-{}) \
                 dropped: their subleaf numbers cannot be known",
                untagged.len(),
                first.no,
                last.no
            ));
        }
    }
    table.fill(&mut d);
    if ignored > 0 {
        d.notes.push(format!(
            "aida64: {ignored} line(s) not starting with `CPUID` passed over (first: line {first_ignored})"
        ));
    }
    if more_cpus {
        d.notes.push(String::from(
            "aida64: leaf 0 appears again, so the text lists several logical CPUs; the first was read",
        ));
    }
    Ok(d)
}

/// Why a line cannot be CPUID.(0xD, `sub`), or `None` when it can.
fn misfit_0d(sub: u32, r: Regs, sub0: Regs, user: u64, xss: u64) -> Option<String> {
    if sub == 1 {
        // SDM Vol. 2A CPUID.(EAX=0DH,ECX=1): EAX bits 0-4 defined, the rest reserved (0).
        if r.eax & !SUBLEAF1_EAX_DEFINED != 0 {
            return Some(format!(
                "EAX {:#x} sets reserved bits of subleaf 1 (only bits 0-4 are defined)",
                r.eax
            ));
        }
        let sup = (u64::from(r.edx) << 32) | u64::from(r.ecx);
        if sup & (user | 3) != 0 {
            return Some(format!(
                "EDX:ECX {sup:#x} would list user components as supervisor ones"
            ));
        }
        return None;
    }
    // Subleaf i >= 2: EAX size, EBX standard offset, ECX bit 0 supervisor (SDM, DESIGN §3).
    if r.eax == 0 {
        return Some(format!(
            "subleaf {sub} of a supported component cannot report size 0"
        ));
    }
    let supervisor = sub < 64 && xss & (1u64 << sub) != 0;
    if supervisor {
        if r.ecx & 1 == 0 {
            return Some(format!(
                "subleaf {sub} is a supervisor component but ECX bit 0 is clear"
            ));
        }
        return None;
    }
    if r.ecx & 1 != 0 {
        return Some(format!(
            "subleaf {sub} is a user component but ECX bit 0 (supervisor) is set"
        ));
    }
    if r.ebx < EXTENDED_START {
        return Some(format!(
            "standard offset {:#x} of subleaf {sub} lies in the legacy area or header (< 0x240)",
            r.ebx
        ));
    }
    match r.ebx.checked_add(r.eax) {
        Some(end) if end <= sub0.ecx => None,
        _ => Some(format!(
            "subleaf {sub} would end at {:#x}+{:#x}, beyond the maximum size {:#x} of subleaf 0 ECX",
            r.ebx, r.eax, sub0.ecx
        )),
    }
}

/// Numbers the untagged lines of leaf 0xD (two or more) of one CPU.
///
/// A dumper queries subleaf 0 first, so the first line is subleaf 0 (checked: EAX bit 0 set,
/// ECX ≥ 576). After it, two orders are possible, both seen in the wild:
///
/// * A: subleaf 1, then the subleaf of every supported component (user bits of subleaf 0
///   EDX:EAX, supervisor bits of subleaf 1 EDX:ECX) in increasing order;
/// * B: subleaf 1 skipped, then the supported user components in increasing order.
///
/// A dump may stop early (old AIDA64 versions omit LWP's subleaf 62), so a prefix of either order
/// fits. Each order is checked against the contents: subleaf 1 has no reserved EAX bit; a
/// component subleaf reports a non-zero size, its supervisor flag matches the masks, and a user
/// component lies between 576 and subleaf 0 ECX. The numbering is used only when exactly one
/// order fits; otherwise the dump is refused, naming the line.
fn infer_0d(
    ctx: &Ctx<'_>,
    lines: &[&Line],
    table: &mut Table,
    notes: &mut Vec<String>,
) -> Result<(), ParseError> {
    let (Some(l0), Some(rest)) = (lines.first(), lines.get(1..)) else {
        return Ok(());
    };
    let (Some(l1), Some(last)) = (rest.first(), rest.last()) else {
        table.put(ctx, l0.no, 0xd, 0, l0.regs)?;
        return Ok(());
    };
    let s0 = l0.regs;
    if s0.eax & 1 == 0 || s0.ecx < EXTENDED_START || s0.ebx > s0.ecx {
        return Err(ctx.err(
            l0.no,
            "the first untagged leaf 0xD line does not look like subleaf 0 (expected EAX bit 0 \
             set for x87 and EBX <= ECX with ECX >= 576), so the untagged leaf 0xD lines cannot be \
             numbered; expected `[SL nn]` tags",
        ));
    }
    // Bit 63 is not a component; bits 0 and 1 live in the legacy area and have no subleaf.
    let user = ((u64::from(s0.edx) << 32) | u64::from(s0.eax)) & !3 & !(1u64 << 63);
    let xss_a = ((u64::from(l1.regs.edx) << 32) | u64::from(l1.regs.ecx)) & !3 & !(1u64 << 63);
    let mut order_a: Vec<u32> = Vec::from([1u32]);
    order_a.extend(bits(user | xss_a).map(u32::from));
    let order_b: Vec<u32> = bits(user).map(u32::from).collect();

    let check = |order: &[u32], xss: u64| -> Result<(), String> {
        if rest.len() > order.len() {
            return Err(format!(
                "the masks account for {} line(s) after subleaf 0, the dump has {}",
                order.len(),
                rest.len()
            ));
        }
        for (line, &sub) in rest.iter().zip(order) {
            if let Some(why) = misfit_0d(sub, line.regs, s0, user, xss) {
                return Err(format!("line {}: {why}", line.no));
            }
        }
        Ok(())
    };
    let fit_a = check(&order_a, xss_a);
    let fit_b = check(&order_b, 0);
    let (order, why_not, skipped_1) = match (fit_a, fit_b) {
        (Ok(()), Ok(())) => {
            return Err(ctx.err(
                l1.no,
                format!(
                    "untagged leaf 0xD lines are ambiguous: this line fits both subleaf 1 and \
                     subleaf {}; refusing to guess (expected `[SL nn]` tags)",
                    order_b.first().copied().unwrap_or(0)
                ),
            ))
        }
        (Ok(()), Err(why)) => (order_a, why, false),
        (Err(why), Ok(())) => (order_b, why, true),
        (Err(a), Err(b)) => {
            return Err(ctx.err(
                l1.no,
                format!(
                "cannot number the untagged leaf 0xD lines: read as subleaves 0, 1, … they fail \
                     ({a}); read as subleaves 0, 2, … without subleaf 1 they fail ({b}); expected \
                     `[SL nn]` tags"
            ),
            ))
        }
    };
    table.put(ctx, l0.no, 0xd, 0, l0.regs)?;
    let mut used = Vec::new();
    for (line, &sub) in rest.iter().zip(order.iter()) {
        table.put(ctx, line.no, 0xd, sub, line.regs)?;
        used.push(sub);
    }
    let list: Vec<String> = core::iter::once(0u32)
        .chain(used.iter().copied())
        .map(|s| format!("{s}"))
        .collect();
    let other = if skipped_1 {
        "0, 1, …"
    } else {
        "0, 2, … (without subleaf 1)"
    };
    notes.push(format!(
        "aida64: leaf 0xd: untagged lines {}-{} numbered as subleaves {} (the other possible order, \
         {other}, does not fit: {why_not})",
        l0.no,
        last.no,
        list.join(", ")
    ));
    if skipped_1 {
        notes.push(String::from(
            "aida64: leaf 0xd subleaf 1 is absent: XSAVEOPT/XSAVEC/XGETBV1/XSAVES/XFD support and \
             the IA32_XSS mask read as 0",
        ));
    }
    let missing: Vec<String> = order
        .iter()
        .skip(used.len())
        .map(|s| format!("{s}"))
        .collect();
    if !missing.is_empty() {
        notes.push(format!(
            "aida64: leaf 0xd: the dump stops before subleaves {} of supported components",
            missing.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cpuid::parse::DumpFormat;
    use crate::cpuid::{CpuidDump, Regs};

    fn p(t: &str) -> Result<CpuidDump, crate::cpuid::parse::ParseError> {
        CpuidDump::parse_as(t, "a.txt", DumpFormat::Aida64)
    }

    #[test]
    fn tagged_lines_annotations_and_first_cpu() {
        let t = "CPUID 00000000: 00000010-68747541-444D4163-69746E65 [AuthenticAMD]\n\
                 CPUID 0000000D: 000002E7-00000980-00000988-00000000 [SL 00] [x87]\n\
                 CPUID 0000000D: 0000000F-00000990-00001800-00000000 [SL 01] [SSE]\n\
                 CPUID 0000000D: 00000010-00000000-00000001-00000000 [SL 0B] [CET_U]\n\
                 CPUID 80000006: 40802040-60804040-04008140-01009140 [L2: 1024 KB] / L3: 32768 KB]\n\
                 CPUID 00000000: 00000010-68747541-444D4163-69746E65 [AuthenticAMD]\n\
                 CPUID 0000000D: 00000007-00000980-00000988-00000000 [SL 00] [x87]\n";
        let d = p(t).unwrap();
        assert_eq!(d.format, "aida64");
        assert_eq!(d.get(0xd, 0).unwrap().eax, 0x2e7);
        assert_eq!(
            d.get(0xd, 11),
            Some(Regs {
                eax: 0x10,
                ebx: 0,
                ecx: 1,
                edx: 0
            })
        );
        assert_eq!(d.get(0x8000_0006, 0).unwrap().edx, 0x01009140);
        assert_eq!(d.len(), 5);
        assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
    }

    #[test]
    fn untagged_0d_without_subleaf_1() {
        // The shape of the old Haswell / Piledriver dumps: subleaf 0, then AVX's subleaf 2.
        let t = "CPUID 00000000: 0000000D-68747541-444D4163-69746E65\n\
                 CPUID 00000004: 00000121-00C0003F-0000003F-00000000\n\
                 CPUID 00000004: 00004122-0040003F-000001FF-00000000\n\
                 CPUID 0000000D: 00000007-00000340-000003C0-40000000\n\
                 CPUID 0000000D: 00000100-00000240-00000000-00000000\n\
                 hello report header\n";
        let d = p(t).unwrap();
        assert_eq!(d.get(0xd, 2).unwrap().ebx, 0x240);
        assert_eq!(d.get(0xd, 1), None);
        assert_eq!(d.get(4, 1).unwrap().eax, 0x4122);
        let notes = d.notes.join("\n");
        assert!(notes.contains("numbered as subleaves 0, 2"), "{notes}");
        assert!(notes.contains("subleaf 1 is absent"), "{notes}");
        assert!(notes.contains("stops before subleaves 62"), "{notes}");
        assert!(notes.contains("leaf 0x4: 2 untagged lines"), "{notes}");
        assert!(
            notes.contains("1 line(s) not starting with `CPUID`"),
            "{notes}"
        );
    }

    #[test]
    fn untagged_0d_with_subleaf_1() {
        let t = "CPUID 00000000: 0000000D-756E6547-6C65746E-49656E69\n\
                 CPUID 0000000D: 00000007-00000340-00000340-00000000\n\
                 CPUID 0000000D: 00000001-00000000-00000000-00000000\n\
                 CPUID 0000000D: 00000100-00000240-00000000-00000000\n";
        let d = p(t).unwrap();
        assert_eq!(d.get(0xd, 1).unwrap().eax, 1);
        assert_eq!(d.get(0xd, 2).unwrap().eax, 0x100);
        assert!(d.notes[0].contains("subleaves 0, 1, 2"), "{:?}", d.notes);
        // With supervisor components from subleaf 1 (CET_U = 11).
        let t = "CPUID 0000000D: 00000007-00000340-00000340-00000000\n\
                 CPUID 0000000D: 0000000F-00000350-00000800-00000000\n\
                 CPUID 0000000D: 00000100-00000240-00000000-00000000\n\
                 CPUID 0000000D: 00000010-00000000-00000001-00000000\n";
        let d = p(t).unwrap();
        assert_eq!(d.get(0xd, 11).unwrap().eax, 0x10);
    }

    #[test]
    fn untagged_0d_refusals_name_the_line() {
        // Fits both orders: size 1 at 576 as subleaf 2, or flags 1 as subleaf 1.
        let amb = "CPUID 0000000D: 00000007-00000340-00000340-00000000\n\
                   CPUID 0000000D: 00000001-00000240-00000000-00000000\n";
        let e = p(amb).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("ambiguous"), "{e}");
        // Too many lines for the masks.
        let many = "CPUID 0000000D: 00000007-00000340-00000340-00000000\n\
                    CPUID 0000000D: 00000000-00000000-00000000-00000000\n\
                    CPUID 0000000D: 00000100-00000240-00000000-00000000\n\
                    CPUID 0000000D: 00000000-00000000-00000000-00000000\n";
        let e = p(many).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("cannot number"), "{e}");
        // First line is not a subleaf 0.
        let not0 = "CPUID 0000000D: 00000100-00000240-00000000-00000000\n\
                    CPUID 0000000D: 00000100-00000240-00000000-00000000\n";
        let e = p(not0).unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn other_refusals() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "CPUID 0000000D 00000007-00000340-00000340-00000000\n",
                1,
                "expected `CPUID",
            ),
            (
                "CPUID 0000000D: 00000007-00000340-00000340\n",
                1,
                "expected `CPUID",
            ),
            (
                "CPUID 0000000D: 00000007-00000340-00000340-00000000-1\n",
                1,
                "expected `CPUID",
            ),
            (
                "CPUID 0000000D: 00000007-00000340-00000340-0000000G\n",
                1,
                "expected `CPUID",
            ),
            ("CPUID 1000000000: 1-2-3-4\n", 1, "expected `CPUID"),
            ("CPUID 0000000D: 1-2-3-4 [SL zz]\n", 1, "[SL nn]"),
            ("CPUID 0000000D: 1-2-3-4 [SL 01\n", 1, "[SL nn]"),
            (
                "CPUID 00000007: 1-2-3-4 [SL 00]\nCPUID 00000007: 1-2-3-5\n",
                2,
                "tagged lines (line 1)",
            ),
            (
                "CPUID 00000001: 1-2-3-4\nCPUID 00000001: 1-2-3-5\n",
                2,
                "repeated",
            ),
            (
                "CPUID 00000001: 1-2-3-4 [SL 00]\nCPUID 00000001: 1-2-3-5 [SL 0]\n",
                2,
                "already given",
            ),
        ];
        for &(text, line, what) in cases {
            let e = p(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
        let e = p("nothing here\n").unwrap_err();
        assert_eq!(e.line, 0);
        // A repeated leaf outside the kept set is dropped with a note, identical repeats kept.
        let d = p("CPUID 00000010: 1-2-3-4\nCPUID 00000010: 1-2-3-5\nCPUID 00000001: 1-2-3-4\nCPUID 00000001: 1-2-3-4\n").unwrap();
        assert_eq!(d.get(0x10, 0), None);
        assert_eq!(d.get(1, 0).unwrap().edx, 4);
        assert!(d.notes[0].contains("dropped"), "{:?}", d.notes);
    }
}
