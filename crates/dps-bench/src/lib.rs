//! `dps bench`: a device-storm load generator. Every simulated device opens its own TLS
//! connection, as real devices do, and authenticates with a key derived from one enrollment group
//! (or a certificate issued under the group's intermediate CA), so any number of devices needs a
//! single enrollment. Results are measured and reported, never asserted.
//!
//! A run: prepare (enrollment group, device certificates; untimed), warm up (untimed), the timed
//! phase under the controls, optionally a short `tls` ceiling in the same run, cleanup, report.
//!
//! A crate of its own so the CLI stays a thin shell: `dps bench` resolves where the server is
//! ([`Target`]) and prints the report; everything between is here.
//!
//! Entry points: [`BenchArgs::validate`] (the controls, and room for the sockets), then [`run`],
//! then [`print_human`] or the report as JSON.

#![forbid(unsafe_code)]

mod amqp;
mod devices;
mod driver;
mod error;
mod hold;
mod https;
mod identity;
mod mqtt;
mod prepare;
mod query;
mod report;
mod sdk;
mod telemetry;
mod webhook;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use dps_client::{RegistryClient, ServiceClient, Transport};
use dps_server::fdlimit;
use serde_json::{json, Value};

use driver::Plan;
pub use error::BenchError;
pub use report::print_human;
use report::{round3, Outcome, Usage};

/// Where the server under test is, resolved by the caller (the CLI reads it from flags and the
/// data directory).
pub struct Target {
    /// The DPS service API (creates and deletes the bench's enrollment group).
    pub dps: Arc<ServiceClient>,
    /// The hub registry API, to delete the hub devices the run created (none: they stay).
    pub hub: Option<Arc<RegistryClient>>,
    /// The registry APIs of the server's other embedded hubs, where devices may be assigned too.
    pub other_hubs: Vec<Arc<RegistryClient>>,
    /// The service's ID scope.
    pub id_scope: String,
    /// The embedded hub's host name (where devices are assigned).
    pub hub_host: String,
    /// The CA the server's certificate chains to, PEM.
    pub ca_pem: String,
    /// MQTT port (DPS and hub).
    pub mqtt_port: u16,
    /// HTTPS port.
    pub https_port: u16,
    /// AMQP port (DPS and hub).
    pub amqp_port: u16,
    /// A hub policy with `ServiceConnect` (name, key): the telemetry mode's Event Hubs consumer
    /// signs its token with it.
    pub hub_policy: Option<(String, String)>,
    /// The CA that issues the bench webhook's certificate (`--webhook-delay-ms`): the server's
    /// local CA, which the server then trusts with `--allocation-webhook-ca {data-dir}/ca.pem`.
    pub webhook_ca: Option<dps_pki::ca::LocalCa>,
}

/// What each simulated device does.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// DPS registration only (register + poll until assigned).
    Register,
    /// Register, connect to the assigned hub, send one message, read the twin.
    Cycle,
    /// Register (untimed), then open one hub connection per device and keep them all idle.
    Hold,
    /// Register and connect (untimed), then every device sends 256-byte telemetry for
    /// --duration while one Event Hubs consumer reads the hub's built-in endpoint.
    Telemetry,
    /// A bare TLS handshake and close against the MQTT listener: the machine's own ceiling.
    Tls,
    /// IoT Hub's query language over --devices twins (seeded through the bulk registry API
    /// once, kept): selective tag conditions, counts, device ids, and one unindexed scan.
    Query,
}

/// How simulated devices authenticate.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attestation {
    /// SAS tokens with keys derived from the group key.
    SymmetricKey,
    /// A P-256 device certificate per device, issued before the run.
    X509,
}

/// Which client implementation the devices use.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// The bench's lean client: the SDK's packets and round trips at a fraction of its CPU.
    Lean,
    /// The real Rust device SDK (dps_client): what a fleet of Rust devices does.
    Sdk,
}

/// `dps bench`
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What each device does.
    #[arg(value_enum)]
    pub mode: Mode,
    /// Number of distinct devices (hold: connections) [default: 1000; with --duration: no limit].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Devices (hold: connection attempts) in flight at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Target devices started per second; --concurrency still caps those in flight.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Seconds after which no new device starts (hold: how long the connections stay open,
    /// default 10).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Devices run first, outside the statistics.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// How devices reach DPS (with amqp, also the hub in cycle and hold).
    #[arg(long, default_value = "mqtt")]
    pub transport: Transport,
    /// How devices authenticate.
    #[arg(long, value_enum, default_value = "symmetric-key")]
    pub attestation: Attestation,
    /// Client implementation.
    #[arg(long, value_enum, default_value = "lean")]
    pub client: ClientKind,
    /// Local addresses to connect from, round-robin: a count (N = 127.1.0.1 ... 127.1.0.N) or
    /// addresses and ranges (127.0.0.2-127.0.0.9,127.0.1.1). About 28,000 connections fit per
    /// address; hold needs them beyond that.
    #[arg(long, value_name = "SPEC")]
    pub source_addresses: Option<String>,
    /// MQTT keep-alive of held hub connections, seconds (pinged at that interval).
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// Also measure the `tls` ceiling for this many seconds after the run, and report the run's
    /// throughput as a ratio to it.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "3")]
    pub ceiling: Option<f64>,
    /// PID of the server, to report its memory and CPU time (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Keep the bench enrollment group, registration records and hub devices afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Allocate with a custom allocation webhook the bench serves, answering after this many
    /// milliseconds (start the server with `--allocation-webhook-ca {data-dir}/ca.pem`).
    #[arg(long, value_name = "MS")]
    pub webhook_delay_ms: Option<u64>,
    /// Address the webhook listens on (any free port).
    #[arg(long, default_value = "127.0.0.1")]
    pub webhook_bind: std::net::IpAddr,
    /// Every device sends a P-256 certificate signing request with its registration and gets
    /// its certificate issued by a credential policy the bench creates (register mode, lean
    /// client; the policy is deleted afterwards).
    #[arg(long)]
    pub csr: bool,
}

impl BenchArgs {
    /// The client the devices run: `--client`, except that `telemetry`, and AMQP's `cycle` and
    /// `hold`, always run the SDK (the lean AMQP client registers only; its hub side would be the SDK's frames
    /// again, for no measurement anyone asked for).
    fn client(&self) -> ClientKind {
        if self.mode == Mode::Telemetry || (self.transport == Transport::Amqp && self.mode != Mode::Register) {
            ClientKind::Sdk
        } else {
            self.client
        }
    }
}

/// Default number of devices when neither --devices nor --duration bounds the run.
const DEFAULT_DEVICES: usize = 1000;
/// Default hold time, and how long the telemetry mode sends.
const DEFAULT_HOLD: Duration = Duration::from_secs(10);
/// Default number of sending devices in the telemetry mode.
const TELEMETRY_DEVICES: usize = 100;
/// File descriptors kept free for everything that is not a device connection (runtime, REST
/// clients, the cleanup's connections).
const FD_SLACK: u64 = 256;
/// Share of the ephemeral ports per source address the bench plans to use (the rest is for
/// sockets in TIME_WAIT and other programs).
const PORT_SHARE: f64 = 0.9;

/// What the arguments mean once checked ([`BenchArgs::validate`]).
pub struct Controls {
    devices: Option<usize>,
    duration: Option<Duration>,
    rate: Option<f64>,
    sources: Vec<std::net::IpAddr>,
}

fn check(a: &BenchArgs) -> Result<Controls, BenchError> {
    if a.concurrency == 0 || a.devices == Some(0) {
        return Err(BenchError::controls("--devices and --concurrency must be at least 1"));
    }
    let positive = |v: Option<f64>, flag: &str| match v {
        Some(x) if !(x.is_finite() && x > 0.0) => {
            Err(BenchError::controls(format!("{flag} must be a positive number")))
        }
        _ => Ok(()),
    };
    positive(a.rate, "--rate")?;
    positive(a.duration, "--duration")?;
    positive(a.ceiling, "--ceiling")?;
    if a.keep_alive < 2 {
        // The hub drops a session idle for 1.5 × keep-alive, rounded down to whole seconds.
        return Err(BenchError::controls("--keep-alive must be at least 2 seconds"));
    }
    let duration = a.duration.map(Duration::from_secs_f64);
    if a.csr && (a.mode != Mode::Register || a.client() != ClientKind::Lean) {
        return Err(BenchError::controls(
            "--csr measures registrations: it runs with the register mode and the lean client",
        ));
    }
    if a.mode == Mode::Telemetry && (a.attestation != Attestation::SymmetricKey || a.transport != Transport::Mqtt) {
        return Err(BenchError::controls(
            "telemetry runs symmetric-key devices over MQTT (the default --attestation and --transport)",
        ));
    }
    let devices = match (a.mode, a.devices, duration) {
        (Mode::Hold, d, _) => Some(d.unwrap_or(DEFAULT_DEVICES)),
        (Mode::Telemetry, d, _) => Some(d.unwrap_or(TELEMETRY_DEVICES)),
        (_, Some(d), _) => Some(d),
        (_, None, Some(_)) => None,
        (_, None, None) => Some(DEFAULT_DEVICES),
    };
    if devices.is_none() && a.attestation == Attestation::X509 {
        return Err(BenchError::controls(
            "--attestation x509 issues every device certificate before the run: give --devices with --duration",
        ));
    }
    let sources = match &a.source_addresses {
        Some(spec) => wire::parse_sources(spec)?,
        None => Vec::new(),
    };
    if !sources.is_empty() && a.client() == ClientKind::Sdk {
        return Err(BenchError::controls(
            "--source-addresses needs the lean client (the SDK, which AMQP always runs, picks its own source address)",
        ));
    }
    if a.mode == Mode::Hold {
        // Registering first leaves as many client ports in TIME_WAIT (for a minute) as the hold
        // then needs open.
        let ports = 2 * (devices.unwrap_or(DEFAULT_DEVICES) + a.warmup);
        let per_address = (wire::ephemeral_ports() as f64 * PORT_SHARE) as usize;
        let needed = ports.div_ceil(per_address);
        if needed > sources.len().max(1) {
            return Err(BenchError::controls(format!(
                "{ports} client ports (registration, then the held connections) need at least {needed} source \
                 addresses ({per_address} ports each from net.ipv4.ip_local_port_range): pass --source-addresses {needed}"
            )));
        }
    }
    Ok(Controls {
        devices,
        duration: if matches!(a.mode, Mode::Hold | Mode::Telemetry) {
            None
        } else {
            duration
        },
        rate: a.rate,
        sources,
    })
}

/// Makes room for the sockets the run needs, or says why it cannot.
fn file_limits(a: &BenchArgs, devices: Option<usize>) -> Result<(), BenchError> {
    let held = match a.mode {
        Mode::Hold => devices.unwrap_or(DEFAULT_DEVICES) as u64,
        _ => 0,
    };
    let wanted = held + 2 * a.concurrency as u64 + FD_SLACK;
    let limit = fdlimit::raise(wanted).map_err(BenchError::OpenFileLimit)?;
    if limit < wanted {
        return Err(BenchError::TooFewFiles { wanted, limit });
    }
    if let (true, Some(pid)) = (held > 0, a.server_pid) {
        if let Some(limit) = fdlimit::of_process(pid).filter(|&l| l < held + 64) {
            return Err(BenchError::ServerTooFewFiles {
                pid,
                limit,
                held,
                suggested: held + FD_SLACK,
            });
        }
    }
    Ok(())
}

impl BenchArgs {
    /// Checks the controls and makes room for the sockets the run needs (the open-file limit),
    /// before anything is sent.
    pub fn validate(&self) -> Result<Controls, BenchError> {
        let controls = check(self)?;
        if self.mode != Mode::Query {
            file_limits(self, controls.devices)?;
        }
        Ok(controls)
    }
}

/// Runs the benchmark against `target` and returns its report.
pub async fn run(a: &BenchArgs, controls: Controls, target: Target) -> Result<Value, BenchError> {
    if a.mode == Mode::Query {
        let hub = target
            .hub
            .ok_or_else(|| BenchError::controls("query runs need the hub's registry API (--hub-connection-string)"))?;
        return query::run(hub, controls.devices.unwrap_or(DEFAULT_DEVICES)).await;
    }
    let t_prepare = Instant::now();
    let Target {
        dps: rest,
        hub: hub_rest,
        other_hubs,
        id_scope,
        hub_host,
        ca_pem,
        mqtt_port,
        https_port,
        amqp_port,
        hub_policy,
        webhook_ca,
    } = target;
    let hub_rest: Vec<_> = hub_rest.into_iter().chain(other_hubs).collect();
    // Devices go where the service client's requests go (one node of several, when the data
    // directory says so).
    let host = rest.rest().address().to_string();
    let run_id = format!("bench-{:08x}", u32::from_be_bytes(prepare::rand_bytes::<4>()));

    let prepared = prepare::credentials(a.attestation, &run_id, controls.devices.map_or(0, |d| d + a.warmup)).await?;
    let uses_group = a.mode != Mode::Tls;
    let webhook = match a.webhook_delay_ms {
        Some(ms) => {
            let ca = webhook_ca.as_ref().ok_or_else(|| {
                BenchError::controls("--webhook-delay-ms needs the server's CA (--data-dir of the server)")
            })?;
            Some(webhook::start(a.webhook_bind, ca, Duration::from_millis(ms)).await?)
        }
        None => None,
    };
    if uses_group {
        let url = webhook.as_ref().map(|w| w.url.as_str());
        let policy = match a.csr {
            true => Some(prepare::create_credential_policy(&rest, &run_id).await?),
            false => None,
        };
        prepare::create_group(&rest, &run_id, &prepared.group_attestation, url, policy.as_deref()).await?;
    }
    let ctx = Arc::new(devices::Ctx {
        client: a.client(),
        transport: a.transport,
        dps_mqtt: wire::Endpoint::resolve(&host, mqtt_port).await?,
        dps_https: wire::Endpoint::resolve(&host, https_port).await?,
        dps_amqp: wire::Endpoint::resolve(&host, amqp_port).await?,
        https_authority: format!("{host}:{https_port}"),
        amqp_port,
        dps_host: host,
        mqtt_port,
        id_scope,
        hub: (hub_host.clone(), wire::Endpoint::resolve(&hub_host, mqtt_port).await?),
        trust: wire::Trust::new(&ca_pem)?,
        ca_pem,
        credentials: prepared.credentials,
        run_id: run_id.clone(),
        csr: a.csr,
        sources: controls.sources.clone(),
    });

    // The headline fields first (serde_json keeps insertion order; the outcome fills them in).
    let mut report = json!({
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "transport": a.transport,
        "attestation": attestation_name(a.attestation),
        "client": format!("{:?}", a.client()).to_lowercase(),
        "devices": null,
        "concurrency": a.concurrency,
        "succeeded": null,
        "failed": null,
        "errors": null,
        "elapsedSeconds": null,
        "throughputPerSecond": null,
        "latencyMs": null,
        "controls": {
            "devices": controls.devices,
            "concurrency": a.concurrency,
            "ratePerSecond": controls.rate,
            "durationSeconds": a.duration,
            "warmup": a.warmup,
            "sourceAddresses": controls.sources.len(),
        },
    });
    if a.attestation == Attestation::X509 {
        report["certificateSeconds"] = json!(round3(prepared.certificate_seconds));
    }
    if let (Some(w), Some(ms)) = (&webhook, a.webhook_delay_ms) {
        report["webhook"] = json!({ "url": w.url, "delayMs": ms });
    }

    if a.mode == Mode::Telemetry {
        let plan = telemetry::TelemetryPlan {
            devices: controls.devices.unwrap_or(TELEMETRY_DEVICES),
            duration: a.duration.map_or(DEFAULT_HOLD, Duration::from_secs_f64),
            rate: controls.rate,
        };
        let consumer = telemetry::Consumer {
            host: hub_host.clone(),
            port: amqp_port,
            policy: hub_policy
                .ok_or_else(|| BenchError::controls("telemetry needs the hub's policy (--data-dir of the server)"))?,
        };
        let usage = Usage::start(a.server_pid);
        telemetry::run(ctx.clone(), plan, consumer, &mut report)
            .await
            .map_err(BenchError::Telemetry)?;
        usage.finish(&mut report);
        if !a.keep {
            report["cleanup"] = prepare::cleanup(rest, hub_rest, &run_id).await;
        }
        return Ok(report);
    }
    let outcome = if a.mode == Mode::Hold {
        let plan = hold::HoldPlan {
            connections: controls.devices.unwrap_or(DEFAULT_DEVICES),
            warmup: a.warmup,
            concurrency: a.concurrency,
            rate: controls.rate,
            hold: a.duration.map_or(DEFAULT_HOLD, Duration::from_secs_f64),
            keep_alive: a.keep_alive,
            server_pid: a.server_pid,
        };
        report["preparationSeconds"] = json!(round3(t_prepare.elapsed().as_secs_f64()));
        hold::run(ctx.clone(), plan, &mut report).await
    } else {
        let flow = |offset: usize| {
            let (ctx, mode) = (ctx.clone(), a.mode);
            move |i: usize| {
                let ctx = ctx.clone();
                async move { devices::run(&ctx, mode, offset + i).await }
            }
        };
        let base = Plan {
            devices: Some(a.warmup),
            concurrency: a.concurrency,
            rate: controls.rate,
            duration: None,
        };
        if a.warmup > 0 {
            let w = driver::run("warm-up", base, flow(0)).await;
            report["warmupResult"] = json!({ "succeeded": w.succeeded(), "failed": w.failed() });
        }
        report["preparationSeconds"] = json!(round3(t_prepare.elapsed().as_secs_f64()));
        let usage = Usage::start(a.server_pid);
        let plan = Plan {
            devices: controls.devices,
            duration: controls.duration,
            ..base
        };
        let outcome = driver::run(&format!("{:?}", a.mode).to_lowercase(), plan, flow(a.warmup)).await;
        usage.finish(&mut report);
        outcome
    };
    add_outcome(&mut report, &outcome);

    let ceiling = match (a.mode, a.ceiling) {
        (Mode::Tls, _) => Some(outcome.throughput()),
        (Mode::Hold, _) | (_, None) => None,
        (_, Some(secs)) => {
            let plan = Plan {
                devices: None,
                concurrency: a.concurrency,
                rate: None,
                duration: Some(Duration::from_secs_f64(secs)),
            };
            let ctx = ctx.clone();
            let tls = driver::run("tls ceiling", plan, move |i| {
                let ctx = ctx.clone();
                async move { devices::run(&ctx, Mode::Tls, i).await }
            })
            .await;
            Some(tls.throughput())
        }
    };
    if let Some(c) = ceiling {
        report["tlsCeilingPerSecond"] = json!(round3(c));
        report["ratioToTls"] = json!(round3(outcome.throughput() / c.max(1e-9)));
    }
    if uses_group && !a.keep {
        report["cleanup"] = prepare::cleanup(rest, hub_rest, &run_id).await;
    }
    if let Some(w) = &webhook {
        report["webhook"]["calls"] = json!(w.calls.load(std::sync::atomic::Ordering::Relaxed));
    }
    Ok(report)
}

fn attestation_name(a: Attestation) -> &'static str {
    match a {
        Attestation::SymmetricKey => "symmetric-key",
        Attestation::X509 => "x509",
    }
}

/// The fields every mode reports about its timed phase.
fn add_outcome(report: &mut Value, o: &Outcome) {
    report["devices"] = json!(o.started);
    report["succeeded"] = json!(o.succeeded());
    report["failed"] = json!(o.failed());
    report["errors"] = json!(o.errors);
    report["elapsedSeconds"] = json!(round3(o.elapsed.as_secs_f64()));
    report["throughputPerSecond"] = json!(round3(o.throughput()));
    report["latencyMs"] = o.latency_json();
}
