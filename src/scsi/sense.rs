// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Sense data (SPC-4 4.5): the reason behind a CHECK CONDITION, in fixed or
//! descriptor format.

/// SCSI status codes (SAM-5 5.3.1, table 30).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

/// Sense keys (SPC-4 4.5.6, table 48).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    CopyAborted = 0xa,
    AbortedCommand = 0xb,
    Miscompare = 0xe,
}

/// Where in the CDB or parameter list an invalid field sits (SPC-4 4.5.2.4.2,
/// the FIELD POINTER sense-key specific information).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// True for a CDB field (C/D = 1), false for a parameter-list field.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit number of the field's most significant bit, when it is not a whole byte.
    pub bit: Option<u8>,
}

/// One sense condition: key, additional sense code and qualifier, and the
/// optional INFORMATION and sense-key specific fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (e.g. the failing LBA, or the miscompare offset).
    pub information: Option<u64>,
    /// Sense-key specific field pointer (ILLEGAL REQUEST only).
    pub field: Option<FieldPointer>,
}

/// Length of fixed-format sense data as built here (SPC-4 4.5.3: 18 bytes).
pub const FIXED_SENSE_LEN: usize = 18;

macro_rules! sense_consts {
    ($($(#[$m:meta])* $name:ident = ($key:ident, $asc:literal, $ascq:literal);)*) => {
        impl Sense {
            $($(#[$m])* pub const $name: Sense = Sense {
                key: SenseKey::$key, asc: $asc, ascq: $ascq, information: None, field: None,
            };)*
        }

        /// Every named condition (tests).
        #[cfg(test)]
        const ALL_CONDITIONS: &[(&str, Sense)] = &[$((stringify!($name), Sense::$name)),*];
    };
}

// Every condition the daemon reports, in one table: its name as in SPC-4
// Annex D (table D.1, ASC and ASCQ assignments), the sense key SPC-4 or
// SBC-4 gives it where it is used, and that place. Handlers name these;
// nothing else builds a sense key and code. Grouped by sense key (SPC-4
// 4.5.6, table 48).
sense_consts! {
    NO_ADDITIONAL_SENSE = (NoSense, 0x00, 0x00);

    // NOT READY.
    /// 04h/02h: an initializing command (START STOP UNIT) is required: the
    /// unit is stopped (SBC-4 4.19).
    NOT_READY_INITIALIZING_COMMAND_REQUIRED = (NotReady, 0x04, 0x02);
    /// 04h/0Bh: logical unit not accessible, target port in standby state
    /// (SPC-4 5.15.2.4.4).
    TARGET_PORT_IN_STANDBY_STATE = (NotReady, 0x04, 0x0b);
    /// 04h/0Ch: logical unit not accessible, target port in unavailable
    /// state (SPC-4 5.15.2.4.5).
    TARGET_PORT_IN_UNAVAILABLE_STATE = (NotReady, 0x04, 0x0c);
    /// 04h/1Bh: logical unit not ready, sanitize in progress (SBC-4 4.11).
    SANITIZE_IN_PROGRESS = (NotReady, 0x04, 0x1b);

    // MEDIUM ERROR.
    /// 11h/00h: unrecovered read error: a read of the backstore failed
    /// (SBC-4 4.15), INFORMATION the command's LBA.
    UNRECOVERED_READ_ERROR = (MediumError, 0x11, 0x00);
    /// 0Ch/00h: write error: a write or flush of the backstore failed
    /// (SBC-4 4.16).
    WRITE_ERROR = (MediumError, 0x0c, 0x00);
    /// 31h/03h: SANITIZE command failed: sanitize failure mode (SBC-4 4.11.3).
    SANITIZE_COMMAND_FAILED = (MediumError, 0x31, 0x03);

    // HARDWARE ERROR.
    /// 44h/00h: internal target failure.
    INTERNAL_TARGET_FAILURE = (HardwareError, 0x44, 0x00);

    // ILLEGAL REQUEST (SPC-4 4.2.5.1 for the CDB, 4.5.2.4.2 for field pointers).
    PARAMETER_LIST_LENGTH_ERROR = (IllegalRequest, 0x1a, 0x00);
    INVALID_COMMAND_OPERATION_CODE = (IllegalRequest, 0x20, 0x00);
    LBA_OUT_OF_RANGE = (IllegalRequest, 0x21, 0x00);
    INVALID_FIELD_IN_CDB = (IllegalRequest, 0x24, 0x00);
    LOGICAL_UNIT_NOT_SUPPORTED = (IllegalRequest, 0x25, 0x00);
    INVALID_FIELD_IN_PARAMETER_LIST = (IllegalRequest, 0x26, 0x00);
    /// 26h/04h: PERSISTENT RESERVE OUT RELEASE of another type or scope
    /// than the reservation's (SPC-4 5.13.11.2).
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = (IllegalRequest, 0x26, 0x04);
    /// 26h/06h-0Bh: EXTENDED COPY parameter lists this copy manager cannot
    /// take (SPC-4 6.4.3, 6.4.5, 6.4.6).
    TOO_MANY_TARGET_DESCRIPTORS = (IllegalRequest, 0x26, 0x06);
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE = (IllegalRequest, 0x26, 0x07);
    TOO_MANY_SEGMENT_DESCRIPTORS = (IllegalRequest, 0x26, 0x08);
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE = (IllegalRequest, 0x26, 0x09);
    UNEXPECTED_INEXACT_SEGMENT = (IllegalRequest, 0x26, 0x0a);
    INLINE_DATA_LENGTH_EXCEEDED = (IllegalRequest, 0x26, 0x0b);
    /// 00h/16h: an EXTENDED COPY with the list identifier of one still
    /// running (SPC-4 6.4.3).
    OPERATION_IN_PROGRESS = (IllegalRequest, 0x00, 0x16);
    SAVING_PARAMETERS_NOT_SUPPORTED = (IllegalRequest, 0x39, 0x00);
    MEDIUM_REMOVAL_PREVENTED = (IllegalRequest, 0x53, 0x02);
    /// 55h/04h: PERSISTENT RESERVE OUT beyond the registrations kept, or
    /// an APTPL state that cannot be written (SPC-4 5.13.7).
    INSUFFICIENT_REGISTRATION_RESOURCES = (IllegalRequest, 0x55, 0x04);

    // UNIT ATTENTION (SAM-5 5.14, SPC-4 5.14).
    POWER_ON_RESET_OCCURRED = (UnitAttention, 0x29, 0x00);
    BUS_DEVICE_RESET_FUNCTION_OCCURRED = (UnitAttention, 0x29, 0x03);
    I_T_NEXUS_LOSS_OCCURRED = (UnitAttention, 0x29, 0x07);
    MODE_PARAMETERS_CHANGED = (UnitAttention, 0x2a, 0x01);
    /// 2Ah/03h-05h: what a PREEMPT, a CLEAR or a RELEASE did to other
    /// nexuses' reservations and registrations (SPC-4 5.13.11, 5.13.12).
    RESERVATIONS_PREEMPTED = (UnitAttention, 0x2a, 0x03);
    RESERVATIONS_RELEASED = (UnitAttention, 0x2a, 0x04);
    REGISTRATIONS_PREEMPTED = (UnitAttention, 0x2a, 0x05);
    CAPACITY_DATA_HAS_CHANGED = (UnitAttention, 0x2a, 0x09);
    REPORTED_LUNS_DATA_HAS_CHANGED = (UnitAttention, 0x3f, 0x0e);

    // DATA PROTECT.
    WRITE_PROTECTED = (DataProtect, 0x27, 0x00);
    /// 27h/07h: a thin LU out of space (SBC-4 4.7.3.6): the backstore said
    /// ENOSPC.
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = (DataProtect, 0x27, 0x07);

    // COPY ABORTED (SPC-4 6.4.3: EXTENDED COPY's own failures).
    /// 00h/00h: no more to say: a segment past a copy target's capacity
    /// (the target's own answer would be LBA OUT OF RANGE).
    COPY_ABORTED = (CopyAborted, 0x00, 0x00);
    THIRD_PARTY_DEVICE_FAILURE = (CopyAborted, 0x0d, 0x01);
    /// 0Dh/02h: a copy target that cannot be reached (not served here, an
    /// index past the CSCD list, not ready or reserved against this nexus).
    COPY_TARGET_DEVICE_NOT_REACHABLE = (CopyAborted, 0x0d, 0x02);
    INCORRECT_COPY_TARGET_DEVICE_TYPE = (CopyAborted, 0x0d, 0x03);
    COPY_ABORTED_WRITE_PROTECTED = (CopyAborted, 0x27, 0x00);

    // ABORTED COMMAND.
    /// 08h/00h, 08h/01h: the pr-helper's SG_IO to the device failed or
    /// timed out.
    LOGICAL_UNIT_COMMUNICATION_FAILURE = (AbortedCommand, 0x08, 0x00);
    LOGICAL_UNIT_COMMUNICATION_TIME_OUT = (AbortedCommand, 0x08, 0x01);

    // MISCOMPARE.
    MISCOMPARE_DURING_VERIFY_OPERATION = (Miscompare, 0x1d, 0x00);
}

impl Sense {
    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`, for a sub-byte field).
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::INVALID_FIELD_IN_CDB
        }
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the parameter data.
    pub fn invalid_param_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Sense::INVALID_FIELD_IN_PARAMETER_LIST
        }
    }

    /// This sense with the INFORMATION field set.
    pub fn with_information(self, information: u64) -> Sense {
        Sense {
            information: Some(information),
            ..self
        }
    }

    /// The three sense-key specific bytes (SPC-4 4.5.2.4), if any.
    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut b0 = 0x80; // SKSV
        if f.in_cdb {
            b0 |= 0x40; // C/D
        }
        if let Some(bit) = f.bit {
            b0 |= 0x08 | (bit & 0x7); // BPV + BIT POINTER
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Fixed-format sense data (SPC-4 4.5.3, response code 70h).
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut s = [0u8; FIXED_SENSE_LEN];
        s[0] = 0x70;
        s[2] = self.key as u8;
        if let Some(info) = self.information {
            // The fixed INFORMATION field holds 4 bytes; VALID only when it fits.
            if let Ok(info) = u32::try_from(info) {
                s[0] |= 0x80;
                s[3..7].copy_from_slice(&info.to_be_bytes());
            }
        }
        s[7] = (FIXED_SENSE_LEN - 8) as u8;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(sks) = self.sense_key_specific() {
            s[15..18].copy_from_slice(&sks);
        }
        s
    }

    /// Descriptor-format sense data (SPC-4 4.5.2, response code 72h) with the
    /// information (00h) and sense-key specific (02h) descriptors when present.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut s = vec![0x72, self.key as u8, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            s.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sense_key_specific() {
            s.extend_from_slice(&[0x02, 0x06, 0, 0, sks[0], sks[1], sks[2], 0]);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }

    /// Sense data in the format the LU is set to (D_SENSE in the control mode page).
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.to_descriptor()
        } else {
            self.to_fixed().to_vec()
        }
    }

    /// Sense data whose sense-key specific field is a PROGRESS INDICATION
    /// (SPC-4 4.5.2.4.4: SKSV, then a fraction of 65536), for an operation
    /// in progress (NOT READY) that REQUEST SENSE or a refused command
    /// reports.
    pub fn encode_with_progress(&self, descriptor: bool, progress: u16) -> Vec<u8> {
        let [hi, lo] = progress.to_be_bytes();
        let plain = Sense {
            field: None,
            ..*self
        };
        if descriptor {
            let mut s = plain.to_descriptor();
            s.extend_from_slice(&[0x02, 0x06, 0, 0, 0x80, hi, lo, 0]);
            s[7] = (s.len() - 8) as u8;
            s
        } else {
            let mut s = plain.to_fixed();
            s[15..18].copy_from_slice(&[0x80, hi, lo]);
            s.to_vec()
        }
    }
}

/// The sense key, ASC and ASCQ of sense data as it came from a device or a
/// target: fixed format (70h/71h, SPC-4 4.5.3: key in byte 2, codes in
/// bytes 12-13) or descriptor format (72h/73h, 4.5.2: key in byte 1, codes
/// in bytes 2-3). None for anything else, or data too short to hold them.
pub fn decode(sense: &[u8]) -> Option<(u8, u8, u8)> {
    let at = |i: usize| sense.get(i).copied();
    match at(0)? & 0x7f {
        0x70 | 0x71 => Some((at(2)? & 0x0f, at(12)?, at(13)?)),
        0x72 | 0x73 => Some((at(1)? & 0x0f, at(2)?, at(3)?)),
        _ => None,
    }
}

/// Whether `sense` (either format) says UNIT ATTENTION.
pub fn is_unit_attention(sense: &[u8]) -> bool {
    decode(sense).is_some_and(|(key, _, _)| key == SenseKey::UnitAttention as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_opcode_fixed_sense_matches_spc_layout() {
        // SPC-4 4.5.3: 70h, key 5, ASC 20h ASCQ 00h, additional length 10.
        let expected: [u8; 18] = [
            0x70, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x0a, // response code, key, info, len
            0x00, 0x00, 0x00, 0x00, // command-specific information
            0x20, 0x00, 0x00, // ASC, ASCQ, FRU
            0x00, 0x00, 0x00, // sense-key specific
        ];
        assert_eq!(Sense::INVALID_COMMAND_OPERATION_CODE.to_fixed(), expected);
    }

    #[test]
    fn field_pointer_sets_sksv_cd_and_bit_pointer() {
        let s = Sense::invalid_cdb_field(1, Some(1)).to_fixed();
        // SKSV=1, C/D=1, BPV=1, bit pointer 1; field pointer 0001h.
        assert_eq!(&s[15..18], &[0xc9, 0x00, 0x01]);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
    }

    #[test]
    fn medium_error_reports_lba_in_information() {
        let s = Sense::UNRECOVERED_READ_ERROR
            .with_information(0x1234)
            .to_fixed();
        assert_eq!(s[0], 0xf0); // VALID + 70h
        assert_eq!(&s[3..7], &[0x00, 0x00, 0x12, 0x34]);
    }

    #[test]
    fn sanitize_in_progress_carries_the_progress_indication() {
        // SPC-4 4.5.3 and 4.5.2.4.4: NOT READY, 04h/1Bh, SKSV with the
        // progress indication (a quarter done: 4000h) in bytes 16-17.
        let expected: [u8; 18] = [
            0x70, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, // response code, key, info, len
            0x00, 0x00, 0x00, 0x00, // command-specific information
            0x04, 0x1b, 0x00, // ASC, ASCQ, FRU
            0x80, 0x40, 0x00, // SKSV, PROGRESS INDICATION
        ];
        assert_eq!(
            Sense::SANITIZE_IN_PROGRESS.encode_with_progress(false, 0x4000),
            expected.to_vec()
        );
    }

    #[test]
    fn progress_in_descriptor_format_is_a_sense_key_specific_descriptor() {
        assert_eq!(
            Sense::SANITIZE_IN_PROGRESS.encode_with_progress(true, 0x8000),
            vec![
                0x72, 0x02, 0x04, 0x1b, 0, 0, 0, 8, // header, additional length 8
                0x02, 0x06, 0x00, 0x00, 0x80, 0x80, 0x00, 0x00, // SKSV, progress 8000h
            ]
        );
    }

    #[test]
    fn descriptor_sense_carries_64_bit_information() {
        let s = Sense::LBA_OUT_OF_RANGE
            .with_information(0x1_0000_0000)
            .to_descriptor();
        assert_eq!(
            s,
            vec![
                0x72, 0x05, 0x21, 0x00, 0, 0, 0, 12, // header, additional length 12
                0x00, 0x0a, 0x80, 0x00, // information descriptor, VALID
                0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
            ]
        );
    }

    #[test]
    fn each_condition_is_named_once() {
        // One name per sense key and code: a code may come under two keys
        // (WRITE PROTECTED under DATA PROTECT and under COPY ABORTED).
        let mut seen = std::collections::HashMap::new();
        for (name, s) in ALL_CONDITIONS {
            let code = (s.key as u8, s.asc, s.ascq);
            if let Some(other) = seen.insert(code, name) {
                panic!("{name} and {other} are both {code:02x?}");
            }
        }
        assert!(ALL_CONDITIONS.len() > 40);
    }

    #[test]
    fn decode_reads_fixed_and_descriptor_sense_and_refuses_the_rest() {
        let ua = Sense::CAPACITY_DATA_HAS_CHANGED;
        assert_eq!(decode(&ua.encode(false)), Some((0x6, 0x2a, 0x09)));
        assert_eq!(decode(&ua.encode(true)), Some((0x6, 0x2a, 0x09)));
        assert!(is_unit_attention(&ua.encode(true)));
        assert!(!is_unit_attention(&Sense::WRITE_ERROR.encode(false)));
        // Deferred errors (71h, 73h) too; other response codes, short data,
        // nothing: None.
        assert_eq!(decode(&[0x73, 0x05, 0x24, 0x00]), Some((0x5, 0x24, 0)));
        assert_eq!(
            decode(&[0x7f, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x29, 0]),
            None
        );
        assert_eq!(decode(&[0x70, 0, 6]), None);
        assert_eq!(decode(&[]), None);
    }
}
