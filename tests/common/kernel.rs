// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the kernel shows of another process and of connections, for
//! tests that wait until something happened instead of sleeping and
//! hoping it did: whether a process is stopped, and TCP sockets with their
//! queues.

use std::thread::sleep;
use std::time::{Duration, Instant};

/// Poll `cond` every 5 ms until it holds; fail the test, naming `what`,
/// if it does not within `within` (make it generous: it bounds a wait on
/// a loaded machine, it is not a timing the test relies on).
pub fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        sleep(Duration::from_millis(5));
    }
}

/// Whether every thread of process `pid` is stopped (state T: a SIGSTOP
/// took effect; the signal is delivered to each thread on its own).
pub fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut seen = false;
    for task in tasks.flatten() {
        // A thread that ended meanwhile runs nothing either.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) S ...": the name may hold spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state != Some("T") {
            return false;
        }
        seen = true;
    }
    seen
}

/// TCP state established (/proc/net/tcp's "st").
pub const ESTABLISHED: u8 = 0x01;
/// TCP state listening.
pub const LISTEN: u8 = 0x0a;

/// A TCP socket of this network namespace, as /proc/net/tcp{,6} list it.
#[derive(Clone, Copy, Debug)]
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
    /// Bytes written and not acknowledged by the other end yet.
    pub tx_queue: u32,
    /// Bytes received and not read by whoever holds it; for a listening
    /// socket, the connections waiting to be accepted.
    pub rx_queue: u32,
    /// The socket's inode ("socket:[inode]" in /proc/PID/fd); 0 for one no
    /// process holds: a connection the kernel completed that the listener
    /// has not accepted yet, or one closed.
    pub inode: u64,
}

/// Every TCP socket of this network namespace, IPv4 and IPv6.
pub fn tcp_sockets() -> Vec<TcpSocket> {
    let mut all = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        all.extend(text.lines().skip(1).filter_map(tcp_socket));
    }
    all
}

/// One line of /proc/net/tcp: "sl local rem st tx:rx tr:when retr uid
/// timeout inode ...", addresses as HEX:PORT in hexadecimal.
fn tcp_socket(line: &str) -> Option<TcpSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let hex16 = |s: &str| u16::from_str_radix(s, 16).ok();
    let port = |a: &str| hex16(a.rsplit_once(':')?.1);
    let (tx, rx) = f.get(4)?.split_once(':')?;
    Some(TcpSocket {
        local_port: port(f.get(1)?)?,
        remote_port: port(f.get(2)?)?,
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        tx_queue: u32::from_str_radix(tx, 16).ok()?,
        rx_queue: u32::from_str_radix(rx, 16).ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// A descriptor of this process for the socket with inode `inode`.
pub fn own_fd(inode: u64) -> Option<std::os::fd::RawFd> {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}
