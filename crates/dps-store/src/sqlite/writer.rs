//! The single writer thread and its group commit, shared by every SQLite store in this crate
//! (the DPS store's `dps.db`, the hub's `hub.db`).
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every COMMIT costs an fsync
//! (milliseconds on real disks). Serialising callers on a lock would cap registrations at one
//! fsync each. Instead one thread owns the write connection; callers queue operations and the
//! thread executes everything queued (up to [`MAX_BATCH`]) in one transaction, replying to each
//! caller only after COMMIT returned. One fsync then covers the whole batch, and the batch grows
//! on its own with load: while one batch syncs, the next one queues.
//!
//! Each operation runs inside its own SAVEPOINT so a failed precondition (or a constraint error)
//! undoes only that operation's changes and is reported to that caller alone.
//!
//! What an operation does is the store's business ([`Operation`]); this module only batches,
//! commits and answers.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::{BackendError, OpenError};
use crate::stats::{Counters, StoreStats};

/// Most operations executed in one transaction. Bounds the latency a caller at the back of a very
/// long queue adds to the ones before it, and the memory of one batch.
pub(crate) const MAX_BATCH: usize = 512;

/// How many writes may wait for the writer before callers are made to wait to enqueue
/// (backpressure instead of unbounded memory when the disk cannot keep up).
pub(crate) const QUEUE_CAPACITY: usize = 8 * MAX_BATCH;

/// One write a store queues: the SQL it runs inside the batch's transaction.
pub(crate) trait Operation: Send + 'static {
    /// What the store's callers get back.
    type Error: BackendError;

    /// Runs the operation's statements. An `Err` undoes this operation alone (its savepoint is
    /// rolled back) and is returned to its caller; the rest of the batch still commits.
    fn apply(&self, conn: &Connection) -> Result<(), Self::Error>;
}

/// An operation and where to send its outcome.
struct Command<O: Operation> {
    op: O,
    reply: oneshot::Sender<Result<(), O::Error>>,
}

/// The handle of a writer thread: queue operations with [`Writer::write`].
///
/// Dropping it lets the thread finish what is queued, then joins it (briefly blocking the
/// dropping thread), so that once drop returns the write connection is closed.
pub(crate) struct Writer<O: Operation> {
    tx: mpsc::Sender<Command<O>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl<O: Operation> Writer<O> {
    /// Starts the thread `name`, which owns `conn` from now on.
    pub(crate) fn start(conn: Connection, name: &str) -> Result<Self, OpenError> {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn({
                let counters = Arc::clone(&counters);
                move || run(conn, rx, &counters)
            })
            .map_err(OpenError::SpawnWriter)?;
        Ok(Self {
            tx,
            thread: Some(thread),
            counters,
        })
    }

    /// Queues a write and waits for its outcome, which arrives only after its batch committed.
    /// A write whose future is dropped after it was queued still executes.
    pub(crate) async fn write(&self, op: O) -> Result<(), O::Error> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Command { op, reply })
            .await
            .map_err(|_| O::Error::backend("sqlite writer has stopped".into()))?;
        outcome
            .await
            .map_err(|_| O::Error::backend("sqlite writer stopped before committing".into()))?
    }

    /// What the writer has done since it started.
    pub(crate) fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }

    /// Operations waiting in the queue (tests hold the writer still and wait for a batch).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        QUEUE_CAPACITY - self.tx.capacity()
    }
}

impl<O: Operation> Drop for Writer<O> {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once the queue is drained.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("sqlite writer thread panicked");
            }
        }
    }
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
fn run<O: Operation>(conn: Connection, mut rx: mpsc::Receiver<Command<O>>, counters: &Counters) {
    let mut batch: Vec<Command<O>> = Vec::with_capacity(MAX_BATCH);
    let mut last_commit: Option<Instant> = None;
    let drain = |rx: &mut mpsc::Receiver<Command<O>>, batch: &mut Vec<Command<O>>| {
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
        let started = Instant::now();
        let results = execute(&conn, &batch);
        last_commit = Some(Instant::now());
        counters.record_batch(batch.len(), results.is_ok(), started.elapsed());
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
                let e = O::Error::backend(e.to_string());
                for cmd in batch.drain(..) {
                    let _ = cmd.reply.send(Err(e.clone()));
                }
            }
        }
    }
    debug!("store writer stopped");
}

/// One operation's outcome within a committed batch.
type Outcome<O> = Result<(), <O as Operation>::Error>;

/// Runs one batch in one transaction. `Ok` holds each operation's own outcome, all of them
/// durable (the successful ones) once this returns. `Err` means the transaction as a whole failed
/// and was rolled back: every operation in it must report that error, since even a precondition
/// verdict may have depended on an earlier operation of the same batch that is now undone.
fn execute<O: Operation>(conn: &Connection, batch: &[Command<O>]) -> Result<Vec<Outcome<O>>, rusqlite::Error> {
    // An earlier failed ROLLBACK could leave a transaction open; BEGIN would then fail forever.
    if !conn.is_autocommit() {
        warn!("store writer found a transaction left open; rolling it back");
        exec(conn, "ROLLBACK")?;
    }
    exec(conn, "BEGIN IMMEDIATE")?;
    match run_commands(conn, batch) {
        Ok(results) => match exec(conn, "COMMIT") {
            Ok(()) => Ok(results),
            Err(e) => {
                warn!(error = %e, "store COMMIT failed; rolling back the batch");
                rollback(conn);
                Err(e)
            }
        },
        Err(e) => {
            rollback(conn);
            Err(e)
        }
    }
}

/// The per-operation savepoint loop. An `Err` here is a failure of the savepoint machinery
/// itself (or SQLite having already rolled the whole transaction back, as it does on I/O errors
/// and SQLITE_FULL), which dooms the batch.
fn run_commands<O: Operation>(conn: &Connection, batch: &[Command<O>]) -> Result<Vec<Outcome<O>>, rusqlite::Error> {
    let mut results = Vec::with_capacity(batch.len());
    for cmd in batch {
        exec(conn, "SAVEPOINT cmd")?;
        let result = cmd.op.apply(conn);
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
