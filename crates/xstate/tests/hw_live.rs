//! The user-mode backend on live registers ([`HwBackend`]) on this CPU: each call is the one
//! instruction asked for (the modified optimization of XSAVEOPT is observable across calls,
//! which a backend restoring a hidden image before each instruction makes impossible),
//! register contents survive from a restore to the next save, nothing is allocated per call,
//! and the O(1) checks refuse what the instruction or the thread afterwards would fault on.
//! Skipped with a printed reason where XSAVE, XSAVEOPT or AVX-512 is missing.

#![cfg(target_arch = "x86_64")]

use xstate::components::mask;
use xstate::hw::{CheckedHwBackend, HwBackend};
use xstate::image::XsaveImage;
use xstate::model::{AlignedBuf, Backend, Exception, RestoreInsn, SaveInsn};

#[path = "common/alloc_count.rs"]
mod alloc_count;
use alloc_count::allocs;

fn backend() -> Option<HwBackend> {
    let hw = HwBackend::new();
    if hw.is_none() {
        println!("skipped: XSAVE is not usable on this CPU");
    }
    hw
}

/// A standard image of XCR0 without AMX with opmask and ZMM_Hi256 holding a pattern (the
/// registers compiled code of this test does not use), x87 and SSE in init state.
fn patterned(hw: &HwBackend, seed: u8) -> Option<(XsaveImage, u64)> {
    let xcr0 = hw.profile().layout.xcr0_supported() & hw.host().xcr0() & !mask::AMX;
    if xcr0 & mask::AVX512 != mask::AVX512 {
        println!("skipped: AVX-512 is not enabled on this CPU");
        return None;
    }
    let l = &hw.profile().layout;
    let mut img = XsaveImage::new(&l.standard(xcr0).ok()?);
    for i in 0..8 {
        img.set_k(i, 0x0101_0101_0101_0101 * u64::from(seed) + i as u64)
            .ok()?;
    }
    for i in 0..16 {
        img.set_zmm_hi256(i, &[seed ^ i as u8; 32]).ok()?;
    }
    Some((img, xcr0))
}

/// XRSTOR then XSAVE on the live registers: opmask and ZMM_Hi256 come back as loaded, in
/// both forms (the XSAVEC image restored and saved again). Buffers are allocated first: the
/// C library's string functions use opmask and vector registers, so between a restore and
/// the save that checks it this test runs no code but the backend's.
#[test]
fn restore_then_save_round_trips_through_the_registers() {
    let Some(mut hw) = backend() else { return };
    let Some((img, xcr0)) = patterned(&hw, 0x5a) else {
        return;
    };
    let xsavec = hw.host().has_xsavec();
    let n = hw.profile().layout.compacted(xcr0).unwrap().size as usize;
    let src = AlignedBuf::from_bytes(img.as_bytes());
    let mut out = AlignedBuf::new(src.len());
    let mut c = AlignedBuf::new(n);
    let mut again = AlignedBuf::new(n);
    hw.restore(RestoreInsn::Xrstor, &src, xcr0).unwrap();
    hw.save(SaveInsn::Xsave, &mut out, xcr0).unwrap();
    if xsavec {
        hw.restore(RestoreInsn::Xrstor, &src, xcr0).unwrap();
        hw.save(SaveInsn::Xsavec, &mut c, xcr0).unwrap();
        hw.restore(RestoreInsn::Xrstor, &c, xcr0).unwrap();
        hw.save(SaveInsn::Xsavec, &mut again, xcr0).unwrap();
    }
    let l = &hw.profile().layout;
    let got = XsaveImage::from_bytes(&out, l).unwrap();
    for i in 0..8 {
        assert_eq!(got.k(i).unwrap(), img.k(i).unwrap(), "k{i}");
    }
    for i in 0..16 {
        assert_eq!(
            got.zmm_hi256(i).unwrap(),
            img.zmm_hi256(i).unwrap(),
            "zmm{i}"
        );
    }
    assert_eq!(got.xstate_bv() & 0x60, 0x60);
    if !xsavec {
        return println!("skipped: compacted half (no XSAVEC)");
    }
    let (a, b) = (
        XsaveImage::from_bytes(&c, l).unwrap(),
        XsaveImage::from_bytes(&again, l).unwrap(),
    );
    assert_eq!(a.xcomp_bv(), xcr0 | mask::COMPACTED);
    for i in 0..8 {
        assert_eq!(a.k(i).unwrap(), img.k(i).unwrap(), "compacted k{i}");
        assert_eq!(b.k(i).unwrap(), img.k(i).unwrap(), "compacted again k{i}");
    }
    for i in 0..16 {
        assert_eq!(a.zmm_hi256(i).unwrap(), img.zmm_hi256(i).unwrap());
        assert_eq!(b.zmm_hi256(i).unwrap(), img.zmm_hi256(i).unwrap());
    }
}

/// SDM §13.9: XSAVEOPT after an XRSTOR from the same address skips components not modified
/// since. On live registers the bytes written into the image between the two calls survive
/// (observed at least once in a few tries: a context switch of this thread in between
/// legitimately defeats the optimization); on the checked backend, whose every call first
/// restores its context image from another address, they never do.
#[test]
fn xsaveopt_modified_optimization_is_visible_across_calls() {
    let Some(mut hw) = backend() else { return };
    if !hw.host().has_xsaveopt() {
        return println!("skipped: no XSAVEOPT");
    }
    let Some((img, xcr0)) = patterned(&hw, 0x33) else {
        return;
    };
    let k0 = hw
        .profile()
        .layout
        .standard(xcr0)
        .unwrap()
        .offset_of(5)
        .unwrap() as usize;
    let try_once = |b: &mut dyn Backend| {
        let mut a = AlignedBuf::from_bytes(img.as_bytes());
        b.restore(RestoreInsn::Xrstor, &a, xcr0).unwrap();
        a[k0] = 0xee;
        b.save(SaveInsn::Xsaveopt, &mut a, xcr0).unwrap();
        a[k0] == 0xee
    };
    let live = (0..50).filter(|_| try_once(&mut hw)).count();
    println!("live backend: XSAVEOPT skipped the unmodified opmask in {live} of 50 tries");
    assert!(
        live > 0,
        "XSAVEOPT never saw its own XRSTOR: a hidden instruction ran between"
    );
    if let Some(mut checked) = CheckedHwBackend::new() {
        let c = (0..10).filter(|_| try_once(&mut checked)).count();
        assert_eq!(
            c, 0,
            "the checked backend restores its context image before each call"
        );
    }
}

/// Steady state allocates nothing: 1000 XSAVEC + XRSTOR pairs on the same buffers.
#[test]
fn save_and_restore_allocate_nothing() {
    let Some(mut hw) = backend() else { return };
    if !hw.host().has_xsavec() {
        return println!("skipped: no XSAVEC");
    }
    let xcr0 = hw.host().xcr0() & !mask::AMX;
    let n = hw.profile().layout.compacted(xcr0).unwrap().size as usize;
    let mut a = AlignedBuf::new(n.max(576));
    hw.save(SaveInsn::Xsavec, &mut a, xcr0).unwrap();
    let before = allocs();
    for _ in 0..1000 {
        hw.restore(RestoreInsn::Xrstor, &a, xcr0).unwrap();
        hw.save(SaveInsn::Xsavec, &mut a, xcr0).unwrap();
    }
    let allocs = allocs() - before;
    assert_eq!(allocs, 0, "{allocs} allocations in 1000 cycles");
}

/// The O(1) checks: each refused image is refused with the exception the rule names.
#[test]
fn refusals() {
    let Some(mut hw) = backend() else { return };
    let Some((img, xcr0)) = patterned(&hw, 0x77) else {
        return;
    };
    let good = AlignedBuf::from_bytes(img.as_bytes());
    hw.restore(RestoreInsn::Xrstor, &good, xcr0).unwrap();
    type Patch = Box<dyn Fn(&mut AlignedBuf)>;
    let cases: Vec<(&str, Patch, Exception)> = vec![
        (
            "XSTATE_BV bit 63",
            Box::new(|b| b[519] = 0x80),
            Exception::Gp,
        ),
        (
            "reserved header byte",
            Box::new(|b| b[530] = 1),
            Exception::Gp,
        ),
        (
            "MXCSR reserved bit",
            Box::new(|b| b[26] = 0xff),
            Exception::Gp,
        ),
        (
            "unmasked SSE exception",
            Box::new(|b| b[24..28].copy_from_slice(&0x1f00u32.to_le_bytes())),
            Exception::Refused,
        ),
        (
            "pending unmasked x87 exception",
            Box::new(|b| {
                b[512] |= 1;
                b[0..2].copy_from_slice(&0x37eu16.to_le_bytes());
                b[2..4].copy_from_slice(&0x0081u16.to_le_bytes());
            }),
            Exception::Refused,
        ),
    ];
    for (what, f, ex) in cases {
        let mut b = good.clone();
        f(&mut b);
        let e = hw.restore(RestoreInsn::Xrstor, &b, xcr0).unwrap_err();
        assert_eq!(e.exception, ex, "{what}: {e}");
    }
    // Operand errors.
    let short = &good[..good.len() - 1];
    assert_eq!(
        hw.restore(RestoreInsn::Xrstor, short, xcr0)
            .unwrap_err()
            .exception,
        Exception::Pf
    );
    let mut big = AlignedBuf::new(good.len() + 64);
    assert_eq!(
        hw.save(SaveInsn::Xsave, &mut big[8..], xcr0)
            .unwrap_err()
            .exception,
        Exception::Gp
    );
    assert_eq!(
        hw.save(SaveInsn::Xsaves, &mut big, xcr0)
            .unwrap_err()
            .exception,
        Exception::Gp
    );
    // TILEDATA without permission for it (this test binary never requests it).
    let all = hw.host().xcr0();
    if all & (1 << 18) != 0 && hw.host().has_xfd() && hw.host().has_xsavec() {
        let l = &hw.profile().layout;
        let g = l.compacted(all).unwrap();
        let mut t = XsaveImage::new(&g);
        t.set_xstate_bv(1 << 18);
        let tb = AlignedBuf::from_bytes(t.as_bytes());
        let e = hw.restore(RestoreInsn::Xrstor, &tb, all).unwrap_err();
        assert_eq!(e.exception, Exception::Refused, "{e}");
    } else {
        println!("skipped: TILEDATA refusal (no AMX/XFD here)");
    }
}

/// The guard has no TILECFG rule because the CPU has none: XRSTOR of TILECFG holding an
/// invalid configuration (palette 0xFF, a reserved byte set, 200 rows, 0xFFFF bytes per row)
/// does not fault on this CPU. Run through `HwBackend` in a forked child that first requests
/// AMX permission (the permission is per process and cannot be dropped, so the test's own
/// process never asks); the child exits 0 when every restore returned Ok and nothing trapped.
#[test]
fn xrstor_of_any_tilecfg_bytes_does_not_fault() {
    let Some(hw) = backend() else { return };
    if hw.host().xcr0() & mask::AMX != mask::AMX || !hw.host().has_xsavec() {
        return println!("skipped: no AMX in XCR0 on this CPU");
    }
    let mut valid = [0u8; 64];
    valid[0] = 1;
    for t in 0..8 {
        valid[16 + 2 * t] = 64;
        valid[48 + t] = 16;
    }
    let mut cfgs = vec![valid; 5];
    cfgs[1][0] = 0xff;
    cfgs[2][5] = 1;
    cfgs[3][48] = 200;
    cfgs[4][16..18].copy_from_slice(&[0xff, 0xff]);
    let xcr0 = hw.host().xcr0();
    let g = hw.profile().layout.compacted(xcr0).unwrap();
    let mut imgs = Vec::new();
    for c in &cfgs {
        let mut img = XsaveImage::new(&g);
        img.set_tilecfg(c).unwrap();
        img.set_xstate_bv(1 << 17);
        imgs.push(AlignedBuf::from_bytes(img.as_bytes()));
    }
    // Everything that allocates happens before the fork (the test harness is multi-threaded:
    // a child of a threaded process must not take the allocator's lock).
    let mut b = hw;
    // SAFETY: fork(2) in a test: the child only makes a syscall, runs the restores (which do
    // not allocate when they succeed) and _exit(2)s; the parent waits for it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, 18) with integer arguments.
        let code = if unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) } != 0 {
            10
        } else if imgs
            .iter()
            .all(|i| b.restore(RestoreInsn::Xrstor, i, xcr0).is_ok())
        {
            0
        } else {
            11
        };
        // SAFETY: ends the child without running the parent's test harness.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    assert!(
        libc::WIFEXITED(st),
        "the child was killed by signal {}",
        libc::WTERMSIG(st)
    );
    let code = libc::WEXITSTATUS(st);
    if code == 10 {
        return println!("skipped: the kernel refuses AMX permission");
    }
    assert_eq!(code, 0, "a restore of TILECFG was refused");
}
