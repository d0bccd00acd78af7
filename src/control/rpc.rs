// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! JSON-RPC 2.0 (<https://www.jsonrpc.org/specification>) over lines: each
//! request (or batch) is one line of JSON, each response one line. Sans-IO:
//! a line in, a line (or nothing, for notifications) out.

use serde_json::{json, Map, Value};

/// The specification's error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Ours (the range the specification leaves to servers): the controller
/// or LUN named does not exist.
pub const NOT_FOUND: i64 = -32001;
/// It exists already.
pub const EXISTS: i64 = -32002;
/// A front-end is connected (force to go ahead).
pub const BUSY: i64 = -32003;
/// The operation failed (a backstore, socket or iSCSI target refused).
pub const FAILED: i64 = -32004;
/// Not possible on this object.
pub const UNSUPPORTED: i64 = -32005;
/// The daemon is stopping, or has no configuration file to save to.
pub const UNAVAILABLE: i64 = -32006;

/// Most requests one batch may hold.
pub const MAX_BATCH: usize = 64;

/// A JSON-RPC error: code and a message saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }
}

/// A method: takes its params object, returns its result.
pub trait Dispatch {
    fn call(&self, method: &str, params: Map<String, Value>) -> Result<Value, RpcError>;
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": e.code, "message": e.message}, "id": id})
}

/// Handle one line; returns the response line (without its newline), if
/// any, and the errors to log.
pub fn handle_line(line: &[u8], d: &dyn Dispatch, errors: &mut Vec<RpcError>) -> Option<String> {
    let parsed: Result<Value, _> = serde_json::from_slice(line);
    let response = match parsed {
        Err(e) => {
            let err = RpcError::new(PARSE_ERROR, format!("Not JSON: {e}"));
            errors.push(err.clone());
            Some(error_response(Value::Null, &err))
        }
        Ok(Value::Array(batch)) if batch.is_empty() => {
            let err = RpcError::new(INVALID_REQUEST, "An empty batch");
            errors.push(err.clone());
            Some(error_response(Value::Null, &err))
        }
        Ok(Value::Array(batch)) if batch.len() > MAX_BATCH => {
            let err = RpcError::new(
                INVALID_REQUEST,
                format!("A batch of {} requests (at most {MAX_BATCH})", batch.len()),
            );
            errors.push(err.clone());
            Some(error_response(Value::Null, &err))
        }
        Ok(Value::Array(batch)) => {
            let out: Vec<Value> = batch
                .into_iter()
                .filter_map(|r| handle_request(r, d, errors))
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        Ok(v) => handle_request(v, d, errors),
    };
    response.map(|v| v.to_string())
}

/// One request object; None for a notification.
fn handle_request(v: Value, d: &dyn Dispatch, errors: &mut Vec<RpcError>) -> Option<Value> {
    let mut fail = |id: Value, e: RpcError| {
        errors.push(e.clone());
        Some(error_response(id, &e))
    };
    let Value::Object(mut obj) = v else {
        return fail(
            Value::Null,
            RpcError::new(INVALID_REQUEST, "A request must be a JSON object"),
        );
    };
    let id = obj.remove("id");
    // A number is taken only as an integer of 64 bits at most: others
    // (fractions, huge integers) are read into a float, and would come back
    // as another number than the client sent (JSON-RPC 2.0 section 5: the
    // same value). Section 4 says ids SHOULD NOT have fractional parts.
    let id_ok = match &id {
        None | Some(Value::Null | Value::String(_)) => true,
        Some(Value::Number(n)) => n.is_i64() || n.is_u64(),
        Some(_) => false,
    };
    let reply_id = if id_ok {
        id.clone().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if !id_ok {
        return fail(
            reply_id,
            RpcError::new(
                INVALID_REQUEST,
                "\"id\" must be a string, an integer of at most 64 bits or null",
            ),
        );
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return fail(
            reply_id,
            RpcError::new(INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\""),
        );
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return fail(
            reply_id,
            RpcError::new(INVALID_REQUEST, "\"method\" must be a string"),
        );
    };
    let params = match obj.remove("params") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) if a.is_empty() => Map::new(),
        Some(_) => {
            return fail(
                reply_id,
                RpcError::invalid_params("\"params\" must be an object (parameters by name)"),
            )
        }
    };
    if let Some(extra) = obj.keys().find(|k| *k != "jsonrpc") {
        return fail(
            reply_id,
            RpcError::new(INVALID_REQUEST, format!("Unknown member \"{extra}\"")),
        );
    }
    let result = d.call(&method, params);
    let id = id?;
    Some(match result {
        Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
        Err(e) => {
            errors.push(e.clone());
            error_response(id, &e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Dispatch for Echo {
        fn call(&self, method: &str, params: Map<String, Value>) -> Result<Value, RpcError> {
            match method {
                "echo" => Ok(Value::Object(params)),
                _ => Err(RpcError::new(METHOD_NOT_FOUND, "no")),
            }
        }
    }

    fn run(line: &str) -> Option<Value> {
        let mut errors = Vec::new();
        handle_line(line.as_bytes(), &Echo, &mut errors).map(|s| serde_json::from_str(&s).unwrap())
    }

    fn code(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap()
    }

    #[test]
    fn a_request_gets_its_result_with_its_id() {
        let r = run(r#"{"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":7}"#).unwrap();
        assert_eq!(r, json!({"jsonrpc":"2.0","result":{"a":1},"id":7}));
    }

    #[test]
    fn garbage_is_a_parse_error_with_a_null_id() {
        for bad in ["{", "nonsense", "\u{0}\u{1}", "{\"jsonrpc\":\"2.0\",}"] {
            let r = run(bad).unwrap();
            assert_eq!(code(&r), PARSE_ERROR, "{bad}");
            assert_eq!(r["id"], Value::Null);
        }
        let mut errors = Vec::new();
        let r = handle_line(&[0xff, 0xfe, b'{'], &Echo, &mut errors).unwrap();
        assert!(r.contains("-32700"), "{r}");
    }

    #[test]
    fn malformed_requests_are_invalid_requests() {
        for bad in [
            r#"42"#,
            r#"{"method":"echo","id":1}"#,
            r#"{"jsonrpc":"1.0","method":"echo","id":1}"#,
            r#"{"jsonrpc":"2.0","method":5,"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"echo","id":{"x":1}}"#,
            r#"{"jsonrpc":"2.0","method":"echo","id":1,"extra":true}"#,
            r#"[]"#,
        ] {
            assert_eq!(code(&run(bad).unwrap()), INVALID_REQUEST, "{bad}");
        }
    }

    /// Found by the `control_rpc` fuzz target: an id of
    /// 555555555555555555555555555555555555556 came back as
    /// 5.555555555555555e+38.
    #[test]
    fn an_id_that_cannot_come_back_exactly_is_refused_and_the_others_do() {
        for bad in [
            "555555555555555555555555555555555555556",
            "1.5",
            "1e3",
            "-0.0",
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","method":"echo","id":{bad}}}"#);
            let r = run(&line).unwrap();
            assert_eq!(code(&r), INVALID_REQUEST, "{bad}");
            assert_eq!(r["id"], Value::Null, "{bad}");
        }
        for good in ["0", "-9223372036854775808", "18446744073709551615", "\"x\""] {
            let line = format!(r#"{{"jsonrpc":"2.0","method":"echo","id":{good}}}"#);
            let mut errors = Vec::new();
            let out = handle_line(line.as_bytes(), &Echo, &mut errors).unwrap();
            assert!(out.contains(&format!(r#""id":{good},"#)), "{out}");
        }
    }

    #[test]
    fn positional_params_are_invalid_params() {
        let r = run(r#"{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}"#).unwrap();
        assert_eq!(code(&r), INVALID_PARAMS);
    }

    #[test]
    fn notifications_get_no_answer_and_batches_one_array() {
        assert_eq!(run(r#"{"jsonrpc":"2.0","method":"echo"}"#), None);
        let r = run(
            r#"[{"jsonrpc":"2.0","method":"echo","id":1},{"jsonrpc":"2.0","method":"echo"},
                {"jsonrpc":"2.0","method":"nope","id":2}, 3]"#,
        )
        .unwrap();
        let a = r.as_array().unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0]["id"], 1);
        assert_eq!(code(&a[1]), METHOD_NOT_FOUND);
        assert_eq!(code(&a[2]), INVALID_REQUEST);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(&run(&deep).unwrap()), PARSE_ERROR);
    }

    #[test]
    fn a_batch_over_the_limit_is_refused() {
        let one = r#"{"jsonrpc":"2.0","method":"echo","id":1}"#;
        let batch = format!("[{}]", vec![one; MAX_BATCH + 1].join(","));
        assert_eq!(code(&run(&batch).unwrap()), INVALID_REQUEST);
        let batch = format!("[{}]", vec![one; MAX_BATCH].join(","));
        assert_eq!(run(&batch).unwrap().as_array().unwrap().len(), MAX_BATCH);
    }
}
