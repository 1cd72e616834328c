//! Memory of the engine, measured with a counting global allocator (bytes the allocator was
//! asked for, not logical sizes):
//!
//! * **P5, over every CPUID fixture**: the heap a vCPU's state costs — what `create_vcpu`
//!   allocates for its container, and after the guest enabled AMX what the grown container
//!   holds — is at most the compacted size of its features + 64 bytes. The vCPU table's own
//!   storage (the engine's map from id to vCPU, the VMM's per-vCPU struct in Linux terms) is
//!   reported per vCPU next to it, amortized over 64 vCPUs.
//! * **Hot path**: an attach + detach cycle in steady state allocates nothing, on every save
//!   instruction (`engine_cycle_allocates_nothing`).
//!
//! Prints the table: `cargo test -p xstate --test engine_memory -- --nocapture`.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::path::Path;

use xstate::components::mask;
use xstate::cpuid::CpuidDump;
use xstate::engine::{Engine, GuestPolicy, Options, Scope};
use xstate::model::{Backend, CpuProfile, Fault, ModelCpu, Msr, RestoreInsn, SaveInsn};
use xstate::strategy;

/// Counts, per thread, the bytes and blocks allocated and freed.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
    static FREED: Cell<u64> = const { Cell::new(0) };
    static BLOCKS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// thread-local `Cell`s with const initializers (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + l.size() as u64));
        let _ = BLOCKS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is the one of `System.alloc`.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        let _ = FREED.try_with(|c| c.set(c.get() + l.size() as u64));
        // SAFETY: `p` was allocated by `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: AllocLayout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + l.size() as u64));
        let _ = BLOCKS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, new: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|c| c.set(c.get() + new as u64));
        let _ = FREED.try_with(|c| c.set(c.get() + l.size() as u64));
        let _ = BLOCKS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `p` was allocated by `System` with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (bytes live now, blocks allocated so far) on this thread.
fn counters() -> (i64, u64) {
    (
        ALLOCATED.with(Cell::get) as i64 - FREED.with(Cell::get) as i64,
        BLOCKS.with(Cell::get),
    )
}

fn fixtures() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpuid");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap().flatten() {
        if let Ok(files) = std::fs::read_dir(dir.path()) {
            for f in files.flatten() {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// The XCR0 an OS would enable: every supported user feature, MPX dropped when APX is there.
fn os_xcr0(l: &xstate::layout::Layout) -> Option<u64> {
    let sup = l.xcr0_supported();
    [sup, sup & !mask::MPX]
        .into_iter()
        .find(|&x| l.check_xcr0(x).is_ok())
}

/// The compacted size of `features` on this CPU (the P5 bound's base).
fn compacted(l: &xstate::layout::Layout, features: u64) -> u32 {
    l.compacted(features).map(|g| g.size).unwrap_or(u32::MAX)
}

#[test]
fn memory_per_vcpu_over_all_fixtures() {
    println!(
        "{:<52} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9}",
        "fixture", "xcr0", "insn", "bound-64", "heap", "AMX cmp", "AMX heap", "table", "fixed-std"
    );
    let mut rows = 0;
    let mut spr_seen = false;
    for p in fixtures() {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&p).unwrap();
        let Ok(d) = CpuidDump::parse(&text, &name) else {
            println!("{name:<52} (not parsed)");
            continue;
        };
        let profile = CpuProfile::from_dump(&d);
        let l = profile.layout.clone();
        if !profile.xsave || !l.consistency().is_empty() {
            println!(
                "{name:<52} (no XSAVE or inconsistent leaf 0xD: {} notes)",
                l.consistency().len()
            );
            continue;
        }
        let Some(xcr0) = os_xcr0(&l) else {
            println!("{name:<52} (no valid XCR0)");
            continue;
        };
        let xss = if l.leaf().has_xsaves() {
            l.xss_supported() & (mask::CET_U | mask::CET_S)
        } else {
            0
        };
        let cpu = ModelCpu::new(profile);
        let mut e = match Engine::new(
            cpu,
            Options {
                xcr0: Some(xcr0),
                xss: Some(xss),
                ring0: Some(true),
                ..Options::default()
            },
        ) {
            Ok(e) => e,
            Err(err) => {
                println!("{name:<52} (engine: {err})");
                continue;
            }
        };
        let _ = e.request_perm(Scope::Guest, 18);
        let policy = GuestPolicy {
            xcr0_max: xcr0,
            xss,
        };
        // Warm the engine's shared state (the geometry of this policy's containers, the
        // vCPU table's first node) with vCPU 0, then measure vCPUs 1..=64.
        e.create_vcpu(0, policy, false).unwrap();
        let n = 64u32;
        let mut per_vcpu = Vec::new();
        let (table_start, _) = counters();
        let mut containers = 0i64;
        for id in 1..=n {
            let (before, _) = counters();
            e.create_vcpu(id, policy, false).unwrap();
            let (after, _) = counters();
            let fp = e.vcpu(id).unwrap().fpstate();
            per_vcpu.push((after - before, fp.allocated() as i64));
            containers += fp.allocated() as i64;
        }
        let (table_end, _) = counters();
        let table = (table_end - table_start - containers) / i64::from(n);
        let fp = e.vcpu(1).unwrap().fpstate().clone();
        // The bound's base: the compacted size where the CPU has a compacted save
        // instruction (XSAVEC/XSAVES); otherwise the standard form is the only one the CPU
        // can save, and its size is the base.
        let cfg = e.config().clone();
        let form_size = |f: u64| match cfg.insn.form() {
            Some(xstate::layout::Form::Compacted) => compacted(&l, f),
            _ => cfg.size_of(f).unwrap(),
        };
        let bound = i64::from(form_size(fp.xfeatures())) + 64;
        // P5: the container's heap (the allocation create_vcpu made for it) is within the
        // compacted size of its features + 64 bytes, for every vCPU.
        for (i, (delta, buf)) in per_vcpu.iter().enumerate() {
            assert!(
                *buf <= bound,
                "{name}: vCPU {}: container allocation {buf} > compacted {} + 64",
                i + 1,
                bound - 64
            );
            assert!(
                *delta >= *buf,
                "{name}: the counter saw less than the buffer"
            );
        }
        assert_eq!(fp.xfeatures() & mask::XTILEDATA, 0, "{name}: lazy tiles");
        let heap = per_vcpu[1].1;
        let mut amx = (0u32, 0i64);
        if xcr0 & mask::AMX == mask::AMX {
            // Warm the geometry of the grown container with vCPU 0, then grow vCPU 1.
            e.attach(0).unwrap();
            assert!(e.xsetbv(0, xcr0).unwrap().realloc, "{name}");
            e.detach(0).unwrap();
            e.attach(1).unwrap();
            assert!(e.xsetbv(1, xcr0).unwrap().realloc, "{name}");
            let (before, _) = counters();
            e.detach(1).unwrap();
            let (after, _) = counters();
            let grown = e.vcpu(1).unwrap().fpstate();
            let c = form_size(grown.xfeatures());
            // The old container was freed: the net growth is the new one minus the old one.
            assert_eq!(after - before, grown.allocated() as i64 - heap, "{name}");
            assert!(grown.allocated() as i64 <= i64::from(c) + 64, "{name}");
            amx = (c, grown.allocated() as i64);
        }
        let fixed_std = l.leaf().max_standard_size();
        println!(
            "{name:<52} {xcr0:>#9x} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9}",
            e.save_insn().0.name(),
            bound - 64,
            heap,
            amx.0,
            amx.1,
            table,
            fixed_std
        );
        if name.starts_with("Intel-SapphireRapids") {
            spr_seen = true;
            assert_eq!((heap, amx.1, fixed_std), (2560, 10752, 11008));
        }
        rows += 1;
    }
    assert!(spr_seen, "the Sapphire Rapids fixture is in the table");
    assert!(rows >= 20, "{rows} fixtures measured");
}

/// A backend that executes nothing (saves write nothing, restores read nothing) so that the
/// allocator sees the engine's own allocations only.
struct Inert(CpuProfile);

impl Backend for Inert {
    fn profile(&self) -> &CpuProfile {
        &self.0
    }
    fn xgetbv(&mut self, _ecx: u32) -> Result<u64, Fault> {
        Ok(self.0.layout.xcr0_supported())
    }
    fn xsetbv(&mut self, _ecx: u32, _value: u64) -> Result<(), Fault> {
        Ok(())
    }
    fn rdmsr(&mut self, _msr: Msr) -> Result<u64, Fault> {
        Ok(0)
    }
    fn wrmsr(&mut self, _msr: Msr, _value: u64) -> Result<(), Fault> {
        Ok(())
    }
    fn save(&mut self, _insn: SaveInsn, _mem: &mut [u8], _rfbm: u64) -> Result<(), Fault> {
        Ok(())
    }
    fn restore(&mut self, _insn: RestoreInsn, _mem: &[u8], _rfbm: u64) -> Result<(), Fault> {
        Ok(())
    }
    fn load_state(&mut self, _state: &[u8], _xinuse: Option<u64>) -> Result<(), Fault> {
        Ok(())
    }
    fn read_state(&mut self) -> Result<Vec<u8>, Fault> {
        Ok(Vec::new())
    }
}

#[test]
fn engine_cycle_allocates_nothing() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt");
    let d = CpuidDump::parse(&std::fs::read_to_string(p).unwrap(), "spr").unwrap();
    for insn in [
        strategy::SaveInsn::Xsaves,
        strategy::SaveInsn::Xsavec,
        strategy::SaveInsn::Xsave,
        strategy::SaveInsn::Fxsave,
    ] {
        let mut e = Engine::new(
            Inert(CpuProfile::from_dump(&d)),
            Options {
                xcr0: Some(0x602e7),
                xss: Some(0x1800),
                ring0: Some(true),
                insn: Some(insn),
                ..Options::default()
            },
        )
        .unwrap();
        // FXSAVE stores the legacy area only: x87 and SSE guests.
        let (xcr0_max, xss) = match insn {
            strategy::SaveInsn::Xsaves => (0x602e7, 0x1800),
            strategy::SaveInsn::Fxsave => (0x3, 0),
            _ => (0x602e7, 0),
        };
        if xcr0_max & mask::AMX != 0 {
            e.request_perm(Scope::Guest, 18).unwrap();
        }
        for id in 0..4 {
            e.create_vcpu(id, GuestPolicy { xcr0_max, xss }, false)
                .unwrap();
        }
        // Reach the steady state: vCPU 2 with its tiles (where there are some), every vCPU
        // run once.
        e.attach(2).unwrap();
        e.xsetbv(2, xcr0_max).unwrap();
        e.detach(2).unwrap();
        for id in 0..4 {
            e.attach(id).unwrap();
            e.detach(id).unwrap();
        }
        let stats = e.stats();
        let (bytes, blocks) = counters();
        for round in 0..100u32 {
            let id = round % 4;
            e.attach(id).unwrap();
            e.detach(id).unwrap();
        }
        let (bytes2, blocks2) = counters();
        assert_eq!(
            (blocks2 - blocks, bytes2 - bytes),
            (0, 0),
            "{}: 100 attach+detach cycles allocated",
            insn.name()
        );
        let s = e.stats();
        // Each cycle: save host, restore guest, save guest, restore host; nothing copied.
        assert_eq!(s.saves - stats.saves, 200, "{}", insn.name());
        assert_eq!(s.restores - stats.restores, 200, "{}", insn.name());
        assert_eq!(s.copied_bytes, stats.copied_bytes);
        assert_eq!(s.allocations, stats.allocations);
    }
}
