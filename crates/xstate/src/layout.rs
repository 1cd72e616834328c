//! The layout engine: where each state component lives in an XSAVE image, computed from CPUID
//! leaf 0xD and never from hard-coded offsets (SDM Vol. 1 §13.4).
//!
//! * [`Layout`] is one CPU's geometry: every component's size, standard offset and flags.
//! * [`Layout::standard`] places the components of a mask in the standard form (§13.4.2:
//!   component i ≥ 2 at CPUID.(0xD,i).EBX).
//! * [`Layout::compacted`] places them in the compacted form (§13.4.3: from byte 576, in
//!   increasing component order, rounded up to 64 where CPUID.(0xD,i).ECX\[1\] says so).
//! * [`Layout::check_xcr0`] applies the XSETBV rules (SDM Vol. 2B XSETBV, Vol. 1 §13.3).
//! * [`Layout::consistency`] reports CPUID data that cannot be right; [`Layout::trusted`] (from
//!   a dump) and [`Layout::verify`] are the one decision whether it may be used.
//!
//! Trust, decided once: a verdict about a whole CPU refuses inconsistent data itself
//! ([`crate::compat::check`] makes every broken rule a `cpuid.*` reason; [`crate::guest_cpuid`]
//! returns `GuestCpuidError::Inconsistent`). The form-level functions ([`crate::convert`],
//! [`crate::image`]) take a [`FormLayout`], which [`Layout::standard`] and [`Layout::compacted`]
//! build only with each component on bytes of its own beyond the header; callers that read a
//! dump build the layout with [`Layout::trusted`], as the CLI does for every command.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::layout::Layout;
//! // A Zen-3-like CPU: x87, SSE, AVX, PKRU (user), CET_U, CET_S (supervisor).
//! let mut d = CpuidDump::new("doc");
//! d.insert(0xd, 0, Regs { eax: 0x207, ebx: 0x988, ecx: 0x988, edx: 0 });
//! d.insert(0xd, 1, Regs { eax: 0xf, ebx: 0, ecx: 0x1800, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! d.insert(0xd, 9, Regs { eax: 8, ebx: 0x980, ecx: 0, edx: 0 });
//! d.insert(0xd, 11, Regs { eax: 16, ebx: 0, ecx: 1, edx: 0 });
//! d.insert(0xd, 12, Regs { eax: 24, ebx: 0, ecx: 1, edx: 0 });
//! let l = Layout::from_dump(&d);
//! let c = l.compacted(0x1a07).unwrap();
//! assert_eq!(c.offset_of(9), Some(832));   // PKRU right after AVX
//! assert_eq!(c.offset_of(11), Some(840));  // CET_U
//! assert_eq!(c.offset_of(12), Some(856));  // CET_S
//! assert_eq!(c.size, 880);
//! assert_eq!(l.standard(0x207).unwrap().size, 0x988);
//! assert!(l.consistency().is_empty());
//! ```

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::components::{bits, mask, Component, Kind};
use crate::cpuid::{CpuidDump, Leaf0D};

#[cfg(feature = "std")]
pub(crate) mod interned;

pub use crate::components::{EXTENDED_START, HEADER_OFFSET, HEADER_SIZE, LEGACY_SIZE};

/// The two formats of the XSAVE area's extended region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// Standard (non-compacted) form: XSAVE, XSAVEOPT, XRSTOR with XCOMP_BV = 0.
    Standard,
    /// Compacted form: XSAVEC, XSAVES, XRSTOR(S) with XCOMP_BV bit 63 set.
    Compacted,
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Form::Standard => "standard",
            Form::Compacted => "compacted",
        })
    }
}

/// One component's geometry on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Component number.
    pub id: u8,
    /// Size in bytes, from CPUID (0 when CPUID did not report it).
    pub size: u32,
    /// Offset in the standard form; `None` for supervisor components, which have none.
    pub standard_offset: Option<u32>,
    /// Enabled through IA32_XSS rather than XCR0.
    pub supervisor: bool,
    /// 64-byte aligned in the compacted form.
    pub align64: bool,
    /// IA32_XFD can arm this component.
    pub xfd: bool,
}

/// A component placed in one form of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Component number.
    pub id: u8,
    /// Byte offset of the component in the image.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

impl Placement {
    /// One past the last byte (saturating: the layout engine never builds a placement whose
    /// end overflows, see [`LayoutError::Overflow`]).
    pub fn end(&self) -> u32 {
        self.offset.saturating_add(self.size)
    }

    /// The byte range in the image.
    pub fn range(&self) -> core::ops::Range<usize> {
        self.offset as usize..self.end() as usize
    }
}

/// The placement list of a [`FormLayout`]: a slice of [`Placement`]s (it derefs to
/// `[Placement]`), shared between the clones of a geometry.
///
/// Cloning shares the list (no allocation); changing it through `DerefMut` first copies it
/// when it is shared, so every `FormLayout` still behaves as a value of its own. Hence two
/// lists at the same address have the same placements: the conversion plans recognise the
/// geometries they were made for by that address (a geometry cloned from a plan's, from an
/// image's or from the one the plan was made with) before comparing placement by placement
/// (`convert::plan`).
///
/// ```
/// use xstate::layout::{Placement, Placements};
/// let a: Placements = vec![Placement { id: 0, offset: 0, size: 160 }].into();
/// let mut b = a.clone();
/// assert_eq!(a.as_ptr(), b.as_ptr());        // shared
/// b[0].size = 8;                             // copied first
/// assert_eq!((a[0].size, b[0].size), (160, 8));
/// assert_ne!(a.as_ptr(), b.as_ptr());
/// for p in &a {
///     assert_eq!(p.id, 0);
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Placements(Arc<[Placement]>);

impl Default for Placements {
    /// No placement.
    fn default() -> Self {
        Placements(Arc::from(Vec::new()))
    }
}

impl core::ops::Deref for Placements {
    type Target = [Placement];
    #[inline(always)]
    fn deref(&self) -> &[Placement] {
        &self.0
    }
}

impl core::ops::DerefMut for Placements {
    /// The list, unshared first if another geometry holds it too (copy on write).
    fn deref_mut(&mut self) -> &mut [Placement] {
        if Arc::get_mut(&mut self.0).is_none() {
            self.0 = Arc::from(self.0.to_vec());
        }
        // Just unshared: the only holder (an empty slice only if that could fail).
        Arc::get_mut(&mut self.0).unwrap_or(&mut [])
    }
}

impl From<Vec<Placement>> for Placements {
    fn from(v: Vec<Placement>) -> Self {
        Placements(v.into())
    }
}

impl From<&[Placement]> for Placements {
    fn from(v: &[Placement]) -> Self {
        Placements(v.into())
    }
}

impl FromIterator<Placement> for Placements {
    fn from_iter<I: IntoIterator<Item = Placement>>(iter: I) -> Self {
        Placements(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Placements {
    type Item = &'a Placement;
    type IntoIter = core::slice::Iter<'a, Placement>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Placements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// The components of one mask placed in one form, and the total size of such an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormLayout {
    /// Standard or compacted.
    pub form: Form,
    /// The components placed (XCR0 for standard, XCOMP_BV\[62:0\] for compacted).
    pub mask: u64,
    /// The image size in bytes.
    pub size: u32,
    /// Placements in increasing component order (components 0 and 1 included when in mask).
    pub placements: Placements,
}

impl FormLayout {
    /// Where component `id` is placed, if it is in the mask.
    pub fn placement(&self, id: u8) -> Option<Placement> {
        self.placements.iter().find(|p| p.id == id).copied()
    }

    /// The offset of component `id`, if it is in the mask.
    pub fn offset_of(&self, id: u8) -> Option<u32> {
        self.placement(id).map(|p| p.offset)
    }

    /// The XCOMP_BV value an image of this layout carries: 0 for the standard form, the mask
    /// with bit 63 for the compacted form.
    pub fn xcomp_bv(&self) -> u64 {
        match self.form {
            Form::Standard => 0,
            Form::Compacted => self.mask | mask::COMPACTED,
        }
    }
}

/// The placements of one mask while a layout is built: on the stack (a mask has at most 64
/// components), so that the finished list is allocated once, at its size.
struct PlacementBuf {
    items: [Placement; 64],
    n: usize,
}

impl PlacementBuf {
    fn new() -> Self {
        PlacementBuf {
            items: [Placement {
                id: 0,
                offset: 0,
                size: 0,
            }; 64],
            n: 0,
        }
    }

    /// Appends `p`; the components of a 64-bit mask always fit.
    fn push(&mut self, p: Placement) {
        if let Some(slot) = self.items.get_mut(self.n) {
            *slot = p;
            self.n += 1;
        }
    }

    fn as_slice(&self) -> &[Placement] {
        &self.items[..self.n.min(64)]
    }
}

/// `g`, with the placement list of the equal geometry the process keeps (`interned`, std
/// only) when there is one: a layout built twice, or built after images of its geometry were
/// made, shares one list with them and with the conversion plans of that geometry, which
/// then recognise it by address.
#[inline]
fn shared_with_kept(g: FormLayout) -> FormLayout {
    #[cfg(feature = "std")]
    if let Some(kept) = interned::find(&g) {
        return FormLayout {
            placements: kept.placements.clone(),
            ..g
        };
    }
    g
}

/// `a` and `b` have as many placements, and every field of every placement equal: what a
/// conversion plan compares on every call when the placements are not the same list.
#[inline(always)]
pub(crate) fn equal_placements(a: &FormLayout, b: &FormLayout) -> bool {
    // Differences gathered without a branch: offsets and sizes in one word (adjacent fields,
    // one load each), ids in a byte of their own (no widening per placement); by index over
    // slices of one length, so that no bound is checked and no zip state is kept.
    let (a, b) = (&a.placements[..], &b.placements[..]);
    if a.len() != b.len() {
        return false;
    }
    let (mut words, mut ids) = (0u64, 0u8);
    for i in 0..a.len() {
        let (x, y) = (&a[i], &b[i]);
        words |= (u64::from(x.offset) | u64::from(x.size) << 32)
            ^ (u64::from(y.offset) | u64::from(y.size) << 32);
        ids |= x.id ^ y.id;
    }
    words == 0 && ids == 0
}

/// Why a mask cannot be laid out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The CPU does not report a size for a component of the mask.
    #[error(
        "component {id} ({name}): CPUID.(0xD,{id}).EAX reports size 0, so it cannot be placed"
    )]
    UnknownSize {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
    },
    /// A supervisor component was asked for in the standard form, which has no room for it.
    #[error("component {id} ({name}) is a supervisor component: the standard form has no place for it (SDM §13.4.2)")]
    SupervisorInStandard {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
    },
    /// A user component with standard offset inside the legacy area or header.
    #[error("component {id} ({name}): standard offset {offset} lies inside the legacy area or header (< 576)")]
    BadStandardOffset {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// Reported offset.
        offset: u32,
    },
    /// CPUID reports an offset and size whose sum does not fit in 32 bits (only corrupt or
    /// fuzzed data does): the component cannot be placed.
    #[error("component {id} ({name}): its end (offset + size, or the compacted location + size) exceeds 4 GiB; CPUID.(0xD,{id}) cannot be right")]
    Overflow {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
    },
    /// A mask with bit 63 set was given where component bits were expected.
    #[error("bit 63 is not a component: it is XCOMP_BV's compacted-form flag")]
    Bit63,
    /// Two components of the mask overlap in the standard form: CPUID data that cannot be
    /// right (SDM Vol. 1 §13.4.2 gives each component its own bytes).
    #[error("components {a} ({a_name}, bytes {a_offset}..{a_end}) and {b} ({b_name}, bytes {b_offset}..{b_end}) overlap in the standard form; CPUID.(0xD,{a}) and (0xD,{b}) cannot both be right")]
    Overlap {
        /// Lower-numbered component.
        a: u8,
        /// Its name.
        a_name: String,
        /// Its offset.
        a_offset: u32,
        /// Its end.
        a_end: u32,
        /// Higher-numbered component.
        b: u8,
        /// Its name.
        b_name: String,
        /// Its offset.
        b_offset: u32,
        /// Its end.
        b_end: u32,
    },
}

/// One XCR0 rule of SDM Vol. 2B XSETBV (and DESIGN.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Xcr0Rule {
    /// XCR0\[0\] (x87) must be 1.
    X87Required,
    /// No bit outside CPUID.(0xD,0):EDX:EAX may be set.
    Unsupported,
    /// Supervisor components are enabled in IA32_XSS, never XCR0.
    SupervisorBit,
    /// AVX (bit 2) requires SSE (bit 1).
    AvxNeedsSse,
    /// The AVX-512 bits 5..7 are all set or all clear, and set only with AVX.
    Avx512AllOrNone,
    /// AVX-512 requires AVX.
    Avx512NeedsAvx,
    /// MPX bits 3 and 4 are both set or both clear.
    MpxPair,
    /// AMX bits 17 and 18 are both set or both clear.
    AmxPair,
    /// APX (bit 19) and MPX (bits 3, 4) are never enabled together.
    ApxWithMpx,
}

impl Xcr0Rule {
    /// A short identifier (`x87_required`, `avx_needs_sse`, …).
    pub fn id(&self) -> &'static str {
        match self {
            Xcr0Rule::X87Required => "x87_required",
            Xcr0Rule::Unsupported => "unsupported",
            Xcr0Rule::SupervisorBit => "supervisor_bit",
            Xcr0Rule::AvxNeedsSse => "avx_needs_sse",
            Xcr0Rule::Avx512AllOrNone => "avx512_all_or_none",
            Xcr0Rule::Avx512NeedsAvx => "avx512_needs_avx",
            Xcr0Rule::MpxPair => "mpx_pair",
            Xcr0Rule::AmxPair => "amx_pair",
            Xcr0Rule::ApxWithMpx => "apx_with_mpx",
        }
    }

    /// The rule in words.
    pub fn text(&self) -> &'static str {
        match self {
            Xcr0Rule::X87Required => "XCR0 bit 0 (x87) must be set",
            Xcr0Rule::Unsupported => "XCR0 has a bit outside CPUID.(0xD,0):EDX:EAX",
            Xcr0Rule::SupervisorBit => {
                "XCR0 has a supervisor component bit (those belong in IA32_XSS)"
            }
            Xcr0Rule::AvxNeedsSse => "AVX (bit 2) requires SSE (bit 1)",
            Xcr0Rule::Avx512AllOrNone => {
                "the AVX-512 bits (opmask, zmm_hi256, hi16_zmm) must be all set or all clear"
            }
            Xcr0Rule::Avx512NeedsAvx => "AVX-512 (bits 5-7) requires AVX (bit 2)",
            Xcr0Rule::MpxPair => {
                "MPX bits 3 (bndregs) and 4 (bndcsr) must be both set or both clear"
            }
            Xcr0Rule::AmxPair => {
                "AMX bits 17 (xtilecfg) and 18 (xtiledata) must be both set or both clear"
            }
            Xcr0Rule::ApxWithMpx => "APX (bit 19) cannot be enabled together with MPX (bits 3-4)",
        }
    }
}

/// An XCR0 value XSETBV would refuse with #GP, with every rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid XCR0 {value:#x}: {}", rules_text(.rules))]
pub struct Xcr0Error {
    /// The refused value.
    pub value: u64,
    /// Every broken rule, in the order of [`Xcr0Rule`].
    pub rules: Vec<Xcr0Rule>,
}

fn rules_text(rules: &[Xcr0Rule]) -> String {
    let mut s = String::new();
    for (i, r) in rules.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(r.text());
        s.push_str(" [");
        s.push_str(r.id());
        s.push(']');
    }
    s
}

/// An IA32_XSS value WRMSR would refuse with #GP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid IA32_XSS {value:#x}: bits {bad:#x} ({}) are not supervisor components supported by CPUID.(0xD,1):EDX:ECX", crate::components::mask_names(*.bad))]
pub struct XssError {
    /// The refused value.
    pub value: u64,
    /// The bits that are not allowed.
    pub bad: u64,
}

/// Something wrong with the CPUID data itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inconsistency {
    /// A supported component reports size 0 (seen in dumps taken under some hypervisors).
    ZeroSize {
        /// Component number.
        id: u8,
    },
    /// A supported user component reports a standard offset inside the legacy area/header.
    OffsetInLegacy {
        /// Component number.
        id: u8,
        /// Reported offset.
        offset: u32,
    },
    /// Two supported user components overlap in the standard form.
    Overlap {
        /// Lower-numbered component.
        a: u8,
        /// Higher-numbered component.
        b: u8,
    },
    /// The computed standard size for every supported user component differs from
    /// CPUID.(0xD,0).ECX.
    MaxSizeMismatch {
        /// What the layout engine computes.
        computed: u32,
        /// What CPUID.(0xD,0).ECX reports.
        reported: u32,
    },
    /// A bit is in both supported masks, or the ECX supervisor flag contradicts the mask.
    KindMismatch {
        /// Component number.
        id: u8,
    },
    /// The dump has no subleaf for a supported component (or no subleaf 0/1 on a CPU with
    /// XSAVE).
    MissingSubleaf {
        /// Component number (0 and 1: the enumeration subleaves).
        id: u8,
    },
    /// A supported component reports a size or an end (offset + size) beyond
    /// [`MAX_AREA_SIZE`]: no CPU has such a component, and an image of it cannot be allocated
    /// safely.
    AbsurdSize {
        /// Component number.
        id: u8,
        /// Reported size (CPUID.(0xD,id).EAX).
        size: u32,
        /// Reported standard offset (CPUID.(0xD,id).EBX; 0 for supervisor components).
        offset: u32,
    },
    /// CPUID.(0xD,0).ECX or EBX, or CPUID.(0xD,1).EBX, reports an area beyond
    /// [`MAX_AREA_SIZE`].
    AbsurdAreaSize {
        /// Which register: `"(0xD,0).ECX"`, `"(0xD,0).EBX"` or `"(0xD,1).EBX"`.
        register: &'static str,
        /// Reported size.
        reported: u32,
    },
    /// CPUID.(0xD,0).EBX (the standard size for the XCR0 in force) exceeds CPUID.(0xD,0).ECX
    /// (the standard size for every supported component): XCR0 enables only supported
    /// components, so this cannot be (SDM Vol. 1 §13.2).
    CurrentSizeAboveMax {
        /// CPUID.(0xD,0).EBX.
        current: u32,
        /// CPUID.(0xD,0).ECX.
        max: u32,
    },
    /// The dump records the XCR0 in force, and CPUID.(0xD,0).EBX differs from the standard
    /// size computed for it (SDM Vol. 1 §13.2: EBX is the size for the features enabled in
    /// XCR0).
    CurrentSizeMismatch {
        /// The recorded XCR0.
        xcr0: u64,
        /// What the layout engine computes for it.
        computed: u32,
        /// CPUID.(0xD,0).EBX.
        reported: u32,
    },
    /// The dump records the XCR0 in force (and IA32_XSS, when known), the CPU has XSAVES, and
    /// no IA32_XSS value gives the compacted size CPUID.(0xD,1).EBX reports (SDM Vol. 1 §13.2:
    /// EBX is the size of the area for XCR0 | IA32_XSS).
    CompactedSizeMismatch {
        /// The recorded XCR0.
        xcr0: u64,
        /// The compacted size computed for XCR0 | IA32_XSS (IA32_XSS = the recorded value, or 0
        /// when unknown and no value fits).
        computed: u32,
        /// CPUID.(0xD,1).EBX.
        reported: u32,
    },
}

impl Inconsistency {
    /// The rule's identifier (`overlap`, `zero_size`, `offset_in_legacy`, `max_size_mismatch`,
    /// `kind_mismatch`, `missing_subleaf`, `absurd_size`, `absurd_area_size`,
    /// `current_size_above_max`, `current_size_mismatch`, `compacted_size_mismatch`).
    pub fn rule(&self) -> &'static str {
        match self {
            Inconsistency::ZeroSize { .. } => "zero_size",
            Inconsistency::OffsetInLegacy { .. } => "offset_in_legacy",
            Inconsistency::Overlap { .. } => "overlap",
            Inconsistency::MaxSizeMismatch { .. } => "max_size_mismatch",
            Inconsistency::KindMismatch { .. } => "kind_mismatch",
            Inconsistency::MissingSubleaf { .. } => "missing_subleaf",
            Inconsistency::AbsurdSize { .. } => "absurd_size",
            Inconsistency::AbsurdAreaSize { .. } => "absurd_area_size",
            Inconsistency::CurrentSizeAboveMax { .. } => "current_size_above_max",
            Inconsistency::CurrentSizeMismatch { .. } => "current_size_mismatch",
            Inconsistency::CompactedSizeMismatch { .. } => "compacted_size_mismatch",
        }
    }
}

/// The largest component size, component end or area size accepted from CPUID data (1 MiB):
/// far above any real CPU (AMX's 11008-byte standard area is the largest known), small enough
/// that laying out or allocating an image of it is harmless.
pub const MAX_AREA_SIZE: u32 = 1 << 20;

/// CPUID data that breaks at least one consistency rule, with every rule it breaks: the
/// refusal of [`Layout::verify`] and [`Layout::trusted`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{dump}: inconsistent CPUID leaf 0xD: {}", problems_text(.problems))]
pub struct InconsistentCpuid {
    /// Where the data came from (the dump's source).
    pub dump: String,
    /// Every broken rule (never empty).
    pub problems: Vec<Inconsistency>,
}

fn problems_text(p: &[Inconsistency]) -> String {
    let mut s = String::new();
    for (i, x) in p.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&alloc::format!("{x} [{}]", x.rule()));
    }
    s
}

impl fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Inconsistency::ZeroSize { id } => write!(
                f,
                "component {id} ({}) is supported but CPUID.(0xD,{id}).EAX reports size 0",
                Component::name_of(id)
            ),
            Inconsistency::OffsetInLegacy { id, offset } => write!(
                f,
                "component {id} ({}) has standard offset {offset}, inside the legacy area or header",
                Component::name_of(id)
            ),
            Inconsistency::Overlap { a, b } => write!(
                f,
                "components {a} ({}) and {b} ({}) overlap in the standard form",
                Component::name_of(a),
                Component::name_of(b)
            ),
            Inconsistency::MaxSizeMismatch { computed, reported } => write!(
                f,
                "computed standard size for all supported user components is {computed}, but CPUID.(0xD,0).ECX reports {reported}"
            ),
            Inconsistency::KindMismatch { id } => write!(
                f,
                "component {id} ({}): the supported masks and CPUID.(0xD,{id}).ECX[0] disagree on user vs supervisor",
                Component::name_of(id)
            ),
            Inconsistency::MissingSubleaf { id } if id < 2 => write!(
                f,
                "the CPU has XSAVE but the data has no CPUID.(0xD,{id}) subleaf"
            ),
            Inconsistency::MissingSubleaf { id } => write!(
                f,
                "component {id} ({}) is supported but the data has no CPUID.(0xD,{id}) subleaf",
                Component::name_of(id)
            ),
            Inconsistency::AbsurdSize { id, size, offset } => write!(
                f,
                "component {id} ({}) reports size {size} at standard offset {offset} (CPUID.(0xD,{id}).EAX/EBX), beyond any real CPU (limit {MAX_AREA_SIZE} bytes)",
                Component::name_of(id)
            ),
            Inconsistency::AbsurdAreaSize { register, reported } => write!(
                f,
                "CPUID.{register} reports an XSAVE area of {reported} bytes, beyond any real CPU (limit {MAX_AREA_SIZE} bytes)"
            ),
            Inconsistency::CurrentSizeAboveMax { current, max } => write!(
                f,
                "CPUID.(0xD,0).EBX = {current} (size for the XCR0 in force) exceeds CPUID.(0xD,0).ECX = {max} (size for every supported component)"
            ),
            Inconsistency::CurrentSizeMismatch {
                xcr0,
                computed,
                reported,
            } => write!(
                f,
                "computed standard size for the recorded XCR0 {xcr0:#x} is {computed}, but CPUID.(0xD,0).EBX reports {reported}"
            ),
            Inconsistency::CompactedSizeMismatch {
                xcr0,
                computed,
                reported,
            } => write!(
                f,
                "no IA32_XSS makes the compacted size for the recorded XCR0 {xcr0:#x} equal CPUID.(0xD,1).EBX = {reported} (computed {computed} for XCR0 | IA32_XSS)"
            ),
        }
    }
}

/// One CPU's XSAVE geometry, from CPUID leaf 0xD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    leaf: Leaf0D,
    xsave: bool,
    /// `std_end[i]`: the largest end (offset + size, at least 576) of a user component ≤ i
    /// with a usable standard placement — an upper bound of the standard extent of any mask
    /// whose highest component is i, exact when offsets grow with the component number (every
    /// real CPU). Derived from `leaf` once, for the O(1) size rule of validation.
    std_end: [u32; 64],
    /// Components with no usable standard placement (size 0, offset inside the legacy area
    /// or header, supervisor, an end past 4 GiB, or bytes shared with another component).
    std_unplaced: u64,
}

impl Layout {
    /// The layout of the CPU a dump describes.
    pub fn from_dump(d: &CpuidDump) -> Self {
        // A dump that lacks leaf 1 but has leaf 0xD is taken to support XSAVE.
        let xsave = d.has_xsave() || (d.get(1, 0).is_none() && d.get(0xd, 0).is_some());
        Layout::with(d.leaf_0d(), xsave)
    }

    fn with(leaf: Leaf0D, xsave: bool) -> Self {
        let mut std_end = [EXTENDED_START; 64];
        let mut std_unplaced = 0u64;
        let mut end = EXTENDED_START;
        for i in 2..64u8 {
            let c = leaf.component(i);
            match c.offset.checked_add(c.size) {
                Some(e) if c.size != 0 && c.offset >= EXTENDED_START && !c.supervisor => {
                    end = end.max(e);
                }
                _ => std_unplaced |= 1u64 << i,
            }
            std_end[usize::from(i)] = end;
        }
        // Two components on the same bytes: `standard` refuses every mask holding both
        // (SDM Vol. 1 §13.4.2); the table says nothing for either.
        for a in bits(!std_unplaced & !mask::LEGACY) {
            for b in bits(!std_unplaced & !mask::LEGACY & ((u64::MAX << a) << 1)) {
                let (x, y) = (leaf.component(a), leaf.component(b));
                if x.offset < y.offset.saturating_add(y.size)
                    && y.offset < x.offset.saturating_add(x.size)
                {
                    std_unplaced |= (1u64 << a) | (1u64 << b);
                }
            }
        }
        Layout {
            leaf,
            xsave,
            std_end,
            std_unplaced,
        }
    }

    /// An upper bound of the standard-form extent of the user components `m` (bits 0 and 1
    /// included), in O(1): exact when offsets grow with the component number, as on every
    /// real CPU. None when a component of `m` has no usable standard placement (see
    /// [`standard`](Self::standard) for the error naming it). For the validation fast path.
    #[inline]
    pub fn standard_extent_bound(&self, m: u64) -> Option<u32> {
        let ext = m & !mask::LEGACY;
        if ext & self.std_unplaced != 0 {
            return None;
        }
        if ext == 0 {
            return Some(EXTENDED_START);
        }
        Some(self.std_end[63 - ext.leading_zeros() as usize])
    }

    /// The layout from a typed leaf 0xD view (the CPU is taken to support XSAVE).
    pub fn from_leaf(leaf: Leaf0D) -> Self {
        Layout::with(leaf, true)
    }

    /// The leaf 0xD view this layout was computed from.
    pub fn leaf(&self) -> &Leaf0D {
        &self.leaf
    }

    /// False for a CPU without XSAVE (CPUID.1:ECX\[26\] = 0): only FXSAVE's 512-byte area exists.
    pub fn has_xsave(&self) -> bool {
        self.xsave
    }

    /// The user components XCR0 may enable (CPUID.(0xD,0):EDX:EAX); 0 without XSAVE.
    pub fn xcr0_supported(&self) -> u64 {
        if self.xsave {
            self.leaf.xcr0_supported()
        } else {
            0
        }
    }

    /// The supervisor components IA32_XSS may enable (CPUID.(0xD,1):EDX:ECX), when the CPU has
    /// XSAVES; 0 otherwise.
    pub fn xss_supported(&self) -> u64 {
        if self.xsave && self.leaf.has_xsaves() {
            self.leaf.xss_supported()
        } else {
            0
        }
    }

    /// Is component `id` a supervisor component on this CPU? The supported masks decide; for a
    /// component in neither, CPUID.(0xD,id).ECX\[0\], then the catalog.
    pub fn is_supervisor(&self, id: u8) -> bool {
        if id >= 63 {
            return false;
        }
        let bit = 1u64 << id;
        if self.leaf.xss_supported() & bit != 0 {
            return true;
        }
        if self.leaf.xcr0_supported() & bit != 0 {
            return false;
        }
        if self.leaf.component(id).supervisor {
            return true;
        }
        Component::kind_of(id) == Some(Kind::Supervisor)
    }

    /// The geometry of component `id` (0..=62).
    pub fn geometry(&self, id: u8) -> Geometry {
        let c = self.leaf.component(id);
        let supervisor = self.is_supervisor(id);
        Geometry {
            id,
            size: c.size,
            standard_offset: if supervisor { None } else { Some(c.offset) },
            supervisor,
            align64: c.align64,
            xfd: c.xfd,
        }
    }

    /// Places the components of `xcr0` in the standard form. Size = max(offset + size), at
    /// least 576 (SDM §13.4.2). Bit 63 and supervisor bits are errors.
    ///
    /// ```
    /// # use xstate::cpuid::{CpuidDump, Regs};
    /// # use xstate::layout::Layout;
    /// let mut d = CpuidDump::new("doc");
    /// d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
    /// d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
    /// let s = Layout::from_dump(&d).standard(0x3).unwrap();
    /// assert_eq!(s.size, 576);
    /// ```
    pub fn standard(&self, xcr0: u64) -> Result<FormLayout, LayoutError> {
        if xcr0 & mask::COMPACTED != 0 {
            return Err(LayoutError::Bit63);
        }
        let mut placements = PlacementBuf::new();
        let mut size = EXTENDED_START;
        for id in bits(xcr0) {
            let g = self.geometry(id);
            let Some(offset) = g.standard_offset else {
                return Err(LayoutError::SupervisorInStandard {
                    id,
                    name: Component::name_of(id),
                });
            };
            if g.size == 0 {
                return Err(LayoutError::UnknownSize {
                    id,
                    name: Component::name_of(id),
                });
            }
            if id >= 2 && offset < EXTENDED_START {
                return Err(LayoutError::BadStandardOffset {
                    id,
                    name: Component::name_of(id),
                    offset,
                });
            }
            let Some(end) = offset.checked_add(g.size) else {
                return Err(LayoutError::Overflow {
                    id,
                    name: Component::name_of(id),
                });
            };
            let p = Placement {
                id,
                offset,
                size: g.size,
            };
            size = size.max(end);
            placements.push(p);
        }
        // Each component has its own bytes: an overlap would make one component's register
        // values another's (SDM Vol. 1 §13.4.2).
        let placed = placements.as_slice();
        for (i, a) in placed.iter().enumerate().filter(|(_, p)| p.id >= 2) {
            for b in placed.iter().skip(i + 1) {
                if a.offset < b.end() && b.offset < a.end() {
                    return Err(LayoutError::Overlap {
                        a: a.id,
                        a_name: Component::name_of(a.id),
                        a_offset: a.offset,
                        a_end: a.end(),
                        b: b.id,
                        b_name: Component::name_of(b.id),
                        b_offset: b.offset,
                        b_end: b.end(),
                    });
                }
            }
        }
        Ok(shared_with_kept(FormLayout {
            form: Form::Standard,
            mask: xcr0,
            size,
            placements: placements.as_slice().into(),
        }))
    }

    /// Places the components of `xcomp_bv` (bit 63 ignored) in the compacted form
    /// (SDM §13.4.3): components 0 and 1 at their legacy offsets; each i ≥ 2 in increasing
    /// order at the running location, rounded up to 64 when its align bit is set.
    pub fn compacted(&self, xcomp_bv: u64) -> Result<FormLayout, LayoutError> {
        let m = xcomp_bv & !mask::COMPACTED;
        let mut placements = PlacementBuf::new();
        let mut loc = EXTENDED_START;
        for id in bits(m) {
            let g = self.geometry(id);
            if g.size == 0 && id >= 2 {
                return Err(LayoutError::UnknownSize {
                    id,
                    name: Component::name_of(id),
                });
            }
            if id < 2 {
                placements.push(Placement {
                    id,
                    offset: self.leaf.component(id).offset,
                    size: self.leaf.component(id).size,
                });
                continue;
            }
            let overflow = || LayoutError::Overflow {
                id,
                name: Component::name_of(id),
            };
            if g.align64 {
                loc = loc.checked_next_multiple_of(64).ok_or_else(overflow)?;
            }
            placements.push(Placement {
                id,
                offset: loc,
                size: g.size,
            });
            loc = loc.checked_add(g.size).ok_or_else(overflow)?;
        }
        Ok(shared_with_kept(FormLayout {
            form: Form::Compacted,
            mask: m,
            size: loc,
            placements: placements.as_slice().into(),
        }))
    }

    /// Places `mask` in the given form.
    pub fn form(&self, form: Form, mask: u64) -> Result<FormLayout, LayoutError> {
        match form {
            Form::Standard => self.standard(mask),
            Form::Compacted => self.compacted(mask),
        }
    }

    /// The standard-form size for every supported user component, as computed here (compare
    /// [`Leaf0D::max_standard_size`]). Components without a usable geometry are skipped.
    pub fn max_standard_size(&self) -> u32 {
        let mut size = EXTENDED_START;
        for id in bits(self.xcr0_supported()) {
            let g = self.geometry(id);
            if let Some(off) = g.standard_offset {
                if id >= 2 {
                    size = size.max(off.saturating_add(g.size));
                }
            }
        }
        size
    }

    /// Applies the XSETBV rules to an XCR0 value on this CPU. Every broken rule is reported.
    ///
    /// ```
    /// # use xstate::cpuid::{CpuidDump, Regs};
    /// # use xstate::layout::{Layout, Xcr0Rule};
    /// let mut d = CpuidDump::new("doc");
    /// d.insert(0xd, 0, Regs { eax: 0xe7, ebx: 0, ecx: 0, edx: 0 });
    /// let l = Layout::from_dump(&d);
    /// assert!(l.check_xcr0(0xe7).is_ok());
    /// let e = l.check_xcr0(0x67).unwrap_err();
    /// assert_eq!(e.rules, vec![Xcr0Rule::Avx512AllOrNone]);
    /// ```
    pub fn check_xcr0(&self, xcr0: u64) -> Result<(), Xcr0Error> {
        check_xcr0_rules(xcr0, self.xcr0_supported(), self.leaf.xss_supported())
    }

    /// Checks an IA32_XSS value: only supported supervisor bits.
    pub fn check_xss(&self, xss: u64) -> Result<(), XssError> {
        let bad = xss & !self.xss_supported();
        if bad != 0 {
            Err(XssError { value: xss, bad })
        } else {
            Ok(())
        }
    }

    /// Reports everything wrong with the CPUID data (empty when consistent). A CPU without
    /// XSAVE is consistent: it simply has no leaf 0xD.
    pub fn consistency(&self) -> Vec<Inconsistency> {
        let mut out = Vec::new();
        if !self.xsave {
            return out;
        }
        let user = self.leaf.xcr0_supported();
        let sup = self.leaf.xss_supported();
        if !self.leaf.is_present(0) {
            out.push(Inconsistency::MissingSubleaf { id: 0 });
        }
        for (register, reported) in [
            ("(0xD,0).ECX", self.leaf.max_standard_size()),
            ("(0xD,0).EBX", self.leaf.current_standard_size()),
            ("(0xD,1).EBX", self.leaf.current_compacted_size()),
        ] {
            if reported > MAX_AREA_SIZE {
                out.push(Inconsistency::AbsurdAreaSize { register, reported });
            }
        }
        let (current, max) = (
            self.leaf.current_standard_size(),
            self.leaf.max_standard_size(),
        );
        if current > max && max <= MAX_AREA_SIZE {
            out.push(Inconsistency::CurrentSizeAboveMax { current, max });
        }
        let mut absurd = 0u64;
        for id in bits((user | sup) & !mask::LEGACY) {
            if id == 63 {
                continue;
            }
            let c = self.leaf.component(id);
            if !self.leaf.is_present(id) {
                out.push(Inconsistency::MissingSubleaf { id });
            } else if c.size == 0 {
                out.push(Inconsistency::ZeroSize { id });
            } else {
                let offset = if sup & (1 << id) != 0 { 0 } else { c.offset };
                if c.size > MAX_AREA_SIZE || offset.saturating_add(c.size) > MAX_AREA_SIZE {
                    absurd |= 1 << id;
                    out.push(Inconsistency::AbsurdSize {
                        id,
                        size: c.size,
                        offset,
                    });
                }
            }
            let in_both = user & sup & (1 << id) != 0;
            let flag_wrong =
                self.leaf.is_present(id) && c.size != 0 && c.supervisor != (sup & (1 << id) != 0);
            if in_both || flag_wrong {
                out.push(Inconsistency::KindMismatch { id });
            }
        }
        // Standard-form geometry of the user components.
        let mut spans: Vec<(u8, u32, u32)> = Vec::new();
        for id in bits(user & !mask::LEGACY) {
            if id == 63 {
                continue;
            }
            let c = self.leaf.component(id);
            if c.size == 0 || absurd & (1 << id) != 0 {
                continue;
            }
            if c.offset < EXTENDED_START {
                out.push(Inconsistency::OffsetInLegacy {
                    id,
                    offset: c.offset,
                });
                continue;
            }
            spans.push((id, c.offset, c.offset.saturating_add(c.size)));
        }
        for (i, a) in spans.iter().enumerate() {
            for b in spans.iter().skip(i + 1) {
                if a.1 < b.2 && b.1 < a.2 {
                    out.push(Inconsistency::Overlap { a: a.0, b: b.0 });
                }
            }
        }
        // Without subleaf 0 there is no ECX to compare (MissingSubleaf { id: 0 } says so).
        let computed = self.max_standard_size();
        let reported = self.leaf.max_standard_size();
        if computed != reported && self.leaf.is_present(0) {
            out.push(Inconsistency::MaxSizeMismatch { computed, reported });
        }
        out
    }

    /// [`consistency`](Self::consistency) plus the rules that need the XCR0 (and IA32_XSS)
    /// in force when the data was taken, where known: CPUID.(0xD,0).EBX is the standard size
    /// for XCR0, and, on a CPU with XSAVES, CPUID.(0xD,1).EBX the compacted size for
    /// XCR0 | IA32_XSS (SDM Vol. 1 §13.2). With `xss` unknown, some supported IA32_XSS must
    /// give that size. An `xcr0` that breaks an XSETBV rule or names unsupported components
    /// is itself inconsistent data and is reported as a size mismatch of its standard size.
    pub fn consistency_with(&self, xcr0: Option<u64>, xss: Option<u64>) -> Vec<Inconsistency> {
        let mut out = self.consistency();
        let Some(xcr0) = xcr0 else {
            return out;
        };
        if !self.xsave || !out.is_empty() {
            return out;
        }
        let reported = self.leaf.current_standard_size();
        let computed = self
            .standard(xcr0 & self.xcr0_supported())
            .map(|f| f.size)
            .unwrap_or(0);
        if computed != reported || xcr0 & !self.xcr0_supported() != 0 {
            out.push(Inconsistency::CurrentSizeMismatch {
                xcr0,
                computed,
                reported,
            });
            return out;
        }
        if self.leaf.has_xsaves() {
            let reported = self.leaf.current_compacted_size();
            let fits = match xss {
                Some(x) => self.compacted(xcr0 | x).is_ok_and(|c| c.size == reported),
                None => !self.infer_xss(xcr0).is_empty(),
            };
            if !fits {
                let computed = self
                    .compacted(xcr0 | xss.unwrap_or(0))
                    .map(|c| c.size)
                    .unwrap_or(0);
                out.push(Inconsistency::CompactedSizeMismatch {
                    xcr0,
                    computed,
                    reported,
                });
            }
        }
        out
    }

    /// Ok when the CPUID data breaks no consistency rule ([`consistency`](Self::consistency));
    /// otherwise every broken rule, for the data named `source`. Every verdict that rests on a
    /// layout (compatibility, conversion between layouts, guest CPUID) calls this first.
    pub fn verify(&self, source: &str) -> Result<(), InconsistentCpuid> {
        let problems = self.consistency();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InconsistentCpuid {
                dump: String::from(source),
                problems,
            })
        }
    }

    /// The layout of a dump, only when its leaf 0xD breaks no consistency rule, including the
    /// rules on CPUID.(0xD,0).EBX and (0xD,1).EBX when the dump records XCR0
    /// ([`consistency_with`](Self::consistency_with)).
    ///
    /// ```
    /// use xstate::cpuid::{CpuidDump, Regs};
    /// use xstate::layout::Layout;
    /// let mut d = CpuidDump::new("overlap.txt");
    /// d.insert(0xd, 0, Regs { eax: 0x27, ebx: 0x340, ecx: 0x340, edx: 0 });
    /// d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
    /// d.insert(0xd, 5, Regs { eax: 64, ebx: 576, ecx: 0, edx: 0 }); // on top of AVX
    /// let e = Layout::trusted(&d).unwrap_err();
    /// assert_eq!(e.problems[0].rule(), "overlap");
    /// assert!(e.to_string().starts_with("overlap.txt: inconsistent CPUID leaf 0xD"));
    /// ```
    pub fn trusted(d: &CpuidDump) -> Result<Layout, InconsistentCpuid> {
        let l = Layout::from_dump(d);
        let problems = l.consistency_with(d.xcr0, None);
        if problems.is_empty() {
            Ok(l)
        } else {
            Err(InconsistentCpuid {
                dump: d.source.clone(),
                problems,
            })
        }
    }

    /// Components whose CPUID size differs from the catalog's architectural content size
    /// (for example a 64-byte PKRU on Zen 2): not an error, worth a note.
    pub fn size_notes(&self) -> Vec<(u8, u32, u32)> {
        let mut v = Vec::new();
        for id in bits((self.xcr0_supported() | self.xss_supported()) & !mask::LEGACY) {
            if let Some(c) = Component::get(id) {
                let size = self.leaf.component(id).size;
                if size != 0 && size != c.arch_size {
                    v.push((id, size, c.arch_size));
                }
            }
        }
        v
    }

    /// The IA32_XSS values whose compacted size with `xcr0` equals CPUID.(0xD,1).EBX: on a
    /// host this reveals which supervisor components the kernel enabled. Empty when none fits.
    pub fn infer_xss(&self, xcr0: u64) -> Vec<u64> {
        let target = self.leaf.current_compacted_size();
        let sup = self.xss_supported();
        let mut out = Vec::new();
        if target == 0 || sup.count_ones() > 12 {
            return out;
        }
        // Enumerate subsets of the supported supervisor mask.
        let mut sub = sup;
        loop {
            if let Ok(c) = self.compacted(xcr0 | sub) {
                if c.size == target {
                    out.push(sub);
                }
            }
            if sub == 0 {
                break;
            }
            sub = (sub - 1) & sup;
        }
        out.sort_unstable();
        out
    }
}

/// The XCR0 rules against explicit supported masks (see [`Layout::check_xcr0`]).
pub fn check_xcr0_rules(
    xcr0: u64,
    user_supported: u64,
    xss_supported: u64,
) -> Result<(), Xcr0Error> {
    let mut rules = Vec::new();
    let has = |m: u64| xcr0 & m == m;
    let any = |m: u64| xcr0 & m != 0;
    if !has(mask::X87) {
        rules.push(Xcr0Rule::X87Required);
    }
    let supervisor = (xss_supported | mask::SUPERVISOR_KNOWN) & !user_supported;
    if xcr0 & !user_supported & !supervisor != 0 {
        rules.push(Xcr0Rule::Unsupported);
    }
    if any(supervisor) {
        rules.push(Xcr0Rule::SupervisorBit);
    }
    if has(mask::AVX) && !has(mask::SSE) {
        rules.push(Xcr0Rule::AvxNeedsSse);
    }
    if any(mask::AVX512) && !has(mask::AVX512) {
        rules.push(Xcr0Rule::Avx512AllOrNone);
    }
    if any(mask::AVX512) && !has(mask::AVX) {
        rules.push(Xcr0Rule::Avx512NeedsAvx);
    }
    if any(mask::MPX) && !has(mask::MPX) {
        rules.push(Xcr0Rule::MpxPair);
    }
    if any(mask::AMX) && !has(mask::AMX) {
        rules.push(Xcr0Rule::AmxPair);
    }
    if has(mask::APX) && any(mask::MPX) {
        rules.push(Xcr0Rule::ApxWithMpx);
    }
    if rules.is_empty() {
        Ok(())
    } else {
        Err(Xcr0Error { value: xcr0, rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::Regs;

    /// The standard-extent table of validation's fast size rule on layouts no real CPU has:
    /// components out of offset order (an upper bound, never below the exact size) and
    /// components sharing bytes (no answer for either, as `standard` refuses them together).
    #[test]
    fn standard_extent_table_bounds_odd_layouts() {
        let mut d = CpuidDump::new("odd");
        let r = |eax, ebx| Regs {
            eax,
            ebx,
            ecx: 0,
            edx: 0,
        };
        d.insert(0xd, 0, r(0x3e7, 0x1000));
        d.insert(0xd, 2, r(256, 2000)); // AVX after opmask
        d.insert(0xd, 5, r(64, 576));
        d.insert(0xd, 6, r(512, 640));
        d.insert(0xd, 7, r(1024, 1152));
        d.insert(0xd, 8, r(128, 1152)); // on Hi16_ZMM's bytes
        d.insert(0xd, 9, r(8, 3000));
        let l = Layout::from_dump(&d);
        for m in [
            0x3u64, 0x7, 0x23, 0x27, 0x63, 0xa3, 0x207, 0x2a7, 0xe3, 0x1a3, 0x183,
        ] {
            let exact = l.standard(m).ok().map(|g| g.size);
            let bound = l.standard_extent_bound(m);
            match (exact, bound) {
                (Some(e), Some(b)) => assert!(b >= e, "mask {m:#x}: bound {b} < exact {e}"),
                (None, b) => assert_eq!(b, None, "mask {m:#x}: refused by standard"),
                (Some(_), None) => {} // conservative: the detailed path decides
            }
        }
        assert_eq!(l.standard_extent_bound(0x83), None);
        assert_eq!(l.standard_extent_bound(0x103), None);
        // Out of order: the bound of {opmask} counts AVX (a lower component ending later):
        // too large, so the fast path says "look closer" and the detailed path decides.
        assert_eq!(l.standard(0x23).unwrap().size, 640);
        assert_eq!(l.standard_extent_bound(0x23), Some(2256));
    }

    /// Corrupt CPUID geometry whose offset + size passes 4 GiB is an error, never an overflow
    /// panic in debug builds (found reviewing the engine for the fuzz targets, which lay out
    /// every dump they parse).
    #[test]
    fn offsets_near_u32_max_are_errors() {
        let mut d = CpuidDump::new("corrupt");
        d.insert(
            0xd,
            0,
            Regs {
                eax: 0x207,
                ebx: 0,
                ecx: u32::MAX,
                edx: 0,
            },
        );
        d.insert(
            0xd,
            1,
            Regs {
                eax: 0xf,
                ebx: 0,
                ecx: 0,
                edx: 0,
            },
        );
        d.insert(
            0xd,
            2,
            Regs {
                eax: 0x100,
                ebx: u32::MAX - 0x10,
                ecx: 0,
                edx: 0,
            },
        );
        d.insert(
            0xd,
            9,
            Regs {
                eax: u32::MAX,
                ebx: 0x240,
                ecx: 2,
                edx: 0,
            },
        );
        let l = Layout::from_dump(&d);
        assert!(matches!(
            l.standard(0x7),
            Err(LayoutError::Overflow { id: 2, .. })
        ));
        assert!(matches!(
            l.compacted(0x207),
            Err(LayoutError::Overflow { id: 9, .. })
        ));
        assert!(!l.consistency().is_empty());
        let _ = l.infer_xss(0x207);
        let p = Placement {
            id: 2,
            offset: u32::MAX,
            size: 2,
        };
        assert_eq!(p.end(), u32::MAX);
    }
}
