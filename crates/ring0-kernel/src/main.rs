//! The xstate ring-0 test kernel, booted by Bochs from a disk image (see `boot`): runs at CPL 0
//! with paging and an IDT whose handlers turn faults into results, reads CPUID, programs
//! CR4.OSXSAVE/OSFXSR, XCR0 and IA32_XSS, and runs the differential of `diff` (the real XSAVE
//! instructions against `xstate::model::ModelCpu`), reporting JSON lines on port 0xE9. Driven by
//! `scripts/ring0`; see docs/ring0.md.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod boot;
mod heap;
mod mem;
mod params;

use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("{{\"fatal\": \"panic\", \"message\": \"{}\"}}", info.message());
    arch::shutdown()
}

/// Entered from `boot` in 64-bit mode with .bss zeroed.
#[no_mangle]
extern "C" fn kernel_main() -> ! {
    arch::init_tables();
    let l1 = arch::cpuid(1, 0);
    let l7 = arch::cpuid(7, 0);
    arch::init_control_registers(l1.ecx & (1 << 26) != 0, l7.ecx & (1 << 3) != 0);
    let p = params::read();
    println!("{{\"hello\": \"xstate ring0 kernel\", \"seed\": {}, \"cases\": {}}}", p.seed, p.cases);
    let v = alloc::vec![1u8; 100];
    println!("{{\"heap\": {}}}", v.len() + heap::used());
    arch::shutdown()
}
