// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a session decides by time: when to send a keepalive, when a silent
//! or stalled target is dead, when to log in again (backoff and the
//! target's Time2Wait), when a command has waited past the recovery
//! timeout, when task management has waited too long.
//!
//! Nothing here reads a clock. The drivers (the session thread, the event
//! loops that receive) pass `now` in and ask when they must look again;
//! the tests run these rules on made-up instants, without sleeping.

use std::time::{Duration, Instant};

/// Time between a NOP-Out keepalive and the next, when the target is idle.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(5);
/// No answer to a keepalive for this long, or none of our bytes taken for
/// this long while some wait: the target is dead.
pub(super) const DEAD_AFTER: Duration = Duration::from_secs(15);
/// Task management without an answer for this long loses the connection.
pub(super) const TMF_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnection backoff bounds.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the keepalive rules ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Due {
    Nothing,
    /// Send a NOP-Out: the target has been silent for `KEEPALIVE`.
    Ping,
    /// Drop the connection, for this reason.
    Dead(String),
}

/// Whether the target of a live connection is alive, as far as time tells.
#[derive(Clone, Debug)]
pub(super) struct Liveness {
    /// When the target last sent anything.
    last_heard: Instant,
    /// When the unanswered keepalive went out.
    ping_sent: Option<Instant>,
    /// The writer's progress count when bytes were first seen waiting
    /// without it moving, and since when.
    stall: Option<(u64, Instant)>,
}

impl Liveness {
    /// A connection that came up at `now`.
    pub(super) fn new(now: Instant) -> Liveness {
        Liveness {
            last_heard: now,
            ping_sent: None,
            stall: None,
        }
    }

    /// The target sent something at `now`: it is alive.
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
        self.ping_sent = None;
    }

    /// Apply the rules at `now`. `waiting` is the writer's progress count
    /// (`Writer::progress`) when bytes wait to be sent, None when nothing
    /// does: a target that stops reading while it goes on sending (NOP-Ins,
    /// say) never falls silent, and what we owe it would pile up.
    pub(super) fn check(&mut self, now: Instant, waiting: Option<u64>) -> Due {
        match (waiting, self.stall) {
            (None, _) => self.stall = None,
            (Some(p), Some((q, _))) if p == q => {}
            (Some(p), _) => self.stall = Some((p, now)),
        }
        if let Some((_, since)) = self.stall {
            if now.saturating_duration_since(since) >= DEAD_AFTER {
                return Due::Dead(format!(
                    "the target has taken none of our data for {DEAD_AFTER:?}"
                ));
            }
        }
        match self.ping_sent {
            Some(t) if now.saturating_duration_since(t) >= DEAD_AFTER => {
                Due::Dead(format!("no answer from the target for {DEAD_AFTER:?}"))
            }
            Some(_) => Due::Nothing,
            None if now.saturating_duration_since(self.last_heard) >= KEEPALIVE => {
                self.ping_sent = Some(now);
                Due::Ping
            }
            None => Due::Nothing,
        }
    }

    /// When `check` has something to do next, if nothing else happens.
    pub(super) fn next(&self) -> Instant {
        let silence = match self.ping_sent {
            Some(t) => t + DEAD_AFTER,
            None => self.last_heard + KEEPALIVE,
        };
        match self.stall {
            Some((_, since)) => silence.min(since + DEAD_AFTER),
            None => silence,
        }
    }
}

/// How long to wait before logging in again after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(BACKOFF_MIN)
    }
}

impl Backoff {
    /// When the next login may start, decided at `now`: after the backoff,
    /// or the target's Time2Wait if that is longer.
    pub(super) fn login_at(self, now: Instant, time2wait: Duration) -> Instant {
        now + self.0.max(time2wait)
    }

    /// The wait before the next login, unless the target asks for longer.
    pub(super) fn delay(self) -> Duration {
        self.0
    }

    /// A login failed: wait twice as long next time, up to `BACKOFF_MAX`.
    pub(super) fn failed(&mut self) {
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }

    /// A login worked: the next loss starts again from `BACKOFF_MIN`.
    pub(super) fn succeeded(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// When a command caught by a loss at `since` runs out of recovery time
/// (None: no loss, or no recovery timeout).
pub(super) fn recovery_deadline(
    recovery: Option<Duration>,
    since: Option<Instant>,
) -> Option<Instant> {
    Some(since? + recovery?)
}

/// Whether a loss at `since` is older than the recovery timeout at `now`.
pub(super) fn past_recovery(
    recovery: Option<Duration>,
    since: Option<Instant>,
    now: Instant,
) -> bool {
    recovery_deadline(recovery, since).is_some_and(|d| now >= d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_silent_target_is_pinged_once_after_the_keepalive_interval() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        assert_eq!(l.next(), t0 + KEEPALIVE);
        assert_eq!(l.check(t0 + KEEPALIVE - MS, None), Due::Nothing);
        assert_eq!(l.check(t0 + KEEPALIVE, None), Due::Ping);
        // One keepalive at a time: the next look is when it is overdue.
        assert_eq!(l.check(t0 + KEEPALIVE + MS, None), Due::Nothing);
        assert_eq!(l.next(), t0 + KEEPALIVE + DEAD_AFTER);
    }

    #[test]
    fn a_target_that_answers_its_keepalives_is_never_dead() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let mut now = t0;
        for _ in 0..100 {
            now += KEEPALIVE;
            assert_eq!(l.check(now, None), Due::Ping);
            now += DEAD_AFTER - MS;
            assert_eq!(l.check(now, None), Due::Nothing);
            l.heard(now);
        }
    }

    #[test]
    fn no_answer_to_a_keepalive_within_dead_after_is_a_dead_target() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let pinged = t0 + KEEPALIVE;
        assert_eq!(l.check(pinged, None), Due::Ping);
        assert_eq!(l.check(pinged + DEAD_AFTER - MS, None), Due::Nothing);
        let Due::Dead(why) = l.check(pinged + DEAD_AFTER, None) else {
            panic!("still alive")
        };
        assert_eq!(why, "no answer from the target for 15s");
    }

    #[test]
    fn anything_heard_restarts_the_keepalive_interval() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        l.heard(t0 + 4 * Duration::from_secs(1));
        assert_eq!(l.check(t0 + KEEPALIVE, None), Due::Nothing);
        assert_eq!(l.next(), t0 + Duration::from_secs(4) + KEEPALIVE);
        // A late driver passing an older instant does not move it back.
        l.heard(t0);
        assert_eq!(l.next(), t0 + Duration::from_secs(4) + KEEPALIVE);
    }

    #[test]
    fn bytes_waiting_without_progress_for_dead_after_are_a_dead_target() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        // The target keeps talking (no keepalive due) but takes nothing.
        let mut now = t0;
        assert_eq!(l.check(now, Some(7)), Due::Nothing);
        assert_eq!(l.next(), t0 + KEEPALIVE);
        while now + Duration::from_secs(1) < t0 + DEAD_AFTER {
            now += Duration::from_secs(1);
            l.heard(now);
            assert_eq!(l.check(now, Some(7)), Due::Nothing);
        }
        assert_eq!(l.next(), t0 + DEAD_AFTER);
        l.heard(t0 + DEAD_AFTER);
        let Due::Dead(why) = l.check(t0 + DEAD_AFTER, Some(7)) else {
            panic!("a stalled writer went unnoticed")
        };
        assert_eq!(why, "the target has taken none of our data for 15s");
    }

    #[test]
    fn progress_or_an_empty_queue_restarts_the_stall_clock() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        assert_eq!(l.check(t0, Some(1)), Due::Nothing);
        // Some bytes went out: the clock restarts from the first look that
        // saw the new count.
        let t1 = t0 + DEAD_AFTER - MS;
        l.heard(t1);
        assert_eq!(l.check(t1, Some(2)), Due::Nothing);
        l.heard(t0 + DEAD_AFTER);
        assert_eq!(l.check(t0 + DEAD_AFTER, Some(2)), Due::Nothing);
        // Nothing waits: no stall, whatever the count.
        let t2 = t1 + DEAD_AFTER;
        l.heard(t2);
        assert_eq!(l.check(t2, None), Due::Nothing);
        assert_eq!(l.check(t2, Some(2)), Due::Nothing);
        assert_eq!(l.next(), t2 + KEEPALIVE);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_bound_and_a_success_resets_it() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.login_at(t0, Duration::ZERO), t0 + BACKOFF_MIN);
        let mut seen = vec![];
        for _ in 0..10 {
            b.failed();
            seen.push(b.login_at(t0, Duration::ZERO) - t0);
        }
        assert_eq!(seen[0], Duration::from_secs(1));
        assert_eq!(seen[5], Duration::from_secs(30));
        assert!(seen.iter().all(|&d| d <= BACKOFF_MAX));
        b.succeeded();
        assert_eq!(b, Backoff::default());
    }

    #[test]
    fn the_targets_time2wait_wins_when_it_is_longer_than_the_backoff() {
        let t0 = Instant::now();
        let b = Backoff::default();
        let t2w = Duration::from_secs(2);
        assert_eq!(b.login_at(t0, t2w), t0 + t2w);
        assert_eq!(b.login_at(t0, MS), t0 + BACKOFF_MIN);
    }

    #[test]
    fn the_recovery_timeout_ends_exactly_at_its_deadline() {
        let t0 = Instant::now();
        let r = Some(Duration::from_secs(4));
        assert!(!past_recovery(
            r,
            Some(t0),
            t0 + Duration::from_secs(4) - MS
        ));
        assert!(past_recovery(r, Some(t0), t0 + Duration::from_secs(4)));
        // No loss, or no timeout: never.
        assert!(!past_recovery(r, None, t0 + Duration::from_secs(3600)));
        assert!(!past_recovery(
            None,
            Some(t0),
            t0 + Duration::from_secs(3600)
        ));
        assert_eq!(
            recovery_deadline(r, Some(t0)),
            Some(t0 + Duration::from_secs(4))
        );
    }
}
