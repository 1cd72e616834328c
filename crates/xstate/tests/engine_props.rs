//! Random operation sequences against the engine on the Sapphire Rapids model: no input makes
//! it panic, every error has a kind and a message, and the invariants hold after every step —
//! a running guest's container holds everything its XCR0 and XFD enable (or the run ended with
//! a realloc request), every container is exactly the size of its features, and the host's
//! registers are live exactly when no vCPU is attached.

use proptest::prelude::*;
use xstate::cpuid::CpuidDump;
use xstate::engine::fpstate::pattern;
use xstate::engine::{Context, Engine, GuestMsr, GuestPolicy, Options, Scope};
use xstate::model::{CpuProfile, ModelCpu};

#[derive(Clone, Debug)]
enum Op {
    Perm(bool, u32),
    Create(u32, u64, u64, bool),
    Attach(u32),
    Detach(u32),
    Destroy(u32),
    Xsetbv(u32, u64),
    Wrmsr(u32, u8, u64),
    Write(Option<u32>, u8, u8),
    Read(Option<u32>, u8),
    FailAlloc,
    Policy(u32, u64, u64),
    GetX(u32, usize),
    SetX(u32, Vec<u8>),
    SetCompacted(u32, bool),
    ScheduleOut,
    ScheduleIn,
    SetXcr0(u32, u64),
    SetMsr(u32, u8, u64),
    Move(u32),
}

fn masks() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0x1u64),
        Just(0x3),
        Just(0x7),
        Just(0xe7),
        Just(0x2e7),
        Just(0x602e7),
        Just(0x202e7),
        Just(0x40000),
        Just(0x1800),
        Just(0x1000),
        Just(0x400),
        Just(0x0),
        any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let v = 0u32..3;
    prop_oneof![
        (
            any::<bool>(),
            prop_oneof![Just(18u32), Just(17), Just(12), 0u32..70]
        )
            .prop_map(|(h, i)| Op::Perm(h, i)),
        (v.clone(), masks(), masks(), any::<bool>())
            .prop_map(|(a, b, c, d)| Op::Create(a, b, c, d)),
        v.clone().prop_map(Op::Attach),
        v.clone().prop_map(Op::Attach),
        v.clone().prop_map(Op::Detach),
        v.clone().prop_map(Op::Detach),
        v.clone().prop_map(Op::Destroy),
        (v.clone(), masks()).prop_map(|(a, b)| Op::Xsetbv(a, b)),
        (v.clone(), 0u8..3, masks()).prop_map(|(a, b, c)| Op::Wrmsr(a, b, c)),
        (
            proptest::option::of(v.clone()),
            prop_oneof![Just(1u8), Just(2), Just(6), Just(12), Just(18), 0u8..70],
            any::<u8>()
        )
            .prop_map(|(a, b, c)| Op::Write(a, b, c)),
        (proptest::option::of(v.clone()), 0u8..70).prop_map(|(a, b)| Op::Read(a, b)),
        Just(Op::FailAlloc),
        (v.clone(), masks(), masks()).prop_map(|(a, b, c)| Op::Policy(a, b, c)),
        (
            v.clone(),
            prop_oneof![Just(0usize), Just(4096), Just(11008), Just(20000)]
        )
            .prop_map(|(a, b)| Op::GetX(a, b)),
        (v.clone(), proptest::collection::vec(any::<u8>(), 0..12000))
            .prop_map(|(a, b)| Op::SetX(a, b)),
        (v.clone(), any::<bool>()).prop_map(|(a, b)| Op::SetCompacted(a, b)),
        Just(Op::ScheduleOut),
        Just(Op::ScheduleIn),
        (v.clone(), masks()).prop_map(|(a, b)| Op::SetXcr0(a, b)),
        (v.clone(), 0u8..3, masks()).prop_map(|(a, b, c)| Op::SetMsr(a, b, c)),
        v.clone().prop_map(Op::Move),
    ]
}

fn engine() -> Engine<ModelCpu> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt");
    let d = CpuidDump::parse(&std::fs::read_to_string(p).unwrap(), "spr").unwrap();
    let cpu = ModelCpu::new(CpuProfile::from_dump(&d));
    Engine::new(
        cpu,
        Options {
            xcr0: Some(0x602e7),
            xss: Some(0x1800),
            ring0: Some(true),
            ..Options::default()
        },
    )
    .unwrap()
}

fn apply(e: &mut Engine<ModelCpu>, op: &Op) -> Result<(), xstate::engine::EngineError> {
    match op.clone() {
        Op::Perm(h, i) => e
            .request_perm(if h { Scope::Host } else { Scope::Guest }, i)
            .map(|_| ()),
        Op::Create(id, x, s, c) => e
            .create_vcpu(
                id,
                GuestPolicy {
                    xcr0_max: x,
                    xss: s,
                },
                c,
            )
            .map(|_| ()),
        Op::Attach(id) => e.attach(id).map(|_| ()),
        Op::Detach(id) => e.detach(id).map(|_| ()),
        Op::Destroy(id) => e.destroy_vcpu(id),
        Op::Xsetbv(id, v) => e.xsetbv(id, v).map(|_| ()),
        Op::Wrmsr(id, m, v) => {
            let m = [GuestMsr::Xfd, GuestMsr::XfdErr, GuestMsr::Xss][usize::from(m % 3)];
            e.wrmsr(id, m, v).map(|_| ())
        }
        Op::Write(who, c, b) => {
            let data = pattern(c, b, e.register_len(c).unwrap_or(3));
            match who {
                Some(id) => e.guest_write(id, c, &data).map(|_| ()),
                None => e.host_write(c, &data).map(|_| ()),
            }
        }
        Op::Read(who, c) => e
            .read_component(who.map(Context::Vcpu).unwrap_or(Context::Host), c)
            .map(|_| ()),
        Op::FailAlloc => {
            e.fail_next_alloc();
            Ok(())
        }
        Op::Policy(id, x, s) => e
            .set_policy(
                id,
                GuestPolicy {
                    xcr0_max: x,
                    xss: s,
                },
            )
            .map(|_| ()),
        Op::GetX(id, n) => {
            let mut b = vec![0u8; n];
            e.get_xsave2(id, &mut b).map(|_| ())
        }
        Op::SetX(id, b) => e.set_xsave2(id, &b).map(|_| ()),
        Op::SetCompacted(id, mutate) => {
            let mut img = e.get_compacted(id)?.as_bytes().to_vec();
            if mutate {
                if let Some(x) = img.get_mut(600) {
                    *x ^= 0xff;
                }
                if let Some(x) = img.get_mut(530) {
                    *x ^= 1;
                }
            }
            e.set_compacted(id, &img).map(|_| ())
        }
        Op::ScheduleOut => e.schedule_out(),
        Op::ScheduleIn => e.schedule_in(),
        Op::SetXcr0(id, v) => e.set_xcr0(id, v).map(|_| ()),
        Op::SetMsr(id, m, v) => {
            let m = [GuestMsr::Xfd, GuestMsr::XfdErr, GuestMsr::Xss][usize::from(m % 3)];
            e.set_msr(id, m, v).map(|_| ())
        }
        Op::Move(id) => {
            // Out of the engine and back (as another thread's engine would take it).
            let v = e.take_vcpu(id)?;
            e.put_vcpu(v).map(|_| ()).map_err(|r| r.error)
        }
    }
}

fn invariants(e: &Engine<ModelCpu>) {
    if e.attached().is_some() {
        assert!(!e.host_live(), "registers belong to the attached vCPU");
    }
    for id in e.vcpu_ids() {
        let v = e.vcpu(id).unwrap();
        let fp = v.fpstate();
        if fp.is_confidential() {
            // Never saved or restored: no buffer at all.
            assert_eq!((fp.size(), fp.as_bytes().len()), (0, 0));
        } else {
            assert_eq!(fp.size(), e.config().size_of(fp.xfeatures()).unwrap());
        }
        assert_eq!(fp.xfeatures() & !e.config().guest.max_features & !0x3, 0);
        let enabled = v.xcr0() & !v.xfd();
        assert!(
            enabled & !fp.xfeatures() == v.realloc_request() & enabled
                || enabled & !fp.xfeatures() == 0,
            "vCPU {id}: XCR0 {:#x} & !XFD {:#x} beyond container {:#x} without a request {:#x}",
            v.xcr0(),
            v.xfd(),
            fp.xfeatures(),
            v.realloc_request()
        );
        assert_eq!(fp.in_use(), e.attached() == Some(id));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_never_panic(ops in proptest::collection::vec(op(), 1..40)) {
        let mut e = engine();
        // Start from a useful state: AMX permitted, one AMX guest and one AVX-512 guest.
        e.request_perm(Scope::Guest, 18).unwrap();
        e.create_vcpu(0, GuestPolicy { xcr0_max: 0x602e7, xss: 0x1800 }, false).unwrap();
        e.create_vcpu(1, GuestPolicy { xcr0_max: 0xe7, xss: 0 }, false).unwrap();
        for op in &ops {
            if let Err(err) = apply(&mut e, op) {
                prop_assert!(!err.message.is_empty());
                prop_assert!(err.to_string().starts_with(err.kind.name()));
                prop_assert!(err.kind != xstate::engine::ErrorKind::Fault, "{op:?}: backend fault: {err}");
            }
            invariants(&e);
        }
    }
}
