// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A regular file or a block device: the daemon's storage.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{AtomicUnits, Backstore, Error, Extent, Kind, Route};

/// Alignment used for O_DIRECT bounce buffers (the largest logical block
/// size we support, and the page size).
const DIRECT_ALIGN: usize = 4096;

// linux/fs.h: _IOR(0x12, 114, size_t), _IO(0x12, 119), _IO(0x12, 127).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// A regular file or block device opened for I/O.
#[derive(Debug)]
pub struct FileBackstore {
    file: File,
    path: PathBuf,
    kind: Kind,
    /// Size in bytes; changes on `resize`.
    size: AtomicU64,
    read_only: bool,
    direct: bool,
    /// The file lives in memory (tmpfs, ramfs): I/O is a memory copy that
    /// never waits for a device, so it is done inline instead of through
    /// io_uring (whose io-wq hand-off would cost more than the copy).
    in_memory: bool,
    /// Files kept open for their locks (see `claim`, `hold`).
    held: Vec<File>,
    /// Untorn writes the kernel offers on this O_DIRECT file or device
    /// (statx STATX_WRITE_ATOMIC); None without O_DIRECT or support.
    atomic: Option<AtomicUnits>,
}

// linux/stat.h (6.11): statx mask bit for the atomic write fields.
const STATX_WRITE_ATOMIC: u32 = 0x0001_0000;

/// What statx says about untorn writes to `file` (None when nothing).
fn atomic_units(file: &File) -> Option<AtomicUnits> {
    // SAFETY: statx is plain data filled by the call.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty path with AT_EMPTY_PATH, a valid out pointer.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_WRITE_ATOMIC,
            &mut st,
        )
    };
    if r != 0 || st.stx_mask & STATX_WRITE_ATOMIC == 0 {
        return None;
    }
    let (min, max) = (st.stx_atomic_write_unit_min, st.stx_atomic_write_unit_max);
    (min > 0 && max >= min).then_some(AtomicUnits { min, max })
}

/// statfs(2) f_type of tmpfs and ramfs (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

fn on_memory_fs(file: &File) -> bool {
    // SAFETY: statfs is plain data filled by fstatfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and a valid out pointer.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    r == 0 && matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

impl FileBackstore {
    /// Open `path` (read-only if asked, O_DIRECT if asked) and find its size.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<FileBackstore, Error> {
        let mut flags = libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(flags)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.into(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| Error::Open {
            path: path.into(),
            source,
        })?;
        let ft = meta.file_type();
        let (kind, size) = if ft.is_file() {
            (Kind::File, meta.len())
        } else if ft.is_block_device() {
            let size = block_device_size(&file).map_err(|source| Error::Size {
                path: path.into(),
                source,
            })?;
            (Kind::Block, size)
        } else {
            return Err(Error::NotFileOrBlock(path.into()));
        };
        let in_memory = kind == Kind::File && on_memory_fs(&file);
        // RWF_ATOMIC takes O_DIRECT only.
        let atomic = if direct && !read_only {
            atomic_units(&file)
        } else {
            None
        };
        Ok(FileBackstore {
            file,
            path: path.into(),
            kind,
            size: AtomicU64::new(size),
            read_only,
            direct,
            in_memory,
            held: Vec::new(),
            atomic,
        })
    }

    /// Claim this backstore for this process (see `crate::claim`): others
    /// that would conflict with `share_rw` and this backstore's access
    /// (read-only or not) are refused, and we are refused if one already
    /// holds it. Held until the backstore is dropped.
    pub fn claim(&mut self, share_rw: bool) -> Result<(), crate::claim::Error> {
        let usage = crate::claim::Usage {
            writable: !self.read_only,
            share_rw,
        };
        let extra = crate::claim::claim_backstore(&self.file, &self.path, usage)?;
        self.held.extend(extra);
        Ok(())
    }

    /// Keep `file` (a lock on something this backstore's state depends
    /// on) open for as long as the backstore.
    pub fn hold(&mut self, file: File) {
        self.held.push(file);
    }
}

impl Backstore for FileBackstore {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// A regular file is truncated or extended to `Some(bytes)`; a block
    /// device's size is its own.
    fn resize(&self, bytes: Option<u64>) -> io::Result<u64> {
        let size = match (self.kind, bytes) {
            (Kind::File, Some(b)) if !self.read_only => {
                self.file.set_len(b)?;
                b
            }
            (Kind::Block, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a block device's size is its own: resize the device, then take its size",
                ))
            }
            (_, Some(_)) => return Err(io::Error::from_raw_os_error(libc::EROFS)),
            (Kind::Block, None) => block_device_size(&self.file)?,
            (_, None) => self.file.metadata()?.len(),
        };
        self.size.store(size, Ordering::Relaxed);
        Ok(size)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn direct(&self) -> bool {
        self.direct
    }

    fn route(&self) -> Route {
        if self.in_memory {
            Route::Inline
        } else {
            Route::Ring(self.file.as_raw_fd())
        }
    }

    /// preadv2/pwritev2, looping over short transfers.
    unsafe fn vectored(
        &self,
        write: bool,
        iovecs: &[libc::iovec],
        offset: u64,
        sync: bool,
    ) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // Copied only if a short transfer stops inside a buffer.
        let mut iov: std::borrow::Cow<[libc::iovec]> = std::borrow::Cow::Borrowed(iovecs);
        let mut start = 0usize;
        let mut off = offset;
        while start < iov.len() {
            let cnt = (iov.len() - start).min(1024) as libc::c_int;
            let at = i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let flags = if write && sync { libc::RWF_DSYNC } else { 0 };
            // SAFETY: iov[start..start+cnt] are valid iovecs (this function's
            // contract), and cnt does not pass the slice's end.
            let n = unsafe {
                if write {
                    libc::pwritev2(fd, iov[start..].as_ptr(), cnt, at, flags)
                } else {
                    libc::preadv2(fd, iov[start..].as_ptr(), cnt, at, flags)
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                if write {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                // End of file: the rest reads as zeros.
                for v in &iov[start..] {
                    // SAFETY: as above; zeroing the remaining buffers.
                    unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
                }
                return Ok(());
            }
            let mut n = n as usize;
            off += n as u64;
            while n > 0 && start < iov.len() {
                let len = iov[start].iov_len;
                if n >= len {
                    n -= len;
                    start += 1;
                } else {
                    let v = &mut iov.to_mut()[start];
                    // SAFETY: advancing within the same buffer (n < its length).
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                    v.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// A read past end-of-file of a regular file returns zeros (the file is
    /// exactly the LU size, so that only happens if it shrank underneath).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.direct {
            let mut bounce = AlignedBuf::new(buf.len())?;
            read_full(&self.file, bounce.as_mut_slice(), offset)?;
            buf.copy_from_slice(bounce.as_slice());
            return Ok(());
        }
        read_full(&self.file, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct {
            let mut bounce = AlignedBuf::new(buf.len())?;
            bounce.as_mut_slice().copy_from_slice(buf);
            return self.file.write_all_at(bounce.as_slice(), offset);
        }
        self.file.write_all_at(buf, offset)
    }

    /// fdatasync.
    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn can_deallocate(&self) -> bool {
        !self.read_only
    }

    /// A regular file that can punch holes.
    fn thin(&self) -> bool {
        self.kind == Kind::File && !self.read_only
    }

    /// A hole punched in a file; BLKDISCARD on a block device, or
    /// BLKZEROOUT where the device refuses the discard (the range must
    /// read back as zeros either way).
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.kind {
            Kind::Block => blk_range_ioctl(&self.file, BLKDISCARD, offset, len)
                .or_else(|_| blk_range_ioctl(&self.file, BLKZEROOUT, offset, len)),
            _ => fallocate(
                &self.file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
        }
    }

    /// FALLOC_FL_ZERO_RANGE (written zeros where the file system has no
    /// such thing) or BLKZEROOUT.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.kind {
            Kind::Block => blk_range_ioctl(&self.file, BLKZEROOUT, offset, len),
            _ => fallocate(&self.file, libc::FALLOC_FL_ZERO_RANGE, offset, len)
                .or_else(|_| self.write_repeated(&[0u8; 4096][..], offset, len)),
        }
    }

    /// posix_fadvise WILLNEED; nothing for O_DIRECT backstores (whose
    /// reads bypass the page cache).
    fn prefetch(&self, offset: u64, len: u64) {
        if self.direct {
            return;
        }
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: posix_fadvise on an fd we own; no memory is passed.
        let r = unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED)
        };
        if r != 0 {
            log::debug!(
                "{}: posix_fadvise WILLNEED failed: {}",
                self.path.display(),
                io::Error::from_raw_os_error(r)
            );
        }
    }

    /// SEEK_DATA / SEEK_HOLE on a regular file; a block device is mapped
    /// everywhere.
    fn extent_at(&self, offset: u64) -> io::Result<Extent> {
        let size = self.size();
        if self.kind != Kind::File || offset >= size {
            return Ok(Extent::Mapped(size.saturating_sub(offset)));
        }
        let fd = self.file.as_raw_fd();
        let data = lseek(fd, offset, libc::SEEK_DATA)?;
        match data {
            Some(d) if d == offset => {
                let hole = lseek(fd, offset, libc::SEEK_HOLE)?.unwrap_or(size);
                Ok(Extent::Mapped(hole.min(size) - offset))
            }
            Some(d) => Ok(Extent::Deallocated(d.min(size) - offset)),
            None => Ok(Extent::Deallocated(size - offset)),
        }
    }

    /// Untorn write sizes the kernel offers on this O_DIRECT file or device
    /// (statx STATX_WRITE_ATOMIC).
    fn atomic_units(&self) -> Option<AtomicUnits> {
        self.atomic
    }

    /// One pwritev2 with RWF_ATOMIC on the O_DIRECT descriptor, with
    /// RWF_DSYNC when `sync`.
    fn write_atomic(&self, buf: &[u8], offset: u64, sync: bool) -> io::Result<()> {
        if self.atomic.is_none() {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let mut bounce = AlignedBuf::new(buf.len())?;
        bounce.as_mut_slice().copy_from_slice(buf);
        let iov = libc::iovec {
            iov_base: bounce.as_mut_slice().as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let at = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = libc::RWF_ATOMIC | if sync { libc::RWF_DSYNC } else { 0 };
        // SAFETY: one iovec over the live, aligned bounce buffer.
        let n = unsafe { libc::pwritev2(self.file.as_raw_fd(), &iov, 1, at, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // An atomic write is never split: anything but all of it is an error.
        if n as usize != buf.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

/// copy_file_range(2) from `in_fd` to `out_fd` as far as the kernel takes
/// it; returns the bytes copied (less than `len` when it cannot go on, e.g.
/// across file systems, with O_DIRECT on some of them, or at the end of
/// the source).
pub(super) fn copy_file_range(
    in_fd: RawFd,
    out_fd: RawFd,
    src_off: u64,
    dst_off: u64,
    len: u64,
) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = i64::try_from(src_off + done)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut off_out = i64::try_from(dst_off + done)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let chunk = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: two open descriptors and two live local offsets.
        let n =
            unsafe { libc::copy_file_range(in_fd, &mut off_in, out_fd, &mut off_out, chunk, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not offered for this pair: the buffer does the rest.
                Some(
                    libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EBADF,
                ) => return Ok(done),
                _ => return Err(e),
            }
        }
        if n == 0 {
            // End of the source file: the rest reads as zeros.
            return Ok(done);
        }
        done += n as u64;
    }
    Ok(done)
}

/// A stable name for a backstore: its canonical path. Used to derive its
/// designators and default serial number.
pub fn canonical_id(path: &Path) -> io::Result<PathBuf> {
    path.canonicalize()
}

/// The object `path` names, whatever the path: two LUNs whose paths name
/// one object (hard links, bind mounts, symlinks, two nodes of one block
/// device) are one logical unit.
pub fn object_id(path: &Path) -> io::Result<ObjectId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(if m.file_type().is_block_device() {
        ObjectId::Block { rdev: m.rdev() }
    } else {
        ObjectId::File {
            dev: m.dev(),
            ino: m.ino(),
        }
    })
}

/// What a backstore path refers to (see [`object_id`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectId {
    File { dev: u64, ino: u64 },
    Block { rdev: u64 },
}

fn read_full(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn lseek(fd: RawFd, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on an fd we own; no memory is passed.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn blk_range_ioctl(file: &File, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD/BLKZEROOUT read a u64[2] range from the pointer, which
    // points at a live local array.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req, range.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at
    // a live local.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// A heap buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), DIRECT_ALIGN)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        Ok(AlignedBuf { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of layout.size() initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with exactly this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backstore::{copy, NullBackstore};

    fn sparse_file(size: u64) -> (tempfile::NamedTempFile, FileBackstore) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        let b = FileBackstore::open(f.path(), false, false).unwrap();
        (f, b)
    }

    #[test]
    fn new_sparse_file_is_one_hole() {
        let (_f, b) = sparse_file(1 << 20);
        assert_eq!(b.extent_at(0).unwrap(), Extent::Deallocated(1 << 20));
    }

    #[test]
    fn written_range_is_mapped_and_deallocate_makes_a_hole() {
        let (_f, b) = sparse_file(1 << 20);
        b.write_at(&[0xaa; 65536], 65536).unwrap();
        assert!(matches!(b.extent_at(65536).unwrap(), Extent::Mapped(n) if n >= 65536));
        b.deallocate(65536, 65536).unwrap();
        assert_eq!(b.extent_at(0).unwrap(), Extent::Deallocated(1 << 20));
        let mut buf = [1u8; 512];
        b.read_at(&mut buf, 65536).unwrap();
        assert_eq!(buf, [0u8; 512]);
    }

    #[test]
    fn vectored_io_scatters_and_gathers() {
        let f = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        f.as_file().set_len(8192).unwrap();
        let b = FileBackstore::open(f.path(), false, false).unwrap();
        assert_eq!(b.route(), Route::Inline);
        let mut a = [1u8; 100];
        let mut c = [2u8; 412];
        let iov = crate::backstore::tests::iovecs(&mut a, &mut c);
        // SAFETY: the iovecs are two live local arrays.
        unsafe { b.vectored(true, &iov, 512, false) }.unwrap();
        let mut back = [0u8; 512];
        b.read_at(&mut back, 512).unwrap();
        assert_eq!(&back[..100], &[1u8; 100][..]);
        assert_eq!(&back[100..], &[2u8; 412][..]);
        a.fill(0);
        c.fill(0);
        // SAFETY: as above.
        unsafe { b.vectored(false, &iov, 512, false) }.unwrap();
        assert_eq!((a[0], c[411]), (1, 2));
    }

    #[test]
    fn vectored_read_across_end_of_file_resumes_inside_a_buffer_then_zero_fills() {
        let f = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        std::fs::write(f.path(), [7u8; 600]).unwrap();
        let b = FileBackstore::open(f.path(), false, false).unwrap();
        let mut a = [1u8; 512];
        let mut c = [1u8; 512];
        let iov = crate::backstore::tests::iovecs(&mut a, &mut c);
        // SAFETY: the iovecs are two live local arrays.
        unsafe { b.vectored(false, &iov, 0, false) }.unwrap();
        assert_eq!(a, [7u8; 512]);
        assert_eq!(&c[..88], &[7u8; 88][..]);
        assert_eq!(&c[88..], &[0u8; 424][..]);
    }

    #[test]
    fn buffered_and_memory_files_offer_no_atomic_writes() {
        let (_f, b) = sparse_file(1 << 20);
        assert_eq!(b.atomic_units(), None);
        let f = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        f.as_file().set_len(8192).unwrap();
        let b = FileBackstore::open(f.path(), false, false).unwrap();
        assert_eq!(b.atomic_units(), None);
        assert_eq!(
            b.write_atomic(&[0u8; 4096], 0, false)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );
    }

    #[test]
    fn copy_to_another_file_and_within_one_file_both_ways() {
        let (_f, a) = sparse_file(1 << 20);
        let (_g, b) = sparse_file(1 << 20);
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        a.write_at(&data, 4096).unwrap();
        copy(&a, &b, 4096, 8192, 65536).unwrap();
        let mut back = vec![0u8; 65536];
        b.read_at(&mut back, 8192).unwrap();
        assert_eq!(back, data);
        // Overlapping forwards and backwards within one file.
        crate::backstore::tests::check_overlapping_copies(&a);
    }

    #[test]
    fn copy_from_null_writes_zeros_and_to_null_drops() {
        let (_f, a) = sparse_file(1 << 20);
        a.write_at(&[7u8; 4096], 0).unwrap();
        let null = NullBackstore::new(1 << 20);
        copy(&null, &a, 0, 0, 4096).unwrap();
        let mut back = [1u8; 4096];
        a.read_at(&mut back, 0).unwrap();
        assert_eq!(back, [0u8; 4096]);
        copy(&a, &null, 0, 0, 4096).unwrap();
    }

    #[test]
    fn directory_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            FileBackstore::open(d.path(), true, false),
            Err(Error::Open { .. }) | Err(Error::NotFileOrBlock(_))
        ));
    }
}
