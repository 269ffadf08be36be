//! The signed HTTPS client of the service REST APIs (DPS service API and hub registry API): one
//! shared-access policy, one server, requests named by [`Route`] so paths, ids and `api-version`
//! come from the grammar the server parses ([`dps_proto::rest`]).
//!
//! Errors are [`ClientError`]s, as for the device clients: a non-2xx answer is
//! [`ClientError::Service`] with the body's `errorCode` and message, a network failure
//! [`ClientError::Connection`] naming the request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_proto::connection_string::ConnectionString;
use dps_proto::model::service::QuerySpecification;
use dps_proto::rest::{QueryParams, Route};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::error::error_chain;
use crate::provisioning::url_host;
use crate::ClientError;

/// How long one request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Lifetime of the SAS token signed for each request.
const TOKEN_TTL_SECS: u64 = 3600;
/// Largest page a paged query asks for.
const MAX_PAGE: usize = 1000;

/// A successful response.
#[derive(Debug)]
pub struct Reply {
    /// Headers.
    pub headers: HeaderMap,
    /// Body parsed as JSON (`Null` when empty).
    pub body: Value,
}

/// A REST API endpoint with shared-access-policy authentication.
#[derive(Debug, Clone)]
pub struct RestClient {
    host: String,
    /// Where requests go: the gateway, else the host.
    address: String,
    base: String,
    key_name: String,
    key: String,
    http: reqwest::Client,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RestClient {
    /// A client of the server named by `connection_string` (which must carry a policy name and
    /// key; its `GatewayHostName`, if any, is where requests go), on HTTPS `port`, trusting only
    /// `ca_pem`.
    pub fn new(connection_string: &ConnectionString, port: u16, ca_pem: &str) -> Result<Self, ClientError> {
        let (Some(key_name), Some(key)) = (&connection_string.key_name, &connection_string.key) else {
            return Err(ClientError::Credential(
                "the connection string needs SharedAccessKeyName and SharedAccessKey (a service policy, not a device)"
                    .into(),
            ));
        };
        let host = connection_string.host_name.clone();
        // Validate the key now, so a typo is reported as such rather than as a 401.
        dps_proto::sas::build_token(&host, key, 1, Some(key_name))
            .map_err(|_| ClientError::Credential("the connection string's SharedAccessKey is not base64".into()))?;
        let tls = dps_pki::tls::client_config(ca_pem)
            .map_err(|e| ClientError::Tls(format!("cannot use the CA certificate: {e}")))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(15))
            .user_agent(crate::CLIENT_VERSION)
            .build()
            .map_err(|e| ClientError::Tls(format!("cannot build the HTTPS client: {}", error_chain(&e))))?;
        tracing::debug!(%host, port, policy = %key_name, "REST client");
        Ok(Self {
            // Tokens name the host; requests go to the gateway when there is one.
            base: format!("https://{}:{port}", url_host(connection_string.connect_host())),
            address: connection_string.connect_host().to_string(),
            host,
            key_name: key_name.clone(),
            key: key.clone(),
            http,
        })
    }

    /// The host name from the connection string.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Where requests go: the connection string's `GatewayHostName`, else its host name (a
    /// client beside one node of several talks to that node).
    pub fn address(&self) -> &str {
        &self.address
    }

    fn token(&self) -> Result<String, ClientError> {
        dps_proto::sas::build_token(&self.host, &self.key, unix_now() + TOKEN_TTL_SECS, Some(&self.key_name))
            .map_err(|e| ClientError::Credential(format!("cannot sign the request: {e}")))
    }

    /// Starts a request for `route`: URL with the API's `api-version` and `query`,
    /// `Authorization`, JSON `Accept`. [`RestClient::call`] and [`RestClient::open_stream`] send
    /// it; this is for requests they do not cover.
    pub fn request(&self, route: &Route, query: &[(&str, &str)]) -> Result<reqwest::RequestBuilder, ClientError> {
        let target = route.path_and_query(&QueryParams::from_pairs(query.iter().copied()));
        Ok(self
            .http
            .request(route.method(), format!("{}{target}", self.base))
            .header(reqwest::header::AUTHORIZATION, self.token()?)
            .header(reqwest::header::ACCEPT, "application/json"))
    }

    /// Sends `route` (no body) and returns the answer as it arrives, for the streams
    /// ([`Route::MonitorEvents`]): no overall timeout, a non-2xx answer is the service's error.
    pub async fn open_stream(&self, route: &Route, query: &[(&str, &str)]) -> Result<reqwest::Response, ClientError> {
        let resp =
            self.request(route, query)?.send().await.map_err(|e| {
                ClientError::connection(format!("{} {}{}", route.method(), self.base, route.path()), &e)
            })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            return Err(ClientError::from_error_body(status, &body));
        }
        Ok(resp)
    }

    /// Sends `route` with an optional JSON body and extra headers (`If-Match`, paging).
    pub async fn call(
        &self,
        route: &Route,
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let (method, path) = (route.method(), route.path());
        let mut req = self.request(route, query)?.timeout(REQUEST_TIMEOUT);
        for (k, v) in headers {
            let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) else {
                return Err(ClientError::Unsupported(format!(
                    "header {k}: '{v}' is not a valid HTTP header"
                )));
            };
            req = req.header(name, value);
        }
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))?;
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::connection(format!("{method} {}{path}", self.base), &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::connection(format!("reading the answer to {method} {path}"), &e))?;
        if !status.is_success() {
            return Err(ClientError::from_error_body(status.as_u16(), &bytes));
        }
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Protocol(format!("the answer to {method} {path} is not JSON: {e}")))?
        };
        Ok(Reply { headers, body })
    }

    /// Runs a paged query (`POST` with `{"query":"*"}`, following `x-ms-continuation`),
    /// returning at most `top` items (all when `None`).
    pub async fn query(&self, route: &Route, top: Option<usize>) -> Result<Vec<Value>, ClientError> {
        self.query_text(route, "*", top).await
    }

    /// [`RestClient::query`] with a query text (`SELECT * FROM devices WHERE …`).
    pub async fn query_text(&self, route: &Route, text: &str, top: Option<usize>) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        let spec = serde_json::to_value(QuerySpecification { query: text.into() })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        loop {
            let page_size = top.map(|t| (t - items.len()).clamp(1, MAX_PAGE).to_string());
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(s) = &page_size {
                headers.push(("x-ms-max-item-count", s));
            }
            if let Some(c) = &continuation {
                headers.push(("x-ms-continuation", c));
            }
            let reply = self.call(route, &[], Some(&spec), &headers).await?;
            match reply.body {
                Value::Array(page) => items.extend(page),
                Value::Null => {}
                other => {
                    return Err(ClientError::Protocol(format!(
                        "the query answer is not a JSON array: {other}"
                    )))
                }
            }
            if let Some(t) = top.filter(|t| items.len() >= *t) {
                items.truncate(t);
                break;
            }
            continuation = reply
                .headers
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .filter(|c| !c.is_empty());
            if continuation.is_none() {
                break;
            }
        }
        Ok(items)
    }
}
