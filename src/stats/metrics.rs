// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Prometheus endpoint (`serve --metrics ADDR:PORT`): `GET /metrics`
//! answers the Prometheus text exposition format (0.0.4), encoded by the
//! prometheus-client crate from the counters at the time of the scrape.
//! A minimal HTTP/1.0 server on one thread: one request per connection,
//! the request head capped and timed out.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, error, info};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::report::SENSE_KEYS;
use super::BUCKETS;
use crate::registry::Registry;

/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve the metrics from a thread of its own.
pub fn serve_metrics(listener: TcpListener, registry: Arc<Registry>) -> io::Result<()> {
    if let Ok(a) = listener.local_addr() {
        info!("Metrics on http://{a}/metrics");
    }
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = answer(s, &registry) {
                            debug!("Metrics client: {e}");
                        }
                    }
                    Err(e) => {
                        error!("Metrics: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(())
}

fn answer(mut s: TcpStream, registry: &Arc<Registry>) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > MAX_HEAD {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != b"GET" {
        return respond(&mut s, "405 Method Not Allowed", "text/plain", "GET only\n");
    }
    if path != b"/metrics" {
        return respond(&mut s, "404 Not Found", "text/plain", "See /metrics\n");
    }
    let body = encode(registry).map_err(|_| io::Error::other("encoding failed"))?;
    respond(
        &mut s,
        "200 OK",
        "text/plain; version=0.0.4; charset=utf-8",
        &body,
    )
}

fn respond(s: &mut TcpStream, status: &str, ty: &str, body: &str) -> io::Result<()> {
    write!(
        s,
        "HTTP/1.0 {status}\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The text exposition of every metric now.
pub fn encode(registry: &Arc<Registry>) -> Result<String, std::fmt::Error> {
    let mut r = prometheus_client::registry::Registry::default();
    r.register_collector(Box::new(Daemon(registry.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &r)?;
    Ok(out)
}

struct Daemon(Arc<Registry>);

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Daemon")
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Daemon {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let controllers = self.0.list();
        let connected: Vec<(Labels, i64)> = controllers
            .iter()
            .map(|c| {
                (
                    vec![("controller", c.socket.clone())],
                    i64::from(c.connected),
                )
            })
            .collect();
        gauge(
            &mut enc,
            "vhost_user_scsi_controller_connected",
            "Whether a front-end (QEMU) is connected to the controller",
            &connected,
        )?;
        let reports = self.0.reports(None, None).unwrap_or_default();
        let key = |r: &super::LunReport| -> Labels {
            vec![
                ("controller", r.controller.clone()),
                ("lun", r.lun.to_string()),
            ]
        };
        let with = |r: &super::LunReport, k: &'static str, v: &str| -> Labels {
            let mut l = key(r);
            l.push((k, v.to_string()));
            l
        };
        let mut commands = Vec::new();
        let mut bytes = Vec::new();
        let mut checks = Vec::new();
        let (mut conflicts, mut busy, mut transport, mut in_flight) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in &reports {
            let t = &r.totals;
            commands.push((with(r, "kind", "read"), t.reads));
            commands.push((with(r, "kind", "write"), t.writes));
            commands.push((with(r, "kind", "other"), t.others));
            bytes.push((with(r, "direction", "read"), t.read_bytes));
            bytes.push((with(r, "direction", "write"), t.written_bytes));
            for (k, n) in SENSE_KEYS.iter().zip(t.check_by_key) {
                if n > 0 {
                    checks.push((with(r, "sense_key", k), n));
                }
            }
            conflicts.push((key(r), t.reservation_conflicts));
            busy.push((key(r), t.busy));
            transport.push((key(r), t.transport_failures));
            in_flight.push((key(r), i(t.in_flight)));
        }
        counter(
            &mut enc,
            "vhost_user_scsi_commands",
            "SCSI commands completed",
            &commands,
        )?;
        counter(
            &mut enc,
            "vhost_user_scsi_io_bytes",
            "Bytes read and written by commands that succeeded",
            &bytes,
        )?;
        counter(
            &mut enc,
            "vhost_user_scsi_check_conditions",
            "Commands that ended in CHECK CONDITION, by sense key",
            &checks,
        )?;
        counter(
            &mut enc,
            "vhost_user_scsi_reservation_conflicts",
            "Commands that ended in RESERVATION CONFLICT",
            &conflicts,
        )?;
        counter(
            &mut enc,
            "vhost_user_scsi_busy",
            "Commands that ended in BUSY or TASK SET FULL",
            &busy,
        )?;
        counter(
            &mut enc,
            "vhost_user_scsi_transport_failures",
            "Commands the transport failed (aborted, reset, failure, overrun)",
            &transport,
        )?;
        gauge(
            &mut enc,
            "vhost_user_scsi_commands_in_flight",
            "Commands started and not completed",
            &in_flight,
        )?;
        let mut m = enc.encode_descriptor(
            "vhost_user_scsi_command_latency_seconds",
            "Time from a command's arrival to its completion",
            None,
            MetricType::Histogram,
        )?;
        for r in &reports {
            let t = &r.totals;
            let mut cumulative = 0;
            let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(BUCKETS);
            for (b, n) in t.latency_buckets.iter().enumerate() {
                cumulative += n;
                let le = if b + 1 == BUCKETS {
                    f64::INFINITY
                } else {
                    (1u64 << b) as f64 / 1e6
                };
                buckets.push((le, cumulative));
            }
            m.encode_family(&key(r))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    t.latency_sum_us as f64 / 1e6,
                    cumulative,
                    &buckets,
                    None,
                )?;
        }
        let mut regs = Vec::new();
        let mut reserved = Vec::new();
        let mut reconnects = Vec::new();
        let mut up = Vec::new();
        for r in &reports {
            if let Some(pr) = &r.reservations {
                let n = pr
                    .get("registrations")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                regs.push((key(r), i(n)));
                let ty = pr.get("type").and_then(|v| v.as_str()).unwrap_or("none");
                reserved.push((with(r, "type", ty), i64::from(ty != "none")));
            }
            if let Some(s) = &r.iscsi {
                let n = s.get("reconnects").and_then(|v| v.as_u64()).unwrap_or(0);
                reconnects.push((key(r), n));
                let state = s.get("state").and_then(|v| v.as_str()) == Some("up");
                up.push((key(r), i64::from(state)));
            }
        }
        gauge(
            &mut enc,
            "vhost_user_scsi_pr_registrations",
            "Persistent reservation registrations of the LUN's logical unit",
            &regs,
        )?;
        gauge(
            &mut enc,
            "vhost_user_scsi_pr_reserved",
            "Whether a persistent reservation is held, by type",
            &reserved,
        )?;
        counter(
            &mut enc,
            "vhost_user_scsi_iscsi_reconnects",
            "Times the iSCSI session logged in again",
            &reconnects,
        )?;
        gauge(
            &mut enc,
            "vhost_user_scsi_iscsi_session_up",
            "Whether the iSCSI session is logged in",
            &up,
        )?;
        Ok(())
    }
}
