// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The EXTENDED COPY results a logical unit holds for RECEIVE COPY STATUS
//! and RECEIVE COPY FAILURE DETAILS (LIST ID USAGE 00b), per nexus and
//! list identifier, newest last.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// Copies whose results are held per logical unit (the oldest goes first).
pub(crate) const HELD_RESULTS: usize = 16;

/// What a copy came to, kept for RECEIVE COPY RESULTS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CopyRecord {
    pub nexus: u32,
    pub list_id: u8,
    pub running: bool,
    pub segments_done: u16,
    pub bytes: u64,
    /// The sense data a failed copy ended with.
    pub failure: Option<Vec<u8>>,
}

/// The copies of one logical unit whose results are held (LIST ID USAGE
/// 00b), newest last.
#[derive(Default)]
pub(crate) struct CopyResults {
    held: Mutex<VecDeque<CopyRecord>>,
}

impl CopyResults {
    fn lock(&self) -> MutexGuard<'_, VecDeque<CopyRecord>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, nexus: u32, list_id: u8) -> Option<CopyRecord> {
        self.lock()
            .iter()
            .find(|r| r.nexus == nexus && r.list_id == list_id)
            .cloned()
    }

    /// Claim a list identifier for a new copy; false if one with it runs.
    pub(super) fn start(&self, nexus: u32, list_id: u8) -> bool {
        let mut held = self.lock();
        if held
            .iter()
            .any(|r| r.nexus == nexus && r.list_id == list_id && r.running)
        {
            return false;
        }
        held.retain(|r| !(r.nexus == nexus && r.list_id == list_id));
        if held.len() >= HELD_RESULTS {
            if let Some(i) = held.iter().position(|r| !r.running) {
                held.remove(i);
            }
        }
        held.push_back(CopyRecord {
            nexus,
            list_id,
            running: true,
            segments_done: 0,
            bytes: 0,
            failure: None,
        });
        true
    }

    /// Drop the results held for one nexus (its loss, or an I_T NEXUS
    /// RESET) or for all (LOGICAL UNIT RESET); copies still running keep
    /// their place.
    pub(crate) fn forget(&self, nexus: Option<u32>) {
        self.lock()
            .retain(|r| r.running || nexus.is_some_and(|n| r.nexus != n));
    }

    pub(super) fn finish(
        &self,
        nexus: u32,
        list_id: u8,
        done: &Progress,
        failure: Option<Vec<u8>>,
    ) {
        let mut held = self.lock();
        if let Some(r) = held
            .iter_mut()
            .find(|r| r.nexus == nexus && r.list_id == list_id && r.running)
        {
            r.running = false;
            r.segments_done = done.segments;
            r.bytes = done.bytes;
            r.failure = failure;
        }
    }
}

/// How far a copy got.
#[derive(Default)]
pub(super) struct Progress {
    pub segments: u16,
    pub bytes: u64,
}
