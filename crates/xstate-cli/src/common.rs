//! Options and helpers shared by the subcommands.
#![allow(dead_code)] // some helpers are used only by subcommands still to land

use std::path::{Path, PathBuf};

use anyhow::bail;
use xstate::cpuid::CpuidDump;
use xstate::filekind::FileKind;
use xstate::layout::Layout;

/// Where CPUID data comes from: this host (default) or a dump file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CpuSource {
    /// The CPU the input comes from, as a CPUID dump file (Linux `cpuid -r`, AIDA64,
    /// hwloc-gather-cpuid, or the JSON written by `xstate host --dump-cpuid`; the format is
    /// detected). Data that breaks a consistency rule is refused (exit 1; see --trust-cpuid).
    #[arg(long, value_name = "FILE", conflicts_with = "host")]
    pub cpuid: Option<PathBuf>,
    /// Use this machine's CPUID (the default when --cpuid is not given).
    #[arg(long)]
    pub host: bool,
}

impl CpuSource {
    /// Loads the dump this source names, refusing inconsistent data.
    pub fn load(&self) -> anyhow::Result<CpuidDump> {
        match &self.cpuid {
            Some(p) => load_dump(p),
            None => host_dump(),
        }
    }

    /// Loads the dump this source names as it is, consistent or not.
    pub fn load_unjudged(&self) -> anyhow::Result<CpuidDump> {
        match &self.cpuid {
            Some(p) => load_dump_unjudged(p),
            None => host_dump_unjudged(),
        }
    }

    /// True when the data is this machine's.
    #[allow(dead_code)] // for subcommands that read host-only facts (MXCSR mask, /dev/kvm)
    pub fn is_host(&self) -> bool {
        self.cpuid.is_none()
    }
}

/// Reads and parses a CPUID dump file, refusing data that breaks a consistency rule
/// ([`crate::trust::judge`]).
pub fn load_dump(path: &Path) -> anyhow::Result<CpuidDump> {
    let d = load_dump_unjudged(path)?;
    crate::trust::judge(&d)?;
    Ok(d)
}

/// Reads and parses a CPUID dump file as it is, consistent or not (for `layout` and `host`,
/// whose job is to report the data).
pub fn load_dump_unjudged(path: &Path) -> anyhow::Result<CpuidDump> {
    let input = crate::input::read(path, "CPUID dump")?;
    crate::input::expect(
        path,
        &input,
        |k| matches!(k, FileKind::CpuidDump { .. } | FileKind::Text),
        "a CPUID dump (Linux `cpuid -r`, AIDA64, hwloc-gather-cpuid or `xstate host --dump-cpuid` JSON)",
    )?;
    let name = path.display().to_string();
    Ok(CpuidDump::parse_bytes(&input.bytes, &name)?)
}

/// This machine's CPUID, refused like a dump file when inconsistent (a hypervisor can give a
/// guest such data).
pub fn host_dump() -> anyhow::Result<CpuidDump> {
    let d = host_dump_unjudged()?;
    crate::trust::judge(&d)?;
    Ok(d)
}

/// This machine's CPUID as it is.
pub fn host_dump_unjudged() -> anyhow::Result<CpuidDump> {
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
    let mut v = v.clone();
    crate::trust::annotate_json(&mut v);
    outln!(
        "{}",
        serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
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
