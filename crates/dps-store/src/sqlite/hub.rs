//! [`SqliteHubStore`]: the embedded hub's [`HubStore`] in its own SQLite file (`hub.db`).
//!
//! Layout: one table `devices(id TEXT PRIMARY KEY, doc TEXT)` where `id` is the lower-cased
//! device id and `doc` the hub's JSON [`DeviceRecord`] — the layout the hub kept before this
//! store moved here, so existing files open unchanged (migration `hub/0001`). The queues
//! (`hub/0003`): `c2d(seq, device, doc)` for cloud-to-device messages and `feedback(seq, doc)`,
//! each document the hub's JSON record. `consumer_groups(name, doc)` (`hub/0004`) holds the
//! created consumer groups of the Event Hub-compatible endpoint, `file_notifications(seq, doc)`
//! (`hub/0005`) the file upload notifications the service has not completed, `modules(id, device,
//! doc)` (`hub/0006`) the module identities, each keyed by `dps_hub::store::module_key` beside its
//! device's key.
//!
//! The hub upserts a device on every registration, and each upsert must be durable before the
//! device gets its answer, so writes go through the same group-committing writer thread as the
//! DPS store's: one fsync covers every write queued while the previous one was syncing.

use std::path::Path;

use async_trait::async_trait;
use std::sync::Arc;

use dps_hub::store::{
    device_key, module_key, C2dRecord, ConsumerGroup, DeviceCounts, DeviceJobRecord, DeviceRecord, EventStart,
    FeedbackRecord, FileNotification, HubStore, HubStoreError, JobRecord, PartitionBounds, QueueChange,
    TelemetryMessage,
};
use rusqlite::{params, Connection, OptionalExtension};

use super::events::{self, EventOp, Events};
use super::migrations::{HUB, TELEMETRY};
use super::reader::{self, Decode};
use super::writer::Operation;
use super::{BackendError, Database, OpenError, StoreStats};

const TABLE: &str = "devices";
/// The retained telemetry's file, beside the registry's, when [`SqliteHubStore::open`] is given
/// only the registry's.
pub(super) const TELEMETRY_FILE: &str = "telemetry.db";
const UPSERT: &str = "INSERT INTO devices (id, doc) VALUES (?1, ?2) \
     ON CONFLICT (id) DO UPDATE SET doc = excluded.doc";
const DELETE: &str = "DELETE FROM devices WHERE id = ?1";
const DELETE_DEVICE_C2D: &str = "DELETE FROM c2d WHERE device = ?1";
const DELETE_DEVICE_MODULES: &str = "DELETE FROM modules WHERE device = ?1";
const DELETE_DEVICE_TAGS: &str = "DELETE FROM twin_tags WHERE device = ?1";
const PUT_TAG: &str = "INSERT OR IGNORE INTO twin_tags (path, value, device) VALUES (?1, ?2, ?3)";
const FIRST_BY_TAG: &str = "SELECT d.id, d.doc FROM twin_tags t JOIN devices d ON d.id = t.device \
     WHERE t.path = ?2 AND t.value = ?3 ORDER BY t.device LIMIT ?1";
const NEXT_BY_TAG: &str = "SELECT d.id, d.doc FROM twin_tags t JOIN devices d ON d.id = t.device \
     WHERE t.path = ?2 AND t.value = ?3 AND t.device > ?4 ORDER BY t.device LIMIT ?1";
const PUT_MODULE: &str = "INSERT INTO modules (id, device, doc) VALUES (?1, ?2, ?3) \
     ON CONFLICT (id) DO UPDATE SET doc = excluded.doc";
const DELETE_MODULE: &str = "DELETE FROM modules WHERE id = ?1";
const GET_MODULE: &str = "SELECT doc FROM modules WHERE id = ?1";
const DEVICE_MODULES: &str = "SELECT id, doc FROM modules WHERE device = ?1 ORDER BY id";
const PUT_JOB: &str = "INSERT OR REPLACE INTO jobs (id, doc) VALUES (?1, ?2)";
const DELETE_JOB: &str = "DELETE FROM jobs WHERE id = ?1";
const DELETE_JOB_DEVICES: &str = "DELETE FROM device_jobs WHERE job = ?1";
const ALL_JOBS: &str = "SELECT id, doc FROM jobs ORDER BY id";
const PUT_DEVICE_JOB: &str = "INSERT OR REPLACE INTO device_jobs (id, job, doc) VALUES (?1, ?2, ?3)";
const FIRST_DEVICE_JOBS: &str = "SELECT id, doc FROM device_jobs ORDER BY id LIMIT ?1";
const NEXT_DEVICE_JOBS: &str = "SELECT id, doc FROM device_jobs WHERE id > ?2 ORDER BY id LIMIT ?1";
const FIRST_MODULES: &str = "SELECT id, doc FROM modules ORDER BY id LIMIT ?1";
const NEXT_MODULES: &str = "SELECT id, doc FROM modules WHERE id > ?2 ORDER BY id LIMIT ?1";
const PUT_C2D: &str = "INSERT OR REPLACE INTO c2d (seq, device, doc) VALUES (?1, ?2, ?3)";
const DELETE_C2D: &str = "DELETE FROM c2d WHERE seq = ?1";
const PUT_FEEDBACK: &str = "INSERT OR REPLACE INTO feedback (seq, doc) VALUES (?1, ?2)";
const DELETE_FEEDBACK: &str = "DELETE FROM feedback WHERE seq = ?1";
/// Keys as text: the shared document reader takes (text key, doc) rows.
const ALL_C2D: &str = "SELECT CAST(seq AS TEXT), doc FROM c2d ORDER BY seq";
const ALL_FEEDBACK: &str = "SELECT CAST(seq AS TEXT), doc FROM feedback ORDER BY seq";
const PUT_NOTIFICATION: &str = "INSERT OR REPLACE INTO file_notifications (seq, doc) VALUES (?1, ?2)";
const DELETE_NOTIFICATION: &str = "DELETE FROM file_notifications WHERE seq = ?1";
const ALL_NOTIFICATIONS: &str = "SELECT CAST(seq AS TEXT), doc FROM file_notifications ORDER BY seq";
const PUT_GROUP: &str = "INSERT OR REPLACE INTO consumer_groups (name, doc) VALUES (?1, ?2)";
const DELETE_GROUP: &str = "DELETE FROM consumer_groups WHERE name = ?1";
const ALL_GROUPS: &str = "SELECT name, doc FROM consumer_groups ORDER BY name";
const GET: &str = "SELECT doc FROM devices WHERE id = ?1";
const FIRST_PAGE: &str = "SELECT id, doc FROM devices ORDER BY id LIMIT ?1";
const NEXT_PAGE: &str = "SELECT id, doc FROM devices WHERE id > ?2 ORDER BY id LIMIT ?1";
/// From the counters the schema's triggers keep (hub migration 2), not from the documents: a
/// scan of every device's JSON took seconds at a million devices and read the whole file.
const COUNT: &str =
    "SELECT COALESCE(SUM(devices), 0), COALESCE(SUM(CASE WHEN status = 'enabled' THEN devices END), 0) FROM device_counts";

impl BackendError for HubStoreError {
    fn backend(message: String) -> Self {
        HubStoreError::backend(message)
    }

    fn sqlite(e: rusqlite::Error) -> Self {
        HubStoreError::backend(e)
    }

    fn is_backend(&self) -> bool {
        matches!(self, HubStoreError::Backend(_))
    }
}

impl Decode for HubStoreError {
    fn undecodable(_table: &str, key: &str, e: serde_json::Error) -> Self {
        HubStoreError::Corrupt {
            key: key.to_string(),
            source: dps_core::Cause::new(e),
        }
    }
}

/// One write to the devices table. The document arrives serialised: JSON encoding runs on the
/// callers' threads, in parallel, keeping the single writer's critical path to SQL only.
enum DeviceOp {
    /// Insert or replace the document of `key`, and its string tags (the index's rows).
    Put {
        key: String,
        doc: String,
        tags: Vec<(String, String)>,
    },
    /// Remove `key` (absent is fine), its modules and its cloud-to-device messages.
    Delete { key: String },
    /// Insert or replace the module `key` of the device `device`.
    PutModule { key: String, device: String, doc: String },
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

impl Operation for DeviceOp {
    type Error = HubStoreError;

    fn apply(&self, conn: &Connection) -> Result<(), HubStoreError> {
        let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| conn.prepare_cached(sql).and_then(|mut s| s.execute(p));
        match self {
            DeviceOp::Put { key, doc, tags } => (|| {
                run(UPSERT, params![key, doc])?;
                run(DELETE_DEVICE_TAGS, params![key])?;
                for (path, value) in tags {
                    run(PUT_TAG, params![path, value, key])?;
                }
                Ok(())
            })(),
            DeviceOp::Delete { key } => run(DELETE, params![key])
                .and_then(|_| run(DELETE_DEVICE_TAGS, params![key]))
                .and_then(|_| run(DELETE_DEVICE_MODULES, params![key]))
                .and_then(|_| run(DELETE_DEVICE_C2D, params![key]).map(drop)),
            DeviceOp::PutModule { key, device, doc } => run(PUT_MODULE, params![key, device, doc]).map(drop),
            DeviceOp::DeleteModule { key } => run(DELETE_MODULE, params![key]).map(drop),
            DeviceOp::PutJob { key, doc } => run(PUT_JOB, params![key, doc]).map(drop),
            DeviceOp::DeleteJob { key } => {
                run(DELETE_JOB, params![key]).and_then(|_| run(DELETE_JOB_DEVICES, params![key]).map(drop))
            }
            DeviceOp::PutDeviceJobs(rows) => (|| {
                for (key, job, doc) in rows {
                    run(PUT_DEVICE_JOB, params![key, job, doc])?;
                }
                Ok(())
            })(),
            DeviceOp::Queues {
                put_c2d,
                delete_c2d,
                put_feedback,
                delete_feedback,
                put_notifications,
                delete_notifications,
            } => (|| {
                for (seq, device, doc) in put_c2d {
                    run(PUT_C2D, params![seq, device, doc])?;
                }
                for seq in delete_c2d {
                    run(DELETE_C2D, params![seq])?;
                }
                for (seq, doc) in put_feedback {
                    run(PUT_FEEDBACK, params![seq, doc])?;
                }
                for seq in delete_feedback {
                    run(DELETE_FEEDBACK, params![seq])?;
                }
                for (seq, doc) in put_notifications {
                    run(PUT_NOTIFICATION, params![seq, doc])?;
                }
                for seq in delete_notifications {
                    run(DELETE_NOTIFICATION, params![seq])?;
                }
                Ok(())
            })(),
            DeviceOp::PutGroup { key, doc } => run(PUT_GROUP, params![key, doc]).map(drop),
            DeviceOp::DeleteGroup { key } => run(DELETE_GROUP, params![key]).map(drop),
        }
        .map_err(HubStoreError::sqlite)
    }
}

/// A [`HubStore`] in one SQLite file, safe to share across tasks (`Arc<SqliteHubStore>`).
///
/// Durability and concurrency are [`super::SqliteStore`]'s: a write returns after the COMMIT of
/// its batch (`synchronous=FULL`, so the WAL was fsynced); reads run on read-only connections
/// and never wait for writes. Dropping the store lets the writer finish what is queued and
/// closes the file.
pub struct SqliteHubStore {
    db: Database<DeviceOp>,
    /// `telemetry.db` beside `hub.db`.
    events: Database<EventOp>,
}

impl std::fmt::Debug for SqliteHubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHubStore").field("path", &self.db.path).finish()
    }
}

impl SqliteHubStore {
    /// Opens (creating if needed, with its parent directory) the hub database at `path`, with
    /// its retained telemetry in `telemetry.db` beside it; see [`SqliteHubStore::open_with_telemetry`].
    pub fn open(path: &Path) -> Result<SqliteHubStore, OpenError> {
        Self::open_with_telemetry(path, &path.with_file_name(TELEMETRY_FILE))
    }

    /// Opens (creating if needed, with their parent directories) the hub database at `path` and
    /// the retained telemetry at `telemetry`, brings their schemas up to date (a `hub.db` written
    /// before this store existed is adopted as is) and starts their writer threads. Each hub
    /// needs a telemetry file of its own. Does not need a tokio runtime; the [`HubStore`]
    /// methods do.
    pub fn open_with_telemetry(path: &Path, telemetry: &Path) -> Result<SqliteHubStore, OpenError> {
        Ok(SqliteHubStore {
            db: Database::open_prepared(path, &HUB, "dps-hub-writer", build_tag_index)?,
            events: Database::open(telemetry, &TELEMETRY, "dps-telemetry-writer")?,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// One page of `table` in key order after `after` (`None`: from the first): `sql` is the
    /// first page's statement (`?1` the limit) and the next pages' (`?2` the key to follow).
    async fn page<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        sql: [&'static str; 2],
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<T>, HubStoreError> {
        let limit = reader::sql_limit(limit);
        self.db
            .readers
            .read(move |c| match &after {
                None => reader::collect(c, table, sql[0], params![limit]),
                Some(after) => reader::collect(c, table, sql[1], params![limit, after]),
            })
            .await
    }

    /// What the writer has done since open.
    pub fn stats(&self) -> StoreStats {
        self.db.writer.stats()
    }
}

#[async_trait]
impl HubStore for SqliteHubStore {
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, HubStoreError> {
        let key = device_key(device_id);
        self.db
            .readers
            .read_short(move |c| reader::get_doc(c, TABLE, GET, &key))
            .await
    }

    async fn put_device(&self, record: &DeviceRecord) -> Result<(), HubStoreError> {
        let doc = serde_json::to_string(record)
            .map_err(|e| HubStoreError::backend(format!("cannot encode device record: {e}")))?;
        let op = DeviceOp::Put {
            key: record.key(),
            doc,
            tags: record.string_tags(),
        };
        self.db.writer.write(op).await
    }

    async fn delete_device(&self, device_id: &str) -> Result<(), HubStoreError> {
        self.db
            .writer
            .write(DeviceOp::Delete {
                key: device_key(device_id),
            })
            .await
    }

    async fn list_devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceRecord>, HubStoreError> {
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
        let (path, value, after) = (path.to_string(), value.to_string(), after.map(str::to_string));
        let limit = reader::sql_limit(limit);
        self.db
            .readers
            .read(move |c| match &after {
                None => reader::collect(c, TABLE, FIRST_BY_TAG, params![limit, path, value]),
                Some(after) => reader::collect(c, TABLE, NEXT_BY_TAG, params![limit, path, value, after]),
            })
            .await
    }

    async fn get_module(&self, device_id: &str, module_id: &str) -> Result<Option<DeviceRecord>, HubStoreError> {
        let key = module_key(device_id, module_id);
        self.db
            .readers
            .read_short(move |c| reader::get_doc(c, "modules", GET_MODULE, &key))
            .await
    }

    async fn put_module(&self, record: &DeviceRecord) -> Result<(), HubStoreError> {
        let doc = serde_json::to_string(record)
            .map_err(|e| HubStoreError::backend(format!("cannot encode module record: {e}")))?;
        let op = DeviceOp::PutModule {
            key: record.key(),
            device: device_key(record.device_id()),
            doc,
        };
        self.db.writer.write(op).await
    }

    async fn delete_module(&self, device_id: &str, module_id: &str) -> Result<(), HubStoreError> {
        let key = module_key(device_id, module_id);
        self.db.writer.write(DeviceOp::DeleteModule { key }).await
    }

    async fn list_modules(&self, device_id: &str) -> Result<Vec<DeviceRecord>, HubStoreError> {
        let device = device_key(device_id);
        self.db
            .readers
            .read(move |c| reader::collect(c, "modules", DEVICE_MODULES, params![device]))
            .await
    }

    async fn list_all_modules(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceRecord>, HubStoreError> {
        self.page(
            "modules",
            [FIRST_MODULES, NEXT_MODULES],
            after.map(str::to_string),
            limit,
        )
        .await
    }

    async fn put_job(&self, job: &JobRecord) -> Result<(), HubStoreError> {
        let doc = serde_json::to_string(job).map_err(|e| HubStoreError::backend(format!("cannot encode job: {e}")))?;
        let key = job.job_id.clone();
        self.db.writer.write(DeviceOp::PutJob { key, doc }).await
    }

    async fn list_jobs(&self) -> Result<Vec<JobRecord>, HubStoreError> {
        self.db
            .readers
            .read(|c| reader::collect(c, "jobs", ALL_JOBS, params![]))
            .await
    }

    async fn delete_job(&self, job_id: &str) -> Result<(), HubStoreError> {
        let key = job_id.to_string();
        self.db.writer.write(DeviceOp::DeleteJob { key }).await
    }

    async fn put_device_jobs(&self, rows: &[DeviceJobRecord]) -> Result<(), HubStoreError> {
        let rows = rows
            .iter()
            .map(|r| {
                let doc = serde_json::to_string(r)
                    .map_err(|e| HubStoreError::backend(format!("cannot encode a job's device row: {e}")))?;
                Ok((r.key(), r.job_id.clone(), doc))
            })
            .collect::<Result<Vec<_>, HubStoreError>>()?;
        self.db.writer.write(DeviceOp::PutDeviceJobs(rows)).await
    }

    async fn list_device_jobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceJobRecord>, HubStoreError> {
        self.page(
            "device_jobs",
            [FIRST_DEVICE_JOBS, NEXT_DEVICE_JOBS],
            after.map(str::to_string),
            limit,
        )
        .await
    }

    async fn update_queues(&self, change: &QueueChange) -> Result<(), HubStoreError> {
        let seq = |s: u64| i64::try_from(s).map_err(|_| HubStoreError::backend(format!("queue key {s} out of range")));
        let encode = |what: &str, r: Result<String, serde_json::Error>| {
            r.map_err(|e| HubStoreError::backend(format!("cannot encode {what}: {e}")))
        };
        let op = DeviceOp::Queues {
            put_c2d: change
                .put_c2d
                .iter()
                .map(|m| {
                    Ok((
                        seq(m.seq)?,
                        device_key(&m.device_id),
                        encode("message", serde_json::to_string(m))?,
                    ))
                })
                .collect::<Result<_, HubStoreError>>()?,
            delete_c2d: change.delete_c2d.iter().map(|s| seq(*s)).collect::<Result<_, _>>()?,
            put_feedback: change
                .put_feedback
                .iter()
                .map(|f| Ok((seq(f.seq)?, encode("feedback", serde_json::to_string(f))?)))
                .collect::<Result<_, HubStoreError>>()?,
            delete_feedback: change
                .delete_feedback
                .iter()
                .map(|s| seq(*s))
                .collect::<Result<_, _>>()?,
            put_notifications: change
                .put_file_notifications
                .iter()
                .map(|n| Ok((seq(n.seq)?, encode("file notification", serde_json::to_string(n))?)))
                .collect::<Result<_, HubStoreError>>()?,
            delete_notifications: change
                .delete_file_notifications
                .iter()
                .map(|s| seq(*s))
                .collect::<Result<_, _>>()?,
        };
        self.db.writer.write(op).await
    }

    async fn load_queues(&self) -> Result<(Vec<C2dRecord>, Vec<FeedbackRecord>), HubStoreError> {
        self.db
            .readers
            .read(|c| {
                let messages = reader::collect(c, "c2d", ALL_C2D, params![])?;
                let feedback = reader::collect(c, "feedback", ALL_FEEDBACK, params![])?;
                Ok((messages, feedback))
            })
            .await
    }

    async fn load_file_notifications(&self) -> Result<Vec<FileNotification>, HubStoreError> {
        self.db
            .readers
            .read(|c| reader::collect(c, "file_notifications", ALL_NOTIFICATIONS, params![]))
            .await
    }

    async fn append_events(&self, events: &[Arc<TelemetryMessage>]) -> Result<(), HubStoreError> {
        let rows = events::rows(events)?;
        self.events.writer.write(EventOp::Append(rows)).await
    }

    async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        Events(&self.events).read_partition(partition, from, limit).await
    }

    async fn find_in_partition(&self, partition: u32, start: EventStart) -> Result<Option<u64>, HubStoreError> {
        Events(&self.events).find(partition, start).await
    }

    async fn recent_events(
        &self,
        device_id: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        Events(&self.events).recent(device_id, after, limit).await
    }

    async fn partition_bounds(&self) -> Result<Vec<PartitionBounds>, HubStoreError> {
        Events(&self.events).bounds().await
    }

    async fn trim_events(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
        max_bytes: u64,
    ) -> Result<u64, HubStoreError> {
        Events(&self.events).trim(older_than, max_bytes).await
    }

    async fn put_consumer_group(&self, group: &ConsumerGroup) -> Result<(), HubStoreError> {
        let doc = serde_json::to_string(group)
            .map_err(|e| HubStoreError::backend(format!("cannot encode consumer group: {e}")))?;
        self.db.writer.write(DeviceOp::PutGroup { key: group.key(), doc }).await
    }

    async fn delete_consumer_group(&self, key: &str) -> Result<(), HubStoreError> {
        self.db
            .writer
            .write(DeviceOp::DeleteGroup { key: key.to_string() })
            .await
    }

    async fn list_consumer_groups(&self) -> Result<Vec<ConsumerGroup>, HubStoreError> {
        self.db
            .readers
            .read(|c| reader::collect(c, "consumer_groups", ALL_GROUPS, params![]))
            .await
    }

    async fn count_devices(&self) -> Result<DeviceCounts, HubStoreError> {
        self.db
            .readers
            .read(|c| {
                let (total, enabled): (i64, i64) = c
                    .prepare_cached(COUNT)
                    .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(HubStoreError::sqlite)?;
                let count =
                    |n: i64| u64::try_from(n).map_err(|_| HubStoreError::backend(format!("negative device count {n}")));
                let (total, enabled) = (count(total)?, count(enabled)?);
                Ok(DeviceCounts {
                    total,
                    enabled,
                    disabled: total - enabled,
                })
            })
            .await
    }
}

/// Indexes the string tags of the devices stored before the tag index existed (hub migration 8
/// leaves `tag_index` pending in `hub_meta` when there were devices), in one transaction, once.
/// A document that no longer decodes is skipped with a warning rather than keeping the store
/// from opening.
fn build_tag_index(conn: &mut Connection) -> Result<(), OpenError> {
    let fail = |source| OpenError::Migration { version: 8, source };
    let pending: Option<String> = conn
        .query_row("SELECT value FROM hub_meta WHERE name = 'tag_index'", [], |r| r.get(0))
        .optional()
        .map_err(fail)?;
    if pending.as_deref() != Some("pending") {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let tx = conn.transaction().map_err(fail)?;
    let mut devices = 0u64;
    {
        let mut read = tx.prepare("SELECT id, doc FROM devices").map_err(fail)?;
        let mut insert = tx.prepare(PUT_TAG).map_err(fail)?;
        let mut rows = read.query([]).map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            let key: String = row.get(0).map_err(fail)?;
            let doc: String = row.get(1).map_err(fail)?;
            match serde_json::from_str::<DeviceRecord>(&doc) {
                Ok(record) => {
                    for (path, value) in record.string_tags() {
                        insert.execute(params![path, value, key]).map_err(fail)?;
                    }
                    devices += 1;
                }
                Err(e) => tracing::warn!(device = %key, error = %e, "device record not indexed: it does not decode"),
            }
        }
    }
    tx.execute("UPDATE hub_meta SET value = 'built' WHERE name = 'tag_index'", [])
        .map_err(fail)?;
    tx.commit().map_err(fail)?;
    tracing::info!(devices, seconds = started.elapsed().as_secs_f64(), "tag index built");
    Ok(())
}
