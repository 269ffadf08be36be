//! What a run measured: outcomes and latencies of one phase, percentiles, process statistics
//! from /proc (the server's and the bench's own), and the report printed at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

/// Latencies and error counts, filled by the device tasks of one phase.
#[derive(Default)]
pub struct Tally {
    latencies_us: Mutex<Vec<u64>>,
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    /// A device succeeded after `latency`.
    pub fn ok(&self, latency: Duration) {
        self.latencies_us.lock().push(latency.as_micros() as u64);
    }

    /// A device failed; `kind` groups failures in the report (no per-device detail in it).
    pub fn fail(&self, kind: String) {
        *self.errors.lock().entry(kind).or_default() += 1;
    }

    /// The phase's result.
    pub fn finish(&self, started: usize, elapsed: Duration) -> Outcome {
        let mut latencies_us = std::mem::take(&mut *self.latencies_us.lock());
        latencies_us.sort_unstable();
        Outcome {
            started,
            latencies_us,
            errors: std::mem::take(&mut *self.errors.lock()),
            elapsed,
        }
    }
}

/// The result of one phase.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Devices started.
    pub started: usize,
    /// Latencies of the successful devices, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Failures by kind.
    pub errors: BTreeMap<String, usize>,
    /// From the first start to the last completion.
    pub elapsed: Duration,
}

impl Outcome {
    /// Devices that succeeded.
    pub fn succeeded(&self) -> usize {
        self.latencies_us.len()
    }

    /// Devices that failed.
    pub fn failed(&self) -> usize {
        self.errors.values().sum()
    }

    /// Successes per second over the phase.
    pub fn throughput(&self) -> f64 {
        self.succeeded() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// `{p50, p90, p99, max}` in milliseconds.
    pub fn latency_json(&self) -> Value {
        let l = &self.latencies_us;
        json!({
            "p50": percentile(l, 50.0), "p90": percentile(l, 90.0),
            "p99": percentile(l, 99.0), "max": percentile(l, 100.0),
        })
    }
}

/// The `p`th percentile (nearest rank) of sorted microseconds, in milliseconds.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Memory and CPU time of a process, from /proc.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    /// Resident memory now (VmRSS), bytes.
    pub rss: u64,
    /// Peak resident memory since the process started (VmHWM), bytes.
    pub peak_rss: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// Clock ticks per second of /proc/PID/stat times: 100 on every Linux architecture we run on
/// (`getconf CLK_TCK`); reading it properly would need `sysconf`, i.e. unsafe code.
const CLOCK_TICKS: f64 = 100.0;

/// Statistics of process `pid`, or of this process when `None`. `None` when /proc cannot tell.
pub fn process_stats(pid: Option<u32>) -> Option<ProcStats> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ProcStats {
        rss: kb("VmRSS:")?,
        peak_rss: kb("VmHWM:")?,
        cpu_seconds: ticks as f64 / CLOCK_TICKS,
    })
}

/// CPU seconds and memory of the server and of the bench over one phase.
pub struct Usage {
    server_pid: Option<u32>,
    server: Option<ProcStats>,
    client: Option<ProcStats>,
}

impl Usage {
    /// Starts measuring.
    pub fn start(server_pid: Option<u32>) -> Usage {
        Usage {
            server_pid,
            server: server_pid.and_then(|p| process_stats(Some(p))),
            client: process_stats(None),
        }
    }

    /// Adds `clientCpuSeconds` and, with a server PID, `serverCpuSeconds` (both over the phase)
    /// and `serverPeakRssBytes` (VmHWM: the peak since the server started) to `report`.
    pub fn finish(&self, report: &mut Value) {
        if let (Some(a), Some(b)) = (self.client, process_stats(None)) {
            report["clientCpuSeconds"] = json!(round3(b.cpu_seconds - a.cpu_seconds));
        }
        if let (Some(a), Some(b)) = (self.server, self.server_pid.and_then(|p| process_stats(Some(p)))) {
            report["serverPeakRssBytes"] = json!(b.peak_rss);
            report["serverCpuSeconds"] = json!(round3(b.cpu_seconds - a.cpu_seconds));
        }
    }
}

/// Samples the resident memory of the server and of the bench every 100 ms, keeping the peaks
/// (VmHWM cannot be used for a phase: it remembers earlier phases).
pub struct RssSampler {
    server_peak: Arc<AtomicU64>,
    client_peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start(server_pid: Option<u32>) -> RssSampler {
        let (server_peak, client_peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = tokio::spawn({
            let (server_peak, client_peak) = (server_peak.clone(), client_peak.clone());
            async move {
                loop {
                    if let Some(s) = server_pid.and_then(|p| process_stats(Some(p))) {
                        server_peak.fetch_max(s.rss, Ordering::Relaxed);
                    }
                    if let Some(c) = process_stats(None) {
                        client_peak.fetch_max(c.rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        RssSampler {
            server_peak,
            client_peak,
            task,
        }
    }

    /// Stops sampling; returns the peaks `(server, client)` in bytes (0 when unknown).
    pub fn stop(self) -> (u64, u64) {
        self.task.abort();
        (
            self.server_peak.load(Ordering::Relaxed),
            self.client_peak.load(Ordering::Relaxed),
        )
    }
}

/// Rounds to milliseconds (or thousandths), for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The human summary of a report.
pub fn print_human(r: &Value) {
    let l = &r["latencyMs"];
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let what = if r["mode"] == "hold" { "connections" } else { "devices" };
    println!(
        "{} over {} ({}, {} client): {} {what}, {} ok, {} failed in {:.2}s -> {:.0}/s; latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
        r["mode"].as_str().unwrap_or(""),
        r["transport"].as_str().unwrap_or(""),
        r["attestation"].as_str().unwrap_or(""),
        r["client"].as_str().unwrap_or(""),
        r["devices"],
        r["succeeded"],
        r["failed"],
        f(&r["elapsedSeconds"]),
        f(&r["throughputPerSecond"]),
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"]),
    );
    if r["failed"].as_u64().unwrap_or(0) > 0 {
        println!("errors: {}", r["errors"]);
    }
    if let Some(s) = r.get("preparationSeconds") {
        println!("preparation (untimed): {s} s");
    }
    if let Some(c) = r.get("clientCpuSeconds") {
        println!("bench CPU: {c} s");
    }
    if let Some(rss) = r.get("serverPeakRssBytes") {
        println!("server: peak RSS {} bytes, CPU {} s", rss, r["serverCpuSeconds"]);
    }
    if let Some(t) = r.get("tlsCeilingPerSecond") {
        println!("tls ceiling: {:.0}/s, ratio {:.2}", f(t), f(&r["ratioToTls"]));
    }
    if let Some(h) = r.get("hold") {
        println!("hold: {h}");
    }
    if let Some(t) = r.get("telemetry") {
        let e = &t["endToEndMs"];
        println!(
            "telemetry: {:.0}/s ingested, {} delivered ({:.0}/s); end to end ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
            f(&t["ingestedPerSecond"]),
            t["delivered"],
            f(&t["deliveredPerSecond"]),
            f(&e["p50"]),
            f(&e["p90"]),
            f(&e["p99"]),
            f(&e["max"]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_ms() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn own_process_stats_are_readable() {
        let s = process_stats(None).expect("/proc/self");
        assert!(s.rss > 0 && s.peak_rss >= s.rss);
        assert!(s.cpu_seconds >= 0.0);
    }
}
