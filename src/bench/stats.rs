// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Measurements: latencies, throughput, and CPU time from /proc.

use std::fmt;
use std::io;
use std::time::Duration;

use super::Options;

#[derive(Default)]
pub struct QueueResult {
    /// Latency of every successful command, in `TICK_NS` ticks (a command
    /// that takes more than about 7 minutes counts as that long here).
    latencies: Vec<u32>,
    /// Their exact sum and maximum.
    total: Duration,
    max: Duration,
    pub errors: u64,
    pub verify_failures: u64,
    /// Used-buffer notifications (call eventfd signals) received.
    pub notifications: u64,
}

impl QueueResult {
    pub fn record(&mut self, latency: Duration, ok: bool) {
        if ok {
            let ticks = latency.as_nanos() / TICK_NS;
            self.latencies
                .push(u32::try_from(ticks).unwrap_or(u32::MAX));
            self.total += latency;
            self.max = self.max.max(latency);
        } else {
            self.errors += 1;
        }
    }
}

/// Total CPU time (user + system, all threads) of a process, from
/// /proc/PID/stat fields 14 and 15 (proc(5)), in clock-tick resolution.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the first field is #3 (state): utime is #14, stime #15.
    let get = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))
    };
    let ticks = get(14)? + get(15)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub block_size: u32,
    pub queue_depth: u16,
    pub queues: u16,
    pub pattern: String,
    pub seconds: f64,
    pub ios: u64,
    pub errors: u64,
    pub verify_failures: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub lat_us: [f64; 5],
    pub backend_cpu_us_per_io: Option<f64>,
    pub bench_cpu_us_per_io: f64,
    /// Used-buffer notifications per I/O (the guest's interrupts).
    pub notifications_per_io: f64,
}

/// Latency resolution for percentiles: 100 ns (a u32 of them spans 429 s;
/// nanoseconds would end at 4.3 s, under a target's recovery time).
const TICK_NS: u128 = 100;

/// The `p` percentile of sorted ticks, in microseconds.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) * TICK_NS as f64 / 1000.0
}

impl Report {
    pub fn new(
        o: &Options,
        results: Vec<QueueResult>,
        elapsed: Duration,
        backend_cpu: Option<Duration>,
        own_cpu: Duration,
    ) -> Report {
        let mut lat: Vec<u32> = Vec::new();
        let (mut errors, mut verify_failures, mut notifications) = (0, 0, 0);
        let (mut total, mut max) = (Duration::ZERO, Duration::ZERO);
        for r in results {
            lat.extend(r.latencies);
            total += r.total;
            max = max.max(r.max);
            errors += r.errors;
            verify_failures += r.verify_failures;
            notifications += r.notifications;
        }
        lat.sort_unstable();
        let ios = lat.len() as u64;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let per_io = |d: Duration| d.as_secs_f64() * 1e6 / (ios.max(1) as f64);
        let mean = total.as_secs_f64() * 1e6 / (ios.max(1) as f64);
        Report {
            block_size: o.block_size,
            queue_depth: o.queue_depth,
            queues: o.queues,
            pattern: if o.verify {
                "verify".into()
            } else {
                format!("{:?}", o.pattern).to_lowercase()
            },
            seconds: secs,
            ios,
            errors,
            verify_failures,
            iops: ios as f64 / secs,
            mib_s: ios as f64 * f64::from(o.block_size) / secs / 1048576.0,
            lat_us: [
                mean,
                percentile(&lat, 0.50),
                percentile(&lat, 0.99),
                percentile(&lat, 0.999),
                max.as_secs_f64() * 1e6,
            ],
            backend_cpu_us_per_io: backend_cpu.map(per_io),
            bench_cpu_us_per_io: per_io(own_cpu),
            notifications_per_io: notifications as f64 / (ios.max(1) as f64),
        }
    }

    /// One JSON object (hand-written: the fields are numbers and one word).
    pub fn to_json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        format!(
            concat!(
                "{{\"pattern\":\"{}\",\"block_size\":{},\"queue_depth\":{},\"queues\":{},",
                "\"seconds\":{:.3},\"ios\":{},\"errors\":{},\"verify_failures\":{},",
                "\"iops\":{:.1},\"mib_s\":{:.2},\"lat_us\":{{\"mean\":{:.2},\"p50\":{:.2},",
                "\"p99\":{:.2},\"p99_9\":{:.2},\"max\":{:.2}}},",
                "\"backend_cpu_us_per_io\":{},\"bench_cpu_us_per_io\":{:.3},",
                "\"notifications_per_io\":{:.3}}}"
            ),
            self.pattern,
            self.block_size,
            self.queue_depth,
            self.queues,
            self.seconds,
            self.ios,
            self.errors,
            self.verify_failures,
            self.iops,
            self.mib_s,
            self.lat_us[0],
            self.lat_us[1],
            self.lat_us[2],
            self.lat_us[3],
            self.lat_us[4],
            opt(self.backend_cpu_us_per_io),
            self.bench_cpu_us_per_io,
            self.notifications_per_io
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} bs={} qd={} queues={}: {} I/Os in {:.2} s",
            self.pattern, self.block_size, self.queue_depth, self.queues, self.ios, self.seconds
        )?;
        writeln!(f, "  IOPS      {:.0}", self.iops)?;
        writeln!(f, "  bandwidth {:.1} MiB/s", self.mib_s)?;
        writeln!(
            f,
            "  latency   mean {:.1} us, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.lat_us[0], self.lat_us[1], self.lat_us[2], self.lat_us[3], self.lat_us[4]
        )?;
        if let Some(c) = self.backend_cpu_us_per_io {
            writeln!(f, "  backend CPU {c:.2} us per I/O")?;
        }
        writeln!(
            f,
            "  bench CPU   {:.2} us per I/O",
            self.bench_cpu_us_per_io
        )?;
        writeln!(
            f,
            "  notifications {:.3} per I/O",
            self.notifications_per_io
        )?;
        write!(
            f,
            "  errors {}, verify failures {}",
            self.errors, self.verify_failures
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<u32> = (1..=1000).map(|i| i * 10).collect();
        assert_eq!(percentile(&v, 0.5), 501.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn a_command_that_waited_out_a_target_recovery_keeps_its_latency() {
        // 25 s: past what a u32 of nanoseconds holds.
        let mut r = QueueResult::default();
        r.record(Duration::from_micros(100), true);
        r.record(Duration::from_secs(25), true);
        r.record(Duration::from_micros(300), true);
        r.record(Duration::from_secs(1), false);
        let o = Options {
            socket: "s".into(),
            lun: 0,
            block_size: 4096,
            queue_depth: 8,
            queues: 1,
            pattern: crate::bench::Pattern::RandRead,
            read_pct: 70,
            duration: None,
            ios: None,
            verify: false,
            backend_pid: None,
            span: 0,
            progress: false,
            drop_in_flight: false,
            cdb: crate::bench::CdbSize::Auto,
        };
        let rep = Report::new(&o, vec![r], Duration::from_secs(30), None, Duration::ZERO);
        assert_eq!(rep.ios, 3);
        assert_eq!(rep.errors, 1);
        assert_eq!(rep.lat_us[1], 300.0); // p50
        assert_eq!(rep.lat_us[4], 25e6); // max
        assert!((rep.lat_us[0] - (25e6 + 400.0) / 3.0).abs() < 1e-3); // mean
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_time(std::process::id()).is_ok());
    }
}
