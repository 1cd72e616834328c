//! Fuzzes every validation profile (`xrstor`, `xrstor-compacted`, `xrstors` with and without a
//! layout, `kvm`) on arbitrary bytes and configurations: no panic, every violation names an
//! offset inside the image (or 0 for a short one), and the verdict is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::validate::{
    kvm, xrstor, xrstor_any, xrstor_compacted, xrstors, xrstors_with_layout, KvmConfig,
    RestoreConfig, Rule,
};

mod image_common;

fuzz_target!(|data: &[u8]| {
    let mut r = image_common::Bytes(data);
    let (l, xcr0, xss) = image_common::layout(r.u8());
    let flags = r.u8();
    let mut cfg = RestoreConfig::for_layout(&l, xcr0 ^ (r.u64() & 0xff), xss, r.u64() as u32);
    cfg.xsavec = flags & 1 != 0;
    cfg.xsaves = flags & 2 != 0;
    cfg.request = if flags & 4 != 0 { r.u64() } else { u64::MAX };
    cfg.linear_address_bits = r.u8();
    let kcfg = KvmConfig {
        supported_xcr0: xcr0,
        user_features: xcr0 & r.u64(),
        mxcsr_mask: cfg.mxcsr_mask,
    };
    let img = r.0;
    let all = [
        xrstor(img, &cfg),
        xrstor_compacted(img, &cfg),
        xrstor_any(img, &cfg),
        xrstors(img, &cfg),
        xrstors_with_layout(img, &cfg, Some(&l)),
        kvm(img, &kcfg),
    ];
    for vs in &all {
        for v in vs {
            assert!(!v.message.is_empty());
            if img.len() < 576 {
                assert_eq!(v.rule, Rule::TooSmall);
            } else {
                assert!((v.offset as usize) < img.len(), "{v}");
            }
            let _ = v.to_string();
        }
    }
    // xrstor_any is one of the two XRSTOR profiles.
    assert!(all[2] == all[0] || all[2] == all[1]);
    // The layout only adds supervisor-value checks.
    assert!(all[4].len() >= all[3].len());
});
