// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-scsi wire formats (virtio 1.2, 5.6 "SCSI Host Device") and guest
//! buffer access. Knows nothing about SCSI semantics beyond the layouts.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

pub mod buffers;
pub mod chain;

/// Queue indices (virtio 5.6.2).
pub const CONTROL_QUEUE: usize = 0;
pub const EVENT_QUEUE: usize = 1;
pub const FIRST_REQUEST_QUEUE: usize = 2;

use virtio_bindings::virtio_scsi;

/// Feature bits (virtio 5.6.3), as masks.
pub const VIRTIO_SCSI_F_HOTPLUG: u64 = 1 << virtio_scsi::VIRTIO_SCSI_F_HOTPLUG;
pub const VIRTIO_SCSI_F_CHANGE: u64 = 1 << virtio_scsi::VIRTIO_SCSI_F_CHANGE;

/// Default cdb_size and sense_size (virtio 5.6.4); QEMU never lets the
/// guest change them for vhost-user-scsi.
pub const CDB_SIZE: usize = 32;
pub const SENSE_SIZE: usize = 96;

/// `lun[8], le64 id, u8 task_attr, u8 prio, u8 crn, u8 cdb[32]`.
pub const REQ_HEADER_LEN: usize = 8 + 8 + 3 + CDB_SIZE;
/// `le32 sense_len, le32 residual, le16 status_qualifier, u8 status,
/// u8 response, u8 sense[96]`.
pub const RESP_HEADER_LEN: usize = 4 + 4 + 2 + 1 + 1 + SENSE_SIZE;

/// Response codes (virtio 5.6.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Response {
    Ok = 0,
    Overrun = 1,
    Aborted = 2,
    BadTarget = 3,
    Reset = 4,
    Busy = 5,
    TransportFailure = 6,
    TargetFailure = 7,
    NexusFailure = 8,
    Failure = 9,
    FunctionSucceeded = 10,
    FunctionRejected = 11,
    IncorrectLun = 12,
}

/// Control queue request types (virtio 5.6.6.2).
pub const CTRL_TMF: u32 = 0;
pub const CTRL_AN_QUERY: u32 = 1;
pub const CTRL_AN_SUBSCRIBE: u32 = 2;

/// Task management subtypes (virtio 5.6.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfSubtype {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    ITNexusReset,
    LogicalUnitReset,
    QueryTask,
    QueryTaskSet,
}

impl TmfSubtype {
    pub fn from_u32(v: u32) -> Option<TmfSubtype> {
        Some(match v {
            0 => TmfSubtype::AbortTask,
            1 => TmfSubtype::AbortTaskSet,
            2 => TmfSubtype::ClearAca,
            3 => TmfSubtype::ClearTaskSet,
            4 => TmfSubtype::ITNexusReset,
            5 => TmfSubtype::LogicalUnitReset,
            6 => TmfSubtype::QueryTask,
            7 => TmfSubtype::QueryTaskSet,
            _ => return None,
        })
    }
}

/// TMF request: `le32 type, le32 subtype, u8 lun[8], le64 id`.
pub const TMF_REQ_LEN: usize = 24;
/// AN request: `le32 type, u8 lun[8], le32 event_requested`.
pub const AN_REQ_LEN: usize = 16;
/// AN response: `le32 event_actual, u8 response`.
pub const AN_RESP_LEN: usize = 5;

/// Where a virtio LUN field points (virtio 5.6.6.1: byte 0 is 1, byte 1
/// the target, bytes 2-3 the single-level LUN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioLun {
    /// Target 0: the first level of the SAM LUN.
    Target0 { b0: u8, b1: u8 },
    /// The REPORT LUNS well-known LUN (C1 01 00 ...).
    ReportLunsWellKnown,
    /// A target we do not have.
    BadTarget,
    /// A LUN structure we cannot address (levels beyond the first).
    Unsupported,
}

impl VirtioLun {
    pub fn parse(lun: &[u8; 8]) -> VirtioLun {
        if *lun == crate::scsi::target_wlun() {
            return VirtioLun::ReportLunsWellKnown;
        }
        if lun[0] != 1 || lun[1] != 0 {
            return VirtioLun::BadTarget;
        }
        if lun[4..].iter().any(|&b| b != 0) {
            return VirtioLun::Unsupported;
        }
        VirtioLun::Target0 {
            b0: lun[2],
            b1: lun[3],
        }
    }
}

/// The parsed request header.
#[derive(Clone, Copy, Debug)]
pub struct RequestHeader {
    pub lun: [u8; 8],
    pub tag: u64,
    pub task_attr: u8,
    pub cdb: [u8; CDB_SIZE],
}

impl RequestHeader {
    pub fn parse(b: &[u8; REQ_HEADER_LEN]) -> RequestHeader {
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&b[0..8]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&b[8..16]);
        let mut cdb = [0u8; CDB_SIZE];
        cdb.copy_from_slice(&b[19..19 + CDB_SIZE]);
        RequestHeader {
            lun,
            tag: u64::from_le_bytes(tag),
            task_attr: b[16],
            cdb,
        }
    }
}

/// Encode a command response header. The residual saturates at the
/// field's 32 bits (a guest can describe buffers larger than that).
pub fn encode_response(
    response: Response,
    status: u8,
    sense: &[u8],
    residual: u64,
) -> [u8; RESP_HEADER_LEN] {
    let mut r = [0u8; RESP_HEADER_LEN];
    let sense_len = sense.len().min(SENSE_SIZE);
    let residual = u32::try_from(residual).unwrap_or(u32::MAX);
    r[0..4].copy_from_slice(&(sense_len as u32).to_le_bytes());
    r[4..8].copy_from_slice(&residual.to_le_bytes());
    r[10] = status;
    r[11] = response as u8;
    for (d, s) in r.iter_mut().skip(12).zip(sense.iter().take(sense_len)) {
        *d = *s;
    }
    r
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn request_header_layout_is_51_bytes_with_cdb_at_19() {
        let mut b = [0u8; REQ_HEADER_LEN];
        b[0] = 1; // lun[0]
        b[3] = 2; // lun[3]: LUN 2
        b[8] = 0x34; // tag, little-endian
        b[9] = 0x12;
        b[19] = 0x28; // cdb[0]
        let h = RequestHeader::parse(&b);
        assert_eq!(REQ_HEADER_LEN, 51);
        assert_eq!(h.tag, 0x1234);
        assert_eq!(h.cdb[0], 0x28);
        assert_eq!(
            VirtioLun::parse(&h.lun),
            VirtioLun::Target0 { b0: 0, b1: 2 }
        );
    }

    #[test]
    fn response_header_is_108_bytes_little_endian() {
        let r = encode_response(Response::Ok, 0x02, &[0x70, 0, 5], 0x100);
        assert_eq!(RESP_HEADER_LEN, 108);
        assert_eq!(&r[0..4], &[3, 0, 0, 0]); // sense_len
        assert_eq!(&r[4..8], &[0, 1, 0, 0]); // residual
        assert_eq!(r[10], 0x02); // status
        assert_eq!(r[11], 0); // response
        assert_eq!(&r[12..15], &[0x70, 0, 5]);
    }

    #[test]
    fn lun_parsing_distinguishes_target_wlun_and_bad_target() {
        assert_eq!(
            VirtioLun::parse(&[0xc1, 0x01, 0, 0, 0, 0, 0, 0]),
            VirtioLun::ReportLunsWellKnown
        );
        assert_eq!(
            VirtioLun::parse(&[1, 3, 0, 0, 0, 0, 0, 0]),
            VirtioLun::BadTarget
        );
        assert_eq!(
            VirtioLun::parse(&[1, 0, 0x40, 1, 0, 0, 0, 1]),
            VirtioLun::Unsupported
        );
    }
}
