// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reading the counters: totals over every queue slot, as `ctl stats`
//! reports them and the Prometheus endpoint exports them.

use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use super::{Counters, LunStats, BUCKETS};

/// Sense key names (SPC-4 table 47), for reports.
pub const SENSE_KEYS: [&str; 16] = [
    "no_sense",
    "recovered_error",
    "not_ready",
    "medium_error",
    "hardware_error",
    "illegal_request",
    "unit_attention",
    "data_protect",
    "blank_check",
    "vendor_specific",
    "copy_aborted",
    "aborted_command",
    "reserved_0c",
    "volume_overflow",
    "miscompare",
    "reserved_0f",
];

/// Totals of one LUN's counters.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub reads: u64,
    pub writes: u64,
    pub others: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// CHECK CONDITION by sense key (SENSE_KEYS order).
    #[serde(skip)]
    pub check_by_key: [u64; 16],
    pub reservation_conflicts: u64,
    /// BUSY and TASK SET FULL.
    pub busy: u64,
    /// Commands the transport failed (aborted, reset, failure, overrun).
    pub transport_failures: u64,
    pub in_flight: u64,
    /// Commands that took less than 2^i microseconds, for bucket i (the
    /// last: any longer).
    pub latency_buckets: Vec<u64>,
    pub latency_sum_us: u64,
}

impl Totals {
    pub fn completed(&self) -> u64 {
        self.reads + self.writes + self.others
    }

    /// Add another LUN's totals (a controller's).
    pub fn add(&mut self, o: &Totals) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.others += o.others;
        self.read_bytes += o.read_bytes;
        self.written_bytes += o.written_bytes;
        for (a, b) in self.check_by_key.iter_mut().zip(o.check_by_key) {
            *a += b;
        }
        self.reservation_conflicts += o.reservation_conflicts;
        self.busy += o.busy;
        self.transport_failures += o.transport_failures;
        self.in_flight += o.in_flight;
        self.latency_buckets.resize(BUCKETS, 0);
        for (a, b) in self.latency_buckets.iter_mut().zip(&o.latency_buckets) {
            *a += b;
        }
        self.latency_sum_us += o.latency_sum_us;
    }

    /// The CHECK CONDITIONs by sense key name (only those seen).
    pub fn check_conditions(&self) -> Vec<(&'static str, u64)> {
        SENSE_KEYS
            .iter()
            .zip(self.check_by_key)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (*k, n))
            .collect()
    }

    /// The latency under which a fraction `q` of the commands completed,
    /// as the upper bound of its histogram bucket (microseconds).
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(1u64 << i);
            }
        }
        None
    }
}

fn add_counters(t: &mut Totals, c: &Counters) {
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    t.reads += l(&c.completed[0]);
    t.writes += l(&c.completed[1]);
    t.others += l(&c.completed[2]);
    t.read_bytes += l(&c.bytes[0]);
    t.written_bytes += l(&c.bytes[1]);
    for (a, b) in t.check_by_key.iter_mut().zip(&c.check) {
        *a += l(b);
    }
    t.reservation_conflicts += l(&c.reservation_conflicts);
    t.busy += l(&c.busy);
    t.transport_failures += l(&c.transport);
    t.latency_buckets.resize(BUCKETS, 0);
    for (a, b) in t.latency_buckets.iter_mut().zip(&c.latency) {
        *a += l(b);
    }
    t.latency_sum_us += l(&c.latency_us);
}

impl LunStats {
    /// The totals now (each counter read once; a command completing
    /// meanwhile may be counted in some and not yet in others).
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let mut started = 0;
        for s in self.slots.iter() {
            started += s.local.started.load(Relaxed);
            add_counters(&mut t, &s.local);
            add_counters(&mut t, &s.remote);
        }
        t.in_flight = started.saturating_sub(t.completed());
        t
    }
}

/// What `ctl stats` reports for one LUN.
#[derive(Debug, Serialize)]
pub struct LunReport {
    pub controller: String,
    pub lun: u16,
    #[serde(flatten)]
    pub totals: Totals,
    pub check_conditions: Vec<(&'static str, u64)>,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    /// Persistent reservations: registrations, and the holder and type of
    /// the reservation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<serde_json::Value>,
    /// iSCSI LUNs: the session's state, portal and reconnections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<serde_json::Value>,
}

impl LunReport {
    pub fn new(controller: String, lun: u16, totals: Totals) -> LunReport {
        LunReport {
            controller,
            lun,
            check_conditions: totals.check_conditions(),
            latency_p50_us: totals.quantile_us(0.5),
            latency_p99_us: totals.quantile_us(0.99),
            totals,
            reservations: None,
            iscsi: None,
        }
    }
}
