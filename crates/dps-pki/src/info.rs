//! The facts the service API shows about a certificate.
//!
//! Enrollments echo an `info` block for each attached certificate (subject, issuer, thumbprints,
//! validity, serial number, version). [`summarize`] produces those facts in the formats Azure
//! uses, from any certificate x509-parser can read — including ones with malformed extensions.

use chrono::{DateTime, Utc};
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

use crate::thumbprint::{sha1_thumbprint, sha256_thumbprint, upper_hex};
use crate::PkiError;

/// What the service API reports about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// The subject as `CN=foo, O=bar`, attributes in certificate order.
    pub subject_name: String,
    /// The issuer, in the same format as `subject_name`.
    pub issuer_name: String,
    /// The first common name of the subject, when it is a readable string. For device
    /// certificates this is the registration id.
    pub common_name: Option<String>,
    /// SHA-1 of the DER, upper-case hex.
    pub sha1_thumbprint: String,
    /// SHA-256 of the DER, upper-case hex.
    pub sha256_thumbprint: String,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
    /// The serial number's DER content bytes as upper-case hex (a leading `00` is kept, as Azure
    /// keeps it).
    pub serial_number: String,
    /// The X.509 version as people count it: 3 for a v3 certificate (the DER says 2).
    pub version: u32,
}

/// Summarises a DER certificate.
///
/// Extension contents are not needed for any field here, so a certificate whose extensions fail
/// to decode is still summarised.
pub fn summarize(der: &[u8]) -> Result<CertificateSummary, PkiError> {
    summarize_parsed(der, &crate::x509::parse(der)?)
}

/// [`summarize`] for a certificate the caller has already parsed from `der`, so that the chain
/// walk does not parse every certificate on its path twice.
pub(crate) fn summarize_parsed(der: &[u8], cert: &X509Certificate<'_>) -> Result<CertificateSummary, PkiError> {
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let validity = cert.validity();
    Ok(CertificateSummary {
        subject_name: cert.subject().to_string(),
        issuer_name: cert.issuer().to_string(),
        common_name,
        sha1_thumbprint: sha1_thumbprint(der),
        sha256_thumbprint: sha256_thumbprint(der),
        not_before: to_chrono(&validity.not_before)?,
        not_after: to_chrono(&validity.not_after)?,
        serial_number: upper_hex(cert.raw_serial()),
        version: cert.version().0 + 1,
    })
}

pub(crate) fn to_chrono(t: &ASN1Time) -> Result<DateTime<Utc>, PkiError> {
    DateTime::from_timestamp(t.timestamp(), 0)
        .ok_or_else(|| PkiError::invalid_certificate(format!("validity time {t} is out of range")))
}
