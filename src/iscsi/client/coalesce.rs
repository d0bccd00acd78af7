// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Receive coalescing: while many answers are due, wake up once for
//! several of the target's answers, or once for the rest of a big read,
//! instead of once per answer or per segment.
//!
//! Every wake-up of the receiving thread (epoll, a context switch, a
//! `read(2)` that finds one PDU) costs several microseconds, more than the
//! protocol work for a 4 KiB read, and a 1 MiB read arrives in many pieces.
//! The socket's receive low-water mark (`SO_RCVLOWAT`) makes the kernel
//! report it readable only once that much is queued:
//!
//! * `Wait::Answers`: with at least `depth` commands out, half the bytes
//!   the target still owes (at most `depth` answers' worth on average and
//!   `MAX_LOW_WATER`). Half of what is owed: a target that sends
//!   everything promptly reaches the mark. The timer bounds the wait for
//!   one that does not: at most `delay` after a receive round the next one
//!   runs whatever has arrived.
//! * `Wait::Stream`: with fewer commands out, all of them big reads,
//!   `STREAM_DUE` or more still to come and as much still owed by the
//!   read closest to done: the fewest bytes the target still sends for
//!   that read (`Session::least_due`), at most half of what it owes in
//!   all. Whichever read it is sending, its last byte reaches the mark, so
//!   the wait never delays a completion and needs a longer bound only for
//!   a target that sends less than it owes (an error, a short read):
//!   `stream_delay`. A small command submitted meanwhile puts the mark
//!   back to one byte at once (`Shared::note_small_sent`), so its answer
//!   does not wait for the reads' data. Big reads that each owe less are
//!   waited for as `Wait::Answers`, several at a time.
//! * `Wait::Any`: otherwise (a round that found nothing, a session with few
//!   commands, a small one among them, or little data due): one byte, so a
//!   small command at low depth is never delayed.
//!
//! This is the receive side of NIC interrupt moderation (ethtool's rx-usecs
//! / rx-frames).

use std::io;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::iscsi::session::Awaited;

/// How a session moderates its receive wake-ups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalescing {
    /// Longest an answer waits in the socket; zero turns coalescing off.
    pub delay: Duration,
    /// Commands in flight from which answers are coalesced.
    pub depth: usize,
}

impl Default for Coalescing {
    fn default() -> Coalescing {
        Coalescing {
            delay: Duration::from_micros(DEFAULT_DELAY_US),
            depth: DEFAULT_DEPTH,
        }
    }
}

/// Default longest wait of an answer, in microseconds.
pub const DEFAULT_DELAY_US: u64 = 200;
/// Default number of commands in flight from which answers are coalesced.
pub const DEFAULT_DEPTH: usize = 16;

/// The highest low-water mark set for many answers: beyond this, waiting
/// saves nothing measurable and holds answers back from the guest for
/// longer.
pub(super) const MAX_LOW_WATER: usize = 1024 * 1024;

/// The highest low-water mark set for the rest of a big read: a 4 MiB read
/// waits once (QEMU's default `max_sectors` allows 32 MiB; the socket's
/// buffer is the other bound, see `Reader::low_water_cap`).
pub(super) const MAX_STREAM: usize = 4 * 1024 * 1024;

/// Bytes due from which a wait is worth it however few commands are out,
/// if all of them are big reads: their data arrives in many pieces.
pub(super) const STREAM_DUE: usize = 256 * 1024;

/// The shortest bound on a `Wait::Stream`. Its mark is met by the data of
/// whichever read the target is sending, so the bound only matters for a
/// target that sends less than it owes; 1 MiB takes 500 us at 2 GB/s
/// (tgtd on loopback here), a bound as short as `DEFAULT_DELAY_US` ended
/// most of those waits early (2.5 wake-ups per 1 MiB read).
pub(super) const STREAM_DELAY: Duration = Duration::from_millis(2);

/// The bytes an answer without data takes (a SCSI Response header).
pub(super) const ANSWER_HEADER: usize = 48;

/// How the next wait for the target's answers ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// At any byte.
    Any,
    /// When this many bytes of many commands' answers are queued, or the
    /// timer (`Coalescing::delay`) ends it.
    Answers(usize),
    /// When this many bytes of big reads' data are queued (no more than
    /// the read the target sends next still owes), or the timer
    /// (`stream_delay`) ends it.
    Stream(usize),
}

impl Wait {
    /// The socket's low-water mark for it.
    pub(super) fn mark(self) -> usize {
        match self {
            Wait::Any => 1,
            Wait::Answers(m) | Wait::Stream(m) => m,
        }
    }

    /// How long the timer lets it last (None: no timer).
    pub(super) fn bound(self, c: Coalescing) -> Option<Duration> {
        match self {
            Wait::Any => None,
            Wait::Answers(_) => Some(c.delay),
            Wait::Stream(_) => Some(stream_delay(c)),
        }
    }
}

/// The bound on a `Wait::Stream`: the configured delay, or `STREAM_DELAY`
/// if that is longer.
pub(super) fn stream_delay(c: Coalescing) -> Duration {
    c.delay.max(STREAM_DELAY)
}

/// The next wait, given the tasks `out`, the `due` bytes they still owe,
/// and, if all of them are big reads, the `least` bytes one of them still
/// owes (both less what the reader already holds of a partial PDU).
/// `Answers` from `c.depth` tasks: half of `due`, at most `c.depth`
/// answers' worth on average, `cap` and `MAX_LOW_WATER`, rounded down to
/// four significant bits. For fewer tasks, all big reads with `STREAM_DUE`
/// due: `Stream` if `least` is `STREAM_DUE` or more (`least`, at most half
/// of `due`, so that a lone read's first half is copied into guest memory
/// while the rest arrives instead of after all of it, `cap` and
/// `MAX_STREAM`), `Answers` otherwise. `heard`: the last round received
/// something.
pub(super) fn next_wait(
    c: Coalescing,
    out: Awaited,
    due: usize,
    least: Option<usize>,
    heard: bool,
    cap: usize,
) -> Wait {
    let commands = out.tasks;
    if c.delay.is_zero() || !heard || commands == 0 {
        return Wait::Any;
    }
    if commands < c.depth {
        if due < STREAM_DUE || out.small > 0 {
            return Wait::Any;
        }
        if let Some(least) = least.filter(|&l| l >= STREAM_DUE) {
            let want = least.min(due / 2).min(cap).min(MAX_STREAM);
            return if want < 2 * ANSWER_HEADER {
                Wait::Any
            } else {
                Wait::Stream(want)
            };
        }
        // Reads that each owe little: waiting for one at a time would
        // copy each after all of it came, with nothing else to do
        // meanwhile; several at a time, within the shorter bound.
    }
    let answers = (due / commands).saturating_mul(c.depth);
    let want = (due / 2).min(answers).min(cap).min(MAX_LOW_WATER);
    if want < 2 * ANSWER_HEADER {
        return Wait::Any;
    }
    // Four significant bits: a queue whose depth wobbles between rounds
    // does not change the mark every time.
    let shift = want.ilog2().saturating_sub(3);
    Wait::Answers((want >> shift) << shift)
}

/// The timer that ends a coalesced wait: readable (through the session's
/// poll set) when it expires. Re-arming or disarming it also clears an
/// expiry nobody read, so it is never left readable.
pub(super) struct Timer {
    fd: TimerFd,
    /// When it expires, if armed (no later than the kernel's expiry).
    deadline: Option<Instant>,
}

impl Timer {
    pub(super) fn new() -> io::Result<Timer> {
        Ok(Timer {
            fd: TimerFd::new().map_err(io::Error::from)?,
            deadline: None,
        })
    }

    pub(super) fn fd(&self) -> &TimerFd {
        &self.fd
    }

    /// Make sure the timer expires no later than `delay` from now (Some),
    /// or disarm it (None); false if it could not be armed (it is then
    /// disarmed). An armed timer that expires between `delay / 2` and
    /// `delay` from now is left alone: re-arming costs a system call (and,
    /// in a virtual machine, an exit), and a receive round often comes
    /// every few microseconds.
    pub(super) fn set(&mut self, delay: Option<Duration>) -> bool {
        match delay {
            Some(d) => {
                let now = Instant::now();
                if self
                    .deadline
                    .is_some_and(|t| t >= now + d / 2 && t <= now + d)
                {
                    return true;
                }
                if self.fd.reset(d, None).is_ok() {
                    self.deadline = Some(now + d);
                    return true;
                }
                let _ = self.fd.clear();
                self.deadline = None;
                false
            }
            None => {
                if self.deadline.take().is_some() {
                    let _ = self.fd.clear();
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    const ON: Coalescing = Coalescing {
        delay: Duration::from_micros(100),
        depth: 16,
    };
    const READ_4K: usize = ANSWER_HEADER + 4096;

    /// `n` tasks out with small answers (4 KiB reads, writes, ...).
    fn small(n: usize) -> Awaited {
        Awaited {
            tasks: n,
            small: n,
            data: 0,
        }
    }

    /// `n` big reads out.
    fn big(n: usize) -> Awaited {
        Awaited {
            tasks: n,
            small: 0,
            data: 0,
        }
    }

    /// The mark of the next wait when no big read's figure is known
    /// (`least` None: a small task out, or many big reads).
    fn low_water(c: Coalescing, out: Awaited, due: usize, heard: bool, cap: usize) -> usize {
        next_wait(c, out, due, None, heard, cap).mark()
    }

    #[test]
    fn few_commands_a_quiet_target_or_off_wake_up_for_any_byte() {
        let cap = 1 << 20;
        assert_eq!(low_water(ON, small(15), 15 * READ_4K, true, cap), 1);
        assert_eq!(low_water(ON, small(0), 0, true, cap), 1);
        assert_eq!(low_water(ON, small(32), 32 * READ_4K, false, cap), 1);
        let no_delay = Coalescing {
            delay: Duration::ZERO,
            depth: 1,
        };
        assert_eq!(low_water(no_delay, small(32), 32 * READ_4K, true, cap), 1);
    }

    #[test]
    fn many_commands_wait_for_half_their_answers_to_four_significant_bits() {
        let cap = 1 << 20;
        // 16 x 4144 / 2 = 33152 -> 32768.
        assert_eq!(low_water(ON, small(16), 16 * READ_4K, true, cap), 32 * 1024);
        // 24 reads: 49728 -> 49152.
        assert_eq!(low_water(ON, small(24), 24 * READ_4K, true, cap), 48 * 1024);
        // A queue wobbling between 30 and 31 keeps its mark.
        let m = low_water(ON, small(30), 30 * READ_4K, true, cap);
        assert_eq!(m, low_water(ON, small(31), 31 * READ_4K, true, cap));
        assert_eq!(m, 60 * 1024);
        // More small reads: no more than 16 answers (66304 -> 65536).
        assert_eq!(low_water(ON, small(32), 32 * READ_4K, true, cap), 64 * 1024);
        assert_eq!(
            low_water(ON, small(128), 128 * READ_4K, true, cap),
            64 * 1024
        );
        // Big reads: the maximum.
        assert_eq!(low_water(ON, big(16), 16 << 20, true, cap), MAX_LOW_WATER);
        // The socket's own limit: 20000 -> 18432.
        assert_eq!(
            low_water(ON, small(32), 32 * READ_4K, true, 20_000),
            18 * 1024
        );
        // Writes: 32 status-only answers -> 768 bytes (16 answers).
        assert_eq!(low_water(ON, small(32), 32 * ANSWER_HEADER, true, cap), 768);
        // Less than two answers' worth is not worth a wait.
        assert_eq!(low_water(ON, small(16), 3 * ANSWER_HEADER, true, cap), 1);
    }

    #[test]
    fn a_few_big_reads_wait_for_the_rest_of_the_closest_to_done() {
        let cap = 1 << 20;
        let mib = ANSWER_HEADER + (1 << 20);
        let wait = |out, due, least, heard, cap| next_wait(ON, out, due, Some(least), heard, cap);
        // One 1 MiB read: half of it (the first half goes into guest
        // memory while the rest arrives), then half of what is left.
        assert_eq!(
            wait(big(1), mib, (1 << 20) + 144, true, 4 * cap),
            Wait::Stream(mib / 2)
        );
        assert_eq!(
            wait(big(1), 300_000, 300_000, true, cap),
            Wait::Stream(150_000)
        );
        // The tail of it: any byte.
        assert_eq!(
            wait(big(1), STREAM_DUE - 1, STREAM_DUE - 1, true, cap),
            Wait::Any
        );
        // Four of them: what the one closest to done still owes, within
        // the socket's limit and the maximum.
        assert_eq!(
            wait(big(4), 4 * mib, 600_000, true, cap),
            Wait::Stream(600_000)
        );
        assert_eq!(
            wait(big(4), 4 * mib, 600_000, true, 100_000),
            Wait::Stream(100_000)
        );
        assert_eq!(
            wait(big(4), 32 * mib, 8 * mib, true, 64 * mib),
            Wait::Stream(MAX_STREAM)
        );
        // Little left of the closest (here only its status): several
        // reads' worth at a time, within the shorter bound, as for many
        // answers.
        assert_eq!(wait(big(4), 3 * mib, 0, true, cap), Wait::Answers(cap));
        assert_eq!(
            wait(big(4), 3 * mib, STREAM_DUE - 1, true, cap),
            Wait::Answers(cap)
        );
        // Nothing heard in the last round: any byte.
        assert_eq!(wait(big(4), 4 * mib, 600_000, false, cap), Wait::Any);
        // A small command among a few big reads: its answer is not held
        // back for their data (the session gives no figure then).
        let mixed = Awaited {
            tasks: 3,
            small: 1,
            data: 0,
        };
        assert_eq!(low_water(ON, mixed, 2 * mib + READ_4K, true, cap), 1);
        // Among many commands it is, as any answer is.
        let many = Awaited {
            tasks: 16,
            small: 1,
            data: 0,
        };
        assert!(low_water(ON, many, 15 * mib + READ_4K, true, cap) > 1);
    }

    #[test]
    fn a_stream_wait_is_bounded_by_the_longer_stream_delay() {
        assert_eq!(Wait::Any.bound(ON), None);
        assert_eq!(Wait::Answers(4096).bound(ON), Some(ON.delay));
        assert_eq!(Wait::Stream(1 << 20).bound(ON), Some(STREAM_DELAY));
        let long = Coalescing {
            delay: Duration::from_millis(5),
            depth: 16,
        };
        assert_eq!(Wait::Stream(1 << 20).bound(long), Some(long.delay));
    }

    fn readable(t: &Timer, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: t.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
    }

    #[test]
    fn the_timer_fires_once_armed_and_rearming_or_disarming_clears_it() {
        let mut t = Timer::new().unwrap();
        assert!(t.set(None));
        assert!(!readable(&t, 20));
        assert!(t.set(Some(Duration::from_millis(5))));
        assert!(readable(&t, 1000), "fires");
        // Expired and not read: re-arming clears it.
        assert!(t.set(Some(Duration::from_secs(60))));
        assert!(!readable(&t, 0));
        assert!(!readable(&t, 50));
        // Expiring later than a shorter delay from now: armed again, for
        // that delay (a stream's long wait does not bound a short one).
        assert!(t.set(Some(Duration::from_millis(1))));
        assert!(readable(&t, 1000), "re-armed for the shorter delay");
        assert!(t.set(None));
        assert!(t.set(Some(Duration::from_millis(1))));
        assert!(readable(&t, 1000));
        assert!(t.set(None));
        assert!(!readable(&t, 0), "disarming clears it too");
    }
}
