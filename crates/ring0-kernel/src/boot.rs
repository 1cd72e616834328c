//! The boot sector and the switch to long mode (SDM Vol. 3 §10.8 "Initializing IA-32e mode").
//!
//! The BIOS loads sector 0 to 0x7C00 and jumps there in real mode with DL = boot drive. The boot
//! sector then:
//! 1. enables the A20 gate (port 0x92, "fast A20");
//! 2. loads the kernel — LBA 1 on, `__image_sectors` sectors — with INT 13h AH=42h (extended
//!    read, 64 sectors at a time into a buffer at 0x10000) and copies each chunk above 1 MiB in
//!    "unreal mode" (DS/ES with a 4 GiB limit left in the descriptor caches by a short trip
//!    through protected mode: real-mode segment loads change only the base, SDM Vol. 3 §22.1.1);
//! 3. builds identity page tables for the first GiB (2 MiB pages: PML4 0x1000, PDPT 0x2000,
//!    PD 0x3000);
//! 4. sets CR4.PAE, CR3, EFER.LME, then CR0.PE and CR0.PG together, and far-jumps to a 64-bit
//!    code segment (§10.8.5: paging enabled with PAE and LME → IA-32e mode);
//! 5. in 64-bit mode: zeroes .bss, sets the stack, and calls `kernel_main`.

core::arch::global_asm!(
    r#"
.section .boot, "awx"
.code16
.global _boot
_boot:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    mov byte ptr [boot_drive], dl
    sti

    in al, 0x92
    or al, 2
    and al, 0xfe
    out 0x92, al

    mov word ptr [remaining], offset __image_sectors
load_loop:
    mov cx, word ptr [remaining]
    test cx, cx
    jz load_done
    cmp cx, 64
    jbe 1f
    mov cx, 64
1:
    mov word ptr [dap_count], cx
    mov si, offset dap
    mov ah, 0x42
    mov dl, byte ptr [boot_drive]
    int 0x13
    jc disk_error

    call unreal
    movzx ecx, word ptr [dap_count]
    shl ecx, 7
    mov esi, 0x10000
    mov edi, dword ptr [dest]
    .byte 0x67, 0xf3, 0x66, 0xa5
    mov dword ptr [dest], edi

    movzx eax, word ptr [dap_count]
    add dword ptr [dap_lba], eax
    sub word ptr [remaining], ax
    jmp load_loop

disk_error:
    mov al, 'D'
    out 0xe9, al
    hlt
    jmp disk_error

unreal:
    cli
    push ds
    push es
    lgdt [gdt_ptr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp 2f
2:
    mov bx, 0x10
    mov ds, bx
    mov es, bx
    and al, 0xfe
    mov cr0, eax
    pop es
    pop ds
    sti
    ret

load_done:
    cli
    mov edi, 0x1000
    xor eax, eax
    mov ecx, 0x3000 / 4
    .byte 0x67, 0xf3, 0x66, 0xab
    mov dword ptr [0x1000], 0x2003
    mov dword ptr [0x2000], 0x3003
    mov edi, 0x3000
    mov eax, 0x83
3:
    mov dword ptr [di], eax
    add eax, 0x200000
    add di, 8
    cmp di, 0x4000
    jb 3b

    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, 0x1000
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    lgdt [gdt_ptr]
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    .byte 0x66, 0xea
    .long long_entry
    .word 0x08

.align 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
gdt_ptr:
    .word 23
    .long gdt
.align 4
dap:
    .byte 16, 0
dap_count:
    .word 0
    .word 0, 0x1000
dap_lba:
    .quad 1
dest:
    .long 0x100000
remaining:
    .word 0
boot_drive:
    .byte 0

.code64
long_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rdi, offset __bss_start
    mov rcx, offset __bss_end
    sub rcx, rdi
    rep stosb
    mov rsp, offset boot_stack_top
    mov rax, offset kernel_main
    call rax
4:
    hlt
    jmp 4b

.section .bss.boot_stack, "aw", @nobits
.align 16
    .skip 1024 * 1024
boot_stack_top:
.text
"#
);
