// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vring type of our backend: vhost-user-backend's `VringRwLock`, plus
//! one guarantee it does not give: a used-buffer notification is never lost
//! when the front-end replaces the call eventfd of a running ring.
//!
//! vhost-user lets the front-end send `SET_VRING_CALL` at any time, and
//! QEMU does so right after starting a device: vhost-user-scsi (7.2, for
//! example) starts the rings, which still signal the "masked" notifier
//! QEMU does not poll, and only then unmasks every queue by sending its
//! guest notifier. Messages are asynchronous, so the guest's first command
//! can complete, and be signalled on the old eventfd, before we have read
//! the `SET_VRING_CALL` that replaces it: the guest then waits forever for
//! an interrupt (a guest stuck at boot: seen once in CI, then in the third
//! run of the pr-two-paths scenario with two CPU hogs beside it).
//! So whenever a running ring gets a new call eventfd, it is signalled once.
//! A spurious notification is harmless (the virtio spec's driver
//! requirements for used buffer notification suppression: the driver must
//! handle spurious notifications); a lost one hangs the driver.

use std::fs::File;
use std::io;

use vhost_user_backend::{VringRwLock, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::{Error as QueueError, QueueT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// A request, control or event queue of one connection.
#[derive(Clone)]
pub struct Vring(VringRwLock<Mem>);

impl<'a> VringStateGuard<'a, Mem> for Vring {
    type G = <VringRwLock<Mem> as VringStateGuard<'a, Mem>>::G;
}

impl<'a> VringStateMutGuard<'a, Mem> for Vring {
    type G = <VringRwLock<Mem> as VringStateMutGuard<'a, Mem>>::G;
}

impl VringT<Mem> for Vring {
    fn new(mem: Mem, max_queue_size: u16) -> Result<Self, QueueError> {
        VringRwLock::new(mem, max_queue_size).map(Vring)
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, Mem>>::G {
        self.0.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, Mem>>::G {
        self.0.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), QueueError> {
        self.0.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.0.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, QueueError> {
        self.0.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), QueueError> {
        self.0.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, QueueError> {
        self.0.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.0.set_enabled(enabled)
    }

    fn set_queue_info(&self, desc: u64, avail: u64, used: u64) -> Result<(), QueueError> {
        self.0.set_queue_info(desc, avail, used)
    }

    fn queue_next_avail(&self) -> u16 {
        self.0.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.0.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.0.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, QueueError> {
        self.0.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.0.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.0.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.0.set_queue_ready(ready)
    }

    fn set_kick(&self, file: Option<File>) {
        self.0.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.0.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        let new = file.is_some();
        self.0.set_call(file);
        // Whatever was signalled on the previous eventfd, the driver hears
        // of it now (see the module comment).
        if new && self.0.get_ref().get_queue().ready() {
            let _ = self.0.signal_used_queue();
        }
    }

    fn set_err(&self, file: Option<File>) {
        self.0.set_err(file)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::fd::{AsRawFd, FromRawFd};

    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    fn ring() -> Vring {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let v = Vring::new(GuestMemoryAtomic::new(mem), 16).unwrap();
        v.set_queue_size(16);
        v.set_queue_info(0x1000, 0x2000, 0x3000).unwrap();
        v
    }

    /// An eventfd and a `File` for the same eventfd object (what the
    /// front-end keeps and what SET_VRING_CALL hands us).
    pub(in crate::device) fn call_fd() -> (EventFd, File) {
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // SAFETY: dup returns a new descriptor we own (checked below).
        let dup = unsafe { libc::dup(e.as_raw_fd()) };
        assert!(dup >= 0);
        // SAFETY: `dup` is a valid descriptor owned by nobody else.
        (e, unsafe { File::from_raw_fd(dup) })
    }

    #[test]
    fn a_new_call_eventfd_of_a_running_ring_is_signalled_once() {
        let v = ring();
        v.set_queue_ready(true);
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
    fn a_stopped_ring_is_not_signalled() {
        let v = ring();
        let (e, file) = call_fd();
        v.set_call(Some(file));
        assert!(e.read().is_err());
        v.set_call(None);
    }
}
