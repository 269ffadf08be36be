//! The HTTPS adapter: device API, DPS service API and the embedded hub's registry API on one
//! port, over hyper (HTTP/1.1, keep-alive) and an axum [`Router`] whose only handler is the
//! hand-written dispatcher in [`route`]. The same port upgrades `GET /$iothub/websocket` to MQTT
//! over WebSockets (`websocket`).
//!
//! Entry points:
//! - [`HttpApp::new`] once per server (cheap: it wraps `Arc<Services>` and builds the router once),
//!   then [`HttpApp::serve_connection`] per accepted TLS connection;
//! - [`serve_connection`], the same as a free function (builds an `HttpApp` per call, which is
//!   only an `Arc` clone and a small allocation — prefer caching an `HttpApp`);
//! - [`router`] / [`HttpApp::router`] for tests (`tower::ServiceExt::oneshot`). The client's TLS
//!   certificates reach the handlers as the [`PeerCertificates`] request extension, which
//!   `serve_connection` inserts; without it a request has no client certificate.
//!
//! Every JSON response has `Content-Type: application/json; charset=utf-8` (Node parses only
//! those) and ASCII-only JSON. Errors carry `ApiError::details` as body and `x-ms-error-code`.

mod device;
mod events;
mod hub;
pub mod route;
mod service;
#[cfg(test)]
mod tests;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use dps_core::{ApiError, Engine};
use dps_proto::codes;
use dps_proto::model::device::to_ascii_json;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use route::{Api, NoRoute, QueryParams, Route};

use crate::Services;

/// How long a client may take to send a request's headers, and to stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// `Content-Type` of every JSON response.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The DER certificates (leaf first) the client presented in the TLS handshake, as a request
/// extension. Empty or absent: no client certificate.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Arc<Vec<Vec<u8>>>);

/// The HTTPS application. Cheap to clone; build one per server and call
/// [`HttpApp::serve_connection`] for each connection.
#[derive(Clone)]
pub struct HttpApp {
    router: Router,
}

impl HttpApp {
    /// Builds the router over `services`.
    pub fn new(services: Arc<Services>) -> Self {
        Self {
            router: router(services),
        }
    }

    /// The router (a clone; clones share everything).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves HTTP/1.1 (keep-alive) on an already TLS-accepted stream until the client closes it,
    /// or until a request upgrades it to a WebSocket (`/$iothub/websocket`, MQTT). `peer_certs`
    /// (DER, leaf first) are offered to the device API as an X.509 credential when a request
    /// carries no `Authorization` header, and to MQTT over WebSockets like on 8883.
    pub async fn serve_connection<S>(&self, stream: S, peer_certs: Vec<Vec<u8>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let certs = PeerCertificates(Arc::new(peer_certs));
        let router = self.router.clone();
        let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(certs.clone());
            router.clone().oneshot(req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            // Bounds the wait for a request's headers, which also closes connections idle that
            // long between requests. Generous, so devices polling slowly keep their connection.
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc)
            // Lets `/$iothub/websocket` take the connection over; other requests are unaffected.
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    }
}

/// Serves one connection; see [`HttpApp::serve_connection`]. Builds the router per call (cheap);
/// a caller that serves many connections should keep an [`HttpApp`].
pub async fn serve_connection<S>(stream: S, services: Arc<Services>, peer_certs: Vec<Vec<u8>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    HttpApp::new(services).serve_connection(stream, peer_certs).await
}

/// The axum router: every request goes to the dispatcher.
pub fn router(services: Arc<Services>) -> Router {
    Router::new().fallback(dispatch).with_state(services)
}

async fn dispatch(State(services): State<Arc<Services>>, req: Request) -> Response {
    let now = services.clock.now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = match route::route(&method, &path) {
        // The upgrade needs the request's hyper extensions, and no `api-version`.
        Ok(Route::MqttWebSocket) => websocket::upgrade(&services, req),
        Ok(route) => handle(&services, now, route, req).await,
        Err(NoRoute::NotFound) => Err(ApiError::new(
            codes::PATH_NOT_FOUND,
            format!("no such resource: {method} {path}"),
        )),
        Err(NoRoute::MethodNotAllowed(allowed)) => {
            let list = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            let e = ApiError::new(
                codes::METHOD_NOT_ALLOWED,
                format!("method {method} is not allowed on {path}; allowed: {list}"),
            );
            let mut resp = error_response(&e, now);
            if let Ok(v) = HeaderValue::from_str(&list) {
                resp.headers_mut().insert(ALLOW, v);
            }
            tracing::info!(%method, %path, status = e.status, code = e.code, "request refused: {}", e.message);
            return resp;
        }
    };
    match result {
        Ok(resp) => {
            tracing::debug!(%method, %path, status = resp.status().as_u16(), "request served");
            resp
        }
        Err(e) => {
            // Missing resources, conflicts and stale etags are ordinary answers; everything
            // else (auth, bad input, unknown paths, limits) is a refusal worth seeing at info.
            let ordinary = matches!(e.status, 404 | 409 | 412) && e.code != codes::PATH_NOT_FOUND;
            if e.status >= 500 {
                tracing::warn!(%method, %path, status = e.status, code = e.code, "request failed: {}", e.message);
            } else if ordinary {
                tracing::debug!(%method, %path, status = e.status, code = e.code, "request answered with an error: {}", e.message);
            } else {
                tracing::info!(%method, %path, status = e.status, code = e.code, "request refused: {}", e.message);
            }
            error_response(&e, now)
        }
    }
}

/// What every handler gets.
pub(crate) struct Ctx<'a> {
    pub services: &'a Services,
    pub now: DateTime<Utc>,
    pub headers: HeaderMap,
    pub query: QueryParams,
    /// Raw (percent-encoded) request path.
    pub path: String,
    pub peer_certs: Option<PeerCertificates>,
    body: Option<Body>,
}

impl Ctx<'_> {
    /// A header as text; `None` when absent, empty, or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// `If-Match`, raw.
    pub fn if_match(&self) -> Option<&str> {
        self.header("if-match")
    }

    /// Reads the whole body, refusing more than `max_message_bytes` (without buffering more).
    /// A second call returns an empty body.
    pub async fn body(&mut self) -> Result<Bytes, ApiError> {
        let Some(body) = self.body.take() else {
            return Ok(Bytes::new());
        };
        let limit = self.services.config.max_message_bytes;
        let too_large = |n: Option<u64>| {
            let size = n.map(|n| format!(" of {n} bytes")).unwrap_or_default();
            ApiError::new(
                codes::PAYLOAD_TOO_LARGE,
                format!("request body{size} exceeds the limit of {limit} bytes"),
            )
        };
        if let Some(len) = self
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if len > limit as u64 {
                return Err(too_large(Some(len)));
            }
        }
        match Limited::new(body, limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(None)),
            Err(e) => Err(ApiError::bad_body(format!("cannot read the request body: {e}"))),
        }
    }

    /// Parses the body as JSON of type `T`; malformed JSON is a 400 with serde's message.
    pub async fn json<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<T, ApiError> {
        let body = self.body().await?;
        parse_json(&body, what)
    }

    /// Parses the body as JSON of type `T` when it is not blank; `None` for an empty body.
    pub async fn optional_json<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<Option<T>, ApiError> {
        let body = self.body().await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_json(&body, what).map(Some)
    }

    /// The `Host` header's host name, without a port.
    pub fn host(&self) -> Option<&str> {
        let h = self
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|h| !h.is_empty())?;
        Some(strip_port(h))
    }

    /// The request path, percent-decoded (for SAS audience checks).
    pub fn decoded_path(&self) -> String {
        route::percent_decode(&self.path).unwrap_or_else(|| self.path.clone())
    }

    /// Authorizes against `authorizer` for any of `rights` (tried in order), with each of `hosts`
    /// as the resource host (`{host}{decoded path}`). On failure returns the error of the first
    /// attempt, which says what was wrong.
    pub fn authorize(
        &self,
        authorizer: &dps_core::auth::PolicyAuthorizer,
        hosts: &[&str],
        rights: &[&str],
    ) -> Result<(), ApiError> {
        let now = Engine::unix_time(self.now);
        let header = self.header("authorization");
        let path = self.decoded_path();
        let mut resources: Vec<String> = Vec::with_capacity(hosts.len());
        for h in hosts {
            let r = format!("{}{path}", h.to_ascii_lowercase());
            if !resources.contains(&r) {
                resources.push(r);
            }
        }
        let mut first_err: Option<ApiError> = None;
        for resource in &resources {
            match authorizer.authorize(now, header, resource, rights[0]) {
                Ok(_) => return Ok(()),
                // The token is valid for this resource; only the right is missing.
                Err(e) if e.code == codes::INSUFFICIENT_RIGHTS => {
                    if rights[1..]
                        .iter()
                        .any(|r| authorizer.authorize(now, header, resource, r).is_ok())
                    {
                        return Ok(());
                    }
                    if rights.len() > 1 {
                        return Err(ApiError {
                            message: format!("{}; any of {} would do", e.message, rights.join(", ")),
                            ..e
                        });
                    }
                    return Err(e);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| ApiError::unauthorized("request could not be authorized")))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Parses JSON, mapping errors to `400 BAD_REQUEST_BODY` with serde's message.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_body(format!(
            "request body is empty; expected {what} JSON"
        )));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_body(format!("request body is not a valid {what}: {e}")))
}

async fn handle(services: &Services, now: DateTime<Utc>, route: Route, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let query = QueryParams::parse(parts.uri.query());
    let api = route.api();
    if api != Api::Hub && query.get("api-version").is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            "the api-version query parameter is required (e.g. ?api-version=2021-10-01)",
        ));
    }
    let mut ctx = Ctx {
        services,
        now,
        headers: parts.headers,
        query,
        path: parts.uri.path().to_string(),
        peer_certs: parts.extensions.get::<PeerCertificates>().cloned(),
        body: Some(body),
    };
    match api {
        Api::Device => device::handle(&mut ctx, route).await,
        Api::Service => service::handle(&mut ctx, route).await,
        Api::Hub => hub::handle(&mut ctx, route).await,
    }
}

/// A JSON response.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut resp = Response::new(Body::from(to_ascii_json(value)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    resp
}

/// `200` with a JSON body.
pub(crate) fn ok<T: Serialize>(value: &T) -> Response {
    json_response(StatusCode::OK, value)
}

/// `204`, no body, no content type.
pub(crate) fn no_content() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// Adds a header whose value is known to be valid (ids we produced, numbers).
pub(crate) fn set_header(resp: &mut Response, name: &'static str, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            resp.headers_mut().insert(name, v);
        }
        Err(_) => tracing::warn!(header = name, "response header value is not valid; omitted"),
    }
}

/// The error response: status, `ApiError::details` body, `x-ms-error-code`.
pub(crate) fn error_response(e: &ApiError, now: DateTime<Utc>) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(status, &e.details(now));
    set_header(&mut resp, "x-ms-error-code", &e.code.to_string());
    resp
}

/// Parses an optional non-negative integer header or query value.
pub(crate) fn parse_count(value: Option<&str>, name: &str) -> Result<Option<usize>, ApiError> {
    value
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| ApiError::invalid(format!("{name} must be a non-negative integer, got '{v}'")))
        })
        .transpose()
}
