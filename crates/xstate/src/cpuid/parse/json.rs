//! This project's JSON form of a [`CpuidDump`] (schema `xstate-cpuid/1`).
//!
//! ```json
//! {
//!   "schema": "xstate-cpuid/1",
//!   "source": "host",
//!   "format": "host",
//!   "notes": [],
//!   "xcr0": "0xe7",
//!   "xinuse": "0x3",
//!   "leaves": [
//!     {"leaf": "0xd", "subleaf": "0x0", "eax": "0xe7", "ebx": "0x980", "ecx": "0x980", "edx": "0x0"}
//!   ]
//! }
//! ```
//!
//! * `schema` (required): exactly `xstate-cpuid/1`.
//! * `source`, `format` (required strings): where the data came from and its original format
//!   (`host`, `cpuid-r`, `aida64`, `hwloc`, …); kept as written so a dump survives a round trip.
//! * `notes` (optional, default empty): what the original reader inferred.
//! * `xcr0`, `xinuse` (optional, `null` or absent when unknown): 64-bit hex strings.
//! * `leaves` (required): one object per CPUID query; every value a hex string with `0x`
//!   prefix (written in lower case; upper-case digits are accepted); `leaf` and `subleaf` and
//!   the registers are 32-bit. A (leaf, subleaf) pair may appear once.
//!
//! Unknown fields are ignored, so later versions may add fields without a new schema name.

use super::{Ctx, ParseError};
use crate::cpuid::{CpuidDump, Regs};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The schema name written in, and required from, every JSON dump.
pub const SCHEMA: &str = "xstate-cpuid/1";

/// A `0x`-prefixed hex string of at most `BITS` bits.
struct Hex<const BITS: u32>(u64);

impl<'de, const BITS: u32> Deserialize<'de> for Hex<BITS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const B: u32>;
        impl<const B: u32> Visitor<'_> for V<B> {
            type Value = Hex<B>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a {B}-bit hex string like \"0x1f\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Hex<B>, E> {
                let digits = s
                    .strip_prefix("0x")
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))?;
                let mut v: u64 = 0;
                for c in digits.chars() {
                    let digit = c
                        .to_digit(16)
                        .ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))?;
                    v = v
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(digit)))
                        .filter(|&v| B >= 64 || v >> B == 0)
                        .ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))?;
                }
                Ok(Hex(v))
            }
        }
        d.deserialize_str(V::<BITS>)
    }
}

impl<const BITS: u32> Hex<BITS> {
    /// The value as u32 (only used for `BITS` ≤ 32, where the parser bounded it).
    fn u32(&self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }
}

/// The `schema` field: must be [`SCHEMA`].
struct Schema;

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Schema;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "the schema name \"{SCHEMA}\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Schema, E> {
                if s == SCHEMA {
                    Ok(Schema)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
struct Entry {
    leaf: Hex<32>,
    subleaf: Hex<32>,
    eax: Hex<32>,
    ebx: Hex<32>,
    ecx: Hex<32>,
    edx: Hex<32>,
}

/// The `leaves` array, refusing a (leaf, subleaf) given twice.
struct Leaves(BTreeMap<(u32, u32), Regs>);

impl<'de> Deserialize<'de> for Leaves {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Leaves;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of {\"leaf\", \"subleaf\", \"eax\", \"ebx\", \"ecx\", \"edx\"} objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Leaves, A::Error> {
                let mut map = BTreeMap::new();
                let mut index = 0usize;
                while let Some(e) = seq.next_element::<Entry>()? {
                    let key = (e.leaf.u32(), e.subleaf.u32());
                    let regs = Regs {
                        eax: e.eax.u32(),
                        ebx: e.ebx.u32(),
                        ecx: e.ecx.u32(),
                        edx: e.edx.u32(),
                    };
                    if map.insert(key, regs).is_some() {
                        return Err(de::Error::custom(format!(
                            "leaves[{index}]: leaf {:#x} subleaf {:#x} appears twice; expected one entry per (leaf, subleaf)",
                            key.0, key.1
                        )));
                    }
                    index += 1;
                }
                Ok(Leaves(map))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct JsonDump {
    #[allow(dead_code)]
    schema: Schema,
    source: String,
    format: String,
    #[serde(default)]
    notes: Vec<String>,
    #[serde(default)]
    xcr0: Option<Hex<64>>,
    #[serde(default)]
    xinuse: Option<Hex<64>>,
    leaves: Leaves,
}

pub(super) fn parse(text: &str, ctx: &Ctx<'_>) -> Result<CpuidDump, ParseError> {
    let j: JsonDump = serde_json::from_str(text).map_err(|e| {
        ctx.err(
            e.line(),
            format!("xstate JSON ({SCHEMA}): {e}; see the schema in the documentation of CpuidDump::to_json"),
        )
    })?;
    let mut d = CpuidDump::new(&j.source);
    d.format = j.format;
    d.notes = j.notes;
    d.xcr0 = j.xcr0.map(|h| h.0);
    d.xinuse = j.xinuse.map(|h| h.0);
    for ((leaf, sub), regs) in j.leaves.0 {
        d.insert(leaf, sub, regs);
    }
    Ok(d)
}

#[derive(serde::Serialize)]
struct OutEntry {
    leaf: String,
    subleaf: String,
    eax: String,
    ebx: String,
    ecx: String,
    edx: String,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

fn hex_or_null(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("\"{v:#x}\""),
        None => String::from("null"),
    }
}

impl CpuidDump {
    /// The dump as JSON (schema `xstate-cpuid/1`, one CPUID entry per line; the fields are
    /// described in [`crate::cpuid::parse::json`]). [`CpuidDump::parse`] reads it
    /// back to an equal dump, `source`, `format`, `notes`, `xcr0` and `xinuse` included.
    ///
    /// ```
    /// use xstate::cpuid::{CpuidDump, Regs};
    /// let mut d = CpuidDump::new("host");
    /// d.format = "host".into();
    /// d.xcr0 = Some(0xe7);
    /// d.insert(0xd, 0, Regs { eax: 0xe7, ebx: 0x980, ecx: 0x980, edx: 0 });
    /// let j = d.to_json();
    /// assert!(j.contains(r#"{"leaf":"0xd","subleaf":"0x0","eax":"0xe7","ebx":"0x980","ecx":"0x980","edx":"0x0"}"#));
    /// assert_eq!(CpuidDump::parse(&j, "ignored").unwrap(), d);
    /// ```
    pub fn to_json(&self) -> String {
        let mut s = String::from("{\n");
        s.push_str(&format!("  \"schema\": \"{SCHEMA}\",\n"));
        s.push_str(&format!("  \"source\": {},\n", json_string(&self.source)));
        s.push_str(&format!("  \"format\": {},\n", json_string(&self.format)));
        s.push_str("  \"notes\": [");
        for (i, n) in self.notes.iter().enumerate() {
            s.push_str(if i == 0 { "\n    " } else { ",\n    " });
            s.push_str(&json_string(n));
        }
        s.push_str(if self.notes.is_empty() {
            "],\n"
        } else {
            "\n  ],\n"
        });
        s.push_str(&format!("  \"xcr0\": {},\n", hex_or_null(self.xcr0)));
        s.push_str(&format!("  \"xinuse\": {},\n", hex_or_null(self.xinuse)));
        s.push_str("  \"leaves\": [");
        for (i, (leaf, sub, r)) in self.entries().enumerate() {
            let e = OutEntry {
                leaf: format!("{leaf:#x}"),
                subleaf: format!("{sub:#x}"),
                eax: format!("{:#x}", r.eax),
                ebx: format!("{:#x}", r.ebx),
                ecx: format!("{:#x}", r.ecx),
                edx: format!("{:#x}", r.edx),
            };
            s.push_str(if i == 0 { "\n    " } else { ",\n    " });
            s.push_str(&serde_json::to_string(&e).unwrap_or_default());
        }
        s.push_str(if self.is_empty() {
            "]\n}\n"
        } else {
            "\n  ]\n}\n"
        });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::SCHEMA;
    use crate::cpuid::parse::DumpFormat;
    use crate::cpuid::{CpuidDump, Regs};
    use alloc::string::String;

    fn sample() -> CpuidDump {
        let mut d = CpuidDump::new("a \"quoted\" source\n");
        d.format = String::from("aida64");
        d.notes.push(String::from("note one"));
        d.notes.push(String::from("nöte two"));
        d.xcr0 = Some(0x8000_0000_0000_00e7);
        d.insert(
            0,
            0,
            Regs {
                eax: 0xd,
                ebx: 0x756e6547,
                ecx: 0x6c65746e,
                edx: 0x49656e69,
            },
        );
        d.insert(
            0xd,
            63,
            Regs {
                eax: u32::MAX,
                ebx: 0,
                ecx: 1,
                edx: 2,
            },
        );
        d.insert(u32::MAX, u32::MAX, Regs::default());
        d
    }

    #[test]
    fn round_trip_keeps_everything() {
        let d = sample();
        let j = d.to_json();
        let back = CpuidDump::parse(&j, "other name").unwrap();
        assert_eq!(back, d);
        assert_eq!(back.xinuse, None);
        assert!(j.contains("\"xcr0\": \"0x80000000000000e7\""), "{j}");
        assert!(j.contains("\"leaf\":\"0xffffffff\""), "{j}");
        // Empty dump, no notes.
        let e = CpuidDump::new("");
        assert_eq!(CpuidDump::parse(&e.to_json(), "x").unwrap(), e);
    }

    #[test]
    fn minimal_document_and_upper_case() {
        let j = format!(
            "{{\"schema\":\"{SCHEMA}\",\"source\":\"s\",\"format\":\"hwloc\",\"future\":1,\
             \"leaves\":[{{\"leaf\":\"0xD\",\"subleaf\":\"0x0\",\"eax\":\"0x7\",\"ebx\":\"0x0\",\"ecx\":\"0x0\",\"edx\":\"0x0\"}}]}}"
        );
        let d = CpuidDump::parse(&j, "x").unwrap();
        assert_eq!(d.get(0xd, 0).unwrap().eax, 7);
        assert_eq!(d.xcr0, None);
        assert!(d.notes.is_empty());
    }

    #[test]
    fn errors_name_line_and_expectation() {
        let good = sample().to_json();
        let cases: [(String, usize, &str); 8] = [
            (good.replace(SCHEMA, "xstate-cpuid/2"), 2, "xstate-cpuid/1"),
            (
                good.replace("\"eax\":\"0xd\"", "\"eax\":\"d\""),
                0,
                "hex string",
            ),
            (
                good.replace("\"ecx\":\"0x1\"", "\"ecx\":\"0x\""),
                0,
                "hex string",
            ),
            (
                good.replace("\"0xffffffff\"", "\"0x100000000\""),
                0,
                "32-bit hex",
            ),
            (
                good.replace("\"0x80000000000000e7\"", "\"0x180000000000000e7\""),
                0,
                "64-bit hex",
            ),
            (good.replace("\"leaves\"", "\"leafs\""), 0, "leaves"),
            (
                good.replace(
                    "\"0xd\",\"subleaf\":\"0x3f\"",
                    "\"0x0\",\"subleaf\":\"0x0\"",
                ),
                0,
                "appears twice",
            ),
            (good.replace("\"schema\"", "\"schema\"\""), 2, "expected"),
        ];
        for (text, line, what) in cases.iter() {
            assert_ne!(text, &good, "replacement did nothing for {what}");
            let e = CpuidDump::parse_as(text, "j.json", DumpFormat::Json).unwrap_err();
            if *line != 0 {
                assert_eq!(e.line, *line, "{e}");
            }
            assert!(e.line >= 1, "{e}");
            assert!(e.message.contains(what), "{what}: {e}");
            assert_eq!(e.source_name, "j.json");
        }
        let e = CpuidDump::parse("{", "j").unwrap_err();
        assert_eq!(e.line, 1);
    }
}
