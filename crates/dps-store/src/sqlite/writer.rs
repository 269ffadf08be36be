//! The single writer thread and its group commit.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every COMMIT costs an fsync
//! (milliseconds on real disks). Serialising callers on a lock would cap registrations at one
//! fsync each. Instead one thread owns the write connection; callers queue [`Command`]s and the
//! thread executes everything queued (up to [`MAX_BATCH`]) in one transaction, replying to each
//! caller only after COMMIT returned. One fsync then covers the whole batch, and the batch grows
//! on its own with load: while one batch syncs, the next one queues.
//!
//! Each command runs inside its own SAVEPOINT so a failed precondition (or a constraint error)
//! undoes only that command's changes and is reported to that caller alone.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dps_core::{StoreError, WriteCondition};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::{backend, Counters, OrBackend};

/// Most commands executed in one transaction. Bounds the latency a caller at the back of a very
/// long queue adds to the ones before it, and the memory of one batch.
pub(crate) const MAX_BATCH: usize = 512;

/// A write and where to send its outcome.
pub(crate) struct Command {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The service-managed document tables (conditional put and delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Enrollments,
    Groups,
    Certificates,
}

impl Table {
    fn select_etag(self) -> &'static str {
        match self {
            Table::Enrollments => "SELECT etag FROM enrollments WHERE key = ?1",
            Table::Groups => "SELECT etag FROM enrollment_groups WHERE key = ?1",
            Table::Certificates => "SELECT etag FROM certificates WHERE key = ?1",
        }
    }

    fn upsert(self) -> &'static str {
        match self {
            Table::Enrollments => {
                "INSERT INTO enrollments (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::Groups => {
                "INSERT INTO enrollment_groups (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::Certificates => {
                "INSERT INTO certificates (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
        }
    }

    fn delete(self) -> &'static str {
        match self {
            Table::Enrollments => "DELETE FROM enrollments WHERE key = ?1",
            Table::Groups => "DELETE FROM enrollment_groups WHERE key = ?1",
            Table::Certificates => "DELETE FROM certificates WHERE key = ?1",
        }
    }
}

const SELECT_REGISTRATION_ETAG: &str = "SELECT etag FROM registrations WHERE key = ?1";
const DELETE_REGISTRATION: &str = "DELETE FROM registrations WHERE key = ?1";
const UPSERT_INTENT: &str = "INSERT INTO registration_intents (key, doc) VALUES (?1, ?2) \
     ON CONFLICT (key) DO UPDATE SET doc = excluded.doc";
const DELETE_INTENT: &str = "DELETE FROM registration_intents WHERE key = ?1";
const UPSERT_REGISTRATION: &str = "INSERT INTO registrations (key, group_key, etag, doc) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET \
     group_key = excluded.group_key, etag = excluded.etag, doc = excluded.doc";

/// One write. Documents arrive already serialised: JSON encoding runs on the callers' threads,
/// in parallel, keeping the single writer's critical path to SQL only.
pub(crate) enum Op {
    /// Conditional create/replace of an enrollment, group or CA certificate.
    Put {
        table: Table,
        key: String,
        etag: Option<String>,
        doc: String,
        cond: WriteCondition,
    },
    /// Conditional delete; deleting an enrollment also deletes the registration with its key.
    Delete {
        table: Table,
        key: String,
        cond: WriteCondition,
    },
    /// Conditional delete of a registration record.
    DeleteRegistration { key: String, cond: WriteCondition },
    /// Unconditional upsert of a registration record, removing its operation's intent.
    CommitRegistration {
        key: String,
        group_key: Option<String>,
        etag: Option<String>,
        doc: String,
        operation_id: Option<String>,
    },
    /// Unconditional upsert of a registration intent (keyed by operation id).
    PutIntent { operation_id: String, doc: String },
    /// Removal of a registration intent; absent is fine.
    DeleteIntent { operation_id: String },
    /// Test hook: tells the test it is running, then blocks the writer (inside its transaction)
    /// until released, so the test can queue a batch deterministically.
    #[cfg(test)]
    Pause {
        reached: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    },
    /// Test hook: writes a registration row, then fails, to prove the savepoint undoes it.
    #[cfg(test)]
    WriteThenFail { key: String },
    /// Test hook: leaves a deferred foreign-key violation so that COMMIT itself fails.
    #[cfg(test)]
    PoisonCommit,
}

/// If the previous batch committed less than this long ago, writes are arriving steadily.
const BUSY_GAP: Duration = Duration::from_millis(2);

/// How long a busy writer waits for more writes before it commits. An fsync costs the same for
/// one registration as for fifty; on a fast disk it finishes before the next write arrives, so
/// without this pause every batch holds one write and each registration pays a whole fsync. A
/// fraction of a millisecond lets several devices share it, at a latency cost far below a
/// network round trip. Idle writers (the first write after a quiet spell) never wait.
const LINGER: Duration = Duration::from_micros(500);

/// The writer thread's loop; returns when every sender is gone and the queue is drained.
pub(crate) fn run(conn: Connection, mut rx: mpsc::Receiver<Command>, counters: Arc<Counters>) {
    let mut batch: Vec<Command> = Vec::with_capacity(MAX_BATCH);
    let mut last_commit: Option<Instant> = None;
    let drain = |rx: &mut mpsc::Receiver<Command>, batch: &mut Vec<Command>| {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
    };
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch);
        if batch.len() < MAX_BATCH && last_commit.is_some_and(|t| t.elapsed() < BUSY_GAP) {
            std::thread::sleep(LINGER);
            drain(&mut rx, &mut batch);
        }
        let results = execute(&conn, &batch);
        last_commit = Some(Instant::now());
        counters.record_batch(batch.len(), results.is_ok());
        match results {
            Ok(results) => {
                debug!(commands = batch.len(), "store batch committed");
                for (cmd, result) in batch.drain(..).zip(results) {
                    // The caller may have given up waiting; its write stands regardless.
                    let _ = cmd.reply.send(result);
                }
            }
            Err(e) => {
                error!(commands = batch.len(), error = %e, "store batch failed; nothing written");
                for cmd in batch.drain(..) {
                    let _ = cmd.reply.send(Err(e.clone()));
                }
            }
        }
    }
    debug!("store writer stopped");
}

/// Runs one batch in one transaction. `Ok` holds each command's own outcome, all of them durable
/// (the successful ones) once this returns. `Err` means the transaction as a whole failed and was
/// rolled back: every command in it must report that error, since even a precondition verdict
/// may have depended on an earlier command of the same batch that is now undone.
fn execute(conn: &Connection, batch: &[Command]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    // An earlier failed ROLLBACK could leave a transaction open; BEGIN would then fail forever.
    if !conn.is_autocommit() {
        warn!("store writer found a transaction left open; rolling it back");
        exec(conn, "ROLLBACK").or_backend()?;
    }
    exec(conn, "BEGIN IMMEDIATE").or_backend()?;
    match run_commands(conn, batch) {
        Ok(results) => match exec(conn, "COMMIT") {
            Ok(()) => Ok(results),
            Err(e) => {
                warn!(error = %e, "store COMMIT failed; rolling back the batch");
                rollback(conn);
                Err(backend(e))
            }
        },
        Err(e) => {
            rollback(conn);
            Err(backend(e))
        }
    }
}

/// The per-command savepoint loop. An `Err` here is a failure of the savepoint machinery itself
/// (or SQLite having already rolled the whole transaction back, as it does on I/O errors and
/// SQLITE_FULL), which dooms the batch.
fn run_commands(conn: &Connection, batch: &[Command]) -> Result<Vec<Result<(), StoreError>>, rusqlite::Error> {
    let mut results = Vec::with_capacity(batch.len());
    for cmd in batch {
        exec(conn, "SAVEPOINT cmd")?;
        let result = apply(conn, &cmd.op);
        if result.is_err() {
            exec(conn, "ROLLBACK TO cmd")?;
        }
        exec(conn, "RELEASE cmd")?;
        results.push(result);
    }
    Ok(results)
}

fn rollback(conn: &Connection) {
    if conn.is_autocommit() {
        return; // SQLite already rolled back (I/O error, SQLITE_FULL, ...).
    }
    if let Err(e) = exec(conn, "ROLLBACK") {
        // The next batch retries the rollback before BEGIN.
        error!(error = %e, "store ROLLBACK failed");
    }
}

fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// The stored etag: `None` if there is no row, `Some("")` for a row without one (so a create-only
/// PUT still sees it as existing).
fn current_etag(conn: &Connection, select: &str, key: &str) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(select)
        .or_backend()?
        .query_row([key], |r| r.get::<_, Option<String>>(0))
        .optional()
        .or_backend()
        .map(|row| row.map(Option::unwrap_or_default))
}

fn apply(conn: &Connection, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Put {
            table,
            key,
            etag,
            doc,
            cond,
        } => {
            cond.check_put(current_etag(conn, table.select_etag(), key)?.as_deref())?;
            conn.prepare_cached(table.upsert())
                .or_backend()?
                .execute(params![key, etag, doc])
                .or_backend()?;
        }
        Op::Delete { table, key, cond } => {
            cond.check_delete(current_etag(conn, table.select_etag(), key)?.as_deref())?;
            conn.prepare_cached(table.delete())
                .or_backend()?
                .execute([key])
                .or_backend()?;
            if *table == Table::Enrollments {
                // An individual enrollment's registration record goes with it (same key).
                conn.prepare_cached(DELETE_REGISTRATION)
                    .or_backend()?
                    .execute([key])
                    .or_backend()?;
            }
        }
        Op::DeleteRegistration { key, cond } => {
            cond.check_delete(current_etag(conn, SELECT_REGISTRATION_ETAG, key)?.as_deref())?;
            conn.prepare_cached(DELETE_REGISTRATION)
                .or_backend()?
                .execute([key])
                .or_backend()?;
        }
        Op::CommitRegistration {
            key,
            group_key,
            etag,
            doc,
            operation_id,
        } => {
            conn.prepare_cached(UPSERT_REGISTRATION)
                .or_backend()?
                .execute(params![key, group_key, etag, doc])
                .or_backend()?;
            if let Some(op) = operation_id {
                conn.prepare_cached(DELETE_INTENT)
                    .or_backend()?
                    .execute([op])
                    .or_backend()?;
            }
        }
        Op::PutIntent { operation_id, doc } => {
            conn.prepare_cached(UPSERT_INTENT)
                .or_backend()?
                .execute(params![operation_id, doc])
                .or_backend()?;
        }
        Op::DeleteIntent { operation_id } => {
            conn.prepare_cached(DELETE_INTENT)
                .or_backend()?
                .execute([operation_id])
                .or_backend()?;
        }
        #[cfg(test)]
        Op::Pause { reached, release } => {
            let _ = reached.send(());
            let _ = release.recv();
        }
        #[cfg(test)]
        Op::WriteThenFail { key } => {
            conn.prepare_cached(UPSERT_REGISTRATION)
                .or_backend()?
                .execute(params![key, None::<String>, None::<String>, "{}"])
                .or_backend()?;
            return Err(StoreError::backend("injected failure"));
        }
        #[cfg(test)]
        Op::PoisonCommit => {
            conn.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS poison_parent (id INTEGER PRIMARY KEY);
                 CREATE TEMP TABLE IF NOT EXISTS poison_child (
                     parent INTEGER REFERENCES poison_parent (id) DEFERRABLE INITIALLY DEFERRED);
                 INSERT INTO poison_child (parent) VALUES (42);",
            )
            .or_backend()?;
        }
    }
    Ok(())
}

impl Counters {
    fn record_batch(&self, commands: usize, committed: bool) {
        let n = commands as u64;
        if committed {
            self.transactions.fetch_add(1, Ordering::Relaxed);
            self.commands.fetch_add(n, Ordering::Relaxed);
            self.largest_batch.fetch_max(n, Ordering::Relaxed);
        } else {
            self.failed_transactions.fetch_add(1, Ordering::Relaxed);
        }
    }
}
