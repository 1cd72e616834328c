//! Size is a validity rule (issue 9, item 2), checked against the real XRSTOR of this CPU.
//!
//! `xstate::hw::sandbox::xrstor_fenced` places an image so that the page after it is
//! inaccessible: a restore that reads one byte past the image dies of SIGSEGV. For headers of
//! both forms, every XSTATE_BV and instruction mask below, the image cut to
//! `validate::required_size` bytes restores (the rule never says "valid" for bytes the CPU
//! would read past), and where the furthest component the rule counts is loaded from the image
//! (so every CPU must read it), cutting 64 more bytes faults (the rule is tight). The measured
//! minimum of every case is printed: on this project's Intel machine (Xeon, AMX) it equals the
//! rule in every case, XSTATE_BV = 0 included — XRSTOR reads every component of RFBM.
//!
//! AMX tile data restores only with Linux's permission: the sandbox child requests it
//! (ARCH_REQ_XCOMP_PERM); TILECFG is restored as all zeros (its init value, valid).
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use xstate::hw::sandbox::{xrstor_fenced, Outcome};
use xstate::hw::Host;
use xstate::validate::{required_size, validate_with_layout, Profile, RestoreConfig};

fn restores(host: &Host, img: &[u8], rfbm: u64) -> bool {
    matches!(
        xrstor_fenced(host, img, rfbm).expect("sandbox"),
        Outcome::Restored(_)
    )
}

/// The smallest multiple of 64 (from the full length down) at which the restore succeeds.
fn measured_min(host: &Host, img: &[u8], rfbm: u64) -> usize {
    let mut n = img.len();
    while n > 64 && restores(host, &img[..n - 64], rfbm) {
        n -= 64;
    }
    n
}

#[test]
fn required_size_agrees_with_the_real_xrstor() {
    let host = Host::detect();
    if !host.xsave_usable() {
        println!("skipped: XSAVE is not usable on this CPU/OS");
        return;
    }
    let l = host.layout().clone();
    let xcr0 = host.xcr0();
    let cfg = RestoreConfig::for_layout(&l, xcr0, 0, host.mxcsr_mask());
    // Header masks: nothing, legacy, AVX, the furthest single component, everything.
    let top = 63 - xcr0.leading_zeros() as u64;
    let mut bvs = vec![0u64, 0x3, 0x7 & xcr0, 1 << top, xcr0];
    bvs.dedup();
    let requests = [u64::MAX, 0x7, 0x3];
    let mut cases = 0;
    for compacted in [false, true] {
        if compacted && !host.has_xsavec() {
            println!("skipped (compacted form): no XSAVEC");
            continue;
        }
        let full = if compacted {
            l.compacted(xcr0).unwrap().size
        } else {
            l.standard(xcr0).unwrap().size
        } as usize;
        for &bv in &bvs {
            for &request in &requests {
                let mut img = vec![0u8; full];
                img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
                img[512..520].copy_from_slice(&bv.to_le_bytes());
                if compacted {
                    img[520..528].copy_from_slice(&(xcr0 | 1 << 63).to_le_bytes());
                }
                let mut c = cfg;
                c.request = request;
                let p = if compacted {
                    Profile::XrstorCompacted(c)
                } else {
                    Profile::Xrstor(c)
                };
                let need = required_size(&img, &p, &l).unwrap() as usize;
                assert!(
                    validate_with_layout(&img[..need], &p, &l).is_empty(),
                    "valid at the required size"
                );
                assert!(!validate_with_layout(&img[..need - 1], &p, &l).is_empty());
                let rfbm = xcr0 & request;
                assert!(
                    restores(&host, &img[..need], request),
                    "form compacted={compacted} XSTATE_BV {bv:#x} RFBM {rfbm:#x}: the CPU reads past the {need} bytes the rule requires"
                );
                let min = measured_min(&host, &img, request);
                println!(
                    "compacted={compacted} XSTATE_BV {bv:#x} RFBM {rfbm:#x}: rule {need}, CPU reads {min}"
                );
                // The furthest component the rule counts is loaded from the image: every CPU
                // must read its last byte, so the rule is tight (to the 64-byte granularity).
                let furthest = 63 - u64::from(rfbm.leading_zeros());
                if need > 576 && bv & rfbm & (1 << furthest) != 0 {
                    assert!(
                        !restores(&host, &img[..need - 64], request),
                        "compacted={compacted} XSTATE_BV {bv:#x} RFBM {rfbm:#x}: restores from {} bytes",
                        need - 64
                    );
                }
                cases += 1;
            }
        }
    }
    assert!(cases > 0);
}
