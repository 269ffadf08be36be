//! [`HubDatabase`]: the registry file (`hub.db`) every embedded hub of a server shares;
//! [`SqliteHubStore`]: one hub's [`HubStore`] in it, with the hub's own telemetry file.
//!
//! Layout: every table leads its key with `hub`, the hub's number (migration `hub/0009`,
//! decision 0029; files from before it held one hub, now hub 1). `devices(hub, id, doc)` where
//! `id` is the lower-cased device id and `doc` the hub's JSON [`DeviceRecord`] (`hub/0001`). The
//! queues (`hub/0003`): `c2d(hub, seq, device, doc)` for cloud-to-device messages and
//! `feedback(hub, seq, doc)`, each document the hub's JSON record. `consumer_groups(hub, name,
//! doc)` (`hub/0004`) holds the created consumer groups of the Event Hub-compatible endpoint,
//! `file_notifications(hub, seq, doc)` (`hub/0005`) the file upload notifications the service has
//! not completed, `modules(hub, id, device, doc)` (`hub/0006`) the module identities, each keyed
//! by `dps_hub::store::module_key` beside its device's key; jobs (`hub/0007`) and the string tag
//! index (`hub/0008`) likewise.
//!
//! The hub upserts a device on every registration, and each upsert must be durable before the
//! device gets its answer, so writes go through the same group-committing writer thread as the
//! DPS store's: one fsync covers every write queued while the previous one was syncing, for
//! every hub of the file at once.

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

// Every statement names its hub as `?1` (hub migration 9); the rest follow.
const UPSERT: &str = "INSERT INTO devices (hub, id, doc) VALUES (?1, ?2, ?3) \
     ON CONFLICT (hub, id) DO UPDATE SET doc = excluded.doc";
const DELETE: &str = "DELETE FROM devices WHERE hub = ?1 AND id = ?2";
const DELETE_DEVICE_C2D: &str = "DELETE FROM c2d WHERE hub = ?1 AND device = ?2";
const DELETE_DEVICE_MODULES: &str = "DELETE FROM modules WHERE hub = ?1 AND device = ?2";
const DELETE_DEVICE_TAGS: &str = "DELETE FROM twin_tags WHERE hub = ?1 AND device = ?2";
const PUT_TAG: &str = "INSERT OR IGNORE INTO twin_tags (hub, path, value, device) VALUES (?1, ?2, ?3, ?4)";
const FIRST_BY_TAG: &str = "SELECT d.id, d.doc FROM twin_tags t JOIN devices d ON d.hub = t.hub AND d.id = t.device \
     WHERE t.hub = ?1 AND t.path = ?3 AND t.value = ?4 ORDER BY t.device LIMIT ?2";
const NEXT_BY_TAG: &str = "SELECT d.id, d.doc FROM twin_tags t JOIN devices d ON d.hub = t.hub AND d.id = t.device \
     WHERE t.hub = ?1 AND t.path = ?3 AND t.value = ?4 AND t.device > ?5 ORDER BY t.device LIMIT ?2";
const PUT_MODULE: &str = "INSERT INTO modules (hub, id, device, doc) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (hub, id) DO UPDATE SET doc = excluded.doc";
const DELETE_MODULE: &str = "DELETE FROM modules WHERE hub = ?1 AND id = ?2";
const GET_MODULE: &str = "SELECT doc FROM modules WHERE hub = ?1 AND id = ?2";
const DEVICE_MODULES: &str = "SELECT id, doc FROM modules WHERE hub = ?1 AND device = ?2 ORDER BY id";
const PUT_JOB: &str = "INSERT OR REPLACE INTO jobs (hub, id, doc) VALUES (?1, ?2, ?3)";
const DELETE_JOB: &str = "DELETE FROM jobs WHERE hub = ?1 AND id = ?2";
const DELETE_JOB_DEVICES: &str = "DELETE FROM device_jobs WHERE hub = ?1 AND job = ?2";
const ALL_JOBS: &str = "SELECT id, doc FROM jobs WHERE hub = ?1 ORDER BY id";
const PUT_DEVICE_JOB: &str = "INSERT OR REPLACE INTO device_jobs (hub, id, job, doc) VALUES (?1, ?2, ?3, ?4)";
const FIRST_DEVICE_JOBS: &str = "SELECT id, doc FROM device_jobs WHERE hub = ?1 ORDER BY id LIMIT ?2";
const NEXT_DEVICE_JOBS: &str = "SELECT id, doc FROM device_jobs WHERE hub = ?1 AND id > ?3 ORDER BY id LIMIT ?2";
const FIRST_MODULES: &str = "SELECT id, doc FROM modules WHERE hub = ?1 ORDER BY id LIMIT ?2";
const NEXT_MODULES: &str = "SELECT id, doc FROM modules WHERE hub = ?1 AND id > ?3 ORDER BY id LIMIT ?2";
const PUT_C2D: &str = "INSERT OR REPLACE INTO c2d (hub, seq, device, doc) VALUES (?1, ?2, ?3, ?4)";
const DELETE_C2D: &str = "DELETE FROM c2d WHERE hub = ?1 AND seq = ?2";
const PUT_FEEDBACK: &str = "INSERT OR REPLACE INTO feedback (hub, seq, doc) VALUES (?1, ?2, ?3)";
const DELETE_FEEDBACK: &str = "DELETE FROM feedback WHERE hub = ?1 AND seq = ?2";
/// Keys as text: the shared document reader takes (text key, doc) rows.
const ALL_C2D: &str = "SELECT CAST(seq AS TEXT), doc FROM c2d WHERE hub = ?1 ORDER BY seq";
const ALL_FEEDBACK: &str = "SELECT CAST(seq AS TEXT), doc FROM feedback WHERE hub = ?1 ORDER BY seq";
const PUT_NOTIFICATION: &str = "INSERT OR REPLACE INTO file_notifications (hub, seq, doc) VALUES (?1, ?2, ?3)";
const DELETE_NOTIFICATION: &str = "DELETE FROM file_notifications WHERE hub = ?1 AND seq = ?2";
const ALL_NOTIFICATIONS: &str = "SELECT CAST(seq AS TEXT), doc FROM file_notifications WHERE hub = ?1 ORDER BY seq";
const PUT_GROUP: &str = "INSERT OR REPLACE INTO consumer_groups (hub, name, doc) VALUES (?1, ?2, ?3)";
const DELETE_GROUP: &str = "DELETE FROM consumer_groups WHERE hub = ?1 AND name = ?2";
const ALL_GROUPS: &str = "SELECT name, doc FROM consumer_groups WHERE hub = ?1 ORDER BY name";
const GET: &str = "SELECT doc FROM devices WHERE hub = ?1 AND id = ?2";
const FIRST_PAGE: &str = "SELECT id, doc FROM devices WHERE hub = ?1 ORDER BY id LIMIT ?2";
const NEXT_PAGE: &str = "SELECT id, doc FROM devices WHERE hub = ?1 AND id > ?3 ORDER BY id LIMIT ?2";
/// From the counters the schema's triggers keep (hub migration 2), not from the documents: a
/// scan of every device's JSON took seconds at a million devices and read the whole file.
const COUNT: &str =
    "SELECT COALESCE(SUM(devices), 0), COALESCE(SUM(CASE WHEN status = 'enabled' THEN devices END), 0) \
     FROM device_counts WHERE hub = ?1";

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

/// A write of one hub: what the shared writer runs.
struct HubOp {
    hub: i64,
    op: DeviceOp,
}

impl Operation for HubOp {
    type Error = HubStoreError;

    fn apply(&self, conn: &Connection) -> Result<(), HubStoreError> {
        let hub = &self.hub;
        let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| conn.prepare_cached(sql).and_then(|mut s| s.execute(p));
        match &self.op {
            DeviceOp::Put { key, doc, tags } => (|| {
                run(UPSERT, params![hub, key, doc])?;
                run(DELETE_DEVICE_TAGS, params![hub, key])?;
                for (path, value) in tags {
                    run(PUT_TAG, params![hub, path, value, key])?;
                }
                Ok(())
            })(),
            DeviceOp::Delete { key } => run(DELETE, params![hub, key])
                .and_then(|_| run(DELETE_DEVICE_TAGS, params![hub, key]))
                .and_then(|_| run(DELETE_DEVICE_MODULES, params![hub, key]))
                .and_then(|_| run(DELETE_DEVICE_C2D, params![hub, key]).map(drop)),
            DeviceOp::PutModule { key, device, doc } => run(PUT_MODULE, params![hub, key, device, doc]).map(drop),
            DeviceOp::DeleteModule { key } => run(DELETE_MODULE, params![hub, key]).map(drop),
            DeviceOp::PutJob { key, doc } => run(PUT_JOB, params![hub, key, doc]).map(drop),
            DeviceOp::DeleteJob { key } => {
                run(DELETE_JOB, params![hub, key]).and_then(|_| run(DELETE_JOB_DEVICES, params![hub, key]).map(drop))
            }
            DeviceOp::PutDeviceJobs(rows) => (|| {
                for (key, job, doc) in rows {
                    run(PUT_DEVICE_JOB, params![hub, key, job, doc])?;
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
                    run(PUT_C2D, params![hub, seq, device, doc])?;
                }
                for seq in delete_c2d {
                    run(DELETE_C2D, params![hub, seq])?;
                }
                for (seq, doc) in put_feedback {
                    run(PUT_FEEDBACK, params![hub, seq, doc])?;
                }
                for seq in delete_feedback {
                    run(DELETE_FEEDBACK, params![hub, seq])?;
                }
                for (seq, doc) in put_notifications {
                    run(PUT_NOTIFICATION, params![hub, seq, doc])?;
                }
                for seq in delete_notifications {
                    run(DELETE_NOTIFICATION, params![hub, seq])?;
                }
                Ok(())
            })(),
            DeviceOp::PutGroup { key, doc } => run(PUT_GROUP, params![hub, key, doc]).map(drop),
            DeviceOp::DeleteGroup { key } => run(DELETE_GROUP, params![hub, key]).map(drop),
        }
        .map_err(HubStoreError::sqlite)
    }
}

/// The registry file (`hub.db`) of every embedded hub of a server: one writer thread whose group
/// commit, and fsync, covers the writes of all of them (decision 0029; a file per hub cost each
/// hub an fsync of its own, and a busy server ten times the fsyncs at ten hubs). Rows are keyed
/// by the hub's number; [`HubDatabase::hub`] gives one hub's [`HubStore`].
pub struct HubDatabase {
    db: Database<HubOp>,
    /// Hubs this file held before this open.
    known: Vec<u32>,
}

impl std::fmt::Debug for HubDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubDatabase").field("path", &self.db.path).finish()
    }
}

/// One embedded hub as [`HubDatabase::open`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct HubSlot<'a> {
    /// The hub's number in the file (1 for the first hub); its rows are keyed by it.
    pub number: u32,
    /// Where an earlier build kept this hub's registry, in a file of its own (`hub-2.db`): when
    /// it exists its rows are moved into the shared file and it is removed.
    pub separate_file: Option<&'a Path>,
}

impl HubDatabase {
    /// Opens (creating if needed, with its parent directory) the shared registry at `path`,
    /// brings its schema up to date (a `hub.db` written before hubs shared it holds hub 1), moves
    /// in the registry of each of `hubs` that an earlier build kept in a file of its own, and
    /// starts the writer thread. Does not need a tokio runtime.
    pub fn open(path: &Path, hubs: &[HubSlot<'_>]) -> Result<Arc<HubDatabase>, OpenError> {
        let existed = path.exists();
        let mut known = Vec::new();
        let db = Database::open_prepared(path, &HUB, "dps-hub-writer", |conn| {
            build_tag_index(conn)?;
            if existed {
                known = known_hubs(conn)?;
            }
            for hub in hubs {
                if let Some(file) = hub.separate_file.filter(|f| f.exists()) {
                    merge_separate_file(conn, hub.number, file)?;
                    known.push(hub.number);
                }
                conn.execute(
                    "INSERT OR IGNORE INTO hub_meta (name, value) VALUES (?1, 'present')",
                    [format!("hub:{}", hub.number)],
                )
                .map_err(|source| OpenError::Migration {
                    version: HUB.version(),
                    source,
                })?;
            }
            Ok(())
        })?;
        Ok(Arc::new(HubDatabase { db, known }))
    }

    /// Whether the server had hub `number` before this open (in this file, which names every hub
    /// it held in `hub_meta`, or in a file of its own that was moved in): a hub it had not is new.
    pub fn held_before(&self, number: u32) -> bool {
        self.known.contains(&number)
    }

    /// Hub `number`'s store, with its retained telemetry in the file `telemetry` (one per hub).
    pub fn hub(self: &Arc<Self>, number: u32, telemetry: &Path) -> Result<SqliteHubStore, OpenError> {
        Ok(SqliteHubStore {
            db: Arc::clone(self),
            hub: i64::from(number),
            events: Database::open(telemetry, &TELEMETRY, "dps-telemetry-writer")?,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// What the writer has done since open, for every hub of the file.
    pub fn stats(&self) -> StoreStats {
        self.db.writer.stats()
    }
}

/// The hubs a registry file names in `hub_meta` (`hub:N`), and those an earlier build moved in.
fn known_hubs(conn: &Connection) -> Result<Vec<u32>, OpenError> {
    let fail = |source| OpenError::Migration {
        version: HUB.version(),
        source,
    };
    let mut stmt = conn
        .prepare("SELECT name FROM hub_meta WHERE name LIKE 'hub:%'")
        .map_err(fail)?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(fail)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    Ok(names
        .iter()
        .filter_map(|n| n.strip_prefix("hub:")?.parse().ok())
        .collect())
}

/// The tables of a hub's registry and their columns after `hub`, as the merge copies them.
/// `device_counts` is not among them: the triggers count the devices as they are copied.
const HUB_TABLES: &[(&str, &str)] = &[
    ("devices", "id, doc"),
    ("c2d", "seq, device, doc"),
    ("feedback", "seq, doc"),
    ("consumer_groups", "name, doc"),
    ("file_notifications", "seq, doc"),
    ("modules", "id, device, doc"),
    ("jobs", "id, doc"),
    ("device_jobs", "id, job, doc"),
    ("twin_tags", "path, value, device"),
];

/// Moves the registry an earlier build kept for hub `number` in `file` (its rows are hub 1's
/// there) into the shared file, in one transaction that first clears whatever hub `number`
/// has (so a merge repeated after a crash before `file` was removed copies the same rows
/// again), then removes `file`. Removal failing fails the open: serving with the file still
/// there would merge it again, stale, at the next start.
fn merge_separate_file(conn: &mut Connection, number: u32, file: &Path) -> Result<(), OpenError> {
    let fail = |source| OpenError::MergeHub {
        path: file.to_owned(),
        source,
    };
    // Bring the file to this build's schema first (its rows become hub 1's), index its tags.
    {
        let (mut separate, _readers) = super::open_file(file, &HUB)?;
        build_tag_index(&mut separate)?;
    }
    let started = std::time::Instant::now();
    conn.execute("ATTACH DATABASE ?1 AS separate", [file.to_string_lossy()])
        .map_err(fail)?;
    let copied = (|| {
        let tx = conn.transaction()?;
        for (table, columns) in HUB_TABLES {
            tx.execute(&format!("DELETE FROM main.{table} WHERE hub = ?1"), [number])?;
            tx.execute(
                &format!(
                    "INSERT INTO main.{table} (hub, {columns}) SELECT ?1, {columns} FROM separate.{table} WHERE hub = 1"
                ),
                [number],
            )?;
        }
        let devices: i64 = tx.query_row("SELECT COUNT(*) FROM main.devices WHERE hub = ?1", [number], |r| {
            r.get(0)
        })?;
        tx.commit()?;
        Ok(devices)
    })();
    let detached = conn.execute("DETACH DATABASE separate", []);
    let devices = copied.map_err(fail)?;
    detached.map_err(fail)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::remove_file(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(OpenError::RemoveMergedHub {
                    path: name.into(),
                    source,
                })
            }
        }
    }
    tracing::info!(
        hub = number,
        file = %file.display(),
        devices,
        seconds = started.elapsed().as_secs_f64(),
        "hub registry moved into the shared file"
    );
    Ok(())
}

/// One embedded hub's [`HubStore`]: its rows of the shared [`HubDatabase`], and its own
/// retained telemetry file. Safe to share across tasks (`Arc<SqliteHubStore>`).
///
/// Durability and concurrency are [`super::SqliteStore`]'s: a write returns after the COMMIT of
/// its batch (`synchronous=FULL`, so the WAL was fsynced); reads run on read-only connections
/// and never wait for writes. The file closes, after the writer finished what is queued, when
/// the last hub's store (and the [`HubDatabase`]) is dropped.
pub struct SqliteHubStore {
    db: Arc<HubDatabase>,
    /// This hub's number in the shared file.
    hub: i64,
    /// The hub's own `telemetry.db`.
    events: Database<EventOp>,
}

impl std::fmt::Debug for SqliteHubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHubStore")
            .field("path", &self.db.db.path)
            .field("hub", &self.hub)
            .finish()
    }
}

impl SqliteHubStore {
    /// Opens (creating if needed, with its parent directory) the registry at `path` as its only
    /// hub, hub 1, with its retained telemetry in `telemetry.db` beside it.
    pub fn open(path: &Path) -> Result<SqliteHubStore, OpenError> {
        let db = HubDatabase::open(
            path,
            &[HubSlot {
                number: 1,
                separate_file: None,
            }],
        )?;
        db.hub(1, &path.with_file_name(TELEMETRY_FILE))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.db.db.path
    }

    /// Queues one of this hub's writes and waits for its batch to commit.
    async fn write(&self, op: DeviceOp) -> Result<(), HubStoreError> {
        self.db.db.writer.write(HubOp { hub: self.hub, op }).await
    }

    /// Runs `read` on a pooled read connection, with this hub's number.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection, i64) -> Result<T, HubStoreError> + Send + 'static,
    ) -> Result<T, HubStoreError> {
        let hub = self.hub;
        self.db.db.readers.read(move |c| read(c, hub)).await
    }

    /// [`SqliteHubStore::read`] for a lookup by primary key (see `ReadPool::read_short`).
    async fn read_short<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection, i64) -> Result<T, HubStoreError> + Send + 'static,
    ) -> Result<T, HubStoreError> {
        let hub = self.hub;
        self.db.db.readers.read_short(move |c| read(c, hub)).await
    }

    /// One page of `table` in key order after `after` (`None`: from the first): `sql` is the
    /// first page's statement (`?2` the limit) and the next pages' (`?3` the key to follow).
    async fn page<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        sql: [&'static str; 2],
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<T>, HubStoreError> {
        let limit = reader::sql_limit(limit);
        self.read(move |c, hub| match &after {
            None => reader::collect(c, table, sql[0], params![hub, limit]),
            Some(after) => reader::collect(c, table, sql[1], params![hub, limit, after]),
        })
        .await
    }

    /// What the shared writer has done since open (every hub's writes).
    pub fn stats(&self) -> StoreStats {
        self.db.stats()
    }
}

#[async_trait]
impl HubStore for SqliteHubStore {
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, HubStoreError> {
        let key = device_key(device_id);
        self.read_short(move |c, hub| reader::get_doc(c, TABLE, GET, params![hub, key], &key))
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
        self.write(op).await
    }

    async fn delete_device(&self, device_id: &str) -> Result<(), HubStoreError> {
        self.write(DeviceOp::Delete {
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
        self.read(move |c, hub| match &after {
            None => reader::collect(c, TABLE, FIRST_BY_TAG, params![hub, limit, path, value]),
            Some(after) => reader::collect(c, TABLE, NEXT_BY_TAG, params![hub, limit, path, value, after]),
        })
        .await
    }

    async fn get_module(&self, device_id: &str, module_id: &str) -> Result<Option<DeviceRecord>, HubStoreError> {
        let key = module_key(device_id, module_id);
        self.read_short(move |c, hub| reader::get_doc(c, "modules", GET_MODULE, params![hub, key], &key))
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
        self.write(op).await
    }

    async fn delete_module(&self, device_id: &str, module_id: &str) -> Result<(), HubStoreError> {
        let key = module_key(device_id, module_id);
        self.write(DeviceOp::DeleteModule { key }).await
    }

    async fn list_modules(&self, device_id: &str) -> Result<Vec<DeviceRecord>, HubStoreError> {
        let device = device_key(device_id);
        self.read(move |c, hub| reader::collect(c, "modules", DEVICE_MODULES, params![hub, device]))
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
        self.write(DeviceOp::PutJob { key, doc }).await
    }

    async fn list_jobs(&self) -> Result<Vec<JobRecord>, HubStoreError> {
        self.read(|c, hub| reader::collect(c, "jobs", ALL_JOBS, params![hub]))
            .await
    }

    async fn delete_job(&self, job_id: &str) -> Result<(), HubStoreError> {
        let key = job_id.to_string();
        self.write(DeviceOp::DeleteJob { key }).await
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
        self.write(DeviceOp::PutDeviceJobs(rows)).await
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
        self.write(op).await
    }

    async fn load_queues(&self) -> Result<(Vec<C2dRecord>, Vec<FeedbackRecord>), HubStoreError> {
        self.read(|c, hub| {
            let messages = reader::collect(c, "c2d", ALL_C2D, params![hub])?;
            let feedback = reader::collect(c, "feedback", ALL_FEEDBACK, params![hub])?;
            Ok((messages, feedback))
        })
        .await
    }

    async fn load_file_notifications(&self) -> Result<Vec<FileNotification>, HubStoreError> {
        self.read(|c, hub| reader::collect(c, "file_notifications", ALL_NOTIFICATIONS, params![hub]))
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
        self.write(DeviceOp::PutGroup { key: group.key(), doc }).await
    }

    async fn delete_consumer_group(&self, key: &str) -> Result<(), HubStoreError> {
        self.write(DeviceOp::DeleteGroup { key: key.to_string() }).await
    }

    async fn list_consumer_groups(&self) -> Result<Vec<ConsumerGroup>, HubStoreError> {
        self.read(|c, hub| reader::collect(c, "consumer_groups", ALL_GROUPS, params![hub]))
            .await
    }

    async fn count_devices(&self) -> Result<DeviceCounts, HubStoreError> {
        self.read(|c, hub| {
            let (total, enabled): (i64, i64) = c
                .prepare_cached(COUNT)
                .and_then(|mut s| s.query_row([hub], |r| Ok((r.get(0)?, r.get(1)?))))
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
        let mut read = tx.prepare("SELECT hub, id, doc FROM devices").map_err(fail)?;
        let mut insert = tx.prepare(PUT_TAG).map_err(fail)?;
        let mut rows = read.query([]).map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            let hub: i64 = row.get(0).map_err(fail)?;
            let key: String = row.get(1).map_err(fail)?;
            let doc: String = row.get(2).map_err(fail)?;
            match serde_json::from_str::<DeviceRecord>(&doc) {
                Ok(record) => {
                    for (path, value) in record.string_tags() {
                        insert.execute(params![hub, path, value, key]).map_err(fail)?;
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
