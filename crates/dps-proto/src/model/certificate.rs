//! CA certificates registered with the service, with proof of possession. The shapes follow the
//! Azure resource-manager `DpsCertificate` API (`CertificateResponse`, `CertificateProperties`,
//! `VerificationCodeResponse`), served here on the service API under `/certificates`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::timefmt;

/// `PUT /certificates/{name}` body: the certificate (PEM or base64 DER), optionally already
/// verified (Azure lets an owner skip proof of possession at upload).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateBody {
    /// PEM or base64 DER.
    #[serde(default)]
    pub certificate: String,
    /// Mark verified without proof of possession.
    #[serde(default)]
    pub is_verified: bool,
}

/// `POST /certificates/{name}/verify` body: a certificate signed by the CA whose CN is the
/// verification code.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationCertificate {
    /// PEM or base64 DER.
    #[serde(default)]
    pub certificate: String,
}

/// A registered CA certificate as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// Certificate name (what `caReferences` refer to).
    pub name: String,
    /// Etag for `If-Match` on verify and delete.
    pub etag: String,
    /// Facts about the certificate.
    pub properties: CertificateProperties,
}

/// `CertificateResponse.properties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateProperties {
    /// Subject distinguished name.
    pub subject: String,
    /// Not-after date.
    #[serde(with = "timefmt::seconds", skip_serializing_if = "Option::is_none", default)]
    pub expiry: Option<DateTime<Utc>>,
    /// Upper-case hex SHA-1 thumbprint (what Azure shows).
    pub thumbprint: String,
    /// Upper-case hex SHA-256 thumbprint.
    pub sha256_thumbprint: String,
    /// Whether proof of possession was completed (or waived at upload).
    pub is_verified: bool,
    /// The certificate, base64 DER.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub certificate: Option<String>,
    /// Present only in the response to `generateVerificationCode`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verification_code: Option<String>,
    /// Upload time.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub created: Option<DateTime<Utc>>,
    /// Last change.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub updated: Option<DateTime<Utc>>,
}
