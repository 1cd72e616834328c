//! A plan converts exactly as the component walk (the conversion before plans existed) does:
//! the same bytes, the same errors, nothing written on error — on every fixture CPU
//! (tests/fixtures/cpuid: real dumps), for standard and compacted sources and targets of
//! several masks, on the same CPU and across CPUs, with random XSTATE_BV (absent, present and
//! init, present and non-init components), random MXCSR and random bytes everywhere else.

use super::super::{convert, convert_into, walk_convert, walk_into};
use super::*;
use crate::cpuid::CpuidDump;
use crate::image::XsaveImage;
use crate::layout::{Layout, Placement};
use alloc::vec;
use proptest::prelude::*;
use std::sync::OnceLock;

/// Every fixture CPU whose leaf 0xD gives layouts, with its geometries: standard and
/// compacted forms of XCR0, of XCR0 | XSS, and of a few sub-masks.
struct Cpu {
    name: String,
    geoms: Vec<FormLayout>,
}

fn cpus() -> &'static [Cpu] {
    static CPUS: OnceLock<Vec<Cpu>> = OnceLock::new();
    CPUS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpuid");
        let mut out = Vec::new();
        for kind in ["hwloc", "aida64", "cpuid-r"] {
            let mut files: Vec<_> = std::fs::read_dir(dir.join(kind))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "txt"))
                .collect();
            files.sort();
            for p in files {
                let name = alloc::format!("{kind}/{}", p.file_stem().unwrap().to_string_lossy());
                let d = CpuidDump::parse(&std::fs::read_to_string(&p).unwrap(), &name).unwrap();
                let l = Layout::from_dump(&d);
                let (xcr0, xss) = (l.xcr0_supported(), l.xss_supported());
                let mut geoms = Vec::new();
                for m in [xcr0, xcr0 & 0x7, xcr0 & 0x2e3, xcr0 & !0x4, xcr0 & 0x1] {
                    geoms.extend(l.standard(m).ok());
                }
                for m in [xcr0, xcr0 | xss, xcr0 & 0x23, xcr0 & 0x6_0003, xcr0 & !0x2] {
                    geoms.extend(l.compacted(m).ok());
                }
                geoms.dedup();
                if !geoms.is_empty() {
                    out.push(Cpu { name, geoms });
                }
            }
        }
        assert!(out.len() >= 30, "fixture CPUs with layouts: {}", out.len());
        out
    })
}

/// An image of geometry `g`: random bytes, then XSTATE_BV = `bv`, XCOMP_BV of `g`, MXCSR
/// `mxcsr`; the components of `init` zeroed (present and init when XSTATE_BV marks them).
fn image(g: &FormLayout, seed: u64, bv: u64, init: u64, mxcsr: u32) -> XsaveImage {
    let mut img = XsaveImage::new(g);
    let mut x = seed | 1;
    for b in img.as_mut_bytes().iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for p in &g.placements {
        if init & bit(p.id) != 0 && p.id >= 2 {
            img.as_mut_bytes()[p.range()].fill(0);
        }
    }
    // MXCSR written as bytes (`set_mxcsr` would mark SSE present), the header last.
    img.as_mut_bytes()[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    img.set_xstate_bv(bv);
    img.set_xcomp_bv(g.xcomp_bv());
    assert_eq!(img.xstate_bv(), bv);
    img
}

/// The plan (made here), the cached entry points and the walk agree on `src` → `t`.
fn check_same(src: &XsaveImage, t: &FormLayout) {
    let want = walk_into(src, t, &mut vec![0xaau8; 1 << 20][..]).map(|_| ());
    let want_img = walk_convert(src, t);
    assert_eq!(want, want_img.as_ref().map(|_| ()).map_err(Clone::clone));
    let plan = ConvertPlan::new(src.geometry(), t).unwrap();
    for fill in [0u8, 0xaa] {
        let n = target_len(t);
        let mut w = vec![fill; n + 64];
        let mut p = vec![fill; n + 64];
        let mut e = vec![fill; n + 64];
        let rw = walk_into(src, t, &mut w);
        let rp = plan.convert_into(src, &mut p);
        let re = convert_into(src, t, &mut e);
        assert_eq!(rp, rw, "{t:?}");
        assert_eq!(re, rw, "{t:?}");
        assert_eq!(p, w, "plan bytes, fill {fill:#x}");
        assert_eq!(e, w, "convert_into bytes, fill {fill:#x}");
        if rw.is_err() {
            assert!(p.iter().all(|&b| b == fill), "a failed conversion wrote");
        }
        // A buffer one byte short: the same error as the walk (a check error first, else
        // OutTooSmall), nothing written.
        let mut short = vec![fill; n - 1];
        let ws = walk_into(src, t, &mut short.clone());
        assert_eq!(plan.convert_into(src, &mut short), ws);
        assert!(short.iter().all(|&b| b == fill));
    }
    assert_eq!(plan.convert(src), want_img);
    assert_eq!(convert(src, t), want_img);
    check_recycled(src, t, &plan, &want_img);
}

/// `convert` and `plan.convert` built in a recycled buffer — the storage of a dropped buffer
/// of the target's size, full of a pattern, taken from this thread's pool — give the walk's
/// image: none of the former bytes shows.
fn check_recycled(
    src: &XsaveImage,
    t: &FormLayout,
    plan: &ConvertPlan,
    want: &Result<XsaveImage, ConvertError>,
) {
    use crate::image::pool;
    for (k, fill) in [0xa5u8, 0xff, 0x5a].into_iter().enumerate() {
        pool::clear();
        let mut junk = AlignedBuf::new(target_len(t));
        junk.fill(fill);
        let at = junk.as_ptr();
        drop(junk);
        let got = if k == 1 {
            plan.convert(src)
        } else {
            convert(src, t)
        };
        assert_eq!(&got, want, "recycled buffer full of {fill:#x}");
        if let Ok(g) = &got {
            assert_eq!(g.as_bytes().as_ptr(), at, "built in the recycled storage");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Same CPU and across CPUs, every pair of forms, random header and contents.
    #[test]
    fn plan_converts_as_the_walk_on_every_fixture_cpu(
        a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(),
        gs in any::<prop::sample::Index>(), gt in any::<prop::sample::Index>(),
        cross in any::<bool>(), seed in any::<u64>(),
        bv_kind in 0u8..8, bv_bits in any::<u64>(), init in any::<u64>(),
        mxcsr in prop_oneof![Just(MXCSR_INIT), Just(0x1fa0u32), any::<u32>()],
    ) {
        let cpus = cpus();
        let sc = &cpus[a.index(cpus.len())];
        let tc = if cross { &cpus[b.index(cpus.len())] } else { sc };
        let sg = gs.get(&sc.geoms);
        let tg = gt.get(&tc.geoms);
        let bv = match bv_kind {
            0 | 1 => sg.mask,                            // every component (the fast path)
            6 | 7 => sg.mask & !mask::LEGACY | bv_bits & mask::LEGACY, // and any x87/SSE
            2 => sg.mask & bv_bits,                      // a subset
            3 => sg.mask & (bv_bits | mask::LEGACY),     // a subset with x87/SSE
            4 => (sg.mask | tg.mask) & bv_bits,          // maybe outside the source
            _ => bv_bits,                                // anything, bit 63 included
        };
        let init = if bv_kind == 0 { 0 } else { init };
        let src = image(sg, seed, bv, init, mxcsr);
        check_same(&src, tg);
        let _ = (&sc.name, &tc.name);
    }
}

/// Every geometry pair of every fixture CPU: XSTATE_BV full (the precomputed runs) with and
/// without x87/SSE, with the default MXCSR and another one (which a compacted target must
/// carry in SSE, and a target without SSE cannot hold), all components init; XSTATE_BV =
/// x87|SSE (the per-component path).
#[test]
fn plan_converts_as_the_walk_for_every_geometry_pair() {
    for c in cpus() {
        for sg in &c.geoms {
            for tg in &c.geoms {
                // Layouts place components in offset order: the precomputed steps apply and
                // write every target byte once, in order (`convert` appends them).
                let plan = ConvertPlan::new(sg, tg).unwrap();
                assert!(plan.sorted && plan.ops_tile, "{}: {sg:?} -> {tg:?}", c.name);
                let m = sg.mask;
                for (bv, init, mxcsr) in [
                    (m, 0, MXCSR_INIT),
                    (m, 0, 0x1fa0),
                    (m & !mask::LEGACY, 0, 0x1fa0),
                    (m & !mask::LEGACY, 0, MXCSR_INIT),
                    (m & !mask::SSE, 0, 0x1fa0),
                    (m & mask::LEGACY, 0, MXCSR_INIT),
                    (m, !0, MXCSR_INIT),
                ] {
                    let src = image(sg, 0x1234_5678, bv, init, mxcsr);
                    check_same(&src, tg);
                }
            }
        }
    }
}

/// A plan refuses an image of another geometry — another mask, another CPU's layout with the
/// same mask and size — naming both, and writes nothing.
#[test]
fn plan_refuses_an_image_of_another_geometry() {
    let (spr, zen5) = (crate::testutil::spr(), crate::testutil::zen5());
    let sg = spr.standard(0xe7).unwrap();
    let plan = ConvertPlan::new(&sg, &spr.compacted(0xe7).unwrap()).unwrap();
    let mut out = vec![0x55u8; 16384];
    let other = XsaveImage::new(&spr.standard(0x7).unwrap());
    let e = plan.convert_into(&other, &mut out).unwrap_err();
    assert!(matches!(e, ConvertError::GeometryMismatch { .. }), "{e}");
    assert!(e.to_string().contains("components 0xe7"), "{e}");
    assert!(e.to_string().contains("components 0x7"), "{e}");
    assert!(out.iter().all(|&b| b == 0x55));
    assert!(plan.convert(&other).is_err());
    // Same form, mask and size, opmask placed elsewhere: the first differing placement is
    // named on both sides.
    let mut moved = sg.clone();
    assert_eq!(moved.placements[3].id, 5);
    moved.placements[3] = Placement {
        offset: 1152,
        ..moved.placements[3]
    };
    let img = Xsave::with_geometry(AlignedBuf::new(sg.size as usize), moved).unwrap();
    let e = plan.convert_into(&img, &mut out).unwrap_err();
    assert!(e.to_string().contains("component 5 at offset 1088"), "{e}");
    assert!(e.to_string().contains("component 5 at offset 1152"), "{e}");
    assert!(out.iter().all(|&b| b == 0x55));
    // Zen 5's standard form of 0xe7 has the same size as Sapphire Rapids' and the same offsets
    // (AMD kept Intel's): that plan is for the same geometry and is accepted.
    let z = XsaveImage::new(&zen5.standard(0xe7).unwrap());
    assert_eq!(z.geometry() == &sg, plan.convert_into(&z, &mut out).is_ok());
}

/// A clone of a plan's geometries shares their placement list, so the plan recognises it by
/// address (no comparison placement by placement); changing a clone's list copies it first,
/// so the changed clone is compared by value and refused, and the plan's geometry and every
/// other clone keep their placements.
#[test]
fn clones_of_planned_geometries_are_recognised_by_address_and_changes_are_seen() {
    let l = crate::testutil::spr();
    let (sg, kg) = (l.standard(0xe7).unwrap(), l.compacted(0xe7).unwrap());
    let plan = ConvertPlan::new(&sg, &kg).unwrap();
    let (s2, mut k2) = (plan.source().clone(), plan.target().clone());
    assert_eq!(s2.placements.as_ptr() as usize, plan.src_key.at);
    assert_eq!(k2.placements.as_ptr() as usize, plan.dst_key.at);
    assert!(plan.is_for(&s2, &k2));
    let img = XsaveImage::new(&s2);
    let mut out = vec![0u8; plan.len()];
    assert_eq!(plan.convert_into(&img, &mut out), Ok(plan.len()));
    // The cache's plan for the pair recognises the same clones.
    assert_eq!(
        convert_into(&img, &k2, &mut out.clone()),
        convert_into(&img, &kg, &mut out)
    );
    let kept = kg.placements[3];
    k2.placements[3].offset += 64;
    assert_ne!(
        k2.placements.as_ptr() as usize,
        plan.dst_key.at,
        "copied on write"
    );
    assert!(!plan.is_for(&s2, &k2));
    assert_eq!(plan.target().placements[3], kept);
    assert_eq!(kg.placements[3], kept);
    let mut s3 = plan.source().clone();
    s3.placements[2].size -= 1;
    let moved = Xsave::with_geometry(AlignedBuf::new(sg.size as usize), s3).unwrap();
    assert!(matches!(
        plan.convert_into(&moved, &mut out),
        Err(ConvertError::GeometryMismatch { .. })
    ));
    assert_eq!(plan.source().placements[2], sg.placements[2]);
}

/// A hand-built target whose placements are not in offset order (broken CPUID data only):
/// the plan takes the component walk, with the walk's result.
#[test]
fn unsorted_target_takes_the_walk() {
    let l = crate::testutil::zen5();
    let sg = l.standard(0xe7).unwrap();
    let mut t = l.compacted(0xe7).unwrap();
    let (a, b) = (t.placements[3], t.placements[4]);
    t.placements[3].offset = b.offset;
    t.placements[4].offset = a.offset;
    t.placements[3].size = b.size;
    t.placements[4].size = a.size;
    let plan = ConvertPlan::new(&sg, &t).unwrap();
    assert!(!plan.sorted);
    for bv in [0xe7, 0x3, 0x27] {
        check_same(&image(&sg, 99, bv, 0, MXCSR_INIT), &t);
    }
}

/// The cache's lock held by someone else, for a pair no other test converts: the entry
/// points convert by the walk, with the same result; once the lock is free, by a plan.
#[test]
fn busy_cache_converts_by_the_walk() {
    let l = synthetic(48);
    let m = 0x7 | 1 << 40;
    let (sg, tg) = (l.standard(m).unwrap(), l.compacted(m).unwrap());
    let src = image(&sg, 7, m, 0, 0x1fa0);
    let want = walk_convert(&src, &tg).unwrap();
    let guard = loop {
        if let Some(g) = super::super::cache::lock_for_test() {
            break g;
        }
    };
    let mut out = vec![0u8; tg.size as usize];
    assert_eq!(convert_into(&src, &tg, &mut out), Ok(want.len()));
    assert_eq!(&out[..], want.as_bytes());
    assert_eq!(convert(&src, &tg).unwrap(), want);
    drop(guard);
    for _ in 0..2 {
        assert_eq!(convert(&src, &tg).unwrap(), want);
        assert_eq!(convert_into(&src, &tg, &mut out), Ok(want.len()));
        assert_eq!(&out[..], want.as_bytes());
    }
}

/// A CPU with x87, SSE, AVX and component 40 (unknown to the catalog) of `size` bytes.
fn synthetic(size: u32) -> Layout {
    let mut d = CpuidDump::new("x");
    let mut put = |sub, eax, ebx, edx| {
        d.insert(
            0xd,
            sub,
            crate::cpuid::Regs {
                eax,
                ebx,
                ecx: 0,
                edx,
            },
        );
    };
    put(0, 0x7, 0, 1 << 8);
    put(2, 256, 576, 0);
    put(40, size, 832, 0);
    Layout::from_dump(&d)
}

/// Source areas larger than the target's (component 40, unknown to the catalog, of 64 bytes
/// on one CPU and 32 on another): with every component present (the precomputed runs), a
/// non-zero byte in the part that does not fit is the walk's Truncation error, zero bytes
/// convert as the walk does; both directions.
#[test]
fn truncation_checks_on_the_planned_path() {
    let (big, small) = (synthetic(64), synthetic(32));
    let m = 0x7 | 1 << 40;
    for (from, to) in [(&big, &small), (&small, &big)] {
        for sg in [from.standard(m).unwrap(), from.compacted(m).unwrap()] {
            for tg in [to.standard(m).unwrap(), to.compacted(m).unwrap()] {
                for at in [0usize, 31, 32, 40, 63] {
                    let mut src = image(&sg, at as u64, m, 0, MXCSR_INIT);
                    let p = src.placement(40).unwrap();
                    let mut data = vec![0u8; p.size as usize];
                    if let Some(b) = data.get_mut(at) {
                        *b = 1;
                    }
                    src.set_component_bytes(40, &data).unwrap();
                    check_same(&src, &tg);
                    let fails = p.size == 64 && at >= 32;
                    assert_eq!(
                        matches!(convert(&src, &tg), Err(ConvertError::Truncation { .. })),
                        fails,
                        "{sg:?} -> {tg:?} byte {at}"
                    );
                }
            }
        }
    }
}

/// Threads converting at once, more pairs than the cache holds: every result is the walk's
/// (cache hits, the busy path and plans made concurrently alike).
#[test]
fn concurrent_conversions_through_the_cache() {
    let cpus = cpus();
    let pairs: Vec<(XsaveImage, FormLayout)> = cpus
        .iter()
        .take(8)
        .flat_map(|c| {
            let sg = &c.geoms[0];
            c.geoms
                .iter()
                .take(3)
                .map(move |tg| (image(sg, 3, sg.mask, 0, 0x1fa0), tg.clone()))
        })
        .collect();
    let want: Vec<_> = pairs.iter().map(|(s, t)| walk_convert(s, t)).collect();
    std::thread::scope(|sc| {
        for k in 0..4 {
            let (pairs, want) = (&pairs, &want);
            sc.spawn(move || {
                let mut out = vec![0u8; 1 << 16];
                for r in 0..50 {
                    for (i, ((s, t), w)) in pairs.iter().zip(want).enumerate() {
                        if (i + k + r) % 3 == 0 {
                            assert_eq!(&convert(s, t), w);
                        } else {
                            let n = convert_into(s, t, &mut out);
                            assert_eq!(n.as_ref().ok(), w.as_ref().ok().map(|w| w.len()).as_ref());
                            if let Ok(w) = w {
                                assert_eq!(&out[..w.len()], w.as_bytes());
                            }
                        }
                    }
                }
            });
        }
    });
}

/// The cache hands out a plan only for exactly the geometries asked for: a geometry equal by
/// value to a cached plan's but another object gets that plan; one differing from it in any
/// single field — form, mask, size, the number of placements, or the id, offset or size of
/// any one placement, of the source or of the target — never does (the plan found, if any,
/// is for exactly that geometry), and converts as a plan made for it.
#[test]
fn cache_plans_match_every_field() {
    use crate::layout::Form;
    let l = crate::testutil::spr();
    let (sg, tg) = (l.standard(0x602e7).unwrap(), l.compacted(0x602e7).unwrap());
    let src = image(&sg, 11, sg.mask, 0, MXCSR_INIT);
    let want = walk_convert(&src, &tg).unwrap();
    // Equal by value, other objects (clones), the plan of the pair used.
    for _ in 0..3 {
        let (g2, t2) = (sg.clone(), tg.clone());
        super::super::cache::with_plan(&g2, &t2, |p| {
            if let Some(p) = p {
                assert!(p.plan().source() == &g2 && p.plan().target() == &t2);
            }
        });
        let img = Xsave::with_geometry(AlignedBuf::from_bytes(src.as_bytes()), g2).unwrap();
        assert_eq!(convert(&img, &t2).unwrap(), want);
    }
    let variants = |base: &FormLayout| {
        let mut v = Vec::new();
        let mut m = base.clone();
        m.form = match m.form {
            Form::Standard => Form::Compacted,
            Form::Compacted => Form::Standard,
        };
        v.push(m);
        for x in [1u64 << 40, 1 << 3, 1] {
            let mut m = base.clone();
            m.mask ^= x;
            v.push(m);
        }
        for d in [64u32, 1] {
            let mut m = base.clone();
            m.size += d;
            v.push(m);
        }
        let mut m = base.clone();
        m.placements = base.placements[..base.placements.len() - 1].into();
        v.push(m);
        for i in 0..base.placements.len() {
            let p = base.placements[i];
            for q in [
                Placement { id: p.id ^ 1, ..p },
                Placement { id: p.id | 32, ..p },
                Placement {
                    offset: p.offset + 64,
                    ..p
                },
                Placement {
                    offset: p.offset ^ 1,
                    ..p
                },
                Placement {
                    size: p.size - 1,
                    ..p
                },
                Placement {
                    size: p.size ^ 1 << 8,
                    ..p
                },
            ] {
                let mut m = base.clone();
                m.placements[i] = q;
                v.push(m);
            }
        }
        v
    };
    let mut out = vec![0u8; 1 << 16];
    let mut ref_out = vec![0u8; 1 << 16];
    let check = |g: &FormLayout, t: &FormLayout, out: &mut [u8], ref_out: &mut [u8]| {
        super::super::cache::with_plan(g, t, |p| {
            if let Some(p) = p {
                assert!(
                    p.plan().source() == g && p.plan().target() == t,
                    "a plan for other geometries: {g:?} -> {t:?}"
                );
            }
        });
        // The entry point converts as a plan made for exactly these geometries.
        let len = (g.size as usize).max(want.len()).max(src.len());
        let mut bytes = vec![0u8; len];
        bytes[..src.len()].copy_from_slice(src.as_bytes());
        let img = Xsave::with_geometry(AlignedBuf::from_bytes(&bytes), g.clone()).unwrap();
        let fresh = ConvertPlan::new(g, t).unwrap();
        out.fill(0x33);
        ref_out.fill(0x33);
        assert_eq!(
            convert_into(&img, t, out),
            fresh.convert_into(&img, ref_out)
        );
        assert_eq!(out, ref_out);
    };
    for g in variants(&sg) {
        assert!(g != sg);
        check(&g, &tg, &mut out, &mut ref_out);
    }
    for t in variants(&tg) {
        assert!(t != tg);
        check(&sg, &t, &mut out, &mut ref_out);
    }
    // And the pair itself still gets its own plan.
    assert_eq!(convert(&src, &tg).unwrap(), want);
}
