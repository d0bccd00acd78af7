// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The full-feature phase of one connection (RFC 7143 3.2, 4.2, 11): SCSI
//! commands within the CmdSN window, immediate and unsolicited data within
//! FirstBurstLength, R2T-driven Data-Out, Data-In with phase-collapsed
//! status, SCSI Response with sense and residuals, NOP-In/Out, Text
//! (SendTargets), Asynchronous Messages, Reject and Logout. Sans-IO: PDUs
//! in, PDUs out (`poll_transmit`) and events.

mod data;
mod negotiation;
mod receive;
mod task_management;
mod tasks;
#[cfg(test)]
pub(crate) mod tests;
mod transmit;

use std::collections::VecDeque;

use super::bhs::{self, Bhs};
use super::codes::{AsyncEvent, RejectReason, TmfFunction, TmfResponse, UnknownCode};
use super::gather::Gather;
use super::login::Negotiated;
use super::pdu::{padding, Digests, Opcode, Pdu, PduError, RunningDigest, BHS_LEN, RESERVED_TAG};
use super::text;
pub use crate::remote::{Completion, Data, Sink, SinkRef, Source, SourceRef};
use crate::seqhash::SeqMap;

pub use data::SPLICE_MIN;
use data::{copy_segment, source_digest, Chunk, Payload};
use negotiation::{TextTask, MAX_TEXT};
pub use task_management::{tmf_covers, TmfAnswer, TmfStart};
pub use tasks::{is_small, Awaited, BIG_READ};
use tasks::{sn_le, sn_lt, Task, Tasks};
use transmit::Outgoing;

/// What the session tells its driver about the PDUs it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A command finished (status, sense, data or where it was placed).
    Completed(Completion),
    /// Answer to our NOP-Out ping.
    Pong,
    /// SCSI asynchronous event (sense data) for a LUN.
    ScsiEvent {
        lun: [u8; 8],
        sense: Vec<u8>,
    },
    /// The target asks us to log out within `within_secs` (Asynchronous
    /// Message 1, its Parameter3).
    LogoutRequested {
        within_secs: u16,
    },
    /// The target will drop the connection or session (Asynchronous
    /// Message 2 or 3); log in again no sooner than `time2wait` seconds
    /// (its Parameter2) after.
    Dropping {
        time2wait: u16,
    },
    /// A complete Text Response (SendTargets and the like).
    Text(Vec<(String, String)>),
    LoggedOut {
        response: u8,
    },
    /// Answer to a task management request.
    TaskManagement {
        tag: u64,
        response: TmfAnswer,
    },
    /// A command that task management terminated at the target: it gets
    /// no response. `reset`: by a LUN or target reset (not an abort).
    Terminated {
        tag: u64,
        reset: bool,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("Target protocol error: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> SessionError {
    SessionError::Protocol(msg.into())
}

pub struct Session {
    pub n: Negotiated,
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    tasks: Tasks,
    waiting: VecDeque<u32>,
    out: VecDeque<Outgoing>,
    text_acc: Vec<u8>,
    /// The text exchange under way (at most one, RFC 7143 11.10), by ITT.
    text: Option<(u32, TextTask)>,
}

impl Session {
    pub fn new(n: Negotiated) -> Session {
        Session {
            cmd_sn: n.cmd_sn,
            exp_cmd_sn: n.exp_cmd_sn,
            max_cmd_sn: n.max_cmd_sn,
            exp_stat_sn: n.exp_stat_sn,
            n,
            next_itt: 1,
            tasks: Tasks::default(),
            waiting: VecDeque::new(),
            out: VecDeque::new(),
            text_acc: Vec::new(),
            text: None,
        }
    }

    /// Commands not finished yet.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// What the tasks that went out still owe.
    pub fn awaited(&self) -> Awaited {
        self.tasks.awaited
    }

    /// The fewest bytes the target will still send for one of the tasks
    /// out, if every one of them is a big read: the data-in it still owes
    /// and the headers (and digests) of the Data-In PDUs that data needs at
    /// least (segments are at most our MaxRecvDataSegmentLength, RFC 7143
    /// 13.12), not counting the one that may be arriving now. None while a
    /// task out is not a big read, or none is out. Receive coalescing
    /// waits for no more than this, so that the wait never outlasts the
    /// data of the read the target is sending. Looks at every task: for
    /// sessions with few commands out.
    pub fn least_due(&self) -> Option<usize> {
        let segment = (self.n.max_recv_data_segment_length as usize).max(512);
        let d = self.n.digests;
        let per_pdu = BHS_LEN + 4 * usize::from(d.header) + 4 * usize::from(d.data);
        let mut least: Option<usize> = None;
        for (_, t) in self.tasks.iter().filter(|(_, t)| t.sent) {
            if is_small(t.read_len) {
                return None;
            }
            let data = t.read_len.saturating_sub(t.received) as usize;
            let more_pdus = data.div_ceil(segment).saturating_sub(1);
            let bytes = data.saturating_add(more_pdus.saturating_mul(per_pdu));
            least = Some(least.map_or(bytes, |l| l.min(bytes)));
        }
        least
    }

    pub(super) fn alloc_itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG && !self.tasks.contains_key(&itt) {
                return itt;
            }
        }
    }

    /// Whether the window lets a non-immediate command with `cmd_sn` go.
    pub(super) fn window_open(&self) -> bool {
        sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    /// Queue a SCSI command; it goes out when the CmdSN window allows.
    pub fn submit(&mut self, tag: u64, lun: [u8; 8], cdb: impl Into<Vec<u8>>, data: Data) -> u32 {
        let itt = self.alloc_itt();
        let none = || Payload::Bytes(Vec::new());
        let read_len = data.read_len();
        let (write, sink) = match data {
            Data::None | Data::Read(_) => (none(), None),
            Data::ReadInto(k) => (none(), Some(k)),
            Data::Write(w) => (Payload::Bytes(w), None),
            Data::WriteFrom(src) => (Payload::Source(src), None),
        };
        self.tasks.insert(
            itt,
            Task {
                tag,
                lun,
                cdb: cdb.into(),
                read_len,
                write,
                data: Vec::new(),
                sink,
                received: 0,
                sent: false,
                solicitable: 0,
                cmd_sn: 0,
                tmf: None,
                ref_itt: RESERVED_TAG,
            },
        );
        self.waiting.push_back(itt);
        self.pump();
        itt
    }

    /// Logout Request: close the session (immediate).
    pub fn logout(&mut self) {
        let mut h = bhs::LogoutRequest::new();
        h.opcode |= bhs::IMMEDIATE;
        // Reason code 0: close the session (11.14.1).
        h.flags = bhs::FINAL;
        h.itt = self.alloc_itt().into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        self.out.push_back(Pdu::with_header(&h).into());
    }

    /// Every unfinished command, for retrying on a new session after a
    /// connection loss: (tag, LUN, CDB, data).
    pub fn take_unfinished(&mut self) -> Vec<(u64, [u8; 8], Vec<u8>, Data)> {
        let mut v: Vec<(u32, Task)> = self.tasks.drain().collect();
        v.sort_by_key(|(itt, _)| *itt);
        self.waiting.clear();
        v.into_iter()
            .filter(|(_, t)| t.tmf.is_none())
            .map(|(_, t)| {
                let d = if !t.write.is_empty() {
                    match t.write {
                        Payload::Bytes(v) => Data::Write(v),
                        Payload::Source(s) => Data::WriteFrom(s),
                    }
                } else if let Some(k) = t.sink {
                    Data::ReadInto(k)
                } else if t.read_len > 0 {
                    Data::Read(t.read_len)
                } else {
                    Data::None
                };
                (t.tag, t.lun, t.cdb, d)
            })
            .collect()
    }
}
