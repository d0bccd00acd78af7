// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The buffers of one descriptor chain, split into the device-readable and
//! device-writable parts (virtio 2.7.4: readable descriptors come first), with
//! bounds-checked copies and host iovecs for zero-copy I/O. Addresses come
//! from the guest and are only trusted after guest memory has resolved them.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest memory as the daemon maps it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Most descriptors we accept in one chain: bounds the work a single
/// request can cause (Linux uses at most seg_max + 2 = 128).
pub const MAX_DESCRIPTORS: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("Device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("Descriptor chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("Access of {len} bytes at offset {offset} is outside the {total}-byte buffer")]
    OutOfBounds { offset: u64, len: u64, total: u64 },
    #[error("Guest address {0:#x} is not in guest memory")]
    BadAddress(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    addr: u64,
    len: u32,
}

/// One direction's buffer: a list of guest regions.
#[derive(Clone, Debug, Default)]
pub struct Buffer {
    regions: Vec<Region>,
    len: u64,
}

impl Buffer {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A buffer made of these (address, length) guest regions.
    #[cfg(test)]
    pub(crate) fn from_regions(regions: &[(u64, u32)]) -> Buffer {
        let mut b = Buffer::default();
        for &(a, l) in regions {
            b.push(a, l);
        }
        b
    }

    /// The guest address ranges of this buffer, (address, length), in order.
    pub fn regions(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.regions.iter().map(|r| (r.addr, r.len))
    }

    fn push(&mut self, addr: u64, len: u32) {
        if len > 0 {
            self.regions.push(Region { addr, len });
            self.len += u64::from(len);
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                total: self.len,
            }),
        }
    }

    /// Visit the guest address ranges covering `offset..offset + len`.
    fn for_each_range(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.check(offset, len)?;
        let mut skip = offset;
        let mut left = len;
        let mut done = 0usize;
        for r in &self.regions {
            if left == 0 {
                break;
            }
            let rlen = u64::from(r.len);
            if skip >= rlen {
                skip -= rlen;
                continue;
            }
            let n = (rlen - skip).min(left);
            let addr = r.addr.checked_add(skip).ok_or(Error::BadAddress(r.addr))?;
            f(GuestAddress(addr), n as usize, done)?;
            done += n as usize;
            left -= n;
            skip = 0;
        }
        Ok(())
    }

    /// Copy guest bytes at `offset` into `buf`.
    pub fn read_at(&self, mem: &GuestMemory, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let total = buf.len() as u64;
        self.for_each_range(offset, total, |addr, n, done| {
            let part = buf.get_mut(done..done + n).ok_or(Error::OutOfBounds {
                offset,
                len: total,
                total: self.len,
            })?;
            mem.read_slice(part, addr)
                .map_err(|_| Error::BadAddress(addr.0))
        })
    }

    /// Copy `buf` into guest memory at `offset`.
    pub fn write_at(&self, mem: &GuestMemory, offset: u64, buf: &[u8]) -> Result<(), Error> {
        let total = buf.len() as u64;
        self.for_each_range(offset, total, |addr, n, done| {
            let part = buf.get(done..done + n).ok_or(Error::OutOfBounds {
                offset,
                len: total,
                total: self.len,
            })?;
            mem.write_slice(part, addr)
                .map_err(|_| Error::BadAddress(addr.0))
        })
    }

    /// Zero `len` guest bytes at `offset`.
    pub fn fill_zero(&self, mem: &GuestMemory, offset: u64, len: u64) -> Result<(), Error> {
        static ZEROS: [u8; 65536] = [0; 65536];
        self.for_each_range(offset, len, |addr, n, _| {
            let mut done = 0usize;
            while done < n {
                let k = (n - done).min(ZEROS.len());
                let a = GuestAddress(addr.0 + done as u64);
                #[allow(clippy::indexing_slicing)] // k is at most ZEROS.len()
                let zeros = &ZEROS[..k];
                mem.write_slice(zeros, a)
                    .map_err(|_| Error::BadAddress(a.0))?;
                done += k;
            }
            Ok(())
        })
    }

    /// Host iovecs for `offset..offset + len`. They stay valid while `mem`
    /// (the mapping it came from) is alive.
    pub fn iovecs(
        &self,
        mem: &GuestMemory,
        offset: u64,
        len: u64,
    ) -> Result<Vec<libc::iovec>, Error> {
        let mut v = Vec::with_capacity(self.regions.len());
        self.for_each_range(offset, len, |addr, n, _| {
            for slice in GuestMemoryBackend::get_slices(mem, addr, n) {
                let slice = slice.map_err(|_| Error::BadAddress(addr.0))?;
                v.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
            Ok(())
        })?;
        Ok(v)
    }
}

/// A descriptor chain's buffers.
#[derive(Clone, Debug, Default)]
pub struct ChainBuffers {
    pub readable: Buffer,
    pub writable: Buffer,
}

impl ChainBuffers {
    /// Add one descriptor's buffer, enforcing readable-before-writable
    /// (virtio 1.2, 2.7.4.2).
    pub fn push(&mut self, addr: u64, len: u32, write: bool) -> Result<(), Error> {
        if write {
            self.writable.push(addr, len);
        } else {
            if !self.writable.regions.is_empty() {
                return Err(Error::ReadableAfterWritable);
            }
            self.readable.push(addr, len);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn buffer(regions: &[(u64, u32)]) -> Buffer {
        Buffer::from_regions(regions)
    }

    #[test]
    fn read_spans_regions_in_order() {
        let m = mem();
        m.write_slice(&[1, 2, 3], GuestAddress(0x100)).unwrap();
        m.write_slice(&[4, 5], GuestAddress(0x800)).unwrap();
        let b = buffer(&[(0x100, 3), (0x800, 2)]);
        let mut out = [0u8; 4];
        b.read_at(&m, 1, &mut out).unwrap();
        assert_eq!(out, [2, 3, 4, 5]);
    }

    #[test]
    fn access_past_buffer_end_is_an_error() {
        let b = buffer(&[(0x100, 8)]);
        let mut out = [0u8; 9];
        assert!(matches!(
            b.read_at(&mem(), 0, &mut out),
            Err(Error::OutOfBounds { .. })
        ));
    }

    #[test]
    fn address_outside_guest_memory_is_an_error() {
        let b = buffer(&[(0xfff0, 0x100)]);
        assert!(matches!(
            b.write_at(&mem(), 0, &[0u8; 0x100]),
            Err(Error::BadAddress(_))
        ));
        assert!(b.iovecs(&mem(), 0, 0x100).is_err());
    }

    #[test]
    fn iovecs_cover_exactly_the_requested_range() {
        let m = mem();
        let b = buffer(&[(0x100, 16), (0x1000, 32)]);
        let v = b.iovecs(&m, 8, 24).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].iov_len + v[1].iov_len, 24);
    }
}
