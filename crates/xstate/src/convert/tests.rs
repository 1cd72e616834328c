use super::*;
use crate::diff::diff;
use crate::image::XsaveImage;
use crate::layout::Layout;
use crate::testutil::{skx, spr, zen5};
use alloc::vec;
use proptest::prelude::*;

/// A random image of `g`: components of `present` (within the geometry) filled with random
/// bytes, MXCSR random within the default mask.
fn random_image(g: &FormLayout, present: u64, seed: &[u8], mxcsr: u32) -> XsaveImage {
    let mut img = XsaveImage::new(g);
    let mut k = 0usize;
    let mut next = || {
        k += 1;
        seed.get(k % seed.len().max(1)).copied().unwrap_or(0) ^ (k as u8).wrapping_mul(31)
    };
    for id in bits(present & g.mask) {
        match id {
            0 => {
                img.set_fcw(u16::from_le_bytes([next(), next()]));
                img.set_fsw(u16::from_le_bytes([next(), next()]));
                img.set_ftw(next());
                img.set_fip(u64::from(next()) << 8 | u64::from(next()));
                for i in 0..8 {
                    let mut v = [0u8; 16];
                    for b in v.iter_mut().take(10) {
                        *b = next();
                    }
                    img.set_st(i, u128::from_le_bytes(v)).unwrap();
                }
            }
            1 => {
                for i in 0..16 {
                    let v = u128::from_le_bytes(core::array::from_fn(|_| next()));
                    img.set_xmm(i, v).unwrap();
                }
            }
            _ => {
                let p = img.placement(id).unwrap();
                let data: Vec<u8> = (0..p.size).map(|_| next()).collect();
                img.set_component_bytes(id, &data).unwrap();
            }
        }
    }
    img.as_mut_bytes()[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    img
}

fn check_round_trip(l: &Layout, xcr0: u64, present: u64, seed: &[u8], mxcsr: u32) {
    let std_g = l.standard(xcr0).unwrap();
    let src = random_image(&std_g, present, seed, mxcsr);
    // Standard -> compacted (full mask) -> standard: same meaning and same bytes.
    let c = convert(&src, &l.compacted(xcr0).unwrap()).unwrap();
    assert!(diff(&src, &c).unwrap().is_empty());
    let back = convert(&c, &std_g).unwrap();
    assert!(diff(&src, &back).unwrap().is_empty());
    // The compacted form carries a non-default MXCSR in the SSE component (XSAVEC rule), so
    // the standard image that comes back has XSTATE_BV[1] set: otherwise the same bytes.
    let mut direct = convert(&src, &std_g).unwrap();
    if src.mxcsr() != MXCSR_INIT {
        direct.make_present(1).unwrap();
    }
    assert_eq!(direct.as_bytes(), back.as_bytes());
    // Compacted with exactly the components in use (plus SSE for MXCSR): same meaning.
    let used = src.xstate_bv() | if src.mxcsr() != MXCSR_INIT { 2 } else { 0 };
    let tight = convert(&src, &l.compacted(used).unwrap()).unwrap();
    assert!(diff(&src, &tight).unwrap().is_empty());
    assert_eq!(
        convert(&tight, &std_g).unwrap().as_bytes(),
        direct.as_bytes()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn zen5_round_trips(present in 0u64..0x100, seed in proptest::collection::vec(any::<u8>(), 1..64),
                        mxcsr in 0u32..0x10000) {
        check_round_trip(&zen5(), 0xe7, present & 0xe7, &seed, mxcsr);
    }

    #[test]
    fn spr_round_trips(present in 0u64..0x80000, seed in proptest::collection::vec(any::<u8>(), 1..64),
                       mxcsr in 0u32..0x10000) {
        check_round_trip(&spr(), 0x602e7, present & 0x602e7, &seed, mxcsr);
    }

    #[test]
    fn skx_round_trips(present in 0u64..0x400, seed in proptest::collection::vec(any::<u8>(), 1..64),
                       mxcsr in 0u32..0x10000) {
        check_round_trip(&skx(), 0x2ff, present & 0x2ff, &seed, mxcsr);
    }

    /// Intel -> AMD -> Intel: AVX-512 and x87/SSE/AVX move between offsets 1088/832 etc.
    #[test]
    fn intel_amd_round_trips(present in 0u64..0x100, seed in proptest::collection::vec(any::<u8>(), 1..64)) {
        let (i, z) = (spr(), zen5());
        let src = random_image(&i.standard(0x2e7).unwrap(), present & 0xe7, &seed, 0x1f80);
        let amd = convert(&src, &z.standard(0xe7).unwrap()).unwrap();
        prop_assert!(diff(&src, &amd).unwrap().is_empty());
        let amd_c = convert(&src, &z.compacted(0xe7).unwrap()).unwrap();
        prop_assert!(diff(&src, &amd_c).unwrap().is_empty());
        let again = convert(&amd_c, &i.standard(0x2e7).unwrap()).unwrap();
        let direct = convert(&src, &i.standard(0x2e7).unwrap()).unwrap();
        prop_assert_eq!(again.as_bytes(), direct.as_bytes());
    }

    /// Arbitrary bytes: conversion never panics; when it succeeds, meaning is kept.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000),
                                   bv in any::<u64>(), xc in any::<u64>()) {
        let l = zen5();
        let mut b = bytes.clone();
        if b.len() >= 576 {
            b[512..520].copy_from_slice(&bv.to_le_bytes());
            b[520..528].copy_from_slice(&(xc & 0x80000000000000ff).to_le_bytes());
        }
        if let Ok(img) = XsaveImage::from_bytes(&b, &l) {
            for t in [l.standard(0xe7).unwrap(), l.compacted(0xe7).unwrap(), l.compacted(0x3).unwrap()] {
                if let Ok(out) = convert(&img, &t) {
                    prop_assert!(diff(&img, &out).unwrap().is_empty());
                }
            }
            let _ = to_fxsave(&img);
        }
    }
}

#[test]
fn opmask_moves_from_intel_1088_to_amd_832() {
    let (i, z) = (spr(), zen5());
    let mut src = XsaveImage::new(&i.standard(0x2e7).unwrap());
    src.set_k(0, 0x1122334455667788).unwrap();
    assert_eq!(
        &src.as_bytes()[1088..1096],
        &0x1122334455667788u64.to_le_bytes()
    );
    let dst = convert(&src, &z.standard(0xe7).unwrap()).unwrap();
    assert_eq!(dst.len(), 2432);
    assert_eq!(
        &dst.as_bytes()[832..840],
        &0x1122334455667788u64.to_le_bytes()
    );
}

#[test]
fn too_small_target_names_the_component() {
    let (i, z) = (spr(), zen5());
    let mut src = XsaveImage::new(&i.compacted(0x602e7).unwrap());
    src.set_tile_row(0, 0, &[1; 64]).unwrap();
    let e = convert(&src, &z.standard(0xe7).unwrap()).unwrap_err();
    assert_eq!(
        e,
        ConvertError::NoRoom {
            id: 18,
            name: String::from("xtiledata"),
            form: Form::Standard,
            mask: 0xe7
        }
    );
    // PKRU present with a non-init value, AMD host without PKU.
    let mut src = XsaveImage::new(&i.standard(0x2e7).unwrap());
    src.set_pkru(0x55555554).unwrap();
    assert!(convert(&src, &z.standard(0xe7).unwrap())
        .unwrap_err()
        .to_string()
        .contains("pkru"));
    // Present but init: nothing to lose, so allowed.
    src.set_pkru(0).unwrap();
    let out = convert(&src, &z.standard(0xe7).unwrap()).unwrap();
    assert_eq!(out.xstate_bv(), 0);
    // MXCSR without SSE/AVX in the standard target.
    let mut src = XsaveImage::new(&z.standard(0xe7).unwrap());
    src.set_mxcsr(0x1f00);
    assert!(matches!(
        convert(&src, &z.standard(0x1).unwrap()).unwrap_err(),
        ConvertError::NoRoom { id: 1, .. }
    ));
}

#[test]
fn standard_mxcsr_becomes_sse_in_compacted_form() {
    // XSAVEC rule: MXCSR != 0x1F80 forces XSTATE_BV[1] = 1.
    let z = zen5();
    let mut src = XsaveImage::new(&z.standard(0xe7).unwrap());
    src.as_mut_bytes()[24..28].copy_from_slice(&0x1fc0u32.to_le_bytes());
    assert_eq!(src.xstate_bv(), 0);
    let c = convert(&src, &z.compacted(0xe7).unwrap()).unwrap();
    assert_eq!(c.xstate_bv(), 2);
    assert_eq!(c.mxcsr(), 0x1fc0);
    assert_eq!(c.xmm(0).unwrap(), 0);
    let c = convert(&src, &z.compacted(0x5).unwrap());
    assert!(matches!(c.unwrap_err(), ConvertError::NoRoom { id: 1, .. }));
}

#[test]
fn pkru_sizes_differ() {
    // A Zen 2 PKRU is 64 bytes: only 4 carry state.
    let mut d = crate::cpuid::CpuidDump::new("zen2");
    let r = |eax, ebx, ecx| crate::cpuid::Regs {
        eax,
        ebx,
        ecx,
        edx: 0,
    };
    d.insert(0xd, 0, r(0x207, 0x980, 0x980));
    d.insert(0xd, 1, r(0xf, 0, 0));
    d.insert(0xd, 2, r(256, 576, 0));
    d.insert(0xd, 9, r(64, 0x980 - 64, 0));
    let zen2 = Layout::from_dump(&d);
    let i = spr();
    let mut src = XsaveImage::new(&zen2.standard(0x207).unwrap());
    src.set_pkru(0x5555_5554).unwrap();
    src.as_mut_bytes()[0x940 + 8] = 0xff; // meaningless byte 8 of the 64-byte PKRU area
    let dst = convert(&src, &i.standard(0x207).unwrap()).unwrap();
    assert_eq!(dst.pkru().unwrap(), 0x5555_5554);
    let back = convert(&dst, &zen2.standard(0x207).unwrap()).unwrap();
    assert!(diff(&src, &back).unwrap().is_empty());
}

#[test]
fn unknown_component_truncation_is_an_error() {
    // Component 40 (unknown to the catalog): 64 bytes on one CPU, 32 on another.
    let mk = |size: u32| {
        let mut d = crate::cpuid::CpuidDump::new("x");
        d.insert(
            0xd,
            0,
            crate::cpuid::Regs {
                eax: 0x7,
                ebx: 0,
                ecx: 0,
                edx: 1 << 8,
            },
        );
        d.insert(
            0xd,
            2,
            crate::cpuid::Regs {
                eax: 256,
                ebx: 576,
                ecx: 0,
                edx: 0,
            },
        );
        d.insert(
            0xd,
            40,
            crate::cpuid::Regs {
                eax: size,
                ebx: 832,
                ecx: 0,
                edx: 0,
            },
        );
        Layout::from_dump(&d)
    };
    let (big, small) = (mk(64), mk(32));
    let m = 0x7 | 1 << 40;
    let mut src = XsaveImage::new(&big.standard(m).unwrap());
    let mut data = [0u8; 64];
    data[0] = 1;
    src.set_component_bytes(40, &data).unwrap();
    let out = convert(&src, &small.standard(m).unwrap()).unwrap();
    assert_eq!(out.component_bytes(40).unwrap()[0], 1);
    data[40] = 1;
    src.set_component_bytes(40, &data).unwrap();
    assert_eq!(
        convert(&src, &small.standard(m).unwrap()).unwrap_err(),
        ConvertError::Truncation {
            id: 40,
            name: String::from("component_40"),
            src_size: 64,
            dst_size: 32,
            offset: 864
        }
    );
}

#[test]
fn fxsave_round_trips_and_refuses_avx() {
    let z = zen5();
    let mut fx = [0u8; 512];
    for (k, b) in fx.iter_mut().enumerate() {
        *b = (k * 7) as u8;
    }
    fx[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    for g in [
        z.standard(0xe7).unwrap(),
        z.compacted(0xe7).unwrap(),
        z.compacted(0x3).unwrap(),
    ] {
        let x = from_fxsave(&fx, &g).unwrap();
        assert_eq!(x.xstate_bv(), 3);
        assert_eq!(to_fxsave(&x).unwrap(), fx);
    }
    assert_eq!(
        from_fxsave(&fx[..511], &z.standard(0xe7).unwrap()).unwrap_err(),
        ConvertError::FxsaveSize(511)
    );
    let mut x = from_fxsave(&fx, &z.standard(0xe7).unwrap()).unwrap();
    x.set_ymm_hi(0, 1).unwrap();
    assert!(to_fxsave(&x).unwrap_err().to_string().contains("avx"));
    // Absent x87/SSE read as init.
    let empty = XsaveImage::new(&z.standard(0xe7).unwrap());
    let fx2 = to_fxsave(&empty).unwrap();
    assert_eq!(&fx2[0..2], &[0x7f, 0x03]);
    assert_eq!(&fx2[24..28], &0x1f80u32.to_le_bytes());
    let _ = vec![0u8; 1];
}

#[test]
fn bad_source_headers() {
    let z = zen5();
    let mut src = XsaveImage::new(&z.compacted(0x7).unwrap());
    src.set_xstate_bv(0x20); // opmask not in XCOMP_BV
    assert!(matches!(
        convert(&src, &z.standard(0xe7).unwrap()).unwrap_err(),
        ConvertError::BadHeader(_)
    ));
    src.set_xstate_bv(1 << 63);
    assert!(matches!(
        convert(&src, &z.standard(0xe7).unwrap()).unwrap_err(),
        ConvertError::BadHeader(_)
    ));
}

#[test]
fn supervisor_state_moves_between_compacted_layouts() {
    // The kernel's Zen 5 format (DESIGN.md §9: features 0x18e7, 2472 bytes) to a Sapphire
    // Rapids compacted form with CET: CET_U and CET_S follow their components, never the
    // standard form (which has no place for supervisor state).
    let (z, i) = (zen5(), spr());
    let mut src = XsaveImage::new(&z.compacted(0x18e7).unwrap());
    assert_eq!(src.len(), 2472);
    src.set_u_cet(0x5).unwrap();
    src.set_pl3_ssp(0x7fff_0000_1000).unwrap();
    src.set_pl_ssp(2, 0x7fff_0000_2000).unwrap();
    src.set_k(1, 1).unwrap();
    assert_eq!(src.placement(11).unwrap().offset, 2432);
    let dst = convert(&src, &i.compacted(0x18e7).unwrap()).unwrap();
    assert_eq!(
        (dst.u_cet().unwrap(), dst.pl3_ssp().unwrap()),
        (0x5, 0x7fff_0000_1000)
    );
    assert_eq!(dst.pl_ssp(2).unwrap(), 0x7fff_0000_2000);
    assert!(diff(&src, &dst).unwrap().is_empty());
    let e = convert(&src, &z.standard(0xe7).unwrap()).unwrap_err();
    assert!(matches!(e, ConvertError::NoRoom { id: 11, .. }), "{e}");
    // Without its supervisor state the image converts to the standard form.
    let mut user = src.clone();
    user.clear_component(11).unwrap();
    user.clear_component(12).unwrap();
    let s = convert(&user, &z.standard(0xe7).unwrap()).unwrap();
    assert_eq!(s.k(1).unwrap(), 1);
    assert_eq!(s.xstate_bv(), 1 << 5);
}

/// A target laid out from absurd CPUID data (beyond 1 MiB) is refused before allocating.
#[test]
fn absurd_target_is_refused() {
    let l = crate::testutil::zen5();
    let src = XsaveImage::new(&l.standard(0x7).unwrap());
    let mut t = l.standard(0x7).unwrap();
    t.size = (1 << 20) + 64;
    assert!(matches!(
        convert(&src, &t),
        Err(ConvertError::TargetTooLarge(n)) if n == (1 << 20) + 64
    ));
}
