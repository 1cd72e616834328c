//! The user-mode hardware backend whose register file **is the live registers** of the
//! calling thread: what a runtime switching its own contexts does. `save` issues exactly the
//! save instruction asked for on the thread's registers, `restore` exactly the restore
//! instruction; there is no hidden image, and nothing is allocated on either path after
//! construction (faults aside, whose description is a string).
//!
//! Before each instruction the checks of [`InsnGuard`] run in O(1)
//! (support, alignment, extent from sizes cached per RFBM, the header rules read once,
//! MXCSR), plus what keeps *later ordinary code* of this thread from trapping, also O(1): no
//! pending unmasked x87 exception, no unmasked SSE exception, PKRU allowing access to
//! protection key 0, and no component the kernel arms with XFD before this process has
//! permission for it (Linux arms TILEDATA until `arch_prctl(ARCH_REQ_XCOMP_PERM)`: touching it
//! earlier is SIGILL; with permission the first use is handled by the kernel).
//!
//! Consequences of live registers, by design:
//! * compiled code between two calls may change vector registers (Rust uses XMM registers
//!   for copies): what a save captures is the thread's state at that point; a test that
//!   needs a state to survive from one call to the next uses
//!   [`CheckedHwBackend`](crate::hw::CheckedHwBackend), whose register file is an image;
//! * between a restore and the next one the thread runs with the restored x87 control word
//!   and MXCSR (rounding, DAZ/FTZ): a runtime does no floating point of its own while a
//!   guest's state is loaded, as the engine's attach/detach does none;
//! * XSAVEOPT's modified optimization applies across calls, as on any context switch.

use alloc::vec::Vec;

use super::guard::{InsnGuard, Support};
use super::{check_mxcsr_masked, check_x87_env, Host, HwError};
use crate::components::mask;
use crate::model::{AlignedBuf, Backend, CpuProfile, Exception, Fault, Msr, RestoreInsn, SaveInsn};

/// The real CPU in user mode on the live registers (see the module docs). XSAVE, XSAVEOPT,
/// XSAVEC, XRSTOR, FXSAVE, FXRSTOR and XGETBV run on silicon; XSETBV, XSAVES, XRSTORS and the
/// MSRs raise #GP as they would at CPL 3.
///
/// ```
/// use xstate::hw::HwBackend;
/// use xstate::model::{AlignedBuf, Backend, RestoreInsn, SaveInsn};
/// if let Some(mut hw) = HwBackend::new() {
///     let xcr0 = hw.xgetbv(0).unwrap();
///     let n = hw.profile().layout.compacted(xcr0).unwrap().size as usize;
///     let mut ctx = AlignedBuf::new(n.max(576));
///     hw.save(SaveInsn::Xsavec, &mut ctx, xcr0).unwrap();   // one XSAVEC
///     hw.restore(RestoreInsn::Xrstor, &ctx, xcr0).unwrap(); // one XRSTOR
/// }
/// ```
pub struct HwBackend {
    host: Host,
    profile: CpuProfile,
    guard: InsnGuard,
    xfd_capable: u64,
    permitted: u64,
    standard_size: usize,
}

fn cpl3(what: &'static str) -> Fault {
    Fault::with(
        Exception::Gp,
        "privileged instruction at CPL 3 (SDM Vol. 2: #GP(0) if CPL > 0)",
        alloc::string::String::from(what),
    )
}

fn trap(e: HwError) -> Fault {
    match e {
        HwError::WouldFault {
            insn,
            field,
            offset,
            rule,
        } => Fault::with(
            Exception::Refused,
            rule,
            alloc::format!("{insn}: {field} at offset {offset}"),
        ),
        other => Fault::with(
            Exception::Refused,
            "the state would make later code of this thread trap",
            alloc::format!("{other}"),
        ),
    }
}

/// The dynamic features this process may use (`arch_prctl(ARCH_GET_XCOMP_PERM)`, Linux);
/// 0 where it cannot be asked.
fn permitted_features() -> u64 {
    #[cfg(all(feature = "std", target_os = "linux"))]
    {
        const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
        let mut m: u64 = 0;
        // SAFETY: arch_prctl(ARCH_GET_XCOMP_PERM, &mut u64) writes one u64 to the pointer,
        // which points to a live local; an old kernel returns EINVAL and writes nothing.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_PERM,
                &mut m as *mut u64,
            )
        };
        if r == 0 {
            return m;
        }
    }
    0
}

impl HwBackend {
    /// The backend of this CPU; None when XSAVE is not usable.
    pub fn new() -> Option<HwBackend> {
        let host = Host::detect();
        if !host.xsave_usable() {
            return None;
        }
        let mut profile = CpuProfile::from_dump(&crate::cpuid::CpuidDump::from_host());
        profile.mxcsr_mask = host.mxcsr_mask();
        let support = Support {
            xsave: true,
            xsaveopt: host.has_xsaveopt(),
            xsavec: host.has_xsavec(),
            // XSAVES/XRSTORS need CPL 0: refused before the guard is asked.
            xsaves: false,
            fxsr: host.has_fxsr(),
        };
        let guard = InsnGuard::new(
            &profile.layout,
            support,
            host.xcr0(),
            0,
            0,
            host.mxcsr_mask(),
        );
        let xfd_capable = if host.has_xfd() {
            profile.xfd_capable()
        } else {
            0
        };
        Some(HwBackend {
            standard_size: host.standard_size() as usize,
            host,
            profile,
            guard,
            xfd_capable,
            permitted: permitted_features(),
        })
    }

    /// The hardware wrappers this backend uses.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The checks of a restore that concern this thread after it (module docs), O(1).
    fn check_traps(&mut self, insn: RestoreInsn, mem: &[u8], rfbm: u64) -> Result<(), Fault> {
        let r = self.guard.check_restore(insn, mem, rfbm)?;
        if insn == RestoreInsn::Fxrstor {
            check_mxcsr_masked("FXRSTOR", mem).map_err(trap)?;
            return check_x87_env(mem).map_err(trap);
        }
        let xfd = r.loaded & self.xfd_capable & !self.permitted;
        if xfd != 0 {
            // Permission may have been granted since: ask again (rare path).
            self.permitted = permitted_features();
            if r.loaded & self.xfd_capable & !self.permitted != 0 {
                return Err(Fault::with(
                    Exception::Refused,
                    "loads an XFD-capable component this process has no permission for: the kernel arms XFD for it (SDM §13.14 #NM, delivered as SIGILL); request it with arch_prctl(ARCH_REQ_XCOMP_PERM)",
                    alloc::format!("XRSTOR: XSTATE_BV & RFBM = {:#x}", r.loaded),
                ));
            }
        }
        let compacted = crate::image::raw_xcomp_bv(mem) & mask::COMPACTED != 0;
        let mxcsr_loaded = if compacted {
            r.loaded & mask::SSE != 0
        } else {
            rfbm & self.guard.xcr0 & (mask::SSE | mask::AVX) != 0
        };
        if mxcsr_loaded {
            check_mxcsr_masked("XRSTOR", mem).map_err(trap)?;
        }
        if r.loaded & mask::X87 != 0 {
            check_x87_env(mem).map_err(trap)?;
        }
        if let Some(p) = r.pkru {
            if mem.get(p as usize).is_some_and(|b| b & 3 != 0) {
                return Err(Fault::with(
                    Exception::Refused,
                    "PKRU denies access to protection key 0: every memory access after the restore would fault",
                    alloc::format!("XRSTOR: PKRU at offset {p}"),
                ));
            }
        }
        Ok(())
    }
}

impl Backend for HwBackend {
    fn profile(&self) -> &CpuProfile {
        &self.profile
    }

    fn xgetbv(&mut self, ecx: u32) -> Result<u64, Fault> {
        match ecx {
            // XCR0 cannot change under a user-mode thread.
            0 => Ok(self.guard.xcr0),
            1 if self.host.has_xgetbv1() => Ok(super::xgetbv(1)),
            1 => Err(Fault::gp(
                "XGETBV with ECX = 1 needs CPUID.(0xD,1):EAX[2] (SDM Vol. 2 XGETBV: #GP)",
            )),
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

    #[inline]
    fn save(&mut self, insn: SaveInsn, mem: &mut [u8], rfbm: u64) -> Result<(), Fault> {
        if insn == SaveInsn::Xsaves {
            return Err(cpl3("XSAVES"));
        }
        self.guard.check_save(insn, mem, rfbm)?;
        let p = mem.as_mut_ptr();
        let (lo, hi) = (rfbm as u32, (rfbm >> 32) as u32);
        // SAFETY: the guard checked CPU support (no #UD), alignment (no #GP) and that `mem`,
        // borrowed mutably, holds every byte the instruction writes for RFBM & XCR0. Saves
        // read registers and write only `mem`.
        unsafe {
            match insn {
                SaveInsn::Xsave => core::arch::asm!("xsave64 [{p}]", p = in(reg) p,
                    in("eax") lo, in("edx") hi, options(nostack, preserves_flags)),
                SaveInsn::Xsaveopt => core::arch::asm!("xsaveopt64 [{p}]", p = in(reg) p,
                    in("eax") lo, in("edx") hi, options(nostack, preserves_flags)),
                SaveInsn::Xsavec => core::arch::asm!("xsavec64 [{p}]", p = in(reg) p,
                    in("eax") lo, in("edx") hi, options(nostack, preserves_flags)),
                SaveInsn::Fxsave => core::arch::asm!("fxsave64 [{p}]", p = in(reg) p,
                    options(nostack, preserves_flags)),
                SaveInsn::Xsaves => {}
            }
        }
        Ok(())
    }

    #[inline]
    fn restore(&mut self, insn: RestoreInsn, mem: &[u8], rfbm: u64) -> Result<(), Fault> {
        let fast = insn == RestoreInsn::Xrstor
            && self
                .guard
                .xrstor_fast(mem, rfbm, self.xfd_capable & !self.permitted);
        if !fast {
            if insn == RestoreInsn::Xrstors {
                return Err(cpl3("XRSTORS"));
            }
            self.check_traps(insn, mem, rfbm)?;
        }
        let p = mem.as_ptr();
        let (lo, hi) = (rfbm as u32, (rfbm >> 32) as u32);
        // SAFETY: the guard (fast path, or the detailed checks) verified support, alignment,
        // the extent read, the header rules and MXCSR (no #UD, #GP), and that no component
        // armed by XFD without permission is loaded (no SIGILL). Every register the restore writes is declared clobbered; memory is only
        // read.
        unsafe {
            match insn {
                RestoreInsn::Fxrstor => core::arch::asm!("fxrstor64 [{p}]", p = in(reg) p,
                    clobber_abi("C"), options(nostack, readonly)),
                _ => core::arch::asm!("xrstor64 [{p}]", p = in(reg) p,
                    in("eax") lo, in("edx") hi, clobber_abi("C"), options(nostack, readonly)),
            }
        }
        Ok(())
    }

    fn load_state(&mut self, state: &[u8], _xinuse: Option<u64>) -> Result<(), Fault> {
        let n = self.standard_size;
        let mut img = AlignedBuf::new(n);
        let k = state.len().min(n);
        img[..k].copy_from_slice(&state[..k]);
        // Header: only XSTATE_BV bits of XCR0; XCOMP_BV and reserved bytes zero.
        let bv = crate::image::raw_xstate_bv(&img) & self.guard.xcr0;
        img[512..520].copy_from_slice(&bv.to_le_bytes());
        img[520..576].fill(0);
        self.restore(RestoreInsn::Xrstor, &img, u64::MAX)
    }

    fn read_state(&mut self) -> Result<Vec<u8>, Fault> {
        let mut out = AlignedBuf::new(self.standard_size);
        self.save(SaveInsn::Xsave, &mut out, u64::MAX)?;
        Ok(out.to_vec())
    }
}
