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
mod receive;
mod state;
mod status;
mod submit;
mod task_management;
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
pub(crate) use halves::{read_two, receive_in_pieces};
use halves::{set_receive_low_water, Reader, Writer};
pub use pr::PrMemory;
pub use receive::Receiver;
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
