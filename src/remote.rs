// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The contract between the virtio device and a LUN whose commands another
//! system executes: today an iSCSI target through the built-in initiator
//! (`iscsi::client::Client` implements `Session`); an NVMe/TCP or NBD
//! client would be another implementation, and the device would not
//! change.
//!
//! The device hands a session the guest's CDB with its data buffers (a
//! `Source` over the guest's data-out, a `Sink` over its data-in: no copy
//! of ours in between), is called back with the outcome on whichever
//! thread learnt it, runs task management through typed values, and hears
//! of the target's asynchronous events. Nothing here names a transport.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

/// Data direction of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    None,
    /// Read up to this many bytes.
    Read(u32),
    /// Read up to the sink's length, straight into the sink.
    ReadInto(SinkRef),
    /// Write these bytes.
    Write(Vec<u8>),
    /// Write the source's bytes, sent from where they are.
    WriteFrom(SourceRef),
}

impl Data {
    /// The most data-in it asks for.
    pub fn read_len(&self) -> u32 {
        match self {
            Data::Read(n) => *n,
            Data::ReadInto(k) => u32::try_from(k.0.size()).unwrap_or(u32::MAX),
            Data::None | Data::Write(_) | Data::WriteFrom(_) => 0,
        }
    }
}

/// Write data in memory the transport does not own (guest memory): sent
/// from there, never copied into a buffer of the transport's (an iSCSI
/// data digest, say, is computed over it in small pieces).
pub trait Source: Send + Sync {
    /// Its size in bytes (the write's transfer length).
    fn size(&self) -> usize;
    /// Copy the bytes at `offset` into `buf`; false if out of range.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool;
    /// Append iovecs covering `offset..offset + len` to `out`; false if
    /// out of range. They stay valid while the source lives.
    fn iovecs(&self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) -> bool;
}

/// A shared `$trait` object: `Clone`, `Debug` (its size) and equal only to
/// itself, so `Data` stays comparable.
macro_rules! shared_ref {
    ($name:ident, $trait:ident) => {
        #[doc = concat!("A shared `", stringify!($trait), "`; equal only to itself.")]
        #[derive(Clone)]
        pub struct $name(pub Arc<dyn $trait>);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({} bytes)", stringify!($trait), self.0.size())
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &$name) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
        }

        impl Eq for $name {}
    };
}

shared_ref!(SourceRef, Source);

/// Memory a read's data goes straight into (guest memory), so that it
/// never sits in a buffer of the transport's. Once the command's outcome is
/// known the owner closes it: later writes are refused, so no data lands in
/// memory that was handed back.
pub trait Sink: Send + Sync {
    /// Its size in bytes (the read's expected transfer length).
    fn size(&self) -> usize;
    /// Copy `data` to byte `offset`; false if closed or out of range.
    fn write_at(&self, offset: usize, data: &[u8]) -> bool;
    /// One readv(2) from the socket `fd` of up to `len` bytes to byte
    /// `offset`, then of what follows them in the stream into `after`: the
    /// bytes read in all (0 at end of stream) or the error; None, reading
    /// nothing, when closed or out of range (the caller then reads the
    /// bytes elsewhere).
    fn read_from(
        &self,
        fd: RawFd,
        offset: usize,
        len: usize,
        after: &mut [u8],
    ) -> Option<io::Result<usize>>;
    /// Copy bytes from `offset` into `buf` (to check a data digest over
    /// data received with `read_from`); false if closed or out of range.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool;
}

shared_ref!(SinkRef, Sink);

/// A finished command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The transport's own name for the command.
    pub tag: u64,
    /// 0: the command completed at the target and `status` is valid;
    /// anything else: it did not (for iSCSI, the Response field of the
    /// SCSI Response, RFC 7143 11.4.3), and the guest may retry it.
    pub response: u8,
    pub status: u8,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
    /// Bytes of data-in that went into the command's sink (`data` is then
    /// empty).
    pub placed: u32,
    /// Residual count: positive underflow, negative overflow.
    pub residual: i64,
}

/// Why a command did not complete at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The daemon is shutting down.
    Shutdown,
    /// Task management aborted it (at the target, or before it got there).
    Aborted,
    /// A LUN reset or an I_T nexus reset ended it.
    Reset,
    /// The target stayed unreachable past the session's recovery timeout.
    Timeout,
}

/// Work a completion leaves for the end of its batch, done once per `key`
/// however many completions of the batch asked for it (one guest
/// notification per virtqueue instead of one per command).
pub struct Deferred {
    pub key: usize,
    pub run: Box<dyn FnOnce() + Send>,
}

/// What to do with a command's outcome.
pub type Callback = Box<dyn FnOnce(Result<Completion, Failure>) -> Option<Deferred> + Send>;

/// Run callbacks, then their deferred work once per key.
pub fn complete_all(results: impl IntoIterator<Item = (Callback, Result<Completion, Failure>)>) {
    let mut deferred: Vec<Deferred> = Vec::new();
    for (cb, r) in results {
        if let Some(d) = cb(r) {
            if !deferred.iter().any(|x| x.key == d.key) {
                deferred.push(d);
            }
        }
    }
    for d in deferred {
        (d.run)();
    }
}

/// A command for the target: LUN, CDB, data, and what to do with the answer.
pub struct Request {
    /// The caller's name for the command (ABORT TASK refers to it).
    pub id: u64,
    /// The LUN field as the target knows it (SAM-5 4.7).
    pub lun: [u8; 8],
    pub cdb: Vec<u8>,
    pub data: Data,
    pub done: Callback,
}

/// Told the LUN field and sense data of each SCSI asynchronous event the
/// target reports (besides the unit attention it leaves), on the thread
/// that received it, with no lock held.
pub type EventHook = Arc<dyn Fn([u8; 8], &[u8]) + Send + Sync>;

/// A task management function on one LUN (SAM-5 7), as the guest asks for
/// it. I_T NEXUS RESET is `Session::reset_nexus`; QUERY TASK and QUERY
/// TASK SET are answered by the device from what it has in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskManagement {
    /// ABORT TASK of the command submitted with this `Request::id`.
    AbortTask(u64),
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
}

impl TaskManagement {
    /// Whether the commands it ends were reset, not aborted.
    pub fn is_reset(self) -> bool {
        self == TaskManagement::LogicalUnitReset
    }
}

/// What the target answered to task management.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TmfOutcome {
    /// Done (for ABORT TASK: also when the task had completed already).
    /// Every command the function ended has completed, with
    /// `Failure::Aborted` or `Failure::Reset`, before this is returned.
    Complete,
    /// The target has no such LUN.
    NoSuchLun,
    /// Refused or not supported; the target's answer, for the log.
    Rejected(String),
}

/// A session with the system that executes a remote LUN's commands. One
/// session may serve several LUNs (of one controller, or of controllers
/// sharing the initiator port); the handles a device holds compare by
/// `id`.
pub trait Session: Send + Sync {
    /// Equal for every handle on the same session.
    fn id(&self) -> usize;
    /// The protocol's name, for log lines ("iSCSI").
    fn protocol(&self) -> &'static str;
    /// Send commands, in order, with as few writes as the transport allows.
    /// Each `done` runs once: on the thread that receives the answer (an
    /// attached receiver, or the session's own thread), or on the caller's
    /// if the command is refused at once.
    fn submit_all(&self, requests: Vec<Request>);
    /// Run a task management function on `lun` (the target's LUN field).
    fn task_management(&self, function: TaskManagement, lun: [u8; 8]) -> TmfOutcome;
    /// I_T NEXUS RESET: end every command of this session, at the target
    /// too, and start again.
    fn reset_nexus(&self);
    /// A device started using the session (the session should be up), or
    /// stopped (the last one out may end it: a live migration's source
    /// leaves the target to the destination).
    fn activate(&self);
    fn deactivate(&self);
    /// A descriptor readable whenever answers wait; `receive` handles them
    /// on the caller's thread. It stays the same for the session's life.
    fn receive_fd(&self) -> RawFd;
    fn receive(&self);
    /// From now until the guard is dropped, the caller watches
    /// `receive_fd` and calls `receive` (the session's own thread stops
    /// receiving: one thread wake-up less per answer).
    fn attach_receiver(&self) -> Box<dyn Send>;
    /// Have `hook` told about asynchronous events too; returns its id for
    /// `remove_event_hook`. The hook must not hold the session (a cycle).
    fn add_event_hook(&self, hook: EventHook) -> u64;
    fn remove_event_hook(&self, id: u64);
    /// The session's state for the control API (`ctl info`).
    fn status(&self) -> serde_json::Value;
}

/// A LUN served through a session.
#[derive(Clone)]
pub struct RemoteLun {
    pub session: Arc<dyn Session>,
    /// The LUN field as the target knows it (SAM-5 4.7, single level).
    pub lun: [u8; 8],
}
