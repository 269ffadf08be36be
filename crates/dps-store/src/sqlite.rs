//! [`SqliteStore`]: the embedded, single-file [`Store`].
//!
//! Layout: one writer thread owns the only read-write connection and group-commits queued writes
//! (module `writer`); reads run on a small pool of read-only connections on tokio's blocking pool
//! (module `reader`). WAL journaling is what lets the two proceed side by side.

mod migrations;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use dps_core::{CaCertificateRecord, RegistrationIntent, RegistrationRecord, Store, StoreError, WriteCondition};
use dps_proto::model::service::{EnrollmentGroup, IndividualEnrollment};
use dps_proto::registration_id::key;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

pub use migrations::{APPLICATION_ID, SCHEMA_VERSION};
use reader::{Doc, ReadPool};
use writer::{Command, Op, Table};

/// How many writes may wait for the writer before callers are made to wait to enqueue
/// (backpressure instead of unbounded memory when the disk cannot keep up).
const QUEUE_CAPACITY: usize = 8 * writer::MAX_BATCH;

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
    #[error("store database has schema version {found}; this build supports up to {supported}")]
    SchemaTooNew {
        /// `PRAGMA user_version` found in the file.
        found: u32,
        /// [`SCHEMA_VERSION`] of this build.
        supported: u32,
    },
    /// The file is some other application's SQLite database (its `application_id` is not
    /// [`APPLICATION_ID`], or it has a schema version without one), e.g. the hub's `hub.db`.
    #[error(
        "not a dps store database (application_id {application_id:#x}, \
         user_version {user_version})"
    )]
    ForeignDatabase {
        /// `PRAGMA application_id` found.
        application_id: i64,
        /// `PRAGMA user_version` found.
        user_version: i64,
    },
    /// The operating system would not start the writer thread.
    #[error("cannot start store writer thread: {0}")]
    SpawnWriter(#[source] std::io::Error),
}

/// Counters of the writer's work, for benchmarks and metrics. Monotonic since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed (each one fsync of the WAL).
    pub transactions: u64,
    /// Write commands in committed transactions, including ones that failed their own
    /// precondition (they still rode in the batch).
    pub commands: u64,
    /// Transactions that failed as a whole (every command in them got [`StoreError::Backend`]).
    pub failed_transactions: u64,
    /// The most commands one committed transaction carried.
    pub largest_batch: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    transactions: AtomicU64,
    commands: AtomicU64,
    failed_transactions: AtomicU64,
    largest_batch: AtomicU64,
}

/// Maps a SQLite error to the engine's backend error.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
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

/// A [`Store`] in one SQLite file, safe to share across tasks (`Arc<SqliteStore>`).
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
    tx: mpsc::Sender<Command>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<ReadPool>,
    counters: Arc<Counters>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent directory) the store at `path`, brings its
    /// schema up to date and starts the writer thread. Does not need a tokio runtime; the
    /// [`Store`] methods do.
    pub fn open(path: &Path) -> Result<SqliteStore, OpenError> {
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
        let applied = migrations::apply(&mut conn)?;

        let readers = Arc::new(ReadPool::new(path));
        // Open one reader now so a file readers cannot use fails here, not on the first GET.
        let first = readers.connect().map_err(|source| OpenError::Open {
            path: path.to_owned(),
            source,
        })?;
        readers.give(first);

        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("dps-store-writer".into())
            .spawn({
                let counters = Arc::clone(&counters);
                move || writer::run(conn, rx, counters)
            })
            .map_err(OpenError::SpawnWriter)?;
        info!(path = %path.display(), schema = SCHEMA_VERSION, migrations_applied = applied, "opened sqlite store");
        Ok(SqliteStore {
            tx,
            writer: Some(writer),
            readers,
            counters,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the writer has done since open.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            commands: c.commands.load(Ordering::Relaxed),
            failed_transactions: c.failed_transactions.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// Number of registration records (a full count; meant for benchmarks and `dps info`).
    pub async fn count_registrations(&self) -> Result<u64, StoreError> {
        self.read(reader::count_registrations).await
    }

    /// Queues a write and waits for its outcome, which arrives only after its batch committed.
    async fn write(&self, op: Op) -> Result<(), StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Command { op, reply })
            .await
            .map_err(|_| StoreError::backend("sqlite store writer has stopped"))?;
        outcome
            .await
            .map_err(|_| StoreError::backend("sqlite store writer stopped before committing"))?
    }

    /// Runs a read on a pooled read-only connection on tokio's blocking pool, waiting (async)
    /// for a free reader when [`reader::MAX_READERS`] are busy.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = Arc::clone(&self.readers);
        let permit = Arc::clone(&pool.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::backend("sqlite store read pool is closed"))?;
        tokio::task::spawn_blocking(move || {
            let result = pool.with(f);
            drop(permit);
            result
        })
        .await
        .map_err(StoreError::backend)?
    }

    /// Fetches one document by primary key. Such a lookup is a few B-tree page reads that are
    /// almost always in SQLite's page cache — microseconds, less than the two thread wake-ups a
    /// trip through the blocking pool costs — so it runs right here on the calling task's thread.
    /// Every registration does two of these, so the hop mattered. When all readers are busy
    /// (long scans), it waits its turn on the blocking pool like any other read.
    async fn get_doc<T>(&self, table: Doc, id: &str) -> Result<Option<T>, StoreError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let k = key(id);
        match Arc::clone(&self.readers.permits).try_acquire_owned() {
            Ok(permit) => {
                let result = self.readers.with(|c| reader::get(c, table, &k));
                drop(permit);
                result
            }
            Err(_) => self.read(move |c| reader::get(c, table, &k)).await,
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once the queue is drained.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("sqlite store writer thread panicked");
            }
        }
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

fn doc<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::backend)
}

#[async_trait]
impl Store for SqliteStore {
    async fn get_enrollment(&self, id: &str) -> Result<Option<IndividualEnrollment>, StoreError> {
        self.get_doc(Doc::Enrollments, id).await
    }

    async fn put_enrollment(&self, e: &IndividualEnrollment, cond: &WriteCondition) -> Result<(), StoreError> {
        self.write(Op::Put {
            table: Table::Enrollments,
            key: key(&e.registration_id),
            etag: e.etag.clone(),
            doc: doc(e)?,
            cond: cond.clone(),
        })
        .await
    }

    async fn delete_enrollment(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        self.write(Op::Delete {
            table: Table::Enrollments,
            key: key(id),
            cond: cond.clone(),
        })
        .await
    }

    async fn list_enrollments(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        let after = after.map(key);
        self.read(move |c| reader::list(c, Doc::Enrollments, after.as_deref(), limit))
            .await
    }

    async fn get_group(&self, id: &str) -> Result<Option<EnrollmentGroup>, StoreError> {
        self.get_doc(Doc::Groups, id).await
    }

    async fn put_group(&self, g: &EnrollmentGroup, cond: &WriteCondition) -> Result<(), StoreError> {
        self.write(Op::Put {
            table: Table::Groups,
            key: key(&g.enrollment_group_id),
            etag: g.etag.clone(),
            doc: doc(g)?,
            cond: cond.clone(),
        })
        .await
    }

    async fn delete_group(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        self.write(Op::Delete {
            table: Table::Groups,
            key: key(id),
            cond: cond.clone(),
        })
        .await
    }

    async fn list_groups(&self, after: Option<&str>, limit: usize) -> Result<Vec<EnrollmentGroup>, StoreError> {
        let after = after.map(key);
        self.read(move |c| reader::list(c, Doc::Groups, after.as_deref(), limit))
            .await
    }

    async fn get_registration(&self, id: &str) -> Result<Option<RegistrationRecord>, StoreError> {
        self.get_doc(Doc::Registrations, id).await
    }

    async fn commit_registration(&self, r: &RegistrationRecord) -> Result<(), StoreError> {
        self.write(Op::CommitRegistration {
            key: r.key(),
            group_key: r.enrollment_group_id.as_deref().map(key),
            etag: r.state.etag.clone(),
            doc: doc(r)?,
            operation_id: r.operation_id.clone(),
        })
        .await
    }

    async fn delete_registration(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        self.write(Op::DeleteRegistration {
            key: key(id),
            cond: cond.clone(),
        })
        .await
    }

    async fn list_registrations_by_group(
        &self,
        group_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        let group = key(group_id);
        let after = after.map(key);
        self.read(move |c| reader::list_by_group(c, &group, after.as_deref(), limit))
            .await
    }

    async fn put_registration_intent(&self, intent: &RegistrationIntent) -> Result<(), StoreError> {
        self.write(Op::PutIntent {
            operation_id: intent.operation_id.clone(),
            doc: doc(intent)?,
        })
        .await
    }

    async fn delete_registration_intent(&self, operation_id: &str) -> Result<(), StoreError> {
        self.write(Op::DeleteIntent {
            operation_id: operation_id.to_string(),
        })
        .await
    }

    async fn list_registration_intents(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationIntent>, StoreError> {
        let after = after.map(str::to_string);
        self.read(move |c| reader::list(c, Doc::Intents, after.as_deref(), limit))
            .await
    }

    async fn get_certificate(&self, name: &str) -> Result<Option<CaCertificateRecord>, StoreError> {
        self.get_doc(Doc::Certificates, name).await
    }

    async fn put_certificate(&self, cert: &CaCertificateRecord, cond: &WriteCondition) -> Result<(), StoreError> {
        self.write(Op::Put {
            table: Table::Certificates,
            key: key(&cert.name),
            etag: Some(cert.etag.clone()),
            doc: doc(cert)?,
            cond: cond.clone(),
        })
        .await
    }

    async fn delete_certificate(&self, name: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        self.write(Op::Delete {
            table: Table::Certificates,
            key: key(name),
            cond: cond.clone(),
        })
        .await
    }

    async fn list_certificates(&self) -> Result<Vec<CaCertificateRecord>, StoreError> {
        self.read(move |c| reader::list(c, Doc::Certificates, None, 1000)).await
    }
}
