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
mod cpuinfo;
mod diff;
mod engine;
mod heap;
mod mem;
mod params;
mod program;
mod quirks;

use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!(
        "{{\"fatal\": \"panic\", \"message\": \"{}\", \"heap_used\": {}}}",
        info.message(),
        heap::used()
    );
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
    let dump = cpuinfo::read();
    cpuinfo::print(&dump);
    let mut profile = xstate::model::CpuProfile::from_dump(&dump);
    profile.mxcsr_mask = mxcsr_mask();
    // Bochs decides XINUSE from register values (its get_xinuse_vector compares each component
    // with its init value), one of the behaviours SDM Vol. 1 §13.6 allows.
    profile.xinuse_tracking = xstate::model::XinuseTracking::ByValue;
    if !p.bochs {
        qemu_profile(&mut profile);
    }
    let xcr0_supported = profile.layout.xcr0_supported();
    let xss_supported = if profile.xsaves {
        profile.layout.xss_supported()
    } else {
        0
    };
    println!(
        "{{\"hello\": \"xstate ring0 kernel\", \"seed\": {}, \"cases\": {}, \"xcr0_supported\": \"{xcr0_supported:#x}\", \"xss_supported\": \"{xss_supported:#x}\", \"mxcsr_mask\": \"{:#x}\", \"xsaveopt\": {}, \"xsavec\": {}, \"xsaves\": {}, \"xfd\": {}}}",
        p.seed, p.cases, profile.mxcsr_mask, profile.xsaveopt, profile.xsavec, profile.xsaves, profile.xfd
    );
    let quirks = quirks::Quirks::new(
        xcr0_supported,
        profile.layout.geometry(9).standard_offset,
        profile.layout.geometry(17).standard_offset,
        profile.layout.geometry(18).standard_offset,
        profile.xsaveopt,
        profile.fip_bits.is_some(),
        p.bochs,
    );
    let mut quirks = quirks;
    quirks.bndcsr_std = profile.layout.geometry(4).standard_offset;
    let mut d = diff::Differential {
        profile,
        xcr0_supported,
        xss_supported,
        quirks,
    };
    let mut t = diff::Totals::default();
    let mark = heap::mark();
    let mut leaks = 0u64;
    // Directed cases: each listed deviation shown by a program made to show it.
    let mut absent = 0u64;
    for i in 0..d.quirks.entries.len() {
        if let Some((present, line)) = d.directed(i, p.seed) {
            println!("{line}");
            if !present {
                absent |= 1 << i;
            }
        }
        if !heap::release(mark) {
            leaks += 1;
        }
    }
    for i in p.first..p.first.saturating_add(p.cases) {
        if let Some(line) = d.case(p.seed, i, &mut t) {
            println!("{line}");
        }

        if !heap::release(mark) {
            leaks += 1;
        }
    }
    let (passed, failed) = engine::scenarios(&d.profile);
    if !heap::release(mark) {
        leaks += 1;
    }
    let mut hits = alloc::string::String::new();
    let mut stale = alloc::string::String::new();
    for (i, e) in d.quirks.entries.iter().enumerate() {
        if !hits.is_empty() {
            hits.push_str(", ");
        }
        hits.push_str(&alloc::format!("\"{}\": {}", e.id, e.hits));
        if absent >> i & 1 != 0 {
            if !stale.is_empty() {
                stale.push_str(", ");
            }
            stale.push_str(&alloc::format!("\"{}\"", e.id));
        }
    }
    let c = &t.covered;
    let ok = t.disagree == 0 && stale.is_empty() && leaks == 0 && failed == 0;
    println!(
        "{{\"summary\": {{\"seed\": {}, \"cases\": {}, \"agree\": {}, \"disagree\": {}, \"known_differences\": {}, \"covered\": {{\"xsave\": {}, \"xsaveopt\": {}, \"xsavec\": {}, \"xsaves\": {}, \"xrstor\": {}, \"xrstors\": {}, \"fxsave\": {}, \"xsetbv\": {}, \"amx\": {}, \"cet_s\": {}, \"pkru\": {}, \"avx512\": {}}}, \"engine_scenarios\": {{\"passed\": {passed}, \"failed\": {failed}}}, \"faults_agreed\": {{\"gp\": {}, \"nm\": {}, \"ud\": {}}}, \"known_difference_hits\": {{{hits}}}, \"stale_known_differences\": [{stale}], \"heap_leaks\": {leaks}, \"ok\": {ok}}}}}",
        p.seed, t.cases, t.agree, t.disagree, t.known, c.xsave, c.xsaveopt, c.xsavec, c.xsaves, c.xrstor, c.xrstors, c.fxsave, c.xsetbv, c.amx, c.cet_s, c.pkru, c.avx512, c.gp, c.nm, c.ud
    );
    arch::shutdown()
}

/// QEMU TCG's x87 and XSAVE as measured by this kernel under `qemu-system-x86_64 -accel tcg
/// -cpu max` (QEMU 7.2; docs/ring0.md): its CPUID says AuthenticAMD, but its x87 is its own —
/// FIP and FDP are never kept (saves write them as zero, restores do not load them; FOP is not
/// written at all, listed as `fop_not_written`), and FCW is stored as loaded (no reserved bits
/// fixed).
fn qemu_profile(p: &mut xstate::model::CpuProfile) {
    p.x87_pointers = xstate::model::X87Pointers::Never;
    p.fip_bits = None;
    p.fdp_bits = None;
    p.fcw_fixed = None;
    // BNDREGS, the one component QEMU tracks, is tracked on write (XRSTOR with
    // XSTATE_BV[3] = 1 marks it in use whatever the value); the others are listed as
    // `xinuse_all_ones` (quirks.rs).
    p.xinuse_tracking = xstate::model::XinuseTracking::OnWrite;
}

/// MXCSR_MASK as FXSAVE stores it (bytes 28..31; 0 means 0xFFBF, SDM Vol. 1 §11.6.6).
fn mxcsr_mask() -> u32 {
    #[repr(C, align(16))]
    struct Area([u8; 512]);
    let mut a = Area([0; 512]);
    // SAFETY: FXSAVE writes exactly 512 bytes to a 16-byte-aligned area we own (CR4.OSFXSR set).
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) a.0.as_mut_ptr(), options(nostack)) };
    let m = u32::from_le_bytes([a.0[28], a.0[29], a.0[30], a.0[31]]);
    if m == 0 {
        0xffbf
    } else {
        m
    }
}
