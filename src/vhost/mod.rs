// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user back-end side of one connection (QEMU's
//! docs/interop/vhost-user.rst): the front-end's messages (through the
//! `vhost` crate's message codec and `BackendReqHandler`), guest memory,
//! the virtqueues, the dirty log of live migration and the inflight region
//! of reconnection, and one thread per group of queues that waits for
//! kicks and for the device's own descriptors. Knows vhost-user and virtio
//! rings; the device (device/) knows virtio-scsi and implements `Backend`.
//!
//! Everything a connection creates or receives (threads, epoll sets,
//! eventfds, memory mappings, the log and inflight mappings) belongs to its
//! `Connection` and its `Rings` and is released when they are dropped.

mod handler;
pub mod inflight;
pub mod log;
pub mod memory;
pub mod sigbus;
pub mod vring;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use ::log::{debug, error};
use vhost::vhost_user::{BackendReqHandler, Error as VhostError};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::buffers::GuestMemory;
pub use log::DirtyLog;
pub use vring::Vring;

/// What a virtio device served over vhost-user implements.
pub trait Backend: Send + Sync + 'static {
    /// Virtqueues the device has (at most).
    fn num_queues(&self) -> usize;
    /// Largest queue size accepted.
    fn max_queue_size(&self) -> u16;
    /// Virtio feature bits offered (transport and device bits; the
    /// vhost-user bits are added here).
    fn features(&self) -> u64;
    /// The threads serving the queues: a mask of queue indices each.
    fn queue_threads(&self) -> Vec<u64>;
    /// The device's own descriptors to watch: (thread, fd, event id).
    fn listeners(&self) -> Vec<(usize, RawFd, u64)>;
    /// Features acked by the front-end.
    fn acked_features(&self, features: u64);
    /// Virtqueue `queue` started (SET_VRING_KICK).
    fn queue_started(&self, _queue: usize) {}
    /// A running ring was kicked (or has requests to look at).
    fn handle_queue(&self, thread: usize, vring: &Vring);
    /// One of the device's descriptors is readable.
    fn handle_event(&self, thread: usize, id: u64);
    /// Virtqueue `queue` stopped: return once every request taken from it
    /// has been returned to the used ring.
    fn stop_queue(&self, queue: usize);
    /// The device is reset: complete everything in flight.
    fn reset(&self);
    /// Report a problem the front-end caused (the device rate-limits).
    fn front_end_problem(&self, what: &str) {
        ::log::warn!("{what}");
    }
}

/// What a connection and its device share: guest memory, the rings and the
/// dirty log.
pub struct Rings {
    vrings: Vec<Vring>,
    mem: GuestMemoryAtomic<GuestMemory>,
    log: Arc<DirtyLog>,
    /// Set when a file the front-end shared shrank under our mapping
    /// (`sigbus`): the connection ends.
    poisoned: memory::Owner,
    /// Memory tables replaced during the connection: their mappings may
    /// still be in use by a round that took a snapshot, so their watch
    /// lasts as long as the connection.
    old_tables: std::sync::Mutex<Vec<memory::MemoryTable>>,
}

impl Rings {
    pub fn new(num_queues: usize, max_queue_size: u16) -> io::Result<Arc<Rings>> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let log = Arc::new(DirtyLog::default());
        let vrings = (0..num_queues)
            .map(|i| Vring::new(i, max_queue_size, mem.clone(), log.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Arc::new(Rings {
            vrings,
            mem,
            log,
            poisoned: memory::Owner::default(),
            old_tables: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Rings over `mem`, with `log` (tests).
    #[cfg(test)]
    pub(crate) fn with_memory(
        vrings: Vec<Vring>,
        mem: GuestMemoryAtomic<GuestMemory>,
        log: Arc<DirtyLog>,
    ) -> Rings {
        Rings {
            vrings,
            mem,
            log,
            poisoned: memory::Owner::default(),
            old_tables: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn get(&self, queue: usize) -> Option<&Vring> {
        self.vrings.get(queue)
    }

    /// Guest memory, once the front-end has shared some.
    pub fn memory(&self) -> Option<Arc<GuestMemory>> {
        let m = self.mem.memory().into_inner();
        (m.num_regions() > 0).then_some(m)
    }

    /// The dirty log (for writes outside the rings' buffers).
    pub fn log(&self) -> &DirtyLog {
        &self.log
    }
}

/// Epoll event data of a worker thread's exit event; queue kicks use the
/// queue index, device descriptors `DEVICE_EVENTS + id`.
const EXIT: u64 = u64::MAX;
const DEVICE_EVENTS: u64 = 1 << 32;

/// One worker thread's wake-up sources.
struct Worker {
    epoll: Epoll,
    exit: EventFd,
}

/// One front-end connection, served until it ends.
pub struct Connection<B: Backend> {
    stream: UnixStream,
    rings: Arc<Rings>,
    backend: Arc<B>,
    workers: Vec<Arc<Worker>>,
    threads: Vec<JoinHandle<()>>,
}

/// Ends a running connection from another thread.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<UnixStream>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

impl<B: Backend> Connection<B> {
    /// Set up the worker threads for `stream` (accepted from a listening
    /// socket) and register the device's descriptors with them.
    pub fn new(
        stream: UnixStream,
        rings: Arc<Rings>,
        backend: Arc<B>,
        name: &str,
    ) -> io::Result<Connection<B>> {
        let masks = backend.queue_threads();
        let mut conn = Connection {
            stream,
            rings,
            backend,
            workers: Vec::new(),
            threads: Vec::new(),
        };
        for (t, _) in masks.iter().enumerate() {
            let w = Arc::new(Worker {
                epoll: Epoll::new()?,
                exit: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            });
            w.epoll.ctl(
                ControlOperation::Add,
                w.exit.as_raw_fd(),
                EpollEvent::new(EventSet::IN, EXIT),
            )?;
            conn.workers.push(w.clone());
            let (rings, backend) = (conn.rings.clone(), conn.backend.clone());
            let stream = conn.stream.try_clone()?;
            let th = std::thread::Builder::new()
                .name(format!("{name:.8}-q{t}"))
                .spawn(move || worker_loop(t, &w, &rings, &*backend, &stream))?;
            conn.threads.push(th);
        }
        for (t, fd, id) in conn.backend.listeners() {
            if let Some(w) = conn.workers.get(t) {
                w.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, DEVICE_EVENTS + id),
                )?;
            }
        }
        Ok(conn)
    }

    pub fn shutdown_handle(&self) -> io::Result<ShutdownHandle> {
        Ok(ShutdownHandle(Arc::new(self.stream.try_clone()?)))
    }

    /// Handle the front-end's messages until it disconnects or sends one
    /// that ends the connection; every ring is then stopped and its
    /// requests completed before this returns.
    pub fn run(&mut self) -> Result<(), VhostError> {
        let masks = self.backend.queue_threads();
        let mut queue_thread = vec![usize::MAX; self.rings.vrings.len()];
        for (t, mask) in masks.iter().enumerate() {
            for (q, slot) in queue_thread.iter_mut().enumerate() {
                if q < 64 && mask & (1 << q) != 0 {
                    *slot = t;
                }
            }
        }
        let handler = handler::Handler::new(
            self.rings.clone(),
            self.backend.clone(),
            self.workers.iter().map(|w| w.epoll.as_raw_fd()).collect(),
            queue_thread,
        );
        let handler = Arc::new(std::sync::Mutex::new(handler));
        let stream = self.stream.try_clone().map_err(VhostError::SocketError)?;
        let mut req = BackendReqHandler::from_stream(stream, handler.clone());
        let result = loop {
            if let Err(e) = req.handle_request() {
                break match e {
                    VhostError::Disconnected | VhostError::PartialMessage => Ok(()),
                    e => Err(e),
                };
            }
            if self
                .rings
                .poisoned
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                break Err(VhostError::ReqHandlerError(io::Error::other(
                    "a memory file the front-end shared shrank under the daemon's mapping",
                )));
            }
        };
        handler.lock().unwrap_or_else(|e| e.into_inner()).stop_all();
        result
    }
}

impl<B: Backend> Drop for Connection<B> {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.exit.write(1);
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                error!("A virtqueue thread panicked");
            }
        }
    }
}

fn worker_loop<B: Backend + ?Sized>(
    t: usize,
    w: &Worker,
    rings: &Rings,
    backend: &B,
    stream: &UnixStream,
) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        if rings
            .poisoned
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            // Whatever it was doing, the front-end cannot be served: end
            // the connection (its message loop sees the socket shut).
            backend.front_end_problem(
                "A memory file the front-end shared shrank under the daemon's mapping: \
                 ending the connection",
            );
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let n = match w.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("Virtqueue thread {t}: epoll_wait failed: {e}");
                return;
            }
        };
        for ev in events.iter().take(n) {
            let data = ev.data();
            if data == EXIT {
                return;
            }
            if let Some(id) = data.checked_sub(DEVICE_EVENTS) {
                backend.handle_event(t, id);
                continue;
            }
            let Some(vring) = usize::try_from(data).ok().and_then(|q| rings.get(q)) else {
                continue;
            };
            vring.consume_kick();
            let _round = vring.round();
            if vring.is_running() {
                backend.handle_queue(t, vring);
            } else {
                debug!("Virtqueue {}: kick while stopped", vring.index());
            }
        }
    }
}
