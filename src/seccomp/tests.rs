// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

use super::*;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[test]
fn modes_parse_and_print() {
    for m in [Mode::Enforce, Mode::Log, Mode::Off] {
        assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
    }
    assert_eq!("on".parse::<Mode>(), Ok(Mode::Enforce));
    assert!("strict".parse::<Mode>().is_err());
    assert_eq!(Mode::default(), Mode::Enforce);
}

#[test]
fn every_mode_but_off_compiles_to_a_program() {
    assert!(program(Mode::Off).unwrap().is_none());
    for m in [Mode::Enforce, Mode::Log] {
        let p = program(m).unwrap().unwrap();
        assert!(p.len() > 100 && p.len() < u16::MAX as usize, "{}", p.len());
    }
}

/// Run /bin/true in a child that installs `program` between fork and exec,
/// after checking which socket families it may still open. Returns the
/// spawn error, if any.
fn spawn_under(program: Option<&BpfProgram>) -> Option<std::io::Error> {
    let program = program.cloned();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes system calls (no allocation on the success path).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &program {
                install_on_this_thread(p)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EBADE))?;
                // A Unix socket is allowed, a netlink socket is not.
                let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if unix < 0 {
                    return Err(std::io::Error::from_raw_os_error(libc::EBADR));
                }
                libc::close(unix);
                let netlink = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0);
                if netlink >= 0 || *libc::__errno_location() != libc::EPERM {
                    return Err(std::io::Error::from_raw_os_error(libc::EBADRQC));
                }
                // An ioctl the daemon never makes.
                let mut n: libc::c_int = 0;
                if libc::ioctl(0, libc::FIONREAD, &mut n) >= 0
                    || *libc::__errno_location() != libc::EPERM
                {
                    return Err(std::io::Error::from_raw_os_error(libc::EBADSLT));
                }
            }
            Ok(())
        });
    }
    match cmd.status() {
        Ok(st) => {
            assert!(st.success());
            None
        }
        Err(e) => Some(e),
    }
}

#[test]
fn the_filter_refuses_exec_netlink_and_unknown_ioctls_with_eperm() {
    // Without the filter the same child runs.
    assert!(spawn_under(None).is_none());
    let p = program(Mode::Enforce).unwrap().unwrap();
    let err = spawn_under(Some(&p)).expect("execve must be refused");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
}

#[test]
fn log_mode_refuses_nothing() {
    let p = program(Mode::Log).unwrap().unwrap();
    // The child's checks expect refusals, which log mode does not make:
    // the netlink socket opens, and that is reported as EBADRQC.
    let err = spawn_under(Some(&p)).expect("the checks must notice");
    assert_eq!(err.raw_os_error(), Some(libc::EBADRQC), "{err}");
}
