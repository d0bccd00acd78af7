// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `serve` with least privilege: the running daemon's user, capabilities,
//! no_new_privs and seccomp state on every thread (read from /proc), the
//! capabilities each configuration keeps, the sockets' owner and mode, and
//! a root-only backstore served by an unprivileged daemon. Needs root, as CI
//! runs (the daemon must start privileged to drop anything).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::daemon::Daemon;
use serde_json::{json, Value};
use vhost_user_scsi::bench;
use vhost_user_scsi::privileges::{self, CapSet, Status};

const NOBODY: u32 = 65534;

impl Daemon {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The status of every thread.
    fn threads(&self) -> Vec<(String, Status)> {
        let tasks = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(tasks)
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.file_name().into_string().ok()?;
                let text = std::fs::read_to_string(format!("/proc/{}/task/{t}/status", self.pid()))
                    .ok()?;
                let name = text.lines().next().unwrap_or_default().to_string();
                Some((name, Status::parse(&text)))
            })
            .collect()
    }

    fn stop(mut self) -> String {
        // SAFETY: kill() on the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let code = self.child.wait().unwrap().code();
        assert_eq!(code, Some(0), "{}", self.log());
        self.log()
    }
}

/// A directory only root can enter, holding a root-only 0600 disk image.
fn private_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o700)).unwrap();
    let disk = dir.path().join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    std::fs::set_permissions(&disk, PermissionsExt::from_mode(0o600)).unwrap();
    (dir, disk)
}

/// Start `serve` with `args` and wait for its readiness notification
/// (sd_notify READY=1: every socket listens and privileges are dropped).
fn start(dir: &Path, args: &[String]) -> Daemon {
    let notify = dir.join("notify");
    let _ = std::fs::remove_file(&notify);
    let ready = UnixDatagram::bind(&notify).unwrap();
    ready
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("serve")
        .args(args)
        .env("NOTIFY_SOCKET", &notify)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        dir: dir.into(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 256];
    loop {
        if let Ok(n) = ready.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            assert!(msg.starts_with("READY=1\n"), "{msg}");
            assert!(msg.contains(&format!("MAINPID={}", d.pid())), "{msg}");
            return d;
        }
        if let Some(status) = d.child.try_wait().unwrap() {
            panic!("the daemon exited ({status}): {}", d.log());
        }
        assert!(Instant::now() < deadline, "not ready: {}", d.log());
    }
}

fn serve_args(dir: &Path, disk: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--socket".to_string(),
        format!("{},queues=2", dir.join("s.sock").display()),
        "--lun".to_string(),
        format!("file={}", disk.display()),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn verified_io(socket: &Path, queues: u16, ios: u64) -> bench::Report {
    let r = bench::run(&bench::Options {
        socket: socket.into(),
        lun: 0,
        block_size: 4096,
        queue_depth: 8,
        queues,
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
    })
    .unwrap();
    assert_eq!((r.errors, r.verify_failures), (0, 0));
    r
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn assert_root() {
    assert!(
        privileges::is_root(),
        "the privilege tests need root (CI runs as root)"
    );
}

#[test]
fn an_unprivileged_daemon_serves_a_root_only_file_with_nothing_left_on_any_thread() {
    assert_root();
    let (dir, disk) = private_dir();
    // The socket's directory must let QEMU (here: this test, as root) in.
    let d = start(
        dir.path(),
        &serve_args(
            dir.path(),
            &disk,
            &["--user", "nobody", "--group", "nogroup"],
        ),
    );
    let socket = dir.path().join("s.sock");
    verified_io(&socket, 2, 5_000);
    // While a front-end is connected its queue workers run too: they were
    // started after the drop, and must hold no more than the main thread.
    let mut front_end = Killed(
        Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
            .args([
                "bench", "--quiet", "--queues", "2", "--time", "600", "--socket",
            ])
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    // Main, accept, connection and two queue workers.
    while d.threads().len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", d.threads());
        assert!(front_end.0.try_wait().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(10));
    }
    for (name, st) in d.threads() {
        assert_eq!(st.uids, [NOBODY; 4], "{name}");
        assert_eq!(st.gids, [NOBODY; 4], "{name}");
        assert_eq!(st.effective, CapSet::EMPTY, "{name}");
        assert_eq!(st.permitted, CapSet::EMPTY, "{name}");
        assert_eq!(st.bounding, CapSet::EMPTY, "{name}");
        assert!(st.no_new_privs, "{name}");
        assert_eq!(st.seccomp, 2, "{name}: a filter is installed");
    }
    drop(front_end);
    let log = d.stop();
    assert!(
        log.contains("Running as uid 65534 gid 65534, capabilities none, seccomp enforce"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn root_without_a_user_still_drops_every_capability() {
    assert_root();
    let (dir, disk) = private_dir();
    let d = start(dir.path(), &serve_args(dir.path(), &disk, &[]));
    for (name, st) in d.threads() {
        assert_eq!(st.uids, [0; 4], "{name}");
        assert_eq!(
            (st.effective, st.permitted, st.bounding),
            (CapSet::EMPTY, CapSet::EMPTY, CapSet::EMPTY),
            "{name}"
        );
        assert_eq!(st.seccomp, 2, "{name}");
    }
    verified_io(&dir.path().join("s.sock"), 1, 2_000);
    d.stop();
}

#[test]
fn the_pr_helper_socket_and_keep_caps_keep_what_they_name() {
    assert_root();
    let (dir, disk) = private_dir();
    let pr = dir.path().join("pr.sock");
    let pr_arg = pr.display().to_string();
    let d = start(
        dir.path(),
        &serve_args(
            dir.path(),
            &disk,
            &[
                "--user",
                "nobody",
                "--pr-helper-socket",
                &pr_arg,
                "--keep-caps",
                "cap_chown,fowner",
            ],
        ),
    );
    let kept = CapSet::of(&[privileges::CAP_SYS_RAWIO, privileges::CAP_CHOWN, 3]);
    for (name, st) in d.threads() {
        assert_eq!(st.uids[1], NOBODY, "{name}");
        assert_eq!(st.effective, kept, "{name}");
        assert_eq!(
            st.permitted,
            kept.with(privileges::CAP_DAC_OVERRIDE),
            "{name}"
        );
        assert_eq!(st.bounding, st.permitted, "{name}");
    }
    let log = d.stop();
    assert!(
        log.contains(
            "capabilities cap_chown,cap_fowner,cap_sys_rawio \
             (permitted cap_chown,cap_dac_override,cap_fowner,cap_sys_rawio)"
        ),
        "{log}"
    );
}

#[test]
fn sockets_get_the_owner_group_and_mode_asked_for_also_at_run_time() {
    assert_root();
    let (dir, disk) = private_dir();
    let socket = dir.path().join("s.sock");
    // Default: the daemon's user only.
    let d = start(dir.path(), &serve_args(dir.path(), &disk, &[]));
    let m = std::fs::metadata(&socket).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
    d.stop();

    // A socket group: 0660.
    let d = start(
        dir.path(),
        &serve_args(
            dir.path(),
            &disk,
            &["--socket-owner", "nobody", "--socket-group", "nogroup"],
        ),
    );
    let m = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o777),
        (NOBODY, NOBODY, 0o660)
    );
    d.stop();

    // Run as nobody with a control socket and a group nobody is not in:
    // CAP_CHOWN is kept for the sockets of controllers added at run time.
    let ctl = dir.path().join("ctl.sock");
    let ctl_arg = ctl.display().to_string();
    let d = start(
        dir.path(),
        &serve_args(
            dir.path(),
            &disk,
            &[
                "--user",
                "nobody",
                "--control",
                &ctl_arg,
                "--socket-group",
                "root",
                "--socket-mode",
                "0640",
            ],
        ),
    );
    for (name, st) in d.threads() {
        assert_eq!(st.effective, CapSet::of(&[privileges::CAP_CHOWN]), "{name}");
    }
    let m = std::fs::metadata(&socket).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o777), (0, 0o640));
    // The run-time socket lands in a directory the daemon's user can write.
    let rt = tempfile::tempdir().unwrap();
    std::fs::set_permissions(rt.path(), PermissionsExt::from_mode(0o777)).unwrap();
    let s1 = rt.path().join("s1.sock");
    let Value::Object(p) = json!({"socket": s1, "lun": [{"null": "64M"}]}) else {
        unreachable!()
    };
    vhost_user_scsi::control::client::call(&ctl, "controller_add", p)
        .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    let m = std::fs::metadata(&s1).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o777),
        (NOBODY, 0, 0o640),
        "{}",
        d.log()
    );
    d.stop();
}

#[test]
fn seccomp_can_log_instead_or_be_off() {
    assert_root();
    let (dir, disk) = private_dir();
    for (mode, field) in [("log", 2), ("off", 0), ("enforce", 2)] {
        let d = start(
            dir.path(),
            &serve_args(dir.path(), &disk, &["--seccomp", mode]),
        );
        for (name, st) in d.threads() {
            assert_eq!(st.seccomp, field, "{mode}: {name}");
        }
        let log = d.stop();
        assert!(log.contains(&format!("seccomp {mode}")), "{log}");
    }
}

#[test]
fn privilege_options_that_cannot_work_are_refused_before_anything_starts() {
    assert_root();
    let (dir, disk) = private_dir();
    let refused = |extra: &[&str], uid: Option<u32>| -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"));
        cmd.arg("serve")
            .args(serve_args(dir.path(), &disk, extra))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(u) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, u);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        assert!(
            !dir.path().join("s.sock").exists(),
            "a refused start left its socket"
        );
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(refused(&["--user", "no-such-user-here"], None).contains("Unknown user"));
    assert!(refused(&["--keep-caps", "cap_everything"], None).contains("cap_everything"));
    assert!(refused(&["--socket-mode", "u+rw"], None).contains("u+rw"));
    assert!(refused(&["--seccomp", "strict"], None).contains("strict"));
    // Not root: nothing to switch from. (The disk is root-only too, but the
    // options are checked first.)
    let e = refused(&["--user", "nobody"], Some(NOBODY));
    assert!(e.contains("needs the daemon to start as root"), "{e}");
}
