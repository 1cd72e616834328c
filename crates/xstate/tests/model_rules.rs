//! The model on paths this machine cannot run (AMX, XFD, XSAVES/XRSTORS, CET, XSETBV), each
//! test written from DESIGN.md §4-§5 and the SDM section it cites, on a Sapphire-Rapids-like
//! CPU built from its CPUID leaf 0xD.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xstate::components::mask;
use xstate::cpuid::{CpuidDump, Regs};
use xstate::layout::Layout;
use xstate::model::{AlignedBuf, CpuProfile, Exception, ModelCpu, Msr, SimpleInsn};

/// Sapphire Rapids-like: XCR0 may enable 0x602e7 (x87, SSE, AVX, AVX-512, PKRU, AMX),
/// IA32_XSS 0x1900 (PT, CET_U, CET_S); XSAVEOPT, XSAVEC, XGETBV1, XSAVES, XFD. Standard
/// offsets as Intel reports them; TILECFG/TILEDATA 64-byte aligned, TILEDATA XFD-capable.
fn spr() -> CpuidDump {
    let mut d = CpuidDump::new("spr-like");
    // "GenuineIntel"
    d.insert(
        0,
        0,
        Regs {
            eax: 0x20,
            ebx: 0x756e_6547,
            ecx: 0x6c65_746e,
            edx: 0x4965_6e69,
        },
    );
    d.insert(
        1,
        0,
        Regs {
            eax: 0x806f8,
            ebx: 0,
            ecx: (1 << 26) | (1 << 27),
            edx: 1 << 24,
        },
    );
    d.insert(
        0xd,
        0,
        Regs {
            eax: 0x602e7,
            ebx: 0x2b00,
            ecx: 0x2b00,
            edx: 0,
        },
    );
    d.insert(
        0xd,
        1,
        Regs {
            eax: 0x1f,
            ebx: 0x2a00,
            ecx: 0x1900,
            edx: 0,
        },
    );
    let sub = |d: &mut CpuidDump, i: u32, eax: u32, ebx: u32, ecx: u32| {
        d.insert(
            0xd,
            i,
            Regs {
                eax,
                ebx,
                ecx,
                edx: 0,
            },
        )
    };
    sub(&mut d, 2, 256, 576, 0);
    sub(&mut d, 5, 64, 1088, 0);
    sub(&mut d, 6, 512, 1152, 0);
    sub(&mut d, 7, 1024, 1664, 0);
    sub(&mut d, 8, 128, 0, 1);
    sub(&mut d, 9, 8, 2688, 0);
    sub(&mut d, 11, 16, 0, 1);
    sub(&mut d, 12, 24, 0, 1);
    sub(&mut d, 17, 64, 2752, 2);
    sub(&mut d, 18, 8192, 2816, 6);
    d
}

const XCR0: u64 = 0x602e7;

fn cpu() -> ModelCpu {
    let mut c = ModelCpu::new(CpuProfile::from_dump(&spr()));
    c.xsetbv(0, XCR0).expect("valid XCR0");
    c
}

fn q(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

fn compacted_layout(m: u64) -> xstate::layout::FormLayout {
    Layout::from_dump(&spr()).compacted(m).unwrap()
}

#[test]
fn the_spr_layout_matches_design() {
    // DESIGN.md §4: SPR with XCR0 0x602e7: TILECFG 2496, TILEDATA 2560, total 10752.
    let l = compacted_layout(XCR0);
    assert_eq!(l.offset_of(17), Some(2496));
    assert_eq!(l.offset_of(18), Some(2560));
    assert_eq!(l.size, 10752);
}

/// SDM Vol. 2 XSETBV and Vol. 1 §13.3; DESIGN.md §4: every XCR0 rule raises #GP.
#[test]
fn xsetbv_applies_every_xcr0_rule() {
    let mut c = cpu();
    let bad: [(u64, &str); 9] = [
        (0x602e6, "x87_required"),
        (0x602e7 | 1 << 30, "unsupported"),
        (0x602e7 | mask::CET_U, "supervisor_bit"),
        (0x5, "avx_needs_sse"),
        (0x67, "avx512_all_or_none"),
        (0xe3, "avx512_needs_avx"),
        (0x202e7, "amx_pair"),
        (0x402e7, "amx_pair"),
        (0x2e7 | 1 << 19, "unsupported"),
    ];
    for (v, rule) in bad {
        let f = c.xsetbv(0, v).unwrap_err();
        assert_eq!(f.exception, Exception::Gp, "{v:#x}");
        assert!(f.detail.contains(rule), "{v:#x}: {f}");
        assert_eq!(c.xcr0, XCR0, "a refused XSETBV leaves XCR0 unchanged");
    }
    for ok in [0x3u64, 0x7, 0xe7, 0x2e7, 0x602e7, 0x1] {
        c.xsetbv(0, ok).unwrap();
        assert_eq!(c.xgetbv(0).unwrap(), ok);
    }
    // MPX pair and APX-with-MPX on a CPU that has them (a synthetic profile).
    let mut d = spr();
    d.insert(
        0xd,
        0,
        Regs {
            eax: 0x8021f,
            ebx: 0,
            ecx: 0,
            edx: 0,
        },
    );
    d.insert(
        0xd,
        3,
        Regs {
            eax: 64,
            ebx: 960,
            ecx: 0,
            edx: 0,
        },
    );
    d.insert(
        0xd,
        4,
        Regs {
            eax: 64,
            ebx: 1024,
            ecx: 0,
            edx: 0,
        },
    );
    d.insert(
        0xd,
        19,
        Regs {
            eax: 128,
            ebx: 960,
            ecx: 0,
            edx: 0,
        },
    );
    let mut m = ModelCpu::new(CpuProfile::from_dump(&d));
    assert!(m.xsetbv(0, 0xf).unwrap_err().detail.contains("mpx_pair"));
    assert!(m
        .xsetbv(0, 0x8001f)
        .unwrap_err()
        .detail
        .contains("apx_with_mpx"));
    m.xsetbv(0, 0x1f).unwrap();
    m.xsetbv(0, 0x80007).unwrap();
    // Privilege, ECX and CR4.OSXSAVE (SDM Vol. 2 XSETBV exceptions).
    c.cpl = 3;
    assert_eq!(c.xsetbv(0, 3).unwrap_err().exception, Exception::Gp);
    c.cpl = 0;
    assert_eq!(c.xsetbv(1, 3).unwrap_err().exception, Exception::Gp);
    c.cr4_osxsave = false;
    assert_eq!(c.xsetbv(0, 3).unwrap_err().exception, Exception::Ud);
    assert_eq!(c.xgetbv(0).unwrap_err().exception, Exception::Ud);
}

/// SDM Vol. 1 §13.6 and Vol. 2 XGETBV: XGETBV(1) = XCR0 & XINUSE, bit 1 when MXCSR ≠ 1F80H.
#[test]
fn xgetbv1_reports_mxcsr_in_bit_1() {
    let mut c = cpu();
    assert_eq!(c.xgetbv(1).unwrap(), 0);
    c.exec(SimpleInsn::Ldmxcsr(0x1fc0)).unwrap();
    assert_eq!(c.xgetbv(1).unwrap(), mask::SSE);
    // XSAVE's XSTATE_BV[1] is XINUSE[1] (§13.7). On this Intel profile LDMXCSR puts SSE in
    // use (measured on an Intel Xeon, family 6 model 0xA7: `CpuProfile::ldmxcsr_writes_sse`);
    // where it does not (Zen 5), XINUSE[1] covers the XMM registers only.
    let mut m = AlignedBuf::new(11008);
    c.xsave(&mut m, 0, u64::MAX).unwrap();
    assert!(c.profile().ldmxcsr_writes_sse);
    assert_eq!(q(&m, 512) & mask::SSE, mask::SSE);
    let mut p = CpuProfile::from_dump(&spr());
    p.ldmxcsr_writes_sse = false;
    let mut z = ModelCpu::new(p);
    z.xsetbv(0, XCR0).unwrap();
    z.exec(SimpleInsn::Ldmxcsr(0x1fc0)).unwrap();
    assert_eq!(z.xgetbv(1).unwrap(), mask::SSE);
    let mut m = AlignedBuf::new(11008);
    z.xsave(&mut m, 0, u64::MAX).unwrap();
    assert_eq!(q(&m, 512) & mask::SSE, 0);
    assert_eq!(c.xgetbv(2).unwrap_err().exception, Exception::Gp);
}

/// DESIGN.md §5, SDM Vol. 1 §13.10: XSAVEC with RFBM[1] = 1 and MXCSR ≠ 1F80H writes the
/// whole SSE component and sets XSTATE_BV[1] even when XINUSE[1] = 0; XCOMP_BV = RFBM | bit 63;
/// only XSTATE_BV and XCOMP_BV of the header are written.
#[test]
fn xsavec_mxcsr_rule_and_header() {
    let mut c = cpu();
    c.exec(SimpleInsn::Ldmxcsr(0x1fc0)).unwrap();
    let mut m = AlignedBuf::new(10752);
    m.fill(0xcc);
    c.xsavec(&mut m, 0, 0x3).unwrap();
    assert_eq!(q(&m, 512), mask::SSE);
    assert_eq!(q(&m, 520), 0x3 | mask::COMPACTED);
    assert_eq!(u32::from_le_bytes([m[24], m[25], m[26], m[27]]), 0x1fc0);
    assert!(m[160..416].iter().all(|&b| b == 0), "XMM written (zeros)");
    assert!(
        m[0..24].iter().all(|&b| b == 0xcc),
        "x87 not in use: not written"
    );
    assert!(
        m[528..576].iter().all(|&b| b == 0xcc),
        "reserved header bytes untouched"
    );
    assert!(m[416..512].iter().all(|&b| b == 0xcc));
}

fn load_tiles(c: &mut ModelCpu) {
    let mut cfg = [0u8; 64];
    cfg[0] = 1; // palette 1
    assert!(c.set_component(17, &cfg));
    assert!(c.set_component(18, &[0x5a; 8192]));
    assert_eq!(c.xinuse() & mask::AMX, mask::AMX);
}

/// The Linux KVM amx_test scenario (DESIGN.md §5, SDM Vol. 1 §13.10 and §13.14): after
/// TILERELEASE, XSAVEC clears XSTATE_BV[18] but keeps XCOMP_BV[18] — with XFD armed or not.
#[test]
fn amx_tilerelease_then_xsavec_keeps_xcomp_bv_18() {
    for arm in [false, true] {
        let mut c = cpu();
        load_tiles(&mut c);
        c.exec(SimpleInsn::Tilerelease).unwrap();
        assert_eq!(
            c.xinuse() & mask::AMX,
            0,
            "TILERELEASE puts both AMX components in init"
        );
        if arm {
            c.wrmsr(Msr::Xfd, mask::XTILEDATA).unwrap();
        }
        let mut m = AlignedBuf::new(10752);
        m.fill(0xee);
        c.xsavec(&mut m, 0, u64::MAX).unwrap();
        assert_eq!(
            q(&m, 512) & mask::XTILEDATA,
            0,
            "XSTATE_BV[18] clear (arm={arm})"
        );
        assert_ne!(
            q(&m, 520) & mask::XTILEDATA,
            0,
            "XCOMP_BV[18] set (arm={arm})"
        );
        assert_eq!(q(&m, 520), XCR0 | mask::COMPACTED);
        // Not written: the tile data area keeps its old bytes (init optimization).
        assert!(m[2560..2560 + 8192].iter().all(|&b| b == 0xee));
    }
}

/// SDM Vol. 1 §13.14: with XFD armed, saves treat TILEDATA as not in use even when it holds
/// data; XSAVE writes its init value (zeros) and XSTATE_BV[18] = 0.
#[test]
fn xfd_armed_saves_treat_the_component_as_not_in_use() {
    let mut c = cpu();
    load_tiles(&mut c);
    c.wrmsr(Msr::Xfd, mask::XTILEDATA).unwrap();
    let mut m = AlignedBuf::new(11008);
    m.fill(0x11);
    c.xsave(&mut m, 0, u64::MAX).unwrap();
    assert_eq!(q(&m, 512) & mask::AMX, mask::XTILECFG);
    assert!(m[2816..2816 + 8192].iter().all(|&b| b == 0));
    let mut k = AlignedBuf::new(10752);
    c.xsavec(&mut k, 0, u64::MAX).unwrap();
    assert_eq!(q(&k, 512) & mask::AMX, mask::XTILECFG);
    // Disarmed: the data is there again.
    c.wrmsr(Msr::Xfd, 0).unwrap();
    c.xsavec(&mut k, 0, u64::MAX).unwrap();
    assert_eq!(q(&k, 512) & mask::AMX, mask::AMX);
    assert!(k[2560..2560 + 8192].iter().all(|&b| b == 0x5a));
}

/// SDM Vol. 1 §13.14 (DESIGN.md §5, §8 "XSTATE_BV bit set while XFD arms it"): restoring
/// tile data with XFD armed raises #NM and records the bit in IA32_XFD_ERR; nothing changes.
/// With XSTATE_BV[18] = 0 the same restore succeeds (initializing is allowed).
#[test]
fn xfd_armed_restore_of_tile_data_raises_nm_and_sets_xfd_err() {
    let mut c = cpu();
    load_tiles(&mut c);
    let mut img = AlignedBuf::new(10752);
    c.xsavec(&mut img, 0, u64::MAX).unwrap();
    c.wrmsr(Msr::Xfd, mask::XTILEDATA).unwrap();
    assert_eq!(c.rdmsr(Msr::XfdErr).unwrap(), 0);
    let before = c.state_image();
    let f = c.xrstor(&img, 0, u64::MAX).unwrap_err();
    assert_eq!(f.exception, Exception::Nm, "{f}");
    assert_eq!(c.rdmsr(Msr::XfdErr).unwrap(), mask::XTILEDATA);
    assert_eq!(
        c.state_image(),
        before,
        "a faulting restore changes no register"
    );
    // RFBM without TILEDATA: no #NM.
    c.wrmsr(Msr::XfdErr, 0).unwrap();
    c.xrstor(&img, 0, !mask::XTILEDATA).unwrap();
    assert_eq!(c.rdmsr(Msr::XfdErr).unwrap(), 0);
    // XSTATE_BV[18] = 0: initializes tile data, allowed while armed.
    let bv = q(&img, 512) & !mask::XTILEDATA;
    img[512..520].copy_from_slice(&bv.to_le_bytes());
    c.xrstor(&img, 0, u64::MAX).unwrap();
    assert_eq!(c.xinuse() & mask::XTILEDATA, 0);
    // TILERELEASE while armed is an AMX instruction under XFD: #NM too.
    let f = c.exec(SimpleInsn::Tilerelease).unwrap_err();
    assert_eq!(f.exception, Exception::Nm);
}

/// SDM Vol. 1 §13.14 / Vol. 4 IA32_XFD: only XFD-capable components may be armed.
#[test]
fn xfd_msrs_accept_only_xfd_capable_bits() {
    let mut c = cpu();
    assert_eq!(
        c.wrmsr(Msr::Xfd, mask::XTILECFG).unwrap_err().exception,
        Exception::Gp
    );
    assert_eq!(
        c.wrmsr(Msr::Xfd, mask::AVX).unwrap_err().exception,
        Exception::Gp
    );
    c.wrmsr(Msr::Xfd, mask::XTILEDATA).unwrap();
    c.cpl = 3;
    assert_eq!(c.rdmsr(Msr::Xfd).unwrap_err().exception, Exception::Gp);
    // A CPU without XFD (this project's Zen 5 profile) has no such MSR.
    let mut d = spr();
    d.insert(
        0xd,
        1,
        Regs {
            eax: 0xf,
            ebx: 0,
            ecx: 0x1900,
            edx: 0,
        },
    );
    let mut z = ModelCpu::new(CpuProfile::from_dump(&d));
    assert_eq!(z.wrmsr(Msr::Xfd, 0).unwrap_err().exception, Exception::Gp);
}

fn cet_cpu() -> ModelCpu {
    let mut c = cpu();
    c.wrmsr(Msr::Xss, mask::CET_U | mask::CET_S).unwrap();
    c
}

/// SDM Vol. 1 §13.11-13.12: XSAVES/XRSTORS save and restore supervisor components (CET) in
/// the compacted form; CPL > 0 raises #GP.
#[test]
fn xsaves_xrstors_round_trip_cet_state() {
    let mut c = cet_cpu();
    let mut cet_u = [0u8; 16];
    cet_u[0] = 1; // SH_STK_EN
    cet_u[8..16].copy_from_slice(&0x7fff_ffff_f000u64.to_le_bytes()); // PL3_SSP
    assert!(c.set_component(11, &cet_u));
    let rfbm = XCR0 | mask::CET_U | mask::CET_S;
    let l = compacted_layout(rfbm);
    let mut m = AlignedBuf::new(l.size as usize);
    c.xsaves(&mut m, 0, u64::MAX).unwrap();
    assert_eq!(q(&m, 520), rfbm | mask::COMPACTED);
    assert_eq!(q(&m, 512), mask::CET_U, "only CET_U in use");
    let o = l.offset_of(11).unwrap() as usize;
    assert_eq!(&m[o..o + 16], &cet_u);
    // Restore into a fresh CPU.
    let mut d = cet_cpu();
    d.xrstors(&m, 0x4000, u64::MAX).unwrap();
    assert_eq!(d.component(11).unwrap(), &cet_u);
    assert_eq!(d.xinuse() & (mask::CET_U | mask::CET_S), mask::CET_U);
    // CPL 3.
    d.cpl = 3;
    assert_eq!(
        d.xsaves(&mut m, 0, u64::MAX).unwrap_err().exception,
        Exception::Gp
    );
    assert_eq!(
        d.xrstors(&m, 0, u64::MAX).unwrap_err().exception,
        Exception::Gp
    );
    // XSAVE/XSAVEC never see supervisor state: RFBM = EDX:EAX & XCR0.
    d.cpl = 0;
    let mut k = AlignedBuf::new(10752);
    d.xsavec(&mut k, 0, u64::MAX).unwrap();
    assert_eq!(q(&k, 520), XCR0 | mask::COMPACTED);
    // A standard XRSTOR of an image with a supervisor bit in XSTATE_BV: #GP (§13.8.1).
    let mut s = AlignedBuf::new(11008);
    s[0] = 0x7f;
    s[1] = 0x03;
    s[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    s[512..520].copy_from_slice(&mask::CET_U.to_le_bytes());
    assert_eq!(
        d.xrstor(&s, 0, u64::MAX).unwrap_err().exception,
        Exception::Gp
    );
}

/// SDM Vol. 1 §13.12 and DESIGN.md §5: the #GP rules of XRSTORS.
#[test]
fn xrstors_faults() {
    let mut c = cet_cpu();
    let rfbm = XCR0 | mask::CET_U | mask::CET_S;
    let size = compacted_layout(rfbm).size as usize;
    let mut good = AlignedBuf::new(size);
    c.xsaves(&mut good, 0, u64::MAX).unwrap();
    let gp = |c: &mut ModelCpu, m: &[u8], why: &str| {
        let f = c.xrstors(m, 0, u64::MAX).unwrap_err();
        assert_eq!(f.exception, Exception::Gp, "{why}: {f}");
    };
    let mut m = good.clone();
    m[527] = 0; // XCOMP_BV[63] clear
    gp(&mut c, &m, "standard form");
    let mut m = good.clone();
    m[521] |= 1; // XCOMP_BV bit 8 (PT), not in XCR0 | IA32_XSS
    gp(&mut c, &m, "XCOMP_BV outside XCR0|XSS");
    let mut m = good.clone();
    m[512..520].copy_from_slice(&(mask::CET_U | mask::PKRU | 1 << 13).to_le_bytes());
    gp(&mut c, &m, "XSTATE_BV outside XCOMP_BV");
    let mut m = good.clone();
    m[560] = 1;
    gp(&mut c, &m, "reserved header byte");
    // Invalid supervisor values (CET, SDM Vol. 1 ch. 17): non-canonical / misaligned SSP and
    // reserved IA32_U_CET bits.
    let l = compacted_layout(rfbm);
    let o = l.offset_of(11).unwrap() as usize;
    for (off, val) in [(0usize, 0x40u64), (8, 0x8000_0000_0000u64), (8, 0x1001)] {
        let mut m = good.clone();
        let bv = q(&m, 512) | mask::CET_U;
        m[512..520].copy_from_slice(&bv.to_le_bytes());
        m[o..o + 16].fill(0);
        m[o + off..o + off + 8].copy_from_slice(&val.to_le_bytes());
        gp(&mut c, &m, "invalid CET_U");
    }
    let s = l.offset_of(12).unwrap() as usize;
    let mut m = good.clone();
    let bv = q(&m, 512) | mask::CET_S;
    m[512..520].copy_from_slice(&bv.to_le_bytes());
    m[s + 8..s + 16].copy_from_slice(&0x2u64.to_le_bytes());
    gp(&mut c, &m, "misaligned PL1_SSP");
    // The good image restores; a CPU without XSAVES raises #UD.
    c.xrstors(&good, 0, u64::MAX).unwrap();
    let mut d = spr();
    d.insert(
        0xd,
        1,
        Regs {
            eax: 0x7,
            ebx: 0,
            ecx: 0,
            edx: 0,
        },
    );
    let mut n = ModelCpu::new(CpuProfile::from_dump(&d));
    assert_eq!(
        n.xrstors(&good, 0, u64::MAX).unwrap_err().exception,
        Exception::Ud
    );
    assert_eq!(n.wrmsr(Msr::Xss, 0).unwrap_err().exception, Exception::Gp);
}

/// SDM Vol. 1 §13.11 and §13.6: XSAVES uses the modified optimization when XRSTOR_INFO
/// matches (CPL, VMX non-root, address, RFBM | bit 63): unmodified components are not written.
#[test]
fn xsaves_modified_optimization() {
    let mut c = cet_cpu();
    load_tiles(&mut c);
    let l = compacted_layout(XCR0 | mask::CET_U | mask::CET_S);
    let mut a = AlignedBuf::new(l.size as usize);
    c.xsaves(&mut a, 0x10000, u64::MAX).unwrap();
    c.xrstors(&a, 0x10000, u64::MAX).unwrap();
    let tiles = l.offset_of(18).unwrap() as usize;
    a[tiles] = 0x99; // memory changed behind the CPU's back
    c.xsaves(&mut a, 0x10000, u64::MAX).unwrap();
    assert_eq!(
        a[tiles], 0x99,
        "unmodified since XRSTORS from this address: skipped"
    );
    // A different address, or a modified component: written.
    let mut b = a.clone();
    c.xsaves(&mut b, 0x20000, u64::MAX).unwrap();
    assert_eq!(b[tiles], 0x5a);
    c.set_component(18, &[0x77; 8192]);
    c.xsaves(&mut a, 0x10000, u64::MAX).unwrap();
    assert_eq!(a[tiles], 0x77);
    // XSAVEC never uses the modified optimization (§13.10).
    c.xrstors(&a, 0x10000, u64::MAX).unwrap();
    a[tiles] = 0x42;
    let mut k = AlignedBuf::new(l.size as usize);
    k.copy_from_slice(&a);
    c.xsavec(&mut k, 0x10000, u64::MAX).unwrap();
    let lc = compacted_layout(XCR0);
    assert_eq!(k[lc.offset_of(18).unwrap() as usize], 0x77);
}

/// SDM Vol. 1 §13.7-13.12, Vol. 2 exceptions: CR0.TS → #NM; misalignment → #GP; CR4.OSXSAVE
/// clear → #UD; a buffer too short → the model's #PF; no fault changes memory.
#[test]
fn common_faults_leave_memory_unchanged() {
    let mut c = cpu();
    load_tiles(&mut c);
    let mut m = AlignedBuf::new(11008);
    m.fill(0x3c);
    let snapshot = m.to_vec();
    c.cr0_ts = true;
    assert_eq!(
        c.xsave(&mut m, 0, u64::MAX).unwrap_err().exception,
        Exception::Nm
    );
    assert_eq!(c.fxsave(&mut m, 0).unwrap_err().exception, Exception::Nm);
    assert_eq!(
        c.xrstor(&m, 0, u64::MAX).unwrap_err().exception,
        Exception::Nm
    );
    c.cr0_ts = false;
    assert_eq!(
        c.xsavec(&mut m, 32, u64::MAX).unwrap_err().exception,
        Exception::Gp
    );
    assert_eq!(c.fxsave(&mut m, 8).unwrap_err().exception, Exception::Gp);
    c.fxsave(&mut m[..512], 16)
        .unwrap_or_else(|f| panic!("{f}"));
    m.copy_from_slice(&snapshot);
    assert_eq!(
        c.xsave(&mut m[..4096], 0, u64::MAX).unwrap_err().exception,
        Exception::Pf
    );
    assert_eq!(&m[..], &snapshot[..]);
    c.cr4_osxsave = false;
    assert_eq!(
        c.xsave(&mut m, 0, u64::MAX).unwrap_err().exception,
        Exception::Ud
    );
    assert_eq!(&m[..], &snapshot[..]);
}

/// SDM Vol. 1 §13.8.1-13.8.2 (DESIGN.md §5): standard XRSTOR loads MXCSR when RFBM[1] or
/// RFBM[2]; compacted XRSTOR loads it only with XSTATE_BV[1] and sets 1F80H when SSE is
/// initialized; init first, then load.
#[test]
fn mxcsr_rules_of_the_two_forms() {
    let mut c = cpu();
    let mut s = AlignedBuf::new(11008);
    s[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    s[24..28].copy_from_slice(&0x1fc0u32.to_le_bytes());
    c.xrstor(&s, 0, mask::AVX).unwrap();
    assert_eq!(
        c.mxcsr(),
        0x1fc0,
        "standard form, RFBM[2] only: MXCSR loaded"
    );
    c.xrstor(&s, 0, mask::X87).unwrap();
    assert_eq!(c.mxcsr(), 0x1fc0);
    s[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    c.xrstor(&s, 0, mask::X87).unwrap();
    assert_eq!(c.mxcsr(), 0x1fc0, "RFBM without SSE/AVX: MXCSR untouched");
    // Compacted, SSE initialized: MXCSR := 1F80H whatever bytes 24..27 say.
    let mut k = AlignedBuf::new(10752);
    k[24..28].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
    k[520..528].copy_from_slice(&(mask::SSE | mask::COMPACTED).to_le_bytes());
    c.xrstor(&k, 0, u64::MAX).unwrap();
    assert_eq!(c.mxcsr(), 0x1f80);
    // Bad MXCSR loaded: #GP in both forms.
    k[512..520].copy_from_slice(&mask::SSE.to_le_bytes());
    assert_eq!(
        c.xrstor(&k, 0, u64::MAX).unwrap_err().exception,
        Exception::Gp
    );
    s[24..28].copy_from_slice(&0x1_0000u32.to_le_bytes());
    assert_eq!(
        c.xrstor(&s, 0, mask::SSE).unwrap_err().exception,
        Exception::Gp
    );
}

/// No input makes the model panic: random images, addresses, masks and controls through
/// every instruction (DEVELOPERS.md: no panics on any input).
#[test]
fn no_panics_on_random_input() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut c = cet_cpu();
    let mut ok = 0;
    for _ in 0..3000 {
        let len = rng.gen_range(0..12000);
        let mut m = vec![0u8; len];
        rng.fill(&mut m[..]);
        if len >= 576 && rng.gen_bool(0.5) {
            let bv: u64 = rng.gen::<u64>() & (XCR0 | 0x1900 | 1 << 63);
            m[512..520].copy_from_slice(&bv.to_le_bytes());
            let xc = if rng.gen_bool(0.5) {
                bv | mask::COMPACTED
            } else {
                0
            };
            m[520..528].copy_from_slice(&xc.to_le_bytes());
            m[528..576].fill(0);
        }
        let addr = if rng.gen_bool(0.8) {
            rng.gen::<u64>() & !63
        } else {
            rng.gen()
        };
        let rfbm = rng.gen::<u64>();
        c.cpl = if rng.gen_bool(0.8) { 0 } else { 3 };
        c.xfd = if rng.gen_bool(0.3) {
            mask::XTILEDATA
        } else {
            0
        };
        let r = match rng.gen_range(0..9) {
            0 => c.xsave(&mut m, addr, rfbm),
            1 => c.xsaveopt(&mut m, addr, rfbm),
            2 => c.xsavec(&mut m, addr, rfbm),
            3 => c.xsaves(&mut m, addr, rfbm),
            4 => c.xrstor(&m, addr, rfbm),
            5 => c.xrstors(&m, addr, rfbm),
            6 => c.fxsave(&mut m, addr),
            7 => c.fxrstor(&m, addr),
            _ => c.xsetbv(rng.gen_range(0..2), rng.gen()),
        };
        ok += usize::from(r.is_ok());
        let _ = c.xgetbv(rng.gen_range(0..3));
        let _ = c.load_state(
            &m,
            if rng.gen_bool(0.5) {
                Some(rng.gen())
            } else {
                None
            },
        );
    }
    println!("random instructions: {ok} of 3000 completed, the rest faulted as values");
}
