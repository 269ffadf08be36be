//! The key schedule of the TCG scheme (documented, with its labels, in the parent module).
//!
//! Every constant here is part of the scheme: changing one changes every device's keys, so a
//! change needs a new scheme version (`dps-dice-v2/…`), never an edit.

use hkdf::Hkdf;
use p256::{NonZeroScalar, SecretKey};
use sha2::{Digest, Sha256};

use crate::{DiceError, UDS_LEN};

/// HKDF salt when extracting the layer-0 CDI from the UDS.
pub(crate) const SALT_UDS: &[u8] = b"dps-dice-v1/uds";
/// HKDF info of every CDI.
pub(crate) const INFO_CDI: &[u8] = b"dps-dice-v1/cdi";
/// HKDF salt when deriving a private key from a CDI.
pub(crate) const SALT_KEY: &[u8] = b"dps-dice-v1/key";
/// HKDF info (before the counter byte) of the DeviceID private key.
pub(crate) const INFO_DEVICE_ID: &[u8] = b"dps-dice-v1/device-id";
/// HKDF info (before the counter byte) of the Alias private key.
pub(crate) const INFO_ALIAS: &[u8] = b"dps-dice-v1/alias";
/// HKDF salt when deriving a certificate serial number / key id from a public key.
pub(crate) const SALT_ID: &[u8] = b"dps-dice-v1/id";
/// HKDF info of a certificate serial number / key id.
pub(crate) const INFO_ID: &[u8] = b"dps-dice-v1/serial";

/// Length of a key id (and certificate serial number) in bytes: the RFC 5280 maximum.
pub(crate) const ID_LEN: usize = 20;

fn hkdf_sha256<const N: usize>(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> [u8; N] {
    let mut okm = [0u8; N];
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand_multi_info(info, &mut okm)
        // N is at most 32 here, far below HKDF-SHA256's limit of 255 * 32 bytes.
        .unwrap_or_else(|_| unreachable!("HKDF output length {N} is within the limit"));
    okm
}

/// Layer 0: `CDI₀ = HKDF-SHA256(salt = "dps-dice-v1/uds", IKM = UDS, info = "dps-dice-v1/cdi")`.
pub(crate) fn layer0_cdi(uds: &[u8; UDS_LEN]) -> [u8; 32] {
    hkdf_sha256(SALT_UDS, uds, &[INFO_CDI])
}

/// Layer 1: `CDI₁ = HKDF-SHA256(salt = FWID, IKM = CDI₀, info = "dps-dice-v1/cdi")`.
pub(crate) fn layer1_cdi(cdi0: &[u8; 32], fwid: &[u8; 32]) -> [u8; 32] {
    hkdf_sha256(fwid, cdi0, &[INFO_CDI])
}

/// `FWID = SHA-256(firmware image)`.
pub(crate) fn fwid(firmware: &[u8]) -> [u8; 32] {
    Sha256::digest(firmware).into()
}

/// A P-256 private key from a CDI: `HKDF-SHA256(salt = "dps-dice-v1/key", IKM = CDI,
/// info = label || counter)` for counter = 0, 1, …, the first output that read big-endian is in
/// `[1, n-1]`. (An output outside that range has probability about 2^-32.)
pub(crate) fn derive_key(cdi: &[u8; 32], label: &[u8], which: &'static str) -> Result<SecretKey, DiceError> {
    for counter in 0..=u8::MAX {
        let candidate: [u8; 32] = hkdf_sha256(SALT_KEY, cdi, &[label, &[counter]]);
        if let Some(scalar) = Option::<NonZeroScalar>::from(NonZeroScalar::from_repr(candidate.into())) {
            return Ok(SecretKey::from(scalar));
        }
    }
    Err(DiceError::DerivedKeyOutOfRange(which))
}

/// The id of a public key, used as its certificate's serial number (and, in hex, in the
/// DeviceID's subject): `HKDF-SHA256(salt = "dps-dice-v1/id", IKM = 04||X||Y,
/// info = "dps-dice-v1/serial")`, 20 bytes, top bit cleared so the serial is positive.
pub(crate) fn key_id(uncompressed_point: &[u8; 65]) -> [u8; ID_LEN] {
    let mut id: [u8; ID_LEN] = hkdf_sha256(SALT_ID, uncompressed_point, &[INFO_ID]);
    id[0] &= 0x7f;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the scheme: these values must never change for v1 (devices in the field re-derive
    /// them at every boot). Computed independently with Python's `cryptography` HKDF from the
    /// definitions in the module documentation.
    #[test]
    fn key_schedule_is_pinned() {
        let uds: [u8; 32] = std::array::from_fn(|i| i as u8);
        let cdi0 = layer0_cdi(&uds);
        let fw = fwid(b"firmware v1");
        let cdi1 = layer1_cdi(&cdi0, &fw);
        let device_id = derive_key(&cdi0, INFO_DEVICE_ID, "DeviceID").unwrap();
        let alias = derive_key(&cdi1, INFO_ALIAS, "Alias").unwrap();
        let hex = crate::lower_hex;
        assert_eq!(hex(&cdi0), PINNED_CDI0);
        assert_eq!(hex(&cdi1), PINNED_CDI1);
        assert_eq!(hex(&device_id.to_bytes()), PINNED_DEVICE_ID);
        assert_eq!(hex(&alias.to_bytes()), PINNED_ALIAS);
    }

    const PINNED_CDI0: &str = "92bfa8fa5463c8f12d18ed8eb2636ee76acaab2db32b83c0ee11065327a78db8";
    const PINNED_CDI1: &str = "fed2c93523d5671da8996267caf34bac178e59866e81f46c99276c8a5b5f8060";
    const PINNED_DEVICE_ID: &str = "738d71584bec20cd37235c65b8b838b37286dfb30414792378a83fd09b0afffb";
    const PINNED_ALIAS: &str = "afd3f84a8206eb14f7efafcb202d45eea0acefdbf920344d85652a18632c133b";

    #[test]
    fn key_ids_are_positive_and_depend_on_the_key() {
        let a = key_id(&[4u8; 65]);
        let b = key_id(&[5u8; 65]);
        assert!(a[0] < 0x80 && b[0] < 0x80);
        assert_ne!(a, b);
    }
}
