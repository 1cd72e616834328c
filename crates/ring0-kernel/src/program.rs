//! A straight-line program of XSAVE-family instructions executed on the CPU in one asm block,
//! so that no compiled code (which uses XMM registers) runs between two steps. Every step
//! records the exception it raised (vector and error code) through the IDT's fault recovery
//! (`arch`), and the program goes on with the next step.

static MXCSR_INIT: u32 = 0x1f80;

/// One instruction of a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Op {
    /// XSAVE64 [addr], EDX:EAX = arg.
    Xsave = 0,
    /// XSAVEOPT64.
    Xsaveopt = 1,
    /// XSAVEC64.
    Xsavec = 2,
    /// XSAVES64.
    Xsaves = 3,
    /// XRSTOR64.
    Xrstor = 4,
    /// XRSTORS64.
    Xrstors = 5,
    /// FXSAVE64.
    Fxsave = 6,
    /// FXRSTOR64.
    Fxrstor = 7,
    /// XSETBV with ECX = 0, EDX:EAX = arg.
    Xsetbv = 8,
    /// XGETBV with ECX = arg; EDX:EAX stored at addr (8 bytes).
    Xgetbv = 9,
    /// TILERELEASE.
    Tilerelease = 10,
    /// WRMSR IA32_XSS (0xDA0), EDX:EAX = arg.
    WrXss = 11,
    /// A one-byte store of arg's low byte at addr (an ordinary memory write between two
    /// XSAVE-family instructions, as for the modified optimization).
    Store8 = 12,
    /// Zeroes `arg` bytes at addr (REP STOSB): clears header fields XSAVE does not write.
    Zero = 13,
    /// CR0.TS := arg ≠ 0 (XSAVE-family instructions and FXSAVE then raise #NM, SDM Vol. 1
    /// §13.7-13.12).
    Cr0Ts = 14,
    /// CR4.OSXSAVE := arg ≠ 0 (XSAVE-family instructions, XGETBV and XSETBV then raise #UD).
    Cr4Osxsave = 15,
}

impl Op {
    /// Mnemonic for reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Xsave => "xsave",
            Op::Xsaveopt => "xsaveopt",
            Op::Xsavec => "xsavec",
            Op::Xsaves => "xsaves",
            Op::Xrstor => "xrstor",
            Op::Xrstors => "xrstors",
            Op::Fxsave => "fxsave",
            Op::Fxrstor => "fxrstor",
            Op::Xsetbv => "xsetbv",
            Op::Xgetbv => "xgetbv",
            Op::Tilerelease => "tilerelease",
            Op::WrXss => "wrmsr_xss",
            Op::Store8 => "store8",
            Op::Zero => "zero",
            Op::Cr0Ts => "cr0_ts",
            Op::Cr4Osxsave => "cr4_osxsave",
        }
    }
}

/// One step: the instruction, its EDX:EAX (or ECX, or byte) argument, its memory operand, and
/// the result (vector or `NO_FAULT`, error code).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Step {
    /// The instruction.
    pub op: Op,
    /// EDX:EAX, ECX or the byte, per `op`.
    pub arg: u64,
    /// Linear (= physical) address of the memory operand.
    pub addr: u64,
    /// Exception vector raised, `arch::NO_FAULT` when none.
    pub vector: u64,
    /// Error code of that exception.
    pub error: u64,
}

impl Step {
    /// A step not yet run.
    pub fn new(op: Op, arg: u64, addr: u64) -> Step {
        Step {
            op,
            arg,
            addr,
            vector: crate::arch::NO_FAULT,
            error: 0,
        }
    }
}

/// Runs the steps on this CPU, in order, in one asm block. Afterwards CR0 and CR4 are put back
/// as they were, x87 is re-initialized (FNINIT) and MXCSR set to 1F80H for the compiled code
/// that follows.
///
/// # Safety
/// CPL 0 with the IDT of `arch` loaded. Every step's memory operand lies in memory the caller
/// owns and that the instruction may write (saves: the whole image size from addr).
pub unsafe fn run(steps: &mut [Step]) {
    // SAFETY: per the caller's contract; faults of any step are recovered at label 28 by the
    // IDT handler (RECOVER_RIP), which resumes with the registers as the fault left them.
    unsafe {
        core::arch::asm!(
            "mov r14, cr0",
            "mov r15, cr4",
            "20:",
            "test r13, r13",
            "jz 29f",
            "mov qword ptr [rip + FAULT_VEC], -1",
            "mov qword ptr [rip + FAULT_ERR], 0",
            "lea rax, [rip + 28f]",
            "mov [rip + RECOVER_RIP], rax",
            "mov rdi, [r12 + 16]",
            "mov eax, [r12 + 8]",
            "mov edx, [r12 + 12]",
            "mov r8, [r12]",
            "cmp r8, 0", "je 30f",
            "cmp r8, 1", "je 31f",
            "cmp r8, 2", "je 32f",
            "cmp r8, 3", "je 33f",
            "cmp r8, 4", "je 34f",
            "cmp r8, 5", "je 35f",
            "cmp r8, 6", "je 36f",
            "cmp r8, 7", "je 37f",
            "cmp r8, 8", "je 38f",
            "cmp r8, 9", "je 39f",
            "cmp r8, 10", "je 40f",
            "cmp r8, 11", "je 41f",
            "cmp r8, 12", "je 42f",
            "cmp r8, 13", "je 43f",
            "cmp r8, 14", "je 44f",
            "cmp r8, 15", "je 46f",
            "jmp 28f",
            "30: xsave64 [rdi]", "jmp 28f",
            "31: xsaveopt64 [rdi]", "jmp 28f",
            "32: xsavec64 [rdi]", "jmp 28f",
            "33: xsaves64 [rdi]", "jmp 28f",
            "34: xrstor64 [rdi]", "jmp 28f",
            "35: xrstors64 [rdi]", "jmp 28f",
            "36: fxsave64 [rdi]", "jmp 28f",
            "37: fxrstor64 [rdi]", "jmp 28f",
            "38: xor ecx, ecx", "xsetbv", "jmp 28f",
            "39: mov ecx, eax", "xgetbv", "mov [rdi], eax", "mov [rdi + 4], edx", "jmp 28f",
            // TILERELEASE: VEX.128.NP.0F38.W0 49 C0.
            "40: .byte 0xc4, 0xe2, 0x78, 0x49, 0xc0", "jmp 28f",
            "41: mov ecx, 0xda0", "wrmsr", "jmp 28f",
            "42: mov [rdi], al", "jmp 28f",
            "43: mov rcx, [r12 + 8]", "xor eax, eax", "rep stosb", "jmp 28f",
            "44: mov rcx, cr0", "and rcx, -9", "test eax, eax", "jz 45f", "or rcx, 8",
            "45: mov cr0, rcx", "jmp 28f",
            "46: mov rcx, cr4", "and rcx, -262145", "test eax, eax", "jz 47f", "or rcx, 0x40000",
            "47: mov cr4, rcx", "jmp 28f",
            "28:",
            "mov qword ptr [rip + RECOVER_RIP], 0",
            "mov rax, [rip + FAULT_VEC]",
            "mov [r12 + 24], rax",
            "mov rax, [rip + FAULT_ERR]",
            "mov [r12 + 32], rax",
            "add r12, 40",
            "dec r13",
            "jmp 20b",
            "29:",
            "mov cr0, r14",
            "mov cr4, r15",
            "fninit",
            "ldmxcsr [rip + {mxcsr}]",
            mxcsr = sym MXCSR_INIT,
            inout("r12") steps.as_mut_ptr() => _,
            inout("r13") steps.len() => _,
            out("r14") _,
            out("r15") _,
            // XRSTOR/XRSTORS load every vector, mask and x87 register: all caller-saved.
            clobber_abi("C"),
        );
    }
}
