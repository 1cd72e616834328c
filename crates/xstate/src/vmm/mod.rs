//! Snapshots written by other VMMs, read into the project's [`Snapshot`] record.
//!
//! Operators do not have `.xsnap` files: they have what their VMM wrote (DESIGN.md §10).
//! - [`qemu`]: QEMU migration streams (`savevm`, `migrate "exec:cat > FILE"`), walked with the
//!   JSON description of its own sections every stream ends with; registers per component.
//! - [`cloud_hypervisor`]: Cloud Hypervisor's `state.json`, whose vCPUs carry the raw KVM
//!   XSAVE buffer, XCRs, MSRs and the guest CPUID (so the source layout is known).
//! - Firecracker's `vmstate` and crosvm's CBOR snapshot fragments are recognised ([`detect`])
//!   but not read: [`FileKind::describe`] says which format it is and that it is not read yet.
//!
//! [`detect`] decides the kind from the content alone (never from the file name).
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

pub mod cloud_hypervisor;
pub mod qemu;

use alloc::format;
use alloc::string::String;

/// What a file is, judged by its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// The project's `.xsnap` snapshot (magic `89 58 53 4e 41 50 0d 0a`).
    Xsnap,
    /// A QEMU migration stream: `QEVM` magic and stream version 3 (migration/savevm.c:
    /// QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION).
    QemuStream,
    /// A Cloud Hypervisor `state.json` (a JSON object whose snapshot data holds vCPU states
    /// with an `xsave` region).
    CloudHypervisor,
    /// A Firecracker `vmstate` file, not read yet: the snapshot-format version found in its
    /// header, when it could be read.
    Firecracker {
        /// `major.minor.patch` of the header's format version.
        version: String,
    },
    /// A crosvm snapshot fragment (CBOR), not read yet: what was recognised.
    Crosvm {
        /// The recognised fragment (e.g. which top-level keys it has).
        what: String,
    },
    /// None of the above (an XSAVE image, a CPUID dump, anything else).
    Other,
}

impl FileKind {
    /// True for the kinds this crate reads into a [`Snapshot`](crate::snapshot::Snapshot).
    pub fn is_readable_snapshot(&self) -> bool {
        matches!(
            self,
            FileKind::Xsnap | FileKind::QemuStream | FileKind::CloudHypervisor
        )
    }

    /// One line for an operator: the format and, for the recognised-but-unread ones, that it
    /// is not read yet.
    pub fn describe(&self) -> String {
        match self {
            FileKind::Xsnap => String::from("xstate snapshot (.xsnap)"),
            FileKind::QemuStream => String::from("QEMU migration stream (QEVM version 3)"),
            FileKind::CloudHypervisor => String::from("Cloud Hypervisor snapshot (state.json)"),
            FileKind::Firecracker { version } => format!(
                "Firecracker vmstate (snapshot format version {version}): recognised but not read yet (versioned bitcode, not self-describing)"
            ),
            FileKind::Crosvm { what } => format!(
                "crosvm snapshot fragment (CBOR, {what}): recognised but not read yet"
            ),
            FileKind::Other => String::from("not a VMM snapshot"),
        }
    }
}

/// Firecracker's snapshot magic on x86-64 (`SNAPSHOT_MAGIC_ID` in firecracker
/// `src/vmm/src/snapshot/mod.rs`, v1.5 on), written as a little-endian u64 at byte 0.
pub const FIRECRACKER_MAGIC_X86_64: u64 = 0x0710_1984_8664_0000;
/// Firecracker's snapshot magic on aarch64.
pub const FIRECRACKER_MAGIC_AARCH64: u64 = 0x0710_1984_aaaa_0000;

/// The kind of a file from its first bytes (and, for JSON and CBOR, a bounded look at its
/// structure). Reads at most the bytes given; never fails.
pub fn detect(bytes: &[u8]) -> FileKind {
    if crate::snapshot::is_snapshot(bytes) {
        return FileKind::Xsnap;
    }
    if qemu::is_stream(bytes) {
        return FileKind::QemuStream;
    }
    if let Some(v) = firecracker_version(bytes) {
        return FileKind::Firecracker { version: v };
    }
    if cloud_hypervisor::looks_like_state_json(bytes) {
        return FileKind::CloudHypervisor;
    }
    if let Some(what) = crosvm_fragment(bytes) {
        return FileKind::Crosvm { what };
    }
    FileKind::Other
}

/// Firecracker: the magic at byte 0 (bits 15:0 masked off: the pre-1.5 versionize format kept
/// its format version there), then the header's version. From v1.5 the header is
/// `SnapshotHdr { magic: u64, version: semver::Version }` serialised with bincode: the version
/// is a string, a u64 little-endian length and the UTF-8 `MAJOR.MINOR.PATCH` (firecracker
/// `src/vmm/src/snapshot/mod.rs`). Anything else after a matching magic is reported with the
/// version unknown rather than guessed.
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
    fn kinds_by_content() {
        assert_eq!(detect(&crate::snapshot::MAGIC), FileKind::Xsnap);
        assert_eq!(detect(b"QEVM\0\0\0\x03\x07"), FileKind::QemuStream);
        assert_eq!(detect(&[0u8; 576]), FileKind::Other);
        let mut fc = alloc::vec::Vec::new();
        fc.extend_from_slice(&FIRECRACKER_MAGIC_X86_64.to_le_bytes());
        fc.extend_from_slice(&5u64.to_le_bytes());
        fc.extend_from_slice(b"6.0.0");
        fc.extend_from_slice(&[0u8; 32]);
        assert_eq!(
            detect(&fc),
            FileKind::Firecracker {
                version: String::from("6.0.0 (x86-64)")
            }
        );
        assert!(detect(&fc).describe().contains("not read yet"));
        // {"xsave": 1, "xcrs": 2} in CBOR.
        let cbor = [
            0xa2, 0x65, b'x', b's', b'a', b'v', b'e', 0x01, 0x64, b'x', b'c', b'r', b's', 0x02,
        ];
        assert!(matches!(detect(&cbor), FileKind::Crosvm { .. }));
        assert!(detect(&cbor).describe().contains("not read yet"));
    }
}
