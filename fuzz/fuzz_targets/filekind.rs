//! Fuzzes `xstate::filekind::detect`, the content-based file-kind detector every CLI input
//! goes through, and checks what each verdict promises: a snapshot has the exact magic and a
//! CRC-32 that checks, a file with the exact magic is a snapshot or a damaged one (never an
//! image), FXSAVE is exactly 512 bytes, an XSAVE image at least 576 bytes in the form XCOMP_BV
//! bit 63 names, a CPUID dump is NUL-free UTF-8. The first byte selects the mode: even, the
//! rest is the file; odd, the rest is wrapped in a well-formed `.xsnap` frame first (and then
//! checked again with one byte flipped), so the damaged-frame paths are reached by mutation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::filekind::{detect, FileKind};
use xstate::snapshot::{crc32::crc32, MAGIC};

fn check(bytes: &[u8]) {
    let k = detect(bytes);
    let exact_magic = bytes.len() >= 8 && bytes[..8] == MAGIC;
    match &k {
        FileKind::Empty => assert!(bytes.is_empty()),
        FileKind::Snapshot => {
            assert!(exact_magic);
            let end = bytes.len() - 4;
            let stored = u32::from_le_bytes(bytes[end..].try_into().unwrap());
            assert_eq!(stored, crc32(&bytes[..end]));
        }
        FileKind::DamagedSnapshot { why } => assert!(!why.is_empty()),
        FileKind::Fxsave => assert_eq!(bytes.len(), 512),
        FileKind::XsaveStandard | FileKind::XsaveCompacted => {
            assert!(bytes.len() >= 576);
            let xc = u64::from_le_bytes(bytes[520..528].try_into().unwrap());
            assert_eq!(xc >> 63 == 1, k == FileKind::XsaveCompacted);
        }
        FileKind::CpuidDump { .. } | FileKind::Text => {
            assert!(!bytes.contains(&0));
            assert!(core::str::from_utf8(bytes).is_ok());
        }
        FileKind::Unknown { len } => {
            assert_eq!(*len, bytes.len());
            assert!(*len != 512 && *len < 576);
        }
        FileKind::QemuStream => assert!(bytes.starts_with(b"QEVM")),
        FileKind::CloudHypervisorState => {}
    }
    if exact_magic {
        assert!(
            matches!(k, FileKind::Snapshot | FileKind::DamagedSnapshot { .. }),
            "{k:?}"
        );
    }
    let _ = k.to_string();
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, body)) if mode & 1 == 1 => {
            // A well-formed frame around the body, then (second byte) one byte of it flipped.
            let mut f = MAGIC.to_vec();
            f.extend_from_slice(&1u16.to_le_bytes());
            f.extend_from_slice(&0u16.to_le_bytes());
            f.extend_from_slice(&(body.len() as u32).to_le_bytes());
            f.extend_from_slice(body);
            let c = crc32(&f);
            f.extend_from_slice(&c.to_le_bytes());
            check(&f);
            if let Some(&at) = body.first() {
                let i = usize::from(at) % f.len();
                f[i] ^= 0x01;
                assert!(matches!(detect(&f), FileKind::DamagedSnapshot { .. }));
                check(&f);
            }
        }
        Some((_, body)) => check(body),
        None => check(data),
    }
});
