//! Lossless conversion of XSAVE images: standard ↔ compacted for any target mask, between two
//! CPUs' layouts (an Intel image rebuilt for AMD), and FXSAVE (512 bytes) ↔ XSAVE.
//!
//! Conversion moves *meaning*, the register values a restore would load (SDM Vol. 1 §13.8):
//! - every component present in XSTATE_BV is copied to its place in the target; a target that
//!   cannot hold a present component with a non-init value is an error naming it — never a
//!   silent drop (a present component holding exactly its init value may be left out: its
//!   restore result is the same);
//! - components absent from XSTATE_BV are written with their init value in the standard form
//!   and omitted in the compacted form (DESIGN.md §5);
//! - MXCSR keeps its effective value across forms: the standard form loads it from the image
//!   even with XSTATE_BV\[1\] clear, the compacted form only with the SSE component, so a
//!   non-default MXCSR makes the compacted image carry SSE, exactly as XSAVEC does
//!   (DESIGN.md §5);
//! - MXCSR_MASK and bytes 416..511 of the legacy area are copied verbatim; the target header is
//!   XSTATE_BV, the target's XCOMP_BV and zero reserved bytes.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::convert::convert;
//! use xstate::image::XsaveImage;
//! use xstate::layout::Layout;
//! let mut d = CpuidDump::new("doc");
//! d.insert(0xd, 0, Regs { eax: 0xe7, ebx: 0x980, ecx: 0x980, edx: 0 });
//! d.insert(0xd, 1, Regs { eax: 0xf, ebx: 0, ecx: 0, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! d.insert(0xd, 5, Regs { eax: 64, ebx: 832, ecx: 0, edx: 0 });
//! d.insert(0xd, 6, Regs { eax: 512, ebx: 896, ecx: 0, edx: 0 });
//! d.insert(0xd, 7, Regs { eax: 1024, ebx: 1408, ecx: 0, edx: 0 });
//! let l = Layout::from_dump(&d);
//! let mut std_img = XsaveImage::new(&l.standard(0xe7).unwrap());
//! std_img.set_k(3, 0xff).unwrap();
//! // Compacted with only the components in use: opmask lands right after the header.
//! let c = convert(&std_img, &l.compacted(0x23).unwrap()).unwrap();
//! assert_eq!(c.len(), 640);
//! assert_eq!(c.k(3).unwrap(), 0xff);
//! // A target without opmask cannot hold it: an error naming the component.
//! let e = convert(&std_img, &l.compacted(0x7).unwrap()).unwrap_err();
//! assert!(e.to_string().contains("opmask"));
//! // And back to the standard form: the same bytes.
//! let s = convert(&c, &l.standard(0xe7).unwrap()).unwrap();
//! assert_eq!(s.as_bytes(), std_img.as_bytes());
//! ```

use alloc::string::String;

use crate::components::{bits, mask, Component};
use crate::image::{
    AlignedBuf, ImageError, Xsave, XsaveImage, FXSAVE_SIZE, MXCSR_INIT, MXCSR_OFFSET,
};
use crate::layout::{Form, FormLayout, Layout, LayoutError, EXTENDED_START, MAX_AREA_SIZE};

/// Why an image cannot be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The target layout has no place for a component the source holds with a non-init value.
    #[error("component {id} ({name}) is present with a non-init value but the {form} target (components {mask:#x}) has no place for it")]
    NoRoom {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// Target form.
        form: Form,
        /// Target components.
        mask: u64,
    },
    /// The target's area for a component is smaller than the source's meaningful content.
    #[error("component {id} ({name}): {src_size} bytes in the source, {dst_size} in the target, and source bytes {dst_size}..{src_size} (image offset {offset}) are not zero")]
    Truncation {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// Source size.
        src_size: u32,
        /// Target size.
        dst_size: u32,
        /// Image offset of the first source byte that does not fit.
        offset: u32,
    },
    /// The source header cannot be given a meaning.
    #[error("source header: {0}")]
    BadHeader(String),
    /// The source image cannot be read.
    #[error("source image: {0}")]
    Image(#[from] ImageError),
    /// The target layout cannot be computed.
    #[error("target layout: {0}")]
    Layout(#[from] LayoutError),
    /// The output buffer of [`convert_into`] is smaller than the target image.
    #[error("output buffer: {have} bytes, the target image needs {need}")]
    OutTooSmall {
        /// Bytes given.
        have: usize,
        /// Bytes the target image needs.
        need: usize,
    },
    /// An FXSAVE image is exactly 512 bytes.
    #[error("an FXSAVE image is 512 bytes, {0} given")]
    FxsaveSize(usize),
    /// A [`ConvertPlan`] was given an image whose geometry is not the one it was made for.
    #[error(
        "the conversion plan is for source images of the {planned}; this image has the {given}"
    )]
    GeometryMismatch {
        /// The planned source geometry (form, components, size, first differing placement).
        planned: String,
        /// The image's geometry, described the same way.
        given: String,
    },
    /// The target layout is larger than any real CPU's ([`MAX_AREA_SIZE`]): CPUID data that
    /// cannot be right; nothing is allocated.
    #[error(
        "target layout of {0} bytes exceeds {MAX_AREA_SIZE} bytes: its CPUID data cannot be right"
    )]
    TargetTooLarge(u32),
}

/// The bytes of component `id` (≥ 2) that hold architectural state when its CPUID size is
/// `size`: PKRU uses 4 (Zen 2 reports 64), known components their catalog size, unknown ones
/// all.
pub fn meaningful_len(id: u8, size: u32) -> u32 {
    match (id, Component::get(id)) {
        (9, _) => size.min(4),
        (_, Some(c)) => size.min(c.arch_size),
        (_, None) => size,
    }
}

#[inline]
fn set(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(off..off.saturating_add(v.len())) {
        s.copy_from_slice(v);
    }
}

fn no_room(id: u8, t: &FormLayout) -> ConvertError {
    ConvertError::NoRoom {
        id,
        name: Component::name_of(id),
        form: t.form,
        mask: t.mask,
    }
}

/// The components whose XSTATE_BV bit gives them meaning in `src`, checked for sense: bit 63
/// is refused, and a compacted source must hold them in XCOMP_BV.
fn present<B: AsRef<[u8]>>(src: &Xsave<B>) -> Result<u64, ConvertError> {
    let bv = src.xstate_bv();
    if bv & mask::COMPACTED != 0 {
        return Err(ConvertError::BadHeader(alloc::format!(
            "XSTATE_BV (offset 512) = {bv:#x} has bit 63 set, which no component owns"
        )));
    }
    if src.form() == Form::Compacted {
        let out = bv & !src.geometry().mask;
        if out != 0 {
            return Err(ConvertError::BadHeader(alloc::format!(
                "XSTATE_BV (offset 512) = {bv:#x} marks components {} present that the compacted image does not hold (XCOMP_BV {:#x})",
                crate::components::mask_names(out),
                src.xcomp_bv()
            )));
        }
    }
    Ok(bv)
}

/// Converts `src` (read with its own geometry) into a new image of geometry `target`: any
/// form, any mask, any CPU's layout. See the module documentation for the rules. Converts
/// with the [`ConvertPlan`] of the two geometries, made on the first conversion of the pair
/// and kept in a small process-wide cache (module `cache`; with the `std` feature only:
/// without it the two layouts are walked per call, with the same result); when XSTATE_BV is
/// the planned set the planned copies are appended to the new buffer, which is not zeroed
/// first. The new image shares the plan's target geometry (no copy), and with the `std`
/// feature its buffer is the storage of a dropped image of the same size when the thread
/// has one ([`AlignedBuf`]'s pool): converting and dropping images in a loop allocates
/// nothing in steady state (the plan once per pair; without `std`, one buffer and one
/// geometry per call).
///
/// Trust: `target` comes from [`Layout::standard`] / [`Layout::compacted`], which never place
/// two components on the same bytes or inside the legacy area and header; a target larger
/// than [`MAX_AREA_SIZE`] is refused. Whether the CPU's data is consistent as a whole is
/// decided where the layout is made: build it with [`Layout::trusted`] from a dump.
pub fn convert<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    target: &FormLayout,
) -> Result<XsaveImage, ConvertError> {
    #[cfg(feature = "std")]
    if let Some(p) = cache::fixed(src.geometry(), target) {
        return p.convert_unchecked_geometry(src, || Found::Static(p).target_geometry());
    }
    convert_other(src, target)
}

/// [`convert`] without a set-once plan of the cache: made now, a plan replaced round-robin,
/// or the component walk.
#[cfg_attr(feature = "std", cold, inline(never))]
fn convert_other<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    target: &FormLayout,
) -> Result<XsaveImage, ConvertError> {
    if target.size > MAX_AREA_SIZE {
        return Err(ConvertError::TargetTooLarge(target.size));
    }
    with_other_plan(src.geometry(), target, |plan| match plan {
        Some(p) => p
            .plan()
            .convert_unchecked_geometry(src, || p.target_geometry()),
        None => walk_convert(src, target),
    })
}

/// [`convert`] by the component walk, without a plan.
pub(crate) fn walk_convert<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    target: &FormLayout,
) -> Result<XsaveImage, ConvertError> {
    let plan = walk_check(src, target)?;
    let mut buf = AlignedBuf::new(plan.len);
    walk_write(src, target, &plan, &mut buf, true);
    Ok(Xsave::with_geometry(buf, target.clone())?)
}

/// The size of the image [`convert_into`] writes for `target`: its size, at least 576.
pub fn target_len(target: &FormLayout) -> usize {
    (target.size as usize).max(crate::image::MIN_SIZE)
}

/// [`convert`] into a buffer the caller owns (reused across calls: no allocation once the
/// pair's plan is made): writes bytes `0..target_len(target)` of `out` and returns that
/// length; bytes after it are not touched. Uses the cached [`ConvertPlan`] of the two
/// geometries (see [`convert`]; a caller converting many images of one pair can hold the plan
/// itself and skip the cache lookup), or, when the cache is busy with another thread, walks
/// the two layouts in step, component by component: the same bytes and errors either way.
/// Every byte of the target is written once (copied, or zeroed where the target has padding,
/// an absent component or a smaller source area).
///
/// Nothing is written when an error is returned: `out` too small (the error names the
/// needed size), a present component the target has no room for, a truncation that would
/// lose non-zero bytes, a header without a meaning.
///
/// ```
/// # use xstate::cpuid::{CpuidDump, Regs};
/// # use xstate::image::XsaveImage;
/// # use xstate::layout::Layout;
/// use xstate::convert::{convert, convert_into};
/// # let mut d = CpuidDump::new("doc");
/// # d.insert(0xd, 0, Regs { eax: 0xe7, ebx: 0x980, ecx: 0x980, edx: 0 });
/// # d.insert(0xd, 1, Regs { eax: 0xf, ebx: 0, ecx: 0, edx: 0 });
/// # d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
/// # d.insert(0xd, 5, Regs { eax: 64, ebx: 832, ecx: 0, edx: 0 });
/// # d.insert(0xd, 6, Regs { eax: 512, ebx: 896, ecx: 0, edx: 0 });
/// # d.insert(0xd, 7, Regs { eax: 1024, ebx: 1408, ecx: 0, edx: 0 });
/// # let l = Layout::from_dump(&d);
/// let mut img = XsaveImage::new(&l.standard(0xe7).unwrap());
/// img.set_k(3, 0xff).unwrap();
/// let target = l.compacted(0xe7).unwrap();
/// let mut out = vec![0xaa; 4096];                  // reused buffer, any content
/// let n = convert_into(&img, &target, &mut out).unwrap();
/// assert_eq!(&out[..n], convert(&img, &target).unwrap().as_bytes());
/// assert_eq!(out[n], 0xaa);                         // past the image: untouched
/// ```
pub fn convert_into<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    target: &FormLayout,
    out: &mut [u8],
) -> Result<usize, ConvertError> {
    // A set-once plan of the cache is made only for a target of at most MAX_AREA_SIZE bytes,
    // so a hit needs no size check.
    #[cfg(feature = "std")]
    if let Some(p) = cache::fixed(src.geometry(), target) {
        return p.convert_into_unchecked_geometry(src, out);
    }
    convert_into_other(src, target, out)
}

/// [`convert_into`] without a set-once plan of the cache: made now, a plan replaced
/// round-robin, or the component walk.
#[cfg_attr(feature = "std", cold, inline(never))]
fn convert_into_other<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    target: &FormLayout,
    out: &mut [u8],
) -> Result<usize, ConvertError> {
    if target.size > MAX_AREA_SIZE {
        return Err(ConvertError::TargetTooLarge(target.size));
    }
    with_other_plan(src.geometry(), target, |plan| match plan {
        Some(p) => p.plan().convert_into_unchecked_geometry(src, out),
        None => walk_into(src, target, out),
    })
}

/// [`convert_into`] by the component walk, without a plan: both placement lists walked in
/// step per call. What a plan does when its target's placements are not in offset order, and
/// what the entry points do when the plan cache is busy (another thread converting).
pub(crate) fn walk_into<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    target: &FormLayout,
    out: &mut [u8],
) -> Result<usize, ConvertError> {
    let plan = walk_check(src, target)?;
    if out.len() < plan.len {
        return Err(ConvertError::OutTooSmall {
            have: out.len(),
            need: plan.len,
        });
    }
    walk_write(src, target, &plan, &mut out[..plan.len], false);
    Ok(plan.len)
}

/// What the checks of a conversion decided: the components carried and the MXCSR written.
struct Plan {
    kept: u64,
    mxcsr: u32,
    len: usize,
    /// The target's placements are in offset order, without overlap.
    sorted: bool,
}

/// One walk of the target: the components it places within its mask, x87 and SSE always (a
/// hand-built geometry may omit some of its mask), and whether its placements are in offset
/// order (every layout `Layout` builds; the writers have a slower path for the others).
pub(crate) fn placed_and_sorted(target: &FormLayout) -> (u64, bool) {
    let mut placed = mask::LEGACY;
    let mut sorted = true;
    let mut prev_end = 0u32;
    for d in &target.placements {
        placed |= bit(d.id & 63);
        sorted &= prev_end <= d.offset;
        prev_end = d.end();
    }
    (placed & target.mask & !mask::COMPACTED, sorted)
}

/// Every check of a conversion, before any byte is written.
fn walk_check<B: AsRef<[u8]>>(src: &Xsave<B>, target: &FormLayout) -> Result<Plan, ConvertError> {
    if target.size > MAX_AREA_SIZE {
        return Err(ConvertError::TargetTooLarge(target.size));
    }
    let mut p = present(src)?;
    let mxcsr = src.mxcsr();
    let (placed, sorted) = placed_and_sorted(target);
    // A component the target cannot hold may be left out only when it is in its init state.
    for id in bits(p & !placed) {
        if !src.is_init(id)? {
            return Err(no_room(id, target));
        }
    }
    // MXCSR: a non-default value needs SSE in the compacted form, and SSE or AVX in the
    // target mask to be loaded at all.
    if mxcsr != MXCSR_INIT {
        match target.form {
            Form::Compacted => {
                if target.mask & mask::SSE == 0 {
                    return Err(no_room(1, target));
                }
                p |= mask::SSE;
            }
            Form::Standard => {
                if target.mask & (mask::SSE | mask::AVX) == 0 {
                    return Err(no_room(1, target));
                }
            }
        }
    }
    let kept = p & placed;
    let s = src.as_bytes();
    // Components walked in step: both placement lists are in increasing component order.
    let (sp, dp) = (&src.geometry().placements, &target.placements);
    let mut i = 0;
    for d in dp.iter().filter(|d| d.id >= 2 && kept & bit(d.id) != 0) {
        while i < sp.len() && sp[i].id < d.id {
            i += 1;
        }
        let Some(sp) = sp
            .get(i)
            .filter(|x| x.id == d.id && x.end() as usize <= s.len())
        else {
            return Err(src
                .placement(d.id)
                .err()
                .map_or_else(|| no_room(d.id, target), Into::into));
        };
        if sp.size > d.size {
            let m = meaningful_len(d.id, sp.size);
            let tail = s
                .get(sp.offset as usize + d.size as usize..sp.offset as usize + m as usize)
                .unwrap_or(&[]);
            if m > d.size && tail.iter().any(|&b| b != 0) {
                return Err(ConvertError::Truncation {
                    id: d.id,
                    name: Component::name_of(d.id),
                    src_size: sp.size,
                    dst_size: d.size,
                    offset: sp.offset + d.size,
                });
            }
        }
    }
    let written_mxcsr = match target.form {
        Form::Standard => mxcsr,
        Form::Compacted if kept & mask::SSE != 0 => mxcsr,
        Form::Compacted => MXCSR_INIT,
    };
    Ok(Plan {
        kept,
        mxcsr: written_mxcsr,
        len: target_len(target),
        sorted,
    })
}

/// Where the steps of a conversion go: written into the target, or recorded by a plan.
pub(crate) trait RunSink {
    /// Copies source bytes `from..from + len` to target bytes `to..to + len`.
    fn copy(&mut self, from: usize, to: usize, len: usize);
    /// Zeroes target bytes `from..to`.
    fn zero(&mut self, from: usize, to: usize);
}

/// A bit of a component mask (0 for numbers beyond the mask).
#[inline]
pub(crate) fn bit(id: u8) -> u64 {
    1u64.checked_shl(u32::from(id)).unwrap_or(0)
}

#[inline]
pub(crate) fn copy(s: &[u8], d: &mut [u8], from: usize, to: usize, len: usize) {
    if let (Some(a), Some(b)) = (s.get(from..from + len), d.get_mut(to..to + len)) {
        b.copy_from_slice(a);
    }
}

#[inline]
pub(crate) fn zero(d: &mut [u8], from: usize, to: usize) {
    if from < to {
        if let Some(r) = d.get_mut(from..to) {
            r.fill(0);
        }
    }
}

/// Issues the steps of a conversion into the target bytes.
pub(crate) struct Writer<'a> {
    pub(crate) s: &'a [u8],
    pub(crate) d: &'a mut [u8],
    /// `d` is known to be all zero: zero runs need not be written.
    pub(crate) zeroed: bool,
}

impl RunSink for Writer<'_> {
    #[inline]
    fn copy(&mut self, from: usize, to: usize, len: usize) {
        copy(self.s, self.d, from, to, len);
    }
    #[inline]
    fn zero(&mut self, from: usize, to: usize) {
        if !self.zeroed {
            zero(self.d, from, to);
        }
    }
}

/// A run of bytes copied from the source to the target: consecutive components that are
/// adjacent in both images are copied with one `memcpy`.
pub(crate) struct Run {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) len: usize,
}

impl Run {
    #[inline]
    pub(crate) fn flush(&mut self, sink: &mut impl RunSink) {
        if self.len > 0 {
            sink.copy(self.from, self.to, self.len);
            self.len = 0;
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, from: usize, to: usize, len: usize, sink: &mut impl RunSink) {
        if self.len > 0 && self.from + self.len == from && self.to + self.len == to {
            self.len += len;
        } else {
            self.flush(sink);
            *self = Run { from, to, len };
        }
    }
}

/// Writes the planned image into `d` (exactly `plan.len` bytes). `zeroed`: `d` is known to
/// be all zero (a fresh buffer), so zero runs need not be written.
fn walk_write<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    target: &FormLayout,
    plan: &Plan,
    d: &mut [u8],
    zeroed: bool,
) {
    let s = src.as_bytes();
    let kept = plan.kept;
    let mut w = Writer { s, d, zeroed };
    // Components ≥ 2 in target order, the source walked in step. Every byte from 576 to the
    // end is either copied or zeroed once: gaps before a placement (alignment padding,
    // holes of the standard form), absent components, the part of a larger target area the
    // source does not fill. Placements out of offset order (only in broken CPUID data) fall
    // back to zeroing the whole extended area first and copying component by component.
    let sorted = plan.sorted;
    let mut cursor = EXTENDED_START as usize;
    let sp = &src.geometry().placements;
    let mut i = 0;
    // The legacy area and the header start the first run (the header and what is absent from
    // the legacy area are written after the copies): the components that follow them at the
    // same offsets in both images join it.
    let mut run = Run {
        from: 0,
        to: 0,
        len: EXTENDED_START as usize,
    };
    if !sorted {
        run.flush(&mut w);
        w.zero(cursor, w.d.len());
    }
    for t in target.placements.iter().filter(|t| t.id >= 2) {
        let (off, size) = (t.offset as usize, t.size as usize);
        if sorted {
            if cursor < off {
                run.flush(&mut w);
                w.zero(cursor, off);
            }
            cursor = cursor.max(off + size);
        }
        let mut n = 0;
        if kept & bit(t.id) != 0 {
            while i < sp.len() && sp[i].id < t.id {
                i += 1;
            }
            if let Some(p) = sp.get(i).filter(|p| p.id == t.id) {
                n = (p.size as usize).min(size);
                if sorted {
                    run.push(p.offset as usize, off, n, &mut w);
                } else {
                    set(
                        w.d,
                        off,
                        s.get(p.offset as usize..p.offset as usize + n)
                            .unwrap_or(&[]),
                    );
                }
            }
        }
        if sorted && n < size {
            run.flush(&mut w);
            w.zero(off + n, off + size);
        }
    }
    run.flush(&mut w);
    if sorted {
        w.zero(cursor, w.d.len());
    }
    let d = w.d;
    // Legacy area (SDM §10.5.1), copied whole above (x87 0..160 with MXCSR and MXCSR_MASK at
    // 24..32, XMM 160..416, bytes 416..511 verbatim): what is absent put in init state.
    if kept & mask::X87 == 0 {
        set(d, 0, &crate::image::FCW_INIT.to_le_bytes());
        d[2..24].fill(0);
        d[32..160].fill(0);
    }
    set(d, MXCSR_OFFSET, &plan.mxcsr.to_le_bytes());
    if kept & mask::SSE == 0 || !src.is_present(1) {
        d[160..416].fill(0);
    }
    // Header: XSTATE_BV, XCOMP_BV, reserved bytes zero.
    let mut h = [0u8; 64];
    h[..8].copy_from_slice(&kept.to_le_bytes());
    h[8..16].copy_from_slice(&target.xcomp_bv().to_le_bytes());
    set(d, 512, &h);
}

/// Converts to the standard form of `xcr0` on `layout`.
pub fn to_standard<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    layout: &Layout,
    xcr0: u64,
) -> Result<XsaveImage, ConvertError> {
    convert(src, &layout.standard(xcr0)?)
}

/// Converts to the compacted form of `xcomp_bv` (bit 63 optional) on `layout`.
pub fn to_compacted<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    layout: &Layout,
    xcomp_bv: u64,
) -> Result<XsaveImage, ConvertError> {
    convert(src, &layout.compacted(xcomp_bv)?)
}

/// Builds an XSAVE image of geometry `target` from a 512-byte FXSAVE image (SDM Vol. 1
/// §10.5.1): the legacy area is copied and x87 and SSE are marked present, since FXSAVE
/// always saves both.
///
/// ```
/// # use xstate::cpuid::{CpuidDump, Regs};
/// # use xstate::layout::Layout;
/// use xstate::convert::{from_fxsave, to_fxsave};
/// let mut d = CpuidDump::new("doc");
/// d.insert(0xd, 0, Regs { eax: 0x3, ebx: 576, ecx: 576, edx: 0 });
/// let l = Layout::from_dump(&d);
/// let mut fx = [0u8; 512];
/// fx[0] = 0x7f; fx[1] = 0x03; fx[24] = 0x80; fx[25] = 0x1f; fx[160] = 0xab;
/// let x = from_fxsave(&fx, &l.standard(0x3).unwrap()).unwrap();
/// assert_eq!(x.xstate_bv(), 3);
/// assert_eq!(x.xmm(0).unwrap(), 0xab);
/// assert_eq!(to_fxsave(&x).unwrap(), fx);
/// ```
pub fn from_fxsave(fx: &[u8], target: &FormLayout) -> Result<XsaveImage, ConvertError> {
    if fx.len() != FXSAVE_SIZE {
        return Err(ConvertError::FxsaveSize(fx.len()));
    }
    let mut legacy = alloc::vec![0u8; crate::image::MIN_SIZE];
    legacy[..FXSAVE_SIZE].copy_from_slice(fx);
    legacy[512..520].copy_from_slice(&mask::LEGACY.to_le_bytes());
    // Read it as a standard image of x87 and SSE, then convert to the target.
    let g = FormLayout {
        form: Form::Standard,
        mask: mask::LEGACY,
        size: crate::image::MIN_SIZE as u32,
        placements: Default::default(),
    };
    let src = Xsave::with_geometry(AlignedBuf::from_bytes(&legacy), g)?;
    let mut out = convert(&src, target)?;
    // FXSAVE holds both components: keep them present when the target has room, as an
    // XSAVE of a task that used both would.
    for id in bits(target.mask & mask::LEGACY) {
        out.make_present(id)?;
    }
    Ok(out)
}

/// The 512-byte FXSAVE image of an XSAVE image: x87 and SSE with their effective values
/// (init when absent), MXCSR_MASK and bytes 416..511 verbatim. A component ≥ 2 holding a
/// non-init value is an error naming it (FXSAVE has no place for it).
pub fn to_fxsave<B: AsRef<[u8]>>(src: &Xsave<B>) -> Result<[u8; FXSAVE_SIZE], ConvertError> {
    let p = present(src)?;
    for id in bits(p & !mask::LEGACY) {
        if !src.is_init(id)? {
            return Err(ConvertError::NoRoom {
                id,
                name: Component::name_of(id),
                form: Form::Standard,
                mask: mask::LEGACY,
            });
        }
    }
    let mut fx = [0u8; FXSAVE_SIZE];
    fx.copy_from_slice(
        src.as_bytes()
            .get(..FXSAVE_SIZE)
            .unwrap_or(&[0u8; FXSAVE_SIZE]),
    );
    if !src.is_present(0) {
        set(&mut fx, 0, &crate::image::FCW_INIT.to_le_bytes());
        set(&mut fx, 2, &[0u8; 22]);
        set(&mut fx, 32, &[0u8; 128]);
    }
    if !src.is_present(1) {
        set(&mut fx, 160, &[0u8; 256]);
    }
    set(&mut fx, MXCSR_OFFSET, &src.mxcsr().to_le_bytes());
    Ok(fx)
}

#[cfg(feature = "std")]
mod cache;
mod plan;

/// Calls `f` with a cached plan for converting images of geometry `g` to `t` other than the
/// set-once ones the entry point already looked at (`cache::miss`), or with `None`: the cache
/// is busy, or there is none. Without the `std` feature
/// (a kernel, a hypervisor's `no_std` core) there is no process-wide cache: it would hold heap
/// memory no caller owns for the life of the program (the ring-0 test kernel counts that as a
/// leak, and its bump heap cannot rewind past it), so the entry points walk the components
/// and callers that convert often hold a [`ConvertPlan`].
#[inline]
fn with_other_plan<R>(g: &FormLayout, t: &FormLayout, f: impl FnOnce(Option<Found<'_>>) -> R) -> R {
    #[cfg(feature = "std")]
    {
        cache::miss(g, t, f)
    }
    #[cfg(not(feature = "std"))]
    {
        let _ = (g, t);
        f(None)
    }
}

pub use plan::ConvertPlan;

/// A plan the cache found for a pair, and how long it lives.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub(crate) enum Found<'a> {
    /// A plan of the cache's set-once part, never freed: images can hold its target
    /// geometry by reference, with no count to change.
    Static(&'static ConvertPlan),
    /// A plan that may be replaced after the call: images share its target geometry's `Arc`.
    Local(&'a ConvertPlan),
}

#[cfg_attr(not(feature = "std"), allow(dead_code))]
impl Found<'_> {
    #[inline(always)]
    fn plan(&self) -> &ConvertPlan {
        match *self {
            Found::Static(p) => p,
            Found::Local(p) => p,
        }
    }

    /// The plan's target geometry as a new image holds it.
    #[inline(always)]
    fn target_geometry(&self) -> crate::image::Geometry {
        match *self {
            Found::Static(p) => crate::image::Geometry::Static(p.shared().1),
            Found::Local(p) => crate::image::Geometry::Shared(p.shared().1.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
