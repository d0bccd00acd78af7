// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a session reports for statistics: logged in or not, the portal,
//! reconnections, commands out.

use std::sync::atomic::Ordering;

use super::{Client, Shared};

/// A session's state for `ctl stats` and the metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionStatus {
    /// "up" (logged in), "down" (logging in again) or "stopped".
    pub state: &'static str,
    pub portal: String,
    pub reconnects: u64,
    /// Commands sent and not answered yet.
    pub pending: usize,
}

impl Shared {
    /// The session logged in again, through `portal`.
    pub(super) fn logged_in_again(&self, portal: &str) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        let mut p = self.portal.lock().unwrap_or_else(|e| e.into_inner());
        portal.clone_into(&mut p);
    }
}

impl Client {
    pub fn status(&self) -> SessionStatus {
        let (state, pending) = {
            let st = self.shared.lock();
            let state = match (st.stopping, st.writer.is_some()) {
                (true, _) => "stopped",
                (false, true) => "up",
                (false, false) => "down",
            };
            (state, st.pending.len())
        };
        SessionStatus {
            state,
            portal: self
                .shared
                .portal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            pending,
        }
    }
}
