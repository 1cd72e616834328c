//! TILECFG, the AMX tile configuration (component 17): which 64-byte values are a valid
//! configuration, with the palette limits of CPUID leaf 0x1D.
//!
//! The layout (SDM Vol. 2 LDTILECFG, Table "Memory Area Layout"): byte 0 `palette`, byte 1
//! `start_row`, bytes 2-15 reserved (zero), bytes 16 + 2n `colsb` of tile n (16 bits), bytes
//! 48 + n `rows` of tile n; the `colsb`/`rows` slots of tiles the palette does not have are
//! reserved (zero). Palette 0 is the init state of TILECFG and TILEDATA (whatever the other
//! bytes hold). LDTILECFG raises #GP on an invalid configuration; **XRSTOR/XRSTORS do not**:
//! they put TILECFG in its init state instead and load or initialize TILEDATA as XSTATE_BV\[18\]
//! says (measured on an Intel Xeon with AMX, family 6 model 0xA7, in user mode with AMX
//! permission: `tests/tilecfg_hw.rs`).
//!
//! The rules, each measured on that Xeon (a value breaking one reads back as 64 zero bytes and
//! XINUSE\[17\] = 0; one keeping all of them reads back as loaded, `start_row` included):
//!
//! 1. `palette` ≤ the highest palette of CPUID.(0x1D,0).EAX (palette 2 on a CPU with only
//!    palette 1 is invalid);
//! 2. bytes 2-15 are zero (`start_row`, byte 1, may hold any value, even ≥ 16);
//! 3. for tile n < max_names of the palette: `rows` ≤ max_rows and `colsb` ≤ bytes_per_row
//!    (CPUID.(0x1D,palette)), odd `colsb` included;
//! 4. a tile is either configured (`rows` ≠ 0 and `colsb` ≠ 0) or unused (both 0): one
//!    without the other is invalid;
//! 5. the `colsb` and `rows` slots of tiles n ≥ max_names are zero (bytes 32-47, 56-63 for
//!    palette 1's 8 tiles).
//!
//! A palette-1 configuration with every tile unused is valid and reads back as loaded (it is
//! not the init state).

use alloc::vec::Vec;

use crate::cpuid::CpuidDump;

/// One palette of CPUID leaf 0x1D subleaf `palette` (SDM Vol. 2 CPUID, leaf 1DH).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TilePalette {
    /// EAX\[15:0\]: total tile bytes.
    pub total_tile_bytes: u16,
    /// EAX\[31:16\]: bytes per tile.
    pub bytes_per_tile: u16,
    /// EBX\[15:0\]: bytes per row (the largest `colsb`).
    pub bytes_per_row: u16,
    /// EBX\[31:16\]: number of tile registers (`max_names`).
    pub max_names: u16,
    /// ECX\[15:0\]: the largest `rows`.
    pub max_rows: u16,
}

impl TilePalette {
    /// Palette 1 as the SDM defines it (Vol. 1 AMX chapter: 8 tiles of 16 rows × 64 bytes,
    /// 8192 bytes) and every AMX CPU reports it; used only when a dump with TILECFG lacks
    /// leaf 0x1D.
    pub const PALETTE_1: TilePalette = TilePalette {
        total_tile_bytes: 8192,
        bytes_per_tile: 1024,
        bytes_per_row: 64,
        max_names: 8,
        max_rows: 16,
    };

    /// The palettes a dump describes: entry k is palette k + 1, for palettes 1 up to
    /// CPUID.(0x1D,0).EAX (at most 15, the tile slots of TILECFG). Empty when the CPU has no
    /// TILECFG component (CPUID.(0xD,17) size 0); [`TilePalette::PALETTE_1`] alone when it has
    /// one but the dump has no leaf 0x1D.
    pub fn from_dump(d: &CpuidDump) -> Vec<TilePalette> {
        if d.get(0xd, 17).map_or(0, |r| r.eax) == 0 {
            return Vec::new();
        }
        let Some(l0) = d.get(0x1d, 0) else {
            return alloc::vec![TilePalette::PALETTE_1];
        };
        (1..=l0.eax.min(15))
            .map(|p| {
                let r = d.get_or_zero(0x1d, p);
                TilePalette {
                    total_tile_bytes: r.eax as u16,
                    bytes_per_tile: (r.eax >> 16) as u16,
                    bytes_per_row: r.ebx as u16,
                    max_names: (r.ebx >> 16) as u16,
                    max_rows: r.ecx as u16,
                }
            })
            .collect()
    }
}

/// Why 64 bytes are not a valid tile configuration: the field, its offset and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("TILECFG {field} at offset {offset} is {value:#x}: {rule}")]
pub struct TilecfgInvalid {
    /// The field (`palette`, `reserved`, `colsb[n]`, `rows[n]` …).
    pub field: &'static str,
    /// Its offset in the component.
    pub offset: usize,
    /// The value found.
    pub value: u32,
    /// The rule broken (SDM section).
    pub rule: &'static str,
}

/// What a TILECFG value configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileConfig {
    /// Palette 0: the init state of TILECFG (and TILEDATA for LDTILECFG).
    Init,
    /// A valid configuration of this palette (≥ 1).
    Palette(u8),
}

/// Checks 64 bytes of TILECFG against `palettes` (entry k = palette k + 1; see
/// [`TilePalette::from_dump`]). Bytes beyond 64 are not part of the configuration; fewer than
/// 64 bytes read as zero-extended.
///
/// ```
/// use xstate::model::tilecfg::{check, TileConfig, TilePalette};
/// let mut cfg = [0u8; 64];
/// cfg[0] = 1;
/// cfg[16] = 64; cfg[48] = 16;                // tile 0: 16 rows of 64 bytes
/// assert_eq!(check(&cfg, &[TilePalette::PALETTE_1]), Ok(TileConfig::Palette(1)));
/// cfg[48] = 17;                              // more rows than CPUID.(0x1D,1).ECX
/// assert_eq!(check(&cfg, &[TilePalette::PALETTE_1]).unwrap_err().offset, 48);
/// ```
pub fn check(cfg: &[u8], palettes: &[TilePalette]) -> Result<TileConfig, TilecfgInvalid> {
    let b = |i: usize| cfg.get(i).copied().unwrap_or(0);
    let palette = b(0);
    if palette == 0 {
        return Ok(TileConfig::Init);
    }
    let Some(p) = palettes.get(usize::from(palette) - 1) else {
        return Err(TilecfgInvalid {
            field: "palette",
            offset: 0,
            value: u32::from(palette),
            rule: "palette above CPUID.(0x1D,0).EAX (SDM Vol. 2 LDTILECFG; XRSTOR puts TILECFG in init state)",
        });
    };
    if let Some(i) = (2..16).find(|&i| b(i) != 0) {
        return Err(TilecfgInvalid {
            field: "reserved bytes 2-15",
            offset: i,
            value: u32::from(b(i)),
            rule:
                "reserved, must be zero (SDM Vol. 2 LDTILECFG; XRSTOR puts TILECFG in init state)",
        });
    }
    for n in 0..16usize {
        let co = 16 + 2 * n;
        let ro = 48 + n;
        let colsb = u16::from_le_bytes([b(co), b(co + 1)]);
        let rows = b(ro);
        if n >= usize::from(p.max_names) {
            if colsb != 0 {
                return Err(TilecfgInvalid {
                    field: "colsb of a tile beyond max_names",
                    offset: co,
                    value: u32::from(colsb),
                    rule: "tile slots beyond CPUID.(0x1D,palette).EBX[31:16] must be zero (SDM Vol. 2 LDTILECFG; XRSTOR puts TILECFG in init state)",
                });
            }
            if rows != 0 {
                return Err(TilecfgInvalid {
                    field: "rows of a tile beyond max_names",
                    offset: ro,
                    value: u32::from(rows),
                    rule: "tile slots beyond CPUID.(0x1D,palette).EBX[31:16] must be zero (SDM Vol. 2 LDTILECFG; XRSTOR puts TILECFG in init state)",
                });
            }
            continue;
        }
        if u16::from(rows) > p.max_rows {
            return Err(TilecfgInvalid {
                field: "rows",
                offset: ro,
                value: u32::from(rows),
                rule: "more rows than CPUID.(0x1D,palette).ECX[15:0] max_rows (SDM Vol. 2 LDTILECFG; XRSTOR puts TILECFG in init state)",
            });
        }
        if colsb > p.bytes_per_row {
            return Err(TilecfgInvalid {
                field: "colsb",
                offset: co,
                value: u32::from(colsb),
                rule: "more bytes per row than CPUID.(0x1D,palette).EBX[15:0] bytes_per_row (SDM Vol. 2 LDTILECFG; XRSTOR puts TILECFG in init state)",
            });
        }
        if (rows == 0) != (colsb == 0) {
            return Err(TilecfgInvalid {
                field: if rows == 0 { "colsb" } else { "rows" },
                offset: if rows == 0 { co } else { ro },
                value: if rows == 0 {
                    u32::from(colsb)
                } else {
                    u32::from(rows)
                },
                rule: "a tile has rows and colsb both zero (unused) or both non-zero (SDM Vol. 2 LDTILECFG; XRSTOR puts TILECFG in init state)",
            });
        }
    }
    Ok(TileConfig::Palette(palette))
}
