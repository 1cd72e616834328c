//! `xstate check` (placeholder until its issue lands).

/// Arguments of `xstate check`.
#[derive(clap::Args)]
pub struct Args {
    /// Arguments (not implemented yet).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// Runs the command.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("`xstate check` is not implemented yet")
}
