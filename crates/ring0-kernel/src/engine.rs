//! The guest FPU engine at ring 0: `xstate::engine::Engine` over `Ring0Backend` (the real
//! XSAVES/XRSTORS, XSETBV and WRMSR of this CPU), a host thread and vCPUs switched in and out,
//! with the register contents checked on the CPU after each switch by an XSAVE/XSAVES of this
//! module's own (`program::run`), not through the engine.
//!
//! Only components ≥ 2 are checked on the CPU: the kernel's compiled code uses XMM registers
//! and MXCSR between the engine's calls (legacy SSE instructions leave the upper YMM/ZMM bits,
//! ZMM16-31, the opmask registers, PKRU, CET and AMX state alone). TILEDATA's contents are not
//! checked across switches: Bochs reports TILEDATA not in use while tiles hold data
//! (quirks::TILEDATA_XINUSE_INVERTED), so XSAVES skips it there; TILECFG is checked.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xstate::components::mask;
use xstate::engine::fpstate::{init_bytes, pattern};
use xstate::engine::{Context, Engine, GuestPolicy, Options, Scope};
use xstate::hw::Ring0Backend;
use xstate::model::{CpuProfile, Exception};

use crate::arch::NO_FAULT;
use crate::program::{self, Op, Step};

#[repr(C, align(4096))]
struct Scratch([u8; 16384]);

static mut SCRATCH: Scratch = Scratch([0; 16384]);

/// Component `id` as the CPU holds it now: XSAVE (user) or XSAVES (supervisor, compacted with
/// RFBM = that component alone, so it sits at 576) into a zeroed area; None when the save
/// faulted. A component not in use is saved as its init value (zeros) by XSAVE, and not
/// written by XSAVES (the area stays zero): both read as init.
fn cpu_component(profile: &CpuProfile, id: u8) -> Option<Vec<u8>> {
    let g = profile.layout.geometry(id);
    let size = g.size as usize;
    // SAFETY: single-threaded kernel; the scratch area is only used here.
    let s = unsafe { &mut *core::ptr::addr_of_mut!(SCRATCH) };
    s.0.fill(0);
    let addr = s.0.as_ptr() as u64;
    let bit = 1u64 << id;
    let (op, off) = if g.supervisor {
        (Op::Xsaves, 576)
    } else {
        (Op::Xsave, g.standard_offset? as usize)
    };
    let mut steps = [Step::new(op, bit, addr)];
    // SAFETY: CPL 0, IDT loaded; the operand is the 16 KiB scratch area (images ≤ 11008 bytes).
    unsafe { program::run(&mut steps) };
    if steps[0].vector != NO_FAULT {
        return None;
    }
    s.0.get(off..off + size).map(<[u8]>::to_vec)
}

/// Puts every supported component in its initial configuration (XRSTORS, or XRSTOR, of an
/// image with XSTATE_BV = 0), so that a scenario's host starts from known registers and not
/// from what the differential left.
fn reset_cpu(profile: &CpuProfile) -> bool {
    let xcr0 = profile.layout.xcr0_supported();
    let xss = if profile.xsaves {
        profile.layout.xss_supported()
    } else {
        0
    };
    // SAFETY: single-threaded kernel; the scratch area is only used here and in cpu_component.
    let s = unsafe { &mut *core::ptr::addr_of_mut!(SCRATCH) };
    s.0.fill(0);
    let addr = s.0.as_ptr() as u64;
    let mut steps = alloc::vec![Step::new(Op::Xsetbv, xcr0, 0)];
    if profile.xsaves {
        s.0[520..528].copy_from_slice(&(xcr0 | xss | mask::COMPACTED).to_le_bytes());
        steps.push(Step::new(Op::WrXss, xss, 0));
        steps.push(Step::new(Op::Xrstors, u64::MAX, addr));
    } else {
        steps.push(Step::new(Op::Xrstor, u64::MAX, addr));
    }
    // SAFETY: CPL 0, IDT loaded; the operand is the zeroed 16 KiB scratch area.
    unsafe { program::run(&mut steps) };
    steps.iter().all(|s| s.vector == NO_FAULT)
}

/// A valid TILECFG (palette 1, tile n: rows = colsb = 4 + n, for n < 4) whose bytes Bochs
/// saves unchanged (quirks::TILECFG_SAVE_SWAPS_ROWS_COLSB swaps rows and colsb).
fn tilecfg() -> Vec<u8> {
    let mut c = alloc::vec![0u8; 64];
    c[0] = 1;
    for n in 0..4 {
        c[16 + 2 * n] = 4 + n as u8;
        c[48 + n] = 4 + n as u8;
    }
    c
}

struct Run<'a> {
    e: Engine<Ring0Backend>,
    p: &'a CpuProfile,
    log: Vec<String>,
}

macro_rules! ensure {
    ($c:expr, $($t:tt)*) => {
        if !$c {
            return Err(format!($($t)*));
        }
    };
}

impl Run<'_> {
    fn pat(&self, id: u8, b: u8) -> Vec<u8> {
        pattern(id, b, self.e.register_len(id).unwrap_or(0))
    }
    fn init(&self, id: u8) -> Vec<u8> {
        init_bytes(id, self.e.register_len(id).unwrap_or(0))
    }
    /// The CPU holds `want` in component `id`.
    fn on_cpu(&self, id: u8, want: &[u8], what: &str) -> Result<(), String> {
        match cpu_component(self.p, id) {
            Some(got) if got == want => Ok(()),
            Some(got) => Err(format!(
                "{what}: component {id} on the CPU is {:02x?}…, expected {:02x?}…",
                &got[..got.len().min(8)],
                &want[..want.len().min(8)]
            )),
            None => Err(format!("{what}: the CPU faulted saving component {id}")),
        }
    }
}

fn e2s<E: core::fmt::Display>(e: E) -> String {
    format!("{e}")
}

/// One scenario: Ok, or the first failed check (`skipped: …` when the CPU lacks a feature).
type Scenario = fn(&mut Run) -> Result<(), String>;

/// Runs the scenarios; returns (passed, failed) and prints one JSON line per scenario.
pub fn scenarios(profile: &CpuProfile) -> (u64, u64) {
    let names: [(&str, Scenario); 6] = [
        ("host_and_two_vcpus_isolated", isolation),
        ("xsa62_first_enabled_components_start_in_init", xsa62),
        ("amx_two_phase_realloc", amx_realloc),
        ("cet_s_guest_only", cet_s),
        ("policy_shrink_and_grow", policy),
        ("restore_through_kvm_set_xsave2", restore_path),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in names {
        if !reset_cpu(profile) {
            failed += 1;
            crate::println!("{{\"engine_scenario\": \"{name}\", \"ok\": false, \"error\": \"the reset restore faulted\"}}");
            continue;
        }
        let xcr0 = profile.layout.xcr0_supported();
        // IA32_XSS as Linux ≥ 6.17 programs it on a CET host: CET_U and the guest-only CET_S.
        let xss = if profile.xsaves {
            profile.layout.xss_supported() & (mask::CET_U | mask::CET_S)
        } else {
            0
        };
        // SAFETY: CPL 0, CR4.OSXSAVE set, single CPU with nothing else using the FPU between
        // the engine's calls except compiled code on XMM registers (not checked, see the
        // module docs); the profile was built from this CPU's CPUID.
        let backend = unsafe { Ring0Backend::new(profile.clone()) };
        let opts = Options {
            xcr0: Some(xcr0),
            xss: Some(xss),
            ring0: Some(true),
            ..Options::default()
        };
        let result = match Engine::new(backend, opts) {
            Ok(e) => {
                let mut r = Run {
                    e,
                    p: profile,
                    log: Vec::new(),
                };
                let res = f(&mut r);
                let log = r.log.join("; ");
                match res {
                    Ok(()) => Ok(log),
                    Err(m) if log.is_empty() => Err(m),
                    Err(m) => Err(format!("{m} ({log})")),
                }
            }
            Err(e) => Err(format!("Engine::new: {e}")),
        };
        match result {
            Ok(log) => {
                passed += 1;
                crate::println!(
                    "{{\"engine_scenario\": \"{name}\", \"ok\": true, \"detail\": \"{log}\"}}"
                );
            }
            Err(m) if m.starts_with("skipped: ") => {
                crate::println!(
                    "{{\"engine_scenario\": \"{name}\", \"skipped\": \"{}\"}}",
                    &m[9..]
                );
            }
            Err(m) => {
                failed += 1;
                crate::println!(
                    "{{\"engine_scenario\": \"{name}\", \"ok\": false, \"error\": \"{}\"}}",
                    m.replace('"', "'")
                );
            }
        }
    }
    (passed, failed)
}

/// The widest vector component the CPU has (Hi16_ZMM, else AVX's upper YMM halves).
fn vec_comp(p: &CpuProfile) -> Result<u8, String> {
    let x = p.layout.xcr0_supported();
    if x & mask::AVX512 == mask::AVX512 {
        Ok(7)
    } else if x & mask::AVX != 0 {
        Ok(2)
    } else {
        Err(String::from("skipped: no AVX"))
    }
}

fn plain(p: &CpuProfile) -> GuestPolicy {
    GuestPolicy {
        xcr0_max: p.layout.xcr0_supported() & !mask::AMX,
        xss: 0,
    }
}

/// Host and two vCPUs: each context's registers are on the CPU after each switch.
fn isolation(r: &mut Run) -> Result<(), String> {
    let vc = vec_comp(r.p)?;
    let pol = plain(r.p);
    let host = r.pat(vc, 0x11);
    r.e.host_write(vc, &host).map_err(e2s)?;
    r.on_cpu(vc, &host, "host after host_write")?;
    r.e.create_vcpu(0, pol, false).map_err(e2s)?;
    r.e.create_vcpu(1, pol, false).map_err(e2s)?;
    for (id, b) in [(0u32, 0xaau8), (1, 0xbb)] {
        r.e.attach(id).map_err(e2s)?;
        r.e.xsetbv(id, pol.xcr0_max).map_err(e2s)?;
        r.on_cpu(vc, &r.init(vc), "vCPU first attach")?;
        let o = r.e.guest_write(id, vc, &r.pat(vc, b)).map_err(e2s)?;
        ensure!(o.fault.is_none(), "guest_write faulted: {:?}", o.fault);
        r.on_cpu(vc, &r.pat(vc, b), "vCPU after guest_write")?;
        r.e.detach(id).map_err(e2s)?;
        r.on_cpu(vc, &host, "host after detach")?;
    }
    for (id, b) in [(1u32, 0xbbu8), (0, 0xaa)] {
        r.e.attach(id).map_err(e2s)?;
        r.on_cpu(vc, &r.pat(vc, b), "vCPU re-attached")?;
        r.e.detach(id).map_err(e2s)?;
        r.on_cpu(vc, &host, "host after second detach")?;
    }
    Ok(())
}

/// XSA-62: a vCPU that enables a component for the first time finds it in init state, never
/// another context's values (the host's and vCPU 0's are on the CPU just before).
fn xsa62(r: &mut Run) -> Result<(), String> {
    let vc = vec_comp(r.p)?;
    let pol = plain(r.p);
    r.e.host_write(vc, &r.pat(vc, 0x11)).map_err(e2s)?;
    r.e.create_vcpu(0, pol, false).map_err(e2s)?;
    r.e.create_vcpu(1, pol, false).map_err(e2s)?;
    r.e.attach(0).map_err(e2s)?;
    r.e.xsetbv(0, pol.xcr0_max).map_err(e2s)?;
    r.e.guest_write(0, vc, &r.pat(vc, 0xaa)).map_err(e2s)?;
    r.e.detach(0).map_err(e2s)?;
    r.e.attach(1).map_err(e2s)?;
    r.on_cpu(vc, &r.init(vc), "vCPU 1 before it enables the component")?;
    r.e.xsetbv(1, pol.xcr0_max).map_err(e2s)?;
    r.on_cpu(vc, &r.init(vc), "vCPU 1 after XSETBV")?;
    r.e.detach(1).map_err(e2s)?;
    Ok(())
}

/// AMX enabled through the guest's XCR0: the run ends with a realloc request, the detach
/// grows the container (phase two), the guest then configures tiles; after detach the CPU's
/// TILECFG is the host's (init), after re-attach the guest's.
fn amx_realloc(r: &mut Run) -> Result<(), String> {
    let sup = r.p.layout.xcr0_supported();
    if sup & mask::AMX != mask::AMX {
        return Err(String::from("skipped: no AMX"));
    }
    r.e.request_perm(Scope::Guest, 18).map_err(e2s)?;
    let pol = GuestPolicy {
        xcr0_max: sup,
        xss: 0,
    };
    r.e.create_vcpu(0, pol, false).map_err(e2s)?;
    let small = r.e.vcpu(0).map_err(e2s)?.fpstate().size();
    r.e.attach(0).map_err(e2s)?;
    let o = r.e.xsetbv(0, sup).map_err(e2s)?;
    ensure!(
        o.realloc && o.fault.is_none(),
        "XSETBV with AMX: realloc {} fault {:?}",
        o.realloc,
        o.fault
    );
    let d = r.e.detach(0).map_err(e2s)?;
    ensure!(d.realloc, "the detach did not reallocate");
    let fp = r.e.vcpu(0).map_err(e2s)?.fpstate();
    let want = r.e.config().size_of(fp.xfeatures()).map_err(e2s)?;
    ensure!(
        fp.xfeatures() & mask::AMX == mask::AMX && fp.size() == want && want > small,
        "container {} bytes ({:#x}), was {small}",
        fp.size(),
        fp.xfeatures()
    );
    r.log.push(format!("container {small} -> {want} bytes"));
    r.e.attach(0).map_err(e2s)?;
    let cfg = tilecfg();
    let o = r.e.guest_write(0, 17, &cfg).map_err(e2s)?;
    ensure!(o.fault.is_none(), "TILECFG write faulted: {:?}", o.fault);
    r.on_cpu(17, &cfg, "guest TILECFG")?;
    r.e.detach(0).map_err(e2s)?;
    r.on_cpu(17, &r.init(17), "host after detach (the host has no tiles)")?;
    r.e.attach(0).map_err(e2s)?;
    r.on_cpu(17, &cfg, "guest TILECFG re-attached")?;
    r.e.detach(0).map_err(e2s)?;
    Ok(())
}

/// CET_S is guest-only: a vCPU whose policy has it keeps it across switches; the host's
/// registers hold init after the detach; a vCPU without it gets #GP.
fn cet_s(r: &mut Run) -> Result<(), String> {
    if r.p.layout.xss_supported() & mask::CET_S == 0 || !r.p.xsaves {
        return Err(String::from("skipped: no CET_S in IA32_XSS"));
    }
    let with = GuestPolicy {
        xss: mask::CET_S | mask::CET_U & r.p.layout.xss_supported(),
        ..plain(r.p)
    };
    r.e.create_vcpu(0, with, false).map_err(e2s)?;
    r.e.create_vcpu(1, plain(r.p), false).map_err(e2s)?;
    ensure!(
        r.e.host_fpstate().xfeatures() & mask::CET_S == 0,
        "CET_S in the host container"
    );
    r.e.attach(0).map_err(e2s)?;
    let pat = r.pat(12, 0x77);
    let o = r.e.guest_write(0, 12, &pat).map_err(e2s)?;
    ensure!(o.fault.is_none(), "CET_S write faulted: {:?}", o.fault);
    ensure!(
        r.e.read_component(Context::Vcpu(0), 12).map_err(e2s)? == pat,
        "CET_S read back"
    );
    r.e.detach(0).map_err(e2s)?;
    r.e.attach(1).map_err(e2s)?;
    let o = r.e.guest_write(1, 12, &r.pat(12, 0x66)).map_err(e2s)?;
    ensure!(
        o.fault == Some(Exception::Gp),
        "vCPU without CET_S: {:?}",
        o.fault
    );
    r.e.detach(1).map_err(e2s)?;
    r.e.attach(0).map_err(e2s)?;
    ensure!(
        r.e.read_component(Context::Vcpu(0), 12).map_err(e2s)? == pat,
        "CET_S after switches"
    );
    r.e.detach(0).map_err(e2s)?;
    Ok(())
}

/// A policy change removes AVX-512 (the container shrinks, the guest's XSETBV of it #GPs),
/// then restores it (the container grows; the component starts in init on the CPU).
fn policy(r: &mut Run) -> Result<(), String> {
    let full = plain(r.p);
    if full.xcr0_max & mask::AVX512 != mask::AVX512 {
        return Err(String::from("skipped: no AVX-512"));
    }
    r.e.create_vcpu(0, full, false).map_err(e2s)?;
    r.e.attach(0).map_err(e2s)?;
    r.e.xsetbv(0, full.xcr0_max).map_err(e2s)?;
    r.e.guest_write(0, 7, &r.pat(7, 0xcc)).map_err(e2s)?;
    r.e.detach(0).map_err(e2s)?;
    let big = r.e.vcpu(0).map_err(e2s)?.fpstate().size();
    let small = GuestPolicy {
        xcr0_max: full.xcr0_max & !mask::AVX512,
        xss: 0,
    };
    r.e.set_policy(0, small).map_err(e2s)?;
    let shrunk = r.e.vcpu(0).map_err(e2s)?.fpstate().size();
    ensure!(shrunk < big, "container {shrunk} not below {big}");
    r.e.attach(0).map_err(e2s)?;
    let o = r.e.xsetbv(0, full.xcr0_max).map_err(e2s)?;
    ensure!(
        o.fault == Some(Exception::Gp),
        "XSETBV of a removed feature: {:?}",
        o.fault
    );
    r.e.detach(0).map_err(e2s)?;
    r.e.set_policy(0, full).map_err(e2s)?;
    ensure!(
        r.e.vcpu(0).map_err(e2s)?.fpstate().size() == big,
        "container did not grow back"
    );
    r.e.attach(0).map_err(e2s)?;
    r.e.xsetbv(0, full.xcr0_max).map_err(e2s)?;
    r.on_cpu(7, &r.init(7), "re-enabled after the policy dropped it")?;
    r.e.detach(0).map_err(e2s)?;
    r.log
        .push(format!("container {big} -> {shrunk} -> {big} bytes"));
    Ok(())
}

/// The restore path: vCPU 0's state copied out (KVM_GET_XSAVE2 form) and into a new vCPU 1,
/// whose registers on the CPU then hold vCPU 0's values.
fn restore_path(r: &mut Run) -> Result<(), String> {
    let vc = vec_comp(r.p)?;
    let pol = plain(r.p);
    r.e.create_vcpu(0, pol, false).map_err(e2s)?;
    r.e.create_vcpu(1, pol, false).map_err(e2s)?;
    r.e.attach(0).map_err(e2s)?;
    r.e.xsetbv(0, pol.xcr0_max).map_err(e2s)?;
    r.e.guest_write(0, vc, &r.pat(vc, 0x5a)).map_err(e2s)?;
    if pol.xcr0_max & mask::OPMASK != 0 {
        r.e.guest_write(0, 5, &r.pat(5, 0x3c)).map_err(e2s)?;
    }
    r.e.detach(0).map_err(e2s)?;
    let mut buf = alloc::vec![0u8; r.e.uabi_size().map_err(e2s)? as usize];
    r.e.get_xsave2(0, &mut buf).map_err(e2s)?;
    r.e.set_xsave2(1, &buf).map_err(e2s)?;
    r.e.attach(1).map_err(e2s)?;
    r.e.xsetbv(1, pol.xcr0_max).map_err(e2s)?;
    r.on_cpu(vc, &r.pat(vc, 0x5a), "restored vCPU")?;
    if pol.xcr0_max & mask::OPMASK != 0 {
        r.on_cpu(5, &r.pat(5, 0x3c), "restored vCPU opmask")?;
    }
    r.e.detach(1).map_err(e2s)?;
    Ok(())
}
