//! `xstate validate FILE --profile {xrstor,xrstor-compacted,xrstors,kvm,snapshot} [--cpuid FILE
//! | --host] [--xcr0 HEX] [--xss HEX] [--json]`: would XRSTOR, XRSTORS or KVM_SET_XSAVE accept
//! this image — or is this `.xsnap` snapshot well formed (`snapshot`, docs/xsnap.md §5)? Exit 0
//! valid, 1 invalid (every violation printed), 2 usage or I/O error.
//!
//! `--host` takes XCR0 (XGETBV), IA32_XSS support (CPUID.(0xD,1):EDX:ECX) and the MXCSR mask
//! (FXSAVE) from this machine. For `kvm` the supported guest XCR0 is `--xcr0`, else what
//! /dev/kvm reports (KVM_X86_XCOMP_GUEST_SUPP) when it can be opened, else this machine's XCR0
//! (KVM offers guests at most the host's XCR0: docs/images.md); the vCPU buffer's user features
//! are `--user-features`, else the supported XCR0 without dynamic features (a vCPU whose
//! buffer has not grown for AMX tile data).

use std::path::PathBuf;

use serde_json::json;
use xstate::filekind::FileKind;
use xstate::validate::{self, KvmConfig, Profile, RestoreConfig};

use super::inspect::{hex_arg, machine};
use crate::common::{hex, print_json, CpuSource};

/// The rule sets `--profile` selects.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileArg {
    /// XRSTOR of a standard-form image (SDM Vol. 1 §13.8, docs/images.md).
    Xrstor,
    /// XRSTOR of a compacted-form image.
    XrstorCompacted,
    /// XRSTORS (compacted form, supervisor components, CPL 0).
    Xrstors,
    /// KVM_SET_XSAVE (the kernel's checks, as measured: docs/images.md).
    Kvm,
    /// Structural checks of a portable `.xsnap` snapshot (docs/xsnap.md §5).
    Snapshot,
}

impl ProfileArg {
    fn name(self) -> &'static str {
        match self {
            ProfileArg::Xrstor => "xrstor",
            ProfileArg::XrstorCompacted => "xrstor-compacted",
            ProfileArg::Xrstors => "xrstors",
            ProfileArg::Kvm => "kvm",
            ProfileArg::Snapshot => "snapshot",
        }
    }
}

/// Arguments of `xstate validate`.
#[derive(clap::Args)]
pub struct Args {
    /// The image file.
    pub file: PathBuf,
    /// The rules to apply.
    #[arg(long, value_enum)]
    pub profile: ProfileArg,
    #[command(flatten)]
    pub cpu: CpuSource,
    /// XCR0 to check against (for `kvm`: the host-supported guest XCR0).
    #[arg(long, value_parser = hex_arg, value_name = "HEX")]
    pub xcr0: Option<u64>,
    /// IA32_XSS to check against (`xrstors`).
    #[arg(long, value_parser = hex_arg, value_name = "HEX")]
    pub xss: Option<u64>,
    /// The CPU's MXCSR mask (default: FXSAVE's on this machine, else 0xFFFF).
    #[arg(long, value_parser = hex_arg, value_name = "HEX")]
    pub mxcsr_mask: Option<u64>,
    /// `kvm`: the user features of the vCPU's buffer (default: the supported XCR0; leave out
    /// AMX tile data to model a buffer that has not grown yet).
    #[arg(long, value_parser = hex_arg, value_name = "HEX")]
    pub user_features: Option<u64>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.profile == ProfileArg::Snapshot {
        return super::xsnap::validate_file(&args.file, args.json);
    }
    let m = machine(&args.cpu, args.xcr0, args.xss, args.mxcsr_mask)?;
    let input = crate::input::read(&args.file, "image")?;
    crate::input::expect(
        &args.file,
        &input,
        |k| matches!(k, FileKind::XsaveStandard | FileKind::XsaveCompacted),
        if matches!(
            input.kind,
            FileKind::Snapshot | FileKind::DamagedSnapshot { .. }
        ) {
            "an XSAVE image for this profile (a snapshot is checked with --profile snapshot)"
        } else {
            "an XSAVE image (standard or compacted form, at least 576 bytes)"
        },
    )?;
    let bytes = input.bytes;
    let rc = RestoreConfig::for_layout(&m.layout, m.xcr0, m.xss, m.mxcsr_mask);
    let kvm_cfg = {
        let supported = match args.xcr0 {
            Some(x) => x,
            None if args.profile == ProfileArg::Kvm && args.cpu.is_host() => {
                kvm_guest_xcr0().unwrap_or(m.xcr0)
            }
            None => m.xcr0,
        };
        let mut k = KvmConfig::new(supported, m.mxcsr_mask);
        k.user_features = args
            .user_features
            .unwrap_or(supported & !xstate::components::mask::DYNAMIC);
        k
    };
    // Every profile includes the size rule: the image must hold every byte the restore reads
    // for its header (validate::required_size).
    let profile = match args.profile {
        ProfileArg::Xrstor => Profile::Xrstor(rc),
        ProfileArg::XrstorCompacted => Profile::XrstorCompacted(rc),
        ProfileArg::Xrstors => Profile::Xrstors(rc),
        ProfileArg::Kvm => Profile::Kvm(kvm_cfg),
        ProfileArg::Snapshot => return super::xsnap::validate_file(&args.file, args.json),
    };
    let violations = validate::validate_with_layout(&bytes, &profile, &m.layout);
    let valid = violations.is_empty();
    if args.json {
        print_json(&json!({
            "file": args.file.display().to_string(),
            "cpuid": args.cpu.cpuid.as_ref().map(|p| p.display().to_string()),
            "profile": args.profile.name(),
            "valid": valid,
            "xcr0": hex(if args.profile == ProfileArg::Kvm { kvm_cfg.supported_xcr0 } else { m.xcr0 }),
            "xss": hex(m.xss),
            "mxcsr_mask": hex(u64::from(m.mxcsr_mask)),
            "violations": violations.iter().map(violation_json).collect::<Vec<_>>(),
        }));
    } else {
        let ctx = match args.profile {
            ProfileArg::Xrstors => format!(
                "XCR0 {:#x}, IA32_XSS {:#x}, MXCSR mask {:#x}",
                m.xcr0, m.xss, m.mxcsr_mask
            ),
            ProfileArg::Kvm => format!(
                "supported guest XCR0 {:#x}, vCPU user features {:#x}, MXCSR mask {:#x}",
                kvm_cfg.supported_xcr0, kvm_cfg.user_features, kvm_cfg.mxcsr_mask
            ),
            _ => format!("XCR0 {:#x}, MXCSR mask {:#x}", m.xcr0, m.mxcsr_mask),
        };
        if valid {
            outln!(
                "valid: {} accepts {} ({ctx})",
                args.profile.name(),
                args.file.display()
            );
        } else {
            outln!(
                "invalid: {} refuses {} ({ctx}): {} violation{}",
                args.profile.name(),
                args.file.display(),
                violations.len(),
                if violations.len() == 1 { "" } else { "s" }
            );
            for v in &violations {
                outln!("  {v}");
            }
        }
    }
    Ok(if valid { 0 } else { 1 })
}

/// A violation as JSON: the value (up to 64 bits) as a lower-case hex string.
fn violation_json(v: &validate::Violation) -> serde_json::Value {
    json!({
        "rule": v.rule,
        "offset": v.offset,
        "value": hex(v.value),
        "message": v.message,
    })
}

/// The guest XCR0 /dev/kvm supports (KVM_X86_XCOMP_GUEST_SUPP), when /dev/kvm opens.
fn kvm_guest_xcr0() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        if xstate_kvm::unavailable().is_none() {
            if let Ok(k) = xstate_kvm::KvmSetup::open() {
                return k.guest_supported_xcr0().ok();
            }
        }
    }
    None
}
