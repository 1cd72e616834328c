//! `xstate host` (placeholder until the host report lands).

/// Arguments of `xstate host`.
#[derive(clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Also write this machine's CPUID to FILE as JSON (readable by --cpuid).
    #[arg(long, value_name = "FILE")]
    dump_cpuid: Option<std::path::PathBuf>,
}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("`xstate host` is not implemented yet")
}
