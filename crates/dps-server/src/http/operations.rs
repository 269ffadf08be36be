//! Endpoints for operators rather than devices or Azure SDKs, on the HTTPS port (issue 16):
//!
//! - `GET /healthz`: the process serves requests (200). No credentials, as load balancers and
//!   orchestrators probe it; it says nothing but "ok".
//! - `GET /readyz`: the node can do its work: its stores answer (the DPS store and every
//!   embedded hub's; on PostgreSQL, a connection and a query). 503 with what failed otherwise,
//!   so a load balancer stops sending devices to a node whose database is away. The listeners
//!   are bound before anything is served, so a node that answers has them. The answer is kept
//!   for a second ([`crate::readiness`]): the endpoint takes no credentials.
//! - `GET /metrics`: Prometheus' text format ([`crate::metrics`]), for a scraper with the
//!   configured bearer token (`--metrics-token`) or a DPS service policy's SAS token with a read
//!   right.
//!
//! They are not part of the Azure API surface, so they take no `api-version` and answer plain
//! text.

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};

use crate::Services;

/// The answer to `req` when it is one of the operator endpoints; `None` for every other
/// request. What the answer needs of the request is taken now (a request is not `Sync`, so the
/// answer must not borrow it across its waits).
pub(super) fn serve<'s>(services: &'s Services, req: &Request) -> Option<impl Future<Output = Response> + Send + 's> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let endpoint = match req.uri().path() {
        "/healthz" => Endpoint::Health,
        "/readyz" => Endpoint::Ready,
        "/metrics" => Endpoint::Metrics,
        _ => return None,
    };
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Some(answer(services, endpoint, authorization))
}

enum Endpoint {
    Health,
    Ready,
    Metrics,
}

async fn answer(services: &Services, endpoint: Endpoint, authorization: Option<String>) -> Response {
    match endpoint {
        Endpoint::Health => text(StatusCode::OK, "ok\n".into()),
        Endpoint::Ready => ready(services).await,
        Endpoint::Metrics => match authorized(services, authorization.as_deref()) {
            Ok(()) => {
                let mut resp = text(StatusCode::OK, services.metrics.render(services).await);
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                resp
            }
            Err(why) => {
                tracing::info!("metrics request refused: {why}");
                let mut resp = text(StatusCode::UNAUTHORIZED, format!("{why}\n"));
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"dps metrics\""),
                );
                resp
            }
        },
    }
}

fn text(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Whether the stores answer (as of the last second).
async fn ready(services: &Services) -> Response {
    match services.readiness.get(|| probe(services)).await {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// Whether the stores answer now: a read by key of something that is never there.
async fn probe(services: &Services) -> Result<(), String> {
    const PROBE: &str = "dps-readiness-probe";
    let mut failures = Vec::new();
    match services.engine.get_enrollment(PROBE).await {
        Ok(_) => {}
        Err(e) if e.status() == 404 => {}
        Err(e) => failures.push(format!("DPS store: {e}")),
    }
    for h in services.hubs.iter() {
        if let Err(e) = h.hub.statistics().await {
            failures.push(format!("hub {}: {e}", h.identity.host_name));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        tracing::warn!(failures = ?failures, "not ready");
        Err(failures.join("; "))
    }
}

/// The configured bearer token, or a DPS service policy's SAS with a read right.
fn authorized(services: &Services, header: Option<&str>) -> Result<(), String> {
    if let (Some(token), Some(header)) = (services.config.metrics_token.as_deref(), header) {
        if let Some(given) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        {
            // Compared in constant time: the token is a secret a scraper holds.
            use subtle::ConstantTimeEq;
            return if bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())) {
                Ok(())
            } else {
                Err("the bearer token is not the configured metrics token".into())
            };
        }
    }
    let hosts = super::host::audience_hosts(super::own_names(services), services.config.https_port);
    services
        .dps_auth
        .authorize(
            dps_core::Engine::unix_time(services.clock.now()),
            header,
            &hosts,
            "/metrics",
            &["ServiceConfig", "EnrollmentRead", "RegistrationStatusRead"],
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}
