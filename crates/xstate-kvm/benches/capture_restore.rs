//! Issue 11 P4: a vCPU's extended state through xstate-kvm against the raw kvm-ioctls calls a
//! VMM would issue on the same vCPU, measured in the same run:
//!
//! - capture: `Vcpu::capture_into` (and the allocating `capture`) vs KVM_GET_XSAVE2 +
//!   KVM_GET_XCRS (+ one KVM_GET_MSRS of every listed extended-state MSR);
//! - restore: `Vcpu::restore` (all checks included) vs KVM_SET_XCRS (+ KVM_SET_MSRS) +
//!   KVM_SET_XSAVE of the same image;
//! - capture + encode: capture into a reused value, `.xsnap` snapshot and its encoding vs the
//!   raw capture.
//!
//! The ratios (median of rounds that rotate the order of the variants) and the heap
//! allocations per operation (a counting global allocator) are printed at the end.
//!
//! `cargo bench -p xstate-kvm --bench capture_restore` (needs /dev/kvm; prints `skipped:`
//! otherwise).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts heap allocations (allocations per operation).
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, as the trait requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` with `l` (every allocation goes through it).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the new size comes from the caller.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod p4 {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use criterion::Criterion;
    use kvm_bindings::{kvm_msr_entry, kvm_xcrs, Msrs, Xsave};
    use xstate_kvm::guest::{demo, GuestVm};
    use xstate_kvm::{snapshot, Kvm, VcpuXstate};

    pub struct Setup {
        kvm: Kvm,
        /// VM A after its guest loaded the demo pattern: the capture source.
        src: GuestVm,
        /// A fresh VM: the restore destination.
        dst: GuestVm,
        state: VcpuXstate,
        reused: VcpuXstate,
        raw_xsave: Xsave,
        raw_msrs: Option<Msrs>,
        raw_set_msrs: Option<Msrs>,
        raw_set_xsave: Xsave,
        raw_xcrs: kvm_xcrs,
    }

    pub fn setup() -> Result<Setup, String> {
        if let Some(why) = xstate_kvm::unavailable() {
            return Err(why);
        }
        let kvm = Kvm::open().map_err(|e| e.to_string())?;
        let loaded = demo::run_vm_a(&kvm).map_err(|e| e.to_string())?;
        let state = loaded.state;
        // The capture source: a VM whose guest loaded the pattern, like VM A.
        let src = GuestVm::new(&kvm, state.controls.xcr0).map_err(|e| e.to_string())?;
        src.vcpu().restore(&state).map_err(|e| e.to_string())?;
        let dst = GuestVm::new(&kvm, 1).map_err(|e| e.to_string())?;
        let size = src.vm().xsave2_size().map_err(|e| e.to_string())?;
        let fam = size.saturating_sub(4096).div_ceil(4);
        let listed = kvm.xstate_msrs();
        let entries: Vec<kvm_msr_entry> = listed
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let raw_msrs = (!entries.is_empty()).then(|| Msrs::from_entries(&entries).unwrap());
        let set_entries: Vec<kvm_msr_entry> = state
            .controls
            .msrs
            .iter()
            .map(|(&index, &data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let raw_set_msrs =
            (!set_entries.is_empty()).then(|| Msrs::from_entries(&set_entries).unwrap());
        // The raw restore's image: the same bytes in a kvm-bindings buffer, filled once.
        let mut raw_set_xsave = Xsave::new(fam).unwrap();
        // SAFETY (test set-up): `raw_set_xsave` holds at least KVM_CAP_XSAVE2 bytes; the
        // kernel writes at most that many.
        unsafe { dst.vcpu().fd().get_xsave2(&mut raw_set_xsave) }.unwrap();
        let mut words = state.xsave.as_bytes().chunks(4).map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        });
        // SAFETY (test set-up): only the fixed region is written; the FAM length stays.
        for w in unsafe { raw_set_xsave.as_mut_fam_struct().xsave.region.iter_mut() } {
            *w = words.next().unwrap_or(0);
        }
        for w in raw_set_xsave.as_mut_slice() {
            *w = words.next().unwrap_or(0);
        }
        let mut raw_xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        raw_xcrs.xcrs[0].value = state.controls.xcr0;
        let reused = src.vcpu().capture().map_err(|e| e.to_string())?;
        Ok(Setup {
            kvm,
            src,
            dst,
            reused,
            state,
            raw_xsave: Xsave::new(fam).unwrap(),
            raw_msrs,
            raw_set_msrs,
            raw_set_xsave,
            raw_xcrs,
        })
    }

    pub fn raw_capture(s: &mut Setup) {
        let fd = s.src.vcpu().fd();
        // SAFETY: `raw_xsave` holds KVM_CAP_XSAVE2 bytes, fixed since the vCPU exists.
        unsafe { fd.get_xsave2(&mut s.raw_xsave) }.unwrap();
        black_box(fd.get_xcrs().unwrap());
        if let Some(m) = s.raw_msrs.as_mut() {
            black_box(fd.get_msrs(m).unwrap());
        }
    }

    pub fn capture_into(s: &mut Setup) {
        s.src.vcpu().capture_into(&mut s.reused).unwrap();
    }

    pub fn capture(s: &mut Setup) {
        black_box(s.src.vcpu().capture().unwrap());
    }

    pub fn capture_encode(s: &mut Setup) {
        s.src.vcpu().capture_into(&mut s.reused).unwrap();
        let snap = snapshot::snapshot_of(&s.kvm, &s.reused).unwrap();
        black_box(snap.encode().unwrap());
    }

    pub fn raw_restore(s: &mut Setup) {
        let fd = s.dst.vcpu().fd();
        fd.set_xcrs(&s.raw_xcrs).unwrap();
        if let Some(m) = s.raw_set_msrs.as_ref() {
            fd.set_msrs(m).unwrap();
        }
        // SAFETY: the buffer holds KVM_CAP_XSAVE2 bytes; the kernel only reads.
        unsafe { fd.set_xsave2(&s.raw_set_xsave) }.unwrap();
    }

    pub fn restore(s: &mut Setup) {
        s.dst.vcpu().restore(&s.state).unwrap();
    }

    /// The encoding half alone (no ioctl): snapshot of the last capture and its `.xsnap` bytes.
    pub fn encode_only(s: &mut Setup) {
        let snap = snapshot::snapshot_of(&s.kvm, &s.reused).unwrap();
        black_box(snap.encode().unwrap());
    }

    type Op = fn(&mut Setup);

    pub const OPS: [(&str, Op); 7] = [
        ("raw capture (KVM_GET_XSAVE2+XCRS+MSRS)", raw_capture),
        ("capture_into", capture_into),
        ("capture", capture),
        ("capture+encode", capture_encode),
        ("raw restore (KVM_SET_XCRS+MSRS+XSAVE)", raw_restore),
        ("restore", restore),
        ("snapshot_of+encode (no ioctl)", encode_only),
    ];

    pub fn bench(c: &mut Criterion, s: &mut Setup) {
        let mut g = c.benchmark_group("p4_kvm");
        for (name, op) in OPS {
            g.bench_function(name, |b| b.iter(|| op(s)));
        }
        g.finish();
    }

    /// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID): user and kernel time of the thread,
    /// ioctls included, but not the time other processes of this shared machine run on its
    /// core. Wall time is reported next to it.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through the pointer, a live local.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if r != 0 {
            return Duration::ZERO;
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    fn median_ns(v: &mut [Duration], n: usize) -> f64 {
        v.sort();
        v[v.len() / 2].as_nanos() as f64 / n as f64
    }

    /// Median ns per operation of each op over `rounds` batches of `n`, the order of the ops
    /// rotating from round to round (thread CPU time and wall time); and allocations per
    /// operation.
    pub fn ratios(s: &mut Setup) {
        let (n, rounds) = (25usize, 161usize);
        let mut cpu: Vec<Vec<Duration>> = vec![Vec::new(); OPS.len()];
        let mut wall: Vec<Vec<Duration>> = vec![Vec::new(); OPS.len()];
        for r in 0..rounds {
            for k in 0..OPS.len() {
                let i = (k + r) % OPS.len();
                let op = OPS[i].1;
                let (c, t) = (thread_cpu(), Instant::now());
                for _ in 0..n {
                    op(s);
                }
                wall[i].push(t.elapsed());
                cpu[i].push(thread_cpu().saturating_sub(c));
            }
        }
        let med: Vec<f64> = cpu.iter_mut().map(|v| median_ns(v, n)).collect();
        let med_wall: Vec<f64> = wall.iter_mut().map(|v| median_ns(v, n)).collect();
        let allocs: Vec<f64> = OPS
            .iter()
            .map(|(_, op)| {
                let before = super::ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
                for _ in 0..100 {
                    op(s);
                }
                (super::ALLOCS.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / 100.0
            })
            .collect();
        println!(
            "P4 on this vCPU: XSAVE2 {} bytes, XCR0 {:#x}, {} extended-state MSR(s) listed",
            s.state.xsave.len(),
            s.state.controls.xcr0,
            s.kvm.xstate_msrs().len()
        );
        println!(
            "  {:<42} {:>9} {:>9}",
            "(median per operation)", "CPU ns", "wall ns"
        );
        for (i, (name, _)) in OPS.iter().enumerate() {
            println!(
                "  {name:<42} {:>9.0} {:>9.0}  {:>5.1} allocs/op",
                med[i], med_wall[i], allocs[i]
            );
        }
        println!(
            "wall-time ratios: capture_into {:.3}, capture {:.3}, capture+encode {:.3}, restore {:.3}",
            med_wall[1] / med_wall[0],
            med_wall[2] / med_wall[0],
            med_wall[3] / med_wall[0],
            med_wall[5] / med_wall[4]
        );
        println!("CPU-time ratios (the goals):");
        println!(
            "ratio capture_into/raw = {:.3} (goal <= 1.3)",
            med[1] / med[0]
        );
        println!("ratio capture/raw = {:.3} (goal <= 1.3)", med[2] / med[0]);
        println!(
            "ratio capture+encode/raw = {:.3} (goal <= 1.5)",
            med[3] / med[0]
        );
        println!("ratio restore/raw = {:.3} (goal <= 1.3)", med[5] / med[4]);
    }
}

fn main() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if std::env::var_os("P4_ENCODE_LOOP").is_some() {
        // Profiling aid: the encoding alone, in a loop (e.g. under `perf record`).
        let mut s = p4::setup().unwrap();
        for _ in 0..200_000 {
            p4::encode_only(&mut s);
        }
        return;
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        let mut s = match p4::setup() {
            Ok(s) => s,
            Err(why) => {
                println!("skipped: {why}");
                return;
            }
        };
        let mut c = criterion::Criterion::default().configure_from_args();
        p4::bench(&mut c, &mut s);
        c.final_summary();
        p4::ratios(&mut s);
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    println!("skipped: needs KVM (Linux on x86-64)");
}
