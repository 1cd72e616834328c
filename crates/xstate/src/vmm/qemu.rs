//! QEMU migration streams: what `savevm` and `migrate "exec:cat > FILE"` write.
//!
//! QEMU never migrates an XSAVE image: it migrates each register as a field of the `cpu`
//! device section and rebuilds the image with the destination's offsets (DESIGN.md §7). A
//! stream is (QEMU `migration/savevm.c`, `migration/ram.c`, `migration/vmstate.c`, `target/i386/
//! machine.c`; all integers big-endian):
//! - the header: magic `QEVM` (0x5145564d), stream version 3;
//! - sections, each starting with a type byte: 0x07 configuration (the machine type), 0x01
//!   start / 0x04 full (section id, id string, instance id, version), 0x02 part / 0x03 end
//!   (section id), 0x08 command, each but the configuration followed by a footer (0x7e and the
//!   section id); 0x00 ends them;
//! - 0x06 and the length of a JSON description ("vmdesc") of every full section: each field's
//!   name, type, element size and array length, and the subsections that were sent.
//!
//! Device sections carry no lengths: this reader walks them with the vmdesc, and walks RAM
//! (the iterative `ram` section: page headers with flags in the low bits) with its page-flag
//! rules. Nothing is guessed: a section the vmdesc does not describe, a page flag this reader
//! does not know, a field whose size is not what the x86 CPU's vmstate declares, are errors
//! naming the byte offset.
//!
//! Per vCPU (a `cpu` section per instance) it extracts x87 (`env.fpuc`, `env.fpus_vmstate`,
//! `env.fptag_vmstate`, `env.fpregs`, and `cpu/fpop_ip_dp`), MXCSR, XMM, the YMM upper halves,
//! XCR0 and XSTATE_BV, and the subsections `cpu/mpx`, `cpu/avx512`, `cpu/pkru`, `cpu/xss`,
//! `cpu/msr_xfd`, `cpu/intel_amx_xtile` and the CET ones (`cpu/cet*`) when the stream has
//! them. A stream carries no CPUID: the source CPU is unknown; see [`QemuVcpu::to_snapshot`].

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::Value;

use crate::components::{bits, mask, Component, Kind};
use crate::snapshot::{Legacy, Snapshot, SourceComponent, SourceCpu};

/// `QEMU_VM_FILE_MAGIC`: "QEVM".
pub const MAGIC: [u8; 4] = *b"QEVM";
/// The largest stream the commands read (256 MiB): the reader holds the whole stream in
/// memory, and a stream carries the guest's RAM (a 16 MiB test guest writes 600 KB, zero pages
/// being 9 bytes each). Streams of larger guests: not read yet (a reader that seeks over RAM
/// pages is the follow-up).
pub const MAX_STREAM: u64 = 256 << 20;
/// `QEMU_VM_FILE_VERSION`, the only stream version QEMU has written since 2009.
pub const STREAM_VERSION: u32 = 3;

const SECTION_EOF: u8 = 0x00;
const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_FULL: u8 = 0x04;
const SUBSECTION: u8 = 0x05;
const VMDESCRIPTION: u8 = 0x06;
const CONFIGURATION: u8 = 0x07;
const COMMAND: u8 = 0x08;
const SECTION_FOOTER: u8 = 0x7e;

// RAM page-header flags (low bits of each u64 page header, migration/ram.c).
const RAM_ZERO: u64 = 0x02;
const RAM_MEM_SIZE: u64 = 0x04;
const RAM_PAGE: u64 = 0x08;
const RAM_EOS: u64 = 0x10;
const RAM_CONTINUE: u64 = 0x20;
const RAM_XBZRLE: u64 = 0x40;
const RAM_HOOK: u64 = 0x80;
const RAM_COMPRESS_PAGE: u64 = 0x100;
const RAM_MULTIFD_FLUSH: u64 = 0x200;

/// Why a stream cannot be read: the byte offset, the field or structure, the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("QEMU stream byte {offset}: {field}: {rule}")]
pub struct StreamError {
    /// Byte offset in the stream (for vmdesc errors, the offset of the vmdesc).
    pub offset: usize,
    /// The section, field or structure concerned.
    pub field: String,
    /// What is wrong.
    pub rule: String,
}

fn err(offset: usize, field: &str, rule: impl Into<String>) -> StreamError {
    StreamError {
        offset,
        field: String::from(field),
        rule: rule.into(),
    }
}

/// True when `bytes` start with the QEMU stream magic and version 3.
pub fn is_stream(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == MAGIC && bytes[4..8] == STREAM_VERSION.to_be_bytes()
}

/// A whole stream: what it says about the machine and each vCPU's extended state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuStream {
    /// The machine type of the configuration section (`pc-i440fx-7.2`), when present.
    pub machine: Option<String>,
    /// Target page size from the vmdesc (4096 on x86).
    pub page_size: u64,
    /// Device sections in stream order: (id string, instance id, version).
    pub sections: Vec<(String, u32, u32)>,
    /// One entry per `cpu` section, in stream order.
    pub vcpus: Vec<QemuVcpu>,
}

/// The extended state of one vCPU as the `cpu` section carries it, in architectural form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QemuVcpu {
    /// The section's instance id (the CPU index).
    pub instance_id: u32,
    /// The `cpu` vmstate version.
    pub version: u32,
    /// Byte offset of the vCPU's `cpu` section in the stream (errors about it name it).
    pub offset: usize,
    /// Subsections the stream carried for this vCPU (`cpu/avx512`, …).
    pub subsections: Vec<String>,
    /// FPU control word (`env.fpuc`).
    pub fcw: u16,
    /// FPU status word with TOP in bits 13:11 (`env.fpus_vmstate`).
    pub fsw: u16,
    /// Abridged tag word, bit i set when physical register i is valid (`env.fptag_vmstate`).
    pub ftw: u8,
    /// Last x87 opcode, instruction and data pointers (`cpu/fpop_ip_dp`, else 0).
    pub fop: u16,
    /// Last x87 instruction pointer.
    pub fip: u64,
    /// Last x87 data pointer.
    pub fdp: u64,
    /// x87 registers in *physical* order (`env.fpregs[i]`, 80-bit little-endian); ST(i) is
    /// physical register (TOP + i) mod 8 (SDM Vol. 1 §8.1.2).
    pub fpregs: [[u8; 10]; 8],
    /// MXCSR.
    pub mxcsr: u32,
    /// ZMM0–ZMM31 (32 entries), 64 bytes each little-endian, assembled from XMM (bytes 0..16), the YMM
    /// upper halves (16..32), `cpu/avx512`'s ZMM upper halves (32..64) and Hi16_ZMM.
    pub zmm: Vec<[u8; 64]>,
    /// k0–k7 (`cpu/avx512`).
    pub opmask: [u64; 8],
    /// BND0–BND3 as (lower, upper) bounds (`cpu/mpx`).
    pub bnd: [(u64, u64); 4],
    /// BNDCFGU and BNDSTATUS (`cpu/mpx`).
    pub bndcsr: (u64, u64),
    /// PKRU (`cpu/pkru`).
    pub pkru: u32,
    /// XCR0 (`env.xcr0`).
    pub xcr0: u64,
    /// XSTATE_BV as QEMU tracked it (`env.xstate_bv`; 0 under TCG, which does not track it).
    pub xstate_bv: u64,
    /// IA32_XSS (`cpu/xss`).
    pub xss: u64,
    /// IA32_XFD and IA32_XFD_ERR (`cpu/msr_xfd`).
    pub xfd: (u64, u64),
    /// TILECFG (64 bytes) and TILEDATA (8192 bytes) (`cpu/intel_amx_xtile`).
    pub xtile: Option<(Vec<u8>, Vec<u8>)>,
    /// Other MSRs of the extended state the stream carries (IA32_BNDCFGS, the CET MSRs).
    pub msrs: BTreeMap<u32, u64>,
}

/// One field of a walked section: its name, the struct it is made of (vmsd name), where its
/// bytes are, the size of one element and the number of elements.
#[derive(Clone, Debug)]
struct Field {
    name: String,
    struct_name: Option<String>,
    offset: usize,
    size: usize,
    count: usize,
}

/// A walked (sub)section: its fields and its subsections, by name.
#[derive(Clone, Debug, Default)]
struct Walked {
    fields: Vec<Field>,
    subsections: Vec<(String, Walked)>,
}

impl Walked {
    fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
    /// Every element (offset, size) of the struct arrays whose struct is `vmsd`, in order.
    fn elements(&self, vmsd: &str) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for f in self
            .fields
            .iter()
            .filter(|f| f.struct_name.as_deref() == Some(vmsd))
        {
            for i in 0..f.count {
                v.push((f.offset + i * f.size, f.size));
            }
        }
        v
    }
    fn sub(&self, name: &str) -> Option<&Walked> {
        self.subsections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| w)
    }
}

/// A bounded big-endian reader over the stream.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], StreamError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                err(
                    self.pos,
                    what,
                    format!(
                        "needs {n} bytes, the stream has {} left (truncated)",
                        self.b.len().saturating_sub(self.pos)
                    ),
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, StreamError> {
        Ok(self.take(1, what)?[0])
    }
    fn be16(&mut self, what: &str) -> Result<u16, StreamError> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn be32(&mut self, what: &str) -> Result<u32, StreamError> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn be64(&mut self, what: &str) -> Result<u64, StreamError> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    /// A string of one length byte and that many bytes (QEMU's `qemu_put_counted_string`).
    fn counted(&mut self, what: &str) -> Result<String, StreamError> {
        let n = self.u8(what)? as usize;
        let at = self.pos;
        let s = self.take(n, what)?;
        core::str::from_utf8(s)
            .map(String::from)
            .map_err(|_| err(at, what, "is not UTF-8"))
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }
}

/// Finds the vmdesc: QEMU writes 0x00 (end of sections), 0x06, a u32 length and that many
/// bytes of JSON, which end the stream. Returns (offset of the 0x06 byte, the JSON).
fn find_vmdesc(b: &[u8]) -> Result<(usize, Value), StreamError> {
    let n = b.len();
    // The JSON ends with '}'; its start is the first byte after a 0x06 + length that points
    // exactly to the end of the stream.
    if n < 14 || b[n - 1] != b'}' {
        return Err(err(
            n,
            "vmdesc",
            "the stream does not end with the JSON description QEMU appends (truncated, or written with the description suppressed)",
        ));
    }
    let mut p = n.saturating_sub(6);
    while p >= 9 {
        if b[p] == VMDESCRIPTION && b[p - 1] == SECTION_EOF && b[p + 5] == b'{' {
            let len = u32::from_be_bytes([b[p + 1], b[p + 2], b[p + 3], b[p + 4]]) as usize;
            if len == n - p - 5 {
                let v: Value = serde_json::from_slice(&b[p + 5..])
                    .map_err(|e| err(p + 5, "vmdesc", format!("is not valid JSON: {e}")))?;
                return Ok((p, v));
            }
        }
        p -= 1;
    }
    Err(err(
        n,
        "vmdesc",
        "no 0x00 0x06 <length> {…} description found at the end of the stream",
    ))
}

fn json_u64(v: &Value, key: &str, at: usize, what: &str) -> Result<u64, StreamError> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| err(at, what, format!("vmdesc entry has no integer `{key}`")))
}

fn json_str<'v>(v: &'v Value, key: &str, at: usize, what: &str) -> Result<&'v str, StreamError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| err(at, what, format!("vmdesc entry has no string `{key}`")))
}

/// Walks the fields (and subsections) a vmdesc object describes, from the cursor.
fn walk(c: &mut Cursor<'_>, desc: &Value, what: &str, depth: u32) -> Result<Walked, StreamError> {
    if depth > 16 {
        return Err(err(c.pos, what, "subsections nested deeper than 16"));
    }
    let mut w = Walked::default();
    let empty = Vec::new();
    let fields = match desc.get("fields") {
        None => &empty,
        Some(f) => f
            .as_array()
            .ok_or_else(|| err(c.pos, what, "vmdesc `fields` is not an array"))?,
    };
    for f in fields {
        let name = json_str(f, "name", c.pos, what)?;
        let size = json_u64(f, "size", c.pos, what)?;
        let count = match f.get("array_len") {
            None => 1,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| err(c.pos, what, "vmdesc `array_len` is not an integer"))?,
        };
        let total = size
            .checked_mul(count)
            .filter(|&t| t <= c.b.len() as u64)
            .ok_or_else(|| {
                err(
                    c.pos,
                    name,
                    format!("vmdesc says {count} × {size} bytes, more than the stream holds"),
                )
            })? as usize;
        let struct_name = f
            .get("struct")
            .and_then(|s| s.get("vmsd_name"))
            .and_then(Value::as_str)
            .map(String::from);
        let offset = c.pos;
        c.take(total, name)?;
        w.fields.push(Field {
            name: String::from(name),
            struct_name,
            offset,
            size: size as usize,
            count: count as usize,
        });
    }
    if let Some(subs) = desc.get("subsections") {
        let subs = subs
            .as_array()
            .ok_or_else(|| err(c.pos, what, "vmdesc `subsections` is not an array"))?;
        for s in subs {
            let vmsd = json_str(s, "vmsd_name", c.pos, what)?;
            let at = c.pos;
            let t = c.u8(vmsd)?;
            if t != SUBSECTION {
                return Err(err(
                    at,
                    vmsd,
                    format!("expected subsection marker 0x05, found {t:#04x}"),
                ));
            }
            let name = c.counted(vmsd)?;
            if name != vmsd {
                return Err(err(
                    at,
                    vmsd,
                    format!("the stream has subsection `{name}` where the vmdesc lists `{vmsd}`"),
                ));
            }
            let _version = c.be32(vmsd)?;
            let sw = walk(c, s, vmsd, depth + 1)?;
            w.subsections.push((name, sw));
        }
    }
    Ok(w)
}

/// Reads the configuration section: the machine name and the subsections QEMU may add.
fn configuration(c: &mut Cursor<'_>) -> Result<String, StreamError> {
    let len = c.be32("configuration.len")? as usize;
    let at = c.pos;
    let name = c.take(len, "configuration.name")?;
    let name = core::str::from_utf8(name)
        .map_err(|_| err(at, "configuration.name", "is not UTF-8"))?
        .to_string();
    while c.peek() == Some(SUBSECTION) {
        let at = c.pos;
        c.u8("configuration subsection")?;
        let sub = c.counted("configuration subsection")?;
        c.be32(&sub)?;
        match sub.as_str() {
            "configuration/target-page-bits" => {
                c.be32(&sub)?;
            }
            "configuration/capabilities" => {
                let n = c.be32(&sub)?;
                for _ in 0..n {
                    c.counted(&sub)?;
                }
            }
            "configuration/uuid" => {
                c.take(16, &sub)?;
            }
            _ => {
                return Err(err(
                    at,
                    &sub,
                    "configuration subsection this reader does not know (its length is not in the stream)",
                ))
            }
        }
    }
    Ok(name)
}

/// Walks RAM page records up to RAM_SAVE_FLAG_EOS (migration/ram.c `ram_load_precopy`).
fn ram(c: &mut Cursor<'_>, page_size: u64, setup: bool) -> Result<(), StreamError> {
    let mask = page_size - 1;
    loop {
        let at = c.pos;
        let h = c.be64("ram page header")?;
        let flags = h & mask;
        if flags & RAM_MEM_SIZE != 0 {
            if !setup {
                return Err(err(at, "ram", "MEM_SIZE record outside the setup section"));
            }
            let mut left = h & !mask;
            while left > 0 {
                let block = c.counted("ram block id")?;
                let used = c.be64(&block)?;
                left = left.checked_sub(used).ok_or_else(|| {
                    err(
                        c.pos,
                        &block,
                        "RAM block lengths exceed the total the MEM_SIZE record declares",
                    )
                })?;
            }
            continue;
        }
        if flags & RAM_EOS != 0 {
            return Ok(());
        }
        if flags & RAM_MULTIFD_FLUSH != 0 && flags & !RAM_MULTIFD_FLUSH == 0 {
            continue;
        }
        let payload = flags & (RAM_ZERO | RAM_PAGE | RAM_XBZRLE | RAM_COMPRESS_PAGE);
        if payload.count_ones() != 1 || flags & RAM_HOOK != 0 {
            return Err(err(
                at,
                "ram",
                format!("page flags {flags:#x} are not one this reader knows (RDMA hook, or a newer format)"),
            ));
        }
        if flags & RAM_CONTINUE == 0 {
            c.counted("ram block id")?;
        }
        match payload {
            RAM_ZERO => {
                c.take(1, "ram zero-page fill byte")?;
            }
            RAM_PAGE => {
                c.take(page_size as usize, "ram page")?;
            }
            RAM_COMPRESS_PAGE => {
                let n = c.be32("compressed page length")? as usize;
                c.take(n, "compressed page")?;
            }
            _ => {
                c.u8("xbzrle encoding")?;
                let n = c.be16("xbzrle length")? as usize;
                c.take(n, "xbzrle page")?;
            }
        }
    }
}

fn footer(c: &mut Cursor<'_>, id: u32, what: &str) -> Result<(), StreamError> {
    if c.peek() == Some(SECTION_FOOTER) {
        let at = c.pos;
        c.u8(what)?;
        let fid = c.be32(what)?;
        if fid != id {
            return Err(err(
                at,
                what,
                format!("section footer names section {fid}, the section is {id}"),
            ));
        }
    }
    Ok(())
}

/// Reads a whole stream.
///
/// ```
/// // A stream must start with QEVM and version 3 and end with its JSON description.
/// let e = xstate::vmm::qemu::parse(b"QEVM\0\0\0\x03\0").unwrap_err();
/// assert!(e.to_string().contains("vmdesc"));
/// ```
pub fn parse(bytes: &[u8]) -> Result<QemuStream, StreamError> {
    if bytes.len() < 8 || bytes[..4] != MAGIC {
        return Err(err(
            0,
            "magic",
            "a QEMU stream starts with QEVM (51 45 56 4d)",
        ));
    }
    let version = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != STREAM_VERSION {
        return Err(err(
            4,
            "version",
            format!("stream version {version}; QEMU writes 3 (older streams are not read)"),
        ));
    }
    let (desc_at, desc) = find_vmdesc(bytes)?;
    let page_size = desc
        .get("page_size")
        .and_then(Value::as_u64)
        .unwrap_or(4096);
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return Err(err(
            desc_at,
            "vmdesc.page_size",
            format!("{page_size} is not a target page size"),
        ));
    }
    let devices = desc
        .get("devices")
        .and_then(Value::as_array)
        .ok_or_else(|| err(desc_at, "vmdesc.devices", "missing or not an array"))?;
    let mut next_device = 0usize;
    let body = &bytes[..desc_at];
    let mut c = Cursor { b: body, pos: 8 };
    let mut machine = None;
    let mut iterative: BTreeMap<u32, String> = BTreeMap::new();
    let mut sections = Vec::new();
    let mut vcpus = Vec::new();
    loop {
        let at = c.pos;
        let t = c.u8("section type")?;
        match t {
            SECTION_EOF => break,
            CONFIGURATION => machine = Some(configuration(&mut c)?),
            COMMAND => {
                let _cmd = c.be16("command")?;
                let n = c.be16("command length")? as usize;
                c.take(n, "command data")?;
            }
            SECTION_START | SECTION_FULL => {
                let id = c.be32("section id")?;
                let name = c.counted("section name")?;
                let instance = c.be32(&name)?;
                let ver = c.be32(&name)?;
                if t == SECTION_START {
                    if name != "ram" {
                        return Err(err(
                            at,
                            &name,
                            "iterative section other than ram (block migration, dirty bitmaps): its format is not read",
                        ));
                    }
                    ram(&mut c, page_size, true)?;
                    iterative.insert(id, name.clone());
                } else {
                    let d = devices.get(next_device).ok_or_else(|| {
                        err(at, &name, "a full section the vmdesc does not describe")
                    })?;
                    next_device += 1;
                    let dn = json_str(d, "name", at, &name)?;
                    let di = json_u64(d, "instance_id", at, &name)?;
                    if dn != name || di != u64::from(instance) {
                        return Err(err(
                            at,
                            &name,
                            format!("the stream has {name} instance {instance} where the vmdesc describes {dn} instance {di}"),
                        ));
                    }
                    let w = walk(&mut c, d, &name, 0)?;
                    if name == "cpu" {
                        vcpus.push(cpu(body, &w, instance, ver, at)?);
                    }
                    sections.push((name.clone(), instance, ver));
                }
                footer(&mut c, id, &name)?;
            }
            SECTION_PART | SECTION_END => {
                let id = c.be32("section id")?;
                let name = iterative.get(&id).cloned().ok_or_else(|| {
                    err(
                        at,
                        "section id",
                        format!("part of section {id}, which never started"),
                    )
                })?;
                ram(&mut c, page_size, false)?;
                footer(&mut c, id, &name)?;
            }
            _ => {
                return Err(err(
                    at,
                    "section type",
                    format!("{t:#04x} is not a QEMU section type (0x00–0x08)"),
                ))
            }
        }
    }
    if c.pos != desc_at {
        return Err(err(
            c.pos,
            "end of sections",
            format!(
                "{} bytes between the end marker and the vmdesc",
                desc_at - c.pos
            ),
        ));
    }
    if next_device != devices.len() {
        return Err(err(
            desc_at,
            "vmdesc.devices",
            format!(
                "describes {} device sections, the stream has {next_device}",
                devices.len()
            ),
        ));
    }
    Ok(QemuStream {
        machine,
        page_size,
        sections,
        vcpus,
    })
}

fn be_u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// Reads a scalar field of the walked section, checking its size.
fn scalar(b: &[u8], w: &Walked, name: &str, size: usize) -> Result<Option<u64>, StreamError> {
    let Some(f) = w.field(name) else {
        return Ok(None);
    };
    if f.size != size || f.count != 1 {
        return Err(err(
            f.offset,
            name,
            format!(
                "is {} × {} bytes; the x86 CPU vmstate declares 1 × {size}",
                f.count, f.size
            ),
        ));
    }
    let s = &b[f.offset..f.offset + size];
    let mut v = 0u64;
    for &x in s {
        v = v << 8 | u64::from(x);
    }
    Ok(Some(v))
}

/// Copies `n` struct-array elements of `qwords` big-endian u64 each into `dst(i)` as
/// little-endian bytes at `at`.
fn qword_elements(
    b: &[u8],
    w: &Walked,
    vmsd: &str,
    n: usize,
    qwords: usize,
    mut put: impl FnMut(usize, usize, u64),
) -> Result<bool, StreamError> {
    let els = w.elements(vmsd);
    if els.is_empty() {
        return Ok(false);
    }
    if els.len() != n || els.iter().any(|&(_, s)| s != qwords * 8) {
        return Err(err(
            els[0].0,
            vmsd,
            format!(
                "{} elements of {} bytes; the x86 CPU vmstate has {n} of {}",
                els.len(),
                els[0].1,
                qwords * 8
            ),
        ));
    }
    for (i, &(off, _)) in els.iter().enumerate() {
        for q in 0..qwords {
            put(i, q, be_u64_at(b, off + q * 8));
        }
    }
    Ok(true)
}

fn cpu(
    b: &[u8],
    w: &Walked,
    instance: u32,
    version: u32,
    at: usize,
) -> Result<QemuVcpu, StreamError> {
    let need = |v: Option<u64>, name: &str| {
        v.ok_or_else(|| {
            err(
                at,
                name,
                "the cpu section has no such field (not an x86 CPU vmstate)",
            )
        })
    };
    let mut v = QemuVcpu {
        instance_id: instance,
        version,
        offset: at,
        subsections: w.subsections.iter().map(|(n, _)| n.clone()).collect(),
        ..Default::default()
    };
    v.fcw = need(scalar(b, w, "env.fpuc", 2)?, "env.fpuc")? as u16;
    v.fsw = need(scalar(b, w, "env.fpus_vmstate", 2)?, "env.fpus_vmstate")? as u16;
    v.ftw = need(scalar(b, w, "env.fptag_vmstate", 2)?, "env.fptag_vmstate")? as u8;
    if let Some(fmt) = scalar(b, w, "env.fpregs_format_vmstate", 2)? {
        if fmt != 0 {
            return Err(err(
                w.field("env.fpregs_format_vmstate").map_or(0, |f| f.offset),
                "env.fpregs_format_vmstate",
                format!("{fmt}: only format 0 (80-bit registers) exists since QEMU 0.13"),
            ));
        }
    }
    v.mxcsr = need(scalar(b, w, "env.mxcsr", 4)?, "env.mxcsr")? as u32;
    v.xcr0 = scalar(b, w, "env.xcr0", 8)?.unwrap_or(mask::X87);
    v.xstate_bv = scalar(b, w, "env.xstate_bv", 8)?.unwrap_or(0);
    // x87 registers: 8 elements of mantissa (be64) then sign/exponent (be16).
    let fp = w.elements("fpreg");
    if fp.len() != 8 || fp.iter().any(|&(_, s)| s != 10) {
        return Err(err(
            fp.first().map_or(0, |e| e.0),
            "env.fpregs",
            format!(
                "{} elements; the x86 CPU vmstate has 8 of 10 bytes",
                fp.len()
            ),
        ));
    }
    for (i, &(off, _)) in fp.iter().enumerate() {
        let mant = be_u64_at(b, off);
        let exp = u16::from_be_bytes([b[off + 8], b[off + 9]]);
        v.fpregs[i][..8].copy_from_slice(&mant.to_le_bytes());
        v.fpregs[i][8..].copy_from_slice(&exp.to_le_bytes());
    }
    let mut zmm = alloc::vec![[0u8; 64]; 32];
    let xmm = qword_elements(b, w, "xmm_reg", 16, 2, |i, q, x| {
        zmm[i][q * 8..q * 8 + 8].copy_from_slice(&x.to_le_bytes())
    })?;
    if !xmm {
        return Err(err(
            at,
            "env.xmm_regs",
            "the cpu section has no XMM registers",
        ));
    }
    qword_elements(b, w, "ymmh_reg", 16, 2, |i, q, x| {
        zmm[i][16 + q * 8..24 + q * 8].copy_from_slice(&x.to_le_bytes())
    })?;
    if let Some(s) = w.sub("cpu/fpop_ip_dp") {
        v.fop = scalar(b, s, "env.fpop", 2)?.unwrap_or(0) as u16;
        v.fip = scalar(b, s, "env.fpip", 8)?.unwrap_or(0);
        v.fdp = scalar(b, s, "env.fpdp", 8)?.unwrap_or(0);
    }
    if let Some(s) = w.sub("cpu/avx512") {
        let k = s
            .field("env.opmask_regs")
            .filter(|f| f.size == 8 && f.count == 8)
            .ok_or_else(|| err(at, "cpu/avx512", "no env.opmask_regs of 8 × 8 bytes"))?;
        for i in 0..8 {
            v.opmask[i] = be_u64_at(b, k.offset + 8 * i);
        }
        qword_elements(b, s, "zmmh_reg", 16, 4, |i, q, x| {
            zmm[i][32 + q * 8..40 + q * 8].copy_from_slice(&x.to_le_bytes())
        })?;
        qword_elements(b, s, "hi16_zmm_reg", 16, 8, |i, q, x| {
            zmm[16 + i][q * 8..q * 8 + 8].copy_from_slice(&x.to_le_bytes())
        })?;
    }
    v.zmm = zmm;
    if let Some(s) = w.sub("cpu/mpx") {
        let mut bnd = [(0u64, 0u64); 4];
        qword_elements(b, s, "bnd_regs", 4, 2, |i, q, x| {
            if q == 0 {
                bnd[i].0 = x
            } else {
                bnd[i].1 = x
            }
        })?;
        v.bnd = bnd;
        v.bndcsr = (
            scalar(b, s, "env.bndcs_regs.cfgu", 8)?.unwrap_or(0),
            scalar(b, s, "env.bndcs_regs.sts", 8)?.unwrap_or(0),
        );
        if let Some(m) = scalar(b, s, "env.msr_bndcfgs", 8)? {
            v.msrs.insert(0xd90, m);
        }
    }
    if let Some(s) = w.sub("cpu/pkru") {
        v.pkru = scalar(b, s, "env.pkru", 4)?.unwrap_or(0) as u32;
    }
    if let Some(s) = w.sub("cpu/xss") {
        v.xss = scalar(b, s, "env.xss", 8)?.unwrap_or(0);
    }
    if let Some(s) = w.sub("cpu/msr_xfd") {
        v.xfd = (
            scalar(b, s, "env.msr_xfd", 8)?.unwrap_or(0),
            scalar(b, s, "env.msr_xfd_err", 8)?.unwrap_or(0),
        );
    }
    if let Some(s) = w.sub("cpu/intel_amx_xtile") {
        let cfg = s
            .field("env.xtilecfg")
            .filter(|f| f.size * f.count == 64)
            .ok_or_else(|| err(at, "cpu/intel_amx_xtile", "no env.xtilecfg of 64 bytes"))?;
        let data = s
            .field("env.xtiledata")
            .filter(|f| f.size * f.count == 8192)
            .ok_or_else(|| err(at, "cpu/intel_amx_xtile", "no env.xtiledata of 8192 bytes"))?;
        v.xtile = Some((
            b[cfg.offset..cfg.offset + 64].to_vec(),
            b[data.offset..data.offset + 8192].to_vec(),
        ));
    }
    // CET (SDM Vol. 1 §18): the MSRs by their architectural index, whatever the subsection
    // (`cpu/cet`, `cpu/cet_shstk`, `cpu/pl0_ssp`, … depending on the QEMU version). A field
    // this reader cannot map is an error when it holds state, never silently dropped; the
    // shadow-stack pointer register itself (`env.guest_ssp`) has no MSR and no place in a
    // snapshot record, so it too must be zero.
    for (name, s) in w
        .subsections
        .iter()
        .filter(|(n, _)| n.starts_with("cpu/cet") || n.contains("ssp"))
    {
        for f in &s.fields {
            let idx = match f.name.as_str() {
                "env.u_cet" => Some(0x6a0),
                "env.s_cet" => Some(0x6a2),
                "env.pl0_ssp" => Some(0x6a4),
                "env.pl1_ssp" => Some(0x6a5),
                "env.pl2_ssp" => Some(0x6a6),
                "env.pl3_ssp" => Some(0x6a7),
                "env.int_ssp_table" | "env.ssp_table_addr" => Some(0x6a8),
                _ => None,
            };
            let bytes = &b[f.offset..f.offset + f.size * f.count];
            match idx {
                Some(i) => {
                    let val = scalar(b, s, &f.name, 8)?.unwrap_or(0);
                    v.msrs.insert(i, val);
                }
                None if bytes.iter().all(|&x| x == 0) => {}
                None => {
                    return Err(err(
                        f.offset,
                        name,
                        format!(
                            "field `{}` holds state that is not a CET MSR this reader knows",
                            f.name
                        ),
                    ))
                }
            }
        }
    }
    Ok(v)
}

impl QemuVcpu {
    /// ST(i) as an 80-bit little-endian value: physical register (TOP + i) mod 8, TOP being
    /// FSW bits 13:11 (SDM Vol. 1 §8.1.2).
    pub fn st(&self, i: usize) -> [u8; 10] {
        let top = usize::from((self.fsw >> 11) & 7);
        self.fpregs[(top + i) & 7]
    }

    /// The vCPU as the project's snapshot record.
    ///
    /// Components present: x87 and SSE always; any other component when XCR0 enables it, the
    /// stream carried its registers and they are not all zero (QEMU sends AVX-512, PKRU, MPX
    /// and AMX subsections only when their content is not zero) or QEMU's XSTATE_BV has it.
    ///
    /// The stream carries no CPUID, so the source record is synthesised and says so: vendor
    /// empty, family/model/stepping 0, supported masks = XCR0 | x87 | SSE and IA32_XSS, each
    /// enabled catalogued component at its architectural size placed one after the other from
    /// byte 576 in component order, 64-byte aligned. QEMU restores registers field by field,
    /// so no source offset matters; a component the catalog does not know cannot be carried
    /// and is refused.
    pub fn to_snapshot(&self, producer: &str) -> Result<Snapshot, StreamError> {
        // XCR0[0] is always 1 (SDM Vol. 1 §13.3); QEMU stores 0 for CPU models without XSAVE.
        let xcr0 = self.xcr0 | mask::X87;
        let enabled = xcr0;
        let mut comps: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut x87 = Vec::with_capacity(80);
        for i in 0..8 {
            x87.extend_from_slice(&self.st(i));
        }
        comps.insert(0, x87);
        let mut sse = Vec::with_capacity(256);
        let mut ymmh = Vec::with_capacity(256);
        let mut zmmh = Vec::with_capacity(512);
        let mut hi16 = Vec::with_capacity(1024);
        let z = |i: usize| self.zmm.get(i).copied().unwrap_or([0u8; 64]);
        for i in 0..16 {
            let (lo, hi) = (z(i), z(16 + i));
            sse.extend_from_slice(&lo[..16]);
            ymmh.extend_from_slice(&lo[16..32]);
            zmmh.extend_from_slice(&lo[32..64]);
            hi16.extend_from_slice(&hi);
        }
        if xcr0 & mask::SSE != 0 {
            comps.insert(1, sse);
        } else if self.mxcsr != crate::snapshot::MXCSR_INIT || sse.iter().any(|&b| b != 0) {
            // A guest that never enabled XSAVE (XCR0 = 1, e.g. still in the firmware) may use
            // SSE through FXSAVE; a snapshot record with that XCR0 cannot carry SSE state.
            return Err(err(self.offset,
                "env.xcr0",
                format!("XCR0 is {:#x} (SSE not enabled) but MXCSR/XMM hold state: the guest has not enabled XSAVE yet, and a snapshot record cannot carry SSE state under that XCR0", self.xcr0),
            ));
        }
        let mut opmask = Vec::with_capacity(64);
        for k in self.opmask {
            opmask.extend_from_slice(&k.to_le_bytes());
        }
        let mut bndregs = Vec::with_capacity(64);
        for (lb, ub) in self.bnd {
            bndregs.extend_from_slice(&lb.to_le_bytes());
            bndregs.extend_from_slice(&ub.to_le_bytes());
        }
        let mut bndcsr = vec_zeroed(64);
        bndcsr[..8].copy_from_slice(&self.bndcsr.0.to_le_bytes());
        bndcsr[8..16].copy_from_slice(&self.bndcsr.1.to_le_bytes());
        let mut pkru = vec_zeroed(8);
        pkru[..4].copy_from_slice(&self.pkru.to_le_bytes());
        let mut cand: Vec<(u8, Vec<u8>)> = alloc::vec![
            (2, ymmh),
            (3, bndregs),
            (4, bndcsr),
            (5, opmask),
            (6, zmmh),
            (7, hi16),
            (9, pkru),
        ];
        if let Some((cfg, data)) = &self.xtile {
            cand.push((17, cfg.clone()));
            cand.push((18, data.clone()));
        }
        for (id, data) in cand {
            let bit = 1u64 << id;
            if enabled & bit == 0 && data.iter().any(|&x| x != 0) {
                return Err(err(
                    self.offset,
                    "env.xcr0",
                    format!(
                        "component {id} ({}) holds state but XCR0 {:#x} does not enable it",
                        Component::name_of(id),
                        self.xcr0
                    ),
                ));
            }
            if enabled & bit != 0 && (self.xstate_bv & bit != 0 || data.iter().any(|&x| x != 0)) {
                comps.insert(id, data);
            }
        }
        // The synthesised source record.
        let mut components = BTreeMap::new();
        let mut off = 576u32;
        let xfd_bits = self.xfd.0 | self.xfd.1;
        for id in bits((enabled | self.xss) & !mask::LEGACY & !mask::COMPACTED) {
            let c = Component::get(id).ok_or_else(|| {
                err(self.offset,
                    "env.xcr0",
                    format!("component {id} is enabled but is not one whose registers a QEMU stream carries"),
                )
            })?;
            let sup = c.kind == Kind::Supervisor;
            let mut flags = u32::from(sup);
            if id == 18 {
                flags |= 2; // TILEDATA is 64-byte aligned in the compacted form (CPUID.(0xD,18).ECX[1]).
            }
            if xfd_bits & (1u64 << id) != 0 {
                flags |= 4;
            }
            let offset = if sup {
                0
            } else {
                off = off.div_ceil(64) * 64;
                let o = off;
                off += c.arch_size;
                o
            };
            components.insert(
                id,
                SourceComponent {
                    size: c.arch_size,
                    offset,
                    flags,
                },
            );
        }
        let source = SourceCpu {
            vendor: String::new(),
            family: 0,
            model: 0,
            stepping: 0,
            xcr0_supported: enabled | mask::SSE,
            xss_supported: self.xss,
            xsave_features: 0,
            max_standard_size: off,
            components,
        };
        let msrs = self.msrs.clone();
        Ok(Snapshot {
            producer: String::from(producer),
            source,
            xcr0,
            xss: self.xss,
            xfd: self.xfd.0,
            xfd_err: self.xfd.1,
            legacy: Legacy {
                fcw: self.fcw,
                fsw: self.fsw,
                ftw: self.ftw,
                fop: self.fop,
                fip: self.fip,
                fdp: self.fdp,
                mxcsr: self.mxcsr,
                mxcsr_mask: 0,
            },
            components: comps,
            msrs,
        })
    }
}

fn vec_zeroed(n: usize) -> Vec<u8> {
    alloc::vec![0u8; n]
}

impl QemuStream {
    /// Each vCPU as a snapshot record, producer `QEMU migration stream (machine …, cpu N)`.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, StreamError> {
        self.vcpus
            .iter()
            .map(|v| {
                v.to_snapshot(&format!(
                    "QEMU migration stream (machine {}, cpu {})",
                    self.machine.as_deref().unwrap_or("unknown"),
                    v.instance_id
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One subsection: its name, its bytes and its vmdesc field list.
    type Sub<'a> = (&'a str, Vec<u8>, String);

    fn field(n: &str, ty: &str, size: u32, len: u32) -> String {
        if len > 1 {
            format!(r#"{{"name":"{n}","array_len":{len},"type":"{ty}","size":{size}}}"#)
        } else {
            format!(r#"{{"name":"{n}","type":"{ty}","size":{size}}}"#)
        }
    }

    fn structs(n: &str, vmsd: &str, size: u32) -> String {
        format!(
            r#"{{"name":"{n}","array_len":16,"type":"struct","struct":{{"vmsd_name":"{vmsd}","fields":[]}},"size":{size}}}"#
        )
    }

    /// A stream built from the format facts: header, configuration, one full `cpu` section
    /// (x87, MXCSR, XMM, XCR0, XSTATE_BV, then `subs`) described by its vmdesc, end, vmdesc.
    fn stream(xcr0: u64, subs: &[Sub<'_>]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(b"QEVM");
        s.extend_from_slice(&3u32.to_be_bytes());
        s.push(CONFIGURATION);
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(b"test");
        s.push(SECTION_FULL);
        s.extend_from_slice(&1u32.to_be_bytes());
        s.push(3);
        s.extend_from_slice(b"cpu");
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&12u32.to_be_bytes());
        s.extend_from_slice(&0x037fu16.to_be_bytes()); // fpuc
        s.extend_from_slice(&0x1800u16.to_be_bytes()); // fpus, TOP = 3
        s.extend_from_slice(&0x00ffu16.to_be_bytes()); // fptag
        s.extend_from_slice(&0u16.to_be_bytes());
        for i in 0..8u64 {
            s.extend_from_slice(&(0x8000_0000_0000_0000 | i).to_be_bytes());
            s.extend_from_slice(&(0x3fffu16).to_be_bytes());
        }
        s.extend_from_slice(&0x1f80u32.to_be_bytes()); // mxcsr
        for i in 0..16u64 {
            s.extend_from_slice(&i.to_be_bytes());
            s.extend_from_slice(&(i << 56).to_be_bytes());
        }
        s.extend_from_slice(&xcr0.to_be_bytes());
        s.extend_from_slice(&0u64.to_be_bytes()); // xstate_bv
        let mut sub_desc = Vec::new();
        for (name, bytes, fields) in subs {
            s.push(SUBSECTION);
            s.push(name.len() as u8);
            s.extend_from_slice(name.as_bytes());
            s.extend_from_slice(&1u32.to_be_bytes());
            s.extend_from_slice(bytes);
            sub_desc.push(format!(r#"{{"vmsd_name":"{name}","fields":[{fields}]}}"#));
        }
        s.push(SECTION_FOOTER);
        s.extend_from_slice(&1u32.to_be_bytes());
        s.push(SECTION_EOF);
        let fields = [
            field("env.fpuc", "uint16", 2, 1),
            field("env.fpus_vmstate", "uint16", 2, 1),
            field("env.fptag_vmstate", "uint16", 2, 1),
            field("env.fpregs_format_vmstate", "uint16", 2, 1),
            r#"{"name":"env.fpregs","array_len":8,"type":"struct","struct":{"vmsd_name":"fpreg","fields":[]},"size":10}"#.to_string(),
            field("env.mxcsr", "uint32", 4, 1),
            structs("env.xmm_regs[0]", "xmm_reg", 16),
            field("env.xcr0", "uint64", 8, 1),
            field("env.xstate_bv", "uint64", 8, 1),
        ]
        .join(",");
        let desc = format!(
            r#"{{"page_size":4096,"devices":[{{"name":"cpu","instance_id":0,"vmsd_name":"cpu","version":12,"fields":[{fields}],"subsections":[{}]}}]}}"#,
            sub_desc.join(",")
        );
        s.push(VMDESCRIPTION);
        s.extend_from_slice(&(desc.len() as u32).to_be_bytes());
        s.extend_from_slice(desc.as_bytes());
        s
    }

    fn tiny() -> Vec<u8> {
        stream(3, &[])
    }

    /// The AVX-512, PKRU, XSS, XFD, AMX and CET subsections of newer QEMU (field names and
    /// sizes from target/i386/machine.c); `guest_ssp` is the CET field this reader cannot map.
    fn newer_subsections(guest_ssp: u64) -> Vec<Sub<'static>> {
        let be = |v: &[u64]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        let opmask: Vec<u64> = (0..8).map(|k| 0x100 + k).collect();
        let mut avx512 = be(&opmask);
        for i in 0..16u64 {
            avx512.extend(be(&(0..4).map(|q| i << 8 | q | 0x40).collect::<Vec<_>>()));
        }
        for i in 0..16u64 {
            avx512.extend(be(&(0..8).map(|q| i << 8 | q | 0x80).collect::<Vec<_>>()));
        }
        let mut amx: Vec<u8> = (0..64u32).map(|i| i as u8 | 1).collect();
        amx.extend((0..8192u32).map(|i| (i % 251) as u8));
        vec![
            (
                "cpu/avx512",
                avx512,
                [
                    field("env.opmask_regs", "uint64", 8, 8),
                    structs("env.xmm_regs", "zmmh_reg", 32),
                    structs("env.xmm_regs", "hi16_zmm_reg", 64),
                ]
                .join(","),
            ),
            ("cpu/xss", be(&[0]), field("env.xss", "uint64", 8, 1)),
            (
                "cpu/pkru",
                0x5555_5554u32.to_be_bytes().to_vec(),
                field("env.pkru", "uint32", 4, 1),
            ),
            (
                "cpu/msr_xfd",
                // XFD_ERR after the #NM of a first TILEDATA use, XFD cleared by the handler.
                be(&[0, 1 << 18]),
                [
                    field("env.msr_xfd", "uint64", 8, 1),
                    field("env.msr_xfd_err", "uint64", 8, 1),
                ]
                .join(","),
            ),
            (
                "cpu/intel_amx_xtile",
                amx,
                [
                    field("env.xtilecfg", "uint8", 1, 64),
                    field("env.xtiledata", "uint8", 1, 8192),
                ]
                .join(","),
            ),
            (
                "cpu/cet",
                be(&[1, 0, guest_ssp]),
                [
                    field("env.u_cet", "uint64", 8, 1),
                    field("env.s_cet", "uint64", 8, 1),
                    field("env.guest_ssp", "uint64", 8, 1),
                ]
                .join(","),
            ),
        ]
    }

    #[test]
    fn reads_the_fields_by_their_description() {
        let st = parse(&tiny()).unwrap();
        assert_eq!(st.machine.as_deref(), Some("test"));
        assert_eq!(st.vcpus.len(), 1);
        let v = &st.vcpus[0];
        assert_eq!(v.fcw, 0x037f);
        // TOP = 3: ST0 is physical register 3.
        assert_eq!(v.st(0)[0], 3);
        assert_eq!(v.st(5)[0], 0);
        let s = &st.snapshots().unwrap()[0];
        assert_eq!(s.xmm(5), Some(5 | (5u128 << 120)));
        assert_eq!(s.xcr0, 3);
        assert!(
            crate::snapshot::validate(s).is_empty(),
            "{:?}",
            crate::snapshot::validate(s)
        );
    }

    #[test]
    fn reads_avx512_pkru_xfd_amx_and_cet_subsections() {
        let st = parse(&stream(0x602e7, &newer_subsections(0))).unwrap();
        let v = &st.vcpus[0];
        assert_eq!(v.opmask[3], 0x103);
        assert_eq!(v.pkru, 0x5555_5554);
        assert_eq!(v.xfd, (0, 1 << 18));
        assert_eq!(v.msrs.get(&0x6a0), Some(&1));
        let s = &st.snapshots().unwrap()[0];
        assert_eq!(s.xcr0, 0x602e7);
        // AVX is enabled but its YMM upper halves are zero (init): not present.
        assert_eq!(s.xstate_bv(), 0x602e3);
        // ZMM2 bits 256..320 (ZMM_Hi256 of register 2, first qword) = 0x240.
        assert_eq!(s.component(6).unwrap()[64..72], 0x240u64.to_le_bytes());
        // ZMM21 (Hi16_ZMM register 5), qword 7.
        assert_eq!(
            s.component(7).unwrap()[5 * 64 + 56..5 * 64 + 64],
            0x587u64.to_le_bytes()
        );
        assert_eq!(s.component(5).unwrap()[..8], 0x100u64.to_le_bytes());
        assert_eq!(
            s.component(9).unwrap(),
            &[0x54, 0x55, 0x55, 0x55, 0, 0, 0, 0]
        );
        assert_eq!(s.component(17).unwrap()[1], 1);
        assert_eq!(s.component(18).unwrap()[260], (260 % 251) as u8);
        assert_eq!(s.xfd_err, 1 << 18);
        assert!(
            crate::snapshot::validate(s).is_empty(),
            "{:?}",
            crate::snapshot::validate(s)
        );
        // A CET field holding state this reader cannot map is refused, not dropped.
        let e = parse(&stream(0x602e7, &newer_subsections(0x7000))).unwrap_err();
        assert!(e.to_string().contains("env.guest_ssp"), "{e}");
        // State in a component XCR0 does not enable is refused.
        let st = parse(&stream(0x7, &newer_subsections(0))).unwrap();
        let e = st.snapshots().unwrap_err();
        assert!(e.to_string().contains("opmask"), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let t = stream(0x602e7, &newer_subsections(0));
        for n in (0..t.len()).step_by(7) {
            assert!(parse(&t[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        for i in (8..t.len()).step_by(13) {
            let mut m = t.clone();
            m[i] ^= 0x55;
            if let Ok(st) = parse(&m) {
                let _ = st.snapshots();
            }
        }
    }
}
