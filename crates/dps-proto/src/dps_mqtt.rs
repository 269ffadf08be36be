//! The DPS device protocol over MQTT: CONNECT username, request topics and response topics
//! (device-protocol.md §2).

use crate::sas::{decode_component, encode_component};

/// Topic filter devices subscribe to for responses.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/";
const STATUS_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";
const RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// A parsed DPS CONNECT username `{idScope}/registrations/{registrationId}/api-version=..&ClientVersion=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsUsername {
    /// ID scope (first segment).
    pub id_scope: String,
    /// Registration id (third segment), percent-decoded.
    pub registration_id: String,
    /// `api-version` if present.
    pub api_version: Option<String>,
    /// `ClientVersion`, percent-decoded, if present.
    pub client_version: Option<String>,
}

/// Why a DPS username or topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The username does not have the `{scope}/registrations/{id}/...` shape.
    #[error("username '{0}' is not '{{idScope}}/registrations/{{registrationId}}/api-version=...'")]
    BadUsername(String),
    /// The publish topic is not a DPS request topic.
    #[error("topic '{0}' is not a DPS request topic")]
    UnknownTopic(String),
    /// The operation-status topic has no `operationId`.
    #[error("topic '{0}' has no operationId")]
    MissingOperationId(String),
}

impl DpsUsername {
    /// Parses a username; returns `None` when it does not look like a DPS username at all (so the
    /// listener can try the hub's username format instead), `Err` when it does but is malformed.
    pub fn parse(username: &str) -> Option<Result<Self, TopicError>> {
        let mut parts = username.splitn(4, '/');
        let scope = parts.next()?;
        if !parts.next()?.eq_ignore_ascii_case("registrations") {
            return None;
        }
        let bad = || TopicError::BadUsername(username.to_string());
        let Some(reg) = parts.next().filter(|r| !r.is_empty()) else {
            return Some(Err(bad()));
        };
        if scope.is_empty() {
            return Some(Err(bad()));
        }
        let rest = parts.next().unwrap_or("");
        let query = rest.trim_start_matches('?');
        let props = parse_query(query);
        let get = |k: &str| {
            props
                .iter()
                .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Ok(Self {
            id_scope: scope.to_string(),
            registration_id: decode_component(reg),
            api_version: get("api-version"),
            client_version: get("ClientVersion"),
        }))
    }
}

/// A device request published on a DPS topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpsRequestTopic {
    /// `$dps/registrations/PUT/iotdps-register/?$rid={rid}`
    Register {
        /// Request id to echo.
        rid: String,
    },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}`
    OperationStatus {
        /// Request id to echo.
        rid: String,
        /// Operation to look up.
        operation_id: String,
    },
}

impl DpsRequestTopic {
    /// Parses a publish topic. `$rid` is kept exactly as the device sent it (percent-decoded once,
    /// re-encoded on the way out only if needed) so every SDK can match its response.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let (kind, rest) = if let Some(r) = topic.strip_prefix(REGISTER_PREFIX) {
            (true, r)
        } else if let Some(r) = topic.strip_prefix(STATUS_PREFIX) {
            (false, r)
        } else {
            return Err(TopicError::UnknownTopic(topic.to_string()));
        };
        let props = parse_query(rest.trim_start_matches('?'));
        let get = |k: &str| props.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
        let rid = get("$rid").unwrap_or_default();
        if kind {
            Ok(Self::Register { rid })
        } else {
            let operation_id = get("operationId").ok_or_else(|| TopicError::MissingOperationId(topic.to_string()))?;
            Ok(Self::OperationStatus { rid, operation_id })
        }
    }

    /// The request id.
    pub fn rid(&self) -> &str {
        match self {
            Self::Register { rid } | Self::OperationStatus { rid, .. } => rid,
        }
    }
}

/// The `$rid` of any publish topic, as the device sent it (percent-decoded), or `""` when it has
/// none. Used to answer a request whose topic was refused: a device that sent `$rid` matches the
/// error to its request (Python and Node match responses by `$rid` alone).
pub fn topic_rid(topic: &str) -> String {
    topic
        .split_once('?')
        .map(|(_, q)| parse_query(q))
        .and_then(|props| props.into_iter().find(|(k, _)| k == "$rid"))
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Formats `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]`. `$rid` comes first and
/// no other `$` appears: Python splits the topic on `$`, C# anchors a regex on `?$rid=`.
pub fn response_topic(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    let mut t = format!("{RESPONSE_PREFIX}{status}/?$rid={}", encode_rid(rid));
    if let Some(s) = retry_after {
        t.push_str(&format!("&retry-after={s}"));
    }
    t
}

/// Parses a response topic (used by the Rust device client): `(status, rid, retry_after)`.
pub fn parse_response_topic(topic: &str) -> Option<(u16, String, Option<u32>)> {
    let rest = topic.strip_prefix(RESPONSE_PREFIX)?;
    let (status, query) = rest.split_once('/')?;
    let status = status.parse().ok()?;
    let props = parse_query(query.trim_start_matches('?'));
    let rid = props
        .iter()
        .find(|(k, _)| k == "$rid")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let retry = props
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.parse().ok());
    Some((status, rid, retry))
}

/// Formats a register request topic (device side).
pub fn register_topic(rid: &str) -> String {
    format!("{REGISTER_PREFIX}?$rid={}", encode_rid(rid))
}

/// Formats an operation-status request topic (device side).
pub fn operation_status_topic(rid: &str, operation_id: &str) -> String {
    format!(
        "{STATUS_PREFIX}?$rid={}&operationId={}",
        encode_rid(rid),
        encode_component(operation_id)
    )
}

/// Formats the CONNECT username a device sends.
pub fn username(id_scope: &str, registration_id: &str, api_version: &str, client_version: &str) -> String {
    format!(
        "{id_scope}/registrations/{registration_id}/api-version={api_version}&ClientVersion={}",
        encode_component(client_version)
    )
}

/// `$rid` values are UUIDs or integers in practice; encode only what would break the topic.
/// Shared with the hub's topics ([`crate::hub_mqtt`]), which echo `$rid` the same way.
pub(crate) fn encode_rid(rid: &str) -> String {
    if rid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        rid.to_string()
    } else {
        encode_component(rid)
    }
}

/// Splits `k=v&k=v`, percent-decoding keys and values; bare keys get an empty value.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode_component(k), decode_component(v)),
            None => (decode_component(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_of_every_sdk() {
        let py = "0ne0001234A/registrations/dev-01/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%283.11.4%3BLinux%20x%3Bx86_64%29";
        let u = DpsUsername::parse(py).unwrap().unwrap();
        assert_eq!(u.id_scope, "0ne0001234A");
        assert_eq!(u.registration_id, "dev-01");
        assert_eq!(u.api_version.as_deref(), Some("2019-03-31"));
        assert_eq!(
            u.client_version.as_deref(),
            Some("azure-iot-device-provisioning-py/2.14.0(3.11.4;Linux x;x86_64)")
        );
        let c = DpsUsername::parse("scope/registrations/dev/api-version=2021-06-01&ClientVersion=1.15.0")
            .unwrap()
            .unwrap();
        assert_eq!(c.client_version.as_deref(), Some("1.15.0"));
        let q = DpsUsername::parse("scope/registrations/dev/?api-version=2021-06-01")
            .unwrap()
            .unwrap();
        assert_eq!(q.api_version.as_deref(), Some("2021-06-01"));
        let bare = DpsUsername::parse("scope/registrations/dev").unwrap().unwrap();
        assert_eq!(bare.api_version, None);
        assert!(DpsUsername::parse("hub.example/dev-01/?api-version=2019-10-01").is_none());
        assert!(DpsUsername::parse("scope/registrations/").unwrap().is_err());
    }

    #[test]
    fn request_topics() {
        assert_eq!(
            DpsRequestTopic::parse("$dps/registrations/PUT/iotdps-register/?$rid=7b3e-1").unwrap(),
            DpsRequestTopic::Register { rid: "7b3e-1".into() }
        );
        assert_eq!(
            DpsRequestTopic::parse("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=42&operationId=4.abc.d-e")
                .unwrap(),
            DpsRequestTopic::OperationStatus {
                rid: "42".into(),
                operation_id: "4.abc.d-e".into()
            }
        );
        // Python percent-encodes the operation id.
        assert_eq!(
            DpsRequestTopic::parse("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=4%2Eabc")
                .unwrap(),
            DpsRequestTopic::OperationStatus {
                rid: "1".into(),
                operation_id: "4.abc".into()
            }
        );
        assert!(matches!(
            DpsRequestTopic::parse("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1"),
            Err(TopicError::MissingOperationId(_))
        ));
        assert!(matches!(
            DpsRequestTopic::parse("devices/x/messages/events/"),
            Err(TopicError::UnknownTopic(_))
        ));
        // A refused request is still answered on the `$rid` it carried.
        assert_eq!(
            topic_rid("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=91%2Daa"),
            "91-aa"
        );
        assert_eq!(topic_rid("$dps/registrations/POST/x/?a=b&$rid=7"), "7");
        assert_eq!(topic_rid("$dps/registrations/PUT/iotdps-register/"), "");
    }

    #[test]
    fn response_topic_shape() {
        let t = response_topic(202, "7b3e", Some(3));
        assert_eq!(t, "$dps/registrations/res/202/?$rid=7b3e&retry-after=3");
        // Python: status = split("$")[1].split("/")[3]; exactly three '$'.
        assert_eq!(t.split('$').nth(1).unwrap().split('/').nth(3), Some("202"));
        assert_eq!(t.matches('$').count(), 2);
        assert_eq!(parse_response_topic(&t), Some((202, "7b3e".into(), Some(3))));
        assert_eq!(
            response_topic(200, "a b", None),
            "$dps/registrations/res/200/?$rid=a%20b"
        );
        assert_eq!(
            DpsRequestTopic::parse(&operation_status_topic("r", "4.x")).unwrap(),
            DpsRequestTopic::OperationStatus {
                rid: "r".into(),
                operation_id: "4.x".into()
            }
        );
    }
}
