//! Geometries shared by the images and conversion plans of the process (`std` only).
//!
//! A VMM works with a handful of geometries — its host's and its guests' standard and
//! compacted forms — and makes many images of each. The first [`SLOTS`] distinct geometries
//! asked for are kept here for the life of the process, each set once and never changed:
//! - an image made with one of them holds it by reference instead of a copy (no allocation
//!   for its placements);
//! - a conversion plan made for it holds the same object, so a plan recognises the geometry
//!   of such an image by its address instead of comparing every placement (the comparison
//!   costs about 0.4 ns per placement on every conversion; `convert::plan`).
//!
//! Geometries asked for after the table is full are copied, as before. What is kept: at most
//! `SLOTS` geometries of a few hundred bytes each. Without the `std` feature (a kernel, a
//! hypervisor's `no_std` core) nothing is kept: memory that no caller owns would outlive
//! every caller (the ring-0 test kernel counts it as a leak), so images copy their geometry.

use alloc::sync::Arc;

use spin::Once;

use super::FormLayout;

/// Geometries kept.
const SLOTS: usize = 16;

#[allow(clippy::declare_interior_mutable_const)] // a template for the array below
const EMPTY: Once<Arc<FormLayout>> = Once::new();
static TABLE: [Once<Arc<FormLayout>>; SLOTS] = [EMPTY; SLOTS];

/// The kept geometry equal to `g` (form, mask, size, every placement): found, or kept now in
/// a free slot. `None` when every slot holds another geometry.
pub(crate) fn intern(g: &FormLayout) -> Option<&'static Arc<FormLayout>> {
    intern_in(&TABLE, g)
}

/// The kept geometry equal to `g`, if there is one; keeps nothing new (what
/// [`crate::layout::Layout`] asks, so that the layouts it builds share the kept placement
/// lists without filling the table with every geometry computed).
pub(crate) fn find(g: &FormLayout) -> Option<&'static Arc<FormLayout>> {
    TABLE
        .iter()
        .map_while(|slot| slot.get())
        .find(|kept| ***kept == *g)
}

/// [`intern`] in `table`. Geometries are compared by value (`==`: form, mask, size, then the
/// placement lists, which compare equal at once when they are one shared list). Slots are
/// filled in order and never emptied, so a look stops at the first free one, which it fills; two threads filling the same slot with different geometries
/// are told apart by the comparison (the one whose geometry did not go in looks on at the next
/// slot; `call_once` makes it wait for the other's copy to be made, never longer).
fn intern_in<'t>(
    table: &'t [Once<Arc<FormLayout>>],
    g: &FormLayout,
) -> Option<&'t Arc<FormLayout>> {
    table.iter().find_map(|slot| {
        let kept = slot.call_once(|| Arc::new(g.clone()));
        (**kept == *g).then_some(kept)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Form, Placement};

    fn geometry(size: u32) -> FormLayout {
        FormLayout {
            form: Form::Standard,
            mask: 3,
            size,
            placements: alloc::vec![
                Placement {
                    id: 0,
                    offset: 0,
                    size: 160
                },
                Placement {
                    id: 1,
                    offset: 160,
                    size: 256
                },
            ]
            .into(),
        }
    }

    #[test]
    fn equal_geometries_share_one_object_and_others_do_not() {
        let table = [EMPTY; 3];
        let a = intern_in(&table, &geometry(1000)).expect("a free slot");
        let b = intern_in(&table, &geometry(1000)).expect("kept");
        assert!(Arc::ptr_eq(a, b));
        let c = intern_in(&table, &geometry(2000)).expect("a free slot");
        assert!(!Arc::ptr_eq(a, c));
        assert_eq!(**c, geometry(2000));
        // A geometry differing in one placement field only is another geometry.
        let mut d = geometry(1000);
        d.placements[1].size = 255;
        let d2 = intern_in(&table, &d).expect("the last free slot");
        assert!(!Arc::ptr_eq(a, d2));
        assert_eq!(**d2, d);
        let mut e = geometry(1000);
        e.placements[0].id = 2;
        assert!(intern_in(&table, &e).is_none(), "the table is full");
        // Kept geometries are still found, each as the same object.
        assert!(Arc::ptr_eq(intern_in(&table, &geometry(1000)).unwrap(), a));
        assert!(Arc::ptr_eq(intern_in(&table, &d).unwrap(), d2));
    }

    #[test]
    fn threads_filling_one_table_agree() {
        let table = [EMPTY; 4];
        let kept: alloc::vec::Vec<alloc::vec::Vec<usize>> = std::thread::scope(|s| {
            let hs: alloc::vec::Vec<_> = (0..4)
                .map(|t| {
                    let table = &table;
                    s.spawn(move || {
                        (0..4u32)
                            .map(|i| {
                                let g = geometry(1000 + (i + t) % 4);
                                let k = intern_in(table, &g).expect("4 geometries, 4 slots");
                                assert_eq!(**k, g);
                                Arc::as_ptr(k) as usize
                            })
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Every thread got the same object for the same geometry.
        for t in 0..4 {
            for i in 0..4 {
                assert_eq!(kept[t][i], kept[0][(i + t) % 4]);
            }
        }
    }
}
