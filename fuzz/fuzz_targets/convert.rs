//! Fuzzes the converter: arbitrary image bytes read on one CPU's layout and converted to the
//! standard and compacted forms of several masks on that CPU and on the others, and to and from
//! FXSAVE. No panic; every successful conversion keeps the meaning (empty `diff`) and converts
//! back to the source's standard form with the same meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::convert::{convert, convert_into, from_fxsave, to_fxsave, ConvertError, ConvertPlan};
use xstate::diff::diff;
use xstate::image::XsaveImage;

mod image_common;

fuzz_target!(|data: &[u8]| {
    let mut r = image_common::Bytes(data);
    let (src_l, src_xcr0, _) = image_common::layout(r.u8());
    let (dst_l, dst_xcr0, dst_xss) = image_common::layout(r.u8());
    let sub = r.u64();
    let bytes = r.0;
    if bytes.len() == 512 {
        if let Ok(g) = dst_l.standard(dst_xcr0) {
            let x = from_fxsave(bytes, &g).expect("FXSAVE always fits a standard form");
            assert_eq!(to_fxsave(&x).expect("only x87/SSE"), bytes);
        }
        return;
    }
    let Ok(src) = XsaveImage::from_bytes(bytes, &src_l) else { return };
    let mut full = src.clone();
    full.set_xstate_bv(src.geometry().mask);
    let targets = [
        dst_l.standard(dst_xcr0),
        dst_l.standard(dst_xcr0 & sub | 1),
        dst_l.compacted(dst_xcr0),
        dst_l.compacted(dst_xcr0 & sub),
        dst_l.compacted((dst_xcr0 | dst_xss) & sub),
    ];
    for t in targets.iter().flatten() {
        for img in [&src, &full] {
            check_plan(img, t);
        }
        let Ok(out) = convert(&src, t) else { continue };
        assert_eq!(out.len(), (t.size as usize).max(576));
        assert_eq!(out.xcomp_bv(), t.xcomp_bv());
        assert_eq!(out.xstate_bv() & !t.mask, 0);
        let d = diff(&src, &out).expect("converted images are readable");
        assert!(d.is_empty(), "{d:?}");
        if let Ok(back) = convert(&out, &src_l.standard(src_xcr0).unwrap()) {
            assert!(diff(&src, &back).unwrap().is_empty());
        }
    }
    if let Ok(fx) = to_fxsave(&src) {
        let _ = fx;
    }
});

/// The plan for `src`'s geometry and `t` against the entry points: same bytes, same errors,
/// nothing written on error; an image of another geometry refused.
fn check_plan(src: &XsaveImage, t: &xstate::layout::FormLayout) {
    let Ok(plan) = ConvertPlan::new(src.geometry(), t) else { return };
    let n = plan.len();
    let (mut a, mut b) = (vec![0x5au8; n + 8], vec![0x5au8; n + 8]);
    let ra = plan.convert_into(src, &mut a);
    let rb = convert_into(src, t, &mut b);
    assert_eq!(ra, rb);
    assert_eq!(a, b);
    if ra.is_err() {
        assert!(a.iter().all(|&x| x == 0x5a), "a failed conversion wrote");
    }
    assert_eq!(plan.convert(src), convert(src, t));
    let mut short = vec![0x5au8; n - 1];
    assert!(plan.convert_into(src, &mut short).is_err());
    assert!(short.iter().all(|&x| x == 0x5a));
    if let Ok(other) = ConvertPlan::new(t, t) {
        if other.source() != src.geometry() {
            assert!(matches!(
                other.convert_into(src, &mut a),
                Err(ConvertError::GeometryMismatch { .. })
            ));
        }
    }
}
