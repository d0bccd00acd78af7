// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Submission: commands written to the socket on the caller's thread when
//! the session is up, held for the next session otherwise, refused past
//! the recovery timeout.

use super::*;

impl Client {
    /// Send a command. The caller's thread writes it to the socket when the
    /// session is up (no hand-off to another thread); `done` runs on the
    /// thread that receives the answer (an attached event loop, or the
    /// session thread), or on the caller's thread if the command is refused
    /// at once (shutting down, past the recovery timeout).
    pub fn submit(&self, lun: [u8; 8], cdb: &[u8], data: Data, done: Callback) {
        self.submit_all([Request {
            id: u64::MAX,
            lun,
            cdb: cdb.to_vec(),
            data,
            done,
        }]);
    }

    /// Send several commands with one write to the socket.
    pub fn submit_all(&self, requests: impl IntoIterator<Item = Request>) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let refuse = if st.stopping {
            Some(Failure::Shutdown)
        } else if st.writer.is_none() && st.past_recovery(st.down_since, Instant::now()) {
            // Unreachable for longer than the recovery timeout: fail fast
            // until a session is back.
            Some(Failure::Timeout)
        } else {
            None
        };
        if let Some(f) = refuse {
            drop(guard);
            complete_all(requests.into_iter().map(|r| (r.done, Err(f))));
            return;
        }
        // A command is a reason to have a session.
        self.want(st);
        let mut up =
            st.restoring.is_empty() && st.writer.as_ref().is_some_and(|w| w.broken.is_none());
        let mut now = Vec::new();
        let mut small = false;
        for r in requests {
            if let Some(sense) = st.take_event(r.lun, &r.cdb) {
                let c = Completion {
                    tag: 0,
                    response: 0,
                    status: 2,
                    sense,
                    data: Vec::new(),
                    placed: 0,
                    residual: 0,
                };
                now.push((r.done, Ok(c)));
                continue;
            }
            let tag = st.next_tag;
            st.next_tag = (st.next_tag + 1) % INTERNAL_TAG;
            let lost_at = if st.writer.is_none() {
                st.down_since
            } else {
                None
            };
            st.pending.insert(
                tag,
                Pending {
                    done: r.done,
                    lun: r.lun,
                    id: r.id,
                    lost_at,
                },
            );
            if let (Some(0x5f), Data::Write(p)) = (r.cdb.first(), &r.data) {
                st.pr_out.insert(tag, (r.lun, r.cdb.clone(), p.clone()));
            }
            match st.writer.as_mut() {
                Some(w) if up => {
                    small |= is_small(r.data.read_len());
                    w.session.submit(tag, r.lun, r.cdb, r.data);
                }
                _ => {
                    up = false;
                    st.held.push((tag, r.lun, r.cdb, r.data));
                }
            }
        }
        if up && !st.writer.as_mut().is_some_and(Writer::flush) {
            let _ = self.shared.wake.write(1);
        }
        if small {
            self.shared.note_small_sent(st);
        }
        drop(guard);
        complete_all(now);
    }
}
