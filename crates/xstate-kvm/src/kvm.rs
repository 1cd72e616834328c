//! Opening KVM in the order the kernel requires (DESIGN §6, seeds): guest permissions for
//! dynamic components first, then everything that sizes guest state.
//!
//! [`KvmSetup`] is the first stage: it can read what KVM supports and request guest
//! permissions, but it has no way to create a VM or to read KVM_GET_SUPPORTED_CPUID.
//! [`KvmSetup::ready`] consumes it and yields [`Kvm`], which can do both and can no longer
//! request permissions. Wrong order does not compile:
//!
//! ```compile_fail
//! let setup = xstate_kvm::KvmSetup::open()?;
//! let vm = setup.create_vm()?; // no VMs before the permission stage ends
//! # Ok::<(), xstate_kvm::Error>(())
//! ```
//!
//! ```compile_fail
//! let kvm = xstate_kvm::KvmSetup::open()?.ready()?;
//! kvm.request_guest_feature(18)?; // no permission requests once VMs can exist
//! # Ok::<(), xstate_kvm::Error>(())
//! ```

use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Cap;
use xstate::components::{bits, mask};
use xstate::cpuid::{CpuidDump, Regs};
use xstate::layout::{FormLayout, Layout, LayoutError};
use xstate::snapshot::SourceCpu;

use crate::error::{Error, Result};
use crate::perm::{self, PermError};
use crate::vm::Vm;

/// Stage 1 of opening KVM: queries and guest permission requests, before any VM exists.
///
/// ```no_run
/// use xstate_kvm::KvmSetup;
/// let mut setup = KvmSetup::open()?;
/// let supported = setup.guest_supported_xcr0()?;
/// setup.request_guest_features(supported)?; // AMX TILEDATA where there is one
/// let kvm = setup.ready()?;                 // now VMs and KVM_GET_SUPPORTED_CPUID
/// let vm = kvm.create_vm()?;
/// # Ok::<(), xstate_kvm::Error>(())
/// ```
pub struct KvmSetup {
    kvm: kvm_ioctls::Kvm,
}

impl std::fmt::Debug for KvmSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmSetup").finish_non_exhaustive()
    }
}

fn open_error(e: kvm_ioctls::Error) -> Error {
    Error::Open {
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

impl KvmSetup {
    /// Opens `/dev/kvm`. ENOENT means no KVM, EACCES no permission.
    ///
    /// ```no_run
    /// match xstate_kvm::KvmSetup::open() {
    ///     Ok(_) => println!("KVM is here"),
    ///     Err(e) => println!("{e}"),
    /// }
    /// ```
    pub fn open() -> Result<Self> {
        let kvm = kvm_ioctls::Kvm::new().map_err(open_error)?;
        Ok(KvmSetup { kvm })
    }

    /// KVM_GET_API_VERSION (12 on every released kernel).
    ///
    /// ```no_run
    /// assert_eq!(xstate_kvm::KvmSetup::open()?.api_version(), 12);
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// The user components KVM can give a guest, dynamic ones included, whatever the
    /// permissions: `KVM_GET_DEVICE_ATTR(KVM_X86_GRP_SYSTEM, KVM_X86_XCOMP_GUEST_SUPP)` on
    /// `/dev/kvm`.
    ///
    /// ```no_run
    /// let xcr0 = xstate_kvm::KvmSetup::open()?.guest_supported_xcr0()?;
    /// println!("guests may enable {xcr0:#x}");
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn guest_supported_xcr0(&self) -> Result<u64> {
        crate::sys::xcomp_guest_supp(&self.kvm).map_err(|source| Error::Ioctl {
            op: "KVM_GET_DEVICE_ATTR(KVM_X86_GRP_SYSTEM, KVM_X86_XCOMP_GUEST_SUPP)".into(),
            source,
        })
    }

    /// The components this process's guests are permitted (ARCH_GET_XCOMP_GUEST_PERM).
    ///
    /// ```no_run
    /// let p = xstate_kvm::KvmSetup::open()?.guest_permitted()?;
    /// assert!(p & 0x3 == 0x3);
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn guest_permitted(&self) -> Result<u64> {
        Ok(perm::guest_permitted()?)
    }

    /// Requests guest permission for one dynamic component (ARCH_REQ_XCOMP_GUEST_PERM); the
    /// typed error carries the kernel's errno (EOPNOTSUPP on a CPU without it, …).
    ///
    /// ```no_run
    /// let mut s = xstate_kvm::KvmSetup::open()?;
    /// if let Err(e) = s.request_guest_feature(18) {
    ///     println!("no AMX for guests: {e}");
    /// }
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn request_guest_feature(&mut self, id: u8) -> std::result::Result<(), PermError> {
        perm::request_guest(id)
    }

    /// Requests guest permission for every dynamic component in `wanted` that KVM supports
    /// for guests; returns the resulting guest permissions. Components in `wanted` that are
    /// not dynamic need no permission and are skipped.
    ///
    /// ```no_run
    /// let mut s = xstate_kvm::KvmSetup::open()?;
    /// let all = s.guest_supported_xcr0()?;
    /// let granted = s.request_guest_features(all)?;
    /// println!("guest permissions {granted:#x}");
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn request_guest_features(&mut self, wanted: u64) -> Result<u64> {
        let supported = self.guest_supported_xcr0()?;
        for id in bits(wanted & supported & mask::DYNAMIC) {
            perm::request_guest(id)?;
        }
        self.guest_permitted()
    }

    /// Ends the permission stage: reads KVM_GET_SUPPORTED_CPUID and the MSR index list (both
    /// depend on the permissions) and returns the handle that creates VMs.
    ///
    /// ```no_run
    /// let kvm = xstate_kvm::KvmSetup::open()?.ready()?;
    /// println!("{:#x}", kvm.guest_supported_xcr0());
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn ready(self) -> Result<Kvm> {
        let facts = KvmFacts::read(&self.kvm)?;
        Ok(Kvm {
            kvm: self.kvm,
            facts: Arc::new(facts),
        })
    }
}

/// What capture and restore need to know about a KVM, read once after the guest permissions
/// are settled: the supported guest XCR0, the guest permissions, the extended-state MSRs KVM
/// lists, KVM_GET_SUPPORTED_CPUID with its XSAVE layout, and the source-CPU record snapshots
/// carry. Shared by every VM and vCPU of a [`Kvm`]; a VMM that owns its `kvm_ioctls::Kvm` reads
/// it with [`KvmFacts::read`] and hands it to [`crate::BorrowedVcpu`].
#[derive(Debug)]
pub struct KvmFacts {
    pub(crate) guest_xcr0: u64,
    pub(crate) guest_permitted: u64,
    pub(crate) xstate_msrs: Vec<u32>,
    pub(crate) cpuid: CpuId,
    pub(crate) dump: CpuidDump,
    pub(crate) layout: Layout,
    /// The standard layout of the guest-supported XCR0 (what KVM_SET_XSAVE reads), or why the
    /// supported CPUID cannot lay it out.
    pub(crate) standard: std::result::Result<FormLayout, LayoutError>,
    pub(crate) source: SourceCpu,
    pub(crate) xsave2_size: u32,
}

impl AsRef<KvmFacts> for KvmFacts {
    fn as_ref(&self) -> &KvmFacts {
        self
    }
}

impl AsRef<KvmFacts> for Kvm {
    fn as_ref(&self) -> &KvmFacts {
        &self.facts
    }
}

impl KvmFacts {
    /// Reads the facts from a `/dev/kvm` handle the caller owns.
    ///
    /// What the caller must have done first (the kernel's order, DESIGN §6, §10): request guest
    /// permissions for dynamic components (ARCH_REQ_XCOMP_GUEST_PERM, e.g. with
    /// [`crate::perm::request_guest`]) *before* this call, because KVM_GET_SUPPORTED_CPUID and
    /// KVM_CAP_XSAVE2 depend on them. Permissions only grow: facts read before a later grant
    /// are conservative (the component granted later is treated as not permitted).
    ///
    /// ```no_run
    /// let kvm = kvm_ioctls::Kvm::new()?;
    /// let facts = xstate_kvm::KvmFacts::read(&kvm)?;
    /// println!("guests may enable {:#x}", facts.guest_supported_xcr0());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(kvm: &kvm_ioctls::Kvm) -> Result<KvmFacts> {
        let guest_permitted = perm::guest_permitted()?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::ioctl("KVM_GET_SUPPORTED_CPUID", e))?;
        let dump = cpuid_dump(&cpuid, "KVM_GET_SUPPORTED_CPUID");
        // KVM's guest XSAVE layout is leaf 0xD of the supported CPUID, whatever leaf 1 says
        // (some hosts filter CPUID.1:ECX.XSAVE out of the supported table while XSAVE works).
        let layout = Layout::from_leaf(dump.leaf_0d());
        let guest_xcr0 = match crate::sys::xcomp_guest_supp(kvm) {
            Ok(v) => v,
            // Kernels before 5.17 lack the attribute: leaf 0xD of the supported CPUID says the
            // same for the static components.
            Err(_) => layout.xcr0_supported(),
        };
        let listed: Vec<u32> = kvm
            .get_msr_index_list()
            .map_err(|e| Error::ioctl("KVM_GET_MSR_INDEX_LIST", e))?
            .as_slice()
            .to_vec();
        let xstate_msrs = crate::msr::xstate_msrs_in(&listed);
        let standard = layout.standard(guest_xcr0 & !mask::COMPACTED);
        let source = SourceCpu::from_dump(&dump);
        let xsave2_size = u32::try_from(kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        Ok(KvmFacts {
            guest_xcr0,
            guest_permitted,
            xstate_msrs,
            cpuid,
            dump,
            layout,
            standard,
            source,
            xsave2_size,
        })
    }

    /// The guest-supported XCR0 (KVM_X86_XCOMP_GUEST_SUPP, or leaf 0xD of the supported
    /// CPUID on kernels without the attribute).
    pub fn guest_supported_xcr0(&self) -> u64 {
        self.guest_xcr0
    }

    /// The guest permissions in force when the facts were read (ARCH_GET_XCOMP_GUEST_PERM).
    pub fn guest_permitted(&self) -> u64 {
        self.guest_permitted
    }

    /// The extended-state MSRs KVM lists (KVM_GET_MSR_INDEX_LIST ∩
    /// [`crate::msr::XSTATE_MSRS`]), in restore order.
    pub fn xstate_msrs(&self) -> &[u32] {
        &self.xstate_msrs
    }

    /// KVM_GET_SUPPORTED_CPUID.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// The supported CPUID as a [`CpuidDump`].
    pub fn supported_cpuid_dump(&self) -> &CpuidDump {
        &self.dump
    }

    /// The XSAVE layout KVM uses for guests (leaf 0xD of the supported CPUID).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// KVM_CAP_XSAVE2 on the system fd when the facts were read (0 on kernels without it).
    pub fn xsave2_size(&self) -> u32 {
        self.xsave2_size
    }

    /// The source-CPU record a snapshot of this KVM's vCPUs carries (identity and leaf 0xD of
    /// the supported CPUID), built once.
    pub fn source_cpu(&self) -> &SourceCpu {
        &self.source
    }
}

/// A kvm-bindings CPUID table as an xstate [`CpuidDump`].
///
/// ```no_run
/// let kvm = xstate_kvm::KvmSetup::open()?.ready()?;
/// let d = xstate_kvm::kvm::cpuid_dump(kvm.supported_cpuid(), "supported");
/// println!("{:#x}", d.leaf_0d().xcr0_supported());
/// # Ok::<(), xstate_kvm::Error>(())
/// ```
pub fn cpuid_dump(cpuid: &CpuId, source: &str) -> CpuidDump {
    let mut d = CpuidDump::new(source);
    d.format = "kvm".into();
    for e in cpuid.as_slice() {
        d.insert(
            e.function,
            e.index,
            Regs {
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            },
        );
    }
    d
}

/// Stage 2 of opening KVM: guest permissions are settled; VMs, supported CPUID, MSR list.
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    facts: Arc<KvmFacts>,
}

impl std::fmt::Debug for Kvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kvm")
            .field("guest_xcr0", &format_args!("{:#x}", self.facts.guest_xcr0))
            .finish_non_exhaustive()
    }
}

impl Kvm {
    /// Opens KVM without requesting any permission (`KvmSetup::open()?.ready()`).
    ///
    /// ```no_run
    /// let kvm = xstate_kvm::Kvm::open()?;
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn open() -> Result<Self> {
        KvmSetup::open()?.ready()
    }

    /// The kvm-ioctls handle, for everything this crate does not wrap.
    pub fn raw(&self) -> &kvm_ioctls::Kvm {
        &self.kvm
    }

    /// What capture and restore know about this KVM (read once at [`KvmSetup::ready`]).
    pub fn facts(&self) -> &KvmFacts {
        &self.facts
    }

    /// KVM_GET_API_VERSION.
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// The guest-supported XCR0 (KVM_X86_XCOMP_GUEST_SUPP, or leaf 0xD of the supported
    /// CPUID on kernels without the attribute).
    pub fn guest_supported_xcr0(&self) -> u64 {
        self.facts.guest_xcr0
    }

    /// The guest permissions in force (ARCH_GET_XCOMP_GUEST_PERM at [`KvmSetup::ready`]).
    pub fn guest_permitted(&self) -> u64 {
        self.facts.guest_permitted
    }

    /// KVM_CAP_XSAVE2 on the system fd: the XSAVE buffer size for this process's guests
    /// (0 on kernels without the capability).
    pub fn xsave2_size(&self) -> u32 {
        u32::try_from(self.kvm.check_extension_int(Cap::Xsave2)).unwrap_or(0)
    }

    /// KVM_GET_SUPPORTED_CPUID as read by [`KvmSetup::ready`].
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.facts.cpuid
    }

    /// The supported CPUID as a [`CpuidDump`].
    pub fn supported_cpuid_dump(&self) -> &CpuidDump {
        &self.facts.dump
    }

    /// The XSAVE layout KVM uses for guests (leaf 0xD of the supported CPUID).
    pub fn layout(&self) -> &Layout {
        &self.facts.layout
    }

    /// The extended-state MSRs KVM lists (KVM_GET_MSR_INDEX_LIST ∩ [`crate::msr::XSTATE_MSRS`]),
    /// in restore order.
    pub fn xstate_msrs(&self) -> &[u32] {
        &self.facts.xstate_msrs
    }

    /// Creates a VM (KVM_CREATE_VM).
    ///
    /// ```no_run
    /// let kvm = xstate_kvm::Kvm::open()?;
    /// let vm = kvm.create_vm()?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn create_vm(&self) -> Result<Vm> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(|e| Error::ioctl("KVM_CREATE_VM", e))?;
        Ok(Vm::new(fd, self.facts.clone()))
    }

    /// Wraps a VM created elsewhere with kvm-ioctls (after the permission stage, which a
    /// `&Kvm` proves).
    pub fn adopt_vm(&self, fd: kvm_ioctls::VmFd) -> Vm {
        Vm::new(fd, self.facts.clone())
    }
}
