//! The catalog of XSAVE state components (Intel SDM Vol. 1 §13.1, AMD APM Vol. 2 §11.5).
//!
//! A state component is numbered by its bit in XCR0 / IA32_XSS / XSTATE_BV. This module knows
//! each component's architectural name, its kind (user components are enabled in XCR0,
//! supervisor components in IA32_XSS) and the roles operating systems give it (dynamic,
//! guest-only, independent, host-only). It knows **no component offsets**: those come from
//! CPUID leaf 0xD (see [`crate::layout`]); only the fixed legacy area and header, which every
//! form shares, are constants here. The architectural sizes listed here are the sizes the SDM defines
//! the register content to have; the size a CPU reports in CPUID is authoritative for layout.
//!
//! ```
//! use xstate::components::{Component, mask};
//! assert_eq!(Component::by_name("zmm_hi256").unwrap().id, 6);
//! assert_eq!(Component::name_of(40), "component_40");
//! assert_eq!(mask::AVX512, 0xe0);
//! ```

/// Size of the legacy (FXSAVE) area (SDM Vol. 1 §10.5.1, §13.4.1).
pub const LEGACY_SIZE: u32 = 512;
/// Size of the XSAVE header (SDM Vol. 1 §13.4.2).
pub const HEADER_SIZE: u32 = 64;
/// Offset of the XSAVE header.
pub const HEADER_OFFSET: u32 = 512;
/// First byte after the legacy area and header: where the extended area starts.
pub const EXTENDED_START: u32 = 576;

use alloc::format;
use alloc::string::String;

/// Whether a component is enabled through XCR0 (user) or IA32_XSS (supervisor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Enabled in XCR0, saved by XSAVE/XSAVEC and visible in the user ABI.
    User,
    /// Enabled in IA32_XSS, saved only by XSAVES (CPL 0).
    Supervisor,
}

/// One entry of the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component {
    /// Bit number in XCR0 / IA32_XSS / XSTATE_BV.
    pub id: u8,
    /// Name used in code, output and JSON (`x87`, `sse`, `avx`, …).
    pub name: &'static str,
    /// User or supervisor.
    pub kind: Kind,
    /// Size of the architectural content in bytes (CPUID may report more, e.g. PKRU on Zen 2).
    pub arch_size: u32,
    /// One-line description.
    pub description: &'static str,
}

/// Bit masks of components and of component roles.
pub mod mask {
    /// x87 FPU state (component 0).
    pub const X87: u64 = 1 << 0;
    /// SSE state: XMM0-15 and MXCSR (component 1).
    pub const SSE: u64 = 1 << 1;
    /// AVX: upper halves of YMM0-15 (component 2).
    pub const AVX: u64 = 1 << 2;
    /// MPX bound registers BND0-3 (component 3).
    pub const BNDREGS: u64 = 1 << 3;
    /// MPX BNDCFGU and BNDSTATUS (component 4).
    pub const BNDCSR: u64 = 1 << 4;
    /// Both MPX components.
    pub const MPX: u64 = BNDREGS | BNDCSR;
    /// AVX-512 opmask registers k0-k7 (component 5).
    pub const OPMASK: u64 = 1 << 5;
    /// AVX-512 upper 256 bits of ZMM0-15 (component 6).
    pub const ZMM_HI256: u64 = 1 << 6;
    /// AVX-512 ZMM16-31 (component 7).
    pub const HI16_ZMM: u64 = 1 << 7;
    /// The three AVX-512 components.
    pub const AVX512: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;
    /// Processor trace (component 8, supervisor).
    pub const PT: u64 = 1 << 8;
    /// Protection keys rights register (component 9).
    pub const PKRU: u64 = 1 << 9;
    /// PASID (component 10, supervisor).
    pub const PASID: u64 = 1 << 10;
    /// CET user state (component 11, supervisor).
    pub const CET_U: u64 = 1 << 11;
    /// CET supervisor shadow-stack pointers (component 12, supervisor).
    pub const CET_S: u64 = 1 << 12;
    /// Hardware duty cycling (component 13, supervisor).
    pub const HDC: u64 = 1 << 13;
    /// User interrupts (component 14, supervisor).
    pub const UINTR: u64 = 1 << 14;
    /// Last branch records (component 15, supervisor).
    pub const LBR: u64 = 1 << 15;
    /// Hardware P-states (component 16, supervisor).
    pub const HWP: u64 = 1 << 16;
    /// AMX tile configuration (component 17).
    pub const XTILECFG: u64 = 1 << 17;
    /// AMX tile data (component 18).
    pub const XTILEDATA: u64 = 1 << 18;
    /// Both AMX components.
    pub const AMX: u64 = XTILECFG | XTILEDATA;
    /// APX extended general purpose registers r16-r31 (component 19).
    pub const APX: u64 = 1 << 19;
    /// AMD lightweight profiling (component 62).
    pub const LWP: u64 = 1 << 62;
    /// XCOMP_BV bit 63: the image is in compacted form.
    pub const COMPACTED: u64 = 1 << 63;
    /// Components 0 and 1, which live in the 512-byte legacy area.
    pub const LEGACY: u64 = X87 | SSE;

    /// Every user component in the catalog.
    pub const USER_KNOWN: u64 =
        X87 | SSE | AVX | MPX | AVX512 | PKRU | XTILECFG | XTILEDATA | APX | LWP;
    /// Every supervisor component in the catalog.
    pub const SUPERVISOR_KNOWN: u64 = PT | PASID | CET_U | CET_S | HDC | UINTR | LBR | HWP;

    /// Dynamic user features: need a permission and are enabled lazily (Linux USER_DYNAMIC).
    pub const DYNAMIC: u64 = XTILEDATA;
    /// Guest-only supervisor features: present in guest state only (Linux ≥ 6.17, CET_S).
    pub const GUEST_ONLY: u64 = CET_S;
    /// Independent features: saved by hand, never part of task buffers (Linux INDEPENDENT).
    pub const INDEPENDENT: u64 = LBR;
    /// Host-only features: used by the host kernel, never given to a guest.
    pub const HOST_ONLY: u64 = PASID;
}

const fn c(
    id: u8,
    name: &'static str,
    kind: Kind,
    arch_size: u32,
    description: &'static str,
) -> Component {
    Component {
        id,
        name,
        kind,
        arch_size,
        description,
    }
}

use Kind::{Supervisor as S, User as U};

/// Every component the catalog knows, in id order.
pub const CATALOG: [Component; 21] = [
    c(
        0,
        "x87",
        U,
        160,
        "x87 FPU: FCW, FSW, FTW, FOP, FIP, FDP, ST0-ST7",
    ),
    c(
        1,
        "sse",
        U,
        256,
        "SSE: XMM0-XMM15 (MXCSR is in the legacy area)",
    ),
    c(2, "avx", U, 256, "AVX: upper 128 bits of YMM0-YMM15"),
    c(3, "bndregs", U, 64, "MPX: BND0-BND3"),
    c(4, "bndcsr", U, 64, "MPX: BNDCFGU, BNDSTATUS"),
    c(5, "opmask", U, 64, "AVX-512: k0-k7"),
    c(
        6,
        "zmm_hi256",
        U,
        512,
        "AVX-512: upper 256 bits of ZMM0-ZMM15",
    ),
    c(7, "hi16_zmm", U, 1024, "AVX-512: ZMM16-ZMM31"),
    c(8, "pt", S, 128, "Processor Trace MSRs"),
    c(9, "pkru", U, 8, "PKRU (4 bytes used)"),
    c(10, "pasid", S, 8, "IA32_PASID (host kernel only)"),
    c(11, "cet_u", S, 16, "CET user: IA32_U_CET, IA32_PL3_SSP"),
    c(
        12,
        "cet_s",
        S,
        24,
        "CET supervisor: IA32_PL0_SSP..IA32_PL2_SSP",
    ),
    c(13, "hdc", S, 8, "Hardware duty cycling"),
    c(14, "uintr", S, 48, "User interrupts"),
    c(15, "lbr", S, 808, "Architectural LBRs (independent)"),
    c(16, "hwp", S, 8, "Hardware P-states"),
    c(17, "xtilecfg", U, 64, "AMX: TILECFG"),
    c(18, "xtiledata", U, 8192, "AMX: TMM0-TMM7 (dynamic)"),
    c(19, "apx", U, 128, "APX: R16-R31"),
    c(62, "lwp", U, 128, "AMD lightweight profiling"),
];

impl Component {
    /// The catalog entry for a component id, if the catalog knows it.
    ///
    /// ```
    /// # use xstate::components::Component;
    /// assert_eq!(Component::get(9).unwrap().name, "pkru");
    /// assert!(Component::get(30).is_none());
    /// ```
    pub fn get(id: u8) -> Option<&'static Component> {
        CATALOG.iter().find(|c| c.id == id)
    }

    /// The catalog entry for a name (`"avx"`, `"cet_s"`, …) or `component_N`.
    ///
    /// ```
    /// # use xstate::components::Component;
    /// assert_eq!(Component::by_name("xtiledata").unwrap().id, 18);
    /// assert!(Component::by_name("ymm").is_none());
    /// ```
    pub fn by_name(name: &str) -> Option<&'static Component> {
        CATALOG.iter().find(|c| c.name == name)
    }

    /// Resolves a name, `component_N` or a plain number to a component id (0..=62).
    ///
    /// ```
    /// # use xstate::components::Component;
    /// assert_eq!(Component::parse_id("hi16_zmm"), Some(7));
    /// assert_eq!(Component::parse_id("component_33"), Some(33));
    /// assert_eq!(Component::parse_id("18"), Some(18));
    /// assert_eq!(Component::parse_id("63"), None);
    /// ```
    pub fn parse_id(s: &str) -> Option<u8> {
        if let Some(c) = Self::by_name(s) {
            return Some(c.id);
        }
        let num = s.strip_prefix("component_").unwrap_or(s);
        match num.parse::<u8>() {
            Ok(n) if n < 63 => Some(n),
            _ => None,
        }
    }

    /// The display name of any component id: the catalog name or `component_N`.
    pub fn name_of(id: u8) -> String {
        match Self::get(id) {
            Some(c) => String::from(c.name),
            None => format!("component_{id}"),
        }
    }

    /// The kind of a component id. Unknown ids report `None`: for those only CPUID knows.
    pub fn kind_of(id: u8) -> Option<Kind> {
        Self::get(id).map(|c| c.kind)
    }

    /// This component's bit.
    pub fn bit(&self) -> u64 {
        1u64 << self.id
    }

    /// Dynamic: needs a permission and is allocated lazily (AMX tile data).
    pub fn is_dynamic(&self) -> bool {
        self.bit() & mask::DYNAMIC != 0
    }

    /// Guest-only: kept in guest state only (CET supervisor state).
    pub fn is_guest_only(&self) -> bool {
        self.bit() & mask::GUEST_ONLY != 0
    }

    /// Independent: saved by hand, outside task buffers (arch LBR).
    pub fn is_independent(&self) -> bool {
        self.bit() & mask::INDEPENDENT != 0
    }

    /// Host-only: never given to a guest (PASID).
    pub fn is_host_only(&self) -> bool {
        self.bit() & mask::HOST_ONLY != 0
    }
}

/// Iterates over the set bits of a mask, lowest first.
///
/// ```
/// # use xstate::components::bits;
/// assert_eq!(bits(0x8000_0000_0000_0205).collect::<Vec<_>>(), vec![0, 2, 9, 63]);
/// ```
pub fn bits(mask: u64) -> impl Iterator<Item = u8> {
    let mut m = mask;
    core::iter::from_fn(move || {
        if m == 0 {
            None
        } else {
            let i = m.trailing_zeros() as u8;
            m &= m - 1;
            Some(i)
        }
    })
}

/// Comma-separated names of the components in a mask (`"x87,sse,avx"`); bit 63 is shown as
/// `compacted`.
///
/// ```
/// # use xstate::components::mask_names;
/// assert_eq!(mask_names(0xe7), "x87,sse,avx,opmask,zmm_hi256,hi16_zmm");
/// assert_eq!(mask_names(0), "");
/// ```
pub fn mask_names(mask: u64) -> String {
    let mut out = String::new();
    for i in bits(mask) {
        if !out.is_empty() {
            out.push(',');
        }
        if i == 63 {
            out.push_str("compacted");
        } else {
            out.push_str(&Component::name_of(i));
        }
    }
    out
}

/// Parses a list of component names or numbers (`"avx,opmask"`, `"5,6,7"`, `"avx512"`, `"amx"`,
/// `"mpx"`) into a mask.
///
/// ```
/// # use xstate::components::parse_list;
/// assert_eq!(parse_list("avx512").unwrap(), 0xe0);
/// assert_eq!(parse_list("x87, sse").unwrap(), 0x3);
/// assert_eq!(parse_list("ymm").unwrap_err(), "ymm");
/// ```
pub fn parse_list(list: &str) -> Result<u64, String> {
    let mut m = 0u64;
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        m |= match item {
            "avx512" => mask::AVX512,
            "amx" => mask::AMX,
            "mpx" => mask::MPX,
            "cet" => mask::CET_U | mask::CET_S,
            _ => match Component::parse_id(item) {
                Some(id) => 1u64 << id,
                None => return Err(String::from(item)),
            },
        };
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_sorted_and_masks_match_kinds() {
        for w in CATALOG.windows(2) {
            assert!(w[0].id < w[1].id);
        }
        let mut user = 0;
        let mut sup = 0;
        for c in CATALOG.iter() {
            match c.kind {
                Kind::User => user |= c.bit(),
                Kind::Supervisor => sup |= c.bit(),
            }
        }
        assert_eq!(user, mask::USER_KNOWN);
        assert_eq!(sup, mask::SUPERVISOR_KNOWN);
        assert_eq!(user & sup, 0);
    }

    #[test]
    fn role_flags() {
        assert!(Component::get(18).unwrap().is_dynamic());
        assert!(Component::get(12).unwrap().is_guest_only());
        assert!(Component::get(15).unwrap().is_independent());
        assert!(Component::get(10).unwrap().is_host_only());
        assert!(!Component::get(17).unwrap().is_dynamic());
    }
}
