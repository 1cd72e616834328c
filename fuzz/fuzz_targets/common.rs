#![allow(dead_code)]
//! What every target does with a dump that parsed: lay it out every way the tools do, and
//! check that the project's JSON carries it unchanged. A panic here is a bug.

use xstate::cpuid::parse::DumpFormat;
use xstate::cpuid::CpuidDump;
use xstate::layout::Layout;

/// Parses `data` (when UTF-8) in `format`, or with detection when `None`, and exercises the
/// result.
pub fn run(data: &[u8], format: Option<DumpFormat>) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match format {
        Some(f) => CpuidDump::parse_as(text, "fuzz", f),
        None => CpuidDump::parse(text, "fuzz"),
    };
    match parsed {
        Ok(d) => exercise(&d),
        Err(e) => {
            // Errors name the source and, when one line is at fault, that line; an error about
            // the whole file (line 0: no data line at all, an unrecognised format) names no line
            // and never prints "line 0". Each says what was expected.
            let msg = e.to_string();
            if e.line == 0 {
                assert!(msg.starts_with("fuzz: ") && !msg.starts_with("fuzz: line "), "{msg}");
                assert!(msg.contains("expected"), "{msg}");
            } else {
                assert!(msg.starts_with(&format!("fuzz: line {}: ", e.line)), "{msg}");
            }
        }
    }
}

pub fn exercise(d: &CpuidDump) {
    let l = Layout::from_dump(d);
    let _ = l.consistency();
    let _ = l.size_notes();
    let user = l.xcr0_supported();
    let sup = l.xss_supported();
    if let Ok(s) = l.standard(user) {
        assert!(s.size >= 576);
    }
    if let Ok(c) = l.compacted(user | sup) {
        let mut end = 576;
        for p in c.placements.iter().filter(|p| p.id >= 2) {
            assert!(p.offset >= end, "compacted placements overlap");
            end = p.end();
        }
        assert_eq!(c.size, end);
    }
    let _ = l.check_xcr0(user);
    let _ = l.infer_xss(user);
    let _ = d.brand();
    let _ = d.family_model_stepping();
    let back = CpuidDump::parse(&d.to_json(), "round trip").expect("to_json output must parse");
    assert_eq!(&back, d, "JSON round trip");
}
