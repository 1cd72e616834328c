//! The registers of each state component: name, offset inside the component and width.
//!
//! Offsets of components 0 (x87) and 1 (SSE) are relative to the start of the image, because
//! both live in the 512-byte legacy area (SDM Vol. 1 §10.5.1, Table 10-2; DESIGN.md §4).
//! Offsets of every other component are relative to the component's own placement (SDM Vol. 1
//! §13.5). Only bytes that hold architectural state are covered: the upper 6 bytes of each
//! 16-byte x87 ST slot, and PKRU bytes beyond the 4 used, are not registers.

/// One register, or an array of equally spaced registers, of a state component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegSpec {
    /// Name used in JSON and diffs (`fcw`, `xmm`, `k`, …); arrays are indexed (`xmm3`).
    pub name: &'static str,
    /// Offset of the first element: from the image start for components 0 and 1, from the
    /// component start otherwise.
    pub offset: u32,
    /// Width of one element in bytes; 0 means "the whole component" (unknown components).
    pub width: u32,
    /// Number of elements; 1 for a scalar.
    pub count: u32,
    /// Distance between elements in bytes.
    pub stride: u32,
    /// True when the register is an array (shown as a JSON list) even if `count` is 1.
    pub array: bool,
}

const fn s(name: &'static str, offset: u32, width: u32) -> RegSpec {
    RegSpec {
        name,
        offset,
        width,
        count: 1,
        stride: width,
        array: false,
    }
}

const fn a(name: &'static str, offset: u32, width: u32, count: u32, stride: u32) -> RegSpec {
    RegSpec {
        name,
        offset,
        width,
        count,
        stride,
        array: true,
    }
}

/// x87 (SDM Vol. 1 Table 10-2, 64-bit FXSAVE form): ST registers are 80 bits in 16-byte slots.
const X87: [RegSpec; 7] = [
    s("fcw", 0, 2),
    s("fsw", 2, 2),
    s("ftw", 4, 1),
    s("fop", 6, 2),
    s("fip", 8, 8),
    s("fdp", 16, 8),
    a("st", 32, 10, 8, 16),
];
/// SSE: MXCSR and MXCSR_MASK sit inside the x87 part of the legacy area.
const SSE: [RegSpec; 3] = [
    s("mxcsr", 24, 4),
    s("mxcsr_mask", 28, 4),
    a("xmm", 160, 16, 16, 16),
];
const AVX: [RegSpec; 1] = [a("ymm_hi", 0, 16, 16, 16)];
/// BND0-3: lower bound then upper bound, 8 bytes each (SDM Vol. 1 §13.5.4).
const BNDREGS: [RegSpec; 1] = [a("bnd", 0, 16, 4, 16)];
const BNDCSR: [RegSpec; 2] = [s("bndcfgu", 0, 8), s("bndstatus", 8, 8)];
const OPMASK: [RegSpec; 1] = [a("k", 0, 8, 8, 8)];
const ZMM_HI256: [RegSpec; 1] = [a("zmm_hi", 0, 32, 16, 32)];
const HI16_ZMM: [RegSpec; 1] = [a("zmm", 0, 64, 16, 64)];
/// PT: the IA32_RTIT_* MSRs in the order of SDM Vol. 1 §13.5.6.
const PT: [RegSpec; 6] = [
    s("rtit_ctl", 0, 8),
    s("rtit_output_base", 8, 8),
    s("rtit_output_mask_ptrs", 16, 8),
    s("rtit_status", 24, 8),
    s("rtit_cr3_match", 32, 8),
    a("rtit_addr", 40, 8, 8, 8),
];
/// PKRU: 4 bytes used of the component (SDM Vol. 1 §13.5.7).
const PKRU: [RegSpec; 1] = [s("pkru", 0, 4)];
const PASID: [RegSpec; 1] = [s("pasid", 0, 8)];
/// CET_U: IA32_U_CET then IA32_PL3_SSP (SDM Vol. 1 §13.5.8).
const CET_U: [RegSpec; 2] = [s("u_cet", 0, 8), s("pl3_ssp", 8, 8)];
/// CET_S: IA32_PL0_SSP, IA32_PL1_SSP, IA32_PL2_SSP.
const CET_S: [RegSpec; 3] = [s("pl0_ssp", 0, 8), s("pl1_ssp", 8, 8), s("pl2_ssp", 16, 8)];
const HDC: [RegSpec; 1] = [s("pm_ctl1", 0, 8)];
const HWP: [RegSpec; 1] = [s("hwp_request", 0, 8)];
const TILECFG: [RegSpec; 1] = [s("tilecfg", 0, 64)];
/// TILEDATA: TMM0-7, 16 rows of 64 bytes each (SDM Vol. 1 §13.5.13).
const TILEDATA: [RegSpec; 1] = [a("tmm", 0, 1024, 8, 1024)];
/// APX: R16-R31, 8 bytes each (`egpr0` is R16).
const APX: [RegSpec; 1] = [a("egpr", 0, 8, 16, 8)];
const RAW: [RegSpec; 1] = [s("bytes", 0, 0)];

/// The registers of component `id`; components without a register map (UINTR, LBR, LWP,
/// unknown ids) have one register `bytes` covering the whole component.
///
/// ```
/// use xstate::image::registers::registers;
/// assert_eq!(registers(5)[0].name, "k");
/// assert_eq!(registers(40)[0].name, "bytes");
/// ```
pub fn registers(id: u8) -> &'static [RegSpec] {
    match id {
        0 => &X87,
        1 => &SSE,
        2 => &AVX,
        3 => &BNDREGS,
        4 => &BNDCSR,
        5 => &OPMASK,
        6 => &ZMM_HI256,
        7 => &HI16_ZMM,
        8 => &PT,
        9 => &PKRU,
        10 => &PASID,
        11 => &CET_U,
        12 => &CET_S,
        13 => &HDC,
        16 => &HWP,
        17 => &TILECFG,
        18 => &TILEDATA,
        19 => &APX,
        _ => &RAW,
    }
}

/// The hex of a little-endian unsigned integer, most significant digit first, no leading
/// zeros (`0x0` for zero): the register format of every JSON output.
///
/// ```
/// use xstate::image::registers::le_hex;
/// assert_eq!(le_hex(&[0x7f, 0x03]), "0x37f");
/// assert_eq!(le_hex(&[0, 0, 0]), "0x0");
/// ```
pub fn le_hex(bytes: &[u8]) -> alloc::string::String {
    use core::fmt::Write;
    let mut s = alloc::string::String::from("0x");
    let mut started = false;
    for &b in bytes.iter().rev() {
        if started {
            let _ = write!(s, "{b:02x}");
        } else if b != 0 {
            let _ = write!(s, "{b:x}");
            started = true;
        }
    }
    if !started {
        s.push('0');
    }
    s
}

/// Normalizes a register value (little-endian bytes) to the bits that hold state, so that
/// values a CPU cannot tell apart compare equal: FCW bits 6 (reads as 1) and 13..15 (read as
/// 0) are reserved and FOP has 11 bits (SDM Vol. 1 §8.1.5, §8.1.8), measured on this project's
/// machine by restoring and saving x87 state. Other registers are returned unchanged.
///
/// ```
/// use xstate::image::registers::significant;
/// let mut a = 0xd33fu16.to_le_bytes().to_vec();
/// significant(0, "fcw", &mut a);
/// assert_eq!(a, 0x137fu16.to_le_bytes());
/// ```
pub fn significant(id: u8, name: &str, value: &mut [u8]) {
    let (keep, force): (u16, u16) = match (id, name) {
        (0, "fcw") => (0x1f3f, 0x0040),
        (0, "fop") => (0x07ff, 0),
        _ => return,
    };
    if let Some(b) = value.get_mut(0..2) {
        let v = (u16::from_le_bytes([b[0], b[1]]) & keep) | force;
        b.copy_from_slice(&v.to_le_bytes());
    }
}
