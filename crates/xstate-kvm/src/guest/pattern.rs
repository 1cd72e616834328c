//! Distinct register values for every user component the demo exercises, and a field-by-field
//! comparison of two standard-form images.

use xstate::components::{bits, mask, Component};
use xstate::layout::FormLayout;

use crate::xsave::{XsaveBuffer, MXCSR_OFFSET, XSTATE_BV_OFFSET};

/// The user components the demo fills with distinct values: x87, SSE, AVX, AVX-512 and PKRU.
/// (MPX, AMX and APX would need more guest set-up; they stay in their init state.)
pub const PATTERNED: u64 = mask::X87 | mask::SSE | mask::AVX | mask::AVX512 | mask::PKRU;

/// x87 control word loaded by the demo: all exceptions masked, precision 64 bits,
/// round toward zero (distinct from the init value 0x037F).
pub const FCW: u16 = 0x0F7F;
/// x87 status word: C3, C2, C1, C0 set, TOP 0, no exception flags.
pub const FSW: u16 = 0x4700;
/// Abridged tag word: all eight registers valid.
pub const FTW: u8 = 0xFF;
/// MXCSR: all exceptions masked, round down, FTZ and DAZ (init is 0x1F80).
pub const MXCSR: u32 = 0xBFC0;
/// PKRU: key 0 stays accessible, every other key write-disabled.
pub const PKRU: u32 = 0xAAAA_AAA8;

/// A non-zero byte that depends on the component and the offset inside it.
fn byte(id: u8, i: usize) -> u8 {
    ((usize::from(id) * 31 + i * 7 + 0x5A) % 255 + 1) as u8
}

/// One architectural register field of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Component index.
    pub component: u8,
    /// Register name (`FCW`, `XMM3`, `k5`, `ZMM17` …).
    pub name: String,
    /// Offset in the standard form.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// The architectural fields of the components of `mask_` placed by `layout` (standard form).
/// Reserved bytes and MXCSR_MASK are not fields.
pub fn fields(layout: &FormLayout, mask_: u64) -> Vec<Field> {
    let mut v = Vec::new();
    let mut f = |component: u8, name: String, offset: usize, len: usize| {
        v.push(Field {
            component,
            name,
            offset,
            len,
        })
    };
    for id in bits(mask_ & layout.mask) {
        let base = layout.offset_of(id).unwrap_or(0) as usize;
        match id {
            0 => {
                f(0, "FCW".into(), 0, 2);
                f(0, "FSW".into(), 2, 2);
                f(0, "FTW".into(), 4, 1);
                f(0, "FOP".into(), 6, 2);
                f(0, "FIP".into(), 8, 8);
                f(0, "FDP".into(), 16, 8);
                for i in 0..8 {
                    f(0, format!("ST{i}"), 32 + 16 * i, 10);
                }
            }
            1 => {
                f(1, "MXCSR".into(), MXCSR_OFFSET, 4);
                for i in 0..16 {
                    f(1, format!("XMM{i}"), 160 + 16 * i, 16);
                }
            }
            2 => (0..16).for_each(|i| f(2, format!("YMM{i}[255:128]"), base + 16 * i, 16)),
            5 => (0..8).for_each(|i| f(5, format!("k{i}"), base + 8 * i, 8)),
            6 => (0..16).for_each(|i| f(6, format!("ZMM{i}[511:256]"), base + 32 * i, 32)),
            7 => (0..16).for_each(|i| f(7, format!("ZMM{}", i + 16), base + 64 * i, 64)),
            9 => f(9, "PKRU".into(), base, 4),
            _ => {
                if let Some(p) = layout.placement(id) {
                    f(
                        id,
                        Component::name_of(id),
                        p.offset as usize,
                        p.size as usize,
                    );
                }
            }
        }
    }
    v
}

/// A standard-form image of `size` bytes (at least the layout's) with distinct values in
/// every component of `layout.mask & PATTERNED` and XSTATE_BV naming exactly those. MXCSR is
/// limited to `mxcsr_mask`.
///
/// ```
/// use xstate::cpuid::{CpuidDump, Regs};
/// use xstate::layout::Layout;
/// let mut d = CpuidDump::new("doc");
/// d.insert(0xd, 0, Regs { eax: 0x7, ebx: 832, ecx: 832, edx: 0 });
/// d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
/// let l = Layout::from_dump(&d).standard(0x7).unwrap();
/// let img = xstate_kvm::guest::pattern::image(&l, 4096, 0xffff);
/// assert_eq!(img.xstate_bv(), 0x7);
/// ```
pub fn image(layout: &FormLayout, size: usize, mxcsr_mask: u32) -> XsaveBuffer {
    let size = size.max(layout.size as usize);
    let mut b = vec![0u8; size];
    let filled = layout.mask & PATTERNED;
    for fld in fields(layout, filled) {
        // A layout whose size does not cover its placements leaves the field out.
        let Some(dst) = b.get_mut(fld.offset..fld.offset + fld.len) else {
            continue;
        };
        match fld.name.as_str() {
            "FCW" => dst.copy_from_slice(&FCW.to_le_bytes()),
            "FSW" => dst.copy_from_slice(&FSW.to_le_bytes()),
            "FTW" => dst[0] = FTW,
            // AMD saves FOP/FIP/FDP only with an x87 exception pending; zero round-trips on
            // every vendor.
            "FOP" | "FIP" | "FDP" => {}
            "MXCSR" => dst.copy_from_slice(&(MXCSR & mxcsr_mask).to_le_bytes()),
            "PKRU" => dst.copy_from_slice(&PKRU.to_le_bytes()),
            _ => {
                for (i, x) in dst.iter_mut().enumerate() {
                    *x = byte(fld.component, fld.offset + i);
                }
            }
        }
    }
    b[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&filled.to_le_bytes());
    XsaveBuffer::from_bytes(b)
}

/// A valid AMX tile configuration (the 64-byte TILECFG component, SDM Vol. 1 §18.2 "TILECFG"
/// and LDTILECFG in Vol. 2A): palette 1, start_row 0, all eight tiles at the palette's maximum
/// of 16 rows × 64 bytes, reserved bytes zero. XRSTOR of a TILECFG that is not valid does not
/// fault on this project's Xeon: it leaves TILECFG in its init state (measured by
/// `tests/amx_kvm.rs`), so a pattern needs a valid one to mean anything.
pub fn tilecfg() -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = 1; // palette_id
    for t in 0..8 {
        c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // colsb[t]
        c[48 + t] = 16; // rows[t]
    }
    c
}

/// Adds AMX to a standard-form image: TILECFG = [`tilecfg`], TILEDATA (TMM0–TMM7, 1024 bytes
/// each) filled with distinct non-zero bytes, XSTATE_BV bits 17 and 18 set. Errors when
/// `layout` does not place both components inside the image.
pub fn add_amx(img: &mut XsaveBuffer, layout: &FormLayout) -> crate::Result<()> {
    let place = |id: u8| {
        layout
            .placement(id)
            .map(|p| (p.offset as usize, p.size as usize))
            .ok_or_else(|| crate::Error::Guest(format!("the layout does not place component {id}")))
    };
    let (cfg_at, _) = place(17)?;
    let (data_at, data_len) = place(18)?;
    let b = img.as_mut_bytes();
    let too_short = |end: usize, len: usize| {
        crate::Error::Guest(format!("the image has {len} bytes, AMX needs {end}"))
    };
    let len = b.len();
    b.get_mut(cfg_at..cfg_at + 64)
        .ok_or_else(|| too_short(cfg_at + 64, len))?
        .copy_from_slice(&tilecfg());
    for (i, x) in b
        .get_mut(data_at..data_at + data_len)
        .ok_or_else(|| too_short(data_at + data_len, len))?
        .iter_mut()
        .enumerate()
    {
        *x = byte(18, i);
    }
    let bv = img.xstate_bv() | mask::AMX;
    img.set_xstate_bv(bv)
        .map_err(|e| crate::Error::Guest(e.to_string()))
}

/// One register that differs between two images.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// Where the difference was seen (`capture`, `vm_b`).
    pub stage: String,
    /// Component name.
    pub component: String,
    /// Register name.
    pub field: String,
    /// Offset in the standard form.
    pub offset: usize,
    /// Expected bytes (hex, memory order).
    pub expected: String,
    /// Bytes found (hex, memory order; empty when the image is too short).
    pub got: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares the fields of the components in `mask_` and their XSTATE_BV bits.
pub fn compare(
    stage: &str,
    expected: &XsaveBuffer,
    got: &XsaveBuffer,
    layout: &FormLayout,
    mask_: u64,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let (e, g) = (expected.as_bytes(), got.as_bytes());
    let missing = mask_ & expected.xstate_bv() & !got.xstate_bv();
    for id in bits(missing) {
        out.push(Mismatch {
            stage: stage.into(),
            component: Component::name_of(id),
            field: "XSTATE_BV".into(),
            offset: XSTATE_BV_OFFSET,
            expected: format!("{:#x}", expected.xstate_bv()),
            got: format!("{:#x}", got.xstate_bv()),
        });
    }
    for f in fields(layout, mask_) {
        let r = f.offset..f.offset + f.len;
        let (a, b) = (e.get(r.clone()), g.get(r));
        if a != b || a.is_none() {
            out.push(Mismatch {
                stage: stage.into(),
                component: Component::name_of(f.component),
                field: f.name,
                offset: f.offset,
                expected: a.map(hex).unwrap_or_default(),
                got: b.map(hex).unwrap_or_default(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zen5() -> FormLayout {
        crate::testdata::zen5_standard()
    }

    #[test]
    fn every_field_of_every_component_is_distinct_from_init() {
        let l = zen5();
        let img = image(&l, 4096, 0xffff);
        assert_eq!(img.xstate_bv(), 0xe7);
        assert_eq!(img.mxcsr(), MXCSR);
        let b = img.as_bytes();
        for f in fields(&l, 0xe7) {
            if ["FOP", "FIP", "FDP"].contains(&f.name.as_str()) {
                continue;
            }
            assert!(
                b[f.offset..f.offset + f.len].iter().any(|&x| x != 0),
                "{}",
                f.name
            );
        }
        // ZMM16 starts at Hi16_ZMM's offset.
        assert!(fields(&l, 0xe7)
            .iter()
            .any(|f| f.name == "ZMM16" && f.offset == 1408));
    }

    #[test]
    fn compare_reports_the_register() {
        let l = zen5();
        let a = image(&l, 4096, 0xffff);
        assert!(compare("t", &a, &a, &l, 0xe7).is_empty());
        let mut b = a.clone();
        b.as_mut_bytes()[832 + 8 * 3] ^= 1; // k3
        let m = compare("t", &a, &b, &l, 0xe7);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].component.as_str(), m[0].field.as_str()),
            ("opmask", "k3")
        );
        assert_eq!(m[0].offset, 856);
        b.set_xstate_bv(0x3).unwrap();
        assert!(compare("t", &a, &b, &l, 0xe7)
            .iter()
            .any(|m| m.field == "XSTATE_BV"));
        let short = XsaveBuffer::zeroed(600);
        assert!(!compare("t", &a, &short, &l, 0xe7).is_empty());
    }
}
