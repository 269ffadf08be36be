//! Certificate facts for the service API (`X509CertificateInfo`). Chain checks live in
//! `dps_pki::chain` (one implementation for attestation and proof of possession).

use dps_pki::info::CertificateSummary;
use dps_proto::model::service::X509CertificateInfo;

/// The `info` block the service API shows for a certificate.
pub fn info_of(s: &CertificateSummary) -> X509CertificateInfo {
    X509CertificateInfo {
        subject_name: s.subject_name.clone(),
        sha1_thumbprint: s.sha1_thumbprint.clone(),
        sha256_thumbprint: s.sha256_thumbprint.clone(),
        issuer_name: s.issuer_name.clone(),
        not_before_utc: Some(s.not_before),
        not_after_utc: Some(s.not_after),
        serial_number: s.serial_number.clone(),
        version: s.version as i32,
    }
}
