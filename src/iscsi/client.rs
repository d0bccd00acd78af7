// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The asynchronous driver used to serve iSCSI LUNs to guests: one thread
//! owns the TCP connection of one session and runs the sans-IO session.
//! Request-queue workers submit commands from any thread; each command's
//! callback runs on the client thread when it completes.
//!
//! A broken connection (I/O error, protocol error, target gone) is retried
//! with backoff: a new session is logged in with the same ISID and TSIH 0
//! (session reinstatement, RFC 7143 6.3.5) and every unfinished command is
//! sent again, so an acknowledged write is never lost and the guest sees at
//! worst a delay.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::conn::{Connection, Error};
use super::login::LoginParams;
use super::pdu::{self, Digests};
use super::session::{Completion, Data, Event, Session};

/// Why a command did not complete at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The daemon is shutting down.
    Shutdown,
}

pub type Callback = Box<dyn FnOnce(Result<Completion, Failure>) + Send>;

struct Submission {
    lun: [u8; 8],
    cdb: Vec<u8>,
    data: Data,
    done: Callback,
}

struct Shared {
    queue: Mutex<VecDeque<Submission>>,
    wake: EventFd,
    stop: AtomicBool,
}

/// Handle to one session; cheap to clone.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    pub name: Arc<str>,
}

/// Time between a NOP-Out keepalive and the next, when idle.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// No answer to a keepalive for this long: the target is dead.
const DEAD_AFTER: Duration = Duration::from_secs(15);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

impl Client {
    /// Log in through the first portal that answers (a failure on all of
    /// them is reported: the configuration is wrong or the target is down at
    /// start), then serve from a thread. On a connection loss the current
    /// portal is retried first, then the others in turn.
    pub fn start(name: &str, portals: Vec<String>, params: LoginParams) -> Result<Client, Error> {
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
        info!("iSCSI {name}: logged in to {}", portals[current]);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            stop: AtomicBool::new(false),
        });
        let client = Client {
            shared: shared.clone(),
            name: name.into(),
        };
        let tname: Arc<str> = name.into();
        std::thread::Builder::new()
            .name("iscsi".into())
            .spawn(move || run(&tname, &shared, conn, portals, current, params))?;
        Ok(client)
    }

    /// Queue a command; `done` runs on the client thread when it completes.
    pub fn submit(&self, lun: [u8; 8], cdb: &[u8], data: Data, done: Callback) {
        if self.shared.stop.load(Ordering::Acquire) {
            done(Err(Failure::Shutdown));
            return;
        }
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Submission {
                lun,
                cdb: cdb.to_vec(),
                data,
                done,
            });
        let _ = self.shared.wake.write(1);
    }

    /// Fail everything pending and stop (daemon shutdown).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.wake.write(1);
    }
}

struct Live {
    stream: TcpStream,
    session: Session,
    digests: Digests,
    max_data: usize,
    rx: Vec<u8>,
    /// Socket read buffer, allocated once.
    scratch: Vec<u8>,
}

impl Live {
    fn from(conn: Connection) -> io::Result<Live> {
        let (stream, rx, digests, max_data, session) = conn.into_parts();
        stream.set_nonblocking(true)?;
        Ok(Live {
            stream,
            session,
            digests,
            max_data,
            rx,
            scratch: vec![0u8; 256 * 1024],
        })
    }

    fn flush(&mut self) -> Result<(), Error> {
        let mut buf = Vec::new();
        while let Some(p) = self.session.poll_transmit() {
            buf.extend_from_slice(&p.encode(self.digests));
        }
        let mut at = 0;
        while at < buf.len() {
            match self.stream.write(&buf[at..]) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.stream.as_raw_fd(), libc::POLLOUT, 1000)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Read what is there and return the events of every whole PDU.
    fn read(&mut self) -> Result<Vec<Event>, Error> {
        loop {
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => self.rx.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut ev = Vec::new();
        let mut at = 0;
        let result = loop {
            match pdu::decode(&self.rx[at..], self.digests, self.max_data) {
                Ok(Some((p, used))) => {
                    at += used;
                    match self.session.receive(p) {
                        Ok(e) => ev.extend(e),
                        Err(e) => break Err(e.into()),
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        // Consume every decoded PDU at once.
        self.rx.drain(..at);
        result.map(|()| ev)
    }
}

fn wait_fd(fd: i32, events: i16, timeout_ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    unsafe { libc::poll(&mut p, 1, timeout_ms) };
}

fn run(
    name: &str,
    shared: &Shared,
    conn: Connection,
    portals: Vec<String>,
    mut current: usize,
    params: LoginParams,
) {
    let mut callbacks: HashMap<u64, Callback> = HashMap::new();
    let mut next_tag = 0u64;
    let mut live = match Live::from(conn) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("iSCSI {name}: {e}");
            None
        }
    };
    let mut backoff = BACKOFF_MIN;
    let mut retry: Vec<(u64, [u8; 8], Vec<u8>, Data)> = Vec::new();
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            for (_, cb) in callbacks.drain() {
                cb(Err(Failure::Shutdown));
            }
            for s in shared
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                (s.done)(Err(Failure::Shutdown));
            }
            if let Some(l) = live.as_mut() {
                l.session.logout();
                let _ = l.flush();
            }
            return;
        }
        let Some(l) = live.as_mut() else {
            // Reconnect (the current portal first, then the others), then
            // send everything unfinished again.
            std::thread::sleep(backoff);
            for k in 0..portals.len() {
                let i = (current + k) % portals.len();
                let addr = &portals[i];
                match Connection::login(addr, params.clone(), LOGIN_TIMEOUT)
                    .and_then(|c| Live::from(c).map_err(Error::from))
                {
                    Ok(mut nl) => {
                        if i != current {
                            info!("iSCSI {name}: failed over to portal {addr}");
                        }
                        current = i;
                        info!(
                            "iSCSI {name}: session reinstated, retrying {} command(s)",
                            retry.len()
                        );
                        for (tag, lun, cdb, data) in retry.drain(..) {
                            nl.session.submit(tag, lun, &cdb, data);
                        }
                        live = Some(nl);
                        backoff = BACKOFF_MIN;
                        last_heard = Instant::now();
                        ping_sent = None;
                        break;
                    }
                    Err(e) => warn!("iSCSI {name}: reconnecting to {addr} failed: {e}"),
                }
            }
            if live.is_none() {
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            continue;
        };
        // New submissions.
        let new: Vec<Submission> = shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for s in new {
            let tag = next_tag;
            next_tag = next_tag.wrapping_add(1);
            callbacks.insert(tag, s.done);
            l.session.submit(tag, s.lun, &s.cdb, s.data);
        }
        // Keepalive and dead-target detection.
        if let Some(t) = ping_sent {
            if t.elapsed() > DEAD_AFTER {
                warn!("iSCSI {name}: no answer from the target for {DEAD_AFTER:?}");
                retry = l.session.take_unfinished();
                live = None;
                continue;
            }
        } else if last_heard.elapsed() > KEEPALIVE {
            l.session.ping();
            ping_sent = Some(Instant::now());
        }
        let result = l.flush().and_then(|()| {
            let mut fds = [
                libc::pollfd {
                    fd: l.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: shared.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds for the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
            if fds[1].revents != 0 {
                let _ = shared.wake.read();
            }
            if fds[0].revents != 0 {
                l.read()
            } else {
                Ok(Vec::new())
            }
        });
        match result {
            Ok(events) => {
                if !events.is_empty() {
                    last_heard = Instant::now();
                    ping_sent = None;
                }
                for e in events {
                    match e {
                        Event::Completed(c) => {
                            if let Some(cb) = callbacks.remove(&c.tag) {
                                cb(Ok(c));
                            }
                        }
                        Event::LogoutRequested { .. } | Event::Dropping => {
                            info!("iSCSI {name}: the target asks to log out: reconnecting");
                            retry = l.session.take_unfinished();
                            l.session.logout();
                            let _ = l.flush();
                            live = None;
                            break;
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                warn!("iSCSI {name}: connection lost: {e}");
                retry = l.session.take_unfinished();
                live = None;
            }
        }
    }
}
