// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! iSCSI LUNs added and removed at run time, against tgtd: served through
//! the controller's session, counted, listed and saved without the CHAP
//! password given in their URL.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use common::tgt::Tgt;
use serde_json::{json, Value};
use vhost_user_scsi::bench;

const IQN: &str = "iqn.2026-12.org.vhost-user-scsi:ctl-test";

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn call(ctl: &Path, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let Value::Object(p) = params else { panic!() };
    vhost_user_scsi::control::client::call(ctl, method, p).map_err(|e| match e {
        vhost_user_scsi::control::client::Error::Rpc { code, message } => (code, message),
        e => panic!("{e}"),
    })
}

#[test]
fn an_iscsi_lun_added_at_run_time_is_served_counted_and_saved_without_its_password() {
    let mut t = Tgt::start();
    let (tid, _) = t.target(IQN);
    t.bind_all(tid);
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let s0 = dir.path().join("s0");
    let log = dir.path().join("daemon.log");
    let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("serve")
        .arg("--control")
        .arg(&ctl)
        .arg("--socket")
        .arg(&s0)
        .arg("--lun")
        .arg("null,size=16M")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&s0).is_err() || UnixStream::connect(&ctl).is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        sleep(Duration::from_millis(20));
    }
    // tgt's target has no CHAP account: the password is only carried.
    let url = format!("iscsi://alice%s3cretpw@127.0.0.1:{}/{IQN}/1", t.port);
    let r = call(
        &ctl,
        "lun_add",
        json!({"controller": s0, "lun": 1, "iscsi": url}),
    )
    .unwrap();
    assert_eq!(r["lun"], 1);
    let o = bench::Options {
        socket: s0.clone(),
        lun: 1,
        block_size: 4096,
        queue_depth: 4,
        queues: 1,
        pattern: bench::Pattern::RandRw,
        read_pct: 50,
        duration: None,
        ios: Some(300),
        verify: true,
        backend_pid: None,
        span: 8 << 20,
        progress: false,
        drop_in_flight: false,
        cdb: bench::CdbSize::Auto,
    };
    let r = bench::run(&o).unwrap();
    assert_eq!(r.verify_failures, 0);
    // The session's first command may meet tgt's power-on unit attention.
    assert!(r.errors <= 1, "{} errors", r.errors);
    let st = call(&ctl, "stats", json!({"controller": s0, "lun": 1})).unwrap();
    let l = &st["luns"][0];
    assert!(l["writes"].as_u64().unwrap() >= 299, "{l}");
    assert_eq!(l["iscsi"]["portal"], format!("127.0.0.1:{}", t.port), "{l}");
    // Resized and made read-only at the target, not here.
    assert!(call(&ctl, "lun_resize", json!({"controller": s0, "lun": 1})).is_ok());
    let (code, _) = call(
        &ctl,
        "lun_resize",
        json!({"controller": s0, "lun": 1, "size": "32M"}),
    )
    .unwrap_err();
    assert_eq!(code, -32005);
    let (code, _) = call(
        &ctl,
        "lun_set_read_only",
        json!({"controller": s0, "lun": 1}),
    )
    .unwrap_err();
    assert_eq!(code, -32005);
    // Listed and saved without the password, with a warning.
    let list = call(&ctl, "controller_list", json!({}))
        .unwrap()
        .to_string();
    assert!(
        list.contains(&format!("iscsi://alice@127.0.0.1:{}/{IQN}/1", t.port)),
        "{list}"
    );
    let cfg = call(&ctl, "get_config", json!({})).unwrap();
    assert!(!cfg.to_string().contains("s3cretpw"), "{cfg}");
    assert!(cfg["warnings"][0].as_str().unwrap().contains("LUN 1"));
    call(&ctl, "lun_remove", json!({"controller": s0, "lun": 1})).unwrap();
    assert_eq!(
        call(&ctl, "controller_list", json!({})).unwrap()[0]["luns"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(bench::run(&o).is_err(), "LUN 1 is gone");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("s3cretpw"), "the password is in the log");
    assert!(!text.contains("panicked"), "{text}");
}
