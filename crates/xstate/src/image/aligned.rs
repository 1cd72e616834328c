//! 64-byte aligned memory for XSAVE images.

use alloc::boxed::Box;
use core::fmt;

/// A zero-filled byte buffer whose first byte is 64-byte aligned, as the XSAVE family
/// requires. Derefs to `[u8]`. Built without `unsafe`: it over-allocates and starts at the
/// first aligned byte (moving the value does not move the heap allocation).
///
/// ```
/// let b = xstate::image::AlignedBuf::from_bytes(&[1, 2, 3]);
/// assert_eq!(b.as_ptr() as usize % 64, 0);
/// assert_eq!(&b[..], &[1, 2, 3]);
/// ```
pub struct AlignedBuf {
    /// Every byte initialised (no `unsafe`); the image starts at the first 64-byte-aligned
    /// one.
    storage: Box<[u8]>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, 64-byte aligned.
    pub fn new(len: usize) -> Self {
        let (mut b, recycled) = Self::storage_for(len);
        if recycled {
            b.as_mut_slice().fill(0);
        }
        b
    }

    /// `len` bytes, 64-byte aligned, whose content is unspecified: zero, or the stale bytes
    /// of a dropped buffer of the same size (with the `std` feature, from the thread's pool,
    /// see `pool`). For callers that write every byte before anything reads one (the
    /// conversion plans' steps, which tile the target); the bytes are initialised memory
    /// either way (no `unsafe`).
    #[inline]
    pub(crate) fn for_overwrite(len: usize) -> Self {
        Self::storage_for(len).0
    }

    /// A buffer on a recycled storage (`true`: stale bytes) or a new zeroed one.
    #[inline]
    fn storage_for(len: usize) -> (Self, bool) {
        let cap = len.saturating_add(64);
        // A pooled storage is initialised up to its capacity (`pool::give`).
        let (storage, recycled) = match pool::take(cap) {
            Some(v) if v.len() == cap => (v, true),
            // Length = capacity: the box keeps the allocation as it is.
            _ => (alloc::vec![0u8; cap].into_boxed_slice(), false),
        };
        let start = storage.as_ptr().align_offset(64).min(63);
        (
            AlignedBuf {
                storage,
                start,
                len,
            },
            recycled,
        )
    }

    /// A 64-byte aligned copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut b = Self::for_overwrite(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }

    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The bytes, mutable.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// With the `std` feature, dropping a buffer gives its storage to the thread's pool, from
/// which the next buffer of the same size is built (no allocation in a loop that makes and
/// drops images of one size: [`crate::convert::convert`] in steady state).
#[cfg(feature = "std")]
impl Drop for AlignedBuf {
    #[inline]
    fn drop(&mut self) {
        pool::give(core::mem::take(&mut self.storage));
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        AlignedBuf::from_bytes(self.as_slice())
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl core::ops::Deref for AlignedBuf {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl core::ops::DerefMut for AlignedBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

/// A small per-thread pool of the storages of dropped [`AlignedBuf`]s (`std` only: a kernel
/// build has no thread-locals and allocates every buffer).
///
/// Two parts: the storage dropped last, in a cell of its own (`LAST`), and the older ones in
/// a few slots. A loop that makes and drops one image at a time (what [`crate::convert::convert`]
/// does in steady state) only ever moves one storage in and out of the cell: a load and a
/// store each way, no borrow flag, no scan. A storage the cell gives up for a newer one goes
/// to the slots, and a buffer of another size than the cell's is looked for there.
///
/// Bounded: at most `SLOTS` storages per thread (the cell and `SLOTS - 1` slots), none
/// larger than `MAX_STORAGE` bytes, `MAX_BYTES` in all (the slots hold at most `MAX_BYTES -
/// MAX_STORAGE`, whatever the cell holds); a storage that does not fit is freed. A storage
/// is handed out only for a buffer of exactly its capacity (the same image size: a pooled
/// storage never makes a buffer hold more memory than a new one would), and it is moved out
/// of the pool, so no two buffers ever share one. At thread exit the pool is freed; buffers
/// dropped after that (or while the slots are in use) are freed as before (`try_with`,
/// `try_borrow_mut`: never a panic).
pub(crate) mod pool {
    #[cfg(not(feature = "std"))]
    use alloc::boxed::Box;

    /// Storages kept per thread: the last dropped and `SLOTS - 1` older ones.
    #[cfg(feature = "std")]
    pub(crate) const SLOTS: usize = 4;
    /// Largest storage kept (an AMX image is 11 KiB; an APX one a little more).
    #[cfg(feature = "std")]
    pub(crate) const MAX_STORAGE: usize = 32 << 10;
    /// Bytes kept per thread in all.
    #[cfg(feature = "std")]
    pub(crate) const MAX_BYTES: usize = 64 << 10;

    #[cfg(feature = "std")]
    mod imp {
        use super::{MAX_BYTES, MAX_STORAGE, SLOTS};
        use alloc::boxed::Box;
        use core::cell::{Cell, RefCell};

        /// Bytes the slots keep in all: the cell may hold up to `MAX_STORAGE` besides.
        const SLOT_BYTES: usize = MAX_BYTES - MAX_STORAGE;

        /// The older storages. They are kept as boxed slices (pointer and length, 16 bytes,
        /// all of it initialised), as the cell keeps the last: moved in and out whole, so
        /// that taking one right after one was given reads back what the give wrote in the
        /// same shape. A `Vec` (24 bytes) was stored and loaded in different pieces; the
        /// load then could not be forwarded from the pending stores and waited for every
        /// older store to reach the cache, the whole image copied just before included
        /// (measured: 42 ns instead of 25 for a 2688-byte buffer made and dropped).
        pub(super) struct Slots {
            slots: [Option<Box<[u8]>>; SLOTS - 1],
            /// The sum of the slots' lengths.
            bytes: usize,
            /// The slot emptied next when the slots are full.
            next: usize,
        }

        std::thread_local! {
            /// The storage dropped last (measured: `convert` of the host image 25-28 ns
            /// with it in front of the slots, 30-34 ns through the slots alone).
            static LAST: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
            static SLOTS_OF_THREAD: RefCell<Slots> = const {
                RefCell::new(Slots { slots: [const { None }; SLOTS - 1], bytes: 0, next: 0 })
            };
        }

        /// A storage of exactly `cap` bytes, moved out of the pool: the last dropped when it
        /// has that size, else one of the slots'.
        #[inline]
        pub(crate) fn take(cap: usize) -> Option<Box<[u8]>> {
            let last = LAST.try_with(|c| {
                let v = c.take()?;
                if v.len() == cap {
                    return Some(v);
                }
                c.set(Some(v));
                None
            });
            match last {
                Ok(Some(v)) => Some(v),
                _ => take_from_slots(cap),
            }
        }

        #[inline(never)]
        fn take_from_slots(cap: usize) -> Option<Box<[u8]>> {
            SLOTS_OF_THREAD
                .try_with(|p| {
                    let mut p = p.try_borrow_mut().ok()?;
                    let i = p
                        .slots
                        .iter()
                        .position(|v| v.as_ref().is_some_and(|v| v.len() == cap))?;
                    let v = p.slots[i].take()?;
                    p.bytes -= cap;
                    Some(v)
                })
                .ok()
                .flatten()
        }

        /// Keeps `v` for a later buffer of its size, as the last dropped; the one it replaces
        /// goes to the slots.
        #[inline]
        pub(crate) fn give(v: Box<[u8]>) {
            if v.is_empty() || v.len() > MAX_STORAGE {
                return;
            }
            // At thread exit (the cell gone) `v` is dropped with the closure: freed.
            if let Ok(Some(older)) = LAST.try_with(|c| c.replace(Some(v))) {
                give_to_slots(older);
            }
        }

        /// Keeps `v` in a slot. When the slots are full (count or bytes), the storages kept
        /// longest make room (in slot order, round-robin): a thread that moves on to another
        /// image size is not left with a pool of the old one.
        #[inline(never)]
        fn give_to_slots(v: Box<[u8]>) {
            let cap = v.len();
            // A storage the slots cannot take (gone at thread exit, or in use) is dropped
            // here; evicted ones are freed inside the borrow (freeing memory never reaches
            // the pool).
            let _rest = SLOTS_OF_THREAD
                .try_with(|p| {
                    let Ok(mut p) = p.try_borrow_mut() else {
                        return Some(v);
                    };
                    for _ in 0..SLOTS {
                        if p.bytes + cap <= SLOT_BYTES {
                            if let Some(i) = p.slots.iter().position(Option::is_none) {
                                p.slots[i] = Some(v);
                                p.bytes += cap;
                                return None;
                            }
                        }
                        let j = p.next;
                        p.next = (j + 1) % (SLOTS - 1);
                        if let Some(old) = p.slots[j].take() {
                            p.bytes -= old.len();
                        }
                    }
                    Some(v)
                })
                .ok()
                .flatten();
        }

        /// Empties the calling thread's pool.
        #[cfg(test)]
        pub(crate) fn clear() {
            LAST.with(|c| c.set(None));
            SLOTS_OF_THREAD.with(|p| {
                let mut p = p.borrow_mut();
                p.slots = [const { None }; SLOTS - 1];
                p.bytes = 0;
            })
        }

        /// (storages, bytes) the calling thread's pool holds, the last dropped included.
        #[cfg(test)]
        pub(crate) fn held() -> (usize, usize) {
            let last = LAST.with(|c| {
                let v = c.take();
                let n = v.as_ref().map_or(0, |v| v.len());
                c.set(v);
                n
            });
            SLOTS_OF_THREAD.with(|p| {
                let p = p.borrow();
                let n = p.slots.iter().filter(|v| v.is_some()).count();
                (n + usize::from(last > 0), p.bytes + last)
            })
        }

        /// The bytes the slots hold (the last dropped apart).
        #[cfg(test)]
        pub(crate) fn slot_bytes() -> usize {
            SLOTS_OF_THREAD.with(|p| p.borrow().bytes)
        }

        #[cfg(test)]
        pub(crate) const SLOT_BYTES_MAX: usize = SLOT_BYTES;
    }

    #[cfg(all(feature = "std", test))]
    pub(crate) use imp::{clear, held, slot_bytes, SLOT_BYTES_MAX};
    #[cfg(feature = "std")]
    pub(crate) use imp::{give, take};

    /// Without `std`: no pool.
    #[cfg(not(feature = "std"))]
    #[inline]
    pub(crate) fn take(_cap: usize) -> Option<Box<[u8]>> {
        None
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::pool::{
        self, clear, held, slot_bytes, MAX_BYTES, MAX_STORAGE, SLOTS, SLOT_BYTES_MAX,
    };
    use super::AlignedBuf;
    use alloc::vec::Vec;

    /// The heap bytes a buffer's storage spans.
    fn span(b: &AlignedBuf) -> core::ops::Range<usize> {
        let p = b.storage.as_ptr() as usize;
        p..p + b.storage.len()
    }

    fn check(b: &AlignedBuf, len: usize) {
        assert_eq!(b.len(), len);
        assert_eq!(b.as_ptr() as usize % 64, 0, "alignment");
        assert!(b.storage.len() >= len + 64);
        let s = span(b);
        let p = b.as_ptr() as usize;
        assert!(
            s.start <= p && p + len <= s.end,
            "the bytes lie in the storage"
        );
    }

    /// Buffers made while others of the same size are alive and after some were dropped (so
    /// from the pool): never two live buffers on the same storage, each aligned, of its
    /// length, zero (`new`) or exactly the bytes given (`from_bytes`) although the recycled
    /// storages were full of a pattern.
    #[test]
    fn pool_never_hands_out_a_buffer_in_use() {
        clear();
        for len in [576usize, 2688, 11008] {
            let mut live: Vec<AlignedBuf> = Vec::new();
            for round in 0..6u8 {
                for _ in 0..5 {
                    let mut b = AlignedBuf::new(len);
                    check(&b, len);
                    assert!(b.iter().all(|&x| x == 0), "stale bytes in a new buffer");
                    b.fill(0xa5 ^ round);
                    live.push(b);
                    let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8 | 1).collect();
                    let c = AlignedBuf::from_bytes(&data);
                    check(&c, len);
                    assert_eq!(&c[..], &data[..]);
                    live.push(c);
                }
                for (i, a) in live.iter().enumerate() {
                    for b in &live[i + 1..] {
                        let (x, y) = (span(a), span(b));
                        assert!(
                            x.end <= y.start || y.end <= x.start,
                            "two live buffers overlap"
                        );
                    }
                }
                // Drop every other one: their storages go to the pool (as many as it keeps).
                let mut keep = true;
                live.retain(|_| {
                    keep = !keep;
                    keep
                });
            }
        }
    }

    /// A storage is given only for a buffer of its own size; the pool never holds more than
    /// its bounds; a storage larger than `MAX_STORAGE` is freed.
    #[test]
    fn pool_is_bounded_and_sized() {
        clear();
        let b = AlignedBuf::new(2688);
        let addr = b.storage.as_ptr();
        drop(b);
        assert_eq!(held(), (1, 2688 + 64));
        // Another size: a new storage, the pooled one stays.
        let small = AlignedBuf::new(576);
        assert_eq!(small.storage.len(), 576 + 64);
        assert_eq!(held(), (1, 2688 + 64));
        // The same size: the pooled storage, moved out of the pool.
        let again = AlignedBuf::new(2688);
        assert_eq!(again.storage.as_ptr(), addr);
        assert_eq!(held(), (0, 0));
        drop((small, again));
        assert_eq!(held(), (2, 576 + 64 + 2688 + 64));
        clear();
        let big: Vec<AlignedBuf> = (0..2 * SLOTS).map(|_| AlignedBuf::new(11008)).collect();
        drop(big);
        let (n, bytes) = held();
        assert!(
            n <= SLOTS && bytes <= MAX_BYTES && slot_bytes() <= SLOT_BYTES_MAX,
            "{n} storages, {bytes} bytes"
        );
        // The last dropped, and as many older ones as the slots' bytes allow.
        assert_eq!(n, 1 + (SLOTS - 1).min(SLOT_BYTES_MAX / (11008 + 64)));
        // Full of one size: a storage of another size still gets in (the oldest make room)
        // and is handed out for its size.
        let other = AlignedBuf::new(2432);
        let addr = other.storage.as_ptr();
        drop(other);
        let (n2, bytes2) = held();
        assert!(
            n2 <= SLOTS && bytes2 <= MAX_BYTES,
            "{n2} storages, {bytes2} bytes"
        );
        assert_eq!(AlignedBuf::new(2432).storage.as_ptr(), addr);
        clear();
        drop(AlignedBuf::new(MAX_STORAGE));
        assert_eq!(held(), (0, 0), "larger than MAX_STORAGE: freed");
        assert_eq!(pool::take(MAX_STORAGE + 64), None);
    }

    /// One buffer at a time (the steady state of `convert`): the storage goes through the
    /// cell of the last dropped and back, the slots never hold it. Two sizes alternating: the
    /// older goes to the slots, and each size gets its own storage back.
    #[test]
    fn last_dropped_is_handed_back_first() {
        clear();
        let addr = AlignedBuf::new(2688).storage.as_ptr();
        for _ in 0..10 {
            let b = AlignedBuf::for_overwrite(2688);
            assert_eq!(b.storage.as_ptr(), addr);
            assert_eq!(held(), (0, 0));
            drop(b);
            assert_eq!(held(), (1, 2688 + 64));
            assert_eq!(slot_bytes(), 0, "the slots are not touched");
        }
        let small = AlignedBuf::new(576);
        let small_addr = small.storage.as_ptr();
        drop(small);
        assert_eq!(
            slot_bytes(),
            2688 + 64,
            "the older storage moved to the slots"
        );
        assert_eq!(held(), (2, 2688 + 64 + 576 + 64));
        let big = AlignedBuf::new(2688);
        assert_eq!(big.storage.as_ptr(), addr, "from the slots");
        assert!(big.iter().all(|&x| x == 0));
        let small = AlignedBuf::new(576);
        assert_eq!(small.storage.as_ptr(), small_addr, "from the cell");
        assert_eq!(held(), (0, 0));
    }

    std::thread_local! {
        static LATE: core::cell::RefCell<Vec<AlignedBuf>> = const { core::cell::RefCell::new(Vec::new()) };
    }

    /// Buffers dropped while a thread exits, before or after its pool is gone (the order of
    /// thread-local destructors is not specified; both are tried), are freed without a panic.
    #[test]
    fn buffers_dropped_at_thread_exit() {
        for late_first in [false, true] {
            std::thread::spawn(move || {
                if late_first {
                    LATE.with(|l| l.borrow_mut().push(AlignedBuf::new(2688)));
                }
                drop(AlignedBuf::new(2688)); // the pool exists
                LATE.with(|l| l.borrow_mut().push(AlignedBuf::new(2688)));
            })
            .join()
            .expect("no panic at thread exit");
        }
    }
}
