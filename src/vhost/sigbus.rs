// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory the front-end shares by file descriptor (guest RAM, the dirty
//! log, the inflight region) stays the front-end's: it can shrink the file
//! under our mapping at any time, and touching a page past the end of its
//! file is SIGBUS, which would kill the daemon and every VM it serves. So a
//! SIGBUS handler watches the ranges mapped from front-ends' files: a fault
//! in one puts a private zero page in place of the page that went (the
//! access is retried and succeeds), and marks the connection that owns the
//! range, which then ends. A fault anywhere else goes to the handler that
//! was there before (Rust's runtime reports stack overflows through it).
//!
//! The handler only reads atomics and calls mmap(2), a plain system call.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};

/// Ranges watched at most (regions, logs and inflight areas of every
/// connection at once).
const SLOTS: usize = 4096;
/// `end` of a slot being filled in.
const RESERVED: usize = usize::MAX;

struct Slot {
    start: AtomicUsize,
    /// 0: free.
    end: AtomicUsize,
    /// The owning connection's flag (kept alive by the `Guard`).
    owner: AtomicPtr<AtomicBool>,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    owner: AtomicPtr::new(std::ptr::null_mut()),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();
/// The handler replaced (so faults not ours reach it).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A watched range; unwatched when dropped. Keeps the owner's flag alive.
pub struct Guard {
    slot: usize,
    _owner: Arc<AtomicBool>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = TABLE.get(self.slot) {
            s.end.store(RESERVED, Ordering::SeqCst);
            s.owner.store(std::ptr::null_mut(), Ordering::SeqCst);
            s.start.store(0, Ordering::SeqCst);
            s.end.store(0, Ordering::SeqCst);
        }
    }
}

/// Watch `len` bytes mapped at `start` from a front-end's file; a fault
/// there sets `owner`.
pub fn watch(start: *const u8, len: usize, owner: &Arc<AtomicBool>) -> io::Result<Guard> {
    INSTALL.call_once(install);
    let start = start as usize;
    let end = start
        .checked_add(len)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    for (i, s) in TABLE.iter().enumerate() {
        if s.end
            .compare_exchange(0, RESERVED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            s.start.store(start, Ordering::SeqCst);
            s.owner
                .store(Arc::as_ptr(owner).cast_mut(), Ordering::SeqCst);
            s.end.store(end, Ordering::SeqCst);
            return Ok(Guard {
                slot: i,
                _owner: owner.clone(),
            });
        }
    }
    Err(io::Error::other("too many shared memory ranges"))
}

fn install() {
    // SAFETY: sigaction is plain data; the fields that matter are set.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: an empty mask for the handler.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: sigaction is plain data, filled in by the call.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installing a handler with valid pointers to live structs.
    // The previous handler is recorded before ours goes in.
    // SAFETY: reading the current disposition into a live struct.
    if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } == 0 {
        let _ = PREVIOUS.set(old);
        // SAFETY: installing a handler with a pointer to a live struct.
        unsafe { libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) };
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &TABLE {
        let end = s.end.load(Ordering::SeqCst);
        if end == 0 || end == RESERVED {
            continue;
        }
        let start = s.start.load(Ordering::SeqCst);
        if addr < start || addr >= end {
            continue;
        }
        if replace_page(addr) {
            let owner = s.owner.load(Ordering::SeqCst);
            if !owner.is_null() {
                // SAFETY: the owner flag is kept alive by the slot's Guard,
                // which clears the pointer before it lets go of it.
                unsafe { (*owner).store(true, Ordering::SeqCst) };
            }
            return;
        }
        break;
    }
    // Not a watched range (or the page could not be replaced): whoever
    // handled SIGBUS before, or the default action.
    match PREVIOUS.get() {
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler takes these three arguments.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: the previous handler takes the signal number.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // Back to the default action: the fault repeats and ends the
            // process as it would have without us.
            // SAFETY: resetting a signal's disposition.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
    }
}

/// Put a private zero page where the page holding `addr` was (4 KiB, or
/// 2 MiB for a huge page mapping).
fn replace_page(addr: usize) -> bool {
    for size in [4096usize, 2 << 20] {
        let page = addr & !(size - 1);
        // SAFETY: maps anonymous memory over one page of a range that this
        // module watches, i.e. a mapping of ours whose file went away under
        // it; nothing else lives there.
        let r = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_mapping_whose_file_shrank_reads_zeros_and_tells_its_owner() {
        let f = crate::vhost::log::tests::memfd(3 * 4096);
        let len = 3 * 4096;
        // SAFETY: a new shared mapping of the memfd, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let owner = Arc::new(AtomicBool::new(false));
        let _g = watch(p.cast(), len, &owner).unwrap();
        // SAFETY: within the mapping.
        unsafe { p.cast::<u8>().add(4096).write_volatile(7) };
        f.set_len(0).unwrap();
        // SAFETY: within the mapping; the page is past the end of the file
        // now: without the handler this read would kill the test process.
        let v = unsafe { p.cast::<u8>().add(4096).read_volatile() };
        assert_eq!(v, 0);
        assert!(owner.load(Ordering::SeqCst));
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(p, len) };
    }
}
