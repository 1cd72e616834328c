//! The checked user-mode hardware backend: the real CPU behind the model's [`Backend`] trait,
//! with a context image as its register file, every image checked before it reaches the CPU.
//! Slow (several instructions and copies per call) and thorough: the differential tests
//! compare it with [`ModelCpu`](crate::model::ModelCpu); the engine's hot path uses
//! [`HwBackend`](crate::hw::HwBackend).

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::hw::{AlignedBuf, Host, HwError, Restore, SaveOp, Sequence};
use crate::model::{Backend, CpuProfile, Exception, Fault, Msr, RestoreInsn, SaveInsn};

/// The real CPU in user mode (CPL 3): XSAVE, XSAVEOPT, XSAVEC, XRSTOR, FXSAVE, FXRSTOR and
/// XGETBV run on silicon; XSETBV, XSAVES, XRSTORS and the MSRs raise #GP as they would at
/// CPL 3.
///
/// Its register file is a context image (see the module docs). Consequently XSAVEOPT's
/// modified optimization never applies across calls (each call's last XRSTOR is from the
/// context image), and a restore image is copied to an aligned buffer after the alignment
/// check. Images the OS would intercept (XFD-armed components) are `Refused`.
///
/// Off the hot path: each call is a sequence of several instructions (load the context,
/// the instruction, save the context) and a restore copies and validates the image; use
/// [`HwBackend`](crate::hw::live::HwBackend) to switch contexts.
///
/// ```
/// use xstate::hw::CheckedHwBackend;
/// use xstate::model::{Backend, SaveInsn};
/// if let Some(mut hw) = CheckedHwBackend::new() {
///     let mut mem = xstate::image::AlignedBuf::new(hw.profile().layout.max_standard_size() as usize);
///     hw.save(SaveInsn::Xsave, &mut mem, u64::MAX).unwrap();
/// }
/// ```
pub struct CheckedHwBackend {
    host: Host,
    profile: CpuProfile,
    ctx: AlignedBuf,
    spare: AlignedBuf,
}

fn fault(e: HwError) -> Fault {
    match e {
        HwError::Unsupported { insn, why } => Fault::with(
            Exception::Ud,
            "instruction not supported (CPUID) or not enabled (CR4.OSXSAVE)",
            alloc::format!("{insn}: {why}"),
        ),
        HwError::Misaligned { insn, addr, align } => Fault::with(
            Exception::Gp,
            "memory operand not aligned (SDM Vol. 1 §13.7-13.8: 64 bytes; FXSAVE 16)",
            alloc::format!("{insn} at {addr:#x}, needs {align}"),
        ),
        HwError::TooSmall { insn, need, have } => Fault::with(
            Exception::Pf,
            "memory operand extends past the end of the buffer",
            alloc::format!("{insn} touches {need} bytes, buffer has {have}"),
        ),
        HwError::Violates { insn, violation } => Fault::with(
            Exception::Gp,
            "the image breaks a restore rule of SDM Vol. 1 §13.8 (#GP)",
            alloc::format!("{insn}: {violation}"),
        ),
        HwError::WouldFault {
            insn,
            field,
            offset,
            rule,
        } => {
            let ex = if rule.contains("XFD") || rule.contains("PKRU") {
                Exception::Refused
            } else {
                Exception::Gp
            };
            Fault::with(
                ex,
                rule,
                alloc::format!("{insn}: {field} at offset {offset}"),
            )
        }
    }
}

fn cpl3(what: &'static str) -> Fault {
    Fault::with(
        Exception::Gp,
        "privileged instruction at CPL 3 (SDM Vol. 2: #GP(0) if CPL > 0)",
        what.to_string(),
    )
}

impl CheckedHwBackend {
    /// The hardware backend of this CPU, with the current registers as its initial state;
    /// None when XSAVE is not usable.
    pub fn new() -> Option<CheckedHwBackend> {
        let host = Host::detect();
        if !host.xsave_usable() {
            return None;
        }
        let mut profile = CpuProfile::from_dump(&crate::cpuid::CpuidDump::from_host());
        profile.mxcsr_mask = host.mxcsr_mask();
        let n = host.standard_size() as usize;
        let mut ctx = AlignedBuf::new(n);
        host.xsave(&mut ctx, u64::MAX).ok()?;
        Some(CheckedHwBackend {
            host,
            profile,
            ctx,
            spare: AlignedBuf::new(n),
        })
    }

    /// The hardware wrappers this backend uses.
    pub fn host(&self) -> &Host {
        &self.host
    }
}

impl Backend for CheckedHwBackend {
    fn profile(&self) -> &CpuProfile {
        &self.profile
    }

    fn xgetbv(&mut self, ecx: u32) -> Result<u64, Fault> {
        match ecx {
            0 => Ok(self.host.xcr0()),
            1 => {
                if !self.host.has_xgetbv1() {
                    return Err(Fault::gp(
                        "XGETBV with ECX = 1 needs CPUID.(0xD,1):EAX[2] (SDM Vol. 2 XGETBV: #GP)",
                    ));
                }
                let r = self
                    .host
                    .sequence(Sequence {
                        pre: Some(&self.ctx),
                        ..Sequence::default()
                    })
                    .map_err(fault)?;
                Ok(r.xinuse.unwrap_or(0))
            }
            _ => Err(Fault::gp(
                "XGETBV with ECX other than 0 or 1 (SDM Vol. 2 XGETBV: #GP)",
            )),
        }
    }

    fn xsetbv(&mut self, _ecx: u32, _value: u64) -> Result<(), Fault> {
        Err(cpl3("XSETBV"))
    }

    fn rdmsr(&mut self, _msr: Msr) -> Result<u64, Fault> {
        Err(cpl3("RDMSR"))
    }

    fn wrmsr(&mut self, _msr: Msr, _value: u64) -> Result<(), Fault> {
        Err(cpl3("WRMSR"))
    }

    fn save(&mut self, insn: SaveInsn, mem: &mut [u8], rfbm: u64) -> Result<(), Fault> {
        let op = match insn {
            SaveInsn::Xsave => SaveOp::Xsave,
            SaveInsn::Xsaveopt => SaveOp::Xsaveopt,
            SaveInsn::Xsavec => SaveOp::Xsavec,
            SaveInsn::Fxsave => SaveOp::Fxsave,
            SaveInsn::Xsaves => return Err(cpl3("XSAVES")),
        };
        self.host
            .sequence(Sequence {
                pre: Some(&self.ctx),
                save: Some((op, mem, rfbm)),
                ..Sequence::default()
            })
            .map_err(fault)?;
        Ok(())
    }

    fn restore(&mut self, insn: RestoreInsn, mem: &[u8], rfbm: u64) -> Result<(), Fault> {
        let align = match insn {
            RestoreInsn::Xrstor => 64,
            RestoreInsn::Fxrstor => 16,
            RestoreInsn::Xrstors => return Err(cpl3("XRSTORS")),
        };
        let addr = mem.as_ptr() as usize;
        if addr % align != 0 {
            return Err(fault(HwError::Misaligned {
                insn: insn.name(),
                addr,
                align,
            }));
        }
        let mut copy = AlignedBuf::from_bytes(mem);
        let restore = match insn {
            RestoreInsn::Fxrstor => Restore::Fxrstor { mem: &mut copy },
            _ => Restore::Xrstor {
                mem: &mut copy,
                rfbm,
            },
        };
        self.spare.fill(0);
        self.host
            .sequence(Sequence {
                pre: Some(&self.ctx),
                restore: Some(restore),
                save: Some((SaveOp::Xsave, &mut self.spare, u64::MAX)),
                ..Sequence::default()
            })
            .map_err(fault)?;
        core::mem::swap(&mut self.ctx, &mut self.spare);
        Ok(())
    }

    fn load_state(&mut self, state: &[u8], _xinuse: Option<u64>) -> Result<(), Fault> {
        let n = self.ctx.len();
        let mut img = AlignedBuf::new(n);
        let k = state.len().min(n);
        img[..k].copy_from_slice(&state[..k]);
        // Header: only XSTATE_BV bits of XCR0; XCOMP_BV and reserved bytes zero.
        let mut bv = [0u8; 8];
        bv.copy_from_slice(&img[512..520]);
        let bv = u64::from_le_bytes(bv) & self.host.xcr0();
        img[512..520].copy_from_slice(&bv.to_le_bytes());
        img[520..576].fill(0);
        let m = u32::from_le_bytes([img[24], img[25], img[26], img[27]]);
        if m & !self.host.mxcsr_mask() != 0 {
            return Err(Fault::with(
                Exception::Gp,
                "MXCSR has bits outside MXCSR_MASK (SDM Vol. 1 §13.8: #GP)",
                alloc::format!(
                    "MXCSR {m:#x} at offset 24, mask {:#x}",
                    self.host.mxcsr_mask()
                ),
            ));
        }
        self.spare.fill(0);
        self.host
            .sequence(Sequence {
                restore: Some(Restore::Xrstor {
                    mem: &mut img,
                    rfbm: u64::MAX,
                }),
                save: Some((SaveOp::Xsave, &mut self.spare, u64::MAX)),
                ..Sequence::default()
            })
            .map_err(fault)?;
        core::mem::swap(&mut self.ctx, &mut self.spare);
        Ok(())
    }

    fn read_state(&mut self) -> Result<Vec<u8>, Fault> {
        let mut out = AlignedBuf::new(self.ctx.len());
        self.save(SaveInsn::Xsave, &mut out, u64::MAX)?;
        Ok(out.to_vec())
    }
}
