//! Device-to-cloud telemetry: a bounded in-memory ring of recent messages plus a live broadcast.
//!
//! The embedded hub is a development and small-fleet hub, not an event store: operators want to
//! see what devices send (`dps hub monitor-events`, the portal) and tests want to assert on it.
//! So acknowledged messages are kept in memory and fanned out to watchers; nothing is written to
//! disk.
//!
//! Memory is bounded three ways, whichever bites first: a message count, a byte budget (bodies,
//! properties and a fixed per-message overhead) and an age. Without the byte bound, 10 000
//! messages of 256 KiB held 2.5 GiB; without the age bound a quiet hub would keep a burst from
//! last week. The live broadcast is bounded in bytes as well: it holds at most
//! [`BROADCAST_CAPACITY`] messages for watchers that have not read them yet, sized so that even
//! messages of the largest size IoT Hub accepts pin no more than [`LIVE_FEED_BYTES`]; a slower
//! watcher gets `Lagged` and catches up from the retention ring.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use dps_proto::event_hubs::EventPosition;
use dps_proto::timefmt::format_record;
use dps_proto::twin_limits;
use parking_lot::Mutex;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};

/// The most message bytes the live broadcast holds for watchers that have not read them yet.
pub(crate) const LIVE_FEED_BYTES: usize = 64 * 1024 * 1024;

/// Capacity of the live broadcast: [`LIVE_FEED_BYTES`] of maximum-size messages (256). A watcher
/// further behind gets `RecvError::Lagged` and can catch up from [`crate::Hub::recent_events`].
pub(crate) const BROADCAST_CAPACITY: usize = LIVE_FEED_BYTES / twin_limits::D2C_MAX_BYTES;

/// Bytes counted per retained message on top of its text: the message struct, its `Arc`, the
/// vectors and the allocations of each string.
const MESSAGE_OVERHEAD: u64 = 256;

/// How much telemetry the hub keeps for readers; a message goes when any bound is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Most messages.
    pub count: usize,
    /// Most bytes (see [`TelemetryMessage::retained_bytes`]).
    pub bytes: u64,
    /// Oldest message, by enqueued time on the hub's clock.
    pub age: Duration,
}

/// One acknowledged device-to-cloud message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryMessage {
    /// Hub-wide, strictly increasing (1, 2, ...) since the hub was opened. The Event
    /// Hub-compatible endpoint gives it as the event's offset (`x-opt-offset`): increasing
    /// within each partition, as Event Hubs' offsets are.
    pub sequence_number: u64,
    /// The Event Hub-compatible endpoint's partition ([`partition_of`] the device).
    pub partition: u32,
    /// Position in the partition (0, 1, ...): the event's `x-opt-sequence-number`.
    pub partition_sequence: u64,
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

    /// What this message counts against the retention byte budget: body, device id, property
    /// keys and values, and a fixed overhead for the structures holding them.
    pub fn retained_bytes(&self) -> u64 {
        let pairs = |v: &[(String, String)]| v.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        (self.body.len() + self.device_id.len() + pairs(&self.properties) + pairs(&self.system_properties)) as u64
            + MESSAGE_OVERHEAD
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

/// A telemetry message as stores keep it: JSON with the body in base64.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredEvent {
    sequence_number: u64,
    partition: u32,
    partition_sequence: u64,
    device_id: String,
    enqueued_time: DateTime<Utc>,
    properties: Vec<(String, String)>,
    system_properties: Vec<(String, String)>,
    body: String,
}

/// The bytes a store keeps for a telemetry message ([`decode_event`] reads them back).
pub fn encode_event(m: &TelemetryMessage) -> Vec<u8> {
    use base64::Engine as _;
    let stored = StoredEvent {
        sequence_number: m.sequence_number,
        partition: m.partition,
        partition_sequence: m.partition_sequence,
        device_id: m.device_id.clone(),
        enqueued_time: m.enqueued_time,
        properties: m.properties.clone(),
        system_properties: m.system_properties.clone(),
        body: base64::engine::general_purpose::STANDARD.encode(&m.body),
    };
    // Strings, numbers and a timestamp: always encodes.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// A telemetry message from the bytes [`encode_event`] made.
pub fn decode_event(bytes: &[u8]) -> Result<TelemetryMessage, String> {
    use base64::Engine as _;
    let s: StoredEvent = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(TelemetryMessage {
        sequence_number: s.sequence_number,
        partition: s.partition,
        partition_sequence: s.partition_sequence,
        device_id: s.device_id,
        enqueued_time: s.enqueued_time,
        properties: s.properties,
        system_properties: s.system_properties,
        body: base64::engine::general_purpose::STANDARD
            .decode(s.body)
            .map(Bytes::from)
            .map_err(|e| e.to_string())?,
    })
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
    /// Sum of [`TelemetryMessage::retained_bytes`] over `messages`.
    bytes: u64,
    /// The same messages by partition.
    partitions: Vec<Partition>,
}

/// One partition's messages (a subsequence of the ring's) and where it stands.
#[derive(Default)]
struct Partition {
    /// The next partition sequence number.
    next: u64,
    messages: VecDeque<Arc<TelemetryMessage>>,
    /// The last message appended, even when it is no longer retained.
    last: Option<Arc<TelemetryMessage>>,
}

/// The Event Hub-compatible view of one partition (the `$management` partition read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The first retained sequence number (the next one when nothing is retained).
    pub begin_sequence_number: u64,
    /// The last sequence number appended, if any.
    pub last_sequence_number: Option<u64>,
    /// The last offset appended (a hub-wide sequence number), if any.
    pub last_offset: Option<u64>,
    /// When the last message was enqueued, if any.
    pub last_enqueued_time: Option<DateTime<Utc>>,
    /// Whether no message is retained.
    pub is_empty: bool,
}

/// The partition a device's messages go to, out of `count`: FNV-1a of the lower-cased device
/// id, so a device always lands in the same partition (its events stay in order), across
/// restarts and builds.
pub fn partition_of(device_id: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device_id.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(count.max(1))) as u32
}

impl Ring {
    /// Drops the oldest messages until every bound of `retention` holds at `now`.
    fn evict(&mut self, retention: &Retention, now: DateTime<Utc>) {
        let cutoff = TimeDelta::from_std(retention.age)
            .ok()
            .and_then(|age| now.checked_sub_signed(age));
        while let Some(front) = self.messages.front() {
            let expired = cutoff.is_some_and(|c| front.enqueued_time < c);
            if !(expired || self.messages.len() > retention.count || self.bytes > retention.bytes) {
                break;
            }
            self.bytes -= front.retained_bytes();
            if let Some(p) = self.partitions.get_mut(front.partition as usize) {
                p.messages.pop_front();
            }
            self.messages.pop_front();
        }
    }
}

/// The retention ring and the live fan-out.
///
/// One short mutex guards the ring: the critical section is a push and maybe a few pops (no I/O),
/// and assigning the sequence number inside it keeps the ring sorted, so readers can
/// binary-search `after_sequence` and watchers see increasing numbers.
pub(crate) struct TelemetryLog {
    retention: Retention,
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<TelemetryMessage>>,
    /// Per partition, the count of messages appended: changes when one arrives.
    arrivals: Vec<watch::Sender<u64>>,
}

impl TelemetryLog {
    pub(crate) fn new(retention: Retention, partitions: u32) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let partitions = partitions.max(1) as usize;
        Self {
            retention,
            ring: Mutex::new(Ring {
                next_sequence: 1,
                messages: VecDeque::with_capacity(retention.count.min(1024)),
                bytes: 0,
                partitions: (0..partitions).map(|_| Partition::default()).collect(),
            }),
            tx,
            arrivals: (0..partitions).map(|_| watch::channel(0).0).collect(),
        }
    }

    /// How many partitions the messages are spread over.
    pub(crate) fn partition_count(&self) -> u32 {
        self.arrivals.len() as u32
    }

    /// Stamps `msg` with the next sequence number, retains and broadcasts it. Its enqueued time is
    /// "now" for the age bound. A message larger than the whole byte budget is broadcast but not
    /// retained.
    pub(crate) fn append(&self, mut msg: TelemetryMessage) -> Arc<TelemetryMessage> {
        msg.partition = partition_of(&msg.device_id, self.partition_count());
        let p = msg.partition as usize;
        let mut ring = self.ring.lock();
        msg.sequence_number = ring.next_sequence;
        ring.next_sequence += 1;
        msg.partition_sequence = ring.partitions[p].next;
        ring.partitions[p].next += 1;
        let msg = Arc::new(msg);
        let now = msg.enqueued_time;
        let cost = msg.retained_bytes();
        if self.retention.count > 0 && cost <= self.retention.bytes {
            ring.bytes += cost;
            ring.messages.push_back(msg.clone());
            ring.partitions[p].messages.push_back(msg.clone());
        }
        ring.partitions[p].last = Some(msg.clone());
        ring.evict(&self.retention, now);
        drop(ring);
        self.arrivals[p].send_modify(|n| *n += 1);
        // No receivers is not an error: nobody is watching.
        let _ = self.tx.send(msg.clone());
        msg
    }

    /// Changes whenever a message arrives in `partition`; `None` for a partition that does not
    /// exist.
    pub(crate) fn arrivals(&self, partition: u32) -> Option<watch::Receiver<u64>> {
        self.arrivals.get(partition as usize).map(|tx| tx.subscribe())
    }

    /// Where `partition` stands at `now` (`None`: no such partition).
    pub(crate) fn partition_info(&self, now: DateTime<Utc>, partition: u32) -> Option<PartitionInfo> {
        let mut ring = self.ring.lock();
        ring.evict(&self.retention, now);
        let p = ring.partitions.get(partition as usize)?;
        Some(PartitionInfo {
            begin_sequence_number: p.messages.front().map_or(p.next, |m| m.partition_sequence),
            last_sequence_number: p.last.as_ref().map(|m| m.partition_sequence),
            last_offset: p.last.as_ref().map(|m| m.sequence_number),
            last_enqueued_time: p.last.as_ref().map(|m| m.enqueued_time),
            is_empty: p.messages.is_empty(),
        })
    }

    /// The partition sequence number a consumer starting at `position` reads first.
    pub(crate) fn start_of(&self, partition: u32, position: EventPosition) -> Option<u64> {
        let ring = self.ring.lock();
        let p = ring.partitions.get(partition as usize)?;
        let first_where = |pred: &dyn Fn(&TelemetryMessage) -> bool| {
            p.messages
                .iter()
                .find(|m| pred(m))
                .map_or(p.next, |m| m.partition_sequence)
        };
        Some(match position {
            EventPosition::Latest => p.next,
            EventPosition::Offset { offset, inclusive } => first_where(&|m: &TelemetryMessage| {
                let o = m.sequence_number as i64;
                if inclusive {
                    o >= offset
                } else {
                    o > offset
                }
            }),
            EventPosition::SequenceNumber {
                sequence_number,
                inclusive,
            } => {
                let n = sequence_number.max(-1);
                let first = if inclusive { n } else { n + 1 };
                first.max(0) as u64
            }
            EventPosition::EnqueuedTime { millis, inclusive } => first_where(&|m: &TelemetryMessage| {
                let t = m.enqueued_time.timestamp_millis();
                if inclusive {
                    t >= millis
                } else {
                    t > millis
                }
            }),
        })
    }

    /// Up to `limit` retained messages of `partition` from sequence number `from` on (from the
    /// oldest retained one when `from` is older), and the sequence number after them.
    pub(crate) fn read_partition(
        &self,
        now: DateTime<Utc>,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> (Vec<Arc<TelemetryMessage>>, u64) {
        let mut ring = self.ring.lock();
        ring.evict(&self.retention, now);
        let Some(p) = ring.partitions.get(partition as usize) else {
            return (Vec::new(), from);
        };
        let start = p.messages.partition_point(|m| m.partition_sequence < from);
        let out: Vec<_> = p.messages.range(start..).take(limit).cloned().collect();
        let next = out.last().map_or(from, |m| m.partition_sequence + 1);
        (out, next)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<TelemetryMessage>> {
        self.tx.subscribe()
    }

    /// Retained messages (see [`crate::Hub::recent_events`]); those older than the age bound at
    /// `now` are dropped first, so a quiet hub does not serve stale telemetry.
    pub(crate) fn recent(
        &self,
        now: DateTime<Utc>,
        device_id: Option<&str>,
        after_sequence: Option<u64>,
        limit: usize,
    ) -> Vec<Arc<TelemetryMessage>> {
        let mut ring = self.ring.lock();
        ring.evict(&self.retention, now);
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
            partition: 0,
            partition_sequence: 0,
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

    fn retention(count: usize) -> Retention {
        Retention {
            count,
            bytes: u64::MAX,
            age: Duration::from_secs(3600),
        }
    }

    fn seqs(v: &[Arc<TelemetryMessage>]) -> Vec<u64> {
        v.iter().map(|m| m.sequence_number).collect()
    }

    #[test]
    fn ring_keeps_last_n_in_order() {
        let log = TelemetryLog::new(retention(3), 1);
        let now = msg("a", b"").enqueued_time;
        for i in 0..5 {
            log.append(msg(if i % 2 == 0 { "a" } else { "b" }, b"{}"));
        }
        let all = log.recent(now, None, None, 10);
        assert_eq!(seqs(&all), vec![3, 4, 5]);
        let a = log.recent(now, Some("A"), None, 10);
        assert_eq!(seqs(&a), vec![3, 5]);
        let after = log.recent(now, None, Some(3), 1);
        assert_eq!(after[0].sequence_number, 4);
        assert_eq!(log.recent(now, None, None, 1)[0].sequence_number, 5);
    }

    #[test]
    fn ring_is_bounded_in_bytes_and_age() {
        let one = msg("a", &[b'x'; 1000]).retained_bytes();
        let log = TelemetryLog::new(
            Retention {
                count: 1000,
                bytes: 3 * one,
                age: Duration::from_secs(60),
            },
            1,
        );
        let t0 = msg("a", b"").enqueued_time;
        for _ in 0..5 {
            log.append(msg("a", &[b'x'; 1000]));
        }
        assert_eq!(seqs(&log.recent(t0, None, None, 10)), vec![3, 4, 5]);
        assert_eq!(log.ring.lock().bytes, 3 * one);
        // Larger than the whole budget: broadcast, not retained, and it evicts nothing.
        log.append(msg("a", &[b'x'; 4000]));
        assert_eq!(seqs(&log.recent(t0, None, None, 10)), vec![3, 4, 5]);
        // A minute later (plus a second) they are all too old; a reader sees none.
        let later = t0 + TimeDelta::seconds(61);
        assert!(log.recent(later, None, None, 10).is_empty());
        assert_eq!(log.ring.lock().bytes, 0);
        let mut m = msg("b", b"{}");
        m.enqueued_time = later;
        log.append(m);
        assert_eq!(seqs(&log.recent(later, None, None, 10)), vec![7]);
    }

    #[test]
    fn partitions_number_their_own_messages_and_find_where_consumers_start() {
        let log = TelemetryLog::new(retention(100), 4);
        let (a, b) = ("dev-a", "dev-b");
        assert_ne!(partition_of(a, 4), partition_of(b, 4), "the test needs two partitions");
        assert_eq!(
            partition_of("DEV-A", 4),
            partition_of(a, 4),
            "case-insensitive, as device ids"
        );
        let now = msg(a, b"").enqueued_time;
        let arrivals = log.arrivals(partition_of(a, 4)).unwrap();
        let sent: Vec<_> = (0..5)
            .map(|i| {
                let mut m = msg(if i % 2 == 0 { a } else { b }, b"{}");
                m.enqueued_time = now + TimeDelta::seconds(i);
                log.append(m)
            })
            .collect();
        assert!(arrivals.has_changed().unwrap());
        let pa = partition_of(a, 4);
        let of_a: Vec<_> = sent.iter().filter(|m| m.partition == pa).collect();
        assert_eq!(of_a.iter().map(|m| m.partition_sequence).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(of_a.iter().map(|m| m.sequence_number).collect::<Vec<_>>(), [1, 3, 5]);

        let (read, next) = log.read_partition(now, pa, 0, 2);
        assert_eq!(read.iter().map(|m| m.sequence_number).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(next, 2);
        assert_eq!(log.read_partition(now, pa, 3, 10), (Vec::new(), 3));
        let start = |p| log.start_of(pa, p).unwrap();
        assert_eq!(start(EventPosition::EARLIEST), 0);
        assert_eq!(start(EventPosition::Latest), 3);
        assert_eq!(
            start(EventPosition::Offset {
                offset: 3,
                inclusive: false
            }),
            2
        );
        assert_eq!(
            start(EventPosition::Offset {
                offset: 3,
                inclusive: true
            }),
            1
        );
        assert_eq!(
            start(EventPosition::SequenceNumber {
                sequence_number: 1,
                inclusive: false
            }),
            2
        );
        let t2 = (now + TimeDelta::seconds(2)).timestamp_millis();
        assert_eq!(
            start(EventPosition::EnqueuedTime {
                millis: t2,
                inclusive: true
            }),
            1
        );
        assert_eq!(
            start(EventPosition::EnqueuedTime {
                millis: t2,
                inclusive: false
            }),
            2
        );

        let info = log.partition_info(now, pa).unwrap();
        assert_eq!(
            info,
            PartitionInfo {
                begin_sequence_number: 0,
                last_sequence_number: Some(2),
                last_offset: Some(5),
                last_enqueued_time: Some(now + TimeDelta::seconds(4)),
                is_empty: false,
            }
        );
        let empty = (0..4).find(|p| *p != pa && *p != partition_of(b, 4)).unwrap();
        assert!(log.partition_info(now, empty).unwrap().is_empty);
        assert!(log.partition_info(now, 4).is_none());
    }

    #[test]
    fn live_feed_is_bounded_in_bytes() {
        // The broadcast's capacity times the largest message stays within the byte budget.
        assert_eq!(BROADCAST_CAPACITY, 256);
        const { assert!(BROADCAST_CAPACITY * twin_limits::D2C_MAX_BYTES <= LIVE_FEED_BYTES) };
        let log = TelemetryLog::new(retention(0), 1);
        let mut rx = log.subscribe();
        for _ in 0..BROADCAST_CAPACITY + 10 {
            log.append(msg("a", b"{}"));
        }
        // The slow watcher lost the oldest ten and is told so; the rest are still there.
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(10))));
        assert_eq!(rx.try_recv().unwrap().sequence_number, 11);
        // Retention 0 keeps nothing.
        assert!(log.recent(msg("a", b"").enqueued_time, None, None, 10).is_empty());
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
