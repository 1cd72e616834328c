//! `xstate kvm cpuid [--without LIST] [--with LIST] [--cpuid FILE | --host] [--json]`: the guest
//! CPUID leaf 0xD (and feature leaves 1, 7, 0x14, 0x1D, 0x1E, 0x80000001) a VMM would set for
//! a chosen set of guest state components, starting from KVM's supported CPUID (default), this
//! host's CPUID (`--host`) or a dump (`--cpuid`). `xstate_kvm::guest_cpuid::apply` puts the
//! result into a KVM_SET_CPUID2 table.
//!
//! Wired from `xstate kvm cpuid` (cmd/kvm.rs) as `kvm_cpuid::run(args)`.

use anyhow::{bail, Context};
use serde_json::json;
use xstate::components::{mask_names, parse_list};
use xstate::guest_cpuid::{guest_cpuid, guest_masks, GuestCpuid};

use crate::common::{hex, layout_of, names, print_json, CpuSource};

/// Arguments of `xstate kvm cpuid`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KvmCpuidArgs {
    /// Components to withhold from the guest (names or numbers; `avx512`, `amx`, `mpx`, `cet`
    /// name groups), e.g. `--without avx512`.
    #[arg(long, value_name = "LIST")]
    pub without: Option<String>,
    /// Offer exactly these components (x87 is always offered); default: every component the
    /// source supports, host-only ones (PASID) excepted.
    #[arg(long, value_name = "LIST")]
    pub with: Option<String>,
    /// CPUID source: a dump file (`--cpuid`), this host's CPUID (`--host`); by default what
    /// this host's KVM supports for guests (KVM_GET_SUPPORTED_CPUID), or the host's CPUID
    /// where /dev/kvm is unavailable.
    #[command(flatten)]
    pub source: CpuSource,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn list(opt: &Option<String>, what: &str) -> anyhow::Result<Option<u64>> {
    match opt {
        None => Ok(None),
        Some(s) => match parse_list(s) {
            Ok(m) => Ok(Some(m)),
            Err(bad) => bail!("--{what}: `{bad}` is not a component name or number"),
        },
    }
}

/// Runs the command; returns the exit status (0, or an error for exit 2).
pub fn run(args: KvmCpuidArgs) -> anyhow::Result<i32> {
    let (dump, source) = load_source(&args.source)?;
    // A table with leaf 0xD supports XSAVE even when its leaf 1 hides the bit (KVM's does on
    // some hosts).
    let layout = if dump.get(0xd, 0).is_some() {
        xstate::layout::Layout::from_leaf(dump.leaf_0d())
    } else {
        layout_of(&dump)?
    };
    let with = list(&args.with, "with")?;
    let without = list(&args.without, "without")?.unwrap_or(0);
    let (xcr0, xss) =
        guest_masks(&layout, with, without).context("cannot choose the guest components")?;
    let g = guest_cpuid(&dump, xcr0, xss).context("cannot compute the guest CPUID")?;
    if args.json {
        print_json(&to_json(&g, &source));
    } else {
        print_human(
            &g,
            &source,
            layout.xcr0_supported() | layout.xss_supported(),
        );
    }
    Ok(0)
}

/// The CPUID table to start from and its description.
fn load_source(src: &CpuSource) -> anyhow::Result<(xstate::cpuid::CpuidDump, String)> {
    if src.cpuid.is_some() {
        let d = src.load()?;
        let name = d.source.clone();
        return Ok((d, name));
    }
    if !src.host {
        if let Some(d) = kvm_supported()? {
            crate::trust::judge(&d)?;
            return Ok((d, String::from("KVM_GET_SUPPORTED_CPUID")));
        }
    }
    Ok((src.load()?, String::from("host CPUID")))
}

/// KVM's supported CPUID, after requesting guest permission for every dynamic component (as
/// a VMM would before creating vCPUs); `None` without /dev/kvm.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn kvm_supported() -> anyhow::Result<Option<xstate::cpuid::CpuidDump>> {
    if xstate_kvm::unavailable().is_some() {
        return Ok(None);
    }
    let mut setup = xstate_kvm::KvmSetup::open()?;
    let all = setup.guest_supported_xcr0()?;
    setup
        .request_guest_features(all)
        .context("requesting guest permissions for dynamic components")?;
    Ok(Some(setup.ready()?.supported_cpuid_dump().clone()))
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn kvm_supported() -> anyhow::Result<Option<xstate::cpuid::CpuidDump>> {
    Ok(None)
}

/// The JSON form: masks and sizes, every entry with hex registers, the cleared feature bits.
pub fn to_json(g: &GuestCpuid, source: &str) -> serde_json::Value {
    let h32 = |v: u32| format!("{v:#x}");
    json!({
        "source": source,
        "xcr0": hex(g.xcr0),
        "xcr0_components": names(g.xcr0),
        "xss": hex(g.xss),
        "xss_components": names(g.xss),
        "standard_size": g.standard_size,
        "compacted_size": g.compacted_size,
        "entries": g.entries.iter().map(|e| json!({
            "leaf": format!("{:#x}", e.function),
            "subleaf": format!("{:#x}", e.index),
            "eax": h32(e.eax), "ebx": h32(e.ebx), "ecx": h32(e.ecx), "edx": h32(e.edx),
        })).collect::<Vec<_>>(),
        "cleared": g.cleared.iter().map(|c| json!({
            "feature": c.feature.name,
            "leaf": format!("{:#x}", c.feature.leaf),
            "subleaf": format!("{:#x}", c.feature.subleaf),
            "reg": c.feature.reg,
            "bit": c.feature.bit,
            "because": c.because,
        })).collect::<Vec<_>>(),
        "notes": g.notes,
    })
}

fn print_human(g: &GuestCpuid, source: &str, supported: u64) {
    outln!("source: {source} (supports {})", mask_names(supported));
    outln!(
        "guest XCR0 {:#x} ({}), IA32_XSS {:#x} ({})",
        g.xcr0,
        mask_names(g.xcr0),
        g.xss,
        if g.xss == 0 {
            String::from("none")
        } else {
            mask_names(g.xss)
        }
    );
    outln!(
        "standard size {} bytes, compacted size {} bytes",
        g.standard_size,
        g.compacted_size
    );
    for n in &g.notes {
        outln!("  {n}");
    }
    outln!();
    outln!("  leaf       sub   eax        ebx        ecx        edx");
    for e in &g.entries {
        outln!(
            "  {:#010x} {:#04x}  {:#010x} {:#010x} {:#010x} {:#010x}",
            e.function,
            e.index,
            e.eax,
            e.ebx,
            e.ecx,
            e.edx
        );
    }
    if !g.cleared.is_empty() {
        outln!();
        outln!("cleared feature bits:");
        for c in &g.cleared {
            let f = &c.feature;
            outln!(
                "  {:<20} CPUID.({:#x},{}).{:?}[{}]  needs {}",
                f.name,
                f.leaf,
                f.subleaf,
                f.reg,
                f.bit,
                c.because
            );
        }
    }
}
