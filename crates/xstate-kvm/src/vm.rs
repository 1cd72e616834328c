//! A VM whose vCPUs' extended state can be read and written safely.

use std::sync::Arc;

use kvm_ioctls::{Cap, VmFd};

use crate::error::{Error, Result};
use crate::kvm::KvmFacts;
use crate::vcpu::Vcpu;
use crate::xsave::KVM_XSAVE_SIZE;

/// A VM created by [`crate::Kvm::create_vm`]: the kvm-ioctls `VmFd` plus what sizes its
/// vCPUs' XSAVE buffers.
pub struct Vm {
    fd: Arc<VmFd>,
    pub(crate) facts: Arc<KvmFacts>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").finish_non_exhaustive()
    }
}

/// The XSAVE buffer size for vCPUs of `vm`: KVM_CAP_XSAVE2 queried *now* (it grows with guest
/// permissions, which only grow, so a fresh answer bounds every buffer KVM may write), or 4096
/// (`struct kvm_xsave`) on kernels without the capability. `None` means no XSAVE2.
pub(crate) fn xsave2_size_of(vm: &VmFd) -> Result<Option<usize>> {
    let n = vm.check_extension_int(Cap::Xsave2);
    if n <= 0 {
        return Ok(None);
    }
    let n = usize::try_from(n).unwrap_or(0);
    if n < KVM_XSAVE_SIZE {
        return Err(Error::Unexpected {
            op: "KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)".into(),
            what: format!("{n} bytes, less than the 4096 of struct kvm_xsave"),
        });
    }
    Ok(Some(n))
}

impl Vm {
    pub(crate) fn new(fd: VmFd, facts: Arc<KvmFacts>) -> Self {
        Vm {
            fd: Arc::new(fd),
            facts,
        }
    }

    /// The kvm-ioctls VM handle (memory regions, devices …).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// KVM_CAP_XSAVE2 on this VM: the size of its vCPUs' XSAVE buffers (4096 on kernels
    /// without the capability).
    ///
    /// ```no_run
    /// let vm = xstate_kvm::Kvm::open()?.create_vm()?;
    /// assert!(vm.xsave2_size()? >= 4096);
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn xsave2_size(&self) -> Result<usize> {
        Ok(xsave2_size_of(&self.fd)?.unwrap_or(KVM_XSAVE_SIZE))
    }

    /// Creates vCPU `id` (KVM_CREATE_VCPU). From now on this process's guest permissions are
    /// locked.
    ///
    /// ```no_run
    /// let vm = xstate_kvm::Kvm::open()?.create_vm()?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let img = vcpu.get_xsave()?;
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(id)
            .map_err(|e| Error::ioctl(format!("KVM_CREATE_VCPU({id})"), e))?;
        Vcpu::new(fd, &self.fd, self.facts.clone())
    }

    /// Wraps a vCPU of this VM created with kvm-ioctls (see [`crate::BorrowedVcpu`] for one
    /// the caller keeps).
    pub fn adopt_vcpu(&self, fd: kvm_ioctls::VcpuFd) -> Result<Vcpu> {
        Vcpu::new(fd, &self.fd, self.facts.clone())
    }
}
