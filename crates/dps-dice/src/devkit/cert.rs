//! The DevKit certificate templates (`RiotCore.c` data, `RiotX509Bldr.c` layout).
//!
//! Both certificates: v3, ecdsa-with-SHA256, names as one attribute per RDN in the order
//! CN, C, O with every value a UTF8String (even countryName), validity UTCTime
//! `170101000000Z`..`370101000000Z`, 5-byte serial numbers. The RIoT DER encoder writes
//! minimal lengths and integers, so standard DER of the same structure is byte-identical.

use der::asn1::{OctetStringRef, UtcTime};
use der::{Encode, Sequence};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::name::Name;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::time::Time;

use crate::x509::{build_certificate, extension, oid, p256_spki, utf8_name, CertFields, TbsSigner};
use crate::DiceError;

/// Alias certificate serial number.
const ALIAS_SERIAL: [u8; 5] = [0x0a, 0x0b, 0x0c, 0x0d, 0x0e];
/// DeviceID certificate serial number.
const DEVICE_ID_SERIAL: [u8; 5] = [0x0e, 0x0d, 0x0c, 0x0b, 0x0a];
/// Issuer CN of both certificates and subject CN of the DeviceID certificate.
const ISSUER_COMMON_NAME: &str = "devkitdice";
/// Organisation of every name.
const ORGANIZATION: &str = "DEVKIT_TEST";
/// Country of every name.
const COUNTRY: &str = "US";
/// 2017-01-01T00:00:00Z.
const NOT_BEFORE_UNIX: u64 = 1_483_228_800;
/// 2037-01-01T00:00:00Z.
const NOT_AFTER_UNIX: u64 = 2_114_380_800;
/// basicConstraints pathLen of the DeviceID certificate.
const DEVICE_ID_PATH_LEN: u8 = 2;

/// The RIoT DER encoder's limit on a UTF8String (`DERAddUTF8String` asserts `len < 127`): a
/// longer registration id makes the DevKit fail to build its certificate.
pub(crate) const MAX_COMMON_NAME_LEN: usize = 126;

/// The value inside the alias certificate's subjectAltName: what RFC 5280 calls an otherName,
/// but with the RIoT identity SEQUENCE directly after the type-id instead of inside the
/// `[0] EXPLICIT` wrapper the standard requires. Strict parsers reject it; it is reproduced
/// as the DevKit writes it.
#[derive(Sequence)]
struct RiotSubjectAltName<'a> {
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    other_name: RiotOtherName<'a>,
}

#[derive(Sequence)]
struct RiotOtherName<'a> {
    type_id: ObjectIdentifier,
    value: RiotIdentity<'a>,
}

/// `SEQUENCE { INTEGER 1, DeviceID SubjectPublicKeyInfo, SEQUENCE { sha256, FWID } }`.
#[derive(Sequence)]
struct RiotIdentity<'a> {
    version: u8,
    device_id: SubjectPublicKeyInfoOwned,
    fwid: RiotFwid<'a>,
}

#[derive(Sequence)]
struct RiotFwid<'a> {
    hash_algorithm: ObjectIdentifier,
    digest: OctetStringRef<'a>,
}

fn name(common_name: &str) -> Result<Name, DiceError> {
    utf8_name(&[
        (oid::COMMON_NAME, common_name),
        (oid::COUNTRY_NAME, COUNTRY),
        (oid::ORGANIZATION_NAME, ORGANIZATION),
    ])
}

fn validity() -> Result<(Time, Time), DiceError> {
    let time = |secs| -> Result<Time, DiceError> {
        Ok(Time::UtcTime(UtcTime::from_unix_duration(
            std::time::Duration::from_secs(secs),
        )?))
    };
    Ok((time(NOT_BEFORE_UNIX)?, time(NOT_AFTER_UNIX)?))
}

/// The alias certificate: subject CN = registration id, the alias public key, issued by the
/// DeviceID key under the fixed `devkitdice` name, with a critical clientAuth EKU and the
/// critical RIoT subjectAltName (DeviceID public key + FWID).
pub(crate) fn alias_certificate(
    registration_id: &str,
    alias: &p256::PublicKey,
    device_id: &p256::PublicKey,
    fwid: &[u8; 32],
    signer: &dyn TbsSigner,
) -> Result<Vec<u8>, DiceError> {
    let eku = x509_cert::ext::pkix::ExtendedKeyUsage(vec![oid::CLIENT_AUTH]).to_der()?;
    let san = RiotSubjectAltName {
        other_name: RiotOtherName {
            type_id: oid::MS_RIOT,
            value: RiotIdentity {
                version: 1,
                device_id: p256_spki(device_id)?,
                fwid: RiotFwid {
                    hash_algorithm: oid::SHA256,
                    digest: OctetStringRef::new(fwid)?,
                },
            },
        },
    }
    .to_der()?;
    let (not_before, not_after) = validity()?;
    build_certificate(
        CertFields {
            serial: ALIAS_SERIAL.to_vec(),
            issuer: name(ISSUER_COMMON_NAME)?,
            not_before,
            not_after,
            subject: name(registration_id)?,
            spki: p256_spki(alias)?,
            extensions: vec![
                extension(oid::EXT_KEY_USAGE, true, eku)?,
                extension(oid::SUBJECT_ALT_NAME, true, san)?,
            ],
        },
        signer,
    )
}

/// The self-signed DeviceID certificate: `devkitdice` names, the DeviceID public key, and a
/// non-critical basicConstraints `CA:TRUE, pathLen 2` as its only extension.
pub(crate) fn device_id_certificate(device_id: &p256::PublicKey, signer: &dyn TbsSigner) -> Result<Vec<u8>, DiceError> {
    let basic_constraints = BasicConstraints {
        ca: true,
        path_len_constraint: Some(DEVICE_ID_PATH_LEN),
    }
    .to_der()?;
    let (not_before, not_after) = validity()?;
    build_certificate(
        CertFields {
            serial: DEVICE_ID_SERIAL.to_vec(),
            issuer: name(ISSUER_COMMON_NAME)?,
            not_before,
            not_after,
            subject: name(ISSUER_COMMON_NAME)?,
            spki: p256_spki(device_id)?,
            extensions: vec![extension(oid::BASIC_CONSTRAINTS, false, basic_constraints)?],
        },
        signer,
    )
}
