//! The fault conditions of the XSAVE family checked in O(1) before an instruction runs on
//! the real CPU, for one CPU's control state (XCR0, IA32_XSS, IA32_XFD): what the backends on
//! live registers ([`HwBackend`](super::live::HwBackend), `Ring0Backend`) check on their
//! hot path instead of running the model.
//!
//! * **Support** (#UD): the instruction's CPUID bit (SDM Vol. 2 "XSAVE", "XSAVEC", …).
//! * **Alignment** (#GP): 64 bytes for the XSAVE family, 16 for FXSAVE/FXRSTOR.
//! * **Extent** (the memory operand must lie inside the buffer): the standard form touches up
//!   to the end of the highest component of RFBM (SDM §13.4.2), the compacted form the
//!   compacted size of its mask (§13.4.3). The standard ends are a prefix-maximum table
//!   built once; compacted sizes are computed from a per-component table without allocating
//!   and cached for the last few masks (the engine uses one or two).
//! * **Header** (#GP, SDM §13.8.1, §13.8.2, Vol. 2 XRSTORS): [`validate::xrstor_any_ok`]
//!   and the XRSTORS header rules, one read of the header; the detailed violation list is
//!   built only for the error.
//! * **XFD** (#NM, SDM §13.14): XRSTOR(S) of a component with XSTATE_BV\[i\] = RFBM\[i\] = 1
//!   armed in IA32_XFD.
//!
//! [`validate::xrstor_any_ok`]: crate::validate::xrstor_any_ok

use alloc::format;

use crate::components::{bits, mask};
use crate::layout::{Layout, EXTENDED_START};
use crate::model::{Exception, Fault, RestoreInsn, SaveInsn};
use crate::validate::{self, RestoreConfig};

/// Cached compacted geometry of one mask: its size and the offsets of the components whose
/// values matter to the checks (PKRU, CET_U, CET_S; 0 when absent).
#[derive(Clone, Copy, Debug, Default)]
struct Compacted {
    mask: u64,
    size: u32,
    pkru: u32,
    cet_u: u32,
    cet_s: u32,
}

const CACHE: usize = 4;

/// The O(1) fault checks of one CPU (see the module docs). No allocation after [`new`](Self::new)
/// except to describe a fault.
#[derive(Clone, Debug)]
pub struct InsnGuard {
    /// XCR0 the checks assume.
    pub xcr0: u64,
    /// IA32_XSS the checks assume (XSAVES/XRSTORS).
    pub xss: u64,
    /// IA32_XFD the checks assume.
    pub xfd: u64,
    cfg: RestoreConfig,
    xsave: bool,
    xsaveopt: bool,
    xsavec: bool,
    xsaves: bool,
    fxsr: bool,
    /// Size and 64-byte alignment of each component (CPUID.(0xD,i).EAX, ECX\[1\]).
    size: [u32; 63],
    align64: u64,
    /// `std_end[i]`: the end of the standard form holding every user component ≤ i of XCR0.
    std_end: [u32; 64],
    pkru_std: u32,
    cache: [Compacted; CACHE],
    next: usize,
    last: usize,
}

fn fault(e: Exception, rule: &'static str, detail: alloc::string::String) -> Fault {
    Fault::with(e, rule, detail)
}

impl InsnGuard {
    /// The checks for a CPU whose leaf 0xD is `layout`, with the given instruction support,
    /// control registers and MXCSR mask.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        layout: &Layout,
        support: Support,
        xcr0: u64,
        xss: u64,
        xfd: u64,
        mxcsr_mask: u32,
    ) -> InsnGuard {
        let mut size = [0u32; 63];
        let mut align64 = 0;
        for (i, s) in size.iter_mut().enumerate() {
            let g = layout.geometry(i as u8);
            *s = g.size;
            if g.align64 {
                align64 |= 1u64 << i;
            }
        }
        let mut g = InsnGuard {
            xcr0,
            xss,
            xfd,
            cfg: RestoreConfig {
                xcr0,
                xss,
                request: u64::MAX,
                mxcsr_mask: validate::normalize_mxcsr_mask(mxcsr_mask),
                xsavec: support.xsavec,
                xsaves: support.xsaves,
                linear_address_bits: 48,
            },
            xsave: support.xsave,
            xsaveopt: support.xsaveopt,
            xsavec: support.xsavec,
            xsaves: support.xsaves,
            fxsr: support.fxsr,
            size,
            align64,
            std_end: [EXTENDED_START; 64],
            pkru_std: 0,
            cache: [Compacted::default(); CACHE],
            next: 0,
            last: 0,
        };
        g.set_control(layout, xcr0, xss, xfd);
        g
    }

    /// Takes new control register values (after XSETBV or WRMSR): recomputes the standard
    /// ends and forgets the cached compacted sizes.
    pub fn set_control(&mut self, layout: &Layout, xcr0: u64, xss: u64, xfd: u64) {
        self.xcr0 = xcr0;
        self.xss = xss;
        self.xfd = xfd;
        self.cfg.xcr0 = xcr0;
        self.cfg.xss = xss;
        let mut end = EXTENDED_START;
        for i in 0..64u8 {
            if (2..63).contains(&i) && xcr0 & (1u64 << i) != 0 {
                let g = layout.geometry(i);
                if let Some(o) = g.standard_offset {
                    end = end.max(o.saturating_add(g.size));
                    if i == 9 {
                        self.pkru_std = o;
                    }
                }
            }
            self.std_end[i as usize] = end;
        }
        self.cache = [Compacted::default(); CACHE];
    }

    /// The standard-form extent of `m` (bytes a standard save or restore of `m` touches).
    #[inline]
    fn standard_extent(&self, m: u64) -> usize {
        let m = m & self.xcr0 & !mask::COMPACTED;
        if m == 0 {
            return EXTENDED_START as usize;
        }
        self.std_end[63 - m.leading_zeros() as usize] as usize
    }

    /// The compacted geometry of `m` (bit 63 ignored), from the cache or computed.
    #[inline]
    fn compacted(&mut self, m: u64) -> Compacted {
        let m = m & !mask::COMPACTED;
        let l = self.cache[self.last];
        if l.mask == m && l.size != 0 {
            return l;
        }
        for (k, c) in self.cache.iter().enumerate() {
            if c.mask == m && c.size != 0 {
                self.last = k;
                return *c;
            }
        }
        let mut c = Compacted {
            mask: m,
            ..Compacted::default()
        };
        let mut loc = EXTENDED_START;
        for i in bits(m & !mask::LEGACY) {
            if self.align64 & (1u64 << i) != 0 {
                loc = loc.saturating_add(63) & !63;
            }
            match i {
                9 => c.pkru = loc,
                11 => c.cet_u = loc,
                12 => c.cet_s = loc,
                _ => {}
            }
            loc = loc.saturating_add(self.size[i as usize]);
        }
        c.size = loc;
        self.cache[self.next] = c;
        self.last = self.next;
        self.next = (self.next + 1) % CACHE;
        c
    }

    /// The hot path of an XRSTOR check, one read of the legacy header fields and the XSAVE
    /// header: true when every rule of [`check_restore`](Self::check_restore) holds *and*
    /// the user-mode trap rules hold (MXCSR exceptions masked when MXCSR is loaded, no pending
    /// unmasked x87 exception when x87 is loaded, PKRU allowing key 0 when loaded, nothing of
    /// `forbidden` loaded). False means "look closer": the caller runs the detailed checks,
    /// which name the broken rule (or find none: this path is conservative).
    #[inline]
    pub fn xrstor_fast(&mut self, mem: &[u8], rfbm: u64, forbidden: u64) -> bool {
        if !self.xsave || mem.as_ptr() as usize % 64 != 0 {
            return false;
        }
        let (Some(h), Some(l)) = (
            mem.get(512..576)
                .and_then(|h| <&[u8; 64]>::try_from(h).ok()),
            mem.get(..32).and_then(|l| <&[u8; 32]>::try_from(l).ok()),
        ) else {
            return false;
        };
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[8 * i..8 * i + 8]);
            u64::from_le_bytes(b)
        };
        let (bv, xc, res16) = (w(0), w(1), w(2));
        let res24 = w(3) | w(4) | w(5) | w(6) | w(7);
        let mxcsr = u32::from_le_bytes([l[24], l[25], l[26], l[27]]);
        let fcw = u16::from_le_bytes([l[0], l[1]]);
        let fsw = u16::from_le_bytes([l[2], l[3]]);
        let xcr0 = self.xcr0;
        let (loaded, mxcsr_loaded, need, pkru) = if self.xsavec && xc & mask::COMPACTED != 0 {
            let comp = xc & !mask::COMPACTED;
            if comp & !xcr0 != 0 || bv & !comp != 0 || res16 | res24 != 0 {
                return false;
            }
            let c = self.compacted(comp);
            let loaded = bv & rfbm & xcr0;
            (loaded, loaded & mask::SSE != 0, c.size as usize, c.pkru)
        } else {
            if bv & !xcr0 != 0 || xc != 0 || res16 != 0 {
                return false;
            }
            let loaded = bv & rfbm & xcr0;
            let m = rfbm & xcr0 & (mask::SSE | mask::AVX) != 0;
            (loaded, m, self.standard_extent(rfbm), self.pkru_std)
        };
        if mxcsr_loaded && (mxcsr & !self.cfg.mxcsr_mask != 0 || mxcsr & 0x1f80 != 0x1f80) {
            return false;
        }
        if loaded & mask::X87 != 0 && (fsw & 0x80 != 0 || fsw & 0x3f & !fcw != 0) {
            return false;
        }
        if loaded & mask::PKRU != 0 && !mem.get(pkru as usize).is_some_and(|b| b & 3 == 0) {
            return false;
        }
        mem.len() >= need && loaded & (self.xfd | forbidden) == 0
    }

    /// The checks of a save instruction to `mem` with `rfbm`: support (#UD), alignment
    /// (#GP), extent (#PF: the operand would extend past the buffer).
    #[inline]
    pub fn check_save(&mut self, insn: SaveInsn, mem: &[u8], rfbm: u64) -> Result<(), Fault> {
        let (ok, align) = match insn {
            SaveInsn::Xsave => (self.xsave, 64),
            SaveInsn::Xsaveopt => (self.xsaveopt, 64),
            SaveInsn::Xsavec => (self.xsavec, 64),
            SaveInsn::Xsaves => (self.xsaves, 64),
            SaveInsn::Fxsave => (self.fxsr, 16),
        };
        if !ok {
            return Err(unsupported(insn.name()));
        }
        let need = match insn {
            SaveInsn::Fxsave => 512,
            SaveInsn::Xsave | SaveInsn::Xsaveopt => self.standard_extent(rfbm),
            SaveInsn::Xsavec => self.compacted(rfbm & self.xcr0).size as usize,
            SaveInsn::Xsaves => self.compacted(rfbm & (self.xcr0 | self.xss)).size as usize,
        };
        operand(insn.name(), mem, align, need)
    }

    /// The checks of a restore instruction from `mem` with `rfbm`: support, alignment, the
    /// header rules, extent, and #NM for an XFD-armed component being loaded. Returns the
    /// components loaded from memory (XSTATE_BV & RFBM & enabled) and, for the compacted
    /// form, where PKRU lies (0 when not loaded).
    #[inline]
    pub fn check_restore(
        &mut self,
        insn: RestoreInsn,
        mem: &[u8],
        rfbm: u64,
    ) -> Result<Restored, Fault> {
        let name = insn.name();
        match insn {
            RestoreInsn::Fxrstor => {
                if !self.fxsr {
                    return Err(unsupported(name));
                }
                operand(name, mem, 16, 512)?;
                let m = crate::image::raw_mxcsr(mem);
                if m & !self.cfg.mxcsr_mask != 0 {
                    return Err(fault(
                        Exception::Gp,
                        "MXCSR has bits outside MXCSR_MASK (SDM Vol. 2A FXRSTOR: #GP)",
                        format!("MXCSR {m:#x} at offset 24, mask {:#x}", self.cfg.mxcsr_mask),
                    ));
                }
                return Ok(Restored {
                    loaded: mask::LEGACY,
                    pkru: None,
                });
            }
            RestoreInsn::Xrstor if !self.xsave => return Err(unsupported(name)),
            RestoreInsn::Xrstors if !self.xsaves => return Err(unsupported(name)),
            _ => {}
        }
        operand(name, mem, 64, EXTENDED_START as usize)?;
        let mut cfg = self.cfg;
        cfg.request = rfbm;
        let ok = match insn {
            RestoreInsn::Xrstors => validate::xrstors(mem, &cfg).is_empty(),
            _ => validate::xrstor_any_ok(mem, &cfg),
        };
        if !ok {
            let v = match insn {
                RestoreInsn::Xrstors => validate::xrstors(mem, &cfg),
                _ => validate::xrstor_any(mem, &cfg),
            };
            let detail = v
                .first()
                .map(|v| format!("{name}: {v}"))
                .unwrap_or_else(|| format!("{name}: header"));
            return Err(fault(
                Exception::Gp,
                "the image breaks a restore rule of SDM Vol. 1 §13.8 (#GP)",
                detail,
            ));
        }
        let bv = crate::image::raw_xstate_bv(mem);
        let xc = crate::image::raw_xcomp_bv(mem);
        let enabled = match insn {
            RestoreInsn::Xrstors => self.xcr0 | self.xss,
            _ => self.xcr0,
        };
        let compacted = self.xsavec && xc & mask::COMPACTED != 0;
        let loaded = bv & rfbm & enabled;
        let (need, pkru) = if compacted {
            let c = self.compacted(xc);
            (c.size as usize, (c.pkru != 0).then_some(c.pkru))
        } else {
            (
                self.standard_extent(rfbm),
                (self.pkru_std != 0).then_some(self.pkru_std),
            )
        };
        operand(name, mem, 64, need)?;
        let armed = loaded & self.xfd;
        if armed != 0 {
            return Err(fault(
                Exception::Nm,
                "XSTATE_BV[i] = RFBM[i] = 1 for a component armed in IA32_XFD (SDM §13.14: #NM)",
                format!("{name}: components {armed:#x}, IA32_XFD {:#x}", self.xfd),
            ));
        }
        if insn == RestoreInsn::Xrstors && loaded & (mask::CET_U | mask::CET_S) != 0 {
            // Supervisor values need their offsets: the CET rules of validate::xrstors_with_layout
            // on the cached geometry.
            let c = self.compacted(xc);
            cet_values(mem, loaded, &c, cfg.linear_address_bits)?;
        }
        Ok(Restored {
            loaded,
            pkru: if loaded & mask::PKRU != 0 { pkru } else { None },
        })
    }
}

/// What a restore that passed the checks loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Components loaded from memory (XSTATE_BV & RFBM & enabled).
    pub loaded: u64,
    /// Offset of PKRU in the image when PKRU is loaded.
    pub pkru: Option<u32>,
}

/// The instructions a CPU supports (from CPUID; XSAVE also needs CR4.OSXSAVE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Support {
    /// XSAVE/XRSTOR (CPUID.1:ECX\[26\] and CR4.OSXSAVE).
    pub xsave: bool,
    /// XSAVEOPT (CPUID.(0xD,1):EAX\[0\]).
    pub xsaveopt: bool,
    /// XSAVEC and the compacted XRSTOR (CPUID.(0xD,1):EAX\[1\]).
    pub xsavec: bool,
    /// XSAVES/XRSTORS (CPUID.(0xD,1):EAX\[3\]); usable at CPL 0 only.
    pub xsaves: bool,
    /// FXSAVE/FXRSTOR (CPUID.1:EDX\[24\]).
    pub fxsr: bool,
}

fn unsupported(insn: &'static str) -> Fault {
    fault(
        Exception::Ud,
        "instruction not supported (CPUID) or not enabled (CR4.OSXSAVE)",
        alloc::string::String::from(insn),
    )
}

#[inline]
fn operand(insn: &'static str, mem: &[u8], align: usize, need: usize) -> Result<(), Fault> {
    let addr = mem.as_ptr() as usize;
    if addr % align != 0 {
        return Err(fault(
            Exception::Gp,
            "memory operand not aligned (SDM Vol. 1 §13.7-13.8: 64 bytes; FXSAVE 16)",
            format!("{insn} at {addr:#x}, needs {align}"),
        ));
    }
    if mem.len() < need {
        return Err(fault(
            Exception::Pf,
            "memory operand extends past the end of the buffer",
            format!("{insn} touches {need} bytes, buffer has {}", mem.len()),
        ));
    }
    Ok(())
}

fn word(mem: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = mem.get(off..off + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fn canonical(v: u64, bits: u8) -> bool {
    let shift = 64 - u32::from(bits.clamp(32, 63));
    (((v << shift) as i64) >> shift) as u64 == v
}

/// The CET supervisor values XRSTORS checks (SDM Vol. 1 §17.3; as `validate::xrstors`).
fn cet_values(mem: &[u8], loaded: u64, c: &Compacted, la: u8) -> Result<(), Fault> {
    let bad = |off: usize, what: &str, v: u64| {
        Err(fault(
            Exception::Gp,
            "a restored supervisor component holds a value its MSR refuses (SDM Vol. 2 XRSTORS: #GP)",
            format!("{what} {v:#x} at offset {off}"),
        ))
    };
    if loaded & mask::CET_U != 0 && c.cet_u != 0 {
        let off = c.cet_u as usize;
        let u = word(mem, off);
        if u & 0x3c0 != 0 || u & 0xc00 == 0xc00 || !canonical(u & !0xfff, la) {
            return bad(off, "IA32_U_CET", u);
        }
        let s = word(mem, off + 8);
        if s & 3 != 0 || !canonical(s, la) {
            return bad(off + 8, "IA32_PL3_SSP", s);
        }
    }
    if loaded & mask::CET_S != 0 && c.cet_s != 0 {
        for lvl in 0..3 {
            let off = c.cet_s as usize + 8 * lvl;
            let s = word(mem, off);
            if s & 3 != 0 || !canonical(s, la) {
                return bad(off, "IA32_PLn_SSP", s);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{spr, zen5};

    fn all() -> Support {
        Support {
            xsave: true,
            xsaveopt: true,
            xsavec: true,
            xsaves: true,
            fxsr: true,
        }
    }

    /// The cached extents equal the layout engine's sizes for every mask of real CPUs
    /// (Sapphire Rapids: AMX with 64-byte alignment; Zen 5), both forms.
    #[test]
    fn extents_agree_with_the_layout() {
        for (l, xcr0, xss) in [(spr(), 0x602e7u64, 0xdd00u64), (zen5(), 0xe7, 0x1800)] {
            let mut g = InsnGuard::new(&l, all(), xcr0, xss, 0, 0xffff);
            let all_bits = xcr0 | xss;
            // Every sub-mask of the components (≤ 2^12 of them here), through the cache.
            let ids: alloc::vec::Vec<u8> = bits(all_bits).collect();
            for k in 0..(1u64 << ids.len()).min(1 << 12) {
                let mut m = 0;
                for (j, id) in ids.iter().enumerate() {
                    if k & (1 << j) != 0 {
                        m |= 1u64 << id;
                    }
                }
                let want = l.compacted(m).unwrap().size.max(576);
                assert_eq!(g.compacted(m).size.max(576), want, "compacted {m:#x}");
                if m & !xcr0 == 0 {
                    assert_eq!(
                        g.standard_extent(m) as u32,
                        l.standard(m).unwrap().size.max(576),
                        "standard {m:#x}"
                    );
                }
                if m & mask::PKRU != 0 {
                    let c = g.compacted(m);
                    assert_eq!(Some(c.pkru), l.compacted(m).unwrap().offset_of(9));
                }
            }
        }
    }

    /// The restore checks say what the model says for headers around the rules.
    #[test]
    fn restore_checks_agree_with_the_model() {
        use crate::model::{CpuProfile, ModelCpu};
        let l = spr();
        let profile = {
            let mut p = CpuProfile::from_dump(&crate::cpuid::CpuidDump::new("empty"));
            p.layout = l.clone();
            p.xsave = true;
            p.xsavec = true;
            p.xsaves = true;
            p.fxsr = true;
            p.xsaveopt = true;
            p.xfd = true;
            p.mxcsr_mask = 0xffff;
            p
        };
        let mut cpu = ModelCpu::new(profile);
        cpu.cpl = 0;
        cpu.xsetbv(0, 0x602e7).unwrap();
        cpu.xfd = 1 << 18;
        let mut g = InsnGuard::new(&l, all(), 0x602e7, 0, 1 << 18, 0xffff);
        let mut buf = crate::model::AlignedBuf::new(12288);
        let headers: [(u64, u64); 8] = [
            (0x3, 0),
            (0x3, 0x8000_0000_0000_0003),
            (0x40000, 0x8000_0000_0006_0003),
            (0x20000, 0x8000_0000_0006_0003),
            (0x40000, 0),
            (0x100, 0),
            (0x7, 0x7),
            (1 << 63, 0),
        ];
        for (bv, xc) in headers {
            for rfbm in [u64::MAX, 0x3, 0x20000] {
                buf.fill(0);
                buf[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
                buf[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
                buf[512..520].copy_from_slice(&bv.to_le_bytes());
                buf[520..528].copy_from_slice(&xc.to_le_bytes());
                let want = cpu
                    .clone()
                    .xrstor(&buf, buf.as_ptr() as u64, rfbm)
                    .map_err(|f| f.exception);
                let got = g
                    .check_restore(RestoreInsn::Xrstor, &buf, rfbm)
                    .map(|_| ())
                    .map_err(|f| f.exception);
                assert_eq!(
                    got, want,
                    "XSTATE_BV {bv:#x} XCOMP_BV {xc:#x} RFBM {rfbm:#x}"
                );
            }
        }
        // A short buffer and a misaligned one.
        buf[512..528].fill(0);
        buf[512] = 3;
        assert_eq!(
            g.check_restore(RestoreInsn::Xrstor, &buf[..600], u64::MAX)
                .unwrap_err()
                .exception,
            Exception::Pf
        );
        assert!(g.check_save(SaveInsn::Xsavec, &buf[64..], u64::MAX).is_ok());
        assert_eq!(
            g.check_save(SaveInsn::Xsave, &buf[8..], 3)
                .unwrap_err()
                .exception,
            Exception::Gp
        );
    }

    /// XRSTORS (the ring-0 hot path): the guard and the model at CPL 0 agree on compacted
    /// headers with and without supervisor CET state, and on CET values the MSRs refuse
    /// (reserved IA32_U_CET bits, misaligned or non-canonical shadow-stack pointers).
    #[test]
    fn xrstors_checks_agree_with_the_model() {
        use crate::model::{CpuProfile, ModelCpu};
        let l = spr();
        let mut p = CpuProfile::from_dump(&crate::cpuid::CpuidDump::new("empty"));
        p.layout = l.clone();
        (p.xsave, p.xsavec, p.xsaves, p.fxsr, p.xsaveopt, p.xfd) =
            (true, true, true, true, true, true);
        p.mxcsr_mask = 0xffff;
        let mut cpu = ModelCpu::new(p);
        cpu.cpl = 0;
        cpu.xsetbv(0, 0x602e7).unwrap();
        cpu.xss = 0x1800;
        let mut g = InsnGuard::new(&l, all(), 0x602e7, 0x1800, 0, 0xffff);
        let mut buf = crate::model::AlignedBuf::new(12288);
        let xc = 0x8000_0000_0000_18e7u64;
        let cet = l.compacted(xc).unwrap();
        let (u, s) = (
            cet.offset_of(11).unwrap() as usize,
            cet.offset_of(12).unwrap() as usize,
        );
        let cases: [(u64, u64, usize, u64); 8] = [
            (0x3, xc, 0, 0),
            (0x1803, xc, 0, 0),
            (0x800, xc, u, 0x3c0),                  // U_CET reserved bits 9:6
            (0x800, xc, u + 8, 0x1002),             // PL3_SSP not 4-byte aligned
            (0x1000, xc, s, 0x0000_8000_0000_0000), // PL0_SSP not canonical
            (0x1000, xc, s + 16, 0x7ffc),           // PL2_SSP fine
            (0x1000, 0x8000_0000_0000_08e7, 0, 0),  // XSTATE_BV outside XCOMP_BV
            (0x3, 0x18e7, 0, 0),                    // not compacted
        ];
        for (bv, xcomp, off, val) in cases {
            for rfbm in [u64::MAX, 0x3] {
                buf.fill(0);
                buf[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
                buf[512..520].copy_from_slice(&bv.to_le_bytes());
                buf[520..528].copy_from_slice(&xcomp.to_le_bytes());
                if off != 0 {
                    buf[off..off + 8].copy_from_slice(&val.to_le_bytes());
                }
                let want = cpu
                    .clone()
                    .xrstors(&buf, buf.as_ptr() as u64, rfbm)
                    .map_err(|f| f.exception);
                let got = g
                    .check_restore(RestoreInsn::Xrstors, &buf, rfbm)
                    .map(|_| ())
                    .map_err(|f| f.exception);
                assert_eq!(
                    got, want,
                    "XSTATE_BV {bv:#x} XCOMP_BV {xcomp:#x} [{off}] = {val:#x}, RFBM {rfbm:#x}"
                );
            }
        }
        // SUPPRESS and TRACKER both set in IA32_U_CET: validate::xrstors refuses it (a reserved
        // combination) and so does the guard, where the model does not check it: the guard
        // keeps the stricter answer (a refusal, never a wrong yes).
        buf.fill(0);
        buf[512..520].copy_from_slice(&0x800u64.to_le_bytes());
        buf[520..528].copy_from_slice(&xc.to_le_bytes());
        buf[u..u + 8].copy_from_slice(&0xc00u64.to_le_bytes());
        let e = g
            .check_restore(RestoreInsn::Xrstors, &buf, u64::MAX)
            .unwrap_err();
        assert_eq!(e.exception, Exception::Gp);
    }
}
