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
use alloc::vec::Vec;

use crate::components::{bits, mask, Component};
use crate::image::{
    AlignedBuf, ImageError, Xsave, XsaveImage, FXSAVE_SIZE, MXCSR_INIT, MXCSR_OFFSET,
};
use crate::layout::{Form, FormLayout, Layout, LayoutError, MAX_AREA_SIZE};

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
    /// An FXSAVE image is exactly 512 bytes.
    #[error("an FXSAVE image is 512 bytes, {0} given")]
    FxsaveSize(usize),
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
/// form, any mask, any CPU's layout. See the module documentation for the rules.
///
/// Trust: `target` comes from [`Layout::standard`] / [`Layout::compacted`], which never place
/// two components on the same bytes or inside the legacy area and header; a target larger
/// than [`MAX_AREA_SIZE`] is refused. Whether the CPU's data is consistent as a whole is
/// decided where the layout is made: build it with [`Layout::trusted`] from a dump.
pub fn convert<B: AsRef<[u8]>>(
    src: &Xsave<B>,
    target: &FormLayout,
) -> Result<XsaveImage, ConvertError> {
    if target.size > MAX_AREA_SIZE {
        return Err(ConvertError::TargetTooLarge(target.size));
    }
    let mut p = present(src)?;
    let mxcsr = src.mxcsr();
    let mut dst = XsaveImage::new(target);
    let holds =
        |id: u8| target.mask & (1u64 << id) != 0 && (id < 2 || target.placement(id).is_some());
    // A component the target cannot hold may be left out only when it is in its init state.
    for id in bits(p) {
        if !holds(id) && !src.is_init(id)? {
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
    let kept = p & target.mask;
    let s = src.as_bytes();
    {
        let d = dst.as_mut_bytes();
        // Legacy area: bytes 416..511 and MXCSR_MASK verbatim; registers below.
        set(d, 416, s.get(416..512).unwrap_or(&[]));
        set(d, 28, s.get(28..32).unwrap_or(&[]));
        if kept & mask::X87 != 0 {
            set(d, 0, s.get(0..24).unwrap_or(&[]));
            set(d, 32, s.get(32..160).unwrap_or(&[]));
        }
        if kept & mask::SSE != 0 && src.is_present(1) {
            set(d, 160, s.get(160..416).unwrap_or(&[]));
        }
        let written_mxcsr = match target.form {
            Form::Standard => mxcsr,
            Form::Compacted if kept & mask::SSE != 0 => mxcsr,
            Form::Compacted => MXCSR_INIT,
        };
        set(d, MXCSR_OFFSET, &written_mxcsr.to_le_bytes());
    }
    for id in bits(kept & !mask::LEGACY) {
        let sp = src.placement(id)?;
        let Some(dp) = target.placement(id) else {
            return Err(no_room(id, target));
        };
        let n = sp.size.min(dp.size) as usize;
        let m = meaningful_len(id, sp.size);
        if m > dp.size {
            let tail = s
                .get(sp.offset as usize + dp.size as usize..sp.offset as usize + m as usize)
                .unwrap_or(&[]);
            if tail.iter().any(|&b| b != 0) {
                return Err(ConvertError::Truncation {
                    id,
                    name: Component::name_of(id),
                    src_size: sp.size,
                    dst_size: dp.size,
                    offset: sp.offset + dp.size,
                });
            }
        }
        let from = s
            .get(sp.offset as usize..sp.offset as usize + n)
            .unwrap_or(&[]);
        set(dst.as_mut_bytes(), dp.offset as usize, from);
    }
    dst.set_xstate_bv(kept);
    Ok(dst)
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
        placements: Vec::new(),
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

#[cfg(test)]
mod tests;
