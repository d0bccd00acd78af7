// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A drop-in replacement for qemu-pr-helper: QEMU's `pr-manager-helper`
//! connects, passes the fd of a SCSI device with each PERSISTENT RESERVE
//! IN/OUT CDB, and the helper sends the command with SG_IO (fanning out over
//! the paths of a dm-multipath map) and returns status, sense and data.
//!
//! One thread per connection: a slow device on one connection never stalls
//! another. A protocol violation closes that connection only.

pub mod client;
pub mod codec;
mod multipath;
pub(crate) mod sgio;

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use log::{debug, info, warn};

use codec::{Direction, Reply, Violation, CDB_LEN};
use sgio::{check_condition, DeviceKind};

use crate::scsi::sense::Sense;

/// Most connections served at once (one thread each); more are closed.
const MAX_CONNECTIONS: usize = 1024;
/// Room for this many fds in one message: enough to see that a client sent
/// more than one.
const MAX_FDS_SEEN: usize = 8;

/// Helper behaviour that the command line chooses.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Handle dm-multipath maps path by path.
    pub multipath: bool,
}

/// Accept connections forever, one thread each.
pub fn serve(listener: UnixListener, settings: Settings) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            warn!("pr-helper: {MAX_CONNECTIONS} connections already: closing a new one");
            continue;
        }
        let active = active.clone();
        let spawned = std::thread::Builder::new()
            .name("pr-helper-conn".into())
            .spawn(move || {
                match connection(stream, settings) {
                    Ok(()) => debug!("pr-helper: client disconnected"),
                    Err(ConnError::Violation(v)) => warn!("pr-helper: closing connection: {v}"),
                    Err(ConnError::Io(e)) => debug!("pr-helper: connection ended: {e}"),
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            warn!("pr-helper: cannot start a connection thread: {e}");
        }
    }
}

#[derive(Debug)]
enum ConnError {
    Violation(Violation),
    Io(io::Error),
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> ConnError {
        ConnError::Io(e)
    }
}

impl From<Violation> for ConnError {
    fn from(v: Violation) -> ConnError {
        ConnError::Violation(v)
    }
}

/// Serve one client until it goes away or breaks the protocol.
fn connection(mut s: UnixStream, settings: Settings) -> Result<(), ConnError> {
    s.write_all(&codec::SUPPORTED_FEATURES.to_be_bytes())?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req)?;
    codec::check_features(u32::from_be_bytes(req))?;
    loop {
        let mut cdb = [0u8; CDB_LEN];
        let Some(fds) = recv_with_fds(&s, &mut cdb)? else {
            return Ok(());
        };
        let dir = codec::check_request(&cdb, fds.len())?;
        let mut param = Vec::new();
        if let Direction::Out { len } = dir {
            param.resize(len, 0);
            s.read_exact(&mut param)?;
        }
        let fd = fds[0].as_fd();
        let reply = execute(fd, &cdb, dir, &param, settings);
        debug!(
            "pr-helper: CDB {:02x?} -> status {:#04x}, {} byte(s)",
            &cdb[..10],
            reply.status,
            reply.data.len()
        );
        s.write_all(&codec::encode_reply(dir, &reply))?;
    }
}

/// Read exactly `buf.len()` bytes, collecting the fds sent with them.
/// Returns None on a clean end of stream before the first byte.
fn recv_with_fds(s: &UnixStream, buf: &mut [u8]) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut fds = Vec::new();
    let mut got = 0;
    while got < buf.len() {
        let n = recvmsg_fds(s.as_raw_fd(), &mut buf[got..], &mut fds)?;
        if n == 0 {
            if got == 0 && fds.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        got += n;
    }
    Ok(Some(fds))
}

/// One recvmsg(2); fds from SCM_RIGHTS are appended (and owned, so closed
/// when dropped). A truncated control message counts as too many fds.
fn recvmsg_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 2 + MAX_FDS_SEEN];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; the fields set below point at live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: msg describes valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled,
    // within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg points at a complete header inside `control`.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let data_len =
                (hdr.cmsg_len as usize).saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: CMSG_DATA points at data_len bytes of fds in the buffer.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..data_len / std::mem::size_of::<RawFd>() {
                // SAFETY: reading one (possibly unaligned) int of the array.
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: the kernel just installed this fd for us; we own it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors",
        ));
    }
    Ok(n)
}

/// Execute one valid request on `fd`.
fn execute(
    fd: BorrowedFd,
    cdb: &[u8; CDB_LEN],
    dir: Direction,
    param: &[u8],
    settings: Settings,
) -> Reply {
    let kind = match sgio::device_kind(fd) {
        Ok(k) => k,
        Err(e) => {
            warn!("pr-helper: cannot stat the device fd: {e}");
            return check_condition(&Sense::LOGICAL_UNIT_NOT_SUPPORTED);
        }
    };
    if kind == DeviceKind::Other {
        warn!("pr-helper: the fd is neither a block device nor a SCSI generic device");
        return check_condition(&Sense::LOGICAL_UNIT_NOT_SUPPORTED);
    }
    if matches!(dir, Direction::Out { .. }) && sgio::read_only(fd).unwrap_or(true) {
        // A PR OUT needs a device the client may write to.
        return check_condition(&Sense::INVALID_COMMAND_OPERATION_CODE);
    }
    let in_len = match dir {
        Direction::In { len } => len,
        Direction::Out { .. } => 0,
    };
    if settings.multipath {
        if let DeviceKind::Block { major, minor } = kind {
            if let Some(paths) = multipath::paths_of(Path::new("/sys"), major, minor) {
                debug!("pr-helper: {major}:{minor} is a multipath map over {paths:?}");
                return multipath::execute(&paths, cdb, param, in_len);
            }
        }
    }
    sgio::execute(fd, cdb, param, in_len)
}

/// The listening socket handed over by systemd (LISTEN_PID/LISTEN_FDS,
/// sd_listen_fds(3)), if any: exactly one, at fd 3.
pub fn socket_activation() -> io::Result<Option<UnixListener>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if !pid_ok {
        return Ok(None);
    }
    match std::env::var("LISTEN_FDS").ok().as_deref() {
        Some("1") => {}
        Some(n) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket activation passed {n} sockets; exactly one is supported"),
            ))
        }
        None => return Ok(None),
    }
    // SAFETY: stat is plain data filled by fstat; fd 3 is only inspected.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer; an invalid fd just fails.
    if unsafe { libc::fstat(3, &mut st) } < 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket activation: fd 3 is not an open socket",
        ));
    }
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID matched) and it
    // is an open socket; we take ownership of it once.
    let l = unsafe { UnixListener::from_raw_fd(3) };
    // Keep it from leaking into children.
    // SAFETY: fcntl on the fd we now own.
    unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) };
    info!("pr-helper: using the socket passed by systemd");
    Ok(Some(l))
}
