// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The machine's floor under any CPU-per-I/O figure at queue depth 1: two
//! processes hand a token back and forth through two eventfds, each
//! sleeping in epoll_wait between turns, as the daemon and its guest (or a
//! target) do for every command at queue depth 1. Prints the CPU time
//! (user + system) each side spends per round trip, and the wall time, as
//! one JSON object; `scripts/bench.py` reports it next to the QD1 rows.
//!
//! Usage: wakeup_floor [ROUND_TRIPS]   (default 50000)

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// CPU time of this process so far, in microseconds.
fn cpu_us() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the live local it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(r.ru_utime) + us(r.ru_stime)
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn eventfd() -> io::Result<RawFd> {
    // SAFETY: eventfd takes no pointers.
    check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })
}

/// An epoll set watching `fd` for reading.
fn epoll_on(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: epoll_create1 takes no pointers.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    let mut e = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: `e` is a live local for the duration of the call.
    check(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut e) })?;
    Ok(ep)
}

/// Sleep until `fd` is readable, then take its count.
fn wait_and_take(ep: RawFd, fd: RawFd) -> io::Result<()> {
    let mut e = libc::epoll_event { events: 0, u64: 0 };
    loop {
        // SAFETY: room for one event in a live local.
        let n = unsafe { libc::epoll_wait(ep, &mut e, 1, -1) };
        if n == 1 {
            break;
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    check(unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) } as libc::c_int)?;
    Ok(())
}

fn post(fd: RawFd) -> io::Result<()> {
    let v = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    check(unsafe { libc::write(fd, (&v as *const u64).cast(), 8) } as libc::c_int)?;
    Ok(())
}

fn main() -> io::Result<()> {
    let n: u32 = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ROUND_TRIPS: a number"))?,
        None => 50_000,
    };
    let (ping, pong) = (eventfd()?, eventfd()?);
    let mut result = [0 as RawFd; 2];
    // SAFETY: pipe writes two descriptors into the live array.
    check(unsafe { libc::pipe(result.as_mut_ptr()) })?;
    // SAFETY: no thread has been started, so the child is a copy of a
    // single-threaded process and may run any code.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        // The echo side: wake up for each ping, answer with a pong.
        let code = (|| -> io::Result<()> {
            let ep = epoll_on(ping)?;
            let start = cpu_us();
            for _ in 0..n {
                wait_and_take(ep, ping)?;
                post(pong)?;
            }
            let per = (cpu_us() - start) / f64::from(n);
            // SAFETY: writes the 8 bytes of a live f64.
            unsafe { libc::write(result[1], (&per as *const f64).cast(), 8) };
            Ok(())
        })()
        .map_or(1, |()| 0);
        // SAFETY: ends the child without running the parent's exit code.
        unsafe { libc::_exit(code) };
    }
    let ep = epoll_on(pong)?;
    let (start, wall) = (cpu_us(), Instant::now());
    for _ in 0..n {
        post(ping)?;
        wait_and_take(ep, pong)?;
    }
    let driver = (cpu_us() - start) / f64::from(n);
    let wall = wall.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let mut status = 0;
    // SAFETY: waits for the child forked above, writing its status into a
    // live local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let mut echo = f64::NAN;
    // SAFETY: reads at most 8 bytes into a live f64.
    let got = unsafe { libc::read(result[0], (&mut echo as *mut f64).cast(), 8) };
    if got != 8 || status != 0 {
        return Err(io::Error::other("the echo process failed"));
    }
    println!(
        "{{\"round_trips\":{n},\"driver_cpu_us\":{driver:.2},\"echo_cpu_us\":{echo:.2},\"wall_us\":{wall:.2}}}"
    );
    Ok(())
}
