//! Fuzzes the `.xsnap` decoder and everything that consumes a decoded snapshot: the `snapshot`
//! profile, the rebuild on its source layout and on a fixed Zen 5-like destination, and the
//! compatibility check. Two modes, chosen by the first byte: raw bytes (exercises the header,
//! length and CRC checks), or a body wrapped in a valid header and CRC (reaches the CBOR
//! schema decoder and everything after it). No input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::compat::{check, Destination};
use xstate::cpuid::{CpuidDump, Regs};
use xstate::layout::{Form, Layout};
use xstate::snapshot::{crc32::crc32, validate, Snapshot, MAGIC, VERSION};

fn destination() -> CpuidDump {
    let mut d = CpuidDump::new("zen5-like");
    let r = |eax, ebx, ecx| Regs { eax, ebx, ecx, edx: 0 };
    d.insert(0xd, 0, r(0xe7, 0x980, 0x980));
    d.insert(0xd, 1, r(0xf, 0x9a8, 0x1800));
    d.insert(0xd, 2, r(256, 576, 0));
    d.insert(0xd, 5, r(64, 832, 0));
    d.insert(0xd, 6, r(512, 896, 0));
    d.insert(0xd, 7, r(1024, 1408, 0));
    d.insert(0xd, 11, r(16, 0, 1));
    d.insert(0xd, 12, r(24, 0, 1));
    d
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut f = Vec::with_capacity(rest.len() + 20);
        f.extend_from_slice(&MAGIC);
        f.extend_from_slice(&VERSION.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(&(rest.len() as u32).to_le_bytes());
        f.extend_from_slice(rest);
        let c = crc32(&f);
        f.extend_from_slice(&c.to_le_bytes());
        f
    };
    if let Ok(s) = Snapshot::decode(&file) {
        let _ = validate(&s);
        let _ = s.to_source_image();
        let d = destination();
        let l = Layout::from_dump(&d);
        let _ = s.to_image(&l, Form::Standard, s.xcr0);
        let _ = s.to_image(&l, Form::Compacted, s.xcr0 | s.xss);
        let _ = check(&s, &Destination::from_dump(&d, None, None));
        // What decodes re-encodes, and decodes to the same value.
        if let Ok(again) = s.encode() {
            assert_eq!(Snapshot::decode(&again).ok().as_ref(), Some(&s));
        }
    }
});
