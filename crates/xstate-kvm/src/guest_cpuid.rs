//! A guest CPUID table for KVM_SET_CPUID2 with the extended-state leaves of
//! [`xstate::guest_cpuid`] (leaf 0xD for a chosen set of guest components, and the feature
//! bits of leaves 1, 7, 0x14, 0x1D, 0x1E, 0x80000001 consistent with it).
//!
//! ```no_run
//! use xstate::components::mask;
//! use xstate::guest_cpuid::{guest_cpuid, guest_masks};
//! let kvm = xstate_kvm::Kvm::open()?;
//! // The host (as KVM supports it for guests) minus AVX-512.
//! let (xcr0, xss) = guest_masks(kvm.layout(), None, mask::AVX512)?;
//! let g = guest_cpuid(kvm.supported_cpuid_dump(), xcr0, xss)?;
//! let table = xstate_kvm::guest_cpuid::apply(kvm.supported_cpuid(), &g)?;
//! let vm = kvm.create_vm()?;
//! let vcpu = vm.create_vcpu(0)?;
//! vcpu.fd().set_cpuid2(&table)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use xstate::guest_cpuid::GuestCpuid;

use crate::error::{Error, Result};

/// Leaves whose subleaf (ECX) selects the entry (SDM Vol. 2A CPUID): KVM needs
/// KVM_CPUID_FLAG_SIGNIFCANT_INDEX on them.
const INDEXED: [u32; 5] = [0x7, 0xd, 0x14, 0x1d, 0x1e];

/// `base` (e.g. KVM_GET_SUPPORTED_CPUID) with the guest's extended-state entries: every leaf
/// 0xD entry of `base` is replaced by the guest's, the other entries the guest table has
/// replace `base`'s registers (flags kept), and entries `base` lacks are added.
pub fn apply(base: &CpuId, g: &GuestCpuid) -> Result<CpuId> {
    let mut entries: Vec<kvm_cpuid_entry2> = base
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xd)
        .copied()
        .collect();
    for ge in &g.entries {
        let found = entries
            .iter_mut()
            .find(|e| e.function == ge.function && e.index == ge.index);
        match found {
            Some(e) => {
                e.eax = ge.eax;
                e.ebx = ge.ebx;
                e.ecx = ge.ecx;
                e.edx = ge.edx;
            }
            None => entries.push(kvm_cpuid_entry2 {
                function: ge.function,
                index: ge.index,
                flags: if INDEXED.contains(&ge.function) {
                    KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                } else {
                    0
                },
                eax: ge.eax,
                ebx: ge.ebx,
                ecx: ge.ecx,
                edx: ge.edx,
                ..Default::default()
            }),
        }
    }
    CpuId::from_entries(&entries).map_err(|e| Error::Unexpected {
        op: "building the guest CPUID table".into(),
        what: format!("{e:?} ({} entries)", entries.len()),
    })
}
