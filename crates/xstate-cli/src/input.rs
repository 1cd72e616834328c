//! Reading input files: bounded and told apart by content ([`xstate::filekind`]).
//!
//! Every file a command reads goes through [`read`]: only regular files (a directory, a FIFO
//! or a device such as `/dev/zero` is refused before it is opened for reading, since it has no
//! size and may never end); a file larger than [`MAX_INPUT`] is refused before it is read
//! whole. [`expect`] then checks the kind against what the command can use and names both
//! when they differ (exit 2).

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use xstate::filekind::{detect, FileKind, MAX_INPUT};

/// A file's bytes and what they are.
pub struct Input {
    /// The content.
    pub bytes: Vec<u8>,
    /// Its kind, from the content.
    pub kind: FileKind,
}

/// Reads `path` (described as `what` in messages): a regular file of at most [`MAX_INPUT`]
/// bytes.
pub fn read(path: &Path, what: &str) -> anyhow::Result<Input> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        bail!("{what} {} is a directory; give a file", path.display());
    }
    if !ft.is_file() {
        bail!(
            "{what} {} is not a regular file (a FIFO, socket or device such as /dev/zero has no size and may never end); copy the data into a file first",
            path.display()
        );
    }
    if meta.len() > MAX_INPUT {
        bail!(
            "{what} {} has {} bytes; no valid input of any kind exceeds {MAX_INPUT} bytes (1 MiB), so it is not read",
            path.display(),
            meta.len()
        );
    }
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never take more than the bound (+1 to notice).
    f.take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > MAX_INPUT {
        bail!(
            "{what} {} grew beyond {MAX_INPUT} bytes while being read; not used",
            path.display()
        );
    }
    let kind = detect(&bytes);
    Ok(Input { bytes, kind })
}

/// Refuses an input whose kind `ok` does not accept, saying what it is and what `expected`
/// is.
pub fn expect(
    path: &Path,
    input: &Input,
    ok: impl Fn(&FileKind) -> bool,
    expected: &str,
) -> anyhow::Result<()> {
    if ok(&input.kind) {
        return Ok(());
    }
    bail!("{} is {}; expected {expected}", path.display(), input.kind)
}

/// True for the kinds the image commands read: XSAVE images, FXSAVE areas and snapshots.
pub fn image_or_snapshot(k: &FileKind) -> bool {
    k.is_image() || *k == FileKind::Snapshot
}

/// What the image commands expect, in words.
pub const IMAGE_OR_SNAPSHOT: &str =
    "an XSAVE image (standard or compacted, at least 576 bytes), a 512-byte FXSAVE area or an .xsnap snapshot";
