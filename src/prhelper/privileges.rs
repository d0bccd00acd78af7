// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Dropping privileges after start-up: device fds arrive over the socket,
//! so the helper needs no more than CAP_SYS_RAWIO (to send PERSISTENT RESERVE
//! commands with SG_IO). For multipath maps it also opens the path devices,
//! which an unprivileged user may not: CAP_DAC_OVERRIDE stays in the
//! permitted set (not the effective one) and is raised only around those
//! opens. The bounding set is cleared of everything else and no_new_privs is
//! set, so nothing can regain privileges.

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// capability(7) numbers.
pub const CAP_DAC_OVERRIDE: u32 = 1;
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

/// Set once privileges are dropped and CAP_DAC_OVERRIDE is only permitted.
static DAC_OVERRIDE_PERMITTED: AtomicBool = AtomicBool::new(false);

fn mask(caps: &[u32]) -> [u32; 2] {
    let mut m = [0u32; 2];
    for &c in caps {
        m[(c / 32) as usize] |= 1 << (c % 32);
    }
    m
}

fn capset(effective: &[u32], permitted: &[u32]) -> io::Result<()> {
    let (e, p) = (mask(effective), mask(permitted));
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

/// Drop to CAP_SYS_RAWIO (plus a permitted-only CAP_DAC_OVERRIDE when
/// `multipath`), optionally as another user and group. Must run before any
/// thread is started: capabilities are per thread.
pub fn drop_privileges(
    user: Option<Identity>,
    group: Option<libc::gid_t>,
    multipath: bool,
) -> io::Result<()> {
    let keep: Vec<u32> = if multipath {
        vec![CAP_SYS_RAWIO, CAP_DAC_OVERRIDE]
    } else {
        vec![CAP_SYS_RAWIO]
    };
    // Bounding set first, while CAP_SETPCAP is still effective.
    for cap in 0..=last_cap() {
        if !keep.contains(&cap) {
            prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap))?;
        }
    }
    let gid = group.or(user.map(|u| u.gid));
    if user.is_some() || gid.is_some() {
        prctl(libc::PR_SET_KEEPCAPS, 1)?;
        if let Some(gid) = gid {
            // SAFETY: one gid from a valid local.
            if unsafe { libc::setgroups(1, &gid) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain integer arguments.
            if unsafe { libc::setresgid(gid, gid, gid) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(u) = user {
            // SAFETY: plain integer arguments.
            if unsafe { libc::setresuid(u.uid, u.uid, u.uid) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    capset(&[CAP_SYS_RAWIO], &keep)?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    DAC_OVERRIDE_PERMITTED.store(multipath, Ordering::SeqCst);
    Ok(())
}

/// Run `f` with CAP_DAC_OVERRIDE effective if privileges were dropped and it
/// is permitted (multipath path opens); otherwise just run `f`.
pub fn with_dac_override<T>(f: impl FnOnce() -> T) -> T {
    if !DAC_OVERRIDE_PERMITTED.load(Ordering::SeqCst) {
        return f();
    }
    let both = [CAP_SYS_RAWIO, CAP_DAC_OVERRIDE];
    if let Err(e) = capset(&both, &both) {
        log::warn!("cannot raise CAP_DAC_OVERRIDE: {e}");
    }
    let r = f();
    if let Err(e) = capset(&[CAP_SYS_RAWIO], &both) {
        log::error!("cannot lower CAP_DAC_OVERRIDE: {e}");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_put_capabilities_in_the_right_word() {
        assert_eq!(
            mask(&[CAP_SYS_RAWIO, CAP_DAC_OVERRIDE]),
            [(1 << 17) | (1 << 1), 0]
        );
        assert_eq!(mask(&[38]), [0, 1 << 6]);
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
    }
}
