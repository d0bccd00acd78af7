// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Receive coalescing: while many answers are due, wake up once for
//! several of the target's answers, or for a big piece of a big read,
//! instead of once per answer or per segment.
//!
//! Every wake-up of the receiving thread (epoll, a context switch, a
//! `read(2)` that finds one PDU) costs several microseconds, more than the
//! protocol work for a 4 KiB read, and a 1 MiB read arrives in many pieces.
//! When the session has at least `depth` commands out, or only big reads
//! with `STREAM_DUE` or more still to come, the socket's receive low-water mark
//! (`SO_RCVLOWAT`) is raised to half the bytes the target still owes
//! (at most `depth` answers' worth on average and `MAX_LOW_WATER`), so the
//! kernel reports the socket readable once that much is queued. Half of
//! what is owed: a target that sends everything promptly always reaches
//! the mark. A timer bounds the wait for one that does not: at most
//! `delay` after a receive round the next one runs whatever has arrived. A
//! round that finds nothing (the target went quiet) and a session with
//! few commands, a small one among them or little data due put the mark
//! back to one byte, so a small command at low depth is never delayed. This is the receive side of NIC
//! interrupt moderation (ethtool's rx-usecs / rx-frames).

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

/// The highest low-water mark set: beyond this, waiting saves nothing
/// measurable and holds answers back from the guest for longer.
pub(super) const MAX_LOW_WATER: usize = 1024 * 1024;

/// Bytes due from which a wait is worth it however few commands are out,
/// if all of them are big reads: their data arrives in many pieces.
pub(super) const STREAM_DUE: usize = 256 * 1024;

/// The bytes an answer without data takes (a SCSI Response header).
pub(super) const ANSWER_HEADER: usize = 48;

/// The receive low-water mark for the next wait: 1 (wake up for any byte)
/// unless the tasks `out` and the `due` bytes they still owe make
/// coalescing worthwhile: at least `c.depth` tasks, or `STREAM_DUE` bytes
/// of big reads only (a small answer among them is not held back for
/// them). Then half of `due`, at most `c.depth` answers' worth on average,
/// `cap` and `MAX_LOW_WATER`, rounded down to four significant bits.
/// `heard`: the last round received something.
pub(super) fn low_water(c: Coalescing, out: Awaited, due: usize, heard: bool, cap: usize) -> usize {
    let commands = out.tasks;
    if c.delay.is_zero() || !heard || commands == 0 {
        return 1;
    }
    let stream = due >= STREAM_DUE && out.small == 0;
    if commands < c.depth && !stream {
        return 1;
    }
    let answers = (due / commands).saturating_mul(c.depth);
    let want = (due / 2).min(answers).min(cap).min(MAX_LOW_WATER);
    if want < 2 * ANSWER_HEADER {
        return 1;
    }
    // Four significant bits: a queue whose depth wobbles between rounds
    // does not change the mark every time.
    let shift = want.ilog2().saturating_sub(3);
    (want >> shift) << shift
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
    /// disarmed). An armed timer that expires at least `delay / 2` from
    /// now is left alone: re-arming costs a system call (and, in a virtual
    /// machine, an exit), and a receive round often comes every few
    /// microseconds.
    pub(super) fn set(&mut self, delay: Option<Duration>) -> bool {
        match delay {
            Some(d) => {
                let now = Instant::now();
                if self.deadline.is_some_and(|t| t >= now + d / 2) {
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
    fn a_big_read_waits_for_half_of_what_is_still_due_until_little_is() {
        let cap = 1 << 20;
        let mib = ANSWER_HEADER + (1 << 20);
        // One 1 MiB read: half of it, then half of what is left.
        assert_eq!(low_water(ON, big(1), mib, true, cap), 512 * 1024);
        assert_eq!(low_water(ON, big(1), 300_000, true, cap), 144 * 1024);
        // The tail of it: any byte.
        assert_eq!(low_water(ON, big(1), STREAM_DUE - 1, true, cap), 1);
        // Four of them: the maximum, or the socket's limit.
        assert_eq!(low_water(ON, big(4), 4 * mib, true, 4 * cap), MAX_LOW_WATER);
        assert_eq!(low_water(ON, big(4), 4 * mib, true, 100_000), 96 * 1024);
        // Nothing heard in the last round: any byte.
        assert_eq!(low_water(ON, big(4), 4 * mib, false, cap), 1);
        // A small command among a few big reads: its answer is not held
        // back for their data.
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
        // Expiring later than half a shorter delay from now: left alone.
        assert!(t.set(Some(Duration::from_millis(1))));
        assert!(!readable(&t, 50));
        assert!(t.set(None));
        assert!(t.set(Some(Duration::from_millis(1))));
        assert!(readable(&t, 1000));
        assert!(t.set(None));
        assert!(!readable(&t, 0), "disarming clears it too");
    }
}
