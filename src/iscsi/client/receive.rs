// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Receiving: reading the target's answers on whichever thread receives
//! (an attached event loop, or the session thread), feeding them to the
//! session, completing commands, and pacing the next wait (`coalesce`).

use super::*;

impl Shared {
    /// What the tasks out at the target still owe, as `pace` needs it;
    /// taken under the state lock (`st`).
    pub(super) fn load(&self, st: &State) -> Load {
        let Some(w) = st.writer.as_ref() else {
            return Load::default();
        };
        let awaited = w.session.awaited();
        // Only a stream wait needs the closest read, and only for few
        // commands (`least_due` looks at each).
        let least = if awaited.small == 0 && awaited.tasks < self.coalesce.depth {
            w.session.least_due()
        } else {
            None
        };
        Load {
            awaited,
            least,
            small_sent: self.small_sent.load(Ordering::SeqCst),
        }
    }

    /// A small task went out on `st`'s connection (a command whose answer
    /// is not a big read's data, task management): a stream wait set for
    /// big reads' data ends now, so its answer is received when it comes.
    /// Called under the state lock.
    pub(super) fn note_small_sent(&self, st: &State) {
        self.small_sent.fetch_add(1, Ordering::SeqCst);
        if self.streaming.load(Ordering::SeqCst) {
            if let Some(w) = st.writer.as_ref() {
                // The writer's descriptor is the same socket as the
                // reader's; the reader learns of it in `pace`.
                if set_receive_low_water(w.stream.as_raw_fd(), 1) {
                    self.mark_dropped.store(true, Ordering::SeqCst);
                    self.streaming.store(false, Ordering::SeqCst);
                }
            }
        }
    }

    pub(super) fn timer(&self) -> MutexGuard<'_, Timer> {
        self.timer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before the next wait for `r`'s socket: raise its low-water mark
    /// while many commands or much data are due (bounded by the timer), or
    /// put it back to one byte (`coalesce`). `load`: what the tasks out at
    /// the target still owe; `heard`: this round received bytes. Called
    /// without the state lock (system calls).
    pub(super) fn pace(&self, r: &mut Reader, load: Load, heard: bool) {
        if self.mark_dropped.swap(false, Ordering::SeqCst) {
            r.forget_low_water();
        }
        // Less what is already here (a partial PDU).
        let held = r.held();
        // Their data and an answer header each.
        let a = load.awaited;
        let due = (a.data + a.tasks * ANSWER_HEADER).saturating_sub(held);
        let least = load.least.map(|l| l.saturating_sub(held));
        let mut wait = next_wait(self.coalesce, a, due, least, heard, r.low_water_cap());
        r.set_low_water(wait.mark());
        let stream = matches!(wait, Wait::Stream(_));
        self.streaming.store(stream, Ordering::SeqCst);
        if stream && self.small_sent.load(Ordering::SeqCst) != load.small_sent {
            // A small command went out after `load` was taken, and may
            // have looked before `streaming` was set: its answer does not
            // wait for the reads' data.
            self.streaming.store(false, Ordering::SeqCst);
            wait = Wait::Any;
            r.set_low_water(1);
        }
        let mut timer = self.timer();
        if r.low_water() > 1 && !timer.set(wait.bound(self.coalesce)) {
            // No timer, no bound on the wait: do not wait.
            self.streaming.store(false, Ordering::SeqCst);
            r.set_low_water(1);
        }
        if r.low_water() == 1 {
            timer.set(None);
        }
    }

    /// Read what the target sent, feed it to the session and complete the
    /// commands it finished. A broken connection is dropped here and the
    /// session thread woken to reconnect.
    pub(super) fn receive_round(&self, name: &str) {
        let mut done = Vec::new();
        let mut notices = Vec::new();
        {
            let mut slot = self.reader();
            let Some(r) = slot.as_mut() else {
                return;
            };
            let mut pdus = std::mem::take(&mut r.pdus);
            let mut place = |bhs: &[u8]| {
                let st = self.lock();
                st.writer.as_ref().and_then(|w| w.session.place(bhs))
            };
            let (got, mut failure) = match r.read(&mut pdus, &mut place) {
                Ok(n) => (n, None),
                Err(e) => (0, Some(format!("connection lost: {e}"))),
            };
            let mut st = self.lock();
            if st.stopping {
                drop(st);
                self.pace(r, Load::default(), false);
                return;
            }
            if !pdus.is_empty() {
                st.heard(Instant::now());
            }
            if let Err(e) = st.receive(name, &mut pdus, &mut done, &mut notices) {
                failure.get_or_insert(e);
            }
            r.pdus = pdus;
            // What the tasks out at the target still owe.
            let load = self.load(&st);
            // What the answers asked for (Data-Out for an R2T, NOP-Out for
            // a NOP-In) goes out now; the session thread writes what the
            // socket did not take, or handles a broken connection.
            if st.writer.as_mut().is_some_and(|w| !w.flush()) {
                let _ = self.wake.write(1);
            }
            if let Some(e) = failure {
                warn!("iSCSI {name}: {e}");
                st.link_down(Instant::now());
                drop(st);
                self.uninstall(&mut slot);
                let _ = self.wake.write(1);
            } else {
                drop(st);
                // Before the answers are delivered: whoever they wake finds
                // the next wait set up.
                self.pace(r, load, got > 0);
            }
        }
        complete_all(done);
        if !notices.is_empty() {
            let hooks: Vec<EventHook> = self
                .hooks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(_, h)| h.clone())
                .collect();
            for (lun, sense) in notices {
                for h in &hooks {
                    h(lun, &sense);
                }
            }
        }
    }
}

/// What `Shared::pace` sizes the next wait with.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Load {
    awaited: Awaited,
    /// `Session::least_due`, if a stream wait may follow.
    least: Option<usize>,
    /// `Shared::small_sent` when it was taken.
    small_sent: u64,
}

/// Keeps an event loop attached as a receiver (`Client::attach_receiver`);
/// the session thread receives again once the last one is dropped.
pub struct Receiver {
    pub(super) shared: Arc<Shared>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::SeqCst);
        let _ = self.shared.wake.write(1);
    }
}
