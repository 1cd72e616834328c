//! The XSAVE image KVM exchanges (KVM_GET_XSAVE2 / KVM_SET_XSAVE): the standard form, sized by
//! KVM_CAP_XSAVE2, and the rules KVM_SET_XSAVE applies (DESIGN §6) checked *before* the ioctl.
//!
//! Offsets used here are the architectural ones of the legacy area and header (DESIGN §4);
//! component offsets come from the destination's layout (CPUID leaf 0xD).

use std::fmt;

use xstate::components::{bits, mask};
use xstate::layout::FormLayout;
use xstate::validate::{self, normalize_mxcsr_mask, KvmConfig, Violation};

use xstate::image::{raw_mxcsr, raw_xcomp_bv, raw_xstate_bv};
pub use xstate::image::{MIN_SIZE, MXCSR_MASK_OFFSET, MXCSR_OFFSET, XSTATE_BV_OFFSET};
/// The size of `struct kvm_xsave` and the smallest KVM_CAP_XSAVE2 answer.
pub const KVM_XSAVE_SIZE: usize = 4096;

/// An XSAVE image in the standard form, as KVM_GET_XSAVE2 writes it and KVM_SET_XSAVE reads
/// it. Any length is representable; [`KvmXsaveRules::check`] decides whether it may be set.
#[derive(Clone, PartialEq, Eq)]
pub struct XsaveBuffer {
    bytes: Vec<u8>,
}

impl fmt::Debug for XsaveBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XsaveBuffer")
            .field("len", &self.bytes.len())
            .field("xstate_bv", &format_args!("{:#x}", self.xstate_bv()))
            .finish()
    }
}

impl XsaveBuffer {
    /// Wraps image bytes (standard form).
    ///
    /// ```
    /// let img = xstate_kvm::XsaveBuffer::from_bytes(vec![0; 4096]);
    /// assert_eq!(img.xstate_bv(), 0);
    /// ```
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        XsaveBuffer { bytes }
    }

    /// A zero image of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        XsaveBuffer {
            bytes: vec![0; len],
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, mutable (the length stays fixed).
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// The byte vector itself, for code that resizes it in place (capture into a reused
    /// buffer).
    pub(crate) fn bytes_mut_vec(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// The bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty buffer.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// XSTATE_BV (0 when the image is too short to hold it).
    pub fn xstate_bv(&self) -> u64 {
        raw_xstate_bv(&self.bytes)
    }

    /// XCOMP_BV (0 when the image is too short to hold it).
    pub fn xcomp_bv(&self) -> u64 {
        raw_xcomp_bv(&self.bytes)
    }

    /// MXCSR (0 when the image is too short to hold it).
    pub fn mxcsr(&self) -> u32 {
        raw_mxcsr(&self.bytes)
    }

    /// MXCSR_MASK as saved (0 when too short).
    pub fn mxcsr_mask(&self) -> u32 {
        self.bytes
            .get(MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    }

    /// Sets XSTATE_BV. Errors when the image is shorter than the header.
    pub fn set_xstate_bv(&mut self, v: u64) -> Result<(), Refused> {
        let len = self.bytes.len();
        match self.bytes.get_mut(XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8) {
            Some(s) => {
                s.copy_from_slice(&v.to_le_bytes());
                Ok(())
            }
            None => Err(Refused {
                reasons: vec![Reason::TooShort {
                    len,
                    need: MIN_SIZE,
                }],
            }),
        }
    }
}

/// What KVM_SET_XSAVE on one vCPU accepts (DESIGN §6): the `kvm` profile of
/// [`xstate::validate`] plus the size rules of the vCPU's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvmXsaveRules {
    /// The buffer KVM reads: KVM_CAP_XSAVE2 on the VM (at least 4096).
    pub buffer_size: usize,
    /// The guest-supported XCR0 (KVM_X86_XCOMP_GUEST_SUPP): XSTATE_BV must be within it.
    pub supported_xcr0: u64,
    /// Dynamic components the vCPU's buffer holds: guest permission (ARCH_REQ_XCOMP_GUEST_PERM)
    /// *and* a guest CPUID that enumerates them (KVM grows the buffer at KVM_SET_CPUID2). A
    /// dynamic component in XSTATE_BV outside it is refused (AMX before the buffer grew).
    pub dynamic_in_buffer: u64,
    /// The host MXCSR mask: MXCSR bits outside it are refused when x87, SSE or AVX is in
    /// XSTATE_BV.
    pub mxcsr_mask: u32,
    /// The standard layout of `supported_xcr0` on this host: every component in XSTATE_BV
    /// must lie inside the image.
    pub layout: FormLayout,
}

/// One reason KVM_SET_XSAVE would refuse (or silently lose part of) an image.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// A rule of KVM_SET_XSAVE itself ([`xstate::validate::kvm`]: XSTATE_BV, XCOMP_BV,
    /// reserved header bytes, MXCSR).
    Kvm(Violation),
    /// Shorter than a component XSTATE_BV names: KVM would load bytes the image lacks.
    TooShort {
        /// Image length.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Non-zero bytes beyond the vCPU's buffer: KVM would never read them.
    DataBeyondBuffer {
        /// Image length.
        len: usize,
        /// The vCPU's KVM_CAP_XSAVE2 size.
        buffer: usize,
        /// Offset of the first non-zero byte at or beyond `buffer`.
        first_nonzero: usize,
    },
}

impl Reason {
    /// The rule identifier (`xstate_bv_unsupported`, `too_short`, `data_beyond_buffer` …).
    pub fn id(&self) -> &'static str {
        match self {
            Reason::Kvm(v) => v.rule.id(),
            Reason::TooShort { .. } => "too_short",
            Reason::DataBeyondBuffer { .. } => "data_beyond_buffer",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Kvm(v) => write!(f, "{v}"),
            Reason::TooShort { len, need } => write!(
                f,
                "[too_short] size: the image has {len} bytes, {need} are needed (legacy area, header and every component in XSTATE_BV)"
            ),
            Reason::DataBeyondBuffer { len, buffer, first_nonzero } => write!(
                f,
                "[data_beyond_buffer] size: the image has {len} bytes but the vCPU's KVM_CAP_XSAVE2 buffer is {buffer}; byte {first_nonzero} beyond it is not zero and would be lost"
            ),
        }
    }
}

/// An image refused before KVM_SET_XSAVE, with every reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    /// Every broken rule, in image order.
    pub reasons: Vec<Reason>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "XSAVE image refused before KVM_SET_XSAVE")?;
        for r in &self.reasons {
            write!(f, "; {r}")?;
        }
        Ok(())
    }
}

impl KvmXsaveRules {
    /// Checks an image against the rules of KVM_SET_XSAVE on this vCPU (DESIGN §6). Every
    /// broken rule is reported.
    ///
    /// ```
    /// use xstate::cpuid::{CpuidDump, Regs};
    /// use xstate::layout::Layout;
    /// use xstate_kvm::{KvmXsaveRules, XsaveBuffer};
    /// let mut d = CpuidDump::new("doc");
    /// d.insert(0xd, 0, Regs { eax: 0x7, ebx: 832, ecx: 832, edx: 0 });
    /// d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
    /// let rules = KvmXsaveRules {
    ///     buffer_size: 4096,
    ///     supported_xcr0: 0x7,
    ///     dynamic_in_buffer: 0,
    ///     mxcsr_mask: 0xffff,
    ///     layout: Layout::from_dump(&d).standard(0x7).unwrap(),
    /// };
    /// let mut img = XsaveBuffer::zeroed(4096);
    /// img.set_xstate_bv(0x7).unwrap();
    /// assert!(rules.check(&img).is_ok());
    /// img.set_xstate_bv(1 << 9).unwrap(); // PKRU: not supported here
    /// assert_eq!(rules.check(&img).unwrap_err().reasons[0].id(), "xstate_bv_unsupported");
    /// ```
    pub fn check(&self, img: &XsaveBuffer) -> Result<(), Refused> {
        let b = img.as_bytes();
        let cfg = KvmConfig {
            supported_xcr0: self.supported_xcr0,
            user_features: self.supported_xcr0 & (!mask::DYNAMIC | self.dynamic_in_buffer),
            mxcsr_mask: normalize_mxcsr_mask(self.mxcsr_mask),
        };
        let mut reasons: Vec<Reason> = validate::kvm(b, &cfg)
            .into_iter()
            .map(Reason::Kvm)
            .collect();
        if b.len() < MIN_SIZE {
            return Err(Refused { reasons });
        }
        if b.len() > self.buffer_size {
            if let Some(p) = b[self.buffer_size..].iter().position(|&x| x != 0) {
                reasons.push(Reason::DataBeyondBuffer {
                    len: b.len(),
                    buffer: self.buffer_size,
                    first_nonzero: self.buffer_size + p,
                });
            }
        }
        // Every supported component XSTATE_BV names must lie inside the image.
        let need = bits(img.xstate_bv() & self.supported_xcr0)
            .filter_map(|id| self.layout.placement(id))
            .map(|p| p.end() as usize)
            .max()
            .unwrap_or(MIN_SIZE);
        if need > b.len() {
            reasons.push(Reason::TooShort { len: b.len(), need });
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Refused { reasons })
        }
    }

    /// The image padded (or cut, when only zeros are cut) to exactly the vCPU's buffer size,
    /// after [`check`](Self::check) passed.
    pub fn fit(&self, img: &XsaveBuffer) -> Result<Vec<u8>, Refused> {
        self.check(img)?;
        let mut v = img.as_bytes().to_vec();
        v.resize(self.buffer_size, 0);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This project's Zen 5 geometry (DESIGN §9), from its real `cpuid -r` dump.
    fn rules() -> KvmXsaveRules {
        let layout = crate::testdata::zen5_standard();
        KvmXsaveRules {
            buffer_size: 4096,
            supported_xcr0: 0xe7,
            dynamic_in_buffer: 0,
            mxcsr_mask: 0xffff,
            layout,
        }
    }

    fn img(xstate_bv: u64) -> XsaveBuffer {
        let mut i = XsaveBuffer::zeroed(4096);
        i.set_xstate_bv(xstate_bv).unwrap();
        i.as_mut_bytes()[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        i
    }

    #[test]
    fn accepts_what_design_9_measured_as_accepted() {
        let r = rules();
        assert!(r.check(&img(0)).is_ok());
        assert!(r.check(&img(0xe7)).is_ok());
        for off in [420, 464] {
            let mut i = img(0xe7);
            i.as_mut_bytes()[off] = 0x5a;
            assert!(r.check(&i).is_ok(), "byte {off}");
        }
        let mut i = img(0x3);
        i.as_mut_bytes()[24..28].copy_from_slice(&(0x1f80u32 | 0x40).to_le_bytes());
        assert!(r.check(&i).is_ok());
    }

    fn ids(r: &KvmXsaveRules, i: &XsaveBuffer) -> Vec<&'static str> {
        r.check(i)
            .unwrap_err()
            .reasons
            .iter()
            .map(|x| x.id())
            .collect()
    }

    #[test]
    fn refuses_what_design_9_measured_as_einval() {
        let r = rules();
        let mut i = img(0x3);
        i.as_mut_bytes()[520] = 1;
        assert_eq!(ids(&r, &i), ["xcomp_bv_not_zero"]);
        for off in [528, 560, 575] {
            let mut i = img(0x3);
            i.as_mut_bytes()[off] = 1;
            assert_eq!(ids(&r, &i), ["header_reserved"], "byte {off}");
        }
        for bit in [9u32, 11, 63] {
            assert_eq!(
                ids(&r, &img(0x3 | 1 << bit)),
                ["xstate_bv_unsupported"],
                "bit {bit}"
            );
        }
        let mut i = img(0x3);
        i.as_mut_bytes()[24..28].copy_from_slice(&(0x1f80u32 | 1 << 16).to_le_bytes());
        assert_eq!(ids(&r, &i), ["mxcsr_reserved"]);
        // MXCSR is not checked when none of x87, SSE, AVX is in XSTATE_BV.
        let mut i = img(0);
        i.as_mut_bytes()[24..28].copy_from_slice(&(1u32 << 16).to_le_bytes());
        assert!(r.check(&i).is_ok());
    }

    #[test]
    fn size_rules() {
        let r = rules();
        assert_eq!(ids(&r, &XsaveBuffer::zeroed(100)), ["too_small"]);
        // Hi16_ZMM ends at 2432.
        let mut short = XsaveBuffer::zeroed(2000);
        short.set_xstate_bv(0xe7).unwrap();
        let e = r.check(&short).unwrap_err();
        assert_eq!(
            e.reasons,
            vec![Reason::TooShort {
                len: 2000,
                need: 2432
            }]
        );
        // Longer than the buffer: zeros are fine, data is not.
        let mut long = XsaveBuffer::zeroed(11008);
        long.set_xstate_bv(0x3).unwrap();
        assert_eq!(r.fit(&long).unwrap().len(), 4096);
        long.as_mut_bytes()[5000] = 1;
        let e = r.check(&long).unwrap_err();
        assert_eq!(ids(&r, &long), ["data_beyond_buffer"]);
        assert!(e.to_string().contains("byte 5000"), "{e}");
        // Shorter but complete: padded.
        let mut small = XsaveBuffer::zeroed(2432);
        small.set_xstate_bv(0xe7).unwrap();
        assert_eq!(r.fit(&small).unwrap().len(), 4096);
    }

    #[test]
    fn dynamic_needs_permission() {
        let mut r = rules();
        r.supported_xcr0 |= mask::AMX;
        assert_eq!(
            ids(&r, &img(0x3 | mask::XTILEDATA)),
            ["xstate_bv_not_permitted"]
        );
        r.dynamic_in_buffer |= mask::XTILEDATA;
        assert!(r.check(&img(0x3)).is_ok());
    }

    #[test]
    fn short_buffers_never_panic() {
        let r = rules();
        for len in 0..600 {
            let _ = r.check(&XsaveBuffer::zeroed(len));
            let i = XsaveBuffer::zeroed(len);
            let _ = (i.xstate_bv(), i.xcomp_bv(), i.mxcsr(), i.mxcsr_mask());
        }
    }
}
