//! Readers for CPUID dump files, with automatic format detection.
//!
//! | format | example line | module |
//! |---|---|---|
//! | Linux `cpuid -r` | `   0x0000000d 0x01: eax=0x0000000f ebx=0x000009a8 ecx=0x00001800 edx=0x00000000` | `cpuid_r` |
//! | AIDA64 / InstLatX64 | `CPUID 0000000D: 0000000F-00000990-00001800-00000000 [SL 01]` | `aida64` |
//! | hwloc-gather-cpuid | `5 d 0 1 0 => f 9a8 1800 0` | `hwloc` |
//! | this project's JSON | `{"schema": "xstate-cpuid/1", …}` | `json` (see [`CpuidDump::to_json`]) |
//!
//! A file that holds several logical CPUs yields the **first** one. Every reader is total:
//! it never panics, and every error names the source, the 1-based line and what was expected.
//!
//! ```
//! use xstate::cpuid::CpuidDump;
//! let text = "CPU:\n   0x0000000d 0x00: eax=0x00000007 ebx=0x00000340 ecx=0x00000340 edx=0x00000000\n";
//! let d = CpuidDump::parse(text, "example.txt").unwrap();
//! assert_eq!(d.format, "cpuid-r");
//! assert_eq!(d.leaf_0d().xcr0_supported(), 0x7);
//! let e = CpuidDump::parse("CPU:\n   0x0000000d eax=1\n", "bad.txt").unwrap_err();
//! assert_eq!(e.line, 2);
//! assert!(e.to_string().starts_with("bad.txt: line 2: "));
//! ```

use super::{CpuidDump, Regs};
use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use core::fmt;

mod aida64;
mod cpuid_r;
mod hwloc;
pub mod json;

/// Why a dump could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {}{message}", line_prefix(*line))]
pub struct ParseError {
    /// The file or source name.
    pub source_name: String,
    /// 1-based line number (0 when the error is about the whole file).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// `line N: `, or nothing when the error is about the whole file (line 0).
fn line_prefix(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!("line {line}: ")
    }
}

/// The dump formats this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DumpFormat {
    /// Linux `cpuid -r` (Debian package `cpuid`): `   0x0000000d 0x01: eax=0x… ebx=0x… ecx=0x…
    /// edx=0x…`, CPUs introduced by `CPU:` or `CPU N:`.
    CpuidR,
    /// AIDA64 / InstLatX64 text: `CPUID 0000000D: EAX-EBX-ECX-EDX [SL 01]`; a new CPU starts
    /// where leaf 0 repeats.
    Aida64,
    /// hwloc-gather-cpuid: `mask eax ebx ecx edx => eax ebx ecx edx` in hex; mask bit 0 = the
    /// EAX input is used, bit 2 = the ECX input (subleaf) is used.
    Hwloc,
    /// This project's JSON (schema `xstate-cpuid/1`, written by [`CpuidDump::to_json`]).
    Json,
}

impl DumpFormat {
    /// Every format, in detection order.
    pub const ALL: [DumpFormat; 4] = [
        DumpFormat::Json,
        DumpFormat::CpuidR,
        DumpFormat::Aida64,
        DumpFormat::Hwloc,
    ];

    /// The name stored in [`CpuidDump::format`]: `cpuid-r`, `aida64`, `hwloc`, `json`.
    pub fn name(&self) -> &'static str {
        match self {
            DumpFormat::CpuidR => "cpuid-r",
            DumpFormat::Aida64 => "aida64",
            DumpFormat::Hwloc => "hwloc",
            DumpFormat::Json => "json",
        }
    }

    /// The format with this name (see [`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<DumpFormat> {
        DumpFormat::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Detects the format of a dump: JSON when the first non-blank character is `{`,
    /// otherwise the first line that looks like a data line (or a `cpuid -r` CPU header) of one
    /// of the text formats decides. `#` comment lines and unrecognised lines are passed over
    /// here; the chosen reader reports them with their line number.
    ///
    /// ```
    /// use xstate::cpuid::parse::DumpFormat;
    /// assert_eq!(DumpFormat::detect("# mask e[abcd]x => e[abcd]x\n1 0 0 0 0 => d 0 0 0\n"), Some(DumpFormat::Hwloc));
    /// assert_eq!(DumpFormat::detect("CPUID 00000000: 0000000D-756E6547-6C65746E-49656E69"), Some(DumpFormat::Aida64));
    /// assert_eq!(DumpFormat::detect("hello"), None);
    /// ```
    pub fn detect(text: &str) -> Option<DumpFormat> {
        let text = strip_bom(text);
        if text.trim_start().starts_with('{') {
            return Some(DumpFormat::Json);
        }
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if l.starts_with("CPUID ") && l.contains(':') {
                return Some(DumpFormat::Aida64);
            }
            if cpuid_r::is_cpu_header(l) || (l.starts_with("0x") && l.contains("eax=")) {
                return Some(DumpFormat::CpuidR);
            }
            if l.contains("=>") {
                return Some(DumpFormat::Hwloc);
            }
        }
        None
    }
}

impl fmt::Display for DumpFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl CpuidDump {
    /// Parses a dump, detecting its format (see [`DumpFormat::detect`]). `source` names the
    /// dump in errors and becomes [`CpuidDump::source`] (the JSON format carries its own).
    /// When the text holds several logical CPUs, the first one is returned.
    pub fn parse(text: &str, source: &str) -> Result<CpuidDump, ParseError> {
        match DumpFormat::detect(text) {
            Some(f) => CpuidDump::parse_as(text, source, f),
            None => Err(ParseError {
                source_name: String::from(source),
                line: 0,
                message: String::from(
                    "unrecognised CPUID dump format: expected Linux `cpuid -r` \
                     (`   0x0000000d 0x01: eax=0x… ebx=0x… ecx=0x… edx=0x…`), AIDA64 \
                     (`CPUID 0000000D: EAX-EBX-ECX-EDX [SL 01]`), hwloc-gather-cpuid \
                     (`5 d 0 1 0 => eax ebx ecx edx`) or xstate JSON (`{\"schema\": \"xstate-cpuid/1\", …}`)",
                ),
            }),
        }
    }

    /// Parses a dump in a given format (no detection).
    pub fn parse_as(text: &str, source: &str, format: DumpFormat) -> Result<CpuidDump, ParseError> {
        let text = strip_bom(text);
        let ctx = Ctx { source };
        match format {
            DumpFormat::CpuidR => cpuid_r::parse(text, &ctx),
            DumpFormat::Aida64 => aida64::parse(text, &ctx),
            DumpFormat::Hwloc => hwloc::parse(text, &ctx),
            DumpFormat::Json => json::parse(text, &ctx),
        }
    }

    /// Like [`parse`](Self::parse) for raw file contents: bytes that are not UTF-8 (they can
    /// only occur in comments and annotations of the text formats) are replaced by U+FFFD.
    pub fn parse_bytes(bytes: &[u8], source: &str) -> Result<CpuidDump, ParseError> {
        let text: Cow<'_, str> = String::from_utf8_lossy(bytes);
        CpuidDump::parse(&text, source)
    }
}

fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// What every reader needs: the source name for errors.
pub(crate) struct Ctx<'a> {
    pub(crate) source: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn err(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            source_name: String::from(self.source),
            line,
            message: message.into(),
        }
    }

    /// A dump with this context's source name and the given format name.
    pub(crate) fn dump(&self, format: DumpFormat) -> CpuidDump {
        let mut d = CpuidDump::new(self.source);
        d.format = String::from(format.name());
        d
    }
}

/// Parses 1 to 8 hex digits (any case, no prefix, no sign) into a u32 without overflow.
pub(crate) fn hex_u32(s: &str) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for c in s.chars() {
        let d = c.to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(d)?;
    }
    Some(v)
}

/// Collects (leaf, subleaf) → registers with the line each came from; a second line for the
/// same query is accepted only when it repeats the same values.
#[derive(Default)]
pub(crate) struct Table {
    map: BTreeMap<(u32, u32), (Regs, usize)>,
}

impl Table {
    pub(crate) fn put(
        &mut self,
        ctx: &Ctx<'_>,
        line: usize,
        leaf: u32,
        subleaf: u32,
        regs: Regs,
    ) -> Result<(), ParseError> {
        if let Some(&(prev, prev_line)) = self.map.get(&(leaf, subleaf)) {
            if prev != regs {
                return Err(ctx.err(
                    line,
                    format!(
                        "CPUID(leaf {leaf:#x}, subleaf {subleaf:#x}) was already given on line \
                         {prev_line} with different values; expected one result per query"
                    ),
                ));
            }
            return Ok(());
        }
        self.map.insert((leaf, subleaf), (regs, line));
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Moves the entries into a dump.
    pub(crate) fn fill(self, d: &mut CpuidDump) {
        for ((leaf, sub), (regs, _)) in self.map {
            d.insert(leaf, sub, regs);
        }
    }
}

/// The error every text reader gives for a file without a single data line.
pub(crate) fn empty_error(ctx: &Ctx<'_>, format: DumpFormat, expected: &str) -> ParseError {
    ctx.err(
        0,
        format!("no CPUID data found in this {format} dump: expected at least one line like `{expected}`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing_is_total() {
        assert_eq!(hex_u32("0"), Some(0));
        assert_eq!(hex_u32("fFfFfFfF"), Some(u32::MAX));
        assert_eq!(hex_u32("000000001"), Some(1));
        assert_eq!(hex_u32("100000000"), None);
        assert_eq!(hex_u32("+1"), None);
        assert_eq!(hex_u32(""), None);
        assert_eq!(hex_u32("0x1"), None);
        assert_eq!(hex_u32("é"), None);
    }

    #[test]
    fn detection() {
        assert_eq!(
            DumpFormat::detect("  \n {\"schema\": 1}"),
            Some(DumpFormat::Json)
        );
        assert_eq!(DumpFormat::detect("\u{feff}{}"), Some(DumpFormat::Json));
        assert_eq!(DumpFormat::detect("CPU 0:\n"), Some(DumpFormat::CpuidR));
        assert_eq!(
            DumpFormat::detect("   0x00000000 0x00: eax=0x1 ebx=0x0 ecx=0x0 edx=0x0"),
            Some(DumpFormat::CpuidR)
        );
        assert_eq!(
            DumpFormat::detect("# comment\n\n1 0 0 0 0 => 1 2 3 4"),
            Some(DumpFormat::Hwloc)
        );
        assert_eq!(DumpFormat::detect(""), None);
        assert_eq!(DumpFormat::detect("# only => a comment"), None);
        for f in DumpFormat::ALL {
            assert_eq!(DumpFormat::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn unknown_format_is_an_error_naming_the_source() {
        let e = CpuidDump::parse("hello\nworld\n", "x.txt").unwrap_err();
        assert_eq!(e.source_name, "x.txt");
        assert_eq!(e.line, 0);
        assert!(e.message.contains("unrecognised"), "{e}");
        let e = CpuidDump::parse_bytes(b"\xff\xfe", "y").unwrap_err();
        assert_eq!(e.line, 0);
    }

    #[test]
    fn conflicting_duplicates_are_refused() {
        let ctx = Ctx { source: "t" };
        let mut t = Table::default();
        let r = Regs {
            eax: 1,
            ..Regs::default()
        };
        t.put(&ctx, 1, 0xd, 0, r).unwrap();
        t.put(&ctx, 2, 0xd, 0, r).unwrap();
        let e = t.put(&ctx, 3, 0xd, 0, Regs::default()).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("line 1"), "{e}");
    }

    /// Regression for the fuzz targets' empty input (`crash-da39a3ee…`, 2026-11-30): a text dump
    /// without a single data line is an error about the whole file (line 0) that names the
    /// source, the format and an example line, and prints no "line 0".
    #[test]
    fn empty_text_dump_is_a_whole_file_error() {
        for f in [DumpFormat::CpuidR, DumpFormat::Aida64, DumpFormat::Hwloc] {
            for text in ["", "\n", " \n\n"] {
                let e = CpuidDump::parse_as(text, "fuzz", f).unwrap_err();
                let msg = e.to_string();
                assert_eq!(e.line, 0, "{msg}");
                let want = format!(
                    "fuzz: no CPUID data found in this {} dump: expected at least one line like `",
                    f.name()
                );
                assert!(msg.starts_with(&want), "{msg}");
                assert!(!msg.contains("line 0"), "{msg}");
            }
        }
        let e = CpuidDump::parse("", "fuzz").unwrap_err();
        assert_eq!(e.line, 0);
        assert!(
            e.to_string()
                .starts_with("fuzz: unrecognised CPUID dump format: expected"),
            "{e}"
        );
    }
}
