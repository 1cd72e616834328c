//! Images and conversion plans share the geometries of the process (`std`): images made from
//! equal geometries (`XsaveImage::new`, `with_geometry`, `from_bytes`) hold one object, so do
//! the plans of that geometry (a plan then recognises those images by identity, without
//! comparing their placements), and the images a plan makes hold its target; a geometry that
//! differs in one field is another object. The table keeps the first 16 distinct geometries
//! of the process; after that, images own a copy (equal by value, as before).
//!
//! One test function in its own binary: the process's table starts empty here.

use xstate::convert::ConvertPlan;
use xstate::image::{AlignedBuf, XsaveImage};
use xstate::layout::{FormLayout, Layout};

mod common;

fn spr() -> Layout {
    Layout::from_dump(&common::sapphire_rapids())
}

fn same(a: &XsaveImage, b: &XsaveImage) -> bool {
    std::ptr::eq(a.geometry(), b.geometry())
}

#[test]
fn equal_geometries_are_one_object_until_the_table_is_full() {
    let l = spr();
    let g = l.standard(0x602e7).unwrap();
    let k = l.compacted(0x602e7).unwrap();
    let a = XsaveImage::new(&g);
    let b = XsaveImage::with_geometry(AlignedBuf::new(a.len()), g.clone()).unwrap();
    let c = XsaveImage::from_bytes(a.as_bytes(), &l).unwrap();
    assert!(same(&a, &XsaveImage::new(&g)));
    assert!(same(&a, &b) && same(&a, &c));
    assert_eq!(*a.geometry(), g);

    // Plans hold the same objects, and images they make hold the plan's target.
    let plan = ConvertPlan::new(&g, &k).unwrap();
    assert!(std::ptr::eq(plan.source(), a.geometry()));
    let ka = plan.convert(&a).unwrap();
    assert!(std::ptr::eq(ka.geometry(), plan.target()));
    assert!(same(&ka, &XsaveImage::new(&k)));
    let back = ConvertPlan::new(&k, &g).unwrap();
    assert!(std::ptr::eq(back.source(), ka.geometry()));
    assert_eq!(back.convert(&ka).unwrap(), a);

    // A layout built again shares the kept placement list (no comparison placement by
    // placement for the plans); one built before any image of its geometry has its own.
    let g2 = l.standard(0x602e7).unwrap();
    assert_eq!(g2.placements.as_ptr(), a.geometry().placements.as_ptr());
    assert_eq!(g2, g);
    let fresh = l.standard(0x207).unwrap();
    assert_ne!(
        fresh.placements.as_ptr(),
        l.standard(0x207).unwrap().placements.as_ptr()
    );
    assert_eq!(fresh, l.standard(0x207).unwrap());

    // A geometry that differs in one field is another object, equal to what was asked.
    let mut other = g.clone();
    other.placements.last_mut().unwrap().size -= 64;
    assert_eq!(
        g.placements.last().unwrap().size,
        8192,
        "the list was copied first"
    );
    other.size -= 64;
    let d = XsaveImage::new(&other);
    assert!(!same(&a, &d));
    assert_eq!(*d.geometry(), other);

    // Fill the table (16 geometries: 3 kept so far), then images of a new geometry own
    // their copies; the kept ones are still shared.
    let masks: Vec<u64> = [
        0x3u64, 0x7, 0x27, 0x67, 0xe7, 0x207, 0x2e7, 0x602e7, 0x60007,
    ]
    .into_iter()
    .collect();
    let mut geometries: Vec<FormLayout> = Vec::new();
    for m in &masks {
        geometries.extend(l.standard(*m).ok());
        geometries.extend(l.compacted(*m).ok());
    }
    geometries.retain(|x| *x != g && *x != k && *x != other);
    geometries.dedup();
    assert!(geometries.len() > 14, "{} geometries", geometries.len());
    for x in &geometries[..13] {
        assert!(
            same(&XsaveImage::new(x), &XsaveImage::new(x)),
            "kept: {x:?}"
        );
    }
    for x in &geometries[13..] {
        let (p, q) = (XsaveImage::new(x), XsaveImage::new(x));
        assert!(!same(&p, &q), "not kept: {x:?}");
        assert_eq!(*p.geometry(), *x);
        assert_eq!(p, q);
    }
    assert!(same(&a, &XsaveImage::new(&g)));
    assert!(same(&d, &XsaveImage::new(&other)));
}
