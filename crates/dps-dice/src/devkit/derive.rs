//! The DevKit DICE/RIoT key derivation and its constant-nonce ECDSA, bit-exact.
//!
//! From the DevKit sources (`DiceCore.c`, `RiotCore.c`, `RiotCrypt.c`, `RiotKdf.c`,
//! `RiotEcc.c`):
//!
//! ```text
//! rDigest  = SHA-256(riot_core)
//! CDI      = SHA-256( SHA-256(UDS) || rDigest )
//! c1       = SHA-256(CDI)                              "don't use CDI directly"
//! DeviceID = DeriveEccKey(c1, "Identity")
//! FWID     = SHA-256(riot_fw)
//! c2       = SHA-256(c1 || FWID)
//! Alias    = DeriveEccKey(c2, "Alias")
//!
//! DeriveEccKey(src, label):
//!   out = HMAC-SHA256(key = src, LE32(1) || label || 0x00 || LE32(256))
//!   d   = out read as a little-endian integer; must satisfy 0 < d < n
//! ```
//!
//! The KDF is SP 800-108 counter mode, meant with big-endian counter and output length, but the
//! RIoT `UINT32_TO_BIGENDIAN` macro has an operator-precedence bug that makes it the identity,
//! so on the little-endian tool host and Cortex-M4 board both are serialised little-endian. The
//! scalar is little-endian because RIoT copies the 32 bytes into its array of native 32-bit
//! words, least significant word first.
//!
//! Signing is textbook ECDSA over SHA-256 of the TBS, except that the nonce is the constant
//! `k = 0x0102…1f20`: the DevKit's `get_random_bytes` was patched to fill its buffer with
//! `len, len-1, …, 1`, and RIoT reads that buffer little-endian.

use ecdsa::hazmat::sign_prehashed;
use hmac::{Hmac, Mac};
use p256::elliptic_curve::PrimeField;
use p256::{NistP256, NonZeroScalar, Scalar, SecretKey};
use sha2::{Digest, Sha256};
use x509_cert::spki::AlgorithmIdentifierOwned;

use crate::x509::{algorithm, oid, TbsSigner};
use crate::{DiceError, UDS_LEN};

/// The KDF label of the DeviceID key (`RIOT_LABEL_IDENTITY`).
const LABEL_IDENTITY: &[u8] = b"Identity";
/// The KDF label of the Alias key (`RIOT_LABEL_ALIAS`).
const LABEL_ALIAS: &[u8] = b"Alias";

/// The DevKit's ECDSA nonce, big-endian: 0x0102…1f20.
const CONSTANT_NONCE: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8 + 1;
        i += 1;
    }
    k
};

/// Every value of the derivation, kept for the tests against the reference vector.
pub(crate) struct Derivation {
    #[cfg_attr(not(test), allow(dead_code))]
    pub uds_digest: [u8; 32],
    pub riot_core_digest: [u8; 32],
    #[cfg_attr(not(test), allow(dead_code))]
    pub cdi: [u8; 32],
    #[cfg_attr(not(test), allow(dead_code))]
    pub device_id_seed: [u8; 32],
    pub device_id: SecretKey,
    pub fwid: [u8; 32],
    #[cfg_attr(not(test), allow(dead_code))]
    pub alias_seed: [u8; 32],
    pub alias: SecretKey,
}

/// Runs the DevKit derivation over the UDS and the two measured ranges.
pub(crate) fn derive(uds: &[u8; UDS_LEN], riot_core: &[u8], riot_fw: &[u8]) -> Result<Derivation, DiceError> {
    let uds_digest: [u8; 32] = Sha256::digest(uds).into();
    let riot_core_digest: [u8; 32] = Sha256::digest(riot_core).into();
    let cdi: [u8; 32] = Sha256::new()
        .chain_update(uds_digest)
        .chain_update(riot_core_digest)
        .finalize()
        .into();
    let device_id_seed: [u8; 32] = Sha256::digest(cdi).into();
    let device_id = derive_ecc_key(&device_id_seed, LABEL_IDENTITY, "DeviceID")?;
    let fwid: [u8; 32] = Sha256::digest(riot_fw).into();
    let alias_seed: [u8; 32] = Sha256::new()
        .chain_update(device_id_seed)
        .chain_update(fwid)
        .finalize()
        .into();
    let alias = derive_ecc_key(&alias_seed, LABEL_ALIAS, "Alias")?;
    Ok(Derivation {
        uds_digest,
        riot_core_digest,
        cdi,
        device_id_seed,
        device_id,
        fwid,
        alias_seed,
        alias,
    })
}

/// `RiotCrypt_DeriveEccKey`: one block of the (little-endian) SP 800-108 HMAC KDF, read as a
/// little-endian scalar.
fn derive_ecc_key(source: &[u8; 32], label: &[u8], which: &'static str) -> Result<SecretKey, DiceError> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(source).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(&1u32.to_le_bytes());
    mac.update(label);
    mac.update(&[0]);
    mac.update(&256u32.to_le_bytes());
    let mut scalar: [u8; 32] = mac.finalize().into_bytes().into();
    scalar.reverse();
    Option::<NonZeroScalar>::from(NonZeroScalar::from_repr(scalar.into()))
        .map(SecretKey::from)
        .ok_or(DiceError::DerivedKeyOutOfRange(which))
}

/// Signs like the DevKit: ECDSA P-256 over SHA-256 with the constant nonce, so the signature
/// (and hence the certificate) is the one the device itself produces.
pub(crate) struct ConstantNonceSigner<'a>(pub &'a SecretKey);

impl TbsSigner for ConstantNonceSigner<'_> {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        algorithm(oid::ECDSA_WITH_SHA256)
    }

    fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, DiceError> {
        let digest = Sha256::digest(tbs);
        let k = Option::<Scalar>::from(Scalar::from_repr(CONSTANT_NONCE.into()))
            .ok_or_else(|| DiceError::Signing("the constant nonce is not a scalar".into()))?;
        let d = self.0.to_nonzero_scalar();
        let (signature, _) =
            sign_prehashed::<NistP256, Scalar>(&d, k, &digest).map_err(|e| DiceError::Signing(e.to_string()))?;
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The verified DevKit vector (reference `hub-dice-tpm.md` B7).
    #[test]
    fn reference_vector_every_intermediate() {
        let uds: [u8; 32] = std::array::from_fn(|i| i as u8);
        let riot_core = [0xaa; 64];
        let riot_fw: Vec<u8> = (0..0x80).collect();
        let d = derive(&uds, &riot_core, &riot_fw).unwrap();

        assert_eq!(
            d.uds_digest.to_vec(),
            hex("630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd")
        );
        assert_eq!(
            d.riot_core_digest.to_vec(),
            hex("693e5f0f347a5d70acbb7baaab9beb988301b3e9588e32c73d7dcdfb7b2c4604")
        );
        assert_eq!(
            d.cdi.to_vec(),
            hex("4e73f8e515b73723f6d51252f46edd0ca494873693adb299b230aca045a70670")
        );
        assert_eq!(
            d.device_id_seed.to_vec(),
            hex("e5b9708ef837b40ad487869165d6d98712ce5d8958b581cb50ca92395a359dfc")
        );
        assert_eq!(
            d.device_id.to_bytes().to_vec(),
            hex("dacd7c0a9e1f4b62534ba2397d66c88b5c4c8d90745105f89c775103960b6503")
        );
        let device_point = d.device_id.public_key().to_encoded_point(false);
        assert_eq!(
            device_point.x().unwrap().to_vec(),
            hex("45fefbfdf78a70d2e23d0faa1d765a6a3e918eb9a7b43fe56863d9492e018d0c")
        );
        assert_eq!(
            device_point.y().unwrap().to_vec(),
            hex("aa2f2fbd78a22ae6e16f6fecc3f34ea5df9627d57fb87813512bc0a5dfdc48f6")
        );
        assert_eq!(
            d.fwid.to_vec(),
            hex("471fb943aa23c511f6f72f8d1652d9c880cfa392ad80503120547703e56a2be5")
        );
        assert_eq!(
            d.alias_seed.to_vec(),
            hex("b9b86404acb0ab8e2fdf97462f4ddf6b020c55fc3f02f5d2bd10c79ddead1cdd")
        );
        assert_eq!(
            d.alias.to_bytes().to_vec(),
            hex("35a2e6b2dfaffe64b39fe02493d088e10c341c6494b78c7ae8b5ef104eb525a1")
        );
        let alias_point = d.alias.public_key().to_encoded_point(false);
        assert_eq!(
            alias_point.x().unwrap().to_vec(),
            hex("00f7279d91692a0e8dc079530db3c845b9fa6e13c0c30da76dbf92d594bea3b8")
        );
        assert_eq!(
            alias_point.y().unwrap().to_vec(),
            hex("9bac6f565e482f1955c2c77ed8f1bd9c414b49781ac2a69368a3c39ae3347d55")
        );
    }

    #[test]
    fn the_constant_nonce_is_01_to_20() {
        assert_eq!(CONSTANT_NONCE[0], 0x01);
        assert_eq!(CONSTANT_NONCE[31], 0x20);
    }

    #[test]
    fn constant_nonce_signatures_verify_and_share_r() {
        use p256::ecdsa::signature::Verifier;
        use p256::ecdsa::{DerSignature, VerifyingKey};
        let key = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let signer = ConstantNonceSigner(&key);
        let a = signer.sign(b"first").unwrap();
        let b = signer.sign(b"second").unwrap();
        let verifying = VerifyingKey::from(key.public_key());
        verifying
            .verify(b"first", &DerSignature::from_bytes(&a).unwrap())
            .unwrap();
        verifying
            .verify(b"second", &DerSignature::from_bytes(&b).unwrap())
            .unwrap();
        // Same k, same r: the weakness the module documentation warns about.
        let r = |der: &[u8]| p256::ecdsa::Signature::from_der(der).unwrap().r().to_bytes();
        assert_eq!(r(&a), r(&b));
        assert_eq!(signer.sign(b"first").unwrap(), a);
    }
}
