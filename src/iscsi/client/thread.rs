// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The session thread: reads the target's answers, completes commands,
//! keeps the session alive, reconnects and learns portals.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::halves::{split, Reader, Writer};
use super::timing::Backoff;
use super::{complete_all, Failure, Shared, LOGIN_TIMEOUT};
use crate::iscsi::conn::Connection;
use crate::iscsi::login::LoginParams;
use crate::iscsi::url::portal_address;

/// The longest the thread sleeps without looking at its state, whatever
/// `State::next_wakeup` says: a bound on the cost of a wake-up some other
/// thread forgot to send.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How long to sleep from `now` until `until` (None: `MAX_SLEEP`).
fn sleep_for(now: Instant, until: Option<Instant>) -> Duration {
    until.map_or(MAX_SLEEP, |t| {
        t.saturating_duration_since(now).min(MAX_SLEEP)
    })
}

/// Portals taken from a SendTargets answer at most (the list is the
/// target's: it must not make reconnection walk thousands of addresses).
const MAX_DISCOVERED: usize = 16;

/// The portals the target reports for itself, through a discovery session
/// on `addr`. Discovery is a convenience: a failure is only logged.
pub(super) fn discovered_portals(name: &str, addr: &str, params: &LoginParams) -> Vec<String> {
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
            .take(MAX_DISCOVERED)
            .collect(),
        Err(e) => {
            debug!("iSCSI {name}: no portal discovery through {addr}: {e}");
            Vec::new()
        }
    }
}

pub(super) fn wait_fd(fd: i32, events: i16, timeout: Duration) {
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
pub(super) struct SessionThread {
    pub(super) name: Arc<str>,
    pub(super) shared: Arc<Shared>,
    pub(super) portals: Vec<String>,
    pub(super) current: usize,
    pub(super) params: LoginParams,
}

impl SessionThread {
    pub(super) fn run(&mut self) {
        let name = self.name.clone();
        let mut backoff = Backoff::default();
        let mut done = Vec::new();
        loop {
            let fd = self.shared.reader().as_ref().map(|r| r.stream.as_raw_fd());
            if fd.is_none() && !self.idle() {
                // Stopping.
                return self.shutdown();
            }
            let Some(fd) = fd else {
                // Reconnect after the backoff, or the Time2Wait the target
                // asked for if longer, failing the commands whose recovery
                // timeout passes meanwhile.
                let time2wait = self.shared.lock().time2wait.take().unwrap_or_default();
                let until = backoff.login_at(Instant::now(), time2wait);
                if time2wait > backoff.delay() {
                    info!(
                        "iSCSI {name}: logging in again in {} s (the target's Time2Wait)",
                        time2wait.as_secs()
                    );
                }
                loop {
                    let now = Instant::now();
                    let mut st = self.shared.lock();
                    if st.stopping {
                        drop(st);
                        return self.shutdown();
                    }
                    st.tick(&name, now, &mut done);
                    let now_please = std::mem::take(&mut st.reconnect_now);
                    let next = st.next_wakeup().map_or(until, |t| t.min(until));
                    drop(st);
                    complete_all(done.drain(..));
                    if now_please || now >= until {
                        break;
                    }
                    wait_fd(
                        self.shared.wake.as_raw_fd(),
                        libc::POLLIN,
                        sleep_for(now, Some(next)),
                    );
                    let _ = self.shared.wake.read();
                }
                match self.reconnect() {
                    Some((r, w)) => {
                        // Reader before state, as everywhere: the reader
                        // goes in with the writer, so whatever the target
                        // sends first finds the session up.
                        let mut slot = self.shared.reader();
                        let mut st = self.shared.lock();
                        if st.stopping {
                            drop((st, slot));
                            return self.shutdown();
                        }
                        self.shared.install(&mut slot, r);
                        st.link_up(&name, w, Instant::now(), &mut done);
                        drop((st, slot));
                        complete_all(done.drain(..));
                        backoff.succeeded();
                    }
                    None => backoff.failed(),
                }
                continue;
            };
            let (want_out, next) = {
                let st = self.shared.lock();
                (
                    st.writer.as_ref().is_some_and(Writer::pending),
                    st.next_wakeup(),
                )
            };
            let timeout = sleep_for(Instant::now(), next);
            // Receive here only while no event loop does.
            let receive_here = self.shared.receivers.load(Ordering::SeqCst) == 0
                || self.shared.unwatched.load(Ordering::SeqCst);
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: if receive_here { libc::POLLIN } else { 0 }
                        | if want_out { libc::POLLOUT } else { 0 },
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.shared.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                // The end of a coalesced wait for answers.
                libc::pollfd {
                    fd: self.shared.timer().fd().as_raw_fd(),
                    events: if receive_here { libc::POLLIN } else { 0 },
                    revents: 0,
                },
            ];
            // Rounded up: woken a little late rather than early and again.
            let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            // SAFETY: three valid pollfds for the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if fds[1].revents != 0 {
                let _ = self.shared.wake.read();
            }
            // An error or hang-up is reported whatever was asked for: take
            // it here too, or this loop would spin until a receiver does.
            let broken = fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0;
            let timer = fds[2].revents & libc::POLLIN != 0;
            if broken || timer || (receive_here && fds[0].revents & libc::POLLIN != 0) {
                self.shared.receive_round(&name);
            }
            let mut st = self.shared.lock();
            if st.stopping {
                drop(st);
                return self.shutdown();
            }
            if !st.wanted && st.pending.is_empty() && st.held.is_empty() {
                drop(st);
                self.log_out();
                continue;
            }
            let now = Instant::now();
            let mut failure = None;
            if st.writer.is_none() {
                // Closed under us (I_T nexus reset, or a receiver found the
                // connection broken and logged why).
                failure = Some(None);
            } else if let Some(why) = st.tick(&name, now, &mut done) {
                // Keepalive, a dead or stalled target, task management
                // without an answer.
                failure = Some(Some(why));
            }
            if let Some(w) = st.writer.as_mut() {
                w.flush();
                if let Some(e) = w.broken.take() {
                    failure.get_or_insert(Some(format!("connection lost: {e}")));
                }
            }
            if let Some(why) = failure {
                if let Some(e) = why {
                    warn!("iSCSI {name}: {e}");
                }
                st.link_down(now);
                drop(st);
                self.shared.uninstall(&mut self.shared.reader());
            } else {
                drop(st);
            }
            complete_all(done.drain(..));
        }
    }

    /// While no session is wanted, wait (logged out) until one is, or the
    /// client stops (false).
    fn idle(&self) -> bool {
        loop {
            let st = self.shared.lock();
            if st.stopping {
                return false;
            }
            if st.wanted {
                return true;
            }
            drop(st);
            wait_fd(
                self.shared.wake.as_raw_fd(),
                libc::POLLIN,
                Duration::from_secs(1),
            );
            let _ = self.shared.wake.read();
        }
    }

    /// No device uses the session any more: log out (an explicit logout:
    /// the next login need not wait for a Time2Wait).
    fn log_out(&self) {
        // Reader before state, as everywhere, and the reader held until it
        // is gone: a receiving round that ran between the writer's removal
        // and the reader's would take the logout for a lost session (and
        // the next login for a reinstatement).
        let mut slot = self.shared.reader();
        let writer = {
            let mut st = self.shared.lock();
            st.time2wait = None;
            st.down_since = None;
            st.writer.take()
        };
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
        self.shared.uninstall(&mut slot);
        drop(slot);
        info!("iSCSI {}: logged out: no VM uses the session", self.name);
    }

    /// Log in again: the current portal first, then the others.
    pub(super) fn reconnect(&mut self) -> Option<(Reader, Writer)> {
        let name = &self.name;
        for k in 0..self.portals.len() {
            let i = (self.current + k) % self.portals.len();
            let addr = &self.portals[i];
            match Connection::login(addr, self.params.clone(), LOGIN_TIMEOUT) {
                Ok(c) => {
                    if i != self.current {
                        info!("iSCSI {name}: failed over to portal {addr}");
                    }
                    info!(
                        "iSCSI {name}: logged in to {addr}{}",
                        super::auth_of(&c, &self.params)
                    );
                    self.current = i;
                    if let Some(moved) = c.moved_to.clone() {
                        info!("iSCSI {name}: using {moved} instead of {addr} from now on");
                        self.portals[i] = moved;
                    }
                    self.shared.logged_in_again(&self.portals[i]);
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
    pub(super) fn shutdown(&self) {
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
        self.shared.uninstall(&mut self.shared.reader());
    }
}
