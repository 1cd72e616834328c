//! The library doing what `xstate batch --out-dir DIR convert --to standard --force -- FILE…`
//! does, for the CLI's performance figure (docs/performance.md): this host's layout read
//! once, then per file: read it, decode the snapshot, rebuild the standard image of its XCR0,
//! write it atomically (temporary file in DIR, fsync, rename) as `NAME.standard`.
//!
//! `cargo run --release -p xstate-cli --example convert_many -- DIR FILE…`

use std::io::Write;
use std::path::{Path, PathBuf};

use xstate::cpuid::CpuidDump;
use xstate::layout::{Form, Layout};
use xstate::snapshot::Snapshot;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: convert_many DIR FILE…")?);
    let layout = Layout::from_dump(&CpuidDump::from_host());
    let mut n = 0;
    for f in args {
        let f = PathBuf::from(f);
        let bytes = std::fs::read(&f)?;
        let s = Snapshot::decode(&bytes)?;
        let img = s.to_image(&layout, Form::Standard, s.xcr0)?;
        let name = f.file_name().ok_or("no file name")?.to_string_lossy();
        let out = dir.join(format!("{name}.standard"));
        write_atomic(&dir, &out, &img)?;
        n += 1;
    }
    println!("{n} files");
    Ok(())
}

fn write_atomic(dir: &Path, out: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".xstate-")
        .suffix(".partial")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(out).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}
