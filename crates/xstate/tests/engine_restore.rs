//! Scenario tests of issue 10 on the Sapphire Rapids fixture and on this machine's CPU (both on
//! the model; this machine on the real CPU too where the hardware backend allows): the VMM
//! restore path (an AMX snapshot into a fresh vCPU through set_xcr0 → set_xsave2), copy-in
//! with XFD armed (Linux 6.19), the two-phase reallocation with an allocation failure at exit,
//! preemption while attached, vCPUs moving between two engines (threads) with per-process
//! permissions, confidential vCPUs, eager growth, Linux's permission answers.

use std::sync::Arc;

use xstate::components::mask;
use xstate::cpuid::CpuidDump;
use xstate::engine::{
    Context, Engine, ErrorKind, Growth, GuestMsr, GuestPolicy, Options, Permissions, Scope,
};
use xstate::model::{CpuProfile, ModelCpu};

const SPR: &str = "tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt";
const TILES: u8 = 18;

struct Host {
    name: &'static str,
    dump: CpuidDump,
    xcr0: u64,
    xss: u64,
}

fn spr() -> Host {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SPR);
    Host {
        name: "spr",
        dump: CpuidDump::parse(&std::fs::read_to_string(p).unwrap(), "spr").unwrap(),
        xcr0: 0x602e7,
        xss: 0x1800,
    }
}

fn this_machine() -> Host {
    let d = CpuidDump::from_host();
    let xcr0 = d.xcr0.unwrap_or(0x3);
    let xss = if d.leaf_0d().has_xsaves() {
        d.leaf_0d().xss_supported() & (mask::CET_U | mask::CET_S)
    } else {
        0
    };
    Host {
        name: "this machine",
        dump: d,
        xcr0,
        xss,
    }
}

fn engine(h: &Host, growth: Growth) -> Engine<ModelCpu> {
    Engine::new(
        ModelCpu::new(CpuProfile::from_dump(&h.dump)),
        Options {
            xcr0: Some(h.xcr0),
            xss: Some(h.xss),
            ring0: Some(true),
            growth,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", h.name))
}

fn policy(h: &Host) -> GuestPolicy {
    GuestPolicy {
        xcr0_max: h.xcr0,
        xss: h.xss,
    }
}

/// Register bytes that differ from byte to byte (a shifted copy would show).
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i as u8).wrapping_mul(31) ^ ((i >> 8) as u8))
        .collect()
}

/// The user components of `xcr0` whose registers any byte pattern may hold (vectors, masks,
/// tiles; not x87 control, TILECFG, PKRU or MPX bounds config).
fn free_components(xcr0: u64) -> Vec<u8> {
    [1u8, 2, 5, 6, 7, TILES]
        .into_iter()
        .filter(|&c| xcr0 & (1 << c) != 0)
        .collect()
}

fn amx_hosts() -> Vec<Host> {
    let mut v = vec![spr()];
    let m = this_machine();
    if m.xcr0 & mask::AMX == mask::AMX {
        v.push(m);
    } else {
        println!("this machine: skipped: no AMX in XCR0 {:#x}", m.xcr0);
    }
    v
}

#[test]
fn amx_snapshot_restored_into_a_fresh_vcpu() {
    for h in amx_hosts() {
        let mut e = engine(&h, Growth::Lazy);
        e.request_perm(Scope::Guest, 18).unwrap();
        e.create_vcpu(0, policy(&h), false).unwrap();
        e.attach(0).unwrap();
        assert!(e.xsetbv(0, h.xcr0).unwrap().realloc);
        e.detach(0).unwrap();
        e.attach(0).unwrap();
        let comps = free_components(h.xcr0);
        for (k, &c) in comps.iter().enumerate() {
            let d = bytes(0x40 + k as u8, e.register_len(c).unwrap());
            assert_eq!(e.guest_write(0, c, &d).unwrap().fault, None, "{}", h.name);
        }
        e.detach(0).unwrap();
        let mut snap = vec![0u8; e.uabi_size().unwrap() as usize];
        e.get_xsave2(0, &mut snap).unwrap();

        // A fresh vCPU: the image first is refused, with the order in the reason.
        e.create_vcpu(1, policy(&h), false).unwrap();
        let before = e.vcpu(1).unwrap().fpstate().size();
        let err = e.set_xsave2(1, &snap).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Einval);
        assert!(err.message.contains("restore XCR0"), "{err}");
        assert_eq!(
            e.vcpu(1).unwrap().fpstate().size(),
            before,
            "nothing changed"
        );
        // XCR0, then XFD, then the image.
        let r = e.set_xcr0(1, h.xcr0).unwrap();
        assert!(r.realloc, "{}: XCR0 with AMX grows the container", h.name);
        assert_eq!(
            e.vcpu(1).unwrap().fpstate().size(),
            e.config().guest.max_size
        );
        if e.config().layout.leaf().has_xfd() {
            assert_eq!(
                e.set_msr(1, GuestMsr::Xfd, 0).unwrap().cleared_by_xfd,
                0,
                "{}",
                h.name
            );
        }
        assert_eq!(e.set_xsave2(1, &snap).unwrap().cleared_by_xfd, 0);
        // Every register kept, in the container and after an attach on the CPU.
        let mut again = vec![0u8; snap.len()];
        e.get_xsave2(1, &mut again).unwrap();
        assert!(again == snap, "{}: the UABI image differs", h.name);
        e.attach(1).unwrap();
        for (k, &c) in comps.iter().enumerate() {
            let want = bytes(0x40 + k as u8, e.register_len(c).unwrap());
            assert_eq!(
                e.read_component(Context::Vcpu(1), c).unwrap(),
                want,
                "{}: component {c}",
                h.name
            );
        }
        e.detach(1).unwrap();
    }
}

#[test]
fn copy_in_with_xfd_armed_never_faults_a_later_attach() {
    for h in amx_hosts() {
        let mut e = engine(&h, Growth::Lazy);
        if !e.config().layout.leaf().has_xfd() {
            println!("{}: skipped: no XFD", h.name);
            continue;
        }
        e.request_perm(Scope::Guest, 18).unwrap();
        e.create_vcpu(0, policy(&h), false).unwrap();
        e.set_xcr0(0, h.xcr0).unwrap();
        e.attach(0).unwrap();
        let tiles = bytes(0x77, 8192);
        e.guest_write(0, TILES, &tiles).unwrap();
        e.detach(0).unwrap();
        let mut snap = vec![0u8; e.uabi_size().unwrap() as usize];
        e.get_xsave2(0, &mut snap).unwrap();
        assert_ne!(snap[514] & 0x4, 0, "XSTATE_BV[18] set in the snapshot");
        // The VMM arms XFD for the tiles (the guest's #NM handler state), then loads the image.
        let r = e.set_msr(0, GuestMsr::Xfd, mask::XTILEDATA).unwrap();
        assert_eq!(r.cleared_by_xfd, mask::XTILEDATA, "{}", h.name);
        let c = e.set_xsave2(0, &snap).unwrap();
        assert_eq!(c.cleared_by_xfd, mask::XTILEDATA, "{}", h.name);
        assert_eq!(
            e.vcpu(0).unwrap().fpstate().xstate_bv() & mask::XTILEDATA,
            0
        );
        // The model raises #NM for a restore of an armed component with XSTATE_BV[i] = 1
        // (SDM Vol. 1 §13.14): the attach succeeds only because the bit was cleared.
        e.attach(0).unwrap();
        let o = e.guest_write(0, TILES, &tiles).unwrap();
        assert_eq!(o.fault, Some(xstate::model::Exception::Nm));
        assert_eq!(e.vcpu(0).unwrap().xfd_err(), mask::XTILEDATA);
        e.detach(0).unwrap();
        // The compacted interface clears the same way.
        let img = e.get_compacted(0).unwrap();
        let mut raw = img.as_bytes().to_vec();
        raw[514] |= 0x4;
        let c = e.set_compacted(0, &raw).unwrap();
        assert_eq!(c.cleared_by_xfd, mask::XTILEDATA);
        e.attach(0).unwrap();
        e.detach(0).unwrap();
    }
}

#[test]
fn two_phase_realloc_with_allocation_failure_at_exit() {
    for h in amx_hosts() {
        let mut e = engine(&h, Growth::Lazy);
        e.request_perm(Scope::Guest, 18).unwrap();
        e.create_vcpu(0, policy(&h), false).unwrap();
        let small = e.vcpu(0).unwrap().fpstate().size();
        e.attach(0).unwrap();
        e.xsetbv(0, h.xcr0 & !mask::AMX).unwrap();
        let zmm = bytes(0x21, e.register_len(2).unwrap());
        e.guest_write(0, 2, &zmm).unwrap();
        // Phase one: the request is visible, the run ends, nothing grew.
        let o = e.xsetbv(0, h.xcr0).unwrap();
        assert!(o.realloc);
        assert_eq!(e.vcpu(0).unwrap().realloc_request(), mask::XTILEDATA);
        assert_eq!(e.vcpu(0).unwrap().fpstate().size(), small);
        assert_eq!(
            e.guest_write(0, 2, &zmm).unwrap_err().kind,
            ErrorKind::Ebusy
        );
        // Phase two fails: detached, state intact, the request pending.
        e.fail_next_alloc();
        assert_eq!(e.detach(0).unwrap_err().kind, ErrorKind::Enomem);
        assert_eq!(e.attached(), None);
        assert_eq!(e.vcpu(0).unwrap().realloc_request(), mask::XTILEDATA);
        assert_eq!(e.vcpu(0).unwrap().fpstate().size(), small);
        assert_eq!(e.read_component(Context::Vcpu(0), 2).unwrap(), zmm);
        // The next entry serves it first.
        assert!(e.attach(0).unwrap());
        assert_eq!(
            e.vcpu(0).unwrap().fpstate().size(),
            e.config().guest.max_size
        );
        assert_eq!(e.read_component(Context::Vcpu(0), 2).unwrap(), zmm);
        assert_eq!(
            e.read_component(Context::Vcpu(0), TILES).unwrap(),
            vec![0; 8192]
        );
        assert!(!e.detach(0).unwrap().realloc);
    }
}

#[test]
fn preemption_saves_the_guest_once() {
    for h in [spr(), this_machine()] {
        let mut e = engine(&h, Growth::Lazy);
        let p = GuestPolicy {
            xcr0_max: h.xcr0 & !mask::AMX,
            xss: 0,
        };
        let vc = if h.xcr0 & mask::AVX512 == mask::AVX512 {
            6
        } else {
            2
        };
        let host = bytes(0x11, e.register_len(vc).unwrap());
        e.host_write(vc, &host).unwrap();
        e.create_vcpu(0, p, false).unwrap();
        e.attach(0).unwrap();
        e.xsetbv(0, p.xcr0_max).unwrap();
        let guest = bytes(0xaa, e.register_len(vc).unwrap());
        e.guest_write(0, vc, &guest).unwrap();
        let s0 = e.stats();
        e.schedule_out().unwrap();
        assert!(!e.guest_live());
        assert_eq!(e.stats().saves, s0.saves + 1, "{}: saved now", h.name);
        e.schedule_out().unwrap();
        assert_eq!(e.stats().saves, s0.saves + 1, "already saved: not again");
        assert_eq!(
            e.guest_write(0, vc, &guest).unwrap_err().kind,
            ErrorKind::Ebusy
        );
        assert_eq!(e.read_component(Context::Vcpu(0), vc).unwrap(), guest);
        e.schedule_in().unwrap();
        assert_eq!(e.stats().restores, s0.restores + 1);
        assert_eq!(e.read_component(Context::Vcpu(0), vc).unwrap(), guest);
        e.schedule_out().unwrap();
        let s1 = e.stats();
        e.detach(0).unwrap();
        assert_eq!(e.stats().saves, s1.saves, "{}: no save at exit", h.name);
        assert_eq!(e.stats().restores, s1.restores + 1, "the host is restored");
        assert_eq!(e.read_component(Context::Host, vc).unwrap(), host);
        assert_eq!(e.read_component(Context::Vcpu(0), vc).unwrap(), guest);
    }
}

#[test]
fn vcpus_move_between_engines_on_two_threads() {
    let h = spr();
    let a_cpu = ModelCpu::new(CpuProfile::from_dump(&h.dump));
    let opts = Options {
        xcr0: Some(h.xcr0),
        xss: Some(h.xss),
        ring0: Some(true),
        ..Options::default()
    };
    let mut a = Engine::new(a_cpu, opts).unwrap();
    let perms: Arc<Permissions> = a.process_permissions();
    // The creating thread: a grant there holds for every thread of the process.
    a.request_perm(Scope::Guest, 18).unwrap();
    a.create_vcpu(0, policy(&h), false).unwrap();
    a.attach(0).unwrap();
    a.xsetbv(0, h.xcr0).unwrap();
    a.detach(0).unwrap();
    a.attach(0).unwrap();
    let tiles = bytes(0x5c, 8192);
    a.guest_write(0, TILES, &tiles).unwrap();
    assert_eq!(
        a.take_vcpu(0).unwrap_err().kind,
        ErrorKind::Ebusy,
        "attached: not movable"
    );
    a.detach(0).unwrap();
    let v = a.take_vcpu(0).unwrap();
    assert!(a.vcpu(0).is_err());
    let dump = h.dump.clone();
    let (v, b_perm_locked) = std::thread::spawn(move || {
        let cpu = ModelCpu::new(CpuProfile::from_dump(&dump));
        let mut b = Engine::with_permissions(cpu, opts, perms).unwrap();
        assert_eq!(
            b.permissions().get(Scope::Guest) & mask::XTILEDATA,
            mask::XTILEDATA
        );
        assert_eq!(b.put_vcpu(v).unwrap(), 0);
        b.attach(0).unwrap();
        assert_eq!(b.read_component(Context::Vcpu(0), TILES).unwrap(), tiles);
        let t2 = bytes(0x3a, 8192);
        b.guest_write(0, TILES, &t2).unwrap();
        b.detach(0).unwrap();
        (b.take_vcpu(0).unwrap(), b.permissions().is_guest_locked())
    })
    .join()
    .unwrap();
    assert!(
        b_perm_locked,
        "locked by the first vCPU, seen on every thread"
    );
    a.put_vcpu(v).unwrap();
    assert_eq!(
        a.read_component(Context::Vcpu(0), TILES).unwrap(),
        bytes(0x3a, 8192)
    );
    // An engine storing containers differently refuses it and hands it back.
    let v = a.take_vcpu(0).unwrap();
    let mut c = Engine::new(
        ModelCpu::new(CpuProfile::from_dump(&h.dump)),
        Options {
            insn: Some(xstate::strategy::SaveInsn::Xsave),
            ..opts
        },
    )
    .unwrap();
    let r = c.put_vcpu(v).unwrap_err();
    assert_eq!(r.error.kind, ErrorKind::Einval);
    assert!(r.error.message.contains("xsave"), "{}", r.error);
    a.put_vcpu(*r.vcpu).unwrap();
    // Another host's permissions cannot be shared.
    let other = this_machine();
    if other.xcr0 != h.xcr0 {
        let e = Engine::with_permissions(
            ModelCpu::new(CpuProfile::from_dump(&other.dump)),
            Options {
                xcr0: Some(other.xcr0),
                xss: Some(other.xss),
                ring0: Some(true),
                ..Options::default()
            },
            a.process_permissions(),
        );
        assert_eq!(e.err().map(|e| e.kind), Some(ErrorKind::Einval));
    }
}

#[test]
fn shared_permissions_lock_for_every_thread() {
    let h = spr();
    let opts = Options {
        xcr0: Some(h.xcr0),
        xss: Some(h.xss),
        ring0: Some(true),
        ..Options::default()
    };
    let a = Engine::new(ModelCpu::new(CpuProfile::from_dump(&h.dump)), opts).unwrap();
    let mut b = Engine::with_permissions(
        ModelCpu::new(CpuProfile::from_dump(&h.dump)),
        opts,
        a.process_permissions(),
    )
    .unwrap();
    b.create_vcpu(
        0,
        GuestPolicy {
            xcr0_max: 0x2e7,
            xss: 0,
        },
        false,
    )
    .unwrap();
    // The first vCPU on thread B locks the guest permissions of the process.
    assert_eq!(
        a.request_perm(Scope::Guest, 18).unwrap_err().kind,
        ErrorKind::Ebusy
    );
    assert_eq!(
        a.request_perm(Scope::Host, 18).unwrap(),
        xstate::engine::Grant::Granted
    );
    assert_eq!(
        b.request_perm(Scope::Host, 18).unwrap(),
        xstate::engine::Grant::AlreadyGranted
    );
}

#[test]
fn confidential_vcpus_allocate_nothing() {
    for growth in [Growth::Lazy, Growth::Eager] {
        let h = spr();
        let mut e = engine(&h, growth);
        e.request_perm(Scope::Guest, 18).unwrap();
        let before = e.stats().allocations;
        e.create_vcpu(0, policy(&h), true).unwrap();
        let fp = e.vcpu(0).unwrap().fpstate();
        assert_eq!((fp.size(), fp.allocated(), fp.as_bytes().len()), (0, 0, 0));
        e.attach(0).unwrap();
        let o = e.xsetbv(0, h.xcr0).unwrap();
        assert!(!o.realloc, "{growth:?}: no request, the run goes on");
        assert_eq!(
            e.vcpu(0).unwrap().fpstate().xfeatures() & mask::XTILEDATA,
            mask::XTILEDATA,
            "the features are tracked"
        );
        let s = e.stats();
        assert!(!e.detach(0).unwrap().realloc);
        e.set_policy(
            0,
            GuestPolicy {
                xcr0_max: 0x2e7,
                xss: 0,
            },
        )
        .unwrap();
        assert_eq!(e.stats().allocations, before, "{growth:?}");
        assert_eq!(e.vcpu(0).unwrap().fpstate().allocated(), 0);
        // Neither saved nor restored: only the host's save and restore.
        assert_eq!(e.stats().saves, s.saves);
        let mut buf = vec![0u8; 11008];
        assert_eq!(
            e.get_xsave2(0, &mut buf).unwrap_err().kind,
            ErrorKind::Einval
        );
    }
}

#[test]
fn eager_growth_follows_the_policy() {
    for h in amx_hosts() {
        let mut e = engine(&h, Growth::Eager);
        e.request_perm(Scope::Guest, 18).unwrap();
        e.create_vcpu(0, policy(&h), false).unwrap();
        assert_eq!(
            e.vcpu(0).unwrap().fpstate().size(),
            e.config().guest.max_size,
            "{}: tiles allocated at creation",
            h.name
        );
        e.attach(0).unwrap();
        assert!(!e.xsetbv(0, h.xcr0).unwrap().realloc, "no request");
        e.detach(0).unwrap();
        let no_amx = GuestPolicy {
            xcr0_max: h.xcr0 & !mask::AMX,
            xss: h.xss,
        };
        e.create_vcpu(1, no_amx, false).unwrap();
        assert_eq!(
            e.vcpu(1).unwrap().fpstate().xfeatures() & mask::XTILEDATA,
            0
        );
        assert!(e.set_policy(1, policy(&h)).unwrap());
        assert_eq!(
            e.vcpu(1).unwrap().fpstate().size(),
            e.config().guest.max_size
        );
        // Lazy is the default.
        let l = engine(&h, Growth::default());
        assert_eq!(l.growth(), Growth::Lazy);
    }
}

#[test]
fn restore_setters_check_their_rules() {
    let h = spr();
    let mut e = engine(&h, Growth::Lazy);
    e.create_vcpu(
        0,
        GuestPolicy {
            xcr0_max: 0x2e7,
            xss: 0x1000,
        },
        false,
    )
    .unwrap();
    // XSETBV rules against the guest CPUID: einval naming the rule, nothing changed.
    let err = e.set_xcr0(0, 0x5).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Einval);
    assert!(err.message.contains("KVM_SET_XCRS"), "{err}");
    assert_eq!(e.vcpu(0).unwrap().xcr0(), 1);
    assert_eq!(
        e.set_xcr0(0, 0x602e7).unwrap_err().kind,
        ErrorKind::Einval,
        "AMX beyond the guest CPUID"
    );
    assert!(!e.set_xcr0(0, 0x2e7).unwrap().realloc);
    assert_eq!(
        e.set_msr(0, GuestMsr::Xfd, mask::XTILEDATA)
            .unwrap_err()
            .kind,
        ErrorKind::Einval,
        "XFD beyond the guest CPUID"
    );
    assert_eq!(
        e.set_msr(0, GuestMsr::Xss, 0x800).unwrap_err().kind,
        ErrorKind::Einval
    );
    e.set_msr(0, GuestMsr::Xss, 0x1000).unwrap();
    assert_eq!(e.vcpu(0).unwrap().xss(), 0x1000);
    e.attach(0).unwrap();
    assert_eq!(e.set_xcr0(0, 0x7).unwrap_err().kind, ErrorKind::Ebusy);
    e.detach(0).unwrap();
    // A dynamic feature without the guest permission: eperm at the policy already.
    let mut f = engine(&h, Growth::Lazy);
    assert_eq!(
        f.create_vcpu(0, policy(&h), false).unwrap_err().kind,
        ErrorKind::Eperm
    );
}

/// The same restore on the real CPU (user mode, XSAVEC/XRSTOR), after asking Linux for the
/// AMX permission (`arch_prctl(ARCH_REQ_XCOMP_PERM, 18)`).
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_snapshot_on_this_cpu() {
    use xstate::hw::HwBackend;
    let Some(hw) = HwBackend::new() else {
        println!("skipped: XSAVE is not usable on this CPU");
        return;
    };
    let xcr0 = hw.host().xcr0();
    if xcr0 & mask::AMX != mask::AMX {
        println!("skipped: no AMX enabled here (XCR0 {xcr0:#x})");
        return;
    }
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) takes two integers and
    // only changes this process's permission (DESIGN.md §6).
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) };
    if r != 0 {
        println!(
            "skipped: ARCH_REQ_XCOMP_PERM refused: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let mut e = match Engine::new(
        hw,
        Options {
            ring0: Some(false),
            ..Options::default()
        },
    ) {
        Ok(e) => e,
        Err(err) => {
            println!("skipped: {err}");
            return;
        }
    };
    e.request_perm(Scope::Guest, 18).unwrap();
    let p = GuestPolicy {
        xcr0_max: e.config().xcr0,
        xss: 0,
    };
    e.create_vcpu(0, p, false).unwrap();
    e.set_xcr0(0, p.xcr0_max).unwrap();
    e.attach(0).unwrap();
    // A full tile configuration first — palette 1 as CPUID.(0x1D,1) describes it: 8 tiles of
    // 16 rows × 64 bytes — so that every byte of TILEDATA belongs to a configured tile row
    // (rows and bytes outside the configuration read as zero).
    let mut cfg = vec![0u8; 64];
    cfg[0] = 1;
    for t in 0..8 {
        cfg[16 + 2 * t] = 64;
        cfg[48 + t] = 16;
    }
    let tiles = bytes(0x6d, 8192);
    let wrote = e.guest_write(0, 17, &cfg).and_then(|o| match o.fault {
        None => e.guest_write(0, TILES, &tiles),
        Some(_) => Ok(o),
    });
    match wrote {
        Ok(o) if o.fault.is_none() => {}
        Ok(o) => {
            e.detach(0).unwrap();
            println!(
                "skipped: the hardware backend does not load tile data here: {} {}",
                o.fault.map(|f| f.mnemonic()).unwrap_or(""),
                o.detail
            );
            return;
        }
        Err(err) => panic!("{err}"),
    }
    e.detach(0).unwrap();
    let mut snap = vec![0u8; e.uabi_size().unwrap() as usize];
    e.get_xsave2(0, &mut snap).unwrap();
    e.create_vcpu(1, p, false).unwrap();
    e.set_xcr0(1, p.xcr0_max).unwrap();
    e.set_xsave2(1, &snap).unwrap();
    e.attach(1).unwrap();
    assert_eq!(e.read_component(Context::Vcpu(1), 17).unwrap(), cfg);
    assert_eq!(e.read_component(Context::Vcpu(1), TILES).unwrap(), tiles);
    e.detach(1).unwrap();
}
