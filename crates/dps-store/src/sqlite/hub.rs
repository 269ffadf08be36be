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

use dps_hub::store::{DeviceRecord, EventStart, HubStoreError, PartitionBounds, TelemetryMessage};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;

use super::events::{EventOp, Events};
use super::migrations::{HUB, TELEMETRY};
use super::reader::{self, Decode};
use super::writer::Operation;
use super::{BackendError, Database, OpenError, StoreStats};
use crate::hub_documents::{Arg, DeviceOp, HubDocuments, COUNT, PUT_TAG};

/// The retained telemetry's file, beside the registry's, when [`SqliteHubStore::open`] is given
/// only the registry's.
pub(super) const TELEMETRY_FILE: &str = "telemetry.db";

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
        crate::hub_documents::undecodable(key, e)
    }
}

/// A write of one hub: what the shared writer runs.
struct HubOp {
    hub: i64,
    op: DeviceOp,
}

impl Operation for HubOp {
    type Error = HubStoreError;

    fn apply(&self, conn: &Connection) -> Result<(), HubStoreError> {
        for (sql, args) in self.op.statements(self.hub) {
            let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute(params.as_slice()))
                .map_err(HubStoreError::sqlite)?;
        }
        Ok(())
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Int(n) => ToSqlOutput::from(*n),
            Arg::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::OptText(Some(s)) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Arg::OptText(None) => ToSqlOutput::Borrowed(ValueRef::Null),
            Arg::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// The arguments of a read: the hub's number as `?1`, then `args`.
fn with_hub(hub: i64, args: &[Arg<'static>]) -> Vec<Arg<'static>> {
    std::iter::once(Arg::Int(hub)).chain(args.iter().cloned()).collect()
}

/// The registry file (`hub.db`) of every embedded hub of a server: one writer thread whose group
/// commit, and fsync, covers the writes of all of them (decision 0029; a file per hub cost each
/// hub an fsync of its own, and a busy server ten times the fsyncs at ten hubs). Rows are keyed
/// by the hub's number; [`HubDatabase::hub`] gives one hub's [`dps_hub::store::HubStore`].
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

/// One embedded hub's [`dps_hub::store::HubStore`]: its rows of the shared [`HubDatabase`], and its own
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

    /// What the shared writer has done since open (every hub's writes).
    pub fn stats(&self) -> StoreStats {
        self.db.stats()
    }
}

crate::hub_documents::hub_store_over_documents!(SqliteHubStore);

#[async_trait]
impl HubDocuments for SqliteHubStore {
    async fn write(&self, op: DeviceOp) -> Result<(), HubStoreError> {
        self.db.db.writer.write(HubOp { hub: self.hub, op }).await
    }

    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        sql: &'static str,
        key: String,
    ) -> Result<Option<T>, HubStoreError> {
        let hub = self.hub;
        self.db
            .db
            .readers
            .read_short(move |c| reader::get_doc(c, table, sql, params![hub, key], &key))
            .await
    }

    async fn collect<T: DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        sql: &'static str,
        args: Vec<Arg<'static>>,
    ) -> Result<Vec<T>, HubStoreError> {
        let args = with_hub(self.hub, &args);
        self.db
            .db
            .readers
            .read(move |c| {
                let params: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
                reader::collect(c, table, sql, params.as_slice())
            })
            .await
    }

    async fn counts(&self) -> Result<(i64, i64), HubStoreError> {
        let hub = self.hub;
        self.db
            .db
            .readers
            .read(move |c| {
                c.prepare_cached(COUNT)
                    .and_then(|mut s| s.query_row([hub], |r| Ok((r.get(0)?, r.get(1)?))))
                    .map_err(HubStoreError::sqlite)
            })
            .await
    }

    async fn c2d_count(&self) -> Result<i64, HubStoreError> {
        let hub = self.hub;
        self.db
            .db
            .readers
            .read(move |c| {
                c.prepare_cached(crate::hub_documents::COUNT_C2D)
                    .and_then(|mut s| s.query_row([hub], |r| r.get(0)))
                    .map_err(HubStoreError::sqlite)
            })
            .await
    }

    async fn append_events(&self, events: &[Arc<TelemetryMessage>]) -> Result<(), HubStoreError> {
        let rows = crate::hub_documents::event_rows(events)?;
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
