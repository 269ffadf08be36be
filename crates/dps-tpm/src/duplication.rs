//! Duplication (TPM 2.0 Part 1 §23, "Duplicate" done in software) of a keyed-hash HMAC key to the
//! device's SRK, with an inner wrapper (AES-128-CFB under a key delivered by the credential) and
//! an outer wrapper (seed RSA-OAEP-encrypted to the SRK) — hub-dice-tpm.md §C4 steps 2–5. The
//! device runs TPM2_Import with the inner key and gets an HMAC key only its TPM can use.

use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{cfb_encrypt, random, SEED_LEN};
use crate::marshal::{put_tpm2b, tpm2b};
use crate::protection::protect;
use crate::public::{attributes, name_of, RsaPublic, ALG_HMAC, ALG_KEYEDHASH, ALG_SHA256};
use crate::TpmError;

/// `DUPLICATE` OAEP label of duplication seeds (with its NUL).
pub(crate) const DUPLICATE_LABEL: &str = "DUPLICATE\0";

/// Attributes of the identity key: `userWithAuth | sign`. Not `fixedTPM`/`fixedParent` — an
/// importable object must not claim them (Import fails `TPM_RC_ATTRIBUTES`) — and not `noDA`,
/// matching the recipe verified on swtpm.
pub const IDENTITY_KEY_ATTRIBUTES: u32 = attributes::USER_WITH_AUTH | attributes::SIGN;

/// Duplicate output: the identity key's `TPMT_PUBLIC` and the `TPM2B_PRIVATE` and
/// `TPM2B_ENCRYPTED_SECRET` contents.
pub(crate) struct Duplicate {
    pub public: Vec<u8>,
    pub duplicate: Vec<u8>,
    pub in_sym_seed: Vec<u8>,
}

/// The `TPMT_PUBLIC` of a keyed-hash HMAC-SHA256 key whose `unique` is `SHA-256(seed ‖ key)`.
/// The scheme must be HMAC-SHA256, never NULL: the C SDK signs with `TPM_ALG_NULL` and relies on
/// the key's own scheme.
pub fn identity_key_public(seed_value: &[u8], key: &[u8]) -> Vec<u8> {
    let unique = Sha256::new().chain_update(seed_value).chain_update(key).finalize();
    let mut p = Vec::with_capacity(48);
    p.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    p.extend_from_slice(&ALG_SHA256.to_be_bytes());
    p.extend_from_slice(&IDENTITY_KEY_ATTRIBUTES.to_be_bytes());
    p.extend_from_slice(&[0, 0]); // authPolicy: empty
    p.extend_from_slice(&ALG_HMAC.to_be_bytes());
    p.extend_from_slice(&ALG_SHA256.to_be_bytes());
    put_tpm2b(&mut p, &unique, "unique").expect("a digest fits a TPM2B");
    p
}

/// `TPM2B_SENSITIVE` of the keyed-hash object: type, empty authValue, seedValue, the key.
fn sensitive(seed_value: &[u8], key: &[u8]) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let mut s = Zeroizing::new(Vec::with_capacity(8 + seed_value.len() + key.len()));
    s.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    put_tpm2b(&mut s, &[], "authValue")?;
    put_tpm2b(&mut s, seed_value, "seedValue")?;
    put_tpm2b(&mut s, key, "sensitive")?;
    Ok(Zeroizing::new(tpm2b(&s, "TPMT_SENSITIVE")?))
}

/// Duplicates a new keyed-hash object holding `key` to `srk`, inner-wrapped with `inner_key`.
pub(crate) fn duplicate<R: CryptoRng + RngCore>(
    rng: &mut R,
    srk: &RsaPublic,
    key: &[u8],
    inner_key: &[u8],
) -> Result<Duplicate, TpmError> {
    let seed_value = random(rng, SEED_LEN);
    let public = identity_key_public(&seed_value, key);
    let name = name_of(&public);
    let sensitive = sensitive(&seed_value, key)?;

    // Inner wrapper: integrity digest over the sensitive area and the name, then CFB.
    let inner_integrity = Sha256::new().chain_update(&*sensitive).chain_update(&name).finalize();
    let mut wrapped = Zeroizing::new(Vec::with_capacity(34 + sensitive.len()));
    put_tpm2b(&mut wrapped, &inner_integrity, "innerIntegrity")?;
    wrapped.extend_from_slice(&sensitive);
    cfb_encrypt(inner_key, &mut wrapped);

    // Outer wrapper to the SRK.
    let outer = protect(rng, srk, DUPLICATE_LABEL, "storage root key", &name, &wrapped)?;
    Ok(Duplicate {
        public,
        duplicate: outer.blob,
        in_sym_seed: outer.secret,
    })
}

/// Import in software: the inverse of [`duplicate`], given the SRK's private key and the inner
/// key; checks both integrity values and the public/sensitive binding, returns the HMAC key.
#[cfg(feature = "software-tpm")]
pub(crate) fn import(
    srk_private: &rsa::RsaPrivateKey,
    inner_key: &[u8],
    public: &[u8],
    duplicate: &[u8],
    in_sym_seed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    use crate::crypto::{cfb_decrypt, AES128_KEY_LEN};
    use crate::marshal::Reader;

    let name = name_of(public);
    let what = "duplicate outer wrapper (Import)";
    let mut wrapped = crate::protection::unprotect(srk_private, DUPLICATE_LABEL, what, &name, duplicate, in_sym_seed)?;
    if inner_key.len() != AES128_KEY_LEN {
        return Err(TpmError::KeyLength(inner_key.len()));
    }
    cfb_decrypt(inner_key, &mut wrapped);
    let mut r = Reader::new(&wrapped);
    let inner_integrity = r.tpm2b("innerIntegrity")?.to_vec();
    let sensitive = r.bytes(r.remaining(), "TPM2B_SENSITIVE")?;
    if Sha256::new().chain_update(sensitive).chain_update(&name).finalize()[..] != inner_integrity[..] {
        return Err(TpmError::Integrity {
            what: "duplicate inner wrapper (Import)",
        });
    }
    let mut r = Reader::new(crate::marshal::strip_tpm2b(sensitive, "TPM2B_SENSITIVE")?);
    let _type = r.u16("sensitiveType")?;
    let _auth = r.tpm2b("authValue")?;
    let seed_value = r.tpm2b("seedValue")?.to_vec();
    let key = Zeroizing::new(r.tpm2b("sensitive")?.to_vec());
    r.finish("TPMT_SENSITIVE")?;
    if identity_key_public(&seed_value, &key) != public {
        return Err(TpmError::Integrity {
            what: "identity key public area does not match its sensitive area (Import)",
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_key_public_layout() {
        // hub-dice-tpm.md §C4 step 2: 0030 0008 000b 00040040 0000 0005 000b 0020 <unique>.
        let p = identity_key_public(&[7; 32], &[9; 32]);
        assert_eq!(p.len(), 48);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&p[..16]),
            "0008000b0004004000000005000b0020"
        );
        let unique = Sha256::new().chain_update([7; 32]).chain_update([9; 32]).finalize();
        assert_eq!(&p[16..], &unique[..]);
    }
}
