// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vhost-user-scsi ctl`: one JSON-RPC call on the control socket, its
//! parameters typed from `key=value` arguments by the method table, its
//! result printed for people (or as JSON).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::methods::{self, Kind};

/// The control socket when none is given (the daemon's default with a
/// configuration file, and the packaged unit's).
pub const DEFAULT_SOCKET: &str = "/run/vhost-user-scsi/control.sock";

/// Longest wait for an answer (a LUN removal waits for the LUN's commands,
/// at most 30 s; a login to an iSCSI target can take as long).
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot reach the daemon at {path} (is it running with --control?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Lost the daemon's answer")]
    Io(#[source] std::io::Error),
    #[error("The daemon's answer is not JSON-RPC: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{message} (error {code})")]
    Rpc { code: i64, message: String },
    #[error("{0}")]
    Usage(String),
}

/// Call `method` with `params` on the daemon at `path`.
pub fn call(path: &Path, method: &str, params: Map<String, Value>) -> Result<Value, Error> {
    let mut s = UnixStream::connect(path).map_err(|source| Error::Connect {
        path: path.display().to_string(),
        source,
    })?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(Error::Io)?;
    let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
    writeln!(s, "{req}").map_err(Error::Io)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(Error::Io)?;
    let v: Value = serde_json::from_str(&line).map_err(|e| Error::Protocol(e.to_string()))?;
    if let Some(e) = v.get("error") {
        return Err(Error::Rpc {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
        });
    }
    v.get("result")
        .cloned()
        .ok_or_else(|| Error::Protocol("no result".into()))
}

/// The method named on the command line (`lun-add` or `lun_add`).
pub fn method_name(arg: &str) -> Result<&'static methods::Method, Error> {
    let name = arg.replace('-', "_");
    methods::find(&name).ok_or_else(|| {
        let all: Vec<String> = methods::METHODS
            .iter()
            .map(|m| m.name.replace('_', "-"))
            .collect();
        Error::Usage(format!("no method '{arg}' (methods: {})", all.join(", ")))
    })
}

/// Parameters from `key=value` arguments (`key` alone for a true
/// boolean), typed by the method's table; `--params JSON` may give the
/// rest as an object.
pub fn params(m: &methods::Method, args: &[String]) -> Result<Map<String, Value>, Error> {
    let mut out = Map::new();
    for a in args {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (a.as_str(), None),
        };
        let p = m.params.iter().find(|p| p.name == k).ok_or_else(|| {
            let names: Vec<&str> = m.params.iter().map(|p| p.name).collect();
            Error::Usage(format!(
                "{} has no parameter '{k}' (it takes: {})",
                m.name.replace('_', "-"),
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ))
        })?;
        let bad = |what: &str| Error::Usage(format!("{k}: {what}"));
        let value = match (p.kind, v) {
            (Kind::Boolean, None) => Value::Bool(true),
            (Kind::Boolean, Some("true" | "yes" | "on" | "1")) => Value::Bool(true),
            (Kind::Boolean, Some("false" | "no" | "off" | "0")) => Value::Bool(false),
            (Kind::Boolean, Some(_)) => return Err(bad("true or false")),
            (_, None) => return Err(bad("needs a value (key=value)")),
            (Kind::Integer, Some(v)) => json!(v.parse::<u64>().map_err(|_| bad("a number"))?),
            (Kind::Size | Kind::Timeout, Some(v)) => match v.parse::<u64>() {
                Ok(n) => json!(n),
                Err(_) => json!(v),
            },
            (Kind::String, Some(v)) => json!(v),
            (Kind::StringList, Some(v)) => {
                let list = out.entry(k).or_insert_with(|| json!([]));
                if let Value::Array(a) = list {
                    a.push(json!(v));
                }
                continue;
            }
            (Kind::LunList, Some(v)) => {
                serde_json::from_str(v).map_err(|e| bad(&format!("a JSON list of LUNs: {e}")))?
            }
        };
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A result as people read it.
pub fn render(method: &str, result: &Value) -> String {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out = String::new();
    match method {
        "methods" => {
            for m in result.as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{}: {}\n",
                    s(m, "name").replace('_', "-"),
                    s(m, "help")
                ));
                for p in m
                    .get("params")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let req = if p.get("required") == Some(&Value::Bool(true)) {
                        " (required)"
                    } else {
                        ""
                    };
                    out.push_str(&format!(
                        "    {}={}{req}: {}\n",
                        s(p, "name"),
                        s(p, "type"),
                        s(p, "help")
                    ));
                }
            }
        }
        "controller_list" => {
            for c in result.as_array().into_iter().flatten() {
                let state = if c.get("connected") == Some(&Value::Bool(true)) {
                    "connected"
                } else {
                    "waiting for QEMU"
                };
                out.push_str(&format!(
                    "{}  {state}, {} queue(s), port {}, {}\n",
                    s(c, "socket"),
                    n(c, "queues"),
                    n(c, "port"),
                    s(c, "initiator")
                ));
                for l in c
                    .get("luns")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ro = if l.get("read_only") == Some(&Value::Bool(true)) {
                        ", read-only"
                    } else {
                        ""
                    };
                    let sz = match n(l, "size") {
                        0 => String::new(),
                        b => format!(", {}", size(b)),
                    };
                    out.push_str(&format!(
                        "  LUN {:<5} {:<6} {}{sz}{ro}\n",
                        n(l, "lun"),
                        s(l, "kind"),
                        s(l, "backstore")
                    ));
                }
            }
        }
        "stats" => {
            for l in result
                .get("luns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push_str(&format!(
                    "{} LUN {}: {} reads ({}), {} writes ({}), {} other, {} in flight",
                    s(l, "controller"),
                    n(l, "lun"),
                    n(l, "reads"),
                    size(n(l, "read_bytes")),
                    n(l, "writes"),
                    size(n(l, "written_bytes")),
                    n(l, "others"),
                    n(l, "in_flight"),
                ));
                if let (Some(p50), Some(p99)) = (
                    l.get("latency_p50_us").and_then(Value::as_u64),
                    l.get("latency_p99_us").and_then(Value::as_u64),
                ) {
                    out.push_str(&format!(", latency p50 < {p50} us, p99 < {p99} us"));
                }
                out.push('\n');
                let mut errors = Vec::new();
                for kv in l
                    .get("check_conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let (Some(k), Some(c)) = (kv.get(0).and_then(Value::as_str), kv.get(1)) {
                        errors.push(format!("{k} {c}"));
                    }
                }
                for (k, label) in [
                    ("reservation_conflicts", "reservation conflict"),
                    ("busy", "busy"),
                    ("transport_failures", "transport failure"),
                ] {
                    if n(l, k) > 0 {
                        errors.push(format!("{label} {}", n(l, k)));
                    }
                }
                if !errors.is_empty() {
                    out.push_str(&format!("    errors: {}\n", errors.join(", ")));
                }
                if let Some(i) = l.get("iscsi") {
                    out.push_str(&format!(
                        "    iSCSI session {} via {}, {} reconnect(s)\n",
                        s(i, "state"),
                        s(i, "portal"),
                        n(i, "reconnects")
                    ));
                }
                if let Some(r) = l.get("reservations") {
                    out.push_str(&format!(
                        "    reservations: {} registration(s), {}{}\n",
                        n(r, "registrations"),
                        s(r, "type"),
                        match r.get("holder").and_then(Value::as_str) {
                            Some(h) => format!(" held by {h}"),
                            None => String::new(),
                        }
                    ));
                }
            }
        }
        "get_config" => out.push_str(&s(result, "config")),
        _ => {
            if let Value::Object(m) = result {
                for (k, v) in m {
                    match v {
                        Value::String(t) => out.push_str(&format!("{k}: {t}\n")),
                        Value::Array(a) if k == "warnings" => {
                            for w in a {
                                out.push_str(&format!("warning: {}\n", w.as_str().unwrap_or("")));
                            }
                        }
                        v => out.push_str(&format!("{k}: {v}\n")),
                    }
                }
            } else {
                out.push_str("ok\n");
            }
        }
    }
    out
}
