//! `xstate host`: this machine's extended-state report.

use std::path::PathBuf;

use serde_json::json;
use xstate::components::mask_names;
use xstate::strategy::{choose, Caps, Policy};

use crate::cmd::layout::Report;
use crate::common::{hex, host_dump_unjudged, print_json};
use crate::output::write_file;

/// Arguments of `xstate host`.
#[derive(clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Also write this machine's CPUID to FILE as JSON (readable by `--cpuid FILE`).
    #[arg(long, value_name = "FILE")]
    dump_cpuid: Option<PathBuf>,
    /// Replace the --dump-cpuid FILE when it exists.
    #[arg(long, requires = "dump_cpuid")]
    force: bool,
}

/// What this host's KVM offers for extended state, or why it cannot be used.
struct KvmFacts {
    usable: bool,
    detail: String,
    api_version: Option<i32>,
    xsave2_size: Option<u32>,
    guest_xcr0: Option<u64>,
}

fn kvm_facts() -> KvmFacts {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        match xstate_kvm::Kvm::open() {
            Ok(kvm) => {
                let (api, size, xcr0) = (
                    kvm.api_version(),
                    kvm.xsave2_size(),
                    kvm.guest_supported_xcr0(),
                );
                KvmFacts {
                    usable: true,
                    detail: format!(
                        "API {api}, KVM_CAP_XSAVE2 {size} bytes, guest XCR0 {} ({}); see `xstate kvm info`",
                        hex(xcr0),
                        mask_names(xcr0)
                    ),
                    api_version: Some(api),
                    xsave2_size: Some(size),
                    guest_xcr0: Some(xcr0),
                }
            }
            Err(e) => KvmFacts {
                usable: false,
                detail: e.to_string(),
                api_version: None,
                xsave2_size: None,
                guest_xcr0: None,
            },
        }
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        KvmFacts {
            usable: false,
            detail: String::from("KVM needs Linux on x86-64"),
            api_version: None,
            xsave2_size: None,
            guest_xcr0: None,
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let dump = host_dump_unjudged()?;
    if let Some(path) = &args.dump_cpuid {
        write_file(path, dump.to_json().as_bytes(), &[], args.force)?;
        if !args.json {
            errln!("wrote this machine's CPUID to {}", path.display());
        }
    }
    let xcr0 = dump.xcr0.unwrap_or(0);
    let xinuse = dump.xinuse;
    // The kernel's IA32_XSS is not readable from user mode; CPUID.(0xD,1).EBX is the compacted
    // size for XCR0 | IA32_XSS, which tells which supervisor components the kernel enabled.
    let layout0 = xstate::layout::Layout::from_dump(&dump);
    let xss_candidates = if layout0.has_xsave() {
        layout0.infer_xss(xcr0)
    } else {
        Vec::new()
    };
    let kernel_xss = match xss_candidates.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let report = Report::new(
        &dump,
        if layout0.has_xsave() && xcr0 != 0 {
            Some(xcr0)
        } else {
            None
        },
        kernel_xss,
    )?;
    let layout = &report.layout;
    let leaf = layout.leaf();
    let user_choice = choose(Caps::of(layout, false), Policy::Linux);
    let ring0_choice = choose(Caps::of(layout, true), Policy::Linux);
    let kvm = kvm_facts();
    let (family, model, stepping) = dump.family_model_stepping();
    let kernel_compacted = leaf.current_compacted_size();
    if args.json {
        let mut v = report.to_json();
        v["source"] = json!(dump.source);
        v["dump_cpuid"] = json!(args.dump_cpuid.as_ref().map(|p| p.display().to_string()));
        v["cpu"] = json!({
            "vendor": dump.vendor_string(),
            "brand": dump.brand(),
            "family": family, "model": model, "stepping": stepping,
        });
        v["xsave"] = json!(layout.has_xsave());
        v["os_xsave"] = json!(dump.os_xsave());
        v["xcr0_supported"] = json!(hex(layout.xcr0_supported()));
        v["xss_supported"] = json!(hex(layout.xss_supported()));
        v["xinuse"] = json!(xinuse.map(hex));
        v["kernel_xss"] = json!(kernel_xss.map(hex));
        v["kernel_compacted_size"] = json!(kernel_compacted);
        v["capabilities"] = json!({
            "xsaveopt": leaf.has_xsaveopt(), "xsavec": leaf.has_xsavec(),
            "xgetbv1": leaf.has_xgetbv1(), "xsaves": leaf.has_xsaves(), "xfd": leaf.has_xfd(),
        });
        v["save_instruction"] = json!({
            "user": {"insn": user_choice.insn.name(), "reason": user_choice.reason},
            "ring0": {"insn": ring0_choice.insn.name(), "reason": ring0_choice.reason},
        });
        v["kvm"] = json!({
            "usable": kvm.usable, "detail": kvm.detail, "api_version": kvm.api_version,
            "xsave2_size": kvm.xsave2_size, "guest_xcr0": kvm.guest_xcr0.map(hex),
        });
        print_json(&v);
        return Ok(report.status());
    }
    outln!(
        "CPU             {} {} (family {family:#x}, model {model:#x}, stepping {stepping})",
        dump.vendor_string(),
        dump.brand().unwrap_or_default()
    );
    if !layout.has_xsave() {
        outln!("XSAVE           not supported: FXSAVE's 512-byte legacy area only");
        outln!("save            {}", user_choice.reason);
        outln!("KVM             {}", kvm.detail);
        return Ok(0);
    }
    outln!(
        "XCR0            {} ({})",
        hex(xcr0),
        if dump.os_xsave() {
            mask_names(xcr0)
        } else {
            String::from("CR4.OSXSAVE clear: the OS has not enabled XSAVE")
        }
    );
    outln!(
        "XCR0 supported  {} ({})",
        hex(layout.xcr0_supported()),
        mask_names(layout.xcr0_supported())
    );
    outln!(
        "IA32_XSS supp.  {} ({})",
        hex(layout.xss_supported()),
        if layout.xss_supported() == 0 {
            String::from("none")
        } else {
            mask_names(layout.xss_supported())
        }
    );
    match kernel_xss {
        Some(x) => outln!(
            "IA32_XSS (OS)   {} ({}): CPUID.(0xD,1).EBX = {kernel_compacted} is the compacted size of XCR0|{}",
            hex(x),
            if x == 0 { String::from("none") } else { mask_names(x) },
            hex(x)
        ),
        None => outln!(
            "IA32_XSS (OS)   unknown: CPUID.(0xD,1).EBX = {kernel_compacted} matches {} candidate(s)",
            xss_candidates.len()
        ),
    }
    match xinuse {
        Some(x) => outln!(
            "XINUSE          {} ({}) as XGETBV(1) saw it in this process",
            hex(x),
            mask_names(x)
        ),
        None => outln!("XINUSE          not available (no XGETBV with ECX=1)"),
    }
    outln!(
        "instructions    XSAVEOPT {}  XSAVEC {}  XGETBV1 {}  XSAVES {}  XFD {}",
        yn(leaf.has_xsaveopt()),
        yn(leaf.has_xsavec()),
        yn(leaf.has_xgetbv1()),
        yn(leaf.has_xsaves()),
        yn(leaf.has_xfd())
    );
    // Each reason starts with the instruction's mnemonic.
    outln!("save (user)     {}", user_choice.reason);
    outln!("save (ring 0)   {}", ring0_choice.reason);
    outln!(
        "KVM             {} ({})",
        if kvm.usable { "usable" } else { "not usable" },
        kvm.detail
    );
    report.print_sizes();
    outln!();
    report.print_table();
    Ok(report.status())
}

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
