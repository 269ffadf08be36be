//! Prometheus metrics (`GET /metrics`, issue 16): what an operator graphs and alerts on.
//!
//! Counted as things happen, without a lock on any hot path (prometheus-client's counters are
//! atomics; a label set is looked up in a read-locked map):
//! - `dps_registrations_total{status, attestation, transport}`: every registration attempt as
//!   the engine ends it (through `crate::observer`): `status` is the registration's (`assigned`,
//!   `failed`, `disabled`) or the refusal's (`unauthorized`, `throttled`, `not_found`,
//!   `bad_request`, `unavailable`, `error`);
//! - `dps_registration_duration_seconds{transport}`: from the request's arrival in the engine to
//!   its answer (the store commit included);
//! - `dps_throttled_requests_total{quota}`: device requests a quota refused (429);
//! - `dps_webhook_duration_seconds{outcome}`: custom allocation webhook calls;
//! - `dps_tls_handshakes_total{listener, result}`: `ok`, `failed`, `timeout`;
//! - `dps_hub_sessions{hub, transport}`: device and module sessions open on this node (MQTT,
//!   over TLS or WebSockets; AMQP, one per device multiplexed on a connection).
//!
//! Read when scraped: `dps_hub_devices{hub, status}` and `dps_hub_connected_devices{hub}` (the
//! registry's counts; on nodes sharing PostgreSQL the whole cluster's connected devices),
//! `dps_hub_c2d_queued{hub}` (the C2D queue depth, from the store);
//! `dps_hub_messages_total{hub, kind}` (`telemetry_in`, `c2d_sent`) and
//! `dps_hub_method_calls_total{hub}` (this node's); the stores' writers,
//! `dps_store_transactions_total{store}` (each a durable commit), `dps_store_commands_total`,
//! `dps_store_failed_transactions_total` and `dps_store_commit_seconds_total` (divided by the
//! transactions: the mean commit latency); `dps_audit_dropped_total` (audit entries lost: the
//! trail's queue was full, or its store failed).

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistrationLabels {
    status: &'static str,
    attestation: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabel {
    quota: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubLabels {
    hub: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubTransportLabels {
    hub: String,
    transport: &'static str,
}

/// A device session counted in `dps_hub_sessions` while it lives.
pub(crate) struct CountedSession(Gauge);

impl Drop for CountedSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubStatusLabels {
    hub: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubKindLabels {
    hub: String,
    kind: &'static str,
}

/// Reads a store writer's counters.
pub(crate) type StoreStatsFn = Arc<dyn Fn() -> dps_store::StoreStats + Send + Sync>;

/// What is read from the stores and the hubs when scraped: the stores' counter readers, and the
/// hubs' counters as [`Metrics::render`] read them just before encoding.
#[derive(Default)]
struct Readings {
    stores: RwLock<Vec<(&'static str, StoreStatsFn)>>,
    hubs: RwLock<Vec<(String, dps_hub::HubCounters)>>,
    /// The audit trail's entries lost so far (read at scrape).
    audit_dropped: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Readings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readings").finish_non_exhaustive()
    }
}

/// One counter family of `rows` (label set, value) under `name`.
fn counters<L: EncodeLabelSet, N: prometheus_client::encoding::EncodeCounterValue + Clone>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, N)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value.clone()).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Readings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stores: Vec<(StoreLabel, dps_store::StoreStats)> = self
            .stores
            .read()
            .iter()
            .map(|(store, stats)| (StoreLabel { store }, stats()))
            .collect();
        let of = |f: fn(&dps_store::StoreStats) -> u64| -> Vec<(StoreLabel, u64)> {
            stores.iter().map(|(l, s)| (l.clone(), f(s))).collect()
        };
        counters(
            &mut encoder,
            "dps_store_transactions",
            "Transactions the store's writer committed (each a durable flush)",
            &of(|s| s.transactions),
        )?;
        counters(
            &mut encoder,
            "dps_store_commands",
            "Writes carried by committed transactions",
            &of(|s| s.commands),
        )?;
        counters(
            &mut encoder,
            "dps_store_failed_transactions",
            "Transactions that failed as a whole",
            &of(|s| s.failed_transactions),
        )?;
        let seconds: Vec<(StoreLabel, f64)> = stores
            .iter()
            .map(|(l, s)| (l.clone(), s.commit_micros as f64 / 1e6))
            .collect();
        counters(
            &mut encoder,
            "dps_store_commit_seconds",
            "Time spent executing and committing transactions that committed",
            &seconds,
        )?;
        let hubs = self.hubs.read();
        let mut messages = Vec::new();
        for (hub, c) in hubs.iter() {
            for (kind, n) in [("telemetry_in", c.telemetry_in), ("c2d_sent", c.c2d_sent)] {
                messages.push((HubKindLabels { hub: hub.clone(), kind }, n));
            }
        }
        counters(
            &mut encoder,
            "dps_hub_messages",
            "Messages through this node's hub: device-to-cloud stored, cloud-to-device sent",
            &messages,
        )?;
        let calls: Vec<(HubLabels, u64)> = hubs
            .iter()
            .map(|(hub, c)| (HubLabels { hub: hub.clone() }, c.methods_invoked))
            .collect();
        counters(
            &mut encoder,
            "dps_hub_method_calls",
            "Direct-method calls the service made through this node",
            &calls,
        )?;
        counters(
            &mut encoder,
            "dps_audit_dropped",
            "Audit entries lost because the trail's queue was full or its store failed",
            &[(
                NoLabels {},
                self.audit_dropped.load(std::sync::atomic::Ordering::Relaxed),
            )],
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Handshake {
    Ok,
    Failed,
    TimedOut,
}

/// The server's metrics. One per server, shared by every listener and the engine.
pub struct Metrics {
    registry: Registry,
    registrations: Family<RegistrationLabels, Counter>,
    registration_seconds: Family<TransportLabel, Histogram, fn() -> Histogram>,
    webhook_seconds: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    throttled: Family<QuotaLabel, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    hub_devices: Family<HubStatusLabels, Gauge>,
    hub_connected: Family<HubLabels, Gauge>,
    c2d_queued: Family<HubLabels, Gauge>,
    sessions: Family<HubTransportLabels, Gauge>,
    readings: Arc<Readings>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Latency buckets (registrations, webhook calls): 1 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let registrations = Family::<RegistrationLabels, Counter>::default();
        registry.register(
            "dps_registrations",
            "Registration attempts, by outcome, attestation and transport",
            registrations.clone(),
        );
        let registration_seconds = Family::<TransportLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "dps_registration_duration_seconds",
            "Time from a register request's arrival to its answer",
            registration_seconds.clone(),
        );
        let webhook_seconds = Family::<OutcomeLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "dps_webhook_duration_seconds",
            "Custom allocation webhook calls, by outcome (ok, failed)",
            webhook_seconds.clone(),
        );
        let throttled = Family::<QuotaLabel, Counter>::default();
        registry.register(
            "dps_throttled_requests",
            "Device requests refused by a quota (429)",
            throttled.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "dps_tls_handshakes",
            "TLS handshakes on each listener, by result",
            handshakes.clone(),
        );
        let hub_devices = Family::<HubStatusLabels, Gauge>::default();
        registry.register(
            "dps_hub_devices",
            "Devices in each embedded hub's registry, by status",
            hub_devices.clone(),
        );
        let hub_connected = Family::<HubLabels, Gauge>::default();
        registry.register(
            "dps_hub_connected_devices",
            "Devices connected to each embedded hub",
            hub_connected.clone(),
        );
        let c2d_queued = Family::<HubLabels, Gauge>::default();
        registry.register(
            "dps_hub_c2d_queued",
            "Cloud-to-device messages each hub holds (queued, or delivered and not settled)",
            c2d_queued.clone(),
        );
        let sessions = Family::<HubTransportLabels, Gauge>::default();
        registry.register(
            "dps_hub_sessions",
            "Device and module sessions open on this node, by hub and transport",
            sessions.clone(),
        );
        let readings = Arc::new(Readings::default());
        registry.register_collector(Box::new(readings.clone()));
        Metrics {
            readings,
            registry,
            registrations,
            registration_seconds,
            webhook_seconds,
            throttled,
            handshakes,
            hub_devices,
            hub_connected,
            c2d_queued,
            sessions,
        }
    }
}

impl Metrics {
    /// Reports the writer counters `stats` reads as those of store `name` (`dps`, `hubs`).
    pub(crate) fn watch_store(&self, name: &'static str, stats: StoreStatsFn) {
        self.readings.stores.write().push((name, stats));
    }

    /// Counts a device (or module) session of `hub` over `transport` until the returned guard
    /// is dropped.
    pub(crate) fn session(&self, hub: &str, transport: &'static str) -> CountedSession {
        let gauge = self
            .sessions
            .get_or_create(&HubTransportLabels {
                hub: hub.to_string(),
                transport,
            })
            .clone();
        gauge.inc();
        CountedSession(gauge)
    }

    /// Counts a TLS handshake on `listener` (`mqtt`, `https`, `amqp`).
    pub(crate) fn handshake(&self, listener: &'static str, result: Handshake) {
        let result = match result {
            Handshake::Ok => "ok",
            Handshake::Failed => "failed",
            Handshake::TimedOut => "timeout",
        };
        self.handshakes
            .get_or_create(&HandshakeLabels { listener, result })
            .inc();
    }

    /// The metrics in Prometheus' text format, the hubs' counts read now.
    pub(crate) async fn render(&self, services: &crate::Services) -> String {
        self.readings
            .audit_dropped
            .store(services.audit.dropped(), std::sync::atomic::Ordering::Relaxed);
        *self.readings.hubs.write() = services
            .hubs
            .iter()
            .map(|h| (h.identity.host_name.clone(), h.hub.counters()))
            .collect();
        for h in services.hubs.iter() {
            let hub = h.identity.host_name.clone();
            match h.hub.statistics().await {
                Ok(stats) => {
                    for (status, n) in [
                        ("enabled", stats.enabled_device_count),
                        ("disabled", stats.disabled_device_count),
                    ] {
                        self.hub_devices
                            .get_or_create(&HubStatusLabels {
                                hub: hub.clone(),
                                status,
                            })
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                    self.hub_connected
                        .get_or_create(&HubLabels { hub })
                        .set(i64::try_from(stats.connected_device_count).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::debug!(hub, error = %e, "hub counts not read for the metrics"),
            }
            match h.hub.c2d_queued().await {
                Ok(n) => {
                    self.c2d_queued
                        .get_or_create(&HubLabels {
                            hub: h.identity.host_name.clone(),
                        })
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::debug!(error = %e, "C2D queue depth not read for the metrics"),
            }
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "metrics not encoded");
        }
        text
    }
}

/// The label of a registration's outcome.
pub(crate) fn outcome_label(
    outcome: &Result<&dps_proto::model::service::RegistrationState, &dps_core::Error>,
) -> &'static str {
    use dps_proto::model::service::RegistrationStatus;
    match outcome.map(|state| state.status) {
        Ok(RegistrationStatus::Assigned) => "assigned",
        Ok(RegistrationStatus::Failed) => "failed",
        Ok(RegistrationStatus::Disabled) => "disabled",
        Ok(RegistrationStatus::Assigning) => "assigning",
        Ok(_) => "other",
        Err(e) => match e.status() {
            400 => "bad_request",
            401 | 403 => "unauthorized",
            404 => "not_found",
            429 => "throttled",
            503 => "unavailable",
            _ => "error",
        },
    }
}

pub(crate) fn attestation_label(attestation: Option<dps_proto::model::service::AttestationType>) -> &'static str {
    use dps_proto::model::service::AttestationType;
    match attestation {
        Some(AttestationType::SymmetricKey) => "symmetricKey",
        Some(AttestationType::X509) => "x509",
        Some(AttestationType::Tpm) => "tpm",
        #[allow(unreachable_patterns)]
        Some(_) => "other",
        None => "unknown",
    }
}

impl Metrics {
    /// Counts a registration attempt.
    pub(crate) fn registration(&self, attempt: &dps_core::RegistrationAttempt<'_>) {
        let transport = attempt.request.transport.as_str();
        self.registrations
            .get_or_create(&RegistrationLabels {
                status: outcome_label(&attempt.outcome),
                attestation: attestation_label(attempt.attestation),
                transport,
            })
            .inc();
        self.registration_seconds
            .get_or_create(&TransportLabel { transport })
            .observe(attempt.elapsed.as_secs_f64());
    }

    /// Times a custom allocation webhook call.
    pub(crate) fn webhook(&self, took: std::time::Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.webhook_seconds
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }

    /// Counts a request a quota refused.
    pub(crate) fn throttled(&self, quota: dps_core::quota::Quota) {
        let quota = match quota {
            dps_core::quota::Quota::Registrations => "registrations",
            dps_core::quota::Quota::Operations => "operations",
            dps_core::quota::Quota::DevicePolls => "device_polls",
        };
        self.throttled.get_or_create(&QuotaLabel { quota }).inc();
    }
}
