// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the session sends: command PDUs within the CmdSN window, immediate
//! and unsolicited data within FirstBurstLength, R2T-driven Data-Out in
//! MaxRecvDataSegmentLength pieces, NOP-Outs; encoded into the send queue
//! with write data spliced in (RFC 7143 11.3, 11.7, 11.18).

use super::*;

/// A PDU waiting to be sent. Write data is not copied into it: `data`
/// names the range of a command's buffer (ITT, tag, offset, length) that
/// becomes its data segment when it is encoded.
pub(super) struct Outgoing {
    pub(super) pdu: Pdu,
    pub(super) data: Option<(u32, u64, usize, usize)>,
}

impl From<Pdu> for Outgoing {
    fn from(pdu: Pdu) -> Outgoing {
        Outgoing { pdu, data: None }
    }
}

impl Session {
    /// Send what the window allows.
    pub(super) fn pump(&mut self) {
        // Taken out while commands are encoded, so they are queued in place.
        let mut out = std::mem::take(&mut self.out);
        while self.window_open() {
            let Some(itt) = self.waiting.pop_front() else {
                break;
            };
            // A task that ended before it went out takes no CmdSN: a gap
            // would stall every later command at the target.
            let Some(t) = self.tasks.get(&itt) else {
                continue;
            };
            self.command_pdus(itt, t, &mut out);
            let solicitable = t.write.len() - self.unsolicited_len(t);
            let cmd_sn = self.cmd_sn;
            self.tasks.update(itt, |t| {
                t.sent = true;
                t.cmd_sn = cmd_sn;
                t.solicitable = solicitable;
            });
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        self.out = out;
    }

    /// Queue the SCSI Command PDU and any immediate / unsolicited data on
    /// `out`.
    pub(super) fn command_pdus(&self, itt: u32, t: &Task, out: &mut VecDeque<Outgoing>) {
        let mut h = bhs::ScsiCommand::new();
        h.flags = bhs::ScsiCommand::ATTR_SIMPLE;
        if t.read_len > 0 {
            h.flags |= bhs::ScsiCommand::READ;
        }
        if !t.write.is_empty() {
            h.flags |= bhs::ScsiCommand::WRITE;
        }
        h.lun = t.lun;
        h.itt = itt.into();
        let edtl = if t.write.is_empty() {
            t.read_len
        } else {
            t.write.len() as u32
        };
        h.expected_data_transfer_length = edtl.into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        for (d, s) in h.cdb.iter_mut().zip(&t.cdb) {
            *d = *s;
        }
        let sent = self.immediate_len(t);
        let unsolicited_end = self.unsolicited_len(t);
        if sent >= unsolicited_end {
            // No unsolicited Data-Out follows.
            h.flags |= bhs::FINAL;
        }
        let mut p = Pdu::with_header(&h);
        if t.cdb.len() > 16 {
            // Extended CDB AHS (RFC 7143 11.3.5): type 1, length incl. reserved byte.
            let rest = &t.cdb[16..];
            let mut ahs = Vec::new();
            ahs.extend_from_slice(&((rest.len() + 1) as u16).to_be_bytes());
            ahs.push(1);
            ahs.push(0);
            ahs.extend_from_slice(rest);
            while ahs.len() % 4 != 0 {
                ahs.push(0);
            }
            p.ahs = ahs;
        }
        out.push_back(Outgoing {
            pdu: p,
            data: (sent > 0).then_some((itt, t.tag, 0, sent)),
        });
        if sent < unsolicited_end {
            out.extend(self.data_out(itt, t, sent, unsolicited_end - sent, RESERVED_TAG));
        }
    }

    /// Bytes of a command's write data sent as immediate data, in the
    /// command PDU (RFC 7143 3.2.4.2).
    pub(super) fn immediate_len(&self, t: &Task) -> usize {
        if self.n.immediate_data {
            let mx = self.n.max_xmit_data_segment_length as usize;
            t.write
                .len()
                .min(self.n.first_burst_length as usize)
                .min(mx)
        } else {
            0
        }
    }

    /// Bytes of a command's write data sent unsolicited (immediate data and
    /// unsolicited Data-Out, within FirstBurstLength); the target asks for
    /// the rest with R2Ts.
    pub(super) fn unsolicited_len(&self, t: &Task) -> usize {
        if self.n.initial_r2t {
            self.immediate_len(t)
        } else {
            t.write.len().min(self.n.first_burst_length as usize)
        }
    }

    /// Data-Out PDUs for `len` bytes from `offset` (RFC 7143 11.7).
    pub(super) fn data_out(
        &self,
        itt: u32,
        t: &Task,
        offset: usize,
        len: usize,
        ttt: u32,
    ) -> Vec<Outgoing> {
        let mx = self.n.max_xmit_data_segment_length as usize;
        let end = (offset + len).min(t.write.len());
        let mut out = Vec::new();
        let mut at = offset;
        let mut data_sn = 0u32;
        while at < end {
            let n = (end - at).min(mx);
            let mut h = bhs::DataOut::new();
            if at + n >= end {
                h.flags = bhs::FINAL;
            }
            h.lun = t.lun;
            h.itt = itt.into();
            h.ttt = ttt.into();
            h.exp_stat_sn = self.exp_stat_sn.into();
            h.data_sn = data_sn.into();
            h.buffer_offset = (at as u32).into();
            out.push(Outgoing {
                pdu: Pdu::with_header(&h),
                data: Some((itt, t.tag, at, n)),
            });
            at += n;
            data_sn += 1;
        }
        out
    }

    /// The next PDU to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        while let Some(o) = self.out.pop_front() {
            match o.data {
                None => return Some(o.pdu),
                Some(range) => {
                    if let Some(d) = self.write_data(range) {
                        let mut p = o.pdu;
                        p.data = d;
                        return Some(p);
                    }
                }
            }
        }
        None
    }

    /// Queue every PDU waiting to be sent on `tx`, data segments straight
    /// from the commands' buffers (from a source, spliced in: no copy; a
    /// data digest is computed reading it in small pieces). A PDU that
    /// cannot be encoded (`PduError::SegmentTooLong`) ends the round with
    /// the error: the connection cannot go on.
    pub fn transmit_into(&mut self, dg: Digests, tx: &mut Gather) -> Result<(), PduError> {
        while let Some(o) = self.out.pop_front() {
            match o.data {
                None => o.pdu.encode_into(dg, tx.bytes())?,
                Some(range) => match self.write_chunk(range) {
                    Some(Chunk::Bytes(d)) => o.pdu.encode_with(d, dg, tx.bytes())?,
                    Some(Chunk::Source(src, at, n)) => {
                        o.pdu.encode_header(n, dg, tx.bytes())?;
                        // A small write: one copy into the transmit buffer
                        // costs less than a splice's iovecs. (A big one is
                        // spliced whatever its PDUs' size: targets often
                        // take 8 KiB segments.)
                        if src.0.size() < SPLICE_MIN && copy_segment(tx.bytes(), src, at, n, dg) {
                            continue;
                        }
                        // The digest is computed over the source as it is
                        // now; a guest changing a buffer it handed over
                        // draws a digest error at the target, and the
                        // command is retried on a new connection.
                        let digest = (dg.data && n > 0).then(|| source_digest(src, at, n));
                        tx.splice(src.clone(), at, n);
                        tx.bytes().extend_from_slice(padding(n));
                        if let Some(d) = digest {
                            tx.bytes().extend_from_slice(&d);
                        }
                    }
                    None => {}
                },
            }
        }
        Ok(())
    }

    /// The write data an outgoing PDU refers to, if its command still
    /// exists (one ended by task management sends nothing more).
    pub(super) fn write_chunk(
        &self,
        (itt, tag, at, n): (u32, u64, usize, usize),
    ) -> Option<Chunk<'_>> {
        let t = self.tasks.get(&itt).filter(|t| t.tag == tag)?;
        let end = at.checked_add(n)?;
        match &t.write {
            Payload::Bytes(v) => v.get(at..end).map(Chunk::Bytes),
            Payload::Source(s) => (end <= s.0.size()).then_some(Chunk::Source(s, at, n)),
        }
    }

    /// The write data an outgoing PDU refers to, in a buffer.
    pub(super) fn write_data(&self, range: (u32, u64, usize, usize)) -> Option<Vec<u8>> {
        match self.write_chunk(range)? {
            Chunk::Bytes(d) => Some(d.to_vec()),
            Chunk::Source(src, at, n) => {
                let mut d = vec![0; n];
                src.0.read_at(at, &mut d).then_some(d)
            }
        }
    }

    /// NOP-Out ping (immediate; RFC 7143 11.18).
    pub fn ping(&mut self) {
        let itt = self.alloc_itt();
        let p = self.nop_out([0; 8], itt, RESERVED_TAG);
        self.out.push_back(p.into());
    }

    /// A NOP-Out (immediate): our ping (`ttt` reserved) or the answer to
    /// the target's (`itt` reserved).
    pub(super) fn nop_out(&self, lun: [u8; 8], itt: u32, ttt: u32) -> Pdu {
        let mut h = bhs::NopOut::new();
        h.opcode |= bhs::IMMEDIATE;
        h.flags = bhs::FINAL;
        h.lun = lun;
        h.itt = itt.into();
        h.ttt = ttt.into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        Pdu::with_header(&h)
    }
}
