//! The guest FPU engine on the real CPU (user mode: XSAVEC/XRSTOR, or XSAVE where XSAVEC is
//! missing): attach/detach keep the host's and two vCPUs' user registers apart, with distinct
//! byte patterns in the widest vector component the OS enabled. Skipped with a printed reason
//! where XSAVE is not usable.
//!
//! Both user-mode hardware backends: [`HwBackend`] on the thread's live registers (the
//! engine's hot path: between calls the patterns live in the real ZMM registers, which this
//! test's code does not use) and [`CheckedHwBackend`] on a context image.

#![cfg(target_arch = "x86_64")]

use xstate::components::mask;
use xstate::engine::fpstate::{init_bytes, pattern};
use xstate::engine::{Context, Engine, GuestPolicy, Options};
use xstate::hw::{CheckedHwBackend, HwBackend};
use xstate::model::Backend;
use xstate::strategy::SaveInsn;

fn hw_engine<B: Backend>(make: fn() -> Option<B>, insn: Option<SaveInsn>) -> Option<Engine<B>> {
    let Some(hw) = make() else {
        println!("skipped: XSAVE is not usable on this CPU");
        return None;
    };
    match Engine::new(
        hw,
        Options {
            ring0: Some(false),
            insn,
            ..Options::default()
        },
    ) {
        Ok(e) => Some(e),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

fn vec_comp(xcr0: u64) -> u8 {
    if xcr0 & mask::AVX512 == mask::AVX512 {
        6
    } else if xcr0 & mask::AVX != 0 {
        2
    } else {
        1
    }
}

fn isolation<B: Backend>(make: fn() -> Option<B>, insn: Option<SaveInsn>) {
    let Some(mut e) = hw_engine(make, insn) else {
        return;
    };
    let xcr0 = e.config().xcr0 & !mask::AMX;
    let vc = vec_comp(xcr0);
    let policy = GuestPolicy {
        xcr0_max: xcr0,
        xss: 0,
    };
    let pat = |e: &Engine<B>, b: u8| pattern(vc, b, e.register_len(vc).unwrap());
    println!(
        "hardware engine: {} ({}), component {vc}",
        e.save_insn().0.name(),
        e.save_insn().1
    );
    e.host_write(vc, &pat(&e, 0x11)).unwrap();
    e.create_vcpu(0, policy, false).unwrap();
    e.create_vcpu(1, policy, false).unwrap();
    let fp = e.vcpu(0).unwrap().fpstate();
    assert_eq!(fp.size(), e.config().size_of(fp.xfeatures()).unwrap());
    for (id, b) in [(0u32, 0xaau8), (1, 0xbb)] {
        e.attach(id).unwrap();
        e.xsetbv(id, xcr0).unwrap();
        assert_eq!(
            e.read_component(Context::Vcpu(id), vc).unwrap(),
            init_bytes(vc, e.register_len(vc).unwrap())
        );
        assert_eq!(e.guest_write(id, vc, &pat(&e, b)).unwrap().fault, None);
        e.detach(id).unwrap();
        assert_eq!(e.read_component(Context::Host, vc).unwrap(), pat(&e, 0x11));
    }
    for (id, b) in [(1u32, 0xbbu8), (0, 0xaa)] {
        e.attach(id).unwrap();
        assert_eq!(e.read_component(Context::Vcpu(id), vc).unwrap(), pat(&e, b));
        e.detach(id).unwrap();
        assert_eq!(e.read_component(Context::Vcpu(id), vc).unwrap(), pat(&e, b));
    }
    assert_eq!(e.read_component(Context::Host, vc).unwrap(), pat(&e, 0x11));
    // The containers hold what the hardware wrote: XSAVEC sets XCOMP_BV = RFBM | bit 63.
    let fp = e.vcpu(0).unwrap().fpstate();
    if e.save_insn().0 == SaveInsn::Xsavec {
        assert_eq!(
            fp.image().unwrap().xcomp_bv(),
            fp.xfeatures() | mask::COMPACTED
        );
    }
    assert_ne!(fp.xstate_bv() & (1 << vc), 0);
    let _ = e.backend_mut().read_state().unwrap();
}

#[test]
fn hardware_attach_detach_keeps_contexts_apart() {
    isolation(HwBackend::new, None);
}

#[test]
fn hardware_with_standard_xsave() {
    isolation(HwBackend::new, Some(SaveInsn::Xsave));
}

#[test]
fn checked_hardware_attach_detach_keeps_contexts_apart() {
    isolation(CheckedHwBackend::new, None);
    isolation(CheckedHwBackend::new, Some(SaveInsn::Xsave));
}
