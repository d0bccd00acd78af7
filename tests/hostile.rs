// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The daemon against a hostile front-end (`vhost-user-scsi hostile`, the
//! library's `bench::hostile`): malformed messages, bad memory tables and
//! rings, resets and disconnects with commands in flight, connection
//! storms. After every case a well-behaved front-end is served; at the end
//! the daemon holds the descriptors it held before, logged at most a
//! minute's worth of warnings, and never panicked.

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vhost_user_scsi::bench::hostile;

#[test]
fn a_hostile_front_end_does_not_crash_hang_or_leak_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let socket = dir.path().join("s.sock");
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("serve")
        .arg("--socket")
        .arg(format!("{},queues=2", socket.display()))
        .arg("--lun")
        .arg(format!("file={}", disk.display()))
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        sleep(Duration::from_millis(20));
    }
    let o = hostile::Options {
        socket: socket.clone(),
        rounds: 3,
        duration: Some(Duration::from_secs(120)),
        backend_pid: Some(child.id()),
        only: None,
    };
    let r = hostile::run(&o);
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let r = r.unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    eprintln!("{r}");
    assert!(alive, "the daemon exited:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    let (before, after) = r.fds.unwrap();
    assert_eq!(before, after, "descriptors");
    // Rate-limited: at most a minute's worth, plus the summary lines.
    let warnings = text.lines().filter(|l| l.contains(" WARN ")).count();
    let limit = 2 * (vhost_user_scsi::device::PROBLEMS_PER_MINUTE as usize + 1);
    assert!(warnings <= limit, "{warnings} warnings:\n{text}");
}
