//! The ring-0 backend (cargo feature `ring0`): the real instructions for kernels and
//! hypervisors running at CPL 0 — XSAVE, XSAVEOPT, XSAVEC, XSAVES, XRSTOR, XRSTORS, FXSAVE,
//! FXRSTOR, XGETBV, XSETBV and RDMSR/WRMSR of IA32_XSS, IA32_XFD, IA32_XFD_ERR — on the
//! registers of the executing logical processor.
//!
//! **Compile-tested only** in this project (CI builds and lints the crate with
//! `--features ring0`): at CPL 3 these instructions fault.
//!
//! Save and restore are the hot path: before each, the O(1) checks of
//! [`InsnGuard`] against the cached control state (support,
//! alignment, extent cached per RFBM, the header rules read once, MXCSR, the CET supervisor
//! values of XRSTORS, #NM for an XFD-armed component), then exactly the instruction asked
//! for; nothing is allocated. XSETBV, RDMSR and WRMSR (rare) are checked on a
//! [`ModelCpu`] that mirrors the control state (XCR0, IA32_XSS,
//! IA32_XFD, CPL 0), and update the guard. [`Ring0Backend::set_verify`] also runs every save
//! and restore on a clone of the mirror first (the model's full fault rules, several
//! allocations per call: for bring-up and tests, not for production). Faults the checks
//! cannot see (such as an MSR the hypervisor above us refuses) can still reach the CPU.
//!
//! Like [`HwBackend`](crate::hw::HwBackend), the register file is the processor's own:
//! compiled code between calls may change vector registers (the kernel must own the FPU, with
//! the compiler told not to use vector registers, as kernels do).

use alloc::vec::Vec;

use super::guard::{InsnGuard, Support};
use crate::model::{Backend, CpuProfile, Fault, ModelCpu, Msr, RestoreInsn, SaveInsn};

/// The real CPU at CPL 0.
#[derive(Debug)]
pub struct Ring0Backend {
    profile: CpuProfile,
    mirror: ModelCpu,
    guard: InsnGuard,
    verify: bool,
}

impl Ring0Backend {
    /// A backend for the executing processor.
    ///
    /// # Safety
    /// The caller runs at CPL 0 in 64-bit mode with CR4.OSXSAVE set, owns the FPU/vector
    /// state of this logical processor for as long as the backend is used (no preemption onto
    /// another CPU between a call and the use of its result), and `profile` describes this
    /// CPU. The control state is read from the CPU here (XCR0, and IA32_XSS / IA32_XFD when
    /// the profile says they exist).
    pub unsafe fn new(profile: CpuProfile) -> Ring0Backend {
        let mut mirror = ModelCpu::new(profile.clone());
        mirror.cpl = 0;
        mirror.xcr0 = super::xgetbv(0);
        if profile.xsaves {
            // SAFETY: CPL 0 (caller's contract) and the CPU has IA32_XSS (CPUID says XSAVES).
            mirror.xss = unsafe { rdmsr(Msr::Xss.index()) };
        }
        if profile.xfd {
            // SAFETY: CPL 0 and the CPU has IA32_XFD (CPUID.(0xD,1):EAX[4]).
            mirror.xfd = unsafe { rdmsr(Msr::Xfd.index()) };
        }
        let guard = InsnGuard::new(
            &profile.layout,
            Support {
                xsave: profile.xsave,
                xsaveopt: profile.xsaveopt,
                xsavec: profile.xsavec,
                xsaves: profile.xsaves,
                fxsr: profile.fxsr,
            },
            mirror.xcr0,
            mirror.xss,
            mirror.xfd,
            profile.mxcsr_mask,
        );
        Ring0Backend {
            profile,
            mirror,
            guard,
            verify: false,
        }
    }

    /// Verify mode: every save and restore is first run on a clone of the model mirroring the
    /// control state (the model's full fault rules, CR0.TS included), as well as the O(1)
    /// checks. Off by default: it allocates and costs microseconds per call.
    pub fn set_verify(&mut self, on: bool) {
        self.verify = on;
    }

    fn sync_guard(&mut self) {
        let (x, s, f) = (self.mirror.xcr0, self.mirror.xss, self.mirror.xfd);
        self.guard.set_control(&self.profile.layout, x, s, f);
    }
}

/// RDMSR.
///
/// # Safety
/// CPL 0 and the MSR exists.
unsafe fn rdmsr(idx: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees CPL 0 and that the MSR exists (no #GP).
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") idx, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// WRMSR.
///
/// # Safety
/// CPL 0, the MSR exists and accepts the value.
unsafe fn wrmsr(idx: u32, v: u64) {
    // SAFETY: the caller guarantees CPL 0 and a valid MSR/value (no #GP).
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") idx, in("eax") v as u32, in("edx") (v >> 32) as u32,
            options(nostack, preserves_flags));
    }
}

impl Backend for Ring0Backend {
    fn profile(&self) -> &CpuProfile {
        &self.profile
    }

    fn xgetbv(&mut self, ecx: u32) -> Result<u64, Fault> {
        // Fault rules from the model; the value from the CPU.
        self.mirror.xgetbv(ecx)?;
        Ok(super::xgetbv(ecx))
    }

    fn xsetbv(&mut self, ecx: u32, value: u64) -> Result<(), Fault> {
        self.mirror.xsetbv(ecx, value)?;
        // SAFETY: CPL 0 and CR4.OSXSAVE (constructor contract); ECX = 0 and the value passed
        // every XSETBV rule on the model (no #GP).
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") ecx, in("eax") value as u32,
                in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags));
        }
        self.sync_guard();
        Ok(())
    }

    fn rdmsr(&mut self, msr: Msr) -> Result<u64, Fault> {
        self.mirror.rdmsr(msr)?;
        // SAFETY: the model checked that the CPU has this MSR; CPL 0 by contract.
        Ok(unsafe { rdmsr(msr.index()) })
    }

    fn wrmsr(&mut self, msr: Msr, value: u64) -> Result<(), Fault> {
        self.mirror.wrmsr(msr, value)?;
        // SAFETY: the model checked the MSR exists and the value's bits are allowed.
        unsafe { wrmsr(msr.index(), value) };
        self.sync_guard();
        Ok(())
    }

    fn save(&mut self, insn: SaveInsn, mem: &mut [u8], rfbm: u64) -> Result<(), Fault> {
        if self.verify {
            // Dry run on a scratch copy of the mirror: alignment, size, support, CPL, TS.
            let mut scratch = alloc::vec![0u8; mem.len()];
            let addr = mem.as_ptr() as u64;
            let mut m = self.mirror.clone();
            match insn {
                SaveInsn::Xsave => m.xsave(&mut scratch, addr, rfbm),
                SaveInsn::Xsaveopt => m.xsaveopt(&mut scratch, addr, rfbm),
                SaveInsn::Xsavec => m.xsavec(&mut scratch, addr, rfbm),
                SaveInsn::Xsaves => m.xsaves(&mut scratch, addr, rfbm),
                SaveInsn::Fxsave => m.fxsave(&mut scratch, addr),
            }?;
        }
        // Support, alignment and the full extent for the mask (so that a CPU writing more
        // than the model predicts stays in bounds), O(1).
        self.guard.check_save(insn, mem, rfbm)?;
        // SAFETY: the guard found the instruction supported (CR4.OSXSAVE and CPL 0 by the
        // constructor's contract), `mem` aligned and holding the whole extent for the mask.
        unsafe { super::insn::save(insn, mem, rfbm) };
        Ok(())
    }

    fn restore(&mut self, insn: RestoreInsn, mem: &[u8], rfbm: u64) -> Result<(), Fault> {
        if self.verify {
            let addr = mem.as_ptr() as u64;
            let mut m = self.mirror.clone();
            match insn {
                RestoreInsn::Xrstor => m.xrstor(mem, addr, rfbm),
                RestoreInsn::Xrstors => m.xrstors(mem, addr, rfbm),
                RestoreInsn::Fxrstor => m.fxrstor(mem, addr),
            }?;
        }
        self.guard.check_restore(insn, mem, rfbm)?;
        // SAFETY: the guard, with the mirrored XCR0/IA32_XSS/IA32_XFD at CPL 0, found no fault:
        // support, alignment, the extent read, the header rules, MXCSR, the CET values and no
        // XFD-armed component loaded.
        unsafe { super::insn::restore(insn, mem, rfbm) };
        Ok(())
    }

    fn load_state(&mut self, state: &[u8], _xinuse: Option<u64>) -> Result<(), Fault> {
        let size = self
            .profile
            .layout
            .standard(self.mirror.xcr0)
            .map(|l| l.size as usize)
            .unwrap_or(576)
            .max(576);
        let mut img = crate::model::AlignedBuf::new(size);
        let k = state.len().min(size);
        img[..k].copy_from_slice(&state[..k]);
        let bv = if k >= 520 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&img[512..520]);
            u64::from_le_bytes(b) & self.mirror.xcr0
        } else {
            0
        };
        img[512..520].copy_from_slice(&bv.to_le_bytes());
        img[520..576].fill(0);
        self.restore(RestoreInsn::Xrstor, &img, u64::MAX)
    }

    fn read_state(&mut self) -> Result<Vec<u8>, Fault> {
        let size = self
            .profile
            .layout
            .standard(self.mirror.xcr0)
            .map(|l| l.size as usize)
            .unwrap_or(576)
            .max(576);
        let mut img = crate::model::AlignedBuf::new(size);
        self.save(SaveInsn::Xsave, &mut img, u64::MAX)?;
        Ok(img.to_vec())
    }
}
