//! The plans behind [`convert`](super::convert) and [`convert_into`](super::convert_into):
//! a few [`ConvertPlan`]s kept for the (source geometry, target geometry) pairs converted
//! last, so the entry points that take a target geometry convert at the plan's speed without
//! the caller holding one.
//!
//! The core crate is `no_std` (no thread-locals): the cache is one process-wide table behind
//! a spin lock that is only ever *tried*. A caller that finds it busy (another thread is
//! converting) never waits: it converts by the component walk, which gives the same bytes
//! and errors. Geometries are compared by value (form, mask, size and every placement), so
//! a plan is used only for exactly the geometries it was made for. A miss makes a plan (a few
//! allocations, once per pair) and replaces the least recently made one.

use super::ConvertPlan;
use crate::layout::FormLayout;

/// Plans kept: a VMM converts between a handful of geometries (its host's and guests'
/// standard and compacted forms).
const SLOTS: usize = 4;

struct Cache {
    slots: [Option<ConvertPlan>; SLOTS],
    /// The slot found last (looked at first).
    last: usize,
    /// The slot the next new plan goes to.
    next: usize,
}

static CACHE: spin::mutex::SpinMutex<Cache> = spin::mutex::SpinMutex::new(Cache {
    slots: [None, None, None, None],
    last: 0,
    next: 0,
});

impl Cache {
    #[inline]
    fn find(&self, g: &FormLayout, t: &FormLayout) -> Option<usize> {
        let hit = |i: usize| self.slots[i].as_ref().is_some_and(|p| p.is_for(g, t));
        if hit(self.last) {
            return Some(self.last);
        }
        (0..SLOTS).find(|&i| i != self.last && hit(i))
    }
}

/// Calls `f` with the plan for converting images of geometry `g` to `t`, or with `None` when
/// the cache is busy or no plan can be made (the caller then walks the components).
#[inline]
pub(super) fn with_plan<R>(
    g: &FormLayout,
    t: &FormLayout,
    f: impl FnOnce(Option<&ConvertPlan>) -> R,
) -> R {
    let Some(mut c) = CACHE.try_lock() else {
        return f(None);
    };
    let i = match c.find(g, t) {
        Some(i) => i,
        None => {
            let Ok(p) = ConvertPlan::new(g, t) else {
                drop(c);
                return f(None);
            };
            let i = c.next % SLOTS;
            c.slots[i] = Some(p);
            c.next = (i + 1) % SLOTS;
            i
        }
    };
    c.last = i;
    f(c.slots[i].as_ref())
}

/// The cache's lock, for a test of the busy path.
#[cfg(test)]
pub(super) fn lock_for_test() -> Option<impl Drop> {
    CACHE.try_lock()
}
