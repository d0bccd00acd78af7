// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The blocking driver: one TCP connection, the login exchange, and the
//! full-feature session driven by reading and writing the socket.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::login::{Login, LoginError, LoginParams, Negotiated, Step};
use super::pdu::{self, Digests, Pdu, PduError};
use super::session::{Completion, Data, Event, Session, SessionError};

/// Largest data segment we accept during login (before negotiation).
const LOGIN_MAX_DATA: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("Connection to the target failed")]
    Io(#[from] io::Error),
    #[error("The target closed the connection")]
    Closed,
    /// Closed at the first login request, which offered no authentication
    /// (LIO does that when its target requires CHAP).
    #[error(
        "The target closed the connection when offered no authentication: \
         it probably requires CHAP, and no credentials are configured"
    )]
    ClosedWithoutAuth,
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("Unexpected reply from the target: {0}")]
    Unexpected(String),
}

pub struct Connection {
    stream: TcpStream,
    rx: Vec<u8>,
    digests: Digests,
    max_data: usize,
    pub session: Session,
    /// Where a permanent login redirect sent us (use it from now on).
    pub moved_to: Option<String>,
}

/// Login redirects followed in a row before giving up (a redirect loop).
const MAX_REDIRECTS: usize = 4;

/// Read one PDU from `stream` (buffering partial reads in `rx`).
fn read_pdu(
    stream: &mut TcpStream,
    rx: &mut Vec<u8>,
    dg: Digests,
    max: usize,
) -> Result<Pdu, Error> {
    loop {
        if let Some((p, used)) = pdu::decode(rx, dg, max)? {
            rx.drain(..used);
            return Ok(p);
        }
        let mut buf = [0u8; 65536];
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(Error::Closed);
        }
        rx.extend_from_slice(&buf[..n]);
    }
}

impl Connection {
    /// Connect to `addr` (host:port) and log in, following login redirects
    /// (RFC 7143 6.2.1); with CHAP, fall back to shorter CHAP_A lists if
    /// the target refuses one (see `chap::Offer::weaker`).
    pub fn login(addr: &str, params: LoginParams, timeout: Duration) -> Result<Connection, Error> {
        let mut at = addr.to_string();
        let mut moved_to = None;
        for _ in 0..=MAX_REDIRECTS {
            match Self::login_at(&at, params.clone(), timeout) {
                Err(Error::Login(LoginError::Redirect { address, permanent })) => {
                    let next = super::url::portal_address(&address).ok_or_else(|| {
                        Error::Login(LoginError::Protocol(format!(
                            "redirect to an unusable address '{address}'"
                        )))
                    })?;
                    let how = if permanent {
                        "permanently"
                    } else {
                        "temporarily"
                    };
                    log::info!("iSCSI: {at} redirects us {how} to {next}");
                    // Only a chain of permanent moves replaces the portal.
                    if permanent && (moved_to.is_some() || at == addr) {
                        moved_to = Some(next.clone());
                    } else {
                        moved_to = None;
                    }
                    at = next;
                }
                Ok(mut c) => {
                    c.moved_to = moved_to;
                    return Ok(c);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Login(LoginError::Protocol(format!(
            "more than {MAX_REDIRECTS} login redirects in a row"
        ))))
    }

    fn login_at(
        addr: &str,
        mut params: LoginParams,
        timeout: Duration,
    ) -> Result<Connection, Error> {
        let allowed = params.chap_offer;
        let mut offer = Some(allowed);
        while let Some(o) = offer {
            params.chap_offer = o;
            match Self::login_once(addr, params.clone(), timeout) {
                Err(Error::Login(LoginError::ChapAlgorithmsRefused(o))) => {
                    log::debug!(
                        "iSCSI: target refused CHAP_A={}, trying a shorter list",
                        o.key()
                    );
                    offer = o.weaker();
                }
                other => return other,
            }
        }
        Err(Error::Login(LoginError::ChapAlgorithmsRefused(allowed)))
    }

    fn login_once(addr: &str, params: LoginParams, timeout: Duration) -> Result<Connection, Error> {
        let connect_err = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let sa = addr
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| connect_err(io::Error::from(io::ErrorKind::NotFound)))?;
        let mut stream = TcpStream::connect_timeout(&sa, timeout).map_err(connect_err)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let max_recv = params.max_recv_data_segment_length as usize;
        let mut login = Login::new(params);
        let mut rx = Vec::new();
        stream.write_all(&login.start().encode(Digests::default())?)?;
        let n: Negotiated = loop {
            let resp = match read_pdu(&mut stream, &mut rx, Digests::default(), LOGIN_MAX_DATA) {
                Err(Error::Closed) if login.offered_no_auth() => {
                    return Err(Error::ClosedWithoutAuth)
                }
                r => r?,
            };
            match login.receive(&resp)? {
                Step::Send(p) => stream.write_all(&p.encode(Digests::default())?)?,
                Step::Done(n) => break n,
            }
        };
        Ok(Connection {
            stream,
            rx,
            digests: n.digests,
            max_data: max_recv,
            session: Session::new(n),
            moved_to: None,
        })
    }

    fn flush(&mut self) -> Result<(), Error> {
        let mut buf = Vec::new();
        while let Some(p) = self.session.poll_transmit() {
            buf.extend_from_slice(&p.encode(self.digests)?);
        }
        if !buf.is_empty() {
            self.stream.write_all(&buf)?;
        }
        Ok(())
    }

    /// Hand the parts to another driver (the asynchronous client).
    pub fn into_parts(self) -> (TcpStream, Vec<u8>, Digests, usize, Session) {
        (
            self.stream,
            self.rx,
            self.digests,
            self.max_data,
            self.session,
        )
    }

    /// Send what is queued, read one PDU and return its events.
    pub fn step(&mut self) -> Result<Vec<Event>, Error> {
        self.flush()?;
        let p = read_pdu(&mut self.stream, &mut self.rx, self.digests, self.max_data)?;
        let ev = self.session.receive(p)?;
        self.flush()?;
        Ok(ev)
    }

    /// Run many commands at once (the CmdSN window permitting) and return
    /// their completions in submission order.
    pub fn execute_many(
        &mut self,
        cmds: Vec<([u8; 8], Vec<u8>, Data)>,
    ) -> Result<Vec<Completion>, Error> {
        let n = cmds.len();
        for (i, (lun, cdb, data)) in cmds.into_iter().enumerate() {
            self.session.submit(i as u64, lun, cdb, data);
        }
        let mut done: Vec<Option<Completion>> = (0..n).map(|_| None).collect();
        let mut left = n;
        while left > 0 {
            for e in self.step()? {
                if let Event::Completed(c) = e {
                    if let Some(slot) = done.get_mut(c.tag as usize) {
                        if slot.is_none() {
                            left -= 1;
                        }
                        *slot = Some(c);
                    }
                }
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    /// One command.
    pub fn execute(&mut self, lun: [u8; 8], cdb: &[u8], data: Data) -> Result<Completion, Error> {
        self.execute_many(vec![(lun, cdb.to_vec(), data)])?
            .pop()
            .ok_or_else(|| Error::Unexpected("no completion".into()))
    }

    /// SendTargets=All on a discovery session: (target name, portals).
    pub fn send_targets(&mut self) -> Result<Vec<(String, Vec<String>)>, Error> {
        self.session.text_request(&[("SendTargets", "All")]);
        loop {
            for e in self.step()? {
                if let Event::Text(keys) = e {
                    let mut out: Vec<(String, Vec<String>)> = Vec::new();
                    for (k, v) in keys {
                        match k.as_str() {
                            "TargetName" => out.push((v, Vec::new())),
                            "TargetAddress" => {
                                if let Some(last) = out.last_mut() {
                                    last.1.push(v);
                                }
                            }
                            _ => {}
                        }
                    }
                    return Ok(out);
                }
            }
        }
    }

    /// Log out (close the session) and wait for the answer.
    pub fn logout(&mut self) -> Result<(), Error> {
        self.session.logout();
        loop {
            for e in self.step()? {
                if let Event::LoggedOut { .. } = e {
                    return Ok(());
                }
            }
        }
    }
}
