//! Test data shared by the unit tests: this project's machine kind read from its real
//! `cpuid -r` dump (DESIGN.md §9: AVX 576, opmask 832, ZMM_Hi256 896, Hi16_ZMM 1408, size 2432).

use xstate::cpuid::CpuidDump;
use xstate::layout::{FormLayout, Layout};

const ZEN5_CPUID_R: &str = include_str!(
    "../../xstate/tests/fixtures/cpuid/cpuid-r/AMD-Zen5-EPYC-family1Ah-this-machine-kind.txt"
);

/// The standard form of XCR0 0xe7 on this project's Zen 5.
pub fn zen5_standard() -> FormLayout {
    let d = CpuidDump::parse(ZEN5_CPUID_R, "zen5 cpuid -r").expect("fixture parses");
    Layout::from_dump(&d).standard(0xe7).expect("0xe7 lays out")
}
