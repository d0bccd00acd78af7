// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control methods: one table (names, parameters, help) that the
//! server dispatches on, `methods` lists and the `ctl` client reads to type
//! its arguments. Parameters are named as the configuration file's fields
//! and the command line's options.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::rpc::{self, Dispatch, RpcError};
use crate::config_file::{ControllerSpec, FileConfig, LunSpec, Size};
use crate::registry::{Error as RegError, Registry};

/// How a parameter's value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Boolean,
    /// Bytes, or a string with a K/M/G/T suffix.
    Size,
    /// Seconds, or "infinite".
    Timeout,
    /// A list of strings (repeat the parameter).
    StringList,
    /// A list of LUN objects (as `lun_add` takes them, without controller).
    LunList,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Boolean => "boolean",
            Kind::Size => "size",
            Kind::Timeout => "seconds|\"infinite\"",
            Kind::StringList => "list of strings",
            Kind::LunList => "list of LUN objects",
        }
    }
}

#[derive(Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub help: &'static str,
}

pub struct Method {
    pub name: &'static str,
    pub help: &'static str,
    pub params: &'static [Param],
}

const fn p(name: &'static str, kind: Kind, required: bool, help: &'static str) -> Param {
    Param {
        name,
        kind,
        required,
        help,
    }
}

const CONTROLLER: Param = p(
    "controller",
    Kind::String,
    true,
    "the controller's socket path",
);
const LUN: Param = p("lun", Kind::Integer, true, "the LUN number (0-16383)");

/// A LUN's fields (`--lun`'s options).
const LUN_FIELDS: [Param; 18] = [
    p(
        "lun",
        Kind::Integer,
        false,
        "LUN number (default: the lowest free one)",
    ),
    p(
        "file",
        Kind::String,
        false,
        "a regular file or block device",
    ),
    p(
        "null",
        Kind::Size,
        false,
        "a null backstore of this size (reads zeros, drops writes)",
    ),
    p(
        "iscsi",
        Kind::String,
        false,
        "iscsi://[user@]host[:port]/target-iqn/lun",
    ),
    p("ro", Kind::Boolean, false, "read-only"),
    p("block-size", Kind::Integer, false, "512 (default) or 4096"),
    p("direct", Kind::Boolean, false, "O_DIRECT"),
    p("serial", Kind::String, false, "unit serial number"),
    p("pr-file", Kind::String, false, "APTPL state file"),
    p(
        "share-rw",
        Kind::Boolean,
        false,
        "let other processes write it too (no reservations)",
    ),
    p(
        "credentials",
        Kind::String,
        false,
        "iSCSI: CHAP credentials file",
    ),
    p(
        "chap-algorithms",
        Kind::String,
        false,
        "iSCSI: e.g. sha256:sha1",
    ),
    p(
        "header-digest",
        Kind::Boolean,
        false,
        "iSCSI: CRC32C header digests",
    ),
    p(
        "data-digest",
        Kind::Boolean,
        false,
        "iSCSI: CRC32C data digests",
    ),
    p(
        "portal",
        Kind::StringList,
        false,
        "iSCSI: more portals HOST:PORT",
    ),
    p(
        "recovery-timeout",
        Kind::Timeout,
        false,
        "iSCSI: seconds, or infinite",
    ),
    p(
        "discover-portals",
        Kind::Boolean,
        false,
        "iSCSI: learn portals by SendTargets",
    ),
    p(
        "coalesce-us",
        Kind::Integer,
        false,
        "iSCSI: answer coalescing, microseconds",
    ),
];

const LUN_ADD: [Param; 19] = {
    let mut a = [CONTROLLER; 19];
    let mut i = 0;
    while i < LUN_FIELDS.len() {
        a[i + 1] = LUN_FIELDS[i];
        i += 1;
    }
    a
};

pub const METHODS: &[Method] = &[
    Method {
        name: "methods",
        help: "List the methods and their parameters",
        params: &[],
    },
    Method {
        name: "controller_list",
        help: "List the controllers, their connection state and LUNs",
        params: &[],
    },
    Method {
        name: "controller_add",
        help: "Start serving a controller (a vhost-user socket)",
        params: &[
            p(
                "socket",
                Kind::String,
                true,
                "absolute path of the vhost-user socket",
            ),
            p(
                "queues",
                Kind::Integer,
                false,
                "request queues offered (1-62, default 16)",
            ),
            p(
                "initiator",
                Kind::String,
                false,
                "initiator port name of its I_T nexus",
            ),
            p(
                "port",
                Kind::Integer,
                false,
                "relative target port (1-65535)",
            ),
            p(
                "coalesce-us",
                Kind::Integer,
                false,
                "notification coalescing delay",
            ),
            p(
                "coalesce-depth",
                Kind::Integer,
                false,
                "notification coalescing depth",
            ),
            p(
                "lun",
                Kind::LunList,
                false,
                "its LUNs (objects as lun_add takes)",
            ),
        ],
    },
    Method {
        name: "controller_remove",
        help: "Stop serving a controller (refused while QEMU is connected, unless forced)",
        params: &[
            CONTROLLER,
            p("force", Kind::Boolean, false, "end the connection first"),
        ],
    },
    Method {
        name: "lun_add",
        help: "Add a LUN to a controller; the guest is told to scan it",
        params: &LUN_ADD,
    },
    Method {
        name: "lun_remove",
        help: "Remove a LUN once its commands completed; the guest is told",
        params: &[CONTROLLER, LUN],
    },
    Method {
        name: "lun_resize",
        help: "Take a LUN's new size (or set a file's); the guest is told",
        params: &[
            CONTROLLER,
            LUN,
            p(
                "size",
                Kind::Size,
                false,
                "new size of a file or null LUN (default: re-read it)",
            ),
        ],
    },
    Method {
        name: "lun_set_read_only",
        help: "Make a LUN read-only (or writable again)",
        params: &[
            CONTROLLER,
            LUN,
            p("ro", Kind::Boolean, false, "true (default) or false"),
        ],
    },
    Method {
        name: "stats",
        help: "I/O statistics per controller and LUN",
        params: &[
            p("controller", Kind::String, false, "only this controller"),
            p("lun", Kind::Integer, false, "only this LUN"),
        ],
    },
    Method {
        name: "save_config",
        help: "Write the running configuration to the daemon's --config file",
        params: &[p(
            "secrets",
            Kind::Boolean,
            false,
            "also write CHAP passwords given in iSCSI URLs",
        )],
    },
    Method {
        name: "get_config",
        help: "The running configuration as a configuration file (no secrets)",
        params: &[],
    },
];

pub fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// The methods, bound to a registry.
pub struct Methods<'a> {
    registry: &'a Registry,
}

impl<'a> Methods<'a> {
    pub fn new(registry: &'a Registry) -> Methods<'a> {
        Methods { registry }
    }
}

impl Dispatch for Methods<'_> {
    fn call(&self, method: &str, params: Map<String, Value>) -> Result<Value, RpcError> {
        let m = find(method).ok_or_else(|| {
            RpcError::new(
                rpc::METHOD_NOT_FOUND,
                format!("No method \"{method}\" (the method \"methods\" lists them)"),
            )
        })?;
        check_params(m, &params)?;
        let secret = secret_in(&params);
        let r = self.dispatch(m.name, params);
        // A password given in a URL is never echoed back.
        r.map_err(|mut e| {
            if let Some(s) = secret {
                e.message = e.message.replace(&s, "***");
            }
            e
        })
    }
}

impl Methods<'_> {
    fn dispatch(&self, method: &str, params: Map<String, Value>) -> Result<Value, RpcError> {
        let reg = self.registry;
        match method {
            "methods" => Ok(list_methods()),
            "controller_list" => Ok(json!(reg.list())),
            "controller_add" => {
                let spec: ControllerSpec = from_params(params)?;
                let c = spec
                    .to_config("controller")
                    .map_err(|e| RpcError::invalid_params(e.to_string()))?;
                let socket = c.socket.display().to_string();
                reg.add_controller(c).map_err(app_error)?;
                Ok(json!({ "socket": socket }))
            }
            "controller_remove" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    controller: PathBuf,
                    #[serde(default)]
                    force: bool,
                }
                let p: P = from_params(params)?;
                reg.remove_controller(&p.controller, p.force)
                    .map_err(app_error)?;
                Ok(json!(true))
            }
            "lun_add" => {
                let mut params = params;
                let controller = take_controller(&mut params)?;
                let spec: LunSpec = from_params(params)?;
                let (n, lc) = spec.to_config().map_err(RpcError::invalid_params)?;
                let n = reg.add_lun(&controller, n, lc).map_err(app_error)?;
                Ok(json!({ "lun": n }))
            }
            "lun_remove" => {
                let p: LunRef = from_params(params)?;
                reg.remove_lun(&p.controller, p.lun).map_err(app_error)?;
                Ok(json!(true))
            }
            "lun_resize" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    controller: PathBuf,
                    lun: u16,
                    size: Option<Size>,
                }
                let p: P = from_params(params)?;
                let size = match p.size {
                    None => None,
                    Some(Size::Bytes(b)) => Some(b),
                    Some(Size::Text(t)) => {
                        Some(crate::config::parse_size(&t).ok_or_else(|| {
                            RpcError::invalid_params(format!(
                                "size '{t}' is not a size (bytes, or with K/M/G/T)"
                            ))
                        })?)
                    }
                };
                let bytes = reg
                    .resize_lun(&p.controller, p.lun, size)
                    .map_err(app_error)?;
                Ok(json!({ "size": bytes }))
            }
            "lun_set_read_only" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    controller: PathBuf,
                    lun: u16,
                    ro: Option<bool>,
                }
                let p: P = from_params(params)?;
                let ro = p.ro.unwrap_or(true);
                reg.set_read_only(&p.controller, p.lun, ro)
                    .map_err(app_error)?;
                Ok(json!({ "ro": ro }))
            }
            "stats" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    controller: Option<PathBuf>,
                    lun: Option<u16>,
                }
                let p: P = from_params(params)?;
                reg.stats(p.controller.as_deref(), p.lun).map_err(app_error)
            }
            "save_config" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct P {
                    #[serde(default)]
                    secrets: bool,
                }
                let p: P = from_params(params)?;
                let path = reg.config_file().ok_or_else(|| {
                    RpcError::new(
                        rpc::UNAVAILABLE,
                        "The daemon was started without --config: get_config returns the \
                         configuration for a file of your choice (ctl save-config FILE)",
                    )
                })?;
                let (text, dropped) = config_text(reg, p.secrets)?;
                crate::config_file::write_atomically(path, &text)
                    .map_err(|e| RpcError::new(rpc::FAILED, crate::error_chain(&e)))?;
                log::info!("Configuration saved to {}", path.display());
                Ok(json!({ "path": path.display().to_string(), "warnings": dropped }))
            }
            "get_config" => {
                let (text, dropped) = config_text(reg, false)?;
                Ok(json!({ "config": text, "warnings": dropped }))
            }
            _ => Err(RpcError::new(rpc::METHOD_NOT_FOUND, "No such method")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LunRef {
    controller: PathBuf,
    lun: u16,
}

/// The running configuration as a file's text, and warnings for the
/// passwords left out.
fn config_text(reg: &Registry, secrets: bool) -> Result<(String, Vec<String>), RpcError> {
    let mut file = reg.settings();
    let mut warnings = Vec::new();
    for c in reg.controllers() {
        let (spec, dropped) = ControllerSpec::from_config(&c, secrets);
        for l in dropped {
            warnings.push(format!(
                "LUN {l} of {}: the CHAP password given in its URL is not saved (give it \
                 credentials=FILE, or save with secrets=true)",
                c.socket.display()
            ));
        }
        file.controllers.push(spec);
    }
    let text = FileConfig::to_toml(&file).map_err(|e| RpcError::new(rpc::FAILED, e.to_string()))?;
    Ok((text, warnings))
}

fn list_methods() -> Value {
    let v: Vec<Value> = METHODS
        .iter()
        .map(|m| {
            let params: Vec<Value> = m
                .params
                .iter()
                .map(|p| {
                    json!({"name": p.name, "type": p.kind.name(), "required": p.required,
                           "help": p.help})
                })
                .collect();
            json!({"name": m.name, "help": m.help, "params": params})
        })
        .collect();
    Value::Array(v)
}

/// Unknown parameters are refused by name (with the ones there are).
fn check_params(m: &Method, params: &Map<String, Value>) -> Result<(), RpcError> {
    for k in params.keys() {
        if !m.params.iter().any(|p| p.name == k) {
            let known: Vec<&str> = m.params.iter().map(|p| p.name).collect();
            return Err(RpcError::invalid_params(if known.is_empty() {
                format!("{} takes no parameters (got \"{k}\")", m.name)
            } else {
                format!(
                    "Unknown parameter \"{k}\" for {} (it takes {})",
                    m.name,
                    known.join(", ")
                )
            }));
        }
    }
    for p in m.params.iter().filter(|p| p.required) {
        if !params.contains_key(p.name) {
            return Err(RpcError::invalid_params(format!(
                "{} needs the parameter \"{}\" ({})",
                m.name, p.name, p.help
            )));
        }
    }
    Ok(())
}

fn from_params<T: serde::de::DeserializeOwned>(params: Map<String, Value>) -> Result<T, RpcError> {
    serde_json::from_value(Value::Object(params))
        .map_err(|e| RpcError::invalid_params(format!("Invalid parameters: {e}")))
}

fn take_controller(params: &mut Map<String, Value>) -> Result<PathBuf, RpcError> {
    match params.remove("controller") {
        Some(Value::String(s)) => Ok(PathBuf::from(s)),
        _ => Err(RpcError::invalid_params(
            "\"controller\" must be the controller's socket path (a string)",
        )),
    }
}

/// The password of an iSCSI URL among the parameters, to keep it out of
/// error messages.
fn secret_in(params: &Map<String, Value>) -> Option<String> {
    let url = params.get("iscsi")?.as_str()?;
    let auth = url.strip_prefix("iscsi://")?.split('/').next()?;
    let user_info = auth.rsplit_once('@')?.0;
    let pw = user_info.split_once('%')?.1;
    (!pw.is_empty()).then(|| pw.to_string())
}

/// A registry error as a JSON-RPC error.
fn app_error(e: RegError) -> RpcError {
    let code = match &e {
        RegError::NoController(_) | RegError::NoLun { .. } => rpc::NOT_FOUND,
        RegError::ControllerExists(_) | RegError::LunExists { .. } => rpc::EXISTS,
        RegError::Connected(_) => rpc::BUSY,
        RegError::Unsupported { .. } | RegError::NoFreeLun(_) => rpc::UNSUPPORTED,
        RegError::Stopping => rpc::UNAVAILABLE,
        RegError::Resize { .. } | RegError::Server(_) => rpc::FAILED,
    };
    RpcError::new(code, crate::error_chain(&e))
}

#[cfg(test)]
mod tests;
