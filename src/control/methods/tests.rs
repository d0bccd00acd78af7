// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every method's validation: what a client sends wrong gets the error
//! that says what to fix, and nothing changes.

use serde_json::{json, Value};

use super::*;
use crate::config_file::FileConfig;

struct Fixture {
    dir: tempfile::TempDir,
    reg: Registry,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.reg.shutdown();
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("d.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    Fixture {
        dir,
        reg: Registry::new(None, FileConfig::default(), Default::default()),
    }
}

impl Fixture {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let Value::Object(m) = params else {
            panic!("params must be an object")
        };
        Methods::new(&self.reg).call(method, m)
    }

    fn code(&self, method: &str, params: Value) -> (i64, String) {
        let e = self.call(method, params).unwrap_err();
        (e.code, e.message)
    }

    fn with_controller(&self) -> String {
        let s = self.path("c.sock");
        self.call("controller_add", json!({"socket": s})).unwrap();
        s
    }
}

#[test]
fn unknown_methods_and_parameters_are_named() {
    let f = fixture();
    let (c, m) = f.code("format_disk", json!({}));
    assert_eq!(c, rpc::METHOD_NOT_FOUND);
    assert!(m.contains("format_disk"), "{m}");
    let (c, m) = f.code("controller_list", json!({"verbose": true}));
    assert_eq!(c, rpc::INVALID_PARAMS);
    assert!(m.contains("verbose"), "{m}");
    let (c, m) = f.code(
        "lun_remove",
        json!({"controller": "/x", "lun": 0, "force": true}),
    );
    assert_eq!(c, rpc::INVALID_PARAMS);
    assert!(m.contains("force") && m.contains("controller, lun"), "{m}");
}

#[test]
fn missing_and_mistyped_parameters_are_invalid_params() {
    let f = fixture();
    let (c, m) = f.code("lun_remove", json!({"controller": "/x"}));
    assert_eq!(c, rpc::INVALID_PARAMS);
    assert!(m.contains("\"lun\""), "{m}");
    for (method, p) in [
        ("lun_remove", json!({"controller": "/x", "lun": "zero"})),
        ("lun_remove", json!({"controller": "/x", "lun": 70000})),
        ("lun_remove", json!({"controller": 5, "lun": 0})),
        (
            "controller_remove",
            json!({"controller": "/x", "force": "yes"}),
        ),
        (
            "lun_resize",
            json!({"controller": "/x", "lun": 0, "size": "ten"}),
        ),
        (
            "lun_set_read_only",
            json!({"controller": "/x", "lun": 0, "ro": 1}),
        ),
        ("stats", json!({"lun": -1})),
        ("save_config", json!({"secrets": "please"})),
        ("controller_add", json!({"socket": "relative.sock"})),
        ("controller_add", json!({"socket": "/a", "queues": 0})),
        (
            "controller_add",
            json!({"socket": "/a", "queues": 1, "lun": [{"file": "/x", "null": 4096}]}),
        ),
        ("lun_add", json!({"controller": 3, "file": "/x"})),
    ] {
        let (c, m) = f.code(method, p.clone());
        assert_eq!(c, rpc::INVALID_PARAMS, "{method} {p}: {m}");
    }
}

#[test]
fn lun_fields_are_validated_as_the_command_line_validates_them() {
    let f = fixture();
    let s = f.with_controller();
    let d = f.path("d.img");
    for (p, says) in [
        (
            json!({"controller": s, "file": d, "block-size": 1024}),
            "block-size",
        ),
        (
            json!({"controller": s, "file": d, "null": 4096}),
            "exactly one",
        ),
        (json!({"controller": s}), "exactly one"),
        (json!({"controller": s, "null": "1X"}), "size"),
        (json!({"controller": s, "file": d, "lun": 20000}), "lun"),
        (json!({"controller": s, "file": d, "serial": ""}), "serial"),
        (
            json!({"controller": s, "file": d, "header-digest": true}),
            "header-digest",
        ),
        (
            json!({"controller": s, "iscsi": "iscsi://h/iqn.x"}),
            "target-iqn/lun",
        ),
        (json!({"controller": s, "file": d, "bogus": 1}), "bogus"),
    ] {
        let (c, m) = f.code("lun_add", p.clone());
        assert_eq!(c, rpc::INVALID_PARAMS, "{p}: {m}");
        assert!(m.contains(says), "{p}: {m}");
    }
    // Nothing was added by any of them.
    assert!(f.reg.list()[0].luns.is_empty());
}

#[test]
fn what_does_not_exist_is_not_found_and_what_exists_is_refused() {
    let f = fixture();
    let s = f.with_controller();
    let d = f.path("d.img");
    assert_eq!(
        f.code("lun_remove", json!({"controller": "/none", "lun": 0}))
            .0,
        rpc::NOT_FOUND
    );
    assert_eq!(
        f.code("lun_remove", json!({"controller": s, "lun": 3})).0,
        rpc::NOT_FOUND
    );
    assert_eq!(
        f.code("controller_remove", json!({"controller": "/none"}))
            .0,
        rpc::NOT_FOUND
    );
    assert_eq!(
        f.code("stats", json!({"controller": "/none"})).0,
        rpc::NOT_FOUND
    );
    assert_eq!(
        f.code("controller_add", json!({"socket": s})).0,
        rpc::EXISTS
    );
    let r = f
        .call("lun_add", json!({"controller": s, "file": d}))
        .unwrap();
    assert_eq!(r, json!({"lun": 0}));
    assert_eq!(
        f.code("lun_add", json!({"controller": s, "lun": 0, "null": 4096}))
            .0,
        rpc::EXISTS
    );
    let (c, m) = f.code(
        "lun_add",
        json!({"controller": s, "file": f.path("missing.img")}),
    );
    assert_eq!(c, rpc::FAILED);
    assert!(m.contains("missing.img"), "{m}");
    assert_eq!(f.reg.list()[0].luns.len(), 1);
}

#[test]
fn resize_and_read_only_check_the_lun() {
    let f = fixture();
    let s = f.with_controller();
    f.call("lun_add", json!({"controller": s, "file": f.path("d.img")}))
        .unwrap();
    let (c, m) = f.code(
        "lun_resize",
        json!({"controller": s, "lun": 0, "size": 1000}),
    );
    assert_eq!(c, rpc::UNSUPPORTED);
    assert!(m.contains("multiple"), "{m}");
    let r = f
        .call(
            "lun_resize",
            json!({"controller": s, "lun": 0, "size": "2M"}),
        )
        .unwrap();
    assert_eq!(r, json!({"size": 2 << 20}));
    assert_eq!(std::fs::metadata(f.path("d.img")).unwrap().len(), 2 << 20);
    f.call("lun_set_read_only", json!({"controller": s, "lun": 0}))
        .unwrap();
    assert!(f.reg.list()[0].luns[0].read_only);
    f.call(
        "lun_set_read_only",
        json!({"controller": s, "lun": 0, "ro": false}),
    )
    .unwrap();
    assert!(!f.reg.list()[0].luns[0].read_only);
    // One opened read-only cannot be made writable.
    let ro = f.path("ro.img");
    std::fs::File::create(&ro)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    f.call(
        "lun_add",
        json!({"controller": s, "lun": 1, "file": ro, "ro": true}),
    )
    .unwrap();
    let (c, _) = f.code(
        "lun_set_read_only",
        json!({"controller": s, "lun": 1, "ro": false}),
    );
    assert_eq!(c, rpc::UNSUPPORTED);
}

#[test]
fn a_password_in_a_url_is_never_echoed_in_an_error() {
    let f = fixture();
    let s = f.with_controller();
    let (_, m) = f.code(
        "lun_add",
        json!({"controller": s, "iscsi": "iscsi://bob%hunter2@h:bad/iqn.x:y/1"}),
    );
    assert!(!m.contains("hunter2"), "{m}");
    assert!(m.contains("***"), "{m}");
}

#[test]
fn save_config_needs_a_file_and_get_config_gives_the_text() {
    let f = fixture();
    let s = f.with_controller();
    f.call("lun_add", json!({"controller": s, "null": "1M"}))
        .unwrap();
    assert_eq!(f.code("save_config", json!({})).0, rpc::UNAVAILABLE);
    let r = f.call("get_config", json!({})).unwrap();
    let text = r["config"].as_str().unwrap();
    let (_, c) = FileConfig::parse(std::path::Path::new("x"), text).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].luns[&0].null_size, Some(1 << 20));
}

#[test]
fn the_method_list_names_every_method_with_its_parameters() {
    let f = fixture();
    let r = f.call("methods", json!({})).unwrap();
    let names: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for m in METHODS {
        assert!(names.contains(&m.name));
    }
    let lun_add = r
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "lun_add")
        .unwrap();
    assert!(lun_add["params"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "block-size"));
}
