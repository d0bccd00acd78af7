// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Validated configuration: what the daemon serves. Built from the command
//! line (see cli.rs); everything here has been checked.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::device::{DEFAULT_REQUEST_QUEUES, MAX_QUEUE_SIZE};
use crate::scsi::lun::MAX_LUN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("--lun '{spec}': {why}")]
    BadLun { spec: String, why: String },
    #[error("--socket '{spec}': {why}")]
    BadSocket { spec: String, why: String },
    #[error("--lun '{0}' comes before any --socket")]
    LunWithoutSocket(String),
    #[error("Socket {0} is given twice")]
    DuplicateSocket(PathBuf),
    #[error("LUN {lun} is given twice for socket {socket}")]
    DuplicateLun { socket: PathBuf, lun: u16 },
    #[error("Backstore {0} is configured with different options on different LUNs")]
    ConflictingBackstore(PathBuf),
}

/// One logical unit backed by a file or block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub block_size: u32,
    pub direct: bool,
    /// Unit serial number; by default derived from the canonical path.
    pub serial: Option<String>,
    /// Where APTPL persistent reservation state is kept (default: beside a
    /// regular file, or in /var/lib/vhost-user-scsi for a block device).
    pub pr_file: Option<PathBuf>,
    /// A null backstore of this many bytes instead of a file.
    pub null_size: Option<u64>,
    /// An iSCSI LUN passed through instead of a local backstore.
    pub iscsi: Option<IscsiLun>,
    /// Other processes (another daemon, a VM) may write the backstore at
    /// the same time (`share-rw`): its lock shares writes, and
    /// reservations are not served (they could not be enforced there).
    pub share_rw: bool,
}

/// `--lun [N:]iscsi://...[,credentials=FILE][,chap-algorithms=A[:A]...]
/// [,header-digest][,data-digest][,portal=HOST:PORT]...[,recovery-timeout=SECS|infinite][,discover-portals=yes|no]
/// [,coalesce-us=US]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiLun {
    pub url: crate::iscsi::url::IscsiUrl,
    /// More portals of the same target (`portal=HOST:PORT`), for failover.
    pub portals: Vec<String>,
    pub credentials: Option<PathBuf>,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The CHAP algorithms allowed (`chap-algorithms=sha256:sha1:md5`).
    pub chap_algorithms: crate::iscsi::chap::Offer,
    /// How long commands wait for a lost session before failing (None:
    /// forever).
    pub recovery_timeout: Option<std::time::Duration>,
    /// Learn the target's other portals by SendTargets (`discover-portals`).
    pub discover_portals: bool,
    /// Longest an answer of the target waits to be received with others
    /// while many commands are in flight (`coalesce-us`; zero: never); a
    /// wait for the rest of a big read lasts at most this or 2 ms.
    pub coalesce: std::time::Duration,
}

/// One vhost-user socket (one QEMU controller) and its LUNs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    pub socket: PathBuf,
    /// Initiator port name of this controller's I_T nexus (an iSCSI name).
    pub initiator: String,
    /// Relative target port identifier this controller presents (1-65535;
    /// default: its position among the sockets, from 1).
    pub relative_port: Option<u16>,
    pub request_queues: usize,
    /// Notification coalescing of the request queues.
    pub coalesce: crate::device::coalesce::Policy,
    /// The ALUA access state of this controller's target port group.
    pub alua_state: crate::scsi::AluaState,
    pub luns: BTreeMap<u16, LunConfig>,
}

#[derive(Debug, Default)]
pub struct Config {
    pub controllers: Vec<ControllerConfig>,
    /// A bound socket to serve the qemu-pr-helper protocol on, too.
    pub pr_helper: Option<std::os::unix::net::UnixListener>,
}

/// Longest notification delay accepted (a millisecond: beyond that a
/// guest's I/O latency suffers more than its interrupt rate gains).
const MAX_COALESCE_US: u64 = 1000;

/// Longest wait for an iSCSI target's answers accepted (10 ms: a bound on
/// added latency, not a way to slow a session down).
const MAX_ISCSI_COALESCE_US: u64 = 10_000;

/// Most request queues a controller may have (64-bit queue masks, minus
/// the control and event queues).
pub const MAX_REQUEST_QUEUES: usize = 62;

/// A `--lun` error; neither the spec nor an option it quotes shows an
/// iSCSI password.
fn bad_lun(spec: &str, why: impl Into<String>) -> Error {
    Error::BadLun {
        spec: crate::iscsi::url::redact(spec),
        why: crate::iscsi::url::redact(&why.into()),
    }
}

/// Parse `[N:]file=PATH[,ro][,block-size=512|4096][,direct][,serial=S][,pr-file=PATH][,share-rw]`.
/// Returns the explicit LUN number, if any.
pub fn parse_lun(spec: &str) -> Result<(Option<u16>, LunConfig), Error> {
    let (lun, rest) = match spec.split_once(':') {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u16 = n
                .parse()
                .ok()
                .filter(|&n| n <= MAX_LUN)
                .ok_or_else(|| bad_lun(spec, format!("LUN number must be 0 to {MAX_LUN}")))?;
            (Some(n), rest)
        }
        _ => (None, spec),
    };
    let mut path = None;
    let mut cfg = LunConfig {
        path: PathBuf::new(),
        read_only: false,
        block_size: 512,
        direct: false,
        serial: None,
        pr_file: None,
        null_size: None,
        iscsi: None,
        share_rw: false,
    };
    if rest.starts_with("iscsi://") {
        let mut parts = rest.split(',');
        let url = crate::iscsi::url::parse(parts.next().unwrap_or_default())
            .map_err(|e| bad_lun(spec, e.to_string()))?;
        if url.target.is_none() || url.lun.is_none() {
            return Err(bad_lun(spec, "the URL needs /target-iqn/lun"));
        }
        let mut l = IscsiLun {
            url,
            portals: Vec::new(),
            credentials: None,
            header_digest: false,
            data_digest: false,
            chap_algorithms: crate::iscsi::chap::Offer::ALL,
            recovery_timeout: Some(crate::iscsi::client::DEFAULT_RECOVERY_TIMEOUT),
            discover_portals: true,
            coalesce: std::time::Duration::from_micros(
                crate::iscsi::client::coalesce::DEFAULT_DELAY_US,
            ),
        };
        for opt in parts {
            match opt.split_once('=') {
                Some(("credentials", f)) if !f.is_empty() => l.credentials = Some(PathBuf::from(f)),
                Some(("portal", p)) if p.contains(':') => l.portals.push(
                    crate::iscsi::url::portal_address(p)
                        .ok_or_else(|| bad_lun(spec, format!("portal '{p}' is not HOST:PORT")))?,
                ),
                Some(("recovery-timeout", "infinite")) => l.recovery_timeout = None,
                Some(("chap-algorithms", v)) => {
                    l.chap_algorithms =
                        crate::iscsi::chap::Offer::parse(v).map_err(|e| bad_lun(spec, e))?
                }
                Some(("discover-portals", "yes")) => l.discover_portals = true,
                Some(("discover-portals", "no")) => l.discover_portals = false,
                Some(("recovery-timeout", v)) => match v.parse::<u64>() {
                    Ok(secs @ 1..=86400) => {
                        l.recovery_timeout = Some(std::time::Duration::from_secs(secs))
                    }
                    _ => {
                        return Err(bad_lun(
                            spec,
                            "recovery-timeout must be 1..86400 seconds or 'infinite'",
                        ))
                    }
                },
                Some(("coalesce-us", v)) => {
                    let us = v
                        .parse::<u64>()
                        .ok()
                        .filter(|&us| us <= MAX_ISCSI_COALESCE_US)
                        .ok_or_else(|| {
                            bad_lun(
                                spec,
                                format!("coalesce-us must be 0 to {MAX_ISCSI_COALESCE_US}"),
                            )
                        })?;
                    l.coalesce = std::time::Duration::from_micros(us);
                }
                None if opt == "header-digest" => l.header_digest = true,
                None if opt == "data-digest" => l.data_digest = true,
                _ => return Err(bad_lun(spec, format!("unknown iSCSI option '{opt}'"))),
            }
        }
        // The URL names the LUN in messages: without its password.
        cfg.path = PathBuf::from(crate::iscsi::url::redact(
            rest.split(',').next().unwrap_or_default(),
        ));
        cfg.iscsi = Some(l);
        return Ok((lun, cfg));
    }
    let mut null = false;
    for opt in rest.split(',') {
        match opt.split_once('=') {
            Some(("file", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
            Some(("block-size", "512")) => cfg.block_size = 512,
            Some(("block-size", "4096")) => cfg.block_size = 4096,
            Some(("block-size", v)) => {
                return Err(bad_lun(
                    spec,
                    format!("block-size must be 512 or 4096, not '{v}'"),
                ))
            }
            Some(("serial", s)) => {
                if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad_lun(
                        spec,
                        "serial must be 1 to 32 printable ASCII characters",
                    ));
                }
                cfg.serial = Some(s.into());
            }
            Some(("pr-file", p)) if !p.is_empty() => cfg.pr_file = Some(PathBuf::from(p)),
            Some(("size", v)) => {
                cfg.null_size = Some(parse_size(v).ok_or_else(|| {
                    bad_lun(
                        spec,
                        format!("size '{v}' is not a size (bytes, or with K/M/G/T)"),
                    )
                })?)
            }
            None if opt == "null" => null = true,
            None if opt == "ro" => cfg.read_only = true,
            None if opt == "direct" => cfg.direct = true,
            None if opt == "share-rw" => cfg.share_rw = true,
            Some(("share-rw", "on")) => cfg.share_rw = true,
            Some(("share-rw", "off")) => cfg.share_rw = false,
            _ => return Err(bad_lun(spec, format!("unknown option '{opt}'"))),
        }
    }
    match (null, path, cfg.null_size) {
        (true, None, Some(size)) if size >= 4096 => cfg.path = PathBuf::from("null"),
        (true, None, _) => return Err(bad_lun(spec, "null needs size=N of at least 4K")),
        (true, Some(_), _) => return Err(bad_lun(spec, "null and file= exclude each other")),
        (false, Some(p), None) => cfg.path = p,
        (false, _, Some(_)) => return Err(bad_lun(spec, "size= goes with null")),
        (false, None, None) => return Err(bad_lun(spec, "file=PATH (or null,size=N) is required")),
    }
    Ok((lun, cfg))
}

/// Longest iSCSI name (RFC 7143 4.2.7.1).
const MAX_ISCSI_NAME: usize = 223;

/// Whether `name` is a well-formed iSCSI name (iqn./eui./naa. forms, the
/// lower-case characters RFC 3722 leaves after normalisation).
pub fn valid_iscsi_name(name: &str) -> bool {
    let body_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b));
    let prefix_ok = ["iqn.", "eui.", "naa."].iter().any(|p| name.starts_with(p));
    body_ok && prefix_ok && name.len() > 4 && name.len() <= MAX_ISCSI_NAME
}

/// The default initiator name of a controller: derived from its socket path,
/// so it is stable across restarts (`/run/vm1.sock` ->
/// `iqn.2026-11.org.vhost-user-scsi:run.vm1.sock`).
pub fn default_initiator(socket: &std::path::Path) -> String {
    const PREFIX: &str = "iqn.2026-11.org.vhost-user-scsi:";
    let mut s: String = socket
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() => c.to_ascii_lowercase(),
            '-' | '.' | ':' => c,
            _ => '-',
        })
        .collect();
    if s.is_empty() {
        s.push('-');
    }
    let room = MAX_ISCSI_NAME - PREFIX.len();
    if s.len() > room {
        // Keep the tail (the most specific part) and make it unique.
        let hash = s
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let tail = s.get(s.len() - (room - 9)..).unwrap_or_default();
        s = format!("{hash:08x}-{tail}");
    }
    format!("{PREFIX}{s}")
}

/// A byte count with an optional binary suffix: 4096, 512K, 64M, 1G, 2T.
pub fn parse_size(v: &str) -> Option<u64> {
    let shift = match v.as_bytes().last()? {
        b'K' | b'k' => 10,
        b'M' | b'm' => 20,
        b'G' | b'g' => 30,
        b'T' | b't' => 40,
        _ => 0,
    };
    // The suffix is one ASCII byte.
    let num = if shift == 0 { v } else { v.get(..v.len() - 1)? };
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Parse `PATH[,queues=N][,initiator=NAME][,port=N][,coalesce-us=N][,coalesce-depth=N][,alua-state=S]`
/// into an empty controller.
pub fn parse_socket(spec: &str) -> Result<ControllerConfig, Error> {
    // Neither the spec nor an option it quotes shows an iSCSI password.
    let bad = |why: String| Error::BadSocket {
        spec: crate::iscsi::url::redact(spec),
        why: crate::iscsi::url::redact(&why),
    };
    let mut parts = spec.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("empty path".into()))?;
    // A LUN's URL given as the socket (or inside it): refused here, before
    // the path (and any password in it) reaches other messages.
    if path.contains("iscsi://") {
        return Err(bad(
            "an iscsi:// URL is a LUN (--lun), not a socket path".into()
        ));
    }
    let mut c = ControllerConfig {
        socket: PathBuf::from(path),
        initiator: default_initiator(std::path::Path::new(path)),
        relative_port: None,
        request_queues: DEFAULT_REQUEST_QUEUES,
        coalesce: Default::default(),
        alua_state: Default::default(),
        luns: BTreeMap::new(),
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("queues", n)) => {
                c.request_queues = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_REQUEST_QUEUES).contains(n))
                    .ok_or_else(|| bad(format!("queues must be 1 to {MAX_REQUEST_QUEUES}")))?;
            }
            Some(("initiator", n)) => {
                if !valid_iscsi_name(n) {
                    return Err(bad(format!(
                        "initiator must be an iSCSI name (iqn./eui./naa., lower case, at most {MAX_ISCSI_NAME} bytes)"
                    )));
                }
                c.initiator = n.into();
            }
            Some(("port", n)) => {
                c.relative_port = Some(
                    n.parse()
                        .ok()
                        .filter(|&p: &u16| p >= 1)
                        .ok_or_else(|| bad("port must be 1 to 65535".into()))?,
                );
            }
            Some(("coalesce-us", n)) => {
                let us = n
                    .parse::<u64>()
                    .ok()
                    .filter(|us| *us <= MAX_COALESCE_US)
                    .ok_or_else(|| bad(format!("coalesce-us must be 0 to {MAX_COALESCE_US}")))?;
                c.coalesce.delay = std::time::Duration::from_micros(us);
            }
            Some(("coalesce-depth", n)) => {
                c.coalesce.depth = n
                    .parse()
                    .ok()
                    .filter(|d| (1..=MAX_QUEUE_SIZE).contains(d))
                    .ok_or_else(|| bad(format!("coalesce-depth must be 1 to {MAX_QUEUE_SIZE}")))?;
            }
            Some(("alua-state", v)) => c.alua_state = v.parse().map_err(bad)?,
            _ => return Err(bad(format!("unknown option '{opt}'"))),
        }
    }
    Ok(c)
}

impl Config {
    /// Build from `--socket` and `--lun` values in command-line order: each
    /// `--lun` belongs to the `--socket` before it.
    pub fn from_ordered_args(args: &[(bool, String)]) -> Result<Config, Error> {
        let mut cfg = Config::default();
        for (is_socket, value) in args {
            if *is_socket {
                let c = parse_socket(value)?;
                if cfg.controllers.iter().any(|o| o.socket == c.socket) {
                    return Err(Error::DuplicateSocket(c.socket));
                }
                cfg.controllers.push(c);
                continue;
            }
            let (lun, lc) = parse_lun(value)?;
            let c = cfg
                .controllers
                .last_mut()
                .ok_or_else(|| Error::LunWithoutSocket(crate::iscsi::url::redact(value)))?;
            let lun = match lun {
                Some(n) => n,
                None => c.luns.keys().next_back().map_or(0, |&l| l + 1),
            };
            if lun > MAX_LUN {
                return Err(bad_lun(value, format!("LUN number must be 0 to {MAX_LUN}")));
            }
            if c.luns.insert(lun, lc).is_some() {
                return Err(Error::DuplicateLun {
                    socket: c.socket.clone(),
                    lun,
                });
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn args(v: &[(bool, &str)]) -> Vec<(bool, String)> {
        v.iter().map(|(s, a)| (*s, a.to_string())).collect()
    }

    #[test]
    fn lun_options_parse() {
        let (n, l) = parse_lun("3:file=/d.img,ro,block-size=4096,direct,serial=ABC").unwrap();
        assert_eq!(n, Some(3));
        assert!(l.read_only && l.direct);
        assert_eq!(l.block_size, 4096);
        assert_eq!(l.serial.as_deref(), Some("ABC"));
    }

    #[test]
    fn share_rw_is_off_unless_asked_for() {
        assert!(!parse_lun("file=/d.img").unwrap().1.share_rw);
        assert!(parse_lun("file=/d.img,share-rw").unwrap().1.share_rw);
        assert!(parse_lun("file=/d.img,share-rw=on").unwrap().1.share_rw);
        assert!(!parse_lun("file=/d.img,share-rw=off").unwrap().1.share_rw);
        assert!(parse_lun("file=/d.img,share-rw=yes").is_err());
    }

    #[test]
    fn lun_numbers_follow_in_order_after_an_explicit_one() {
        let c = Config::from_ordered_args(&args(&[
            (true, "/s"),
            (false, "file=/a"),
            (false, "5:file=/b"),
            (false, "file=/c"),
        ]))
        .unwrap();
        let luns: Vec<u16> = c.controllers[0].luns.keys().copied().collect();
        assert_eq!(luns, vec![0, 5, 6]);
    }

    #[test]
    fn socket_coalescing_options() {
        let c = parse_socket("/s").unwrap();
        assert_eq!(c.coalesce, crate::device::coalesce::Policy::default());
        let c = parse_socket("/s,coalesce-us=0").unwrap();
        assert!(c.coalesce.delay.is_zero());
        let c = parse_socket("/s,coalesce-us=200,coalesce-depth=4").unwrap();
        assert_eq!(c.coalesce.delay, std::time::Duration::from_micros(200));
        assert_eq!(c.coalesce.depth, 4);
        for bad in [
            "/s,coalesce-us=1001",
            "/s,coalesce-us=-1",
            "/s,coalesce-us=",
            "/s,coalesce-depth=0",
            "/s,coalesce-depth=1025",
            "/s,coalesce-depth=x",
        ] {
            assert!(
                matches!(parse_socket(bad), Err(Error::BadSocket { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn luns_group_under_the_preceding_socket() {
        let c = Config::from_ordered_args(&args(&[
            (true, "/s1"),
            (false, "file=/a"),
            (true, "/s2,queues=2"),
            (false, "file=/a"),
            (false, "file=/b"),
        ]))
        .unwrap();
        assert_eq!(c.controllers[0].luns.len(), 1);
        assert_eq!(c.controllers[1].luns.len(), 2);
        assert_eq!(c.controllers[1].request_queues, 2);
    }

    #[test]
    fn default_initiator_is_a_valid_iscsi_name_derived_from_the_path() {
        let n = default_initiator(std::path::Path::new("/run/VM_1/scsi.sock"));
        assert_eq!(n, "iqn.2026-11.org.vhost-user-scsi:run.vm-1.scsi.sock");
        assert!(valid_iscsi_name(&n));
        let long = format!("/{}", "a".repeat(400));
        assert!(valid_iscsi_name(&default_initiator(std::path::Path::new(
            &long
        ))));
    }

    #[test]
    fn relative_port_is_1_to_65535() {
        assert_eq!(parse_socket("/s").unwrap().relative_port, None);
        assert_eq!(parse_socket("/s,port=7").unwrap().relative_port, Some(7));
        assert_eq!(
            parse_socket("/s,port=65535").unwrap().relative_port,
            Some(65535)
        );
        for bad in ["0", "65536", "-1", "x", ""] {
            assert!(parse_socket(&format!("/s,port={bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn alua_state_option_sets_the_state_and_defaults_to_active_optimized() {
        use crate::scsi::AluaState;
        assert_eq!(
            parse_socket("/s").unwrap().alua_state,
            AluaState::ActiveOptimized
        );
        assert_eq!(
            parse_socket("/s,alua-state=active-non-optimized")
                .unwrap()
                .alua_state,
            AluaState::ActiveNonOptimized
        );
        assert_eq!(
            parse_socket("/s,alua-state=standby").unwrap().alua_state,
            AluaState::Standby
        );
        assert!(parse_socket("/s,alua-state=offline").is_err());
    }

    #[test]
    fn initiator_option_is_validated() {
        let c = parse_socket("/s,initiator=iqn.2026-11.org.example:vm1").unwrap();
        assert_eq!(c.initiator, "iqn.2026-11.org.example:vm1");
        assert!(parse_socket("/s,initiator=IQN.Bad Name").is_err());
    }

    #[test]
    fn iscsi_lun_takes_a_url_and_options() {
        let (n, l) = parse_lun(
            "2:iscsi://127.0.0.1:3261/iqn.2026-11.t:x/1,credentials=/etc/c,header-digest",
        )
        .unwrap();
        assert_eq!(n, Some(2));
        let i = l.iscsi.unwrap();
        assert_eq!(i.url.lun, Some(1));
        assert!(i.header_digest && !i.data_digest);
        assert!(parse_lun("iscsi://127.0.0.1/iqn.x").is_err());
        assert!(parse_lun("iscsi://127.0.0.1/iqn.x/1,bogus").is_err());
        let (_, l) =
            parse_lun("iscsi://127.0.0.1:1/iqn.x/1,portal=127.0.0.1:2,portal=[::1]:3").unwrap();
        assert_eq!(l.iscsi.unwrap().portals, vec!["127.0.0.1:2", "[::1]:3"]);
    }

    #[test]
    fn a_bad_iscsi_lun_spec_does_not_echo_the_password() {
        let e = parse_lun("iscsi://alice%s3cret@h/iqn.x:y/1,bogus").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--lun 'iscsi://alice%***@h/iqn.x:y/1,bogus': unknown iSCSI option 'bogus'"
        );
    }

    #[test]
    fn a_bad_iscsi_url_in_a_lun_spec_does_not_echo_the_password() {
        let e = parse_lun("iscsi://alice%s3cret@h:port/iqn.x:y/1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn an_iscsi_lun_before_any_socket_does_not_echo_the_password() {
        let e = Config::from_ordered_args(&args(&[(false, "iscsi://a%s3cret@h/iqn.x:y/1")]))
            .unwrap_err();
        assert_eq!(
            e,
            Error::LunWithoutSocket("iscsi://a%***@h/iqn.x:y/1".into())
        );
    }

    #[test]
    fn an_iscsi_url_given_as_a_socket_does_not_echo_the_password() {
        // Found by fuzzing (config_specs): a --lun value passed to --socket.
        let e = parse_socket("/s,iscsi://u%pw4@h/iqn.x:y/1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--socket '/s,iscsi://u%***@h/iqn.x:y/1': unknown option 'iscsi://u%***@h/iqn.x:y/1'"
        );
    }

    #[test]
    fn an_iscsi_url_given_as_a_socket_path_is_refused_without_the_password() {
        // Found by fuzzing (config_specs): such a path, with two LUNs of the
        // same number, came back whole in "LUN 0 is given twice for socket".
        let e = parse_socket("iscsi://u%pw4@h/iqn.x:y/1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--socket 'iscsi://u%***@h/iqn.x:y/1': an iscsi:// URL is a LUN (--lun), not a socket path"
        );
        // Found again (2026-12-07): with a LUN number before it, the URL
        // was taken for a path and came back in the same message.
        let e = parse_socket("2:iscsi://u%pw4@h/iqn.x:y/1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--socket '2:iscsi://u%***@h/iqn.x:y/1': an iscsi:// URL is a LUN (--lun), not a socket path"
        );
    }

    #[test]
    fn an_iscsi_url_given_as_a_file_lun_option_does_not_echo_the_password() {
        let e = parse_lun("file=/a,iscsi://u%pw4@h/iqn.x:y/1").unwrap_err();
        assert!(!e.to_string().contains("pw4"), "{e}");
    }

    #[test]
    fn an_iscsi_lun_is_named_by_its_url_without_the_password() {
        let (_, l) = parse_lun("iscsi://alice%s3cret@h/iqn.x:y/1").unwrap();
        assert_eq!(l.path, PathBuf::from("iscsi://alice%***@h/iqn.x:y/1"));
        assert!(!format!("{l:?}").contains("s3cret"));
    }

    #[test]
    fn an_iscsi_portal_option_must_be_a_host_and_port() {
        for bad in ["h[:1", "fe80::1", "[x]:1", "h:0"] {
            let spec = format!("iscsi://h/iqn.x/1,portal={bad}");
            assert!(parse_lun(&spec).is_err(), "{bad}");
        }
    }

    #[test]
    fn iscsi_chap_algorithms_can_be_restricted() {
        use crate::iscsi::chap::Offer;
        let t = |spec: &str| parse_lun(spec).map(|(_, l)| l.iscsi.unwrap().chap_algorithms);
        assert_eq!(t("iscsi://h/iqn.x/1"), Ok(Offer::ALL));
        assert_eq!(
            t("iscsi://h/iqn.x/1,chap-algorithms=sha256:sha1").map(|o| o.key()),
            Ok("7,6".into())
        );
        for bad in ["", "md4", "sha1,md5"] {
            assert!(t(&format!("iscsi://h/iqn.x/1,chap-algorithms={bad}")).is_err());
        }
    }

    #[test]
    fn iscsi_coalescing_is_bounded_and_can_be_turned_off() {
        let t = |spec: &str| parse_lun(spec).map(|(_, l)| l.iscsi.unwrap().coalesce);
        let us = |n| Ok(std::time::Duration::from_micros(n));
        assert_eq!(
            t("iscsi://h/iqn.x/1"),
            us(crate::iscsi::client::coalesce::DEFAULT_DELAY_US)
        );
        assert_eq!(t("iscsi://h/iqn.x/1,coalesce-us=0"), us(0));
        assert_eq!(t("iscsi://h/iqn.x/1,coalesce-us=10000"), us(10_000));
        for bad in ["10001", "-1", "fast", ""] {
            assert!(t(&format!("iscsi://h/iqn.x/1,coalesce-us={bad}")).is_err());
        }
    }

    #[test]
    fn iscsi_recovery_timeout_defaults_to_two_minutes() {
        let t = |spec: &str| parse_lun(spec).map(|(_, l)| l.iscsi.unwrap().recovery_timeout);
        let secs = |s| Ok(Some(std::time::Duration::from_secs(s)));
        assert_eq!(t("iscsi://h/iqn.x/1"), secs(120));
        assert_eq!(t("iscsi://h/iqn.x/1,recovery-timeout=5"), secs(5));
        assert_eq!(t("iscsi://h/iqn.x/1,recovery-timeout=infinite"), Ok(None));
        for bad in ["0", "-1", "86401", "soon", ""] {
            assert!(t(&format!("iscsi://h/iqn.x/1,recovery-timeout={bad}")).is_err());
        }
        let d = |spec: &str| parse_lun(spec).map(|(_, l)| l.iscsi.unwrap().discover_portals);
        assert_eq!(d("iscsi://h/iqn.x/1"), Ok(true));
        assert_eq!(d("iscsi://h/iqn.x/1,discover-portals=no"), Ok(false));
        assert!(d("iscsi://h/iqn.x/1,discover-portals=maybe").is_err());
    }

    #[test]
    fn null_lun_takes_a_size() {
        let (_, l) = parse_lun("null,size=1T").unwrap();
        assert_eq!(l.null_size, Some(1 << 40));
        assert!(parse_lun("null").is_err());
        assert!(parse_lun("null,size=1G,file=/a").is_err());
        assert!(parse_lun("file=/a,size=1G").is_err());
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn bad_specs_are_rejected_with_the_reason() {
        assert!(matches!(
            parse_lun("file=/a,block-size=1024"),
            Err(Error::BadLun { .. })
        ));
        assert!(matches!(parse_lun("ro"), Err(Error::BadLun { .. })));
        assert!(matches!(
            parse_lun("99999:file=/a"),
            Err(Error::BadLun { .. })
        ));
        assert!(matches!(
            parse_socket("/s,queues=0"),
            Err(Error::BadSocket { .. })
        ));
        assert_eq!(
            Config::from_ordered_args(&args(&[(false, "file=/a")])).unwrap_err(),
            Error::LunWithoutSocket("file=/a".into())
        );
        assert!(matches!(
            Config::from_ordered_args(&args(&[
                (true, "/s"),
                (false, "0:file=/a"),
                (false, "0:file=/b")
            ])),
            Err(Error::DuplicateLun { lun: 0, .. })
        ));
    }
}
