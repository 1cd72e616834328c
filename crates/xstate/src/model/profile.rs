//! The CPU profile: capability bits and the vendor differences that change bytes in memory,
//! chosen from CPUID.

use crate::cpuid::{CpuidDump, Vendor};
use crate::layout::Layout;
use crate::model::tilecfg::TilePalette;
use alloc::vec::Vec;

/// When FXSAVE/XSAVE store the x87 last-instruction pointers FIP, FDP and FOP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum X87Pointers {
    /// Always stored (Intel; AMD with CPUID.8000_0008:EBX\[2\] XSaveErPtr).
    Always,
    /// Stored only when an unmasked x87 exception is pending (FSW.ES = 1); otherwise the
    /// fields are written as zero, and restores do not load them (AMD: the behaviour behind
    /// the "FXSAVE leak" of K7/K8, and measured on Zen 5 for FXSAVE and XSAVE alike — a masked
    /// exception does not make them saved either).
    OnlyWithPendingException,
    /// Never kept: saves write FIP and FDP (and FOP) as zero and restores do not load them
    /// (QEMU TCG, measured with the ring-0 kernel: its x87 does not track the last
    /// instruction and data pointers; docs/ring0.md).
    Never,
}

/// How the processor tracks XINUSE (SDM Vol. 1 §13.6 allows XINUSE\[i\] = 1 for a component in
/// init state; it requires 0 only after the component was put in init state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XinuseTracking {
    /// The SDM's reading: a restore with XSTATE_BV\[i\] = 1 and any write of the component set
    /// XINUSE\[i\]; only initialization (XRSTOR with XSTATE_BV\[i\] = 0, VZEROUPPER for AVX,
    /// TILERELEASE …) clears it. Not verified on silicon by this project.
    OnWrite,
    /// XINUSE\[i\] = the component is not in its init state, whatever put it there (measured on
    /// AMD Zen 5: XRSTOR of zeros with XSTATE_BV\[i\] = 1, or PXOR of the only non-zero XMM
    /// register, leave XINUSE\[i\] = 0).
    ByValue,
}

/// A CPU as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuProfile {
    /// Geometry from CPUID leaf 0xD.
    pub layout: Layout,
    /// Vendor from CPUID leaf 0.
    pub vendor: Vendor,
    /// CPUID.1:ECX.XSAVE.
    pub xsave: bool,
    /// CPUID.1:EDX.FXSR.
    pub fxsr: bool,
    /// CPUID.(0xD,1):EAX\[0\] XSAVEOPT.
    pub xsaveopt: bool,
    /// CPUID.(0xD,1):EAX\[1\] XSAVEC and compacted XRSTOR.
    pub xsavec: bool,
    /// CPUID.(0xD,1):EAX\[2\] XGETBV with ECX = 1.
    pub xgetbv1: bool,
    /// CPUID.(0xD,1):EAX\[3\] XSAVES/XRSTORS and IA32_XSS.
    pub xsaves: bool,
    /// CPUID.(0xD,1):EAX\[4\] XFD.
    pub xfd: bool,
    /// MXCSR_MASK (SDM Vol. 1 §11.6.6; 0xFFFF with DAZ, 0xFFBF without).
    pub mxcsr_mask: u32,
    /// How FIP/FDP/FOP are saved.
    pub x87_pointers: X87Pointers,
    /// Width of the FIP register: loaded values are sign-extended from this bit count (57
    /// measured on AMD Zen 5 and on an Intel Xeon with AMX, family 6 model 0xA7: bits 63:57
    /// read back as copies of bit 56); None keeps all 64.
    pub fip_bits: Option<u8>,
    /// Width of the FDP register, as [`CpuProfile::fip_bits`] (57 on Zen 5; all 64 kept on the
    /// Intel Xeon measured).
    pub fdp_bits: Option<u8>,
    /// How XINUSE is tracked.
    pub xinuse_tracking: XinuseTracking,
    /// FCW bits as stored: `(and, or)` applied to a loaded FCW (measured on AMD Zen 5 and on
    /// the Intel Xeon, family 6 model 0xA7: `(0x1f3f, 0x0040)`: reserved bits 7 and 13-15 read
    /// 0, bit 6 reads 1). None: as loaded.
    pub fcw_fixed: Option<(u16, u16)>,
    /// A legacy-SSE instruction writing an XMM register while ZMM_Hi256 is in use marks AVX
    /// in use (XINUSE\[2\] = 1) even though the YMM upper halves stay zero (measured on Zen 5).
    pub sse_write_marks_avx: bool,
    /// LDMXCSR puts SSE in use and marks it modified, whatever the value and whether the XMM
    /// registers are zero (measured on the Intel Xeon, family 6 model 0xA7: XSAVEOPT after
    /// XRSTOR, LDMXCSR writes the XMM registers and XSTATE_BV\[1\] = 1; on Zen 5 LDMXCSR
    /// changes neither).
    pub ldmxcsr_writes_sse: bool,
    /// VZEROUPPER marks SSE modified for XSAVEOPT's modified optimization although it leaves
    /// the XMM registers as they are (measured on Zen 5; the Intel Xeon, family 6 model 0xA7,
    /// does not: XSAVEOPT to the XRSTOR address after VZEROUPPER skips the XMM registers).
    pub vzeroupper_modifies_sse: bool,
    /// The AMX palettes of CPUID leaf 0x1D (entry k = palette k + 1): what makes a TILECFG
    /// valid ([`crate::model::tilecfg::check`]); empty without TILECFG.
    pub tile_palettes: Vec<TilePalette>,
}

impl CpuProfile {
    /// The profile of the CPU a dump describes. MXCSR_MASK is not in CPUID: it is taken as
    /// 0xFFFF (DAZ supported, every CPU since the Pentium 4 and every AMD64 CPU); set the field
    /// when the real value is known (the hardware backend reads it with FXSAVE).
    pub fn from_dump(d: &CpuidDump) -> CpuProfile {
        let layout = Layout::from_dump(d);
        let leaf = d.leaf_0d();
        let vendor = d.vendor();
        let xsave = layout.has_xsave();
        let amd_like = matches!(vendor, Vendor::Amd | Vendor::Hygon);
        CpuProfile {
            layout,
            vendor,
            xsave,
            fxsr: d.has_fxsr() || d.get(1, 0).is_none(),
            xsaveopt: xsave && leaf.has_xsaveopt(),
            xsavec: xsave && leaf.has_xsavec(),
            xgetbv1: xsave && leaf.has_xgetbv1(),
            xsaves: xsave && leaf.has_xsaves(),
            xfd: xsave && leaf.has_xfd(),
            mxcsr_mask: 0xffff,
            // Measured on Zen 5 even though it reports CPUID.8000_0008:EBX[2] (XSaveErPtr).
            x87_pointers: if amd_like {
                X87Pointers::OnlyWithPendingException
            } else {
                X87Pointers::Always
            },
            // Measured on Zen 5 and on an Intel Xeon (family 6, model 0xA7) with the FXSAVE64
            // probe of tests/model_hw.rs: FIP keeps 57 bits on both, FDP only on AMD.
            fip_bits: Some(57),
            fdp_bits: if amd_like { Some(57) } else { None },
            fcw_fixed: Some((0x1f3f, 0x0040)),
            sse_write_marks_avx: amd_like,
            ldmxcsr_writes_sse: !amd_like,
            vzeroupper_modifies_sse: amd_like,
            tile_palettes: TilePalette::from_dump(d),
            xinuse_tracking: if amd_like {
                XinuseTracking::ByValue
            } else {
                XinuseTracking::OnWrite
            },
        }
    }

    /// The bits of XFD-capable components (CPUID.(0xD,i).ECX\[2\]).
    pub fn xfd_capable(&self) -> u64 {
        let mut m = 0;
        for i in 2..63u8 {
            if self.layout.geometry(i).xfd {
                m |= 1u64 << i;
            }
        }
        m
    }
}
