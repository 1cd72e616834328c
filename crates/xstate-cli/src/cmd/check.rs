//! `xstate check SNAP (--kvm | --to-cpuid FILE [--xcr0 HEX] [--xss HEX] [--mxcsr-mask HEX])
//! [--json]`: can a snapshot be restored on a destination? Exit 0 compatible, 1 incompatible
//! (every reason printed, inconsistent destination CPUID data included), 2 usage or I/O error.
//!
//! The destination is `--to-cpuid`, as in `convert`: in every command `--cpuid` names the CPU
//! an image comes from, and a snapshot carries its own.

use std::path::PathBuf;

use anyhow::bail;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use anyhow::Context;
use serde_json::json;
use xstate::compat::{check, Destination, Verdict};
use xstate::components::mask_names;
use xstate::snapshot::Snapshot;

use super::xsnap::load_snapshot;
use crate::common::{hex, load_dump, parse_hex, print_json};

/// Arguments of `xstate check`.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("destination").required(true).args(["kvm", "to_cpuid"]))]
pub struct Args {
    /// The snapshot (`.xsnap`).
    pub snapshot: PathBuf,
    /// The destination is this host's KVM (supported guest XCR0, KVM_CAP_XSAVE2, MSR list).
    #[arg(long, conflicts_with_all = ["to_cpuid", "xcr0", "xss"])]
    pub kvm: bool,
    /// The destination is the CPU this dump describes.
    #[arg(long, value_name = "FILE")]
    pub to_cpuid: Option<PathBuf>,
    /// Guest XCR0 mask the destination offers (default: every user component it supports).
    #[arg(long, value_name = "HEX", value_parser = parse_hex, requires = "to_cpuid")]
    pub xcr0: Option<u64>,
    /// Guest IA32_XSS mask the destination offers (default: every supervisor component).
    #[arg(long, value_name = "HEX", value_parser = parse_hex, requires = "to_cpuid")]
    pub xss: Option<u64>,
    /// The destination CPU's MXCSR_MASK (FXSAVE byte 28); checked only when given.
    #[arg(long, value_name = "HEX", value_parser = parse_hex, requires = "to_cpuid")]
    pub mxcsr_mask: Option<u64>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// The destination `--kvm` describes: this host's KVM.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn kvm_destination() -> anyhow::Result<Destination> {
    kvm_dest::destination()
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn kvm_destination() -> anyhow::Result<Destination> {
    bail!("--kvm needs Linux on x86-64")
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod kvm_dest {
    use super::*;

    /// Asks /dev/kvm: guest permissions for every dynamic component KVM supports are
    /// requested first (what a VMM restoring the snapshot would do), then KVM's supported
    /// guest XCR0, KVM_CAP_XSAVE2 and MSR list describe the destination.
    pub fn destination() -> anyhow::Result<Destination> {
        if let Some(why) = xstate_kvm::unavailable() {
            bail!("--kvm: {why}");
        }
        let mut setup = xstate_kvm::KvmSetup::open()?;
        let all = setup.guest_supported_xcr0()?;
        setup
            .request_guest_features(all)
            .context("requesting guest permissions for dynamic components")?;
        let kvm = setup.ready()?;
        Ok(xstate_kvm::snapshot::destination(&kvm))
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let snap = load_snapshot(&args.snapshot)?;
    let dest = if args.kvm {
        kvm_destination()?
    } else {
        let Some(p) = &args.to_cpuid else {
            bail!("give --kvm or --to-cpuid FILE");
        };
        let dump = load_dump(p)?;
        if !xstate::layout::Layout::from_dump(&dump).has_xsave() {
            bail!("{}: the destination CPU has no XSAVE", p.display());
        }
        let mut d = Destination::from_dump(&dump, args.xcr0, args.xss);
        if let Some(m) = args.mxcsr_mask {
            d.mxcsr_mask = Some(
                u32::try_from(m)
                    .map_err(|_| anyhow::anyhow!("--mxcsr-mask {m:#x} does not fit in 32 bits"))?,
            );
        }
        d
    };
    let v = check(&snap, &dest);
    if args.json {
        print_json(&verdict_json(
            &args.snapshot,
            args.to_cpuid.as_deref(),
            &snap,
            &dest,
            &v,
        ));
    } else {
        print_human(&args.snapshot, &snap, &dest, &v);
    }
    Ok(if v.compatible { 0 } else { 1 })
}

fn verdict_json(
    path: &std::path::Path,
    cpuid: Option<&std::path::Path>,
    s: &Snapshot,
    dest: &Destination,
    v: &Verdict,
) -> serde_json::Value {
    json!({
        "compatible": v.compatible,
        "snapshot": {
            "path": path.display().to_string(),
            "source": {
                "vendor": s.source.vendor,
                "family": s.source.family,
                "model": s.source.model,
                "stepping": s.source.stepping,
            },
            "xcr0": hex(s.xcr0),
            "xss": hex(s.xss),
            "xfd": hex(s.xfd),
            "components": s.present().map(xstate::components::Component::name_of).collect::<Vec<_>>(),
            "msrs": s.msrs.keys().map(|&i| hex(u64::from(i))).collect::<Vec<_>>(),
        },
        "destination": {
            "name": dest.name,
            "cpuid": cpuid.map(|p| p.display().to_string()),
            "xcr0_supported": hex(dest.layout.xcr0_supported()),
            "xss_supported": hex(dest.layout.xss_supported()),
            "guest_xcr0": hex(dest.xcr0),
            "guest_xss": hex(dest.xss),
            "xsave2_size": dest.xsave_size,
            "mxcsr_mask": dest.mxcsr_mask.map(|m| hex(u64::from(m))),
        },
        "reasons": v.reasons,
        "notes": v.notes,
    })
}

fn print_human(path: &std::path::Path, s: &Snapshot, dest: &Destination, v: &Verdict) {
    outln!(
        "snapshot:    {} ({} family {:#x} model {:#x}; XCR0 {:#x}, IA32_XSS {:#x}; state: {})",
        path.display(),
        if s.source.vendor.is_empty() {
            "unknown CPU"
        } else {
            s.source.vendor.as_str()
        },
        s.source.family,
        s.source.model,
        s.xcr0,
        s.xss,
        s.component_names()
    );
    outln!(
        "destination: {} (supports XCR0 {:#x}, IA32_XSS {:#x}; guest offers {} / {:#x}{})",
        dest.name,
        dest.layout.xcr0_supported(),
        dest.layout.xss_supported(),
        mask_names(dest.xcr0),
        dest.xss,
        match dest.xsave_size {
            Some(n) => format!("; KVM_CAP_XSAVE2 {n}"),
            None => String::new(),
        }
    );
    if v.compatible {
        outln!("compatible");
    } else {
        outln!("INCOMPATIBLE: {} reason(s)", v.reasons.len());
        for r in &v.reasons {
            match &r.component {
                Some(c) => outln!("  [{}] {c}: {}", r.rule, r.message),
                None => outln!("  [{}] {}", r.rule, r.message),
            }
        }
    }
    for n in &v.notes {
        outln!("  note: {n}");
    }
}
