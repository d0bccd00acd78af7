// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vhost-user-scsi bench`: a load generator that plays QEMU's part against
//! any vhost-user-scsi backend. It negotiates features, shares memory (a
//! memfd), sets up the control, event and N request queues, finds the LUN
//! (REPORT LUNS, READ CAPACITY(16)) and drives READ/WRITE commands from one
//! thread per queue, then reports IOPS, bandwidth, latency percentiles and
//! the backend's CPU time per I/O. Requests look like a Linux guest's: the
//! LUN in flat space addressing (`linux_lun`), READ/WRITE(10) where they
//! fit (`cdb`).

mod cdb;
pub mod hostile;
mod ring;
mod stats;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::virtio::{linux_lun, CmdReq, CmdResp, Response, REQ_HEADER_LEN, RESP_HEADER_LEN};
pub use cdb::CdbSize;
use cdb::RwCdb;
use ring::{DriverQueue, DESC_F_NEXT, DESC_F_WRITE};
pub use stats::Report;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user {step} failed")]
    Protocol {
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("Backend offers {offered} queues; {wanted} needed")]
    TooFewQueues { offered: u64, wanted: u64 },
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What to read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    RandRead,
    RandWrite,
    RandRw,
    Read,
    Write,
    Rw,
}

impl Pattern {
    pub fn parse(s: &str) -> Option<Pattern> {
        Some(match s {
            "randread" => Pattern::RandRead,
            "randwrite" => Pattern::RandWrite,
            "randrw" => Pattern::RandRw,
            "read" => Pattern::Read,
            "write" => Pattern::Write,
            "rw" => Pattern::Rw,
            _ => return None,
        })
    }

    fn random(self) -> bool {
        matches!(
            self,
            Pattern::RandRead | Pattern::RandWrite | Pattern::RandRw
        )
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    pub lun: u16,
    pub block_size: u32,
    pub queue_depth: u16,
    pub queues: u16,
    pub pattern: Pattern,
    /// Percentage of reads in the mixed patterns.
    pub read_pct: u8,
    pub duration: Option<Duration>,
    pub ios: Option<u64>,
    pub verify: bool,
    pub backend_pid: Option<u32>,
    /// Limit the LBA range to the first N bytes (0: whole LUN).
    pub span: u64,
    pub progress: bool,
    /// End the run by closing the connection while the last commands are
    /// still in flight, as a killed front-end would (for testing backends).
    pub drop_in_flight: bool,
    /// READ/WRITE(10) or (16).
    pub cdb: CdbSize,
}

/// Request queue descriptors: 3 per command (header, data, response).
fn ring_size(qd: u16) -> u16 {
    (3 * u32::from(qd)).next_power_of_two().clamp(8, 1024) as u16
}

/// Memory layout: per queue a 64 KiB ring area, then per request slot a
/// 4 KiB header/response page and the data buffer.
const RING_STRIDE: u64 = 64 << 10;
const SLOT_META: u64 = 4096;
const RESP_OFF: u64 = 512;

struct Layout {
    rings: u64,
    slot_stride: u64,
    total: u64,
}

impl Layout {
    fn new(queues: u16, qd: u16, bs: u32) -> Layout {
        let rings = RING_STRIDE * (2 + u64::from(queues));
        let slot_stride = SLOT_META + u64::from(bs).next_multiple_of(4096);
        let total = rings + slot_stride * u64::from(qd) * u64::from(queues);
        Layout {
            rings,
            slot_stride,
            total: total.next_multiple_of(2 << 20),
        }
    }

    fn ring(&self, q: usize) -> u64 {
        RING_STRIDE * q as u64
    }

    fn slot(&self, queue: usize, qd: u16, slot: u16) -> u64 {
        self.rings + self.slot_stride * (queue as u64 * u64::from(qd) + u64::from(slot))
    }
}

fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"vhost-user-scsi-bench".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size)?;
    Ok(f)
}

fn proto(step: &'static str) -> impl Fn(vhost::Error) -> Error {
    move |source| Error::Protocol { step, source }
}

/// A connected, configured device.
struct Device {
    _frontend: Frontend,
    mem: GuestMemoryMmap<()>,
    layout: Layout,
    queues: Vec<DriverQueue>,
}

fn connect(o: &Options) -> Result<Device, Error> {
    let total_queues = 2 + u64::from(o.queues);
    let mut fe = Frontend::connect(&o.socket, total_queues).map_err(|source| Error::Connect {
        path: o.socket.clone(),
        source,
    })?;
    fe.set_owner().map_err(proto("SET_OWNER"))?;
    let offered = fe.get_features().map_err(proto("GET_FEATURES"))?;
    let mut want = (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let event_idx = offered & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
    if event_idx {
        want |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    if offered & want != want {
        return Err(Error::Setup(format!(
            "backend features {offered:#x} lack VERSION_1 or PROTOCOL_FEATURES"
        )));
    }
    let pf = fe
        .get_protocol_features()
        .map_err(proto("GET_PROTOCOL_FEATURES"))?;
    let use_pf = pf & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
    fe.set_protocol_features(use_pf)
        .map_err(proto("SET_PROTOCOL_FEATURES"))?;
    if use_pf.contains(VhostUserProtocolFeatures::MQ) {
        let n = fe.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
        if n < total_queues {
            return Err(Error::TooFewQueues {
                offered: n,
                wanted: total_queues,
            });
        }
    } else if total_queues > 3 {
        return Err(Error::Setup("backend has no MQ: use --queues 1".into()));
    }
    fe.set_features(want).map_err(proto("SET_FEATURES"))?;

    let layout = Layout::new(o.queues, o.queue_depth, o.block_size);
    let file = memfd(layout.total)?;
    let fd = file.as_raw_fd();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        layout.total as usize,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(|e| Error::Setup(format!("cannot map shared memory: {e}")))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| Error::Setup(format!("no host address: {e}")))? as u64;
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: layout.total,
        userspace_addr: host,
        mmap_offset: 0,
        mmap_handle: fd,
    }])
    .map_err(proto("SET_MEM_TABLE"))?;

    let mut queues = Vec::new();
    for q in 0..total_queues as usize {
        let size = if q < 2 { 8 } else { ring_size(o.queue_depth) };
        let base = layout.ring(q);
        let desc = base;
        let avail = base + ring::desc_size(size);
        let used = (avail + ring::avail_size(size)).next_multiple_of(4);
        let dq = DriverQueue::new(mem.clone(), size, desc, avail, used, event_idx)?;
        fe.set_vring_num(q, size).map_err(proto("SET_VRING_NUM"))?;
        fe.set_vring_addr(
            q,
            &VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: host + desc,
                used_ring_addr: host + used,
                avail_ring_addr: host + avail,
                log_addr: None,
            },
        )
        .map_err(proto("SET_VRING_ADDR"))?;
        fe.set_vring_base(q, 0).map_err(proto("SET_VRING_BASE"))?;
        fe.set_vring_call(q, &dq.call)
            .map_err(proto("SET_VRING_CALL"))?;
        fe.set_vring_kick(q, &dq.kick)
            .map_err(proto("SET_VRING_KICK"))?;
        fe.set_vring_enable(q, true)
            .map_err(proto("SET_VRING_ENABLE"))?;
        queues.push(dq);
    }
    // Without REPLY_ACK nothing says the backend has enabled the rings
    // when the first kick comes, and a backend that reads the kick first
    // can lose the request. The backend handles messages in order, so the
    // answer to a GET_FEATURES says it has (QEMU does the same, commit
    // "vhost-user: call VHOST_USER_SET_VRING_ENABLE synchronously").
    if !use_pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        fe.get_features().map_err(proto("GET_FEATURES"))?;
    }
    Ok(Device {
        _frontend: fe,
        mem,
        layout,
        queues,
    })
}

/// A command to put in a slot: `len` bytes of data-out (`write`) or data-in.
#[derive(Clone, Copy)]
struct Cmd<'a> {
    lun: u16,
    tag: u64,
    cdb: &'a [u8],
    len: u32,
    write: bool,
}

/// One request slot: where its header, response and data live.
#[derive(Clone, Copy)]
struct Slot {
    head: u16,
    meta: u64,
    data: u64,
}

impl Slot {
    fn new(layout: &Layout, queue: usize, qd: u16, i: u16) -> Slot {
        let meta = layout.slot(queue, qd, i);
        Slot {
            head: 3 * i,
            meta,
            data: meta + SLOT_META,
        }
    }

    /// Write header and descriptors for a command.
    fn prepare(&self, mem: &GuestMemoryMmap<()>, q: &DriverQueue, c: &Cmd) -> io::Result<()> {
        let Cmd {
            lun,
            tag,
            cdb,
            len,
            write,
        } = *c;
        let h = CmdReq::new(linux_lun(0, lun), tag, cdb);
        mem.write_obj(h, GuestAddress(self.meta))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let (hd, d1, d2) = (self.head, self.head + 1, self.head + 2);
        let hdr_len = REQ_HEADER_LEN as u32;
        let resp_len = RESP_HEADER_LEN as u32;
        let resp = self.meta + RESP_OFF;
        if len == 0 {
            q.set_desc(hd, self.meta, hdr_len, DESC_F_NEXT, d1)?;
            q.set_desc(d1, resp, resp_len, DESC_F_WRITE, 0)?;
        } else if write {
            q.set_desc(hd, self.meta, hdr_len, DESC_F_NEXT, d1)?;
            q.set_desc(d1, self.data, len, DESC_F_NEXT, d2)?;
            q.set_desc(d2, resp, resp_len, DESC_F_WRITE, 0)?;
        } else {
            q.set_desc(hd, self.meta, hdr_len, DESC_F_NEXT, d1)?;
            q.set_desc(d1, resp, resp_len, DESC_F_WRITE | DESC_F_NEXT, d2)?;
            q.set_desc(d2, self.data, len, DESC_F_WRITE, 0)?;
        }
        Ok(())
    }

    /// The response header of the completed command.
    fn result(&self, mem: &GuestMemoryMmap<()>) -> io::Result<CmdResp> {
        mem.read_obj(GuestAddress(self.meta + RESP_OFF))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Whether the completed command succeeded (VIRTIO_SCSI_S_OK and
    /// GOOD): its `status` and `response` bytes only, the load loop's
    /// question (the whole header is 108 bytes).
    fn succeeded(&self, mem: &GuestMemoryMmap<()>) -> io::Result<bool> {
        const STATUS: u64 = std::mem::offset_of!(CmdResp, status) as u64;
        const _: () = assert!(std::mem::offset_of!(CmdResp, response) as u64 == STATUS + 1);
        let [status, response]: [u8; 2] = mem
            .read_obj(GuestAddress(self.meta + RESP_OFF + STATUS))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(response == Response::Ok as u8 && status == 0)
    }
}

/// Run one command synchronously on request queue 0 (discovery), retrying
/// unit attentions.
fn command(dev: &mut Device, lun: u16, cdb: &[u8], len: u32) -> Result<Vec<u8>, Error> {
    let slot = Slot::new(&dev.layout, 0, 1, 0);
    for _ in 0..8 {
        let q = &mut dev.queues[2];
        let c = Cmd {
            lun,
            tag: 1,
            cdb,
            len,
            write: false,
        };
        slot.prepare(&dev.mem, q, &c)?;
        q.push(slot.head)?;
        q.publish()?;
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Setup(format!("no answer to CDB {:02x}", cdb[0])));
            }
            q.harvest(&mut done)?;
            if done.is_empty() && q.arm()? {
                q.wait(100, dev._frontend.as_raw_fd())?;
            }
        }
        let r = slot.result(&dev.mem)?;
        if r.response != Response::Ok as u8 {
            return Err(Error::Setup(format!(
                "CDB {:02x}: virtio response {}",
                cdb[0], r.response
            )));
        }
        let (status, key) = (r.status, crate::stats::sense_key(r.sense()));
        match (status, key) {
            (0, _) => {
                let mut d = vec![0u8; len as usize];
                dev.mem
                    .read_slice(&mut d, GuestAddress(slot.data))
                    .map_err(|e| Error::Setup(e.to_string()))?;
                return Ok(d);
            }
            (2, 6) => continue, // UNIT ATTENTION: retry
            _ => {
                return Err(Error::Setup(format!(
                    "CDB {:02x}: status {status:#x}, sense key {key:#x}",
                    cdb[0]
                )))
            }
        }
    }
    Err(Error::Setup("unit attentions did not clear".into()))
}

/// Fill `buf` with the verification pattern of `lba` (one u64 pair per 16
/// bytes: the LBA of the 512-byte sector and a seed).
fn pattern(buf: &mut [u8], lba: u64, bs: u32, seed: u64) {
    for (i, chunk) in buf.chunks_exact_mut(16).enumerate() {
        let sector = lba * u64::from(bs / 512) + (i as u64 * 16) / 512;
        chunk[..8].copy_from_slice(&sector.to_le_bytes());
        chunk[8..].copy_from_slice(&seed.to_le_bytes());
    }
}

/// xorshift64*: fast, good enough to pick LBAs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Per-queue counters visible to the progress printer.
#[derive(Default)]
struct Live {
    ios: AtomicU64,
    bytes: AtomicU64,
}

/// Run the benchmark.
pub fn run(o: &Options) -> Result<Report, Error> {
    let mut dev = connect(o)?;
    // Discovery: the LUN must exist; find its capacity.
    let luns = command(
        &mut dev,
        o.lun,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        256,
    )?;
    let n = u32::from_be_bytes([luns[0], luns[1], luns[2], luns[3]]) as usize / 8;
    let listed = (0..n.min(31)).any(|i| {
        let l = &luns[8 + 8 * i..16 + 8 * i];
        (u16::from(l[0] & 0x3f) << 8 | u16::from(l[1])) == o.lun
    });
    if !listed {
        return Err(Error::Setup(format!(
            "LUN {} is not reported by the backend",
            o.lun
        )));
    }
    let cap = command(
        &mut dev,
        o.lun,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        32,
    )?;
    let blocks = u64::from_be_bytes(cap[0..8].try_into().unwrap_or_default()) + 1;
    let lbs = u32::from_be_bytes(cap[8..12].try_into().unwrap_or_default());
    if lbs == 0 || o.block_size % lbs != 0 {
        return Err(Error::Setup(format!(
            "I/O size {} is not a multiple of the LUN's {lbs}-byte blocks",
            o.block_size
        )));
    }
    let per_io = u64::from(o.block_size / lbs);
    let mut span_blocks = blocks;
    if o.span > 0 {
        span_blocks = span_blocks.min(o.span / u64::from(lbs));
    }
    let units = span_blocks / per_io;
    if units < u64::from(o.queue_depth) * u64::from(o.queues) {
        return Err(Error::Setup(
            "the LUN (or --span) is too small for this load".into(),
        ));
    }
    let cdb = o
        .cdb
        .for_lun(blocks, (units - 1) * per_io, per_io)
        .map_err(Error::Setup)?;

    let stop = AtomicBool::new(false);
    let remaining = AtomicU64::new(o.ios.unwrap_or(u64::MAX));
    let live: Vec<Live> = (0..o.queues).map(|_| Live::default()).collect();
    let cpu_before = o.backend_pid.map(stats::cpu_time).transpose()?;
    let self_before = stats::cpu_time(std::process::id())?;
    let Device {
        _frontend: frontend,
        mem,
        layout,
        queues,
    } = dev;
    let start = Instant::now();
    let mut results = Vec::new();
    std::thread::scope(|s| -> Result<(), Error> {
        let mut handles = Vec::new();
        for (qi, q) in queues.into_iter().skip(2).enumerate() {
            let mut w = Worker {
                o,
                backend: frontend.as_raw_fd(),
                qi,
                q,
                mem: mem.clone(),
                slots: (0..o.queue_depth)
                    .map(|i| Slot::new(&layout, qi, o.queue_depth, i))
                    .collect(),
                units,
                per_io,
                lbs,
                cdb,
                stop: &stop,
                remaining: &remaining,
                live: &live[qi],
                rng: Rng(
                    0x9e37_79b9_7f4a_7c15 ^ (qi as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1)
                ),
                seq_unit: (units / u64::from(o.queues)) * qi as u64,
                state: vec![SlotState::default(); usize::from(o.queue_depth)],
                tag: 0,
                buf: vec![0u8; o.block_size as usize],
                expect: vec![0u8; o.block_size as usize],
                res: stats::QueueResult::default(),
            };
            handles.push(s.spawn(move || w.run()));
        }
        let mut last = (Instant::now(), 0u64, 0u64);
        // A count of I/Os and no progress line: nothing to watch meanwhile.
        let watch = o.duration.is_some() || o.progress;
        while watch && handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if o.duration.is_some_and(|d| start.elapsed() >= d) {
                stop.store(true, Ordering::Relaxed);
            }
            if o.progress && last.0.elapsed() >= Duration::from_secs(1) {
                let ios: u64 = live.iter().map(|l| l.ios.load(Ordering::Relaxed)).sum();
                let bytes: u64 = live.iter().map(|l| l.bytes.load(Ordering::Relaxed)).sum();
                let dt = last.0.elapsed().as_secs_f64();
                eprint!(
                    "\r[{:>4.0}s] {:>10.0} IOPS {:>9.1} MiB/s   ",
                    start.elapsed().as_secs_f64(),
                    (ios - last.1) as f64 / dt,
                    (bytes - last.2) as f64 / dt / 1048576.0
                );
                last = (Instant::now(), ios, bytes);
            }
        }
        if o.progress {
            eprintln!();
        }
        for h in handles {
            results.push(
                h.join()
                    .map_err(|_| Error::Setup("worker panicked".into()))??,
            );
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    let backend_cpu = match (o.backend_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(stats::cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    let own_cpu = stats::cpu_time(std::process::id())?.saturating_sub(self_before);
    drop(frontend);
    Ok(Report::new(o, results, elapsed, backend_cpu, own_cpu))
}

#[derive(Clone, Copy)]
struct SlotState {
    started: Instant,
    lba: u64,
    write: bool,
    /// Verify mode: the seed written into the pattern of this slot's blocks.
    seed: u64,
}

impl Default for SlotState {
    fn default() -> SlotState {
        SlotState {
            started: Instant::now(),
            lba: 0,
            write: false,
            seed: 0,
        }
    }
}

/// One request queue's load: QD slots, each reissued as it completes.
struct Worker<'a> {
    o: &'a Options,
    /// The vhost-user socket (to notice the backend hanging up).
    backend: RawFd,
    qi: usize,
    q: DriverQueue,
    mem: GuestMemoryMmap<()>,
    slots: Vec<Slot>,
    units: u64,
    per_io: u64,
    lbs: u32,
    cdb: CdbSize,
    stop: &'a AtomicBool,
    remaining: &'a AtomicU64,
    live: &'a Live,
    rng: Rng,
    seq_unit: u64,
    state: Vec<SlotState>,
    tag: u64,
    buf: Vec<u8>,
    expect: Vec<u8>,
    res: stats::QueueResult,
}

fn mem_err(e: vm_memory::GuestMemoryError) -> Error {
    Error::Setup(format!("shared memory access: {e}"))
}

impl Worker<'_> {
    /// Start a command in slot `i`: the verify read-back of its last write,
    /// or a new I/O (unless the run is over). Returns whether it started.
    fn issue(&mut self, i: usize, verify_read: bool) -> Result<bool, Error> {
        let o = self.o;
        if !verify_read {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let took = self
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1));
            if took.is_err() {
                return Ok(false);
            }
        }
        let (unit, write) = if o.verify {
            // Each slot owns a stripe, so a read-back cannot race a write.
            let stripe = (self.units / (u64::from(o.queue_depth) * u64::from(o.queues))).max(1);
            let base = (self.qi as u64 * u64::from(o.queue_depth) + i as u64) * stripe;
            if verify_read {
                (self.state[i].lba / self.per_io, false)
            } else {
                (base + self.rng.next() % stripe, true)
            }
        } else {
            let unit = if o.pattern.random() {
                self.rng.next() % self.units
            } else {
                self.seq_unit = (self.seq_unit + 1) % self.units;
                self.seq_unit
            };
            let write = match o.pattern {
                Pattern::RandRead | Pattern::Read => false,
                Pattern::RandWrite | Pattern::Write => true,
                Pattern::RandRw | Pattern::Rw => (self.rng.next() % 100) as u8 >= o.read_pct,
            };
            (unit, write)
        };
        let lba = unit * self.per_io;
        self.tag += 1;
        let slot = self.slots[i];
        let st = &mut self.state[i];
        st.lba = lba;
        st.write = write;
        st.started = Instant::now();
        if write && o.verify {
            st.seed = self.tag;
            pattern(&mut self.buf, lba, self.lbs, self.tag);
            self.mem
                .write_slice(&self.buf, GuestAddress(slot.data))
                .map_err(mem_err)?;
        }
        // per_io is at most 32 MiB / 512 (the --bs limit).
        let cdb = RwCdb::new(self.cdb, write, lba, self.per_io as u32)
            .ok_or_else(|| Error::Setup(format!("no {:?} CDB for LBA {lba}", self.cdb)))?;
        let c = Cmd {
            lun: o.lun,
            tag: self.tag,
            cdb: cdb.as_slice(),
            len: o.block_size,
            write,
        };
        slot.prepare(&self.mem, &self.q, &c)?;
        self.q.push(slot.head)?;
        Ok(true)
    }

    fn run(&mut self) -> Result<stats::QueueResult, Error> {
        let qd = usize::from(self.o.queue_depth);
        let mut in_flight = 0usize;
        for i in 0..qd {
            if self.issue(i, false)? {
                in_flight += 1;
            }
        }
        self.q.publish()?;
        let mut done = Vec::with_capacity(qd);
        while in_flight > 0 {
            if self.o.drop_in_flight
                && (self.stop.load(Ordering::Relaxed)
                    || self.remaining.load(Ordering::Relaxed) == 0)
            {
                // Everything is issued: leave with commands in flight.
                break;
            }
            done.clear();
            self.q.harvest(&mut done)?;
            if done.is_empty() {
                if self.q.arm()? {
                    self.q.wait(50, self.backend)?;
                }
                continue;
            }
            let now = Instant::now();
            for &(id, _len) in &done {
                let i = (id / 3) as usize;
                let Some(slot) = self.slots.get(i).copied() else {
                    return Err(Error::Setup(format!(
                        "backend returned unknown descriptor {id}"
                    )));
                };
                in_flight -= 1;
                let ok = slot.succeeded(&self.mem)?;
                self.res
                    .record(now.duration_since(self.state[i].started), ok);
                if ok {
                    self.live.ios.fetch_add(1, Ordering::Relaxed);
                    self.live
                        .bytes
                        .fetch_add(u64::from(self.o.block_size), Ordering::Relaxed);
                }
                let mut verify_read = false;
                if self.o.verify && ok {
                    if self.state[i].write {
                        verify_read = true;
                    } else {
                        self.mem
                            .read_slice(&mut self.buf, GuestAddress(slot.data))
                            .map_err(mem_err)?;
                        pattern(
                            &mut self.expect,
                            self.state[i].lba,
                            self.lbs,
                            self.state[i].seed,
                        );
                        if self.buf != self.expect {
                            self.res.verify_failures += 1;
                        }
                    }
                }
                if self.issue(i, verify_read)? {
                    in_flight += 1;
                }
            }
            self.q.publish()?;
        }
        self.res.notifications = self.q.notifications;
        Ok(std::mem::take(&mut self.res))
    }
}
