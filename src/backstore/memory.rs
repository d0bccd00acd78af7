// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A sparse image in memory that fails on demand: the backstore tests use.
//!
//! The image is held in 4 KiB chunks allocated on first write, so a large
//! logical unit costs only what is written, and deallocated chunks are
//! holes (thin provisioning, with an allocation map for GET LBA STATUS).
//! A [`Fault`] makes chosen operations on a chosen byte range fail with a
//! chosen errno, always or a given number of times: a disk with a bad
//! sector, a full thin pool (ENOSPC), a cache that cannot be flushed.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use super::{AtomicUnits, Backstore, Extent, Kind, Route};

/// The allocation unit.
const CHUNK: u64 = 4096;

/// An operation a [`Fault`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    /// Writes of every kind: data, zeros, patterns, atomic writes.
    Write,
    Flush,
    Deallocate,
}

/// Operations `op` that touch `range` (bytes) fail with `errno`; after
/// `times` failures (if given) the fault is spent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub op: Op,
    pub range: Range<u64>,
    pub errno: i32,
    pub times: Option<u32>,
}

impl Fault {
    /// A fault that lasts until [`MemoryBackstore::heal`].
    pub fn new(op: Op, range: Range<u64>, errno: i32) -> Fault {
        Fault {
            op,
            range,
            errno,
            times: None,
        }
    }

    /// The same fault, spent after `n` failures.
    pub fn times(self, n: u32) -> Fault {
        Fault {
            times: Some(n),
            ..self
        }
    }
}

#[derive(Debug)]
pub struct MemoryBackstore {
    /// The chunks written, by index; a missing one is a hole (reads as
    /// zeros), so a large image costs only what is written.
    chunks: RwLock<BTreeMap<usize, Box<[u8]>>>,
    size: AtomicU64,
    read_only: bool,
    atomic: Option<AtomicUnits>,
    faults: Mutex<Vec<Fault>>,
    /// Operations that reached the image (faults included): reads, writes,
    /// flushes.
    counts: [AtomicU64; 3],
}

impl MemoryBackstore {
    /// An image of `size` bytes, all holes.
    pub fn new(size: u64) -> MemoryBackstore {
        MemoryBackstore {
            chunks: RwLock::new(BTreeMap::new()),
            size: AtomicU64::new(size),
            read_only: false,
            atomic: None,
            faults: Mutex::new(Vec::new()),
            counts: Default::default(),
        }
    }

    /// The same image, opened read-only.
    pub fn read_only(self) -> MemoryBackstore {
        MemoryBackstore {
            read_only: true,
            ..self
        }
    }

    /// The same image, offering untorn writes of these sizes.
    pub fn with_atomic_units(self, units: AtomicUnits) -> MemoryBackstore {
        MemoryBackstore {
            atomic: Some(units),
            ..self
        }
    }

    /// Make operations fail as `fault` says, from now on.
    pub fn fail(&self, fault: Fault) {
        lock(&self.faults).push(fault);
    }

    /// Forget every fault.
    pub fn heal(&self) {
        lock(&self.faults).clear();
    }

    /// How many reads, writes and flushes reached the image so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let [r, w, f] = &self.counts;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (n(r), n(w), n(f))
    }

    /// The first live fault for `op` on `[offset, offset + len)`, spending
    /// one of its times.
    fn check(&self, op: Op, offset: u64, len: u64) -> io::Result<()> {
        let counter = match op {
            Op::Read => Some(&self.counts[0]),
            Op::Write => Some(&self.counts[1]),
            Op::Flush => Some(&self.counts[2]),
            Op::Deallocate => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let end = offset.saturating_add(len.max(1));
        let mut faults = lock(&self.faults);
        let hit = faults.iter().position(|f| {
            f.op == op && f.range.start < end && offset < f.range.end && f.times != Some(0)
        });
        let Some(i) = hit else {
            return Ok(());
        };
        let errno = faults[i].errno;
        if let Some(t) = &mut faults[i].times {
            *t -= 1;
            if *t == 0 {
                faults.remove(i);
            }
        }
        Err(io::Error::from_raw_os_error(errno))
    }

    /// Writes are refused past the end (a file would grow; an image does
    /// not), as on a read-only image.
    fn check_write(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.check(Op::Write, offset, len)?;
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        }
    }

    /// Copy between the image and `buf` at `offset` (`buf` is read from
    /// when `write`, else filled); the range is within the size.
    fn transfer(&self, write: bool, buf: &Buf<'_>, offset: u64) {
        let mut at = offset;
        let mut done = 0usize;
        let len = buf.len;
        if write {
            let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
            while done < len {
                let (index, within, n) = span(at, len - done);
                let chunk = chunks
                    .entry(index)
                    .or_insert_with(|| vec![0; CHUNK as usize].into());
                buf.read(done, &mut chunk[within..within + n]);
                done += n;
                at += n as u64;
            }
        } else {
            let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
            while done < len {
                let (index, within, n) = span(at, len - done);
                match chunks.get(&index) {
                    Some(chunk) => buf.write(done, &chunk[within..within + n]),
                    None => buf.zero(done, n),
                }
                done += n;
                at += n as u64;
            }
        }
    }

    /// Read into `buf`, clamped to the size: past the end reads zeros.
    fn read_into(&self, buf: &Buf<'_>, offset: u64) -> io::Result<()> {
        self.check(Op::Read, offset, buf.len as u64)?;
        let inside = self.size().saturating_sub(offset).min(buf.len as u64) as usize;
        self.transfer(false, &buf.first(inside), offset);
        buf.zero(inside, buf.len - inside);
        Ok(())
    }

    /// Write from `buf`, which must lie within the size.
    fn write_from(&self, buf: &Buf<'_>, offset: u64) -> io::Result<()> {
        self.check_write(offset, buf.len as u64)?;
        self.transfer(true, buf, offset);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The chunk holding `at`, the offset in it, and how many of `left` bytes
/// it holds from there.
fn span(at: u64, left: usize) -> (usize, usize, usize) {
    let index = (at / CHUNK) as usize;
    let within = (at % CHUNK) as usize;
    let n = (CHUNK as usize - within).min(left);
    (index, within, n)
}

/// The caller's buffers, as iovecs (guest memory, or one slice), of which
/// the first `len` bytes are used.
struct Buf<'a> {
    iovecs: &'a [libc::iovec],
    len: usize,
}

impl<'a> Buf<'a> {
    /// All of `iovecs`.
    fn new(iovecs: &'a [libc::iovec]) -> Buf<'a> {
        let len = iovecs.iter().map(|v| v.iov_len).sum();
        Buf { iovecs, len }
    }

    /// The first `n` bytes (n <= len).
    fn first(&self, n: usize) -> Buf<'a> {
        Buf {
            iovecs: self.iovecs,
            len: n.min(self.len),
        }
    }

    /// Visit bytes `[at, at + n)` of the buffers, clamped to `len`, as raw
    /// parts: a pointer, how many bytes there, and how many came before.
    fn each(&self, at: usize, n: usize, mut f: impl FnMut(*mut u8, usize, usize)) {
        let mut pos = 0usize; // position in the iovecs' bytes
        let end_wanted = at.saturating_add(n).min(self.len);
        let (mut from, mut done) = (at, 0usize);
        for v in self.iovecs {
            if from >= end_wanted {
                break;
            }
            let end = pos + v.iov_len;
            if from < end {
                let within = from - pos;
                let k = (v.iov_len - within).min(end_wanted - from);
                // SAFETY: within + k <= iov_len: inside this iovec, valid
                // memory by `vectored`'s contract.
                f(unsafe { v.iov_base.cast::<u8>().add(within) }, k, done);
                from += k;
                done += k;
            }
            pos = end;
        }
    }

    /// Copy bytes `[at, at + dst.len())` of the buffers into `dst`.
    fn read(&self, at: usize, dst: &mut [u8]) {
        self.each(at, dst.len(), |p, k, done| {
            // SAFETY: `each` hands out k valid bytes at p; dst has room.
            let src = unsafe { std::slice::from_raw_parts(p, k) };
            dst[done..done + k].copy_from_slice(src);
        });
    }

    /// Copy `src` into bytes `[at, at + src.len())` of the buffers.
    fn write(&self, at: usize, src: &[u8]) {
        self.each(at, src.len(), |p, k, done| {
            // SAFETY: `each` hands out k valid bytes at p, writable: only
            // reads fill buffers, and their iovecs are writable by
            // `vectored`'s contract (or are one `&mut` slice, `read_at`).
            unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), p, k) };
        });
    }

    /// Zero bytes `[at, at + n)` of the buffers.
    fn zero(&self, at: usize, n: usize) {
        self.each(at, n, |p, k, _| {
            // SAFETY: as in `write`.
            unsafe { std::ptr::write_bytes(p, 0, k) };
        });
    }
}

/// One iovec over a slice.
fn iovec(p: *mut u8, len: usize) -> [libc::iovec; 1] {
    [libc::iovec {
        iov_base: p.cast(),
        iov_len: len,
    }]
}

impl Backstore for MemoryBackstore {
    fn kind(&self) -> Kind {
        Kind::Memory
    }

    fn path(&self) -> &Path {
        Path::new("memory")
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Takes any size; shrinking drops what lay past the new end.
    fn resize(&self, bytes: Option<u64>) -> io::Result<u64> {
        if let Some(b) = bytes {
            if self.read_only {
                return Err(io::Error::from_raw_os_error(libc::EROFS));
            }
            let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
            let keep = usize::try_from(b.div_ceil(CHUNK)).unwrap_or(usize::MAX);
            chunks.retain(|&i, _| i < keep);
            if b % CHUNK != 0 {
                if let Some(last) = chunks.get_mut(&(keep - 1)) {
                    last[(b % CHUNK) as usize..].fill(0);
                }
            }
            self.size.store(b, Ordering::Relaxed);
        }
        Ok(self.size())
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn route(&self) -> Route {
        Route::Inline
    }

    unsafe fn vectored(
        &self,
        write: bool,
        iovecs: &[libc::iovec],
        offset: u64,
        sync: bool,
    ) -> io::Result<()> {
        let buf = Buf::new(iovecs);
        if !write {
            return self.read_into(&buf, offset);
        }
        self.write_from(&buf, offset)?;
        if sync {
            self.flush()?;
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let v = iovec(buf.as_mut_ptr(), buf.len());
        self.read_into(&Buf::new(&v), offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // Only read from: a write's buffers are never written through.
        let v = iovec(buf.as_ptr().cast_mut(), buf.len());
        self.write_from(&Buf::new(&v), offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.check(Op::Flush, 0, u64::MAX)
    }

    fn can_deallocate(&self) -> bool {
        !self.read_only
    }

    fn thin(&self) -> bool {
        !self.read_only
    }

    /// Whole chunks become holes; the partial chunks at either end are
    /// zeroed.
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(Op::Deallocate, offset, len)?;
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let end = offset.saturating_add(len).min(self.size());
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let mut at = offset;
        while at < end {
            let (index, within, n) = span(at, usize::try_from(end - at).unwrap_or(usize::MAX));
            if n as u64 == CHUNK {
                chunks.remove(&index);
            } else if let Some(chunk) = chunks.get_mut(&index) {
                chunk[within..within + n].fill(0);
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Runs of written chunks are mapped, the gaps between them holes.
    fn extent_at(&self, offset: u64) -> io::Result<Extent> {
        let size = self.size();
        if offset >= size {
            return Ok(Extent::Mapped(0));
        }
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let first = (offset / CHUNK) as usize;
        let end = if chunks.contains_key(&first) {
            // The first missing chunk after a run of written ones.
            let mut next = first;
            for &i in chunks.range(first..).map(|(i, _)| i) {
                if i != next {
                    break;
                }
                next += 1;
            }
            next
        } else {
            // The next written chunk, if any.
            chunks.range(first..).next().map_or(usize::MAX, |(&i, _)| i)
        };
        let len = (end as u64).saturating_mul(CHUNK).min(size) - offset;
        Ok(if chunks.contains_key(&first) {
            Extent::Mapped(len)
        } else {
            Extent::Deallocated(len)
        })
    }

    fn atomic_units(&self) -> Option<AtomicUnits> {
        self.atomic
    }

    /// Untorn: the copy happens under the image's write lock.
    fn write_atomic(&self, buf: &[u8], offset: u64, sync: bool) -> io::Result<()> {
        if self.atomic.is_none() {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        self.write_at(buf, offset)?;
        if sync {
            self.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_starts_as_one_hole_and_reads_zeros() {
        let m = MemoryBackstore::new(1 << 20);
        assert_eq!(m.extent_at(0).unwrap(), Extent::Deallocated(1 << 20));
        let mut buf = [1u8; 512];
        m.read_at(&mut buf, 4000).unwrap();
        assert_eq!(buf, [0u8; 512]);
    }

    #[test]
    fn writes_across_chunks_read_back_and_map_their_chunks() {
        let m = MemoryBackstore::new(1 << 20);
        let data: Vec<u8> = (0..10000u32).map(|i| (i % 253) as u8).collect();
        m.write_at(&data, 3000).unwrap();
        let mut back = vec![0u8; 10000];
        m.read_at(&mut back, 3000).unwrap();
        assert_eq!(back, data);
        assert_eq!(m.extent_at(0).unwrap(), Extent::Mapped(16384));
        assert_eq!(
            m.extent_at(16384).unwrap(),
            Extent::Deallocated((1 << 20) - 16384)
        );
    }

    #[test]
    fn a_terabyte_image_costs_what_is_written() {
        let m = MemoryBackstore::new(1 << 40);
        m.write_at(&[1u8; 512], (1 << 40) - 512).unwrap();
        assert_eq!(
            m.extent_at(4096).unwrap(),
            Extent::Deallocated((1 << 40) - 8192)
        );
        assert_eq!(m.extent_at((1 << 40) - 4096).unwrap(), Extent::Mapped(4096));
        assert_eq!(m.chunks.read().unwrap().len(), 1);
    }

    #[test]
    fn deallocate_makes_whole_chunks_holes_and_zeroes_the_edges() {
        let m = MemoryBackstore::new(1 << 20);
        m.write_at(&[5u8; 16384], 0).unwrap();
        m.deallocate(2048, 8192).unwrap();
        assert_eq!(m.extent_at(0).unwrap(), Extent::Mapped(4096));
        assert_eq!(m.extent_at(4096).unwrap(), Extent::Deallocated(4096));
        let mut back = vec![0u8; 16384];
        m.read_at(&mut back, 0).unwrap();
        assert!(back[..2048].iter().all(|&b| b == 5));
        assert!(back[2048..10240].iter().all(|&b| b == 0));
        assert!(back[10240..].iter().all(|&b| b == 5));
    }

    #[test]
    fn vectored_io_scatters_and_gathers_across_chunks() {
        let m = MemoryBackstore::new(1 << 20);
        let mut a = [1u8; 3000];
        let mut c = [2u8; 3000];
        let iov = crate::backstore::tests::iovecs(&mut a, &mut c);
        // SAFETY: the iovecs are two live local arrays.
        unsafe { m.vectored(true, &iov, 2048, false) }.unwrap();
        let mut back = [0u8; 6000];
        m.read_at(&mut back, 2048).unwrap();
        assert!(back[..3000].iter().all(|&b| b == 1));
        assert!(back[3000..].iter().all(|&b| b == 2));
        a.fill(0);
        c.fill(0);
        // SAFETY: as above.
        unsafe { m.vectored(false, &iov, 2048, false) }.unwrap();
        assert!(a.iter().all(|&b| b == 1) && c.iter().all(|&b| b == 2));
    }

    #[test]
    fn a_read_across_the_end_zero_fills_and_a_write_there_is_refused() {
        let m = MemoryBackstore::new(8192);
        m.write_at(&[3u8; 4096], 4096).unwrap();
        let mut back = [9u8; 8192];
        m.read_at(&mut back, 6144).unwrap();
        assert!(back[..2048].iter().all(|&b| b == 3));
        assert!(back[2048..].iter().all(|&b| b == 0));
        let e = m.write_at(&[1u8; 4096], 6144).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn a_fault_fails_only_its_operation_and_range() {
        let m = MemoryBackstore::new(1 << 20);
        m.fail(Fault::new(Op::Read, 8192..8704, libc::EIO));
        let mut buf = [0u8; 512];
        m.read_at(&mut buf, 0).unwrap();
        m.write_at(&buf, 8192).unwrap();
        let e = m.read_at(&mut buf, 8000).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        m.read_at(&mut buf, 8704).unwrap();
        m.heal();
        m.read_at(&mut buf, 8192).unwrap();
    }

    #[test]
    fn a_fault_given_times_is_spent_after_them() {
        let m = MemoryBackstore::new(1 << 20);
        m.fail(Fault::new(Op::Flush, 0..u64::MAX, libc::EIO).times(2));
        assert!(m.flush().is_err());
        assert!(m.flush().is_err());
        m.flush().unwrap();
        assert_eq!(m.counts(), (0, 0, 3));
    }

    #[test]
    fn a_synchronous_vectored_write_fails_when_the_flush_does() {
        let m = MemoryBackstore::new(1 << 20);
        m.fail(Fault::new(Op::Flush, 0..u64::MAX, libc::EIO));
        let mut a = [1u8; 512];
        let iov = [libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: a.len(),
        }];
        // SAFETY: the iovec is a live local array.
        let e = unsafe { m.vectored(true, &iov, 0, true) }.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        // SAFETY: as above.
        unsafe { m.vectored(true, &iov, 0, false) }.unwrap();
    }

    #[test]
    fn a_read_only_image_refuses_writes_and_deallocation() {
        let m = MemoryBackstore::new(1 << 20).read_only();
        assert!(m.write_at(&[0u8; 512], 0).is_err());
        assert!(m.deallocate(0, 4096).is_err());
        assert!(!m.can_deallocate() && !m.thin());
    }

    #[test]
    fn shrinking_drops_the_data_past_the_new_end() {
        let m = MemoryBackstore::new(1 << 20);
        m.write_at(&[4u8; 8192], 0).unwrap();
        m.resize(Some(6000)).unwrap();
        m.resize(Some(8192)).unwrap();
        let mut back = [9u8; 8192];
        m.read_at(&mut back, 0).unwrap();
        assert!(back[..6000].iter().all(|&b| b == 4));
        assert!(back[6000..].iter().all(|&b| b == 0));
    }
}
