//! `xstate layout`: the standard and compacted layouts of a CPU for an XCR0 / IA32_XSS.

use std::path::PathBuf;

use serde_json::{json, Value};
use xstate::components::{bits, mask, mask_names, Component};
use xstate::cpuid::CpuidDump;
use xstate::layout::{FormLayout, Layout};

use crate::common::{hex, parse_hex, print_json, CpuSource};
use crate::output::{check_output, write_file};
use crate::svg;

/// Arguments of `xstate layout`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    src: CpuSource,
    /// XCR0 to lay out (default: every user component the CPU supports).
    #[arg(long, value_parser = parse_hex, value_name = "HEX")]
    xcr0: Option<u64>,
    /// IA32_XSS to lay out in the compacted form (default: every supervisor component the CPU
    /// supports).
    #[arg(long, value_parser = parse_hex, value_name = "HEX")]
    xss: Option<u64>,
    /// Machine-readable output (the contract documented in the README).
    #[arg(long)]
    json: bool,
    /// Draw both forms side by side as an SVG byte map into FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Replace the --svg FILE when it exists.
    #[arg(long, requires = "svg")]
    force: bool,
}

/// A computed layout report: what `layout` prints and `host` reuses.
pub struct Report {
    /// The CPU's geometry.
    pub layout: Layout,
    /// XCR0 laid out.
    pub xcr0: u64,
    /// IA32_XSS laid out.
    pub xss: u64,
    /// Standard form of XCR0.
    pub standard: Result<FormLayout, String>,
    /// Compacted form of XCR0 | IA32_XSS.
    pub compacted: Result<FormLayout, String>,
    /// Consistency problems and notes, as sentences.
    pub warnings: Vec<String>,
    /// True when the CPUID data passed every consistency check.
    pub consistent: bool,
}

impl Report {
    /// Computes the report; an XCR0 or IA32_XSS given (`--xcr0`, `--xss`) that the CPU would
    /// refuse is an error (exit 2). The defaults come from the CPUID data: when the data
    /// cannot give valid ones (no leaf 0xD, say), that is a consistency problem of the data,
    /// reported as such (exit 1), not blamed on an option nobody passed.
    pub fn new(dump: &CpuidDump, xcr0: Option<u64>, xss: Option<u64>) -> anyhow::Result<Report> {
        let layout = Layout::from_dump(dump);
        // The XSETBV/WRMSR rules judge masks the user gave (exit 2); a default taken from the
        // data that breaks them is the data's fault, reported as inconsistent below (exit 1).
        let (given_xcr0, given_xss) = (xcr0.is_some(), xss.is_some());
        let xcr0 = xcr0.unwrap_or(if layout.has_xsave() {
            layout.xcr0_supported()
        } else {
            mask::LEGACY
        });
        let xss = xss.unwrap_or(layout.xss_supported());
        if layout.has_xsave() {
            if given_xcr0 {
                layout.check_xcr0(xcr0)?;
            }
            if given_xss {
                layout.check_xss(xss)?;
            }
        }
        let inconsistencies = layout.consistency_with(dump.xcr0, None);
        let consistent = inconsistencies.is_empty();
        let mut warnings: Vec<String> = dump.notes.clone();
        warnings.extend(
            inconsistencies
                .iter()
                .map(|i| format!("inconsistent CPUID: {i} [{}]", i.rule())),
        );
        for (id, size, arch) in layout.size_notes() {
            warnings.push(format!(
                "component {id} ({}) reports size {size}, its architectural content is {arch} bytes",
                Component::name_of(id)
            ));
        }
        let (standard, compacted) = if layout.has_xsave() {
            (
                layout.standard(xcr0).map_err(|e| e.to_string()),
                layout.compacted(xcr0 | xss).map_err(|e| e.to_string()),
            )
        } else {
            warnings.push(String::from(
                "no XSAVE on this CPU: only FXSAVE's 512-byte legacy area (x87, SSE) exists",
            ));
            let legacy = FormLayout {
                form: xstate::layout::Form::Standard,
                mask: mask::LEGACY,
                size: 512,
                placements: vec![
                    xstate::layout::Placement {
                        id: 0,
                        offset: 0,
                        size: 160,
                    },
                    xstate::layout::Placement {
                        id: 1,
                        offset: 160,
                        size: 256,
                    },
                ]
                .into(),
            };
            (
                Ok(legacy),
                Err(String::from("no compacted form without XSAVE")),
            )
        };
        Ok(Report {
            layout,
            xcr0,
            xss,
            standard,
            compacted,
            warnings,
            consistent,
        })
    }

    /// The JSON contract of `xstate layout --json`.
    pub fn to_json(&self) -> Value {
        let std = self.standard.as_ref().ok();
        let cmp = self.compacted.as_ref().ok();
        let mut comps = Vec::new();
        for id in bits(self.xcr0 | self.xss | mask::LEGACY) {
            let g = self.layout.geometry(id);
            comps.push(json!({
                "id": id,
                "name": Component::name_of(id),
                "size": g.size,
                "standard_offset": std.and_then(|s| s.offset_of(id)),
                "compacted_offset": cmp.and_then(|c| c.offset_of(id)),
                "supervisor": g.supervisor,
                "align64": g.align64,
                "xfd": g.xfd,
            }));
        }
        let mut errors = Vec::new();
        if let Err(e) = &self.standard {
            errors.push(format!("standard form: {e}"));
        }
        if let Err(e) = &self.compacted {
            if self.layout.has_xsave() {
                errors.push(format!("compacted form: {e}"));
            }
        }
        json!({
            "xcr0": hex(self.xcr0),
            "xss": hex(self.xss),
            "xsave": self.layout.has_xsave(),
            "standard_size": std.map(|s| s.size),
            "compacted_size": cmp.map(|c| c.size),
            "max_standard_size": self.layout.max_standard_size(),
            "cpuid_max_standard_size": self.layout.leaf().max_standard_size(),
            "consistent": self.consistent,
            "warnings": self.warnings,
            "errors": errors,
            "components": comps,
        })
    }

    /// Prints the component table.
    pub fn print_table(&self) {
        let std = self.standard.as_ref().ok();
        let cmp = self.compacted.as_ref().ok();
        outln!(
            "  {:>3}  {:<11} {:<10} {:>6}  {:>8}  {:>9}  {:<7} {:<3}",
            "id",
            "component",
            "kind",
            "size",
            "standard",
            "compacted",
            "align64",
            "xfd"
        );
        for id in bits(self.xcr0 | self.xss | mask::LEGACY) {
            let g = self.layout.geometry(id);
            let size = g.size;
            let opt = |v: Option<u32>| v.map_or_else(|| String::from("-"), |v| v.to_string());
            outln!(
                "  {:>3}  {:<11} {:<10} {:>6}  {:>8}  {:>9}  {:<7} {:<3}",
                id,
                Component::name_of(id),
                if g.supervisor { "supervisor" } else { "user" },
                size,
                opt(std.and_then(|s| s.offset_of(id))),
                opt(cmp.and_then(|c| c.offset_of(id))),
                if g.align64 { "yes" } else { "" },
                if g.xfd { "yes" } else { "" },
            );
        }
    }

    /// Prints the size lines and warnings.
    pub fn print_sizes(&self) {
        match &self.standard {
            Ok(s) => outln!("standard size   {:>6}  (XCR0 {})", s.size, hex(self.xcr0)),
            Err(e) => outln!("standard size        ?  ({e})"),
        }
        match &self.compacted {
            Ok(c) => outln!(
                "compacted size  {:>6}  (XCR0|XSS {})",
                c.size,
                hex(self.xcr0 | self.xss)
            ),
            Err(e) => outln!("compacted size       ?  ({e})"),
        }
        outln!(
            "max standard    {:>6}  (every supported user component; CPUID.(0xD,0).ECX says {})",
            self.layout.max_standard_size(),
            self.layout.leaf().max_standard_size()
        );
        if self.consistent {
            outln!("CPUID data      consistent");
        } else {
            outln!("CPUID data      INCONSISTENT (see warnings)");
        }
        for w in &self.warnings {
            outln!("warning: {w}");
        }
    }

    /// Exit status: 1 when the CPUID data breaks a consistency rule or a requested form could
    /// not be laid out, else 0.
    pub fn status(&self) -> i32 {
        let std_bad = self.standard.is_err();
        let cmp_bad = self.layout.has_xsave() && self.compacted.is_err();
        i32::from(!self.consistent || std_bad || cmp_bad)
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let inputs: Vec<&std::path::Path> = args.src.cpuid.as_deref().into_iter().collect();
    if let Some(path) = &args.svg {
        check_output(path, &inputs, args.force)?;
    }
    // `layout` reports inconsistent data (and exits 1) rather than refusing it.
    let dump = args.src.load_unjudged()?;
    let report = Report::new(&dump, args.xcr0, args.xss)?;
    if let Some(path) = &args.svg {
        let doc = svg::render(&report, &dump.source);
        write_file(path, doc.as_bytes(), &inputs, args.force)?;
        if !args.json {
            errln!("wrote {}", path.display());
        }
    }
    if args.json {
        let mut v = report.to_json();
        v["source"] = json!(dump.source);
        v["svg"] = json!(args.svg.as_ref().map(|p| p.display().to_string()));
        print_json(&v);
    } else {
        outln!("source          {} ({})", dump.source, dump.format);
        outln!(
            "XCR0            {} ({})",
            hex(report.xcr0),
            mask_names(report.xcr0)
        );
        outln!(
            "IA32_XSS        {} ({})",
            hex(report.xss),
            if report.xss == 0 {
                String::from("none")
            } else {
                mask_names(report.xss)
            }
        );
        report.print_sizes();
        outln!();
        report.print_table();
    }
    Ok(report.status())
}
