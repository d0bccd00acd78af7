// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A hostile front-end: connects to a vhost-user-scsi back-end as QEMU
//! would, and misbehaves as a broken or malicious QEMU or guest could
//! (vhost-user.rst and the virtio spec say what is allowed; everything here
//! is not). Between cases, a well-behaved front-end must be served: the
//! back-end may refuse, answer errors or close the connection, but never
//! crash, hang or stop serving. With the back-end's PID, its descriptors
//! and threads are compared before and after.
//!
//! Messages are built by hand (not through the `vhost` crate's front-end,
//! which checks what it sends) so that any field can be wrong.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::ring::{self, DriverQueue, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{single_level_lun, CmdReq, REQ_HEADER_LEN, RESP_HEADER_LEN};

/// vhost-user request codes (vhost-user.rst, "Front-end message types").
mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const RESET_DEVICE: u32 = 34;
    pub const ADD_MEM_REG: u32 = 37;
}

const VERSION: u32 = 1;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_VERSION_1: u64 = 1 << 32;
const F_LOG_ALL: u64 = 1 << 26;
const PF_LOG_SHMFD: u64 = 1 << 1;
const PF_INFLIGHT: u64 = 1 << 12;
const PF_MEM_SLOTS: u64 = 1 << 15;
const PF_RESET: u64 = 1 << 13;

/// Guest memory of the hostile front-end.
const MEM: u64 = 4 << 20;
const RING_SIZE: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("The back-end stopped serving after case '{case}'")]
    Dead {
        case: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("The back-end held {what} {before} before and {after} after")]
    Leak {
        what: &'static str,
        before: usize,
        after: usize,
    },
    #[error("Setting up the hostile front-end")]
    Setup(#[source] io::Error),
}

#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    /// Times every case runs.
    pub rounds: u32,
    /// Stop starting rounds after this long.
    pub duration: Option<Duration>,
    /// The back-end's PID: compare its descriptors and threads.
    pub backend_pid: Option<u32>,
    /// Only the cases whose name contains this.
    pub only: Option<String>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub rounds: u32,
    pub connections: u64,
    pub cases: u64,
    /// Descriptors and threads of the back-end before and after, if known.
    pub fds: Option<(usize, usize)>,
    pub threads: Option<(usize, usize)>,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} round(s), {} case(s), {} hostile connection(s) in {:.1} s; \
             the back-end served a well-behaved front-end after each case",
            self.rounds,
            self.cases,
            self.connections,
            self.elapsed.as_secs_f64()
        )?;
        if let (Some(fd), Some(th)) = (self.fds, self.threads) {
            write!(
                f,
                "; descriptors {} -> {}, threads {} -> {}",
                fd.0, fd.1, th.0, th.1
            )?;
        }
        Ok(())
    }
}

/// A memory region as SET_MEM_TABLE describes it: guest address, size,
/// front-end address, offset in its file.
type Region = (u64, u64, u64, u64);

/// A raw vhost-user connection.
struct Raw {
    s: UnixStream,
}

impl Raw {
    fn connect(path: &Path) -> io::Result<Raw> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Raw { s })
    }

    /// Send `req` with `payload` and `fds` (SCM_RIGHTS) as one message.
    fn send_raw(&mut self, header: [u32; 3], payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(12 + payload.len());
        for w in header {
            buf.extend_from_slice(&w.to_le_bytes());
        }
        buf.extend_from_slice(payload);
        if fds.is_empty() {
            return self.s.write_all(&buf);
        }
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let fd_bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        let mut cbuf = vec![0u64; space.div_ceil(8)];
        // SAFETY: msghdr is plain data; the fields that matter are set.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds one header of CMSG_SPACE bytes;
        // CMSG_FIRSTHDR points into it, CMSG_DATA past its header, and
        // `fd_bytes` fit there by construction.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(self.s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if (n as usize) < buf.len() {
            self.s.write_all(&buf[n as usize..])?;
        }
        Ok(())
    }

    fn send(&mut self, req: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        self.send_raw([req, VERSION, payload.len() as u32], payload, fds)
    }

    fn send_u64(&mut self, req: u32, v: u64) -> io::Result<()> {
        self.send(req, &v.to_le_bytes(), &[])
    }

    /// A reply's payload.
    fn reply(&mut self) -> io::Result<Vec<u8>> {
        let mut h = [0u8; 12];
        self.s.read_exact(&mut h)?;
        let size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let mut p = vec![0u8; size.min(4096)];
        self.s.read_exact(&mut p)?;
        Ok(p)
    }

    fn get_u64(&mut self, req: u32) -> io::Result<u64> {
        self.send(req, &[], &[])?;
        let p = self.reply()?;
        let b: [u8; 8] = p
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Negotiate as QEMU does; returns the features acked.
    fn negotiate(&mut self, extra_pf: u64) -> io::Result<u64> {
        self.send(req::SET_OWNER, &[], &[])?;
        let offered = self.get_u64(req::GET_FEATURES)?;
        let pf = self.get_u64(req::GET_PROTOCOL_FEATURES)?;
        self.send_u64(req::SET_PROTOCOL_FEATURES, pf & (1 | extra_pf))?;
        let want = offered & (F_VERSION_1 | F_PROTOCOL_FEATURES);
        self.send_u64(req::SET_FEATURES, want)?;
        Ok(want)
    }

    fn vring_state(&mut self, req: u32, index: u32, num: u32) -> io::Result<()> {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&num.to_le_bytes());
        self.send(req, &p, &[])
    }

    fn vring_addr(&mut self, index: u32, desc: u64, used: u64, avail: u64) -> io::Result<()> {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&0u32.to_le_bytes()); // flags
        for a in [desc, used, avail, 0u64] {
            p.extend_from_slice(&a.to_le_bytes());
        }
        self.send(req::SET_VRING_ADDR, &p, &[])
    }

    fn mem_table(&mut self, regions: &[Region], fds: &[RawFd]) -> io::Result<()> {
        let mut p = (regions.len() as u32).to_le_bytes().to_vec();
        p.extend_from_slice(&0u32.to_le_bytes());
        for &(gpa, size, ua, off) in regions {
            for v in [gpa, size, ua, off] {
                p.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.send(req::SET_MEM_TABLE, &p, fds)
    }
}

fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: memfd_create with a NUL-terminated name; checked below.
    let fd = unsafe { libc::memfd_create(c"vus-hostile".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size)?;
    Ok(f)
}

/// A connection set up like QEMU's, with one request queue running over
/// shared memory: the base for the cases that misbehave on the rings.
struct Device {
    raw: Raw,
    mem: GuestMemoryMmap<()>,
    _file: File,
    host: u64,
    q: DriverQueue,
}

/// Where things are in the hostile front-end's memory.
const RINGS: u64 = 0x10000;
const DATA: u64 = 0x100000;

impl Device {
    fn new(path: &Path) -> io::Result<Device> {
        let mut raw = Raw::connect(path)?;
        raw.negotiate(0)?;
        let file = memfd(MEM)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM as usize,
            Some(vm_memory::FileOffset::new(file.try_clone()?, 0)),
        )])
        .map_err(|e| io::Error::other(e.to_string()))?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| io::Error::other(e.to_string()))? as u64;
        raw.mem_table(&[(0, MEM, host, 0)], &[file.as_raw_fd()])?;
        // Request queue 0 (virtqueue 2) only.
        let (desc, avail) = (RINGS, RINGS + ring::desc_size(RING_SIZE));
        let used = (avail + ring::avail_size(RING_SIZE)).next_multiple_of(4);
        let q = DriverQueue::new(mem.clone(), RING_SIZE, desc, avail, used, false)?;
        raw.vring_state(req::SET_VRING_NUM, 2, u32::from(RING_SIZE))?;
        raw.vring_addr(2, host + desc, host + used, host + avail)?;
        raw.vring_state(req::SET_VRING_BASE, 2, 0)?;
        raw.send(
            req::SET_VRING_CALL,
            &2u64.to_le_bytes(),
            &[q.call.as_raw_fd()],
        )?;
        raw.send(
            req::SET_VRING_KICK,
            &2u64.to_le_bytes(),
            &[q.kick.as_raw_fd()],
        )?;
        raw.vring_state(req::SET_VRING_ENABLE, 2, 1)?;
        Ok(Device {
            raw,
            mem,
            _file: file,
            host,
            q,
        })
    }

    /// A READ(16) of one 512-byte block at `lba` into DATA + `slot` * 4 KiB,
    /// as a 3-descriptor chain at `head`.
    fn read_at(&self, head: u16, slot: u64, lba: u64) -> io::Result<()> {
        let meta = DATA + 0x10000 + slot * 0x1000;
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[13] = 1;
        let h = CmdReq::new(single_level_lun(0, 0), 0, &cdb);
        self.mem
            .write_obj(h, GuestAddress(meta))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let hl = REQ_HEADER_LEN as u32;
        let rl = RESP_HEADER_LEN as u32;
        self.q.set_desc(head, meta, hl, DESC_F_NEXT, head + 1)?;
        self.q.set_desc(
            head + 1,
            meta + 512,
            rl,
            DESC_F_WRITE | DESC_F_NEXT,
            head + 2,
        )?;
        self.q
            .set_desc(head + 2, DATA + slot * 0x1000, 512, DESC_F_WRITE, 0)
    }

    fn push(&mut self, heads: &[u16]) -> io::Result<()> {
        for &h in heads {
            self.q.push(h)?;
        }
        self.q.publish()?;
        self.q.kick.write(1)
    }

    /// Completions within `timeout` (at least `n` of them, or what came).
    fn completions(&mut self, n: usize, timeout: Duration) -> io::Result<Vec<(u32, u32)>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < n && Instant::now() < deadline {
            self.q.harvest(&mut out)?;
            if out.len() < n {
                self.q.wait(20, self.raw.s.as_raw_fd())?;
            }
        }
        Ok(out)
    }
}

/// One misbehaviour: returns the connections it opened.
type Case = fn(&Path) -> io::Result<u64>;

/// Every case, by name.
fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("garbage bytes", |p| {
            let mut r = Raw::connect(p)?;
            let _ = r.s.write_all(&[0x5a; 1000]);
            Ok(1)
        }),
        ("a header promising more than is sent", |p| {
            let mut r = Raw::connect(p)?;
            let _ = r.send_raw([req::SET_MEM_TABLE, VERSION, 4096], &[0; 8], &[]);
            Ok(1)
        }),
        ("an oversized payload", |p| {
            let mut r = Raw::connect(p)?;
            let _ = r.send_raw([req::SET_FEATURES, VERSION, u32::MAX], &[0; 64], &[]);
            Ok(1)
        }),
        ("unknown requests, reply flags, wrong versions", |p| {
            let mut n = 0;
            for header in [
                [999, VERSION, 0],
                [req::GET_FEATURES, VERSION | 0x4, 0],
                [req::GET_FEATURES, 2, 0],
                [0, VERSION, 0],
            ] {
                let mut r = Raw::connect(p)?;
                n += 1;
                let _ = r.send_raw(header, &[], &[]);
                let _ = r.reply();
            }
            Ok(n)
        }),
        (
            "descriptors where none belong, none where one must be",
            |p| {
                let e = EventFd::new(0)?;
                let mut r = Raw::connect(p)?;
                let _ = r.negotiate(0);
                let _ = r.send(req::GET_FEATURES, &[], &[e.as_raw_fd()]);
                let mut r2 = Raw::connect(p)?;
                let _ = r2.negotiate(0);
                // A kick "with a descriptor" that carries none, and one with two.
                let _ = r2.send(req::SET_VRING_KICK, &2u64.to_le_bytes(), &[]);
                let mut r3 = Raw::connect(p)?;
                let _ = r3.negotiate(0);
                let _ = r3.send(
                    req::SET_VRING_KICK,
                    &2u64.to_le_bytes(),
                    &[e.as_raw_fd(), e.as_raw_fd()],
                );
                Ok(3)
            },
        ),
        ("ring set-up out of order and out of range", |p| {
            let e = EventFd::new(0)?;
            let mut r = Raw::connect(p)?;
            // Before any negotiation or memory.
            let _ = r.send(req::SET_VRING_KICK, &2u64.to_le_bytes(), &[e.as_raw_fd()]);
            let _ = r.vring_addr(2, 0x1000, 0x2000, 0x3000);
            let _ = r.vring_state(req::GET_VRING_BASE, 2, 0);
            let _ = r.reply();
            let mut n = 1;
            for (index, num) in [(2, 0), (2, 3), (2, 4096), (200, 16), (u32::MAX, 16)] {
                let mut r = Raw::connect(p)?;
                n += 1;
                let _ = r.negotiate(0);
                let _ = r.vring_state(req::SET_VRING_NUM, index, num);
                let _ = r.vring_state(req::GET_VRING_BASE, index, 0);
                let _ = r.reply();
            }
            Ok(n)
        }),
        ("features and protocol features never offered", |p| {
            let mut r = Raw::connect(p)?;
            let _ = r.send_u64(req::SET_FEATURES, u64::MAX);
            let mut r2 = Raw::connect(p)?;
            let _ = r2.send_u64(req::SET_PROTOCOL_FEATURES, u64::MAX);
            Ok(2)
        }),
        (
            "memory tables: overlapping, empty, beyond their files",
            |p| {
                let big = memfd(MEM)?;
                let small = memfd(4096)?;
                let tables: [(&[Region], Vec<RawFd>); 6] = [
                    (
                        &[
                            (0, MEM, 0x7f00_0000_0000, 0),
                            (0x1000, MEM, 0x7e00_0000_0000, 0),
                        ],
                        vec![big.as_raw_fd(), big.as_raw_fd()],
                    ),
                    (&[(0, 0, 0x7f00_0000_0000, 0)], vec![big.as_raw_fd()]),
                    (&[(0, MEM, 0x7f00_0000_0000, 0)], vec![small.as_raw_fd()]),
                    (
                        &[(0, 4096, 0x7f00_0000_0000, 1 << 40)],
                        vec![big.as_raw_fd()],
                    ),
                    (
                        &[(u64::MAX - 4095, 4096, 0x7f00_0000_0000, 0)],
                        vec![big.as_raw_fd()],
                    ),
                    (&[(0, 4096, u64::MAX - 10, 0)], vec![big.as_raw_fd()]),
                ];
                let mut n = 0;
                for (regions, fds) in tables {
                    let mut r = Raw::connect(p)?;
                    n += 1;
                    let _ = r.negotiate(0);
                    let _ = r.mem_table(regions, &fds);
                }
                // More regions than descriptors.
                let mut r = Raw::connect(p)?;
                let _ = r.negotiate(0);
                let _ = r.mem_table(
                    &[(0, 4096, 0x1000_0000, 0), (0x1000, 4096, 0x2000_0000, 0)],
                    &[big.as_raw_fd()],
                );
                // A region added that overlaps, and a tiny one, one at a time.
                let mut r2 = Raw::connect(p)?;
                let _ = r2.negotiate(PF_MEM_SLOTS);
                let mut one = vec![0u8; 8];
                for v in [0u64, 4096, 0x1000_0000, 0] {
                    one.extend_from_slice(&v.to_le_bytes());
                }
                let _ = r2.send(req::ADD_MEM_REG, &one, &[big.as_raw_fd()]);
                let _ = r2.send(req::ADD_MEM_REG, &one, &[big.as_raw_fd()]);
                Ok(n + 2)
            },
        ),
        ("ring addresses outside guest memory", |p| {
            let mut d = Device::new(p)?;
            // Move the ring to front-end addresses no region holds.
            let _ = d.raw.vring_addr(2, 1, 2, 3);
            let _ = d
                .raw
                .vring_addr(2, d.host + MEM - 8, d.host + MEM - 4, d.host + MEM - 2);
            let _ = d.push(&[0]);
            Ok(1)
        }),
        (
            "descriptor loops, nested indirect tables, chains too long",
            |p| {
                let mut d = Device::new(p)?;
                // 0 -> 1 -> 0: a loop.
                d.q.set_desc(0, DATA, 51, DESC_F_NEXT, 1)?;
                d.q.set_desc(1, DATA, 108, DESC_F_NEXT, 0)?;
                // 2: an indirect table whose entry is indirect again.
                let table = DATA + 0x8000;
                d.q.set_desc(2, table, 16, 4, 0)?;
                d.mem
                    .write_slice(&[0u8; 16], GuestAddress(table))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                d.mem
                    .write_obj(4u16, GuestAddress(table + 12))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                // 3 -> 4 -> ... -> 15 -> 3: longer than the queue.
                for i in 3..16u16 {
                    d.q.set_desc(i, DATA, 1, DESC_F_NEXT, if i == 15 { 3 } else { i + 1 })?;
                }
                d.push(&[0, 2, 3])?;
                // Each malformed chain goes back unused; the ring still works.
                let done = d.completions(3, Duration::from_secs(5))?;
                if done.len() != 3 {
                    return Err(io::Error::other(format!(
                        "{} of 3 chains returned",
                        done.len()
                    )));
                }
                d.read_at(0, 0, 0)?;
                d.push(&[0])?;
                let ok = d.completions(1, Duration::from_secs(5))?;
                if ok.len() != 1 {
                    return Err(io::Error::other(
                        "a good request after bad ones was not answered",
                    ));
                }
                Ok(1)
            },
        ),
        ("buffers outside memory, zero-length descriptors", |p| {
            let mut d = Device::new(p)?;
            // Header outside guest memory.
            d.q.set_desc(0, MEM + 0x1000, 51, DESC_F_NEXT, 1)?;
            d.q.set_desc(1, DATA, 108, DESC_F_WRITE, 0)?;
            // Zero-length everything.
            d.q.set_desc(2, DATA, 0, DESC_F_NEXT, 3)?;
            d.q.set_desc(3, DATA, 0, DESC_F_WRITE, 0)?;
            // A good header, the data buffer running off the end of memory.
            d.read_at(4, 1, 0)?;
            d.q.set_desc(6, MEM - 100, 512, DESC_F_WRITE, 0)?;
            d.push(&[0, 2, 4])?;
            let done = d.completions(3, Duration::from_secs(5))?;
            if done.len() != 3 {
                return Err(io::Error::other(format!(
                    "{} of 3 chains returned",
                    done.len()
                )));
            }
            Ok(1)
        }),
        ("an available index far ahead of the ring", |p| {
            let d = Device::new(p)?;
            d.mem
                .write_obj(1000u16, GuestAddress(d.q.avail + 2))
                .map_err(|e| io::Error::other(e.to_string()))?;
            d.q.kick.write(1)?;
            std::thread::sleep(Duration::from_millis(20));
            Ok(1)
        }),
        ("kicks before the ring is set up", |p| {
            let mut r = Raw::connect(p)?;
            let _ = r.negotiate(0);
            let kick = EventFd::new(0)?;
            let _ = r.send(
                req::SET_VRING_KICK,
                &3u64.to_le_bytes(),
                &[kick.as_raw_fd()],
            );
            for _ in 0..10 {
                kick.write(1)?;
            }
            std::thread::sleep(Duration::from_millis(20));
            Ok(1)
        }),
        (
            "a ring disabled, stopped and reset with requests in flight",
            |p| {
                let mut n = 0;
                for how in 0..3 {
                    let mut d = Device::new(p)?;
                    n += 1;
                    for i in 0..4u16 {
                        d.read_at(3 * i, u64::from(i), u64::from(i))?;
                    }
                    d.push(&[0, 3, 6, 9])?;
                    match how {
                        0 => d.raw.vring_state(req::SET_VRING_ENABLE, 2, 0)?,
                        1 => {
                            d.raw.vring_state(req::GET_VRING_BASE, 2, 0)?;
                            let _ = d.raw.reply();
                        }
                        _ => {
                            d.raw.send(req::RESET_DEVICE, &[], &[])?;
                        }
                    }
                    let _ = d.completions(4, Duration::from_millis(500));
                }
                Ok(n)
            },
        ),
        ("a log and an inflight region that do not fit", |p| {
            let mut d = Device::new(p)?;
            let tiny = memfd(1)?;
            // SET_LOG_BASE: size 1 byte, offset past the end (a reply is
            // expected: read it or the connection's end).
            let mut payload = 1u64.to_le_bytes().to_vec();
            payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
            let _ = d.raw.send(req::SET_LOG_BASE, &payload, &[tiny.as_raw_fd()]);
            let _ = d.raw.reply();
            let _ = d.raw.send_u64(
                req::SET_FEATURES,
                F_VERSION_1 | F_PROTOCOL_FEATURES | F_LOG_ALL,
            );
            d.read_at(0, 0, 0)?;
            d.push(&[0])?;
            let _ = d.completions(1, Duration::from_millis(500));
            let mut r = Raw::connect(p)?;
            let _ = r.negotiate(PF_INFLIGHT | PF_LOG_SHMFD | PF_RESET);
            let mut inf = (1u64 << 30).to_le_bytes().to_vec();
            inf.extend_from_slice(&0u64.to_le_bytes());
            inf.extend_from_slice(&3u16.to_le_bytes());
            inf.extend_from_slice(&1024u16.to_le_bytes());
            let _ = r.send(req::SET_INFLIGHT_FD, &inf, &[tiny.as_raw_fd()]);
            Ok(2)
        }),
        (
            "guest memory whose file shrinks after it was handed over",
            |p| {
                let mut d = Device::new(p)?;
                d.read_at(0, 0, 0)?;
                d.q.push(0)?;
                d.q.publish()?;
                // Everything sent so far has been handled (a round trip)...
                d.raw.get_u64(req::GET_FEATURES)?;
                // ...and from now on every page of the region is past the end
                // of its file: touching it is SIGBUS.
                d._file.set_len(0)?;
                d.q.kick.write(1)?;
                std::thread::sleep(Duration::from_millis(50));
                Ok(1)
            },
        ),
        ("disconnects in the middle of commands", |p| {
            let mut d = Device::new(p)?;
            for i in 0..5u16 {
                d.read_at(3 * i, u64::from(i), u64::from(i))?;
            }
            d.push(&[0, 3, 6, 9, 12])?;
            drop(d);
            Ok(1)
        }),
        ("connections in a row", |p| {
            for _ in 0..200 {
                drop(Raw::connect(p)?);
            }
            Ok(200)
        }),
    ]
}

/// The back-end serves a well-behaved front-end (a short verified run of
/// the load generator), within a deadline.
fn serves(socket: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let o = super::Options {
        socket: socket.into(),
        lun: 0,
        block_size: 4096,
        queue_depth: 4,
        queues: 1,
        pattern: super::Pattern::RandRead,
        read_pct: 100,
        duration: None,
        ios: Some(64),
        verify: true,
        backend_pid: None,
        span: 1 << 20,
        progress: false,
        drop_in_flight: false,
        cdb: super::CdbSize::Auto,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(super::run(&o).map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(r)) if r.errors == 0 && r.verify_failures == 0 => Ok(()),
        Ok(Ok(r)) => {
            Err(format!("{} errors, {} verify failures", r.errors, r.verify_failures).into())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("no answer within 30 s".into()),
    }
}

/// The back-end's descriptors and threads once they stop changing (a
/// connection's teardown runs after its front-end left).
fn steady(pid: u32) -> Option<(usize, usize)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (count(pid, "fd")?, count(pid, "task")?);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = (count(pid, "fd")?, count(pid, "task")?);
        if now == last || Instant::now() > deadline {
            return Some(now);
        }
        last = now;
    }
}

fn count(pid: u32, what: &str) -> Option<usize> {
    Some(
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .ok()?
            .count(),
    )
}

/// Wait (bounded) for the back-end to settle back to `fds` descriptors.
fn settle(pid: u32, fds: usize) -> Option<(usize, usize)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = (count(pid, "fd")?, count(pid, "task")?);
        if now.0 <= fds || Instant::now() > deadline {
            return Some(now);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run every case `rounds` times (or until `duration`), checking after
/// each that a well-behaved front-end is served.
pub fn run(o: &Options) -> Result<Report, Error> {
    let start = Instant::now();
    serves(&o.socket).map_err(|source| Error::Dead {
        case: "(before any)",
        source,
    })?;
    let before = o.backend_pid.and_then(steady);
    let mut report = Report::default();
    for _ in 0..o.rounds {
        if o.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        for (name, case) in cases() {
            if o.only.as_ref().is_some_and(|w| !name.contains(w.as_str())) {
                continue;
            }
            // A case's own set-up may fail against a back-end that refuses
            // it: that is the back-end's right. Only serving matters.
            report.connections += case(&o.socket).unwrap_or(1);
            report.cases += 1;
            serves(&o.socket).map_err(|source| Error::Dead { case: name, source })?;
        }
        report.rounds += 1;
    }
    if let (Some(pid), Some(b)) = (o.backend_pid, before) {
        let after = settle(pid, b.0).unwrap_or((usize::MAX, usize::MAX));
        report.fds = Some((b.0, after.0));
        report.threads = Some((b.1, after.1));
        if after.0 > b.0 {
            return Err(Error::Leak {
                what: "descriptors",
                before: b.0,
                after: after.0,
            });
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}
