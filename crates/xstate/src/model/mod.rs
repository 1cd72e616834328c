//! An executable model of the XSAVE instruction family (Intel SDM Vol. 1 ch. 13, Vol. 2
//! XSAVE/XSAVEOPT/XSAVEC/XSAVES/XRSTOR/XRSTORS/FXSAVE/FXRSTOR/XGETBV/XSETBV), checked against
//! the real CPU, and the [`Backend`] trait shared by the model and the hardware.
//!
//! * [`ModelCpu`]: one logical processor — the register file of every component (x87, SSE,
//!   and each component ≥ 2 as bytes of its CPUID size), XCR0, IA32_XSS, IA32_XFD,
//!   IA32_XFD_ERR, CR4.OSXSAVE, CR0.TS, CPL, VMX non-root, XINUSE, XMODIFIED and XRSTOR_INFO —
//!   and the instructions, every fault returned as a [`Fault`] (exception + SDM rule + the
//!   field, offset and values), never a panic. Memory writes are exact: bytes an instruction
//!   does not write keep their values, and a faulting instruction writes nothing.
//! * [`CpuProfile`]: capability bits and the vendor differences that change bytes in memory,
//!   chosen from CPUID ([`CpuProfile::from_dump`], [`CpuProfile::host`]).
//! * [`Backend`]: the interface the guest FPU engine drives; [`ModelCpu`] implements it
//!   everywhere, [`HwBackend`](crate::hw::HwBackend) on this CPU in user mode on the live registers,
//!   [`CheckedHwBackend`](crate::hw::CheckedHwBackend) on this CPU with a context image (for differential tests), and `xstate::hw::ring0::Ring0Backend`
//!   (cargo feature `ring0`, compile-tested) at CPL 0.
//!
//! # What the instructions do (DESIGN.md §5, SDM sections cited in the code)
//!
//! * **XSAVE / XSAVEOPT** (standard form, RFBM = EDX:EAX & XCR0): x87 bytes 0..24 and
//!   32..160 (ST slots in stack order, 6 reserved bytes per slot written as 0, byte 5 as 0);
//!   MXCSR and MXCSR_MASK (24..32) when RFBM\[1\] or RFBM\[2\]; XMM0-15 (160..416); every
//!   component i ≥ 2 of RFBM at its CPUID offset; XSTATE_BV\[i\] := XINUSE\[i\] for i in RFBM by a
//!   read-modify-write of bytes 512..519. Nothing else — not 416..511, not 520..575. XSAVE
//!   writes every RFBM component (init values when not in use); XSAVEOPT skips components not
//!   in use (init optimization) and components not modified since an XRSTOR from the same
//!   linear address at the same CPL (modified optimization, XRSTOR_INFO); MXCSR is never
//!   skipped.
//! * **XSAVEC / XSAVES** (compacted): XSTATE_BV := RFBM & XINUSE, plus bit 1 when RFBM\[1\] and
//!   MXCSR ≠ 1F80H (then MXCSR, MXCSR_MASK and the XMM registers are written); XCOMP_BV :=
//!   RFBM | bit 63; components not in use are not written; only those two header fields are
//!   written. XSAVES: RFBM from XCR0 | IA32_XSS, CPL 0, modified optimization when XRSTOR_INFO
//!   = (CPL, VMX non-root, address, RFBM | bit 63).
//! * **XRSTOR / XRSTORS**: every #GP rule of §13.8.1, §13.8.2, §13.12 is checked before any
//!   register changes; for i in RFBM, XSTATE_BV\[i\] = 1 loads component i, 0 puts it in init
//!   state (init first, then load); MXCSR per form (standard: whenever RFBM\[1\] or RFBM\[2\];
//!   compacted: with a loaded SSE component, 1F80H when SSE is initialized). An XFD-armed
//!   component with XSTATE_BV\[i\] = RFBM\[i\] = 1 raises #NM and ORs the bit into IA32_XFD_ERR
//!   (§13.14). XRSTOR_INFO := (CPL, VMX non-root, address, XCOMP_BV).
//!   A loaded TILECFG that is not a valid configuration for the palettes of CPUID leaf 0x1D
//!   puts TILECFG in its init state without a fault; TILEDATA is loaded or initialized as
//!   XSTATE_BV\[18\] says ([`tilecfg`], measured on an Intel Xeon with AMX).
//! * **FXSAVE / FXRSTOR** (64-bit forms): bytes 0..416; 416..511 are never written.
//! * **XFD**: saves treat XCR0 & IA32_XFD components as not in use (XSAVE writes their init
//!   value, zeros, so no armed register content leaks).
//! * **Other instructions** ([`SimpleInsn`]): VZEROUPPER, VZEROALL, FNINIT, FNCLEX, PXOR,
//!   VPXOR, KXORW, LDMXCSR and TILERELEASE change registers, XINUSE and XMODIFIED as measured.
//!
//! # What this CPU really does (AMD EPYC, family 1Ah, Zen 5 — measured, `tests/model_hw.rs`)
//!
//! Where the hardware chose among what the SDM allows, or differs from a plain reading, the
//! [`CpuProfile`] fields record it (set for AMD/Hygon; Intel profiles use the SDM reading):
//!
//! 1. **XINUSE is tracked by value** ([`XinuseTracking::ByValue`]): XRSTOR of all-zero
//!    content with XSTATE_BV\[i\] = 1 leaves XINUSE\[i\] = 0; `PXOR` of the only non-zero XMM
//!    register clears XINUSE\[1\]; FCW = 037FH with everything else zero is x87 init.
//! 2. **XINUSE may stay 1 for a component in init state**, as SDM §13.6 allows, in ways the
//!    model does not predict: a legacy-SSE write while ZMM_Hi256 is in use sets XINUSE\[2\]
//!    ([`CpuProfile::sse_write_marks_avx`]), and after some restore sequences the XSTATE_BV
//!    written by XSAVE reports SSE/AVX in use while XGETBV(1) just before reports them not in
//!    use. The differential test adopts the CPU's extra bits for components the model knows
//!    to be in init state (counted and printed) and then requires every byte to match.
//! 3. **XGETBV(1) bit 1 includes MXCSR ≠ 1F80H, XSAVE's XSTATE_BV\[1\] does not** (SDM §13.9:
//!    "XINUSE\[1\] pertains only to the state of the XMM registers").
//! 4. **FIP/FDP/FOP are saved only with an unmasked exception pending** (FSW.ES), else as
//!    zero — for FXSAVE and XSAVE alike, even though CPUID.8000_0008:EBX\[2\] (XSaveErPtr) is
//!    set; a masked exception does not make them saved ([`X87Pointers`]).
//! 5. **FIP and FDP hold 57 bits**: loaded values read back sign-extended from bit 56
//!    ([`CpuProfile::fip_bits`], [`CpuProfile::fdp_bits`]); FOP keeps 11 bits. (The Intel
//!    Xeon measured keeps 57 bits of FIP but all 64 of FDP.)
//! 6. **FSW.ES and FSW.B are recomputed** from the exception flags and FCW masks on load;
//!    **FCW reserved bits** read back fixed: bits 7 and 13-15 as 0, bit 6 as 1
//!    ([`CpuProfile::fcw_fixed`]; the Intel Xeon measured does the same).
//! 7. **The modified optimization is real and per component**: XRSTOR from A, a memory write
//!    into A, XSAVEOPT to A leaves the written bytes of unmodified components in place; an
//!    instruction writing a component (PXOR → SSE, FNCLEX/FNINIT → x87, KXORW → opmask,
//!    VPXOR ymm → SSE, AVX, ZMM_Hi256; VZEROUPPER → also SSE on Zen 5, not on the Intel Xeon
//!    measured ([`CpuProfile::vzeroupper_modifies_sse`]); LDMXCSR → none on Zen 5, SSE on the
//!    Intel Xeon ([`CpuProfile::ldmxcsr_writes_sse`])) makes it
//!    written. Components **outside the RFBM of that XRSTOR** are always written (the model
//!    sets XMODIFIED for them).
//! 8. MXCSR_MASK is 0x2FFFF (bit 17, AMD's misaligned-exception mask, is writable).
//! 9. Standard-form XRSTOR ignores header bytes 24..63; a compacted XRSTOR with XSTATE_BV\[63\]
//!    set faults; misaligned operands fault (#GP arrives as SIGSEGV).
//!
//! # Worked examples (`xstate model`, checked in `crates/xstate-cli/tests/model_cli.rs`)
//!
//! With this machine kind's dump (`--cpuid fixtures/cpuid/cpuid-r/AMD-Zen5-…txt --xcr0 0xe7`)
//! and STATE.bin = x87 init, MXCSR 1F80H, XMM0 = 0x11 × 16, XSTATE_BV = 0x2:
//!
//! 1. `--insn xsave --rfbm 0x3` over memory of 0xFF bytes: bytes 0..416 are written (FCW
//!    037FH, FSW/FTW/FOP/FIP/FDP 0, MXCSR 1F80H, MXCSR_MASK, ST slots 0, XMM0 = 0x11…), the
//!    XSTATE_BV read-modify-write gives 0xFFFF_FFFF_FFFF_FFFE (bit 0 := XINUSE\[0\] = 0, bit 1 :=
//!    1, the rest unchanged), 416..511 and 520.. stay 0xFF (SDM §13.7).
//! 2. `--insn xsavec`: XSTATE_BV = 0x2, XCOMP_BV = 0x8000_0000_0000_00E7, bytes 0..24 stay
//!    0xFF (x87 not in use, init optimization), header bytes 528..575 stay 0xFF (§13.10).
//! 3. `--insn xrstor` of an image with byte 520 = 1: exit 3,
//!    `{"fault": "#GP", "rule": "standard-form XRSTOR: header bytes 8..23 … (SDM Vol. 1 §13.8.1: #GP)"}`.
//! 4. `--insn xrstor` of a compacted image (XCOMP_BV = 0x8000_0000_0000_0007, XSTATE_BV = 0,
//!    MXCSR bytes 0x1FC0): MXCSR becomes 1F80H, XMM0 zero, XINUSE 0 (§13.8.2).
//! 5. `--insn xsaves --cpl 3`: exit 3, #GP (Vol. 2 XSAVES).
//! 6. Sapphire Rapids (`--xcr0 0x602e7 --xfd 0x40000`), tiles holding data: `xsavec` writes
//!    XSTATE_BV = 0x20000 and XCOMP_BV = 0x8000_0000_0006_02E7; restoring it with
//!    XSTATE_BV\[18\] = 1 exits 3 with #NM and IA32_XFD_ERR |= 0x40000 (§13.14).
//!
//! ```
//! use xstate::model::{AlignedBuf, CpuProfile, Exception, ModelCpu, SimpleInsn};
//! # use xstate::cpuid::{CpuidDump, Regs};
//! # let mut d = CpuidDump::new("doc");
//! # d.insert(1, 0, Regs { eax: 0, ebx: 0, ecx: 1 << 26 | 1 << 27, edx: 1 << 24 });
//! # d.insert(0xd, 0, Regs { eax: 0x7, ebx: 0x340, ecx: 0x340, edx: 0 });
//! # d.insert(0xd, 1, Regs { eax: 0xf, ebx: 0, ecx: 0, edx: 0 });
//! # d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! let mut cpu = ModelCpu::new(CpuProfile::from_dump(&d));
//! cpu.xsetbv(0, 0x7).unwrap();
//! cpu.exec(SimpleInsn::Ldmxcsr(0x1fc0)).unwrap();
//! let mut mem = AlignedBuf::new(0x340);
//! cpu.xsavec(&mut mem, 0, u64::MAX).unwrap();
//! assert_eq!(mem[512], 0x2);                     // SSE saved because MXCSR != 1F80H
//! let mut bad = mem.clone();
//! bad[540] = 1;                                  // reserved header byte
//! assert_eq!(cpu.xrstor(&bad, 0, u64::MAX).unwrap_err().exception, Exception::Gp);
//! ```

pub mod backend;
pub mod cpu;
pub mod fault;
pub mod inject;
pub mod profile;
mod sealed;
pub mod tilecfg;

pub use crate::image::AlignedBuf;
pub use backend::{Backend, Msr, RestoreInsn, SaveInsn, SwitchFault};
pub use cpu::{ModelCpu, SimpleInsn, XrstorInfo, X87};
pub use fault::{Exception, Fault};
pub use profile::{CpuProfile, X87Pointers, XinuseTracking};
pub(crate) use sealed::Line;
pub use sealed::{Seal, SealedBuf, SealedMut, SealedRef};
