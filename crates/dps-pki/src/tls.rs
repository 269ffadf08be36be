//! rustls configurations for the listeners and for clients of them.
//!
//! Device SDKs differ in what they speak: the Python SDK only TLS 1.2, MQTT clients send no
//! ALPN, symmetric-key devices send no client certificate while X.509/DICE devices do, and those
//! device certificates routinely chain to CAs nobody configured the server with (the enrollment
//! decides whether they are acceptable). The server configuration therefore offers TLS 1.2 and
//! 1.3, allows but does not require `http/1.1` ALPN, and, when asked to, requests a client
//! certificate without judging it — while still insisting the client proves it holds the key.
//!
//! Device TLS stacks also differ in the signature algorithms they can verify: some (mbedTLS
//! built without ECDSA, as in many constrained configurations) verify only RSA, the way Azure's
//! own endpoints sign. A listener may therefore hold several certificates, and
//! [`CertBySignatureScheme`] picks one per handshake from what the client offers.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};

use crate::pem::{parse_certificates, parse_private_key};
use crate::PkiError;

/// Both TLS versions, newest first: 1.2 for the Python SDK and older devices, 1.3 for the rest.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ring's suites with the cheaper ones first: AES-128-GCM/SHA-256 before AES-256/SHA-384 in
/// each TLS version (the server's order decides; see `ignore_client_order`).
fn server_provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        _ => 1,
    });
    Arc::new(p)
}

/// A server certificate chain and its key, as PEM: the certificate followed by any
/// intermediates, and its private key (PKCS#8, SEC1 or PKCS#1).
#[derive(Clone, Copy)]
pub struct ServerIdentity<'a> {
    /// The certificate chain, leaf first.
    pub cert_chain_pem: &'a str,
    /// The leaf's private key.
    pub key_pem: &'a str,
}

impl std::fmt::Debug for ServerIdentity<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The server configuration of a device or service listener with one certificate; see
/// [`server_config_for`].
pub fn server_config(
    cert_chain_pem: &str,
    key_pem: &str,
    request_client_cert: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    server_config_for(
        &[ServerIdentity {
            cert_chain_pem,
            key_pem,
        }],
        request_client_cert,
    )
}

/// The server configuration of a device or service listener.
///
/// `identities` are the certificates the listener can present, most preferred first; each
/// handshake gets the first one whose key can sign with a scheme the client offers (see
/// [`CertBySignatureScheme`]). With `request_client_cert`, the server requests an optional
/// client certificate and accepts any chain, verifying only proof of key possession (see
/// [`PossessionOnlyVerifier`]); the certificates are then available through
/// [`peer_certificates`].
///
/// ALPN: the server selects `http/1.1` when a client offers it and proceeds without ALPN when a
/// client offers none. (A client offering only other protocols is refused by rustls, as RFC 7301
/// asks.)
pub fn server_config_for(
    identities: &[ServerIdentity<'_>],
    request_client_cert: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = server_provider();
    let keys = identities
        .iter()
        .map(|id| {
            let chain = parse_certificates(id.cert_chain_pem)?;
            let key = parse_private_key(id.key_pem)?;
            Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider)?))
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    let resolver = CertBySignatureScheme::new(keys).ok_or(PkiError::NoServerCertificate)?;
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(VERSIONS)?;
    let builder = if request_client_cert {
        builder.with_client_cert_verifier(Arc::new(PossessionOnlyVerifier::new(&provider)))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Devices connect once and stay (or provision once and go): nobody resumes a session, so
    // issuing TLS 1.3 tickets and keeping a session cache would only cost a random draw, an
    // encryption, an extra record and a lock per handshake.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // Pick the cheapest suite both sides support rather than the client's favourite (most
    // clients list AES-256/SHA-384 first, which costs more per handshake and record and buys
    // nothing over AES-128 here).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Chooses the server certificate of each handshake from the signature schemes the client
/// offers: the first certified key that can sign with one of them, else the first key (and
/// rustls then refuses the handshake, as it would with that key alone).
///
/// Why by signature scheme: a client offers only the schemes it can verify, and rustls has
/// already narrowed them to those its TLS 1.2 suites allow, so an RSA-only stack (an mbedTLS
/// without ECDSA, offering only `TLS_ECDHE_RSA_*`) is matched with the RSA key while everyone
/// else gets the first one. The listeners list ECDSA first: a P-256 signature costs the server
/// far less than an RSA-2048 one, and every full TLS stack verifies it.
#[derive(Debug)]
pub struct CertBySignatureScheme {
    /// Most preferred first; never empty.
    keys: Vec<Arc<CertifiedKey>>,
}

impl CertBySignatureScheme {
    /// A resolver over `keys`, most preferred first; `None` when there are none.
    pub fn new(keys: Vec<Arc<CertifiedKey>>) -> Option<Self> {
        (!keys.is_empty()).then_some(CertBySignatureScheme { keys })
    }

    /// The key for a client offering `offered`.
    pub fn choose(&self, offered: &[SignatureScheme]) -> &Arc<CertifiedKey> {
        self.keys
            .iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            .unwrap_or(&self.keys[0])
    }
}

impl ResolvesServerCert for CertBySignatureScheme {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(client_hello.signature_schemes()).clone())
    }
}

/// The certificates the client sent, leaf first, as owned values that outlive the connection
/// borrow. Empty when the client sent none (or none was requested).
pub fn peer_certificates(conn: &rustls::ServerConnection) -> Vec<CertificateDer<'static>> {
    conn.peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

/// A client configuration that trusts only the CA certificate(s) in `ca_pem` — the local CA of
/// a dps server, or whatever CA issued its certificate.
pub fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, PkiError> {
    let config = client_builder(ca_pem)?.with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that trusts the system's certificate authorities (as `curl` and the
/// Azure SDKs do: `/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`) and, besides them, the
/// CA certificate(s) in `extra_ca_pem`: what the server uses to reach services of the
/// operator's, such as an Azure Storage account (public CAs) or a local stand-in for one (a
/// private CA).
pub fn client_config_with_system_roots(extra_ca_pem: Option<&str>) -> Result<Arc<ClientConfig>, PkiError> {
    let mut roots = match extra_ca_pem {
        Some(pem) => roots(pem)?,
        None => RootCertStore::empty(),
    };
    add_system_roots(&mut roots)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Adds the system's certificate authorities to `roots`; fails when `roots` is still empty.
fn add_system_roots(roots: &mut RootCertStore) -> Result<(), PkiError> {
    let system = rustls_native_certs::load_native_certs();
    // Certificates rustls cannot parse are skipped, as every TLS stack skips them.
    let (added, _ignored) = roots.add_parsable_certificates(system.certs);
    if roots.is_empty() {
        let why = match system.errors.first() {
            Some(e) => e.to_string(),
            None if added == 0 => "none found".to_string(),
            None => "none usable".to_string(),
        };
        return Err(PkiError::NoSystemRoots(why));
    }
    Ok(())
}

/// How much of a server's certificate a client checks: the three choices PostgreSQL's clients
/// offer (libpq's `sslmode`), which is where dps meets them — operators already know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck {
    /// Encrypt, accept any certificate (`sslmode=prefer|require`). The handshake signature is
    /// still verified, so the session is with whoever holds the key of the certificate shown:
    /// this defeats a listener on the wire, not a man in the middle.
    EncryptOnly,
    /// The chain must lead to a trusted CA, whatever name it was issued for (`verify-ca`).
    Chain,
    /// The chain and the name the client dialled (`verify-full`), as every other client of dps
    /// checks servers.
    Full,
}

/// A client configuration that checks servers as `check` says, trusting the CA certificate(s)
/// in `ca_pem`, or the system's when none are given, and presenting `identity` (a certificate
/// chain, leaf first, and its key, both PEM) when the server asks for a client certificate. The
/// connections dps opens to its PostgreSQL store use it (decision 0032).
pub fn client_config_checking(
    check: ServerCheck,
    ca_pem: Option<&str>,
    identity: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(VERSIONS)?;
    let trusted = || -> Result<RootCertStore, PkiError> {
        match ca_pem {
            Some(pem) => roots(pem),
            None => {
                let mut roots = RootCertStore::empty();
                add_system_roots(&mut roots)?;
                Ok(roots)
            }
        }
    };
    let config = match check {
        ServerCheck::Full => builder.with_root_certificates(trusted()?),
        ServerCheck::Chain | ServerCheck::EncryptOnly => {
            let chain = match check {
                ServerCheck::Chain => Some(
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(trusted()?), provider.clone())
                        .build()
                        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?,
                ),
                _ => None,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LenientServerVerifier {
                    chain,
                    algorithms: provider.signature_verification_algorithms,
                }))
        }
    };
    Ok(Arc::new(match identity {
        None => config.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            config.with_client_auth_cert(parse_certificates(chain_pem)?, parse_private_key(key_pem)?)?
        }
    }))
}

/// The server verifier of [`ServerCheck::EncryptOnly`] (no `chain`) and [`ServerCheck::Chain`]:
/// the standard WebPKI check of the chain when there is one, a name it was not issued for
/// forgiven; the handshake signature always verified.
#[derive(Debug)]
struct LenientServerVerifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LenientServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the name last, after the chain: this error means the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Like [`client_config`], presenting `cert_chain_pem` (leaf first) with `key_pem` as the client
/// certificate: what an X.509 or DICE device does when it registers.
pub fn client_config_with_identity(
    ca_pem: &str,
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, PkiError> {
    let chain = parse_certificates(cert_chain_pem)?;
    let key = parse_private_key(key_pem)?;
    let config = client_builder(ca_pem)?.with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Like [`client_config_with_identity`], with a key that signs through a hook instead of a key
/// PEM ([`crate::held_key::HeldKey`]: a TPM, a secure element): the handshake's
/// `CertificateVerify` is signed by the key's holder. The leaf of `cert_chain_pem` must certify
/// the key.
pub fn client_config_with_held_key(
    ca_pem: &str,
    cert_chain_pem: &str,
    key: Arc<dyn crate::held_key::HeldKey>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let chain = parse_certificates(cert_chain_pem)?;
    let leaf = chain.first().ok_or(PkiError::NoCertificate)?;
    crate::held_key::certifies(leaf, key.as_ref())?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(
        chain,
        crate::held_key::signing_key(key)?,
    ));
    let config = client_builder(ca_pem)?.with_client_cert_resolver(Arc::new(AlwaysPresent(certified)));
    Ok(Arc::new(config))
}

/// Presents one certificate whatever the server hints: a device has one identity.
#[derive(Debug)]
struct AlwaysPresent(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for AlwaysPresent {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration that trusts `ca_pem`, speaks `versions`, and can neither verify nor
/// negotiate ECDSA: it offers only RSA signature schemes and, in TLS 1.2, only `TLS_ECDHE_RSA_*`
/// suites, and rejects ECDSA-signed certificates anywhere in the chain.
///
/// It is what a device TLS stack built without ECDSA looks like to a server (mbedTLS without
/// `MBEDTLS_ECDSA_C`, common in constrained configurations, because Azure signs with RSA), so
/// tests and tools can check that a listener serves such devices.
pub fn client_config_without_ecdsa(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, PkiError> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.retain(|s| {
        !matches!(
            s.suite(),
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        )
    });
    p.signature_verification_algorithms = rsa_only_algorithms();
    let config = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(versions)?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// ring's signature verification algorithms without the ECDSA (and EdDSA) ones: chains and
/// handshake signatures verify only when RSA made them. Built once; the tables rustls takes
/// must live for the whole program.
fn rsa_only_algorithms() -> WebPkiSupportedAlgorithms {
    type Algorithm = &'static dyn SignatureVerificationAlgorithm;
    type Mapping = (SignatureScheme, &'static [Algorithm]);
    static TABLES: OnceLock<(Vec<Algorithm>, Vec<Mapping>)> = OnceLock::new();
    let (all, mapping) = TABLES.get_or_init(|| {
        let ring = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let all = ring
            .all
            .iter()
            .copied()
            .filter(|a| a.public_key_alg_id() == rustls_pki_types::alg_id::RSA_ENCRYPTION)
            .collect();
        let mapping = ring
            .mapping
            .iter()
            .copied()
            .filter(|(scheme, _)| {
                matches!(
                    scheme,
                    SignatureScheme::RSA_PKCS1_SHA256
                        | SignatureScheme::RSA_PKCS1_SHA384
                        | SignatureScheme::RSA_PKCS1_SHA512
                        | SignatureScheme::RSA_PSS_SHA256
                        | SignatureScheme::RSA_PSS_SHA384
                        | SignatureScheme::RSA_PSS_SHA512
                )
            })
            .collect();
        (all, mapping)
    });
    WebPkiSupportedAlgorithms { all, mapping }
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for ca in parse_certificates(ca_pem)? {
        roots.add(ca)?;
    }
    Ok(roots)
}

fn client_builder(
    ca_pem: &str,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, PkiError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots(ca_pem)?))
}

/// A client-certificate verifier that checks possession of the key and nothing else.
///
/// Why not judge the chain here: the TLS layer cannot know which chain is acceptable. That
/// depends on the enrollment the device registers against (individual enrollment thumbprints,
/// enrollment-group CA or intermediate certificates, verified CA certificates), which the
/// provisioning engine looks up after the handshake — and the Azure behaviour to reproduce is a
/// registration error from the service, not a TLS alert. Unknown issuers, self-signed device
/// certificates and expired certificates are therefore all accepted at this layer, and the
/// certificate is optional because symmetric-key and TPM devices send none.
///
/// Why the signature is still checked: a certificate alone is public. Verifying the handshake's
/// CertificateVerify signature against the leaf's public key proves the client holds the
/// private key, which is what makes the captured certificate usable as an identity later.
#[derive(Debug, Clone)]
pub struct PossessionOnlyVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl PossessionOnlyVerifier {
    /// A verifier using `provider`'s signature verification algorithms.
    pub fn new(provider: &CryptoProvider) -> Self {
        PossessionOnlyVerifier {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl Default for PossessionOnlyVerifier {
    /// A verifier with the ring provider's algorithms, which the listeners use.
    fn default() -> Self {
        PossessionOnlyVerifier::new(&rustls::crypto::ring::default_provider())
    }
}

impl ClientCertVerifier for PossessionOnlyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: an empty list tells clients to send whatever certificate they have.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
