//! Seeded protection, the outer layer MakeCredential and Duplicate share (TPM 2.0 Part 1 §24.4–
//! 24.5): a random seed RSA-OAEP-encrypted to the receiving key (`label` tells the uses apart),
//! from which `KDFa` derives an AES-128 key bound to an object `name` and an HMAC key; the
//! plaintext is encrypted with CFB and an HMAC over ciphertext ‖ name is put in front, as a
//! `TPM2B_DIGEST`.

use rand::{CryptoRng, RngCore};

use crate::crypto::{cfb_encrypt, hmac_sha256, oaep_encrypt, protection_keys, random, SEED_LEN};
use crate::marshal::put_tpm2b;
use crate::public::RsaPublic;
use crate::TpmError;

/// A protected value: the encrypted seed (`TPM2B_ENCRYPTED_SECRET` content) and
/// `u16(32) ‖ HMAC ‖ ciphertext` (`TPM2B_ID_OBJECT` or `TPM2B_PRIVATE` content).
pub(crate) struct Protected {
    pub secret: Vec<u8>,
    pub blob: Vec<u8>,
}

/// Protects `plaintext` for the holder of `key`'s private part, bound to `name`.
pub(crate) fn protect<R: CryptoRng + RngCore>(
    rng: &mut R,
    key: &RsaPublic,
    label: &str,
    what: &'static str,
    name: &[u8],
    plaintext: &[u8],
) -> Result<Protected, TpmError> {
    let seed = random(rng, SEED_LEN);
    let secret = oaep_encrypt(rng, key, label, &seed, what)?;
    let (sym_key, hmac_key) = protection_keys(&seed, name);
    let mut ciphertext = plaintext.to_vec();
    cfb_encrypt(&sym_key, &mut ciphertext);
    let integrity = hmac_sha256(&hmac_key, &[&ciphertext, name]);
    let mut blob = Vec::with_capacity(34 + ciphertext.len());
    put_tpm2b(&mut blob, &integrity, "integrity HMAC")?;
    blob.extend_from_slice(&ciphertext);
    Ok(Protected { secret, blob })
}

/// The inverse of [`protect`] with the private key, checking the HMAC first (software TPM).
#[cfg(feature = "software-tpm")]
pub(crate) fn unprotect(
    private: &rsa::RsaPrivateKey,
    label: &str,
    what: &'static str,
    name: &[u8],
    blob: &[u8],
    secret: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, TpmError> {
    use crate::crypto::cfb_decrypt;
    use crate::marshal::Reader;

    let failed = TpmError::Integrity { what };
    let seed = zeroize::Zeroizing::new(
        private
            .decrypt(rsa::Oaep::new_with_label::<sha2::Sha256, _>(label), secret)
            .map_err(|_| failed.clone())?,
    );
    let mut r = Reader::new(blob);
    let integrity = r.tpm2b(what)?;
    let mut plaintext = zeroize::Zeroizing::new(r.bytes(r.remaining(), what)?.to_vec());
    let (sym_key, hmac_key) = protection_keys(&seed, name);
    if hmac_sha256(&hmac_key, &[&plaintext, name]) != integrity {
        return Err(failed);
    }
    cfb_decrypt(&sym_key, &mut plaintext);
    Ok(plaintext)
}
