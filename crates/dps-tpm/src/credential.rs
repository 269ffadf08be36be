//! Credential protection (TPM 2.0 Part 1 §24, "MakeCredential" done in software): a secret only
//! the TPM holding the EK can recover, and only through ActivateCredential with an object whose
//! Name is the one bound here — for DPS, the device's SRK (hub-dice-tpm.md §C4 step 1).

use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::marshal::tpm2b;
use crate::protection::protect;
use crate::public::RsaPublic;
use crate::TpmError;

/// `IDENTITY` OAEP label of MakeCredential seeds (with its NUL).
pub(crate) const IDENTITY_LABEL: &str = "IDENTITY\0";

/// MakeCredential output: the `TPM2B_ID_OBJECT` content and the `TPM2B_ENCRYPTED_SECRET` content.
pub(crate) struct Credential {
    pub credential_blob: Vec<u8>,
    pub secret: Vec<u8>,
}

/// MakeCredential(`ek`, `credential`, `object_name`): the credential, as a `TPM2B_DIGEST`,
/// protected to the EK and bound to the object's name.
pub(crate) fn make_credential<R: CryptoRng + RngCore>(
    rng: &mut R,
    ek: &RsaPublic,
    credential: &[u8],
    object_name: &[u8],
) -> Result<Credential, TpmError> {
    let plaintext = Zeroizing::new(tpm2b(credential, "credential")?);
    let p = protect(rng, ek, IDENTITY_LABEL, "endorsement key", object_name, &plaintext)?;
    Ok(Credential {
        credential_blob: p.blob,
        secret: p.secret,
    })
}

/// ActivateCredential in software: the inverse of [`make_credential`], given the EK's private key.
#[cfg(feature = "software-tpm")]
pub(crate) fn activate_credential(
    ek_private: &rsa::RsaPrivateKey,
    object_name: &[u8],
    credential_blob: &[u8],
    secret: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let what = "credential (ActivateCredential)";
    let plaintext =
        crate::protection::unprotect(ek_private, IDENTITY_LABEL, what, object_name, credential_blob, secret)?;
    let mut r = crate::marshal::Reader::new(&plaintext);
    let credential = Zeroizing::new(r.tpm2b("credential")?.to_vec());
    r.finish("credential")?;
    Ok(credential)
}
