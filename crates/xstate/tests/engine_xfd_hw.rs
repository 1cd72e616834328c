//! Copy-in while XFD arms tile data, checked against this CPU and kernel (DESIGN.md §8): a
//! process that never asked for the AMX permission runs with IA32_XFD arming TILEDATA (Linux,
//! DESIGN.md §6/§9). In a forked child (`hw::sandbox`), an XRSTOR of a vCPU container whose
//! XSTATE_BV has bit 18 set raises #NM, which the kernel turns into SIGILL — the host-side
//! fault of the regression Linux 6.19 fixed; the container after the engine's copy-in with the
//! guest's XFD armed (bit 18 cleared, reported) restores cleanly.
//!
//! Its own test binary on purpose: no test in this process may request the AMX permission.
//! Skipped with the reason where the CPU has no AMX or no XFD.

#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use xstate::components::mask;
use xstate::cpuid::CpuidDump;
use xstate::engine::{Context, Engine, GuestMsr, GuestPolicy, Options, Scope};
use xstate::hw::{sandbox, Host};
use xstate::model::{CpuProfile, ModelCpu};
use xstate::strategy::SaveInsn;

const TILECFG: u8 = 17;
const TILES: u8 = 18;

#[test]
fn xfd_armed_tile_state_faults_on_this_cpu_unless_cleared() {
    let host = Host::detect();
    if !host.xsave_usable() {
        println!("skipped: XSAVE is not usable here");
        return;
    }
    let xcr0 = host.xcr0();
    if xcr0 & mask::AMX != mask::AMX || !host.has_xfd() {
        println!("skipped: no AMX with XFD here (XCR0 {xcr0:#x})");
        return;
    }
    let d = CpuidDump::from_host();
    if !CpuProfile::from_dump(&d).xsavec {
        println!("skipped: no XSAVEC");
        return;
    }
    // The engine on the model of this CPU, storing containers as XSAVEC does (XRSTOR-able in
    // user mode).
    let mut e = Engine::new(
        ModelCpu::new(CpuProfile::from_dump(&d)),
        Options {
            xcr0: Some(xcr0),
            xss: Some(0),
            ring0: Some(true),
            insn: Some(SaveInsn::Xsavec),
            ..Options::default()
        },
    )
    .unwrap();
    e.request_perm(Scope::Guest, 18).unwrap();
    e.create_vcpu(
        0,
        GuestPolicy {
            xcr0_max: xcr0,
            xss: 0,
        },
        false,
    )
    .unwrap();
    assert!(e.set_xcr0(0, xcr0).unwrap().realloc);
    e.attach(0).unwrap();
    // Palette 1 (CPUID.(0x1D,1)): 8 tiles of 16 rows × 64 bytes.
    let mut cfg = vec![0u8; 64];
    cfg[0] = 1;
    for t in 0..8 {
        cfg[16 + 2 * t] = 64;
        cfg[48 + t] = 16;
    }
    assert_eq!(e.guest_write(0, TILECFG, &cfg).unwrap().fault, None);
    assert_eq!(e.guest_write(0, TILES, &[0x5a; 8192]).unwrap().fault, None);
    e.detach(0).unwrap();
    let mut snap = vec![0u8; e.uabi_size().unwrap() as usize];
    e.get_xsave2(0, &mut snap).unwrap();

    let with_tiles = e.vcpu(0).unwrap().fpstate().as_bytes().to_vec();
    assert_ne!(with_tiles[514] & 0x4, 0, "XSTATE_BV[18] set");
    // This process holds no AMX permission: Linux keeps XFD[18] armed, the restore of tile
    // data raises #NM and the kernel answers SIGILL.
    let r = sandbox::xrstor(&host, &with_tiles, xcr0, 0).unwrap();
    assert_eq!(
        r,
        sandbox::Outcome::Fault(sandbox::Signal::Ill),
        "XRSTOR of armed tile data"
    );

    // The VMM restores the guest's XFD (armed for tiles), then the snapshot with tiles.
    let armed = e.set_msr(0, GuestMsr::Xfd, mask::XTILEDATA).unwrap();
    assert_eq!(armed.cleared_by_xfd, mask::XTILEDATA);
    let c = e.set_xsave2(0, &snap).unwrap();
    assert_eq!(c.cleared_by_xfd, mask::XTILEDATA, "reported");
    let cleared = e.vcpu(0).unwrap().fpstate().as_bytes().to_vec();
    assert_eq!(cleared[514] & 0x4, 0, "XSTATE_BV[18] cleared");
    match sandbox::xrstor(&host, &cleared, xcr0, 0).unwrap() {
        sandbox::Outcome::Restored(after) => {
            // TILECFG was loaded; the tiles are in their init state.
            assert_ne!(after.image[512 + 2] & 0x2, 0, "TILECFG in use");
        }
        other => panic!("the cleared container faults on this CPU: {other:?}"),
    }
    assert_eq!(
        e.read_component(Context::Vcpu(0), TILES).unwrap(),
        vec![0; 8192]
    );
}
