//! `xstate model`: run one XSAVE-family instruction on the executable model
//! (`xstate::model::ModelCpu`) and write the memory or register state after it.
//!
//! * `--state STATE.bin`: the registers before, as a standard-form image read the way a
//!   standard XRSTOR with RFBM = all ones reads it (components whose XSTATE_BV bit is set hold
//!   their registers, the others are in init state; MXCSR comes from bytes 24..27 whatever
//!   XSTATE_BV says). Default: every component in init state.
//! * `--xinuse`: XINUSE as XGETBV(1) would report it (default: STATE.bin's XSTATE_BV, bit 1
//!   also set when MXCSR ≠ 0x1F80 — bit 1 then stands for MXCSR, and XINUSE[1] proper, which
//!   covers the XMM registers, is taken from XSTATE_BV[1]).
//! * Saves: `--mem` is the memory before, `-o` the memory after (same length).
//! * Restores: `--mem` is the image restored, `-o` the register state after as a standard-form
//!   image whose XSTATE_BV is XINUSE after.
//! * A fault exits with status 3 and prints the exception and the SDM rule; nothing is written.

use std::path::PathBuf;

use anyhow::bail;
use serde_json::{json, Value};
use xstate::components::mask;
use xstate::model::{CpuProfile, Fault, ModelCpu, Msr};

use crate::common::{hex, parse_hex, print_json, CpuSource};
use crate::output::{check_output, write_file};

/// The instruction to run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// XSAVE (standard form).
    Xsave,
    /// XSAVEOPT (standard form, init and modified optimizations).
    Xsaveopt,
    /// XSAVEC (compacted form, init optimization).
    Xsavec,
    /// XSAVES (compacted form, supervisor components; CPL 0).
    Xsaves,
    /// XRSTOR (standard or compacted form, as XCOMP_BV[63] says).
    Xrstor,
    /// XRSTORS (compacted form, supervisor components; CPL 0).
    Xrstors,
    /// FXSAVE (512-byte legacy area).
    Fxsave,
    /// FXRSTOR (512-byte legacy area).
    Fxrstor,
}

impl Insn {
    fn is_save(self) -> bool {
        matches!(
            self,
            Insn::Xsave | Insn::Xsaveopt | Insn::Xsavec | Insn::Xsaves | Insn::Fxsave
        )
    }

    fn name(self) -> &'static str {
        match self {
            Insn::Xsave => "xsave",
            Insn::Xsaveopt => "xsaveopt",
            Insn::Xsavec => "xsavec",
            Insn::Xsaves => "xsaves",
            Insn::Xrstor => "xrstor",
            Insn::Xrstors => "xrstors",
            Insn::Fxsave => "fxsave",
            Insn::Fxrstor => "fxrstor",
        }
    }
}

/// Arguments of `xstate model`.
#[derive(clap::Args)]
pub struct Args {
    /// The instruction.
    #[arg(long, value_enum)]
    insn: Insn,
    /// Register state before, as a standard-form image (default: all components in init state).
    #[arg(long, value_name = "STATE.bin")]
    state: Option<PathBuf>,
    /// Memory operand: the memory before (saves) or the image restored (restores).
    #[arg(long, value_name = "MEM.bin")]
    mem: PathBuf,
    /// Output: the memory after (saves) or the register state after (restores).
    #[arg(short = 'o', long = "out", value_name = "OUT.bin")]
    out: PathBuf,
    /// EDX:EAX, the instruction mask (default all ones).
    #[arg(long, value_parser = parse_hex, value_name = "HEX")]
    rfbm: Option<u64>,
    /// XINUSE as XGETBV(1) would report it (default: STATE.bin's XSTATE_BV, bit 1 also set
    /// when MXCSR ≠ 0x1F80).
    #[arg(long, value_parser = parse_hex, value_name = "HEX")]
    xinuse: Option<u64>,
    #[command(flatten)]
    src: CpuSource,
    /// XCR0 (default: the host's XCR0 with --host, else every user component the CPU supports).
    #[arg(long, value_parser = parse_hex, value_name = "HEX")]
    xcr0: Option<u64>,
    /// IA32_XSS (default 0).
    #[arg(long, value_parser = parse_hex, value_name = "HEX")]
    xss: Option<u64>,
    /// IA32_XFD (default 0).
    #[arg(long, value_parser = parse_hex, value_name = "HEX")]
    xfd: Option<u64>,
    /// CPL when the instruction runs (default 0).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    cpl: u8,
    /// Linear address of the memory operand (default 0; not a multiple of 64 → #GP).
    #[arg(long, value_parser = parse_hex, value_name = "HEX", default_value = "0")]
    addr: u64,
    /// Replace OUT.bin when it exists (never when it is STATE.bin or MEM.bin).
    #[arg(long)]
    force: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn fault_exit(f: &Fault, a: &Args) -> i32 {
    if a.json {
        print_json(&json!({
            "insn": a.insn.name(),
            "fault": f.exception.mnemonic(),
            "rule": f.rule,
            "detail": f.detail,
            "state": a.state.as_ref().map(|p| p.display().to_string()),
            "mem": a.mem.display().to_string(),
            "cpuid": a.src.cpuid.as_ref().map(|p| p.display().to_string()),
            "out": a.out.display().to_string(),
            "written": false,
        }));
    } else {
        outln!(
            "fault: {} {} (nothing written to {})",
            f.exception,
            f.rule,
            a.out.display()
        );
        if !f.detail.is_empty() {
            outln!("  {}", f.detail);
        }
    }
    3
}

/// Byte ranges where `a` and `b` differ, as `[start, end)` pairs.
fn changed(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    let n = a.len().min(b.len());
    while i < n {
        if a[i] != b[i] {
            let s = i;
            while i < n && a[i] != b[i] {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut inputs = vec![a.mem.as_path()];
    inputs.extend(a.state.as_deref());
    inputs.extend(a.src.cpuid.as_deref());
    check_output(&a.out, &inputs, a.force)?;
    let dump = a.src.load()?;
    let mut profile = if a.src.is_host() {
        #[cfg(target_arch = "x86_64")]
        {
            CpuProfile::host()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuProfile::from_dump(&dump)
        }
    } else {
        CpuProfile::from_dump(&dump)
    };
    if !profile.xsave && !matches!(a.insn, Insn::Fxsave | Insn::Fxrstor) {
        bail!(
            "{}: this CPU has no XSAVE (CPUID.1:ECX[26] = 0)",
            dump.source
        );
    }
    // A dump may lack leaf 1 (FXSR); every x86-64 CPU has it.
    profile.fxsr = true;
    let mut cpu = ModelCpu::new(profile.clone());
    let xcr0 = a
        .xcr0
        .or(if a.src.is_host() { dump.xcr0 } else { None })
        .unwrap_or_else(|| profile.layout.xcr0_supported());
    if profile.xsave {
        cpu.xsetbv(0, xcr0)
            .map_err(|f| anyhow::anyhow!("--xcr0 {xcr0:#x}: XSETBV would refuse it: {f}"))?;
    }
    if let Some(v) = a.xss.filter(|&v| v != 0) {
        cpu.wrmsr(Msr::Xss, v)
            .map_err(|f| anyhow::anyhow!("--xss {v:#x}: {f}"))?;
    }
    if let Some(v) = a.xfd.filter(|&v| v != 0) {
        cpu.wrmsr(Msr::Xfd, v)
            .map_err(|f| anyhow::anyhow!("--xfd {v:#x}: {f}"))?;
    }
    // The register state before.
    let state = match &a.state {
        Some(p) => crate::input::read(p, "--state")?.bytes,
        None => {
            let mut s = vec![0u8; 576];
            s[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
            s[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
            s
        }
    };
    if state.len() < 576 {
        bail!(
            "--state: {} bytes; a standard-form image has at least 576 (legacy area and header)",
            state.len()
        );
    }
    let bv = u64::from_le_bytes(state[512..520].try_into().unwrap_or([0; 8]));
    let mxcsr = u32::from_le_bytes(state[24..28].try_into().unwrap_or([0; 4]));
    let default_xinuse =
        (bv & profile.layout.xcr0_supported()) | if mxcsr != 0x1f80 { mask::SSE } else { 0 };
    if let Err(f) = cpu.load_state(&state, Some(a.xinuse.unwrap_or(default_xinuse))) {
        bail!("--state: {f}");
    }
    cpu.cpl = a.cpl;
    let xinuse_before = cpu.xinuse();
    let rfbm = a.rfbm.unwrap_or(u64::MAX);
    let mem = crate::input::read(&a.mem, "--mem")?.bytes;

    let (result, out): (Result<(), Fault>, Vec<u8>) = if a.insn.is_save() {
        let mut m = mem.clone();
        let r = match a.insn {
            Insn::Xsave => cpu.xsave(&mut m, a.addr, rfbm),
            Insn::Xsaveopt => cpu.xsaveopt(&mut m, a.addr, rfbm),
            Insn::Xsavec => cpu.xsavec(&mut m, a.addr, rfbm),
            Insn::Xsaves => cpu.xsaves(&mut m, a.addr, rfbm),
            _ => cpu.fxsave(&mut m, a.addr),
        };
        (r, m)
    } else {
        let r = match a.insn {
            Insn::Xrstor => cpu.xrstor(&mem, a.addr, rfbm),
            Insn::Xrstors => cpu.xrstors(&mem, a.addr, rfbm),
            _ => cpu.fxrstor(&mem, a.addr),
        };
        (r, cpu.state_image())
    };
    if let Err(f) = result {
        if f.exception == xstate::model::Exception::Refused {
            bail!("the model cannot run this: {f}");
        }
        return Ok(fault_exit(&f, &a));
    }
    write_file(&a.out, &out, &inputs, a.force)?;

    let xgetbv1 = cpu.xgetbv(1).ok();
    let written: Vec<Value> = if a.insn.is_save() {
        changed(&mem, &out)
            .into_iter()
            .map(|(s, e)| json!(format!("{s}..{e}")))
            .collect()
    } else {
        Vec::new()
    };
    let supervisor: Vec<Value> = xstate::components::bits(cpu.xss)
        .filter_map(|id| {
            cpu.component(id).map(|c| {
                json!({"id": id, "bytes": c.iter().map(|b| format!("{b:02x}")).collect::<String>()})
            })
        })
        .collect();
    let info = cpu.xrstor_info().map(|i| {
        json!({"cpl": i.cpl, "vmx_nonroot": i.vmx_nonroot, "addr": hex(i.addr), "xcomp_bv": hex(i.xcomp_bv)})
    });
    if a.json {
        print_json(&json!({
            "insn": a.insn.name(),
            "rfbm": hex(rfbm),
            "xcr0": hex(cpu.xcr0),
            "xss": hex(cpu.xss),
            "xfd": hex(cpu.xfd),
            "xfd_err": hex(cpu.xfd_err),
            "cpl": cpu.cpl,
            "addr": hex(a.addr),
            "xinuse_before": hex(xinuse_before),
            "xinuse_after": hex(cpu.xinuse()),
            "xgetbv1_after": xgetbv1.map(hex),
            "mxcsr_after": hex(u64::from(cpu.mxcsr())),
            "xmodified": hex(cpu.xmodified()),
            "xrstor_info": info,
            "changed_ranges": written,
            "supervisor_components": supervisor,
            "state": a.state.as_ref().map(|p| p.display().to_string()),
            "mem": a.mem.display().to_string(),
            "cpuid": a.src.cpuid.as_ref().map(|p| p.display().to_string()),
            "out": a.out.display().to_string(),
            "out_size": out.len(),
        }));
    } else {
        outln!(
            "{} with EDX:EAX {:#x}: XCR0 {:#x}, IA32_XSS {:#x}, IA32_XFD {:#x}, CPL {}",
            a.insn.name().to_uppercase(),
            rfbm,
            cpu.xcr0,
            cpu.xss,
            cpu.xfd,
            cpu.cpl
        );
        outln!(
            "XINUSE {:#x} -> {:#x}; MXCSR {:#x}",
            xinuse_before,
            cpu.xinuse(),
            cpu.mxcsr()
        );
        if a.insn.is_save() {
            let ranges: Vec<String> = changed(&mem, &out)
                .into_iter()
                .map(|(s, e)| format!("{s}..{e}"))
                .collect();
            outln!(
                "bytes changed: {}",
                if ranges.is_empty() {
                    "none".into()
                } else {
                    ranges.join(" ")
                }
            );
        }
        outln!(
            "wrote {} ({} bytes) from --mem {}{}",
            a.out.display(),
            out.len(),
            a.mem.display(),
            match &a.state {
                Some(p) => format!(", --state {}", p.display()),
                None => String::new(),
            }
        );
    }
    Ok(0)
}
