//! Portable snapshots of a vCPU's extended state (`.xsnap`, specified in `docs/xsnap.md`).
//!
//! An XSAVE image is only meaningful together with the CPU whose CPUID leaf 0xD laid it out:
//! AVX-512's opmask lives at byte 1088 on Intel and at 832 on AMD Zen 4/5 (DESIGN.md §2). A
//! [`Snapshot`] therefore never stores an image. Like QEMU's migration stream (DESIGN.md §7) it
//! keeps each state component's *architectural content*, keyed by component number, and
//! rebuilds an image from the destination's own offsets ([`Snapshot::to_image`]): a snapshot
//! taken where opmask is at 1088 restores where it is at 832, and the other way round.
//!
//! What a snapshot holds (no host `usize`, no raw `kvm_xsave`):
//! - the components whose XSTATE_BV bit was set, each as its architectural content (see
//!   [`content_len`]: PKRU is 8 bytes even where CPUID reports 64, as on Zen 2);
//! - the legacy-area fields that are not registers of a component ([`Legacy`]: FCW, FSW, FTW,
//!   FOP, FIP, FDP, MXCSR, MXCSR_MASK);
//! - XCR0, IA32_XSS, IA32_XFD, IA32_XFD_ERR and the other extended-state MSRs (index → value,
//!   e.g. the CET MSRs KVM exchanges outside the XSAVE buffer, DESIGN.md §6);
//! - the source CPU: vendor, family/model/stepping and its leaf 0xD ([`SourceCpu`]).
//!
//! The byte encoding (magic, version, CBOR body, CRC-32) is [`Snapshot::encode`] /
//! [`Snapshot::decode`] (feature `std`); [`validate`] is the `snapshot` validation profile.
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::layout::{Form, Layout};
//! use xstate::snapshot::{ControlRegs, Snapshot};
//! // Two CPUs that place AVX-512 opmask differently (Intel 1088, AMD 832).
//! let cpu = |opmask: u32, zmm: u32, hi16: u32| {
//!     let mut d = CpuidDump::new("doc");
//!     d.insert(0xd, 0, Regs { eax: 0xe7, ebx: 0, ecx: hi16 + 1024, edx: 0 });
//!     d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//!     d.insert(0xd, 5, Regs { eax: 64, ebx: opmask, ecx: 0, edx: 0 });
//!     d.insert(0xd, 6, Regs { eax: 512, ebx: zmm, ecx: 0, edx: 0 });
//!     d.insert(0xd, 7, Regs { eax: 1024, ebx: hi16, ecx: 0, edx: 0 });
//!     d
//! };
//! let (intel, amd) = (cpu(1088, 1152, 1664), cpu(832, 896, 1408));
//! let mut img = vec![0u8; 2688];
//! img[1088] = 0x5a; // k0 = 0x5a
//! img[512] = 0x20; // XSTATE_BV = opmask
//! let snap = Snapshot::from_image(&img, &intel, &ControlRegs::with_xcr0(0xe7)).unwrap();
//! assert_eq!(snap.component(5).unwrap()[0], 0x5a);
//! let out = snap.to_image(&Layout::from_dump(&amd), Form::Standard, 0xe7).unwrap();
//! assert_eq!(out[832], 0x5a);
//! assert_eq!(out.len(), 2432);
//! ```

pub mod crc32;

#[cfg(feature = "std")]
mod codec;
mod convert;
mod validate;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::components::{bits, mask, Component};
use crate::cpuid::{CpuidDump, Regs};
use crate::layout::{Layout, LayoutError};

pub use validate::{validate, Violation};

/// The eight bytes every `.xsnap` file starts with: 0x89, "XSNAP", CR, LF (the high byte and the
/// line ending catch 7-bit and text-mode transfers, as PNG's signature does).
pub const MAGIC: [u8; 8] = [0x89, b'X', b'S', b'N', b'A', b'P', b'\r', b'\n'];
/// The format version [`Snapshot::encode`] writes. [`Snapshot::decode`] reads every version
/// from 1 up to this one.
pub const VERSION: u16 = 1;
/// Bytes before the CBOR body: magic (8), version (u16 LE), reserved (u16, zero), body length
/// (u32 LE).
pub const HEADER_LEN: usize = 16;
/// Bytes after the body: CRC-32 (LE) of the header and the body.
pub const TRAILER_LEN: usize = 4;

/// Init value of the x87 control word (FNINIT; SDM Vol. 1 §8.1.5, DESIGN.md §5).
pub const FCW_INIT: u16 = 0x037f;
/// Init value of MXCSR (SDM Vol. 1 §10.2.3, DESIGN.md §5).
pub const MXCSR_INIT: u32 = 0x1f80;
/// The MXCSR mask to assume when MXCSR_MASK reads 0 (SDM Vol. 1 §11.6.6: a zero MXCSR_MASK
/// means the default mask 0xFFBF, i.e. no DAZ).
pub const MXCSR_DEFAULT_MASK: u32 = 0xffbf;

/// True when `bytes` starts with the `.xsnap` magic.
///
/// ```
/// assert!(xstate::snapshot::is_snapshot(&xstate::snapshot::MAGIC));
/// assert!(!xstate::snapshot::is_snapshot(&[0u8; 576]));
/// ```
pub fn is_snapshot(bytes: &[u8]) -> bool {
    bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] == MAGIC
}

/// Length in bytes of component `id`'s architectural content in a snapshot, given the size
/// the source CPU reports in CPUID.(0xD,id).EAX.
///
/// - x87 (0): ST0–ST7 as eight 80-bit values, 10 bytes each (80 bytes); FCW, FSW, FTW, FOP,
///   FIP and FDP are [`Legacy`] fields;
/// - SSE (1): XMM0–XMM15, 16 bytes each (256 bytes); MXCSR and MXCSR_MASK are [`Legacy`] fields;
/// - a catalogued component of fixed architectural size (all but LBR): the catalog size, even
///   where CPUID reports more (PKRU is 8 bytes — PKRU itself and 4 reserved bytes, SDM Vol. 1
///   §13.5.7 — although Zen 2 reports 64);
/// - LBR (its size depends on the LBR depth) and components the catalog does not know: the
///   source CPU's size.
///
/// ```
/// use xstate::snapshot::content_len;
/// assert_eq!(content_len(0, 160), 80);
/// assert_eq!(content_len(9, 64), 8);
/// assert_eq!(content_len(30, 40), 40);
/// ```
pub fn content_len(id: u8, cpuid_size: u32) -> u32 {
    match id {
        0 => 80,
        1 => 256,
        _ => match Component::get(id) {
            Some(c) if c.bit() & mask::LBR == 0 => c.arch_size,
            _ => cpuid_size,
        },
    }
}

/// One component's geometry on the source CPU: CPUID.(0xD,id) EAX, EBX and ECX.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceComponent {
    /// EAX: size in bytes.
    pub size: u32,
    /// EBX: standard-form offset (0 for supervisor components).
    pub offset: u32,
    /// ECX: bit 0 supervisor, bit 1 64-byte aligned in compacted form, bit 2 XFD-capable.
    pub flags: u32,
}

/// The CPU a snapshot was taken on: identity and leaf 0xD.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceCpu {
    /// The 12-character CPUID leaf 0 vendor string (`GenuineIntel`, `AuthenticAMD`, …).
    pub vendor: String,
    /// Family with the extended family folded in (SDM Vol. 2A CPUID leaf 01H).
    pub family: u32,
    /// Model with the extended model folded in.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
    /// CPUID.(0xD,0):EDX:EAX, the user components XCR0 may enable.
    pub xcr0_supported: u64,
    /// CPUID.(0xD,1):EDX:ECX, the supervisor components IA32_XSS may enable.
    pub xss_supported: u64,
    /// CPUID.(0xD,1):EAX: XSAVEOPT, XSAVEC, XGETBV1, XSAVES, XFD bits.
    pub xsave_features: u32,
    /// CPUID.(0xD,0):ECX, the standard size for every supported user component.
    pub max_standard_size: u32,
    /// CPUID.(0xD,i) for every i ≥ 2 with a non-zero size.
    pub components: BTreeMap<u8, SourceComponent>,
}

impl SourceCpu {
    /// Identity and leaf 0xD of the CPU a dump describes.
    pub fn from_dump(d: &CpuidDump) -> Self {
        let leaf = d.leaf_0d();
        let (family, model, stepping) = d.family_model_stepping();
        let mut components = BTreeMap::new();
        for id in 2u8..63 {
            if let Some(r) = d.get(0xd, u32::from(id)) {
                if r.eax != 0 {
                    components.insert(
                        id,
                        SourceComponent {
                            size: r.eax,
                            offset: r.ebx,
                            flags: r.ecx & 0x7,
                        },
                    );
                }
            }
        }
        SourceCpu {
            vendor: d.vendor_string(),
            family,
            model,
            stepping,
            xcr0_supported: leaf.xcr0_supported(),
            xss_supported: leaf.xss_supported(),
            xsave_features: leaf.subleaf1().eax,
            max_standard_size: leaf.max_standard_size(),
            components,
        }
    }

    /// A CPUID table with leaves 0, 1 and 0xD rebuilt from this record (enough for
    /// [`Layout::from_dump`] and for [`CpuidDump::vendor`] / `family_model_stepping`).
    pub fn to_dump(&self) -> CpuidDump {
        let mut d = CpuidDump::new("snapshot source");
        d.format = String::from("xsnap");
        let mut v = [0u8; 12];
        for (dst, src) in v.iter_mut().zip(self.vendor.bytes()) {
            *dst = src;
        }
        let w = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        d.insert(
            0,
            0,
            Regs {
                eax: 0xd,
                ebx: w(0),
                edx: w(4),
                ecx: w(8),
            },
        );
        // Leaf 1 EAX: stepping [3:0], model [7:4], family [11:8], extended model [19:16],
        // extended family [27:20] (SDM Vol. 2A, CPUID leaf 01H).
        let (fam, ext_fam) = if self.family >= 0xf {
            (0xf, (self.family - 0xf).min(0xff))
        } else {
            (self.family, 0)
        };
        let (model, ext_model) = if fam == 0x6 || fam == 0xf {
            (self.model & 0xf, (self.model >> 4) & 0xf)
        } else {
            (self.model & 0xf, 0)
        };
        let eax = (self.stepping & 0xf)
            | (model << 4)
            | ((fam & 0xf) << 8)
            | (ext_model << 16)
            | (ext_fam << 20);
        // ECX bit 26: XSAVE.
        d.insert(
            1,
            0,
            Regs {
                eax,
                ebx: 0,
                ecx: 1 << 26,
                edx: 0,
            },
        );
        let lo = |m: u64| m as u32;
        let hi = |m: u64| (m >> 32) as u32;
        d.insert(
            0xd,
            0,
            Regs {
                eax: lo(self.xcr0_supported),
                ebx: self.max_standard_size,
                ecx: self.max_standard_size,
                edx: hi(self.xcr0_supported),
            },
        );
        d.insert(
            0xd,
            1,
            Regs {
                eax: self.xsave_features,
                ebx: 0,
                ecx: lo(self.xss_supported),
                edx: hi(self.xss_supported),
            },
        );
        for (&id, c) in &self.components {
            d.insert(
                0xd,
                u32::from(id),
                Regs {
                    eax: c.size,
                    ebx: c.offset,
                    ecx: c.flags,
                    edx: 0,
                },
            );
        }
        d
    }

    /// The source CPU's layout.
    pub fn layout(&self) -> Layout {
        Layout::from_dump(&self.to_dump())
    }

    /// The CPUID size of component `id` on the source CPU (fixed for 0 and 1; 0 when the record
    /// has no entry).
    pub fn size_of(&self, id: u8) -> u32 {
        match id {
            0 => 160,
            1 => 256,
            _ => self.components.get(&id).map_or(0, |c| c.size),
        }
    }
}

/// The legacy-area fields of the x87 and SSE components that are not ST/XMM registers
/// (SDM Vol. 1 §10.5.1, DESIGN.md §4), in their 64-bit FXSAVE form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Legacy {
    /// FPU control word (byte 0).
    pub fcw: u16,
    /// FPU status word (byte 2).
    pub fsw: u16,
    /// Abridged FPU tag word (byte 4).
    pub ftw: u8,
    /// Last x87 opcode (byte 6).
    pub fop: u16,
    /// Last x87 instruction pointer (bytes 8..15; FIP and FCS in the 32-bit form).
    pub fip: u64,
    /// Last x87 data pointer (bytes 16..23; FDP and FDS in the 32-bit form).
    pub fdp: u64,
    /// MXCSR (byte 24).
    pub mxcsr: u32,
    /// MXCSR_MASK (byte 28), as the source CPU wrote it; informative (XRSTOR never loads it).
    pub mxcsr_mask: u32,
}

impl Legacy {
    /// The init values (x87 FCW 0x037F, MXCSR 0x1F80, everything else 0) with a given
    /// MXCSR_MASK.
    pub fn init(mxcsr_mask: u32) -> Self {
        Legacy {
            fcw: FCW_INIT,
            fsw: 0,
            ftw: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
            mxcsr: MXCSR_INIT,
            mxcsr_mask,
        }
    }

    /// True when the x87 fields hold their init values.
    pub fn x87_is_init(&self) -> bool {
        self.fcw == FCW_INIT
            && self.fsw == 0
            && self.ftw == 0
            && self.fop == 0
            && self.fip == 0
            && self.fdp == 0
    }
}

impl Default for Legacy {
    fn default() -> Self {
        Legacy::init(0)
    }
}

/// The registers outside the XSAVE image that decide what it means, captured with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlRegs {
    /// XCR0.
    pub xcr0: u64,
    /// IA32_XSS (MSR 0xDA0).
    pub xss: u64,
    /// IA32_XFD (MSR 0x1C4).
    pub xfd: u64,
    /// IA32_XFD_ERR (MSR 0x1C5).
    pub xfd_err: u64,
    /// Other extended-state MSRs (e.g. the CET MSRs 0x6A0–0x6A8), index → value.
    pub msrs: BTreeMap<u32, u64>,
}

impl ControlRegs {
    /// Only XCR0 set; IA32_XSS, XFD and XFD_ERR zero, no MSR.
    pub fn with_xcr0(xcr0: u64) -> Self {
        ControlRegs {
            xcr0,
            ..Default::default()
        }
    }
}

/// MSR index of IA32_XSS.
pub const MSR_IA32_XSS: u32 = 0xda0;
/// MSR index of IA32_XFD.
pub const MSR_IA32_XFD: u32 = 0x1c4;
/// MSR index of IA32_XFD_ERR.
pub const MSR_IA32_XFD_ERR: u32 = 0x1c5;

/// The SDM name of an extended-state MSR, or `MSR_0x…`.
///
/// ```
/// assert_eq!(xstate::snapshot::msr_name(0x6a0), "IA32_U_CET");
/// assert_eq!(xstate::snapshot::msr_name(0x10), "MSR_0x10");
/// ```
pub fn msr_name(index: u32) -> String {
    let n = match index {
        MSR_IA32_XSS => "IA32_XSS",
        MSR_IA32_XFD => "IA32_XFD",
        MSR_IA32_XFD_ERR => "IA32_XFD_ERR",
        0x6a0 => "IA32_U_CET",
        0x6a2 => "IA32_S_CET",
        0x6a4 => "IA32_PL0_SSP",
        0x6a5 => "IA32_PL1_SSP",
        0x6a6 => "IA32_PL2_SSP",
        0x6a7 => "IA32_PL3_SSP",
        0x6a8 => "IA32_INTERRUPT_SSP_TABLE_ADDR",
        _ => return alloc::format!("MSR_{index:#x}"),
    };
    String::from(n)
}

/// A vCPU's extended state, independent of any host's layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Free-form name of the program that wrote it (`xstate 0.1.0`).
    pub producer: String,
    /// The CPU it was taken on.
    pub source: SourceCpu,
    /// XCR0 of the vCPU.
    pub xcr0: u64,
    /// IA32_XSS of the vCPU.
    pub xss: u64,
    /// IA32_XFD of the vCPU.
    pub xfd: u64,
    /// IA32_XFD_ERR of the vCPU.
    pub xfd_err: u64,
    /// FCW … MXCSR_MASK.
    pub legacy: Legacy,
    /// Components not in their init state (the source image's XSTATE_BV), id → architectural
    /// content of [`content_len`] bytes. An absent component is in its init state.
    pub components: BTreeMap<u8, Vec<u8>>,
    /// Other extended-state MSRs, index → value (IA32_XSS, IA32_XFD and IA32_XFD_ERR have
    /// their own fields and never appear here).
    pub msrs: BTreeMap<u32, u64>,
}

impl Snapshot {
    /// The components present (not in init state): the XSTATE_BV an image rebuilt from this
    /// snapshot carries (bit 1 aside, see [`Snapshot::to_image`]). Ids ≥ 63 are ignored.
    pub fn xstate_bv(&self) -> u64 {
        self.components
            .keys()
            .filter(|&&id| id < 63)
            .fold(0, |m, &id| m | (1u64 << id))
    }

    /// The content of component `id`, if present.
    pub fn component(&self, id: u8) -> Option<&[u8]> {
        self.components.get(&id).map(Vec::as_slice)
    }

    /// The x87 register STi (0..8) as its 80-bit value, if x87 is present.
    pub fn st(&self, i: usize) -> Option<u128> {
        let d = self.component(0)?;
        let b = d.get(i * 10..i * 10 + 10)?;
        let mut v = [0u8; 16];
        v[..10].copy_from_slice(b);
        Some(u128::from_le_bytes(v))
    }

    /// XMMi (0..16), if SSE is present.
    pub fn xmm(&self, i: usize) -> Option<u128> {
        let d = self.component(1)?;
        let b = d.get(i * 16..i * 16 + 16)?;
        let mut v = [0u8; 16];
        v.copy_from_slice(b);
        Some(u128::from_le_bytes(v))
    }

    /// The components named in the snapshot's masks, as display names (for messages).
    pub fn component_names(&self) -> String {
        crate::components::mask_names(self.xstate_bv())
    }

    /// The ids of present components, lowest first.
    pub fn present(&self) -> impl Iterator<Item = u8> + '_ {
        bits(self.xstate_bv())
    }
}

/// Why a snapshot cannot be decoded, built from an image, or rebuilt into one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Fewer bytes than a header and trailer.
    #[error("snapshot is {len} bytes: an .xsnap file has at least a 16-byte header and a 4-byte CRC-32 trailer")]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// The first eight bytes are not [`MAGIC`].
    #[error("bytes 0..8 are {found:02x?}, not the .xsnap magic 89 58 53 4e 41 50 0d 0a")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// A version this build does not read (0, or newer than [`VERSION`]).
    #[error("header byte 8: format version {found} is not readable here (this build reads versions 1..={supported})")]
    UnsupportedVersion {
        /// Version in the header.
        found: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// Header bytes 10..12 are not zero.
    #[error("header byte 10: reserved field is {value:#x}, must be 0")]
    ReservedHeader {
        /// The value found.
        value: u16,
    },
    /// The body length in the header disagrees with the file size.
    #[error("header byte 12: body length {declared} needs a file of {needed} bytes, the file has {actual}")]
    LengthMismatch {
        /// Body length in the header.
        declared: u32,
        /// File size the header implies.
        needed: u64,
        /// Actual file size.
        actual: usize,
    },
    /// The CRC-32 trailer does not match.
    #[error("byte {offset}: CRC-32 trailer is {stored:#010x} but header and body hash to {computed:#010x} (file damaged)")]
    Checksum {
        /// Offset of the trailer.
        offset: usize,
        /// Trailer value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// The CBOR body does not decode as the version's schema.
    #[error("CBOR body (byte 16 on): {message}")]
    Body {
        /// What the decoder said, with the field when known.
        message: String,
    },
    /// The same key appears twice in a CBOR map of the body.
    #[error("CBOR body: map `{field}` has key {key} twice")]
    DuplicateKey {
        /// The map.
        field: &'static str,
        /// The repeated key.
        key: u64,
    },
    /// An image shorter than the legacy area and header.
    #[error("image is {len} bytes: an XSAVE image has at least 576 (legacy area and header)")]
    ImageTooSmall {
        /// Bytes given.
        len: usize,
    },
    /// An image too short for a present component.
    #[error("component {id} ({name}) lies at bytes {offset}..{end} but the image is {len} bytes")]
    ImageTruncated {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// Offset of the component.
        offset: u32,
        /// One past its end.
        end: u32,
        /// Image size.
        len: usize,
    },
    /// A header bit names something the registers do not enable.
    #[error("byte 512: XSTATE_BV {xstate_bv:#x} has component {id} ({name}), {why}")]
    BadXstateBv {
        /// XSTATE_BV of the image.
        xstate_bv: u64,
        /// Component number (63 for the compacted bit).
        id: u8,
        /// Display name.
        name: String,
        /// The rule.
        why: String,
    },
    /// The source layout cannot place a component.
    #[error("source layout: {0}")]
    SourceLayout(LayoutError),
    /// The source CPU reports a component smaller than its architectural content.
    #[error("component {id} ({name}): the source CPU reports {size} bytes, less than its {needed}-byte architectural content")]
    SourceTooSmall {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// CPUID size.
        size: u32,
        /// Content length.
        needed: u32,
    },
    /// The destination cannot hold a component present in the snapshot.
    #[error("component {id} ({name}) cannot be restored on the destination: {why}")]
    CannotHold {
        /// Component number.
        id: u8,
        /// Display name.
        name: String,
        /// Why not.
        why: String,
    },
    /// The destination's layout cannot place the requested mask.
    #[error("destination layout: {0}")]
    DestinationLayout(LayoutError),
    /// A field of the snapshot is malformed (see [`validate`] for every violation).
    #[error("{location}: {message}")]
    Malformed {
        /// Where.
        location: String,
        /// What.
        message: String,
    },
}
