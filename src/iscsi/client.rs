// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The asynchronous driver used to serve iSCSI LUNs to guests. The sans-IO
//! session and the sending half of its TCP connection sit behind one lock:
//! a request-queue worker submitting a command encodes it and writes it to
//! the socket itself, without waking another thread. One thread per session
//! owns the receiving half: it decodes the target's PDUs outside the lock,
//! feeds them to the session, and runs each finished command's callback
//! (which completes the request in guest memory directly). That is two
//! thread wake-ups per command, the minimum with a guest kick on one side
//! and a socket on the other.
//!
//! A broken connection (I/O error, protocol error, target gone) is retried
//! with backoff: a new session is logged in with the same ISID and TSIH 0
//! (session reinstatement, RFC 7143 6.3.5) and every unfinished command is
//! sent again, so an acknowledged write is never lost and the guest sees at
//! worst a delay.
//!
//! Some targets (tgt) tie persistent reservation registrations to the
//! session, so after reinstatement the guest's registration belongs to a dead
//! nexus and its writes conflict. The client remembers the key and
//! reservation type that went through successfully (`PrMemory`) and, before
//! resending anything, re-registers the key (REGISTER AND IGNORE EXISTING
//! KEY) and takes the reservation back from the stale registration (PREEMPT
//! with the same key and type).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::conn::{Connection, Error};
use super::login::LoginParams;
use super::pdu::{self, Digests, Pdu};
use super::session::{Completion, Data, Event, Session};
use super::url::portal_address;

/// Why a command did not complete at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The daemon is shutting down.
    Shutdown,
    /// Task management aborted it (at the target, or before it got there).
    Aborted,
    /// A LUN reset or an I_T nexus reset ended it.
    Reset,
    /// No session could be re-established within the recovery timeout.
    Timeout,
}

/// How long commands wait for a lost session by default (open-iscsi's
/// replacement_timeout has the same default).
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Client behaviour beyond the login parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Fail commands (`Failure::Timeout`) that have waited this long for a
    /// new session after a connection loss, and fail new ones at once
    /// while the target stays unreachable past it. None: wait forever.
    pub recovery_timeout: Option<Duration>,
    /// Ask the target (SendTargets, after the first login) for its other
    /// portals and fail over to them too.
    pub discover_portals: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            recovery_timeout: Some(DEFAULT_RECOVERY_TIMEOUT),
            discover_portals: true,
        }
    }
}

/// Unit attentions from asynchronous events kept per session at most (the
/// oldest are dropped: a target flooding events cannot grow memory).
const MAX_EVENTS: usize = 16;

/// The portals the target reports for itself, through a discovery session
/// on `addr`. Discovery is a convenience: a failure is only logged.
fn discovered_portals(name: &str, addr: &str, params: &LoginParams) -> Vec<String> {
    let Some(target) = params.target_name.clone() else {
        return Vec::new();
    };
    let mut p = params.clone();
    p.target_name = None;
    // A session of its own, not a reinstatement of the normal one.
    p.isid[5] ^= 0x80;
    p.header_digest = false;
    p.data_digest = false;
    let list = Connection::login(addr, p, LOGIN_TIMEOUT).and_then(|mut c| {
        let t = c.send_targets();
        let _ = c.logout();
        t
    });
    match list {
        Ok(list) => list
            .into_iter()
            .filter(|(t, _)| *t == target)
            .flat_map(|(_, portals)| portals)
            .filter_map(|a| portal_address(&a))
            .collect(),
        Err(e) => {
            debug!("iSCSI {name}: no portal discovery through {addr}: {e}");
            Vec::new()
        }
    }
}

/// Work a completion leaves for the end of its batch, done once per `key`
/// however many completions of the batch asked for it (one guest
/// notification per virtqueue instead of one per command).
pub struct Deferred {
    pub key: usize,
    pub run: Box<dyn FnOnce() + Send>,
}

pub type Callback = Box<dyn FnOnce(Result<Completion, Failure>) -> Option<Deferred> + Send>;

/// Run callbacks, then their deferred work once per key.
fn complete_all(results: impl IntoIterator<Item = (Callback, Result<Completion, Failure>)>) {
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
    pub lun: [u8; 8],
    pub cdb: Vec<u8>,
    pub data: Data,
    pub done: Callback,
}

/// What this nexus holds at the target, from the PR OUT commands that
/// succeeded through the session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrMemory {
    pub lun: [u8; 8],
    pub key: Option<u64>,
    pub reservation: Option<u8>,
}

impl PrMemory {
    /// Account for a PERSISTENT RESERVE OUT that completed with GOOD.
    pub fn observe(&mut self, lun: [u8; 8], cdb: &[u8], param: &[u8]) {
        if cdb.first() != Some(&0x5f) || param.len() < 24 {
            return;
        }
        let sa_key = u64::from_be_bytes(param[8..16].try_into().unwrap_or_default());
        let ty = cdb.get(2).map_or(0, |b| b & 0x0f);
        self.lun = lun;
        match cdb.get(1).map_or(0xff, |b| b & 0x1f) {
            // REGISTER, REGISTER AND IGNORE EXISTING KEY
            0x00 | 0x06 => {
                self.key = (sa_key != 0).then_some(sa_key);
                if sa_key == 0 {
                    self.reservation = None;
                }
            }
            0x01 | 0x04 | 0x05 => self.reservation = Some(ty),
            0x02 => self.reservation = None,
            0x03 => {
                *self = PrMemory {
                    lun,
                    ..PrMemory::default()
                }
            }
            // REGISTER AND MOVE hands the reservation to another nexus.
            0x07 => {
                self.reservation = None;
                if param.get(17).is_some_and(|b| b & 0x02 != 0) {
                    self.key = None;
                }
            }
            _ => {}
        }
    }

    /// The commands that re-establish this state on a new session.
    pub fn restore(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(key) = self.key else {
            return Vec::new();
        };
        let param = |rk: u64, sark: u64| {
            let mut p = rk.to_be_bytes().to_vec();
            p.extend_from_slice(&sark.to_be_bytes());
            p.extend_from_slice(&[0; 8]);
            p
        };
        let mut v = vec![(vec![0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], param(0, key))];
        if let Some(t) = self.reservation {
            v.push((vec![0x5f, 0x04, t, 0, 0, 0, 0, 0, 24, 0], param(key, key)));
        }
        v
    }
}

/// A PERSISTENT RESERVE OUT in flight: LUN, CDB, parameter list.
type PrOut = ([u8; 8], Vec<u8>, Vec<u8>);

/// A command to send (again): tag, LUN, CDB, data.
type Cmd = (u64, [u8; 8], Vec<u8>, Data);

/// Tags above this are the client's own commands (PR restoration).
const INTERNAL_TAG: u64 = u64::MAX - 1024;

/// Handle to one session; cheap to clone.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    pub name: Arc<str>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the session thread: shutdown, bytes left to send, or a broken
    /// connection seen by a submitter.
    wake: EventFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Time between a NOP-Out keepalive and the next, when idle.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// No answer to a keepalive for this long: the target is dead.
const DEAD_AFTER: Duration = Duration::from_secs(15);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// A target that does not answer task management for this long is
/// treated as dead (the connection is dropped and the commands recovered).
const TMF_TIMEOUT: Duration = Duration::from_secs(30);
/// Tags of our task management requests: above the restoration tag.
const TMF_TAGS: u64 = 1000;
/// Transmit buffer capacity kept between bursts.
const TX_KEEP: usize = 256 * 1024;

impl Client {
    /// Log in through the first portal that answers (a failure on all of
    /// them is reported: the configuration is wrong or the target is down at
    /// start), then serve from a thread. On a connection loss the current
    /// portal is retried first, then the others in turn.
    pub fn start(
        name: &str,
        portals: Vec<String>,
        params: LoginParams,
        options: Options,
    ) -> Result<Client, Error> {
        let mut last = None;
        let mut found = None;
        for (i, addr) in portals.iter().enumerate() {
            match Connection::login(addr, params.clone(), LOGIN_TIMEOUT) {
                Ok(c) => {
                    found = Some((i, c));
                    break;
                }
                // A refused login is final; an unreachable portal is not.
                Err(e @ Error::Login(_)) => return Err(e),
                Err(e) => {
                    warn!("iSCSI {name}: portal {addr}: {e}");
                    last = Some(e);
                }
            }
        }
        let Some((current, conn)) = found else {
            return Err(last.unwrap_or(Error::Closed));
        };
        let mut portals = portals;
        info!("iSCSI {name}: logged in to {}", portals[current]);
        if let Some(moved) = conn.moved_to.clone() {
            info!(
                "iSCSI {name}: using {moved} instead of {} from now on",
                portals[current]
            );
            portals[current] = moved;
        }
        if options.discover_portals {
            for p in discovered_portals(name, &portals[current], &params) {
                if !portals.contains(&p) {
                    info!("iSCSI {name}: the target also has portal {p}");
                    portals.push(p);
                }
            }
        }
        let (reader, writer) = split(conn)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                writer: Some(writer),
                recovery: options.recovery_timeout,
                ..State::default()
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        });
        let client = Client {
            shared: shared.clone(),
            name: name.into(),
        };
        let mut thread = SessionThread {
            name: name.into(),
            shared,
            portals,
            current,
            params,
        };
        std::thread::Builder::new()
            .name("iscsi".into())
            .spawn(move || thread.run(reader))?;
        Ok(client)
    }

    /// Send a command. The caller's thread writes it to the socket when the
    /// session is up (no hand-off to another thread); `done` runs on the
    /// session thread when the answer arrives, or on the caller's thread if
    /// the client is shutting down.
    pub fn submit(&self, lun: [u8; 8], cdb: &[u8], data: Data, done: Callback) {
        self.submit_all([Request {
            id: u64::MAX,
            lun,
            cdb: cdb.to_vec(),
            data,
            done,
        }]);
    }

    /// Send several commands with one write to the socket.
    pub fn submit_all(&self, requests: impl IntoIterator<Item = Request>) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let refuse = if st.stopping {
            Some(Failure::Shutdown)
        } else if st.writer.is_none() && st.past_recovery(st.down_since) {
            // Unreachable for longer than the recovery timeout: fail fast
            // until a session is back.
            Some(Failure::Timeout)
        } else {
            None
        };
        if let Some(f) = refuse {
            drop(guard);
            complete_all(requests.into_iter().map(|r| (r.done, Err(f))));
            return;
        }
        let mut up =
            st.restoring.is_empty() && st.writer.as_ref().is_some_and(|w| w.broken.is_none());
        let mut now = Vec::new();
        for r in requests {
            if let Some(sense) = st.take_event(r.lun, &r.cdb) {
                let c = Completion {
                    tag: 0,
                    response: 0,
                    status: 2,
                    sense,
                    data: Vec::new(),
                    residual: 0,
                };
                now.push((r.done, Ok(c)));
                continue;
            }
            let tag = st.next_tag;
            st.next_tag = (st.next_tag + 1) % INTERNAL_TAG;
            let lost_at = if st.writer.is_none() {
                st.down_since
            } else {
                None
            };
            st.pending.insert(
                tag,
                Pending {
                    done: r.done,
                    lun: r.lun,
                    id: r.id,
                    lost_at,
                },
            );
            if let (Some(0x5f), Data::Write(p)) = (r.cdb.first(), &r.data) {
                st.pr_out.insert(tag, (r.lun, r.cdb.clone(), p.clone()));
            }
            match st.writer.as_mut() {
                Some(w) if up => {
                    w.session.submit(tag, r.lun, &r.cdb, r.data);
                }
                _ => {
                    up = false;
                    st.held.push((tag, r.lun, r.cdb, r.data));
                }
            }
        }
        if up && !st.writer.as_mut().is_some_and(Writer::flush) {
            let _ = self.shared.wake.write(1);
        }
        drop(guard);
        complete_all(now);
    }

    /// Run a task management function (RFC 7143 11.5 function codes) on
    /// this session's commands for `lun`: 1 ABORT TASK (of the command
    /// submitted with `id`), 2 ABORT TASK SET, 3 CLEAR ACA, 4 CLEAR TASK
    /// SET, 5 LOGICAL UNIT RESET. Commands that are not at the target (not
    /// sent yet, or waiting for a lost session) are aborted here; the
    /// others by the target. Returns the iSCSI response (0: function
    /// complete, 1: no such task, 5: not supported, ...) once every command
    /// the function ended has completed with `Failure::Aborted` (`Reset`
    /// for a LUN reset). A target
    /// that does not answer within `TMF_TIMEOUT` loses the connection, and
    /// the commands are aborted here.
    pub fn task_management(&self, function: u8, lun: [u8; 8], id: Option<u64>) -> u8 {
        let why = if function == 5 {
            Failure::Reset
        } else {
            Failure::Aborted
        };
        loop {
            let (rx, aborted) = {
                let mut guard = self.shared.lock();
                if guard.writer.as_ref().is_some_and(|w| w.broken.is_some()) {
                    // The session thread is about to recover the commands
                    // from the broken connection: abort them after that.
                    drop(guard);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let st = &mut *guard;
                if st.stopping {
                    return 0;
                }
                let target = id.and_then(|id| {
                    st.pending
                        .iter()
                        .find(|(_, p)| p.id == id && p.lun == lun)
                        .map(|(&tag, _)| tag)
                });
                if function == 1 && target.is_none() {
                    return 1;
                }
                let mut aborted = Vec::new();
                let in_scope = |c: &Cmd| match function {
                    1 => Some(c.0) == target,
                    2 | 4 | 5 => c.1 == lun,
                    _ => false,
                };
                let (gone, kept): (Vec<Cmd>, Vec<Cmd>) =
                    std::mem::take(&mut st.held).into_iter().partition(in_scope);
                st.held = kept;
                for c in gone {
                    st.abort_here(c.0, why, &mut aborted);
                }
                let mut rx = None;
                if let (Some(w), true) = (st.writer.as_mut(), st.restoring.is_empty()) {
                    let tag = INTERNAL_TAG + 1 + st.next_tmf;
                    st.next_tmf = (st.next_tmf + 1) % TMF_TAGS;
                    let start = w.session.task_management(tag, function, lun, target);
                    if start.sent {
                        let (tx, r) = mpsc::channel();
                        st.tmf_waiters.insert(tag, tx);
                        rx = Some(r);
                        if !w.flush() {
                            let _ = self.shared.wake.write(1);
                        }
                    }
                    for t in start.aborted {
                        st.abort_here(t, why, &mut aborted);
                    }
                }
                (rx, aborted)
            };
            complete_all(aborted);
            let Some(rx) = rx else {
                return 0;
            };
            match rx.recv_timeout(TMF_TIMEOUT) {
                Ok(response) => return response,
                // The connection was lost: its commands are held now.
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    warn!(
                        "iSCSI {}: no answer to task management for {TMF_TIMEOUT:?}",
                        self.name
                    );
                    if let Some(w) = self.shared.lock().writer.as_mut() {
                        w.broken
                            .get_or_insert_with(|| "task management timed out".into());
                    }
                    let _ = self.shared.wake.write(1);
                }
            }
        }
    }

    /// I_T NEXUS RESET: close the session (the target ends its tasks when
    /// the session is reinstated, RFC 7143 6.3.5), abort every command of
    /// this client, and log in again at once.
    pub fn reset_nexus(&self) {
        let aborted = {
            let mut st = self.shared.lock();
            let st = &mut *st;
            if let Some(w) = st.writer.as_mut() {
                w.session.logout();
                w.flush();
            }
            st.link_down();
            let mut aborted = Vec::new();
            for c in std::mem::take(&mut st.held) {
                st.abort_here(c.0, Failure::Reset, &mut aborted);
            }
            st.reconnect_now = true;
            aborted
        };
        info!("iSCSI {}: I_T nexus reset: session closed", self.name);
        let _ = self.shared.wake.write(1);
        complete_all(aborted);
    }

    /// Whether two handles drive the same session.
    pub fn same_session(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Fail everything pending and stop (daemon shutdown).
    pub fn shutdown(&self) {
        // Answered here, not by the session thread, which may be blocked
        // in a login to a target that does not answer.
        let pending = {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.held.clear();
            std::mem::take(&mut st.pending)
        };
        let _ = self.shared.wake.write(1);
        complete_all(
            pending
                .into_values()
                .map(|p| (p.done, Err(Failure::Shutdown))),
        );
    }
}

/// The sending half of a live connection and its session, used under the
/// state lock by whichever thread has something to send.
struct Writer {
    stream: TcpStream,
    session: Session,
    digests: Digests,
    tx: Vec<u8>,
    sent: usize,
    /// Why a write failed; the session thread then reconnects.
    broken: Option<String>,
}

impl Writer {
    /// Encode what the session has to send and write what the socket takes
    /// without blocking; true when nothing is left over.
    fn flush(&mut self) -> bool {
        self.session.transmit_into(self.digests, &mut self.tx);
        while self.sent < self.tx.len() {
            match (&self.stream).write(&self.tx[self.sent..]) {
                Ok(0) => {
                    self.broken = Some("connection closed".into());
                    return false;
                }
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = Some(e.to_string());
                    return false;
                }
            }
        }
        self.tx.clear();
        self.tx.shrink_to(TX_KEEP);
        self.sent = 0;
        true
    }

    fn pending(&self) -> bool {
        self.sent < self.tx.len()
    }
}

/// The receiving half, owned by the session thread: reads and decodes
/// without holding the state lock.
struct Reader {
    stream: TcpStream,
    digests: Digests,
    max_data: usize,
    /// Bytes received; those before `head` are decoded already.
    rx: Vec<u8>,
    head: usize,
    /// A PDU with a big data segment, being read into its own buffer.
    direct: Option<Direct>,
}

/// The header of a PDU whose data segment (padded, with its digest) is read
/// straight into `payload`, which then becomes the PDU's data: a 1 MiB
/// Data-In is not copied out of the receive buffer.
struct Direct {
    header: Vec<u8>,
    payload: Vec<u8>,
    len: usize,
}

/// Bytes read from the socket per round before decoding.
const READ_ROUND: usize = 1 << 20;
/// Room made in the receive buffer for each read.
const READ_CHUNK: usize = 256 * 1024;
/// Data segments at least this long are read into their own buffer.
const DIRECT_MIN: usize = 64 * 1024;

/// read(2) up to `max` bytes onto the end of `buf`.
fn read_some(fd: i32, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let spare = &mut buf.spare_capacity_mut()[..max];
    // SAFETY: the kernel writes at most `max` bytes into the vector's
    // unused capacity (at least `max` long after the reserve).
    let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), max) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel wrote `n` bytes after the old length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

impl Reader {
    /// Read what is there (up to `READ_ROUND`) and decode every whole PDU
    /// into `out`. On an error, the PDUs decoded before it are in `out` too.
    fn read(&mut self, out: &mut Vec<Pdu>) -> Result<(), Error> {
        let fd = self.stream.as_raw_fd();
        let mut result = Ok(());
        let mut got = 0;
        while got < READ_ROUND {
            let r = match self.direct.as_mut() {
                Some(d) => {
                    let want = d.len - d.payload.len();
                    read_some(fd, &mut d.payload, want)
                }
                None => read_some(fd, &mut self.rx, READ_CHUNK),
            };
            match r {
                Ok(0) => {
                    result = Err(Error::Closed);
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
            if let Err(e) = self.decode(out) {
                result = Err(e);
                break;
            }
        }
        // Drop what was decoded: free when everything was, otherwise move
        // the partial PDU to the front once it is worth it.
        if self.head == self.rx.len() {
            self.rx.clear();
            self.rx.shrink_to(READ_ROUND + READ_CHUNK);
            self.head = 0;
        } else if self.head >= READ_CHUNK {
            self.rx.drain(..self.head);
            self.head = 0;
        }
        result
    }

    /// Decode every whole PDU received; start reading a big data segment
    /// into its own buffer once its header is in.
    fn decode(&mut self, out: &mut Vec<Pdu>) -> Result<(), Error> {
        let dg = self.digests;
        if let Some(d) = self.direct.take_if(|d| d.payload.len() == d.len) {
            out.push(pdu::decode_split(&d.header, d.payload, dg)?);
        }
        if self.direct.is_some() {
            return Ok(());
        }
        loop {
            let buf = &self.rx[self.head..];
            let Some(l) = pdu::layout(buf, dg, self.max_data)? else {
                return Ok(());
            };
            if buf.len() >= l.total {
                let payload = buf[l.header..l.total].to_vec();
                out.push(pdu::decode_split(&buf[..l.header], payload, dg)?);
                self.head += l.total;
            } else if l.data >= DIRECT_MIN && buf.len() >= l.header {
                // Everything after `head` belongs to this PDU.
                let len = l.total - l.header;
                let mut payload = Vec::with_capacity(len);
                payload.extend_from_slice(&buf[l.header..]);
                self.direct = Some(Direct {
                    header: buf[..l.header].to_vec(),
                    payload,
                    len,
                });
                self.rx.clear();
                self.head = 0;
                return Ok(());
            } else {
                return Ok(());
            }
        }
    }
}

/// Split a logged-in connection into its two halves (non-blocking).
fn split(conn: Connection) -> io::Result<(Reader, Writer)> {
    let (stream, rx, digests, max_data, session) = conn.into_parts();
    stream.set_nonblocking(true)?;
    let reader = Reader {
        stream: stream.try_clone()?,
        digests,
        max_data,
        rx,
        head: 0,
        direct: None,
    };
    let writer = Writer {
        stream,
        session,
        digests,
        tx: Vec::new(),
        sent: 0,
        broken: None,
    };
    Ok((reader, writer))
}

/// A command the client has to answer.
struct Pending {
    done: Callback,
    lun: [u8; 8],
    id: u64,
    /// When a connection loss first caught it (recovery timeout).
    lost_at: Option<Instant>,
}

/// A callback and what to tell it.
type Answer = (Callback, Result<Completion, Failure>);

/// Everything about the session that submitters and the session thread
/// share.
#[derive(Default)]
struct State {
    stopping: bool,
    /// None while the connection is down.
    writer: Option<Writer>,
    /// Since when the connection is down.
    down_since: Option<Instant>,
    recovery: Option<Duration>,
    /// Set by an I_T nexus reset: log in again without a backoff.
    reconnect_now: bool,
    /// Guest commands not answered yet, by tag.
    pending: HashMap<u64, Pending>,
    tmf_waiters: HashMap<u64, mpsc::Sender<u8>>,
    next_tmf: u64,
    /// Sense data of SCSI asynchronous events (RFC 7143 11.9.1), by LUN:
    /// each is reported once, as a unit attention, to the next command for
    /// that LUN (SAM-5 6.6: the alternative to asynchronous event reporting).
    events: Vec<([u8; 8], Vec<u8>)>,
    /// PR OUT commands in flight, to learn from when they succeed.
    pr_out: HashMap<u64, PrOut>,
    pr: PrMemory,
    /// Internal commands still to run after a reinstatement.
    restoring: Vec<(Vec<u8>, Vec<u8>)>,
    internal_tries: u32,
    /// Guest commands not in the session: the connection is down, or they
    /// wait for the restoration to finish.
    held: Vec<Cmd>,
    next_tag: u64,
}

impl State {
    /// The connection is gone: keep every unfinished guest command for the
    /// next session (our own are re-derived from `pr`).
    fn link_down(&mut self) {
        let now = Instant::now();
        self.down_since.get_or_insert(now);
        if let Some(mut w) = self.writer.take() {
            let mut again = w.session.take_unfinished();
            again.retain(|c| c.0 < INTERNAL_TAG);
            again.append(&mut self.held);
            self.held = again;
        }
        for c in &self.held {
            if let Some(p) = self.pending.get_mut(&c.0) {
                p.lost_at.get_or_insert(now);
            }
        }
        self.restoring.clear();
        // Task management waiting for an answer learns that none will come.
        self.tmf_waiters.clear();
    }

    /// Whether a loss at `since` is older than the recovery timeout.
    fn past_recovery(&self, since: Option<Instant>) -> bool {
        matches!((self.recovery, since), (Some(limit), Some(t)) if t.elapsed() >= limit)
    }

    /// The unit attention to report instead of running `cdb` on `lun`, if
    /// an asynchronous event left one. INQUIRY, REPORT LUNS and REQUEST
    /// SENSE do not report unit attentions (SAM-5 5.14).
    fn take_event(&mut self, lun: [u8; 8], cdb: &[u8]) -> Option<Vec<u8>> {
        if matches!(cdb.first(), Some(0x12 | 0xa0 | 0x03) | None) {
            return None;
        }
        let i = self.events.iter().position(|e| e.0 == lun)?;
        Some(self.events.remove(i).1)
    }

    /// Forget a command and have it answered `why` (Aborted or Reset).
    fn abort_here(&mut self, tag: u64, why: Failure, out: &mut Vec<Answer>) {
        self.pr_out.remove(&tag);
        if let Some(p) = self.pending.remove(&tag) {
            out.push((p.done, Err(why)));
        }
    }

    /// Fail the held commands that have waited past the recovery timeout.
    fn expire(&mut self, name: &str, out: &mut Vec<Answer>) {
        let (old, young): (Vec<Cmd>, Vec<Cmd>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|c| self.past_recovery(self.pending.get(&c.0).and_then(|p| p.lost_at)));
        self.held = young;
        if old.is_empty() {
            return;
        }
        warn!(
            "iSCSI {name}: {} command(s) failed: no session within the recovery timeout",
            old.len()
        );
        for c in old {
            self.pr_out.remove(&c.0);
            if let Some(p) = self.pending.remove(&c.0) {
                out.push((p.done, Err(Failure::Timeout)));
            }
        }
    }

    /// A new session is up: restore the reservation state, then resend.
    fn link_up(&mut self, name: &str, mut w: Writer, out: &mut Vec<Answer>) {
        // Commands that already waited too long (a target that keeps
        // breaking the connection on one of them, say) are not resent.
        self.expire(name, out);
        self.down_since = None;
        info!(
            "iSCSI {name}: session reinstated, retrying {} command(s)",
            self.held.len()
        );
        self.restoring = self.pr.restore();
        self.internal_tries = 0;
        if let Some((cdb, p)) = self.restoring.first() {
            info!("iSCSI {name}: re-registering the persistent reservation key");
            w.session
                .submit(INTERNAL_TAG, self.pr.lun, cdb, Data::Write(p.clone()));
        } else {
            for (tag, lun, cdb, data) in self.held.drain(..) {
                w.session.submit(tag, lun, &cdb, data);
            }
        }
        w.flush();
        self.writer = Some(w);
    }

    /// Feed received PDUs to the session. Finished guest commands are moved
    /// to `done`; an error (protocol violation, logout requested) means the
    /// connection must be dropped, after every event before it was handled.
    fn receive(
        &mut self,
        name: &str,
        pdus: &mut Vec<Pdu>,
        done: &mut Vec<Answer>,
    ) -> Result<(), String> {
        let Some(w) = self.writer.as_mut() else {
            pdus.clear();
            return Err("no session".into());
        };
        let mut events = Vec::new();
        let mut result = Ok(());
        for p in pdus.drain(..) {
            match w.session.receive(p) {
                Ok(e) => events.extend(e),
                Err(e) => {
                    result = Err(e.to_string());
                    break;
                }
            }
        }
        for e in events {
            match e {
                Event::Completed(c) if c.tag >= INTERNAL_TAG => self.restored(name, &c),
                Event::Completed(c) => {
                    if let Some((lun, cdb, p)) = self.pr_out.remove(&c.tag) {
                        if c.status == 0 && c.response == 0 {
                            self.pr.observe(lun, &cdb, &p);
                        }
                    }
                    if let Some(p) = self.pending.remove(&c.tag) {
                        done.push((p.done, Ok(c)));
                    }
                }
                Event::Terminated { tag, reset } => {
                    let why = if reset {
                        Failure::Reset
                    } else {
                        Failure::Aborted
                    };
                    self.abort_here(tag, why, done);
                }
                Event::ScsiEvent { lun, sense } if sense.len() >= 8 => {
                    info!(
                        "iSCSI {name}: asynchronous event for LUN {}: sense {}",
                        u16::from_be_bytes([lun[0] & 0x3f, lun[1]]),
                        sense_summary(&sense)
                    );
                    if self.events.len() >= MAX_EVENTS {
                        self.events.remove(0);
                    }
                    if !self.events.iter().any(|e| e.0 == lun && e.1 == sense) {
                        self.events.push((lun, sense));
                    }
                }
                Event::TaskManagement { tag, response } => {
                    if let Some(tx) = self.tmf_waiters.remove(&tag) {
                        let _ = tx.send(response);
                    }
                }
                Event::LogoutRequested { .. } | Event::Dropping if result.is_ok() => {
                    if let Some(w) = self.writer.as_mut() {
                        w.session.logout();
                        w.flush();
                    }
                    result = Err("the target asks to log out".into());
                }
                _ => {}
            }
        }
        result
    }

    /// One of our restoration commands finished: run the next, or release
    /// the guest commands held back.
    fn restored(&mut self, name: &str, c: &Completion) {
        let unit_attention = c.status == 2 && c.sense.get(2).is_some_and(|k| k & 0x0f == 6);
        if unit_attention && self.internal_tries < 8 {
            self.internal_tries += 1;
        } else {
            if c.status != 0 {
                warn!(
                    "iSCSI {name}: restoring the reservation state: status {:#04x}",
                    c.status
                );
            }
            if !self.restoring.is_empty() {
                self.restoring.remove(0);
            }
            self.internal_tries = 0;
        }
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        match self.restoring.first() {
            Some((cdb, p)) => {
                w.session
                    .submit(INTERNAL_TAG, self.pr.lun, cdb, Data::Write(p.clone()));
            }
            None => {
                for (tag, lun, cdb, data) in self.held.drain(..) {
                    w.session.submit(tag, lun, &cdb, data);
                }
            }
        }
    }
}

/// Sense key and additional sense code of fixed or descriptor sense data.
fn sense_summary(sense: &[u8]) -> String {
    let at = |i: usize| sense.get(i).copied().unwrap_or(0);
    let (key, asc, ascq) = if at(0) & 0x7f >= 0x72 {
        (at(1) & 0x0f, at(2), at(3))
    } else {
        (at(2) & 0x0f, at(12), at(13))
    };
    format!("key {key:#x}, {asc:02x}h/{ascq:02x}h")
}

fn wait_fd(fd: i32, events: i16, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// The thread that reads the target's answers, completes commands, keeps
/// the session alive and reconnects.
struct SessionThread {
    name: Arc<str>,
    shared: Arc<Shared>,
    portals: Vec<String>,
    current: usize,
    params: LoginParams,
}

impl SessionThread {
    fn run(&mut self, reader: Reader) {
        let name = self.name.clone();
        let mut reader = Some(reader);
        let mut backoff = BACKOFF_MIN;
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut pdus = Vec::new();
        let mut done = Vec::new();
        loop {
            let Some(r) = reader.as_mut() else {
                // Reconnect after the backoff, in steps of at most a second
                // that fail the commands whose recovery timeout passes.
                let until = Instant::now() + backoff;
                loop {
                    let mut st = self.shared.lock();
                    if st.stopping {
                        drop(st);
                        return self.shutdown();
                    }
                    st.expire(&name, &mut done);
                    let now_please = std::mem::take(&mut st.reconnect_now);
                    drop(st);
                    complete_all(done.drain(..));
                    let left = until.saturating_duration_since(Instant::now());
                    if now_please || left.is_zero() {
                        break;
                    }
                    wait_fd(
                        self.shared.wake.as_raw_fd(),
                        libc::POLLIN,
                        left.min(Duration::from_secs(1)),
                    );
                    let _ = self.shared.wake.read();
                }
                match self.reconnect() {
                    Some((r, w)) => {
                        let mut st = self.shared.lock();
                        if st.stopping {
                            drop(st);
                            return self.shutdown();
                        }
                        st.link_up(&name, w, &mut done);
                        drop(st);
                        complete_all(done.drain(..));
                        reader = Some(r);
                        backoff = BACKOFF_MIN;
                        last_heard = Instant::now();
                        ping_sent = None;
                    }
                    None => backoff = (backoff * 2).min(BACKOFF_MAX),
                }
                continue;
            };
            let want_out = self
                .shared
                .lock()
                .writer
                .as_ref()
                .is_some_and(Writer::pending);
            let mut fds = [
                libc::pollfd {
                    fd: r.stream.as_raw_fd(),
                    events: libc::POLLIN | if want_out { libc::POLLOUT } else { 0 },
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.shared.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds for the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
            if fds[1].revents != 0 {
                let _ = self.shared.wake.read();
            }
            let mut failure = None;
            if fds[0].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                if let Err(e) = r.read(&mut pdus) {
                    failure = Some(format!("connection lost: {e}"));
                }
            }
            let mut st = self.shared.lock();
            if st.stopping {
                drop(st);
                return self.shutdown();
            }
            if !pdus.is_empty() {
                last_heard = Instant::now();
                ping_sent = None;
            }
            if let Err(e) = st.receive(&name, &mut pdus, &mut done) {
                failure.get_or_insert(e);
            }
            if st.writer.is_none() {
                // Closed under us (I_T nexus reset): drop this connection.
                failure.get_or_insert_with(|| "session closed".into());
            }
            if let Some(w) = st.writer.as_mut() {
                // Keepalive and dead-target detection.
                match ping_sent {
                    Some(t) if t.elapsed() > DEAD_AFTER => {
                        failure
                            .get_or_insert(format!("no answer from the target for {DEAD_AFTER:?}"));
                    }
                    None if last_heard.elapsed() > KEEPALIVE => {
                        w.session.ping();
                        ping_sent = Some(Instant::now());
                    }
                    _ => {}
                }
                w.flush();
                if let Some(e) = w.broken.take() {
                    failure.get_or_insert(format!("connection lost: {e}"));
                }
            }
            if let Some(e) = failure {
                warn!("iSCSI {name}: {e}");
                st.link_down();
                reader = None;
            }
            drop(st);
            complete_all(done.drain(..));
        }
    }

    /// Log in again: the current portal first, then the others.
    fn reconnect(&mut self) -> Option<(Reader, Writer)> {
        let name = &self.name;
        for k in 0..self.portals.len() {
            let i = (self.current + k) % self.portals.len();
            let addr = &self.portals[i];
            match Connection::login(addr, self.params.clone(), LOGIN_TIMEOUT) {
                Ok(c) => {
                    if i != self.current {
                        info!("iSCSI {name}: failed over to portal {addr}");
                    }
                    self.current = i;
                    if let Some(moved) = c.moved_to.clone() {
                        info!("iSCSI {name}: using {moved} instead of {addr} from now on");
                        self.portals[i] = moved;
                    }
                    match split(c) {
                        Ok(halves) => return Some(halves),
                        Err(e) => warn!("iSCSI {name}: {e}"),
                    }
                }
                Err(e) => warn!("iSCSI {name}: reconnecting to {addr} failed: {e}"),
            }
        }
        None
    }

    /// Fail every command still pending and log out.
    fn shutdown(&self) {
        let (pending, writer) = {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.held.clear();
            st.tmf_waiters.clear();
            (std::mem::take(&mut st.pending), st.writer.take())
        };
        complete_all(
            pending
                .into_values()
                .map(|p| (p.done, Err(Failure::Shutdown))),
        );
        if let Some(mut w) = writer {
            w.session.logout();
            let fd = w.stream.as_raw_fd();
            for _ in 0..100 {
                if w.flush() || w.broken.is_some() {
                    break;
                }
                wait_fd(fd, libc::POLLOUT, Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LUN: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

    fn param(rk: u64, sark: u64) -> Vec<u8> {
        let mut p = rk.to_be_bytes().to_vec();
        p.extend_from_slice(&sark.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p
    }

    #[test]
    fn register_and_reserve_are_remembered_and_restored() {
        let mut m = PrMemory::default();
        m.observe(
            LUN,
            &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0],
            &param(0, 0xabc),
        );
        m.observe(
            LUN,
            &[0x5f, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0],
            &param(0xabc, 0),
        );
        assert_eq!((m.key, m.reservation), (Some(0xabc), Some(3)));
        let r = m.restore();
        // REGISTER AND IGNORE EXISTING KEY with the key, then PREEMPT the
        // stale registration (same key) with the same type.
        assert_eq!(r[0].0[1], 0x06);
        assert_eq!(&r[0].1[8..16], &0xabcu64.to_be_bytes());
        assert_eq!((r[1].0[1], r[1].0[2]), (0x04, 0x03));
        assert_eq!(&r[1].1[0..8], &0xabcu64.to_be_bytes());
        assert_eq!(&r[1].1[8..16], &0xabcu64.to_be_bytes());
    }

    #[test]
    fn release_clear_and_unregister_forget() {
        let mut m = PrMemory::default();
        m.observe(LUN, &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &param(0, 7));
        m.observe(LUN, &[0x5f, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0], &param(7, 0));
        m.observe(LUN, &[0x5f, 0x02, 0x01, 0, 0, 0, 0, 0, 24, 0], &param(7, 0));
        assert_eq!((m.key, m.reservation), (Some(7), None));
        assert_eq!(m.restore().len(), 1);
        m.observe(LUN, &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &param(7, 0));
        assert_eq!(m.key, None);
        assert!(m.restore().is_empty());
        m.observe(LUN, &[0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], &param(0, 9));
        m.observe(LUN, &[0x5f, 0x03, 0, 0, 0, 0, 0, 0, 24, 0], &param(9, 0));
        assert_eq!(
            m,
            PrMemory {
                lun: LUN,
                ..PrMemory::default()
            }
        );
    }

    #[test]
    fn other_commands_are_ignored() {
        let mut m = PrMemory::default();
        m.observe(LUN, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]);
        assert_eq!(m, PrMemory::default());
    }
}
