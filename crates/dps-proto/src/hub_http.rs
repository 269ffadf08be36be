//! The hub's device API over HTTPS (newer-surfaces.md "Hub device API over HTTPS"; the Node
//! `azure-iot-device-http` 1.14 `http.js` and `azure-iot-http-base` `http.js`, the C SDK's
//! `iothubtransporthttp.c`, the C# `HttpTransportHandler`): how a telemetry message's properties
//! travel as request headers or in a batch, and how a cloud-to-device message's properties travel
//! as response headers.
//!
//! The hub keys message properties as MQTT topics do (`$.mid`, `$.cid`, … for system properties,
//! plain names for application ones); this module translates between that and HTTP.
//!
//! - Telemetry: `POST /devices/{id}/messages/events`, the body as it is, system properties as
//!   `iothub-messageid`-style headers, application ones as `iothub-app-{name}`. A batch has
//!   `Content-Type: application/vnd.microsoft.iothub.json` and a JSON array of
//!   `{"body": base64 (or text with "base64Encoded": false), "properties": {header name: value}}`.
//! - Cloud-to-device: `GET /devices/{id}/messages/deviceBound` answers 204 when nothing waits, or
//!   200 with the body, the lock token as a quoted `ETag` (Node strips the first and last
//!   character blindly) and the properties as headers.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

/// `Content-Type` of a telemetry batch.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.json";

/// Header prefix of an application property.
pub const APP_PREFIX: &str = "iothub-app-";

/// System properties: HTTP header name (lower case) and the hub's `$.` key. Both creation-time
/// spellings are sent (C# without dashes, Java with); `dt-subject` (a component name) has no
/// `iothub-` prefix in any SDK.
const SYSTEM: &[(&str, &str)] = &[
    ("iothub-messageid", "$.mid"),
    ("iothub-correlationid", "$.cid"),
    ("iothub-userid", "$.uid"),
    ("iothub-contenttype", "$.ct"),
    ("iothub-contentencoding", "$.ce"),
    ("iothub-expiry", "$.exp"),
    ("iothub-creationtimeutc", "$.ctime"),
    ("iothub-creation-time-utc", "$.ctime"),
    ("iothub-interface-id", "$.ifid"),
    ("dt-subject", "$.sub"),
    ("dt-dataschema", "$.schema"),
];

/// Cloud-to-device properties sent as response headers: the hub's key and the header. `$.to`
/// names the device's queue (`/devices/{id}/messages/deviceBound`).
const C2D_SYSTEM: &[(&str, &str)] = &[
    ("$.mid", "iothub-messageid"),
    ("$.to", "iothub-to"),
    ("$.cid", "iothub-correlationid"),
    ("$.uid", "iothub-userid"),
    ("$.exp", "iothub-expiry"),
    ("$.ct", "iothub-contenttype"),
    ("$.ce", "iothub-contentencoding"),
    ("iothub-ack", "iothub-ack"),
];

/// A telemetry message's properties from its request headers (name, value; names in any case):
/// the system properties this module knows and every `iothub-app-` one, in header order; other
/// headers (`Authorization`, `iothub-to`, …) are not message properties.
pub fn properties_from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    headers.into_iter().filter_map(|(k, v)| property(k, v)).collect()
}

/// One header or batch property as a hub property, if it is one.
fn property(name: &str, value: &str) -> Option<(String, String)> {
    let lower = name.to_ascii_lowercase();
    if let Some(app) = lower.strip_prefix(APP_PREFIX) {
        // The name as sent, less the prefix (HTTP/1 header names arrive lower-cased anyway).
        return (!app.is_empty()).then(|| (name[APP_PREFIX.len()..].to_string(), value.to_string()));
    }
    SYSTEM
        .iter()
        .find(|(header, _)| *header == lower)
        .map(|(_, key)| (key.to_string(), value.to_string()))
}

/// One message of a telemetry batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMessage {
    /// The body, decoded.
    pub body: Vec<u8>,
    /// Its properties, keyed as the hub keys them.
    pub properties: Vec<(String, String)>,
}

/// Why a telemetry batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The body is not a JSON array of `{body, base64Encoded?, properties?}` objects (the Node
    /// SDK writes property values without escaping them, so a `"` in one breaks its JSON).
    #[error("the batch is not a JSON array of {{\"body\", \"base64Encoded\", \"properties\"}} objects: {0}")]
    NotJson(String),
    /// A message's `body` is not base64 while `base64Encoded` is not `false`.
    #[error("message {index} of the batch: body is not base64 (set \"base64Encoded\": false for text)")]
    NotBase64 {
        /// Its position, from 0.
        index: usize,
    },
    /// The batch holds no message.
    #[error("the batch holds no message")]
    Empty,
}

#[derive(Deserialize)]
struct Item {
    body: String,
    #[serde(default = "yes", rename = "base64Encoded")]
    base64_encoded: bool,
    #[serde(default)]
    properties: Option<std::collections::BTreeMap<String, String>>,
}

fn yes() -> bool {
    true
}

/// Parses a telemetry batch (an untrusted body; the caller bounds its size).
pub fn parse_batch(body: &[u8]) -> Result<Vec<BatchMessage>, BatchError> {
    let items: Vec<Item> = serde_json::from_slice(body).map_err(|e| BatchError::NotJson(e.to_string()))?;
    if items.is_empty() {
        return Err(BatchError::Empty);
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let body = if item.base64_encoded {
                B64.decode(item.body.as_bytes())
                    .map_err(|_| BatchError::NotBase64 { index })?
            } else {
                item.body.into_bytes()
            };
            let properties = item
                .properties
                .unwrap_or_default()
                .iter()
                .filter_map(|(k, v)| property(k, v))
                .collect();
            Ok(BatchMessage { body, properties })
        })
        .collect()
}

/// The first message of a batch over IoT Hub's device-to-cloud limit (body plus properties,
/// [`crate::twin_limits::D2C_MAX_BYTES`]): its position and size. The hub refuses such a batch
/// whole, before keeping any of it.
pub fn first_oversized(messages: &[BatchMessage]) -> Option<(usize, usize)> {
    messages.iter().enumerate().find_map(|(i, m)| {
        let size =
            crate::twin_limits::message_size(m.body.len(), m.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        (size > crate::twin_limits::D2C_MAX_BYTES).then_some((i, size))
    })
}

/// The response headers (name, value) of a cloud-to-device message's properties: its system
/// properties by their `iothub-` names and its application properties as `iothub-app-{name}`.
/// Other hub-internal keys are not sent.
pub fn c2d_headers(properties: &[(String, String)]) -> Vec<(String, String)> {
    properties
        .iter()
        .filter_map(|(k, v)| {
            if let Some((_, header)) = C2D_SYSTEM.iter().find(|(key, _)| key == k) {
                Some((header.to_string(), v.clone()))
            } else if k.starts_with("$.") || k.starts_with("iothub-") {
                None
            } else {
                Some((format!("{APP_PREFIX}{k}"), v.clone()))
            }
        })
        .collect()
}

/// The `ETag` that carries a lock token: quoted, as IoT Hub sends it (Node takes the token by
/// dropping the first and last character, the C SDK ignores an unquoted one).
pub fn lock_etag(lock_token: &str) -> String {
    format!("\"{lock_token}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_properties_as_the_sdks_send_them() {
        let props = properties_from_headers([
            ("authorization", "SharedAccessSignature sr=x"),
            ("iothub-to", "/devices/d/messages/events"),
            ("IoTHub-MessageId", "m1"),
            ("iothub-correlationid", "c1"),
            ("iothub-contenttype", "application/json"),
            ("iothub-contentencoding", "utf-8"),
            ("iothub-creationtimeutc", "2026-01-01T00:00:00Z"),
            ("dt-subject", "thermostat1"),
            ("iothub-app-Color", "red"),
            ("iothub-app-", "nameless"),
            ("iothub-operation", "d2c"),
            ("user-agent", "azure-iot-device/1.18.4"),
        ]);
        assert_eq!(
            props,
            [
                ("$.mid", "m1"),
                ("$.cid", "c1"),
                ("$.ct", "application/json"),
                ("$.ce", "utf-8"),
                ("$.ctime", "2026-01-01T00:00:00Z"),
                ("$.sub", "thermostat1"),
                ("Color", "red"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn batches_as_node_c_and_csharp_write_them() {
        // Node: base64 bodies, prefixed application properties, no system properties.
        let node = br#"[{"body": "AAEC/w==", "properties":{"iothub-app-a":"b"}},{"body": "cGxhaW4="}]"#;
        let msgs = parse_batch(node).unwrap();
        assert_eq!(msgs[0].body, [0, 1, 2, 255]);
        assert_eq!(msgs[0].properties, [("a".to_string(), "b".to_string())]);
        assert_eq!((msgs[1].body.as_slice(), msgs[1].properties.len()), (&b"plain"[..], 0));
        // C: text bodies with "base64Encoded": false. C#: system properties under header names.
        let c = br#"[{"body":"{\"t\":1}","base64Encoded":false,"properties":{"iothub-app-k":"v"}},
                    {"body":"aGk=","properties":{"iothub-messageid":"m","iothub-app-x":"y"}}]"#;
        let msgs = parse_batch(c).unwrap();
        assert_eq!(msgs[0].body, br#"{"t":1}"#);
        assert_eq!(msgs[1].body, b"hi");
        // In the order of their names in the batch (a JSON object's order means nothing).
        assert_eq!(
            msgs[1].properties,
            [("x", "y"), ("$.mid", "m")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn bad_batches_say_what_is_wrong() {
        // The Node SDK's unescaped quote.
        assert!(matches!(
            parse_batch(br#"[{"body":"aGk=","properties":{"iothub-app-a":"b"c"}}]"#),
            Err(BatchError::NotJson(_))
        ));
        assert_eq!(parse_batch(b"[]"), Err(BatchError::Empty));
        assert_eq!(
            parse_batch(br#"[{"body":"aGk="},{"body":"not base64!"}]"#),
            Err(BatchError::NotBase64 { index: 1 })
        );
        assert!(matches!(
            parse_batch(br#"{"body":"aGk="}"#),
            Err(BatchError::NotJson(_))
        ));
        assert!(matches!(
            parse_batch(br#"[{"body":"aGk=","properties":{"k":1}}]"#),
            Err(BatchError::NotJson(_))
        ));
    }

    #[test]
    fn an_oversized_message_is_found_before_any_is_kept() {
        let small = BatchMessage {
            body: vec![0; 10],
            properties: vec![("k".into(), "v".into())],
        };
        let big = BatchMessage {
            body: vec![0; crate::twin_limits::D2C_MAX_BYTES],
            properties: vec![("k".into(), "v".into())],
        };
        assert_eq!(first_oversized(&[small.clone(), small.clone()]), None);
        assert_eq!(
            first_oversized(&[small, big]),
            Some((1, crate::twin_limits::D2C_MAX_BYTES + 2))
        );
    }

    #[test]
    fn c2d_properties_become_headers() {
        let props = [
            ("$.mid", "m"),
            ("$.to", "/devices/d/messages/deviceBound"),
            ("$.cid", "c"),
            ("$.exp", "2026-01-01T00:00:00Z"),
            ("iothub-ack", "full"),
            ("$.internal", "x"),
            ("color", "red"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let headers = c2d_headers(&props);
        assert_eq!(
            headers,
            [
                ("iothub-messageid", "m"),
                ("iothub-to", "/devices/d/messages/deviceBound"),
                ("iothub-correlationid", "c"),
                ("iothub-expiry", "2026-01-01T00:00:00Z"),
                ("iothub-ack", "full"),
                ("iothub-app-color", "red"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(lock_etag("abc"), "\"abc\"");
    }
}
