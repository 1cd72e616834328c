//! Smoke tests of the hardware wrappers and the sandbox on this CPU.
#![cfg(target_arch = "x86_64")]

use xstate::hw::{AlignedBuf, Host, HwError, Restore, SaveOp, Sequence};

#[test]
fn wrappers_check_preconditions() {
    let host = Host::detect();
    if !host.xsave_usable() {
        println!("skipped: XSAVE not usable");
        return;
    }
    let n = host.standard_size() as usize;
    let mut b = AlignedBuf::new(n + 64);
    host.xsave(&mut b[..n], u64::MAX).unwrap();
    assert!(matches!(
        host.xsave(&mut b[1..n + 1], u64::MAX),
        Err(HwError::Misaligned { .. })
    ));
    assert!(matches!(
        host.xsave(&mut b[..n - 1], u64::MAX),
        Err(HwError::TooSmall { .. })
    ));
    // Restoring what we saved is fine.
    let img = AlignedBuf::from_bytes(&b[..n]);
    host.check_xrstor(&img, u64::MAX).unwrap();
    let mut bad = img.clone();
    bad[520] = 1;
    // XCOMP_BV must be 0 in the standard form: the validate profile's rule, by name.
    match host.xrstor(&bad, u64::MAX) {
        Err(HwError::Violates { violation, .. }) => {
            assert_eq!(violation.rule, xstate::validate::Rule::XcompBvNotZero);
            assert_eq!(violation.offset, 520);
        }
        other => panic!("expected a #GP rule violation, got {other:?}"),
    }
}

#[test]
fn sequence_restore_then_save() {
    let host = Host::detect();
    if !host.xsave_usable() {
        println!("skipped: XSAVE not usable");
        return;
    }
    let n = host.standard_size() as usize;
    let mut src = AlignedBuf::new(n);
    src[0] = 0x7f;
    src[1] = 0x03;
    src[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    src[160] = 0xaa; // XMM0 byte 0
    src[512] = 3; // XSTATE_BV = x87|SSE
    let mut dst = AlignedBuf::new(n);
    let rep = host
        .sequence(Sequence {
            restore: Some(Restore::Xrstor {
                mem: &mut src,
                rfbm: u64::MAX,
            }),
            save: Some((SaveOp::Xsave, &mut dst, u64::MAX)),
            ..Sequence::default()
        })
        .unwrap();
    println!("xinuse {:?} xstate_bv {:#x}", rep.xinuse, dst[512]);
    assert_eq!(dst[160], 0xaa);
}

#[cfg(target_os = "linux")]
#[test]
fn sandbox_faults_and_restores() {
    use xstate::hw::sandbox::{self, Outcome, Signal};
    let host = Host::detect();
    if !host.xsave_usable() {
        println!("skipped: XSAVE not usable");
        return;
    }
    let n = host.standard_size() as usize;
    let mut img = vec![0u8; n];
    img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    img[520] = 1;
    assert_eq!(
        sandbox::xrstor(&host, &img, u64::MAX, 0).unwrap(),
        Outcome::Fault(Signal::Segv)
    );
    img[520] = 0;
    assert_eq!(
        sandbox::xrstor(&host, &img, u64::MAX, 8).unwrap(),
        Outcome::Fault(Signal::Segv)
    );
    img[0] = 0x7f;
    img[1] = 0x03;
    img[512] = 1;
    match sandbox::xrstor(&host, &img, u64::MAX, 0).unwrap() {
        Outcome::Restored(a) => {
            println!("xinuse {:?} xstate_bv {:#x}", a.xinuse, a.image[512]);
            assert_eq!(&a.image[0..2], &[0x7f, 0x03]);
        }
        o => panic!("{o:?}"),
    }
}
