// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user-scsi device: a `VhostUserBackend` serving one controller
//! connection. Thread 0 serves the control and event queues; each request
//! queue has its own worker thread with its own io_uring.

pub mod coalesce;
mod control;
mod engine;
mod events;
mod hotplug;
mod inflight;
mod request;
mod sink;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::debug;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::EventFd;

pub use crate::remote::RemoteLun;
use crate::remote::Session;
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
/// Problems caused by a controller's guest or front-end logged at warn
/// level per minute; the rest go to debug, and are counted in the next
/// minute's first line (a misbehaving peer must not flood the log).
pub const PROBLEMS_PER_MINUTE: u32 = 20;

use crate::vhost::Rings;
pub use crate::vhost::Vring;
pub use hotplug::{Lun, RemoteLuns};

/// One controller as configured: its target (LUNs) and its nexus identity,
/// which stays the same across connections.
pub struct Controller {
    pub name: String,
    pub target: Target,
    pub nexus: Nexus,
    pub request_queues: usize,
    /// How the request queues' notifications are coalesced.
    pub coalesce: coalesce::Policy,
    /// LUNs whose commands another system executes (an iSCSI target),
    /// passed through unchanged (`remote`).
    pub remote: RemoteLuns,
    /// The device of the connected front-end, if any (`hotplug`).
    pub(crate) connected: hotplug::Connected,
    /// Rate limit of the log lines its guest and front-end cause, across
    /// connections.
    pub problems: crate::ratelimit::RateLimit,
}

impl Controller {
    /// The rate limit `problems` is given.
    pub fn problem_limit() -> crate::ratelimit::RateLimit {
        crate::ratelimit::RateLimit::new(PROBLEMS_PER_MINUTE, std::time::Duration::from_secs(60))
    }
}

/// The backend for one connection. Cloned into every worker thread.
#[derive(Clone)]
pub struct ScsiBackend {
    inner: Arc<Inner>,
}

struct Inner {
    controller: Arc<Controller>,
    /// The connection's rings and guest memory.
    rings: Arc<Rings>,
    workers: Vec<Mutex<Worker>>,
    inflight: Inflight,
    coalesce: coalesce::Coalesce,
    /// Bytes of commands in flight to remote targets (data-out + data-in).
    remote_budget: request::Budget,
    /// The controller's remote sessions (one entry per session).
    sessions: Vec<Arc<dyn Session>>,
    /// Sessions whose answers the request-queue workers receive.
    receivers: Mutex<Vec<Box<dyn Send>>>,
    /// Our event hooks on the sessions: (session index, hook id).
    event_hooks: Mutex<Vec<(usize, u64)>>,
    /// Request queues running (bit i: request queue i): while any is, the
    /// controller's remote sessions are wanted.
    running: Mutex<u64>,
    /// An event found no buffer: the next one says so.
    events_missed: AtomicBool,
    /// The driver accepted VIRTIO_SCSI_F_CHANGE (parameter change events).
    change_events: AtomicBool,
    /// The driver accepted VIRTIO_SCSI_F_HOTPLUG (LUNs added and removed).
    hotplug_events: AtomicBool,
}

impl ScsiBackend {
    /// The device of one connection, over its rings.
    pub fn new(controller: Arc<Controller>, rings: Arc<Rings>) -> io::Result<ScsiBackend> {
        let n = controller.request_queues;
        let mut sessions: Vec<Arc<dyn Session>> = Vec::new();
        for r in controller.remote.values() {
            if !sessions.iter().any(|c| c.id() == r.session.id()) {
                sessions.push(r.session.clone());
            }
        }
        let workers = (0..n)
            .map(|i| Worker::new(i).map(Mutex::new))
            .collect::<io::Result<Vec<_>>>()?;
        let coalesce = coalesce::Coalesce::new(controller.coalesce, n)?;
        Ok(ScsiBackend {
            inner: Arc::new(Inner {
                controller,
                rings,
                workers,
                inflight: Inflight::new(n),
                coalesce,
                remote_budget: request::Budget::default(),
                sessions,
                receivers: Mutex::new(Vec::new()),
                event_hooks: Mutex::new(Vec::new()),
                running: Mutex::new(0),
                events_missed: AtomicBool::new(false),
                change_events: AtomicBool::new(false),
                hotplug_events: AtomicBool::new(false),
            }),
        })
    }

    fn total_queues(&self) -> usize {
        FIRST_REQUEST_QUEUE + self.inner.controller.request_queues
    }

    /// The device's event ids (see `listeners`): per worker, its io_uring
    /// completions and its notification timer; then one per session.
    fn completion_event(worker: usize) -> u64 {
        2 * worker as u64
    }

    fn timer_event(worker: usize) -> u64 {
        2 * worker as u64 + 1
    }

    fn first_session_event(&self) -> u64 {
        2 * self.inner.workers.len() as u64
    }

    /// The remote sessions' descriptors: each is watched by one
    /// request-queue worker (spread over the workers), which receives its
    /// answers, so a command's answer is handled without waking another
    /// thread. (thread, fd, event id).
    fn session_listeners(&self) -> Vec<(usize, i32, u64)> {
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
    fn attach_session(&self, id: u64) {
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
        let hooks = std::mem::take(
            &mut *self
                .inner
                .event_hooks
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (j, id) in hooks {
            if let Some(c) = self.inner.sessions.get(j) {
                c.remove_event_hook(id);
            }
        }
    }

    fn receivers(&self) -> MutexGuard<'_, Vec<Box<dyn Send>>> {
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
        self.inner.rings.memory()
    }

    /// Log a guest protocol error, rate-limited per controller.
    fn guest_error(&self, what: std::fmt::Arguments) {
        let c = &self.inner.controller;
        crate::warn_limited!(c.problems, "{}: {what}", c.name);
    }

    /// Attach this connection's nexus to every LU of the target, with hooks
    /// that abort its commands (for PREEMPT AND ABORT from other nexuses).
    pub fn attach(&self) {
        let c = &self.inner.controller;
        c.target.attach(&c.nexus, |lun| Some(self.abort_hook(lun)));
        // Asynchronous events from the remote targets become parameter
        // change events for the guest (besides their unit attention).
        for (j, client) in self.inner.sessions.iter().enumerate() {
            let weak = Arc::downgrade(&self.inner);
            let id = client.add_event_hook(Arc::new(move |lun, sense| {
                if let Some(inner) = weak.upgrade() {
                    ScsiBackend { inner }.remote_event(j, lun, sense);
                }
            }));
            self.inner
                .event_hooks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((j, id));
        }
    }

    /// Request queue `q` started or stopped. The controller's remote
    /// sessions are logged in while any of its queues runs, and out when
    /// none does (their commands have completed by then): the source of a
    /// live migration leaves the session to the destination.
    fn set_running(&self, q: usize, on: bool) {
        let Some(bit) = 1u64.checked_shl(q as u32) else {
            return;
        };
        let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        let before = *running;
        if on {
            *running |= bit;
        } else {
            *running &= !bit;
        }
        match (before == 0, *running == 0) {
            (true, false) => self.inner.sessions.iter().for_each(|s| s.activate()),
            (false, true) => self.inner.sessions.iter().for_each(|s| s.deactivate()),
            _ => {}
        }
    }

    /// The hook that aborts this connection's commands on `lun` (for
    /// PREEMPT AND ABORT from other nexuses).
    fn abort_hook(&self, lun: u16) -> AbortHook {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner
                    .inflight
                    .abort_and_wait(Scope::Lun(LunAddress::Lun(lun)), Response::Aborted);
            }
        })
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
        self.inner.rings.get(FIRST_REQUEST_QUEUE + queue)
    }

    fn event_vring(&self) -> Option<&Vring> {
        self.inner.rings.get(EVENT_QUEUE)
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

impl crate::vhost::Backend for ScsiBackend {
    fn num_queues(&self) -> usize {
        self.total_queues()
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE as u16
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VIRTIO_SCSI_F_HOTPLUG
            | VIRTIO_SCSI_F_CHANGE
    }

    fn queue_threads(&self) -> Vec<u64> {
        // Thread 0: control + event queues; then one thread per request queue.
        let mut v = vec![(1 << CONTROL_QUEUE) | (1 << EVENT_QUEUE)];
        v.extend(
            (0..self.inner.controller.request_queues).map(|i| 1u64 << (FIRST_REQUEST_QUEUE + i)),
        );
        v
    }

    fn listeners(&self) -> Vec<(usize, RawFd, u64)> {
        let mut v = Vec::new();
        for i in 0..self.inner.workers.len() {
            v.push((
                1 + i,
                self.worker(i).eventfd_raw(),
                Self::completion_event(i),
            ));
            if let Some(fd) = self.inner.coalesce.timer_fd(i) {
                v.push((1 + i, fd, Self::timer_event(i)));
            }
        }
        for (thread, fd, id) in self.session_listeners() {
            v.push((thread, fd, id));
            self.attach_session(id);
        }
        v
    }

    fn queue_started(&self, queue: usize) {
        if let Some(q) = queue.checked_sub(FIRST_REQUEST_QUEUE) {
            self.set_running(q, true);
        }
    }

    fn acked_features(&self, features: u64) {
        let change = features & VIRTIO_SCSI_F_CHANGE != 0;
        self.inner.change_events.store(change, Ordering::Relaxed);
        let hotplug = features & VIRTIO_SCSI_F_HOTPLUG != 0;
        self.inner.hotplug_events.store(hotplug, Ordering::Relaxed);
    }

    fn handle_queue(&self, _thread: usize, vring: &Vring) {
        match vring.index() {
            CONTROL_QUEUE => self.process_control_queue(vring),
            // Event queue buffers stay available for the events we post;
            // new ones tell the driver of events that found none.
            EVENT_QUEUE => self.post_missed(),
            q => {
                let Some(slot) = self.inner.workers.get(q - FIRST_REQUEST_QUEUE) else {
                    return;
                };
                let mut w = slot.lock().unwrap_or_else(|e| e.into_inner());
                self.process_request_queue(&mut w, vring);
            }
        }
    }

    fn handle_event(&self, _thread: usize, id: u64) {
        if let Some(j) = id.checked_sub(self.first_session_event()) {
            // Answers from a remote session (completed on this thread).
            if let Some(c) = self.inner.sessions.get(j as usize) {
                c.receive();
            }
            return;
        }
        let i = (id / 2) as usize;
        let (Some(slot), Some(vring)) = (self.inner.workers.get(i), self.request_vring(i)) else {
            return;
        };
        if id == Self::completion_event(i) {
            let mut w = slot.lock().unwrap_or_else(|e| e.into_inner());
            self.process_completions(&mut w, vring);
        } else if self.inner.coalesce.expired(i) {
            notify(vring);
        }
    }

    fn stop_queue(&self, queue: usize) {
        // GET_VRING_BASE: requests already taken from the ring complete first.
        if let Some(q) = queue.checked_sub(FIRST_REQUEST_QUEUE) {
            self.inner.inflight.drain(Some(q));
            self.set_running(q, false);
            // The driver hears of every completion before its call eventfd
            // goes (it may wait for an interrupt the delay still holds).
            if self.inner.coalesce.flush(q) {
                if let Some(v) = self.request_vring(q) {
                    notify(v);
                }
            }
        }
    }

    fn front_end_problem(&self, what: &str) {
        self.guest_error(format_args!("{what}"));
    }

    fn reset(&self) {
        // Every accepted request completes before the device is reset.
        self.inner.inflight.drain(None);
        for q in 0..self.inner.workers.len() {
            self.set_running(q, false);
        }
    }
}

/// An eventfd for a worker's io_uring completions.
fn completion_eventfd() -> io::Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
}
