//! How management commands reach a running server: which connection string, which CA, which
//! port — and the HTTPS client that signs every request with a SAS token.
//!
//! Resolution order (the same for every command, so scripts can rely on it):
//! 1. connection string: `--connection-string` / `DPS_CONNECTION_STRING` (hub commands:
//!    `--hub-connection-string` / `DPS_HUB_CONNECTION_STRING`), else the owner policy in the
//!    identity file of `--data-dir` (default `./dps-data`, env `DPS_DATA_DIR`), sent to the
//!    address that server listens on when it is one of its host names (one node of several);
//! 2. trusted CA: `--ca FILE`, else the data directory's `ca.pem`, else the system bundle;
//! 3. port: `--port`, else the HTTPS port the server recorded at its last start (`server.json`),
//!    else 443.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use dps_client::{RegistryClient, RestClient, ServiceClient};
use dps_datadir::DataDir;
use dps_proto::connection_string::ConnectionString;

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
    pub fn client(&self) -> Result<ServiceClient> {
        connect(self.connection_string.as_deref(), &self.server, Api::Dps).map(ServiceClient::new)
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
    pub fn client(&self) -> Result<RegistryClient> {
        connect(self.hub_connection_string.as_deref(), &self.server, Api::Hub).map(RegistryClient::new)
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
        // The client checks that it names a policy and a key.
        return ConnectionString::parse(s).context("invalid connection string");
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
            id.owner_policy(),
        ),
        Api::Hub => (id.hub.host_name.clone(), id.hub.owner_policy()),
    };
    let policy = policy.ok_or_else(|| anyhow!("{} has no shared-access policy", dir.identity_path().display()))?;
    let mut cs = ConnectionString::service(&host, &policy.key_name, &policy.primary_key);
    // Beside one node of several serving the service: that node, whatever the service's host
    // name leads to.
    cs.gateway_host_name = dir
        .runtime()
        .and_then(|r| r.address)
        .map(|ip| ip.to_string())
        .filter(|ip| *ip != host);
    Ok(cs)
}

/// Resolves the target for `api` from flags, environment and the data directory.
pub fn connect(explicit: Option<&str>, server: &ServerArgs, api: Api) -> Result<RestClient> {
    let dir = DataDir::new(&server.data_dir);
    let cs = connection_string(explicit, &dir, api)?;
    rest_client(&cs, server, &dir)
}

/// The registry API of the embedded hub `hub` (any of a server's hubs, by name): the explicit
/// connection string, else that hub's owner policy in the data directory, reached at the
/// server's address (the hub's name need not resolve).
pub fn connect_hub_named(explicit: Option<&str>, server: &ServerArgs, hub: &str) -> Result<RestClient> {
    let dir = DataDir::new(&server.data_dir);
    if explicit.is_some_and(|s| !s.trim().is_empty()) {
        return connect(explicit, server, Api::Hub);
    }
    let id = dir.load_identity().with_context(|| {
        "no connection string: pass --hub-connection-string, or point --data-dir at a server's data directory"
    })?;
    let named = id
        .hub_named(hub)
        .ok_or_else(|| anyhow!("the server of {} has no hub '{hub}'", dir.root().display()))?;
    let policy = named
        .owner_policy()
        .ok_or_else(|| anyhow!("hub '{hub}' has no shared-access policy"))?;
    let mut cs = ConnectionString::service(&named.host_name, &policy.key_name, &policy.primary_key);
    cs.gateway_host_name = dir
        .runtime()
        .and_then(|r| r.address.map(|ip| ip.to_string()).or(r.hostnames.into_iter().next()))
        .filter(|gateway| *gateway != named.host_name);
    rest_client(&cs, server, &dir)
}

/// A client of the server `cs` names, trusting `--ca` or the data directory's CA.
fn rest_client(cs: &ConnectionString, server: &ServerArgs, dir: &DataDir) -> Result<RestClient> {
    let ca = read_ca(server.ca.as_deref(), dir)?;
    let port = server
        .port
        .or_else(|| dir.runtime().map(|r| r.https_port))
        .unwrap_or(443);
    RestClient::new(cs, port, &ca).map_err(|e| match e {
        // Said as the connection-string checks above say it.
        dps_client::ClientError::Credential(m) => anyhow!(m),
        other => other.into(),
    })
}

/// A PEM file as text, a DER one as base64 (the API takes either).
pub fn read_pem_or_der(path: &Path) -> Result<String> {
    use base64::Engine as _;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => text,
        Ok(text) => base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
        Err(e) => base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
    })
}
