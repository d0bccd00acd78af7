// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-scsi wire formats (virtio 1.2, 5.6 "SCSI Host Device") and guest
//! buffer access. Knows nothing about SCSI semantics beyond the layouts.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

pub mod buffers;
pub mod chain;
pub mod wire;

/// Queue indices (virtio 5.6.2).
pub const CONTROL_QUEUE: usize = 0;
pub const EVENT_QUEUE: usize = 1;
pub const FIRST_REQUEST_QUEUE: usize = 2;

use virtio_bindings::virtio_scsi;

/// Feature bits (virtio 5.6.3), as masks.
pub const VIRTIO_SCSI_F_HOTPLUG: u64 = 1 << virtio_scsi::VIRTIO_SCSI_F_HOTPLUG;
pub const VIRTIO_SCSI_F_CHANGE: u64 = 1 << virtio_scsi::VIRTIO_SCSI_F_CHANGE;

pub use wire::{
    linux_lun, param_change_reason, single_level_lun, CmdReq, CmdResp, CtrlAnReq, CtrlAnResp,
    CtrlTmfReq, CtrlTmfResp, CtrlType, Event, EventType, ResetReason, Response, TaskAttr,
    TmfSubtype, VirtioLun, CDB_SIZE, EVENTS_MISSED, REQ_HEADER_LEN, RESP_HEADER_LEN, SENSE_SIZE,
};
