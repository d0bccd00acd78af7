// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Virtqueue handling against real guest memory and mock split rings: each
//! test puts descriptor chains in the avail ring, runs the backend's queue
//! handler, and checks the used ring and the response bytes written back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::vhost::{Backend, DirtyLog, Rings};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::{Controller, ScsiBackend, Vring};
use crate::backstore::{Backstore, Fault, FileBackstore, MemoryBackstore, NullBackstore, Op};
use crate::scsi::{Identity, LogicalUnit, LuConfig, Nexus, Target};
use crate::virtio::{REQ_HEADER_LEN, RESP_HEADER_LEN};

const QUEUE_SIZE: u16 = 16;
const REQ_RING: u64 = 0x0;
const CTRL_RING: u64 = 0x4000;
const EVT_RING: u64 = 0x8000;
const HDR: u64 = 0x10000;
const DOUT: u64 = 0x11000;
const RESP: u64 = 0x20000;
const DIN: u64 = 0x21000;
const MEM_SIZE: usize = 0x800000;

struct Harness {
    /// Leaked so that the mock rings (which borrow it) can live here too;
    /// creating a mock ring resets it, so each is created once.
    mem: &'static GuestMemoryMmap<()>,
    mocks: [MockSplitQueue<'static, GuestMemoryMmap<()>>; 3],
    backend: ScsiBackend,
    log: Arc<DirtyLog>,
    req: Vring,
    ctrl: Vring,
    next_desc: [u16; 3],
    _file: tempfile::NamedTempFile,
    /// LUN 0's image with `Store::Image` (to make it fail).
    image: Arc<MemoryBackstore>,
}

/// A descriptor: guest address, length, device-writable.
type Desc = (u64, u32, bool);

fn vring(
    index: usize,
    atomic: &GuestMemoryAtomic<GuestMemoryMmap<()>>,
    log: &Arc<DirtyLog>,
    mock: &MockSplitQueue<GuestMemoryMmap<()>>,
) -> Vring {
    Vring::for_test(
        index,
        atomic.clone(),
        log.clone(),
        QUEUE_SIZE,
        mock.desc_table_addr().0,
        mock.avail_addr().0,
        mock.used_addr().0,
    )
}

/// Where LUN 0 lives: each is a different data path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// A file on tmpfs: I/O done inline with preadv2/pwritev2.
    Memory,
    /// A file on a disk filesystem: I/O through the worker's io_uring.
    Disk,
    /// The same with O_DIRECT: misaligned buffers are redone through a
    /// bounce buffer (synchronous I/O).
    DiskDirect,
    /// The null backstore: reads fill zeros.
    Null,
    /// An image in memory (`Harness::image`): inline I/O that can fail.
    Image,
}

impl Harness {
    fn new() -> Harness {
        Harness::build(Default::default(), Store::Memory)
    }

    fn with_coalescing(coalesce: super::coalesce::Policy) -> Harness {
        Harness::build(coalesce, Store::Memory)
    }

    fn on(store: Store) -> Harness {
        Harness::build(Default::default(), store)
    }

    fn build(coalesce: super::coalesce::Policy, store: Store) -> Harness {
        let dir = if store == Store::Memory {
            "/dev/shm"
        } else {
            "/var/tmp"
        };
        let file = tempfile::NamedTempFile::new_in(dir).unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(file.path(), &data).unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let image = Arc::new(MemoryBackstore::new(1 << 20));
        image.write_at(&data, 0).unwrap();
        let backstore: Arc<dyn Backstore> = match store {
            Store::Null => Arc::new(NullBackstore::new(1 << 20)),
            Store::Image => image.clone(),
            s => Arc::new(FileBackstore::open(file.path(), false, s == Store::DiskDirect).unwrap()),
        };
        let lu = Arc::new(LogicalUnit::new(
            backstore,
            LuConfig {
                block_size: 512,
                identity: Identity::derive("/mock"),
                pr_file: None,
                pr_state: Default::default(),
                reservations: true,
            },
        ));
        let controller = Arc::new(Controller {
            name: "mock".into(),
            // LUN 5 is passed through (to no session: commands that reach
            // the lookup fail with FAILURE).
            target: Target::with_remote(BTreeMap::from([(0, lu)]), vec![5]),
            nexus: Nexus {
                id: 1,
                path: 1,
                relative_port: 1,
                initiator: "iqn.2026-11.test:mock".into(),
            },
            request_queues: 1,
            coalesce,
            remote: Default::default(),
            problems: Controller::problem_limit(),
            connected: Default::default(),
        });
        let mem: &'static GuestMemoryMmap<()> = Box::leak(Box::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        ));
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let mocks = [
            MockSplitQueue::create(mem, GuestAddress(REQ_RING), QUEUE_SIZE),
            MockSplitQueue::create(mem, GuestAddress(CTRL_RING), QUEUE_SIZE),
            MockSplitQueue::create(mem, GuestAddress(EVT_RING), QUEUE_SIZE),
        ];
        // Off until a test starts it (`start_logging`).
        let log = Arc::new(DirtyLog::default());
        let ctrl = vring(0, &atomic, &log, &mocks[1]);
        let evt = vring(1, &atomic, &log, &mocks[2]);
        let req = vring(2, &atomic, &log, &mocks[0]);
        let rings = Arc::new(Rings::with_memory(
            vec![ctrl.clone(), evt.clone(), req.clone()],
            atomic,
            log.clone(),
        ));
        let backend = ScsiBackend::new(controller, rings).unwrap();
        Harness {
            mem,
            mocks,
            backend,
            log,
            req,
            ctrl,
            next_desc: [0, 0, 0],
            _file: file,
            image,
        }
    }

    /// Put one chain in the avail ring of the request (0), control (1) or
    /// event (2) queue.
    fn add_chain(&mut self, which: usize, descs: &[Desc]) {
        let mock = &self.mocks[which];
        let start = self.next_desc[which];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, start + i as u16 + 1))
            })
            .collect();
        mock.add_desc_chains(&raw, start).unwrap();
        self.next_desc[which] += descs.len() as u16;
    }

    /// Dirty page logging on, as QEMU starts it for a migration: a log
    /// covering guest memory, then LOG_ALL.
    fn start_logging(&self) {
        let bytes = (MEM_SIZE as u64) / crate::vhost::log::LOG_PAGE / 8;
        let f = crate::vhost::log::tests::memfd(bytes);
        self.log
            .set_base(&f, 0, bytes, &Default::default())
            .unwrap();
        self.log.set_wanted(true);
    }

    fn write_header(&self, lun: [u8; 8], tag: u64, cdb: &[u8]) {
        let mut h = [0u8; REQ_HEADER_LEN];
        h[0..8].copy_from_slice(&lun);
        h[8..16].copy_from_slice(&tag.to_le_bytes());
        h[19..19 + cdb.len()].copy_from_slice(cdb);
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn used(&self, which: usize) -> Vec<(u32, u32)> {
        let used = self.mocks[which].used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        (0..idx)
            .map(|i| {
                let e = used.unchecked_add(4 + 8 * u64::from(i));
                let id: u32 = self.mem.read_obj(e).unwrap();
                let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
                (id, len)
            })
            .collect()
    }

    /// Run the request queue until `n` chains are used (I/O completes
    /// asynchronously on the io_uring).
    fn run_requests(&self, n: usize) -> Vec<(u32, u32)> {
        {
            let mut w = self.backend.worker(0);
            self.backend.process_request_queue(&mut w, &self.req);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used(0).len() < n && Instant::now() < deadline {
            let mut w = self.backend.worker(0);
            self.backend.process_completions(&mut w, &self.req);
            drop(w);
            std::thread::sleep(Duration::from_millis(1));
        }
        self.used(0)
    }

    fn response(&self) -> [u8; RESP_HEADER_LEN] {
        let mut r = [0u8; RESP_HEADER_LEN];
        self.mem.read_slice(&mut r, GuestAddress(RESP)).unwrap();
        r
    }
}

const LUN0: [u8; 8] = [1, 0, 0, 0, 0, 0, 0, 0];

fn resid(r: &[u8]) -> u32 {
    u32::from_le_bytes([r[4], r[5], r[6], r[7]])
}

#[test]
fn inquiry_writes_data_and_response_with_residual() {
    let mut h = Harness::new();
    h.write_header(LUN0, 1, &[0x12, 0, 0, 0, 96, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DIN, 96, true),
        ],
    );
    let used = h.run_requests(1);
    assert_eq!(used, vec![(0, RESP_HEADER_LEN as u32 + 74)]);
    let r = h.response();
    assert_eq!((r[10], r[11]), (0x00, 0x00)); // GOOD, VIRTIO_SCSI_S_OK
    assert_eq!(resid(&r), 96 - 74);
    let vendor: [u8; 8] = {
        let mut v = [0u8; 8];
        h.mem.read_slice(&mut v, GuestAddress(DIN + 8)).unwrap();
        v
    };
    assert_eq!(&vendor, b"VUSCSI  ");
}

#[test]
fn a_busy_queue_notifies_after_the_delay_or_when_it_stops() {
    let mut h = Harness::with_coalescing(super::coalesce::Policy {
        delay: Duration::from_secs(1),
        depth: 1,
    });
    let (call, call_file) = crate::vhost::vring::tests::call_fd();
    h.req.set_call_for_test(Some(call_file));
    // A running ring's new call eventfd is signalled once (vhost/vring.rs).
    assert_eq!(call.read().unwrap(), 1);
    // A command stays in flight (as one at an iSCSI target would), so the
    // queue counts as busy.
    let busy = h
        .backend
        .inner
        .inflight
        .begin(0, crate::scsi::LunAddress::Lun(0), 99);
    let inquiry = |h: &mut Harness, tag: u64| {
        h.write_header(LUN0, tag, &[0x12, 0, 0, 0, 96, 0]);
        h.add_chain(
            0,
            &[
                (HDR, REQ_HEADER_LEN as u32, false),
                (RESP, RESP_HEADER_LEN as u32, true),
            ],
        );
        let mut w = h.backend.worker(0);
        h.backend.process_request_queue(&mut w, &h.req);
    };
    let timer_fires = |h: &Harness| {
        let mut p = libc::pollfd {
            fd: h.backend.inner.coalesce.timer_fd(0).unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 3000) }, 1, "timer");
        h.backend.handle_event(1, ScsiBackend::timer_event(0));
    };
    // Answered at once in the used ring; the notification waits.
    inquiry(&mut h, 1);
    assert_eq!(h.used(0).len(), 1);
    assert!(call.read().is_err(), "notified before the delay");
    // The worker's timer sends it.
    timer_fires(&h);
    assert_eq!(call.read().unwrap(), 1);
    // A held notification also goes out when the queue stops.
    inquiry(&mut h, 2);
    assert_eq!(h.used(0).len(), 2);
    assert!(call.read().is_err(), "notified before the delay");
    h.backend.inner.inflight.finish(0, busy);
    h.backend.stop_queue(2);
    assert_eq!(call.read().unwrap(), 1);
    // ... and only then: the timer has nothing left to send.
    timer_fires(&h);
    assert!(call.read().is_err(), "notified twice");
}

#[test]
fn read_goes_through_io_uring_into_guest_memory() {
    let mut h = Harness::new();
    // READ(10) LBA 1, 2 blocks, into two data-in descriptors.
    h.write_header(LUN0, 2, &[0x28, 0, 0, 0, 0, 1, 0, 0, 2, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DIN, 700, true),
            (DIN + 0x1000, 324, true),
        ],
    );
    let used = h.run_requests(1);
    assert_eq!(used, vec![(0, RESP_HEADER_LEN as u32 + 1024)]);
    let r = h.response();
    assert_eq!((r[10], r[11], resid(&r)), (0, 0, 0));
    let mut got = vec![0u8; 1024];
    h.mem
        .read_slice(&mut got[..700], GuestAddress(DIN))
        .unwrap();
    h.mem
        .read_slice(&mut got[700..], GuestAddress(DIN + 0x1000))
        .unwrap();
    let expected: Vec<u8> = (512..1536u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(got, expected);
}

#[test]
fn write_then_read_back_through_the_ring() {
    let mut h = Harness::new();
    let data = [0x5au8; 512];
    h.mem.write_slice(&data, GuestAddress(DOUT)).unwrap();
    h.write_header(LUN0, 3, &[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (DOUT, 512, false),
            (RESP, RESP_HEADER_LEN as u32, true),
        ],
    );
    assert_eq!(h.run_requests(1), vec![(0, RESP_HEADER_LEN as u32)]);
    assert_eq!(h.response()[10], 0);
    h.write_header(LUN0, 4, &[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DIN, 512, true),
        ],
    );
    h.run_requests(2);
    let mut got = [0u8; 512];
    h.mem.read_slice(&mut got, GuestAddress(DIN)).unwrap();
    assert_eq!(got, data);
}

#[test]
fn readable_descriptor_after_writable_returns_chain_unused() {
    let mut h = Harness::new();
    h.write_header(LUN0, 5, &[0x00]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DOUT, 16, false),
        ],
    );
    assert_eq!(h.run_requests(1), vec![(0, 0)]);
}

#[test]
fn response_buffer_smaller_than_108_bytes_returns_chain_unused() {
    let mut h = Harness::new();
    h.write_header(LUN0, 6, &[0x00]);
    h.add_chain(0, &[(HDR, REQ_HEADER_LEN as u32, false), (RESP, 50, true)]);
    assert_eq!(h.run_requests(1), vec![(0, 0)]);
}

#[test]
fn truncated_request_header_gets_response_failure() {
    let mut h = Harness::new();
    h.add_chain(0, &[(HDR, 20, false), (RESP, RESP_HEADER_LEN as u32, true)]);
    assert_eq!(h.run_requests(1), vec![(0, RESP_HEADER_LEN as u32)]);
    assert_eq!(h.response()[11], 9); // VIRTIO_SCSI_S_FAILURE
}

#[test]
fn data_in_outside_guest_memory_gets_response_failure_and_queue_keeps_working() {
    let mut h = Harness::new();
    h.write_header(LUN0, 7, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (MEM_SIZE as u64 - 16, 512, true),
        ],
    );
    assert_eq!(h.run_requests(1), vec![(0, RESP_HEADER_LEN as u32)]);
    assert_eq!(h.response()[11], 9);
    h.write_header(LUN0, 8, &[0x00, 0, 0, 0, 0, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
        ],
    );
    assert_eq!(h.run_requests(2).len(), 2);
}

#[test]
fn huge_data_out_for_a_remote_lun_is_refused_before_buffering() {
    let mut h = Harness::new();
    h.write_header(
        [1, 0, 0, 5, 0, 0, 0, 0],
        13,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
    );
    // 36 MiB of data-out: nine 4 MiB descriptors over the same guest pages.
    let mut chain = vec![(HDR, REQ_HEADER_LEN as u32, false)];
    chain.extend(std::iter::repeat_n((DOUT, 4 << 20, false), 9));
    chain.push((RESP, RESP_HEADER_LEN as u32, true));
    h.add_chain(0, &chain);
    assert_eq!(h.run_requests(1), vec![(0, RESP_HEADER_LEN as u32)]);
    assert_eq!(h.response()[11], 1); // VIRTIO_SCSI_S_OVERRUN
}

#[test]
fn huge_data_in_for_a_remote_lun_is_refused() {
    let mut h = Harness::new();
    h.write_header(
        [1, 0, 0, 5, 0, 0, 0, 0],
        15,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
    );
    let mut chain = vec![
        (HDR, REQ_HEADER_LEN as u32, false),
        (RESP, RESP_HEADER_LEN as u32, true),
    ];
    chain.extend(std::iter::repeat_n((DOUT, 4 << 20, true), 9));
    h.add_chain(0, &chain);
    assert_eq!(h.run_requests(1), vec![(0, RESP_HEADER_LEN as u32)]);
    assert_eq!(h.response()[11], 1); // VIRTIO_SCSI_S_OVERRUN
}

#[test]
fn remote_lun_without_a_session_gets_failure() {
    let mut h = Harness::new();
    h.write_header([1, 0, 0, 5, 0, 0, 0, 0], 14, &[0x00, 0, 0, 0, 0, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
        ],
    );
    h.run_requests(1);
    assert_eq!(h.response()[11], 9); // VIRTIO_SCSI_S_FAILURE
}

#[test]
fn other_target_gets_bad_target() {
    let mut h = Harness::new();
    h.write_header([1, 5, 0, 0, 0, 0, 0, 0], 9, &[0x12, 0, 0, 0, 36, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
        ],
    );
    h.run_requests(1);
    assert_eq!(h.response()[11], 3); // VIRTIO_SCSI_S_BAD_TARGET
}

#[test]
fn read_into_too_small_buffer_gets_overrun() {
    let mut h = Harness::new();
    h.write_header(LUN0, 10, &[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DIN, 512, true),
        ],
    );
    h.run_requests(1);
    assert_eq!(h.response()[11], 1); // VIRTIO_SCSI_S_OVERRUN
}

#[test]
fn read_past_capacity_gets_check_condition_with_sense() {
    let mut h = Harness::new();
    // READ(10) LBA 0x800 (capacity is 2048 blocks).
    h.write_header(LUN0, 11, &[0x28, 0, 0, 0, 0x08, 0, 0, 0, 1, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DIN, 512, true),
        ],
    );
    h.run_requests(1);
    let r = h.response();
    assert_eq!((r[10], r[11]), (0x02, 0)); // CHECK CONDITION, S_OK
    assert_eq!(u32::from_le_bytes([r[0], r[1], r[2], r[3]]), 18);
    assert_eq!((r[12 + 2], r[12 + 12]), (0x05, 0x21));
    assert_eq!(resid(&r), 512);
}

fn tmf(h: &mut Harness, subtype: u32) -> u8 {
    let mut req = [0u8; 24];
    req[4..8].copy_from_slice(&subtype.to_le_bytes());
    req[8..16].copy_from_slice(&LUN0);
    h.mem.write_slice(&req, GuestAddress(HDR)).unwrap();
    h.add_chain(1, &[(HDR, 24, false), (RESP, 1, true)]);
    h.backend.process_control_queue(&h.ctrl);
    let mut r = [0u8; 1];
    h.mem.read_slice(&mut r, GuestAddress(RESP)).unwrap();
    r[0]
}

#[test]
fn abort_task_for_unknown_tag_is_function_complete() {
    let mut h = Harness::new();
    assert_eq!(tmf(&mut h, 0), 0);
    assert_eq!(h.used(1), vec![(0, 1)]);
}

#[test]
fn clear_aca_is_rejected() {
    let mut h = Harness::new();
    assert_eq!(tmf(&mut h, 2), 11); // FUNCTION_REJECTED
}

#[test]
fn logical_unit_reset_completes_and_sets_unit_attention() {
    let mut h = Harness::new();
    let c = h.backend.controller().clone();
    h.backend.attach();
    c.target.lu(0).unwrap().take_ua(c.nexus.id);
    assert_eq!(tmf(&mut h, 5), 0);
    h.write_header(LUN0, 12, &[0x00, 0, 0, 0, 0, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
        ],
    );
    h.run_requests(1);
    let r = h.response();
    assert_eq!(
        (r[10], r[12 + 2], r[12 + 12], r[12 + 13]),
        (0x02, 0x06, 0x29, 0x03)
    );
}

#[test]
fn an_query_reports_no_events() {
    let mut h = Harness::new();
    let mut req = [0u8; 16];
    req[0] = 1; // VIRTIO_SCSI_T_AN_QUERY
    req[4..12].copy_from_slice(&LUN0);
    h.mem.write_slice(&req, GuestAddress(HDR)).unwrap();
    h.mem.write_slice(&[0xff; 5], GuestAddress(RESP)).unwrap();
    h.add_chain(1, &[(HDR, 16, false), (RESP, 5, true)]);
    h.backend.process_control_queue(&h.ctrl);
    let mut r = [0u8; 5];
    h.mem.read_slice(&mut r, GuestAddress(RESP)).unwrap();
    assert_eq!(r, [0, 0, 0, 0, 0]);
    assert_eq!(h.used(1), vec![(0, 5)]);
}

/// Where the event queue's buffer lies.
const EVT: u64 = 0x30000;

/// A harness whose driver gave one 16-byte event buffer (and accepted
/// parameter change events if `change`), with the event queue's kick seen
/// by thread 0.
fn event_harness(change: bool) -> Harness {
    use virtio_bindings::virtio_scsi::VIRTIO_SCSI_F_CHANGE;
    let mut h = Harness::new();
    if change {
        h.backend.acked_features(1 << VIRTIO_SCSI_F_CHANGE);
    }
    h.add_chain(2, &[(EVT, 16, true)]);
    h
}

#[test]
fn a_target_unit_attention_event_becomes_a_param_change_event_for_the_guest() {
    let mut h = event_harness(true);
    // Capacity data has changed (2Ah/09h) on LUN 5.
    h.backend.post_param_change(5, 0x2a, 0x09);
    assert_eq!(h.used(2), vec![(0, 16)]);
    let mut e = [0u8; 16];
    h.mem.read_slice(&mut e, GuestAddress(EVT)).unwrap();
    assert_eq!(e, [3, 0, 0, 0, 1, 0, 0, 5, 0, 0, 0, 0, 0x2a, 0x09, 0, 0]);
    // No buffer: the event is missed, and the next one says so.
    h.backend.post_param_change(5, 0x2a, 0x09);
    h.add_chain(2, &[(EVT, 16, true)]);
    h.backend.post_param_change(300, 0x3f, 0x03);
    assert_eq!(h.used(2).len(), 2);
    h.mem.read_slice(&mut e, GuestAddress(EVT)).unwrap();
    assert_eq!(
        e,
        [3, 0, 0, 0x80, 1, 0, 0x41, 44, 0, 0, 0, 0, 0x3f, 0x03, 0, 0]
    );
}

#[test]
fn no_param_change_event_unless_the_driver_accepted_them() {
    let h = event_harness(false);
    h.backend.post_param_change(5, 0x2a, 0x09);
    assert!(h.used(2).is_empty());
}

/// A null logical unit of 1 MiB.
fn null_lu() -> Arc<LogicalUnit> {
    Arc::new(LogicalUnit::new(
        Arc::new(NullBackstore::new(1 << 20)),
        LuConfig {
            block_size: 512,
            identity: Identity::derive("/hotplug"),
            pr_file: None,
            pr_state: Default::default(),
            reservations: true,
        },
    ))
}

/// A connected harness whose driver accepted hot-plug events (and gave one
/// event buffer if `buffer`).
fn hotplug_harness(buffer: bool) -> Harness {
    use virtio_bindings::virtio_scsi::VIRTIO_SCSI_F_HOTPLUG;
    let mut h = Harness::new();
    h.backend.acked_features(1 << VIRTIO_SCSI_F_HOTPLUG);
    if buffer {
        h.add_chain(2, &[(EVT, 16, true)]);
    }
    h.backend.controller().clone().connect(&h.backend);
    h
}

fn event(h: &Harness) -> [u8; 16] {
    let mut e = [0u8; 16];
    h.mem.read_slice(&mut e, GuestAddress(EVT)).unwrap();
    e
}

#[test]
fn a_lun_added_while_connected_gets_a_rescan_event_and_a_unit_attention() {
    let h = hotplug_harness(true);
    let c = h.backend.controller().clone();
    c.add_lun(2, super::Lun::Local(null_lu()));
    assert_eq!(h.used(2), vec![(0, 16)]);
    // TRANSPORT_RESET (1), LUN 2 of target 0, reason RESCAN (1).
    assert_eq!(event(&h), [1, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0, 0]);
    // LUN 0's nexus: power on (from the connection), then REPORTED LUNS
    // DATA HAS CHANGED (3Fh/0Eh).
    let lu0 = c.target.lu(0).unwrap();
    assert_eq!(
        lu0.take_ua(c.nexus.id),
        Some(crate::scsi::Sense::POWER_ON_RESET_OCCURRED)
    );
    let ua = lu0.take_ua(c.nexus.id).unwrap();
    assert_eq!((ua.asc, ua.ascq), (0x3f, 0x0e));
    assert!(c.target.has_lun(2));
}

#[test]
fn a_removed_lun_gets_a_removed_event_and_later_commands_lun_not_supported() {
    let mut h = hotplug_harness(true);
    let c = h.backend.controller().clone();
    assert!(matches!(c.remove_lun(0), Some(super::Lun::Local(_))));
    // TRANSPORT_RESET (1), LUN 0, reason REMOVED (2).
    assert_eq!(event(&h), [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
    // TEST UNIT READY to the gone LUN: LOGICAL UNIT NOT SUPPORTED (25h).
    h.write_header(LUN0, 12, &[0, 0, 0, 0, 0, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
        ],
    );
    h.run_requests(1);
    let r = h.response();
    assert_eq!((r[10], r[11]), (0x02, 0));
    assert_eq!((r[12 + 2], r[12 + 12]), (0x05, 0x25));
    assert!(c.remove_lun(0).is_none());
}

#[test]
fn an_event_with_no_buffer_is_reported_missed_when_buffers_come() {
    let mut h = hotplug_harness(false);
    let c = h.backend.controller().clone();
    c.add_lun(3, super::Lun::Local(null_lu()));
    assert!(h.used(2).is_empty());
    // The driver adds a buffer: NO_EVENT with EVENTS_MISSED (bit 31).
    h.add_chain(2, &[(EVT, 16, true)]);
    let evt = h
        .backend
        .inner
        .rings
        .get(crate::virtio::EVENT_QUEUE)
        .unwrap()
        .clone();
    h.backend.handle_queue(0, &evt);
    assert_eq!(h.used(2), vec![(0, 16)]);
    assert_eq!(
        event(&h),
        [0, 0, 0, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn a_resize_is_a_capacity_change_event_and_unit_attention() {
    use virtio_bindings::virtio_scsi::{VIRTIO_SCSI_F_CHANGE, VIRTIO_SCSI_F_HOTPLUG};
    let mut h = Harness::on(Store::Null);
    h.backend
        .acked_features((1 << VIRTIO_SCSI_F_CHANGE) | (1 << VIRTIO_SCSI_F_HOTPLUG));
    h.add_chain(2, &[(EVT, 16, true)]);
    let c = h.backend.controller().clone();
    c.connect(&h.backend);
    let lu = c.target.lu(0).unwrap();
    let _ = lu.take_ua(c.nexus.id);
    assert_eq!(lu.resize(Some(4 << 20)).unwrap(), 8192);
    c.lun_changed(0, crate::scsi::Sense::CAPACITY_DATA_HAS_CHANGED);
    // PARAM_CHANGE (3), LUN 0, reason 2Ah | 09h << 8.
    assert_eq!(
        event(&h),
        [3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x2a, 0x09, 0, 0]
    );
    let ua = lu.take_ua(c.nexus.id).unwrap();
    assert_eq!((ua.asc, ua.ascq), (0x2a, 0x09));
    c.disconnect();
    assert!(!c.is_connected());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn desc() -> impl Strategy<Value = Desc> {
        (
            prop_oneof![
                8 => 0x10000u64..(MEM_SIZE as u64 - 0x2000),
                1 => (MEM_SIZE as u64 - 0x100)..(MEM_SIZE as u64 + 0x1000),
                1 => Just(u64::MAX - 10),
            ],
            prop_oneof![0u32..200, 0u32..0x2000, Just(u32::MAX)],
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// Arbitrary chains (any order of directions, addresses inside and
        /// outside guest memory, absurd lengths) with arbitrary header bytes:
        /// every chain is returned to the used ring exactly once and the
        /// backend never panics.
        #[test]
        fn any_chain_is_returned_exactly_once(
            descs in proptest::collection::vec(desc(), 1..6),
            header in proptest::collection::vec(any::<u8>(), REQ_HEADER_LEN),
        ) {
            let mut h = Harness::new();
            let mut hdr = header;
            hdr[0] = 1;
            hdr[1] = 0;
            h.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
            let mut chain = vec![(HDR, REQ_HEADER_LEN as u32, false)];
            chain.extend(descs);
            h.add_chain(0, &chain);
            let used = h.run_requests(1);
            prop_assert_eq!(used.len(), 1);
        }
    }
}

// --- Dirty page logging: every path that writes guest memory marks it ---

/// The data-in region of a READ(10) of 2 blocks (1024 bytes) at `din`, its
/// response at RESP: run it with logging on and return the pages marked
/// among those of the response, the data and an untouched page.
fn read_with_logging(h: &mut Harness, din: u64) -> (bool, bool, bool, bool) {
    h.start_logging();
    h.write_header(LUN0, 7, &[0x28, 0, 0, 0, 0, 1, 0, 0, 2, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (din, 1024, true),
        ],
    );
    let used = h.run_requests(1);
    assert_eq!(used, vec![(0, RESP_HEADER_LEN as u32 + 1024)]);
    assert_eq!(h.response()[10..12], [0, 0], "GOOD, OK");
    let used_ring = h.mocks[0].used_addr().0;
    (
        h.log.is_marked(RESP),
        h.log.is_marked(din),
        h.log.is_marked(used_ring),
        // The request header page was only read.
        h.log.is_marked(HDR),
    )
}

#[test]
fn logging_marks_data_read_inline_from_a_memory_file() {
    let mut h = Harness::on(Store::Memory);
    assert_eq!(read_with_logging(&mut h, DIN), (true, true, true, false));
}

#[test]
fn logging_marks_data_read_through_io_uring() {
    let mut h = Harness::on(Store::Disk);
    assert_eq!(read_with_logging(&mut h, DIN), (true, true, true, false));
    // It came from the file, through the ring.
    let mut got = [0u8; 4];
    h.mem.read_slice(&mut got, GuestAddress(DIN)).unwrap();
    assert_eq!(
        got,
        [
            (512 % 251) as u8,
            (513 % 251) as u8,
            (514 % 251) as u8,
            (515 % 251) as u8
        ]
    );
}

#[test]
fn logging_marks_data_read_through_the_bounce_buffer() {
    // O_DIRECT refuses a buffer that is not 512-byte aligned: the read is
    // redone synchronously and copied into guest memory.
    let mut h = Harness::on(Store::DiskDirect);
    assert_eq!(
        read_with_logging(&mut h, DIN + 3),
        (true, true, true, false)
    );
    let mut got = [0u8; 1];
    h.mem.read_slice(&mut got, GuestAddress(DIN + 3)).unwrap();
    assert_eq!(got[0], (512 % 251) as u8);
}

#[test]
fn logging_marks_zeros_of_the_null_backstore() {
    let mut h = Harness::on(Store::Null);
    h.mem.write_slice(&[0xff; 16], GuestAddress(DIN)).unwrap();
    assert_eq!(read_with_logging(&mut h, DIN), (true, true, true, false));
}

#[test]
fn logging_marks_emulated_replies() {
    let mut h = Harness::new();
    h.start_logging();
    h.write_header(LUN0, 1, &[0x12, 0, 0, 0, 96, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DIN, 96, true),
        ],
    );
    h.run_requests(1);
    assert!(h.log.is_marked(RESP) && h.log.is_marked(DIN));
}

#[test]
fn logging_marks_task_management_responses_and_events() {
    let mut h = Harness::new();
    h.start_logging();
    // A LOGICAL UNIT RESET on the control queue.
    let mut tmf = [0u8; 24];
    tmf[4] = 5; // subtype LUN reset
    tmf[8..16].copy_from_slice(&LUN0);
    h.mem.write_slice(&tmf, GuestAddress(HDR)).unwrap();
    h.add_chain(1, &[(HDR, 24, false), (RESP, 1, true)]);
    h.backend.process_control_queue(&h.ctrl);
    assert!(h.log.is_marked(RESP));
    assert!(h.log.is_marked(h.mocks[1].used_addr().0));
    // A parameter change event on the event queue.
    h.backend
        .acked_features(1 << virtio_bindings::virtio_scsi::VIRTIO_SCSI_F_CHANGE);
    h.add_chain(2, &[(EVT, 16, true)]);
    assert!(!h.log.is_marked(EVT));
    h.backend.post_param_change(0, 0x2a, 0x09);
    assert!(h.log.is_marked(EVT));
    assert!(h.log.is_marked(h.mocks[2].used_addr().0));
}

#[test]
fn logging_marks_data_an_iscsi_target_placed_in_guest_buffers() {
    // The initiator's receiver writes Data-In straight into the guest's
    // buffer through the command's sink, then completes the command.
    let mut h = Harness::new();
    h.start_logging();
    h.write_header(LUN0, 9, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DIN + 0x4000, 512, true),
        ],
    );
    let mem = h.backend.memory().unwrap();
    let (head, bufs) = h.req.pop_all(&mem).unwrap().pop().unwrap();
    let bufs = bufs.unwrap();
    h.backend
        .complete_placed_for_test(&h.req, head, bufs, &[0xab; 512]);
    let mut got = [0u8; 1];
    h.mem
        .read_slice(&mut got, GuestAddress(DIN + 0x4000))
        .unwrap();
    assert_eq!(got[0], 0xab);
    assert!(h.log.is_marked(DIN + 0x4000));
    assert!(h.log.is_marked(RESP));
    assert!(h.log.is_marked(h.mocks[0].used_addr().0));
}

#[test]
fn nothing_is_marked_once_the_front_end_stops_logging() {
    let mut h = Harness::on(Store::Disk);
    h.start_logging();
    h.log.set_wanted(false);
    h.write_header(LUN0, 7, &[0x28, 0, 0, 0, 0, 1, 0, 0, 2, 0]);
    h.add_chain(
        0,
        &[
            (HDR, REQ_HEADER_LEN as u32, false),
            (RESP, RESP_HEADER_LEN as u32, true),
            (DIN, 1024, true),
        ],
    );
    h.run_requests(1);
    assert!(!h.log.is_on());
    assert!(!h.log.is_marked(RESP) && !h.log.is_marked(DIN));
}

// --- A failing disk: the guest gets the sense, the device goes on ---

/// Run one command on LUN 0 with `dout` as its data-out buffer (if not
/// empty) and a 512-byte data-in buffer; return the response header.
fn one_command(h: &mut Harness, tag: u64, cdb: &[u8], dout: &[u8]) -> [u8; RESP_HEADER_LEN] {
    h.write_header(LUN0, tag, cdb);
    h.mem.write_slice(dout, GuestAddress(DOUT)).unwrap();
    let mut chain = vec![(HDR, REQ_HEADER_LEN as u32, false)];
    if !dout.is_empty() {
        chain.push((DOUT, dout.len() as u32, false));
    }
    chain.push((RESP, RESP_HEADER_LEN as u32, true));
    chain.push((DIN, 512, true));
    h.add_chain(0, &chain);
    let before = h.used(0).len();
    assert_eq!(h.run_requests(before + 1).len(), before + 1, "answered");
    h.response()
}

/// Sense key, ASC, ASCQ and INFORMATION of a fixed-format sense in a
/// response header (virtio-scsi: sense from byte 12).
fn fixed_sense(r: &[u8; RESP_HEADER_LEN]) -> (u8, u8, u8, u32) {
    let s = &r[12..];
    assert_eq!(s[0] & 0x7f, 0x70, "fixed format");
    let info = u32::from_be_bytes([s[3], s[4], s[5], s[6]]);
    (s[2] & 0x0f, s[12], s[13], info)
}

const READ10_LBA2: [u8; 10] = [0x28, 0, 0, 0, 0, 2, 0, 0, 1, 0];
const WRITE10_LBA3: [u8; 10] = [0x2a, 0, 0, 0, 0, 3, 0, 0, 1, 0];

#[test]
fn a_read_error_on_the_disk_is_a_medium_error_at_its_lba_and_the_retry_reads() {
    let mut h = Harness::on(Store::Image);
    h.image
        .fail(Fault::new(Op::Read, 1024..1025, libc::EIO).times(1));
    let r = one_command(&mut h, 1, &READ10_LBA2, &[]);
    assert_eq!((r[10], r[11]), (0x02, 0), "CHECK CONDITION, transport OK");
    // SBC-4 4.15: MEDIUM ERROR, UNRECOVERED READ ERROR, the LBA in
    // INFORMATION (VALID set).
    assert_eq!(fixed_sense(&r), (0x03, 0x11, 0x00, 2));
    assert_eq!(r[12] & 0x80, 0x80, "VALID");
    // The fault was spent: the guest's retry gets the data.
    let r = one_command(&mut h, 2, &READ10_LBA2, &[]);
    assert_eq!((r[10], r[11]), (0, 0));
    let mut got = [0u8; 2];
    h.mem.read_slice(&mut got, GuestAddress(DIN)).unwrap();
    assert_eq!(got, [(1024 % 251) as u8, (1025 % 251) as u8]);
}

#[test]
fn a_full_thin_pool_is_space_allocation_failed_and_writes_nothing() {
    let mut h = Harness::on(Store::Image);
    h.image
        .fail(Fault::new(Op::Write, 0..u64::MAX, libc::ENOSPC));
    let r = one_command(&mut h, 1, &WRITE10_LBA3, &[0xee; 512]);
    assert_eq!(r[10], 0x02);
    // SBC-4 4.7.3.6: DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT.
    assert_eq!(fixed_sense(&r), (0x07, 0x27, 0x07, 0));
    let mut back = [0u8; 512];
    h.image.read_at(&mut back, 3 * 512).unwrap();
    assert_ne!(back, [0xee; 512]);
    h.image.heal();
    let r = one_command(&mut h, 2, &WRITE10_LBA3, &[0xee; 512]);
    assert_eq!((r[10], r[11]), (0, 0));
    h.image.read_at(&mut back, 3 * 512).unwrap();
    assert_eq!(back, [0xee; 512]);
}

#[test]
fn a_cache_that_cannot_be_flushed_fails_synchronize_cache_and_fua_writes() {
    let mut h = Harness::on(Store::Image);
    let (_, writes_before, flushes_before) = h.image.counts();
    h.image.fail(Fault::new(Op::Flush, 0..u64::MAX, libc::EIO));
    // SYNCHRONIZE CACHE(10): MEDIUM ERROR, WRITE ERROR.
    let r = one_command(&mut h, 1, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(fixed_sense(&r), (0x03, 0x0c, 0x00, 0));
    // WRITE(10) with FUA: the data is not durable, so the write fails at
    // its LBA.
    let mut fua = WRITE10_LBA3;
    fua[1] = 0x08;
    let r = one_command(&mut h, 2, &fua, &[0x11; 512]);
    assert_eq!(fixed_sense(&r), (0x03, 0x0c, 0x00, 3));
    // A write without FUA only reaches the cache: it succeeds.
    let r = one_command(&mut h, 3, &WRITE10_LBA3, &[0x22; 512]);
    assert_eq!((r[10], r[11]), (0, 0));
    // Both writes reached the image; the flushes of SYNCHRONIZE CACHE and
    // of the FUA write were tried.
    let (_, writes, flushes) = h.image.counts();
    assert_eq!((writes - writes_before, flushes - flushes_before), (2, 2));
}
