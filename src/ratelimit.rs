// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rate-limited logging of problems caused from outside (a misbehaving
//! guest or front-end): the first few of a window are logged, the rest are
//! counted and summarised once the next window opens, so a hostile peer
//! cannot flood the log but nothing goes unmentioned. Time is an input.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to do with one more problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` problems of the previous window were not
    /// logged (say so).
    Log { suppressed: u64 },
    /// Count it, quietly (debug level at most).
    Quiet,
}

/// At most `burst` logged problems per `window`.
pub struct RateLimit {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

struct State {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            state: Mutex::new(State {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// One more problem, at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = s
            .start
            .is_none_or(|t| now.saturating_duration_since(t) >= self.window);
        if expired {
            let suppressed = std::mem::take(&mut s.suppressed);
            s.start = Some(now);
            s.logged = 1;
            return Verdict::Log { suppressed };
        }
        if s.logged < self.burst {
            s.logged += 1;
            return Verdict::Log { suppressed: 0 };
        }
        s.suppressed += 1;
        Verdict::Quiet
    }
}

/// Log `$what` (format arguments) at warn level through `$limit`, or at
/// debug level once the limit is reached; a line says how many the last
/// window held back.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($what:tt)+) => {
        match $limit.check(std::time::Instant::now()) {
            $crate::ratelimit::Verdict::Log { suppressed: 0 } => log::warn!($($what)+),
            $crate::ratelimit::Verdict::Log { suppressed } => {
                log::warn!("({suppressed} similar problem(s) not logged in the last minute)");
                log::warn!($($what)+)
            }
            $crate::ratelimit::Verdict::Quiet => log::debug!($($what)+),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_counted_and_summarised_in_the_next_window() {
        let l = RateLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                l.check(t0 + Duration::from_secs(i)),
                Verdict::Log { suppressed: 0 }
            );
        }
        for i in 3..10 {
            assert_eq!(l.check(t0 + Duration::from_secs(i)), Verdict::Quiet);
        }
        // The next window: the 7 held back are mentioned once.
        assert_eq!(
            l.check(t0 + Duration::from_secs(61)),
            Verdict::Log { suppressed: 7 }
        );
        assert_eq!(
            l.check(t0 + Duration::from_secs(62)),
            Verdict::Log { suppressed: 0 }
        );
    }

    #[test]
    fn a_quiet_peer_is_always_logged() {
        let l = RateLimit::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(
                l.check(t0 + Duration::from_secs(61 * i)),
                Verdict::Log { suppressed: 0 }
            );
        }
    }
}
