//! Certificate thumbprints as the Azure service API shows them.
//!
//! Enrollments and CA registrations are matched on thumbprints, and users compare them with what
//! the Azure portal or `openssl x509 -fingerprint` prints, so the format is fixed: the digest of
//! the whole DER certificate, upper-case hex, no separators.

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The SHA-1 thumbprint of a DER certificate: 40 upper-case hex digits.
pub fn sha1_thumbprint(der: &[u8]) -> String {
    upper_hex(&Sha1::digest(der))
}

/// The SHA-256 thumbprint of a DER certificate: 64 upper-case hex digits.
pub fn sha256_thumbprint(der: &[u8]) -> String {
    upper_hex(&Sha256::digest(der))
}

/// A hex string as given by people and tools (`ab:cd`, `AB CD`, `ab-cd`) in the form Azure shows
/// thumbprints and serial numbers: upper-case, without separators. Other characters are kept,
/// so that a check for hex digits afterwards refuses them.
pub fn normalize_hex(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Upper-case hex without separators, the form Azure uses for thumbprints and serial numbers.
pub(crate) fn upper_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02X}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests_of_empty_input() {
        // The textbook digests of the empty string, to pin the hex format.
        assert_eq!(sha1_thumbprint(b""), "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709");
        assert_eq!(
            sha256_thumbprint(b""),
            "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
        );
    }

    #[test]
    fn hex_keeps_leading_zeros() {
        assert_eq!(upper_hex(&[0x00, 0x0a, 0xff]), "000AFF");
        assert_eq!(upper_hex(&[]), "");
    }
}
