// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The two halves of a live connection: the writer, used under the state
//! lock by whichever thread has something to send, and the reader, used
//! under its own lock by whichever thread receives.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use crate::iscsi::conn::{Connection, Error};
use crate::iscsi::gather::Gather;
use crate::iscsi::pdu::{self, Digests, Opcode, Pdu, PduError, RunningDigest};
use crate::iscsi::session::{Session, SinkRef};

/// Transmit buffer capacity kept between bursts.
const TX_KEEP: usize = 256 * 1024;

/// The sending half of a live connection and its session, used under the
/// state lock by whichever thread has something to send.
pub(super) struct Writer {
    pub(super) stream: TcpStream,
    pub(super) session: Session,
    pub(super) digests: Digests,
    /// What is encoded and not yet written.
    pub(super) tx: Gather,
    /// Why a write failed; the session thread then reconnects.
    pub(super) broken: Option<String>,
    /// Writes that took bytes, ever: a count that does not move while
    /// bytes wait is a target that reads nothing (`timing::Liveness`).
    progress: u64,
}

impl Writer {
    /// Encode what the session has to send and write what the socket takes
    /// without blocking; true when nothing is left over.
    pub(super) fn flush(&mut self) -> bool {
        if let Err(e) = self.session.transmit_into(self.digests, &mut self.tx) {
            self.broken = Some(e.to_string());
            return false;
        }
        let fd = self.stream.as_raw_fd();
        while !self.tx.is_empty() {
            match self.tx.write_to(fd) {
                Ok(0) => {
                    self.broken = Some("connection closed".into());
                    return false;
                }
                Ok(_) => self.progress = self.progress.wrapping_add(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = Some(e.to_string());
                    return false;
                }
            }
        }
        self.tx.shrink(TX_KEEP);
        true
    }

    pub(super) fn pending(&self) -> bool {
        !self.tx.is_empty()
    }

    /// A writer on `stream` for a session negotiated as `session` says.
    #[cfg(test)]
    pub(super) fn for_test(stream: TcpStream, session: Session) -> Writer {
        Writer {
            stream,
            session,
            digests: Digests::default(),
            tx: Gather::default(),
            broken: None,
            progress: 0,
        }
    }

    /// How many writes have taken bytes so far.
    pub(super) fn progress(&self) -> u64 {
        self.progress
    }
}

/// The receiving half: reads and decodes without holding the state lock.
pub(super) struct Reader {
    pub(super) stream: TcpStream,
    pub(super) digests: Digests,
    pub(super) max_data: usize,
    /// Bytes received; those before `head` are decoded already.
    pub(super) rx: Vec<u8>,
    pub(super) head: usize,
    /// A PDU with a big data segment, being received past `rx` (into its
    /// own buffer or its command's sink).
    pub(super) direct: Option<Direct>,
    /// Decoded PDUs on their way to the session (kept for its capacity).
    pub(super) pdus: Vec<Pdu>,
    /// The last PDU decoded was a big segment placed into its sink.
    placed: bool,
    /// The socket's receive low-water mark (`SO_RCVLOWAT`), in bytes.
    low_water: usize,
    /// `low_water_cap`, as of the last change of the mark.
    cap: Option<usize>,
}

/// A PDU with a big data segment, received past the receive buffer.
pub(super) enum Direct {
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

/// A Data-In segment being received into its command's sink.
pub(super) struct Placing {
    /// The decoded header, passed on with no data once all is in.
    pdu: Pdu,
    sink: SinkRef,
    /// Where the next byte goes in the sink.
    at: usize,
    /// Data bytes still to come.
    left: usize,
    /// Padding and data digest, read after the data.
    tail: Vec<u8>,
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
    fn new(pdu: Pdu, sink: SinkRef, at: usize, l: pdu::Layout, dg: Digests) -> Placing {
        Placing {
            pdu,
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
    fn take_buffered(&mut self, avail: &[u8]) {
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
    fn read(&mut self, fd: i32, next: &mut Vec<u8>, ahead: usize) -> (io::Result<usize>, usize) {
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

    fn whole(&self) -> bool {
        self.left == 0 && self.tail.len() == self.tail_len
    }

    /// The segment is in: its header, once the data digest checks out.
    fn finish(mut self) -> Result<Pdu, PduError> {
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

/// Where a Data-In with this BHS may be received directly, if anywhere
/// (`Session::place`, asked under the state lock).
pub(super) type Place<'a> = &'a mut dyn FnMut(&[u8]) -> Option<(SinkRef, usize)>;

/// Bytes read from the socket per round before decoding.
pub(super) const READ_ROUND: usize = 1 << 20;
/// Room made in the receive buffer for each read.
pub(super) const READ_CHUNK: usize = 256 * 1024;
/// Data segments at least this long are read into their own buffer.
pub(super) const DIRECT_MIN: usize = 64 * 1024;
/// Most bytes read past a placed segment's data: its padding and digest
/// (7) and the next PDU's header with its digest (52).
const MAX_AFTER: usize = 64;

/// read(2) up to `max` bytes onto the end of `buf`.
pub(super) fn read_some(fd: i32, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
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

impl Reader {
    /// The receiving half of a connection on `stream` (non-blocking), with
    /// `rx` what was received and not decoded yet.
    pub(super) fn new(stream: TcpStream, digests: Digests, max_data: usize, rx: Vec<u8>) -> Reader {
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
    pub(super) fn read(&mut self, out: &mut Vec<Pdu>, place: Place) -> Result<usize, Error> {
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
    pub(super) fn held(&self) -> usize {
        let direct = match &self.direct {
            None => 0,
            Some(Direct::Buffer {
                header, payload, ..
            }) => header.len() + payload.len(),
            Some(Direct::Placing(p)) => {
                p.pdu.data_segment_length().saturating_sub(p.left) + p.tail.len()
            }
        };
        self.rx.len() - self.head + direct
    }

    pub(super) fn low_water(&self) -> usize {
        self.low_water
    }

    /// Have the socket reported readable once `bytes` are queued (1: any
    /// byte). If the kernel refuses, the mark stays what it was.
    pub(super) fn set_low_water(&mut self, bytes: usize) {
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
    pub(super) fn forget_low_water(&mut self) {
        self.low_water = 0;
    }

    /// The highest low-water mark that leaves the socket's receive buffer
    /// alone: Linux grows the buffer, and clamps the TCP window to the
    /// mark, for a mark above half of it. Asked again after each change of
    /// the mark (the buffer grows with the traffic).
    pub(super) fn low_water_cap(&mut self) -> usize {
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
    pub(super) fn decode(&mut self, out: &mut Vec<Pdu>, place: Place) -> Result<(), Error> {
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

/// Split a logged-in connection into its two halves (non-blocking).
/// Set the receive low-water mark (`SO_RCVLOWAT`) of the socket `fd`;
/// false if the kernel refused. Lowering it wakes a thread waiting for the
/// socket if enough is queued for the new mark (Linux checks at once).
pub(super) fn set_receive_low_water(fd: RawFd, bytes: usize) -> bool {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads one c_int from a live local for the length
    // given; a descriptor that is not a socket only makes it fail.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

pub(super) fn split(conn: Connection) -> io::Result<(Reader, Writer)> {
    let (stream, rx, digests, max_data, session) = conn.into_parts();
    stream.set_nonblocking(true)?;
    let reader = Reader::new(stream.try_clone()?, digests, max_data, rx);
    let writer = Writer {
        stream,
        session,
        digests,
        tx: Gather::default(),
        broken: None,
        progress: 0,
    };
    Ok((reader, writer))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::iscsi::pdu::{Opcode, PduError};
    use crate::iscsi::session::Sink;

    /// A sink in memory that receives from the socket like guest memory,
    /// and counts the bytes copied into it (not received into it).
    struct MemSink(std::sync::Mutex<Vec<u8>>, AtomicUsize);

    fn mem_sink(len: usize) -> Arc<MemSink> {
        Arc::new(MemSink(
            std::sync::Mutex::new(vec![0; len]),
            AtomicUsize::new(0),
        ))
    }

    impl Sink for MemSink {
        fn size(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        fn write_at(&self, offset: usize, data: &[u8]) -> bool {
            self.0.lock().unwrap()[offset..offset + data.len()].copy_from_slice(data);
            self.1.fetch_add(data.len(), Ordering::SeqCst);
            true
        }
        fn read_from(
            &self,
            fd: i32,
            offset: usize,
            len: usize,
            after: &mut [u8],
        ) -> Option<io::Result<usize>> {
            let mut b = self.0.lock().unwrap();
            let iov = [
                libc::iovec {
                    iov_base: b[offset..offset + len].as_mut_ptr().cast(),
                    iov_len: len,
                },
                libc::iovec {
                    iov_base: after.as_mut_ptr().cast(),
                    iov_len: after.len(),
                },
            ];
            // SAFETY: readv(2) into `len` bytes of the locked buffer and
            // into `after`, both borrowed mutably for the call.
            let r = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
            Some(usize::try_from(r).map_err(|_| io::Error::last_os_error()))
        }
        fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
            buf.copy_from_slice(&self.0.lock().unwrap()[offset..offset + buf.len()]);
            true
        }
    }

    /// A reader on one end of a loopback connection, and the other end.
    fn pair(digests: Digests) -> (Reader, std::net::TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let far = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (near, _) = l.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        (Reader::new(near, digests, 1 << 20, Vec::new()), far)
    }

    #[test]
    fn a_writers_progress_stops_while_the_target_reads_nothing() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut far, _) = l.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        let mut w = Writer {
            stream: near,
            session: Session::new(crate::iscsi::session::tests::negotiated(true, true, 10)),
            digests: Digests::default(),
            tx: Gather::default(),
            broken: None,
            progress: 0,
        };
        assert!(w.flush());
        assert_eq!(w.progress(), 0);
        // More than the socket buffers hold, and a peer that reads none:
        // the count stops. (The kernel may take a little more for a while,
        // as it grows its buffers: a bounded number of flushes, no clock.)
        w.tx.bytes().resize(64 << 20, 0);
        let mut last = u64::MAX;
        let mut tries = 0;
        while w.progress() != last {
            last = w.progress();
            assert!(!w.flush());
            tries += 1;
            assert!(tries < 10_000, "the socket never filled");
        }
        assert!(w.pending());
        let stopped = w.progress();
        assert!(stopped > 0);
        // The peer reads some: the count moves again. (A window update
        // needs a good part of the peer's buffer read.)
        let mut buf = vec![0; 64 << 10];
        let mut taken = 0;
        while w.progress() == stopped {
            far.read_exact(&mut buf).unwrap();
            taken += buf.len();
            assert!(taken < 64 << 20, "no progress seen");
            assert!(!w.flush());
        }
        // The peer reads everything: nothing waits.
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            while let Ok(k) = far.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k;
            }
            n
        });
        let fd = w.stream.as_raw_fd();
        while !w.flush() {
            super::super::thread::wait_fd(fd, libc::POLLOUT, std::time::Duration::from_secs(1));
        }
        assert!(!w.pending());
        drop(w);
        assert_eq!(reader.join().unwrap() + taken, 64 << 20);
    }

    const HEADER_DIGEST: Digests = Digests {
        header: true,
        data: false,
    };

    fn data_in(len: usize) -> Vec<u8> {
        data_in_with(len, HEADER_DIGEST)
    }

    fn data_in_with(len: usize, dg: Digests) -> Vec<u8> {
        let mut p = Pdu::new(Opcode::DataIn);
        p.set_itt(7);
        p.set_u32(40, 16);
        p.data = (0..len).map(|i| (i * 13) as u8).collect();
        p.encode(dg).unwrap()
    }

    /// Send `wire` in `piece`-byte writes to a reader placing into a
    /// 300 000-byte sink at 16 (for task 7 only); the reader's outcome,
    /// the sink, and how often placement was asked.
    fn place_in_pieces(
        dg: Digests,
        wire: &[u8],
        piece: usize,
    ) -> (Result<Pdu, Error>, Vec<u8>, usize) {
        let (mut r, mut far) = pair(dg);
        let sink = mem_sink(300_000);
        let k = SinkRef(sink.clone());
        let mut asked = 0;
        let mut place = |bhs: &[u8]| {
            asked += 1;
            (u32::from_be_bytes([bhs[16], bhs[17], bhs[18], bhs[19]]) == 7).then(|| (k.clone(), 16))
        };
        let mut out = Vec::new();
        let mut res = Ok(0);
        for part in wire.chunks(piece) {
            far.write_all(part).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            res = r.read(&mut out, &mut place);
            if res.is_err() {
                break;
            }
        }
        let res = res
            .and_then(|_| read_until(&mut r, &mut out, &mut place))
            .map(|()| out.remove(0));
        let b = sink.0.lock().unwrap().clone();
        (res, b, asked)
    }

    #[test]
    fn a_placed_data_in_is_checked_against_its_data_digest() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let want: Vec<u8> = (0..200_001).map(|i| (i * 13) as u8).collect();
        // Pieces that end inside the data, inside the padding and inside
        // the digest; one piece (all from the receive buffer).
        for piece in [70_000, 200_054, 200_058, 1 << 20] {
            let wire = data_in_with(200_001, dg);
            let (r, b, _) = place_in_pieces(dg, &wire, piece);
            let p = r.unwrap_or_else(|e| panic!("pieces of {piece}: {e}"));
            assert!(p.data.is_empty());
            assert!(b[16..16 + 200_001] == want[..], "pieces of {piece}");
            // A damaged data byte (early or late) or digest byte is caught.
            for at in [48 + 4 + 10, 48 + 4 + 199_990, wire.len() - 2] {
                let mut bad = wire.clone();
                bad[at] ^= 0x80;
                let (r, _, _) = place_in_pieces(dg, &bad, piece);
                assert!(
                    matches!(r, Err(Error::Pdu(PduError::DataDigest))),
                    "pieces of {piece}, byte {at}: {r:?}"
                );
            }
        }
    }

    /// Read until `out` has a PDU or an error comes (at most 2 s).
    fn read_until(r: &mut Reader, out: &mut Vec<Pdu>, place: Place) -> Result<(), Error> {
        for _ in 0..200 {
            r.read(out, place)?;
            if !out.is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no PDU");
    }

    #[test]
    fn a_big_data_in_arriving_in_pieces_lands_in_its_sink() {
        let (r, b, asked) = place_in_pieces(HEADER_DIGEST, &data_in(200_001), 70_000);
        let p = r.unwrap();
        assert_eq!(asked, 1);
        assert!(p.data.is_empty());
        assert_eq!(p.data_segment_length(), 200_001);
        let want: Vec<u8> = (0..200_001).map(|i| (i * 13) as u8).collect();
        assert!(b[16..16 + 200_001] == want[..]);
        assert!(b[..16].iter().all(|&x| x == 0));
    }

    #[test]
    fn after_a_placed_segment_the_next_ones_are_received_into_their_sink_too() {
        const LEN: usize = 100_001;
        for (header, data) in [(false, false), (true, false), (true, true)] {
            let dg = Digests { header, data };
            let (mut r, mut far) = pair(dg);
            let sink = mem_sink(16 + 3 * LEN);
            let k = SinkRef(sink.clone());
            let mut place = |bhs: &[u8]| {
                let at = u32::from_be_bytes([bhs[40], bhs[41], bhs[42], bhs[43]]);
                Some((k.clone(), at as usize))
            };
            // Three segments (padded: 100 001 is not a multiple of 4) at
            // 16, 16 + LEN and 16 + 2 LEN; the first arrives in pieces,
            // the other two back to back once it is in.
            let segment = |i: usize| {
                let mut p = Pdu::new(Opcode::DataIn);
                p.set_itt(7);
                p.set_u32(40, (16 + i * LEN) as u32);
                p.data = (0..LEN).map(|j| (i * 7 + j * 13) as u8).collect();
                p.encode(dg).unwrap()
            };
            let first = segment(0);
            let mut out = Vec::new();
            for part in first.chunks(70_000) {
                far.write_all(part).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                r.read(&mut out, &mut place).unwrap();
            }
            let mut rest = segment(1);
            rest.extend(segment(2));
            far.write_all(&rest).unwrap();
            for _ in 0..200 {
                r.read(&mut out, &mut place).unwrap();
                if out.len() == 3 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert_eq!(out.len(), 3, "{dg:?}");
            assert!(out.iter().all(|p| p.data.is_empty()));
            let b = sink.0.lock().unwrap();
            for i in 0..3 {
                let want: Vec<u8> = (0..LEN).map(|j| (i * 7 + j * 13) as u8).collect();
                assert!(
                    b[16 + i * LEN..16 + (i + 1) * LEN] == want[..],
                    "{dg:?} {i}"
                );
            }
            // Only what the first read took past the header was copied
            // (from the receive buffer).
            let header_len = 48 + if header { 4 } else { 0 };
            assert_eq!(sink.1.load(Ordering::SeqCst), 70_000 - header_len, "{dg:?}");
        }
    }

    #[test]
    fn small_data_ins_go_from_the_receive_buffer_into_their_sink() {
        for data in [false, true] {
            let dg = Digests { header: true, data };
            let (mut r, mut far) = pair(dg);
            let sink = mem_sink(8192);
            let k = SinkRef(sink.clone());
            let mut asked = 0;
            let mut place = |_: &[u8]| {
                asked += 1;
                Some((k.clone(), 16))
            };
            // Two small Data-Ins and a NOP-In (not a Data-In: its data
            // stays in the PDU) in one read.
            let mut wire = data_in_with(4001, dg);
            wire.extend(data_in_with(3, dg));
            let mut nop = Pdu::new(Opcode::NopIn);
            nop.data = vec![9; 10];
            wire.extend(nop.encode(dg).unwrap());
            far.write_all(&wire).unwrap();
            let mut out = Vec::new();
            for _ in 0..200 {
                r.read(&mut out, &mut place).unwrap();
                if out.len() == 3 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert_eq!(asked, 2, "digest {data}");
            assert!(out[0].data.is_empty() && out[1].data.is_empty());
            assert_eq!(out[0].data_segment_length(), 4001);
            assert_eq!(out[2].data, vec![9; 10]);
            let b = sink.0.lock().unwrap();
            let first: Vec<u8> = (0..4001).map(|i| (i * 13) as u8).collect();
            // The second Data-In (also at 16) overwrote the first 3 bytes.
            assert!(b[16 + 3..16 + 4001] == first[3..]);
            assert_eq!(b[16..19], [0, 13, 26]);
        }
    }

    #[test]
    fn a_damaged_header_is_refused_before_anything_is_placed() {
        let (mut r, mut far) = pair(HEADER_DIGEST);
        let mut wire = data_in(100_000);
        wire[20] ^= 1; // inside the BHS: the header digest no longer matches
        far.write_all(&wire).unwrap();
        let mut place = |_: &[u8]| -> Option<(SinkRef, usize)> {
            panic!("asked where damaged data goes");
        };
        let mut out = Vec::new();
        let e = read_until(&mut r, &mut out, &mut place).unwrap_err();
        assert!(matches!(e, Error::Pdu(PduError::HeaderDigest)), "{e}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A stream of Data-In PDUs for task 7 (placed into its sink) and
        /// task 8 (no sink), and status-only responses.
        fn stream(kinds: &[(u8, usize)], dg: Digests) -> Vec<u8> {
            let mut wire = Vec::new();
            let mut at = 16;
            for &(kind, len) in kinds {
                let mut p = Pdu::new(if kind == 2 {
                    Opcode::ScsiResponse
                } else {
                    Opcode::DataIn
                });
                p.set_itt(7 + u32::from(kind));
                if kind < 2 {
                    p.set_u32(40, at as u32);
                    p.data = (0..len).map(|i| (at + i) as u8).collect();
                    at += len;
                }
                wire.extend(p.encode(dg).unwrap());
            }
            wire
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

            /// Whatever a target sends (PDUs with flipped bytes), the reader
            /// places, decodes or refuses it without a panic or a write
            /// outside the sink it was given; undamaged, everything arrives
            /// and lands where it belongs.
            #[test]
            fn a_damaged_stream_is_refused_never_a_panic(
                kinds in proptest::collection::vec((0u8..3, 0usize..150_000), 1..5),
                flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..3),
                header in any::<bool>(),
                data in any::<bool>(),
            ) {
                let dg = Digests { header, data };
                let mut wire = stream(&kinds, dg);
                for &(at, x) in &flips {
                    let at = at % wire.len();
                    wire[at] ^= x;
                }
                let (mut r, mut far) = pair(dg);
                let size = 16 + kinds.iter().map(|k| k.1).sum::<usize>();
                let sink = mem_sink(size);
                let k = SinkRef(sink.clone());
                // As the session does: task 7's Data-In within its sink.
                let mut place = |bhs: &[u8]| {
                    let p = Pdu::from_bhs(bhs)?;
                    let at = p.u32_at(40) as usize;
                    (p.itt() == 7 && at.checked_add(p.data_segment_length())? <= size)
                        .then(|| (k.clone(), at))
                };
                let sent = wire.clone();
                let writer = std::thread::spawn(move || {
                    let _ = far.write_all(&sent);
                    let _ = far.shutdown(std::net::Shutdown::Write);
                });
                let mut out = Vec::new();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                let end = loop {
                    match r.read(&mut out, &mut place) {
                        Err(e) => break e,
                        Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                    }
                    prop_assert!(std::time::Instant::now() < deadline, "the reader hung");
                };
                writer.join().unwrap();
                if flips.is_empty() {
                    prop_assert!(matches!(end, Error::Closed), "{}", end);
                    prop_assert_eq!(out.len(), kinds.len());
                    prop_assert_eq!(r.held(), 0);
                    let b = sink.0.lock().unwrap();
                    let mut at = 16;
                    for (&(kind, len), p) in kinds.iter().zip(&out) {
                        if kind == 0 {
                            prop_assert!(p.data.is_empty());
                            prop_assert!(b[at..at + len].iter().enumerate().all(|(i, &x)| x == (at + i) as u8));
                        } else if kind == 1 {
                            prop_assert_eq!(p.data.len(), len);
                        }
                        if kind < 2 {
                            at += len;
                        }
                    }
                }
            }
        }
    }
}
