//! The two user-mode backends behind one trait: [`HwBackend`] (this CPU) and [`ModelCpu`]
//! (this CPU's profile) driven through [`Backend`] with the same operations give the same
//! memory and the same register state — what lets the guest FPU engine run on either.
#![cfg(target_arch = "x86_64")]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xstate::components::{bits, mask};
use xstate::model::{
    AlignedBuf, Backend, CpuProfile, Exception, HwBackend, ModelCpu, Msr, RestoreInsn, SaveInsn,
};

fn q(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A random standard-form state for `xcr0` of `size` bytes.
fn random_state(rng: &mut StdRng, xcr0: u64, size: usize, mxcsr_mask: u32) -> Vec<u8> {
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
    for id in bits(xcr0) {
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

#[test]
fn hw_backend_and_model_agree_through_the_trait() {
    let Some(mut hw) = HwBackend::new() else {
        println!("skipped: XSAVE not usable here");
        return;
    };
    let profile = CpuProfile::host();
    let xcr0 = hw.xgetbv(0).unwrap();
    let size = profile.layout.standard(xcr0).unwrap().size as usize;
    let csize = profile.layout.compacted(xcr0).unwrap().size as usize;
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
        let state = random_state(&mut rng, xcr0, size, profile.mxcsr_mask);
        let mut model = ModelCpu::new(profile.clone());
        model.xsetbv(0, xcr0).unwrap();
        model.cpl = 3;
        hw.load_state(&state, None).unwrap();
        model.load_state(&state, None).unwrap();
        // A restore through the trait half of the time (standard or compacted image).
        if rng.gen_bool(0.5) {
            let src = hw.read_state().unwrap();
            let mut img =
                AlignedBuf::from_bytes(&random_state(&mut rng, xcr0, size, profile.mxcsr_mask));
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
        let extra = q(&hs, 512) & !model.xinuse() & init_components(&model, xcr0);
        if extra != 0 {
            model.set_xinuse(model.xinuse() | extra);
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
            let mut b = a.clone();
            hw.save(insn, &mut a, rfbm).unwrap();
            model.save(insn, &mut b, rfbm).unwrap();
            assert_eq!(&a[..], &b[..], "round {round}: {insn:?} rfbm {rfbm:#x}");
            saves += 1;
        }
        let _ = mask::SSE;
    }
    println!("HwBackend == ModelCpu through Backend: {saves} saves, {restores} restores, {adopted} states where the CPU kept XINUSE = 1 for a component in init state");
}
