// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What `controller_list` reports: each controller with its connection
//! state and LUNs (secrets left out).

use std::sync::Arc;

use serde::Serialize;

use super::{Entry, Registry};

#[derive(Debug, Serialize)]
pub struct ControllerInfo {
    pub socket: String,
    pub queues: usize,
    pub initiator: String,
    pub port: u16,
    /// Whether a front-end (QEMU) is connected.
    pub connected: bool,
    pub luns: Vec<LunInfo>,
}

#[derive(Debug, Serialize)]
pub struct LunInfo {
    pub lun: u16,
    /// file, block, null or iscsi.
    pub kind: &'static str,
    /// The backstore's path, or the iSCSI URL without its password.
    pub backstore: String,
    /// Capacity in bytes (0 for iSCSI LUNs: the target knows it).
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    /// Unit serial number (VPD 80h); empty for iSCSI LUNs.
    pub serial: String,
    /// Other (controller, LUN) entries exposing the same logical unit.
    pub shared_with: Vec<(String, u16)>,
}

impl Registry {
    /// Every controller, in the order they were added.
    pub fn list(&self) -> Vec<ControllerInfo> {
        let st = self.lock();
        st.controllers
            .iter()
            .map(|e| describe(e, &st.controllers))
            .collect()
    }
}

fn describe(e: &Entry, all: &[Entry]) -> ControllerInfo {
    let local = e.ctrl.target.snapshot();
    let mut luns = Vec::new();
    for (&n, lc) in &e.config.luns {
        let info = match (local.lu(n), &lc.iscsi) {
            (Some(lu), _) => {
                let kind = lu.backstore().kind().name();
                let shared_with = all
                    .iter()
                    .flat_map(|o| {
                        o.ctrl
                            .target
                            .luns()
                            .into_iter()
                            .filter(|(l, other)| {
                                Arc::ptr_eq(other, lu)
                                    && !(o.config.socket == e.config.socket && *l == n)
                            })
                            .map(|(l, _)| (o.config.socket.display().to_string(), l))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                LunInfo {
                    lun: n,
                    kind,
                    backstore: lu.backstore().path().display().to_string(),
                    size: lu.blocks() * u64::from(lu.block_size()),
                    block_size: lu.block_size(),
                    read_only: lu.read_only(),
                    serial: lu.identity().serial.clone(),
                    shared_with,
                }
            }
            (None, Some(il)) => LunInfo {
                lun: n,
                kind: "iscsi",
                backstore: crate::config_file::redacted_url(&il.url),
                size: 0,
                block_size: 0,
                read_only: false,
                serial: String::new(),
                shared_with: Vec::new(),
            },
            (None, None) => continue,
        };
        luns.push(info);
    }
    ControllerInfo {
        socket: e.config.socket.display().to_string(),
        queues: e.config.request_queues,
        initiator: e.config.initiator.clone(),
        port: e.ctrl.nexus.relative_port,
        connected: e.ctrl.is_connected(),
        luns,
    }
}

impl Registry {
    /// Statistics of every LUN (or of one controller, or one LUN of it).
    pub fn reports(
        &self,
        controller: Option<&std::path::Path>,
        lun: Option<u16>,
    ) -> Result<Vec<crate::stats::LunReport>, super::Error> {
        let st = self.lock();
        if let Some(c) = controller {
            let e = super::find_ref(&st.controllers, c)?;
            if let Some(l) = lun {
                if !e.config.luns.contains_key(&l) {
                    return Err(super::Error::NoLun {
                        socket: c.into(),
                        lun: l,
                    });
                }
            }
        }
        let mut out = Vec::new();
        for e in &st.controllers {
            if controller.is_some_and(|c| c != e.config.socket) {
                continue;
            }
            let map = e.ctrl.target.snapshot();
            let name = e.config.socket.display().to_string();
            for (&n, lc) in &e.config.luns {
                if lun.is_some_and(|l| l != n) {
                    continue;
                }
                let Some(stats) = map.lun_stats(n) else {
                    continue;
                };
                let mut r = crate::stats::LunReport::new(name.clone(), n, stats.totals());
                if let Some(lu) = map.lu(n) {
                    if lu.reservations_enabled() {
                        let pr = lu.pr_lock();
                        r.reservations = Some(serde_json::json!({
                            "registrations": pr.registrations.len(),
                            "generation": pr.generation,
                            "holder": pr.reservation.as_ref().map(|h| format!("{},port {}", h.holder.initiator, h.holder.port)),
                            "type": pr.reservation.as_ref().map_or("none".to_string(), |h| format!("{:?}", h.ty)),
                        }));
                    }
                } else if lc.iscsi.is_some() {
                    if let Some(remote) = e.ctrl.remote.get(&n) {
                        r.iscsi = Some(remote.session.status());
                    }
                }
                out.push(r);
            }
        }
        Ok(out)
    }

    /// `ctl stats`: per LUN, and per controller the totals of its LUNs and
    /// of commands to LUNs that do not exist.
    pub fn stats(
        &self,
        controller: Option<&std::path::Path>,
        lun: Option<u16>,
    ) -> Result<serde_json::Value, super::Error> {
        let reports = self.reports(controller, lun)?;
        let st = self.lock();
        let mut controllers = Vec::new();
        for e in &st.controllers {
            if controller.is_some_and(|c| c != e.config.socket) {
                continue;
            }
            let name = e.config.socket.display().to_string();
            let mut total = crate::stats::Totals::default();
            for r in reports.iter().filter(|r| r.controller == name) {
                total.add(&r.totals);
            }
            let no_lun = e.ctrl.target.snapshot().no_lun_stats().totals();
            controllers.push(serde_json::json!({
                "controller": name,
                "connected": e.ctrl.is_connected(),
                "totals": total,
                "no_lun": no_lun,
            }));
        }
        Ok(serde_json::json!({ "controllers": controllers, "luns": reports }))
    }
}
