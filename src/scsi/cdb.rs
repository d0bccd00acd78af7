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

/// Where a block command keeps its LOGICAL BLOCK ADDRESS and its length
/// field. The opcode table names one per command that addresses blocks
/// (`OpInfo::layout`), and handlers read the fields through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// READ(6)/WRITE(6) (SBC-4 5.17/5.46): a 21-bit LBA in bytes 1-3 and
    /// TRANSFER LENGTH in byte 4, where 0 means 256 blocks; no FUA bit.
    Six,
    /// 10-byte CDBs: LBA in bytes 2-5, the length in bytes 7-8.
    Ten,
    /// 12-byte CDBs: LBA in bytes 2-5, the length in bytes 6-9.
    Twelve,
    /// 16-byte CDBs: LBA in bytes 2-9, the length in bytes 10-13.
    Sixteen,
    /// COMPARE AND WRITE (SBC-4 5.3): LBA in bytes 2-9, NUMBER OF LOGICAL
    /// BLOCKS in byte 13.
    CompareAndWrite,
    /// WRITE ATOMIC(16) (SBC-4 5.48): LBA in bytes 2-9, the length in
    /// bytes 12-13 (bytes 10-11 are the ATOMIC BOUNDARY).
    Atomic16,
}

impl Layout {
    /// The LOGICAL BLOCK ADDRESS.
    pub fn lba(self, c: &Cdb) -> u64 {
        match self {
            Layout::Six => u64::from(c.be24(1) & 0x1f_ffff),
            Layout::Ten | Layout::Twelve => u64::from(c.be32(2)),
            Layout::Sixteen | Layout::CompareAndWrite | Layout::Atomic16 => c.be64(2),
        }
    }

    /// The number of blocks the length field gives.
    pub fn blocks(self, c: &Cdb) -> u64 {
        let at = usize::from(self.length_field());
        match self {
            Layout::Six => match c.byte(at) {
                0 => 256,
                n => u64::from(n),
            },
            Layout::Ten | Layout::Atomic16 => u64::from(c.be16(at)),
            Layout::Twelve | Layout::Sixteen => u64::from(c.be32(at)),
            Layout::CompareAndWrite => u64::from(c.byte(at)),
        }
    }

    /// Byte offset of the length field (for sense field pointers).
    pub fn length_field(self) -> u16 {
        match self {
            Layout::Six => 4,
            Layout::Ten => 7,
            Layout::Twelve => 6,
            Layout::Sixteen => 10,
            Layout::CompareAndWrite => 13,
            Layout::Atomic16 => 12,
        }
    }

    /// FUA (byte 1, bit 3), which every form but the 6-byte one has.
    pub fn fua(self, c: &Cdb) -> bool {
        self != Layout::Six && c.bit(1, 3)
    }

    /// The bytes the LBA and length fields occupy.
    #[cfg(test)]
    pub fn field_bytes(self) -> [std::ops::Range<usize>; 2] {
        let len = usize::from(self.length_field());
        match self {
            Layout::Six => [1..4, 4..5],
            Layout::Ten => [2..6, len..len + 2],
            Layout::Twelve => [2..6, len..len + 4],
            Layout::Sixteen => [2..10, len..len + 4],
            Layout::CompareAndWrite => [2..10, len..len + 1],
            Layout::Atomic16 => [2..10, len..len + 2],
        }
    }
}

/// The length of the CDB in `cdb` (which may be longer, zero-padded) from
/// its operation code's group code (SPC-4 4.2.5.1, table 4): 6, 10, 12 or
/// 16 bytes, or for a variable-length CDB (7Fh) 8 plus its ADDITIONAL CDB
/// LENGTH (byte 7); never more than `cdb.len()`. The reserved and vendor
/// groups are taken as 16 bytes.
pub fn length(cdb: &[u8]) -> usize {
    let op = cdb.first().copied().unwrap_or(0);
    let n = match op >> 5 {
        0 => 6,
        1 | 2 => 10,
        5 => 12,
        3 if op == 0x7f => 8 + usize::from(cdb.get(7).copied().unwrap_or(0)),
        _ => 16,
    };
    n.min(cdb.len())
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
    fn each_layout_reads_its_lba_and_length() {
        let mut c = [0u8; 16];
        c[1..4].copy_from_slice(&[0xff, 0x12, 0x34]);
        assert_eq!(Layout::Six.lba(&Cdb::new(&c)), 0x1f_1234);
        assert_eq!(Layout::Six.blocks(&Cdb::new(&c)), 256);
        let ten = Cdb::new(&[0x28, 0x08, 0, 0, 1, 0, 0, 0x01, 0x02, 0]);
        assert_eq!(
            (Layout::Ten.lba(&ten), Layout::Ten.blocks(&ten)),
            (256, 258)
        );
        assert!(Layout::Ten.fua(&ten));
        let twelve = Cdb::new(&[0xa8, 0, 0, 0, 0, 9, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            (Layout::Twelve.lba(&twelve), Layout::Twelve.blocks(&twelve)),
            (9, 1 << 16)
        );
        let mut s = [0u8; 16];
        s[2..10].copy_from_slice(&(1u64 << 40).to_be_bytes());
        s[10..14].copy_from_slice(&7u32.to_be_bytes());
        s[12..14].copy_from_slice(&5u16.to_be_bytes());
        s[13] = 3;
        let s = Cdb::new(&s);
        assert_eq!(Layout::Sixteen.lba(&s), 1 << 40);
        assert_eq!(Layout::Atomic16.blocks(&s), 3);
        assert_eq!(Layout::CompareAndWrite.blocks(&s), 3);
        assert!(!Layout::Six.fua(&Cdb::new(&[0x08, 0x08])));
    }

    #[test]
    fn a_cdb_is_as_long_as_its_group_code_says() {
        let mut c = [0u8; 32];
        for (op, len) in [
            (0x08, 6),
            (0x28, 10),
            (0x5e, 10),
            (0xa8, 12),
            (0x88, 16),
            (0xc0, 16),
        ] {
            c[0] = op;
            assert_eq!(length(&c), len, "{op:#04x}");
        }
        c[0] = 0x7f;
        c[7] = 0x18;
        assert_eq!(length(&c), 32);
        c[7] = 0xf8;
        assert_eq!(length(&c), 32, "never past the buffer");
        assert_eq!(length(&[0x28, 0]), 2);
        assert_eq!(length(&[]), 0);
    }

    #[test]
    fn long_cdb_is_truncated_to_32_bytes() {
        let c = Cdb::new(&[0xff; 40]);
        assert_eq!(c.byte(31), 0xff);
        assert_eq!(c.byte(32), 0);
    }
}
