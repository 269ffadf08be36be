//! The registration id a TPM device uses when none is configured (device-protocol.md §7.1).

use data_encoding::BASE32_NOPAD;
use sha2::{Digest, Sha256};

/// Lower-case RFC 4648 base32, without `=` padding, of SHA-256 over the EK's marshalled
/// `TPM2B_PUBLIC` *including* its size prefix: 52 characters. Node lower-cases it, and DPS
/// registration ids are case-insensitive, so the lower-case form is the one to show.
pub fn registration_id(endorsement_key_tpm2b: &[u8]) -> String {
    BASE32_NOPAD
        .encode(&Sha256::digest(endorsement_key_tpm2b))
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_of_sha256() {
        // Computed independently: base64.b32encode(sha256(b"abc")).rstrip("=").lower().
        assert_eq!(
            registration_id(b"abc"),
            "xj4bnp4pahh6uqkbidpf3lrceoyagyndsylxvhfucd7wd4qacwwq"
        );
        assert_eq!(registration_id(&[0u8; 316]).len(), 52);
    }
}
