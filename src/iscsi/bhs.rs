// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Basic Header Segment of each PDU we send or receive, as a struct
//! with the RFC's field names (RFC 7143 11.3 to 11.19): big-endian fields
//! (`Be16`, `Be32`), 48 bytes, read from and written to `Pdu::bhs` whole.
//! Flag bits of byte 1 are named constants of the PDU that has them.
//!
//! Bytes 4-7 (TotalAHSLength, DataSegmentLength) are `Pdu::encode`'s: it
//! fills them from the AHS and data segment it sends.

#![deny(clippy::indexing_slicing)]

use vm_memory::{Be16, Be32, ByteValued};

use super::pdu::{Opcode, BHS_LEN};

/// The I bit of byte 0 of an initiator PDU: immediate delivery (RFC 7143
/// 11.2.1.1).
pub const IMMEDIATE: u8 = 0x40;
/// The F bit of byte 1 (Final) of every PDU that has one.
pub const FINAL: u8 = 0x80;

/// A BHS layout: 48 bytes, no padding, one opcode.
pub trait Bhs: ByteValued + Default {
    const OPCODE: Opcode;

    /// A header with its opcode set and every other field zero.
    fn new() -> Self {
        let mut h = Self::default();
        if let Some(b) = h.as_mut_slice().first_mut() {
            *b = Self::OPCODE as u8;
        }
        h
    }

    /// The header in `bhs` (its first `BHS_LEN` bytes; zeros where it is
    /// shorter).
    fn read(bhs: &[u8]) -> Self {
        let mut h = Self::default();
        let dst = h.as_mut_slice();
        match bhs.get(..dst.len()) {
            Some(src) => dst.copy_from_slice(src),
            None => {
                for (d, s) in dst.iter_mut().zip(bhs) {
                    *d = *s;
                }
            }
        }
        h
    }
}

/// Declare a BHS struct: `repr(C, packed)` (its fields are at the RFC's
/// byte offsets with no padding), `ByteValued`, checked to be 48 bytes.
macro_rules! bhs {
    (
        $(#[$meta:meta])*
        pub struct $name:ident ($opcode:ident) {
            $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[repr(C, packed)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        // SAFETY: `repr(C, packed)` of byte arrays, bytes and vm-memory's
        // `Be16`/`Be32` (plain integers, themselves `ByteValued`): no
        // padding, and every bit pattern is a valid value.
        unsafe impl ByteValued for $name {}

        impl Bhs for $name {
            const OPCODE: Opcode = Opcode::$opcode;
        }

        const _: () = assert!(std::mem::size_of::<$name>() == BHS_LEN);
    };
}

bhs! {
    /// SCSI Command (RFC 7143 11.3).
    pub struct ScsiCommand (ScsiCommand) {
        pub opcode: u8,
        /// F, R, W, ATTR.
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub expected_data_transfer_length: Be32,
        pub cmd_sn: Be32,
        pub exp_stat_sn: Be32,
        /// The first 16 bytes of the CDB (the rest goes in an AHS).
        pub cdb: [u8; 16],
    }
}

impl ScsiCommand {
    /// R: data-in is expected (11.3.1.2).
    pub const READ: u8 = 0x40;
    /// W: data-out is expected (11.3.1.3).
    pub const WRITE: u8 = 0x20;
    /// ATTR: the SIMPLE task attribute (11.3.1.4).
    pub const ATTR_SIMPLE: u8 = 0x01;
}

bhs! {
    /// SCSI Response (RFC 7143 11.4).
    pub struct ScsiResponse (ScsiResponse) {
        pub opcode: u8,
        /// o, u, O, U.
        pub flags: u8,
        pub response: u8,
        pub status: u8,
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub reserved: [u8; 8],
        pub itt: Be32,
        pub snack_tag: Be32,
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        pub exp_data_sn: Be32,
        pub bidi_residual_count: Be32,
        pub residual_count: Be32,
    }
}

/// Residual overflow and underflow (O and U) of a SCSI Response and a
/// Data-In with status (RFC 7143 11.4.5.1, 11.7.5).
pub const RESIDUAL_OVERFLOW: u8 = 0x04;
pub const RESIDUAL_UNDERFLOW: u8 = 0x02;

bhs! {
    /// Task Management Function Request (RFC 7143 11.5).
    pub struct TaskMgmtRequest (TaskMgmtRequest) {
        pub opcode: u8,
        /// F and the function (11.5.1).
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub referenced_task_tag: Be32,
        pub cmd_sn: Be32,
        pub exp_stat_sn: Be32,
        pub ref_cmd_sn: Be32,
        pub exp_data_sn: Be32,
        pub reserved2: [u8; 8],
    }
}

bhs! {
    /// Task Management Function Response (RFC 7143 11.6).
    pub struct TaskMgmtResponse (TaskMgmtResponse) {
        pub opcode: u8,
        pub flags: u8,
        /// 11.6.1.
        pub response: u8,
        pub reserved: u8,
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub reserved2: [u8; 8],
        pub itt: Be32,
        pub reserved3: [u8; 4],
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        pub reserved4: [u8; 12],
    }
}

bhs! {
    /// SCSI Data-Out (RFC 7143 11.7).
    pub struct DataOut (DataOut) {
        pub opcode: u8,
        /// F.
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub ttt: Be32,
        pub reserved2: [u8; 4],
        pub exp_stat_sn: Be32,
        pub reserved3: [u8; 4],
        pub data_sn: Be32,
        pub buffer_offset: Be32,
        pub reserved4: [u8; 4],
    }
}

bhs! {
    /// SCSI Data-In (RFC 7143 11.7).
    pub struct DataIn (DataIn) {
        pub opcode: u8,
        /// F, A, O, U, S.
        pub flags: u8,
        pub reserved: u8,
        /// Valid with S.
        pub status: u8,
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub ttt: Be32,
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        pub data_sn: Be32,
        pub buffer_offset: Be32,
        pub residual_count: Be32,
    }
}

impl DataIn {
    /// S: the PDU carries the command's status (11.7.4).
    pub const STATUS: u8 = 0x01;
}

bhs! {
    /// Ready To Transfer (RFC 7143 11.8).
    pub struct R2t (ReadyToTransfer) {
        pub opcode: u8,
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub ttt: Be32,
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        pub r2t_sn: Be32,
        pub buffer_offset: Be32,
        pub desired_data_transfer_length: Be32,
    }
}

bhs! {
    /// Asynchronous Message (RFC 7143 11.9).
    pub struct AsyncMessage (AsyncMessage) {
        pub opcode: u8,
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub reserved2: [u8; 4],
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        /// 11.9.1.
        pub async_event: u8,
        pub async_vcode: u8,
        pub parameter1: Be16,
        pub parameter2: Be16,
        pub parameter3: Be16,
        pub reserved3: [u8; 4],
    }
}

bhs! {
    /// Text Request (RFC 7143 11.10).
    pub struct TextRequest (TextRequest) {
        pub opcode: u8,
        /// F, C.
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub ttt: Be32,
        pub cmd_sn: Be32,
        pub exp_stat_sn: Be32,
        pub reserved2: [u8; 16],
    }
}

bhs! {
    /// Text Response (RFC 7143 11.11).
    pub struct TextResponse (TextResponse) {
        pub opcode: u8,
        /// F, C.
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub ttt: Be32,
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        pub reserved2: [u8; 12],
    }
}

/// C of a Text or Login PDU: the text continues in the next PDU (RFC 7143
/// 11.10.2, 11.12.2).
pub const CONTINUE: u8 = 0x40;

bhs! {
    /// Login Request (RFC 7143 11.12).
    pub struct LoginRequest (LoginRequest) {
        pub opcode: u8,
        /// T, C, CSG, NSG.
        pub flags: u8,
        pub version_max: u8,
        pub version_min: u8,
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub isid: [u8; 6],
        pub tsih: Be16,
        pub itt: Be32,
        pub cid: Be16,
        pub reserved: [u8; 2],
        pub cmd_sn: Be32,
        pub exp_stat_sn: Be32,
        pub reserved2: [u8; 16],
    }
}

bhs! {
    /// Login Response (RFC 7143 11.13).
    pub struct LoginResponse (LoginResponse) {
        pub opcode: u8,
        /// T, C, CSG, NSG.
        pub flags: u8,
        pub version_max: u8,
        pub version_active: u8,
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub isid: [u8; 6],
        pub tsih: Be16,
        pub itt: Be32,
        pub reserved: [u8; 4],
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        /// 11.13.5.
        pub status_class: u8,
        pub status_detail: u8,
        pub reserved2: [u8; 10],
    }
}

/// Flags of byte 1 of Login PDUs (RFC 7143 11.12.1 to 11.12.3).
pub mod login {
    /// T: transit to the next stage.
    pub const TRANSIT: u8 = 0x80;
    /// CSG, the current stage, is bits 2-3.
    pub const CSG_SHIFT: u8 = 2;
    /// NSG, the next stage, is bits 0-1.
    pub const NSG_MASK: u8 = 0x03;
}

bhs! {
    /// Logout Request (RFC 7143 11.14).
    pub struct LogoutRequest (LogoutRequest) {
        pub opcode: u8,
        /// F and the reason code (11.14.1; 0: close the session).
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub reserved2: [u8; 8],
        pub itt: Be32,
        pub cid: Be16,
        pub reserved3: [u8; 2],
        pub cmd_sn: Be32,
        pub exp_stat_sn: Be32,
        pub reserved4: [u8; 16],
    }
}

bhs! {
    /// Logout Response (RFC 7143 11.15).
    pub struct LogoutResponse (LogoutResponse) {
        pub opcode: u8,
        pub flags: u8,
        pub response: u8,
        pub reserved: u8,
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub reserved2: [u8; 8],
        pub itt: Be32,
        pub reserved3: [u8; 4],
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        pub reserved4: [u8; 4],
        pub time2wait: Be16,
        pub time2retain: Be16,
        pub reserved5: [u8; 4],
    }
}

bhs! {
    /// Reject (RFC 7143 11.17).
    pub struct Reject (Reject) {
        pub opcode: u8,
        pub flags: u8,
        /// 11.17.1.
        pub reason: u8,
        pub reserved: u8,
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub reserved2: [u8; 8],
        pub itt: Be32,
        pub reserved3: [u8; 4],
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        pub data_sn: Be32,
        pub reserved4: [u8; 8],
    }
}

bhs! {
    /// NOP-Out (RFC 7143 11.18).
    pub struct NopOut (NopOut) {
        pub opcode: u8,
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub ttt: Be32,
        pub cmd_sn: Be32,
        pub exp_stat_sn: Be32,
        pub reserved2: [u8; 16],
    }
}

bhs! {
    /// NOP-In (RFC 7143 11.19).
    pub struct NopIn (NopIn) {
        pub opcode: u8,
        pub flags: u8,
        pub reserved: [u8; 2],
        pub ahs_len: u8,
        pub data_segment_length: [u8; 3],
        pub lun: [u8; 8],
        pub itt: Be32,
        pub ttt: Be32,
        pub stat_sn: Be32,
        pub exp_cmd_sn: Be32,
        pub max_cmd_sn: Be32,
        pub reserved2: [u8; 12],
    }
}

#[cfg(test)]
mod tests;
