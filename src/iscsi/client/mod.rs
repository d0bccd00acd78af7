// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The asynchronous driver used to serve iSCSI LUNs to guests. The sans-IO
//! session and the sending half of its TCP connection sit behind one lock:
//! a request-queue worker submitting a command encodes it and writes it to
//! the socket itself, without waking another thread. The receiving half sits
//! behind a lock of its own: whoever receives decodes the target's PDUs
//! outside the session lock, feeds them to the session, and runs each
//! finished command's callback (which completes the request in guest memory
//! directly). An event loop that attaches itself (`attach_receiver`: a
//! request-queue worker) receives whenever `receive_fd` is readable, so one
//! thread serves both the guest's kicks and the target's answers; without
//! one, the session thread receives. The session thread also keeps the
//! session alive and reconnects. While many commands, or only big reads,
//! are in flight, the receiver wakes once per batch of answers or big
//! piece of data (`coalesce`).
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

pub mod coalesce;
mod contract;
mod halves;
mod pr;
mod state;
mod status;
mod thread;
mod timing;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::codes::{TmfFunction, TmfResponse};
use super::conn::{Connection, Error};
use super::login::LoginParams;
use super::session::{is_small, tmf_covers, Awaited, Completion, Data, TmfAnswer};
pub use coalesce::Coalescing;
use coalesce::{next_wait, Timer, Wait, ANSWER_HEADER};
use halves::{set_receive_low_water, Reader, Writer};
pub use pr::PrMemory;
use state::{Pending, State};
use thread::{discovered_portals, SessionThread};

use crate::remote::complete_all;
pub use crate::remote::{Callback, Deferred, EventHook, Failure, Request};

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
    /// How answers are collected while many commands, or only big reads,
    /// are in flight.
    pub coalesce: Coalescing,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            recovery_timeout: Some(DEFAULT_RECOVERY_TIMEOUT),
            discover_portals: true,
            coalesce: Coalescing::default(),
        }
    }
}

/// A PERSISTENT RESERVE OUT in flight: LUN, CDB, parameter list.
type PrOut = ([u8; 8], Vec<u8>, Vec<u8>);

/// A command to send (again): tag, LUN, CDB, data.
type Cmd = (u64, [u8; 8], Vec<u8>, Data);

/// How a login authenticated, for the log: " (CHAP, SHA-256)".
fn auth_of(conn: &Connection, params: &LoginParams) -> String {
    match conn.session.n.chap {
        Some(a) if params.mutual.is_some() => format!(" (mutual CHAP, {a})"),
        Some(a) => format!(" (CHAP, {a})"),
        None => String::new(),
    }
}

/// The ISID of the check at start: ours with another qualifier bit, a
/// session of its own (discovery flips another bit).
fn probe_isid(mut isid: [u8; 6]) -> [u8; 6] {
    isid[5] ^= 0x40;
    isid
}

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
    /// The receiving half of the live connection. Taken before `state`
    /// when both are held, and held from reading to feeding the session,
    /// so PDUs reach the session in the order they arrived.
    reader: Mutex<Option<Reader>>,
    /// Readable when the live connection's socket is, or `timer` fired.
    poll: Epoll,
    /// Ends a coalesced wait for answers; used under `reader`'s lock.
    timer: Mutex<Timer>,
    coalesce: Coalescing,
    /// The socket's mark is set for a `Wait::Stream`: a small command
    /// submitted ends that wait (`Shared::note_small_sent`).
    streaming: AtomicBool,
    /// Counts submissions of small tasks, changed under `state`'s lock: a
    /// receiver that set a stream wait after one it did not count ends
    /// the wait.
    small_sent: AtomicU64,
    /// A submitter set the socket's mark to one byte behind the reader.
    mark_dropped: AtomicBool,
    /// Event loops receiving for this session (`attach_receiver`).
    receivers: AtomicUsize,
    /// The live connection could not be added to `poll`.
    unwatched: AtomicBool,
    /// Wakes the session thread: shutdown, bytes left to send, a broken
    /// connection seen by another thread, or the last receiver gone.
    wake: EventFd,
    /// Told about asynchronous SCSI events (`add_event_hook`), by id.
    hooks: Mutex<Vec<(u64, EventHook)>>,
    /// The portal logged in to, and how many times the session logged in
    /// again (`status`).
    portal: Mutex<String>,
    reconnects: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Option<Reader>> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `r` the receiving half (in `slot`, the locked `reader`),
    /// watched through `poll`.
    fn install(&self, slot: &mut Option<Reader>, r: Reader) {
        let fd = r.stream.as_raw_fd();
        if let Err(e) = self
            .poll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        {
            // Only attached event loops miss it: the session thread
            // receives instead while it is not watched.
            warn!("iSCSI: cannot watch the connection: {e}");
            self.unwatched.store(true, Ordering::SeqCst);
        }
        *slot = Some(r);
    }

    /// Drop the receiving half in `slot` (the connection is gone or
    /// going).
    fn uninstall(&self, slot: &mut Option<Reader>) {
        self.timer().set(None);
        if let Some(r) = slot.take() {
            let fd = r.stream.as_raw_fd();
            let _ = self
                .poll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.unwatched.store(false, Ordering::SeqCst);
        }
    }

    /// What the tasks out at the target still owe, as `pace` needs it;
    /// taken under the state lock (`st`).
    fn load(&self, st: &State) -> Load {
        let Some(w) = st.writer.as_ref() else {
            return Load::default();
        };
        let awaited = w.session.awaited();
        // Only a stream wait needs the closest read, and only for few
        // commands (`least_due` looks at each).
        let least = if awaited.small == 0 && awaited.tasks < self.coalesce.depth {
            w.session.least_due()
        } else {
            None
        };
        Load {
            awaited,
            least,
            small_sent: self.small_sent.load(Ordering::SeqCst),
        }
    }

    /// A small task went out on `st`'s connection (a command whose answer
    /// is not a big read's data, task management): a stream wait set for
    /// big reads' data ends now, so its answer is received when it comes.
    /// Called under the state lock.
    fn note_small_sent(&self, st: &State) {
        self.small_sent.fetch_add(1, Ordering::SeqCst);
        if self.streaming.load(Ordering::SeqCst) {
            if let Some(w) = st.writer.as_ref() {
                // The writer's descriptor is the same socket as the
                // reader's; the reader learns of it in `pace`.
                if set_receive_low_water(w.stream.as_raw_fd(), 1) {
                    self.mark_dropped.store(true, Ordering::SeqCst);
                    self.streaming.store(false, Ordering::SeqCst);
                }
            }
        }
    }

    fn timer(&self) -> MutexGuard<'_, Timer> {
        self.timer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before the next wait for `r`'s socket: raise its low-water mark
    /// while many commands or much data are due (bounded by the timer), or
    /// put it back to one byte (`coalesce`). `load`: what the tasks out at
    /// the target still owe; `heard`: this round received bytes. Called
    /// without the state lock (system calls).
    fn pace(&self, r: &mut Reader, load: Load, heard: bool) {
        if self.mark_dropped.swap(false, Ordering::SeqCst) {
            r.forget_low_water();
        }
        // Less what is already here (a partial PDU).
        let held = r.held();
        // Their data and an answer header each.
        let a = load.awaited;
        let due = (a.data + a.tasks * ANSWER_HEADER).saturating_sub(held);
        let least = load.least.map(|l| l.saturating_sub(held));
        let mut wait = next_wait(self.coalesce, a, due, least, heard, r.low_water_cap());
        r.set_low_water(wait.mark());
        let stream = matches!(wait, Wait::Stream(_));
        self.streaming.store(stream, Ordering::SeqCst);
        if stream && self.small_sent.load(Ordering::SeqCst) != load.small_sent {
            // A small command went out after `load` was taken, and may
            // have looked before `streaming` was set: its answer does not
            // wait for the reads' data.
            self.streaming.store(false, Ordering::SeqCst);
            wait = Wait::Any;
            r.set_low_water(1);
        }
        let mut timer = self.timer();
        if r.low_water() > 1 && !timer.set(wait.bound(self.coalesce)) {
            // No timer, no bound on the wait: do not wait.
            self.streaming.store(false, Ordering::SeqCst);
            r.set_low_water(1);
        }
        if r.low_water() == 1 {
            timer.set(None);
        }
    }

    /// Read what the target sent, feed it to the session and complete the
    /// commands it finished. A broken connection is dropped here and the
    /// session thread woken to reconnect.
    fn receive_round(&self, name: &str) {
        let mut done = Vec::new();
        let mut notices = Vec::new();
        {
            let mut slot = self.reader();
            let Some(r) = slot.as_mut() else {
                return;
            };
            let mut pdus = std::mem::take(&mut r.pdus);
            let mut place = |bhs: &[u8]| {
                let st = self.lock();
                st.writer.as_ref().and_then(|w| w.session.place(bhs))
            };
            let (got, mut failure) = match r.read(&mut pdus, &mut place) {
                Ok(n) => (n, None),
                Err(e) => (0, Some(format!("connection lost: {e}"))),
            };
            let mut st = self.lock();
            if st.stopping {
                drop(st);
                self.pace(r, Load::default(), false);
                return;
            }
            if !pdus.is_empty() {
                st.heard(Instant::now());
            }
            if let Err(e) = st.receive(name, &mut pdus, &mut done, &mut notices) {
                failure.get_or_insert(e);
            }
            r.pdus = pdus;
            // What the tasks out at the target still owe.
            let load = self.load(&st);
            // What the answers asked for (Data-Out for an R2T, NOP-Out for
            // a NOP-In) goes out now; the session thread writes what the
            // socket did not take, or handles a broken connection.
            if st.writer.as_mut().is_some_and(|w| !w.flush()) {
                let _ = self.wake.write(1);
            }
            if let Some(e) = failure {
                warn!("iSCSI {name}: {e}");
                st.link_down(Instant::now());
                drop(st);
                self.uninstall(&mut slot);
                let _ = self.wake.write(1);
            } else {
                drop(st);
                // Before the answers are delivered: whoever they wake finds
                // the next wait set up.
                self.pace(r, load, got > 0);
            }
        }
        complete_all(done);
        if !notices.is_empty() {
            let hooks: Vec<EventHook> = self
                .hooks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(_, h)| h.clone())
                .collect();
            for (lun, sense) in notices {
                for h in &hooks {
                    h(lun, &sense);
                }
            }
        }
    }
}

/// What `Shared::pace` sizes the next wait with.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    awaited: Awaited,
    /// `Session::least_due`, if a stream wait may follow.
    least: Option<usize>,
    /// `Shared::small_sent` when it was taken.
    small_sent: u64,
}

/// Keeps an event loop attached as a receiver (`Client::attach_receiver`);
/// the session thread receives again once the last one is dropped.
pub struct Receiver {
    shared: Arc<Shared>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::SeqCst);
        let _ = self.shared.wake.write(1);
    }
}

const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Tags of our task management requests: above the restoration tag.
const TMF_TAGS: u64 = 1000;

impl Client {
    /// Check that the target takes this initiator (through the first
    /// portal that answers: a failure on all of them is reported, the
    /// configuration is wrong or the target is down at start), then serve
    /// from a thread. The session itself is logged in when a device using
    /// it starts (`activate`) or a command is submitted, and logged out when
    /// the last device stops (`deactivate`): the check at start uses an
    /// ISID of its own, so starting the daemon of a live migration's
    /// destination does not reinstate, and so cut, the source's session. On
    /// a connection loss the current portal is retried first, then the
    /// others in turn.
    pub fn start(
        name: &str,
        portals: Vec<String>,
        params: LoginParams,
        options: Options,
    ) -> Result<Client, Error> {
        let mut last = None;
        let mut found = None;
        let mut probe = params.clone();
        probe.isid = probe_isid(params.isid);
        for (i, addr) in portals.iter().enumerate() {
            match Connection::login(addr, probe.clone(), LOGIN_TIMEOUT) {
                Ok(c) => {
                    found = Some((i, c));
                    break;
                }
                // A refused login is final; an unreachable portal, or one
                // whose target is busy or in maintenance, is not.
                Err(Error::Login(e)) if !e.is_transient() => return Err(Error::Login(e)),
                Err(e) => {
                    warn!("iSCSI {name}: portal {addr}: {e}");
                    last = Some(e);
                }
            }
        }
        let Some((current, mut conn)) = found else {
            return Err(last.unwrap_or(Error::Closed));
        };
        let mut portals = portals;
        info!(
            "iSCSI {name}: the target at {} accepts this initiator{}; \
             the session logs in when a VM uses it",
            portals[current],
            auth_of(&conn, &params)
        );
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
        if let Err(e) = conn.logout() {
            debug!("iSCSI {name}: logging out of the check session: {e}");
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                recovery: options.recovery_timeout,
                ..State::default()
            }),
            reader: Mutex::new(None),
            poll: Epoll::new()?,
            timer: Mutex::new(Timer::new()?),
            coalesce: options.coalesce,
            receivers: AtomicUsize::new(0),
            unwatched: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            small_sent: AtomicU64::new(0),
            mark_dropped: AtomicBool::new(false),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            hooks: Mutex::new(Vec::new()),
            portal: Mutex::new(portals[current].clone()),
            reconnects: AtomicU64::new(0),
        });
        shared.poll.ctl(
            ControlOperation::Add,
            shared.timer().fd().as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )?;
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
            .spawn(move || thread.run())?;
        Ok(client)
    }

    /// A device using the session started: log in if nobody was.
    pub fn activate(&self) {
        let mut st = self.shared.lock();
        st.users += 1;
        self.want(&mut st);
    }

    /// A device using the session stopped (every command it sent has
    /// completed): the last one out logs the session out.
    pub fn deactivate(&self) {
        let mut st = self.shared.lock();
        st.users = st.users.saturating_sub(1);
        if st.users == 0 && st.wanted {
            st.wanted = false;
            drop(st);
            let _ = self.shared.wake.write(1);
        }
    }

    /// Have a session up (called under the state lock).
    fn want(&self, st: &mut State) {
        if st.wanted || st.stopping {
            return;
        }
        st.wanted = true;
        st.reconnect_now = true;
        if st.writer.is_none() {
            // Commands wait for the login, within the recovery timeout.
            st.down_since = Some(Instant::now());
        }
        let _ = self.shared.wake.write(1);
    }

    /// A file descriptor that is readable whenever the target has sent
    /// something; an attached event loop then calls `receive`. It stays the
    /// same across reconnections.
    pub fn receive_fd(&self) -> RawFd {
        self.shared.poll.as_raw_fd()
    }

    /// Attach an event loop that watches `receive_fd` and calls `receive`:
    /// the session thread stops receiving (one thread wake-up less per
    /// answer) until the returned guard, and every other, is dropped.
    pub fn attach_receiver(&self) -> Receiver {
        self.shared.receivers.fetch_add(1, Ordering::SeqCst);
        let _ = self.shared.wake.write(1);
        Receiver {
            shared: self.shared.clone(),
        }
    }

    /// Have `hook` told about asynchronous SCSI events from now on (None:
    /// nobody). It must not hold this client (a cycle).
    pub fn set_event_hook(&self, hook: Option<EventHook>) {
        let mut hooks = self.shared.hooks.lock().unwrap_or_else(|e| e.into_inner());
        hooks.clear();
        hooks.extend(hook.map(|h| (0, h)));
    }

    /// Have `hook` told about asynchronous SCSI events too (each device
    /// using the session adds its own); returns its id for
    /// `remove_event_hook`. It must not hold this client (a cycle).
    pub fn add_event_hook(&self, hook: EventHook) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.shared
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, hook));
        id
    }

    pub fn remove_event_hook(&self, id: u64) {
        self.shared
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
    }

    /// Receive what the target sent and complete the commands it answered
    /// (callbacks run on this thread). Does nothing when nothing arrived.
    pub fn receive(&self) {
        self.shared.receive_round(&self.name);
    }

    /// Send a command. The caller's thread writes it to the socket when the
    /// session is up (no hand-off to another thread); `done` runs on the
    /// thread that receives the answer (an attached event loop, or the
    /// session thread), or on the caller's thread if the command is refused
    /// at once (shutting down, past the recovery timeout).
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
        } else if st.writer.is_none() && st.past_recovery(st.down_since, Instant::now()) {
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
        // A command is a reason to have a session.
        self.want(st);
        let mut up =
            st.restoring.is_empty() && st.writer.as_ref().is_some_and(|w| w.broken.is_none());
        let mut now = Vec::new();
        let mut small = false;
        for r in requests {
            if let Some(sense) = st.take_event(r.lun, &r.cdb) {
                let c = Completion {
                    tag: 0,
                    response: 0,
                    status: 2,
                    sense,
                    data: Vec::new(),
                    placed: 0,
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
                    small |= is_small(r.data.read_len());
                    w.session.submit(tag, r.lun, r.cdb, r.data);
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
        if small {
            self.shared.note_small_sent(st);
        }
        drop(guard);
        complete_all(now);
    }

    /// Run a task management function (RFC 7143 11.5) on this session's
    /// commands for `lun`: ABORT TASK (of the command submitted with
    /// `id`), ABORT TASK SET, CLEAR ACA, CLEAR TASK SET or LOGICAL UNIT
    /// RESET. Commands that are not at the target (not sent yet, or
    /// waiting for a lost session) are aborted here; the others by the
    /// target. Returns the iSCSI response (RFC 7143 11.6.1) once every
    /// command the function ended has completed with `Failure::Aborted`
    /// (`Reset` for a LUN reset). A target
    /// that does not answer within `TMF_TIMEOUT` loses the connection, and
    /// the commands are aborted here.
    pub fn task_management(
        &self,
        function: TmfFunction,
        lun: [u8; 8],
        id: Option<u64>,
    ) -> TmfAnswer {
        let why = if function.is_reset() {
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
                    return Ok(TmfResponse::FunctionComplete);
                }
                let target = id.and_then(|id| {
                    st.pending
                        .iter()
                        .find(|(_, p)| p.id == id && p.lun == lun)
                        .map(|(&tag, _)| tag)
                });
                if function == TmfFunction::AbortTask && target.is_none() {
                    return Ok(TmfResponse::TaskDoesNotExist);
                }
                let mut aborted = Vec::new();
                let in_scope = |c: &Cmd| tmf_covers(function, lun, target, c.1, c.0);
                let (gone, kept): (Vec<Cmd>, Vec<Cmd>) =
                    std::mem::take(&mut st.held).into_iter().partition(in_scope);
                st.held = kept;
                for c in gone {
                    st.fail_here(c.0, why, &mut aborted);
                }
                let mut rx = None;
                if let (Some(w), true) = (st.writer.as_mut(), st.restoring.is_empty()) {
                    let tag = INTERNAL_TAG + 1 + st.next_tmf;
                    st.next_tmf = (st.next_tmf + 1) % TMF_TAGS;
                    let start = w.session.task_management(tag, function, lun, target);
                    if start.sent {
                        let (tx, r) = mpsc::channel();
                        let until = Instant::now() + timing::TMF_TIMEOUT;
                        st.tmf_waiters.insert(tag, (tx, until));
                        rx = Some(r);
                        w.flush();
                        // The session thread's next wake-up is this
                        // deadline at the latest, and it sends what the
                        // socket did not take.
                        let _ = self.shared.wake.write(1);
                        self.shared.note_small_sent(st);
                    }
                    for t in start.aborted {
                        st.fail_here(t, why, &mut aborted);
                    }
                }
                (rx, aborted)
            };
            complete_all(aborted);
            let Some(rx) = rx else {
                return Ok(TmfResponse::FunctionComplete);
            };
            // No answer: the connection was lost, or the target took longer
            // than `TMF_TIMEOUT` and the session thread dropped it
            // (`State::tick`). Its commands are held now.
            if let Ok(response) = rx.recv() {
                return response;
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
            st.link_down(Instant::now());
            let mut aborted = Vec::new();
            for c in std::mem::take(&mut st.held) {
                st.fail_here(c.0, Failure::Reset, &mut aborted);
            }
            // An explicit logout: nothing to wait for before the next login.
            st.time2wait = None;
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

    /// The same number for every handle on one session.
    pub fn session_id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
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
