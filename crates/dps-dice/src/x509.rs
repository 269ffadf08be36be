//! Certificate assembly shared by the DICE schemes.
//!
//! rcgen cannot produce either scheme's certificates: the DevKit layout (names with a
//! UTF8String countryName, a subjectAltName whose content is not a valid GeneralName, fixed
//! serial numbers and validity) must be reproduced byte for byte, and the TCG certificates must
//! be signed deterministically (RFC 6979) so a device can re-derive them at every boot, while
//! rcgen signs through ring, whose ECDSA nonces are random. So the certificate structure is
//! built with the RustCrypto `x509-cert` types, DER-encoded by the `der` crate, and the
//! to-be-signed bytes are handed to a [`TbsSigner`].

use base64::Engine as _;
use der::asn1::{Any, BitString, GeneralizedTime, OctetString, SetOfVec, UtcTime};
use der::{Decode, Encode, Tag};
use p256::pkcs8::EncodePublicKey;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};

use super::DiceError;

/// The object identifiers the DICE certificates use, spelled out so each is checkable against
/// its standard at a glance.
pub(crate) mod oid {
    use x509_cert::spki::ObjectIdentifier;

    /// ecdsa-with-SHA256 (RFC 5758).
    pub(crate) const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    /// ecdsa-with-SHA384 (RFC 5758).
    pub(crate) const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
    /// sha256WithRSAEncryption (RFC 4055).
    pub(crate) const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
    /// id-Ed25519 (RFC 8410).
    pub(crate) const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
    /// prime256v1 / secp256r1 (RFC 5480).
    pub(crate) const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    /// id-sha256 (NIST), the FWID hash algorithm.
    pub(crate) const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
    /// id-at-commonName.
    pub(crate) const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    /// id-at-countryName.
    pub(crate) const COUNTRY_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");
    /// id-at-organizationName.
    pub(crate) const ORGANIZATION_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
    /// id-ce-subjectKeyIdentifier.
    pub(crate) const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
    /// id-ce-keyUsage.
    pub(crate) const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
    /// id-ce-subjectAltName.
    pub(crate) const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
    /// id-ce-basicConstraints.
    pub(crate) const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
    /// id-ce-authorityKeyIdentifier.
    pub(crate) const AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
    /// id-ce-extKeyUsage.
    pub(crate) const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
    /// id-kp-clientAuth.
    pub(crate) const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
    /// tcg-dice-TcbInfo (TCG DICE Attestation Architecture).
    pub(crate) const TCG_DICE_TCB_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1");
    /// The Microsoft RIoT otherName type the DevKit puts in its subjectAltName.
    pub(crate) const MS_RIOT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.89.3.1");
}

/// Signs the DER of a TBSCertificate and names the algorithm it signs with.
pub(crate) trait TbsSigner {
    /// The AlgorithmIdentifier that goes into both the TBS and the certificate.
    fn algorithm(&self) -> AlgorithmIdentifierOwned;
    /// The signature value (for ECDSA the DER `Ecdsa-Sig-Value`) over `tbs`.
    fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, DiceError>;
}

/// Signs with a P-256 key using deterministic ECDSA (RFC 6979, SHA-256), so the same key and
/// TBS always give the same certificate.
pub(crate) struct P256Rfc6979<'a>(pub &'a p256::ecdsa::SigningKey);

impl TbsSigner for P256Rfc6979<'_> {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        algorithm(oid::ECDSA_WITH_SHA256)
    }

    fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, DiceError> {
        use p256::ecdsa::signature::Signer;
        let signature: p256::ecdsa::DerSignature =
            self.0.try_sign(tbs).map_err(|e| DiceError::Signing(e.to_string()))?;
        Ok(signature.as_bytes().to_vec())
    }
}

/// An AlgorithmIdentifier without parameters (the ECDSA and EdDSA form).
pub(crate) fn algorithm(oid: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid, parameters: None }
}

/// Everything of a certificate except the signature algorithm, which the signer decides.
pub(crate) struct CertFields {
    /// The serial number as an unsigned big-endian integer (leading zeros are stripped and a
    /// zero is prepended when the top bit is set, as DER requires).
    pub serial: Vec<u8>,
    pub issuer: Name,
    pub not_before: Time,
    pub not_after: Time,
    pub subject: Name,
    pub spki: SubjectPublicKeyInfoOwned,
    pub extensions: Vec<Extension>,
}

/// Builds the v3 certificate described by `fields`, signed by `signer`, as DER.
pub(crate) fn build_certificate(fields: CertFields, signer: &dyn TbsSigner) -> Result<Vec<u8>, DiceError> {
    let signature_algorithm = signer.algorithm();
    let tbs_certificate = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&fields.serial)?,
        signature: signature_algorithm.clone(),
        issuer: fields.issuer,
        validity: Validity {
            not_before: fields.not_before,
            not_after: fields.not_after,
        },
        subject: fields.subject,
        subject_public_key_info: fields.spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (!fields.extensions.is_empty()).then_some(fields.extensions),
    };
    let signature = signer.sign(&tbs_certificate.to_der()?)?;
    let cert = Certificate {
        tbs_certificate,
        signature_algorithm,
        signature: BitString::from_bytes(&signature)?,
    };
    Ok(cert.to_der()?)
}

/// A name whose every attribute value is a UTF8String, one attribute per RDN, in the given
/// order.
pub(crate) fn utf8_name(attributes: &[(ObjectIdentifier, &str)]) -> Result<Name, DiceError> {
    let mut rdns = Vec::with_capacity(attributes.len());
    for (oid, value) in attributes {
        let atv = AttributeTypeAndValue {
            oid: *oid,
            value: Any::new(Tag::Utf8String, value.as_bytes())?,
        };
        rdns.push(RelativeDistinguishedName(SetOfVec::try_from(vec![atv])?));
    }
    Ok(RdnSequence(rdns))
}

/// An extension whose value is `value_der` (the DER of the extension's ASN.1 value).
pub(crate) fn extension(extn_id: ObjectIdentifier, critical: bool, value_der: Vec<u8>) -> Result<Extension, DiceError> {
    Ok(Extension {
        extn_id,
        critical,
        extn_value: OctetString::new(value_der)?,
    })
}

/// A certificate time for the given Unix time, in the encoding RFC 5280 prescribes: UTCTime
/// through 2049, GeneralizedTime from 2050 on.
pub(crate) fn x509_time(unix_seconds: i64) -> Result<Time, DiceError> {
    let secs = u64::try_from(unix_seconds)
        .map_err(|_| DiceError::InvalidOptions("certificate times before 1970 are not supported".into()))?;
    let dt = der::DateTime::from_unix_duration(std::time::Duration::from_secs(secs))?;
    Ok(if dt.year() < 2050 {
        Time::UtcTime(UtcTime::from_date_time(dt)?)
    } else {
        Time::GeneralTime(GeneralizedTime::from_date_time(dt))
    })
}

/// The SubjectPublicKeyInfo of a P-256 key (id-ecPublicKey, prime256v1, uncompressed point).
pub(crate) fn p256_spki(key: &p256::PublicKey) -> Result<SubjectPublicKeyInfoOwned, DiceError> {
    let der = key
        .to_public_key_der()
        .map_err(|e| DiceError::KeyEncoding(e.to_string()))?;
    Ok(SubjectPublicKeyInfoOwned::from_der(der.as_bytes())?)
}

/// A P-256 public key as the uncompressed SEC1 point `04 || X || Y`.
pub(crate) fn uncompressed_point(key: &p256::PublicKey) -> [u8; 65] {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let point = key.to_encoded_point(false);
    let mut out = [0u8; 65];
    out.copy_from_slice(point.as_bytes());
    out
}

/// PEM with the body wrapped at 64 columns (RFC 7468), LF line ends.
pub(crate) fn pem_wrapped(label: &str, der: &[u8]) -> String {
    dps_pki::pem::to_pem(label, der)
}

/// PEM with the whole body on one line, LF line ends: what the RIoT `DERtoPEM` emits (and
/// what OpenSSL, rustls and Python all accept).
pub(crate) fn pem_one_line(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_switch_to_generalized_in_2050() {
        // 2049-12-31T23:59:59Z and 2050-01-01T00:00:00Z.
        assert!(matches!(x509_time(2_524_607_999).unwrap(), Time::UtcTime(_)));
        assert!(matches!(x509_time(2_524_608_000).unwrap(), Time::GeneralTime(_)));
        assert!(x509_time(-1).is_err());
    }

    #[test]
    fn one_line_pem_has_a_single_body_line() {
        let pem = pem_one_line("CERTIFICATE", &[0u8; 100]);
        assert_eq!(pem.lines().count(), 3);
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        let wrapped = pem_wrapped("CERTIFICATE", &[0u8; 100]);
        assert_eq!(wrapped.lines().count(), 5);
    }
}
