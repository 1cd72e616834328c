//! `xstate inspect FILE [--cpuid FILE | --host] [--json]`: the header and the registers of
//! every present component of an XSAVE image (or a 512-byte FXSAVE image, or an `.xsnap`
//! snapshot, shown on its source CPU's layout with its registers and MSRs).
//!
//! The form comes from XCOMP_BV bit 63; offsets from CPUID leaf 0xD of the named CPU. Only
//! components whose XSTATE_BV bit is set are shown. Registers print as the hex of their value
//! read as a little-endian unsigned integer; x87 registers also as decimal floating point.
//!
//! This module also holds the helpers the image subcommands share (reading an image file,
//! resolving XCR0/IA32_XSS/MXCSR mask from options, the CPU or a dump).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use xstate::components::{bits, mask, mask_names, Component};
use xstate::cpuid::CpuidDump;
use xstate::image::registers::{le_hex, registers};
use xstate::image::{ImageError, Xsave, XsaveImage, FXSAVE_SIZE, MIN_SIZE};
use xstate::layout::{Form, FormLayout, Layout};

use crate::common::{hex, layout_of, parse_hex, print_json, CpuSource};

/// Arguments of `xstate inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The image file (XSAVE standard or compacted form, or a 512-byte FXSAVE image).
    pub file: PathBuf,
    #[command(flatten)]
    pub cpu: CpuSource,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// An image read from a file, with what kind of file it was.
pub(crate) struct Loaded {
    /// The image (a FXSAVE file becomes a standard image of x87 and SSE).
    pub image: XsaveImage,
    /// The file was a 512-byte FXSAVE image.
    pub fxsave: bool,
    /// Bytes in the file.
    pub file_size: usize,
    /// Why the components beyond the legacy area could not be placed, when they could not.
    pub geometry_error: Option<ImageError>,
    /// The file was a snapshot (`.xsnap`): the image is rebuilt on its source CPU's layout.
    pub snapshot: Option<xstate::snapshot::Snapshot>,
}

/// The legacy-only geometry of a form: x87 and SSE, 576 bytes.
fn legacy_geometry(form: Form) -> FormLayout {
    FormLayout {
        form,
        mask: mask::LEGACY,
        size: MIN_SIZE as u32,
        placements: Default::default(),
    }
}

/// Reads an image file. A 512-byte file is an FXSAVE image. When the layout cannot place the
/// image's components (a compacted XCOMP_BV naming components the CPU does not know, a
/// truncated file), the image is still read with its legacy area and header, and the reason is
/// kept in `geometry_error`.
pub(crate) fn load_image(path: &Path, layout: &Layout) -> anyhow::Result<Loaded> {
    let input = crate::input::read(path, "image")?;
    crate::input::expect(
        path,
        &input,
        crate::input::image_or_snapshot,
        crate::input::IMAGE_OR_SNAPSHOT,
    )?;
    let bytes = input.bytes;
    let file_size = bytes.len();
    if crate::input::snapshot(&input.kind) {
        let snap = super::xsnap::decode(path, &bytes)?;
        return Ok(Loaded {
            image: super::xsnap::source_image(path, &snap)?,
            fxsave: false,
            file_size,
            geometry_error: None,
            snapshot: Some(snap),
        });
    }
    if file_size == FXSAVE_SIZE {
        let image = xstate::convert::from_fxsave(&bytes, &legacy_geometry(Form::Standard))
            .with_context(|| format!("{}: FXSAVE image", path.display()))?;
        return Ok(Loaded {
            image,
            fxsave: true,
            file_size,
            geometry_error: None,
            snapshot: None,
        });
    }
    if file_size < MIN_SIZE {
        bail!(
            "{}: {file_size} bytes is neither an FXSAVE image (512 bytes) nor an XSAVE image (at least 576 bytes: legacy area and header)",
            path.display()
        );
    }
    match XsaveImage::from_bytes(&bytes, layout) {
        Ok(image) => Ok(Loaded {
            image,
            fxsave: false,
            file_size,
            geometry_error: None,
            snapshot: None,
        }),
        Err(e) => {
            let form = if xstate::image::raw_xcomp_bv(&bytes) & mask::COMPACTED != 0 {
                Form::Compacted
            } else {
                Form::Standard
            };
            let image = Xsave::with_geometry(
                xstate::image::AlignedBuf::from_bytes(&bytes),
                legacy_geometry(form),
            )
            .map_err(anyhow::Error::from)?;
            Ok(Loaded {
                image,
                fxsave: false,
                file_size,
                geometry_error: Some(e),
                snapshot: None,
            })
        }
    }
}

/// The CPU the image subcommands work for: its layout and its XSAVE configuration.
pub(crate) struct Machine {
    /// The dump it came from.
    pub dump: CpuidDump,
    /// Its layout.
    pub layout: Layout,
    /// XCR0: --xcr0, else this CPU's (host) or the dump's recorded XCR0, else every
    /// supported user component.
    pub xcr0: u64,
    /// IA32_XSS: --xss, else every supported supervisor component.
    pub xss: u64,
    /// MXCSR mask: --mxcsr-mask, else FXSAVE's MXCSR_MASK on the host, else 0xFFFF (DAZ
    /// supported: true of every CPU with XSAVE).
    pub mxcsr_mask: u32,
}

/// Resolves the machine from a CPU source and the override options.
pub(crate) fn machine(
    cpu: &CpuSource,
    xcr0: Option<u64>,
    xss: Option<u64>,
    mxcsr_mask: Option<u64>,
) -> anyhow::Result<Machine> {
    let dump = cpu.load()?;
    let layout = layout_of(&dump)?;
    let host = cpu.is_host();
    let xcr0 = xcr0
        .or(dump.xcr0)
        .unwrap_or_else(|| layout.xcr0_supported());
    let xss = xss.unwrap_or_else(|| layout.xss_supported());
    let mxcsr_mask = match mxcsr_mask {
        Some(m) => u32::try_from(m).context("--mxcsr-mask must fit in 32 bits")?,
        None => host_mxcsr_mask(host).unwrap_or(0xffff),
    };
    Ok(Machine {
        dump,
        layout,
        xcr0,
        xss,
        mxcsr_mask,
    })
}

/// MXCSR_MASK from FXSAVE on this CPU (SDM Vol. 1 §11.6.6).
fn host_mxcsr_mask(host: bool) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        if host {
            let h = xstate::hw::Host::detect();
            if h.has_fxsr() {
                return Some(h.mxcsr_mask());
            }
        }
    }
    let _ = host;
    None
}

/// Parses a hex option value (for clap).
pub(crate) fn hex_arg(s: &str) -> Result<u64, String> {
    parse_hex(s)
}

/// The decimal value of an 80-bit x87 extended-precision number (SDM Vol. 1 §4.2.2, §8.2.2):
/// sign bit 79, exponent 78:64 (bias 16383), explicit integer bit 63.
pub(crate) fn x87_decimal(v: u128) -> String {
    let sign = (v >> 79) & 1 == 1;
    let exp = ((v >> 64) & 0x7fff) as i32;
    let mant = v as u64;
    let s = if sign { "-" } else { "" };
    if exp == 0x7fff {
        return if mant << 1 == 0 {
            format!("{s}inf")
        } else {
            String::from("nan")
        };
    }
    if exp == 0 && mant == 0 {
        return format!("{s}0");
    }
    if exp != 0 && mant >> 63 == 0 {
        return String::from("unnormal (invalid operand)");
    }
    // value = mant × 2^(e − 16383 − 63), with denormals using exponent 1 − 16383.
    let e = if exp == 0 { 1 } else { exp } - 16383 - 63;
    let mut x = mant as f64;
    let mut k = e;
    while k > 0 {
        let step = k.min(1000);
        x *= 2f64.powi(step);
        k -= step;
    }
    while k < 0 {
        let step = k.max(-1000);
        x *= 2f64.powi(step);
        k -= step;
    }
    let a = x.abs();
    let body = if a == 0.0 {
        String::from("0 (below f64 range)")
    } else if a.is_infinite() {
        String::from("inf (beyond f64 range)")
    } else if !(1e-6..1e16).contains(&a) {
        format!("{x:e}")
    } else {
        format!("{x}")
    };
    format!("{s}{body}")
}

/// A register value as JSON: hex, or a list of hex for arrays.
fn reg_json<B: AsRef<[u8]>>(img: &Xsave<B>, id: u8) -> Result<Map<String, Value>, ImageError> {
    let mut m = Map::new();
    for spec in registers(id) {
        let mut vals = Vec::new();
        for i in 0..spec.count as usize {
            vals.push(Value::String(le_hex(&img.register(id, spec.name, i)?)));
        }
        if spec.array {
            m.insert(spec.name.to_string(), Value::Array(vals));
        } else if let Some(v) = vals.pop() {
            m.insert(spec.name.to_string(), v);
        }
    }
    Ok(m)
}

fn mxcsr_text(m: u32) -> String {
    let mut parts = Vec::new();
    let flags = ["IE", "DE", "ZE", "OE", "UE", "PE"];
    let set: Vec<&str> = (0..6)
        .filter(|b| m >> b & 1 == 1)
        .map(|b| flags[b])
        .collect();
    if !set.is_empty() {
        parts.push(format!("flags {}", set.join(" ")));
    }
    if m >> 6 & 1 == 1 {
        parts.push(String::from("DAZ"));
    }
    let masked = (m >> 7) & 0x3f;
    parts.push(if masked == 0x3f {
        String::from("all exceptions masked")
    } else {
        format!("exception masks {masked:#x}")
    });
    parts.push(
        ["RC nearest", "RC down", "RC up", "RC toward zero"][((m >> 13) & 3) as usize].to_string(),
    );
    if m >> 15 & 1 == 1 {
        parts.push(String::from("FZ"));
    }
    if m >> 16 != 0 {
        parts.push(format!("reserved bits {:#x}", m & !0xffff));
    }
    parts.join(", ")
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let m = machine(&args.cpu, None, None, None)?;
    let ld = load_image(&args.file, &m.layout)?;
    let img = &ld.image;
    let form = if ld.fxsave {
        "fxsave"
    } else {
        match img.header_form() {
            Form::Standard => "standard",
            Form::Compacted => "compacted",
        }
    };
    let bv = img.xstate_bv();
    // A component whose XSTATE_BV bit gives it meaning but whose bytes cannot be read (the
    // file is short, the layout cannot place it) makes the image unreadable: exit 1.
    let unreadable: Vec<u8> = bits(bv & !mask::COMPACTED)
        .filter(|&id| ld.geometry_error.is_some() && id >= 2 || reg_json(img, id).is_err())
        .collect();
    let status = i32::from(!unreadable.is_empty());
    if args.json {
        let mut comps = Map::new();
        for id in bits(bv) {
            if id == 63 {
                continue;
            }
            let name = Component::name_of(id);
            let v = match reg_json(img, id) {
                Ok(m) => Value::Object(m),
                Err(e) => json!({ "error": e.to_string() }),
            };
            comps.insert(name, v);
        }
        let mut out = json!({
            "file": args.file.display().to_string(),
            "cpuid": args.cpu.cpuid.as_ref().map(|p| p.display().to_string()),
            "form": form,
            "xstate_bv": hex(bv),
            "xcomp_bv": hex(img.xcomp_bv()),
            "size": ld.file_size,
            "components": Value::Object(comps),
        });
        if let Some(e) = &ld.geometry_error {
            out["error"] = Value::String(e.to_string());
        }
        if let Some(s) = &ld.snapshot {
            out["snapshot"] = super::xsnap::meta_json(s);
        }
        if !unreadable.is_empty() {
            out["unreadable"] = Value::Array(
                unreadable
                    .iter()
                    .map(|&id| Value::String(Component::name_of(id)))
                    .collect(),
            );
        }
        print_json(&out);
        return Ok(status);
    }
    outln!(
        "{}: {} bytes, {} form (CPUID: {})",
        args.file.display(),
        ld.file_size,
        form,
        if ld.snapshot.is_some() {
            "the snapshot's source CPU"
        } else {
            m.dump.source.as_str()
        }
    );
    if let Some(s) = &ld.snapshot {
        outln!("{}", super::xsnap::meta_text(s));
        outln!("image rebuilt on the snapshot's source layout:");
    }
    outln!("XSTATE_BV {:#x} ({})", bv, mask_names(bv));
    let xc = img.xcomp_bv();
    outln!("XCOMP_BV  {:#x} ({})", xc, mask_names(xc));
    let res = img.header_reserved();
    match res.iter().position(|&b| b != 0) {
        None => outln!("header bytes 16..63: zero"),
        Some(i) => outln!(
            "header bytes 16..63: NOT zero (first non-zero byte at offset {})",
            528 + i
        ),
    }
    if let Some(e) = &ld.geometry_error {
        outln!("warning: {e}; only the legacy area and header are shown");
    }
    let mx = img.mxcsr();
    outln!(
        "MXCSR {:#x} ({}), MXCSR_MASK {:#x}",
        mx,
        mxcsr_text(mx),
        img.mxcsr_mask()
    );
    for id in bits(bv) {
        if id == 63 {
            outln!("bit 63: not a component (XSTATE_BV bit 63 makes any restore fault)");
            continue;
        }
        let name = Component::name_of(id);
        let place = img
            .placement(id)
            .map(|p| format!("offset {}, {} bytes", p.offset, p.size))
            .unwrap_or_else(|e| format!("cannot be read: {e}"));
        outln!("{name} (component {id}): {place}");
        for spec in registers(id) {
            if id == 1 && spec.name != "xmm" {
                continue;
            }
            for i in 0..spec.count as usize {
                let label = if spec.name == "egpr" {
                    format!("r{}", 16 + i)
                } else if spec.array {
                    format!("{}{i}", spec.name)
                } else {
                    spec.name.to_string()
                };
                match img.register(id, spec.name, i) {
                    Ok(v) => {
                        let h = le_hex(&v);
                        if id == 0 && spec.name == "st" {
                            let mut b = [0u8; 16];
                            b[..v.len().min(16)].copy_from_slice(&v[..v.len().min(16)]);
                            let f = x87_decimal(u128::from_le_bytes(b));
                            outln!("  {label:<10} {h} ({f})");
                        } else {
                            outln!("  {label:<10} {h}");
                        }
                    }
                    Err(_) => {
                        break;
                    }
                }
            }
        }
    }
    print_vectors(img);
    if !unreadable.is_empty() {
        outln!(
            "UNREADABLE: {} present in XSTATE_BV but not readable from the {} bytes of {}",
            unreadable
                .iter()
                .map(|&id| Component::name_of(id))
                .collect::<Vec<_>>()
                .join(", "),
            ld.file_size,
            args.file.display()
        );
    }
    Ok(status)
}

/// The full vector registers as software sees them, assembled from their pieces (XMM in the
/// legacy area, the YMM upper halves of AVX, the ZMM upper halves of ZMM_Hi256, ZMM16-31 of
/// Hi16_ZMM), when any of AVX or AVX-512 is present. Absent pieces are their init value (0).
fn print_vectors<B: AsRef<[u8]>>(img: &Xsave<B>) {
    let bv = img.xstate_bv();
    let avx512 = bv & (mask::ZMM_HI256 | mask::HI16_ZMM) != 0 && img.placement(6).is_ok();
    if bv & (mask::AVX | mask::ZMM_HI256 | mask::HI16_ZMM) == 0 || img.placement(2).is_err() {
        return;
    }
    outln!("vector registers (assembled):");
    for i in 0..16 {
        let mut v = Vec::new();
        v.extend_from_slice(&img.register(1, "xmm", i).unwrap_or_default());
        v.extend_from_slice(&img.register(2, "ymm_hi", i).unwrap_or_default());
        if avx512 {
            v.extend_from_slice(&img.register(6, "zmm_hi", i).unwrap_or_default());
            outln!("  zmm{i:<8} {}", le_hex(&v));
        } else {
            outln!("  ymm{i:<8} {}", le_hex(&v));
        }
    }
    if avx512 && img.placement(7).is_ok() {
        for i in 0..16 {
            let v = img.register(7, "zmm", i).unwrap_or_default();
            outln!("  zmm{:<8} {}", i + 16, le_hex(&v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x87_decimal_values() {
        // 1.0: exponent 16383, integer bit set.
        assert_eq!(x87_decimal((16383u128 << 64) | (1u128 << 63)), "1");
        assert_eq!(
            x87_decimal((1u128 << 79) | (16384u128 << 64) | (3u128 << 62)),
            "-3"
        );
        assert_eq!(x87_decimal(0), "0");
        assert_eq!(x87_decimal((0x7fffu128 << 64) | (1u128 << 63)), "inf");
        assert_eq!(x87_decimal((0x7fffu128 << 64) | (3u128 << 62)), "nan");
        assert!(x87_decimal(16383u128 << 64).starts_with("unnormal"));
        assert_eq!(
            x87_decimal((16383u128 + 100) << 64 | 1u128 << 63),
            "1.2676506002282294e30"
        );
    }

    #[test]
    fn mxcsr_decoding() {
        assert_eq!(mxcsr_text(0x1f80), "all exceptions masked, RC nearest");
        assert!(mxcsr_text(0x1fc0).contains("DAZ"));
        assert!(mxcsr_text(0x10000).contains("reserved"));
    }
}
