// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A cheap clock for command latencies: the CPU's time-stamp counter where
//! the kernel itself keeps time with it (clocksource `tsc`: invariant and
//! synchronised across CPUs), read in about 15 ns here where
//! clock_gettime(CLOCK_MONOTONIC) takes about 40 ns (measured on this
//! project's 2-core VMs); `Instant` elsewhere. Only differences of two
//! stamps mean anything.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in time, in ticks of the clock chosen at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

/// The clock: ticks per microsecond of the TSC, or None for `Instant`.
struct Clock {
    tsc_per_us: Option<f64>,
    origin: Instant,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// How long the TSC is measured against the monotonic clock at start.
const CALIBRATION: Duration = Duration::from_millis(5);

fn clock() -> &'static Clock {
    CLOCK.get_or_init(|| Clock {
        tsc_per_us: tsc_per_us(),
        origin: Instant::now(),
    })
}

/// Choose and calibrate the clock now (at daemon start), rather than on
/// the first command.
pub fn init() {
    let _ = clock();
}

#[cfg(target_arch = "x86_64")]
fn tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions and touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn tsc_per_us() -> Option<f64> {
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .ok()?;
    if source.trim() != "tsc" {
        return None;
    }
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(CALIBRATION);
    let (t1, c1) = (Instant::now(), tsc());
    let us = t1.duration_since(t0).as_secs_f64() * 1e6;
    let ticks = c1.checked_sub(c0)? as f64;
    (us > 0.0 && ticks > 0.0).then_some(ticks / us)
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc_per_us() -> Option<f64> {
    None
}

impl Stamp {
    #[inline]
    pub fn now() -> Stamp {
        let c = clock();
        #[cfg(target_arch = "x86_64")]
        if c.tsc_per_us.is_some() {
            return Stamp(tsc());
        }
        Stamp(u64::try_from(c.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Microseconds from `self` to `later` (0 if `later` is earlier).
    #[inline]
    pub fn micros_until(self, later: Stamp) -> u64 {
        let d = later.0.saturating_sub(self.0);
        match clock().tsc_per_us {
            Some(per_us) => (d as f64 / per_us) as u64,
            None => d / 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_measure_elapsed_time() {
        init();
        let a = Stamp::now();
        std::thread::sleep(Duration::from_millis(20));
        let b = Stamp::now();
        let us = a.micros_until(b);
        // At least the sleep; at most what a loaded machine adds (generous).
        assert!((19_000..2_000_000).contains(&us), "{us} us");
        assert_eq!(b.micros_until(a), 0);
    }
}
