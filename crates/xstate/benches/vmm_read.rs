//! Reading other VMMs' snapshots against the physical operation they rest on: parsing a QEMU
//! migration stream and a Cloud Hypervisor `state.json` against copying the same bytes into a
//! reused buffer (memcpy), measured in the same run. The state.json is the Intel fixture; the
//! QEMU stream is measured when `XSTATE_QEMU_STREAM=FILE` names one (e.g. a stream the
//! `qemu_stream` CLI test's guest writes).
//!
//! `cargo bench -p xstate --bench vmm_read`

use std::hint::black_box;
use std::time::Instant;

fn time<F: FnMut()>(iters: u32, mut f: F) -> f64 {
    f(); // warm
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn report(what: &str, bytes: &[u8], iters: u32, mut parse: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; bytes.len()];
    let copy = time(iters, || {
        buf.copy_from_slice(black_box(bytes));
        black_box(&buf);
    });
    let p = time(iters, || parse(black_box(bytes)));
    println!(
        "{what}: {} bytes: parse {:.0} ns, memcpy {:.0} ns, ratio parse/memcpy {:.1}",
        bytes.len(),
        p,
        copy,
        p / copy
    );
}

fn main() {
    let ch = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vmm/cloud-hypervisor/intel-xeon-6-a7-kvm.state.json"
    ))
    .expect("fixture");
    report("cloud-hypervisor state.json", &ch, 2000, |b| {
        let s = xstate::vmm::cloud_hypervisor::StateJson::parse(b).unwrap();
        black_box(s.snapshots().unwrap());
    });
    if let Ok(p) = std::env::var("XSTATE_QEMU_STREAM") {
        let q = std::fs::read(&p).expect("XSTATE_QEMU_STREAM");
        report("qemu stream (real)", &q, 200, |b| {
            let s = xstate::vmm::qemu::parse(b).unwrap();
            black_box(s.snapshots().unwrap());
        });
    } else {
        println!("qemu stream: set XSTATE_QEMU_STREAM=FILE to measure a real stream");
    }
}
