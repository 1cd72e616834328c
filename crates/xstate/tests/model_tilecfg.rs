//! The model's TILECFG rule (SDM Vol. 2 LDTILECFG, CPUID leaf 0x1D; measured on this
//! project's Intel Xeon with AMX, family 6 model 0xA7, by `tests/tilecfg_hw.rs`): XRSTOR of
//! an invalid tile configuration does not fault, it puts TILECFG in init state, and TILEDATA
//! is loaded or initialized as XSTATE_BV\[18\] says. One test per rule, on the model with the
//! CPUID of that Xeon (a `cpuid -r` dump), and the limits taken from leaf 0x1D, not fixed.

mod common;

use xstate::components::mask;
use xstate::cpuid::{CpuidDump, Regs};
use xstate::model::tilecfg::{check, TileConfig, TilePalette};
use xstate::model::{AlignedBuf, CpuProfile, ModelCpu};

const XEON: &str = "cpuid-r/Intel-Xeon-AMX-family6-model-A7-this-machine-kind.txt";
const XCR0: u64 = 0x600e7;

fn cpu_of(d: &CpuidDump) -> ModelCpu {
    let mut c = ModelCpu::new(CpuProfile::from_dump(d));
    c.xsetbv(0, XCR0).expect("XCR0 0x600e7 on the Xeon");
    c
}

/// Palette 1, every tile 16 rows of 64 bytes.
fn valid() -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = 1;
    for n in 0..8 {
        c[16 + 2 * n] = 64;
        c[48 + n] = 16;
    }
    c
}

/// XRSTOR (standard form, RFBM = XCR0) of TILECFG `cfg` and TILEDATA 0x5A.. with XSTATE_BV
/// `bv`, over a state holding `valid()` and TILEDATA 0x11; returns (XINUSE & AMX, TILECFG,
/// TILEDATA byte 0).
fn restore(c: &mut ModelCpu, cfg: &[u8; 64], bv: u64) -> (u64, Vec<u8>, u8) {
    assert!(c.set_component(17, &valid()));
    assert!(c.set_component(18, &[0x11; 8192]));
    let l = c.profile().layout.standard(XCR0).unwrap();
    let mut m = AlignedBuf::new(l.size as usize);
    m[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    m[512..520].copy_from_slice(&bv.to_le_bytes());
    let o = l.placement(17).unwrap().offset as usize;
    m[o..o + 64].copy_from_slice(cfg);
    let o = l.placement(18).unwrap().offset as usize;
    m[o..o + 8192].fill(0x5a);
    c.xrstor(&m, 0, XCR0)
        .expect("XRSTOR of TILECFG never faults");
    (
        c.xinuse() & mask::AMX,
        c.component(17).unwrap().to_vec(),
        c.component(18).unwrap()[0],
    )
}

fn assert_invalid(what: &str, cfg: [u8; 64], offset: usize) {
    let d = common::fixture(XEON);
    let p = TilePalette::from_dump(&d);
    let e = check(&cfg, &p).expect_err(what);
    assert_eq!(e.offset, offset, "{what}: {e}");
    let mut c = cpu_of(&d);
    // TILEDATA loaded: TILECFG init, tiles as in the image.
    assert_eq!(
        restore(&mut c, &cfg, mask::AMX),
        (mask::XTILEDATA, vec![0; 64], 0x5a),
        "{what}, XSTATE_BV[18] = 1"
    );
    // TILEDATA initialized: both init.
    assert_eq!(
        restore(&mut c, &cfg, mask::XTILECFG),
        (0, vec![0; 64], 0),
        "{what}, XSTATE_BV[18] = 0"
    );
    // A save reports TILECFG not in use and writes zeros.
    let mut m = AlignedBuf::new(11008);
    m.fill(0xcc);
    c.xsave(&mut m, 0, XCR0).unwrap();
    assert_eq!(m[512..520][2] & 0x2, 0, "{what}: XSTATE_BV[17] after XSAVE");
    assert!(
        m[2752..2816].iter().all(|&b| b == 0),
        "{what}: TILECFG saved"
    );
}

fn assert_valid(what: &str, cfg: [u8; 64]) {
    let d = common::fixture(XEON);
    assert_eq!(
        check(&cfg, &TilePalette::from_dump(&d)),
        Ok(TileConfig::Palette(cfg[0])),
        "{what}"
    );
    let mut c = cpu_of(&d);
    assert_eq!(
        restore(&mut c, &cfg, mask::AMX),
        (mask::AMX, cfg.to_vec(), 0x5a),
        "{what}"
    );
}

#[test]
fn palettes_come_from_cpuid_leaf_0x1d() {
    let d = common::fixture(XEON);
    assert_eq!(TilePalette::from_dump(&d), vec![TilePalette::PALETTE_1]);
    // No TILECFG component: no palettes.
    assert!(TilePalette::from_dump(&common::zen5()).is_empty());
}

#[test]
fn valid_configurations_load_as_they_are() {
    assert_valid("16 rows of 64 bytes in every tile", valid());
    let mut c = valid();
    c[1] = 200;
    assert_valid("start_row may hold any value", c);
    let mut c = valid();
    c[16] = 63;
    c[48] = 1;
    assert_valid("odd colsb, one row", c);
    let mut c = valid();
    c[16..18].fill(0);
    c[48] = 0;
    assert_valid("tile 0 unused", c);
    let mut c = [0u8; 64];
    c[0] = 1;
    assert_valid("palette 1 with every tile unused is not the init state", c);
}

#[test]
fn palette_0_is_init_whatever_the_other_bytes() {
    let d = common::fixture(XEON);
    let mut c = valid();
    c[0] = 0;
    c[5] = 7;
    assert_eq!(check(&c, &TilePalette::from_dump(&d)), Ok(TileConfig::Init));
    let mut cpu = cpu_of(&d);
    assert_eq!(
        restore(&mut cpu, &c, mask::AMX),
        (mask::XTILEDATA, vec![0; 64], 0x5a)
    );
}

#[test]
fn palette_above_cpuid_is_invalid() {
    let mut c = valid();
    c[0] = 2;
    assert_invalid("palette 2", c, 0);
}

#[test]
fn reserved_bytes_2_to_15_must_be_zero() {
    for i in [2, 9, 15] {
        let mut c = valid();
        c[i] = 1;
        assert_invalid("reserved byte", c, i);
    }
}

#[test]
fn rows_and_colsb_within_the_palette_limits() {
    let mut c = valid();
    c[48 + 3] = 17;
    assert_invalid("17 rows", c, 51);
    let mut c = valid();
    c[16 + 2 * 5] = 65;
    assert_invalid("65 bytes per row", c, 26);
    let mut c = valid();
    c[17] = 1;
    assert_invalid("colsb 0x140", c, 16);
}

#[test]
fn a_tile_is_configured_or_unused() {
    let mut c = valid();
    c[16] = 0;
    assert_invalid("rows without colsb", c, 48);
    let mut c = valid();
    c[48] = 0;
    assert_invalid("colsb without rows", c, 16);
}

#[test]
fn slots_beyond_max_names_must_be_zero() {
    let mut c = valid();
    c[32] = 1;
    assert_invalid("colsb of tile 8", c, 32);
    let mut c = valid();
    c[63] = 1;
    assert_invalid("rows of tile 15", c, 63);
}

/// The limits are CPUID's: with leaf 0x1D saying 8 rows, 32 bytes per row and 4 tiles, what
/// the Xeon accepts becomes invalid, and a second palette becomes valid.
#[test]
fn limits_follow_the_dump() {
    let mut d = common::fixture(XEON);
    d.insert(
        0x1d,
        0,
        Regs {
            eax: 2,
            ebx: 0,
            ecx: 0,
            edx: 0,
        },
    );
    d.insert(
        0x1d,
        1,
        Regs {
            eax: 0x0100_0400,
            ebx: 0x0004_0020,
            ecx: 8,
            edx: 0,
        },
    );
    d.insert(
        0x1d,
        2,
        Regs {
            eax: 0x0400_2000,
            ebx: 0x0008_0040,
            ecx: 16,
            edx: 0,
        },
    );
    let p = TilePalette::from_dump(&d);
    assert_eq!(p.len(), 2);
    assert_eq!(check(&valid(), &p).unwrap_err().offset, 48, "16 rows > 8");
    let mut c = [0u8; 64];
    c[0] = 1;
    c[16] = 32;
    c[48] = 8;
    assert_eq!(check(&c, &p), Ok(TileConfig::Palette(1)));
    c[48] = 9;
    assert_eq!(check(&c, &p).unwrap_err().offset, 48, "9 rows > 8");
    let mut c = valid();
    c[0] = 2;
    assert_eq!(check(&c, &p), Ok(TileConfig::Palette(2)));
    let mut c = [0u8; 64];
    c[0] = 1;
    c[16 + 2 * 4] = 1;
    c[48 + 4] = 1;
    assert_eq!(
        check(&c, &p).unwrap_err().offset,
        24,
        "tile 4 beyond 4 tiles"
    );
}

/// The compacted form and XRSTORS follow the same rule (one load path).
#[test]
fn compacted_restore_of_an_invalid_tilecfg() {
    let d = common::fixture(XEON);
    let mut c = cpu_of(&d);
    assert!(c.set_component(17, &valid()));
    let l = c.profile().layout.compacted(XCR0).unwrap();
    let mut m = AlignedBuf::new(l.size as usize);
    m[512..520].copy_from_slice(&mask::XTILECFG.to_le_bytes());
    m[520..528].copy_from_slice(&(XCR0 | mask::COMPACTED).to_le_bytes());
    let o = l.placement(17).unwrap().offset as usize;
    let mut cfg = valid();
    cfg[48] = 200;
    m[o..o + 64].copy_from_slice(&cfg);
    c.xrstor(&m, 0, XCR0).unwrap();
    assert_eq!(c.xinuse() & mask::XTILECFG, 0);
    assert!(c.component(17).unwrap().iter().all(|&b| b == 0));
}
