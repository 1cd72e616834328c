use super::*;
use crate::testutil::{spr, zen5};

#[test]
fn aligned_buffer_is_aligned_and_clone_realigns() {
    for len in [0usize, 1, 576, 2432, 10752] {
        let b = AlignedBuf::new(len);
        assert_eq!(b.as_ref().len(), len);
        assert_eq!(b.as_ref().as_ptr() as usize % 64, 0);
        let c = b.clone();
        assert_eq!(c.as_ref().as_ptr() as usize % 64, 0);
    }
}

#[test]
fn too_small_and_truncated_are_errors() {
    let l = zen5();
    assert_eq!(
        XsaveImage::from_bytes(&[0u8; 575], &l).unwrap_err(),
        ImageError::TooSmall { len: 575 }
    );
    // Compacted header naming AVX-512 needs 576 + 256 + 64 + 512 + 1024 bytes.
    let mut b = vec![0u8; 1000];
    b[520..528].copy_from_slice(&(0xe7u64 | 1 << 63).to_le_bytes());
    match XsaveImage::from_bytes(&b, &l).unwrap_err() {
        ImageError::Truncated { needed, len, .. } => {
            assert_eq!((needed, len), (2432, 1000));
        }
        e => panic!("{e}"),
    }
    // XCOMP_BV naming a component without CPUID size.
    b[520..528].copy_from_slice(&(1u64 << 40 | 1 << 63).to_le_bytes());
    assert!(matches!(
        XsaveImage::from_bytes(&b, &l).unwrap_err(),
        ImageError::Layout { .. }
    ));
}

#[test]
fn standard_geometry_covers_what_fits() {
    let l = zen5();
    let img = XsaveImage::from_bytes(&[0u8; 900], &l).unwrap();
    // AVX (576..832) and opmask (832..896) fit; ZMM_Hi256 (896..1408) does not.
    assert_eq!(img.geometry().mask, 0x27);
    let img = XsaveImage::from_bytes(&[0u8; 2432], &l).unwrap();
    assert_eq!(img.geometry().mask, 0xe7);
    assert_eq!(img.form(), Form::Standard);
}

#[test]
fn new_image_is_init_everywhere() {
    let l = spr();
    let g = l.compacted(0x602e7).unwrap();
    let img = XsaveImage::new(&g);
    assert_eq!(img.len(), 10752);
    assert_eq!(img.xcomp_bv(), 0x602e7 | 1 << 63);
    assert_eq!(img.xstate_bv(), 0);
    for id in bits(0x602e7) {
        assert!(img.is_init(id).unwrap(), "{id}");
    }
    assert_eq!(img.fcw(), 0x37f);
    assert_eq!(img.mxcsr(), 0x1f80);
}

#[test]
fn setters_mark_present_and_getters_read_back() {
    let l = spr();
    for g in [l.standard(0x602e7).unwrap(), l.compacted(0x602e7).unwrap()] {
        let mut img = XsaveImage::new(&g);
        img.set_fcw(0x27f);
        img.set_st(7, (1u128 << 79) | 5).unwrap();
        assert!(img.set_st(0, 1u128 << 80).is_err());
        img.set_xmm(15, u128::MAX).unwrap();
        img.set_ymm_hi(1, 7).unwrap();
        img.set_k(7, 0xdead).unwrap();
        img.set_zmm_hi256(15, &[0xaa; 32]).unwrap();
        img.set_hi16_zmm(3, &[0x55; 64]).unwrap();
        img.set_pkru(0x5555_5554).unwrap();
        img.set_tilecfg(&[1; 64]).unwrap();
        img.set_tile_row(7, 15, &[9; 64]).unwrap();
        assert_eq!(img.xstate_bv(), 0x602e7);
        assert_eq!(img.fcw(), 0x27f);
        assert_eq!(img.st(7).unwrap(), (1u128 << 79) | 5);
        assert_eq!(img.xmm(15).unwrap(), u128::MAX);
        assert_eq!(img.xmm(14).unwrap(), 0);
        assert_eq!(img.ymm_hi(1).unwrap(), 7);
        assert_eq!(img.k(7).unwrap(), 0xdead);
        assert_eq!(img.zmm_hi256(15).unwrap(), [0xaa; 32]);
        assert_eq!(img.hi16_zmm(3).unwrap(), [0x55; 64]);
        assert_eq!(img.pkru().unwrap(), 0x5555_5554);
        assert_eq!(img.tilecfg().unwrap(), [1; 64]);
        assert_eq!(img.tile_row(7, 15).unwrap(), [9; 64]);
        assert_eq!(img.tile_row(7, 14).unwrap(), [0; 64]);
        assert!(img.tile_row(7, 16).is_err());
        assert!(img.xmm(16).is_err());
        assert!(img.k(8).is_err());
        // Clearing goes back to init and clears the bit.
        img.clear_component(5).unwrap();
        assert_eq!(img.xstate_bv(), 0x602c7);
        assert_eq!(img.k(7).unwrap(), 0);
        assert!(img.is_init(5).unwrap());
        assert!(!img.is_init(6).unwrap());
        img.clear_component(0).unwrap();
        assert_eq!(img.fcw(), 0x37f);
        assert!(img.is_init(0).unwrap());
        // Components outside the geometry are errors, never panics.
        assert!(matches!(
            img.set_u_cet(1).unwrap_err(),
            ImageError::NotInImage { id: 11, .. }
        ));
        assert!(img.component_bytes(63).is_err());
        assert!(img.component_bytes(40).is_err());
    }
}

#[test]
fn absent_component_reads_init_even_with_garbage_bytes() {
    let l = zen5();
    let g = l.standard(0xe7).unwrap();
    let mut img = XsaveImage::new(&g);
    img.as_mut_bytes()[832..896].fill(0xff); // opmask bytes, XSTATE_BV[5] clear
    img.as_mut_bytes()[0..2].copy_from_slice(&[0, 0]); // FCW 0, XSTATE_BV[0] clear
    assert_eq!(img.k(0).unwrap(), 0);
    assert_eq!(img.fcw(), 0x37f);
    assert!(img.is_init(5).unwrap());
    // Writing one register initialises the rest of the component first.
    img.set_k(1, 3).unwrap();
    assert_eq!(img.k(0).unwrap(), 0);
    assert_eq!(img.k(1).unwrap(), 3);
}

#[test]
fn mxcsr_meaning_depends_on_form() {
    let l = zen5();
    let mut s = XsaveImage::new(&l.standard(0xe7).unwrap());
    s.as_mut_bytes()[24..28].copy_from_slice(&0x1f00u32.to_le_bytes());
    // Standard form: loaded even with XSTATE_BV[1] = 0.
    assert_eq!(s.mxcsr(), 0x1f00);
    assert!(!s.is_init(1).unwrap());
    let mut c = XsaveImage::new(&l.compacted(0xe7).unwrap());
    c.as_mut_bytes()[24..28].copy_from_slice(&0x1f00u32.to_le_bytes());
    // Compacted form: initialised to 0x1F80 without the SSE component.
    assert_eq!(c.mxcsr(), 0x1f80);
    assert!(c.is_init(1).unwrap());
    c.set_mxcsr(0x1f00);
    assert_eq!(c.xstate_bv(), 2);
    assert_eq!(c.mxcsr(), 0x1f00);
    // make_present in the standard form keeps the effective MXCSR.
    s.set_xmm(0, 1).unwrap();
    assert_eq!(s.mxcsr(), 0x1f00);
}

#[test]
fn register_table_covers_components_exactly() {
    // Registers never overlap and stay inside the architectural size.
    for c in crate::components::CATALOG.iter() {
        let mut used = vec![false; 512 + c.arch_size as usize];
        for r in registers(c.id) {
            for i in 0..r.count {
                let start = (r.offset + i * r.stride) as usize;
                let w = if r.width == 0 {
                    c.arch_size as usize
                } else {
                    r.width as usize
                };
                for b in used.iter_mut().skip(start).take(w) {
                    assert!(!*b, "{} {} overlaps", c.name, r.name);
                    *b = true;
                }
                let limit = if c.id < 2 { 416 } else { c.arch_size as usize };
                assert!(start + w <= limit, "{} {}", c.name, r.name);
            }
        }
    }
}

#[test]
fn views_borrow_without_copy() {
    let l = zen5();
    let mut bytes = vec![0u8; 2432];
    {
        let mut v = XsaveMut::with_layout(&mut bytes[..], &l).unwrap();
        v.set_k(2, 42).unwrap();
    }
    let r = XsaveRef::with_layout(&bytes[..], &l).unwrap();
    assert_eq!(r.k(2).unwrap(), 42);
    assert_eq!(r.xstate_bv(), 1 << 5);
}

/// `AlignedBuf::for_overwrite`: aligned, of its length; without a recycled storage zero.
/// `new` and `from_bytes` are zero / the given bytes even on a storage recycled full of a
/// pattern (the pool tests in `image/aligned.rs` check the recycling itself).
#[test]
fn aligned_for_overwrite_and_new() {
    for len in [100usize, 576, 2688] {
        let b = AlignedBuf::for_overwrite(len);
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert_eq!(b.len(), len);
        let mut junk = AlignedBuf::new(len);
        junk.fill(0xee);
        drop(junk);
        let n = AlignedBuf::new(len);
        assert!(n.iter().all(|&x| x == 0), "stale bytes in new");
        drop(n);
        let mut junk = AlignedBuf::new(len);
        junk.fill(0xee);
        drop(junk);
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        assert_eq!(&AlignedBuf::from_bytes(&data)[..], &data[..]);
    }
}

/// Images sharing one geometry (`with_shared_geometry`): no copy of it (the same placements
/// in memory), the same checks as `with_geometry`, equal to an image owning an equal
/// geometry, and clones and views share it too.
#[test]
fn shared_geometry() {
    let l = zen5();
    let g = alloc::sync::Arc::new(l.standard(0xe7).unwrap());
    let a = XsaveImage::with_shared_geometry(AlignedBuf::new(g.size as usize), g.clone()).unwrap();
    let b = XsaveImage::with_shared_geometry(AlignedBuf::new(g.size as usize), g.clone()).unwrap();
    assert_eq!(a.geometry().placements.as_ptr(), g.placements.as_ptr());
    assert_eq!(b.geometry().placements.as_ptr(), g.placements.as_ptr());
    assert_eq!(
        a.clone().geometry().placements.as_ptr(),
        g.placements.as_ptr()
    );
    assert_eq!(
        a.view().geometry().placements.as_ptr(),
        g.placements.as_ptr()
    );
    let owned = XsaveImage::with_geometry(AlignedBuf::new(g.size as usize), (*g).clone()).unwrap();
    assert_eq!(a, owned);
    assert_eq!(format!("{a:?}"), format!("{owned:?}"));
    assert_eq!(
        XsaveImage::with_shared_geometry(AlignedBuf::new(600), g.clone()).unwrap_err(),
        ImageError::Truncated {
            len: 600,
            needed: g.size as usize,
            form: g.form,
            mask: g.mask
        }
    );
    assert_eq!(
        XsaveImage::with_shared_geometry(AlignedBuf::new(100), g).unwrap_err(),
        ImageError::TooSmall { len: 100 }
    );
}
