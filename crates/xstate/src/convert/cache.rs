//! The plans behind [`convert`](super::convert) and [`convert_into`](super::convert_into):
//! [`ConvertPlan`]s kept for the (source geometry, target geometry) pairs converted, so the
//! entry points that take a target geometry convert at the plan's speed without the caller
//! holding one.
//!
//! The core crate is `no_std` (no thread-locals), so the cache is process-wide, in two parts:
//! - [`FIXED`] plans for the first pairs converted, each set once and never changed: a hit
//!   costs one acquire load per slot looked at (a plain load on x86) and the geometry
//!   comparisons, no atomic read-modify-write. A VMM converts between a handful of
//!   geometries (its host's and guests' standard and compacted forms), which stay here.
//! - [`ROTATING`] plans for the pairs after those, behind a spin lock that is only ever
//!   *tried*, replaced round-robin.
//!
//! A caller never waits: slots are only filled by the holder of the rotating part's lock, and
//! a caller that finds it busy (another thread making a plan or converting through the
//! rotating part) converts by the component walk, which gives the same bytes and errors.
//! Geometries are compared by value (form, mask, size and every placement), so a plan is used
//! only for exactly the geometries it was made for. A miss makes a plan: a few allocations,
//! once per pair while slots last.

use alloc::sync::Arc;

use spin::mutex::SpinMutex;
use spin::Once;

use super::{ConvertPlan, Found};
use crate::layout::FormLayout;

/// Plans set once.
const FIXED_SLOTS: usize = 8;
/// Plans replaced round-robin.
const ROTATING_SLOTS: usize = 4;

#[allow(clippy::declare_interior_mutable_const)] // a template for the array below
const EMPTY: Once<ConvertPlan> = Once::new();
static FIXED: [Once<ConvertPlan>; FIXED_SLOTS] = [EMPTY; FIXED_SLOTS];

struct Rotating {
    slots: [Option<ConvertPlan>; ROTATING_SLOTS],
    /// The slot the next new plan goes to.
    next: usize,
}

static ROTATING: SpinMutex<Rotating> = SpinMutex::new(Rotating {
    slots: [None, None, None, None],
    next: 0,
});

/// Calls `f` with the plan for converting images of geometry `g` to `t`, or with `None` when
/// the cache is busy or no plan can be made (the caller then walks the components). The entry
/// points look at the set-once plans themselves ([`fixed`]) and go on with [`miss`].
#[cfg(test)]
pub(super) fn with_plan<R>(
    g: &FormLayout,
    t: &FormLayout,
    f: impl FnOnce(Option<Found<'_>>) -> R,
) -> R {
    match fixed(g, t) {
        Some(p) => f(Some(Found::Static(p))),
        None => miss(g, t, f),
    }
}

/// The set-once plan for `g` → `t`, if one is there: the entry points' first look.
#[inline(always)]
pub(super) fn fixed(g: &FormLayout, t: &FormLayout) -> Option<&'static ConvertPlan> {
    for slot in &FIXED {
        match slot.get() {
            Some(p) if p.is_for(g, t) => return Some(p),
            Some(_) => {}
            None => break,
        }
    }
    None
}

/// The geometry equal to `g` that the process's table of geometries (`layout::interned`)
/// or a cached plan already holds, shared, or a new one: images made from that table or by
/// a plan (which holds the plan's target geometry) are recognised by identity.
fn interned(g: &FormLayout, rotating: &[Option<ConvertPlan>]) -> Arc<FormLayout> {
    if let Some(k) = crate::layout::interned::intern(g) {
        return k.clone();
    }
    FIXED
        .iter()
        .map_while(|s| s.get())
        .chain(rotating.iter().flatten())
        .flat_map(|p| {
            let (a, b) = p.shared();
            [a, b]
        })
        .find(|a| ***a == *g)
        .cloned()
        .unwrap_or_else(|| Arc::new(g.clone()))
}

/// Calls `f` with a plan for `g` → `t` after the set-once plans were looked at without a
/// hit, or with `None` (the cache busy, or no plan can be made): under the rotating part's
/// lock (tried), the set-once plans again (another holder may have filled one since), the
/// rotating ones, then a new plan.
#[cold]
#[inline(never)]
pub(super) fn miss<R>(g: &FormLayout, t: &FormLayout, f: impl FnOnce(Option<Found<'_>>) -> R) -> R {
    let Some(mut r) = ROTATING.try_lock() else {
        return f(None);
    };
    // Another holder may have filled a fixed slot since the look above.
    let mut empty = None;
    for slot in &FIXED {
        match slot.get() {
            Some(p) if p.is_for(g, t) => return f(Some(Found::Static(p))),
            Some(_) => {}
            None => {
                empty = Some(slot);
                break;
            }
        }
    }
    if let Some(i) = r
        .slots
        .iter()
        .position(|s| s.as_ref().is_some_and(|p| p.is_for(g, t)))
    {
        return f(r.slots[i].as_ref().map(Found::Local));
    }
    let Ok(p) = ConvertPlan::new_shared(interned(g, &r.slots), interned(t, &r.slots)) else {
        drop(r);
        return f(None);
    };
    if let Some(slot) = empty {
        // Only holders of the lock fill slots, so nobody else is running an initialisation
        // of this one: `call_once` does not wait.
        let p = slot.call_once(|| p);
        drop(r);
        return f(Some(Found::Static(p)));
    }
    let i = r.next % ROTATING_SLOTS;
    r.slots[i] = Some(p);
    r.next = (i + 1) % ROTATING_SLOTS;
    f(r.slots[i].as_ref().map(Found::Local))
}

/// The rotating part's lock, for a test of the busy path.
#[cfg(test)]
pub(super) fn lock_for_test() -> Option<impl Drop> {
    ROTATING.try_lock()
}
