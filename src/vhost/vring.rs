// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One virtqueue of a connection: the split ring (virtio-queue's `Queue`
//! keeps the indices and writes the used ring), its kick and call
//! eventfds, its state (vhost-user.rst, "Ring states": stopped, started,
//! enabled), and the two records a ring keeps beside guest memory: the
//! dirty log of migration and the inflight region of reconnection.
//!
//! Every write into the used ring goes through here, so each is logged
//! (when the front-end asked for used-ring logging) and every request taken
//! or returned is recorded in the inflight region (when there is one).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use log::info;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use super::inflight::InflightQueue;
use super::log::DirtyLog;
use crate::virtio::buffers::{Buffer, ChainBuffers, GuestMemory};
use crate::virtio::chain::{self, read_chain};

/// A request taken from the ring: its head and what its chain describes
/// (or why the chain is malformed, which only that request pays for).
pub type Popped = (u16, Result<ChainBuffers, chain::Error>);

/// A virtqueue, shared by the connection's protocol thread (which sets it
/// up) and the threads that process it and complete its requests.
#[derive(Clone)]
pub struct Vring {
    inner: Arc<Inner>,
}

struct Inner {
    index: usize,
    state: Mutex<State>,
    /// Held while a thread takes requests from the ring and hands them to
    /// the device, so that stopping the ring can wait for a round that
    /// already started (and then for the requests it accepted).
    round: Mutex<()>,
    log: Arc<DirtyLog>,
    mem: GuestMemoryAtomic<GuestMemory>,
}

struct State {
    queue: Queue,
    kick: Option<File>,
    call: Option<File>,
    err: Option<File>,
    started: bool,
    enabled: bool,
    /// VHOST_VRING_F_LOG: where used-ring writes are logged.
    used_log: Option<u64>,
    inflight: Option<InflightQueue>,
    /// Requests to take again, from the inflight region, before the ring.
    resubmit: VecDeque<u16>,
}

/// `le16 flags, le16 idx, { le32 id, le32 len } ring[size], le16 avail_event`.
const USED_RING_HEADER: u64 = 4;
const USED_ELEM: u64 = 8;

fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

impl Vring {
    pub fn new(
        index: usize,
        max_size: u16,
        mem: GuestMemoryAtomic<GuestMemory>,
        log: Arc<DirtyLog>,
    ) -> io::Result<Vring> {
        let queue = Queue::new(max_size).map_err(queue_err)?;
        Ok(Vring {
            inner: Arc::new(Inner {
                index,
                state: Mutex::new(State {
                    queue,
                    kick: None,
                    call: None,
                    err: None,
                    started: false,
                    enabled: false,
                    used_log: None,
                    inflight: None,
                    resubmit: VecDeque::new(),
                }),
                round: Mutex::new(()),
                log,
                mem,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The virtqueue's index.
    pub fn index(&self) -> usize {
        self.inner.index
    }

    /// Whether requests may be taken from the ring.
    pub fn is_running(&self) -> bool {
        let s = self.state();
        s.started && s.enabled
    }

    /// Take every available request (first those the inflight region says
    /// a previous back-end left unfinished), recording each in the
    /// inflight region. Nothing while the ring is stopped or disabled.
    pub fn pop_all(&self, mem: &GuestMemory) -> io::Result<Vec<Popped>> {
        let mut s = self.state();
        if !(s.started && s.enabled) {
            return Ok(Vec::new());
        }
        let (table, size) = (s.queue.desc_table(), s.queue.size());
        let mut out: Vec<Popped> = s
            .resubmit
            .drain(..)
            .map(|head| (head, read_chain(mem, table, size, head)))
            .collect();
        let heads: Vec<u16> = s
            .queue
            .iter(mem)
            .map_err(queue_err)?
            .map(|c| c.head_index())
            .collect();
        for head in heads {
            if let Some(inf) = s.inflight.as_mut() {
                inf.fetched(head);
            }
            out.push((head, read_chain(mem, table, size, head)));
        }
        Ok(out)
    }

    /// Take one available request (the event queue's buffers are taken
    /// one at a time, as events occur).
    pub fn pop_one(&self, mem: &GuestMemory) -> Option<Popped> {
        let mut s = self.state();
        if !(s.started && s.enabled) {
            return None;
        }
        let (table, size) = (s.queue.desc_table(), s.queue.size());
        if let Some(head) = s.resubmit.pop_front() {
            return Some((head, read_chain(mem, table, size, head)));
        }
        let head = s.queue.pop_descriptor_chain(mem)?.head_index();
        if let Some(inf) = s.inflight.as_mut() {
            inf.fetched(head);
        }
        Some((head, read_chain(mem, table, size, head)))
    }

    /// Return request `head` to the driver with `len` bytes written; the
    /// device wrote (at most) into `written`, which is logged first when
    /// migration logs writes, then the used element and index are.
    pub fn add_used(&self, head: u16, len: u32, written: &Buffer) -> io::Result<()> {
        let log = &self.inner.log;
        let logging = log.is_on();
        if logging {
            for (addr, n) in written.regions() {
                log.mark(addr, u64::from(n));
            }
        }
        let mem = self.inner.mem.memory();
        let mut s = self.state();
        if let Some(inf) = s.inflight.as_mut() {
            inf.completing(head);
        }
        let slot = s.queue.next_used();
        s.queue.add_used(&*mem, head, len).map_err(queue_err)?;
        let used_idx = s.queue.next_used();
        if logging {
            if let Some(used) = s.used_log {
                let size = u64::from(s.queue.size().max(1));
                let elem = USED_RING_HEADER + USED_ELEM * (u64::from(slot) % size);
                log.mark(used.wrapping_add(elem), USED_ELEM);
                log.mark(used.wrapping_add(2), 2);
            }
        }
        if let Some(inf) = s.inflight.as_mut() {
            inf.completed(head, used_idx);
        }
        Ok(())
    }

    /// Log the used ring's flags and avail_event fields, which notification
    /// suppression writes.
    fn log_used_header(&self, s: &State) {
        if !self.inner.log.is_on() {
            return;
        }
        if let Some(used) = s.used_log {
            let size = u64::from(s.queue.size());
            self.inner.log.mark(used, 2);
            self.inner
                .log
                .mark(used.wrapping_add(USED_RING_HEADER + USED_ELEM * size), 2);
        }
    }

    /// Ask the driver for notifications again; true if requests arrived
    /// meanwhile (take them before sleeping). A ring that stopped or was
    /// disabled meanwhile is not written to, and has nothing to take.
    pub fn enable_notification(&self) -> io::Result<bool> {
        let mem = self.inner.mem.memory();
        let mut s = self.state();
        if !(s.started && s.enabled) {
            return Ok(false);
        }
        let r = s.queue.enable_notification(&*mem).map_err(queue_err);
        self.log_used_header(&s);
        r
    }

    pub fn disable_notification(&self) -> io::Result<()> {
        let mem = self.inner.mem.memory();
        let mut s = self.state();
        if !(s.started && s.enabled) {
            return Ok(());
        }
        let r = s.queue.disable_notification(&*mem).map_err(queue_err);
        self.log_used_header(&s);
        r
    }

    /// Whether the driver wants to hear about the used buffers added since
    /// the last notification (EVENT_IDX).
    pub fn needs_notification(&self) -> io::Result<bool> {
        let mem = self.inner.mem.memory();
        self.state()
            .queue
            .needs_notification(&*mem)
            .map_err(queue_err)
    }

    /// Notify the driver (write the call eventfd).
    pub fn signal_used_queue(&self) -> io::Result<()> {
        let s = self.state();
        signal(s.call.as_ref())
    }

    /// Serialise with other rounds of this ring (see `Inner::round`).
    pub fn round(&self) -> MutexGuard<'_, ()> {
        self.inner.round.lock().unwrap_or_else(|e| e.into_inner())
    }

    // --- Set-up, from the protocol thread ------------------------------

    pub(super) fn max_size(&self) -> u16 {
        self.state().queue.max_size()
    }

    pub(super) fn set_size(&self, size: u16) -> io::Result<()> {
        self.state().queue.try_set_size(size).map_err(queue_err)
    }

    /// Ring addresses, already guest physical; `used_log` the address
    /// used-ring writes are logged at (VHOST_VRING_F_LOG), if asked.
    pub(super) fn set_addresses(
        &self,
        desc: u64,
        avail: u64,
        used: u64,
        used_log: Option<u64>,
    ) -> io::Result<()> {
        let mut s = self.state();
        s.queue
            .try_set_desc_table_address(GuestAddress(desc))
            .map_err(queue_err)?;
        s.queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .map_err(queue_err)?;
        s.queue
            .try_set_used_ring_address(GuestAddress(used))
            .map_err(queue_err)?;
        s.used_log = used_log;
        Ok(())
    }

    pub(super) fn set_base(&self, base: u16) {
        let mut s = self.state();
        s.queue.set_next_avail(base);
        s.queue.set_next_used(base);
    }

    pub(super) fn set_event_idx(&self, on: bool) {
        self.state().queue.set_event_idx(on);
    }

    pub(super) fn set_enabled(&self, on: bool) {
        self.state().enabled = on;
    }

    pub(super) fn set_inflight(&self, q: Option<InflightQueue>) {
        self.state().inflight = q;
    }

    /// SET_VRING_CALL. A running ring's new eventfd is signalled once:
    /// QEMU replaces the call eventfd right after starting a device (its
    /// "masked" notifier for the real one), and a completion signalled on
    /// the old one just before would otherwise be lost and the driver
    /// would wait forever; a spurious notification is harmless (virtio
    /// 1.2, 2.7.7: drivers must handle them).
    pub(super) fn set_call(&self, file: Option<File>) {
        let mut s = self.state();
        s.call = file;
        if s.started && s.call.is_some() {
            let _ = signal(s.call.as_ref());
        }
    }

    pub(super) fn set_err(&self, file: Option<File>) {
        self.state().err = file;
    }

    /// SET_VRING_KICK: the ring starts. The used index in guest memory is
    /// where completions continue; with an inflight region, requests a
    /// previous back-end left unfinished are taken again first, and the
    /// ring continues after every request it took (its used index plus
    /// those left in flight, whatever SET_VRING_BASE said). Returns the
    /// kick descriptor to watch.
    pub(super) fn start(&self, kick: Option<File>) -> io::Result<Option<RawFd>> {
        let mem = self.inner.mem.memory();
        let mut s = self.state();
        s.kick = kick;
        s.started = true;
        s.queue.set_ready(true);
        s.resubmit.clear();
        if s.queue.size() > 0 && rings_in_memory(&s.queue, &mem) && s.queue.is_valid(&*mem) {
            let used = s
                .queue
                .used_idx(&*mem, Ordering::Acquire)
                .map_err(queue_err)?;
            s.queue.set_next_used(used.0);
            let base = s.queue.next_avail();
            let index = self.inner.index;
            if let Some(pending) = s.inflight.as_mut().and_then(|i| i.recover(used.0)) {
                let next = (used + Wrapping(pending.len() as u16)).0;
                if !pending.is_empty() || next != base {
                    info!(
                        "Virtqueue {index}: {} request(s) left in flight by the previous \
                         back-end are resubmitted; the ring continues at {next} (front-end \
                         said {base})",
                        pending.len()
                    );
                }
                s.queue.set_next_avail(next);
                s.resubmit = pending.into();
            }
        }
        Ok(s.kick.as_ref().map(|k| k.as_raw_fd()))
    }

    /// GET_VRING_BASE: the ring stops (the caller then waits for the
    /// round in progress and the requests accepted); returns the kick
    /// descriptor to stop watching.
    pub(super) fn stop(&self) -> Option<RawFd> {
        let mut s = self.state();
        s.started = false;
        s.queue.set_ready(false);
        s.kick.as_ref().map(|k| k.as_raw_fd())
    }

    /// The next available index, once stopped.
    pub(super) fn base(&self) -> u16 {
        self.state().queue.next_avail()
    }

    /// Read the kick eventfd's counter (non-blocking: a kick already
    /// consumed reads nothing), under the lock that keeps the descriptor
    /// from being replaced meanwhile.
    pub(super) fn consume_kick(&self) {
        let s = self.state();
        if let Some(k) = &s.kick {
            let mut buf = [0u8; 8];
            // SAFETY: an 8-byte read into a live buffer from a descriptor
            // this ring owns (set non-blocking when received).
            unsafe { libc::read(k.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        }
    }

    /// Make the processing thread look at the ring (as a kick would).
    pub(super) fn poke(&self) {
        let s = self.state();
        let _ = signal(s.kick.as_ref());
    }

    /// RESET_DEVICE / RESET_OWNER: back to the initial state.
    pub(super) fn reset(&self) {
        let mut s = self.state();
        s.queue.reset();
        s.kick = None;
        s.call = None;
        s.err = None;
        s.started = false;
        s.enabled = false;
        s.used_log = None;
        s.inflight = None;
        s.resubmit.clear();
    }

    /// A ring for tests, on `mem`, set up and running.
    #[cfg(test)]
    pub(crate) fn for_test(
        index: usize,
        mem: GuestMemoryAtomic<GuestMemory>,
        log: Arc<DirtyLog>,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Vring {
        let v = Vring::new(index, size, mem, log).unwrap();
        v.set_size(size).unwrap();
        v.set_addresses(desc, avail, used, Some(used)).unwrap();
        v.set_enabled(true);
        v.start(None).unwrap();
        v
    }

    /// Set the call eventfd (tests).
    #[cfg(test)]
    pub(crate) fn set_call_for_test(&self, file: Option<File>) {
        self.set_call(file);
    }
}

/// Whether the three parts of `q`'s ring lie in guest memory (checked
/// here first: virtio-queue's own check logs an error line for every bad
/// ring, which a hostile front-end could use to flood the log).
fn rings_in_memory(q: &Queue, mem: &GuestMemory) -> bool {
    use vm_memory::GuestMemoryBackend;
    let n = u64::from(q.size());
    [
        (q.desc_table(), 16 * n),
        (q.avail_ring(), 6 + 2 * n),
        (q.used_ring(), 6 + 8 * n),
    ]
    .into_iter()
    .all(|(addr, len)| {
        usize::try_from(len)
            .ok()
            .is_some_and(|l| mem.check_range(GuestAddress(addr), l))
    })
}

/// Write 1 to an eventfd.
fn signal(fd: Option<&File>) -> io::Result<()> {
    let Some(f) = fd else { return Ok(()) };
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write from a live buffer to a descriptor we own.
    let n = unsafe { libc::write(f.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        // A full counter (EAGAIN) already means "signalled".
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::FromRawFd;

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::vhost::log::LOG_PAGE;

    /// An eventfd and a `File` for the same eventfd object (what the
    /// front-end keeps and what SET_VRING_CALL hands us).
    pub(crate) fn call_fd() -> (EventFd, File) {
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // SAFETY: dup returns a new descriptor we own (checked below).
        let dup = unsafe { libc::dup(e.as_raw_fd()) };
        assert!(dup >= 0);
        // SAFETY: `dup` is a valid descriptor owned by nobody else.
        (e, unsafe { File::from_raw_fd(dup) })
    }

    const SIZE: u16 = 16;

    struct Ring {
        mem: &'static GuestMemory,
        mock: MockSplitQueue<'static, GuestMemory>,
        atomic: GuestMemoryAtomic<GuestMemory>,
        log: Arc<DirtyLog>,
        next: u16,
    }

    impl Ring {
        fn new() -> Ring {
            let mem: &'static GuestMemory = Box::leak(Box::new(
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap(),
            ));
            let mock = MockSplitQueue::create(mem, GuestAddress(0x1000), SIZE);
            Ring {
                mem,
                mock,
                atomic: GuestMemoryAtomic::new(mem.clone()),
                log: Arc::new(DirtyLog::default()),
                next: 0,
            }
        }

        fn vring(&self) -> Vring {
            Vring::for_test(
                2,
                self.atomic.clone(),
                self.log.clone(),
                SIZE,
                self.mock.desc_table_addr().0,
                self.mock.avail_addr().0,
                self.mock.used_addr().0,
            )
        }

        /// Make a one-descriptor request (a writable buffer at `addr`).
        fn request(&mut self, addr: u64) {
            let d = RawDescriptor::from(SplitDescriptor::new(addr, 64, 2, 0));
            self.mock.add_desc_chains(&[d], self.next).unwrap();
            self.next += 1;
        }

        fn used_idx(&self) -> u16 {
            self.mem
                .read_obj(self.mock.used_addr().unchecked_add(2))
                .unwrap()
        }
    }

    #[test]
    fn a_new_call_eventfd_of_a_running_ring_is_signalled_once() {
        let r = Ring::new();
        let v = r.vring();
        let (old, old_file) = call_fd();
        v.set_call(Some(old_file));
        assert_eq!(old.read().unwrap(), 1);
        // A completion signalled just before the front-end's replacement
        // reaches the old eventfd only...
        v.signal_used_queue().unwrap();
        let (new, new_file) = call_fd();
        v.set_call(Some(new_file));
        // ...and the new one hears of it too.
        assert_eq!(new.read().unwrap(), 1);
        assert!(new.read().is_err(), "signalled exactly once");
    }

    #[test]
    fn a_stopped_ring_is_not_signalled_and_yields_nothing() {
        let mut r = Ring::new();
        let v = r.vring();
        v.stop();
        let (e, file) = call_fd();
        v.set_call(Some(file));
        assert!(e.read().is_err());
        r.request(0x8000);
        assert!(v.pop_all(r.mem).unwrap().is_empty());
        // A processing loop asks for more until this says none came: a
        // stopped ring says so, or the loop would spin while the thread
        // stopping the ring waits for it (seen in the soak test).
        assert!(!v.enable_notification().unwrap());
    }

    /// Used-ring writes, and the buffers the device wrote, are logged
    /// once logging is on, and only then.
    #[test]
    fn completions_log_the_buffer_then_the_used_element_and_index() {
        let mut r = Ring::new();
        let v = r.vring();
        r.request(0x20000);
        r.request(0x30000);
        let popped = v.pop_all(r.mem).unwrap();
        let bufs: Vec<ChainBuffers> = popped.into_iter().map(|(_, b)| b.unwrap()).collect();
        // Logging off: nothing marked.
        v.add_used(0, 64, &bufs[0].writable).unwrap();
        let f = crate::vhost::log::tests::memfd(64);
        r.log.set_base(&f, 0, 64, &Default::default()).unwrap();
        assert!(!r.log.is_marked(0x20000));
        r.log.set_wanted(true);
        v.add_used(1, 64, &bufs[1].writable).unwrap();
        assert!(r.log.is_marked(0x30000));
        assert!(!r.log.is_marked(0x20000));
        // The used ring's page (element 1 and the index).
        let used = r.mock.used_addr().0;
        assert!(r.log.is_marked(used));
        assert!(!r.log.is_marked(used + LOG_PAGE));
    }

    #[test]
    fn notification_suppression_writes_are_logged() {
        let r = Ring::new();
        let v = r.vring();
        v.set_event_idx(true);
        let f = crate::vhost::log::tests::memfd(64);
        r.log.set_base(&f, 0, 64, &Default::default()).unwrap();
        r.log.set_wanted(true);
        v.enable_notification().unwrap();
        // avail_event sits after the 16 used elements.
        let used = r.mock.used_addr().0;
        assert!(r.log.is_marked(used + 4 + 8 * u64::from(SIZE)));
    }

    /// A crashed back-end's successor resubmits exactly the requests taken
    /// and not returned, in order, and continues after them.
    #[test]
    fn requests_left_in_flight_are_resubmitted_after_a_restart() {
        let mut r = Ring::new();
        let (region, file, len) = super::super::inflight::InflightRegion::create(3, SIZE).unwrap();
        let region = Arc::new(region);
        let v = r.vring();
        v.set_inflight(region.queue(2));
        // Restart the ring so the region starts at the ring's used index.
        v.start(None).unwrap();
        for i in 0..4 {
            r.request(0x20000 + 0x1000 * i);
        }
        let popped = v.pop_all(r.mem).unwrap();
        assert_eq!(popped.len(), 4);
        // Requests 2 and 0 complete, out of order.
        for head in [2, 0] {
            let b = popped[usize::from(head)].1.as_ref().unwrap();
            v.add_used(head, 0, &b.writable).unwrap();
        }
        assert_eq!(r.used_idx(), 2);
        // The back-end dies; the next one gets the region back.
        drop(v);
        let again = Arc::new(
            super::super::inflight::InflightRegion::open(
                file,
                0,
                len,
                3,
                SIZE,
                &Default::default(),
            )
            .unwrap(),
        );
        let v2 = Vring::new(2, SIZE, r.atomic.clone(), r.log.clone()).unwrap();
        v2.set_size(SIZE).unwrap();
        let m = &r.mock;
        v2.set_addresses(
            m.desc_table_addr().0,
            m.avail_addr().0,
            m.used_addr().0,
            None,
        )
        .unwrap();
        v2.set_enabled(true);
        // QEMU restores the base from the used index (2).
        v2.set_base(2);
        v2.set_inflight(again.queue(2));
        v2.start(None).unwrap();
        r.request(0x50000);
        let heads: Vec<u16> = v2
            .pop_all(r.mem)
            .unwrap()
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        // 1 and 3 again, in the order taken, then the new request (4):
        // nothing twice, nothing lost.
        assert_eq!(heads, vec![1, 3, 4]);
    }
}
