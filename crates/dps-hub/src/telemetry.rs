//! Device-to-cloud telemetry: a bounded in-memory ring of recent messages plus a live broadcast.
//!
//! The embedded hub is a development and small-fleet hub, not an event store: operators want to
//! see what devices send (`dps hub monitor-events`, the portal) and tests want to assert on it.
//! So acknowledged messages are kept in memory (last N) and fanned out to watchers; nothing is
//! written to disk.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use dps_proto::timefmt::format_record;
use parking_lot::Mutex;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

/// Capacity of the live broadcast; a watcher further behind gets `RecvError::Lagged` and can
/// catch up from [`crate::Hub::recent_events`].
const BROADCAST_CAPACITY: usize = 4096;

/// One acknowledged device-to-cloud message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryMessage {
    /// Hub-wide, strictly increasing (1, 2, ...) since the hub was opened.
    pub sequence_number: u64,
    /// Registry device id of the sender.
    pub device_id: String,
    /// When the hub accepted the message.
    pub enqueued_time: DateTime<Utc>,
    /// Application properties (topic keys without a `$.` prefix), in topic order.
    pub properties: Vec<(String, String)>,
    /// System properties under their Azure names (`message-id`, `content-type`, ...,
    /// `iothub-connection-device-id`, `iothub-enqueuedtime`), device-set ones first.
    pub system_properties: Vec<(String, String)>,
    /// The body exactly as published.
    pub body: Bytes,
}

impl TelemetryMessage {
    /// The body as text, with invalid UTF-8 replaced (for display).
    pub fn body_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as JSON if it parses, else as a JSON string of its (lossy) text — what
    /// `az iot hub monitor-events` shows as `payload`.
    pub fn body_value(&self) -> Value {
        self.body_json()
            .unwrap_or_else(|| Value::String(self.body_text().into_owned()))
    }

    /// A system property by its Azure name.
    pub fn system_property(&self, name: &str) -> Option<&str> {
        self.system_properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The shape `az iot hub monitor-events --properties all` prints:
    /// `{"event": {"origin", "module", "interface", "component", "properties": {"system",
    /// "application"}, "annotations", "payload"}}`. Hub-stamped `iothub-*` values go to
    /// `annotations`, device-set system properties to `properties.system` with AMQP names
    /// (`content_type`, `message_id`, ...), as the Event Hubs consumer in the CLI sees them.
    pub fn to_monitor_event(&self) -> Value {
        let mut system = Map::new();
        let mut annotations = Map::new();
        for (k, v) in &self.system_properties {
            if k.starts_with("iothub-") {
                annotations.insert(k.clone(), Value::String(v.clone()));
            } else {
                system.insert(k.replace('-', "_"), Value::String(v.clone()));
            }
        }
        annotations.insert("x-opt-sequence-number".into(), Value::from(self.sequence_number));
        annotations.insert(
            "x-opt-enqueued-time".into(),
            Value::from(self.enqueued_time.timestamp_millis()),
        );
        let application: Map<String, Value> = self
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "event": {
                "origin": self.device_id,
                "module": "",
                "interface": self.system_property("dt-interface").unwrap_or_default(),
                "component": self.system_property("dt-subject").unwrap_or_default(),
                "properties": { "system": system, "application": application },
                "annotations": annotations,
                "payload": self.body_value(),
            }
        })
    }
}

/// `{"sequenceNumber","deviceId","enqueuedTimeUtc","properties","systemProperties","body"}`,
/// `body` being JSON when the body parses as JSON, else a string.
impl Serialize for TelemetryMessage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pairs = |v: &[(String, String)]| -> Map<String, Value> {
            v.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()
        };
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("sequenceNumber", &self.sequence_number)?;
        m.serialize_entry("deviceId", &self.device_id)?;
        m.serialize_entry("enqueuedTimeUtc", &format_record(&self.enqueued_time))?;
        m.serialize_entry("properties", &pairs(&self.properties))?;
        m.serialize_entry("systemProperties", &pairs(&self.system_properties))?;
        m.serialize_entry("body", &self.body_value())?;
        m.end()
    }
}

/// Maps the MQTT topic's `$.x` system-property keys to the names IoT Hub routes them under.
pub(crate) fn system_property_name(topic_key: &str) -> Cow<'_, str> {
    Cow::Borrowed(match topic_key {
        "$.mid" => "message-id",
        "$.cid" => "correlation-id",
        "$.uid" => "user-id",
        "$.ct" => "content-type",
        "$.ce" => "content-encoding",
        "$.exp" => "absolute-expiry-time",
        "$.on" => "iothub-outputname",
        "$.ifid" => "dt-interface",
        "$.sub" => "dt-subject",
        "$.schema" => "dt-dataschema",
        other => return Cow::Owned(other.trim_start_matches("$.").to_string()),
    })
}

struct Ring {
    next_sequence: u64,
    messages: VecDeque<Arc<TelemetryMessage>>,
}

/// The retention ring and the live fan-out.
///
/// One short mutex guards the ring: the critical section is a push and maybe a pop (no I/O, no
/// allocation once the ring is full), and assigning the sequence number inside it keeps the ring
/// sorted, so readers can binary-search `after_sequence` and watchers see increasing numbers.
pub(crate) struct TelemetryLog {
    retention: usize,
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<TelemetryMessage>>,
}

impl TelemetryLog {
    pub(crate) fn new(retention: usize) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            retention,
            ring: Mutex::new(Ring {
                next_sequence: 1,
                messages: VecDeque::with_capacity(retention.min(65_536)),
            }),
            tx,
        }
    }

    /// Stamps `msg` with the next sequence number, retains and broadcasts it.
    pub(crate) fn append(&self, mut msg: TelemetryMessage) -> Arc<TelemetryMessage> {
        let mut ring = self.ring.lock();
        msg.sequence_number = ring.next_sequence;
        ring.next_sequence += 1;
        let msg = Arc::new(msg);
        if self.retention > 0 {
            if ring.messages.len() >= self.retention {
                ring.messages.pop_front();
            }
            ring.messages.push_back(msg.clone());
        }
        // No receivers is not an error: nobody is watching.
        let _ = self.tx.send(msg.clone());
        msg
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<TelemetryMessage>> {
        self.tx.subscribe()
    }

    pub(crate) fn recent(
        &self,
        device_id: Option<&str>,
        after_sequence: Option<u64>,
        limit: usize,
    ) -> Vec<Arc<TelemetryMessage>> {
        let ring = self.ring.lock();
        let wanted = |m: &&Arc<TelemetryMessage>| device_id.is_none_or(|d| m.device_id.eq_ignore_ascii_case(d));
        match after_sequence {
            Some(after) => {
                let start = ring.messages.partition_point(|m| m.sequence_number <= after);
                ring.messages
                    .range(start..)
                    .filter(wanted)
                    .take(limit)
                    .cloned()
                    .collect()
            }
            None => {
                let mut out: Vec<_> = ring.messages.iter().rev().filter(wanted).take(limit).cloned().collect();
                out.reverse();
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(device: &str, body: &[u8]) -> TelemetryMessage {
        TelemetryMessage {
            sequence_number: 0,
            device_id: device.into(),
            enqueued_time: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            properties: vec![("k".into(), "v".into())],
            system_properties: vec![
                ("content-type".into(), "application/json".into()),
                ("iothub-connection-device-id".into(), device.into()),
            ],
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn ring_keeps_last_n_in_order() {
        let log = TelemetryLog::new(3);
        for i in 0..5 {
            log.append(msg(if i % 2 == 0 { "a" } else { "b" }, b"{}"));
        }
        let all = log.recent(None, None, 10);
        assert_eq!(all.iter().map(|m| m.sequence_number).collect::<Vec<_>>(), vec![3, 4, 5]);
        let a = log.recent(Some("A"), None, 10);
        assert_eq!(a.iter().map(|m| m.sequence_number).collect::<Vec<_>>(), vec![3, 5]);
        let after = log.recent(None, Some(3), 1);
        assert_eq!(after[0].sequence_number, 4);
        assert_eq!(log.recent(None, None, 1)[0].sequence_number, 5);
    }

    #[test]
    fn json_shapes() {
        let mut m = msg("dev", br#"{"t": 21.5}"#);
        m.sequence_number = 7;
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            json!({
                "sequenceNumber": 7,
                "deviceId": "dev",
                "enqueuedTimeUtc": "2023-11-14T22:13:20.0000000Z",
                "properties": {"k": "v"},
                "systemProperties": {"content-type": "application/json", "iothub-connection-device-id": "dev"},
                "body": {"t": 21.5}
            })
        );
        let e = m.to_monitor_event();
        assert_eq!(e["event"]["origin"], "dev");
        assert_eq!(e["event"]["payload"], json!({"t": 21.5}));
        assert_eq!(e["event"]["properties"]["application"]["k"], "v");
        assert_eq!(e["event"]["properties"]["system"]["content_type"], "application/json");
        assert_eq!(e["event"]["annotations"]["iothub-connection-device-id"], "dev");
        let text = msg("dev", b"not json \xff");
        assert_eq!(text.body_value(), json!("not json \u{fffd}"));
    }
}
