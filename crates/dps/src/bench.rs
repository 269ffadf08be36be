//! `dps bench`: a device-storm load generator. Every simulated device opens its own TLS
//! connection, as real devices do, and uses a key derived from one enrollment group, so any
//! number of devices needs a single enrollment. Results are measured and reported, never asserted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use dps_client::{HubClient, PollOptions, ProvisioningClient, SecurityProvider, SymmetricKeyProvider, Transport};
use dps_server::DataDir;
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::output;
use crate::remote::{read_ca, seg, Api, Rest, ServerArgs};

/// What each simulated device does.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// DPS registration only (register + poll until assigned).
    Register,
    /// Register, connect to the assigned hub, send one message, read the twin.
    Cycle,
    /// A bare TLS handshake and close against the MQTT listener: the machine's own ceiling.
    Tls,
}

/// `dps bench`
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What each device does.
    #[arg(value_enum)]
    pub mode: Mode,
    /// Service connection string [default: the data directory's owner policy].
    #[arg(long, env = "DPS_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Number of distinct devices.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Devices in flight at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// How devices reach DPS.
    #[arg(long, default_value = "mqtt")]
    pub transport: Transport,
    /// PID of the server, to report its peak memory and CPU time (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Keep the bench enrollment group and registration records afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Latencies and outcomes, shared by the workers.
#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u64>>,
    errors: Mutex<std::collections::BTreeMap<String, usize>>,
}

impl Tally {
    fn fail(&self, kind: String) {
        *self.errors.lock().entry(kind).or_default() += 1;
    }
}

fn error_kind(e: &dps_client::ClientError) -> String {
    match e.error_code() {
        Some(code) => format!("service {code}"),
        None => format!("{e}").split(':').next().unwrap_or("error").to_string(),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Peak resident memory (VmHWM) and CPU seconds of a process, from /proc.
fn process_stats(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((hwm_kb * 1024, ticks as f64 / 100.0))
}

/// Runs the benchmark and prints its report.
pub async fn run(a: BenchArgs) -> Result<()> {
    if a.devices == 0 || a.concurrency == 0 {
        bail!("--devices and --concurrency must be at least 1");
    }
    let dir = DataDir::new(&a.server.data_dir);
    let identity = dir.load_identity().ok();
    let runtime = dir.runtime();
    let ca = read_ca(a.server.ca.as_deref(), &dir)?;
    let rest = Rest::connect(a.connection_string.as_deref(), &a.server, Api::Dps)?;
    let host = rest.host().to_string();
    let id_scope = identity
        .as_ref()
        .map(|i| i.id_scope.clone())
        .ok_or_else(|| anyhow!("no ID scope: use --data-dir of a server"))?;
    let (mqtt_port, https_port) = runtime
        .as_ref()
        .map(|r| (r.mqtt_port, r.https_port))
        .unwrap_or((8883, 443));
    let run_id = format!("bench-{:08x}", rand_u32());

    // One group; device keys are derived from it.
    let group_key = dps_proto::keys::encode_key(&rand_bytes::<32>());
    if a.mode != Mode::Tls {
        let body = json!({
            "enrollmentGroupId": run_id,
            "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": group_key, "secondaryKey": group_key } },
        });
        rest.call(
            Method::PUT,
            &format!("/enrollmentGroups/{}", seg(&run_id)),
            &[],
            Some(&body),
            &[],
        )
        .await
        .context("cannot create the bench enrollment group")?;
    }

    let tls_config = dps_pki::tls::client_config(&ca)?;
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(a.concurrency));
    let started = Instant::now();
    let progress = {
        let done = done.clone();
        let total = a.devices;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprint!("\r{n}/{total} devices, {:.0}/s   ", n as f64 / secs.max(1e-9));
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.devices {
        let permit = gate.clone().acquire_owned().await.expect("semaphore is never closed");
        let (tally, done, ca, host, id_scope, group_key, run_id, tls_config) = (
            tally.clone(),
            done.clone(),
            ca.clone(),
            host.clone(),
            id_scope.clone(),
            group_key.clone(),
            run_id.clone(),
            tls_config.clone(),
        );
        let (mode, transport) = (a.mode, a.transport);
        tasks.spawn(async move {
            let t0 = Instant::now();
            let result: Result<(), String> = match mode {
                Mode::Tls => tls_handshake(&host, mqtt_port, tls_config).await,
                Mode::Register | Mode::Cycle => {
                    let id = format!("{run_id}-{i}");
                    device_run(
                        mode,
                        transport,
                        &host,
                        (mqtt_port, https_port),
                        &id_scope,
                        &id,
                        &group_key,
                        &ca,
                    )
                    .await
                }
            };
            match result {
                Ok(()) => tally.latencies_us.lock().push(t0.elapsed().as_micros() as u64),
                Err(kind) => tally.fail(kind),
            }
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    eprintln!();

    let mut lat = std::mem::take(&mut *tally.latencies_us.lock());
    lat.sort_unstable();
    let errors = std::mem::take(&mut *tally.errors.lock());
    let failed: usize = errors.values().sum();
    let mut report = json!({
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "transport": a.transport,
        "attestation": "symmetric-key",
        "devices": a.devices,
        "concurrency": a.concurrency,
        "succeeded": lat.len(),
        "failed": failed,
        "errors": errors,
        "elapsedSeconds": elapsed,
        "throughputPerSecond": lat.len() as f64 / elapsed.max(1e-9),
        "latencyMs": {
            "p50": percentile(&lat, 50.0), "p90": percentile(&lat, 90.0),
            "p99": percentile(&lat, 99.0), "max": percentile(&lat, 100.0),
        },
    });
    if let Some(pid) = a.server_pid {
        if let Some((rss, cpu)) = process_stats(pid) {
            report["serverPeakRssBytes"] = json!(rss);
            report["serverCpuSeconds"] = json!(cpu);
        }
    }
    if a.mode != Mode::Tls && !a.keep {
        cleanup(&rest, &run_id).await;
    }
    if a.server.json {
        output::json(&report);
    } else {
        print_human(&report);
    }
    Ok(())
}

async fn tls_handshake(host: &str, port: u16, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|_| "bad host name".to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {}", e.kind()))?;
    use tokio::io::AsyncWriteExt;
    let _ = tls.shutdown().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn device_run(
    mode: Mode,
    transport: Transport,
    host: &str,
    (mqtt_port, https_port): (u16, u16),
    id_scope: &str,
    id: &str,
    group_key: &str,
    ca: &str,
) -> Result<(), String> {
    let provider: Arc<dyn SecurityProvider> =
        Arc::new(SymmetricKeyProvider::from_group_key(id, group_key).map_err(|e| e.to_string())?);
    let port = match transport {
        Transport::Mqtt => mqtt_port,
        Transport::Https => https_port,
    };
    let client = ProvisioningClient::new(host, id_scope, provider.clone(), ca)
        .with_transport(transport)
        .with_port(port)
        .with_timeout(Duration::from_secs(60))
        // Our server assigns synchronously: poll at once, as a tuned device would.
        .with_poll_options(PollOptions {
            max_interval: Duration::ZERO,
            ..PollOptions::default()
        });
    let r = client.register(None).await.map_err(|e| error_kind(&e))?;
    if mode == Mode::Cycle {
        let hub = HubClient::from_registration(&r, provider, ca)
            .port(mqtt_port)
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| format!("hub connect: {}", error_kind(&e)))?;
        hub.send_event(b"{\"bench\":true}".to_vec(), &[])
            .await
            .map_err(|e| format!("telemetry: {}", error_kind(&e)))?;
        hub.get_twin().await.map_err(|e| format!("twin: {}", error_kind(&e)))?;
        let _ = hub.disconnect().await;
    }
    Ok(())
}

/// Deletes the bench group and its devices' registration records.
async fn cleanup(rest: &Rest, run_id: &str) {
    if let Ok(records) = rest.query(&format!("/registrations/{}/query", seg(run_id)), None).await {
        for r in records {
            if let Some(id) = r.get("registrationId").and_then(Value::as_str) {
                let _ = rest
                    .call(Method::DELETE, &format!("/registrations/{}", seg(id)), &[], None, &[])
                    .await;
            }
        }
    }
    let _ = rest
        .call(
            Method::DELETE,
            &format!("/enrollmentGroups/{}", seg(run_id)),
            &[],
            None,
            &[],
        )
        .await;
}

fn print_human(r: &Value) {
    let l = &r["latencyMs"];
    println!(
        "{} over {}: {} devices, {} ok, {} failed in {:.2}s -> {:.0}/s; latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
        r["mode"].as_str().unwrap_or(""),
        r["transport"].as_str().unwrap_or(""),
        r["devices"],
        r["succeeded"],
        r["failed"],
        r["elapsedSeconds"].as_f64().unwrap_or(0.0),
        r["throughputPerSecond"].as_f64().unwrap_or(0.0),
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
    );
    if r["failed"].as_u64().unwrap_or(0) > 0 {
        println!("errors: {}", r["errors"]);
    }
    if let Some(rss) = r.get("serverPeakRssBytes") {
        println!("server: peak RSS {} bytes, CPU {} s", rss, r["serverCpuSeconds"]);
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

fn rand_u32() -> u32 {
    u32::from_be_bytes(rand_bytes::<4>())
}
