//! The activation blob DPS sends as `authenticationKey` (hub-dice-tpm.md §C2): five TPM2B
//! structures in the order the device SDKs unmarshal them, then a `TPM2B_DATA` trailer.

use crate::marshal::{put_tpm2b, Reader};
use crate::TpmError;

/// An activation blob. Every field holds the *content* of its TPM2B, without the u16 size
/// prefix — the form TPM libraries take when they build `TPM2B_*` values.
#[derive(Clone, PartialEq, Eq)]
pub struct ActivationBlob {
    /// `TPM2B_ID_OBJECT`: `u16(32) ‖ integrityHMAC ‖ encIdentity`, for ActivateCredential.
    pub credential_blob: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`: the MakeCredential seed, RSA-OAEP-encrypted to the EK.
    pub secret: Vec<u8>,
    /// `TPM2B_PRIVATE`: `u16(32) ‖ outerHMAC ‖ duplicate`, for Import under the SRK.
    pub duplicate: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`: the duplication seed, RSA-OAEP-encrypted to the SRK.
    pub in_sym_seed: Vec<u8>,
    /// `TPM2B_PUBLIC`: the `TPMT_PUBLIC` of the keyed-hash identity key.
    pub public: Vec<u8>,
    /// `TPM2B_DATA` ("encUriData"): optional data; devices ignore it. Always written, empty by
    /// default, because Node's reader fails when the field is missing.
    pub enc_data: Vec<u8>,
}

impl std::fmt::Debug for ActivationBlob {
    /// Sizes only: the content is opaque ciphertext and would only flood logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationBlob")
            .field("credential_blob", &self.credential_blob.len())
            .field("secret", &self.secret.len())
            .field("duplicate", &self.duplicate.len())
            .field("in_sym_seed", &self.in_sym_seed.len())
            .field("public", &self.public.len())
            .field("enc_data", &self.enc_data.len())
            .finish()
    }
}

impl ActivationBlob {
    /// Parses a blob (base64-decoded). The trailing `TPM2B_DATA` may be absent (C and
    /// identity-service tolerate that; an absent trailer reads as empty); anything after it is
    /// refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut r = Reader::new(bytes);
        let credential_blob = r.tpm2b("credentialBlob (TPM2B_ID_OBJECT)")?.to_vec();
        let secret = r.tpm2b("secret (TPM2B_ENCRYPTED_SECRET)")?.to_vec();
        let duplicate = r.tpm2b("duplicate (TPM2B_PRIVATE)")?.to_vec();
        let in_sym_seed = r.tpm2b("inSymSeed (TPM2B_ENCRYPTED_SECRET)")?.to_vec();
        let public = r.tpm2b("identity key public (TPM2B_PUBLIC)")?.to_vec();
        let enc_data = if r.remaining() == 0 {
            Vec::new()
        } else {
            r.tpm2b("encData (TPM2B_DATA)")?.to_vec()
        };
        r.finish("activation blob")?;
        Ok(Self {
            credential_blob,
            secret,
            duplicate,
            in_sym_seed,
            public,
            enc_data,
        })
    }

    /// Marshals the blob, trailer included.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TpmError> {
        let mut out = Vec::with_capacity(
            12 + self.credential_blob.len()
                + self.secret.len()
                + self.duplicate.len()
                + self.in_sym_seed.len()
                + self.public.len()
                + self.enc_data.len(),
        );
        put_tpm2b(&mut out, &self.credential_blob, "credentialBlob")?;
        put_tpm2b(&mut out, &self.secret, "secret")?;
        put_tpm2b(&mut out, &self.duplicate, "duplicate")?;
        put_tpm2b(&mut out, &self.in_sym_seed, "inSymSeed")?;
        put_tpm2b(&mut out, &self.public, "public")?;
        put_tpm2b(&mut out, &self.enc_data, "encData")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ActivationBlob {
        ActivationBlob {
            credential_blob: vec![1; 52],
            secret: vec![2; 256],
            duplicate: vec![3; 142],
            in_sym_seed: vec![4; 256],
            public: vec![5; 48],
            enc_data: vec![],
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let b = sample();
        let bytes = b.to_bytes().unwrap();
        // hub-dice-tpm.md §C2: 54 + 258 + 144 + 258 + 50 = 764, + 2 for the empty trailer.
        assert_eq!(bytes.len(), 766);
        assert_eq!(&bytes[..2], &[0, 52]);
        assert_eq!(&bytes[764..], &[0, 0]);
        assert_eq!(ActivationBlob::parse(&bytes).unwrap(), b);
        // Without the trailer (as C and identity-service would also accept).
        assert_eq!(ActivationBlob::parse(&bytes[..764]).unwrap(), b);
        let with_data = ActivationBlob {
            enc_data: vec![9, 9],
            ..sample()
        };
        assert_eq!(
            ActivationBlob::parse(&with_data.to_bytes().unwrap()).unwrap(),
            with_data
        );
        assert_eq!(
            format!("{b:?}"),
            "ActivationBlob { credential_blob: 52, secret: 256, duplicate: 142, in_sym_seed: 256, public: 48, enc_data: 0 }"
        );
    }

    #[test]
    fn malformed_blobs_are_refused_with_the_field() {
        let bytes = sample().to_bytes().unwrap();
        let e = ActivationBlob::parse(&bytes[..400]).unwrap_err().to_string();
        assert!(e.starts_with("duplicate (TPM2B_PRIVATE) is truncated"), "{e}");
        let mut extra = bytes.clone();
        extra.push(7);
        assert!(ActivationBlob::parse(&extra)
            .unwrap_err()
            .to_string()
            .contains("unexpected byte"));
        assert!(ActivationBlob::parse(&bytes[..765]).is_err(), "half a trailer");
        assert!(ActivationBlob::parse(b"").is_err());
    }
}
