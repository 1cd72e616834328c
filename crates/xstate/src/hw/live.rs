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
use crate::model::{
    AlignedBuf, Backend, CpuProfile, Exception, Fault, Msr, RestoreInsn, SaveInsn, Seal, SealedMut,
    SealedRef, SwitchFault,
};

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
    /// This instance's name in the [`Seal`]s it sets (never 0).
    id: u64,
    /// `Seal::key(id, Xsavec)`, read by every switch.
    xsavec_key: u64,
}

/// Names of backend instances for [`Seal`]s: each `HwBackend` gets its own.
static NEXT_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

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
    /// True when XRSTOR under `seal` needs no check (see
    /// [`restore_sealed`](Backend::restore_sealed)): sealed by this instance, and in the
    /// standard form only with an RFBM within the sealing save's.
    #[inline(always)]
    fn restore_trusted(&self, insn: RestoreInsn, seal: &Seal, rfbm: u64) -> bool {
        let k = seal.key_of();
        insn == RestoreInsn::Xrstor
            && (k == self.key(SaveInsn::Xsavec)
                || ((k == self.key(SaveInsn::Xsave) || k == self.key(SaveInsn::Xsaveopt))
                    && rfbm & !seal.rfbm() & self.guard.xcr0 == 0))
    }

    /// This instance's [`Seal::key`] for `insn`.
    #[inline(always)]
    fn key(&self, insn: SaveInsn) -> u64 {
        Seal::key(self.id, insn)
    }

    /// [`Backend::switch_sealed`] but for the XSAVEC pair of trusted buffers: both
    /// instructions in one block when both buffers are trusted (as in
    /// [`save_sealed`](Backend::save_sealed) and [`restore_sealed`](Backend::restore_sealed)),
    /// otherwise the two checked calls.
    #[cold]
    #[inline(never)]
    fn switch_other(
        &mut self,
        save: (SaveInsn, u64),
        into: SealedMut<'_>,
        restore: (RestoreInsn, u64),
        from: SealedRef<'_>,
    ) -> Result<(), SwitchFault> {
        if into.seal().holds(self.key(save.0), save.1)
            && self.restore_trusted(restore.0, from.seal(), restore.1)
        {
            let (to, _) = into.split();
            // SAFETY: as in save_sealed and restore_sealed; the save writes only `to`,
            // which is not `from` (one mutable, one shared borrow).
            unsafe {
                super::insn::save_then_restore(save.0, to, save.1, restore.0, from.mem(), restore.1)
            };
            return Ok(());
        }
        crate::model::backend::switch_in_two_calls(self, save, into, restore, from)
    }

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
        let id = NEXT_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        Some(HwBackend {
            standard_size: host.standard_size() as usize,
            host,
            profile,
            guard,
            xfd_capable,
            permitted: permitted_features(),
            id,
            xsavec_key: Seal::key(id, SaveInsn::Xsavec),
        })
    }

    /// The hardware wrappers this backend uses.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The checked save of [`Backend::save_sealed`] and the sealing (the first save into a
    /// container, or after it was written by other means): kept off the hot path.
    #[cold]
    #[inline(never)]
    fn seal_save(
        &mut self,
        insn: SaveInsn,
        mem: &mut [u8],
        rfbm: u64,
        seal: &mut Seal,
    ) -> Result<(), Fault> {
        *seal = Seal::NONE;
        self.save(insn, mem, rfbm)?;
        // The restores the seal will admit: any RFBM for the compacted form (XCOMP_BV fixes
        // what is read), RFBMs within the save's for the standard form (its extent).
        let checked = match insn {
            SaveInsn::Xsavec => u64::MAX,
            SaveInsn::Xsave | SaveInsn::Xsaveopt => rfbm,
            _ => return Ok(()),
        };
        let forbidden = self.xfd_capable & !self.permitted;
        if self.guard.xrstor_fast(mem, checked, forbidden)
            || self.check_traps(RestoreInsn::Xrstor, mem, checked).is_ok()
        {
            *seal = Seal::new(self.key(insn), rfbm);
        }
        Ok(())
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
        // SAFETY: the guard checked CPU support (no #UD), alignment (no #GP) and that `mem`,
        // borrowed mutably, holds every byte the instruction writes for RFBM & XCR0.
        unsafe { super::insn::save(insn, mem, rfbm) };
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
        // SAFETY: the guard (fast path, or the detailed checks) verified support, alignment,
        // the extent read, the header rules and MXCSR (no #UD, #GP), and that no component
        // armed by XFD without permission is loaded (no SIGILL).
        unsafe { super::insn::restore(insn, mem, rfbm) };
        Ok(())
    }

    /// The trusted-container path (P1 of issue 11). A buffer sealed by this instance for the
    /// same instruction and RFBM is saved into with no check: the seal proves the checks of
    /// the save that sealed it (support, alignment, extent for this RFBM) and nothing changed
    /// them (XCR0 is fixed under a user-mode thread; the seal's buffer is the one it was set
    /// on, see [`SealedBuf`](crate::model::SealedBuf)). Otherwise the checked save runs, and
    /// the buffer is sealed only if the image it wrote then passes every check of a restore
    /// with RFBM = all ones — the header rules (reserved bytes 16-63 included, which XSAVE*
    /// never write), MXCSR, the trap rules and XFD permission.
    ///
    /// Later saves under the seal rewrite only bytes that come from this thread's registers
    /// (XSTATE_BV, XCOMP_BV of the same RFBM, components); every other byte is as it was when
    /// checked. So a restore of a sealed buffer loads either what the registers held or what
    /// was checked (SDM §13.8: such an image raises no #GP; permissions only grow).
    #[inline]
    fn save_sealed(&mut self, insn: SaveInsn, buf: SealedMut<'_>, rfbm: u64) -> Result<(), Fault> {
        let (mem, seal) = buf.split();
        if seal.holds(self.key(insn), rfbm) {
            // SAFETY: the seal (set by seal_save, by this instance, for this buffer,
            // instruction and RFBM) proves check_save passed for them; nothing it checked has
            // changed.
            unsafe { super::insn::save(insn, mem, rfbm) };
            return Ok(());
        }
        self.seal_save(insn, mem, rfbm, seal)
    }

    /// XRSTOR of a buffer this instance sealed (see [`save_sealed`](Self::save_sealed)) runs
    /// without the checks; in the standard form only with an RFBM within the sealing save's
    /// (the extent and the components checked when sealed). Anything else takes the checked
    /// [`restore`](Backend::restore).
    #[inline]
    fn restore_sealed(
        &mut self,
        insn: RestoreInsn,
        buf: SealedRef<'_>,
        rfbm: u64,
    ) -> Result<(), Fault> {
        let mem = buf.mem();
        if !self.restore_trusted(insn, buf.seal(), rfbm) {
            return self.restore(insn, mem, rfbm);
        }
        // SAFETY: the seal proves this image was written by this instance's XSAVE-family save
        // into this buffer and passed every restore check of RFBM = all ones when sealed;
        // since then only the save instruction wrote it (save_sealed). The compacted XRSTOR
        // reads what XCOMP_BV says whatever the RFBM (checked when sealed, with RFBM = all
        // ones); the standard one reads within the sealing save's RFBM (checked just above),
        // as checked when sealed.
        unsafe { super::insn::restore(insn, mem, rfbm) };
        Ok(())
    }

    /// The user-mode engine's switch (XSAVEC into a buffer this instance sealed for XSAVEC
    /// and this RFBM, then XRSTOR of a buffer it sealed for XSAVEC) as one `asm!` block after
    /// five compares; every other case in `switch_other` (cold).
    #[inline(always)]
    fn switch_sealed(
        &mut self,
        save: (SaveInsn, u64),
        into: SealedMut<'_>,
        restore: (RestoreInsn, u64),
        from: SealedRef<'_>,
    ) -> Result<(), SwitchFault> {
        let k = self.xsavec_key;
        if save.0 == SaveInsn::Xsavec
            && restore.0 == RestoreInsn::Xrstor
            && into.seal().holds(k, save.1)
            && from.seal().key_of() == k
        {
            let (to, _) = into.split();
            // SAFETY: as in save_sealed (the seal proves the save's checks) and
            // restore_sealed (a compacted image this instance's XSAVEC wrote and checked
            // with RFBM = all ones); the save writes only `to`, which is not `from` (one
            // mutable, one shared borrow), so the restore's proof still holds after it.
            unsafe { super::insn::xsavec_then_xrstor(to, save.1, from.mem(), restore.1) };
            return Ok(());
        }
        self.switch_other(save, into, restore, from)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Line, SealedBuf};

    /// `n` zero bytes (rounded up to whole lines), unsealed.
    fn sealed_buf(n: usize) -> SealedBuf {
        SealedBuf::new(alloc::vec![Line([0; 64]); n.div_ceil(64)])
    }

    /// A buffer of the compacted size of XCR0 and the XCR0 of this thread; None (printed
    /// skip) without XSAVEC.
    fn setup() -> Option<(HwBackend, SealedBuf, u64)> {
        let Some(mut hw) = HwBackend::new() else {
            std::println!("skipped: XSAVE is not usable");
            return None;
        };
        if !hw.host().has_xsavec() {
            std::println!("skipped: no XSAVEC (CPUID.(0xD,1):EAX[1])");
            return None;
        }
        // Without the AMX permission the tiles are refused: leave them out of the RFBM.
        let xcr0 = hw.xgetbv(0).unwrap() & !(hw.xfd_capable & !hw.permitted);
        let n = hw.profile().layout.compacted(xcr0).unwrap().size as usize;
        Some((hw, sealed_buf(n.max(576)), xcr0))
    }

    /// The engine's trusted path: XSAVEC into a buffer seals it for this instance,
    /// instruction and RFBM; the restore of the sealed buffer and the next sealed save run; a
    /// copied buffer or seal is not sealed.
    #[test]
    fn xsavec_seals_and_the_seal_is_bound() {
        let Some((mut hw, mut buf, xcr0)) = setup() else {
            return;
        };
        hw.save_sealed(SaveInsn::Xsavec, buf.for_save(), xcr0)
            .unwrap();
        let k = hw.key(SaveInsn::Xsavec);
        assert!(buf.seal().holds(k, xcr0));
        hw.restore_sealed(RestoreInsn::Xrstor, buf.for_restore(), xcr0)
            .unwrap();
        hw.save_sealed(SaveInsn::Xsavec, buf.for_save(), xcr0)
            .unwrap();
        assert!(buf.seal().holds(k, xcr0));
        // Another RFBM, another instruction, another instance, a clone: not sealed for them.
        assert!(!buf.seal().holds(k, 3));
        assert!(!buf.seal().holds(hw.key(SaveInsn::Xsave), xcr0));
        let mut other = HwBackend::new().unwrap();
        assert!(!buf.seal().holds(other.key(SaveInsn::Xsavec), xcr0));
        assert_eq!(buf.seal().clone(), Seal::NONE);
        assert_eq!(*buf.clone().seal(), Seal::NONE);

        // A copy of the sealed image with a broken header: the copy is not sealed, so its
        // restore is checked and refused (#GP rule), not issued.
        let mut bad = buf.clone();
        bad.bytes_mut()[512 + 16] = 1; // reserved header byte (SDM §13.8.2: must be 0)
        let e = hw
            .restore_sealed(RestoreInsn::Xrstor, bad.for_restore(), xcr0)
            .unwrap_err();
        assert_eq!(e.exception, Exception::Gp, "{e}");

        // Another backend instance does not honour this one's seal: it checks and refuses.
        let (mem, _) = buf.for_save().split();
        mem[512 + 16] = 1; // kept sealed only because this test writes behind the seal
        let e = other
            .restore_sealed(RestoreInsn::Xrstor, buf.for_restore(), xcr0)
            .unwrap_err();
        assert_eq!(e.exception, Exception::Gp, "{e}");
        // Nor its switch (the fused path included).
        let mut into = sealed_buf(buf.bytes().len());
        other
            .save_sealed(SaveInsn::Xsavec, into.for_save(), xcr0)
            .unwrap();
        let e = other
            .switch_sealed(
                (SaveInsn::Xsavec, xcr0),
                into.for_save(),
                (RestoreInsn::Xrstor, xcr0),
                buf.for_restore(),
            )
            .unwrap_err();
        assert!(
            matches!(&e, SwitchFault::Restore(f) if f.exception == Exception::Gp),
            "{e:?}"
        );
    }

    /// XSAVEC writes no header byte but XSTATE_BV and XCOMP_BV (SDM Vol. 2 XSAVEC; checked on
    /// this CPU): a buffer whose reserved header bytes were not zero before the save holds an
    /// image XRSTOR refuses, so it is not sealed and its restore is checked and refused.
    #[test]
    fn stale_header_bytes_are_not_sealed() {
        let Some((mut hw, mut buf, xcr0)) = setup() else {
            return;
        };
        buf.bytes_mut()[512 + 40] = 0x5a;
        hw.save_sealed(SaveInsn::Xsavec, buf.for_save(), xcr0)
            .unwrap();
        assert_eq!(
            buf.bytes()[512 + 40],
            0x5a,
            "XSAVEC wrote a reserved header byte"
        );
        assert_ne!(crate::image::raw_xcomp_bv(buf.bytes()) & mask::COMPACTED, 0);
        assert_eq!(*buf.seal(), Seal::NONE);
        let e = hw
            .restore_sealed(RestoreInsn::Xrstor, buf.for_restore(), xcr0)
            .unwrap_err();
        assert_eq!(e.exception, Exception::Gp, "{e}");
        // Cleared by software (which resets the seal), the next save seals it.
        buf.bytes_mut()[512 + 40] = 0;
        hw.save_sealed(SaveInsn::Xsavec, buf.for_save(), xcr0)
            .unwrap();
        assert!(buf.seal().holds(hw.key(SaveInsn::Xsavec), xcr0));
    }

    /// The standard form: sealed for the save's RFBM; a restore with RFBM beyond it (more
    /// extent, components not checked) is not trusted and goes through the checks.
    #[test]
    fn xsave_seal_covers_the_save_rfbm_only() {
        let Some((mut hw, _, xcr0)) = setup() else {
            return;
        };
        let mut buf = sealed_buf(hw.standard_size);
        hw.save_sealed(SaveInsn::Xsave, buf.for_save(), mask::LEGACY)
            .unwrap();
        assert!(buf.seal().holds(hw.key(SaveInsn::Xsave), mask::LEGACY));
        hw.restore_sealed(RestoreInsn::Xrstor, buf.for_restore(), mask::SSE)
            .unwrap();
        // XSTATE_BV bits outside the save's RFBM are not written by XSAVE: a restore with
        // RFBM = XCR0 of a 576-byte buffer sealed for the legacy components reaches the
        // checked path, which finds no room for AVX.
        let mut short = sealed_buf(576);
        hw.save_sealed(SaveInsn::Xsave, short.for_save(), mask::LEGACY)
            .unwrap();
        assert!(short.seal().holds(hw.key(SaveInsn::Xsave), mask::LEGACY));
        if xcr0 & mask::AVX != 0 {
            let e = hw
                .restore_sealed(RestoreInsn::Xrstor, short.for_restore(), xcr0)
                .unwrap_err();
            assert_eq!(e.exception, Exception::Pf, "{e}"); // 576 bytes: no room for AVX
        }
    }

    /// The fused switch on this CPU: with both buffers sealed the save and the restore run
    /// back to back (the registers switch, both seals still hold); a restore buffer whose seal
    /// was reset is checked, a bad one refused after the save (`SwitchFault::Restore`); a save
    /// that cannot run changes nothing (`SwitchFault::Save`); a seal for another RFBM or
    /// instruction is not used by the fused path.
    #[test]
    fn switch_sealed_fuses_trusted_buffers_and_checks_the_rest() {
        let Some((mut hw, mut host, xcr0)) = setup() else {
            return;
        };
        let mut guest = sealed_buf(host.bytes().len());
        // ST0 = `b` repeated (the x87 registers: compiled Rust code never touches them, while
        // it may use any XMM register between two statements), x87 in use, everything else in
        // init state.
        let load = |hw: &mut HwBackend, b: u8| {
            let mut img = alloc::vec![0u8; hw.standard_size];
            img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
            img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
            img[4] = 0x01; // abridged FTW: ST0 valid
            img[32..42].fill(b);
            img[512] = 0x1;
            hw.load_state(&img, None).unwrap();
        };
        let st0 = |hw: &mut HwBackend| hw.read_state().unwrap()[32];
        let k = hw.key(SaveInsn::Xsavec);
        load(&mut hw, 0x11);
        hw.save_sealed(SaveInsn::Xsavec, host.for_save(), xcr0)
            .unwrap();
        load(&mut hw, 0x22);
        hw.save_sealed(SaveInsn::Xsavec, guest.for_save(), xcr0)
            .unwrap();
        assert!(host.seal().holds(k, xcr0) && guest.seal().holds(k, xcr0));
        // Detach-like: save the guest's registers (0x33), restore the host's (0x11).
        load(&mut hw, 0x33);
        hw.switch_sealed(
            (SaveInsn::Xsavec, xcr0),
            guest.for_save(),
            (RestoreInsn::Xrstor, xcr0),
            host.for_restore(),
        )
        .unwrap();
        assert_eq!(st0(&mut hw), 0x11);
        assert_eq!(guest.bytes()[32], 0x33);
        assert!(host.seal().holds(k, xcr0) && guest.seal().holds(k, xcr0));
        // A save with another RFBM than the seal's: checked (and sealed for it), still right.
        load(&mut hw, 0x55);
        hw.switch_sealed(
            (SaveInsn::Xsavec, mask::LEGACY),
            guest.for_save(),
            (RestoreInsn::Xrstor, xcr0),
            host.for_restore(),
        )
        .unwrap();
        assert_eq!(st0(&mut hw), 0x11);
        assert_eq!(guest.bytes()[32], 0x55);
        assert!(guest.seal().holds(k, mask::LEGACY));
        // A host buffer written by software (which reset the seal): checked, refused.
        host.bytes_mut()[512 + 40] = 0x5a;
        load(&mut hw, 0x44);
        let e = hw
            .switch_sealed(
                (SaveInsn::Xsavec, xcr0),
                guest.for_save(),
                (RestoreInsn::Xrstor, xcr0),
                host.for_restore(),
            )
            .unwrap_err();
        match e {
            SwitchFault::Restore(f) => assert_eq!(f.exception, Exception::Gp, "{f}"),
            other => panic!("expected the restore to be refused: {other:?}"),
        }
        assert_eq!(
            guest.bytes()[32],
            0x44,
            "the save ran before the refused restore"
        );
        assert_eq!(st0(&mut hw), 0x44, "a refused restore loads nothing");
        // A save that cannot run (buffer too short for XCR0's components): nothing done.
        host.bytes_mut()[512 + 40] = 0;
        if hw.profile().layout.compacted(xcr0).unwrap().size > 640 {
            let mut short = sealed_buf(640);
            let before = short.bytes().to_vec();
            let e = hw
                .switch_sealed(
                    (SaveInsn::Xsavec, xcr0),
                    short.for_save(),
                    (RestoreInsn::Xrstor, xcr0),
                    host.for_restore(),
                )
                .unwrap_err();
            assert!(matches!(e, SwitchFault::Save(_)), "{e:?}");
            assert_eq!(short.bytes(), &before[..]);
            assert_eq!(st0(&mut hw), 0x44);
        }
    }
}
