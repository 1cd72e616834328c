//! 64-byte aligned memory for XSAVE images.

use alloc::vec;
use alloc::vec::Vec;
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
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, 64-byte aligned.
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len.saturating_add(64)];
        let start = storage.as_ptr().align_offset(64).min(63);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// `len` bytes, 64-byte aligned, appended in order by `fill` to the vector it is given,
    /// without zeroing them first (each byte written once). Bytes `fill` does not append
    /// are zero; bytes beyond `len` are dropped. Without `unsafe`: the vector is allocated
    /// with room for the alignment and `len`, and if `fill` outgrew it (moving the
    /// allocation) the bytes are copied into a new aligned buffer.
    pub(crate) fn build(len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut storage: Vec<u8> = Vec::with_capacity(len.saturating_add(64));
        let start = storage.as_ptr().align_offset(64).min(63);
        storage.resize(start, 0);
        fill(&mut storage);
        storage.resize(start + len, 0);
        if (storage.as_ptr() as usize + start) % 64 != 0 {
            return AlignedBuf::from_bytes(&storage[start..]);
        }
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// A 64-byte aligned copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut b = AlignedBuf::new(bytes.len());
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
