//! Comparison of two XSAVE images by meaning: component by component, register by register,
//! of the values a restore would load (SDM Vol. 1 §13.8).
//!
//! Bytes with no meaning are ignored: padding and reserved bytes, the unused upper bytes of
//! x87 ST slots and of PKRU, reserved bits of FCW and FOP (see
//! [`crate::image::registers::significant`]), MXCSR_MASK (restores ignore it), the header (its meaning is in
//! which components are present), and the bytes of components absent from XSTATE_BV. A
//! component absent from XSTATE_BV equals one present holding its init value (DESIGN.md §5),
//! whatever the forms and layouts of the two images.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::diff::diff;
//! use xstate::image::XsaveImage;
//! use xstate::layout::Layout;
//! let mut d = CpuidDump::new("doc");
//! d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! let l = Layout::from_dump(&d);
//! let a = XsaveImage::new(&l.standard(0x7).unwrap());
//! let mut b = XsaveImage::new(&l.compacted(0x7).unwrap());
//! b.set_ymm_hi(0, 0).unwrap(); // present, but init: no difference
//! assert!(diff(&a, &b).unwrap().is_empty());
//! b.set_ymm_hi(5, 0x10).unwrap();
//! let d = diff(&a, &b).unwrap();
//! assert_eq!(d.len(), 1);
//! assert_eq!((d[0].register.as_str(), d[0].b.as_str()), ("ymm_hi5", "0x10"));
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::components::{bits, mask, Component};
use crate::image::registers::{le_hex, registers, significant, RegSpec};
use crate::image::{init_register, ImageError, Xsave};

/// One register whose value differs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    /// Component number.
    pub component: u8,
    /// Component name (`avx`, `component_40`, …).
    pub component_name: String,
    /// Register (`fcw`, `xmm3`, `k7`, `r17`, `bytes`, …).
    pub register: String,
    /// Value in the first image (hex of the little-endian integer).
    pub a: String,
    /// Value in the second image.
    pub b: String,
}

fn label(spec: &RegSpec, i: usize) -> String {
    if spec.name == "egpr" {
        format!("r{}", 16 + i)
    } else if spec.array {
        format!("{}{i}", spec.name)
    } else {
        String::from(spec.name)
    }
}

/// The value of one register of one image, init when the component is absent. `width` is
/// the register width (for whole-component registers, the component size on this image, or
/// on the other image when absent here).
fn value<B: AsRef<[u8]>>(
    img: &Xsave<B>,
    id: u8,
    spec: &RegSpec,
    i: usize,
    width: usize,
) -> Result<Vec<u8>, ImageError> {
    let present = img.is_present(id) || id == 1;
    if !present {
        return Ok(init_register(id, spec.name, width));
    }
    img.register(id, spec.name, i)
}

/// Every register whose meaning differs between `a` and `b`, in component order. Errors when
/// an image marks a component present that its geometry does not place.
pub fn diff<A: AsRef<[u8]>, B: AsRef<[u8]>>(
    a: &Xsave<A>,
    b: &Xsave<B>,
) -> Result<Vec<Difference>, ImageError> {
    let mut out = Vec::new();
    let ids = ((a.xstate_bv() | b.xstate_bv()) & !mask::COMPACTED) | mask::SSE;
    for id in bits(ids) {
        for spec in registers(id) {
            if id == 1 && spec.name == "mxcsr_mask" {
                continue;
            }
            // SSE is always compared for MXCSR; its XMM registers only when present somewhere.
            if id == 1 && spec.name == "xmm" && (a.xstate_bv() | b.xstate_bv()) & mask::SSE == 0 {
                continue;
            }
            let whole = |img_size: Result<u32, ImageError>| img_size.map(|s| s as usize);
            let width = if spec.width != 0 {
                spec.width as usize
            } else {
                let sa = if a.is_present(id) {
                    whole(a.placement(id).map(|p| p.size))?
                } else {
                    0
                };
                let sb = if b.is_present(id) {
                    whole(b.placement(id).map(|p| p.size))?
                } else {
                    0
                };
                sa.max(sb)
            };
            for i in 0..spec.count as usize {
                let mut va = if id == 1 && spec.name == "xmm" && !a.is_present(1) {
                    init_register(1, "xmm", width)
                } else {
                    value(a, id, spec, i, width)?
                };
                let mut vb = if id == 1 && spec.name == "xmm" && !b.is_present(1) {
                    init_register(1, "xmm", width)
                } else {
                    value(b, id, spec, i, width)?
                };
                significant(id, spec.name, &mut va);
                significant(id, spec.name, &mut vb);
                // Whole-component registers of different sizes compare zero-extended.
                let n = va.len().max(vb.len());
                va.resize(n, 0);
                vb.resize(n, 0);
                if va != vb {
                    out.push(Difference {
                        component: id,
                        component_name: Component::name_of(id),
                        register: label(spec, i),
                        a: le_hex(&va),
                        b: le_hex(&vb),
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::XsaveImage;
    use crate::testutil::{spr, zen5};

    #[test]
    fn garbage_in_absent_components_and_padding_is_ignored() {
        let l = zen5();
        let a = XsaveImage::new(&l.standard(0xe7).unwrap());
        let mut b = a.clone();
        b.as_mut_bytes()[832..2432].fill(0xee); // absent AVX-512 components
        b.as_mut_bytes()[42..48].fill(0xee); // upper bytes of the ST0 slot
        b.as_mut_bytes()[416..512].fill(0xee); // reserved + software bytes
        b.as_mut_bytes()[28] = 0xee; // MXCSR_MASK
        b.as_mut_bytes()[540] = 0xee; // header byte 28
        assert!(diff(&a, &b).unwrap().is_empty());
        b.as_mut_bytes()[24] = 0; // MXCSR 0x1f00: meaningful in the standard form
        let d = diff(&a, &b).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].register, "mxcsr");
        assert_eq!((d[0].a.as_str(), d[0].b.as_str()), ("0x1f80", "0x1f00"));
    }

    #[test]
    fn across_layouts_and_forms() {
        let (i, z) = (spr(), zen5());
        let mut a = XsaveImage::new(&i.standard(0x2e7).unwrap());
        let mut b = XsaveImage::new(&z.compacted(0xe7).unwrap());
        a.set_k(4, 9).unwrap();
        b.set_k(4, 9).unwrap();
        a.set_pkru(0).unwrap(); // present, init
        assert!(diff(&a, &b).unwrap().is_empty());
        a.set_pkru(0x55555554).unwrap();
        b.set_hi16_zmm(15, &[1; 64]).unwrap();
        let d = diff(&a, &b).unwrap();
        let regs: Vec<_> = d.iter().map(|d| d.register.as_str()).collect();
        assert_eq!(regs, ["zmm15", "pkru"]);
        assert_eq!(d[1].a, "0x55555554");
        assert_eq!(d[1].b, "0x0");
    }

    #[test]
    fn x87_differences_are_per_register() {
        let l = zen5();
        let a = XsaveImage::new(&l.standard(0xe7).unwrap());
        let mut b = a.clone();
        b.set_fcw(0x27f);
        b.set_st(3, 1).unwrap();
        let d = diff(&a, &b).unwrap();
        let regs: Vec<_> = d.iter().map(|d| d.register.as_str()).collect();
        assert_eq!(regs, ["fcw", "st3"]);
    }

    #[test]
    fn present_but_unplaceable_is_an_error() {
        let l = zen5();
        let a = XsaveImage::new(&l.standard(0xe7).unwrap());
        let mut b = a.clone();
        b.set_xstate_bv(1 << 9); // PKRU: no place on this CPU
        assert!(matches!(
            diff(&a, &b).unwrap_err(),
            ImageError::NotInImage { id: 9, .. }
        ));
    }
}
