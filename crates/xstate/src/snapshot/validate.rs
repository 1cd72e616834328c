//! The `snapshot` validation profile: structural checks of a decoded [`Snapshot`], every
//! violation reported with its rule id, location, value and message (`docs/xsnap.md` §5 lists
//! the rules).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{
    content_len, msr_name, Snapshot, MSR_IA32_XFD, MSR_IA32_XFD_ERR, MSR_IA32_XSS,
    MXCSR_DEFAULT_MASK, MXCSR_INIT,
};
use crate::components::{bits, mask, mask_names, Component};
use crate::layout::check_xcr0_rules;

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Rule identifier (`xcr0.avx_needs_sse`, `component.size`, …).
    pub rule: String,
    /// The field (`xcr0`, `components\[9\]`, `legacy.mxcsr`, `msrs[0xda0]`, …).
    pub location: String,
    /// The offending value, as hex or a byte count.
    pub value: String,
    /// What is wrong, in words.
    pub message: String,
}

impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "[{}] {} = {}: {}",
            self.rule, self.location, self.value, self.message
        )
    }
}

fn v(rule: &str, location: String, value: String, message: String) -> Violation {
    Violation {
        rule: String::from(rule),
        location,
        value,
        message,
    }
}

/// Checks a snapshot's structure; returns every violation (empty when valid).
///
/// The rules: XCR0 obeys the XSETBV rules against the source CPU's supported mask
/// (`xcr0.*`, SDM Vol. 2B XSETBV); IA32_XSS, IA32_XFD and IA32_XFD_ERR hold only bits the
/// source CPU supports (`xss.unsupported`, `xfd.unsupported`, `xfd_err.unsupported`); every
/// present component is enabled, not armed by XFD, of its architectural length and known to
/// the source layout (`component.*`); x87 fields are at init when x87 is absent, MXCSR within
/// its mask and loadable (`legacy.*`); the MSR map does not repeat the dedicated fields
/// (`msrs.dedicated`); the source layout can place XCR0 (`source.layout`).
///
/// ```
/// use xstate::snapshot::{validate, Snapshot};
/// let mut s = Snapshot::default();
/// s.source.xcr0_supported = 0x3;
/// s.xcr0 = 0x3;
/// s.components.insert(1, vec![0; 16]); // XMM registers are 256 bytes
/// let v = validate(&s);
/// assert_eq!(v.len(), 1);
/// assert_eq!(v[0].rule, "component.size");
/// assert_eq!(v[0].location, "components[1]");
/// ```
pub fn validate(s: &Snapshot) -> Vec<Violation> {
    let mut out = Vec::new();
    let src = &s.source;
    if let Err(e) = check_xcr0_rules(s.xcr0, src.xcr0_supported, src.xss_supported) {
        for r in e.rules {
            out.push(v(
                &format!("xcr0.{}", r.id()),
                String::from("xcr0"),
                format!("{:#x}", s.xcr0),
                String::from(r.text()),
            ));
        }
    }
    let bad_xss = s.xss & !src.xss_supported;
    if bad_xss != 0 {
        out.push(v(
            "xss.unsupported",
            String::from("xss"),
            format!("{:#x}", s.xss),
            format!(
                "bits {bad_xss:#x} ({}) are not in the source CPU's CPUID.(0xD,1):EDX:ECX = {:#x}",
                mask_names(bad_xss),
                src.xss_supported
            ),
        ));
    }
    // IA32_XFD / XFD_ERR: only components whose CPUID.(0xD,i).ECX[2] is set (SDM Vol. 1
    // §13.14; WRMSR raises #GP otherwise).
    let xfd_capable = src
        .components
        .iter()
        .filter(|(_, c)| c.flags & 4 != 0)
        .fold(
            0u64,
            |m, (&id, _)| if id < 63 { m | (1u64 << id) } else { m },
        );
    for (name, val) in [("xfd", s.xfd), ("xfd_err", s.xfd_err)] {
        let bad = val & !xfd_capable;
        if bad != 0 {
            out.push(v(
                &format!("{name}.unsupported"),
                String::from(name),
                format!("{val:#x}"),
                format!(
                    "bits {bad:#x} ({}) are not XFD-capable on the source CPU (CPUID.(0xD,i).ECX[2])",
                    mask_names(bad)
                ),
            ));
        }
    }
    let enabled = s.xcr0 | s.xss;
    for (&id, data) in &s.components {
        let loc = format!("components[{id}]");
        if id >= 63 {
            out.push(v(
                "component.id",
                loc,
                format!("{id}"),
                String::from(
                    "component numbers are 0..=62 (bit 63 of XCOMP_BV is the compacted flag)",
                ),
            ));
            continue;
        }
        let name = Component::name_of(id);
        let bit = 1u64 << id;
        if enabled & bit == 0 {
            out.push(v(
                "component.not_enabled",
                loc.clone(),
                name.clone(),
                format!(
                    "component {id} ({name}) is present but neither XCR0 {:#x} nor IA32_XSS {:#x} enables it",
                    s.xcr0, s.xss
                ),
            ));
        }
        if s.xfd & bit != 0 && s.xcr0 & bit != 0 {
            out.push(v(
                "component.armed_by_xfd",
                loc.clone(),
                name.clone(),
                format!(
                    "component {id} ({name}) is present while IA32_XFD {:#x} arms it: restoring it raises #NM (SDM Vol. 1 §13.14)",
                    s.xfd
                ),
            ));
        }
        let size = src.size_of(id);
        if id >= 2 && size == 0 {
            out.push(v(
                "source.missing_component",
                format!("source.components[{id}]"),
                String::from("0"),
                format!(
                    "component {id} ({name}) is present but the source leaf 0xD has no size for it"
                ),
            ));
            continue;
        }
        let want = content_len(id, size);
        if data.len() != want as usize {
            out.push(v(
                "component.size",
                loc,
                format!("{}", data.len()),
                format!("component {id} ({name}) must hold {want} bytes of architectural content"),
            ));
        } else if id >= 2 && want > size {
            out.push(v(
                "source.component_too_small",
                format!("source.components[{id}]"),
                format!("{size}"),
                format!("the source CPU reports {size} bytes for component {id} ({name}), less than its {want}-byte content"),
            ));
        }
        if let Some(c) = src.components.get(&id) {
            let sup_flag = c.flags & 1 != 0;
            let sup_mask = src.xss_supported & bit != 0;
            if id >= 2 && src.xcr0_supported & bit == 0 && !sup_mask {
                // Reported by xcr0.unsupported / xss.unsupported when enabled.
            } else if id >= 2 && sup_flag != sup_mask {
                out.push(v(
                    "source.kind",
                    format!("source.components[{id}].flags"),
                    format!("{:#x}", c.flags),
                    format!("component {id} ({name}): ECX[0] (supervisor) disagrees with the supported masks"),
                ));
            }
        }
    }
    let l = &s.legacy;
    if s.xstate_bv() & mask::X87 == 0 && !l.x87_is_init() {
        for (field, val, init) in [
            ("fcw", u64::from(l.fcw), u64::from(super::FCW_INIT)),
            ("fsw", u64::from(l.fsw), 0),
            ("ftw", u64::from(l.ftw), 0),
            ("fop", u64::from(l.fop), 0),
            ("fip", l.fip, 0),
            ("fdp", l.fdp, 0),
        ] {
            if val != init {
                out.push(v(
                    "legacy.x87_not_init",
                    format!("legacy.{field}"),
                    format!("{val:#x}"),
                    format!("x87 (component 0) is absent, i.e. in its init state, so {field} must be {init:#x}"),
                ));
            }
        }
    }
    let mxcsr_mask = if l.mxcsr_mask == 0 {
        MXCSR_DEFAULT_MASK
    } else {
        l.mxcsr_mask
    };
    if l.mxcsr & !mxcsr_mask != 0 {
        out.push(v(
            "legacy.mxcsr_reserved",
            String::from("legacy.mxcsr"),
            format!("{:#x}", l.mxcsr),
            format!(
                "bits {:#x} are outside MXCSR_MASK {mxcsr_mask:#x}: every restore raises #GP (SDM Vol. 1 §13.8)",
                l.mxcsr & !mxcsr_mask
            ),
        ));
    }
    if l.mxcsr != MXCSR_INIT && s.xcr0 & (mask::SSE | mask::AVX) == 0 {
        out.push(v(
            "legacy.mxcsr_not_loadable",
            String::from("legacy.mxcsr"),
            format!("{:#x}", l.mxcsr),
            String::from("MXCSR differs from 0x1f80 but XCR0 enables neither SSE nor AVX, so no restore loads it"),
        ));
    }
    for idx in [MSR_IA32_XSS, MSR_IA32_XFD, MSR_IA32_XFD_ERR] {
        if let Some(val) = s.msrs.get(&idx) {
            out.push(v(
                "msrs.dedicated",
                format!("msrs[{idx:#x}]"),
                format!("{val:#x}"),
                format!(
                    "{} has its own field and must not appear in the MSR map",
                    msr_name(idx)
                ),
            ));
        }
    }
    if out.iter().all(|x| !x.rule.starts_with("source.")) {
        let layout = s.source.layout();
        let user = s.xcr0 & src.xcr0_supported & !mask::COMPACTED;
        for id in bits(user & !mask::LEGACY) {
            let size = src.size_of(id);
            let off = src.components.get(&id).map_or(0, |c| c.offset);
            if size > super::convert::MAX_GEOMETRY || off > super::convert::MAX_GEOMETRY {
                out.push(v(
                    "source.layout",
                    format!("source.components[{id}]"),
                    format!("{size}@{off}"),
                    format!("component {id}: size or offset beyond any real CPU"),
                ));
            }
        }
        if out.iter().all(|x| x.rule != "source.layout") {
            if let Err(e) = layout.standard(user) {
                out.push(v(
                    "source.layout",
                    String::from("source.components"),
                    format!("{user:#x}"),
                    format!("the source layout cannot place XCR0's components: {e}"),
                ));
            }
        }
    }
    out
}
