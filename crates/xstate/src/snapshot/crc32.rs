//! CRC-32 as used by the `.xsnap` trailer: the IEEE 802.3 polynomial (0x04C11DB7, reflected
//! form 0xEDB88320), initial value 0xFFFFFFFF, input and output reflected, final XOR
//! 0xFFFFFFFF ("CRC-32/ISO-HDLC"; check value of the ASCII bytes `123456789` is 0xCBF43926).
//!
//! Computed by the `crc32fast` crate (PCLMULQDQ where the CPU has it, a table otherwise), which
//! implements exactly this CRC; the trailer of every `.xsnap` written so far is unchanged.
//!
//! ```
//! assert_eq!(xstate::snapshot::crc32::crc32(b"123456789"), 0xCBF4_3926);
//! ```

/// The CRC-32/ISO-HDLC of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::crc32;

    /// The definition, bit by bit (reflected polynomial 0xEDB88320): what the crate must match.
    fn bitwise(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn check_values() {
        // The catalogued check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        // "The quick brown fox jumps over the lazy dog" is a widely published vector.
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
        // A single flipped bit changes the value.
        assert_ne!(crc32(b"123456788"), 0xCBF4_3926);
    }

    #[test]
    fn matches_the_definition_on_every_length_and_alignment() {
        let data: alloc::vec::Vec<u8> = (0..3000u32).map(|i| (i * 131 + 7) as u8).collect();
        for start in 0..17 {
            for len in [0, 1, 3, 15, 16, 63, 64, 65, 255, 1000, 2900] {
                let s = &data[start..start + len];
                assert_eq!(crc32(s), bitwise(s), "start {start} len {len}");
            }
        }
    }
}
