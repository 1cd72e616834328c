//! The state container (`fpstate`, DESIGN.md §6 and seed 002): one buffer of register state
//! plus everything that describes it — size, UABI size, features, user features, the XFD value
//! to switch to before the buffer is restored, and the guest / confidential / in-use flags.
//! Swapping the container swaps all of it at once: "when you switch buffers, you need to
//! switch state information which belongs to the buffer, i.e. features, sizes and xfd"
//! (seed 002).
//!
//! The buffer is exactly the size of its features in the engine's storage form (compacted
//! for XSAVES/XSAVEC): a container without AMX tile data never pays for its 8 KiB. It is one
//! heap allocation of 64-byte lines, aligned by the allocator (no alignment slack), rounded up
//! to a whole line; the geometry (where each component lives) is shared by every container of
//! the same features instead of being copied into each. A
//! confidential guest's container has no buffer at all: the engine never saves into it or
//! restores from it (its registers belong to the firmware, seed 002), so nothing is allocated
//! for them — its size is 0 and only the features and XFD are tracked.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::layout::Layout;
//! use xstate::engine::config::Configs;
//! use xstate::engine::fpstate::FpState;
//! use xstate::strategy::SaveInsn;
//! let mut d = CpuidDump::new("doc");
//! d.insert(0xd, 0, Regs { eax: 0x60007, ebx: 0, ecx: 0x2b00, edx: 0 });
//! d.insert(0xd, 1, Regs { eax: 0x1f, ebx: 0, ecx: 0, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! d.insert(0xd, 17, Regs { eax: 64, ebx: 2752, ecx: 2, edx: 0 });
//! d.insert(0xd, 18, Regs { eax: 8192, ebx: 2816, ecx: 6, edx: 0 });
//! let cfg = Configs::new(&Layout::from_dump(&d), 0x60007, 0, SaveInsn::Xsavec).unwrap();
//! let small = FpState::new(&cfg, 0x20007, 0x40000, true, false).unwrap();
//! assert_eq!(small.size(), 896);       // AVX 576..832, TILECFG 832..896
//! assert_eq!(small.as_bytes().as_ptr() as usize % 64, 0);
//! let big = small.resized(&cfg, 0x60007).unwrap();
//! assert_eq!(big.size(), 896 + 8192);
//! assert_eq!(big.user_size(), 0x2b00);
//! ```

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

use zerocopy::IntoBytes;

use super::config::Configs;
use super::error::{err, EngineError, ErrorKind};
use crate::components::{bits, mask, mask_names};
use crate::image::{XsaveImage, XsaveRef};
use crate::layout::{FormLayout, Placement};
use crate::model::{Line, SealedBuf, SealedMut, SealedRef};
use crate::strategy::SaveInsn;

/// Offset of XSTATE_BV in every image (SDM Vol. 1 §13.4.2).
pub const XSTATE_BV: usize = 512;
/// Offset of XCOMP_BV.
pub const XCOMP_BV: usize = 520;
/// Offset of MXCSR in the legacy area.
pub const MXCSR: usize = 24;
/// Offset of MXCSR_MASK in the legacy area.
pub const MXCSR_MASK: usize = 28;
/// x87 control word after FNINIT (the init value of component 0, DESIGN.md §5).
pub const FCW_INIT: u16 = 0x037f;
/// MXCSR's init value.
pub const MXCSR_INIT: u32 = 0x1f80;

/// Smallest image the image types accept (legacy area and header, SDM Vol. 1 §13.4).
const MIN_IMAGE: usize = 576;

/// One state container.
#[derive(Clone, Debug)]
pub struct FpState {
    /// The register buffer and its seal, set only by the backend's save into it
    /// (`Backend::save_sealed`) and reset before any other write into it: the proof that lets
    /// a backend restore the engine's own images without re-checking them. Empty for a
    /// confidential guest (nothing is ever saved).
    buf: SealedBuf,
    /// Bytes of `buf` in use: the image length (at least the legacy area and header).
    len: usize,
    /// Where each component lives (shared between containers of the same features).
    geometry: Arc<FormLayout>,
    insn: SaveInsn,
    /// `insn` as the backend's save and restore instructions (computed once: the hot path
    /// reads them on every switch).
    insns: (crate::model::SaveInsn, crate::model::RestoreInsn),
    /// The RFBM of restores of this container (see [`restore_rfbm`](Self::restore_rfbm)).
    restore_rfbm: u64,
    size: u32,
    user_size: u32,
    xfeatures: u64,
    user_xfeatures: u64,
    xfd: u64,
    is_guest: bool,
    is_confidential: bool,
    in_use: bool,
}

/// The bytes of component `id` that are its registers, inside its placement: x87 without
/// MXCSR/MXCSR_MASK (bytes 24..31 belong to SSE and AVX, DESIGN.md §2), SSE = XMM0-15,
/// every other component whole.
pub fn register_ranges(p: Placement) -> Vec<Range<usize>> {
    let r = p.range();
    match p.id {
        0 => alloc::vec![r.start..r.start + MXCSR, r.start + 32..r.end],
        _ => alloc::vec![r],
    }
}

/// The init value of component `id`'s register bytes (see [`register_ranges`]): zero except
/// the x87 control word 0x037F (DESIGN.md §5).
pub fn init_bytes(id: u8, len: usize) -> Vec<u8> {
    let mut v = alloc::vec![0u8; len];
    if id == 0 && len >= 2 {
        v[..2].copy_from_slice(&FCW_INIT.to_le_bytes());
    }
    v
}

/// The register bytes of a test pattern: `byte` in every register byte of component `id`
/// (`len` bytes, see [`register_ranges`]), except where XRSTORS would refuse the value: CET_U
/// and CET_S hold MSRs that must be canonical and 4-byte aligned, with IA32_U_CET bits 9:6
/// clear (SDM Vol. 1 §17.3; DESIGN.md §5), so each of their 8-byte fields keeps the byte only
/// in bits 12..46; TILECFG (17) must be a valid tile configuration or XRSTOR puts it in init
/// state ([`crate::model::tilecfg`]), so a non-zero `byte` gives palette 1 with each of the 8
/// tiles configured as `(byte - 1) / 64 + 1` rows of `(byte - 1) % 64 + 1` bytes (a distinct
/// configuration for each byte, within palette 1's 16 rows of 64 bytes), and 0 gives the
/// init state (all zero).
///
/// ```
/// use xstate::engine::fpstate::pattern;
/// assert_eq!(pattern(6, 0xab, 4), vec![0xab; 4]);
/// assert_eq!(pattern(12, 0xff, 8), 0x0000_7fff_ffff_f000u64.to_le_bytes().to_vec());
/// let cfg = pattern(17, 0x42, 64);
/// assert_eq!((cfg[0], cfg[16], cfg[48]), (1, 2, 2));  // palette 1, tile 0: 2 rows of 2 bytes
/// ```
pub fn pattern(id: u8, byte: u8, len: usize) -> Vec<u8> {
    let mut v = alloc::vec![byte; len];
    if id == 17 {
        let mut cfg = [0u8; 64];
        if byte != 0 {
            cfg[0] = 1;
            for n in 0..8 {
                cfg[16 + 2 * n] = (byte - 1) % 64 + 1;
                cfg[48 + n] = (byte - 1) / 64 + 1;
            }
        }
        for (i, b) in v.iter_mut().enumerate() {
            *b = cfg.get(i).copied().unwrap_or(0);
        }
    }
    if id == 11 || id == 12 {
        let field = (u64::from_le_bytes([byte; 8]) & 0x0000_7fff_ffff_f000).to_le_bytes();
        for chunk in v.chunks_mut(8) {
            let n = chunk.len();
            chunk.copy_from_slice(&field[..n]);
        }
    }
    v
}

/// The mask bit of component `id`; 0 for ids that are not components (≥ 63).
pub fn bit(id: u8) -> u64 {
    1u64.checked_shl(u32::from(id)).unwrap_or(0) & !mask::COMPACTED
}

pub(crate) fn rd_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

pub(crate) fn rd_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

pub(crate) fn wr(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(off..off + v.len()) {
        s.copy_from_slice(v);
    }
}

/// The geometry of a buffer holding `features` as `insn` stores them.
pub(crate) fn geometry(
    cfg: &Configs,
    insn: SaveInsn,
    features: u64,
) -> Result<FormLayout, EngineError> {
    let r = match insn.form() {
        Some(form) => cfg.layout.form(form, features),
        None => cfg.layout.standard(features & mask::LEGACY).map(|mut g| {
            g.size = 512;
            g
        }),
    };
    r.or_else(|e| {
        err(
            ErrorKind::Einval,
            format!("features {features:#x} ({}): {e}", mask_names(features)),
        )
    })
}

/// The register bytes of component `id` in an image with geometry `g` and XSTATE_BV `bv`, as a
/// restore would load them (init values when the bit is clear); `None` when `g` lacks it.
pub fn component_of(bytes: &[u8], g: &FormLayout, bv: u64, id: u8) -> Option<Vec<u8>> {
    let p = g.placement(id)?;
    let ranges = register_ranges(p);
    let len: usize = ranges.iter().map(|r| r.len()).sum();
    if bv & bit(id) == 0 {
        return Some(init_bytes(id, len));
    }
    let mut out = Vec::with_capacity(len);
    for r in ranges {
        out.extend_from_slice(bytes.get(r)?);
    }
    Some(out)
}

/// Writes the register bytes of component `id` (as returned by [`component_of`]) into an image
/// with geometry `g`; false when `g` lacks the component or the length is wrong.
pub fn write_component(bytes: &mut [u8], g: &FormLayout, id: u8, data: &[u8]) -> bool {
    let Some(p) = g.placement(id) else {
        return false;
    };
    let ranges = register_ranges(p);
    if ranges.iter().map(|r| r.len()).sum::<usize>() != data.len() {
        return false;
    }
    let mut at = 0;
    for r in ranges {
        let n = r.len();
        match (bytes.get_mut(r), data.get(at..at + n)) {
            (Some(to), Some(from)) => to.copy_from_slice(from),
            _ => return false,
        }
        at += n;
    }
    true
}

impl FpState {
    /// A container for `features` (clipped to what the storage can hold), every component in
    /// its init state (XSTATE_BV = 0; the legacy area holds the init FCW and MXCSR, which a
    /// standard-form XRSTOR loads even for an init SSE component), with `xfd` to switch to
    /// before it is restored.
    pub fn new(
        cfg: &Configs,
        features: u64,
        xfd: u64,
        is_guest: bool,
        is_confidential: bool,
    ) -> Result<FpState, EngineError> {
        let xfeatures = Self::features_for(cfg, features);
        let g = Arc::new(geometry(cfg, cfg.insn, xfeatures)?);
        Self::with_geometry(cfg, g, xfd, is_guest, is_confidential)
    }

    /// The features a container for `features` holds (clipped to what the storage can hold;
    /// x87 and SSE always).
    pub(crate) fn features_for(cfg: &Configs, features: u64) -> u64 {
        super::config::storable(cfg.insn, features | mask::LEGACY, &cfg.layout)
    }

    /// [`new`](Self::new) with the geometry of [`features_for`](Self::features_for) already
    /// computed (the engine shares one per feature set).
    pub(crate) fn with_geometry(
        cfg: &Configs,
        g: Arc<FormLayout>,
        xfd: u64,
        is_guest: bool,
        is_confidential: bool,
    ) -> Result<FpState, EngineError> {
        let xfeatures = g.mask & !mask::COMPACTED;
        let user_xfeatures = xfeatures & cfg.user.max_features;
        let user_size = cfg.user_size_of(user_xfeatures)?;
        let len = (g.size as usize).max(MIN_IMAGE);
        let (buf, size) = if is_confidential {
            (SealedBuf::new(Vec::new()), 0)
        } else {
            let mut v = alloc::vec![Line([0; 64]); len.div_ceil(64)];
            // Every component in init state: XSTATE_BV 0, XCOMP_BV of the geometry, and the
            // legacy area's FCW 0x037F and MXCSR 0x1F80 (a standard-form XRSTOR loads MXCSR
            // even for an init SSE component, SDM Vol. 1 §13.8.1).
            let b = v.as_mut_slice().as_mut_bytes();
            wr(b, 0, &FCW_INIT.to_le_bytes());
            wr(b, MXCSR, &MXCSR_INIT.to_le_bytes());
            wr(b, XCOMP_BV, &g.xcomp_bv().to_le_bytes());
            (SealedBuf::new(v), g.size)
        };
        Ok(FpState {
            buf,
            len,
            geometry: g,
            insn: cfg.insn,
            insns: super::insns(cfg.insn),
            // The configuration never changes after the engine is made.
            restore_rfbm: match cfg.insn {
                SaveInsn::Xsaves => (cfg.xcr0 | cfg.xss) & !cfg.independent & !mask::COMPACTED,
                SaveInsn::Xsavec => cfg.xcr0,
                _ => xfeatures,
            },
            size,
            user_size,
            xfeatures,
            user_xfeatures,
            xfd,
            is_guest,
            is_confidential,
            in_use: false,
        })
    }

    /// A container for `features` holding the state of every component it shares with this one
    /// (seed 004: a resize never loses the state of a component that is still allowed); the
    /// other components are in init state. Flags and XFD are kept.
    pub fn resized(&self, cfg: &Configs, features: u64) -> Result<FpState, EngineError> {
        let xfeatures = Self::features_for(cfg, features);
        self.resized_with(cfg, Arc::new(geometry(cfg, cfg.insn, xfeatures)?))
    }

    /// [`resized`](Self::resized) to a given geometry.
    pub(crate) fn resized_with(
        &self,
        cfg: &Configs,
        g: Arc<FormLayout>,
    ) -> Result<FpState, EngineError> {
        let mut n = FpState::with_geometry(cfg, g, self.xfd, self.is_guest, self.is_confidential)?;
        n.in_use = self.in_use;
        let (Some(old), true) = (self.image(), !n.buf.is_empty()) else {
            return Ok(n);
        };
        // Components the new container cannot hold are dropped on purpose (the policy no
        // longer allows them): put them in init state first so the conversion, which refuses
        // to drop live state silently, moves only what is kept.
        let mut src = old.to_owned_image();
        for id in bits(self.xstate_bv() & !n.xfeatures) {
            src.clear_component(id)
                .or_else(|e| err(ErrorKind::Einval, format!("{e}")))?;
        }
        if self.insn == SaveInsn::Fxsave {
            if let (Some(to), Some(from)) =
                (n.as_mut_bytes().get_mut(..512), src.as_bytes().get(..512))
            {
                to.copy_from_slice(from);
            }
        } else {
            let img = crate::convert::convert(&src, &n.geometry).or_else(|e| {
                err(
                    ErrorKind::Einval,
                    format!(
                        "resizing the container from {:#x} to {:#x}: {e}",
                        self.xfeatures, n.xfeatures
                    ),
                )
            })?;
            // convert() writes the target geometry's XCOMP_BV and has the buffer's length.
            if let Some(to) = n.as_mut_bytes().get_mut(..img.len()) {
                to.copy_from_slice(img.as_bytes());
            }
        }
        Ok(n)
    }

    /// The buffer (64-byte aligned); empty for a confidential guest's container.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.bytes().get(..self.len).unwrap_or(&[])
    }

    /// The buffer, to write into: the seal is reset first (whatever is written, the backend
    /// checks the image again before restoring it).
    pub(crate) fn as_mut_bytes(&mut self) -> &mut [u8] {
        let len = self.len;
        self.buf.bytes_mut().get_mut(..len).unwrap_or(&mut [])
    }

    /// The buffer and its seal, for the backend's save instruction only
    /// (`Engine::save_into`): the one write that may keep or set the seal. The whole
    /// allocation, in 64-byte lines (the image and the tail of its last line): the save
    /// instruction writes within the image, and the hot path needs no bound arithmetic.
    #[inline(always)]
    pub(crate) fn save_target(&mut self) -> SealedMut<'_> {
        self.buf.for_save()
    }

    /// The buffer and its seal, for the backend's restore (`Engine::restore_from`): the same
    /// bytes as [`save_target`](Self::save_target).
    #[inline(always)]
    pub(crate) fn restore_source(&self) -> SealedRef<'_> {
        self.buf.for_restore()
    }

    /// The seal of the buffer (see [`save_target`](Self::save_target)).
    #[cfg(test)]
    pub(crate) fn seal(&self) -> &crate::model::Seal {
        self.buf.seal()
    }

    /// Bytes allocated for the buffer (its size rounded up to whole 64-byte lines; 0 for a
    /// confidential guest's container).
    pub fn allocated(&self) -> usize {
        self.buf.allocated()
    }

    /// The buffer as a typed image view (`None` for a confidential guest's container).
    pub fn image(&self) -> Option<XsaveRef<'_>> {
        if self.buf.is_empty() {
            return None;
        }
        XsaveRef::with_geometry(self.as_bytes(), (*self.geometry).clone()).ok()
    }

    /// Replaces the buffer's contents with an image of the same geometry (`einval`
    /// otherwise).
    pub(crate) fn replace_image(&mut self, img: XsaveImage) -> Result<(), EngineError> {
        let fits =
            !self.buf.is_empty() && *img.geometry() == *self.geometry && img.len() == self.len;
        if !fits {
            return err(
                ErrorKind::Einval,
                format!(
                    "image of {} bytes for {:#x} does not fit the container ({})",
                    img.len(),
                    img.geometry().mask,
                    self.describe()
                ),
            );
        }
        self.as_mut_bytes().copy_from_slice(img.as_bytes());
        Ok(())
    }

    /// Where each component lives in the buffer (`None` without a buffer).
    pub fn geometry(&self) -> Option<&FormLayout> {
        (!self.buf.is_empty()).then_some(&*self.geometry)
    }

    /// The save instruction the buffer is written by.
    pub fn insn(&self) -> SaveInsn {
        self.insn
    }

    /// The RFBM of restores of this container: in the compacted form every enabled feature
    /// (components the container lacks are put in init state, SDM Vol. 1 §13.8.2), in the
    /// standard form the container's features (a standard buffer has no room beyond them).
    #[inline(always)]
    pub(crate) fn restore_rfbm(&self) -> u64 {
        self.restore_rfbm
    }

    /// The backend's save and restore instructions for [`insn`](Self::insn).
    #[inline(always)]
    pub(crate) fn insns(&self) -> (crate::model::SaveInsn, crate::model::RestoreInsn) {
        self.insns
    }

    /// Buffer size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Standard-form (UABI) size of the user features.
    pub fn user_size(&self) -> u32 {
        self.user_size
    }

    /// The features the buffer holds (its XCOMP_BV in the compacted form).
    pub fn xfeatures(&self) -> u64 {
        self.xfeatures
    }

    /// The user features the buffer holds.
    pub fn user_xfeatures(&self) -> u64 {
        self.user_xfeatures
    }

    /// The IA32_XFD value switched to before this buffer is restored.
    pub fn xfd(&self) -> u64 {
        self.xfd
    }

    pub(crate) fn set_xfd(&mut self, xfd: u64) {
        self.xfd = xfd;
    }

    /// Linux 6.19 (DESIGN.md §8, "x86/fpu: Clear XSTATE_BV[i] in guest XSAVE state whenever
    /// XFD[i]=1"): a component XFD arms must not be marked present in the buffer, or the
    /// restore before the next guest entry raises #NM. Clears the XSTATE_BV bits of `armed`
    /// (the component goes to init state, which is what the guest sees after re-enabling it
    /// anyway) and returns those that were set.
    pub(crate) fn clear_armed(&mut self, armed: u64) -> u64 {
        if self.buf.is_empty() || self.insn == SaveInsn::Fxsave {
            return 0;
        }
        let bv = self.xstate_bv();
        let hit = bv & armed & !mask::LEGACY;
        if hit != 0 {
            wr(self.as_mut_bytes(), XSTATE_BV, &(bv & !hit).to_le_bytes());
        }
        hit
    }

    /// A guest's container.
    pub fn is_guest(&self) -> bool {
        self.is_guest
    }

    /// A confidential guest's container: the engine never saves into or restores from it.
    pub fn is_confidential(&self) -> bool {
        self.is_confidential
    }

    /// The container is the current one of the CPU (attached).
    pub fn in_use(&self) -> bool {
        self.in_use
    }

    pub(crate) fn set_in_use(&mut self, v: bool) {
        self.in_use = v;
    }

    /// XSTATE_BV of the buffer (bits of components not in init state); for the FXSAVE area,
    /// x87 and SSE.
    pub fn xstate_bv(&self) -> u64 {
        if self.buf.is_empty() {
            0
        } else if self.insn == SaveInsn::Fxsave {
            mask::LEGACY
        } else {
            rd_u64(self.as_bytes(), XSTATE_BV)
        }
    }

    /// The register bytes of component `id` as a restore of this buffer would load them (init
    /// values when its XSTATE_BV bit is clear); `None` when the container does not hold it.
    pub fn component(&self, id: u8) -> Option<Vec<u8>> {
        component_of(self.as_bytes(), self.geometry()?, self.xstate_bv(), id)
    }

    /// MXCSR as stored in the buffer.
    pub fn mxcsr(&self) -> u32 {
        rd_u32(self.as_bytes(), MXCSR)
    }

    /// One line for reports: size, features and their names.
    pub fn describe(&self) -> alloc::string::String {
        format!(
            "{} bytes, xfeatures {:#x} ({}), xfd {:#x}",
            self.size,
            self.xfeatures,
            mask_names(self.xfeatures),
            self.xfd
        )
    }
}
