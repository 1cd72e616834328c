//! P1 of issue 11: engine attach + detach on the hardware backend ([`HwBackend`], the live
//! registers) against the physical operation it needs — XSAVEC of the host, XRSTOR of the
//! guest, XSAVEC of the guest, XRSTOR of the host — issued by one inline-asm block on buffers
//! of the same sizes, RFBMs and contents, measured in the same run (`common::ratio`).
//!
//! Two cases: this host's user state without AMX (AVX-512: 2.4-2.7 KiB), and, where the CPU
//! has AMX, a guest holding tile data (XCR0 with TILECFG and TILEDATA: 10.5 KiB compacted)
//! after `arch_prctl(ARCH_REQ_XCOMP_PERM, 18)`.
//!
//! `cargo bench -p xstate --bench attach_detach` (lines starting `RATIO` are the figures of
//! docs/performance.md).

mod common;

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use xstate::components::mask;
use xstate::engine::{Engine, GuestPolicy, Options, Scope};
use xstate::hw::HwBackend;
use xstate::model::{AlignedBuf, Backend, SaveInsn};

#[global_allocator]
static A: common::Counting = common::Counting;

struct Setup {
    name: &'static str,
    engine: Engine<HwBackend>,
    host_buf: AlignedBuf,
    guest_buf: AlignedBuf,
    host_rfbm: u64,
    guest_rfbm: u64,
    restore_rfbm: u64,
}

/// Asks Linux for AMX tile data for this process (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023,
/// feature 18); false where it is refused or not Linux.
fn request_amx() -> bool {
    // SAFETY: arch_prctl with an integer argument reads and writes no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) == 0 }
}

/// A valid TILECFG (palette 1, eight tiles of 16 rows × 64 bytes), as LDTILECFG takes it.
fn tilecfg() -> Vec<u8> {
    let mut c = vec![0u8; 64];
    c[0] = 1;
    for t in 0..8 {
        c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
        c[48 + t] = 16;
    }
    c
}

fn setup(amx: bool) -> Option<Setup> {
    if amx && !request_amx() {
        println!("skipped: AMX case (no AMX permission: the CPU or kernel lacks it)");
        return None;
    }
    let Some(hw) = HwBackend::new() else {
        println!("skipped: XSAVE is not usable");
        return None;
    };
    let mut engine = match Engine::new(
        hw,
        Options {
            ring0: Some(false),
            ..Options::default()
        },
    ) {
        Ok(e) => e,
        Err(e) => {
            println!("skipped: engine: {e}");
            return None;
        }
    };
    if engine.save_insn().0 != xstate::strategy::SaveInsn::Xsavec {
        println!("skipped: the engine does not use XSAVEC on this CPU");
        return None;
    }
    let all = engine.config().xcr0;
    let xcr0 = if amx { all } else { all & !mask::AMX };
    if amx {
        if all & mask::AMX != mask::AMX {
            println!("skipped: AMX case (XCR0 {all:#x} has no AMX)");
            return None;
        }
        if let Err(e) = engine.request_perm(Scope::Guest, 18) {
            println!("skipped: AMX case: {e}");
            return None;
        }
    }
    let policy = GuestPolicy {
        xcr0_max: xcr0,
        xss: 0,
    };
    if let Err(e) = engine.create_vcpu(0, policy, false) {
        println!("skipped: create_vcpu: {e}");
        return None;
    }
    if amx {
        // The guest enables AMX (the run ends for the reallocation) and fills its tiles.
        let data: Vec<u8> = (0..8192).map(|i| (i * 7 + 1) as u8).collect();
        let r = (|| {
            engine.attach(0)?;
            engine.xsetbv(0, xcr0)?;
            engine.detach(0)?;
            engine.attach(0)?;
            engine.guest_write(0, 17, &tilecfg())?;
            engine.guest_write(0, 18, &data)?;
            engine.detach(0)
        })();
        if let Err(e) = r {
            println!("skipped: AMX case: {e}");
            return None;
        }
        let bv = engine.vcpu(0).ok()?.fpstate().xstate_bv();
        if bv & mask::AMX != mask::AMX {
            println!("skipped: AMX case (the guest's tiles are not in use: XSTATE_BV {bv:#x})");
            return None;
        }
    }
    let host = engine.host_fpstate();
    let guest = engine.vcpu(0).ok()?.fpstate();
    let host_buf = AlignedBuf::from_bytes(host.as_bytes());
    let guest_buf = AlignedBuf::from_bytes(guest.as_bytes());
    let (host_rfbm, guest_rfbm) = (host.xfeatures(), guest.xfeatures());
    // The engine's restore RFBM with XSAVEC containers is XCR0 (engine::restore_rfbm).
    Some(Setup {
        name: if amx { "AMX" } else { "host" },
        engine,
        host_buf,
        guest_buf,
        host_rfbm,
        guest_rfbm,
        restore_rfbm: all,
    })
}

fn engine_cycle(s: &mut Setup) {
    s.engine.attach(black_box(0)).unwrap();
    s.engine.detach(black_box(0)).unwrap();
}

/// The four instructions, one `asm!` block.
fn raw_cycle(s: &mut Setup) {
    let h = s.host_buf.as_mut_ptr();
    let g = s.guest_buf.as_mut_ptr();
    // SAFETY: both buffers are 64-byte aligned, as large as the engine's containers for the
    // same RFBMs, and hold XSAVEC images this CPU wrote (the engine's containers copied; the
    // host's refreshed by the first XSAVEC of each cycle). XRSTOR of them restores what the
    // engine restores (same images, same RFBM: no #GP, TILEDATA permitted). Every register
    // the restores write is declared clobbered.
    unsafe {
        core::arch::asm!(
            "mov eax, {hl:e}", "mov edx, {hh:e}", "xsavec64 [{h}]",
            "mov eax, {rl:e}", "mov edx, {rh:e}", "xrstor64 [{g}]",
            "mov eax, {gl:e}", "mov edx, {gh:e}", "xsavec64 [{g}]",
            "mov eax, {rl:e}", "mov edx, {rh:e}", "xrstor64 [{h}]",
            h = in(reg) h, g = in(reg) g,
            hl = in(reg) s.host_rfbm as u32, hh = in(reg) (s.host_rfbm >> 32) as u32,
            gl = in(reg) s.guest_rfbm as u32, gh = in(reg) (s.guest_rfbm >> 32) as u32,
            rl = in(reg) s.restore_rfbm as u32, rh = in(reg) (s.restore_rfbm >> 32) as u32,
            out("eax") _, out("edx") _,
            clobber_abi("C"), options(nostack),
        );
    }
}

/// The four instructions of [`raw_cycle`] with `4 × n` simple instructions (loads, adds, a
/// compare: what any engine's bookkeeping is made of) after each of them: how much the code
/// around microcoded XSAVE-family instructions costs on this CPU, whatever that code does.
macro_rules! padded_cycle {
    ($name:ident, $n:literal) => {
        fn $name(s: &mut Setup) {
            let h = s.host_buf.as_mut_ptr();
            let g = s.guest_buf.as_mut_ptr();
            let scratch = [0u64; 2];
            let sp = scratch.as_ptr();
            // SAFETY: as in raw_cycle; the filler reads `scratch` and writes r8-r10 (declared).
            unsafe {
                core::arch::asm!(
                    "mov eax, {hl:e}", "mov edx, {hh:e}", "xsavec64 [{h}]",
                    concat!(".rept ", $n), "add r8, [{sp}]", "add r9, 1", "cmp r8, r9",
                    "add r10, [{sp}+8]", ".endr",
                    "mov eax, {rl:e}", "mov edx, {rh:e}", "xrstor64 [{g}]",
                    concat!(".rept ", $n), "add r8, [{sp}]", "add r9, 1", "cmp r8, r9",
                    "add r10, [{sp}+8]", ".endr",
                    "mov eax, {gl:e}", "mov edx, {gh:e}", "xsavec64 [{g}]",
                    concat!(".rept ", $n), "add r8, [{sp}]", "add r9, 1", "cmp r8, r9",
                    "add r10, [{sp}+8]", ".endr",
                    "mov eax, {rl:e}", "mov edx, {rh:e}", "xrstor64 [{h}]",
                    concat!(".rept ", $n), "add r8, [{sp}]", "add r9, 1", "cmp r8, r9",
                    "add r10, [{sp}+8]", ".endr",
                    h = in(reg) h, g = in(reg) g, sp = in(reg) sp,
                    hl = in(reg) s.host_rfbm as u32, hh = in(reg) (s.host_rfbm >> 32) as u32,
                    gl = in(reg) s.guest_rfbm as u32, gh = in(reg) (s.guest_rfbm >> 32) as u32,
                    rl = in(reg) s.restore_rfbm as u32, rh = in(reg) (s.restore_rfbm >> 32) as u32,
                    out("r8") _, out("r9") _, out("r10") _, out("eax") _, out("edx") _,
                    clobber_abi("C"), options(nostack),
                );
            }
        }
    };
}
padded_cycle!(padded_160, 10);
padded_cycle!(padded_400, 25);

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attach_detach");
    for amx in [false, true] {
        let Some(mut s) = setup(amx) else { continue };
        g.bench_function(format!("{} engine attach+detach", s.name), |b| {
            b.iter(|| engine_cycle(&mut s))
        });
        g.bench_function(format!("{} raw xsavec+xrstor x2", s.name), |b| {
            b.iter(|| raw_cycle(&mut s))
        });
    }
    g.finish();
}

fn ratios() {
    for amx in [false, true] {
        let Some(s) = setup(amx) else { continue };
        let s = std::cell::RefCell::new(s);
        {
            let b = s.borrow();
            println!(
                "{}: host container {} bytes (RFBM {:#x}), guest {} bytes (RFBM {:#x})",
                b.name,
                b.host_buf.len(),
                b.host_rfbm,
                b.guest_buf.len(),
                b.guest_rfbm
            );
        }
        let name = s.borrow().name;
        common::ratio(
            &format!("P1 {name} engine attach+detach (HwBackend)"),
            "inline-asm XSAVEC+XRSTOR+XSAVEC+XRSTOR",
            || engine_cycle(&mut s.borrow_mut()),
            || raw_cycle(&mut s.borrow_mut()),
        );
        if name == "host" {
            // Context: the same physical operation with filler instructions between the four
            // (no engine involved): what N instructions around them cost on this CPU.
            common::ratio(
                "P1 context: the 4 instructions with 160 filler instructions between them",
                "the 4 instructions alone",
                || padded_160(&mut s.borrow_mut()),
                || raw_cycle(&mut s.borrow_mut()),
            );
            common::ratio(
                "P1 context: the 4 instructions with 400 filler instructions between them",
                "the 4 instructions alone",
                || padded_400(&mut s.borrow_mut()),
                || raw_cycle(&mut s.borrow_mut()),
            );
        }
        let b = s.borrow();
        let st = b.engine.stats();
        println!(
            "  instructions issued by the engine so far: {} saves, {} restores, {} XFD writes",
            st.saves, st.restores, st.xfd_writes
        );
        // The backend alone: the same four instructions through the Backend trait, on copies
        // of the same buffers.
        let (hr, gr, rr) = (b.host_rfbm, b.guest_rfbm, b.restore_rfbm);
        let mut hb = AlignedBuf::from_bytes(&b.host_buf);
        let mut gb = AlignedBuf::from_bytes(&b.guest_buf);
        drop(b);
        let mut hw = HwBackend::new().unwrap();
        use xstate::model::RestoreInsn::Xrstor;
        common::ratio(
            &format!("P1 {name} HwBackend 4 calls"),
            "the same 4 instructions in inline asm",
            || {
                hw.save(SaveInsn::Xsavec, &mut hb, hr).unwrap();
                hw.restore(Xrstor, &gb, rr).unwrap();
                hw.save(SaveInsn::Xsavec, &mut gb, gr).unwrap();
                hw.restore(Xrstor, &hb, rr).unwrap();
            },
            || raw_cycle(&mut s.borrow_mut()),
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}
