//! SQLite persistence of device records, with group commit.
//!
//! Layout: one table `devices(id TEXT PRIMARY KEY, doc TEXT)` where `id` is the lower-cased device
//! id and `doc` the JSON [`DeviceRecord`]. Schema changes are forward-only migrations counted by
//! `PRAGMA user_version`.
//!
//! Why a single writer thread: the provisioning engine upserts a device on every registration, and
//! each upsert must be durable (fsync) before the device gets its answer. One fsync per device
//! caps throughput at the disk's flush rate; a writer that drains everything queued while the
//! previous COMMIT was flushing and writes it in one transaction ("group commit") amortises the
//! fsync over the whole batch. Callers await a oneshot that fires after COMMIT.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use crate::error::HubOpenError;
use crate::record::DeviceRecord;

/// Forward-only migrations; `PRAGMA user_version` = how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: device identities and twins as JSON documents keyed by lower-cased device id.
    "CREATE TABLE devices (
         id  TEXT PRIMARY KEY NOT NULL,
         doc TEXT NOT NULL
     ) WITHOUT ROWID;",
];

/// Most writes applied in one transaction; bounds the latency one batch adds to its first caller.
const MAX_BATCH: usize = 4096;

/// A change to one device row.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// Insert or replace the document of `key`.
    Put { key: String, doc: String },
    /// Remove `key`.
    Delete { key: String },
}

struct WriteReq {
    op: WriteOp,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Handle to the writer thread. Dropping it lets the thread finish the queued writes and exit.
pub(crate) struct Store {
    tx: Option<mpsc::Sender<WriteReq>>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database, migrates it, loads every record, and starts the
    /// writer thread.
    pub(crate) fn open(path: &Path) -> Result<(Self, Vec<(String, DeviceRecord)>), HubOpenError> {
        let db_err = |source| HubOpenError::Database {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(db_err)?;
        // WAL: readers never block the writer; FULL: a COMMIT is on disk when it returns, which is
        // what "durable before the reply" means.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        // Large hubs: keep the B-tree's upper levels and hot leaves cached (64 MiB), read the
        // rest through a memory map rather than a pread per page.
        conn.pragma_update(None, "cache_size", -65536).map_err(db_err)?;
        conn.pragma_update(None, "mmap_size", 1i64 << 31).map_err(db_err)?;
        migrate(&mut conn, path)?;

        let mut records = Vec::new();
        {
            let mut stmt = conn.prepare("SELECT id, doc FROM devices").map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(db_err)?;
            for row in rows {
                let (key, doc) = row.map_err(db_err)?;
                let rec: DeviceRecord = serde_json::from_str(&doc).map_err(|source| HubOpenError::CorruptRecord {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    source,
                })?;
                records.push((key, rec));
            }
        }

        let (tx, rx) = mpsc::channel::<WriteReq>();
        let thread = std::thread::Builder::new()
            .name("dps-hub-db".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(HubOpenError::WriterThread)?;
        tracing::info!(path = %path.display(), devices = records.len(), "hub database opened");
        Ok((
            Self {
                tx: Some(tx),
                thread: Some(thread),
                path: path.to_path_buf(),
            },
            records,
        ))
    }

    /// Queues a write and waits until it is committed (or failed).
    pub(crate) async fn write(&self, op: WriteOp) -> Result<(), String> {
        let (reply, done) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| "hub database is closed".to_string())?
            .send(WriteReq { op, reply })
            .map_err(|_| "hub database writer has stopped".to_string())?;
        done.await.map_err(|_| "hub database writer has stopped".to_string())?
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop after it has committed what was queued.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(path = %self.path.display(), "hub database writer panicked");
            }
        }
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), HubOpenError> {
    let db_err = |source| HubOpenError::Database {
        path: path.to_path_buf(),
        source,
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(HubOpenError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(path = %path.display(), version = i + 1, "hub database migrated");
    }
    Ok(())
}

/// If the previous batch committed less than this long ago, writes are arriving steadily.
const BUSY_GAP: Duration = Duration::from_millis(2);

/// How long a busy writer waits for more writes before it commits: an fsync costs the same for
/// one device as for fifty, and on a fast disk it ends before the next write arrives, so without
/// a pause every device pays a whole fsync. Idle writers never wait. (Same policy as the DPS
/// store's writer.)
const LINGER: Duration = Duration::from_micros(500);

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<WriteReq>) {
    let mut last_commit: Option<Instant> = None;
    let drain = |batch: &mut Vec<WriteReq>| {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        drain(&mut batch);
        if batch.len() < MAX_BATCH && last_commit.is_some_and(|t| t.elapsed() < BUSY_GAP) {
            std::thread::sleep(LINGER);
            drain(&mut batch);
        }
        let outcome = apply(&mut conn, batch.iter().map(|r| &r.op));
        last_commit = Some(Instant::now());
        match outcome {
            Ok(()) => {
                tracing::trace!(writes = batch.len(), "hub database batch committed");
                for r in batch {
                    let _ = r.reply.send(Ok(()));
                }
            }
            Err(e) if batch.len() > 1 => {
                // One bad write must not fail its neighbours: retry each on its own.
                tracing::warn!(error = %e, writes = batch.len(), "hub database batch failed; retrying writes one by one");
                for r in batch {
                    let res = apply(&mut conn, std::iter::once(&r.op)).map_err(|e| e.to_string());
                    let _ = r.reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "hub database write failed");
                for r in batch {
                    let _ = r.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

fn apply<'a>(conn: &mut Connection, ops: impl Iterator<Item = &'a WriteOp>) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO devices (id, doc) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM devices WHERE id = ?1")?;
        for op in ops {
            match op {
                WriteOp::Put { key, doc } => {
                    put.execute(params![key, doc])?;
                }
                WriteOp::Delete { key } => {
                    del.execute(params![key])?;
                }
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                HubOpenError::NewerSchema {
                    found: 99,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn migrates_fresh_database_to_latest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let (store, records) = Store::open(&path).unwrap();
        assert!(records.is_empty());
        drop(store);
        let c = Connection::open(&path).unwrap();
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
}
