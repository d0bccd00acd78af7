// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Backstores: where a logical unit's blocks live. A backstore is a byte
//! range with read, write, flush, deallocate and allocation-map queries; it
//! knows nothing about SCSI.
//!
//! [`Backstore`] is the contract the SCSI layer and the queue workers use;
//! three implementations stand behind it:
//! - [`FileBackstore`] (file.rs): a regular file or a block device, the
//!   daemon's real storage, with O_DIRECT, copy_file_range, hole punching,
//!   BLKDISCARD and RWF_ATOMIC;
//! - [`NullBackstore`] (null.rs): no storage, reads are zeros and writes
//!   vanish (`--lun null,size=...`, for measuring the transport);
//! - [`MemoryBackstore`] (memory.rs): a sparse image in memory that fails
//!   on demand, for tests (SCSI tests need no file, and a failing disk can
//!   be injected at any byte range and operation).

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

mod file;
mod memory;
mod null;

pub use file::{canonical_id, object_id, FileBackstore, ObjectId};
pub use memory::{Fault, MemoryBackstore, Op};
pub use null::NullBackstore;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot open backstore {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Backstore {0} is neither a regular file nor a block device")]
    NotFileOrBlock(PathBuf),
    #[error("Cannot get the size of backstore {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What kind of object backs the logical unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file; may be sparse (thin provisioned).
    File,
    /// A block device.
    Block,
    /// No storage: reads return zeros, writes are dropped (for measuring
    /// the transport alone).
    Null,
    /// An image in the daemon's memory (tests).
    Memory,
}

impl Kind {
    /// The name `info` and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Block => "block",
            Kind::Null => "null",
            Kind::Memory => "memory",
        }
    }
}

/// Whether a byte range is allocated or a hole, as reported by the filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    Mapped(u64),
    Deallocated(u64),
}

/// The range of write sizes RWF_ATOMIC accepts: powers of two from `min`
/// to `max` bytes, each naturally aligned (statx(2), Linux 6.11 and later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicUnits {
    pub min: u32,
    pub max: u32,
}

/// How a queue worker moves a read's or a write's bytes between guest
/// memory and this backstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Nothing to move: reads are zeros, writes vanish.
    Discard,
    /// A memory copy that never waits for a device (tmpfs, ramfs, an image
    /// in memory): done inline with [`Backstore::vectored`], since an
    /// io_uring hand-off would cost more than the copy.
    Inline,
    /// Submitted to the worker's io_uring on this descriptor.
    Ring(RawFd),
}

/// A logical unit's storage: a byte range of `size()` bytes.
///
/// Errors are `io::Error`s with the errno the operation met (the SCSI layer
/// turns ENOSPC into SPACE ALLOCATION FAILED and anything else into a
/// medium or write error at the LBA).
pub trait Backstore: Send + Sync + fmt::Debug {
    /// What backs it.
    fn kind(&self) -> Kind;

    /// A name for logs and `info`: the path it was opened by.
    fn path(&self) -> &Path;

    /// Size in bytes; changes on `resize`.
    fn size(&self) -> u64;

    /// Take a new size: with `Some(bytes)` set it (where this backstore
    /// can), with `None` read it again (resized by someone else). Returns
    /// the size now.
    fn resize(&self, bytes: Option<u64>) -> io::Result<u64>;

    /// Opened read-only: writes are refused by the SCSI layer.
    fn read_only(&self) -> bool;

    /// Opened with O_DIRECT (reads bypass the page cache).
    fn direct(&self) -> bool {
        false
    }

    /// How the data path moves a command's bytes. Asked once, when the
    /// logical unit is made: it must not change.
    fn route(&self) -> Route;

    /// Read into (`write` false) or write from the buffers `iovecs` at
    /// `offset`, completely; `sync` writes durably (RWF_DSYNC). A read past
    /// the end zero-fills.
    ///
    /// # Safety
    /// Each iovec must describe memory that is valid for reads (write) or
    /// writes (read) of `iov_len` bytes for the whole call, and that nothing
    /// else accesses meanwhile (guest memory the worker keeps mapped).
    unsafe fn vectored(
        &self,
        write: bool,
        iovecs: &[libc::iovec],
        offset: u64,
        sync: bool,
    ) -> io::Result<()>;

    /// Read exactly `buf.len()` bytes at `offset` (past the end: zeros).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Make written data durable.
    fn flush(&self) -> io::Result<()>;

    /// Whether ranges can be deallocated (UNMAP, WRITE SAME with UNMAP).
    fn can_deallocate(&self) -> bool;

    /// Deallocated ranges become holes that read as zeros and that
    /// `extent_at` reports: the logical unit is thin provisioned.
    fn thin(&self) -> bool;

    /// Deallocate a byte range: afterwards it reads as zeros.
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Write zeros over a range without necessarily deallocating it.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_repeated(&[0u8; 4096][..], offset, len)
    }

    /// Write `pattern` (one logical block) repeatedly over `len` bytes.
    fn write_repeated(&self, pattern: &[u8], offset: u64, len: u64) -> io::Result<()> {
        if pattern.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // Batch the pattern into chunks of up to 1 MiB to keep calls few.
        let per_chunk = (1 << 20) / pattern.len();
        let chunk: Vec<u8> = pattern.repeat(per_chunk.max(1));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.write_at(&chunk[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// A hint that a range will be read soon; returns at once.
    fn prefetch(&self, _offset: u64, _len: u64) {}

    /// The extent starting at `offset`: mapped or deallocated, and its
    /// length (clamped to the size). A backstore without an allocation
    /// map is mapped everywhere.
    fn extent_at(&self, offset: u64) -> io::Result<Extent> {
        Ok(Extent::Mapped(self.size().saturating_sub(offset)))
    }

    /// Untorn write sizes offered here, if any.
    fn atomic_units(&self) -> Option<AtomicUnits> {
        None
    }

    /// Write `buf` at `offset` so that a crash or a concurrent read sees
    /// all of it or none of it (the caller keeps `buf.len()` a power of two
    /// within `atomic_units` and `offset` a multiple of it), durably when
    /// `sync`.
    fn write_atomic(&self, _buf: &[u8], _offset: u64, _sync: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// The open descriptor, for copy_file_range between two backstores.
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

/// Copy `len` bytes from `src_off` in `src` to `dst_off` in `dst`, on the
/// host: copy_file_range(2) between two descriptors (which a file system
/// may turn into a reflink or a server-side copy), else through a 1 MiB
/// buffer, moving backwards when a copy within one backstore overlaps
/// forwards. A null source reads zeros; a null destination drops the data.
pub fn copy(
    src: &dyn Backstore,
    dst: &dyn Backstore,
    src_off: u64,
    dst_off: u64,
    len: u64,
) -> io::Result<()> {
    if len == 0 || dst.kind() == Kind::Null {
        return Ok(());
    }
    if src.kind() == Kind::Null {
        return dst.write_zeroes(dst_off, len);
    }
    let same = std::ptr::addr_eq(src, dst) || (src.fd().is_some() && src.path() == dst.path());
    let overlap = same && src_off < dst_off + len && dst_off < src_off + len;
    let mut done = 0u64;
    if let (false, Some(in_fd), Some(out_fd)) = (overlap, src.fd(), dst.fd()) {
        done = file::copy_file_range(in_fd, out_fd, src_off, dst_off, len)?;
    }
    if done < len {
        copy_buffered(src, dst, src_off + done, dst_off + done, len - done)?;
    }
    Ok(())
}

/// Copy through a buffer, in the direction that is safe when `src_off`
/// and `dst_off` overlap within one backstore.
fn copy_buffered(
    src: &dyn Backstore,
    dst: &dyn Backstore,
    src_off: u64,
    dst_off: u64,
    len: u64,
) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let backwards = dst_off > src_off;
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        let at = if backwards { left - n } else { len - left };
        let chunk = &mut buf[..n as usize];
        src.read_at(chunk, src_off + at)?;
        dst.write_at(chunk, dst_off + at)?;
        left -= n;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn image(size: u64) -> MemoryBackstore {
        MemoryBackstore::new(size)
    }

    /// Two iovecs over `a` and `c` (tests of `vectored`).
    pub(super) fn iovecs(a: &mut [u8], c: &mut [u8]) -> [libc::iovec; 2] {
        [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: c.len(),
            },
        ]
    }

    /// 64 KiB written at 4096 in `a`, then copied within `a` overlapping
    /// forwards and backwards, reads back whole each time.
    pub(super) fn check_overlapping_copies(a: &dyn Backstore) {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        a.write_at(&data, 4096).unwrap();
        let mut back = vec![0u8; 65536];
        copy(a, a, 4096, 4096 + 1000, 65536).unwrap();
        a.read_at(&mut back, 4096 + 1000).unwrap();
        assert_eq!(back, data);
        copy(a, a, 4096 + 1000, 4096 - 512, 65536).unwrap();
        a.read_at(&mut back, 4096 - 512).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_copy_within_one_backstore_overlapping_either_way_moves_the_data() {
        check_overlapping_copies(&image(1 << 20));
    }

    #[test]
    fn a_copy_between_kinds_goes_through_the_buffer() {
        let a = image(1 << 20);
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let b = FileBackstore::open(f.path(), false, false).unwrap();
        a.write_at(&[9u8; 3 << 20 >> 2], 0).unwrap();
        copy(&a, &b, 0, 512, 3 << 20 >> 2).unwrap();
        let mut back = vec![0u8; 3 << 20 >> 2];
        b.read_at(&mut back, 512).unwrap();
        assert!(back.iter().all(|&x| x == 9));
    }

    #[test]
    fn a_failing_source_fails_the_copy_with_its_errno() {
        let a = image(1 << 20);
        let b = image(1 << 20);
        a.fail(Fault::new(Op::Read, 8192..8193, libc::EIO));
        let e = copy(&a, &b, 0, 0, 65536).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn write_repeated_refuses_an_empty_pattern_and_fills_a_range() {
        let a = image(1 << 20);
        assert!(a.write_repeated(&[], 0, 512).is_err());
        a.write_repeated(&[1, 2, 3, 4], 100, 1000).unwrap();
        let mut back = vec![0u8; 1000];
        a.read_at(&mut back, 100).unwrap();
        assert!(back.chunks(4).all(|c| c == [1, 2, 3, 4]));
    }
}
