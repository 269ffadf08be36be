//! The local certificate authority used in development, self-hosted setups and factories.
//!
//! A fresh server needs a TLS certificate that devices can be told to trust. Rather than
//! shipping a self-signed leaf, the server keeps a small root CA in its data directory and
//! issues its listener certificate from it; users then trust one CA file (`--ca-cert` in the
//! SDKs) that survives re-issuing the server certificate for new host names. (It keeps two such
//! roots, P-256 and RSA, so that devices without ECDSA are served too; decision 0018.)
//!
//! The same type is the PKI behind `dps ca`: X.509 enrollment groups need a CA hierarchy (root,
//! intermediates with path-length limits), device certificates whose CN is the registration id,
//! and proof-of-possession certificates whose CN is the verification code the service hands out.
//! Azure users make these with OpenSSL scripts; offering them here lets a factory or a developer
//! go from nothing to a provisioned X.509 device without them. Keys are P-256 by default and
//! RSA-2048 for devices and tools that only speak RSA.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::pem::{parse_certificates, parse_private_key, to_pem};
use crate::PkiError;

/// How long a generated CA is valid: long enough that nobody re-distributes it in practice.
const CA_VALIDITY_DAYS: i64 = 3652;
/// How long an issued server certificate is valid. Clients that enforce the browsers' 398-day
/// limit are not among the ones this serves (device SDKs, Python's `ssl`, rustls).
const SERVER_VALIDITY_DAYS: i64 = 730;
/// Certificates start a day in the past so that a device whose clock lags still accepts them.
const BACKDATE_DAYS: i64 = 1;
/// A server certificate that expires within this margin no longer "covers" its host names, so
/// a restart re-issues it before it can lapse under a long-running server.
const RENEWAL_MARGIN_DAYS: i64 = 30;
/// Upper bound of the X.520 CommonName; longer host names go only into the SANs.
const MAX_COMMON_NAME_LEN: usize = 64;

/// Key algorithm for generated CAs and certificates: P-256 by default, RSA-2048 for devices and
/// tools that only speak RSA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384 (what Azure's certificate management issues with).
    EcdsaP384,
    /// RSA-2048, PKCS#1 v1.5 signatures with SHA-256.
    Rsa2048,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl KeyAlgorithm {
    /// Every algorithm, in the order menus list them.
    pub const ALL: [KeyAlgorithm; 3] = [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa2048];

    /// The name operators know it by: `P-256`, `P-384`, `RSA-2048`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "P-256",
            KeyAlgorithm::EcdsaP384 => "P-384",
            KeyAlgorithm::Rsa2048 => "RSA-2048",
        }
    }

    /// The algorithm [`name`](Self::name) names, read leniently (case, `-` and `_` do not
    /// matter, and an `ECC`/`EC` prefix may stand before a curve): `p256`, `ECC_P384`,
    /// `rsa2048`.
    pub fn from_name(name: &str) -> Option<KeyAlgorithm> {
        let n: String = name
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        let n = n.strip_prefix("ecc").or_else(|| n.strip_prefix("ec")).unwrap_or(&n);
        match n {
            "p256" | "secp256r1" | "prime256v1" => Some(KeyAlgorithm::EcdsaP256),
            "p384" | "secp384r1" => Some(KeyAlgorithm::EcdsaP384),
            "rsa2048" | "rsa" => Some(KeyAlgorithm::Rsa2048),
            _ => None,
        }
    }

    /// The algorithm of a loaded key; `None` for one this PKI does not issue with (Ed25519,
    /// other RSA sizes still sign as RSA).
    fn of(key: &KeyPair) -> Option<KeyAlgorithm> {
        let alg = key.algorithm();
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Some(KeyAlgorithm::EcdsaP256)
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Some(KeyAlgorithm::EcdsaP384)
        } else if alg == &rcgen::PKCS_RSA_SHA256 {
            Some(KeyAlgorithm::Rsa2048)
        } else {
            None
        }
    }

    /// A fresh key pair. rcgen (over ring) cannot generate RSA keys, so RSA keys come from the
    /// RustCrypto `rsa` crate and are loaded into rcgen as PKCS#8.
    pub(crate) fn generate(self) -> Result<KeyPair, PkiError> {
        match self {
            KeyAlgorithm::EcdsaP256 => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?),
            KeyAlgorithm::EcdsaP384 => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?),
            KeyAlgorithm::Rsa2048 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                    .map_err(|e| PkiError::UnsupportedKey(format!("RSA key generation: {e}")))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| PkiError::UnsupportedKey(format!("RSA key encoding: {e}")))?;
                let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
                Ok(KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)?)
            }
        }
    }

    /// keyUsage of a TLS leaf (device or server) with a key of this algorithm: digitalSignature
    /// to sign the handshake, plus keyEncipherment for RSA, which TLS 1.2 RSA key exchange needs
    /// and which verifiers such as mbedTLS check against the suite.
    fn leaf_key_usages(self) -> Vec<KeyUsagePurpose> {
        match self {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => vec![KeyUsagePurpose::DigitalSignature],
            KeyAlgorithm::Rsa2048 => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
        }
    }
}

/// How long issued intermediates are valid: half the root's ten years, so a root outlives
/// every intermediate it issues.
const INTERMEDIATE_VALIDITY_DAYS: i64 = 1826;
/// How long proof-of-possession certificates are valid.
const VERIFICATION_VALIDITY_DAYS: i64 = 30;
/// Default validity of device certificates made with [`DeviceCertificateRequest::new`].
const DEVICE_VALIDITY_DAYS: i64 = 365;

/// What a device certificate should say, for [`LocalCa::issue_device_certificate_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificateRequest {
    /// The subject CN: the device's registration id (DPS matches it against the registration
    /// request) and, for enrollment groups, its device id.
    pub common_name: String,
    /// Days of validity from `valid_from`; at least 1.
    pub validity_days: i64,
    /// Key algorithm of the device key.
    pub key_algorithm: KeyAlgorithm,
    /// Optional subjectAltNames: IP addresses become IP SANs, anything else DNS SANs. Devices
    /// do not need any; some fleets put their host name here.
    pub subject_alt_names: Vec<String>,
    /// Start of validity (backdated by a day, at day granularity); `None` for now. Factories
    /// pre-issuing certificates, and tests making expired or not-yet-valid ones, set it.
    pub valid_from: Option<DateTime<Utc>>,
}

impl DeviceCertificateRequest {
    /// A P-256 certificate for `common_name`, valid for a year from now, without SANs.
    pub fn new(common_name: &str) -> DeviceCertificateRequest {
        DeviceCertificateRequest {
            common_name: common_name.to_owned(),
            validity_days: DEVICE_VALIDITY_DAYS,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            subject_alt_names: Vec::new(),
            valid_from: None,
        }
    }
}

/// A CA (certificate and key) that can issue server, device, intermediate and verification
/// certificates.
pub struct LocalCa {
    /// The CA certificate exactly as loaded or generated, which is what clients trust.
    cert_der: CertificateDer<'static>,
    /// The certificates above this one (its issuer first), for intermediates.
    parents: Vec<CertificateDer<'static>>,
    /// rcgen's signing view of the CA: the same subject name, key identifier and key usages.
    /// For a loaded CA it is re-created from the certificate, so only its parameters are used.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

/// A freshly issued leaf certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The leaf certificate alone (append the CA certificate to serve a chain).
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field(
                "sha256_thumbprint",
                &crate::thumbprint::sha256_thumbprint(&self.cert_der),
            )
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Generates a new self-signed root: P-256 ECDSA, `CA:TRUE`, keyCertSign and cRLSign, valid
    /// for about ten years.
    pub fn generate(common_name: &str) -> Result<LocalCa, PkiError> {
        Self::generate_with(common_name, KeyAlgorithm::EcdsaP256)
    }

    /// Generates a new self-signed root with the given key algorithm.
    pub fn generate_with(common_name: &str, alg: KeyAlgorithm) -> Result<LocalCa, PkiError> {
        let key = alg.generate()?;
        let mut params = ca_params(common_name, None);
        set_validity(&mut params, Utc::now(), CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(LocalCa {
            cert_der: cert.der().clone(),
            parents: Vec::new(),
            issuer: cert,
            key,
        })
    }

    /// Issues an intermediate CA under this one, with a fresh key of `alg`, valid for about five
    /// years (never beyond this CA).
    ///
    /// `path_len` becomes the pathLenConstraint: `Some(0)` for an intermediate that may issue only
    /// device certificates (the usual factory-line CA), `None` for no limit. The returned CA can
    /// issue in turn, and remembers this CA's chain for [`chain_pem`](Self::chain_pem).
    pub fn issue_intermediate(
        &self,
        common_name: &str,
        path_len: Option<u8>,
        alg: KeyAlgorithm,
    ) -> Result<LocalCa, PkiError> {
        let key = alg.generate()?;
        let mut params = ca_params(common_name, path_len);
        params.use_authority_key_identifier_extension = true;
        self.set_issued_validity(&mut params, Utc::now(), INTERMEDIATE_VALIDITY_DAYS);
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let mut parents = vec![self.cert_der.clone()];
        parents.extend(self.parents.iter().cloned());
        Ok(LocalCa {
            cert_der: cert.der().clone(),
            parents,
            issuer: cert,
            key,
        })
    }

    /// Issues a device (TLS client) certificate: CN = the registration id, EKU clientAuth,
    /// `validity_days` from now (backdated a day), no SANs. See
    /// [`issue_device_certificate_with`](Self::issue_device_certificate_with) for more control.
    pub fn issue_device_certificate(
        &self,
        common_name: &str,
        validity_days: i64,
        alg: KeyAlgorithm,
    ) -> Result<IssuedCertificate, PkiError> {
        self.issue_device_certificate_with(&DeviceCertificateRequest {
            validity_days,
            key_algorithm: alg,
            ..DeviceCertificateRequest::new(common_name)
        })
    }

    /// Issues a device (TLS client) certificate as `request` describes.
    ///
    /// The certificate has `CA:FALSE`, keyUsage digitalSignature (plus keyEncipherment for RSA
    /// keys, which TLS 1.2 RSA key exchange needs), EKU clientAuth — what a device presents in
    /// the TLS handshake and what the chain check requires of a leaf — and an authority key
    /// identifier pointing at this CA so verifiers find the issuer among renewed CAs.
    pub fn issue_device_certificate_with(
        &self,
        request: &DeviceCertificateRequest,
    ) -> Result<IssuedCertificate, PkiError> {
        let mut params = client_params(
            &request.common_name,
            request.validity_days,
            request.key_algorithm.leaf_key_usages(),
        )?;
        let mut sans: Vec<SanType> = Vec::with_capacity(request.subject_alt_names.len());
        for name in &request.subject_alt_names {
            let san = san_for(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        let start = request.valid_from.unwrap_or_else(Utc::now);
        self.set_issued_validity(&mut params, start, request.validity_days);
        let key = request.key_algorithm.generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a proof-of-possession certificate: CN = the verification code the service gave,
    /// signed by this CA, valid for 30 days (the service only needs it once, right away).
    pub fn issue_verification_certificate(&self, verification_code: &str) -> Result<IssuedCertificate, PkiError> {
        self.issue_device_certificate(verification_code, VERIFICATION_VALIDITY_DAYS, KeyAlgorithm::EcdsaP256)
    }

    /// This CA's certificate followed by the certificates above it (for intermediates: what a
    /// device sends after its leaf).
    pub fn chain_pem(&self) -> String {
        self.chain_der().iter().map(|c| to_pem("CERTIFICATE", c)).collect()
    }

    /// [`chain_pem`](Self::chain_pem) as DER: this CA's certificate, then its issuer, and so on.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.cert_der)
            .chain(self.parents.iter())
            .cloned()
            .collect()
    }

    /// Loads a CA from its certificate and PKCS#8 private key, as written by
    /// [`cert_pem`](Self::cert_pem) and [`key_pem`](Self::key_pem) or brought by the user.
    ///
    /// The key must be PKCS#8 because that is the only form the signing library (ring) loads;
    /// the certificate must be a CA and match the key, so that what it issues verifies.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<LocalCa, PkiError> {
        let mut certs = parse_certificates(cert_pem)?;
        let cert_der = certs.remove(0);
        let parents = certs;
        let key = match parse_private_key(key_pem)? {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                KeyPair::try_from(&pkcs8).map_err(|e| PkiError::UnsupportedKey(e.to_string()))?
            }
            _ => {
                return Err(PkiError::UnsupportedKey(
                    "the CA key must be PKCS#8 (-----BEGIN PRIVATE KEY-----); \
                     convert it with `openssl pkcs8 -topk8 -nocrypt`"
                        .into(),
                ))
            }
        };
        {
            let parsed = crate::x509::parse(&cert_der)?;
            if !matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
                return Err(PkiError::NotACa);
            }
            if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(PkiError::KeyMismatch);
            }
        }
        let issuer = CertificateParams::from_ca_cert_der(&cert_der)?.self_signed(&key)?;
        Ok(LocalCa {
            cert_der,
            parents,
            issuer,
            key,
        })
    }

    /// [`set_validity`], but never past this CA's own notAfter: a certificate outliving its issuer
    /// would only fail later with a less obvious error (the issuer's expiry), so it is capped the
    /// way issuing CAs such as AD CS cap it.
    fn set_issued_validity(&self, params: &mut CertificateParams, start: DateTime<Utc>, days: i64) {
        set_validity(params, start, days);
        let ca_not_after = crate::x509::parse(&self.cert_der)
            .ok()
            .and_then(|c| crate::info::to_chrono(&c.validity().not_after).ok());
        if let Some(cap) = ca_not_after {
            if start + TimeDelta::days(days) > cap {
                let (y, m, d) = ymd(cap);
                params.not_after = rcgen::date_time_ymd(y, m, d);
            }
        }
    }

    /// This CA's notAfter (far in the future if unreadable: the CA loaded, so it parsed).
    pub(crate) fn not_after(&self) -> DateTime<Utc> {
        crate::x509::parse(&self.cert_der)
            .ok()
            .and_then(|c| crate::info::to_chrono(&c.validity().not_after).ok())
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Signs a certificate for `public_key` as `params` describe, with this CA's key.
    pub(crate) fn sign(
        &self,
        params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<CertificateDer<'static>, PkiError> {
        Ok(params.signed_by(public_key, &self.issuer, &self.key)?.der().clone())
    }

    /// Signs a revocation list as `params` describe, with this CA's key (which must be allowed
    /// to sign lists: keyUsage cRLSign, when the certificate restricts its usage).
    pub(crate) fn sign_crl(&self, params: rcgen::CertificateRevocationListParams) -> Result<Vec<u8>, PkiError> {
        Ok(params.signed_by(&self.issuer, &self.key)?.der().to_vec())
    }

    /// The CA certificate as PEM: the file users install as their trust anchor.
    pub fn cert_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.cert_der)
    }

    /// The CA private key as PKCS#8 PEM, for the data directory (keep it private).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The algorithm of this CA's key, `None` for a brought key of another kind (Ed25519).
    pub fn key_algorithm(&self) -> Option<KeyAlgorithm> {
        KeyAlgorithm::of(&self.key)
    }

    /// Issues a TLS server certificate for `hostnames` with a fresh P-256 key; see
    /// [`issue_server_certificate_with`](Self::issue_server_certificate_with).
    pub fn issue_server_certificate(&self, hostnames: &[String]) -> Result<IssuedCertificate, PkiError> {
        self.issue_server_certificate_with(hostnames, KeyAlgorithm::EcdsaP256)
    }

    /// Issues a TLS server certificate for `hostnames` with a fresh key of `alg`.
    ///
    /// Every name becomes a subjectAltName — an IP SAN when it parses as an IP address (brackets
    /// around IPv6 allowed), a DNS SAN otherwise — because clients match only SANs, not the
    /// subject CN. The CN is still set to the first name for humans reading the certificate. The
    /// leaf has `CA:FALSE`, digitalSignature (plus keyEncipherment for RSA), EKU serverAuth, an
    /// authority key identifier pointing at this CA, and about two years of validity.
    ///
    /// The certificate is signed with this CA's key whatever `alg` is: a client must be able to
    /// verify this CA's signature algorithm as well as the leaf's (decision 0018).
    pub fn issue_server_certificate_with(
        &self,
        hostnames: &[String],
        alg: KeyAlgorithm,
    ) -> Result<IssuedCertificate, PkiError> {
        let first = hostnames.first().ok_or(PkiError::NoHostnames)?;
        let mut sans: Vec<SanType> = Vec::with_capacity(hostnames.len());
        for name in hostnames {
            let san = san_for(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let cn = first.trim();
        if !cn.is_empty() && cn.len() <= MAX_COMMON_NAME_LEN {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = alg.leaf_key_usages();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        self.set_issued_validity(&mut params, Utc::now(), SERVER_VALIDITY_DAYS);

        let key = alg.generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Whether the first certificate of `cert_pem` covers every name in `hostnames` with a SAN and
/// is valid now with at least 30 days to go.
///
/// Used on start-up to decide whether a stored server certificate can be reused or must be
/// re-issued for changed `--hostname` values. A certificate whose SAN extension cannot be read
/// covers nothing. Only unreadable PEM is an error.
pub fn certificate_covers(cert_pem: &str, hostnames: &[String]) -> Result<bool, PkiError> {
    certificate_covers_at(cert_pem, hostnames, Utc::now())
}

/// [`certificate_covers`] at a given time.
pub fn certificate_covers_at(cert_pem: &str, hostnames: &[String], now: DateTime<Utc>) -> Result<bool, PkiError> {
    let der = parse_certificates(cert_pem)?.swap_remove(0);
    let cert = crate::x509::parse(&der)?;
    let validity = cert.validity();
    let not_before = crate::info::to_chrono(&validity.not_before)?;
    let not_after = crate::info::to_chrono(&validity.not_after)?;
    if now < not_before || now + TimeDelta::days(RENEWAL_MARGIN_DAYS) >= not_after {
        return Ok(false);
    }
    let names = match cert.subject_alternative_name() {
        Ok(Some(ext)) => &ext.value.general_names,
        _ => return Ok(false),
    };
    Ok(hostnames
        .iter()
        .all(|host| names.iter().any(|san| san_matches(san, host))))
}

/// Whether one SAN entry covers `host`, the way a TLS client would check it: IP addresses
/// against IP SANs only, DNS names case-insensitively with a single-label leading wildcard.
fn san_matches(san: &GeneralName<'_>, host: &str) -> bool {
    let host = host.trim();
    match (san, parse_ip(host)) {
        (GeneralName::IPAddress(bytes), Some(ip)) => match ip {
            IpAddr::V4(v4) => *bytes == v4.octets(),
            IpAddr::V6(v6) => *bytes == v6.octets(),
        },
        (GeneralName::DNSName(pattern), None) => {
            if pattern.eq_ignore_ascii_case(host) {
                return true;
            }
            match (pattern.strip_prefix("*."), host.split_once('.')) {
                (Some(suffix), Some((label, rest))) => !label.is_empty() && suffix.eq_ignore_ascii_case(rest),
                _ => false,
            }
        }
        _ => false,
    }
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

fn san_for(name: &str) -> Result<SanType, PkiError> {
    let trimmed = name.trim();
    if let Some(ip) = parse_ip(trimmed) {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason: &str| PkiError::InvalidHostname {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    if !trimmed.is_ascii() || trimmed.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
        return Err(invalid(
            "not an ASCII host name (give internationalised names in punycode)",
        ));
    }
    let ia5 = rcgen::Ia5String::try_from(trimmed.to_ascii_lowercase()).map_err(|e| invalid(&e.to_string()))?;
    Ok(SanType::DnsName(ia5))
}

/// Parameters of a device (TLS client) certificate: subject CN only, `CA:FALSE`, `key_usages`,
/// EKU clientAuth — what a device presents in the handshake and what the chain check requires of
/// a leaf — and an authority key identifier so that verifiers find the issuer among renewed
/// CAs. Validity is the caller's to set; `validity_days` must be at least 1.
pub(crate) fn client_params(
    common_name: &str,
    validity_days: i64,
    key_usages: Vec<KeyUsagePurpose>,
) -> Result<CertificateParams, PkiError> {
    if validity_days < 1 {
        return Err(PkiError::InvalidValidity { days: validity_days });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = key_usages;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Parameters of a CA certificate: `CA:TRUE` (with `path_len` as pathLenConstraint, limiting
/// the CAs below it), keyCertSign and cRLSign to issue, digitalSignature for OCSP-style uses.
fn ca_params(common_name: &str, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Sets validity from `BACKDATE_DAYS` before `now` to `days` after it, at day granularity
/// (rcgen takes dates; a day of slack either side does not matter for these certificates).
fn set_validity(params: &mut CertificateParams, now: DateTime<Utc>, days: i64) {
    let (y, m, d) = ymd(now - TimeDelta::days(BACKDATE_DAYS));
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(now + TimeDelta::days(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// `t`'s date as rcgen's [`rcgen::date_time_ymd`] takes it (midnight UTC of that day).
fn ymd(t: DateTime<Utc>) -> (i32, u8, u8) {
    use chrono::Datelike;
    (t.year(), t.month() as u8, t.day() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_kinds_follow_the_name() {
        assert!(matches!(san_for("127.0.0.1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(san_for("[::1]"), Ok(SanType::IpAddress(IpAddr::V6(_)))));
        assert!(matches!(san_for("Dps.Example.Test"), Ok(SanType::DnsName(n)) if n.as_str() == "dps.example.test"));
        assert!(matches!(san_for(""), Err(PkiError::InvalidHostname { .. })));
        assert!(matches!(
            san_for("bücher.example"),
            Err(PkiError::InvalidHostname { .. })
        ));
        assert!(matches!(san_for("a b"), Err(PkiError::InvalidHostname { .. })));
    }

    #[test]
    fn wildcard_covers_exactly_one_label() {
        let wildcard = GeneralName::DNSName("*.example.test");
        assert!(san_matches(&wildcard, "dps.example.test"));
        assert!(san_matches(&wildcard, "DPS.example.TEST"));
        assert!(!san_matches(&wildcard, "example.test"));
        assert!(!san_matches(&wildcard, "a.b.example.test"));
        let ip = GeneralName::IPAddress(&[127, 0, 0, 1]);
        assert!(san_matches(&ip, "127.0.0.1"));
        assert!(!san_matches(&ip, "127.0.0.2"));
        assert!(!san_matches(&GeneralName::DNSName("127.0.0.1"), "127.0.0.1"));
    }

    #[test]
    fn key_algorithms_by_name_and_by_key() {
        for alg in KeyAlgorithm::ALL {
            assert_eq!(KeyAlgorithm::from_name(alg.name()), Some(alg));
            let ca = LocalCa::generate_with("Alg Root", alg).unwrap();
            assert_eq!(ca.key_algorithm(), Some(alg));
            let reloaded = LocalCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
            assert_eq!(reloaded.key_algorithm(), Some(alg));
        }
        assert_eq!(KeyAlgorithm::from_name("ECC_P384"), Some(KeyAlgorithm::EcdsaP384));
        assert_eq!(KeyAlgorithm::from_name("p256"), Some(KeyAlgorithm::EcdsaP256));
        assert_eq!(KeyAlgorithm::from_name("rsa_2048"), Some(KeyAlgorithm::Rsa2048));
        assert_eq!(KeyAlgorithm::from_name("p521"), None);
        assert_eq!(KeyAlgorithm::from_name(""), None);
    }

    #[test]
    fn pem_armour_round_trips() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = to_pem("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: CertificateDer<'static>| c.to_vec());
        assert_eq!(back.ok(), Some(der));
    }
}
