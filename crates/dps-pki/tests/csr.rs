//! Devices' certificate signing requests: verified, refused with the reason, and issued for with
//! the CA's chain (issue 17, point 2).

use chrono::Utc;
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_pki::csr::{CertificateRequest, CsrError, IssuePolicy, RequestKey};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

fn key(alg: &'static rcgen::SignatureAlgorithm) -> KeyPair {
    if alg == &rcgen::PKCS_RSA_SHA256 {
        use rsa::pkcs8::EncodePrivateKey;
        let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let der = rsa.to_pkcs8_der().unwrap();
        let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
        return KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, alg).unwrap();
    }
    KeyPair::generate_for(alg).unwrap()
}

fn csr(cn: Option<&str>, key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.distinguished_name.push(DnType::OrganizationName, "Contoso");
    params.serialize_request(key).unwrap().der().to_vec()
}

fn policy(cn: &str, days: i64) -> IssuePolicy {
    IssuePolicy {
        common_name: cn.into(),
        validity_days: days,
        now: Utc::now(),
        crl_url: None,
    }
}

#[test]
fn requests_of_every_supported_key_are_verified_and_issued_for() {
    let root = LocalCa::generate_with("CSR Root", KeyAlgorithm::EcdsaP384).unwrap();
    let issuing = root
        .issue_intermediate("CSR Issuing", Some(0), KeyAlgorithm::EcdsaP256)
        .unwrap();
    for (alg, expected) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, RequestKey::EcdsaP256),
        (&rcgen::PKCS_ECDSA_P384_SHA384, RequestKey::EcdsaP384),
        (&rcgen::PKCS_RSA_SHA256, RequestKey::Rsa(2048)),
    ] {
        let device_key = key(alg);
        let request = CertificateRequest::parse(&csr(Some("dev-42"), &device_key)).unwrap();
        assert_eq!(request.common_name(), "dev-42");
        assert_eq!(request.key(), expected);
        let cert = issuing.issue_for_request(&request, &policy("Dev-42", 30)).unwrap();
        dps_pki::chain::verify_issued_by(&cert, &issuing.cert_der(), Utc::now()).unwrap();
        let parsed = dps_pki::x509::parse(&cert).unwrap();
        assert_eq!(
            parsed.public_key().subject_public_key.data.as_ref(),
            device_key.public_key_raw(),
            "{expected}: the certificate is for the device's own key"
        );
        let info = dps_pki::chain::leaf_info(&cert).unwrap();
        assert_eq!(info.registration_id, "Dev-42", "the issuer decides the subject");
        assert_eq!(
            parsed.subject().iter_organization().count(),
            0,
            "nothing else is copied"
        );
        let days = (dps_pki::info::summarize(&cert).unwrap().not_after - Utc::now()).num_days();
        assert!((29..=30).contains(&days), "{days}");
        // The whole chain verifies as a device's TLS client chain would.
        let anchors = [root.cert_der()];
        let path = dps_pki::chain::verify_path(&[cert.clone(), issuing.cert_der()], &anchors, Utc::now()).unwrap();
        assert_eq!(
            path.top().sha256_thumbprint(),
            dps_pki::thumbprint::sha256_thumbprint(&root.cert_der())
        );
        // Two certificates for the same key never share a serial.
        let again = issuing.issue_for_request(&request, &policy("dev-42", 30)).unwrap();
        assert_ne!(
            dps_pki::info::summarize(&cert).unwrap().serial_number,
            dps_pki::info::summarize(&again).unwrap().serial_number
        );
    }
}

#[test]
fn devices_make_their_key_and_request_in_one_call() {
    for alg in KeyAlgorithm::ALL {
        let (key_pem, der) = dps_pki::csr::new_key_and_request("dev-9", alg).unwrap();
        let request = CertificateRequest::parse(&der).unwrap();
        assert_eq!(request.common_name(), "dev-9");
        assert_eq!(request.key().to_string(), alg.name());
        assert!(key_pem.contains("PRIVATE KEY"));
    }
}

#[test]
fn certificates_never_outlive_their_ca() {
    let root = LocalCa::generate("Short Root").unwrap();
    let request = CertificateRequest::parse(&csr(Some("d"), &key(&rcgen::PKCS_ECDSA_P256_SHA256))).unwrap();
    let cert = root.issue_for_request(&request, &policy("d", 100_000)).unwrap();
    let ca_end = dps_pki::info::summarize(&root.cert_der()).unwrap().not_after;
    assert!(dps_pki::info::summarize(&cert).unwrap().not_after <= ca_end);
    assert!(root.issue_for_request(&request, &policy("d", 0)).is_err());
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let device_key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let good = csr(Some("dev-1"), &device_key);

    // The signature no longer matches once a byte of the subject changes.
    let mut tampered = good.clone();
    let at = tampered.windows(5).position(|w| w == b"dev-1").unwrap();
    tampered[at + 4] = b'2';
    assert_eq!(
        CertificateRequest::parse(&tampered).unwrap_err(),
        CsrError::BadSignature
    );

    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        CertificateRequest::parse(&trailing),
        Err(CsrError::NotARequest(m)) if m.contains("1 bytes follow")
    ));
    assert!(matches!(CertificateRequest::parse(&[]), Err(CsrError::NotARequest(_))));
    assert!(matches!(
        CertificateRequest::parse(&good[..good.len() / 2]),
        Err(CsrError::NotARequest(_))
    ));
    assert!(matches!(
        CertificateRequest::parse(&vec![0x30; 9000]),
        Err(CsrError::TooLarge(9000))
    ));
    assert_eq!(
        CertificateRequest::parse(&csr(None, &device_key)).unwrap_err(),
        CsrError::NoCommonName
    );
    let ed = csr(Some("dev-1"), &key(&rcgen::PKCS_ED25519));
    assert!(matches!(
        CertificateRequest::parse(&ed),
        Err(CsrError::UnsupportedKey(_))
    ));
    // A certificate is not a request.
    let ca = LocalCa::generate("Not A CSR").unwrap();
    assert!(matches!(
        CertificateRequest::parse(&ca.cert_der()),
        Err(CsrError::NotARequest(_))
    ));
}
