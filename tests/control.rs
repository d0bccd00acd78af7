// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket of a running daemon: hostile clients (garbage, huge
//! lines, lines left unfinished, too many clients) change nothing and stall
//! nobody; LUNs and controllers come and go under I/O; statistics and the
//! metrics endpoint count what was done; a saved configuration starts the
//! same daemon again.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use common::daemon::Daemon;
use serde_json::{json, Value};
use vhost_user_scsi::bench;

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            path.display()
        );
        sleep(Duration::from_millis(20));
    }
}

fn disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// A daemon with a control socket and one controller (s0) with a file LUN.
fn start(dir: &Path, extra: &[String]) -> Daemon {
    let d0 = disk(dir, "d0.img", 64 << 20);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"));
    cmd.arg("serve")
        .arg("--control")
        .arg(dir.join("ctl.sock"))
        .args(extra);
    if !extra.iter().any(|a| a == "--config") {
        cmd.arg("--socket")
            .arg(format!("{},queues=2", dir.join("s0").display()))
            .arg("--lun")
            .arg(format!("file={}", d0.display()));
    }
    let child = cmd
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        dir: dir.into(),
    };
    wait_for(&dir.join("ctl.sock"));
    // The control socket is bound first, the controllers' next.
    wait_for(&dir.join("s0"));
    d
}

impl Daemon {
    fn ctl(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let Value::Object(p) = params else { panic!() };
        vhost_user_scsi::control::client::call(&self.ctl(), method, p).map_err(|e| match e {
            vhost_user_scsi::control::client::Error::Rpc { code, message } => (code, message),
            e => panic!("{e}"),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap()
    }

    fn alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "{}", self.log());
        assert!(!self.log().contains("panicked"), "{}", self.log());
    }
}

fn options(socket: &Path, lun: u16, ios: u64) -> bench::Options {
    bench::Options {
        socket: socket.into(),
        lun,
        block_size: 4096,
        queue_depth: 4,
        queues: 1,
        pattern: bench::Pattern::RandRw,
        read_pct: 50,
        duration: None,
        ios: Some(ios),
        verify: true,
        backend_pid: None,
        span: 8 << 20,
        progress: false,
        drop_in_flight: false,
        cdb: bench::CdbSize::Auto,
    }
}

/// Send `bytes` on a new connection and read one response line.
fn exchange(s: &mut UnixStream, bytes: &[u8]) -> Value {
    s.write_all(bytes).unwrap();
    read_line(s)
}

fn read_line(s: &UnixStream) -> Value {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

const LIST: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"controller_list\",\"id\":9}\n";

#[test]
fn the_control_socket_is_the_owners_alone_unless_a_group_is_given() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let m = std::fs::metadata(d.ctl()).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    drop(d);
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &["--control-group".into(), "root".into()]);
    let m = std::fs::metadata(d.ctl()).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.gid(), 0);
}

#[test]
fn garbage_and_huge_lines_get_errors_and_the_connection_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &[]);
    let mut s = UnixStream::connect(d.ctl()).unwrap();
    let r = exchange(&mut s, b"\x00\xff garbage \x1b[2J\n");
    assert_eq!(r["error"]["code"], -32700);
    let r = exchange(
        &mut s,
        b"{\"jsonrpc\":\"2.0\",\"method\":\"lun_add\",\"params\":{\"controller\":1},\"id\":2}\n",
    );
    assert_eq!(r["error"]["code"], -32602);
    assert_eq!(r["id"], 2);
    // 2 MiB without a newline, then its end and a real request.
    let huge = vec![b'['; 2 << 20];
    s.write_all(&huge).unwrap();
    let r = read_line(&s);
    assert_eq!(r["error"]["code"], -32600);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("longer than"));
    s.write_all(b"]]]\n").unwrap();
    let r = exchange(&mut s, LIST);
    assert_eq!(r["id"], 9);
    assert_eq!(r["result"].as_array().unwrap().len(), 1);
    d.alive();
}

#[test]
fn an_unfinished_line_and_too_many_clients_stall_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &[]);
    let mut slow = UnixStream::connect(d.ctl()).unwrap();
    slow.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"contr")
        .unwrap();
    // Everyone else is served meanwhile, I/O included.
    let r = bench::run(&options(&d.dir.join("s0"), 0, 500)).unwrap();
    assert_eq!((r.errors, r.verify_failures), (0, 0));
    let max = vhost_user_scsi::control::MAX_CLIENTS;
    let mut held: Vec<UnixStream> = (0..max + 4)
        .map(|_| UnixStream::connect(d.ctl()).unwrap())
        .collect();
    // The ones past the limit (the slow one is the first) are told so and
    // closed.
    for s in held.iter_mut().rev().take(4) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        assert!(buf.contains("-32006"), "{buf}");
    }
    drop(held);
    // The slow client finishes its line and is answered.
    slow.write_all(b"oller_list\",\"id\":1}\n").unwrap();
    assert_eq!(read_line(&slow)["id"], 1);
    // Once they have gone, new clients are served again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match d.call("controller_list", json!({})) {
            Ok(_) => break,
            Err((-32006, _)) if Instant::now() < deadline => sleep(Duration::from_millis(50)),
            Err(e) => panic!("{e:?}"),
        }
    }
    d.alive();
}

#[test]
fn luns_come_and_go_under_io_and_the_statistics_count_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &[]);
    let s0 = d.dir.join("s0");
    let d1 = disk(dir.path(), "d1.img", 32 << 20);
    let io = std::thread::spawn({
        let s0 = s0.clone();
        move || bench::run(&options(&s0, 0, 20_000)).unwrap()
    });
    for _ in 0..20 {
        let r = d
            .call("lun_add", json!({"controller": s0, "lun": 1, "file": d1}))
            .unwrap();
        assert_eq!(r["lun"], 1);
        d.call(
            "lun_resize",
            json!({"controller": s0, "lun": 1, "size": "48M"}),
        )
        .unwrap();
        d.call("lun_remove", json!({"controller": s0, "lun": 1}))
            .unwrap();
    }
    let r = io.join().unwrap();
    // Every change of the LUN inventory is a unit attention (REPORTED
    // LUNS DATA HAS CHANGED) for LUN 0's next command, which the load
    // generator counts as an error and a guest retries; data is intact.
    assert_eq!(r.verify_failures, 0);
    assert_eq!(std::fs::metadata(&d1).unwrap().len(), 48 << 20);
    // The LUN is gone: REPORT LUNS no longer lists it.
    assert!(bench::run(&options(&s0, 1, 10)).is_err());
    let st = d
        .call("stats", json!({"controller": s0, "lun": 0}))
        .unwrap();
    let l = &st["luns"][0];
    let n = |k: &str| l[k].as_u64().unwrap();
    // Every write the load generator sent (20,000 verified pairs; a pair
    // whose write met a unit attention is not read back), and the bytes
    // of every command but those that met a unit attention: one at
    // connection (power on) and at most one per change.
    assert_eq!(n("writes"), 20_000, "{l}");
    let ua = match l["check_conditions"].as_array().unwrap().as_slice() {
        [] => 0,
        [kv] if kv[0] == "unit_attention" => kv[1].as_u64().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(ua <= 41, "{l}");
    // (A unit attention may also meet one of the load generator's other
    // commands.)
    let moved = n("read_bytes") + n("written_bytes");
    let rw = n("reads") + n("writes");
    assert!(moved <= rw * 4096 && moved >= (rw - ua) * 4096, "{l}");
    assert_eq!(moved % 4096, 0);
    assert_eq!(l["in_flight"], 0);
    d.alive();
}

#[test]
fn a_lun_removed_under_io_finishes_its_commands_and_then_answers_not_supported() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &[]);
    let s0 = d.dir.join("s0");
    d.call(
        "lun_add",
        json!({"controller": s0, "lun": 1, "null": "64M"}),
    )
    .unwrap();
    let io = std::thread::spawn({
        let s0 = s0.clone();
        move || {
            let mut o = options(&s0, 1, u64::MAX);
            o.verify = false;
            o.ios = None;
            o.duration = Some(Duration::from_secs(10));
            o.queue_depth = 32;
            bench::run(&o).unwrap()
        }
    });
    // Remove it once reads are flowing (however slow the machine).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = d
            .call("stats", json!({"controller": s0, "lun": 1}))
            .unwrap();
        if st["luns"][0]["reads"].as_u64().unwrap_or(0) > 100 {
            break;
        }
        assert!(Instant::now() < deadline, "no I/O reached LUN 1: {st}");
        sleep(Duration::from_millis(10));
    }
    d.call("lun_remove", json!({"controller": s0, "lun": 1}))
        .unwrap();
    // The run goes on to its end: commands to the gone LUN are answered
    // (CHECK CONDITION, which the load generator counts as errors), none
    // is left hanging.
    let r = io.join().unwrap();
    assert!(r.errors > 0, "the LUN was removed under I/O");
    assert!(r.ios > 0, "commands completed before the removal: {r:?}");
    assert_eq!(
        d.call("controller_list", json!({})).unwrap()[0]["luns"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    d.alive();
}

#[test]
fn a_connected_controller_is_removed_only_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &[]);
    let s1 = dir.path().join("s1");
    d.call(
        "controller_add",
        json!({"socket": s1, "queues": 1, "lun": [{"null": "1G"}]}),
    )
    .unwrap();
    let io = std::thread::spawn({
        let s1 = s1.clone();
        move || {
            let mut o = options(&s1, 0, u64::MAX);
            o.verify = false;
            o.ios = None;
            o.duration = Some(Duration::from_secs(60));
            bench::run(&o)
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.call("controller_list", json!({})).unwrap()[1]["connected"]
        .as_bool()
        .unwrap()
    {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(20));
    }
    let (code, msg) = d
        .call("controller_remove", json!({"controller": s1}))
        .unwrap_err();
    assert_eq!(code, -32003, "{msg}");
    d.call(
        "controller_remove",
        json!({"controller": s1, "force": true}),
    )
    .unwrap();
    // The load generator's connection ended long before its 60 s.
    let _ = io.join().unwrap();
    assert!(!s1.exists());
    assert_eq!(
        d.call("controller_list", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = bench::run(&options(&d.dir.join("s0"), 0, 200)).unwrap();
    assert_eq!(r.errors, 0);
    d.alive();
}

#[test]
fn the_metrics_endpoint_counts_what_the_statistics_count() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut d = start(
        dir.path(),
        &["--metrics".into(), format!("127.0.0.1:{port}")],
    );
    let r = bench::run(&options(&d.dir.join("s0"), 0, 1000)).unwrap();
    assert_eq!(r.errors, 0);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    let s0 = d.dir.join("s0").display().to_string();
    let line = format!(
        "vhost_user_scsi_commands_total{{controller=\"{s0}\",lun=\"0\",kind=\"read\"}} 1000"
    );
    assert!(text.contains(&line), "{line} not in\n{text}");
    assert!(text.contains("# TYPE vhost_user_scsi_command_latency_seconds histogram"));
    assert!(text.contains("vhost_user_scsi_controller_connected"));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /other HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 404"), "{text}");
    d.alive();
}

#[test]
fn a_saved_configuration_starts_the_same_daemon_and_sighup_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("vus.toml");
    let d0 = disk(dir.path(), "d0.img", 64 << 20);
    std::fs::write(
        &conf,
        format!(
            "[[controller]]\nsocket = \"{}\"\nqueues = 2\n\n[[controller.lun]]\nfile = \"{}\"\n",
            dir.path().join("s0").display(),
            d0.display()
        ),
    )
    .unwrap();
    let args = vec!["--config".to_string(), conf.display().to_string()];
    let mut d = start(dir.path(), &args);
    let d1 = disk(dir.path(), "d1.img", 8 << 20);
    d.call(
        "controller_add",
        json!({"socket": dir.path().join("s1"), "queues": 1}),
    )
    .unwrap();
    d.call(
        "lun_add",
        json!({"controller": dir.path().join("s1"), "lun": 7, "file": d1, "serial": "SER7"}),
    )
    .unwrap();
    d.call(
        "lun_add",
        json!({"controller": dir.path().join("s0"), "lun": 3, "null": "16M"}),
    )
    .unwrap();
    // SIGHUP: logged, nothing else.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    // Wait for the daemon to have taken it (its log says so), not a fixed
    // time a loaded machine may not give it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("SIGHUP") {
        assert!(Instant::now() < deadline, "SIGHUP not logged: {}", d.log());
        sleep(Duration::from_millis(10));
    }
    d.alive();
    let before = d.call("controller_list", json!({})).unwrap();
    let r = d.call("save_config", json!({})).unwrap();
    assert_eq!(r["path"], conf.display().to_string());
    let mode = std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(d.log().contains("SIGHUP"));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    assert!(d.child.wait().unwrap().success());
    let mut d = start(dir.path(), &args);
    let after = d.call("controller_list", json!({})).unwrap();
    // The same configuration; whether a front-end is connected is not part
    // of it (the probe that waited for the socket may still count as one).
    let configured = |mut v: Value| {
        for c in v.as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("connected");
        }
        v
    };
    assert_eq!(configured(before), configured(after));
    d.alive();
}
