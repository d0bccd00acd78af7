// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the daemon claims as its own, so that a second process finds out
//! instead of silently sharing it: the Unix sockets it listens on, the
//! backstores it serves (advisory locks, compatible with QEMU's image
//! locking), the state files it writes, and its PID file.
//!
//! Backstore locks are open file description (OFD) locks on single bytes
//! of the backstore itself, laid out as QEMU's file-posix driver lays them
//! out (seen on QEMU 7.2 and 10.0 in /proc/locks): byte 100 + P is locked
//! (shared) by every user holding permission P, byte 200 + P by every user
//! that lets nobody else hold P. P is 0 for consistent reads and 1 for
//! writes. A writer holds 100 and 101 and, unless it shares writes
//! (`share-rw`), 201; a reader holds 100 and 201. So this daemon, QEMU
//! (`-drive file=...`), qemu-img, qemu-io and qemu-nbd all see each other's
//! claims: two writers of one image are refused, as QEMU refuses them
//! ("Failed to get "write" lock"), unless every writer shares writes. The
//! locks belong to the inode (for a block device, its device node), so
//! hard links and bind mounts of one file are one object; a loop device is
//! also claimed through its backing file. The kernel drops them when the
//! descriptor closes, so a crashed daemon leaves nothing stale.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is in use: {holder} is listening on it (stop it, or choose another path)")]
    SocketInUse { path: PathBuf, holder: String },
    #[error("Cannot listen on {path}: it exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("Cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is in use: {holder} {what} (give share-rw to every daemon and VM that must \
         write it at the same time; see docs/operation.md)"
    )]
    BackstoreInUse {
        path: PathBuf,
        holder: String,
        what: &'static str,
    },
    #[error("Cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is in use: {holder} holds it")]
    FileInUse { path: PathBuf, holder: String },
    #[error("PID file {path} is locked: {holder} is running")]
    PidFileInUse { path: PathBuf, holder: String },
    #[error("PID file {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// --- Sockets -------------------------------------------------------------

/// Listen on the Unix socket `path`. An existing socket file is replaced
/// only if nothing listens on it any more (left by a daemon that died);
/// if a connect succeeds, another process is serving it and we refuse.
/// Anything else at `path` is refused.
///
/// The path never exists without a listening socket behind it: the socket
/// is bound and listening under a temporary name next to it, then renamed
/// (binding straight to `path` leaves a moment between bind(2) and
/// listen(2) in which a client, QEMU started as soon as the socket
/// appears, is refused). Falls back to binding in place when the
/// temporary name does not fit a socket address.
pub fn listen_unix(path: &Path) -> Result<UnixListener, Error> {
    listen_unix_as(path, None)
}

/// [`listen_unix`], the socket given `access` (owner, group, mode) before
/// it appears at `path`.
pub fn listen_unix_as(
    path: &Path,
    access: Option<&crate::sandbox::SocketAccess>,
) -> Result<UnixListener, Error> {
    let listen_err = |source| Error::Listen {
        path: path.into(),
        source,
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(Error::NotASocket { path: path.into() });
        }
        match UnixStream::connect(path) {
            Ok(probe) => {
                return Err(Error::SocketInUse {
                    path: path.into(),
                    holder: socket_owner(&probe).unwrap_or_else(|| "another process".into()),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!(
                    "Replacing {}, left by a daemon that stopped",
                    path.display()
                );
            }
            Err(e) => return Err(listen_err(e)),
        }
    }
    let name = path
        .file_name()
        .ok_or_else(|| listen_err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp);
    let _ = std::fs::remove_file(&tmp);
    match UnixListener::bind(&tmp) {
        Ok(l) => match access
            .map_or(Ok(()), |a| a.apply(&tmp))
            .and_then(|()| std::fs::rename(&tmp, path))
        {
            Ok(()) => Ok(l),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(listen_err(e))
            }
        },
        Err(_) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).map_err(listen_err)?;
            if let Some(a) = access {
                if let Err(e) = a.apply(path) {
                    let _ = std::fs::remove_file(path);
                    return Err(listen_err(e));
                }
            }
            Ok(l)
        }
    }
}

/// The process listening where `probe` connected, for an error message
/// (SO_PEERCRED: the credentials the listener had when it called listen).
fn socket_owner(probe: &UnixStream) -> Option<String> {
    // SAFETY: ucred is plain data, filled by getsockopt.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket, and an out buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            probe.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then(|| describe_process(cred.pid as u32))
}

/// "process 1234 (vhost-user-scsi serve --socket ...)".
fn describe_process(pid: u32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            let s: String = String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            s.chars().take(100).collect::<String>()
        })
        .unwrap_or_default();
    if cmd.is_empty() {
        format!("process {pid}")
    } else {
        format!("process {pid} ({cmd})")
    }
}

// --- Backstores ----------------------------------------------------------

/// QEMU's lock byte offsets (block/file-posix.c layout, observed in
/// /proc/locks): permission bytes and "not shared" bytes.
const PERM_BASE: i64 = 100;
const UNSHARED_BASE: i64 = 200;
/// Permission bits, as QEMU numbers them (BLK_PERM_*).
const PERM_CONSISTENT_READ: i64 = 0;
const PERM_WRITE: i64 = 1;

/// How a LUN uses its backstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub writable: bool,
    /// Others may write it at the same time (`share-rw`).
    pub share_rw: bool,
}

impl Usage {
    /// The permissions held and those refused to others, as bytes to lock.
    fn bytes(self) -> (Vec<i64>, Vec<i64>) {
        let mut held = vec![PERM_CONSISTENT_READ];
        if self.writable {
            held.push(PERM_WRITE);
        }
        let unshared = if self.share_rw {
            vec![]
        } else {
            vec![PERM_WRITE]
        };
        (held, unshared)
    }
}

fn flock(kind: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: flock is plain data; every field that matters is set below.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = byte;
    l.l_len = 1;
    l
}

/// Take a shared OFD lock on one byte (never waits).
fn lock_byte(file: &File, byte: i64) -> io::Result<()> {
    let l = flock(libc::F_RDLCK, byte);
    // SAFETY: fcntl with a valid descriptor and a pointer to a live flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &l) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `byte`.
fn byte_taken(file: &File, byte: i64) -> io::Result<bool> {
    let mut l = flock(libc::F_WRLCK, byte);
    // SAFETY: fcntl with a valid descriptor and a pointer to a live flock,
    // which F_OFD_GETLK fills in.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut l) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::from(l.l_type) != libc::F_UNLCK)
}

/// Claim `file` (opened from `path`) for `usage`: lock the bytes of the
/// permissions held and of those refused to others, then check that no
/// one else holds what conflicts. Locks are taken before the check, so of
/// two processes starting at once at least one sees the other. For a loop
/// device, its backing file is claimed too; the returned files hold those
/// extra locks and must live as long as the backstore.
pub fn claim_backstore(file: &File, path: &Path, usage: Usage) -> Result<Vec<File>, Error> {
    claim_one(file, path, usage)?;
    let mut extra = Vec::new();
    if let Some((backing, backing_path)) = loop_backing_file(file, usage.writable) {
        claim_one(&backing, &backing_path, usage).map_err(|e| match e {
            Error::BackstoreInUse { holder, what, .. } => Error::BackstoreInUse {
                path: path.into(),
                holder: format!(
                    "{holder}, through its backing file {},",
                    backing_path.display()
                ),
                what,
            },
            e => e,
        })?;
        extra.push(backing);
    }
    Ok(extra)
}

/// How long a backstore held by no process we can find is waited for: a
/// daemon killed with I/O in flight keeps its file, and with it its locks,
/// until that I/O completes, after the process itself is gone.
const UNNAMED_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn claim_one(file: &File, path: &Path, usage: Usage) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + UNNAMED_HOLDER_WAIT;
    let mut waited = false;
    loop {
        let Some((byte, what)) = try_claim(file, path, usage)? else {
            return Ok(());
        };
        let holder = lock_holder_bounded(file, byte);
        match holder {
            Some(holder) => {
                return Err(Error::BackstoreInUse {
                    path: path.into(),
                    holder,
                    what,
                })
            }
            None if std::time::Instant::now() < deadline => {
                if !waited {
                    info!(
                        "{} is held by no process found (the last I/O of one that \
                         died?): waiting up to {} s",
                        path.display(),
                        UNNAMED_HOLDER_WAIT.as_secs()
                    );
                    waited = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            None => {
                return Err(Error::BackstoreInUse {
                    path: path.into(),
                    holder: "another process".into(),
                    what,
                })
            }
        }
    }
}

/// Lock the bytes of the permissions held and of those refused to others,
/// then check that no one else holds what conflicts: None if claimed, or
/// the byte in conflict and what its holder does (our locks then taken
/// back). Locks are taken before the check, so of two processes starting
/// at once at least one sees the other.
fn try_claim(file: &File, path: &Path, usage: Usage) -> Result<Option<(i64, &'static str)>, Error> {
    let lock_err = |source| Error::Lock {
        path: path.into(),
        source,
    };
    let (held, unshared) = usage.bytes();
    for p in &held {
        lock_byte(file, PERM_BASE + p).map_err(lock_err)?;
    }
    for p in &unshared {
        lock_byte(file, UNSHARED_BASE + p).map_err(lock_err)?;
    }
    let conflict = || -> Result<Option<(i64, &'static str)>, Error> {
        // Someone refuses a permission we hold...
        for p in &held {
            if byte_taken(file, UNSHARED_BASE + p).map_err(lock_err)? {
                let what = "uses it and lets no one else write it";
                return Ok(Some((UNSHARED_BASE + p, what)));
            }
        }
        // ...or holds one we refuse.
        for p in &unshared {
            if byte_taken(file, PERM_BASE + p).map_err(lock_err)? {
                return Ok(Some((PERM_BASE + p, "writes it")));
            }
        }
        Ok(None)
    };
    let r = conflict();
    if !matches!(r, Ok(None)) {
        // Refused: take back what we locked.
        for b in held.iter().map(|p| PERM_BASE + p) {
            unlock_byte(file, b);
        }
        for b in unshared.iter().map(|p| UNSHARED_BASE + p) {
            unlock_byte(file, b);
        }
    }
    r
}

fn unlock_byte(file: &File, byte: i64) {
    let l = flock(libc::F_UNLCK, byte);
    // SAFETY: fcntl with a valid descriptor and a pointer to a live flock.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &l) };
}

/// `lock_holder`, given at most 5 s: reading /proc of a process in the
/// middle of an exec can wait, and the answer only decorates a message
/// (the bound is generous: on a busy machine the scan of every process'
/// descriptors takes a while, and a holder missed is a worse message).
/// (The search gets the file's identity, not a copy of its descriptor,
/// which would keep our locks alive as long as the search.)
fn lock_holder_bounded(file: &File, byte: i64) -> Option<String> {
    let m = file.metadata().ok()?;
    let key = lock_key(m.dev(), m.ino());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("lock-holder".into())
        .spawn(move || {
            let _ = tx.send(lock_holder(&key, byte));
        })
        .ok()?;
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .ok()
        .flatten()
}

/// How /proc/locks and fdinfo name an inode: "MAJ:MIN:INODE", hex device.
fn lock_key(dev: u64, ino: u64) -> String {
    format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev))
}

/// The process holding an OFD lock on `byte` of the inode `key` names. OFD locks
/// carry no PID (/proc/locks shows -1), but each holder's descriptor lists
/// its locks in /proc/PID/fdinfo/FD.
fn lock_holder(key: &str, byte: i64) -> Option<String> {
    let me = std::process::id();
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(infos) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for info in infos.flatten() {
            let Ok(text) = std::fs::read_to_string(info.path()) else {
                continue;
            };
            // "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:10011605 100 101"
            let holds = text.lines().filter(|l| l.starts_with("lock:")).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let n = f.len();
                n >= 3
                    && f[n - 3] == key
                    && f[n - 2].parse::<i64>().is_ok_and(|s| s <= byte)
                    && (f[n - 1] == "EOF" || f[n - 1].parse::<i64>().is_ok_and(|e| e >= byte))
            });
            if holds {
                if pid == me {
                    // Another descriptor of this very process: two LUN
                    // entries for one disk it could not tell apart.
                    return Some("this daemon (another LUN entry)".into());
                }
                return Some(describe_process(pid));
            }
        }
    }
    None
}

/// LOOP_GET_STATUS64 (linux/loop.h).
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;

/// struct loop_info64 (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// If `file` is a loop device, its backing file, opened for locking (and
/// checked to be the object the loop device reads: same device and inode).
fn loop_backing_file(file: &File, writable: bool) -> Option<(File, PathBuf)> {
    let m = file.metadata().ok()?;
    if !m.file_type().is_block_device() {
        return None;
    }
    let rdev = m.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = format!("/sys/dev/block/{major}:{minor}/loop/backing_file");
    let name = std::fs::read_to_string(sys).ok()?;
    let backing = PathBuf::from(name.trim_end_matches('\n'));
    // SAFETY: LoopInfo64 is plain data, filled by the ioctl.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one loop_info64 into `info`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
    if r < 0 {
        return None;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&backing)
        .ok()?;
    let bm = f.metadata().ok()?;
    if bm.ino() != info.lo_inode || bm.dev() != info.lo_device {
        warn!(
            "Loop device {major}:{minor}: {} is not its backing file any more; not claimed",
            backing.display()
        );
        return None;
    }
    Some((f, backing))
}

// --- State files ---------------------------------------------------------

/// Claim the state file `path` for this process alone: an exclusive OFD
/// lock on `PATH.lock`, created if missing (the state file itself is
/// replaced by rename on every save, so it cannot carry the lock). The
/// returned file holds the lock.
pub fn claim_state_file(path: &Path) -> Result<File, Error> {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    if let Some(dir) = lock.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Lock {
                path: lock.clone(),
                source,
            })?;
        }
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|source| Error::Lock {
            path: lock.clone(),
            source,
        })?;
    let l = flock(libc::F_WRLCK, 0);
    // SAFETY: fcntl with a valid descriptor and a pointer to a live flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &l) } < 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
            return Err(Error::FileInUse {
                path: path.into(),
                holder: lock_holder_bounded(&f, 0).unwrap_or_else(|| "another process".into()),
            });
        }
        return Err(Error::Lock {
            path: lock,
            source: e,
        });
    }
    Ok(f)
}

// --- PID files -----------------------------------------------------------

/// A PID file holding this process' PID, locked (lockf) while it runs, so
/// that a second instance with the same PID file refuses to start.
pub fn write_pidfile(path: &Path) -> Result<File, Error> {
    let err = |source| Error::PidFile {
        path: path.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    // SAFETY: lockf on an fd we own; no memory arguments.
    if unsafe { libc::lockf(f.as_raw_fd(), libc::F_TLOCK, 0) } < 0 {
        let pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        return Err(Error::PidFileInUse {
            path: path.into(),
            holder: pid.map_or_else(|| "another instance".into(), describe_process),
        });
    }
    f.set_len(0).map_err(err)?;
    writeln!(f, "{}", std::process::id()).map_err(err)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_and_the_socket_appears_listening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(UnixListener::bind(&path).unwrap());
        let l = listen_unix(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        drop(l);
        // No temporary name left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _live = UnixListener::bind(&path).unwrap();
        let e = listen_unix(&path).unwrap_err();
        assert!(matches!(e, Error::SocketInUse { .. }), "{e}");
        assert!(e.to_string().contains("s.sock is in use"), "{e}");
        // Still the first listener's.
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(listen_unix(&path), Err(Error::NotASocket { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn a_path_too_long_for_the_temporary_name_still_works() {
        let dir = tempfile::tempdir().unwrap();
        // 107 bytes is the most a socket address holds (with its NUL).
        let room = 107 - dir.path().as_os_str().len() - 1;
        let path = dir.path().join("s".repeat(room));
        let _l = listen_unix(&path).unwrap();
        UnixStream::connect(&path).unwrap();
    }

    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        (dir, p)
    }

    fn open(p: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    const WRITER: Usage = Usage {
        writable: true,
        share_rw: false,
    };
    const READER: Usage = Usage {
        writable: false,
        share_rw: false,
    };
    const SHARED_WRITER: Usage = Usage {
        writable: true,
        share_rw: true,
    };

    // OFD locks of two open file descriptions conflict even within one
    // process: each `open` below stands for another daemon.

    #[test]
    fn a_second_writer_is_refused_and_the_first_one_released_frees_it() {
        let (_d, p) = image();
        let a = open(&p);
        claim_backstore(&a, &p, WRITER).unwrap();
        let b = open(&p);
        let e = claim_backstore(&b, &p, WRITER).unwrap_err();
        assert!(matches!(e, Error::BackstoreInUse { .. }), "{e}");
        drop((a, b));
        claim_backstore(&open(&p), &p, WRITER).unwrap();
    }

    #[test]
    fn readers_share_but_a_writer_and_a_reader_do_not() {
        let (_d, p) = image();
        let r1 = open(&p);
        claim_backstore(&r1, &p, READER).unwrap();
        let r2 = open(&p);
        claim_backstore(&r2, &p, READER).unwrap();
        let w = open(&p);
        let e = claim_backstore(&w, &p, WRITER).unwrap_err();
        assert!(e.to_string().contains("lets no one else write it"), "{e}");
    }

    #[test]
    fn writers_that_all_share_writes_coexist_but_not_with_an_exclusive_one() {
        let (_d, p) = image();
        let a = open(&p);
        claim_backstore(&a, &p, SHARED_WRITER).unwrap();
        let b = open(&p);
        claim_backstore(&b, &p, SHARED_WRITER).unwrap();
        let c = open(&p);
        let e = claim_backstore(&c, &p, WRITER).unwrap_err();
        assert!(e.to_string().contains("writes it"), "{e}");
    }

    #[test]
    fn a_refused_claim_leaves_no_lock_behind() {
        let (_d, p) = image();
        let a = open(&p);
        claim_backstore(&a, &p, WRITER).unwrap();
        let b = open(&p);
        assert!(claim_backstore(&b, &p, WRITER).is_err());
        // `b` is still open, but holds nothing: once `a` goes, the disk is
        // free.
        drop(a);
        claim_backstore(&open(&p), &p, WRITER).unwrap();
        drop(b);
    }

    #[test]
    fn a_hard_link_is_the_same_backstore() {
        let (d, p) = image();
        let link = d.path().join("other-name.img");
        std::fs::hard_link(&p, &link).unwrap();
        let a = open(&p);
        claim_backstore(&a, &p, WRITER).unwrap();
        assert!(claim_backstore(&open(&link), &link, WRITER).is_err());
    }

    #[test]
    fn qemu_lock_bytes_are_used() {
        // A writer that shares nothing: bytes 100, 101 and 201, as QEMU's
        // `-drive file=X` (virtio-blk, scsi-hd) locks them.
        let (_d, p) = image();
        let a = open(&p);
        claim_backstore(&a, &p, WRITER).unwrap();
        let b = open(&p);
        let taken: Vec<i64> = (99..203).filter(|&x| byte_taken(&b, x).unwrap()).collect();
        assert_eq!(taken, vec![100, 101, 201]);
    }

    #[test]
    fn a_state_file_has_one_writer() {
        let (d, _) = image();
        let state = d.path().join("lu.pr");
        let held = claim_state_file(&state).unwrap();
        let e = claim_state_file(&state).unwrap_err();
        assert!(matches!(e, Error::FileInUse { .. }), "{e}");
        drop(held);
        claim_state_file(&state).unwrap();
    }

    #[test]
    fn a_pid_file_is_written_and_locked() {
        let (d, _) = image();
        let pf = d.path().join("x.pid");
        let _held = write_pidfile(&pf).unwrap();
        let text = std::fs::read_to_string(&pf).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
    }
}
