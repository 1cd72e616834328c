//! Property tests of the layout engine over real CPUs (tests/fixtures/cpuid) and of the dump
//! parsers over random and mutated text.
//!
//! Layout facts checked (SDM Vol. 1 §13.4.2-§13.4.3, DESIGN.md §4):
//! - compacted form: components in increasing order from 576, each 64-byte aligned when
//!   CPUID.(0xD,i).ECX[1] says so, none overlapping, size = end of the last one;
//! - standard form: every component at CPUID.(0xD,i).EBX, none overlapping on a consistent CPU,
//!   size = max end (at least 576);
//! - both forms hold exactly the components of the mask.
//!
//! Parser facts: no input makes a reader panic; whatever parses lays out without panicking and
//! survives the JSON round trip unchanged.

use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;
use xstate::components::{bits, mask};
use xstate::cpuid::CpuidDump;
use xstate::layout::{Layout, EXTENDED_START};

struct Fixture {
    name: String,
    text: String,
    layout: Layout,
}

fn fixtures() -> &'static [Fixture] {
    static ALL: OnceLock<Vec<Fixture>> = OnceLock::new();
    ALL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpuid");
        let mut out = Vec::new();
        for kind in ["hwloc", "aida64", "cpuid-r"] {
            let mut files: Vec<_> = std::fs::read_dir(dir.join(kind))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "txt"))
                .collect();
            files.sort();
            for p in files {
                let name = format!("{kind}/{}", p.file_name().unwrap().to_string_lossy());
                let text = std::fs::read_to_string(&p).unwrap();
                let d = CpuidDump::parse(&text, &name).unwrap();
                let layout = Layout::from_dump(&d);
                out.push(Fixture { name, text, layout });
            }
        }
        out
    })
}

/// Consistent CPUs with XSAVE: where the layout properties must hold.
fn consistent() -> Vec<&'static Fixture> {
    let v: Vec<_> = fixtures()
        .iter()
        .filter(|f| f.layout.has_xsave() && f.layout.consistency().is_empty())
        .collect();
    assert!(v.len() >= 30, "only {} consistent fixtures", v.len());
    v
}

/// Turns random bits into an XCR0 the rules of DESIGN §4 accept on this CPU: x87 always;
/// SSE under AVX; AVX-512 all or none and with AVX; the MPX and AMX pairs whole; no APX with
/// MPX.
fn valid_xcr0(l: &Layout, r: u64) -> u64 {
    let sup = l.xcr0_supported();
    let mut x = (r & sup) | mask::X87;
    let whole = |x: u64, m: u64| {
        if x & m != 0 && sup & m == m {
            x | m
        } else {
            x & !m
        }
    };
    x = whole(x, mask::AVX512);
    x = whole(x, mask::MPX);
    x = whole(x, mask::AMX);
    if x & mask::AVX512 != 0 {
        x |= mask::AVX;
    }
    if x & mask::AVX != 0 {
        x |= mask::SSE;
    }
    if x & mask::MPX != 0 {
        x &= !mask::APX;
    }
    x
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn compacted_and_standard_forms(pick in any::<prop::sample::Index>(), r in any::<u64>(), s in any::<u64>()) {
        let cs = consistent();
        let f = cs[pick.index(cs.len())];
        let l = &f.layout;
        let xcr0 = valid_xcr0(l, r);
        prop_assert!(l.check_xcr0(xcr0).is_ok(), "{}: {:#x} should be valid", f.name, xcr0);
        let xss = s & l.xss_supported();
        prop_assert!(l.check_xss(xss).is_ok());
        let m = xcr0 | xss;

        // Compacted form.
        let c = l.compacted(m).unwrap();
        let ids: Vec<u8> = c.placements.iter().map(|p| p.id).collect();
        prop_assert_eq!(&ids, &bits(m).collect::<Vec<_>>(), "{}: components of {:#x}", f.name, m);
        let mut end = EXTENDED_START;
        for p in c.placements.iter().filter(|p| p.id >= 2) {
            let g = l.geometry(p.id);
            prop_assert!(p.offset >= end, "{}: {} at {} overlaps the previous end {}", f.name, p.id, p.offset, end);
            if g.align64 {
                prop_assert_eq!(p.offset % 64, 0, "{}: component {} must be 64-byte aligned", f.name, p.id);
                prop_assert!(p.offset - end < 64, "{}: no more padding than alignment needs", f.name);
            } else {
                prop_assert_eq!(p.offset, end, "{}: unaligned component {} follows directly", f.name, p.id);
            }
            prop_assert_eq!(p.size, g.size);
            end = p.end();
        }
        prop_assert_eq!(c.size, end, "{}: size = end of the last component", f.name);
        prop_assert_eq!(c.xcomp_bv(), m | mask::COMPACTED);
        // Legacy components stay at their FXSAVE offsets.
        prop_assert_eq!(c.offset_of(0), Some(0));
        prop_assert_eq!(c.offset_of(1), (m & mask::SSE != 0).then_some(160));

        // Standard form of the user part.
        let st = l.standard(xcr0).unwrap();
        let sids: Vec<u8> = st.placements.iter().map(|p| p.id).collect();
        prop_assert_eq!(&sids, &bits(xcr0).collect::<Vec<_>>());
        let cu = l.compacted(xcr0).unwrap();
        let cids: Vec<u8> = cu.placements.iter().map(|p| p.id).collect();
        prop_assert_eq!(&sids, &cids, "{}: both forms hold the same components", f.name);
        let mut spans: Vec<(u32, u32, u8)> = st.placements.iter().filter(|p| p.id >= 2).map(|p| (p.offset, p.end(), p.id)).collect();
        for p in &st.placements {
            if p.id >= 2 {
                prop_assert_eq!(Some(p.offset), l.geometry(p.id).standard_offset);
                prop_assert!(p.offset >= EXTENDED_START);
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            prop_assert!(w[0].1 <= w[1].0, "{}: components {} and {} overlap", f.name, w[0].2, w[1].2);
        }
        let max_end = spans.iter().map(|s| s.1).max().unwrap_or(EXTENDED_START).max(EXTENDED_START);
        prop_assert_eq!(st.size, max_end);
        prop_assert!(st.size <= l.leaf().max_standard_size(), "{}: within CPUID.(0xD,0).ECX", f.name);
        prop_assert_eq!(st.xcomp_bv(), 0);
        // A supervisor component has no place in the standard form.
        if xss != 0 {
            prop_assert!(l.standard(xcr0 | xss).is_err());
        }
    }

    /// Arbitrary leaf 0xD geometry (sizes and offsets up to u32::MAX, any flags) never makes
    /// the engine panic or overflow; what it places obeys the compacted-form rules.
    #[test]
    fn layout_never_panics_on_arbitrary_geometry(
        subs in prop::collection::vec((0u32..64, prop_oneof![any::<u32>(), 0u32..0x3000, Just(u32::MAX), (u32::MAX - 0x1000)..=u32::MAX], prop_oneof![any::<u32>(), 0u32..0x3000], 0u32..8, any::<u32>()), 0..24),
        xsave in any::<bool>(),
    ) {
        let mut d = CpuidDump::new("arbitrary");
        d.insert(1, 0, xstate::cpuid::Regs { eax: 0, ebx: 0, ecx: u32::from(xsave) << 26, edx: 1 << 24 });
        for (sub, eax, ebx, ecx, edx) in subs {
            d.insert(0xd, sub, xstate::cpuid::Regs { eax, ebx, ecx, edx });
        }
        check_parsed(&d)?;
        let l = Layout::from_dump(&d);
        if let Ok(c) = l.compacted(l.xcr0_supported() | l.xss_supported()) {
            let mut end = EXTENDED_START;
            for p in c.placements.iter().filter(|p| p.id >= 2) {
                prop_assert!(p.offset >= end);
                prop_assert!(p.offset.checked_add(p.size).is_some());
                end = p.end();
            }
            prop_assert_eq!(c.size, end);
        }
    }

    #[test]
    fn parsers_never_panic_on_random_text(s in any::<String>()) {
        let _ = CpuidDump::parse(&s, "random");
        let _ = CpuidDump::parse_bytes(s.as_bytes(), "random");
    }

    #[test]
    fn parsers_never_panic_on_format_like_text(s in "(CPU[ 0-9]*:|CPUID [0-9A-F]{1,9}: [0-9A-F-]{0,40}( \\[SL [0-9a-fA-F]{0,3}\\]?)?| *0x[0-9a-f]{1,9} 0x[0-9a-f]{1,3}: (e[abcd]x=0x[0-9a-f]{0,9} ?){0,5}|[0-9a-f]{1,3}( [0-9a-f]{1,9}){0,5} => [0-9a-f ]{0,40}|#.*|)(\r?\n(CPU[ 0-9]*:|CPUID [0-9A-F]{1,9}: [0-9A-F-]{0,40}( \\[SL [0-9a-fA-F]{0,3}\\]?)?| *0x[0-9a-f]{1,9} 0x[0-9a-f]{1,3}: (e[abcd]x=0x[0-9a-f]{0,9} ?){0,5}|[0-9a-f]{1,3}( [0-9a-f]{1,9}){0,5} => [0-9a-f ]{0,40}|#.*|)){0,30}") {
        if let Ok(d) = CpuidDump::parse(&s, "regex") {
            check_parsed(&d)?;
        }
    }

    #[test]
    fn parsers_never_panic_on_mutated_fixtures(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..6, prop::sample::select(b"0123456789abcdefABCDEF xX-:=[]#{}\",\n\r\t>SLCPUIDe".to_vec())), 1..12),
        truncate in any::<Option<prop::sample::Index>>(),
    ) {
        let all = fixtures();
        let f = &all[pick.index(all.len())];
        let mut bytes = f.text.as_bytes().to_vec();
        for (at, op, b) in edits {
            if bytes.is_empty() {
                bytes.push(b);
                continue;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = b,
                1 => bytes.insert(i, b),
                2 => { bytes.remove(i); }
                3 => {
                    // Duplicate the line around i.
                    let start = bytes[..i].iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
                    let end = bytes[i..].iter().position(|&c| c == b'\n').map_or(bytes.len(), |p| i + p + 1);
                    let line = bytes[start..end].to_vec();
                    bytes.splice(start..start, line);
                }
                4 => {
                    // Delete the line around i.
                    let start = bytes[..i].iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
                    let end = bytes[i..].iter().position(|&c| c == b'\n').map_or(bytes.len(), |p| i + p + 1);
                    bytes.drain(start..end);
                }
                _ => bytes[i] = bytes[i].wrapping_add(1),
            }
        }
        if let Some(t) = truncate {
            let n = t.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        if let Ok(d) = CpuidDump::parse_bytes(&bytes, &f.name) {
            check_parsed(&d)?;
        }
        // The JSON form of the fixture, mutated the same way, must not panic either.
        let json = CpuidDump::parse(&f.text, &f.name).unwrap().to_json();
        let mut jb = json.into_bytes();
        let n = jb.len();
        if n > 0 {
            jb[bytes.len() % n] ^= 0x20;
        }
        let _ = CpuidDump::parse_bytes(&jb, "json");
    }
}

/// Whatever parses can be laid out without panicking and survives the JSON round trip.
fn check_parsed(d: &CpuidDump) -> Result<(), TestCaseError> {
    let l = Layout::from_dump(d);
    let _ = l.consistency();
    let _ = l.size_notes();
    let _ = l.max_standard_size();
    let user = l.xcr0_supported();
    let _ = l.standard(user);
    let _ = l.compacted(user | l.xss_supported());
    let _ = l.check_xcr0(user);
    let _ = l.infer_xss(user);
    let _ = d.brand();
    let _ = d.vendor_string();
    let back = CpuidDump::parse(&d.to_json(), "round trip");
    prop_assert_eq!(back.as_ref(), Ok(d), "JSON round trip");
    Ok(())
}
