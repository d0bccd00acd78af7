// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! I/O statistics per (controller, LUN): commands and bytes read, written
//! and other, errors by kind, commands in flight, latency histogram.
//!
//! Counting costs a few plain stores per command: every request queue has
//! its own slot (a cache line of its own), written only by that queue's
//! worker thread (under its lock) with relaxed load-and-store, no atomic
//! read-modify-write and no lock; completions that arrive on another thread
//! (iSCSI answers) go to a second half of the slot with relaxed
//! `fetch_add`. Readers add the slots up. Knows nothing about virtio or
//! SCSI beyond a status byte and a sense key.

pub mod clock;
mod metrics;
mod report;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use clock::Stamp;

pub use metrics::serve_metrics;
pub use report::{LunReport, Totals};

/// Latency histogram buckets: bucket i counts commands that took less
/// than 2^i microseconds (the last one: anything longer).
pub const BUCKETS: usize = 24;

/// What kind of command it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
    Other,
}

impl Class {
    /// From the operation code (SBC-3: READ and WRITE of every size, WRITE
    /// AND VERIFY, COMPARE AND WRITE).
    pub fn of(opcode: u8) -> Class {
        match opcode {
            0x08 | 0x28 | 0xa8 | 0x88 => Class::Read,
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x89 => Class::Write,
            _ => Class::Other,
        }
    }
}

/// A command's start, kept until it completes.
#[derive(Clone, Copy, Debug)]
pub struct Started {
    pub class: Class,
    pub at: Stamp,
    pub queue: usize,
}

/// How a command ended.
#[derive(Clone, Copy, Debug)]
pub enum End {
    /// A SCSI status (GOOD included), with the sense key of a CHECK
    /// CONDITION, and the bytes moved.
    Status {
        status: u8,
        sense_key: u8,
        bytes: u64,
    },
    /// The transport failed it (the guest saw a virtio-scsi response other
    /// than OK: aborted, reset, failure, overrun...).
    Transport,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    completed: [AtomicU64; 3],
    bytes: [AtomicU64; 2],
    /// CHECK CONDITION by sense key.
    check: [AtomicU64; 16],
    reservation_conflicts: AtomicU64,
    /// BUSY and TASK SET FULL.
    busy: AtomicU64,
    transport: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    latency_us: AtomicU64,
}

/// One request queue's counters: `local` has one writer at a time (the
/// queue's worker), `remote` any number.
#[repr(align(128))]
#[derive(Default)]
struct Slot {
    local: Counters,
    remote: Counters,
}

/// Add `n` to a counter only one thread writes at a time (no read-modify-
/// write needed; readers may see the value before or after).
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// The counters of one LUN of one controller.
pub struct LunStats {
    slots: Box<[Slot]>,
}

impl Default for LunStats {
    fn default() -> LunStats {
        LunStats::new(1)
    }
}

impl LunStats {
    /// For a controller with `queues` request queues.
    pub fn new(queues: usize) -> LunStats {
        LunStats {
            slots: (0..queues.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    fn slot(&self, queue: usize) -> &Slot {
        // Never empty (new() makes at least one).
        self.slots
            .get(queue)
            .unwrap_or_else(|| &self.slots[self.slots.len() - 1])
    }

    /// A command starts on `queue` (on its worker thread).
    #[inline]
    pub fn start(&self, queue: usize, opcode: u8, at: Stamp) -> Started {
        bump(&self.slot(queue).local.started, 1);
        Started {
            class: Class::of(opcode),
            at,
            queue,
        }
    }

    /// A command completes on its queue's worker thread, now.
    #[inline]
    pub fn end_local(&self, s: Started, end: End) {
        self.end_local_at(s, end, Stamp::now());
    }

    /// A command completed on its queue's worker thread at `now` (one
    /// clock reading for a batch of completions).
    #[inline]
    pub fn end_local_at(&self, s: Started, end: End, now: Stamp) {
        let c = &self.slot(s.queue).local;
        record(c, s, end, bump);
        latency(c, s, now, bump);
    }

    /// A command completed on its queue's worker thread; its latency is
    /// recorded later (`latency_local`), with the round's end.
    #[inline]
    pub fn count_local(&self, s: Started, end: End) {
        record(&self.slot(s.queue).local, s, end, bump);
    }

    /// The latency of a command counted with `count_local`: it reached the
    /// guest at `now` (the end of the virtqueue round, when the guest is
    /// told).
    #[inline]
    pub fn latency_local(&self, s: Started, now: Stamp) {
        latency(&self.slot(s.queue).local, s, now, bump);
    }

    /// A command completes on another thread.
    pub fn end_remote(&self, s: Started, end: End) {
        let add = |c: &AtomicU64, n| {
            c.fetch_add(n, Relaxed);
        };
        let c = &self.slot(s.queue).remote;
        record(c, s, end, add);
        latency(c, s, Stamp::now(), add);
    }
}

#[inline]
fn latency(c: &Counters, s: Started, now: Stamp, add: impl Fn(&AtomicU64, u64)) {
    let us = s.at.micros_until(now);
    let bucket = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
    add(&c.latency[bucket], 1);
    add(&c.latency_us, us);
}

#[inline]
fn record(c: &Counters, s: Started, end: End, add: impl Fn(&AtomicU64, u64)) {
    let class = s.class as usize;
    if let Some(n) = c.completed.get(class) {
        add(n, 1);
    }
    match end {
        End::Status {
            status,
            sense_key,
            bytes,
        } => match status {
            0x00 => {
                if let Some(b) = c.bytes.get(class) {
                    add(b, bytes);
                }
            }
            0x02 => add(&c.check[usize::from(sense_key & 0x0f)], 1),
            0x18 => add(&c.reservation_conflicts, 1),
            _ => add(&c.busy, 1),
        },
        End::Transport => add(&c.transport, 1),
    }
}

/// The sense key of fixed or descriptor-format sense data (0 if none).
pub fn sense_key(sense: &[u8]) -> u8 {
    crate::scsi::sense::decode(sense).map_or(0, |(key, _, _)| key)
}

#[cfg(test)]
mod tests;
