//! The web portal (issue 16, decision 0037): a page and its script, embedded in the binary and
//! served on the HTTPS port at `/portal/`, over the same service and hub REST APIs every SDK
//! uses.
//!
//! The portal holds no rule of its own. A signed-in browser calls `/portal/api/service/{path}`
//! or `/portal/api/hub/{host}/{path}`; the server checks the session and its CSRF token, signs
//! the request as the session's policy (a SAS token of a few minutes, made here with the key
//! the server holds), and hands it to the API dispatcher as if it had come over the network.
//! So a read-only policy is refused a write by the API itself, with the API's own message, and
//! every change lands in the audit trail under the policy's name.
//!
//! Sessions live in sealed cookies ([`session`]): `Secure`, `HttpOnly`, `SameSite=Strict`,
//! eight hours, bound to the key that signed in. Writes also need the session's CSRF token in
//! `X-CSRF-Token` and, when the browser sends one, an `Origin` naming this server. Failed
//! sign-ins are limited per node.

pub(crate) mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use dps_core::auth::manage::PolicyScope;
use dps_core::auth::{PolicyAuthorizer, SharedAccessPolicy};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use session::{Grant, Link, Session};

use crate::Services;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the page may load and where it may send: this server only, no inline script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Largest sign-in body read.
const SIGN_IN_BODY: usize = 4096;

/// Failed sign-ins a node takes per [`FAILURE_WINDOW`] before it answers 429.
const MOST_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// How long the SAS token of a forwarded request lasts.
const FORWARD_TOKEN_SECS: u64 = 300;

/// The portal's state on a node: its key and the failed sign-ins (the sign-in links used are in
/// the store).
pub struct Portal {
    key: Vec<u8>,
    failures: parking_lot::Mutex<(Instant, u32)>,
}

impl Portal {
    /// The portal over the identity's portal key (base64).
    pub fn new(portal_key: &str) -> Self {
        Self {
            key: base64::engine::general_purpose::STANDARD
                .decode(portal_key)
                .unwrap_or_else(|_| portal_key.as_bytes().to_vec()),
            failures: parking_lot::Mutex::new((Instant::now(), 0)),
        }
    }

    /// Counts a failed sign-in; false when the node has taken too many lately.
    fn failure_allowed(&self) -> bool {
        let mut f = self.failures.lock();
        if f.0.elapsed() > FAILURE_WINDOW {
            *f = (Instant::now(), 0);
        }
        f.1 += 1;
        f.1 <= MOST_FAILURES
    }
}

/// A one-time sign-in link to the portal at `base` (`https://host[:port]`), signed with the
/// identity's portal key: it signs its opener in as the owner of the service and of every hub,
/// once, within 15 minutes. What `dps serve` prints and `dps portal-link` makes.
pub fn sign_in_link(portal_key: &str, base: &str, now_unix: u64) -> String {
    let portal = Portal::new(portal_key);
    let link = Link {
        expires: now_unix + session::LINK_SECS,
        nonce: dps_core::auth::manage::new_key(),
    };
    format!("{base}/portal/sign-in?link={}", link.seal(&portal.key))
}

/// `https://{host}` with the port when it is not 443.
pub fn base_url(host: &str, https_port: u16) -> String {
    if https_port == 443 {
        format!("https://{host}")
    } else {
        format!("https://{host}:{https_port}")
    }
}

/// Whether the portal answers `req`: its paths, and a browser asking for `/`.
pub(crate) fn answers(req: &Request) -> bool {
    let path = req.uri().path();
    if path == "/portal" || path.starts_with("/portal/") {
        return true;
    }
    path == "/"
        && req.method() == Method::GET
        && !req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// Answers a portal request.
pub(crate) async fn serve(services: Arc<Services>, req: Request) -> Response {
    let mut resp = route(&services, req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn route(services: &Arc<Services>, req: Request) -> Response {
    if let Err(e) = crate::http::check_host(services, &req) {
        return problem(StatusCode::BAD_REQUEST, &e.message);
    }
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/" | "/portal") => redirect("/portal/"),
        (Method::GET, "/portal/" | "/portal/index.html") => asset(INDEX, "text/html; charset=utf-8"),
        (Method::GET, "/portal/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
        (Method::GET, "/portal/app.css") => asset(APP_CSS, "text/css; charset=utf-8"),
        (Method::GET, "/portal/sign-in") => link_sign_in(services, req.uri()).await,
        (Method::POST, "/portal/api/sign-in") => sign_in(services, req).await,
        (method, p) if p.starts_with("/portal/api/") => {
            let Some((session, cookie)) = current(services, req.headers()) else {
                return signed_out("sign in first");
            };
            let live = live_grants(services, &session);
            if live.is_empty() {
                return signed_out("the policies of this session are gone or have new keys: sign in again");
            }
            if method != Method::GET {
                if let Err(why) = check_write(services, req.headers(), &cookie) {
                    return problem(StatusCode::FORBIDDEN, &why);
                }
            }
            match p {
                "/portal/api/session" if method == Method::GET => session_info(services, &live, &cookie),
                "/portal/api/sign-out" if method == Method::POST => {
                    let mut resp = json_response(StatusCode::OK, &json!({ "signedIn": false }));
                    set_cookie(&mut resp, "", 0);
                    resp
                }
                _ => forward(services, req, &live).await,
            }
        }
        _ => problem(StatusCode::NOT_FOUND, &format!("no such portal page: {path}")),
    }
}

/// A grant whose policy still has the key that signed in: the policy and that key.
struct Live {
    grant: Grant,
    policy: Arc<SharedAccessPolicy>,
    key: String,
}

fn authorizer<'a>(services: &'a Services, hub: Option<&str>) -> Option<&'a PolicyAuthorizer> {
    match hub {
        None => Some(&services.dps_auth),
        Some(host) => services.hubs.named(host).map(|h| &h.auth),
    }
}

fn live_grants(services: &Services, session: &Session) -> Vec<Live> {
    session
        .grants
        .iter()
        .filter_map(|g| {
            let policies = authorizer(services, g.hub.as_deref())?.policies();
            let policy = policies
                .iter()
                .find(|p| p.key_name.eq_ignore_ascii_case(&g.policy))?
                .clone();
            let key = [&policy.primary_key, &policy.secondary_key]
                .into_iter()
                .find(|k| session::key_tag(k) == g.key)?
                .clone();
            Some(Live {
                grant: g.clone(),
                policy,
                key,
            })
        })
        .collect()
}

/// The session the request's cookie holds, and the cookie.
fn current(services: &Services, headers: &HeaderMap) -> Option<(Session, String)> {
    let header = headers.get(header::COOKIE)?.to_str().ok()?;
    let cookie = session::cookie(header, session::COOKIE)?;
    let now = dps_core::Engine::unix_time(services.clock.now());
    Session::open(&services.portal.key, cookie, now).map(|s| (s, cookie.to_string()))
}

/// A write needs the session's CSRF token, and an `Origin` (when sent) naming this server.
fn check_write(services: &Services, headers: &HeaderMap, cookie: &str) -> Result<(), String> {
    let token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !session::csrf_matches(&services.portal.key, cookie, token) {
        return Err("this change lacks the session's CSRF token (X-CSRF-Token): reload the portal".into());
    }
    check_origin(services, headers)
}

fn check_origin(services: &Services, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = origin.strip_prefix("https://").unwrap_or("\u{fffd}");
    crate::http::host::check_host(
        Some(host),
        None,
        crate::http::own_names(services),
        services.config.https_port,
    )
    .map_err(|_| format!("the request comes from another site ({origin})"))
}

fn session_info(services: &Services, live: &[Live], cookie: &str) -> Response {
    let c = &services.config;
    let host = c.hostnames.first().cloned().unwrap_or_default();
    let grants: Vec<_> = live
        .iter()
        .map(|l| {
            json!({
                "scope": if l.grant.hub.is_some() { "hub" } else { "service" },
                "hub": l.grant.hub,
                "policy": l.policy.key_name,
                "rights": l.policy.rights,
            })
        })
        .collect();
    let hubs: Vec<_> = services
        .hubs
        .iter()
        .map(|h| json!({ "hostName": h.host_name() }))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "signedIn": true,
            "grants": grants,
            "csrf": session::csrf_token(&services.portal.key, cookie),
            "idScope": services.identity.id_scope,
            "provisioningHost": host,
            "serviceHost": host,
            "hubs": hubs,
            "ports": { "mqtt": c.mqtt_port, "https": c.https_port, "amqp": c.amqp_port },
        }),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignIn {
    policy_name: String,
    key: String,
}

/// Signs in with a policy's name and one of its keys: a grant for every scope (the service,
/// each hub) that has a policy of that name with that key.
async fn sign_in(services: &Arc<Services>, req: Request) -> Response {
    if let Err(why) = check_origin(services, req.headers()) {
        return problem(StatusCode::FORBIDDEN, &why);
    }
    let read = tokio::time::timeout(
        services.config.limits.request_timeout(),
        axum::body::to_bytes(req.into_body(), SIGN_IN_BODY),
    )
    .await;
    let Ok(Ok(body)) = read else {
        return problem(StatusCode::BAD_REQUEST, "the sign-in request was too large or too slow");
    };
    let Ok(form) = serde_json::from_slice::<SignIn>(&body) else {
        return problem(StatusCode::BAD_REQUEST, "send {\"policyName\": …, \"key\": …}");
    };
    let scopes = std::iter::once((None, &services.dps_auth))
        .chain(services.hubs.iter().map(|h| (Some(h.host_name().to_string()), &h.auth)));
    let mut grants = Vec::new();
    for (hub, auth) in scopes {
        for policy in auth.policies().iter() {
            if !policy.key_name.eq_ignore_ascii_case(form.policy_name.trim()) {
                continue;
            }
            let given = form.key.trim().as_bytes();
            let matching = [&policy.primary_key, &policy.secondary_key]
                .into_iter()
                .find(|k| bool::from(k.as_bytes().ct_eq(given)));
            if let Some(key) = matching {
                grants.push(Grant {
                    hub: hub.clone(),
                    policy: policy.key_name.clone(),
                    key: session::key_tag(key),
                });
            }
        }
    }
    if grants.is_empty() {
        if !services.portal.failure_allowed() {
            return problem(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed sign-ins: wait a few seconds",
            );
        }
        tracing::info!(policy = %form.policy_name, "portal sign-in refused");
        return problem(
            StatusCode::UNAUTHORIZED,
            "no policy of that name has that key (names and keys are in dps.json, or `dps policy show`)",
        );
    }
    start_session(services, grants, None)
}

/// Spends a sign-in link in the store: once, whatever restarts in between, and on a shared
/// store once for the whole cluster rather than once per node. `Err` is the answer when the
/// store could not say.
async fn spend_link(services: &Services, link: &Link) -> Result<bool, Response> {
    let expires = i64::try_from(link.expires).unwrap_or(i64::MAX);
    let expires = chrono::DateTime::from_timestamp(expires, 0).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    let spent = services
        .engine
        .store()
        .spend_nonce(services.clock.now(), &link.nonce, expires)
        .await;
    spent.map_err(|e| {
        tracing::warn!(error = %e, "portal sign-in link not spent: the store failed");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sign-in link could not be checked against the store: try it again",
        )
    })
}

/// Opens a one-time sign-in link: the owners of the service and of every hub.
async fn link_sign_in(services: &Services, uri: &Uri) -> Response {
    let token = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("link=")))
        .unwrap_or_default();
    let now = dps_core::Engine::unix_time(services.clock.now());
    let Some(link) = Link::open(&services.portal.key, token, now) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "this sign-in link is not valid or has expired: make another with `dps portal-link`",
        );
    };
    let spent = match spend_link(services, &link).await {
        Ok(spent) => spent,
        Err(unavailable) => return unavailable,
    };
    if !spent {
        return problem(
            StatusCode::BAD_REQUEST,
            "this sign-in link was used already: make another with `dps portal-link`",
        );
    }
    let owner = |auth: &PolicyAuthorizer, scope: PolicyScope| {
        auth.policies()
            .iter()
            .find(|p| scope.is_owner(p))
            .map(|p| (p.key_name.clone(), session::key_tag(&p.primary_key)))
    };
    let mut grants = Vec::new();
    if let Some((policy, key)) = owner(&services.dps_auth, PolicyScope::Dps) {
        grants.push(Grant { hub: None, policy, key });
    }
    for h in services.hubs.iter() {
        if let Some((policy, key)) = owner(&h.auth, PolicyScope::Hub) {
            grants.push(Grant {
                hub: Some(h.host_name().to_string()),
                policy,
                key,
            });
        }
    }
    tracing::info!("portal signed in with a one-time link");
    start_session(services, grants, Some("/portal/"))
}

/// Sets the session cookie; answers the session (sign-in) or sends the browser on (a link).
fn start_session(services: &Services, grants: Vec<Grant>, then: Option<&'static str>) -> Response {
    let now = dps_core::Engine::unix_time(services.clock.now());
    let session = Session {
        grants,
        expires: now + session::SESSION_SECS,
        nonce: dps_core::auth::manage::new_key(),
    };
    let cookie = session.seal(&services.portal.key);
    let mut resp = match then {
        Some(to) => redirect(to),
        None => session_info(services, &live_grants(services, &session), &cookie),
    };
    set_cookie(&mut resp, &cookie, session::SESSION_SECS);
    resp
}

/// Hands a request on to the service or a hub's API, signed as the session's policy there.
async fn forward(services: &Arc<Services>, req: Request, live: &[Live]) -> Response {
    let path = req.uri().path().to_string();
    let (hub, rest) = if let Some(rest) = path.strip_prefix("/portal/api/service") {
        (None, rest.to_string())
    } else if let Some(after) = path.strip_prefix("/portal/api/hub/") {
        let (host, rest) = after.split_once('/').unwrap_or((after, ""));
        let host = dps_proto::rest::decode_segment(host).unwrap_or_default();
        (Some(host), format!("/{rest}"))
    } else {
        return problem(StatusCode::NOT_FOUND, &format!("no such portal API: {path}"));
    };
    if rest.len() < 2 {
        return problem(StatusCode::NOT_FOUND, "name a resource of the API");
    }
    let Some(l) = live.iter().find(|l| match (&l.grant.hub, &hub) {
        (None, None) => true,
        (Some(a), Some(b)) => services.hubs.named(b).is_some_and(|h| h.hub.answers_to(a)),
        _ => false,
    }) else {
        let whose = hub
            .as_deref()
            .map_or("the provisioning service".to_string(), |h| format!("hub {h}"));
        return problem(
            StatusCode::FORBIDDEN,
            &format!("this session holds no policy of {whose}: sign in with one"),
        );
    };
    let host = match &hub {
        Some(h) => h.clone(),
        None => services.config.hostnames.first().cloned().unwrap_or_default(),
    };
    let version = match hub {
        None => dps_proto::api_version::SERVICE_CLIENT,
        Some(_) => dps_proto::api_version::HUB_CLIENT,
    };
    let query = req.uri().query().unwrap_or_default();
    let uri = if query.split('&').any(|kv| kv.starts_with("api-version=")) {
        format!("{rest}?{query}")
    } else if query.is_empty() {
        format!("{rest}?api-version={version}")
    } else {
        format!("{rest}?{query}&api-version={version}")
    };
    let now = dps_core::Engine::unix_time(services.clock.now());
    let Ok(token) = dps_proto::sas::build_token(&host, &l.key, now + FORWARD_TOKEN_SECS, Some(&l.policy.key_name))
    else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "the policy's key is not base64");
    };
    let (parts, body) = req.into_parts();
    let mut inner = Request::new(body);
    *inner.method_mut() = parts.method;
    let Ok(uri) = uri.parse::<Uri>() else {
        return problem(StatusCode::BAD_REQUEST, "not a valid path");
    };
    *inner.uri_mut() = uri;
    *inner.extensions_mut() = parts.extensions;
    let headers = inner.headers_mut();
    for name in [
        header::CONTENT_TYPE,
        header::ACCEPT,
        header::IF_MATCH,
        header::CONTENT_LENGTH,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    for name in ["x-ms-continuation", "x-ms-max-item-count"] {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(name, v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(&token) {
        headers.insert(header::AUTHORIZATION, v);
    }
    crate::http::serve_api(services.clone(), inner).await
}

fn set_cookie(resp: &mut Response, value: &str, max_age: u64) {
    let cookie = format!(
        "{}={value}; Path=/portal; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict",
        session::COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn redirect(to: &'static str) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    resp
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn problem(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "message": message }))
}

fn signed_out(message: &str) -> Response {
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "signedIn": false, "message": message }),
    );
    set_cookie(&mut resp, "", 0);
    resp
}
