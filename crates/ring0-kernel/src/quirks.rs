//! Known deviations of the executor (Bochs, or QEMU TCG: each entry belongs to one) from the model, imitated on a second model run so
//! that the differential applies them narrowly: a case counts as a known difference only when
//! the imitation makes it agree completely, and a listed deviation whose precondition holds on
//! this CPU but that never occurred in a run of 100 cases or more fails the run (the list stays
//! true). docs/ring0.md lists each with its SDM section and the Bochs code behind it.

use alloc::vec::Vec;

use xstate::components::mask;
use xstate::model::{ModelCpu, Msr};

use crate::program::{Op, Step};

/// Identifiers of the listed deviations (index into `Quirks::entries`).
pub const TILEDATA_XINUSE_INVERTED: usize = 0;
/// See `Quirks::new`.
pub const NO_MODIFIED_OPTIMIZATION: usize = 1;
/// See `Quirks::new`.
pub const PKRU_BYTES_4_7_NOT_WRITTEN: usize = 2;
/// See `Quirks::new`.
pub const XSAVE_SSE_BIT_FROM_MXCSR: usize = 3;
/// See `Quirks::new`.
pub const TILECFG_RESTORE_CLEARS_TILEDATA: usize = 4;
/// See `Quirks::new`.
pub const TILECFG_SAVE_SWAPS_ROWS_COLSB: usize = 5;
/// See `Quirks::new`.
pub const TILEDATA_ROWS_8_15_NOT_TRANSFERRED: usize = 6;
/// See `Quirks::new`.
pub const FAULTING_RESTORE_PARTIALLY_APPLIED: usize = 7;
/// See `Quirks::new`.
pub const COMPACTED_RESTORE_ACCEPTS_XSTATE_BV_63: usize = 8;
/// See `Quirks::new`.
pub const FIP_KEEPS_64_BITS: usize = 9;
/// See `Quirks::new` (QEMU).
pub const QEMU_XINUSE_ALL_ONES: usize = 10;
/// See `Quirks::new` (QEMU).
pub const QEMU_FOP_NOT_WRITTEN: usize = 11;
/// See `Quirks::new` (QEMU).
pub const QEMU_ST_RESERVED_NOT_WRITTEN: usize = 12;
/// See `Quirks::new` (QEMU).
pub const QEMU_XSAVE_IGNORES_CR0_TS: usize = 13;
/// See `Quirks::new` (QEMU).
pub const QEMU_MXCSR_RESERVED_ACCEPTED: usize = 14;
/// See `Quirks::new` (QEMU).
pub const QEMU_BNDCSR_BYTES_16_63_NOT_WRITTEN: usize = 15;
/// See `Quirks::new` (QEMU).
pub const QEMU_MXCSR_ONLY_WITH_SSE: usize = 16;
/// See `Quirks::new` (QEMU).
pub const QEMU_FSW_AS_LOADED: usize = 17;

/// One listed deviation.
#[derive(Clone, Copy)]
pub struct Entry {
    /// Identifier printed in the summary.
    pub id: &'static str,
    /// Whether the deviation can occur on this CPU (its feature is present).
    pub possible: bool,
    /// Cases it explained in this run.
    pub hits: u64,
    applied: bool,
}

/// The list, and the imitation state of one quirked model run.
#[derive(Clone)]
pub struct Quirks {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Bochs's tile-use tracker is non-zero (TILEDATA loaded since the last clear).
    tiles_used: bool,
    /// XINUSE\[1\] before a step whose imitation raised it.
    saved_sse_bit: Option<u64>,
    /// PKRU bytes 4..7 as they were in memory before a save that writes PKRU (offset, bytes).
    pkru_upper: Option<(usize, [u8; 4])>,
    /// The entries imitated in this run (bit i: entry i), for ablation and directed cases.
    pub enabled: u64,
    /// Where a save writes TILECFG (rewritten in Bochs's format afterwards).
    tilecfg_at: Option<usize>,
    /// Rows 8..15 of each tile as they were in memory before a save that writes TILEDATA
    /// (offset, 8 × 512 bytes).
    tile_rows: Option<(usize, Vec<u8>)>,
    /// Standard offsets of PKRU and TILEDATA.
    pkru_std: Option<u32>,
    tiledata_std: Option<u32>,
    tilecfg_std: Option<u32>,
    /// QEMU: bytes 6..7 and the reserved bytes of the ST slots as they were in memory before a
    /// save that writes x87 (offset of the legacy area, 8 + 8 × 6 bytes).
    x87_kept: Option<(usize, [u8; 50])>,
    /// QEMU: CR0.TS cleared around a save or restore (set again after it).
    ts_lifted: bool,
    /// QEMU: MXCSR as loaded with reserved bits (the model holds it masked).
    mxcsr_raw: Option<u32>,
    /// Standard offset of BNDCSR (component 4), set by the caller where MPX exists.
    pub bndcsr_std: Option<u32>,
    /// QEMU: BNDCSR bytes 16..63 as they were in memory before a save (offset, bytes).
    bndcsr_kept: Option<(usize, [u8; 48])>,
    /// QEMU: MXCSR before a standard-form XRSTOR with RFBM[2] and without RFBM[1].
    mxcsr_before: Option<(u32, Option<u32>)>,
    /// QEMU: bytes 24..31 as they were in memory before an XSAVE with RFBM[2] only.
    mxcsr_bytes_kept: Option<[u8; 8]>,
}

fn bit(v: u64, i: u32) -> bool {
    v >> i & 1 != 0
}

impl Quirks {
    /// The list for a CPU with the given XCR0/IA32_XSS support and standard offsets.
    pub fn new(
        xcr0_supported: u64,
        pkru_std: Option<u32>,
        tilecfg_std: Option<u32>,
        tiledata_std: Option<u32>,
        xsaveopt: bool,
        fip_truncated: bool,
        bochs: bool,
    ) -> Quirks {
        let amx = xcr0_supported & mask::AMX == mask::AMX;
        // Entries of Bochs (`e`) and of QEMU TCG (`q`): each applies to its executor only.
        let e = |id, possible: bool| Entry {
            id,
            possible: possible && bochs,
            hits: 0,
            applied: false,
        };
        let q = |id, possible: bool| Entry {
            id,
            possible: possible && !bochs,
            hits: 0,
            applied: false,
        };
        Quirks {
            entries: alloc::vec![
                // Bochs: xsave_tiledata_state_xinuse() returns tile_use_tracker == 0, i.e.
                // "in use" exactly when no tile was loaded; SDM Vol. 1 §13.6 requires
                // XINUSE[18] = 1 whenever TILEDATA is not in its initial configuration.
                e("tiledata_xinuse_inverted", amx),
                // Bochs: XSAVEOPT and XSAVES use only the init optimization; the model (SDM
                // Vol. 1 §13.9, §13.11) also skips components unmodified since an XRSTOR(S)
                // from the same address. Both are allowed ("may").
                // (QEMU TCG too: its XSAVEOPT has no modified optimization either.)
                Entry {
                    id: "no_modified_optimization",
                    possible: xsaveopt,
                    hits: 0,
                    applied: false,
                },
                // Bochs writes PKRU as a doubleword: bytes 4..7 of the 8-byte component keep
                // their memory contents; the model writes them as 0 (SDM Vol. 1 §13.5.7 gives
                // PKRU bytes 3:0 only; silicon not checked).
                e(
                    "pkru_bytes_4_7_not_written",
                    xcr0_supported & mask::PKRU != 0
                ),
                // Bochs: get_xinuse_vector() sets bit 1 when MXCSR ≠ 1F80H for XSAVE and
                // XSAVEOPT too, so XSTATE_BV[1] = 1 with all XMM registers zero; the model
                // follows §13.6 ("XINUSE[1] pertains only to the XMM registers"); a 1 for a
                // component in its initial configuration is allowed.
                e("xsave_sse_bit_from_mxcsr", true),
                // Bochs: restoring or initializing TILECFG (configure_tiles / amx->clear())
                // also zeroes TILEDATA and its use tracker, even when RFBM[18] = 0.
                e("tilecfg_restore_clears_tiledata", amx),
                // Bochs: xsave_tilecfg_state() stores rows[n] as a word at 16 + 2n and
                // colsb[n] as a byte at 48 + n, swapped against its own LDTILECFG reader and
                // the TILECFG format (SDM Vol. 2 LDTILECFG: colsb words at 16.., rows bytes at
                // 48..). Checked by the directed case of `diff`.
                e("tilecfg_save_swaps_rows_colsb", amx),
                // Bochs: xsave_tiledata_state()/xrstor_tiledata_state() loop over
                // BX_TILE_REGISTERS (8) rows instead of BX_TILE_MAX_ROWS (16): rows 8..15 of
                // each 1024-byte tile are neither written by saves nor loaded by restores (the
                // registers stay zero); SDM Vol. 1 §13.5.x: TILEDATA is 8192 bytes, 8 tiles of
                // 16 rows of 64 bytes.
                e("tiledata_rows_8_15_not_transferred", amx),
                // Bochs: XRSTOR/XRSTORS initialize the components with XSTATE_BV[i] = 0 and
                // load x87 (compacted form: and the XMM registers) before checking MXCSR
                // against MXCSR_MASK, so the #GP leaves them changed; a fault leaves the
                // processor state as it was before the instruction (SDM Vol. 3 §6.5 "Faults").
                e("faulting_restore_partially_applied", true),
                // Bochs: the compacted-form check is XSTATE_BV & ~XCOMP_BV with XCOMP_BV's
                // bit 63 set, so XSTATE_BV[63] = 1 passes and is ignored; SDM Vol. 1 §13.8.2
                // (XSTATE_BV must be within XCOMP_BV[62:0]) and silicon fault: #GP measured
                // on this project's Intel Xeon (family 6, model 0xa7) and AMD Zen 5.
                e("compacted_restore_accepts_xstate_bv_63", true),
                // Bochs keeps all 64 bits of FIP loaded by FXRSTOR/XRSTOR in 64-bit mode;
                // silicon keeps 57 (bits 63:57 read back as copies of bit 56: measured on AMD
                // Zen 5 and on the Intel Xeon, family 6 model 0xA7, CpuProfile::fip_bits). The
                // SDM gives FIP 64 bits in the FXSAVE64 format (Vol. 2 FXSAVE, Table 3-55).
                e("fip_keeps_64_bits", fip_truncated),
                // QEMU TCG (7.2): XINUSE is not tracked — XGETBV(1) and the XSTATE_BV of
                // XSAVE/XSAVEOPT report every enabled component in use except BNDREGS (MPX
                // bound registers, tracked on write). SDM Vol. 1 §13.6 allows XINUSE[i] = 1
                // for a component in its initial configuration.
                q("xinuse_all_ones", true),
                // QEMU TCG: FXSAVE/XSAVE do not write FOP (bytes 6-7 keep their memory
                // contents); SDM Vol. 2 FXSAVE (Table 3-53): bytes 7:6 hold FOP.
                q("fop_not_written", true),
                // QEMU TCG: bytes 10-15 of each 16-byte ST/MM slot (reserved, SDM Vol. 2
                // FXSAVE) are not written; silicon (Zen 5, the Intel Xeon) writes them as 0.
                q("st_slot_reserved_bytes_not_written", true),
                // QEMU TCG: XSAVE, XSAVEOPT and XRSTOR do not raise #NM with CR0.TS = 1
                // (SDM Vol. 2 XSAVE/XRSTOR: #NM if CR0.TS[bit 3] = 1); FXSAVE/FXRSTOR do.
                q("xsave_ignores_cr0_ts", true),
                // QEMU TCG: FXRSTOR/XRSTOR load an MXCSR with bits outside MXCSR_MASK without
                // #GP (SDM Vol. 2 FXRSTOR, Vol. 1 §13.8: #GP) and keep them: later saves write
                // them back.
                q("mxcsr_reserved_bits_accepted", true),
                // QEMU TCG: of the 64-byte BNDCSR component (CPUID.(0xD,4).EAX = 64) only
                // BNDCFGU and BNDSTATUS (bytes 0-15, SDM Vol. 1 §13.5.4) are saved and loaded;
                // bytes 16-63 keep their memory contents on a save.
                q(
                    "bndcsr_bytes_16_63_not_written",
                    xcr0_supported & mask::BNDCSR != 0
                ),
                // QEMU TCG: MXCSR goes with SSE only — a standard-form XRSTOR with RFBM[2] = 1
                // and RFBM[1] = 0 leaves MXCSR as it was, and XSAVE/XSAVEOPT with that RFBM
                // leave bytes 24-31 (MXCSR, MXCSR_MASK) as they were in memory; SDM Vol. 1
                // §13.8.1 and §13.7: MXCSR is loaded/saved when RFBM[1] or RFBM[2] is 1.
                q("mxcsr_only_with_sse", xcr0_supported & mask::AVX != 0),
                // QEMU TCG: FXRSTOR/XRSTOR keep FSW.ES (bit 7) as loaded and make FSW.B (bit 15)
                // a copy of it;
                // silicon recomputes them from the exception flags and FCW masks (measured on
                // Zen 5 and the Intel Xeon; SDM Vol. 1 §8.1.3: ES is set when any unmasked
                // exception flag is set).
                q("fsw_es_b_as_loaded", true),
            ],
            tiles_used: false,
            enabled: u64::MAX,
            tilecfg_at: None,
            saved_sse_bit: None,
            pkru_upper: None,
            tile_rows: None,
            pkru_std,
            tiledata_std,
            tilecfg_std,
            x87_kept: None,
            ts_lifted: false,
            mxcsr_raw: None,
            bndcsr_std: None,
            bndcsr_kept: None,
            mxcsr_before: None,
            mxcsr_bytes_kept: None,
        }
    }

    /// Whether entry `i` is imitated in this run.
    fn on(&self, i: usize) -> bool {
        self.entries.get(i).is_some_and(|e| e.possible) && self.enabled >> i & 1 != 0
    }

    /// The entries whose imitation changed something in this run (bit i: entry i).
    pub fn applied(&self) -> u64 {
        let mut m = 0;
        for (i, e) in self.entries.iter().enumerate() {
            if e.applied {
                m |= 1 << i;
            }
        }
        m
    }

    fn apply(&mut self, i: usize) {
        if let Some(e) = self.entries.get_mut(i) {
            e.applied = true;
        }
    }

    /// Effective RFBM of a save or restore step on the model's control state.
    fn rfbm(m: &ModelCpu, s: &Step) -> u64 {
        let xcr0 = m.xgetbv(0).unwrap_or(1);
        let xss = m.rdmsr(Msr::Xss).unwrap_or(0);
        match s.op {
            Op::Xsaves | Op::Xrstors => s.arg & (xcr0 | xss),
            _ => s.arg & xcr0,
        }
    }

    /// Before a step runs on the quirked model. `mem` is the model's memory from the step's
    /// operand on.
    pub fn before(&mut self, m: &mut ModelCpu, s: &Step, mem: &[u8]) {
        // The tile-use tracker decides Bochs's XINUSE[18].
        if self.on(TILEDATA_XINUSE_INVERTED) {
            let bochs = if self.tiles_used { 0 } else { 1u64 << 18 };
            if m.xinuse() & (1 << 18) != bochs {
                m.set_xinuse((m.xinuse() & !(1 << 18)) | bochs);
                self.apply(TILEDATA_XINUSE_INVERTED);
            }
        }
        if self.on(QEMU_XINUSE_ALL_ONES) {
            let xcr0 = m.xgetbv(0).unwrap_or(1);
            let all = m.xinuse() | (xcr0 & !mask::BNDREGS);
            if m.xinuse() != all {
                m.set_xinuse(all);
                self.apply(QEMU_XINUSE_ALL_ONES);
            }
        }
        if self.on(QEMU_XSAVE_IGNORES_CR0_TS)
            && m.cr0_ts
            && matches!(s.op, Op::Xsave | Op::Xsaveopt | Op::Xrstor)
        {
            m.cr0_ts = false;
            self.ts_lifted = true;
        }
        let rfbm = Self::rfbm(m, s);
        self.x87_kept = None;
        let x87_written = match s.op {
            Op::Fxsave => true,
            Op::Xsave => bit(rfbm, 0),
            Op::Xsaveopt => bit(rfbm, 0) && bit(m.xinuse(), 0),
            _ => false,
        };
        if x87_written
            && (self.on(QEMU_FOP_NOT_WRITTEN) || self.on(QEMU_ST_RESERVED_NOT_WRITTEN))
            && mem.len() >= 160
        {
            let mut k = [0u8; 50];
            k[0..2].copy_from_slice(&mem[6..8]);
            for i in 0..8 {
                k[2 + 6 * i..8 + 6 * i].copy_from_slice(&mem[42 + 16 * i..48 + 16 * i]);
            }
            self.x87_kept = Some((0, k));
        }
        self.bndcsr_kept = None;
        self.mxcsr_before = None;
        if self.on(QEMU_MXCSR_ONLY_WITH_SSE)
            && s.op == Op::Xrstor
            && !bit(rfbm, 1)
            && bit(rfbm, 2)
            && mem.get(527).is_some_and(|b| b & 0x80 == 0)
        {
            self.mxcsr_before = Some((m.mxcsr(), self.mxcsr_raw));
        }
        self.mxcsr_bytes_kept = None;
        if self.on(QEMU_MXCSR_ONLY_WITH_SSE)
            && matches!(s.op, Op::Xsave | Op::Xsaveopt)
            && !bit(rfbm, 1)
            && bit(rfbm, 2)
        {
            if let Some(b) = mem.get(24..32) {
                let mut k = [0u8; 8];
                k.copy_from_slice(b);
                self.mxcsr_bytes_kept = Some(k);
            }
        }
        if let (true, Some(o), Op::Xsave | Op::Xsaveopt) = (
            self.on(QEMU_BNDCSR_BYTES_16_63_NOT_WRITTEN),
            self.bndcsr_std,
            s.op,
        ) {
            let o = o as usize;
            if bit(rfbm, 4) {
                if let Some(b) = mem.get(o + 16..o + 64) {
                    let mut k = [0u8; 48];
                    k.copy_from_slice(b);
                    self.bndcsr_kept = Some((o, k));
                }
            }
        }
        if self.on(XSAVE_SSE_BIT_FROM_MXCSR)
            && matches!(s.op, Op::Xsave | Op::Xsaveopt)
            && bit(rfbm, 1)
            && m.mxcsr() != 0x1f80
            && !bit(m.xinuse(), 1)
        {
            self.saved_sse_bit = Some(m.xinuse());
            m.set_xinuse(m.xinuse() | 2);
            self.apply(XSAVE_SSE_BIT_FROM_MXCSR);
        }
        if self.on(NO_MODIFIED_OPTIMIZATION)
            && matches!(s.op, Op::Xsaveopt | Op::Xsaves)
            && m.xrstor_info().is_some()
        {
            m.clear_xrstor_info();
            self.apply(NO_MODIFIED_OPTIMIZATION);
        }
        // Where this save writes PKRU and TILEDATA: remember the bytes Bochs leaves alone.
        self.pkru_upper = None;
        self.tile_rows = None;
        self.tilecfg_at = None;
        let written = match s.op {
            Op::Xsave => rfbm,
            Op::Xsaveopt | Op::Xsavec | Op::Xsaves => rfbm & m.xinuse(),
            _ => 0,
        };
        let offset = |id: u8| -> Option<usize> {
            match s.op {
                Op::Xsave | Op::Xsaveopt => match id {
                    9 => self.pkru_std,
                    17 => self.tilecfg_std,
                    _ => self.tiledata_std,
                }
                .map(|o| o as usize),
                _ => m
                    .profile()
                    .layout
                    .compacted(rfbm)
                    .ok()
                    .and_then(|l| l.offset_of(id))
                    .map(|o| o as usize),
            }
        };
        if bit(written, 17) && self.on(TILECFG_SAVE_SWAPS_ROWS_COLSB) {
            self.tilecfg_at = offset(17);
        }
        if bit(written, 9) && self.on(PKRU_BYTES_4_7_NOT_WRITTEN) {
            if let Some(o) = offset(9) {
                if let Some(b) = mem.get(o + 4..o + 8) {
                    self.pkru_upper = Some((o, [b[0], b[1], b[2], b[3]]));
                }
            }
        }
        if bit(written, 18) && self.on(TILEDATA_ROWS_8_15_NOT_TRANSFERRED) {
            if let Some(o) = offset(18) {
                if mem.len() >= o + 8192 {
                    let mut v = Vec::with_capacity(4096);
                    for t in 0..8 {
                        v.extend_from_slice(&mem[o + 1024 * t + 512..o + 1024 * t + 1024]);
                    }
                    self.tile_rows = Some((o, v));
                }
            }
        }
    }

    /// After a step ran on the quirked model (`ok`: it did not fault).
    ///
    /// Returns true when the imitation turned the model's fault into a completed instruction.
    pub fn after(
        &mut self,
        m: &mut ModelCpu,
        s: &Step,
        fault: Option<&str>,
        mem: &mut [u8],
    ) -> bool {
        if self.ts_lifted {
            self.ts_lifted = false;
            m.cr0_ts = true;
            if fault.is_none_or(|r| !r.contains("CR0.TS")) {
                self.apply(QEMU_XSAVE_IGNORES_CR0_TS);
            }
        }
        if let (Some(rule), Op::Xrstor | Op::Fxrstor) = (fault, s.op) {
            if rule.contains("MXCSR_MASK") && self.on(QEMU_MXCSR_RESERVED_ACCEPTED) {
                if let Some(b) = mem.get(24..28) {
                    let raw = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    let mut img = mem.to_vec();
                    let masked = raw & m.profile().mxcsr_mask;
                    img[24..28].copy_from_slice(&masked.to_le_bytes());
                    let r = if s.op == Op::Fxrstor {
                        m.fxrstor(&img, s.addr)
                    } else {
                        m.xrstor(&img, s.addr, s.arg)
                    };
                    if r.is_ok() {
                        self.apply(QEMU_MXCSR_RESERVED_ACCEPTED);
                        if m.mxcsr() == masked {
                            self.mxcsr_raw = Some(raw);
                        }
                        self.after(m, s, None, &mut img);
                        return true;
                    }
                }
            }
        }
        if let (Some(rule), Op::Xrstor | Op::Xrstors) = (fault, s.op) {
            if rule.contains("XCOMP_BV[62:0] (bit 63 included")
                && self.on(COMPACTED_RESTORE_ACCEPTS_XSTATE_BV_63)
            {
                let hdr = |o: usize| {
                    mem.get(o..o + 8).map_or(0, |b| {
                        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                    })
                };
                let (bv, comp) = (hdr(512), hdr(520));
                if bv & mask::COMPACTED != 0 && bv & !comp == 0 {
                    let mut img = mem.to_vec();
                    img[519] &= 0x7f;
                    let r = if s.op == Op::Xrstors {
                        m.xrstors(&img, s.addr, s.arg)
                    } else {
                        m.xrstor(&img, s.addr, s.arg)
                    };
                    if r.is_ok() {
                        self.apply(COMPACTED_RESTORE_ACCEPTS_XSTATE_BV_63);
                        self.after(m, s, None, &mut img);
                        return true;
                    }
                }
            }
        }
        let ok = fault.is_none();
        if let (Some(rule), Op::Xrstor | Op::Xrstors) = (fault, s.op) {
            if rule.contains("MXCSR") && self.on(FAULTING_RESTORE_PARTIALLY_APPLIED) {
                self.partial_restore(m, s, mem);
            }
        }
        if let Some(x) = self.saved_sse_bit.take() {
            m.set_xinuse((m.xinuse() & !2) | (x & 2));
        }
        let pkru = self.pkru_upper.take();
        let rows = self.tile_rows.take();
        let tilecfg = self.tilecfg_at.take();
        let x87_kept = self.x87_kept.take();
        let bndcsr = self.bndcsr_kept.take();
        let mxcsr_before = self.mxcsr_before.take();
        let mxcsr_bytes = self.mxcsr_bytes_kept.take();
        if !ok {
            return false;
        }
        if let Some(k) = mxcsr_bytes {
            if mem.get(24..32).is_some_and(|b| b != k) {
                mem[24..32].copy_from_slice(&k);
                self.apply(QEMU_MXCSR_ONLY_WITH_SSE);
            }
        }
        if let Some((old, raw)) = mxcsr_before {
            // MXCSR (and a raw value it held) as before the instruction.
            if self.mxcsr_raw != raw {
                self.mxcsr_raw = raw;
                self.apply(QEMU_MXCSR_ONLY_WITH_SSE);
            }
            if m.mxcsr() != old {
                let xin = m.xinuse();
                if m.exec(xstate::model::SimpleInsn::Ldmxcsr(old)).is_ok() {
                    m.set_xinuse(xin);
                    self.apply(QEMU_MXCSR_ONLY_WITH_SSE);
                }
            }
        }
        let x87_from_mem = match s.op {
            Op::Fxrstor => true,
            Op::Xrstor => bit(Self::rfbm(m, s), 0) && mem.get(512).is_some_and(|b| b & 1 != 0),
            _ => false,
        };
        if x87_from_mem && self.on(QEMU_FSW_AS_LOADED) {
            if let Some(b) = mem.get(2..4) {
                // ES as loaded, B a copy of it.
                let fsw = u16::from_le_bytes([b[0], b[1]]) & !0x8000;
                let fsw = fsw | if fsw & 0x80 != 0 { 0x8000 } else { 0 };
                if m.x87().fsw != fsw {
                    let mut x = *m.x87();
                    x.fsw = fsw;
                    let xin = m.xinuse();
                    m.set_x87(x);
                    m.set_xinuse(xin);
                    self.apply(QEMU_FSW_AS_LOADED);
                }
            }
        }
        if let Some((o, k)) = bndcsr {
            if mem.get(o + 16..o + 64).is_some_and(|b| b != k) {
                mem[o + 16..o + 64].copy_from_slice(&k);
                self.apply(QEMU_BNDCSR_BYTES_16_63_NOT_WRITTEN);
            }
        }
        // MXCSR: a raw value lives until MXCSR is loaded again; saves write it back.
        if let Some(raw) = self.mxcsr_raw {
            if m.mxcsr() != raw & m.profile().mxcsr_mask {
                self.mxcsr_raw = None;
            } else {
                let rf = Self::rfbm(m, s);
                let writes = match s.op {
                    Op::Fxsave => true,
                    Op::Xsave | Op::Xsaveopt => {
                        rf & mask::SSE != 0
                            || (rf & mask::AVX != 0 && !self.on(QEMU_MXCSR_ONLY_WITH_SSE))
                    }
                    _ => false,
                };
                if writes {
                    if let Some(d) = mem.get_mut(24..28) {
                        d.copy_from_slice(&raw.to_le_bytes());
                    }
                }
            }
        }
        if let Some((_, k)) = x87_kept {
            if self.on(QEMU_FOP_NOT_WRITTEN) && mem.get(6..8).is_some_and(|b| b != &k[0..2]) {
                mem[6..8].copy_from_slice(&k[0..2]);
                self.apply(QEMU_FOP_NOT_WRITTEN);
            }
            if self.on(QEMU_ST_RESERVED_NOT_WRITTEN) {
                for i in 0..8 {
                    let (o, src) = (42 + 16 * i, &k[2 + 6 * i..8 + 6 * i]);
                    if mem.get(o..o + 6).is_some_and(|b| b != src) {
                        mem[o..o + 6].copy_from_slice(src);
                        self.apply(QEMU_ST_RESERVED_NOT_WRITTEN);
                    }
                }
            }
        }
        if let (Some(o), Some(c)) = (tilecfg, m.component(17)) {
            // Bochs's xsave_tilecfg_state(): palette, start_row, then rows[n] as a word at
            // 16 + 2n and colsb[n] (truncated to a byte) at 48 + n, n < 8; zero when the
            // palette is 0.
            let mut b = [0u8; 64];
            if c[0] != 0 {
                b[0] = c[0];
                b[1] = c[1];
                for n in 0..8 {
                    let rows = u16::from(c[48 + n]);
                    b[16 + 2 * n..18 + 2 * n].copy_from_slice(&rows.to_le_bytes());
                    b[48 + n] = c[16 + 2 * n];
                }
            }
            if let Some(dst) = mem.get_mut(o..o + 64) {
                if dst != b {
                    dst.copy_from_slice(&b);
                    self.apply(TILECFG_SAVE_SWAPS_ROWS_COLSB);
                }
            }
        }
        let rfbm = Self::rfbm(m, s);
        if let Some((o, b)) = pkru {
            if mem.get(o + 4..o + 8).is_some_and(|cur| cur != b) {
                mem[o + 4..o + 8].copy_from_slice(&b);
                self.apply(PKRU_BYTES_4_7_NOT_WRITTEN);
            }
        }
        match s.op {
            // XSAVE writes TILEDATA's registers although Bochs reports it not in use.
            Op::Xsave if bit(rfbm, 18) && self.tiles_used && self.on(TILEDATA_XINUSE_INVERTED) => {
                if let (Some(o), Some(data)) = (self.tiledata_std, m.component(18)) {
                    let o = o as usize;
                    if let Some(dst) = mem.get_mut(o..o + data.len()) {
                        if dst != data {
                            dst.copy_from_slice(data);
                            self.apply(TILEDATA_XINUSE_INVERTED);
                        }
                    }
                }
            }
            Op::Xrstor | Op::Xrstors if rfbm & mask::AMX != 0 => {
                let compacted = mem.get(520..528).is_some_and(|b| b[7] & 0x80 != 0);
                let xstate_bv = mem.get(512..520).map_or(0, |b| {
                    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                });
                let _ = compacted;
                if bit(rfbm, 17) {
                    // configure_tiles()/clear(): every tile zeroed, tracker cleared.
                    self.tiles_used = false;
                    if !bit(rfbm, 18) {
                        self.clear_tiledata(m);
                    }
                }
                if bit(rfbm, 18) {
                    self.tiles_used = bit(xstate_bv, 18);
                }
                // Rows 8..15 of every tile were not loaded: Bochs's registers keep zeros there.
                if let (true, Some(d)) =
                    (self.on(TILEDATA_ROWS_8_15_NOT_TRANSFERRED), m.component(18))
                {
                    if (0..8).any(|t| d[1024 * t + 512..1024 * t + 1024].iter().any(|&x| x != 0)) {
                        let mut z = d.to_vec();
                        for t in 0..8 {
                            z[1024 * t + 512..1024 * t + 1024].fill(0);
                        }
                        let xin = m.xinuse();
                        m.set_component(18, &z);
                        m.set_xinuse(xin);
                        self.apply(TILEDATA_ROWS_8_15_NOT_TRANSFERRED);
                    }
                }
            }
            Op::Tilerelease => self.tiles_used = false,
            _ => {}
        }
        // FIP as loaded, all 64 bits, wherever x87 state came from memory.
        let x87_loaded = match s.op {
            Op::Fxrstor => true,
            Op::Xrstor | Op::Xrstors => bit(rfbm, 0) && mem.get(512).is_some_and(|b| b & 1 != 0),
            _ => false,
        };
        if x87_loaded && self.on(FIP_KEEPS_64_BITS) {
            if let Some(b) = mem.get(8..16) {
                let fip = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if m.x87().fip != fip {
                    let mut x = *m.x87();
                    x.fip = fip;
                    let xin = m.xinuse();
                    m.set_x87(x);
                    m.set_xinuse(xin);
                    self.apply(FIP_KEEPS_64_BITS);
                }
            }
        }
        // Last: the rows Bochs does not write keep their memory contents.
        if let Some((o, v)) = rows {
            for t in 0..8 {
                let dst = &mut mem[o + 1024 * t + 512..o + 1024 * t + 1024];
                let src = &v[512 * t..512 * t + 512];
                if dst != src {
                    dst.copy_from_slice(src);
                    self.apply(TILEDATA_ROWS_8_15_NOT_TRANSFERRED);
                }
            }
        }
        false
    }

    /// TILEDATA zeroed as Bochs's amx->clear() does when TILECFG is loaded or initialized.
    fn clear_tiledata(&mut self, m: &mut ModelCpu) {
        if !self.on(TILECFG_RESTORE_CLEARS_TILEDATA) {
            return;
        }
        if let Some(d) = m.component(18) {
            if d.iter().any(|&x| x != 0) {
                let zeros = alloc::vec![0u8; d.len()];
                let xin = m.xinuse();
                m.set_component(18, &zeros);
                m.set_xinuse(xin);
                self.apply(TILECFG_RESTORE_CLEARS_TILEDATA);
            }
        }
    }

    /// What Bochs did before the MXCSR #GP of a restore: the initializations, the x87 load
    /// and (compacted form) the XMM load, imitated by the same restore on the model with
    /// RFBM limited to those components and MXCSR in the image replaced by the current one.
    fn partial_restore(&mut self, m: &mut ModelCpu, s: &Step, mem: &[u8]) {
        let rfbm = Self::rfbm(m, s);
        let Some(hdr) = mem.get(512..528) else { return };
        let xstate_bv = u64::from_le_bytes(hdr[0..8].try_into().unwrap_or([0; 8]));
        let xcomp_bv = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
        let compacted = xcomp_bv & mask::COMPACTED != 0;
        let format = if compacted {
            xcomp_bv & !mask::COMPACTED
        } else {
            u64::MAX
        };
        let restore = xstate_bv & format;
        let loaded_first = if compacted {
            mask::X87 | mask::SSE
        } else {
            mask::X87
        };
        let partial = rfbm & (!restore | loaded_first);
        let mut img = mem.to_vec();
        img[24..28].copy_from_slice(&m.mxcsr().to_le_bytes());
        let before = m.clone();
        let r = if s.op == Op::Xrstors {
            m.xrstors(&img, s.addr, partial)
        } else {
            m.xrstor(&img, s.addr, partial)
        };
        if r.is_err() {
            *m = before;
            return;
        }
        // Only initializations reach components ≥ 2: Bochs's tile tracker is cleared, and
        // an initialized TILECFG clears TILEDATA too.
        if partial & mask::AMX != 0 {
            self.tiles_used = false;
            if partial & mask::XTILEDATA == 0 {
                self.clear_tiledata(m);
            }
        }
        self.apply(FAULTING_RESTORE_PARTIALLY_APPLIED);
    }

    /// Adds one hit to every entry of `m` (bit i: entry i).
    pub fn record(&mut self, m: u64) {
        for (i, e) in self.entries.iter_mut().enumerate() {
            if m >> i & 1 != 0 {
                e.hits += 1;
            }
        }
    }
}
