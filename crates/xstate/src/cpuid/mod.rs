//! CPUID data: a table of raw leaves from any source, and typed views of the leaves that
//! matter to extended state, with accessors named after the SDM fields.
//!
//! Sources: the host ([`CpuidDump::from_host`], x86-64 only), or a dump file in any of the
//! supported formats ([`CpuidDump::parse`]: Linux `cpuid -r`, AIDA64/InstLatX64,
//! hwloc-gather-cpuid, and this project's JSON).
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! let mut d = CpuidDump::new("example");
//! d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 0x100, ebx: 0x240, ecx: 0, edx: 0 });
//! let x = d.leaf_0d();
//! assert_eq!(x.xcr0_supported(), 0x7);
//! assert_eq!(x.max_standard_size(), 0x340);
//! assert_eq!(x.component(2).size, 256);
//! ```

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

pub mod parse;

/// The four output registers of one CPUID query.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Regs {
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

/// The CPU vendor, from the leaf 0 vendor string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD.
    Amd,
    /// HygonGenuine.
    Hygon,
    /// CentaurHauls or "  Shanghai  ".
    Zhaoxin,
    /// Anything else, or leaf 0 missing.
    Other,
}

/// Leaves that gate extended-state features and are kept from every source.
pub const KEPT_LEAVES: [u32; 11] = [
    0x0,
    0x1,
    0x7,
    0xd,
    0x14,
    0x19,
    0x1d,
    0x1e,
    0x8000_0000,
    0x8000_0001,
    0x8000_0008,
];

/// A table of CPUID results keyed by (leaf, subleaf), with where it came from and what the
/// reader had to infer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidDump {
    /// Where the data came from (file name, "host", …).
    pub source: String,
    /// Format name of the source (`cpuid-r`, `aida64`, `hwloc`, `json`, `host`).
    pub format: String,
    /// Things the reader inferred rather than read (e.g. subleaf numbers of an untagged AIDA64
    /// dump). Empty when everything was read as written.
    pub notes: Vec<String>,
    /// XCR0 at the time of the dump, when the source knows it (host, project JSON).
    pub xcr0: Option<u64>,
    /// XINUSE (XGETBV with ECX=1) at the time of the dump, when known.
    pub xinuse: Option<u64>,
    entries: BTreeMap<(u32, u32), Regs>,
}

impl CpuidDump {
    /// An empty table.
    pub fn new(source: &str) -> Self {
        CpuidDump {
            source: String::from(source),
            ..Default::default()
        }
    }

    /// Records the result of CPUID(leaf, subleaf). A later insert replaces an earlier one.
    pub fn insert(&mut self, leaf: u32, subleaf: u32, regs: Regs) {
        self.entries.insert((leaf, subleaf), regs);
    }

    /// The result of CPUID(leaf, subleaf) if the source had it. Leaves without subleaves are
    /// stored at subleaf 0 and are asked for at subleaf 0.
    pub fn get(&self, leaf: u32, subleaf: u32) -> Option<Regs> {
        self.entries.get(&(leaf, subleaf)).copied()
    }

    /// Like [`get`](Self::get), all zeros when absent (what a CPU answers for unknown leaves
    /// within range).
    pub fn get_or_zero(&self, leaf: u32, subleaf: u32) -> Regs {
        self.get(leaf, subleaf).unwrap_or_default()
    }

    /// Every (leaf, subleaf, regs) entry in order.
    pub fn entries(&self) -> impl Iterator<Item = (u32, u32, Regs)> + '_ {
        self.entries.iter().map(|(&(l, s), &r)| (l, s, r))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The vendor from leaf 0.
    pub fn vendor(&self) -> Vendor {
        let Some(r) = self.get(0, 0) else {
            return Vendor::Other;
        };
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&r.ebx.to_le_bytes());
        s[4..8].copy_from_slice(&r.edx.to_le_bytes());
        s[8..12].copy_from_slice(&r.ecx.to_le_bytes());
        match &s {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            b"HygonGenuine" => Vendor::Hygon,
            b"CentaurHauls" | b"  Shanghai  " => Vendor::Zhaoxin,
            _ => Vendor::Other,
        }
    }

    /// The 12-character vendor string of leaf 0, or an empty string.
    pub fn vendor_string(&self) -> String {
        let Some(r) = self.get(0, 0) else {
            return String::new();
        };
        let mut s = Vec::with_capacity(12);
        for w in [r.ebx, r.edx, r.ecx] {
            s.extend_from_slice(&w.to_le_bytes());
        }
        String::from_utf8_lossy(&s).into_owned()
    }

    /// (family, model, stepping) from leaf 1, with the extended fields folded in as the SDM
    /// describes (Vol. 2A, CPUID leaf 01H, "Processor Version Information").
    pub fn family_model_stepping(&self) -> (u32, u32, u32) {
        let eax = self.get_or_zero(1, 0).eax;
        let base_family = (eax >> 8) & 0xf;
        let base_model = (eax >> 4) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((eax >> 20) & 0xff)
        } else {
            base_family
        };
        let model = if base_family == 0x6 || base_family == 0xf {
            (((eax >> 16) & 0xf) << 4) | base_model
        } else {
            base_model
        };
        (family, model, eax & 0xf)
    }

    /// The brand string of leaves 0x80000002..4, trimmed, when present.
    pub fn brand(&self) -> Option<String> {
        let mut bytes = Vec::with_capacity(48);
        for leaf in 0x8000_0002u32..=0x8000_0004 {
            let r = self.get(leaf, 0)?;
            for w in [r.eax, r.ebx, r.ecx, r.edx] {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
        }
        let s = String::from_utf8_lossy(&bytes);
        let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        if s.is_empty() {
            None
        } else {
            Some(String::from(s))
        }
    }

    /// CPUID.1:ECX.XSAVE[bit 26]: the CPU supports XSAVE/XRSTOR/XSETBV/XGETBV and leaf 0xD.
    pub fn has_xsave(&self) -> bool {
        self.get_or_zero(1, 0).ecx & (1 << 26) != 0
    }

    /// CPUID.1:ECX.OSXSAVE[bit 27]: the OS has set CR4.OSXSAVE.
    pub fn os_xsave(&self) -> bool {
        self.get_or_zero(1, 0).ecx & (1 << 27) != 0
    }

    /// CPUID.1:EDX.FXSR[bit 24].
    pub fn has_fxsr(&self) -> bool {
        self.get_or_zero(1, 0).edx & (1 << 24) != 0
    }

    /// CPUID.7.0:ECX.PKU[bit 3]: protection keys supported.
    pub fn has_pku(&self) -> bool {
        self.get_or_zero(7, 0).ecx & (1 << 3) != 0
    }

    /// CPUID.7.0:EDX.AMX-TILE[bit 24].
    pub fn has_amx_tile(&self) -> bool {
        self.get_or_zero(7, 0).edx & (1 << 24) != 0
    }

    /// CPUID.7.0:EBX.AVX512F[bit 16].
    pub fn has_avx512f(&self) -> bool {
        self.get_or_zero(7, 0).ebx & (1 << 16) != 0
    }

    /// The typed view of leaf 0xD.
    pub fn leaf_0d(&self) -> Leaf0D {
        Leaf0D::from_dump(self)
    }
}

/// What CPUID.(0xD, i) says about component i (i ≥ 2), or the fixed legacy geometry for
/// components 0 and 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComponentLeaf {
    /// EAX: size in bytes.
    pub size: u32,
    /// EBX: offset in the standard form (0 for supervisor components).
    pub offset: u32,
    /// ECX bit 0: supervisor component (IA32_XSS rather than XCR0).
    pub supervisor: bool,
    /// ECX bit 1: 64-byte aligned in the compacted form.
    pub align64: bool,
    /// ECX bit 2: XFD supported for this component.
    pub xfd: bool,
}

/// The typed view of CPUID leaf 0xD (SDM Vol. 1 §13.2, Vol. 2A "CPUID—Processor State
/// Enumeration Main Leaf / Sub-leaf 1 / Sub-leaves n ≥ 2").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf0D {
    sub0: Regs,
    sub1: Regs,
    comps: [ComponentLeaf; 64],
    present: u64,
}

impl Leaf0D {
    /// Builds the view from a dump. Missing subleaves read as zero; [`is_present`] tells which
    /// subleaves the dump actually had.
    ///
    /// [`is_present`]: Self::is_present
    pub fn from_dump(d: &CpuidDump) -> Self {
        let mut comps = [ComponentLeaf::default(); 64];
        let mut present = 0u64;
        // Components 0 and 1 are fixed by the architecture (SDM Vol. 1 §13.4.1).
        comps[0] = ComponentLeaf {
            size: 160,
            offset: 0,
            ..Default::default()
        };
        comps[1] = ComponentLeaf {
            size: 256,
            offset: 160,
            ..Default::default()
        };
        for (i, c) in comps.iter_mut().enumerate().skip(2) {
            if let Some(r) = d.get(0xd, i as u32) {
                present |= 1 << i;
                *c = ComponentLeaf {
                    size: r.eax,
                    offset: r.ebx,
                    supervisor: r.ecx & 1 != 0,
                    align64: r.ecx & 2 != 0,
                    xfd: r.ecx & 4 != 0,
                };
            }
        }
        if d.get(0xd, 0).is_some() {
            present |= 1;
        }
        if d.get(0xd, 1).is_some() {
            present |= 2;
        }
        Leaf0D {
            sub0: d.get_or_zero(0xd, 0),
            sub1: d.get_or_zero(0xd, 1),
            comps,
            present,
        }
    }

    /// True when the dump held subleaf `i` (0..=63).
    pub fn is_present(&self, i: u8) -> bool {
        i < 64 && self.present & (1 << i) != 0
    }

    /// Subleaf 0 EDX:EAX: the user components XCR0 may enable.
    pub fn xcr0_supported(&self) -> u64 {
        (u64::from(self.sub0.edx) << 32) | u64::from(self.sub0.eax)
    }

    /// Subleaf 0 EBX: standard-form size for the XCR0 in force when CPUID ran.
    pub fn current_standard_size(&self) -> u32 {
        self.sub0.ebx
    }

    /// Subleaf 0 ECX: standard-form size for every supported user component.
    pub fn max_standard_size(&self) -> u32 {
        self.sub0.ecx
    }

    /// Subleaf 1 EAX bit 0: XSAVEOPT.
    pub fn has_xsaveopt(&self) -> bool {
        self.sub1.eax & 1 != 0
    }

    /// Subleaf 1 EAX bit 1: XSAVEC and the compacted form of XRSTOR.
    pub fn has_xsavec(&self) -> bool {
        self.sub1.eax & 2 != 0
    }

    /// Subleaf 1 EAX bit 2: XGETBV with ECX = 1 (XINUSE).
    pub fn has_xgetbv1(&self) -> bool {
        self.sub1.eax & 4 != 0
    }

    /// Subleaf 1 EAX bit 3: XSAVES/XRSTORS and IA32_XSS.
    pub fn has_xsaves(&self) -> bool {
        self.sub1.eax & 8 != 0
    }

    /// Subleaf 1 EAX bit 4: extended feature disable (IA32_XFD, IA32_XFD_ERR).
    pub fn has_xfd(&self) -> bool {
        self.sub1.eax & 16 != 0
    }

    /// Subleaf 1 EBX: compacted size for XCR0 | IA32_XSS in force when CPUID ran.
    pub fn current_compacted_size(&self) -> u32 {
        self.sub1.ebx
    }

    /// Subleaf 1 EDX:ECX: the supervisor components IA32_XSS may enable.
    pub fn xss_supported(&self) -> u64 {
        (u64::from(self.sub1.edx) << 32) | u64::from(self.sub1.ecx)
    }

    /// Subleaf i: geometry of component i (0..=63); components 0 and 1 have their fixed
    /// legacy geometry.
    pub fn component(&self, i: u8) -> ComponentLeaf {
        self.comps.get(usize::from(i)).copied().unwrap_or_default()
    }

    /// The raw subleaf 0 registers.
    pub fn subleaf0(&self) -> Regs {
        self.sub0
    }

    /// The raw subleaf 1 registers.
    pub fn subleaf1(&self) -> Regs {
        self.sub1
    }
}
