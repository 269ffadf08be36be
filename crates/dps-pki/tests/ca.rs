//! The local CA: what it generates, what it issues, and when a stored certificate still serves.

use std::net::IpAddr;

use chrono::{TimeDelta, Utc};
use dps_pki::ca::{certificate_covers, certificate_covers_at, LocalCa};
use dps_pki::info::summarize;
use dps_pki::pem::parse_certificates;
use dps_pki::PkiError;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};

const SEC1_KEY: &str = include_str!("fixtures/ec-sec1.key");

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn authority_key_id<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.iter_extensions().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0),
        _ => None,
    })
}

fn subject_key_id<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.iter_extensions().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0),
        _ => None,
    })
}

#[test]
fn generated_ca_is_a_p256_root_valid_for_ten_years() {
    let ca = LocalCa::generate("dps local CA").unwrap();
    let der = ca.cert_der();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();

    assert_eq!(cert.subject().to_string(), "CN=dps local CA");
    assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw(), "self-signed");
    let bc = cert.basic_constraints().unwrap().expect("basicConstraints present");
    assert!(bc.critical && bc.value.ca);
    let ku = cert.key_usage().unwrap().expect("keyUsage present").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(cert.public_key().algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = cert
        .public_key()
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);
    assert!(subject_key_id(&cert).is_some());
    assert!(cert.verify_signature(None).is_ok(), "signed by its own key");

    let s = summarize(&der).unwrap();
    let days = (s.not_after - s.not_before).num_days();
    assert!((3650..=3660).contains(&days), "validity {days} days");
    assert!(s.not_before < Utc::now() && s.not_after > Utc::now());
    assert_eq!(s.version, 3);
}

#[test]
fn ca_survives_a_round_trip_through_pem() {
    let ca = LocalCa::generate("round trip CA").unwrap();
    let loaded = LocalCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.key_pem(), ca.key_pem());

    // What the reloaded CA issues chains to the original certificate.
    let issued = loaded.issue_server_certificate(&names(&["rt.example.test"])).unwrap();
    let leaf_der = parse_certificates(&issued.cert_pem).unwrap().remove(0);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let root_der = ca.cert_der();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());
    assert!(leaf.verify_signature(Some(root.public_key())).is_ok());
    assert_eq!(authority_key_id(&leaf), subject_key_id(&root));
}

#[test]
fn foreign_ca_with_printable_strings_keeps_its_exact_issuer_name() {
    // A CA not made by LocalCa, with PrintableString attributes as OpenSSL writes them: the
    // issued certificate's issuer must be byte-identical to the CA subject or chains break.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CountryName,
        rcgen::DnValue::PrintableString("US".try_into().unwrap()),
    );
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        rcgen::DnValue::PrintableString("Contoso".try_into().unwrap()),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Contoso Root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();

    let ca = LocalCa::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
    let issued = ca.issue_server_certificate(&names(&["contoso.example.test"])).unwrap();
    let leaf_der = parse_certificates(&issued.cert_pem).unwrap().remove(0);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(cert.der()).unwrap();
    assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());
    assert_eq!(leaf.issuer().to_string(), "C=US, O=Contoso, CN=Contoso Root");
}

#[test]
fn from_pem_rejects_what_cannot_issue() {
    let ca = LocalCa::generate("CA one").unwrap();
    let other = LocalCa::generate("CA two").unwrap();
    assert!(matches!(
        LocalCa::from_pem(&ca.cert_pem(), &other.key_pem()),
        Err(PkiError::KeyMismatch)
    ));

    let leaf = ca.issue_server_certificate(&names(&["leaf.example.test"])).unwrap();
    assert!(matches!(
        LocalCa::from_pem(&leaf.cert_pem, &leaf.key_pem),
        Err(PkiError::NotACa)
    ));

    assert!(matches!(
        LocalCa::from_pem(&ca.cert_pem(), SEC1_KEY),
        Err(PkiError::UnsupportedKey(_))
    ));
    assert!(matches!(
        LocalCa::from_pem(&ca.cert_pem(), ""),
        Err(PkiError::NoPrivateKey)
    ));
    assert!(matches!(
        LocalCa::from_pem("", &ca.key_pem()),
        Err(PkiError::NoCertificate)
    ));
}

#[test]
fn server_certificate_has_every_name_as_a_san() {
    let ca = LocalCa::generate("dps local CA").unwrap();
    let hosts = names(&["127.0.0.1", "dps.example.test", "::1"]);
    let issued = ca.issue_server_certificate(&hosts).unwrap();
    assert!(issued.key_pem.contains("-----BEGIN PRIVATE KEY-----"));
    let der = parse_certificates(&issued.cert_pem).unwrap().remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();

    let san = cert.subject_alternative_name().unwrap().expect("SAN present").value;
    let mut ips = Vec::new();
    let mut dns = Vec::new();
    for name in &san.general_names {
        match name {
            GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
            }),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(
        ips,
        vec!["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]
    );
    assert_eq!(dns, vec!["dps.example.test"]);

    assert_eq!(cert.subject().to_string(), "CN=127.0.0.1");
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present")
        .value;
    assert!(!bc.ca);
    let eku = cert.extended_key_usage().unwrap().expect("EKU present").value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(cert
        .key_usage()
        .unwrap()
        .expect("keyUsage present")
        .value
        .digital_signature());

    let root_der = ca.cert_der();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    assert_eq!(authority_key_id(&cert), subject_key_id(&root));
    assert!(authority_key_id(&cert).is_some());
    assert!(cert.verify_signature(Some(root.public_key())).is_ok());

    let s = summarize(&der).unwrap();
    let days = (s.not_after - s.not_before).num_days();
    assert!((729..=733).contains(&days), "validity {days} days");
}

#[test]
fn issuing_needs_valid_names() {
    let ca = LocalCa::generate("dps local CA").unwrap();
    assert!(matches!(ca.issue_server_certificate(&[]), Err(PkiError::NoHostnames)));
    assert!(matches!(
        ca.issue_server_certificate(&names(&["ok.example.test", ""])),
        Err(PkiError::InvalidHostname { .. })
    ));
}

#[test]
fn covers_checks_every_name_and_the_validity() {
    let ca = LocalCa::generate("dps local CA").unwrap();
    let hosts = names(&["127.0.0.1", "dps.example.test", "::1"]);
    let issued = ca.issue_server_certificate(&hosts).unwrap();
    let pem = &issued.cert_pem;

    assert!(certificate_covers(pem, &hosts).unwrap());
    assert!(certificate_covers(pem, &names(&["DPS.Example.Test"])).unwrap());
    assert!(certificate_covers(pem, &names(&["[::1]", "127.0.0.1"])).unwrap());
    assert!(certificate_covers(pem, &[]).unwrap(), "nothing asked, nothing missing");

    assert!(!certificate_covers(pem, &names(&["127.0.0.1", "new.example.test"])).unwrap());
    assert!(!certificate_covers(pem, &names(&["10.0.0.1"])).unwrap());
    assert!(!certificate_covers(pem, &names(&["example.test"])).unwrap());

    // The chain file the server stores (leaf, then CA) is judged by its leaf.
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    assert!(certificate_covers(&chain, &hosts).unwrap());

    let now = Utc::now();
    assert!(certificate_covers_at(pem, &hosts, now + TimeDelta::days(600)).unwrap());
    assert!(
        !certificate_covers_at(pem, &hosts, now + TimeDelta::days(720)).unwrap(),
        "about to expire"
    );
    assert!(
        !certificate_covers_at(pem, &hosts, now + TimeDelta::days(800)).unwrap(),
        "expired"
    );
    assert!(
        !certificate_covers_at(pem, &hosts, now - TimeDelta::days(3)).unwrap(),
        "not yet valid"
    );

    // A certificate without SANs covers no name.
    assert!(!certificate_covers(&ca.cert_pem(), &names(&["dps local CA"])).unwrap());
    assert!(certificate_covers("not a certificate", &hosts).is_err());
}
