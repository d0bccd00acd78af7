// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The asynchronous I/O engine of one worker thread: an io_uring whose
//! completions signal an eventfd that the worker's epoll loop watches.
//! Reads and writes go straight between guest memory (iovecs) and the
//! backstore: no intermediate copy.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

use crate::scsi::{BlockIo, IoKind};

pub struct Engine {
    ring: IoUring,
}

impl Engine {
    /// A ring with room for `entries` submissions, signalling `eventfd` on
    /// every completion.
    pub fn new(entries: u32, eventfd: RawFd) -> io::Result<Engine> {
        let ring = IoUring::new(entries.next_power_of_two())?;
        ring.submitter().register_eventfd(eventfd)?;
        Ok(Engine { ring })
    }

    /// Queue one block I/O. `iovecs` must stay valid (and unmoved) until its
    /// completion is reaped.
    pub fn push(
        &mut self,
        fd: RawFd,
        io: &BlockIo,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> io::Result<()> {
        let fd = types::Fd(fd);
        let entry: squeue::Entry = match io.kind {
            IoKind::Read => opcode::Readv::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
                .offset(io.offset)
                .build(),
            IoKind::Write => {
                let flags = if io.sync { libc::RWF_DSYNC } else { 0 };
                opcode::Writev::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
                    .offset(io.offset)
                    .rw_flags(flags)
                    .build()
            }
            IoKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(user_data);
        loop {
            // SAFETY: the entry points at `iovecs`, which the caller keeps
            // alive and unmoved until the completion for `user_data` is
            // reaped; the iovecs point into guest memory whose mapping the
            // caller also keeps alive until then.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            // Submission queue full: hand what we have to the kernel.
            self.ring.submit()?;
        }
    }

    /// Submit everything queued (one syscall per batch).
    pub fn submit(&mut self) -> io::Result<()> {
        self.ring.submit()?;
        Ok(())
    }

    /// Submit and block until at least one completion is available.
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Move all available completions into `out` as (user_data, result).
    pub fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        for cqe in self.ring.completion() {
            out.push((cqe.user_data(), cqe.result()));
        }
    }
}
