//! Fault injection into the engine (issue 10): random operation sequences on the Sapphire
//! Rapids model and on the model of this machine's CPU, replayed once per backend call with that call failing
//! (`xstate::model::inject::FaultInjector`). Three contexts hold distinct byte patterns —
//! the host thread 0x11 in ZMM_Hi256, vCPU 0 (AMX) 0xaa in ZMM_Hi256 and 0xa5 in its tiles,
//! vCPU 1 (AVX-512) 0xbb — and after every operation:
//!
//! * no context ever reads another context's pattern (only its own or the init value);
//! * an operation during which the injected fault fired and that returned an error left the
//!   engine as it was: which vCPU is attached, every vCPU's XCR0, XFD, XFD_ERR, IA32_XSS,
//!   realloc request and container features and size, and every context's registers as the
//!   context reads them (live registers or container).

use proptest::prelude::*;
use xstate::components::mask;
use xstate::cpuid::CpuidDump;
use xstate::engine::fpstate::pattern;
use xstate::engine::{Context, Engine, EngineError, GuestMsr, GuestPolicy, Options, Scope};
use xstate::model::inject::FaultInjector;
use xstate::model::{CpuProfile, ModelCpu};
use xstate::strategy::SaveInsn;

const ZMM: u8 = 6;
const TILES: u8 = 18;

type E = Engine<FaultInjector<ModelCpu>>;

#[derive(Clone, Debug)]
enum Op {
    Attach(u32),
    Detach(u32),
    ScheduleOut,
    ScheduleIn,
    Xsetbv(u32, u64),
    GuestXfd(u32, u64),
    SetXcr0(u32, u64),
    SetXfd(u32, u64),
    Write(Option<u32>, u8),
    CopyRoundTrip(u32),
    Policy(u32, u64),
    FailAlloc,
}

fn op() -> impl Strategy<Value = Op> {
    let v = 0u32..2;
    let xcr0 = prop_oneof![Just(0x7u64), Just(0xe7), Just(0x2e7), Just(0x602e7)];
    let xfd = prop_oneof![Just(0u64), Just(0x40000)];
    prop_oneof![
        3 => v.clone().prop_map(Op::Attach),
        3 => v.clone().prop_map(Op::Detach),
        1 => Just(Op::ScheduleOut),
        1 => Just(Op::ScheduleIn),
        2 => (v.clone(), xcr0.clone()).prop_map(|(a, b)| Op::Xsetbv(a, b)),
        1 => (v.clone(), xfd.clone()).prop_map(|(a, b)| Op::GuestXfd(a, b)),
        1 => (v.clone(), xcr0).prop_map(|(a, b)| Op::SetXcr0(a, b)),
        1 => (v.clone(), xfd).prop_map(|(a, b)| Op::SetXfd(a, b)),
        3 => (proptest::option::of(v.clone()), prop_oneof![Just(ZMM), Just(TILES)])
            .prop_map(|(a, b)| Op::Write(a, b)),
        1 => v.clone().prop_map(Op::CopyRoundTrip),
        1 => (v, prop_oneof![Just(0x2e7u64), Just(0x602e7)]).prop_map(|(a, b)| Op::Policy(a, b)),
        1 => Just(Op::FailAlloc),
    ]
}

/// A host: its CPU profile, XCR0 and IA32_XSS.
struct Host {
    p: CpuProfile,
    xcr0: u64,
    xss: u64,
}

/// The Sapphire Rapids fixture and this machine's CPU (both on the model).
fn hosts() -> Vec<Host> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt");
    let d = CpuidDump::parse(&std::fs::read_to_string(path).unwrap(), "spr").unwrap();
    let me = CpuidDump::from_host();
    vec![
        Host {
            p: CpuProfile::from_dump(&d),
            xcr0: 0x602e7,
            xss: 0x1800,
        },
        Host {
            xcr0: me.xcr0.unwrap_or(0x3),
            xss: 0,
            p: CpuProfile::from_dump(&me),
        },
    ]
}

/// The engine with vCPU 0 (every feature of the host) and vCPU 1 (no AMX); `None` when the
/// host cannot save with `insn`.
fn engine(h: &Host, insn: SaveInsn) -> Option<E> {
    let cpu = FaultInjector::new(ModelCpu::new(h.p.clone()));
    let mut e = Engine::new(
        cpu,
        Options {
            xcr0: Some(h.xcr0),
            xss: Some(h.xss),
            ring0: Some(true),
            insn: Some(insn),
            ..Options::default()
        },
    )
    .ok()?;
    if h.xcr0 & mask::AMX == mask::AMX {
        e.request_perm(Scope::Guest, 18).unwrap();
    }
    e.create_vcpu(
        0,
        GuestPolicy {
            xcr0_max: h.xcr0,
            xss: 0,
        },
        false,
    )
    .unwrap();
    e.create_vcpu(
        1,
        GuestPolicy {
            xcr0_max: h.xcr0 & !mask::AMX,
            xss: 0,
        },
        false,
    )
    .unwrap();
    Some(e)
}

/// The pattern byte a context writes into a component.
fn own(ctx: Option<u32>, comp: u8) -> u8 {
    match (ctx, comp) {
        (None, _) => 0x11,
        (Some(0), TILES) => 0xa5,
        (Some(0), _) => 0xaa,
        _ => 0xbb,
    }
}

/// Applies `op`; its masks are taken within the host's XCR0 (x87 always).
fn apply(e: &mut E, xcr0: u64, op: &Op) -> Result<(), EngineError> {
    let within = |m: u64| m & xcr0 | mask::X87;
    match op.clone() {
        Op::Attach(id) => e.attach(id).map(|_| ()),
        Op::Detach(id) => e.detach(id).map(|_| ()),
        Op::ScheduleOut => e.schedule_out(),
        Op::ScheduleIn => e.schedule_in(),
        Op::Xsetbv(id, v) => e.xsetbv(id, within(v)).map(|_| ()),
        Op::GuestXfd(id, v) => e.wrmsr(id, GuestMsr::Xfd, v).map(|_| ()),
        Op::SetXcr0(id, v) => e.set_xcr0(id, within(v)).map(|_| ()),
        Op::SetXfd(id, v) => e.set_msr(id, GuestMsr::Xfd, v).map(|_| ()),
        Op::Write(ctx, comp) => {
            let data = pattern(comp, own(ctx, comp), e.register_len(comp).unwrap());
            match ctx {
                None => e.host_write(comp, &data).map(|_| ()),
                Some(id) => {
                    let o = e.guest_write(id, comp, &data)?;
                    match o.fault {
                        // The injected fault reached the guest's register write: report it.
                        Some(_) if o.detail.contains("injected") => {
                            Err(EngineError::new(xstate::engine::ErrorKind::Fault, o.detail))
                        }
                        _ => Ok(()),
                    }
                }
            }
        }
        Op::CopyRoundTrip(id) => {
            let mut buf = vec![0u8; e.uabi_size()? as usize];
            e.get_xsave2(id, &mut buf)?;
            e.set_xsave2(id, &buf).map(|_| ())
        }
        Op::Policy(id, x) => e
            .set_policy(
                id,
                GuestPolicy {
                    xcr0_max: within(x),
                    xss: 0,
                },
            )
            .map(|_| ()),
        Op::FailAlloc => {
            e.fail_next_alloc();
            Ok(())
        }
    }
}

/// What the engine looks like from outside: attached vCPU, vCPU registers and containers, and
/// every context's ZMM_Hi256 and tiles as the context reads them.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    attached: Option<u32>,
    vcpus: Vec<(u64, u64, u64, u64, u64, u64, u32)>,
    regs: Vec<Result<Regs, String>>,
}

/// Register bytes, compared whole but printed short.
#[derive(PartialEq, Eq)]
struct Regs(Vec<u8>);

impl std::fmt::Debug for Regs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        match b.first() {
            Some(&x) if b.iter().all(|&y| y == x) => write!(f, "{x:#04x}x{}", b.len()),
            _ => write!(f, "{:02x?}…({} bytes)", &b[..b.len().min(8)], b.len()),
        }
    }
}

fn seen(e: &mut E) -> Seen {
    let mut vcpus = Vec::new();
    for id in [0u32, 1] {
        let v = e.vcpu(id).unwrap();
        vcpus.push((
            v.xcr0(),
            v.xfd(),
            v.xfd_err(),
            v.xss(),
            v.realloc_request(),
            v.fpstate().xfeatures(),
            v.fpstate().size(),
        ));
    }
    let mut regs = Vec::new();
    for ctx in [Context::Host, Context::Vcpu(0), Context::Vcpu(1)] {
        for comp in [ZMM, TILES] {
            regs.push(
                e.read_component(ctx, comp)
                    .map(Regs)
                    .map_err(|err| err.kind.name().to_string()),
            );
        }
    }
    Seen {
        attached: e.attached(),
        vcpus,
        regs,
    }
}

/// No context holds another's pattern.
fn isolated(e: &mut E, s: &Seen, step: usize) {
    let ctxs = [None, Some(0u32), Some(1)];
    for (ci, ctx) in ctxs.iter().enumerate() {
        for (k, comp) in [ZMM, TILES].into_iter().enumerate() {
            let Ok(Regs(got)) = &s.regs[ci * 2 + k] else {
                continue;
            };
            let len = e.register_len(comp).unwrap();
            let init = xstate::engine::fpstate::init_bytes(comp, len);
            let mine = pattern(comp, own(*ctx, comp), len);
            assert!(
                *got == init || *got == mine,
                "step {step}: context {ctx:?} component {comp} holds {:#04x}…, neither init nor its own {:#04x}",
                got[0],
                own(*ctx, comp)
            );
        }
    }
}

/// Replays `ops`, the `fail_at`-th backend call failing; returns the number of backend calls
/// and of operations that failed on the injected fault.
fn run(h: &Host, insn: SaveInsn, ops: &[Op], fail_at: Option<u64>) -> (u64, usize) {
    let mut failed_on_injection = 0;
    let Some(mut e) = engine(h, insn) else {
        return (0, 0);
    };
    let setup = e.backend().calls();
    if let Some(n) = fail_at {
        e.backend_mut().fail_call(n);
    }
    for (i, op) in ops.iter().enumerate() {
        let before = seen(&mut e);
        let injected = e.backend().injected();
        let r = apply(&mut e, h.xcr0, op);
        let after = seen(&mut e);
        isolated(&mut e, &after, i);
        if let Err(err) = &r {
            assert!(!err.message.is_empty());
            if e.backend().injected() > injected {
                failed_on_injection += 1;
                assert_eq!(
                    after, before,
                    "step {i} {op:?} failed on the injected fault ({err}) but changed the engine"
                );
            } else {
                assert_ne!(
                    err.kind,
                    xstate::engine::ErrorKind::Fault,
                    "step {i} {op:?}: a fault without injection: {err}"
                );
            }
        }
    }
    (e.backend().calls() - setup, failed_on_injection)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn every_failing_backend_call_leaves_the_engine_as_it_was(
        ops in proptest::collection::vec(op(), 1..14),
        insn in prop_oneof![Just(SaveInsn::Xsaves), Just(SaveInsn::Xsavec), Just(SaveInsn::Xsave)],
    ) {
        for h in hosts() {
            let (calls, _) = run(&h, insn, &ops, None);
            for n in 1..=calls {
                // The fault reaches the caller (none is swallowed) and changed nothing.
                prop_assert_eq!(run(&h, insn, &ops, Some(n)).1, 1, "call {} of {}", n, calls);
            }
        }
    }
}

/// The hand-picked sequence of the two-phase flow with every call failing in turn.
#[test]
fn two_phase_realloc_with_every_call_failing() {
    let ops = [
        Op::Write(None, ZMM),
        Op::Attach(0),
        Op::Xsetbv(0, 0x602e7),
        Op::Detach(0),
        Op::Attach(0),
        Op::Write(Some(0), ZMM),
        Op::Write(Some(0), TILES),
        Op::ScheduleOut,
        Op::ScheduleIn,
        Op::Detach(0),
        Op::Attach(1),
        Op::Xsetbv(1, 0xe7),
        Op::Write(Some(1), ZMM),
        Op::Detach(1),
        Op::SetXfd(0, 0x40000),
        Op::Attach(0),
        Op::Detach(0),
    ];
    // And the request left pending by an allocation failure, served by the next attach.
    let pending = [
        Op::Write(None, ZMM),
        Op::Attach(0),
        Op::Write(Some(0), ZMM),
        Op::Xsetbv(0, 0x602e7),
        Op::FailAlloc,
        Op::Detach(0),
        Op::Attach(0),
        Op::Write(Some(0), TILES),
        Op::ScheduleOut,
        Op::Detach(0),
        Op::Attach(0),
        Op::Detach(0),
    ];
    for h in hosts() {
        for (ops, insn) in [
            (&ops[..], SaveInsn::Xsaves),
            (&ops[..], SaveInsn::Xsavec),
            (&ops[..], SaveInsn::Xsave),
            (&pending[..], SaveInsn::Xsaves),
            (&pending[..], SaveInsn::Xsave),
        ] {
            let (calls, failed) = run(&h, insn, ops, None);
            assert_eq!(failed, 0);
            assert!(calls > 10, "{calls} backend calls");
            for n in 1..=calls {
                // Every injected fault reaches the caller as an error (none is swallowed).
                assert_eq!(
                    run(&h, insn, ops, Some(n)).1,
                    1,
                    "{insn:?}: call {n} of {calls}"
                );
            }
        }
    }
}
