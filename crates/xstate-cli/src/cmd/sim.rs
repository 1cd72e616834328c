//! `xstate sim SCRIPT.json [--json]`: replays a guest FPU scenario against the engine on the
//! model backend (`xstate::model::ModelCpu` at CPL 0) and prints one result per step.
//!
//! Script:
//! ```text
//! {"host": {"cpuid": "PATH" | "host", "xss": "0x1800",
//!           "xcr0": "0x…" (optional; default: every supported user feature of a dump, this
//!                          machine's XCR0 for "host"),
//!           "policy": "linux" | "xen" (optional), "insn": "xsaves" | … (optional)},
//!  "guest": {"xcr0_max": "0x602e7", "xss": "0x1800"},
//!  "steps": [{"do": "request_perm", "scope": "guest" | "host", "feature": 18},
//!            {"do": "create_vcpu", "vcpu": 0, "confidential": false (optional),
//!             "xcr0_max": …, "xss": … (optional, default: "guest")},
//!            {"do": "enter", "vcpu": 0},
//!            {"do": "xsetbv", "vcpu": 0, "value": "0x602e7"},
//!            {"do": "wrmsr", "vcpu": 0, "msr": "xfd" | "xss" | "xfd_err", "value": "0x0"},
//!            {"do": "dirty", "vcpu": 0 (optional: the host thread), "component": "zmm_hi256",
//!             "byte": "0xab"},
//!            {"do": "check", "vcpu": 0 (optional), "component": "zmm_hi256",
//!             "expect": "0xab" | "init"},
//!            {"do": "check", "vcpu": 0, "msr": "xfd_err", "expect": "0x40000"},
//!            {"do": "exit", "vcpu": 0},
//!            {"do": "fail_next_alloc"},
//!            {"do": "set_policy", "vcpu": 0, "xcr0_max": "0xe7", "xss": "0x0"},
//!            {"do": "destroy_vcpu", "vcpu": 0}]}
//! ```
//! Any step may carry `"expect_error": "KIND"`: the step is expected to fail with that error
//! kind (its result still says `ok: false`), which keeps the exit status 0.
//!
//! A guest step that ends the run with a realloc request (`realloc: true`) is followed by
//! what a VMM's run loop does: the vCPU exits (the detach reallocates) and enters again. If
//! the detach fails, the step fails and the vCPU stays out.
//!
//! Result per step (`step` is the index in `steps`, from 0):
//! `{"step": N, "do": "…", "ok": bool, "error": "kind: message" | null, "guest_fault": "#GP" |
//! "#NM" | "#UD" | null, "realloc": bool, "vcpu": {"xfeatures": "0x…", "size": N, "xcr0":
//! "0x…", "xfd": "0x…"} | null, "host_size": N}`.
//!
//! Exit status: 0 when every step is ok or failed as its `expect_error` said, 1 otherwise,
//! 2 for an unreadable script.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use xstate::components::Component;
use xstate::cpuid::CpuidDump;
use xstate::engine::fpstate::{init_bytes, pattern};
use xstate::engine::{
    Context, Engine, EngineError, ErrorKind, GuestMsr, GuestPolicy, Options, Scope,
};
use xstate::model::{CpuProfile, ModelCpu};
use xstate::strategy::{Policy, SaveInsn};

use crate::common::{hex, parse_hex};

/// Arguments of `xstate sim`.
#[derive(clap::Args)]
#[command(
    after_help = "Script: {\"host\": {\"cpuid\": PATH | \"host\", \"xss\": HEX}, \"guest\": {\"xcr0_max\": HEX, \"xss\": HEX}, \"steps\": [...]}\n\
Steps (\"do\"): request_perm {scope, feature}, create_vcpu {vcpu[, confidential]}, enter/exit/destroy_vcpu {vcpu},\n\
  xsetbv {vcpu, value}, wrmsr {vcpu, msr: xfd|xfd_err|xss, value}, dirty {[vcpu,] component, byte},\n\
  check {[vcpu,] component|msr, expect: byte|\"init\"|value}, fail_next_alloc, set_policy {vcpu, xcr0_max, xss}.\n\
Any step may carry \"expect_error\": KIND. Examples and what each shows: examples/sim/README.md.\n\
Exit status: 0 every step as expected, 1 otherwise, 2 unreadable script."
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
    /// Success (for `check`: the value matched).
    pub ok: bool,
    /// `kind: message`.
    pub error: Option<String>,
    /// The exception the guest received.
    pub guest_fault: Option<String>,
    /// Why the guest received it (text output only).
    pub fault_detail: String,
    /// The step reallocated a container.
    pub realloc: bool,
    /// The vCPU after the step.
    pub vcpu: Option<Value>,
    /// The host thread's container size after the step.
    pub host_size: u32,
    /// The step failed as its `expect_error` said (or it had none and succeeded).
    pub as_expected: bool,
}

impl StepResult {
    /// The JSON form of the issue.
    pub fn to_json(&self) -> Value {
        json!({
            "step": self.step,
            "do": self.action,
            "ok": self.ok,
            "error": self.error,
            "guest_fault": self.guest_fault,
            "realloc": self.realloc,
            "vcpu": self.vcpu,
            "host_size": self.host_size,
        })
    }
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

fn field<'a>(step: &'a Value, name: &str, i: usize) -> anyhow::Result<&'a Value> {
    step.get(name)
        .ok_or_else(|| anyhow!("step {i}: missing field `{name}`"))
}

fn component(step: &Value, i: usize) -> anyhow::Result<u8> {
    let v = field(step, "component", i)?;
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => bail!("step {i}: `component` must be a name or a number"),
    };
    Component::parse_id(&s).ok_or_else(|| anyhow!("step {i}: unknown component `{s}`"))
}

/// The engine a script's `host` section describes, on the model backend.
fn build_engine(script: &Value, dir: &Path) -> anyhow::Result<Engine<ModelCpu>> {
    let host = script.get("host").cloned().unwrap_or(json!({}));
    let src = host.get("cpuid").and_then(Value::as_str).unwrap_or("host");
    let dump = if src == "host" {
        crate::common::host_dump()?
    } else {
        let p = dir.join(src);
        crate::common::load_dump(&p)?
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
    let cpu = ModelCpu::new(profile);
    Engine::new(
        cpu,
        Options {
            xcr0: Some(xcr0),
            xss: Some(xss),
            policy,
            insn,
            ring0: Some(true),
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

fn vcpu_json(e: &Engine<ModelCpu>, id: Option<u32>) -> Option<Value> {
    let v = e.vcpu(id?).ok()?;
    Some(json!({
        "xfeatures": hex(v.fpstate().xfeatures()),
        "size": v.fpstate().size(),
        "xcr0": hex(v.xcr0()),
        "xfd": hex(v.xfd()),
    }))
}

/// What one step produced before the common fields are filled in.
#[derive(Default)]
struct Done {
    error: Option<EngineError>,
    fault: Option<String>,
    fault_detail: String,
    realloc: bool,
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

/// A guest step's outcome; a realloc request ends the run: exit (reallocating) and enter.
fn guest_outcome(
    e: &mut Engine<ModelCpu>,
    vcpu: u32,
    r: Result<xstate::engine::Outcome, EngineError>,
) -> Done {
    match r {
        Err(err) => Done {
            error: Some(err),
            ..Done::default()
        },
        Ok(o) => {
            let mut d = Done {
                fault: o.fault.map(|f| f.mnemonic().to_string()),
                fault_detail: o.detail.clone(),
                realloc: o.realloc,
                ..Done::default()
            };
            if o.realloc {
                match e.detach(vcpu) {
                    Ok(_) => {
                        if let Err(err) = e.attach(vcpu) {
                            d.error = Some(err);
                        }
                    }
                    Err(err) => d.error = Some(err),
                }
            }
            d
        }
    }
}

fn run_step(
    e: &mut Engine<ModelCpu>,
    script: &Value,
    step: &Value,
    i: usize,
) -> anyhow::Result<(Done, Option<u32>)> {
    let action = field(step, "do", i)?
        .as_str()
        .ok_or_else(|| anyhow!("step {i}: `do` must be a string"))?;
    let vcpu = match step.get("vcpu") {
        Some(v) => Some(
            u32::try_from(num(v, "vcpu")?).map_err(|_| anyhow!("step {i}: vcpu id too large"))?,
        ),
        None => None,
    };
    let need_vcpu = || vcpu.ok_or_else(|| anyhow!("step {i} ({action}): missing field `vcpu`"));
    let done = match action {
        "request_perm" => {
            let scope = match field(step, "scope", i)?.as_str() {
                Some("guest") => Scope::Guest,
                Some("host") => Scope::Host,
                _ => bail!("step {i}: `scope` must be \"guest\" or \"host\""),
            };
            let f = num(field(step, "feature", i)?, "feature")?;
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
            let conf = step
                .get("confidential")
                .and_then(Value::as_bool)
                .unwrap_or(false);
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
            let v = num(field(step, "value", i)?, "value")?;
            let id = need_vcpu()?;
            let r = e.xsetbv(id, v);
            guest_outcome(e, id, r)
        }
        "wrmsr" => {
            let v = num(field(step, "value", i)?, "value")?;
            let msr = field(step, "msr", i)?
                .as_str()
                .and_then(GuestMsr::parse)
                .ok_or_else(|| anyhow!("step {i}: `msr` must be xfd, xfd_err or xss"))?;
            let id = need_vcpu()?;
            let r = e.wrmsr(id, msr, v);
            guest_outcome(e, id, r)
        }
        "dirty" => {
            let c = component(step, i)?;
            let b = num(field(step, "byte", i)?, "byte")?;
            let b = u8::try_from(b).map_err(|_| anyhow!("step {i}: `byte` must fit in 8 bits"))?;
            let len = e.register_len(c).unwrap_or(0);
            let data = pattern(c, b, len);
            match vcpu {
                Some(id) => {
                    let r = e.guest_write(id, c, &data);
                    guest_outcome(e, id, r)
                }
                None => {
                    let (r, mut d) = from_result(e.host_write(c, &data));
                    d.realloc = r.unwrap_or(false);
                    d
                }
            }
        }
        "check" => check(e, step, vcpu, i)?,
        "fail_next_alloc" => {
            e.fail_next_alloc();
            Done::default()
        }
        "set_policy" => {
            let policy = GuestPolicy {
                xcr0_max: num(field(step, "xcr0_max", i)?, "xcr0_max")?,
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
        other => bail!("step {i}: unknown action `{other}`"),
    };
    Ok((done, vcpu))
}

fn check(
    e: &mut Engine<ModelCpu>,
    step: &Value,
    vcpu: Option<u32>,
    i: usize,
) -> anyhow::Result<Done> {
    let expect = field(step, "expect", i)?;
    if let Some(m) = step.get("msr") {
        let msr = m
            .as_str()
            .and_then(GuestMsr::parse)
            .ok_or_else(|| anyhow!("step {i}: `msr` must be xfd, xfd_err or xss"))?;
        let want = num(expect, "expect")?;
        let id = vcpu.ok_or_else(|| anyhow!("step {i}: an MSR check needs `vcpu`"))?;
        let (got, mut d) = from_result(e.rdmsr(id, msr));
        if let Some(got) = got {
            if got != want {
                d.mismatch = Some(format!("vCPU {id} {m}: expected {want:#x}, found {got:#x}"));
            }
        }
        return Ok(d);
    }
    let c = component(step, i)?;
    let ctx = vcpu.map(Context::Vcpu).unwrap_or(Context::Host);
    let who = match vcpu {
        Some(v) => format!("vCPU {v}"),
        None => "host".to_string(),
    };
    let (got, mut d) = from_result(e.read_component(ctx, c));
    if let Some(got) = got {
        let (want, label) = match expect.as_str() {
            Some("init") => (init_bytes(c, got.len()), "init".to_string()),
            _ => {
                let b = num(expect, "expect")?;
                let b = u8::try_from(b)
                    .map_err(|_| anyhow!("step {i}: `expect` must be a byte or \"init\""))?;
                (pattern(c, b, got.len()), format!("pattern {b:#04x}"))
            }
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

/// Replays a script; every step gives one result.
pub fn replay(path: &Path) -> anyhow::Result<Vec<StepResult>> {
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
        let (d, vcpu) = run_step(&mut e, &script, step, i)?;
        let ok = d.error.is_none() && d.mismatch.is_none();
        let error = match (&d.error, &d.mismatch) {
            (Some(err), _) => Some(err.to_string()),
            (None, Some(m)) => Some(format!("mismatch: {m}")),
            _ => None,
        };
        let kind = match (&d.error, &d.mismatch) {
            (Some(err), _) => Some(err.kind.name()),
            (None, Some(_)) => Some("mismatch"),
            _ => None,
        };
        let expected = step.get("expect_error").and_then(Value::as_str);
        let as_expected = kind == expected;
        out.push(StepResult {
            step: i,
            action,
            ok,
            error,
            guest_fault: d.fault,
            fault_detail: d.fault_detail,
            realloc: d.realloc,
            vcpu: vcpu_json(&e, vcpu),
            host_size: e.host_fpstate().size(),
            as_expected,
        });
    }
    Ok(out)
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let results = replay(&args.script)?;
    let mut status = 0;
    for r in &results {
        if !r.as_expected {
            status = 1;
        }
        if args.json {
            println!("{}", r.to_json());
            continue;
        }
        let mut line = format!(
            "{:>3} {:<14} {}",
            r.step,
            r.action,
            if r.ok { "ok" } else { "FAIL" }
        );
        if r.realloc {
            line.push_str(" realloc");
        }
        if let Some(f) = &r.guest_fault {
            line.push_str(&format!(" guest {f}"));
        }
        if let Some(v) = &r.vcpu {
            line.push_str(&format!(
                "  vcpu: xfeatures {} size {} xcr0 {} xfd {}",
                v["xfeatures"].as_str().unwrap_or(""),
                v["size"],
                v["xcr0"].as_str().unwrap_or(""),
                v["xfd"].as_str().unwrap_or("")
            ));
        }
        line.push_str(&format!("  host {}", r.host_size));
        println!("{line}");
        if r.guest_fault.is_some() && !r.fault_detail.is_empty() {
            println!("      guest fault: {}", r.fault_detail);
        }
        if let Some(e) = &r.error {
            let note = if r.as_expected { " (expected)" } else { "" };
            println!("      {e}{note}");
        }
    }
    let _ = ErrorKind::Einval;
    Ok(status)
}
