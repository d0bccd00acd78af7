// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Events for the guest on the event queue (virtio 1.2, 5.6.6.3): a SCSI
//! asynchronous event from a remote LUN's target (iSCSI) that reports a unit attention
//! becomes VIRTIO_SCSI_T_PARAM_CHANGE with its additional sense code, so
//! the guest acts on it at once (Linux rescans the device for 2Ah/00h,
//! 2Ah/01h and 2Ah/09h, capacity data changed) instead of at its next
//! command's unit attention.

use std::sync::atomic::Ordering;

use log::debug;
use vm_memory::ByteValued;

use super::{notify, ScsiBackend};
use crate::virtio::{param_change_reason, Event, EventType};

/// The length of an event.
const EVENT_LEN: usize = std::mem::size_of::<Event>();

impl ScsiBackend {
    /// Session `j` reported an asynchronous event with `sense` for the
    /// target's LUN field `lun`.
    pub(super) fn remote_event(&self, j: usize, lun: [u8; 8], sense: &[u8]) {
        let Some(session) = self.inner.sessions.get(j) else {
            return;
        };
        let remote = self.inner.controller.remote.snapshot();
        let guest_lun = remote
            .iter()
            .find(|(_, r)| r.lun == lun && r.session.id() == session.id())
            .map(|(&l, _)| l);
        match (guest_lun, crate::scsi::sense::decode(sense)) {
            (Some(l), Some((6, asc, ascq))) => self.post_param_change(l, asc, ascq),
            _ => debug!(
                "{}: asynchronous event not for the guest's event queue",
                self.inner.controller.name
            ),
        }
    }

    /// Post VIRTIO_SCSI_T_PARAM_CHANGE for `lun` (if the driver accepted
    /// them).
    pub(super) fn post_param_change(&self, lun: u16, asc: u8, ascq: u8) {
        if !self.inner.change_events.load(Ordering::Relaxed) {
            return;
        }
        let reason = param_change_reason(asc, ascq);
        self.post_event(Event::new(EventType::ParamChange, lun, reason));
    }

    /// The driver added event buffers: if an event found none before, say
    /// so now (VIRTIO_SCSI_T_NO_EVENT with VIRTIO_SCSI_T_EVENTS_MISSED;
    /// Linux then rescans the whole target) instead of waiting for the
    /// next event to carry the flag.
    pub(super) fn post_missed(&self) {
        if self.inner.events_missed.load(Ordering::Relaxed) {
            self.post_event(Event::new(EventType::NoEvent, 0, 0));
        }
    }

    /// Put `event` in the next event queue buffer; with none available,
    /// remember that one was missed (the next event carries
    /// VIRTIO_SCSI_T_EVENTS_MISSED, virtio 5.6.6.3).
    pub(super) fn post_event(&self, mut event: Event) {
        let inner = &self.inner;
        let (Some(vring), Some(mem)) = (self.event_vring(), self.memory()) else {
            inner.events_missed.store(true, Ordering::Relaxed);
            return;
        };
        let Some((head, chain)) = vring.pop_one(&mem) else {
            inner.events_missed.store(true, Ordering::Relaxed);
            return;
        };
        let mut written = Default::default();
        let used = match chain {
            Ok(b) if b.writable.len() >= EVENT_LEN as u64 => {
                if inner.events_missed.swap(false, Ordering::Relaxed) {
                    event.set_events_missed();
                }
                let r = b.writable.write_at(&mem, 0, event.as_slice());
                written = b.writable;
                match r {
                    Ok(()) => EVENT_LEN as u32,
                    Err(e) => {
                        self.guest_error(format_args!("Event queue: {e}"));
                        0
                    }
                }
            }
            Ok(_) => {
                self.guest_error(format_args!("Event queue: buffer under {EVENT_LEN} bytes"));
                0
            }
            Err(e) => {
                self.guest_error(format_args!("Event queue: {e}"));
                0
            }
        };
        if used == 0 {
            inner.events_missed.store(true, Ordering::Relaxed);
        }
        let _ = vring.add_used(head, used, &written);
        notify(vring);
    }
}
