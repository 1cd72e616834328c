//! What kind of file an input is, told by its content (never by its name), so that no command
//! reads one kind as another: a snapshot's bytes as a raw image, a CPUID dump as an image, a
//! damaged snapshot as a compacted image.
//!
//! The kinds, in the order [`detect`] tries them:
//! 1. empty;
//! 2. a `.xsnap` snapshot (docs/xsnap.md §2): the magic, version, reserved field, length and
//!    CRC-32 all check → [`FileKind::Snapshot`]; a file that looks like one (the magic with a
//!    few bytes wrong, or a correct magic with any later check failing, or a frame whose length
//!    field matches the file) → [`FileKind::DamagedSnapshot`], never an image;
//! 3. the formats of other VMMs ([`vmm_format`]): a QEMU migration stream (QEMU_VM_FILE_MAGIC
//!    `QEVM` at offset 0) and, to come, Cloud Hypervisor's `state.json`;
//! 4. text: a CPUID dump in a format [`DumpFormat::detect`](crate::cpuid::parse::DumpFormat::detect) recognises → [`FileKind::CpuidDump`],
//!    other text → [`FileKind::Text`];
//! 5. binary: exactly 512 bytes → [`FileKind::Fxsave`] (FXSAVE's area, SDM Vol. 1 §10.5.1); at
//!    least 576 bytes (legacy area and XSAVE header, SDM Vol. 1 §13.4) → an XSAVE image in the
//!    form XCOMP_BV bit 63 names (§13.4.3); anything else → [`FileKind::Unknown`].
//!
//! The kind of an image says nothing of its validity (that is [`crate::validate`]).
//!
//! ```
//! use xstate::filekind::{detect, FileKind};
//! assert_eq!(detect(&[]), FileKind::Empty);
//! assert_eq!(detect(&[0u8; 512]), FileKind::Fxsave);
//! assert_eq!(detect(&[0u8; 2432]), FileKind::XsaveStandard);
//! let mut c = vec![0u8; 640];
//! c[527] = 0x80; // XCOMP_BV bit 63
//! assert_eq!(detect(&c), FileKind::XsaveCompacted);
//! assert!(matches!(detect(b"5 d 0 0 0 => e7 980 980 0\n"), FileKind::CpuidDump { .. }));
//! let mut s = xstate::snapshot::MAGIC.to_vec();
//! s.resize(64, 0);
//! s[1] = b'Y'; // one damaged magic byte
//! assert!(matches!(detect(&s), FileKind::DamagedSnapshot { .. }));
//! ```

use alloc::format;
use alloc::string::String;
use core::fmt;

use crate::components::mask;
use crate::cpuid::parse::DumpFormat;
use crate::image::{raw_xcomp_bv, FXSAVE_SIZE, MIN_SIZE};
use crate::snapshot::{crc32::crc32, HEADER_LEN, MAGIC, TRAILER_LEN, VERSION};

/// The largest input of any kind a command reads (1 MiB): far above a real XSAVE image (AMX's
/// 11008 bytes), a snapshot of one (a few KiB) or a CPUID dump of a many-core machine
/// (hundreds of KiB for the largest hwloc dumps). Larger files are refused before they are
/// read whole.
pub const MAX_INPUT: u64 = 1 << 20;

/// What an input file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// No bytes at all.
    Empty,
    /// A `.xsnap` snapshot whose frame checks (magic, version, reserved field, length, CRC-32).
    Snapshot,
    /// A file that is, or was, a `.xsnap` snapshot, but whose frame does not check.
    DamagedSnapshot {
        /// What is wrong, with the offset.
        why: String,
    },
    /// A QEMU migration stream (`QEVM` magic).
    QemuStream,
    /// Cloud Hypervisor's `state.json` (recognised by the module that reads it).
    CloudHypervisorState,
    /// A 512-byte FXSAVE area.
    Fxsave,
    /// An XSAVE image in the standard form (XCOMP_BV bit 63 clear), at least 576 bytes.
    XsaveStandard,
    /// An XSAVE image in the compacted form (XCOMP_BV bit 63 set), at least 576 bytes.
    XsaveCompacted,
    /// A CPUID dump in a format the dump reader recognises.
    CpuidDump {
        /// The format.
        format: DumpFormat,
    },
    /// Text that is not a CPUID dump.
    Text,
    /// Binary data of no kind above (for example 100 bytes: neither FXSAVE nor XSAVE).
    Unknown {
        /// Its size.
        len: usize,
    },
}

impl FileKind {
    /// True for the kinds an image command reads as an XSAVE image (FXSAVE included).
    pub fn is_image(&self) -> bool {
        matches!(
            self,
            FileKind::Fxsave | FileKind::XsaveStandard | FileKind::XsaveCompacted
        )
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::Empty => f.write_str("an empty file"),
            FileKind::Snapshot => f.write_str("an .xsnap snapshot"),
            FileKind::DamagedSnapshot { why } => write!(f, "a damaged .xsnap snapshot ({why})"),
            FileKind::QemuStream => f.write_str("a QEMU migration stream"),
            FileKind::CloudHypervisorState => f.write_str("a Cloud Hypervisor state.json"),
            FileKind::Fxsave => f.write_str("a 512-byte FXSAVE area"),
            FileKind::XsaveStandard => f.write_str("a standard-form XSAVE image"),
            FileKind::XsaveCompacted => f.write_str("a compacted-form XSAVE image"),
            FileKind::CpuidDump { format } => write!(f, "a CPUID dump ({format})"),
            FileKind::Text => f.write_str("a text file that is not a CPUID dump"),
            FileKind::Unknown { len } => write!(
                f,
                "{len} bytes of binary data that are neither an FXSAVE area (512 bytes) nor an XSAVE image (at least 576 bytes)"
            ),
        }
    }
}

/// Tells the kind of `bytes` (see the module documentation for the order and the rules).
pub fn detect(bytes: &[u8]) -> FileKind {
    if bytes.is_empty() {
        return FileKind::Empty;
    }
    if let Some(k) = snapshot_kind(bytes) {
        return k;
    }
    if let Some(k) = vmm_format(bytes) {
        return k;
    }
    if let Some(k) = text_kind(bytes) {
        return k;
    }
    match bytes.len() {
        FXSAVE_SIZE => FileKind::Fxsave,
        n if n >= MIN_SIZE => {
            if raw_xcomp_bv(bytes) & mask::COMPACTED != 0 {
                FileKind::XsaveCompacted
            } else {
                FileKind::XsaveStandard
            }
        }
        len => FileKind::Unknown { len },
    }
}

/// The detect hook for other VMMs' state formats: a QEMU migration stream starts with
/// QEMU_VM_FILE_MAGIC 0x5145564D (`QEVM`, big-endian). Cloud Hypervisor's `state.json` is
/// recognised here once its reader exists (issue 13); until then it is text.
pub fn vmm_format(bytes: &[u8]) -> Option<FileKind> {
    if bytes.starts_with(b"QEVM") {
        return Some(FileKind::QemuStream);
    }
    None
}

/// Snapshot, damaged snapshot, or neither. A correct magic makes the file a snapshot whose
/// frame must check; so does a magic with at most three wrong bytes (one flipped bit or byte
/// in transit), or a header whose version, reserved and length fields describe exactly this
/// file — an XSAVE image has FCW/FSW there and the x87 FIP, not such a frame.
fn snapshot_kind(bytes: &[u8]) -> Option<FileKind> {
    let n = MAGIC.len().min(bytes.len());
    let same = bytes[..n]
        .iter()
        .zip(MAGIC.iter())
        .filter(|(a, b)| a == b)
        .count();
    let frame_fits = bytes.len() >= HEADER_LEN + TRAILER_LEN && {
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        let reserved = u16::from_le_bytes([bytes[10], bytes[11]]);
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        (1..=VERSION).contains(&version)
            && reserved == 0
            && HEADER_LEN + len + TRAILER_LEN == bytes.len()
    };
    let exact = n == MAGIC.len() && same == MAGIC.len();
    let near = n == MAGIC.len() && same >= MAGIC.len() - 3;
    // A short file that is a prefix of the magic: a truncated snapshot.
    let prefix = n < MAGIC.len() && same == n && n >= 4;
    if !(exact || near || frame_fits || prefix) {
        return None;
    }
    Some(match frame_check(bytes) {
        Ok(()) => FileKind::Snapshot,
        Err(why) => FileKind::DamagedSnapshot { why },
    })
}

/// The frame checks of docs/xsnap.md §2, in the order a reader applies them.
fn frame_check(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(format!(
            "truncated: {} bytes, a snapshot has at least {}",
            bytes.len(),
            HEADER_LEN + TRAILER_LEN
        ));
    }
    if bytes[..MAGIC.len()] != MAGIC {
        let mut found = String::new();
        for (i, b) in bytes[..MAGIC.len()].iter().enumerate() {
            if i > 0 {
                found.push(' ');
            }
            found.push_str(&format!("{b:02x}"));
        }
        return Err(format!(
            "bytes 0..8 are {found}, not the magic 89 58 53 4e 41 50 0d 0a"
        ));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version == 0 || version > VERSION {
        return Err(format!(
            "version (offset 8) is {version}; this build reads 1..={VERSION}"
        ));
    }
    let reserved = u16::from_le_bytes([bytes[10], bytes[11]]);
    if reserved != 0 {
        return Err(format!(
            "reserved field (offset 10) is {reserved:#x}, must be 0"
        ));
    }
    let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let want = HEADER_LEN.saturating_add(len).saturating_add(TRAILER_LEN);
    if want != bytes.len() {
        return Err(format!(
            "body length (offset 12) is {len}, so the file should have {want} bytes, but it has {}{}",
            bytes.len(),
            if want > bytes.len() { " (truncated)" } else { " (trailing data)" }
        ));
    }
    let end = HEADER_LEN + len;
    let stored = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
    let computed = crc32(&bytes[..end]);
    if stored != computed {
        return Err(format!(
            "CRC-32 (offset {end}) is {stored:#010x}, the bytes give {computed:#010x}"
        ));
    }
    Ok(())
}

/// Text: no NUL byte and valid UTF-8 (an XSAVE image or FXSAVE area always holds NUL bytes —
/// the reserved header bytes, the high bytes of MXCSR; a CPUID dump never does).
fn text_kind(bytes: &[u8]) -> Option<FileKind> {
    if bytes.contains(&0) {
        return None;
    }
    let text = core::str::from_utf8(bytes).ok()?;
    match DumpFormat::detect(text) {
        Some(DumpFormat::Json) if !text.contains("xstate-cpuid/") => Some(FileKind::Text),
        Some(format) => Some(FileKind::CpuidDump { format }),
        None => Some(FileKind::Text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn snapshot_frames() {
        // A minimal well-formed frame: empty body.
        let mut s = MAGIC.to_vec();
        s.extend_from_slice(&1u16.to_le_bytes());
        s.extend_from_slice(&0u16.to_le_bytes());
        s.extend_from_slice(&0u32.to_le_bytes());
        let c = crc32(&s);
        s.extend_from_slice(&c.to_le_bytes());
        assert_eq!(detect(&s), FileKind::Snapshot);
        // Each damage is a damaged snapshot, never an image or unknown.
        let damaged = |b: &[u8]| matches!(detect(b), FileKind::DamagedSnapshot { .. });
        for i in 0..s.len() {
            let mut d = s.clone();
            d[i] ^= 0x01;
            assert!(damaged(&d), "byte {i}: {:?}", detect(&d));
        }
        for n in 4..s.len() {
            assert!(damaged(&s[..n]), "truncated to {n}: {:?}", detect(&s[..n]));
        }
        let mut long = s.clone();
        long.push(0);
        assert!(damaged(&long));
    }

    #[test]
    fn images_and_text() {
        assert_eq!(detect(&[0u8; 100]), FileKind::Unknown { len: 100 });
        assert_eq!(detect(&[0u8; 575]), FileKind::Unknown { len: 575 });
        let mut fcw = vec![0u8; 2432];
        fcw[0] = 0x7f;
        fcw[1] = 0x03;
        assert_eq!(detect(&fcw), FileKind::XsaveStandard);
        assert_eq!(detect(b"QEVM\0\0\0\x03"), FileKind::QemuStream);
        assert_eq!(detect(b"hello\n"), FileKind::Text);
        assert_eq!(detect(b"{\"a\": 1}"), FileKind::Text);
        assert!(matches!(
            detect(b"CPUID 0000000D: 000000E7-00000980-00000980-00000000 [SL 00]\n"),
            FileKind::CpuidDump {
                format: DumpFormat::Aida64
            }
        ));
    }
}
