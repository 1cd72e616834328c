//! Portable snapshots: encoding, the committed v1 sample, the `snapshot` profile, image ↔
//! snapshot round trips within and across layouts (Intel Skylake-SP ↔ AMD Zen 5).

mod common;

use proptest::prelude::*;
use xstate::components::{bits, mask};
use xstate::cpuid::CpuidDump;
use xstate::layout::{Form, Layout};
use xstate::snapshot::{
    is_snapshot, validate, ControlRegs, Snapshot, SnapshotError, HEADER_LEN, MAGIC, VERSION,
};

/// splitmix64: distinct, reproducible values without a dependency on an RNG's API.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

/// A canonical standard-form image of `xstate_bv ⊆ xcr0` on `layout`: random registers in
/// present components, init values elsewhere, reserved bytes zero. Returns the image.
fn random_standard(layout: &Layout, xcr0: u64, xstate_bv: u64, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let fl = layout.standard(xcr0).unwrap();
    let mut img = vec![0u8; fl.size as usize];
    // x87: FCW, FSW, FTW, FOP, FIP, FDP, ST0-7 (80 bits of each 16-byte slot).
    if xstate_bv & mask::X87 != 0 {
        r.fill(&mut img[0..5]);
        r.fill(&mut img[6..24]);
        for i in 0..8 {
            r.fill(&mut img[32 + 16 * i..32 + 16 * i + 10]);
        }
    } else {
        img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    }
    // MXCSR: a valid value (bits 0..15 without bit 6 on every CPU), MXCSR_MASK 0xffff.
    let mxcsr = (r.next() as u32) & 0xffbf;
    img[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    img[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    if xstate_bv & mask::SSE != 0 {
        r.fill(&mut img[160..416]);
    }
    for id in bits(xstate_bv & !mask::LEGACY) {
        let p = fl.placement(id).unwrap();
        let n = xstate::snapshot::content_len(id, p.size) as usize;
        let s = p.offset as usize;
        r.fill(&mut img[s..s + n]);
    }
    img[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
    img
}

/// A canonical compacted-form image (as XSAVEC writes it) of `xcomp ⊇ xstate_bv`.
fn random_compacted(layout: &Layout, xcomp: u64, xstate_bv: u64, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let fl = layout.compacted(xcomp).unwrap();
    let mut img = vec![0u8; fl.size as usize];
    if xstate_bv & mask::X87 != 0 {
        r.fill(&mut img[0..5]);
        r.fill(&mut img[6..24]);
        for i in 0..8 {
            r.fill(&mut img[32 + 16 * i..32 + 16 * i + 10]);
        }
    } else {
        img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    }
    let mxcsr = if xstate_bv & mask::SSE != 0 {
        r.fill(&mut img[160..416]);
        (r.next() as u32) & 0xffbf
    } else {
        0x1f80
    };
    img[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    img[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    for id in bits(xstate_bv & !mask::LEGACY) {
        let p = fl.placement(id).unwrap();
        let n = xstate::snapshot::content_len(id, p.size) as usize;
        let s = p.offset as usize;
        r.fill(&mut img[s..s + n]);
    }
    img[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
    img[520..528].copy_from_slice(&(xcomp | mask::COMPACTED).to_le_bytes());
    img
}

/// Every register's bytes of `id` in an image, found through the image's own layout.
fn register_bytes(img: &[u8], layout: &Layout, form: Form, m: u64, id: u8) -> Vec<u8> {
    match id {
        0 => (0..8)
            .flat_map(|i| img[32 + 16 * i..32 + 16 * i + 10].to_vec())
            .collect(),
        1 => img[160..416].to_vec(),
        _ => {
            let p = layout.form(form, m).unwrap().placement(id).unwrap();
            let n = xstate::snapshot::content_len(id, p.size) as usize;
            img[p.offset as usize..p.offset as usize + n].to_vec()
        }
    }
}

fn sample_snapshot() -> Snapshot {
    let sky = common::skylake();
    let l = Layout::from_dump(&sky);
    let img = random_standard(&l, 0x2ff, 0x2ff, 42);
    let mut regs = ControlRegs::with_xcr0(0x2ff);
    regs.msrs.insert(0x6a0, 0x5);
    Snapshot::from_image(&img, &sky, &regs).unwrap()
}

#[test]
fn encode_decode_round_trip_and_magic() {
    let s = sample_snapshot();
    let bytes = s.encode().unwrap();
    assert!(is_snapshot(&bytes));
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), VERSION);
    let back = Snapshot::decode(&bytes).unwrap();
    assert_eq!(back, s);
    // Canonical: re-encoding gives the same bytes.
    assert_eq!(back.encode().unwrap(), bytes);
    // The source record rebuilds the source layout.
    assert_eq!(
        back.source.layout().standard(0x2ff).unwrap(),
        Layout::from_dump(&common::skylake())
            .standard(0x2ff)
            .unwrap()
    );
}

#[test]
fn decode_errors_name_the_field() {
    let bytes = sample_snapshot().encode().unwrap();
    let mut bad = bytes.clone();
    bad[1] = b'Y';
    assert!(matches!(
        Snapshot::decode(&bad),
        Err(SnapshotError::BadMagic { .. })
    ));
    let mut bad = bytes.clone();
    bad[8] = 2;
    assert!(matches!(
        Snapshot::decode(&bad),
        Err(SnapshotError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    ));
    let mut bad = bytes.clone();
    bad[8] = 0;
    assert!(matches!(
        Snapshot::decode(&bad),
        Err(SnapshotError::UnsupportedVersion { found: 0, .. })
    ));
    let mut bad = bytes.clone();
    bad[10] = 1;
    assert!(matches!(
        Snapshot::decode(&bad),
        Err(SnapshotError::ReservedHeader { value: 1 })
    ));
    let mut bad = bytes.clone();
    bad.push(0);
    assert!(matches!(
        Snapshot::decode(&bad),
        Err(SnapshotError::LengthMismatch { .. })
    ));
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 20] ^= 0x40;
    let e = Snapshot::decode(&bad).unwrap_err();
    assert!(matches!(e, SnapshotError::Checksum { .. }), "{e}");
    assert!(matches!(
        Snapshot::decode(&bytes[..10]),
        Err(SnapshotError::TooShort { len: 10 })
    ));
    // A body that is valid CBOR but not the schema: fix the CRC so the schema check is reached.
    let mut bad = bytes[..HEADER_LEN].to_vec();
    bad[12..16].copy_from_slice(&1u32.to_le_bytes());
    bad.push(0xa0); // empty map
    let crc = xstate::snapshot::crc32::crc32(&bad);
    bad.extend_from_slice(&crc.to_le_bytes());
    let e = Snapshot::decode(&bad).unwrap_err();
    assert!(matches!(e, SnapshotError::Body { .. }), "{e}");
    assert!(e.to_string().contains("producer"), "{e}");
}

#[test]
fn duplicate_component_key_is_an_error() {
    // Hand-built CBOR with the key 1 twice in "msrs".
    let mut s = Snapshot::default();
    s.msrs.insert(1, 7);
    s.msrs.insert(2, 7);
    let bytes = s.encode().unwrap();
    let body = &bytes[HEADER_LEN..bytes.len() - 4];
    // In the canonical body the msrs map is `a2 01 07 02 07`; make it `a2 01 07 01 07`.
    let pat = [0xa2u8, 0x01, 0x07, 0x02, 0x07];
    let pos = body.windows(5).position(|w| w == pat).unwrap();
    let mut nb = bytes.clone();
    nb[HEADER_LEN + pos + 3] = 0x01;
    let end = nb.len() - 4;
    let crc = xstate::snapshot::crc32::crc32(&nb[..end]);
    nb[end..].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        Snapshot::decode(&nb),
        Err(SnapshotError::DuplicateKey {
            field: "msrs",
            key: 1
        })
    ));
}

/// The committed v1 sample keeps decoding to the same values. Regenerate (only when the v1
/// writer is deliberately unchanged) with `XSTATE_WRITE_SAMPLE=1 cargo test -p xstate --test
/// snapshot v1_sample`.
#[test]
fn v1_sample_keeps_decoding() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1-skylake-sp.xsnap");
    if std::env::var_os("XSTATE_WRITE_SAMPLE").is_some() {
        std::fs::write(&path, sample_snapshot().encode().unwrap()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        u16::from_le_bytes([bytes[8], bytes[9]]),
        1,
        "the sample is a v1 file"
    );
    let s = Snapshot::decode(&bytes).unwrap();
    // Values fixed when the sample was written (seed 42 on the Skylake-SP layout).
    assert_eq!(s.xcr0, 0x2ff);
    assert_eq!(s.xstate_bv(), 0x2ff);
    assert_eq!(s.source.vendor, "GenuineIntel");
    assert_eq!(
        (s.source.family, s.source.model, s.source.stepping),
        (6, 0x55, 4)
    );
    assert_eq!(s.source.components[&5].offset, 1088);
    assert_eq!(s.msrs.get(&0x6a0), Some(&5));
    assert!(validate(&s).is_empty(), "{:?}", validate(&s));
    // Every component's content equals the one a fresh capture of the same image gives.
    assert_eq!(s.components, sample_snapshot().components);
    assert_eq!(s.legacy, sample_snapshot().legacy);
    // The writer of this build writes the committed file byte for byte (CBOR body, CRC-32).
    assert!(
        s.encode().unwrap() == bytes,
        "re-encoding the v1 sample changed its bytes"
    );
}

#[test]
fn cross_layout_intel_to_amd_and_back_keeps_every_register() {
    let sky = common::skylake();
    let zen = common::zen5();
    let (li, la) = (Layout::from_dump(&sky), Layout::from_dump(&zen));
    assert_eq!(li.standard(0xe7).unwrap().offset_of(5), Some(1088));
    assert_eq!(la.standard(0xe7).unwrap().offset_of(5), Some(832));
    for seed in 0..20u64 {
        // Intel standard image → snapshot → AMD standard image.
        let img_i = random_standard(&li, 0xe7, 0xe7, seed);
        let snap = Snapshot::from_image(&img_i, &sky, &ControlRegs::with_xcr0(0xe7)).unwrap();
        let img_a = snap.to_image(&la, Form::Standard, 0xe7).unwrap();
        assert_eq!(img_a.len(), 2432);
        for id in bits(0xe7) {
            assert_eq!(
                register_bytes(&img_i, &li, Form::Standard, 0xe7, id),
                register_bytes(&img_a, &la, Form::Standard, 0xe7, id),
                "seed {seed}: component {id} changed Intel → AMD"
            );
        }
        // k0..k7 land at 832 on AMD, from 1088 on Intel.
        assert_eq!(img_a[832..896], img_i[1088..1152]);
        assert_eq!(img_a[24..28], img_i[24..28], "MXCSR");
        assert_eq!(img_a[0..24], img_i[0..24], "x87 fields");
        // AMD standard image → snapshot → Intel standard image: identical to the original.
        let back = Snapshot::from_image(&img_a, &zen, &ControlRegs::with_xcr0(0xe7)).unwrap();
        assert_eq!(back.components, snap.components);
        let img_i2 = back.to_image(&li, Form::Standard, 0xe7).unwrap();
        assert_eq!(
            img_i2, img_i,
            "seed {seed}: Intel → AMD → Intel is not the identity"
        );
        // And through the compacted form on AMD (XSAVEC's layout).
        let c = snap.to_image(&la, Form::Compacted, 0xe7).unwrap();
        let from_c = Snapshot::from_image(&c, &zen, &ControlRegs::with_xcr0(0xe7)).unwrap();
        assert_eq!(from_c.to_image(&li, Form::Standard, 0xe7).unwrap(), img_i);
    }
}

#[test]
fn amd_to_intel_with_partial_xstate_bv_and_encoding_in_between() {
    let sky = common::skylake();
    let zen = common::zen5();
    let (li, la) = (Layout::from_dump(&sky), Layout::from_dump(&zen));
    for (seed, bv) in [(1u64, 0xe0u64), (2, 0x21), (3, 0x43), (4, 0x0), (5, 0x86)] {
        let img_a = random_standard(&la, 0xe7, bv, seed);
        let snap = Snapshot::from_image(&img_a, &zen, &ControlRegs::with_xcr0(0xe7)).unwrap();
        let file = snap.encode().unwrap();
        let snap = Snapshot::decode(&file).unwrap();
        assert_eq!(snap.xstate_bv(), bv);
        let img_i = snap.to_image(&li, Form::Standard, 0xe7).unwrap();
        assert_eq!(u64::from_le_bytes(img_i[512..520].try_into().unwrap()), bv);
        for id in bits(bv) {
            assert_eq!(
                register_bytes(&img_a, &la, Form::Standard, 0xe7, id),
                register_bytes(&img_i, &li, Form::Standard, 0xe7, id)
            );
        }
        // Absent components are at init in the rebuilt image (all zero here).
        for id in bits(0xe4 & !bv) {
            assert!(register_bytes(&img_i, &li, Form::Standard, 0xe7, id)
                .iter()
                .all(|&b| b == 0));
        }
    }
}

#[test]
fn destination_that_cannot_hold_a_component_is_named() {
    let spr = common::sapphire_rapids();
    let ls = Layout::from_dump(&spr);
    let img = random_standard(&ls, 0x602e7, 0x60207, 9);
    let snap = Snapshot::from_image(&img, &spr, &ControlRegs::with_xcr0(0x602e7)).unwrap();
    let zen = Layout::from_dump(&common::zen5());
    let e = snap.to_image(&zen, Form::Standard, 0xe7).unwrap_err();
    match e {
        SnapshotError::CannotHold { id, ref name, .. } => {
            assert_eq!((id, name.as_str()), (9, "pkru"), "{e}");
        }
        other => panic!("unexpected {other}"),
    }
    // An image whose XSTATE_BV names a component XCR0 does not enable is refused by name.
    let e = Snapshot::from_image(&img, &spr, &ControlRegs::with_xcr0(0x2e7)).unwrap_err();
    assert!(e.to_string().contains("xtilecfg"), "{e}");
}

#[test]
fn pkru_content_is_eight_bytes_even_when_cpuid_says_64() {
    // A Zen 2-like CPU reports PKRU as 64 bytes.
    let mut d = CpuidDump::new("zen2");
    let r = |eax, ebx, ecx| xstate::cpuid::Regs {
        eax,
        ebx,
        ecx,
        edx: 0,
    };
    d.insert(0xd, 0, r(0x207, 0x380, 0x380));
    d.insert(0xd, 2, r(256, 576, 0));
    d.insert(0xd, 9, r(64, 832, 0));
    let l = Layout::from_dump(&d);
    let mut img = random_standard(&l, 0x207, 0x207, 77);
    img[840..896].fill(0xee); // bytes beyond PKRU's architectural 8: not state
    let s = Snapshot::from_image(&img, &d, &ControlRegs::with_xcr0(0x207)).unwrap();
    assert_eq!(s.component(9).unwrap().len(), 8);
    assert_eq!(s.component(9).unwrap(), &img[832..840]);
    assert!(validate(&s).is_empty(), "{:?}", validate(&s));
    // Restored on Skylake-SP (PKRU 8 bytes at 2688).
    let sky = Layout::from_dump(&common::skylake());
    let out = s.to_image(&sky, Form::Standard, 0x207).unwrap();
    assert_eq!(&out[2688..2696], &img[832..840]);
}

#[test]
fn snapshot_profile_reports_every_violation() {
    let mut s = sample_snapshot();
    s.xcr0 = 0x2df; // AVX-512 incomplete: opmask (bit 5) cleared
    s.xss = 0x800; // CET_U: Skylake-SP supports only PT (0x100)
    s.xfd = 0x40000; // TILEDATA: not XFD-capable on Skylake
    s.components.insert(9, vec![0; 4]); // PKRU is 8 bytes
    s.legacy.mxcsr = 0x1_0000; // bit 16 reserved
    s.msrs.insert(0xda0, 0x800); // IA32_XSS has its own field
    let v = validate(&s);
    let rules: Vec<&str> = v.iter().map(|x| x.rule.as_str()).collect();
    for want in [
        "xcr0.avx512_all_or_none",
        "xss.unsupported",
        "xfd.unsupported",
        "component.not_enabled",
        "component.size",
        "legacy.mxcsr_reserved",
        "msrs.dedicated",
    ] {
        assert!(rules.contains(&want), "missing {want} in {rules:?}");
    }
    let size = v.iter().find(|x| x.rule == "component.size").unwrap();
    assert_eq!(size.location, "components[9]");
    assert_eq!(size.value, "4");
    let ne = v
        .iter()
        .find(|x| x.rule == "component.not_enabled")
        .unwrap();
    assert_eq!(ne.location, "components[5]");
    // x87 absent with non-init fields.
    let mut s = sample_snapshot();
    s.components.remove(&0);
    let v = validate(&s);
    assert!(v
        .iter()
        .any(|x| x.rule == "legacy.x87_not_init" && x.location == "legacy.fcw"));
    // A valid snapshot has none.
    assert!(validate(&sample_snapshot()).is_empty());
}

#[test]
fn compacted_image_with_supervisor_state_round_trips() {
    // Zen 5: XSAVES form with CET_U and CET_S (kernel features 0x18e7, 2472 bytes).
    let zen = common::zen5();
    let l = Layout::from_dump(&zen);
    let img = random_compacted(&l, 0x18e7, 0x18e3, 5);
    assert_eq!(img.len(), 2472);
    let regs = ControlRegs {
        xcr0: 0xe7,
        xss: 0x1800,
        ..Default::default()
    };
    let s = Snapshot::from_image(&img, &zen, &regs).unwrap();
    assert_eq!(s.xstate_bv(), 0x18e3);
    assert!(validate(&s).is_empty(), "{:?}", validate(&s));
    assert_eq!(s.to_image(&l, Form::Compacted, 0x18e7).unwrap(), img);
    assert_eq!(s.to_source_image().unwrap(), img);
    // A standard image has no room for CET.
    let e = s.to_image(&l, Form::Standard, 0xe7).unwrap_err();
    assert!(matches!(e, SnapshotError::CannotHold { id: 11, .. }), "{e}");
}

#[test]
fn compacted_mxcsr_without_sse_sets_sse() {
    // Standard image with SSE init but MXCSR ≠ 0x1F80: the compacted rebuild must carry it.
    let zen = common::zen5();
    let l = Layout::from_dump(&zen);
    let mut img = random_standard(&l, 0xe7, 0x5, 3);
    img[24..28].copy_from_slice(&0x9fc0u32.to_le_bytes());
    let s = Snapshot::from_image(&img, &zen, &ControlRegs::with_xcr0(0xe7)).unwrap();
    assert_eq!(s.xstate_bv(), 0x5);
    let c = s.to_image(&l, Form::Compacted, 0xe7).unwrap();
    assert_eq!(u64::from_le_bytes(c[512..520].try_into().unwrap()), 0x7);
    assert_eq!(u32::from_le_bytes(c[24..28].try_into().unwrap()), 0x9fc0);
    assert!(c[160..416].iter().all(|&b| b == 0));
}

fn dumps() -> Vec<CpuidDump> {
    vec![common::skylake(), common::zen5(), common::sapphire_rapids()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// image → snapshot → image is the identity for canonical images, in both forms, on every
    /// fixture layout, for any XSTATE_BV.
    #[test]
    fn image_snapshot_image(cpu in 0usize..3, bv in any::<u64>(), seed in any::<u64>(), compacted in any::<bool>()) {
        let d = &dumps()[cpu];
        let l = Layout::from_dump(d);
        let xcr0 = l.xcr0_supported();
        let bv = bv & xcr0;
        let (img, form) = if compacted {
            (random_compacted(&l, xcr0, bv, seed), Form::Compacted)
        } else {
            (random_standard(&l, xcr0, bv, seed), Form::Standard)
        };
        let s = Snapshot::from_image(&img, d, &ControlRegs::with_xcr0(xcr0)).unwrap();
        prop_assert!(validate(&s).is_empty());
        prop_assert_eq!(s.to_image(&l, form, xcr0).unwrap(), img);
        // snapshot → bytes → snapshot is the identity too.
        prop_assert_eq!(Snapshot::decode(&s.encode().unwrap()).unwrap(), s);
    }

    /// Any bytes: decode returns Ok or Err, never panics.
    #[test]
    fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Snapshot::decode(&bytes);
    }

    /// Mutated valid files with the CRC recomputed (so the CBOR decoder is reached): no panic,
    /// and whatever decodes can be validated and rebuilt without panicking.
    #[test]
    fn decode_mutated_body_never_panics(muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<u16>()) {
        let mut b = sample_snapshot().encode().unwrap();
        let body_len = b.len() - HEADER_LEN - 4;
        for (pos, val) in muts {
            let p = HEADER_LEN + pos % body_len;
            b[p] = val;
        }
        // Optionally truncate the body (and fix the declared length).
        let keep = if cut % 3 == 0 { body_len - (cut as usize % body_len) } else { body_len };
        b.truncate(HEADER_LEN + keep);
        b[12..16].copy_from_slice(&(keep as u32).to_le_bytes());
        let crc = xstate::snapshot::crc32::crc32(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        if let Ok(s) = Snapshot::decode(&b) {
            let _ = validate(&s);
            let _ = s.to_source_image();
            let _ = s.to_image(&Layout::from_dump(&common::zen5()), Form::Standard, 0xe7);
            let _ = xstate::compat::check(&s, &xstate::compat::Destination::from_dump(&common::zen5(), None, None));
        }
    }
}

/// Rewrites the CBOR body of a file with `edit` and fixes the length and the CRC.
fn rewrite_body(
    file: &[u8],
    edit: impl FnOnce(&mut Vec<(ciborium::Value, ciborium::Value)>),
) -> Vec<u8> {
    let body = &file[HEADER_LEN..file.len() - 4];
    let mut v: ciborium::Value = ciborium::from_reader(body).unwrap();
    let ciborium::Value::Map(m) = &mut v else {
        panic!("body is not a map")
    };
    edit(m);
    let mut nb = Vec::new();
    ciborium::into_writer(&v, &mut nb).unwrap();
    let mut out = file[..HEADER_LEN].to_vec();
    out[12..16].copy_from_slice(&(nb.len() as u32).to_le_bytes());
    out.extend_from_slice(&nb);
    let crc = xstate::snapshot::crc32::crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn unknown_keys_are_ignored_missing_or_mistyped_keys_are_errors() {
    let s = sample_snapshot();
    let file = s.encode().unwrap();
    let extra = rewrite_body(&file, |m| {
        m.push((
            ciborium::Value::Text("x-future".into()),
            ciborium::Value::Integer(7.into()),
        ))
    });
    assert_eq!(Snapshot::decode(&extra).unwrap(), s);
    let missing = rewrite_body(&file, |m| m.retain(|(k, _)| k.as_text() != Some("xfd")));
    let e = Snapshot::decode(&missing).unwrap_err();
    assert!(e.to_string().contains("xfd"), "{e}");
    let mistyped = rewrite_body(&file, |m| {
        for (k, v) in m.iter_mut() {
            if k.as_text() == Some("xcr0") {
                *v = ciborium::Value::Text("0x2ff".into());
            }
        }
    });
    assert!(matches!(
        Snapshot::decode(&mistyped),
        Err(SnapshotError::Body { .. })
    ));
    // A legacy field out of its range (FCW is 16 bits).
    let wide = rewrite_body(&file, |m| {
        for (k, v) in m.iter_mut() {
            if k.as_text() == Some("legacy") {
                if let ciborium::Value::Map(l) = v {
                    for (lk, lv) in l.iter_mut() {
                        if lk.as_text() == Some("fcw") {
                            *lv = ciborium::Value::Integer(0x1_0000.into());
                        }
                    }
                }
            }
        }
    });
    assert!(Snapshot::decode(&wide).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two independent implementations agree: the image model's cross-layout conversion
    /// (`xstate::convert::convert`) and the snapshot path (image → snapshot → image), from every
    /// fixture layout to every other, into the standard and the compacted form.
    #[test]
    fn snapshot_path_agrees_with_the_image_converter(a in 0usize..3, b in 0usize..3, bv in any::<u64>(), seed in any::<u64>(), compacted in any::<bool>()) {
        let ds = dumps();
        let (la, lb) = (Layout::from_dump(&ds[a]), Layout::from_dump(&ds[b]));
        let common = la.xcr0_supported() & lb.xcr0_supported();
        prop_assume!(la.check_xcr0(common).is_ok());
        let bv = bv & common;
        let img = random_standard(&la, common, bv, seed);
        let form = if compacted { Form::Compacted } else { Form::Standard };
        let target = lb.form(form, common).unwrap();
        let theirs = xstate::convert::convert(&xstate::image::XsaveImage::from_bytes(&img, &la).unwrap(), &target).unwrap();
        let snap = Snapshot::from_image(&img, &ds[a], &ControlRegs::with_xcr0(common)).unwrap();
        let ours = snap.to_image(&lb, form, common).unwrap();
        prop_assert_eq!(theirs.as_bytes().len(), ours.len());
        let d: Vec<usize> = (0..ours.len()).filter(|&i| theirs.as_bytes()[i] != ours[i]).take(8).collect();
        prop_assert!(d.is_empty(), "differ at {:?} ({:?} form, {} -> {})", d, form, a, b);
    }
}

#[test]
fn absurd_source_geometry_is_an_error_not_an_allocation() {
    let mut s = sample_snapshot();
    if let Some(c) = s.source.components.get_mut(&7) {
        c.size = 0x7fff_ffff;
    }
    let v = validate(&s);
    assert!(v.iter().any(|x| x.rule.starts_with("source.")), "{v:?}");
    assert!(s.to_source_image().is_err());
    let mut s = sample_snapshot();
    if let Some(c) = s.source.components.get_mut(&5) {
        c.offset = 0xffff_fff0;
    }
    assert!(s.to_source_image().is_err());
    assert!(validate(&s).iter().any(|x| x.rule == "source.layout"));
}

#[test]
fn tags_and_indefinite_lengths_are_accepted() {
    let s = sample_snapshot();
    let file = s.encode().unwrap();
    // A tag around XCR0's value.
    let tagged = rewrite_body(&file, |m| {
        for (k, v) in m.iter_mut() {
            if k.as_text() == Some("xcr0") {
                *v = ciborium::Value::Tag(6, Box::new(v.clone()));
            }
        }
    });
    assert_eq!(Snapshot::decode(&tagged).unwrap(), s);
    // The top-level map written with an indefinite length (0xbf … 0xff).
    let body = &file[HEADER_LEN..file.len() - 4];
    assert_eq!(body[0], 0xa9, "a definite map of 9 keys");
    let mut nb = vec![0xbf];
    nb.extend_from_slice(&body[1..]);
    nb.push(0xff);
    let mut out = file[..HEADER_LEN].to_vec();
    out[12..16].copy_from_slice(&(nb.len() as u32).to_le_bytes());
    out.extend_from_slice(&nb);
    let crc = xstate::snapshot::crc32::crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(Snapshot::decode(&out).unwrap(), s);
}
