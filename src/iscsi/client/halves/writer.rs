// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The sending half: the session and the socket it writes to, used under
//! the state lock by whichever thread has something to send.

use super::*;

/// Transmit buffer capacity kept between bursts.
const TX_KEEP: usize = 256 * 1024;

/// The sending half of a live connection and its session, used under the
/// state lock by whichever thread has something to send.
pub(in crate::iscsi::client) struct Writer {
    pub(in crate::iscsi::client) stream: TcpStream,
    pub(in crate::iscsi::client) session: Session,
    pub(in crate::iscsi::client) digests: Digests,
    /// What is encoded and not yet written.
    pub(in crate::iscsi::client) tx: Gather,
    /// Why a write failed; the session thread then reconnects.
    pub(in crate::iscsi::client) broken: Option<String>,
    /// Writes that took bytes, ever: a count that does not move while
    /// bytes wait is a target that reads nothing (`timing::Liveness`).
    pub(in crate::iscsi::client) progress: u64,
}

impl Writer {
    /// Encode what the session has to send and write what the socket takes
    /// without blocking; true when nothing is left over.
    pub(in crate::iscsi::client) fn flush(&mut self) -> bool {
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

    pub(in crate::iscsi::client) fn pending(&self) -> bool {
        !self.tx.is_empty()
    }

    /// A writer on `stream` for a session negotiated as `session` says.
    #[cfg(test)]
    pub(in crate::iscsi::client) fn for_test(stream: TcpStream, session: Session) -> Writer {
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
    pub(in crate::iscsi::client) fn progress(&self) -> u64 {
        self.progress
    }
}
