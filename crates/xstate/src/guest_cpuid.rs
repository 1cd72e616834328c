//! A guest's CPUID leaf 0xD (and the feature leaves that must agree with it) for a chosen set
//! of guest state components, e.g. "the host minus AVX-512".
//!
//! Given the host's CPUID (or KVM's supported CPUID) and the components to offer, it computes:
//! - 0xD.0: EDX:EAX = guest XCR0 mask; EBX and ECX = the standard size for that mask, computed
//!   by the layout engine (SDM Vol. 2A CPUID leaf 0DH; EBX follows the guest's XCR0 at run time,
//!   so it starts at the value for every offered component, as ECX);
//! - 0xD.1: EAX capability bits consistent with what is offered (XSAVES/IA32_XSS only with
//!   supervisor components offered, XFD only with an XFD-capable component offered), EBX the
//!   compacted size of XCR0 | IA32_XSS, EDX:ECX the guest IA32_XSS mask;
//! - 0xD.i for every offered component: the host's size, offset and flags (XFD flag cleared
//!   when XFD is not offered);
//! - leaves 1, 7, 0x14, 0x1D, 0x1E and 0x80000001 with the feature bits of withheld
//!   components cleared (AVX/FMA/F16C/AVX2 without AVX, AVX512F and the AVX-512 family without
//!   AVX-512, AMX-TILE/INT8/BF16/FP16/COMPLEX and leaves 0x1D/0x1E without AMX, PKU/OSPKE
//!   without PKRU, MPX, CET-SS/IBT, Intel PT, APX, LWP), per the SDM Vol. 2A CPUID tables.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::guest_cpuid::{guest_cpuid, guest_masks};
//! use xstate::layout::Layout;
//! let mut host = CpuidDump::new("host");
//! host.insert(0xd, 0, Regs { eax: 0xe7, ebx: 2432, ecx: 2432, edx: 0 });
//! host.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! host.insert(0xd, 5, Regs { eax: 64, ebx: 832, ecx: 0, edx: 0 });
//! host.insert(0xd, 6, Regs { eax: 512, ebx: 896, ecx: 0, edx: 0 });
//! host.insert(0xd, 7, Regs { eax: 1024, ebx: 1408, ecx: 0, edx: 0 });
//! host.insert(7, 0, Regs { eax: 0, ebx: 1 << 16, ecx: 0, edx: 0 }); // AVX512F
//! let (xcr0, xss) = guest_masks(&Layout::from_dump(&host), None, 0xe0).unwrap();
//! assert_eq!(xcr0, 0x7);
//! let g = guest_cpuid(&host, xcr0, xss).unwrap();
//! assert_eq!(g.entry(0xd, 0).unwrap().ecx, 832); // 576 + 256: AVX ends the layout
//! assert_eq!(g.entry(7, 0).unwrap().ebx & (1 << 16), 0);
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::components::{bits, mask, mask_names, Component};
use crate::cpuid::{CpuidDump, Regs};
use crate::layout::{check_xcr0_rules, Layout, LayoutError, Xcr0Error};

/// One CPUID entry of the guest table (the shape of `kvm_cpuid_entry2` without the flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CpuidEntry {
    /// EAX input (leaf).
    pub function: u32,
    /// ECX input (subleaf).
    pub index: u32,
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

/// A register of a CPUID entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// A feature bit that depends on a state component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FeatureBit {
    /// Leaf.
    pub leaf: u32,
    /// Subleaf.
    pub subleaf: u32,
    /// Register.
    pub reg: Reg,
    /// Bit number.
    pub bit: u8,
    /// SDM name of the feature.
    pub name: &'static str,
    /// The components it needs: cleared when any of them is withheld.
    pub needs: u64,
}

const fn fb(
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u8,
    name: &'static str,
    needs: u64,
) -> FeatureBit {
    FeatureBit {
        leaf,
        subleaf,
        reg,
        bit,
        name,
        needs,
    }
}

/// Feature flags that enumerate instructions or state of a component (SDM Vol. 2A, CPUID
/// leaf 01H ECX, leaf 07H subleaves 0 and 1; AMD APM Vol. 3 for LWP).
pub const FEATURE_BITS: &[FeatureBit] = &[
    fb(1, 0, Reg::Ecx, 12, "FMA", mask::AVX),
    fb(1, 0, Reg::Ecx, 28, "AVX", mask::AVX),
    fb(1, 0, Reg::Ecx, 29, "F16C", mask::AVX),
    fb(7, 0, Reg::Ebx, 5, "AVX2", mask::AVX),
    fb(7, 0, Reg::Ebx, 14, "MPX", mask::MPX),
    fb(7, 0, Reg::Ebx, 16, "AVX512F", mask::AVX512),
    fb(7, 0, Reg::Ebx, 17, "AVX512DQ", mask::AVX512),
    fb(7, 0, Reg::Ebx, 21, "AVX512_IFMA", mask::AVX512),
    fb(7, 0, Reg::Ebx, 25, "Intel PT", mask::PT),
    fb(7, 0, Reg::Ebx, 26, "AVX512PF", mask::AVX512),
    fb(7, 0, Reg::Ebx, 27, "AVX512ER", mask::AVX512),
    fb(7, 0, Reg::Ebx, 28, "AVX512CD", mask::AVX512),
    fb(7, 0, Reg::Ebx, 30, "AVX512BW", mask::AVX512),
    fb(7, 0, Reg::Ebx, 31, "AVX512VL", mask::AVX512),
    fb(7, 0, Reg::Ecx, 1, "AVX512_VBMI", mask::AVX512),
    fb(7, 0, Reg::Ecx, 3, "PKU", mask::PKRU),
    fb(7, 0, Reg::Ecx, 4, "OSPKE", mask::PKRU),
    fb(7, 0, Reg::Ecx, 6, "AVX512_VBMI2", mask::AVX512),
    fb(7, 0, Reg::Ecx, 7, "CET_SS", mask::CET_U | mask::CET_S),
    fb(7, 0, Reg::Ecx, 9, "VAES", mask::AVX),
    fb(7, 0, Reg::Ecx, 10, "VPCLMULQDQ", mask::AVX),
    fb(7, 0, Reg::Ecx, 11, "AVX512_VNNI", mask::AVX512),
    fb(7, 0, Reg::Ecx, 12, "AVX512_BITALG", mask::AVX512),
    fb(7, 0, Reg::Ecx, 14, "AVX512_VPOPCNTDQ", mask::AVX512),
    fb(7, 0, Reg::Edx, 2, "AVX512_4VNNIW", mask::AVX512),
    fb(7, 0, Reg::Edx, 3, "AVX512_4FMAPS", mask::AVX512),
    fb(7, 0, Reg::Edx, 8, "AVX512_VP2INTERSECT", mask::AVX512),
    fb(7, 0, Reg::Edx, 20, "CET_IBT", mask::CET_U | mask::CET_S),
    fb(7, 0, Reg::Edx, 22, "AMX-BF16", mask::AMX),
    fb(7, 0, Reg::Edx, 23, "AVX512_FP16", mask::AVX512),
    fb(7, 0, Reg::Edx, 24, "AMX-TILE", mask::AMX),
    fb(7, 0, Reg::Edx, 25, "AMX-INT8", mask::AMX),
    fb(7, 1, Reg::Eax, 4, "AVX-VNNI", mask::AVX),
    fb(7, 1, Reg::Eax, 5, "AVX512_BF16", mask::AVX512),
    fb(7, 1, Reg::Eax, 21, "AMX-FP16", mask::AMX),
    fb(7, 1, Reg::Eax, 23, "AVX-IFMA", mask::AVX),
    fb(7, 1, Reg::Edx, 4, "AVX-VNNI-INT8", mask::AVX),
    fb(7, 1, Reg::Edx, 5, "AVX-NE-CONVERT", mask::AVX),
    fb(7, 1, Reg::Edx, 8, "AMX-COMPLEX", mask::AMX),
    fb(7, 1, Reg::Edx, 10, "AVX-VNNI-INT16", mask::AVX),
    fb(7, 1, Reg::Edx, 19, "AVX10", mask::AVX512),
    fb(7, 1, Reg::Edx, 21, "APX_F", mask::APX),
    fb(0x8000_0001, 0, Reg::Ecx, 15, "LWP", mask::LWP),
];

/// Leaves that only describe one component's state and are zeroed when it is withheld:
/// 0x1D (AMX tile information), 0x1E (TMUL information), 0x14 (Intel PT).
const COMPONENT_LEAVES: &[(u32, u64)] = &[(0x1d, mask::AMX), (0x1e, mask::AMX), (0x14, mask::PT)];

/// A feature bit the guest table clears, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cleared {
    /// The feature.
    pub feature: FeatureBit,
    /// The withheld components it needs (names).
    pub because: String,
}

/// The guest's CPUID entries for extended state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GuestCpuid {
    /// The guest XCR0 mask (0xD.0 EDX:EAX).
    pub xcr0: u64,
    /// The guest IA32_XSS mask (0xD.1 EDX:ECX).
    pub xss: u64,
    /// Standard-form size for `xcr0` (0xD.0 EBX/ECX).
    pub standard_size: u32,
    /// Compacted-form size for `xcr0 | xss` (0xD.1 EBX).
    pub compacted_size: u32,
    /// The entries, sorted by (function, index).
    pub entries: Vec<CpuidEntry>,
    /// Feature bits the host had and the guest does not.
    pub cleared: Vec<Cleared>,
    /// Components the host supports that the guest does not get, and why (implied removals).
    pub notes: Vec<String>,
}

impl GuestCpuid {
    /// The entry for (function, index), if the table has it.
    pub fn entry(&self, function: u32, index: u32) -> Option<CpuidEntry> {
        self.entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
    }

    /// The table as a [`CpuidDump`] (to feed [`Layout::from_dump`] or a comparison).
    pub fn to_dump(&self) -> CpuidDump {
        let mut d = CpuidDump::new("guest");
        d.format = String::from("guest");
        for e in &self.entries {
            d.insert(
                e.function,
                e.index,
                Regs {
                    eax: e.eax,
                    ebx: e.ebx,
                    ecx: e.ecx,
                    edx: e.edx,
                },
            );
        }
        d
    }
}

/// Why a guest table cannot be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestCpuidError {
    /// Components asked for that the host does not support.
    #[error("the host does not support {names} ({mask:#x}): CPUID.(0xD,0):EDX:EAX | (0xD,1):EDX:ECX = {supported:#x}")]
    NotSupported {
        /// The unsupported components.
        mask: u64,
        /// Their names.
        names: String,
        /// What the host supports.
        supported: u64,
    },
    /// x87 cannot be withheld (XCR0 bit 0 is always 1).
    #[error("x87 (component 0) cannot be withheld: XCR0 bit 0 must be 1 (SDM Vol. 2B XSETBV)")]
    X87Required,
    /// A host-only component was asked for.
    #[error("component {id} ({name}) is host-only and never given to a guest")]
    HostOnly {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
    },
    /// The resulting XCR0 mask breaks an XSETBV rule.
    #[error("guest XCR0 mask: {0}")]
    Xcr0(Xcr0Error),
    /// The layout engine cannot place the guest's components.
    #[error("guest layout: {0}")]
    Layout(LayoutError),
    /// The host (or KVM-supported) CPUID leaf 0xD breaks a consistency rule: no guest table
    /// is derived from it.
    #[error("{0}")]
    Inconsistent(crate::layout::InconsistentCpuid),
}

/// The guest XCR0 and IA32_XSS masks: start from `with` (default: everything the host supports,
/// minus host-only components), remove `without`, then remove what depends on a removed
/// component (AVX needs SSE; AVX-512 needs AVX and goes as a whole; MPX and AMX go in pairs;
/// DESIGN.md §4).
pub fn guest_masks(
    host: &Layout,
    with: Option<u64>,
    without: u64,
) -> Result<(u64, u64), GuestCpuidError> {
    let supported = host.xcr0_supported() | host.xss_supported();
    let start = match with {
        Some(w) => {
            let bad = w & !supported;
            if bad != 0 {
                return Err(GuestCpuidError::NotSupported {
                    mask: bad,
                    names: mask_names(bad),
                    supported,
                });
            }
            if let Some(id) = bits(w & mask::HOST_ONLY).next() {
                return Err(GuestCpuidError::HostOnly {
                    id,
                    name: Component::name_of(id),
                });
            }
            w | mask::X87
        }
        None => supported & !mask::HOST_ONLY,
    };
    if without & mask::X87 != 0 {
        return Err(GuestCpuidError::X87Required);
    }
    let mut m = start & !without;
    if m & mask::SSE == 0 {
        m &= !mask::AVX;
    }
    if m & mask::AVX == 0 || m & mask::AVX512 != mask::AVX512 {
        m &= !mask::AVX512;
    }
    if m & mask::MPX != mask::MPX {
        m &= !mask::MPX;
    }
    if m & mask::AMX != mask::AMX {
        m &= !mask::AMX;
    }
    let xcr0 = m & host.xcr0_supported();
    let xss = m & host.xss_supported();
    check_xcr0_rules(xcr0, host.xcr0_supported(), host.xss_supported())
        .map_err(GuestCpuidError::Xcr0)?;
    Ok((xcr0, xss))
}

fn reg_mut(r: &mut Regs, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut r.eax,
        Reg::Ebx => &mut r.ebx,
        Reg::Ecx => &mut r.ecx,
        Reg::Edx => &mut r.edx,
    }
}

/// Computes the guest's leaf 0xD and the feature leaves for the guest masks `xcr0`/`xss`
/// (from [`guest_masks`]) on the host (or KVM-supported) CPUID `host`.
///
/// A table that has leaf 0xD is taken to support XSAVE even when its leaf 1 lacks the XSAVE
/// bit (KVM_GET_SUPPORTED_CPUID filters CPUID.1:ECX.XSAVE on some hosts while XSAVE works).
/// A table whose leaf 0xD breaks a consistency rule ([`Layout::verify`]) is refused with
/// [`GuestCpuidError::Inconsistent`].
pub fn guest_cpuid(host: &CpuidDump, xcr0: u64, xss: u64) -> Result<GuestCpuid, GuestCpuidError> {
    let layout = if host.get(0xd, 0).is_some() {
        Layout::from_leaf(host.leaf_0d())
    } else {
        Layout::from_dump(host)
    };
    layout
        .verify(&host.source)
        .map_err(GuestCpuidError::Inconsistent)?;
    let leaf = layout.leaf();
    let supported = layout.xcr0_supported() | layout.xss_supported();
    let bad = (xcr0 | xss) & !supported;
    if bad != 0 {
        return Err(GuestCpuidError::NotSupported {
            mask: bad,
            names: mask_names(bad),
            supported,
        });
    }
    check_xcr0_rules(xcr0, layout.xcr0_supported(), layout.xss_supported())
        .map_err(GuestCpuidError::Xcr0)?;
    let withheld = supported & !(xcr0 | xss);
    let mut notes = Vec::new();
    for id in bits(withheld) {
        notes.push(format!("{} withheld", Component::name_of(id)));
    }

    let standard = layout.standard(xcr0).map_err(GuestCpuidError::Layout)?;
    let compacted = layout
        .compacted(xcr0 | xss)
        .map_err(GuestCpuidError::Layout)?;

    let mut out = CpuidDump::new("guest");
    // Copy the feature leaves the table adjusts.
    for (l, s, r) in host.entries() {
        let keep = matches!(l, 0x1 | 0x7 | 0x14 | 0x1d | 0x1e | 0x8000_0001);
        if keep {
            out.insert(l, s, r);
        }
    }
    let mut cleared = Vec::new();
    for f in FEATURE_BITS {
        let Some(mut r) = out.get(f.leaf, f.subleaf) else {
            continue;
        };
        let lost = f.needs & withheld;
        // Every component a feature needs must be offered; a feature whose components the
        // host lacks entirely is left as the host reports it.
        if lost != 0 {
            let v = reg_mut(&mut r, f.reg);
            if *v & (1 << f.bit) != 0 {
                *v &= !(1 << f.bit);
                cleared.push(Cleared {
                    feature: *f,
                    because: mask_names(lost),
                });
                out.insert(f.leaf, f.subleaf, r);
            }
        }
    }
    let zeroed: Vec<(u32, u32)> = out
        .entries()
        .filter(|(l, _, _)| {
            COMPONENT_LEAVES
                .iter()
                .any(|(cl, m)| cl == l && m & withheld != 0)
        })
        .map(|(l, s, _)| (l, s))
        .collect();
    for (l, s) in zeroed {
        out.insert(l, s, Regs::default());
    }

    // Leaf 0xD.
    let lo = |m: u64| m as u32;
    let hi = |m: u64| (m >> 32) as u32;
    out.insert(
        0xd,
        0,
        Regs {
            eax: lo(xcr0),
            ebx: standard.size,
            ecx: standard.size,
            edx: hi(xcr0),
        },
    );
    let host1 = leaf.subleaf1();
    // EAX bits 0-2 (XSAVEOPT, XSAVEC, XGETBV1) as the host; bit 3 (XSAVES) only when supervisor
    // components are offered; bit 4 (XFD) only when an XFD-capable component is offered.
    let mut eax1 = host1.eax & 0x7;
    if leaf.has_xsaves() && xss != 0 {
        eax1 |= 1 << 3;
    }
    let xfd_offered = leaf.has_xfd() && bits(xcr0).any(|id| layout.geometry(id).xfd);
    if xfd_offered {
        eax1 |= 1 << 4;
    }
    out.insert(
        0xd,
        1,
        Regs {
            eax: eax1,
            ebx: compacted.size,
            ecx: lo(xss),
            edx: hi(xss),
        },
    );
    for id in bits((xcr0 | xss) & !mask::LEGACY) {
        let c = leaf.component(id);
        let supervisor = xss & (1u64 << id) != 0;
        let mut ecx = u32::from(supervisor) | (u32::from(c.align64) << 1);
        if xfd_offered && c.xfd {
            ecx |= 1 << 2;
        }
        out.insert(
            0xd,
            u32::from(id),
            Regs {
                eax: c.size,
                ebx: if supervisor { 0 } else { c.offset },
                ecx,
                edx: 0,
            },
        );
    }
    let entries = out
        .entries()
        .map(|(function, index, r)| CpuidEntry {
            function,
            index,
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
        })
        .collect();
    Ok(GuestCpuid {
        xcr0,
        xss,
        standard_size: standard.size,
        compacted_size: compacted.size,
        entries,
        cleared,
        notes,
    })
}
