// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The pr-helper on the host: privileges after start, protocol violations,
//! and device checks. (Real SCSI devices exist only in guests: see
//! qemu-tests/scenarios/pr-helper-*.sh.)

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vhost_user_scsi::prhelper::client::{request, send_with_fds};

struct Helper {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Helper {
    let dir = tempfile::tempdir().unwrap();
    // Let an unprivileged user reach the socket directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let sock = dir.path().join("pr.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["pr-helper", "-k"])
        .arg(&sock)
        .arg("-f")
        .arg(dir.path().join("pr.pid"))
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "helper did not start");
        sleep(Duration::from_millis(20));
    }
    // The socket exists before privileges are dropped; the seccomp filter
    // is the last thing installed before serving.
    while std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .map_or(true, |s| !s.contains("Seccomp:\t2"))
    {
        assert!(Instant::now() < deadline, "helper did not drop privileges");
        sleep(Duration::from_millis(20));
    }
    Helper {
        child,
        sock,
        _dir: dir,
    }
}

fn status_field(pid: u32, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap()
        .trim()
        .to_string()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn running_helper_keeps_only_sys_rawio() {
    assert!(
        is_root(),
        "the pr-helper privilege tests need root (CI runs as root)"
    );
    let h = start(&["-u", "nobody", "-g", "nogroup"]);
    let pid = h.child.id();
    // CAP_SYS_RAWIO is bit 17; CAP_DAC_OVERRIDE (bit 1) is only permitted.
    assert_eq!(status_field(pid, "CapEff"), "0000000000020000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000020002");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000020002");
    assert_eq!(status_field(pid, "CapInh"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert!(
        status_field(pid, "Uid").starts_with("65534"),
        "{}",
        status_field(pid, "Uid")
    );
    assert!(
        status_field(pid, "Gid").starts_with("65534"),
        "{}",
        status_field(pid, "Gid")
    );
}

#[test]
fn without_multipath_not_even_dac_override_is_permitted() {
    assert!(is_root());
    let h = start(&["--no-multipath"]);
    assert_eq!(status_field(h.child.id(), "CapPrm"), "0000000000020000");
}

#[test]
fn a_missing_capability_is_named() {
    assert!(is_root());
    // As under a service manager or container whose bounding set leaves
    // CAP_SYS_RAWIO out: capset(2) would only say EPERM.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-sys_rawio", "--"])
        .arg(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["pr-helper", "-k"])
        .arg(dir.path().join("pr.sock"))
        .arg("-f")
        .arg(dir.path().join("pr.pid"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot drop privileges: cap_sys_rawio needed but not permitted"),
        "{err}"
    );
}

fn handshake(s: &mut UnixStream) {
    let mut f = [0u8; 4];
    s.read_exact(&mut f).unwrap();
    assert_eq!(f, [0, 0, 0, 0]);
    s.write_all(&[0, 0, 0, 0]).unwrap();
}

/// After a violation the helper closes the connection: the next read is EOF.
fn assert_closed(mut s: UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0, "connection not closed");
}

fn read_keys_cdb() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x5e;
    c[8] = 0x40;
    c
}

#[test]
fn violations_close_the_connection_and_the_helper_keeps_serving() {
    let h = start(&[]);
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();

    // Requested feature bit that is not offered.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    let mut f = [0u8; 4];
    s.read_exact(&mut f).unwrap();
    s.write_all(&[0, 0, 0, 1]).unwrap();
    assert_closed(s);

    // CDB without an fd.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    handshake(&mut s);
    s.write_all(&read_keys_cdb()).unwrap();
    assert_closed(s);

    // Two fds.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    handshake(&mut s);
    send_with_fds(&s, &read_keys_cdb(), &[fd, fd]).unwrap();
    assert_closed(s);

    // Not a PERSISTENT RESERVE opcode.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    handshake(&mut s);
    let mut c = read_keys_cdb();
    c[0] = 0x28;
    send_with_fds(&s, &c, &[fd]).unwrap();
    assert_closed(s);

    // Allocation length over 8 KiB.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    handshake(&mut s);
    let mut c = read_keys_cdb();
    c[7] = 0x20;
    c[8] = 0x01;
    send_with_fds(&s, &c, &[fd]).unwrap();
    assert_closed(s);

    // Garbage, then a short CDB and a hang-up.
    let mut s = UnixStream::connect(&h.sock).unwrap();
    handshake(&mut s);
    s.write_all(&[0xff; 7]).unwrap();
    drop(s);

    // Still serving: a valid request on a regular file gets a clean error.
    let r = request(&h.sock, &file, &read_keys_cdb(), &[]).unwrap();
    assert_eq!(r.status(), 2);
    assert_eq!(r.bytes.len(), 104);
    // Fixed sense: ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED.
    assert_eq!((r.bytes[8 + 2], r.bytes[8 + 12]), (0x05, 0x25));
}

#[test]
fn a_slow_client_does_not_stall_others() {
    let h = start(&[]);
    // A client that handshakes and then sends half a CDB and waits.
    let mut slow = UnixStream::connect(&h.sock).unwrap();
    handshake(&mut slow);
    slow.write_all(&[0x5e, 0, 0]).unwrap();
    let file = tempfile::tempfile().unwrap();
    let start = Instant::now();
    let r = request(&h.sock, &file, &read_keys_cdb(), &[]).unwrap();
    assert_eq!(r.status(), 2);
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(slow);
}

fn losetup(img: &Path) -> String {
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(img)
        .output()
        .expect("losetup is needed (util-linux)");
    assert!(
        out.status.success(),
        "losetup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn pr_out_on_a_read_only_device_is_refused_and_sg_io_failures_are_clean() {
    assert!(is_root());
    let h = start(&[]);
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let loopdev = losetup(img.path());
    let ro = std::fs::File::open(&loopdev).unwrap();
    let mut register = [0u8; 16];
    register[0] = 0x5f;
    register[8] = 24;
    let r = request(&h.sock, &ro, &register, &[0u8; 24]).unwrap();
    // CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
    assert_eq!(
        (r.status(), r.bytes[8 + 2], r.bytes[8 + 12]),
        (2, 0x05, 0x20)
    );
    // A loop device is a block device without SG_IO: a transport failure.
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&loopdev)
        .unwrap();
    let r = request(&h.sock, &rw, &read_keys_cdb(), &[]).unwrap();
    assert_eq!(
        (r.status(), r.bytes[8 + 2], r.bytes[8 + 12]),
        (2, 0x0b, 0x08)
    );
    let _ = Command::new("losetup").args(["-d", &loopdev]).status();
}

#[test]
fn second_instance_with_the_same_pidfile_refuses_to_start() {
    let h = start(&[]);
    let pidfile = h.sock.with_file_name("pr.pid");
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["pr-helper", "-k"])
        .arg(h.sock.with_file_name("other.sock"))
        .arg("-f")
        .arg(&pidfile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // The message names the running instance.
    let running = format!("is locked: process {} ", h.child.id());
    assert!(err.contains(&running), "{err}");
}

#[test]
fn systemd_socket_activation_is_used_and_excludes_k() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("act.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let lfd = listener.as_raw_fd();
    let spawn = |extra: &str| {
        let script = format!(
            "export LISTEN_PID=$$; exec {} pr-helper -f {} {extra}",
            env!("CARGO_BIN_EXE_vhost-user-scsi"),
            dir.path().join(format!("act{}.pid", extra.len())).display()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .env("LISTEN_FDS", "1")
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe dup2/fcntl between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if lfd != 3 && libc::dup2(lfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 onto itself keeps FD_CLOEXEC: clear it either way.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    };
    // With -k as well: refused.
    let bad = spawn("-k /tmp/unused.sock").wait_with_output().unwrap();
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("socket activation"));
    // Alone: serves on the passed socket.
    let mut child = spawn("");
    let file = tempfile::tempfile().unwrap();
    let r = request(&sock, &file, &read_keys_cdb(), &[]).unwrap();
    assert_eq!(r.status(), 2);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn daemon_mode_detaches_and_writes_the_pidfile() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let pidfile = dir.path().join("d.pid");
    let st = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["pr-helper", "-d", "-k"])
        .arg(&sock)
        .arg("-f")
        .arg(&pidfile)
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "no pidfile");
        sleep(Duration::from_millis(20));
    };
    let file = tempfile::tempfile().unwrap();
    assert_eq!(
        request(&sock, &file, &read_keys_cdb(), &[])
            .unwrap()
            .status(),
        2
    );
    // SAFETY: kill() on the daemon this test started (its PID from the pidfile).
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

#[test]
fn serve_can_also_be_the_pr_helper() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let prsock = dir.path().join("pr.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["serve", "--socket"])
        .arg(dir.path().join("v.sock"))
        .arg("--lun")
        .arg(format!("file={}", disk.display()))
        .arg("--pr-helper-socket")
        .arg(&prsock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !prsock.exists() {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(20));
    }
    let file = tempfile::tempfile().unwrap();
    let r = request(&prsock, &file, &read_keys_cdb(), &[]).unwrap();
    assert_eq!((r.status(), r.bytes[8 + 12]), (2, 0x25));
    // SAFETY: kill() on the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
