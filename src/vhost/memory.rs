// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest memory as the front-end shares it (vhost-user.rst, "Memory
//! access"): regions of guest physical address space, each a shared
//! mapping of a file the front-end passed, and the front-end's own virtual
//! address for each (ring addresses arrive as front-end virtual addresses
//! and are translated to guest physical ones).

use std::fs::File;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::virtio::buffers::GuestMemory;

/// The flag a connection's mappings set when their file shrank under them.
pub type Owner = Arc<std::sync::atomic::AtomicBool>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Memory region of {size} bytes at guest address {gpa:#x} is empty or overflows")]
    BadRegion { gpa: u64, size: u64 },
    #[error("Memory regions overlap or are too many")]
    Layout,
    #[error("Cannot map a memory region of {size} bytes")]
    Map {
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("Memory region file is not a regular file of at least {end} bytes")]
    ShortFile { end: u64 },
    #[error("Cannot watch a memory region")]
    Watch(#[source] std::io::Error),
    #[error("No memory region holds front-end address {0:#x}")]
    NotMapped(u64),
}

/// Most regions accepted (QEMU uses at most a few dozen; GET_MAX_MEM_SLOTS
/// answers this).
pub const MAX_REGIONS: usize = 509;

/// One region: where it is for the guest and for the front-end.
#[derive(Clone)]
struct Region {
    gpa: u64,
    size: u64,
    user_addr: u64,
    mapped: Arc<GuestRegionMmap<()>>,
    /// The mapping is watched for its file shrinking (`sigbus`).
    _watch: Arc<super::sigbus::Guard>,
}

/// The regions of one connection.
#[derive(Clone, Default)]
pub struct MemoryTable {
    regions: Vec<Region>,
}

/// A region as a message describes it.
#[derive(Clone, Copy, Debug)]
pub struct RegionDesc {
    pub gpa: u64,
    pub size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
}

impl MemoryTable {
    /// Map a region from `file`, watched for its file shrinking (a fault
    /// there sets `owner`).
    fn map(desc: &RegionDesc, file: File, owner: &Owner) -> Result<Region, Error> {
        let bad = || Error::BadRegion {
            gpa: desc.gpa,
            size: desc.size,
        };
        if desc.size == 0
            || desc.gpa.checked_add(desc.size).is_none()
            || desc.user_addr.checked_add(desc.size).is_none()
        {
            return Err(bad());
        }
        let len = usize::try_from(desc.size).map_err(|_| bad())?;
        // Touching a mapping past the end of its file is SIGBUS: the file
        // must hold the whole region (memfd and hugetlbfs files are regular).
        let end = desc.mmap_offset.checked_add(desc.size).ok_or_else(bad)?;
        match file.metadata() {
            Ok(m) if m.is_file() && m.len() >= end => {}
            _ => return Err(Error::ShortFile { end }),
        }
        let mapping = MmapRegion::from_file(FileOffset::new(file, desc.mmap_offset), len).map_err(
            |source| Error::Map {
                size: desc.size,
                source,
            },
        )?;
        let mapped = GuestRegionMmap::new(mapping, GuestAddress(desc.gpa)).ok_or_else(bad)?;
        let watch = super::sigbus::watch(mapped.as_ptr(), len, owner).map_err(Error::Watch)?;
        Ok(Region {
            gpa: desc.gpa,
            size: desc.size,
            user_addr: desc.user_addr,
            mapped: Arc::new(mapped),
            _watch: Arc::new(watch),
        })
    }

    /// SET_MEM_TABLE: a whole new table.
    pub fn replace(
        descs: &[RegionDesc],
        files: Vec<File>,
        owner: &Owner,
    ) -> Result<MemoryTable, Error> {
        if descs.len() != files.len() || descs.len() > MAX_REGIONS {
            return Err(Error::Layout);
        }
        let mut t = MemoryTable::default();
        for (d, f) in descs.iter().zip(files) {
            t.regions.push(MemoryTable::map(d, f, owner)?);
        }
        t.check()?;
        Ok(t)
    }

    /// ADD_MEM_REG.
    pub fn add(&self, desc: &RegionDesc, file: File, owner: &Owner) -> Result<MemoryTable, Error> {
        if self.regions.len() >= MAX_REGIONS {
            return Err(Error::Layout);
        }
        let mut t = self.clone();
        t.regions.push(MemoryTable::map(desc, file, owner)?);
        t.check()?;
        Ok(t)
    }

    /// REM_MEM_REG: the region at `gpa` of `size` bytes.
    pub fn remove(&self, gpa: u64, size: u64) -> Result<MemoryTable, Error> {
        let mut t = self.clone();
        let before = t.regions.len();
        t.regions.retain(|r| !(r.gpa == gpa && r.size == size));
        if t.regions.len() == before {
            return Err(Error::BadRegion { gpa, size });
        }
        Ok(t)
    }

    /// Sorted, and no two regions overlap in either address space.
    fn check(&mut self) -> Result<(), Error> {
        self.regions.sort_by_key(|r| r.gpa);
        let overlap = |a: (u64, u64), b: (u64, u64)| a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
        for (i, a) in self.regions.iter().enumerate() {
            for b in self.regions.iter().skip(i + 1) {
                if overlap((a.gpa, a.size), (b.gpa, b.size))
                    || overlap((a.user_addr, a.size), (b.user_addr, b.size))
                {
                    return Err(Error::Layout);
                }
            }
        }
        Ok(())
    }

    /// The guest memory these regions make (empty with no region).
    pub fn guest_memory(&self) -> GuestMemory {
        let regions: Vec<_> = self.regions.iter().map(|r| r.mapped.clone()).collect();
        if regions.is_empty() {
            return GuestMemoryMmap::new();
        }
        // Sorted and without overlap (checked when built).
        GuestMemoryMmap::from_arc_regions(regions).unwrap_or_default()
    }

    /// The guest physical address of front-end virtual address `va`.
    pub fn to_guest(&self, va: u64) -> Result<u64, Error> {
        self.regions
            .iter()
            .find(|r| va >= r.user_addr && va - r.user_addr < r.size)
            .map(|r| r.gpa + (va - r.user_addr))
            .ok_or(Error::NotMapped(va))
    }

    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    fn file(len: u64) -> File {
        crate::vhost::log::tests::memfd(len)
    }

    fn owner() -> Owner {
        Owner::default()
    }

    fn desc(gpa: u64, size: u64, user_addr: u64) -> RegionDesc {
        RegionDesc {
            gpa,
            size,
            user_addr,
            mmap_offset: 0,
        }
    }

    #[test]
    fn front_end_addresses_translate_to_guest_addresses() {
        let t = MemoryTable::replace(
            &[
                desc(0, 0x10000, 0x7f00_0000),
                desc(0x100000, 0x10000, 0x7e00_0000),
            ],
            vec![file(0x10000), file(0x10000)],
            &owner(),
        )
        .unwrap();
        assert_eq!(t.to_guest(0x7f00_0010).unwrap(), 0x10);
        assert_eq!(t.to_guest(0x7e00_fff0).unwrap(), 0x10fff0);
        assert!(t.to_guest(0x7f01_0000).is_err());
        let m = t.guest_memory();
        assert_eq!(m.num_regions(), 2);
        m.write_obj(7u8, GuestAddress(0x100010)).unwrap();
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let r = MemoryTable::replace(
            &[
                desc(0, 0x10000, 0x1000_0000),
                desc(0x8000, 0x10000, 0x2000_0000),
            ],
            vec![file(0x10000), file(0x10000)],
            &owner(),
        );
        assert!(matches!(r, Err(Error::Layout)));
        let r = MemoryTable::replace(
            &[
                desc(0, 0x10000, 0x1000_0000),
                desc(0x20000, 0x10000, 0x1000_8000),
            ],
            vec![file(0x10000), file(0x10000)],
            &owner(),
        );
        assert!(matches!(r, Err(Error::Layout)));
    }

    #[test]
    fn empty_or_overflowing_regions_are_refused() {
        assert!(MemoryTable::replace(&[desc(0, 0, 0)], vec![file(4096)], &owner()).is_err());
        assert!(
            MemoryTable::replace(&[desc(u64::MAX - 10, 4096, 0)], vec![file(4096)], &owner())
                .is_err()
        );
        // A file shorter than its region.
        assert!(matches!(
            MemoryTable::replace(&[desc(0, 8192, 0)], vec![file(4096)], &owner()),
            Err(Error::ShortFile { end: 8192 })
        ));
        // More fds than regions.
        assert!(
            MemoryTable::replace(&[desc(0, 4096, 0)], vec![file(4096), file(4096)], &owner())
                .is_err()
        );
    }

    #[test]
    fn regions_come_and_go() {
        let t = MemoryTable::default()
            .add(&desc(0, 0x10000, 0x1000_0000), file(0x10000), &owner())
            .unwrap();
        let t = t
            .add(
                &desc(0x10000, 0x10000, 0x2000_0000),
                file(0x10000),
                &owner(),
            )
            .unwrap();
        assert_eq!(t.len(), 2);
        let t = t.remove(0, 0x10000).unwrap();
        assert_eq!(t.len(), 1);
        assert!(t.remove(0, 0x10000).is_err());
        assert!(t.to_guest(0x2000_0000).is_ok());
    }
}
