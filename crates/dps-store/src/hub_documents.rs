//! What an embedded hub's registry keeps, independent of the database that keeps it: the SQL
//! (written so that SQLite and PostgreSQL both accept it, SQLite's `?N` placeholders, every
//! statement naming its hub as `?1`: hub migration 9, decision 0029), the writes ([`DeviceOp`]),
//! each a list of statements ([`DeviceOp::statements`]), and the [`dps_hub::store::HubStore`]
//! contract implemented once over a backend's primitives ([`HubDocuments`]).

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use dps_hub::store::{EventStart, HubStoreError, OutboxKind, PartitionBounds, TelemetryMessage};
use serde::de::DeserializeOwned;

/// A statement argument: an integer (hub numbers, sequence numbers, limits) or text (keys,
/// documents, tag paths and values). Writes borrow from their [`DeviceOp`]; reads own theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg<'a> {
    Int(i64),
    Text(Cow<'a, str>),
    /// Text or SQL NULL (an etag, a group key).
    OptText(Option<&'a str>),
    /// A blob (an encoded telemetry message).
    Bytes(&'a [u8]),
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(s: &'a String) -> Self {
        Arg::Text(Cow::Borrowed(s))
    }
}

impl From<String> for Arg<'static> {
    fn from(s: String) -> Self {
        Arg::Text(Cow::Owned(s))
    }
}

impl From<i64> for Arg<'static> {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}

impl From<&i64> for Arg<'static> {
    fn from(n: &i64) -> Self {
        Arg::Int(*n)
    }
}

/// A statement and its arguments.
pub(crate) type Statement<'a> = (&'static str, Vec<Arg<'a>>);

pub(crate) const TABLE: &str = "devices";

pub(crate) const UPSERT: &str = "INSERT INTO devices (hub, id, doc) VALUES (?1, ?2, ?3) \
     ON CONFLICT (hub, id) DO UPDATE SET doc = excluded.doc";
pub(crate) const DELETE: &str = "DELETE FROM devices WHERE hub = ?1 AND id = ?2";

/// What a conditional write expects the stored document to be (decision 0031): absent, or the
/// one with these etags (the identity's, the twin's; `DeviceRecord::etags`). PostgreSQL only:
/// the statements raise SQLSTATE [`CONFLICT_STATE`] when the expectation fails, so that the
/// write fails alone and its batch is retried without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expected {
    Absent,
    Etags(String, String),
}

impl Expected {
    /// What a writer that read `previous` expects.
    pub(crate) fn of(previous: Option<&dps_hub::store::DeviceRecord>) -> Self {
        match previous.map(|r| r.etags()) {
            None => Expected::Absent,
            Some((etag, twin)) => Expected::Etags(etag.to_string(), twin.to_string()),
        }
    }
}

/// The SQLSTATE of a conditional write whose expectation failed (`dps_expect_one`, PostgreSQL
/// hub migration 4).
pub(crate) const CONFLICT_STATE: &str = "DP001";
const INSERT_IF_ABSENT: &str = "WITH w AS (INSERT INTO devices (hub, id, doc) VALUES (?1, ?2, ?3) \
     ON CONFLICT (hub, id) DO NOTHING RETURNING 1) SELECT dps_expect_one(count(*)) FROM w";
const UPDATE_IF_ETAGS: &str = "WITH w AS (UPDATE devices SET doc = ?3 WHERE hub = ?1 AND id = ?2 \
     AND doc::jsonb ->> 'etag' = ?4 AND doc::jsonb #>> '{twin,etag}' = ?5 RETURNING 1) \
     SELECT dps_expect_one(count(*)) FROM w";
const INSERT_MODULE_IF_ABSENT: &str = "WITH w AS (INSERT INTO modules (hub, id, device, doc) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (hub, id) DO NOTHING RETURNING 1) \
     SELECT dps_expect_one(count(*)) FROM w";
const UPDATE_MODULE_IF_ETAGS: &str = "WITH w AS (UPDATE modules SET doc = ?3 WHERE hub = ?1 AND id = ?2 \
     AND doc::jsonb ->> 'etag' = ?4 AND doc::jsonb #>> '{twin,etag}' = ?5 RETURNING 1) \
     SELECT dps_expect_one(count(*)) FROM w";
pub(crate) const DELETE_DEVICE_C2D: &str = "DELETE FROM c2d WHERE hub = ?1 AND device = ?2";
pub(crate) const DELETE_DEVICE_MODULES: &str = "DELETE FROM modules WHERE hub = ?1 AND device = ?2";
pub(crate) const DELETE_DEVICE_TAGS: &str = "DELETE FROM twin_tags WHERE hub = ?1 AND device = ?2";
pub(crate) const PUT_TAG: &str =
    "INSERT INTO twin_tags (hub, path, value, device) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";
pub(crate) const FIRST_BY_TAG: &str =
    "SELECT d.id, d.doc FROM twin_tags t JOIN devices d ON d.hub = t.hub AND d.id = t.device \
     WHERE t.hub = ?1 AND t.path = ?3 AND t.value = ?4 ORDER BY t.device LIMIT ?2";
pub(crate) const NEXT_BY_TAG: &str =
    "SELECT d.id, d.doc FROM twin_tags t JOIN devices d ON d.hub = t.hub AND d.id = t.device \
     WHERE t.hub = ?1 AND t.path = ?3 AND t.value = ?4 AND t.device > ?5 ORDER BY t.device LIMIT ?2";
pub(crate) const PUT_MODULE: &str = "INSERT INTO modules (hub, id, device, doc) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (hub, id) DO UPDATE SET doc = excluded.doc";
pub(crate) const DELETE_MODULE: &str = "DELETE FROM modules WHERE hub = ?1 AND id = ?2";
pub(crate) const GET_MODULE: &str = "SELECT doc FROM modules WHERE hub = ?1 AND id = ?2";
pub(crate) const DEVICE_MODULES: &str = "SELECT id, doc FROM modules WHERE hub = ?1 AND device = ?2 ORDER BY id";
pub(crate) const PUT_JOB: &str = "INSERT INTO jobs (hub, id, doc) VALUES (?1, ?2, ?3) \
     ON CONFLICT (hub, id) DO UPDATE SET doc = excluded.doc";
pub(crate) const DELETE_JOB: &str = "DELETE FROM jobs WHERE hub = ?1 AND id = ?2";
pub(crate) const DELETE_JOB_DEVICES: &str = "DELETE FROM device_jobs WHERE hub = ?1 AND job = ?2";
pub(crate) const ALL_JOBS: &str = "SELECT id, doc FROM jobs WHERE hub = ?1 ORDER BY id";
pub(crate) const GET_JOB: &str = "SELECT doc FROM jobs WHERE hub = ?1 AND id = ?2";
pub(crate) const PUT_DEVICE_JOB: &str = "INSERT INTO device_jobs (hub, id, job, doc) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (hub, id) DO UPDATE SET job = excluded.job, doc = excluded.doc";
pub(crate) const FIRST_DEVICE_JOBS: &str = "SELECT id, doc FROM device_jobs WHERE hub = ?1 ORDER BY id LIMIT ?2";
pub(crate) const NEXT_DEVICE_JOBS: &str =
    "SELECT id, doc FROM device_jobs WHERE hub = ?1 AND id > ?3 ORDER BY id LIMIT ?2";
pub(crate) const FIRST_MODULES: &str = "SELECT id, doc FROM modules WHERE hub = ?1 ORDER BY id LIMIT ?2";
pub(crate) const NEXT_MODULES: &str = "SELECT id, doc FROM modules WHERE hub = ?1 AND id > ?3 ORDER BY id LIMIT ?2";
pub(crate) const PUT_C2D: &str = "INSERT INTO c2d (hub, seq, device, doc) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (hub, seq) DO UPDATE SET device = excluded.device, doc = excluded.doc";
pub(crate) const DELETE_C2D: &str = "DELETE FROM c2d WHERE hub = ?1 AND seq = ?2";
pub(crate) const PUT_FEEDBACK: &str = "INSERT INTO feedback (hub, seq, doc) VALUES (?1, ?2, ?3) \
     ON CONFLICT (hub, seq) DO UPDATE SET doc = excluded.doc";
pub(crate) const DELETE_FEEDBACK: &str = "DELETE FROM feedback WHERE hub = ?1 AND seq = ?2";
/// Keys as text: the shared document reader takes (text key, doc) rows.
pub(crate) const ALL_C2D: &str = "SELECT CAST(seq AS TEXT), doc FROM c2d WHERE hub = ?1 ORDER BY seq";
pub(crate) const DEVICE_C2D: &str =
    "SELECT CAST(seq AS TEXT), doc FROM c2d WHERE hub = ?1 AND device = ?2 ORDER BY seq";
pub(crate) const ALL_FEEDBACK: &str = "SELECT CAST(seq AS TEXT), doc FROM feedback WHERE hub = ?1 ORDER BY seq";
pub(crate) const PUT_NOTIFICATION: &str = "INSERT INTO file_notifications (hub, seq, doc) VALUES (?1, ?2, ?3) \
     ON CONFLICT (hub, seq) DO UPDATE SET doc = excluded.doc";
pub(crate) const DELETE_NOTIFICATION: &str = "DELETE FROM file_notifications WHERE hub = ?1 AND seq = ?2";
pub(crate) const ALL_NOTIFICATIONS: &str =
    "SELECT CAST(seq AS TEXT), doc FROM file_notifications WHERE hub = ?1 ORDER BY seq";
pub(crate) const PUT_GROUP: &str = "INSERT INTO consumer_groups (hub, name, doc) VALUES (?1, ?2, ?3) \
     ON CONFLICT (hub, name) DO UPDATE SET doc = excluded.doc";
pub(crate) const DELETE_GROUP: &str = "DELETE FROM consumer_groups WHERE hub = ?1 AND name = ?2";
pub(crate) const ALL_GROUPS: &str = "SELECT name, doc FROM consumer_groups WHERE hub = ?1 ORDER BY name";
pub(crate) const GET: &str = "SELECT doc FROM devices WHERE hub = ?1 AND id = ?2";
pub(crate) const FIRST_PAGE: &str = "SELECT id, doc FROM devices WHERE hub = ?1 ORDER BY id LIMIT ?2";
pub(crate) const NEXT_PAGE: &str = "SELECT id, doc FROM devices WHERE hub = ?1 AND id > ?3 ORDER BY id LIMIT ?2";
/// From the counters the schema's triggers keep (hub migration 2), not from the documents: a
/// scan of every device's JSON took seconds at a million devices and read the whole file.
/// Cast: PostgreSQL sums integers as `numeric`.
pub(crate) const COUNT: &str = "SELECT CAST(COALESCE(SUM(devices), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN status = 'enabled' THEN devices END), 0) AS BIGINT) \
     FROM device_counts WHERE hub = ?1";

/// The stored cloud-to-device messages of a hub (an index range of `c2d_device`).
pub(crate) const COUNT_C2D: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM c2d WHERE hub = ?1";

/// One write to the devices table. The document arrives serialised: JSON encoding runs on the
/// callers' threads, in parallel, keeping the single writer's critical path to SQL only.
pub(crate) enum DeviceOp {
    /// Insert or replace the document of `key`, and its string tags (the index's rows); with
    /// `expect`, only if the stored document is still the one expected.
    Put {
        key: String,
        doc: String,
        tags: Vec<(String, String)>,
        expect: Option<Expected>,
    },
    /// Remove `key` (absent is fine), its modules and its cloud-to-device messages.
    Delete { key: String },
    /// Insert or replace the module `key` of the device `device`; with `expect`, only if the
    /// stored document is still the one expected.
    PutModule {
        key: String,
        device: String,
        doc: String,
        expect: Option<Expected>,
    },
    /// Remove the module `key` (absent is fine).
    DeleteModule { key: String },
    /// Insert or replace the job `key`.
    PutJob { key: String, doc: String },
    /// Remove the job `key` and its device rows.
    DeleteJob { key: String },
    /// Insert or replace device rows of jobs: (key, job, doc).
    PutDeviceJobs(Vec<(String, String, String)>),
    /// Queue changes, encoded: messages (seq, device key, doc) and feedback (seq, doc) to put,
    /// keys to delete.
    Queues {
        put_c2d: Vec<(i64, String, String)>,
        delete_c2d: Vec<i64>,
        put_feedback: Vec<(i64, String)>,
        delete_feedback: Vec<i64>,
        put_notifications: Vec<(i64, String)>,
        delete_notifications: Vec<i64>,
    },
    /// Insert or replace the consumer group `key`.
    PutGroup { key: String, doc: String },
    /// Remove the consumer group `key` (absent is fine).
    DeleteGroup { key: String },
}

impl DeviceOp {
    /// The statements that make this write for hub `hub`, in order, in one transaction.
    pub(crate) fn statements(&self, hub: i64) -> Vec<Statement<'_>> {
        let h = || Arg::Int(hub);
        let mut out: Vec<Statement<'_>> = Vec::new();
        match self {
            DeviceOp::Put { key, doc, tags, expect } => {
                out.push(match expect {
                    None => (UPSERT, vec![h(), key.into(), doc.into()]),
                    Some(Expected::Absent) => (INSERT_IF_ABSENT, vec![h(), key.into(), doc.into()]),
                    Some(Expected::Etags(etag, twin)) => (
                        UPDATE_IF_ETAGS,
                        vec![h(), key.into(), doc.into(), etag.into(), twin.into()],
                    ),
                });
                // A device inserted only if absent has no tag rows to replace: a deletion takes
                // its rows with it, in its transaction (the registration path's new devices).
                if !matches!(expect, Some(Expected::Absent)) {
                    out.push((DELETE_DEVICE_TAGS, vec![h(), key.into()]));
                }
                for (path, value) in tags {
                    out.push((PUT_TAG, vec![h(), path.into(), value.into(), key.into()]));
                }
            }
            DeviceOp::Delete { key } => {
                for sql in [DELETE, DELETE_DEVICE_TAGS, DELETE_DEVICE_MODULES, DELETE_DEVICE_C2D] {
                    out.push((sql, vec![h(), key.into()]));
                }
            }
            DeviceOp::PutModule {
                key,
                device,
                doc,
                expect,
            } => out.push(match expect {
                None => (PUT_MODULE, vec![h(), key.into(), device.into(), doc.into()]),
                Some(Expected::Absent) => (
                    INSERT_MODULE_IF_ABSENT,
                    vec![h(), key.into(), device.into(), doc.into()],
                ),
                Some(Expected::Etags(etag, twin)) => (
                    UPDATE_MODULE_IF_ETAGS,
                    vec![h(), key.into(), doc.into(), etag.into(), twin.into()],
                ),
            }),
            DeviceOp::DeleteModule { key } => out.push((DELETE_MODULE, vec![h(), key.into()])),
            DeviceOp::PutJob { key, doc } => out.push((PUT_JOB, vec![h(), key.into(), doc.into()])),
            DeviceOp::DeleteJob { key } => {
                out.push((DELETE_JOB, vec![h(), key.into()]));
                out.push((DELETE_JOB_DEVICES, vec![h(), key.into()]));
            }
            DeviceOp::PutDeviceJobs(rows) => {
                for (key, job, doc) in rows {
                    out.push((PUT_DEVICE_JOB, vec![h(), key.into(), job.into(), doc.into()]));
                }
            }
            DeviceOp::Queues {
                put_c2d,
                delete_c2d,
                put_feedback,
                delete_feedback,
                put_notifications,
                delete_notifications,
            } => {
                for (seq, device, doc) in put_c2d {
                    out.push((PUT_C2D, vec![h(), seq.into(), device.into(), doc.into()]));
                }
                for seq in delete_c2d {
                    out.push((DELETE_C2D, vec![h(), seq.into()]));
                }
                for (seq, doc) in put_feedback {
                    out.push((PUT_FEEDBACK, vec![h(), seq.into(), doc.into()]));
                }
                for seq in delete_feedback {
                    out.push((DELETE_FEEDBACK, vec![h(), seq.into()]));
                }
                for (seq, doc) in put_notifications {
                    out.push((PUT_NOTIFICATION, vec![h(), seq.into(), doc.into()]));
                }
                for seq in delete_notifications {
                    out.push((DELETE_NOTIFICATION, vec![h(), seq.into()]));
                }
            }
            DeviceOp::PutGroup { key, doc } => out.push((PUT_GROUP, vec![h(), key.into(), doc.into()])),
            DeviceOp::DeleteGroup { key } => out.push((DELETE_GROUP, vec![h(), key.into()])),
        }
        out
    }
}

/// The primitives a database gives one hub's store: its number; queue a write and wait for its
/// commit; read one document, a list of documents, the device counts; and the retained
/// telemetry, which each backend keeps its own way. Everything else is
/// [`dps_hub::store::HubStore`]'s implementation, written once ([`hub_store_over_documents`]).
/// Read statements take the hub as `?1`, which the backend supplies; `args` are the rest.
#[async_trait]
pub(crate) trait HubDocuments: Send + Sync + 'static {
    /// Whether other nodes write this database too ([`dps_hub::store::HubStore::shared`]):
    /// conditional writes then carry their expectation ([`Expected`]).
    fn shared(&self) -> bool {
        false
    }

    /// Queues `op` for this hub and waits until its batch committed.
    async fn write(&self, op: DeviceOp) -> Result<(), HubStoreError>;

    /// See [`dps_hub::store::HubStore::queue_seq`]: `None` unless other nodes write the queues.
    async fn queue_seq(&self) -> Result<Option<u64>, HubStoreError> {
        Ok(None)
    }

    /// See [`dps_hub::store::HubStore::expired_c2d`]: by default every stored message read and
    /// filtered (only shared stores are asked, and they select them).
    async fn expired_c2d(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<dps_hub::store::C2dRecord>, HubStoreError> {
        let all: Vec<dps_hub::store::C2dRecord> = self.collect("c2d", ALL_C2D, Vec::new()).await?;
        Ok(all.into_iter().filter(|m| m.expires_at <= now).take(limit).collect())
    }

    /// The document `sql` selects (one row, one column) with `?2` = `key`, decoded.
    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        sql: &'static str,
        key: String,
    ) -> Result<Option<T>, HubStoreError>;

    /// The (key, doc) rows `sql` selects with `args` from `?2` on, decoded, in row order.
    async fn collect<T: DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        sql: &'static str,
        args: Vec<Arg<'static>>,
    ) -> Result<Vec<T>, HubStoreError>;

    /// (total, enabled) devices of this hub.
    async fn counts(&self) -> Result<(i64, i64), HubStoreError>;

    /// The stored cloud-to-device messages of this hub ([`COUNT_C2D`]).
    async fn c2d_count(&self) -> Result<i64, HubStoreError>;

    async fn append_events(&self, events: &[Arc<TelemetryMessage>]) -> Result<(), HubStoreError>;

    /// See [`dps_hub::store::HubStore::append_numbered`]: only a shared store numbers.
    async fn append_numbered(&self, msg: TelemetryMessage) -> Result<TelemetryMessage, HubStoreError> {
        let _ = msg;
        Err(HubStoreError::NotShared {
            what: "telemetry numbering",
        })
    }

    /// See [`dps_hub::store::HubStore::lock_outbox`]: only a shared store keeps the queues'
    /// locks.
    async fn lock_outbox(
        &self,
        kind: OutboxKind,
        lock_token: &str,
        max: usize,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, HubStoreError> {
        let _ = (kind, lock_token, max, now, until);
        Err(HubStoreError::NotShared {
            what: "service-bound queues",
        })
    }

    /// See [`dps_hub::store::HubStore::lock_c2d`]: only a shared store keeps the messages'
    /// locks.
    async fn lock_c2d(
        &self,
        device_key: &str,
        held: Option<&str>,
        lock_token: &str,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<dps_hub::store::C2dRecord>, HubStoreError> {
        let _ = (device_key, held, lock_token, now, until);
        Err(HubStoreError::NotShared {
            what: "cloud-to-device locks",
        })
    }

    /// See [`dps_hub::store::HubStore::unlock_c2d`].
    async fn unlock_c2d(&self, record: &dps_hub::store::C2dRecord) -> Result<(), HubStoreError> {
        let _ = record;
        Err(HubStoreError::NotShared {
            what: "cloud-to-device locks",
        })
    }

    /// See [`dps_hub::store::HubStore::put_job_if_active`]: the encoded record `doc` of job
    /// `key`, on a shared store.
    async fn put_job_if_active(&self, key: &str, doc: String) -> Result<bool, HubStoreError> {
        let _ = (key, doc);
        Err(HubStoreError::NotShared { what: "job runners" })
    }

    /// See [`dps_hub::store::HubStore::settle_outbox`].
    async fn settle_outbox(
        &self,
        kind: OutboxKind,
        lock_token: &str,
        complete: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, HubStoreError> {
        let _ = (kind, lock_token, complete, now);
        Err(HubStoreError::NotShared {
            what: "service-bound queues",
        })
    }

    /// See [`dps_hub::store::HubStore::tidy_outbox`].
    async fn tidy_outbox(
        &self,
        kind: OutboxKind,
        now: chrono::DateTime<chrono::Utc>,
        older_than: chrono::DateTime<chrono::Utc>,
        keep: usize,
    ) -> Result<bool, HubStoreError> {
        let _ = (kind, now, older_than, keep);
        Err(HubStoreError::NotShared {
            what: "service-bound queues",
        })
    }
    async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError>;
    async fn find_in_partition(&self, partition: u32, start: EventStart) -> Result<Option<u64>, HubStoreError>;
    async fn recent_events(
        &self,
        device_id: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError>;
    async fn partition_bounds(&self) -> Result<Vec<PartitionBounds>, HubStoreError>;
    async fn trim_events(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
        max_bytes: u64,
    ) -> Result<u64, HubStoreError>;
}

/// The error for a stored hub record of `key` that does not decode.
pub(crate) fn undecodable(key: &str, e: serde_json::Error) -> HubStoreError {
    HubStoreError::Corrupt {
        key: key.to_string(),
        source: dps_core::Cause::new(e),
    }
}

/// One retained telemetry message as both backends store it: `seq` the hub-wide sequence
/// number, `partition` and `pseq` its partition and position there, `device` the lower-cased
/// device id, `enqueued_ms` when the hub accepted it, `size` what it counts against the byte
/// budget, `doc` the encoded message.
pub(crate) struct EventRow {
    pub(crate) seq: i64,
    pub(crate) partition: i64,
    pub(crate) pseq: i64,
    pub(crate) device: String,
    pub(crate) enqueued_ms: i64,
    pub(crate) size: i64,
    pub(crate) doc: Vec<u8>,
}

/// A telemetry number as the databases store it.
pub(crate) fn event_int(n: u64) -> Result<i64, HubStoreError> {
    i64::try_from(n).map_err(|_| HubStoreError::backend(format!("telemetry number {n} out of range")))
}

/// A stored telemetry number.
pub(crate) fn event_uint(n: i64) -> Result<u64, HubStoreError> {
    u64::try_from(n).map_err(|_| HubStoreError::backend(format!("negative telemetry number {n}")))
}

/// Of `rows` (sequence number, size) oldest first, the sequence number up to which their sizes
/// cover `excess` (the last one when they do not): how far trimming by size deletes in one step.
pub(crate) fn covering(rows: &[(i64, i64)], excess: i64) -> Option<i64> {
    let mut covered = 0;
    for (seq, size) in rows {
        covered += size;
        if covered >= excess {
            return Some(*seq);
        }
    }
    rows.last().map(|(seq, _)| *seq)
}

/// A partition's bounds from its row (partition, first and last position, last offset) and the
/// enqueued time of its last message.
pub(crate) fn partition_bounds(
    (partition, first, last, last_seq): (i64, i64, i64, i64),
    last_enqueued: chrono::DateTime<chrono::Utc>,
) -> Result<PartitionBounds, HubStoreError> {
    Ok(PartitionBounds {
        partition: u32::try_from(partition)
            .map_err(|_| HubStoreError::backend(format!("partition {partition} out of range")))?,
        first: event_uint(first)?,
        last: event_uint(last)?,
        last_offset: event_uint(last_seq)?,
        last_enqueued,
    })
}

/// The rows of `events`, encoded on the caller's thread.
pub(crate) fn event_rows(events: &[Arc<TelemetryMessage>]) -> Result<Vec<EventRow>, HubStoreError> {
    events
        .iter()
        .map(|e| {
            Ok(EventRow {
                seq: event_int(e.sequence_number)?,
                partition: i64::from(e.partition),
                pseq: event_int(e.partition_sequence)?,
                device: dps_hub::store::device_key(&e.device_id),
                enqueued_ms: e.enqueued_time.timestamp_millis(),
                size: event_int(e.retained_bytes())?,
                doc: dps_hub::store::encode_event(e),
            })
        })
        .collect()
}

impl EventRow {
    /// The row's values for hub `hub`, in the order of the events table's insert (hub, seq,
    /// partition, pseq, device, enqueued_ms, size, doc).
    pub(crate) fn args(&self, hub: i64) -> Vec<Arg<'_>> {
        vec![
            Arg::Int(hub),
            Arg::Int(self.seq),
            Arg::Int(self.partition),
            Arg::Int(self.pseq),
            Arg::Text(self.device.as_str().into()),
            Arg::Int(self.enqueued_ms),
            Arg::Int(self.size),
            Arg::Bytes(&self.doc),
        ]
    }
}

/// A page size as `LIMIT` takes it.
pub(crate) fn limit_arg(limit: usize) -> Arg<'static> {
    Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX))
}

/// Implements [`dps_hub::store::HubStore`] for a [`HubDocuments`] backend (a macro: the orphan
/// rule forbids a blanket implementation of dps-hub's trait). Methods only a backend implements
/// (the shared store's file uploads) follow a `;`.
macro_rules! hub_store_over_documents {
    ($backend:ty $(; $($extra:tt)*)?) => {
        const _: () = {
            use std::sync::Arc;

            use async_trait::async_trait;
            use dps_hub::store::{
                device_key, module_key, C2dRecord, ConsumerGroup, DeviceCounts, DeviceJobRecord, DeviceRecord,
                EventStart, FeedbackRecord, FileNotification, HubStore, HubStoreError, JobRecord, OutboxKind,
                PartitionBounds, QueueChange, TelemetryMessage,
            };
            use $crate::hub_documents::*;

            /// The error for a record that does not encode (cannot happen for the hub's own types).
            fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<String, HubStoreError> {
                serde_json::to_string(value).map_err(|e| HubStoreError::backend(format!("cannot encode {what}: {e}")))
            }

            fn device_put(record: &DeviceRecord, expect: Option<Expected>) -> Result<DeviceOp, HubStoreError> {
                Ok(DeviceOp::Put {
                    key: record.key(),
                    doc: encode("device record", record)?,
                    tags: record.string_tags(),
                    expect,
                })
            }

            fn module_put(record: &DeviceRecord, expect: Option<Expected>) -> Result<DeviceOp, HubStoreError> {
                Ok(DeviceOp::PutModule {
                    key: record.key(),
                    device: device_key(record.device_id()),
                    doc: encode("module record", record)?,
                    expect,
                })
            }

            impl $backend {
                /// One page of `table` in key order after `after` (`None`: from the first): `sql`
                /// is the first page's statement (`?2` the limit) and the next pages' (`?3` the
                /// key to follow).
                async fn page<T: serde::de::DeserializeOwned + Send + 'static>(
                    &self,
                    table: &'static str,
                    sql: [&'static str; 2],
                    after: Option<String>,
                    limit: usize,
                ) -> Result<Vec<T>, HubStoreError> {
                    match after {
                        None => self.collect(table, sql[0], vec![limit_arg(limit)]).await,
                        Some(after) => {
                            self.collect(table, sql[1], vec![limit_arg(limit), after.into()])
                                .await
                        }
                    }
                }
            }

            #[async_trait]
            impl HubStore for $backend {
                async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, HubStoreError> {
                    self.get(TABLE, GET, device_key(device_id)).await
                }

                async fn put_device(&self, record: &DeviceRecord) -> Result<(), HubStoreError> {
                    self.write(device_put(record, None)?).await
                }

                fn shared(&self) -> bool {
                    HubDocuments::shared(self)
                }

                async fn put_device_if(
                    &self,
                    record: &DeviceRecord,
                    previous: Option<&DeviceRecord>,
                ) -> Result<(), HubStoreError> {
                    let expect = HubDocuments::shared(self).then(|| Expected::of(previous));
                    self.write(device_put(record, expect)?).await
                }

                async fn put_module_if(
                    &self,
                    record: &DeviceRecord,
                    previous: Option<&DeviceRecord>,
                ) -> Result<(), HubStoreError> {
                    let expect = HubDocuments::shared(self).then(|| Expected::of(previous));
                    self.write(module_put(record, expect)?).await
                }

                async fn delete_device(&self, device_id: &str) -> Result<(), HubStoreError> {
                    self.write(DeviceOp::Delete {
                        key: device_key(device_id),
                    })
                    .await
                }

                async fn list_devices(
                    &self,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<DeviceRecord>, HubStoreError> {
                    self.page(TABLE, [FIRST_PAGE, NEXT_PAGE], after.map(device_key), limit)
                        .await
                }

                async fn find_by_tag(
                    &self,
                    path: &str,
                    value: &str,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<DeviceRecord>, HubStoreError> {
                    let mut args = vec![
                        limit_arg(limit),
                        path.to_string().into(),
                        value.to_string().into(),
                    ];
                    match after {
                        None => self.collect(TABLE, FIRST_BY_TAG, args).await,
                        Some(after) => {
                            args.push(after.to_string().into());
                            self.collect(TABLE, NEXT_BY_TAG, args).await
                        }
                    }
                }

                async fn get_module(
                    &self,
                    device_id: &str,
                    module_id: &str,
                ) -> Result<Option<DeviceRecord>, HubStoreError> {
                    self.get("modules", GET_MODULE, module_key(device_id, module_id))
                        .await
                }

                async fn put_module(&self, record: &DeviceRecord) -> Result<(), HubStoreError> {
                    self.write(module_put(record, None)?).await
                }

                async fn delete_module(&self, device_id: &str, module_id: &str) -> Result<(), HubStoreError> {
                    let key = module_key(device_id, module_id);
                    self.write(DeviceOp::DeleteModule { key }).await
                }

                async fn list_modules(&self, device_id: &str) -> Result<Vec<DeviceRecord>, HubStoreError> {
                    self.collect("modules", DEVICE_MODULES, vec![device_key(device_id).into()])
                        .await
                }

                async fn list_all_modules(
                    &self,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<DeviceRecord>, HubStoreError> {
                    self.page(
                        "modules",
                        [FIRST_MODULES, NEXT_MODULES],
                        after.map(str::to_string),
                        limit,
                    )
                    .await
                }

                async fn put_job(&self, job: &JobRecord) -> Result<(), HubStoreError> {
                    let op = DeviceOp::PutJob {
                        key: job.job_id.clone(),
                        doc: encode("job", job)?,
                    };
                    self.write(op).await
                }

                async fn put_job_if_active(&self, job: &JobRecord) -> Result<bool, HubStoreError> {
                    if !HubDocuments::shared(self) {
                        return self.put_job(job).await.map(|()| true);
                    }
                    HubDocuments::put_job_if_active(self, &job.job_id, encode("job", job)?).await
                }

                async fn get_job(&self, job_id: &str) -> Result<Option<JobRecord>, HubStoreError> {
                    self.get("jobs", GET_JOB, job_id.to_string()).await
                }

                async fn list_jobs(&self) -> Result<Vec<JobRecord>, HubStoreError> {
                    self.collect("jobs", ALL_JOBS, Vec::new()).await
                }

                async fn delete_job(&self, job_id: &str) -> Result<(), HubStoreError> {
                    self.write(DeviceOp::DeleteJob {
                        key: job_id.to_string(),
                    })
                    .await
                }

                async fn put_device_jobs(&self, rows: &[DeviceJobRecord]) -> Result<(), HubStoreError> {
                    let rows = rows
                        .iter()
                        .map(|r| Ok((r.key(), r.job_id.clone(), encode("a job's device row", r)?)))
                        .collect::<Result<Vec<_>, HubStoreError>>()?;
                    self.write(DeviceOp::PutDeviceJobs(rows)).await
                }

                async fn list_device_jobs(
                    &self,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<DeviceJobRecord>, HubStoreError> {
                    self.page(
                        "device_jobs",
                        [FIRST_DEVICE_JOBS, NEXT_DEVICE_JOBS],
                        after.map(str::to_string),
                        limit,
                    )
                    .await
                }

                async fn update_queues(&self, change: &QueueChange) -> Result<(), HubStoreError> {
                    let seq = |s: u64| {
                        i64::try_from(s).map_err(|_| HubStoreError::backend(format!("queue key {s} out of range")))
                    };
                    let seqs = |v: &[u64]| v.iter().map(|s| seq(*s)).collect::<Result<Vec<_>, _>>();
                    let op = DeviceOp::Queues {
                        put_c2d: change
                            .put_c2d
                            .iter()
                            .map(|m| Ok((seq(m.seq)?, device_key(&m.device_id), encode("message", m)?)))
                            .collect::<Result<_, HubStoreError>>()?,
                        delete_c2d: seqs(&change.delete_c2d)?,
                        put_feedback: change
                            .put_feedback
                            .iter()
                            .map(|f| Ok((seq(f.seq)?, encode("feedback", f)?)))
                            .collect::<Result<_, HubStoreError>>()?,
                        delete_feedback: seqs(&change.delete_feedback)?,
                        put_notifications: change
                            .put_file_notifications
                            .iter()
                            .map(|n| Ok((seq(n.seq)?, encode("file notification", n)?)))
                            .collect::<Result<_, HubStoreError>>()?,
                        delete_notifications: seqs(&change.delete_file_notifications)?,
                    };
                    self.write(op).await
                }

                async fn load_queues(&self) -> Result<(Vec<C2dRecord>, Vec<FeedbackRecord>), HubStoreError> {
                    let messages = self.collect("c2d", ALL_C2D, Vec::new()).await?;
                    Ok((messages, self.load_feedback().await?))
                }

                async fn load_feedback(&self) -> Result<Vec<FeedbackRecord>, HubStoreError> {
                    self.collect("feedback", ALL_FEEDBACK, Vec::new()).await
                }

                async fn device_c2d(&self, device_key: &str) -> Result<Vec<C2dRecord>, HubStoreError> {
                    self.collect("c2d", DEVICE_C2D, vec![device_key.to_string().into()])
                        .await
                }

                async fn queue_seq(&self) -> Result<Option<u64>, HubStoreError> {
                    HubDocuments::queue_seq(self).await
                }

                async fn expired_c2d(
                    &self,
                    now: chrono::DateTime<chrono::Utc>,
                    limit: usize,
                ) -> Result<Vec<C2dRecord>, HubStoreError> {
                    HubDocuments::expired_c2d(self, now, limit).await
                }

                async fn lock_c2d(
                    &self,
                    device_key: &str,
                    held: Option<&str>,
                    lock_token: &str,
                    now: chrono::DateTime<chrono::Utc>,
                    until: chrono::DateTime<chrono::Utc>,
                ) -> Result<Option<C2dRecord>, HubStoreError> {
                    HubDocuments::lock_c2d(self, device_key, held, lock_token, now, until).await
                }

                async fn unlock_c2d(&self, record: &C2dRecord) -> Result<(), HubStoreError> {
                    HubDocuments::unlock_c2d(self, record).await
                }

                async fn lock_outbox(
                    &self,
                    kind: OutboxKind,
                    lock_token: &str,
                    max: usize,
                    now: chrono::DateTime<chrono::Utc>,
                    until: chrono::DateTime<chrono::Utc>,
                ) -> Result<Vec<String>, HubStoreError> {
                    HubDocuments::lock_outbox(self, kind, lock_token, max, now, until).await
                }

                async fn settle_outbox(
                    &self,
                    kind: OutboxKind,
                    lock_token: &str,
                    complete: bool,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> Result<bool, HubStoreError> {
                    HubDocuments::settle_outbox(self, kind, lock_token, complete, now).await
                }

                async fn tidy_outbox(
                    &self,
                    kind: OutboxKind,
                    now: chrono::DateTime<chrono::Utc>,
                    older_than: chrono::DateTime<chrono::Utc>,
                    keep: usize,
                ) -> Result<bool, HubStoreError> {
                    HubDocuments::tidy_outbox(self, kind, now, older_than, keep).await
                }

                async fn load_file_notifications(&self) -> Result<Vec<FileNotification>, HubStoreError> {
                    self.collect("file_notifications", ALL_NOTIFICATIONS, Vec::new())
                        .await
                }

                async fn append_events(&self, events: &[Arc<TelemetryMessage>]) -> Result<(), HubStoreError> {
                    HubDocuments::append_events(self, events).await
                }

                async fn append_numbered(&self, msg: TelemetryMessage) -> Result<TelemetryMessage, HubStoreError> {
                    HubDocuments::append_numbered(self, msg).await
                }

                async fn read_partition(
                    &self,
                    partition: u32,
                    from: u64,
                    limit: usize,
                ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
                    HubDocuments::read_partition(self, partition, from, limit).await
                }

                async fn find_in_partition(
                    &self,
                    partition: u32,
                    start: EventStart,
                ) -> Result<Option<u64>, HubStoreError> {
                    HubDocuments::find_in_partition(self, partition, start).await
                }

                async fn recent_events(
                    &self,
                    device_id: Option<&str>,
                    after: Option<u64>,
                    limit: usize,
                ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
                    HubDocuments::recent_events(self, device_id, after, limit).await
                }

                async fn partition_bounds(&self) -> Result<Vec<PartitionBounds>, HubStoreError> {
                    HubDocuments::partition_bounds(self).await
                }

                async fn trim_events(
                    &self,
                    older_than: chrono::DateTime<chrono::Utc>,
                    max_bytes: u64,
                ) -> Result<u64, HubStoreError> {
                    HubDocuments::trim_events(self, older_than, max_bytes).await
                }

                async fn put_consumer_group(&self, group: &ConsumerGroup) -> Result<(), HubStoreError> {
                    let op = DeviceOp::PutGroup {
                        key: group.key(),
                        doc: encode("consumer group", group)?,
                    };
                    self.write(op).await
                }

                async fn delete_consumer_group(&self, key: &str) -> Result<(), HubStoreError> {
                    self.write(DeviceOp::DeleteGroup { key: key.to_string() }).await
                }

                async fn list_consumer_groups(&self) -> Result<Vec<ConsumerGroup>, HubStoreError> {
                    self.collect("consumer_groups", ALL_GROUPS, Vec::new()).await
                }

                async fn count_c2d(&self) -> Result<u64, HubStoreError> {
                    let n = self.c2d_count().await?;
                    u64::try_from(n).map_err(|_| HubStoreError::backend(format!("negative message count {n}")))
                }

                async fn count_devices(&self) -> Result<DeviceCounts, HubStoreError> {
                    let (total, enabled) = self.counts().await?;
                    let count = |n: i64| {
                        u64::try_from(n).map_err(|_| HubStoreError::backend(format!("negative device count {n}")))
                    };
                    let (total, enabled) = (count(total)?, count(enabled)?);
                    Ok(DeviceCounts {
                        total,
                        enabled,
                        disabled: total - enabled,
                    })
                }

                $($($extra)*)?
            }
        };
    };
}
pub(crate) use hub_store_over_documents;
