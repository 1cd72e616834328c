//! Fuzzes the QEMU migration stream reader (`xstate::vmm::qemu`) and what consumes its
//! result: each vCPU's snapshot record, its `snapshot` profile and the rebuild on its source
//! layout. Inputs start with `QEVM` and version 3 when the first byte is odd (reaching the
//! section walk and the vmdesc), raw otherwise. Seeds: a real stream (`fuzz/seed.sh`). No
//! input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::snapshot::validate;
use xstate::vmm::qemu;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = Vec::with_capacity(rest.len() + 8);
    if mode & 1 == 1 {
        file.extend_from_slice(b"QEVM\0\0\0\x03");
    }
    file.extend_from_slice(rest);
    if let Ok(st) = qemu::parse(&file) {
        if let Ok(snaps) = st.snapshots() {
            for s in snaps {
                let _ = validate(&s);
                let _ = s.to_source_image();
            }
        }
    }
});
