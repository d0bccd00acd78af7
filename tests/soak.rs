// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A daemon that runs for months: thousands of front-end connections of
//! every kind (short runs on varying queue counts, connections dropped with
//! commands in flight, broken messages, connections closed at once) leave
//! its descriptors, threads, memory mappings and resident memory as they
//! were.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vhost_user_scsi::bench;

/// What a process holds, from /proc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Usage {
    fds: usize,
    threads: usize,
    maps: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    Usage {
        fds,
        threads: field("Threads:") as usize,
        maps,
        rss_kib: field("VmRSS:"),
    }
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, queues: u16) -> Daemon {
    let disk = dir.join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let socket = dir.join("s.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("serve")
        .arg("--socket")
        .arg(format!("{},queues={queues}", socket.display()))
        .arg("--lun")
        .arg(format!("file={}", disk.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        sleep(Duration::from_millis(20));
    }
    Daemon { child, socket }
}

fn options(socket: &Path, queues: u16, ios: u64) -> bench::Options {
    bench::Options {
        socket: socket.into(),
        lun: 0,
        block_size: 4096,
        queue_depth: 4,
        queues,
        pattern: bench::Pattern::RandRw,
        read_pct: 50,
        duration: None,
        ios: Some(ios),
        verify: false,
        backend_pid: None,
        span: 0,
        progress: false,
        drop_in_flight: false,
        cdb: bench::CdbSize::Auto,
    }
}

/// One connection of kind `i % 20`: mostly short runs on 1 to 4 queues,
/// some dropped with commands in flight, some broken or empty.
fn connection(socket: &Path, i: usize) {
    let queues = (i % 4) as u16 + 1;
    match i % 20 {
        0..=3 => {
            // Dropped mid-I/O: the run ends with every slot still in flight.
            let mut o = options(socket, queues, 64);
            o.drop_in_flight = true;
            bench::run(&o).unwrap();
        }
        4 => {
            // A message header promising more than is ever sent.
            let mut s = UnixStream::connect(socket).unwrap();
            let _ = s.write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0, 0]);
        }
        5 => {
            // Garbage, then gone.
            let mut s = UnixStream::connect(socket).unwrap();
            let _ = s.write_all(&[0xa5; 300]);
        }
        6 => drop(UnixStream::connect(socket).unwrap()),
        _ => {
            let r = bench::run(&options(socket, queues, 16)).unwrap();
            assert_eq!(r.errors, 0, "connection {i}");
        }
    }
}

/// Whether every accept thread of the daemon is blocked in accept(2):
/// the previous connection has been torn down (its threads joined, its
/// device state dropped) and nothing else is happening.
fn idle(pid: u32) -> bool {
    let accept4 = libc::SYS_accept4.to_string();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut accepting = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("control-client") {
            // A control client's thread ends soon after its client.
            return false;
        }
        if comm.starts_with("accept-") {
            let sc = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
            if sc.split_whitespace().next() != Some(accept4.as_str()) {
                return false;
            }
            accepting += 1;
        }
    }
    accepting > 0
}

/// What the daemon holds once idle (bounded wait: a teardown finishes
/// after its front-end has gone).
fn settled(pid: u32) -> Usage {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let before = usage(pid);
        if idle(pid) {
            let u = usage(pid);
            // Still idle after reading: nothing changed in between.
            if idle(pid) && u == before {
                return u;
            }
        }
        assert!(Instant::now() < deadline, "the daemon never became idle");
        sleep(Duration::from_millis(20));
    }
}

/// Run `f` on a thread of its own and fail if it has not finished within
/// `limit`: a daemon that stops answering must fail the test, not hang it
/// (the load generator waits for the daemon's replies without a timeout).
fn within(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => t.join().unwrap(),
        // The thread panicked (the sender is gone): report its panic.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("not finished within {limit:?}: the daemon stopped answering")
        }
    }
}

#[test]
fn thousands_of_connections_leave_descriptors_threads_and_memory_as_they_were() {
    within(Duration::from_secs(600), soak);
}

fn soak() {
    let total: usize = std::env::var("VUS_SOAK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), 4);
    let pid = d.child.id();
    // Warm-up: the allocator's per-thread arenas and the like come into
    // being with the first connections and stay.
    for i in 0..40 {
        connection(&d.socket, i);
    }
    let base = settled(pid);
    let started = Instant::now();
    for i in 0..total {
        connection(&d.socket, i);
    }
    let elapsed = started.elapsed();
    let after = settled(pid);
    eprintln!("{total} connections in {elapsed:?}: before {base:?}, after {after:?}");
    assert_eq!(after.fds, base.fds, "descriptors leaked");
    assert_eq!(after.threads, base.threads, "threads leaked");
    // Mappings: guest memory and io_uring rings are per connection and
    // must be gone; a few allocator arenas may still appear.
    assert!(
        after.maps <= base.maps + 8,
        "mappings grew from {} to {}",
        base.maps,
        after.maps
    );
    // Resident memory: allocator slack, not a per-connection cost (5,000
    // connections leaking even 1 KiB each would be 5 MiB).
    assert!(
        after.rss_kib <= base.rss_kib + 2048,
        "resident memory grew from {} to {} KiB",
        base.rss_kib,
        after.rss_kib
    );
    // Still serving, correctly.
    let mut o = options(&d.socket, 2, 2000);
    o.verify = true;
    let r = bench::run(&o).unwrap();
    assert_eq!((r.errors, r.verify_failures), (0, 0));
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// Controllers and LUNs added and removed at run time, hundreds of times,
/// with I/O on them in between, leave the daemon as it was (issue 24's
/// soak, for the control socket of issue 20).
#[test]
fn controllers_and_luns_added_and_removed_at_run_time_leave_nothing_behind() {
    use serde_json::{json, Value};
    let cycles: usize = std::env::var("VUS_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let disk = |name: &str| {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        p
    };
    let (d0, d1, d2) = (disk("d0.img"), disk("d1.img"), disk("d2.img"));
    let s0 = dir.path().join("s0.sock");
    let s1 = dir.path().join("s1.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("serve")
        .arg("--control")
        .arg(&ctl)
        .arg("--socket")
        .arg(format!("{},queues=2", s0.display()))
        .arg("--lun")
        .arg(format!("file={}", d0.display()))
        .env("RUST_LOG", "info")
        // One allocator arena: the threads that come and go with
        // controllers and control clients would otherwise add arenas (and
        // their mappings) for a while, which is not what is measured.
        .env("MALLOC_ARENA_MAX", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        socket: s0.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&ctl).is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        sleep(Duration::from_millis(20));
    }
    let pid = d.child.id();
    let call = |method: &str, params: Value| {
        let Value::Object(p) = params else { panic!() };
        vhost_user_scsi::control::client::call(&ctl, method, p).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
            panic!("{method}: {e}\n{log}")
        })
    };
    let cycle = |i: usize| {
        call(
            "controller_add",
            json!({"socket": s1, "queues": 1 + i % 3, "lun": [{"file": d1}]}),
        );
        call(
            "lun_add",
            json!({"controller": s1, "lun": 1, "null": "64M"}),
        );
        call("lun_add", json!({"controller": s0, "lun": 1, "file": d2}));
        if i % 5 == 0 {
            let mut o = options(&s1, 1, 32);
            o.lun = (i % 2) as u16;
            assert_eq!(bench::run(&o).unwrap().errors, 0);
            let mut o = options(&s0, 2, 32);
            o.lun = 1;
            assert_eq!(bench::run(&o).unwrap().errors, 0);
        }
        call("lun_resize", json!({"controller": s0, "lun": 1}));
        call("lun_set_read_only", json!({"controller": s1, "lun": 0}));
        call("stats", json!({}));
        call("lun_remove", json!({"controller": s0, "lun": 1}));
        call("lun_remove", json!({"controller": s1, "lun": 1}));
        call("controller_remove", json!({"controller": s1}));
    };
    for i in 0..10 {
        cycle(i);
    }
    let base = settled(pid);
    for i in 0..cycles / 2 {
        cycle(i);
    }
    let half = settled(pid);
    for i in cycles / 2..cycles {
        cycle(i);
    }
    let after = settled(pid);
    eprintln!("{cycles} cycles: before {base:?}, half way {half:?}, after {after:?}");
    assert_eq!(after.fds, base.fds, "descriptors leaked");
    assert_eq!(after.threads, base.threads, "threads leaked");
    // Mappings: a leak of one per cycle would be hundreds; glibc keeps the
    // stacks of ended threads for reuse (a stack and its guard each), a few
    // more or less from one moment to the next.
    assert!(
        after.maps <= base.maps + 8 && after.maps <= half.maps + 8,
        "mappings grew from {} to {} to {}",
        base.maps,
        half.maps,
        after.maps
    );
    assert!(
        after.rss_kib <= base.rss_kib + 2048,
        "resident memory grew from {} to {} KiB",
        base.rss_kib,
        after.rss_kib
    );
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// The budget the daemon works out for its configuration (it warns when
/// the descriptor limit is below it) covers what it really holds with a
/// QEMU connected on every queue.
#[test]
fn a_connected_controller_stays_within_the_descriptor_budget() {
    within(Duration::from_secs(300), budget);
}

fn budget() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), 4);
    let pid = d.child.id();
    let cfg = vhost_user_scsi::config::Config::from_ordered_args(&[
        (true, format!("{},queues=4", d.socket.display())),
        (false, "file=/x".into()),
    ])
    .unwrap();
    let budget = vhost_user_scsi::server::descriptor_budget(&cfg) as usize;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(usage(pid).fds);
                sleep(Duration::from_millis(5));
            }
            peak
        });
        let mut o = options(&d.socket, 4, 40_000);
        o.queue_depth = 16;
        bench::run(&o).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap()
    });
    let idle = settled(pid).fds;
    assert!(
        peak > idle,
        "the sampler saw the connection ({peak} > {idle})"
    );
    assert!(peak <= budget, "{peak} descriptors held, budget {budget}");
}

/// The soft limit on descriptors (1024 under systemd by default) is raised
/// to the hard limit at start.
#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let socket = dir.path().join("s.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"));
    cmd.arg("serve")
        .arg("--socket")
        .arg(&socket)
        .arg("--lun")
        .arg(format!("file={}", disk.display()))
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap());
    // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let d = Daemon { child, socket };
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&d.socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        sleep(Duration::from_millis(20));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["4096", "4096"], "{line}");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(
        log.contains("Raised the open descriptor limit from 256 to 4096"),
        "{log}"
    );
}
