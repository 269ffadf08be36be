//! The TCG DICE scheme: determinism, firmware updates under a stable DeviceID, the chain, the
//! TcbInfo extension, CA-issued DeviceIDs, and a real TLS handshake with the Alias identity.

use std::sync::Arc;

use dps_dice::tcg::{
    device_id_certificate, parse_tcb_info, tcg_identity, DeviceIdIssuer, TcgIdentity, TcgOptions, SHA256_OID,
};
use dps_dice::DiceError;
use dps_pki::ca::LocalCa;
use dps_pki::pem::{parse_certificates, parse_private_key};
use dps_pki::tls::{client_config_with_identity, peer_certificates, server_config};
use dps_pki::CertificateDer;
use rustls::pki_types::{ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

const UDS: [u8; 32] = [
    0x19, 0xe2, 0x5a, 0x25, 0x9d, 0x0c, 0x2b, 0xe0, 0x3a, 0x02, 0xd4, 0x16, 0xc0, 0x5c, 0x48, 0xcc, 0xd0, 0xcc, 0x7d,
    0x17, 0x43, 0x45, 0x8a, 0xae, 0x1c, 0xb4, 0x88, 0xb0, 0x74, 0x99, 0x3e, 0xae,
];
const FIRMWARE_V1: &[u8] = b"firmware image, version 1.0.0";
const FIRMWARE_V2: &[u8] = b"firmware image, version 1.0.1";
const REGISTRATION_ID: &str = "tcg-dice-device-01";

fn options() -> TcgOptions {
    TcgOptions {
        vendor: Some("Contoso".into()),
        model: Some("Sensor 3000".into()),
        version: Some("1.0.0".into()),
        svn: Some(3),
        ..TcgOptions::default()
    }
}

fn identity(firmware: &[u8], opts: &TcgOptions) -> TcgIdentity {
    tcg_identity(&UDS, firmware, REGISTRATION_ID, opts).unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

#[test]
fn same_inputs_give_byte_identical_identities() {
    let a = identity(FIRMWARE_V1, &options());
    let b = identity(FIRMWARE_V1, &options());
    assert_eq!(a, b);
    assert_eq!(a.chain_pem, format!("{}{}", a.alias_cert_pem, a.device_id_cert_pem));
    assert_eq!(a.fwid.as_slice(), Sha256::digest(FIRMWARE_V1).as_slice());
    // The chain PEM parses back to exactly the two DER certificates, Alias first.
    let chain = parse_certificates(&a.chain_pem).unwrap();
    assert_eq!(
        chain,
        vec![a.alias_cert_der.clone().into(), a.device_id_cert_der.clone().into()]
    );
    // A different UDS is a different device.
    let other = tcg_identity(&[7; 32], FIRMWARE_V1, REGISTRATION_ID, &options()).unwrap();
    assert_ne!(other.device_id_public_key, a.device_id_public_key);
}

#[test]
fn a_firmware_update_changes_the_alias_but_not_the_device_id() {
    let v1 = identity(FIRMWARE_V1, &options());
    let v2 = identity(FIRMWARE_V2, &options());
    assert_eq!(v1.device_id_cert_der, v2.device_id_cert_der);
    assert_eq!(v1.device_id_key_pem, v2.device_id_key_pem);
    assert_ne!(v1.alias_cert_der, v2.alias_cert_der);
    assert_ne!(v1.alias_key_pem, v2.alias_key_pem);
    assert_ne!(v1.fwid, v2.fwid);
    // Both Alias certificates chain to the one DeviceID certificate.
    let device = parse(&v1.device_id_cert_der);
    for alias in [&v1.alias_cert_der, &v2.alias_cert_der] {
        parse(alias).verify_signature(Some(device.public_key())).unwrap();
    }
    assert_eq!(parse_tcb_info(&v2.alias_cert_der).unwrap().sha256_fwid(), Some(v2.fwid));
    // The DeviceID alone can be derived without any firmware.
    let device_only = device_id_certificate(&UDS, &options()).unwrap();
    assert_eq!(device_only.cert_der, v1.device_id_cert_der);
    assert_eq!(device_only.public_key, v1.device_id_public_key);
}

#[test]
fn the_chain_verifies_and_the_certificates_have_the_documented_profile() {
    let id = identity(FIRMWARE_V1, &options());
    let alias = parse(&id.alias_cert_der);
    let device = parse(&id.device_id_cert_der);

    device.verify_signature(None).unwrap();
    alias.verify_signature(Some(device.public_key())).unwrap();
    assert_eq!(
        device.public_key().subject_public_key.data.as_ref(),
        &id.device_id_public_key[..]
    );

    // DeviceID: a CA that can only issue end-entity certificates.
    let bc = device.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = device.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && !ku.value.digital_signature());
    assert_eq!(device.subject(), device.issuer());
    let subject = device.subject().to_string();
    assert!(
        subject.starts_with("CN=DeviceID ") && subject.len() == "CN=DeviceID ".len() + 40,
        "{subject}"
    );

    // Alias: the registration id, client authentication, issued by the DeviceID.
    assert_eq!(alias.subject().to_string(), format!("CN={REGISTRATION_ID}"));
    assert_eq!(alias.issuer(), device.subject());
    assert!(alias.basic_constraints().unwrap().is_none());
    let eku = alias.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.client_auth && !eku.critical);
    let ku = alias.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let ski = |c: &X509Certificate<'_>| {
        c.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap()
    };
    let aki = alias
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ski(&device));
    assert_ne!(ski(&alias), ski(&device));
    let tcb = alias
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.23.133.5.4.1")
        .unwrap();
    assert!(!tcb.critical);

    for cert in [&alias, &device] {
        assert_eq!(cert.validity().not_before.timestamp(), 1_735_689_600);
        assert_eq!(cert.validity().not_after.timestamp(), 4_102_444_799);
        assert_eq!(cert.version().0, 2);
        assert!(cert.raw_serial().len() <= 20 && cert.raw_serial()[0] < 0x80);
    }
    assert_ne!(alias.raw_serial(), device.raw_serial());

    // The API's summary reads it like any other device certificate.
    let summary = dps_pki::info::summarize(&id.alias_cert_der).unwrap();
    assert_eq!(summary.common_name.as_deref(), Some(REGISTRATION_ID));
}

#[test]
fn tcb_info_round_trips() {
    let opts = options();
    let id = identity(FIRMWARE_V1, &opts);
    let tcb = parse_tcb_info(&id.alias_cert_der).unwrap();
    assert_eq!(tcb.vendor.as_deref(), Some("Contoso"));
    assert_eq!(tcb.model.as_deref(), Some("Sensor 3000"));
    assert_eq!(tcb.version.as_deref(), Some("1.0.0"));
    assert_eq!(tcb.svn, Some(3));
    assert_eq!(tcb.layer, Some(1));
    assert_eq!(tcb.index, None);
    assert_eq!(tcb.flags, None);
    assert_eq!(tcb.fwids.len(), 1);
    assert_eq!(tcb.fwids[0].hash_algorithm, SHA256_OID);
    assert_eq!(tcb.fwids[0].digest, Sha256::digest(FIRMWARE_V1).to_vec());
    assert_eq!(tcb.sha256_fwid(), Some(id.fwid));

    // Minimal options: only the FWID (and the default layer) are written.
    let minimal = identity(
        FIRMWARE_V1,
        &TcgOptions {
            layer: None,
            ..TcgOptions::default()
        },
    );
    let tcb = parse_tcb_info(&minimal.alias_cert_der).unwrap();
    assert_eq!((tcb.vendor.as_deref(), tcb.svn, tcb.layer), (None, None, None));
    assert_eq!(tcb.sha256_fwid(), Some(minimal.fwid));

    // Certificates without the extension, or without a valid one, give None.
    assert!(parse_tcb_info(&id.device_id_cert_der).is_none());
    let devkit = parse_certificates(include_str!("fixtures/dice/devkit-dps-sample.pem")).unwrap();
    assert!(parse_tcb_info(&devkit[0]).is_none());
    assert!(parse_tcb_info(b"not a certificate").is_none());
}

#[test]
fn webpki_accepts_the_chain_with_the_device_id_as_trust_anchor() {
    let id = identity(FIRMWARE_V1, &options());
    verify_with_webpki(&id.device_id_cert_der, &id.alias_cert_der, &[]);
}

/// Verifies `leaf` (+ `intermediates`) as a TLS client certificate chaining to `root` with
/// webpki, as a strict verifier would.
fn verify_with_webpki(root: &[u8], leaf: &[u8], intermediates: &[Vec<u8>]) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let intermediates: Vec<CertificateDer<'static>> =
        intermediates.iter().map(|c| CertificateDer::from(c.clone())).collect();
    verifier
        .verify_client_cert(&CertificateDer::from(leaf.to_vec()), &intermediates, UnixTime::now())
        .unwrap();
}

#[test]
fn a_ca_can_issue_the_device_id_and_the_alias_stays_the_same() {
    let ca = LocalCa::generate("Contoso factory CA").unwrap();
    let ca_opts = TcgOptions {
        device_id_issuer: DeviceIdIssuer::Ca {
            cert_pem: ca.cert_pem(),
            key_pem: ca.key_pem(),
        },
        ..options()
    };
    let issued = identity(FIRMWARE_V1, &ca_opts);
    let self_signed = identity(FIRMWARE_V1, &options());

    // The DeviceID certificate is the CA's, for the same key and subject.
    let device = parse(&issued.device_id_cert_der);
    let ca_der = ca.cert_der();
    let ca_cert = parse(&ca_der);
    device.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(device.issuer(), ca_cert.subject());
    assert_eq!(device.subject(), parse(&self_signed.device_id_cert_der).subject());
    assert_eq!(issued.device_id_public_key, self_signed.device_id_public_key);
    // A P-256 CA signs deterministically too.
    assert_eq!(identity(FIRMWARE_V1, &ca_opts), issued);
    // The Alias certificate does not depend on who issued the DeviceID.
    assert_eq!(issued.alias_cert_der, self_signed.alias_cert_der);
    verify_with_webpki(
        &ca_der,
        &issued.alias_cert_der,
        std::slice::from_ref(&issued.device_id_cert_der),
    );

    // A device that stored its CA-issued certificate re-derives the rest without the CA key.
    let stored = TcgOptions {
        device_id_issuer: DeviceIdIssuer::Existing {
            cert_pem: issued.device_id_cert_pem.clone(),
        },
        ..options()
    };
    assert_eq!(identity(FIRMWARE_V1, &stored), issued);
    // ... but not with another device's certificate.
    let err = tcg_identity(&[9; 32], FIRMWARE_V1, REGISTRATION_ID, &stored).unwrap_err();
    assert!(matches!(err, DiceError::DeviceIdCertMismatch), "{err:?}");
}

#[test]
fn a_p384_ca_signs_through_rustls() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "P-384 CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca = params.self_signed(&key).unwrap();
    let opts = TcgOptions {
        device_id_issuer: DeviceIdIssuer::Ca {
            cert_pem: ca.pem(),
            key_pem: key.serialize_pem(),
        },
        ..options()
    };
    let id = identity(FIRMWARE_V1, &opts);
    let device = parse(&id.device_id_cert_der);
    assert_eq!(
        device.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.10045.4.3.3"
    );
    device.verify_signature(Some(parse(ca.der()).public_key())).unwrap();
    verify_with_webpki(
        ca.der(),
        &id.alias_cert_der,
        std::slice::from_ref(&id.device_id_cert_der),
    );
}

#[test]
fn unusable_cas_are_refused() {
    let ca = LocalCa::generate("factory").unwrap();
    let other = LocalCa::generate("someone else").unwrap();
    let leaf = ca.issue_server_certificate(&["not-a-ca.example".to_string()]).unwrap();
    for (cert_pem, key_pem, expect) in [
        (ca.cert_pem(), other.key_pem(), "does not belong"),
        (leaf.cert_pem.clone(), leaf.key_pem.clone(), "not a CA"),
        (ca.cert_pem(), String::new(), "private key"),
        ("garbage".to_string(), ca.key_pem(), "certificate"),
    ] {
        let opts = TcgOptions {
            device_id_issuer: DeviceIdIssuer::Ca { cert_pem, key_pem },
            ..options()
        };
        let err = tcg_identity(&UDS, FIRMWARE_V1, REGISTRATION_ID, &opts).unwrap_err();
        assert!(matches!(err, DiceError::InvalidCa(_)), "{err:?}");
        assert!(err.to_string().contains(expect), "{err} should mention {expect:?}");
    }
}

#[test]
fn invalid_registration_ids_are_refused() {
    for bad in ["", "has space", &"a".repeat(65)] {
        assert!(matches!(
            tcg_identity(&UDS, FIRMWARE_V1, bad, &options()),
            Err(DiceError::InvalidRegistrationId { .. })
        ));
    }
}

#[tokio::test]
async fn the_alias_identity_completes_a_tls_handshake_and_the_server_sees_the_chain() {
    let server_ca = LocalCa::generate("dps local CA").unwrap();
    let issued = server_ca
        .issue_server_certificate(&["dps.example.test".to_string()])
        .unwrap();
    let server = server_config(
        &format!("{}{}", issued.cert_pem, server_ca.cert_pem()),
        &issued.key_pem,
        true,
    )
    .unwrap();

    let id = identity(FIRMWARE_V1, &options());
    let expected = vec![
        CertificateDer::from(id.alias_cert_der.clone()),
        CertificateDer::from(id.device_id_cert_der.clone()),
    ];
    // Through the crate's own client configuration (TLS 1.3 negotiated)...
    let client = client_config_with_identity(&server_ca.cert_pem(), &id.chain_pem, &id.alias_key_pem).unwrap();
    let seen = handshake(server.clone(), client, "dps.example.test").await.unwrap();
    assert_eq!(seen, expected);
    // ... and through plain rustls clients pinned to each version (TLS 1.2 for the Python SDK).
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_ca.cert_der()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                parse_certificates(&id.chain_pem).unwrap(),
                parse_private_key(&id.alias_key_pem).unwrap(),
            )
            .unwrap();
        let seen = handshake(server.clone(), Arc::new(client), "dps.example.test")
            .await
            .unwrap();
        assert_eq!(seen, expected, "{version:?}");
    }
}

/// One handshake and a ping/pong; the certificates the server saw.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await?;
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok::<_, std::io::Error>(peer_certificates(tls.get_ref().1))
    };
    let client_side = async move {
        let mut tls = TlsConnector::from(client).connect(server_name, client_io).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await?;
        Ok::<_, std::io::Error>(())
    };
    let (seen, client) = tokio::join!(server_side, client_side);
    client?;
    seen
}
