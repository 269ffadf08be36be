//! Connections as the lean bench client opens them: TCP from a chosen source address, then TLS
//! with a configuration built once per run (or once per X.509 device).
//!
//! Why source addresses: a client has about 28,000 ephemeral ports per (source address,
//! destination) pair, so 50,000 held connections to one listener need at least two source
//! addresses. Every 127.x.y.z is a loopback address on Linux, so the bench can spread its sockets
//! over several of them without any network configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::BenchError;

/// Where a `--source-addresses N` count starts: a loopback block no test server uses.
const COUNT_BASE: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
/// Linux's default `net.ipv4.ip_local_port_range` (32768–60999), when /proc cannot be read.
const DEFAULT_EPHEMERAL_PORTS: usize = 28_232;

/// Parses `--source-addresses`: a count (`4` = 127.1.0.1 … 127.1.0.4), or a comma-separated list
/// of addresses and IPv4 ranges (`127.0.0.2-127.0.0.9,127.0.1.1`).
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, BenchError> {
    let spec = spec.trim();
    if let Ok(n) = spec.parse::<u32>() {
        if n == 0 || n > 65_536 {
            return Err(BenchError::controls(format!(
                "--source-addresses {n}: give between 1 and 65536 addresses"
            )));
        }
        let base = u32::from(COUNT_BASE);
        return Ok((0..n).map(|i| IpAddr::V4(Ipv4Addr::from(base + i))).collect());
    }
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => {
                let parse = |s: &str| {
                    s.trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|source| BenchError::SourceAddress {
                            item: s.trim().to_string(),
                            expected: "an IPv4 address",
                            source,
                        })
                };
                let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
                if b < a || b - a >= 65_536 {
                    return Err(BenchError::controls(format!(
                        "--source-addresses: range '{item}' must go upwards and span at most 65536 addresses"
                    )));
                }
                out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
            }
            None => out.push(item.parse().map_err(|source| BenchError::SourceAddress {
                item: item.to_string(),
                expected: "an IP address",
                source,
            })?),
        }
    }
    if out.is_empty() {
        return Err(BenchError::controls("--source-addresses is empty"));
    }
    Ok(out)
}

/// Ephemeral ports per source address (`net.ipv4.ip_local_port_range`).
pub fn ephemeral_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<usize>().ok());
            Some(it.next()??..=it.next()??)
        })
        .map(|r| r.count())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_EPHEMERAL_PORTS)
}

/// A resolved server: the socket address to dial and the name to verify.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// TLS server name (DNS name or IP address).
    pub name: ServerName<'static>,
}

impl Endpoint {
    /// Resolves `host:port` once, so devices do not each pay a DNS lookup (which tokio runs on a
    /// blocking thread).
    pub async fn resolve(host: &str, port: u16) -> Result<Endpoint, BenchError> {
        let name = ServerName::try_from(host.to_string()).map_err(|source| BenchError::HostName {
            host: host.to_string(),
            source,
        })?;
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| BenchError::Resolve {
                    host: host.to_string(),
                    source,
                })?
                .next()
                .ok_or_else(|| BenchError::NoAddress { host: host.to_string() })?,
        };
        Ok(Endpoint { addr, name })
    }
}

/// Opens a TCP connection from `source` (any local address when `None`), without Nagle's
/// algorithm, as the server's sockets are.
pub async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {}", e.kind()))?;
    if let Some(ip) = source {
        // SO_REUSEADDR lets bind(port 0) pick ports that closed connections left in TIME_WAIT.
        let _ = socket.set_reuseaddr(true);
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {}", e.kind()))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// TCP, then a TLS handshake with `config`.
pub async fn tls(
    ep: &Endpoint,
    source: Option<IpAddr>,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = tcp(ep.addr, source).await?;
    TlsConnector::from(config)
        .connect(ep.name.clone(), tcp)
        .await
        .map_err(|e| format!("tls: {}", e.kind()))
}

/// What the bench trusts, and the client configurations it builds from that.
///
/// Why not `dps_pki::tls::client_config` per device, as the device SDK does: it parses the CA
/// PEM and builds a root store each time, which a generator simulating thousands of devices per
/// second cannot afford. Session resumption is off: every simulated device is a new device with
/// no session to resume, and sharing one configuration must not make them look like one.
pub struct Trust {
    provider: Arc<CryptoProvider>,
    verifier: Arc<VerifyChainOnce>,
    anonymous: Arc<ClientConfig>,
}

impl Trust {
    /// Trusts the CA certificate(s) in `ca_pem`.
    pub fn new(ca_pem: &str) -> Result<Trust, BenchError> {
        let mut roots = RootCertStore::empty();
        for ca in dps_pki::pem::parse_certificates(ca_pem).map_err(BenchError::CaCertificate)? {
            roots.add(ca).map_err(BenchError::Trust)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(BenchError::Verifier)?;
        let verifier = Arc::new(VerifyChainOnce {
            inner: webpki,
            verified: Mutex::new(Vec::new()),
        });
        let mut anonymous = Self::builder(&provider, &verifier)
            .map_err(BenchError::TlsConfig)?
            .with_no_client_auth();
        anonymous.resumption = Resumption::disabled();
        Ok(Trust {
            provider,
            verifier,
            anonymous: Arc::new(anonymous),
        })
    }

    fn builder(
        provider: &Arc<CryptoProvider>,
        verifier: &Arc<VerifyChainOnce>,
    ) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, rustls::Error> {
        Ok(ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone()))
    }

    /// The configuration of devices without a client certificate (shared by all of them).
    pub fn anonymous(&self) -> Arc<ClientConfig> {
        self.anonymous.clone()
    }

    /// A configuration presenting `chain` (leaf first) with `key`: one X.509 device.
    pub fn with_identity(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ClientConfig>, String> {
        let mut config = Self::builder(&self.provider, &self.verifier)
            .and_then(|b| b.with_client_auth_cert(chain, key))
            .map_err(|e| format!("client certificate: {e}"))?;
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// Server certificates (leaf, intermediates, name) whose chain has been verified this run.
type Verified = (Vec<u8>, Vec<Vec<u8>>, String);

/// The standard WebPKI verifier, except that a server certificate chain already verified in this
/// run (byte for byte, for the same name) is not verified again.
///
/// Why: every simulated device receives the same server certificate, and verifying its chain
/// (an ECDSA verification) took about a tenth of the generator's CPU per registration — CPU the
/// server on the same two cores then lacked. The handshake signature, which proves the server
/// holds the certificate's key, is still verified on every connection, and what the server does
/// is unchanged.
#[derive(Debug)]
struct VerifyChainOnce {
    inner: Arc<WebPkiServerVerifier>,
    verified: Mutex<Vec<Verified>>,
}

/// At most this many distinct chains are remembered (one per listener certificate in practice).
const MAX_VERIFIED: usize = 8;

impl ServerCertVerifier for VerifyChainOnce {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = server_name.to_str();
        let known = |(ee, ints, n): &Verified| {
            ee.as_slice() == end_entity.as_ref()
                && *n == name
                && ints.len() == intermediates.len()
                && ints.iter().zip(intermediates).all(|(a, b)| a.as_slice() == b.as_ref())
        };
        if self.verified.lock().iter().any(known) {
            return Ok(ServerCertVerified::assertion());
        }
        let ok = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let mut v = self.verified.lock();
        if v.len() < MAX_VERIFIED {
            v.push((
                end_entity.to_vec(),
                intermediates.iter().map(|c| c.to_vec()).collect(),
                name.into_owned(),
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_forms() {
        let v = parse_sources("3").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].to_string(), "127.1.0.1");
        assert_eq!(v[2].to_string(), "127.1.0.3");
        let v = parse_sources("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"]);
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("0").is_err());
        assert!(parse_sources("nonsense").is_err());
        assert!(ephemeral_ports() > 1000);
    }

    /// What `dps bench` prints for an error: the message, then each source.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            out = format!("{out}: {s}");
            next = s.source();
        }
        out
    }

    #[test]
    fn errors_carry_their_typed_cause_and_read_as_before() {
        let e = parse_sources("127.0.0.1,127.0.0.300").unwrap_err();
        let BenchError::SourceAddress { item, source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(item, "127.0.0.300");
        assert_eq!(
            chain(&e),
            format!("--source-addresses: '127.0.0.300' is not an IP address: {source}")
        );
        assert!(matches!(
            parse_sources("127.0.0.1-x"),
            Err(BenchError::SourceAddress {
                expected: "an IPv4 address",
                ..
            })
        ));
        assert!(matches!(parse_sources(" , "), Err(BenchError::Controls(_))));
        let e = Trust::new("").err().expect("no CA, no trust");
        assert!(
            matches!(e, BenchError::CaCertificate(dps_pki::PkiError::NoCertificate)),
            "{e:?}"
        );
        assert_eq!(
            chain(&e),
            "cannot read the CA certificate: no certificate found in the input"
        );
    }

    #[test]
    fn chains_are_verified_once_and_untrusted_ones_always_fail() {
        let ca = dps_pki::ca::LocalCa::generate("bench test CA").unwrap();
        let other = dps_pki::ca::LocalCa::generate("another CA").unwrap();
        let trust = Trust::new(&ca.cert_pem()).unwrap();
        let leaf = |c: &dps_pki::ca::LocalCa| {
            let pem = c.issue_server_certificate(&["127.0.0.1".into()]).unwrap().cert_pem;
            dps_pki::pem::parse_certificates(&pem).unwrap().remove(0)
        };
        let (good, bad) = (leaf(&ca), leaf(&other));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let verify = |c: &CertificateDer<'_>, n: &ServerName<'_>| {
            trust
                .verifier
                .verify_server_cert(c, &[], n, &[], UnixTime::now())
                .is_ok()
        };
        assert!(verify(&good, &name) && verify(&good, &name));
        assert_eq!(trust.verifier.verified.lock().len(), 1, "verified once, remembered");
        assert!(
            !verify(&bad, &name) && !verify(&bad, &name),
            "an untrusted chain never passes"
        );
        assert!(
            !verify(&good, &ServerName::try_from("127.0.0.2").unwrap()),
            "nor another name"
        );
        assert_eq!(trust.verifier.verified.lock().len(), 1);
    }
}
