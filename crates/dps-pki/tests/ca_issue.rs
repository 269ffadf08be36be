//! The local PKI behind `dps ca`: intermediates, device and proof-of-possession certificates, in
//! P-256 and RSA-2048, and that what it issues passes the chain check.

use chrono::{TimeDelta, Utc};
use dps_pki::ca::{DeviceCertificateRequest, KeyAlgorithm, LocalCa};
use dps_pki::chain::{verify_issued_by, verify_path, PathEnd};
use dps_pki::info::summarize;
use dps_pki::pem::{parse_certificates, parse_private_key};
use dps_pki::{CertificateDer, PkiError, PrivateKeyDer};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::{FromDer, X509Certificate};

fn first(pem: &str) -> CertificateDer<'static> {
    parse_certificates(pem).unwrap().remove(0)
}

fn key_id<'a>(cert: &'a X509Certificate<'_>, authority: bool) -> Option<&'a [u8]> {
    cert.iter_extensions().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) if authority => aki.key_identifier.as_ref().map(|k| k.0),
        ParsedExtension::SubjectKeyIdentifier(ski) if !authority => Some(ski.0),
        _ => None,
    })
}

#[test]
fn intermediates_carry_path_length_and_their_chain() {
    let root = LocalCa::generate("Factory Root").unwrap();
    let int1 = root
        .issue_intermediate("Factory Int", Some(1), KeyAlgorithm::EcdsaP256)
        .unwrap();
    let int2 = int1
        .issue_intermediate("Line 7", Some(0), KeyAlgorithm::EcdsaP256)
        .unwrap();

    let d1 = int1.cert_der();
    let (_, c1) = X509Certificate::from_der(&d1).unwrap();
    assert_eq!(c1.subject().to_string(), "CN=Factory Int");
    assert_eq!(c1.issuer().to_string(), "CN=Factory Root");
    let bc = c1.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(1));
    assert!(c1.key_usage().unwrap().unwrap().value.key_cert_sign());
    let root_der = root.cert_der();
    let (_, rc) = X509Certificate::from_der(&root_der).unwrap();
    assert_eq!(key_id(&c1, true), key_id(&rc, false));
    assert!(key_id(&c1, true).is_some());

    let d2 = int2.cert_der();
    let (_, c2) = X509Certificate::from_der(&d2).unwrap();
    assert_eq!(
        c2.basic_constraints().unwrap().unwrap().value.path_len_constraint,
        Some(0)
    );
    // Never valid beyond its issuer.
    assert!(summarize(&d2).unwrap().not_after <= summarize(&d1).unwrap().not_after);
    let days = (summarize(&d1).unwrap().not_after - summarize(&d1).unwrap().not_before).num_days();
    assert!((1825..=1830).contains(&days), "validity {days} days");

    // chain_pem: the CA first, then upward — what a device appends to its leaf.
    assert_eq!(parse_certificates(&root.chain_pem()).unwrap(), vec![root.cert_der()]);
    assert_eq!(
        parse_certificates(&int2.chain_pem()).unwrap(),
        vec![int2.cert_der(), int1.cert_der(), root.cert_der()]
    );
    assert_eq!(
        int2.chain_der(),
        vec![int2.cert_der(), int1.cert_der(), root.cert_der()]
    );

    // Reloaded from its chain file and key, an intermediate keeps its chain and can issue.
    let reloaded = LocalCa::from_pem(&int2.chain_pem(), &int2.key_pem()).unwrap();
    assert_eq!(reloaded.chain_pem(), int2.chain_pem());
    let leaf = reloaded
        .issue_device_certificate("line7-dev", 30, KeyAlgorithm::EcdsaP256)
        .unwrap();
    let mut presented = vec![first(&leaf.cert_pem)];
    presented.extend(reloaded.chain_der());
    let path = verify_path(&presented, &[] as &[CertificateDer], Utc::now()).unwrap();
    assert_eq!(path.end, PathEnd::SelfSignedRoot);
    assert_eq!(path.certs.len(), 4);
}

#[test]
fn device_certificate_is_a_client_certificate_named_by_registration_id() {
    let ca = LocalCa::generate("Device CA").unwrap();
    let issued = ca
        .issue_device_certificate("sensor-0042", 90, KeyAlgorithm::EcdsaP256)
        .unwrap();
    assert!(matches!(
        parse_private_key(&issued.key_pem).unwrap(),
        PrivateKeyDer::Pkcs8(_)
    ));
    let der = first(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(cert.subject().to_string(), "CN=sensor-0042");
    assert_eq!(cert.public_key().algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(cert.subject_alternative_name().unwrap().is_none(), "no SANs by default");
    let s = summarize(&der).unwrap();
    let days = (s.not_after - s.not_before).num_days();
    assert!((90..=92).contains(&days), "validity {days} days");
    verify_issued_by(&der, &ca.cert_der(), Utc::now()).unwrap();
}

#[test]
fn device_certificate_options() {
    let ca = LocalCa::generate("Device CA").unwrap();
    let issued = ca
        .issue_device_certificate_with(&DeviceCertificateRequest {
            subject_alt_names: vec!["sensor-7.example.test".into(), "10.0.0.7".into()],
            validity_days: 10_000,
            ..DeviceCertificateRequest::new("sensor-7")
        })
        .unwrap();
    let der = first(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let sans = &cert.subject_alternative_name().unwrap().unwrap().value.general_names;
    assert_eq!(sans.len(), 2);
    assert!(matches!(sans[0], GeneralName::DNSName("sensor-7.example.test")));
    assert!(matches!(sans[1], GeneralName::IPAddress(ip) if ip == [10, 0, 0, 7]));
    // Ten thousand days asked, but not beyond the CA.
    assert!(summarize(&der).unwrap().not_after <= summarize(&ca.cert_der()).unwrap().not_after);

    // Pre-dated for a factory batch.
    let start = Utc::now() + TimeDelta::days(100);
    let later = ca
        .issue_device_certificate_with(&DeviceCertificateRequest {
            valid_from: Some(start),
            ..DeviceCertificateRequest::new("sensor-8")
        })
        .unwrap();
    let s = summarize(&first(&later.cert_pem)).unwrap();
    assert!(s.not_before > Utc::now() + TimeDelta::days(97));

    for days in [0, -5] {
        assert!(matches!(
            ca.issue_device_certificate("x", days, KeyAlgorithm::EcdsaP256),
            Err(PkiError::InvalidValidity { days: d }) if d == days
        ));
    }
    assert!(matches!(
        ca.issue_device_certificate_with(&DeviceCertificateRequest {
            subject_alt_names: vec!["bad name".into()],
            ..DeviceCertificateRequest::new("x")
        }),
        Err(PkiError::InvalidHostname { .. })
    ));
}

#[test]
fn rsa_2048_throughout() {
    let root = LocalCa::generate_with("RSA Root", KeyAlgorithm::Rsa2048).unwrap();
    let root_der = root.cert_der();
    let (_, rc) = X509Certificate::from_der(&root_der).unwrap();
    assert_eq!(rc.public_key().algorithm.algorithm, OID_PKCS1_RSAENCRYPTION);
    assert_eq!(rc.public_key().parsed().unwrap().key_size(), 2048);

    // The RSA CA key survives a round trip through PKCS#8 PEM and still signs.
    let reloaded = LocalCa::from_pem(&root.cert_pem(), &root.key_pem()).unwrap();
    let device = reloaded
        .issue_device_certificate("rsa-device", 30, KeyAlgorithm::Rsa2048)
        .unwrap();
    let der = first(&device.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(cert.public_key().algorithm.algorithm, OID_PKCS1_RSAENCRYPTION);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(matches!(
        parse_private_key(&device.key_pem).unwrap(),
        PrivateKeyDer::Pkcs8(_)
    ));
    verify_issued_by(&der, &root_der, Utc::now()).unwrap();
    // The device key loads as a TLS client identity.
    dps_pki::tls::client_config_with_identity(&root.cert_pem(), &device.cert_pem, &device.key_pem).unwrap();
}

#[test]
fn verification_certificate_carries_the_code() {
    let root = LocalCa::generate("PoP Root").unwrap();
    let int = root.issue_intermediate("PoP Int", None, KeyAlgorithm::Rsa2048).unwrap();
    for ca in [&root, &int] {
        let code = "3D5F7A0B9C1E2D4F6A8B0C1D2E3F4A5B6C7D8E9F0A1B2C3D";
        let pop = ca.issue_verification_certificate(code).unwrap();
        let der = first(&pop.cert_pem);
        let s = summarize(&der).unwrap();
        assert_eq!(s.common_name.as_deref(), Some(code));
        assert_eq!(s.issuer_name, summarize(&ca.cert_der()).unwrap().subject_name);
        verify_issued_by(&der, &ca.cert_der(), Utc::now()).unwrap();
    }
}
