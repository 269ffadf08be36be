//! Server configuration: command-line flags, environment variables and an optional TOML file,
//! in that order of precedence, over built-in defaults that work with every official SDK on one
//! machine (MQTT 8883 and HTTPS 443 are hard-coded in the Python and C SDKs).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// Everything `dps serve` needs, after merging sources.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory (identity, CA, databases).
    pub data_dir: PathBuf,
    /// Host names (DNS names or IP addresses) devices and services use to reach this server; the
    /// server certificate covers all of them. The first is the provisioning host.
    pub hostnames: Vec<String>,
    /// Host name of the embedded hub; defaults to the first host name that contains a dot (the C
    /// SDK rejects hub host names without one).
    pub hub_hostname: Option<String>,
    /// Address to bind.
    pub bind: IpAddr,
    /// MQTT over TLS (DPS and hub device endpoints).
    pub mqtt_port: u16,
    /// HTTPS (device API, service API, hub registry API).
    pub https_port: u16,
    /// Bring-your-own certificate chain (PEM) instead of one issued by the local CA.
    pub tls_cert: Option<PathBuf>,
    /// Key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Largest accepted MQTT packet / HTTP body, bytes (Azure's limit is 256 KiB for telemetry).
    pub max_message_bytes: usize,
    /// Telemetry messages the embedded hub keeps for `monitor-events`.
    pub telemetry_retention: usize,
    /// Reply to register requests with the final state at once (see
    /// `dps_core::EngineConfig::immediate_assignment`).
    pub immediate_assignment: bool,
}

/// The optional TOML file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServerConfig::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServerConfig::hostnames`].
    pub hostname: Option<Vec<String>>,
    /// See [`ServerConfig::hub_hostname`].
    pub hub_hostname: Option<String>,
    /// See [`ServerConfig::bind`].
    pub bind: Option<IpAddr>,
    /// See [`ServerConfig::mqtt_port`].
    pub mqtt_port: Option<u16>,
    /// See [`ServerConfig::https_port`].
    pub https_port: Option<u16>,
    /// See [`ServerConfig::tls_cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`ServerConfig::tls_key`].
    pub tls_key: Option<PathBuf>,
    /// See [`ServerConfig::max_message_bytes`].
    pub max_message_bytes: Option<usize>,
    /// See [`ServerConfig::telemetry_retention`].
    pub telemetry_retention: Option<usize>,
    /// See [`ServerConfig::immediate_assignment`].
    pub immediate_assignment: Option<bool>,
}

impl FileConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

impl ServerConfig {
    /// Defaults: `./dps-data`, host names `localhost` and `127.0.0.1`, all interfaces, 8883/443.
    pub fn defaults() -> Self {
        Self {
            data_dir: PathBuf::from("./dps-data"),
            hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            hub_hostname: None,
            bind: IpAddr::from([0, 0, 0, 0]),
            mqtt_port: 8883,
            https_port: 443,
            tls_cert: None,
            tls_key: None,
            max_message_bytes: 256 * 1024,
            telemetry_retention: 10_000,
            immediate_assignment: false,
        }
    }

    /// Applies a file's settings over `self`.
    pub fn merge_file(mut self, f: FileConfig) -> Self {
        macro_rules! take {
            ($($field:ident),*) => { $(if let Some(v) = f.$field { self.$field = v; })* };
        }
        take!(
            data_dir,
            bind,
            mqtt_port,
            https_port,
            max_message_bytes,
            telemetry_retention,
            immediate_assignment
        );
        if let Some(h) = f.hostname.filter(|h| !h.is_empty()) {
            self.hostnames = h;
        }
        self.hub_hostname = f.hub_hostname.or(self.hub_hostname);
        self.tls_cert = f.tls_cert.or(self.tls_cert);
        self.tls_key = f.tls_key.or(self.tls_key);
        self
    }

    /// The provisioning host name (first host name).
    pub fn provisioning_host(&self) -> &str {
        self.hostnames.first().map(String::as_str).unwrap_or("localhost")
    }

    /// The hub host name to use on first start when none is configured.
    pub fn default_hub_host(&self) -> String {
        self.hostnames
            .iter()
            .find(|h| h.contains('.'))
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults() {
        let f: FileConfig = toml::from_str("hostname = [\"dps.example.test\"]\nmqtt-port = 18883\n").unwrap();
        let c = ServerConfig::defaults().merge_file(f);
        assert_eq!(c.hostnames, vec!["dps.example.test"]);
        assert_eq!(c.mqtt_port, 18883);
        assert_eq!(c.https_port, 443);
        assert_eq!(c.default_hub_host(), "dps.example.test");
        assert_eq!(ServerConfig::defaults().default_hub_host(), "127.0.0.1");
        assert!(toml::from_str::<FileConfig>("typo = 1").is_err());
        assert!(!c.immediate_assignment);
        let f: FileConfig = toml::from_str("immediate-assignment = true\n").unwrap();
        assert!(ServerConfig::defaults().merge_file(f).immediate_assignment);
    }
}
