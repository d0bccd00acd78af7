// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A second process on the same socket, disk or state file finds out: two
//! daemons in one test, locks held by other processes (this test, QEMU's
//! tools), stale sockets of a killed daemon.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn disk(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(4 << 20).unwrap();
    p
}

/// `serve ARGS`, waiting until `socket` accepts connections.
fn serve(args: &[String], socket: &Path) -> Daemon {
    let child = bin()
        .arg("serve")
        .args(args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            socket.display()
        );
        sleep(Duration::from_millis(20));
    }
    d
}

/// `serve ARGS` expected to refuse to start: its stderr.
fn refused(args: &[String]) -> String {
    let out: Output = bin().arg("serve").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn args(socket: &Path, luns: &[String]) -> Vec<String> {
    let mut v = vec!["--socket".into(), socket.display().to_string()];
    for l in luns {
        v.push("--lun".into());
        v.push(l.clone());
    }
    v
}

fn file_lun(p: &Path, opts: &str) -> String {
    format!("file={}{opts}", p.display())
}

/// A short verified run of the load generator: the daemon serves.
fn serves(socket: &Path) {
    let out = bin()
        .args(["bench", "--socket"])
        .arg(socket)
        .args(["--verify", "--ios", "200", "--qd", "4", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_daemon_does_not_take_over_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let first = serve(
        &args(&sock, &[file_lun(&disk(dir.path(), "a.img"), "")]),
        &sock,
    );
    let err = refused(&args(&sock, &[file_lun(&disk(dir.path(), "b.img"), "")]));
    assert!(err.contains("s.sock is in use"), "{err}");
    // The message names the process listening there.
    assert!(err.contains(&format!("process {} ", first.0.id())), "{err}");
    serves(&sock);
}

#[test]
fn the_socket_of_a_killed_daemon_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let img = disk(dir.path(), "a.img");
    let mut first = serve(&args(&sock, &[file_lun(&img, "")]), &sock);
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(sock.exists(), "a killed daemon leaves its socket file");
    let _second = serve(&args(&sock, &[file_lun(&img, "")]), &sock);
    serves(&sock);
}

#[test]
fn a_path_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "a.img");
    // A slip of the fingers: the disk image given as the socket.
    let err = refused(&args(&img, &[file_lun(&disk(dir.path(), "b.img"), "")]));
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 << 20);
}

#[test]
fn a_second_daemon_cannot_serve_the_same_disk_by_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "a.img");
    let link = dir.path().join("hard-link.img");
    std::fs::hard_link(&img, &link).unwrap();
    let s1 = dir.path().join("1.sock");
    let first = serve(&args(&s1, &[file_lun(&img, "")]), &s1);
    for name in [&img, &link] {
        let err = refused(&args(&dir.path().join("2.sock"), &[file_lun(name, "")]));
        assert!(err.contains("is in use"), "{err}");
        assert!(err.contains(&format!("process {} ", first.0.id())), "{err}");
        assert!(err.contains("share-rw"), "{err}");
    }
    // Read-only does not help: the first daemon lets no one else write,
    // and a reader would see its writes half-done.
    let err = refused(&args(&dir.path().join("2.sock"), &[file_lun(&img, ",ro")]));
    assert!(err.contains("is in use"), "{err}");
}

#[test]
fn within_one_daemon_two_names_of_one_disk_are_one_logical_unit() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "a.img");
    let link = dir.path().join("hard-link.img");
    std::fs::hard_link(&img, &link).unwrap();
    let s1 = dir.path().join("1.sock");
    let s2 = dir.path().join("2.sock");
    let mut a = args(&s1, &[file_lun(&img, "")]);
    a.extend(args(&s2, &[file_lun(&link, "")]));
    let _d = serve(&a, &s2);
    serves(&s1);
    serves(&s2);
}

#[test]
fn daemons_that_all_share_writes_may_serve_one_disk() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "a.img");
    let s1 = dir.path().join("1.sock");
    let s2 = dir.path().join("2.sock");
    let _a = serve(&args(&s1, &[file_lun(&img, ",share-rw")]), &s1);
    let _b = serve(&args(&s2, &[file_lun(&img, ",share-rw")]), &s2);
    serves(&s1);
    serves(&s2);
    // One that shares nothing is still refused.
    let err = refused(&args(&dir.path().join("3.sock"), &[file_lun(&img, "")]));
    assert!(err.contains("writes it"), "{err}");
}

/// Another process holding the byte locks QEMU's `-drive file=IMG`
/// takes for a writer that shares no writes (bytes 100, 101 and 201,
/// shared OFD locks); it prints "locked" once it holds them. (Not this test
/// process: a child spawned meanwhile by another test would inherit the
/// descriptor until its exec, and keep the lock a moment longer.)
fn lock_like_qemu(img: &Path) -> Child {
    use std::io::BufRead;
    let script = r#"
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
for byte in (100, 101, 201):
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, byte, 1, 0))
print("locked", flush=True)
time.sleep(600)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(img)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

#[test]
fn a_disk_locked_by_another_process_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "a.img");
    let holder = Daemon(lock_like_qemu(&img));
    let err = refused(&args(&dir.path().join("s.sock"), &[file_lun(&img, "")]));
    assert!(
        err.contains(&format!("process {} ", holder.0.id())),
        "{err}"
    );
    assert!(err.contains("python3"), "{err}");
    drop(holder);
    let sock = dir.path().join("s.sock");
    let _d = serve(&args(&sock, &[file_lun(&img, "")]), &sock);
}

/// QEMU's own tools see the daemon's claim, and it sees theirs.
#[test]
fn qemu_io_is_refused_a_disk_the_daemon_serves() {
    let Ok(out) = Command::new("qemu-io").arg("--version").output() else {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-io (qemu-utils) is installed by scripts/install-deps.sh"
        );
        eprintln!("qemu-io not found: skipped");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "a.img");
    let sock = dir.path().join("s.sock");
    let d = serve(&args(&sock, &[file_lun(&img, "")]), &sock);
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512"])
        .arg(&img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Failed to get \"write\" lock"), "{err}");
    drop(d);
    // Released with the daemon.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn losetup(img: &Path) -> Option<String> {
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(img)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_loop_device_and_its_backing_file_are_one_disk() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = disk(dir.path(), "a.img");
    let Some(dev) = losetup(&img) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs as root with loop devices"
        );
        eprintln!("no loop device: skipped");
        return;
    };
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let s1 = dir.path().join("1.sock");
    {
        let _first = serve(&args(&s1, &[file_lun(&img, "")]), &s1);
        let err = refused(&args(&dir.path().join("2.sock"), &[format!("file={dev}")]));
        assert!(err.contains("through its backing file"), "{err}");
    }
    // And the other way round.
    let first = serve(&args(&s1, &[format!("file={dev}")]), &s1);
    let err = refused(&args(&dir.path().join("2.sock"), &[file_lun(&img, "")]));
    assert!(err.contains(&format!("process {} ", first.0.id())), "{err}");
}

#[test]
fn two_disks_cannot_share_one_reservation_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.pr");
    let pr = format!(",pr-file={}", state.display());
    let s1 = dir.path().join("1.sock");
    let first = serve(
        &args(&s1, &[file_lun(&disk(dir.path(), "a.img"), &pr)]),
        &s1,
    );
    let err = refused(&args(
        &dir.path().join("2.sock"),
        &[file_lun(&disk(dir.path(), "b.img"), &pr)],
    ));
    assert!(err.contains("state.pr is in use"), "{err}");
    assert!(err.contains(&format!("process {} ", first.0.id())), "{err}");
}

#[test]
fn a_pid_file_is_written_and_keeps_a_second_daemon_out() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("d.pid");
    let s1 = dir.path().join("1.sock");
    let mut a = args(&s1, &[file_lun(&disk(dir.path(), "a.img"), "")]);
    a.extend(["--pidfile".into(), pid.display().to_string()]);
    let first = serve(&a, &s1);
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap().trim(),
        first.0.id().to_string()
    );
    let mut b = args(
        &dir.path().join("2.sock"),
        &[file_lun(&disk(dir.path(), "b.img"), "")],
    );
    b.extend(["--pidfile".into(), pid.display().to_string()]);
    let err = refused(&b);
    assert!(err.contains("d.pid is locked"), "{err}");
}
