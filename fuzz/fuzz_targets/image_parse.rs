//! Fuzzes the image reader and every accessor of `xstate::image` (`XsaveImage::from_bytes`,
//! views, typed getters and setters, `is_init`, `clear_component`) on arbitrary bytes: no
//! panic, and the documented invariants hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::image::registers::registers;
use xstate::image::{XsaveImage, XsaveRef};

mod image_common;

fuzz_target!(|data: &[u8]| {
    let mut r = image_common::Bytes(data);
    let (l, _, _) = image_common::layout(r.u8());
    let bytes = r.0;
    let owned = XsaveImage::from_bytes(bytes, &l);
    let view = XsaveRef::with_layout(bytes, &l);
    assert_eq!(owned.is_ok(), view.is_ok());
    let Ok(mut img) = owned else { return };
    assert_eq!(img.as_bytes(), bytes);
    assert_eq!(img.as_bytes().as_ptr() as usize % 64, 0);
    let _ = (img.fcw(), img.fsw(), img.ftw(), img.fop(), img.fip(), img.fdp());
    let _ = (img.mxcsr(), img.mxcsr_mask(), img.header_reserved(), img.header_form());
    for i in 0..20 {
        let _ = (img.st(i), img.xmm(i), img.ymm_hi(i), img.bnd(i), img.k(i));
        let _ = (img.zmm_hi256(i), img.hi16_zmm(i), img.pl_ssp(i), img.egpr(i + 14));
        let _ = img.tile_row(i, i);
    }
    let _ = (img.bndcfgu(), img.bndstatus(), img.pkru(), img.pasid());
    let _ = (img.u_cet(), img.pl3_ssp(), img.tilecfg());
    for id in 0..=70u8 {
        let _ = img.component_bytes(id);
        let _ = img.is_init(id);
        for spec in registers(id) {
            for i in 0..=spec.count as usize {
                let _ = img.register(id, spec.name, i);
            }
        }
    }
    // Writes keep their promises on a copy.
    let sel = bytes.get(600).copied().unwrap_or(0);
    let id = sel % 64;
    let mut w = img.clone();
    if w.clear_component(id).is_ok() {
        assert!(!w.is_present(id));
        assert!(w.is_init(id).unwrap());
    }
    let mut w = img.clone();
    if w.make_present(id).is_ok() && id < 63 {
        assert!(w.is_present(id));
    }
    if img.set_k(usize::from(sel % 9), 0x1234).is_ok() {
        assert_eq!(img.k(usize::from(sel % 9)).unwrap(), 0x1234);
        assert!(img.is_present(5));
    }
    img.set_mxcsr(0x1f80);
    assert_eq!(img.mxcsr(), 0x1f80);
});
