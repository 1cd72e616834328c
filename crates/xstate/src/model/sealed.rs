//! Sealed buffers: memory for XSAVE images that carries the proof ([`Seal`]) that its bytes are
//! an image a backend's own save instruction wrote and checked, so a backend may restore it
//! without checking it again (the engine's "trusted containers", docs/performance.md P1).
//!
//! The buffer and its seal are one value, [`SealedBuf`]: its allocation is made once and never
//! resized or replaced, every way to write its bytes other than a backend's save resets the
//! seal, and a backend is handed the two together only ([`SealedMut`] / [`SealedRef`], made
//! by [`SealedBuf`] alone). So a seal can never be presented with another buffer, and it need
//! not record the buffer's address: it names the backend instance, the save instruction and
//! the RFBM it was set for.

use alloc::vec::Vec;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::backend::SaveInsn;

/// One 64-byte line of a buffer: the allocator aligns a `Vec` of them to 64 bytes, as the
/// XSAVE family requires (SDM Vol. 1 §13.4), without over-allocating.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// A 64-byte-aligned buffer of whole 64-byte lines and its [`Seal`] (module docs). Made only
/// by this crate (the engine's containers).
#[derive(Debug)]
pub struct SealedBuf {
    /// Never resized or replaced after construction: the seal always describes this
    /// allocation.
    lines: Vec<Line>,
    seal: Seal,
}

impl SealedBuf {
    /// `lines` (unsealed). An empty vector makes a buffer with no bytes.
    pub(crate) fn new(lines: Vec<Line>) -> SealedBuf {
        SealedBuf {
            lines,
            seal: Seal::NONE,
        }
    }

    /// The whole allocation's bytes.
    #[inline(always)]
    pub(crate) fn bytes(&self) -> &[u8] {
        self.lines.as_slice().as_bytes()
    }

    /// The whole allocation's bytes, to write into: the seal is reset first (whatever is
    /// written, a backend checks the image again before restoring it).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        self.seal = Seal::NONE;
        self.lines.as_mut_slice().as_mut_bytes()
    }

    /// No bytes (a confidential guest's container).
    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Bytes allocated.
    pub(crate) fn allocated(&self) -> usize {
        self.lines.capacity() * 64
    }

    /// The buffer with its seal, for a backend's save ([`Backend::save_sealed`]): the one
    /// write that may keep or set the seal.
    ///
    /// [`Backend::save_sealed`]: super::Backend::save_sealed
    #[inline(always)]
    pub(crate) fn for_save(&mut self) -> SealedMut<'_> {
        SealedMut { buf: self }
    }

    /// The buffer with its seal, for a backend's restore ([`Backend::restore_sealed`]).
    ///
    /// [`Backend::restore_sealed`]: super::Backend::restore_sealed
    #[inline(always)]
    pub(crate) fn for_restore(&self) -> SealedRef<'_> {
        SealedRef { buf: self }
    }

    /// The seal.
    #[cfg(test)]
    pub(crate) fn seal(&self) -> &Seal {
        &self.seal
    }
}

impl Clone for SealedBuf {
    /// A copy is not the buffer a backend saved into: it is not sealed.
    fn clone(&self) -> Self {
        SealedBuf::new(self.lines.clone())
    }
}

/// A [`SealedBuf`] lent to a backend's save ([`Backend::save_sealed`]). Made only by
/// [`SealedBuf`]; its fields are private, so no code outside the crate can write into the
/// buffer while it holds the seal:
///
/// ```compile_fail
/// // A backend outside the crate cannot reach the bytes behind a seal (private field).
/// fn write_behind_the_seal(b: xstate::model::SealedMut<'_>) {
///     b.buf.bytes_mut()[600] = 1;
/// }
/// ```
///
/// [`Backend::save_sealed`]: super::Backend::save_sealed
#[derive(Debug)]
pub struct SealedMut<'a> {
    buf: &'a mut SealedBuf,
}

impl<'a> SealedMut<'a> {
    /// The buffer's bytes and its seal, for the backend that saves into it: it resets the
    /// seal before writing by other means than its save instruction, and seals only what
    /// its own checked save wrote.
    #[inline(always)]
    pub(crate) fn split(self) -> (&'a mut [u8], &'a mut Seal) {
        let SealedBuf { lines, seal } = self.buf;
        (lines.as_mut_slice().as_mut_bytes(), seal)
    }

    /// The seal.
    #[inline(always)]
    pub(crate) fn seal(&self) -> &Seal {
        &self.buf.seal
    }
}

/// A [`SealedBuf`] lent to a backend's restore ([`Backend::restore_sealed`]). Made only by
/// [`SealedBuf`].
///
/// [`Backend::restore_sealed`]: super::Backend::restore_sealed
#[derive(Debug, Clone, Copy)]
pub struct SealedRef<'a> {
    buf: &'a SealedBuf,
}

impl<'a> SealedRef<'a> {
    /// The buffer's bytes (the whole allocation).
    #[inline(always)]
    pub(crate) fn mem(self) -> &'a [u8] {
        self.buf.bytes()
    }

    /// The seal.
    #[inline(always)]
    pub(crate) fn seal(self) -> &'a Seal {
        &self.buf.seal
    }
}

/// The proof, kept in a [`SealedBuf`], that its bytes are an image a backend's own save
/// instruction wrote and that nothing else has written since.
///
/// Who may set it and when:
/// * only a backend, in [`Backend::save_sealed`], after its save instruction succeeded and the
///   image it wrote passed every restore check once;
/// * it names that backend instance, the save instruction and the RFBM (one key for the first
///   two, see `Seal::key`): presented to another backend or for another instruction or
///   RFBM it proves nothing; it cannot be presented with another buffer (module docs);
/// * the [`SealedBuf`] resets it before any other write into the buffer, and a clone of a
///   buffer or of a seal is unsealed;
/// * it cannot be made, read or written outside this crate (no public constructor, field or
///   accessor), so images from outside are always checked.
///
/// [`Backend::save_sealed`]: super::Backend::save_sealed
#[derive(Debug, PartialEq, Eq)]
pub struct Seal {
    /// `Seal::key` of the backend instance and save instruction (0: not sealed).
    key: u64,
    /// The save's RFBM.
    rfbm: u64,
}

impl Seal {
    /// Not sealed: proves nothing.
    pub(crate) const NONE: Seal = Seal { key: 0, rfbm: 0 };

    /// The key naming backend instance `owner` (never 0) and save instruction `insn`: never
    /// 0, distinct for distinct pairs while `owner` < 2^61.
    #[inline(always)]
    pub(crate) const fn key(owner: u64, insn: SaveInsn) -> u64 {
        (owner << 3) | insn as u64
    }

    /// The seal a backend sets after its checked save (`key` from `Seal::key`).
    pub(crate) fn new(key: u64, rfbm: u64) -> Seal {
        debug_assert!(key >> 3 != 0, "backend ids start at 1");
        Seal { key, rfbm }
    }

    /// True when set for `key` (a backend instance and save instruction, `Seal::key`) and
    /// `rfbm`.
    #[inline(always)]
    pub(crate) fn holds(&self, key: u64, rfbm: u64) -> bool {
        self.key == key && self.rfbm == rfbm
    }

    /// The key it was set for (0 when not sealed).
    #[inline(always)]
    pub(crate) fn key_of(&self) -> u64 {
        self.key
    }

    /// The RFBM it was set for.
    #[inline(always)]
    pub(crate) fn rfbm(&self) -> u64 {
        self.rfbm
    }
}

impl Clone for Seal {
    /// A copied seal is not on the sealed buffer: its clone is not sealed.
    fn clone(&self) -> Self {
        Seal::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_never_zero() {
        let insns = [
            SaveInsn::Xsave,
            SaveInsn::Xsaveopt,
            SaveInsn::Xsavec,
            SaveInsn::Xsaves,
            SaveInsn::Fxsave,
        ];
        let mut seen = alloc::vec::Vec::new();
        for owner in [1u64, 2, 3, 1 << 40] {
            for i in insns {
                let k = Seal::key(owner, i);
                assert_ne!(k, 0);
                assert!(!seen.contains(&k), "{owner} {i:?}");
                seen.push(k);
            }
        }
    }

    #[test]
    fn writes_and_clones_unseal() {
        let mut b = SealedBuf::new(alloc::vec![Line([0; 64]); 10]);
        let key = Seal::key(1, SaveInsn::Xsavec);
        let (_, seal) = b.for_save().split();
        *seal = Seal::new(key, 7);
        assert!(b.seal().holds(key, 7));
        assert!(!b.seal().holds(key, 3));
        assert!(!b.seal().holds(Seal::key(2, SaveInsn::Xsavec), 7));
        assert!(!b.seal().holds(Seal::key(1, SaveInsn::Xsave), 7));
        assert_eq!(*b.clone().seal(), Seal::NONE);
        assert_eq!(b.bytes().len(), 640);
        assert_eq!(b.bytes().as_ptr() as usize % 64, 0);
        b.bytes_mut()[600] = 1;
        assert_eq!(*b.seal(), Seal::NONE);
    }
}
