// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! No storage: reads are zeros, writes vanish. For measuring the transport
//! alone (`--lun null,size=...`).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backstore, Kind, Route};

#[derive(Debug)]
pub struct NullBackstore {
    size: AtomicU64,
}

impl NullBackstore {
    /// A null backstore of `size` bytes.
    pub fn new(size: u64) -> NullBackstore {
        NullBackstore {
            size: AtomicU64::new(size),
        }
    }
}

impl Backstore for NullBackstore {
    fn kind(&self) -> Kind {
        Kind::Null
    }

    fn path(&self) -> &Path {
        Path::new("null")
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Takes any size it is given.
    fn resize(&self, bytes: Option<u64>) -> io::Result<u64> {
        if let Some(b) = bytes {
            self.size.store(b, Ordering::Relaxed);
        }
        Ok(self.size())
    }

    fn read_only(&self) -> bool {
        false
    }

    fn route(&self) -> Route {
        Route::Discard
    }

    /// Zero-fills reads; drops writes.
    unsafe fn vectored(
        &self,
        write: bool,
        iovecs: &[libc::iovec],
        _offset: u64,
        _sync: bool,
    ) -> io::Result<()> {
        if !write {
            for v in iovecs {
                // SAFETY: each iovec is valid for writes of iov_len bytes
                // (this function's contract).
                unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
            }
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Nothing is ever allocated, so nothing is deallocated either: the
    /// logical unit offers no UNMAP.
    fn can_deallocate(&self) -> bool {
        false
    }

    fn thin(&self) -> bool {
        false
    }

    fn deallocate(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// Dropped, as any write: every size is untorn.
    fn write_atomic(&self, _buf: &[u8], _offset: u64, _sync: bool) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_backstore_reads_zeros_and_drops_writes() {
        let b = NullBackstore::new(1 << 30);
        b.write_at(&[0xff; 512], 0).unwrap();
        let mut buf = [1u8; 512];
        b.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0u8; 512]);
        assert_eq!(b.size(), 1 << 30);
        assert!(!b.can_deallocate());
        let mut v = [1u8; 100];
        let iov = [libc::iovec {
            iov_base: v.as_mut_ptr().cast(),
            iov_len: v.len(),
        }];
        // SAFETY: the iovec is a live local array.
        unsafe { b.vectored(false, &iov, 0, false) }.unwrap();
        assert_eq!(v, [0u8; 100]);
    }

    #[test]
    fn a_null_backstore_takes_any_size() {
        let b = NullBackstore::new(4096);
        assert_eq!(b.resize(Some(1 << 40)).unwrap(), 1 << 40);
        assert_eq!(b.resize(None).unwrap(), 1 << 40);
    }
}
