// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Task management on the session's commands (RFC 7143 11.5) and the
//! I_T nexus reset.

use super::*;

impl Client {
    /// Run a task management function (RFC 7143 11.5) on this session's
    /// commands for `lun`: ABORT TASK (of the command submitted with
    /// `id`), ABORT TASK SET, CLEAR ACA, CLEAR TASK SET or LOGICAL UNIT
    /// RESET. Commands that are not at the target (not sent yet, or
    /// waiting for a lost session) are aborted here; the others by the
    /// target. Returns the iSCSI response (RFC 7143 11.6.1) once every
    /// command the function ended has completed with `Failure::Aborted`
    /// (`Reset` for a LUN reset). A target
    /// that does not answer within `TMF_TIMEOUT` loses the connection, and
    /// the commands are aborted here.
    pub fn task_management(
        &self,
        function: TmfFunction,
        lun: [u8; 8],
        id: Option<u64>,
    ) -> TmfAnswer {
        let why = if function.is_reset() {
            Failure::Reset
        } else {
            Failure::Aborted
        };
        loop {
            let (rx, aborted) = {
                let mut guard = self.shared.lock();
                if guard.writer.as_ref().is_some_and(|w| w.broken.is_some()) {
                    // The session thread is about to recover the commands
                    // from the broken connection: abort them after that.
                    drop(guard);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let st = &mut *guard;
                if st.stopping {
                    return Ok(TmfResponse::FunctionComplete);
                }
                let target = id.and_then(|id| {
                    st.pending
                        .iter()
                        .find(|(_, p)| p.id == id && p.lun == lun)
                        .map(|(&tag, _)| tag)
                });
                if function == TmfFunction::AbortTask && target.is_none() {
                    return Ok(TmfResponse::TaskDoesNotExist);
                }
                let mut aborted = Vec::new();
                let in_scope = |c: &Cmd| tmf_covers(function, lun, target, c.1, c.0);
                let (gone, kept): (Vec<Cmd>, Vec<Cmd>) =
                    std::mem::take(&mut st.held).into_iter().partition(in_scope);
                st.held = kept;
                for c in gone {
                    st.fail_here(c.0, why, &mut aborted);
                }
                let mut rx = None;
                if let (Some(w), true) = (st.writer.as_mut(), st.restoring.is_empty()) {
                    let tag = INTERNAL_TAG + 1 + st.next_tmf;
                    st.next_tmf = (st.next_tmf + 1) % TMF_TAGS;
                    let start = w.session.task_management(tag, function, lun, target);
                    if start.sent {
                        let (tx, r) = mpsc::channel();
                        let until = Instant::now() + timing::TMF_TIMEOUT;
                        st.tmf_waiters.insert(tag, (tx, until));
                        rx = Some(r);
                        w.flush();
                        // The session thread's next wake-up is this
                        // deadline at the latest, and it sends what the
                        // socket did not take.
                        let _ = self.shared.wake.write(1);
                        self.shared.note_small_sent(st);
                    }
                    for t in start.aborted {
                        st.fail_here(t, why, &mut aborted);
                    }
                }
                (rx, aborted)
            };
            complete_all(aborted);
            let Some(rx) = rx else {
                return Ok(TmfResponse::FunctionComplete);
            };
            // No answer: the connection was lost, or the target took longer
            // than `TMF_TIMEOUT` and the session thread dropped it
            // (`State::tick`). Its commands are held now.
            if let Ok(response) = rx.recv() {
                return response;
            }
        }
    }

    /// I_T NEXUS RESET: close the session (the target ends its tasks when
    /// the session is reinstated, RFC 7143 6.3.5), abort every command of
    /// this client, and log in again at once.
    pub fn reset_nexus(&self) {
        let aborted = {
            let mut st = self.shared.lock();
            let st = &mut *st;
            if let Some(w) = st.writer.as_mut() {
                w.session.logout();
                w.flush();
            }
            st.link_down(Instant::now());
            let mut aborted = Vec::new();
            for c in std::mem::take(&mut st.held) {
                st.fail_here(c.0, Failure::Reset, &mut aborted);
            }
            // An explicit logout: nothing to wait for before the next login.
            st.time2wait = None;
            st.reconnect_now = true;
            aborted
        };
        info!("iSCSI {}: I_T nexus reset: session closed", self.name);
        let _ = self.shared.wake.write(1);
        complete_all(aborted);
    }
}
