// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The receiving half: reads and decodes without holding the state lock,
//! big data segments into buffers of their own or their sinks.

use super::*;

/// The receiving half: reads and decodes without holding the state lock.
pub(in crate::iscsi::client) struct Reader {
    pub(in crate::iscsi::client) stream: TcpStream,
    pub(in crate::iscsi::client) digests: Digests,
    pub(in crate::iscsi::client) max_data: usize,
    /// Bytes received; those before `head` are decoded already.
    pub(in crate::iscsi::client) rx: Vec<u8>,
    pub(in crate::iscsi::client) head: usize,
    /// A PDU with a big data segment, being received past `rx` (into its
    /// own buffer or its command's sink).
    pub(in crate::iscsi::client) direct: Option<Direct>,
    /// Decoded PDUs on their way to the session (kept for its capacity).
    pub(in crate::iscsi::client) pdus: Vec<Pdu>,
    /// The last PDU decoded was a big segment placed into its sink.
    placed: bool,
    /// The socket's receive low-water mark (`SO_RCVLOWAT`), in bytes.
    low_water: usize,
    /// `low_water_cap`, as of the last change of the mark.
    cap: Option<usize>,
}

/// A PDU with a big data segment, received past the receive buffer.
pub(in crate::iscsi::client) enum Direct {
    /// Its data segment (padded, with its digest) is read straight into
    /// `payload`, which then becomes the PDU's data: a 1 MiB Data-In is
    /// not copied out of the receive buffer.
    Buffer {
        header: Vec<u8>,
        payload: Vec<u8>,
        len: usize,
    },
    /// A Data-In whose command has a sink (guest memory): the data goes
    /// straight into the sink.
    Placing(Placing),
}

/// read(2) up to `max` bytes onto the end of `buf`.
pub(in crate::iscsi::client) fn read_some(
    fd: i32,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    buf.reserve(max);
    let spare = &mut buf.spare_capacity_mut()[..max];
    // SAFETY: the kernel writes at most `max` bytes into the vector's
    // unused capacity (at least `max` long after the reserve).
    let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), max) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel wrote `n` bytes after the old length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// One readv(2) from `fd` into `first`, then `then`: the bytes read.
/// What a sink's `read_from` does with its memory and the bytes after.
pub(crate) fn read_two(fd: i32, first: &mut [u8], then: &mut [u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: first.as_mut_ptr().cast(),
            iov_len: first.len(),
        },
        libc::iovec {
            iov_base: then.as_mut_ptr().cast(),
            iov_len: then.len(),
        },
    ];
    // SAFETY: readv(2) writes at most each buffer's length into it; both
    // are borrowed mutably for the call.
    let r = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

impl Reader {
    /// The receiving half of a connection on `stream` (non-blocking), with
    /// `rx` what was received and not decoded yet.
    pub(in crate::iscsi::client) fn new(
        stream: TcpStream,
        digests: Digests,
        max_data: usize,
        rx: Vec<u8>,
    ) -> Reader {
        Reader {
            stream,
            digests,
            max_data,
            rx,
            head: 0,
            direct: None,
            pdus: Vec::new(),
            placed: false,
            low_water: 1,
            cap: None,
        }
    }

    /// Read what is there (up to `READ_ROUND`) and decode every whole PDU
    /// into `out`: the bytes read. On an error, the PDUs decoded before it
    /// are in `out` too.
    pub(in crate::iscsi::client) fn read(
        &mut self,
        out: &mut Vec<Pdu>,
        place: Place,
    ) -> Result<usize, Error> {
        let fd = self.stream.as_raw_fd();
        let mut result = Ok(());
        let mut got = 0;
        // After a segment placed straight into a sink, the next PDU is
        // read up to its header first: most likely another big Data-In,
        // whose data should not land in the receive buffer (to be copied
        // out of it).
        let header = pdu::BHS_LEN + if self.digests.header { 4 } else { 0 };
        while got < READ_ROUND {
            let (r, asked) = match self.direct.as_mut() {
                Some(Direct::Placing(p)) => p.read(fd, &mut self.rx, header),
                Some(Direct::Buffer { payload, len, .. }) => {
                    let want = *len - payload.len();
                    (read_some(fd, payload, want), want)
                }
                None if self.placed && self.rx.len() - self.head < header => {
                    let want = header - (self.rx.len() - self.head);
                    (read_some(fd, &mut self.rx, want), want)
                }
                None => (read_some(fd, &mut self.rx, READ_CHUNK), READ_CHUNK),
            };
            // A short read emptied the socket: decode and stop, instead of
            // a read(2) that only says EAGAIN (the caller polls again).
            let drained = match r {
                Ok(0) => {
                    result = Err(Error::Closed);
                    break;
                }
                Ok(n) => {
                    got += n;
                    n < asked
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            if let Err(e) = self.decode(out, place) {
                result = Err(e);
                break;
            }
            if drained {
                break;
            }
        }
        // Drop what was decoded: free when everything was, otherwise move
        // the partial PDU to the front once it is worth it.
        if self.head == self.rx.len() {
            self.rx.clear();
            self.rx.shrink_to(READ_ROUND + READ_CHUNK);
            self.head = 0;
        } else if self.head >= READ_CHUNK {
            self.rx.drain(..self.head);
            self.head = 0;
        }
        result.map(|()| got)
    }

    /// Bytes received of PDUs not passed on yet (a partial PDU in the
    /// receive buffer, the part of a big segment read so far).
    pub(in crate::iscsi::client) fn held(&self) -> usize {
        let direct = match &self.direct {
            None => 0,
            Some(Direct::Buffer {
                header, payload, ..
            }) => header.len() + payload.len(),
            Some(Direct::Placing(p)) => {
                p.header + p.pdu.data_segment_length().saturating_sub(p.left) + p.tail.len()
            }
        };
        self.rx.len() - self.head + direct
    }

    pub(in crate::iscsi::client) fn low_water(&self) -> usize {
        self.low_water
    }

    /// Have the socket reported readable once `bytes` are queued (1: any
    /// byte). If the kernel refuses, the mark stays what it was.
    pub(in crate::iscsi::client) fn set_low_water(&mut self, bytes: usize) {
        if bytes == self.low_water {
            return;
        }
        if set_receive_low_water(self.stream.as_raw_fd(), bytes) {
            self.low_water = bytes;
            self.cap = None;
        }
    }

    /// Another thread set the socket's mark (`set_receive_low_water` on
    /// the writer's descriptor): the next `set_low_water` sets it whatever
    /// it was.
    pub(in crate::iscsi::client) fn forget_low_water(&mut self) {
        self.low_water = 0;
    }

    /// The highest low-water mark that leaves the socket's receive buffer
    /// alone: Linux grows the buffer, and clamps the TCP window to the
    /// mark, for a mark above half of it. Asked again after each change of
    /// the mark (the buffer grows with the traffic).
    pub(in crate::iscsi::client) fn low_water_cap(&mut self) -> usize {
        if let Some(c) = self.cap {
            return c;
        }
        let c = self.receive_buffer() / 4;
        self.cap = Some(c);
        c
    }

    fn receive_buffer(&self) -> usize {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a live local
        // and updates `len`.
        let r = unsafe {
            libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return 0;
        }
        usize::try_from(v).unwrap_or(0)
    }

    /// Decode every whole PDU received, a Data-In's data into its
    /// command's sink when it has one; once a big data segment's header is
    /// in, read the rest of it past the receive buffer (`Direct`).
    pub(in crate::iscsi::client) fn decode(
        &mut self,
        out: &mut Vec<Pdu>,
        place: Place,
    ) -> Result<(), Error> {
        let dg = self.digests;
        let whole = |d: &mut Direct| match d {
            Direct::Buffer { payload, len, .. } => payload.len() == *len,
            Direct::Placing(p) => p.whole(),
        };
        if let Some(d) = self.direct.take_if(whole) {
            self.placed = matches!(d, Direct::Placing(_));
            match d {
                Direct::Placing(p) => out.push(p.finish()?),
                Direct::Buffer {
                    header, payload, ..
                } => out.push(pdu::decode_split(&header, payload, dg)?),
            }
        }
        if self.direct.is_some() {
            return Ok(());
        }
        loop {
            let buf = &self.rx[self.head..];
            let Some(l) = pdu::layout(buf, dg, self.max_data)? else {
                return Ok(());
            };
            let whole = buf.len() >= l.total;
            let big = l.data >= DIRECT_MIN && buf.len() >= l.header;
            // A Data-In goes straight into its command's sink when it has
            // one: from the receive buffer when it is all there, and the
            // rest of a big one from the socket. The header is checked
            // first: a damaged one must not steer data into some command's
            // memory. A data digest is checked over what landed in the
            // sink before the PDU is passed on (the command completes only
            // after that; until then the guest does not look at its
            // buffer).
            let data_in = buf[0] & pdu::OPCODE_MASK == Opcode::DataIn as u8;
            let placing = if data_in && l.data > 0 && (big || whole) {
                let (p, _) = pdu::decode_header(&buf[..l.header], dg)?;
                place(&p.bhs).map(|(sink, at)| (p, sink, at))
            } else {
                None
            };
            if let Some((pdu, sink, at)) = placing {
                let mut p = Placing::new(pdu, sink, at, l, dg);
                p.take_buffered(&buf[l.header..buf.len().min(l.total)]);
                if p.whole() {
                    out.push(p.finish()?);
                    self.head += l.total;
                    self.placed = false;
                    continue;
                }
                // Everything after `head` belongs to this PDU.
                self.direct = Some(Direct::Placing(p));
            } else if whole {
                let payload = buf[l.header..l.total].to_vec();
                out.push(pdu::decode_split(&buf[..l.header], payload, dg)?);
                self.head += l.total;
                self.placed = false;
                continue;
            } else if big {
                // Everything after `head` belongs to this PDU.
                let len = l.total - l.header;
                let mut payload = Vec::with_capacity(len);
                payload.extend_from_slice(&buf[l.header..]);
                self.direct = Some(Direct::Buffer {
                    header: buf[..l.header].to_vec(),
                    payload,
                    len,
                });
            } else {
                return Ok(());
            }
            self.rx.clear();
            self.head = 0;
            return Ok(());
        }
    }
}
