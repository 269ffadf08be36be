//! Certificate signing requests (PKCS#10) that devices send to get their operational
//! certificate, and the certificates a CA issues for them.
//!
//! A device's request is untrusted input: [`CertificateRequest::parse`] takes exactly one DER
//! request, verifies its self-signature (the device holds the key it asks a certificate for),
//! and accepts only the key types devices and verifiers commonly share (ECDSA P-256 and P-384,
//! RSA of 2048 to 4096 bits). What it asks for besides its key (names, extensions) is not
//! copied: the issuing side decides the subject and the extensions.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::ca::LocalCa;
use crate::PkiError;

/// The largest request accepted: an RSA-4096 request with a few names is under 2 KiB.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Why a device's certificate signing request was refused. The messages go to the device and
/// say what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// More than [`MAX_REQUEST_BYTES`].
    #[error("the certificate signing request is {0} bytes; at most {MAX_REQUEST_BYTES} are accepted")]
    TooLarge(usize),
    /// Not a DER PKCS#10 request (or bytes after it).
    #[error("not a DER PKCS#10 certificate signing request: {0}")]
    NotARequest(String),
    /// The request's signature does not verify with the key it carries: it was not made by the
    /// holder of that key, or was altered.
    #[error("the certificate signing request's signature does not verify with its own public key")]
    BadSignature,
    /// A key this service does not issue certificates for.
    #[error("the certificate signing request's key is {0}; use ECDSA P-256 or P-384, or RSA of 2048 to 4096 bits")]
    UnsupportedKey(String),
    /// The subject has no common name.
    #[error("the certificate signing request's subject has no CN (it must be the registration id)")]
    NoCommonName,
}

/// The key a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKey {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA with a modulus of this many bits.
    Rsa(usize),
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestKey::EcdsaP256 => f.write_str("P-256"),
            RequestKey::EcdsaP384 => f.write_str("P-384"),
            RequestKey::Rsa(bits) => write!(f, "RSA-{bits}"),
        }
    }
}

/// A verified certificate signing request.
pub struct CertificateRequest {
    common_name: String,
    key: RequestKey,
    public_key: rcgen::SubjectPublicKeyInfo,
}

impl fmt::Debug for CertificateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateRequest")
            .field("common_name", &self.common_name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertificateRequest {
    /// Parses and verifies a DER request.
    pub fn parse(der: &[u8]) -> Result<CertificateRequest, CsrError> {
        if der.len() > MAX_REQUEST_BYTES {
            return Err(CsrError::TooLarge(der.len()));
        }
        let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| CsrError::NotARequest(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::NotARequest(format!(
                "{} bytes follow the request",
                rest.len()
            )));
        }
        let info = &csr.certification_request_info;
        let key = match info.subject_pki.parsed() {
            Ok(PublicKey::EC(point)) => match point.key_size() {
                256 => RequestKey::EcdsaP256,
                384 => RequestKey::EcdsaP384,
                bits => return Err(CsrError::UnsupportedKey(format!("an EC key of {bits} bits"))),
            },
            Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
                bits @ 2048..=4096 => RequestKey::Rsa(bits),
                bits => return Err(CsrError::UnsupportedKey(format!("RSA-{bits}"))),
            },
            Ok(other) => {
                return Err(CsrError::UnsupportedKey(
                    format!("{other:?}").chars().take(40).collect(),
                ))
            }
            Err(e) => return Err(CsrError::UnsupportedKey(format!("unreadable ({e})"))),
        };
        // A P-256 key is also told by its curve, not only its size (a Brainpool 256 is not one).
        let curve = info
            .subject_pki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        match (key, curve.as_deref()) {
            (RequestKey::EcdsaP256, Some("1.2.840.10045.3.1.7")) | (RequestKey::EcdsaP384, Some("1.3.132.0.34")) => {}
            (RequestKey::EcdsaP256 | RequestKey::EcdsaP384, c) => {
                return Err(CsrError::UnsupportedKey(format!(
                    "an EC key on curve {}",
                    c.unwrap_or("?")
                )))
            }
            (RequestKey::Rsa(_), _) => {}
        }
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        let common_name = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .ok_or(CsrError::NoCommonName)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
        Ok(CertificateRequest {
            common_name,
            key,
            public_key,
        })
    }

    /// The subject CN the device asked for.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// The key the certificate is for.
    pub fn key(&self) -> RequestKey {
        self.key
    }

    /// The request's public key (the subjectPublicKey bits, as a certificate for it carries).
    pub fn public_key_bits(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&self.public_key)
    }
}

/// A device's side: a fresh key of `alg` and a request for it with subject CN `common_name`
/// (the registration id). Returns the key (PKCS#8 PEM, to keep) and the request (DER, to send).
pub fn new_key_and_request(common_name: &str, alg: crate::ca::KeyAlgorithm) -> Result<(String, Vec<u8>), PkiError> {
    let key = alg.generate()?;
    let request = request_for(common_name, &key)?;
    Ok((key.serialize_pem(), request))
}

/// A request (DER) with subject CN `common_name` for the key a device already has (PKCS#8 PEM):
/// a renewal that keeps its key.
pub fn request_for_key_pem(common_name: &str, key_pem: &str) -> Result<Vec<u8>, PkiError> {
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| PkiError::UnsupportedKey(format!("{e} (a PKCS#8 PEM key is needed)")))?;
    request_for(common_name, &key)
}

/// A request (DER) with subject CN `common_name` for `key`, signed by it.
pub(crate) fn request_for(common_name: &str, key: &rcgen::KeyPair) -> Result<Vec<u8>, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// What to put in an issued device certificate.
#[derive(Debug, Clone)]
pub struct IssuePolicy {
    /// Subject CN (the registration id: what DPS and the hub match on).
    pub common_name: String,
    /// Days of validity from `now` (at least 1; capped at the CA's own expiry).
    pub validity_days: i64,
    /// The start of validity (backdated a little so that devices with a slow clock accept it).
    pub now: DateTime<Utc>,
    /// Where the issuing CA's revocation list is served (a CRL distribution point), if
    /// anywhere.
    pub crl_url: Option<String>,
}

/// How far an issued device certificate is backdated: a device whose clock lags a few minutes
/// still accepts it, and nobody can use it before it was asked for by much.
const BACKDATE_MINUTES: i64 = 5;

impl LocalCa {
    /// Issues a TLS client certificate for the key of `request`, as `policy` says: CN = the
    /// policy's name (whatever the request asked for), `CA:FALSE`, digitalSignature (and
    /// keyEncipherment for RSA), EKU clientAuth, the CA's key identifier, a random serial.
    /// Returns the certificate alone (DER); the CA's chain follows it in what a device is given.
    pub fn issue_for_request(
        &self,
        request: &CertificateRequest,
        policy: &IssuePolicy,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let key_usages = match request.key {
            RequestKey::Rsa(_) => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
            _ => vec![KeyUsagePurpose::DigitalSignature],
        };
        let mut params = crate::ca::client_params(&policy.common_name, policy.validity_days, key_usages)?;
        params.serial_number = Some(random_serial());
        if let Some(url) = &policy.crl_url {
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![url.clone()],
            }];
        }
        let start = policy.now - TimeDelta::minutes(BACKDATE_MINUTES);
        params.not_before = to_offset(start);
        let end = (policy.now + TimeDelta::days(policy.validity_days)).min(self.not_after());
        params.not_after = to_offset(end);
        self.sign(params, &request.public_key)
    }
}

/// 16 random bytes, positive: unique among everything a CA issues (revocation names
/// certificates by issuer and serial), and never derived from the key, which a renewal may
/// keep.
fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn to_offset(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
