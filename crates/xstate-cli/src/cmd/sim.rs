//! `xstate sim SCRIPT.json [--json]`: replays a guest FPU scenario against the engine on the
//! model backend (`xstate::model::ModelCpu` at CPL 0, wrapped in a fault injector) and prints
//! one result per step. The flow is the seeds' two-phase one, shown as it happens: nothing is
//! done behind the script's back (no automatic exit or entry).
//!
//! Script:
//! ```text
//! {"host": {"cpuid": "PATH" | "host", "xss": "0x1800",
//!           "xcr0": "0x…" (optional; default: every supported user feature of a dump, this
//!                          machine's XCR0 for "host"),
//!           "policy": "linux" | "xen" (optional), "insn": "xsaves" | … (optional)},
//!  "guest": {"xcr0_max": "0x602e7", "xss": "0x1800",
//!            "growth": "lazy" (default, the seeds) | "eager" (Linux as merged)},
//!  "steps": [{"do": "request_perm", "scope": "process" | "guest" ("host" = "process"),
//!             "feature": 18},
//!            {"do": "create_vcpu", "vcpu": 0, "confidential": false (optional),
//!             "xcr0_max": …, "xss": … (optional, default: "guest")},
//!            {"do": "enter", "vcpu": 0},                    // attach
//!            {"do": "exit", "vcpu": 0},                     // detach
//!            {"do": "xsetbv", "vcpu": 0, "value": "0x602e7"},           // the running guest
//!            {"do": "wrmsr", "vcpu": 0, "msr": "xfd" | "xss" | "xfd_err", "value": "0x0"},
//!            {"do": "set_xcr0", "vcpu": 0, "value": "0x602e7"},         // the VMM, detached
//!            {"do": "set_msr", "vcpu": 0, "msr": "xfd" | "xfd_err" | "xss", "value": "0x0"},
//!            {"do": "get_xsave2", "vcpu": 0, "file": "PATH"},  // UABI image, relative to the
//!            {"do": "set_xsave2", "vcpu": 0, "file": "PATH"},  // script
//!            {"do": "dirty", "vcpu": 0 (optional: the host thread), "component": "zmm_hi256",
//!             "byte": "0xab"},
//!            {"do": "check", "vcpu": 0 (optional), "component": "zmm_hi256",
//!             "expect": "0xab" | "init"},
//!            {"do": "check", "vcpu": 0, "msr": "xfd_err", "expect": "0x40000"},
//!            {"do": "schedule_out" | "schedule_in", "vcpu": 0 (optional)},   // preemption
//!            {"do": "fail_next_alloc"}, {"do": "fail_next_restore"},
//!            {"do": "set_policy", "vcpu": 0, "xcr0_max": "0xe7", "xss": "0x0"},
//!            {"do": "destroy_vcpu", "vcpu": 0}]}
//! ```
//! Any step may carry `"expect_error": "KIND"` (the step must fail with that kind; it is then
//! reported `ok: true` with `"expected_error"`) and `"comment"`. Any other key is a script
//! error naming it.
//!
//! A guest step whose write needs a larger container reports `"run_ended": true` and the
//! pending bits in `"realloc_request"`, with the size unchanged; the script's next `exit`
//! serves the request (`"realloc": true` only when an allocation happened). With
//! `fail_next_alloc` before that exit, it fails with `enomem`, the vCPU is out with its state
//! intact and the request still pending; the next `enter` serves it first.
//!
//! Result per step (`step` is the index in `steps`, from 0): `{"step": N, "do": "…", "ok":
//! bool, "error": "kind: message" | null, "expected_error": "kind" | null, "guest_fault":
//! "#GP" | "#NM" | "#UD" | null, "realloc": bool, "realloc_request": "0x…" | null,
//! "run_ended": bool, "cleared_by_xfd": "0x…" | null, "attached": bool, "vcpu": {"xfeatures":
//! "0x…", "size": N, "xcr0": "0x…", "xfd": "0x…", "xfd_err": "0x…", "xss": "0x…"} | null,
//! "host_size": N}`. `attached` is whether the step's vCPU is attached (for a step without
//! `vcpu`: whether any vCPU is).
//!
//! Exit status: 0 when every step is ok, 1 otherwise, 2 for a script error (the results of
//! the steps before it are printed first, then the error naming the step).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use xstate::components::Component;
use xstate::cpuid::CpuidDump;
use xstate::engine::fpstate::{init_bytes, pattern};
use xstate::engine::{Context, Engine, EngineError, Growth, GuestMsr, GuestPolicy, Options, Scope};
use xstate::model::inject::FaultInjector;
use xstate::model::{CpuProfile, ModelCpu};
use xstate::strategy::{Policy, SaveInsn};

use crate::common::{hex, parse_hex};

type SimEngine = Engine<FaultInjector<ModelCpu>>;

/// Arguments of `xstate sim`.
#[derive(clap::Args)]
#[command(
    after_help = "Script: {\"host\": {\"cpuid\": PATH | \"host\", \"xss\": HEX}, \"guest\": {\"xcr0_max\": HEX, \"xss\": HEX[, \"growth\": \"lazy\"|\"eager\"]}, \"steps\": [...]}\n\
Steps (\"do\"): request_perm {scope: process|guest, feature}, create_vcpu {vcpu[, confidential]},\n\
  enter/exit/destroy_vcpu {vcpu}, xsetbv {vcpu, value}, wrmsr {vcpu, msr: xfd|xfd_err|xss, value},\n\
  set_xcr0 {vcpu, value}, set_msr {vcpu, msr, value}, get_xsave2/set_xsave2 {vcpu, file},\n\
  dirty {[vcpu,] component, byte}, check {[vcpu,] component|msr, expect: byte|\"init\"|value},\n\
  schedule_out/schedule_in {[vcpu]}, fail_next_alloc, fail_next_restore, set_policy {vcpu, xcr0_max, xss}.\n\
Any step may carry \"expect_error\": KIND and \"comment\". Examples: examples/sim/README.md.\n\
Exit status: 0 every step ok, 1 otherwise, 2 script error (earlier results printed first)."
)]
pub struct Args {
    /// The scenario script (JSON; paths inside are relative to it).
    pub script: PathBuf,
    /// Print one JSON object per step (JSON lines).
    #[arg(long)]
    pub json: bool,
}

/// One step's result.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Index in `steps`.
    pub step: usize,
    /// The `do` value.
    pub action: String,
    /// Success: no error (or exactly the expected one) and, for `check`, the value matched.
    pub ok: bool,
    /// `kind: message`.
    pub error: Option<String>,
    /// The kind the step expected and got.
    pub expected_error: Option<String>,
    /// The kind the step expected but did not get (the step is not ok).
    pub missed_error: Option<String>,
    /// The exception the guest received.
    pub guest_fault: Option<String>,
    /// Why the guest received it (text output only).
    pub fault_detail: String,
    /// The step allocated a larger container.
    pub realloc: bool,
    /// The vCPU's pending realloc request after the step.
    pub realloc_request: Option<u64>,
    /// The guest step ended the run (a realloc request is pending: exit next).
    pub run_ended: bool,
    /// XSTATE_BV bits cleared because IA32_XFD arms them (Linux 6.19).
    pub cleared_by_xfd: Option<u64>,
    /// The step's vCPU (or, without one, any vCPU) is attached after the step.
    pub attached: bool,
    /// The vCPU after the step.
    pub vcpu: Option<Value>,
    /// The host thread's container size after the step.
    pub host_size: u32,
}

impl StepResult {
    /// The JSON form of the contract (module documentation).
    pub fn to_json(&self) -> Value {
        json!({
            "step": self.step,
            "do": self.action,
            "ok": self.ok,
            "error": self.error,
            "expected_error": self.expected_error,
            "guest_fault": self.guest_fault,
            "realloc": self.realloc,
            "realloc_request": self.realloc_request.map(hex),
            "run_ended": self.run_ended,
            "cleared_by_xfd": self.cleared_by_xfd.map(hex),
            "attached": self.attached,
            "vcpu": self.vcpu,
            "host_size": self.host_size,
        })
    }
}

/// The keys each action takes besides `do`, `expect_error` and `comment`.
fn keys_of(action: &str) -> Option<&'static [&'static str]> {
    Some(match action {
        "request_perm" => &["scope", "feature"],
        "create_vcpu" => &["vcpu", "confidential", "xcr0_max", "xss"],
        "enter" | "exit" | "destroy_vcpu" => &["vcpu"],
        "xsetbv" | "set_xcr0" => &["vcpu", "value"],
        "wrmsr" | "set_msr" => &["vcpu", "msr", "value"],
        "get_xsave2" | "set_xsave2" => &["vcpu", "file"],
        "dirty" => &["vcpu", "component", "byte"],
        "check" => &["vcpu", "component", "msr", "expect"],
        "schedule_out" | "schedule_in" => &["vcpu"],
        "fail_next_alloc" | "fail_next_restore" => &[],
        "set_policy" => &["vcpu", "xcr0_max", "xss"],
        _ => return None,
    })
}

fn check_keys(obj: &Value, allowed: &[&str], what: &str) -> anyhow::Result<()> {
    let Some(map) = obj.as_object() else {
        bail!("{what} must be an object");
    };
    for k in map.keys() {
        if !allowed.contains(&k.as_str()) {
            bail!(
                "{what}: unknown key `{k}` (allowed: {})",
                allowed.join(", ")
            );
        }
    }
    Ok(())
}

fn num(v: &Value, what: &str) -> anyhow::Result<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| anyhow!("{what}: {n} is not a u64")),
        Value::String(s) => parse_hex(s).map_err(|e| anyhow!("{what}: {e}")),
        _ => bail!("{what}: expected a number or a hex string, got {v}"),
    }
}

fn field<'a>(step: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    step.get(name)
        .ok_or_else(|| anyhow!("missing field `{name}`"))
}

fn component(step: &Value) -> anyhow::Result<u8> {
    let v = field(step, "component")?;
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => bail!("`component` must be a name or a number"),
    };
    Component::parse_id(&s).ok_or_else(|| anyhow!("unknown component `{s}`"))
}

fn msr_of(step: &Value) -> anyhow::Result<GuestMsr> {
    field(step, "msr")?
        .as_str()
        .and_then(GuestMsr::parse)
        .ok_or_else(|| anyhow!("`msr` must be xfd, xfd_err or xss"))
}

/// The engine a script's `host` and `guest` sections describe, on the model backend.
fn build_engine(script: &Value, dir: &Path) -> anyhow::Result<SimEngine> {
    check_keys(script, &["host", "guest", "steps", "comment"], "the script")?;
    let host = script.get("host").cloned().unwrap_or(json!({}));
    check_keys(
        &host,
        &["cpuid", "xss", "xcr0", "policy", "insn"],
        "section `host`",
    )?;
    let guest = script.get("guest").cloned().unwrap_or(json!({}));
    check_keys(&guest, &["xcr0_max", "xss", "growth"], "section `guest`")?;
    let src = host.get("cpuid").and_then(Value::as_str).unwrap_or("host");
    let dump = if src == "host" {
        crate::common::host_dump()?
    } else {
        crate::common::load_dump(&dir.join(src))?
    };
    let profile = CpuProfile::from_dump(&dump);
    let xcr0 = match host.get("xcr0") {
        Some(v) => num(v, "host.xcr0")?,
        None => default_xcr0(&dump, &profile),
    };
    let xss = match host.get("xss") {
        Some(v) => num(v, "host.xss")?,
        None => 0,
    };
    let policy = match host.get("policy").and_then(Value::as_str) {
        None | Some("linux") => Policy::Linux,
        Some("xen") => Policy::Xen,
        Some(p) => bail!("host.policy: `{p}` is neither linux nor xen"),
    };
    let insn = match host.get("insn").and_then(Value::as_str) {
        None => None,
        Some(s) => Some(SaveInsn::parse(s).ok_or_else(|| anyhow!("host.insn: unknown `{s}`"))?),
    };
    let growth = match guest.get("growth").and_then(Value::as_str) {
        None | Some("lazy") => Growth::Lazy,
        Some("eager") => Growth::Eager,
        Some(g) => bail!("guest.growth: `{g}` is neither lazy nor eager"),
    };
    let cpu = FaultInjector::new(ModelCpu::new(profile));
    Engine::new(
        cpu,
        Options {
            xcr0: Some(xcr0),
            xss: Some(xss),
            policy,
            insn,
            ring0: Some(true),
            growth,
        },
    )
    .map_err(|e| anyhow!("setting up the engine on {}: {e}", dump.source))
}

/// The host XCR0 for a dump: this machine's XCR0 when the dump knows it, otherwise every
/// supported user feature the XCR0 rules allow together (what Linux enables).
fn default_xcr0(dump: &CpuidDump, profile: &CpuProfile) -> u64 {
    if let Some(x) = dump.xcr0 {
        return x;
    }
    let sup = profile.layout.xcr0_supported();
    if profile.layout.check_xcr0(sup).is_ok() {
        return sup;
    }
    // Drop MPX when APX is there (they never coexist), then keep what passes.
    let no_mpx = sup & !xstate::components::mask::MPX;
    if profile.layout.check_xcr0(no_mpx).is_ok() {
        no_mpx
    } else {
        sup & xstate::components::mask::LEGACY
    }
}

fn vcpu_json(e: &SimEngine, id: Option<u32>) -> Option<Value> {
    let v = e.vcpu(id?).ok()?;
    Some(json!({
        "xfeatures": hex(v.fpstate().xfeatures()),
        "size": v.fpstate().size(),
        "xcr0": hex(v.xcr0()),
        "xfd": hex(v.xfd()),
        "xfd_err": hex(v.xfd_err()),
        "xss": hex(v.xss()),
    }))
}

/// What one step produced before the common fields are filled in.
#[derive(Default)]
struct Done {
    error: Option<EngineError>,
    fault: Option<String>,
    fault_detail: String,
    realloc: bool,
    run_ended: bool,
    cleared_by_xfd: Option<u64>,
    mismatch: Option<String>,
}

fn from_result<T>(r: Result<T, EngineError>) -> (Option<T>, Done) {
    match r {
        Ok(v) => (Some(v), Done::default()),
        Err(e) => (
            None,
            Done {
                error: Some(e),
                ..Done::default()
            },
        ),
    }
}

/// A guest step's outcome: a realloc request ends the run and is only reported (the script
/// exits the vCPU itself).
fn guest_outcome(r: Result<xstate::engine::Outcome, EngineError>) -> Done {
    match r {
        Err(err) => Done {
            error: Some(err),
            ..Done::default()
        },
        Ok(o) => Done {
            fault: o.fault.map(|f| f.mnemonic().to_string()),
            fault_detail: o.detail.clone(),
            run_ended: o.realloc,
            ..Done::default()
        },
    }
}

/// Writes `bytes` to `path` atomically (a temporary file in the same directory, renamed over
/// the target), refusing to write over the script itself.
fn write_atomic(path: &Path, bytes: &[u8], script: &Path) -> anyhow::Result<()> {
    if let (Ok(a), Ok(b)) = (path.canonicalize(), script.canonicalize()) {
        if a == b {
            bail!(
                "refusing to write the image over the script {}",
                path.display()
            );
        }
    }
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", path.display()))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot rename {} to {}: {e}", tmp.display(), path.display())
    })
}

/// Runs one step. `Err` is a script error (a bad or unknown key, value or action).
fn run_step(
    e: &mut SimEngine,
    script: &Value,
    path: &Path,
    step: &Value,
) -> anyhow::Result<(Done, Option<u32>)> {
    let action = field(step, "do")?
        .as_str()
        .ok_or_else(|| anyhow!("`do` must be a string"))?;
    let keys = keys_of(action).ok_or_else(|| anyhow!("unknown action `{action}`"))?;
    let mut allowed = vec!["do", "expect_error", "comment"];
    allowed.extend_from_slice(keys);
    check_keys(step, &allowed, &format!("action `{action}`"))?;
    if let Some(k) = step.get("expect_error") {
        if !k.is_string() {
            bail!("`expect_error` must be an error kind (einval, enomem, …)");
        }
    }
    let vcpu = match step.get("vcpu") {
        Some(v) => Some(u32::try_from(num(v, "vcpu")?).map_err(|_| anyhow!("vcpu id too large"))?),
        None => None,
    };
    let need_vcpu = || vcpu.ok_or_else(|| anyhow!("{action}: missing field `vcpu`"));
    let dir = path.parent().unwrap_or(Path::new("."));
    let done = match action {
        "request_perm" => {
            let scope = match field(step, "scope")?.as_str() {
                Some("guest") => Scope::Guest,
                Some("process") | Some("host") => Scope::Host,
                _ => bail!("`scope` must be \"process\" or \"guest\" (\"host\" = \"process\")"),
            };
            let f = num(field(step, "feature")?, "feature")?;
            let f = u32::try_from(f).unwrap_or(u32::MAX);
            from_result(e.request_perm(scope, f)).1
        }
        "create_vcpu" => {
            let g = script.get("guest").cloned().unwrap_or(json!({}));
            let pick = |name: &str| -> anyhow::Result<u64> {
                match step.get(name).or_else(|| g.get(name)) {
                    Some(v) => num(v, name),
                    None => Ok(0),
                }
            };
            let policy = GuestPolicy {
                xcr0_max: pick("xcr0_max")?,
                xss: pick("xss")?,
            };
            let conf = match step.get("confidential") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => bail!("`confidential` must be true or false, got {v}"),
            };
            from_result(e.create_vcpu(need_vcpu()?, policy, conf).map(|_| ())).1
        }
        "enter" => {
            let (r, mut d) = from_result(e.attach(need_vcpu()?));
            d.realloc = r.unwrap_or(false);
            d
        }
        "exit" => {
            let (r, mut d) = from_result(e.detach(need_vcpu()?));
            d.realloc = r.map(|x| x.realloc).unwrap_or(false);
            d
        }
        "xsetbv" => {
            let v = num(field(step, "value")?, "value")?;
            guest_outcome(e.xsetbv(need_vcpu()?, v))
        }
        "wrmsr" => {
            let v = num(field(step, "value")?, "value")?;
            let msr = msr_of(step)?;
            guest_outcome(e.wrmsr(need_vcpu()?, msr, v))
        }
        "set_xcr0" => {
            let v = num(field(step, "value")?, "value")?;
            let (r, mut d) = from_result(e.set_xcr0(need_vcpu()?, v));
            d.realloc = r.map(|x| x.realloc).unwrap_or(false);
            d
        }
        "set_msr" => {
            let v = num(field(step, "value")?, "value")?;
            let msr = msr_of(step)?;
            let (r, mut d) = from_result(e.set_msr(need_vcpu()?, msr, v));
            if let Some(x) = r {
                d.realloc = x.realloc;
                d.cleared_by_xfd = Some(x.cleared_by_xfd);
            }
            d
        }
        "get_xsave2" => {
            let file = dir.join(
                field(step, "file")?
                    .as_str()
                    .ok_or_else(|| anyhow!("`file` must be a path"))?,
            );
            let id = need_vcpu()?;
            let (r, d) = from_result(e.uabi_size().and_then(|n| {
                let mut buf = vec![0u8; n as usize];
                e.get_xsave2(id, &mut buf).map(|_| buf)
            }));
            if let Some(buf) = r {
                write_atomic(&file, &buf, path)?;
            }
            d
        }
        "set_xsave2" => {
            let file = dir.join(
                field(step, "file")?
                    .as_str()
                    .ok_or_else(|| anyhow!("`file` must be a path"))?,
            );
            let buf = std::fs::read(&file)
                .with_context(|| format!("cannot read image {}", file.display()))?;
            let (r, mut d) = from_result(e.set_xsave2(need_vcpu()?, &buf));
            d.cleared_by_xfd = r.map(|x| x.cleared_by_xfd);
            d
        }
        "dirty" => {
            let c = component(step)?;
            let b = num(field(step, "byte")?, "byte")?;
            let b = u8::try_from(b).map_err(|_| anyhow!("`byte` must fit in 8 bits"))?;
            let len = e.register_len(c).unwrap_or(0);
            let data = pattern(c, b, len);
            match vcpu {
                Some(id) => guest_outcome(e.guest_write(id, c, &data)),
                None => {
                    let (r, mut d) = from_result(e.host_write(c, &data));
                    d.realloc = r.unwrap_or(false);
                    d
                }
            }
        }
        "check" => check(e, step, vcpu)?,
        "schedule_out" | "schedule_in" => {
            if let Some(id) = vcpu {
                if e.attached() != Some(id) {
                    return Ok((
                        from_result::<()>(Err(EngineError::new(
                            xstate::engine::ErrorKind::Einval,
                            format!("vCPU {id} is not attached: the host thread runs no vCPU"),
                        )))
                        .1,
                        vcpu,
                    ));
                }
            }
            let r = if action == "schedule_out" {
                e.schedule_out()
            } else {
                e.schedule_in()
            };
            from_result(r).1
        }
        "fail_next_alloc" => {
            e.fail_next_alloc();
            Done::default()
        }
        "fail_next_restore" => {
            e.backend_mut().fail_next_restore();
            Done::default()
        }
        "set_policy" => {
            let policy = GuestPolicy {
                xcr0_max: num(field(step, "xcr0_max")?, "xcr0_max")?,
                xss: match step.get("xss") {
                    Some(v) => num(v, "xss")?,
                    None => 0,
                },
            };
            let (r, mut d) = from_result(e.set_policy(need_vcpu()?, policy));
            d.realloc = r.unwrap_or(false);
            d
        }
        "destroy_vcpu" => from_result(e.destroy_vcpu(need_vcpu()?)).1,
        other => bail!("unknown action `{other}`"),
    };
    Ok((done, vcpu))
}

fn check(e: &mut SimEngine, step: &Value, vcpu: Option<u32>) -> anyhow::Result<Done> {
    let expect = field(step, "expect")?;
    if let Some(m) = step.get("msr") {
        let msr = msr_of(step)?;
        let want = num(expect, "expect")?;
        let id = vcpu.ok_or_else(|| anyhow!("an MSR check needs `vcpu`"))?;
        let (got, mut d) = from_result(e.rdmsr(id, msr));
        if let Some(got) = got {
            if got != want {
                d.mismatch = Some(format!("vCPU {id} {m}: expected {want:#x}, found {got:#x}"));
            }
        }
        return Ok(d);
    }
    let c = component(step)?;
    let ctx = vcpu.map(Context::Vcpu).unwrap_or(Context::Host);
    let who = match vcpu {
        Some(v) => format!("vCPU {v}"),
        None => "host".to_string(),
    };
    let (want_byte, label) = match expect.as_str() {
        Some("init") => (None, "init".to_string()),
        _ => {
            let b = num(expect, "expect")?;
            let b = u8::try_from(b).map_err(|_| anyhow!("`expect` must be a byte or \"init\""))?;
            (Some(b), format!("pattern {b:#04x}"))
        }
    };
    let (got, mut d) = from_result(e.read_component(ctx, c));
    if let Some(got) = got {
        let want = match want_byte {
            None => init_bytes(c, got.len()),
            Some(b) => pattern(c, b, got.len()),
        };
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            d.mismatch = Some(format!(
                "{who} {}: expected {label}, found {:#04x} at register byte {at} (want {:#04x})",
                Component::name_of(c),
                got.get(at).copied().unwrap_or(0),
                want.get(at).copied().unwrap_or(0)
            ));
        }
    }
    Ok(d)
}

/// Replays a script: every step run gives one result; the error, if any, is the script error
/// that stopped the replay (naming the step).
pub fn replay(path: &Path) -> anyhow::Result<(Vec<StepResult>, Option<anyhow::Error>)> {
    let input = crate::input::read(path, "script")?;
    crate::input::expect(
        path,
        &input,
        |k| *k == xstate::filekind::FileKind::Text,
        "a JSON scenario script (see examples/sim/)",
    )?;
    let text = String::from_utf8_lossy(&input.bytes);
    let script: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut e = build_engine(&script, dir)?;
    let steps = script
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{}: no `steps` array", path.display()))?;
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let action = step
            .get("do")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (d, vcpu) = match run_step(&mut e, &script, path, step) {
            Ok(x) => x,
            Err(err) => {
                let msg = if action.is_empty() {
                    format!("step {i}")
                } else {
                    format!("step {i} ({action})")
                };
                return Ok((out, Some(err.context(msg))));
            }
        };
        let kind = match (&d.error, &d.mismatch) {
            (Some(err), _) => Some(err.kind.name()),
            (None, Some(_)) => Some("mismatch"),
            _ => None,
        };
        let mut error = match (&d.error, &d.mismatch) {
            (Some(err), _) => Some(err.to_string()),
            (None, Some(m)) => Some(format!("mismatch: {m}")),
            _ => None,
        };
        let expected = step.get("expect_error").and_then(Value::as_str);
        let (ok, expected_error, missed_error) = match (expected, kind) {
            (None, None) => (true, None, None),
            (None, Some(_)) => (false, None, None),
            (Some(want), Some(got)) if want == got => (true, Some(want.to_string()), None),
            (Some(want), got) => {
                let was = match (&error, got) {
                    (Some(m), _) => format!("failed with {m}"),
                    (None, _) => "succeeded".to_string(),
                };
                error = Some(format!(
                    "step {i} ({action}): expected error `{want}`, but the step {was}"
                ));
                (false, None, Some(want.to_string()))
            }
        };
        let v = vcpu.and_then(|id| e.vcpu(id).ok());
        out.push(StepResult {
            step: i,
            action,
            ok,
            error,
            expected_error,
            missed_error,
            guest_fault: d.fault,
            fault_detail: d.fault_detail,
            realloc: d.realloc,
            realloc_request: v.map(|v| v.realloc_request()),
            run_ended: d.run_ended,
            cleared_by_xfd: d.cleared_by_xfd,
            attached: match vcpu {
                Some(id) => e.attached() == Some(id),
                None => e.attached().is_some(),
            },
            vcpu: vcpu_json(&e, vcpu),
            host_size: e.host_fpstate().size(),
        });
    }
    Ok((out, None))
}

fn print_result(r: &StepResult, script: &Path, as_json: bool) {
    if as_json {
        let mut v = r.to_json();
        v["script"] = json!(script.display().to_string());
        outln!("{v}");
        return;
    }
    let verdict = match (r.ok, &r.expected_error, &r.missed_error) {
        (true, Some(_), _) => "expected error",
        (true, None, _) => "ok",
        (false, _, Some(_)) => "FAIL (expected error did not happen)",
        (false, _, None) => "FAIL",
    };
    let mut line = format!("{:>3} {:<16} {verdict}", r.step, r.action);
    if r.realloc {
        line.push_str(" realloc");
    }
    if r.run_ended {
        line.push_str(" run-ended");
    }
    if let Some(f) = &r.guest_fault {
        line.push_str(&format!(" guest {f}"));
    }
    if let Some(v) = &r.vcpu {
        line.push_str(&format!(
            "  vcpu: xfeatures {} size {} xcr0 {} xfd {}{}",
            v["xfeatures"].as_str().unwrap_or(""),
            v["size"],
            v["xcr0"].as_str().unwrap_or(""),
            v["xfd"].as_str().unwrap_or(""),
            if r.attached { " (attached)" } else { "" }
        ));
    }
    if let Some(q) = r.realloc_request.filter(|&q| q != 0) {
        line.push_str(&format!(" request {q:#x}"));
    }
    line.push_str(&format!("  host {}", r.host_size));
    outln!("{line}");
    if r.guest_fault.is_some() && !r.fault_detail.is_empty() {
        outln!("      guest fault: {}", r.fault_detail);
    }
    if let Some(c) = r.cleared_by_xfd.filter(|&c| c != 0) {
        outln!("      XSTATE_BV bits {c:#x} cleared: armed by IA32_XFD (Linux 6.19)");
    }
    if let Some(e) = &r.error {
        outln!("      {e}");
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let (results, script_error) = replay(&args.script)?;
    let mut failed = Vec::new();
    for r in &results {
        if !r.ok {
            failed.push(match (&r.missed_error, &r.error) {
                // Already names the step.
                (Some(_), Some(e)) => e.clone(),
                (_, e) => format!(
                    "step {} ({}): {}",
                    r.step,
                    r.action,
                    e.as_deref().unwrap_or("failed")
                ),
            });
        }
        print_result(r, &args.script, args.json);
    }
    if let Some(e) = script_error {
        errln!("xstate: error: {}: {e:#}", args.script.display());
        return Ok(2);
    }
    if !args.json {
        if failed.is_empty() {
            outln!("{}: every step as expected", args.script.display());
        } else {
            outln!(
                "{}: {} step(s) not as expected:",
                args.script.display(),
                failed.len()
            );
            for f in &failed {
                outln!("  {f}");
            }
        }
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}
