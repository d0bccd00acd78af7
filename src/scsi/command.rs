// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The SCSI layer's vocabulary, at the bottom of it: a command as the
//! transport delivers it, what a handler sees of it (`Ctx`), how it ends
//! (`Outcome`, `Response`, `BlockIo`) and how it fails (`Failure`). It
//! depends on nothing in scsi/ but sense data and CDB fields; everything
//! else depends on it.

use std::io;
use std::sync::Arc;

use super::cdb::{Cdb, Layout};
use super::sense::{Sense, Status};

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
    /// The LUN is a remote LUN, served by another SCSI target through a
    /// `remote::Session` (an iSCSI LUN): the transport sends the command
    /// there unchanged.
    Remote(u16),
}

/// Everything a command handler can see.
pub(crate) struct Ctx<'a> {
    pub cdb: Cdb,
    /// Where the CDB's LBA and length are, for a block command (from the
    /// opcode table).
    pub layout: Option<Layout>,
    pub nexus: &'a Nexus,
    pub data_out: &'a mut dyn DataOut,
    /// The LUNs of the target the command came through (for REPORT LUNS).
    pub luns: &'a [u16],
}

/// A block command's LBA, number of blocks and FUA bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub lba: u64,
    pub blocks: u64,
    pub fua: bool,
    /// Byte offset of the length field (for field pointers).
    pub length_field: u16,
}

impl Ctx<'_> {
    /// The CDB's transfer fields, read through the command's layout. A
    /// block command without one is a mistake in the opcode table, and
    /// answered as one (INTERNAL TARGET FAILURE), not guessed at.
    pub fn transfer(&self) -> Result<Transfer, Sense> {
        let layout = self.layout.ok_or(Sense::INTERNAL_TARGET_FAILURE)?;
        Ok(Transfer {
            lba: layout.lba(&self.cdb),
            blocks: layout.blocks(&self.cdb),
            fua: layout.fua(&self.cdb),
            length_field: layout.length_field(),
        })
    }
}

/// Why a handler did not produce a normal outcome.
#[derive(Debug)]
pub(crate) enum Failure {
    Sense(Sense),
    Status(Status),
    /// CHECK CONDITION with a progress indication (an operation in progress).
    Progress(Sense, u16),
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Failure {
        Failure::Sense(s)
    }
}
