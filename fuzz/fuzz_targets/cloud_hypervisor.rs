//! Fuzzes the Cloud Hypervisor `state.json` reader (`xstate::vmm::cloud_hypervisor`): parse,
//! each vCPU's snapshot record, the raw-region move check and the repair for a fixed Zen 4-like
//! destination (whose result must parse again). No input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xstate::cpuid::{CpuidDump, Regs};
use xstate::layout::Layout;
use xstate::vmm::cloud_hypervisor::{blob_moves, repair, StateJson};

fn destination() -> Layout {
    let mut d = CpuidDump::new("zen4-like");
    let r = |eax, ebx, ecx| Regs { eax, ebx, ecx, edx: 0 };
    d.insert(0xd, 0, r(0xe7, 0x980, 0x980));
    d.insert(0xd, 2, r(256, 576, 0));
    d.insert(0xd, 5, r(64, 832, 0));
    d.insert(0xd, 6, r(512, 896, 0));
    d.insert(0xd, 7, r(1024, 1408, 0));
    Layout::from_dump(&d)
}

fuzz_target!(|data: &[u8]| {
    let Ok(st) = StateJson::parse(data) else {
        return;
    };
    let l = destination();
    for v in &st.vcpus {
        if let Ok(s) = v.to_snapshot() {
            let _ = blob_moves(&s, &l);
        }
    }
    if let Ok(out) = repair(data, &l) {
        assert!(StateJson::parse(&out).is_ok());
    }
});
