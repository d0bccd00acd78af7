// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A big Data-In segment received from the socket straight into its
//! command's sink (guest memory), its data digest checked over what landed.

use super::*;

/// A Data-In segment being received into its command's sink.
pub(in crate::iscsi::client) struct Placing {
    /// The decoded header, passed on with no data once all is in.
    pub(in crate::iscsi::client) pdu: Pdu,
    /// Its header's length on the wire (BHS, AHS, digest).
    pub(in crate::iscsi::client) header: usize,
    sink: SinkRef,
    /// Where the next byte goes in the sink.
    at: usize,
    /// Data bytes still to come.
    pub(in crate::iscsi::client) left: usize,
    /// Padding and data digest, read after the data.
    pub(in crate::iscsi::client) tail: Vec<u8>,
    tail_len: usize,
    check: Check,
}

/// The data digest of a segment being placed.
enum Check {
    /// None negotiated.
    Off,
    /// The digest of the data so far (read back from the sink after each
    /// read: what counts is what landed in it).
    Running(RunningDigest),
    /// The sink closed under the segment (its command ended): the rest of
    /// the data was dropped, so there is nothing left to protect.
    Dropped,
}

impl Placing {
    /// A Data-In with layout `l` whose data goes to `sink` from `at`.
    pub(in crate::iscsi::client) fn new(
        pdu: Pdu,
        sink: SinkRef,
        at: usize,
        l: pdu::Layout,
        dg: Digests,
    ) -> Placing {
        Placing {
            pdu,
            header: l.header,
            sink,
            at,
            left: l.data,
            tail: Vec::new(),
            tail_len: l.total - l.header - l.data,
            check: if dg.data {
                Check::Running(RunningDigest::default())
            } else {
                Check::Off
            },
        }
    }

    /// Take what of the segment is already in the receive buffer (data,
    /// then padding and digest).
    pub(in crate::iscsi::client) fn take_buffered(&mut self, avail: &[u8]) {
        let (data, tail) = avail.split_at(avail.len().min(self.left));
        if self.sink.0.write_at(self.at, data) {
            if let Check::Running(c) = &mut self.check {
                c.update(data);
            }
        } else if matches!(self.check, Check::Running(_)) {
            self.check = Check::Dropped;
        }
        self.at += data.len();
        self.left -= data.len();
        self.tail.extend_from_slice(tail);
    }

    /// `n` data bytes read from the socket into the sink at `at`: what
    /// landed there is what the digest must cover.
    fn landed(&mut self, at: usize, n: usize) {
        let Check::Running(c) = &mut self.check else {
            return;
        };
        let mut chunk = [0u8; 16 * 1024];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(chunk.len());
            if !self.sink.0.read_at(at + done, &mut chunk[..k]) {
                self.check = Check::Dropped;
                return;
            }
            c.update(&chunk[..k]);
            done += k;
        }
    }

    /// Read the next piece of this segment from `fd`, and with its last
    /// piece the padding and digest and up to `ahead` bytes of what comes
    /// next (appended to `next`): the next PDU's header is then in without
    /// a read of its own, and the next segment can go straight to its
    /// sink too. The bytes read (or the error) and how many were asked for.
    pub(in crate::iscsi::client) fn read(
        &mut self,
        fd: i32,
        next: &mut Vec<u8>,
        ahead: usize,
    ) -> (io::Result<usize>, usize) {
        let rest = self.tail_len - self.tail.len();
        if self.left == 0 {
            return (read_some(fd, &mut self.tail, rest), rest);
        }
        let at = self.at;
        let mut after = [0u8; MAX_AFTER];
        let after_len = (rest + ahead).min(MAX_AFTER);
        let (r, asked) = match self
            .sink
            .0
            .read_from(fd, at, self.left, &mut after[..after_len])
        {
            Some(r) => (r, self.left + after_len),
            None => {
                // Closed (the command ended here): read and drop.
                if matches!(self.check, Check::Running(_)) {
                    self.check = Check::Dropped;
                }
                let asked = self.left.min(READ_CHUNK);
                (read_some(fd, &mut Vec::new(), asked), asked)
            }
        };
        if let Ok(n) = r {
            let data = n.min(self.left);
            self.landed(at, data);
            self.at += data;
            self.left -= data;
            let extra = &after[..(n - data).min(after_len)];
            let (tail, next_bytes) = extra.split_at(extra.len().min(rest));
            self.tail.extend_from_slice(tail);
            next.extend_from_slice(next_bytes);
        }
        (r, asked)
    }

    pub(in crate::iscsi::client) fn whole(&self) -> bool {
        self.left == 0 && self.tail.len() == self.tail_len
    }

    /// The segment is in: its header, once the data digest checks out.
    pub(in crate::iscsi::client) fn finish(mut self) -> Result<Pdu, PduError> {
        if let Check::Running(c) = &mut self.check {
            let pad = self.tail_len.saturating_sub(4);
            c.update(&self.tail[..pad]);
            if !c.matches(&self.tail[pad..]) {
                return Err(PduError::DataDigest);
            }
        }
        Ok(self.pdu)
    }
}
