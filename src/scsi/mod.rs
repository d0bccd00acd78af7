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
mod lu;
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

use std::io;
use std::sync::Arc;

pub use alua::{AluaState, PortGroup};
pub use lu::{AbortHook, Identity, LogicalUnit, LuConfig};
pub use opcodes::{needs_exclusive_writes, unit_attention_exempt};
pub use sense::{Sense, SenseKey, Status};
pub use target::{LunAddress, Target};

/// The REPORT LUNS well-known LUN as 8 bytes (SPC-4 8.2).
pub fn target_wlun() -> [u8; 8] {
    target::REPORT_LUNS_WLUN
}

/// An I_T nexus, as the logical unit sees it: the initiator port (one per
/// controller, the same across reconnects) and the relative target port it
/// came through.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Identifies the I_T nexus within the daemon: controllers with the
    /// same initiator port and relative target port (the source and
    /// destination controllers of a live migration) are the same nexus,
    /// with one set of unit attentions and reservations.
    pub id: u32,
    /// Identifies the controller (a path of the nexus); unique within the
    /// daemon.
    pub path: u32,
    /// Relative target port identifier (SPC-4 7.8.6.2), 1-based.
    pub relative_port: u16,
    /// Initiator port name (an iSCSI name), the TransportID of the nexus.
    pub initiator: Arc<str>,
}

/// The data the initiator sent with a command (the data-out buffer).
pub trait DataOut {
    /// Total number of bytes available.
    fn len(&self) -> usize;
    /// True when there is no data-out.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `buf.len()` bytes starting at `offset` into `buf`.
    fn read_at(&mut self, offset: usize, buf: &mut [u8]) -> io::Result<()>;
}

impl DataOut for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read_at(&mut self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len())
            .filter(|&e| e <= <[u8]>::len(self))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&self[offset..end]);
        Ok(())
    }
}

/// One command as the transport delivers it.
pub struct Command<'a> {
    /// The CDB; may be longer than the command needs (virtio passes 32 bytes).
    pub cdb: &'a [u8],
    pub nexus: &'a Nexus,
    pub data_out: &'a mut dyn DataOut,
    /// Size of the initiator's data-in buffer.
    pub data_in_len: usize,
}

/// A finished command: status, sense (already encoded) and data-in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
}

impl Response {
    pub fn good(data: Vec<u8>) -> Response {
        Response {
            status: Status::Good as u8,
            ..Response::default()
        }
        .with_data(data)
    }

    fn with_data(mut self, data: Vec<u8>) -> Response {
        self.data = data;
        self
    }

    pub fn check_condition(sense: &Sense, descriptor: bool) -> Response {
        Response {
            status: Status::CheckCondition as u8,
            sense: sense.encode(descriptor),
            data: Vec::new(),
        }
    }

    pub fn status(status: Status) -> Response {
        Response {
            status: status as u8,
            ..Response::default()
        }
    }
}

/// Direction of a block transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Backstore -> initiator data-in buffer.
    Read,
    /// Initiator data-out buffer -> backstore.
    Write,
    /// Make previous writes durable.
    Flush,
}

/// A transfer the transport performs between its buffers and the backstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIo {
    pub kind: IoKind,
    /// First logical block (for sense INFORMATION on errors).
    pub lba: u64,
    /// Number of logical blocks.
    pub blocks: u64,
    /// Byte offset in the backstore.
    pub offset: u64,
    /// Byte length; the transport moves exactly this much.
    pub len: u64,
    /// Write through to stable storage (FUA, or write cache disabled).
    pub sync: bool,
}

/// What the transport has to do next with a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done(Response),
    Io(BlockIo),
    /// The LUN is served by another SCSI target (an iSCSI LUN): the
    /// transport sends the command there unchanged.
    Passthrough(u16),
}
