//! `xstate batch [--out-dir DIR] [--files-from LIST] {convert,validate,check} [OPTIONS…] --
//! FILE…`: one command over many files in one process, for scripts. CPUID of this machine
//! and every `--cpuid`/`--to-cpuid` dump are read once for the whole batch; each file is
//! handled exactly as `xstate COMMAND [OPTIONS…] FILE` would handle it (same checks, same
//! output line, same atomic output files), and a failure on one file does not stop the
//! others.
//!
//! * `convert` writes each result into `--out-dir` as `NAME.<form>` (`NAME.standard`,
//!   `NAME.compacted`, `NAME.fxsave`, `NAME.xsnap`), NAME being the input's file name; `-o`
//!   is not accepted.
//! * Exit status: 2 when any file had a usage or I/O error, else 1 when any verdict was
//!   negative (invalid, incompatible), else 0.
//! * On a terminal, standard error shows a progress line `[i/n] FILE` (never in files or
//!   pipes, never with `--json`).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The commands a batch can run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchCommand {
    /// `xstate convert` of every file (outputs into --out-dir).
    Convert,
    /// `xstate validate` of every file.
    Validate,
    /// `xstate check` of every snapshot.
    Check,
}

impl BatchCommand {
    fn name(self) -> &'static str {
        match self {
            BatchCommand::Convert => "convert",
            BatchCommand::Validate => "validate",
            BatchCommand::Check => "check",
        }
    }
}

/// Arguments of `xstate batch`.
#[derive(clap::Args)]
pub struct Args {
    /// Where `convert` writes its outputs (required for convert).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Also read input paths from this file, one per line (`-`: standard input).
    #[arg(long, value_name = "LIST")]
    pub files_from: Option<PathBuf>,
    /// The command run on each file.
    #[arg(value_enum)]
    pub command: BatchCommand,
    /// The command's options, then `--`, then the input files.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "OPTIONS… -- FILE…"
    )]
    pub rest: Vec<OsString>,
}

/// The output name of `convert` for input `file` and target `to`.
fn output_name(dir: &Path, file: &Path, to: &str) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| String::from("image"));
    let ext = if to == "snapshot" { "xsnap" } else { to };
    dir.join(format!("{name}.{ext}"))
}

/// The value of `--to` among the options (`--to X` or `--to=X`).
fn option_value(opts: &[OsString], name: &str) -> Option<String> {
    let eq = format!("{name}=");
    let mut it = opts.iter().map(|o| o.to_string_lossy());
    while let Some(o) = it.next() {
        if o == name {
            return it.next().map(|v| v.into_owned());
        }
        if let Some(v) = o.strip_prefix(&eq) {
            return Some(v.to_string());
        }
    }
    None
}

/// Runs the batch.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let Some(sep) = args.rest.iter().position(|a| a == "--") else {
        bail!(
            "put the input files after `--`: xstate batch {} [OPTIONS…] -- FILE…",
            args.command.name()
        );
    };
    let opts = &args.rest[..sep];
    let mut files: Vec<PathBuf> = args.rest[sep + 1..].iter().map(PathBuf::from).collect();
    if let Some(list) = &args.files_from {
        let text = if list.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
                .context("reading the file list from standard input")?
        } else {
            std::fs::read_to_string(list)
                .with_context(|| format!("reading the file list {}", list.display()))?
        };
        files.extend(text.lines().filter(|l| !l.is_empty()).map(PathBuf::from));
    }
    if files.is_empty() {
        bail!("no input files: give them after `--` or with --files-from LIST");
    }
    let json = opts.iter().any(|o| o == "--json");
    let (out_dir, to) = match args.command {
        BatchCommand::Convert => {
            if opts.iter().any(|o| {
                let o = o.to_string_lossy();
                o == "-o" || o == "--output" || o.starts_with("--output=")
            }) {
                bail!("batch convert names each output itself: give --out-dir DIR instead of -o");
            }
            let Some(d) = &args.out_dir else {
                bail!("batch convert needs --out-dir DIR for its outputs");
            };
            if !d.is_dir() {
                bail!("--out-dir {}: not a directory", d.display());
            }
            let Some(to) = option_value(opts, "--to") else {
                bail!("batch convert needs --to {{standard,compacted,fxsave,snapshot}}");
            };
            (Some(d.clone()), to)
        }
        _ => {
            if args.out_dir.is_some() {
                bail!("--out-dir is for batch convert only");
            }
            (None, String::new())
        }
    };
    let progress = !json && std::io::stderr().is_terminal();
    let n = files.len();
    let (mut worst_verdict, mut errors) = (0, 0usize);
    let argv_of = |f: &Path| {
        let mut argv: Vec<OsString> = vec!["xstate".into(), args.command.name().into()];
        argv.extend(opts.iter().cloned());
        argv.push(f.as_os_str().to_owned());
        if let Some(d) = &out_dir {
            argv.push("-o".into());
            argv.push(output_name(d, f, &to).into_os_string());
        }
        argv
    };
    // The options are the same for every file: parsed once (a usage error is reported before
    // any work), then each file's arguments are that parse with the file (and output) set.
    let template = crate::parse(argv_of(&files[0]))
        .map_err(|e| anyhow::anyhow!("batch {}: {}", args.command.name(), e.render()))?;
    let one = |f: &Path| -> anyhow::Result<i32> {
        match &template.command {
            crate::Command::Convert(a) => {
                let mut a = a.clone();
                a.file = f.to_path_buf();
                if let Some(d) = &out_dir {
                    a.output = output_name(d, f, &to);
                }
                super::convert::run(a)
            }
            crate::Command::Validate(a) => {
                let mut a = a.clone();
                a.file = f.to_path_buf();
                super::validate::run(a)
            }
            crate::Command::Check(a) => {
                let mut a = a.clone();
                a.snapshot = f.to_path_buf();
                super::check::run(a)
            }
            _ => bail!("batch runs convert, validate or check"),
        }
    };
    for (i, f) in files.iter().enumerate() {
        if progress && i > 0 {
            err!("\r\x1b[K");
        }
        let r = one(f);
        if progress {
            err!("\r\x1b[K[{}/{n}] {}", i + 1, f.display());
        }
        match r {
            Ok(code) => worst_verdict = worst_verdict.max(code),
            Err(e) => {
                errors += 1;
                errln!(
                    "xstate: error: {}: {}",
                    f.display(),
                    crate::common::message(&e)
                );
            }
        }
    }
    if progress {
        errln!("\r\x1b[K{n} files, {errors} errors");
    }
    Ok(if errors > 0 { 2 } else { worst_verdict })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_options() {
        assert_eq!(
            output_name(Path::new("/o"), Path::new("a/vcpu0.xsnap"), "standard"),
            PathBuf::from("/o/vcpu0.xsnap.standard")
        );
        assert_eq!(
            output_name(Path::new("o"), Path::new("x.img"), "snapshot"),
            PathBuf::from("o/x.img.xsnap")
        );
        let o: Vec<OsString> = ["--json", "--to", "compacted"]
            .iter()
            .map(|s| s.into())
            .collect();
        assert_eq!(option_value(&o, "--to").as_deref(), Some("compacted"));
        let o: Vec<OsString> = ["--to=fxsave"].iter().map(|s| s.into()).collect();
        assert_eq!(option_value(&o, "--to").as_deref(), Some("fxsave"));
    }
}
