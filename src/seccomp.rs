// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A seccomp allowlist for `serve` and `pr-helper`, installed once start-up
//! is over (sockets bound, backstores opened, privileges dropped).
//!
//! Everything the daemon does while serving is on the list: the data path
//! (reads, writes, io_uring, fallocate, the block ioctls), vhost-user
//! (sockets, descriptors passed with SCM_RIGHTS, mmap of guest memory,
//! memfds for the dirty log and the inflight region), the iSCSI initiator
//! (TCP sockets), the control socket and the configuration it writes back,
//! threads and signals. Everything else (execve, ptrace, mount, module
//! loading, raw and netlink sockets, ioctls other than the few it uses, ...)
//! fails with EPERM, and with `enforce` the kernel logs each refusal to the
//! audit log (`journalctl -k`, "type=1326"). `log` allows everything but
//! logs what `enforce` would refuse, to find what a new configuration needs
//! before enforcing.
//!
//! io_uring requests themselves are not system calls, so the filter cannot
//! see them; the rings only ever carry the daemon's own reads, writes and
//! flushes on descriptors it opened.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What to do with a system call that is not on the list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Fail it with EPERM and log it to the audit log.
    #[default]
    Enforce,
    /// Allow it, and log it to the audit log.
    Log,
    /// No filter.
    Off,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "enforce" | "on" => Ok(Mode::Enforce),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            _ => Err(format!(
                "seccomp mode '{s}' is not one of enforce, log, off"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Log => "log",
            Mode::Off => "off",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    #[error("this architecture has no seccomp allowlist")]
    Architecture,
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[source] std::io::Error),
}

/// Block ioctls (linux/fs.h), the loop device query used by claims
/// (linux/loop.h), SG_IO (scsi/sg.h, the pr-helper), and the terminal and
/// non-blocking queries the standard library makes.
const IOCTLS: &[u64] = &[
    0x8008_1272, // BLKGETSIZE64
    0x1277,      // BLKDISCARD
    0x127f,      // BLKZEROOUT
    0x1268,      // BLKSSZGET
    0x127b,      // BLKPBSZGET
    0x125e,      // BLKROGET
    0x4c05,      // LOOP_GET_STATUS64
    0x2285,      // SG_IO
    0x5421,      // FIONBIO
    0x5451,      // FIOCLEX
    0x5401,      // TCGETS
];

/// System calls allowed whatever their arguments.
fn unconditional() -> Vec<i64> {
    let mut v = vec![
        // Memory.
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_memfd_create,
        // Files and descriptors.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_openat,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fstatfs,
        libc::SYS_statfs,
        libc::SYS_lseek,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_fadvise64,
        libc::SYS_copy_file_range,
        libc::SYS_ftruncate,
        libc::SYS_fcntl,
        libc::SYS_flock,
        libc::SYS_getdents64,
        libc::SYS_readlinkat,
        libc::SYS_unlinkat,
        libc::SYS_renameat2,
        libc::SYS_mkdirat,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_getcwd,
        // Sockets (the family is checked in `socket` below).
        libc::SYS_connect,
        libc::SYS_accept4,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_shutdown,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_socketpair,
        // Waiting.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
        libc::SYS_ppoll,
        libc::SYS_futex,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_sched_yield,
        libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        // Threads, signals, identity.
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_set_tid_address,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_restart_syscall,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_sigaltstack,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getrandom,
        libc::SYS_prlimit64,
        libc::SYS_uname,
        libc::SYS_capget,
        // Lowering and raising CAP_DAC_OVERRIDE within the permitted set
        // (pr-helper multipath); capset(2) cannot add to it.
        libc::SYS_capset,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_readlink,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_mkdir,
        libc::SYS_renameat,
        libc::SYS_poll,
        libc::SYS_epoll_wait,
        libc::SYS_dup2,
        libc::SYS_access,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_arch_prctl,
    ]);
    v
}

fn eq(arg: u8, value: u64) -> Result<SeccompCondition, Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| Error::Build(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, Error> {
    SeccompRule::new(conditions).map_err(|e| Error::Build(e.to_string()))
}

fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, Error> {
    values.iter().map(|&v| rule(vec![eq(arg, v)?])).collect()
}

fn target_arch() -> Result<TargetArch, Error> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(Error::Architecture)
    }
}

/// The compiled filter for `mode` (`Off` has none).
pub fn program(mode: Mode) -> Result<Option<BpfProgram>, Error> {
    let refused = match mode {
        Mode::Off => return Ok(None),
        Mode::Enforce => SeccompAction::Errno(libc::EPERM as u32),
        Mode::Log => SeccompAction::Log,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = unconditional()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    rules.insert(libc::SYS_ioctl, one_of(1, IOCTLS)?);
    let families = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6].map(|f| f as u64);
    rules.insert(libc::SYS_socket, one_of(0, &families)?);
    let prctls = [
        libc::PR_SET_NAME,
        libc::PR_GET_NAME,
        libc::PR_CAPBSET_READ,
        libc::PR_GET_DUMPABLE,
    ]
    .map(|p| p as u64);
    rules.insert(libc::SYS_prctl, one_of(0, &prctls)?);
    // Signals to this process only (abort, and thread wake-ups).
    let pid = u64::from(std::process::id());
    rules.insert(libc::SYS_tgkill, one_of(0, &[pid])?);
    let filter = SeccompFilter::new(rules, refused, SeccompAction::Allow, target_arch()?)
        .map_err(|e| Error::Build(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| Error::Build(e.to_string()))?;
    Ok(Some(program))
}

/// Install the filter on every thread of the process. With `Enforce`, the
/// kernel logs each refused call.
pub fn install(mode: Mode) -> Result<(), Error> {
    let Some(program) = program(mode)? else {
        return Ok(());
    };
    let mut flags = libc::SECCOMP_FILTER_FLAG_TSYNC;
    if mode == Mode::Enforce {
        flags |= libc::SECCOMP_FILTER_FLAG_LOG;
    }
    apply(&program, flags)
}

/// Install `program` on every thread with `flags`; no_new_privs is set
/// first, as the kernel requires of a process without CAP_SYS_ADMIN.
fn apply(program: &BpfProgram, flags: libc::c_ulong) -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(Error::Install(std::io::Error::last_os_error()));
    }
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| Error::Build("the filter is too long".into()))?,
        // The kernel only reads the instructions.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `program`, which outlives the call; the
    // kernel copies the instructions. seccompiler's sock_filter has the
    // kernel's layout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    match r {
        0 => Ok(()),
        r if r < 0 => Err(Error::Install(std::io::Error::last_os_error())),
        // With TSYNC, a positive result is the id of a thread that could
        // not be synchronized.
        tid => Err(Error::Install(std::io::Error::other(format!(
            "thread {tid} cannot take the filter"
        )))),
    }
}

/// Install `program` on the calling thread only; for tests that fork.
#[doc(hidden)]
pub fn install_on_this_thread(program: &BpfProgram) -> Result<(), Error> {
    apply(program, 0)
}

#[cfg(test)]
mod tests;
