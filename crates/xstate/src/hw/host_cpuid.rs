//! This CPU's CPUID as a [`CpuidDump`]: the reading belongs with the instructions (CPUID and
//! XGETBV execute here), the table and its parsers stay in [`crate::cpuid`], which executes
//! nothing.

use alloc::string::String;

use crate::cpuid::{CpuidDump, KEPT_LEAVES};
use crate::model::CpuProfile;

impl CpuidDump {
    /// This CPU: the kept leaves (see [`KEPT_LEAVES`]), the subleaves of 0xD the CPU
    /// enumerates (0, 1 and every component of CPUID.(0xD,0).EDX:EAX or CPUID.(0xD,1).EDX:ECX,
    /// SDM Vol. 1 §13.2), the brand string, and XCR0/XINUSE.
    ///
    /// CPUID is executed once per process (with `std`): in a VM each CPUID is a VM exit
    /// costing microseconds (DESIGN §9), and its answers do not change under a running
    /// process. Later calls return a copy of the first reading with XCR0 and XINUSE read
    /// again (XGETBV, which does not exit).
    ///
    /// ```
    /// # #[cfg(target_arch = "x86_64")] {
    /// let d = xstate::cpuid::CpuidDump::from_host();
    /// assert!(d.get(0, 0).is_some());
    /// # }
    /// ```
    pub fn from_host() -> Self {
        #[cfg(feature = "std")]
        let mut d = {
            static HOST: std::sync::OnceLock<CpuidDump> = std::sync::OnceLock::new();
            HOST.get_or_init(Self::read_host).clone()
        };
        #[cfg(not(feature = "std"))]
        let mut d = Self::read_host();
        if d.os_xsave() {
            d.xcr0 = Some(super::xgetbv_if(0, true));
            let s1 = d.get_or_zero(0xd, 1);
            if d.get(0, 0).is_some_and(|r| r.eax >= 0xd) && s1.eax & 4 != 0 {
                d.xinuse = Some(super::xgetbv_if(1, true));
            }
        }
        d
    }

    /// Executes the CPUIDs of [`from_host`](Self::from_host).
    fn read_host() -> Self {
        let mut d = CpuidDump::new("host");
        d.format = String::from("host");
        let (l0, l8) = (super::cpuid(0, 0), super::cpuid(0x8000_0000, 0));
        let (max_basic, max_ext) = (l0.eax, l8.eax);
        for &leaf in KEPT_LEAVES.iter() {
            let in_range = if leaf >= 0x8000_0000 {
                leaf <= max_ext
            } else {
                leaf <= max_basic
            };
            if !in_range {
                continue;
            }
            match leaf {
                0x0 => d.insert(leaf, 0, l0),
                0x8000_0000 => d.insert(leaf, 0, l8),
                0xd => {
                    let s0 = super::cpuid(leaf, 0);
                    let s1 = super::cpuid(leaf, 1);
                    d.insert(leaf, 0, s0);
                    d.insert(leaf, 1, s1);
                    let listed = (u64::from(s0.edx) << 32 | u64::from(s0.eax))
                        | (u64::from(s1.edx) << 32 | u64::from(s1.ecx));
                    for sub in 2..63u32 {
                        if listed & (1u64 << sub) != 0 {
                            d.insert(leaf, sub, super::cpuid(leaf, sub));
                        }
                    }
                }
                0x7 | 0x14 | 0x1d => {
                    let max_sub = super::cpuid(leaf, 0).eax.min(31);
                    for sub in 0..=max_sub {
                        d.insert(leaf, sub, super::cpuid(leaf, sub));
                    }
                }
                _ => d.insert(leaf, 0, super::cpuid(leaf, 0)),
            }
        }
        if max_ext >= 0x8000_0004 {
            for leaf in 0x8000_0002..=0x8000_0004 {
                d.insert(leaf, 0, super::cpuid(leaf, 0));
            }
        }
        d
    }
}
impl CpuProfile {
    /// This machine's profile, MXCSR_MASK included (read with FXSAVE: CPUID does not report
    /// it).
    ///
    /// ```
    /// let p = xstate::model::CpuProfile::host();
    /// assert!(p.mxcsr_mask & 0xffbf == 0xffbf);
    /// ```
    pub fn host() -> CpuProfile {
        let mut p = CpuProfile::from_dump(&CpuidDump::from_host());
        p.mxcsr_mask = super::Host::detect().mxcsr_mask();
        p
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod host_tests {
    use super::*;

    /// `from_host` holds exactly the subleaves of 0xD this CPU enumerates, each equal to what
    /// CPUID answers now, and a second call gives the same table (read once).
    #[test]
    fn host_reads_the_enumerated_subleaves() {
        let d = CpuidDump::from_host();
        if d.get(0xd, 0).is_none() {
            return println!("skipped: no leaf 0xD on this CPU");
        }
        let (s0, s1) = (super::super::cpuid(0xd, 0), super::super::cpuid(0xd, 1));
        let listed = (u64::from(s0.edx) << 32 | u64::from(s0.eax))
            | (u64::from(s1.edx) << 32 | u64::from(s1.ecx));
        for sub in 0..64u32 {
            let want = sub < 2 || (sub < 63 && listed & (1u64 << sub) != 0);
            assert_eq!(d.get(0xd, sub).is_some(), want, "subleaf {sub}");
            if want {
                assert_eq!(d.get(0xd, sub), Some(super::super::cpuid(0xd, sub)));
            }
        }
        let again = CpuidDump::from_host();
        assert_eq!(
            again.entries().collect::<Vec<_>>(),
            d.entries().collect::<Vec<_>>()
        );
    }
}
