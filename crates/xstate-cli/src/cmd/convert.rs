//! `xstate convert FILE --to {standard,compacted,fxsave,snapshot} -o OUT [--cpuid FILE |
//! --host] [--xcr0 HEX] [--xss HEX] [--to-cpuid FILE]`: rebuilds an image in another form, or
//! for another machine's layout (`--to-cpuid`), losslessly; a target that cannot hold a
//! present component is an error naming it.
//!
//! Snapshots: `--to snapshot` takes a portable `.xsnap` of the image (the CPU named by
//! `--cpuid`/`--host` is its source); a `.xsnap` input (detected by its content) carries its
//! source CPU and is rebuilt for the destination named by `--to-cpuid` (default: this
//! machine), with the snapshot's XCR0 unless `--xcr0` is given; `--cpuid` with a snapshot is
//! refused, since it always names the CPU an input image comes from.
//!
//! Target components: the standard form holds XCR0's; the compacted form holds XCR0's, plus
//! IA32_XSS's when `--xss` is given (supervisor components are for XRSTORS only). XCR0 is
//! `--xcr0`, else the target machine's (this CPU's, or the XCR0 recorded in the dump, else
//! every user component it supports).

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use xstate::components::mask_names;
use xstate::convert;
use xstate::layout::Form;

use super::inspect::{hex_arg, load_image, machine};
use crate::common::{hex, layout_of, load_dump, names, print_json, CpuSource};
use crate::output::{check_output, write_file};

/// The target of a conversion.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard form (XSAVE, KVM_GET/SET_XSAVE).
    Standard,
    /// Compacted form (XSAVEC/XSAVES).
    Compacted,
    /// The 512-byte FXSAVE legacy area (only x87 and SSE).
    Fxsave,
    /// A portable `.xsnap` snapshot (the CPU given by --cpuid/--host is the image's source).
    Snapshot,
}

/// Arguments of `xstate convert`.
#[derive(clap::Args)]
pub struct Args {
    /// The image file.
    pub file: PathBuf,
    /// The target form.
    #[arg(long, value_enum)]
    pub to: Target,
    /// Where to write the result.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    #[command(flatten)]
    pub cpu: CpuSource,
    /// XCR0 of the target (its components are the standard form's, and the compacted form's).
    #[arg(long, value_parser = hex_arg, value_name = "HEX")]
    pub xcr0: Option<u64>,
    /// IA32_XSS of the target: adds supervisor components to the compacted form.
    #[arg(long, value_parser = hex_arg, value_name = "HEX")]
    pub xss: Option<u64>,
    /// Rebuild for the layout of another machine (a CPUID dump).
    #[arg(long, value_name = "FILE")]
    pub to_cpuid: Option<PathBuf>,
    /// Replace OUT when it exists (never when OUT is one of the inputs).
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Standard => "standard",
            Target::Compacted => "compacted",
            Target::Fxsave => "fxsave",
            Target::Snapshot => "snapshot",
        }
    }
}

/// What was written, for the summary line and `--json`.
struct Written {
    bytes: Vec<u8>,
    what: String,
    xstate_bv: Option<u64>,
    xcomp_bv: Option<u64>,
}

impl Args {
    /// Every file the command reads.
    fn inputs(&self) -> Vec<&std::path::Path> {
        let mut v = vec![self.file.as_path()];
        v.extend(self.cpu.cpuid.as_deref());
        v.extend(self.to_cpuid.as_deref());
        v
    }

    /// Writes the result atomically and reports it.
    fn finish(&self, w: Written) -> anyhow::Result<i32> {
        write_file(&self.output, &w.bytes, &self.inputs(), self.force)?;
        if self.json {
            print_json(&json!({
                "input": self.file.display().to_string(),
                "cpuid": self.cpu.cpuid.as_ref().map(|p| p.display().to_string()),
                "to_cpuid": self.to_cpuid.as_ref().map(|p| p.display().to_string()),
                "to": self.to.name(),
                "output": self.output.display().to_string(),
                "size": w.bytes.len(),
                "xstate_bv": w.xstate_bv.map(hex),
                "xcomp_bv": w.xcomp_bv.map(hex),
                "components": w.xstate_bv.map(names).unwrap_or_default(),
                "summary": w.what,
            }));
        } else {
            outln!(
                "wrote {} from {}: {}",
                self.output.display(),
                self.file.display(),
                w.what
            );
        }
        Ok(0)
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    check_output(&args.output, &args.inputs(), args.force)?;
    let input = crate::input::read(&args.file, "input")?;
    crate::input::expect(
        &args.file,
        &input,
        crate::input::image_or_snapshot,
        crate::input::IMAGE_OR_SNAPSHOT,
    )?;
    if input.kind == xstate::filekind::FileKind::Snapshot {
        return convert_snapshot(&args);
    }
    let src_m = machine(&args.cpu, None, None, None)?;
    let ld = load_image(&args.file, &src_m.layout)?;
    if let Some(e) = &ld.geometry_error {
        anyhow::bail!("{}: {e}", args.file.display());
    }
    if args.to == Target::Snapshot {
        // Supervisor components of a compacted image come with their IA32_XSS bits.
        let xss = args.xss.unwrap_or(match ld.image.header_form() {
            Form::Compacted => ld.image.xcomp_bv() & src_m.layout.xss_supported(),
            Form::Standard => 0,
        });
        let xcr0 = args.xcr0.unwrap_or(src_m.xcr0);
        let (bytes, what) =
            super::xsnap::image_to_snapshot(ld.image.as_bytes(), &src_m.dump, xcr0, xss)?;
        return args.finish(Written {
            bytes,
            what,
            xstate_bv: Some(ld.image.xstate_bv()),
            xcomp_bv: None,
        });
    }
    let (dst_layout, dst_xcr0) = match &args.to_cpuid {
        Some(p) => {
            let d = load_dump(p)?;
            let l = layout_of(&d)?;
            let x = args.xcr0.or(d.xcr0).unwrap_or_else(|| l.xcr0_supported());
            (l, x)
        }
        None => (src_m.layout.clone(), args.xcr0.unwrap_or(src_m.xcr0)),
    };
    let w = match args.to {
        Target::Fxsave => {
            let fx = convert::to_fxsave(&ld.image).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; FXSAVE's 512-byte area holds x87 and SSE only: convert --to standard or --to compacted instead",
                    args.file.display()
                )
            })?;
            Written {
                bytes: fx.to_vec(),
                what: String::from("FXSAVE, 512 bytes"),
                xstate_bv: Some(ld.image.xstate_bv() & xstate::components::mask::LEGACY),
                xcomp_bv: None,
            }
        }
        Target::Standard | Target::Compacted | Target::Snapshot => {
            let form = if args.to == Target::Standard {
                Form::Standard
            } else {
                Form::Compacted
            };
            let m = match form {
                Form::Standard => dst_xcr0,
                Form::Compacted => dst_xcr0 | args.xss.unwrap_or(0),
            };
            let g = dst_layout
                .form(form, m)
                .with_context(|| format!("target {form} layout for components {m:#x}"))?;
            let out = convert::convert(&ld.image, &g).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; give a destination (--to-cpuid, --xcr0) whose components include every one present (`xstate inspect` lists them)",
                    args.file.display()
                )
            })?;
            let what = format!(
                "{form}, {} bytes, XSTATE_BV {:#x} ({}), XCOMP_BV {:#x}",
                out.len(),
                out.xstate_bv(),
                mask_names(out.xstate_bv()),
                out.xcomp_bv()
            );
            Written {
                bytes: out.as_bytes().to_vec(),
                what,
                xstate_bv: Some(out.xstate_bv()),
                xcomp_bv: Some(out.xcomp_bv()),
            }
        }
    };
    args.finish(w)
}

/// `convert SNAP.xsnap --to standard|compacted -o IMG [--to-cpuid DEST] [--xcr0 HEX]`: the
/// image rebuilt with the destination's offsets (default: this machine's). XCR0 defaults to
/// the snapshot's.
fn convert_snapshot(args: &Args) -> anyhow::Result<i32> {
    if args.cpu.cpuid.is_some() {
        anyhow::bail!(
            "{}: a snapshot carries its source CPU, and --cpuid names the CPU an input image comes from; give the destination with --to-cpuid FILE (default: this machine)",
            args.file.display()
        );
    }
    let snap = super::xsnap::load_snapshot(&args.file)?;
    let dest = match &args.to_cpuid {
        Some(p) => load_dump(p)?,
        None => args.cpu.load()?,
    };
    let layout = layout_of(&dest)?;
    let w = match args.to {
        Target::Standard | Target::Compacted => {
            let form = if args.to == Target::Standard {
                Form::Standard
            } else {
                Form::Compacted
            };
            let (bytes, what) = super::xsnap::snapshot_to_image(&snap, &layout, form, args.xcr0)
                .with_context(|| args.file.display().to_string())?;
            let bv = xstate::image::raw_xstate_bv(&bytes);
            let xc = xstate::image::raw_xcomp_bv(&bytes);
            Written {
                bytes,
                what,
                xstate_bv: Some(bv),
                xcomp_bv: Some(xc),
            }
        }
        Target::Snapshot => {
            let bytes = snap.encode()?;
            let what = format!(
                "snapshot v{}, {} bytes",
                xstate::snapshot::VERSION,
                bytes.len()
            );
            Written {
                bytes,
                what,
                xstate_bv: Some(snap.xstate_bv()),
                xcomp_bv: None,
            }
        }
        Target::Fxsave => anyhow::bail!(
            "{}: a snapshot converts to --to standard or --to compacted (then to fxsave)",
            args.file.display()
        ),
    };
    args.finish(w)
}
