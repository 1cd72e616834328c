//! Snapshot (`.xsnap`) support shared by the image subcommands: reading a snapshot as an image
//! (`inspect`, `diff`), `convert --to snapshot`, and `convert SNAP --to standard|compacted`
//! (rebuilt for the destination's layout: cross-layout restore).

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use xstate::components::{mask, mask_names, Component};
use xstate::filekind::FileKind;
use xstate::image::XsaveImage;
use xstate::layout::{Form, Layout};
use xstate::snapshot::{ControlRegs, Snapshot, SourceCpu};

use crate::common::hex;

/// Reads and decodes a snapshot file.
pub fn load_snapshot(path: &Path) -> anyhow::Result<Snapshot> {
    let input = crate::input::read(path, "snapshot")?;
    crate::input::expect(
        path,
        &input,
        |k| matches!(k, FileKind::Snapshot),
        "an .xsnap snapshot",
    )?;
    decode(path, &input.bytes)
}

/// Decodes snapshot bytes read from `path`.
pub fn decode(path: &Path, bytes: &[u8]) -> anyhow::Result<Snapshot> {
    Snapshot::decode(bytes)
        .with_context(|| format!("{} is not a readable .xsnap file", path.display()))
}

/// The image a snapshot stands for, on its source CPU's layout (standard form of its XCR0, or
/// compacted when supervisor components are present).
pub fn source_image(path: &Path, s: &Snapshot) -> anyhow::Result<XsaveImage> {
    let bytes = s.to_source_image().with_context(|| {
        format!(
            "{}: cannot rebuild the image on its source layout",
            path.display()
        )
    })?;
    XsaveImage::from_bytes(&bytes, &s.source.layout())
        .with_context(|| format!("{}: rebuilt image", path.display()))
}

/// What a snapshot carries besides registers, for `inspect --json`.
pub fn meta_json(s: &Snapshot) -> Value {
    json!({
        "producer": s.producer,
        "source": {
            "vendor": s.source.vendor,
            "family": s.source.family,
            "model": s.source.model,
            "stepping": s.source.stepping,
            "xcr0_supported": hex(s.source.xcr0_supported),
            "xss_supported": hex(s.source.xss_supported),
        },
        "xcr0": hex(s.xcr0),
        "xss": hex(s.xss),
        "xfd": hex(s.xfd),
        "xfd_err": hex(s.xfd_err),
        "components": s.present().map(Component::name_of).collect::<Vec<_>>(),
        "msrs": s.msrs.iter().map(|(i, v)| (format!("{i:#x}"), json!(hex(*v)))).collect::<serde_json::Map<_, _>>(),
        "violations": xstate::snapshot::validate(s),
    })
}

/// The human summary line of a snapshot, for `inspect`.
pub fn meta_text(s: &Snapshot) -> String {
    let mut t = format!(
        "snapshot ({}) from {} family {:#x} model {:#x} stepping {}: XCR0 {:#x}, IA32_XSS {:#x}, IA32_XFD {:#x}, IA32_XFD_ERR {:#x}",
        s.producer,
        if s.source.vendor.is_empty() { "an unknown CPU" } else { s.source.vendor.as_str() },
        s.source.family,
        s.source.model,
        s.source.stepping,
        s.xcr0,
        s.xss,
        s.xfd,
        s.xfd_err
    );
    for (i, v) in &s.msrs {
        t.push_str(&format!(", {} {v:#x}", xstate::snapshot::msr_name(*i)));
    }
    for v in xstate::snapshot::validate(s) {
        t.push_str(&format!("\nwarning: {v}"));
    }
    t
}

/// `convert IMAGE --to snapshot`: the snapshot's bytes and a summary, of the image laid out by `layout`/`dump` (the source
/// CPU) with XCR0 `xcr0` and IA32_XSS `xss`.
pub fn image_to_snapshot(
    image: &[u8],
    dump: &xstate::cpuid::CpuidDump,
    xcr0: u64,
    xss: u64,
) -> anyhow::Result<(Vec<u8>, String)> {
    let regs = ControlRegs {
        xcr0,
        xss,
        ..Default::default()
    };
    let layout = Layout::from_dump(dump);
    let s = Snapshot::from_image_with(image, &layout, SourceCpu::from_dump(dump), &regs)
        .context("cannot take a snapshot of the image")?;
    let bytes = s.encode()?;
    let what = format!(
        "snapshot v{}, {} bytes, XCR0 {:#x}, components {}",
        xstate::snapshot::VERSION,
        bytes.len(),
        xcr0,
        s.component_names()
    );
    Ok((bytes, what))
}

/// `convert SNAP --to standard|compacted`: the image's bytes and a summary, rebuilt with the destination's offsets.
/// `mask_` defaults to the snapshot's XCR0 (standard) or XCR0 | IA32_XSS (compacted).
pub fn snapshot_to_image(
    s: &Snapshot,
    dest: &Layout,
    form: Form,
    xcr0: Option<u64>,
) -> anyhow::Result<(Vec<u8>, String)> {
    let m = match form {
        Form::Standard => xcr0.unwrap_or(s.xcr0),
        Form::Compacted => xcr0.unwrap_or(s.xcr0) | s.xss,
    };
    if m & mask::COMPACTED != 0 {
        bail!("--xcr0 {m:#x}: bit 63 is not a component");
    }
    let img = s.to_image(dest, form, m).map_err(|e| {
        anyhow::anyhow!(
            "{e}; `xstate check SNAP --cpuid DEST` lists every reason the destination cannot take the snapshot"
        )
    })?;
    let what = format!(
        "{form}, {} bytes, components {} ({}) rebuilt with the destination's layout",
        img.len(),
        hex(m),
        mask_names(s.xstate_bv())
    );
    Ok((img, what))
}

/// `validate FILE --profile snapshot`: a file that does not decode is one violation (rule
/// `decode`, with the decoder's message naming the offset); a decoded snapshot gets every
/// violation of the `snapshot` profile. Exit 0 valid, 1 invalid; unreadable file: error (2).
pub fn validate_file(path: &Path, json_out: bool) -> anyhow::Result<i32> {
    let input = crate::input::read(path, "snapshot")?;
    crate::input::expect(
        path,
        &input,
        |k| matches!(k, FileKind::Snapshot | FileKind::DamagedSnapshot { .. }),
        "an .xsnap snapshot (the snapshot profile checks snapshots; images have the xrstor, xrstor-compacted, xrstors and kvm profiles)",
    )?;
    let bytes = input.bytes;
    let violations = match Snapshot::decode(&bytes) {
        Ok(s) => xstate::snapshot::validate(&s),
        Err(e) => vec![xstate::snapshot::Violation {
            rule: String::from("decode"),
            location: String::from("file"),
            value: format!("{} bytes", bytes.len()),
            message: e.to_string(),
        }],
    };
    let valid = violations.is_empty();
    if json_out {
        crate::common::print_json(&json!({
            "file": path.display().to_string(),
            "profile": "snapshot",
            "valid": valid,
            "violations": violations,
        }));
    } else if valid {
        outln!("valid: {} is a well-formed snapshot", path.display());
    } else {
        outln!(
            "invalid: {}: {} violation{}",
            path.display(),
            violations.len(),
            if violations.len() == 1 { "" } else { "s" }
        );
        for v in &violations {
            outln!("  {v}");
        }
    }
    Ok(if valid { 0 } else { 1 })
}
