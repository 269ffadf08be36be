//! A software stand-in for the device's TPM, for tests that cannot run swtpm or want to be fast:
//! it holds EK and SRK private keys and does what ActivateCredential + Import do, checking every
//! integrity value the TPM checks. It is a test double for the *device*; the service code under
//! test is the real one, and `tests/swtpm.rs` proves the blob against a real TPM.

use rand::{CryptoRng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use zeroize::Zeroizing;

use crate::public::RsaPublic;
use crate::{credential, duplication, ActivationBlob, TpmError};

/// EK and SRK key pairs, as a TPM would hold them.
pub struct SoftwareTpm {
    ek: RsaPrivateKey,
    srk: RsaPrivateKey,
}

impl std::fmt::Debug for SoftwareTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareTpm").finish_non_exhaustive()
    }
}

impl SoftwareTpm {
    /// Generates RSA-2048 EK and SRK key pairs.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Result<Self, rsa::Error> {
        Ok(Self {
            ek: RsaPrivateKey::new(rng, 2048)?,
            srk: RsaPrivateKey::new(rng, 2048)?,
        })
    }

    /// Uses existing key pairs (RSA-2048, exponent 65537).
    pub fn from_keys(ek: RsaPrivateKey, srk: RsaPrivateKey) -> Self {
        Self { ek, srk }
    }

    fn public(key: &RsaPrivateKey, template: fn(Vec<u8>) -> RsaPublic) -> RsaPublic {
        let modulus = key.n().to_bytes_be();
        let mut padded = vec![0u8; 256usize.saturating_sub(modulus.len())];
        padded.extend_from_slice(&modulus);
        template(padded)
    }

    /// The EK's marshalled `TPM2B_PUBLIC` (TCG EK template), as a device sends it.
    pub fn endorsement_key(&self) -> Vec<u8> {
        Self::public(&self.ek, RsaPublic::endorsement_template).to_tpm2b()
    }

    /// The SRK's marshalled `TPM2B_PUBLIC`.
    pub fn storage_root_key(&self) -> Vec<u8> {
        Self::public(&self.srk, RsaPublic::storage_template).to_tpm2b()
    }

    /// ActivateCredential (credential bound to this SRK's Name) then Import under the SRK:
    /// returns the HMAC key the blob carries.
    pub fn activate(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let blob = ActivationBlob::parse(blob)?;
        let srk_name = Self::public(&self.srk, RsaPublic::storage_template).name();
        let inner = credential::activate_credential(&self.ek, &srk_name, &blob.credential_blob, &blob.secret)?;
        duplication::import(&self.srk, &inner, &blob.public, &blob.duplicate, &blob.in_sym_seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{registration_id, wrap_key};

    #[test]
    fn round_trip_and_binding() {
        let mut rng = rand::thread_rng();
        let a = SoftwareTpm::generate(&mut rng).unwrap();
        let b = SoftwareTpm::generate(&mut rng).unwrap();
        let key = [0x5a; 32];
        let blob = wrap_key(&a.endorsement_key(), &a.storage_root_key(), &key, &mut rng).unwrap();
        assert_eq!(blob.credential_blob.len(), 52);
        assert_eq!(blob.secret.len(), 256);
        assert_eq!(blob.duplicate.len(), 142);
        assert_eq!(blob.in_sym_seed.len(), 256);
        assert_eq!(blob.public.len(), 48);
        let bytes = blob.to_bytes().unwrap();
        assert_eq!(bytes.len(), 766);
        assert_eq!(&a.activate(&bytes).unwrap()[..], &key);

        // Another TPM's EK cannot activate it.
        assert!(matches!(b.activate(&bytes), Err(TpmError::Integrity { .. })));
        // Right EK, credential bound to another SRK.
        let other_srk = wrap_key(&a.endorsement_key(), &b.storage_root_key(), &key, &mut rng).unwrap();
        let e = a.activate(&other_srk.to_bytes().unwrap()).unwrap_err();
        assert!(e.to_string().contains("ActivateCredential"), "{e}");
        // A flipped bit in the duplicate fails the outer HMAC.
        let mut tampered = blob.clone();
        tampered.duplicate[40] ^= 1;
        let e = a.activate(&tampered.to_bytes().unwrap()).unwrap_err();
        assert!(e.to_string().contains("outer wrapper"), "{e}");
        // A different public area breaks the name binding.
        let mut other_public = blob.clone();
        other_public.public[20] ^= 1;
        assert!(a.activate(&other_public.to_bytes().unwrap()).is_err());

        assert_eq!(registration_id(&a.endorsement_key()).len(), 52);
        assert!(matches!(
            wrap_key(&a.endorsement_key(), &a.storage_root_key(), &[], &mut rng),
            Err(TpmError::KeyLength(0))
        ));
        let e = wrap_key(&a.storage_root_key()[..10], &a.storage_root_key(), &key, &mut rng).unwrap_err();
        assert!(e.to_string().starts_with("endorsement key"), "{e}");
    }
}
