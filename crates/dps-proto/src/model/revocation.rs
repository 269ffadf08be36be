//! Certificate revocation (dps's own resources; Azure DPS has no X.509 revocation list): revoked
//! device certificates (`/revocations`), refused at DPS registration and at the hub, and
//! certificate revocation lists of enrolled CAs (`/crls`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::timefmt;

/// `POST /revocations`: revokes one certificate, named by the certificate itself, by issuer
/// and serial number, or by SHA-256 thumbprint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationBody {
    /// The certificate (PEM or base64 DER): its issuer, serial number and thumbprint are
    /// revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The issuer's distinguished name, as the API shows certificates' issuers
    /// (`CN=Contoso Root, O=Contoso`); with `serialNumber`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The serial number in hex (colons and case do not matter); with `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// A SHA-256 thumbprint (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_thumbprint: Option<String>,
    /// Why (free text, kept for the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A revoked certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// Its id: derived from what it names, so revoking the same certificate twice is one entry.
    pub id: String,
    /// The issuer's distinguished name, when revoked by issuer and serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The serial number, upper-case hex without leading zeros, with `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// The SHA-256 thumbprint, upper-case hex, when revoked by thumbprint (or known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_thumbprint: Option<String>,
    /// The revoked certificate's subject, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `manual`, or `crl` for an entry of an imported revocation list.
    pub source: String,
    /// When it was revoked (an imported list's revocation date).
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub revoked_date_time_utc: Option<DateTime<Utc>>,
}

/// `GET /revocations`: a page of revoked certificates, by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RevocationList {
    /// The entries.
    #[serde(default)]
    pub value: Vec<Revocation>,
}

/// `POST /crls`: a certificate revocation list of a CA the service knows (PEM or base64 DER).
/// It replaces the list imported before from the same issuer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrlImport {
    /// The CRL, PEM (`X509 CRL`) or base64 DER.
    #[serde(default)]
    pub crl: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrlImportResult {
    /// The issuing CA's distinguished name.
    pub issuer: String,
    /// Revoked certificates in the list.
    pub revoked: usize,
    /// Entries of the issuer's previous list that are gone.
    pub removed: usize,
    /// The list's thisUpdate.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub this_update: Option<DateTime<Utc>>,
    /// The list's nextUpdate.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub next_update: Option<DateTime<Utc>>,
}
