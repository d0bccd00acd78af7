// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! LUNs added, removed and changed while a controller runs, and what the
//! connected guest is told: a virtio-scsi event on the event queue
//! (virtio 1.2, 5.6.6.3: TRANSPORT_RESET with reason RESCAN or REMOVED,
//! PARAM_CHANGE with the additional sense code) and the unit attention SPC
//! requires (REPORTED LUNS DATA HAS CHANGED to the nexus' other logical
//! units, SPC-4 6.37; capacity and mode parameter changes are queued by
//! the logical unit itself).
//!
//! A controller's connection lock orders these changes with connects and
//! disconnects: a LUN is attached to the connected nexus before commands
//! can reach it, and a removed LUN's commands complete before it is
//! detached and the guest told.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use log::warn;

use super::inflight::Scope;
use super::{Controller, Inner, RemoteLun, ScsiBackend};
use crate::scsi::{LogicalUnit, LunAddress, Sense};
use crate::virtio::{Event, EventType, ResetReason};

/// How long a LUN removal waits for the LUN's commands to complete before
/// it goes ahead anyway (they still complete; only the guest may hear of
/// the removal before they do). A remote target that stopped answering
/// holds its commands up to its recovery timeout.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How often a removal looks at the commands still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// The device of the connected front-end, if any.
#[derive(Default)]
pub(crate) struct Connected(Mutex<Option<Weak<Inner>>>);

impl Connected {
    fn lock(&self) -> MutexGuard<'_, Option<Weak<Inner>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The LUNs of a controller that remote sessions serve; they can change
/// while commands run (each lookup clones the entry it needs).
#[derive(Default)]
pub struct RemoteLuns(RwLock<Arc<BTreeMap<u16, RemoteLun>>>);

impl RemoteLuns {
    pub fn new(luns: BTreeMap<u16, RemoteLun>) -> RemoteLuns {
        RemoteLuns(RwLock::new(Arc::new(luns)))
    }

    pub fn snapshot(&self) -> Arc<BTreeMap<u16, RemoteLun>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self, lun: &u16) -> Option<RemoteLun> {
        self.snapshot().get(lun).cloned()
    }

    pub fn values(&self) -> Vec<RemoteLun> {
        self.snapshot().values().cloned().collect()
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<u16, RemoteLun>)) {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut map = BTreeMap::clone(&slot);
        change(&mut map);
        *slot = Arc::new(map);
    }
}

/// What a LUN of a controller is.
#[derive(Clone)]
pub enum Lun {
    /// Emulated here, on a backstore.
    Local(Arc<LogicalUnit>),
    /// Passed through to a remote target (`remote::Session`).
    Remote(RemoteLun),
}

impl Controller {
    /// A front-end connected and `backend` serves it: its nexus is attached
    /// to every logical unit, and LUN changes are posted to it from now on.
    pub fn connect(&self, backend: &ScsiBackend) {
        let mut slot = self.connected.lock();
        *slot = Some(Arc::downgrade(&backend.inner));
        backend.attach();
    }

    /// The front-end went (its commands have completed).
    pub fn disconnect(&self) {
        let mut slot = self.connected.lock();
        *slot = None;
        self.target.detach(&self.nexus);
    }

    /// Whether a front-end is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
            .lock()
            .as_ref()
            .is_some_and(|w| w.strong_count() > 0)
    }

    /// Add `lun` (it must not exist). A connected guest is told to scan it.
    pub fn add_lun(&self, lun: u16, what: Lun) {
        let slot = self.connected.lock();
        let backend = backend_of(&slot);
        match what {
            Lun::Local(lu) => {
                if let Some(b) = &backend {
                    lu.attach(&self.nexus, Some(b.abort_hook(lun)));
                }
                self.target.insert(lun, lu);
            }
            Lun::Remote(r) => {
                self.remote.update(|m| {
                    m.insert(lun, r);
                });
                self.target.insert_remote(lun);
            }
        }
        if let Some(b) = backend {
            self.luns_changed(lun);
            b.post_transport_reset(lun, ResetReason::Rescan);
        }
    }

    /// Remove `lun`: later commands get LOGICAL UNIT NOT SUPPORTED; those
    /// in flight complete first; then a connected guest is told it is
    /// gone. Returns what it was.
    pub fn remove_lun(&self, lun: u16) -> Option<Lun> {
        let slot = self.connected.lock();
        let backend = backend_of(&slot);
        let local = self.target.remove(lun);
        if let Some(b) = &backend {
            b.wait_for_lun(lun);
        }
        let mut remote = None;
        self.remote.update(|m| remote = m.remove(&lun));
        let removed = match (local, remote) {
            (Some(lu), _) => {
                if backend.is_some() {
                    lu.detach(&self.nexus);
                }
                Lun::Local(lu)
            }
            (None, Some(r)) => Lun::Remote(r),
            (None, None) => return None,
        };
        if let Some(b) = backend {
            self.luns_changed(lun);
            b.post_transport_reset(lun, ResetReason::Removed);
        }
        Some(removed)
    }

    /// A parameter of `lun` changed (its unit attention is queued by the
    /// logical unit): a connected guest gets a parameter change event with
    /// the additional sense code, and looks at the LUN again.
    pub fn lun_changed(&self, lun: u16, sense: Sense) {
        let slot = self.connected.lock();
        if let Some(b) = backend_of(&slot) {
            b.post_param_change(lun, sense.asc, sense.ascq);
        }
    }

    /// REPORTED LUNS DATA HAS CHANGED for this controller's nexus, on every
    /// logical unit but `changed`.
    fn luns_changed(&self, changed: u16) {
        for (l, lu) in self.target.luns() {
            if l != changed {
                lu.establish_ua(self.nexus.id, Sense::REPORTED_LUNS_DATA_HAS_CHANGED);
            }
        }
    }
}

fn backend_of(slot: &Option<Weak<Inner>>) -> Option<ScsiBackend> {
    slot.as_ref()
        .and_then(Weak::upgrade)
        .map(|inner| ScsiBackend { inner })
}

impl ScsiBackend {
    /// Wait (bounded) until no command for `lun` is in flight.
    fn wait_for_lun(&self, lun: u16) {
        let scope = Scope::Lun(LunAddress::Lun(lun));
        let deadline = Instant::now() + DRAIN_LIMIT;
        while self.inner.inflight.any(scope) {
            if Instant::now() > deadline {
                warn!(
                    "{}: LUN {lun} removed with commands still in flight after {DRAIN_LIMIT:?}",
                    self.inner.controller.name
                );
                return;
            }
            std::thread::sleep(DRAIN_POLL);
        }
    }

    /// Post VIRTIO_SCSI_T_TRANSPORT_RESET for `lun` with `reason` (if the
    /// driver accepted hot-plug events).
    fn post_transport_reset(&self, lun: u16, reason: ResetReason) {
        if self
            .inner
            .hotplug_events
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.post_event(Event::new(EventType::TransportReset, lun, reason as u32));
        }
    }
}
