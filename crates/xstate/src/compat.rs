//! Can a snapshot be restored on a destination? A [`Verdict`] with every reason it cannot.
//!
//! The destination is a CPU's leaf 0xD ([`Layout`]) plus the guest XCR0/IA32_XSS masks it will
//! offer, and, for a KVM destination, what KVM reports: the supported guest XCR0
//! (KVM_X86_XCOMP_GUEST_SUPP), the KVM_CAP_XSAVE2 buffer size and the MSR index list
//! (`xstate-kvm` fills these in; the check itself needs no OS).
//!
//! The rules (each reason carries its id, `docs/xsnap.md` §6):
//! - `cpuid.*`: the destination's CPUID leaf 0xD breaks a consistency rule
//!   ([`Layout::verify`]): overlapping components, a size of 0, a size disagreeing with
//!   CPUID.(0xD,0).ECX, … — no verdict rests on such data;
//! - `snapshot.*`: the snapshot itself violates the `snapshot` profile;
//! - `component.unsupported` / `component.not_offered`: a component XCR0 or IA32_XSS enables in
//!   the snapshot is not supported by the destination CPU, or not in the guest masks it offers;
//! - `component.too_small`: the destination reports a size below the component's content;
//! - `component.supervisor_in_image`: a supervisor component is present but the destination
//!   restores a standard-form image (KVM carries supervisor state in MSRs, DESIGN.md §6);
//! - `xcr0.*`: the snapshot's XCR0 breaks an XSETBV rule on the destination (SDM Vol. 2B);
//! - `destination.xcr0.*`, `destination.xss`: the offered guest masks themselves are invalid;
//! - `xss.no_xsaves`, `xfd.unsupported`: IA32_XSS or IA32_XFD state without the feature;
//! - `msr.unavailable`: an MSR the snapshot carries is not in the destination's list;
//! - `mxcsr.unsupported_bits`: MXCSR has bits outside the destination's MXCSR_MASK;
//! - `size.xsave2`: the standard image needs more than KVM_CAP_XSAVE2 bytes;
//! - `image.rebuild`: rebuilding the image with the destination's offsets fails;
//! - `completeness.*`: the source CPU or XCR0/IA32_XSS shows state that lives outside the
//!   image and the snapshot lacks it ([`completeness`], reusable by readers of other
//!   formats).
//!
//! ```
//! use xstate::compat::{check, Destination};
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::snapshot::Snapshot;
//! let mut d = CpuidDump::new("dest");
//! d.insert(0xd, 0, Regs { eax: 0x7, ebx: 832, ecx: 832, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! let mut s = Snapshot::default();
//! s.source = xstate::snapshot::SourceCpu::from_dump(&d);
//! s.xcr0 = 0x207; // … with PKRU enabled, which the destination lacks
//! s.source.xcr0_supported = 0x207;
//! s.source.components.insert(9, xstate::snapshot::SourceComponent { size: 8, offset: 2688, flags: 0 });
//! let v = check(&s, &Destination::from_dump(&d, None, None));
//! assert!(!v.compatible);
//! assert!(v.reasons.iter().any(|r| r.rule == "component.unsupported"
//!     && r.component.as_deref() == Some("pkru")));
//! ```

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::components::{bits, mask, mask_names, Component};
use crate::cpuid::CpuidDump;
use crate::layout::{check_xcr0_rules, Form, Layout, Xcr0Rule};
use crate::snapshot::{
    content_len, msr_name, validate, Snapshot, SourceCpu, MSR_IA32_XFD, MSR_IA32_XFD_ERR,
    MSR_IA32_XSS, MXCSR_DEFAULT_MASK,
};

/// Where a snapshot is to be restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Display name (`host KVM`, a dump file name, …).
    pub name: String,
    /// The destination CPU's layout.
    pub layout: Layout,
    /// The user components the destination guest may enable (its guest CPUID 0xD EDX:EAX):
    /// defaults to everything the CPU supports; for KVM, KVM_X86_XCOMP_GUEST_SUPP.
    pub xcr0: u64,
    /// The supervisor components the guest may enable in IA32_XSS.
    pub xss: u64,
    /// The image form the destination restores: standard for KVM_SET_XSAVE and XRSTOR,
    /// compacted for XRSTORS. `None`: standard unless supervisor components are present.
    pub form: Option<Form>,
    /// KVM_CAP_XSAVE2: the size of the buffer KVM_SET_XSAVE takes, when known.
    pub xsave_size: Option<u32>,
    /// The MSR indices the destination can restore (KVM_GET_MSR_INDEX_LIST), when known.
    pub msrs: Option<Vec<u32>>,
    /// The destination CPU's MXCSR_MASK (FXSAVE byte 28; 0 means the default 0xFFBF), when
    /// known: a restore of an MXCSR with other bits raises #GP, KVM_SET_XSAVE returns EINVAL.
    pub mxcsr_mask: Option<u32>,
}

impl Destination {
    /// A destination from a CPUID dump; `xcr0`/`xss` are the guest masks offered (default:
    /// everything the CPU supports).
    pub fn from_dump(d: &CpuidDump, xcr0: Option<u64>, xss: Option<u64>) -> Self {
        let layout = Layout::from_dump(d);
        Destination {
            name: d.source.clone(),
            xcr0: xcr0.unwrap_or(layout.xcr0_supported()),
            xss: xss.unwrap_or(layout.xss_supported()),
            layout,
            form: None,
            xsave_size: None,
            msrs: None,
            mxcsr_mask: None,
        }
    }
}

/// One reason a snapshot cannot be restored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reason {
    /// Rule id (`component.unsupported`, `xcr0.avx512_all_or_none`, …).
    pub rule: String,
    /// The component concerned, by name, when there is one.
    pub component: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

/// The answer: compatible or not, with every reason and informative notes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// True when there is no reason.
    pub compatible: bool,
    /// Every reason the restore would fail or lose state.
    pub reasons: Vec<Reason>,
    /// Facts worth knowing that do not block (e.g. components that move between layouts).
    pub notes: Vec<String>,
}

fn reason(rule: &str, component: Option<u8>, message: String) -> Reason {
    Reason {
        rule: String::from(rule),
        component: component.map(Component::name_of),
        message,
    }
}

/// Checks a snapshot against a destination; returns every reason it cannot be restored there.
pub fn check(s: &Snapshot, dest: &Destination) -> Verdict {
    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    let l = &dest.layout;

    // No verdict rests on CPUID data that cannot be right: every broken consistency rule of
    // the destination's leaf 0xD is a reason (`cpuid.<rule>`).
    if let Err(e) = l.verify(&dest.name) {
        for p in e.problems {
            reasons.push(reason(
                &format!("cpuid.{}", p.rule()),
                None,
                format!("the destination's CPUID data ({}): {p}", dest.name),
            ));
        }
    }

    for viol in validate(s) {
        reasons.push(Reason {
            rule: format!("snapshot.{}", viol.rule),
            component: None,
            message: format!("{} = {}: {}", viol.location, viol.value, viol.message),
        });
    }

    // The guest masks offered must themselves be valid on the destination.
    if let Err(e) = l.check_xcr0(dest.xcr0) {
        for r in e.rules {
            reasons.push(reason(
                &format!("destination.xcr0.{}", r.id()),
                None,
                format!(
                    "the destination guest XCR0 mask {:#x}: {}",
                    dest.xcr0,
                    r.text()
                ),
            ));
        }
    }
    if let Err(e) = l.check_xss(dest.xss) {
        reasons.push(reason("destination.xss", None, format!("{e}")));
    }

    // Every component the snapshot's XCR0 / IA32_XSS enables must be enableable there.
    let user_sup = l.xcr0_supported();
    let xss_sup = l.xss_supported();
    for id in bits(s.xcr0 & !mask::COMPACTED) {
        let bit = 1u64 << id;
        let name = Component::name_of(id);
        if user_sup & bit == 0 {
            reasons.push(reason(
                "component.unsupported",
                Some(id),
                format!(
                    "component {id} ({name}) is enabled in the snapshot's XCR0 {:#x}{} but the destination CPU does not support it (CPUID.(0xD,0):EDX:EAX = {user_sup:#x})",
                    s.xcr0,
                    if s.xstate_bv() & bit != 0 { " and holds state" } else { "" }
                ),
            ));
        } else if dest.xcr0 & bit == 0 {
            reasons.push(reason(
                "component.not_offered",
                Some(id),
                format!(
                    "component {id} ({name}) is enabled in the snapshot's XCR0 {:#x} but the destination guest may enable only {:#x} ({})",
                    s.xcr0,
                    dest.xcr0,
                    mask_names(dest.xcr0)
                ),
            ));
        }
    }
    for id in bits(s.xss & !mask::COMPACTED) {
        let bit = 1u64 << id;
        let name = Component::name_of(id);
        if xss_sup & bit == 0 {
            reasons.push(reason(
                "component.unsupported",
                Some(id),
                format!(
                    "supervisor component {id} ({name}) is enabled in the snapshot's IA32_XSS {:#x} but the destination CPU does not support it (CPUID.(0xD,1):EDX:ECX = {xss_sup:#x})",
                    s.xss
                ),
            ));
        } else if dest.xss & bit == 0 {
            reasons.push(reason(
                "component.not_offered",
                Some(id),
                format!(
                    "supervisor component {id} ({name}) is enabled in the snapshot's IA32_XSS {:#x} but the destination guest may enable only {:#x}",
                    s.xss, dest.xss
                ),
            ));
        }
    }
    // Sizes of the present components on the destination.
    for id in s.present().filter(|&id| id >= 2) {
        let bit = 1u64 << id;
        if (user_sup | xss_sup) & bit == 0 {
            continue;
        }
        let have = l.geometry(id).size;
        let need = content_len(id, s.source.size_of(id));
        if have < need {
            reasons.push(reason(
                "component.too_small",
                Some(id),
                format!(
                    "component {id} ({}) holds {need} bytes but the destination's CPUID.(0xD,{id}).EAX reports {have}",
                    Component::name_of(id)
                ),
            ));
        }
    }

    // XCR0 validity on the destination (the unsupported bits are named above).
    if let Err(e) = check_xcr0_rules(s.xcr0, user_sup, xss_sup) {
        for r in e.rules.iter().filter(|r| **r != Xcr0Rule::Unsupported) {
            reasons.push(reason(
                &format!("xcr0.{}", r.id()),
                None,
                format!(
                    "the snapshot's XCR0 {:#x} is invalid on the destination: {}",
                    s.xcr0,
                    r.text()
                ),
            ));
        }
    }
    if s.xss != 0 && !l.leaf().has_xsaves() {
        reasons.push(reason(
            "xss.no_xsaves",
            None,
            format!(
                "the snapshot's IA32_XSS is {:#x} but the destination has no XSAVES/IA32_XSS (CPUID.(0xD,1):EAX[3] = 0)",
                s.xss
            ),
        ));
    }
    let xfd_state = s.xfd | s.xfd_err;
    if xfd_state != 0 {
        if !l.leaf().has_xfd() {
            reasons.push(reason(
                "xfd.unsupported",
                None,
                format!(
                    "IA32_XFD {:#x} / IA32_XFD_ERR {:#x} are set but the destination has no XFD (CPUID.(0xD,1):EAX[4] = 0)",
                    s.xfd, s.xfd_err
                ),
            ));
        } else {
            for id in bits(xfd_state & !mask::COMPACTED) {
                if !l.geometry(id).xfd {
                    reasons.push(reason(
                        "xfd.unsupported",
                        Some(id),
                        format!(
                            "component {id} ({}) is armed in IA32_XFD/XFD_ERR but is not XFD-capable on the destination (CPUID.(0xD,{id}).ECX[2] = 0)",
                            Component::name_of(id)
                        ),
                    ));
                }
            }
        }
    }

    // The form the destination restores.
    let supervisor_present = s.xstate_bv() & s.xss & !s.xcr0;
    let form = dest.form.unwrap_or(if supervisor_present != 0 {
        Form::Compacted
    } else {
        Form::Standard
    });
    if form == Form::Standard {
        for id in bits(supervisor_present) {
            reasons.push(reason(
                "component.supervisor_in_image",
                Some(id),
                format!(
                    "supervisor component {id} ({}) is present but the destination restores a standard-form image, which has no place for it (KVM carries supervisor state in MSRs)",
                    Component::name_of(id)
                ),
            ));
        }
    } else if !l.leaf().has_xsaves() && supervisor_present != 0 {
        reasons.push(reason(
            "xss.no_xsaves",
            None,
            String::from("supervisor components are present but the destination has no XRSTORS"),
        ));
    }

    // MXCSR must fit the destination's MXCSR_MASK (SDM Vol. 1 §11.6.6; DESIGN.md §5, §6).
    if let Some(m) = dest.mxcsr_mask {
        let eff = if m == 0 { MXCSR_DEFAULT_MASK } else { m };
        let bad = s.legacy.mxcsr & !eff;
        if bad != 0 {
            reasons.push(reason(
                "mxcsr.unsupported_bits",
                Some(1),
                format!(
                    "MXCSR {:#x} has bits {bad:#x} outside the destination's MXCSR_MASK {eff:#x}: XRSTOR raises #GP and KVM_SET_XSAVE returns EINVAL",
                    s.legacy.mxcsr
                ),
            ));
        }
    }

    // MSRs the destination must accept.
    if let Some(list) = &dest.msrs {
        let mut needed: Vec<(u32, u64)> = Vec::new();
        for (idx, val) in [
            (MSR_IA32_XSS, s.xss),
            (MSR_IA32_XFD, s.xfd),
            (MSR_IA32_XFD_ERR, s.xfd_err),
        ] {
            if val != 0 {
                needed.push((idx, val));
            }
        }
        needed.extend(s.msrs.iter().map(|(&i, &v)| (i, v)));
        for (idx, val) in needed {
            if !list.contains(&idx) {
                reasons.push(reason(
                    "msr.unavailable",
                    None,
                    format!(
                        "MSR {idx:#x} ({}) = {val:#x} is in the snapshot but not in the destination's MSR list",
                        msr_name(idx)
                    ),
                ));
            }
        }
    }

    // The image KVM_SET_XSAVE would take must fit KVM_CAP_XSAVE2.
    let user = s.xcr0 & user_sup;
    if let Some(limit) = dest.xsave_size {
        if let Ok(fl) = l.standard(user & !mask::COMPACTED) {
            if fl.size > limit {
                reasons.push(reason(
                    "size.xsave2",
                    None,
                    format!(
                        "the standard image for XCR0 {user:#x} is {} bytes on the destination but KVM_CAP_XSAVE2 is {limit}",
                        fl.size
                    ),
                ));
            }
        }
    }

    // Finally rebuild the image with the destination's offsets.
    if reasons.is_empty() {
        let m = match form {
            Form::Standard => s.xcr0,
            Form::Compacted => s.xcr0 | s.xss,
        };
        if let Err(e) = s.to_image(l, form, m) {
            reasons.push(Reason {
                rule: String::from("image.rebuild"),
                component: match &e {
                    crate::snapshot::SnapshotError::CannotHold { name, .. } => Some(name.clone()),
                    _ => None,
                },
                message: format!("{e}"),
            });
        }
    }

    // Notes: what moves.
    let src_layout = s.source.layout();
    for id in s.present().filter(|&id| id >= 2) {
        let a = src_layout.geometry(id).standard_offset;
        let b = l.geometry(id).standard_offset;
        if let (Some(a), Some(b)) = (a, b) {
            if a != b && (user_sup & (1u64 << id)) != 0 {
                notes.push(format!(
                    "component {id} ({}) moves from standard offset {a} on the source to {b} on the destination; the image is rebuilt from the destination's layout",
                    Component::name_of(id)
                ));
            }
        }
    }
    if !s.source.vendor.is_empty() {
        notes.push(format!(
            "source CPU: {} family {:#x} model {:#x} stepping {}",
            s.source.vendor, s.source.family, s.source.model, s.source.stepping
        ));
    }

    reasons.extend(completeness(&s.source, &OutsideImage::of_snapshot(s)));

    Verdict {
        compatible: reasons.is_empty(),
        reasons,
        notes,
    }
}

/// MSR index of IA32_U_CET (CET_U component: user CET configuration).
pub const MSR_IA32_U_CET: u32 = 0x6a0;
/// MSR index of IA32_S_CET (supervisor CET configuration).
pub const MSR_IA32_S_CET: u32 = 0x6a2;
/// MSR indices of IA32_PL0_SSP, IA32_PL1_SSP, IA32_PL2_SSP (the CET_S component).
pub const MSR_IA32_PL012_SSP: [u32; 3] = [0x6a4, 0x6a5, 0x6a6];
/// MSR index of IA32_PL3_SSP (CET_U component: the user shadow-stack pointer).
pub const MSR_IA32_PL3_SSP: u32 = 0x6a7;
/// MSR index of IA32_INTERRUPT_SSP_TABLE_ADDR (supervisor CET).
pub const MSR_IA32_INT_SSP_TAB: u32 = 0x6a8;

/// What a snapshot record of any format keeps outside its XSAVE image: XCR0, IA32_XSS,
/// IA32_XFD, IA32_XFD_ERR (each `None` when the record does not carry it, which is not the
/// same as 0), the other MSRs it carries, and the components whose state its image itself
/// holds (a standard-form image never holds supervisor components; a compacted XSAVES image
/// holds those of XCOMP_BV).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutsideImage<'a> {
    /// XCR0 of the vCPU.
    pub xcr0: u64,
    /// IA32_XSS, when the record carries it.
    pub xss: Option<u64>,
    /// IA32_XFD, when the record carries it.
    pub xfd: Option<u64>,
    /// IA32_XFD_ERR, when the record carries it.
    pub xfd_err: Option<u64>,
    /// Every other MSR the record carries, index → value.
    pub msrs: &'a BTreeMap<u32, u64>,
    /// Components whose state the record's image holds.
    pub in_image: u64,
}

impl<'a> OutsideImage<'a> {
    /// An `.xsnap` snapshot: format v1 always carries IA32_XSS, IA32_XFD and IA32_XFD_ERR;
    /// its components are those of XCR0 and those present in it.
    pub fn of_snapshot(s: &'a Snapshot) -> Self {
        OutsideImage {
            xcr0: s.xcr0,
            xss: Some(s.xss),
            xfd: Some(s.xfd),
            xfd_err: Some(s.xfd_err),
            msrs: &s.msrs,
            in_image: s.xcr0 | s.xstate_bv(),
        }
    }
}

/// Is the state outside the image complete? Every reason the source CPU (its leaf 0xD as the
/// snapshot records it) or the record's own XCR0/IA32_XSS shows state the record lacks — what
/// a restore would silently reset, and what makes a guest kernel fail its next XRSTORS
/// ("Bad FPU state detected at restore_fpregs_from_fpstate", DESIGN §8, §10 firecracker#5972):
///
/// - `completeness.xss_missing`: the source has XSAVES and supervisor components
///   (CPUID.(0xD,1):EAX\[3\], ECX/EDX ≠ 0) but the record has no IA32_XSS;
/// - `completeness.xfd_missing`: the source has XFD (CPUID.(0xD,1):EAX\[4\]) and XCR0 enables
///   an XFD-capable component (CPUID.(0xD,i):ECX\[2\], AMX TILEDATA) but IA32_XFD or
///   IA32_XFD_ERR is missing (DESIGN §6: both are migratable MSRs);
/// - `completeness.cet_missing`: IA32_XSS enables CET_U (IA32_U_CET, IA32_PL3_SSP) or CET_S
///   (IA32_PL0_SSP–IA32_PL2_SSP, with IA32_S_CET and IA32_INTERRUPT_SSP_TABLE_ADDR) that the
///   image does not hold and the MSRs are missing (KVM carries CET state in MSRs, DESIGN §6).
///
/// The guest's live SSP register (KVM_REG_GUEST_SSP, Linux ≥ 6.18) is not an MSR and no record
/// format read here carries it; it is not checked.
///
/// ```
/// use std::collections::BTreeMap;
/// use xstate::compat::{completeness, OutsideImage};
/// use xstate::snapshot::SourceCpu;
/// // A source with XSAVES and CET_U/CET_S in IA32_XSS (Zen 4/5, DESIGN §9).
/// let mut src = SourceCpu::default();
/// src.xsave_features = 0xf;
/// src.xss_supported = 0x1800;
/// let msrs = BTreeMap::new();
/// let rec = OutsideImage { xcr0: 0xe7, xss: None, xfd: None, xfd_err: None, msrs: &msrs, in_image: 0xe7 };
/// let r = completeness(&src, &rec);
/// assert_eq!(r[0].rule, "completeness.xss_missing");
/// ```
pub fn completeness(source: &SourceCpu, rec: &OutsideImage<'_>) -> Vec<Reason> {
    let mut out = Vec::new();
    let xsaves = source.xsave_features & (1 << 3) != 0;
    if rec.xss.is_none() && xsaves && source.xss_supported != 0 {
        out.push(reason(
            "completeness.xss_missing",
            None,
            format!(
                "the source CPU has XSAVES and supervisor components {:#x} ({}) for IA32_XSS (CPUID.(0xD,1):EDX:ECX) but the snapshot has no IA32_XSS: a restore leaves it 0 and a guest kernel that enabled them faults on its next XRSTORS (\"Bad FPU state\")",
                source.xss_supported,
                mask_names(source.xss_supported)
            ),
        ));
    }
    let xfd_capable: u64 = source
        .components
        .iter()
        .filter(|(_, c)| c.flags & 0x4 != 0)
        .fold(0, |m, (&id, _)| {
            m | 1u64.checked_shl(u32::from(id)).unwrap_or(0)
        });
    let armable = rec.xcr0 & xfd_capable;
    if source.xsave_features & (1 << 4) != 0 && armable != 0 {
        let missing: Vec<&str> = [
            ("IA32_XFD", rec.xfd.is_none()),
            ("IA32_XFD_ERR", rec.xfd_err.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| *n)
        .collect();
        if !missing.is_empty() {
            out.push(reason(
                "completeness.xfd_missing",
                None,
                format!(
                    "XCR0 {:#x} enables XFD-capable components {armable:#x} ({}) on a source CPU with XFD (CPUID.(0xD,1):EAX[4]) but the snapshot lacks {}: whether the guest armed them, and a pending #NM's cause, would be lost",
                    rec.xcr0,
                    mask_names(armable),
                    missing.join(" and ")
                ),
            ));
        }
    }
    let xss = rec.xss.unwrap_or(0);
    let cet: [(u8, &[u32]); 2] = [
        (11, &[MSR_IA32_U_CET, MSR_IA32_PL3_SSP]),
        (
            12,
            &[
                MSR_IA32_PL012_SSP[0],
                MSR_IA32_PL012_SSP[1],
                MSR_IA32_PL012_SSP[2],
                MSR_IA32_S_CET,
                MSR_IA32_INT_SSP_TAB,
            ],
        ),
    ];
    for (id, needed) in cet {
        let bit = 1u64 << id;
        if xss & bit == 0 || rec.in_image & bit != 0 {
            continue;
        }
        let missing: Vec<String> = needed
            .iter()
            .filter(|i| !rec.msrs.contains_key(i))
            .map(|&i| msr_name(i))
            .collect();
        if !missing.is_empty() {
            out.push(reason(
                "completeness.cet_missing",
                Some(id),
                format!(
                    "IA32_XSS {xss:#x} enables {} but the image does not hold it and the snapshot lacks {}",
                    Component::name_of(id),
                    missing.join(", ")
                ),
            ));
        }
    }
    out
}
