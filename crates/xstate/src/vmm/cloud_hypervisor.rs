//! Cloud Hypervisor snapshots: the `state.json` of `ch-remote snapshot`.
//!
//! Format facts (cloud-hypervisor main branch, 2025–2026: `vm-migration/src/lib.rs`,
//! `hypervisor/src/kvm/x86_64/mod.rs`, `hypervisor/src/arch/x86/mod.rs`):
//! - the file is serde JSON of a tree `Snapshot { snapshots: {id: Snapshot}, snapshot_data:
//!   Option<SnapshotData { state: String }> }`; each leaf's `state` is itself a JSON document
//!   in a string. The vCPUs are the children of `cpu-manager`, keyed by vCPU id;
//! - a vCPU's state is `VcpuKvmState { cpuid: [CpuIdEntry { function, index, flags, eax, ebx,
//!   ecx, edx }], msrs: [MsrEntry { index, data }], …, xsave: XsaveState { region: [u32;
//!   1024], extra: [u32] (omitted when empty) }, xcrs: kvm_xcrs, … }`, possibly wrapped as
//!   `{"Kvm": {…}}` (the `CpuState` enum);
//! - `region` + `extra` is the raw KVM_GET_XSAVE2 buffer: the *standard* form laid out with
//!   the source host's offsets (DESIGN.md §6, §10), as little-endian u32 words;
//! - kvm-bindings serialises its `kvm_*` structs as their raw bytes, so `xcrs` is an array of
//!   the 392 bytes of `kvm_xcrs { nr_xcrs: u32, flags: u32, xcrs: [kvm_xcr { xcr: u32,
//!   reserved: u32, value: u64 }; 16], padding: [u64; 16] }`.
//!
//! Cloud Hypervisor restores that buffer with KVM_SET_XSAVE as it is: on a host whose layout
//! differs (Intel ↔ AMD with AVX-512, MPX on one side only) KVM accepts it and misplaces the
//! registers (measured, DESIGN.md §10). [`blob_moves`] names what would move; [`repair`]
//! rewrites the file with the region laid out for a destination, every other byte as it was.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::Value;

use crate::components::{bits, mask};
use crate::cpuid::{CpuidDump, Regs};
use crate::layout::{Form, Layout};
use crate::snapshot::{
    ControlRegs, Snapshot, SnapshotError, MSR_IA32_XFD, MSR_IA32_XFD_ERR, MSR_IA32_XSS,
};

/// Bytes of `XsaveState.region` (1024 u32 words: the 4 KiB `struct kvm_xsave`).
pub const REGION_BYTES: usize = 4096;
/// Bytes of `struct kvm_xcrs` (the `xcrs` byte array).
pub const KVM_XCRS_BYTES: usize = 392;

/// Why a `state.json` cannot be read or rewritten: where (a JSON path) and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Cloud Hypervisor state.json {location}: {rule}")]
pub struct StateError {
    /// JSON path (`snapshots.cpu-manager.snapshots.0 … xsave.region[12]`) or byte offset.
    pub location: String,
    /// What is wrong.
    pub rule: String,
}

fn serr(location: &str, rule: impl Into<String>) -> StateError {
    StateError {
        location: String::from(location),
        rule: rule.into(),
    }
}

/// Cheap content test: a JSON object whose first 64 KiB have the keys `snapshots` and
/// `snapshot_data` (every Cloud Hypervisor snapshot node has both). A truncated or damaged
/// file is still recognised, so that reading it fails with the reason rather than as an image.
pub fn looks_like_state_json(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(64 * 1024)];
    let first = head.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return false;
    }
    let has = |p: &[u8]| head.windows(p.len()).any(|w| w == p);
    has(b"\"snapshots\"") && has(b"\"snapshot_data\"")
}

/// One vCPU of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct ChVcpu {
    /// The vCPU id (its key under `cpu-manager`).
    pub id: String,
    /// The `state` string exactly as the file holds it (unescaped).
    pub state_text: String,
    /// The standard-form image: `region` then `extra`, little-endian.
    pub image: Vec<u8>,
    /// Words in `extra`.
    pub extra_words: usize,
    /// XCR0 from `xcrs` (None when `xcrs` lists no XCR 0).
    pub xcr0: Option<u64>,
    /// The MSRs, index → value, as saved.
    pub msrs: Vec<(u32, u64)>,
    /// The guest CPUID the snapshot carries (its leaf 0xD lays the region out).
    pub cpuid: CpuidDump,
}

/// A parsed `state.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct StateJson {
    /// Every vCPU, in key order.
    pub vcpus: Vec<ChVcpu>,
}

fn u32s(v: &Value, loc: &str) -> Result<Vec<u32>, StateError> {
    let a = v
        .as_array()
        .ok_or_else(|| serr(loc, "is not an array of u32"))?;
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| serr(&format!("{loc}[{i}]"), "is not a u32"))
        })
        .collect()
}

fn num(v: &Value, key: &str, loc: &str) -> Result<u64, StateError> {
    v.get(key).and_then(Value::as_u64).ok_or_else(|| {
        serr(
            &format!("{loc}.{key}"),
            "missing or not an unsigned integer",
        )
    })
}

fn vcpu(id: &str, state_text: &str) -> Result<ChVcpu, StateError> {
    let loc = format!("snapshots.cpu-manager.snapshots.{id}.snapshot_data.state");
    let outer: Value = serde_json::from_str(state_text)
        .map_err(|e| serr(&loc, format!("is not a JSON document: {e}")))?;
    let st = outer.get("Kvm").unwrap_or(&outer);
    if st.is_null() {
        return Err(serr(&loc, "is null: the vCPU was never saved"));
    }
    let xs = st
        .get("xsave")
        .ok_or_else(|| serr(&loc, "has no `xsave` (not a KVM vCPU state)"))?;
    let region = u32s(
        xs.get("region")
            .ok_or_else(|| serr(&format!("{loc}.xsave"), "has no `region`"))?,
        &format!("{loc}.xsave.region"),
    )?;
    if region.len() * 4 != REGION_BYTES {
        return Err(serr(
            &format!("{loc}.xsave.region"),
            format!(
                "has {} words; XsaveState.region is [u32; 1024]",
                region.len()
            ),
        ));
    }
    let extra = match xs.get("extra") {
        None => Vec::new(),
        Some(e) => u32s(e, &format!("{loc}.xsave.extra"))?,
    };
    let mut image = Vec::with_capacity((region.len() + extra.len()) * 4);
    for w in region.iter().chain(extra.iter()) {
        image.extend_from_slice(&w.to_le_bytes());
    }
    // xcrs: the raw bytes of struct kvm_xcrs.
    let xcr0 = match st.get("xcrs") {
        None => None,
        Some(x) => {
            let b: Vec<u8> = x
                .as_array()
                .ok_or_else(|| serr(&format!("{loc}.xcrs"), "is not a byte array"))?
                .iter()
                .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| serr(&format!("{loc}.xcrs"), "holds a value that is not a byte"))?;
            if b.len() != KVM_XCRS_BYTES {
                return Err(serr(
                    &format!("{loc}.xcrs"),
                    format!("is {} bytes; struct kvm_xcrs is {KVM_XCRS_BYTES}", b.len()),
                ));
            }
            let nr = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if nr > 16 {
                return Err(serr(
                    &format!("{loc}.xcrs.nr_xcrs"),
                    format!("{nr}; struct kvm_xcrs holds at most 16"),
                ));
            }
            let mut x0 = None;
            for i in 0..nr {
                let o = 8 + 16 * i;
                let xcr = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                let mut v = [0u8; 8];
                v.copy_from_slice(&b[o + 8..o + 16]);
                if xcr == 0 {
                    x0 = Some(u64::from_le_bytes(v));
                }
            }
            x0
        }
    };
    let mut msrs = Vec::new();
    if let Some(m) = st.get("msrs") {
        let a = m
            .as_array()
            .ok_or_else(|| serr(&format!("{loc}.msrs"), "is not an array"))?;
        for (i, e) in a.iter().enumerate() {
            let l = format!("{loc}.msrs[{i}]");
            let index = u32::try_from(num(e, "index", &l)?)
                .map_err(|_| serr(&l, "index does not fit in 32 bits"))?;
            msrs.push((index, num(e, "data", &l)?));
        }
    }
    let mut cpuid = CpuidDump::new(&format!("Cloud Hypervisor vCPU {id} CPUID"));
    cpuid.format = String::from("cloud-hypervisor");
    let entries = st
        .get("cpuid")
        .and_then(Value::as_array)
        .ok_or_else(|| serr(&format!("{loc}.cpuid"), "missing or not an array"))?;
    for (i, e) in entries.iter().enumerate() {
        let l = format!("{loc}.cpuid[{i}]");
        let g = |k: &str| -> Result<u32, StateError> {
            u32::try_from(num(e, k, &l)?).map_err(|_| serr(&format!("{l}.{k}"), "not a u32"))
        };
        cpuid.insert(
            g("function")?,
            g("index")?,
            Regs {
                eax: g("eax")?,
                ebx: g("ebx")?,
                ecx: g("ecx")?,
                edx: g("edx")?,
            },
        );
    }
    if cpuid.get(0xd, 0).is_none() {
        return Err(serr(
            &format!("{loc}.cpuid"),
            "has no leaf 0xD subleaf 0: the region's layout cannot be known",
        ));
    }
    Ok(ChVcpu {
        id: String::from(id),
        state_text: String::from(state_text),
        image,
        extra_words: extra.len(),
        xcr0,
        msrs,
        cpuid,
    })
}

impl StateJson {
    /// Parses a `state.json`.
    pub fn parse(bytes: &[u8]) -> Result<StateJson, StateError> {
        let root: Value =
            serde_json::from_slice(bytes).map_err(|e| serr("file", format!("is not JSON: {e}")))?;
        let cpus = root
            .get("snapshots")
            .and_then(|s| s.get("cpu-manager"))
            .and_then(|c| c.get("snapshots"))
            .and_then(Value::as_object)
            .ok_or_else(|| {
                serr(
                    "snapshots.cpu-manager.snapshots",
                    "missing: not a Cloud Hypervisor VM snapshot",
                )
            })?;
        let mut vcpus = Vec::new();
        for (id, s) in cpus {
            let text = s
                .get("snapshot_data")
                .and_then(|d| d.get("state"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    serr(
                        &format!("snapshots.cpu-manager.snapshots.{id}.snapshot_data.state"),
                        "missing or not a string",
                    )
                })?;
            vcpus.push(vcpu(id, text)?);
        }
        if vcpus.is_empty() {
            return Err(serr("snapshots.cpu-manager.snapshots", "holds no vCPU"));
        }
        Ok(StateJson { vcpus })
    }

    /// Each vCPU as a snapshot record (source CPU: the vCPU's own CPUID).
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, SnapshotError> {
        self.vcpus.iter().map(ChVcpu::to_snapshot).collect()
    }
}

impl ChVcpu {
    /// The registers outside the image: XCR0 (from `xcrs`; x87 only when absent), IA32_XSS,
    /// IA32_XFD, IA32_XFD_ERR and the CET MSRs 0x6A0–0x6A8 from `msrs`.
    pub fn control_regs(&self) -> ControlRegs {
        let mut r = ControlRegs::with_xcr0(self.xcr0.unwrap_or(mask::X87));
        for &(i, v) in &self.msrs {
            match i {
                MSR_IA32_XSS => r.xss = v,
                MSR_IA32_XFD => r.xfd = v,
                MSR_IA32_XFD_ERR => r.xfd_err = v,
                0x6a0..=0x6a8 => {
                    r.msrs.insert(i, v);
                }
                _ => {}
            }
        }
        r
    }

    /// What the file carries outside the image, for [`crate::compat::completeness`]: an MSR
    /// is present only when the saved `msrs` list has it (Cloud Hypervisor saves the MSRs KVM
    /// lists, so a missing IA32_XSS is missing, not 0).
    pub fn outside_image<'a>(&self, s: &'a Snapshot) -> crate::compat::OutsideImage<'a> {
        let get = |i: u32| self.msrs.iter().find(|&&(k, _)| k == i).map(|&(_, v)| v);
        crate::compat::OutsideImage {
            xcr0: s.xcr0,
            xss: get(MSR_IA32_XSS),
            xfd: get(MSR_IA32_XFD),
            xfd_err: get(MSR_IA32_XFD_ERR),
            msrs: &s.msrs,
            in_image: s.xcr0 | s.xstate_bv(),
        }
    }

    /// The vCPU as a snapshot record: the region read with the layout of the vCPU's own CPUID
    /// leaf 0xD (the source host's offsets).
    pub fn to_snapshot(&self) -> Result<Snapshot, SnapshotError> {
        let mut s = Snapshot::from_image(&self.image, &self.cpuid, &self.control_regs())?;
        s.producer = format!("Cloud Hypervisor state.json (vCPU {})", self.id);
        Ok(s)
    }
}

/// A component whose standard offset differs between the snapshot's source layout and a
/// destination: restoring the raw region there misplaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// Component number.
    pub id: u8,
    /// Standard offset on the source (where the region holds it).
    pub from: u32,
    /// Standard offset on the destination (where KVM will read it).
    pub to: u32,
}

/// The present components of `s` (a vCPU read from a `state.json`) that a raw KVM_SET_XSAVE
/// of its region would misplace on `dest`: standard offsets differ, or the destination does
/// not place the component at all.
pub fn blob_moves(s: &Snapshot, dest: &Layout) -> Vec<Move> {
    let src = s.source.layout();
    let mut v = Vec::new();
    for id in bits(s.xstate_bv() & !mask::LEGACY & !mask::COMPACTED) {
        let a = src.geometry(id).standard_offset;
        let b = dest.geometry(id).standard_offset;
        if let (Some(a), Some(b)) = (a, b) {
            if a != b {
                v.push(Move { id, from: a, to: b });
            }
        }
    }
    v
}

/// Words of a rebuilt image: the first 1024 go to `region`, the rest to `extra`.
fn words(img: &[u8]) -> (Vec<u32>, Vec<u32>) {
    let mut all: Vec<u32> = img
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    if all.len() < 1024 {
        all.resize(1024, 0);
    }
    let extra = all.split_off(1024);
    (all, extra)
}

fn json_u32_list(w: &[u32]) -> String {
    let mut s = String::with_capacity(w.len() * 6);
    s.push('[');
    for (i, x) in w.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// Finds the end of a JSON array starting at `start` (`[`), skipping nested arrays; numbers
/// only (the region and extra arrays hold nothing else).
fn array_end(t: &str, start: usize) -> Option<usize> {
    let b = t.as_bytes();
    if b.get(start) != Some(&b'[') {
        return None;
    }
    let mut depth = 0usize;
    for (i, &c) in b.iter().enumerate().skip(start) {
        match c {
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'0'..=b'9' | b',' | b' ' | b'\n' | b'\r' | b'\t' => {}
            _ => return None,
        }
    }
    None
}

/// The `state` text with its `xsave` region (and extra) replaced.
fn replace_region(state: &str, img: &[u8], id: &str) -> Result<String, StateError> {
    let loc = format!("snapshots.cpu-manager.snapshots.{id}.snapshot_data.state");
    let key = "\"region\":";
    let hits: Vec<usize> = state.match_indices(key).map(|(i, _)| i).collect();
    if hits.len() != 1 {
        return Err(serr(
            &loc,
            format!(
                "`\"region\":` occurs {} times (expected once, in xsave): cannot rewrite it in place",
                hits.len()
            ),
        ));
    }
    let rs = hits[0] + key.len();
    let re = array_end(state, rs)
        .ok_or_else(|| serr(&loc, "xsave.region is not a plain array of numbers"))?;
    let mut end = re;
    let ek = ",\"extra\":";
    if state[re..].starts_with(ek) {
        end = array_end(state, re + ek.len())
            .ok_or_else(|| serr(&loc, "xsave.extra is not a plain array of numbers"))?;
    }
    let (region, extra) = words(img);
    let mut out = String::with_capacity(state.len() + extra.len() * 11);
    out.push_str(&state[..hits[0]]);
    out.push_str(key);
    out.push_str(&json_u32_list(&region));
    if !extra.is_empty() {
        out.push_str(ek);
        out.push_str(&json_u32_list(&extra));
    }
    out.push_str(&state[end..]);
    Ok(out)
}

/// Sets `"key":N` inside `obj` (a compact JSON object's text) to `val`.
fn set_num(obj: &str, key: &str, val: u32) -> Option<String> {
    let k = format!("\"{key}\":");
    let at = obj.find(k.as_str())? + k.len();
    let len = obj[at..].bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 {
        return None;
    }
    Some(format!("{}{val}{}", &obj[..at], &obj[at + len..]))
}

/// The vCPU's saved CPUID leaf 0xD rewritten to describe the destination's standard layout,
/// so that the file keeps describing the region it holds: subleaf 0 EAX/EDX keep only the
/// components the destination supports, EBX is the destination's size for XCR0 and ECX for
/// that mask; each subleaf i ≥ 2 of a kept component gets the destination's size (EAX) and
/// standard offset (EBX), a dropped one all zeroes. Subleaf 1 and every other leaf stay.
fn rewrite_leaf_0d(
    state: &str,
    v: &ChVcpu,
    xcr0: u64,
    dest: &Layout,
) -> Result<String, StateError> {
    let loc = format!(
        "snapshots.cpu-manager.snapshots.{}.snapshot_data.state.cpuid",
        v.id
    );
    let src = v.cpuid.leaf_0d().xcr0_supported();
    let kept = src & dest.xcr0_supported();
    let size_of = |m: u64| -> Result<u32, StateError> {
        dest.form(Form::Standard, m)
            .map(|g| g.size)
            .map_err(|e| serr(&loc, format!("destination layout: {e}")))
    };
    let mut out = String::from(state);
    let subleaves: Vec<u32> = v
        .cpuid
        .entries()
        .filter(|&(l, s, _)| l == 0xd && s != 1)
        .map(|(_, s, _)| s)
        .collect();
    for sub in subleaves {
        let head = format!("{{\"function\":13,\"index\":{sub},");
        let hits: Vec<usize> = out.match_indices(head.as_str()).map(|(i, _)| i).collect();
        if hits.len() != 1 {
            return Err(serr(
                &loc,
                format!(
                    "leaf 0xD subleaf {sub} occurs {} times as `{head}` (expected once): cannot rewrite it in place",
                    hits.len()
                ),
            ));
        }
        let start = hits[0];
        let end = out[start..]
            .find('}')
            .map(|e| start + e + 1)
            .ok_or_else(|| serr(&loc, "unterminated CPUID entry"))?;
        let obj = &out[start..end];
        let vals: [(&str, u32); 4] = if sub == 0 {
            [
                ("eax", kept as u32),
                ("ebx", size_of(xcr0)?),
                ("ecx", size_of(kept)?),
                ("edx", (kept >> 32) as u32),
            ]
        } else if sub < 64 && kept & (1u64 << sub) != 0 {
            let g = dest.geometry(sub as u8);
            let ecx = v.cpuid.get(0xd, sub).map_or(0, |r| r.ecx);
            [
                ("eax", g.size),
                ("ebx", g.standard_offset.unwrap_or(0)),
                ("ecx", ecx),
                ("edx", 0),
            ]
        } else {
            [("eax", 0), ("ebx", 0), ("ecx", 0), ("edx", 0)]
        };
        let mut new_obj = String::from(obj);
        for (k, val) in vals {
            new_obj = set_num(&new_obj, k, val).ok_or_else(|| {
                serr(&loc, format!("leaf 0xD subleaf {sub} has no numeric `{k}`"))
            })?;
        }
        out.replace_range(start..end, &new_obj);
    }
    Ok(out)
}

/// Rewrites a `state.json` with every vCPU's xsave region rebuilt for `dest` (standard form
/// of the vCPU's XCR0). The vCPU's saved CPUID keeps describing the region: its leaf 0xD is
/// rewritten to the destination's layout (subleaf 0: supported mask cut to what the
/// destination supports, sizes for XCR0 and that mask; subleaves ≥ 2: the destination's size
/// and standard offset, zero for a dropped component; subleaf 1 untouched). A guest CPUID
/// promising the source's offsets on the destination would be wrong anyway: the guest's XSAVE
/// runs on the destination's hardware. Every other byte of the file stays as it was. The result is
/// checked: it parses, every vCPU's state equals the original apart from `xsave` and leaf
/// 0xD, each vCPU reads back (with its rewritten CPUID) to the same registers, and nothing
/// moves any more against `dest`.
pub fn repair(bytes: &[u8], dest: &Layout) -> Result<Vec<u8>, StateError> {
    let parsed = StateJson::parse(bytes)?;
    let text = core::str::from_utf8(bytes).map_err(|_| serr("file", "is not UTF-8"))?;
    let mut out = String::from(text);
    for v in &parsed.vcpus {
        let snap = v
            .to_snapshot()
            .map_err(|e| serr(&format!("vCPU {}", v.id), e.to_string()))?;
        let img = snap
            .to_image(dest, Form::Standard, snap.xcr0)
            .map_err(|e| serr(&format!("vCPU {}", v.id), e.to_string()))?;
        let new_state = replace_region(&v.state_text, &img, &v.id)?;
        let new_state = rewrite_leaf_0d(&new_state, v, snap.xcr0, dest)?;
        // The state string as the file spells it: serde_json's escaping of the original.
        let old_lit = serde_json::to_string(&v.state_text)
            .map_err(|e| serr(&format!("vCPU {}", v.id), e.to_string()))?;
        let new_lit = serde_json::to_string(&new_state)
            .map_err(|e| serr(&format!("vCPU {}", v.id), e.to_string()))?;
        let n = out.matches(old_lit.as_str()).count();
        if n != 1 {
            return Err(serr(
                &format!("snapshots.cpu-manager.snapshots.{}.snapshot_data.state", v.id),
                format!(
                    "its string literal occurs {n} times in the file as serde_json spells it (expected once): cannot rewrite it byte for byte"
                ),
            ));
        }
        out = out.replacen(old_lit.as_str(), &new_lit, 1);
    }
    // Verify what was written.
    let back = StateJson::parse(out.as_bytes())?;
    for (a, b) in parsed.vcpus.iter().zip(back.vcpus.iter()) {
        let strip = |t: &str| -> Option<Value> {
            let mut v: Value = serde_json::from_str(t).ok()?;
            let st = if v.get("Kvm").is_some() {
                v.get_mut("Kvm")?
            } else {
                &mut v
            };
            let o = st.as_object_mut()?;
            o.remove("xsave");
            o.get_mut("cpuid")?
                .as_array_mut()?
                .retain(|e| e.get("function").and_then(Value::as_u64) != Some(13));
            Some(v)
        };
        if strip(&a.state_text) != strip(&b.state_text) || strip(&a.state_text).is_none() {
            return Err(serr(
                &format!("vCPU {}", a.id),
                "rewritten state differs outside xsave (internal check)",
            ));
        }
        let sa = a
            .to_snapshot()
            .map_err(|e| serr(&format!("vCPU {}", a.id), e.to_string()))?;
        let sb = b
            .to_snapshot()
            .map_err(|e| serr(&format!("vCPU {} (rewritten)", b.id), e.to_string()))?;
        if !blob_moves(&sb, dest).is_empty() {
            return Err(serr(
                &format!("vCPU {}", a.id),
                "rewritten CPUID still places a component elsewhere than the destination (internal check)",
            ));
        }
        if sa.components != sb.components || sa.legacy != sb.legacy {
            return Err(serr(
                &format!("vCPU {}", a.id),
                "rewritten region does not read back to the same registers (internal check)",
            ));
        }
    }
    Ok(out.into_bytes())
}
