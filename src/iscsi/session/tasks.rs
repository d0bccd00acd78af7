// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The commands of a session (tasks, by ITT), what they still await from
//! the target, and serial number arithmetic (RFC 1982) for CmdSN and
//! StatSN.

use super::*;

pub(super) struct Task {
    pub(super) tag: u64,
    pub(super) lun: [u8; 8],
    pub(super) cdb: Vec<u8>,
    pub(super) read_len: u32,
    pub(super) write: Payload,
    pub(super) data: Vec<u8>,
    /// Where data-in goes instead of `data`.
    pub(super) sink: Option<SinkRef>,
    pub(super) received: u32,
    /// Whether the command PDU has gone out.
    pub(super) sent: bool,
    /// Bytes of write data the target may still ask for with R2Ts: at
    /// ErrorRecoveryLevel 0 it asks for each byte once at most (no recovery
    /// R2Ts), so a target cannot make the session send a command's data
    /// over and over.
    pub(super) solicitable: usize,
    /// CmdSN the command went out with (for a TMF: the one it carried).
    pub(super) cmd_sn: u32,
    /// For a task management request: its function and, for ABORT TASK,
    /// the ITT of the task it aborts.
    pub(super) tmf: Option<TmfFunction>,
    pub(super) ref_itt: u32,
}

/// Reads of at least this much data-in come as a stream of big pieces;
/// tasks with less (writes, small reads, other commands) are answered in
/// one go (`Awaited::small`).
pub const BIG_READ: u32 = 64 * 1024;

/// Whether a task asking for `read_len` bytes of data-in is a small one
/// (answered in one go), not a big read.
pub fn is_small(read_len: u32) -> bool {
    read_len < BIG_READ
}

/// What the tasks out at the target still owe: receive coalescing sizes
/// its waits with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Awaited {
    /// Tasks that went out and wait for their answer.
    pub tasks: usize,
    /// Of those, the ones with less than `BIG_READ` of data-in in all.
    pub small: usize,
    /// Data-in bytes still to come for them.
    pub data: usize,
}

impl Awaited {
    pub(super) fn add(&mut self, o: Awaited) {
        self.tasks += o.tasks;
        self.small += o.small;
        self.data += o.data;
    }

    pub(super) fn sub(&mut self, o: Awaited) {
        self.tasks -= o.tasks;
        self.small -= o.small;
        self.data -= o.data;
    }
}

impl Task {
    /// What this task counts for in `Awaited` (nothing until it is sent).
    pub(super) fn awaited(&self) -> Awaited {
        if !self.sent {
            return Awaited::default();
        }
        Awaited {
            tasks: 1,
            small: usize::from(is_small(self.read_len)),
            data: self.read_len.saturating_sub(self.received) as usize,
        }
    }
}

/// The session's tasks by ITT, and what those that went out still owe
/// (kept as it changes: the receiver asks after every round).
#[derive(Default)]
pub(super) struct Tasks {
    pub(super) map: SeqMap<u32, Task>,
    pub(super) awaited: Awaited,
}

impl Tasks {
    pub(super) fn insert(&mut self, itt: u32, t: Task) {
        self.awaited.add(t.awaited());
        if let Some(old) = self.map.insert(itt, t) {
            self.awaited.sub(old.awaited());
        }
    }

    pub(super) fn remove(&mut self, itt: &u32) -> Option<Task> {
        let t = self.map.remove(itt)?;
        self.awaited.sub(t.awaited());
        Some(t)
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = (u32, Task)> + '_ {
        self.awaited = Awaited::default();
        self.map.drain()
    }

    /// Change task `itt` with `f`, keeping the counts (for `sent` and
    /// `received`, which they depend on).
    pub(super) fn update(&mut self, itt: u32, f: impl FnOnce(&mut Task)) {
        if let Some(t) = self.map.get_mut(&itt) {
            let before = t.awaited();
            f(t);
            let after = t.awaited();
            self.awaited.sub(before);
            self.awaited.add(after);
        }
    }

    pub(super) fn get(&self, itt: &u32) -> Option<&Task> {
        self.map.get(itt)
    }

    /// A task to change, but not its `sent` or `received` (see `update`,
    /// which keeps the counts).
    pub(super) fn get_mut(&mut self, itt: &u32) -> Option<&mut Task> {
        self.map.get_mut(itt)
    }

    pub(super) fn contains_key(&self, itt: &u32) -> bool {
        self.map.contains_key(itt)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u32, &Task)> {
        self.map.iter()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// `awaited` counted afresh (tests check the kept counts against it).
    #[cfg(test)]
    pub(super) fn recount(&self) -> Awaited {
        let mut a = Awaited::default();
        for t in self.map.values() {
            a.add(t.awaited());
        }
        a
    }
}

/// `a <= b` in 32-bit serial number arithmetic (RFC 1982).
pub(super) fn sn_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 0x8000_0000
}

/// `a < b` in 32-bit serial number arithmetic.
pub(super) fn sn_lt(a: u32, b: u32) -> bool {
    a != b && sn_le(a, b)
}
