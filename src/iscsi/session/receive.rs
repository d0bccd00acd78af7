// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the target sends: status and data-in (placed straight into a
//! command's sink when it has one), R2Ts, NOP-Ins, Text and Logout
//! Responses, Asynchronous Messages, Rejects (RFC 7143 11.4-11.9, 11.17).

use super::*;

impl Session {
    /// Track StatSN and the command window from a target PDU.
    pub(super) fn update_sn(&mut self, p: &Pdu, has_stat_sn: bool) {
        if has_stat_sn && sn_le(self.exp_stat_sn, p.stat_sn()) {
            self.exp_stat_sn = p.stat_sn().wrapping_add(1);
        }
        let (exp, max) = (p.exp_cmd_sn(), p.max_cmd_sn());
        // RFC 7143 4.2.2.1: ignore if MaxCmdSN < ExpCmdSN - 1.
        if sn_le(exp.wrapping_sub(1), max) {
            if sn_le(self.exp_cmd_sn, exp) {
                self.exp_cmd_sn = exp;
            }
            if sn_le(self.max_cmd_sn, max) {
                self.max_cmd_sn = max;
            }
        }
    }

    pub(super) fn complete(
        &mut self,
        itt: u32,
        response: u8,
        status: u8,
        sense: Vec<u8>,
        residual: i64,
    ) -> Option<Event> {
        // A task management request ends with its own response only, and
        // a command once it has gone out: a target naming either otherwise
        // is not heard.
        if self
            .tasks
            .get(&itt)
            .is_none_or(|t| t.tmf.is_some() || !t.sent)
        {
            return None;
        }
        let t = self.tasks.remove(&itt)?;
        let mut data = t.data;
        data.truncate(t.received as usize);
        let placed = if t.sink.is_some() { t.received } else { 0 };
        Some(Event::Completed(Completion {
            tag: t.tag,
            response,
            status,
            sense,
            data,
            placed,
            residual,
        }))
    }

    pub(super) fn residual(flags: u8, count: u32) -> i64 {
        if flags & bhs::RESIDUAL_OVERFLOW != 0 {
            -i64::from(count)
        } else if flags & bhs::RESIDUAL_UNDERFLOW != 0 {
            i64::from(count)
        } else {
            0
        }
    }

    /// Where the data segment of a Data-In whose header (BHS) is `bhs`
    /// may be received directly: the task's sink and the byte offset in
    /// it, if the task has one and the segment fits (otherwise the segment
    /// is received into a buffer and `receive` judges it). The PDU is then
    /// passed to `receive` with its data left empty.
    pub fn place(&self, bhs: &[u8]) -> Option<(SinkRef, usize)> {
        let p = Pdu::from_bhs(bhs)?;
        if p.opcode() != Some(Opcode::DataIn) {
            return None;
        }
        let h: bhs::DataIn = p.header();
        let t = self.tasks.get(&h.itt.to_native()).filter(|t| t.sent)?;
        let k = t.sink.as_ref()?;
        let offset = h.buffer_offset.to_native() as usize;
        offset
            .checked_add(p.data_segment_length())
            .filter(|&e| e <= t.read_len as usize && e <= k.0.size())?;
        Some((k.clone(), offset))
    }

    /// Handle one PDU from the target.
    pub fn receive(&mut self, p: Pdu) -> Result<Vec<Event>, SessionError> {
        let mut ev = Vec::new();
        self.receive_into(p, &mut ev)?;
        Ok(ev)
    }

    /// Handle one PDU from the target, adding what it brings about to `ev`
    /// (a receiver keeps one vector for a round of PDUs).
    pub fn receive_into(&mut self, mut p: Pdu, ev: &mut Vec<Event>) -> Result<(), SessionError> {
        let op = p.opcode().ok_or_else(|| protocol("unknown opcode"))?;
        match op {
            Opcode::DataIn => {
                let h: bhs::DataIn = p.header();
                let status_here = h.flags & bhs::DataIn::STATUS != 0;
                self.update_sn(&p, status_here);
                let itt = h.itt.to_native();
                let t = self
                    .tasks
                    .get_mut(&itt)
                    .filter(|t| t.sent)
                    .ok_or_else(|| protocol(format!("Data-In for unknown task {itt:#x}")))?;
                let offset = h.buffer_offset.to_native() as usize;
                // A segment whose data is missing from a PDU whose header
                // has some was received straight into the task's sink
                // (see `place`).
                let placed = p.data.is_empty() && p.data_segment_length() > 0;
                let len = if placed {
                    p.data_segment_length()
                } else {
                    p.data.len()
                };
                let end = offset
                    .checked_add(len)
                    .filter(|&e| e <= t.read_len as usize)
                    .ok_or_else(|| protocol("Data-In beyond the expected transfer length"))?;
                if let Some(k) = &t.sink {
                    // A closed sink (the command ended at our side) drops it.
                    if !placed {
                        k.0.write_at(offset, &p.data);
                    }
                } else if placed {
                    return Err(protocol("Data-In received into a missing buffer"));
                } else if offset == 0 && t.data.is_empty() {
                    // The usual first (often only) segment: keep its buffer.
                    t.data = std::mem::take(&mut p.data);
                    t.data.reserve_exact(t.read_len as usize - end);
                } else if offset == t.data.len() {
                    t.data.extend_from_slice(&p.data);
                } else {
                    if t.data.len() < end {
                        t.data.resize(end, 0);
                    }
                    t.data[offset..end].copy_from_slice(&p.data);
                }
                // `end` was checked against the transfer length above.
                let end = u32::try_from(end).unwrap_or(u32::MAX);
                self.tasks.update(itt, |t| t.received = t.received.max(end));
                if status_here {
                    let res = Self::residual(h.flags, h.residual_count.to_native());
                    ev.extend(self.complete(itt, 0, h.status, Vec::new(), res));
                }
            }
            Opcode::ScsiResponse => {
                self.update_sn(&p, true);
                let sense = match p.data.len() {
                    0 | 1 => Vec::new(),
                    _ => {
                        let n = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
                        p.data.get(2..2 + n).unwrap_or(&p.data[2..]).to_vec()
                    }
                };
                let h: bhs::ScsiResponse = p.header();
                let res = Self::residual(h.flags, h.residual_count.to_native());
                let itt = h.itt.to_native();
                ev.extend(self.complete(itt, h.response, h.status, sense, res));
            }
            Opcode::ReadyToTransfer => {
                self.update_sn(&p, false);
                let h: bhs::R2t = p.header();
                let itt = h.itt.to_native();
                let t = self
                    .tasks
                    .get(&itt)
                    .ok_or_else(|| protocol(format!("R2T for unknown task {itt:#x}")))?;
                let offset = h.buffer_offset.to_native() as usize;
                let len = h.desired_data_transfer_length.to_native() as usize;
                if offset.checked_add(len).is_none_or(|e| e > t.write.len()) {
                    return Err(protocol("R2T beyond the write data"));
                }
                if len > t.solicitable {
                    return Err(protocol(format!(
                        "R2T for {len} bytes of task {itt:#x}, which has {} left to ask for",
                        t.solicitable
                    )));
                }
                let pdus = self.data_out(itt, t, offset, len, h.ttt.to_native());
                self.out.extend(pdus);
                if let Some(t) = self.tasks.get_mut(&itt) {
                    t.solicitable -= len;
                }
            }
            Opcode::NopIn => {
                let h: bhs::NopIn = p.header();
                let (itt, ttt) = (h.itt.to_native(), h.ttt.to_native());
                self.update_sn(&p, itt != RESERVED_TAG);
                if ttt != RESERVED_TAG {
                    // The target pings us: answer with its TTT (RFC 7143 11.18).
                    let r = self.nop_out(h.lun, RESERVED_TAG, ttt);
                    self.out.push_back(r.into());
                }
                if itt != RESERVED_TAG {
                    ev.push(Event::Pong);
                }
            }
            Opcode::TextResponse => {
                self.update_sn(&p, true);
                if self.text_acc.len() + p.data.len() > MAX_TEXT {
                    return Err(protocol("Text Response longer than 1 MiB"));
                }
                self.text_acc.extend_from_slice(&p.data);
                let h: bhs::TextResponse = p.header();
                if h.flags & bhs::CONTINUE != 0 {
                    // Continue: ask for the rest with the target's TTT.
                    self.send_text(h.itt.to_native(), h.ttt.to_native(), Vec::new());
                } else {
                    let keys = text::parse(&std::mem::take(&mut self.text_acc));
                    let task = self.text.filter(|t| t.0 == p.itt()).map(|t| t.1);
                    if task.is_some() {
                        self.text = None;
                    }
                    match task {
                        Some(TextTask::Negotiation { rounds }) => {
                            self.negotiation_answered(&p, &keys, rounds)?
                        }
                        _ => ev.push(Event::Text(keys)),
                    }
                }
            }
            Opcode::AsyncMessage => {
                self.update_sn(&p, true);
                let h: bhs::AsyncMessage = p.header();
                match AsyncEvent::try_from(h.async_event) {
                    Ok(AsyncEvent::ScsiEvent) => {
                        // SenseLength, then the sense data (then iSCSI
                        // event data, not ours to interpret).
                        let n = usize::from(u16::from_be_bytes([
                            p.data.first().copied().unwrap_or(0),
                            p.data.get(1).copied().unwrap_or(0),
                        ]));
                        let sense = p
                            .data
                            .get(2..)
                            .map(|d| d[..n.min(d.len())].to_vec())
                            .unwrap_or_default();
                        ev.push(Event::ScsiEvent {
                            lun: p.lun(),
                            sense,
                        });
                    }
                    Ok(AsyncEvent::LogoutRequest) => ev.push(Event::LogoutRequested {
                        within_secs: h.parameter3.to_native(),
                    }),
                    Ok(AsyncEvent::ConnectionDrop | AsyncEvent::SessionDrop) => {
                        ev.push(Event::Dropping {
                            time2wait: h.parameter2.to_native(),
                        })
                    }
                    Ok(AsyncEvent::NegotiationRequest) => self.negotiation_requested(),
                    // Only with TaskReporting=FastAbort (RFC 7143 11.9.1),
                    // which we never negotiate: the target's view of our
                    // tasks is no longer ours, so the connection goes and
                    // the commands are retried on a new session.
                    Ok(AsyncEvent::TaskTermination) => {
                        return Err(protocol(
                            "task termination message without TaskReporting=FastAbort",
                        ))
                    }
                    // Vendor specific, or reserved: ignored.
                    Ok(AsyncEvent::VendorSpecific) | Err(_) => {}
                }
            }
            Opcode::Reject => {
                self.update_sn(&p, true);
                self.rejected(&p, ev)?;
            }
            Opcode::TaskMgmtResponse => {
                self.update_sn(&p, true);
                // Only a task management request's own ITT: a response
                // naming a command must not make it vanish unanswered.
                let tmf = self.tasks.get(&p.itt()).is_some_and(|t| t.tmf.is_some());
                if let Some(t) = tmf.then(|| self.tasks.remove(&p.itt())).flatten() {
                    let h: bhs::TaskMgmtResponse = p.header();
                    let response = TmfResponse::try_from(h.response);
                    let reset = t.tmf.is_some_and(TmfFunction::is_reset);
                    ev.extend(
                        self.terminated_by(&t, response)
                            .into_iter()
                            .map(|tag| Event::Terminated { tag, reset }),
                    );
                    ev.push(Event::TaskManagement {
                        tag: t.tag,
                        response,
                    });
                }
            }
            Opcode::LogoutResponse => {
                self.update_sn(&p, true);
                let h: bhs::LogoutResponse = p.header();
                ev.push(Event::LoggedOut {
                    response: h.response,
                });
            }
            other => {
                return Err(protocol(format!(
                    "unexpected {other:?} in full-feature phase"
                )))
            }
        }
        self.pump();
        Ok(())
    }

    /// A Reject (RFC 7143 11.17): the rejected PDU's header is its data
    /// segment. What it ends depends on what was rejected and why
    /// (11.17.1: a task the rejected PDU belonged to, once instantiated,
    /// still ends with the target's SCSI Response).
    pub(super) fn rejected(&mut self, p: &Pdu, ev: &mut Vec<Event>) -> Result<(), SessionError> {
        let Some(bad) = Pdu::from_bhs(&p.data) else {
            return Ok(());
        };
        let h: bhs::Reject = p.header();
        let reason = RejectReason::try_from(h.reason);
        let (opcode, itt) = (bad.opcode(), bad.itt());
        if let Some(task) = self.text.filter(|t| t.0 == itt).map(|t| t.1) {
            self.text = None;
            self.text_acc.clear();
            // A refused negotiation ends it; a refused SendTargets would
            // otherwise leave its caller waiting for an answer.
            return match task {
                TextTask::Negotiation { .. } => Ok(()),
                TextTask::Caller => Err(protocol(format!(
                    "the target rejected our Text Request (reason {:#04x})",
                    h.reason
                ))),
            };
        }
        match (self.tasks.get(&itt).map(|t| t.tmf.is_some()), opcode) {
            // A rejected task management request: "function rejected"
            // (11.6.1), and nothing ended.
            (Some(true), _) => {
                if let Some(t) = self.tasks.remove(&itt) {
                    ev.push(Event::TaskManagement {
                        tag: t.tag,
                        response: Ok(TmfResponse::FunctionRejected),
                    });
                }
            }
            // Part of a command the target has: a Data-Out, or the
            // command's own immediate data failing its digest (7.8). The
            // target ends the task with a SCSI Response once the data it
            // still expects has come (11.17.1).
            (Some(false), Some(Opcode::DataOut)) => {}
            (Some(false), Some(Opcode::ScsiCommand))
                if reason == Ok(RejectReason::DataDigestError) => {}
            // Not run: the target waits for us to log out (11.9.1, event
            // 1). The command stays, to go again on the next session.
            (Some(false), Some(Opcode::ScsiCommand))
                if reason == Ok(RejectReason::WaitingForLogout) =>
            {
                ev.push(Event::LogoutRequested { within_secs: 0 });
            }
            // A command the target refused outright never became a task
            // there: it ends here, with a target failure.
            (Some(false), _) => ev.extend(self.complete(itt, 0x01, 0, Vec::new(), 0)),
            // Our NOP-Out ping, a Logout, or a task already ended.
            (None, _) => {}
        }
        Ok(())
    }
}
