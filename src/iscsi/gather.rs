// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a connection has to send, in order: bytes encoded into a buffer of
//! its own (headers, padding, small data) with write data spliced in from
//! where it lies (`Source`: guest memory), so a write's data goes from the
//! guest's pages to the socket with one sendmsg(2) and no copy.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use super::session::SourceRef;

/// Most iovecs one sendmsg(2) takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// The byte stream still to send.
#[derive(Default)]
pub struct Gather {
    bytes: Vec<u8>,
    /// Sources spliced in before byte `at` of `bytes`, in order: (at,
    /// source, offset in it, length).
    splices: VecDeque<(usize, SourceRef, usize, usize)>,
    /// Bytes of `bytes` sent.
    pos: usize,
    /// Bytes of the first splice sent.
    front: usize,
}

impl Gather {
    /// Where encoded bytes go (appended after everything queued).
    pub fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Queue `len` bytes of `src` from `offset` after everything queued.
    pub fn splice(&mut self, src: SourceRef, offset: usize, len: usize) {
        if len > 0 {
            self.splices.push_back((self.bytes.len(), src, offset, len));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.splices.is_empty() && self.pos == self.bytes.len()
    }

    /// Everything still to send, in one buffer (sources read).
    /// Bytes queued by reference (spliced), not copied.
    #[cfg(test)]
    pub(crate) fn spliced(&self) -> usize {
        self.splices.iter().map(|s| s.3).sum()
    }

    #[cfg(test)]
    pub(crate) fn contiguous(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = self.pos;
        for (i, (at, src, off, len)) in self.splices.iter().enumerate() {
            out.extend_from_slice(&self.bytes[b.min(*at)..*at]);
            b = b.max(*at);
            let skip = if i == 0 { self.front } else { 0 };
            let mut d = vec![0; len - skip];
            src.0.read_at(off + skip, &mut d);
            out.extend_from_slice(&d);
        }
        out.extend_from_slice(&self.bytes[b..]);
        out
    }

    /// One sendmsg(2) of as much as fits; the bytes written (consumed).
    pub fn write_to(&mut self, fd: RawFd) -> io::Result<usize> {
        if self.splices.is_empty() {
            // Only our own bytes (small commands): no iovec list to build.
            let b = &self.bytes[self.pos..];
            // SAFETY: send(2) from `b`, alive for the call; MSG_NOSIGNAL
            // as below.
            let r = unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) };
            let n = usize::try_from(r).map_err(|_| io::Error::last_os_error())?;
            self.advance(n);
            return Ok(n);
        }
        let mut iov: Vec<libc::iovec> = Vec::new();
        let mut b = self.pos;
        let own = |iov: &mut Vec<libc::iovec>, bytes: &[u8]| {
            if !bytes.is_empty() {
                iov.push(libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                });
            }
        };
        let mut all = true;
        for (i, (at, src, off, len)) in self.splices.iter().enumerate() {
            if iov.len() >= IOV_MAX {
                all = false;
                break;
            }
            own(&mut iov, &self.bytes[b.min(*at)..*at]);
            b = b.max(*at);
            let skip = if i == 0 { self.front } else { 0 };
            if !src.0.iovecs(off + skip, len - skip, &mut iov) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "write data outside its buffer",
                ));
            }
        }
        if all {
            own(&mut iov, &self.bytes[b..]);
        }
        // A prefix of the stream, in order.
        iov.truncate(IOV_MAX);
        // SAFETY: an all-zero msghdr is valid (no address, no control).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: every iovec points into `self.bytes` or into a source's
        // memory (which the source keeps mapped while it lives; the queue
        // holds it), all alive and unchanged for the call. sendmsg(2), not
        // writev(2): MSG_NOSIGNAL, a closed peer is an error, not SIGPIPE.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        let n = usize::try_from(r).map_err(|_| io::Error::last_os_error())?;
        self.advance(n);
        Ok(n)
    }

    /// Drop the first `n` bytes of the stream.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.splices.front() {
                Some(&(at, _, _, len)) => {
                    if self.pos < at {
                        let k = n.min(at - self.pos);
                        self.pos += k;
                        n -= k;
                    } else {
                        let k = n.min(len - self.front);
                        self.front += k;
                        n -= k;
                        if self.front == len {
                            self.splices.pop_front();
                            self.front = 0;
                        }
                    }
                }
                None => {
                    self.pos = (self.pos + n).min(self.bytes.len());
                    n = 0;
                }
            }
        }
        if self.is_empty() {
            self.bytes.clear();
            self.pos = 0;
        }
    }

    /// Give back buffer capacity beyond `keep` bytes (when empty).
    pub fn shrink(&mut self, keep: usize) {
        if self.is_empty() {
            self.bytes.shrink_to(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use super::*;
    use crate::iscsi::session::tests::MemSource;

    /// Send all of `g` through a socket read a little at a time (so sends
    /// are partial) and check the bytes that arrive.
    fn send_through_a_filling_socket(mut g: Gather) {
        let want = g.contiguous();
        let (tx, mut rx) = UnixStream::pair().unwrap();
        tx.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut blocked = 0;
        while !g.is_empty() {
            match g.write_to(tx.as_raw_fd()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked += 1;
                    let mut b = [0u8; 3001];
                    let n = rx.read(&mut b).unwrap();
                    got.extend_from_slice(&b[..n]);
                }
                Err(e) => panic!("{e}"),
            }
        }
        drop(tx);
        rx.read_to_end(&mut got).unwrap();
        assert!(blocked > 10, "the socket never filled up");
        assert!(got == want);
    }

    #[test]
    fn partial_writes_send_the_stream_in_order() {
        let src = SourceRef(Arc::new(MemSource(
            (0..2_000_000u32).map(|i| (i % 251) as u8).collect(),
        )));
        let mut g = Gather::default();
        g.bytes().extend_from_slice(b"head-1");
        g.splice(src.clone(), 10, 900_000);
        g.bytes().extend_from_slice(b"mid");
        g.splice(src.clone(), 100_000, 1);
        g.splice(src, 0, 600_000);
        g.bytes().extend_from_slice(b"tail");
        assert_eq!(g.contiguous().len(), 6 + 900_000 + 3 + 1 + 600_000 + 4);
        send_through_a_filling_socket(g);
    }

    #[test]
    fn own_bytes_alone_are_sent_in_order_too() {
        let mut g = Gather::default();
        g.bytes().extend((0..1_500_000u32).map(|i| (i % 253) as u8));
        send_through_a_filling_socket(g);
    }
}
