// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket's JSON-RPC lines and the configuration file.

use std::path::Path;

use serde_json::{Map, Value};

use super::text;
use crate::config_file::{ControllerSpec, FileConfig};
use crate::control::methods::Methods;
use crate::control::rpc::{self, Dispatch, RpcError};
use crate::registry::Registry;

/// The methods of a daemon with no controller, except that
/// `controller_add` is only validated: the fuzzer must not bind sockets or
/// open files at the paths it makes up.
struct Harmless<'a>(Methods<'a>);

impl Dispatch for Harmless<'_> {
    fn call(&self, method: &str, params: Map<String, Value>) -> Result<Value, RpcError> {
        if method != "controller_add" {
            return self.0.call(method, params);
        }
        let spec: ControllerSpec = serde_json::from_value(Value::Object(params))
            .map_err(|e| RpcError::invalid_params(e.to_string()))?;
        spec.to_config("controller")
            .map_err(|e| RpcError::invalid_params(e.to_string()))?;
        Err(RpcError::new(rpc::UNAVAILABLE, "not in the fuzzer"))
    }
}

/// Lines sent to the control socket: every request with an id is answered
/// with a well-formed JSON-RPC 2.0 response carrying that id exactly (or
/// refused, if it is a number that could not come back so), and no answer
/// shows the password of an iscsi:// URL given as a parameter.
pub fn control_rpc(data: &[u8]) {
    let registry = Registry::new(None, FileConfig::default(), Default::default());
    let methods = Harmless(Methods::new(&registry));
    for line in data.split(|&b| b == b'\n') {
        let mut errors = Vec::new();
        let Some(out) = rpc::handle_line(line, &methods, &mut errors) else {
            continue;
        };
        let v: Value = serde_json::from_str(&out).expect("a response is JSON");
        let responses = match &v {
            Value::Array(a) => a.clone(),
            one => vec![one.clone()],
        };
        for r in &responses {
            assert_eq!(r["jsonrpc"], "2.0", "{out}");
            assert!(
                r.get("result").is_some() != r.get("error").is_some(),
                "{out}"
            );
            if let Some(e) = r.get("error") {
                assert!(e["code"].is_i64() && e["message"].is_string(), "{out}");
            }
        }
        if let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(line) {
            // A string or 64-bit integer id comes back as sent; another
            // number (read into a float) is refused, with a null id.
            match req.get("id") {
                Some(id @ Value::String(_)) => assert_eq!(&v["id"], id, "{out}"),
                Some(Value::Number(n)) if !n.is_i64() && !n.is_u64() => {
                    assert_eq!(v["id"], Value::Null, "{out}");
                    assert_eq!(v["error"]["code"], rpc::INVALID_REQUEST, "{out}");
                }
                Some(id @ Value::Number(_)) => assert_eq!(&v["id"], id, "{out}"),
                _ => {}
            }
            let password = req
                .get("params")
                .and_then(|p| p.get("iscsi"))
                .and_then(Value::as_str)
                .and_then(|u| crate::iscsi::url::parse(u).ok())
                .and_then(|u| u.password)
                .map(|p| p.expose().to_string())
                .filter(|p| p.len() >= 4);
            if let Some(p) = password {
                let mentions = |s: &str| s.matches(p.as_str()).count();
                // Unless the secret also appears elsewhere in the request.
                if mentions(&String::from_utf8_lossy(line)) == 1 {
                    assert_eq!(mentions(&out), 0, "{out}");
                }
            }
        }
    }
}

/// A configuration file: parsed, or refused with an error; one that parses
/// is written back (as `save-config` does) and reads back the same.
pub fn config_file(data: &[u8]) {
    let input = text(data);
    let Ok((settings, controllers)) = FileConfig::parse(Path::new("/fuzz.toml"), &input) else {
        return;
    };
    let mut out = FileConfig {
        controllers: Vec::new(),
        ..settings
    };
    for c in &controllers {
        out.controllers.push(ControllerSpec::from_config(c, true).0);
    }
    let written = out.to_toml().expect("a parsed configuration is written");
    let (again_settings, again) =
        FileConfig::parse(Path::new("/fuzz.toml"), &written).expect("what was written reads back");
    assert_eq!(again.len(), controllers.len(), "{written}");
    for (a, b) in again.iter().zip(&controllers) {
        assert_eq!(a.socket, b.socket, "{written}");
        assert_eq!(
            a.luns.keys().collect::<Vec<_>>(),
            b.luns.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(again_settings.control, out.control);
    assert_eq!(again_settings.user, out.user);
    assert_eq!(again_settings.keep_caps, out.keep_caps);
}
