//! CRC-32 as used by the `.xsnap` trailer: the IEEE 802.3 polynomial (0x04C11DB7, reflected
//! form 0xEDB88320), initial value 0xFFFFFFFF, input and output reflected, final XOR
//! 0xFFFFFFFF ("CRC-32/ISO-HDLC"; check value of the ASCII bytes `123456789` is 0xCBF43926).
//!
//! A table-free bitwise implementation: snapshots are a few KiB, so speed does not matter and
//! the code stays obviously correct.
//!
//! ```
//! assert_eq!(xstate::snapshot::crc32::crc32(b"123456789"), 0xCBF4_3926);
//! ```

/// Reflected CRC-32 polynomial.
const POLY: u32 = 0xEDB8_8320;

/// The CRC-32/ISO-HDLC of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb != 0 {
                crc ^= POLY;
            }
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::crc32;

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
}
