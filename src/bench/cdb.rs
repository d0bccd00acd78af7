// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The READ and WRITE commands the load generator sends. By default it
//! picks them as Linux's sd driver does (sd_setup_read_write_cmnd): the
//! 10-byte forms when the LBA fits 32 bits and the transfer length 16, the
//! 16-byte forms otherwise, and the 16-byte forms for every command to a
//! LUN of more than 2^32 blocks (sd's `use_16_for_rw`).

/// Which READ/WRITE CDBs to send (`--cdb`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CdbSize {
    /// As a Linux guest: (10) where the command fits, else (16).
    #[default]
    Auto,
    /// READ(10)/WRITE(10) only; the run is refused if the LUN (or span)
    /// or the I/O size does not fit them.
    Ten,
    /// READ(16)/WRITE(16) only.
    Sixteen,
}

impl CdbSize {
    pub fn parse(s: &str) -> Option<CdbSize> {
        Some(match s {
            "auto" => CdbSize::Auto,
            "10" => CdbSize::Ten,
            "16" => CdbSize::Sixteen,
            _ => return None,
        })
    }

    /// The choice for one run on a LUN of `capacity` blocks whose commands
    /// start below `last_lba` and move `blocks` each: `Auto` becomes
    /// `Sixteen` where Linux would use only (16); `Ten` is refused where a
    /// command would not fit.
    pub fn for_lun(self, capacity: u64, last_lba: u64, blocks: u64) -> Result<CdbSize, String> {
        match self {
            CdbSize::Auto if capacity > u64::from(u32::MAX) => Ok(CdbSize::Sixteen),
            CdbSize::Ten if last_lba > u64::from(u32::MAX) || blocks > u64::from(u16::MAX) => {
                Err(format!(
                    "--cdb 10 cannot address LBA {last_lba} or move {blocks} blocks \
                     (at most LBA 2^32-1 and 65535 blocks): use --span or a smaller --bs"
                ))
            }
            other => Ok(other),
        }
    }
}

/// A READ or WRITE CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RwCdb {
    bytes: [u8; 16],
    len: usize,
}

/// Operation codes (SBC-3: READ(10), WRITE(10), READ(16), WRITE(16)).
const READ_10: u8 = 0x28;
const WRITE_10: u8 = 0x2a;
const READ_16: u8 = 0x88;
const WRITE_16: u8 = 0x8a;

impl RwCdb {
    /// READ(10)/WRITE(10): opcode, flags, LBA (4 bytes, big-endian), group,
    /// transfer length (2 bytes), control. None if `lba` or `blocks` does
    /// not fit.
    pub fn ten(write: bool, lba: u64, blocks: u32) -> Option<RwCdb> {
        let lba = u32::try_from(lba).ok()?;
        let blocks = u16::try_from(blocks).ok()?;
        let mut bytes = [0u8; 16];
        bytes[0] = if write { WRITE_10 } else { READ_10 };
        bytes[2..6].copy_from_slice(&lba.to_be_bytes());
        bytes[7..9].copy_from_slice(&blocks.to_be_bytes());
        Some(RwCdb { bytes, len: 10 })
    }

    /// READ(16)/WRITE(16): opcode, flags, LBA (8 bytes, big-endian),
    /// transfer length (4 bytes), group, control.
    pub fn sixteen(write: bool, lba: u64, blocks: u32) -> RwCdb {
        let mut bytes = [0u8; 16];
        bytes[0] = if write { WRITE_16 } else { READ_16 };
        bytes[2..10].copy_from_slice(&lba.to_be_bytes());
        bytes[10..14].copy_from_slice(&blocks.to_be_bytes());
        RwCdb { bytes, len: 16 }
    }

    /// The command `size` asks for; None if it is `Ten` and the command
    /// does not fit (`CdbSize::for_lun` refuses such runs beforehand).
    pub fn new(size: CdbSize, write: bool, lba: u64, blocks: u32) -> Option<RwCdb> {
        match size {
            CdbSize::Auto => Some(
                RwCdb::ten(write, lba, blocks)
                    .unwrap_or_else(|| RwCdb::sixteen(write, lba, blocks)),
            ),
            CdbSize::Ten => RwCdb::ten(write, lba, blocks),
            CdbSize::Sixteen => Some(RwCdb::sixteen(write, lba, blocks)),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_at_lba_0_of_8_blocks_is_a_read10() {
        let c = RwCdb::new(CdbSize::Auto, false, 0, 8).unwrap();
        #[rustfmt::skip]
        assert_eq!(c.as_slice(), &[
            0x28, // READ(10)
            0,    // flags
            0, 0, 0, 0, // LBA
            0,    // group
            0, 8, // transfer length
            0,    // control
        ]);
    }

    #[test]
    fn a_write_at_the_last_32_bit_lba_is_a_write10() {
        let c = RwCdb::new(CdbSize::Auto, true, 0xffff_ffff, 0xffff).unwrap();
        assert_eq!(
            c.as_slice(),
            &[0x2a, 0, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]
        );
    }

    #[test]
    fn a_read_at_lba_2_pow_32_falls_back_to_read16() {
        let c = RwCdb::new(CdbSize::Auto, false, 1 << 32, 8).unwrap();
        #[rustfmt::skip]
        assert_eq!(c.as_slice(), &[
            0x88, // READ(16)
            0,    // flags
            0, 0, 0, 1, 0, 0, 0, 0, // LBA 2^32
            0, 0, 0, 8, // transfer length
            0,    // group
            0,    // control
        ]);
    }

    #[test]
    fn a_write_of_65536_blocks_falls_back_to_write16() {
        let c = RwCdb::new(CdbSize::Auto, true, 16, 0x1_0000).unwrap();
        assert_eq!(
            c.as_slice(),
            &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn sixteen_is_used_even_where_ten_fits() {
        let c = RwCdb::new(CdbSize::Sixteen, false, 0, 8).unwrap();
        assert_eq!(c.as_slice()[0], 0x88);
        assert_eq!(c.as_slice().len(), 16);
    }

    #[test]
    fn ten_does_not_build_what_does_not_fit() {
        assert_eq!(RwCdb::new(CdbSize::Ten, false, 1 << 32, 8), None);
        assert_eq!(RwCdb::new(CdbSize::Ten, false, 0, 0x1_0000), None);
    }

    #[test]
    fn auto_is_sixteen_on_a_lun_of_more_than_2_pow_32_blocks() {
        assert_eq!(
            CdbSize::Auto.for_lun(0xffff_ffff, 100, 8),
            Ok(CdbSize::Auto)
        );
        assert_eq!(CdbSize::Auto.for_lun(1 << 32, 100, 8), Ok(CdbSize::Sixteen));
    }

    #[test]
    fn ten_is_refused_past_its_lba_and_length_limits() {
        assert_eq!(
            CdbSize::Ten.for_lun(1 << 33, 0xffff_ffff, 0xffff),
            Ok(CdbSize::Ten)
        );
        assert!(CdbSize::Ten.for_lun(1 << 33, 1 << 32, 8).is_err());
        assert!(CdbSize::Ten.for_lun(1 << 20, 0, 0x1_0000).is_err());
    }

    #[test]
    fn cdb_option_values_parse() {
        assert_eq!(CdbSize::parse("auto"), Some(CdbSize::Auto));
        assert_eq!(CdbSize::parse("10"), Some(CdbSize::Ten));
        assert_eq!(CdbSize::parse("16"), Some(CdbSize::Sixteen));
        assert_eq!(CdbSize::parse("12"), None);
    }
}
