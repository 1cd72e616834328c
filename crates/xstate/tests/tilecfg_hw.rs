//! The model's TILECFG rule against this CPU (AMX in XCR0: the Intel Xeon of this project,
//! family 6 model 0xA7): random TILECFG values — valid configurations and mutations of them
//! (palette, reserved bytes, rows/colsb beyond CPUID leaf 0x1D, half-configured tiles, slots
//! beyond max_names) — with random TILEDATA and XSTATE_BV\[18:17\], restored by XRSTOR in a
//! forked child that first requests AMX permission (ARCH_REQ_XCOMP_PERM), over a state
//! holding another configuration and other tiles. TILECFG, TILEDATA and XSTATE_BV\[18:17\] as
//! the CPU saves them right after the restore must equal the model's. Skipped where AMX is
//! not enabled or the kernel refuses the permission.

#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xstate::components::mask;
use xstate::hw::{sandbox, Host};
use xstate::model::tilecfg::{check, TileConfig};
use xstate::model::{CpuProfile, ModelCpu};

/// A valid configuration of palette 1 within `p`'s limits: each tile unused or configured.
fn random_valid(r: &mut StdRng, max_names: usize, max_rows: u8, bpr: u16) -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = 1;
    c[1] = if r.gen_bool(0.8) { 0 } else { r.gen() };
    for n in 0..max_names {
        if r.gen_bool(0.8) {
            let colsb = r.gen_range(1..=bpr);
            c[16 + 2 * n..18 + 2 * n].copy_from_slice(&colsb.to_le_bytes());
            c[48 + n] = r.gen_range(1..=max_rows);
        }
    }
    c
}

/// One of the ways a configuration becomes invalid (or palette 0), or a random byte.
fn mutate(r: &mut StdRng, c: &mut [u8; 64], max_names: usize, max_rows: u8, bpr: u16) {
    let n = r.gen_range(0..max_names);
    match r.gen_range(0..9) {
        0 => c[0] = r.gen_range(2..=255),
        1 => c[0] = 0,
        2 => c[r.gen_range(2..16)] = r.gen_range(1..=255),
        3 => c[48 + n] = r.gen_range(max_rows + 1..=255),
        4 => {
            let v = r.gen_range(bpr + 1..=u16::MAX);
            c[16 + 2 * n..18 + 2 * n].copy_from_slice(&v.to_le_bytes());
        }
        5 => {
            // Half-configured: rows without colsb or the reverse.
            if r.gen_bool(0.5) {
                c[16 + 2 * n..18 + 2 * n].fill(0);
                c[48 + n] = r.gen_range(1..=max_rows);
            } else {
                c[48 + n] = 0;
                c[16 + 2 * n] = r.gen_range(1..=bpr.min(255) as u8);
            }
        }
        6 => c[16 + 2 * r.gen_range(max_names..16)] = r.gen_range(1..=255),
        7 => c[48 + r.gen_range(max_names..16)] = r.gen_range(1..=255),
        _ => {
            let i = r.gen_range(0..64);
            c[i] = r.gen();
        }
    }
}

#[test]
fn xrstor_of_random_tilecfg_matches_the_model() {
    let host = Host::detect();
    if !host.xsave_usable() || host.xcr0() & mask::AMX != mask::AMX {
        return println!("skipped: AMX is not enabled in XCR0 on this CPU");
    }
    let profile = CpuProfile::host();
    let Some(pal) = profile.tile_palettes.first().copied() else {
        return println!("skipped: CPUID leaf 0x1D describes no palette");
    };
    let (names, rows, bpr) = (
        usize::from(pal.max_names).min(16),
        pal.max_rows.min(255) as u8,
        pal.bytes_per_row,
    );
    if names == 0 || rows == 0 || bpr == 0 || names >= 16 || rows == 255 || bpr == u16::MAX {
        return println!("skipped: palette 1 limits {pal:?} leave no room for the mutations");
    }
    let xcr0 = host.xcr0();
    let l = profile
        .layout
        .standard(xcr0)
        .expect("standard layout of XCR0");
    let (co, d) = (
        l.placement(17).unwrap().offset as usize,
        l.placement(18).unwrap(),
    );
    let (dof, dlen) = (d.offset as usize, d.size as usize);
    let image = |cfg: &[u8; 64], data: &[u8], bv: u64| {
        let mut m = vec![0u8; l.size as usize];
        m[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        m[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        m[512..520].copy_from_slice(&bv.to_le_bytes());
        m[co..co + 64].copy_from_slice(cfg);
        m[dof..dof + dlen].copy_from_slice(data);
        m
    };
    let mut r = StdRng::seed_from_u64(0x0711_ecf9);
    let (mut valid, mut invalid, mut init) = (0, 0, 0);
    for case in 0..240 {
        let pre_cfg = random_valid(&mut r, names, rows, bpr);
        let mut pre_data = vec![0u8; dlen];
        r.fill(&mut pre_data[..]);
        let pre = image(&pre_cfg, &pre_data, mask::AMX);
        let mut cfg = random_valid(&mut r, names, rows, bpr);
        if case % 3 != 0 {
            for _ in 0..r.gen_range(1..=2) {
                mutate(&mut r, &mut cfg, names, rows, bpr);
            }
        }
        let mut data = vec![0u8; dlen];
        if r.gen_bool(0.9) {
            r.fill(&mut data[..]);
        }
        let bv = [mask::AMX, mask::XTILECFG, mask::XTILEDATA, 0][r.gen_range(0..4)];
        let img = image(&cfg, &data, bv);
        let hw = match sandbox::xrstor_after_with_amx_permission(&host, Some(&pre), &img, xcr0) {
            Ok(sandbox::Outcome::Restored(a)) => a,
            Ok(sandbox::Outcome::Fault(s)) => {
                panic!("case {case}: XRSTOR faulted ({s:?}), cfg {cfg:02x?}")
            }
            Err(sandbox::SandboxError::Sys { call, errno }) if call.starts_with("arch_prctl") => {
                return println!("skipped: the kernel refuses AMX permission (errno {errno})");
            }
            Err(e) => panic!("sandbox: {e}"),
        };
        let mut m = ModelCpu::new(profile.clone());
        m.xsetbv(0, xcr0).expect("the host's XCR0");
        m.cpl = 3;
        m.xrstor(&pre, 0, u64::MAX).expect("pre image");
        m.xrstor(&img, 4096, xcr0)
            .expect("XRSTOR of TILECFG does not fault");
        let hw_bv = u64::from_le_bytes(hw.image[512..520].try_into().unwrap()) & mask::AMX;
        let what = format!("case {case}: XSTATE_BV {bv:#x}, TILECFG {cfg:02x?}");
        assert_eq!(
            &hw.image[co..co + 64],
            m.component(17).unwrap(),
            "{what}: TILECFG"
        );
        assert_eq!(
            hw_bv,
            m.xinuse() & mask::AMX,
            "{what}: XSTATE_BV[18:17] after XSAVE"
        );
        assert!(
            hw.image[dof..dof + dlen] == *m.component(18).unwrap(),
            "{what}: TILEDATA"
        );
        if bv & mask::XTILECFG != 0 {
            match check(&cfg, &profile.tile_palettes) {
                Ok(TileConfig::Palette(_)) => valid += 1,
                Ok(TileConfig::Init) => init += 1,
                Err(_) => invalid += 1,
            }
        }
    }
    println!("TILECFG loaded: {valid} valid, {invalid} invalid, {init} palette 0; all agree");
    assert!(
        valid > 10 && invalid > 10 && init > 3,
        "{valid}/{invalid}/{init}"
    );
}
