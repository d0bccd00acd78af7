// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The daemon's live set of controllers and LUNs, changed at run time by
//! the control socket (and filled at start from the configuration).
//!
//! One lock serialises every change, and each change either completes or
//! leaves everything as it was: what it opened, bound or logged in to is
//! released on failure. A backstore object (device and inode, whatever the
//! path) is one `LogicalUnit` however many controllers expose it; it is
//! opened and claimed with its first LUN and closed with its last.

mod info;
mod units;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use log::{error, info, warn};

use crate::config::{ControllerConfig, LunConfig};
use crate::config_file::FileConfig;
use crate::device::{Controller, Lun, RemoteLuns};
use crate::iscsi::client::Client;
use crate::sandbox::SocketAccess;
use crate::scsi::{Nexus, PortGroup, Sense, Target};
use crate::server;

pub use info::{ControllerInfo, LunInfo};
use units::Units;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("No controller has socket {0}")]
    NoController(PathBuf),
    #[error("A controller with socket {0} exists already")]
    ControllerExists(PathBuf),
    #[error("Controller {0} has a front-end connected (give force to remove it anyway)")]
    Connected(PathBuf),
    #[error("Controller {socket} has no LUN {lun}")]
    NoLun { socket: PathBuf, lun: u16 },
    #[error("Controller {socket} has a LUN {lun} already")]
    LunExists { socket: PathBuf, lun: u16 },
    #[error("Controller {0} has no free LUN number")]
    NoFreeLun(PathBuf),
    #[error("LUN {lun} of {socket}: {why}")]
    Unsupported {
        socket: PathBuf,
        lun: u16,
        why: &'static str,
    },
    #[error("Cannot resize LUN {lun} of {socket}")]
    Resize {
        socket: PathBuf,
        lun: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("The daemon is stopping")]
    Stopping,
    #[error(transparent)]
    Server(#[from] server::Error),
}

impl Error {
    /// As the daemon's start-up error.
    pub fn into_server_error(self) -> server::Error {
        match self {
            Error::Server(e) => e,
            e => server::Error::Registry(Box::new(e)),
        }
    }
}

/// A controller opened but not started (see [`Registry::open_controller`]).
pub struct Opened {
    config: ControllerConfig,
    luns: BTreeMap<u16, Arc<crate::scsi::LogicalUnit>>,
    credentials: server::Credentials,
    listener: UnixListener,
}

/// One controller: its configuration as it is now, its device-side state
/// and its accept thread.
struct Entry {
    config: ControllerConfig,
    ctrl: Arc<Controller>,
    shared: Arc<server::Shared>,
    listener: Arc<UnixListener>,
    thread: Option<JoinHandle<()>>,
}

struct State {
    /// In the order they were added (their default relative port).
    controllers: Vec<Entry>,
    units: Units,
    /// iSCSI sessions, shared by the controllers of one nexus.
    sessions: server::Sessions,
    nexus_ids: HashMap<(String, u16), u32>,
    next_path: u32,
    stopping: bool,
}

pub struct Registry {
    state: Mutex<State>,
    /// The configuration file the daemon started with, if any.
    config_file: Option<PathBuf>,
    /// The daemon's own settings, as a configuration file gives them.
    settings: FileConfig,
    /// The owner, group and mode of every controller's socket.
    sockets: SocketAccess,
}

impl Registry {
    pub fn new(
        config_file: Option<PathBuf>,
        settings: FileConfig,
        sockets: SocketAccess,
    ) -> Registry {
        Registry {
            state: Mutex::new(State {
                controllers: Vec::new(),
                units: Units::default(),
                sessions: HashMap::new(),
                nexus_ids: HashMap::new(),
                next_path: 1,
                stopping: false,
            }),
            config_file,
            settings,
            sockets,
        }
    }

    /// The daemon's settings (control socket, metrics), with no controller.
    pub fn settings(&self) -> FileConfig {
        FileConfig {
            controllers: Vec::new(),
            ..self.settings.clone()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config_file(&self) -> Option<&Path> {
        self.config_file.as_deref()
    }

    /// Open the controller's LUNs, listen on its socket, log in to its
    /// iSCSI targets and start accepting connections.
    pub fn add_controller(&self, c: ControllerConfig) -> Result<(), Error> {
        let opened = self.open_controller(c)?;
        self.start_controller(opened)
    }

    /// The first half of [`Registry::add_controller`], which needs the
    /// privileges the daemon starts with: open and claim the controller's
    /// local LUNs, read its iSCSI credentials files and listen on its
    /// socket (with the daemon's socket owner, group and mode). No thread
    /// is started. Hand the result to [`Registry::start_controller`], or to
    /// [`Registry::discard`].
    pub fn open_controller(&self, c: ControllerConfig) -> Result<Opened, Error> {
        let mut st = self.lock();
        if st.stopping {
            return Err(Error::Stopping);
        }
        if st.controllers.iter().any(|e| e.config.socket == c.socket) {
            return Err(Error::ControllerExists(c.socket));
        }
        let mut luns = BTreeMap::new();
        for (&n, lc) in c.luns.iter().filter(|(_, lc)| lc.iscsi.is_none()) {
            match st.units.open(&c.socket, n, lc) {
                Ok(lu) => {
                    luns.insert(n, lu);
                }
                Err(e) => {
                    release(&mut st, luns);
                    return Err(e.into());
                }
            }
        }
        let credentials = match server::Credentials::load(&c.socket, &c.luns) {
            Ok(cr) => cr,
            Err(e) => {
                release(&mut st, luns);
                return Err(e.into());
            }
        };
        let listener = match crate::claim::listen_unix_as(&c.socket, Some(&self.sockets)) {
            Ok(l) => l,
            Err(e) => {
                release(&mut st, luns);
                return Err(server::Error::from(e).into());
            }
        };
        Ok(Opened {
            config: c,
            luns,
            credentials,
            listener,
        })
    }

    /// Give back what [`Registry::open_controller`] opened.
    pub fn discard(&self, opened: Opened) {
        let mut st = self.lock();
        release(&mut st, opened.luns);
        drop(opened.listener);
        let _ = std::fs::remove_file(&opened.config.socket);
    }

    /// The second half of [`Registry::add_controller`]: start the iSCSI
    /// sessions and the accept thread.
    pub fn start_controller(&self, opened: Opened) -> Result<(), Error> {
        let Opened {
            config: mut c,
            luns,
            credentials,
            listener,
        } = opened;
        let mut st = self.lock();
        let refused = if st.stopping {
            Some(Error::Stopping)
        } else if st.controllers.iter().any(|e| e.config.socket == c.socket) {
            Some(Error::ControllerExists(c.socket.clone()))
        } else {
            None
        };
        if let Some(e) = refused {
            release(&mut st, luns);
            return Err(e);
        }
        // By default its position among the controllers, from 1 (as on the
        // command line); fixed now, so that it survives the removal of
        // other controllers and a save-config + restart.
        let port = c
            .relative_port
            .unwrap_or_else(|| u16::try_from(st.controllers.len() + 1).unwrap_or(u16::MAX));
        c.relative_port = Some(port);
        let path = st.next_path;
        let listener = Arc::new(listener);
        let before: Vec<Client> = st.sessions.values().map(|(s, _)| s.clone()).collect();
        let remote = match server::remote_luns(&c, &c.luns, port, &mut st.sessions, &credentials) {
            Ok(r) => r,
            Err(e) => {
                forget_new_sessions(&mut st.sessions, &before);
                release(&mut st, luns);
                let _ = std::fs::remove_file(&c.socket);
                return Err(e.into());
            }
        };
        let next_id = st.nexus_ids.len() as u32 + 1;
        let id = *st
            .nexus_ids
            .entry((c.initiator.clone(), port))
            .or_insert(next_id);
        info!(
            "Listening on {} with {} LUN(s), {} request queue(s)",
            c.socket.display(),
            c.luns.len(),
            c.request_queues
        );
        let ctrl = Arc::new(Controller {
            name: c.socket.display().to_string(),
            target: Target::with_queues(luns, remote.keys().copied().collect(), c.request_queues)
                .with_port_group(PortGroup {
                    id: port,
                    relative_port: port,
                    state: c.alua_state,
                }),
            remote: RemoteLuns::new(remote),
            nexus: Nexus {
                id,
                path,
                relative_port: port,
                initiator: c.initiator.as_str().into(),
            },
            request_queues: c.request_queues,
            coalesce: c.coalesce,
            connected: Default::default(),
            problems: Controller::problem_limit(),
        });
        let shared = Arc::new(server::Shared::default());
        let thread = {
            let (ctrl, listener, shared) = (ctrl.clone(), listener.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("accept-{path}"))
                .spawn(move || server::accept_loop(&ctrl, &listener, &shared))
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                forget_new_sessions(&mut st.sessions, &before);
                let luns = ctrl.target.luns().into_iter().collect();
                drop(ctrl);
                release(&mut st, luns);
                let _ = std::fs::remove_file(&c.socket);
                return Err(server::Error::Signals(e).into());
            }
        };
        st.next_path += 1;
        st.controllers.push(Entry {
            config: c,
            ctrl,
            shared,
            listener,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Stop serving a controller. With a front-end connected it is refused
    /// unless `force`; forced, the connection is shut down as at daemon
    /// shutdown (its commands complete, or fail for an unreachable iSCSI
    /// target) before the controller goes.
    pub fn remove_controller(&self, socket: &Path, force: bool) -> Result<(), Error> {
        let mut st = self.lock();
        let i = st
            .controllers
            .iter()
            .position(|e| e.config.socket == socket)
            .ok_or_else(|| Error::NoController(socket.into()))?;
        if st.controllers[i].ctrl.is_connected() && !force {
            return Err(Error::Connected(socket.into()));
        }
        let e = st.controllers.remove(i);
        let State {
            units,
            sessions,
            controllers,
            ..
        } = &mut *st;
        stop_controller(units, sessions, controllers, e);
        Ok(())
    }

    /// Add a LUN (`lun`, or the lowest free number) to a controller; a
    /// connected guest is told to scan it. Returns its number.
    pub fn add_lun(&self, socket: &Path, lun: Option<u16>, lc: LunConfig) -> Result<u16, Error> {
        let mut st = self.lock();
        let State {
            controllers,
            units,
            sessions,
            ..
        } = &mut *st;
        let e = find(controllers, socket)?;
        let n = match lun {
            Some(n) if e.config.luns.contains_key(&n) => {
                return Err(Error::LunExists {
                    socket: socket.into(),
                    lun: n,
                })
            }
            Some(n) => n,
            None => (0..=crate::scsi::lun::MAX_LUN)
                .find(|n| !e.config.luns.contains_key(n))
                .ok_or_else(|| Error::NoFreeLun(socket.into()))?,
        };
        if lc.iscsi.is_some() {
            let one = BTreeMap::from([(n, lc.clone())]);
            let port = e.ctrl.nexus.relative_port;
            let credentials = server::Credentials::load(socket, &one)?;
            let mut remote = server::remote_luns(&e.config, &one, port, sessions, &credentials)?;
            let r = remote.remove(&n).ok_or_else(|| Error::NoLun {
                socket: socket.into(),
                lun: n,
            })?;
            e.ctrl.add_lun(n, Lun::Remote(r));
        } else {
            let lu = units.open(&e.config.socket, n, &lc)?;
            e.ctrl.add_lun(n, Lun::Local(lu));
        }
        info!("{}: LUN {n} added", socket.display());
        e.config.luns.insert(n, lc);
        Ok(n)
    }

    /// Remove a LUN from a controller. Its commands in flight complete
    /// first, then a connected guest is told it is gone.
    pub fn remove_lun(&self, socket: &Path, lun: u16) -> Result<(), Error> {
        let mut st = self.lock();
        let State {
            controllers,
            units,
            sessions,
            ..
        } = &mut *st;
        let e = find(controllers, socket)?;
        if !e.config.luns.contains_key(&lun) {
            return Err(Error::NoLun {
                socket: socket.into(),
                lun,
            });
        }
        match e.ctrl.remove_lun(lun) {
            Some(Lun::Local(lu)) => {
                // Other controllers of the same port group still serve it.
                for (o, _) in exposing(controllers, &lu) {
                    if let Some(pg) = o.ctrl.target.port_group() {
                        lu.add_port_group(pg);
                    }
                }
                units.release(lu)
            }
            Some(Lun::Remote(r)) => {
                e.config.luns.remove(&lun);
                let clients = clients_of(sessions, &[r.session.id()]);
                end_unused_sessions(sessions, controllers, &clients);
            }
            None => {}
        }
        if let Ok(e) = find(controllers, socket) {
            e.config.luns.remove(&lun);
        }
        info!("{}: LUN {lun} removed", socket.display());
        Ok(())
    }

    /// Take a LUN's new size (`size` bytes for a file or null LUN, or the
    /// size its file or block device has now); every controller exposing
    /// it tells its guest. Returns the size in bytes.
    pub fn resize_lun(&self, socket: &Path, lun: u16, size: Option<u64>) -> Result<u64, Error> {
        let st = self.lock();
        let e = find_ref(&st.controllers, socket)?;
        let no_lun = || Error::NoLun {
            socket: socket.into(),
            lun,
        };
        let lc = e.config.luns.get(&lun).ok_or_else(no_lun)?;
        if lc.iscsi.is_some() {
            if size.is_some() {
                return Err(Error::Unsupported {
                    socket: socket.into(),
                    lun,
                    why: "an iSCSI LUN is resized at its target; resize without a size to \
                          tell the guest",
                });
            }
            e.ctrl.lun_changed(lun, Sense::CAPACITY_DATA_HAS_CHANGED);
            return Ok(0);
        }
        let lu = e.ctrl.target.lu(lun).ok_or_else(no_lun)?;
        if let Some(b) = size {
            if b < u64::from(lu.block_size()) || b % u64::from(lu.block_size()) != 0 {
                return Err(Error::Unsupported {
                    socket: socket.into(),
                    lun,
                    why: "the size must be a non-zero multiple of the logical block size",
                });
            }
        }
        let blocks = lu.resize(size).map_err(|source| Error::Resize {
            socket: socket.into(),
            lun,
            source,
        })?;
        let bytes = blocks * u64::from(lu.block_size());
        info!("{}: LUN {lun} is {bytes} bytes now", socket.display());
        for (o, l) in exposing(&st.controllers, &lu) {
            o.ctrl.lun_changed(l, Sense::CAPACITY_DATA_HAS_CHANGED);
        }
        Ok(bytes)
    }

    /// Make a LUN read-only (or writable again, if its backstore was
    /// opened for writing); every controller exposing it tells its guest.
    pub fn set_read_only(&self, socket: &Path, lun: u16, read_only: bool) -> Result<(), Error> {
        let mut st = self.lock();
        let no_lun = || Error::NoLun {
            socket: socket.into(),
            lun,
        };
        let e = find_ref(&st.controllers, socket)?;
        if e.config.luns.get(&lun).is_some_and(|l| l.iscsi.is_some()) {
            return Err(Error::Unsupported {
                socket: socket.into(),
                lun,
                why: "an iSCSI LUN is made read-only at its target",
            });
        }
        let lu = e.ctrl.target.lu(lun).ok_or_else(no_lun)?;
        if !lu.set_read_only(read_only) {
            return Err(Error::Unsupported {
                socket: socket.into(),
                lun,
                why: "its backstore was opened read-only: remove it and add it again writable",
            });
        }
        info!(
            "{}: LUN {lun} is {} now",
            socket.display(),
            if read_only { "read-only" } else { "writable" }
        );
        let users: Vec<(PathBuf, u16)> = exposing(&st.controllers, &lu)
            .map(|(o, l)| {
                o.ctrl.lun_changed(l, Sense::MODE_PARAMETERS_CHANGED);
                (o.config.socket.clone(), l)
            })
            .collect();
        st.units.set_read_only(&lu, read_only);
        for e in st.controllers.iter_mut() {
            for (s, l) in &users {
                if &e.config.socket == s {
                    if let Some(c) = e.config.luns.get_mut(l) {
                        c.read_only = read_only;
                    }
                }
            }
        }
        Ok(())
    }

    /// The controllers as they are configured now (for save-config).
    pub fn controllers(&self) -> Vec<ControllerConfig> {
        self.lock()
            .controllers
            .iter()
            .map(|e| e.config.clone())
            .collect()
    }

    /// Stop every controller (daemon shutdown): connections end after
    /// their commands complete, backstores are flushed, sockets removed.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.stopping = true;
        let entries = std::mem::take(&mut st.controllers);
        // Fail what iSCSI targets still owe, so that connections can drain;
        // then end every connection at once, and wait for them.
        for (s, _) in st.sessions.values() {
            s.shutdown();
        }
        for e in &entries {
            e.shared.stop(&e.listener);
        }
        let State {
            units,
            sessions,
            controllers,
            ..
        } = &mut *st;
        for e in entries {
            stop_controller(units, sessions, controllers, e);
        }
    }
}

/// Release the logical units a controller being added had opened.
fn release(st: &mut State, luns: BTreeMap<u16, Arc<crate::scsi::LogicalUnit>>) {
    for lu in luns.into_values() {
        st.units.release(lu);
    }
}

/// End a controller's accept loop and connection, wait for them, flush and
/// release its LUNs, end the iSCSI sessions no other controller uses, and
/// remove its socket.
fn stop_controller(
    units: &mut Units,
    sessions: &mut server::Sessions,
    others: &[Entry],
    mut e: Entry,
) {
    let clients = remote_clients(sessions, &e.ctrl);
    // An unreachable target's commands fail rather than hold the
    // connection's end, unless another controller still uses the session.
    for c in &clients {
        if !others.iter().any(|o| uses(o, c)) {
            c.shutdown();
        }
    }
    e.shared.stop(&e.listener);
    if let Some(t) = e.thread.take() {
        if t.join().is_err() {
            error!("{}: the accept thread panicked", e.ctrl.name);
        }
    }
    let luns = e.ctrl.target.luns();
    for (l, _) in &luns {
        e.ctrl.target.remove(*l);
    }
    for (_, lu) in luns {
        if let Err(err) = lu.flush() {
            error!("Flushing {} failed: {err}", lu.backstore().path().display());
        }
        for (o, _) in exposing(others, &lu) {
            if let Some(pg) = o.ctrl.target.port_group() {
                lu.add_port_group(pg);
            }
        }
        units.release(lu);
    }
    end_unused_sessions(sessions, others, &clients);
    if let Err(err) = std::fs::remove_file(&e.config.socket) {
        warn!("Cannot remove {}: {err}", e.config.socket.display());
    }
    info!("{}: controller removed", e.ctrl.name);
}

/// The iSCSI sessions a controller's LUNs use.
fn remote_clients(sessions: &server::Sessions, ctrl: &Controller) -> Vec<Client> {
    let ids: Vec<usize> = ctrl
        .remote
        .values()
        .iter()
        .map(|r| r.session.id())
        .collect();
    clients_of(sessions, &ids)
}

/// The sessions with these ids (`remote::Session::id`), once each.
fn clients_of(sessions: &server::Sessions, ids: &[usize]) -> Vec<Client> {
    sessions
        .values()
        .filter(|(s, _)| ids.contains(&s.session_id()))
        .map(|(s, _)| s.clone())
        .collect()
}

fn uses(e: &Entry, c: &Client) -> bool {
    e.ctrl
        .remote
        .values()
        .iter()
        .any(|r| r.session.id() == c.session_id())
}

/// Of `clients` (sessions a LUN or controller just stopped using), end
/// those no controller uses any more.
fn end_unused_sessions(sessions: &mut server::Sessions, controllers: &[Entry], clients: &[Client]) {
    for c in clients {
        if !controllers.iter().any(|e| uses(e, c)) {
            sessions.retain(|_, (s, _)| !s.same_session(c));
            c.shutdown();
        }
    }
}

/// Sessions set up by a change that failed: not kept.
fn forget_new_sessions(sessions: &mut server::Sessions, before: &[Client]) {
    sessions.retain(|_, (s, _)| {
        let old = before.iter().any(|b| b.same_session(s));
        if !old {
            s.shutdown();
        }
        old
    });
}

fn find<'a>(controllers: &'a mut [Entry], socket: &Path) -> Result<&'a mut Entry, Error> {
    controllers
        .iter_mut()
        .find(|e| e.config.socket == socket)
        .ok_or_else(|| Error::NoController(socket.into()))
}

fn find_ref<'a>(controllers: &'a [Entry], socket: &Path) -> Result<&'a Entry, Error> {
    controllers
        .iter()
        .find(|e| e.config.socket == socket)
        .ok_or_else(|| Error::NoController(socket.into()))
}

/// Every (controller, LUN) that exposes `lu`.
fn exposing<'a>(
    controllers: &'a [Entry],
    lu: &'a Arc<crate::scsi::LogicalUnit>,
) -> impl Iterator<Item = (&'a Entry, u16)> + 'a {
    controllers.iter().flat_map(move |e| {
        e.ctrl
            .target
            .luns()
            .into_iter()
            .filter(|(_, o)| Arc::ptr_eq(o, lu))
            .map(move |(l, _)| (e, l))
    })
}
