//! Whether CPUID data may be used: every dump a command reads passes through [`judge`], which
//! refuses data that breaks a consistency rule of `xstate::layout::Layout::trusted` (exit 1,
//! every rule named) unless `--trust-cpuid` was given. With the override the data is used for
//! forensics and every line the command prints carries the warning: text output through a
//! line prefixer installed on stdout, JSON output through a `trusted_inconsistent` and a
//! `warnings` field ([`annotate_json`]).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use xstate::cpuid::CpuidDump;
use xstate::layout::{InconsistentCpuid, Layout};

/// `--trust-cpuid` was given.
static TRUST: AtomicBool = AtomicBool::new(false);
/// The command writes JSON (`--json`): warnings go into the document, not before each line.
static JSON: AtomicBool = AtomicBool::new(false);
/// The warnings of every inconsistent dump used under `--trust-cpuid`.
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The thread copying stdout with the warning prefix, once installed.
static PREFIXER: OnceLock<Mutex<Option<JoinHandle<std::io::Result<()>>>>> = OnceLock::new();

/// CPUID data refused because it breaks a consistency rule: a negative verdict on the input
/// (exit 1), not a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}; not used (give --trust-cpuid to use it anyway, for forensics)")]
pub struct Refused(pub InconsistentCpuid);

/// Records the global options: `--trust-cpuid` and whether the output is JSON.
pub fn configure(trust: bool, json: bool) {
    TRUST.store(trust, Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
}

/// Lets a dump through when its leaf 0xD is consistent; refuses it otherwise, unless
/// `--trust-cpuid` was given, in which case the warning is recorded, printed on stderr and
/// carried by every line of output from now on.
pub fn judge(dump: &CpuidDump) -> anyhow::Result<()> {
    let Err(e) = Layout::trusted(dump) else {
        return Ok(());
    };
    if !TRUST.load(Ordering::Relaxed) {
        return Err(Refused(e).into());
    }
    let text = format!("--trust-cpuid: using inconsistent CPUID data: {e}");
    errln!("xstate: warning: {text}");
    if let Ok(mut w) = WARNINGS.lock() {
        w.push(text);
    }
    if !JSON.load(Ordering::Relaxed) {
        install_prefixer(&format!("[UNTRUSTED CPUID {}] ", e.dump))?;
    }
    Ok(())
}

/// Adds `"trusted_inconsistent": true` and the `warnings` to a JSON object when an
/// inconsistent dump is in use (nothing otherwise).
pub fn annotate_json(v: &mut serde_json::Value) {
    let w = match WARNINGS.lock() {
        Ok(w) if !w.is_empty() => w.clone(),
        _ => return,
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("trusted_inconsistent".into(), true.into());
        let mut all: Vec<serde_json::Value> = match o.remove("warnings") {
            Some(serde_json::Value::Array(a)) => a,
            Some(other) => vec![other],
            None => Vec::new(),
        };
        all.extend(w.into_iter().map(serde_json::Value::String));
        o.insert("warnings".into(), serde_json::Value::Array(all));
    }
}

/// Routes stdout through a pipe whose reader writes each line, prefixed, to the original
/// stdout. Installed once.
fn install_prefixer(prefix: &str) -> anyhow::Result<()> {
    let cell = PREFIXER.get_or_init(|| Mutex::new(None));
    let mut slot = cell
        .lock()
        .map_err(|_| anyhow::anyhow!("stdout prefixer lock poisoned"))?;
    if slot.is_some() {
        return Ok(());
    }
    std::io::stdout().flush()?;
    let (reader, writer) = pipe()?;
    let original = std::io::stdout().as_fd().try_clone_to_owned()?;
    redirect_stdout(&writer)?;
    drop(writer);
    let prefix = prefix.to_string();
    let handle = std::thread::spawn(move || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::from(original));
        let mut r = BufReader::new(reader);
        let mut line = Vec::new();
        // After a failed write (a full disk, say) the rest is read and dropped, so that the
        // command's own writes into the pipe do not fail with EPIPE (a silent SIGPIPE death):
        // the error is returned by `finish` and the command ends with exit 2 and a message.
        let mut failed = None;
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if failed.is_some() {
                continue;
            }
            if let Err(e) = out
                .write_all(prefix.as_bytes())
                .and_then(|()| out.write_all(&line))
                .and_then(|()| out.flush())
            {
                failed = Some(e);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => out.flush(),
        }
    });
    *slot = Some(handle);
    Ok(())
}

/// A pipe(2): (read end, write end).
fn pipe() -> anyhow::Result<(std::fs::File, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe(2) writes two new descriptors into the two-element array it is given.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        anyhow::bail!("cannot create a pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by pipe(2) and are owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((std::fs::File::from(r), w))
}

/// Makes file descriptor 1 a duplicate of `to` (dup2(2)).
fn redirect_stdout(to: &impl AsFd) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = to.as_fd().as_raw_fd();
    // SAFETY: dup2(2) on two open descriptors this process owns (`to` is borrowed for the
    // call, fd 1 is stdout); it touches no memory and Rust's stdout keeps using fd 1.
    let r = unsafe { libc::dup2(fd, 1) };
    if r < 0 {
        anyhow::bail!(
            "cannot redirect stdout: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Ends the prefixer, if installed: flushes stdout, closes the pipe (fd 1 becomes
/// /dev/null), and waits until every line has been written. An error writing the real stdout
/// is returned (exit 2).
pub fn finish() -> anyhow::Result<()> {
    let Some(cell) = PREFIXER.get() else {
        return Ok(());
    };
    let handle = match cell.lock() {
        Ok(mut s) => s.take(),
        Err(_) => None,
    };
    let Some(handle) = handle else {
        return Ok(());
    };
    let _ = std::io::stdout().flush();
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    redirect_stdout(&null)?;
    match handle.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot write to standard output: {e}; the output is incomplete"
        )),
        Err(_) => Err(anyhow::anyhow!("the stdout prefixer failed")),
    }
}
