// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Command line of the vhost-user-scsi daemon.

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use vhost_user_scsi::config::Config;
use vhost_user_scsi::error_chain;

const SERVE_EXAMPLES: &str = "\
Examples:
  # One VM, one disk image:
  vhost-user-scsi serve --socket /run/vm1-scsi.sock --lun file=/srv/vm1.img

  # LUN 0 writable, LUN 1 a read-only ISO-like image with 4096-byte blocks:
  vhost-user-scsi serve --socket /run/vm1.sock \\
      --lun file=/srv/data.img --lun file=/srv/golden.img,ro,block-size=4096

  # Two VMs (two sockets) sharing /srv/shared.img; each --lun belongs to the
  # --socket before it:
  vhost-user-scsi serve \\
      --socket /run/vm1.sock --lun file=/srv/vm1.img --lun 1:file=/srv/shared.img \\
      --socket /run/vm2.sock,queues=4 --lun file=/srv/vm2.img --lun 1:file=/srv/shared.img

  # A LUN on an iSCSI target (CHAP secrets in a file, not on the command line):
  vhost-user-scsi serve --socket /run/vm1.sock \\
      --lun iscsi://192.0.2.10/iqn.2026-11.org.example:disk1/1,credentials=/etc/vus/san1.chap

  # QEMU side (guest RAM must be shared with the daemon):
  qemu-system-x86_64 -m 1G \\
      -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\
      -chardev socket,id=c0,path=/run/vm1-scsi.sock \\
      -device vhost-user-scsi-pci,chardev=c0 ...

Logging goes to stderr; set RUST_LOG=debug (or warn, ...) to change the level.";

/// vhost-user-scsi backend daemon for QEMU guests.
#[derive(Parser)]
#[command(name = "vhost-user-scsi", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Serve SCSI disks to QEMU over vhost-user sockets.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve {
        /// vhost-user socket to listen on (created; a stale socket file is
        /// replaced, a live one or any other file is refused). Starts a controller: the --lun options after it are its
        /// LUNs. queues=N sets how many request queues it offers (default 16;
        /// QEMU's num_queues must not exceed it). initiator=NAME names the
        /// controller's I_T nexus for persistent reservations (an iSCSI name;
        /// default derived from PATH). coalesce-us=US: while a request queue
        /// has at least coalesce-depth=N commands (default 16) still in
        /// flight, notify the guest of completions at most once per US
        /// microseconds (default 50, 0 = notify every completion at once).
        /// alua-state=S: the ALUA access state of the controller's target
        /// port group (active-optimized (default), active-non-optimized,
        /// standby, unavailable).
        #[arg(
            long,
            value_name = "PATH[,queues=N][,initiator=NAME][,coalesce-us=US][,coalesce-depth=N][,alua-state=S]",
            required_unless_present_any = ["config", "control"]
        )]
        socket: Vec<String>,
        /// A logical unit backed by a regular file or block device. N is the
        /// LUN number (default: one more than the previous LUN, from 0).
        /// ro: read-only; block-size: logical block size (default 512);
        /// direct: open with O_DIRECT; serial: unit serial number (default:
        /// derived from the canonical path, stable across restarts); pr-file:
        /// where APTPL reservation state is kept (default PATH.pr, or
        /// /var/lib/vhost-user-scsi/SERIAL.pr for a block device);
        /// share-rw: other processes may write the backstore at the same
        /// time if they share writes too (its lock, QEMU-compatible, shares
        /// writes; reservations are then refused). Without it, a backstore
        /// another process holds is refused at start.
        /// Other forms: [N:]null,size=SIZE (reads zeros, drops writes; SIZE
        /// with K/M/G/T), and
        /// [N:]iscsi://[user[%pw]@]host[:port]/target-iqn/lun[,credentials=FILE]
        /// [,chap-algorithms=sha256:sha1:md5][,header-digest][,data-digest]
        /// [,portal=HOST:PORT]...
        /// [,recovery-timeout=SECS|infinite][,discover-portals=yes|no]
        /// [,coalesce-us=US] (a LUN on an iSCSI target, passed through by
        /// the built-in initiator; chap-algorithms: the CHAP digests
        /// allowed, default all three; commands fail after recovery-timeout,
        /// default 120 s, without a session; the target's answers wait at
        /// most coalesce-us, default 200, 0 = never, to be received together
        /// while many commands are due, and a few big reads' data at most
        /// 2 ms or coalesce-us for the rest of the closest one; see
        /// docs/iscsi.md).
        #[arg(
            long,
            value_name = "[N:]file=PATH[,ro][,block-size=512|4096][,direct][,serial=S][,pr-file=P][,share-rw]"
        )]
        lun: Vec<String>,
        /// Also serve the qemu-pr-helper protocol on this socket (for
        /// scsi-block/scsi-generic passthrough disks of any QEMU).
        #[arg(long, value_name = "PATH")]
        pr_helper_socket: Option<std::path::PathBuf>,
        /// Write the daemon's PID to this file, locked while it runs (a
        /// second daemon given the same file refuses to start).
        #[arg(long, value_name = "PATH")]
        pidfile: Option<std::path::PathBuf>,
        /// Controllers and LUNs (and the daemon's settings) from a TOML file
        /// (see docs/operation.md); --socket/--lun add to them. save-config
        /// writes this file.
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        /// The control socket (JSON-RPC 2.0, one request per line) that
        /// `vhost-user-scsi ctl` talks to. Default with --config:
        /// /run/vhost-user-scsi/control.sock; without, none.
        #[arg(long, value_name = "PATH")]
        control: Option<std::path::PathBuf>,
        /// Give this group read and write access to the control socket
        /// (mode 0660 instead of 0600).
        #[arg(long, value_name = "GROUP")]
        control_group: Option<String>,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<String>,
        /// Run as this user (name or number) once the backstores, sockets
        /// and credentials are open; needs the daemon to start as root.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Run as this group (default: the user's primary group); the
        /// user's supplementary groups are kept.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Capabilities to keep besides those the configuration needs
        /// (none for files, block devices and iSCSI; cap_sys_rawio and
        /// cap_dac_override for --pr-helper-socket), e.g. cap_dac_override.
        #[arg(long, value_name = "CAP[,CAP]...", value_delimiter = ',')]
        keep_caps: Vec<String>,
        /// The seccomp system call filter: enforce (refuse what the daemon
        /// never calls, and log it to the audit log), log (allow it but log
        /// it), off.
        #[arg(long, value_name = "enforce|log|off")]
        seccomp: Option<String>,
        /// Give the vhost-user sockets this owner (e.g. the user QEMU runs
        /// as).
        #[arg(long, value_name = "USER")]
        socket_owner: Option<String>,
        /// Give the vhost-user sockets this group (mode 0660 by default).
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// The vhost-user sockets' mode, octal (default 0600, or 0660 with
        /// --socket-group).
        #[arg(long, value_name = "MODE")]
        socket_mode: Option<String>,
    },
    /// Change a running daemon through its control socket: add and remove
    /// controllers and LUNs, resize, statistics, save the configuration.
    #[command(after_help = CTL_EXAMPLES)]
    Ctl(CtlArgs),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenAssets {
        /// Directory to write man/ and completions/ into.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// A drop-in replacement for qemu-pr-helper (same options and socket
    /// protocol).
    #[command(after_help = PR_HELPER_EXAMPLES)]
    PrHelper(PrHelperArgs),
    /// Send one PERSISTENT RESERVE command through a pr-helper socket, as
    /// QEMU does, and print the raw response (a debugging aid).
    PrClient(PrClientArgs),
    /// List the targets and portals of an iSCSI portal (SendTargets).
    Discover(DiscoverArgs),
    /// Drive any vhost-user-scsi backend as QEMU would, and measure it.
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(BenchArgs),
    /// Connect as a broken or malicious QEMU would (malformed messages,
    /// bad memory tables and rings, resets with commands in flight, ...)
    /// and check the backend keeps serving (a testing tool).
    Hostile(HostileArgs),
}

#[derive(clap::Args)]
struct HostileArgs {
    /// The backend's socket.
    #[arg(long, value_name = "PATH")]
    socket: std::path::PathBuf,
    /// Times every case runs.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Stop starting rounds after SECONDS.
    #[arg(long = "time", value_name = "SECONDS")]
    seconds: Option<u64>,
    /// The backend's PID: fail if it holds more descriptors after.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Only the cases whose name contains TEXT.
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
}

const CTL_EXAMPLES: &str = "\
Examples:
  vhost-user-scsi ctl methods                     # every method and its parameters
  vhost-user-scsi ctl controller-list
  vhost-user-scsi ctl lun-add controller=/run/vm1.sock lun=1 file=/srv/data.img
  vhost-user-scsi ctl lun-resize controller=/run/vm1.sock lun=1 size=20G
  vhost-user-scsi ctl lun-set-read-only controller=/run/vm1.sock lun=1
  vhost-user-scsi ctl lun-remove controller=/run/vm1.sock lun=1
  vhost-user-scsi ctl controller-add socket=/run/vm2.sock queues=4
  vhost-user-scsi ctl controller-remove controller=/run/vm2.sock force
  vhost-user-scsi ctl stats controller=/run/vm1.sock --json
  vhost-user-scsi ctl save-config                 # the daemon's --config file
  vhost-user-scsi ctl save-config /root/vus.toml  # any file (written here)

Parameters are key=value (a boolean alone means true); --params takes a
JSON object for the rest (e.g. a controller's LUNs).";

const BENCH_EXAMPLES: &str = "\
Examples:
  # 4 KiB random reads at queue depth 32 for 10 s, with the backend's CPU time:
  vhost-user-scsi bench --socket /run/vm1.sock --qd 32 --time 10 --pid $(pidof vhost-user-scsi)

  # 1 MiB sequential writes on two queues, machine-readable:
  vhost-user-scsi bench --socket /run/vm1.sock --rw write --bs 1M --queues 2 --json

  # Write a pattern with the LBA in it, read it back and compare:
  vhost-user-scsi bench --socket /run/vm1.sock --verify --ios 100000

The backend must offer enough request queues (--queues) and at least
VERSION_1; the LUN is found with REPORT LUNS and READ CAPACITY(16).";

const PR_HELPER_EXAMPLES: &str = "\
Examples:
  # As qemu-pr-helper would run (socket activation works too):
  vhost-user-scsi pr-helper -k /run/qemu-pr-helper.sock -u qemu -g qemu
  # QEMU side:
  qemu-system-x86_64 ... -object pr-manager-helper,id=pr0,path=/run/qemu-pr-helper.sock \\
      -drive if=none,id=d0,file=/dev/sdb,format=raw,file.pr-manager=pr0 \\
      -device virtio-scsi-pci -device scsi-block,drive=d0

After start the helper keeps only CAP_SYS_RAWIO (and, for multipath maps, a
permitted CAP_DAC_OVERRIDE raised only to open path devices), clears the
bounding set and sets no_new_privs.";

#[derive(clap::Args)]
struct PrHelperArgs {
    /// Socket to listen on (not with systemd socket activation).
    #[arg(short = 'k', long = "socket", value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    /// PID file (locked while running).
    #[arg(
        short = 'f',
        long = "pidfile",
        value_name = "PATH",
        default_value = "/var/run/qemu-pr-helper.pid"
    )]
    pidfile: std::path::PathBuf,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Run as this user after start-up.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
    /// Run as this group after start-up.
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    group: Option<String>,
    /// Log every command (debug level).
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Log errors only.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// qemu-pr-helper's trace option: any pattern turns on per-command logs.
    #[arg(short = 'T', long = "trace", value_name = "PATTERN")]
    trace: Option<String>,
    /// Treat dm-multipath maps as single devices (no path fan-out).
    #[arg(long)]
    no_multipath: bool,
    /// The seccomp system call filter: enforce (default), log or off.
    #[arg(long, value_name = "enforce|log|off", default_value = "enforce")]
    seccomp: String,
}

/// qemu-pr-helper's default socket.
const DEFAULT_PR_HELPER_SOCKET: &str = "/var/run/qemu-pr-helper.sock";

fn bind_unix(path: &std::path::Path) -> Result<std::os::unix::net::UnixListener, String> {
    if !path.is_absolute() {
        return Err(format!("socket path {} must be absolute", path.display()));
    }
    vhost_user_scsi::claim::listen_unix(path).map_err(|e| error_chain(&e))
}

fn pr_helper(a: PrHelperArgs) -> Result<(), String> {
    use vhost_user_scsi::{prhelper, privileges};
    let activated = prhelper::socket_activation().map_err(|e| e.to_string())?;
    let listener = match (activated, &a.socket) {
        (Some(_), Some(_)) => return Err("-k is not allowed with socket activation".into()),
        (Some(l), None) => l,
        (None, path) => bind_unix(
            path.as_deref()
                .unwrap_or(std::path::Path::new(DEFAULT_PR_HELPER_SOCKET)),
        )?,
    };
    let user = a
        .user
        .as_deref()
        .map(privileges::lookup_user)
        .transpose()
        .map_err(|e| e.to_string())?;
    let group = a
        .group
        .as_deref()
        .map(privileges::lookup_group)
        .transpose()
        .map_err(|e| e.to_string())?;
    if a.daemon {
        // SAFETY: called before any thread exists; daemon(3) forks and the
        // parent exits.
        if unsafe { libc::daemon(0, 0) } < 0 {
            return Err(format!(
                "cannot daemonize: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let _pidfile =
        vhost_user_scsi::claim::write_pidfile(&a.pidfile).map_err(|e| error_chain(&e))?;
    if privileges::is_root() {
        // SG_IO with PERSISTENT RESERVE commands needs CAP_SYS_RAWIO; the
        // opens of multipath path devices need CAP_DAC_OVERRIDE, raised
        // only around them.
        let rawio = privileges::CapSet::of(&[privileges::CAP_SYS_RAWIO]);
        let target = privileges::Target {
            uid: user.map(|u| u.uid),
            gid: group.or(user.map(|u| u.gid)),
            groups: Vec::new(),
            effective: rawio,
            permitted: if a.no_multipath {
                rawio
            } else {
                rawio.with(privileges::CAP_DAC_OVERRIDE)
            },
        };
        privileges::drop_privileges(&target).map_err(|e| format!("cannot drop privileges: {e}"))?;
    } else if user.is_some() || group.is_some() {
        return Err("-u/-g need the helper to start as root".into());
    } else {
        log::warn!("pr-helper: not started as root: keeping the privileges it was given");
    }
    let mode: vhost_user_scsi::seccomp::Mode = a.seccomp.parse()?;
    vhost_user_scsi::seccomp::install(mode).map_err(|e| error_chain(&e))?;
    log::info!("pr-helper: ready (seccomp {mode})");
    prhelper::serve(
        listener,
        prhelper::Settings {
            multipath: !a.no_multipath,
        },
    )
    .map_err(|e| e.to_string())
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = vhost_user_scsi::control::client::DEFAULT_SOCKET)]
    control: std::path::PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// More parameters, as a JSON object.
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
    /// The method (see `ctl methods`); dashes or underscores.
    #[arg(value_name = "METHOD")]
    method: String,
    /// Its parameters: key=value ...
    #[arg(value_name = "ARGS")]
    args: Vec<String>,
}

fn ctl(a: CtlArgs) -> Result<(), String> {
    use vhost_user_scsi::control::client;
    let m = client::method_name(&a.method).map_err(|e| e.to_string())?;
    // `save-config FILE`: the configuration is asked for and written here,
    // with this process' permissions.
    let (file, args): (Vec<&String>, Vec<String>) = if m.name == "save_config" {
        let (f, rest): (Vec<&String>, Vec<&String>) = a
            .args
            .iter()
            .partition(|x| !x.contains('=') && *x != "secrets");
        (f, rest.into_iter().cloned().collect())
    } else {
        (Vec::new(), a.args.clone())
    };
    let mut params = client::params(m, &args).map_err(|e| e.to_string())?;
    if let Some(j) = &a.params {
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(j).map_err(|e| format!("--params: not a JSON object: {e}"))?;
        params.extend(extra);
    }
    let (method, result) = match file.as_slice() {
        [] => (m.name, client::call(&a.control, m.name, params)),
        [path] => {
            if params.get("secrets") == Some(&serde_json::Value::Bool(true)) {
                return Err(
                    "secrets=true is for the daemon's own file (save-config without FILE)".into(),
                );
            }
            let r = client::call(&a.control, "get_config", serde_json::Map::new())
                .map_err(|e| error_chain(&e))?;
            let text = r.get("config").and_then(|v| v.as_str()).unwrap_or_default();
            vhost_user_scsi::config_file::write_atomically(std::path::Path::new(path), text)
                .map_err(|e| error_chain(&e))?;
            let warnings = r.get("warnings").cloned().unwrap_or_default();
            (
                "save_config",
                Ok(serde_json::json!({"path": path, "warnings": warnings})),
            )
        }
        _ => return Err("save-config takes one FILE".into()),
    };
    let result = result.map_err(|e| error_chain(&e))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    } else {
        print!("{}", client::render(method, &result));
    }
    Ok(())
}

/// Man pages (one per command) and bash, zsh and fish completions.
fn gen_assets(out: &std::path::Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", out.display());
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man).map_err(io)?;
    std::fs::create_dir_all(&comp).map_err(io)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).map_err(io)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "vhost-user-scsi", &comp)
            .map_err(io)?;
    }
    Ok(())
}

/// Where the daemon's control socket lives by default with --config.
const DEFAULT_CONTROL_DIR: &str = "/run/vhost-user-scsi";

struct ServeArgs {
    pr_helper_socket: Option<std::path::PathBuf>,
    pidfile: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
    control: Option<std::path::PathBuf>,
    control_group: Option<String>,
    metrics: Option<String>,
    /// user, group, keep-caps, seccomp and the socket access, as the
    /// configuration file's settings spell them.
    sandbox: vhost_user_scsi::config_file::FileConfig,
}

fn serve(sub: &ArgMatches, a: ServeArgs) -> Result<(), String> {
    use vhost_user_scsi::config_file::FileConfig;
    let mut cfg =
        Config::from_ordered_args(&ordered_serve_args(sub)).map_err(|e| error_chain(&e))?;
    let mut settings = FileConfig::default();
    if let Some(f) = &a.config {
        let (file, controllers) = FileConfig::load(f).map_err(|e| error_chain(&e))?;
        for c in &cfg.controllers {
            if controllers.iter().any(|o| o.socket == c.socket) {
                return Err(format!(
                    "Socket {} is given twice (in {} and with --socket)",
                    c.socket.display(),
                    f.display()
                ));
            }
        }
        let mut all = controllers;
        all.append(&mut cfg.controllers);
        cfg.controllers = all;
        settings = file;
        settings.controllers.clear();
    }
    if a.control.is_some() {
        settings.control = a.control.clone();
    }
    if a.control_group.is_some() {
        settings.control_group = a.control_group.clone();
    }
    if a.metrics.is_some() {
        settings.metrics = a.metrics.clone();
    }
    let sb = a.sandbox;
    for (from, to) in [
        (sb.user, &mut settings.user),
        (sb.group, &mut settings.group),
        (sb.seccomp, &mut settings.seccomp),
        (sb.socket_owner, &mut settings.socket_owner),
        (sb.socket_group, &mut settings.socket_group),
        (sb.socket_mode, &mut settings.socket_mode),
    ] {
        if from.is_some() {
            *to = from;
        }
    }
    if !sb.keep_caps.is_empty() {
        settings.keep_caps = sb.keep_caps;
    }
    if settings.control.is_none() && a.config.is_some() {
        let _ = std::fs::create_dir_all(DEFAULT_CONTROL_DIR);
        settings.control =
            Some(std::path::Path::new(vhost_user_scsi::control::client::DEFAULT_SOCKET).into());
    }
    let sandbox = vhost_user_scsi::sandbox::Plan::new(
        &settings,
        vhost_user_scsi::sandbox::Needs {
            pr_helper: a.pr_helper_socket.is_some(),
            control: settings.control.is_some(),
        },
    )
    .map_err(|e| error_chain(&e))?;
    let _pidfile = a
        .pidfile
        .map(|p| vhost_user_scsi::claim::write_pidfile(&p))
        .transpose()
        .map_err(|e| error_chain(&e))?;
    if let Some(p) = a.pr_helper_socket {
        cfg.pr_helper = Some(bind_unix(&p)?);
    }
    let control = match &settings.control {
        Some(p) => {
            let l = bind_unix(p)?;
            vhost_user_scsi::control::restrict(p, settings.control_group.as_deref())
                .map_err(|e| error_chain(&e))?;
            Some((l, p.clone()))
        }
        None => None,
    };
    let metrics = match &settings.metrics {
        Some(addr) => {
            Some(std::net::TcpListener::bind(addr).map_err(|e| format!("--metrics {addr}: {e}"))?)
        }
        None => None,
    };
    let opts = vhost_user_scsi::server::Options {
        control,
        metrics,
        sandbox,
        config_file: a
            .config
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        settings,
    };
    vhost_user_scsi::server::serve(cfg, opts).map_err(|e| error_chain(&e))
}

#[derive(clap::Args)]
struct DiscoverArgs {
    /// iscsi://[user[%password]@]host[:port]
    #[arg(value_name = "URL")]
    url: String,
    /// Our initiator name.
    #[arg(
        long,
        value_name = "IQN",
        default_value = "iqn.2026-11.org.vhost-user-scsi:discover"
    )]
    initiator_name: String,
    /// CHAP credentials file (user, password, target-user, target-password),
    /// instead of putting secrets in the URL.
    #[arg(long, value_name = "FILE")]
    credentials: Option<std::path::PathBuf>,
    /// The CHAP algorithms allowed, joined with ':' (offered strongest
    /// first).
    #[arg(long, value_name = "A[:A]...", default_value = "sha256:sha1:md5")]
    chap_algorithms: String,
}

fn discover(a: DiscoverArgs) -> Result<(), String> {
    use vhost_user_scsi::iscsi::{chap, conn, credentials, login, url};
    let u = url::parse(&a.url).map_err(|e| e.to_string())?;
    let chap_offer = chap::Offer::parse(&a.chap_algorithms)?;
    let mut creds = match &a.credentials {
        Some(f) => credentials::load(f).map_err(|e| error_chain(&e))?,
        None => credentials::ChapConfig::default(),
    };
    if let (Some(user), Some(secret)) = (u.user.clone(), u.password.clone()) {
        creds.chap = Some(login::Credentials { user, secret });
    }
    let params = login::LoginParams {
        initiator_name: a.initiator_name,
        target_name: None,
        isid: [0x80, 0x56, 0x55, 0x53, 0x00, 0x01],
        tsih: 0,
        chap: creds.chap,
        mutual: creds.mutual,
        header_digest: false,
        data_digest: false,
        max_recv_data_segment_length: 65536,
        max_burst_length: 262144,
        first_burst_length: 65536,
        initial_cmd_sn: 1,
        chap_offer,
    };
    let mut c = conn::Connection::login(&u.address(), params, std::time::Duration::from_secs(15))
        .map_err(|e| error_chain(&e))?;
    let targets = c.send_targets().map_err(|e| error_chain(&e))?;
    for (name, portals) in &targets {
        if portals.is_empty() {
            println!("{name}");
        }
        for p in portals {
            println!("{name} {p}");
        }
    }
    let _ = c.logout();
    Ok(())
}

#[derive(clap::Args)]
struct PrClientArgs {
    /// The helper's socket.
    #[arg(long, value_name = "PATH")]
    socket: std::path::PathBuf,
    /// Device to send the command to (its fd is passed to the helper).
    #[arg(long, value_name = "DEV")]
    device: std::path::PathBuf,
    /// Open the device read-only.
    #[arg(long)]
    read_only: bool,
    /// The CDB in hex (up to 16 bytes).
    #[arg(long, value_name = "HEX")]
    cdb: String,
    /// PR OUT parameter list in hex.
    #[arg(long, value_name = "HEX", default_value = "")]
    data: String,
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in '{s}'"));
    }
    vhost_user_scsi::iscsi::text::decode_hex(s.as_bytes())
        .ok_or_else(|| format!("'{s}' is not hex"))
}

fn pr_client(a: PrClientArgs) -> Result<(), String> {
    let bytes = hex(&a.cdb)?;
    if bytes.len() > 16 {
        return Err("--cdb is longer than 16 bytes".into());
    }
    let mut cdb = [0u8; 16];
    cdb[..bytes.len()].copy_from_slice(&bytes);
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(!a.read_only)
        .open(&a.device)
        .map_err(|e| format!("{}: {e}", a.device.display()))?;
    let r = vhost_user_scsi::prhelper::client::request(&a.socket, &dev, &cdb, &hex(&a.data)?)
        .map_err(|e| format!("{}: {e}", a.socket.display()))?;
    let h: String = r.bytes.iter().map(|b| format!("{b:02x}")).collect();
    println!("status={:#04x} reply={h}", r.status());
    Ok(())
}

#[derive(clap::Args)]
struct BenchArgs {
    /// vhost-user socket of the backend.
    #[arg(long, value_name = "PATH")]
    socket: std::path::PathBuf,
    /// LUN to drive (0-16383: requests carry it in flat space addressing,
    /// as Linux's virtio_scsi sends it).
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=16383))]
    lun: u16,
    /// I/O size (bytes, or with K/M suffix); a multiple of the LUN's block size.
    #[arg(long = "bs", value_name = "SIZE", default_value = "4096")]
    block_size: String,
    /// Commands in flight per queue (1-341).
    #[arg(long = "qd", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=341))]
    queue_depth: u16,
    /// Request queues, one thread each (1-62).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=62))]
    queues: u16,
    /// randread, randwrite, randrw, read, write or rw.
    #[arg(long = "rw", value_name = "PATTERN", default_value = "randread")]
    pattern: String,
    /// Percentage of reads for randrw and rw.
    #[arg(long = "mix", value_name = "PCT", default_value_t = 70,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    read_pct: u8,
    /// Run for this many seconds (default 10 unless --ios is given).
    #[arg(long = "time", value_name = "SECS")]
    seconds: Option<f64>,
    /// Stop after this many I/Os.
    #[arg(long, value_name = "N")]
    ios: Option<u64>,
    /// Write a pattern carrying the LBA, read it back and compare (each
    /// command slot owns its own blocks; a write and its read-back count as
    /// two I/Os, --ios counts the pairs).
    #[arg(long)]
    verify: bool,
    /// PID of the backend, to report its CPU time per I/O.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Use only the first SIZE bytes of the LUN.
    #[arg(long, value_name = "SIZE")]
    span: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// End by closing the connection with the last commands still in
    /// flight, as a killed QEMU would (to test a backend's clean-up).
    #[arg(long)]
    drop_in_flight: bool,
    /// READ/WRITE CDBs: auto (as Linux's sd: the 10-byte forms where the
    /// LBA and length fit, else 16), 10 or 16.
    #[arg(long, value_name = "SIZE", default_value = "auto",
          value_parser = ["auto", "10", "16"])]
    cdb: String,
}

fn bench(a: BenchArgs) -> Result<(), String> {
    use vhost_user_scsi::bench;
    use vhost_user_scsi::config::parse_size;
    let size =
        |v: &str, what: &str| parse_size(v).ok_or_else(|| format!("--{what} '{v}' is not a size"));
    let block_size = size(&a.block_size, "bs")?;
    if block_size == 0 || block_size % 512 != 0 || block_size > (32 << 20) {
        return Err("--bs must be a multiple of 512, at most 32M".into());
    }
    let pattern = bench::Pattern::parse(&a.pattern)
        .ok_or_else(|| format!("--rw '{}' is not a pattern", a.pattern))?;
    let cdb = bench::CdbSize::parse(&a.cdb)
        .ok_or_else(|| format!("--cdb '{}' is not 10, 16 or auto", a.cdb))?;
    let duration = match (a.seconds, a.ios) {
        (Some(s), _) if !(s > 0.0 && s < 1e6) => return Err("--time must be positive".into()),
        (Some(s), _) => Some(std::time::Duration::from_secs_f64(s)),
        (None, Some(_)) => None,
        (None, None) => Some(std::time::Duration::from_secs(10)),
    };
    let opts = bench::Options {
        socket: a.socket,
        lun: a.lun,
        block_size: block_size as u32,
        queue_depth: a.queue_depth,
        queues: a.queues,
        pattern,
        read_pct: a.read_pct,
        duration,
        ios: a.ios,
        verify: a.verify,
        backend_pid: a.pid,
        span: a
            .span
            .as_deref()
            .map(|v| size(v, "span"))
            .transpose()?
            .unwrap_or(0),
        progress: !a.quiet && !a.json,
        drop_in_flight: a.drop_in_flight,
        cdb,
    };
    let report = bench::run(&opts).map_err(|e| error_chain(&e))?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    if report.errors > 0 || report.verify_failures > 0 {
        return Err(format!(
            "{} command(s) failed, {} verify failure(s)",
            report.errors, report.verify_failures
        ));
    }
    Ok(())
}

/// `--socket` and `--lun` values in the order they were given.
fn ordered_serve_args(m: &ArgMatches) -> Vec<(bool, String)> {
    let mut v: Vec<(usize, bool, String)> = Vec::new();
    for (id, is_socket) in [("socket", true), ("lun", false)] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            v.extend(idx.zip(vals).map(|(i, s)| (i, is_socket, s.clone())));
        }
    }
    v.sort_by_key(|(i, _, _)| *i);
    v.into_iter().map(|(_, s, v)| (s, v)).collect()
}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (m, c)));
    let (matches, cli) = match parsed {
        Ok(p) => p,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line: clap's first line without its "error: " prefix.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "vhost-user-scsi: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let level = match &cli.command {
        Command::PrHelper(a) if a.quiet => "error",
        Command::PrHelper(a) if a.verbose || a.trace.is_some() => "debug",
        _ => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Serve {
            pr_helper_socket,
            pidfile,
            config,
            control,
            control_group,
            metrics,
            user,
            group,
            keep_caps,
            seccomp,
            socket_owner,
            socket_group,
            socket_mode,
            ..
        } => {
            let sub = matches.subcommand_matches("serve").unwrap_or(&matches);
            serve(
                sub,
                ServeArgs {
                    pr_helper_socket,
                    pidfile,
                    config,
                    control,
                    control_group,
                    metrics,
                    sandbox: vhost_user_scsi::config_file::FileConfig {
                        user,
                        group,
                        keep_caps,
                        seccomp,
                        socket_owner,
                        socket_group,
                        socket_mode,
                        ..Default::default()
                    },
                },
            )
        }
        Command::Ctl(a) => ctl(a),
        Command::GenAssets { out } => gen_assets(&out),
        Command::PrHelper(a) => pr_helper(a),
        Command::PrClient(a) => pr_client(a),
        Command::Discover(a) => discover(a),
        Command::Bench(a) => bench(a),
        Command::Hostile(a) => {
            let o = vhost_user_scsi::bench::hostile::Options {
                socket: a.socket,
                rounds: a.rounds,
                duration: a.seconds.map(std::time::Duration::from_secs),
                backend_pid: a.pid,
                only: a.only,
            };
            vhost_user_scsi::bench::hostile::run(&o)
                .map(|r| println!("{r}"))
                .map_err(|e| error_chain(&e))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("vhost-user-scsi: {msg}");
            ExitCode::FAILURE
        }
    }
}
