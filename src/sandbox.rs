// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Least privilege for `serve`: what the daemon keeps once start-up is over.
//!
//! Start-up (as root, typically) opens what needs privilege: the backstores
//! and their reservation state files, the iSCSI credentials files, the
//! vhost-user, control and pr-helper sockets and the metrics port. Then,
//! before any thread is started (capabilities are per thread), the daemon
//! switches to `user`/`group` if asked, keeps only the capabilities its
//! configuration needs, clears the bounding set of the rest, sets
//! no_new_privs, and installs the seccomp allowlist on every thread.
//!
//! The capabilities a configuration needs while serving:
//! - files, block devices, O_DIRECT, iSCSI: none (the descriptors are open);
//! - the pr-helper socket: CAP_SYS_RAWIO in effect (PERSISTENT RESERVE
//!   through SG_IO), CAP_DAC_OVERRIDE permitted only, raised around the
//!   opens of multipath path devices;
//! - a control socket with socket ownership the run-time user cannot give
//!   by itself (another owner, or a group it is not a member of): CAP_CHOWN,
//!   for the sockets of controllers added at run time;
//! - whatever `keep-caps` adds (e.g. cap_dac_override, to open at run time
//!   backstores the daemon's user cannot).

use std::ffi::CString;
use std::io;
use std::path::Path;

use log::info;

use crate::config_file::FileConfig;
use crate::privileges::{self, CapSet, Target};
use crate::seccomp;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Unknown user '{0}'")]
    NoUser(String),
    #[error("Unknown group '{0}'")]
    NoGroup(String),
    #[error("Unknown capability '{0}' (names as in capabilities(7), e.g. cap_sys_rawio)")]
    NoCapability(String),
    #[error("{0} needs the daemon to start as root")]
    NotRoot(&'static str),
    #[error("Socket mode '{0}' is not an octal mode between 0 and 0777, e.g. 0660")]
    Mode(String),
    #[error("Cannot list the groups of user '{0}'")]
    Groups(String, #[source] io::Error),
    #[error("{0} threads run already: privileges must be dropped before any starts")]
    Threads(usize),
    #[error("Cannot drop privileges")]
    Drop(#[source] io::Error),
    #[error("{0}")]
    SeccompMode(String),
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
}

/// Who may connect to the vhost-user sockets: their owner, group and mode,
/// set before the socket appears at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketAccess {
    pub owner: Option<libc::uid_t>,
    pub group: Option<libc::gid_t>,
    pub mode: u32,
}

impl Default for SocketAccess {
    /// The daemon's user only.
    fn default() -> SocketAccess {
        SocketAccess {
            owner: None,
            group: None,
            mode: 0o600,
        }
    }
}

impl SocketAccess {
    /// Give the socket at `path` this owner, group and mode.
    pub fn apply(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if self.owner.is_some() || self.group.is_some() {
            let c = CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: a NUL-terminated path; -1 (u32::MAX) leaves an id as
            // it is.
            let r = unsafe {
                libc::chown(
                    c.as_ptr(),
                    self.owner.unwrap_or(u32::MAX),
                    self.group.unwrap_or(u32::MAX),
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))
    }
}

/// What the daemon serves, as far as its privileges are concerned.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// It serves the qemu-pr-helper protocol (SG_IO).
    pub pr_helper: bool,
    /// It has a control socket (controllers, hence sockets, added at run
    /// time).
    pub control: bool,
}

/// What to become once start-up is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// None when the daemon did not start as root: it has nothing to drop.
    pub target: Option<Target>,
    pub seccomp: seccomp::Mode,
    pub sockets: SocketAccess,
}

impl Plan {
    /// Work out the plan from the daemon's settings (command line and
    /// configuration file).
    pub fn new(s: &FileConfig, needs: Needs) -> Result<Plan, Error> {
        Plan::resolve(s, needs, privileges::is_root())
    }

    fn resolve(s: &FileConfig, needs: Needs, root: bool) -> Result<Plan, Error> {
        let user = s
            .user
            .as_deref()
            .map(|u| {
                privileges::lookup_user(u)
                    .map(|id| (u, id))
                    .map_err(|_| Error::NoUser(u.into()))
            })
            .transpose()?;
        let group = s
            .group
            .as_deref()
            .map(|g| privileges::lookup_group(g).map_err(|_| Error::NoGroup(g.into())))
            .transpose()?;
        let seccomp = match &s.seccomp {
            Some(m) => m.parse().map_err(Error::SeccompMode)?,
            None => seccomp::Mode::default(),
        };
        let sockets = SocketAccess {
            owner: s
                .socket_owner
                .as_deref()
                .map(|u| {
                    privileges::lookup_user(u)
                        .map(|id| id.uid)
                        .map_err(|_| Error::NoUser(u.into()))
                })
                .transpose()?,
            group: s
                .socket_group
                .as_deref()
                .map(|g| privileges::lookup_group(g).map_err(|_| Error::NoGroup(g.into())))
                .transpose()?,
            mode: match &s.socket_mode {
                Some(m) => parse_mode(m)?,
                None if s.socket_group.is_some() => 0o660,
                None => 0o600,
            },
        };
        let mut keep = CapSet::EMPTY;
        for name in &s.keep_caps {
            let cap =
                privileges::cap_by_name(name).ok_or_else(|| Error::NoCapability(name.clone()))?;
            keep = keep.with(cap);
        }
        if !root {
            if user.is_some() || group.is_some() {
                return Err(Error::NotRoot("--user/--group"));
            }
            if keep != CapSet::EMPTY {
                return Err(Error::NotRoot("--keep-caps"));
            }
            return Ok(Plan {
                target: None,
                seccomp,
                sockets,
            });
        }
        let uid = user.map(|(_, id)| id.uid);
        let gid = group.or(user.map(|(_, id)| id.gid));
        let groups = match (user, gid) {
            (Some((name, _)), Some(gid)) => {
                privileges::user_groups(name, gid).map_err(|e| Error::Groups(name.into(), e))?
            }
            (None, Some(gid)) => vec![gid],
            (_, None) => current_groups(),
        };
        let mut effective = keep;
        let mut permitted = keep;
        if needs.pr_helper {
            effective = effective.with(privileges::CAP_SYS_RAWIO);
            permitted = effective.with(privileges::CAP_DAC_OVERRIDE);
        }
        // Sockets of controllers added at run time are given away by the
        // daemon's user: without CAP_CHOWN only to a group it is in.
        let other_owner = sockets.owner.is_some_and(|o| o != uid.unwrap_or(0));
        let other_group = sockets.group.is_some_and(|g| !groups.contains(&g));
        if needs.control && (other_owner || other_group) {
            effective = effective.with(privileges::CAP_CHOWN);
            permitted = permitted.with(privileges::CAP_CHOWN);
        }
        Ok(Plan {
            target: Some(Target {
                uid,
                gid,
                groups: if gid.is_some() { groups } else { Vec::new() },
                effective,
                permitted,
            }),
            seccomp,
            sockets,
        })
    }

    /// Drop privileges and install the seccomp filter. Call it once, from
    /// the only thread.
    pub fn enter(&self) -> Result<(), Error> {
        if let Some(t) = &self.target {
            let threads = thread_count();
            if threads > 1 {
                return Err(Error::Threads(threads));
            }
            privileges::drop_privileges(t).map_err(Error::Drop)?;
        }
        seccomp::install(self.seccomp)?;
        let st = privileges::Status::of("self").unwrap_or_default();
        info!(
            "Running as uid {} gid {}, capabilities {}{}, seccomp {}",
            st.uids[1],
            st.gids[1],
            st.effective,
            if st.permitted == st.effective {
                String::new()
            } else {
                format!(" (permitted {})", st.permitted)
            },
            self.seccomp
        );
        Ok(())
    }
}

/// An octal file mode: "660", "0660" or "0o660".
fn parse_mode(s: &str) -> Result<u32, Error> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(Error::Mode(s.into())),
    }
}

/// The process' effective gid and supplementary groups.
fn current_groups() -> Vec<libc::gid_t> {
    // SAFETY: with a size of 0 getgroups only returns the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut v = vec![0; usize::try_from(n).unwrap_or(0)];
    // SAFETY: v holds n entries; getgroups writes at most that many.
    let got = unsafe { libc::getgroups(n.max(0), v.as_mut_ptr()) };
    v.truncate(usize::try_from(got).unwrap_or(0));
    // SAFETY: getegid has no preconditions.
    v.push(unsafe { libc::getegid() });
    v
}

/// The number of threads of this process.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut FileConfig)) -> FileConfig {
        let mut s = FileConfig::default();
        f(&mut s);
        s
    }

    #[test]
    fn modes_are_octal_and_at_most_0777() {
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("660").unwrap(), 0o660);
        assert_eq!(parse_mode("0o600").unwrap(), 0o600);
        for bad in ["", "0o", "1777", "8", "rw", "-1"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn root_keeps_nothing_by_default_and_the_pr_helper_its_two() {
        let p = Plan::resolve(&FileConfig::default(), Needs::default(), true).unwrap();
        let t = p.target.unwrap();
        assert_eq!((t.uid, t.gid), (None, None));
        assert_eq!((t.effective, t.permitted), (CapSet::EMPTY, CapSet::EMPTY));
        assert_eq!(p.seccomp, seccomp::Mode::Enforce);
        assert_eq!(p.sockets, SocketAccess::default());

        let needs = Needs {
            pr_helper: true,
            control: false,
        };
        let t = Plan::resolve(&FileConfig::default(), needs, true)
            .unwrap()
            .target
            .unwrap();
        assert_eq!(t.effective, CapSet::of(&[privileges::CAP_SYS_RAWIO]));
        assert_eq!(
            t.permitted,
            CapSet::of(&[privileges::CAP_SYS_RAWIO, privileges::CAP_DAC_OVERRIDE])
        );
    }

    #[test]
    fn a_user_brings_its_groups_and_a_foreign_socket_owner_cap_chown() {
        let s = settings(|s| {
            s.user = Some("root".into());
            s.socket_owner = Some("65534".into());
            s.socket_group = Some("0".into());
            s.keep_caps = vec!["dac_override".into()];
        });
        let control = Needs {
            pr_helper: false,
            control: true,
        };
        let p = Plan::resolve(&s, control, true).unwrap();
        assert_eq!(
            p.sockets,
            SocketAccess {
                owner: Some(65534),
                group: Some(0),
                mode: 0o660
            }
        );
        let t = p.target.unwrap();
        assert_eq!((t.uid, t.gid), (Some(0), Some(0)));
        assert!(t.groups.contains(&0));
        assert_eq!(
            t.effective,
            CapSet::of(&[privileges::CAP_DAC_OVERRIDE, privileges::CAP_CHOWN])
        );
        // Without a control socket every socket is made at start, as root.
        let t = Plan::resolve(&s, Needs::default(), true)
            .unwrap()
            .target
            .unwrap();
        assert_eq!(t.effective, CapSet::of(&[privileges::CAP_DAC_OVERRIDE]));
        // A socket group the user is in needs nothing.
        let s = settings(|s| {
            s.user = Some("root".into());
            s.socket_group = Some("0".into());
        });
        let t = Plan::resolve(&s, control, true).unwrap().target.unwrap();
        assert_eq!(t.effective, CapSet::EMPTY);
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |f: fn(&mut FileConfig), root| {
            Plan::resolve(&settings(f), Needs::default(), root)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(|s| s.user = Some("no-such-user-here".into()), true).contains("no-such"));
        assert!(bad(|s| s.group = Some("no-such-group-here".into()), true).contains("no-such"));
        assert!(bad(|s| s.keep_caps = vec!["rawio".into()], true).contains("'rawio'"));
        assert!(bad(|s| s.socket_mode = Some("0999".into()), true).contains("0999"));
        assert!(bad(|s| s.seccomp = Some("strict".into()), true).contains("strict"));
        assert!(bad(|s| s.user = Some("root".into()), false).contains("root"));
        assert!(bad(|s| s.keep_caps = vec!["chown".into()], false).contains("root"));
        let p = Plan::resolve(&FileConfig::default(), Needs::default(), false).unwrap();
        assert_eq!(p.target, None);
    }
}
