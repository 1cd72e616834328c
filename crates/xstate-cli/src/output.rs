//! Everything the command writes: standard output and standard error through checked writers,
//! and output files atomically.
//!
//! * Standard output and error: `outln!`/`out!`/`errln!` never panic (unlike `outln!` on a
//!   full disk or a closed descriptor). The first failed write is remembered, later writes to
//!   that stream are dropped, and `main` ends with exit status 2 and a message
//!   ([`finish`]). A closed pipe ends the process quietly through the default SIGPIPE action
//!   that `main` restores.
//! * Files: [`write_file`] writes to a temporary file in the target's directory, fsyncs it,
//!   renames it over the target and fsyncs the directory (rename(2) replaces the name
//!   atomically: a reader sees the old file or the new one, never a part). It refuses an output
//!   that is one of the command's inputs (same device and inode, whatever the path: symlinks
//!   and hard links included) and an existing file unless `--force`; on any error (ENOSPC
//!   included) the temporary file is removed and the target is as it was.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};

/// The first failed write to standard output / standard error, by stream.
static FAILED: Mutex<[Option<String>; 2]> = Mutex::new([None, None]);

const STDOUT: usize = 0;
const STDERR: usize = 1;

fn failed(stream: usize) -> bool {
    FAILED.lock().map(|f| f[stream].is_some()).unwrap_or(true)
}

fn record(stream: usize, e: &io::Error) {
    if let Ok(mut f) = FAILED.lock() {
        if f[stream].is_none() {
            f[stream] = Some(e.to_string());
        }
    }
}

/// Writes formatted text to standard output; a failure is remembered for [`finish`].
pub fn out_fmt(args: fmt::Arguments<'_>) {
    if failed(STDOUT) {
        return;
    }
    let mut o = io::stdout().lock();
    if let Err(e) = o.write_fmt(args) {
        record(STDOUT, &e);
    }
}

/// Writes formatted text to standard error; a failure is remembered for [`finish`].
pub fn err_fmt(args: fmt::Arguments<'_>) {
    if failed(STDERR) {
        return;
    }
    let mut o = io::stderr().lock();
    if let Err(e) = o.write_fmt(args) {
        record(STDERR, &e);
    }
}

/// `outln!` through the checked standard-output writer.
macro_rules! outln {
    () => { $crate::output::out_fmt(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::out_fmt(format_args!("{}\n", format_args!($($t)*))) };
}

/// `errln!` through the checked standard-error writer.
macro_rules! errln {
    ($($t:tt)*) => { $crate::output::err_fmt(format_args!("{}\n", format_args!($($t)*))) };
}

/// Flushes standard output; returns the first write failure of either stream, as a sentence.
pub fn finish() -> Option<String> {
    if !failed(STDOUT) {
        if let Err(e) = io::stdout().lock().flush() {
            record(STDOUT, &e);
        }
    }
    let f = FAILED.lock().ok()?;
    match (&f[STDOUT], &f[STDERR]) {
        (Some(e), _) => Some(format!(
            "cannot write to standard output: {e}; the output is incomplete"
        )),
        (None, Some(e)) => Some(format!("cannot write to standard error: {e}")),
        (None, None) => None,
    }
}

/// (device, inode) of the file a path names, following symlinks.
#[cfg(unix)]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    let _ = p;
    None
}

/// Checks that `path` may be written: not one of `inputs` (same file by device and inode),
/// not a directory or special file, and not an existing file unless `force`. Commands call it
/// before their work so that a refused output costs nothing; [`write_file`] calls it again.
pub fn check_output(path: &Path, inputs: &[&Path], force: bool) -> anyhow::Result<()> {
    if path.as_os_str().is_empty() {
        bail!("the output file name is empty");
    }
    let Ok(lmeta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // nothing there yet
    };
    if let Some(out) = file_id(path) {
        for i in inputs {
            if file_id(i) == Some(out) {
                bail!(
                    "{} is the input {} (the same file): writing it would destroy the input; choose another output file",
                    path.display(),
                    i.display()
                );
            }
        }
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!(
            "{} is a directory; give the output a file name",
            path.display()
        ),
        Ok(m) if !m.is_file() => bail!(
            "{} exists and is not a regular file; the output must be a regular file",
            path.display()
        ),
        Ok(_) | Err(_) if !force => bail!(
            "{} already exists{}; give --force to replace it, or choose another output file",
            path.display(),
            if lmeta.file_type().is_symlink() {
                " (a symbolic link)"
            } else {
                ""
            }
        ),
        _ => Ok(()),
    }
}

/// Where the bytes end up: a symlink to an existing file is written through (the link stays).
fn target_of(path: &Path) -> PathBuf {
    match std::fs::canonicalize(path) {
        Ok(p) if p.is_file() => p,
        _ => path.to_path_buf(),
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename,
/// fsync of the directory), after [`check_output`]. On error nothing is left behind and an
/// existing `path` is unchanged.
pub fn write_file(path: &Path, bytes: &[u8], inputs: &[&Path], force: bool) -> anyhow::Result<()> {
    check_output(path, inputs, force)?;
    let target = target_of(path);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // "cannot write OUT: <step>: <OS error>; nothing was written" (OUT unchanged).
    let fail = |what: String, e: std::io::Error| {
        // tempfile appends the temporary file's name (` at path "…"`), which is gone.
        let e = e.to_string();
        let e = e.split(" at path \"").next().unwrap_or_default();
        anyhow::anyhow!(
            "cannot write {}: {what}: {e}; nothing was written",
            path.display()
        )
    };
    let mut b = tempfile::Builder::new();
    b.prefix(".xstate-").suffix(".partial");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A new file gets 0666 less the umask, like any file a shell creates; a replaced file
        // keeps its mode.
        let mode = std::fs::metadata(&target)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o666);
        b.permissions(std::fs::Permissions::from_mode(mode));
    }
    let mut tmp = b
        .tempfile_in(&dir)
        .map_err(|e| fail(format!("cannot create a file in {}", dir.display()), e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| fail(format!("writing {} bytes", bytes.len()), e))?;
    let persisted = if force {
        tmp.persist(&target)
    } else {
        // RENAME_NOREPLACE where the filesystem has it: a file that appeared since the check
        // is not replaced either.
        tmp.persist_noclobber(&target)
    };
    persisted.map_err(|e| {
        let what = if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            String::from("it appeared while the output was written (give --force to replace it)")
        } else {
            format!("renaming the temporary file in {} to it", dir.display())
        };
        fail(what, e.error)
    })?;
    // The rename is durable once the directory is. A filesystem that cannot sync a directory
    // (EINVAL, ENOTSUP) has nothing more to make durable.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .or_else(|e| match e.raw_os_error() {
            #[cfg(unix)]
            Some(libc::EINVAL | libc::ENOTSUP) => Ok(()),
            _ => Err(e),
        })
        .with_context(|| {
            format!(
                "wrote {} but cannot sync its directory {}",
                path.display(),
                dir.display()
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_inputs_existing_files_and_directories() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::write(&a, b"input").unwrap();
        let e = write_file(&a, b"x", &[&a], true).unwrap_err().to_string();
        assert!(e.contains("is the input"), "{e}");
        // Through a hard link and a symlink.
        let h = d.path().join("h");
        std::fs::hard_link(&a, &h).unwrap();
        let s = d.path().join("s");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&a, &s).unwrap();
        for p in [&h, &s] {
            let e = write_file(p, b"x", &[&a], true).unwrap_err().to_string();
            assert!(e.contains("is the input"), "{e}");
        }
        assert_eq!(std::fs::read(&a).unwrap(), b"input");
        let b = d.path().join("b");
        std::fs::write(&b, b"old").unwrap();
        let e = write_file(&b, b"new", &[&a], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--force"), "{e}");
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        write_file(&b, b"new", &[&a], true).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        let e = write_file(d.path(), b"x", &[], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a directory"), "{e}");
        // Only the three files and the link: no temporary file left.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 4);
    }

    #[test]
    fn writes_through_a_symlink_and_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::write(&t, b"old").unwrap();
        let s = d.path().join("s");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&t, &s).unwrap();
            write_file(&s, b"new", &[], true).unwrap();
            assert!(std::fs::symlink_metadata(&s)
                .unwrap()
                .file_type()
                .is_symlink());
            assert_eq!(std::fs::read(&t).unwrap(), b"new");
        }
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("no/such/dir/f");
        let e = format!("{:#}", write_file(&p, b"x", &[], false).unwrap_err());
        assert!(
            e.contains("cannot write") && e.contains("nothing was written"),
            "{e}"
        );
    }
}
