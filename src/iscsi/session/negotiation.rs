// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Text exchanges in the full-feature phase (RFC 7143 11.10, 11.11): our
//! SendTargets, and the negotiation a target asks for with Asynchronous
//! Message 4, settled here.

use super::*;

/// Most text a target may send in one continued Text Response (SendTargets
/// lists): a target that never stops continuing is cut off.
pub(super) const MAX_TEXT: usize = 1 << 20;

/// Text Request/Response rounds a full-feature phase negotiation may take:
/// each of our answers settles every key offered, so a target that keeps
/// offering more is cut off.
pub(super) const MAX_NEGOTIATION_ROUNDS: u8 = 4;

/// Whose text exchange is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TextTask {
    /// Ours (SendTargets): the keys go out as `Event::Text`.
    Caller,
    /// One the target asked for (Asynchronous Message 4), `rounds` so far:
    /// the session settles it itself.
    Negotiation { rounds: u8 },
}

impl Session {
    /// Text Request (SendTargets=All for discovery).
    pub fn text_request(&mut self, keys: &[(&str, &str)]) {
        let itt = self.alloc_itt();
        self.text = Some((itt, TextTask::Caller));
        self.send_text(itt, RESERVED_TAG, text::encode(keys));
    }

    /// A final (F) Text Request of task `itt`, continuing the target's
    /// `ttt` (RFC 7143 11.10; immediate, so it needs no CmdSN window).
    pub(super) fn send_text(&mut self, itt: u32, ttt: u32, data: Vec<u8>) {
        let mut h = bhs::TextRequest::new();
        h.opcode |= bhs::IMMEDIATE;
        h.flags = bhs::FINAL;
        h.itt = itt.into();
        h.ttt = ttt.into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        let mut p = Pdu::with_header(&h);
        p.data = data;
        self.out.push_back(p.into());
    }

    /// Asynchronous Message 4: the target asks to negotiate. RFC 7143
    /// 11.9.1: answer with a Text Request, which may be empty, unless one
    /// is already pending.
    pub(super) fn negotiation_requested(&mut self) {
        if self.text.is_none() {
            let itt = self.alloc_itt();
            self.text = Some((itt, TextTask::Negotiation { rounds: 0 }));
            self.send_text(itt, RESERVED_TAG, Vec::new());
        }
    }

    /// The target's final Text Response in a negotiation it asked for:
    /// apply what it declares, answer what it offers (`text::full_feature_keys`),
    /// and go on while it offers something or says it is not done (F=0).
    pub(super) fn negotiation_answered(
        &mut self,
        p: &Pdu,
        keys: &[(String, String)],
        rounds: u8,
    ) -> Result<(), SessionError> {
        let f = text::full_feature_keys(keys).map_err(protocol)?;
        if let Some(n) = f.max_xmit_data_segment_length {
            self.n.max_xmit_data_segment_length = n;
        }
        let target_done = p.flags() & bhs::FINAL != 0;
        if f.answers.is_empty() && target_done {
            return Ok(());
        }
        if rounds + 1 >= MAX_NEGOTIATION_ROUNDS {
            return Err(protocol(format!(
                "a negotiation the target asked for took over {MAX_NEGOTIATION_ROUNDS} rounds"
            )));
        }
        self.text = Some((p.itt(), TextTask::Negotiation { rounds: rounds + 1 }));
        self.send_text(p.itt(), p.ttt(), text::encode(&f.answers));
        Ok(())
    }
}
