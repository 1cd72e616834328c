//! A minimal real guest (DESIGN §9): 64-bit long mode at CPL 3, set up entirely through
//! KVM_SET_SREGS/KVM_SET_REGS/KVM_SET_CPUID2/KVM_SET_XCRS, leaving through an OUT. It can run
//! x87/SSE/AVX/AVX-512 code and XSAVE/XRSTOR itself, which is what the end-to-end tests and
//! `xstate kvm demo` need.
//!
//! Guest physical memory (identity mapped, user-accessible 2 MiB pages):
//! page tables at 0x1000..0x4000, GDT at 0x5000, TSS at 0x6000, code at [`CODE_ADDR`], an
//! XSAVE source area at [`SRC_ADDR`] and a destination area at [`DST_ADDR`].

pub mod code;
pub mod demo;
pub mod memory;
pub mod pattern;

use kvm_bindings::{kvm_regs, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::error::{Error, Result};
use crate::kvm::Kvm;
use crate::vcpu::Vcpu;
use crate::vm::Vm;
use memory::GuestMemory;

/// Guest memory size: 4 MiB (two 2 MiB pages).
pub const MEM_SIZE: usize = 4 << 20;
/// Where guest code starts.
pub const CODE_ADDR: u64 = 0x10000;
/// The XSAVE area the guest restores from (64-byte aligned).
pub const SRC_ADDR: u64 = 0x20000;
/// The XSAVE area the guest saves to (64-byte aligned).
pub const DST_ADDR: u64 = 0x40000;
/// The I/O port a guest writes to leave.
pub const EXIT_PORT: u8 = 0x10;

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const GDT: u64 = 0x5000;
const TSS: u64 = 0x6000;
const STACK_TOP: u64 = 0x3F_F000;

// Page-table entry bits (SDM Vol. 3 §4.5): present, writable, user, page size (2 MiB).
const PTE_P: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;

// Control registers (SDM Vol. 3 §2.5).
const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS: bit 1 is always 1; IOPL = 3 (bits 12-13) lets CPL 3 execute OUT.
const RFLAGS: u64 = 0x2 | (3 << 12);

// GDT selectors: 1 kernel code, 2 kernel data, 3 user data, 4 user code, 5-6 TSS.
const SEL_USER_DATA: u16 = (3 << 3) | 3;
const SEL_USER_CODE: u16 = (4 << 3) | 3;
const SEL_TSS: u16 = 5 << 3;

/// A VM with one vCPU in 64-bit mode at CPL 3 and its memory.
pub struct GuestVm {
    // Field order is drop order: the vCPU and VM go before the memory they map.
    vcpu: Vcpu,
    vm: Vm,
    mem: GuestMemory,
}

impl std::fmt::Debug for GuestVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestVm").finish_non_exhaustive()
    }
}

fn seg_user_data() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: SEL_USER_DATA,
        type_: 3, // read/write, accessed
        present: 1,
        dpl: 3,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

/// A GDT descriptor (SDM Vol. 3 §3.4.5) from its fields.
fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (u64::from(limit) & 0xFFFF)
        | ((u64::from(base) & 0xFF_FFFF) << 16)
        | (u64::from(access) << 40)
        | ((u64::from(limit >> 16) & 0xF) << 48)
        | (u64::from(flags & 0xF) << 52)
        | ((u64::from(base >> 24) & 0xFF) << 56)
}

/// Writes the page tables (PML4 → PDPT → two user 2 MiB pages identity-mapping 0..4 MiB) and
/// the GDT (null, kernel code64/data, user data/code64, 64-bit TSS) into guest memory.
pub fn write_tables(mem: &mut GuestMemory) -> Result<()> {
    // Page tables: PML4[0] → PDPT[0] → PD[0..2] = two user 2 MiB pages at 0 and 2 MiB.
    mem.write(PML4, &(PDPT | PTE_P | PTE_RW | PTE_US).to_le_bytes())?;
    mem.write(PDPT, &(PD | PTE_P | PTE_RW | PTE_US).to_le_bytes())?;
    for i in 0..2u64 {
        let pde = (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS;
        mem.write(PD + 8 * i, &pde.to_le_bytes())?;
    }
    for (i, d) in gdt().iter().enumerate() {
        mem.write(GDT + 8 * i as u64, &d.to_le_bytes())?;
    }
    Ok(())
}

fn gdt() -> [u64; 7] {
    let tss_low = descriptor(TSS as u32, 0x67, 0x8B, 0x0); // present, busy 64-bit TSS
    [
        0,
        descriptor(0, 0xFFFFF, 0x9A, 0xA), // P, DPL 0, code exec/read; G, L
        descriptor(0, 0xFFFFF, 0x92, 0xC), // P, DPL 0, data read/write; G, D/B
        descriptor(0, 0xFFFFF, 0xF2, 0xC), // P, DPL 3, data read/write; G, D/B
        descriptor(0, 0xFFFFF, 0xFA, 0xA), // P, DPL 3, code exec/read; G, L
        tss_low,
        0, // TSS base bits 63..32
    ]
}

/// Puts a vCPU (of a VM whose memory holds [`write_tables`]) in 64-bit mode at CPL 3: guest
/// CPUID `cpuid` (KVM_SET_CPUID2), segments, CR0/CR3/CR4 with OSFXSR/OSXMMEXCPT/OSXSAVE and
/// EFER (KVM_SET_SREGS), then XCR0 = `xcr0` (KVM_SET_XCRS, after the CPUID it is checked
/// against). Works on any kvm-ioctls vCPU, whoever created it.
pub fn enter_long_mode(vcpu: &VcpuFd, cpuid: &kvm_bindings::CpuId, xcr0: u64) -> Result<()> {
    vcpu.set_cpuid2(cpuid)
        .map_err(|e| Error::ioctl("KVM_SET_CPUID2", e))?;
    let mut s = vcpu
        .get_sregs()
        .map_err(|e| Error::ioctl("KVM_GET_SREGS", e))?;
    s.cs = kvm_segment {
        selector: SEL_USER_CODE,
        type_: 0xB, // execute/read, accessed
        db: 0,
        l: 1,
        ..seg_user_data()
    };
    s.ds = seg_user_data();
    s.es = seg_user_data();
    s.fs = seg_user_data();
    s.gs = seg_user_data();
    s.ss = seg_user_data();
    s.tr = kvm_segment {
        base: TSS,
        limit: 0x67,
        selector: SEL_TSS,
        type_: 0xB, // busy 64-bit TSS
        present: 1,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        type_: 0x2,
        present: 1,
        limit: 0xFFFF,
        ..Default::default()
    };
    s.gdt.base = GDT;
    s.gdt.limit = (gdt().len() * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0; // no IDT: any exception ends in a shutdown exit
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = PML4;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
    s.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&s)
        .map_err(|e| Error::ioctl("KVM_SET_SREGS (64-bit mode, CPL 3)", e))?;
    let mut x = kvm_bindings::kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    x.xcrs[0].xcr = 0;
    x.xcrs[0].value = xcr0;
    vcpu.set_xcrs(&x)
        .map_err(|e| Error::ioctl(format!("KVM_SET_XCRS(XCR0 = {xcr0:#x})"), e))
}

/// Copies a program to [`CODE_ADDR`] and points the vCPU's RIP at it (RFLAGS with IOPL 3, a
/// stack).
pub fn load_program(mem: &mut GuestMemory, vcpu: &VcpuFd, code: &[u8]) -> Result<()> {
    mem.write(CODE_ADDR, code)?;
    let regs = kvm_regs {
        rip: CODE_ADDR,
        rsp: STACK_TOP,
        rflags: RFLAGS,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| Error::ioctl("KVM_SET_REGS", e))
}

/// Runs a vCPU until its guest writes to [`EXIT_PORT`]; any other exit is an error that names
/// it and the guest RIP.
pub fn run_to_exit_port(vcpu: &mut VcpuFd) -> Result<()> {
    for _ in 0..16 {
        let exit = vcpu.run().map_err(|e| Error::ioctl("KVM_RUN", e))?;
        let what = match exit {
            VcpuExit::IoOut(port, _) if port == u16::from(EXIT_PORT) => return Ok(()),
            VcpuExit::Intr => continue,
            other => format!("{other:?}"),
        };
        let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
        return Err(Error::Guest(format!(
            "unexpected VM exit {what} at guest RIP {rip:#x} (code at {CODE_ADDR:#x})"
        )));
    }
    Err(Error::Guest(
        "the guest did not reach its OUT after 16 runs".into(),
    ))
}

impl GuestVm {
    /// Creates a VM with guest memory, page tables, a GDT and one vCPU whose guest CPUID is
    /// KVM_GET_SUPPORTED_CPUID, in 64-bit mode at CPL 3 with CR4.OSFXSR/OSXMMEXCPT/OSXSAVE,
    /// IOPL 3 and XCR0 = `xcr0`.
    ///
    /// ```no_run
    /// use xstate_kvm::{guest::GuestVm, Kvm};
    /// let kvm = Kvm::open()?;
    /// let g = GuestVm::new(&kvm, kvm.guest_supported_xcr0())?;
    /// # Ok::<(), xstate_kvm::Error>(())
    /// ```
    pub fn new(kvm: &Kvm, xcr0: u64) -> Result<Self> {
        Self::with_cpuid(kvm, kvm.supported_cpuid(), xcr0)
    }

    /// Like [`new`](Self::new) with a chosen guest CPUID (for example leaf 0xD for "host minus
    /// AVX-512"): KVM checks XCR0 against it.
    pub fn with_cpuid(kvm: &Kvm, cpuid: &kvm_bindings::CpuId, xcr0: u64) -> Result<Self> {
        let vm = kvm.create_vm()?;
        let mut mem = GuestMemory::new(MEM_SIZE)?;
        // SAFETY: the region is `mem`, a live mapping of MEM_SIZE bytes owned by the returned
        // GuestVm, whose field order drops the VM before the memory.
        unsafe { vm.fd().set_user_memory_region(mem.region(0)) }
            .map_err(|e| Error::ioctl("KVM_SET_USER_MEMORY_REGION", e))?;
        write_tables(&mut mem)?;
        let vcpu = vm.create_vcpu(0)?;
        enter_long_mode(vcpu.fd(), cpuid, xcr0)?;
        Ok(GuestVm { vcpu, vm, mem })
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The vCPU.
    pub fn vcpu(&self) -> &Vcpu {
        &self.vcpu
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Guest memory, mutable.
    pub fn memory_mut(&mut self) -> &mut GuestMemory {
        &mut self.mem
    }

    /// Copies a program to [`CODE_ADDR`] and points RIP at it (RFLAGS with IOPL 3, a stack).
    pub fn load_program(&mut self, code: &[u8]) -> Result<()> {
        load_program(&mut self.mem, self.vcpu.fd(), code)
    }

    /// Runs the vCPU until the guest writes to [`EXIT_PORT`]; any other exit is an error that
    /// names it and the guest RIP.
    pub fn run_to_exit_port(&mut self) -> Result<()> {
        run_to_exit_port(self.vcpu.fd_mut())
    }
}
