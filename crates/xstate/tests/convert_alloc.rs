//! The conversion entry points allocate nothing in steady state (issue 11, P2): once the
//! pair's plan is made, `convert_into` writes into the caller's buffer, and `convert` builds
//! its image in the storage of a dropped image of the same size (the thread's pool of
//! `AlignedBuf` storages) and shares the plan's target geometry instead of copying it.
//! Counted with a per-thread counting global allocator, on real layouts (this host's, and
//! Sapphire Rapids' with AMX from its CPUID dump), both directions. Also: an image `convert`
//! made is recognised by the plan converting it back by identity (the cache's plans share
//! their equal geometries), and the results are those of a plan made by the caller.
//!
//! One test function: the process-wide plan cache starts empty here, whatever other test
//! binaries do.

use xstate::components::{bits, mask};
use xstate::convert::{convert, convert_into, ConvertPlan};
use xstate::cpuid::CpuidDump;
use xstate::image::XsaveImage;
use xstate::layout::Layout;

#[path = "common/alloc_count.rs"]
mod alloc_count;
mod common;
use alloc_count::allocs;

/// A standard image of `xcr0` with every component present and patterned.
fn image(l: &Layout, xcr0: u64) -> XsaveImage {
    let g = l.standard(xcr0).expect("layout");
    let mut img = XsaveImage::new(&g);
    for id in bits(xcr0 & !mask::LEGACY) {
        let p = img.placement(id).expect("placed");
        let data: Vec<u8> = (0..p.size)
            .map(|i| (i as u8).wrapping_mul(29) | 1)
            .collect();
        img.set_component_bytes(id, &data).expect("component");
    }
    img.set_xmm(3, 0x1234).expect("xmm");
    img.set_xstate_bv(xcr0);
    img
}

#[test]
fn conversions_allocate_nothing_in_steady_state() {
    let mut layouts = Vec::new();
    let host = Layout::from_dump(&CpuidDump::from_host());
    #[cfg(target_arch = "x86_64")]
    if host.has_xsave() && xstate::hw::os_xsave() {
        let x = xstate::hw::xgetbv(0) & !mask::AMX;
        layouts.push(("host", host, x));
    } else {
        println!("skipped: host case (no XSAVE)");
    }
    layouts.push((
        "spr",
        Layout::from_dump(&common::sapphire_rapids()),
        0x602e7,
    ));
    for (name, l, xcr0) in &layouts {
        let s = image(l, *xcr0);
        let (sg, kg) = (l.standard(*xcr0).unwrap(), l.compacted(*xcr0).unwrap());
        let k = convert(&s, &kg).unwrap();
        // The image convert made holds the plan's target geometry; the plan back recognises
        // it by identity (the same placements in memory), and converts as a caller's plan.
        let back = convert(&k, &sg).unwrap();
        let (to_cmp, to_std) = (
            ConvertPlan::new(&sg, &kg).unwrap(),
            ConvertPlan::new(&kg, &sg).unwrap(),
        );
        assert_eq!(back, to_std.convert(&k).unwrap());
        assert_eq!(k, to_cmp.convert(&s).unwrap());
        assert_eq!(back.as_bytes(), s.as_bytes(), "{name}: round trip");
        let again = convert(&s, &kg).unwrap();
        assert_eq!(
            again.geometry().placements.as_ptr(),
            k.geometry().placements.as_ptr(),
            "{name}: images made by one plan share its geometry"
        );
        drop(again);
        let mut out = vec![0u8; 16384];
        let check = |what: &str, f: &mut dyn FnMut()| {
            for _ in 0..3 {
                f(); // warm: plans made, pool filled
            }
            let a = allocs();
            for _ in 0..100 {
                f();
            }
            assert_eq!(allocs() - a, 0, "{name}: {what} allocated");
        };
        check("convert_into std->cmp", &mut || {
            convert_into(&s, &kg, &mut out).unwrap();
        });
        check("convert_into cmp->std", &mut || {
            convert_into(&k, &sg, &mut out).unwrap();
        });
        check("ConvertPlan::convert_into", &mut || {
            to_cmp.convert_into(&s, &mut out).unwrap();
        });
        check("convert std->cmp", &mut || {
            assert_eq!(convert(&s, &kg).unwrap().len(), k.len());
        });
        check("convert cmp->std", &mut || {
            assert_eq!(convert(&k, &sg).unwrap().len(), s.len());
        });
        check("ConvertPlan::convert", &mut || {
            assert_eq!(to_std.convert(&k).unwrap().len(), s.len());
        });
        // Images kept alive take new storage; dropped, they refill the pool.
        let kept: Vec<XsaveImage> = (0..3).map(|_| convert(&s, &kg).unwrap()).collect();
        assert!(kept.iter().all(|i| i == &k));
        let ptrs: Vec<*const u8> = kept.iter().map(|i| i.as_bytes().as_ptr()).collect();
        assert!(ptrs[0] != ptrs[1] && ptrs[1] != ptrs[2] && ptrs[0] != ptrs[2]);
    }
}
