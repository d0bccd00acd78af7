// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SCSI target emulation (SPC-4 / SBC-3) for local logical units.
//!
//! This layer executes CDBs. It knows nothing about virtio: a command comes
//! in as a [`Command`] (CDB, nexus, a [`DataOut`] source and the size of the
//! initiator's data-in buffer) and leaves as an [`Outcome`]: either a finished
//! [`Response`] (emulated commands) or a [`BlockIo`] for the transport to run
//! against the backstore with zero copies, finished by
//! [`LogicalUnit::complete_io`].

mod alua;
mod atomic;
mod cdb;
mod command;
mod execute;
pub(crate) mod fnv;
mod limits;
mod lu;
pub mod lun;
mod mode;
mod opcodes;
pub mod pr;
mod reservations;
mod sanitize;
mod sbc;
pub mod sense;
mod spc;
pub mod target;
#[cfg(test)]
mod tests;
mod writes;
mod xcopy;

pub use alua::{AluaState, PortGroup};
pub use cdb::length as cdb_length;
pub use command::{BlockIo, Command, DataOut, IoKind, Nexus, Outcome, Response};
pub use lu::{AbortHook, Identity, LogicalUnit, LuConfig};
pub use lun::LunAddress;
pub use opcodes::{needs_exclusive_writes, unit_attention_exempt};
pub use sense::{Sense, SenseKey, Status};
pub use target::Target;

/// The REPORT LUNS well-known LUN as 8 bytes (SPC-4 8.2).
pub fn target_wlun() -> [u8; 8] {
    lun::REPORT_LUNS_WLUN
}
