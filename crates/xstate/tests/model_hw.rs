//! Differential tests: the model ([`ModelCpu`] with this machine's [`CpuProfile`]) against the
//! real CPU, byte for byte.
//!
//! * Saves: a random register state is loaded by a standard XRSTOR (RFBM = all ones) of a
//!   random "pre" image, then a random restore under test (standard or compacted, random
//!   RFBM, zero-valued components included so XINUSE takes every reachable value), a random
//!   instruction that changes state the way ordinary code does, optionally a write into the
//!   restored buffer behind XSAVEOPT's back, then XSAVE, XSAVEOPT, XSAVEC or FXSAVE with a
//!   random RFBM into random prior memory (or into the restored buffer itself, where the
//!   modified optimization applies). All of it runs in one `asm!` block
//!   ([`Host::sequence`]); the model runs the same steps at the same addresses. Memory after
//!   and XGETBV(1) must be equal.
//! * Restores: random and mutated images go to a hardware XRSTOR in a forked child
//!   ([`sandbox::xrstor_after`]): it faults exactly when the model faults (#GP ⇔ SIGSEGV),
//!   and otherwise leaves the same register state (XSAVE of everything, XGETBV(1)).
//!
//! `XSTATE_DIFF_CASES` sets the number of save cases (default 15000, about 35 s in a debug
//! build; restores scale along, default 1500); `XSTATE_DIFF_CASES=200000 cargo test --release
//! -p xstate --test model_hw` is the long run.
//! `XSTATE_DIFF_SEED` fixes the seed (printed).
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xstate::components::mask;
use xstate::hw::{sandbox, AlignedBuf, Host, Mid, Restore, SaveOp, Sequence};
use xstate::model::{CpuProfile, Exception, ModelCpu, SimpleInsn};

fn q(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

fn put(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

struct Env {
    host: Host,
    profile: CpuProfile,
    xcr0: u64,
    /// XCR0 less the components these tests never load (see [`not_loaded`]).
    loadable: u64,
    std_size: usize,
    avx: bool,
    avx512: bool,
}

fn env() -> Option<Env> {
    let host = Host::detect();
    if !host.xsave_usable() {
        println!("skipped: XSAVE is not usable on this CPU/OS");
        return None;
    }
    let profile = CpuProfile::host();
    let xcr0 = host.xcr0();
    let loadable = xcr0 & !not_loaded(&host);
    if loadable != xcr0 {
        println!(
            "note: components {:#x} (XFD-capable or AMX) are saved but never loaded here",
            xcr0 & !loadable
        );
    }
    Some(Env {
        loadable,
        std_size: host.standard_size() as usize,
        avx: xcr0 & mask::AVX != 0,
        avx512: xcr0 & mask::AVX512 == mask::AVX512,
        host,
        profile,
        xcr0,
    })
}

/// Components these tests save but never load: those the OS may arm in IA32_XFD (a restore
/// with XSTATE_BV[i] = 1 raises #NM, which Linux turns into SIGILL for a process without the
/// permission: SDM Vol. 1 §13.14) and AMX, whose TILECFG must hold a valid configuration rather
/// than random bytes.
fn not_loaded(host: &Host) -> u64 {
    let amx = host.xcr0() & mask::AMX;
    if !host.has_xfd() {
        return amx;
    }
    xstate::components::bits(host.xcr0())
        .filter(|&id| host.layout().geometry(id).xfd)
        .fold(amx, |m, id| m | 1u64 << id)
}

/// Clears the XSTATE_BV bits of components the tests never load (after a mutation).
fn unload(e: &Env, b: &mut [u8]) {
    let bv = q(b, 512) & !(e.xcr0 & !e.loadable);
    put(b, 512, bv);
}

fn seed() -> u64 {
    std::env::var("XSTATE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// `default` scaled by XSTATE_DIFF_CASES / 15000 (the default number of save cases).
fn scale(default: usize) -> usize {
    std::env::var("XSTATE_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .map(|n| n.max(1).saturating_mul(default) / 15000)
        .unwrap_or(default)
        .max(1)
}

/// Interesting 80-bit x87 values: zeros, one, infinities, QNaN/SNaN, denormals,
/// pseudo-denormals, unnormals, pseudo-infinity/NaN, the largest finite, random bits.
fn st_value(rng: &mut StdRng) -> [u8; 10] {
    let (mant, exp): (u64, u16) = match rng.gen_range(0..12) {
        0 => (0, 0),
        1 => (0, 0x8000),
        2 => (1 << 63, 0x3fff),
        3 => (1 << 63, 0x7fff),
        4 => (1 << 63, 0xffff),
        5 => (0xc000_0000_0000_0000, 0x7fff),
        6 => ((1 << 63) | 1, 0x7fff),
        7 => (rng.gen::<u64>() >> 1, 0),
        8 => ((1 << 63) | rng.gen::<u64>(), 0),
        9 => (rng.gen::<u64>() >> 1, rng.gen_range(1..0x7fff)),
        10 => (rng.gen::<u64>() >> 1, 0x7fff),
        _ => (rng.gen(), rng.gen()),
    };
    let mut r = [0u8; 10];
    r[..8].copy_from_slice(&mant.to_le_bytes());
    r[8..].copy_from_slice(&exp.to_le_bytes());
    r
}

/// Fills the x87 fields (bytes 0..24, 32..160) with random, often special, content.
fn fill_x87(rng: &mut StdRng, b: &mut [u8], init: bool) {
    if init {
        b[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        b[2..24].fill(0);
        for i in 0..8 {
            b[32 + 16 * i..42 + 16 * i].fill(0);
        }
        return;
    }
    let fcw: u16 = match rng.gen_range(0..4) {
        0 => 0x37f,
        1 => 0x37f & !(rng.gen::<u16>() & 0x3f),
        2 => rng.gen::<u16>() & 0x1f3f | 0x40,
        _ => rng.gen(),
    };
    let fsw: u16 = match rng.gen_range(0..3) {
        0 => 0,
        1 => rng.gen::<u16>() & 0x3800,
        _ => rng.gen(),
    };
    b[0..2].copy_from_slice(&fcw.to_le_bytes());
    b[2..4].copy_from_slice(&fsw.to_le_bytes());
    b[4] = rng.gen();
    b[5] = rng.gen();
    let fop: u16 = rng.gen();
    b[6..8].copy_from_slice(&fop.to_le_bytes());
    let ptr = |rng: &mut StdRng| -> u64 {
        match rng.gen_range(0..3) {
            0 => 0,
            1 => rng.gen::<u64>() & 0x0000_7fff_ffff_ffff,
            _ => rng.gen(),
        }
    };
    let fip = ptr(rng);
    let fdp = ptr(rng);
    put(b, 8, fip);
    put(b, 16, fdp);
    for i in 0..8 {
        let v = if rng.gen_bool(0.3) {
            [0u8; 10]
        } else {
            st_value(rng)
        };
        b[32 + 16 * i..42 + 16 * i].copy_from_slice(&v);
        rng.fill(&mut b[42 + 16 * i..48 + 16 * i]);
    }
}

fn random_bytes(rng: &mut StdRng, b: &mut [u8]) {
    match rng.gen_range(0..4) {
        // All zero: loaded with XSTATE_BV = 1 but in init state.
        0 => b.fill(0),
        // Sparse.
        1 => {
            b.fill(0);
            let n = b.len();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..n);
                b[i] = rng.gen();
            }
        }
        _ => rng.fill(b),
    }
}

fn random_mxcsr(rng: &mut StdRng, mask_v: u32) -> u32 {
    match rng.gen_range(0..4) {
        0 => 0x1f80,
        1 => 0x1f80 | (rng.gen::<u32>() & 0x3f),
        _ => rng.gen::<u32>() & mask_v,
    }
}

/// A valid image of `form` (standard when `xcomp` is None, else compacted with that
/// XCOMP_BV[62:0]) with XSTATE_BV `bv`: random content, zero-valued components sometimes.
fn valid_image(e: &Env, rng: &mut StdRng, bv: u64, xcomp: Option<u64>) -> AlignedBuf {
    let layout = match xcomp {
        None => e.profile.layout.standard(e.xcr0).unwrap(),
        Some(c) => e.profile.layout.compacted(c).unwrap(),
    };
    let mut b = AlignedBuf::new((layout.size as usize).max(e.std_size));
    rng.fill(&mut b[..]);
    let init = rng.gen_bool(0.2);
    fill_x87(rng, &mut b, init);
    let m = random_mxcsr(rng, e.profile.mxcsr_mask);
    b[24..28].copy_from_slice(&m.to_le_bytes());
    b[28..32].copy_from_slice(&rng.gen::<u32>().to_le_bytes());
    random_bytes(rng, &mut b[160..416]);
    b[512..576].fill(0);
    put(&mut b, 512, bv);
    if let Some(c) = xcomp {
        put(&mut b, 520, c | mask::COMPACTED);
    } else if rng.gen_bool(0.3) {
        // Bytes 24..63 of the header are not checked by the standard form.
        let i = rng.gen_range(536..576);
        b[i] = rng.gen();
    }
    for p in layout.placements.iter().filter(|p| p.id >= 2) {
        random_bytes(rng, &mut b[p.range()]);
    }
    b
}

fn subset(rng: &mut StdRng, m: u64) -> u64 {
    let mut r = 0;
    for i in 0..64 {
        if m & (1u64 << i) != 0 && rng.gen_bool(0.6) {
            r |= 1u64 << i;
        }
    }
    r
}

/// A random request mask: a subset of XCR0, sometimes with bits XCR0 lacks.
fn random_rfbm(rng: &mut StdRng, xcr0: u64) -> u64 {
    match rng.gen_range(0..5) {
        0 => u64::MAX,
        1 => xcr0,
        _ => {
            subset(rng, xcr0)
                | (rng.gen::<u64>() & !xcr0 & if rng.gen_bool(0.3) { u64::MAX } else { 0 })
        }
    }
}

fn mids(e: &Env) -> Vec<(Mid, Option<SimpleInsn>)> {
    let mut v = vec![
        (Mid::None, None),
        (Mid::Fninit, Some(SimpleInsn::Fninit)),
        (Mid::Fnclex, Some(SimpleInsn::Fnclex)),
        (Mid::PxorXmm0, Some(SimpleInsn::PxorXmm0)),
        (Mid::LdmxcsrInit, Some(SimpleInsn::Ldmxcsr(0x1f80))),
    ];
    if e.avx {
        v.push((Mid::Vzeroupper, Some(SimpleInsn::Vzeroupper)));
        v.push((Mid::Vzeroall, Some(SimpleInsn::Vzeroall)));
        v.push((Mid::VpxorYmm1, Some(SimpleInsn::VpxorYmm1)));
    }
    if e.avx512 {
        v.push((Mid::KxorK1, Some(SimpleInsn::KxorwK1)));
    }
    v
}

/// Which vector registers are non-zero in an image: (XMM, YMM upper, ZMM upper, ZMM16-31)
/// bitmaps, for failure messages.
fn summary(e: &Env, img: &[u8]) -> String {
    let xcomp = q(img, 520);
    let layout = if xcomp & mask::COMPACTED != 0 {
        e.profile.layout.compacted(xcomp & !mask::COMPACTED).ok()
    } else {
        e.profile.layout.standard(e.xcr0).ok()
    };
    let Some(l) = layout else {
        return String::from("?");
    };
    let nz = |off: usize, stride: usize, n: usize| -> u32 {
        let mut m = 0;
        for j in 0..n {
            let a = off + stride * j;
            if img
                .get(a..a + stride)
                .is_some_and(|b| b.iter().any(|&x| x != 0))
            {
                m |= 1 << j;
            }
        }
        m
    };
    let at = |id: u8| l.offset_of(id).map(|o| o as usize);
    format!(
        "bv {:#x} xmm {:#x} ymmh {:#x} zmmh {:#x} hi16 {:#x}",
        q(img, 512),
        nz(160, 16, 16),
        at(2).map_or(0, |o| nz(o, 16, 16)),
        at(6).map_or(0, |o| nz(o, 32, 16)),
        at(7).map_or(0, |o| nz(o, 64, 16))
    )
}

/// Components the model knows to be in init state (whose XINUSE bit may read either way,
/// SDM Vol. 1 §13.6); SSE only when MXCSR is 1F80H too, since XGETBV(1) reports MXCSR in bit 1.
fn init_mask(cpu: &ModelCpu, xcr0: u64) -> u64 {
    let mut m = 0u64;
    for id in xstate::components::bits(xcr0) {
        let init = match id {
            0 => false,
            1 => (0..16).all(|j| cpu.xmm(j) == Some([0; 16])) && cpu.mxcsr() == 0x1f80,
            _ => cpu.component(id).is_some_and(|c| c.iter().all(|&b| b == 0)),
        };
        if init {
            m |= 1u64 << id;
        }
    }
    m
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b.iter()).position(|(x, y)| x != y)
}

#[derive(Default, Debug)]
struct Counts {
    xsave: usize,
    xsaveopt: usize,
    xsaveopt_in_place: usize,
    xsavec: usize,
    fxsave: usize,
    retried: usize,
    xinuse_synced: usize,
    after_fxrstor: usize,
}

/// Runs one save case on hardware and model; returns a description of the mismatch, if any.
#[allow(clippy::too_many_arguments)]
fn save_case(
    e: &Env,
    rng: &mut StdRng,
    counts: &mut Counts,
    mids: &[(Mid, Option<SimpleInsn>)],
) -> Result<(), String> {
    // The pre image: standard form, XSTATE_BV a random subset of XCR0.
    let pre_bv = subset(rng, e.loadable);
    let pre = valid_image(e, rng, pre_bv, None);
    // The restore under test.
    let restore = rng.gen_bool(0.85);
    // FXRSTOR of the image's legacy area instead of XRSTOR, sometimes.
    let fx = restore && rng.gen_bool(0.12);
    let compacted = restore && !fx && e.host.has_xsavec() && rng.gen_bool(0.35);
    let xcomp = if compacted {
        Some(subset(rng, e.xcr0) | if rng.gen_bool(0.5) { e.xcr0 } else { 0 })
    } else {
        None
    };
    let bv = subset(rng, xcomp.unwrap_or(e.xcr0) & e.loadable);
    let mut a = valid_image(e, rng, bv, xcomp);
    let rrfbm = random_rfbm(rng, e.xcr0);
    let (mid, insn) = mids[rng.gen_range(0..mids.len())];
    let op = match rng.gen_range(0..10) {
        0..=2 => SaveOp::Xsave,
        3..=6 => SaveOp::Xsaveopt,
        7..=8 if e.host.has_xsavec() => SaveOp::Xsavec,
        _ => SaveOp::Fxsave,
    };
    let op = if op == SaveOp::Xsaveopt && !e.host.has_xsaveopt() {
        SaveOp::Xsave
    } else {
        op
    };
    let srfbm = random_rfbm(rng, e.xcr0);
    let in_place = restore && op != SaveOp::Fxsave && rng.gen_bool(0.4);
    // The patch: bytes written into the restored buffer after the restore.
    let patch: Option<(usize, Vec<u8>)> = if in_place && rng.gen_bool(0.7) {
        let len = a.len();
        let off = rng.gen_range(0..len);
        let n = rng.gen_range(1..=(len - off).min(700));
        let mut bytes = vec![0u8; n];
        rng.fill(&mut bytes[..]);
        // Keep the header valid for a later look (it is not read again anyway).
        Some((off, bytes))
    } else {
        None
    };
    let prior_len = e.std_size.max(a.len());
    let mut d = AlignedBuf::new(prior_len);
    rng.fill(&mut d[..]);
    let a0 = a.clone();
    let d0 = d.clone();

    // ----- the model -----
    let mut cpu = ModelCpu::new(e.profile.clone());
    cpu.xcr0 = e.xcr0;
    cpu.cpl = 3;
    let pre_addr = pre.as_ptr() as u64;
    cpu.xrstor(&pre, pre_addr, u64::MAX)
        .map_err(|f| format!("model pre restore faulted: {f}"))?;
    let a_addr = a.as_ptr() as u64;
    let d_addr = d.as_ptr() as u64;
    let mut ma = a0.to_vec();
    let md = d0.to_vec();
    if restore {
        if fx {
            cpu.fxrstor(&ma, a_addr)
        } else {
            cpu.xrstor(&ma, a_addr, rrfbm)
        }
        .map_err(|f| format!("model restore faulted: {f}"))?;
    }
    if let Some(i) = insn {
        cpu.exec(i)
            .map_err(|f| format!("model {i:?} faulted: {f}"))?;
    }
    if let Some((off, bytes)) = &patch {
        ma[*off..*off + bytes.len()].copy_from_slice(bytes);
    }

    // ----- the hardware (retried once: an OS context switch inside the sequence changes
    // the modified-optimization record) -----
    let mut attempt = 0;
    loop {
        a.copy_from_slice(&a0);
        d.copy_from_slice(&d0);
        let rep = e
            .host
            .sequence(Sequence {
                pre: Some(&pre),
                restore: match (restore, fx) {
                    (true, true) => Some(Restore::Fxrstor { mem: &mut a }),
                    (true, false) => Some(Restore::Xrstor {
                        mem: &mut a,
                        rfbm: rrfbm,
                    }),
                    _ => None,
                },
                mid,
                patch: patch.as_ref().map(|(o, b)| (*o, &b[..])),
                save: if in_place {
                    None
                } else {
                    Some((op, &mut d, srfbm))
                },
                save_in_place: if in_place { Some((op, srfbm)) } else { None },
            })
            .map_err(|err| format!("hardware refused: {err}"))?;
        // XINUSE may be 1 or 0 for a component in init state (SDM Vol. 1 §13.6: 0 only means
        // "known to be in init state"), and CPUs choose differently (see the module docs: Zen 5
        // keeps some such bits set; the Intel Xeon measured clears ZMM_Hi256 after a VEX write
        // of zeros to the upper halves where the model sets it). The model cannot know which,
        // so for components it knows to be in init state, and only those, it adopts the
        // hardware's choice — from XGETBV(1) and from the XSTATE_BV the save wrote — in
        // either direction; then the memory must match exactly.
        let (mut set_bits, mut clear_bits) = (0u64, 0u64);
        let mut synced = false;
        let mut result = None;
        for _ in 0..2 {
            let mut mcpu = cpu.clone();
            if set_bits | clear_bits != 0 {
                mcpu.set_xinuse((mcpu.xinuse() | set_bits) & !clear_bits);
            }
            let model_xinuse = mcpu.xgetbv(1).ok();
            let mut ma2 = ma.clone();
            let mut md2 = md.clone();
            let (target, taddr) = if in_place {
                (&mut ma2, a_addr)
            } else {
                (&mut md2, d_addr)
            };
            match op {
                SaveOp::Xsave => mcpu.xsave(target, taddr, srfbm),
                SaveOp::Xsaveopt => mcpu.xsaveopt(target, taddr, srfbm),
                SaveOp::Xsavec => mcpu.xsavec(target, taddr, srfbm),
                SaveOp::Fxsave => mcpu.fxsave(target, taddr),
            }
            .map_err(|f| format!("model save faulted: {f}"))?;
            let hw_mem: &[u8] = if in_place { &a } else { &d };
            let model_mem: Vec<u8> = if in_place { ma2 } else { md2 };
            let diff = first_diff(hw_mem, &model_mem);
            let loose = init_mask(&mcpu, e.xcr0);
            let xdiff = rep.xinuse.map(|v| v & !loose) != model_xinuse.map(|v| v & !loose);
            if diff.is_none() && !xdiff {
                result = None;
                synced = set_bits | clear_bits != 0;
                break;
            }
            // Candidate bits: hardware and model disagree on the in-use bit.
            let (mut on, mut off) = (0u64, 0u64);
            if op != SaveOp::Fxsave {
                on = q(hw_mem, 512) & !q(&model_mem, 512) & e.xcr0 & !set_bits;
                off = q(&model_mem, 512) & !q(hw_mem, 512) & e.xcr0 & !clear_bits;
            }
            let init_ok = on | off != 0
                && xstate::components::bits(on | off).all(|id| match id {
                    1 => (0..16).all(|j| mcpu.xmm(j) == Some([0; 16])),
                    0 => false,
                    _ => mcpu
                        .component(id)
                        .is_some_and(|c| c.iter().all(|&b| b == 0)),
                });
            result = Some((diff, xdiff, model_mem, model_xinuse));
            if !init_ok {
                break;
            }
            set_bits |= on;
            clear_bits |= off;
        }
        let Some((diff, xdiff, model_mem, model_xinuse)) = result else {
            if synced {
                counts.xinuse_synced += 1;
            }
            break;
        };
        let hw_mem: &[u8] = if in_place { &a } else { &d };
        let model_mem = &model_mem[..];
        attempt += 1;
        if attempt < 2 {
            counts.retried += 1;
            continue;
        }
        let mut msg = format!(
            "{op:?} in_place={in_place} restore={restore} fxrstor={fx} compacted={compacted} rrfbm={rrfbm:#x} bv={bv:#x} mid={mid:?} srfbm={srfbm:#x} patch={:?}: ",
            patch.as_ref().map(|(o, b)| (*o, b.len()))
        );
        if let Some(i) = diff {
            let lo = i.saturating_sub(8);
            let hi = (i + 24).min(hw_mem.len());
            msg += &format!(
                "first difference at byte {i}: hw {:02x?} model {:02x?} (prior {:02x?}); ",
                &hw_mem[lo..hi],
                &model_mem[lo..hi],
                &(if in_place { &a0[..] } else { &d0[..] })[lo..hi]
            );
        }
        if xdiff {
            msg += &format!("XGETBV(1) hw {:x?} model {:x?}", rep.xinuse, model_xinuse);
        }
        msg += &format!(
            "hw XSTATE_BV {:#x} model {:#x}; model XINUSE {:#x} XMODIFIED {:#x} XRSTOR_INFO {:x?} (save at {:#x}); ",
            q(hw_mem, 512),
            q(model_mem, 512),
            cpu.xinuse(),
            cpu.xmodified(),
            cpu.xrstor_info(),
            if in_place { a_addr } else { d_addr }
        );
        msg += &format!(
            "\n   pre: {}\n   img: {}",
            summary(e, &pre),
            summary(e, &a0)
        );
        return Err(msg);
    }
    match op {
        _ if fx => counts.after_fxrstor += 1,
        SaveOp::Xsave => counts.xsave += 1,
        SaveOp::Xsaveopt if in_place => counts.xsaveopt_in_place += 1,
        SaveOp::Xsaveopt => counts.xsaveopt += 1,
        SaveOp::Xsavec => counts.xsavec += 1,
        SaveOp::Fxsave => counts.fxsave += 1,
    }
    Ok(())
}

#[test]
fn saves_match_hardware_byte_for_byte() {
    let Some(e) = env() else { return };
    let s = seed();
    let n = scale(15000);
    println!(
        "seed {s} (XSTATE_DIFF_SEED), {n} save cases, XCR0 {:#x}",
        e.xcr0
    );
    let mut rng = StdRng::seed_from_u64(s);
    let mids = mids(&e);
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for _ in 0..n {
        if let Err(m) = save_case(&e, &mut rng, &mut counts, &mids) {
            failures.push(m);
            if failures.len() >= 5 {
                break;
            }
        }
    }
    println!("save cases equal to hardware: {counts:?}");
    assert!(
        failures.is_empty(),
        "seed {s}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A random image for a restore, valid or not: mutations of the header, MXCSR, XCOMP_BV,
/// XSTATE_BV; misaligned addresses.
fn restore_case_image(e: &Env, rng: &mut StdRng) -> (AlignedBuf, u64, usize, &'static str) {
    let compacted = e.host.has_xsavec() && rng.gen_bool(0.4);
    let xcomp = if compacted {
        Some(subset(rng, e.xcr0))
    } else {
        None
    };
    let bv = subset(rng, xcomp.unwrap_or(e.xcr0) & e.loadable);
    let mut b = valid_image(e, rng, bv, xcomp);
    let rfbm = random_rfbm(rng, e.xcr0);
    let mut offset = 0;
    let what = match rng.gen_range(0..12) {
        0 => {
            // XSTATE_BV bit outside XCR0 / XCOMP_BV, bit 63 included.
            let bit = [63u32, 3, 4, 8, 9, 11, 12, 17, 18, 19, 62][rng.gen_range(0..11)];
            put(&mut b, 512, bv | 1u64 << bit);
            "xstate_bv bad bit"
        }
        1 => {
            let bit = rng.gen_range(0..63);
            let x = q(&b, 520) ^ (1u64 << bit);
            put(&mut b, 520, x);
            "xcomp_bv bit flipped"
        }
        2 => {
            let x = q(&b, 520) ^ mask::COMPACTED;
            put(&mut b, 520, x);
            "form flipped"
        }
        3 => {
            let i = rng.gen_range(520..576);
            b[i] = rng.gen_range(1..=255);
            "header byte"
        }
        4 => {
            let bit = rng.gen_range(6..32);
            let m = u32::from_le_bytes([b[24], b[25], b[26], b[27]]) | 1 << bit;
            b[24..28].copy_from_slice(&m.to_le_bytes());
            "mxcsr bit"
        }
        5 => {
            offset = [8usize, 16, 32, 48, 1][rng.gen_range(0..5)];
            "misaligned"
        }
        6 => {
            // A random byte anywhere.
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen();
            "random byte"
        }
        _ => "valid",
    };
    unload(e, &mut b);
    (b, rfbm, offset, what)
}

#[test]
fn restores_fault_and_load_like_hardware() {
    let Some(e) = env() else { return };
    let s = seed();
    let n = scale(1500);
    println!("seed {s} (XSTATE_DIFF_SEED), {n} restore cases");
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed);
    let (mut faults, mut loads, mut failures) = (0usize, 0usize, Vec::new());
    let mut synced = 0usize;
    let mut by_kind: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for _ in 0..n {
        let pre_bv = subset(&mut rng, e.loadable);
        let pre = valid_image(&e, &mut rng, pre_bv, None);
        let (img, rfbm, offset, what) = restore_case_image(&e, &mut rng);
        let hw = sandbox::xrstor_after(&e.host, Some(&pre), &img, rfbm, offset).expect("sandbox");
        // Model: same memory contents (the sandbox pads with zeros), same alignment.
        let mut cpu = ModelCpu::new(e.profile.clone());
        cpu.xcr0 = e.xcr0;
        cpu.cpl = 3;
        cpu.xrstor(&pre, 0x1000, u64::MAX).expect("model pre");
        let mut mem = img.to_vec();
        mem.resize(16384.max(img.len()), 0);
        let r = cpu.xrstor(&mem, 0x20000 + offset as u64, rfbm);
        let entry = by_kind.entry(what).or_default();
        match (&hw, &r) {
            (sandbox::Outcome::Fault(sig), Err(f)) => {
                if *sig != sandbox::Signal::Segv || f.exception != Exception::Gp {
                    failures.push(format!("{what}: hw {sig:?}, model {f}"));
                }
                faults += 1;
                entry.0 += 1;
            }
            (sandbox::Outcome::Restored(after), Ok(())) => {
                let hw_x = after.xinuse;
                // XINUSE may be 1 for a component in init state (SDM Vol. 1 §13.6): adopt the
                // hardware's extra in-use bits (XGETBV(1) and the XSTATE_BV its XSAVE wrote)
                // for components the model knows to be in init state.
                let mut model_img = cpu.state_image();
                let mut model_x = cpu.xgetbv(1).ok();
                let cand = q(&after.image, 512) & !q(&model_img, 512) & e.xcr0;
                if cand != 0
                    && xstate::components::bits(cand).all(|id| match id {
                        1 => (0..16).all(|j| cpu.xmm(j) == Some([0; 16])),
                        0 => false,
                        _ => cpu.component(id).is_some_and(|c| c.iter().all(|&b| b == 0)),
                    })
                {
                    cpu.set_xinuse(cpu.xinuse() | cand);
                    model_img = cpu.state_image();
                    model_x = cpu.xgetbv(1).ok();
                    synced += 1;
                }
                let n = model_img.len().min(after.image.len());
                if let Some(i) = first_diff(&after.image[..n], &model_img[..n]) {
                    let hi = (i + 16).min(n);
                    failures.push(format!(
                        "{what}: rfbm {rfbm:#x} bv {:#x} xcomp {:#x}: state differs at byte {i}: hw {:02x?} model {:02x?}; XGETBV(1) hw {hw_x:x?} model {model_x:x?}",
                        q(&img, 512), q(&img, 520), &after.image[i..hi], &model_img[i..hi]
                    ));
                } else if hw_x.map(|v| v & !init_mask(&cpu, e.xcr0))
                    != model_x.map(|v| v & !init_mask(&cpu, e.xcr0))
                {
                    failures.push(format!("{what}: XGETBV(1) hw {hw_x:x?} model {model_x:x?}"));
                }
                if let Some(f) = failures.last_mut() {
                    if !f.contains("pre:") {
                        *f += &format!("\n   pre: {}\n   img: {} rfbm {rfbm:#x}", summary(&e, &pre), summary(&e, &img));
                    }
                }
                loads += 1;
                entry.1 += 1;
            }
            (sandbox::Outcome::Fault(sig), Ok(())) => failures.push(format!(
                "{what}: rfbm {rfbm:#x} XSTATE_BV {:#x} XCOMP_BV {:#x} MXCSR {:#x} offset {offset}: hardware {sig:?}, model no fault",
                q(&img, 512), q(&img, 520), q(&img, 24) as u32
            )),
            (sandbox::Outcome::Restored(_), Err(f)) => failures.push(format!(
                "{what}: rfbm {rfbm:#x} XSTATE_BV {:#x} XCOMP_BV {:#x}: hardware restored, model {f}",
                q(&img, 512), q(&img, 520)
            )),
        }
        if failures.len() >= 5 {
            break;
        }
    }
    println!("restore cases: {faults} faulted on both, {loads} loaded the same state ({synced} after adopting the CPU's XINUSE = 1 for components in init state); by mutation (faults, loads): {by_kind:?}");
    assert!(
        failures.is_empty(),
        "seed {s}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
