// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Dropping privileges after start-up, for `serve` and `pr-helper`.
//!
//! Both open what needs privilege first (sockets, backstores), then switch
//! to another user and group if asked and keep only the capabilities their
//! configuration needs: the bounding set is cleared of everything else and
//! no_new_privs is set, so nothing can regain them. A capability can be kept
//! permitted but not effective (the pr-helper's CAP_DAC_OVERRIDE, raised
//! only around the opens of multipath path devices).
//!
//! Capabilities are per thread: drop them before starting threads.

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// capability(7) numbers.
pub const CAP_CHOWN: u32 = 0;
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_SYS_RAWIO: u32 = 17;

/// _LINUX_CAPABILITY_VERSION_3 (linux/capability.h).
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capability sets left after [`drop_privileges`], as masks (bit n is
/// capability n); both all ones until then, which means "not dropped".
static EFFECTIVE: AtomicU64 = AtomicU64::new(u64::MAX);
static PERMITTED: AtomicU64 = AtomicU64::new(u64::MAX);

/// A set of capabilities, bit n for capability n.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);

    pub fn of(caps: &[u32]) -> CapSet {
        CapSet(caps.iter().fold(0, |m, &c| m | 1u64 << (c % 64)))
    }

    pub fn with(self, cap: u32) -> CapSet {
        CapSet(self.0 | 1u64 << (cap % 64))
    }

    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }

    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1u64 << cap) != 0
    }

    /// The lower and upper 32-bit words, as capset(2) takes them.
    fn words(self) -> [u32; 2] {
        [self.0 as u32, (self.0 >> 32) as u32]
    }
}

impl std::fmt::Display for CapSet {
    /// "none", or the names joined with commas: "cap_sys_rawio,cap_chown".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        for cap in (0..64).filter(|&c| self.contains(c)) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            match NAMES.get(cap as usize) {
                Some(name) => write!(f, "cap_{name}")?,
                None => write!(f, "cap_{cap}")?,
            }
        }
        Ok(())
    }
}

/// capability(7) names in number order, without the "cap_" prefix.
const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// A capability by name: "sys_rawio", "cap_sys_rawio" or "CAP_SYS_RAWIO".
pub fn cap_by_name(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

fn capset(effective: CapSet, permitted: CapSet) -> io::Result<()> {
    let (e, p) = (effective.words(), permitted.words());
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: e[0],
            permitted: p[0],
            inheritable: 0,
        },
        CapData {
            effective: e[1],
            permitted: p[1],
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) reads a v3 header and two data structs, both valid.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(op: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the prctl operations used here take integer arguments only.
    let r = unsafe { libc::prctl(op, arg, 0, 0, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// A user and group to run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Look up a user name (or number): its uid and primary gid.
pub fn lookup_user(name: &str) -> io::Result<Identity> {
    let not_found = || io::Error::new(io::ErrorKind::NotFound, format!("no user '{name}'"));
    let c = CString::new(name).map_err(|_| not_found())?;
    // SAFETY: passwd is plain data; getpwnam_r fills it and points into buf.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives its use.
    unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if !result.is_null() {
        return Ok(Identity {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        });
    }
    let uid: libc::uid_t = name.parse().map_err(|_| not_found())?;
    Ok(Identity { uid, gid: uid })
}

/// Look up a group name (or number).
pub fn lookup_group(name: &str) -> io::Result<libc::gid_t> {
    let not_found = || io::Error::new(io::ErrorKind::NotFound, format!("no group '{name}'"));
    let c = CString::new(name).map_err(|_| not_found())?;
    // SAFETY: group is plain data; getgrnam_r fills it and points into buf.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives its use.
    unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if !result.is_null() {
        return Ok(gr.gr_gid);
    }
    name.parse().map_err(|_| not_found())
}

/// Supplementary groups of a user (its primary group first), as
/// getgrouplist(3) reports them from the group database.
pub fn user_groups(name: &str, gid: libc::gid_t) -> io::Result<Vec<libc::gid_t>> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, format!("no user '{name}'")))?;
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: groups holds n entries; getgrouplist writes at most n and
        // sets n to the number it found.
        let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n.max(0) as usize);
            return Ok(groups);
        }
        if n <= asked || n > 65536 {
            return Err(io::Error::other(format!(
                "cannot list the groups of '{name}'"
            )));
        }
    }
}

/// What to become: a user, a group, supplementary groups and the
/// capabilities to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub uid: Option<libc::uid_t>,
    pub gid: Option<libc::gid_t>,
    /// Replace the supplementary groups with these (when a gid is set).
    pub groups: Vec<libc::gid_t>,
    /// Capabilities in effect from now on.
    pub effective: CapSet,
    /// Capabilities that can be raised later with [`with_dac_override`];
    /// a superset of `effective`.
    pub permitted: CapSet,
}

/// Become `target`: switch group and user, keep only its capabilities (in
/// the bounding set too) and set no_new_privs. Must run before any thread
/// is started: capabilities are per thread.
pub fn drop_privileges(target: &Target) -> io::Result<()> {
    let permitted = target.permitted.union(target.effective);
    let now = Status::of("self")?;
    // capset(2) would refuse with a bare EPERM: name what is missing (a
    // service manager's or container's bounding set may leave it out).
    let missing = CapSet(permitted.0 & !now.permitted.0);
    if missing != CapSet::EMPTY {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{missing} needed but not permitted to this process \
                 (left out of its capability bounding set?)"
            ),
        ));
    }
    // Bounding set first, while CAP_SETPCAP is still effective. Without it
    // (a service manager's bounding set may leave it out) the bounding set
    // stays: it only matters across execve, which no_new_privs and the
    // seccomp filter rule out anyway.
    if now.effective.contains(CAP_SETPCAP) {
        for cap in 0..=last_cap() {
            if !permitted.contains(cap) {
                prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap))?;
            }
        }
    }
    if target.uid.is_some() || target.gid.is_some() {
        prctl(libc::PR_SET_KEEPCAPS, 1)?;
        if let Some(gid) = target.gid {
            let groups = if target.groups.is_empty() {
                vec![gid]
            } else {
                target.groups.clone()
            };
            // SAFETY: the pointer and length describe a live vector.
            if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain integer arguments.
            if unsafe { libc::setresgid(gid, gid, gid) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(uid) = target.uid {
            // SAFETY: plain integer arguments.
            if unsafe { libc::setresuid(uid, uid, uid) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        prctl(libc::PR_SET_KEEPCAPS, 0)?;
    }
    capset(target.effective, permitted)?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    EFFECTIVE.store(target.effective.0, Ordering::SeqCst);
    PERMITTED.store(permitted.0, Ordering::SeqCst);
    Ok(())
}

/// Run `f` with CAP_DAC_OVERRIDE effective on this thread if privileges
/// were dropped and it is permitted (multipath path opens); otherwise just
/// run `f`.
pub fn with_dac_override<T>(f: impl FnOnce() -> T) -> T {
    let (effective, permitted) = (
        CapSet(EFFECTIVE.load(Ordering::SeqCst)),
        CapSet(PERMITTED.load(Ordering::SeqCst)),
    );
    if !permitted.contains(CAP_DAC_OVERRIDE) || effective.contains(CAP_DAC_OVERRIDE) {
        return f();
    }
    if let Err(e) = capset(effective.with(CAP_DAC_OVERRIDE), permitted) {
        log::warn!("cannot raise CAP_DAC_OVERRIDE: {e}");
    }
    let r = f();
    if let Err(e) = capset(effective, permitted) {
        log::error!("cannot lower CAP_DAC_OVERRIDE: {e}");
    }
    r
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What /proc/PID/status says about a process' privileges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub effective: CapSet,
    pub permitted: CapSet,
    pub bounding: CapSet,
    pub no_new_privs: bool,
    /// 0 off, 1 strict, 2 filter.
    pub seccomp: u8,
}

impl Status {
    /// Parse the text of /proc/PID/status.
    pub fn parse(text: &str) -> Status {
        fn ids(v: &str) -> [u32; 4] {
            let mut out = [0; 4];
            for (slot, n) in out.iter_mut().zip(v.split_whitespace()) {
                *slot = n.parse().unwrap_or(0);
            }
            out
        }
        let caps = |v: &str| CapSet(u64::from_str_radix(v.trim(), 16).unwrap_or(0));
        let mut st = Status::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "Uid" => st.uids = ids(value),
                "Gid" => st.gids = ids(value),
                "Groups" => {
                    st.groups = value
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                }
                "CapEff" => st.effective = caps(value),
                "CapPrm" => st.permitted = caps(value),
                "CapBnd" => st.bounding = caps(value),
                "NoNewPrivs" => st.no_new_privs = value == "1",
                "Seccomp" => st.seccomp = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        st
    }

    /// The status of process `pid` ("self" for this one).
    pub fn of(pid: &str) -> io::Result<Status> {
        std::fs::read_to_string(format!("/proc/{pid}/status")).map(|t| Status::parse(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets_use_the_kernel_bit_numbers() {
        let set = CapSet::of(&[CAP_SYS_RAWIO, CAP_DAC_OVERRIDE]);
        assert_eq!(set.words(), [(1 << 17) | (1 << 1), 0]);
        assert_eq!(CapSet::of(&[38]).words(), [0, 1 << 6]);
        assert!(set.contains(CAP_SYS_RAWIO) && !set.contains(CAP_CHOWN));
        assert_eq!(set.to_string(), "cap_dac_override,cap_sys_rawio");
        assert_eq!(CapSet::EMPTY.to_string(), "none");
    }

    #[test]
    fn capabilities_are_found_by_any_spelling_of_their_name() {
        assert_eq!(cap_by_name("sys_rawio"), Some(CAP_SYS_RAWIO));
        assert_eq!(cap_by_name("CAP_DAC_OVERRIDE"), Some(CAP_DAC_OVERRIDE));
        assert_eq!(cap_by_name("cap_chown"), Some(CAP_CHOWN));
        assert_eq!(cap_by_name("checkpoint_restore"), Some(40));
        assert_eq!(cap_by_name("rawio"), None);
        assert_eq!(cap_by_name(""), None);
    }

    #[test]
    fn proc_status_is_read_for_ids_capabilities_and_seccomp() {
        let text = "Name:\tvhost-user-scsi\nUid:\t65534\t65534\t65534\t65534\n\
                    Gid:\t65534\t65534\t65534\t65534\nGroups:\t6 65534 \n\
                    CapPrm:\t0000000000020002\nCapEff:\t0000000000020000\n\
                    CapBnd:\t0000000000020002\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        let st = Status::parse(text);
        assert_eq!(st.uids, [65534; 4]);
        assert_eq!(st.groups, vec![6, 65534]);
        assert_eq!(st.effective, CapSet::of(&[CAP_SYS_RAWIO]));
        assert_eq!(st.permitted, CapSet::of(&[CAP_SYS_RAWIO, CAP_DAC_OVERRIDE]));
        assert!(st.no_new_privs);
        assert_eq!(st.seccomp, 2);
        let me = Status::of("self").unwrap();
        assert_eq!(me.uids[1] == 0, is_root());
    }

    #[test]
    fn root_and_numeric_ids_resolve() {
        assert_eq!(lookup_user("root").unwrap().uid, 0);
        assert_eq!(
            lookup_user("1234").unwrap(),
            Identity {
                uid: 1234,
                gid: 1234
            }
        );
        assert!(lookup_user("no-such-user-here").is_err());
        assert_eq!(lookup_group("0").unwrap(), 0);
        assert!(user_groups("root", 0).unwrap().contains(&0));
    }
}
