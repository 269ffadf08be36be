//! Credential policies (`/credentialPolicies/{name}`, dps's own resource): how the service issues
//! operational X.509 certificates to devices that send a certificate signing request when they
//! register. Enrollments and groups name one (`credentialPolicyName`, the `2025-07-01-preview`
//! field, or the older `clientCertificateIssuancePolicy.certificateAuthorityName`).
//!
//! Azure keeps these in Azure Device Registry ("credential policies" of a namespace, one issuing
//! CA each, ECC P-384); dps keeps them in the provisioning service itself, each with its own
//! issuing CA: built in (made by the server) or brought (a CA certificate and key the operator
//! uploads).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::timefmt;

/// `PUT /credentialPolicies/{name}` body.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialPolicyBody {
    /// The issuing CA's key type: `P-256` (the default), `P-384` or `RSA-2048`. For a brought CA
    /// it is read from the key (and must agree when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// How long issued device certificates are valid, in days (1 to 3650; 30 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_in_days: Option<u32>,
    /// A CA to issue with instead of one the server makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<BroughtCertificateAuthority>,
    /// The etag to replace (as `If-Match`, which wins when both are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl std::fmt::Debug for CredentialPolicyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialPolicyBody")
            .field("key_type", &self.key_type)
            .field("validity_in_days", &self.validity_in_days)
            .field(
                "certificate_authority",
                &self.certificate_authority.as_ref().map(|_| "<brought>"),
            )
            .field("etag", &self.etag)
            .finish()
    }
}

/// A CA the operator brings: its certificate (PEM, the issuing CA first, then the CAs above
/// it) and its PKCS#8 private key (PEM). The key is never shown again.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BroughtCertificateAuthority {
    /// PEM: the issuing CA's certificate, then its chain up to the root.
    #[serde(default)]
    pub certificates: String,
    /// PEM PKCS#8 private key of the issuing CA.
    #[serde(default)]
    pub private_key: String,
}

/// Where a policy's issuing CA came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CertificateAuthorityKind {
    /// Made by the server when the policy was created: a root of its own (whose key was
    /// discarded once it signed) and an issuing CA under it.
    #[default]
    BuiltIn,
    /// Uploaded by the operator.
    Brought,
}

/// A credential policy as the API shows it (never with the CA's private key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialPolicy {
    /// Its name, as enrollments' `credentialPolicyName` names it.
    pub name: String,
    /// Etag for `If-Match`.
    pub etag: String,
    /// The issuing CA's key type: `P-256`, `P-384` or `RSA-2048`.
    pub key_type: String,
    /// Validity of issued device certificates, in days.
    pub validity_in_days: u32,
    /// The issuing CA.
    pub certificate_authority: CertificateAuthorityInfo,
    /// Creation time.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub created_date_time_utc: Option<DateTime<Utc>>,
    /// Last change.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub last_updated_date_time_utc: Option<DateTime<Utc>>,
}

/// `CredentialPolicy.certificateAuthority`: facts about the issuing CA.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAuthorityInfo {
    /// Built in or brought.
    pub kind: CertificateAuthorityKind,
    /// The issuing CA's subject.
    pub subject: String,
    /// Upper-case hex SHA-256 thumbprint of the issuing CA.
    pub sha256_thumbprint: String,
    /// The issuing CA's not-after date.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub not_after_utc: Option<DateTime<Utc>>,
    /// The issuing CA's certificate and the CAs above it, base64 DER, issuing CA first: what
    /// follows the device's own certificate in `issuedCertificateChain`.
    pub certificates: Vec<String>,
}

/// `GET /credentialPolicies`: every policy, as Azure's resource lists are shaped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CredentialPolicyList {
    /// The policies, by name.
    #[serde(default)]
    pub value: Vec<CredentialPolicy>,
}
