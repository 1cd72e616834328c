//! Hand-assembled guest programs (64-bit mode, CPL 3). Each byte is commented with the
//! instruction it encodes (Intel SDM Vol. 2 opcode tables).

/// `mov eax, imm32; mov edx, imm32; mov edi, imm32`: RFBM in EDX:EAX and the 64-byte aligned
/// XSAVE area address in RDI (a 32-bit move zero-extends into RDI).
fn load_operands(out: &mut Vec<u8>, rfbm: u64, area: u32) {
    out.push(0xB8); // mov eax, imm32 (B8+rd id)
    out.extend_from_slice(&(rfbm as u32).to_le_bytes());
    out.push(0xBA); // mov edx, imm32 (B8+2)
    out.extend_from_slice(&((rfbm >> 32) as u32).to_le_bytes());
    out.push(0xBF); // mov edi, imm32 (B8+7)
    out.extend_from_slice(&area.to_le_bytes());
}

/// `out imm8, al; jmp $`: leave through an I/O exit (RFLAGS.IOPL = 3 allows it at CPL 3);
/// the loop is never reached because the host does not resume the vCPU.
fn leave(out: &mut Vec<u8>, port: u8) {
    out.extend_from_slice(&[0xE6, port]); // out imm8, al (E6 ib)
    out.extend_from_slice(&[0xEB, 0xFE]); // jmp rel8 -2 (EB cb): jump to itself
}

/// XRSTOR64 of the image at `area` with RFBM `rfbm`, then OUT to `port`.
///
/// ```
/// let code = xstate_kvm::guest::code::xrstor_then_out(0xe7, 0x20000, 0x10);
/// assert_eq!(&code[15..19], &[0x48, 0x0F, 0xAE, 0x2F]);
/// ```
pub fn xrstor_then_out(rfbm: u64, area: u32, port: u8) -> Vec<u8> {
    let mut c = Vec::new();
    load_operands(&mut c, rfbm, area);
    // xrstor64 [rdi]: REX.W (48) 0F AE /5, ModRM 00 101 111 = 0x2F (mod 00, reg /5, rm RDI)
    c.extend_from_slice(&[0x48, 0x0F, 0xAE, 0x2F]);
    leave(&mut c, port);
    c
}

/// XSAVE64 of the state components in `rfbm` to `area`, then OUT to `port`.
///
/// ```
/// let code = xstate_kvm::guest::code::xsave_then_out(0xe7, 0x30000, 0x10);
/// assert_eq!(&code[15..19], &[0x48, 0x0F, 0xAE, 0x27]);
/// ```
pub fn xsave_then_out(rfbm: u64, area: u32, port: u8) -> Vec<u8> {
    let mut c = Vec::new();
    load_operands(&mut c, rfbm, area);
    // xsave64 [rdi]: REX.W (48) 0F AE /4, ModRM 00 100 111 = 0x27 (mod 00, reg /4, rm RDI)
    c.extend_from_slice(&[0x48, 0x0F, 0xAE, 0x27]);
    leave(&mut c, port);
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodings() {
        let c = super::xrstor_then_out(0x1_0000_00e7, 0x0002_0040, 0x10);
        assert_eq!(
            c,
            vec![
                0xB8, 0xE7, 0, 0, 0, // mov eax, 0xe7
                0xBA, 1, 0, 0, 0, // mov edx, 1
                0xBF, 0x40, 0, 2, 0, // mov edi, 0x20040
                0x48, 0x0F, 0xAE, 0x2F, // xrstor64 [rdi]
                0xE6, 0x10, // out 0x10, al
                0xEB, 0xFE, // jmp $
            ]
        );
        let s = super::xsave_then_out(0xe7, 0x30000, 0x11);
        assert_eq!(&s[15..], &[0x48, 0x0F, 0xAE, 0x27, 0xE6, 0x11, 0xEB, 0xFE]);
    }
}
