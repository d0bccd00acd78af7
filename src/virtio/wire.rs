// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-scsi structures a driver and a device exchange (virtio 1.2,
//! 5.6.6), one definition each, read and written whole: the device
//! (`device/`) and the load generator (`bench/`) both use them.
//!
//! Every multi-byte field is little-endian (virtio 1.2, 1.4: "le32" etc.);
//! the structures have no padding, so `ByteValued` lets them be copied from
//! and to guest memory as they are.

use std::mem::size_of;

use vm_memory::{ByteValued, Le16, Le32, Le64};

/// Default cdb_size and sense_size (virtio 1.2, 5.6.4); QEMU never lets
/// the guest change them for vhost-user-scsi.
pub const CDB_SIZE: usize = 32;
pub const SENSE_SIZE: usize = 96;

/// A command request's device-readable header (virtio 1.2, 5.6.6.1,
/// `struct virtio_scsi_req_cmd` up to `cdb`): `u8 lun[8], le64 id,
/// u8 task_attr, u8 prio, u8 crn, u8 cdb[cdb_size]`. Packed: the spec puts
/// `cdb` at byte 19 and the whole header in 51 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed)]
pub struct CmdReq {
    pub lun: [u8; 8],
    pub tag: Le64,
    pub task_attr: u8,
    pub prio: u8,
    pub crn: u8,
    pub cdb: [u8; CDB_SIZE],
}

// SAFETY: `repr(C, packed)` of byte arrays, bytes and `Le64` (itself
// `ByteValued`): no padding, and every bit pattern is a valid value.
unsafe impl ByteValued for CmdReq {}

/// A command response's device-writable header (virtio 1.2, 5.6.6.1,
/// `struct virtio_scsi_resp_cmd` up to `sense`): `le32 sense_len,
/// le32 residual, le16 status_qualifier, u8 status, u8 response,
/// u8 sense[sense_size]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct CmdResp {
    pub sense_len: Le32,
    pub resid: Le32,
    pub status_qualifier: Le16,
    pub status: u8,
    pub response: u8,
    pub sense: [u8; SENSE_SIZE],
}

// SAFETY: `repr(C)` with every field at its natural alignment (offsets 0,
// 4, 8, 10, 11, 12) and a size (108) that is a multiple of the largest
// alignment (4): no padding; every bit pattern is a valid value.
unsafe impl ByteValued for CmdResp {}

/// Length of the request header the device reads before data-out.
pub const REQ_HEADER_LEN: usize = size_of::<CmdReq>();
/// Length of the response header the device writes before data-in.
pub const RESP_HEADER_LEN: usize = size_of::<CmdResp>();

/// A control queue request's type, its first field (virtio 1.2, 5.6.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CtrlType {
    /// VIRTIO_SCSI_T_TMF.
    Tmf = 0,
    /// VIRTIO_SCSI_T_AN_QUERY.
    AnQuery = 1,
    /// VIRTIO_SCSI_T_AN_SUBSCRIBE.
    AnSubscribe = 2,
}

impl TryFrom<u32> for CtrlType {
    type Error = u32;

    fn try_from(v: u32) -> Result<CtrlType, u32> {
        Ok(match v {
            0 => CtrlType::Tmf,
            1 => CtrlType::AnQuery,
            2 => CtrlType::AnSubscribe,
            other => return Err(other),
        })
    }
}

/// Task management subtypes (virtio 1.2, 5.6.6.2,
/// VIRTIO_SCSI_T_TMF_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum TmfSubtype {
    AbortTask = 0,
    AbortTaskSet = 1,
    ClearAca = 2,
    ClearTaskSet = 3,
    ITNexusReset = 4,
    LogicalUnitReset = 5,
    QueryTask = 6,
    QueryTaskSet = 7,
}

impl TryFrom<u32> for TmfSubtype {
    type Error = u32;

    fn try_from(v: u32) -> Result<TmfSubtype, u32> {
        Ok(match v {
            0 => TmfSubtype::AbortTask,
            1 => TmfSubtype::AbortTaskSet,
            2 => TmfSubtype::ClearAca,
            3 => TmfSubtype::ClearTaskSet,
            4 => TmfSubtype::ITNexusReset,
            5 => TmfSubtype::LogicalUnitReset,
            6 => TmfSubtype::QueryTask,
            7 => TmfSubtype::QueryTaskSet,
            other => return Err(other),
        })
    }
}

/// A task management request (virtio 1.2, 5.6.6.2, `struct
/// virtio_scsi_ctrl_tmf`, device-readable part): `le32 type, le32 subtype,
/// u8 lun[8], le64 id`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CtrlTmfReq {
    pub ty: Le32,
    pub subtype: Le32,
    pub lun: [u8; 8],
    pub tag: Le64,
}

// SAFETY: `repr(C)`, fields at offsets 0, 4, 8 and 16 (each aligned) and
// size 24, a multiple of the alignment 8: no padding; any bits are valid.
unsafe impl ByteValued for CtrlTmfReq {}

/// A task management response (device-writable part): `u8 response`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CtrlTmfResp {
    pub response: u8,
}

// SAFETY: one byte; any value is valid.
unsafe impl ByteValued for CtrlTmfResp {}

/// An asynchronous notification query or subscription (virtio 1.2,
/// 5.6.6.2.1, `struct virtio_scsi_ctrl_an`, device-readable part):
/// `le32 type, u8 lun[8], le32 event_requested`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CtrlAnReq {
    pub ty: Le32,
    pub lun: [u8; 8],
    pub event_requested: Le32,
}

// SAFETY: `repr(C)`, fields at offsets 0, 4 and 12 and size 16, a multiple
// of the alignment 4: no padding; any bits are valid.
unsafe impl ByteValued for CtrlAnReq {}

/// Its device-writable part: `le32 event_actual, u8 response`. Packed: the
/// spec's response is 5 bytes, not 8.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed)]
pub struct CtrlAnResp {
    pub event_actual: Le32,
    pub response: u8,
}

// SAFETY: `repr(C, packed)` of `Le32` and a byte: no padding; any bits
// are valid.
unsafe impl ByteValued for CtrlAnResp {}

/// Response codes (virtio 1.2, 5.6.6.1 and 5.6.6.2, VIRTIO_SCSI_S_*).
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

impl TryFrom<u8> for Response {
    type Error = u8;

    fn try_from(v: u8) -> Result<Response, u8> {
        Ok(match v {
            0 => Response::Ok,
            1 => Response::Overrun,
            2 => Response::Aborted,
            3 => Response::BadTarget,
            4 => Response::Reset,
            5 => Response::Busy,
            6 => Response::TransportFailure,
            7 => Response::TargetFailure,
            8 => Response::NexusFailure,
            9 => Response::Failure,
            10 => Response::FunctionSucceeded,
            11 => Response::FunctionRejected,
            12 => Response::IncorrectLun,
            other => return Err(other),
        })
    }
}

/// Task attributes of a command (virtio 1.2, 5.6.6.1, VIRTIO_SCSI_S_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskAttr {
    Simple = 0,
    Ordered = 1,
    Head = 2,
    Aca = 3,
}

/// Event types (virtio 1.2, 5.6.6.3, VIRTIO_SCSI_T_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EventType {
    NoEvent = 0,
    TransportReset = 1,
    AsyncNotify = 2,
    ParamChange = 3,
}

/// Set in an event's type when the device dropped events for want of
/// buffers (VIRTIO_SCSI_T_EVENTS_MISSED, virtio 1.2, 5.6.6.3).
pub const EVENTS_MISSED: u32 = 0x8000_0000;

/// Reasons of a VIRTIO_SCSI_T_TRANSPORT_RESET event (virtio 1.2,
/// 5.6.6.3.1, VIRTIO_SCSI_EVT_RESET_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ResetReason {
    Hard = 0,
    Rescan = 1,
    Removed = 2,
}

/// An event (virtio 1.2, 5.6.6.3, `struct virtio_scsi_event`): `le32 event,
/// u8 lun[8], le32 reason`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Event {
    pub event: Le32,
    pub lun: [u8; 8],
    pub reason: Le32,
}

// SAFETY: `repr(C)`, fields at offsets 0, 4 and 12 and size 16, a multiple
// of the alignment 4: no padding; any bits are valid.
unsafe impl ByteValued for Event {}

impl CmdReq {
    /// A SIMPLE command for `lun` (a LUN field) with `tag` and `cdb` (at
    /// most CDB_SIZE bytes are used; the rest of the field is zero).
    pub fn new(lun: [u8; 8], tag: u64, cdb: &[u8]) -> CmdReq {
        let mut req = CmdReq {
            lun,
            tag: Le64::from(tag),
            task_attr: TaskAttr::Simple as u8,
            ..CmdReq::default()
        };
        let n = cdb.len().min(CDB_SIZE);
        if let (Some(d), Some(s)) = (req.cdb.get_mut(..n), cdb.get(..n)) {
            d.copy_from_slice(s);
        }
        req
    }

    /// The command's tag (`id`).
    pub fn tag(&self) -> u64 {
        let tag = self.tag;
        tag.to_native()
    }
}

impl CmdResp {
    /// A response. The residual saturates at the field's 32 bits (a guest
    /// can describe buffers larger than that); sense beyond `sense_size`
    /// bytes is cut.
    pub fn new(response: Response, status: u8, sense: &[u8], residual: u64) -> CmdResp {
        let n = sense.len().min(SENSE_SIZE);
        let mut r = CmdResp {
            // At most SENSE_SIZE.
            sense_len: Le32::from(n as u32),
            resid: Le32::from(u32::try_from(residual).unwrap_or(u32::MAX)),
            status_qualifier: Le16::from(0),
            status,
            response: response as u8,
            sense: [0; SENSE_SIZE],
        };
        if let (Some(d), Some(s)) = (r.sense.get_mut(..n), sense.get(..n)) {
            d.copy_from_slice(s);
        }
        r
    }

    /// The sense data the device reported (sense_len bytes, at most the
    /// field's size).
    pub fn sense(&self) -> &[u8] {
        let n = usize::try_from(self.sense_len.to_native()).unwrap_or(SENSE_SIZE);
        self.sense.get(..n).unwrap_or(&self.sense)
    }
}

impl Event {
    /// An event of `kind` for `lun` of target 0 with `reason`.
    pub fn new(kind: EventType, lun: u16, reason: u32) -> Event {
        Event {
            event: Le32::from(kind as u32),
            lun: single_level_lun(0, lun),
            reason: Le32::from(reason),
        }
    }

    /// Mark that events were missed before this one.
    pub fn set_events_missed(&mut self) {
        self.event = Le32::from(self.event.to_native() | EVENTS_MISSED);
    }
}

/// The reason of a VIRTIO_SCSI_T_PARAM_CHANGE event: the unit attention's
/// additional sense code in bits 0-7 and its qualifier in bits 8-15
/// (virtio 1.2, 5.6.6.3.3).
pub fn param_change_reason(asc: u8, ascq: u8) -> u32 {
    u32::from(asc) | (u32::from(ascq) << 8)
}

/// The LUN field of `lun` on `target` (virtio 1.2, 5.6.6.1: byte 0 is 1,
/// byte 1 the target, bytes 2-3 a single-level LUN, the rest 0). The
/// single level is as REPORT LUNS gives it (peripheral addressing below
/// 256, flat space, 0x4000 | lun, above: `scsi::lun::encode_lun`), the
/// number a guest knows the LUN by: events must carry that form (Linux
/// adds the LUN it reads there as it is), and requests may.
pub fn single_level_lun(target: u8, lun: u16) -> [u8; 8] {
    let [b0, b1, ..] = crate::scsi::lun::encode_lun(lun);
    [1, target, b0, b1, 0, 0, 0, 0]
}

/// The LUN field a Linux guest puts in every request for `lun` on `target`
/// (virtio 1.2, 5.6.6.1: byte 0 is 1, byte 1 the target, bytes 2-3 a
/// single-level LUN, the rest 0), always in SAM-5's flat space addressing
/// method (address method 01b in the top two bits of byte 2, then a 14-bit
/// LUN), LUN 0 included: as drivers/scsi/virtio_scsi.c encodes it, unlike
/// REPORT LUNS's peripheral form below 256. A LUN above 16383 does not fit
/// the 14 bits; its top two bits are dropped, as `encode_lun` does.
pub fn linux_lun(target: u8, lun: u16) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    [1, target, 0x40 | (hi & 0x3f), lo, 0, 0, 0, 0]
}

/// Where a virtio LUN field points (virtio 1.2, 5.6.6.1).
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
        match *lun {
            [1, 0, b0, b1, 0, 0, 0, 0] => VirtioLun::Target0 { b0, b1 },
            [1, 0, ..] => VirtioLun::Unsupported,
            _ => VirtioLun::BadTarget,
        }
    }
}

#[cfg(test)]
mod tests;
