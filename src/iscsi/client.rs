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
//!
//! Some targets (tgt) tie persistent reservation registrations to the
//! session, so after reinstatement the guest's registration belongs to a dead
//! nexus and its writes conflict. The client remembers the key and
//! reservation type that went through successfully (`PrMemory`) and, before
//! resending anything, re-registers the key (REGISTER AND IGNORE EXISTING
//! KEY) and takes the reservation back from the stale registration (PREEMPT
//! with the same key and type).

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

/// Tags above this are the client's own commands (PR restoration).
const INTERNAL_TAG: u64 = u64::MAX - 1024;

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
    // PR OUT commands in flight, to learn from when they succeed.
    let mut pr_out: HashMap<u64, PrOut> = HashMap::new();
    let mut pr = PrMemory::default();
    // Internal commands still to run after a reinstatement, and the guest
    // commands held back until they are done.
    let mut restoring: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut held: Vec<(u64, [u8; 8], Vec<u8>, Data)> = Vec::new();
    let mut internal_tries = 0u32;
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
                        // Our own commands are re-derived from `pr`; guest
                        // commands held back by an earlier restoration go too.
                        retry.retain(|t| t.0 < INTERNAL_TAG);
                        retry.append(&mut held);
                        restoring = pr.restore();
                        internal_tries = 0;
                        if let Some((cdb, p)) = restoring.first() {
                            info!("iSCSI {name}: re-registering the persistent reservation key");
                            nl.session
                                .submit(INTERNAL_TAG, pr.lun, cdb, Data::Write(p.clone()));
                            held.append(&mut retry);
                        }
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
            next_tag = (next_tag + 1) % INTERNAL_TAG;
            callbacks.insert(tag, s.done);
            if let (Some(0x5f), Data::Write(p)) = (s.cdb.first(), &s.data) {
                pr_out.insert(tag, (s.lun, s.cdb.clone(), p.clone()));
            }
            if restoring.is_empty() {
                l.session.submit(tag, s.lun, &s.cdb, s.data);
            } else {
                held.push((tag, s.lun, s.cdb, s.data));
            }
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
                        Event::Completed(c) if c.tag >= INTERNAL_TAG => {
                            let unit_attention =
                                c.status == 2 && c.sense.get(2).is_some_and(|k| k & 0x0f == 6);
                            if unit_attention && internal_tries < 8 {
                                internal_tries += 1;
                            } else {
                                if c.status != 0 {
                                    warn!(
                                        "iSCSI {name}: restoring the reservation state: status {:#04x}",
                                        c.status
                                    );
                                }
                                restoring.remove(0);
                                internal_tries = 0;
                            }
                            match restoring.first() {
                                Some((cdb, p)) => {
                                    l.session.submit(
                                        INTERNAL_TAG,
                                        pr.lun,
                                        cdb,
                                        Data::Write(p.clone()),
                                    );
                                }
                                None => {
                                    for (tag, lun, cdb, data) in held.drain(..) {
                                        l.session.submit(tag, lun, &cdb, data);
                                    }
                                }
                            }
                        }
                        Event::Completed(c) => {
                            if let Some((lun, cdb, p)) = pr_out.remove(&c.tag) {
                                if c.status == 0 && c.response == 0 {
                                    pr.observe(lun, &cdb, &p);
                                }
                            }
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
