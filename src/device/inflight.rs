// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Commands in flight on each request queue, so that task management
//! functions on the control queue can find, abort and wait for them.
//!
//! Each request queue has its own table (locked by its worker for every
//! command, so uncontended except while a TMF scans it).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;

use crate::scsi::LunAddress;
use crate::seqhash::SeqMap;
use crate::virtio::Response;

/// How often a TMF re-checks whether the commands it aborted have completed.
const TMF_POLL: Duration = Duration::from_millis(1);
/// How often a long wait is reported in the log.
const TMF_WAIT_REPORT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
struct Entry {
    lun: LunAddress,
    tag: u64,
    /// Set by a TMF: the response the command completes with instead.
    abort: Option<Response>,
}

/// Which commands a TMF applies to.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    Task(LunAddress, u64),
    Lun(LunAddress),
    All,
}

impl Scope {
    fn matches(&self, e: &Entry) -> bool {
        match *self {
            Scope::Task(lun, tag) => e.lun == lun && e.tag == tag,
            Scope::Lun(lun) => e.lun == lun,
            Scope::All => true,
        }
    }
}

#[derive(Default)]
struct Table {
    next_key: u64,
    entries: SeqMap<u64, Entry>,
}

pub struct Inflight {
    queues: Vec<Mutex<Table>>,
}

impl Inflight {
    pub fn new(request_queues: usize) -> Inflight {
        Inflight {
            queues: (0..request_queues).map(|_| Mutex::default()).collect(),
        }
    }

    fn table(&self, queue: usize) -> Option<MutexGuard<'_, Table>> {
        self.queues
            .get(queue)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Record a new command on request queue `queue`; returns its key.
    pub fn begin(&self, queue: usize, lun: LunAddress, tag: u64) -> u64 {
        let Some(mut t) = self.table(queue) else {
            return 0;
        };
        let key = t.next_key;
        t.next_key = t.next_key.wrapping_add(1);
        t.entries.insert(
            key,
            Entry {
                lun,
                tag,
                abort: None,
            },
        );
        key
    }

    /// The command completed; returns the response a TMF asked for, if any.
    pub fn finish(&self, queue: usize, key: u64) -> Option<Response> {
        self.table(queue)?.entries.remove(&key)?.abort
    }

    /// The response a TMF asked for, if any, without finishing the command.
    pub fn aborted(&self, queue: usize, key: u64) -> Option<Response> {
        self.table(queue)?.entries.get(&key)?.abort
    }

    /// Whether any command matches.
    pub fn any(&self, scope: Scope) -> bool {
        (0..self.queues.len()).any(|q| {
            self.table(q)
                .is_some_and(|t| t.entries.values().any(|e| scope.matches(e)))
        })
    }

    /// Number of commands in flight on one queue.
    pub fn count(&self, queue: usize) -> usize {
        self.table(queue).map_or(0, |t| t.entries.len())
    }

    /// Mark matching commands to complete with `response`, and wait until
    /// they all have (SAM-5 7.1: a TMF completes after the tasks it aborts).
    pub fn abort_and_wait(&self, scope: Scope, response: Response) {
        let mut marked: Vec<(usize, u64)> = Vec::new();
        for q in 0..self.queues.len() {
            if let Some(mut t) = self.table(q) {
                for (k, e) in t.entries.iter_mut().filter(|(_, e)| scope.matches(e)) {
                    e.abort.get_or_insert(response);
                    marked.push((q, *k));
                }
            }
        }
        let start = Instant::now();
        let mut next_report = start + TMF_WAIT_REPORT;
        loop {
            marked.retain(|(q, k)| self.table(*q).is_some_and(|t| t.entries.contains_key(k)));
            if marked.is_empty() {
                return;
            }
            if Instant::now() >= next_report {
                warn!(
                    "Task management function still waiting for {} command(s) after {:?}",
                    marked.len(),
                    start.elapsed()
                );
                next_report += TMF_WAIT_REPORT;
            }
            std::thread::sleep(TMF_POLL);
        }
    }

    /// Wait until queue `queue` (or every queue) has nothing in flight.
    pub fn drain(&self, queue: Option<usize>) {
        let start = Instant::now();
        let mut next_report = start + TMF_WAIT_REPORT;
        loop {
            let busy = match queue {
                Some(q) => self.count(q),
                None => (0..self.queues.len()).map(|q| self.count(q)).sum(),
            };
            if busy == 0 {
                return;
            }
            if Instant::now() >= next_report {
                warn!("Still waiting for {busy} command(s) to complete");
                next_report += TMF_WAIT_REPORT;
            }
            std::thread::sleep(TMF_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn abort_waits_for_completion_and_marks_response() {
        let inf = Arc::new(Inflight::new(2));
        let key = inf.begin(1, LunAddress::Lun(0), 7);
        let other = inf.begin(0, LunAddress::Lun(1), 7);
        let i2 = inf.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            i2.finish(1, key)
        });
        inf.abort_and_wait(Scope::Task(LunAddress::Lun(0), 7), Response::Aborted);
        assert_eq!(h.join().unwrap(), Some(Response::Aborted));
        // The command on the other LUN with the same tag was not touched.
        assert_eq!(inf.finish(0, other), None);
    }

    #[test]
    fn query_sees_only_matching_lun() {
        let inf = Inflight::new(1);
        inf.begin(0, LunAddress::Lun(2), 1);
        assert!(inf.any(Scope::Lun(LunAddress::Lun(2))));
        assert!(!inf.any(Scope::Lun(LunAddress::Lun(3))));
    }
}
