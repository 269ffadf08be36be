//! Device API models (device-protocol.md §5).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::service::{RegistrationState, RegistrationStatus};

/// `DeviceRegistration`: the register request body. Every field is optional in practice — C#
/// over MQTT sends an empty body, Python sends `"payload": null` — so the registration id is taken
/// from the connection and this body only checked for consistency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// Registration id, if the device sent one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub registration_id: Option<String>,
    /// TPM keys (TPM attestation).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tpm: Option<TpmKeys>,
    /// Custom payload for allocation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload: Option<Value>,
    /// A certificate signing request, base64 DER PKCS#10 (`2025-07-01-preview`): the device
    /// asks for its operational certificate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub csr: Option<String>,
    /// The same, as the older preview (`2021-11-01-preview`) named it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_certificate_csr: Option<String>,
}

/// TPM endorsement and storage root keys as sent by the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmKeys {
    /// Base64 TPM2B_PUBLIC.
    pub endorsement_key: String,
    /// Base64 TPM2B_PUBLIC.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub storage_root_key: Option<String>,
}

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request body is not a valid DeviceRegistration: {0}")]
pub struct BodyError(pub String);

impl DeviceRegistration {
    /// Parses a register body; empty or whitespace-only bodies (and JSON `null`) mean "no fields".
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        if body.trim_ascii() == b"null" {
            return Ok(Self::default());
        }
        super::from_json(body).map_err(|e| BodyError(e.to_string()))
    }
}

/// `RegistrationOperationStatus`: the reply to register and operation-status requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    /// Operation id, echoed by the device when polling. Only `[A-Za-z0-9.-]`.
    pub operation_id: String,
    /// `assigning` while in progress, then `assigned` / `failed` / `disabled`.
    pub status: RegistrationStatus,
    /// Always present: identity-service needs `registrationState.registrationId` while assigning.
    pub registration_state: RegistrationState,
}

/// The body of the TPM challenge (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmChallenge {
    /// Base64 activation blob.
    pub authentication_key: String,
    /// Always `registration`.
    pub key_name: String,
    /// Human message.
    pub message: String,
}

/// Serializes to JSON with every non-ASCII character escaped as `\uXXXX`: the Node SDK decodes
/// MQTT payloads as ASCII.
pub fn to_ascii_json<T: Serialize>(v: &T) -> Vec<u8> {
    let s = serde_json::to_string(v).expect("models always serialize");
    if s.is_ascii() {
        return s.into_bytes();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for ch in s.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut buf = [0u16; 2];
            for unit in ch.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_of_every_sdk() {
        assert_eq!(DeviceRegistration::parse(b"").unwrap(), DeviceRegistration::default());
        assert_eq!(DeviceRegistration::parse(b" ").unwrap(), DeviceRegistration::default());
        assert_eq!(
            DeviceRegistration::parse(b"null").unwrap(),
            DeviceRegistration::default()
        );
        let py = DeviceRegistration::parse(br#"{"payload": null, "registrationId": "dev-01"}"#).unwrap();
        assert_eq!(py.registration_id.as_deref(), Some("dev-01"));
        assert_eq!(py.payload, None);
        let cs = DeviceRegistration::parse(br#"{"payload":{"a":1}}"#).unwrap();
        assert_eq!(cs.payload, Some(serde_json::json!({"a":1})));
        assert!(DeviceRegistration::parse(b"{not json").is_err());
        let e = DeviceRegistration::parse(br#"{"registrationId": 5}"#).unwrap_err();
        assert!(e.0.contains("field 'registrationId'"), "{e}");
        let e = DeviceRegistration::parse(br#"{"tpm": {"endorsementKey": true}}"#).unwrap_err();
        assert!(e.0.contains("field 'tpm.endorsementKey'"), "{e}");
        assert!(DeviceRegistration::parse(br#"{"registrationId": "a"} x"#).is_err());
    }

    #[test]
    fn ascii_json() {
        let v = serde_json::json!({"m": "héllo 😀"});
        assert_eq!(
            String::from_utf8(to_ascii_json(&v)).unwrap(),
            r#"{"m":"h\u00e9llo \ud83d\ude00"}"#
        );
    }
}
