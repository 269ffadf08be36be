//! Read-only connections (shared by every SQLite store in this crate) and the DPS store's
//! queries.
//!
//! In WAL mode a reader sees the last committed snapshot and never blocks (nor is blocked by) the
//! writer, so reads need no coordination with the writer thread: each read takes a permit, checks
//! out an idle connection (or opens one), runs on tokio's blocking pool, and puts it back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dps_core::StoreError;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::{BackendError, OrBackend};
use crate::documents::{Doc, LIST_BY_GROUP};

/// Reads running at once, and so connections in the pool. Without a bound, a burst of thousands
/// of concurrent reads would grow tokio's blocking pool to hundreds of threads, each opening its
/// own connection; past the core count extra readers only add contention.
pub(crate) const MAX_READERS: usize = 8;

/// How long a statement waits on a lock before failing with SQLITE_BUSY. Readers in WAL mode
/// only meet locks during recovery or a checkpoint truncating the log; the writer meets them
/// only if another process writes the same file.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A checkout pool of read-only connections to one database file.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Held (as an owned permit) by each running read; see [`MAX_READERS`].
    pub(crate) permits: Arc<Semaphore>,
}

impl ReadPool {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::with_capacity(MAX_READERS)),
            permits: Arc::new(Semaphore::new(MAX_READERS)),
        }
    }

    /// Opens one read-only connection. The file (and its WAL) must already exist: the writer
    /// connection creates it first.
    pub(crate) fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        map_file(&conn)?;
        Ok(conn)
    }

    /// Puts a connection in the idle list (used at open to fail early on a bad file).
    pub(crate) fn give(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_READERS {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled connection. Blocking: call from `spawn_blocking`, holding a permit.
    fn with<T, E: BackendError>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect().map_err(E::sqlite)?,
        };
        let result = f(&conn);
        // A connection that just failed at the backend level may be broken; don't keep it.
        if !result.as_ref().is_err_and(E::is_backend) {
            self.give(conn);
        }
        result
    }

    /// Runs a read on a pooled connection on tokio's blocking pool, waiting (async) for a free
    /// reader when [`MAX_READERS`] are busy.
    pub(crate) async fn read<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: BackendError,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let pool = Arc::clone(self);
        let permit = Arc::clone(&pool.permits)
            .acquire_owned()
            .await
            .map_err(|_| E::backend("sqlite read pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let result = pool.with(f);
            drop(permit);
            result
        })
        .await
        .map_err(|e| E::backend(format!("sqlite read task failed: {e}")))?
    }

    /// Runs a short read (a lookup by primary key) right here on the calling task's thread when
    /// a reader is free, else like [`ReadPool::read`]. Such a lookup is a few B-tree page reads
    /// that are almost always in SQLite's page cache — microseconds, less than the two thread
    /// wake-ups a trip through the blocking pool costs. Every registration does several of
    /// these, so the hop mattered. When all readers are busy (long scans), it waits its turn.
    pub(crate) async fn read_short<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: BackendError,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                let result = self.with(f);
                drop(permit);
                result
            }
            Err(_) => self.read(f).await,
        }
    }
}

/// Reads database pages through a shared memory map instead of a `pread` per page: every
/// connection shares the operating system's copy of the file, and a lookup in a store of
/// millions of records costs no system call. (Writes still go to the WAL with `pwrite`.)
pub(crate) fn map_file(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)
}

/// Address space the memory map may use (not memory: pages are the OS page cache's). Larger
/// databases read the rest with `pread`.
const MMAP_BYTES: i64 = 1 << 31;

/// Decodes a stored document; the store's error type says how a corrupt one is reported.
pub(crate) trait Decode: BackendError {
    /// The error for the document of `key` in `table` that does not decode.
    fn undecodable(table: &str, key: &str, error: serde_json::Error) -> Self;
}

impl Decode for StoreError {
    fn undecodable(table: &str, key: &str, e: serde_json::Error) -> Self {
        crate::documents::undecodable(table, key, e)
    }
}

fn decode<T: DeserializeOwned, E: Decode>(table: &str, key: &str, doc: &str) -> Result<T, E> {
    serde_json::from_str(doc).map_err(|e| E::undecodable(table, key, e))
}

/// The document with `key` in `table`, decoded.
pub(crate) fn get<T: DeserializeOwned>(conn: &Connection, table: Doc, key: &str) -> Result<Option<T>, StoreError> {
    get_doc(conn, table.name(), table.get_sql(), &[&key], key)
}

/// The document `sql` (one row, one column) selects from `table` with `params`, decoded; `key`
/// names it in a decoding error.
pub(crate) fn get_doc<T: DeserializeOwned, E: Decode>(
    conn: &Connection,
    table: &str,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    key: &str,
) -> Result<Option<T>, E> {
    let doc: Option<String> = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, |r| r.get(0)).optional())
        .map_err(E::sqlite)?;
    doc.map(|d| decode(table, key, &d)).transpose()
}

/// One page of `table` in key order, strictly after `after` (a lower-cased key).
pub(crate) fn list<T: DeserializeOwned>(
    conn: &Connection,
    table: Doc,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    let (first, next) = table.list_sql();
    let limit = sql_limit(limit);
    match after {
        None => collect(conn, table.name(), first, rusqlite::params![limit]),
        Some(after) => collect(conn, table.name(), next, rusqlite::params![limit, after]),
    }
}

/// One page of the registrations made through `group_key`, in key order.
pub(crate) fn list_by_group<T: DeserializeOwned>(
    conn: &Connection,
    group_key: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    let limit = sql_limit(limit);
    match after {
        None => collect(
            conn,
            Doc::Registrations.name(),
            LIST_BY_GROUP.0,
            rusqlite::params![limit, group_key],
        ),
        Some(after) => collect(
            conn,
            Doc::Registrations.name(),
            LIST_BY_GROUP.1,
            rusqlite::params![limit, group_key, after],
        ),
    }
}

/// Number of registration records.
pub(crate) fn count_registrations(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM registrations")
        .or_backend()?
        .query_row([], |r| r.get(0))
        .or_backend()?;
    u64::try_from(n).map_err(|_| StoreError::backend(format!("negative count {n}")))
}

/// A page size as SQL's `LIMIT` takes it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The documents `sql` selects from `table` as (key, doc) rows, decoded, in row order.
pub(crate) fn collect<T: DeserializeOwned, E: Decode>(
    conn: &Connection,
    table: &str,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<T>, E> {
    let mut stmt = conn.prepare_cached(sql).map_err(E::sqlite)?;
    let mut rows = stmt.query(params).map_err(E::sqlite)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(E::sqlite)? {
        let key: String = row.get(0).map_err(E::sqlite)?;
        let doc: String = row.get(1).map_err(E::sqlite)?;
        out.push(decode(table, &key, &doc)?);
    }
    Ok(out)
}

/// The audit entries `q` selects, as (sequence, JSON).
pub(crate) fn audit_page(
    conn: &Connection,
    q: &crate::documents::AuditQuery,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(&q.sql()).or_backend()?;
    let row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?));
    let rows = match &q.registration_key {
        Some(key) => stmt.query_map(
            rusqlite::params![q.after, q.since, q.until, q.outcome, q.kind, q.limit, key],
            row,
        ),
        None => stmt.query_map(
            rusqlite::params![q.after, q.since, q.until, q.outcome, q.kind, q.limit],
            row,
        ),
    }
    .or_backend()?;
    rows.collect::<Result<Vec<_>, _>>().or_backend()
}
