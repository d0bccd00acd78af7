// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A SCSI target: the set of logical units one controller exposes, and the
//! answers for LUNs that have no logical unit (SPC-4 / SAM-5 4.6).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::cdb::Cdb;
use super::command::{Command, Ctx, Nexus, Outcome, Response};
use super::lu::{AbortHook, LogicalUnit};
use super::lun::LunAddress;
use super::sense::Sense;
use super::spc;
use crate::stats::LunStats;

/// The logical units of one controller at one moment, by LUN. A command
/// runs against one snapshot from start to finish.
#[derive(Clone, Default)]
pub struct LunMap {
    luns: BTreeMap<u16, Arc<LogicalUnit>>,
    /// LUNs whose commands go to another target unchanged.
    remote: Vec<u16>,
    lun_list: Vec<u16>,
    /// I/O statistics of every LUN, and of commands to no LUN.
    stats: BTreeMap<u16, Arc<LunStats>>,
    no_lun: Arc<LunStats>,
}

impl LunMap {
    fn new(
        luns: BTreeMap<u16, Arc<LogicalUnit>>,
        mut remote: Vec<u16>,
        stats: BTreeMap<u16, Arc<LunStats>>,
        no_lun: Arc<LunStats>,
    ) -> LunMap {
        remote.sort_unstable();
        remote.dedup();
        let mut lun_list: Vec<u16> = luns.keys().copied().chain(remote.iter().copied()).collect();
        lun_list.sort_unstable();
        lun_list.dedup();
        // Every LU a target serves may be named in an EXTENDED COPY.
        for lu in luns.values() {
            super::xcopy::register(lu);
        }
        LunMap {
            luns,
            remote,
            lun_list,
            stats,
            no_lun,
        }
    }

    /// The statistics commands to `addr` count in.
    pub fn stats(&self, addr: LunAddress) -> &Arc<LunStats> {
        match addr {
            LunAddress::Lun(l) => self.stats.get(&l).unwrap_or(&self.no_lun),
            _ => &self.no_lun,
        }
    }

    /// The statistics of LUN `l` (None: it does not exist) and of commands
    /// to absent LUNs.
    pub fn lun_stats(&self, l: u16) -> Option<&Arc<LunStats>> {
        self.stats.get(&l)
    }

    pub fn no_lun_stats(&self) -> &Arc<LunStats> {
        &self.no_lun
    }

    /// Whether `lun` exists here, emulated or passed through.
    pub fn has_lun(&self, lun: u16) -> bool {
        self.lun_list.binary_search(&lun).is_ok()
    }

    pub fn lu(&self, lun: u16) -> Option<&Arc<LogicalUnit>> {
        self.luns.get(&lun)
    }

    /// Every LUN, emulated or passed through, in order.
    pub fn lun_list(&self) -> &[u16] {
        &self.lun_list
    }

    /// Execute a command addressed to `addr`.
    pub fn execute(&self, addr: LunAddress, cmd: Command) -> Outcome {
        if let LunAddress::Lun(l) = addr {
            if let Some(lu) = self.luns.get(&l) {
                return lu.execute(cmd, &self.lun_list);
            }
            // REPORT LUNS lists this target's LUNs, not the remote one's.
            if self.remote.binary_search(&l).is_ok() && cmd.cdb.first() != Some(&0xa0) {
                return Outcome::Remote(l);
            }
        }
        Outcome::Done(self.execute_without_lu(addr, cmd))
    }

    /// Commands to a LUN with no logical unit, or to the well-known LUN.
    fn execute_without_lu(&self, addr: LunAddress, cmd: Command) -> Response {
        let ctx = Ctx {
            cdb: Cdb::new(cmd.cdb),
            layout: None,
            nexus: cmd.nexus,
            data_out: cmd.data_out,
            luns: &self.lun_list,
        };
        let wlun = addr == LunAddress::ReportLunsWellKnown;
        let result = match ctx.cdb.opcode() {
            0xa0 => spc::report_luns_for(&ctx),
            0x12 if wlun => well_known_inquiry(&ctx),
            0x12 => spc::inquiry_no_lun(&ctx),
            0x03 if !wlun => Ok(spc::request_sense_no_lun(&ctx)),
            0x03 | 0x00 if wlun => Ok(Response::good(Vec::new())),
            _ if wlun => Err(Sense::INVALID_COMMAND_OPERATION_CODE),
            _ => Err(Sense::LOGICAL_UNIT_NOT_SUPPORTED),
        };
        result.unwrap_or_else(|s| Response::check_condition(&s, false))
    }
}

/// A request queue's copy of its target's LUN map for one round of the
/// virtqueue (see `Target::cached`).
#[derive(Default)]
pub struct Cached {
    generation: u64,
    map: Option<Arc<LunMap>>,
}

/// The logical units of one controller, by LUN. LUNs can be added and
/// removed while commands run: each command runs against the map current
/// when it started, so a change never waits for commands and commands never
/// wait for each other. A request queue takes the map once per round of
/// its virtqueue (`Cached`: a read lock and a reference count) and checks
/// the generation for every command (one load).
#[derive(Default)]
pub struct Target {
    map: RwLock<Arc<LunMap>>,
    /// Moves after every change of `map` (a reader that sees it moved takes
    /// the new map).
    generation: AtomicU64,
    /// Request queues of the controller (statistics have a slot each).
    queues: usize,
    /// The controller's target port group (ALUA), which every logical unit
    /// added to it joins.
    port_group: Option<super::PortGroup>,
}

impl Target {
    pub fn new(luns: BTreeMap<u16, Arc<LogicalUnit>>) -> Target {
        Target::with_remote(luns, Vec::new())
    }

    /// A target whose `remote` LUNs are served elsewhere; this target
    /// still answers REPORT LUNS for all of them.
    pub fn with_remote(luns: BTreeMap<u16, Arc<LogicalUnit>>, remote: Vec<u16>) -> Target {
        Target::with_queues(luns, remote, 1)
    }

    /// As `with_remote`, for a controller of `queues` request queues.
    pub fn with_queues(
        luns: BTreeMap<u16, Arc<LogicalUnit>>,
        remote: Vec<u16>,
        queues: usize,
    ) -> Target {
        let stats = luns
            .keys()
            .chain(remote.iter())
            .map(|&l| (l, Arc::new(LunStats::new(queues))))
            .collect();
        let no_lun = Arc::new(LunStats::new(queues));
        Target {
            map: RwLock::new(Arc::new(LunMap::new(luns, remote, stats, no_lun))),
            generation: AtomicU64::new(0),
            queues,
            port_group: None,
        }
    }

    /// This target's controller is target port group `pg` of each of its
    /// logical units (ALUA, SPC-4 5.15), and of those added later.
    pub fn with_port_group(mut self, pg: super::PortGroup) -> Target {
        for (_, lu) in self.luns() {
            lu.add_port_group(pg);
        }
        self.port_group = Some(pg);
        self
    }

    /// The LUNs as they are now.
    pub fn snapshot(&self) -> Arc<LunMap> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The LUNs as they are now, through a request queue's cache: taken
    /// again only if the map changed since. A change is seen by every
    /// command that looks after the change was published (the transport
    /// registers a command before it looks: who waits for a LUN's commands
    /// after a change sees the command, or the command sees the change).
    /// Keep a cache no longer than a round: it holds the logical units.
    pub fn cached<'a>(&self, c: &'a mut Cached) -> &'a Arc<LunMap> {
        let g = self.generation.load(Ordering::Acquire);
        if c.generation != g {
            c.map = None;
            c.generation = g;
        }
        c.map.get_or_insert_with(|| self.snapshot())
    }

    /// Replace the map with `change` applied to a copy of it.
    /// New LUNs get statistics of their own, from zero; removed ones lose
    /// theirs (a LUN removed and added again counts from zero).
    fn update(&self, change: impl FnOnce(&mut BTreeMap<u16, Arc<LogicalUnit>>, &mut Vec<u16>)) {
        let mut slot = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut luns = slot.luns.clone();
        let mut remote = slot.remote.clone();
        change(&mut luns, &mut remote);
        let stats = luns
            .keys()
            .chain(remote.iter())
            .map(|&l| {
                let s = slot.stats.get(&l).cloned();
                (l, s.unwrap_or_else(|| Arc::new(LunStats::new(self.queues))))
            })
            .collect();
        *slot = Arc::new(LunMap::new(luns, remote, stats, slot.no_lun.clone()));
        drop(slot);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Add (or replace) an emulated logical unit as `lun`.
    pub fn insert(&self, lun: u16, lu: Arc<LogicalUnit>) {
        if let Some(pg) = self.port_group {
            lu.add_port_group(pg);
        }
        self.update(|luns, pt| {
            pt.retain(|&l| l != lun);
            luns.insert(lun, lu);
        });
    }

    /// Add `lun` as a LUN served elsewhere.
    pub fn insert_remote(&self, lun: u16) {
        self.update(|luns, pt| {
            luns.remove(&lun);
            pt.push(lun);
        });
    }

    /// Remove `lun`; later commands to it get LOGICAL UNIT NOT SUPPORTED.
    /// Returns its logical unit if it was emulated here.
    pub fn remove(&self, lun: u16) -> Option<Arc<LogicalUnit>> {
        let mut removed = None;
        self.update(|luns, pt| {
            pt.retain(|&l| l != lun);
            removed = luns.remove(&lun);
        });
        if let (Some(lu), Some(pg)) = (&removed, self.port_group) {
            lu.remove_port_group(pg.id);
        }
        removed
    }

    /// The controller's target port group, if it has one.
    pub fn port_group(&self) -> Option<super::PortGroup> {
        self.port_group
    }

    /// Whether `lun` exists here, emulated or passed through.
    pub fn has_lun(&self, lun: u16) -> bool {
        self.snapshot().has_lun(lun)
    }

    pub fn lu(&self, lun: u16) -> Option<Arc<LogicalUnit>> {
        self.snapshot().lu(lun).cloned()
    }

    /// The emulated logical units, by LUN.
    pub fn luns(&self) -> Vec<(u16, Arc<LogicalUnit>)> {
        let map = self.snapshot();
        map.luns.iter().map(|(l, lu)| (*l, lu.clone())).collect()
    }

    /// Execute a command addressed to `addr`.
    pub fn execute(&self, addr: LunAddress, cmd: Command) -> Outcome {
        self.snapshot().execute(addr, cmd)
    }

    /// Register a new nexus with every logical unit; `abort_hook(lun)`
    /// gives the hook that aborts the nexus' commands on that LUN.
    pub fn attach(&self, nexus: &Nexus, abort_hook: impl Fn(u16) -> Option<AbortHook>) {
        for (l, lu) in self.luns() {
            lu.attach(nexus, abort_hook(l));
        }
    }

    pub fn detach(&self, nexus: &Nexus) {
        for (_, lu) in self.luns() {
            lu.detach(nexus);
        }
    }
}

/// INQUIRY to the REPORT LUNS well-known LU: peripheral device type 1Eh.
fn well_known_inquiry(ctx: &Ctx) -> Result<Response, Sense> {
    let mut r = spc::inquiry_no_lun(ctx)?;
    if let Some(b) = r.data.first_mut() {
        *b = 0x1e;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn null_lu() -> Arc<LogicalUnit> {
        Arc::new(LogicalUnit::new(
            Arc::new(crate::backstore::NullBackstore::new(1 << 20)),
            super::super::LuConfig {
                block_size: 512,
                identity: super::super::Identity::derive("/t"),
                pr_file: None,
                pr_state: Default::default(),
                reservations: true,
            },
        ))
    }

    #[test]
    fn luns_added_and_removed_change_the_map_and_the_port_groups() {
        let pg = super::super::PortGroup {
            id: 7,
            relative_port: 7,
            state: super::super::AluaState::Standby,
        };
        let t = Target::with_queues(BTreeMap::new(), vec![4], 2).with_port_group(pg);
        let before = t.snapshot();
        let lu = null_lu();
        t.insert(2, lu.clone());
        assert_eq!(t.snapshot().lun_list(), &[2, 4]);
        // A command that took the old map runs against it.
        assert_eq!(before.lun_list(), &[4]);
        assert_eq!(lu.port_group(7).state, super::super::AluaState::Standby);
        assert!(t.snapshot().lun_stats(2).is_some());
        assert!(Arc::ptr_eq(&t.remove(2).unwrap(), &lu));
        assert_eq!(t.snapshot().lun_list(), &[4]);
        assert!(t.snapshot().lun_stats(2).is_none());
        // No longer served through port group 7.
        assert_eq!(lu.port_groups(1).iter().filter(|g| g.id == 7).count(), 0);
        assert!(t.remove(2).is_none());
        t.insert_remote(5);
        assert!(t.has_lun(5));
        assert!(t.remove(5).is_none());
        assert!(!t.has_lun(5));
    }
}
