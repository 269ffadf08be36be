//! Key material formats: group-derived device keys and key validation.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::sas::hmac_sha256;

/// Derives a device key from an enrollment-group key:
/// `base64(HMAC-SHA256(base64decode(groupKey), UTF-8(registrationId)))`. Returns `None` when the
/// group key is not base64.
pub fn derive_device_key(group_key_b64: &str, registration_id: &str) -> Option<String> {
    let key = B64.decode(group_key_b64).ok()?;
    Some(B64.encode(hmac_sha256(&key, registration_id.as_bytes())))
}

/// Why a user-supplied symmetric key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not valid base64.
    #[error("key is not valid base64")]
    NotBase64,
    /// Azure accepts 16 to 64 decoded bytes.
    #[error("key must decode to 16..=64 bytes, got {0}")]
    BadLength(usize),
}

/// Validates a symmetric key as the Azure service does (base64, 16–64 bytes decoded).
pub fn validate_symmetric_key(key_b64: &str) -> Result<(), KeyError> {
    let raw = B64.decode(key_b64).map_err(|_| KeyError::NotBase64)?;
    if (16..=64).contains(&raw.len()) {
        Ok(())
    } else {
        Err(KeyError::BadLength(raw.len()))
    }
}

/// Encodes raw key bytes as standard base64 (used when generating keys).
pub fn encode_key(raw: &[u8]) -> String {
    B64.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vector() {
        // service-api.md §5.3
        let k = derive_device_key(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
            "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
        );
        assert_eq!(k.as_deref(), Some("Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="));
        assert_eq!(derive_device_key("!!", "x"), None);
    }

    #[test]
    fn key_validation() {
        assert!(validate_symmetric_key(&encode_key(&[1; 32])).is_ok());
        assert_eq!(
            validate_symmetric_key(&encode_key(&[1; 8])),
            Err(KeyError::BadLength(8))
        );
        assert_eq!(validate_symmetric_key("***"), Err(KeyError::NotBase64));
    }
}
