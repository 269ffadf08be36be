//! Device-to-cloud telemetry: written to the hub's store before the device is acknowledged,
//! spread over the Event Hub-compatible endpoint's partitions, cached in memory for readers at
//! the head of the stream, and fanned out live.
//!
//! The store keeps telemetry for the retention's age and byte budget (a day and 256 MiB by
//! default; [`crate::Hub::sweep`] trims it), so it survives a restart and consumers can read from
//! the start. The memory cache is bounded three ways, whichever bites first: a message count, a
//! byte budget (at most [`CACHE_BYTES`]; bodies, properties and a fixed per-message overhead) and
//! an age. The live broadcast is bounded in bytes as well: it holds at most
//! [`BROADCAST_CAPACITY`] messages for watchers that have not read them yet, sized so that even
//! messages of the largest size IoT Hub accepts pin no more than [`LIVE_FEED_BYTES`]; a slower
//! watcher gets `Lagged` and catches up from the retention ring.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use dps_proto::event_hubs::EventPosition;

use crate::store::{EventStart, HubStore, HubStoreError};
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
                "module": self.system_property("iothub-connection-module-id").unwrap_or_default(),
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

/// A telemetry message as stores kept it before the binary form: JSON with the body in base64
/// (still read, so retained telemetry of earlier builds survives the upgrade).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonEvent {
    sequence_number: u64,
    partition: u32,
    partition_sequence: u64,
    device_id: String,
    enqueued_time: DateTime<Utc>,
    properties: Vec<(String, String)>,
    system_properties: Vec<(String, String)>,
    body: String,
}

/// A telemetry message as stores keep it: postcard (a compact serde format) after a version
/// byte, the body as raw bytes. JSON with a base64 body took three to four times the message's
/// size and a good share of the write path's CPU.
#[derive(serde::Serialize, serde::Deserialize)]
struct BinaryEvent<'a> {
    sequence_number: u64,
    partition: u32,
    partition_sequence: u64,
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    /// Nanoseconds since the Unix epoch.
    enqueued_ns: i64,
    properties: Cow<'a, [(String, String)]>,
    system_properties: Cow<'a, [(String, String)]>,
    #[serde(borrow, with = "serde_bytes")]
    body: Cow<'a, [u8]>,
}

/// The first byte of the binary form (a JSON document starts with `{`).
const BINARY_V1: u8 = 1;

/// The bytes a store keeps for a telemetry message ([`decode_event`] reads them back).
pub fn encode_event(m: &TelemetryMessage) -> Vec<u8> {
    let stored = BinaryEvent {
        sequence_number: m.sequence_number,
        partition: m.partition,
        partition_sequence: m.partition_sequence,
        device_id: Cow::Borrowed(&m.device_id),
        enqueued_ns: m.enqueued_time.timestamp_nanos_opt().unwrap_or(i64::MAX),
        properties: Cow::Borrowed(&m.properties),
        system_properties: Cow::Borrowed(&m.system_properties),
        body: Cow::Borrowed(&m.body),
    };
    let mut out = Vec::with_capacity(m.retained_bytes() as usize + 64);
    out.push(BINARY_V1);
    // Strings, numbers and bytes into a Vec: always encodes.
    postcard::to_io(&stored, &mut out).map(drop).unwrap_or_default();
    out
}

/// A telemetry message from the bytes [`encode_event`] made (or an earlier build's JSON).
pub fn decode_event(bytes: &[u8]) -> Result<TelemetryMessage, String> {
    use base64::Engine as _;
    match bytes.split_first() {
        Some((&BINARY_V1, rest)) => {
            let s: BinaryEvent<'_> = postcard::from_bytes(rest).map_err(|e| e.to_string())?;
            Ok(TelemetryMessage {
                sequence_number: s.sequence_number,
                partition: s.partition,
                partition_sequence: s.partition_sequence,
                device_id: s.device_id.into_owned(),
                enqueued_time: DateTime::from_timestamp_nanos(s.enqueued_ns),
                properties: s.properties.into_owned(),
                system_properties: s.system_properties.into_owned(),
                body: Bytes::copy_from_slice(&s.body),
            })
        }
        _ => {
            let s: JsonEvent = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
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
    /// The next hub-wide sequence number to hand out.
    next_sequence: u64,
    /// The next hub-wide sequence number to make visible: everything before it is written (or
    /// failed) and published.
    next_visible: u64,
    /// Messages numbered and not yet published, by sequence number: waiting for their write, or
    /// written (`Some`) and waiting for an earlier one.
    pending: BTreeMap<u64, Pending>,
    /// The cache of recent published messages, oldest first.
    messages: VecDeque<Arc<TelemetryMessage>>,
    /// Sum of [`TelemetryMessage::retained_bytes`] over `messages`.
    bytes: u64,
    /// The same messages by partition, and where each partition stands.
    partitions: Vec<Partition>,
}

/// A numbered message on its way to the store.
enum Pending {
    Waiting,
    Written(Arc<TelemetryMessage>),
    Failed,
}

/// One partition: its cached messages (a subsequence of the ring's) and where it stands.
#[derive(Default)]
struct Partition {
    /// The next partition sequence number to hand out.
    next: u64,
    /// The partition sequence number after the last published message.
    visible_next: u64,
    messages: VecDeque<Arc<TelemetryMessage>>,
    /// The last published message: (sequence number in the partition, offset, enqueued time).
    last: Option<(u64, u64, DateTime<Utc>)>,
}

/// The Event Hub-compatible view of one partition (the `$management` partition read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The first retained sequence number (the next one when nothing is retained).
    pub begin_sequence_number: u64,
    /// The last sequence number published, if any.
    pub last_sequence_number: Option<u64>,
    /// The last offset published (a hub-wide sequence number), if any.
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
    /// Drops the oldest cached messages until every bound of `retention` holds at `now`.
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

    /// Publishes the written messages at the front of `pending`, in sequence order: into the
    /// cache and the partitions' state. Returns them, for the live feed.
    fn publish(&mut self, retention: &Retention) -> Vec<Arc<TelemetryMessage>> {
        let mut out = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if matches!(entry.get(), Pending::Waiting) {
                break;
            }
            match entry.remove() {
                Pending::Waiting | Pending::Failed => {}
                Pending::Written(m) => {
                    let p = &mut self.partitions[m.partition as usize];
                    p.visible_next = m.partition_sequence + 1;
                    p.last = Some((m.partition_sequence, m.sequence_number, m.enqueued_time));
                    let cost = m.retained_bytes();
                    if retention.count > 0 && cost <= retention.bytes {
                        p.messages.push_back(m.clone());
                        self.messages.push_back(m.clone());
                        self.bytes += cost;
                    }
                    out.push(m);
                }
            }
        }
        self.next_visible = self.pending.keys().next().copied().unwrap_or(self.next_sequence);
        if let Some(last) = out.last() {
            self.evict(retention, last.enqueued_time);
        }
        out
    }
}

/// The telemetry pipeline: numbering, the durable write, publication in order, the cache of
/// recent messages and the live fan-out.
///
/// One short mutex guards the ring: numbering a message, and publishing written ones, are a few
/// pushes and pops (no I/O). Messages are written to the store outside it, concurrently and in
/// batches (the store's group commit); a message becomes visible — to partition readers, the live
/// feed and `recent_events` — only once it and every message numbered before it were written, so
/// readers never see a gap fill in behind them.
pub(crate) struct TelemetryLog {
    /// Bounds of the in-memory cache of recent messages.
    cache: Retention,
    /// Bounds of what the store keeps.
    kept: Retention,
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<TelemetryMessage>>,
    /// On a shared store, what feeds `tx` with every node's messages.
    feed: Arc<SharedFeed>,
    /// How many partitions the messages are spread over.
    partitions: u32,
    /// The count of messages published: changes when one arrives, in any partition.
    arrivals: watch::Sender<u64>,
    store: Arc<dyn HubStore>,
}

/// The live feed on a shared store (decision 0031): the messages every node stored, read back
/// from the store in number order (numbers are handed out in commit order, so nothing fills in
/// behind what was read) by one task at a time, only while someone watches.
struct SharedFeed {
    /// The last sequence number fed (or passed over while nobody watched).
    last: std::sync::atomic::AtomicU64,
    /// The last sequence number known to be stored.
    known: std::sync::atomic::AtomicU64,
    /// Whether a task is reading the store for the feed now.
    running: std::sync::atomic::AtomicBool,
}

/// Messages one read of the feed takes from the store.
const FEED_PAGE: usize = 256;

impl SharedFeed {
    /// Message `sequence_number` and those before it are stored: fed to the watchers of `tx`
    /// (in the background), or passed over when there are none.
    fn advanced(
        self: &Arc<Self>,
        sequence_number: u64,
        tx: &broadcast::Sender<Arc<TelemetryMessage>>,
        store: &Arc<dyn HubStore>,
    ) {
        use std::sync::atomic::Ordering;
        self.known.fetch_max(sequence_number, Ordering::AcqRel);
        if tx.receiver_count() == 0 {
            if !self.running.load(Ordering::Acquire) {
                self.last.fetch_max(sequence_number, Ordering::AcqRel);
            }
            return;
        }
        if self.last.load(Ordering::Acquire) >= sequence_number || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (feed, tx, store) = (self.clone(), tx.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                let target = feed.known.load(Ordering::Acquire);
                let after = feed.last.load(Ordering::Acquire);
                let page = match store.recent_events(None, Some(after), FEED_PAGE).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, "live telemetry not read back; the feed skips ahead");
                        Vec::new()
                    }
                };
                let full = page.len() == FEED_PAGE;
                for msg in page {
                    feed.last.fetch_max(msg.sequence_number, Ordering::AcqRel);
                    // No receivers is not an error: the last watcher left.
                    let _ = tx.send(Arc::new(msg));
                }
                if !full {
                    // Everything stored up to `target` was read (a notice comes after its
                    // commit): what is missing was trimmed already.
                    feed.last.fetch_max(target, Ordering::AcqRel);
                    feed.running.store(false, Ordering::Release);
                    // A message announced while this read ran found the feed busy: read on.
                    let behind = feed.known.load(Ordering::Acquire) > feed.last.load(Ordering::Acquire);
                    if behind && !feed.running.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    return;
                }
            }
        });
    }
}

/// Marks a numbered message failed if its writer stops waiting (its connection went), so that
/// the messages after it are not held back forever.
struct Unsettled<'a> {
    log: &'a TelemetryLog,
    seq: Option<u64>,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if let Some(seq) = self.seq {
            self.log.settle(seq, Pending::Failed);
        }
    }
}

/// Most bytes of recent telemetry cached in memory, whatever the retention on disk.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl TelemetryLog {
    /// A log over `store` keeping `retention` there; the memory cache holds at most
    /// `retention.count` messages and [`CACHE_BYTES`].
    pub(crate) fn new(retention: Retention, partitions: u32, store: Arc<dyn HubStore>) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let partitions = partitions.max(1) as usize;
        Self {
            cache: Retention {
                bytes: retention.bytes.min(CACHE_BYTES),
                ..retention
            },
            kept: retention,
            ring: Mutex::new(Ring {
                next_sequence: 1,
                next_visible: 1,
                pending: BTreeMap::new(),
                messages: VecDeque::with_capacity(retention.count.min(1024)),
                bytes: 0,
                partitions: (0..partitions).map(|_| Partition::default()).collect(),
            }),
            tx,
            feed: Arc::new(SharedFeed {
                last: std::sync::atomic::AtomicU64::new(0),
                known: std::sync::atomic::AtomicU64::new(0),
                running: std::sync::atomic::AtomicBool::new(false),
            }),
            partitions: partitions as u32,
            arrivals: watch::channel(0).0,
            store,
        }
    }

    /// Continues the numbering from what the store holds (after a restart).
    pub(crate) async fn load(&self) -> Result<(), HubStoreError> {
        let bounds = self.store.partition_bounds().await?;
        let mut ring = self.ring.lock();
        for b in &bounds {
            ring.next_sequence = ring.next_sequence.max(b.last_offset + 1);
            if let Some(p) = ring.partitions.get_mut(b.partition as usize) {
                p.next = b.last + 1;
                p.visible_next = b.last + 1;
                p.last = Some((b.last, b.last_offset, b.last_enqueued));
            }
        }
        ring.next_visible = ring.next_sequence;
        // The live feed starts from now, not from what was stored before.
        let stored = ring.next_sequence - 1;
        self.feed.last.store(stored, std::sync::atomic::Ordering::Release);
        self.feed.known.store(stored, std::sync::atomic::Ordering::Release);
        tracing::info!(
            partitions_with_events = bounds.len(),
            next_sequence = ring.next_sequence,
            "retained telemetry loaded"
        );
        Ok(())
    }

    /// How many partitions the messages are spread over.
    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// Numbers `msg` (hub-wide, and in its device's partition), writes it to the store and, once
    /// it and the messages before it are written, publishes it. Returns once it is durable.
    pub(crate) async fn append(&self, mut msg: TelemetryMessage) -> Result<Arc<TelemetryMessage>, HubStoreError> {
        msg.partition = partition_of(&msg.device_id, self.partition_count());
        if self.store.shared() {
            // Numbered by the store among every node's messages (decision 0031).
            let msg = Arc::new(self.store.append_numbered(msg).await?);
            self.advanced(
                msg.partition,
                msg.partition_sequence,
                msg.sequence_number,
                msg.enqueued_time,
            );
            return Ok(msg);
        }
        let msg = {
            let mut ring = self.ring.lock();
            msg.sequence_number = ring.next_sequence;
            ring.next_sequence += 1;
            let p = &mut ring.partitions[msg.partition as usize];
            msg.partition_sequence = p.next;
            p.next += 1;
            ring.pending.insert(msg.sequence_number, Pending::Waiting);
            Arc::new(msg)
        };
        let mut guard = Unsettled {
            log: self,
            seq: Some(msg.sequence_number),
        };
        let written = self.store.append_events(std::slice::from_ref(&msg)).await;
        guard.seq = None;
        match written {
            Ok(()) => {
                self.settle(msg.sequence_number, Pending::Written(msg.clone()));
                Ok(msg)
            }
            Err(e) => {
                self.settle(msg.sequence_number, Pending::Failed);
                Err(e)
            }
        }
    }

    /// Records how a numbered message's write ended and publishes what can be.
    fn settle(&self, seq: u64, outcome: Pending) {
        let published = {
            let mut ring = self.ring.lock();
            ring.pending.insert(seq, outcome);
            ring.publish(&self.cache)
        };
        if !published.is_empty() {
            self.arrivals.send_modify(|n| *n += published.len() as u64);
        }
        for m in published {
            // No receivers is not an error: nobody is watching.
            let _ = self.tx.send(m);
        }
    }

    /// On a shared store: a message of `partition` numbered (`partition_sequence`,
    /// `sequence_number`) and committed by this node or another is readable, and so is
    /// everything numbered before it. Readers are told and the live feed reads it back
    /// ([`SharedFeed`]); nothing is cached (the cache would hold this node's messages only), so
    /// partition reads go to the store.
    pub(crate) fn advanced(
        &self,
        partition: u32,
        partition_sequence: u64,
        sequence_number: u64,
        enqueued: DateTime<Utc>,
    ) {
        {
            let mut ring = self.ring.lock();
            ring.next_visible = ring.next_visible.max(sequence_number + 1);
            ring.next_sequence = ring.next_sequence.max(sequence_number + 1);
            let Some(p) = ring.partitions.get_mut(partition as usize) else {
                return;
            };
            if partition_sequence + 1 > p.visible_next {
                p.visible_next = partition_sequence + 1;
                p.next = p.next.max(p.visible_next);
                p.last = Some((partition_sequence, sequence_number, enqueued));
            }
        }
        // The feed first: a watcher woken by the arrival and subscribing then must not be fed
        // this message, which came before it watched.
        self.feed.advanced(sequence_number, &self.tx, &self.store);
        self.arrivals.send_modify(|n| *n += 1);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<TelemetryMessage>> {
        self.tx.subscribe()
    }

    /// Changes whenever a message is published, in any partition.
    pub(crate) fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    /// Where `partition` stands (`None`: no such partition).
    pub(crate) async fn partition_info(&self, partition: u32) -> Result<Option<PartitionInfo>, HubStoreError> {
        let Some((visible_next, last)) = self
            .ring
            .lock()
            .partitions
            .get(partition as usize)
            .map(|p| (p.visible_next, p.last))
        else {
            return Ok(None);
        };
        let begin = self
            .store
            .find_in_partition(partition, EventStart::Offset(0))
            .await?
            .filter(|b| *b < visible_next);
        Ok(Some(PartitionInfo {
            begin_sequence_number: begin.unwrap_or(visible_next),
            last_sequence_number: last.map(|l| l.0),
            last_offset: last.map(|l| l.1),
            last_enqueued_time: last.map(|l| l.2),
            is_empty: begin.is_none(),
        }))
    }

    /// The partition sequence number a consumer starting at `position` reads first (`None`: no
    /// such partition).
    pub(crate) async fn start_of(&self, partition: u32, position: EventPosition) -> Result<Option<u64>, HubStoreError> {
        let Some(visible_next) = self
            .ring
            .lock()
            .partitions
            .get(partition as usize)
            .map(|p| p.visible_next)
        else {
            return Ok(None);
        };
        let next = |i: i64, inclusive: bool| if inclusive { i } else { i.saturating_add(1) };
        let found = match position {
            EventPosition::Latest => None,
            EventPosition::SequenceNumber {
                sequence_number,
                inclusive,
            } => Some(next(sequence_number, inclusive).max(0) as u64),
            EventPosition::Offset { offset, inclusive } => {
                let from = next(offset, inclusive).max(0) as u64;
                self.store
                    .find_in_partition(partition, EventStart::Offset(from))
                    .await?
            }
            EventPosition::EnqueuedTime { millis, inclusive } => {
                let from = next(millis, inclusive);
                self.store
                    .find_in_partition(partition, EventStart::EnqueuedAt(from))
                    .await?
            }
        };
        Ok(Some(found.map_or(visible_next, |f| f.min(visible_next))))
    }

    /// Up to `limit` published messages of `partition` from sequence number `from` on (from the
    /// oldest retained one when `from` is older), and the sequence number after them: from the
    /// cache when it holds `from`, else from the store.
    pub(crate) async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<TelemetryMessage>>, u64), HubStoreError> {
        let visible_next = {
            let ring = self.ring.lock();
            let Some(p) = ring.partitions.get(partition as usize) else {
                return Ok((Vec::new(), from));
            };
            if from >= p.visible_next {
                return Ok((Vec::new(), from));
            }
            if p.messages.front().is_some_and(|m| m.partition_sequence <= from) {
                let start = p.messages.partition_point(|m| m.partition_sequence < from);
                let out: Vec<_> = p.messages.range(start..).take(limit).cloned().collect();
                let next = out.last().map_or(from, |m| m.partition_sequence + 1);
                return Ok((out, next));
            }
            p.visible_next
        };
        let out: Vec<_> = self
            .store
            .read_partition(partition, from, limit)
            .await?
            .into_iter()
            .filter(|m| m.partition_sequence < visible_next)
            .map(Arc::new)
            .collect();
        let next = out.last().map_or(from, |m| m.partition_sequence + 1);
        Ok((out, next))
    }

    /// Published messages (see [`crate::Hub::recent_events`]), from the store.
    pub(crate) async fn recent(
        &self,
        device_id: Option<&str>,
        after_sequence: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<TelemetryMessage>>, HubStoreError> {
        let visible = self.ring.lock().next_visible;
        Ok(self
            .store
            .recent_events(device_id, after_sequence, limit)
            .await?
            .into_iter()
            .filter(|m| m.sequence_number < visible)
            .map(Arc::new)
            .collect())
    }

    /// Deletes what the store keeps beyond the retention bounds, as of `now`.
    pub(crate) async fn trim(&self, now: DateTime<Utc>) -> Result<u64, HubStoreError> {
        let cutoff = TimeDelta::from_std(self.kept.age)
            .ok()
            .and_then(|age| now.checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.store.trim_events(cutoff, self.kept.bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryHubStore;
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

    fn log(retention: Retention, partitions: u32) -> TelemetryLog {
        TelemetryLog::new(retention, partitions, Arc::new(MemoryHubStore::new()))
    }

    fn seqs(v: &[Arc<TelemetryMessage>]) -> Vec<u64> {
        v.iter().map(|m| m.sequence_number).collect()
    }

    #[tokio::test]
    async fn recent_messages_come_from_the_store_in_order() {
        let log = log(retention(3), 1);
        for i in 0..5 {
            log.append(msg(if i % 2 == 0 { "a" } else { "b" }, b"{}"))
                .await
                .unwrap();
        }
        assert_eq!(seqs(&log.recent(None, None, 10).await.unwrap()), vec![1, 2, 3, 4, 5]);
        assert_eq!(seqs(&log.recent(Some("A"), None, 10).await.unwrap()), vec![1, 3, 5]);
        assert_eq!(seqs(&log.recent(None, Some(3), 1).await.unwrap()), vec![4]);
        assert_eq!(seqs(&log.recent(None, None, 1).await.unwrap()), vec![5]);
        // The cache holds the last three.
        assert_eq!(
            seqs(&log.ring.lock().messages.iter().cloned().collect::<Vec<_>>()),
            vec![3, 4, 5]
        );
    }

    #[tokio::test]
    async fn messages_are_published_in_order_whatever_order_their_writes_end() {
        let log = log(retention(100), 1);
        let mut live = log.subscribe();
        // Three numbered messages whose writes end in the order 3, 1, 2.
        let numbered: Vec<u64> = (0..3)
            .map(|_| {
                let mut ring = log.ring.lock();
                let seq = ring.next_sequence;
                ring.next_sequence += 1;
                ring.pending.insert(seq, Pending::Waiting);
                seq
            })
            .collect();
        let written = |seq: u64| {
            let mut m = msg("a", b"{}");
            m.sequence_number = seq;
            Pending::Written(Arc::new(m))
        };
        log.settle(numbered[2], written(numbered[2]));
        assert!(live.try_recv().is_err(), "3 waits for 1 and 2");
        log.settle(numbered[0], written(numbered[0]));
        assert_eq!(live.try_recv().unwrap().sequence_number, 1);
        assert!(live.try_recv().is_err());
        // A failed write does not hold the others back.
        log.settle(numbered[1], Pending::Failed);
        assert_eq!(live.try_recv().unwrap().sequence_number, 3);
        assert_eq!(log.ring.lock().next_visible, 4);
    }

    #[tokio::test]
    async fn the_cache_is_bounded_in_bytes_and_age() {
        let one = msg("a", &[b'x'; 1000]).retained_bytes();
        let log = log(
            Retention {
                count: 1000,
                bytes: 3 * one,
                age: Duration::from_secs(60),
            },
            1,
        );
        for _ in 0..5 {
            log.append(msg("a", &[b'x'; 1000])).await.unwrap();
        }
        assert_eq!(
            seqs(&log.ring.lock().messages.iter().cloned().collect::<Vec<_>>()),
            vec![3, 4, 5]
        );
        assert_eq!(log.ring.lock().bytes, 3 * one);
        // Larger than the whole budget: stored and broadcast, not cached.
        log.append(msg("a", &[b'x'; 4000])).await.unwrap();
        assert_eq!(log.ring.lock().messages.len(), 3);
        assert_eq!(log.recent(None, None, 10).await.unwrap().len(), 6);
        // A minute later (plus a second), the next message pushes the old ones out of the cache.
        let mut m = msg("b", b"{}");
        m.enqueued_time += TimeDelta::seconds(61);
        let later = m.enqueued_time;
        log.append(m).await.unwrap();
        assert_eq!(
            seqs(&log.ring.lock().messages.iter().cloned().collect::<Vec<_>>()),
            vec![7]
        );
        // The store keeps what is younger than the retention's age: a trim then drops the six
        // older ones, and a day later the last one.
        assert_eq!(log.trim(later).await.unwrap(), 6);
        assert_eq!(seqs(&log.recent(None, None, 10).await.unwrap()), vec![7]);
        assert_eq!(log.trim(later + TimeDelta::days(1)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn partitions_number_their_own_messages_and_find_where_consumers_start() {
        let log = log(retention(100), 4);
        let (a, b) = ("dev-a", "dev-b");
        assert_ne!(partition_of(a, 4), partition_of(b, 4), "the test needs two partitions");
        assert_eq!(
            partition_of("DEV-A", 4),
            partition_of(a, 4),
            "case-insensitive, as device ids"
        );
        let now = msg(a, b"").enqueued_time;
        let arrivals = log.arrivals();
        let mut sent = Vec::new();
        for i in 0..5 {
            let mut m = msg(if i % 2 == 0 { a } else { b }, b"{}");
            m.enqueued_time = now + TimeDelta::seconds(i);
            sent.push(log.append(m).await.unwrap());
        }
        assert!(arrivals.has_changed().unwrap());
        let pa = partition_of(a, 4);
        let of_a: Vec<_> = sent.iter().filter(|m| m.partition == pa).collect();
        assert_eq!(of_a.iter().map(|m| m.partition_sequence).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(of_a.iter().map(|m| m.sequence_number).collect::<Vec<_>>(), [1, 3, 5]);

        let (read, next) = log.read_partition(pa, 0, 2).await.unwrap();
        assert_eq!(seqs(&read), [1, 3]);
        assert_eq!(next, 2);
        assert_eq!(log.read_partition(pa, 3, 10).await.unwrap(), (Vec::new(), 3));
        // Out of the cache: from the store.
        log.ring.lock().partitions[pa as usize].messages.clear();
        assert_eq!(seqs(&log.read_partition(pa, 1, 10).await.unwrap().0), [3, 5]);
        let start = |p| log.start_of(pa, p);
        assert_eq!(start(EventPosition::EARLIEST).await.unwrap(), Some(0));
        assert_eq!(start(EventPosition::Latest).await.unwrap(), Some(3));
        assert_eq!(
            start(EventPosition::Offset {
                offset: 3,
                inclusive: false
            })
            .await
            .unwrap(),
            Some(2)
        );
        assert_eq!(
            start(EventPosition::Offset {
                offset: 3,
                inclusive: true
            })
            .await
            .unwrap(),
            Some(1)
        );
        assert_eq!(
            start(EventPosition::SequenceNumber {
                sequence_number: 1,
                inclusive: false
            })
            .await
            .unwrap(),
            Some(2)
        );
        let t2 = (now + TimeDelta::seconds(2)).timestamp_millis();
        assert_eq!(
            start(EventPosition::EnqueuedTime {
                millis: t2,
                inclusive: true
            })
            .await
            .unwrap(),
            Some(1)
        );
        assert_eq!(
            start(EventPosition::EnqueuedTime {
                millis: t2,
                inclusive: false
            })
            .await
            .unwrap(),
            Some(2)
        );

        let info = log.partition_info(pa).await.unwrap().unwrap();
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
        assert!(log.partition_info(empty).await.unwrap().unwrap().is_empty);
        assert!(log.partition_info(4).await.unwrap().is_none());

        // A new log on the same store continues the numbering.
        let again = TelemetryLog::new(retention(100), 4, log.store.clone());
        again.load().await.unwrap();
        let m = again.append(msg(a, b"{}")).await.unwrap();
        assert_eq!((m.sequence_number, m.partition_sequence), (6, 3));
    }

    #[tokio::test]
    async fn live_feed_is_bounded_in_bytes() {
        // The broadcast's capacity times the largest message stays within the byte budget.
        assert_eq!(BROADCAST_CAPACITY, 256);
        const { assert!(BROADCAST_CAPACITY * twin_limits::D2C_MAX_BYTES <= LIVE_FEED_BYTES) };
        let log = log(retention(0), 1);
        let mut rx = log.subscribe();
        for _ in 0..BROADCAST_CAPACITY + 10 {
            log.append(msg("a", b"{}")).await.unwrap();
        }
        // The slow watcher lost the oldest ten and is told so; the rest are still there.
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(10))));
        assert_eq!(rx.try_recv().unwrap().sequence_number, 11);
        // A cache of 0 keeps nothing in memory.
        assert!(log.ring.lock().messages.is_empty());
    }

    #[test]
    fn stored_events_read_back_whole() {
        let mut m = msg("dev", &[0, 255, 10]);
        m.sequence_number = 9;
        m.partition = 2;
        m.partition_sequence = 4;
        m.enqueued_time += chrono::Duration::nanoseconds(123_456_789);
        let stored = encode_event(&m);
        assert_eq!(decode_event(&stored).unwrap(), m);
        // Binary: the body as it is, not base64 inside JSON.
        assert!(stored.len() < 200, "{} bytes", stored.len());
        assert!(decode_event(b"{").is_err());
        assert!(decode_event(&[BINARY_V1, 0xff]).is_err());
        assert!(decode_event(b"").is_err());
        // What earlier builds stored: JSON with a base64 body.
        let json = serde_json::json!({
            "sequenceNumber": 9, "partition": 2, "partitionSequence": 4, "deviceId": "dev",
            "enqueuedTime": m.enqueued_time, "properties": m.properties,
            "systemProperties": m.system_properties, "body": "AP8K",
        });
        assert_eq!(decode_event(json.to_string().as_bytes()).unwrap(), m);
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
