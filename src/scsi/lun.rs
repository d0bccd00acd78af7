// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! LUN addressing (SAM-5 4.6): the single-level formats this target
//! answers to, and the well-known LUN of REPORT LUNS.

/// Highest LUN we can address with the flat/peripheral 14-bit formats.
pub const MAX_LUN: u16 = 0x3fff;

/// The REPORT LUNS well-known logical unit (SPC-4 8.2).
pub const REPORT_LUNS_WLUN: [u8; 8] = [0xc1, 0x01, 0, 0, 0, 0, 0, 0];

/// A decoded single-level LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LunAddress {
    Lun(u16),
    ReportLunsWellKnown,
    /// A LUN format we do not implement (multi-level, extended, ...).
    Unsupported,
}

impl LunAddress {
    /// Decode the first level of a SAM-5 LUN (4.6.6): peripheral device
    /// addressing (00b, bus 0) or flat space addressing (01b).
    pub fn from_first_level(b0: u8, b1: u8) -> LunAddress {
        match b0 >> 6 {
            0b00 if b0 == 0 => LunAddress::Lun(u16::from(b1)),
            0b01 => LunAddress::Lun((u16::from(b0 & 0x3f) << 8) | u16::from(b1)),
            _ => LunAddress::Unsupported,
        }
    }
}

/// Encode a LUN for REPORT LUNS: peripheral addressing below 256, flat above
/// (what Linux and QEMU expect).
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        l[1] = lun as u8;
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peripheral_and_flat_lun_formats_decode() {
        assert_eq!(LunAddress::from_first_level(0x00, 0x05), LunAddress::Lun(5));
        assert_eq!(
            LunAddress::from_first_level(0x41, 0x02),
            LunAddress::Lun(0x102)
        );
        assert_eq!(
            LunAddress::from_first_level(0x81, 0x00),
            LunAddress::Unsupported
        );
    }

    #[test]
    fn encode_uses_flat_addressing_from_256() {
        assert_eq!(encode_lun(3), [0, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    }
}
