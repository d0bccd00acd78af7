// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket: JSON-RPC 2.0, one request per line, on a Unix
//! socket (mode 0600, or 0660 with `--control-group`). Each client has a
//! thread of its own, so a slow or hostile one delays nobody else; lines are
//! capped, partly sent lines time out, and the number of clients is
//! bounded. Changes go through the registry, which applies each completely
//! or not at all.

pub mod client;
pub mod methods;
pub mod rpc;

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::registry::Registry;

/// The longest request line accepted (a batch of LUN additions fits many
/// times over); a longer one is answered with an error and skipped.
pub const MAX_LINE: usize = 1 << 20;
/// Clients connected at once; one more is told so and closed.
pub const MAX_CLIENTS: usize = 32;
/// A line must be complete this long after its first byte.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client sending nothing at all for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a client may take to read its response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a client thread looks at the clock and the stop flag.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot set up the control socket {path}")]
    Setup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Unknown group {0}")]
    NoGroup(String),
}

/// Make the control socket at `path` reachable by its owner only, or by
/// `group` too.
pub fn restrict(path: &std::path::Path, group: Option<&str>) -> Result<(), Error> {
    let err = |source| Error::Setup {
        path: path.into(),
        source,
    };
    let group = group
        .map(|g| crate::privileges::lookup_group(g).map_err(|_| Error::NoGroup(g.into())))
        .transpose()?;
    crate::sandbox::SocketAccess {
        owner: None,
        group,
        mode: if group.is_some() { 0o660 } else { 0o600 },
    }
    .apply(path)
    .map_err(err)
}

/// The running control server.
pub struct Server {
    stop: Arc<AtomicBool>,
    clients: Arc<AtomicUsize>,
    listener: Arc<UnixListener>,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `listener` (bound at `path`) from a thread of its own.
    pub fn start(
        listener: UnixListener,
        path: PathBuf,
        registry: Arc<Registry>,
    ) -> io::Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(AtomicUsize::new(0));
        let listener = Arc::new(listener);
        let thread = {
            let (stop, clients, listener) = (stop.clone(), clients.clone(), listener.clone());
            std::thread::Builder::new()
                .name("control".into())
                .spawn(move || accept(&listener, &registry, &stop, &clients))?
        };
        info!("Control socket {}", path.display());
        Ok(Server {
            stop,
            clients,
            listener,
            path,
            thread: Some(thread),
        })
    }

    /// Stop accepting, let the clients finish the request they are in
    /// (bounded), and remove the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on a socket fd the listener still owns; it wakes
        // the accept() blocked on it.
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&*self.listener),
                libc::SHUT_RDWR,
            )
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let deadline = Instant::now() + LINE_TIMEOUT;
        while self.clients.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept(
    listener: &UnixListener,
    registry: &Arc<Registry>,
    stop: &Arc<AtomicBool>,
    clients: &Arc<AtomicUsize>,
) {
    let mut next = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                error!("Control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        next += 1;
        if clients.load(Ordering::SeqCst) >= MAX_CLIENTS {
            warn!("Control socket: {MAX_CLIENTS} clients connected already: client {next} refused");
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let e = rpc::RpcError::new(
                rpc::UNAVAILABLE,
                format!("{MAX_CLIENTS} clients are connected already; try again later"),
            );
            let line = serde_json::json!({"jsonrpc":"2.0","error":{"code":e.code,"message":e.message},"id":null});
            let _ = writeln!(stream, "{line}");
            continue;
        }
        clients.fetch_add(1, Ordering::SeqCst);
        let (registry, stop, clients2) = (registry.clone(), stop.clone(), clients.clone());
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                serve_client(next, stream, &registry, &stop);
                clients2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            clients.fetch_sub(1, Ordering::SeqCst);
            error!("Control socket: cannot start a thread for client {next}: {e}");
        }
    }
}

/// A connected client: read lines, answer each.
fn serve_client(n: u64, mut stream: UnixStream, registry: &Registry, stop: &AtomicBool) {
    debug!("Control client {n} connected");
    if stream.set_read_timeout(Some(TICK)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let methods = methods::Methods::new(registry);
    let mut lines = LineReader::default();
    let mut chunk = vec![0u8; 64 << 10];
    let mut last_input = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if lines.overdue(now) {
            warn!("Control client {n}: a request line unfinished after {LINE_TIMEOUT:?}: closed");
            let e = rpc::RpcError::new(
                rpc::INVALID_REQUEST,
                format!(
                    "The request line was not finished within {} s",
                    LINE_TIMEOUT.as_secs()
                ),
            );
            let _ = send(&mut stream, &error_line(&e));
            return;
        }
        if now.duration_since(last_input) > IDLE_TIMEOUT {
            debug!("Control client {n}: idle: closed");
            return;
        }
        let got = match stream.read(&mut chunk) {
            Ok(0) => {
                debug!("Control client {n} disconnected");
                return;
            }
            Ok(k) => k,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                debug!("Control client {n}: {e}");
                return;
            }
        };
        last_input = Instant::now();
        for item in lines.push(chunk.get(..got).unwrap_or_default()) {
            let out = match item {
                Line::TooLong => {
                    let e = rpc::RpcError::new(
                        rpc::INVALID_REQUEST,
                        format!("A request line longer than {MAX_LINE} bytes (skipped)"),
                    );
                    warn!("Control client {n}: {}", e.message);
                    Some(error_line(&e))
                }
                Line::Complete(line) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let mut errors = Vec::new();
                    let out = rpc::handle_line(&line, &methods, &mut errors);
                    for e in errors {
                        warn!("Control client {n}: error {}: {}", e.code, e.message);
                    }
                    out
                }
            };
            if let Some(out) = out {
                if send(&mut stream, &out).is_err() {
                    debug!("Control client {n}: cannot write the response: closed");
                    return;
                }
            }
        }
    }
}

fn error_line(e: &rpc::RpcError) -> String {
    serde_json::json!({"jsonrpc":"2.0","error":{"code":e.code,"message":e.message},"id":null})
        .to_string()
}

fn send(stream: &mut UnixStream, line: &str) -> io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    stream.write_all(&buf)
}

/// What the line splitter found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Complete(Vec<u8>),
    /// A line over `MAX_LINE`; its bytes were dropped up to its end.
    TooLong,
}

/// Splits a byte stream into lines of at most `MAX_LINE` bytes (sans-IO).
#[derive(Default)]
struct LineReader {
    buf: Vec<u8>,
    /// Dropping the rest of a line that was too long.
    skipping: bool,
    /// When the unfinished line started.
    started: Option<Instant>,
}

impl LineReader {
    /// Whether a line started more than `LINE_TIMEOUT` before `now` is
    /// still unfinished.
    fn overdue(&self, now: Instant) -> bool {
        self.started
            .is_some_and(|t| now.saturating_duration_since(t) > LINE_TIMEOUT)
    }

    fn push(&mut self, mut data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.started.is_none() {
                self.started = Some(Instant::now());
            }
            let nl = data.iter().position(|&b| b == b'\n');
            let (part, rest, complete) = match nl {
                Some(i) => (
                    data.get(..i).unwrap_or_default(),
                    data.get(i + 1..).unwrap_or_default(),
                    true,
                ),
                None => (data, &[][..], false),
            };
            data = rest;
            if self.skipping {
                if complete {
                    self.skipping = false;
                    self.started = None;
                }
                continue;
            }
            if self.buf.len() + part.len() > MAX_LINE {
                self.buf = Vec::new();
                out.push(Line::TooLong);
                self.skipping = !complete;
                if complete {
                    self.started = None;
                }
                continue;
            }
            self.buf.extend_from_slice(part);
            if complete {
                out.push(Line::Complete(std::mem::take(&mut self.buf)));
                self.started = None;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_reads() {
        let mut r = LineReader::default();
        assert!(r.push(b"{\"a\"").is_empty());
        assert!(r.started.is_some());
        assert_eq!(
            r.push(b":1}\n{}\n{"),
            vec![
                Line::Complete(b"{\"a\":1}".to_vec()),
                Line::Complete(b"{}".to_vec())
            ]
        );
        assert!(r.started.is_some());
    }

    #[test]
    fn an_unfinished_line_is_overdue_after_the_timeout_and_a_finished_one_never() {
        let mut r = LineReader::default();
        assert!(r.push(b"{\"jsonrpc\"").is_empty());
        let t0 = r.started.unwrap();
        assert!(!r.overdue(t0 + LINE_TIMEOUT));
        assert!(r.overdue(t0 + LINE_TIMEOUT + Duration::from_millis(1)));
        assert_eq!(r.push(b"}\n").len(), 1);
        assert!(!r.overdue(t0 + LINE_TIMEOUT * 10));
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_is_skipped_to_its_end() {
        let mut r = LineReader::default();
        let mut at = vec![b'x'; MAX_LINE];
        at.push(b'\n');
        assert_eq!(r.push(&at), vec![Line::Complete(vec![b'x'; MAX_LINE])]);
        let over = vec![b'y'; MAX_LINE + 1];
        assert_eq!(r.push(&over), vec![Line::TooLong]);
        // The rest of the long line is dropped, the next one is read.
        assert!(r.push(&[b'y'; 1000]).is_empty());
        assert_eq!(r.push(b"yy\n{}\n"), vec![Line::Complete(b"{}".to_vec())]);
        assert!(r.buf.capacity() < MAX_LINE);
    }
}
