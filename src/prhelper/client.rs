// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! QEMU's side of the pr-helper protocol, for `vhost-user-scsi pr-client`:
//! send one PERSISTENT RESERVE command for a device to a helper socket and
//! return the raw response. Works against qemu-pr-helper and against ours.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::codec::{self, CDB_LEN, RESPONSE_HEADER_LEN};

/// The raw response: header (status, size, sense) and payload.
pub struct RawReply {
    pub bytes: Vec<u8>,
}

impl RawReply {
    pub fn status(&self) -> u32 {
        u32::from_be_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }
}

/// Send `data` with `fds` attached (SCM_RIGHTS), in one sendmsg.
pub fn send_with_fds(s: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut control = [0u64; 8];
    let fd_bytes = std::mem::size_of_val(fds);
    if fd_bytes > 32 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; the fields below point at live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a constant computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        // SAFETY: the control buffer (64 bytes) holds one cmsghdr with at
        // most 8 ints.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>().add(i), *fd);
            }
        }
    }
    // SAFETY: msg describes valid buffers for the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    Ok(())
}

/// Connect to `socket`, handshake, send `cdb` (and `param` for PR OUT) with
/// `device`'s fd, and read the whole response.
pub fn request(
    socket: &Path,
    device: &impl AsRawFd,
    cdb: &[u8; CDB_LEN],
    param: &[u8],
) -> io::Result<RawReply> {
    let mut s = UnixStream::connect(socket)?;
    // The helper's own SG_IO timeout is 60 s: give up a little later.
    s.set_read_timeout(Some(std::time::Duration::from_secs(90)))?;
    let mut features = [0u8; 4];
    s.read_exact(&mut features)?;
    s.write_all(&0u32.to_be_bytes())?;
    send_with_fds(&s, cdb, &[device.as_raw_fd()])?;
    if cdb[0] == codec::PERSISTENT_RESERVE_OUT {
        s.write_all(param)?;
    }
    let mut bytes = vec![0u8; RESPONSE_HEADER_LEN];
    s.read_exact(&mut bytes)?;
    let sz = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if sz > codec::MAX_TRANSFER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "payload size over 8 KiB",
        ));
    }
    let mut payload = vec![0u8; sz];
    s.read_exact(&mut payload)?;
    bytes.extend_from_slice(&payload);
    Ok(RawReply { bytes })
}
