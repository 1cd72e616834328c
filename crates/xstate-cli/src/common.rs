//! Options and helpers shared by the subcommands.
#![allow(dead_code)] // some helpers are used only by subcommands still to land

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use xstate::cpuid::CpuidDump;
use xstate::layout::Layout;

/// Where CPUID data comes from: this host (default) or a dump file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CpuSource {
    /// Read CPUID leaf 0xD from a dump file (Linux `cpuid -r`, AIDA64, hwloc-gather-cpuid, or
    /// the JSON written by `xstate host --dump-cpuid`); the format is detected.
    #[arg(long, value_name = "FILE", conflicts_with = "host")]
    pub cpuid: Option<PathBuf>,
    /// Use this machine's CPUID (the default when --cpuid is not given).
    #[arg(long)]
    pub host: bool,
}

impl CpuSource {
    /// Loads the dump this source names.
    pub fn load(&self) -> anyhow::Result<CpuidDump> {
        match &self.cpuid {
            Some(p) => load_dump(p),
            None => host_dump(),
        }
    }

    /// True when the data is this machine's.
    #[allow(dead_code)] // for subcommands that read host-only facts (MXCSR mask, /dev/kvm)
    pub fn is_host(&self) -> bool {
        self.cpuid.is_none()
    }
}

/// Reads and parses a CPUID dump file.
pub fn load_dump(path: &Path) -> anyhow::Result<CpuidDump> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read CPUID dump {}", path.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        bail!("{} is empty; {TEXT_DUMP}", path.display());
    }
    let text = text_of(path, &bytes, TEXT_DUMP)?;
    let name = path.display().to_string();
    let dump = CpuidDump::parse(text, &name)?;
    require_leaf_0d(&dump)?;
    Ok(dump)
}

/// What a `--cpuid` file must be, for the message about a file that is not.
pub const TEXT_DUMP: &str = "a CPUID dump is text: Linux `cpuid -r`, AIDA64, hwloc-gather-cpuid, or the JSON `xstate host --dump-cpuid FILE` writes";

/// The text of a file a text reader was given; binary content (a NUL byte or invalid UTF-8)
/// is an error saying what the file looks like and what was expected (`expected`).
pub fn text_of<'a>(path: &Path, bytes: &'a [u8], expected: &str) -> anyhow::Result<&'a str> {
    let binary = |offset: usize| {
        let kind = if xstate::snapshot::is_snapshot(bytes) {
            " (it is an .xsnap snapshot)"
        } else {
            ""
        };
        anyhow::anyhow!(
            "{} is binary{kind}, not text (byte {offset} is {:#04x}); {expected}",
            path.display(),
            bytes.get(offset).copied().unwrap_or(0)
        )
    };
    if let Some(i) = bytes.iter().position(|&b| b == 0) {
        return Err(binary(i));
    }
    std::str::from_utf8(bytes).map_err(|e| binary(e.valid_up_to()))
}

/// A negative verdict about the input data (exit status 1, like any other "no"): CPUID data
/// that cannot be used as it is.
#[derive(Debug)]
pub struct Inconsistent(pub String);

impl std::fmt::Display for Inconsistent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Inconsistent {}

/// A dump whose leaf 1 says XSAVE but that has no CPUID.(0xD,0): every offset and size is
/// missing. Said as such (rather than as an XCR0 of 0 nobody passed).
pub fn require_leaf_0d(dump: &CpuidDump) -> anyhow::Result<()> {
    if Layout::from_dump(dump).has_xsave() && dump.get(0xd, 0).is_none() {
        return Err(Inconsistent(format!(
            "{}: inconsistent CPUID data [cpuid.missing_subleaf]: CPUID.1:ECX[26] says the CPU has XSAVE, but the dump has no leaf 0xD subleaf 0, which gives the supported components and sizes; dump leaf 0xD with all its subleaves (`cpuid -r` and `xstate host --dump-cpuid` do)",
            dump.source
        ))
        .into());
    }
    Ok(())
}

/// This machine's CPUID.
pub fn host_dump() -> anyhow::Result<CpuidDump> {
    #[cfg(target_arch = "x86_64")]
    {
        Ok(CpuidDump::from_host())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        bail!("--host needs an x86-64 machine; give --cpuid FILE")
    }
}

/// Parses a hex (`0x2e7`, `2e7`) or decimal-with-prefix (`0d743`) 64-bit value.
pub fn parse_hex(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.replace('_', "");
    let r = if let Some(d) = t.strip_prefix("0d") {
        d.parse::<u64>().map_err(|e| e.to_string())
    } else {
        let h = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(&t);
        u64::from_str_radix(h, 16).map_err(|e| e.to_string())
    };
    r.map_err(|e| format!("`{s}` is not a hex value: {e}"))
}

/// The component names of a mask (bit 63 left out), as the JSON array every command uses.
pub fn names(m: u64) -> Vec<String> {
    xstate::components::bits(m & !xstate::components::mask::COMPACTED)
        .map(xstate::components::Component::name_of)
        .collect()
}

/// Formats a mask as the lower-case hex string used in every JSON output.
pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}

#[allow(dead_code)] // for subcommands that need XSAVE (image, model, snapshot)
/// The layout of a dump, refusing a CPU without XSAVE where a layout is required.
pub fn layout_of(dump: &CpuidDump) -> anyhow::Result<Layout> {
    let l = Layout::from_dump(dump);
    if !l.has_xsave() {
        bail!(
            "{}: this CPU has no XSAVE (CPUID.1:ECX[26] = 0); only FXSAVE's 512-byte legacy area exists",
            dump.source
        );
    }
    Ok(l)
}

/// Prints JSON to stdout.
pub fn print_json(v: &serde_json::Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    );
}

/// The message of an error chain, each cause once: a cause whose text an outer context
/// already quotes is left out (no "… has no place …: … has no place …").
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if t.is_empty() || out.contains(&t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&t);
    }
    out
}
