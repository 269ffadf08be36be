//! Certificate and key input in the forms users actually paste.

use dps_pki::ca::LocalCa;
use dps_pki::pem::{parse_certificates, parse_private_key};
use dps_pki::{PkiError, PrivateKeyDer};

const DEVKIT_PEM: &str = include_str!("fixtures/devkit-dps-sample.pem");
const SEC1_KEY: &str = include_str!("fixtures/ec-sec1.key");
const PKCS1_KEY: &str = include_str!("fixtures/rsa-pkcs1.key");

/// The base64 body of a PEM certificate, as one string without whitespace.
fn body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn pem_with_lf_and_crlf_gives_the_same_der() {
    let ca = LocalCa::generate("pem test CA").unwrap();
    let lf = parse_certificates(&ca.cert_pem()).unwrap();
    assert_eq!(lf, vec![ca.cert_der()]);

    let crlf = ca.cert_pem().replace('\n', "\r\n");
    assert_eq!(parse_certificates(&crlf).unwrap(), lf);
}

#[test]
fn single_line_body_and_single_line_pem_are_accepted() {
    // The fixture itself has its whole body on one 700-character line.
    let devkit = parse_certificates(DEVKIT_PEM).unwrap();
    assert_eq!(devkit.len(), 1);

    // The whole PEM on one line, newlines turned into spaces (what survives some JSON tooling).
    let ca = LocalCa::generate("pem test CA").unwrap();
    let one_line = ca.cert_pem().replace('\n', " ");
    assert_eq!(parse_certificates(&one_line).unwrap(), vec![ca.cert_der()]);
}

#[test]
fn bare_base64_der_is_accepted_with_or_without_line_breaks_and_padding() {
    let ca = LocalCa::generate("pem test CA").unwrap();
    let pem = ca.cert_pem();
    let b64 = body(&pem);
    assert_eq!(parse_certificates(&b64).unwrap(), vec![ca.cert_der()]);

    let wrapped: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\r\n");
    assert_eq!(parse_certificates(&wrapped).unwrap(), vec![ca.cert_der()]);

    let unpadded = b64.trim_end_matches('=');
    assert_eq!(parse_certificates(unpadded).unwrap(), vec![ca.cert_der()]);

    let devkit_b64 = body(DEVKIT_PEM);
    assert_eq!(
        parse_certificates(&devkit_b64).unwrap(),
        parse_certificates(DEVKIT_PEM).unwrap()
    );
}

#[test]
fn chains_keep_their_order_and_other_blocks_are_skipped() {
    let ca = LocalCa::generate("chain CA").unwrap();
    let leaf = ca
        .issue_server_certificate(&["chain.example.test".to_string()])
        .unwrap();
    let text = format!(
        "Bag Attributes: none\n{}{}{}",
        leaf.cert_pem,
        leaf.key_pem,
        ca.cert_pem()
    );
    let certs = parse_certificates(&text).unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[1], ca.cert_der());
    assert_eq!(parse_certificates(&leaf.cert_pem).unwrap()[0], certs[0]);
}

#[test]
fn private_keys_in_all_three_encodings() {
    let ca = LocalCa::generate("key test CA").unwrap();
    assert!(matches!(
        parse_private_key(&ca.key_pem()).unwrap(),
        PrivateKeyDer::Pkcs8(_)
    ));
    assert!(matches!(
        parse_private_key(&ca.key_pem().replace('\n', "\r\n")).unwrap(),
        PrivateKeyDer::Pkcs8(_)
    ));
    // `openssl ecparam -genkey` output: an EC PARAMETERS block, then the SEC1 key.
    assert!(SEC1_KEY.contains("EC PARAMETERS"));
    assert!(matches!(parse_private_key(SEC1_KEY).unwrap(), PrivateKeyDer::Sec1(_)));
    assert!(matches!(parse_private_key(PKCS1_KEY).unwrap(), PrivateKeyDer::Pkcs1(_)));
}

#[test]
fn a_certificate_is_not_a_key_and_a_key_is_not_a_certificate() {
    assert!(matches!(parse_private_key(DEVKIT_PEM), Err(PkiError::NoPrivateKey)));
    assert!(matches!(parse_certificates(SEC1_KEY), Err(PkiError::NoCertificate)));
}

#[test]
fn truncated_der_is_rejected() {
    let ca = LocalCa::generate("truncation CA").unwrap();
    let der = ca.cert_der();
    use base64::Engine as _;
    let truncated = base64::engine::general_purpose::STANDARD.encode(&der[..der.len() / 2]);
    let err = parse_certificates(&truncated).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCertificate(_)), "{err:?}");
}

#[test]
fn certificate_requests_are_read_from_pem_and_base64() {
    use base64::Engine as _;
    use dps_pki::pem::{parse_certificate_request, to_pem};
    let (_, der) = dps_pki::csr::new_key_and_request("dev-1", dps_pki::ca::KeyAlgorithm::EcdsaP256).unwrap();
    let pem = to_pem("CERTIFICATE REQUEST", &der);
    assert_eq!(parse_certificate_request(&pem).unwrap(), der);
    // Windows certreq's label, CRLF line ends, the whole of it on one line.
    let new = to_pem("NEW CERTIFICATE REQUEST", &der).replace('\n', "\r\n");
    assert_eq!(parse_certificate_request(&new).unwrap(), der);
    assert_eq!(parse_certificate_request(&pem.replace('\n', " ")).unwrap(), der);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    assert_eq!(parse_certificate_request(&b64).unwrap(), der);
    // A certificate is not a request.
    assert!(parse_certificate_request(DEVKIT_PEM).is_err());
}
