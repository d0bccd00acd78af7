// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver side of a split virtqueue (virtio 1.2, 2.7), as a guest's
//! virtio-scsi driver runs it, in memory shared with the backend. All
//! accesses go through vm-memory's bounds-checked, volatile accessors.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Descriptor flags (virtio 2.7.5).
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

/// Byte sizes of the three parts of a split ring with `n` entries.
pub fn desc_size(n: u16) -> u64 {
    16 * u64::from(n)
}
pub fn avail_size(n: u16) -> u64 {
    6 + 2 * u64::from(n)
}
pub fn used_size(n: u16) -> u64 {
    6 + 8 * u64::from(n)
}

pub struct DriverQueue {
    mem: GuestMemoryMmap<()>,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_avail: u16,
    /// Avail index at the last kick decision.
    kicked_at: u16,
    last_used: u16,
    event_idx: bool,
    pub kick: EventFd,
    pub call: EventFd,
    /// Notifications read from `call` so far.
    pub notifications: u64,
}

fn mem_err(e: vm_memory::GuestMemoryError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl DriverQueue {
    /// A queue whose rings live at the given guest addresses (zeroed here).
    pub fn new(
        mem: GuestMemoryMmap<()>,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
        event_idx: bool,
    ) -> io::Result<DriverQueue> {
        for (addr, len) in [
            (desc, desc_size(size)),
            (avail, avail_size(size)),
            (used, used_size(size)),
        ] {
            mem.write_slice(&vec![0u8; len as usize], GuestAddress(addr))
                .map_err(mem_err)?;
        }
        Ok(DriverQueue {
            mem,
            size,
            desc,
            avail,
            used,
            next_avail: 0,
            kicked_at: 0,
            last_used: 0,
            event_idx,
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            call: EventFd::new(0)?,
            notifications: 0,
        })
    }

    /// Write descriptor `i`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) -> io::Result<()> {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(self.desc + 16 * u64::from(i)))
            .map_err(mem_err)
    }

    /// Make the chain starting at `head` available (not yet visible).
    pub fn push(&mut self, head: u16) -> io::Result<()> {
        let slot = u64::from(self.next_avail % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .map_err(mem_err)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Publish pushed chains and kick the backend if it asked to be told
    /// (EVENT_IDX: avail_event; otherwise the used ring's NO_NOTIFY flag).
    /// Returns whether a kick was sent.
    pub fn publish(&mut self) -> io::Result<bool> {
        fence(Ordering::Release);
        self.mem
            .store(
                self.next_avail.to_le(),
                GuestAddress(self.avail + 2),
                Ordering::Release,
            )
            .map_err(mem_err)?;
        fence(Ordering::SeqCst);
        let new = self.next_avail;
        let old = self.kicked_at;
        if new == old {
            return Ok(false);
        }
        self.kicked_at = new;
        let need = if self.event_idx {
            let avail_event: u16 = self
                .mem
                .load(
                    GuestAddress(self.used + 4 + 8 * u64::from(self.size)),
                    Ordering::Acquire,
                )
                .map_err(mem_err)?;
            // vring_need_event (virtio 2.7.10).
            new.wrapping_sub(u16::from_le(avail_event)).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags: u16 = self
                .mem
                .load(GuestAddress(self.used), Ordering::Acquire)
                .map_err(mem_err)?;
            u16::from_le(flags) & 1 == 0
        };
        if need {
            self.kick.write(1)?;
        }
        Ok(need)
    }

    /// Take every used element: (head id, written length).
    pub fn harvest(&mut self, out: &mut Vec<(u32, u32)>) -> io::Result<()> {
        let idx: u16 = self
            .mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .map_err(mem_err)?;
        let idx = u16::from_le(idx);
        fence(Ordering::Acquire);
        while self.last_used != idx {
            let at = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).map_err(mem_err)?;
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).map_err(mem_err)?;
            out.push((u32::from_le(id), u32::from_le(len)));
            self.last_used = self.last_used.wrapping_add(1);
        }
        Ok(())
    }

    /// Ask for an interrupt at the next completion; returns false if
    /// completions arrived meanwhile (harvest again instead of sleeping).
    pub fn arm(&mut self) -> io::Result<bool> {
        if self.event_idx {
            self.mem
                .store(
                    self.last_used.to_le(),
                    GuestAddress(self.avail + 4 + 2 * u64::from(self.size)),
                    Ordering::Release,
                )
                .map_err(mem_err)?;
        }
        fence(Ordering::SeqCst);
        let idx: u16 = self
            .mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .map_err(mem_err)?;
        Ok(u16::from_le(idx) == self.last_used)
    }

    /// Wait for the call eventfd, at most `timeout_ms`; count the
    /// notifications it carried.
    pub fn wait(&mut self, timeout_ms: i32, backend: RawFd) -> io::Result<()> {
        let mut pfd = [
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.call),
                events: libc::POLLIN,
                revents: 0,
            },
            // The vhost-user socket: the backend hanging up ends the run
            // instead of leaving it waiting for completions forever.
            libc::pollfd {
                fd: backend,
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        let r = unsafe { libc::poll(pfd.as_mut_ptr(), 2, timeout_ms) };
        if r > 0 && pfd[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the backend closed the vhost-user connection",
            ));
        }
        if r > 0 && pfd[0].revents != 0 {
            if let Ok(n) = self.call.read() {
                self.notifications += n;
            }
        }
        Ok(())
    }
}
