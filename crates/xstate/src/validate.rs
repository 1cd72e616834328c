//! Validation profiles: would this image be accepted by XRSTOR (standard or compacted form),
//! XRSTORS, or KVM_SET_XSAVE? Each profile returns **every** violation — rule, byte offset,
//! offending value and a sentence — not just the first.
//!
//! The profiles encode exactly the conditions of DESIGN.md §5 (Intel SDM Vol. 1 §13.8,
//! Vol. 2B XRSTOR/XRSTORS "Protected Mode Exceptions") and §6 (KVM_SET_XSAVE, measured on the
//! real kernel in §9). They read only the header and MXCSR (and, for XRSTORS, supervisor
//! component values), so they work on any bytes, however mangled: no layout is needed.
//!
//! ```
//! use xstate::validate::{validate, Profile, RestoreConfig, Rule};
//! let mut img = vec![0u8; 2432];
//! img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
//! img[512] = 0x07; // XSTATE_BV: x87, SSE, AVX
//! let cfg = RestoreConfig::new(0xe7, 0xffff);
//! assert!(validate(&img, &Profile::Xrstor(cfg)).is_empty());
//! img[512 + 7] = 0x80; // XSTATE_BV bit 63
//! img[530] = 1;        // reserved header byte 18
//! let v = validate(&img, &Profile::Xrstor(cfg));
//! let rules: Vec<Rule> = v.iter().map(|v| v.rule).collect();
//! assert_eq!(rules, [Rule::XstateBvNotEnabled, Rule::HeaderReserved]);
//! assert_eq!(v[1].offset, 528);
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::components::{bits, mask, mask_names};
use crate::image::{
    raw_mxcsr, raw_xcomp_bv, raw_xstate_bv, HEADER_RESERVED_OFFSET, MIN_SIZE, MXCSR_OFFSET,
    XCOMP_BV_OFFSET, XSTATE_BV_OFFSET,
};
use crate::layout::Layout;

/// The MXCSR mask a CPU reports as 0 in FXSAVE's MXCSR_MASK field stands for 0xFFBF (SDM
/// Vol. 1 §11.6.6).
pub const DEFAULT_MXCSR_MASK: u32 = 0xffbf;

/// One rule a restore can break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Fewer than 576 bytes: no header to restore from.
    TooSmall,
    /// XSTATE_BV has a bit not enabled (XCR0 for XRSTOR, bit 63 included).
    XstateBvNotEnabled,
    /// Standard form: XCOMP_BV (header bytes 8..15) must be 0.
    XcompBvNotZero,
    /// Reserved header bytes must be zero (XRSTOR standard: 16..23; compacted, XRSTORS and
    /// KVM: 16..63).
    HeaderReserved,
    /// The compacted form needs XSAVEC support (CPUID.(0xD,1):EAX\[1\]).
    CompactedUnsupported,
    /// A compacted-form profile was given an image with XCOMP_BV bit 63 clear.
    NotCompacted,
    /// XCOMP_BV\[62:0\] has a bit not enabled (XCR0, or XCR0 | IA32_XSS for XRSTORS).
    XcompBvNotEnabled,
    /// XSTATE_BV has a bit not in XCOMP_BV.
    XstateBvNotInXcompBv,
    /// MXCSR has a bit outside the CPU's MXCSR mask.
    MxcsrReserved,
    /// XRSTORS without XSAVES support (#UD).
    XrstorsUnsupported,
    /// A supervisor component holds a value its MSR would refuse.
    SupervisorValue,
    /// KVM: XSTATE_BV has a bit outside the host-supported guest XCR0.
    XstateBvUnsupported,
    /// KVM: XSTATE_BV has a bit outside the vCPU buffer's user features (for example AMX
    /// before the guest's buffer grew).
    XstateBvNotPermitted,
    /// The image is shorter than the bytes the restore reads for its header
    /// ([`required_size`]).
    ShortImage,
    /// The layout cannot place a component the restore reads, so the bytes it reads are
    /// unknown: no verdict.
    UnknownGeometry,
}

impl Rule {
    /// The rule's identifier as shown in output (`xstate_bv_not_enabled`, …).
    pub fn id(&self) -> &'static str {
        match self {
            Rule::TooSmall => "too_small",
            Rule::XstateBvNotEnabled => "xstate_bv_not_enabled",
            Rule::XcompBvNotZero => "xcomp_bv_not_zero",
            Rule::HeaderReserved => "header_reserved",
            Rule::CompactedUnsupported => "compacted_unsupported",
            Rule::NotCompacted => "not_compacted",
            Rule::XcompBvNotEnabled => "xcomp_bv_not_enabled",
            Rule::XstateBvNotInXcompBv => "xstate_bv_not_in_xcomp_bv",
            Rule::MxcsrReserved => "mxcsr_reserved",
            Rule::XrstorsUnsupported => "xrstors_unsupported",
            Rule::SupervisorValue => "supervisor_value",
            Rule::XstateBvUnsupported => "xstate_bv_unsupported",
            Rule::XstateBvNotPermitted => "xstate_bv_not_permitted",
            Rule::ShortImage => "short_image",
            Rule::UnknownGeometry => "unknown_geometry",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One broken rule: which, where, what value, and a sentence saying why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// The rule broken.
    pub rule: Rule,
    /// Byte offset in the image of the offending field.
    pub offset: u32,
    /// The offending value (the field read as a little-endian integer, up to 64 bits).
    pub value: u64,
    /// Human explanation naming the field, the offset and the rule.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] offset {}: {} (value {:#x})",
            self.rule, self.offset, self.message, self.value
        )
    }
}

/// The CPU state an XRSTOR or XRSTORS runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreConfig {
    /// XCR0.
    pub xcr0: u64,
    /// IA32_XSS (XRSTORS only).
    pub xss: u64,
    /// The instruction mask EDX:EAX (usually all ones).
    pub request: u64,
    /// The CPU's MXCSR mask (from FXSAVE's MXCSR_MASK; 0 there means 0xFFBF).
    pub mxcsr_mask: u32,
    /// CPUID.(0xD,1):EAX\[1\]: XSAVEC and the compacted form of XRSTOR.
    pub xsavec: bool,
    /// CPUID.(0xD,1):EAX\[3\]: XSAVES/XRSTORS.
    pub xsaves: bool,
    /// Linear-address width for canonical checks of supervisor values (48, or 57 with LA57).
    pub linear_address_bits: u8,
}

impl RestoreConfig {
    /// XCR0 and an MXCSR mask; IA32_XSS 0, request all ones, XSAVEC and XSAVES supported,
    /// 48-bit linear addresses.
    pub fn new(xcr0: u64, mxcsr_mask: u32) -> Self {
        RestoreConfig {
            xcr0,
            xss: 0,
            request: u64::MAX,
            mxcsr_mask: normalize_mxcsr_mask(mxcsr_mask),
            xsavec: true,
            xsaves: true,
            linear_address_bits: 48,
        }
    }

    /// The configuration of a CPU described by `layout` with the given XCR0 and IA32_XSS.
    pub fn for_layout(layout: &Layout, xcr0: u64, xss: u64, mxcsr_mask: u32) -> Self {
        RestoreConfig {
            xcr0,
            xss,
            request: u64::MAX,
            mxcsr_mask: normalize_mxcsr_mask(mxcsr_mask),
            xsavec: layout.leaf().has_xsavec(),
            xsaves: layout.leaf().has_xsaves(),
            linear_address_bits: 48,
        }
    }
}

/// What KVM_SET_XSAVE checks against (DESIGN.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmConfig {
    /// The host-supported guest XCR0 (KVM_GET_SUPPORTED_CPUID leaf 0xD).
    pub supported_xcr0: u64,
    /// The user features of the vCPU's fpstate buffer (supported XCR0 filtered by the guest
    /// permissions: TILEDATA only after the buffer grew).
    pub user_features: u64,
    /// The host's MXCSR mask.
    pub mxcsr_mask: u32,
}

impl KvmConfig {
    /// A vCPU whose buffer holds every supported feature.
    pub fn new(supported_xcr0: u64, mxcsr_mask: u32) -> Self {
        KvmConfig {
            supported_xcr0,
            user_features: supported_xcr0,
            mxcsr_mask: normalize_mxcsr_mask(mxcsr_mask),
        }
    }
}

/// 0 stands for the default mask 0xFFBF (SDM Vol. 1 §11.6.6).
pub fn normalize_mxcsr_mask(m: u32) -> u32 {
    if m == 0 {
        DEFAULT_MXCSR_MASK
    } else {
        m
    }
}

/// A validation profile with its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// XRSTOR of a standard-form image.
    Xrstor(RestoreConfig),
    /// XRSTOR of a compacted-form image.
    XrstorCompacted(RestoreConfig),
    /// XRSTORS (compacted form, CPL 0).
    Xrstors(RestoreConfig),
    /// KVM_SET_XSAVE.
    Kvm(KvmConfig),
}

/// Applies a profile; an empty list means the image passes.
#[inline]
pub fn validate(bytes: &[u8], profile: &Profile) -> Vec<Violation> {
    match profile {
        Profile::Xrstor(c) => xrstor(bytes, c),
        Profile::XrstorCompacted(c) => xrstor_compacted(bytes, c),
        Profile::Xrstors(c) => xrstors(bytes, c),
        Profile::Kvm(c) => kvm(bytes, c),
    }
}

fn v(rule: Rule, offset: usize, value: u64, message: String) -> Violation {
    Violation {
        rule,
        offset: offset as u32,
        value,
        message,
    }
}

fn too_small(bytes: &[u8]) -> Option<Violation> {
    (bytes.len() < MIN_SIZE).then(|| {
        v(
            Rule::TooSmall,
            0,
            bytes.len() as u64,
            format!(
                "the image is {} bytes; a restore reads the 512-byte legacy area and the 64-byte header (576 bytes)",
                bytes.len()
            ),
        )
    })
}

fn word(bytes: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = bytes.get(off..off + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// One violation per non-zero 8-byte word of header bytes `from..to` (offsets into the
/// header).
fn reserved(bytes: &[u8], from: usize, to: usize, who: &str, out: &mut Vec<Violation>) {
    let mut h = from;
    while h < to {
        let off = XSTATE_BV_OFFSET + h;
        let w = word(bytes, off);
        if w != 0 {
            out.push(v(
                Rule::HeaderReserved,
                off,
                w,
                format!(
                    "header bytes {h}..{} (image offset {off}) are {w:#x}; {who} requires header bytes {from}..{} to be zero",
                    h + 7,
                    to - 1
                ),
            ));
        }
        h += 8;
    }
}

fn mxcsr_check(bytes: &[u8], mxcsr_mask: u32, why: &str, out: &mut Vec<Violation>) {
    let m = raw_mxcsr(bytes);
    let bad = m & !mxcsr_mask;
    if bad != 0 {
        out.push(v(
            Rule::MxcsrReserved,
            MXCSR_OFFSET,
            u64::from(m),
            format!(
                "MXCSR {m:#x} sets bits {bad:#x} outside the MXCSR mask {mxcsr_mask:#x}; {why}"
            ),
        ));
    }
}

fn bits_text(m: u64) -> String {
    let mut s = String::new();
    for b in bits(m) {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&format!("{b}"));
    }
    format!("{{{s}}} ({})", mask_names(m))
}

/// XRSTOR of a standard-form image (SDM Vol. 1 §13.8.1; DESIGN.md §5): #GP when XSTATE_BV
/// has a bit not in XCR0 (bit 63 included), when header bytes 8..23 are not zero, and when
/// MXCSR sets bits outside the mask while RFBM\[1\] or RFBM\[2\] is set (the standard form loads
/// MXCSR from the image even with XSTATE_BV\[1\] clear). Header bytes 24..63 are not checked.
#[inline]
pub fn xrstor(bytes: &[u8], cfg: &RestoreConfig) -> Vec<Violation> {
    if xrstor_ok(bytes, cfg) {
        return Vec::new();
    }
    xrstor_detail(bytes, cfg)
}

#[cold]
#[inline(never)]
fn xrstor_detail(bytes: &[u8], cfg: &RestoreConfig) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(t) = too_small(bytes) {
        out.push(t);
        return out;
    }
    let bv = raw_xstate_bv(bytes);
    let bad = bv & !cfg.xcr0;
    if bad != 0 {
        out.push(v(
            Rule::XstateBvNotEnabled,
            XSTATE_BV_OFFSET,
            bv,
            format!(
                "XSTATE_BV {bv:#x} sets bits {} not enabled in XCR0 {:#x}",
                bits_text(bad),
                cfg.xcr0
            ),
        ));
    }
    let xc = raw_xcomp_bv(bytes);
    if xc != 0 {
        let why = if xc & mask::COMPACTED != 0 {
            " (bit 63 set: the CPU would take the compacted form; use the xrstor-compacted profile)"
        } else {
            ""
        };
        out.push(v(
            Rule::XcompBvNotZero,
            XCOMP_BV_OFFSET,
            xc,
            format!("XCOMP_BV is {xc:#x}; the standard form requires 0{why}"),
        ));
    }
    reserved(bytes, 16, 24, "XRSTOR (standard form)", &mut out);
    let rfbm = cfg.xcr0 & cfg.request;
    if rfbm & (mask::SSE | mask::AVX) != 0 {
        mxcsr_check(
            bytes,
            cfg.mxcsr_mask,
            "the standard form loads MXCSR when RFBM[1] or RFBM[2] is set",
            &mut out,
        );
    }
    out
}

fn compacted_common(
    bytes: &[u8],
    enabled: u64,
    enabled_name: &str,
    request: u64,
    mxcsr_mask: u32,
    who: &str,
    out: &mut Vec<Violation>,
) {
    let bv = raw_xstate_bv(bytes);
    let xc = raw_xcomp_bv(bytes);
    let comp = xc & !mask::COMPACTED;
    let bad = comp & !enabled;
    if bad != 0 {
        out.push(v(
            Rule::XcompBvNotEnabled,
            XCOMP_BV_OFFSET,
            xc,
            format!(
                "XCOMP_BV {xc:#x} sets bits {} not enabled in {enabled_name} {enabled:#x}",
                bits_text(bad)
            ),
        ));
    }
    // XSTATE_BV ⊆ XCOMP_BV[62:0]: bit 63 of XSTATE_BV is not a component and is refused too.
    let bad = bv & !comp;
    if bad != 0 {
        out.push(v(
            Rule::XstateBvNotInXcompBv,
            XSTATE_BV_OFFSET,
            bv,
            format!(
                "XSTATE_BV {bv:#x} sets bits {} not set in XCOMP_BV[62:0] {comp:#x}",
                bits_text(bad)
            ),
        ));
    }
    reserved(bytes, 16, 64, who, out);
    // The compacted form loads MXCSR only with the SSE component restored from the image.
    let rfbm = enabled & request;
    if rfbm & bv & mask::SSE != 0 {
        mxcsr_check(
            bytes,
            mxcsr_mask,
            "the compacted form loads MXCSR because XSTATE_BV[1] and RFBM[1] are set",
            out,
        );
    }
}

/// XRSTOR of a compacted-form image (SDM Vol. 1 §13.8.1; DESIGN.md §5): #GP when the CPU
/// lacks XSAVEC, XCOMP_BV\[62:0\] has a bit not in XCR0, XSTATE_BV has a bit not in
/// XCOMP_BV\[62:0\], header bytes 16..63 are not zero, or MXCSR sets bits outside the mask while
/// SSE is restored from the image.
#[inline]
pub fn xrstor_compacted(bytes: &[u8], cfg: &RestoreConfig) -> Vec<Violation> {
    if xrstor_compacted_ok(bytes, cfg) {
        return Vec::new();
    }
    xrstor_compacted_detail(bytes, cfg)
}

#[cold]
#[inline(never)]
fn xrstor_compacted_detail(bytes: &[u8], cfg: &RestoreConfig) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(t) = too_small(bytes) {
        out.push(t);
        return out;
    }
    let xc = raw_xcomp_bv(bytes);
    if xc & mask::COMPACTED == 0 {
        out.push(v(
            Rule::NotCompacted,
            XCOMP_BV_OFFSET,
            xc,
            format!(
                "XCOMP_BV {xc:#x} has bit 63 clear: XRSTOR would take the standard form (use the xrstor profile)"
            ),
        ));
        return out;
    }
    if !cfg.xsavec {
        out.push(v(
            Rule::CompactedUnsupported,
            XCOMP_BV_OFFSET,
            xc,
            String::from(
                "XCOMP_BV bit 63 is set but the CPU lacks XSAVEC (CPUID.(0xD,1):EAX[1] = 0): XRSTOR reads a standard-form image whose XCOMP_BV must be 0",
            ),
        ));
        return out;
    }
    compacted_common(
        bytes,
        cfg.xcr0,
        "XCR0",
        cfg.request,
        cfg.mxcsr_mask,
        "XRSTOR (compacted form)",
        &mut out,
    );
    out
}

/// What XRSTOR does with these bytes on a CPU: the compacted-form rules when XCOMP_BV bit 63
/// is set and the CPU has XSAVEC, the standard-form rules otherwise (SDM Vol. 2B XRSTOR
/// "Operation").
#[inline]
pub fn xrstor_any(bytes: &[u8], cfg: &RestoreConfig) -> Vec<Violation> {
    if cfg.xsavec && raw_xcomp_bv(bytes) & mask::COMPACTED != 0 {
        xrstor_compacted(bytes, cfg)
    } else {
        xrstor(bytes, cfg)
    }
}

// ---- The fast path: one read of the header, no allocation ----
//
// Each `*_ok` function is the conjunction of the rules its profile lists, evaluated on one
// copy of the 64-byte header and MXCSR. It answers only "passes"; the profile functions call
// it first and build the violation list (the `*_detail` functions) only when it says no, so
// a valid image costs a few loads and compares. `tests::fast_path_agrees_with_detail` checks
// that both paths agree on every header the proptest generates.

/// The fields every restore rule reads: XSTATE_BV, XCOMP_BV, the OR of header bytes 16..23
/// and of 24..63, and MXCSR. `None` when the image is shorter than 576 bytes.
#[inline(always)]
fn header(bytes: &[u8]) -> Option<Header> {
    let h: &[u8; 64] = bytes.get(XSTATE_BV_OFFSET..MIN_SIZE)?.try_into().ok()?;
    let w = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[8 * i..8 * i + 8]);
        u64::from_le_bytes(b)
    };
    Some(Header {
        xstate_bv: w(0),
        xcomp_bv: w(1),
        res16: w(2),
        res24: w(3) | w(4) | w(5) | w(6) | w(7),
        mxcsr: raw_mxcsr(bytes),
    })
}

struct Header {
    xstate_bv: u64,
    xcomp_bv: u64,
    res16: u64,
    res24: u64,
    mxcsr: u32,
}

/// True when [`xrstor`] finds no violation (standard form), without building the list.
#[inline]
pub fn xrstor_ok(bytes: &[u8], cfg: &RestoreConfig) -> bool {
    let Some(h) = header(bytes) else {
        return false;
    };
    let mxcsr_ok =
        cfg.xcr0 & cfg.request & (mask::SSE | mask::AVX) == 0 || h.mxcsr & !cfg.mxcsr_mask == 0;
    h.xstate_bv & !cfg.xcr0 == 0 && h.xcomp_bv == 0 && h.res16 == 0 && mxcsr_ok
}

#[inline(always)]
fn compacted_ok(h: &Header, enabled: u64, request: u64, mxcsr_mask: u32) -> bool {
    let comp = h.xcomp_bv & !mask::COMPACTED;
    let mxcsr_ok = enabled & request & h.xstate_bv & mask::SSE == 0 || h.mxcsr & !mxcsr_mask == 0;
    comp & !enabled == 0 && h.xstate_bv & !comp == 0 && h.res16 | h.res24 == 0 && mxcsr_ok
}

/// True when [`xrstor_compacted`] finds no violation, without building the list.
#[inline]
pub fn xrstor_compacted_ok(bytes: &[u8], cfg: &RestoreConfig) -> bool {
    let Some(h) = header(bytes) else {
        return false;
    };
    cfg.xsavec
        && h.xcomp_bv & mask::COMPACTED != 0
        && compacted_ok(&h, cfg.xcr0, cfg.request, cfg.mxcsr_mask)
}

/// True when [`xrstor_any`] finds no violation, without building the list.
#[inline]
pub fn xrstor_any_ok(bytes: &[u8], cfg: &RestoreConfig) -> bool {
    if cfg.xsavec && raw_xcomp_bv(bytes) & mask::COMPACTED != 0 {
        xrstor_compacted_ok(bytes, cfg)
    } else {
        xrstor_ok(bytes, cfg)
    }
}

/// The header rules of [`xrstors`] (not the supervisor values, which need a layout).
#[inline]
fn xrstors_header_ok(bytes: &[u8], cfg: &RestoreConfig) -> bool {
    let Some(h) = header(bytes) else {
        return false;
    };
    cfg.xsaves
        && h.xcomp_bv & mask::COMPACTED != 0
        && compacted_ok(&h, cfg.xcr0 | cfg.xss, cfg.request, cfg.mxcsr_mask)
}

/// True when [`kvm`] finds no violation, without building the list.
#[inline]
pub fn kvm_ok(bytes: &[u8], cfg: &KvmConfig) -> bool {
    let Some(h) = header(bytes) else {
        return false;
    };
    let mxcsr_ok =
        h.xstate_bv & (mask::X87 | mask::SSE | mask::AVX) == 0 || h.mxcsr & !cfg.mxcsr_mask == 0;
    h.xstate_bv & !(cfg.supported_xcr0 & cfg.user_features) == 0
        && h.xcomp_bv == 0
        && h.res16 | h.res24 == 0
        && mxcsr_ok
}

/// True when [`validate`] returns no violation, without building the list (XRSTORS: the
/// header rules; its supervisor values need a layout, see [`xrstors_with_layout`]).
#[inline]
pub fn is_valid(bytes: &[u8], profile: &Profile) -> bool {
    match profile {
        Profile::Xrstor(c) => xrstor_ok(bytes, c),
        Profile::XrstorCompacted(c) => xrstor_compacted_ok(bytes, c),
        Profile::Xrstors(c) => xrstors_header_ok(bytes, c),
        Profile::Kvm(c) => kvm_ok(bytes, c),
    }
}

fn canonical(v: u64, bits: u8) -> bool {
    let bits = u32::from(bits.clamp(32, 64));
    if bits >= 64 {
        return true;
    }
    let shift = 64 - bits;
    (((v << shift) as i64) >> shift) as u64 == v
}

/// XRSTORS (SDM Vol. 2B XRSTORS; DESIGN.md §5): #GP when XCOMP_BV bit 63 is clear,
/// XCOMP_BV\[62:0\] has a bit not in XCR0 | IA32_XSS, XSTATE_BV has a bit not in
/// XCOMP_BV\[62:0\], header bytes 16..63 are not zero, MXCSR sets bits outside the mask while SSE
/// is restored, or a restored supervisor component holds a value its MSR refuses. Supervisor
/// values checked (the CET MSR rules, SDM Vol. 1 §17.3 and Vol. 4 MSR list): IA32_U_CET bits
/// 9:6 reserved, SUPPRESS and TRACKER not both set, EB_LEG_BITMAP_BASE canonical;
/// IA32_PL0..3_SSP 4-byte aligned and canonical. Those need component offsets, so `layout`
/// places CET_U and CET_S in the compacted form the header names; without it they are not
/// checked. XRSTORS runs only at CPL 0, so unlike the XRSTOR profiles this one is not checked
/// against the CPU of this project's machines.
pub fn xrstors(bytes: &[u8], cfg: &RestoreConfig) -> Vec<Violation> {
    xrstors_with_layout(bytes, cfg, None)
}

/// [`xrstors`] with the layout needed to locate supervisor components.
pub fn xrstors_with_layout(
    bytes: &[u8],
    cfg: &RestoreConfig,
    layout: Option<&Layout>,
) -> Vec<Violation> {
    // The header rules first, read once; the supervisor values need the layout and are
    // checked by the detailed path only when a supervisor component is restored.
    if layout.is_none() && xrstors_header_ok(bytes, cfg) {
        return Vec::new();
    }
    xrstors_detail(bytes, cfg, layout)
}

#[cold]
#[inline(never)]
fn xrstors_detail(bytes: &[u8], cfg: &RestoreConfig, layout: Option<&Layout>) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(t) = too_small(bytes) {
        out.push(t);
        return out;
    }
    if !cfg.xsaves {
        out.push(v(
            Rule::XrstorsUnsupported,
            0,
            0,
            String::from("the CPU lacks XSAVES/XRSTORS (CPUID.(0xD,1):EAX[3] = 0): #UD"),
        ));
        return out;
    }
    let xc = raw_xcomp_bv(bytes);
    if xc & mask::COMPACTED == 0 {
        out.push(v(
            Rule::NotCompacted,
            XCOMP_BV_OFFSET,
            xc,
            format!("XCOMP_BV {xc:#x} has bit 63 clear; XRSTORS accepts only the compacted form"),
        ));
    }
    let enabled = cfg.xcr0 | cfg.xss;
    compacted_common(
        bytes,
        enabled,
        "XCR0 | IA32_XSS",
        cfg.request,
        cfg.mxcsr_mask,
        "XRSTORS",
        &mut out,
    );
    if let Some(l) = layout {
        supervisor_values(bytes, cfg, l, &mut out);
    }
    out
}

fn supervisor_values(bytes: &[u8], cfg: &RestoreConfig, l: &Layout, out: &mut Vec<Violation>) {
    let xc = raw_xcomp_bv(bytes);
    let bv = raw_xstate_bv(bytes);
    let rfbm = (cfg.xcr0 | cfg.xss) & cfg.request;
    let Ok(g) = l.compacted(xc) else {
        return;
    };
    let la = cfg.linear_address_bits;
    let ssp = |off: usize, name: &str, out: &mut Vec<Violation>| {
        let s = word(bytes, off);
        if s & 3 != 0 || !canonical(s, la) {
            out.push(v(
                Rule::SupervisorValue,
                off,
                s,
                format!("{name} {s:#x} must be 4-byte aligned and canonical ({la}-bit)"),
            ));
        }
    };
    if bv & rfbm & mask::CET_U != 0 {
        if let Some(p) = g.placement(11) {
            let off = p.offset as usize;
            let u = word(bytes, off);
            // Bit 10 SUPPRESS and bit 11 TRACKER (WAIT_FOR_ENDBRANCH) together are a
            // reserved combination.
            let both = u & 0xc00 == 0xc00;
            if u & 0x3c0 != 0 || both || !canonical(u & !0xfff, la) {
                out.push(v(
                    Rule::SupervisorValue,
                    off,
                    u,
                    format!(
                        "IA32_U_CET {u:#x}: bits 9:6 are reserved, SUPPRESS (bit 10) and TRACKER (bit 11) cannot both be set, and EB_LEG_BITMAP_BASE (bits 63:12) must be canonical"
                    ),
                ));
            }
            ssp(off + 8, "IA32_PL3_SSP", out);
        }
    }
    if bv & rfbm & mask::CET_S != 0 {
        if let Some(p) = g.placement(12) {
            for lvl in 0..3usize {
                let name = ["IA32_PL0_SSP", "IA32_PL1_SSP", "IA32_PL2_SSP"][lvl];
                ssp(p.offset as usize + 8 * lvl, name, out);
            }
        }
    }
}

/// KVM_SET_XSAVE (DESIGN.md §6, measured in §9): EINVAL when XSTATE_BV has a bit outside the
/// host-supported XCR0 or outside the vCPU buffer's user features, XCOMP_BV ≠ 0, any byte of
/// 528..575 ≠ 0, or MXCSR sets bits outside the host mask while FP, SSE or AVX is in
/// XSTATE_BV. Nothing else is checked (bytes 416..511 are ignored).
///
/// ```
/// use xstate::validate::{kvm, KvmConfig, Rule};
/// let cfg = KvmConfig::new(0xe7, 0xffff); // this project's machines (DESIGN.md §9)
/// let mut img = vec![0u8; 4096];
/// img[464] = 0xaa;                        // software bytes: ignored
/// assert!(kvm(&img, &cfg).is_empty());
/// img[512 + 1] = 0x02;                    // XSTATE_BV bit 9 (PKRU): not supported here
/// img[560] = 1;                           // reserved header byte
/// let v = kvm(&img, &cfg);
/// assert_eq!(v[0].rule, Rule::XstateBvUnsupported);
/// assert_eq!((v[1].rule, v[1].offset), (Rule::HeaderReserved, 560));
/// ```
#[inline]
pub fn kvm(bytes: &[u8], cfg: &KvmConfig) -> Vec<Violation> {
    if kvm_ok(bytes, cfg) {
        return Vec::new();
    }
    kvm_detail(bytes, cfg)
}

#[cold]
#[inline(never)]
fn kvm_detail(bytes: &[u8], cfg: &KvmConfig) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(t) = too_small(bytes) {
        out.push(t);
        return out;
    }
    let bv = raw_xstate_bv(bytes);
    let bad = bv & !cfg.supported_xcr0;
    if bad != 0 {
        out.push(v(
            Rule::XstateBvUnsupported,
            XSTATE_BV_OFFSET,
            bv,
            format!(
                "XSTATE_BV {bv:#x} sets bits {} outside the host-supported guest XCR0 {:#x}",
                bits_text(bad),
                cfg.supported_xcr0
            ),
        ));
    }
    let bad = bv & cfg.supported_xcr0 & !cfg.user_features;
    if bad != 0 {
        out.push(v(
            Rule::XstateBvNotPermitted,
            XSTATE_BV_OFFSET,
            bv,
            format!(
                "XSTATE_BV {bv:#x} sets bits {} outside the vCPU buffer's user features {:#x} (dynamic features need the guest permission and KVM_SET_CPUID2 first)",
                bits_text(bad),
                cfg.user_features
            ),
        ));
    }
    let xc = raw_xcomp_bv(bytes);
    if xc != 0 {
        out.push(v(
            Rule::XcompBvNotZero,
            XCOMP_BV_OFFSET,
            xc,
            format!("XCOMP_BV is {xc:#x}; KVM_SET_XSAVE takes the standard form only (0)"),
        ));
    }
    reserved(bytes, 16, 64, "KVM_SET_XSAVE", &mut out);
    if bv & (mask::X87 | mask::SSE | mask::AVX) != 0 {
        mxcsr_check(
            bytes,
            cfg.mxcsr_mask,
            "KVM checks MXCSR when x87, SSE or AVX is in XSTATE_BV",
            &mut out,
        );
    }
    let _ = HEADER_RESERVED_OFFSET;
    out
}

/// The size of `struct kvm_xsave`, the smallest buffer KVM_SET_XSAVE reads (Linux UAPI).
pub const KVM_XSAVE_SIZE: u32 = 4096;

/// How many bytes a restore of `bytes` under `profile` reads, on the CPU `layout` describes
/// (the header decides; only its XSTATE_BV and XCOMP_BV are used):
///
/// - XRSTOR, standard form: the standard-form extent of RFBM = XCR0 & EDX:EAX — every
///   component the instruction operates on (SDM Vol. 1 §13.8.1: for each i with RFBM\[i\] = 1
///   the component is loaded or initialized), whatever XSTATE_BV says. Measured on this
///   project's Intel machine (`tests/image_size_hw.rs`): with XSTATE_BV = 0 and RFBM = XCR0
///   the CPU reads up to the end of the furthest component of XCR0; with EDX:EAX = 7, up to the
///   end of AVX.
/// - XRSTOR compacted form and XRSTORS: the end of the last component of RFBM ∩ XCOMP_BV\[62:0\]
///   at its compacted location, which XCOMP_BV determines (SDM Vol. 1 §13.4.3, §13.8.2, §13.12);
///   measured the same way (XCOMP_BV 0x600e7 with EDX:EAX = 7 reads 832 bytes).
/// - KVM_SET_XSAVE: the vCPU's whole buffer, KVM_CAP_XSAVE2 = max(4096, the standard size of
///   the buffer's user features) (DESIGN.md §6; 4096 is `struct kvm_xsave`): the ioctl copies
///   that many bytes from the caller whatever the header says — and at least the standard
///   extent of the components in XSTATE_BV.
///
/// Never less than 576 (legacy area and header). An error names a component the layout
/// cannot place.
pub fn required_size(
    bytes: &[u8],
    profile: &Profile,
    layout: &Layout,
) -> Result<u32, crate::layout::LayoutError> {
    let bv = raw_xstate_bv(bytes);
    let xc = raw_xcomp_bv(bytes);
    let compacted_extent = |rfbm: u64| -> Result<u32, crate::layout::LayoutError> {
        let g = layout.compacted(xc)?;
        Ok(g.placements
            .iter()
            .filter(|p| p.id >= 2 && rfbm & (1u64 << p.id) != 0)
            .map(|p| p.end())
            .fold(MIN_SIZE as u32, u32::max))
    };
    let standard_extent = |m: u64| -> Result<u32, crate::layout::LayoutError> {
        Ok(layout.standard(m & !mask::COMPACTED)?.size)
    };
    match profile {
        Profile::Xrstor(c) => standard_extent(c.xcr0 & c.request),
        Profile::XrstorCompacted(c) => {
            if c.xsavec && xc & mask::COMPACTED != 0 {
                compacted_extent(c.xcr0 & c.request)
            } else {
                standard_extent(c.xcr0 & c.request)
            }
        }
        Profile::Xrstors(c) => compacted_extent((c.xcr0 | c.xss) & c.request),
        Profile::Kvm(c) => {
            let buffer = standard_extent(c.user_features & c.supported_xcr0)?;
            Ok(standard_extent(bv & c.supported_xcr0)?
                .max(buffer)
                .max(KVM_XSAVE_SIZE))
        }
    }
}

/// The size rule: a violation when `bytes` is shorter than [`required_size`], or when the
/// layout cannot tell how many bytes the restore reads. Nothing when the image is too short
/// to hold a header (that is [`Rule::TooSmall`]) or when the header already breaks a rule
/// that makes the components unknowable (bits outside XCR0 / XCOMP_BV).
pub fn size_rule(bytes: &[u8], profile: &Profile, layout: &Layout) -> Option<Violation> {
    if bytes.len() < MIN_SIZE {
        return None;
    }
    match required_size(bytes, profile, layout) {
        Ok(need) if (need as usize) > bytes.len() => Some(v(
            Rule::ShortImage,
            bytes.len(),
            bytes.len() as u64,
            format!(
                "the image has {} bytes but {} reads {need} (XSTATE_BV {:#x}, XCOMP_BV {:#x}): bytes {}..{need} are missing",
                bytes.len(),
                match profile {
                    Profile::Kvm(_) => "KVM_SET_XSAVE (the vCPU's whole buffer, at least 4096 bytes)",
                    Profile::Xrstors(_) => "XRSTORS",
                    _ => "XRSTOR",
                },
                raw_xstate_bv(bytes),
                raw_xcomp_bv(bytes),
                bytes.len()
            ),
        )),
        Ok(_) => None,
        Err(e) => Some(v(
            Rule::UnknownGeometry,
            XCOMP_BV_OFFSET,
            raw_xcomp_bv(bytes),
            format!("cannot tell how many bytes the restore reads: {e}"),
        )),
    }
}

/// The fast path of [`validate_with_layout`]: the header read once ([`is_valid`]) and the
/// size rule from the layout's cached table of standard extents (O(1), an upper bound, exact
/// on real CPUs) or, for the compacted form, a walk of its per-component geometry, without
/// building a layout (no allocation). False means "look closer"; XRSTORS with a supervisor CET component
/// loaded always looks closer (its values need the detailed path).
#[inline]
pub fn is_valid_with_layout(bytes: &[u8], profile: &Profile, layout: &Layout) -> bool {
    if !is_valid(bytes, profile) {
        return false;
    }
    let bv = raw_xstate_bv(bytes);
    let xc = raw_xcomp_bv(bytes);
    let need = match profile {
        Profile::Xrstor(c) => standard_end(layout, c.xcr0 & c.request),
        Profile::XrstorCompacted(c) => compacted_end(layout, xc, c.xcr0 & c.request),
        Profile::Xrstors(c) => {
            if bv & (c.xcr0 | c.xss) & c.request & (mask::CET_U | mask::CET_S) != 0 {
                return false;
            }
            compacted_end(layout, xc, (c.xcr0 | c.xss) & c.request)
        }
        Profile::Kvm(c) => {
            let buf = standard_end(layout, c.user_features & c.supported_xcr0);
            let img = standard_end(layout, bv & c.supported_xcr0);
            match (buf, img) {
                (Some(b), Some(i)) => Some(b.max(i).max(KVM_XSAVE_SIZE)),
                _ => None,
            }
        }
    };
    need.is_some_and(|n| n as usize <= bytes.len())
}

/// The standard-form size of `m` (as `Layout::standard`) or an upper bound of it, None where
/// that refuses the mask.
#[inline]
fn standard_end(layout: &Layout, m: u64) -> Option<u32> {
    // Supervisor components have no standard offset: the detailed path names them.
    if m & (mask::COMPACTED | layout.leaf().xss_supported()) != 0 {
        return None;
    }
    // The table of the layout: an upper bound (never a yes the exact extent would refuse;
    // exact on real CPUs), O(1).
    layout.standard_extent_bound(m)
}

/// The end of the last component of `rfbm` ∩ XCOMP_BV\[62:0\] at its compacted location (as
/// `required_size`), None where `Layout::compacted` refuses XCOMP_BV.
fn compacted_end(layout: &Layout, xcomp_bv: u64, rfbm: u64) -> Option<u32> {
    let mut loc = MIN_SIZE as u32;
    let mut end = MIN_SIZE as u32;
    let leaf = layout.leaf();
    for id in bits(xcomp_bv & !mask::COMPACTED & !mask::LEGACY) {
        let g = leaf.component(id);
        if g.size == 0 {
            return None;
        }
        if g.align64 {
            loc = loc.checked_next_multiple_of(64)?;
        }
        let e = loc.checked_add(g.size)?;
        if rfbm & (1u64 << id) != 0 {
            end = end.max(e);
        }
        loc = e;
    }
    Some(end)
}

/// [`validate`] plus the rules that need the CPU's layout: the size rule ([`size_rule`]) and,
/// for XRSTORS, the supervisor values ([`xrstors_with_layout`]). This is what an image file
/// is judged by: a valid header on too few bytes is not a valid image.
#[inline]
pub fn validate_with_layout(bytes: &[u8], profile: &Profile, layout: &Layout) -> Vec<Violation> {
    if is_valid_with_layout(bytes, profile, layout) {
        return Vec::new();
    }
    validate_with_layout_detail(bytes, profile, layout)
}

#[cold]
#[inline(never)]
fn validate_with_layout_detail(bytes: &[u8], profile: &Profile, layout: &Layout) -> Vec<Violation> {
    let mut out = match profile {
        Profile::Xrstors(c) => xrstors_with_layout(bytes, c, Some(layout)),
        p => validate(bytes, p),
    };
    // A header naming components outside XCR0/XCOMP_BV already fails; its extent is unknown.
    let unknowable = out.iter().any(|x| {
        matches!(
            x.rule,
            Rule::TooSmall
                | Rule::XcompBvNotEnabled
                | Rule::NotCompacted
                | Rule::CompactedUnsupported
                | Rule::XrstorsUnsupported
        )
    });
    if !unknowable {
        if let Some(s) = size_rule(bytes, profile, layout) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn img() -> Vec<u8> {
        let mut b = vec![0u8; 2432];
        b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        b
    }
    fn set64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn rules(v: &[Violation]) -> Vec<Rule> {
        v.iter().map(|v| v.rule).collect()
    }
    const MASK: u32 = 0xffff; // Zen 5 MXCSR_MASK (DAZ supported)

    /// DESIGN.md §9: the verdicts of KVM_SET_XSAVE measured on this project's kernel.
    #[test]
    fn kvm_measured_verdicts() {
        let cfg = KvmConfig::new(0xe7, MASK);
        let ok = |b: &[u8]| kvm(b, &cfg).is_empty();
        // Accepted: XSTATE_BV 0; non-zero bytes at 420 or 464; MXCSR with DAZ.
        assert!(ok(&img()));
        let mut b = img();
        b[420] = 1;
        b[464] = 1;
        assert!(ok(&b));
        let mut b = img();
        set64(&mut b, 512, 3);
        b[24..28].copy_from_slice(&(0x1f80u32 | 0x40).to_le_bytes());
        assert!(ok(&b));
        // EINVAL: XCOMP_BV != 0, bytes 528 / 560, XSTATE_BV bits 9, 11, 63, MXCSR bit 16.
        let mut b = img();
        set64(&mut b, 520, 1 << 63 | 3);
        assert_eq!(rules(&kvm(&b, &cfg)), [Rule::XcompBvNotZero]);
        for off in [528, 560] {
            let mut b = img();
            b[off] = 1;
            let v = kvm(&b, &cfg);
            assert_eq!(rules(&v), [Rule::HeaderReserved]);
            assert_eq!(v[0].offset as usize, off);
        }
        for bit in [9, 11, 63] {
            let mut b = img();
            set64(&mut b, 512, 1 << bit);
            assert_eq!(
                rules(&kvm(&b, &cfg)),
                [Rule::XstateBvUnsupported],
                "bit {bit}"
            );
        }
        let mut b = img();
        set64(&mut b, 512, 2);
        b[24..28].copy_from_slice(&(0x1f80u32 | 1 << 16).to_le_bytes());
        assert_eq!(rules(&kvm(&b, &cfg)), [Rule::MxcsrReserved]);
        // MXCSR is not checked when no legacy/AVX component is in XSTATE_BV.
        set64(&mut b, 512, 0);
        assert!(ok(&b));
    }

    #[test]
    fn kvm_amx_before_growth() {
        let cfg = KvmConfig {
            supported_xcr0: 0x602e7,
            user_features: 0x202e7,
            mxcsr_mask: MASK,
        };
        let mut b = img();
        set64(&mut b, 512, 1 << 18);
        assert_eq!(rules(&kvm(&b, &cfg)), [Rule::XstateBvNotPermitted]);
    }

    #[test]
    fn every_violation_is_reported() {
        let cfg = RestoreConfig::new(0xe7, MASK);
        let mut b = img();
        set64(&mut b, 512, 1 << 63 | 1 << 9 | 1);
        set64(&mut b, 520, 5);
        set64(&mut b, 528, 1);
        set64(&mut b, 536, 1); // bytes 24..31: not checked by XRSTOR standard
        b[24..28].copy_from_slice(&0x10000u32.to_le_bytes());
        let v = xrstor(&b, &cfg);
        assert_eq!(
            rules(&v),
            [
                Rule::XstateBvNotEnabled,
                Rule::XcompBvNotZero,
                Rule::HeaderReserved,
                Rule::MxcsrReserved
            ]
        );
        assert_eq!(
            v.iter().map(|v| v.offset).collect::<Vec<_>>(),
            [512, 520, 528, 24]
        );
        assert!(v[0].message.contains("pkru"), "{}", v[0].message);
    }

    #[test]
    fn standard_mxcsr_checked_even_without_sse_in_xstate_bv() {
        let cfg = RestoreConfig::new(0xe7, MASK);
        let mut b = img();
        b[24..28].copy_from_slice(&0x10000u32.to_le_bytes());
        assert_eq!(rules(&xrstor(&b, &cfg)), [Rule::MxcsrReserved]);
        // ...but not when neither SSE nor AVX is requested.
        let mut c = cfg;
        c.request = 1;
        assert!(xrstor(&b, &c).is_empty());
    }

    #[test]
    fn compacted_rules() {
        let cfg = RestoreConfig::new(0xe7, MASK);
        let mut b = img();
        set64(&mut b, 520, 1 << 63 | 0xe7);
        set64(&mut b, 512, 0xe7);
        assert!(xrstor_compacted(&b, &cfg).is_empty());
        // MXCSR only with SSE restored from the image.
        b[24..28].copy_from_slice(&0x10000u32.to_le_bytes());
        assert_eq!(rules(&xrstor_compacted(&b, &cfg)), [Rule::MxcsrReserved]);
        set64(&mut b, 512, 0xe5);
        assert!(xrstor_compacted(&b, &cfg).is_empty());
        // XSTATE_BV ⊄ XCOMP_BV, XCOMP_BV ⊄ XCR0, bytes 24..63 checked.
        set64(&mut b, 520, 1 << 63 | 0x2e1);
        set64(&mut b, 512, 0x7);
        b[575] = 1;
        assert_eq!(
            rules(&xrstor_compacted(&b, &cfg)),
            [
                Rule::XcompBvNotEnabled,
                Rule::XstateBvNotInXcompBv,
                Rule::HeaderReserved,
                Rule::MxcsrReserved
            ]
        );
        let mut nc = cfg;
        nc.xsavec = false;
        assert_eq!(
            rules(&xrstor_compacted(&b, &nc)),
            [Rule::CompactedUnsupported]
        );
        assert_eq!(rules(&xrstor_any(&b, &nc))[0], Rule::XcompBvNotZero);
        set64(&mut b, 520, 0);
        assert_eq!(rules(&xrstor_compacted(&b, &cfg)), [Rule::NotCompacted]);
    }

    #[test]
    fn xrstors_rules_and_cet_values() {
        let l = crate::testutil::zen5();
        let mut cfg = RestoreConfig::for_layout(&l, 0xe7, 0x1800, MASK);
        let mut b = vec![0u8; 2472];
        set64(&mut b, 520, 1 << 63 | 0x18e7);
        set64(&mut b, 512, 0x1800);
        assert!(xrstors_with_layout(&b, &cfg, Some(&l)).is_empty());
        // CET_U at 2432, CET_S at 2448 in the compacted form of 0x18e7.
        set64(&mut b, 2432, 0xc00); // SUPPRESS and TRACKER
        set64(&mut b, 2440, 2);
        set64(&mut b, 2448 + 16, 1 << 60);
        let v = xrstors_with_layout(&b, &cfg, Some(&l));
        assert_eq!(
            v.iter().map(|v| v.offset).collect::<Vec<_>>(),
            [2432, 2440, 2464]
        );
        assert!(v.iter().all(|v| v.rule == Rule::SupervisorValue));
        cfg.xss = 0;
        assert_eq!(rules(&xrstors(&b, &cfg)), [Rule::XcompBvNotEnabled]);
        set64(&mut b, 520, 0x18e7);
        assert_eq!(rules(&xrstors(&b, &cfg))[0], Rule::NotCompacted);
        cfg.xsaves = false;
        assert_eq!(rules(&xrstors(&b, &cfg)), [Rule::XrstorsUnsupported]);
    }

    #[test]
    fn cet_u_values_one_by_one() {
        let l = crate::testutil::zen5();
        let cfg = RestoreConfig::for_layout(&l, 0xe7, 0x1800, MASK);
        let check = |u_cet: u64, ssp: u64| {
            let mut b = vec![0u8; 2472];
            set64(&mut b, 520, 1 << 63 | 0x18e7);
            set64(&mut b, 512, 0x800);
            set64(&mut b, 2432, u_cet);
            set64(&mut b, 2440, ssp);
            xrstors_with_layout(&b, &cfg, Some(&l)).len()
        };
        assert_eq!(check(0x1 | 0x4 | 0x400, 0x7fff_ffff_f000), 0);
        assert_eq!(check(0x800, 0), 0);
        assert_eq!(check(1 << 7, 0), 1); // reserved bit
        assert_eq!(check(0xc00, 0), 1); // SUPPRESS + TRACKER
        assert_eq!(check(0x8000_0000_0000_0000, 0), 1); // bitmap base not canonical
        assert_eq!(check(0xffff_8000_0000_0000, 0), 0); // canonical high half
        assert_eq!(check(0, 1), 1); // SSP not 4-byte aligned
        assert_eq!(check(0, 0x0000_8000_0000_0000), 1); // SSP not canonical (48-bit)
        let mut la57 = cfg;
        la57.linear_address_bits = 57;
        let mut b = vec![0u8; 2472];
        set64(&mut b, 520, 1 << 63 | 0x18e7);
        set64(&mut b, 512, 0x800);
        set64(&mut b, 2440, 0x0000_8000_0000_0000);
        assert!(xrstors_with_layout(&b, &la57, Some(&l)).is_empty());
    }

    #[test]
    fn short_input_is_one_violation() {
        let cfg = RestoreConfig::new(0xe7, MASK);
        for n in [0usize, 1, 575] {
            let b = vec![0xffu8; n];
            for p in [
                Profile::Xrstor(cfg),
                Profile::XrstorCompacted(cfg),
                Profile::Xrstors(cfg),
                Profile::Kvm(KvmConfig::new(0xe7, MASK)),
            ] {
                assert_eq!(rules(&validate(&b, &p)), [Rule::TooSmall]);
            }
        }
    }

    /// Issue 9: `head -c 1000` of a full image is invalid in every profile, with the byte
    /// counts; the full image is valid.
    #[test]
    fn short_images_break_the_size_rule_in_every_profile() {
        let l = crate::testutil::spr();
        let cfg = RestoreConfig::for_layout(&l, 0x602e7, 0, MASK);
        let mut full = vec![0u8; 11008];
        full[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        set64(&mut full, 512, 0x7);
        let mut comp = vec![0u8; 10752];
        comp[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        set64(&mut comp, 512, 0x7);
        set64(&mut comp, 520, 1 << 63 | 0x602e7);
        let kvm_cfg = KvmConfig::new(0x602e7, MASK);
        let cases = [
            (Profile::Xrstor(cfg), &full, 11008u32),
            (Profile::XrstorCompacted(cfg), &comp, 10752),
            (Profile::Xrstors(cfg), &comp, 10752),
            (Profile::Kvm(kvm_cfg), &full, 11008),
        ];
        for (p, img, need) in cases {
            assert_eq!(required_size(img, &p, &l), Ok(need), "{p:?}");
            assert!(validate_with_layout(img, &p, &l).is_empty(), "{p:?}");
            for n in [1000usize, need as usize - 1] {
                let v = validate_with_layout(&img[..n], &p, &l);
                assert_eq!(rules(&v), [Rule::ShortImage], "{p:?} {n}");
                assert!(
                    v[0].message.contains(&format!("has {n} bytes"))
                        && v[0].message.contains(&format!("reads {need}")),
                    "{}",
                    v[0].message
                );
            }
        }
        // The instruction mask narrows what XRSTOR reads: EDX:EAX = 7 reads up to AVX's end.
        let mut c7 = cfg;
        c7.request = 7;
        assert_eq!(required_size(&full, &Profile::Xrstor(c7), &l), Ok(832));
        assert_eq!(
            required_size(&comp, &Profile::XrstorCompacted(c7), &l),
            Ok(832)
        );
        // KVM: the vCPU's buffer, at least 4096 bytes (struct kvm_xsave); a buffer that has not
        // grown for AMX tile data is 4096 here (standard size of 0x202e7 is 2752).
        let mut small = kvm_cfg;
        small.user_features = 0x202e7;
        assert_eq!(required_size(&full, &Profile::Kvm(small), &l), Ok(4096));
        let mut amx = full.clone();
        set64(&mut amx, 512, 0x40007);
        assert_eq!(required_size(&amx, &Profile::Kvm(small), &l), Ok(11008));
        // A header the layout cannot place is "cannot tell", never valid.
        let mut odd = comp.clone();
        set64(&mut odd, 520, 1 << 63 | 1 << 40 | 0x3);
        let mut wide = cfg;
        wide.xcr0 |= 1 << 40;
        let v = validate_with_layout(&odd, &Profile::XrstorCompacted(wide), &l);
        assert!(rules(&v).contains(&Rule::UnknownGeometry), "{v:?}");
    }

    #[test]
    fn violation_serializes() {
        let cfg = RestoreConfig::new(0xe7, MASK);
        let mut b = img();
        b[529] = 1;
        let v = xrstor(&b, &cfg);
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j[0]["rule"], "header_reserved");
        assert_eq!(j[0]["offset"], 528);
        assert_eq!(j[0]["value"], 256);
    }

    /// The fast path and the detailed path give the same verdict on every header: bits drawn
    /// around the masks the rules compare against (in, out, bit 63), one reserved byte set or
    /// not, MXCSR inside or outside the mask, each profile, short images.
    #[test]
    fn fast_path_agrees_with_detail() {
        use proptest::prelude::*;
        let masks = [0u64, 0x3, 0x7, 0xe7, 0x602e7, 0x18e7, 1 << 63, u64::MAX];
        let word = prop_oneof![
            proptest::sample::select(masks.to_vec()),
            proptest::sample::select(masks.to_vec()).prop_map(|m| m | 1 << 63),
            any::<u64>(),
        ];
        let cfg = (
            proptest::sample::select(masks.to_vec()),
            proptest::sample::select(masks.to_vec()),
            any::<bool>(),
            any::<bool>(),
            proptest::sample::select(vec![0u64, 0x3, 0x4, u64::MAX]),
        );
        let img_s = (
            word.clone(),
            word,
            proptest::option::of(528usize..576),
            proptest::sample::select(vec![0x1f80u32, 0x1fc0, 0x2_0000, 0xffff_ffff]),
            proptest::sample::select(vec![400usize, 575, 576, 2432]),
        );
        proptest!(ProptestConfig::with_cases(4000), |((xcr0, xss, xsavec, xsaves, request) in cfg,
                   (bv, xc, res, mxcsr, len) in img_s)| {
            let mut b = vec![0u8; len];
            if len >= 576 {
                set64(&mut b, 512, bv);
                set64(&mut b, 520, xc);
                if let Some(r) = res { b[r] = 0x10; }
            }
            if len >= 28 {
                b[24..28].copy_from_slice(&mxcsr.to_le_bytes());
            }
            let rc = RestoreConfig { xcr0, xss, request, mxcsr_mask: MASK, xsavec, xsaves, linear_address_bits: 48 };
            let kc = KvmConfig { supported_xcr0: xcr0, user_features: xss | 0x7, mxcsr_mask: MASK };
            prop_assert_eq!(xrstor_ok(&b, &rc), xrstor_detail(&b, &rc).is_empty());
            prop_assert_eq!(xrstor_compacted_ok(&b, &rc), xrstor_compacted_detail(&b, &rc).is_empty());
            prop_assert_eq!(xrstors_header_ok(&b, &rc), xrstors_detail(&b, &rc, None).is_empty());
            prop_assert_eq!(kvm_ok(&b, &kc), kvm_detail(&b, &kc).is_empty());
            prop_assert_eq!(xrstor_any_ok(&b, &rc), xrstor_any(&b, &rc).is_empty());
        });
    }

    /// A layout with two components on the same bytes (no real CPU): never a fast yes.
    #[test]
    fn overlapping_components_are_no_yes() {
        // Hi16_ZMM (7) and component 8 on the same bytes: the layout cannot say how many bytes
        // a restore of XCR0 0x1e7 reads, so no fast "valid" (the table refuses both).
        let mut d = crate::cpuid::CpuidDump::new("overlap");
        let r = |eax, ebx| crate::cpuid::Regs {
            eax,
            ebx,
            ecx: 0,
            edx: 0,
        };
        d.insert(0xd, 0, r(0x1e7, 0x1000));
        d.insert(0xd, 2, r(256, 576));
        d.insert(0xd, 5, r(64, 1088));
        d.insert(0xd, 6, r(512, 1152));
        d.insert(0xd, 7, r(1024, 1664));
        d.insert(0xd, 8, r(128, 1664));
        let l = Layout::from_dump(&d);
        let mut b = vec![0u8; 4096];
        b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        let p = Profile::Xrstor(RestoreConfig::new(0x1e7, MASK));
        assert!(!is_valid_with_layout(&b, &p, &l));
        let v = validate_with_layout(&b, &p, &l);
        assert_eq!(rules(&v), vec![Rule::UnknownGeometry]);
        // Without component 8 the same image is valid: the fast path, which no longer trusts
        // component 7's placement, says "look closer" and the detailed path says yes.
        let p = Profile::Xrstor(RestoreConfig::new(0xe7, MASK));
        assert!(!is_valid_with_layout(&b, &p, &l));
        assert!(validate_with_layout(&b, &p, &l).is_empty());
    }

    /// The fast path with the size rule agrees with the detailed path: Sapphire Rapids and
    /// Zen 5 layouts, headers around the masks, lengths around every extent.
    #[test]
    fn fast_size_rule_agrees_with_detail() {
        use crate::testutil::{spr, zen5};
        use proptest::prelude::*;
        let (spr, zen5) = (spr(), zen5());
        let masks = vec![
            0u64, 0x3, 0x7, 0xe7, 0x200e7, 0x600e7, 0x602e7, 0x18e7, 0x1800,
        ];
        let lens = vec![
            576usize, 832, 2432, 2440, 2696, 2752, 2816, 4095, 4096, 10687, 10688, 10752, 11008,
        ];
        let s = (
            any::<bool>(),
            proptest::sample::select(masks.clone()),
            proptest::sample::select(masks.clone()),
            any::<bool>(),
            proptest::sample::select(masks.clone()),
            proptest::sample::select(vec![u64::MAX, 0x7, 0x40003]),
            proptest::sample::select(lens),
            0usize..6,
        );
        proptest!(ProptestConfig::with_cases(3000), |((which, bv, xc, c63, xcr0, request, len, prof) in s)| {
            let l = if which { &spr } else { &zen5 };
            let mut b = vec![0u8; len];
            b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
            set64(&mut b, 512, bv);
            set64(&mut b, 520, if c63 { xc | 1 << 63 } else { xc });
            let rc = RestoreConfig { xcr0, xss: 0x1800 & l.xss_supported(), request, mxcsr_mask: MASK, xsavec: true, xsaves: true, linear_address_bits: 48 };
            let kc = KvmConfig { supported_xcr0: xcr0, user_features: xcr0 & !(1 << 18), mxcsr_mask: MASK };
            let p = match prof {
                0 => Profile::Xrstor(rc),
                1 | 4 => Profile::XrstorCompacted(rc),
                2 | 5 => Profile::Xrstors(rc),
                _ => Profile::Kvm(kc),
            };
            let detail = validate_with_layout_detail(&b, &p, l);
            let fast = is_valid_with_layout(&b, &p, l);
            if fast {
                prop_assert!(detail.is_empty(), "fast yes, detail {:?}", detail);
            } else if detail.is_empty() {
                // Conservative only for XRSTORS with CET loaded, or a layout the fast path refuses.
                prop_assert!(matches!(p, Profile::Xrstors(_)) || required_size(&b, &p, l).is_err(), "fast no, detail yes");
            }
        });
    }
}
