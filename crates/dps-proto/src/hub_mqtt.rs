//! The IoT Hub device protocol over MQTT (hub-dice-tpm.md §A2–A7): CONNECT username, device
//! publish topics, and the topics the hub publishes.

use crate::dps_mqtt::{encode_rid, parse_query};
use crate::sas::{decode_component, encode_component};

/// A parsed hub CONNECT username `{hostName}/{deviceId}/?api-version=..&DeviceClientType=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUsername {
    /// Host name the device believes it connects to.
    pub host_name: String,
    /// Device id.
    pub device_id: String,
    /// Module id, for `{host}/{device}/{module}/?...` usernames.
    pub module_id: Option<String>,
    /// `api-version`, if any.
    pub api_version: Option<String>,
}

impl HubUsername {
    /// Parses a hub username. Returns `None` if the shape does not match.
    pub fn parse(username: &str) -> Option<Self> {
        let (path, query) = match username.split_once('?') {
            Some((p, q)) => (p, q),
            None => (username, ""),
        };
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let (host, device, module) = match segs.as_slice() {
            [h, d] => (*h, *d, None),
            [h, d, m] => (*h, *d, Some(decode_component(m))),
            _ => return None,
        };
        if host.is_empty() || device.is_empty() {
            return None;
        }
        let props = parse_query(query);
        Some(Self {
            host_name: host.to_string(),
            device_id: decode_component(device),
            module_id: module,
            api_version: props.iter().find(|(k, _)| k == "api-version").map(|(_, v)| v.clone()),
        })
    }
}

/// What a device published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubPublish {
    /// Device-to-cloud telemetry with its properties (system properties keep their `$.` names).
    Telemetry {
        /// Decoded `k=v` properties from the topic.
        properties: Vec<(String, String)>,
    },
    /// `$iothub/twin/GET/?$rid=`
    TwinGet {
        /// Request id.
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid=`
    TwinReportedPatch {
        /// Request id.
        rid: String,
    },
    /// `$iothub/credentials/POST/issueCertificate/?$rid=`: a certificate renewal.
    IssueCertificate {
        /// Request id.
        rid: String,
    },
    /// `$iothub/methods/res/{status}/?$rid=`
    MethodResponse {
        /// Status chosen by the device.
        status: i32,
        /// Request id of the method call.
        rid: String,
    },
}

/// Why a device publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubTopicError {
    /// Telemetry topic for another device.
    #[error("device '{device}' may not publish on '{topic}'")]
    WrongDevice {
        /// Authenticated device.
        device: String,
        /// Offending topic.
        topic: String,
    },
    /// Not a topic devices may publish on.
    #[error("'{0}' is not a topic devices can publish to")]
    Unknown(String),
}

/// The path of an identity in its topics and addresses: `{deviceId}` for a device,
/// `{deviceId}/modules/{moduleId}` for a module (`devices/{path}/messages/events`, the SAS
/// audience `{host}/devices/{path}`). Neither id may contain `/`, so the path is unambiguous.
pub fn identity_path(device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        None => device_id.to_string(),
        Some(m) => format!("{device_id}/modules/{m}"),
    }
}

/// The device and module ids of an [`identity_path`].
pub fn split_identity_path(path: &str) -> (&str, Option<&str>) {
    match path.split_once("/modules/") {
        Some((d, m)) => (d, Some(m)),
        None => (path, None),
    }
}

impl HubPublish {
    /// Parses a publish topic of the authenticated identity whose [`identity_path`] is `path`.
    pub fn parse(topic: &str, path: &str) -> Result<Self, HubTopicError> {
        let device_id = path;
        if let Some(rest) = topic.strip_prefix("devices/") {
            let prefix = format!("{path}/messages/events");
            let Some(after) = rest.strip_prefix(&prefix) else {
                return Err(if rest.contains("/messages/events") {
                    HubTopicError::WrongDevice {
                        device: device_id.into(),
                        topic: topic.into(),
                    }
                } else {
                    HubTopicError::Unknown(topic.into())
                });
            };
            let after = after.trim_start_matches('/').trim_end_matches('/');
            return Ok(Self::Telemetry {
                properties: parse_query(after),
            });
        }
        let rid_of = |q: &str| {
            parse_query(q.trim_start_matches('?'))
                .into_iter()
                .find(|(k, _)| k == "$rid")
                .map(|(_, v)| v)
                .unwrap_or_default()
        };
        if let Some(q) = topic.strip_prefix("$iothub/twin/GET/") {
            return Ok(Self::TwinGet { rid: rid_of(q) });
        }
        if let Some(q) = topic.strip_prefix("$iothub/twin/PATCH/properties/reported/") {
            return Ok(Self::TwinReportedPatch { rid: rid_of(q) });
        }
        if let Some(q) = topic.strip_prefix("$iothub/credentials/POST/issueCertificate/") {
            return Ok(Self::IssueCertificate { rid: rid_of(q) });
        }
        if let Some(rest) = topic.strip_prefix("$iothub/methods/res/") {
            if let Some((status, q)) = rest.split_once('/') {
                if let Ok(status) = status.parse() {
                    return Ok(Self::MethodResponse { status, rid: rid_of(q) });
                }
            }
        }
        Err(HubTopicError::Unknown(topic.into()))
    }
}

/// The subscription filters an identity may use, and whether `filter` is one of them for the
/// identity at `path` ([`identity_path`]). A device may subscribe to its cloud-to-device
/// messages, with `+` in the device position allowed (Embedded C subscribes
/// `devices/+/messages/devicebound/#`). A module has no cloud-to-device messages; it may
/// subscribe to its inputs (`devices/{d}/modules/{m}/inputs/#`, or all of its topics with
/// `devices/{d}/modules/{m}/#` as the C# SDK does), which only IoT Edge ever sends.
pub fn subscription_allowed(filter: &str, path: &str) -> bool {
    let device_id = path;
    if let Some(rest) = filter.strip_prefix("devices/") {
        if path.contains("/modules/") {
            return rest
                .strip_prefix(path)
                .and_then(|t| t.strip_prefix('/'))
                .is_some_and(|tail| matches!(tail, "#" | "inputs/#" | "inputs/+" | "inputs/+/#"));
        }
        if let Some((dev, tail)) = rest.split_once('/') {
            return (dev == device_id || dev == "+")
                && (tail == "messages/devicebound/#" || tail == "messages/devicebound/+");
        }
        return false;
    }
    matches!(
        filter,
        "$iothub/twin/res/#"
            | "$iothub/twin/PATCH/properties/desired/#"
            | "$iothub/methods/POST/#"
            | "$iothub/twin/#"
            | "$iothub/credentials/res/#"
    )
}

/// What a subscription filter delivers (so the hub knows which notifications a session wants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Cloud-to-device messages.
    C2d,
    /// Twin responses.
    TwinResponses,
    /// Desired-property patches.
    DesiredPatches,
    /// Direct-method requests.
    Methods,
    /// Answers to certificate renewals.
    CredentialResponses,
}

/// The topic filter that subscribes the identity at `path` to `feed` (for a device, one
/// [`subscription_allowed`] accepts and [`feeds_of`] maps back to `feed`; a module's C2D filter
/// is refused).
pub fn feed_filter(feed: Feed, path: &str) -> String {
    match feed {
        Feed::C2d => format!("devices/{path}/messages/devicebound/#"),
        Feed::TwinResponses => "$iothub/twin/res/#".to_string(),
        Feed::DesiredPatches => "$iothub/twin/PATCH/properties/desired/#".to_string(),
        Feed::Methods => "$iothub/methods/POST/#".to_string(),
        Feed::CredentialResponses => "$iothub/credentials/res/#".to_string(),
    }
}

/// Maps an allowed filter to what it delivers.
pub fn feeds_of(filter: &str) -> Vec<Feed> {
    match filter {
        "$iothub/twin/res/#" => vec![Feed::TwinResponses],
        "$iothub/twin/PATCH/properties/desired/#" => vec![Feed::DesiredPatches],
        "$iothub/twin/#" => vec![Feed::TwinResponses, Feed::DesiredPatches],
        "$iothub/methods/POST/#" => vec![Feed::Methods],
        "$iothub/credentials/res/#" => vec![Feed::CredentialResponses],
        f if f.starts_with("devices/") && f.contains("/messages/devicebound/") => vec![Feed::C2d],
        _ => vec![],
    }
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`
pub fn twin_response_topic(status: u16, rid: &str, version: Option<i64>) -> String {
    // The device's `$rid` arrives percent-decoded; written back raw, a `&` in it would cut it
    // short (and let it add fields), and `+`/`#` are not allowed in a PUBLISH topic at all.
    let mut t = format!("$iothub/twin/res/{status}/?$rid={}", encode_rid(rid));
    if let Some(v) = version {
        t.push_str(&format!("&$version={v}"));
    }
    t
}

/// `$iothub/credentials/res/{status}/?$rid={rid}`: the answers to a certificate renewal.
pub fn credentials_response_topic(status: u16, rid: &str) -> String {
    format!("$iothub/credentials/res/{status}/?$rid={}", encode_rid(rid))
}

/// `$iothub/twin/PATCH/properties/desired/?$version={v}`
pub fn desired_patch_topic(version: i64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// `$iothub/methods/POST/{name}/?$rid={rid}` — nothing may follow the rid (the C SDK copies the rest
/// of the token as the rid).
pub fn method_request_topic(method: &str, rid: &str) -> String {
    format!("$iothub/methods/POST/{method}/?$rid={rid}")
}

/// `devices/{id}/messages/devicebound/{props}` with url-encoded properties.
pub fn c2d_topic(device_id: &str, properties: &[(String, String)]) -> String {
    let props: Vec<String> = properties
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    format!("devices/{device_id}/messages/devicebound/{}", props.join("&"))
}

/// Telemetry topic a device publishes on (device side).
pub fn telemetry_topic(device_id: &str, properties: &[(String, String)]) -> String {
    let props: Vec<String> = properties
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    format!("devices/{device_id}/messages/events/{}", props.join("&"))
}

/// `$iothub/twin/GET/?$rid={rid}` (device side).
pub fn twin_get_topic(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}` (device side).
pub fn reported_patch_topic(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// Parses `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]` into `(status, rid, version)`
/// (device side).
pub fn parse_twin_response_topic(topic: &str) -> Option<(u16, String, Option<i64>)> {
    let rest = topic.strip_prefix("$iothub/twin/res/")?;
    let (status, query) = rest.split_once('/')?;
    let status = status.parse().ok()?;
    let props = parse_query(query.trim_start_matches('?'));
    let get = |k: &str| props.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
    Some((
        status,
        get("$rid").unwrap_or_default(),
        get("$version").and_then(|v| v.parse().ok()),
    ))
}

/// `$iothub/credentials/POST/issueCertificate/?$rid={rid}` (device side).
pub fn issue_certificate_topic(rid: &str) -> String {
    format!("$iothub/credentials/POST/issueCertificate/?$rid={}", encode_rid(rid))
}

/// Parses `$iothub/credentials/res/{status}/?$rid={rid}` into `(status, rid)` (device side).
pub fn parse_credentials_response_topic(topic: &str) -> Option<(u16, String)> {
    let rest = topic.strip_prefix("$iothub/credentials/res/")?;
    let (status, query) = rest.split_once('/')?;
    let status = status.parse().ok()?;
    let rid = parse_query(query.trim_start_matches('?'))
        .into_iter()
        .find(|(k, _)| k == "$rid")
        .map(|(_, v)| v)
        .unwrap_or_default();
    Some((status, rid))
}

/// Parses `$iothub/twin/PATCH/properties/desired/?$version={v}`: `Some(version)` when it is a
/// desired-properties topic (device side).
pub fn parse_desired_patch_topic(topic: &str) -> Option<Option<i64>> {
    let query = topic.strip_prefix("$iothub/twin/PATCH/properties/desired/")?;
    let props = parse_query(query.trim_start_matches('?'));
    Some(
        props
            .iter()
            .find(|(k, _)| k == "$version")
            .and_then(|(_, v)| v.parse().ok()),
    )
}

/// CONNECT username a device sends to the hub (device side).
pub fn username(host: &str, device_id: &str, api_version: &str) -> String {
    format!(
        "{host}/{device_id}/?api-version={api_version}&DeviceClientType={}",
        encode_component("dps-rust/0.1")
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn feed_filters_subscribe_to_their_feed() {
        for feed in [Feed::C2d, Feed::TwinResponses, Feed::DesiredPatches, Feed::Methods] {
            let f = feed_filter(feed, "dev-1");
            assert!(subscription_allowed(&f, "dev-1"), "{f}");
            assert_eq!(feeds_of(&f), vec![feed]);
        }
    }

    use super::*;

    #[test]
    fn usernames() {
        let py = HubUsername::parse(
            "hub.example.test/dev-01/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0",
        )
        .unwrap();
        assert_eq!(
            (py.host_name.as_str(), py.device_id.as_str()),
            ("hub.example.test", "dev-01")
        );
        assert_eq!(py.api_version.as_deref(), Some("2019-10-01"));
        let m = HubUsername::parse("h.x/d/m/?api-version=1").unwrap();
        assert_eq!(m.module_id.as_deref(), Some("m"));
        assert!(HubUsername::parse("nothing").is_none());
    }

    #[test]
    fn publishes() {
        assert_eq!(
            HubPublish::parse("devices/d1/messages/events/%24.ct=application%2Fjson&k=v", "d1").unwrap(),
            HubPublish::Telemetry {
                properties: vec![("$.ct".into(), "application/json".into()), ("k".into(), "v".into())]
            }
        );
        assert_eq!(
            HubPublish::parse("devices/d1/messages/events/", "d1").unwrap(),
            HubPublish::Telemetry { properties: vec![] }
        );
        assert_eq!(
            HubPublish::parse("devices/d1/messages/events", "d1").unwrap(),
            HubPublish::Telemetry { properties: vec![] }
        );
        assert!(matches!(
            HubPublish::parse("devices/d2/messages/events/", "d1"),
            Err(HubTopicError::WrongDevice { .. })
        ));
        assert_eq!(
            HubPublish::parse("$iothub/twin/GET/?$rid=17", "d").unwrap(),
            HubPublish::TwinGet { rid: "17".into() }
        );
        assert_eq!(
            HubPublish::parse("$iothub/twin/PATCH/properties/reported/?$rid=ab-c", "d").unwrap(),
            HubPublish::TwinReportedPatch { rid: "ab-c".into() }
        );
        assert_eq!(
            HubPublish::parse("$iothub/methods/res/200/?$rid=5", "d").unwrap(),
            HubPublish::MethodResponse {
                status: 200,
                rid: "5".into()
            }
        );
        assert!(HubPublish::parse("$iothub/other", "d").is_err());
    }

    /// Found by the `mqtt_topic` fuzz target (fuzz/artifacts/mqtt_topic/): a `$rid` sent as
    /// `1%26x` came back as `1` (and `&` let a device append fields to its own response topic).
    #[test]
    fn twin_response_carries_any_rid_back_unchanged() {
        for rid in ["17", "ab-c", "1&42", "a=b", "%41", "a+b#", "é/x", ""] {
            let t = twin_response_topic(200, rid, Some(3));
            assert!(!t.contains(['+', '#']), "{t}");
            assert_eq!(
                parse_twin_response_topic(&t),
                Some((200, rid.to_string(), Some(3))),
                "{t}"
            );
        }
        let HubPublish::TwinGet { rid } = HubPublish::parse("$iothub/twin/GET/?$rid=1%26x", "d").unwrap() else {
            panic!("a twin GET");
        };
        assert_eq!(twin_response_topic(200, &rid, None), "$iothub/twin/res/200/?$rid=1%26x");
    }

    #[test]
    fn filters_and_outbound_topics() {
        assert!(subscription_allowed("devices/d1/messages/devicebound/#", "d1"));
        assert!(subscription_allowed("devices/+/messages/devicebound/#", "d1"));
        assert!(!subscription_allowed("devices/d2/messages/devicebound/#", "d1"));
        assert!(subscription_allowed("$iothub/twin/res/#", "d1"));
        assert!(!subscription_allowed("#", "d1"));
        // A module's own topics: inputs (and the C# SDK's catch-all), never C2D or others'.
        let m = identity_path("d1", Some("m1"));
        assert_eq!(m, "d1/modules/m1");
        assert_eq!(split_identity_path(&m), ("d1", Some("m1")));
        assert_eq!(split_identity_path("d1"), ("d1", None));
        assert!(subscription_allowed("devices/d1/modules/m1/inputs/#", &m));
        assert!(subscription_allowed("devices/d1/modules/m1/#", &m));
        assert!(subscription_allowed("$iothub/methods/POST/#", &m));
        assert!(!subscription_allowed("devices/d1/modules/m2/#", &m));
        assert!(!subscription_allowed("devices/d1/messages/devicebound/#", &m));
        assert!(!subscription_allowed(&feed_filter(Feed::C2d, &m), &m));
        assert!(!subscription_allowed("devices/d1/modules/m1/inputs/#", "d1"));
        assert!(feeds_of("devices/d1/modules/m1/#").is_empty());
        assert_eq!(
            HubPublish::parse("devices/d1/modules/m1/messages/events/%24.on=out1", &m).unwrap(),
            HubPublish::Telemetry {
                properties: vec![("$.on".into(), "out1".into())]
            }
        );
        assert!(HubPublish::parse("devices/d1/messages/events/", &m).is_err());
        assert!(HubPublish::parse("devices/d1/modules/m1/messages/events/", "d1").is_err());
        assert_eq!(
            feeds_of("$iothub/twin/#"),
            vec![Feed::TwinResponses, Feed::DesiredPatches]
        );
        assert_eq!(
            twin_response_topic(204, "3", Some(7)),
            "$iothub/twin/res/204/?$rid=3&$version=7"
        );
        assert_eq!(
            desired_patch_topic(2),
            "$iothub/twin/PATCH/properties/desired/?$version=2"
        );
        assert_eq!(
            method_request_topic("reboot", "9"),
            "$iothub/methods/POST/reboot/?$rid=9"
        );
        assert_eq!(
            c2d_topic("d", &[("$.mid".into(), "1".into()), ("k".into(), "a b".into())]),
            "devices/d/messages/devicebound/%24.mid=1&k=a%20b"
        );
    }
}
