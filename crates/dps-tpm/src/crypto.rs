//! The primitives both wrappers share: `KDFa` with SHA-256 (TPM 2.0 Part 1 §11.4.10.2), the
//! counter-mode KDF that turns a seed into the symmetric and HMAC keys; AES-128-CFB with a zero IV
//! (the TPM's "CFB" for these wrappers, full-block CFB128); and the RSA-OAEP seed encryption.

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use rsa::Oaep;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::public::RsaPublic;
use crate::TpmError;

/// Seed size: the digest size of the receiving key's name algorithm (SHA-256).
pub(crate) const SEED_LEN: usize = 32;
/// AES-128 key size: what `KDFa(..., "STORAGE", ..., 128)` yields and the inner wrapper uses.
pub(crate) const AES128_KEY_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// `KDFa(SHA-256, key, label, context_u, context_v, bits)`: the concatenation over i = 1, 2, … of
/// `HMAC-SHA256(key, BE32(i) ‖ label ‖ 0x00 ‖ context_u ‖ context_v ‖ BE32(bits))`, truncated to
/// `bits / 8` bytes. `label` is given without its terminating NUL, which is added here.
pub(crate) fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Zeroizing<Vec<u8>> {
    let len = (bits / 8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// The symmetric (AES-128) and HMAC keys protecting a credential or a duplicate's outer wrapper
/// (Part 1 §24.4, §24.5): both derive from the seed, the symmetric one bound to `name` — the
/// object the credential is for, or the duplicated object.
pub(crate) fn protection_keys(seed: &[u8], name: &[u8]) -> (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>) {
    (
        kdfa(seed, "STORAGE", name, b"", (AES128_KEY_LEN * 8) as u32),
        kdfa(seed, "INTEGRITY", b"", b"", 256),
    )
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Encrypts in place with AES-128-CFB, IV = 0. `key` must be 16 bytes.
pub(crate) fn cfb_encrypt(key: &[u8], data: &mut [u8]) {
    cfb_mode::Encryptor::<Aes128>::new_from_slices(key, &[0u8; 16])
        .expect("callers pass 16-byte keys")
        .encrypt(data);
}

/// Decrypts in place with AES-128-CFB, IV = 0. `key` must be 16 bytes.
#[cfg(feature = "software-tpm")]
pub(crate) fn cfb_decrypt(key: &[u8], data: &mut [u8]) {
    cfb_mode::Decryptor::<Aes128>::new_from_slices(key, &[0u8; 16])
        .expect("callers pass 16-byte keys")
        .decrypt(data);
}

/// `n` random bytes that are wiped when dropped.
pub(crate) fn random<R: CryptoRng + RngCore>(rng: &mut R, n: usize) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    rng.fill_bytes(&mut v);
    v
}

/// RSA-OAEP with SHA-256 (hash and MGF1) and `label`, which the TPM spec defines *with* its
/// terminating NUL (`"IDENTITY\0"`, `"DUPLICATE\0"`).
pub(crate) fn oaep_encrypt<R: CryptoRng + RngCore>(
    rng: &mut R,
    key: &RsaPublic,
    label: &str,
    msg: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, TpmError> {
    let failed = |e: rsa::Error| TpmError::Encryption {
        what,
        reason: e.to_string(),
    };
    key.rsa_key()
        .map_err(failed)?
        .encrypt(rng, Oaep::new_with_label::<Sha256, _>(label), msg)
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_encoding::HEXLOWER;

    // Vectors computed independently from the Part 1 definition (Python hmac/hashlib).
    #[test]
    fn kdfa_vectors() {
        let seed = [0x01u8; 32];
        let mut name = vec![0x00, 0x0b];
        name.extend_from_slice(&[0x02; 32]);
        assert_eq!(
            HEXLOWER.encode(&kdfa(&seed, "STORAGE", &name, b"", 128)),
            "553ced074b04bf72a0651b2373812ec3"
        );
        assert_eq!(
            HEXLOWER.encode(&kdfa(&seed, "INTEGRITY", b"", b"", 256)),
            "c94e9c3729046b81de1d18548f02efe0b89f9d7e080abafefacf4e0b3f2f678f"
        );
        // Two blocks: the counter goes big-endian into each.
        assert_eq!(
            HEXLOWER.encode(&kdfa(&seed, "INTEGRITY", b"", b"", 512)),
            "05186c27027508f8cbdbced0caaf90842e5084ff859c81ca5e2ecee6df17013078a6a382b0c9cbc98269756819cb8b3f65faf3f2b48284c1ea5ba3e4cdf72756"
        );
    }
}
