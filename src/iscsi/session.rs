// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The full-feature phase of one connection (RFC 7143 3.2, 4.2, 11): SCSI
//! commands within the CmdSN window, immediate and unsolicited data within
//! FirstBurstLength, R2T-driven Data-Out, Data-In with phase-collapsed
//! status, SCSI Response with sense and residuals, NOP-In/Out, Text
//! (SendTargets), Asynchronous Messages, Reject and Logout. Sans-IO: PDUs
//! in, PDUs out (`poll_transmit`) and events.

use std::collections::VecDeque;

use super::bhs::{self, Bhs};
use super::codes::{AsyncEvent, RejectReason, TmfFunction, TmfResponse, UnknownCode};
use super::gather::Gather;
use super::login::Negotiated;
use super::pdu::{padding, Digests, Opcode, Pdu, PduError, RunningDigest, BHS_LEN, RESERVED_TAG};
use super::text;
pub use crate::remote::{Completion, Data, Sink, SinkRef, Source, SourceRef};
use crate::seqhash::SeqMap;

/// A command's write data.
enum Payload {
    Bytes(Vec<u8>),
    Source(SourceRef),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Bytes(v) => v.len(),
            Payload::Source(s) => s.0.size(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Part of a command's write data, to send.
enum Chunk<'a> {
    Bytes(&'a [u8]),
    Source(&'a SourceRef, usize, usize),
}

/// Write data from a source shorter than this is copied into the transmit
/// buffer; a longer one is spliced in (sent from the source).
pub const SPLICE_MIN: usize = 64 * 1024;

/// Append `n` bytes of `src` from `at` to `out` as a data segment (with
/// padding and digest); false, appending nothing, if the source cannot
/// give them (the caller then splices them, and sending fails on them).
fn copy_segment(out: &mut Vec<u8>, src: &SourceRef, at: usize, n: usize, dg: Digests) -> bool {
    let start = out.len();
    out.resize(start + n, 0);
    if !src.0.read_at(at, &mut out[start..]) {
        out.truncate(start);
        return false;
    }
    out.extend_from_slice(padding(n));
    if dg.data && n > 0 {
        let mut d = RunningDigest::default();
        d.update(&out[start..]);
        out.extend_from_slice(&d.bytes());
    }
    true
}

/// The data digest of `n` bytes of `src` from `at` (and their padding),
/// read in pieces small enough to stay in cache.
fn source_digest(src: &SourceRef, at: usize, n: usize) -> [u8; 4] {
    let mut d = RunningDigest::default();
    let mut chunk = [0u8; 16 * 1024];
    let mut done = 0;
    while done < n {
        let k = (n - done).min(chunk.len());
        if !src.0.read_at(at + done, &mut chunk[..k]) {
            // Out of range after all: sending the splice fails too (the
            // connection is then recovered), so this digest never goes out.
            chunk[..k].fill(0);
        }
        d.update(&chunk[..k]);
        done += k;
    }
    d.update(padding(n));
    d.bytes()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
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

/// A target's answer to a task management request: a response code of
/// RFC 7143 11.6.1, or the byte it sent instead.
pub type TmfAnswer = Result<TmfResponse, UnknownCode>;

/// What `Session::task_management` did at once.
#[derive(Debug, PartialEq, Eq)]
pub struct TmfStart {
    /// Whether a request went to the target (an answer will come).
    pub sent: bool,
    /// Commands dropped before they reached the target.
    pub aborted: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("Target protocol error: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> SessionError {
    SessionError::Protocol(msg.into())
}

struct Task {
    tag: u64,
    lun: [u8; 8],
    cdb: Vec<u8>,
    read_len: u32,
    write: Payload,
    data: Vec<u8>,
    /// Where data-in goes instead of `data`.
    sink: Option<SinkRef>,
    received: u32,
    /// Whether the command PDU has gone out.
    sent: bool,
    /// Bytes of write data the target may still ask for with R2Ts: at
    /// ErrorRecoveryLevel 0 it asks for each byte once at most (no recovery
    /// R2Ts), so a target cannot make the session send a command's data
    /// over and over.
    solicitable: usize,
    /// CmdSN the command went out with (for a TMF: the one it carried).
    cmd_sn: u32,
    /// For a task management request: its function and, for ABORT TASK,
    /// the ITT of the task it aborts.
    tmf: Option<TmfFunction>,
    ref_itt: u32,
}

/// Reads of at least this much data-in come as a stream of big pieces;
/// tasks with less (writes, small reads, other commands) are answered in
/// one go (`Awaited::small`).
pub const BIG_READ: u32 = 64 * 1024;

/// Whether a task asking for `read_len` bytes of data-in is a small one
/// (answered in one go), not a big read.
pub fn is_small(read_len: u32) -> bool {
    read_len < BIG_READ
}

/// What the tasks out at the target still owe: receive coalescing sizes
/// its waits with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Awaited {
    /// Tasks that went out and wait for their answer.
    pub tasks: usize,
    /// Of those, the ones with less than `BIG_READ` of data-in in all.
    pub small: usize,
    /// Data-in bytes still to come for them.
    pub data: usize,
}

impl Awaited {
    fn add(&mut self, o: Awaited) {
        self.tasks += o.tasks;
        self.small += o.small;
        self.data += o.data;
    }

    fn sub(&mut self, o: Awaited) {
        self.tasks -= o.tasks;
        self.small -= o.small;
        self.data -= o.data;
    }
}

impl Task {
    /// What this task counts for in `Awaited` (nothing until it is sent).
    fn awaited(&self) -> Awaited {
        if !self.sent {
            return Awaited::default();
        }
        Awaited {
            tasks: 1,
            small: usize::from(is_small(self.read_len)),
            data: self.read_len.saturating_sub(self.received) as usize,
        }
    }
}

/// The session's tasks by ITT, and what those that went out still owe
/// (kept as it changes: the receiver asks after every round).
#[derive(Default)]
struct Tasks {
    map: SeqMap<u32, Task>,
    awaited: Awaited,
}

impl Tasks {
    fn insert(&mut self, itt: u32, t: Task) {
        self.awaited.add(t.awaited());
        if let Some(old) = self.map.insert(itt, t) {
            self.awaited.sub(old.awaited());
        }
    }

    fn remove(&mut self, itt: &u32) -> Option<Task> {
        let t = self.map.remove(itt)?;
        self.awaited.sub(t.awaited());
        Some(t)
    }

    fn drain(&mut self) -> impl Iterator<Item = (u32, Task)> + '_ {
        self.awaited = Awaited::default();
        self.map.drain()
    }

    /// Change task `itt` with `f`, keeping the counts (for `sent` and
    /// `received`, which they depend on).
    fn update(&mut self, itt: u32, f: impl FnOnce(&mut Task)) {
        if let Some(t) = self.map.get_mut(&itt) {
            let before = t.awaited();
            f(t);
            let after = t.awaited();
            self.awaited.sub(before);
            self.awaited.add(after);
        }
    }

    fn get(&self, itt: &u32) -> Option<&Task> {
        self.map.get(itt)
    }

    /// A task to change, but not its `sent` or `received` (see `update`,
    /// which keeps the counts).
    fn get_mut(&mut self, itt: &u32) -> Option<&mut Task> {
        self.map.get_mut(itt)
    }

    fn contains_key(&self, itt: &u32) -> bool {
        self.map.contains_key(itt)
    }

    fn iter(&self) -> impl Iterator<Item = (&u32, &Task)> {
        self.map.iter()
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    /// `awaited` counted afresh (tests check the kept counts against it).
    #[cfg(test)]
    fn recount(&self) -> Awaited {
        let mut a = Awaited::default();
        for t in self.map.values() {
            a.add(t.awaited());
        }
        a
    }
}

/// Most text a target may send in one continued Text Response (SendTargets
/// lists): a target that never stops continuing is cut off.
const MAX_TEXT: usize = 1 << 20;

/// Text Request/Response rounds a full-feature phase negotiation may take:
/// each of our answers settles every key offered, so a target that keeps
/// offering more is cut off.
const MAX_NEGOTIATION_ROUNDS: u8 = 4;

/// Whose text exchange is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextTask {
    /// Ours (SendTargets): the keys go out as `Event::Text`.
    Caller,
    /// One the target asked for (Asynchronous Message 4), `rounds` so far:
    /// the session settles it itself.
    Negotiation { rounds: u8 },
}

/// `a <= b` in 32-bit serial number arithmetic (RFC 1982).
fn sn_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 0x8000_0000
}

/// Whether task management `function` for `lun`, and for ABORT TASK the
/// command tagged `target`, covers the command `cmd_tag` on `cmd_lun`
/// (RFC 7143 11.5.1).
pub fn tmf_covers(
    function: TmfFunction,
    lun: [u8; 8],
    target: Option<u64>,
    cmd_lun: [u8; 8],
    cmd_tag: u64,
) -> bool {
    match function {
        TmfFunction::AbortTask => Some(cmd_tag) == target && cmd_lun == lun,
        TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet | TmfFunction::LogicalUnitReset => {
            cmd_lun == lun
        }
        TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => true,
        // CLEAR ACA ends no task; TASK REASSIGN moves one (ErrorRecovery
        // Level 2, never negotiated).
        TmfFunction::ClearAca | TmfFunction::TaskReassign => false,
    }
}

/// `a < b` in 32-bit serial number arithmetic.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && sn_le(a, b)
}

/// A PDU waiting to be sent. Write data is not copied into it: `data`
/// names the range of a command's buffer (ITT, tag, offset, length) that
/// becomes its data segment when it is encoded.
struct Outgoing {
    pdu: Pdu,
    data: Option<(u32, u64, usize, usize)>,
}

impl From<Pdu> for Outgoing {
    fn from(pdu: Pdu) -> Outgoing {
        Outgoing { pdu, data: None }
    }
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

    fn alloc_itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG && !self.tasks.contains_key(&itt) {
                return itt;
            }
        }
    }

    /// Whether the window lets a non-immediate command with `cmd_sn` go.
    fn window_open(&self) -> bool {
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

    /// Send what the window allows.
    fn pump(&mut self) {
        // Taken out while commands are encoded, so they are queued in place.
        let mut out = std::mem::take(&mut self.out);
        while self.window_open() {
            let Some(itt) = self.waiting.pop_front() else {
                break;
            };
            // A task that ended before it went out takes no CmdSN: a gap
            // would stall every later command at the target.
            let Some(t) = self.tasks.get(&itt) else {
                continue;
            };
            self.command_pdus(itt, t, &mut out);
            let solicitable = t.write.len() - self.unsolicited_len(t);
            let cmd_sn = self.cmd_sn;
            self.tasks.update(itt, |t| {
                t.sent = true;
                t.cmd_sn = cmd_sn;
                t.solicitable = solicitable;
            });
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        self.out = out;
    }

    /// Queue the SCSI Command PDU and any immediate / unsolicited data on
    /// `out`.
    fn command_pdus(&self, itt: u32, t: &Task, out: &mut VecDeque<Outgoing>) {
        let mut h = bhs::ScsiCommand::new();
        h.flags = bhs::ScsiCommand::ATTR_SIMPLE;
        if t.read_len > 0 {
            h.flags |= bhs::ScsiCommand::READ;
        }
        if !t.write.is_empty() {
            h.flags |= bhs::ScsiCommand::WRITE;
        }
        h.lun = t.lun;
        h.itt = itt.into();
        let edtl = if t.write.is_empty() {
            t.read_len
        } else {
            t.write.len() as u32
        };
        h.expected_data_transfer_length = edtl.into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        for (d, s) in h.cdb.iter_mut().zip(&t.cdb) {
            *d = *s;
        }
        let sent = self.immediate_len(t);
        let unsolicited_end = self.unsolicited_len(t);
        if sent >= unsolicited_end {
            // No unsolicited Data-Out follows.
            h.flags |= bhs::FINAL;
        }
        let mut p = Pdu::with_header(&h);
        if t.cdb.len() > 16 {
            // Extended CDB AHS (RFC 7143 11.3.5): type 1, length incl. reserved byte.
            let rest = &t.cdb[16..];
            let mut ahs = Vec::new();
            ahs.extend_from_slice(&((rest.len() + 1) as u16).to_be_bytes());
            ahs.push(1);
            ahs.push(0);
            ahs.extend_from_slice(rest);
            while ahs.len() % 4 != 0 {
                ahs.push(0);
            }
            p.ahs = ahs;
        }
        out.push_back(Outgoing {
            pdu: p,
            data: (sent > 0).then_some((itt, t.tag, 0, sent)),
        });
        if sent < unsolicited_end {
            out.extend(self.data_out(itt, t, sent, unsolicited_end - sent, RESERVED_TAG));
        }
    }

    /// Bytes of a command's write data sent as immediate data, in the
    /// command PDU (RFC 7143 3.2.4.2).
    fn immediate_len(&self, t: &Task) -> usize {
        if self.n.immediate_data {
            let mx = self.n.max_xmit_data_segment_length as usize;
            t.write
                .len()
                .min(self.n.first_burst_length as usize)
                .min(mx)
        } else {
            0
        }
    }

    /// Bytes of a command's write data sent unsolicited (immediate data and
    /// unsolicited Data-Out, within FirstBurstLength); the target asks for
    /// the rest with R2Ts.
    fn unsolicited_len(&self, t: &Task) -> usize {
        if self.n.initial_r2t {
            self.immediate_len(t)
        } else {
            t.write.len().min(self.n.first_burst_length as usize)
        }
    }

    /// Data-Out PDUs for `len` bytes from `offset` (RFC 7143 11.7).
    fn data_out(&self, itt: u32, t: &Task, offset: usize, len: usize, ttt: u32) -> Vec<Outgoing> {
        let mx = self.n.max_xmit_data_segment_length as usize;
        let end = (offset + len).min(t.write.len());
        let mut out = Vec::new();
        let mut at = offset;
        let mut data_sn = 0u32;
        while at < end {
            let n = (end - at).min(mx);
            let mut h = bhs::DataOut::new();
            if at + n >= end {
                h.flags = bhs::FINAL;
            }
            h.lun = t.lun;
            h.itt = itt.into();
            h.ttt = ttt.into();
            h.exp_stat_sn = self.exp_stat_sn.into();
            h.data_sn = data_sn.into();
            h.buffer_offset = (at as u32).into();
            out.push(Outgoing {
                pdu: Pdu::with_header(&h),
                data: Some((itt, t.tag, at, n)),
            });
            at += n;
            data_sn += 1;
        }
        out
    }

    /// The next PDU to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        while let Some(o) = self.out.pop_front() {
            match o.data {
                None => return Some(o.pdu),
                Some(range) => {
                    if let Some(d) = self.write_data(range) {
                        let mut p = o.pdu;
                        p.data = d;
                        return Some(p);
                    }
                }
            }
        }
        None
    }

    /// Queue every PDU waiting to be sent on `tx`, data segments straight
    /// from the commands' buffers (from a source, spliced in: no copy; a
    /// data digest is computed reading it in small pieces). A PDU that
    /// cannot be encoded (`PduError::SegmentTooLong`) ends the round with
    /// the error: the connection cannot go on.
    pub fn transmit_into(&mut self, dg: Digests, tx: &mut Gather) -> Result<(), PduError> {
        while let Some(o) = self.out.pop_front() {
            match o.data {
                None => o.pdu.encode_into(dg, tx.bytes())?,
                Some(range) => match self.write_chunk(range) {
                    Some(Chunk::Bytes(d)) => o.pdu.encode_with(d, dg, tx.bytes())?,
                    Some(Chunk::Source(src, at, n)) => {
                        o.pdu.encode_header(n, dg, tx.bytes())?;
                        // A small write: one copy into the transmit buffer
                        // costs less than a splice's iovecs. (A big one is
                        // spliced whatever its PDUs' size: targets often
                        // take 8 KiB segments.)
                        if src.0.size() < SPLICE_MIN && copy_segment(tx.bytes(), src, at, n, dg) {
                            continue;
                        }
                        // The digest is computed over the source as it is
                        // now; a guest changing a buffer it handed over
                        // draws a digest error at the target, and the
                        // command is retried on a new connection.
                        let digest = (dg.data && n > 0).then(|| source_digest(src, at, n));
                        tx.splice(src.clone(), at, n);
                        tx.bytes().extend_from_slice(padding(n));
                        if let Some(d) = digest {
                            tx.bytes().extend_from_slice(&d);
                        }
                    }
                    None => {}
                },
            }
        }
        Ok(())
    }

    /// The write data an outgoing PDU refers to, if its command still
    /// exists (one ended by task management sends nothing more).
    fn write_chunk(&self, (itt, tag, at, n): (u32, u64, usize, usize)) -> Option<Chunk<'_>> {
        let t = self.tasks.get(&itt).filter(|t| t.tag == tag)?;
        let end = at.checked_add(n)?;
        match &t.write {
            Payload::Bytes(v) => v.get(at..end).map(Chunk::Bytes),
            Payload::Source(s) => (end <= s.0.size()).then_some(Chunk::Source(s, at, n)),
        }
    }

    /// The write data an outgoing PDU refers to, in a buffer.
    fn write_data(&self, range: (u32, u64, usize, usize)) -> Option<Vec<u8>> {
        match self.write_chunk(range)? {
            Chunk::Bytes(d) => Some(d.to_vec()),
            Chunk::Source(src, at, n) => {
                let mut d = vec![0; n];
                src.0.read_at(at, &mut d).then_some(d)
            }
        }
    }

    /// NOP-Out ping (immediate; RFC 7143 11.18).
    pub fn ping(&mut self) {
        let itt = self.alloc_itt();
        let p = self.nop_out([0; 8], itt, RESERVED_TAG);
        self.out.push_back(p.into());
    }

    /// A NOP-Out (immediate): our ping (`ttt` reserved) or the answer to
    /// the target's (`itt` reserved).
    fn nop_out(&self, lun: [u8; 8], itt: u32, ttt: u32) -> Pdu {
        let mut h = bhs::NopOut::new();
        h.opcode |= bhs::IMMEDIATE;
        h.flags = bhs::FINAL;
        h.lun = lun;
        h.itt = itt.into();
        h.ttt = ttt.into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        Pdu::with_header(&h)
    }

    /// Text Request (SendTargets=All for discovery).
    pub fn text_request(&mut self, keys: &[(&str, &str)]) {
        let itt = self.alloc_itt();
        self.text = Some((itt, TextTask::Caller));
        self.send_text(itt, RESERVED_TAG, text::encode(keys));
    }

    /// A final (F) Text Request of task `itt`, continuing the target's
    /// `ttt` (RFC 7143 11.10; immediate, so it needs no CmdSN window).
    fn send_text(&mut self, itt: u32, ttt: u32, data: Vec<u8>) {
        let mut h = bhs::TextRequest::new();
        h.opcode |= bhs::IMMEDIATE;
        h.flags = bhs::FINAL;
        h.itt = itt.into();
        h.ttt = ttt.into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        let mut p = Pdu::with_header(&h);
        p.data = data;
        self.out.push_back(p.into());
    }

    /// Asynchronous Message 4: the target asks to negotiate. RFC 7143
    /// 11.9.1: answer with a Text Request, which may be empty, unless one
    /// is already pending.
    fn negotiation_requested(&mut self) {
        if self.text.is_none() {
            let itt = self.alloc_itt();
            self.text = Some((itt, TextTask::Negotiation { rounds: 0 }));
            self.send_text(itt, RESERVED_TAG, Vec::new());
        }
    }

    /// The target's final Text Response in a negotiation it asked for:
    /// apply what it declares, answer what it offers (`text::full_feature_keys`),
    /// and go on while it offers something or says it is not done (F=0).
    fn negotiation_answered(
        &mut self,
        p: &Pdu,
        keys: &[(String, String)],
        rounds: u8,
    ) -> Result<(), SessionError> {
        let f = text::full_feature_keys(keys).map_err(protocol)?;
        if let Some(n) = f.max_xmit_data_segment_length {
            self.n.max_xmit_data_segment_length = n;
        }
        let target_done = p.flags() & bhs::FINAL != 0;
        if f.answers.is_empty() && target_done {
            return Ok(());
        }
        if rounds + 1 >= MAX_NEGOTIATION_ROUNDS {
            return Err(protocol(format!(
                "a negotiation the target asked for took over {MAX_NEGOTIATION_ROUNDS} rounds"
            )));
        }
        self.text = Some((p.itt(), TextTask::Negotiation { rounds: rounds + 1 }));
        self.send_text(p.itt(), p.ttt(), text::encode(&f.answers));
        Ok(())
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

    /// Task management request (RFC 7143 11.5): `function` for `lun`
    /// (ABORT TASK: of the command tagged `target`). Commands in its scope still waiting for the CmdSN window
    /// never reached the target: they are dropped here and their tags
    /// returned. The request itself is sent (immediate) unless ABORT TASK
    /// has nothing left to abort at the target.
    pub fn task_management(
        &mut self,
        tag: u64,
        function: TmfFunction,
        lun: [u8; 8],
        target: Option<u64>,
    ) -> TmfStart {
        let in_scope =
            |t: &Task| t.tmf.is_none() && tmf_covers(function, lun, target, t.lun, t.tag);
        let unsent: Vec<u32> = self
            .waiting
            .iter()
            .copied()
            .filter(|itt| self.tasks.get(itt).is_some_and(in_scope))
            .collect();
        self.waiting.retain(|itt| !unsent.contains(itt));
        let aborted = unsent
            .iter()
            .filter_map(|itt| self.tasks.remove(itt))
            .map(|t| t.tag)
            .collect();
        let (ref_itt, ref_cmd_sn) = match self.tasks.iter().find(|(_, t)| in_scope(t)) {
            Some((&itt, t)) if function == TmfFunction::AbortTask => (itt, t.cmd_sn),
            None if function == TmfFunction::AbortTask => {
                return TmfStart {
                    sent: false,
                    aborted,
                }
            }
            _ => (RESERVED_TAG, self.cmd_sn),
        };
        let itt = self.alloc_itt();
        let mut h = bhs::TaskMgmtRequest::new();
        h.opcode |= bhs::IMMEDIATE;
        h.flags = bhs::FINAL | function as u8;
        h.lun = lun;
        h.itt = itt.into();
        h.referenced_task_tag = ref_itt.into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        h.ref_cmd_sn = ref_cmd_sn.into();
        let p = Pdu::with_header(&h);
        self.tasks.insert(
            itt,
            Task {
                tag,
                lun,
                cdb: Vec::new(),
                read_len: 0,
                write: Payload::Bytes(Vec::new()),
                data: Vec::new(),
                sink: None,
                received: 0,
                sent: true,
                solicitable: 0,
                cmd_sn: self.cmd_sn,
                tmf: Some(function),
                ref_itt,
            },
        );
        self.out.push_back(p.into());
        TmfStart {
            sent: true,
            aborted,
        }
    }

    /// The commands a task management function that completed terminated
    /// at the target: they get no response of their own (RFC 7143 4.2.3.3).
    fn terminated_by(&mut self, tmf: &Task, response: TmfAnswer) -> Vec<u64> {
        let Some(function) = tmf.tmf else {
            return Vec::new();
        };
        // Task does not exist: for ABORT TASK the target has no record of
        // it, so no answer will ever come.
        let done = match response {
            Ok(TmfResponse::FunctionComplete) => true,
            Ok(TmfResponse::TaskDoesNotExist) => function == TmfFunction::AbortTask,
            _ => false,
        };
        if !done {
            return Vec::new();
        }
        let hit: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(&itt, t)| {
                t.tmf.is_none()
                    && t.sent
                    && match function {
                        TmfFunction::AbortTask => itt == tmf.ref_itt,
                        // Commands sent before the TMF (its CmdSN is the
                        // next one, it being immediate).
                        TmfFunction::AbortTaskSet
                        | TmfFunction::ClearTaskSet
                        | TmfFunction::LogicalUnitReset => {
                            t.lun == tmf.lun && sn_lt(t.cmd_sn, tmf.cmd_sn)
                        }
                        TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                            sn_lt(t.cmd_sn, tmf.cmd_sn)
                        }
                        TmfFunction::ClearAca | TmfFunction::TaskReassign => false,
                    }
            })
            .map(|(&itt, _)| itt)
            .collect();
        hit.iter()
            .filter_map(|itt| self.tasks.remove(itt))
            .map(|t| t.tag)
            .collect()
    }

    /// Track StatSN and the command window from a target PDU.
    fn update_sn(&mut self, p: &Pdu, has_stat_sn: bool) {
        if has_stat_sn && sn_le(self.exp_stat_sn, p.stat_sn()) {
            self.exp_stat_sn = p.stat_sn().wrapping_add(1);
        }
        let (exp, max) = (p.exp_cmd_sn(), p.max_cmd_sn());
        // RFC 7143 4.2.2.1: ignore if MaxCmdSN < ExpCmdSN - 1.
        if sn_le(exp.wrapping_sub(1), max) {
            if sn_le(self.exp_cmd_sn, exp) {
                self.exp_cmd_sn = exp;
            }
            if sn_le(self.max_cmd_sn, max) {
                self.max_cmd_sn = max;
            }
        }
    }

    fn complete(
        &mut self,
        itt: u32,
        response: u8,
        status: u8,
        sense: Vec<u8>,
        residual: i64,
    ) -> Option<Event> {
        // A task management request ends with its own response only, and
        // a command once it has gone out: a target naming either otherwise
        // is not heard.
        if self
            .tasks
            .get(&itt)
            .is_none_or(|t| t.tmf.is_some() || !t.sent)
        {
            return None;
        }
        let t = self.tasks.remove(&itt)?;
        let mut data = t.data;
        data.truncate(t.received as usize);
        let placed = if t.sink.is_some() { t.received } else { 0 };
        Some(Event::Completed(Completion {
            tag: t.tag,
            response,
            status,
            sense,
            data,
            placed,
            residual,
        }))
    }

    fn residual(flags: u8, count: u32) -> i64 {
        if flags & bhs::RESIDUAL_OVERFLOW != 0 {
            -i64::from(count)
        } else if flags & bhs::RESIDUAL_UNDERFLOW != 0 {
            i64::from(count)
        } else {
            0
        }
    }

    /// Where the data segment of a Data-In whose header (BHS) is `bhs`
    /// may be received directly: the task's sink and the byte offset in
    /// it, if the task has one and the segment fits (otherwise the segment
    /// is received into a buffer and `receive` judges it). The PDU is then
    /// passed to `receive` with its data left empty.
    pub fn place(&self, bhs: &[u8]) -> Option<(SinkRef, usize)> {
        let p = Pdu::from_bhs(bhs)?;
        if p.opcode() != Some(Opcode::DataIn) {
            return None;
        }
        let h: bhs::DataIn = p.header();
        let t = self.tasks.get(&h.itt.to_native()).filter(|t| t.sent)?;
        let k = t.sink.as_ref()?;
        let offset = h.buffer_offset.to_native() as usize;
        offset
            .checked_add(p.data_segment_length())
            .filter(|&e| e <= t.read_len as usize && e <= k.0.size())?;
        Some((k.clone(), offset))
    }

    /// Handle one PDU from the target.
    pub fn receive(&mut self, p: Pdu) -> Result<Vec<Event>, SessionError> {
        let mut ev = Vec::new();
        self.receive_into(p, &mut ev)?;
        Ok(ev)
    }

    /// Handle one PDU from the target, adding what it brings about to `ev`
    /// (a receiver keeps one vector for a round of PDUs).
    pub fn receive_into(&mut self, mut p: Pdu, ev: &mut Vec<Event>) -> Result<(), SessionError> {
        let op = p.opcode().ok_or_else(|| protocol("unknown opcode"))?;
        match op {
            Opcode::DataIn => {
                let h: bhs::DataIn = p.header();
                let status_here = h.flags & bhs::DataIn::STATUS != 0;
                self.update_sn(&p, status_here);
                let itt = h.itt.to_native();
                let t = self
                    .tasks
                    .get_mut(&itt)
                    .filter(|t| t.sent)
                    .ok_or_else(|| protocol(format!("Data-In for unknown task {itt:#x}")))?;
                let offset = h.buffer_offset.to_native() as usize;
                // A segment whose data is missing from a PDU whose header
                // has some was received straight into the task's sink
                // (see `place`).
                let placed = p.data.is_empty() && p.data_segment_length() > 0;
                let len = if placed {
                    p.data_segment_length()
                } else {
                    p.data.len()
                };
                let end = offset
                    .checked_add(len)
                    .filter(|&e| e <= t.read_len as usize)
                    .ok_or_else(|| protocol("Data-In beyond the expected transfer length"))?;
                if let Some(k) = &t.sink {
                    // A closed sink (the command ended at our side) drops it.
                    if !placed {
                        k.0.write_at(offset, &p.data);
                    }
                } else if placed {
                    return Err(protocol("Data-In received into a missing buffer"));
                } else if offset == 0 && t.data.is_empty() {
                    // The usual first (often only) segment: keep its buffer.
                    t.data = std::mem::take(&mut p.data);
                    t.data.reserve_exact(t.read_len as usize - end);
                } else if offset == t.data.len() {
                    t.data.extend_from_slice(&p.data);
                } else {
                    if t.data.len() < end {
                        t.data.resize(end, 0);
                    }
                    t.data[offset..end].copy_from_slice(&p.data);
                }
                // `end` was checked against the transfer length above.
                let end = u32::try_from(end).unwrap_or(u32::MAX);
                self.tasks.update(itt, |t| t.received = t.received.max(end));
                if status_here {
                    let res = Self::residual(h.flags, h.residual_count.to_native());
                    ev.extend(self.complete(itt, 0, h.status, Vec::new(), res));
                }
            }
            Opcode::ScsiResponse => {
                self.update_sn(&p, true);
                let sense = match p.data.len() {
                    0 | 1 => Vec::new(),
                    _ => {
                        let n = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
                        p.data.get(2..2 + n).unwrap_or(&p.data[2..]).to_vec()
                    }
                };
                let h: bhs::ScsiResponse = p.header();
                let res = Self::residual(h.flags, h.residual_count.to_native());
                let itt = h.itt.to_native();
                ev.extend(self.complete(itt, h.response, h.status, sense, res));
            }
            Opcode::ReadyToTransfer => {
                self.update_sn(&p, false);
                let h: bhs::R2t = p.header();
                let itt = h.itt.to_native();
                let t = self
                    .tasks
                    .get(&itt)
                    .ok_or_else(|| protocol(format!("R2T for unknown task {itt:#x}")))?;
                let offset = h.buffer_offset.to_native() as usize;
                let len = h.desired_data_transfer_length.to_native() as usize;
                if offset.checked_add(len).is_none_or(|e| e > t.write.len()) {
                    return Err(protocol("R2T beyond the write data"));
                }
                if len > t.solicitable {
                    return Err(protocol(format!(
                        "R2T for {len} bytes of task {itt:#x}, which has {} left to ask for",
                        t.solicitable
                    )));
                }
                let pdus = self.data_out(itt, t, offset, len, h.ttt.to_native());
                self.out.extend(pdus);
                if let Some(t) = self.tasks.get_mut(&itt) {
                    t.solicitable -= len;
                }
            }
            Opcode::NopIn => {
                let h: bhs::NopIn = p.header();
                let (itt, ttt) = (h.itt.to_native(), h.ttt.to_native());
                self.update_sn(&p, itt != RESERVED_TAG);
                if ttt != RESERVED_TAG {
                    // The target pings us: answer with its TTT (RFC 7143 11.18).
                    let r = self.nop_out(h.lun, RESERVED_TAG, ttt);
                    self.out.push_back(r.into());
                }
                if itt != RESERVED_TAG {
                    ev.push(Event::Pong);
                }
            }
            Opcode::TextResponse => {
                self.update_sn(&p, true);
                if self.text_acc.len() + p.data.len() > MAX_TEXT {
                    return Err(protocol("Text Response longer than 1 MiB"));
                }
                self.text_acc.extend_from_slice(&p.data);
                let h: bhs::TextResponse = p.header();
                if h.flags & bhs::CONTINUE != 0 {
                    // Continue: ask for the rest with the target's TTT.
                    self.send_text(h.itt.to_native(), h.ttt.to_native(), Vec::new());
                } else {
                    let keys = text::parse(&std::mem::take(&mut self.text_acc));
                    let task = self.text.filter(|t| t.0 == p.itt()).map(|t| t.1);
                    if task.is_some() {
                        self.text = None;
                    }
                    match task {
                        Some(TextTask::Negotiation { rounds }) => {
                            self.negotiation_answered(&p, &keys, rounds)?
                        }
                        _ => ev.push(Event::Text(keys)),
                    }
                }
            }
            Opcode::AsyncMessage => {
                self.update_sn(&p, true);
                let h: bhs::AsyncMessage = p.header();
                match AsyncEvent::try_from(h.async_event) {
                    Ok(AsyncEvent::ScsiEvent) => {
                        // SenseLength, then the sense data (then iSCSI
                        // event data, not ours to interpret).
                        let n = usize::from(u16::from_be_bytes([
                            p.data.first().copied().unwrap_or(0),
                            p.data.get(1).copied().unwrap_or(0),
                        ]));
                        let sense = p
                            .data
                            .get(2..)
                            .map(|d| d[..n.min(d.len())].to_vec())
                            .unwrap_or_default();
                        ev.push(Event::ScsiEvent {
                            lun: p.lun(),
                            sense,
                        });
                    }
                    Ok(AsyncEvent::LogoutRequest) => ev.push(Event::LogoutRequested {
                        within_secs: h.parameter3.to_native(),
                    }),
                    Ok(AsyncEvent::ConnectionDrop | AsyncEvent::SessionDrop) => {
                        ev.push(Event::Dropping {
                            time2wait: h.parameter2.to_native(),
                        })
                    }
                    Ok(AsyncEvent::NegotiationRequest) => self.negotiation_requested(),
                    // Only with TaskReporting=FastAbort (RFC 7143 11.9.1),
                    // which we never negotiate: the target's view of our
                    // tasks is no longer ours, so the connection goes and
                    // the commands are retried on a new session.
                    Ok(AsyncEvent::TaskTermination) => {
                        return Err(protocol(
                            "task termination message without TaskReporting=FastAbort",
                        ))
                    }
                    // Vendor specific, or reserved: ignored.
                    Ok(AsyncEvent::VendorSpecific) | Err(_) => {}
                }
            }
            Opcode::Reject => {
                self.update_sn(&p, true);
                self.rejected(&p, ev)?;
            }
            Opcode::TaskMgmtResponse => {
                self.update_sn(&p, true);
                // Only a task management request's own ITT: a response
                // naming a command must not make it vanish unanswered.
                let tmf = self.tasks.get(&p.itt()).is_some_and(|t| t.tmf.is_some());
                if let Some(t) = tmf.then(|| self.tasks.remove(&p.itt())).flatten() {
                    let h: bhs::TaskMgmtResponse = p.header();
                    let response = TmfResponse::try_from(h.response);
                    let reset = t.tmf.is_some_and(TmfFunction::is_reset);
                    ev.extend(
                        self.terminated_by(&t, response)
                            .into_iter()
                            .map(|tag| Event::Terminated { tag, reset }),
                    );
                    ev.push(Event::TaskManagement {
                        tag: t.tag,
                        response,
                    });
                }
            }
            Opcode::LogoutResponse => {
                self.update_sn(&p, true);
                let h: bhs::LogoutResponse = p.header();
                ev.push(Event::LoggedOut {
                    response: h.response,
                });
            }
            other => {
                return Err(protocol(format!(
                    "unexpected {other:?} in full-feature phase"
                )))
            }
        }
        self.pump();
        Ok(())
    }

    /// A Reject (RFC 7143 11.17): the rejected PDU's header is its data
    /// segment. What it ends depends on what was rejected and why
    /// (11.17.1: a task the rejected PDU belonged to, once instantiated,
    /// still ends with the target's SCSI Response).
    fn rejected(&mut self, p: &Pdu, ev: &mut Vec<Event>) -> Result<(), SessionError> {
        let Some(bad) = Pdu::from_bhs(&p.data) else {
            return Ok(());
        };
        let h: bhs::Reject = p.header();
        let reason = RejectReason::try_from(h.reason);
        let (opcode, itt) = (bad.opcode(), bad.itt());
        if let Some(task) = self.text.filter(|t| t.0 == itt).map(|t| t.1) {
            self.text = None;
            self.text_acc.clear();
            // A refused negotiation ends it; a refused SendTargets would
            // otherwise leave its caller waiting for an answer.
            return match task {
                TextTask::Negotiation { .. } => Ok(()),
                TextTask::Caller => Err(protocol(format!(
                    "the target rejected our Text Request (reason {:#04x})",
                    h.reason
                ))),
            };
        }
        match (self.tasks.get(&itt).map(|t| t.tmf.is_some()), opcode) {
            // A rejected task management request: "function rejected"
            // (11.6.1), and nothing ended.
            (Some(true), _) => {
                if let Some(t) = self.tasks.remove(&itt) {
                    ev.push(Event::TaskManagement {
                        tag: t.tag,
                        response: Ok(TmfResponse::FunctionRejected),
                    });
                }
            }
            // Part of a command the target has: a Data-Out, or the
            // command's own immediate data failing its digest (7.8). The
            // target ends the task with a SCSI Response once the data it
            // still expects has come (11.17.1).
            (Some(false), Some(Opcode::DataOut)) => {}
            (Some(false), Some(Opcode::ScsiCommand))
                if reason == Ok(RejectReason::DataDigestError) => {}
            // Not run: the target waits for us to log out (11.9.1, event
            // 1). The command stays, to go again on the next session.
            (Some(false), Some(Opcode::ScsiCommand))
                if reason == Ok(RejectReason::WaitingForLogout) =>
            {
                ev.push(Event::LogoutRequested { within_secs: 0 });
            }
            // A command the target refused outright never became a task
            // there: it ends here, with a target failure.
            (Some(false), _) => ev.extend(self.complete(itt, 0x01, 0, Vec::new(), 0)),
            // Our NOP-Out ping, a Logout, or a task already ended.
            (None, _) => {}
        }
        Ok(())
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::iscsi::pdu::Digests;
    use std::io;
    use std::os::fd::RawFd;
    use std::sync::Arc;

    pub(crate) fn negotiated(immediate: bool, initial_r2t: bool, max_cmd_sn: u32) -> Negotiated {
        Negotiated {
            digests: Digests::default(),
            max_xmit_data_segment_length: 8192,
            max_recv_data_segment_length: 262144,
            max_burst_length: 262144,
            first_burst_length: 65536,
            initial_r2t,
            immediate_data: immediate,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 0,
            tsih: 1,
            cmd_sn: 10,
            exp_cmd_sn: 10,
            max_cmd_sn,
            exp_stat_sn: 5,
            chap: None,
            target_keys: vec![],
        }
    }

    fn drain(s: &mut Session) -> Vec<Pdu> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    const LUN: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

    #[test]
    fn commands_wait_for_the_cmd_sn_window() {
        // Window of 2 commands: CmdSN 10 and 11 (MaxCmdSN 11).
        let mut s = Session::new(negotiated(true, true, 11));
        for i in 0..4 {
            s.submit(i, LUN, [0x00; 6], Data::None);
        }
        let sent = drain(&mut s);
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[0].u32_at(24), sent[1].u32_at(24)), (10, 11));
        // The target completes the first and opens the window by one.
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80);
        r.set_itt(sent[0].itt());
        r.set_u32(24, 5);
        r.set_u32(28, 11);
        r.set_u32(32, 12);
        let ev = s.receive(r).unwrap();
        assert!(matches!(&ev[0], Event::Completed(c) if c.tag == 0 && c.status == 0));
        let next = drain(&mut s);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].u32_at(24), 12);
        assert_eq!(next[0].u32_at(28), 6); // ExpStatSN advanced
    }

    #[test]
    fn immediate_data_then_r2t_driven_data_out_in_mrdsl_chunks() {
        let mut s = Session::new(negotiated(true, true, 100));
        let data: Vec<u8> = (0..40000u32).map(|i| i as u8).collect();
        let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(data.clone()));
        let cmd = drain(&mut s);
        assert_eq!(cmd.len(), 1);
        // Immediate data up to min(FirstBurstLength, MRDSL) = 8192, F set
        // because InitialR2T=Yes forbids unsolicited Data-Out.
        assert_eq!(cmd[0].data.len(), 8192);
        assert_eq!(cmd[0].flags() & 0xe0, 0xa0);
        let mut r2t = Pdu::new(Opcode::ReadyToTransfer);
        r2t.set_flags(0x80);
        r2t.set_itt(itt);
        r2t.set_u32(20, 0x77);
        r2t.set_u32(40, 8192);
        r2t.set_u32(44, 40000 - 8192);
        s.receive(r2t).unwrap();
        let outs = drain(&mut s);
        assert_eq!(outs.len(), 4); // 31808 bytes in 8192-byte PDUs
        let mut off = 8192;
        for (i, p) in outs.iter().enumerate() {
            assert_eq!(p.opcode(), Some(Opcode::DataOut));
            assert_eq!(p.ttt(), 0x77);
            assert_eq!(p.u32_at(36), i as u32); // DataSN
            assert_eq!(p.u32_at(40), off as u32);
            assert_eq!(p.data[..], data[off..off + p.data.len()]);
            assert_eq!(p.flags() & 0x80 != 0, i == 3);
            off += p.data.len();
        }
        assert_eq!(off, 40000);
    }

    fn r2t(itt: u32, ttt: u32, offset: u32, len: u32) -> Pdu {
        let mut p = Pdu::new(Opcode::ReadyToTransfer);
        p.set_flags(0x80);
        p.set_itt(itt);
        p.set_u32(20, ttt);
        p.set_u32(40, offset);
        p.set_u32(44, len);
        p
    }

    #[test]
    fn a_target_cannot_ask_for_a_writes_data_twice() {
        // 40000 bytes, 8192 of them immediate: 31808 left to ask for, in
        // as many R2Ts as the target likes.
        let mut s = Session::new(negotiated(true, true, 100));
        let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![7; 40000]));
        drain(&mut s);
        s.receive(r2t(itt, 1, 8192, 16384)).unwrap();
        s.receive(r2t(itt, 2, 24576, 15424)).unwrap();
        assert_eq!(drain(&mut s).len(), 4);
        // Asking again (a loop of R2Ts would have the session send the
        // data again and again, faster than a slow reader drains it) ends
        // the connection, and the command is retried on the next one.
        let e = s.receive(r2t(itt, 3, 8192, 8192)).unwrap_err();
        assert!(e.to_string().contains("0 left"), "{e}");
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.take_unfinished().len(), 1);

        // Unsolicited data (InitialR2T=No) is not asked for either.
        let mut s = Session::new(negotiated(false, false, 100));
        let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 70000]));
        drain(&mut s);
        assert!(s.receive(r2t(itt, 1, 0, 70000)).is_err());
        let mut s = Session::new(negotiated(false, false, 100));
        let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 70000]));
        drain(&mut s);
        s.receive(r2t(itt, 1, 65536, 70000 - 65536)).unwrap();
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn unsolicited_data_out_fills_the_first_burst_when_initial_r2t_is_no() {
        let mut s = Session::new(negotiated(false, false, 100));
        s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 70000]));
        let pdus = drain(&mut s);
        // Command with F=0, then 65536 bytes of Data-Out (TTT reserved).
        assert_eq!(pdus[0].flags() & 0x80, 0);
        let total: usize = pdus[1..].iter().map(|p| p.data.len()).sum();
        assert_eq!(total, 65536);
        assert!(pdus[1..].iter().all(|p| p.ttt() == RESERVED_TAG));
        assert!(pdus.last().unwrap().flags() & 0x80 != 0);
    }

    #[test]
    fn data_in_with_status_completes_with_data_and_residual() {
        let mut s = Session::new(negotiated(true, true, 100));
        let itt = s.submit(7, LUN, [0x28; 10], Data::Read(1024));
        drain(&mut s);
        let mut d1 = Pdu::new(Opcode::DataIn);
        d1.set_itt(itt);
        d1.set_u32(40, 0);
        d1.data = vec![0xaa; 512];
        assert!(s.receive(d1).unwrap().is_empty());
        let mut d2 = Pdu::new(Opcode::DataIn);
        d2.set_flags(0x80 | 0x02 | 0x01); // F, U, S
        d2.set_itt(itt);
        d2.set_u32(24, 5);
        d2.set_u32(40, 512);
        d2.set_u32(44, 256);
        d2.data = vec![0xbb; 256];
        let ev = s.receive(d2).unwrap();
        let Event::Completed(c) = &ev[0] else {
            panic!()
        };
        assert_eq!(
            (c.tag, c.status, c.residual, c.data.len()),
            (7, 0, 256, 768)
        );
    }

    /// A sink in memory; `read_from` is the Reader's business, not the
    /// session's.
    struct MemSink(std::sync::Mutex<Vec<u8>>);

    impl Sink for MemSink {
        fn size(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        fn write_at(&self, offset: usize, data: &[u8]) -> bool {
            let mut b = self.0.lock().unwrap();
            b[offset..offset + data.len()].copy_from_slice(data);
            true
        }
        fn read_from(
            &self,
            _: RawFd,
            _: usize,
            _: usize,
            _: &mut [u8],
        ) -> Option<io::Result<usize>> {
            None
        }
        fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
            buf.copy_from_slice(&self.0.lock().unwrap()[offset..offset + buf.len()]);
            true
        }
    }

    /// A received Data-In header with `len` bytes of data announced.
    fn data_in_header(itt: u32, offset: u32, len: u32, flags: u8) -> Pdu {
        let mut d = Pdu::new(Opcode::DataIn);
        d.set_flags(flags);
        d.set_itt(itt);
        d.set_u32(40, offset);
        d.bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
        d
    }

    #[test]
    fn data_in_goes_to_the_sink_whether_placed_or_copied() {
        let mut s = Session::new(negotiated(true, true, 100));
        let sink = Arc::new(MemSink(std::sync::Mutex::new(vec![0; 1024])));
        let itt = s.submit(7, LUN, [0x28; 10], Data::ReadInto(SinkRef(sink.clone())));
        drain(&mut s);
        // Only Data-In for this task, within its length, may be placed.
        let h = data_in_header(itt, 512, 512, 0);
        assert_eq!(s.place(&h.bhs).map(|(_, at)| at), Some(512));
        assert!(s.place(&data_in_header(itt, 768, 512, 0).bhs).is_none());
        assert!(s.place(&data_in_header(itt + 1, 0, 512, 0).bhs).is_none());
        let mut other = h.clone();
        other.bhs[0] = Opcode::ScsiResponse as u8;
        assert!(s.place(&other.bhs).is_none());
        // First half copied by the session, second half placed (no data).
        let mut d1 = data_in_header(itt, 0, 512, 0);
        d1.data = vec![0xaa; 512];
        assert!(s.receive(d1).unwrap().is_empty());
        sink.0.lock().unwrap()[512..].fill(0xbb);
        let ev = s.receive(data_in_header(itt, 512, 512, 0x81)).unwrap();
        let Event::Completed(c) = &ev[0] else {
            panic!()
        };
        assert_eq!((c.placed, c.data.len(), c.residual), (1024, 0, 0));
        let b = sink.0.lock().unwrap();
        assert!(b[..512].iter().all(|&x| x == 0xaa) && b[512..].iter().all(|&x| x == 0xbb));
    }

    /// Tasks out, small ones among them, data-in still due.
    fn out(s: &Session) -> (usize, usize, usize) {
        let a = s.awaited();
        (a.tasks, a.small, a.data)
    }

    #[test]
    fn awaited_follows_the_window_data_in_completions_aborts_and_retries() {
        // Window of four commands: CmdSN 10 to 13.
        let mut s = Session::new(negotiated(true, true, 13));
        let a = s.submit(1, LUN, [0x28; 10], Data::Read(4096));
        s.submit(2, LUN, [0x28; 10], Data::Read(1024));
        s.submit(3, LUN, [0x2a; 10], Data::Write(vec![0; 512]));
        drain(&mut s);
        assert_eq!(out(&s), (3, 3, 5120));
        // Data-In (in order, as negotiated) counts once per byte, whether
        // copied or placed; a resent PDU does not count again.
        let mut d = data_in_header(a, 0, 1024, 0);
        d.data = vec![1; 1024];
        s.receive(d.clone()).unwrap();
        s.receive(d).unwrap();
        assert_eq!(out(&s), (3, 3, 4096));
        s.receive(data_in_header(a, 1024, 1024, 0)).ok();
        assert_eq!(out(&s), (3, 3, 4096), "placed into a task without a sink");
        let mut d = data_in_header(a, 1024, 1024, 0);
        d.data = vec![1; 1024];
        s.receive(d).unwrap();
        assert_eq!(out(&s), (3, 3, 3072));
        // Status with less data than asked: what did not come is not due.
        let mut d = data_in_header(a, 2048, 1024, 0x83);
        d.data = vec![1; 1024];
        s.receive(d).unwrap();
        assert_eq!(out(&s), (2, 2, 1024));
        // A big read; a command the window holds back is not awaited
        // until it goes.
        s.submit(4, LUN, [0x28; 10], Data::Read(BIG_READ));
        s.submit(5, LUN, [0x28; 10], Data::Read(100));
        assert_eq!(out(&s), (3, 2, 66560));
        // An ABORT TASK SET drops the unsent command at once and, once
        // complete, the commands it terminated at the target.
        s.task_management(9, TmfFunction::AbortTaskSet, LUN, None);
        assert_eq!(out(&s), (4, 3, 66560));
        let tmf = drain(&mut s).pop().unwrap();
        let mut r = Pdu::new(Opcode::TaskMgmtResponse);
        r.set_flags(0x80);
        r.set_itt(tmf.itt());
        r.set_u32(28, 14);
        r.set_u32(32, 20);
        s.receive(r).unwrap();
        assert_eq!(out(&s), (0, 0, 0));
        // Commands taken for a retry on a new session are not awaited here.
        s.submit(6, LUN, [0x28; 10], Data::Read(512));
        assert_eq!(out(&s), (1, 1, 512));
        s.take_unfinished();
        assert_eq!(out(&s), (0, 0, 0));
    }

    #[test]
    fn least_due_is_the_read_closest_to_done_with_the_headers_it_still_needs() {
        // Window of three commands; segments of at most 256 KiB.
        let mut s = Session::new(negotiated(true, true, 12));
        assert_eq!(s.least_due(), None, "nothing out");
        let a = s.submit(1, LUN, [0x28; 10], Data::Read(1 << 20));
        s.submit(2, LUN, [0x28; 10], Data::Read(1 << 20));
        drain(&mut s);
        // 1 MiB: four segments at least, the first one's header may be
        // here already: three more headers.
        assert_eq!(s.least_due(), Some((1 << 20) + 3 * 48));
        // 768 KiB of the first arrive: 256 KiB and no header left.
        for at in [0, 256, 512] {
            let mut d = data_in_header(a, at << 10, 256 << 10, 0);
            d.data = vec![0; 256 << 10];
            s.receive(d).unwrap();
        }
        assert_eq!(s.least_due(), Some(256 << 10));
        // A small command out: no figure (its answer is not data).
        s.submit(3, LUN, [0x00; 6], Data::None);
        drain(&mut s);
        assert_eq!(s.least_due(), None);
        // With both digests a header costs 56 bytes.
        let mut n = negotiated(true, true, 12);
        n.digests = Digests {
            header: true,
            data: true,
        };
        let mut s = Session::new(n);
        s.submit(1, LUN, [0x28; 10], Data::Read(BIG_READ));
        s.submit(2, LUN, [0x28; 10], Data::Read(600 << 10));
        drain(&mut s);
        assert_eq!(s.least_due(), Some(BIG_READ as usize));
    }

    #[test]
    fn placed_data_in_for_a_task_without_a_sink_is_a_protocol_error() {
        let mut s = Session::new(negotiated(true, true, 100));
        let itt = s.submit(1, LUN, [0x28; 10], Data::Read(1024));
        drain(&mut s);
        assert!(s.place(&data_in_header(itt, 0, 512, 0).bhs).is_none());
        assert!(s.receive(data_in_header(itt, 0, 512, 0)).is_err());
    }

    #[test]
    fn a_resent_read_keeps_its_sink() {
        let mut s = Session::new(negotiated(true, true, 100));
        let k = SinkRef(Arc::new(MemSink(std::sync::Mutex::new(vec![0; 64]))));
        s.submit(1, LUN, [0x28; 10], Data::ReadInto(k.clone()));
        let again = s.take_unfinished();
        assert_eq!(again[0].3, Data::ReadInto(k));
    }

    #[test]
    fn check_condition_carries_the_sense_unchanged() {
        let mut s = Session::new(negotiated(true, true, 100));
        let itt = s.submit(3, LUN, [0x00; 6], Data::None);
        drain(&mut s);
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80);
        r.set_byte(3, 0x02);
        r.set_itt(itt);
        r.data = vec![
            0, 18, 0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0,
        ];
        let ev = s.receive(r).unwrap();
        let Event::Completed(c) = &ev[0] else {
            panic!()
        };
        assert_eq!(c.status, 0x02);
        assert_eq!(c.sense.len(), 18);
        assert_eq!(c.sense[12], 0x29);
    }

    #[test]
    fn target_nop_in_ping_is_answered_with_its_ttt() {
        let mut s = Session::new(negotiated(true, true, 100));
        let mut n = Pdu::new(Opcode::NopIn);
        n.set_itt(RESERVED_TAG);
        n.set_u32(20, 0x1234);
        s.receive(n).unwrap();
        let out = drain(&mut s);
        assert_eq!(out[0].opcode(), Some(Opcode::NopOut));
        assert_eq!((out[0].itt(), out[0].ttt()), (RESERVED_TAG, 0x1234));
    }

    #[test]
    fn data_in_past_the_expected_length_is_a_protocol_error() {
        let mut s = Session::new(negotiated(true, true, 100));
        let itt = s.submit(1, LUN, [0x28; 10], Data::Read(512));
        drain(&mut s);
        let mut d = Pdu::new(Opcode::DataIn);
        d.set_itt(itt);
        d.set_u32(40, 256);
        d.data = vec![0; 512];
        assert!(s.receive(d).is_err());
    }

    #[test]
    fn r2t_for_an_unknown_task_is_a_protocol_error() {
        let mut s = Session::new(negotiated(true, true, 100));
        let mut r = Pdu::new(Opcode::ReadyToTransfer);
        r.set_itt(99);
        assert!(s.receive(r).is_err());
    }

    #[test]
    fn async_logout_request_is_reported() {
        let mut s = Session::new(negotiated(true, true, 100));
        let mut a = Pdu::new(Opcode::AsyncMessage);
        a.set_byte(36, 1);
        a.set_u16(42, 5);
        assert_eq!(
            s.receive(a).unwrap(),
            vec![Event::LogoutRequested { within_secs: 5 }]
        );
    }

    /// An Asynchronous Message with `event` and Parameter1-3 (RFC 7143
    /// 11.9: bytes 36, 38, 40, 42).
    fn async_message(event: u8, params: [u16; 3]) -> Pdu {
        let mut a = Pdu::new(Opcode::AsyncMessage);
        a.set_flags(0x80);
        a.set_itt(RESERVED_TAG);
        a.set_byte(36, event);
        a.set_u16(38, params[0]);
        a.set_u16(40, params[1]);
        a.set_u16(42, params[2]);
        a
    }

    /// The target's final Text Response to task `itt`: `done` sets F.
    fn text_response(itt: u32, ttt: u32, done: bool, keys: &[(&str, &str)]) -> Pdu {
        let mut r = Pdu::new(Opcode::TextResponse);
        r.set_flags(if done { 0x80 } else { 0 });
        r.set_itt(itt);
        r.set_u32(20, ttt);
        r.data = text::encode(keys);
        r
    }

    #[test]
    fn a_drop_announcement_reports_its_time2wait_from_parameter2() {
        let mut s = Session::new(negotiated(true, true, 100));
        // Event 3 (all connections), Parameter2 Time2Wait 7, Parameter3
        // Time2Retain 20.
        let ev = s.receive(async_message(3, [0, 7, 20])).unwrap();
        assert_eq!(ev, vec![Event::Dropping { time2wait: 7 }]);
        let ev = s.receive(async_message(2, [1, 0, 0])).unwrap();
        assert_eq!(ev, vec![Event::Dropping { time2wait: 0 }]);
    }

    #[test]
    fn a_negotiation_request_is_answered_with_an_empty_text_request() {
        let mut s = Session::new(negotiated(true, true, 100));
        assert_eq!(s.receive(async_message(4, [0, 0, 5])).unwrap(), vec![]);
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        let t = &out[0];
        assert_eq!(t.opcode(), Some(Opcode::TextRequest));
        assert_eq!(t.bhs[0] & 0x40, 0x40, "immediate");
        assert_eq!(t.flags() & 0x80, 0x80, "final");
        assert_eq!(t.ttt(), RESERVED_TAG);
        assert!(t.data.is_empty());
        // The target has nothing to negotiate after all: done, no event.
        let ev = s
            .receive(text_response(t.itt(), RESERVED_TAG, true, &[]))
            .unwrap();
        assert_eq!(ev, vec![]);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_negotiation_request_while_a_text_request_is_pending_sends_nothing_more() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.text_request(&[("SendTargets", "All")]);
        let itt = drain(&mut s)[0].itt();
        s.receive(async_message(4, [0, 0, 5])).unwrap();
        assert!(drain(&mut s).is_empty());
        // The pending request's answer still goes to the caller.
        let ev = s
            .receive(text_response(
                itt,
                RESERVED_TAG,
                true,
                &[("TargetName", "iqn.x")],
            ))
            .unwrap();
        assert_eq!(
            ev,
            vec![Event::Text(vec![("TargetName".into(), "iqn.x".into())])]
        );
    }

    #[test]
    fn a_max_recv_data_segment_length_declared_after_login_cuts_later_data_outs() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.receive(async_message(4, [0, 0, 5])).unwrap();
        let itt = drain(&mut s)[0].itt();
        let ev = s
            .receive(text_response(
                itt,
                RESERVED_TAG,
                true,
                &[("MaxRecvDataSegmentLength", "4096")],
            ))
            .unwrap();
        assert_eq!(ev, vec![]);
        assert!(drain(&mut s).is_empty(), "a declaration needs no answer");
        // Immediate data and solicited Data-Out now come in 4096 bytes.
        let w = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![3; 12288]));
        assert_eq!(drain(&mut s)[0].data.len(), 4096);
        s.receive(r2t(w, 0x10, 4096, 8192)).unwrap();
        let outs = drain(&mut s);
        assert_eq!(
            outs.iter().map(|p| p.data.len()).collect::<Vec<_>>(),
            vec![4096, 4096]
        );
    }

    #[test]
    fn offers_after_login_are_answered_in_the_same_task_with_the_targets_ttt() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.receive(async_message(4, [0, 0, 5])).unwrap();
        let itt = drain(&mut s)[0].itt();
        // F=0: the target is not done, and offers a login-only key.
        s.receive(text_response(
            itt,
            0x55,
            false,
            &[("MaxBurstLength", "65536")],
        ))
        .unwrap();
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].opcode(), Some(Opcode::TextRequest));
        assert_eq!((out[0].itt(), out[0].ttt()), (itt, 0x55));
        assert_eq!(
            text::parse(&out[0].data),
            vec![("MaxBurstLength".into(), "Reject".into())]
        );
        // The value negotiated at login stands.
        assert_eq!(s.n.max_burst_length, 262144);
        s.receive(text_response(itt, RESERVED_TAG, true, &[]))
            .unwrap();
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_target_that_never_ends_a_negotiation_is_a_protocol_error() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.receive(async_message(4, [0, 0, 5])).unwrap();
        let mut itt = drain(&mut s)[0].itt();
        let mut failed = false;
        for _ in 0..MAX_NEGOTIATION_ROUNDS {
            let r = text_response(itt, 0x9, false, &[("X-more", "1")]);
            if s.receive(r).is_err() {
                failed = true;
                break;
            }
            itt = drain(&mut s)[0].itt();
        }
        assert!(failed);
    }

    #[test]
    fn an_out_of_range_declaration_after_login_is_a_protocol_error() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.receive(async_message(4, [0, 0, 5])).unwrap();
        let itt = drain(&mut s)[0].itt();
        let r = text_response(
            itt,
            RESERVED_TAG,
            true,
            &[("MaxRecvDataSegmentLength", "1")],
        );
        assert!(s.receive(r).is_err());
    }

    #[test]
    fn a_task_termination_message_without_fast_abort_is_a_protocol_error() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(1, LUN, [0x28; 10], Data::Read(512));
        drain(&mut s);
        assert!(s.receive(async_message(5, [0, 0, 0])).is_err());
    }

    #[test]
    fn vendor_and_reserved_async_events_are_ignored() {
        let mut s = Session::new(negotiated(true, true, 100));
        for event in [6, 100, 255] {
            assert_eq!(s.receive(async_message(event, [1, 2, 3])).unwrap(), vec![]);
        }
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn endless_text_continuation_is_a_protocol_error() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.text_request(&[("SendTargets", "All")]);
        drain(&mut s);
        let mut failed = false;
        for _ in 0..40 {
            let mut r = Pdu::new(Opcode::TextResponse);
            r.set_flags(0x40); // C: more to come
            r.data = vec![b'x'; 65536];
            if s.receive(r).is_err() {
                failed = true;
                break;
            }
            drain(&mut s);
        }
        assert!(failed);
    }

    #[test]
    fn lun_reset_request_and_response() {
        let mut s = Session::new(negotiated(true, true, 100));
        let start = s.task_management(9, TmfFunction::LogicalUnitReset, LUN, None);
        assert!(start.sent && start.aborted.is_empty());
        let out = drain(&mut s);
        let itt = out[0].itt();
        assert_eq!(out[0].opcode(), Some(Opcode::TaskMgmtRequest));
        assert_eq!(out[0].bhs[0] & 0x40, 0x40); // immediate
        assert_eq!(out[0].flags(), 0x85); // F + LOGICAL UNIT RESET
        assert_eq!(out[0].lun(), LUN);
        let mut r = Pdu::new(Opcode::TaskMgmtResponse);
        r.set_itt(itt);
        r.set_byte(2, 0);
        assert_eq!(
            s.receive(r).unwrap(),
            vec![Event::TaskManagement {
                tag: 9,
                response: Ok(TmfResponse::FunctionComplete)
            }]
        );
        // Not a SCSI command: nothing to retry.
        assert!(s.take_unfinished().is_empty());
    }

    #[test]
    fn unfinished_commands_can_be_taken_for_retry() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 512]));
        s.submit(2, LUN, [0x28; 10], Data::Read(512));
        let v = s.take_unfinished();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0, 1);
        assert_eq!(s.in_flight(), 0);
    }
    /// Write data in memory of its own, handed out as iovecs.
    pub(crate) struct MemSource(pub Vec<u8>);

    impl Source for MemSource {
        fn size(&self) -> usize {
            self.0.len()
        }
        fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
            match self.0.get(offset..offset + buf.len()) {
                Some(d) => {
                    buf.copy_from_slice(d);
                    true
                }
                None => false,
            }
        }
        fn iovecs(&self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) -> bool {
            let Some(d) = self.0.get(offset..offset + len) else {
                return false;
            };
            out.push(libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            });
            true
        }
    }

    #[test]
    fn transmit_into_encodes_what_poll_transmit_returns() {
        for digest in [false, true] {
            let dg = Digests {
                header: digest,
                data: digest,
            };
            // How: 0 poll_transmit, 1 transmit_into, 2 transmit_into from
            // a source (spliced; a data digest computed in pieces).
            let run = |how: u8| {
                let mut s = Session::new(negotiated(true, false, 100));
                // One write spliced from its source, one copied from it.
                for (tag, len) in [(1, 100_001u32), (3, 4_097)] {
                    let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                    let w = if how == 2 {
                        Data::WriteFrom(SourceRef(Arc::new(MemSource(data))))
                    } else {
                        Data::Write(data)
                    };
                    s.submit(tag, LUN, [0x2a; 10], w);
                }
                s.submit(2, LUN, [0x28; 10], Data::Read(512));
                if how == 0 {
                    let mut out = Vec::new();
                    while let Some(p) = s.poll_transmit() {
                        out.extend_from_slice(&p.encode(dg).unwrap());
                    }
                    (out, 0)
                } else {
                    let mut tx = Gather::default();
                    s.transmit_into(dg, &mut tx).unwrap();
                    (tx.contiguous(), tx.spliced())
                }
            };
            let (want, _) = run(0);
            assert!(want.len() > 65536);
            assert!(run(1) == (want.clone(), 0));
            // The big write's unsolicited data (FirstBurstLength, in 8 KiB
            // PDUs) is spliced; the small write is copied.
            assert!(run(2) == (want, 65536), "from a source, digests {digest}");
        }
    }

    /// A source whose memory cannot be read (never the case for a guest
    /// buffer checked when its command was taken).
    struct Unreadable;

    impl Source for Unreadable {
        fn size(&self) -> usize {
            100
        }
        fn read_at(&self, _: usize, _: &mut [u8]) -> bool {
            false
        }
        fn iovecs(&self, _: usize, _: usize, _: &mut Vec<libc::iovec>) -> bool {
            false
        }
    }

    #[test]
    fn a_small_write_that_cannot_be_read_is_never_sent_as_zeros() {
        for data in [false, true] {
            let dg = Digests {
                header: false,
                data,
            };
            let mut s = Session::new(negotiated(true, false, 100));
            s.submit(
                1,
                LUN,
                [0x2a; 10],
                Data::WriteFrom(SourceRef(Arc::new(Unreadable))),
            );
            let mut tx = Gather::default();
            s.transmit_into(dg, &mut tx).unwrap();
            // Left to the splice, whose sending fails (and the connection
            // is recovered): nothing made up goes to the target.
            assert_eq!(tx.spliced(), 100);
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            let e = tx
                .write_to(std::os::fd::AsRawFd::as_raw_fd(&a))
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[test]
    fn data_out_of_a_command_that_ended_is_not_sent() {
        let mut s = Session::new(negotiated(false, true, 100));
        s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 4096]));
        let cmd = drain(&mut s).remove(0);
        let mut r2t = Pdu::new(Opcode::ReadyToTransfer);
        r2t.set_itt(cmd.itt());
        r2t.set_u32(20, 0x99);
        r2t.set_u32(44, 4096);
        s.receive(r2t).unwrap();
        // The task goes away (the connection is given up) before the
        // Data-Out is encoded: nothing refers to freed data.
        s.take_unfinished();
        let mut tx = Gather::default();
        s.transmit_into(Digests::default(), &mut tx).unwrap();
        assert!(tx.is_empty());
    }

    fn tmf_response(itt: u32, response: u8) -> Pdu {
        let mut r = Pdu::new(Opcode::TaskMgmtResponse);
        r.set_itt(itt);
        r.set_byte(2, response);
        r
    }

    #[test]
    fn abort_task_refers_to_the_command_and_terminates_it() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(1, LUN, [0x28; 10], Data::Read(512));
        s.submit(2, LUN, [0x28; 10], Data::Read(512));
        let cmds = drain(&mut s);
        let start = s.task_management(50, TmfFunction::AbortTask, LUN, Some(2));
        assert_eq!(
            start,
            TmfStart {
                sent: true,
                aborted: vec![]
            }
        );
        let tmf = drain(&mut s).remove(0);
        assert_eq!(tmf.flags(), 0x81);
        assert_eq!(tmf.u32_at(20), cmds[1].itt()); // Referenced Task Tag
        assert_eq!(tmf.u32_at(32), 11); // RefCmdSN: the command's CmdSN
        assert_eq!(tmf.u32_at(24), 12); // CmdSN: the next one
        assert_eq!(
            s.receive(tmf_response(tmf.itt(), 0)).unwrap(),
            vec![
                Event::Terminated {
                    tag: 2,
                    reset: false
                },
                Event::TaskManagement {
                    tag: 50,
                    response: Ok(TmfResponse::FunctionComplete)
                }
            ]
        );
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn a_task_management_request_ends_only_with_its_own_response_or_a_reject() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(1, LUN, [0x28; 10], Data::Read(512));
        drain(&mut s);
        s.task_management(50, TmfFunction::LogicalUnitReset, LUN, None);
        let tmf = drain(&mut s).remove(0);
        // A SCSI Response and a Data-In with status naming the request's
        // ITT do not end it (nor turn it into a command's completion).
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80);
        r.set_itt(tmf.itt());
        assert!(s.receive(r).unwrap().is_empty());
        let d = data_in_header(tmf.itt(), 0, 0, 0x81);
        assert!(s.receive(d).unwrap().is_empty());
        assert_eq!(s.in_flight(), 2);
        // A Reject of it: "function rejected", and no command ended.
        let mut rj = Pdu::new(Opcode::Reject);
        rj.set_flags(0x80);
        rj.set_byte(2, 0x09); // invalid PDU field
        rj.data = tmf.bhs.to_vec();
        assert_eq!(
            s.receive(rj).unwrap(),
            vec![Event::TaskManagement {
                tag: 50,
                response: Ok(TmfResponse::FunctionRejected)
            }]
        );
        assert_eq!(s.in_flight(), 1);
        // Its response, should one still come, finds nothing.
        assert!(s.receive(tmf_response(tmf.itt(), 0)).unwrap().is_empty());
    }

    /// A Reject with `reason` of the PDU whose header is `rejected`.
    fn reject(reason: u8, rejected: &Pdu) -> Pdu {
        let mut rj = Pdu::new(Opcode::Reject);
        rj.set_flags(0x80);
        rj.set_itt(RESERVED_TAG);
        rj.set_byte(2, reason);
        rj.data = rejected.bhs.to_vec();
        rj
    }

    #[test]
    fn a_rejected_data_out_leaves_its_command_to_the_targets_response() {
        let mut s = Session::new(negotiated(true, true, 100));
        let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 16384]));
        drain(&mut s);
        s.receive(r2t(itt, 0x20, 8192, 8192)).unwrap();
        let data_out = drain(&mut s).remove(0);
        assert_eq!(data_out.opcode(), Some(Opcode::DataOut));
        // Data digest error (02h): the target discards the PDU and ends
        // the task itself (RFC 7143 11.17.1).
        assert_eq!(s.receive(reject(0x02, &data_out)).unwrap(), vec![]);
        assert_eq!(s.in_flight(), 1);
        // Its CHECK CONDITION ends the command, sense and all.
        let sense = vec![0x70, 0, 0x0b, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x47, 0x05];
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80);
        r.set_itt(itt);
        r.set_byte(3, 0x02);
        r.data = (sense.len() as u16).to_be_bytes().to_vec();
        r.data.extend_from_slice(&sense);
        let ev = s.receive(r).unwrap();
        let Event::Completed(c) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!((c.tag, c.response, c.status), (1, 0, 0x02));
        assert_eq!(c.sense, sense);
    }

    #[test]
    fn a_command_whose_immediate_data_failed_its_digest_is_not_ended_by_the_reject() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 4096]));
        let cmd = drain(&mut s).remove(0);
        assert_eq!(s.receive(reject(0x02, &cmd)).unwrap(), vec![]);
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn a_command_rejected_outright_ends_as_a_target_failure() {
        for reason in [0x04, 0x05, 0x09, 0x0a] {
            let mut s = Session::new(negotiated(true, true, 100));
            s.submit(7, LUN, [0x28; 10], Data::Read(512));
            let cmd = drain(&mut s).remove(0);
            let ev = s.receive(reject(reason, &cmd)).unwrap();
            assert!(
                matches!(&ev[..], [Event::Completed(c)] if c.tag == 7 && c.response == 0x01),
                "reason {reason:#x}: {ev:?}"
            );
            assert_eq!(s.in_flight(), 0);
        }
    }

    #[test]
    fn a_command_rejected_while_the_target_waits_for_a_logout_is_kept_for_the_next_session() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(7, LUN, [0x28; 10], Data::Read(512));
        let cmd = drain(&mut s).remove(0);
        let ev = s.receive(reject(0x0c, &cmd)).unwrap();
        assert_eq!(ev, vec![Event::LogoutRequested { within_secs: 0 }]);
        let again = s.take_unfinished();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, 7);
    }

    #[test]
    fn a_rejected_send_targets_is_an_error_and_a_rejected_negotiation_just_ends() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.text_request(&[("SendTargets", "All")]);
        let req = drain(&mut s).remove(0);
        assert!(s.receive(reject(0x05, &req)).is_err());

        let mut s = Session::new(negotiated(true, true, 100));
        s.receive(async_message(4, [0, 0, 5])).unwrap();
        let req = drain(&mut s).remove(0);
        assert_eq!(s.receive(reject(0x04, &req)).unwrap(), vec![]);
        // Over: the next request is answered afresh.
        s.receive(async_message(4, [0, 0, 5])).unwrap();
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn a_short_reject_or_one_naming_nothing_ends_nothing() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(7, LUN, [0x28; 10], Data::Read(512));
        let cmd = drain(&mut s).remove(0);
        let mut short = reject(0x04, &cmd);
        short.data.truncate(20);
        assert_eq!(s.receive(short).unwrap(), vec![]);
        let mut ping = Pdu::new(Opcode::NopOut);
        ping.set_itt(0x1234_5678);
        assert_eq!(s.receive(reject(0x04, &ping)).unwrap(), vec![]);
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn answers_naming_a_command_not_sent_yet_do_not_end_it_or_skip_its_cmd_sn() {
        // Window of one command (CmdSN 10): the second waits.
        let mut s = Session::new(negotiated(true, true, 10));
        s.submit(1, LUN, [0x28; 10], Data::Read(512));
        let sink = Arc::new(MemSink(std::sync::Mutex::new(vec![0; 512])));
        let waiting = s.submit(2, LUN, [0x28; 10], Data::ReadInto(SinkRef(sink)));
        drain(&mut s);
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80);
        r.set_itt(waiting);
        assert!(s.receive(r).unwrap().is_empty());
        let d = data_in_header(waiting, 0, 512, 0x81);
        assert_eq!(s.place(&d.bhs), None);
        assert!(s.receive(d).is_err());
        let mut s = Session::new(negotiated(true, true, 10));
        s.submit(1, LUN, [0x28; 10], Data::Read(512));
        let waiting = s.submit(2, LUN, [0x28; 10], Data::Read(512));
        let first = drain(&mut s).remove(0);
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80);
        r.set_itt(waiting);
        assert!(s.receive(r).unwrap().is_empty());
        // The first one's answer opens the window: the second goes out with
        // the next CmdSN, not one past it.
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80);
        r.set_itt(first.itt());
        r.set_u32(28, 11);
        r.set_u32(32, 11);
        assert_eq!(s.receive(r).unwrap().len(), 1);
        let next = drain(&mut s);
        assert_eq!((next[0].itt(), next[0].u32_at(24)), (waiting, 11));
    }

    #[test]
    fn a_task_management_response_naming_a_command_leaves_it_be() {
        let mut s = Session::new(negotiated(true, true, 100));
        let itt = s.submit(1, LUN, [0x28; 10], Data::Read(512));
        drain(&mut s);
        assert!(s.receive(tmf_response(itt, 0)).unwrap().is_empty());
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn abort_of_a_command_not_sent_yet_is_local() {
        // The window admits one command: the second waits.
        let mut s = Session::new(negotiated(true, true, 10));
        s.submit(1, LUN, [0x28; 10], Data::Read(512));
        s.submit(2, LUN, [0x28; 10], Data::Read(512));
        assert_eq!(drain(&mut s).len(), 1);
        assert_eq!(
            s.task_management(50, TmfFunction::AbortTask, LUN, Some(2)),
            TmfStart {
                sent: false,
                aborted: vec![2]
            }
        );
        // Unknown task: nothing to do anywhere.
        assert_eq!(
            s.task_management(51, TmfFunction::AbortTask, LUN, Some(7)),
            TmfStart {
                sent: false,
                aborted: vec![]
            }
        );
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn lun_reset_terminates_earlier_commands_of_that_lun_only() {
        let other = [0, 2, 0, 0, 0, 0, 0, 0];
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(1, LUN, [0x28; 10], Data::Read(512));
        s.submit(2, other, [0x28; 10], Data::Read(512));
        drain(&mut s);
        assert!(
            s.task_management(50, TmfFunction::LogicalUnitReset, LUN, None)
                .sent
        );
        let tmf = drain(&mut s).remove(0);
        // A command after the reset is not affected by it.
        s.submit(3, LUN, [0x28; 10], Data::Read(512));
        assert_eq!(
            s.receive(tmf_response(tmf.itt(), 0)).unwrap(),
            vec![
                Event::Terminated {
                    tag: 1,
                    reset: true
                },
                Event::TaskManagement {
                    tag: 50,
                    response: Ok(TmfResponse::FunctionComplete)
                }
            ]
        );
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn a_rejected_function_terminates_nothing() {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(1, LUN, [0x28; 10], Data::Read(512));
        drain(&mut s);
        s.task_management(50, TmfFunction::AbortTaskSet, LUN, None);
        let tmf = drain(&mut s).remove(0);
        assert_eq!(
            s.receive(tmf_response(tmf.itt(), 5)).unwrap(),
            vec![Event::TaskManagement {
                tag: 50,
                response: Ok(TmfResponse::NotSupported)
            }]
        );
        assert_eq!(s.in_flight(), 1);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Target opcodes, so that most generated PDUs reach the handlers.
        const TARGET_OPS: [u8; 10] = [0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f];

        fn target_pdu() -> impl Strategy<Value = Pdu> {
            (
                0..TARGET_OPS.len(),
                proptest::collection::vec(any::<u8>(), 48),
                proptest::collection::vec(any::<u8>(), 0..300),
                0u32..8,
                (any::<bool>(), 0u32..8192, any::<bool>()),
            )
                .prop_map(|(op, bhs, data, itt, (plausible, offset, placed))| {
                    let mut p = Pdu::new(Opcode::from_u8(TARGET_OPS[op]).unwrap_or(Opcode::NopIn));
                    p.bhs[1..].copy_from_slice(&bhs[1..]);
                    // Mostly the ITTs of the commands in flight.
                    if itt < 7 {
                        p.set_itt(itt + 1);
                    }
                    // Half within the commands' buffers, as received data
                    // (placed: announced by the header, not in the PDU).
                    if plausible {
                        p.set_u32(40, offset);
                        let len = data.len() as u32;
                        p.bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
                        if placed {
                            return p;
                        }
                    }
                    p.data = data;
                    p
                })
        }

        proptest! {
            /// Whatever a target sends, the session answers with events or
            /// a protocol error, never a panic; and what it gives back for
            /// retry is consistent.
            #[test]
            fn receive_never_panics(pdus in proptest::collection::vec(target_pdu(), 1..12)) {
                let mut s = Session::new(negotiated(true, false, 100));
                s.submit(1, LUN, [0x28; 10], Data::Read(4096));
                s.submit(2, LUN, [0x2a; 10], Data::Write(vec![1; 70000]));
                s.submit(3, LUN, [0; 6], Data::None);
                let sink = Arc::new(MemSink(std::sync::Mutex::new(vec![0; 8192])));
                s.submit(6, LUN, [0x28; 10], Data::ReadInto(SinkRef(sink)));
                s.task_management(4, TmfFunction::LogicalUnitReset, LUN, None);
                s.task_management(5, TmfFunction::AbortTask, LUN, Some(1));
                let mut ended = Vec::new();
                for p in pdus {
                    let _ = drain(&mut s);
                    // What the Reader would ask before receiving the data.
                    let _ = s.place(&p.bhs);
                    let r = s.receive(p);
                    // The counts receive coalescing relies on stay exact.
                    prop_assert_eq!(s.awaited(), s.tasks.recount());
                    let Ok(events) = r else {
                        break;
                    };
                    for e in events {
                        match e {
                            Event::Completed(c) => {
                                prop_assert!(!matches!(c.tag, 4 | 5), "{}", c.tag);
                                ended.push(c.tag);
                            }
                            Event::Terminated { tag, .. } => ended.push(tag),
                            // Task management requests end as such only.
                            Event::TaskManagement { tag, .. } => {
                                prop_assert!(tag == 4 || tag == 5, "{}", tag);
                                ended.push(tag);
                            }
                            _ => {}
                        }
                    }
                }
                // Commands end as commands, each once at most.
                prop_assert!(ended.iter().all(|t| matches!(t, 1..=6)), "{:?}", ended);
                let mut once = ended.clone();
                once.sort_unstable();
                once.dedup();
                prop_assert_eq!(once.len(), ended.len(), "{:?}", ended);
                let _ = drain(&mut s);
                let again = s.take_unfinished();
                prop_assert_eq!(s.awaited(), Awaited::default());
                prop_assert!(again.iter().all(|c| matches!(c.0, 1..=3 | 6)));
                prop_assert_eq!(s.in_flight(), 0);
            }
        }
    }
}
