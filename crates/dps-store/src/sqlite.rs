//! [`SqliteStore`]: the embedded, single-file [`dps_core::Store`]; [`HubDatabase`] and [`SqliteHubStore`]:
//! the embedded hubs' registries, in a file of their own.
//!
//! Layout, the same for both files: one writer thread owns the only read-write connection and
//! group-commits queued writes (module `writer`); reads run on a small pool of read-only
//! connections on tokio's blocking pool (module `reader`); each file's schema is brought up to
//! date by the same forward-only migrations (module `migrations`). WAL journaling is what lets
//! reads and writes proceed side by side. What is specific to a store is only its SQL: the DPS
//! store's writes in module `commands`, the hub's in module `hub`.

mod commands;
mod events;
mod hub;
mod migrations;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dps_core::StoreError;
use rusqlite::{Connection, OpenFlags};
use tracing::info;

use crate::documents::{Doc, Documents, Op};
pub use crate::stats::StoreStats;
pub use hub::{HubDatabase, HubSlot, SqliteHubStore};
use migrations::Schema;
pub use migrations::{
    APPLICATION_ID, HUB_APPLICATION_ID, HUB_SCHEMA_VERSION, SCHEMA_VERSION, TELEMETRY_APPLICATION_ID,
};
use reader::ReadPool;
use serde::de::DeserializeOwned;
use writer::Writer;

/// Why [`SqliteStore::open`] failed. Nothing is left half-done: a failed migration is rolled back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory that should hold the database could not be created (permissions, a file in
    /// the way, a read-only filesystem).
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SQLite could not open or create the file (permissions, not a database, corrupt header).
    #[error("cannot open store database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A connection setting (`PRAGMA`) was refused, typically because the file is locked by
    /// another process or the filesystem does not support what it needs.
    #[error("cannot configure store connection ({setting}): {source}")]
    Configure {
        /// The setting being applied.
        setting: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database would not switch to WAL journaling (some network filesystems cannot share
    /// the memory index it needs). Concurrent readers beside the writer depend on it.
    #[error("store database refused WAL journaling (journal mode is '{mode}')")]
    NotWal {
        /// The journal mode SQLite reported instead.
        mode: String,
    },
    /// A schema migration failed; its transaction was rolled back and the file is unchanged.
    #[error("store migration to schema version {version} failed: {source}")]
    Migration {
        /// The schema version being applied (0 while reading the current version).
        version: u32,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file was written by a newer `dps` with a schema this build does not know; opening it
    /// could lose data, so it is refused rather than downgraded.
    #[error("{database} database has schema version {found}; this build supports up to {supported}")]
    SchemaTooNew {
        /// Which kind of file was being opened ("store" or "hub").
        database: &'static str,
        /// `PRAGMA user_version` found in the file.
        found: u32,
        /// [`SCHEMA_VERSION`] (or [`HUB_SCHEMA_VERSION`]) of this build.
        supported: u32,
    },
    /// The file is some other application's SQLite database, or the other kind of dps file:
    /// its `application_id` is not [`APPLICATION_ID`] (or [`HUB_APPLICATION_ID`]), or it has a
    /// schema version without one (e.g. the hub's `hub.db` opened as the DPS store).
    #[error(
        "not a dps {database} database (application_id {application_id:#x}, \
         user_version {user_version})"
    )]
    ForeignDatabase {
        /// Which kind of file was being opened ("store" or "hub").
        database: &'static str,
        /// `PRAGMA application_id` found.
        application_id: i64,
        /// `PRAGMA user_version` found.
        user_version: i64,
    },
    /// A hub registry an earlier build kept in a file of its own (`hub-2.db`) could not be moved
    /// into the shared `hub.db` (not a hub registry, corrupt, or the disk is full). Nothing was
    /// moved: the transaction was rolled back and the file is still there.
    #[error("cannot move the hub registry {path} into the shared hub database: {source}")]
    MergeHub {
        /// The hub's own file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A hub registry was moved into the shared `hub.db`, but its old file could not be removed
    /// (permissions). Nothing is served: the next start would move it again, overwriting what the
    /// hub wrote since. Remove the file, then start again.
    #[error("moved the hub registry into the shared hub database but cannot remove {path}: {source}")]
    RemoveMergedHub {
        /// The file (or its `-wal`/`-shm` companion).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The operating system would not start the writer thread.
    #[error("cannot start store writer thread: {0}")]
    SpawnWriter(#[source] std::io::Error),
}

/// The error type of a store's callers, as the shared writer and read pool need it: they report
/// SQLite failures, and their own (writer stopped, read task failed), in each store's terms.
pub(crate) trait BackendError: Clone + Send + 'static {
    /// A failure of the database or of the machinery around it, described by `message`.
    fn backend(message: String) -> Self;

    /// Whether this is such a failure (the connection that produced it may be broken), as
    /// opposed to an answer like "not found" or "etag mismatch".
    fn is_backend(&self) -> bool;

    /// A SQLite error, kept as the failure's typed source.
    fn sqlite(e: rusqlite::Error) -> Self;
}

impl BackendError for StoreError {
    fn backend(message: String) -> Self {
        StoreError::backend(message)
    }

    fn sqlite(e: rusqlite::Error) -> Self {
        StoreError::backend(e)
    }

    fn is_backend(&self) -> bool {
        matches!(self, StoreError::Backend(_))
    }
}

/// Maps a SQLite error to the engine's backend error.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::sqlite(e)
}

/// `?`-friendly conversion of SQLite results (the orphan rule forbids `From`).
pub(crate) trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T> OrBackend<T> for Result<T, rusqlite::Error> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(backend)
    }
}

/// One open SQLite file: its writer thread (running operations of type `O`), its read pool and
/// its path. Each store is one of these plus its SQL.
struct Database<O: writer::Operation> {
    writer: Writer<O>,
    readers: Arc<ReadPool>,
    path: PathBuf,
}

impl<O: writer::Operation> Database<O> {
    /// Opens (creating if needed, with its parent directory) the file at `path`, brings it to
    /// `schema`'s version and starts the writer thread `writer_name`.
    fn open(path: &Path, schema: &Schema, writer_name: &str) -> Result<Self, OpenError> {
        Self::open_prepared(path, schema, writer_name, |_| Ok(()))
    }

    /// [`Database::open`], with `prepare` run on the write connection after the migrations and
    /// before the writer starts (work a migration leaves to Rust).
    fn open_prepared(
        path: &Path,
        schema: &Schema,
        writer_name: &str,
        prepare: impl FnOnce(&mut Connection) -> Result<(), OpenError>,
    ) -> Result<Self, OpenError> {
        let (mut conn, readers) = open_file(path, schema)?;
        prepare(&mut conn)?;
        Ok(Database {
            writer: Writer::start(conn, writer_name)?,
            readers,
            path: path.to_owned(),
        })
    }
}

/// Opens (creating if needed, with its parent directory) the file at `path`, configures the
/// write connection, and brings its schema up to date: the write connection (for the writer
/// thread) and the read pool.
fn open_file(path: &Path, schema: &Schema) -> Result<(Connection, Arc<ReadPool>), OpenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| OpenError::Open {
        path: path.to_owned(),
        source,
    })?;
    configure_writer(&conn)?;
    let applied = migrations::apply(&mut conn, schema)?;

    let readers = Arc::new(ReadPool::new(path));
    // Open one reader now so a file readers cannot use fails here, not on the first GET.
    let first = readers.connect().map_err(|source| OpenError::Open {
        path: path.to_owned(),
        source,
    })?;
    readers.give(first);
    info!(
        path = %path.display(),
        database = schema.database,
        schema = schema.version(),
        migrations_applied = applied,
        "opened sqlite database"
    );
    Ok((conn, readers))
}

/// A [`dps_core::Store`] in one SQLite file, safe to share across tasks (`Arc<SqliteStore>`).
///
/// Writes are durable when they return: the writer commits with `synchronous=FULL`, so the WAL
/// is fsynced at every COMMIT. That matters because the engine tells a device "assigned" only
/// after `commit_registration` returns; with `synchronous=NORMAL` a power loss could roll back
/// a commit the device was already told about, and the device's next poll or re-registration
/// would find no record of the assignment it holds.
///
/// Writes are queued to one writer thread and group-committed; see [`StoreStats`]. A write whose
/// future is dropped after it was queued still executes. Reads never wait for writes.
///
/// Dropping the store lets the writer finish what is queued, then joins it (briefly blocking the
/// dropping thread), so that once drop returns the file is closed and can be reopened, copied or
/// deleted (reads still in flight keep their own connection until they finish).
pub struct SqliteStore {
    db: Database<Op>,
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent directory) the store at `path`, brings its
    /// schema up to date and starts the writer thread. Does not need a tokio runtime; the
    /// [`dps_core::Store`] methods do.
    pub fn open(path: &Path) -> Result<SqliteStore, OpenError> {
        Ok(SqliteStore {
            db: Database::open(path, &migrations::STORE, "dps-store-writer")?,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// What the writer has done since open.
    pub fn stats(&self) -> StoreStats {
        self.db.writer.stats()
    }

    /// Number of registration records (a full count; meant for benchmarks and `dps info`).
    pub async fn count_registrations(&self) -> Result<u64, StoreError> {
        self.db.readers.read(reader::count_registrations).await
    }
}

/// Settings of the read-write connection.
fn configure_writer(conn: &Connection) -> Result<(), OpenError> {
    let fail = |setting| move |source| OpenError::Configure { setting, source };
    conn.busy_timeout(reader::BUSY_TIMEOUT).map_err(fail("busy_timeout"))?;
    // WAL: readers see the last commit while the writer writes, and a commit appends to the log
    // (one sequential fsync) instead of rewriting pages in place. Persistent in the file.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
        .map_err(fail("journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::NotWal { mode });
    }
    // FULL: fsync the WAL at every commit, so an acknowledged registration survives power loss
    // (see `SqliteStore`). Group commit is what keeps this affordable.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(fail("synchronous"))?;
    // Statement journals and sorts for the paging queries stay off disk.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(fail("temp_store"))?;
    conn.set_prepared_statement_cache_capacity(32);
    // A registration touches a random leaf of a table that grows to millions of rows: keep the
    // interior pages and the hot leaves in SQLite's own cache (64 MiB) so an insert into a large
    // store costs no more page reads than into an empty one.
    conn.pragma_update(None, "cache_size", -65536)
        .map_err(fail("cache_size"))?;
    reader::map_file(conn).map_err(fail("mmap_size"))?;
    // Only the commit-failure test uses foreign keys (a deferred violation makes COMMIT fail).
    #[cfg(test)]
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(fail("foreign_keys"))?;
    Ok(())
}

crate::documents::store_over_documents!(SqliteStore);

#[async_trait]
impl Documents for SqliteStore {
    async fn write(&self, op: Op) -> Result<(), StoreError> {
        self.db.writer.write(op).await
    }

    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        table: Doc,
        key: String,
    ) -> Result<Option<T>, StoreError> {
        self.db.readers.read_short(move |c| reader::get(c, table, &key)).await
    }

    async fn list<T: DeserializeOwned + Send + 'static>(
        &self,
        table: Doc,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        self.db
            .readers
            .read(move |c| reader::list(c, table, after.as_deref(), limit))
            .await
    }

    async fn list_by_group<T: DeserializeOwned + Send + 'static>(
        &self,
        group: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        self.db
            .readers
            .read(move |c| reader::list_by_group(c, &group, after.as_deref(), limit))
            .await
    }

    async fn audit_page(&self, query: crate::documents::AuditQuery) -> Result<Vec<(i64, String)>, StoreError> {
        self.db.readers.read(move |c| reader::audit_page(c, &query)).await
    }
}
