//! [`ModelCpu`]: the register file, the control state and the instructions.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use super::backend::{Backend, Msr, RestoreInsn, SaveInsn};
use super::fault::{Exception, Fault};
use super::profile::{CpuProfile, X87Pointers, XinuseTracking};
use crate::components::{bits, mask};
use crate::layout::{EXTENDED_START, LEGACY_SIZE};

/// MXCSR's init (and RESET) value.
pub const MXCSR_INIT: u32 = 0x1f80;
/// FCW's init value (FNINIT, XRSTOR of an x87 component in init state).
pub const FCW_INIT: u16 = 0x037f;

/// The x87 registers as the 64-bit forms of FXSAVE/XSAVE store them (SDM Vol. 1 §10.5.1,
/// Table 10-2; FCS/FDS do not exist in the 64-bit layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X87 {
    /// FPU control word.
    pub fcw: u16,
    /// FPU status word (ES, bit 7, and B, bit 15, are recomputed from the pending exceptions
    /// whenever the state is loaded).
    pub fsw: u16,
    /// Abridged tag word: bit i = 1 when physical register i is not empty.
    pub ftw: u8,
    /// Last non-control instruction opcode (11 bits).
    pub fop: u16,
    /// Last instruction pointer.
    pub fip: u64,
    /// Last data pointer.
    pub fdp: u64,
    /// The physical registers R0..R7 (80 bits each). The image stores them in stack order:
    /// slot i (ST(i)) is R[(TOP + i) mod 8], TOP = FSW\[13:11\]; the abridged tag bits are per
    /// physical register (SDM Vol. 1 §8.1.2, Vol. 2 FXSAVE).
    pub r: [[u8; 10]; 8],
}

impl X87 {
    /// The init state (SDM Vol. 1 §13.6: FCW 037FH, everything else zero, all tags empty).
    pub const INIT: X87 = X87 {
        fcw: FCW_INIT,
        fsw: 0,
        ftw: 0,
        fop: 0,
        fip: 0,
        fdp: 0,
        r: [[0; 10]; 8],
    };

    /// True when an unmasked exception is pending: FSW\[5:0\] & !FCW\[5:0\] ≠ 0 (what sets FSW.ES,
    /// SDM Vol. 1 §8.1.3.1).
    pub fn pending(&self) -> bool {
        self.fsw & !self.fcw & 0x3f != 0
    }

    fn is_init(&self) -> bool {
        *self == X87::INIT
    }

    /// TOP, FSW\[13:11\].
    pub fn top(&self) -> usize {
        usize::from((self.fsw >> 11) & 7)
    }

    /// ST(i) (i = 0..=7), the physical register R[(TOP + i) mod 8].
    pub fn st(&self, i: usize) -> [u8; 10] {
        self.r[(self.top() + i) & 7]
    }
}

/// The bookkeeping of the modified optimization (SDM Vol. 1 §13.6): the 4-tuple recorded by
/// the last XRSTOR/XRSTORS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XrstorInfo {
    /// CPL at the restore.
    pub cpl: u8,
    /// In VMX non-root operation at the restore.
    pub vmx_nonroot: bool,
    /// Linear address of the XSAVE area restored.
    pub addr: u64,
    /// XCOMP_BV of the image (0 for the standard form).
    pub xcomp_bv: u64,
}

/// Instructions other than the XSAVE family that change extended state, for tests and
/// scenarios: each changes registers, XINUSE and XMODIFIED as the named instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimpleInsn {
    /// VZEROUPPER: bits 511:128 of ZMM0-15 to zero (AVX and ZMM_Hi256 components to init).
    Vzeroupper,
    /// VZEROALL: ZMM0-15 to zero.
    Vzeroall,
    /// FNINIT: FCW 037FH, FSW 0, all tags empty, FOP/FIP/FDP 0 (ST registers unchanged).
    Fninit,
    /// FNCLEX: clears FSW exception flags, SF, ES and B.
    Fnclex,
    /// PXOR XMM0, XMM0 (legacy SSE: upper bits untouched).
    PxorXmm0,
    /// VPXOR YMM1, YMM1, YMM1 (VEX: zeroes bits 511:128 of ZMM1 too).
    VpxorYmm1,
    /// KXORW K1, K1, K1.
    KxorwK1,
    /// LDMXCSR of a value (#GP if it has bits outside MXCSR_MASK).
    Ldmxcsr(u32),
    /// TILERELEASE: TILECFG and TILEDATA to init (#NM when XFD arms TILEDATA).
    Tilerelease,
}

/// The model of one logical processor's extended state and of the XSAVE instructions.
///
/// Control state (XCR0, IA32_XSS, IA32_XFD, IA32_XFD_ERR, CR4.OSXSAVE, CR0.TS, CPL, VMX
/// non-root) is public; registers are read and written through methods. It starts as after
/// RESET with CR4.OSXSAVE set: XCR0 = 1, every component in init state, XINUSE = 0.
///
/// ```
/// use xstate::model::{CpuProfile, ModelCpu, AlignedBuf, Exception};
/// # use xstate::cpuid::{CpuidDump, Regs};
/// # let mut d = CpuidDump::new("doc");
/// # d.insert(1, 0, Regs { eax: 0, ebx: 0, ecx: 1 << 26 | 1 << 27, edx: 1 << 24 });
/// # d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
/// # d.insert(0xd, 1, Regs { eax: 0xf, ebx: 0, ecx: 0, edx: 0 });
/// # d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
/// let mut cpu = ModelCpu::new(CpuProfile::from_dump(&d));
/// cpu.xsetbv(0, 0x7).unwrap();
/// cpu.set_xmm(0, [0xab; 16]);
/// let mut mem = AlignedBuf::new(0x340);
/// cpu.xsave(&mut mem, 0, u64::MAX).unwrap();
/// assert_eq!(mem[160], 0xab);                 // XMM0
/// assert_eq!(mem[512], 0b010);                // XSTATE_BV: only SSE in use
/// // Misaligned memory operand: #GP, memory untouched.
/// assert_eq!(cpu.xsave(&mut mem, 8, u64::MAX).unwrap_err().exception, Exception::Gp);
/// ```
#[derive(Clone, Debug)]
pub struct ModelCpu {
    profile: CpuProfile,
    /// XCR0.
    pub xcr0: u64,
    /// IA32_XSS.
    pub xss: u64,
    /// IA32_XFD.
    pub xfd: u64,
    /// IA32_XFD_ERR.
    pub xfd_err: u64,
    /// CR4.OSXSAVE.
    pub cr4_osxsave: bool,
    /// CR0.TS.
    pub cr0_ts: bool,
    /// Current privilege level (0..=3).
    pub cpl: u8,
    /// VMX non-root operation (part of XRSTOR_INFO).
    pub vmx_nonroot: bool,
    x87: X87,
    xmm: [u8; 256],
    mxcsr: u32,
    ext: Vec<Vec<u8>>,
    xinuse: u64,
    xmodified: u64,
    xrstor_info: Option<XrstorInfo>,
}

fn rd_u16(m: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([m[o], m[o + 1]])
}
fn rd_u32(m: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([m[o], m[o + 1], m[o + 2], m[o + 3]])
}
fn rd_u64(m: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&m[o..o + 8]);
    u64::from_le_bytes(b)
}

/// A planned write: (offset, bytes).
type Writes = Vec<(usize, Vec<u8>)>;

const R_TS: &str = "CR0.TS = 1 (SDM Vol. 1 §13.7-13.12, Vol. 2: #NM)";
const R_OSXSAVE: &str =
    "CR4.OSXSAVE = 0 (SDM Vol. 1 §13.3: the XSAVE feature set is not enabled, #UD)";
const R_ALIGN64: &str =
    "memory operand not 64-byte aligned (SDM Vol. 1 §13.7-13.12, Vol. 2 XSAVE/XRSTOR: #GP)";
const R_ALIGN16: &str = "memory operand not 16-byte aligned (SDM Vol. 2 FXSAVE/FXRSTOR: #GP)";
const R_CPL: &str = "CPL > 0 (SDM Vol. 2 XSAVES/XRSTORS/XSETBV/RDMSR/WRMSR: #GP(0))";
const R_PF: &str = "memory operand extends past the end of the buffer (the model's page fault)";
const R_MXCSR: &str =
    "MXCSR has bits outside MXCSR_MASK (SDM Vol. 1 §13.8.1-13.8.2, §11.6.6; Vol. 2 FXRSTOR/LDMXCSR: #GP)";
const R_XFD: &str = "restores a component armed in IA32_XFD with XSTATE_BV[i] = 1 (SDM Vol. 1 §13.14: #NM, IA32_XFD_ERR records it)";

impl ModelCpu {
    /// A processor of this profile after RESET with CR4.OSXSAVE set (XCR0 = 1, CPL 0).
    pub fn new(profile: CpuProfile) -> ModelCpu {
        let mut ext = vec![Vec::new(); 64];
        let supported = profile.layout.xcr0_supported() | profile.layout.xss_supported();
        for id in bits(supported & !mask::LEGACY & !mask::COMPACTED) {
            let size = profile.layout.geometry(id).size as usize;
            if let Some(slot) = ext.get_mut(usize::from(id)) {
                *slot = vec![0u8; size];
            }
        }
        ModelCpu {
            profile,
            xcr0: 1,
            xss: 0,
            xfd: 0,
            xfd_err: 0,
            cr4_osxsave: true,
            cr0_ts: false,
            cpl: 0,
            vmx_nonroot: false,
            x87: X87::INIT,
            xmm: [0; 256],
            mxcsr: MXCSR_INIT,
            ext,
            xinuse: 0,
            xmodified: 0,
            xrstor_info: None,
        }
    }

    /// The profile.
    pub fn profile(&self) -> &CpuProfile {
        &self.profile
    }

    // ----- registers -------------------------------------------------------------------

    /// The x87 registers.
    pub fn x87(&self) -> &X87 {
        &self.x87
    }

    /// Sets the x87 registers (as an x87 instruction sequence would; marks x87 modified).
    pub fn set_x87(&mut self, x: X87) {
        self.x87 = x;
        self.touch(mask::X87, mask::X87, 0);
    }

    /// XMM register `i` (0..=15), or None.
    pub fn xmm(&self, i: usize) -> Option<[u8; 16]> {
        let mut r = [0u8; 16];
        r.copy_from_slice(self.xmm.get(i * 16..i * 16 + 16)?);
        Some(r)
    }

    /// Sets XMM register `i` (legacy SSE write: upper bits of YMM/ZMM untouched). Ignored for
    /// `i` ≥ 16.
    pub fn set_xmm(&mut self, i: usize, v: [u8; 16]) {
        if let Some(s) = self.xmm.get_mut(i * 16..i * 16 + 16) {
            s.copy_from_slice(&v);
            self.touch(mask::SSE, mask::SSE, 0);
        }
    }

    /// MXCSR.
    pub fn mxcsr(&self) -> u32 {
        self.mxcsr
    }

    /// The content of component `id` ≥ 2 as stored in an image (CPUID size), or None when the
    /// CPU does not have it.
    pub fn component(&self, id: u8) -> Option<&[u8]> {
        let c = self.ext.get(usize::from(id))?;
        if id < 2 || c.is_empty() {
            None
        } else {
            Some(c)
        }
    }

    /// Sets component `id` ≥ 2 from `bytes` (copied up to the CPUID size, the rest zero), as
    /// an instruction writing it would (marks it modified; in use unless all zero in
    /// [`XinuseTracking::ByValue`]). Returns false when the CPU has no such component.
    pub fn set_component(&mut self, id: u8, bytes: &[u8]) -> bool {
        let Some(c) = self.ext.get_mut(usize::from(id)) else {
            return false;
        };
        if id < 2 || c.is_empty() {
            return false;
        }
        c.fill(0);
        let n = c.len().min(bytes.len());
        c[..n].copy_from_slice(&bytes[..n]);
        self.touch(1u64 << id, 1u64 << id, 0);
        true
    }

    /// XINUSE (the processor's init tracking, SDM Vol. 1 §13.6). Bit 1 covers the XMM
    /// registers only; XGETBV(1) adds MXCSR.
    pub fn xinuse(&self) -> u64 {
        self.xinuse
    }

    /// Sets XINUSE. A bit may be 1 for a component in init state; a 0 bit for a component
    /// not in init state is recorded too (the model then saves it as init would be saved —
    /// a state no real CPU reaches; use with care).
    pub fn set_xinuse(&mut self, v: u64) {
        self.xinuse = v & !mask::COMPACTED;
    }

    /// XMODIFIED (components modified since the last XRSTOR/XRSTORS, SDM Vol. 1 §13.6).
    pub fn xmodified(&self) -> u64 {
        self.xmodified
    }

    /// XRSTOR_INFO, None when no restore is on record.
    pub fn xrstor_info(&self) -> Option<XrstorInfo> {
        self.xrstor_info
    }

    /// Forgets XRSTOR_INFO (what an OS context switch does to the modified optimization).
    pub fn clear_xrstor_info(&mut self) {
        self.xrstor_info = None;
    }

    fn is_init(&self, id: u8) -> bool {
        match id {
            0 => self.x87.is_init(),
            1 => self.xmm.iter().all(|&b| b == 0),
            _ => match self.ext.get(usize::from(id)) {
                Some(c) => c.iter().all(|&b| b == 0),
                None => true,
            },
        }
    }

    /// Components written by an instruction: XMODIFIED |= `modified`; XINUSE by content in
    /// [`XinuseTracking::ByValue`], else `|= set` and `&= !clear`.
    fn touch(&mut self, modified: u64, set: u64, clear: u64) {
        self.xmodified |= modified;
        match self.profile.xinuse_tracking {
            XinuseTracking::ByValue => self.retrack(modified | set | clear),
            XinuseTracking::OnWrite => self.xinuse = (self.xinuse | set) & !clear,
        }
    }

    /// XINUSE\[i\] := component i is not in init state, for i in `m`.
    fn retrack(&mut self, m: u64) {
        for id in bits(m & !mask::COMPACTED) {
            if self.is_init(id) {
                self.xinuse &= !(1u64 << id);
            } else {
                self.xinuse |= 1u64 << id;
            }
        }
    }

    /// Component `id` to its init state, XINUSE[id] = 0.
    /// Puts the components of `init` in their init state, then loads those of `load` from
    /// `mem` where `layout` places them (SDM Vol. 1 §13.8: init first, then load). MXCSR is
    /// left to the caller: neither step touches it. The caller has bounds-checked `mem`.
    /// Returns the components of `load` that ended in init state instead: TILECFG of palette 0
    /// or holding an invalid configuration (no fault; [`crate::model::tilecfg`], measured on
    /// an Intel Xeon).
    fn init_then_load(
        &mut self,
        mem: &[u8],
        init: u64,
        load: u64,
        layout: &crate::layout::FormLayout,
    ) -> u64 {
        for id in bits(init) {
            self.init_component(id);
        }
        if load & mask::X87 != 0 {
            self.x87 = self.x87_from(mem);
        }
        if load & mask::SSE != 0 {
            self.xmm.copy_from_slice(&mem[160..416]);
        }
        for id in bits(load & !mask::LEGACY) {
            if let (Some(p), Some(c)) = (layout.placement(id), self.ext.get_mut(usize::from(id))) {
                let n = c.len().min(p.size as usize);
                c[..n].copy_from_slice(&mem[p.offset as usize..p.offset as usize + n]);
            }
        }
        let mut reverted = 0;
        if load & mask::XTILECFG != 0 {
            // Palette 0 is the init state whatever the other bytes hold (measured: they read
            // back as zeros and XINUSE[17] = 0).
            let configured = self.ext.get(17).is_some_and(|c| {
                matches!(
                    crate::model::tilecfg::check(c, &self.profile.tile_palettes),
                    Ok(crate::model::tilecfg::TileConfig::Palette(_))
                )
            });
            if !configured {
                self.init_component(17);
                reverted |= mask::XTILECFG;
            }
        }
        reverted
    }

    fn init_component(&mut self, id: u8) {
        match id {
            0 => self.x87 = X87::INIT,
            1 => self.xmm = [0; 256],
            _ => {
                if let Some(c) = self.ext.get_mut(usize::from(id)) {
                    c.fill(0);
                }
            }
        }
        self.xinuse &= !(1u64 << id);
    }

    /// The components XFD makes look unused: XCR0 & IA32_XFD (SDM Vol. 1 §13.14).
    fn xfd_armed(&self) -> u64 {
        self.xcr0 & self.xfd
    }

    // ----- XGETBV / XSETBV / MSRs ---------------------------------------------------------

    /// XGETBV (SDM Vol. 2 XGETBV): ECX = 0 → XCR0; ECX = 1 → XCR0 & XINUSE, with bit 1 set
    /// when MXCSR ≠ 1F80H (SDM Vol. 1 §13.6).
    pub fn xgetbv(&self, ecx: u32) -> Result<u64, Fault> {
        if !self.cr4_osxsave || !self.profile.xsave {
            return Err(Fault::ud(R_OSXSAVE));
        }
        match ecx {
            0 => Ok(self.xcr0),
            1 if self.profile.xgetbv1 => {
                let mut v = self.xinuse;
                if self.mxcsr != MXCSR_INIT {
                    v |= mask::SSE;
                }
                Ok(self.xcr0 & v)
            }
            1 => Err(Fault::gp(
                "XGETBV with ECX = 1 needs CPUID.(0xD,1):EAX[2] (SDM Vol. 2 XGETBV: #GP(0))",
            )),
            _ => Err(Fault::with(
                Exception::Gp,
                "XGETBV with an ECX that names no XCR (SDM Vol. 2 XGETBV: #GP(0))",
                format!("ECX = {ecx:#x}"),
            )),
        }
    }

    /// XSETBV (SDM Vol. 2 XSETBV; DESIGN.md §4): #UD without CR4.OSXSAVE, #GP at CPL > 0, for
    /// ECX ≠ 0, and for a value breaking any XCR0 rule (every broken rule is listed).
    pub fn xsetbv(&mut self, ecx: u32, value: u64) -> Result<(), Fault> {
        if !self.cr4_osxsave || !self.profile.xsave {
            return Err(Fault::ud(R_OSXSAVE));
        }
        if self.cpl != 0 {
            return Err(Fault::gp(R_CPL));
        }
        if ecx != 0 {
            return Err(Fault::with(
                Exception::Gp,
                "XSETBV with ECX ≠ 0 (SDM Vol. 2 XSETBV: #GP(0))",
                format!("ECX = {ecx:#x}"),
            ));
        }
        if let Err(e) = self.profile.layout.check_xcr0(value) {
            return Err(Fault::with(
                Exception::Gp,
                "XCR0 value breaks an XSETBV rule (SDM Vol. 2 XSETBV, Vol. 1 §13.3: #GP(0))",
                format!("{e}"),
            ));
        }
        self.xcr0 = value;
        // Conservative: a changed XCR0 ends the modified optimization's record.
        self.xrstor_info = None;
        Ok(())
    }

    /// RDMSR of IA32_XSS / IA32_XFD / IA32_XFD_ERR: #GP at CPL > 0 or when the CPU lacks the
    /// MSR (XSAVES for IA32_XSS, XFD for the others).
    pub fn rdmsr(&self, msr: Msr) -> Result<u64, Fault> {
        self.msr_exists(msr)?;
        Ok(match msr {
            Msr::Xss => self.xss,
            Msr::Xfd => self.xfd,
            Msr::XfdErr => self.xfd_err,
        })
    }

    fn msr_exists(&self, msr: Msr) -> Result<(), Fault> {
        if self.cpl != 0 {
            return Err(Fault::gp(R_CPL));
        }
        let ok = match msr {
            Msr::Xss => self.profile.xsaves,
            Msr::Xfd | Msr::XfdErr => self.profile.xfd,
        };
        if ok {
            Ok(())
        } else {
            Err(Fault::with(
                Exception::Gp,
                "RDMSR/WRMSR of an MSR the CPU does not have (CPUID.(0xD,1):EAX[3] for IA32_XSS, [4] for IA32_XFD/XFD_ERR; SDM Vol. 4: #GP)",
                format!("MSR {:#x}", msr.index()),
            ))
        }
    }

    /// WRMSR of IA32_XSS / IA32_XFD / IA32_XFD_ERR. #GP for bits the CPU does not allow:
    /// IA32_XSS only supervisor components of CPUID.(0xD,1):EDX:ECX; IA32_XFD and
    /// IA32_XFD_ERR only XFD-capable components (CPUID.(0xD,i).ECX\[2\]; SDM Vol. 1 §13.14).
    pub fn wrmsr(&mut self, msr: Msr, value: u64) -> Result<(), Fault> {
        self.msr_exists(msr)?;
        match msr {
            Msr::Xss => {
                if let Err(e) = self.profile.layout.check_xss(value) {
                    return Err(Fault::with(
                        Exception::Gp,
                        "IA32_XSS bit not a supported supervisor component (SDM Vol. 1 §13.3, Vol. 4 IA32_XSS: #GP)",
                        format!("{e}"),
                    ));
                }
                self.xss = value;
            }
            Msr::Xfd | Msr::XfdErr => {
                let bad = value & !self.profile.xfd_capable();
                if bad != 0 {
                    return Err(Fault::with(
                        Exception::Gp,
                        "IA32_XFD/IA32_XFD_ERR bit for a component that does not support XFD (CPUID.(0xD,i).ECX[2]; SDM Vol. 1 §13.14: #GP)",
                        format!("value {value:#x}, bad bits {bad:#x}"),
                    ));
                }
                if msr == Msr::Xfd {
                    self.xfd = value;
                } else {
                    self.xfd_err = value;
                }
            }
        }
        Ok(())
    }

    // ----- common checks -------------------------------------------------------------------

    fn check_xsave_family(
        &self,
        name: &'static str,
        supported: bool,
        cpuid_bit: &'static str,
        privileged: bool,
        addr: u64,
    ) -> Result<(), Fault> {
        if !self.profile.xsave || !self.cr4_osxsave {
            return Err(Fault::with(
                Exception::Ud,
                R_OSXSAVE,
                alloc::string::String::from(name),
            ));
        }
        if !supported {
            return Err(Fault::with(
                Exception::Ud,
                "instruction not enumerated by CPUID (SDM Vol. 2: #UD)",
                format!("{name}: {cpuid_bit} is 0"),
            ));
        }
        if self.cr0_ts {
            return Err(Fault::with(
                Exception::Nm,
                R_TS,
                alloc::string::String::from(name),
            ));
        }
        if privileged && self.cpl != 0 {
            return Err(Fault::with(
                Exception::Gp,
                R_CPL,
                format!("{name} at CPL {}", self.cpl),
            ));
        }
        if addr % 64 != 0 {
            return Err(Fault::with(
                Exception::Gp,
                R_ALIGN64,
                format!("{name} at {addr:#x}"),
            ));
        }
        Ok(())
    }

    fn apply(mem: &mut [u8], writes: Writes, name: &'static str) -> Result<(), Fault> {
        let end = writes.iter().map(|(o, b)| o + b.len()).max().unwrap_or(0);
        if end > mem.len() {
            return Err(Fault::with(
                Exception::Pf,
                R_PF,
                format!("{name} writes up to byte {end}, buffer has {}", mem.len()),
            ));
        }
        for (o, b) in writes {
            mem[o..o + b.len()].copy_from_slice(&b);
        }
        Ok(())
    }

    fn need(mem: &[u8], end: usize, name: &'static str) -> Result<(), Fault> {
        if end > mem.len() {
            Err(Fault::with(
                Exception::Pf,
                R_PF,
                format!("{name} reads up to byte {end}, buffer has {}", mem.len()),
            ))
        } else {
            Ok(())
        }
    }

    /// x87 fields (bytes 0..24 and 32..160, 64-bit layout) as the save instructions write them.
    fn x87_writes(&self, w: &mut Writes) {
        let x = &self.x87;
        let save_ptrs = match self.profile.x87_pointers {
            X87Pointers::Always => true,
            X87Pointers::OnlyWithPendingException => x.pending(),
            X87Pointers::Never => false,
        };
        let (fop, fip, fdp) = if save_ptrs {
            (x.fop, x.fip, x.fdp)
        } else {
            (0, 0, 0)
        };
        let mut a = Vec::with_capacity(24);
        a.extend_from_slice(&x.fcw.to_le_bytes());
        a.extend_from_slice(&x.fsw.to_le_bytes());
        a.push(x.ftw);
        a.push(0);
        a.extend_from_slice(&fop.to_le_bytes());
        a.extend_from_slice(&fip.to_le_bytes());
        a.extend_from_slice(&fdp.to_le_bytes());
        w.push((0, a));
        let mut st = Vec::with_capacity(128);
        for i in 0..8 {
            st.extend_from_slice(&x.st(i));
            st.extend_from_slice(&[0u8; 6]);
        }
        w.push((32, st));
    }

    fn mxcsr_writes(&self, w: &mut Writes) {
        let mut b = Vec::with_capacity(8);
        b.extend_from_slice(&self.mxcsr.to_le_bytes());
        b.extend_from_slice(&self.profile.mxcsr_mask.to_le_bytes());
        w.push((24, b));
    }

    /// x87 state from an image's legacy area (FXRSTOR/XRSTOR), as this profile loads it.
    fn x87_from(&self, m: &[u8]) -> X87 {
        let top = usize::from((rd_u16(m, 2) >> 11) & 7);
        let mut r = [[0u8; 10]; 8];
        for i in 0..8 {
            r[(top + i) & 7].copy_from_slice(&m[32 + 16 * i..42 + 16 * i]);
        }
        let mut fcw = rd_u16(m, 0);
        if let Some((and, or)) = self.profile.fcw_fixed {
            fcw = (fcw & and) | or;
        }
        let mut x = X87 {
            fcw,
            fsw: rd_u16(m, 2),
            ftw: m[4],
            fop: rd_u16(m, 6) & 0x7ff,
            fip: canonical_pointer(rd_u64(m, 8), self.profile.fip_bits),
            fdp: canonical_pointer(rd_u64(m, 16), self.profile.fdp_bits),
            r,
        };
        // ES (bit 7) and B (bit 15) reflect whether an unmasked exception is pending
        // (measured: a loaded ES without an unmasked exception reads back 0, and an unmasked
        // exception flag without ES reads back with ES and B set).
        x.fsw &= !0x8080;
        if x.pending() {
            x.fsw |= 0x8080;
        }
        if self.profile.x87_pointers == X87Pointers::Never
            || (!x.pending() && self.profile.x87_pointers == X87Pointers::OnlyWithPendingException)
        {
            x.fop = 0;
            x.fip = 0;
            x.fdp = 0;
        }
        x
    }

    fn mxcsr_check(&self, v: u32, at: usize) -> Result<(), Fault> {
        if v & !self.profile.mxcsr_mask != 0 {
            Err(Fault::with(
                Exception::Gp,
                R_MXCSR,
                format!(
                    "MXCSR {v:#x} at offset {at}, MXCSR_MASK {:#x}",
                    self.profile.mxcsr_mask
                ),
            ))
        } else {
            Ok(())
        }
    }

    // ----- saves ---------------------------------------------------------------------------

    /// XSAVE of the registers to `mem` (whose first byte has linear address `addr`) with
    /// EDX:EAX = `edx_eax` (SDM Vol. 1 §13.7). See the module docs for the exact bytes.
    pub fn xsave(&mut self, mem: &mut [u8], addr: u64, edx_eax: u64) -> Result<(), Fault> {
        self.save_standard(mem, addr, edx_eax, false)
    }

    /// XSAVEOPT (SDM Vol. 1 §13.9): XSAVE with the init and modified optimizations.
    pub fn xsaveopt(&mut self, mem: &mut [u8], addr: u64, edx_eax: u64) -> Result<(), Fault> {
        self.save_standard(mem, addr, edx_eax, true)
    }

    fn save_standard(
        &mut self,
        mem: &mut [u8],
        addr: u64,
        edx_eax: u64,
        opt: bool,
    ) -> Result<(), Fault> {
        let (name, ok, bit) = if opt {
            ("XSAVEOPT", self.profile.xsaveopt, "CPUID.(0xD,1):EAX[0]")
        } else {
            ("XSAVE", true, "CPUID.1:ECX.XSAVE")
        };
        self.check_xsave_family(name, ok, bit, false, addr)?;
        let rfbm = edx_eax & self.xcr0;
        let armed = self.xfd_armed();
        let inuse = self.xinuse & !armed;
        // §13.9: the modified optimization applies when XRSTOR_INFO = (CPL, VMXNR, LA, 0).
        let modopt = opt
            && self.xrstor_info
                == Some(XrstorInfo {
                    cpl: self.cpl,
                    vmx_nonroot: self.vmx_nonroot,
                    addr,
                    xcomp_bv: 0,
                });
        let skip = |id: u8| -> bool {
            let b = 1u64 << id;
            opt && (inuse & b == 0 || (modopt && self.xmodified & b == 0))
        };
        let layout = self.profile.layout.standard(rfbm).map_err(|e| {
            Fault::with(
                Exception::Refused,
                "RFBM has a component CPUID does not describe (the profile cannot model it)",
                format!("{e}"),
            )
        })?;
        let mut w: Writes = Vec::new();
        if rfbm & mask::X87 != 0 && !skip(0) {
            self.x87_writes(&mut w);
        }
        // §13.7/§13.9: MXCSR and MXCSR_MASK when RFBM[1] or RFBM[2]; no optimization applies.
        if rfbm & (mask::SSE | mask::AVX) != 0 {
            self.mxcsr_writes(&mut w);
        }
        if rfbm & mask::SSE != 0 && !skip(1) {
            w.push((160, self.xmm.to_vec()));
        }
        for p in layout.placements.iter().filter(|p| p.id >= 2) {
            if skip(p.id) {
                continue;
            }
            let bytes = if armed & (1u64 << p.id) != 0 {
                // §13.14: treated as not in use; XSAVE writes the init value (zeros).
                vec![0u8; p.size as usize]
            } else {
                let mut b = self.ext.get(usize::from(p.id)).cloned().unwrap_or_default();
                b.resize(p.size as usize, 0);
                b
            };
            w.push((p.offset as usize, bytes));
        }
        Self::need(mem, 520, name)?;
        let old = rd_u64(mem, 512);
        let bv = (old & !rfbm) | (inuse & rfbm);
        w.push((512, bv.to_le_bytes().to_vec()));
        Self::apply(mem, w, name)
    }

    /// XSAVEC (SDM Vol. 1 §13.10): compacted form with the init optimization.
    pub fn xsavec(&mut self, mem: &mut [u8], addr: u64, edx_eax: u64) -> Result<(), Fault> {
        self.check_xsave_family(
            "XSAVEC",
            self.profile.xsavec,
            "CPUID.(0xD,1):EAX[1]",
            false,
            addr,
        )?;
        let rfbm = edx_eax & self.xcr0;
        self.save_compacted(mem, rfbm, false, addr, "XSAVEC")
    }

    /// XSAVES (SDM Vol. 1 §13.11): compacted form, XCR0 | IA32_XSS, init and modified
    /// optimizations; CPL 0 only.
    pub fn xsaves(&mut self, mem: &mut [u8], addr: u64, edx_eax: u64) -> Result<(), Fault> {
        self.check_xsave_family(
            "XSAVES",
            self.profile.xsaves,
            "CPUID.(0xD,1):EAX[3]",
            true,
            addr,
        )?;
        let rfbm = edx_eax & (self.xcr0 | self.xss);
        self.save_compacted(mem, rfbm, true, addr, "XSAVES")
    }

    fn save_compacted(
        &mut self,
        mem: &mut [u8],
        rfbm: u64,
        modopt_allowed: bool,
        addr: u64,
        name: &'static str,
    ) -> Result<(), Fault> {
        let rfbm = rfbm & !mask::COMPACTED;
        let armed = self.xfd_armed();
        let inuse = self.xinuse & !armed;
        let xcomp = rfbm | mask::COMPACTED;
        // §13.11: XSAVES uses the modified optimization when XRSTOR_INFO = (CPL, VMXNR, LA,
        // RFBM | bit 63).
        let modopt = modopt_allowed
            && self.xrstor_info
                == Some(XrstorInfo {
                    cpl: self.cpl,
                    vmx_nonroot: self.vmx_nonroot,
                    addr,
                    xcomp_bv: xcomp,
                });
        let unmodified = |id: u8| modopt && self.xmodified & (1u64 << id) == 0;
        let layout = self.profile.layout.compacted(rfbm).map_err(|e| {
            Fault::with(
                Exception::Refused,
                "RFBM has a component CPUID does not describe (the profile cannot model it)",
                format!("{e}"),
            )
        })?;
        let mut bv = rfbm & inuse;
        let mut w: Writes = Vec::new();
        if bv & mask::X87 != 0 && !unmodified(0) {
            self.x87_writes(&mut w);
        }
        // §13.10: with RFBM[1] = 1 and MXCSR ≠ 1F80H the SSE component is saved (MXCSR,
        // MXCSR_MASK and the XMM registers) and XSTATE_BV[1] = 1, even if XINUSE[1] = 0.
        if rfbm & mask::SSE != 0 && (inuse & mask::SSE != 0 || self.mxcsr != MXCSR_INIT) {
            bv |= mask::SSE;
            self.mxcsr_writes(&mut w);
            if !unmodified(1) {
                w.push((160, self.xmm.to_vec()));
            }
        }
        for p in layout.placements.iter().filter(|p| p.id >= 2) {
            if bv & (1u64 << p.id) == 0 || unmodified(p.id) {
                continue;
            }
            let mut b = self.ext.get(usize::from(p.id)).cloned().unwrap_or_default();
            b.resize(p.size as usize, 0);
            w.push((p.offset as usize, b));
        }
        // Only XSTATE_BV and XCOMP_BV of the header are written (§13.10).
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&bv.to_le_bytes());
        h.extend_from_slice(&xcomp.to_le_bytes());
        w.push((512, h));
        Self::apply(mem, w, name)
    }

    /// FXSAVE (64-bit form, SDM Vol. 2 FXSAVE): bytes 0..416 (x87, MXCSR, MXCSR_MASK, XMM0-15);
    /// bytes 416..511 are not written.
    pub fn fxsave(&mut self, mem: &mut [u8], addr: u64) -> Result<(), Fault> {
        self.check_fx("FXSAVE", addr)?;
        let mut w = Vec::new();
        self.x87_writes(&mut w);
        self.mxcsr_writes(&mut w);
        w.push((160, self.xmm.to_vec()));
        Self::apply(mem, w, "FXSAVE")
    }

    fn check_fx(&self, name: &'static str, addr: u64) -> Result<(), Fault> {
        if !self.profile.fxsr {
            return Err(Fault::with(
                Exception::Ud,
                "instruction not enumerated by CPUID (SDM Vol. 2: #UD)",
                format!("{name}: CPUID.1:EDX.FXSR is 0"),
            ));
        }
        if self.cr0_ts {
            return Err(Fault::with(
                Exception::Nm,
                R_TS,
                alloc::string::String::from(name),
            ));
        }
        if addr % 16 != 0 {
            return Err(Fault::with(
                Exception::Gp,
                R_ALIGN16,
                format!("{name} at {addr:#x}"),
            ));
        }
        Ok(())
    }

    // ----- restores ------------------------------------------------------------------------

    /// XRSTOR from `mem` (linear address `addr`) with EDX:EAX = `edx_eax`, standard or
    /// compacted form as XCOMP_BV\[63\] says (SDM Vol. 1 §13.8). Every check happens before
    /// any register changes: a fault leaves the state as it was (except IA32_XFD_ERR on #NM).
    pub fn xrstor(&mut self, mem: &[u8], addr: u64, edx_eax: u64) -> Result<(), Fault> {
        self.check_xsave_family("XRSTOR", true, "CPUID.1:ECX.XSAVE", false, addr)?;
        let rfbm = edx_eax & self.xcr0;
        Self::need(mem, 576, "XRSTOR")?;
        let xstate_bv = rd_u64(mem, 512);
        let xcomp_bv = rd_u64(mem, 520);
        if xcomp_bv & mask::COMPACTED == 0 {
            // §13.8.1, standard form.
            if xstate_bv & !self.xcr0 != 0 {
                return Err(Fault::with(
                    Exception::Gp,
                    "standard-form XRSTOR: XSTATE_BV has a bit not set in XCR0 (SDM Vol. 1 §13.8.1: #GP)",
                    format!("XSTATE_BV {xstate_bv:#x} at offset 512, XCR0 {:#x}, bad bits {:#x}", self.xcr0, xstate_bv & !self.xcr0),
                ));
            }
            if let Some(i) = (520..536).find(|&i| mem[i] != 0) {
                return Err(Fault::with(
                    Exception::Gp,
                    "standard-form XRSTOR: header bytes 8..23 (XCOMP_BV and the next 8 bytes) must be zero (SDM Vol. 1 §13.8.1: #GP)",
                    format!("byte {i} is {:#x}", mem[i]),
                ));
            }
            let mxcsr = if rfbm & (mask::SSE | mask::AVX) != 0 {
                let v = rd_u32(mem, 24);
                self.mxcsr_check(v, 24)?;
                Some(v)
            } else {
                None
            };
            let layout = self.profile.layout.standard(rfbm).map_err(|e| {
                Fault::with(
                    Exception::Refused,
                    "RFBM has a component CPUID does not describe (the profile cannot model it)",
                    format!("{e}"),
                )
            })?;
            self.load(mem, rfbm, xstate_bv, &layout, mxcsr, "XRSTOR")?;
            self.after_restore(rfbm, addr, 0);
            Ok(())
        } else {
            // §13.8.2, compacted form.
            if !self.profile.xsavec {
                return Err(Fault::with(
                    Exception::Gp,
                    "compacted-form XRSTOR on a CPU without XSAVEC (CPUID.(0xD,1):EAX[1] = 0; SDM Vol. 1 §13.8.2: #GP)",
                    format!("XCOMP_BV {xcomp_bv:#x} at offset 520"),
                ));
            }
            self.compacted_checks(mem, xstate_bv, xcomp_bv, self.xcr0, "XCR0")?;
            self.restore_compacted(mem, rfbm, xstate_bv, xcomp_bv, addr, "XRSTOR")
        }
    }

    /// XRSTORS (SDM Vol. 1 §13.12): compacted form only, XCR0 | IA32_XSS, CPL 0 only;
    /// supervisor components are checked as WRMSR would check their MSRs.
    pub fn xrstors(&mut self, mem: &[u8], addr: u64, edx_eax: u64) -> Result<(), Fault> {
        self.check_xsave_family(
            "XRSTORS",
            self.profile.xsaves,
            "CPUID.(0xD,1):EAX[3]",
            true,
            addr,
        )?;
        let enabled = self.xcr0 | self.xss;
        let rfbm = edx_eax & enabled;
        Self::need(mem, 576, "XRSTORS")?;
        let xstate_bv = rd_u64(mem, 512);
        let xcomp_bv = rd_u64(mem, 520);
        if xcomp_bv & mask::COMPACTED == 0 {
            return Err(Fault::with(
                Exception::Gp,
                "XRSTORS: XCOMP_BV[63] = 0 (XRSTORS has only the compacted form; SDM Vol. 1 §13.12: #GP)",
                format!("XCOMP_BV {xcomp_bv:#x} at offset 520"),
            ));
        }
        self.compacted_checks(mem, xstate_bv, xcomp_bv, enabled, "XCR0 | IA32_XSS")?;
        self.restore_compacted(mem, rfbm, xstate_bv, xcomp_bv, addr, "XRSTORS")
    }

    fn compacted_checks(
        &self,
        mem: &[u8],
        xstate_bv: u64,
        xcomp_bv: u64,
        enabled: u64,
        what: &str,
    ) -> Result<(), Fault> {
        let comp = xcomp_bv & !mask::COMPACTED;
        if comp & !enabled != 0 {
            return Err(Fault::with(
                Exception::Gp,
                "compacted form: XCOMP_BV[62:0] has a bit not enabled (SDM Vol. 1 §13.8.2, §13.12: #GP)",
                format!("XCOMP_BV {xcomp_bv:#x} at offset 520, {what} {enabled:#x}, bad bits {:#x}", comp & !enabled),
            ));
        }
        if xstate_bv & !comp != 0 {
            return Err(Fault::with(
                Exception::Gp,
                "compacted form: XSTATE_BV has a bit not set in XCOMP_BV[62:0] (bit 63 included; SDM Vol. 1 §13.8.2, §13.12: #GP)",
                format!("XSTATE_BV {xstate_bv:#x} at offset 512, XCOMP_BV {xcomp_bv:#x}"),
            ));
        }
        if let Some(i) = (528..576).find(|&i| mem[i] != 0) {
            return Err(Fault::with(
                Exception::Gp,
                "compacted form: header bytes 16..63 must be zero (SDM Vol. 1 §13.8.2, §13.12: #GP)",
                format!("byte {i} is {:#x}", mem[i]),
            ));
        }
        Ok(())
    }

    fn restore_compacted(
        &mut self,
        mem: &[u8],
        rfbm: u64,
        xstate_bv: u64,
        xcomp_bv: u64,
        addr: u64,
        name: &'static str,
    ) -> Result<(), Fault> {
        let comp = xcomp_bv & !mask::COMPACTED;
        let layout = self.profile.layout.compacted(comp).map_err(|e| {
            Fault::with(
                Exception::Refused,
                "XCOMP_BV has a component CPUID does not describe (the profile cannot model it)",
                format!("{e}"),
            )
        })?;
        // §13.8.2: MXCSR is loaded only with a restored SSE component; 1F80H when SSE is
        // initialized; untouched when RFBM[1] = 0.
        let mxcsr = if rfbm & mask::SSE != 0 {
            if xstate_bv & mask::SSE != 0 {
                let v = rd_u32(mem, 24);
                self.mxcsr_check(v, 24)?;
                Some(v)
            } else {
                Some(MXCSR_INIT)
            }
        } else {
            None
        };
        if name == "XRSTORS" {
            self.check_supervisor(mem, rfbm & xstate_bv, &layout)?;
        }
        self.load(mem, rfbm, xstate_bv, &layout, mxcsr, name)?;
        self.after_restore(rfbm, addr, xcomp_bv);
        Ok(())
    }

    /// WRMSR-style checks of supervisor components XRSTORS loads (SDM Vol. 1 §13.12: #GP
    /// "if it would load a supervisor component with an invalid value"). CET (SDM Vol. 1
    /// ch. 17, Vol. 4 IA32_U_CET/IA32_PLx_SSP): IA32_U_CET bits 9:6 reserved and bits 63:12 a
    /// canonical address; SSPs canonical and 4-byte aligned.
    fn check_supervisor(
        &self,
        mem: &[u8],
        loaded: u64,
        layout: &crate::layout::FormLayout,
    ) -> Result<(), Fault> {
        let canonical = |v: u64| {
            let sh = 64 - 48;
            (((v << sh) as i64) >> sh) as u64 == v
        };
        let bad = |rule: &'static str, off: usize, v: u64| {
            Err(Fault::with(
                Exception::Gp,
                rule,
                format!("value {v:#x} at offset {off}"),
            ))
        };
        if loaded & mask::CET_U != 0 {
            if let Some(p) = layout.placement(11) {
                let o = p.offset as usize;
                Self::need(mem, o + 16, "XRSTORS")?;
                let ucet = rd_u64(mem, o);
                if ucet & 0x3c0 != 0 || !canonical(ucet & !0xfff) {
                    return bad("XRSTORS: IA32_U_CET in CET_U has reserved bits 9:6 set or a non-canonical legacy-bitmap base (SDM Vol. 1 §13.12, ch. 17: #GP)", o, ucet);
                }
                let ssp = rd_u64(mem, o + 8);
                if ssp & 3 != 0 || !canonical(ssp) {
                    return bad("XRSTORS: IA32_PL3_SSP in CET_U is not canonical or not 4-byte aligned (SDM Vol. 1 §13.12, ch. 17: #GP)", o + 8, ssp);
                }
            }
        }
        if loaded & mask::CET_S != 0 {
            if let Some(p) = layout.placement(12) {
                let o = p.offset as usize;
                Self::need(mem, o + 24, "XRSTORS")?;
                for k in 0..3 {
                    let ssp = rd_u64(mem, o + 8 * k);
                    if ssp & 3 != 0 || !canonical(ssp) {
                        return bad("XRSTORS: IA32_PL0/1/2_SSP in CET_S is not canonical or not 4-byte aligned (SDM Vol. 1 §13.12, ch. 17: #GP)", o + 8 * k, ssp);
                    }
                }
            }
        }
        Ok(())
    }

    /// Init-then-load (SDM Vol. 1 §13.8.1-13.8.2): for i in RFBM, XSTATE_BV\[i\] = 1 loads the
    /// component, 0 sets it to init. All reads are checked before anything changes.
    fn load(
        &mut self,
        mem: &[u8],
        rfbm: u64,
        xstate_bv: u64,
        layout: &crate::layout::FormLayout,
        mxcsr: Option<u32>,
        name: &'static str,
    ) -> Result<(), Fault> {
        let load = rfbm & xstate_bv;
        // Bounds of everything read.
        let mut end = 576usize;
        for id in bits(load & !mask::LEGACY) {
            match layout.placement(id) {
                Some(p) => end = end.max(p.end() as usize),
                None => {
                    return Err(Fault::with(
                        Exception::Refused,
                        "component to load has no place in the image layout (the profile cannot model it)",
                        format!("component {id}"),
                    ))
                }
            }
        }
        Self::need(mem, end, name)?;
        // §13.14: XFD-armed components with XSTATE_BV[i] = 1 raise #NM and set IA32_XFD_ERR.
        let nm = load & self.xfd_armed();
        if nm != 0 {
            self.xfd_err |= nm;
            return Err(Fault::with(
                Exception::Nm,
                R_XFD,
                format!(
                    "XSTATE_BV {xstate_bv:#x}, IA32_XFD {:#x}: IA32_XFD_ERR |= {nm:#x}",
                    self.xfd
                ),
            ));
        }
        let load = load & !self.init_then_load(mem, rfbm, load, layout);
        if let Some(v) = mxcsr {
            self.mxcsr = v;
        }
        // Init tracking (§13.8.3): loaded components are tracked as not init; initialized
        // ones as init. The ByValue profile (measured on AMD Zen 5) tracks by content.
        match self.profile.xinuse_tracking {
            XinuseTracking::OnWrite => {
                self.xinuse = (self.xinuse & !rfbm) | load;
            }
            XinuseTracking::ByValue => {
                for id in bits(rfbm) {
                    if self.is_init(id) {
                        self.xinuse &= !(1u64 << id);
                    } else {
                        self.xinuse |= 1u64 << id;
                    }
                }
            }
        }
        Ok(())
    }

    fn after_restore(&mut self, rfbm: u64, addr: u64, xcomp_bv: u64) {
        // §13.8.3: XMODIFIED[i] = 0 for i in RFBM; XRSTOR_INFO = (CPL, VMXNR, LA, COMPMASK).
        // Components outside RFBM count as modified: the area does not hold them (measured on
        // Zen 5: XSAVEOPT to the same address writes them; the SDM allows saving more).
        self.xmodified = !rfbm & !mask::COMPACTED;
        self.xrstor_info = Some(XrstorInfo {
            cpl: self.cpl,
            vmx_nonroot: self.vmx_nonroot,
            addr,
            xcomp_bv,
        });
    }

    /// FXRSTOR (64-bit form, SDM Vol. 2 FXRSTOR): loads x87, MXCSR and XMM0-15 from bytes
    /// 0..416; #GP when MXCSR has bits outside MXCSR_MASK. Counts as a modification for
    /// XSAVEOPT (it is not an XRSTOR).
    pub fn fxrstor(&mut self, mem: &[u8], addr: u64) -> Result<(), Fault> {
        self.check_fx("FXRSTOR", addr)?;
        Self::need(mem, 416, "FXRSTOR")?;
        let v = rd_u32(mem, 24);
        self.mxcsr_check(v, 24)?;
        self.mxcsr = v;
        self.x87 = self.x87_from(mem);
        self.xmm.copy_from_slice(&mem[160..416]);
        self.touch(mask::LEGACY, mask::LEGACY, 0);
        Ok(())
    }

    // ----- other instructions ----------------------------------------------------------------

    /// Executes an instruction that changes extended state (see [`SimpleInsn`]).
    pub fn exec(&mut self, insn: SimpleInsn) -> Result<(), Fault> {
        if self.cr0_ts {
            return Err(Fault::new(Exception::Nm, R_TS));
        }
        let need = |m: u64, what: &'static str| -> Result<(), Fault> {
            if self.xcr0 & m != m {
                Err(Fault::with(
                    Exception::Ud,
                    "instruction needs its state components enabled in XCR0 (SDM Vol. 2: #UD)",
                    format!("{what} needs XCR0 {m:#x}"),
                ))
            } else {
                Ok(())
            }
        };
        let zero_ext = |cpu: &mut ModelCpu, id: u8, range: core::ops::Range<usize>| {
            if let Some(c) = cpu.ext.get_mut(usize::from(id)) {
                let end = range.end.min(c.len());
                if range.start < end {
                    c[range.start..end].fill(0);
                }
            }
        };
        match insn {
            SimpleInsn::Vzeroupper | SimpleInsn::Vzeroall => {
                need(mask::AVX | mask::SSE, "VZEROUPPER/VZEROALL")?;
                zero_ext(self, 2, 0..256);
                zero_ext(self, 6, 0..512);
                let upper = mask::AVX | mask::ZMM_HI256;
                if insn == SimpleInsn::Vzeroall {
                    self.xmm = [0; 256];
                    self.touch(mask::SSE | upper, 0, mask::SSE | upper);
                } else if self.profile.vzeroupper_modifies_sse {
                    // Measured on Zen 5: VZEROUPPER marks SSE modified too.
                    self.touch(mask::SSE | upper, 0, upper);
                } else {
                    self.touch(upper, 0, upper);
                }
            }
            SimpleInsn::Fninit => {
                let r = self.x87.r;
                self.x87 = X87 { r, ..X87::INIT };
                self.touch(mask::X87, mask::X87, 0);
            }
            SimpleInsn::Fnclex => {
                self.x87.fsw &= !0x80ff;
                self.touch(mask::X87, mask::X87, 0);
            }
            SimpleInsn::PxorXmm0 => {
                self.xmm[0..16].fill(0);
                self.touch(mask::SSE, mask::SSE, 0);
                if self.profile.sse_write_marks_avx && self.xinuse & mask::ZMM_HI256 != 0 {
                    self.xinuse |= mask::AVX;
                }
            }
            SimpleInsn::VpxorYmm1 => {
                need(mask::AVX | mask::SSE, "VPXOR")?;
                self.xmm[16..32].fill(0);
                zero_ext(self, 2, 16..32);
                zero_ext(self, 6, 32..64);
                let m = mask::SSE | mask::AVX | mask::ZMM_HI256;
                self.touch(m, m, 0);
            }
            SimpleInsn::KxorwK1 => {
                need(mask::AVX512, "KXORW")?;
                zero_ext(self, 5, 8..16);
                self.touch(mask::OPMASK, mask::OPMASK, 0);
            }
            SimpleInsn::Ldmxcsr(v) => {
                self.mxcsr_check(v, 0)?;
                self.mxcsr = v;
                if self.profile.ldmxcsr_writes_sse {
                    self.xinuse |= mask::SSE;
                    self.xmodified |= mask::SSE;
                }
            }
            SimpleInsn::Tilerelease => {
                need(mask::AMX, "TILERELEASE")?;
                let armed = self.xfd_armed() & mask::AMX;
                if armed != 0 {
                    self.xfd_err |= armed;
                    return Err(Fault::with(
                        Exception::Nm,
                        "AMX instruction with IA32_XFD arming an AMX component (SDM Vol. 1 §13.14: #NM)",
                        format!("IA32_XFD {:#x}", self.xfd),
                    ));
                }
                self.init_component(17);
                self.init_component(18);
                self.xmodified |= mask::AMX;
            }
        }
        Ok(())
    }

    // ----- whole-state helpers -----------------------------------------------------------------

    /// Loads a standard-form image as the register state (the semantics of `xstate model
    /// --state`): components of XSTATE_BV (within the CPU's user components) are loaded from
    /// their standard offsets, the other user components are put in init state, MXCSR comes
    /// from bytes 24..27 whatever XSTATE_BV says. Header bits beyond that are ignored. XINUSE:
    /// `xinuse` when given (bit 1 with MXCSR ≠ 1F80H is read as XGETBV(1) reports it: the XMM
    /// part is then taken from XSTATE_BV\[1\]); otherwise by the profile's tracking. XMODIFIED
    /// becomes all ones and XRSTOR_INFO is cleared.
    pub fn load_state(&mut self, state: &[u8], xinuse: Option<u64>) -> Result<(), Fault> {
        Self::need(state, 576, "state image")?;
        let user = self.profile.layout.xcr0_supported();
        let bv = rd_u64(state, 512) & user;
        let mxcsr = rd_u32(state, 24);
        self.mxcsr_check(mxcsr, 24)?;
        let layout = self.profile.layout.standard(user).map_err(|e| {
            Fault::with(
                Exception::Refused,
                "CPUID does not describe every user component (the profile cannot model it)",
                format!("{e}"),
            )
        })?;
        let mut end = 576usize;
        for id in bits(bv & !mask::LEGACY) {
            if let Some(p) = layout.placement(id) {
                end = end.max(p.end() as usize);
            }
        }
        Self::need(state, end, "state image")?;
        let bv = bv & !self.init_then_load(state, user, bv, &layout);
        self.mxcsr = mxcsr;
        self.xinuse = match xinuse {
            Some(v) => {
                let mut v = v & !mask::COMPACTED;
                if mxcsr != MXCSR_INIT && v & mask::SSE != 0 && bv & mask::SSE == 0 {
                    v &= !mask::SSE;
                }
                v
            }
            None => match self.profile.xinuse_tracking {
                XinuseTracking::OnWrite => bv,
                XinuseTracking::ByValue => {
                    self.retrack(user);
                    self.xinuse
                }
            },
        };
        self.xmodified = u64::MAX >> 1;
        self.xrstor_info = None;
        Ok(())
    }

    /// The user registers as a standard-form image for XCR0 (XSAVE with RFBM = XCR0 into
    /// zeroed memory; XSTATE_BV = XINUSE & XCR0 minus XFD-armed components). Controls (TS,
    /// CPL, alignment) do not apply.
    pub fn state_image(&self) -> Vec<u8> {
        let size = self
            .profile
            .layout
            .standard(self.xcr0)
            .map(|l| l.size as usize)
            .unwrap_or(LEGACY_SIZE as usize + 64)
            .max(EXTENDED_START as usize);
        let mut out = vec![0u8; size];
        let mut tmp = self.clone();
        tmp.cr0_ts = false;
        tmp.xrstor_info = None;
        let _ = tmp.save_standard(&mut out, 0, u64::MAX, false);
        out
    }
}

impl Backend for ModelCpu {
    fn profile(&self) -> &CpuProfile {
        &self.profile
    }

    fn xgetbv(&mut self, ecx: u32) -> Result<u64, Fault> {
        ModelCpu::xgetbv(self, ecx)
    }

    fn xsetbv(&mut self, ecx: u32, value: u64) -> Result<(), Fault> {
        ModelCpu::xsetbv(self, ecx, value)
    }

    fn rdmsr(&mut self, msr: Msr) -> Result<u64, Fault> {
        ModelCpu::rdmsr(self, msr)
    }

    fn wrmsr(&mut self, msr: Msr, value: u64) -> Result<(), Fault> {
        ModelCpu::wrmsr(self, msr, value)
    }

    fn save(&mut self, insn: SaveInsn, mem: &mut [u8], rfbm: u64) -> Result<(), Fault> {
        let addr = mem.as_ptr() as u64;
        match insn {
            SaveInsn::Xsave => self.xsave(mem, addr, rfbm),
            SaveInsn::Xsaveopt => self.xsaveopt(mem, addr, rfbm),
            SaveInsn::Xsavec => self.xsavec(mem, addr, rfbm),
            SaveInsn::Xsaves => self.xsaves(mem, addr, rfbm),
            SaveInsn::Fxsave => self.fxsave(mem, addr),
        }
    }

    fn restore(&mut self, insn: RestoreInsn, mem: &[u8], rfbm: u64) -> Result<(), Fault> {
        let addr = mem.as_ptr() as u64;
        match insn {
            RestoreInsn::Xrstor => self.xrstor(mem, addr, rfbm),
            RestoreInsn::Xrstors => self.xrstors(mem, addr, rfbm),
            RestoreInsn::Fxrstor => self.fxrstor(mem, addr),
        }
    }

    fn load_state(&mut self, state: &[u8], xinuse: Option<u64>) -> Result<(), Fault> {
        ModelCpu::load_state(self, state, xinuse)
    }

    fn read_state(&mut self) -> Result<Vec<u8>, Fault> {
        Ok(self.state_image())
    }
}

/// An x87 pointer register as a CPU holding `bits` of it reads it back: sign-extended from
/// bit `bits - 1` (None: all 64 bits kept).
fn canonical_pointer(v: u64, bits: Option<u8>) -> u64 {
    match bits {
        Some(b) if (1..64).contains(&b) => {
            let sh = 64 - u32::from(b);
            (((v << sh) as i64) >> sh) as u64
        }
        _ => v,
    }
}
