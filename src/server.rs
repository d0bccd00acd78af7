// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The daemon: opens the backstores, listens on every controller's socket,
//! serves one QEMU connection per socket at a time (accepting the next one
//! with fresh device state when it goes), and shuts down cleanly on
//! SIGINT/SIGTERM.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::vhost::{Connection, Rings, ShutdownHandle};
use log::{error, info, warn};

use crate::backstore::{self, Backstore, FileBackstore};
use crate::config::{Config, LunConfig};
use crate::device::{Controller, ScsiBackend};
use crate::registry::Registry;
use crate::scsi::{Identity, LogicalUnit, LuConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Backstore(#[from] backstore::Error),
    #[error("Backstore {0} is configured with different options on different LUNs")]
    ConflictingBackstore(PathBuf),
    #[error("Backstore {path} is smaller than one {block_size}-byte block")]
    TooSmall { path: PathBuf, block_size: u32 },
    #[error(transparent)]
    Claim(#[from] crate::claim::Error),
    #[error("Cannot set up signal handling")]
    Signals(#[source] io::Error),
    #[error("No --socket given")]
    NoController,
    #[error(transparent)]
    PrState(#[from] crate::scsi::pr::PersistError),
    #[error(transparent)]
    Registry(Box<crate::registry::Error>),
    #[error(transparent)]
    Sandbox(crate::sandbox::Error),
    #[error("iSCSI LUN {lun} of {socket}")]
    Iscsi {
        lun: u16,
        socket: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Open, check and claim one file or block device backstore, and load its
/// reservation state.
pub(crate) fn open_local(lc: &LunConfig, canonical: &Path) -> Result<LogicalUnit, Error> {
    let mut store = FileBackstore::open(canonical, lc.read_only, lc.direct)?;
    if store.size() < u64::from(lc.block_size) {
        return Err(Error::TooSmall {
            path: canonical.into(),
            block_size: lc.block_size,
        });
    }
    store.claim(lc.share_rw)?;
    let key = lc
        .serial
        .clone()
        .unwrap_or_else(|| canonical.to_string_lossy().into_owned());
    let mut identity = Identity::derive(&key);
    if let Some(s) = &lc.serial {
        identity.serial = s.clone();
    }
    // With share-rw, reservations are not served (another process writing
    // the backstore would not see them): no state file either.
    let (pr_file, pr_state) = if lc.share_rw {
        (None, None)
    } else {
        let pr_file = lc
            .pr_file
            .clone()
            .unwrap_or_else(|| default_pr_file(canonical, store.kind(), &identity.serial));
        store.hold(crate::claim::claim_state_file(&pr_file)?);
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
        (Some(pr_file), pr_state)
    };
    info!(
        "Opened {} ({} bytes, {}-byte blocks{}{}{})",
        canonical.display(),
        store.size(),
        lc.block_size,
        if lc.read_only { ", read-only" } else { "" },
        if lc.direct { ", O_DIRECT" } else { "" },
        if lc.share_rw {
            ", shared with other writers: no reservations"
        } else {
            ""
        }
    );
    Ok(LogicalUnit::new(
        Arc::new(store),
        LuConfig {
            block_size: lc.block_size,
            identity,
            pr_file,
            pr_state: pr_state.unwrap_or_default(),
            reservations: !lc.share_rw,
        },
    ))
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
        backstore::Kind::Block | backstore::Kind::Null | backstore::Kind::Memory => {
            PathBuf::from(STATE_DIR).join(format!("{serial}.pr"))
        }
    }
}

/// Where state of block-device LUs lives by default.
pub const STATE_DIR: &str = "/var/lib/vhost-user-scsi";

/// The iSCSI sessions of the daemon, by the initiator port (initiator name
/// and relative target port of the controller: the VM's identity) and the
/// target (portal, name): controllers of one nexus share a session.
pub(crate) type Sessions =
    HashMap<(String, u16, String, String), (crate::iscsi::client::Client, crate::config::IscsiLun)>;

/// Check every iSCSI target `luns` (LUNs of controller `c`) name and set up
/// a session client for each (see `Client::start`: the session logs in
/// when a VM uses it): one per (nexus, portal, target), with the
/// controller's initiator name and an ISID derived from the nexus and the
/// target (stable across restarts, and the same in every daemon configured
/// with the same initiator= and port=, so a live migration's destination is
/// the same initiator port at the target).
pub(crate) fn remote_luns(
    c: &crate::config::ControllerConfig,
    luns: &BTreeMap<u16, LunConfig>,
    relative_port: u16,
    sessions: &mut Sessions,
    credentials: &Credentials,
) -> Result<BTreeMap<u16, crate::device::RemoteLun>, Error> {
    use crate::iscsi::{client::Client, credentials, login};
    let mut out = BTreeMap::new();
    for (&n, lc) in luns {
        let Some(il) = &lc.iscsi else { continue };
        let err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Iscsi {
            lun: n,
            socket: c.socket.clone(),
            source,
        };
        let target = il.url.target.clone().unwrap_or_default();
        let key = (
            c.initiator.clone(),
            relative_port,
            il.url.address(),
            target.clone(),
        );
        // The session's options are those of its LUNs: all must agree.
        let mut agreed = il.clone();
        agreed.url.lun = None;
        if let Some((_, seen)) = sessions.get(&key) {
            if *seen != agreed {
                return Err(err(
                    "LUNs of one session (same initiator, port and target) must have the \
                     same iSCSI options"
                        .into(),
                ));
            }
        } else {
            let mut creds = match &il.credentials {
                // Read before privileges were dropped (Credentials::load).
                Some(f) => credentials.0.get(f).cloned().ok_or_else(|| {
                    err(format!("credentials file {} was not read at start", f.display()).into())
                })?,
                None => credentials::ChapConfig::default(),
            };
            if let (Some(user), Some(secret)) = (il.url.user.clone(), il.url.password.clone()) {
                creds.chap = Some(login::Credentials { user, secret });
            }
            let h =
                crate::scsi::Identity::derive(&format!("{}|{}|{}|{}", key.0, key.1, key.2, key.3))
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
            let name = format!("{} -> {}/{}", c.socket.display(), key.2, target);
            let mut portals = vec![key.2.clone()];
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
            sessions.insert(key.clone(), (client, agreed));
        }
        let l = il.url.lun.unwrap_or(0);
        out.insert(
            n,
            crate::device::RemoteLun {
                session: std::sync::Arc::new(sessions[&key].0.clone()),
                lun: crate::scsi::lun::encode_lun(l),
            },
        );
    }
    Ok(out)
}

/// The readiness notification to systemd (`Type=notify`), or whoever set
/// NOTIFY_SOCKET (sd_notify(3)'s protocol: one datagram to the socket that
/// variable names, '@' for an abstract name). The socket is connected at
/// start, so that the message still goes once privileges are dropped.
struct Notifier(Option<(std::os::unix::net::UnixDatagram, String)>);

impl Notifier {
    fn open() -> Notifier {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier(None);
        };
        let name = target.to_string_lossy().into_owned();
        let addr = match target.as_encoded_bytes().strip_prefix(b"@") {
            Some(abs) => SocketAddr::from_abstract_name(abs),
            None => SocketAddr::from_pathname(Path::new(&target)),
        };
        match addr.and_then(|a| {
            let s = UnixDatagram::unbound()?;
            s.connect_addr(&a)?;
            Ok(s)
        }) {
            Ok(s) => Notifier(Some((s, name))),
            Err(e) => {
                warn!("Cannot reach NOTIFY_SOCKET {name}: {e}");
                Notifier(None)
            }
        }
    }

    /// Every controller listens and privileges are dropped.
    fn ready(&self) {
        if let Some((s, name)) = &self.0 {
            let message = format!("READY=1\nMAINPID={}\n", std::process::id());
            if let Err(e) = s.send(message.as_bytes()) {
                warn!("Cannot notify {name} of readiness: {e}");
            }
        }
    }
}

/// The CHAP credentials files of some iSCSI LUNs, read (while the daemon
/// still has the privileges it started with) by path.
#[derive(Default)]
pub struct Credentials(HashMap<PathBuf, crate::iscsi::credentials::ChapConfig>);

impl Credentials {
    /// Read the credentials file of every iSCSI LUN of `luns` (of the
    /// controller at `socket`) that has one.
    pub fn load(socket: &Path, luns: &BTreeMap<u16, LunConfig>) -> Result<Credentials, Error> {
        let mut out = HashMap::new();
        for (&n, lc) in luns {
            let Some(f) = lc.iscsi.as_ref().and_then(|il| il.credentials.as_ref()) else {
                continue;
            };
            if out.contains_key(f) {
                continue;
            }
            let cfg = crate::iscsi::credentials::load(f).map_err(|e| Error::Iscsi {
                lun: n,
                socket: socket.into(),
                source: Box::new(e),
            })?;
            out.insert(f.clone(), cfg);
        }
        Ok(Credentials(out))
    }
}

/// Block SIGINT, SIGTERM and SIGHUP in this thread and every thread it starts, so
/// that `wait_for_signal` receives them.
fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
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

/// Descriptors the daemon may hold with every controller connected, as
/// measured (docs/operation.md, "Descriptor budget"): a controller waiting
/// for QEMU holds its listening socket; a connected QEMU adds, per thread
/// of the connection (one per request queue, one for the control and
/// event queues) an epoll set and an exit eventfd, per request queue an
/// eventfd and a timer for completions and an io_uring, per virtqueue its
/// kick and call eventfds, its memory regions (up to 8 counted) and the
/// socket; a LUN holds its backstore and its state-file lock (3 for a loop
/// device, counted as 3). Plus 16 for the process itself.
pub fn descriptor_budget(cfg: &Config) -> u64 {
    let per_controller = |c: &crate::config::ControllerConfig| {
        let q = c.request_queues as u64;
        let idle = 1;
        let connected = 2 * (q + 1) + 2 * q + 2 * (q + 2) + q + 8 + 1;
        idle + connected + 3 * c.luns.len() as u64
    };
    16 + cfg.controllers.iter().map(per_controller).sum::<u64>()
}

/// Raise the soft limit on open descriptors to the hard limit (it is only
/// low for programs that still use select(2); this one does not), and warn
/// when even that is below what the configuration may need.
fn check_descriptor_limit(budget: u64) {
    // SAFETY: rlimit is plain data, filled by getrlimit.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid resource and out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid resource and a pointer to a live rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            info!(
                "Raised the open descriptor limit from {} to {}",
                lim.rlim_cur, lim.rlim_max
            );
            lim = raised;
        }
    }
    if lim.rlim_cur < budget {
        warn!(
            "With every VM connected this configuration may need about {budget} open \
             descriptors, but the limit is {} (raise LimitNOFILE= or ulimit -n)",
            lim.rlim_cur
        );
    }
}

/// What the daemon runs besides its controllers.
pub struct Options {
    /// The control socket (JSON-RPC), bound, and its path.
    pub control: Option<(UnixListener, PathBuf)>,
    /// The Prometheus endpoint, bound.
    pub metrics: Option<std::net::TcpListener>,
    /// The configuration file the daemon was started with (`save_config`
    /// writes it).
    pub config_file: Option<PathBuf>,
    /// The daemon's settings as a configuration file gives them (what
    /// `save_config` writes besides the controllers).
    pub settings: crate::config_file::FileConfig,
    /// The user, capabilities, seccomp filter and socket access to serve
    /// with.
    pub sandbox: crate::sandbox::Plan,
}

/// Run the daemon until SIGINT or SIGTERM.
pub fn serve(mut cfg: Config, opts: Options) -> Result<(), Error> {
    if cfg.controllers.is_empty() && opts.control.is_none() {
        return Err(Error::NoController);
    }
    let sigset = block_signals().map_err(Error::Signals)?;
    check_descriptor_limit(descriptor_budget(&cfg));
    // Calibrated now, not on the first command.
    crate::stats::clock::init();
    let registry = Arc::new(Registry::new(
        opts.config_file.clone(),
        opts.settings,
        opts.sandbox.sockets,
    ));
    // Everything that needs the privileges the daemon starts with is opened
    // first, then they are dropped, before any thread starts.
    let mut opened = Vec::new();
    for c in std::mem::take(&mut cfg.controllers) {
        match registry.open_controller(c) {
            Ok(o) => opened.push(o),
            Err(e) => {
                opened.into_iter().for_each(|o| registry.discard(o));
                return Err(e.into_server_error());
            }
        }
    }
    let notifier = Notifier::open();
    if let Err(e) = opts.sandbox.enter() {
        opened.into_iter().for_each(|o| registry.discard(o));
        return Err(Error::Sandbox(e));
    }
    let mut rest = opened.into_iter();
    while let Some(o) = rest.next() {
        if let Err(e) = registry.start_controller(o) {
            rest.for_each(|o| registry.discard(o));
            registry.shutdown();
            return Err(e.into_server_error());
        }
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
    let control = match opts.control {
        Some((listener, path)) => Some(
            crate::control::Server::start(listener, path, registry.clone())
                .map_err(Error::Signals)?,
        ),
        None => None,
    };
    if let Some(l) = opts.metrics {
        crate::stats::serve_metrics(l, registry.clone()).map_err(Error::Signals)?;
    }
    notifier.ready();

    loop {
        let sig = wait_for_signal(&sigset);
        if sig == libc::SIGHUP {
            info!(
                "SIGHUP: nothing to reload (change the running configuration with \
                 `vhost-user-scsi ctl`, see docs/operation.md)"
            );
            continue;
        }
        info!("Signal {sig} received: shutting down");
        break;
    }
    if let Some(c) = control {
        c.stop();
    }
    registry.shutdown();
    info!("Stopped");
    Ok(())
}

/// What the accept thread of one controller shares with the registry.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) active: Mutex<Option<ShutdownHandle>>,
}

impl Shared {
    /// End the accept loop: no new connection, and the current one (if any)
    /// is shut down (its commands complete or fail first).
    pub(crate) fn stop(&self, listener: &UnixListener) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept() blocked on this listening socket.
        // SAFETY: shutdown on a socket fd the listener still owns.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(h) = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.shutdown();
        }
    }
}

/// Serve connections on one socket, one at a time, until told to stop.
pub(crate) fn accept_loop(ctrl: &Arc<Controller>, listener: &UnixListener, shared: &Shared) {
    let name = &ctrl.name;
    while !shared.stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                error!("{name}: accepting a connection failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        serve_connection(ctrl, stream, shared);
    }
}

/// One QEMU connection, from set-up to the last completion.
fn serve_connection(ctrl: &Arc<Controller>, stream: UnixStream, shared: &Shared) {
    let name = &ctrl.name;
    let queues = crate::virtio::FIRST_REQUEST_QUEUE + ctrl.request_queues;
    let rings = match Rings::new(queues, crate::device::MAX_QUEUE_SIZE as u16) {
        Ok(r) => r,
        Err(e) => {
            error!("{name}: cannot create the virtqueues: {e}");
            return;
        }
    };
    let backend = match ScsiBackend::new(ctrl.clone(), rings.clone()) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            error!("{name}: cannot create device: {e}");
            return;
        }
    };
    let mut conn = match Connection::new(stream, rings, backend.clone(), name) {
        Ok(c) => c,
        Err(e) => {
            error!("{name}: cannot serve the connection: {e}");
            backend.detach_sessions();
            return;
        }
    };
    *shared.active.lock().unwrap_or_else(|e| e.into_inner()) = conn.shutdown_handle().ok();
    if shared.stop.load(Ordering::SeqCst) {
        if let Ok(h) = conn.shutdown_handle() {
            h.shutdown();
        }
    }
    info!("{name}: front-end connected");
    ctrl.connect(&backend);
    // Returns once every ring has stopped and its requests completed.
    let result = conn.run();
    *shared.active.lock().unwrap_or_else(|e| e.into_inner()) = None;
    // The sessions' own threads receive again from now on.
    backend.detach_sessions();
    backend.quiesce();
    ctrl.disconnect();
    for (_, lu) in ctrl.target.luns() {
        if let Err(e) = lu.flush() {
            error!("Flushing {} failed: {e}", lu.backstore().path().display());
        }
    }
    match result {
        Ok(()) => info!("{name}: front-end disconnected"),
        Err(e) => crate::warn_limited!(ctrl.problems, "{name}: connection ended: {e}"),
    }
    drop(conn);
}
