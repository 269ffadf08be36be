//! Tolerant X.509 reading shared by the other modules.

use x509_parser::certificate::X509Certificate;

use crate::PkiError;

/// Parses a DER certificate, tolerating extensions whose contents are malformed.
///
/// Device certificates in the wild carry odd extensions — the MXChip DevKit DICE alias
/// certificate has a *critical* subjectAltName whose otherName lacks its `[0] EXPLICIT` wrapper —
/// and the service must still summarise and thumbprint them (judging them is the engine's job).
/// x509-parser decodes extension contents one by one and records a failure as
/// `ParsedExtension::ParseError` on that extension instead of failing the certificate, so callers
/// that need an extension must treat an unreadable one as absent. Only a broken certificate
/// structure (outer SEQUENCE, names, validity, key info) is an error here.
pub fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(PkiError::invalid_certificate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;

    const DEVKIT_PEM: &str = include_str!("../tests/fixtures/devkit-dps-sample.pem");

    /// A certificate whose critical subjectAltName holds `content` verbatim.
    fn cert_with_san_content(content: Vec<u8>) -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        let mut san = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], content);
        san.set_criticality(true);
        params.custom_extensions.push(san);
        params.self_signed(&key).unwrap()
    }

    #[test]
    fn devkit_othername_is_kept_raw() {
        let der = crate::pem::parse_certificates(DEVKIT_PEM).unwrap().remove(0);
        let cert = parse(&der).unwrap();
        let san = cert
            .extensions()
            .iter()
            .find(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME)
            .expect("the fixture has a SAN");
        assert!(san.critical);
        match san.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(names) => {
                assert!(
                    matches!(names.general_names.as_slice(), [GeneralName::OtherName(oid, _)]
                    if oid.to_id_string() == "1.3.6.1.4.1.311.89.3.1")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn san_that_is_not_der_is_recorded_not_fatal() {
        // An OCTET STRING where a SEQUENCE of GeneralName belongs.
        let cert = cert_with_san_content(vec![0x04, 0x01, 0xff]);
        let parsed = parse(cert.der()).unwrap();
        assert!(parsed.subject_alternative_name().is_err());
        let san = parsed
            .extensions()
            .iter()
            .find(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME)
            .unwrap();
        assert!(matches!(san.parsed_extension(), ParsedExtension::ParseError { .. }));

        let summary = crate::info::summarize(cert.der()).unwrap();
        assert_eq!(summary.common_name.as_deref(), Some("rcgen self signed cert"));
        assert!(!crate::ca::certificate_covers(&cert.pem(), &["localhost".to_string()]).unwrap());
    }
}
