//! Real TLS handshakes (in memory, tokio-rustls) between the listener configuration and clients.

use std::sync::Arc;

use dps_pki::ca::{IssuedCertificate, KeyAlgorithm, LocalCa};
use dps_pki::pem::{parse_certificates, parse_private_key};
use dps_pki::tls::{
    client_config, client_config_with_identity, client_config_without_ecdsa, peer_certificates, server_config,
    server_config_for, ServerIdentity,
};
use dps_pki::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DEVKIT_PEM: &str = include_str!("fixtures/devkit-dps-sample.pem");
const SEC1_KEY: &str = include_str!("fixtures/ec-sec1.key");
const SEC1_CERT: &str = include_str!("fixtures/ec-sec1.crt");

const HOSTS: [&str; 3] = ["127.0.0.1", "dps.example.test", "::1"];

struct Server {
    ca: LocalCa,
    chain_pem: String,
    key_pem: String,
}

fn server() -> Server {
    server_with(KeyAlgorithm::EcdsaP256)
}

/// A root and a server certificate under it, both with keys of `alg`.
fn server_with(alg: KeyAlgorithm) -> Server {
    let ca = LocalCa::generate_with("dps local CA", alg).unwrap();
    let issued = ca.issue_server_certificate_with(&HOSTS.map(String::from), alg).unwrap();
    Server {
        chain_pem: format!("{}{}", issued.cert_pem, ca.cert_pem()),
        key_pem: issued.key_pem,
        ca,
    }
}

impl Server {
    fn identity(&self) -> ServerIdentity<'_> {
        ServerIdentity {
            cert_chain_pem: &self.chain_pem,
            key_pem: &self.key_pem,
        }
    }
}

/// A self-signed certificate from an issuer no one has heard of, as a device would present.
fn self_signed_device(cn: &str) -> IssuedCertificate {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    // Long expired: the TLS layer must not care.
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    IssuedCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A client configuration that trusts `ca` and speaks only `version`, built with rustls
/// directly — the way an independent client (say, Python's TLS 1.2-only SDK) sees the server.
fn client_for_version(
    ca: &LocalCa,
    version: &'static rustls::SupportedProtocolVersion,
    identity: Option<&IssuedCertificate>,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some(id) => builder
            .with_client_auth_cert(
                parse_certificates(&id.cert_pem).unwrap(),
                parse_private_key(&id.key_pem).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// A client presenting `cert_pem` while signing with an unrelated key: it cannot prove
/// possession. rustls's own builders refuse such a pair, so the certified key is assembled by hand.
fn impostor_client(
    ca: &LocalCa,
    version: &'static rustls::SupportedProtocolVersion,
    cert_pem: &str,
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let wrong_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signer = provider
        .key_provider
        .load_private_key(parse_private_key(&wrong_key.serialize_pem()).unwrap())
        .unwrap();
    let certified = rustls::sign::CertifiedKey::new(parse_certificates(cert_pem).unwrap(), signer);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified))),
    )
}

#[derive(Debug)]
struct Outcome {
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    peer_certificates: Vec<CertificateDer<'static>>,
    /// The chain the server presented, as the client received it.
    server_chain: Vec<CertificateDer<'static>>,
    suite: Option<rustls::CipherSuite>,
}

/// Runs one handshake and a ping/pong over it; on failure, the server's error (or the client's
/// if the server has none).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> Result<Outcome, std::io::Error> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await?;
        assert_eq!(&ping, b"ping");
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        let conn = tls.get_ref().1;
        Ok::<_, std::io::Error>(Outcome {
            version: conn.protocol_version(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificates: peer_certificates(conn),
            server_chain: Vec::new(),
            suite: None,
        })
    };
    let client_side = async move {
        let mut tls = TlsConnector::from(client).connect(server_name, client_io).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await?;
        assert_eq!(&pong, b"pong");
        let conn = tls.get_ref().1;
        let chain = conn.peer_certificates().unwrap_or_default();
        Ok::<_, std::io::Error>((
            chain.iter().map(|c| c.clone().into_owned()).collect(),
            conn.negotiated_cipher_suite().map(|s| s.suite()),
        ))
    };
    let (server_result, client_result) = tokio::join!(server_side, client_side);
    let mut outcome = server_result?;
    (outcome.server_chain, outcome.suite) = client_result?;
    Ok(outcome)
}

fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[tokio::test]
async fn client_trusting_the_local_ca_connects_by_name_and_by_ip() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, false).unwrap();
    let cli = client_config(&s.ca.cert_pem()).unwrap();
    for name in HOSTS {
        let outcome = handshake(srv.clone(), cli.clone(), name).await.unwrap();
        assert_eq!(outcome.version, Some(ProtocolVersion::TLSv1_3), "{name}");
        assert!(outcome.peer_certificates.is_empty());
    }
}

#[tokio::test]
async fn tls12_only_and_tls13_only_clients_are_both_served() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        for name in ["dps.example.test", "127.0.0.1"] {
            let outcome = handshake(srv.clone(), client_for_version(&s.ca, version, None), name)
                .await
                .unwrap();
            assert_eq!(outcome.version, Some(expected), "{name}");
        }
    }
}

#[tokio::test]
async fn a_name_the_certificate_does_not_cover_is_refused_by_the_client() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, false).unwrap();
    let cli = client_config(&s.ca.cert_pem()).unwrap();
    let err = handshake(srv, cli, "other.example.test").await.unwrap_err();
    // The client refuses the certificate (NotValidForName) and tells the server so.
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let s = server();
    let stranger = LocalCa::generate("someone else").unwrap();
    let srv = server_config(&s.chain_pem, &s.key_pem, false).unwrap();
    let cli = client_config(&stranger.cert_pem()).unwrap();
    let err = handshake(srv, cli, "dps.example.test").await.unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn self_signed_expired_device_certificate_is_accepted_and_exposed() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();
    let device = self_signed_device("my-x509-device");
    let device_der = parse_certificates(&device.cert_pem).unwrap();

    let cli = client_config_with_identity(&s.ca.cert_pem(), &device.cert_pem, &device.key_pem).unwrap();
    let outcome = handshake(srv.clone(), cli, "dps.example.test").await.unwrap();
    assert_eq!(outcome.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(outcome.peer_certificates, device_der);

    let tls12 = client_for_version(&s.ca, &rustls::version::TLS12, Some(&device));
    let outcome = handshake(srv, tls12, "127.0.0.1").await.unwrap();
    assert_eq!(outcome.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(outcome.peer_certificates, device_der);
}

#[tokio::test]
async fn a_device_chain_arrives_leaf_first() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();
    // A device certificate from an unknown intermediate CA, sent with that intermediate.
    let unknown_ca = LocalCa::generate("unregistered group CA").unwrap();
    let device = unknown_ca
        .issue_server_certificate(&["device-in-group".to_string()])
        .unwrap();
    let chain = format!("{}{}", device.cert_pem, unknown_ca.cert_pem());
    let cli = client_config_with_identity(&s.ca.cert_pem(), &chain, &device.key_pem).unwrap();
    let outcome = handshake(srv, cli, "dps.example.test").await.unwrap();
    assert_eq!(outcome.peer_certificates, parse_certificates(&chain).unwrap());
}

#[tokio::test]
async fn a_client_without_a_certificate_is_accepted_when_one_is_requested() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let outcome = handshake(
            srv.clone(),
            client_for_version(&s.ca, version, None),
            "dps.example.test",
        )
        .await
        .unwrap();
        assert!(outcome.peer_certificates.is_empty());
    }
}

#[tokio::test]
async fn no_certificate_is_captured_when_none_is_requested() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, false).unwrap();
    let device = self_signed_device("unasked");
    let cli = client_config_with_identity(&s.ca.cert_pem(), &device.cert_pem, &device.key_pem).unwrap();
    let outcome = handshake(srv, cli, "dps.example.test").await.unwrap();
    assert!(outcome.peer_certificates.is_empty());
}

#[tokio::test]
async fn a_certificate_without_its_key_is_refused() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();
    let device = self_signed_device("stolen-certificate");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cli = impostor_client(&s.ca, version, &device.cert_pem);
        let err = handshake(srv.clone(), cli, "dps.example.test").await.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadSignature
                ))
            ),
            "{version:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn the_devkit_certificate_with_a_malformed_san_reaches_the_signature_check() {
    // Without the DevKit's key the handshake must fail — and fail on the signature, which shows
    // the certificate itself (critical SAN with a malformed otherName) was read and not refused.
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cli = impostor_client(&s.ca, version, DEVKIT_PEM);
        let err = handshake(srv.clone(), cli, "dps.example.test").await.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadSignature
                ))
            ),
            "{version:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn http11_alpn_is_chosen_when_offered_and_not_required() {
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();

    let mut offering = (*client_config(&s.ca.cert_pem()).unwrap()).clone();
    offering.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let outcome = handshake(srv.clone(), Arc::new(offering), "dps.example.test")
        .await
        .unwrap();
    assert_eq!(outcome.alpn.as_deref(), Some(&b"http/1.1"[..]));

    let silent = client_config(&s.ca.cert_pem()).unwrap();
    let outcome = handshake(srv, silent, "dps.example.test").await.unwrap();
    assert_eq!(outcome.alpn, None);
}

#[test]
fn server_config_takes_sec1_keys_and_rejects_mismatched_ones() {
    assert!(server_config(SEC1_CERT, SEC1_KEY, true).is_ok());
    let s = server();
    let err = server_config(&s.chain_pem, SEC1_KEY, false).unwrap_err();
    assert!(matches!(err, dps_pki::PkiError::Tls(_)), "{err:?}");
    assert!(matches!(
        server_config(&s.chain_pem, "", false),
        Err(dps_pki::PkiError::NoPrivateKey)
    ));
}

#[test]
fn client_identity_must_match_its_key() {
    let s = server();
    let device = self_signed_device("mismatch");
    let other = self_signed_device("other");
    let err = client_config_with_identity(&s.ca.cert_pem(), &device.cert_pem, &other.key_pem).unwrap_err();
    assert!(matches!(err, dps_pki::PkiError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn each_client_gets_the_certificate_it_can_verify() {
    let (ecdsa, rsa) = (server(), server_with(KeyAlgorithm::Rsa2048));
    let srv = server_config_for(&[ecdsa.identity(), rsa.identity()], true).unwrap();
    // A full TLS stack gets the cheaper ECDSA certificate, in both versions.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let outcome = handshake(
            srv.clone(),
            client_for_version(&ecdsa.ca, version, None),
            "dps.example.test",
        )
        .await
        .unwrap();
        assert_eq!(outcome.server_chain, parse_certificates(&ecdsa.chain_pem).unwrap());
    }
    // A stack without ECDSA gets the RSA one: over TLS 1.2 offering only ECDHE-RSA suites and
    // RSA PKCS#1 signatures, and over TLS 1.3 offering RSA-PSS.
    for (version, suite) in [
        (
            &rustls::version::TLS12,
            rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (&rustls::version::TLS13, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
    ] {
        let cli = client_config_without_ecdsa(&rsa.ca.cert_pem(), &[version]).unwrap();
        let outcome = handshake(srv.clone(), cli, "127.0.0.1").await.unwrap();
        assert_eq!(outcome.server_chain, parse_certificates(&rsa.chain_pem).unwrap());
        assert_eq!(outcome.suite, Some(suite));
    }
}

#[tokio::test]
async fn a_client_without_ecdsa_cannot_use_an_ecdsa_only_listener() {
    // What devices without ECDSA met before the listeners had an RSA certificate: no suite and
    // signature scheme in common.
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();
    let cli = client_config_without_ecdsa(&s.ca.cert_pem(), &[&rustls::version::TLS12]).unwrap();
    let err = handshake(srv, cli, "dps.example.test").await.unwrap_err();
    assert!(
        matches!(rustls_error(&err), Some(rustls::Error::PeerIncompatible(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_rsa_leaf_needs_an_rsa_root() {
    // Why the RSA certificate has a root of its own (decision 0018): a client without ECDSA
    // negotiates with an RSA leaf signed by the ECDSA root, then cannot verify that signature.
    let ca = LocalCa::generate("dps local CA").unwrap();
    let leaf = ca
        .issue_server_certificate_with(&HOSTS.map(String::from), KeyAlgorithm::Rsa2048)
        .unwrap();
    let srv = server_config(&format!("{}{}", leaf.cert_pem, ca.cert_pem()), &leaf.key_pem, false).unwrap();
    let cli = client_config_without_ecdsa(&ca.cert_pem(), &[&rustls::version::TLS12]).unwrap();
    let err = handshake(srv.clone(), cli, "dps.example.test").await.unwrap_err();
    // The client finds the leaf signed with an algorithm it does not support and tells the server
    // with a decrypt_error alert. (mbedTLS without ECDSA fails earlier: its ECDSA signature OIDs
    // are compiled out, so it cannot even parse the leaf.)
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::DecryptError))
        ),
        "{err:?}"
    );
    // A client that verifies ECDSA accepts the same chain.
    let full = client_for_version(&ca, &rustls::version::TLS12, None);
    handshake(srv, full, "dps.example.test").await.unwrap();
}

#[test]
fn a_listener_needs_a_certificate() {
    assert!(matches!(
        server_config_for(&[], false),
        Err(dps_pki::PkiError::NoServerCertificate)
    ));
}

fn roots_of(ca: &LocalCa) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    roots
}

/// A P-256 key behind the held-key hook: it signs digests only, as a TPM does.
#[derive(Debug)]
struct SoftwareHeldKey {
    key: p256::ecdsa::SigningKey,
    public: Vec<u8>,
    /// Signs with another key than it claims (a holder gone wrong).
    wrong: bool,
}

impl SoftwareHeldKey {
    fn new(wrong: bool) -> Self {
        let key = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let public = key.verifying_key().to_encoded_point(false).as_bytes().to_vec();
        Self { key, public, wrong }
    }
}

impl dps_pki::held_key::HeldKey for SoftwareHeldKey {
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::EcdsaP256
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign_digest(&self, digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        use ecdsa::signature::hazmat::PrehashSigner;
        let key = if self.wrong {
            p256::ecdsa::SigningKey::random(&mut rand::thread_rng())
        } else {
            self.key.clone()
        };
        let sig: p256::ecdsa::Signature = key.sign_prehash(digest).map_err(|e| e.to_string())?;
        let (r, s) = sig.split_bytes();
        Ok((r.to_vec(), s.to_vec()))
    }
}

#[tokio::test]
async fn a_held_key_makes_its_request_and_signs_handshakes() {
    use dps_pki::held_key::certificate_request;
    let s = server();
    let srv = server_config(&s.chain_pem, &s.key_pem, true).unwrap();
    let held = Arc::new(SoftwareHeldKey::new(false));

    // The request verifies (the parser checks its self-signature) and names the held key.
    let der = certificate_request("held-dev", held.clone()).unwrap();
    let request = dps_pki::csr::CertificateRequest::parse(&der).unwrap();
    assert_eq!(request.common_name(), "held-dev");
    assert_eq!(request.public_key_bits(), held.public.as_slice());
    let policy = dps_pki::csr::IssuePolicy {
        common_name: "held-dev".into(),
        validity_days: 1,
        now: chrono::Utc::now(),
        crl_url: None,
    };
    let leaf = s.ca.issue_for_request(&request, &policy).unwrap();
    let chain_pem = dps_pki::pem::to_pem("CERTIFICATE", &leaf);

    // Both TLS versions: the server checks CertificateVerify, which the holder signed.
    let cli = dps_pki::tls::client_config_with_held_key(&s.ca.cert_pem(), &chain_pem, held.clone()).unwrap();
    let outcome = handshake(srv.clone(), cli.clone(), "dps.example.test").await.unwrap();
    assert_eq!(outcome.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(outcome.peer_certificates, vec![leaf.clone()]);
    // The same resolver in a TLS 1.2-only client.
    let tls12 = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots_of(&s.ca))
        .with_client_cert_resolver(cli.client_auth_cert_resolver.clone());
    let outcome = handshake(srv.clone(), Arc::new(tls12), "dps.example.test")
        .await
        .unwrap();
    assert_eq!(outcome.version, Some(ProtocolVersion::TLSv1_2));

    // A holder that signs with another key fails the handshake at the server.
    let wrong = Arc::new(SoftwareHeldKey {
        key: held.key.clone(),
        public: held.public.clone(),
        wrong: true,
    });
    let cli = dps_pki::tls::client_config_with_held_key(&s.ca.cert_pem(), &chain_pem, wrong).unwrap();
    let err = handshake(srv, cli, "dps.example.test").await.unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature
            ))
        ),
        "{err:?}"
    );

    // A chain for another key is refused where it is configured.
    let other = Arc::new(SoftwareHeldKey::new(false));
    assert!(matches!(
        dps_pki::tls::client_config_with_held_key(&s.ca.cert_pem(), &chain_pem, other),
        Err(dps_pki::PkiError::KeyMismatch)
    ));
}
