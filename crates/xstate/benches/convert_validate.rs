//! P2 and P3 of issue 11: conversion and validation of real-sized images against the
//! physical operation — `memcpy` of the same bytes into a reused buffer — measured in the
//! same run (see `common::ratio`).
//!
//! Images: this host's XSAVE layout without AMX (AVX-512: 2.4-2.7 KiB), and the Sapphire
//! Rapids layout with AMX (standard 11008 bytes, compacted 10688) from its real CPUID dump.
//! Every component present, filled with a pattern.
//!
//! `cargo bench -p xstate --bench convert_validate` (lines starting `RATIO` are the figures
//! of docs/performance.md).

mod common;

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use xstate::components::{bits, mask};
use xstate::convert::{convert, convert_into, ConvertPlan};
use xstate::cpuid::CpuidDump;
use xstate::image::{AlignedBuf, XsaveImage};
use xstate::layout::{FormLayout, Layout};
use xstate::validate::{self, KvmConfig, Profile, RestoreConfig};

#[global_allocator]
static A: common::Counting = common::Counting;

struct Case {
    name: &'static str,
    layout: Layout,
    xcr0: u64,
    std_img: XsaveImage,
    cmp_img: XsaveImage,
}

fn image(l: &Layout, xcr0: u64) -> XsaveImage {
    let g = l.standard(xcr0).expect("layout");
    let mut img = XsaveImage::new(&g);
    for id in bits(xcr0 & !mask::LEGACY) {
        let p = img.placement(id).expect("placed");
        let data: Vec<u8> = (0..p.size)
            .map(|i| (i as u8).wrapping_mul(13) | 1)
            .collect();
        img.set_component_bytes(id, &data).expect("component");
    }
    for i in 0..16 {
        img.set_xmm(
            i,
            0x0101_0101_0101_0101_0101_0101_0101_0101 * (i as u128 + 1),
        )
        .expect("xmm");
    }
    img.set_xstate_bv(xcr0);
    img
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let host = Layout::from_dump(&CpuidDump::from_host());
    let xcr0 = if host.has_xsave() && xstate::hw::os_xsave() {
        xstate::hw::xgetbv(0) & !mask::AMX
    } else {
        0
    };
    if xcr0 & mask::AVX512 == mask::AVX512 {
        let std_img = image(&host, xcr0);
        let cmp_img = convert(&std_img, &host.compacted(xcr0).unwrap()).unwrap();
        v.push(Case {
            name: "host AVX-512",
            layout: host,
            xcr0,
            std_img,
            cmp_img,
        });
    } else {
        println!("skipped: host case (no AVX-512 on this CPU)");
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt"
    );
    let d = CpuidDump::parse(&std::fs::read_to_string(path).expect("fixture"), "spr").unwrap();
    let spr = Layout::from_dump(&d);
    let std_img = image(&spr, 0x602e7);
    let cmp_img = convert(&std_img, &spr.compacted(0x602e7).unwrap()).unwrap();
    v.push(Case {
        name: "SPR AMX",
        layout: spr,
        xcr0: 0x602e7,
        std_img,
        cmp_img,
    });
    v
}

fn memcpy_baseline(src: &[u8], dst: &mut [u8]) {
    dst[..src.len()].copy_from_slice(black_box(src));
    black_box(&mut *dst);
}

/// The physical operation behind an API that returns a new image: a 64-byte-aligned
/// allocation of the target's size, a memcpy of the source bytes into it, the free.
fn alloc_copy_free_baseline(src: &[u8], target_len: usize) {
    let layout = std::alloc::Layout::from_size_align(target_len.max(src.len()), 64).unwrap();
    // SAFETY: `layout` has a non-zero size; the allocation is checked for null, written only
    // within its size (src.len() <= its size), and freed with the same layout.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        std::ptr::copy_nonoverlapping(black_box(src).as_ptr(), p, src.len());
        black_box(p);
        std::alloc::dealloc(p, layout);
    }
}

fn ratios(cases: &[Case]) {
    for c in cases {
        let (s, k) = (&c.std_img, &c.cmp_img);
        let (sg, kg) = (s.geometry().clone(), k.geometry().clone());
        // Every destination 64-byte aligned, as XSAVE images are (SDM Vol. 1 §13.4): the
        // baseline and the subjects write to buffers of the same alignment (a `Vec` from
        // malloc is 16-byte aligned, and a 16-byte-aligned destination makes the same copy
        // up to 1.5 x slower on this Xeon: a comparison of alignments, not of code).
        let mut out = AlignedBuf::new(16384);
        let mut base = AlignedBuf::new(16384);
        println!(
            "{}: standard {} bytes, compacted {} bytes (XCR0 {:#x})",
            c.name,
            s.len(),
            k.len(),
            c.xcr0
        );
        // P2: convert_into a reused buffer, both directions; memcpy of the source bytes.
        let mut o2 = out.clone();
        common::ratio(
            &format!("P2 {} convert_into standard->compacted", c.name),
            "memcpy",
            || {
                convert_into(black_box(s), &kg, &mut out).unwrap();
            },
            || memcpy_baseline(s.as_bytes(), &mut base),
        );
        common::ratio(
            &format!("P2 {} convert_into compacted->standard", c.name),
            "memcpy",
            || {
                convert_into(black_box(k), &sg, &mut o2).unwrap();
            },
            || memcpy_baseline(k.as_bytes(), &mut base),
        );
        // P2: a caller-held ConvertPlan (made once, outside the measurement).
        let to_cmp = ConvertPlan::new(&sg, &kg).unwrap();
        let to_std = ConvertPlan::new(&kg, &sg).unwrap();
        let mut o3 = out.clone();
        let mut o4 = out.clone();
        to_cmp.convert_into(s, &mut o3).unwrap();
        convert_into(s, &kg, &mut out).unwrap();
        assert_eq!(o3[..to_cmp.len()], out[..to_cmp.len()]);
        common::ratio(
            &format!(
                "P2 {} ConvertPlan::convert_into standard->compacted",
                c.name
            ),
            "memcpy",
            || {
                to_cmp.convert_into(black_box(s), &mut o3).unwrap();
            },
            || memcpy_baseline(s.as_bytes(), &mut base),
        );
        common::ratio(
            &format!(
                "P2 {} ConvertPlan::convert_into compacted->standard",
                c.name
            ),
            "memcpy",
            || {
                to_std.convert_into(black_box(k), &mut o4).unwrap();
            },
            || memcpy_baseline(k.as_bytes(), &mut base),
        );
        // P2: convert (allocates the new image and its geometry).
        common::ratio(
            &format!("P2 {} convert standard->compacted", c.name),
            "memcpy",
            || {
                black_box(convert(black_box(s), &kg).unwrap());
            },
            || memcpy_baseline(s.as_bytes(), &mut base),
        );
        common::ratio(
            &format!("P2 {} convert compacted->standard", c.name),
            "memcpy",
            || {
                black_box(convert(black_box(k), &sg).unwrap());
            },
            || memcpy_baseline(k.as_bytes(), &mut base),
        );
        // Context for `convert`: the same against allocating, copying and freeing a buffer
        // of the target's size (what any API returning a new image must do at least).
        common::ratio(
            &format!("P2 context: {} convert standard->compacted", c.name),
            "aligned alloc + memcpy + free",
            || {
                black_box(convert(black_box(s), &kg).unwrap());
            },
            || alloc_copy_free_baseline(s.as_bytes(), kg.size as usize),
        );
        common::ratio(
            &format!("P2 context: {} convert compacted->standard", c.name),
            "aligned alloc + memcpy + free",
            || {
                black_box(convert(black_box(k), &sg).unwrap());
            },
            || alloc_copy_free_baseline(k.as_bytes(), sg.size as usize),
        );
        // Context for the cache: targets equal to the planned ones but with a placement list
        // of their own (a hand-built geometry: the plan compares it placement by placement;
        // the targets above are clones of the images' geometries, which share the planned
        // lists and are recognised by address).
        let own = |g: &FormLayout| FormLayout {
            placements: g.placements.to_vec().into(),
            ..g.clone()
        };
        let (sv, kv) = (own(&sg), own(&kg));
        assert!(sv == sg && sv.placements.as_ptr() != sg.placements.as_ptr());
        for (dir, src, t) in [
            ("standard->compacted", s, &kv),
            ("compacted->standard", k, &sv),
        ] {
            let mut o = out.clone();
            common::ratio(
                &format!(
                    "P2 context: {} convert_into {dir}, target compared by value",
                    c.name
                ),
                "memcpy",
                || {
                    convert_into(black_box(src), t, &mut o).unwrap();
                },
                || memcpy_baseline(src.as_bytes(), &mut base),
            );
            common::ratio(
                &format!(
                    "P2 context: {} convert {dir}, target compared by value",
                    c.name
                ),
                "memcpy",
                || {
                    black_box(convert(black_box(src), t).unwrap());
                },
                || memcpy_baseline(src.as_bytes(), &mut base),
            );
        }
        // P3: the validate profiles on a valid image (their fast path), memcpy of the image.
        let rc = RestoreConfig::for_layout(&c.layout, c.xcr0, 0, 0xffff);
        let kc = KvmConfig::new(c.xcr0, 0xffff);
        let sb = s.as_bytes();
        let kb = k.as_bytes();
        assert!(validate::xrstor(sb, &rc).is_empty());
        assert!(validate::xrstor_compacted(kb, &rc).is_empty());
        assert!(validate::kvm(sb, &kc).is_empty());
        common::ratio(
            &format!("P3 {} validate xrstor", c.name),
            "memcpy",
            || {
                black_box(validate::validate(black_box(sb), &Profile::Xrstor(rc)));
            },
            || memcpy_baseline(sb, &mut base),
        );
        common::ratio(
            &format!("P3 {} validate xrstor-compacted", c.name),
            "memcpy",
            || {
                black_box(validate::validate(
                    black_box(kb),
                    &Profile::XrstorCompacted(rc),
                ));
            },
            || memcpy_baseline(kb, &mut base),
        );
        common::ratio(
            &format!("P3 {} validate kvm", c.name),
            "memcpy",
            || {
                black_box(validate::validate(black_box(sb), &Profile::Kvm(kc)));
            },
            || memcpy_baseline(sb, &mut base),
        );
        let l = &c.layout;
        assert!(validate::validate_with_layout(sb, &Profile::Xrstor(rc), l).is_empty());
        common::ratio(
            &format!(
                "P3 {} validate_with_layout xrstor (with the size rule)",
                c.name
            ),
            "memcpy",
            || {
                black_box(validate::validate_with_layout(
                    black_box(sb),
                    &Profile::Xrstor(rc),
                    l,
                ));
            },
            || memcpy_baseline(sb, &mut base),
        );
        common::ratio(
            &format!("P3 {} is_valid xrstor", c.name),
            "memcpy",
            || {
                black_box(validate::is_valid(black_box(sb), &Profile::Xrstor(rc)));
            },
            || memcpy_baseline(sb, &mut base),
        );
    }
}

fn bench(c: &mut Criterion) {
    let cases = cases();
    let mut g = c.benchmark_group("convert_validate");
    for k in &cases {
        let kg = k.cmp_img.geometry().clone();
        let mut out = AlignedBuf::new(16384);
        let s = &k.std_img;
        g.bench_function(format!("{} convert_into std->cmp", k.name), |b| {
            b.iter(|| convert_into(black_box(s), &kg, &mut out).unwrap())
        });
        let rc = RestoreConfig::for_layout(&k.layout, k.xcr0, 0, 0xffff);
        g.bench_function(format!("{} validate xrstor", k.name), |b| {
            b.iter(|| validate::xrstor(black_box(s.as_bytes()), &rc))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios(&cases());
}
