//! `hold`: many idle hub connections at once, and what they cost the server's (and the bench's)
//! memory.
//!
//! The devices are first registered through DPS in an untimed phase, the way real devices reach
//! the hub. That is slower than creating hub identities through the registry API, but it is one
//! path for symmetric-key and X.509 devices alike (DPS creates the hub identity with the right
//! authentication), and the cleanup is the same as for the other modes. Then every device opens a
//! real hub session (TLS, CONNECT with its SAS token or certificate, CONNACK, twin subscriptions,
//! SUBACK) and keeps it open with keep-alive pings for `--duration`, while the server's resident
//! memory is sampled.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dps_client::Transport;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::devices::{self, Assignment, Ctx, Device};
use super::driver::{self, Plan};
use super::report::{process_stats, round3, Outcome, RssSampler, Usage};
use super::{mqtt, sdk, ClientKind};

/// How long the held connections get to say goodbye at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// The controls of a hold run.
pub struct HoldPlan {
    /// Connections to open (and devices to register first).
    pub connections: usize,
    /// Connections opened and closed before the baseline is taken.
    pub warmup: usize,
    /// Connection attempts in flight at most (also for the registration phase).
    pub concurrency: usize,
    /// Target connection attempts per second.
    pub rate: Option<f64>,
    /// How long all connections are held once open.
    pub hold: Duration,
    /// MQTT keep-alive announced and pinged at.
    pub keep_alive: u16,
    /// The server, for its memory.
    pub server_pid: Option<u32>,
}

/// Connections kept open, whichever client opened them.
#[derive(Default)]
struct Held {
    lean: Vec<JoinHandle<bool>>,
    sdk: Vec<dps_client::HubClient>,
    amqp: Vec<dps_client::AmqpHubClient>,
}

impl Held {
    /// How many are still open.
    fn open(&self) -> usize {
        self.lean.iter().filter(|h| !h.is_finished()).count()
            + self.sdk.iter().filter(|c| c.is_connected()).count()
            + self.amqp.iter().filter(|c| c.is_connected()).count()
    }
}

/// Runs the hold phases; returns the connect phase's outcome and adds the hold figures to
/// `report`.
pub async fn run(ctx: Arc<Ctx>, plan: HoldPlan, report: &mut Value) -> Outcome {
    let total = plan.warmup + plan.connections;
    let assignments: Arc<Vec<OnceLock<Assignment>>> = Arc::new((0..total).map(|_| OnceLock::new()).collect());
    let registration = driver::run(
        "register (untimed)",
        Plan {
            devices: Some(total),
            concurrency: plan.concurrency,
            rate: None,
            duration: None,
        },
        |i| {
            let (ctx, assignments) = (ctx.clone(), assignments.clone());
            async move {
                let a = devices::register(&ctx, i).await?;
                let _ = assignments[i].set(a);
                Ok(())
            }
        },
    )
    .await;
    report["registration"] = json!({
        "devices": total,
        "succeeded": registration.succeeded(),
        "failed": registration.failed(),
        "errors": registration.errors,
        "seconds": round3(registration.elapsed.as_secs_f64()),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let keep_alive = plan.keep_alive;
    let connect = |offset: usize, keep: bool, held: Arc<Mutex<Held>>| {
        let (ctx, assignments, stop_rx) = (ctx.clone(), assignments.clone(), stop_rx.clone());
        move |i: usize| {
            let (ctx, assignments, stop_rx, held) = (ctx.clone(), assignments.clone(), stop_rx.clone(), held.clone());
            async move {
                let index = offset + i;
                let a = assignments[index].get().ok_or("not registered")?;
                let dev = Device::new(&ctx, index);
                match ctx.client {
                    ClientKind::Lean => {
                        let mut tls = mqtt::hub_tls(&dev, a).await?;
                        mqtt::hub_handshake(&mut mqtt::framed(&mut tls), &dev, a, keep_alive).await?;
                        if keep {
                            let task = tokio::spawn(mqtt::idle(tls, keep_alive, stop_rx));
                            held.lock().lean.push(task);
                        }
                    }
                    ClientKind::Sdk if ctx.transport == Transport::Amqp => {
                        let client = sdk::hold_amqp(&dev, a).await?;
                        if keep {
                            held.lock().amqp.push(client);
                        } else {
                            let _ = client.disconnect().await;
                        }
                    }
                    ClientKind::Sdk => {
                        let client = sdk::hold(&dev, a, keep_alive).await?;
                        if keep {
                            held.lock().sdk.push(client);
                        } else {
                            let _ = client.disconnect().await;
                        }
                    }
                }
                Ok(())
            }
        }
    };
    if plan.warmup > 0 {
        let w = driver::run(
            "warm-up",
            Plan {
                devices: Some(plan.warmup),
                concurrency: plan.concurrency,
                rate: plan.rate,
                duration: None,
            },
            connect(0, false, Arc::default()),
        )
        .await;
        report["warmupResult"] = json!({ "succeeded": w.succeeded(), "failed": w.failed() });
    }

    let baseline_server = plan.server_pid.and_then(|p| process_stats(Some(p))).map(|s| s.rss);
    let baseline_client = process_stats(None).map(|s| s.rss).unwrap_or(0);
    let sampler = RssSampler::start(plan.server_pid);
    let usage = Usage::start(plan.server_pid);
    let held = Arc::new(Mutex::new(Held::default()));
    let outcome = driver::run(
        "connect",
        Plan {
            devices: Some(plan.connections),
            concurrency: plan.concurrency,
            rate: plan.rate,
            duration: None,
        },
        connect(plan.warmup, true, held.clone()),
    )
    .await;
    let established = outcome.succeeded();
    eprintln!("holding {established} connections for {:.1} s", plan.hold.as_secs_f64());
    tokio::time::sleep(plan.hold).await;
    let open_at_end = held.lock().open();
    let (server_peak, client_peak) = sampler.stop();
    usage.finish(report);

    // Goodbye: DISCONNECT from every lean connection, and the SDK clients dropped.
    let _ = stop_tx.send(true);
    let Held { lean, sdk, amqp } = std::mem::take(&mut *held.lock());
    drop(sdk);
    drop(amqp);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        for h in lean {
            let _ = h.await;
        }
    })
    .await;

    let per = |peak: u64, base: u64| (established > 0).then(|| peak.saturating_sub(base) / established as u64);
    report["connections"] = json!(plan.connections);
    report["established"] = json!(established);
    report["openAtEnd"] = json!(open_at_end);
    report["heldSeconds"] = json!(plan.hold.as_secs_f64());
    report["keepAliveSeconds"] = json!(plan.keep_alive);
    report["clientRssBaselineBytes"] = json!(baseline_client);
    report["clientRssBytes"] = json!(client_peak);
    report["clientRssPerConnectionBytes"] = json!(per(client_peak, baseline_client));
    if let Some(base) = baseline_server {
        report["serverRssBaselineBytes"] = json!(base);
        report["serverRssPeakBytes"] = json!(server_peak);
        report["serverRssPerConnectionBytes"] = json!(per(server_peak, base));
    }
    outcome
}
