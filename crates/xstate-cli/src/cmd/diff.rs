//! `xstate diff A B [--cpuid FILE | --host] [--b-cpuid FILE] [--json]`: compares two images
//! register by register, by meaning (absent components equal init ones; padding, reserved
//! bytes and MXCSR_MASK are ignored). Exit 0 when equal in meaning, 1 when not.

use std::path::PathBuf;

use serde_json::json;
use xstate::diff::diff;

use super::inspect::{load_image, machine};
use crate::common::{layout_of, load_dump, print_json, CpuSource};

/// Arguments of `xstate diff`.
#[derive(clap::Args)]
pub struct Args {
    /// The first image.
    pub a: PathBuf,
    /// The second image.
    pub b: PathBuf,
    #[command(flatten)]
    pub cpu: CpuSource,
    /// The layout of the second image's machine, when it differs from the first's.
    #[arg(long, value_name = "FILE")]
    pub b_cpuid: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let m = machine(&args.cpu, None, None, None)?;
    let lb = match &args.b_cpuid {
        Some(p) => layout_of(&load_dump(p)?)?,
        None => m.layout.clone(),
    };
    let a = load_image(&args.a, &m.layout)?;
    let b = load_image(&args.b, &lb)?;
    for (p, l) in [(&args.a, &a), (&args.b, &b)] {
        if let Some(e) = &l.geometry_error {
            anyhow::bail!("{}: {e}", p.display());
        }
    }
    let d = diff(&a.image, &b.image)?;
    let equal = d.is_empty();
    if args.json {
        print_json(&json!({
            "a": args.a.display().to_string(),
            "b": args.b.display().to_string(),
            "cpuid": args.cpu.cpuid.as_ref().map(|p| p.display().to_string()),
            "b_cpuid": args.b_cpuid.as_ref().map(|p| p.display().to_string()),
            "equal": equal,
            "differences": d,
        }));
    } else if equal {
        outln!(
            "{} and {} are equal in meaning",
            args.a.display(),
            args.b.display()
        );
    } else {
        outln!(
            "{} and {} differ in {} register{}:",
            args.a.display(),
            args.b.display(),
            d.len(),
            if d.len() == 1 { "" } else { "s" }
        );
        for x in &d {
            outln!("  {} {}: {} | {}", x.component_name, x.register, x.a, x.b);
        }
    }
    Ok(if equal { 0 } else { 1 })
}
