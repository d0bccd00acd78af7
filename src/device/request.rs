// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Request queues (virtio 5.6.6.1): parse each descriptor chain, execute the
//! CDB through the SCSI layer, and either answer at once (emulated commands)
//! or start a zero-copy block I/O on the worker's io_uring and answer when
//! it completes, or (remote LUNs) hand the command to the controller's
//! session after the virtqueue round, whose receive thread then answers it
//! in guest memory directly (`complete_remote`). Completions are out of
//! order; many commands are in flight.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use log::{debug, error};

use super::engine::Engine;
use super::{completion_eventfd, ScsiBackend, Vring, MAX_QUEUE_SIZE};
use crate::backstore::Route;
use crate::scsi::{
    self, BlockIo, Command, DataOut, IoKind, LogicalUnit, LunAddress, Outcome, Status,
};
use crate::stats::{End, LunStats, Stamp, Started};
use crate::virtio::buffers::{Buffer, ChainBuffers, GuestMemory};
use crate::virtio::{CmdReq, CmdResp, Response, VirtioLun, REQ_HEADER_LEN, RESP_HEADER_LEN};
use vm_memory::ByteValued;

/// A block I/O handed to the kernel, waiting for its completion.
struct Pending {
    head: u16,
    bufs: ChainBuffers,
    mem: Arc<GuestMemory>,
    lu: Arc<LogicalUnit>,
    io: BlockIo,
    lun: LunAddress,
    /// Its LUN's statistics, once queued on the io_uring (completed in the
    /// round, it counts through the round's map).
    stats: Option<Arc<LunStats>>,
    started: Started,
    /// Host addresses of the data buffer; read by the kernel until completion.
    iovecs: Vec<libc::iovec>,
    key: u64,
    data_in_len: u64,
    data_out_len: u64,
}

// SAFETY: the raw pointers in `iovecs` point into the guest memory mapping
// that `mem` keeps alive; a Pending is only used by the worker that owns it
// (it moves between threads only inside the worker's Mutex).
unsafe impl Send for Pending {}

/// Largest data transfer passed through to a remote LUN in one command
/// (QEMU's default max_sectors, 65535 x 512 bytes, fits).
const MAX_PASSTHROUGH: u64 = 32 << 20;

/// Most bytes in flight to remote targets per connection (data-out and
/// data-in sizes). A guest can alias the same pages in every descriptor of
/// every queue; with a slow or stalled target that would otherwise become
/// gigabytes asked of the target and, for small writes (copied into the
/// transmit buffer until the socket takes them), gigabytes queued here.
const MAX_REMOTE_IN_FLIGHT: u64 = 256 << 20;

/// A byte budget shared by the threads of one connection.
#[derive(Default)]
pub(super) struct Budget {
    used: std::sync::atomic::AtomicU64,
}

impl Budget {
    /// Take `n` bytes if that stays within `cap`, or if nothing is taken
    /// (one command of any allowed size always goes).
    fn take(&self, n: u64, cap: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.used.fetch_add(n, Relaxed);
        if before > 0 && before.saturating_add(n) > cap {
            self.used.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A command passed through to a remote target, waiting for its answer.
struct RemotePending {
    vring: Vring,
    queue: usize,
    head: u16,
    bufs: ChainBuffers,
    mem: Arc<GuestMemory>,
    key: u64,
    data_in_len: u64,
    write: bool,
    /// Bytes taken from the connection's budget.
    reserved: u64,
    /// The guest's data-in buffer, when the session receives into it.
    sink: Option<Arc<GuestSink>>,
    stats: Arc<LunStats>,
    started: Started,
}

type RemoteResult = Result<Completion, Failure>;
use super::sink::{GuestSink, GuestSource};
use crate::remote::{Completion, Data, Deferred, Failure, Request, Session, SinkRef, SourceRef};

/// Per request queue state, owned by that queue's thread.
pub struct Worker {
    /// Request queue number (0 = virtqueue 2).
    index: usize,
    eventfd: Arc<vmm_sys_util::eventfd::EventFd>,
    /// Created on first I/O, so idle queues cost no kernel ring.
    engine: Option<Engine>,
    /// Commands for remote sessions, sent once the virtqueue is read.
    to_send: Vec<(Arc<dyn Session>, Vec<Request>)>,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    in_flight: usize,
    reaped: Vec<(u64, i32)>,
    /// When the current round of the virtqueue started (the start time of
    /// the commands it takes, for their latency).
    round_start: Stamp,
    /// While reaping: when (one clock reading per batch of completions).
    reaped_at: Option<Stamp>,
    /// I/O completed during the round, whose latency ends with it.
    completed_in_round: Vec<(LunAddress, Started)>,
}

impl Worker {
    pub fn new(index: usize) -> io::Result<Worker> {
        Ok(Worker {
            index,
            eventfd: Arc::new(completion_eventfd()?),
            engine: None,
            to_send: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            reaped: Vec::new(),
            round_start: Stamp::now(),
            reaped_at: None,
            completed_in_round: Vec::new(),
        })
    }

    pub fn eventfd_raw(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }

    fn engine(&mut self) -> io::Result<&mut Engine> {
        if self.engine.is_none() {
            self.engine = Some(Engine::new(
                MAX_QUEUE_SIZE as u32,
                self.eventfd.as_raw_fd(),
            )?);
        }
        // The engine was created just above if it was missing.
        self.engine
            .as_mut()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
    }

    fn insert(&mut self, p: Pending) -> usize {
        self.in_flight += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i] = Some(p);
            i
        } else {
            self.slots.push(Some(p));
            self.slots.len() - 1
        }
    }

    fn take(&mut self, i: usize) -> Option<Pending> {
        let p = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.in_flight -= 1;
        Some(p)
    }
}

/// Data-out read lazily from guest memory, after the request header.
struct GuestDataOut<'a> {
    buf: &'a Buffer,
    mem: &'a GuestMemory,
}

impl DataOut for GuestDataOut<'_> {
    fn len(&self) -> usize {
        self.buf.len().saturating_sub(REQ_HEADER_LEN as u64) as usize
    }

    fn read_at(&mut self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        self.buf
            .read_at(self.mem, REQ_HEADER_LEN as u64 + offset as u64, buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

/// Write the response header (and nothing else) and return the chain.
fn respond(
    mem: &GuestMemory,
    vring: &Vring,
    head: u16,
    bufs: &ChainBuffers,
    header: &CmdResp,
    data_len: u64,
) {
    let used = match bufs.writable.write_at(mem, 0, header.as_slice()) {
        Ok(()) => RESP_HEADER_LEN as u64 + data_len,
        Err(_) => 0,
    };
    let used = u32::try_from(used).unwrap_or(u32::MAX);
    if let Err(e) = vring.add_used(head, used, &bufs.writable) {
        error!("Cannot return descriptor {head} to the used ring: {e}");
    }
}

impl ScsiBackend {
    pub(super) fn process_request_queue(&self, w: &mut Worker, vring: &Vring) {
        let Some(mem) = self.memory() else {
            return;
        };
        let mut used_any = false;
        // The controller's LUN map, taken once per round unless it changes
        // meanwhile; not kept past the round (a removed LUN's backstore
        // closes once no command uses it).
        let mut luns = crate::scsi::target::Cached::default();
        loop {
            if let Err(e) = vring.disable_notification() {
                self.guest_error(format_args!("Request queue {}: {e}", w.index));
                break;
            }
            let chains = match vring.pop_all(&mem) {
                Ok(c) => c,
                Err(e) => {
                    self.guest_error(format_args!("Request queue {}: {e}", w.index));
                    break;
                }
            };
            w.round_start = Stamp::now();
            for (head, bufs) in chains {
                used_any |= self.start_request(w, &mut luns, vring, &mem, head, bufs);
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
        // The guest learns of this round's completions now.
        if !w.completed_in_round.is_empty() {
            let now = Stamp::now();
            let map = self.inner.controller.target.cached(&mut luns);
            let mut last: Option<(LunAddress, &LunStats)> = None;
            for (addr, started) in w.completed_in_round.drain(..) {
                let stats = match last {
                    Some((a, st)) if a == addr => st,
                    _ => map.stats(addr),
                };
                stats.latency_local(started, now);
                last = Some((addr, stats));
            }
        }
        self.send_remote(w);
        if let Some(engine) = w.engine.as_mut() {
            if let Err(e) = engine.submit() {
                error!("Request queue {}: io_uring submit failed: {e}", w.index);
            }
        }
        if used_any {
            self.notify_request(w.index, vring);
        }
    }

    /// Handle one request; returns true if it completed at once.
    fn start_request(
        &self,
        w: &mut Worker,
        luns: &mut crate::scsi::target::Cached,
        vring: &Vring,
        mem: &Arc<GuestMemory>,
        head: u16,
        bufs: Result<ChainBuffers, crate::virtio::chain::Error>,
    ) -> bool {
        let bufs = match bufs {
            Ok(b) => b,
            Err(e) => {
                self.guest_error(format_args!("Request queue {}: {e}", w.index));
                let _ = vring.add_used(head, 0, &Buffer::default());
                return true;
            }
        };
        if bufs.writable.len() < RESP_HEADER_LEN as u64 {
            self.guest_error(format_args!(
                "Request queue {}: response buffer of {} bytes is too small",
                w.index,
                bufs.writable.len()
            ));
            let _ = vring.add_used(head, 0, &Buffer::default());
            return true;
        }
        let mut req = CmdReq::default();
        if let Err(e) = bufs.readable.read_at(mem, 0, req.as_mut_slice()) {
            self.guest_error(format_args!(
                "Request queue {}: bad request header: {e}",
                w.index
            ));
            let hdr = CmdResp::new(Response::Failure, 0, &[], 0);
            respond(mem, vring, head, &bufs, &hdr, 0);
            return true;
        }
        let addr = match VirtioLun::parse(&req.lun) {
            VirtioLun::BadTarget => {
                let hdr = CmdResp::new(Response::BadTarget, 0, &[], 0);
                respond(mem, vring, head, &bufs, &hdr, 0);
                return true;
            }
            VirtioLun::ReportLunsWellKnown => LunAddress::ReportLunsWellKnown,
            VirtioLun::Unsupported => LunAddress::Unsupported,
            VirtioLun::Target0 { b0, b1 } => LunAddress::from_first_level(b0, b1),
        };
        let data_in_len = bufs.writable.len() - RESP_HEADER_LEN as u64;
        let data_out_len = bufs.readable.len() - REQ_HEADER_LEN as u64;
        let key = self.inner.inflight.begin(w.index, addr, req.tag());

        if scsi::needs_exclusive_writes(&req.cdb) {
            // The command waits for in-flight writes to its blocks; ours can
            // only finish if we reap them first.
            self.drain_worker(w, vring);
        }
        let target = self.inner.controller.target.cached(luns);
        let stats = target.stats(addr);
        let started = stats.start(w.index, req.cdb[0], w.round_start);
        let mut dout = GuestDataOut {
            buf: &bufs.readable,
            mem,
        };
        let outcome = target.execute(
            addr,
            Command {
                cdb: &req.cdb,
                nexus: &self.inner.controller.nexus,
                data_out: &mut dout,
                data_in_len: usize::try_from(data_in_len).unwrap_or(usize::MAX),
            },
        );
        match outcome {
            Outcome::Remote(l) => self.start_remote(
                w,
                vring,
                mem,
                head,
                bufs,
                &req,
                l,
                key,
                data_in_len,
                data_out_len,
                (stats.clone(), started),
            ),
            Outcome::Done(resp) => {
                let n = (resp.data.len() as u64).min(data_in_len);
                let hdr = match self.inner.inflight.finish(w.index, key) {
                    Some(r) => {
                        stats.end_local(started, End::Transport);
                        CmdResp::new(r, 0, &[], data_in_len)
                    }
                    None => {
                        if bufs
                            .writable
                            .write_at(mem, RESP_HEADER_LEN as u64, &resp.data[..n as usize])
                            .is_err()
                        {
                            stats.end_local(started, End::Transport);
                            let hdr = CmdResp::new(Response::Failure, 0, &[], 0);
                            respond(mem, vring, head, &bufs, &hdr, 0);
                            return true;
                        }
                        stats.end_local(started, status_end(resp.status, &resp.sense, n));
                        CmdResp::new(Response::Ok, resp.status, &resp.sense, data_in_len - n)
                    }
                };
                respond(mem, vring, head, &bufs, &hdr, n);
                true
            }
            Outcome::Io(io) => {
                let lu = match addr {
                    LunAddress::Lun(l) => target.lu(l).cloned(),
                    _ => None,
                };
                let Some(lu) = lu else {
                    // The SCSI layer only asks for I/O on an existing LU.
                    stats.end_local(started, End::Transport);
                    self.inner.inflight.finish(w.index, key);
                    let hdr = CmdResp::new(Response::Failure, 0, &[], 0);
                    respond(mem, vring, head, &bufs, &hdr, 0);
                    return true;
                };
                self.submit_io(
                    w,
                    vring,
                    Pending {
                        head,
                        bufs,
                        mem: mem.clone(),
                        lu,
                        io,
                        lun: addr,
                        stats: None,
                        started,
                        iovecs: Vec::new(),
                        key,
                        data_in_len,
                        data_out_len,
                    },
                    stats,
                )
            }
        }
    }

    /// Send a command to the remote target serving LUN `l`; returns true if
    /// it had to complete at once.
    #[allow(clippy::too_many_arguments)]
    fn start_remote(
        &self,
        w: &mut Worker,
        vring: &Vring,
        mem: &Arc<GuestMemory>,
        head: u16,
        bufs: ChainBuffers,
        req: &CmdReq,
        l: u16,
        key: u64,
        data_in_len: u64,
        data_out_len: u64,
        (stats, started): (Arc<LunStats>, Started),
    ) -> bool {
        let fail = |bufs: &ChainBuffers, r: Response| {
            stats.end_local(started, End::Transport);
            self.inner.inflight.finish(w.index, key);
            respond(mem, vring, head, bufs, &CmdResp::new(r, 0, &[], 0), 0);
            true
        };
        // Descriptor lengths come from the guest: bound what is in flight
        // (and what a target may send back) before allocating anything.
        // The Expected Data Transfer Length sent to the target is the
        // guest's buffer size, so both directions are refused alike.
        if data_out_len.max(data_in_len) > MAX_PASSTHROUGH {
            self.guest_error(format_args!(
                "Request queue {}: {data_out_len}-byte data-out, {data_in_len}-byte data-in \
                 for a remote LUN (limit {MAX_PASSTHROUGH})",
                w.index
            ));
            return fail(&bufs, Response::Overrun);
        }
        let Some(remote) = self.inner.controller.remote.get(&l) else {
            return fail(&bufs, Response::Failure);
        };
        let reserved = data_out_len + data_in_len;
        if !self
            .inner
            .remote_budget
            .take(reserved, MAX_REMOTE_IN_FLIGHT)
        {
            // TASK SET FULL: the guest retries once commands complete.
            debug!(
                "Request queue {}: {MAX_REMOTE_IN_FLIGHT} bytes in flight to remote targets: \
                 TASK SET FULL",
                w.index
            );
            stats.end_local(started, status_end(Status::TaskSetFull as u8, &[], 0));
            self.inner.inflight.finish(w.index, key);
            let hdr = CmdResp::new(Response::Ok, Status::TaskSetFull as u8, &[], data_in_len);
            respond(mem, vring, head, &bufs, &hdr, 0);
            return true;
        }
        // Data moves between the socket and the guest's buffers with no
        // buffer of ours in between (small segments are copied once,
        // straight from or into guest memory; big ones not at all).
        let mut sink = None;
        let data = if data_out_len > 0 {
            let base = REQ_HEADER_LEN as u64;
            match GuestSource::new(mem, &bufs.readable, base, data_out_len as usize) {
                Some(src) => Data::WriteFrom(SourceRef(Arc::new(src))),
                None => {
                    self.inner.remote_budget.give(reserved);
                    return fail(&bufs, Response::Failure);
                }
            }
        } else if data_in_len > 0 {
            let base = RESP_HEADER_LEN as u64;
            let k = GuestSink::new(mem, &bufs.writable, base, data_in_len as usize);
            let Some(k) = k.map(Arc::new) else {
                self.inner.remote_budget.give(reserved);
                return fail(&bufs, Response::Failure);
            };
            sink = Some(k.clone());
            Data::ReadInto(SinkRef(k))
        } else {
            Data::None
        };
        let p = RemotePending {
            vring: vring.clone(),
            queue: w.index,
            head,
            bufs,
            mem: mem.clone(),
            key,
            data_in_len,
            write: data_out_len > 0,
            reserved,
            sink,
            stats,
            started,
        };
        let backend = self.clone();
        let r = Request {
            id: req.tag(),
            lun: remote.lun,
            cdb: req.cdb[..scsi::cdb_length(&req.cdb)].to_vec(),
            data,
            done: Box::new(move |r| backend.complete_remote(p, r)),
        };
        // Sent together after this round of the virtqueue (one write).
        match w.to_send.last_mut() {
            Some((s, v)) if s.id() == remote.session.id() => v.push(r),
            _ => w.to_send.push((remote.session.clone(), vec![r])),
        }
        false
    }

    /// Send the commands for remote LUNs gathered from the virtqueue.
    fn send_remote(&self, w: &mut Worker) {
        for (client, batch) in w.to_send.drain(..) {
            client.submit_all(batch);
        }
    }

    /// Complete a passed-through command, on the thread that learnt its
    /// outcome (a session's thread, or a worker receiving for it): the answer goes straight into
    /// guest memory and the used ring, with no hop through the worker.
    fn complete_remote(&self, p: RemotePending, r: RemoteResult) -> Option<Deferred> {
        if let Some(k) = &p.sink {
            // The buffer goes back to the guest: nothing more lands in it.
            k.close();
        }
        let (hdr, n) = match (self.inner.inflight.aborted(p.queue, p.key), r) {
            (Some(abort), _) => (CmdResp::new(abort, 0, &[], p.data_in_len), 0),
            (None, Err(Failure::Aborted)) => {
                (CmdResp::new(Response::Aborted, 0, &[], p.data_in_len), 0)
            }
            // Guests retry commands a reset ended (Linux: DID_RESET).
            (None, Err(Failure::Reset)) => {
                (CmdResp::new(Response::Reset, 0, &[], p.data_in_len), 0)
            }
            // Shutting down, or the target stayed unreachable past the
            // recovery timeout: a transport failure the guest may retry
            // elsewhere (another path) or report.
            (None, Err(_)) => (CmdResp::new(Response::TransportFailure, 0, &[], 0), 0),
            // Not completed at the target: let the guest retry.
            (None, Ok(c)) if c.response != 0 => {
                (CmdResp::new(Response::TransportFailure, 0, &[], 0), 0)
            }
            (None, Ok(c)) if c.placed > 0 => {
                // Received straight into the guest's buffer.
                let n = u64::from(c.placed).min(p.data_in_len);
                let resid = p.data_in_len - n;
                (CmdResp::new(Response::Ok, c.status, &c.sense, resid), n)
            }
            (None, Ok(c)) => {
                let n = (c.data.len() as u64).min(p.data_in_len);
                if n > 0
                    && p.bufs
                        .writable
                        .write_at(&p.mem, RESP_HEADER_LEN as u64, &c.data[..n as usize])
                        .is_err()
                {
                    (CmdResp::new(Response::Failure, 0, &[], 0), 0)
                } else {
                    let resid = if p.write {
                        c.residual.max(0) as u64
                    } else {
                        p.data_in_len - n
                    };
                    (CmdResp::new(Response::Ok, c.status, &c.sense, resid), n)
                }
            }
        };
        let moved = if p.write {
            p.reserved.saturating_sub(p.data_in_len)
        } else {
            n
        };
        p.stats.end_remote(p.started, end_of(&hdr, moved));
        respond(&p.mem, &p.vring, p.head, &p.bufs, &hdr, n);
        self.inner.remote_budget.give(p.reserved);
        // Only now: a device reset or GET_VRING_BASE waiting for the queue
        // to drain must not proceed while the used ring is being written.
        // (The notification below may then reach a stopped ring, which
        // ignores it.)
        self.inner.inflight.finish(p.queue, p.key);
        let (vring, queue, backend) = (p.vring, p.queue, self.clone());
        Some(Deferred {
            key: Arc::as_ptr(&self.inner) as usize + queue,
            run: Box::new(move || backend.notify_request(queue, &vring)),
        })
    }

    /// Start a block I/O; returns true if it had to complete at once.
    fn submit_io(
        &self,
        w: &mut Worker,
        vring: &Vring,
        mut p: Pending,
        stats: &Arc<LunStats>,
    ) -> bool {
        let (buf, base, avail) = match p.io.kind {
            IoKind::Read => (&p.bufs.writable, RESP_HEADER_LEN, p.data_in_len),
            IoKind::Write => (&p.bufs.readable, REQ_HEADER_LEN, p.data_out_len),
            IoKind::Flush => (&p.bufs.readable, REQ_HEADER_LEN, u64::MAX),
        };
        if p.io.len > avail {
            // The guest's buffer is smaller than the CDB's transfer length.
            self.guest_error(format_args!(
                "Request queue {}: {} bytes transfer into a {avail}-byte buffer",
                w.index, p.io.len
            ));
            self.finish_with(w, vring, p, Response::Overrun, stats);
            return true;
        }
        let route = p.lu.route();
        if route == Route::Discard {
            // Nothing to wait for: reads are zeros, writes vanish.
            let result = match p.io.kind {
                IoKind::Read => buf
                    .fill_zero(&p.mem, base as u64, p.io.len)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
                IoKind::Write | IoKind::Flush => Ok(()),
            };
            self.complete_io(w, vring, p, result, Some(stats));
            return true;
        }
        if p.io.kind != IoKind::Flush {
            match buf.iovecs(&p.mem, base as u64, p.io.len) {
                Ok(v) => p.iovecs = v,
                Err(e) => {
                    self.guest_error(format_args!("Request queue {}: {e}", w.index));
                    self.finish_with(w, vring, p, Response::Failure, stats);
                    return true;
                }
            }
        }
        let Route::Ring(fd) = route else {
            // A memory copy: do it now, straight between guest memory and
            // the backstore (no io_uring hand-off, still no bounce buffer).
            let result = inline_io(&p);
            self.complete_io(w, vring, p, result, Some(stats));
            return true;
        };
        let io = p.io;
        p.stats = Some(stats.clone());
        let slot = w.insert(p);
        let pushed = w.engine().map(|_| ()).and_then(|()| {
            let Worker { engine, slots, .. } = &mut *w;
            let iovecs = slots
                .get(slot)
                .and_then(|p| p.as_ref())
                .map_or(&[][..], |p| p.iovecs.as_slice());
            match engine.as_mut() {
                Some(engine) => engine.push(fd, &io, iovecs, slot as u64),
                None => Err(io::Error::from_raw_os_error(libc::EIO)),
            }
        });
        if let Err(e) = pushed {
            // No io_uring (or it refused): do the I/O synchronously.
            log::debug!(
                "Request queue {}: falling back to synchronous I/O: {e}",
                w.index
            );
            if let Some(p) = w.take(slot) {
                let result = sync_io(&p);
                self.complete_io(w, vring, p, result, None);
            }
            return true;
        }
        false
    }

    /// Complete a request that never reached the backstore.
    fn finish_with(
        &self,
        w: &mut Worker,
        vring: &Vring,
        p: Pending,
        r: Response,
        stats: &LunStats,
    ) {
        // Release the write range the SCSI layer registered.
        let _ = p.lu.complete_io(&p.io, Ok(()));
        stats.end_local(p.started, End::Transport);
        let r = self.inner.inflight.finish(w.index, p.key).unwrap_or(r);
        let hdr = CmdResp::new(r, 0, &[], 0);
        respond(&p.mem, vring, p.head, &p.bufs, &hdr, 0);
    }

    /// Complete a block I/O. `stats`: its LUN's statistics, if it did not
    /// go through the io_uring (which keeps them in the Pending).
    fn complete_io(
        &self,
        w: &mut Worker,
        vring: &Vring,
        p: Pending,
        result: io::Result<()>,
        stats: Option<&LunStats>,
    ) {
        let resp = p.lu.complete_io(&p.io, result);
        let (avail, moved) = match p.io.kind {
            IoKind::Read => (p.data_in_len, p.io.len),
            IoKind::Write => (p.data_out_len, p.io.len),
            IoKind::Flush => (p.data_in_len.max(p.data_out_len), 0),
        };
        let (hdr, data_len, end) = match self.inner.inflight.finish(w.index, p.key) {
            Some(r) => (CmdResp::new(r, 0, &[], avail), 0, End::Transport),
            None if resp.status == scsi::Status::Good as u8 => {
                let data_len = if p.io.kind == IoKind::Read { moved } else { 0 };
                let hdr = CmdResp::new(Response::Ok, resp.status, &[], avail - moved);
                (hdr, data_len, status_end(resp.status, &[], moved))
            }
            None => (
                CmdResp::new(Response::Ok, resp.status, &resp.sense, avail),
                0,
                status_end(resp.status, &resp.sense, 0),
            ),
        };
        respond(&p.mem, vring, p.head, &p.bufs, &hdr, data_len);
        let Some(stats) = stats.or(p.stats.as_deref()) else {
            return;
        };
        // Reaped: the batch's time; completed in a round: the round's end,
        // when the guest is told (one clock reading for each).
        match w.reaped_at {
            Some(now) => stats.end_local_at(p.started, end, now),
            None => {
                stats.count_local(p.started, end);
                w.completed_in_round.push((p.lun, p.started));
            }
        }
    }

    pub(super) fn process_completions(&self, w: &mut Worker, vring: &Vring) {
        let _ = w.eventfd.read();
        if self.reap(w, vring) {
            self.notify_request(w.index, vring);
        }
    }

    /// Complete every finished I/O; returns true if any completed.
    fn reap(&self, w: &mut Worker, vring: &Vring) -> bool {
        let mut reaped = std::mem::take(&mut w.reaped);
        if let Some(engine) = w.engine.as_mut() {
            engine.reap(&mut reaped);
        }
        let any = !reaped.is_empty();
        let outer = w.reaped_at;
        if any {
            w.reaped_at = Some(Stamp::now());
        }
        for (user_data, res) in reaped.drain(..) {
            let Some(p) = w.take(user_data as usize) else {
                continue;
            };
            let expected = if p.io.kind == IoKind::Flush {
                0
            } else {
                p.io.len
            };
            let result = if res >= 0 && res as u64 == expected {
                Ok(())
            } else if res >= 0
                || res == -libc::EINVAL
                || res == -libc::EAGAIN
                || res == -libc::EOPNOTSUPP
            {
                // Short transfer, or an iovec layout the backstore refused
                // (O_DIRECT alignment): redo it synchronously, whole.
                sync_io(&p)
            } else {
                Err(io::Error::from_raw_os_error(-res))
            };
            self.complete_io(w, vring, p, result, None);
        }
        w.reaped = reaped;
        w.reaped_at = outer;
        any
    }

    /// Complete everything this worker has in flight.
    fn drain_worker(&self, w: &mut Worker, vring: &Vring) {
        let mut any = false;
        while w.in_flight > 0 {
            let waited = match w.engine.as_mut() {
                Some(engine) => engine.submit_and_wait(),
                None => break,
            };
            if let Err(e) = waited {
                error!("Request queue {}: io_uring wait failed: {e}", w.index);
                break;
            }
            any |= self.reap(w, vring);
        }
        if any {
            self.notify_request(w.index, vring);
        }
    }
}

/// How a command that produced a SCSI status ended, for the statistics.
fn status_end(status: u8, sense: &[u8], bytes: u64) -> End {
    End::Status {
        status,
        sense_key: crate::stats::sense_key(sense),
        bytes,
    }
}

/// How a passed-through command ended, from the response header written
/// for it (`bytes` moved if it was GOOD).
fn end_of(hdr: &CmdResp, bytes: u64) -> End {
    if hdr.response != Response::Ok as u8 {
        return End::Transport;
    }
    status_end(hdr.status, hdr.sense(), bytes)
}

/// A read, write or flush done at once between the request's guest
/// buffers (`p.iovecs`, made by `submit_io`) and an inline backstore.
fn inline_io(p: &Pending) -> io::Result<()> {
    let store = p.lu.backstore();
    let write = match p.io.kind {
        IoKind::Flush => return store.flush(),
        kind => kind == IoKind::Write,
    };
    // SAFETY: p.iovecs point into guest memory that `p.mem` keeps mapped
    // for as long as the request lives; the guest gave these buffers to
    // this request and the device touches them nowhere else meanwhile.
    unsafe { store.vectored(write, &p.iovecs, p.io.offset, p.io.sync) }
}

/// Run a block I/O synchronously through a bounce buffer.
fn sync_io(p: &Pending) -> io::Result<()> {
    let len = usize::try_from(p.io.len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; len];
    let guest_err = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    match p.io.kind {
        IoKind::Read => {
            p.lu.run_io_sync(&p.io, &mut buf)?;
            p.bufs
                .writable
                .write_at(&p.mem, RESP_HEADER_LEN as u64, &buf)
                .map_err(guest_err)
        }
        IoKind::Write => {
            p.bufs
                .readable
                .read_at(&p.mem, REQ_HEADER_LEN as u64, &mut buf)
                .map_err(guest_err)?;
            p.lu.run_io_sync(&p.io, &mut buf)
        }
        IoKind::Flush => p.lu.run_io_sync(&p.io, &mut []),
    }
}

#[cfg(test)]
impl ScsiBackend {
    /// What a remote session's receiver does for a read of `data` (which a target
    /// sent) into request `head`'s data-in buffer: write it through the
    /// command's sink, then complete the command (tests).
    pub(super) fn complete_placed_for_test(
        &self,
        vring: &Vring,
        head: u16,
        bufs: ChainBuffers,
        data: &[u8],
    ) {
        use crate::remote::Sink;
        let mem = self.memory().expect("guest memory");
        let data_in_len = bufs.writable.len() - RESP_HEADER_LEN as u64;
        let sink = Arc::new(
            GuestSink::new(
                &mem,
                &bufs.writable,
                RESP_HEADER_LEN as u64,
                data_in_len as usize,
            )
            .expect("a mapped buffer"),
        );
        assert!(sink.write_at(0, data));
        let key = self.inner.inflight.begin(0, LunAddress::Lun(5), 1);
        let p = RemotePending {
            vring: vring.clone(),
            queue: 0,
            head,
            bufs,
            mem,
            key,
            data_in_len,
            write: false,
            reserved: 0,
            sink: Some(sink),
            stats: Default::default(),
            started: crate::stats::LunStats::default().start(0, 0x28, Stamp::now()),
        };
        let done = crate::remote::Completion {
            tag: 1,
            response: 0,
            status: 0,
            sense: Vec::new(),
            data: Vec::new(),
            placed: data.len() as u32,
            residual: 0,
        };
        if let Some(d) = self.complete_remote(p, Ok(done)) {
            (d.run)();
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::Budget;

    #[test]
    fn budget_admits_up_to_the_cap_and_always_one_command() {
        let b = Budget::default();
        assert!(b.take(100, 250));
        assert!(b.take(100, 250));
        assert!(!b.take(100, 250));
        b.give(100);
        assert!(b.take(150, 250));
        b.give(250);
        // Nothing taken: even a command over the cap goes.
        assert!(b.take(1000, 250));
        assert!(!b.take(1, 250));
        b.give(1000);
        assert!(b.take(1, 250));
    }
}
