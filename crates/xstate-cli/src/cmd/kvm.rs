//! `xstate kvm`: what this machine's KVM offers for extended state, and the end-to-end demo on
//! the real /dev/kvm (VM A loads values, the host captures, VM B restores and saves, compare).

use std::path::{Path, PathBuf};

/// Arguments of `xstate kvm`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// KVM API version, KVM_CAP_XSAVE2 size, supported guest XCR0, permissions and the
    /// extended-state MSRs KVM lists.
    Info {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// End to end on the real /dev/kvm: VM A's guest loads distinct values into every
    /// supported user component, the host captures the vCPU's xstate to a file, VM B is
    /// restored from it, VM B's guest stores its registers with XSAVE, and they are compared.
    /// Exit 1 on any mismatch, 2 without KVM.
    Demo {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Keep the capture (vcpu0.xsnap) and the guests' images (vm_a_loaded.xsave,
        /// vm_a_captured.xsave, vm_b_saved.xsave) in DIR; existing files there are not
        /// replaced unless --force.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Replace the files of an earlier demo in the --keep DIR.
        #[arg(long, requires = "keep")]
        force: bool,
    },
    /// The guest CPUID leaf 0xD (and the feature leaves that must agree with it) a VMM would
    /// set for a chosen set of guest components.
    Cpuid(crate::cmd::kvm_cpuid::KvmCpuidArgs),
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.cmd {
        Sub::Info { json } => imp::info(json),
        Sub::Demo { json, keep, force } => imp::demo(json, keep.as_deref(), force),
        Sub::Cpuid(a) => crate::cmd::kvm_cpuid::run(a),
    }
}

/// Prints why KVM cannot be used and returns exit status 2.
fn no_kvm(why: &str) -> anyhow::Result<i32> {
    errln!("xstate: KVM is not available: {why}");
    errln!("xstate: `xstate kvm` needs /dev/kvm (Linux on x86-64, read-write access)");
    Ok(2)
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp {
    use super::*;

    use anyhow::Context;
    use serde_json::json;
    use xstate::components::mask_names;
    use xstate_kvm::guest::demo;
    use xstate_kvm::{msr, perm, Kvm, KvmSetup};

    use crate::common::{hex, names, print_json};
    use crate::output::{check_output, write_file};

    pub(super) fn info(json_out: bool) -> anyhow::Result<i32> {
        if let Some(why) = xstate_kvm::unavailable() {
            return no_kvm(&why);
        }
        let setup = KvmSetup::open()?;
        let api = setup.api_version();
        let guest_xcr0 = setup.guest_supported_xcr0();
        let kvm = setup.ready()?;
        let guest_xcr0 = guest_xcr0.unwrap_or_else(|_| kvm.guest_supported_xcr0());
        let xsave2 = kvm.xsave2_size();
        let kernel_supp = perm::supported().ok();
        let perm_host = perm::permitted().ok();
        let perm_guest = perm::guest_permitted().ok();
        let listed = kvm.xstate_msrs().to_vec();
        let not_listed: Vec<u32> = msr::XSTATE_MSRS
            .iter()
            .map(|m| m.index)
            .filter(|i| !listed.contains(i))
            .collect();
        let msr_json = |v: &[u32]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|&i| json!({"index": format!("{i:#x}"), "name": msr::name_of(i)}))
                .collect()
        };
        let opt_hex = |v: Option<u64>| v.map(hex);
        if json_out {
            print_json(&json!({
                "api_version": api,
                "xsave2_size": xsave2,
                "guest_xcr0": hex(guest_xcr0),
                "guest_xcr0_components": names(guest_xcr0),
                "guest_permitted": opt_hex(perm_guest),
                "process_permitted": opt_hex(perm_host),
                "kernel_supported": opt_hex(kernel_supp),
                "msrs": msr_json(&listed),
                "msrs_not_listed": msr_json(&not_listed),
            }));
            return Ok(0);
        }
        let show = |v: Option<u64>| {
            v.map(|m| format!("{m:#x} ({})", mask_names(m)))
                .unwrap_or_else(|| "unknown".into())
        };
        outln!("KVM API version        {api}");
        outln!("KVM_CAP_XSAVE2         {xsave2} bytes");
        outln!(
            "guest XCR0 supported   {guest_xcr0:#x} ({})",
            mask_names(guest_xcr0)
        );
        outln!("guest permissions      {}", show(perm_guest));
        outln!("process permissions    {}", show(perm_host));
        outln!("kernel user features   {}", show(kernel_supp));
        let names = |v: &[u32]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|&i| format!("{} ({i:#x})", msr::name_of(i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        outln!("extended-state MSRs    {}", names(&listed));
        outln!("  not listed by KVM    {}", names(&not_listed));
        Ok(0)
    }

    /// The files `kvm demo` writes in its directory.
    const SNAPSHOT: &str = "vcpu0.xsnap";
    const IMAGES: [&str; 3] = [
        "vm_a_loaded.xsave",
        "vm_a_captured.xsave",
        "vm_b_saved.xsave",
    ];

    pub(super) fn demo(json_out: bool, keep: Option<&Path>, force: bool) -> anyhow::Result<i32> {
        if let Some(why) = xstate_kvm::unavailable() {
            return no_kvm(&why);
        }
        // An earlier demo's files are refused before any VM runs.
        if let Some(d) = keep {
            for f in std::iter::once(SNAPSHOT).chain(IMAGES) {
                check_output(&d.join(f), &[], force)?;
            }
        }
        // Guest permissions first (AMX where there is one), then VMs.
        let mut setup = KvmSetup::open()?;
        let all = setup.guest_supported_xcr0()?;
        setup
            .request_guest_features(all)
            .context("requesting guest permissions for dynamic components")?;
        let kvm = setup.ready()?;

        // Without --keep: a fresh private directory, removed when `_tmp` is dropped.
        let mut _tmp = None;
        let dir = match keep {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
                d.to_path_buf()
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("xstate-demo-")
                    .tempdir()
                    .context("cannot create a temporary directory")?;
                let d = t.path().to_path_buf();
                _tmp = Some(t);
                d
            }
        };
        let (report, snapshot, snapshot_bytes) = demo_in(&kvm, &dir, keep.is_some(), force)?;
        let ok = report.mismatches.is_empty();
        if json_out {
            print_json(&json!({
                "ok": ok,
                "kvm": {
                    "xsave2_size": report.xsave2_size,
                    "guest_xcr0": hex(report.guest_xcr0),
                },
                "components_verified": report.components_verified,
                "snapshot": snapshot.display().to_string(),
                "snapshot_bytes": snapshot_bytes,
                "kept": keep.is_some(),
                "mismatches": report.mismatches,
            }));
        } else {
            outln!(
                "KVM: KVM_CAP_XSAVE2 {} bytes, guest XCR0 {:#x} ({})",
                report.xsave2_size,
                report.guest_xcr0,
                mask_names(report.guest_xcr0)
            );
            outln!(
                "VM A: guest XRSTOR loaded distinct values; host captured XCR0, MSRs, XSAVE image"
            );
            outln!(
                "snapshot: {} ({snapshot_bytes} bytes){}",
                snapshot.display(),
                if keep.is_some() { "" } else { ", removed" }
            );
            outln!("VM B: restored from the snapshot; guest XSAVE stored its registers");
            outln!("verified: {}", report.components_verified.join(", "));
            for m in &report.mismatches {
                outln!(
                    "MISMATCH [{}] {} {} at offset {}: expected {}, got {}",
                    m.stage,
                    m.component,
                    m.field,
                    m.offset,
                    m.expected,
                    m.got
                );
            }
            outln!("{}", if ok { "ok" } else { "FAILED" });
        }
        Ok(if ok { 0 } else { 1 })
    }

    /// VM A → capture file → VM B, in `dir`.
    fn demo_in(
        kvm: &Kvm,
        dir: &Path,
        keep_images: bool,
        force: bool,
    ) -> anyhow::Result<(demo::Report, PathBuf, u64)> {
        let loaded = demo::run_vm_a(kvm).context("VM A")?;
        let path = dir.join(SNAPSHOT);
        let bytes = capture::save(kvm, &path, &loaded.state, force)?;
        let restored = capture::load(kvm, &path)?;
        let image = demo::run_vm_b(kvm, &restored, &loaded.layout).context("VM B")?;
        if keep_images {
            for (name, img) in IMAGES
                .iter()
                .zip([&loaded.expected, &loaded.state.xsave, &image])
            {
                write_file(&dir.join(name), img.as_bytes(), &[], force)?;
            }
        }
        Ok((demo::verdict(&loaded, &image), path, bytes))
    }

    /// The capture file between VM A and VM B: a portable `.xsnap` snapshot (docs/xsnap.md),
    /// taken on KVM's layout and rebuilt from it for VM B.
    mod capture {
        use std::path::Path;

        use anyhow::Context;
        use xstate::snapshot::Snapshot;
        use xstate_kvm::snapshot::{snapshot_of, state_of};
        use xstate_kvm::{Kvm, VcpuXstate};

        /// Writes `state` to `path` as a snapshot; returns the file size.
        pub fn save(
            kvm: &Kvm,
            path: &Path,
            state: &VcpuXstate,
            force: bool,
        ) -> anyhow::Result<u64> {
            let bytes = snapshot_of(kvm, state)
                .context("cannot take a snapshot of VM A's vCPU")?
                .encode()?;
            crate::output::write_file(path, &bytes, &[], force)?;
            Ok(bytes.len() as u64)
        }

        /// Reads a snapshot written by [`save`] and rebuilds the state for this KVM.
        pub fn load(kvm: &Kvm, path: &Path) -> anyhow::Result<VcpuXstate> {
            let bytes = crate::input::read(path, "snapshot")?.bytes;
            let snap = Snapshot::decode(&bytes)
                .with_context(|| format!("{}: not a readable snapshot", path.display()))?;
            let v = xstate::compat::check(&snap, &xstate_kvm::snapshot::destination(kvm));
            if !v.compatible {
                let reasons: Vec<String> = v.reasons.iter().map(|r| r.message.clone()).collect();
                anyhow::bail!(
                    "{}: cannot be restored here: {}",
                    path.display(),
                    reasons.join("; ")
                );
            }
            Ok(state_of(kvm, &snap)?)
        }
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod imp {
    use super::*;

    pub(super) fn info(_json: bool) -> anyhow::Result<i32> {
        no_kvm(&xstate_kvm::Error::Unsupported.to_string())
    }

    pub(super) fn demo(_json: bool, _keep: Option<&Path>, _force: bool) -> anyhow::Result<i32> {
        no_kvm(&xstate_kvm::Error::Unsupported.to_string())
    }
}
