//! `dps serve --otlp-endpoint`: every registration as an OpenTelemetry trace, exported over
//! OTLP (HTTP, protobuf) to a collector (decision 0038).
//!
//! Only the engine's registration spans (target [`dps_core::engine::REGISTRATION_SPAN_TARGET`])
//! go to the collector: one span per register request, with the registration id, transport,
//! attestation, status, error code and assigned hub. The log keeps its own filter. Spans are
//! batched and sent by the SDK's own thread with a blocking HTTP client (10 s deadline), so the
//! register path only hands the finished span over; a collector that is away costs dropped
//! spans, not registrations.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The system's CA bundle (Debian), trusted for an `https` collector besides `--otlp-ca`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter's provider (kept to flush at shutdown) for the collector at `endpoint` (its
/// base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`; traces go to `{endpoint}/v1/traces`), trusting
/// `ca` (PEM) besides the system's CAs.
pub fn provider(endpoint: &str, ca: Option<&Path>) -> Result<SdkTracerProvider> {
    let mut client = reqwest::blocking::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    for bundle in ca
        .into_iter()
        .chain(Some(Path::new(SYSTEM_CA_BUNDLE)).filter(|p| p.exists()))
    {
        let pem = std::fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no PEM certificate", bundle.display()))?
        {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client.build().context("cannot make the OTLP HTTP client")?;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .context("cannot make the OTLP exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("dps").build())
        .build())
}

/// The `tracing` layer exporting the registration spans through `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("dps"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == dps_core::engine::REGISTRATION_SPAN_TARGET
        }))
}
