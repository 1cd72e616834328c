//! The kernel heap: a bump allocator over a static arena that counts live allocations and can
//! be rewound to a mark once everything allocated after the mark has been freed (each test case
//! allocates, drops everything, and rewinds). No allocation is ever handed out twice while live.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const ARENA: usize = 48 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA]>);

struct State {
    top: usize,
    live: usize,
}

/// The global allocator.
pub struct Bump {
    arena: Arena,
    state: UnsafeCell<State>,
}

// SAFETY: the kernel runs on one CPU without interrupts that allocate (the fault handlers do
// not allocate), so no two accesses to the state overlap.
unsafe impl Sync for Bump {}

#[global_allocator]
static HEAP: Bump = Bump {
    arena: Arena(UnsafeCell::new([0; ARENA])),
    state: UnsafeCell::new(State { top: 0, live: 0 }),
};

// SAFETY: `alloc` returns a block of at least `size` bytes aligned as asked, inside the arena,
// never overlapping a live block (the top only grows except in `release`, which requires that
// no block allocated after the mark is live); `dealloc` only counts.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: single CPU, no reentrancy (see `Sync`).
        let s = unsafe { &mut *self.state.get() };
        let base = self.arena.0.get() as usize;
        let start = (base + s.top + l.align() - 1) & !(l.align() - 1);
        let end = start - base + l.size();
        if end > ARENA {
            return core::ptr::null_mut();
        }
        s.top = end;
        s.live += 1;
        start as *mut u8
    }
    unsafe fn dealloc(&self, _p: *mut u8, _l: Layout) {
        // SAFETY: as in `alloc`.
        let s = unsafe { &mut *self.state.get() };
        s.live -= 1;
    }
}

/// A point to rewind to: (top, live allocations) at the time of the mark.
#[derive(Clone, Copy)]
pub struct Mark(usize, usize);

/// Marks the current heap top.
pub fn mark() -> Mark {
    // SAFETY: single CPU, not inside the allocator.
    let s = unsafe { &*HEAP.state.get() };
    Mark(s.top, s.live)
}

/// Rewinds to `m` when every allocation made since has been freed; returns false (and keeps
/// the heap as it is) otherwise.
pub fn release(m: Mark) -> bool {
    // SAFETY: single CPU, not inside the allocator.
    let s = unsafe { &mut *HEAP.state.get() };
    if s.live != m.1 {
        return false;
    }
    s.top = m.0;
    true
}

/// Bytes in use above the arena start.
pub fn used() -> usize {
    // SAFETY: single CPU, not inside the allocator.
    unsafe { (*HEAP.state.get()).top }
}
