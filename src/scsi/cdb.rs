// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A CDB copied into a fixed, zero-padded buffer so that field accessors can
//! never read out of bounds, whatever the transport handed us.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

/// Longest CDB we accept (virtio-scsi's default cdb_size, the largest
/// variable-length CDB the device advertises).
pub const MAX_CDB_LEN: usize = 32;

#[derive(Clone, Copy, Debug)]
pub struct Cdb {
    bytes: [u8; MAX_CDB_LEN],
}

impl Cdb {
    /// Copy `cdb` (truncating past 32 bytes, zero-padding short ones).
    pub fn new(cdb: &[u8]) -> Cdb {
        let mut bytes = [0u8; MAX_CDB_LEN];
        for (b, c) in bytes.iter_mut().zip(cdb) {
            *b = *c;
        }
        Cdb { bytes }
    }

    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// Service action of MAINTENANCE IN / SERVICE ACTION IN style commands
    /// (byte 1, bits 4-0).
    pub fn service_action(&self) -> u16 {
        u16::from(self.bytes[1] & 0x1f)
    }

    pub fn byte(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    /// Bit `bit` of byte `i`.
    pub fn bit(&self, i: usize, bit: u8) -> bool {
        self.byte(i) & (1 << bit) != 0
    }

    fn be(&self, i: usize, n: usize) -> u64 {
        (i..i + n).fold(0u64, |acc, j| (acc << 8) | u64::from(self.byte(j)))
    }

    pub fn be16(&self, i: usize) -> u16 {
        self.be(i, 2) as u16
    }

    pub fn be24(&self, i: usize) -> u32 {
        self.be(i, 3) as u32
    }

    pub fn be32(&self, i: usize) -> u32 {
        self.be(i, 4) as u32
    }

    pub fn be64(&self, i: usize) -> u64 {
        self.be(i, 8)
    }
}

/// Big-endian u16 from a parameter list slice, zero past its end.
pub fn be16_at(buf: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([get(buf, i), get(buf, i + 1)])
}

/// Big-endian u32 from a parameter list slice, zero past its end.
pub fn be32_at(buf: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([
        get(buf, i),
        get(buf, i + 1),
        get(buf, i + 2),
        get(buf, i + 3),
    ])
}

/// Big-endian u64 from a parameter list slice, zero past its end.
pub fn be64_at(buf: &[u8], i: usize) -> u64 {
    (u64::from(be32_at(buf, i)) << 32) | u64::from(be32_at(buf, i + 4))
}

/// Byte `i` of a parameter list slice, zero past its end.
pub fn byte_at(buf: &[u8], i: usize) -> u8 {
    buf.get(i).copied().unwrap_or(0)
}

fn get(buf: &[u8], i: usize) -> u8 {
    byte_at(buf, i)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn short_cdb_reads_zero_past_its_end() {
        let c = Cdb::new(&[0x28, 0x00, 0x12]);
        assert_eq!(c.be32(2), 0x1200_0000);
        assert_eq!(c.be64(30), 0);
    }

    #[test]
    fn long_cdb_is_truncated_to_32_bytes() {
        let c = Cdb::new(&[0xff; 40]);
        assert_eq!(c.byte(31), 0xff);
        assert_eq!(c.byte(32), 0);
    }
}
