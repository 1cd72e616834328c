//! Hot paths allocate nothing (issue 11 P4): in steady state a capture into a reused value and
//! a restore of a valid state make no heap allocation, counted by a global allocator that counts
//! only the allocations of the thread being measured.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use xstate_kvm::guest::{demo, GuestVm};
use xstate_kvm::Kvm;

struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: thread-local storage may already be gone while a thread exits.
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    COUNT.with(|c| c.get())
}

#[test]
fn steady_state_capture_and_restore_allocate_nothing() {
    if let Some(why) = xstate_kvm::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let kvm = Kvm::open().expect("KVM");
    let loaded = demo::run_vm_a(&kvm).expect("VM A");
    let g = GuestVm::new(&kvm, 1).expect("VM");
    let vcpu = g.vcpu();
    vcpu.restore(&loaded.state).expect("first restore");
    let mut reused = vcpu.capture().expect("first capture");
    assert_eq!(reused, loaded.state);
    let n = allocations(|| {
        for _ in 0..50 {
            vcpu.capture_into(&mut reused).expect("capture");
        }
    });
    assert_eq!(n, 0, "allocations in 50 captures into a reused value");
    let n = allocations(|| {
        for _ in 0..50 {
            vcpu.restore(&loaded.state).expect("restore");
        }
    });
    assert_eq!(n, 0, "allocations in 50 restores");
    // The counter counts: an allocating capture is seen.
    assert!(allocations(|| drop(vcpu.capture().expect("capture"))) > 0);
}
