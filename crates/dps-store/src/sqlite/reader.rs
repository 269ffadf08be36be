//! Read-only connections and the queries that use them.
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

use super::{backend, OrBackend};

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
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect().map_err(backend)?,
        };
        let result = f(&conn);
        // A connection that just failed at the backend level may be broken; don't keep it.
        if !matches!(result, Err(StoreError::Backend(_))) {
            self.give(conn);
        }
        result
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

fn decode<T: DeserializeOwned>(table: Doc, key: &str, doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|e| {
        StoreError::backend(format!(
            "stored document '{key}' in {} does not decode: {e}",
            table.name()
        ))
    })
}

/// The tables a read addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Doc {
    Enrollments,
    Groups,
    Registrations,
    Certificates,
    Intents,
}

impl Doc {
    fn name(self) -> &'static str {
        match self {
            Doc::Enrollments => "enrollments",
            Doc::Groups => "enrollment_groups",
            Doc::Registrations => "registrations",
            Doc::Certificates => "certificates",
            Doc::Intents => "registration_intents",
        }
    }

    fn get_sql(self) -> &'static str {
        match self {
            Doc::Enrollments => "SELECT doc FROM enrollments WHERE key = ?1",
            Doc::Groups => "SELECT doc FROM enrollment_groups WHERE key = ?1",
            Doc::Registrations => "SELECT doc FROM registrations WHERE key = ?1",
            Doc::Certificates => "SELECT doc FROM certificates WHERE key = ?1",
            Doc::Intents => "SELECT doc FROM registration_intents WHERE key = ?1",
        }
    }

    /// (first page, next page) queries; `?1` is the limit, `?2` the `after` key.
    fn list_sql(self) -> (&'static str, &'static str) {
        match self {
            Doc::Enrollments => (
                "SELECT key, doc FROM enrollments ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM enrollments WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Groups => (
                "SELECT key, doc FROM enrollment_groups ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM enrollment_groups WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Registrations => (
                "SELECT key, doc FROM registrations ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM registrations WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Certificates => (
                "SELECT key, doc FROM certificates ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM certificates WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Intents => (
                "SELECT key, doc FROM registration_intents ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM registration_intents WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
        }
    }
}

/// The document with `key` in `table`, decoded.
pub(crate) fn get<T: DeserializeOwned>(conn: &Connection, table: Doc, key: &str) -> Result<Option<T>, StoreError> {
    let doc: Option<String> = conn
        .prepare_cached(table.get_sql())
        .or_backend()?
        .query_row([key], |r| r.get(0))
        .optional()
        .or_backend()?;
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
        None => collect(conn, table, first, rusqlite::params![limit]),
        Some(after) => collect(conn, table, next, rusqlite::params![limit, after]),
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
            Doc::Registrations,
            "SELECT key, doc FROM registrations WHERE group_key = ?2 ORDER BY key LIMIT ?1",
            rusqlite::params![limit, group_key],
        ),
        Some(after) => collect(
            conn,
            Doc::Registrations,
            "SELECT key, doc FROM registrations WHERE group_key = ?2 AND key > ?3 \
             ORDER BY key LIMIT ?1",
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

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn collect<T: DeserializeOwned>(
    conn: &Connection,
    table: Doc,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).or_backend()?;
    let mut rows = stmt.query(params).or_backend()?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().or_backend()? {
        let key: String = row.get(0).or_backend()?;
        let doc: String = row.get(1).or_backend()?;
        out.push(decode(table, &key, &doc)?);
    }
    Ok(out)
}
