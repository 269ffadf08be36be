//! Cloud-to-device messages as IoT Hub keeps them: a durable per-device queue, delivery under a
//! lock token, completion by the device, expiry, and the feedback the service asked for
//! (`iothub-ack`), kept in a hub-wide durable feedback queue that the service reads in batches.
//!
//! A message's life (Azure's "cloud-to-device message life cycle"): *enqueued* when the service
//! sends it (written to the store before the send is acknowledged); *invisible* once delivered to
//! the device's session under a fresh lock token; then *completed* (MQTT PUBACK, AMQP accepted),
//! *rejected* (AMQP rejected) or *abandoned* (AMQP released/modified), which puts it back at the
//! head of the queue; a connection that ends with messages unsettled puts them back too. A
//! message abandoned [`C2D_MAX_DELIVERIES`] times, or whose time to live passes while it waits,
//! is dead-lettered.
//! Each final outcome removes the message from the store and, if the sender asked for it, adds a
//! feedback record — in one store transaction, so a crash leaves either the message or its
//! feedback, never both or neither.
//!
//! This module holds the data and the pure queue operations; `session.rs` delivers to the
//! device's connection and `lib.rs` persists.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Abandons of one cloud-to-device message before IoT Hub gives up on it (its default
/// `maxDeliveryCount`; only an explicit abandon counts, as in Azure).
pub const C2D_MAX_DELIVERIES: u32 = 10;

/// Cloud-to-device messages kept per device, queued and delivered-but-unsettled together
/// (Azure's per-device limit).
pub const C2D_QUEUE_LIMIT: usize = 50;

/// A message's time to live when the sender sets no expiry (Azure's default, one hour).
pub const DEFAULT_C2D_TTL: Duration = Duration::from_secs(3600);

/// Longest time to live a sender may ask for (Azure's maximum, two days); later expiries are cut
/// to it.
pub const MAX_C2D_TTL: Duration = Duration::from_secs(48 * 3600);

/// How long a message a device received over HTTPS stays locked for it to complete, reject or
/// abandon (Azure's lock timeout, one minute, which cannot be changed). When it runs out the
/// message goes back to the queue without counting as a delivery, as Azure documents.
pub const C2D_LOCK: Duration = Duration::from_secs(60);

/// How long feedback waits to be read before it is dropped (Azure's feedback queue default
/// time to live, one hour).
pub const FEEDBACK_TTL: Duration = Duration::from_secs(3600);

/// How long a batch of feedback handed to the service stays locked before it can be read again
/// (Azure's lock duration, one minute).
pub const FEEDBACK_LOCK: Duration = Duration::from_secs(60);

/// Most feedback records in one batch.
pub const FEEDBACK_BATCH: usize = 64;

/// Most feedback records kept unread. Past it the oldest are dropped (with a warning): a service
/// that asks for feedback and never reads it must not grow the store without bound.
pub const FEEDBACK_LIMIT: usize = 100_000;

/// Which outcomes of a message its sender wants feedback on (`iothub-ack`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// No feedback (the default).
    #[default]
    None,
    /// Feedback when the device completes it.
    Positive,
    /// Feedback when it is rejected, expires or is delivered too often.
    Negative,
    /// Both.
    Full,
}

impl Ack {
    /// The `iothub-ack` property value, case-insensitive; `None` for anything else.
    pub fn parse(value: &str) -> Option<Ack> {
        match value.to_ascii_lowercase().as_str() {
            "none" => Some(Ack::None),
            "positive" => Some(Ack::Positive),
            "negative" => Some(Ack::Negative),
            "full" => Some(Ack::Full),
            _ => None,
        }
    }

    /// Whether the sender asked for feedback on `status`.
    pub fn wants(self, status: FeedbackStatus) -> bool {
        match self {
            Ack::None => false,
            Ack::Full => true,
            Ack::Positive => status == FeedbackStatus::Success,
            Ack::Negative => status != FeedbackStatus::Success,
        }
    }
}

/// The final outcome of a cloud-to-device message, as feedback names it (`statusCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedbackStatus {
    /// The device completed it.
    Success,
    /// Its time to live passed before the device settled it.
    Expired,
    /// It was abandoned [`C2D_MAX_DELIVERIES`] times.
    DeliveryCountExceeded,
    /// The device rejected it.
    Rejected,
    /// The service purged the device's queue, or deleted the device.
    Purged,
}

impl FeedbackStatus {
    /// The `description` IoT Hub gives with the status.
    pub fn description(self) -> &'static str {
        match self {
            FeedbackStatus::Success => "Success",
            FeedbackStatus::Expired => "Message expired",
            FeedbackStatus::DeliveryCountExceeded => "Message delivery count exceeded",
            FeedbackStatus::Rejected => "Message rejected",
            FeedbackStatus::Purged => "Message purged",
        }
    }
}

/// How a device settled a message it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum C2dOutcome {
    /// Processed: removed from the queue.
    Complete,
    /// Refused for good: dead-lettered.
    Reject,
    /// Not processed now: back at the head of the queue for another delivery, counted against
    /// [`C2D_MAX_DELIVERIES`].
    Abandon,
    /// Never reached the device (its link ended first): back at the head of the queue, not
    /// counted, as when IoT Hub's lock runs out.
    Release,
}

/// What settling a delivered message with `outcome` does to it: it leaves the queue with a final
/// status (`Some`), or goes back to it (`None`), an abandon counted in `record` first.
pub(crate) fn dispose(record: &mut C2dRecord, outcome: C2dOutcome) -> Option<FeedbackStatus> {
    match outcome {
        C2dOutcome::Complete => Some(FeedbackStatus::Success),
        C2dOutcome::Reject => Some(FeedbackStatus::Rejected),
        C2dOutcome::Release => None,
        C2dOutcome::Abandon => {
            record.delivery_count += 1;
            (record.delivery_count >= C2D_MAX_DELIVERIES).then_some(FeedbackStatus::DeliveryCountExceeded)
        }
    }
}

/// One cloud-to-device message as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct C2dRecord {
    /// Hub-wide enqueue order; the store's key.
    pub seq: u64,
    /// The device it is for, as registered.
    pub device_id: String,
    /// The device's generation when it was sent (feedback names it).
    pub generation_id: String,
    /// Body.
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
    /// Properties as the device receives them: system ones by their `$.` names (`$.mid` and
    /// `$.to` first), then `iothub-ack` if asked, then application properties.
    pub properties: Vec<(String, String)>,
    /// When the hub accepted it.
    pub enqueued_at: DateTime<Utc>,
    /// When it expires unsettled.
    pub expires_at: DateTime<Utc>,
    /// The feedback its sender asked for.
    pub ack: Ack,
    /// Abandons so far. Counted in memory: after a restart the count starts again from what was
    /// stored when the message was sent.
    pub delivery_count: u32,
}

impl C2dRecord {
    /// Its `$.mid`.
    pub fn message_id(&self) -> &str {
        self.properties
            .iter()
            .find(|(k, _)| k == "$.mid")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// One feedback record, as the store keeps it; [`FeedbackRecord::to_wire`] is what the service
/// reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRecord {
    /// Hub-wide order; the store's key.
    pub seq: u64,
    /// The message's `$.mid`.
    pub original_message_id: String,
    /// Its device.
    pub device_id: String,
    /// Its device's generation.
    pub device_generation_id: String,
    /// The outcome.
    pub status: FeedbackStatus,
    /// When the outcome happened.
    pub enqueued_at: DateTime<Utc>,
}

impl FeedbackRecord {
    /// The record as IoT Hub sends it in a feedback batch (a JSON array of these).
    pub fn to_wire(&self) -> serde_json::Value {
        serde_json::json!({
            "originalMessageId": self.original_message_id,
            "deviceId": self.device_id,
            "deviceGenerationId": self.device_generation_id,
            "statusCode": self.status,
            "description": self.status.description(),
            "enqueuedTimeUtc": dps_proto::timefmt::format_record(&self.enqueued_at),
        })
    }
}

/// Changes to the durable queues that must be written together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueChange {
    /// Messages to store (new ones, by `seq`).
    pub put_c2d: Vec<C2dRecord>,
    /// Messages settled (by `seq`).
    pub delete_c2d: Vec<u64>,
    /// Feedback to store.
    pub put_feedback: Vec<FeedbackRecord>,
    /// Feedback read and completed (by `seq`).
    pub delete_feedback: Vec<u64>,
    /// File upload notifications to store.
    pub put_file_notifications: Vec<crate::file_upload::FileNotification>,
    /// File upload notifications read and completed, or dropped (by `seq`).
    pub delete_file_notifications: Vec<u64>,
}

impl QueueChange {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put_c2d.is_empty()
            && self.delete_c2d.is_empty()
            && self.put_feedback.is_empty()
            && self.delete_feedback.is_empty()
            && self.put_file_notifications.is_empty()
            && self.delete_file_notifications.is_empty()
    }
}

/// Messages that reached a final outcome while a device's state was locked: what the hub must
/// still write and turn into feedback once it lets go of the lock.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    pub(crate) done: Vec<(C2dRecord, FeedbackStatus)>,
}

impl Settled {
    pub(crate) fn push(&mut self, record: C2dRecord, status: FeedbackStatus) {
        tracing::debug!(device = %record.device_id, message_id = %record.message_id(), ?status, "cloud-to-device message settled");
        self.done.push((record, status));
    }
}

/// A message delivered and not settled yet.
#[derive(Debug)]
pub(crate) struct Locked {
    pub(crate) record: C2dRecord,
    pub(crate) lock_token: String,
    /// When the lock runs out: `Some` for a message received over HTTPS (no connection ends to
    /// give it back), `None` for one delivered to a session (it goes back when the session ends).
    pub(crate) until: Option<DateTime<Utc>>,
}

/// One device's messages: waiting in order, and delivered under a lock.
#[derive(Debug, Default)]
pub(crate) struct DeviceQueue {
    pub(crate) pending: VecDeque<C2dRecord>,
    pub(crate) locked: Vec<Locked>,
    /// Sends accepted against the limit whose write has not finished yet.
    pub(crate) reserved: usize,
    /// Keys of the messages that left the queue last (settled, expired, purged): on a shared
    /// store their deletion may not be committed when the stored queue is next read, and
    /// [`DeviceQueue::merge`] must not take them back.
    gone: VecDeque<u64>,
}

/// How many keys of departed messages a queue remembers: far more than can be settled between
/// two reads of the stored queue (a queue holds at most [`C2D_QUEUE_LIMIT`]).
const GONE_REMEMBERED: usize = 2 * C2D_QUEUE_LIMIT;

impl DeviceQueue {
    /// Messages held against the per-device limit.
    pub(crate) fn len(&self) -> usize {
        self.pending.len() + self.locked.len() + self.reserved
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts a message in enqueue order (a restart loads them in order; an abandoned one goes
    /// back before the ones that came after it).
    pub(crate) fn insert(&mut self, record: C2dRecord) {
        let at = self.pending.partition_point(|r| r.seq < record.seq);
        self.pending.insert(at, record);
    }

    /// Takes `record` out of the queue for good, as `status`.
    fn depart(&mut self, record: C2dRecord, status: FeedbackStatus, settled: &mut Settled) {
        if self.gone.len() == GONE_REMEMBERED {
            self.gone.pop_front();
        }
        self.gone.push_back(record.seq);
        settled.push(record, status);
    }

    /// Adds the messages not held yet (by key): a message another node stored may arrive both
    /// in the stored queue and on its own (decision 0031).
    pub(crate) fn merge(&mut self, records: Vec<C2dRecord>) {
        for r in records {
            let held = self.pending.iter().any(|p| p.seq == r.seq)
                || self.locked.iter().any(|l| l.record.seq == r.seq)
                || self.gone.contains(&r.seq);
            if !held {
                self.insert(r);
            }
        }
    }

    /// Makes the waiting messages the stored ones that are not delivered and locked here: the
    /// stored queue is the truth on a shared store (messages settled or purged through another
    /// node are gone from it).
    pub(crate) fn replace_pending(&mut self, stored: Vec<C2dRecord>) {
        self.pending.clear();
        self.merge(stored);
    }

    /// Drops what a node holds of a device that is no longer connected to it: on a shared
    /// store the device's next node reads the stored queue (messages received over HTTPS keep
    /// their locks).
    pub(crate) fn forget_waiting(&mut self) {
        self.pending.clear();
        self.locked.retain(|l| l.until.is_some());
    }

    /// Every message delivered to a session goes back to the queue (the session ended); those
    /// received over HTTPS keep their locks.
    pub(crate) fn unlock_all(&mut self) {
        let (polled, delivered): (Vec<_>, Vec<_>) = std::mem::take(&mut self.locked)
            .into_iter()
            .partition(|l| l.until.is_some());
        self.locked = polled;
        for l in delivered {
            self.insert(l.record);
        }
    }

    /// Messages whose lock ran out go back to the queue, uncounted; whether any did.
    pub(crate) fn unlock_expired(&mut self, now: DateTime<Utc>) -> bool {
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.locked)
            .into_iter()
            .partition(|l| l.until.is_some_and(|t| t <= now));
        self.locked = kept;
        let any = !expired.is_empty();
        for l in expired {
            tracing::debug!(device = %l.record.device_id, message_id = %l.record.message_id(), "lock of a received cloud-to-device message ran out");
            self.insert(l.record);
        }
        any
    }

    /// Settles the message delivered under `lock_token`; `false` if no message holds it (settled
    /// already, or its session ended and it went back to the queue).
    pub(crate) fn settle(&mut self, lock_token: &str, outcome: C2dOutcome, settled: &mut Settled) -> bool {
        let Some(at) = self.locked.iter().position(|l| l.lock_token == lock_token) else {
            return false;
        };
        let mut record = self.locked.swap_remove(at).record;
        match dispose(&mut record, outcome) {
            Some(status) => self.depart(record, status, settled),
            None => self.insert(record),
        }
        true
    }

    /// Takes the next message to deliver, dead-lettering on the way the ones that expired.
    pub(crate) fn next(&mut self, now: DateTime<Utc>, settled: &mut Settled) -> Option<C2dRecord> {
        while let Some(r) = self.pending.pop_front() {
            if r.expires_at > now {
                return Some(r);
            }
            self.depart(r, FeedbackStatus::Expired, settled);
        }
        None
    }

    /// Dead-letters the waiting messages whose time to live passed.
    pub(crate) fn expire(&mut self, now: DateTime<Utc>, settled: &mut Settled) {
        let (keep, expired): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|r| r.expires_at > now);
        self.pending = keep;
        for r in expired {
            self.depart(r, FeedbackStatus::Expired, settled);
        }
    }

    /// Removes every message (purge): waiting and delivered alike.
    pub(crate) fn purge(&mut self, settled: &mut Settled) -> usize {
        let locked = std::mem::take(&mut self.locked).into_iter().map(|l| l.record);
        let all: Vec<_> = std::mem::take(&mut self.pending).into_iter().chain(locked).collect();
        let n = all.len();
        for r in all {
            self.depart(r, FeedbackStatus::Purged, settled);
        }
        n
    }
}

/// A batch of feedback handed to the service, locked until it completes or abandons it
/// ([`crate::Hub::complete_feedback`], [`crate::Hub::abandon_feedback`]).
pub type FeedbackBatch = crate::outbox::Batch<FeedbackRecord>;

impl FeedbackBatch {
    /// The message body: a JSON array of the records in IoT Hub's shape.
    pub fn body(&self) -> Bytes {
        let items: Vec<_> = self.records.iter().map(FeedbackRecord::to_wire).collect();
        Bytes::from(serde_json::Value::Array(items).to_string())
    }
}

impl crate::outbox::Outgoing for FeedbackRecord {
    const WHAT: &'static str = "feedback";
    const KIND: crate::outbox::OutboxKind = crate::outbox::OutboxKind::Feedback;

    fn seq(&self) -> u64 {
        self.seq
    }

    fn enqueued_at(&self) -> DateTime<Utc> {
        self.enqueued_at
    }

    fn deleted(seqs: Vec<u64>) -> QueueChange {
        QueueChange {
            delete_feedback: seqs,
            ..QueueChange::default()
        }
    }
}

/// Serde for a body kept as base64 inside the store's JSON document.
mod base64_bytes {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn rec(seq: u64, expires: i64) -> C2dRecord {
        C2dRecord {
            seq,
            device_id: "d".into(),
            generation_id: "g".into(),
            body: Bytes::from_static(b"x"),
            properties: vec![("$.mid".into(), format!("m{seq}"))],
            enqueued_at: at(0),
            expires_at: at(expires),
            ack: Ack::Full,
            delivery_count: 0,
        }
    }

    /// On a shared store the stored queue is read again while a settlement's deletion may not
    /// be committed yet: a message that left the queue is not taken back, the others are merged
    /// once each, in key order.
    #[test]
    fn merging_the_stored_queue_takes_back_nothing_that_left() {
        let mut q = DeviceQueue::default();
        let mut settled = Settled::default();
        q.merge(vec![rec(1, 60), rec(2, 60)]);
        let first = q.next(at(0), &mut settled).unwrap();
        q.locked.push(Locked {
            record: first,
            lock_token: "t1".into(),
            until: None,
        });
        assert!(q.settle("t1", C2dOutcome::Complete, &mut settled));
        q.replace_pending(vec![rec(1, 60), rec(3, 60), rec(2, 60)]);
        let seqs: Vec<u64> = q.pending.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [2, 3]);
        q.merge(vec![rec(2, 60), rec(3, 60)]);
        assert_eq!(q.len(), 2);
        // A device that left: its waiting messages are forgotten, HTTPS locks kept.
        let polled = q.next(at(0), &mut settled).unwrap();
        q.locked.push(Locked {
            record: polled,
            lock_token: "t2".into(),
            until: Some(at(60)),
        });
        q.forget_waiting();
        assert_eq!((q.pending.len(), q.locked.len()), (0, 1));
    }

    #[test]
    fn ack_asks_for_the_outcomes_azure_names() {
        assert!(Ack::Positive.wants(FeedbackStatus::Success));
        assert!(!Ack::Positive.wants(FeedbackStatus::Rejected));
        assert!(Ack::Negative.wants(FeedbackStatus::Expired));
        assert!(!Ack::Negative.wants(FeedbackStatus::Success));
        assert!(Ack::Full.wants(FeedbackStatus::Purged));
        assert!(!Ack::None.wants(FeedbackStatus::Success));
        assert_eq!(Ack::parse("FULL"), Some(Ack::Full));
        assert_eq!(Ack::parse("sometimes"), None);
    }

    #[test]
    fn abandoned_messages_go_back_in_enqueue_order() {
        let mut q = DeviceQueue::default();
        let mut s = Settled::default();
        for seq in [1, 2, 3] {
            q.insert(rec(seq, 100));
        }
        let first = q.next(at(1), &mut s).unwrap();
        q.locked.push(Locked {
            until: None,
            record: first,
            lock_token: "t1".into(),
        });
        assert!(q.settle("t1", C2dOutcome::Abandon, &mut s));
        assert!(!q.settle("t1", C2dOutcome::Complete, &mut s), "a lock settles once");
        let order: Vec<u64> = q.pending.iter().map(|r| r.seq).collect();
        assert_eq!(order, [1, 2, 3]);
        assert!(s.done.is_empty());
    }

    #[test]
    fn received_messages_keep_their_lock_past_a_session_and_return_uncounted_when_it_runs_out() {
        let mut q = DeviceQueue::default();
        let mut s = Settled::default();
        for seq in [1, 2] {
            q.insert(rec(seq, 100));
        }
        let polled = q.next(at(1), &mut s).unwrap();
        q.locked.push(Locked {
            until: Some(at(61)),
            record: polled,
            lock_token: "http".into(),
        });
        let delivered = q.next(at(1), &mut s).unwrap();
        q.locked.push(Locked {
            until: None,
            record: delivered,
            lock_token: "mqtt".into(),
        });
        // The session ends: only its message goes back.
        q.unlock_all();
        assert_eq!(q.pending.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
        assert!(!q.unlock_expired(at(60)));
        assert!(q.unlock_expired(at(61)));
        assert_eq!(q.pending.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(q.pending[0].delivery_count, 0, "a lock running out is not a delivery");
        assert!(!q.settle("http", C2dOutcome::Complete, &mut s), "the lock is lost");
        assert!(s.done.is_empty());
    }

    #[test]
    fn expired_and_too_often_abandoned_messages_are_dead_lettered_not_delivered() {
        let mut q = DeviceQueue::default();
        let mut s = Settled::default();
        q.insert(rec(1, 5));
        q.insert(rec(2, 100));
        assert_eq!(q.next(at(10), &mut s).map(|r| r.seq), Some(2));
        let mut tired = rec(3, 100);
        tired.delivery_count = C2D_MAX_DELIVERIES - 1;
        q.locked.push(Locked {
            until: None,
            record: tired,
            lock_token: "t".into(),
        });
        assert!(q.settle("t", C2dOutcome::Abandon, &mut s));
        assert!(q.pending.is_empty());
        let statuses: Vec<_> = s.done.iter().map(|(r, st)| (r.seq, *st)).collect();
        assert_eq!(
            statuses,
            [(1, FeedbackStatus::Expired), (3, FeedbackStatus::DeliveryCountExceeded)]
        );
    }

    #[test]
    fn feedback_batches_are_json_arrays_of_records() {
        let b = FeedbackBatch {
            lock_token: "t".into(),
            records: vec![FeedbackRecord {
                seq: 1,
                original_message_id: "m1".into(),
                device_id: "d".into(),
                device_generation_id: "g".into(),
                status: FeedbackStatus::Success,
                enqueued_at: at(0),
            }],
        };
        let v: serde_json::Value = serde_json::from_slice(&b.body()).unwrap();
        assert_eq!(v[0]["statusCode"], "Success");
        assert_eq!(v[0]["originalMessageId"], "m1");
    }
}
