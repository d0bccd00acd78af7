// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The front-end's messages (vhost-user.rst, "Front-end message types"),
//! as the `vhost` crate decodes them: features, guest memory, ring set-up
//! and state, the dirty log and the inflight region. Anything malformed or
//! out of range is an error, which ends the connection (the front-end can
//! only resend the whole set-up after that).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use log::{debug, info, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::VhostUserBackendReqHandlerMut;
use vhost::vhost_user::{Backend as BackendChannel, Error, GpuBackend, Result};
use vhost::VhostUserMemoryRegionBase;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::GuestMemoryAtomic;

use super::inflight::InflightRegion;
use super::memory::{MemoryTable, RegionDesc, MAX_REGIONS};
use super::{Backend, Rings, Vring};

/// The protocol features this back-end implements. REPLY_ACK is added by
/// the `vhost` crate. Not CONFIG: QEMU builds the virtio-scsi config space
/// itself (and warns if a back-end offers it).
fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE
}

pub(super) struct Handler<B: Backend> {
    rings: Arc<Rings>,
    backend: Arc<B>,
    /// Each worker thread's epoll set, and the thread of each queue.
    epolls: Vec<RawFd>,
    queue_thread: Vec<usize>,
    table: MemoryTable,
    acked: u64,
    /// The kick descriptor registered for each queue.
    watched: Vec<Option<RawFd>>,
}

fn invalid(what: &'static str) -> Error {
    Error::InvalidOperation(what)
}

fn io_err(e: impl std::fmt::Display) -> Error {
    Error::ReqHandlerError(std::io::Error::other(e.to_string()))
}

impl<B: Backend> Handler<B> {
    pub(super) fn new(
        rings: Arc<Rings>,
        backend: Arc<B>,
        epolls: Vec<RawFd>,
        queue_thread: Vec<usize>,
    ) -> Handler<B> {
        let n = rings.vrings.len();
        Handler {
            rings,
            backend,
            epolls,
            queue_thread,
            table: MemoryTable::default(),
            acked: 0,
            watched: vec![None; n],
        }
    }

    fn vring(&self, index: u32) -> Result<&Vring> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.rings.vrings.get(i))
            .ok_or(Error::InvalidParam)
    }

    fn offered(&self) -> u64 {
        self.backend.features()
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits()
    }

    fn epoll_ctl(&self, queue: usize, op: libc::c_int, fd: RawFd) -> std::io::Result<()> {
        let epfd = self
            .queue_thread
            .get(queue)
            .and_then(|&t| self.epolls.get(t))
            .copied()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: queue as u64,
        };
        // SAFETY: epoll_ctl on the worker's epoll set with a live event.
        if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stop watching queue `q`'s kick descriptor.
    fn unwatch(&mut self, q: usize) {
        if let Some(fd) = self.watched.get_mut(q).and_then(Option::take) {
            let _ = self.epoll_ctl(q, libc::EPOLL_CTL_DEL, fd);
        }
    }

    /// Stop ring `q` and wait until every request taken from it has been
    /// returned (GET_VRING_BASE, or the connection ending).
    fn stop(&mut self, q: usize) {
        let Some(vring) = self.rings.vrings.get(q).cloned() else {
            return;
        };
        self.unwatch(q);
        vring.stop();
        // A round that already took requests hands them to the device...
        drop(vring.round());
        // ...which completes them.
        self.backend.stop_queue(q);
    }

    /// Every ring stops (the connection ends).
    pub(super) fn stop_all(&mut self) {
        for q in 0..self.rings.vrings.len() {
            self.stop(q);
        }
        self.backend.reset();
    }

    fn set_memory(&mut self, table: MemoryTable) {
        let mem = table.guest_memory();
        let old = std::mem::replace(&mut self.table, table);
        self.rings
            .old_tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(old);
        let atomic: &GuestMemoryAtomic<_> = &self.rings.mem;
        match atomic.lock() {
            Ok(guard) => guard.replace(mem),
            Err(_) => warn!("Guest memory lock poisoned; memory table not replaced"),
        }
    }

    fn region_desc(r: &VhostUserMemoryRegion) -> RegionDesc {
        RegionDesc {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            user_addr: r.user_addr,
            mmap_offset: r.mmap_offset,
        }
    }
}

impl<B: Backend> VhostUserBackendReqHandlerMut for Handler<B> {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        // Deprecated; treated as a device reset (vhost-user.rst).
        self.reset_device()
    }

    fn reset_device(&mut self) -> Result<()> {
        self.stop_all();
        for v in &self.rings.vrings {
            v.reset();
        }
        self.acked = 0;
        self.rings.log.set_wanted(false);
        info!("Device reset by the front-end");
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.offered())
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !self.offered() != 0 {
            return Err(Error::InvalidParam);
        }
        let was_logging = self.acked & VhostUserVirtioFeatures::LOG_ALL.bits() != 0;
        self.acked = features;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for v in &self.rings.vrings {
            v.set_event_idx(event_idx);
        }
        // Without PROTOCOL_FEATURES rings start enabled (vhost-user.rst,
        // "Ring states").
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for v in &self.rings.vrings {
                v.set_enabled(true);
            }
        }
        let logging = features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0;
        self.rings.log.set_wanted(logging);
        if logging != was_logging {
            info!(
                "Dirty page logging {}",
                if logging {
                    "started (live migration)"
                } else {
                    "stopped"
                }
            );
        }
        self.backend.acked_features(features);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        let descs: Vec<RegionDesc> = ctx.iter().map(Self::region_desc).collect();
        let table = MemoryTable::replace(&descs, files, &self.rings.poisoned).map_err(io_err)?;
        debug!("Guest memory: {} region(s)", table.len());
        self.set_memory(table);
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let v = self.vring(index)?;
        let size = u16::try_from(num).map_err(|_| Error::InvalidParam)?;
        if size == 0 || !size.is_power_of_two() || size > v.max_size() {
            return Err(Error::InvalidParam);
        }
        v.set_size(size).map_err(io_err)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> Result<()> {
        let v = self.vring(index)?;
        let t = &self.table;
        let desc = t.to_guest(descriptor).map_err(io_err)?;
        let avail = t.to_guest(available).map_err(io_err)?;
        let used = t.to_guest(used).map_err(io_err)?;
        let used_log = flags
            .contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG)
            .then_some(log);
        v.set_addresses(desc, avail, used, used_log).map_err(io_err)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        let v = self.vring(index)?;
        let base = u16::try_from(base).map_err(|_| Error::InvalidParam)?;
        v.set_base(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        let q = usize::try_from(index).map_err(|_| Error::InvalidParam)?;
        self.vring(index)?;
        self.stop(q);
        let base = self.vring(index)?.base();
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let q = usize::from(index);
        let v = self.vring(u32::from(index))?.clone();
        let Some(file) = fd else {
            // Polling instead of kicks is not offered.
            return Err(invalid("a ring without a kick eventfd"));
        };
        // Our kick reads must never block the thread.
        // SAFETY: fcntl on a descriptor we own, no memory arguments.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
        self.unwatch(q);
        let fd = v.start(Some(file)).map_err(io_err)?;
        if let Some(fd) = fd {
            self.epoll_ctl(q, libc::EPOLL_CTL_ADD, fd)
                .map_err(Error::ReqHandlerError)?;
            if let Some(slot) = self.watched.get_mut(q) {
                *slot = Some(fd);
            }
        }
        self.backend.queue_started(q);
        // Requests may already be waiting (after a reconnection or a
        // migration): look at the ring now.
        v.poke();
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.vring(u32::from(index))?.set_call(fd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.vring(u32::from(index))?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        let known = protocol_features() | VhostUserProtocolFeatures::REPLY_ACK;
        if features & !known.bits() != 0 {
            return Err(Error::InvalidParam);
        }
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.rings.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        let v = self.vring(index)?;
        v.set_enabled(enable);
        if enable {
            v.poke();
        }
        Ok(())
    }

    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>> {
        Err(invalid("no config space"))
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> Result<()> {
        Err(invalid("no config space"))
    }

    fn set_backend_req_fd(&mut self, _backend: BackendChannel) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(invalid("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(invalid("no shared objects"))
    }

    fn get_inflight_fd(&mut self, msg: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        let (_region, file, size) = InflightRegion::create(msg.num_queues, msg.queue_size)
            .map_err(Error::ReqHandlerError)?;
        debug!(
            "Inflight region for {} queues of {}: {size} bytes",
            msg.num_queues, msg.queue_size
        );
        Ok((
            VhostUserInflight {
                mmap_size: size,
                mmap_offset: 0,
                num_queues: msg.num_queues,
                queue_size: msg.queue_size,
            },
            file,
        ))
    }

    fn set_inflight_fd(&mut self, msg: &VhostUserInflight, file: File) -> Result<()> {
        let region = Arc::new(
            InflightRegion::open(
                file,
                msg.mmap_offset,
                msg.mmap_size,
                msg.num_queues,
                msg.queue_size,
                &self.rings.poisoned,
            )
            .map_err(Error::ReqHandlerError)?,
        );
        for (q, v) in self.rings.vrings.iter().enumerate() {
            v.set_inflight(region.queue(q));
        }
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_REGIONS as u64)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        let table = self
            .table
            .add(&Self::region_desc(region), fd, &self.rings.poisoned)
            .map_err(io_err)?;
        self.set_memory(table);
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Result<()> {
        let table = self
            .table
            .remove(region.guest_phys_addr, region.memory_size)
            .map_err(io_err)?;
        self.set_memory(table);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(invalid("no device state transfer"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(invalid("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(invalid("no shared memory regions"))
    }

    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> Result<()> {
        self.rings
            .log
            .set_base(&file, log.mmap_offset, log.mmap_size, &self.rings.poisoned)
            .map_err(Error::ReqHandlerError)?;
        debug!("Dirty log: {} bytes", log.mmap_size);
        Ok(())
    }
}
