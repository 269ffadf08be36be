//! The HTTPS adapter: device API, DPS service API and the embedded hub's registry API on one
//! port, over hyper (HTTP/1.1, keep-alive) and an axum [`Router`] whose only handler dispatches
//! on the REST grammar of [`dps_proto::rest`]. The same port upgrades `GET /$iothub/websocket` to MQTT
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

mod audit;
mod blob;
mod crl;
mod deadline;
mod device;
mod events;
mod files;
pub mod host;
mod hub;
mod hub_device;
pub mod import_export;
mod operations;
mod policies;
mod service;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use crate::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use dps_core::Engine;
use dps_proto::codes;
use dps_proto::model::device::to_ascii_json;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::uri::Authority;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use dps_proto::rest::{Api, NoRoute, QueryParams, Route, API_VERSION};

use crate::conn_limit::ConnectionPermit;
use crate::Services;

/// How long a keep-alive connection may stay idle waiting for its next request (hyper's header
/// read timeout, which runs from the end of one request to the headers of the next). Once a
/// request's first byte arrives, the tighter `limits.request_timeout` applies ([`deadline`]).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// `Content-Type` of every JSON response.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The DER certificates (leaf first) the client presented in the TLS handshake, as a request
/// extension. Empty or absent: no client certificate.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Arc<Vec<Vec<u8>>>);

/// When the request's first byte arrived, as a request extension: its body must be in by this
/// plus `limits.request_timeout`. Absent (a router driven without a connection): when the
/// handler started.
#[derive(Debug, Clone, Copy)]
struct RequestStart(tokio::time::Instant);

/// The connection's place under the connection caps, as a request extension, so that a WebSocket
/// upgrade (which outlives the HTTP connection) keeps holding it.
#[derive(Debug, Clone)]
struct HeldPermit(Arc<ConnectionPermit>);

/// The HTTPS application. Cheap to clone; build one per server and call
/// [`HttpApp::serve_connection`] for each connection.
#[derive(Clone)]
pub struct HttpApp {
    router: Router,
    /// `limits.request_timeout`.
    request_timeout: Duration,
}

impl HttpApp {
    /// Builds the router over `services`.
    pub fn new(services: Arc<Services>) -> Self {
        Self {
            request_timeout: services.config.limits.request_timeout(),
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
        self.serve(stream, peer_certs, None).await
    }

    /// [`HttpApp::serve_connection`] for a connection admitted under the connection caps: the
    /// permit is held until the connection ends, or the WebSocket it was upgraded to does.
    pub(crate) async fn serve_admitted<S>(&self, stream: S, peer_certs: Vec<Vec<u8>>, permit: ConnectionPermit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve(stream, peer_certs, Some(Arc::new(permit))).await
    }

    async fn serve<S>(&self, stream: S, peer_certs: Vec<Vec<u8>>, permit: Option<Arc<ConnectionPermit>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let certs = PeerCertificates(Arc::new(peer_certs));
        let router = self.router.clone();
        let clock = deadline::RequestClock::new(self.request_timeout);
        let svc = hyper::service::service_fn({
            let clock = clock.clone();
            move |mut req: http::Request<hyper::body::Incoming>| {
                let (started, in_service) = clock.begin();
                req.extensions_mut().insert(certs.clone());
                req.extensions_mut().insert(RequestStart(started));
                if let Some(p) = &permit {
                    req.extensions_mut().insert(HeldPermit(p.clone()));
                }
                let call = router.clone().oneshot(req);
                async move {
                    let resp = call.await;
                    drop(in_service);
                    resp
                }
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            // Bounds the wait for a request's headers from the end of the previous request, i.e.
            // how long a keep-alive connection may stay idle. Generous, so devices polling slowly
            // keep their connection; a request under way has the tighter `deadline`.
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(deadline::Timed::new(stream, clock.clone())), svc)
            // Lets `/$iothub/websocket` take the connection over; other requests are unaffected.
            .with_upgrades();
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            },
            expired = clock.expired() => match expired {
                deadline::Expired::Headers => tracing::debug!(
                    timeout_secs = self.request_timeout.as_secs(),
                    "HTTP connection closed: a request's headers did not arrive within the request timeout"
                ),
                deadline::Expired::Write => tracing::debug!(
                    timeout_secs = self.request_timeout.as_secs(),
                    "HTTP connection closed: the client read none of its response within the request timeout"
                ),
            },
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
    if let Some(answering) = operations::serve(&services, &req) {
        return answering.await;
    }
    if crate::portal::answers(&req) {
        return crate::portal::serve(services, req).await;
    }
    serve_api(services, req).await
}

/// Answers a request of the device, service, hub or blob APIs (the portal hands its requests
/// here, signed as its session's policy).
pub(crate) async fn serve_api(services: Arc<Services>, req: Request) -> Response {
    let now = services.clock.now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The C# SDK's provisioning over AMQP-WebSockets upgrades `wss://{host}:443/` (no path;
    // docs/amqp-wire-facts.md): an upgrade request at the root is the WebSocket endpoint too.
    let route = if path == "/" && websocket::is_upgrade(req.headers()) {
        Ok(Route::MqttWebSocket)
    } else {
        Route::parse(&method, &path)
    };
    let hub_api = route
        .as_ref()
        .is_ok_and(|r| matches!(r.api(), dps_proto::rest::Api::Hub | dps_proto::rest::Api::HubDevice));
    let result = match route {
        Ok(route) => match check_host(&services, &req) {
            Err(e) => Err(e),
            // The upgrade needs the request's hyper extensions, and no `api-version`.
            Ok(()) if route == Route::MqttWebSocket => websocket::upgrade(&services, req),
            Ok(()) => handle(&services, now, route, req).await,
        },
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
            let mut resp = error_response(&e, now, services.engine.tracking_id(), false);
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
            // Missing resources, conflicts and stale etags are ordinary answers, and throttling
            // is summarized by the engine's quotas; everything else (auth, bad input, unknown
            // paths, size limits) is a refusal worth seeing at info.
            let ordinary = matches!(e.status, 404 | 409 | 412 | 429) && e.code != codes::PATH_NOT_FOUND;
            if e.status >= 500 {
                tracing::warn!(%method, %path, status = e.status, code = e.code, "request failed: {}", e.message);
            } else if ordinary {
                tracing::debug!(%method, %path, status = e.status, code = e.code, "request answered with an error: {}", e.message);
            } else {
                tracing::info!(%method, %path, status = e.status, code = e.code, "request refused: {}", e.message);
            }
            error_response(&e, now, services.engine.tracking_id(), hub_api)
        }
    }
}

/// What every handler gets.
pub(crate) struct Ctx<'a> {
    pub services: &'a Services,
    pub now: DateTime<Utc>,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: QueryParams,
    pub peer_certs: Option<PeerCertificates>,
    /// The client's address, when the connection was accepted by a listener.
    pub peer_addr: Option<std::net::IpAddr>,
    /// When the request's first byte arrived (see [`RequestStart`]).
    started: tokio::time::Instant,
    body: Option<Body>,
    /// The policy that signed the request, once [`Ctx::authorize`] accepted it (the audit
    /// trail names it).
    caller: std::sync::OnceLock<String>,
    /// The top-level fields of the JSON body read (names only, for the audit trail).
    fields: Vec<String>,
}

impl Ctx<'_> {
    /// A header as text; `None` when absent, empty, or not visible ASCII.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// `If-Match`, raw.
    pub(crate) fn if_match(&self) -> Option<&str> {
        self.header("if-match")
    }

    /// Reads the whole body, refusing more than `max_message_bytes` (without buffering more), and
    /// answering `408` when it is not all in within `limits.request_timeout` of the request's
    /// first byte (the response then closes the connection: the rest of the body is unread).
    /// A second call returns an empty body.
    pub(crate) async fn body(&mut self) -> Result<Bytes, ApiError> {
        self.body_limited(self.services.config.max_message_bytes).await
    }

    /// [`Ctx::body`] with a limit of its own (`limit` bytes), for bodies that are not messages.
    pub(crate) async fn body_limited(&mut self, limit: usize) -> Result<Bytes, ApiError> {
        let mut reader = self.body_reader(limit)?;
        let mut data = bytes::BytesMut::new();
        while let Some(chunk) = reader.next().await? {
            data.extend_from_slice(&chunk);
        }
        Ok(data.freeze())
    }

    /// The body, to read chunk by chunk (large uploads go to disk, not memory): at most `limit`
    /// bytes, all within `limits.request_timeout` of the request's first byte. A declared
    /// `Content-Length` over the limit is refused before anything is read.
    pub(crate) fn body_reader(&mut self, limit: usize) -> Result<BodyReader, ApiError> {
        let declared = self
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(len) = declared {
            if len > limit as u64 {
                return Err(BodyReader::too_large(limit, Some(len)));
            }
        }
        let timeout = self.services.config.limits.request_timeout();
        Ok(BodyReader {
            body: self.body.take().map(|b| Limited::new(b, limit)),
            deadline: self.started + timeout,
            timeout,
            declared,
            limit,
            read: 0,
        })
    }

    /// Parses the body as JSON of type `T`; malformed JSON is a 400 with serde's message.
    pub(crate) async fn json<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<T, ApiError> {
        self.json_limited(what, self.services.config.max_message_bytes).await
    }

    /// [`Ctx::json`] with a body limit of its own (`limit` bytes).
    pub(crate) async fn json_limited<T: serde::de::DeserializeOwned>(
        &mut self,
        what: &str,
        limit: usize,
    ) -> Result<T, ApiError> {
        let body = self.body_limited(limit).await?;
        let value = parse_json(&body, what)?;
        // Names only: values may be keys.
        if let Ok(fields) = serde_json::from_slice::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(&body) {
            self.fields = fields.into_keys().collect();
        }
        Ok(value)
    }

    /// Parses the body as JSON of type `T` when it is not blank; `None` for an empty body.
    pub(crate) async fn optional_json<T: serde::de::DeserializeOwned>(
        &mut self,
        what: &str,
    ) -> Result<Option<T>, ApiError> {
        let body = self.body().await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_json(&body, what).map(Some)
    }

    /// Authorizes the request for `route` against `authorizer`, with any one of `rights`. The
    /// SAS audience must be one of `names` (the server's own host names for this API, never the
    /// client's `Host` header), with or without the HTTPS port, or a resource under one of them
    /// that covers the route's canonical resource path ([`Route::audience_path`]).
    /// The embedded hub this request is for: the one its SAS token names, else its `Host`
    /// header, else the first ([`crate::hubs`]).
    pub(crate) fn embedded_hub(&self) -> Arc<crate::hubs::EmbeddedHub> {
        self.services
            .hubs
            .for_request(self.header("authorization"), self.header("host"))
            .clone()
    }

    pub(crate) fn authorize<'n>(
        &self,
        authorizer: &dps_core::auth::PolicyAuthorizer,
        names: impl IntoIterator<Item = &'n str>,
        route: &Route,
        rights: &[&str],
    ) -> Result<std::sync::Arc<dps_core::auth::SharedAccessPolicy>, ApiError> {
        let hosts = host::audience_hosts(names, self.services.config.https_port);
        authorizer
            .authorize(
                Engine::unix_time(self.now),
                self.header("authorization"),
                &hosts,
                &route.audience_path(),
                rights,
            )
            .inspect(|policy| {
                let _ = self.caller.set(policy.key_name.clone());
            })
            .inspect_err(|e| {
                // Signed by the policy, which lacks the right: the trail names it.
                if let dps_core::Error::InsufficientRights { policy, .. } = e {
                    let _ = self.caller.set(policy.clone());
                }
            })
            .map_err(ApiError::from)
    }
}

/// A request body read chunk by chunk under a size limit and the request deadline
/// ([`Ctx::body_reader`]).
pub(crate) struct BodyReader {
    body: Option<Limited<Body>>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    declared: Option<u64>,
    limit: usize,
    read: usize,
}

impl BodyReader {
    fn too_large(limit: usize, n: Option<u64>) -> ApiError {
        let size = n.map(|n| format!(" of {n} bytes")).unwrap_or_default();
        ApiError::new(
            codes::PAYLOAD_TOO_LARGE,
            format!("request body{size} exceeds the limit of {limit} bytes"),
        )
    }

    /// The next chunk of the body; `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        let Some(body) = self.body.as_mut() else {
            return Ok(None);
        };
        loop {
            let frame = match tokio::time::timeout_at(self.deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => {
                    self.body = None;
                    return Ok(None);
                }
                Ok(Some(Err(e))) if e.downcast_ref::<LengthLimitError>().is_some() => {
                    return Err(Self::too_large(self.limit, None))
                }
                Ok(Some(Err(e))) => return Err(ApiError::bad_body(format!("cannot read the request body: {e}"))),
                Err(_) => {
                    let of = self
                        .declared
                        .map(|n| format!(" of the {n} declared"))
                        .unwrap_or_default();
                    return Err(ApiError::new(
                        codes::REQUEST_TIMEOUT,
                        format!(
                            "the request was not received in time: {} bytes of its body{of} arrived within the \
                             {} s a client has to send a whole request",
                            self.read,
                            self.timeout.as_secs()
                        ),
                    ));
                }
            };
            if let Ok(chunk) = frame.into_data() {
                self.read += chunk.len();
                return Ok(Some(chunk));
            }
        }
    }
}

/// Every name this server answers to on its HTTPS port: the configured host names and every
/// name of its embedded hubs.
pub(crate) fn own_names(services: &Services) -> impl Iterator<Item = &str> + Clone {
    services
        .config
        .hostnames
        .iter()
        .map(String::as_str)
        .chain(services.hubs.iter().flat_map(|h| h.hub.names()))
}

/// Refuses a request whose `Host` (or absolute-form authority) is not one of this server's names.
pub(crate) fn check_host(services: &Services, req: &Request) -> Result<(), ApiError> {
    let header = req.headers().get(HOST).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    host::check_host(
        header,
        req.uri().authority().map(Authority::as_str),
        own_names(services),
        services.config.https_port,
    )
}

/// Parses JSON, mapping errors to `400 BAD_REQUEST_BODY` with a message that names the field
/// (models are strict: a wrong type is an error, never a silent default).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_body(format!(
            "request body is empty; expected {what} JSON"
        )));
    }
    dps_proto::model::from_json(body)
        .map_err(|e| ApiError::bad_body(format!("request body is not a valid {what}: {e}")))
}

async fn handle(services: &Services, now: DateTime<Utc>, route: Route, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let query = QueryParams::parse(parts.uri.query());
    let api = route.api();
    // Storage requests name their version in `x-ms-version`, if at all.
    if api != Api::Blob && api != Api::Crl {
        check_api_version(&query, api)?;
    }
    let mut ctx = Ctx {
        services,
        now,
        method: parts.method,
        headers: parts.headers,
        query,
        peer_certs: parts.extensions.get::<PeerCertificates>().cloned(),
        peer_addr: parts.extensions.get::<HeldPermit>().map(|p| p.0.ip()),
        started: parts
            .extensions
            .get::<RequestStart>()
            .map_or_else(tokio::time::Instant::now, |s| s.0),
        body: Some(body),
        caller: Default::default(),
        fields: Vec::new(),
    };
    let change = crate::audit::is_change(&route).then(|| route.clone());
    let answer = match api {
        Api::Device => device::handle(&mut ctx, route).await,
        Api::Service => service::handle(&mut ctx, route).await,
        Api::Hub => hub::handle(&mut ctx, route).await,
        Api::HubDevice => hub_device::handle(&mut ctx, route).await,
        Api::Blob => Ok(blob::handle(&mut ctx, route).await),
        Api::Crl => crl::handle(&mut ctx, route).await,
    };
    if let Some(route) = change {
        // Committed before the answer when the change succeeded; queued when it was refused.
        let entry = change_entry(&ctx, api, &route, &answer);
        if entry.status.is_some_and(|s| s < 400) {
            services.audit.commit(entry).await;
        } else {
            services.audit.queue(entry);
        }
    }
    answer
}

/// The audit entry of a change: who, what, the answer, the etags; no body values.
fn change_entry(
    ctx: &Ctx<'_>,
    api: Api,
    route: &Route,
    answer: &Result<Response, ApiError>,
) -> dps_core::audit::AuditEntry {
    use dps_core::audit::{AuditEntry, AuditKind};
    let status = match answer {
        Ok(resp) => resp.status().as_u16(),
        Err(e) => e.status,
    };
    let succeeded = status < 400;
    let mut entry = AuditEntry::new(
        ctx.now,
        AuditKind::Change,
        if succeeded { "succeeded" } else { "failed" },
    );
    entry.policy = ctx.caller.get().cloned();
    entry.api = Some(match api {
        Api::Service => "service".to_string(),
        _ => ctx.embedded_hub().host_name().to_string(),
    });
    entry.operation = Some(format!("{} {}", route.method(), route.path()));
    entry.status = Some(status);
    entry.registration_id = crate::audit::registration_of(route).map(str::to_string);
    entry.device_id = crate::audit::device_of(route).map(str::to_string);
    entry.fields = ctx.fields.clone();
    entry.if_match = ctx.if_match().map(str::to_string);
    entry.source = ctx.peer_addr.map(|ip| ip.to_string());
    match answer {
        Ok(resp) => {
            entry.etag = resp
                .headers()
                .get(axum::http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        Err(e) => {
            entry.error_code = Some(e.code);
            entry.error_message = Some(e.message.clone());
        }
    }
    entry
}

/// Every API requires a supported `api-version`, as Azure does (the hub registry API too: the
/// Python and Node registry clients always send one). A 400 names the supported versions.
fn check_api_version(query: &QueryParams, api: Api) -> Result<(), ApiError> {
    let supported = api.supported();
    let mut given = query.all(API_VERSION);
    let first = given.next();
    if let Some(other) = given.find(|v| Some(*v) != first) {
        return Err(ApiError::invalid(format!(
            "api-version is given twice with different values ('{}' and '{}'); send it once",
            first.unwrap_or_default().chars().take(64).collect::<String>(),
            other.chars().take(64).collect::<String>()
        )));
    }
    dps_proto::api_version::check(first, supported).map_err(|e| ApiError::invalid(e.to_string()))
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

/// The error response: status, `ApiError::details` body, `x-ms-error-code`, and `retry-after`
/// when the error says when to retry (429). On the hub's APIs (`hub`), also IoT Hub's form of
/// the error ([`ApiError::hub_details`]) and its `iothub-errorcode` header.
pub(crate) fn error_response(e: &ApiError, now: DateTime<Utc>, tracking_id: String, hub: bool) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if hub {
        e.hub_details(now, tracking_id)
    } else {
        e.details(now, tracking_id)
    };
    let mut resp = json_response(status, &body);
    if let Some(name) = codes::hub_error_name(e.code).filter(|_| hub) {
        set_header(&mut resp, "iothub-errorcode", name);
    }
    set_header(&mut resp, "x-ms-error-code", &e.code.to_string());
    if let Some(secs) = e.retry_after {
        set_header(&mut resp, "retry-after", &secs.to_string());
    }
    if e.status == 408 {
        // The rest of the request never came; the connection cannot carry another.
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
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
