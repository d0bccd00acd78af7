// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Used-buffer notification coalescing for the request queues.
//!
//! Every used-buffer notification costs the driver an interrupt (with KVM,
//! a VM exit and an injection) and costs us an eventfd write, which wakes
//! the vCPU thread that then often preempts us. While a queue has many
//! commands in flight, more completions are due within microseconds; so
//! when the queue is that busy, a notification waits until `delay` has
//! passed since the previous one and covers every completion since (the
//! used ring itself is always written at once: a polling driver sees the
//! answer immediately). A queue with few commands in flight is notified at
//! once, so latency-bound workloads (QD1) are never delayed.
//!
//! A per-queue timerfd, watched by the queue's worker, ends the wait when
//! no further completion comes to end it. Virtio lets the device choose
//! when to notify (2.7.7.2 only forbids notifying when the driver asked
//! not to be); this is NIC-style interrupt moderation.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// How a controller moderates its request queues' notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Longest a notification waits; zero turns coalescing off.
    pub delay: Duration,
    /// Commands in flight on the queue (after the completion) from which
    /// its notifications wait.
    pub depth: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            delay: Duration::from_micros(DEFAULT_DELAY_US),
            depth: DEFAULT_DEPTH,
        }
    }
}

/// Default longest wait of a notification, in microseconds.
pub const DEFAULT_DELAY_US: u64 = 50;
/// Default queue depth from which notifications wait.
pub const DEFAULT_DEPTH: usize = 16;

struct Queue {
    timer: TimerFd,
    /// The timer will fire (and its worker will call `expired`).
    armed: bool,
    /// Completions the driver has not been notified about.
    pending: bool,
    /// When the driver was last notified.
    last: Instant,
}

/// Coalescing state of every request queue of one connection.
pub struct Coalesce {
    policy: Policy,
    queues: Vec<Mutex<Queue>>,
}

impl Coalesce {
    pub fn new(policy: Policy, request_queues: usize) -> io::Result<Coalesce> {
        let queues = (0..request_queues)
            .map(|_| {
                let timer = TimerFd::new().map_err(io::Error::from)?;
                // SAFETY: fcntl on a descriptor we own; F_SETFL with
                // O_NONBLOCK touches no memory. Non-blocking: a timer
                // re-armed between its expiry and our read must not block
                // the worker.
                let r = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Mutex::new(Queue {
                    timer,
                    armed: false,
                    pending: false,
                    last: Instant::now(),
                }))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Coalesce { policy, queues })
    }

    fn queue(&self, q: usize) -> Option<MutexGuard<'_, Queue>> {
        self.queues
            .get(q)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The timerfd of queue `q`, for its worker's epoll loop.
    pub fn timer_fd(&self, q: usize) -> Option<i32> {
        self.queue(q).map(|s| s.timer.as_raw_fd())
    }

    /// Queue `q` completed requests and still has `in_flight` commands:
    /// whether to notify the driver now. If not, the notification is
    /// pending and the queue's timer is armed to send it.
    pub fn completed(&self, q: usize, in_flight: usize) -> bool {
        let Some(mut s) = self.queue(q) else {
            return true;
        };
        let now = Instant::now();
        if self.policy.delay.is_zero() || in_flight < self.policy.depth {
            s.pending = false;
            s.last = now;
            return true;
        }
        let due = s.last + self.policy.delay;
        if now >= due {
            s.pending = false;
            s.last = now;
            return true;
        }
        s.pending = true;
        if !s.armed {
            match s.timer.reset(due - now, None) {
                Ok(()) => s.armed = true,
                // No timer: never leave a completion unannounced.
                Err(_) => {
                    s.pending = false;
                    s.last = now;
                    return true;
                }
            }
        }
        false
    }

    /// Queue `q` is stopping: whether a notification is still owed (it is
    /// then due now; the timer finds nothing left when it fires).
    pub fn flush(&self, q: usize) -> bool {
        let Some(mut s) = self.queue(q) else {
            return false;
        };
        s.last = Instant::now();
        std::mem::take(&mut s.pending)
    }

    /// Queue `q`'s timer fired: whether a notification is due now.
    pub fn expired(&self, q: usize) -> bool {
        let Some(mut s) = self.queue(q) else {
            return false;
        };
        // Consume the expiry (EAGAIN if it was re-armed since: harmless).
        let _ = s.timer.wait();
        s.armed = false;
        if !s.pending {
            return false;
        }
        let now = Instant::now();
        let due = s.last + self.policy.delay;
        if now < due {
            // Notified since the timer was armed; wait out the rest.
            if s.timer.reset(due - now, None).is_ok() {
                s.armed = true;
                return false;
            }
        }
        s.pending = false;
        s.last = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(us: u64, depth: usize) -> Policy {
        Policy {
            delay: Duration::from_micros(us),
            depth,
        }
    }

    fn readable(fd: i32, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
    }

    #[test]
    fn shallow_queues_are_notified_at_once() {
        let c = Coalesce::new(policy(1_000_000, 8), 1).unwrap();
        for _ in 0..100 {
            assert!(c.completed(0, 7));
        }
        assert!(!readable(c.timer_fd(0).unwrap(), 0));
    }

    #[test]
    fn off_means_every_completion_notifies() {
        let c = Coalesce::new(policy(0, 1), 1).unwrap();
        for _ in 0..100 {
            assert!(c.completed(0, 64));
        }
    }

    #[test]
    fn busy_queue_waits_and_the_timer_delivers() {
        let c = Coalesce::new(policy(20_000, 8), 2).unwrap();
        // The first busy completion after a shallow one waits.
        assert!(c.completed(0, 1));
        assert!(!c.completed(0, 31));
        assert!(!c.completed(0, 30));
        // The other queue is independent.
        assert!(c.completed(1, 0));
        let fd = c.timer_fd(0).unwrap();
        assert!(readable(fd, 1000), "the timer fires within the delay");
        assert!(c.expired(0));
        // Nothing pending: a second expiry (spurious) notifies nothing.
        assert!(!c.expired(0));
    }

    #[test]
    fn completion_after_the_delay_notifies_and_the_timer_finds_nothing() {
        let c = Coalesce::new(policy(5_000, 8), 1).unwrap();
        assert!(c.completed(0, 1));
        assert!(!c.completed(0, 20));
        std::thread::sleep(Duration::from_millis(10));
        assert!(c.completed(0, 20));
        assert!(readable(c.timer_fd(0).unwrap(), 1000));
        assert!(!c.expired(0));
    }

    #[test]
    fn a_stopping_queue_owes_its_pending_notification_once() {
        let c = Coalesce::new(policy(50_000, 8), 1).unwrap();
        assert!(!c.flush(0));
        assert!(c.completed(0, 1));
        assert!(!c.completed(0, 9));
        assert!(c.flush(0));
        assert!(!c.flush(0));
        assert!(readable(c.timer_fd(0).unwrap(), 1000));
        assert!(!c.expired(0), "flushed: the timer owes nothing");
    }

    #[test]
    fn unknown_queue_notifies() {
        let c = Coalesce::new(policy(1000, 1), 1).unwrap();
        assert!(c.completed(5, 100));
        assert!(!c.expired(5));
    }
}
