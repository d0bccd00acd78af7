// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What submitters and the session thread share about a session, and how
//! it changes as PDUs arrive and the connection comes and goes.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::halves::Writer;
use super::timing::{self, Due, Liveness, TMF_TIMEOUT};
use super::{Callback, Cmd, Failure, PrMemory, PrOut, INTERNAL_TAG};
use crate::iscsi::pdu::Pdu;
use crate::iscsi::session::{Completion, Data, Event, TmfAnswer};
use crate::scsi;
use crate::seqhash::SeqMap;

/// Unit attentions from asynchronous events kept per session at most (the
/// oldest are dropped: a target flooding events cannot grow memory).
pub(super) const MAX_EVENTS: usize = 16;

/// The longest Time2Wait there is (RFC 7143 13.15: 0 to 3600 s).
const MAX_TIME2WAIT: u32 = 3600;

/// A command the client has to answer.
pub(super) struct Pending {
    pub(super) done: Callback,
    pub(super) lun: [u8; 8],
    pub(super) id: u64,
    /// When a connection loss first caught it (recovery timeout).
    pub(super) lost_at: Option<Instant>,
}

/// A callback and what to tell it.
pub(super) type Answer = (Callback, Result<Completion, Failure>);

/// Everything about the session that submitters and the session thread
/// share.
#[derive(Default)]
pub(super) struct State {
    pub(super) stopping: bool,
    /// A session should be up: some device using it runs (`users`), or a
    /// command was submitted. Without, the session is logged out and the
    /// client idle (a live migration's source and destination take turns).
    pub(super) wanted: bool,
    /// Devices using the session (`Client::activate`).
    pub(super) users: usize,
    /// The last session was lost (not logged out): the next one is a
    /// reinstatement.
    pub(super) lost: bool,
    /// None while the connection is down.
    pub(super) writer: Option<Writer>,
    /// Since when the connection is down.
    pub(super) down_since: Option<Instant>,
    pub(super) recovery: Option<Duration>,
    /// Set by an I_T nexus reset: log in again without a backoff.
    pub(super) reconnect_now: bool,
    /// The least time to wait before the next login, when the target has
    /// a say in it: the Time2Wait of an Asynchronous Message 2 or 3, or the
    /// session's DefaultTime2Wait after an unexpected loss (RFC 7143 13.15:
    /// reinstating a session logs the old one out implicitly).
    pub(super) time2wait: Option<Duration>,
    /// Guest commands not answered yet, by tag.
    pub(super) pending: SeqMap<u64, Pending>,
    /// Task management waiting for the target's answer, and until when.
    pub(super) tmf_waiters: HashMap<u64, (mpsc::Sender<TmfAnswer>, Instant)>,
    pub(super) next_tmf: u64,
    /// Sense data of SCSI asynchronous events (RFC 7143 11.9.1), by LUN:
    /// each is reported once, as a unit attention, to the next command for
    /// that LUN (SAM-5 6.6: the alternative to asynchronous event reporting).
    pub(super) events: Vec<([u8; 8], Vec<u8>)>,
    /// PR OUT commands in flight, to learn from when they succeed.
    pub(super) pr_out: HashMap<u64, PrOut>,
    pub(super) pr: PrMemory,
    /// Internal commands still to run after a reinstatement.
    pub(super) restoring: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) internal_tries: u32,
    /// Guest commands not in the session: the connection is down, or they
    /// wait for the restoration to finish.
    pub(super) held: Vec<Cmd>,
    pub(super) next_tag: u64,
    /// Keepalive and stall detection (None while the connection is down).
    pub(super) liveness: Option<Liveness>,
}

impl State {
    /// The target sent something at `now`: it is alive.
    pub(super) fn heard(&mut self, now: Instant) {
        if let Some(l) = self.liveness.as_mut() {
            l.heard(now);
        }
    }

    /// The connection is gone: keep every unfinished guest command for the
    /// next session (our own are re-derived from `pr`).
    pub(super) fn link_down(&mut self, now: Instant) {
        self.lost = true;
        self.liveness = None;
        self.down_since.get_or_insert(now);
        if let Some(mut w) = self.writer.take() {
            let negotiated = w.session.n.default_time2wait.min(MAX_TIME2WAIT);
            self.time2wait
                .get_or_insert(Duration::from_secs(negotiated.into()));
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

    /// Whether a loss at `since` is older than the recovery timeout at
    /// `now`.
    pub(super) fn past_recovery(&self, since: Option<Instant>, now: Instant) -> bool {
        timing::past_recovery(self.recovery, since, now)
    }

    /// Apply the rules of time at `now` (see `timing`): held commands past
    /// the recovery timeout fail, task management past `TMF_TIMEOUT` is
    /// given up, a keepalive goes out when due. Returns why the connection
    /// must be dropped, if it must.
    pub(super) fn tick(
        &mut self,
        name: &str,
        now: Instant,
        out: &mut Vec<Answer>,
    ) -> Option<String> {
        if self.writer.is_none() {
            self.expire(name, now, out);
            return None;
        }
        let before = self.tmf_waiters.len();
        // Dropping a waiter's sender tells it no answer will come.
        self.tmf_waiters.retain(|_, (_, until)| now < *until);
        if self.tmf_waiters.len() < before {
            return Some(format!("no answer to task management for {TMF_TIMEOUT:?}"));
        }
        let w = self.writer.as_mut()?;
        let waiting = w.pending().then(|| w.progress());
        match self
            .liveness
            .get_or_insert_with(|| Liveness::new(now))
            .check(now, waiting)
        {
            Due::Nothing => None,
            Due::Ping => {
                w.session.ping();
                None
            }
            Due::Dead(why) => Some(why),
        }
    }

    /// When `tick` has something to do next, if nothing else happens.
    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        if self.writer.is_none() {
            return self
                .held
                .iter()
                .filter_map(|c| {
                    let lost_at = self.pending.get(&c.0)?.lost_at;
                    timing::recovery_deadline(self.recovery, lost_at)
                })
                .min();
        }
        let tmf = self.tmf_waiters.values().map(|(_, until)| *until).min();
        let live = self.liveness.as_ref().map(Liveness::next);
        tmf.into_iter().chain(live).min()
    }

    /// The unit attention to report instead of running `cdb` on `lun`, if
    /// an asynchronous event left one and `cdb` is a command that unit
    /// attentions affect (SAM-5 5.14, as the SCSI layer has it).
    pub(super) fn take_event(&mut self, lun: [u8; 8], cdb: &[u8]) -> Option<Vec<u8>> {
        if cdb.is_empty() || scsi::unit_attention_exempt(cdb) {
            return None;
        }
        let i = self.events.iter().position(|e| e.0 == lun)?;
        Some(self.events.remove(i).1)
    }

    /// Forget a command and have it answered `why`.
    pub(super) fn fail_here(&mut self, tag: u64, why: Failure, out: &mut Vec<Answer>) {
        self.pr_out.remove(&tag);
        if let Some(p) = self.pending.remove(&tag) {
            out.push((p.done, Err(why)));
        }
    }

    /// Fail the held commands that have waited past the recovery timeout.
    pub(super) fn expire(&mut self, name: &str, now: Instant, out: &mut Vec<Answer>) {
        let (old, young): (Vec<Cmd>, Vec<Cmd>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|c| self.past_recovery(self.pending.get(&c.0).and_then(|p| p.lost_at), now));
        self.held = young;
        if old.is_empty() {
            return;
        }
        warn!(
            "iSCSI {name}: {} command(s) failed: no session within the recovery timeout",
            old.len()
        );
        for c in old {
            self.fail_here(c.0, Failure::Timeout, out);
        }
    }

    /// A new session is up: restore the reservation state, then resend.
    pub(super) fn link_up(
        &mut self,
        name: &str,
        mut w: Writer,
        now: Instant,
        out: &mut Vec<Answer>,
    ) {
        // Commands that already waited too long (a target that keeps
        // breaking the connection on one of them, say) are not resent.
        self.expire(name, now, out);
        self.down_since = None;
        self.liveness = Some(Liveness::new(now));
        if std::mem::take(&mut self.lost) {
            info!(
                "iSCSI {name}: session reinstated, retrying {} command(s)",
                self.held.len()
            );
        }
        self.restoring = self.pr.restore();
        self.internal_tries = 0;
        if let Some((cdb, p)) = self.restoring.first() {
            info!("iSCSI {name}: re-registering the persistent reservation key");
            w.session.submit(
                INTERNAL_TAG,
                self.pr.lun,
                cdb.as_slice(),
                Data::Write(p.clone()),
            );
        } else {
            for (tag, lun, cdb, data) in self.held.drain(..) {
                w.session.submit(tag, lun, cdb, data);
            }
        }
        w.flush();
        self.writer = Some(w);
    }

    /// Feed received PDUs to the session. Finished guest commands are moved
    /// to `done`, new asynchronous events to `notices`; an error (protocol violation, logout requested) means the
    /// connection must be dropped, after every event before it was handled.
    pub(super) fn receive(
        &mut self,
        name: &str,
        pdus: &mut Vec<Pdu>,
        done: &mut Vec<Answer>,
        notices: &mut Vec<([u8; 8], Vec<u8>)>,
    ) -> Result<(), String> {
        let Some(w) = self.writer.as_mut() else {
            pdus.clear();
            return Err("no session".into());
        };
        let mut events = Vec::new();
        let mut result = Ok(());
        for p in pdus.drain(..) {
            if let Err(e) = w.session.receive_into(p, &mut events) {
                result = Err(e.to_string());
                break;
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
                    self.fail_here(tag, why, done);
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
                        notices.push((lun, sense.clone()));
                        self.events.push((lun, sense));
                    }
                }
                Event::TaskManagement { tag, response } => {
                    if let Some((tx, _)) = self.tmf_waiters.remove(&tag) {
                        let _ = tx.send(response);
                    }
                }
                Event::LogoutRequested { .. } | Event::Dropping { .. } if result.is_ok() => {
                    if let Some(w) = self.writer.as_mut() {
                        w.session.logout();
                        w.flush();
                    }
                    // Asked for, not unexpected: only a drop names a wait.
                    let (wait, why) = match e {
                        Event::Dropping { time2wait } => {
                            let wait = time2wait.min(MAX_TIME2WAIT as u16);
                            (
                                wait,
                                format!(
                                    "the target is closing the connection (Time2Wait {wait} s)"
                                ),
                            )
                        }
                        _ => (0, "the target asks to log out".to_string()),
                    };
                    self.time2wait = Some(Duration::from_secs(wait.into()));
                    result = Err(why);
                }
                _ => {}
            }
        }
        result
    }

    /// One of our restoration commands finished: run the next, or release
    /// the guest commands held back.
    pub(super) fn restored(&mut self, name: &str, c: &Completion) {
        let unit_attention = c.status == 2 && crate::scsi::sense::is_unit_attention(&c.sense);
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
                w.session.submit(
                    INTERNAL_TAG,
                    self.pr.lun,
                    cdb.as_slice(),
                    Data::Write(p.clone()),
                );
            }
            None => {
                for (tag, lun, cdb, data) in self.held.drain(..) {
                    w.session.submit(tag, lun, cdb, data);
                }
            }
        }
    }
}

/// Sense key and additional sense code of fixed or descriptor sense data.
pub(super) fn sense_summary(sense: &[u8]) -> String {
    match crate::scsi::sense::decode(sense) {
        Some((key, asc, ascq)) => format!("key {key:#x}, {asc:02x}h/{ascq:02x}h"),
        None => format!("{} bytes of sense data in no known format", sense.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::client::Failure;

    const LUN: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];
    /// Fixed-format sense: UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED.
    const UA: [u8; 18] = [
        0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x3f, 0x0e, 0, 0, 0, 0,
    ];

    fn with_event() -> State {
        State {
            events: vec![(LUN, UA.to_vec())],
            ..State::default()
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// A state whose connection is up at `t0`, and the target's end.
    fn connected(t0: Instant) -> (State, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let near = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (far, _) = l.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        let session = crate::iscsi::session::Session::new(
            crate::iscsi::session::tests::negotiated(false, false, 10),
        );
        let mut st = State::default();
        let mut out = Vec::new();
        st.link_up("t", Writer::for_test(near, session), t0, &mut out);
        assert!(out.is_empty());
        (st, far)
    }

    /// A guest command `tag` held while the connection is down since `t0`,
    /// and what it is answered.
    fn held(st: &mut State, tag: u64, t0: Instant) -> mpsc::Receiver<Result<Completion, Failure>> {
        let (tx, rx) = mpsc::channel();
        st.pending.insert(
            tag,
            Pending {
                done: Box::new(move |r| {
                    tx.send(r).unwrap();
                    None
                }),
                lun: LUN,
                id: tag,
                lost_at: Some(t0),
            },
        );
        st.held.push((tag, LUN, vec![0; 6], Data::None));
        rx
    }

    /// The answer to a reservation-restoring command: a unit attention
    /// in either sense format is retried (the new session's first command
    /// gets one), anything else moves on to the next.
    #[test]
    fn restoring_retries_a_unit_attention_in_either_sense_format() {
        let answer = |sense: Vec<u8>| Completion {
            tag: INTERNAL_TAG,
            response: 0,
            status: 2,
            sense,
            data: Vec::new(),
            placed: 0,
            residual: 0,
        };
        let ua = crate::scsi::Sense::POWER_ON_RESET_OCCURRED;
        for descriptor in [false, true] {
            let mut st = State {
                restoring: vec![(vec![0x5f; 10], vec![0; 24])],
                ..State::default()
            };
            st.restored("t", &answer(ua.encode(descriptor)));
            assert_eq!(
                (st.internal_tries, st.restoring.len()),
                (1, 1),
                "{descriptor}"
            );
            st.restored(
                "t",
                &answer(crate::scsi::Sense::WRITE_ERROR.encode(descriptor)),
            );
            assert_eq!(
                (st.internal_tries, st.restoring.len()),
                (0, 0),
                "{descriptor}"
            );
        }
    }

    #[test]
    fn held_commands_fail_at_their_recovery_deadline_which_is_the_next_wakeup() {
        let t0 = Instant::now();
        let recovery = Duration::from_secs(4);
        let mut st = State {
            recovery: Some(recovery),
            ..State::default()
        };
        let early = held(&mut st, 1, t0);
        let late = held(&mut st, 2, t0 + Duration::from_secs(1));
        assert_eq!(st.next_wakeup(), Some(t0 + recovery));
        let mut out = Vec::new();
        assert_eq!(st.tick("t", t0 + recovery - MS, &mut out), None);
        assert!(out.is_empty());
        assert_eq!(st.tick("t", t0 + recovery, &mut out), None);
        super::super::complete_all(out.drain(..));
        assert_eq!(early.try_recv().unwrap().unwrap_err(), Failure::Timeout);
        assert!(late.try_recv().is_err());
        assert_eq!(st.held.len(), 1);
        assert_eq!(st.next_wakeup(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn without_a_recovery_timeout_held_commands_wait_and_nothing_wakes_the_thread() {
        let t0 = Instant::now();
        let mut st = State::default();
        let rx = held(&mut st, 1, t0);
        assert_eq!(st.next_wakeup(), None);
        let mut out = Vec::new();
        st.tick("t", t0 + Duration::from_secs(86_400), &mut out);
        assert!(out.is_empty());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_silent_target_gets_a_nop_out_when_the_keepalive_is_due() {
        use std::io::Read;
        let t0 = Instant::now();
        let (mut st, mut far) = connected(t0);
        assert_eq!(st.next_wakeup(), Some(t0 + timing::KEEPALIVE));
        let mut out = Vec::new();
        assert_eq!(st.tick("t", t0 + timing::KEEPALIVE - MS, &mut out), None);
        assert!(!st.writer.as_ref().unwrap().pending());
        assert_eq!(st.tick("t", t0 + timing::KEEPALIVE, &mut out), None);
        assert!(st.writer.as_mut().unwrap().flush());
        let mut bhs = [0u8; 48];
        far.read_exact(&mut bhs).unwrap();
        // NOP-Out, immediate, asking for an answer (RFC 7143 11.18).
        assert_eq!(bhs[0], 0x40);
        // An Initiator Task Tag, so the target answers; no Target
        // Transfer Tag.
        assert_ne!(bhs[16..20], [0xff; 4]);
        assert_eq!(bhs[20..24], [0xff; 4]);
        let pinged = t0 + timing::KEEPALIVE;
        assert_eq!(st.next_wakeup(), Some(pinged + timing::DEAD_AFTER));
        // Unanswered: the connection goes.
        let why = st.tick("t", pinged + timing::DEAD_AFTER, &mut out);
        assert_eq!(why.as_deref(), Some("no answer from the target for 15s"));
        assert!(out.is_empty());
    }

    #[test]
    fn task_management_without_an_answer_in_time_gives_the_connection_up() {
        let t0 = Instant::now();
        let (mut st, _far) = connected(t0);
        let (tx, rx) = mpsc::channel();
        let until = t0 + TMF_TIMEOUT;
        st.tmf_waiters.insert(7, (tx, until));
        let mut out = Vec::new();
        // The target keeps answering pings meanwhile: only the TMF is late.
        let mut now = t0;
        while now + timing::KEEPALIVE < until {
            now += timing::KEEPALIVE;
            st.heard(now);
            assert_eq!(st.tick("t", now, &mut out), None);
        }
        st.heard(until - MS);
        assert_eq!(st.tick("t", until - MS, &mut out), None);
        assert_eq!(st.next_wakeup(), Some(until));
        assert!(rx.try_recv().is_err());
        let why = st.tick("t", until, &mut out);
        assert_eq!(why.as_deref(), Some("no answer to task management for 30s"));
        // The waiter learns that no answer will come.
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    }

    #[test]
    fn inquiry_report_luns_and_request_sense_leave_the_event_pending() {
        let mut st = with_event();
        assert_eq!(st.take_event(LUN, &[0x12, 0, 0, 0, 36, 0]), None);
        assert_eq!(
            st.take_event(LUN, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]),
            None
        );
        assert_eq!(st.take_event(LUN, &[0x03, 0, 0, 0, 18, 0]), None);
        assert_eq!(st.events.len(), 1);
    }

    #[test]
    fn the_next_other_command_on_the_lun_gets_the_event_once() {
        let mut st = with_event();
        // TEST UNIT READY on another LUN: not this LUN's event.
        assert_eq!(st.take_event([0; 8], &[0x00, 0, 0, 0, 0, 0]), None);
        // READ(10) of one block.
        let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(st.take_event(LUN, &read), Some(UA.to_vec()));
        assert_eq!(st.take_event(LUN, &read), None);
    }

    #[test]
    fn an_empty_cdb_leaves_the_event_pending() {
        let mut st = with_event();
        assert_eq!(st.take_event(LUN, &[]), None);
        assert_eq!(st.events.len(), 1);
    }
}
