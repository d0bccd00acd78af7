// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! iSCSI LUNs added and removed at run time, against tgtd: served through
//! the controller's session, counted, listed and saved without the CHAP
//! password given in their URL.

use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vhost_user_scsi::bench;

const IQN: &str = "iqn.2026-12.org.vhost-user-scsi:ctl-test";

struct Tgt {
    child: Child,
    port: u16,
    ctl: String,
    dir: tempfile::TempDir,
    img: PathBuf,
}

impl Tgt {
    /// tgtd on a free loopback port with one target open to all, LUN 1 on
    /// a 16 MiB file.
    fn start() -> Tgt {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let ctl = (port % 32000 + 1).to_string();
        let child = Command::new("tgtd")
            .args(["-f", "-C", &ctl, "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .env("TGT_IPC_SOCKET", dir.path().join("ipc"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tgtd (Debian package tgt) is needed");
        let img = dir.path().join("lun1.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let t = Tgt {
            child,
            port,
            ctl,
            dir,
            img,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.adm(&["--mode", "sys", "--op", "show"]) {
            assert!(Instant::now() < deadline, "tgtd did not start");
            sleep(Duration::from_millis(50));
        }
        assert!(t.adm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            "1",
            "--targetname",
            IQN
        ]));
        let img = t.img.display().to_string();
        assert!(t.adm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--bstype",
            "rdwr",
            "--backing-store",
            &img,
        ]));
        assert!(t.adm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            "1",
            "--initiator-address",
            "ALL"
        ]));
        t
    }

    fn adm(&self, args: &[&str]) -> bool {
        Command::new("tgtadm")
            .args(["-C", &self.ctl, "--lld", "iscsi"])
            .args(args)
            .env("TGT_IPC_SOCKET", self.dir.path().join("ipc"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM: offline, delete the target, then the system.
        self.adm(&[
            "--mode", "sys", "--op", "update", "--name", "State", "-v", "offline",
        ]);
        self.adm(&[
            "--mode", "target", "--op", "delete", "--force", "--tid", "1",
        ]);
        self.adm(&["--mode", "system", "--op", "delete"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let t = Tgt::start();
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
