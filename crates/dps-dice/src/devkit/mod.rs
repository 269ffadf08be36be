//! The MXChip IoT DevKit (AZ3166) DICE/RIoT identity, byte-exact with its enrollment tool.
//!
//! The DevKit's `dps_cert_gen` / `dice_device_enrollment` tool takes the firmware's `.bin` and
//! `.map`, the board's UDS and a registration id, and writes the **alias certificate** the board
//! will present when it registers — the same bytes the board computes at boot, because the
//! derivation is deterministic (its ECDSA nonce is a constant). That certificate is uploaded as
//! the primary certificate of an X.509 individual enrollment. [`devkit_identity`] reproduces it
//! exactly, and also returns what only the board normally has: the alias private key and the
//! self-signed DeviceID certificate.
//!
//! Steps (each in its own module): [`FirmwareImage`] cuts the measured ranges out of the image
//! as the tool does; the derivation follows `RiotCore.c` with its little-endian KDF quirk and
//! constant nonce; the certificates follow the `RiotX509Bldr.c` templates, including the
//! malformed critical subjectAltName; PEM is emitted as RIoT's `DERtoPEM` does, with the whole
//! base64 body on one line.
//!
//! Because the nonce is constant and the DeviceID key signs two certificates with it, anyone
//! holding a DevKit alias certificate and DeviceID certificate can compute the DeviceID private
//! key. The scheme exists here for compatibility with deployed boards; new devices should use
//! [`tcg`](crate::tcg).

mod cert;
mod derive;
mod image;

pub use image::{
    parse_map, FirmwareImage, MapLayout, FLASH_ORIGIN_PATTERN, START_RIOT_CORE, START_RIOT_FW, STOP_RIOT_CORE,
    STOP_RIOT_FW,
};

use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::EncodePublicKey;

use crate::x509::{pem_one_line, uncompressed_point};
use crate::{DiceError, UDS_LEN};

/// The longest registration id the DevKit tool accepts.
pub const MAX_REGISTRATION_ID_LEN: usize = 128;

/// The longest registration id that fits the DevKit's certificate encoder (its UTF8String
/// writer only handles lengths below 127). Ids of 127 and 128 characters pass the tool's check
/// but the board and the tool then fail to build a certificate.
pub const MAX_CERTIFICATE_REGISTRATION_ID_LEN: usize = cert::MAX_COMMON_NAME_LEN;

/// A DevKit's DICE identity: what the enrollment tool writes (the alias certificate) and what
/// the board derives at boot.
#[derive(Clone, PartialEq, Eq)]
pub struct DevkitIdentity {
    /// The registration id, which is the alias certificate's subject CN.
    pub registration_id: String,
    /// The alias certificate, PEM with one base64 line, LF line ends: byte for byte the file
    /// the DevKit tool writes (`{registration_id}.pem`). Upload it as the primary certificate
    /// of an X.509 individual enrollment.
    pub alias_cert_pem: String,
    /// The alias certificate as DER.
    pub alias_cert_der: Vec<u8>,
    /// The alias private key, SEC1 `EC PRIVATE KEY` PEM (one base64 line), as the board holds
    /// it. With the alias certificate it lets a simulator register as the board.
    pub alias_key_pem: String,
    /// The self-signed DeviceID certificate, PEM with one base64 line (the board keeps it; the
    /// tool never writes it).
    pub device_id_cert_pem: String,
    /// The DeviceID certificate as DER.
    pub device_id_cert_der: Vec<u8>,
    /// The DeviceID public key as the uncompressed point `04 || X || Y`. It does not change with
    /// the firmware's RIoT FW part, only with the UDS and the RIoT Core.
    pub device_id_public_key: [u8; 65],
    /// The DeviceID public key as a `PUBLIC KEY` (SubjectPublicKeyInfo) PEM with one base64
    /// line, as the board exports it.
    pub device_id_public_key_pem: String,
    /// SHA-256 of the RIoT FW range: the firmware measurement in the alias certificate's
    /// subjectAltName.
    pub fwid: [u8; 32],
    /// SHA-256 of the RIoT Core range (`rDigest`), which the CDI and so the DeviceID depend on.
    pub riot_core_digest: [u8; 32],
}

impl std::fmt::Debug for DevkitIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevkitIdentity")
            .field("registration_id", &self.registration_id)
            .field("alias_cert_pem", &self.alias_cert_pem)
            .field("alias_key_pem", &"<redacted>")
            .field("device_id_cert_pem", &self.device_id_cert_pem)
            .field("fwid", &crate::lower_hex(&self.fwid))
            .finish_non_exhaustive()
    }
}

/// Derives a DevKit's identity and certificates from its UDS and firmware image.
///
/// `registration_id` is taken as given (it is the alias certificate's CN); check user input
/// with [`validate_registration_id`] first, or build the automatic id with
/// [`auto_registration_id`], as the tool does. It must be non-empty and at most
/// [`MAX_CERTIFICATE_REGISTRATION_ID_LEN`] bytes, the most the DevKit's encoder can write.
pub fn devkit_identity(
    uds: &[u8; UDS_LEN],
    image: &FirmwareImage,
    registration_id: &str,
) -> Result<DevkitIdentity, DiceError> {
    if registration_id.is_empty() || registration_id.len() > MAX_CERTIFICATE_REGISTRATION_ID_LEN {
        return Err(DiceError::InvalidRegistrationId {
            id: registration_id.to_owned(),
            reason: format!("the DevKit certificate encoder takes 1 to {MAX_CERTIFICATE_REGISTRATION_ID_LEN} bytes"),
        });
    }
    let d = derive::derive(uds, image.riot_core(), image.riot_fw())?;
    let device_id_public = d.device_id.public_key();
    let alias_public = d.alias.public_key();
    let signer = derive::ConstantNonceSigner(&d.device_id);

    let alias_cert_der = cert::alias_certificate(registration_id, &alias_public, &device_id_public, &d.fwid, &signer)?;
    let device_id_cert_der = cert::device_id_certificate(&device_id_public, &signer)?;
    let alias_key_der = sec1_private_key(&d.alias)?;
    let device_id_spki = device_id_public
        .to_public_key_der()
        .map_err(|e| DiceError::KeyEncoding(e.to_string()))?;

    Ok(DevkitIdentity {
        registration_id: registration_id.to_owned(),
        alias_cert_pem: pem_one_line("CERTIFICATE", &alias_cert_der),
        alias_cert_der,
        alias_key_pem: pem_one_line("EC PRIVATE KEY", &alias_key_der),
        device_id_cert_pem: pem_one_line("CERTIFICATE", &device_id_cert_der),
        device_id_cert_der,
        device_id_public_key: uncompressed_point(&device_id_public),
        device_id_public_key_pem: pem_one_line("PUBLIC KEY", device_id_spki.as_bytes()),
        fwid: d.fwid,
        riot_core_digest: d.riot_core_digest,
    })
}

/// The SEC1 `ECPrivateKey` the board exports: version 1, the 32-byte private key, `[0]`
/// prime256v1 and `[1]` the uncompressed public key. (`p256`'s own SEC1 encoder leaves out the
/// curve parameters, which would change the bytes.)
fn sec1_private_key(key: &p256::SecretKey) -> Result<Zeroizing<Vec<u8>>, DiceError> {
    use der::Encode;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let private_key = Zeroizing::new(key.to_bytes());
    let public_key = key.public_key().to_encoded_point(false);
    let der = sec1::EcPrivateKey {
        private_key: &private_key,
        parameters: Some(sec1::EcParameters::NamedCurve(crate::x509::oid::PRIME256V1)),
        public_key: Some(public_key.as_bytes()),
    }
    .to_der()?;
    Ok(Zeroizing::new(der))
}

/// Checks a user-supplied registration id as the DevKit tool does: at most 128 characters, each
/// a lowercase ASCII letter, a digit or `-`. An empty id is refused here; the tool takes empty
/// input to mean "generate one" ([`auto_registration_id`]).
pub fn validate_registration_id(registration_id: &str) -> Result<(), DiceError> {
    let invalid = |reason: &str| DiceError::InvalidRegistrationId {
        id: registration_id.to_owned(),
        reason: reason.to_owned(),
    };
    if registration_id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if registration_id.len() > MAX_REGISTRATION_ID_LEN {
        return Err(invalid("it is longer than 128 characters"));
    }
    if !registration_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("only lowercase letters, digits and '-' are allowed"));
    }
    Ok(())
}

/// The registration id the DevKit tool generates when none is given:
/// `az-{mac}v{version with every '.' replaced by 'v'}`, e.g. MAC `a0b1c2d3e4f5` and firmware
/// `1.2.3` give `az-a0b1c2d3e4f5v1v2v3`.
///
/// Validated as the tool does: the MAC must be 12 characters (its content is not checked, nor
/// lowercased — type it as the board shows it), the version `num.num.num`. The tool's prompt
/// reads at most 5 characters of the version, so longer versions could not be entered there;
/// they are accepted here.
pub fn auto_registration_id(mac_address: &str, firmware_version: &str) -> Result<String, DiceError> {
    if mac_address.len() != 12 {
        return Err(DiceError::InvalidMacAddress(mac_address.to_owned()));
    }
    let parts: Vec<&str> = firmware_version.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(DiceError::InvalidFirmwareVersion(firmware_version.to_owned()));
    }
    Ok(format!("az-{mac_address}v{}", parts.join("v")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_id_rules_follow_the_tool() {
        validate_registration_id("devkit-dps-sample").unwrap();
        validate_registration_id(&"a".repeat(128)).unwrap();
        for bad in ["", "Upper", "under_score", "dot.ted", "space d", &"a".repeat(129)] {
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
    fn automatic_registration_id() {
        assert_eq!(
            auto_registration_id("a0b1c2d3e4f5", "1.2.3").unwrap(),
            "az-a0b1c2d3e4f5v1v2v3"
        );
        assert_eq!(
            auto_registration_id("A0B1C2D3E4F5", "10.20.30").unwrap(),
            "az-A0B1C2D3E4F5v10v20v30"
        );
        assert!(matches!(
            auto_registration_id("a0b1c2d3e4", "1.2.3"),
            Err(DiceError::InvalidMacAddress(_))
        ));
        for bad in ["", "1.2", "1.2.3.4", "1..3", ".1.2", "1.2.", "1.a.3"] {
            assert!(
                matches!(
                    auto_registration_id("a0b1c2d3e4f5", bad),
                    Err(DiceError::InvalidFirmwareVersion(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn registration_ids_the_encoder_cannot_write_are_refused() {
        let image = FirmwareImage::from_ranges(vec![0xaa; 64], vec![1, 2, 3]).unwrap();
        let uds = [0u8; 32];
        assert!(devkit_identity(&uds, &image, &"a".repeat(126)).is_ok());
        for bad in [String::new(), "a".repeat(127)] {
            assert!(matches!(
                devkit_identity(&uds, &image, &bad),
                Err(DiceError::InvalidRegistrationId { .. })
            ));
        }
    }
}
