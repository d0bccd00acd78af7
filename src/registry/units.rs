// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The logical units the daemon has open: one per backstore object, shared
//! by every LUN entry that names it (the same options are required of each),
//! closed with the last. Null LUNs are each their own.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;

use crate::backstore::{self, NullBackstore, ObjectId};
use crate::config::LunConfig;
use crate::scsi::{Identity, LogicalUnit, LuConfig};
use crate::server::{open_local, Error};

struct Unit {
    config: LunConfig,
    lu: Arc<LogicalUnit>,
    users: usize,
}

#[derive(Default)]
pub(super) struct Units {
    by_object: HashMap<ObjectId, Unit>,
}

impl Units {
    /// The logical unit for LUN `n` of controller `socket`: the one already
    /// open for the same object, or a newly opened and claimed one.
    pub(super) fn open(
        &mut self,
        socket: &Path,
        n: u16,
        lc: &LunConfig,
    ) -> Result<Arc<LogicalUnit>, Error> {
        if let Some(size) = lc.null_size {
            return Ok(open_null(socket, n, lc, size));
        }
        let open_err = |source| backstore::Error::Open {
            path: lc.path.clone(),
            source,
        };
        let canonical = backstore::canonical_id(&lc.path).map_err(open_err)?;
        let object = backstore::object_id(&canonical).map_err(open_err)?;
        if let Some(u) = self.by_object.get_mut(&object) {
            let same = LunConfig {
                path: u.config.path.clone(),
                ..lc.clone()
            };
            if same != u.config {
                return Err(Error::ConflictingBackstore(canonical));
            }
            u.users += 1;
            return Ok(u.lu.clone());
        }
        let lu = Arc::new(open_local(lc, &canonical)?);
        self.by_object.insert(
            object,
            Unit {
                config: lc.clone(),
                lu: lu.clone(),
                users: 1,
            },
        );
        Ok(lu)
    }

    /// One LUN entry no longer names `lu`; the last one closes it, and
    /// returns once the backstore is closed (its locks released), so that
    /// it can be added again, or served by another process, at once.
    pub(super) fn release(&mut self, lu: Arc<LogicalUnit>) {
        let Some((&object, u)) = self
            .by_object
            .iter_mut()
            .find(|(_, u)| Arc::ptr_eq(&u.lu, &lu))
        else {
            // A null LU: nothing to release but itself.
            wait_unused(lu);
            return;
        };
        u.users = u.users.saturating_sub(1);
        if u.users == 0 {
            if let Err(e) = lu.flush() {
                log::error!("Flushing {} failed: {e}", lu.backstore().path().display());
            }
            info!("Closing {}", lu.backstore().path().display());
            self.by_object.remove(&object);
            wait_unused(lu);
        }
    }

    /// Remember that `lu` is read-only now (its entries must say so).
    pub(super) fn set_read_only(&mut self, lu: &Arc<LogicalUnit>, read_only: bool) {
        if let Some(u) = self.by_object.values_mut().find(|u| Arc::ptr_eq(&u.lu, lu)) {
            u.config.read_only = read_only;
        }
    }
}

/// How long a released logical unit may stay in use (a connection that
/// just ended flushing it, a command of an old snapshot completing).
const UNUSED_WAIT: Duration = Duration::from_secs(30);

/// Wait (bounded) until `lu` is ours alone, then drop it: its backstore
/// closes and its locks go.
fn wait_unused(lu: Arc<LogicalUnit>) {
    let deadline = Instant::now() + UNUSED_WAIT;
    while Arc::strong_count(&lu) > 1 {
        if Instant::now() > deadline {
            log::warn!(
                "{} is still in use {UNUSED_WAIT:?} after its removal: it closes when that ends",
                lu.backstore().path().display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Null LUs are never shared: each null LUN is its own LU.
fn open_null(socket: &Path, n: u16, lc: &LunConfig, size: u64) -> Arc<LogicalUnit> {
    let key = lc
        .serial
        .clone()
        .unwrap_or_else(|| format!("null:{}:{n}", socket.display()));
    let mut identity = Identity::derive(&key);
    if let Some(s) = &lc.serial {
        identity.serial = s.clone();
    }
    info!(
        "{}: LUN {n} is a null backstore of {size} bytes",
        socket.display()
    );
    Arc::new(LogicalUnit::new(
        Arc::new(NullBackstore::new(size)),
        LuConfig {
            block_size: lc.block_size,
            identity,
            pr_file: None,
            pr_state: Default::default(),
            reservations: true,
        },
    ))
}
