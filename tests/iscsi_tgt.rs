// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The initiator against a real target: tgtd, started by each test on a
//! free loopback port with its own control socket.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use common::kernel::{self, wait_for};
use common::tgt::Tgt;
use vhost_user_scsi::iscsi::client::{Client, Failure, Options};
use vhost_user_scsi::iscsi::codes::{TmfFunction, TmfResponse};
use vhost_user_scsi::iscsi::conn::{Connection, Error};
use vhost_user_scsi::iscsi::login::{Credentials, LoginError, LoginParams};
use vhost_user_scsi::iscsi::session::{Completion, Data, Sink, SinkRef, Source, SourceRef};

const INITIATOR: &str = "iqn.2026-11.org.vhost-user-scsi:test";
const LUN1: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

fn params(target: Option<&str>) -> LoginParams {
    LoginParams {
        initiator_name: INITIATOR.into(),
        target_name: target.map(str::to_string),
        isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x01],
        tsih: 0,
        chap: None,
        mutual: None,
        header_digest: false,
        data_digest: false,
        max_recv_data_segment_length: 262144,
        max_burst_length: 1 << 20,
        first_burst_length: 65536,
        initial_cmd_sn: 1,
        chap_offer: vhost_user_scsi::iscsi::chap::Offer::ALL,
    }
}

fn login(t: &Tgt, p: LoginParams) -> Result<Connection, Error> {
    Connection::login(&t.addr(), p, Duration::from_secs(10))
}

/// TEST UNIT READY until the new session's unit attention (29h/00h) is gone.
fn clear_unit_attention(c: &mut Connection) {
    for _ in 0..5 {
        let r = c.execute(LUN1, &[0, 0, 0, 0, 0, 0], Data::None).unwrap();
        if r.status == 0 {
            return;
        }
        assert_eq!(
            (r.status, r.sense.get(2).map(|k| k & 0xf)),
            (2, Some(6)),
            "{r:?}"
        );
    }
    panic!("unit attention does not clear");
}

fn write16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0x8a, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = write16(lba, blocks);
    c[0] = 0x88;
    c
}

/// Write and read back: 32 4-KiB writes in flight, then 1 MiB in one
/// command (several R2Ts past FirstBurstLength, Data-In split by our
/// MaxRecvDataSegmentLength), and compare.
fn write_read_verify(c: &mut Connection) {
    let writes: Vec<_> = (0..32u64)
        .map(|i| {
            let data: Vec<u8> = (0..4096u32).map(|b| (b as u64 ^ (i * 7)) as u8).collect();
            (LUN1, write16(i * 8, 8), Data::Write(data))
        })
        .collect();
    let expect: Vec<Vec<u8>> = writes
        .iter()
        .map(|(_, _, d)| match d {
            Data::Write(w) => w.clone(),
            _ => unreachable!(),
        })
        .collect();
    for r in c.execute_many(writes).unwrap() {
        assert_eq!((r.response, r.status), (0, 0), "{r:?}");
    }
    let reads: Vec<_> = (0..32u64)
        .map(|i| (LUN1, read16(i * 8, 8), Data::Read(4096)))
        .collect();
    for (i, r) in c.execute_many(reads).unwrap().into_iter().enumerate() {
        assert_eq!(r.status, 0);
        assert_eq!(r.data, expect[i], "read-back of write {i}");
    }
    let big: Vec<u8> = (0..(1u32 << 20)).map(|b| (b % 251) as u8).collect();
    let w = c
        .execute(LUN1, &write16(4096, 2048), Data::Write(big.clone()))
        .unwrap();
    assert_eq!(w.status, 0, "{w:?}");
    let r = c
        .execute(LUN1, &read16(4096, 2048), Data::Read(1 << 20))
        .unwrap();
    assert_eq!(r.status, 0);
    assert!(r.data == big, "1 MiB read-back differs");
}

#[test]
fn discovery_lists_targets_and_portals() {
    let mut t = Tgt::start();
    for n in ["iqn.2026-11.test:one", "iqn.2026-11.test:two"] {
        let (tid, _) = t.target(n);
        t.bind_all(tid);
    }
    let mut c = login(&t, params(None)).unwrap();
    let list = c.send_targets().unwrap();
    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"iqn.2026-11.test:one") && names.contains(&"iqn.2026-11.test:two"),
        "{list:?}"
    );
    assert!(
        list[0]
            .1
            .iter()
            .any(|p| p.starts_with(&format!("127.0.0.1:{}", t.port))),
        "{list:?}"
    );
    c.logout().unwrap();
}

#[test]
fn an_ipv6_portal_is_discovered_logged_in_to_and_carries_verified_data() {
    let mut t = Tgt::start_on("[::1]");
    let (tid, _) = t.target("iqn.2026-11.test:six");
    t.bind_all(tid);
    let mut d = login(&t, params(None)).unwrap();
    let list = d.send_targets().unwrap();
    d.logout().unwrap();
    // tgt names its portal in brackets, as RFC 7143 13.9 asks.
    let portals = &list[0].1;
    let portal = portals
        .iter()
        .find_map(|p| vhost_user_scsi::iscsi::url::portal_address(p))
        .unwrap_or_else(|| panic!("no usable portal in {list:?}"));
    assert_eq!(portal, t.addr());
    let mut c = Connection::login(
        &portal,
        params(Some("iqn.2026-11.test:six")),
        Duration::from_secs(10),
    )
    .unwrap();
    clear_unit_attention(&mut c);
    write_read_verify(&mut c);
    c.logout().unwrap();
}

#[test]
fn plain_login_reads_and_writes_with_many_commands_in_flight() {
    let mut t = Tgt::start();
    let (tid, img) = t.target("iqn.2026-11.test:plain");
    t.bind_all(tid);
    let mut c = login(&t, params(Some("iqn.2026-11.test:plain"))).unwrap();
    // We offer DefaultTime2Wait=0 (result function Maximum): tgt's own
    // value, 2 s, decides how long a reinstatement waits.
    assert_eq!(c.session.n.default_time2wait, 2);
    clear_unit_attention(&mut c);
    let inq = c
        .execute(LUN1, &[0x12, 0, 0, 0, 96, 0], Data::Read(96))
        .unwrap();
    assert_eq!(inq.status, 0);
    assert_eq!(&inq.data[8..11], b"IET");
    let cap = c
        .execute(
            LUN1,
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            Data::Read(32),
        )
        .unwrap();
    assert_eq!(
        u64::from_be_bytes(cap.data[0..8].try_into().unwrap()) + 1,
        (16 << 20) / 512
    );
    write_read_verify(&mut c);
    c.logout().unwrap();
    // The data is on the target's backing file.
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(on_disk[4096 * 512 + 1000], (1000 % 251) as u8);
}

#[test]
fn sense_from_the_target_comes_back_unchanged() {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:sense");
    t.bind_all(tid);
    let mut c = login(&t, params(Some("iqn.2026-11.test:sense"))).unwrap();
    clear_unit_attention(&mut c);
    // READ(16) far past the end: ILLEGAL REQUEST, LBA OUT OF RANGE.
    let r = c
        .execute(LUN1, &read16(1 << 40, 1), Data::Read(512))
        .unwrap();
    assert_eq!(r.status, 2);
    assert_eq!((r.sense[2] & 0xf, r.sense[12]), (0x5, 0x21));
}

#[test]
fn chap_with_the_right_secret_logs_in_and_a_wrong_one_fails() {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:chap");
    t.bind_all(tid);
    t.account(tid, "alice", "alicesecret12", false);
    let mut p = params(Some("iqn.2026-11.test:chap"));
    p.chap = Some(Credentials {
        user: "alice".into(),
        secret: "alicesecret12".into(),
    });
    let mut c = login(&t, p.clone()).unwrap();
    clear_unit_attention(&mut c);
    c.logout().unwrap();
    p.chap = Some(Credentials {
        user: "alice".into(),
        secret: "wrongsecret12".into(),
    });
    assert!(matches!(
        login(&t, p.clone()),
        Err(Error::Login(LoginError::AuthenticationFailed))
    ));
    p.chap = None;
    let e = login(&t, p)
        .err()
        .expect("login without credentials must fail");
    assert!(
        matches!(
            e,
            Error::Login(LoginError::AuthenticationFailed | LoginError::ChapRequired)
        ),
        "{e:?}"
    );
}

#[test]
fn chap_algorithms_can_be_restricted_and_a_target_without_them_is_refused() {
    use vhost_user_scsi::iscsi::chap::{Algorithm, Offer};
    // tgt does MD5 only.
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:chapalg");
    t.bind_all(tid);
    t.account(tid, "alice", "alicesecret12", false);
    let mut p = params(Some("iqn.2026-11.test:chapalg"));
    p.chap = Some(Credentials {
        user: "alice".into(),
        secret: "alicesecret12".into(),
    });
    let c = login(&t, p.clone()).unwrap();
    assert_eq!(c.session.n.chap, Some(Algorithm::Md5));
    drop(c);
    p.chap_offer = Offer::parse("md5").unwrap();
    let c = login(&t, p.clone()).unwrap();
    assert_eq!(c.session.n.chap, Some(Algorithm::Md5));
    drop(c);
    let no_md5 = Offer::parse("sha256:sha1").unwrap();
    p.chap_offer = no_md5;
    let e = login(&t, p).err().expect("tgt has no SHA");
    assert!(
        matches!(e, Error::Login(LoginError::ChapAlgorithmsRefused(o)) if o == no_md5),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "The target accepts none of the CHAP algorithms allowed (SHA-256, SHA-1)"
    );
}

#[test]
fn mutual_chap_verifies_the_target() {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:mutual");
    t.bind_all(tid);
    t.account(tid, "alice", "alicesecret12", false);
    t.account(tid, "tgtuser", "targetsecret1", true);
    let mut p = params(Some("iqn.2026-11.test:mutual"));
    p.chap = Some(Credentials {
        user: "alice".into(),
        secret: "alicesecret12".into(),
    });
    p.mutual = Some(Credentials {
        user: "tgtuser".into(),
        secret: "targetsecret1".into(),
    });
    let mut c = login(&t, p.clone()).unwrap();
    clear_unit_attention(&mut c);
    c.logout().unwrap();
    p.mutual = Some(Credentials {
        user: "tgtuser".into(),
        secret: "not-the-one12".into(),
    });
    assert!(matches!(
        login(&t, p),
        Err(Error::Login(LoginError::MutualChapFailed))
    ));
}

#[test]
fn acl_refuses_other_initiators_and_unknown_targets_are_not_found() {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:acl");
    t.adm(&[
        "--mode",
        "target",
        "--op",
        "bind",
        "--tid",
        &tid.to_string(),
        "--initiator-name",
        "iqn.2026-11.test:allowed",
    ]);
    let e = login(&t, params(Some("iqn.2026-11.test:acl")))
        .err()
        .expect("ACL must refuse");
    assert!(
        matches!(
            e,
            Error::Login(LoginError::Forbidden | LoginError::TargetNotFound)
        ),
        "{e:?}"
    );
    let mut p = params(Some("iqn.2026-11.test:acl"));
    p.initiator_name = "iqn.2026-11.test:allowed".into();
    login(&t, p).unwrap().logout().unwrap();
    let e = login(&t, params(Some("iqn.2026-11.test:nope")))
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Login(LoginError::TargetNotFound)),
        "{e:?}"
    );
}

#[test]
fn header_and_data_digests_protect_every_pdu() {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:digest");
    t.bind_all(tid);
    t.param(tid, "HeaderDigest", "CRC32C");
    t.param(tid, "DataDigest", "CRC32C");
    let mut p = params(Some("iqn.2026-11.test:digest"));
    p.header_digest = true;
    p.data_digest = true;
    let mut c = login(&t, p).unwrap();
    assert!(c.session.n.digests.header && c.session.n.digests.data);
    clear_unit_attention(&mut c);
    write_read_verify(&mut c);
    c.logout().unwrap();
}

#[test]
fn discover_command_prints_targets_and_reads_a_credentials_file() {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:listed");
    t.bind_all(tid);
    // tgt does not authenticate discovery sessions unless told to: an empty
    // credentials file (comments only) must be accepted.
    let creds = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(creds.path(), "# none needed\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .arg("discover")
        .arg(format!("iscsi://127.0.0.1:{}", t.port))
        .arg("--credentials")
        .arg(creds.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("iqn.2026-11.test:listed 127.0.0.1:{},1", t.port)),
        "{stdout}"
    );
}

#[test]
fn discover_against_a_closed_port_is_one_line() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(["discover", &format!("iscsi://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Cannot connect"), "{err}");
}

/// Run commands through the asynchronous client, retrying unit attentions
/// (a new session's first command may get 29h/00h).
fn run_async(
    c: &vhost_user_scsi::iscsi::client::Client,
    cmds: Vec<(Vec<u8>, Data)>,
) -> Vec<vhost_user_scsi::iscsi::session::Completion> {
    use std::sync::mpsc;
    let mut results: Vec<Option<vhost_user_scsi::iscsi::session::Completion>> =
        vec![None; cmds.len()];
    let mut todo: Vec<usize> = (0..cmds.len()).collect();
    for _ in 0..10 {
        if todo.is_empty() {
            break;
        }
        let (tx, rx) = mpsc::channel();
        for &i in &todo {
            let tx = tx.clone();
            let (cdb, data) = cmds[i].clone();
            c.submit(
                LUN1,
                &cdb,
                data,
                Box::new(move |r| {
                    let _ = tx.send((i, r));
                    None
                }),
            );
        }
        drop(tx);
        let mut again = Vec::new();
        for (i, r) in rx.iter() {
            let r = r.expect("the client gave up");
            if r.status == 2 && r.sense.get(2).map(|k| k & 0xf) == Some(6) {
                again.push(i);
            } else {
                results[i] = Some(r);
            }
        }
        todo = again;
    }
    results
        .into_iter()
        .map(|r| r.expect("unit attentions did not clear"))
        .collect()
}

#[test]
fn client_reinstates_the_session_after_a_target_restart_and_loses_no_write() {
    target_restart_loses_no_write(false);
}

#[test]
fn an_attached_receiver_completes_commands_and_survives_a_target_restart() {
    target_restart_loses_no_write(true);
}

/// How long a test waits for something that takes milliseconds unless the
/// machine is loaded: long enough that a loaded machine cannot fail it.
const WAIT: Duration = Duration::from_secs(30);

/// Stop tgtd (SIGSTOP) and wait until every thread of it is stopped: from
/// then on it reads and answers nothing.
fn freeze(t: &Tgt) {
    // SAFETY: kill() on the tgtd this test started (not reaped: it is
    // only killed and waited for by `Tgt`).
    unsafe { libc::kill(t.child.id() as i32, libc::SIGSTOP) };
    wait_for("tgtd to stop", WAIT, || kernel::stopped(t.child.id()));
}

/// An event loop receiving for `client` (what a request-queue worker does)
/// on a thread named "receiver", until the returned flag is set.
fn receive_loop(client: &Client) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let stop = Arc::new(AtomicBool::new(false));
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            client.receive_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    let guard = client.attach_receiver();
    let (c, flag) = (client.clone(), stop.clone());
    let h = std::thread::Builder::new()
        .name("receiver".into())
        .spawn(move || {
            let _guard = guard;
            let mut ev = [EpollEvent::default(); 1];
            while !flag.load(Ordering::SeqCst) {
                if epoll.wait(50, &mut ev).unwrap_or(0) > 0 {
                    c.receive();
                }
            }
        })
        .unwrap();
    (stop, h)
}

fn target_restart_loses_no_write(attached: bool) {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:recover");
    t.bind_all(tid);
    let client = vhost_user_scsi::iscsi::client::Client::start(
        "test",
        vec![t.addr()],
        params(Some("iqn.2026-11.test:recover")),
        vhost_user_scsi::iscsi::client::Options::default(),
    )
    .unwrap();
    let receiver = attached.then(|| receive_loop(&client));
    if attached {
        // Answers are handled by the attached loop, not the session thread.
        let (tx, rx) = std::sync::mpsc::channel();
        client.submit(
            LUN1,
            &read16(0, 8),
            Data::Read(4096),
            Box::new(move |_| {
                let _ = tx.send(std::thread::current().name().map(String::from));
                None
            }),
        );
        let on = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(on.as_deref(), Some("receiver"));
    }
    let pattern = |i: u64| -> Vec<u8> { (0..4096u64).map(|b| (b * 31 + i * 7) as u8).collect() };
    let writes = |from: u64| {
        (from..from + 16)
            .map(|i| (write16(i * 8, 8), Data::Write(pattern(i))))
            .collect()
    };
    for r in run_async(&client, writes(0)) {
        assert_eq!(r.status, 0, "{r:?}");
    }
    // Freeze the target so the next writes are surely in flight when it
    // dies, then kill and restart it: the client must reinstate the session
    // and send the unfinished writes again.
    freeze(&t);
    let queued = t.queued();
    let (tx, rx) = std::sync::mpsc::channel();
    let batch: Vec<(Vec<u8>, Data)> = writes(16);
    for (i, (cdb, data)) in (16..32u64).zip(batch) {
        let tx = tx.clone();
        client.submit(
            LUN1,
            &cdb,
            data,
            Box::new(move |r| {
                let _ = tx.send((i, r));
                None
            }),
        );
    }
    drop(tx);
    // They went out: the frozen target's end of the connection holds them
    // (or as much of them as its window takes), unread.
    wait_for("the writes to reach the frozen target", WAIT, || {
        t.queued() > queued
    });
    t.restart(&[(tid, "iqn.2026-11.test:recover")]);
    let mut retry = Vec::new();
    for (i, r) in rx.iter() {
        let r = r.expect("the client gave up");
        if r.status != 0 {
            // The new session's unit attention: write again.
            assert_eq!(r.sense.get(2).map(|k| k & 0xf), Some(6), "{r:?}");
            retry.push((write16(i * 8, 8), Data::Write(pattern(i))));
        }
    }
    for r in run_async(&client, retry) {
        assert_eq!(r.status, 0, "{r:?}");
    }
    let reads = (0..32u64)
        .map(|i| (read16(i * 8, 8), Data::Read(4096)))
        .collect();
    for (i, r) in run_async(&client, reads).into_iter().enumerate() {
        assert_eq!(r.status, 0);
        assert!(r.data == pattern(i as u64), "write {i} was lost");
    }
    if let Some((stop, h)) = receiver {
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        // Detached: the session thread receives again.
        let r = one(&client, &read16(0, 8), Data::Read(4096)).unwrap();
        assert_eq!(r.status, 0);
    }
    client.shutdown();
}

#[test]
fn client_fails_over_to_the_next_portal_when_one_dies() {
    // Two tgtd instances export the same backing file: two portals of "one"
    // target (bstype rdwr does not cache, so both see the same blocks).
    let img = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
    img.as_file().set_len(16 << 20).unwrap();
    let name = "iqn.2026-11.test:portals";
    let mut a = Tgt::start();
    let b = Tgt::start();
    for t in [&a, &b] {
        t.create(1, name, img.path());
        t.bind_all(1);
    }
    a.next_tid = 2;
    // The first portal in the list is dead from the start: skipped.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let client = vhost_user_scsi::iscsi::client::Client::start(
        "portals",
        vec![dead, a.addr(), b.addr()],
        params(Some(name)),
        vhost_user_scsi::iscsi::client::Options::default(),
    )
    .unwrap();
    let pattern = |i: u64| -> Vec<u8> { (0..4096u64).map(|x| (x * 13 + i) as u8).collect() };
    let w = |r: std::ops::Range<u64>| {
        r.map(|i| (write16(i * 8, 8), Data::Write(pattern(i))))
            .collect()
    };
    for r in run_async(&client, w(0..8)) {
        assert_eq!(r.status, 0, "{r:?}");
    }
    // Portal a goes away for good: the session moves to b.
    let _ = a.child.kill();
    let _ = a.child.wait();
    for r in run_async(&client, w(8..16)) {
        assert_eq!(r.status, 0, "{r:?}");
    }
    let reads = (0..16u64)
        .map(|i| (read16(i * 8, 8), Data::Read(4096)))
        .collect();
    for (i, r) in run_async(&client, reads).into_iter().enumerate() {
        assert!(
            r.data == pattern(i as u64),
            "block {i} differs after failover"
        );
    }
    client.shutdown();
    drop(b);
}

#[test]
fn reservation_is_reestablished_after_the_session_is_reinstated() {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:prkeep");
    t.bind_all(tid);
    let client = vhost_user_scsi::iscsi::client::Client::start(
        "prkeep",
        vec![t.addr()],
        params(Some("iqn.2026-11.test:prkeep")),
        vhost_user_scsi::iscsi::client::Options::default(),
    )
    .unwrap();
    let prout = |sa: u8, ty: u8, rk: u64, sark: u64| {
        let mut p = rk.to_be_bytes().to_vec();
        p.extend_from_slice(&sark.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        (vec![0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0], Data::Write(p))
    };
    // Register 0x77, then hold Write Exclusive (one after the other: the
    // session's first command draws a unit attention and is resent).
    for cmd in [prout(0, 0, 0, 0x77), prout(1, 1, 0x77, 0)] {
        let r = run_async(&client, vec![cmd]);
        assert_eq!(r[0].status, 0, "{:?}", r[0]);
    }
    let w = |i: u64| (write16(i, 8), Data::Write(vec![i as u8; 4096]));
    assert_eq!(run_async(&client, vec![w(0)])[0].status, 0);
    // The target drops the connection (its PR state stays, tied to the old
    // session).
    let out = Command::new("tgtadm")
        .args([
            "-C",
            &t.ctl,
            "--lld",
            "iscsi",
            "--mode",
            "conn",
            "--op",
            "show",
            "--tid",
            &tid.to_string(),
        ])
        .env("TGT_IPC_SOCKET", t.dir.path().join("ipc"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let sid = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Session: "))
        .expect("no session listed")
        .trim()
        .to_string();
    t.adm(&[
        "--mode",
        "conn",
        "--op",
        "delete",
        "--tid",
        &tid.to_string(),
        "--sid",
        &sid,
        "--cid",
        "0",
    ]);
    // Writes go on succeeding: the client re-registered and took the
    // reservation back on the new session.
    for r in run_async(&client, (1..9).map(w).collect()) {
        assert_eq!(r.status, 0, "write after reinstatement: {r:?}");
    }
    let keys = run_async(
        &client,
        vec![(vec![0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], Data::Read(256))],
    );
    let k = &keys[0].data;
    let n = u32::from_be_bytes(k[4..8].try_into().unwrap()) as usize / 8;
    let listed: Vec<u64> = (0..n)
        .map(|i| u64::from_be_bytes(k[8 + 8 * i..16 + 8 * i].try_into().unwrap()))
        .collect();
    assert_eq!(listed, vec![0x77], "stale registration left behind");
    client.shutdown();
}

fn client(t: &Tgt, target: &str, initiator: &str, options: Options) -> Client {
    let mut p = params(Some(target));
    p.initiator_name = initiator.into();
    p.isid[5] = initiator.len() as u8;
    Client::start(initiator, vec![t.addr()], p, options).unwrap()
}

/// Submit one command and wait for its outcome.
fn one(c: &Client, cdb: &[u8], data: Data) -> Result<Completion, Failure> {
    let (tx, rx) = std::sync::mpsc::channel();
    c.submit(
        LUN1,
        cdb,
        data,
        Box::new(move |r| {
            let _ = tx.send(r);
            None
        }),
    );
    rx.recv_timeout(Duration::from_secs(60))
        .expect("no answer within a minute")
}

#[test]
fn task_management_reaches_the_target_and_aborts_what_waits_here() {
    let mut t = Tgt::start();
    let (tid, _) = t.target("iqn.2026-11.test:tmf");
    t.bind_all(tid);
    let name = "iqn.2026-11.test:tmf";
    let a = client(&t, name, "iqn.2026-11.test:tmf-a", Options::default());
    let b = client(&t, name, "iqn.2026-11.test:tmf-b", Options::default());
    let tur = || (vec![0u8; 6], Data::None);
    for c in [&a, &b] {
        run_async(c, vec![tur()]);
    }
    // LOGICAL UNIT RESET from a: the target resets the LU, which the other
    // nexus sees as a unit attention (29h: reset occurred).
    assert_eq!(
        a.task_management(TmfFunction::LogicalUnitReset, LUN1, None),
        Ok(TmfResponse::FunctionComplete)
    );
    let r = one(&b, &[0; 6], Data::None).unwrap();
    assert_eq!((r.status, r.sense.get(12)), (2, Some(&0x29)), "{r:?}");
    // ABORT TASK of a command that is not outstanding: no such task.
    assert_eq!(
        a.task_management(TmfFunction::AbortTask, LUN1, Some(12345)),
        Ok(TmfResponse::TaskDoesNotExist)
    );
    // With the target gone, a command waits for a new session; a LUN reset
    // then aborts it here at once instead of waiting for the target.
    let _ = t.child.kill();
    let _ = t.child.wait();
    let (tx, rx) = std::sync::mpsc::channel();
    a.submit(
        LUN1,
        &write16(0, 8),
        Data::Write(vec![7; 4096]),
        Box::new(move |r| {
            let _ = tx.send(r);
            None
        }),
    );
    // The client saw the connection go (it may have sent the write on it
    // first): the write is held for the next session.
    wait_for("the client to see the target gone", WAIT, || {
        let s = a.status();
        (s.state, s.pending) == ("down", 1)
    });
    let start = Instant::now();
    assert_eq!(
        a.task_management(TmfFunction::LogicalUnitReset, LUN1, None),
        Ok(TmfResponse::FunctionComplete)
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        Err(Failure::Reset)
    );
    a.shutdown();
    b.shutdown();
}

#[test]
fn commands_fail_after_the_recovery_timeout_and_work_again_when_the_target_returns() {
    let mut t = Tgt::start();
    let name = "iqn.2026-11.test:recovery";
    let (tid, _) = t.target(name);
    t.bind_all(tid);
    let recovery = Duration::from_secs(4);
    let c = client(
        &t,
        name,
        "iqn.2026-11.test:recovery-i",
        Options {
            recovery_timeout: Some(recovery),
            ..Options::default()
        },
    );
    run_async(&c, vec![(vec![0u8; 6], Data::None)]);
    // The recovery timeout runs from when the client saw the connection
    // go, which is after this instant and may be before the command below
    // is sent: measure from here.
    let killed = Instant::now();
    let _ = t.child.kill();
    let _ = t.child.wait();
    assert_eq!(
        one(&c, &read16(0, 8), Data::Read(4096)),
        Err(Failure::Timeout)
    );
    let waited = killed.elapsed();
    assert!(waited >= recovery && waited < recovery * 8, "{waited:?}");
    // Past the timeout, new commands fail at once (the guest can use
    // another path) until a session is back: well before the timeout they
    // would wait for if they waited.
    let start = Instant::now();
    assert_eq!(
        one(&c, &read16(0, 8), Data::Read(4096)),
        Err(Failure::Timeout)
    );
    assert!(start.elapsed() < recovery * 3 / 4, "{:?}", start.elapsed());
    t.restart(&[(tid, name)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match one(&c, &read16(0, 8), Data::Read(4096)) {
            Ok(r) if r.status == 0 => break,
            // The new session's unit attention, or not reconnected yet.
            Ok(_) | Err(Failure::Timeout) => {}
            Err(e) => panic!("{e:?}"),
        }
        assert!(Instant::now() < deadline, "the session did not come back");
        sleep(Duration::from_millis(200));
    }
    c.shutdown();
}

#[test]
fn i_t_nexus_reset_closes_the_session_and_logs_in_again() {
    let mut t = Tgt::start();
    let name = "iqn.2026-11.test:nexus";
    let (tid, _) = t.target(name);
    t.bind_all(tid);
    let c = client(&t, name, "iqn.2026-11.test:nexus-i", Options::default());
    run_async(&c, vec![(write16(0, 8), Data::Write(vec![5; 4096]))]);
    let before = t.nexuses(tid);
    assert_eq!(before.len(), 1, "{before:?}");
    c.reset_nexus();
    let r = run_async(&c, vec![(read16(0, 8), Data::Read(4096))]);
    assert_eq!(r[0].status, 0);
    assert!(r[0].data == vec![5; 4096]);
    // A new session replaced the old one at the target.
    let after = t.nexuses(tid);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(before, after);
    c.shutdown();
}

#[test]
fn the_daemon_answers_task_set_full_past_its_iscsi_buffer_budget() {
    let mut t = Tgt::start();
    let name = "iqn.2026-11.test:budget";
    let tid = t.next_tid;
    t.next_tid += 1;
    let tids = tid.to_string();
    t.adm(&[
        "--mode",
        "target",
        "--op",
        "new",
        "--tid",
        &tids,
        "--targetname",
        name,
    ]);
    t.adm(&[
        "--mode",
        "logicalunit",
        "--op",
        "new",
        "--tid",
        &tids,
        "--lun",
        "1",
        "--bstype",
        "null",
        "--backing-store",
        "budget_null",
    ]);
    t.bind_all(tid);
    let d = Daemon::serve(&format!("iscsi://{}/{name}/1", t.addr()));
    let bench = |args: &[&str]| d.bench(&[&["--rw", "write"], args].concat());
    // 16 writes of 32 MiB at once: 8 fit the 256 MiB budget, the others
    // are answered TASK SET FULL (the load generator counts them as errors;
    // a guest retries them).
    let r = bench(&["--bs", "32M", "--qd", "16", "--ios", "16"]);
    assert!(r.contains("\"ios\":8,\"errors\":8,"), "{r}");
    // The budget came back: ordinary I/O flows.
    let r = bench(&["--bs", "4K", "--qd", "8", "--ios", "200"]);
    assert!(r.contains("\"ios\":200,\"errors\":0,"), "{r}");
    d.stop();
}

/// The daemon serving one LUN, and the load generator against it.
struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Daemon {
    fn serve(lun: &str) -> Daemon {
        Daemon::serve_with("", lun)
    }

    /// Serve `lun` on a socket with options `opts` (",name=value...").
    fn serve_with(opts: &str, lun: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let mut spec = sock.clone().into_os_string();
        spec.push(opts);
        let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
            .args(["serve", "--socket"])
            .arg(&spec)
            .args(["--lun", lun])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            sleep(Duration::from_millis(50));
        }
        Daemon {
            child,
            _dir: dir,
            sock,
        }
    }

    /// Run `bench` with `args`; its JSON result.
    fn bench(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
            .args(["bench", "--json", "--socket"])
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop(mut self) {
        // SAFETY: kill() on the daemon this test started (not yet reaped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Daemon {
    /// A failed test must not leave its daemon running (it would hold the
    /// test harness's output open).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn data_through_the_daemon_verifies_on_two_queues_with_and_without_digests() {
    // Written and read back by the load generator on two queues of one
    // controller (one session: one worker receives and completes the other
    // queue's commands), in sizes that go straight between guest memory
    // and the socket (1 MiB, 128 KiB) and that are copied (4 KiB).
    let mut t = Tgt::start();
    let name = "iqn.2026-11.test:verify";
    t.digest_target(name);
    for opts in ["", ",header-digest,data-digest"] {
        let d = Daemon::serve(&format!("iscsi://{}/{name}/1{opts}", t.addr()));
        for (bs, pairs) in [("1M", 48), ("128K", 200), ("4K", 1000)] {
            let n = pairs.to_string();
            let args = [
                "--verify", "--queues", "2", "--qd", "4", "--bs", bs, "--ios", &n,
            ];
            let r = d.bench(&args);
            // Each pair is a write and its read-back.
            let want = format!("\"ios\":{},\"errors\":0,\"verify_failures\":0", 2 * pairs);
            assert!(r.contains(&want), "{bs}{opts}: {r}");
        }
        d.stop();
    }
}

/// A number field of the load generator's JSON result.
fn json_number(json: &str, field: &str) -> f64 {
    let key = format!("\"{field}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {json}"))
        + key.len();
    let end = json[at..].find([',', '}']).map_or(json.len(), |e| at + e);
    json[at..end].parse().unwrap()
}

#[test]
fn data_verifies_with_notifications_and_answers_coalesced() {
    // Notifications held up to 1 ms, and the target's answers received
    // in batches (waiting up to 1 ms), both from one command in flight,
    // on two queues sharing one session: every command completes and its
    // data verifies. (When held notifications and answers are released is
    // shown deterministically by the device's unit tests and by the
    // scripted target in tests/iscsi_fake.rs.)
    let mut t = Tgt::start();
    let name = "iqn.2026-11.test:coalesce";
    let (tid, _) = t.target(name);
    t.bind_all(tid);
    let lun = format!("iscsi://{}/{name}/1,coalesce-us=1000", t.addr());
    let d = Daemon::serve_with(",queues=2,coalesce-us=1000,coalesce-depth=1", &lun);
    for bs in ["4K", "128K"] {
        let args = [
            "--verify", "--queues", "2", "--qd", "16", "--bs", bs, "--ios", "3000",
        ];
        let r = d.bench(&args);
        assert!(
            r.contains("\"ios\":6000,\"errors\":0,\"verify_failures\":0"),
            "{bs}: {r}"
        );
        // The load generator counted the notifications it got.
        assert!(json_number(&r, "notifications_per_io") > 0.0, "{r}");
    }
    d.stop();
}

#[test]
fn shutdown_answers_what_a_frozen_target_owes_at_once() {
    let mut t = Tgt::start();
    let name = "iqn.2026-11.test:frozen";
    let (tid, _) = t.target(name);
    t.bind_all(tid);
    let c = client(&t, name, "iqn.2026-11.test:frozen-i", Options::default());
    run_async(&c, vec![(vec![0u8; 6], Data::None)]);
    freeze(&t);
    // Log in again: the TCP connection is accepted by the kernel, the
    // login is never answered, so the session thread sits in the login.
    c.reset_nexus();
    wait_for("the Login Request to wait at the frozen tgtd", WAIT, || {
        // A connection tgtd has not accepted (no descriptor holds it),
        // with bytes in it.
        kernel::tcp_sockets().iter().any(|s| {
            (s.local_port, s.state, s.inode) == (t.port, kernel::ESTABLISHED, 0) && s.rx_queue > 0
        })
    });
    let (tx, rx) = std::sync::mpsc::channel();
    c.submit(
        LUN1,
        &read16(0, 8),
        Data::Read(4096),
        Box::new(move |r| {
            let _ = tx.send(r);
            None
        }),
    );
    // With no session, submit holds the read for the next one before it
    // returns: nothing to wait for.
    let s = c.status();
    assert_eq!((s.state, s.pending), ("down", 1));
    let start = Instant::now();
    c.shutdown();
    let r = rx.recv_timeout(Duration::from_secs(5));
    let took = start.elapsed();
    // Thaw tgtd before asserting: its teardown talks to it.
    // SAFETY: kill() on the tgtd this test started, not reaped.
    unsafe { libc::kill(t.child.id() as i32, libc::SIGCONT) };
    assert_eq!(r, Ok(Err(Failure::Shutdown)));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn large_transfers_arrive_intact_in_buffers_and_sinks_with_and_without_digests() {
    let mut t = Tgt::start();
    let name = "iqn.2026-11.test:large";
    t.digest_target(name);
    for digests in [false, true] {
        let mut p = params(Some(name));
        p.header_digest = digests;
        p.data_digest = digests;
        p.max_recv_data_segment_length = 1 << 20;
        p.isid[5] = 0x40 | u8::from(digests);
        let c = Client::start("large", vec![t.addr()], p, Options::default()).unwrap();
        // 4 MiB in 1 MiB writes, read back as 1 MiB and 256 KiB reads all
        // in flight at once: the big Data-In segments go through the
        // receive path that reads them into their own buffers.
        let pattern = |i: u64| -> Vec<u8> {
            (0..1u64 << 20)
                .map(|b| (b * 131 + i * 17 + u64::from(digests)) as u8)
                .collect()
        };
        let writes = (0..4u64)
            .map(|i| (write16(i * 2048, 2048), Data::Write(pattern(i))))
            .collect();
        for r in run_async(&c, writes) {
            assert_eq!(r.status, 0, "{r:?}");
        }
        let mut reads: Vec<(Vec<u8>, Data)> = (0..4u64)
            .map(|i| (read16(i * 2048, 2048), Data::Read(1 << 20)))
            .collect();
        reads.extend((0..4u64).map(|i| (read16(i * 512, 512), Data::Read(256 << 10))));
        let got = run_async(&c, reads);
        for (i, r) in got[..4].iter().enumerate() {
            assert!(r.data == pattern(i as u64), "1 MiB read {i} differs");
        }
        let all: Vec<u8> = (0..4u64).flat_map(pattern).collect();
        for (i, (r, want)) in got[4..].iter().zip(all.chunks(256 << 10)).enumerate() {
            assert!(r.data == want, "256 KiB read {i} differs");
        }
        // The same reads into sinks (what the daemon does with guest
        // memory): without a data digest the big segments go from the
        // socket straight into the sink.
        let sinks: Vec<Arc<VecSink>> = (0..4)
            .map(|_| Arc::new(VecSink::new(1 << 20)))
            .chain((0..4).map(|_| Arc::new(VecSink::new(256 << 10))))
            .collect();
        let reads: Vec<(Vec<u8>, Data)> = (0..8u64)
            .map(|i| {
                let (lba, blocks) = if i < 4 {
                    (i * 2048, 2048)
                } else {
                    ((i - 4) * 512, 512)
                };
                (
                    read16(lba, blocks),
                    Data::ReadInto(SinkRef(sinks[i as usize].clone())),
                )
            })
            .collect();
        for (i, r) in run_async(&c, reads).iter().enumerate() {
            assert_eq!(r.status, 0, "{r:?}");
            assert!(r.data.is_empty());
            assert_eq!(r.placed as usize, sinks[i].size());
            let want = if i < 4 {
                pattern(i as u64)
            } else {
                all.chunks(256 << 10).nth(i - 4).unwrap().to_vec()
            };
            assert!(
                *sinks[i].buf.lock().unwrap() == want,
                "read {i} into a sink differs"
            );
        }
        // With a data digest too: it is checked over what landed in the
        // sink.
        let direct: usize = sinks.iter().map(|k| k.direct.load(Ordering::SeqCst)).sum();
        assert!(
            direct > 3 << 20,
            "only {direct} bytes went straight into the sinks"
        );
        // Writes sent from a source (what the daemon does with guest
        // memory), read back.
        let other = |i: u64| -> Vec<u8> { pattern(i).iter().map(|b| b ^ 0x5a).collect() };
        let writes = (0..4u64)
            .map(|i| {
                let src = SourceRef(Arc::new(VecSource(other(i))));
                (write16(i * 2048, 2048), Data::WriteFrom(src))
            })
            .collect();
        for r in run_async(&c, writes) {
            assert_eq!(r.status, 0, "{r:?}");
        }
        let reads = (0..4u64)
            .map(|i| (read16(i * 2048, 2048), Data::Read(1 << 20)))
            .collect();
        for (i, r) in run_async(&c, reads).iter().enumerate() {
            assert!(
                r.data == other(i as u64),
                "1 MiB write {i} from a source differs"
            );
        }
        c.shutdown();
    }
}

/// Write data in process memory.
struct VecSource(Vec<u8>);

impl Source for VecSource {
    fn size(&self) -> usize {
        self.0.len()
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
        match self.0.get(offset..offset + buf.len()) {
            Some(d) => {
                buf.copy_from_slice(d);
                true
            }
            None => false,
        }
    }

    fn iovecs(&self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) -> bool {
        let Some(d) = self.0.get(offset..offset + len) else {
            return false;
        };
        out.push(libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        });
        true
    }
}

/// A sink in process memory, counting what it received from the socket.
struct VecSink {
    buf: std::sync::Mutex<Vec<u8>>,
    direct: std::sync::atomic::AtomicUsize,
}

impl VecSink {
    fn new(len: usize) -> VecSink {
        VecSink {
            buf: std::sync::Mutex::new(vec![0; len]),
            direct: Default::default(),
        }
    }
}

impl Sink for VecSink {
    fn size(&self) -> usize {
        self.buf.lock().unwrap().len()
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> bool {
        let mut b = self.buf.lock().unwrap();
        match b.get_mut(offset..offset + data.len()) {
            Some(d) => {
                d.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    fn read_from(
        &self,
        fd: std::os::fd::RawFd,
        offset: usize,
        len: usize,
        after: &mut [u8],
    ) -> Option<std::io::Result<usize>> {
        let mut b = self.buf.lock().unwrap();
        let d = b.get_mut(offset..offset + len)?;
        let iov = [
            libc::iovec {
                iov_base: d.as_mut_ptr().cast(),
                iov_len: len,
            },
            libc::iovec {
                iov_base: after.as_mut_ptr().cast(),
                iov_len: after.len(),
            },
        ];
        // SAFETY: readv(2) into `len` bytes of the locked buffer and into
        // `after`, both borrowed mutably for the call.
        let r = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
        let r = usize::try_from(r).map_err(|_| std::io::Error::last_os_error());
        if let Ok(n) = r {
            self.direct.fetch_add(n.min(len), Ordering::SeqCst);
        }
        Some(r)
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
        match self.buf.lock().unwrap().get(offset..offset + buf.len()) {
            Some(d) => {
                buf.copy_from_slice(d);
                true
            }
            None => false,
        }
    }
}

/// Run the binary with `args` and RUST_LOG=trace, with a deadline; its
/// stdout and stderr together. Once a daemon listens, `then` runs with its
/// socket, and the daemon is stopped with SIGTERM.
fn printed(args: &[String], then: &dyn Fn(&str)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
        .args(args)
        .env("RUST_LOG", "trace")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let listening = text.contains("Listening on");
        if listening {
            if let Some(i) = args.iter().position(|a| a == "--socket") {
                then(&args[i + 1]);
            }
        }
        if listening || Instant::now() > deadline {
            // SAFETY: kill() on the child this test started, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
            break;
        }
        sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(&out_path).unwrap()
}

#[test]
fn no_secret_reaches_anything_printed() {
    let mut t = Tgt::start();
    let name = "iqn.2026-11.test:secrets";
    let (tid, _) = t.target(name);
    t.bind_all(tid);
    t.account(tid, "alice", "alicesecret12", false);
    t.account(tid, "tgtuser", "targetsecret1", true);
    // Every secret given, right or wrong, and the target's own.
    let secrets = [
        "alicesecret12",
        "targetsecret1",
        "wrongurlsecret7",
        "wrongfilesecret8",
        "wrongmutual9999",
    ];
    let dir = tempfile::tempdir().unwrap();
    let creds = |file: &str, password: &str, mutual: Option<&str>| {
        let p = dir.path().join(file);
        let mut text = format!("user = alice\npassword = {password}\n");
        if let Some(m) = mutual {
            text.push_str(&format!("target-user = tgtuser\ntarget-password = {m}\n"));
        }
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let right = creds("right.chap", "alicesecret12", Some("targetsecret1"));
    let wrong = creds("wrong.chap", "wrongfilesecret8", None);
    let wrong_mutual = creds("mutual.chap", "alicesecret12", Some("wrongmutual9999"));
    let garbled = dir.path().join("garbled.chap");
    std::fs::write(&garbled, "user = alice\npassword alicesecret12\n").unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = t.addr();
    let sock = dir.path().join("s.sock").display().to_string();
    let serve = |lun: String| -> Vec<String> {
        vec![
            "serve".into(),
            "--socket".into(),
            sock.clone(),
            "--lun".into(),
            lun,
        ]
    };
    let mut runs: Vec<(&str, Vec<String>, bool)> = vec![
        (
            "wrong password in the URL",
            serve(format!("iscsi://alice%wrongurlsecret7@{addr}/{name}/1")),
            false,
        ),
        (
            "wrong password in a credentials file",
            serve(format!("iscsi://{addr}/{name}/1,credentials={wrong}")),
            false,
        ),
        (
            "the target fails mutual CHAP",
            serve(format!(
                "iscsi://{addr}/{name}/1,credentials={wrong_mutual}"
            )),
            false,
        ),
        (
            "a garbled credentials file",
            serve(format!(
                "iscsi://{addr}/{name}/1,credentials={}",
                garbled.display()
            )),
            false,
        ),
        (
            "an unreachable portal",
            serve(format!(
                "iscsi://alice%alicesecret12@127.0.0.1:{closed}/{name}/1"
            )),
            false,
        ),
        (
            "an unknown LUN option",
            serve(format!(
                "iscsi://alice%alicesecret12@{addr}/{name}/1,bogus=1"
            )),
            false,
        ),
        (
            "an unbracketed IPv6 host",
            serve(format!("iscsi://alice%alicesecret12@fe80::1/{name}/1")),
            false,
        ),
        (
            "a URL that does not parse",
            serve(format!("iscsi://alice%alicesecret12@[::1/{name}/1")),
            false,
        ),
        (
            "a URL as the socket",
            vec![
                "serve".into(),
                "--socket".into(),
                format!("iscsi://alice%alicesecret12@{addr}/{name}/1"),
            ],
            false,
        ),
        (
            "discovery of an unreachable portal, password in the URL",
            vec![
                "discover".into(),
                format!("iscsi://alice%wrongurlsecret7@127.0.0.1:{closed}"),
            ],
            false,
        ),
        (
            "discovery with a credentials file",
            vec![
                "discover".into(),
                format!("iscsi://{addr}"),
                "--credentials".into(),
                right.clone(),
            ],
            true,
        ),
    ];
    // And a daemon that logs in (password in the URL, mutual CHAP from a
    // file), serves a load generator, and stops, with every log level on.
    runs.push((
        "a daemon that serves",
        serve(format!(
            "iscsi://alice%alicesecret12@{addr}/{name}/1,credentials={right}"
        )),
        true,
    ));
    let bench = |sock: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"))
            .args([
                "bench", "--json", "--verify", "--ios", "200", "--socket", sock,
            ])
            .output()
            .unwrap();
        let r = String::from_utf8_lossy(&out.stdout);
        assert!(r.contains("\"errors\":0,\"verify_failures\":0"), "{r}");
    };
    for (what, args, ok) in runs {
        let then: &dyn Fn(&str) = if ok { &bench } else { &|_| {} };
        let text = printed(&args, then);
        if ok {
            assert!(!text.contains("rror"), "{what}: {text}");
            if args[0] == "serve" {
                assert!(text.contains(": logged in to "), "{what}: {text}");
            }
        } else {
            assert!(!text.trim().is_empty(), "{what}: nothing printed");
        }
        for s in secrets {
            assert!(!text.contains(s), "{what}: {s} printed in:\n{text}");
        }
    }
}
