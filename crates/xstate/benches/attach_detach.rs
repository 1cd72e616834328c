//! Attach + detach of a vCPU on the real CPU (user mode: XSAVEC/XRSTOR through
//! `xstate::model::HwBackend`) against the raw save and restore instructions it issues — host
//! save, guest restore, guest save, host restore — measured in the same run on the same
//! backend. The bar: the engine costs no more than those instructions; the ratio is
//! printed at the end (`ratio engine/raw`).
//!
//! `cargo bench -p xstate --bench attach_detach`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use xstate::components::mask;
use xstate::engine::{Engine, GuestPolicy, Options};
use xstate::model::{AlignedBuf, Backend, HwBackend, RestoreInsn, SaveInsn};

struct Setup {
    engine: Engine<HwBackend>,
    raw: HwBackend,
    host_buf: AlignedBuf,
    guest_buf: AlignedBuf,
    host_rfbm: u64,
    guest_rfbm: u64,
    restore_rfbm: u64,
}

fn setup() -> Option<Setup> {
    let hw = HwBackend::new()?;
    let raw = HwBackend::new()?;
    let mut engine = Engine::new(
        hw,
        Options {
            ring0: Some(false),
            ..Options::default()
        },
    )
    .ok()?;
    if engine.save_insn().0 != xstate::strategy::SaveInsn::Xsavec {
        return None;
    }
    let xcr0 = engine.config().xcr0 & !mask::AMX;
    engine
        .create_vcpu(
            0,
            GuestPolicy {
                xcr0_max: xcr0,
                xss: 0,
            },
            false,
        )
        .ok()?;
    let host = engine.host_fpstate();
    let guest = engine.vcpu(0).ok()?.fpstate();
    let mut host_buf = AlignedBuf::from_bytes(host.as_bytes());
    let mut guest_buf = AlignedBuf::from_bytes(guest.as_bytes());
    let (host_rfbm, guest_rfbm) = (host.xfeatures(), guest.xfeatures());
    let mut raw = raw;
    // Make both raw images valid XSAVEC images first.
    raw.save(SaveInsn::Xsavec, &mut host_buf, host_rfbm).ok()?;
    raw.save(SaveInsn::Xsavec, &mut guest_buf, guest_rfbm)
        .ok()?;
    Some(Setup {
        engine,
        raw,
        host_buf,
        guest_buf,
        host_rfbm,
        guest_rfbm,
        restore_rfbm: xcr0,
    })
}

fn engine_cycle(s: &mut Setup) {
    s.engine.attach(black_box(0)).unwrap();
    s.engine.detach(black_box(0)).unwrap();
}

fn raw_cycle(s: &mut Setup) {
    s.raw
        .save(SaveInsn::Xsavec, &mut s.host_buf, s.host_rfbm)
        .unwrap();
    s.raw
        .restore(RestoreInsn::Xrstor, &s.guest_buf, s.restore_rfbm)
        .unwrap();
    s.raw
        .save(SaveInsn::Xsavec, &mut s.guest_buf, s.guest_rfbm)
        .unwrap();
    s.raw
        .restore(RestoreInsn::Xrstor, &s.host_buf, s.restore_rfbm)
        .unwrap();
}

fn bench(c: &mut Criterion) {
    let Some(mut s) = setup() else {
        println!("skipped: no usable XSAVEC on this CPU");
        return;
    };
    let mut g = c.benchmark_group("attach_detach");
    g.bench_function("engine attach+detach", |b| b.iter(|| engine_cycle(&mut s)));
    g.bench_function("raw xsavec+xrstor x2", |b| b.iter(|| raw_cycle(&mut s)));
    g.finish();
}

/// Median time per cycle over `rounds` batches of `n` cycles, alternating the two so both see
/// the same machine conditions.
fn ratio() {
    let Some(mut s) = setup() else {
        return;
    };
    let n = 2000;
    let rounds = 15;
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed()
    };
    let (mut eng, mut raw): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        eng.push(time(&mut || engine_cycle(&mut s)));
        raw.push(time(&mut || raw_cycle(&mut s)));
    }
    eng.sort();
    raw.sort();
    let (e, r) = (eng[rounds / 2], raw[rounds / 2]);
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    let st = s.engine.stats();
    println!(
        "attach+detach: engine {:.0} ns, raw {:.0} ns per cycle; ratio engine/raw = {:.3} (instructions issued by the engine: {} saves, {} restores, {} XFD writes)",
        per(e),
        per(r),
        per(e) / per(r),
        st.saves,
        st.restores,
        st.xfd_writes
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio();
}
