//! The run parameters: the 512-byte sector at 0x100000 (LBA 1 of the disk image), which
//! `scripts/ring0` overwrites with ASCII text `seed=N cases=M first=K` (terminated by a NUL or
//! newline).

const fn default_params() -> [u8; 512] {
    let text = b"seed=1 cases=10";
    let mut a = [0u8; 512];
    let mut i = 0;
    while i < text.len() {
        a[i] = text[i];
        i += 1;
    }
    a
}

#[link_section = ".params"]
#[used]
static PARAMS: [u8; 512] = default_params();

/// What the runner asked for.
pub struct Params {
    /// Seed of the case generator.
    pub seed: u64,
    /// Number of random cases.
    pub cases: u64,
    /// Index of the first case.
    pub first: u64,
    /// The executor is Bochs (`exec=bochs`, the default): its listed deviations apply.
    pub bochs: bool,
}

/// Parses the parameter sector (read volatile: the runner patches it after linking).
pub fn read() -> Params {
    let mut buf = [0u8; 512];
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: in-bounds read of a static; volatile so the linked-in default is not folded.
        *b = unsafe { core::ptr::read_volatile(PARAMS.as_ptr().add(i)) };
    }
    let end = buf
        .iter()
        .position(|&b| b == 0 || b == b'\n')
        .unwrap_or(buf.len());
    let text = core::str::from_utf8(&buf[..end]).unwrap_or("");
    let mut p = Params {
        seed: 1,
        cases: 10,
        first: 0,
        bochs: true,
    };
    for word in text.split(' ') {
        if let Some(v) = word.strip_prefix("seed=") {
            p.seed = v.parse().unwrap_or(p.seed);
        } else if let Some(v) = word.strip_prefix("cases=") {
            p.cases = v.parse().unwrap_or(p.cases);
        } else if let Some(v) = word.strip_prefix("first=") {
            p.first = v.parse().unwrap_or(p.first);
        } else if let Some(v) = word.strip_prefix("exec=") {
            p.bochs = v == "bochs";
        }
    }
    p
}
