//! Raw ioctls that kvm-ioctls 0.25 has no call for (KVM_GET_DEVICE_ATTR on the system fd),
//! each behind a safe function.

use std::io;
use std::os::unix::io::AsRawFd;

use kvm_bindings::{kvm_device_attr, KVM_X86_GRP_SYSTEM, KVM_X86_XCOMP_GUEST_SUPP};

/// `KVM_GET_DEVICE_ATTR` = `_IOW(KVMIO, 0xe2, struct kvm_device_attr)`: direction "write"
/// (bit 30), size 24 (bits 16..29), type 0xAE (KVMIO), number 0xe2.
const KVM_GET_DEVICE_ATTR: u64 =
    (1 << 30) | ((std::mem::size_of::<kvm_device_attr>() as u64) << 16) | (0xAE << 8) | 0xE2;

/// Reads one u64 system attribute of `/dev/kvm` (`KVM_GET_DEVICE_ATTR` on the system fd).
pub(crate) fn system_attr_u64(kvm: &kvm_ioctls::Kvm, group: u32, attr: u64) -> io::Result<u64> {
    let mut value: u64 = 0;
    let arg = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr: &mut value as *mut u64 as u64,
    };
    // SAFETY: `kvm` is an open /dev/kvm fd owned by a live `Kvm`; `arg` is a valid
    // kvm_device_attr the kernel only reads; its `addr` points at `value`, a live, aligned u64
    // the kernel writes with put_user (8 bytes) and nothing else. Both outlive the call.
    let r = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_DEVICE_ATTR as _, &arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// The supported guest XCR0 (`KVM_X86_GRP_SYSTEM`, `KVM_X86_XCOMP_GUEST_SUPP`): every user
/// component KVM can give a guest, dynamic ones included, whatever the permissions.
pub(crate) fn xcomp_guest_supp(kvm: &kvm_ioctls::Kvm) -> io::Result<u64> {
    system_attr_u64(kvm, KVM_X86_GRP_SYSTEM, u64::from(KVM_X86_XCOMP_GUEST_SUPP))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_number_matches_the_uapi_encoding() {
        // _IOW(0xAE, 0xe2, 24 bytes) as the kernel computes it.
        assert_eq!(super::KVM_GET_DEVICE_ATTR, 0x4018_aee2);
    }
}
