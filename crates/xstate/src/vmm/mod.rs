//! Snapshots written by other VMMs, read into the project's [`Snapshot`] record.
//!
//! Operators do not have `.xsnap` files: they have what their VMM wrote (DESIGN.md §10).
//! - [`qemu`]: QEMU migration streams (`savevm`, `migrate "exec:cat > FILE"`), walked with the
//!   JSON description of its own sections every stream ends with; registers per component.
//! - [`cloud_hypervisor`]: Cloud Hypervisor's `state.json`, whose vCPUs carry the raw KVM
//!   XSAVE buffer, XCRs, MSRs and the guest CPUID (so the source layout is known).
//! - Firecracker's `vmstate` and crosvm's CBOR snapshot fragments are recognised ([`detect`])
//!   but not read: [`VmmFormat::describe`] says which format it is and that it is not read yet.
//!
//! [`detect`] decides the format from the content alone (never from the file name); it is the
//! VMM hook of [`crate::filekind::detect`].
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

pub mod cloud_hypervisor;
pub mod qemu;

use alloc::format;
use alloc::string::String;

/// A snapshot format of another VMM, judged by content ([`detect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmmFormat {
    /// A QEMU migration stream: `QEVM` magic (migration/savevm.c: QEMU_VM_FILE_MAGIC); the
    /// stream version is checked by the reader.
    QemuStream,
    /// A Cloud Hypervisor `state.json` (a JSON object with `snapshots` and `snapshot_data`).
    CloudHypervisor,
    /// A Firecracker `vmstate` file, not read yet: the snapshot-format version found in its
    /// header, when it could be read.
    Firecracker {
        /// `major.minor.patch` of the header's format version, and the architecture.
        version: String,
    },
    /// A crosvm snapshot fragment (CBOR), not read yet: what was recognised.
    Crosvm {
        /// The recognised fragment.
        what: String,
    },
}

impl VmmFormat {
    /// True for the formats this crate reads into a [`Snapshot`](crate::snapshot::Snapshot).
    pub fn is_readable(&self) -> bool {
        matches!(self, VmmFormat::QemuStream | VmmFormat::CloudHypervisor)
    }

    /// One line for an operator: the format and, for the recognised-but-unread ones, that it
    /// is not read yet.
    pub fn describe(&self) -> String {
        match self {
            VmmFormat::QemuStream => String::from("a QEMU migration stream"),
            VmmFormat::CloudHypervisor => String::from("a Cloud Hypervisor state.json"),
            VmmFormat::Firecracker { version } => format!(
                "a Firecracker vmstate (snapshot format version {version}): recognised but not read yet (versioned bitcode, not self-describing)"
            ),
            VmmFormat::Crosvm { what } => format!(
                "a crosvm snapshot fragment (CBOR, {what}): recognised but not read yet"
            ),
        }
    }
}

/// Firecracker's snapshot magic on x86-64 (`SNAPSHOT_MAGIC_ID` in firecracker
/// `src/vmm/src/snapshot/mod.rs`, v1.5 on), written as a little-endian u64 at byte 0.
pub const FIRECRACKER_MAGIC_X86_64: u64 = 0x0710_1984_8664_0000;
/// Firecracker's snapshot magic on aarch64.
pub const FIRECRACKER_MAGIC_AARCH64: u64 = 0x0710_1984_aaaa_0000;

/// The VMM format of a file from its first bytes (and, for JSON and CBOR, a bounded look at
/// its structure), or None. Never fails; [`crate::filekind::detect`] calls it.
pub fn detect(bytes: &[u8]) -> Option<VmmFormat> {
    if bytes.starts_with(&qemu::MAGIC) {
        return Some(VmmFormat::QemuStream);
    }
    if let Some(v) = firecracker_version(bytes) {
        return Some(VmmFormat::Firecracker { version: v });
    }
    if cloud_hypervisor::looks_like_state_json(bytes) {
        return Some(VmmFormat::CloudHypervisor);
    }
    crosvm_fragment(bytes).map(|what| VmmFormat::Crosvm { what })
}

/// Firecracker: the magic at byte 0 (bits 15:0 masked off: the pre-1.5 versionize format kept
/// its format version there), then the header's version. From v1.5 the header is
/// `SnapshotHdr { magic: u64, version: semver::Version }` serialised with bincode (1.x, and
/// 2.x with `with_fixed_int_encoding().with_little_endian()`): the magic as a little-endian
/// u64, the version a string — a u64 little-endian length and the UTF-8 `MAJOR.MINOR.PATCH`
/// (firecracker `src/vmm/src/snapshot/mod.rs`); a CRC64 ends the file. Anything else after a
/// matching magic is reported with the version unknown rather than guessed.
fn firecracker_version(bytes: &[u8]) -> Option<String> {
    let u = |i: usize| -> Option<u64> {
        let b = bytes.get(i..i + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    };
    let magic = u(0)?;
    let arch = match magic & !0xffff {
        FIRECRACKER_MAGIC_X86_64 => "x86-64",
        FIRECRACKER_MAGIC_AARCH64 => "aarch64",
        _ => return None,
    };
    if magic & 0xffff != 0 {
        return Some(format!(
            "{arch}, pre-1.5 versionize header, format {}",
            magic & 0xffff
        ));
    }
    let text = u(8)
        .filter(|&n| (5..=64).contains(&n))
        .and_then(|n| bytes.get(16..16 + n as usize))
        .and_then(|b| core::str::from_utf8(b).ok())
        .filter(|t| {
            t.split('.').count() >= 3
                && t.split('.')
                    .take(3)
                    .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        });
    Some(match text {
        Some(t) => format!("{t} ({arch})"),
        None => format!(
            "unknown ({arch}; the header after the magic is not the bincode version string)"
        ),
    })
}

/// crosvm writes its snapshot fragments as CBOR maps (ciborium). A vCPU fragment is a map
/// whose text keys include `xsave` and `xcrs` (DESIGN.md §10: `VcpuSnapshot { …, xcrs, msrs,
/// xsave: Xsave { data, len } }`). Recognised: a CBOR map (major type 5) whose first 64 KiB
/// contain the CBOR text strings `xsave` and `xcrs`.
fn crosvm_fragment(bytes: &[u8]) -> Option<String> {
    let first = *bytes.first()?;
    if first >> 5 != 5 {
        return None;
    }
    let head = &bytes[..bytes.len().min(64 * 1024)];
    // CBOR text string of length n < 24: one byte 0x60 + n, then the bytes (RFC 8949 §3).
    let has = |key: &[u8]| {
        let mut pat = alloc::vec::Vec::with_capacity(key.len() + 1);
        pat.push(0x60 + key.len() as u8);
        pat.extend_from_slice(key);
        head.windows(pat.len()).any(|w| w == pat.as_slice())
    };
    if has(b"xsave") && has(b"xcrs") {
        Some(String::from("vCPU state with xsave, xcrs"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_content() {
        assert_eq!(detect(b"QEVM\0\0\0\x03\x07"), Some(VmmFormat::QemuStream));
        assert_eq!(detect(b"QEVM\0\0\0\x02"), Some(VmmFormat::QemuStream));
        assert_eq!(detect(&crate::snapshot::MAGIC), None);
        assert_eq!(detect(&[0u8; 576]), None);
        assert_eq!(
            detect(br#"{"snapshots":{},"snapshot_data":null}"#),
            Some(VmmFormat::CloudHypervisor)
        );
        let mut fc = alloc::vec::Vec::new();
        fc.extend_from_slice(&FIRECRACKER_MAGIC_X86_64.to_le_bytes());
        fc.extend_from_slice(&5u64.to_le_bytes());
        fc.extend_from_slice(b"6.0.0");
        fc.extend_from_slice(&[0u8; 32]);
        let k = detect(&fc).unwrap();
        assert_eq!(
            k,
            VmmFormat::Firecracker {
                version: String::from("6.0.0 (x86-64)")
            }
        );
        assert!(k.describe().contains("not read yet"));
        // {"xsave": 1, "xcrs": 2} in CBOR.
        let cbor = [
            0xa2, 0x65, b'x', b's', b'a', b'v', b'e', 0x01, 0x64, b'x', b'c', b'r', b's', 0x02,
        ];
        let k = detect(&cbor).unwrap();
        assert!(matches!(k, VmmFormat::Crosvm { .. }));
        assert!(k.describe().contains("not read yet"));
    }
}
