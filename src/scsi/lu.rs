// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A logical unit: one backstore with its SCSI state, shared by every
//! controller (I_T nexus) that exposes it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::alua::{AluaState, PortGroup};
use super::atomic::{atomic_limits, AtomicLimits};
use super::command::{BlockIo, Failure, IoKind, Nexus, Outcome, Response};
use super::fnv::fnv1a64;
use super::pr::{Access, Effects, ItNexus, PrState};
use super::sanitize::state::Sanitizer;
use super::sense::{Sense, Status};
use super::writes::{BlockRange, WriteTracker};
use super::xcopy::results::CopyResults;
use crate::backstore::{Backstore, Route};

/// Largest number of unit attentions queued per nexus; older ones are
/// dropped first (SPC-4 5.14 lets a device server keep only the latest).
const MAX_PENDING_UA: usize = 8;

/// Names that identify a logical unit in INQUIRY data, stable across restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// NAA locally assigned (type 3) identifier: 4-bit NAA 3 + 60-bit value.
    pub naa: u64,
    /// Unit serial number (VPD page 80h), printable ASCII.
    pub serial: String,
}

impl Identity {
    /// Derive the identity from a stable key: the backstore's canonical
    /// path, or the serial the operator configured.
    pub fn derive(key: &str) -> Identity {
        let hash = fnv1a64(key.as_bytes());
        Identity {
            naa: (0x3 << 60) | (hash & 0x0fff_ffff_ffff_ffff),
            serial: format!("{hash:016x}"),
        }
    }
}

/// Settings of a logical unit that come from configuration.
#[derive(Clone, Debug)]
pub struct LuConfig {
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    pub identity: Identity,
    /// Where APTPL state is saved (None: APTPL requests are refused).
    pub pr_file: Option<PathBuf>,
    /// Persistent reservation state loaded at start (APTPL).
    pub pr_state: PrState,
    /// Whether reservations (persistent, and RESERVE/RELEASE) are served.
    /// Off for a backstore other processes may write too (`share-rw`):
    /// a reservation held here could not be enforced there, so the
    /// commands are refused rather than pretended.
    pub reservations: bool,
}

/// Aborts every command a nexus has in flight on this logical unit, and
/// returns when they have completed (PREEMPT AND ABORT).
pub type AbortHook = Arc<dyn Fn() + Send + Sync>;

/// An attached I_T nexus: its PR identity and, per path (controller
/// connection) it is attached through, how to abort its commands there.
struct Attached {
    it: ItNexus,
    paths: HashMap<u32, Option<AbortHook>>,
}

pub struct LogicalUnit {
    /// Shared with a sanitize operation's thread.
    backstore: Arc<dyn Backstore>,
    /// Backstore errors logged per minute (a failing disk under load
    /// fails every command; the rest are counted).
    io_errors: crate::ratelimit::RateLimit,
    /// The backstore's route, asked once (it never changes): the data path
    /// reads it for every command.
    route: Route,
    block_size: u32,
    /// Capacity in logical blocks; changes when the backstore is resized.
    blocks: AtomicU64,
    /// Writes refused although the backstore is open for writing (made
    /// read-only at run time).
    write_protected: AtomicBool,
    identity: Identity,
    /// Caching mode page WCE (SBC-3 6.4.5).
    wce: AtomicBool,
    /// Control mode page D_SENSE (SPC-4 7.5.8): descriptor-format sense.
    d_sense: AtomicBool,
    /// Stopped by START STOP UNIT.
    stopped: AtomicBool,
    /// Fast-path hint: some nexus may have a pending unit attention.
    ua_hint: AtomicBool,
    ua: Mutex<HashMap<u32, VecDeque<Sense>>>,
    writes: WriteTracker,
    pr: Mutex<PrState>,
    /// Fast-path hint: a reservation exists, commands must be checked.
    pr_active: AtomicBool,
    pr_file: Option<PathBuf>,
    /// See `LuConfig::reservations`.
    reservations: bool,
    attached: Mutex<HashMap<u32, Attached>>,
    /// SANITIZE state, shared with the operation's thread.
    sanitizer: Arc<Sanitizer>,
    /// What WRITE ATOMIC may do here; None: not offered.
    atomic: Option<AtomicLimits>,
    /// EXTENDED COPY results held for RECEIVE COPY RESULTS.
    copies: CopyResults,
    /// The target port groups (controllers) that serve this LU.
    port_groups: Mutex<Vec<PortGroup>>,
}

impl LogicalUnit {
    pub fn new(backstore: Arc<dyn Backstore>, config: LuConfig) -> LogicalUnit {
        let blocks = backstore.size() / u64::from(config.block_size);
        let atomic = atomic_limits(&*backstore, config.block_size);
        LogicalUnit {
            io_errors: crate::ratelimit::RateLimit::new(10, std::time::Duration::from_secs(60)),
            route: backstore.route(),
            backstore,
            block_size: config.block_size,
            blocks: AtomicU64::new(blocks),
            write_protected: AtomicBool::new(false),
            identity: config.identity,
            wce: AtomicBool::new(true),
            d_sense: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            ua_hint: AtomicBool::new(false),
            ua: Mutex::new(HashMap::new()),
            writes: WriteTracker::default(),
            pr_active: AtomicBool::new(
                config.pr_state.reservation.is_some() || config.pr_state.legacy.is_some(),
            ),
            pr: Mutex::new(config.pr_state),
            pr_file: config.pr_file,
            reservations: config.reservations,
            attached: Mutex::new(HashMap::new()),
            sanitizer: Arc::default(),
            atomic,
            copies: CopyResults::default(),
            port_groups: Mutex::new(Vec::new()),
        }
    }

    /// A controller serves this LU through target port group `pg` (a
    /// group of the same identifier replaces the one known).
    pub fn add_port_group(&self, pg: PortGroup) {
        let mut groups = self.port_groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|g| g.id != pg.id);
        groups.push(pg);
        groups.sort_by_key(|g| g.id);
    }

    /// Target port group `id` no longer serves this LU (its controller
    /// stopped exposing it).
    pub fn remove_port_group(&self, id: u16) {
        let mut groups = self.port_groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|g| g.id != id);
    }

    /// The target port groups serving this LU, in identifier order. A
    /// command through a port no group names (an LU no controller has
    /// declared, as in tests) sees its port as a group of its own,
    /// active/optimized.
    pub(crate) fn port_groups(&self, relative_port: u16) -> Vec<PortGroup> {
        let groups = self.port_groups.lock().unwrap_or_else(|e| e.into_inner());
        if groups.iter().any(|g| g.relative_port == relative_port) {
            return groups.clone();
        }
        let mut all = groups.clone();
        all.push(PortGroup {
            id: relative_port,
            relative_port,
            state: AluaState::ActiveOptimized,
        });
        all.sort_by_key(|g| g.id);
        all
    }

    /// The target port group a command through `relative_port` reaches.
    pub(crate) fn port_group(&self, relative_port: u16) -> PortGroup {
        let groups = self.port_groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .iter()
            .find(|g| g.relative_port == relative_port)
            .copied()
            .unwrap_or(PortGroup {
                id: relative_port,
                relative_port,
                state: AluaState::ActiveOptimized,
            })
    }

    /// Whether `designator` (a designation descriptor from a CSCD
    /// descriptor: code set, association and type, length, value) names
    /// this LU: its NAA designator (VPD page 83h), the one that fits the
    /// 16 bytes a CSCD descriptor has room for.
    pub(crate) fn has_designator(&self, designator: &[u8]) -> bool {
        let naa = self.identity.naa.to_be_bytes();
        designator.len() >= 12
            && designator[0] & 0x0f == 0x01 // binary
            && designator[1] & 0x3f == 0x03 // LU association, NAA
            && designator[3] == 8
            && designator[4..12] == naa
    }

    /// Whether the persistent reservation state lets `nexus` at the
    /// medium that way (for a copy that names this LU).
    pub(crate) fn access_allowed(&self, nexus: &Nexus, access: Access) -> bool {
        !self.pr_active.load(Ordering::Acquire) || self.pr_lock().allowed(&it_nexus(nexus), access)
    }

    /// The atomic write limits of this LU (Block Limits VPD), if it offers
    /// WRITE ATOMIC at all.
    pub(crate) fn atomic_limits(&self) -> Option<AtomicLimits> {
        self.atomic
    }

    pub(crate) fn backstore_arc(&self) -> Arc<dyn Backstore> {
        self.backstore.clone()
    }

    pub(crate) fn sanitizer(&self) -> &Sanitizer {
        &self.sanitizer
    }

    pub(crate) fn sanitizer_arc(&self) -> Arc<Sanitizer> {
        self.sanitizer.clone()
    }

    pub(crate) fn pr_lock(&self) -> MutexGuard<'_, PrState> {
        self.pr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refresh the fast-path hint after the PR state changed.
    pub(crate) fn pr_changed(&self, st: &PrState) {
        self.pr_active.store(
            st.reservation.is_some() || st.legacy.is_some(),
            Ordering::Release,
        );
    }

    fn attached(&self) -> MutexGuard<'_, HashMap<u32, Attached>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliver the unit attentions and aborts a PR service action asked for,
    /// to every attached nexus its registrations match. Call without the PR
    /// lock held: aborting waits for other connections' commands.
    pub(crate) fn apply_effects(&self, fx: Effects) {
        let mut hooks = Vec::new();
        {
            let attached = self.attached();
            for (reg, sense) in &fx.unit_attentions {
                for (id, a) in attached.iter() {
                    if reg.nexus.initiator == a.it.initiator
                        && (reg.all_tg_pt || reg.nexus.port == a.it.port)
                    {
                        self.establish_ua(*id, *sense);
                    }
                }
            }
            for reg in &fx.abort {
                for a in attached.values() {
                    if reg.nexus.initiator == a.it.initiator
                        && (reg.all_tg_pt || reg.nexus.port == a.it.port)
                    {
                        hooks.extend(a.paths.values().flatten().cloned());
                    }
                }
            }
        }
        for h in hooks {
            h();
        }
    }

    /// How the data path moves this LU's reads and writes.
    pub fn route(&self) -> Route {
        self.route
    }

    pub fn backstore(&self) -> &dyn Backstore {
        &*self.backstore
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }

    /// The backstore's size changed (or was changed to `size` bytes): take
    /// the new capacity, and tell every attached nexus (CAPACITY DATA HAS
    /// CHANGED, SBC-3 4.6). Returns the new capacity in blocks.
    pub fn resize(&self, size: Option<u64>) -> io::Result<u64> {
        let bytes = self.backstore.resize(size)?;
        let blocks = bytes / u64::from(self.block_size);
        if self.blocks.swap(blocks, Ordering::Relaxed) != blocks {
            self.establish_ua_all(Sense::CAPACITY_DATA_HAS_CHANGED, None);
        }
        Ok(blocks)
    }

    /// Refuse writes (or accept them again, if the backstore was opened for
    /// writing). Every attached nexus learns that the mode parameters (the
    /// WP bit) changed. Returns false if writes cannot be allowed because
    /// the backstore was opened read-only.
    pub fn set_read_only(&self, read_only: bool) -> bool {
        if !read_only && self.backstore.read_only() {
            return false;
        }
        if self.write_protected.swap(read_only, Ordering::Relaxed) != read_only {
            self.establish_ua_all(Sense::MODE_PARAMETERS_CHANGED, None);
        }
        true
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn read_only(&self) -> bool {
        self.backstore.read_only() || self.write_protected.load(Ordering::Relaxed)
    }

    /// Whether the LU is thin provisioned (its backstore has holes).
    pub fn thin(&self) -> bool {
        self.backstore.thin()
    }

    pub(crate) fn descriptor_sense(&self) -> bool {
        self.d_sense.load(Ordering::Relaxed)
    }

    /// The caching mode page's WCE (SBC-3 6.4.5): writes may stay in a
    /// volatile cache until a flush; off, every write is forced to the
    /// medium.
    pub(crate) fn write_cache(&self) -> bool {
        self.wce.load(Ordering::Relaxed)
    }

    /// Set WCE and D_SENSE (MODE SELECT); whether either changed.
    pub(crate) fn set_mode_bits(&self, wce: bool, d_sense: bool) -> bool {
        let was_wce = self.wce.swap(wce, Ordering::Relaxed);
        let was_d_sense = self.d_sense.swap(d_sense, Ordering::Relaxed);
        was_wce != wce || was_d_sense != d_sense
    }

    /// Stopped by START STOP UNIT (SBC-3 5.25).
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(crate) fn set_stopped(&self, stopped: bool) {
        self.stopped.store(stopped, Ordering::Relaxed);
    }

    /// The writes in progress (COMPARE AND WRITE and EXTENDED COPY wait
    /// for those that overlap).
    pub(crate) fn writes(&self) -> &WriteTracker {
        &self.writes
    }

    /// EXTENDED COPY operations of this LU (as the copy manager) and their
    /// results (RECEIVE COPY RESULTS).
    pub(crate) fn copies(&self) -> &CopyResults {
        &self.copies
    }

    /// Where APTPL reservation state is kept, if anywhere.
    pub(crate) fn pr_file(&self) -> Option<&std::path::Path> {
        self.pr_file.as_deref()
    }

    /// Whether this LU implements reservations (`LuConfig::reservations`).
    pub(crate) fn reservations_enabled(&self) -> bool {
        self.reservations
    }

    fn ua_map(&self) -> MutexGuard<'_, HashMap<u32, VecDeque<Sense>>> {
        self.ua.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A controller connected: its nexus is attached through it. A nexus
    /// seen for the first time sees a power-on unit attention, as after any
    /// device power-on (SAM-5 6.3.2); one already attached through another
    /// controller (the destination of a live migration, while the source
    /// still runs) keeps its pending unit attentions and gets no new one.
    pub fn attach(&self, nexus: &Nexus, abort: Option<AbortHook>) {
        let mut attached = self.attached();
        let a = attached.entry(nexus.id).or_insert_with(|| Attached {
            it: it_nexus(nexus),
            paths: HashMap::new(),
        });
        let first = a.paths.is_empty();
        a.paths.insert(nexus.path, abort);
        drop(attached);
        self.stopped.store(false, Ordering::Relaxed);
        if first {
            let mut map = self.ua_map();
            map.insert(nexus.id, VecDeque::from([Sense::POWER_ON_RESET_OCCURRED]));
            self.ua_hint.store(true, Ordering::Release);
        }
    }

    /// A controller disconnected. When it was the nexus' last path, the
    /// nexus is gone: its unit attentions go, and I_T nexus loss releases
    /// an SPC-2 reservation (SPC-2 5.5.1).
    pub fn detach(&self, nexus: &Nexus) {
        let mut attached = self.attached();
        let last = match attached.get_mut(&nexus.id) {
            Some(a) => {
                a.paths.remove(&nexus.path);
                a.paths.is_empty()
            }
            None => true,
        };
        if !last {
            return;
        }
        attached.remove(&nexus.id);
        drop(attached);
        self.ua_map().remove(&nexus.id);
        self.copies.forget(Some(nexus.id));
        let mut st = self.pr_lock();
        st.nexus_loss(&it_nexus(nexus));
        self.pr_changed(&st);
    }

    /// Queue a unit attention for one nexus.
    pub fn establish_ua(&self, nexus_id: u32, sense: Sense) {
        let mut map = self.ua_map();
        let q = map.entry(nexus_id).or_default();
        if !q.contains(&sense) {
            if q.len() >= MAX_PENDING_UA {
                q.pop_front();
            }
            q.push_back(sense);
        }
        self.ua_hint.store(true, Ordering::Release);
    }

    /// Queue a unit attention for every attached nexus except `except`.
    pub fn establish_ua_all(&self, sense: Sense, except: Option<u32>) {
        let ids: Vec<u32> = self.ua_map().keys().copied().collect();
        for id in ids.into_iter().filter(|id| Some(*id) != except) {
            self.establish_ua(id, sense);
        }
    }

    /// Take the oldest pending unit attention for a nexus.
    pub fn take_ua(&self, nexus_id: u32) -> Option<Sense> {
        if !self.ua_hint.load(Ordering::Acquire) {
            return None;
        }
        let mut map = self.ua_map();
        let s = map.get_mut(&nexus_id).and_then(|q| q.pop_front());
        if map.values().all(|q| q.is_empty()) {
            self.ua_hint.store(false, Ordering::Release);
        }
        s
    }

    /// LOGICAL UNIT RESET (SAM-5 7.7): every nexus gets 29h/03h. Mode
    /// parameters return to their defaults? No: SAM keeps current values
    /// unless saved; we keep them, as they are not saveable.
    pub fn lun_reset(&self) {
        self.establish_ua_all(Sense::BUS_DEVICE_RESET_FUNCTION_OCCURRED, None);
        self.copies.forget(None);
        // Registrations and persistent reservations survive; SPC-2 ones do not.
        let mut st = self.pr_lock();
        st.lun_reset();
        self.pr_changed(&st);
    }

    /// I_T NEXUS RESET (SAM-5 7.8): the nexus gets 29h/07h.
    pub fn nexus_reset(&self, nexus: &Nexus) {
        self.establish_ua(nexus.id, Sense::I_T_NEXUS_LOSS_OCCURRED);
        self.copies.forget(Some(nexus.id));
        let mut st = self.pr_lock();
        st.nexus_loss(&it_nexus(nexus));
        self.pr_changed(&st);
    }

    /// Flush the backstore (shutdown, disconnect).
    pub fn flush(&self) -> io::Result<()> {
        self.backstore.flush()
    }

    /// Check that `blocks` blocks from `lba` are inside the medium and return
    /// the byte offset and length.
    pub(crate) fn byte_range(&self, lba: u64, blocks: u64) -> Result<(u64, u64), Sense> {
        let end = lba.checked_add(blocks);
        match end {
            Some(end) if end <= self.blocks() => {
                let bs = u64::from(self.block_size);
                Ok((lba * bs, blocks * bs))
            }
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    /// Build the I/O for a READ/WRITE/FLUSH; a write registers its range.
    pub(crate) fn block_io(&self, kind: IoKind, lba: u64, blocks: u64, fua: bool) -> Outcome {
        let bs = u64::from(self.block_size);
        let sync = kind == IoKind::Write && (fua || !self.wce.load(Ordering::Relaxed));
        if kind == IoKind::Write {
            self.writes.begin(BlockRange::new(lba, blocks));
            // A SANITIZE may have started between the dispatch check and
            // this registration (it waits for registered writes only).
            if let Some(refused) = self.sanitizer.refusal(true) {
                self.writes.end(BlockRange::new(lba, blocks));
                return self.failed(refused);
            }
        }
        Outcome::Io(BlockIo {
            kind,
            lba,
            blocks,
            offset: lba * bs,
            len: blocks * bs,
            sync,
        })
    }

    /// Finish a [`BlockIo`] the transport ran: the status, or the sense that
    /// says what failed and where.
    pub fn complete_io(&self, io: &BlockIo, result: io::Result<()>) -> Response {
        if io.kind == IoKind::Write {
            self.writes.end(BlockRange::new(io.lba, io.blocks));
        }
        match result {
            Ok(()) => Response::good(Vec::new()),
            Err(e) => {
                let sense = self.io_error_sense(io.kind, io.lba, &e);
                Response::check_condition(&sense, self.descriptor_sense())
            }
        }
    }

    /// The sense for a backstore error: a thin LU out of space is SPACE
    /// ALLOCATION FAILED (SBC-4 4.7.3.6); any other failed read is an
    /// unrecovered read error and any other failed write or flush a write
    /// error (SBC-4 4.15, 4.16), INFORMATION the command's LBA. Logged at
    /// most 10 times a minute per LU.
    pub(crate) fn io_error_sense(&self, kind: IoKind, lba: u64, e: &io::Error) -> Sense {
        crate::warn_limited!(
            self.io_errors,
            "{}: {:?} at LBA {lba} failed: {e}",
            self.backstore.path().display(),
            kind
        );
        match (kind, e.raw_os_error()) {
            (IoKind::Write, Some(libc::ENOSPC)) => Sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
            (IoKind::Read, _) => Sense::UNRECOVERED_READ_ERROR.with_information(lba),
            (IoKind::Write, _) => Sense::WRITE_ERROR.with_information(lba),
            (IoKind::Flush, _) => Sense::WRITE_ERROR,
        }
    }

    /// Run an I/O synchronously between `buf` and the backstore (for the
    /// transport's fallback path and for tests).
    pub fn run_io_sync(&self, io: &BlockIo, buf: &mut [u8]) -> io::Result<()> {
        let len =
            usize::try_from(io.len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let buf = buf
            .get_mut(..len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        match io.kind {
            IoKind::Read => self.backstore.read_at(buf, io.offset),
            IoKind::Write => {
                self.backstore.write_at(buf, io.offset)?;
                if io.sync {
                    self.backstore.flush()?;
                }
                Ok(())
            }
            IoKind::Flush => self.backstore.flush(),
        }
    }

    /// The finished outcome for a failure (as `execute` answers it).
    pub(crate) fn failed(&self, failure: Failure) -> Outcome {
        let descriptor = self.descriptor_sense();
        Outcome::Done(match failure {
            Failure::Sense(sense) => Response::check_condition(&sense, descriptor),
            Failure::Status(status) => Response::status(status),
            Failure::Progress(sense, progress) => Response {
                status: Status::CheckCondition as u8,
                sense: sense.encode_with_progress(descriptor, progress),
                data: Vec::new(),
            },
        })
    }

    pub(crate) fn status_busy() -> Failure {
        Failure::Status(Status::Busy)
    }
}

/// The persistent-reservation identity of a nexus.
pub(crate) fn it_nexus(n: &Nexus) -> ItNexus {
    ItNexus::new(&n.initiator, n.relative_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_uses_naa_3() {
        let a = Identity::derive("/srv/disk.img");
        assert_eq!(a, Identity::derive("/srv/disk.img"));
        assert_eq!(a.naa >> 60, 3);
        assert_ne!(a, Identity::derive("/srv/other.img"));
        assert_eq!(a.serial.len(), 16);
    }
}
