// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The sanitize state a logical unit holds: idle, running (with its
//! progress) or failed. The logical unit asks it which commands to refuse;
//! the SANITIZE command (the parent module) and its thread change it.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::scsi::command::Failure;
use crate::scsi::sense::Sense;

/// Where the logical unit stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Idle,
    /// An operation runs: `done` of `total` bytes.
    Running {
        done: u64,
        total: u64,
    },
    /// The last operation failed; `ause` as its SANITIZE command set it.
    Failed {
        ause: bool,
    },
}

/// The sanitize state of one logical unit.
#[derive(Debug)]
pub(crate) struct Sanitizer {
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Default for Sanitizer {
    fn default() -> Sanitizer {
        Sanitizer {
            phase: Mutex::new(Phase::Idle),
            changed: Condvar::new(),
        }
    }
}

impl Sanitizer {
    pub(super) fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set(&self, phase: Phase) {
        *self.lock() = phase;
        self.changed.notify_all();
    }

    /// Record the bytes done so far of a running operation.
    pub(super) fn advance(&self, done: u64) {
        let mut phase = self.lock();
        if let Phase::Running { total, .. } = *phase {
            *phase = Phase::Running { done, total };
        }
    }

    /// The sense a command that the state does not let through ends with,
    /// and the progress indication to put in it (SPC-4 4.5.2.4.4).
    /// `medium`: the command accesses the medium (only those are failed in
    /// failure mode).
    pub(crate) fn refusal(&self, medium: bool) -> Option<Failure> {
        match *self.lock() {
            Phase::Idle => None,
            Phase::Running { done, total } => Some(Failure::Progress(
                Sense::SANITIZE_IN_PROGRESS,
                progress(done, total),
            )),
            Phase::Failed { .. } if medium => Some(Failure::Sense(Sense::SANITIZE_COMMAND_FAILED)),
            Phase::Failed { .. } => None,
        }
    }

    /// What REQUEST SENSE reports for the state, if anything.
    pub(crate) fn request_sense(&self) -> Option<(Sense, Option<u16>)> {
        match *self.lock() {
            Phase::Idle => None,
            Phase::Running { done, total } => {
                Some((Sense::SANITIZE_IN_PROGRESS, Some(progress(done, total))))
            }
            Phase::Failed { .. } => Some((Sense::SANITIZE_COMMAND_FAILED, None)),
        }
    }

    /// Wait until no operation runs (tests, and SANITIZE with IMMED 0).
    pub(crate) fn wait_done(&self) -> bool {
        let mut phase = self.lock();
        while matches!(*phase, Phase::Running { .. }) {
            phase = self.changed.wait(phase).unwrap_or_else(|e| e.into_inner());
        }
        *phase == Phase::Idle
    }

    #[cfg(test)]
    pub(crate) fn force_running(&self, done: u64, total: u64) {
        self.set(Phase::Running { done, total });
    }

    #[cfg(test)]
    pub(crate) fn force_failed(&self, ause: bool) {
        self.set(Phase::Failed { ause });
    }
}

/// The PROGRESS INDICATION: a fraction of 65536 (SPC-4 4.5.2.4.4).
fn progress(done: u64, total: u64) -> u16 {
    if total == 0 {
        return 0;
    }
    let p = u128::from(done) * 65536 / u128::from(total);
    u16::try_from(p).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_a_fraction_of_65536() {
        assert_eq!(progress(0, 100), 0);
        assert_eq!(progress(50, 100), 32768);
        assert_eq!(progress(99, 100), 64880);
        assert_eq!(progress(100, 100), u16::MAX);
        assert_eq!(progress(1, 0), 0);
    }
}
