// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The receiving half fed from a real socket: a byte stream sent by a
//! loopback TCP peer in pieces of given sizes, received after each piece.
//! The fuzz target `iscsi_reader` (src/fuzzing/iscsi.rs) drives it with
//! whatever a target could send, cut anywhere.

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::*;

/// What the receiving half made of a byte stream.
pub(crate) struct Received {
    /// Every PDU passed on, in order (a placed Data-In without its data).
    pub(crate) pdus: Vec<Pdu>,
    /// How it ended: `Error::Closed` once the stream ended (between or
    /// inside PDUs), or what it refused.
    pub(crate) end: Error,
    /// Bytes received and not passed on at the end (`Reader::held`).
    pub(crate) held: usize,
}

/// How long the reader may take to see bytes (or the end) a loopback peer
/// sent: they are queued before the peer's write returns, so this only
/// bounds a reader that stopped reading.
const PATIENCE: Duration = Duration::from_secs(30);

/// Send `stream` in pieces of the sizes in `pieces` (what is left after
/// them in one), let a `Reader` receive after each, then end the stream.
pub(crate) fn receive_in_pieces(
    stream: &[u8],
    pieces: &[usize],
    digests: Digests,
    max_data: usize,
    place: Place<'_>,
) -> io::Result<Received> {
    let (ours, mut theirs) = loopback_pair()?;
    let mut r = Reader::new(ours, digests, max_data, Vec::new());
    let mut pdus = Vec::new();
    let ended = |r: &Reader, pdus, end| {
        Ok(Received {
            pdus,
            end,
            held: r.held(),
        })
    };
    let mut rest = stream;
    let mut sizes = pieces.iter().copied();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, after) = rest.split_at(n);
        rest = after;
        let mut sent = 0;
        let since = Instant::now();
        while sent < piece.len() {
            match theirs.write(&piece[sent..]) {
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The reader took everything there was: the window
                    // reopens as it did.
                    if since.elapsed() > PATIENCE {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the reader stalled",
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
            loop {
                match r.read(&mut pdus, place) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(end) => return ended(&r, pdus, end),
                }
            }
        }
    }
    theirs.shutdown(Shutdown::Write)?;
    let since = Instant::now();
    loop {
        match r.read(&mut pdus, place) {
            Ok(0) if since.elapsed() > PATIENCE => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the end of the stream never reached the reader",
                ))
            }
            Ok(0) => std::thread::yield_now(),
            Ok(_) => {}
            Err(end) => return ended(&r, pdus, end),
        }
    }
}

/// Two ends of a loopback TCP connection, non-blocking, that reset when
/// closed (no TIME_WAIT left behind by millions of them).
fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    // A listener of its own: concurrent callers cannot take each other's
    // connections.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let ours = TcpStream::connect(listener.local_addr()?)?;
    let (theirs, _) = listener.accept()?;
    for s in [&ours, &theirs] {
        s.set_nonblocking(true)?;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads one `linger` from a live local for the
        // length given.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((ours, theirs))
}
