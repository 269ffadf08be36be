//! Reading certificates and keys from the text users give us.
//!
//! The Azure service API accepts an enrollment certificate either as PEM or as bare base64 DER,
//! and what arrives in JSON bodies is often mangled: CRLF line ends, the body on one line, or the
//! whole PEM on one line with spaces where newlines were. [`parse_certificates`] accepts all of
//! these. The decoding itself is done by `rustls-pki-types`; this module only puts every
//! `-----BEGIN …-----`/`-----END …-----` marker back on a line of its own first.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

use crate::PkiError;

/// Standard-alphabet base64 that accepts the body with or without `=` padding, since pasted
/// certificates lose their padding as often as their line breaks.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses one or more certificates from PEM text or from bare base64 DER.
///
/// PEM input may hold several `CERTIFICATE` blocks (a chain, leaf first by convention) and other
/// blocks, which are skipped. Input without any `-----BEGIN` marker is taken as the base64 of a
/// single DER certificate, whitespace ignored. Every certificate returned has been checked to be
/// readable X.509, so callers can summarise or thumbprint it without a second failure mode.
pub fn parse_certificates(pem_or_b64: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let text = pem_or_b64.trim();
    let certs = if text.contains("-----BEGIN") {
        let normalised = normalise_armour(text);
        CertificateDer::pem_slice_iter(normalised.as_bytes()).collect::<Result<Vec<_>, _>>()?
    } else {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.is_empty() {
            return Err(PkiError::NoCertificate);
        }
        vec![CertificateDer::from(LENIENT_BASE64.decode(compact)?)]
    };
    if certs.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    for cert in &certs {
        crate::x509::parse(cert)?;
    }
    Ok(certs)
}

/// Reads a certificate signing request (DER PKCS#10, not yet verified) from PEM (`CERTIFICATE
/// REQUEST`, or `NEW CERTIFICATE REQUEST` as Windows `certreq` and `openssl req -newhdr` write
/// it; the first block) or from bare base64 DER, with the same tolerance for mangled text as
/// [`parse_certificates`].
pub fn parse_certificate_request(pem_or_b64: &str) -> Result<Vec<u8>, PkiError> {
    let text = pem_or_b64.trim();
    if text.contains("-----BEGIN") {
        let normalised = normalise_armour(text).replace("NEW CERTIFICATE REQUEST-----", "CERTIFICATE REQUEST-----");
        Ok(CertificateSigningRequestDer::from_pem_slice(normalised.as_bytes())?.to_vec())
    } else {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        Ok(LENIENT_BASE64.decode(compact)?)
    }
}

/// Parses the first private key in PEM text: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or
/// PKCS#1 (`RSA PRIVATE KEY`).
///
/// Other blocks are skipped, so `openssl ecparam -genkey` output (an `EC PARAMETERS` block
/// before the key) and combined certificate-plus-key files work as they are.
pub fn parse_private_key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    let normalised = normalise_armour(pem);
    match PrivateKeyDer::from_pem_slice(normalised.as_bytes()) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(PkiError::NoPrivateKey),
        Err(e) => Err(e.into()),
    }
}

/// Rewrites PEM text so that each armour marker is on its own line and each block body is a
/// single line without whitespace — the shape the `rustls-pki-types` reader expects.
///
/// Text between blocks (OpenSSL's "Bag Attributes", `subject=` lines) is kept as a line outside
/// any block, where the reader ignores it.
fn normalise_armour(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(start) = find_marker(rest) {
        push_body(&mut out, &rest[..start]);
        let marker = &rest[start..];
        // The marker ends at the first "-----" after its opening dashes and label.
        let label_end = marker[5..].find("-----").map(|i| i + 10).unwrap_or(marker.len());
        out.push_str(&marker[..label_end]);
        out.push('\n');
        rest = &marker[label_end..];
    }
    push_body(&mut out, rest);
    out
}

fn find_marker(text: &str) -> Option<usize> {
    match (text.find("-----BEGIN "), text.find("-----END ")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn push_body(out: &mut String, body: &str) {
    let start = out.len();
    out.extend(body.chars().filter(|c| !c.is_whitespace()));
    if out.len() > start {
        out.push('\n');
    }
}

/// PEM armour for DER: body wrapped at 64 columns as OpenSSL writes it (RFC 7468), LF line ends.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_splits_one_line_pem() {
        let one_line = "-----BEGIN CERTIFICATE----- AAAA BBBB -----END CERTIFICATE-----";
        assert_eq!(
            normalise_armour(one_line),
            "-----BEGIN CERTIFICATE-----\nAAAABBBB\n-----END CERTIFICATE-----\n"
        );
    }

    #[test]
    fn normalise_handles_crlf_and_text_between_blocks() {
        let text = "subject=CN = a\r\n-----BEGIN X-----\r\nAA\r\nBB\r\n-----END X-----\r\n";
        assert_eq!(
            normalise_armour(text),
            "subject=CN=a\n-----BEGIN X-----\nAABB\n-----END X-----\n"
        );
    }

    #[test]
    fn empty_and_key_only_inputs_have_no_certificate() {
        assert!(matches!(parse_certificates(""), Err(PkiError::NoCertificate)));
        assert!(matches!(parse_certificates("  \n "), Err(PkiError::NoCertificate)));
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(parse_certificates(key_only), Err(PkiError::NoCertificate)));
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert!(matches!(
            parse_certificates("not base64 at all!"),
            Err(PkiError::Base64(_))
        ));
        // Valid base64, but not a certificate.
        assert!(matches!(
            parse_certificates("aGVsbG8gd29ybGQ="),
            Err(PkiError::InvalidCertificate(_))
        ));
        let unterminated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(parse_certificates(unterminated), Err(PkiError::Pem(_))));
    }

    #[test]
    fn missing_key_is_reported_as_such() {
        assert!(matches!(parse_private_key(""), Err(PkiError::NoPrivateKey)));
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(parse_private_key(cert_only), Err(PkiError::NoPrivateKey)));
    }
}
