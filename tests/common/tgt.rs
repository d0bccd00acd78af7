// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! tgtd (Debian package tgt) as an iSCSI target for tests: started on a
//! free loopback port, targets and LUNs created with tgtadm, restarted,
//! and taken down with its targets when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::kernel;

/// tgtd with one portal, `host` being "127.0.0.1" or "[::1]".
pub fn spawn_tgtd(ctl: &str, host: &str, port: u16, dir: &tempfile::TempDir) -> Child {
    Command::new("tgtd")
        .args(["-f", "-C", ctl, "--iscsi"])
        .arg(format!("portal={host}:{port}"))
        .env("TGT_IPC_SOCKET", dir.path().join("ipc"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tgtd (Debian package tgt) is needed")
}

pub struct Tgt {
    pub child: Child,
    pub host: &'static str,
    pub port: u16,
    pub ctl: String,
    pub dir: tempfile::TempDir,
    pub next_tid: u32,
}

impl Tgt {
    pub fn start() -> Tgt {
        Tgt::start_on("127.0.0.1")
    }

    /// tgtd listening on `host` ("127.0.0.1", or "[::1]" for IPv6).
    pub fn start_on(host: &'static str) -> Tgt {
        let port = TcpListener::bind(format!("{host}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        // -C takes at most 32767; the socket directory is ours anyway.
        let ctl = (port % 32000 + 1).to_string();
        let child = spawn_tgtd(&ctl, host, port, &dir);
        let t = Tgt {
            child,
            host,
            port,
            ctl,
            dir,
            next_tid: 1,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.try_adm(&["--mode", "sys", "--op", "show"]) {
            assert!(Instant::now() < deadline, "tgtd did not start");
            sleep(Duration::from_millis(50));
        }
        t
    }

    pub fn try_adm(&self, args: &[&str]) -> bool {
        Command::new("tgtadm")
            .args(["-C", &self.ctl, "--lld", "iscsi"])
            .args(args)
            .env("TGT_IPC_SOCKET", self.dir.path().join("ipc"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The I_T nexus numbers tgtd shows for target `tid` (one per session).
    pub fn nexuses(&self, tid: u32) -> Vec<String> {
        let out = Command::new("tgtadm")
            .args([
                "-C", &self.ctl, "--lld", "iscsi", "--mode", "target", "--op", "show",
            ])
            .env("TGT_IPC_SOCKET", self.dir.path().join("ipc"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut v = Vec::new();
        let mut ours = false;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("Target ") {
                ours = rest.starts_with(&format!("{tid}:"));
            } else if let Some(n) = line.trim().strip_prefix("I_T nexus: ") {
                if ours {
                    v.push(n.to_string());
                }
            }
        }
        v
    }

    pub fn adm(&self, args: &[&str]) {
        assert!(self.try_adm(args), "tgtadm {args:?} failed");
    }

    /// A target with one 16 MiB LUN (bstype rdwr) on a file in /dev/shm.
    pub fn target(&mut self, name: &str) -> (u32, PathBuf) {
        let tid = self.next_tid;
        self.next_tid += 1;
        let img = PathBuf::from(format!("/dev/shm/vus-tgt-{}-{tid}.img", self.port));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        self.create(tid, name, &img);
        (tid, img)
    }

    /// A target open to all that accepts CRC32C digests (or none).
    pub fn digest_target(&mut self, name: &str) -> u32 {
        let (tid, _) = self.target(name);
        self.bind_all(tid);
        self.param(tid, "HeaderDigest", "CRC32C");
        self.param(tid, "DataDigest", "CRC32C");
        tid
    }

    pub fn bind_all(&self, tid: u32) {
        self.adm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            &tid.to_string(),
            "--initiator-address",
            "ALL",
        ]);
    }

    /// Kill tgtd (it ignores SIGTERM) and start a new one on the same port
    /// with the same targets and backing files, listening when this
    /// returns.
    pub fn restart(&mut self, targets: &[(u32, &str)]) {
        // Once waited for, the old tgtd has closed its sockets: the portal
        // is free (tgtd binds it with SO_REUSEADDR, so its old connections
        // lingering in TIME_WAIT do not keep the new one from it).
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.path().join(format!("ipc.{}", self.ctl)));
        let _ = std::fs::remove_file(self.dir.path().join(format!("ipc.{}.lock", self.ctl)));
        self.child = spawn_tgtd(&self.ctl, self.host, self.port, &self.dir);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.try_adm(&["--mode", "sys", "--op", "show"]) {
            assert!(Instant::now() < deadline, "tgtd did not restart");
            sleep(Duration::from_millis(50));
        }
        // tgtd answers tgtadm from its event loop, which it enters after
        // setting up its portal; whether that worked only a connection
        // tells (tgtd logs a failed bind and goes on). With no target yet,
        // tgtd closes it at once.
        kernel::wait_for(
            "tgtd to accept connections again",
            Duration::from_secs(30),
            || TcpStream::connect(self.addr()).is_ok(),
        );
        for &(tid, name) in targets {
            let img = format!("/dev/shm/vus-tgt-{}-{tid}.img", self.port);
            self.create(tid, name, std::path::Path::new(&img));
            self.bind_all(tid);
        }
    }

    /// Target `tid` named `name` with LUN 1 (bstype rdwr) on `img`.
    pub fn create(&self, tid: u32, name: &str, img: &std::path::Path) {
        let t = tid.to_string();
        self.adm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            &t,
            "--targetname",
            name,
        ]);
        self.adm(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            &t,
            "--lun",
            "1",
            "--bstype",
            "rdwr",
            "--backing-store",
            &img.to_string_lossy(),
        ]);
    }

    /// A CHAP account bound to target `tid` (`outgoing`: the target's own,
    /// for mutual CHAP).
    pub fn account(&self, tid: u32, user: &str, password: &str, outgoing: bool) {
        self.adm(&[
            "--mode",
            "account",
            "--op",
            "new",
            "--user",
            user,
            "--password",
            password,
        ]);
        let t = tid.to_string();
        let mut bind = vec![
            "--mode", "account", "--op", "bind", "--tid", &t, "--user", user,
        ];
        if outgoing {
            bind.push("--outgoing");
        }
        self.adm(&bind);
    }

    /// Set a target parameter (HeaderDigest, DataDigest, ...).
    pub fn param(&self, tid: u32, name: &str, value: &str) {
        self.adm(&[
            "--mode",
            "target",
            "--op",
            "update",
            "--tid",
            &tid.to_string(),
            "--name",
            name,
            "--value",
            value,
        ]);
    }

    /// Bytes tgtd has received on its connections and not read yet.
    pub fn queued(&self) -> u64 {
        kernel::tcp_sockets()
            .iter()
            .filter(|s| s.local_port == self.port && s.state == kernel::ESTABLISHED)
            .map(|s| u64::from(s.rx_queue))
            .sum()
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        // A test that failed while tgtd was stopped (SIGSTOP) must not
        // hang here: tgtadm waits for tgtd's answers.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill() on our child, not reaped (try_wait found it
            // running): its pid is still its own.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        }
        self.try_adm(&[
            "--mode", "sys", "--op", "update", "--name", "State", "-v", "offline",
        ]);
        for tid in 1..self.next_tid {
            self.try_adm(&[
                "--mode",
                "target",
                "--op",
                "delete",
                "--force",
                "--tid",
                &tid.to_string(),
            ]);
            let _ = std::fs::remove_file(format!("/dev/shm/vus-tgt-{}-{tid}.img", self.port));
        }
        self.try_adm(&["--mode", "system", "--op", "delete"]);
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
