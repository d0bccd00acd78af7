// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vhost-user-scsi: a vhost-user-scsi backend daemon with SCSI emulation of
//! local backstores. See docs/architecture.md for the layers.

pub mod backstore;
pub mod bench;
pub mod config;
pub mod device;
pub mod iscsi;
pub mod prhelper;
pub mod scsi;
pub mod server;
pub mod virtio;
