// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The dirty page log of live migration (vhost-user.rst, "Migration"): while
//! the front-end has `VHOST_F_LOG_ALL` set, every guest page the back-end
//! writes is marked in a bitmap the front-end shares
//! (`VHOST_USER_SET_LOG_BASE`, with `VHOST_USER_PROTOCOL_F_LOG_SHMFD`): one
//! bit per 4 KiB page of guest physical address space, page `n` at bit
//! `n % 8` of byte `n / 8`, set atomically. The front-end sends a page
//! again whenever its bit is set, so a page is marked only after its bytes
//! have landed: marked before, it could be sent stale and its bit cleared.
//!
//! The daemon marks at completion, for every path alike (emulated replies,
//! io_uring and preadv2 straight into guest buffers, the iSCSI receiver
//! writing into them): the whole device-writable part of a chain, then the
//! used ring entry and index (see `Vring::add_used`). With logging off a
//! mark is one atomic load.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use log::warn;

/// VHOST_LOG_PAGE.
pub const LOG_PAGE: u64 = 0x1000;

/// The shared bitmap, mapped.
struct LogMap {
    ptr: *mut u8,
    len: usize,
    /// Watched for its file shrinking (`sigbus`); set once mapped.
    watch: Option<super::sigbus::Guard>,
}

// SAFETY: the mapping is only accessed through atomic byte operations.
unsafe impl Send for LogMap {}
// SAFETY: as above.
unsafe impl Sync for LogMap {}

impl LogMap {
    fn map(file: &File, offset: u64, len: u64) -> io::Result<LogMap> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new shared mapping of `len` bytes of `file`; the result
        // is checked, and the mapping is owned by the returned value.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(LogMap {
            ptr: ptr.cast(),
            len,
            watch: None,
        })
    }

    fn byte(&self, i: usize) -> Option<&AtomicU8> {
        if i >= self.len {
            return None;
        }
        // SAFETY: `i` is within the mapping, which lives as long as `self`;
        // AtomicU8 has the size and alignment of u8.
        Some(unsafe { AtomicU8::from_ptr(self.ptr.add(i)) })
    }
}

impl Drop for LogMap {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
        self.watch = None;
    }
}

/// The log of one connection.
#[derive(Default)]
pub struct DirtyLog {
    /// LOG_ALL is acked and a log is mapped.
    on: AtomicBool,
    /// LOG_ALL as last acked by the front-end.
    wanted: AtomicBool,
    map: RwLock<Option<Arc<LogMap>>>,
    /// A mark fell outside the log (reported once).
    overflowed: AtomicBool,
}

impl DirtyLog {
    /// Whether writes are being logged.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Mark the pages of `len` bytes at guest physical address `gpa` dirty
    /// (after the bytes were written).
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 || !self.is_on() {
            return;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(map) = map else { return };
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        for page in first..=last {
            let Some(byte) = usize::try_from(page / 8).ok().and_then(|i| map.byte(i)) else {
                if !self.overflowed.swap(true, Ordering::Relaxed) {
                    warn!(
                        "Guest write at {gpa:#x} is beyond the {}-byte dirty log: not logged",
                        map.len
                    );
                }
                return;
            };
            byte.fetch_or(1 << (page % 8), Ordering::Release);
        }
    }

    /// VHOST_USER_SET_LOG_BASE: map the front-end's log (replacing any
    /// earlier one, e.g. after guest memory grew).
    pub fn set_base(
        &self,
        file: &File,
        offset: u64,
        size: u64,
        owner: &super::memory::Owner,
    ) -> io::Result<()> {
        let mut m = LogMap::map(file, offset, size)?;
        m.watch = Some(super::sigbus::watch(m.ptr, m.len, owner)?);
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(m));
        self.overflowed.store(false, Ordering::Relaxed);
        self.update();
        Ok(())
    }

    /// VHOST_F_LOG_ALL acked (true) or cleared (false) by SET_FEATURES:
    /// logging starts or stops (a migration that ends, fails or is
    /// cancelled clears it).
    pub fn set_wanted(&self, on: bool) {
        self.wanted.store(on, Ordering::SeqCst);
        self.update();
        if !on {
            // The front-end may unmap or reuse it: let it go (the next
            // migration sends SET_LOG_BASE again).
            *self.map.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn update(&self) {
        let mapped = self.map.read().unwrap_or_else(|e| e.into_inner()).is_some();
        let on = mapped && self.wanted.load(Ordering::SeqCst);
        self.on.store(on, Ordering::SeqCst);
    }

    /// Whether the page holding `gpa` is marked (tests).
    #[cfg(test)]
    pub fn is_marked(&self, gpa: u64) -> bool {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner()).clone();
        let page = gpa / LOG_PAGE;
        map.and_then(|m| {
            usize::try_from(page / 8)
                .ok()
                .and_then(|i| m.byte(i).map(|b| b.load(Ordering::Acquire)))
        })
        .is_some_and(|b| b & (1 << (page % 8)) != 0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A log covering `bytes` of guest memory, in a memfd, switched on.
    pub(crate) fn logging(bytes: u64) -> DirtyLog {
        let l = DirtyLog::default();
        let f = memfd(bytes / LOG_PAGE / 8 + 1);
        l.set_base(&f, 0, bytes / LOG_PAGE / 8 + 1, &Default::default())
            .unwrap();
        l.set_wanted(true);
        l
    }

    pub(crate) fn memfd(len: u64) -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"log".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    #[test]
    fn marks_every_page_a_write_touches_and_nothing_else() {
        let l = logging(1 << 20);
        // 8 bytes across the boundary of pages 1 and 2.
        l.mark(2 * LOG_PAGE - 4, 8);
        assert!(!l.is_marked(0));
        assert!(l.is_marked(LOG_PAGE));
        assert!(l.is_marked(2 * LOG_PAGE));
        assert!(!l.is_marked(3 * LOG_PAGE));
    }

    #[test]
    fn nothing_is_marked_without_log_all() {
        let l = DirtyLog::default();
        let f = memfd(64);
        l.set_base(&f, 0, 64, &Default::default()).unwrap();
        l.mark(0, 4096);
        assert!(!l.is_on());
        l.set_wanted(true);
        assert!(l.is_on());
        l.mark(0, 1);
        assert!(l.is_marked(0));
    }

    #[test]
    fn clearing_log_all_stops_logging() {
        let l = logging(1 << 20);
        l.set_wanted(false);
        assert!(!l.is_on());
        l.mark(LOG_PAGE, 1);
        assert!(!l.is_marked(LOG_PAGE));
    }

    #[test]
    fn a_write_beyond_the_log_is_dropped_not_a_crash() {
        let l = DirtyLog::default();
        let f = memfd(1);
        l.set_base(&f, 0, 1, &Default::default()).unwrap();
        l.set_wanted(true);
        // Page 7 is the last one an 8-bit log covers.
        l.mark(7 * LOG_PAGE, 2 * LOG_PAGE);
        assert!(l.is_marked(7 * LOG_PAGE));
        l.mark(u64::MAX - 1, 10);
    }
}
