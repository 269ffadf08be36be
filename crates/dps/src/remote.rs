//! How management commands reach a running server: which connection string, which CA, which
//! port — and the HTTPS client that signs every request with a SAS token.
//!
//! Resolution order (the same for every command, so scripts can rely on it):
//! 1. connection string: `--connection-string` / `DPS_CONNECTION_STRING` (hub commands:
//!    `--hub-connection-string` / `DPS_HUB_CONNECTION_STRING`), else the owner policy in the
//!    identity file of `--data-dir` (default `./dps-data`, env `DPS_DATA_DIR`);
//! 2. trusted CA: `--ca FILE`, else the data directory's `ca.pem`, else the system bundle;
//! 3. port: `--port`, else the HTTPS port the server recorded at its last start (`server.json`),
//!    else 443.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use dps_client::ClientError;
use dps_datadir::DataDir;
use dps_proto::connection_string::ConnectionString;
use dps_proto::rest::{QueryParams, Route};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// Debian/Ubuntu/Alpine system CA bundle, the fallback trust for servers with public certificates.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the server is and how to trust it; shared by every remote command.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Data directory of a local server: supplies the connection string, CA and port when they
    /// are not given explicitly.
    #[arg(long, env = "DPS_DATA_DIR", default_value = "./dps-data")]
    pub data_dir: PathBuf,
    /// PEM file with the CA certificate(s) to trust [default: the data directory's ca.pem].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// HTTPS port of the server [default: the port recorded in the data directory, else 443].
    #[arg(long)]
    pub port: Option<u16>,
    /// Print JSON (for scripts) instead of a human summary.
    #[arg(long)]
    pub json: bool,
}

/// Target of `enrollment`, `enrollment-group` and `registration` commands.
#[derive(Args, Debug, Clone)]
pub struct DpsTarget {
    /// Service connection string (`HostName=..;SharedAccessKeyName=..;SharedAccessKey=..`)
    /// [default: the data directory's owner policy].
    #[arg(long, env = "DPS_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl DpsTarget {
    /// A client of the DPS service API this target names.
    pub fn rest(&self) -> Result<Rest> {
        Rest::connect(self.connection_string.as_deref(), &self.server, Api::Dps)
    }
}

/// Target of `hub` commands.
#[derive(Args, Debug, Clone)]
pub struct HubTarget {
    /// IoT hub connection string (`HostName=..;SharedAccessKeyName=iothubowner;SharedAccessKey=..`)
    /// [default: the data directory's hub owner policy].
    #[arg(long, env = "DPS_HUB_CONNECTION_STRING", hide_env_values = true)]
    pub hub_connection_string: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl HubTarget {
    /// A client of the hub registry API this target names.
    pub fn rest(&self) -> Result<Rest> {
        Rest::connect(self.hub_connection_string.as_deref(), &self.server, Api::Hub)
    }
}

/// Which API a connection string is for; decides the data-directory fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// DPS service API.
    Dps,
    /// Hub registry API.
    Hub,
}

/// Reads the CA to trust: `--ca`, else the data directory's, else the system bundle.
pub fn read_ca(ca: Option<&Path>, dir: &DataDir) -> Result<String> {
    if let Some(path) = ca {
        return std::fs::read_to_string(path).with_context(|| format!("cannot read --ca {}", path.display()));
    }
    let local = dir.ca_cert_path();
    if local.exists() {
        return std::fs::read_to_string(&local).with_context(|| format!("cannot read {}", local.display()));
    }
    if Path::new(SYSTEM_CA_BUNDLE).exists() {
        return std::fs::read_to_string(SYSTEM_CA_BUNDLE).with_context(|| format!("cannot read {SYSTEM_CA_BUNDLE}"));
    }
    bail!("no CA certificate to trust: pass --ca FILE, or --data-dir of a server (its ca.pem is used)")
}

/// A connection string from the flag/env, else the data directory's owner policy.
pub fn connection_string(explicit: Option<&str>, dir: &DataDir, api: Api) -> Result<ConnectionString> {
    if let Some(s) = explicit.map(str::trim).filter(|s| !s.is_empty()) {
        let cs = ConnectionString::parse(s).context("invalid connection string")?;
        if cs.key_name.is_none() || cs.key.is_none() {
            bail!(
                "the connection string needs SharedAccessKeyName and SharedAccessKey (a service policy, not a device)"
            );
        }
        return Ok(cs);
    }
    let (flag, env) = match api {
        Api::Dps => ("--connection-string", "DPS_CONNECTION_STRING"),
        Api::Hub => ("--hub-connection-string", "DPS_HUB_CONNECTION_STRING"),
    };
    let id = dir.load_identity().with_context(|| {
        format!("no connection string: pass {flag}, set {env}, or point --data-dir at a server's data directory")
    })?;
    let (host, policy) = match api {
        Api::Dps => (
            dir.last_provisioning_host().unwrap_or_else(|| "localhost".into()),
            id.policies.first(),
        ),
        Api::Hub => (id.hub.host_name.clone(), id.hub.policies.first()),
    };
    let policy = policy.ok_or_else(|| anyhow!("{} has no shared-access policy", dir.identity_path().display()))?;
    Ok(ConnectionString::service(&host, &policy.key_name, &policy.primary_key))
}

/// Builds an HTTPS client trusting `ca_pem` (only).
pub fn https_client(ca_pem: &str) -> Result<reqwest::Client> {
    let tls = dps_pki::tls::client_config(ca_pem).context("cannot use the CA certificate")?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("dps-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTPS client")
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A host for a URL (IPv6 literals in brackets).
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// A REST API endpoint (DPS service API or hub registry API) with shared-access-policy auth.
pub struct Rest {
    host: String,
    base: String,
    key_name: String,
    key: String,
    http: reqwest::Client,
}

/// A successful response.
pub struct Reply {
    /// Headers.
    pub headers: HeaderMap,
    /// Body parsed as JSON (`Null` when empty).
    pub body: Value,
}

impl Rest {
    /// Resolves the target for `api` from flags, environment and the data directory.
    pub fn connect(explicit: Option<&str>, server: &ServerArgs, api: Api) -> Result<Self> {
        let dir = DataDir::new(&server.data_dir);
        let cs = connection_string(explicit, &dir, api)?;
        let ca = read_ca(server.ca.as_deref(), &dir)?;
        let port = server
            .port
            .or_else(|| dir.runtime().map(|r| r.https_port))
            .unwrap_or(443);
        let (host, key_name, key) = (
            cs.host_name.clone(),
            cs.key_name.unwrap_or_default(),
            cs.key.unwrap_or_default(),
        );
        // Validate the key now, so a typo is reported as such rather than as a 401.
        dps_proto::sas::build_token(&host, &key, 1, Some(&key_name))
            .map_err(|_| anyhow!("the connection string's SharedAccessKey is not base64"))?;
        tracing::debug!(%host, port, policy = %key_name, "remote target");
        Ok(Self {
            base: format!("https://{}:{port}", url_host(&host)),
            host,
            key_name,
            key,
            http: https_client(&ca)?,
        })
    }

    /// The host name from the connection string.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn token(&self) -> Result<String> {
        dps_proto::sas::build_token(&self.host, &self.key, unix_now() + 3600, Some(&self.key_name))
            .map_err(|e| anyhow!("cannot sign the request: {e}"))
    }

    /// Starts a request for `route`: URL with the API's `api-version` and `query`,
    /// `Authorization`, JSON headers.
    pub fn request(&self, route: &Route, query: &[(&str, &str)]) -> Result<reqwest::RequestBuilder> {
        let target = route.path_and_query(&QueryParams::from_pairs(query.iter().copied()));
        Ok(self
            .http
            .request(route.method(), format!("{}{target}", self.base))
            .header(reqwest::header::AUTHORIZATION, self.token()?)
            .header(reqwest::header::ACCEPT, "application/json"))
    }

    /// Sends a request with an optional JSON body and extra headers; non-2xx answers become
    /// [`ClientError::Service`] with the server's `errorCode` and message.
    pub async fn call(
        &self,
        route: &Route,
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let (method, path) = (route.method(), route.path());
        let mut req = self.request(route, query)?.timeout(Duration::from_secs(60));
        for (k, v) in headers {
            req = req.header(HeaderName::from_bytes(k.as_bytes())?, HeaderValue::from_str(v)?);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(serde_json::to_vec(b)?);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("{method} {}{path}: {}", self.base, chain(&e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("reading the answer to {method} {path}: {}", chain(&e)))?;
        if !status.is_success() {
            return Err(ClientError::from_error_body(status.as_u16(), &bytes).into());
        }
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| format!("the answer to {method} {path} is not JSON"))?
        };
        Ok(Reply { headers, body })
    }

    /// Runs a paged query (`POST` with `{"query":"*"}`, following `x-ms-continuation`),
    /// returning at most `top` items (all when `None`).
    pub async fn query(&self, route: &Route, top: Option<usize>) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        let spec = serde_json::json!({ "query": "*" });
        loop {
            let page_size = top.map(|t| (t - items.len()).clamp(1, 1000).to_string());
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
                other => bail!("the query answer is not a JSON array: {other}"),
            }
            if top.is_some_and(|t| items.len() >= t) {
                items.truncate(top.unwrap_or(usize::MAX));
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

/// An error and its sources on one line (reqwest hides the cause — refused connection,
/// untrusted certificate — in the source chain).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        let t = x.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        s = x.source();
    }
    out
}
