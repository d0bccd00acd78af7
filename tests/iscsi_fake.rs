// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The initiator against a scripted target on loopback, for behaviour tgt
//! does not show: login redirects (temporary and permanent), portals learnt
//! by SendTargets and used for failover, and asynchronous SCSI events.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

mod common;

use common::kernel;
use vhost_user_scsi::iscsi::chap;
use vhost_user_scsi::iscsi::client::{Client, Coalescing, Failure, Options};
use vhost_user_scsi::iscsi::login::LoginParams;
use vhost_user_scsi::iscsi::pdu::{self, Digests, Opcode, Pdu};
use vhost_user_scsi::iscsi::session::{Completion, Data};
use vhost_user_scsi::iscsi::text;

const TARGET: &str = "iqn.2026-11.test:fake";
const LUN1: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

#[derive(Clone)]
enum Role {
    /// Answer every login with a redirect.
    Redirect { to: String, permanent: bool },
    /// Logins succeed; SendTargets lists `portals`; every SCSI command
    /// gets GOOD; `event` (sense data) is sent as an asynchronous SCSI
    /// event after each normal login.
    Target {
        portals: Vec<String>,
        event: Option<Vec<u8>>,
    },
    /// A target that answers SCSI commands (GOOD) only when the test
    /// releases them (`Gate::release`), in the order they came. A READ(10)
    /// is answered with its data (byte i is `i * 7`) in 64 KiB Data-In
    /// PDUs, each held and released on its own, the last with status.
    Gated(Arc<Gate>),
    /// Logins succeed; at the first WRITE(10) it stops reading for good,
    /// yet goes on talking: a NOP-In every 100 ms, each opening the
    /// command window wide.
    Deaf,
    /// Closes the connection at the first Login Request, as LIO does when
    /// a target that requires CHAP is offered AuthMethod=None.
    Hangup,
    /// Answers every login with status 0301h, service unavailable (a
    /// node in maintenance).
    Unavailable,
    /// Logins succeed and every SCSI command gets GOOD, except that the
    /// first session ends after its first command: announced by an
    /// Asynchronous Message 3 whose Time2Wait is `time2wait`
    /// (`announce`), or unannounced after negotiating
    /// DefaultTime2Wait=`time2wait`. `times` gets when that session ended,
    /// then when each later login began.
    Drops {
        announce: bool,
        time2wait: u16,
        times: Arc<std::sync::Mutex<Vec<Instant>>>,
    },
    /// Logins succeed and every SCSI command gets GOOD; after each login
    /// the target asks to negotiate (Asynchronous Message 4) and answers
    /// the Text Request by declaring MaxRecvDataSegmentLength=4096.
    Renegotiates(Arc<Renegotiation>),
    /// Logins succeed and every SCSI command gets GOOD, except the first
    /// session's first, which is rejected with "waiting for logout" (0Ch).
    WantsLogout,
}

/// What a `Role::Renegotiates` target saw.
#[derive(Default)]
struct Renegotiation {
    /// Text Requests answered (the second one, the initiator's answer to
    /// "not done", comes after it applied the new length).
    asked: AtomicUsize,
    /// The largest data segment of a SCSI Command or Data-Out since the
    /// last declaration.
    largest: AtomicUsize,
}

/// Answers held back by a `Role::Gated` target.
#[derive(Default)]
struct Gate {
    held: std::sync::Mutex<Vec<Vec<u8>>>,
    stream: std::sync::Mutex<Option<TcpStream>>,
}

impl Gate {
    /// Wait until `n` answers are held (the commands reached the target).
    fn wait_held(&self, n: usize) {
        let start = Instant::now();
        while self.held.lock().unwrap().len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "commands not sent"
            );
            sleep(Duration::from_millis(5));
        }
    }

    /// Wait until the client took in what was released: every byte of it
    /// is at the client's end of the connection (acknowledged), and what
    /// the client has not read of it stays below its socket's receive
    /// low-water mark, so that it will not read more before more comes
    /// (or its timer ends the wait). Its wait for the rest is set from
    /// what it received.
    fn wait_taken_in(&self) {
        let (ours, theirs) = {
            let s = self.stream.lock().unwrap();
            let s = s.as_ref().unwrap();
            (
                s.local_addr().unwrap().port(),
                s.peer_addr().unwrap().port(),
            )
        };
        let end = |sockets: &[kernel::TcpSocket], from: u16, to: u16| {
            sockets
                .iter()
                .find(|s| (s.local_port, s.remote_port, s.state) == (from, to, kernel::ESTABLISHED))
                .copied()
        };
        // The client is this process: one of its descriptors is the socket.
        let inode = end(&kernel::tcp_sockets(), theirs, ours)
            .expect("the client's end of the connection")
            .inode;
        let fd = kernel::own_fd(inode).expect("the client's socket among ours");
        kernel::wait_for(
            "the client to take in the answers",
            Duration::from_secs(30),
            || {
                let sockets = kernel::tcp_sockets();
                let (Some(sent), Some(got)) =
                    (end(&sockets, ours, theirs), end(&sockets, theirs, ours))
                else {
                    return false;
                };
                sent.tx_queue == 0 && (got.rx_queue as usize) < receive_low_water(fd)
            },
        );
    }

    /// Send the first `n` held answers, in one write.
    fn release(&self, n: usize) {
        let wire: Vec<u8> = self.held.lock().unwrap().drain(..n).flatten().collect();
        let mut s = self.stream.lock().unwrap();
        s.as_mut().unwrap().write_all(&wire).unwrap();
    }

    /// Send the held answer at `i` (ahead of those before it).
    fn release_at(&self, i: usize) {
        let wire = self.held.lock().unwrap().remove(i);
        let mut s = self.stream.lock().unwrap();
        s.as_mut().unwrap().write_all(&wire).unwrap();
    }
}

/// The receive low-water mark (`SO_RCVLOWAT`) of socket `fd`.
fn receive_low_water(fd: std::os::fd::RawFd) -> usize {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live local and
    // updates `len`; a descriptor that is not a socket only makes it fail.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    usize::try_from(v).unwrap()
}

struct Fake {
    addr: String,
    /// Sessions logged in (not counting the client's checks at start).
    logins: Arc<AtomicUsize>,
    /// The client's checks at start (see `serve`).
    checks: Arc<AtomicUsize>,
    /// Sessions logged out (not counting checks).
    logouts: Arc<AtomicUsize>,
    commands: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Threads still serving the portal: its accept loop and one per
    /// connection.
    live: Arc<AtomicUsize>,
}

impl Fake {
    fn start(role: Role) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Fake::on(l, role)
    }

    fn on(l: TcpListener, role: Role) -> Fake {
        l.set_nonblocking(true).unwrap();
        let f = Fake {
            addr: l.local_addr().unwrap().to_string(),
            logins: Arc::default(),
            checks: Arc::default(),
            logouts: Arc::default(),
            commands: Arc::default(),
            stop: Arc::default(),
            live: Arc::new(AtomicUsize::new(1)),
        };
        let counts = Counts {
            logins: f.logins.clone(),
            checks: f.checks.clone(),
            logouts: f.logouts.clone(),
        };
        let (commands, stop, live) = (f.commands.clone(), f.stop.clone(), f.live.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (role, counts, commands, stop, live) = (
                            role.clone(),
                            counts.clone(),
                            commands.clone(),
                            stop.clone(),
                            live.clone(),
                        );
                        live.fetch_add(1, Ordering::SeqCst);
                        thread::spawn(move || {
                            serve(s, role, &counts, &commands, &stop);
                            live.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(_) => sleep(Duration::from_millis(10)),
                }
            }
            // The listener closes here, with the loop.
            drop(l);
            live.fetch_sub(1, Ordering::SeqCst);
        });
        f
    }

    /// Close the portal and every connection to it, and wait until they
    /// are closed.
    fn kill(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.live.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "the fake target did not stop");
            sleep(Duration::from_millis(5));
        }
    }

    fn logins(&self) -> usize {
        self.logins.load(Ordering::Relaxed)
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::Relaxed)
    }
}

/// What a fake target counts, shared by its connections.
#[derive(Clone)]
struct Counts {
    logins: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    logouts: Arc<AtomicUsize>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_pdu(s: &mut TcpStream, rx: &mut Vec<u8>, stop: &AtomicBool) -> Option<Pdu> {
    loop {
        // A killed portal answers nothing more: its connections close.
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Ok(Some((p, used))) = pdu::decode(rx, Digests::default(), 1 << 20) {
            rx.drain(..used);
            return Some(p);
        }
        let mut buf = [0u8; 65536];
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => rx.extend_from_slice(&buf[..n]),
            Err(_) if !stop.load(Ordering::Relaxed) => {}
            Err(_) => return None,
        }
    }
}

fn serve(mut s: TcpStream, role: Role, counts: &Counts, commands: &AtomicUsize, stop: &AtomicBool) {
    let (logins, checks) = (&*counts.logins, &*counts.checks);
    let mut check = false;
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut rx = Vec::new();
    let mut stat_sn = 1u32;
    let mut exp_cmd_sn = 1u32;
    let mut first = true;
    let mut normal = false;
    let send = |s: &mut TcpStream, mut r: Pdu, exp: u32, stat: &mut u32| {
        r.set_u32(24, *stat);
        r.set_u32(28, exp);
        r.set_u32(32, exp.wrapping_add(31));
        *stat = stat.wrapping_add(1);
        let _ = s.write_all(&r.encode(Digests::default()).unwrap());
    };
    while let Some(p) = read_pdu(&mut s, &mut rx, stop) {
        if p.bhs[0] & 0x40 == 0 && p.opcode() == Some(Opcode::ScsiCommand) {
            exp_cmd_sn = p.u32_at(24).wrapping_add(1);
        }
        match p.opcode() {
            Some(Opcode::LoginRequest) => {
                let keys = text::parse(&p.data);
                if first {
                    // The client's check at start logs in with its ISID's
                    // qualifier bit 0x40 flipped (ours ends in 9), then
                    // out: not a session the scripts are about.
                    check = p.bhs[13] & 0x40 != 0;
                    if check {
                        checks.fetch_add(1, Ordering::Relaxed);
                    } else {
                        if let (Role::Drops { times, .. }, 1..) =
                            (&role, logins.load(Ordering::Relaxed))
                        {
                            times.lock().unwrap().push(Instant::now());
                        }
                        logins.fetch_add(1, Ordering::Relaxed);
                    }
                    first = false;
                    normal = !check && text::get(&keys, "SessionType") != Some("Discovery");
                    exp_cmd_sn = p.u32_at(24);
                }
                let mut r = Pdu::new(Opcode::LoginResponse);
                r.set_itt(p.itt());
                r.bhs[8..14].copy_from_slice(&p.bhs[8..14]);
                match &role {
                    Role::Hangup => return,
                    Role::Unavailable => {
                        r.set_byte(36, 3);
                        r.set_byte(37, 1);
                        send(&mut s, r, exp_cmd_sn, &mut stat_sn);
                        return;
                    }
                    Role::Redirect { to, permanent } => {
                        r.set_byte(36, 1);
                        r.set_byte(37, if *permanent { 2 } else { 1 });
                        r.data = text::encode(&[("TargetAddress", format!("{to},1"))]);
                        send(&mut s, r, exp_cmd_sn, &mut stat_sn);
                        return;
                    }
                    Role::Target { .. }
                    | Role::Gated(_)
                    | Role::Deaf
                    | Role::Drops { .. }
                    | Role::Renegotiates(_)
                    | Role::WantsLogout => {
                        let event = match &role {
                            Role::Target { event, .. } => event.as_ref(),
                            _ => None,
                        };
                        if let Role::Gated(gate) = &role {
                            *gate.stream.lock().unwrap() = Some(s.try_clone().unwrap());
                        }
                        if (p.flags() >> 2) & 3 == 0 {
                            r.set_flags(0x81);
                            r.data = text::encode(&[("AuthMethod", "None")]);
                            send(&mut s, r, exp_cmd_sn, &mut stat_sn);
                        } else {
                            r.set_flags(0x87);
                            r.set_u16(14, 1);
                            let time2wait = match &role {
                                Role::Drops {
                                    announce: false,
                                    time2wait,
                                    ..
                                } => *time2wait,
                                _ => 0,
                            };
                            r.data = text::encode(&[
                                ("HeaderDigest", "None"),
                                ("DataDigest", "None"),
                                ("MaxRecvDataSegmentLength", "65536"),
                                ("DefaultTime2Wait", &time2wait.to_string()),
                            ]);
                            send(&mut s, r, exp_cmd_sn, &mut stat_sn);
                            if let (true, Role::Renegotiates(_)) = (normal, &role) {
                                // Negotiation request, within 5 s (Parameter3).
                                let mut a = Pdu::new(Opcode::AsyncMessage);
                                a.set_flags(0x80);
                                a.set_itt(0xffff_ffff);
                                a.set_byte(36, 4);
                                a.set_u16(42, 5);
                                send(&mut s, a, exp_cmd_sn, &mut stat_sn);
                            }
                            if let (true, Some(sense)) = (normal, event) {
                                let mut a = Pdu::new(Opcode::AsyncMessage);
                                a.set_flags(0x80);
                                a.set_lun(LUN1);
                                a.set_itt(0xffff_ffff);
                                a.data = (sense.len() as u16).to_be_bytes().to_vec();
                                a.data.extend_from_slice(sense);
                                send(&mut s, a, exp_cmd_sn, &mut stat_sn);
                            }
                        }
                    }
                }
            }
            Some(Opcode::TextRequest) if matches!(role, Role::Renegotiates(_)) => {
                let Role::Renegotiates(seen) = &role else {
                    return;
                };
                // First round: declare 4096 and say "not done" (F=0, a
                // TTT of ours), so that the initiator answers with a second
                // Text Request, which it sends only once it has applied the
                // declaration; that one ends the negotiation.
                let first = seen.asked.load(Ordering::Relaxed) == 0;
                let mut r = Pdu::new(Opcode::TextResponse);
                r.set_itt(p.itt());
                if first {
                    r.set_flags(0);
                    r.set_u32(20, 0x5e55_0001);
                    r.data = text::encode(&[("MaxRecvDataSegmentLength", "4096")]);
                    seen.largest.store(0, Ordering::Relaxed);
                } else {
                    r.set_flags(0x80);
                    r.set_u32(20, 0xffff_ffff);
                }
                send(&mut s, r, exp_cmd_sn, &mut stat_sn);
                seen.asked.fetch_add(1, Ordering::Relaxed);
            }
            Some(Opcode::TextRequest) => {
                let Role::Target { portals, .. } = &role else {
                    return;
                };
                let mut keys = vec![("TargetName", TARGET.to_string())];
                keys.extend(portals.iter().map(|a| ("TargetAddress", format!("{a},1"))));
                let mut r = Pdu::new(Opcode::TextResponse);
                r.set_flags(0x80);
                r.set_itt(p.itt());
                r.set_u32(20, 0xffff_ffff);
                r.data = text::encode(&keys);
                send(&mut s, r, exp_cmd_sn, &mut stat_sn);
            }
            Some(Opcode::ScsiCommand) if matches!(role, Role::Deaf) && p.bhs[32] == 0x2a => {
                commands.fetch_add(1, Ordering::Relaxed);
                while !stop.load(Ordering::Relaxed) {
                    let mut r = Pdu::new(Opcode::NopIn);
                    r.set_flags(0x80);
                    r.set_itt(0xffff_ffff);
                    r.set_u32(20, 0xffff_ffff);
                    r.set_u32(24, stat_sn);
                    r.set_u32(28, exp_cmd_sn);
                    r.set_u32(32, exp_cmd_sn.wrapping_add(100_000));
                    if s.write_all(&r.encode(Digests::default()).unwrap()).is_err() {
                        return;
                    }
                    sleep(Duration::from_millis(100));
                }
                return;
            }
            Some(Opcode::ScsiCommand | Opcode::DataOut)
                if matches!(role, Role::Renegotiates(_)) =>
            {
                if let Role::Renegotiates(seen) = &role {
                    seen.largest.fetch_max(p.data.len(), Ordering::Relaxed);
                }
                if p.opcode() == Some(Opcode::ScsiCommand) {
                    commands.fetch_add(1, Ordering::Relaxed);
                    let mut r = Pdu::new(Opcode::ScsiResponse);
                    r.set_flags(0x80);
                    r.set_itt(p.itt());
                    send(&mut s, r, exp_cmd_sn, &mut stat_sn);
                }
            }
            Some(Opcode::ScsiCommand)
                if matches!(role, Role::WantsLogout)
                    && logins.load(Ordering::Relaxed) == 1
                    && commands.fetch_add(1, Ordering::Relaxed) == 0 =>
            {
                let mut r = Pdu::new(Opcode::Reject);
                r.set_flags(0x80);
                r.set_itt(0xffff_ffff);
                r.set_byte(2, 0x0c);
                r.data = p.bhs.to_vec();
                send(&mut s, r, exp_cmd_sn, &mut stat_sn);
            }
            Some(Opcode::ScsiCommand) => {
                commands.fetch_add(1, Ordering::Relaxed);
                let mut r = Pdu::new(Opcode::ScsiResponse);
                r.set_flags(0x80);
                r.set_itt(p.itt());
                if let (Role::Gated(gate), 0x28) = (&role, p.bhs[32]) {
                    let len = p.u32_at(20) as usize;
                    let mut held = gate.held.lock().unwrap();
                    for (sn, at) in (0..len).step_by(65536).enumerate() {
                        let end = (at + 65536).min(len);
                        let mut d = Pdu::new(Opcode::DataIn);
                        d.set_itt(p.itt());
                        d.set_u32(36, sn as u32);
                        d.set_u32(40, at as u32);
                        if end == len {
                            d.set_flags(0x81);
                            d.set_u32(24, stat_sn);
                            stat_sn = stat_sn.wrapping_add(1);
                        }
                        d.set_u32(28, exp_cmd_sn);
                        d.set_u32(32, exp_cmd_sn.wrapping_add(31));
                        d.data = (at..end).map(|i| (i * 7) as u8).collect();
                        held.push(d.encode(Digests::default()).unwrap());
                    }
                } else if let Role::Gated(gate) = &role {
                    r.set_u32(24, stat_sn);
                    r.set_u32(28, exp_cmd_sn);
                    r.set_u32(32, exp_cmd_sn.wrapping_add(31));
                    stat_sn = stat_sn.wrapping_add(1);
                    gate.held
                        .lock()
                        .unwrap()
                        .push(r.encode(Digests::default()).unwrap());
                } else {
                    send(&mut s, r, exp_cmd_sn, &mut stat_sn);
                }
                if let Role::Drops {
                    announce,
                    time2wait,
                    times,
                } = &role
                {
                    if logins.load(Ordering::Relaxed) == 1 {
                        if *announce {
                            // "Dropping all connections", Time2Wait in
                            // Parameter2, Time2Retain 0 in Parameter3.
                            let mut a = Pdu::new(Opcode::AsyncMessage);
                            a.set_flags(0x80);
                            a.set_itt(0xffff_ffff);
                            a.set_byte(36, 3);
                            a.set_u16(40, *time2wait);
                            send(&mut s, a, exp_cmd_sn, &mut stat_sn);
                        }
                        times.lock().unwrap().push(Instant::now());
                        return;
                    }
                }
            }
            Some(Opcode::NopOut) if p.itt() != 0xffff_ffff => {
                let mut r = Pdu::new(Opcode::NopIn);
                r.set_flags(0x80);
                r.set_itt(p.itt());
                r.set_u32(20, 0xffff_ffff);
                send(&mut s, r, exp_cmd_sn, &mut stat_sn);
            }
            Some(Opcode::LogoutRequest) => {
                if !check {
                    counts.logouts.fetch_add(1, Ordering::Relaxed);
                }
                let mut r = Pdu::new(Opcode::LogoutResponse);
                r.set_flags(0x80);
                r.set_itt(p.itt());
                send(&mut s, r, exp_cmd_sn, &mut stat_sn);
                return;
            }
            _ => {}
        }
    }
}

fn params() -> LoginParams {
    LoginParams {
        initiator_name: "iqn.2026-11.test:fake-initiator".into(),
        target_name: Some(TARGET.into()),
        isid: [0x80, 0, 0, 0, 0, 9],
        tsih: 0,
        chap: None,
        mutual: None,
        header_digest: false,
        data_digest: false,
        max_recv_data_segment_length: 65536,
        max_burst_length: 262144,
        first_burst_length: 65536,
        initial_cmd_sn: 1,
        chap_offer: chap::Offer::ALL,
    }
}

fn no_discovery() -> Options {
    Options {
        discover_portals: false,
        ..Options::default()
    }
}

fn target() -> Fake {
    Fake::start(Role::Target {
        portals: vec![],
        event: None,
    })
}

fn one(c: &Client, cdb: &[u8]) -> Result<Completion, Failure> {
    let (tx, rx) = std::sync::mpsc::channel();
    c.submit(
        LUN1,
        cdb,
        Data::None,
        Box::new(move |r| {
            let _ = tx.send(r);
            None
        }),
    );
    rx.recv_timeout(Duration::from_secs(60)).expect("no answer")
}

const TUR: [u8; 6] = [0; 6];

#[test]
fn a_temporary_redirect_is_followed_and_the_portal_kept() {
    let t = target();
    let r = Fake::start(Role::Redirect {
        to: t.addr.clone(),
        permanent: false,
    });
    let c = Client::start("redirect", vec![r.addr.clone()], params(), no_discovery()).unwrap();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    assert_eq!((r.logins(), t.logins()), (1, 1));
    // The next login goes to the original portal again.
    c.reset_nexus();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    assert_eq!((r.logins(), t.logins()), (2, 2));
    c.shutdown();
}

#[test]
fn a_permanent_redirect_replaces_the_portal() {
    let t = target();
    let r = Fake::start(Role::Redirect {
        to: t.addr.clone(),
        permanent: true,
    });
    let c = Client::start("moved", vec![r.addr.clone()], params(), no_discovery()).unwrap();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    c.reset_nexus();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    // The check at start was moved; the sessions went to the new portal.
    assert_eq!((r.checks(), r.logins(), t.logins()), (1, 0, 2));
    c.shutdown();
}

#[test]
fn a_redirect_loop_is_a_login_error() {
    // Two redirectors sending the initiator to each other.
    let la = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").unwrap();
    let (a_addr, b_addr) = (
        la.local_addr().unwrap().to_string(),
        lb.local_addr().unwrap().to_string(),
    );
    let _a = Fake::on(
        la,
        Role::Redirect {
            to: b_addr,
            permanent: false,
        },
    );
    let _b = Fake::on(
        lb,
        Role::Redirect {
            to: a_addr.clone(),
            permanent: false,
        },
    );
    let e = Client::start("loop", vec![a_addr], params(), no_discovery())
        .err()
        .expect("a redirect loop cannot log in");
    assert!(e.to_string().contains("redirects"), "{e}");
}

#[test]
fn portals_learnt_by_discovery_take_over_when_the_first_dies() {
    for discover in [true, false] {
        let b = target();
        let a = Fake::start(Role::Target {
            portals: vec!["127.0.0.1:1".into(), b.addr.clone()],
            event: None,
        });
        let options = Options {
            recovery_timeout: Some(Duration::from_secs(3)),
            discover_portals: discover,
            ..Options::default()
        };
        let c = Client::start("discover", vec![a.addr.clone()], params(), options).unwrap();
        assert_eq!(one(&c, &TUR).unwrap().status, 0);
        // The recovery timeout runs from when the client saw the portal
        // go: after this instant, maybe before the command is sent.
        let killed = Instant::now();
        a.kill();
        let r = one(&c, &TUR);
        if discover {
            assert_eq!(r.unwrap().status, 0);
            assert!(b.commands.load(Ordering::Relaxed) >= 1);
        } else {
            // Only the configured (dead) portal: the command times out.
            assert_eq!(r, Err(Failure::Timeout));
            assert!(killed.elapsed() >= Duration::from_secs(3));
        }
        c.shutdown();
    }
}

#[test]
fn an_asynchronous_event_is_reported_once_as_a_unit_attention_and_to_the_hook() {
    // UNIT ATTENTION, 2Ah/09h CAPACITY DATA HAS CHANGED (fixed format).
    let mut sense = vec![0u8; 18];
    sense[0] = 0x70;
    sense[2] = 0x06;
    sense[7] = 10;
    sense[12] = 0x2a;
    sense[13] = 0x09;
    let t = Fake::start(Role::Target {
        portals: vec![],
        event: Some(sense.clone()),
    });
    let c = Client::start("event", vec![t.addr.clone()], params(), no_discovery()).unwrap();
    // The target sends the event right after the login, so it arrives
    // before the answer to any command. INQUIRY does not report unit
    // attentions.
    let inquiry = [0x12, 0, 0, 0, 36, 0];
    assert_eq!(one(&c, &inquiry).unwrap().status, 0);
    let r = one(&c, &TUR).unwrap();
    assert_eq!((r.status, &r.sense), (2, &sense));
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    // The unit attention was answered here: only INQUIRY and one TUR
    // reached the target.
    assert_eq!(t.commands.load(Ordering::Relaxed), 2);
    // An event hook (the daemon's: a parameter change event for the guest)
    // hears of the event the next session reports, once.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    c.set_event_hook(Some(Arc::new(move |lun, s: &[u8]| {
        let _ = tx.lock().unwrap().send((lun, s.to_vec()));
    })));
    c.reset_nexus();
    let heard = rx.recv_timeout(Duration::from_secs(10)).expect("no event");
    assert_eq!(heard, (LUN1, sense.clone()));
    assert_eq!(one(&c, &TUR).unwrap().sense, sense);
    assert!(rx.try_recv().is_err());
    c.shutdown();
}

/// Submit a TEST UNIT READY; the receiver hears of its answer.
fn submit_tur(c: &Client, tx: &std::sync::mpsc::Sender<Instant>) {
    let tx = tx.clone();
    c.submit(
        LUN1,
        &TUR,
        Data::None,
        Box::new(move |r| {
            assert_eq!(r.unwrap().status, 0);
            let _ = tx.send(Instant::now());
            None
        }),
    );
}

#[test]
fn answers_are_coalesced_while_many_commands_are_in_flight_and_wait_at_most_the_delay() {
    let gate = Arc::new(Gate::default());
    let t = Fake::start(Role::Gated(gate.clone()));
    // Long enough that the "well before the timer" waits below (delay / 2)
    // hold on a loaded machine.
    let delay = Duration::from_secs(6);
    let options = Options {
        coalesce: Coalescing { delay, depth: 4 },
        ..no_discovery()
    };
    let c = Client::start("coalesce", vec![t.addr.clone()], params(), options).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..12 {
        submit_tur(&c, &tx);
    }
    gate.wait_held(12);
    let wait = |n: usize, within: Duration| {
        for _ in 0..n {
            rx.recv_timeout(within)
                .expect("answer not received in time");
        }
    };
    // Nothing coalesced yet: the first answers are received at once.
    gate.release(4);
    wait(4, Duration::from_secs(10));
    // 8 in flight (>= 4): the socket now waits for half their answers
    // (4 x 48 bytes, 192 rounded down to 4 significant bits: 192). One
    // answer is not enough: it waits for the timer.
    let released = Instant::now();
    gate.release(1);
    // When it was received, not when this thread got to look (a stalled
    // test thread must not fail a right client): not before the timer,
    // which is what half the delay stands for.
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the timer did not end the wait");
    let waited = got.duration_since(released);
    assert!(
        waited >= delay / 2,
        "a lone answer was received after {waited:?}, before the timer"
    );
    assert!(waited <= delay + Duration::from_secs(5));
    // 7 in flight: the mark is 160 bytes; four answers (192) are enough,
    // long before the timer.
    gate.release(4);
    wait(4, delay / 2);
    // 3 in flight (< 4): any answer is received at once.
    gate.release(3);
    wait(3, delay / 2);
    c.shutdown();
}

/// Read `len` bytes from LBA 0 (READ(10)); the receiver hears of the data.
fn submit_read(c: &Client, len: u32, tx: &std::sync::mpsc::Sender<Vec<u8>>) {
    let tx = tx.clone();
    let blocks = (len / 512) as u16;
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    c.submit(
        LUN1,
        &cdb,
        Data::Read(len),
        Box::new(move |r| {
            let r = r.unwrap();
            assert_eq!((r.status, r.residual), (0, 0));
            let _ = tx.send(r.data);
            None
        }),
    );
}

/// A gated target and a client of it (`name`), with a receive
/// coalescing timer (returned) far longer than a test: a wait for it would
/// be seen.
fn gated_client(name: &str) -> (Arc<Gate>, Fake, Client, Duration) {
    let gate = Arc::new(Gate::default());
    let t = Fake::start(Role::Gated(gate.clone()));
    let delay = Duration::from_secs(20);
    let options = Options {
        coalesce: Coalescing { delay, depth: 16 },
        ..no_discovery()
    };
    let c = Client::start(name, vec![t.addr.clone()], params(), options).unwrap();
    (gate, t, c, delay)
}

/// The data of the gated target's reads: byte i is `i * 7`.
fn read_data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7) as u8).collect()
}

#[test]
fn big_reads_are_received_in_big_pieces_but_no_answer_waits_for_the_timer() {
    let (gate, _t, c, delay) = gated_client("stream");
    let (tx, rx) = std::sync::mpsc::channel();
    let want = read_data(1 << 20);
    // One 1 MiB read (16 PDUs), its data sent at once: the socket waits
    // for half of it, then for what is left of it.
    submit_read(&c, 1 << 20, &tx);
    gate.wait_held(16);
    gate.release(16);
    let got = rx
        .recv_timeout(delay / 2)
        .expect("the read waited for the timer");
    assert!(got == want);
    // Sent in two parts: the mark set after the first part (half of what
    // is still due) is met by the second, whatever the first was.
    for first in [1, 6, 9, 15] {
        submit_read(&c, 1 << 20, &tx);
        gate.wait_held(16);
        gate.release(first);
        // The client set its wait after the first part.
        gate.wait_taken_in();
        // The read does not complete on part of its data: given 100 ms to
        // do so wrongly, a chance that, too short, could only miss it,
        // never fail a right client.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        gate.release(16 - first);
        let got = rx
            .recv_timeout(delay / 2)
            .unwrap_or_else(|_| panic!("after {first} PDUs: the tail waited for the timer"));
        assert!(got == want);
    }
    // A small command next to a big read: its answer, sent while most of
    // the read's data is still due, is not held back for that data.
    submit_read(&c, 1 << 20, &tx);
    gate.wait_held(16);
    let (tur_tx, tur_rx) = std::sync::mpsc::channel();
    submit_tur(&c, &tur_tx);
    gate.wait_held(17);
    gate.release(4);
    gate.wait_taken_in();
    gate.release_at(12);
    tur_rx
        .recv_timeout(delay / 2)
        .expect("a small answer waited for a big read's data");
    gate.release(12);
    let got = rx.recv_timeout(delay / 2).expect("the read waited");
    assert!(got == want);
    c.shutdown();
}

#[test]
fn a_stream_wait_ends_with_the_closest_read_and_for_a_small_command_sent_meanwhile() {
    let (gate, _t, c, delay) = gated_client("closest");
    let (tx, rx) = std::sync::mpsc::channel();
    let want = read_data(1 << 20);
    // Data flowing first: Linux grows the socket's receive buffer, and
    // with it the highest mark the client sets.
    for _ in 0..8 {
        submit_read(&c, 1 << 20, &tx);
        gate.wait_held(16);
        gate.release(16);
        let got = rx.recv_timeout(delay / 2).expect("a read waited");
        assert!(got == want);
    }
    // Two 1 MiB reads (16 PDUs each). Half of the first arrives; then the
    // rest of it alone (512 KiB), less than half of the 1.5 MiB still due:
    // the wait is for what the first read still owes, so it completes.
    submit_read(&c, 1 << 20, &tx);
    submit_read(&c, 1 << 20, &tx);
    gate.wait_held(32);
    gate.release(8);
    gate.wait_taken_in();
    // The first read does not complete on half its data: given 100 ms to
    // do so wrongly, a chance that, too short, could only miss it, never
    // fail a right client.
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    gate.release(8);
    let got = rx
        .recv_timeout(delay / 2)
        .expect("the first read waited for the timer");
    assert!(got == want);
    // A quarter of the second read is in and the socket waits for the
    // rest: a TEST UNIT READY submitted now is answered ahead of that
    // data, and its answer is not held back for it.
    gate.release(4);
    gate.wait_taken_in();
    let (tur_tx, tur_rx) = std::sync::mpsc::channel();
    submit_tur(&c, &tur_tx);
    gate.wait_held(13);
    gate.release_at(12);
    tur_rx
        .recv_timeout(delay / 2)
        .expect("a small answer waited for a big read's data");
    gate.release(12);
    let got = rx.recv_timeout(delay / 2).expect("the second read waited");
    assert!(got == want);
    c.shutdown();
}

#[test]
fn a_target_that_talks_but_takes_nothing_is_given_up_and_logged_in_to_again() {
    // Its NOP-Ins keep the keepalive quiet, so only the writer, whose
    // bytes the socket stopped taking, can tell.
    let t = Fake::start(Role::Deaf);
    let c = Client::start("deaf", vec![t.addr.clone()], params(), no_discovery()).unwrap();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    // More write data than the two sockets' buffers hold.
    let start = Instant::now();
    for i in 0..512u32 {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&(i * 128).to_be_bytes());
        cdb[7..9].copy_from_slice(&128u16.to_be_bytes());
        c.submit(
            LUN1,
            &cdb,
            Data::Write(vec![i as u8; 65536]),
            Box::new(|_| None),
        );
    }
    while t.logins() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the stalled connection was kept"
        );
        sleep(Duration::from_millis(100));
    }
    // Not before the writer's patience (15 s) ran out.
    assert!(
        start.elapsed() >= Duration::from_secs(14),
        "{:?}",
        start.elapsed()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        c.shutdown();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("shutdown hung");
}

#[test]
fn a_target_that_hangs_up_on_a_login_without_authentication_is_explained() {
    let t = Fake::start(Role::Hangup);
    let e = Client::start("hangup", vec![t.addr.clone()], params(), no_discovery())
        .err()
        .expect("login succeeded");
    assert!(e.to_string().contains("probably requires CHAP"), "{e}");
    // Offered CHAP, the same hang-up is only a closed connection.
    let p = LoginParams {
        chap: Some(vhost_user_scsi::iscsi::login::Credentials {
            user: "alice".into(),
            secret: "alicesecret12".into(),
        }),
        ..params()
    };
    let e = Client::start("hangup", vec![t.addr.clone()], p, no_discovery())
        .err()
        .expect("login succeeded");
    assert_eq!(e.to_string(), "The target closed the connection");
}

#[test]
fn the_next_login_waits_for_the_time2wait_the_target_gave() {
    // Announced: the Time2Wait of the Asynchronous Message. Unannounced:
    // the session's DefaultTime2Wait (the implicit logout of a
    // reinstatement may not come sooner, RFC 7143 13.15).
    for announce in [true, false] {
        let times = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = Fake::start(Role::Drops {
            announce,
            time2wait: 2,
            times: times.clone(),
        });
        let c = Client::start("drops", vec![t.addr.clone()], params(), no_discovery()).unwrap();
        assert_eq!(one(&c, &TUR).unwrap().status, 0);
        // Answered after the wait, on the new session.
        assert_eq!(one(&c, &TUR).unwrap().status, 0);
        let times = times.lock().unwrap().clone();
        assert!(times.len() >= 2, "announce={announce}: {times:?}");
        let waited = times[1].duration_since(times[0]);
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_secs(15),
            "announce={announce}: logged in again after {waited:?}"
        );
        c.shutdown();
    }
}

#[test]
fn a_target_asking_to_negotiate_gets_a_text_request_and_its_new_segment_length_is_kept() {
    let seen = Arc::new(Renegotiation::default());
    let t = Fake::start(Role::Renegotiates(seen.clone()));
    let c = Client::start(
        "renegotiate",
        vec![t.addr.clone()],
        params(),
        no_discovery(),
    )
    .unwrap();
    // A VM uses the session: it logs in.
    c.activate();
    // The target asks within Parameter3 (5 s); the wait only bounds a
    // client that never answers.
    let start = Instant::now();
    while seen.asked.load(Ordering::Relaxed) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no Text Request, or none after the declaration"
        );
        sleep(Duration::from_millis(10));
    }
    // A WRITE(10) of 16 KiB: the immediate data was 16 KiB under the
    // MaxRecvDataSegmentLength of the login (65536); now at most 4096.
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[8] = 32;
    let (tx, rx) = std::sync::mpsc::channel();
    c.submit(
        LUN1,
        &cdb,
        Data::Write(vec![5; 16384]),
        Box::new(move |r| {
            let _ = tx.send(r);
            None
        }),
    );
    let done = rx.recv_timeout(Duration::from_secs(10)).expect("no answer");
    assert_eq!(done.unwrap().status, 0);
    assert_eq!(seen.largest.load(Ordering::Relaxed), 4096);
    // The negotiation did not cost the session.
    assert_eq!(t.logins(), 1);
    c.shutdown();
}

/// A scripted target listening on the IPv6 loopback, `[::1]:port`.
fn target_v6() -> Fake {
    Fake::on(
        TcpListener::bind("[::1]:0").expect("IPv6 loopback"),
        Role::Target {
            portals: vec![],
            event: None,
        },
    )
}

#[test]
fn ipv6_portals_are_logged_in_to_redirected_to_and_failed_over_to() {
    // Directly, as an iscsi://[::1]:port/... URL names it.
    let v6 = target_v6();
    assert!(v6.addr.starts_with("[::1]:"), "{}", v6.addr);
    let c = Client::start("v6", vec![v6.addr.clone()], params(), no_discovery()).unwrap();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    c.shutdown();

    // Redirected from an IPv4 portal (TargetAddress "[::1]:port,1").
    let r = Fake::start(Role::Redirect {
        to: v6.addr.clone(),
        permanent: true,
    });
    let c = Client::start("v6-moved", vec![r.addr.clone()], params(), no_discovery()).unwrap();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    assert_eq!((r.checks(), r.logins(), v6.logins()), (1, 0, 2));
    c.shutdown();

    // Learnt by SendTargets from an IPv4 portal, then taking over from it.
    let a = Fake::start(Role::Target {
        portals: vec![v6.addr.clone()],
        event: None,
    });
    let options = Options {
        recovery_timeout: Some(Duration::from_secs(10)),
        ..Options::default()
    };
    let c = Client::start("v6-failover", vec![a.addr.clone()], params(), options).unwrap();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    let before = v6.commands.load(Ordering::Relaxed);
    a.kill();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    assert!(v6.commands.load(Ordering::Relaxed) > before);
    c.shutdown();
}

#[test]
fn a_command_rejected_while_the_target_waits_for_a_logout_succeeds_on_the_next_session() {
    let t = Fake::start(Role::WantsLogout);
    let c = Client::start("logout", vec![t.addr.clone()], params(), no_discovery()).unwrap();
    // The caller sees only GOOD, completed at the target (a nonzero
    // response would reach the guest as a transport failure): the rejected
    // command went again after the logout and the new login.
    let done = one(&c, &TUR).unwrap();
    assert_eq!((done.response, done.status), (0, 0));
    assert_eq!(t.logins(), 2);
    assert_eq!(t.commands.load(Ordering::Relaxed), 2);
    c.shutdown();
}

#[test]
fn a_portal_whose_service_is_unavailable_at_start_is_passed_over_for_the_next() {
    let down = Fake::start(Role::Unavailable);
    let up = target();
    let c = Client::start(
        "maintenance",
        vec![down.addr.clone(), up.addr.clone()],
        params(),
        no_discovery(),
    )
    .unwrap();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    // The check at start passed the portal over; the session went to the
    // next.
    assert_eq!((down.checks(), down.logins(), up.logins()), (1, 0, 1));
    c.shutdown();
    // With no other portal, the start fails and says why.
    let e = Client::start(
        "maintenance",
        vec![down.addr.clone()],
        params(),
        no_discovery(),
    )
    .err()
    .expect("no portal accepts the login");
    assert!(e.to_string().contains("service is unavailable"), "{e}");
}

/// Sessions follow the devices using them: none after the check at start
/// (which uses an ISID of its own, so it could not cut a live session of
/// the same initiator port: a live migration's source), one while a device
/// runs, logged out when the last one stops, and again on the next start.
#[test]
fn the_session_is_logged_in_while_a_device_uses_it() {
    let t = target();
    let c = Client::start("lazy", vec![t.addr.clone()], params(), no_discovery()).unwrap();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}");
            sleep(Duration::from_millis(10));
        }
    };
    assert_eq!((t.checks(), t.logins()), (1, 0));
    c.activate();
    c.activate();
    wait("logged in on activation", &|| t.logins() == 1);
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    // One device of two stops: the session stays.
    c.deactivate();
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    assert_eq!(t.logouts.load(Ordering::Relaxed), 0);
    // The last one: logged out.
    c.deactivate();
    wait("logged out", &|| t.logouts.load(Ordering::Relaxed) == 1);
    // And in again, at once (an explicit logout has no Time2Wait).
    c.activate();
    wait("logged in again", &|| t.logins() == 2);
    assert_eq!(one(&c, &TUR).unwrap().status, 0);
    c.shutdown();
}
