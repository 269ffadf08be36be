//! The TLS configuration all listeners share: which certificates they present, and the
//! acceptor each protocol gets.
//!
//! Without `--tls-cert`, the listeners present the two stored server certificates (the data
//! directory's, or with a PostgreSQL store the ones every node shares), P-256 and RSA-2048,
//! choosing per handshake from the signature schemes the client offers (P-256 whenever the client can verify it, as it is cheaper to sign; RSA for device stacks
//! built without ECDSA; decision 0018). A brought certificate is presented alone, as it always
//! was. Every listener (MQTT, HTTPS with its WebSockets, AMQP) takes its acceptor from here so
//! none of them can end up serving a different certificate set.

use std::path::Path;
use std::sync::Arc;

use dps_pki::tls::ServerIdentity;
use tokio_rustls::TlsAcceptor;

use crate::datadir::{DataDirError, Identity, ServerCertificate};
use crate::{ServerConfig, StartError};

/// The listeners' rustls configuration, built once at start.
#[derive(Clone)]
pub(crate) struct ListenerTls {
    /// With `http/1.1` ALPN; [`without_alpn`](Self::without_alpn) clears it.
    config: Arc<rustls::ServerConfig>,
}

impl ListenerTls {
    /// The certificates `config` asks for: the brought `--tls-cert`/`--tls-key` pair, or the
    /// stored ones that `local` returns (created or re-issued as needed) for the names they must
    /// cover: the configured host names and the embedded hubs'. Client certificates are
    /// requested (optional, possession checked) on every listener, since X.509 devices present
    /// them on each.
    ///
    /// RSA key generation takes a good part of a second on a new identity, so call this off the
    /// async runtime (`spawn_blocking`).
    pub(crate) fn load(
        config: &ServerConfig,
        identity: &Identity,
        local: impl FnOnce(&[String]) -> Result<Vec<ServerCertificate>, DataDirError>,
    ) -> Result<Self, StartError> {
        let config = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => {
                let (chain, key) = (read_tls_file("--tls-cert", c)?, read_tls_file("--tls-key", k)?);
                dps_pki::tls::server_config(&chain, &key, true)
            }
            (None, None) => {
                let mut names = config.hostnames.clone();
                for hub in identity.hubs() {
                    if !names.iter().any(|n| n.eq_ignore_ascii_case(&hub.host_name)) {
                        names.push(hub.host_name.clone());
                    }
                }
                let certificates = local(&names)?;
                let identities: Vec<ServerIdentity<'_>> = certificates
                    .iter()
                    .map(|c| ServerIdentity {
                        cert_chain_pem: &c.chain_pem,
                        key_pem: &c.key_pem,
                    })
                    .collect();
                dps_pki::tls::server_config_for(&identities, true)
            }
            _ => return Err(StartError::TlsPair),
        }
        .map_err(StartError::Tls)?;
        Ok(Self { config })
    }

    /// For HTTPS (and the WebSockets on it): selects `http/1.1` when the client offers it.
    pub(crate) fn https(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// For MQTT and AMQP: no ALPN configured, so rustls ignores what clients offer ("mqtt",
    /// "x-amzn-mqtt-ca", "amqp") instead of refusing the handshake.
    pub(crate) fn without_alpn(&self) -> TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols.clear();
        TlsAcceptor::from(Arc::new(config))
    }
}

fn read_tls_file(flag: &'static str, path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|source| StartError::TlsFile {
        flag,
        path: path.to_path_buf(),
        source,
    })
}
