// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The two halves of a live connection: the writer, used under the state
//! lock by whichever thread has something to send, and the reader, used
//! under its own lock by whichever thread receives.

mod pieces;
mod placing;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use crate::iscsi::conn::{Connection, Error};
use crate::iscsi::gather::Gather;
use crate::iscsi::pdu::{self, Digests, Opcode, Pdu, PduError, RunningDigest};
use crate::iscsi::session::{Session, SinkRef};

pub(crate) use pieces::receive_in_pieces;
use placing::Placing;
pub(crate) use reader::read_two;
pub(super) use reader::{read_some, Reader};
pub(super) use writer::Writer;

/// Where a Data-In with this BHS may be received directly, if anywhere
/// (`Session::place`, asked under the state lock).
pub(crate) type Place<'a> = &'a mut dyn FnMut(&[u8]) -> Option<(SinkRef, usize)>;

/// Bytes read from the socket per round before decoding.
pub(in crate::iscsi::client) const READ_ROUND: usize = 1 << 20;
/// Room made in the receive buffer for each read.
pub(in crate::iscsi::client) const READ_CHUNK: usize = 256 * 1024;
/// Data segments at least this long are read into their own buffer.
pub(in crate::iscsi::client) const DIRECT_MIN: usize = 64 * 1024;
/// Most bytes read past a placed segment's data: its padding and digest
/// (7) and the next PDU's header with its digest (52).
const MAX_AFTER: usize = 64;

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

/// Split a logged-in connection into its two halves (non-blocking).
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
