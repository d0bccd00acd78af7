// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The configuration file (TOML) and the objects the control methods take:
//! controllers and LUNs with the same fields as the command line's
//! `--socket` and `--lun` options (`queues`, `block-size`, `ro`, ...), and
//! validated by the same code (`config::parse_socket`, `config::parse_lun`),
//! so the three can never disagree.
//!
//! ```toml
//! control = "/run/vhost-user-scsi/control.sock"
//!
//! [[controller]]
//! socket = "/run/vhost-user-scsi/vm1.sock"
//! queues = 4
//!
//! [[controller.lun]]
//! file = "/srv/vm1.img"
//!
//! [[controller.lun]]
//! lun = 1
//! iscsi = "iscsi://192.0.2.10/iqn.2026-11.org.example:disk1/1"
//! credentials = "/etc/vhost-user-scsi/san1.chap"
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{self, Config, ControllerConfig, LunConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{object}: {why}")]
    Invalid { object: String, why: String },
    #[error("Cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot encode the configuration")]
    Encode(#[source] toml::ser::Error),
}

/// A byte count: a number, or a string with a K/M/G/T suffix.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// Seconds, or "infinite".
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Timeout {
    Seconds(u64),
    Text(String),
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// The control socket (default /run/vhost-user-scsi/control.sock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    /// A group given read and write access to the control socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_group: Option<String>,
    /// ADDR:PORT of the Prometheus endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// The user to run as once start-up is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The group to run as (default: the user's primary group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Capabilities to keep besides those the configuration needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_caps: Vec<String>,
    /// The seccomp filter: enforce (default), log or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    /// The owner given to the vhost-user sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_owner: Option<String>,
    /// The group given to the vhost-user sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// The mode of the vhost-user sockets (octal; default 0600, or 0660
    /// with a socket group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    #[serde(default, rename = "controller", skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<ControllerSpec>,
}

/// A controller: `--socket PATH[,queues=N][,initiator=NAME][,port=N]
/// [,coalesce-us=US][,coalesce-depth=N][,alua-state=S]` and its LUNs.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ControllerSpec {
    pub socket: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_depth: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alua_state: Option<String>,
    #[serde(default, rename = "lun", skip_serializing_if = "Vec::is_empty")]
    pub luns: Vec<LunSpec>,
}

/// A LUN: exactly one of `file`, `null` (its size) or `iscsi` (its URL),
/// and the options of `--lun`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LunSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ro: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub share_rw: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_algorithms: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub header_digest: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub data_digest: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portal: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_timeout: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover_portals: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_us: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An option value for the command-line syntax: commas separate options
/// there, so a value may not contain one.
fn value(field: &str, v: &str) -> Result<String, String> {
    if v.contains(',') {
        return Err(format!("{field} may not contain a comma"));
    }
    if v.is_empty() {
        return Err(format!("{field} may not be empty"));
    }
    Ok(v.to_string())
}

fn path_value(field: &str, p: &Path) -> Result<String, String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{field} must be valid UTF-8"))?;
    value(field, s)
}

impl LunSpec {
    /// The `--lun` option this stands for.
    fn to_option(&self) -> Result<String, String> {
        let mut parts = Vec::new();
        match (&self.file, &self.null, &self.iscsi) {
            (Some(f), None, None) => parts.push(format!("file={}", path_value("file", f)?)),
            (None, Some(n), None) => {
                let size = match n {
                    Size::Bytes(b) => b.to_string(),
                    Size::Text(t) => value("null", t)?,
                };
                parts.push(format!("null,size={size}"));
            }
            (None, None, Some(u)) => parts.push(value("iscsi", u)?),
            _ => return Err("give exactly one of file, null (a size) or iscsi (a URL)".into()),
        }
        let flag = |parts: &mut Vec<String>, on: bool, name: &str| {
            if on {
                parts.push(name.to_string());
            }
        };
        flag(&mut parts, self.ro, "ro");
        flag(&mut parts, self.direct, "direct");
        flag(&mut parts, self.share_rw, "share-rw");
        flag(&mut parts, self.header_digest, "header-digest");
        flag(&mut parts, self.data_digest, "data-digest");
        if let Some(b) = self.block_size {
            parts.push(format!("block-size={b}"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial={}", value("serial", s)?));
        }
        if let Some(p) = &self.pr_file {
            parts.push(format!("pr-file={}", path_value("pr-file", p)?));
        }
        if let Some(c) = &self.credentials {
            parts.push(format!("credentials={}", path_value("credentials", c)?));
        }
        if let Some(a) = &self.chap_algorithms {
            parts.push(format!("chap-algorithms={}", value("chap-algorithms", a)?));
        }
        for p in &self.portal {
            parts.push(format!("portal={}", value("portal", p)?));
        }
        match &self.recovery_timeout {
            Some(Timeout::Seconds(s)) => parts.push(format!("recovery-timeout={s}")),
            Some(Timeout::Text(t)) => parts.push(format!(
                "recovery-timeout={}",
                value("recovery-timeout", t)?
            )),
            None => {}
        }
        if let Some(d) = self.discover_portals {
            parts.push(format!("discover-portals={}", if d { "yes" } else { "no" }));
        }
        if let Some(us) = self.coalesce_us {
            parts.push(format!("coalesce-us={us}"));
        }
        Ok(parts.join(","))
    }

    /// Validate, as `--lun` would be: the LUN number given (if any) and
    /// its configuration. The error says what to fix.
    pub fn to_config(&self) -> Result<(Option<u16>, LunConfig), String> {
        let opt = self.to_option()?;
        let (n, lc) = config::parse_lun(&opt).map_err(|e| match e {
            config::Error::BadLun { why, .. } => why,
            e => e.to_string(),
        })?;
        if let Some(l) = self.lun {
            if l > crate::scsi::lun::MAX_LUN {
                return Err(format!("lun must be 0 to {}", crate::scsi::lun::MAX_LUN));
            }
        }
        Ok((self.lun.or(n), lc))
    }

    /// The spec of a configured LUN. An iSCSI password given in the URL is
    /// left out unless `secrets`; returns whether one was left out.
    pub fn from_config(lun: u16, lc: &LunConfig, secrets: bool) -> (LunSpec, bool) {
        let mut s = LunSpec {
            lun: Some(lun),
            ro: lc.read_only,
            direct: lc.direct,
            share_rw: lc.share_rw,
            serial: lc.serial.clone(),
            pr_file: lc.pr_file.clone(),
            block_size: (lc.block_size != 512).then_some(lc.block_size),
            ..LunSpec::default()
        };
        let mut dropped = false;
        if let Some(size) = lc.null_size {
            s.null = Some(Size::Bytes(size));
        } else if let Some(il) = &lc.iscsi {
            dropped = il.url.password.is_some() && !secrets;
            s.iscsi = Some(if secrets {
                full_url(&il.url)
            } else {
                redacted_url(&il.url)
            });
            s.credentials = il.credentials.clone();
            s.header_digest = il.header_digest;
            s.data_digest = il.data_digest;
            s.portal = il.portals.clone();
            if il.chap_algorithms != crate::iscsi::chap::Offer::ALL {
                s.chap_algorithms = Some(il.chap_algorithms.option_value());
            }
            s.recovery_timeout = match il.recovery_timeout {
                None => Some(Timeout::Text("infinite".into())),
                Some(d) if d == crate::iscsi::client::DEFAULT_RECOVERY_TIMEOUT => None,
                Some(d) => Some(Timeout::Seconds(d.as_secs())),
            };
            s.discover_portals = (!il.discover_portals).then_some(false);
            let default = crate::iscsi::client::coalesce::DEFAULT_DELAY_US;
            let us = il.coalesce.as_micros() as u64;
            s.coalesce_us = (us != default).then_some(us);
        } else {
            s.file = Some(lc.path.clone());
        }
        (s, dropped)
    }
}

/// `iscsi://[user@]host:port/target/lun`: the URL with no password in it.
pub fn redacted_url(u: &crate::iscsi::url::IscsiUrl) -> String {
    url_with(u, u.user.clone())
}

fn full_url(u: &crate::iscsi::url::IscsiUrl) -> String {
    let who = match (&u.user, &u.password) {
        (Some(user), Some(pw)) => Some(format!("{user}%{}", pw.expose())),
        (user, _) => user.clone(),
    };
    url_with(u, who)
}

fn url_with(u: &crate::iscsi::url::IscsiUrl, who: Option<String>) -> String {
    let mut s = String::from("iscsi://");
    if let Some(w) = who {
        s.push_str(&w);
        s.push('@');
    }
    s.push_str(&u.address());
    if let Some(t) = &u.target {
        s.push('/');
        s.push_str(t);
        if let Some(l) = u.lun {
            s.push_str(&format!("/{l}"));
        }
    }
    s
}

impl ControllerSpec {
    /// The `--socket` option this stands for.
    fn to_option(&self) -> Result<String, String> {
        let mut s = path_value("socket", &self.socket)?;
        if !self.socket.is_absolute() {
            return Err("socket must be an absolute path".into());
        }
        if let Some(q) = self.queues {
            s.push_str(&format!(",queues={q}"));
        }
        if let Some(i) = &self.initiator {
            s.push_str(&format!(",initiator={}", value("initiator", i)?));
        }
        if let Some(p) = self.port {
            s.push_str(&format!(",port={p}"));
        }
        if let Some(us) = self.coalesce_us {
            s.push_str(&format!(",coalesce-us={us}"));
        }
        if let Some(d) = self.coalesce_depth {
            s.push_str(&format!(",coalesce-depth={d}"));
        }
        if let Some(a) = &self.alua_state {
            s.push_str(&format!(",alua-state={}", value("alua-state", a)?));
        }
        Ok(s)
    }

    /// Validate, as `--socket` and its `--lun` options would be. `what`
    /// names the object in errors (e.g. "controller 2").
    pub fn to_config(&self, what: &str) -> Result<ControllerConfig, Error> {
        let object = format!("{what} ({})", self.socket.display());
        let invalid = |why: String| Error::Invalid {
            object: object.clone(),
            why,
        };
        let socket = self.to_option().map_err(invalid)?;
        let mut args = vec![(true, socket)];
        for (i, l) in self.luns.iter().enumerate() {
            let lun_object = match l.lun {
                Some(n) => format!("{object}, lun {n}"),
                None => format!("{object}, lun entry {}", i + 1),
            };
            l.to_config().map_err(|why| Error::Invalid {
                object: lun_object.clone(),
                why,
            })?;
            let mut opt = l.to_option().map_err(|why| Error::Invalid {
                object: lun_object,
                why,
            })?;
            if let Some(n) = l.lun {
                opt = format!("{n}:{opt}");
            }
            args.push((false, opt));
        }
        let mut cfg = Config::from_ordered_args(&args).map_err(|e| {
            invalid(match e {
                config::Error::BadSocket { why, .. } => why,
                config::Error::DuplicateLun { lun, .. } => format!("lun {lun} is given twice"),
                e => e.to_string(),
            })
        })?;
        cfg.controllers
            .pop()
            .ok_or_else(|| invalid("no controller".into()))
    }

    /// The spec of a configured controller (see `LunSpec::from_config`);
    /// returns the LUNs whose password was left out.
    pub fn from_config(c: &ControllerConfig, secrets: bool) -> (ControllerSpec, Vec<u16>) {
        let default = crate::device::coalesce::Policy::default();
        let mut dropped = Vec::new();
        let luns = c
            .luns
            .iter()
            .map(|(&n, lc)| {
                let (s, d) = LunSpec::from_config(n, lc, secrets);
                if d {
                    dropped.push(n);
                }
                s
            })
            .collect();
        let spec = ControllerSpec {
            socket: c.socket.clone(),
            queues: Some(c.request_queues),
            initiator: (c.initiator != config::default_initiator(&c.socket))
                .then(|| c.initiator.clone()),
            port: c.relative_port,
            coalesce_us: (c.coalesce.delay != default.delay)
                .then_some(c.coalesce.delay.as_micros() as u64),
            coalesce_depth: (c.coalesce.depth != default.depth).then_some(c.coalesce.depth),
            alua_state: (c.alua_state != Default::default()).then(|| c.alua_state.to_string()),
            luns,
        };
        (spec, dropped)
    }
}

impl FileConfig {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<(FileConfig, Vec<ControllerConfig>), Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and validate a file's text; errors name the line (syntax,
    /// unknown fields, wrong types) or the object and field.
    pub fn parse(path: &Path, text: &str) -> Result<(FileConfig, Vec<ControllerConfig>), Error> {
        let f: FileConfig = toml::from_str(text).map_err(|e| Error::Syntax {
            path: path.into(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut out: Vec<ControllerConfig> = Vec::new();
        for (i, c) in f.controllers.iter().enumerate() {
            let cfg = c.to_config(&format!("{}: controller {}", path.display(), i + 1))?;
            if out.iter().any(|o| o.socket == cfg.socket) {
                return Err(Error::Invalid {
                    object: format!("{}: controller {}", path.display(), i + 1),
                    why: format!("socket {} is given twice", cfg.socket.display()),
                });
            }
            out.push(cfg);
        }
        Ok((f, out))
    }

    /// The text of this configuration.
    pub fn to_toml(&self) -> Result<String, Error> {
        let body = toml::to_string(self).map_err(Error::Encode)?;
        Ok(format!(
            "# vhost-user-scsi configuration (docs/operation.md, \"The configuration file\").\n\
             # Written by save-config; a restart with --config reproduces what ran.\n\n{body}"
        ))
    }
}

/// Write `text` to `path` so that a crash leaves the old file or the new
/// one, never a mix: a temporary file beside it (mode 0600), fsync,
/// rename, fsync of the directory.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.into(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::EISDIR)))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests;
