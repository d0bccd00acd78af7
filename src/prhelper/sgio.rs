// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Sending one CDB to a SCSI device with the SG_IO ioctl (linux/include/
//! uapi/scsi/sg.h) and mapping what comes back to status + sense.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use super::codec::{Reply, SENSE_LEN};
use crate::scsi::sense::{Sense, SenseKey};

/// SG_IO ioctl number and transfer directions (scsi/sg.h).
const SG_IO: libc::c_ulong = 0x2285;
const SG_DXFER_NONE: i32 = -1;
const SG_DXFER_TO_DEV: i32 = -2;
const SG_DXFER_FROM_DEV: i32 = -3;
/// driver_status bit: sense data is valid (scsi/sg.h SG_ERR_DRIVER_SENSE).
const DRIVER_SENSE: u16 = 0x08;
/// host_status DID_TIME_OUT (scsi/scsi_status.h).
const DID_TIME_OUT: u16 = 0x03;
/// Major number of SCSI generic character devices (devices.txt).
const SCSI_GENERIC_MAJOR: u32 = 21;

/// How long one PR command may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(60);

#[repr(C)]
struct SgIoHdr {
    interface_id: i32,
    dxfer_direction: i32,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut libc::c_void,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: i32,
    usr_ptr: *mut libc::c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: i32,
    duration: u32,
    info: u32,
}

pub(super) const COMM_FAILURE: Sense = Sense::LOGICAL_UNIT_COMMUNICATION_FAILURE;
const COMM_TIMEOUT: Sense = Sense::LOGICAL_UNIT_COMMUNICATION_TIME_OUT;

pub fn check_condition(s: &Sense) -> Reply {
    Reply {
        status: 0x02,
        sense: s.to_fixed().to_vec(),
        data: Vec::new(),
    }
}

/// What kind of object an fd refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Block { major: u32, minor: u32 },
    ScsiGeneric,
    Other,
}

pub fn device_kind(fd: BorrowedFd) -> io::Result<DeviceKind> {
    // SAFETY: stat is plain data filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFBLK => DeviceKind::Block { major, minor },
        libc::S_IFCHR if major == SCSI_GENERIC_MAJOR => DeviceKind::ScsiGeneric,
        _ => DeviceKind::Other,
    })
}

/// Whether the fd was opened read-only.
pub fn read_only(fd: BorrowedFd) -> io::Result<bool> {
    // SAFETY: F_GETFL has no memory arguments.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl & libc::O_ACCMODE == libc::O_RDONLY)
}

/// A transport-level failure (the command did not reach the device or got
/// no answer): a reason to try another path of a multipath map.
pub fn is_transport_failure(r: &Reply) -> bool {
    r.status == 0x02
        && crate::scsi::sense::decode(&r.sense)
            .is_some_and(|(key, asc, _)| key == SenseKey::AbortedCommand as u8 && asc == 0x08)
}

/// Run `cdb` on `fd`: `out` is sent (PR OUT), or up to `in_len` bytes are
/// read back (PR IN).
pub fn execute(fd: BorrowedFd, cdb: &[u8; 16], out: &[u8], in_len: usize) -> Reply {
    let mut sense = [0u8; SENSE_LEN];
    let mut data = vec![0u8; in_len];
    let (dir, ptr, len) = if !out.is_empty() {
        (
            SG_DXFER_TO_DEV,
            out.as_ptr() as *mut libc::c_void,
            out.len(),
        )
    } else if in_len > 0 {
        (SG_DXFER_FROM_DEV, data.as_mut_ptr().cast(), in_len)
    } else {
        (SG_DXFER_NONE, std::ptr::null_mut(), 0)
    };
    let mut hdr = SgIoHdr {
        interface_id: i32::from(b'S'),
        dxfer_direction: dir,
        cmd_len: 16,
        mx_sb_len: SENSE_LEN as u8,
        iovec_count: 0,
        dxfer_len: len as u32,
        dxferp: ptr,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: TIMEOUT.as_millis() as u32,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: hdr points at the CDB, the sense buffer and the data buffer
    // (of the lengths given), all alive until the ioctl returns; SG_IO is
    // synchronous. `out` is only read by the kernel (TO_DEV).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SG_IO, &mut hdr as *mut SgIoHdr) };
    if r < 0 {
        log::warn!("SG_IO failed: {}", io::Error::last_os_error());
        return check_condition(&COMM_FAILURE);
    }
    let answer = Answer {
        status: hdr.status,
        sb_len_wr: hdr.sb_len_wr,
        host_status: hdr.host_status,
        driver_status: hdr.driver_status,
        resid: hdr.resid,
    };
    interpret(&answer, &sense, data)
}

/// What the kernel wrote back into the SG_IO header: the device's status,
/// how much sense it returned, the transport's and the driver's verdicts,
/// and the residual count. Outside input: a device (a SAN LUN) says it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Answer {
    pub status: u8,
    pub sb_len_wr: u8,
    pub host_status: u16,
    pub driver_status: u16,
    pub resid: i32,
}

/// The reply for an SG_IO that returned `answer`, with the sense buffer
/// and the data-in buffer (its length the allocation length) it filled: a
/// transport failure (host_status) is LOGICAL UNIT COMMUNICATION FAILURE or
/// TIME-OUT; otherwise the device's status, its sense (no more than it
/// wrote, nor than the buffer holds) when it reported a CHECK CONDITION or
/// the driver says sense is valid, and the data it transferred (the buffer
/// less the residual, which a device may misreport either way).
pub fn interpret(answer: &Answer, sense: &[u8; SENSE_LEN], mut data: Vec<u8>) -> Reply {
    if answer.host_status != 0 {
        let s = if answer.host_status == DID_TIME_OUT {
            COMM_TIMEOUT
        } else {
            COMM_FAILURE
        };
        return check_condition(&s);
    }
    let sense_len = usize::from(answer.sb_len_wr).min(SENSE_LEN);
    let has_sense = answer.status == 0x02 || answer.driver_status & DRIVER_SENSE != 0;
    let transferred = data
        .len()
        .saturating_sub(usize::try_from(answer.resid).unwrap_or(0));
    data.truncate(transferred);
    Reply {
        status: answer.status,
        sense: if has_sense {
            sense[..sense_len].to_vec()
        } else {
            Vec::new()
        },
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sg_io_header_has_the_kernel_layout() {
        // struct sg_io_hdr is 88 bytes on 64-bit Linux.
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
    }

    #[test]
    fn regular_file_is_not_a_device() {
        let f = tempfile::tempfile().unwrap();
        assert_eq!(device_kind(f.as_fd()).unwrap(), DeviceKind::Other);
    }

    #[test]
    fn sg_io_on_a_non_scsi_fd_is_a_communication_failure() {
        let f = tempfile::tempfile().unwrap();
        let r = execute(f.as_fd(), &[0x5e; 16], &[], 8);
        assert_eq!(r.status, 0x02);
        assert!(is_transport_failure(&r));
    }
}
