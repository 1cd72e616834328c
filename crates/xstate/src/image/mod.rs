//! XSAVE images as values: an owned 64-byte-aligned buffer ([`XsaveImage`]) and borrowed views
//! ([`XsaveRef`], [`XsaveMut`]), in the standard or the compacted form, with typed access to
//! the header, the legacy area and every state component.
//!
//! An image is bytes plus a geometry (a [`FormLayout`]: where each component lives). The
//! geometry comes from CPUID leaf 0xD through a [`Layout`] — never from a hard-coded offset —
//! or is given explicitly. Only the legacy area and the header have fixed offsets (SDM Vol. 1
//! §10.5.1, §13.4.1, §13.4.2; DESIGN.md §4).
//!
//! Typed getters return the value a restore of the image would put in the register (SDM
//! Vol. 1 §13.8): a component whose XSTATE_BV bit is clear reads as its init value (DESIGN.md
//! §5). Setters write the register and set the component's XSTATE_BV bit; when the bit was
//! clear the rest of the component is first written with its init value, so the image keeps
//! its meaning. [`Xsave::clear_component`] writes the init value and clears the bit.
//!
//! MXCSR belongs to the SSE component but lives in the x87 part of the legacy area. Its
//! meaning differs between the forms (SDM Vol. 1 §13.8.1, DESIGN.md §5): the standard form of
//! XRSTOR loads it from the image whenever RFBM\[1\] or RFBM\[2\] is set, even with XSTATE_BV\[1\]
//! clear; the compacted form loads it only with the SSE component and otherwise sets 0x1F80.
//! [`Xsave::mxcsr`] returns that effective value.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::image::XsaveImage;
//! use xstate::layout::Layout;
//! let mut d = CpuidDump::new("doc");
//! d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! let layout = Layout::from_dump(&d);
//! let mut img = XsaveImage::new(&layout.standard(0x7).unwrap());
//! assert_eq!(img.xstate_bv(), 0);
//! img.set_ymm_hi(3, 0x1234).unwrap();
//! assert_eq!(img.xstate_bv(), 0x4);
//! assert_eq!(img.ymm_hi(3).unwrap(), 0x1234);
//! assert_eq!(img.ymm_hi(2).unwrap(), 0);
//! img.clear_component(2).unwrap();
//! assert!(img.is_init(2).unwrap());
//! // Parse bytes back, with the same CPU's layout.
//! let again = XsaveImage::from_bytes(img.as_bytes(), &layout).unwrap();
//! assert_eq!(again.as_bytes(), img.as_bytes());
//! ```

pub mod registers;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::components::{bits, mask, Component};
use crate::layout::{Form, FormLayout, Layout, LayoutError, Placement, EXTENDED_START};
use registers::{registers, significant, RegSpec};

/// Offset of XSTATE_BV in the image (header byte 0).
pub const XSTATE_BV_OFFSET: usize = 512;
/// Offset of XCOMP_BV in the image (header byte 8).
pub const XCOMP_BV_OFFSET: usize = 520;
/// Offset of the reserved header bytes 16..63.
pub const HEADER_RESERVED_OFFSET: usize = 528;
/// Offset of MXCSR in the legacy area.
pub const MXCSR_OFFSET: usize = 24;
/// Offset of MXCSR_MASK in the legacy area.
pub const MXCSR_MASK_OFFSET: usize = 28;
/// Init value of the x87 control word (FNINIT; DESIGN.md §5).
pub const FCW_INIT: u16 = 0x037f;
/// Init value of MXCSR (DESIGN.md §5).
pub const MXCSR_INIT: u32 = 0x1f80;
/// Smallest XSAVE image: legacy area and header.
pub const MIN_SIZE: usize = EXTENDED_START as usize;
/// Size of an FXSAVE image (the legacy area alone).
pub const FXSAVE_SIZE: usize = 512;

/// Why an image cannot be built or accessed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Fewer bytes than the legacy area and header.
    #[error("image is {len} bytes: an XSAVE image holds at least the 512-byte legacy area and the 64-byte header (576 bytes)")]
    TooSmall {
        /// Bytes given.
        len: usize,
    },
    /// Fewer bytes than the geometry needs.
    #[error(
        "image is {len} bytes but its {form} layout for components {mask:#x} needs {needed} bytes"
    )]
    Truncated {
        /// Bytes given.
        len: usize,
        /// Bytes the geometry needs.
        needed: usize,
        /// Form of the geometry.
        form: Form,
        /// Components of the geometry.
        mask: u64,
    },
    /// The compacted geometry named by XCOMP_BV cannot be computed on this layout.
    #[error("XCOMP_BV (offset 520) = {xcomp_bv:#x} cannot be laid out: {source}")]
    Layout {
        /// XCOMP_BV read from the image.
        xcomp_bv: u64,
        /// What the layout engine said.
        source: LayoutError,
    },
    /// The component has no place in this image's geometry.
    #[error("component {id} ({name}) has no place in this {form} image (components {mask:#x})")]
    NotInImage {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// Form of the image.
        form: Form,
        /// Components the geometry places.
        mask: u64,
    },
    /// A register index out of range.
    #[error(
        "component {id} ({name}): register {register}{index} does not exist (there are {count})"
    )]
    BadIndex {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// Register name.
        register: &'static str,
        /// Index asked for.
        index: usize,
        /// Number of registers.
        count: u32,
    },
    /// A component's bytes given with the wrong length.
    #[error("component {id} ({name}) is {expected} bytes in this image, {got} given")]
    Length {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// Size of the component's placement.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// Component id 63 or above: bit 63 is XCOMP_BV's form flag, not a component.
    #[error("{id} is not a component number (0..=62)")]
    BadComponent {
        /// The id given.
        id: u8,
    },
}

mod aligned;
#[cfg(all(test, feature = "std"))]
pub(crate) use aligned::pool;
pub use aligned::AlignedBuf;

// The owned image stores its bytes in the model's aligned buffer (64-byte aligned as
// XSAVE/XRSTOR require of their memory operand, SDM Vol. 1 §13.4; built without `unsafe`).
impl AsRef<[u8]> for AlignedBuf {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for AlignedBuf {
    #[inline]
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl Eq for AlignedBuf {}

/// An XSAVE image: bytes (`B`: an [`AlignedBuf`], `&[u8]` or `&mut [u8]`) and the geometry
/// that places its components.
///
/// The geometry is owned, or shared with other images of the same geometry
/// ([`Xsave::with_shared_geometry`]; [`convert`](crate::convert::convert) hands out the
/// target geometry of its plan that way, without allocating or copying it). Either way it is
/// read through [`Xsave::geometry`], compared by value, and never changes while an image
/// holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Xsave<B> {
    bytes: B,
    geometry: Geometry,
}

impl<B: core::fmt::Debug> core::fmt::Debug for Xsave<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Xsave")
            .field("bytes", &self.bytes)
            .field("geometry", self.geometry.get())
            .finish()
    }
}

/// The geometry an image is read with: its own, shared through an [`Arc`], or one that lives
/// as long as the program (kept in the process's table of geometries, `layout::interned`, or
/// by a plan of the process-wide conversion cache; never freed). Compared by value.
#[derive(Clone)]
pub(crate) enum Geometry {
    Owned(FormLayout),
    Shared(Arc<FormLayout>),
    Static(&'static FormLayout),
}

impl Geometry {
    /// `g` as the process's table of geometries keeps it (no copy: shared with the other
    /// images and the conversion plans of that geometry), or a copy when the table is full
    /// or absent (no `std`; a copy shares `g`'s placement list, so it allocates nothing).
    pub(crate) fn of(g: &FormLayout) -> Geometry {
        #[cfg(feature = "std")]
        if let Some(k) = crate::layout::interned::intern(g) {
            return Geometry::Static(k);
        }
        Geometry::Owned(g.clone())
    }

    #[inline]
    pub(crate) fn get(&self) -> &FormLayout {
        match self {
            Geometry::Owned(g) => g,
            Geometry::Shared(g) => g,
            Geometry::Static(g) => g,
        }
    }
}

impl PartialEq for Geometry {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}
impl Eq for Geometry {}

/// An owned, 64-byte-aligned image.
pub type XsaveImage = Xsave<AlignedBuf>;
/// A read-only view of image bytes.
pub type XsaveRef<'a> = Xsave<&'a [u8]>;
/// A read-write view of image bytes.
pub type XsaveMut<'a> = Xsave<&'a mut [u8]>;

/// A bound register: lower and upper bound (MPX BND0-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// Lower bound (bytes 0..7 of the register).
    pub lower: u64,
    /// Upper bound (bytes 8..15, stored one's-complemented by the hardware).
    pub upper: u64,
}

#[inline]
fn rd<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(off..off.saturating_add(N)) {
        out.copy_from_slice(s);
    }
    out
}

#[inline]
fn rd_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(rd::<8>(b, off))
}

fn wr(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(off..off.saturating_add(v.len())) {
        s.copy_from_slice(v);
    }
}

/// Reads XSTATE_BV from raw image bytes (0 when shorter than the header).
#[inline]
pub fn raw_xstate_bv(bytes: &[u8]) -> u64 {
    rd_u64(bytes, XSTATE_BV_OFFSET)
}

/// Reads XCOMP_BV from raw image bytes (0 when shorter than the header).
#[inline]
pub fn raw_xcomp_bv(bytes: &[u8]) -> u64 {
    rd_u64(bytes, XCOMP_BV_OFFSET)
}

/// Reads MXCSR from raw image bytes (0 when shorter than the legacy area).
#[inline]
pub fn raw_mxcsr(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(rd::<4>(bytes, MXCSR_OFFSET))
}

/// The standard-form geometry of an image of `len` bytes on `layout`: x87 and SSE, and every
/// user component the CPU supports whose area lies within the image.
pub fn standard_geometry_for_len(layout: &Layout, len: usize) -> FormLayout {
    let mut m = mask::LEGACY;
    for id in bits(layout.xcr0_supported() & !mask::LEGACY) {
        if id == 63 {
            continue;
        }
        let g = layout.geometry(id);
        if let Some(off) = g.standard_offset {
            let end = u64::from(off) + u64::from(g.size);
            if g.size > 0 && off >= EXTENDED_START && end <= len as u64 {
                m |= 1u64 << id;
            }
        }
    }
    // Every bit of `m` was checked to be placeable, so this cannot fail; fall back to the
    // legacy components if it ever did.
    layout.standard(m).unwrap_or(FormLayout {
        form: Form::Standard,
        mask: mask::LEGACY,
        size: EXTENDED_START,
        placements: vec![
            Placement {
                id: 0,
                offset: 0,
                size: 160,
            },
            Placement {
                id: 1,
                offset: 160,
                size: 256,
            },
        ]
        .into(),
    })
}

/// The geometry of image bytes on `layout`: compacted from XCOMP_BV when its bit 63 is set
/// (SDM §13.4.3), standard otherwise (every supported user component that fits).
pub fn geometry_of(bytes: &[u8], layout: &Layout) -> Result<FormLayout, ImageError> {
    if bytes.len() < MIN_SIZE {
        return Err(ImageError::TooSmall { len: bytes.len() });
    }
    let xcomp_bv = raw_xcomp_bv(bytes);
    if xcomp_bv & mask::COMPACTED != 0 {
        layout
            .compacted(xcomp_bv)
            .map_err(|source| ImageError::Layout { xcomp_bv, source })
    } else {
        Ok(standard_geometry_for_len(layout, bytes.len()))
    }
}

impl XsaveImage {
    /// An image of `geometry` with every component in its init state: XSTATE_BV = 0,
    /// XCOMP_BV = the geometry's, FCW = 0x037F and MXCSR = 0x1F80 in the legacy bytes.
    pub fn new(geometry: &FormLayout) -> Self {
        let len = (geometry.size as usize).max(MIN_SIZE);
        let mut img = Xsave {
            bytes: AlignedBuf::new(len),
            geometry: Geometry::of(geometry),
        };
        let b = img.bytes.as_mut();
        wr(b, 0, &FCW_INIT.to_le_bytes());
        wr(b, MXCSR_OFFSET, &MXCSR_INIT.to_le_bytes());
        wr(b, XCOMP_BV_OFFSET, &geometry.xcomp_bv().to_le_bytes());
        img
    }

    /// Copies image bytes into an aligned buffer; the geometry comes from `layout` (see
    /// [`geometry_of`]). Errors: fewer than 576 bytes, an XCOMP_BV the layout cannot place, or
    /// fewer bytes than the compacted geometry needs.
    ///
    /// ```
    /// use xstate::cpuid::{CpuidDump, Regs};
    /// use xstate::image::{ImageError, XsaveImage};
    /// use xstate::layout::{Form, Layout};
    /// let mut d = CpuidDump::new("doc");
    /// d.insert(0xd, 0, Regs { eax: 0x27, ebx: 0x380, ecx: 0x380, edx: 0 });
    /// d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
    /// d.insert(0xd, 5, Regs { eax: 64, ebx: 832, ecx: 0, edx: 0 });
    /// let l = Layout::from_dump(&d);
    /// let mut bytes = vec![0u8; 896];
    /// bytes[512] = 0x20;                                        // XSTATE_BV: opmask
    /// bytes[832] = 0xff;                                        // k0
    /// let img = XsaveImage::from_bytes(&bytes, &l).unwrap();
    /// assert_eq!((img.form(), img.k(0).unwrap()), (Form::Standard, 0xff));
    /// // Compacted header: opmask moves to 576, right after the header.
    /// bytes[520..528].copy_from_slice(&(0x23u64 | 1 << 63).to_le_bytes());
    /// bytes[576] = 0x0f;
    /// let img = XsaveImage::from_bytes(&bytes, &l).unwrap();
    /// assert_eq!((img.form(), img.k(0).unwrap()), (Form::Compacted, 0x0f));
    /// assert_eq!(
    ///     XsaveImage::from_bytes(&bytes[..100], &l).unwrap_err(),
    ///     ImageError::TooSmall { len: 100 }
    /// );
    /// ```
    pub fn from_bytes(bytes: &[u8], layout: &Layout) -> Result<Self, ImageError> {
        let g = geometry_of(bytes, layout)?;
        Xsave::with_geometry(AlignedBuf::from_bytes(bytes), g)
    }
}

impl<B: AsRef<[u8]>> Xsave<B> {
    /// Binds bytes to the geometry `layout` gives them (see [`geometry_of`]).
    pub fn with_layout(bytes: B, layout: &Layout) -> Result<Self, ImageError> {
        let g = geometry_of(bytes.as_ref(), layout)?;
        Self::with_geometry(bytes, g)
    }

    /// Binds bytes to an explicit geometry. The header is not checked against it (a buffer
    /// about to be filled may hold anything); the length must cover the geometry.
    pub fn with_geometry(bytes: B, geometry: FormLayout) -> Result<Self, ImageError> {
        Self::with_geometry_of(bytes, Geometry::of(&geometry))
    }

    /// [`Xsave::with_geometry`] with a geometry shared with other images (no copy of it is
    /// made): for many images of one geometry. The same checks.
    pub fn with_shared_geometry(bytes: B, geometry: Arc<FormLayout>) -> Result<Self, ImageError> {
        Self::with_geometry_of(bytes, Geometry::Shared(geometry))
    }

    /// Bytes and a geometry whose length rules the caller has established: at least 576
    /// bytes and at least the geometry's size (checked in debug builds).
    #[inline(always)]
    pub(crate) fn from_parts(bytes: B, geometry: Geometry) -> Self {
        debug_assert!({
            let len = bytes.as_ref().len();
            len >= MIN_SIZE && len >= geometry.get().size as usize
        });
        Xsave { bytes, geometry }
    }

    /// Binds bytes to a geometry however it is held (the checks of
    /// [`Xsave::with_geometry`]).
    #[inline]
    pub(crate) fn with_geometry_of(bytes: B, geometry: Geometry) -> Result<Self, ImageError> {
        let len = bytes.as_ref().len();
        let g = geometry.get();
        if len < MIN_SIZE {
            return Err(ImageError::TooSmall { len });
        }
        if len < g.size as usize {
            return Err(ImageError::Truncated {
                len,
                needed: g.size as usize,
                form: g.form,
                mask: g.mask,
            });
        }
        Ok(Xsave { bytes, geometry })
    }

    /// The image bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The image size in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Always false: an image holds at least 576 bytes.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The geometry the image is read with.
    #[inline]
    pub fn geometry(&self) -> &FormLayout {
        self.geometry.get()
    }

    /// The form of the geometry.
    pub fn form(&self) -> Form {
        self.geometry().form
    }

    /// A read-only view of this image.
    pub fn view(&self) -> XsaveRef<'_> {
        Xsave {
            bytes: self.as_bytes(),
            geometry: self.geometry.clone(),
        }
    }

    /// An owned aligned copy.
    pub fn to_owned_image(&self) -> XsaveImage {
        Xsave {
            bytes: AlignedBuf::from_bytes(self.as_bytes()),
            geometry: self.geometry.clone(),
        }
    }

    // ---- header (SDM Vol. 1 §13.4.2) ----

    /// XSTATE_BV (header bytes 0..7): which components the image holds.
    pub fn xstate_bv(&self) -> u64 {
        raw_xstate_bv(self.as_bytes())
    }

    /// XCOMP_BV (header bytes 8..15): 0 in the standard form; the compacted components with
    /// bit 63 in the compacted form.
    pub fn xcomp_bv(&self) -> u64 {
        raw_xcomp_bv(self.as_bytes())
    }

    /// The form the header declares (XCOMP_BV bit 63).
    pub fn header_form(&self) -> Form {
        if self.xcomp_bv() & mask::COMPACTED != 0 {
            Form::Compacted
        } else {
            Form::Standard
        }
    }

    /// Header bytes 16..63 (reserved, must be zero for every restore).
    pub fn header_reserved(&self) -> [u8; 48] {
        rd::<48>(self.as_bytes(), HEADER_RESERVED_OFFSET)
    }

    /// Whether XSTATE_BV marks component `id` present.
    pub fn is_present(&self, id: u8) -> bool {
        id < 63 && self.xstate_bv() & (1u64 << id) != 0
    }

    // ---- geometry helpers ----

    fn check_id(id: u8) -> Result<(), ImageError> {
        if id >= 63 {
            Err(ImageError::BadComponent { id })
        } else {
            Ok(())
        }
    }

    fn not_in_image(&self, id: u8) -> ImageError {
        ImageError::NotInImage {
            id,
            name: Component::name_of(id),
            form: self.geometry().form,
            mask: self.geometry().mask,
        }
    }

    /// Where component `id` lives in this image. Components 0 and 1 are always in the legacy
    /// area; others must be in the geometry.
    pub fn placement(&self, id: u8) -> Result<Placement, ImageError> {
        Self::check_id(id)?;
        match id {
            0 => Ok(Placement {
                id: 0,
                offset: 0,
                size: 160,
            }),
            1 => Ok(Placement {
                id: 1,
                offset: 160,
                size: 256,
            }),
            _ => self
                .geometry()
                .placement(id)
                .filter(|p| p.end() as usize <= self.len())
                .ok_or_else(|| self.not_in_image(id)),
        }
    }

    /// The base register offsets of component `id` count from (0 for the legacy components).
    fn base(&self, id: u8) -> Result<usize, ImageError> {
        if id < 2 {
            Self::check_id(id)?;
            Ok(0)
        } else {
            Ok(self.placement(id)?.offset as usize)
        }
    }

    /// The raw bytes of component `id`, whatever XSTATE_BV says (for 0 and 1: legacy bytes
    /// 0..160 and 160..416; MXCSR and MXCSR_MASK at 24..31 are read with their accessors).
    pub fn component_bytes(&self, id: u8) -> Result<&[u8], ImageError> {
        let p = self.placement(id)?;
        self.as_bytes()
            .get(p.range())
            .ok_or_else(|| self.not_in_image(id))
    }

    fn spec(id: u8, name: &'static str) -> Option<&'static RegSpec> {
        registers(id).iter().find(|r| r.name == name)
    }

    /// The byte range of register `name[index]` of component `id`.
    pub fn register_range(
        &self,
        id: u8,
        name: &'static str,
        index: usize,
    ) -> Result<core::ops::Range<usize>, ImageError> {
        let base = self.base(id)?;
        let bad = |count| ImageError::BadIndex {
            id,
            name: Component::name_of(id),
            register: name,
            index,
            count,
        };
        let spec = Self::spec(id, name).ok_or_else(|| bad(0))?;
        if index >= spec.count as usize {
            return Err(bad(spec.count));
        }
        let width = if spec.width == 0 {
            self.placement(id)?.size as usize
        } else {
            spec.width as usize
        };
        let start = base + spec.offset as usize + index * spec.stride as usize;
        let end = start + width;
        if end > self.len() {
            return Err(self.not_in_image(id));
        }
        Ok(start..end)
    }

    /// The value of register `name[index]` of component `id` after a restore: the image bytes
    /// when XSTATE_BV marks the component present, its init value otherwise. Little-endian.
    pub fn register(
        &self,
        id: u8,
        name: &'static str,
        index: usize,
    ) -> Result<Vec<u8>, ImageError> {
        let r = self.register_range(id, name, index)?;
        if id == 1 && name == "mxcsr" {
            return Ok(self.mxcsr().to_le_bytes().to_vec());
        }
        if self.is_present(id) {
            Ok(self.as_bytes().get(r).unwrap_or(&[]).to_vec())
        } else {
            let mut v = vec![0u8; r.len()];
            if id == 0 && name == "fcw" {
                v.copy_from_slice(&FCW_INIT.to_le_bytes());
            }
            Ok(v)
        }
    }

    fn reg_n<const N: usize>(
        &self,
        id: u8,
        name: &'static str,
        i: usize,
    ) -> Result<[u8; N], ImageError> {
        let v = self.register(id, name, i)?;
        let mut out = [0u8; N];
        let n = N.min(v.len());
        out[..n].copy_from_slice(&v[..n]);
        Ok(out)
    }

    fn reg_u128(&self, id: u8, name: &'static str, i: usize) -> Result<u128, ImageError> {
        Ok(u128::from_le_bytes(self.reg_n::<16>(id, name, i)?))
    }

    fn reg_u64(&self, id: u8, name: &'static str, i: usize) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.reg_n::<8>(id, name, i)?))
    }

    // ---- legacy area (SDM Vol. 1 Table 10-2) ----

    /// x87 control word (init 0x037F).
    pub fn fcw(&self) -> u16 {
        self.reg_u64(0, "fcw", 0).unwrap_or(0) as u16
    }
    /// x87 status word.
    pub fn fsw(&self) -> u16 {
        self.reg_u64(0, "fsw", 0).unwrap_or(0) as u16
    }
    /// Abridged x87 tag word (one bit per register, 1 = valid).
    pub fn ftw(&self) -> u8 {
        self.reg_u64(0, "ftw", 0).unwrap_or(0) as u8
    }
    /// Last x87 opcode.
    pub fn fop(&self) -> u16 {
        self.reg_u64(0, "fop", 0).unwrap_or(0) as u16
    }
    /// Last x87 instruction pointer (64-bit form).
    pub fn fip(&self) -> u64 {
        self.reg_u64(0, "fip", 0).unwrap_or(0)
    }
    /// Last x87 data pointer (64-bit form).
    pub fn fdp(&self) -> u64 {
        self.reg_u64(0, "fdp", 0).unwrap_or(0)
    }
    /// x87 register ST`i` (physical register order of FXSAVE: ST0 at 32), 80 bits.
    pub fn st(&self, i: usize) -> Result<u128, ImageError> {
        self.reg_u128(0, "st", i)
    }

    /// MXCSR as a restore would load it: the image bytes in the standard form (loaded whenever
    /// RFBM\[1\] or RFBM\[2\]); in the compacted form the bytes when XSTATE_BV\[1\] is set, else
    /// 0x1F80 (SDM Vol. 1 §13.8.1; DESIGN.md §5).
    pub fn mxcsr(&self) -> u32 {
        let raw = raw_mxcsr(self.as_bytes());
        match self.geometry().form {
            Form::Standard => raw,
            Form::Compacted if self.is_present(1) => raw,
            Form::Compacted => MXCSR_INIT,
        }
    }

    /// MXCSR_MASK as written by the saving CPU (informational: restores ignore it).
    pub fn mxcsr_mask(&self) -> u32 {
        u32::from_le_bytes(rd::<4>(self.as_bytes(), MXCSR_MASK_OFFSET))
    }

    /// XMM`i` (0..16).
    pub fn xmm(&self, i: usize) -> Result<u128, ImageError> {
        self.reg_u128(1, "xmm", i)
    }

    // ---- extended components (SDM Vol. 1 §13.5) ----

    /// Upper 128 bits of YMM`i` (AVX, component 2).
    pub fn ymm_hi(&self, i: usize) -> Result<u128, ImageError> {
        self.reg_u128(2, "ymm_hi", i)
    }
    /// MPX bound register BND`i` (component 3).
    pub fn bnd(&self, i: usize) -> Result<Bound, ImageError> {
        let v = self.reg_u128(3, "bnd", i)?;
        Ok(Bound {
            lower: v as u64,
            upper: (v >> 64) as u64,
        })
    }
    /// BNDCFGU (component 4).
    pub fn bndcfgu(&self) -> Result<u64, ImageError> {
        self.reg_u64(4, "bndcfgu", 0)
    }
    /// BNDSTATUS (component 4).
    pub fn bndstatus(&self) -> Result<u64, ImageError> {
        self.reg_u64(4, "bndstatus", 0)
    }
    /// Opmask register k`i` (component 5).
    pub fn k(&self, i: usize) -> Result<u64, ImageError> {
        self.reg_u64(5, "k", i)
    }
    /// Upper 256 bits of ZMM`i`, i < 16 (component 6), little-endian bytes.
    pub fn zmm_hi256(&self, i: usize) -> Result<[u8; 32], ImageError> {
        self.reg_n::<32>(6, "zmm_hi", i)
    }
    /// ZMM`16 + i` (component 7), little-endian bytes.
    pub fn hi16_zmm(&self, i: usize) -> Result<[u8; 64], ImageError> {
        self.reg_n::<64>(7, "zmm", i)
    }
    /// PKRU (component 9).
    pub fn pkru(&self) -> Result<u32, ImageError> {
        Ok(self.reg_u64(9, "pkru", 0)? as u32)
    }
    /// IA32_PASID (component 10).
    pub fn pasid(&self) -> Result<u64, ImageError> {
        self.reg_u64(10, "pasid", 0)
    }
    /// IA32_U_CET (component 11).
    pub fn u_cet(&self) -> Result<u64, ImageError> {
        self.reg_u64(11, "u_cet", 0)
    }
    /// IA32_PL3_SSP (component 11).
    pub fn pl3_ssp(&self) -> Result<u64, ImageError> {
        self.reg_u64(11, "pl3_ssp", 0)
    }
    /// IA32_PL`level`_SSP for level 0..=2 (component 12).
    pub fn pl_ssp(&self, level: usize) -> Result<u64, ImageError> {
        match level {
            0 => self.reg_u64(12, "pl0_ssp", 0),
            1 => self.reg_u64(12, "pl1_ssp", 0),
            2 => self.reg_u64(12, "pl2_ssp", 0),
            _ => Err(ImageError::BadIndex {
                id: 12,
                name: Component::name_of(12),
                register: "pl_ssp",
                index: level,
                count: 3,
            }),
        }
    }
    /// The 64-byte TILECFG (component 17).
    pub fn tilecfg(&self) -> Result<[u8; 64], ImageError> {
        self.reg_n::<64>(17, "tilecfg", 0)
    }
    /// Row `row` (0..16) of tile TMM`tile` (0..8) (component 18): 64 bytes.
    pub fn tile_row(&self, tile: usize, row: usize) -> Result<[u8; 64], ImageError> {
        let t = self.register(18, "tmm", tile)?;
        let mut out = [0u8; 64];
        match t.get(row.saturating_mul(64)..row.saturating_mul(64).saturating_add(64)) {
            Some(s) if row < 16 => out.copy_from_slice(s),
            _ => {
                return Err(ImageError::BadIndex {
                    id: 18,
                    name: Component::name_of(18),
                    register: "tmm_row",
                    index: row,
                    count: 16,
                })
            }
        }
        Ok(out)
    }
    /// APX extended general-purpose register R`n`, n in 16..=31 (component 19).
    pub fn egpr(&self, n: usize) -> Result<u64, ImageError> {
        self.reg_u64(19, "egpr", n.wrapping_sub(16))
    }

    // ---- init state (DESIGN.md §5) ----

    /// True when component `id` holds its init value after a restore: XSTATE_BV bit clear, or
    /// every register equal to its init value (x87: FCW 0x037F, the rest 0; SSE: XMM 0 and
    /// MXCSR 0x1F80; others all zero). Component bytes the geometry does not place are an
    /// error.
    pub fn is_init(&self, id: u8) -> Result<bool, ImageError> {
        Self::check_id(id)?;
        if id == 1 && self.mxcsr() != MXCSR_INIT {
            return Ok(false);
        }
        if !self.is_present(id) {
            return Ok(true);
        }
        for spec in registers(id) {
            if id == 1 && spec.name != "xmm" {
                continue;
            }
            for i in 0..spec.count as usize {
                let mut v = self.register(id, spec.name, i)?;
                let mut init = init_register(id, spec.name, v.len());
                significant(id, spec.name, &mut v);
                significant(id, spec.name, &mut init);
                if v != init {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// The init value of a register (DESIGN.md §5): FCW 0x037F, MXCSR 0x1F80, everything else 0.
pub fn init_register(id: u8, name: &str, width: usize) -> Vec<u8> {
    let mut v = vec![0u8; width];
    if id == 0 && name == "fcw" && width >= 2 {
        v[..2].copy_from_slice(&FCW_INIT.to_le_bytes());
    }
    if id == 1 && name == "mxcsr" && width >= 4 {
        v[..4].copy_from_slice(&MXCSR_INIT.to_le_bytes());
    }
    v
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Xsave<B> {
    /// The image bytes, writable. Writing the header can change what the bytes mean; the
    /// geometry stays the one the image was built with.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        self.bytes.as_mut()
    }

    /// A read-write view of this image.
    pub fn view_mut(&mut self) -> XsaveMut<'_> {
        Xsave {
            geometry: self.geometry.clone(),
            bytes: self.bytes.as_mut(),
        }
    }

    /// Writes XSTATE_BV.
    pub fn set_xstate_bv(&mut self, v: u64) {
        wr(self.as_mut_bytes(), XSTATE_BV_OFFSET, &v.to_le_bytes());
    }

    /// Writes XCOMP_BV.
    pub fn set_xcomp_bv(&mut self, v: u64) {
        wr(self.as_mut_bytes(), XCOMP_BV_OFFSET, &v.to_le_bytes());
    }

    /// Writes header bytes 16..63.
    pub fn set_header_reserved(&mut self, v: &[u8; 48]) {
        wr(self.as_mut_bytes(), HEADER_RESERVED_OFFSET, v);
    }

    /// Writes the init value of component `id` into its bytes, leaving XSTATE_BV alone.
    fn write_init(&mut self, id: u8) -> Result<(), ImageError> {
        let p = self.placement(id)?;
        let b = self.as_mut_bytes();
        match id {
            0 => {
                // x87 registers only: MXCSR and MXCSR_MASK (24..31) belong to SSE.
                wr(b, 0, &FCW_INIT.to_le_bytes());
                wr(b, 2, &[0u8; 22]);
                wr(b, 32, &[0u8; 128]);
            }
            1 => {
                wr(b, MXCSR_OFFSET, &MXCSR_INIT.to_le_bytes());
                wr(b, 160, &[0u8; 256]);
            }
            _ => {
                if let Some(s) = b.get_mut(p.range()) {
                    s.fill(0);
                }
            }
        }
        Ok(())
    }

    /// Makes component `id` present: when its XSTATE_BV bit is clear, writes its init value
    /// and sets the bit (the meaning of the image does not change).
    pub fn make_present(&mut self, id: u8) -> Result<(), ImageError> {
        if self.is_present(id) {
            return Ok(());
        }
        if id == 1 {
            // Keep the effective MXCSR (the standard form's may differ from 0x1F80).
            let m = self.mxcsr();
            self.write_init(1)?;
            wr(self.as_mut_bytes(), MXCSR_OFFSET, &m.to_le_bytes());
        } else {
            self.write_init(id)?;
        }
        let bv = self.xstate_bv() | (1u64 << id);
        self.set_xstate_bv(bv);
        Ok(())
    }

    /// Puts component `id` in its init state: writes its init value and clears its XSTATE_BV
    /// bit.
    pub fn clear_component(&mut self, id: u8) -> Result<(), ImageError> {
        self.write_init(id)?;
        let bv = self.xstate_bv() & !(1u64 << id);
        self.set_xstate_bv(bv);
        Ok(())
    }

    /// Replaces the bytes of component `id` (length = its placement's size) and sets its
    /// XSTATE_BV bit. For components 0 and 1 see [`component_bytes`](Self::component_bytes).
    pub fn set_component_bytes(&mut self, id: u8, data: &[u8]) -> Result<(), ImageError> {
        let p = self.placement(id)?;
        if data.len() != p.size as usize {
            return Err(ImageError::Length {
                id,
                name: Component::name_of(id),
                expected: p.size as usize,
                got: data.len(),
            });
        }
        self.make_present(id)?;
        wr(self.as_mut_bytes(), p.offset as usize, data);
        Ok(())
    }

    /// Writes register `name[index]` of component `id` (little-endian bytes, at most its
    /// width; shorter values are zero-extended) and marks the component present.
    pub fn set_register(
        &mut self,
        id: u8,
        name: &'static str,
        index: usize,
        value: &[u8],
    ) -> Result<(), ImageError> {
        let r = self.register_range(id, name, index)?;
        if value.len() > r.len() {
            return Err(ImageError::Length {
                id,
                name: Component::name_of(id),
                expected: r.len(),
                got: value.len(),
            });
        }
        self.make_present(id)?;
        let mut v = vec![0u8; r.len()];
        v[..value.len()].copy_from_slice(value);
        wr(self.as_mut_bytes(), r.start, &v);
        Ok(())
    }

    fn set_u(
        &mut self,
        id: u8,
        name: &'static str,
        i: usize,
        v: u128,
        w: usize,
    ) -> Result<(), ImageError> {
        let b = v.to_le_bytes();
        self.set_register(id, name, i, &b[..w.min(16)])
    }

    /// Writes FCW (marks x87 present).
    pub fn set_fcw(&mut self, v: u16) {
        let _ = self.set_u(0, "fcw", 0, v.into(), 2);
    }
    /// Writes FSW (marks x87 present).
    pub fn set_fsw(&mut self, v: u16) {
        let _ = self.set_u(0, "fsw", 0, v.into(), 2);
    }
    /// Writes the abridged FTW (marks x87 present).
    pub fn set_ftw(&mut self, v: u8) {
        let _ = self.set_u(0, "ftw", 0, v.into(), 1);
    }
    /// Writes FOP (marks x87 present).
    pub fn set_fop(&mut self, v: u16) {
        let _ = self.set_u(0, "fop", 0, v.into(), 2);
    }
    /// Writes FIP (marks x87 present).
    pub fn set_fip(&mut self, v: u64) {
        let _ = self.set_u(0, "fip", 0, v.into(), 8);
    }
    /// Writes FDP (marks x87 present).
    pub fn set_fdp(&mut self, v: u64) {
        let _ = self.set_u(0, "fdp", 0, v.into(), 8);
    }
    /// Writes ST`i` (80 bits; higher bits of `v` are an error).
    pub fn set_st(&mut self, i: usize, v: u128) -> Result<(), ImageError> {
        if v >> 80 != 0 {
            return Err(ImageError::Length {
                id: 0,
                name: Component::name_of(0),
                expected: 10,
                got: 16,
            });
        }
        self.set_u(0, "st", i, v, 10)
    }
    /// Writes MXCSR (marks SSE present, as XSAVEC does for a non-default MXCSR).
    pub fn set_mxcsr(&mut self, v: u32) {
        let _ = self.make_present(1);
        wr(self.as_mut_bytes(), MXCSR_OFFSET, &v.to_le_bytes());
    }
    /// Writes MXCSR_MASK (informational; XSTATE_BV unchanged).
    pub fn set_mxcsr_mask(&mut self, v: u32) {
        wr(self.as_mut_bytes(), MXCSR_MASK_OFFSET, &v.to_le_bytes());
    }
    /// Writes XMM`i`.
    pub fn set_xmm(&mut self, i: usize, v: u128) -> Result<(), ImageError> {
        self.set_u(1, "xmm", i, v, 16)
    }
    /// Writes the upper half of YMM`i`.
    pub fn set_ymm_hi(&mut self, i: usize, v: u128) -> Result<(), ImageError> {
        self.set_u(2, "ymm_hi", i, v, 16)
    }
    /// Writes BND`i`.
    pub fn set_bnd(&mut self, i: usize, v: Bound) -> Result<(), ImageError> {
        self.set_u(
            3,
            "bnd",
            i,
            u128::from(v.lower) | (u128::from(v.upper) << 64),
            16,
        )
    }
    /// Writes BNDCFGU.
    pub fn set_bndcfgu(&mut self, v: u64) -> Result<(), ImageError> {
        self.set_u(4, "bndcfgu", 0, v.into(), 8)
    }
    /// Writes BNDSTATUS.
    pub fn set_bndstatus(&mut self, v: u64) -> Result<(), ImageError> {
        self.set_u(4, "bndstatus", 0, v.into(), 8)
    }
    /// Writes k`i`.
    pub fn set_k(&mut self, i: usize, v: u64) -> Result<(), ImageError> {
        self.set_u(5, "k", i, v.into(), 8)
    }
    /// Writes the upper 256 bits of ZMM`i`.
    pub fn set_zmm_hi256(&mut self, i: usize, v: &[u8; 32]) -> Result<(), ImageError> {
        self.set_register(6, "zmm_hi", i, v)
    }
    /// Writes ZMM`16 + i`.
    pub fn set_hi16_zmm(&mut self, i: usize, v: &[u8; 64]) -> Result<(), ImageError> {
        self.set_register(7, "zmm", i, v)
    }
    /// Writes PKRU.
    pub fn set_pkru(&mut self, v: u32) -> Result<(), ImageError> {
        self.set_u(9, "pkru", 0, v.into(), 4)
    }
    /// Writes IA32_PASID.
    pub fn set_pasid(&mut self, v: u64) -> Result<(), ImageError> {
        self.set_u(10, "pasid", 0, v.into(), 8)
    }
    /// Writes IA32_U_CET.
    pub fn set_u_cet(&mut self, v: u64) -> Result<(), ImageError> {
        self.set_u(11, "u_cet", 0, v.into(), 8)
    }
    /// Writes IA32_PL3_SSP.
    pub fn set_pl3_ssp(&mut self, v: u64) -> Result<(), ImageError> {
        self.set_u(11, "pl3_ssp", 0, v.into(), 8)
    }
    /// Writes IA32_PL`level`_SSP, level 0..=2.
    pub fn set_pl_ssp(&mut self, level: usize, v: u64) -> Result<(), ImageError> {
        let name = match level {
            0 => "pl0_ssp",
            1 => "pl1_ssp",
            2 => "pl2_ssp",
            _ => {
                return Err(ImageError::BadIndex {
                    id: 12,
                    name: Component::name_of(12),
                    register: "pl_ssp",
                    index: level,
                    count: 3,
                })
            }
        };
        self.set_u(12, name, 0, v.into(), 8)
    }
    /// Writes TILECFG.
    pub fn set_tilecfg(&mut self, v: &[u8; 64]) -> Result<(), ImageError> {
        self.set_register(17, "tilecfg", 0, v)
    }
    /// Writes row `row` of TMM`tile`.
    pub fn set_tile_row(
        &mut self,
        tile: usize,
        row: usize,
        v: &[u8; 64],
    ) -> Result<(), ImageError> {
        let r = self.register_range(18, "tmm", tile)?;
        if row >= 16 {
            return Err(ImageError::BadIndex {
                id: 18,
                name: Component::name_of(18),
                register: "tmm_row",
                index: row,
                count: 16,
            });
        }
        self.make_present(18)?;
        wr(self.as_mut_bytes(), r.start + row * 64, v);
        Ok(())
    }
    /// Writes APX register R`n`, n in 16..=31.
    pub fn set_egpr(&mut self, n: usize, v: u64) -> Result<(), ImageError> {
        self.set_u(19, "egpr", n.wrapping_sub(16), v.into(), 8)
    }
}

#[cfg(test)]
mod tests;
