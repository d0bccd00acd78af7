// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A guest's data buffers as a remote LUN's session sees them: the data-in
//! buffer as the sink of a read (the iSCSI initiator receives big Data-In
//! segments from the socket straight into guest memory, readv(2) on the
//! guest's pages) and the data-out buffer as the source of a write (sent
//! from the guest's pages with the PDU headers in one sendmsg(2)). No
//! buffer in between.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::remote::{Sink, Source};
use crate::virtio::buffers::{Buffer, GuestMemory};

/// Most iovecs one readv(2) takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

pub(super) struct GuestSink {
    mem: Arc<GuestMemory>,
    buf: Buffer,
    /// Where the data starts in `buf` (after the response header).
    base: u64,
    len: usize,
    /// Cleared when the command completes to the guest: from then on the
    /// buffer is the guest's again and nothing may be written to it. Held
    /// across each write, so closing waits for one in progress.
    open: Mutex<bool>,
}

impl GuestSink {
    /// A sink for `len` bytes of `buf` from `base`; None if the guest's
    /// descriptors do not map to guest memory (checked now: a write into
    /// the sink must not fail silently later).
    pub(super) fn new(
        mem: &Arc<GuestMemory>,
        buf: &Buffer,
        base: u64,
        len: usize,
    ) -> Option<GuestSink> {
        buf.iovecs(mem, base, len as u64).ok()?;
        Some(GuestSink {
            mem: mem.clone(),
            buf: buf.clone(),
            base,
            len,
            open: Mutex::new(true),
        })
    }

    /// Refuse every write from now on (returns once none is in progress).
    pub(super) fn close(&self) {
        *self.lock() = false;
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fits(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|e| e <= self.len)
    }
}

impl Sink for GuestSink {
    fn size(&self) -> usize {
        self.len
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> bool {
        let open = self.lock();
        *open
            && self.fits(offset, data.len())
            && self
                .buf
                .write_at(&self.mem, self.base + offset as u64, data)
                .is_ok()
    }

    fn read_from(
        &self,
        fd: RawFd,
        offset: usize,
        len: usize,
        after: &mut [u8],
    ) -> Option<io::Result<usize>> {
        let open = self.lock();
        if !*open || !self.fits(offset, len) {
            return None;
        }
        let mut iov = self
            .buf
            .iovecs(&self.mem, self.base + offset as u64, len as u64)
            .ok()?;
        // Past the limit the read stops short of `len`: nothing after.
        if iov.len() < IOV_MAX && !after.is_empty() {
            iov.push(libc::iovec {
                iov_base: after.as_mut_ptr().cast(),
                iov_len: after.len(),
            });
        }
        let n = iov.len().min(IOV_MAX) as libc::c_int;
        // SAFETY: the iovecs point into guest memory mapped by `self.mem`,
        // which this sink keeps alive, within the guest's data-in buffer
        // (`fits`, `iovecs` bound them), and, last, into `after`, borrowed
        // mutably for the call; the sink is open, so the buffer has not
        // been handed back to the guest, and `open` stays locked until the
        // kernel is done writing.
        let r = unsafe { libc::readv(fd, iov.as_ptr(), n) };
        drop(open);
        Some(usize::try_from(r).map_err(|_| io::Error::last_os_error()))
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
        let open = self.lock();
        *open
            && self.fits(offset, buf.len())
            && self
                .buf
                .read_at(&self.mem, self.base + offset as u64, buf)
                .is_ok()
    }
}

/// A guest's data-out buffer: `len` bytes of `buf` from `base`. Only read,
/// so it needs no closing: a late read of a buffer the guest reuses sends
/// stale bytes to a target that no longer wants them, nothing worse.
pub(super) struct GuestSource {
    mem: Arc<GuestMemory>,
    buf: Buffer,
    base: u64,
    len: usize,
}

impl GuestSource {
    /// None if the guest's descriptors do not map to guest memory.
    pub(super) fn new(
        mem: &Arc<GuestMemory>,
        buf: &Buffer,
        base: u64,
        len: usize,
    ) -> Option<GuestSource> {
        buf.iovecs(mem, base, len as u64).ok()?;
        Some(GuestSource {
            mem: mem.clone(),
            buf: buf.clone(),
            base,
            len,
        })
    }
}

impl Source for GuestSource {
    fn size(&self) -> usize {
        self.len
    }

    fn read_at(&self, offset: usize, data: &mut [u8]) -> bool {
        offset
            .checked_add(data.len())
            .is_some_and(|e| e <= self.len)
            && self
                .buf
                .read_at(&self.mem, self.base + offset as u64, data)
                .is_ok()
    }

    fn iovecs(&self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) -> bool {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return false;
        }
        match self
            .buf
            .iovecs(&self.mem, self.base + offset as u64, len as u64)
        {
            Ok(v) => {
                out.extend(v);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    #[test]
    fn receives_across_regions_and_refuses_everything_once_closed() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        // A 2-byte response header, then 6 data bytes over two regions.
        let buf = Buffer::from_regions(&[(0x100, 4), (0x800, 4)]);
        assert!(
            GuestSink::new(&mem, &Buffer::from_regions(&[(0xfff0, 0x100)]), 0, 0x100).is_none()
        );
        let k = GuestSink::new(&mem, &buf, 2, 6).unwrap();
        assert_eq!(k.size(), 6);
        let (mut tx, rx) = UnixStream::pair().unwrap();
        tx.write_all(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut after = [0u8; 2];
        let got = k.read_from(rx.as_raw_fd(), 1, 5, &mut after);
        assert_eq!((got.unwrap().unwrap(), after), (7, [6, 7]));
        let mut one = [0u8; 1];
        (&rx).read_exact(&mut one).unwrap();
        assert_eq!(one, [8]);
        assert!(k.write_at(0, &[9]));
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x100)).unwrap();
        assert_eq!(got, [0, 0, 9, 1]);
        mem.read_slice(&mut got, GuestAddress(0x800)).unwrap();
        assert_eq!(got, [2, 3, 4, 5]);
        // Past the end: refused, nothing read from the socket.
        assert!(!k.write_at(5, &[0, 0]));
        assert!(k.read_from(rx.as_raw_fd(), 4, 3, &mut []).is_none());
        k.close();
        tx.write_all(&[7]).unwrap();
        assert!(!k.write_at(0, &[7]));
        assert!(k.read_from(rx.as_raw_fd(), 0, 1, &mut []).is_none());
        mem.read_slice(&mut got, GuestAddress(0x100)).unwrap();
        assert_eq!(got, [0, 0, 9, 1]);
    }
}
