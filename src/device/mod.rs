// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user-scsi device: a `VhostUserBackend` serving one controller
//! connection. Thread 0 serves the control and event queues; each request
//! queue has its own worker thread with its own io_uring.

pub mod coalesce;
mod control;
mod engine;
mod events;
mod inflight;
mod request;
mod sink;
#[cfg(test)]
mod tests;
mod vring;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use crate::iscsi::client::{Client, Receiver};
use crate::scsi::{AbortHook, LunAddress, Nexus, Target};
use crate::virtio::buffers::GuestMemory;
use crate::virtio::Response;
use crate::virtio::{
    CONTROL_QUEUE, EVENT_QUEUE, FIRST_REQUEST_QUEUE, VIRTIO_SCSI_F_CHANGE, VIRTIO_SCSI_F_HOTPLUG,
};
use inflight::Scope;

use inflight::Inflight;
use request::Worker;

/// Descriptors per virtqueue we accept (QEMU's virtqueue_size maximum).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Request queues offered by default: enough for QEMU's num_queues up to 16.
pub const DEFAULT_REQUEST_QUEUES: usize = 16;
/// How many malformed requests per connection are logged at warn level
/// before the rest go to debug (a misbehaving guest must not flood the log).
const WARN_LIMIT: u32 = 16;

pub use vring::Vring;

/// One controller as configured: its target (LUNs) and its nexus identity,
/// which stays the same across connections.
pub struct Controller {
    pub name: String,
    pub target: Target,
    pub nexus: Nexus,
    pub request_queues: usize,
    /// How the request queues' notifications are coalesced.
    pub coalesce: coalesce::Policy,
    /// LUNs served by iSCSI sessions (passed through unchanged).
    pub remote: std::collections::BTreeMap<u16, RemoteLun>,
}

/// A LUN on an iSCSI target, reached through this controller's session.
pub struct RemoteLun {
    pub client: Client,
    /// The LUN field as the target knows it (SAM-5 single level).
    pub lun: [u8; 8],
}

/// The backend for one connection. Cloned into every worker thread.
#[derive(Clone)]
pub struct ScsiBackend {
    inner: Arc<Inner>,
}

struct Inner {
    controller: Arc<Controller>,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemory>>>,
    event_idx: AtomicBool,
    workers: Vec<Mutex<Worker>>,
    inflight: Inflight,
    coalesce: coalesce::Coalesce,
    /// Each request queue's vring, once its worker has seen it (to send a
    /// coalesced notification when the queue stops).
    request_vrings: Vec<std::sync::OnceLock<Vring>>,
    guest_errors: AtomicU32,
    /// Bytes of commands in flight to iSCSI targets (data-out + data-in).
    remote_budget: request::Budget,
    /// The controller's iSCSI sessions (one entry per session).
    sessions: Vec<Client>,
    /// Sessions whose answers the request-queue workers receive.
    receivers: Mutex<Vec<Receiver>>,
    /// The event queue, once thread 0 has seen it.
    event_vring: Mutex<Option<Vring>>,
    /// An event found no buffer: the next one says so.
    events_missed: AtomicBool,
    /// The driver accepted VIRTIO_SCSI_F_CHANGE (parameter change events).
    change_events: AtomicBool,
    /// The worker threads' exit eventfds (see `exit_event`).
    exit_consumers: Mutex<Vec<OwnedFd>>,
}

impl ScsiBackend {
    pub fn new(controller: Arc<Controller>) -> io::Result<ScsiBackend> {
        let n = controller.request_queues;
        let mut sessions: Vec<Client> = Vec::new();
        for r in controller.remote.values() {
            if !sessions.iter().any(|c| c.same_session(&r.client)) {
                sessions.push(r.client.clone());
            }
        }
        let workers = (0..n)
            .map(|i| Worker::new(i).map(Mutex::new))
            .collect::<io::Result<Vec<_>>>()?;
        let coalesce = coalesce::Coalesce::new(controller.coalesce, n)?;
        Ok(ScsiBackend {
            inner: Arc::new(Inner {
                controller,
                mem: RwLock::new(None),
                event_idx: AtomicBool::new(false),
                workers,
                inflight: Inflight::new(n),
                coalesce,
                request_vrings: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
                guest_errors: AtomicU32::new(0),
                remote_budget: request::Budget::default(),
                sessions,
                receivers: Mutex::new(Vec::new()),
                event_vring: Mutex::new(None),
                events_missed: AtomicBool::new(false),
                change_events: AtomicBool::new(false),
                exit_consumers: Mutex::new(Vec::new()),
            }),
        })
    }

    fn total_queues(&self) -> usize {
        FIRST_REQUEST_QUEUE + self.inner.controller.request_queues
    }

    /// The epoll event id under which a worker's io_uring completions are
    /// reported: above the queue indices and the exit event (`total_queues`).
    fn completion_event(&self) -> u64 {
        (self.total_queues() + 1) as u64
    }

    /// The epoll event id of a worker's notification timer.
    fn timer_event(&self) -> u64 {
        self.completion_event() + 1
    }

    /// The epoll event id of the controller's first iSCSI session.
    fn first_session_event(&self) -> u64 {
        self.completion_event() + 2
    }

    /// (thread index, fd, event id) of every worker's completion eventfd
    /// and notification timer, for registration with the worker threads'
    /// epoll loops.
    pub fn completion_listeners(&self) -> Vec<(usize, i32, u64)> {
        let mut v = Vec::new();
        for i in 0..self.inner.workers.len() {
            v.push((1 + i, self.worker(i).eventfd_raw(), self.completion_event()));
            if let Some(fd) = self.inner.coalesce.timer_fd(i) {
                v.push((1 + i, fd, self.timer_event()));
            }
        }
        v
    }

    /// (thread index, fd, event id) for every iSCSI session of the
    /// controller: the request-queue worker that receives its answers (one
    /// per session, spread over the workers), so a command's answer is
    /// handled without waking another thread.
    pub fn session_listeners(&self) -> Vec<(usize, i32, u64)> {
        let first = self.first_session_event();
        let workers = self.inner.workers.len().max(1);
        self.inner
            .sessions
            .iter()
            .enumerate()
            .map(|(j, c)| (1 + j % workers, c.receive_fd(), first + j as u64))
            .collect()
    }

    /// The worker watching session event `id` (from `session_listeners`) is
    /// registered: it receives for that session from now on.
    pub fn attach_session(&self, id: u64) {
        let Some(j) = id.checked_sub(self.first_session_event()) else {
            return;
        };
        if let Some(c) = self.inner.sessions.get(j as usize) {
            let r = c.attach_receiver();
            self.receivers().push(r);
        }
    }

    /// Hand receiving back to the sessions' own threads (the workers are
    /// about to stop), and stop posting their events.
    pub fn detach_sessions(&self) {
        self.receivers().clear();
        for c in &self.inner.sessions {
            c.set_event_hook(None);
        }
    }

    fn receivers(&self) -> MutexGuard<'_, Vec<Receiver>> {
        self.inner
            .receivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn worker(&self, i: usize) -> MutexGuard<'_, Worker> {
        self.inner.workers[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Snapshot of guest memory, if the frontend has sent a memory table.
    fn memory(&self) -> Option<Arc<GuestMemory>> {
        let m = self.inner.mem.read().unwrap_or_else(|e| e.into_inner());
        m.as_ref().map(|a| a.memory().into_inner())
    }

    /// Log a guest protocol error: warn for the first few, then debug.
    fn guest_error(&self, what: std::fmt::Arguments) {
        let n = self.inner.guest_errors.fetch_add(1, Ordering::Relaxed);
        let name = &self.inner.controller.name;
        if n < WARN_LIMIT {
            warn!("{name}: {what}");
        } else if n == WARN_LIMIT {
            warn!("{name}: {what} (further guest errors logged at debug level)");
        } else {
            debug!("{name}: {what}");
        }
    }

    /// Attach this connection's nexus to every LU of the target, with hooks
    /// that abort its commands (for PREEMPT AND ABORT from other nexuses).
    pub fn attach(&self) {
        let c = &self.inner.controller;
        let weak = Arc::downgrade(&self.inner);
        c.target.attach(&c.nexus, |lun| {
            let weak = weak.clone();
            let hook: AbortHook = Arc::new(move || {
                if let Some(inner) = weak.upgrade() {
                    inner
                        .inflight
                        .abort_and_wait(Scope::Lun(LunAddress::Lun(lun)), Response::Aborted);
                }
            });
            Some(hook)
        });
        // Asynchronous events from the iSCSI targets become parameter
        // change events for the guest (besides their unit attention).
        for (j, client) in self.inner.sessions.iter().enumerate() {
            let weak = Arc::downgrade(&self.inner);
            client.set_event_hook(Some(Arc::new(move |lun, sense| {
                if let Some(inner) = weak.upgrade() {
                    ScsiBackend { inner }.remote_event(j, lun, sense);
                }
            })));
        }
    }

    /// Wait until every accepted request has completed.
    pub fn quiesce(&self) {
        self.inner.inflight.drain(None);
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.inner.controller
    }
}

impl ScsiBackend {
    fn request_vring(&self, queue: usize) -> Option<&Vring> {
        self.inner.request_vrings.get(queue)?.get()
    }

    /// Request queue `queue` put buffers in its used ring: tell the driver
    /// now, or once the coalescing delay has passed.
    fn notify_request(&self, queue: usize, vring: &Vring) {
        let in_flight = self.inner.inflight.count(queue);
        if self.inner.coalesce.completed(queue, in_flight) {
            notify(vring);
        }
    }
}

/// Tell the driver about used buffers, if it wants to know (EVENT_IDX).
fn notify(vring: &Vring) {
    if vring.needs_notification().unwrap_or(true) {
        if let Err(e) = vring.signal_used_queue() {
            debug!("Cannot signal used queue: {e}");
        }
    }
}

impl VhostUserBackend for ScsiBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.total_queues()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VIRTIO_SCSI_F_HOTPLUG
            | VIRTIO_SCSI_F_CHANGE
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // Not CONFIG: QEMU builds the virtio-scsi config space itself.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn acked_features(&self, features: u64) {
        let change = features & VIRTIO_SCSI_F_CHANGE != 0;
        self.inner.change_events.store(change, Ordering::Relaxed);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        *self.inner.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn reset_device(&self) {
        // Every accepted request completes before the device is reset.
        self.inner.inflight.drain(None);
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: requests already taken from the ring complete first.
        if let Some(q) = (queue_index as usize).checked_sub(FIRST_REQUEST_QUEUE) {
            self.inner.inflight.drain(Some(q));
            // The driver hears of every completion before its call eventfd
            // goes (it may wait for an interrupt the delay still holds).
            if self.inner.coalesce.flush(q) {
                if let Some(v) = self.request_vring(q) {
                    notify(v);
                }
            }
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // Thread 0: control + event queues; then one thread per request queue.
        let mut v = vec![(1 << CONTROL_QUEUE) | (1 << EVENT_QUEUE)];
        v.extend(
            (0..self.inner.controller.request_queues).map(|i| 1u64 << (FIRST_REQUEST_QUEUE + i)),
        );
        v
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        // vhost-user-backend 0.24 (pinned) registers the consumer in its
        // epoll set with `into_raw_fd` and never closes it: one descriptor
        // per worker thread and connection would outlive the connection.
        // So the descriptor stays owned here, closed when this connection's
        // backend goes, and the crate gets an alias of the same number.
        // SAFETY: `into_raw_fd` hands over the descriptor the consumer owned.
        let owned = unsafe { OwnedFd::from_raw_fd(consumer.into_raw_fd()) };
        // SAFETY: the alias is only ever turned back into a raw number by
        // the crate (never closed by it); `owned` keeps the descriptor open
        // for as long as the epoll handlers exist, since they hold this
        // backend.
        let alias = unsafe { EventConsumer::from_raw_fd(owned.as_raw_fd()) };
        self.inner
            .exit_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(owned);
        Some((alias, notifier))
    }

    /// `device_event` is the index of the vring within this thread's vrings
    /// (what vhost-user-backend registers), our completion event, or an
    /// iSCSI session's event.
    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let ev = u64::from(device_event);
        if thread_id == 0 {
            // vrings: [control, event]. Event queue buffers stay available
            // for the events we post (from any thread: keep the queue).
            if let Some(v) = vrings.get(1) {
                let mut slot = self
                    .inner
                    .event_vring
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if slot.is_none() {
                    *slot = Some(v.clone());
                }
            }
            if ev == 0 {
                if let Some(vring) = vrings.first() {
                    self.process_control_queue(vring);
                }
            }
            return Ok(());
        }
        if let Some(j) = ev.checked_sub(self.first_session_event()) {
            // Answers from an iSCSI session (completed on this thread).
            if let Some(c) = self.inner.sessions.get(j as usize) {
                c.receive();
            }
            return Ok(());
        }
        let (Some(vring), Some(slot)) = (vrings.first(), self.inner.workers.get(thread_id - 1))
        else {
            return Ok(());
        };
        if let Some(known) = self.inner.request_vrings.get(thread_id - 1) {
            known.get_or_init(|| vring.clone());
        }
        let mut w = slot.lock().unwrap_or_else(|e| e.into_inner());
        if ev == 0 {
            self.process_request_queue(&mut w, vring);
        } else if ev == self.completion_event() {
            self.process_completions(&mut w, vring);
        } else if ev == self.timer_event() && self.inner.coalesce.expired(thread_id - 1) {
            notify(vring);
        }
        Ok(())
    }
}

/// An eventfd for a worker's io_uring completions.
fn completion_eventfd() -> io::Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
}
