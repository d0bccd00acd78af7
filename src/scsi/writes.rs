// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! In-flight write tracking, so that COMPARE AND WRITE (and the other
//! read-modify-write commands) are atomic against concurrent writers to the
//! same blocks (SBC-3 5.2).
//!
//! Ordinary writes register their block range for as long as they are in
//! flight. An exclusive command first waits until no registered write overlaps
//! its range (ordinary writers are never blocked during that phase, so a
//! writer that must reap its own completions cannot deadlock with it), then
//! holds its range: ordinary writes overlapping it wait until it is done,
//! which is bounded because the exclusive command does synchronous I/O only.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an exclusive command waits for overlapping writes before giving
/// up with BUSY (only reached under a continuous stream of overlapping writes).
const EXCLUSIVE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    pub start: u64,
    pub end: u64,
}

impl BlockRange {
    pub fn new(lba: u64, blocks: u64) -> BlockRange {
        BlockRange {
            start: lba,
            end: lba.saturating_add(blocks),
        }
    }

    fn overlaps(&self, other: &BlockRange) -> bool {
        self.start < other.end && other.start < self.end
    }
}

#[derive(Default)]
struct State {
    inflight: Vec<BlockRange>,
    /// Exclusive ranges being waited for (phase 1) or held (phase 2).
    waiting: usize,
    held: Vec<BlockRange>,
}

#[derive(Default)]
pub struct WriteTracker {
    state: Mutex<State>,
    changed: Condvar,
}

impl WriteTracker {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a handler panicked; the tracked ranges are
        // still consistent (each update is a single push/remove).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register an ordinary write; waits while an exclusive command holds an
    /// overlapping range.
    pub fn begin(&self, range: BlockRange) {
        let mut st = self.lock();
        while st.held.iter().any(|h| h.overlaps(&range)) {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.inflight.push(range);
    }

    /// Unregister an ordinary write.
    pub fn end(&self, range: BlockRange) {
        let mut st = self.lock();
        if let Some(i) = st.inflight.iter().position(|r| *r == range) {
            st.inflight.swap_remove(i);
        }
        if st.waiting > 0 {
            self.changed.notify_all();
        }
    }

    /// Run `f` with exclusive access to `range`. Returns None if overlapping
    /// writes did not drain in time.
    pub fn exclusive<T>(&self, range: BlockRange, f: impl FnOnce() -> T) -> Option<T> {
        let deadline = Instant::now() + EXCLUSIVE_WAIT;
        let mut st = self.lock();
        st.waiting += 1;
        loop {
            let busy = st.inflight.iter().any(|r| r.overlaps(&range))
                || st.held.iter().any(|h| h.overlaps(&range));
            if !busy {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                st.waiting -= 1;
                return None;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.waiting -= 1;
        st.held.push(range);
        drop(st);
        let result = f();
        let mut st = self.lock();
        if let Some(i) = st.held.iter().position(|r| *r == range) {
            st.held.swap_remove(i);
        }
        self.changed.notify_all();
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn exclusive_waits_for_overlapping_inflight_write() {
        let t = Arc::new(WriteTracker::default());
        t.begin(BlockRange::new(10, 5));
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            // Taken before the release: the exclusive section cannot start
            // earlier than this.
            let released_at = Instant::now();
            t2.end(BlockRange::new(10, 5));
            released_at
        });
        let ran_at = t.exclusive(BlockRange::new(12, 1), Instant::now).unwrap();
        let ended_at = h.join().unwrap();
        assert!(ran_at >= ended_at);
    }

    #[test]
    fn disjoint_write_does_not_delay_exclusive() {
        let t = WriteTracker::default();
        t.begin(BlockRange::new(0, 5));
        assert_eq!(t.exclusive(BlockRange::new(5, 5), || 7), Some(7));
    }
}
