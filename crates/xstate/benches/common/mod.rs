//! What every benchmark of this crate shares: the ratio of an operation to its physical
//! baseline, both measured in the same run, and a counting allocator.
//!
//! `ratio` alternates the two closures batch by batch (subject, baseline, subject, …, the
//! order swapped every round) and takes the median batch time of each, so that frequency
//! changes and noise from the other users of the machine reach both alike.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A global allocator that counts allocations and bytes requested (`allocs_during`).
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// atomics touched without allocating.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is forwarded unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
}

/// (allocations, bytes) made by `f` run `n` times, per run.
pub fn allocs_during(n: u64, mut f: impl FnMut()) -> (f64, f64) {
    let (a, b) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..n {
        f();
    }
    (
        (ALLOCS.load(Ordering::Relaxed) - a) as f64 / n as f64,
        (BYTES.load(Ordering::Relaxed) - b) as f64 / n as f64,
    )
}

/// Median ns per call of `subject` and of `baseline`, `rounds` batches of `n` calls each,
/// alternated; prints one line `name: subject X ns, baseline Y ns, ratio R (allocs …)`.
pub fn ratio(
    name: &str,
    baseline_name: &str,
    mut subject: impl FnMut(),
    mut baseline: impl FnMut(),
) -> f64 {
    let rounds = 41;
    // Size the batch to about 200 µs of the subject.
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_micros() < 200 {
        subject();
        n += 1;
    }
    let n = n.max(10);
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let (mut s, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            s.push(time(&mut subject));
            b.push(time(&mut baseline));
        } else {
            b.push(time(&mut baseline));
            s.push(time(&mut subject));
        }
    }
    s.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (sm, bm) = (s[rounds / 2], b[rounds / 2]);
    let (a, bytes) = allocs_during(n, &mut subject);
    println!(
        "RATIO {name}: {sm:.1} ns vs {baseline_name} {bm:.1} ns = {:.2} x  ({a:.1} allocations, {bytes:.0} bytes per call)",
        sm / bm
    );
    sm / bm
}
