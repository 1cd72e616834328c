//! The ring-0 differential: random programs of XSAVE-family instructions (seeded) run on the CPU
//! (`program::run`) and on `xstate::model::ModelCpu` with the profile built from the CPUID the
//! kernel read; every step's exception and every byte of the three buffers must agree.
//!
//! A case: XSETBV(random valid XCR0), WRMSR IA32_XSS (random supported value), a setup restore
//! (XRSTORS of a compacted image — XRSTOR of a standard one without XSAVES — with random
//! register contents under random XSTATE_BV, every component of XCR0|XSS covered: x87, SSE,
//! AVX, AVX-512, PKRU, CET_U, CET_S, TILECFG, TILEDATA), one to four random test sequences
//! (saves of every form with random RFBM and occasionally misaligned operands, the XSAVEOPT and
//! XSAVES modified optimization, restores of saved images after header/MXCSR mutations,
//! XSETBV and IA32_XSS with arbitrary values, XGETBV(0/1/2), TILERELEASE), then a read-back
//! (XSAVES/XSAVE with RFBM = all ones, XGETBV(1), XGETBV(0)) of every register.
//!
//! When a case disagrees, it is run once more on a model that imitates the listed deviations of
//! the executor (`quirks`); a case that then agrees counts as a known difference (per entry);
//! any other is a disagreement and is printed.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xstate::components::mask;
use xstate::model::{CpuProfile, Exception, ModelCpu, Msr, SimpleInsn};

use crate::arch::NO_FAULT;
use crate::program::{self, Op, Step};
use crate::quirks::Quirks;

/// Size of each test buffer: the largest image (11008 bytes on Sapphire Rapids) plus room for
/// misaligned operands and the XGETBV results at `XGETBV_AT`.
pub const BUF: usize = 16384;
/// Offset in the read-back buffer where XGETBV(1) and XGETBV(0) are stored.
const XGETBV_AT: usize = 15360;
/// Buffers 0..2 are random-filled per case; buffer 3 holds the reset image.
const NBUF: usize = 4;

#[repr(C, align(4096))]
struct Buffers([[u8; BUF]; NBUF]);

static mut CPU_BUFS: Buffers = Buffers([[0; BUF]; NBUF]);

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability p/100.
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// What the differential covered, per family (counts of steps executed without a fault on
/// both sides, or of cases with the state involved).
#[derive(Default)]
pub struct Covered {
    pub xsave: u64,
    pub xsaveopt: u64,
    pub xsavec: u64,
    pub xsaves: u64,
    pub xrstor: u64,
    pub xrstors: u64,
    pub fxsave: u64,
    pub xsetbv: u64,
    pub amx: u64,
    pub cet_s: u64,
    pub pkru: u64,
    pub avx512: u64,
}

/// Totals of a run.
#[derive(Default)]
pub struct Totals {
    pub cases: u64,
    pub agree: u64,
    pub disagree: u64,
    pub known: u64,
    pub covered: Covered,
}

/// The fixed facts of the run.
pub struct Differential {
    pub profile: CpuProfile,
    pub xcr0_supported: u64,
    pub xss_supported: u64,
    pub quirks: Quirks,
}

fn vector_of(e: Exception) -> u64 {
    match e {
        Exception::Gp => 13,
        Exception::Nm => 7,
        Exception::Ud => 6,
        Exception::Pf => 14,
        _ => 0xfe,
    }
}

fn canonical(v: u64) -> u64 {
    (((v << 16) as i64) >> 16) as u64
}

impl Differential {
    /// A random XCR0 that obeys the XSETBV rules by construction (SDM Vol. 2 XSETBV): x87;
    /// SSE; AVX needs SSE; AVX-512 all three, needs AVX; MPX both; AMX both; PKRU; anything
    /// else supported at random.
    fn random_xcr0(&self, r: &mut Rng) -> u64 {
        let s = self.xcr0_supported;
        let mut x = mask::X87;
        let sse = r.pct(90);
        if sse {
            x |= mask::SSE;
        }
        if sse && s & mask::AVX != 0 && r.pct(85) {
            x |= mask::AVX;
            if s & mask::AVX512 == mask::AVX512 && r.pct(80) {
                x |= mask::AVX512;
            }
        }
        for group in [mask::MPX, mask::AMX, mask::PKRU] {
            if s & group == group && r.pct(75) {
                x |= group;
            }
        }
        x
    }

    /// Writes random register contents for every component of `rfbm` into an image of
    /// `layout`, valid for XRSTOR/XRSTORS (MXCSR within MXCSR_MASK, canonical and aligned CET
    /// pointers, a valid palette-1 TILECFG, PKRU's reserved upper half zero). With probability
    /// 10 % a component gets all-zero content.
    fn random_contents(&self, r: &mut Rng, img: &mut [u8], layout: &xstate::layout::FormLayout, rfbm: u64) {
        // Legacy area (SDM Vol. 1 §10.5.1).
        if rfbm & mask::X87 != 0 && !r.pct(10) {
            let fcw: u16 = [0x037f, 0x027f, 0x0f7f, 0x007f][r.below(4) as usize];
            img[0..2].copy_from_slice(&fcw.to_le_bytes());
            let fsw: u16 = [0, 0x3800, 0x0001, 0x1820][r.below(4) as usize];
            img[2..4].copy_from_slice(&fsw.to_le_bytes());
            img[4] = r.next() as u8;
            img[5] = 0;
            img[6..8].copy_from_slice(&((r.next() & 0x7ff) as u16).to_le_bytes());
            img[8..16].copy_from_slice(&canonical(r.next() & 0x0000_ffff_ffff_fff0).to_le_bytes());
            img[16..24].copy_from_slice(&canonical(r.next() & 0x0000_ffff_ffff_fff0).to_le_bytes());
            for i in 0..8 {
                let o = 32 + 16 * i;
                r.fill(&mut img[o..o + 10]);
            }
        }
        let mxcsr = (r.next() as u32 & self.profile.mxcsr_mask & 0xffbf) | if r.pct(40) { 0x1f80 } else { 0 };
        img[24..28].copy_from_slice(&if r.pct(50) { 0x1f80u32 } else { mxcsr }.to_le_bytes());
        if rfbm & mask::SSE != 0 && !r.pct(10) {
            r.fill(&mut img[160..416]);
        }
        for p in layout.placements.iter().filter(|p| p.id >= 2) {
            let bit = 1u64 << p.id;
            if rfbm & bit == 0 || r.pct(10) {
                continue;
            }
            let c = &mut img[p.range()];
            match bit {
                mask::PKRU => c[0..4].copy_from_slice(&(r.next() as u32).to_le_bytes()),
                mask::CET_U => {
                    // IA32_U_CET: bits 9:6 reserved, 63:12 a canonical legacy-bitmap base;
                    // IA32_PL3_SSP canonical, 4-byte aligned (SDM Vol. 1 ch. 17, §13.12).
                    let ucet = canonical(r.next() & 0x0000_ffff_ffff_f03f) & !0x3c0;
                    c[0..8].copy_from_slice(&ucet.to_le_bytes());
                    c[8..16].copy_from_slice(&(canonical(r.next()) & !3).to_le_bytes());
                }
                mask::CET_S => {
                    for k in 0..3 {
                        c[8 * k..8 * k + 8].copy_from_slice(&(canonical(r.next()) & !3).to_le_bytes());
                    }
                }
                mask::XTILECFG => {
                    // Palette 1 (SDM Vol. 2 LDTILECFG): bytes 0 palette, 1 start_row = 0,
                    // 16 + 2n colsb (u16, ≤ 64), 48 + n rows (≤ 16), n < 8; everything else
                    // zero; rows = 0 ⇔ colsb = 0. colsb = rows here: Bochs stores the two
                    // swapped (quirks::TILECFG_SAVE_SWAPS_ROWS_COLSB, checked by the directed
                    // case), which would otherwise hide every other TILECFG difference.
                    c.fill(0);
                    c[0] = 1;
                    for n in 0..8 {
                        if r.pct(70) {
                            let rows = 1 + r.below(16) as u8;
                            let colsb = u16::from(rows);
                            c[16 + 2 * n..18 + 2 * n].copy_from_slice(&colsb.to_le_bytes());
                            c[48 + n] = rows;
                        }
                    }
                }
                _ if bit & mask::SUPERVISOR_KNOWN != 0 => {} // value rules unknown here: zero
                _ => r.fill(c),
            }
        }
    }

    /// Runs one case; returns the report line of a disagreement, if any.
    pub fn case(&mut self, seed: u64, index: u64, t: &mut Totals) -> Option<String> {
        let mut r = Rng::new(seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93));
        // SAFETY: the kernel is single-threaded; the buffers are only used here.
        let bufs = unsafe { &mut *core::ptr::addr_of_mut!(CPU_BUFS) };
        let base: [u64; NBUF] = core::array::from_fn(|i| bufs.0[i].as_ptr() as u64);

        let xcr0 = self.random_xcr0(&mut r);
        let xss = self.xss_supported & r.next();
        let xsaves = self.profile.xsaves;
        let setup_mask = if xsaves { xcr0 | xss } else { xcr0 };
        let form = if xsaves { self.profile.layout.compacted(setup_mask) } else { self.profile.layout.standard(xcr0) };
        let Ok(form) = form else {
            return Some(format!("{{\"disagree\": \"layout\", \"case\": {index}, \"detail\": \"no layout for {setup_mask:#x}\"}}"));
        };

        for b in bufs.0.iter_mut().take(3) {
            r.fill(b);
        }
        // The reset image: XSTATE_BV = 0 with every supported component in XCOMP_BV, so the
        // reset restore puts every component in its initial configuration (SDM Vol. 1 §13.8).
        let reset = &mut bufs.0[3];
        reset.fill(0);
        if xsaves {
            reset[520..528].copy_from_slice(&(self.xcr0_supported | self.xss_supported | mask::COMPACTED).to_le_bytes());
        }
        let img = &mut bufs.0[0];
        img[..form.size as usize].fill(0);
        self.random_contents(&mut r, img, &form, setup_mask);
        let xstate_bv = setup_mask & (r.next() | r.next());
        img[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
        img[520..528].copy_from_slice(&form.xcomp_bv().to_le_bytes());

        let mut steps: Vec<Step> = Vec::new();
        // Reset: every supported component to its initial configuration, so that nothing of
        // the previous case (or of the compiled code) survives on the CPU.
        steps.push(Step::new(Op::Xsetbv, self.xcr0_supported, 0));
        if xsaves {
            steps.push(Step::new(Op::WrXss, self.xss_supported, 0));
            steps.push(Step::new(Op::Xrstors, u64::MAX, base[3]));
        } else {
            steps.push(Step::new(Op::Xrstor, u64::MAX, base[3]));
        }
        steps.push(Step::new(Op::Xsetbv, xcr0, 0));
        if xsaves {
            steps.push(Step::new(Op::WrXss, xss, 0));
            steps.push(Step::new(Op::Xrstors, u64::MAX, base[0]));
        } else {
            steps.push(Step::new(Op::Xrstor, u64::MAX, base[0]));
        }
        let setup_len = steps.len() - 1;
        for _ in 0..1 + r.below(4) {
            self.random_sequence(&mut r, &base, &mut steps);
        }
        let rb = base[2];
        steps.push(Step::new(if xsaves { Op::Xsaves } else { Op::Xsave }, u64::MAX, rb));
        if self.profile.xgetbv1 {
            steps.push(Step::new(Op::Xgetbv, 1, rb + XGETBV_AT as u64));
        }
        steps.push(Step::new(Op::Xgetbv, 0, rb + XGETBV_AT as u64 + 8));

        // The model's memory starts as the CPU's did.
        let mut mbufs: Vec<Vec<u8>> = bufs.0.iter().map(|b| b.to_vec()).collect();
        let mut mbufs_q = mbufs.clone();
        // SAFETY: CPL 0 with the IDT loaded; every operand lies in CPU_BUFS (see random_sequence).
        unsafe { program::run(&mut steps) };

        t.cases += 1;
        let plain = self.run_model(&steps, &base, &mut mbufs, None);
        let verdict = compare(&steps, &plain, bufs, &mbufs);
        let result = match verdict {
            None => {
                t.agree += 1;
                None
            }
            Some(first) => {
                let mut q = self.quirks.clone();
                let quirked = self.run_model(&steps, &base, &mut mbufs_q, Some(&mut q));
                let second = compare(&steps, &quirked, bufs, &mbufs_q);
                if second.is_none() && q.any_applied() {
                    t.known += 1;
                    self.quirks.record(&q);
                    None
                } else {
                    t.disagree += 1;
                    let second = second.unwrap_or_else(|| String::from("null"));
                    Some(format!(
                        "{{\"disagree\": {first}, \"with_known_differences\": {second}, \"case\": {index}, \"xcr0\": \"{xcr0:#x}\", \"xss\": \"{xss:#x}\", \"xstate_bv\": \"{xstate_bv:#x}\", \"program\": \"{}\"}}",
                        describe(&steps[setup_len..], &base)
                    ))
                }
            }
        };
        self.count(&steps, &plain, xcr0, xss, &mut t.covered);
        result
    }

    fn count(&self, steps: &[Step], model: &[u64], xcr0: u64, xss: u64, c: &mut Covered) {
        for (s, &mv) in steps.iter().zip(model) {
            if s.vector != NO_FAULT || mv != NO_FAULT {
                if s.op == Op::Xsetbv && s.vector == mv {
                    c.xsetbv += 1;
                }
                continue;
            }
            match s.op {
                Op::Xsave => c.xsave += 1,
                Op::Xsaveopt => c.xsaveopt += 1,
                Op::Xsavec => c.xsavec += 1,
                Op::Xsaves => c.xsaves += 1,
                Op::Xrstor => c.xrstor += 1,
                Op::Xrstors => c.xrstors += 1,
                Op::Fxsave | Op::Fxrstor => c.fxsave += 1,
                Op::Xsetbv => c.xsetbv += 1,
                _ => {}
            }
        }
        if xcr0 & mask::AMX == mask::AMX {
            c.amx += 1;
        }
        if xss & mask::CET_S != 0 {
            c.cet_s += 1;
        }
        if xcr0 & mask::PKRU != 0 {
            c.pkru += 1;
        }
        if xcr0 & mask::AVX512 == mask::AVX512 {
            c.avx512 += 1;
        }
    }

    /// One random test sequence appended to `steps`. Operands: buffer 1 (saves, restores of
    /// saved images), buffer 0 (the setup image), occasionally misaligned by 8, 16 or 32.
    fn random_sequence(&self, r: &mut Rng, base: &[u64; NBUF], steps: &mut Vec<Step>) {
        let p = &self.profile;
        let b1 = base[1];
        let misalign = |r: &mut Rng| if r.pct(5) { [8u64, 16, 32][r.below(3) as usize] } else { 0 };
        let rfbm = |r: &mut Rng| if r.pct(50) { u64::MAX } else { r.next() & (r.next() | 0x3) };
        let saves: &[Op] = match (p.xsaveopt, p.xsavec, p.xsaves) {
            (true, true, true) => &[Op::Xsave, Op::Xsaveopt, Op::Xsavec, Op::Xsaves, Op::Fxsave],
            (true, true, false) => &[Op::Xsave, Op::Xsaveopt, Op::Xsavec, Op::Fxsave],
            _ => &[Op::Xsave, Op::Fxsave],
        };
        match r.below(9) {
            // A save of any form.
            0 | 1 => {
                let op = saves[r.below(saves.len() as u64) as usize];
                steps.push(Step::new(op, rfbm(r), b1 + misalign(r)));
            }
            // The modified optimization: XRSTOR(S) from A, maybe a write into A, XSAVEOPT or
            // XSAVES to A (twice).
            2 | 3 => {
                let (save, restore) = if p.xsaves && r.pct(40) { (Op::Xsaves, Op::Xrstors) } else { (if p.xsaveopt { Op::Xsaveopt } else { Op::Xsave }, Op::Xrstor) };
                let first = if save == Op::Xsaves { Op::Xsaves } else { Op::Xsave };
                let m = if r.pct(50) { u64::MAX } else { rfbm(r) };
                steps.push(Step::new(first, u64::MAX, b1));
                if first == Op::Xsave && r.pct(90) {
                    steps.push(Step::new(Op::Zero, 56, b1 + 520));
                }
                steps.push(Step::new(restore, m, b1));
                if r.pct(50) {
                    steps.push(Step::new(Op::Store8, r.next(), b1 + r.below(3072)));
                }
                steps.push(Step::new(save, m, b1));
                steps.push(Step::new(save, rfbm(r), b1));
            }
            // A restore of a saved image, header / MXCSR / random bytes mutated.
            4 | 5 => {
                let op = saves[r.below(saves.len() as u64) as usize];
                steps.push(Step::new(op, u64::MAX, b1));
                if matches!(op, Op::Xsave | Op::Xsaveopt | Op::Fxsave) && r.pct(85) {
                    steps.push(Step::new(Op::Zero, 56, b1 + 520));
                }
                for _ in 0..r.below(3) {
                    let at = match r.below(4) {
                        0 => 512 + r.below(64),
                        1 => 24 + r.below(4),
                        2 => r.below(11008),
                        _ => 512 + 8 * r.below(3) + 7,
                    };
                    let v = if r.pct(50) { 1u64 << r.below(8) } else { r.next() };
                    steps.push(Step::new(Op::Store8, v, b1 + at));
                }
                let restore = match op {
                    Op::Fxsave => Op::Fxrstor,
                    Op::Xsaves => Op::Xrstors,
                    _ => Op::Xrstor,
                };
                let restore = if r.pct(15) { [Op::Xrstor, Op::Xrstors, Op::Fxrstor][r.below(3) as usize] } else { restore };
                steps.push(Step::new(restore, rfbm(r), b1 + misalign(r)));
            }
            // XSETBV with an arbitrary value (valid by construction half of the time).
            6 => {
                let v = if r.pct(50) { self.random_xcr0(r) } else { (self.xcr0_supported | 1 << r.below(64)) & (r.next() | 1) };
                steps.push(Step::new(Op::Xsetbv, v, 0));
            }
            // IA32_XSS with an arbitrary value, XGETBV with ECX 0, 1 or 2.
            7 => {
                if p.xsaves {
                    let v = if r.pct(70) { self.xss_supported & r.next() } else { r.next() & (r.next() | self.xss_supported) };
                    steps.push(Step::new(Op::WrXss, v, 0));
                }
                steps.push(Step::new(Op::Xgetbv, r.below(3), b1 + 8 * r.below(8)));
            }
            // TILERELEASE (#UD unless AMX is enabled in XCR0).
            _ => {
                if self.xcr0_supported & mask::AMX != 0 {
                    steps.push(Step::new(Op::Tilerelease, 0, 0));
                } else {
                    steps.push(Step::new(Op::Xgetbv, 1, b1));
                }
            }
        }
    }

    /// Runs the program on a fresh model; returns the vector of each step.
    fn run_model(&self, steps: &[Step], base: &[u64; NBUF], mem: &mut [Vec<u8>], mut quirks: Option<&mut Quirks>) -> Vec<u64> {
        let mut m = ModelCpu::new(self.profile.clone());
        let mut out = Vec::with_capacity(steps.len());
        for s in steps {
            let (bi, off) = locate(base, s.addr);
            let buf = &mut mem[bi];
            let addr = s.addr;
            if let Some(q) = quirks.as_deref_mut() {
                q.before(&mut m, s, &buf[off..]);
            }
            let res = match s.op {
                Op::Xsave => m.xsave(&mut buf[off..], addr, s.arg),
                Op::Xsaveopt => m.xsaveopt(&mut buf[off..], addr, s.arg),
                Op::Xsavec => m.xsavec(&mut buf[off..], addr, s.arg),
                Op::Xsaves => m.xsaves(&mut buf[off..], addr, s.arg),
                Op::Xrstor => m.xrstor(&buf[off..], addr, s.arg),
                Op::Xrstors => m.xrstors(&buf[off..], addr, s.arg),
                Op::Fxsave => m.fxsave(&mut buf[off..], addr),
                Op::Fxrstor => m.fxrstor(&buf[off..], addr),
                Op::Xsetbv => m.xsetbv(0, s.arg),
                Op::Xgetbv => m.xgetbv(s.arg as u32).map(|v| buf[off..off + 8].copy_from_slice(&v.to_le_bytes())),
                Op::Tilerelease => m.exec(SimpleInsn::Tilerelease),
                Op::WrXss => m.wrmsr(Msr::Xss, s.arg),
                Op::Store8 => {
                    buf[off] = s.arg as u8;
                    Ok(())
                }
                Op::Zero => {
                    buf[off..off + s.arg as usize].fill(0);
                    Ok(())
                }
            };
            if let Some(q) = quirks.as_deref_mut() {
                q.after(&mut m, s, res.is_ok(), &mut buf[off..]);
            }
            out.push(match res {
                Ok(()) => NO_FAULT,
                Err(f) => vector_of(f.exception),
            });
        }
        out
    }
}

/// Which buffer and offset an address is in (steps without a memory operand: buffer 0, 0).
fn locate(base: &[u64; NBUF], addr: u64) -> (usize, usize) {
    for (i, &b) in base.iter().enumerate() {
        if addr >= b && addr < b + BUF as u64 {
            return (i, (addr - b) as usize);
        }
    }
    (0, 0)
}

/// The first difference, as a JSON value, or None when everything agrees.
fn compare(steps: &[Step], model: &[u64], cpu: &Buffers, mem: &[Vec<u8>]) -> Option<String> {
    for (i, (s, &mv)) in steps.iter().zip(model).enumerate() {
        if s.vector != mv {
            return Some(format!(
                "{{\"what\": \"fault\", \"step\": {i}, \"insn\": \"{}\", \"arg\": \"{:#x}\", \"cpu\": \"{}\", \"model\": \"{}\"}}",
                s.op.name(),
                s.arg,
                vec_name(s.vector),
                vec_name(mv)
            ));
        }
    }
    for (bi, (c, m)) in cpu.0.iter().zip(mem).enumerate() {
        if let Some(o) = c.iter().zip(m.iter()).position(|(a, b)| a != b) {
            let end = (o + 8).min(BUF);
            return Some(format!(
                "{{\"what\": \"bytes\", \"buffer\": {bi}, \"offset\": {o}, \"cpu\": \"{}\", \"model\": \"{}\"}}",
                hex(&c[o..end]),
                hex(&m[o..end])
            ));
        }
    }
    None
}

fn vec_name(v: u64) -> &'static str {
    match v {
        NO_FAULT => "none",
        6 => "#UD",
        7 => "#NM",
        13 => "#GP",
        14 => "#PF",
        17 => "#AC",
        _ => "other",
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::new();
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// A compact description of the test steps: `op(arg)@buffer+offset`.
fn describe(steps: &[Step], base: &[u64; NBUF]) -> String {
    let mut s = String::new();
    for st in steps {
        let (b, o) = locate(base, st.addr);
        if !s.is_empty() {
            s.push_str("; ");
        }
        s.push_str(&format!("{}({:#x})@{b}+{o}", st.op.name(), st.arg));
    }
    s
}
