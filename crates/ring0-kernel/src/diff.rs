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
use xstate::layout::FormLayout;
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
    /// Steps where the CPU and the model raised the same exception: #GP, #NM, #UD.
    pub gp: u64,
    pub nm: u64,
    pub ud: u64,
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
    fn random_contents(
        &self,
        r: &mut Rng,
        img: &mut [u8],
        layout: &xstate::layout::FormLayout,
        rfbm: u64,
    ) {
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
        let mxcsr = (r.next() as u32 & self.profile.mxcsr_mask & 0xffbf)
            | if r.pct(40) { 0x1f80 } else { 0 };
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
                        c[8 * k..8 * k + 8]
                            .copy_from_slice(&(canonical(r.next()) & !3).to_le_bytes());
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
                    // About one configuration in 25 (tile 0 of 13 rows; chosen from the
                    // contents, so the random stream of every case stays as it was) is made
                    // invalid, which XRSTOR(S) turns into the init state without a fault
                    // (xstate::model::tilecfg, measured on the Intel Xeon): a reserved byte,
                    // 17 rows, a tile beyond the palette's 8, or rows without colsb.
                    if c[48] == 13 {
                        match c[49] % 4 {
                            0 => c[2 + usize::from(c[50] % 14)] = 1,
                            1 => c[49] = 17,
                            2 => c[32] = 4,
                            _ => c[16..18].fill(0),
                        }
                    }
                }
                _ if bit & mask::SUPERVISOR_KNOWN != 0 => {} // value rules unknown here: zero
                _ => r.fill(c),
            }
        }
    }

    /// Fills the buffers for a case: 0..2 random, 0 then overwritten by a setup image of
    /// random valid contents for XCR0|XSS (compacted with XSAVES, else standard) with the given
    /// XSTATE_BV, 3 the reset image. Returns the reset-and-setup steps and the image layout.
    fn setup(
        &self,
        r: &mut Rng,
        xcr0: u64,
        xss: u64,
        xstate_bv: u64,
    ) -> Result<(Vec<Step>, FormLayout), String> {
        // SAFETY: the kernel is single-threaded; the buffers are only used by this module.
        let bufs = unsafe { &mut *core::ptr::addr_of_mut!(CPU_BUFS) };
        let base = bases();
        let xsaves = self.profile.xsaves;
        let setup_mask = if xsaves { xcr0 | xss } else { xcr0 };
        let form = if xsaves {
            self.profile.layout.compacted(setup_mask)
        } else {
            self.profile.layout.standard(xcr0)
        };
        let form = form.map_err(|e| format!("\"no layout for {setup_mask:#x}: {e}\""))?;
        for b in bufs.0.iter_mut().take(3) {
            r.fill(b);
        }
        // The reset image: XSTATE_BV = 0 with every supported component in XCOMP_BV, so the
        // reset restore puts every component in its initial configuration (SDM Vol. 1 §13.8).
        let reset = &mut bufs.0[3];
        reset.fill(0);
        if xsaves {
            reset[520..528].copy_from_slice(
                &(self.xcr0_supported | self.xss_supported | mask::COMPACTED).to_le_bytes(),
            );
        }
        let img = &mut bufs.0[0];
        img[..form.size as usize].fill(0);
        self.random_contents(r, img, &form, setup_mask);
        img[512..520].copy_from_slice(&(xstate_bv & setup_mask).to_le_bytes());
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
        Ok((steps, form))
    }

    /// Runs `steps` on the CPU and on the plain model; returns the model's vectors, the first
    /// difference, and the buffers as they were before (for further model runs).
    fn execute(&self, steps: &mut [Step]) -> (Vec<u64>, Option<String>, Vec<Vec<u8>>) {
        // SAFETY: single-threaded; see `setup`.
        let bufs = unsafe { &mut *core::ptr::addr_of_mut!(CPU_BUFS) };
        let initial: Vec<Vec<u8>> = bufs.0.iter().map(|b| b.to_vec()).collect();
        // SAFETY: CPL 0 with the IDT loaded; every memory operand lies in CPU_BUFS with room
        // for the largest image after it (BUF ≥ 11008 + the largest offset used).
        unsafe { program::run(steps) };
        let mut mem = initial.clone();
        let plain = self.run_model(steps, &mut mem, None);
        let diff = compare(steps, &plain, bufs, &mem);
        (plain, diff, initial)
    }

    /// Runs `steps` on a model imitating the entries of `enabled`; returns the first
    /// difference and the entries whose imitation changed something.
    fn quirked(&self, steps: &[Step], initial: &[Vec<u8>], enabled: u64) -> (Option<String>, u64) {
        // SAFETY: single-threaded; see `setup`.
        let bufs = unsafe { &*core::ptr::addr_of!(CPU_BUFS) };
        let mut q = self.quirks.clone();
        q.enabled = enabled;
        let mut mem = initial.to_vec();
        let v = self.run_model(steps, &mut mem, Some(&mut q));
        (compare(steps, &v, bufs, &mem), q.applied())
    }

    /// Runs one random case; returns the report line of a disagreement, if any.
    pub fn case(&mut self, seed: u64, index: u64, t: &mut Totals) -> Option<String> {
        let mut r = Rng::new(seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93));
        let base = bases();
        let xcr0 = self.random_xcr0(&mut r);
        let xss = self.xss_supported & r.next();
        let xstate_bv = r.next() | r.next();
        let (mut steps, _) = match self.setup(&mut r, xcr0, xss, xstate_bv) {
            Ok(s) => s,
            Err(e) => {
                t.cases += 1;
                t.disagree += 1;
                return Some(format!("{{\"disagree\": {e}, \"case\": {index}}}"));
            }
        };
        let setup_len = steps.len() - 1;
        for _ in 0..1 + r.below(4) {
            self.random_sequence(&mut r, &base, &mut steps);
        }
        let rb = base[2];
        steps.push(Step::new(
            if self.profile.xsaves {
                Op::Xsaves
            } else {
                Op::Xsave
            },
            u64::MAX,
            rb,
        ));
        if self.profile.xgetbv1 {
            steps.push(Step::new(Op::Xgetbv, 1, rb + XGETBV_AT as u64));
        }
        steps.push(Step::new(Op::Xgetbv, 0, rb + XGETBV_AT as u64 + 8));

        let (plain, first, initial) = self.execute(&mut steps);
        t.cases += 1;
        self.count(&steps, &plain, xcr0, xss, &mut t.covered);
        let Some(first) = first else {
            t.agree += 1;
            return None;
        };
        let (second, applied) = self.quirked(&steps, &initial, u64::MAX);
        if second.is_none() && applied != 0 {
            // Which entries were needed: those without which the case disagrees again.
            let mut needed = 0;
            for i in 0..64 {
                if applied >> i & 1 != 0 && self.quirked(&steps, &initial, !(1u64 << i)).0.is_some()
                {
                    needed |= 1 << i;
                }
            }
            t.known += 1;
            self.quirks
                .record(if needed != 0 { needed } else { applied });
            return None;
        }
        t.disagree += 1;
        let second = second.unwrap_or_else(|| String::from("null"));
        Some(format!(
            "{{\"disagree\": {first}, \"with_known_differences\": {second}, \"case\": {index}, \"xcr0\": \"{xcr0:#x}\", \"xss\": \"{xss:#x}\", \"xstate_bv\": \"{:#x}\", \"program\": \"{}\"}}",
            xstate_bv & (xcr0 | xss),
            describe(&steps[setup_len..], &base)
        ))
    }

    /// The directed case of listed deviation `i`: a program that shows it. Returns
    /// `Some(true)` when it is present (the plain model disagrees, the model imitating every
    /// entry agrees, and without entry `i` it disagrees), `Some(false)` when it is not (the
    /// list is stale or something else differs; the line says which), `None` when the CPU
    /// lacks what the program needs.
    pub fn directed(&mut self, i: usize, seed: u64) -> Option<(bool, String)> {
        use crate::quirks::*;
        let mut r = Rng::new(seed ^ 0x5eed_d1ec_7ed0_0000 ^ i as u64);
        let base = bases();
        let (b1, b2) = (base[1], base[2]);
        let sup = self.xcr0_supported;
        let need = match i {
            PKRU_BYTES_4_7_NOT_WRITTEN => mask::PKRU,
            NO_MODIFIED_OPTIMIZATION
            | XSAVE_SSE_BIT_FROM_MXCSR
            | FAULTING_RESTORE_PARTIALLY_APPLIED
            | COMPACTED_RESTORE_ACCEPTS_XSTATE_BV_63
            | FIP_KEEPS_64_BITS => mask::SSE,
            _ => mask::AMX,
        };
        if sup & need != need
            || (i == NO_MODIFIED_OPTIMIZATION && !self.profile.xsaveopt)
            || !self.quirks.entries.get(i).is_some_and(|e| e.possible)
        {
            return None;
        }
        let xcr0 = mask::X87 | mask::SSE | need;
        let xstate_bv = match i {
            XSAVE_SSE_BIT_FROM_MXCSR => mask::SSE,
            NO_MODIFIED_OPTIMIZATION
            | FAULTING_RESTORE_PARTIALLY_APPLIED
            | COMPACTED_RESTORE_ACCEPTS_XSTATE_BV_63
            | FIP_KEEPS_64_BITS => mask::X87 | mask::SSE,
            _ => need,
        };
        let (mut steps, form) = self.setup(&mut r, xcr0, 0, xstate_bv).ok()?;
        // SAFETY: single-threaded; see `setup`.
        let img = unsafe { &mut (*core::ptr::addr_of_mut!(CPU_BUFS)).0[0] };
        let at = |id: u8| form.offset_of(id).unwrap_or(0) as usize;
        if need == mask::AMX {
            // Tile 0: 64 bytes × 2 rows (rows ≠ colsb shows the swap); every row non-zero.
            let c = &mut img[at(17)..at(17) + 64];
            c.fill(0);
            c[0] = 1;
            c[16] = 64;
            c[48] = 2;
            for b in img[at(18)..at(18) + 8192].iter_mut() {
                *b |= 1;
            }
        }
        img[160] |= 1; // XMM0 not zero
        let std = |id: u8| {
            u64::from(
                self.profile
                    .layout
                    .geometry(id)
                    .standard_offset
                    .unwrap_or(0),
            )
        };
        match i {
            TILEDATA_XINUSE_INVERTED => steps.push(Step::new(Op::Xgetbv, 1, b1)),
            NO_MODIFIED_OPTIMIZATION => {
                steps.push(Step::new(Op::Zero, 64, b1 + 512));
                steps.push(Step::new(Op::Xsave, u64::MAX, b1));
                steps.push(Step::new(Op::Xrstor, u64::MAX, b1));
                steps.push(Step::new(Op::Store8, 0x5a, b1 + 160));
                steps.push(Step::new(Op::Xsaveopt, u64::MAX, b1));
            }
            PKRU_BYTES_4_7_NOT_WRITTEN => {
                steps.push(Step::new(Op::Store8, 0xa5, b1 + std(9) + 4));
                steps.push(Step::new(Op::Xsave, mask::PKRU, b1));
            }
            XSAVE_SSE_BIT_FROM_MXCSR => {
                img[160..416].fill(0);
                img[24..28].copy_from_slice(&0x1f00u32.to_le_bytes());
                steps.push(Step::new(Op::Xsave, mask::SSE, b1));
            }
            TILECFG_RESTORE_CLEARS_TILEDATA => {
                steps.push(Step::new(Op::Xrstors, mask::XTILECFG, base[0]));
                steps.push(Step::new(Op::Xsavec, mask::AMX, b1));
            }
            TILECFG_SAVE_SWAPS_ROWS_COLSB => steps.push(Step::new(Op::Xsave, mask::XTILECFG, b1)),
            TILEDATA_ROWS_8_15_NOT_TRANSFERRED => steps.push(Step::new(Op::Xsave, mask::AMX, b1)),
            COMPACTED_RESTORE_ACCEPTS_XSTATE_BV_63 => {
                steps.push(Step::new(Op::Zero, 64, b1 + 512));
                steps.push(Step::new(Op::Xsavec, u64::MAX, b1));
                steps.push(Step::new(Op::Store8, 0x80, b1 + 519));
                steps.push(Step::new(Op::Xrstor, u64::MAX, b1));
            }
            FIP_KEEPS_64_BITS => {
                steps.push(Step::new(Op::Fxsave, u64::MAX, b1));
                steps.push(Step::new(Op::Store8, 0x01, b1 + 15));
                steps.push(Step::new(Op::Fxrstor, u64::MAX, b1));
                steps.push(Step::new(Op::Fxsave, u64::MAX, b2));
            }
            FAULTING_RESTORE_PARTIALLY_APPLIED => {
                steps.push(Step::new(Op::Zero, 64, b1 + 512));
                steps.push(Step::new(Op::Xsave, u64::MAX, b1));
                steps.push(Step::new(Op::Store8, 1, b1 + 27));
                steps.push(Step::new(Op::Store8, 0x11, b1 + 32));
                steps.push(Step::new(Op::Xrstor, u64::MAX, b1));
                steps.push(Step::new(Op::Xsave, u64::MAX, b2));
            }
            _ => return None,
        }
        if !self.profile.xsaves {
            return None;
        }
        let (_, plain, initial) = self.execute(&mut steps);
        let all = self.quirked(&steps, &initial, u64::MAX).0;
        let without = self.quirked(&steps, &initial, !(1u64 << i)).0;
        let present = plain.is_some() && all.is_none() && without.is_some();
        if present {
            self.quirks.record(1 << i);
        }
        let show = |d: Option<String>| d.unwrap_or_else(|| String::from("null"));
        Some((
            present,
            format!(
                "{{\"directed\": \"{}\", \"present\": {present}, \"plain\": {}, \"with_all\": {}, \"without_it\": {}, \"program\": \"{}\"}}",
                self.quirks.entries[i].id,
                show(plain),
                show(all),
                show(without),
                describe(&steps, &base)
            ),
        ))
    }

    fn count(&self, steps: &[Step], model: &[u64], xcr0: u64, xss: u64, c: &mut Covered) {
        for (s, &mv) in steps.iter().zip(model) {
            if s.vector == mv {
                match mv {
                    13 => c.gp += 1,
                    7 => c.nm += 1,
                    6 => c.ud += 1,
                    _ => {}
                }
            }
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
        let misalign = |r: &mut Rng| {
            if r.pct(5) {
                [8u64, 16, 32][r.below(3) as usize]
            } else {
                0
            }
        };
        let rfbm = |r: &mut Rng| {
            if r.pct(50) {
                u64::MAX
            } else {
                r.next() & (r.next() | 0x3)
            }
        };
        let saves: &[Op] = match (p.xsaveopt, p.xsavec, p.xsaves) {
            (true, true, true) => &[Op::Xsave, Op::Xsaveopt, Op::Xsavec, Op::Xsaves, Op::Fxsave],
            (true, true, false) => &[Op::Xsave, Op::Xsaveopt, Op::Xsavec, Op::Fxsave],
            _ => &[Op::Xsave, Op::Fxsave],
        };
        match r.below(10) {
            // A save of any form.
            0 | 1 => {
                let op = saves[r.below(saves.len() as u64) as usize];
                steps.push(Step::new(op, rfbm(r), b1 + misalign(r)));
            }
            // The modified optimization: XRSTOR(S) from A, maybe a write into A, XSAVEOPT or
            // XSAVES to A (twice).
            2 | 3 => {
                let (save, restore) = if p.xsaves && r.pct(40) {
                    (Op::Xsaves, Op::Xrstors)
                } else {
                    (
                        if p.xsaveopt { Op::Xsaveopt } else { Op::Xsave },
                        Op::Xrstor,
                    )
                };
                let first = if save == Op::Xsaves {
                    Op::Xsaves
                } else {
                    Op::Xsave
                };
                let m = if r.pct(50) { u64::MAX } else { rfbm(r) };
                // XSAVE writes only the XSTATE_BV bits of RFBM: a clean header first, or the
                // restore below faults on the random bytes (SDM Vol. 1 §13.8.1).
                if first == Op::Xsave && r.pct(90) {
                    steps.push(Step::new(Op::Zero, 64, b1 + 512));
                }
                steps.push(Step::new(first, u64::MAX, b1));
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
                if matches!(op, Op::Xsave | Op::Xsaveopt | Op::Fxsave) && r.pct(85) {
                    steps.push(Step::new(Op::Zero, 64, b1 + 512));
                }
                steps.push(Step::new(op, u64::MAX, b1));
                for _ in 0..r.below(3) {
                    let at = match r.below(4) {
                        0 => 512 + r.below(64),
                        1 => 24 + r.below(4),
                        2 => r.below(11008),
                        _ => 512 + 8 * r.below(3) + 7,
                    };
                    let v = if r.pct(50) {
                        1u64 << r.below(8)
                    } else {
                        r.next()
                    };
                    steps.push(Step::new(Op::Store8, v, b1 + at));
                }
                let restore = match op {
                    Op::Fxsave => Op::Fxrstor,
                    Op::Xsaves => Op::Xrstors,
                    _ => Op::Xrstor,
                };
                let restore = if r.pct(15) {
                    [Op::Xrstor, Op::Xrstors, Op::Fxrstor][r.below(3) as usize]
                } else {
                    restore
                };
                steps.push(Step::new(restore, rfbm(r), b1 + misalign(r)));
            }
            // XSETBV, aimed at each rule of SDM Vol. 2 XSETBV: a valid value; any subset of
            // the supported bits (x87 clear, AVX without SSE, part of AVX-512 or of AMX); a
            // valid value plus an unsupported or supervisor bit; a valid value less one bit.
            6 => {
                let v = match r.below(4) {
                    0 => self.random_xcr0(r),
                    1 => self.xcr0_supported & r.next(),
                    2 => self.random_xcr0(r) | 1 << r.below(64),
                    _ => self.random_xcr0(r) & !(1 << r.below(20)),
                };
                steps.push(Step::new(Op::Xsetbv, v, 0));
            }
            // IA32_XSS with an arbitrary value, XGETBV with ECX 0, 1 or 2.
            7 => {
                if p.xsaves {
                    let v = if r.pct(70) {
                        self.xss_supported & r.next()
                    } else {
                        r.next() & (r.next() | self.xss_supported)
                    };
                    steps.push(Step::new(Op::WrXss, v, 0));
                }
                steps.push(Step::new(Op::Xgetbv, r.below(3), b1 + 8 * r.below(8)));
            }
            // TILERELEASE (#UD unless AMX is enabled in XCR0).
            8 => {
                if self.xcr0_supported & mask::AMX != 0 {
                    steps.push(Step::new(Op::Tilerelease, 0, 0));
                } else {
                    steps.push(Step::new(Op::Xgetbv, 1, b1));
                }
            }
            // CR0.TS = 1 (#NM) or CR4.OSXSAVE = 0 (#UD) around one instruction of any kind.
            _ => {
                let (ctl, off) = if r.pct(50) {
                    (Op::Cr0Ts, 1)
                } else {
                    (Op::Cr4Osxsave, 0)
                };
                steps.push(Step::new(ctl, off, 0));
                let op = [
                    Op::Xsave,
                    Op::Xsavec,
                    Op::Xsaves,
                    Op::Fxsave,
                    Op::Xrstor,
                    Op::Xgetbv,
                    Op::Xsetbv,
                ][r.below(7) as usize];
                let arg = match op {
                    Op::Xgetbv => r.below(2),
                    Op::Xsetbv => self.random_xcr0(r),
                    _ => u64::MAX,
                };
                steps.push(Step::new(op, arg, b1));
                steps.push(Step::new(ctl, 1 - off, 0));
            }
        }
    }

    /// Runs the program on a fresh model; returns the vector of each step.
    fn run_model(
        &self,
        steps: &[Step],
        mem: &mut [Vec<u8>],
        mut quirks: Option<&mut Quirks>,
    ) -> Vec<u64> {
        let base = bases();
        let mut m = ModelCpu::new(self.profile.clone());
        let mut out = Vec::with_capacity(steps.len());
        for s in steps {
            let (bi, off) = locate(&base, s.addr);
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
                Op::Xgetbv => m
                    .xgetbv(s.arg as u32)
                    .map(|v| buf[off..off + 8].copy_from_slice(&v.to_le_bytes())),
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
                Op::Cr0Ts => {
                    m.cr0_ts = s.arg != 0;
                    Ok(())
                }
                Op::Cr4Osxsave => {
                    m.cr4_osxsave = s.arg != 0;
                    Ok(())
                }
            };
            let mut cleared = false;
            if let Some(q) = quirks.as_deref_mut() {
                cleared = q.after(
                    &mut m,
                    s,
                    res.as_ref().err().map(|f| f.rule),
                    &mut buf[off..],
                );
            }
            out.push(match res {
                Ok(()) => NO_FAULT,
                Err(_) if cleared => NO_FAULT,
                Err(f) => vector_of(f.exception),
            });
        }
        out
    }
}

/// The addresses of the CPU buffers.
fn bases() -> [u64; NBUF] {
    // SAFETY: only the address of the static is taken.
    let b = unsafe { &*core::ptr::addr_of!(CPU_BUFS) };
    core::array::from_fn(|i| b.0[i].as_ptr() as u64)
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
        if st.vector != NO_FAULT {
            s.push_str(&format!(" {}", vec_name(st.vector)));
        }
    }
    s
}
