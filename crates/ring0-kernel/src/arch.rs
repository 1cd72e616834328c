//! The processor setup of the test kernel: GDT with a 64-bit TSS, an IDT whose exception
//! handlers run on IST stacks and turn faults into results, control registers, port I/O,
//! CPUID, MSRs. SDM Vol. 3 ch. 6 (interrupts; §6.14.5 IST), ch. 8 (TSS), §2.5 (CR0/CR4).
//!
//! Fault recovery: code that expects a fault stores a landing address in `RECOVER_RIP` before
//! the instruction. The handler records the vector and error code in `FAULT_VEC`/`FAULT_ERR`,
//! replaces the saved RIP by the landing address, clears `RECOVER_RIP` and returns with IRETQ.
//! A fault with no landing address is fatal: it is reported on port 0xE9 and the machine shut
//! down. The handlers run on their own IST stacks, so the red zone of the interrupted code
//! (the kernel is compiled for the x86-64 System V ABI) is never overwritten.

use core::fmt;
use core::sync::atomic::AtomicU64;

/// Landing address for the next expected fault (0: none expected).
#[no_mangle]
pub static RECOVER_RIP: AtomicU64 = AtomicU64::new(0);
/// Vector of the last recovered fault (`NO_FAULT` when none).
#[no_mangle]
pub static FAULT_VEC: AtomicU64 = AtomicU64::new(NO_FAULT);
/// Error code of the last recovered fault (0 for vectors without one).
#[no_mangle]
pub static FAULT_ERR: AtomicU64 = AtomicU64::new(0);

/// `FAULT_VEC` value meaning "no fault".
pub const NO_FAULT: u64 = u64::MAX;

/// Writes one byte to an I/O port.
pub fn outb(port: u16, v: u8) {
    // SAFETY: CPL 0; the ports used (0xE9 Bochs console, 0x8900 Bochs shutdown) have no
    // effect on memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// The Bochs debug console (port 0xE9 with `port_e9_hack: enabled=1`).
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            outb(0xe9, b);
        }
        Ok(())
    }
}

/// Prints a line on the console.
#[macro_export]
macro_rules! println {
    ($($t:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::arch::Console, $($t)*);
    }};
}

/// Ends the emulation: the string "Shutdown" written to port 0x8900 (Bochs's shutdown port),
/// then 0 to port 0xF4 (QEMU's `isa-debug-exit`: exit status 1). Each emulator ignores the
/// other's port.
pub fn shutdown() -> ! {
    for b in b"Shutdown" {
        outb(0x8900, *b);
    }
    outb(0xf4, 0);
    loop {
        // SAFETY: CPL 0; HLT with interrupts disabled stops this CPU for good.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// CPUID.
pub fn cpuid(leaf: u32, sub: u32) -> xstate::cpuid::Regs {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    xstate::cpuid::Regs {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap: u16,
}

#[repr(C, packed)]
struct TablePtr {
    limit: u16,
    base: u64,
}

#[repr(C, align(16))]
struct IstStacks([[u8; 16384]; 7]);

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    off_lo: u16,
    sel: u16,
    ist: u8,
    attr: u8,
    off_mid: u16,
    off_hi: u32,
    zero: u32,
}

static mut IST_STACKS: IstStacks = IstStacks([[0; 16384]; 7]);
static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap: 104,
};
static mut GDT: [u64; 5] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0, 0];
static mut IDT: [Gate; 32] = [Gate {
    off_lo: 0,
    sel: 0,
    ist: 0,
    attr: 0,
    off_mid: 0,
    off_hi: 0,
    zero: 0,
}; 32];

extern "C" {
    static isr_table: [u64; 32];
}

/// IST slot (1-based) for each exception: #UD 3, #NM 2, #DF 6, #GP 1, #PF 4, #AC 5, others 7.
fn ist_for(vector: usize) -> u8 {
    match vector {
        13 => 1,
        7 => 2,
        6 => 3,
        14 => 4,
        17 => 5,
        8 => 6,
        _ => 7,
    }
}

/// Loads the GDT (same code/data selectors as the boot sector's: 0x08, 0x10) with a TSS at
/// 0x18 whose IST entries point at seven 16 KiB stacks, and the IDT for vectors 0..31.
pub fn init_tables() {
    // SAFETY: single-threaded kernel initialisation before any fault handler can run; the
    // tables are statics that live for the whole run, as LGDT/LTR/LIDT require.
    unsafe {
        let stacks = core::ptr::addr_of_mut!(IST_STACKS) as u64;
        let tss = core::ptr::addr_of_mut!(TSS);
        for i in 0..7 {
            (*tss).ist[i] = stacks + 16384 * (i as u64 + 1);
        }
        let base = tss as u64;
        let limit = core::mem::size_of::<Tss>() as u64 - 1;
        let gdt = core::ptr::addr_of_mut!(GDT);
        (*gdt)[3] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        (*gdt)[4] = base >> 32;
        let gp = TablePtr {
            limit: (5 * 8 - 1) as u16,
            base: gdt as u64,
        };
        core::arch::asm!("lgdt [{}]", "ltr {1:x}", in(reg) &gp, in(reg) 0x18u16, options(nostack));

        let idt = core::ptr::addr_of_mut!(IDT);
        let table = &*core::ptr::addr_of!(isr_table);
        for (v, &h) in table.iter().enumerate() {
            (*idt)[v] = Gate {
                off_lo: h as u16,
                sel: 0x08,
                ist: ist_for(v),
                attr: 0x8e,
                off_mid: (h >> 16) as u16,
                off_hi: (h >> 32) as u32,
                zero: 0,
            };
        }
        let ip = TablePtr {
            limit: (32 * 16 - 1) as u16,
            base: idt as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &ip, options(nostack));
    }
}

/// CR0: MP and NE set, EM and TS clear (x87/SSE usable, SDM Vol. 3 §2.5, §9.2); CR4: OSFXSR,
/// OSXMMEXCPT, OSXSAVE (when CPUID.1:ECX.XSAVE), PKE (when CPUID.7.0:ECX.PKU); XCR0 = x87|SSE.
pub fn init_control_registers(xsave: bool, pku: bool) {
    // SAFETY: CPL 0; the bits set are supported per CPUID (checked by the caller) and enable
    // only instruction-set features.
    unsafe {
        let mut cr0: u64;
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        cr0 = (cr0 | (1 << 1) | (1 << 5)) & !((1 << 2) | (1 << 3));
        core::arch::asm!("mov cr0, {}", in(reg) cr0, options(nomem, nostack));
        let mut cr4: u64;
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        cr4 |= (1 << 9) | (1 << 10);
        if xsave {
            cr4 |= 1 << 18;
        }
        if pku {
            cr4 |= 1 << 22;
        }
        core::arch::asm!("mov cr4, {}", in(reg) cr4, options(nomem, nostack));
        if xsave {
            core::arch::asm!("xsetbv", in("ecx") 0, in("eax") 3u32, in("edx") 0u32, options(nomem, nostack));
        }
    }
}

/// Called by the exception stub when no landing address was set.
#[no_mangle]
extern "C" fn fatal_fault(vector: u64, err: u64, rip: u64, cr2: u64) -> ! {
    crate::println!("{{\"fatal\": \"unexpected exception\", \"vector\": {vector}, \"error_code\": {err}, \"rip\": \"{rip:#x}\", \"cr2\": \"{cr2:#x}\"}}");
    shutdown()
}

// Exception stubs: push a zero error code where the CPU pushes none (SDM Vol. 3 §6.13), push
// the vector, then the common part recovers or reports.
core::arch::global_asm!(
    r#"
.text
.macro ISR_NOERR n
isr_\n:
    push 0
    push \n
    jmp isr_common
.endm
.macro ISR_ERR n
isr_\n:
    push \n
    jmp isr_common
.endm
ISR_NOERR 0
ISR_NOERR 1
ISR_NOERR 2
ISR_NOERR 3
ISR_NOERR 4
ISR_NOERR 5
ISR_NOERR 6
ISR_NOERR 7
ISR_ERR 8
ISR_NOERR 9
ISR_ERR 10
ISR_ERR 11
ISR_ERR 12
ISR_ERR 13
ISR_ERR 14
ISR_NOERR 15
ISR_NOERR 16
ISR_ERR 17
ISR_NOERR 18
ISR_NOERR 19
ISR_NOERR 20
ISR_ERR 21
ISR_NOERR 22
ISR_NOERR 23
ISR_NOERR 24
ISR_NOERR 25
ISR_NOERR 26
ISR_NOERR 27
ISR_NOERR 28
ISR_ERR 29
ISR_ERR 30
ISR_NOERR 31

isr_common:
    push rax
    mov rax, [rsp + 8]
    mov [rip + FAULT_VEC], rax
    mov rax, [rsp + 16]
    mov [rip + FAULT_ERR], rax
    mov rax, [rip + RECOVER_RIP]
    test rax, rax
    jz 1f
    mov [rsp + 24], rax
    mov qword ptr [rip + RECOVER_RIP], 0
    pop rax
    add rsp, 16
    iretq
1:
    mov rdi, [rsp + 8]
    mov rsi, [rsp + 16]
    mov rdx, [rsp + 24]
    mov rcx, cr2
    and rsp, -16
    call fatal_fault

.section .rodata
.align 8
.global isr_table
isr_table:
    .quad isr_0, isr_1, isr_2, isr_3, isr_4, isr_5, isr_6, isr_7
    .quad isr_8, isr_9, isr_10, isr_11, isr_12, isr_13, isr_14, isr_15
    .quad isr_16, isr_17, isr_18, isr_19, isr_20, isr_21, isr_22, isr_23
    .quad isr_24, isr_25, isr_26, isr_27, isr_28, isr_29, isr_30, isr_31
.text
"#
);
