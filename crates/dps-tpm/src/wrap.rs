//! The service side of DPS TPM attestation in one call: an activation blob that delivers an HMAC
//! key into the device's TPM (hub-dice-tpm.md §C4).

use rand::{CryptoRng, RngCore};

use crate::credential::make_credential;
use crate::crypto::{random, AES128_KEY_LEN};
use crate::duplication::duplicate;
use crate::public::RsaPublic;
use crate::{ActivationBlob, TpmError};

/// Longest key wrapped: one SHA-256 block. A longer HMAC key would be hashed first in software,
/// but a TPM need not accept it as a keyed-hash object.
pub const MAX_KEY_LEN: usize = 64;

/// Builds the activation blob for `key` (32 random bytes in DPS) and the device whose EK and SRK
/// are the marshalled `TPM2B_PUBLIC`s `ek_tpm2b` and `srk_tpm2b`.
///
/// A fresh 16-byte inner key is the MakeCredential credential, to the EK and bound to the SRK's
/// Name, so only that TPM, with that SRK, can recover it; the HMAC key travels as a duplicate of a
/// keyed-hash object (`userWithAuth | sign`, HMAC-SHA256) wrapped with that inner key and, outside,
/// to the SRK. The device imports it and signs SAS tokens with TPM2_HMAC, which equals software
/// HMAC-SHA256 with `key` — how the service then verifies the device.
pub fn wrap_key<R: CryptoRng + RngCore>(
    ek_tpm2b: &[u8],
    srk_tpm2b: &[u8],
    key: &[u8],
    rng: &mut R,
) -> Result<ActivationBlob, TpmError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(TpmError::KeyLength(key.len()));
    }
    let ek = RsaPublic::endorsement_key(ek_tpm2b)?;
    let srk = RsaPublic::storage_root_key(srk_tpm2b)?;
    let inner_key = random(rng, AES128_KEY_LEN);
    let credential = make_credential(rng, &ek, &inner_key, &srk.name())?;
    let dup = duplicate(rng, &srk, key, &inner_key)?;
    Ok(ActivationBlob {
        credential_blob: credential.credential_blob,
        secret: credential.secret,
        duplicate: dup.duplicate,
        in_sym_seed: dup.in_sym_seed,
        public: dup.public,
        enc_data: Vec::new(),
    })
}
