//! RSA public areas (`TPMT_PUBLIC`, TPM 2.0 Part 2 §12.2.4) of the keys a device sends: its
//! endorsement key (EK) and storage root key (SRK), marshalled as `TPM2B_PUBLIC`
//! (device-protocol.md §7.1).
//!
//! Only the shape DPS attestation can use is accepted — RSA-2048, name algorithm SHA-256, a
//! restricted decryption key with AES-128-CFB as its symmetric algorithm — because the activation
//! blob is built for exactly that: the MakeCredential and duplication keys are derived for
//! AES-128 and the seeds are RSA-OAEP-encrypted with SHA-256. Any other key would produce a blob
//! the TPM cannot open, so it is refused up front with the reason.

use rsa::{BigUint, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::marshal::{put_tpm2b, strip_tpm2b, Reader};
use crate::TpmError;

/// `TPM_ALG_RSA`.
pub const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_AES`.
pub const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_HMAC`.
pub const ALG_HMAC: u16 = 0x0005;
/// `TPM_ALG_KEYEDHASH`.
pub const ALG_KEYEDHASH: u16 = 0x0008;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_CFB`.
pub const ALG_CFB: u16 = 0x0043;

/// `TPMA_OBJECT` bits (Part 2 §8.3).
pub mod attributes {
    /// `fixedTPM`.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// `fixedParent`.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// `sensitiveDataOrigin`.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// `userWithAuth`.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// `adminWithPolicy`.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// `noDA`.
    pub const NO_DA: u32 = 1 << 10;
    /// `restricted`.
    pub const RESTRICTED: u32 = 1 << 16;
    /// `decrypt`.
    pub const DECRYPT: u32 = 1 << 17;
    /// `sign`.
    pub const SIGN: u32 = 1 << 18;
}

/// The EK policy of the TCG EK template: `PolicySecret(TPM_RH_ENDORSEMENT)`.
pub const EK_AUTH_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7,
    0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// The only key size the blob is built for.
pub const RSA_KEY_BITS: u16 = 2048;

/// A parsed RSA public area of a restricted decryption key (EK or SRK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublic {
    /// `objectAttributes` (see [`attributes`]).
    pub object_attributes: u32,
    /// `authPolicy` digest (empty for none).
    pub auth_policy: Vec<u8>,
    /// Public exponent as marshalled: 0 means the default 65537.
    pub exponent: u32,
    /// The modulus (`unique.rsa`), big-endian, 256 bytes.
    pub modulus: Vec<u8>,
}

impl RsaPublic {
    /// Parses a marshalled `TPM2B_PUBLIC` (u16 size ‖ `TPMT_PUBLIC`), as devices send their EK and
    /// SRK, and checks it is a key the activation blob can be built for.
    pub fn from_tpm2b_public(tpm2b: &[u8]) -> Result<Self, TpmError> {
        Self::parse_named(tpm2b, "public key")
    }

    /// [`RsaPublic::from_tpm2b_public`] for an endorsement key; errors name it.
    pub fn endorsement_key(tpm2b: &[u8]) -> Result<Self, TpmError> {
        Self::parse_named(tpm2b, "endorsement key")
    }

    /// [`RsaPublic::from_tpm2b_public`] for a storage root key; errors name it.
    pub fn storage_root_key(tpm2b: &[u8]) -> Result<Self, TpmError> {
        Self::parse_named(tpm2b, "storage root key")
    }

    fn parse_named(tpm2b: &[u8], what: &'static str) -> Result<Self, TpmError> {
        let unsupported = |reason: String| TpmError::UnsupportedKey { what, reason };
        let mut r = Reader::new(strip_tpm2b(tpm2b, what)?);
        let kind = r.u16(what)?;
        if kind != ALG_RSA {
            return Err(unsupported(format!("type is 0x{kind:04x}, not RSA (0x0001)")));
        }
        let name_alg = r.u16(what)?;
        if name_alg != ALG_SHA256 {
            return Err(unsupported(format!(
                "name algorithm is 0x{name_alg:04x}, not SHA-256 (0x000b)"
            )));
        }
        let object_attributes = r.u32(what)?;
        let auth_policy = r.tpm2b(what)?.to_vec();
        let sym = r.u16(what)?;
        if sym != ALG_AES {
            return Err(unsupported(format!(
                "symmetric algorithm is 0x{sym:04x}; a storage key with AES-128-CFB is needed"
            )));
        }
        let (sym_bits, sym_mode) = (r.u16(what)?, r.u16(what)?);
        if (sym_bits, sym_mode) != (128, ALG_CFB) {
            return Err(unsupported(format!(
                "symmetric algorithm is AES-{sym_bits} mode 0x{sym_mode:04x}; AES-128-CFB is needed"
            )));
        }
        let scheme = r.u16(what)?;
        if scheme != ALG_NULL {
            return Err(unsupported(format!(
                "RSA scheme is 0x{scheme:04x}; a storage key has none (TPM_ALG_NULL)"
            )));
        }
        let key_bits = r.u16(what)?;
        if key_bits != RSA_KEY_BITS {
            return Err(unsupported(format!("key is RSA-{key_bits}, not RSA-2048")));
        }
        let exponent = r.u32(what)?;
        let modulus = r.tpm2b(what)?.to_vec();
        r.finish(what)?;
        if modulus.len() != usize::from(RSA_KEY_BITS / 8) {
            return Err(unsupported(format!("modulus has {} bytes, not 256", modulus.len())));
        }
        let needed = attributes::RESTRICTED | attributes::DECRYPT;
        if object_attributes & needed != needed {
            return Err(unsupported(format!(
                "attributes 0x{object_attributes:08x} lack restricted|decrypt: it is not a storage key"
            )));
        }
        let key = Self {
            object_attributes,
            auth_policy,
            exponent,
            modulus,
        };
        key.rsa_key()
            .map_err(|e| unsupported(format!("not a valid RSA public key: {e}")))?;
        Ok(key)
    }

    /// The public area of a TCG-template endorsement key with this modulus (for tests and tools
    /// that make keys in software).
    pub fn endorsement_template(modulus: Vec<u8>) -> Self {
        use attributes::*;
        Self {
            object_attributes: FIXED_TPM
                | FIXED_PARENT
                | SENSITIVE_DATA_ORIGIN
                | ADMIN_WITH_POLICY
                | RESTRICTED
                | DECRYPT,
            auth_policy: EK_AUTH_POLICY.to_vec(),
            exponent: 0,
            modulus,
        }
    }

    /// The public area of a storage root key (the device SDKs' SRK template) with this modulus.
    pub fn storage_template(modulus: Vec<u8>) -> Self {
        use attributes::*;
        Self {
            object_attributes: FIXED_TPM
                | FIXED_PARENT
                | SENSITIVE_DATA_ORIGIN
                | USER_WITH_AUTH
                | NO_DA
                | RESTRICTED
                | DECRYPT,
            auth_policy: Vec::new(),
            exponent: 0,
            modulus,
        }
    }

    /// The marshalled `TPMT_PUBLIC`.
    pub fn to_tpmt(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(26 + self.auth_policy.len() + self.modulus.len());
        out.extend_from_slice(&ALG_RSA.to_be_bytes());
        out.extend_from_slice(&ALG_SHA256.to_be_bytes());
        out.extend_from_slice(&self.object_attributes.to_be_bytes());
        // Both lengths are bounded by parsing or by the templates (32 and 256 bytes).
        put_tpm2b(&mut out, &self.auth_policy, "authPolicy").expect("a digest fits a TPM2B");
        for v in [ALG_AES, 128, ALG_CFB, ALG_NULL, RSA_KEY_BITS] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.exponent.to_be_bytes());
        put_tpm2b(&mut out, &self.modulus, "unique.rsa").expect("a modulus fits a TPM2B");
        out
    }

    /// The marshalled `TPM2B_PUBLIC`, as a device sends it.
    pub fn to_tpm2b(&self) -> Vec<u8> {
        crate::marshal::tpm2b(&self.to_tpmt(), "TPMT_PUBLIC").expect("an RSA-2048 public area fits a TPM2B")
    }

    /// The TPM Name: `u16(TPM_ALG_SHA256) ‖ SHA-256(TPMT_PUBLIC)`. MakeCredential binds the
    /// credential to the SRK's name; the duplication wrappers bind to the identity key's.
    pub fn name(&self) -> Vec<u8> {
        name_of(&self.to_tpmt())
    }

    /// The key as an `rsa` public key (exponent 0 means 65537).
    pub fn rsa_key(&self) -> Result<RsaPublicKey, rsa::Error> {
        let e = if self.exponent == 0 { 65_537 } else { self.exponent };
        RsaPublicKey::new(BigUint::from_bytes_be(&self.modulus), BigUint::from(e))
    }
}

/// The Name of an object with a SHA-256 name algorithm, from its marshalled `TPMT_PUBLIC`.
pub fn name_of(tpmt_public: &[u8]) -> Vec<u8> {
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(tpmt_public));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modulus() -> Vec<u8> {
        let mut m = vec![0xc5; 256];
        m[255] = 0x01;
        m
    }

    #[test]
    fn ek_template_marshals_like_a_tpm() {
        let ek = RsaPublic::endorsement_template(modulus()).to_tpm2b();
        // Measured on swtpm (hub-dice-tpm.md §C1): 316 bytes starting 013a 0001 000b 000300b2 0020 8371.
        assert_eq!(ek.len(), 316);
        assert_eq!(
            &ek[..14],
            &[0x01, 0x3a, 0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2, 0x00, 0x20, 0x83, 0x71]
        );
        let parsed = RsaPublic::endorsement_key(&ek).unwrap();
        assert_eq!(parsed.to_tpm2b(), ek);
        assert_eq!(parsed.name().len(), 34);
        assert_eq!(&parsed.name()[..2], &[0x00, 0x0b]);
        let srk = RsaPublic::storage_template(modulus()).to_tpm2b();
        assert_eq!(srk.len(), 284);
        assert_eq!(
            RsaPublic::storage_root_key(&srk).unwrap().object_attributes,
            0x0003_0472
        );
    }

    #[test]
    fn name_is_sha256_of_the_public_area_without_its_size() {
        // SHA-256 of four zero bytes, computed independently (Python hashlib).
        let tpmt = [0u8; 4];
        let expected = "000bdf3f619804a92fdb4057192dc43dd748ea778adc52bc498ce80524c014b81119";
        assert_eq!(data_encoding::HEXLOWER.encode(&name_of(&tpmt)), expected);
    }

    #[test]
    fn refuses_what_the_blob_cannot_be_built_for() {
        let good = RsaPublic::endorsement_template(modulus()).to_tpmt();
        let wrap = |t: &[u8]| crate::marshal::tpm2b(t, "t").unwrap();
        let err = |t: Vec<u8>| RsaPublic::endorsement_key(&wrap(&t)).unwrap_err().to_string();

        let mut ecc = good.clone();
        ecc[1] = 0x23;
        assert!(err(ecc).contains("not RSA"), "ECC key");
        let mut sha1 = good.clone();
        sha1[3] = 0x04;
        assert!(err(sha1).contains("not SHA-256"));
        let mut not_storage = good.clone();
        not_storage[5] = 0x00; // clear restricted|decrypt
        assert!(err(not_storage).contains("not a storage key"));
        // keyBits at offset 2+2+4+(2+32)+6+2 = 50.
        let mut rsa1024 = good.clone();
        rsa1024[50..52].copy_from_slice(&1024u16.to_be_bytes());
        assert!(err(rsa1024).contains("RSA-1024"));
        let mut aes256 = good.clone();
        aes256[44..46].copy_from_slice(&256u16.to_be_bytes());
        assert!(err(aes256).contains("AES-128-CFB"));
        let mut extra = good.clone();
        extra.push(0);
        assert!(err(extra).contains("unexpected byte"));
        assert!(err(good[..100].to_vec()).contains("truncated"));
        // Size prefix that disagrees with the buffer.
        let mut bad_size = wrap(&good);
        bad_size[1] ^= 1;
        assert!(RsaPublic::endorsement_key(&bad_size)
            .unwrap_err()
            .to_string()
            .contains("TPM2B size"));
        assert!(RsaPublic::storage_root_key(&[])
            .unwrap_err()
            .to_string()
            .starts_with("storage root key is truncated"));
    }
}
