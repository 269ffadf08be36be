//! A layered TCG DICE identity on P-256 — the scheme for new devices.
//!
//! # Layers
//!
//! - **Layer 0 (DeviceID)** is derived from the UDS **only**. The code that runs it (boot ROM,
//!   DICE engine) is treated as part of the hardware, and its measurement is deliberately not
//!   mixed in: the DeviceID must survive every firmware and bootloader update, because it is
//!   what enrollment groups are anchored on (see the [parent module](crate)). A scheme
//!   that also measured a first-stage bootloader would be a new version (`dps-dice-v2`).
//! - **Layer 1 (Alias)** is derived from the layer-0 CDI and the firmware digest (FWID). Any
//!   change to the firmware image gives a new Alias key.
//!
//! # Key schedule (`dps-dice-v1`) — stable, never to be changed in place
//!
//! All KDFs are HKDF-SHA256 (RFC 5869); labels are ASCII, without terminators.
//!
//! ```text
//! CDI₀     = HKDF(salt = "dps-dice-v1/uds",  IKM = UDS,  info = "dps-dice-v1/cdi",       L = 32)
//! FWID     = SHA-256(firmware image)
//! CDI₁     = HKDF(salt = FWID,               IKM = CDI₀, info = "dps-dice-v1/cdi",       L = 32)
//! DeviceID = Key(CDI₀, "dps-dice-v1/device-id")
//! Alias    = Key(CDI₁, "dps-dice-v1/alias")
//!
//! Key(CDI, label): for c = 0x00, 0x01, …:
//!     d = HKDF(salt = "dps-dice-v1/key", IKM = CDI, info = label || c, L = 32), big-endian;
//!     the first d with 1 ≤ d < n (the P-256 order) is the private key (c > 0 has
//!     probability ≈ 2^-32).
//!
//! Id(public key) = HKDF(salt = "dps-dice-v1/id", IKM = 04||X||Y, info = "dps-dice-v1/serial",
//!                       L = 20) with the top bit cleared
//! ```
//!
//! This follows the pattern of Google's open-dice (the CDI as HKDF input keying material and the
//! measurement as salt; key seeds and ids by HKDF with fixed salts and labels), on SHA-256 and
//! P-256 so that every TLS stack and Azure-compatible service can use the keys.
//!
//! # Certificates
//!
//! Both are v3, ecdsa-with-SHA256, with the validity of [`TcgOptions`] (default
//! 2025-01-01T00:00:00Z to 2099-12-31T23:59:59Z), serial number `Id(public key)`, a subject key
//! identifier of SHA-1 over the public key bits (RFC 5280 method 1), and are signed with
//! deterministic ECDSA (RFC 6979) — so the same UDS, firmware and options give byte-identical
//! certificates, and a device can re-derive them at every boot instead of storing them.
//!
//! - **DeviceID**: subject `CN=DeviceID <Id hex>`; basicConstraints critical `CA:TRUE,
//!   pathLen 0`; keyUsage critical keyCertSign. Self-signed, or issued by a CA
//!   ([`DeviceIdIssuer::Ca`], with an authority key identifier), or supplied as already issued
//!   ([`DeviceIdIssuer::Existing`]: the device stores the certificate its factory CA issued and
//!   re-derives only its keys). A CA-issued certificate is deterministic when the CA key is
//!   P-256 (it is then signed with RFC 6979 as well); other CA keys (P-384, RSA, Ed25519) are
//!   signed through rustls/ring.
//! - **Alias**: subject `CN=<registration id>`, issuer = the DeviceID certificate's subject,
//!   authority key identifier = the DeviceID's key identifier; keyUsage critical
//!   digitalSignature; extKeyUsage clientAuth; and the TCG `DiceTcbInfo` extension
//!   (2.23.133.5.4.1) with the options' vendor, model, version, svn and layer and
//!   `fwids = [SHA-256 FWID]`. The extension is **not** marked critical: verifiers that do not
//!   know it (webpki, Azure DPS) would otherwise have to reject the certificate, and it is
//!   evidence to read, not a constraint to enforce.
//!
//! The device presents `chain_pem` (Alias, then DeviceID) with the Alias key in TLS.

mod kdf;
mod tcb_info;

pub use tcb_info::{parse_tcb_info, Fwid, OperationalFlags, TcbInfo, SHA256_OID, TCB_INFO_OID};

use chrono::{DateTime, Utc};
use der::asn1::OctetString;
use der::{Decode, Encode};
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use p256::SecretKey;
use rustls_pki_types::PrivateKeyDer;
use sha1::{Digest, Sha1};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;

use crate::x509::{
    algorithm, build_certificate, extension, oid, p256_spki, pem_wrapped, uncompressed_point, utf8_name, x509_time,
    CertFields, P256Rfc6979, TbsSigner,
};
use crate::{lower_hex, DiceError, UDS_LEN};

/// Default start of validity: 2025-01-01T00:00:00Z.
pub const DEFAULT_NOT_BEFORE_UNIX: i64 = 1_735_689_600;
/// Default end of validity: 2099-12-31T23:59:59Z.
pub const DEFAULT_NOT_AFTER_UNIX: i64 = 4_102_444_799;
/// The longest registration id accepted: DPS limits an X.509 common name to 64 characters.
pub const MAX_REGISTRATION_ID_LEN: usize = 64;

/// Who signs the DeviceID certificate.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum DeviceIdIssuer {
    /// The DeviceID key itself: the certificate depends on the UDS alone.
    #[default]
    SelfSigned,
    /// A CA, typically the factory's: its certificate (PEM; the first certificate is used) and
    /// private key (PEM: PKCS#8, SEC1 or PKCS#1). The CA certificate must have
    /// `CA:TRUE` and, if it has a pathLen, one of at least 1.
    Ca {
        /// The CA certificate.
        cert_pem: String,
        /// The CA private key.
        key_pem: String,
    },
    /// A DeviceID certificate issued earlier (for example by the factory CA) and stored on the
    /// device. It is used as it is, after checking that it certifies the derived DeviceID key.
    Existing {
        /// The DeviceID certificate (PEM; the first certificate is used).
        cert_pem: String,
    },
}

impl std::fmt::Debug for DeviceIdIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceIdIssuer::SelfSigned => f.write_str("SelfSigned"),
            DeviceIdIssuer::Ca { cert_pem, .. } => f
                .debug_struct("Ca")
                .field("cert_pem", cert_pem)
                .field("key_pem", &"<redacted>")
                .finish(),
            DeviceIdIssuer::Existing { cert_pem } => f.debug_struct("Existing").field("cert_pem", cert_pem).finish(),
        }
    }
}

/// What goes into the certificates besides the keys. Every field is part of the certificates'
/// bytes: keep the options fixed for a device, or its certificates change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcgOptions {
    /// `DiceTcbInfo` vendor (who made the firmware).
    pub vendor: Option<String>,
    /// `DiceTcbInfo` model (the product).
    pub model: Option<String>,
    /// `DiceTcbInfo` version (the firmware version, as text).
    pub version: Option<String>,
    /// `DiceTcbInfo` security version number.
    pub svn: Option<u64>,
    /// `DiceTcbInfo` layer of the measured firmware; 1 by default (layer 0 is the DeviceID).
    pub layer: Option<u64>,
    /// Start of both certificates' validity.
    pub not_before: DateTime<Utc>,
    /// End of both certificates' validity.
    pub not_after: DateTime<Utc>,
    /// Who signs the DeviceID certificate.
    pub device_id_issuer: DeviceIdIssuer,
}

impl Default for TcgOptions {
    fn default() -> Self {
        TcgOptions {
            vendor: None,
            model: None,
            version: None,
            svn: None,
            layer: Some(1),
            not_before: DateTime::from_timestamp(DEFAULT_NOT_BEFORE_UNIX, 0).unwrap_or_default(),
            not_after: DateTime::from_timestamp(DEFAULT_NOT_AFTER_UNIX, 0).unwrap_or_default(),
            device_id_issuer: DeviceIdIssuer::SelfSigned,
        }
    }
}

/// A DeviceID certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceIdCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The DeviceID private key, PKCS#8 PEM. It never needs to leave the device, which
    /// re-derives it from the UDS.
    pub key_pem: String,
    /// The DeviceID public key, `04 || X || Y`.
    pub public_key: [u8; 65],
}

impl std::fmt::Debug for DeviceIdCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A device's layered identity: DeviceID and Alias certificates and keys.
#[derive(Clone, PartialEq, Eq)]
pub struct TcgIdentity {
    /// The registration id: the Alias certificate's CN.
    pub registration_id: String,
    /// The DeviceID certificate, PEM. Stable across firmware updates: enroll it (or its issuing
    /// CA) as an enrollment group's certificate.
    pub device_id_cert_pem: String,
    /// The DeviceID certificate, DER.
    pub device_id_cert_der: Vec<u8>,
    /// The DeviceID private key, PKCS#8 PEM.
    pub device_id_key_pem: String,
    /// The DeviceID public key, `04 || X || Y`.
    pub device_id_public_key: [u8; 65],
    /// The Alias certificate, PEM: the device's TLS client certificate for this firmware.
    pub alias_cert_pem: String,
    /// The Alias certificate, DER.
    pub alias_cert_der: Vec<u8>,
    /// The Alias private key, PKCS#8 PEM: the device's TLS client key for this firmware.
    pub alias_key_pem: String,
    /// What the device presents in TLS: the Alias certificate, then the DeviceID certificate.
    pub chain_pem: String,
    /// SHA-256 of the firmware image, as carried in the Alias certificate's `DiceTcbInfo`.
    pub fwid: [u8; 32],
}

impl std::fmt::Debug for TcgIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcgIdentity")
            .field("registration_id", &self.registration_id)
            .field("device_id_cert_pem", &self.device_id_cert_pem)
            .field("device_id_key_pem", &"<redacted>")
            .field("alias_cert_pem", &self.alias_cert_pem)
            .field("alias_key_pem", &"<redacted>")
            .field("fwid", &lower_hex(&self.fwid))
            .finish_non_exhaustive()
    }
}

/// Checks a registration id for the Alias certificate's CN: 1 to 64 characters (DPS's limit
/// for an X.509 common name), ASCII letters, digits and `-` `.` `_` `:`, starting with a letter
/// or digit and ending with a letter, digit or `-` (the DPS rules for registration ids).
pub fn validate_registration_id(registration_id: &str) -> Result<(), DiceError> {
    let invalid = |reason: &str| DiceError::InvalidRegistrationId {
        id: registration_id.to_owned(),
        reason: reason.to_owned(),
    };
    let bytes = registration_id.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(invalid("it is empty"));
    };
    if bytes.len() > MAX_REGISTRATION_ID_LEN {
        return Err(invalid(
            "it is longer than 64 characters, the limit for an X.509 common name",
        ));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
    {
        return Err(invalid("only ASCII letters, digits and '-' '.' '_' ':' are allowed"));
    }
    if !first.is_ascii_alphanumeric() || !(last.is_ascii_alphanumeric() || *last == b'-') {
        return Err(invalid(
            "it must start with a letter or digit and end with a letter, digit or '-'",
        ));
    }
    Ok(())
}

/// Derives the DeviceID key from the UDS and certifies it as `opts.device_id_issuer` says.
///
/// This is what a factory needs before the firmware is final: the DeviceID certificate (to
/// enroll, or to issue from its CA) depends on the UDS and the options only.
pub fn device_id_certificate(uds: &[u8; UDS_LEN], opts: &TcgOptions) -> Result<DeviceIdCertificate, DiceError> {
    check_validity(opts)?;
    let cdi0 = Zeroizing::new(kdf::layer0_cdi(uds));
    let device_id = kdf::derive_key(&cdi0, kdf::INFO_DEVICE_ID, "DeviceID")?;
    let cert_der = device_id_cert(&device_id, opts)?;
    Ok(DeviceIdCertificate {
        cert_pem: pem_wrapped("CERTIFICATE", &cert_der),
        cert_der,
        key_pem: pkcs8_pem(&device_id)?,
        public_key: uncompressed_point(&device_id.public_key()),
    })
}

/// Derives a device's DeviceID and Alias identities from its UDS and firmware image, and
/// certifies them (see the module documentation for the exact scheme).
///
/// Deterministic: the same UDS, firmware, registration id and options always give the same
/// keys and byte-identical certificates (with a non-P-256 CA, the DeviceID certificate's
/// signature differs between calls; everything else is still identical). A changed firmware
/// gives a new Alias key and certificate under the same DeviceID certificate.
pub fn tcg_identity(
    uds: &[u8; UDS_LEN],
    firmware: &[u8],
    registration_id: &str,
    opts: &TcgOptions,
) -> Result<TcgIdentity, DiceError> {
    validate_registration_id(registration_id)?;
    check_validity(opts)?;
    let cdi0 = Zeroizing::new(kdf::layer0_cdi(uds));
    let device_id = kdf::derive_key(&cdi0, kdf::INFO_DEVICE_ID, "DeviceID")?;
    let fwid = kdf::fwid(firmware);
    let cdi1 = Zeroizing::new(kdf::layer1_cdi(&cdi0, &fwid));
    let alias = kdf::derive_key(&cdi1, kdf::INFO_ALIAS, "Alias")?;

    let device_id_cert_der = device_id_cert(&device_id, opts)?;
    let alias_cert_der = alias_cert(registration_id, &alias, &device_id, &device_id_cert_der, &fwid, opts)?;
    let device_id_cert_pem = pem_wrapped("CERTIFICATE", &device_id_cert_der);
    let alias_cert_pem = pem_wrapped("CERTIFICATE", &alias_cert_der);
    Ok(TcgIdentity {
        registration_id: registration_id.to_owned(),
        chain_pem: format!("{alias_cert_pem}{device_id_cert_pem}"),
        device_id_cert_pem,
        device_id_cert_der,
        device_id_key_pem: pkcs8_pem(&device_id)?,
        device_id_public_key: uncompressed_point(&device_id.public_key()),
        alias_cert_pem,
        alias_cert_der,
        alias_key_pem: pkcs8_pem(&alias)?,
        fwid,
    })
}

fn check_validity(opts: &TcgOptions) -> Result<(), DiceError> {
    if opts.not_after <= opts.not_before {
        return Err(DiceError::InvalidOptions(format!(
            "the validity ends ({}) before it starts ({})",
            opts.not_after, opts.not_before
        )));
    }
    Ok(())
}

fn pkcs8_pem(key: &SecretKey) -> Result<String, DiceError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| DiceError::KeyEncoding(e.to_string()))?;
    Ok(pem.as_str().to_owned())
}

/// RFC 5280 method 1: SHA-1 of the subjectPublicKey bits.
fn key_identifier(public_key_bits: &[u8]) -> Vec<u8> {
    Sha1::digest(public_key_bits).to_vec()
}

fn validity(opts: &TcgOptions) -> Result<(x509_cert::time::Time, x509_cert::time::Time), DiceError> {
    Ok((
        x509_time(opts.not_before.timestamp())?,
        x509_time(opts.not_after.timestamp())?,
    ))
}

fn ski_extension(key_id: &[u8]) -> Result<Extension, DiceError> {
    let value = SubjectKeyIdentifier(OctetString::new(key_id)?).to_der()?;
    extension(oid::SUBJECT_KEY_IDENTIFIER, false, value)
}

fn aki_extension(key_id: &[u8]) -> Result<Extension, DiceError> {
    let value = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(key_id)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    }
    .to_der()?;
    extension(oid::AUTHORITY_KEY_IDENTIFIER, false, value)
}

/// The key identifier a certificate declares, or method 1 over its key when it declares none.
fn certificate_key_identifier(cert: &Certificate) -> Result<Vec<u8>, DiceError> {
    let declared = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid::SUBJECT_KEY_IDENTIFIER)
        .map(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()))
        .transpose()?;
    Ok(match declared {
        Some(ski) => ski.0.as_bytes().to_vec(),
        None => key_identifier(
            cert.tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        ),
    })
}

fn device_id_cert(device_id: &SecretKey, opts: &TcgOptions) -> Result<Vec<u8>, DiceError> {
    let public = device_id.public_key();
    let point = uncompressed_point(&public);
    if let DeviceIdIssuer::Existing { cert_pem } = &opts.device_id_issuer {
        let der = dps_pki::pem::parse_certificates(cert_pem)
            .map_err(|e| DiceError::InvalidOptions(format!("stored DeviceID certificate: {e}")))?
            .swap_remove(0)
            .to_vec();
        let cert = Certificate::from_der(&der)
            .map_err(|e| DiceError::InvalidOptions(format!("stored DeviceID certificate: {e}")))?;
        if cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            != point
        {
            return Err(DiceError::DeviceIdCertMismatch);
        }
        return Ok(der);
    }

    let id = kdf::key_id(&point);
    let subject = utf8_name(&[(oid::COMMON_NAME, &format!("DeviceID {}", lower_hex(&id)))])?;
    let (not_before, not_after) = validity(opts)?;
    let mut extensions = vec![
        extension(
            oid::BASIC_CONSTRAINTS,
            true,
            BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            }
            .to_der()?,
        )?,
        extension(oid::KEY_USAGE, true, KeyUsage(KeyUsages::KeyCertSign.into()).to_der()?)?,
        ski_extension(&key_identifier(&point))?,
    ];
    let spki = p256_spki(&public)?;
    let fields = |issuer: Name, extensions: Vec<Extension>| CertFields {
        serial: id.to_vec(),
        issuer,
        not_before,
        not_after,
        subject: subject.clone(),
        spki: spki.clone(),
        extensions,
    };
    match &opts.device_id_issuer {
        DeviceIdIssuer::Ca { cert_pem, key_pem } => {
            let ca = CaIssuer::load(cert_pem, key_pem)?;
            extensions.push(aki_extension(&ca.key_id)?);
            let der = build_certificate(fields(ca.subject.clone(), extensions), &ca)?;
            ca.check_issued(&der)?;
            Ok(der)
        }
        _ => build_certificate(
            fields(subject.clone(), extensions),
            &P256Rfc6979(&SigningKey::from(device_id)),
        ),
    }
}

fn alias_cert(
    registration_id: &str,
    alias: &SecretKey,
    device_id: &SecretKey,
    device_id_cert_der: &[u8],
    fwid: &[u8; 32],
    opts: &TcgOptions,
) -> Result<Vec<u8>, DiceError> {
    let device_cert = Certificate::from_der(device_id_cert_der)?;
    let public = alias.public_key();
    let point = uncompressed_point(&public);
    let tcb_info = tcb_info::encode(&TcbInfo {
        vendor: opts.vendor.clone(),
        model: opts.model.clone(),
        version: opts.version.clone(),
        svn: opts.svn,
        layer: opts.layer,
        fwids: vec![Fwid {
            hash_algorithm: SHA256_OID.to_owned(),
            digest: fwid.to_vec(),
        }],
        ..TcbInfo::default()
    })?;
    let (not_before, not_after) = validity(opts)?;
    let fields = CertFields {
        serial: kdf::key_id(&point).to_vec(),
        issuer: device_cert.tbs_certificate.subject.clone(),
        not_before,
        not_after,
        subject: utf8_name(&[(oid::COMMON_NAME, registration_id)])?,
        spki: p256_spki(&public)?,
        extensions: vec![
            extension(
                oid::KEY_USAGE,
                true,
                KeyUsage(KeyUsages::DigitalSignature.into()).to_der()?,
            )?,
            extension(
                oid::EXT_KEY_USAGE,
                false,
                ExtendedKeyUsage(vec![oid::CLIENT_AUTH]).to_der()?,
            )?,
            ski_extension(&key_identifier(&point))?,
            aki_extension(&certificate_key_identifier(&device_cert)?)?,
            extension(oid::TCG_DICE_TCB_INFO, false, tcb_info)?,
        ],
    };
    build_certificate(fields, &P256Rfc6979(&SigningKey::from(device_id)))
}

/// A CA that issues DeviceID certificates.
struct CaIssuer {
    subject: Name,
    key_id: Vec<u8>,
    cert_der: Vec<u8>,
    signer: CaSigner,
}

enum CaSigner {
    /// P-256 keys sign deterministically (RFC 6979), like the device keys.
    P256(SigningKey),
    /// Other keys sign through rustls's ring provider.
    Other {
        signer: Box<dyn rustls::sign::Signer>,
        algorithm: AlgorithmIdentifierOwned,
    },
}

impl CaIssuer {
    fn load(cert_pem: &str, key_pem: &str) -> Result<CaIssuer, DiceError> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| DiceError::InvalidCa(format!("{what}: {e}"));
        let cert_der = dps_pki::pem::parse_certificates(cert_pem)
            .map_err(|e| invalid("certificate", &e))?
            .swap_remove(0)
            .to_vec();
        {
            let parsed = dps_pki::x509::parse(&cert_der).map_err(|e| invalid("certificate", &e))?;
            if !matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
                return Err(DiceError::InvalidCa(
                    "the certificate is not a CA (basicConstraints CA:TRUE is missing)".into(),
                ));
            }
        }
        let cert = Certificate::from_der(&cert_der).map_err(|e| invalid("certificate", &e))?;
        let key = dps_pki::pem::parse_private_key(key_pem).map_err(|e| invalid("private key", &e))?;
        let p256_key = match &key {
            PrivateKeyDer::Pkcs8(k) => SecretKey::from_pkcs8_der(k.secret_pkcs8_der()).ok(),
            PrivateKeyDer::Sec1(k) => SecretKey::from_sec1_der(k.secret_sec1_der()).ok(),
            _ => None,
        };
        let signer = match p256_key {
            Some(k) => CaSigner::P256(SigningKey::from(k)),
            None => rustls_signer(&key)?,
        };
        Ok(CaIssuer {
            subject: cert.tbs_certificate.subject.clone(),
            key_id: certificate_key_identifier(&cert)?,
            cert_der,
            signer,
        })
    }

    /// Confirms the CA's public key verifies what its private key signed: a key that belongs
    /// to another certificate would otherwise produce a certificate nobody can verify.
    fn check_issued(&self, issued_der: &[u8]) -> Result<(), DiceError> {
        let ca = dps_pki::x509::parse(&self.cert_der).map_err(|e| DiceError::InvalidCa(e.to_string()))?;
        let issued = dps_pki::x509::parse(issued_der).map_err(|e| DiceError::InvalidCa(e.to_string()))?;
        issued
            .verify_signature(Some(ca.public_key()))
            .map_err(|_| DiceError::InvalidCa("the private key does not belong to the CA certificate".into()))
    }
}

impl TbsSigner for CaIssuer {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        match &self.signer {
            CaSigner::P256(_) => algorithm(oid::ECDSA_WITH_SHA256),
            CaSigner::Other { algorithm, .. } => algorithm.clone(),
        }
    }

    fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, DiceError> {
        match &self.signer {
            CaSigner::P256(key) => P256Rfc6979(key).sign(tbs),
            CaSigner::Other { signer, .. } => signer.sign(tbs).map_err(|e| DiceError::Signing(e.to_string())),
        }
    }
}

/// A signer for a non-P-256 CA key, with the X.509 algorithm matching the scheme rustls picks.
fn rustls_signer(key: &PrivateKeyDer<'_>) -> Result<CaSigner, DiceError> {
    use rustls::SignatureScheme;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| DiceError::InvalidCa(format!("private key: {e}")))?;
    let signer = signing_key
        .choose_scheme(&[
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PKCS1_SHA256,
        ])
        .ok_or_else(|| DiceError::InvalidCa("the private key's algorithm cannot sign certificates here".into()))?;
    let algorithm = match signer.scheme() {
        SignatureScheme::ECDSA_NISTP256_SHA256 => algorithm(oid::ECDSA_WITH_SHA256),
        SignatureScheme::ECDSA_NISTP384_SHA384 => algorithm(oid::ECDSA_WITH_SHA384),
        SignatureScheme::ED25519 => algorithm(oid::ED25519),
        SignatureScheme::RSA_PKCS1_SHA256 => AlgorithmIdentifierOwned {
            oid: oid::SHA256_WITH_RSA,
            parameters: Some(der::asn1::Any::null()),
        },
        other => {
            return Err(DiceError::InvalidCa(format!("unsupported signature scheme {other:?}")));
        }
    };
    Ok(CaSigner::Other { signer, algorithm })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_id_rules() {
        for ok in ["device-01", "My.Device_1:a", "a", "x-", &"a".repeat(64)] {
            validate_registration_id(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in ["", "-a", "a.", "a_", "sp ace", "é", &"a".repeat(65)] {
            assert!(
                matches!(
                    validate_registration_id(bad),
                    Err(DiceError::InvalidRegistrationId { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn default_validity_is_2025_to_2099() {
        let opts = TcgOptions::default();
        assert_eq!(opts.not_before.to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!(opts.not_after.to_rfc3339(), "2099-12-31T23:59:59+00:00");
    }

    #[test]
    fn reversed_validity_is_refused() {
        let opts = TcgOptions {
            not_after: TcgOptions::default().not_before,
            ..TcgOptions::default()
        };
        assert!(matches!(
            tcg_identity(&[0; 32], b"fw", "dev", &opts),
            Err(DiceError::InvalidOptions(_))
        ));
    }
}
