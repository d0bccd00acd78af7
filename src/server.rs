// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The daemon: opens the backstores, listens on every controller's socket,
//! serves one QEMU connection per socket at a time (accepting the next one
//! with fresh device state when it goes), and shuts down cleanly on
//! SIGINT/SIGTERM.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use log::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backstore::{self, Backstore};
use crate::config::{Config, LunConfig};
use crate::device::{Controller, ScsiBackend};
use crate::scsi::{Identity, LogicalUnit, LuConfig, Nexus, Target};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Backstore(#[from] backstore::Error),
    #[error("Backstore {0} is configured with different options on different LUNs")]
    ConflictingBackstore(PathBuf),
    #[error("Backstore {path} is smaller than one {block_size}-byte block")]
    TooSmall { path: PathBuf, block_size: u32 },
    #[error("Cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot set up signal handling")]
    Signals(#[source] io::Error),
    #[error("No --socket given")]
    NoController,
    #[error(transparent)]
    PrState(#[from] crate::scsi::pr::PersistError),
    #[error("iSCSI LUN {lun} of {socket}")]
    Iscsi {
        lun: u16,
        socket: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// State shared between the accept threads and the signal handler.
struct Shared {
    stop: AtomicBool,
    active: Vec<Mutex<Option<ShutdownHandle>>>,
}

/// Open every backstore once, shared by all LUNs that name the same file.
fn open_logical_units(cfg: &Config) -> Result<Vec<BTreeMap<u16, Arc<LogicalUnit>>>, Error> {
    let mut by_path: HashMap<PathBuf, (LunConfig, Arc<LogicalUnit>)> = HashMap::new();
    let mut out = Vec::new();
    for c in &cfg.controllers {
        let mut luns = BTreeMap::new();
        for (&n, lc) in &c.luns {
            if lc.iscsi.is_some() {
                // Served by the controller's iSCSI session (remote_luns).
                continue;
            }
            if let Some(size) = lc.null_size {
                // Null LUs are never shared: each --lun null is its own LU.
                let key = lc
                    .serial
                    .clone()
                    .unwrap_or_else(|| format!("null:{}:{n}", c.socket.display()));
                let mut identity = Identity::derive(&key);
                if let Some(s) = &lc.serial {
                    identity.serial = s.clone();
                }
                info!(
                    "{}: LUN {n} is a null backstore of {size} bytes",
                    c.socket.display()
                );
                let lu = LogicalUnit::new(
                    Backstore::null(size),
                    LuConfig {
                        block_size: lc.block_size,
                        identity,
                        pr_file: None,
                        pr_state: Default::default(),
                    },
                );
                luns.insert(n, Arc::new(lu));
                continue;
            }
            let canonical =
                Backstore::canonical_id(&lc.path).map_err(|source| backstore::Error::Open {
                    path: lc.path.clone(),
                    source,
                })?;
            let lu = match by_path.get(&canonical) {
                Some((seen, lu)) => {
                    let same = LunConfig {
                        path: seen.path.clone(),
                        ..lc.clone()
                    };
                    if &same != seen {
                        return Err(Error::ConflictingBackstore(canonical));
                    }
                    lu.clone()
                }
                None => {
                    let store = Backstore::open(&canonical, lc.read_only, lc.direct)?;
                    if store.size() < u64::from(lc.block_size) {
                        return Err(Error::TooSmall {
                            path: canonical,
                            block_size: lc.block_size,
                        });
                    }
                    let key = lc
                        .serial
                        .clone()
                        .unwrap_or_else(|| canonical.to_string_lossy().into_owned());
                    let mut identity = Identity::derive(&key);
                    if let Some(s) = &lc.serial {
                        identity.serial = s.clone();
                    }
                    let pr_file = lc.pr_file.clone().unwrap_or_else(|| {
                        default_pr_file(&canonical, store.kind(), &identity.serial)
                    });
                    let pr_state = crate::scsi::pr::load(&pr_file, identity.naa)?;
                    if let Some(st) = &pr_state {
                        info!(
                            "{}: restored {} registration(s){} from {}",
                            canonical.display(),
                            st.registrations.len(),
                            if st.reservation.is_some() {
                                " and a reservation"
                            } else {
                                ""
                            },
                            pr_file.display()
                        );
                    }
                    info!(
                        "Opened {} ({} bytes, {}-byte blocks{}{})",
                        canonical.display(),
                        store.size(),
                        lc.block_size,
                        if lc.read_only { ", read-only" } else { "" },
                        if lc.direct { ", O_DIRECT" } else { "" }
                    );
                    let lu = Arc::new(LogicalUnit::new(
                        store,
                        LuConfig {
                            block_size: lc.block_size,
                            identity,
                            pr_file: Some(pr_file),
                            pr_state: pr_state.unwrap_or_default(),
                        },
                    ));
                    by_path.insert(canonical, (lc.clone(), lu.clone()));
                    lu
                }
            };
            luns.insert(n, lu);
        }
        out.push(luns);
    }
    Ok(out)
}

/// Default APTPL state file: `PATH.pr` beside a regular file; for a block
/// device (whose directory is /dev), STATE_DIR/SERIAL.pr.
fn default_pr_file(path: &std::path::Path, kind: backstore::Kind, serial: &str) -> PathBuf {
    match kind {
        backstore::Kind::File => {
            let mut p = path.as_os_str().to_owned();
            p.push(".pr");
            PathBuf::from(p)
        }
        backstore::Kind::Block | backstore::Kind::Null => {
            PathBuf::from(STATE_DIR).join(format!("{serial}.pr"))
        }
    }
}

/// Where state of block-device LUs lives by default.
pub const STATE_DIR: &str = "/var/lib/vhost-user-scsi";

/// Log in to every iSCSI target a controller's LUNs name: one session per
/// (controller, portal, target), with the controller's initiator name and
/// an ISID derived from the socket and target (stable across restarts).
fn remote_luns(
    c: &crate::config::ControllerConfig,
) -> Result<BTreeMap<u16, crate::device::RemoteLun>, Error> {
    use crate::iscsi::{client::Client, credentials, login};
    let mut sessions: HashMap<(String, String), Client> = HashMap::new();
    let mut out = BTreeMap::new();
    for (&n, lc) in &c.luns {
        let Some(il) = &lc.iscsi else { continue };
        let err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Iscsi {
            lun: n,
            socket: c.socket.clone(),
            source,
        };
        let target = il.url.target.clone().unwrap_or_default();
        let key = (il.url.address(), target.clone());
        if !sessions.contains_key(&key) {
            let mut creds = match &il.credentials {
                Some(f) => credentials::load(f).map_err(|e| err(Box::new(e)))?,
                None => credentials::ChapConfig::default(),
            };
            if let (Some(user), Some(secret)) = (il.url.user.clone(), il.url.password.clone()) {
                creds.chap = Some(login::Credentials { user, secret });
            }
            let h = crate::scsi::Identity::derive(&format!(
                "{}|{}|{}",
                c.socket.display(),
                key.0,
                key.1
            ))
            .naa;
            let b = h.to_be_bytes();
            // ISID type 10b (random qualifier), RFC 7143 11.12.5.
            let isid = [0x80 | (b[2] & 0x3f), b[3], b[4], b[5], b[6], b[7]];
            let params = login::LoginParams {
                initiator_name: c.initiator.clone(),
                target_name: Some(target.clone()),
                isid,
                tsih: 0,
                chap: creds.chap,
                mutual: creds.mutual,
                header_digest: il.header_digest,
                data_digest: il.data_digest,
                max_recv_data_segment_length: 1 << 20,
                max_burst_length: 1 << 20,
                first_burst_length: 65536,
                initial_cmd_sn: 1,
                chap_offer: il.chap_algorithms,
            };
            let name = format!("{} -> {}/{}", c.socket.display(), key.0, target);
            let mut portals = vec![key.0.clone()];
            portals.extend(il.portals.iter().cloned());
            let options = crate::iscsi::client::Options {
                recovery_timeout: il.recovery_timeout,
                discover_portals: il.discover_portals,
                coalesce: crate::iscsi::client::Coalescing {
                    delay: il.coalesce,
                    depth: c.coalesce.depth,
                },
            };
            let client =
                Client::start(&name, portals, params, options).map_err(|e| err(Box::new(e)))?;
            sessions.insert(key.clone(), client);
        }
        let l = il.url.lun.unwrap_or(0);
        out.insert(
            n,
            crate::device::RemoteLun {
                client: sessions[&key].clone(),
                lun: crate::scsi::target::encode_lun(l),
            },
        );
    }
    Ok(out)
}

/// Block SIGINT and SIGTERM in this thread and every thread it starts, so
/// that `wait_for_signal` receives them.
fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is initialised; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(set)
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    loop {
        // SAFETY: `set` is an initialised signal set and `sig` a valid out pointer.
        let r = unsafe { libc::sigwait(set, &mut sig) };
        if r == 0 {
            return sig;
        }
    }
}

/// Run the daemon until SIGINT or SIGTERM.
pub fn serve(mut cfg: Config) -> Result<(), Error> {
    if cfg.controllers.is_empty() {
        return Err(Error::NoController);
    }
    let sigset = block_signals().map_err(Error::Signals)?;
    let lus = open_logical_units(&cfg)?;
    let mut listeners = Vec::new();
    let mut controllers = Vec::new();
    for (i, (c, luns)) in cfg.controllers.iter().zip(lus).enumerate() {
        let listener = listen_unix(&c.socket).map_err(|source| Error::Listen {
            path: c.socket.clone(),
            source,
        })?;
        let listener = Listener::from(listener);
        info!(
            "Listening on {} with {} LUN(s), {} request queue(s)",
            c.socket.display(),
            luns.len(),
            c.request_queues
        );
        let remote = remote_luns(c)?;
        controllers.push(Arc::new(Controller {
            name: c.socket.display().to_string(),
            target: Target::with_passthrough(luns, remote.keys().copied().collect()),
            remote,
            nexus: Nexus {
                id: i as u32 + 1,
                relative_port: i as u16 + 1,
                initiator: c.initiator.as_str().into(),
            },
            request_queues: c.request_queues,
            coalesce: c.coalesce,
        }));
        listeners.push(listener);
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        active: controllers.iter().map(|_| Mutex::new(None)).collect(),
    });
    let listen_fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let mut threads = Vec::new();
    for (i, (ctrl, listener)) in controllers.iter().zip(listeners).enumerate() {
        let ctrl = ctrl.clone();
        let shared = shared.clone();
        let t = thread::Builder::new()
            .name(format!("accept-{i}"))
            .spawn(move || accept_loop(i, &ctrl, listener, &shared))
            .map_err(Error::Signals)?;
        threads.push(t);
    }

    if let Some(l) = cfg.pr_helper.take() {
        info!("Serving the qemu-pr-helper protocol too");
        thread::Builder::new()
            .name("pr-helper".into())
            .spawn(move || {
                let settings = crate::prhelper::Settings { multipath: true };
                if let Err(e) = crate::prhelper::serve(l, settings) {
                    error!("pr-helper socket failed: {e}");
                }
            })
            .map_err(Error::Signals)?;
    }

    let sig = wait_for_signal(&sigset);
    info!("Signal {sig} received: shutting down");
    shared.stop.store(true, Ordering::SeqCst);
    // Fail what iSCSI targets still owe, so that connections can drain.
    for c in &controllers {
        for r in c.remote.values() {
            r.client.shutdown();
        }
    }
    for fd in &listen_fds {
        // Wakes the accept() blocked on this listening socket.
        // SAFETY: shutdown on a socket fd the listener still owns.
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
    }
    for slot in &shared.active {
        if let Some(h) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            h.shutdown();
        }
    }
    for t in threads {
        let _ = t.join();
    }
    for c in &controllers {
        for (_, lu) in c.target.luns() {
            if let Err(e) = lu.flush() {
                error!("Flushing {} failed: {e}", lu.backstore().path().display());
            }
        }
    }
    for c in &cfg.controllers {
        let _ = std::fs::remove_file(&c.socket);
    }
    info!("Stopped");
    Ok(())
}

/// Listen on the Unix socket `path` (replacing a stale one) so that the
/// path never exists without a listening socket behind it: bind and
/// listen under a temporary name next to it, then rename. Binding
/// straight to `path` leaves a moment between bind(2) and listen(2) in
/// which a client (QEMU started as soon as the socket appears) is refused.
/// Falls back to that when the temporary name does not fit a socket
/// address.
pub fn listen_unix(path: &Path) -> io::Result<UnixListener> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp);
    let _ = std::fs::remove_file(&tmp);
    match UnixListener::bind(&tmp) {
        Ok(l) => match std::fs::rename(&tmp, path) {
            Ok(()) => Ok(l),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        },
        Err(_) => {
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path)
        }
    }
}

/// Serve connections on one socket, one at a time, until told to stop.
fn accept_loop(i: usize, ctrl: &Arc<Controller>, mut listener: Listener, shared: &Shared) {
    let name = &ctrl.name;
    while !shared.stop.load(Ordering::SeqCst) {
        let backend = match ScsiBackend::new(ctrl.clone()) {
            Ok(b) => b,
            Err(e) => {
                error!("{name}: cannot create device: {e}");
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = match VhostUserDaemon::new(name.clone(), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => {
                error!("{name}: cannot create vhost-user daemon: {e}");
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let handlers = daemon.get_epoll_handlers();
        for (thread, fd, id) in backend.completion_listeners() {
            if let Some(h) = handlers.get(thread) {
                if let Err(e) = h.register_listener(fd, EventSet::IN, id) {
                    error!("{name}: cannot watch I/O completions: {e}");
                }
            }
        }
        for (thread, fd, id) in backend.session_listeners() {
            if let Some(h) = handlers.get(thread) {
                match h.register_listener(fd, EventSet::IN, id) {
                    Ok(()) => backend.attach_session(id),
                    // The session's own thread keeps receiving.
                    Err(e) => warn!("{name}: cannot watch an iSCSI session: {e}"),
                }
            }
        }
        drop(handlers);
        if let Err(e) = daemon.start(&mut listener) {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            error!("{name}: accepting a connection failed: {e}");
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        *shared.active[i].lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
        if shared.stop.load(Ordering::SeqCst) {
            daemon.request_shutdown();
        }
        info!("{name}: front-end connected");
        backend.attach();
        let result = daemon.wait();
        *shared.active[i].lock().unwrap_or_else(|e| e.into_inner()) = None;
        // The workers stop: the sessions' threads receive the answers
        // still due, and in-flight requests finish before the device state
        // goes away.
        backend.detach_sessions();
        backend.quiesce();
        ctrl.target.detach(&ctrl.nexus);
        for (_, lu) in ctrl.target.luns() {
            if let Err(e) = lu.flush() {
                error!("Flushing {} failed: {e}", lu.backstore().path().display());
            }
        }
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => info!("{name}: front-end disconnected"),
            Err(e) => warn!("{name}: connection ended: {e}"),
        }
        drop(daemon);
    }
}

#[cfg(test)]
mod listen_tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn the_socket_appears_listening_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        let l = listen_unix(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        drop(l);
        // No temporary name left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_path_too_long_for_the_temporary_name_still_works() {
        let dir = tempfile::tempdir().unwrap();
        // 107 bytes is the most a socket address holds (with its NUL).
        let room = 107 - dir.path().as_os_str().len() - 1;
        let path = dir.path().join("s".repeat(room));
        let _l = listen_unix(&path).unwrap();
        UnixStream::connect(&path).unwrap();
    }
}
