//! The two user-mode backends behind one trait: [`CheckedHwBackend`] (this CPU) and [`ModelCpu`]
//! (this CPU's profile) driven through [`Backend`] with the same operations give the same
//! memory and the same register state — what lets the guest FPU engine run on either.
#![cfg(target_arch = "x86_64")]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xstate::components::{bits, mask};
use xstate::hw::CheckedHwBackend;
use xstate::model::{
    AlignedBuf, Backend, CpuProfile, Exception, ModelCpu, Msr, RestoreInsn, SaveInsn,
};

fn q(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A random standard-form state for `xcr0` of `size` bytes, with XSTATE_BV within `loadable`.
fn random_state(
    rng: &mut StdRng,
    xcr0: u64,
    loadable: u64,
    size: usize,
    mxcsr_mask: u32,
) -> Vec<u8> {
    let mut s = vec![0u8; size];
    rng.fill(&mut s[..]);
    let fcw: u16 = 0x37f & !(rng.gen::<u16>() & 0x3f);
    s[0..2].copy_from_slice(&fcw.to_le_bytes());
    s[2..4].copy_from_slice(&(rng.gen::<u16>() & 0x3800).to_le_bytes());
    let mxcsr = if rng.gen_bool(0.5) {
        0x1f80
    } else {
        0x1f80 | (rng.gen::<u32>() & mxcsr_mask & 0x3f)
    };
    s[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    let mut bv = 0;
    for id in bits(xcr0 & loadable) {
        if rng.gen_bool(0.6) {
            bv |= 1u64 << id;
        }
    }
    s[512..576].fill(0);
    s[512..520].copy_from_slice(&bv.to_le_bytes());
    s
}

/// Components of `cpu` in init state (the CPU may report them in use, SDM Vol. 1 §13.6).
fn init_components(cpu: &ModelCpu, xcr0: u64) -> u64 {
    bits(xcr0)
        .filter(|&id| match id {
            0 => false,
            1 => (0..16).all(|j| cpu.xmm(j) == Some([0; 16])),
            _ => cpu.component(id).is_some_and(|c| c.iter().all(|&b| b == 0)),
        })
        .fold(0, |m, id| m | 1u64 << id)
}

/// Sets the model's XINUSE bits in `free` (components whose registers hold their init values)
/// to what the CPU reported in `xstate_bv`; true when anything changed. For such a component the
/// SDM lets XINUSE be either 0 or 1, and this CPU re-decides it whenever the state is restored
/// (each CheckedHwBackend call, each context switch of this thread).
fn adopt_free_bits(model: &mut ModelCpu, xstate_bv: u64, free: u64) -> bool {
    let want = (model.xinuse() & !free) | (xstate_bv & free);
    if want == model.xinuse() {
        return false;
    }
    model.set_xinuse(want);
    true
}

#[test]
fn hw_backend_and_model_agree_through_the_trait() {
    let Some(mut hw) = CheckedHwBackend::new() else {
        println!("skipped: XSAVE not usable here");
        return;
    };
    let profile = CpuProfile::host();
    let xcr0 = hw.xgetbv(0).unwrap();
    let size = profile.layout.standard(xcr0).unwrap().size as usize;
    let csize = profile.layout.compacted(xcr0).unwrap().size as usize;
    // Components the OS may arm in IA32_XFD (their restore raises #NM, SIGILL without the
    // permission: SDM Vol. 1 §13.14) and AMX (TILECFG needs a valid configuration) are saved
    // but never loaded here.
    let not_loaded = (xcr0 & mask::AMX) | profile.xfd_capable();
    let loadable = xcr0 & !not_loaded;
    let mut rng = StdRng::seed_from_u64(0xbacc);
    let (mut saves, mut restores, mut adopted) = (0, 0, 0);
    // Privileged operations fault on the hardware backend as at CPL 3.
    assert_eq!(hw.xsetbv(0, xcr0).unwrap_err().exception, Exception::Gp);
    assert_eq!(hw.rdmsr(Msr::Xss).unwrap_err().exception, Exception::Gp);
    let mut scratch = AlignedBuf::new(csize);
    assert_eq!(
        hw.save(SaveInsn::Xsaves, &mut scratch, u64::MAX)
            .unwrap_err()
            .exception,
        Exception::Gp
    );
    for round in 0..400 {
        let state = random_state(&mut rng, xcr0, loadable, size, profile.mxcsr_mask);
        let mut model = ModelCpu::new(profile.clone());
        model.xsetbv(0, xcr0).unwrap();
        model.cpl = 3;
        hw.load_state(&state, None).unwrap();
        model.load_state(&state, None).unwrap();
        // A restore through the trait half of the time (standard or compacted image).
        if rng.gen_bool(0.5) {
            let src = hw.read_state().unwrap();
            let mut img = AlignedBuf::from_bytes(&random_state(
                &mut rng,
                xcr0,
                loadable,
                size,
                profile.mxcsr_mask,
            ));
            if rng.gen_bool(0.3) {
                // A compacted image of the current state saved by the backend itself.
                let mut c = AlignedBuf::new(csize);
                hw.save(SaveInsn::Xsavec, &mut c, u64::MAX).unwrap();
                img = c;
            }
            let rfbm = rng.gen::<u64>() | 1;
            let h = hw.restore(RestoreInsn::Xrstor, &img, rfbm);
            let m = model.restore(RestoreInsn::Xrstor, &img, rfbm);
            assert_eq!(
                h.is_ok(),
                m.is_ok(),
                "round {round}: hw {h:?} model {m:?} (state was {})",
                src.len()
            );
            restores += 1;
        }
        // Adopt the CPU's in-use bits for components in init state, then compare the state.
        let hs = hw.read_state().unwrap();
        let free = init_components(&model, xcr0);
        if adopt_free_bits(&mut model, q(&hs, 512), free) {
            adopted += 1;
        }
        let ms = model.read_state().unwrap();
        assert_eq!(hs, ms, "round {round}: register state differs");
        // Saves through the trait into identical random memory.
        for insn in [
            SaveInsn::Xsave,
            SaveInsn::Xsaveopt,
            SaveInsn::Xsavec,
            SaveInsn::Fxsave,
        ] {
            let rfbm = if rng.gen_bool(0.5) {
                u64::MAX
            } else {
                rng.gen::<u64>() & xcr0
            };
            let mut a = AlignedBuf::new(size);
            rng.fill(&mut a[..]);
            let prior = a.clone();
            let mut b = a.clone();
            hw.save(insn, &mut a, rfbm).unwrap();
            model.save(insn, &mut b, rfbm).unwrap();
            if a[..] != b[..] && insn != SaveInsn::Fxsave {
                // Each CheckedHwBackend call restores its context image and saves it back, so the
                // CPU re-evaluates XINUSE on every call (and again after any context switch
                // of this thread). It may report a component in use while its registers hold
                // the init values, or not in use (SDM Vol. 1 §13.6: XINUSE[i] = 0 only means
                // "known to be in init state"): for components whose registers hold their init
                // values, and only those, adopt the CPU's choice; then every byte must match.
                let free = init_components(&model, xcr0) & rfbm;
                if adopt_free_bits(&mut model, q(&a, 512), free) {
                    adopted += 1;
                    b = prior.clone();
                    model.save(insn, &mut b, rfbm).unwrap();
                }
            }
            if a[..] != b[..] {
                let diff: Vec<usize> = (0..size).filter(|&i| a[i] != b[i]).take(16).collect();
                panic!(
                    "round {round}: {insn:?} rfbm {rfbm:#x}: bytes differ at {diff:?}; hw XSTATE_BV {:#x}, model {:#x}, model XINUSE {:#x}, init components {:#x}",
                    q(&a, 512),
                    q(&b, 512),
                    model.xinuse(),
                    init_components(&model, xcr0)
                );
            }
            saves += 1;
        }
    }
    println!("CheckedHwBackend == ModelCpu through Backend: {saves} saves, {restores} restores, {adopted} states or saves where the CPU kept XINUSE = 1 for a component in init state");
}
