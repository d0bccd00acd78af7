// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The binary's command line and lifecycle, without QEMU.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
}

fn stderr_of(args: &[&str]) -> (i32, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_options_and_examples() {
    let out = bin().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--socket",
        "--lun",
        "block-size",
        "Examples:",
        "memory-backend-memfd",
    ] {
        assert!(text.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn unknown_option_is_one_line_and_exit_2() {
    let (code, err) = stderr_of(&["serve", "--socket", "/tmp/x", "--bogus"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--bogus"));
}

#[test]
fn bad_lun_spec_is_one_line_naming_the_problem() {
    let (code, err) = stderr_of(&[
        "serve",
        "--socket",
        "/tmp/x",
        "--lun",
        "file=/a,block-size=1000",
    ]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("block-size must be 512 or 4096"), "{err}");
}

#[test]
fn unknown_chap_algorithm_is_one_line_in_serve_and_discover() {
    let (code, err) = stderr_of(&[
        "serve",
        "--socket",
        "/tmp/x",
        "--lun",
        "iscsi://127.0.0.1/iqn.2026-12.t:x/0,chap-algorithms=sha256:sha3",
    ]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown CHAP algorithm 'sha3'"), "{err}");
    let (code, err) = stderr_of(&[
        "discover",
        "iscsi://127.0.0.1:1",
        "--chap-algorithms",
        "md4",
    ]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown CHAP algorithm 'md4'"), "{err}");
}

#[test]
fn missing_backstore_is_one_line_with_the_path() {
    let (code, err) = stderr_of(&[
        "serve",
        "--socket",
        "/tmp/vus-cli-x.sock",
        "--lun",
        "file=/nonexistent/disk.img",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
    assert!(!err.contains("panicked"));
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("vhost-user-scsi:"))
            .count(),
        1
    );
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        sleep(Duration::from_millis(20));
    }
}

/// Start `serve` on a 1 MiB disk in `dir`; returns the child and its socket.
fn spawn_daemon(dir: &Path) -> (std::process::Child, std::path::PathBuf) {
    let disk = dir.join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let sock = dir.join("s.sock");
    let child = bin()
        .args(["serve", "--socket"])
        .arg(&sock)
        .arg("--lun")
        .arg(format!("file={}", disk.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock);
    (child, sock)
}

#[test]
fn sigterm_stops_the_daemon_with_status_0_even_with_a_client_connected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock) = spawn_daemon(dir.path());
    // A client that connects and says nothing must not block shutdown.
    let _client = UnixStream::connect(&sock).unwrap();
    sleep(Duration::from_millis(100));
    // SAFETY: kill() on the PID of the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "daemon did not stop");
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn garbage_on_the_vhost_user_socket_does_not_kill_the_daemon() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock) = spawn_daemon(dir.path());
    for round in 0..3u8 {
        let mut c = UnixStream::connect(&sock).unwrap();
        // A vhost-user header with an unknown request code, then junk.
        let mut junk = vec![0xff, 0xff, 0, 0, 0x01, 0, 0, 0, 4, 0, 0, 0];
        junk.extend((0..200).map(|i: u8| i.wrapping_mul(31).wrapping_add(round)));
        let _ = c.write_all(&junk);
        drop(c);
        sleep(Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
    }
    // It still accepts connections.
    UnixStream::connect(&sock).unwrap();
    // SAFETY: kill() on the PID of the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn bench_drives_the_daemon_and_verifies_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock) = spawn_daemon(dir.path());
    let out = bin()
        .args(["bench", "--socket"])
        .arg(&sock)
        .args([
            "--verify", "--ios", "3000", "--qd", "8", "--queues", "2", "--json",
        ])
        .arg("--pid")
        .arg(child.id().to_string())
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{json} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(json.contains("\"pattern\":\"verify\""), "{json}");
    assert!(json.contains("\"ios\":6000"), "{json}");
    assert!(
        json.contains("\"errors\":0,\"verify_failures\":0"),
        "{json}"
    );
    assert!(!json.contains("\"backend_cpu_us_per_io\":null"), "{json}");
    // SAFETY: kill() on the PID of the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn bench_against_a_missing_socket_fails_with_one_line() {
    let (code, err) = stderr_of(&["bench", "--socket", "/nonexistent/x.sock", "--quiet"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Cannot connect"), "{err}");
}

#[test]
fn bench_verify_catches_a_backend_that_loses_writes() {
    // A null LUN drops writes and reads zeros: every read-back must miscompare.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("n.sock");
    let mut child = bin()
        .args(["serve", "--socket"])
        .arg(&sock)
        .args(["--lun", "null,size=64M"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock);
    let out = bin()
        .args(["bench", "--socket"])
        .arg(&sock)
        .args(["--verify", "--ios", "100", "--qd", "4", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert!(json.contains("\"verify_failures\":100"), "{json}");
    // SAFETY: kill() on the PID of the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_pr_client_cdb_with_a_multibyte_character_is_refused_as_not_hex() {
    // 'a' then U+20AC (3 bytes): 4 bytes, an even count, and byte 2 is
    // inside the character.
    let (code, err) = stderr_of(&[
        "pr-client",
        "--socket",
        "/nonexistent.sock",
        "--device",
        "/dev/null",
        "--cdb",
        "a\u{20ac}",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not hex"), "{err}");
}
