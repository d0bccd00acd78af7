// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Inflight I/O tracking (vhost-user.rst, "Inflight I/O tracking",
//! `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`), split virtqueues: a region the
//! back-end allocates (`GET_INFLIGHT_FD`), the front-end keeps and hands
//! back after the back-end restarted or crashed (`SET_INFLIGHT_FD`), in
//! which every request taken from the available ring is recorded until its
//! used element is published. Completions come out of order at depth, so
//! the rings alone cannot say which requests a dead back-end still owed;
//! the region can, and they are resubmitted, in the order they were taken,
//! none twice.
//!
//! Layout (the protocol's QueueRegionSplit, one per virtqueue, each padded
//! to 64 bytes; only this daemon reads it, but a new binary must read what
//! the old one wrote, so it is fixed here):
//!
//! ```text
//! le64 features (0) | le16 version (1) | le16 desc_num | le16 last_batch_head | le16 used_idx
//! desc_num x { u8 inflight, u8 padding[5], le16 next, le64 counter }
//! ```
//!
//! Taking head `i`: `desc[i].counter = counter++`, then `desc[i].inflight = 1`.
//! Completing it (a batch of one): `desc[i].next = last_batch_head`,
//! `last_batch_head = i`, the used element and index are written, then
//! `desc[i].inflight = 0` and `used_idx` = the ring's used index. A crash
//! between the used index and `used_idx` leaves them one apart: recovery
//! clears the last batch. `used_idx` is brought to the ring's used index
//! whenever a ring starts, so a fresh region never makes recovery clear a
//! request that is really in flight (SPDK's bug #3766: a region whose
//! `used_idx` stayed 0 while the ring's moved on, after a migration, lost the
//! request at ring index 0).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use log::warn;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestRegionMmap, MemoryRegionAddress, MmapRegion,
};

/// QueueRegionSplit header: features, version, desc_num, last_batch_head,
/// used_idx.
const HEADER: u64 = 16;
/// DescStateSplit.
const DESC: u64 = 16;
/// Each queue's region is padded to this.
const ALIGN: u64 = 64;
const VERSION: u16 = 1;

const OFF_VERSION: u64 = 8;
const OFF_DESC_NUM: u64 = 10;
const OFF_LAST_BATCH: u64 = 12;
const OFF_USED_IDX: u64 = 14;
/// Within a DescStateSplit.
const D_INFLIGHT: u64 = 0;
const D_NEXT: u64 = 6;
const D_COUNTER: u64 = 8;

/// Bytes one queue's region takes for `queue_size` descriptors.
pub fn queue_region_size(queue_size: u16) -> u64 {
    (HEADER + DESC * u64::from(queue_size)).next_multiple_of(ALIGN)
}

/// The shared region of one device: `num_queues` queue regions.
pub struct InflightRegion {
    map: GuestRegionMmap<()>,
    /// Watched for its file shrinking (`sigbus`), when the front-end
    /// handed it in.
    _watch: Option<super::sigbus::Guard>,
    num_queues: u16,
    queue_size: u16,
}

impl InflightRegion {
    /// GET_INFLIGHT_FD: a new region for `num_queues` queues of
    /// `queue_size`, every queue region initialised (version 1, nothing in
    /// flight); returns it and the descriptor to send.
    pub fn create(num_queues: u16, queue_size: u16) -> io::Result<(InflightRegion, File, u64)> {
        check(num_queues, queue_size)?;
        let size = queue_region_size(queue_size) * u64::from(num_queues);
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let fd = unsafe {
            libc::memfd_create(
                c"vhost-user-scsi-inflight".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        // Nobody may shrink it under a mapping (sigbus.rs).
        // SAFETY: fcntl on a memfd we own, no memory arguments.
        unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        let region = InflightRegion::map(file.try_clone()?, 0, size, num_queues, queue_size)?;
        for q in 0..num_queues {
            let base = u64::from(q) * queue_region_size(queue_size);
            region.put_u16(base + OFF_VERSION, VERSION)?;
            region.put_u16(base + OFF_DESC_NUM, queue_size)?;
        }
        Ok((region, file, size))
    }

    /// SET_INFLIGHT_FD: map the region the front-end hands back, after
    /// checking that it is as large as its description says it must be.
    pub fn open(
        file: File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
        owner: &super::memory::Owner,
    ) -> io::Result<InflightRegion> {
        check(num_queues, queue_size)?;
        let need = queue_region_size(queue_size) * u64::from(num_queues);
        if size < need {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("inflight region of {size} bytes, {need} needed"),
            ));
        }
        let actual = file.metadata()?.len();
        if offset.checked_add(need).is_none_or(|end| end > actual) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "inflight region beyond the end of its file",
            ));
        }
        let mut r = InflightRegion::map(file, offset, need, num_queues, queue_size)?;
        let len = usize::try_from(need).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        r._watch = Some(super::sigbus::watch(r.map.as_ptr(), len, owner)?);
        Ok(r)
    }

    fn map(
        file: File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> io::Result<InflightRegion> {
        let len = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mapping = MmapRegion::from_file(FileOffset::new(file, offset), len)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let map = GuestRegionMmap::new(mapping, GuestAddress(0))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(InflightRegion {
            map,
            _watch: None,
            num_queues,
            queue_size,
        })
    }

    /// The tracking state of queue `index`, if the region covers it.
    pub fn queue(self: &Arc<Self>, index: usize) -> Option<InflightQueue> {
        let q = u16::try_from(index).ok().filter(|&q| q < self.num_queues)?;
        Some(InflightQueue {
            region: self.clone(),
            base: u64::from(q) * queue_region_size(self.queue_size),
            size: self.queue_size,
            counter: 0,
        })
    }

    fn put_u16(&self, at: u64, v: u16) -> io::Result<()> {
        self.map
            .write_obj(v.to_le_bytes(), MemoryRegionAddress(at))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn get_u16(&self, at: u64) -> io::Result<u16> {
        self.map
            .read_obj::<[u8; 2]>(MemoryRegionAddress(at))
            .map(u16::from_le_bytes)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn put_u8(&self, at: u64, v: u8) -> io::Result<()> {
        self.map
            .write_obj(v, MemoryRegionAddress(at))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn get_u8(&self, at: u64) -> io::Result<u8> {
        self.map
            .read_obj::<u8>(MemoryRegionAddress(at))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn put_u64(&self, at: u64, v: u64) -> io::Result<()> {
        self.map
            .write_obj(v.to_le_bytes(), MemoryRegionAddress(at))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn get_u64(&self, at: u64) -> io::Result<u64> {
        self.map
            .read_obj::<[u8; 8]>(MemoryRegionAddress(at))
            .map(u64::from_le_bytes)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

fn check(num_queues: u16, queue_size: u16) -> io::Result<()> {
    if num_queues == 0 || queue_size == 0 || queue_size > 32768 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inflight region for {num_queues} queues of {queue_size}"),
        ));
    }
    Ok(())
}

/// One queue's part of the region.
pub struct InflightQueue {
    region: Arc<InflightRegion>,
    base: u64,
    size: u16,
    /// The next request's counter.
    counter: u64,
}

impl InflightQueue {
    fn desc(&self, head: u16, field: u64) -> u64 {
        self.base + HEADER + u64::from(head) * DESC + field
    }

    /// A request was taken from the available ring.
    pub fn fetched(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        let r = &self.region;
        let ok = r
            .put_u64(self.desc(head, D_COUNTER), self.counter)
            .and_then(|()| r.put_u8(self.desc(head, D_INFLIGHT), 1));
        if let Err(e) = ok {
            warn!("Inflight region: {e}");
        }
        self.counter += 1;
    }

    /// A request is about to be published in the used ring.
    pub fn completing(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        let r = &self.region;
        let ok = r
            .get_u16(self.base + OFF_LAST_BATCH)
            .and_then(|last| r.put_u16(self.desc(head, D_NEXT), last))
            .and_then(|()| r.put_u16(self.base + OFF_LAST_BATCH, head));
        if let Err(e) = ok {
            warn!("Inflight region: {e}");
        }
    }

    /// The request's used element and the used index `used_idx` are
    /// published.
    pub fn completed(&mut self, head: u16, used_idx: u16) {
        if head >= self.size {
            return;
        }
        let r = &self.region;
        let ok = r
            .put_u8(self.desc(head, D_INFLIGHT), 0)
            .and_then(|()| r.put_u16(self.base + OFF_USED_IDX, used_idx));
        if let Err(e) = ok {
            warn!("Inflight region: {e}");
        }
    }

    /// Whether nothing was ever recorded here: no descriptor taken, no
    /// batch, a used index of 0 (how GET_INFLIGHT_FD hands it out).
    fn untouched(&self) -> Option<bool> {
        let r = &self.region;
        if r.get_u16(self.base + OFF_USED_IDX).ok()? != 0
            || r.get_u16(self.base + OFF_LAST_BATCH).ok()? != 0
        {
            return Some(false);
        }
        for head in 0..self.size {
            if r.get_u8(self.desc(head, D_INFLIGHT)).ok()? != 0
                || r.get_u64(self.desc(head, D_COUNTER)).ok()? != 0
                || r.get_u16(self.desc(head, D_NEXT)).ok()? != 0
            {
                return Some(false);
            }
        }
        Some(true)
    }

    /// The ring starts with `ring_used_idx` in its used ring: undo a batch
    /// a crash left half-published, then return the requests still in
    /// flight, in the order they were taken. None if the region does not
    /// describe this queue (not initialised, another size, inconsistent).
    pub fn recover(&mut self, ring_used_idx: u16) -> Option<Vec<u16>> {
        let r = self.region.clone();
        let version = r.get_u16(self.base + OFF_VERSION).ok()?;
        let desc_num = r.get_u16(self.base + OFF_DESC_NUM).ok()?;
        if version != VERSION || desc_num != self.size {
            warn!(
                "Inflight region: queue records version {version} of {desc_num} descriptors, \
                 not {VERSION} of {}: ignored",
                self.size
            );
            return None;
        }
        let region_used = r.get_u16(self.base + OFF_USED_IDX).ok()?;
        let batch = ring_used_idx.wrapping_sub(region_used);
        if batch != 0 && self.untouched()? {
            // A region no ring has used yet (a migration's destination gets
            // a new one while the ring's used index is far along): there is
            // no batch to undo, and nothing in flight.
            r.put_u16(self.base + OFF_USED_IDX, ring_used_idx).ok()?;
            self.counter = 0;
            return Some(Vec::new());
        }
        if batch != 0 {
            if batch > self.size {
                warn!(
                    "Inflight region: used index {region_used}, ring's {ring_used_idx}: \
                     not a batch; nothing cleared"
                );
            } else {
                // The batch was published: its requests are done.
                let mut head = r.get_u16(self.base + OFF_LAST_BATCH).ok()?;
                for _ in 0..batch {
                    if head >= self.size {
                        break;
                    }
                    r.put_u8(self.desc(head, D_INFLIGHT), 0).ok()?;
                    head = r.get_u16(self.desc(head, D_NEXT)).ok()?;
                }
            }
        }
        r.put_u16(self.base + OFF_USED_IDX, ring_used_idx).ok()?;
        let mut pending = Vec::new();
        let mut max_counter = None;
        for head in 0..self.size {
            if r.get_u8(self.desc(head, D_INFLIGHT)).ok()? == 1 {
                let c = r.get_u64(self.desc(head, D_COUNTER)).ok()?;
                max_counter = max_counter.max(Some(c));
                pending.push((c, head));
            }
        }
        pending.sort_unstable();
        self.counter = max_counter.map_or(0, |c| c.wrapping_add(1));
        Some(pending.into_iter().map(|(_, h)| h).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(queues: u16, size: u16) -> (Arc<InflightRegion>, File, u64) {
        let (r, f, len) = InflightRegion::create(queues, size).unwrap();
        (Arc::new(r), f, len)
    }

    /// What a new process finds: the same memfd, mapped again.
    fn reopen(f: &File, len: u64, queues: u16, size: u16) -> Arc<InflightRegion> {
        Arc::new(
            InflightRegion::open(
                f.try_clone().unwrap(),
                0,
                len,
                queues,
                size,
                &Default::default(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn regions_are_padded_to_64_bytes() {
        assert_eq!(queue_region_size(1), 64);
        assert_eq!(queue_region_size(128), 16 + 128 * 16 + 48);
        assert_eq!(queue_region_size(1024) % 64, 0);
    }

    #[test]
    fn out_of_order_completions_leave_exactly_the_rest_to_resubmit_in_order() {
        let (r, f, len) = fresh(3, 8);
        let mut q = r.queue(2).unwrap();
        assert_eq!(q.recover(0), Some(vec![]));
        for head in [5, 0, 3, 7] {
            q.fetched(head);
        }
        // 3 completes first, then 5: used index 2.
        for (head, used) in [(3, 1), (5, 2)] {
            q.completing(head);
            q.completed(head, used);
        }
        let mut after = reopen(&f, len, 3, 8).queue(2).unwrap();
        assert_eq!(after.recover(2), Some(vec![0, 7]));
        // Counters continue after the highest taken.
        assert_eq!(after.counter, 4);
    }

    #[test]
    fn a_crash_after_the_used_index_moved_clears_the_last_batch() {
        let (r, f, len) = fresh(1, 8);
        let mut q = r.queue(0).unwrap();
        q.recover(0);
        q.fetched(1);
        q.fetched(2);
        q.completing(2);
        // Used element and index published (ring idx 1), then the crash.
        let mut after = reopen(&f, len, 1, 8).queue(0).unwrap();
        assert_eq!(after.recover(1), Some(vec![1]));
    }

    #[test]
    fn a_crash_before_the_used_index_moved_resubmits_the_request() {
        let (r, f, len) = fresh(1, 8);
        let mut q = r.queue(0).unwrap();
        q.recover(0);
        q.fetched(4);
        q.completing(4);
        let mut after = reopen(&f, len, 1, 8).queue(0).unwrap();
        assert_eq!(after.recover(0), Some(vec![4]));
    }

    /// SPDK #3766: after a migration the ring's used index is far from the
    /// fresh region's 0; a request taken (at ring index 0) and not
    /// completed before a crash must still be resubmitted.
    #[test]
    fn a_request_at_index_0_survives_a_crash_on_a_fresh_region_after_migration() {
        let (r, f, len) = fresh(1, 8);
        let mut q = r.queue(0).unwrap();
        // The ring starts with 500 requests already used at the source.
        assert_eq!(q.recover(500), Some(vec![]));
        q.fetched(0);
        let mut after = reopen(&f, len, 1, 8).queue(0).unwrap();
        assert_eq!(after.recover(500), Some(vec![0]));
    }

    #[test]
    fn a_region_of_another_queue_size_is_ignored() {
        let (_r, f, len) = fresh(1, 8);
        let o = Default::default();
        assert!(InflightRegion::open(f.try_clone().unwrap(), 0, len, 1, 16, &o).is_err());
        let big = queue_region_size(16);
        let f = crate::vhost::log::tests::memfd(big);
        let r = Arc::new(InflightRegion::open(f, 0, big, 1, 16, &o).unwrap());
        assert_eq!(r.queue(0).unwrap().recover(0), None);
    }

    #[test]
    fn a_region_smaller_than_its_description_is_refused() {
        let (_r, f, len) = fresh(2, 8);
        let o = Default::default();
        assert!(InflightRegion::open(f.try_clone().unwrap(), 0, len - 1, 2, 8, &o).is_err());
        assert!(InflightRegion::open(f.try_clone().unwrap(), 64, len, 2, 8, &o).is_err());
        assert!(InflightRegion::open(f, 0, len, 0, 8, &o).is_err());
    }

    #[test]
    fn a_corrupt_used_index_clears_nothing() {
        let (r, f, len) = fresh(1, 8);
        let mut q = r.queue(0).unwrap();
        q.recover(0);
        q.fetched(3);
        let mut after = reopen(&f, len, 1, 8).queue(0).unwrap();
        // 1000 apart: no batch is that large.
        assert_eq!(after.recover(1000), Some(vec![3]));
    }
}
