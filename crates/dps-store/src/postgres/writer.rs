//! The PostgreSQL store's writer task and its group commit.
//!
//! As with SQLite (`sqlite::writer`), callers queue writes and one task per node runs
//! everything queued (up to [`MAX_BATCH`]) in one transaction on a connection of its own,
//! answering each caller only after COMMIT returned: under load one commit (one WAL flush on the
//! server) covers many registrations, and the batch grows by itself while the previous one
//! commits.
//!
//! A write's precondition verdict (etag mismatch, already exists) is computed from what it
//! read, so it does not disturb the transaction. A statement that fails (a constraint, a
//! serialization failure, a lost connection) aborts the whole transaction in PostgreSQL; the
//! batch is then rolled back and each of its writes retried alone, so one bad write fails alone.
//! A lost connection is replaced from the pool on the next batch.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::hub_documents::Statement;
use crate::stats::{Counters, StoreStats};

/// One write a PostgreSQL store queues: what it does inside the batch's transaction.
#[async_trait]
pub(super) trait Operation: Send + Sync + 'static {
    /// What the store's callers get back.
    type Error: Clone + Send + 'static;

    /// A failure of the database (statement refused, writer stopped), as callers see it.
    fn backend(e: String) -> Self::Error;

    /// The database cannot be reached now (no connection, connection lost, server shutting
    /// down; [`super::is_unavailable`]), as callers see it: by default like any failure.
    fn unavailable(e: String) -> Self::Error {
        Self::backend(e)
    }

    /// `e`, which failed this write's transaction, as callers see it: by default told apart by
    /// [`super::is_unavailable`].
    fn failure(&self, e: &tokio_postgres::Error) -> Self::Error {
        match super::is_unavailable(e) {
            true => Self::unavailable(super::describe(e)),
            false => Self::backend(super::describe(e)),
        }
    }

    /// The write's statements when they are known up front and it has no verdict of its own
    /// (the registration path's upserts): such writes are sent without waiting for each answer
    /// (pipelined on the connection, which still runs them in order). `None`: run [`apply`].
    ///
    /// [`apply`]: Operation::apply
    fn pipelined(&self) -> Option<Vec<Statement<'_>>> {
        None
    }

    /// Runs the write's statements: the outer `Err` is a failed statement (the transaction is
    /// lost), the inner result the write's own verdict (a precondition that did not hold).
    async fn apply(&self, tx: &Transaction<'_>) -> Result<Result<(), Self::Error>, tokio_postgres::Error>;

    /// Applies the run of writes at the front of `ops` together, for writes whose statements
    /// need answers from the database first (numbers it hands out): one round trip for the
    /// run's questions, one pipeline for its statements. `Some` holds the outcomes of the writes
    /// it took, at least one, from the first; `None` (the default) applies them one by one.
    async fn apply_run(
        tx: &Transaction<'_>,
        ops: &[&Self],
    ) -> Result<Option<Vec<Result<(), Self::Error>>>, tokio_postgres::Error>
    where
        Self: Sized,
    {
        let _ = (tx, ops);
        Ok(None)
    }
}

/// Most writes in one transaction: bounds the latency a caller at the back of a long queue
/// adds to the ones before it.
const MAX_BATCH: usize = 256;

/// Writes that may wait for the writer before callers wait to enqueue (backpressure instead of
/// unbounded memory while PostgreSQL is slow or away).
const QUEUE_CAPACITY: usize = 8 * MAX_BATCH;

struct Command<O: Operation> {
    op: O,
    reply: oneshot::Sender<Result<(), O::Error>>,
}

/// The handle of the writer task. The task ends when the handle is dropped and the queue is
/// drained.
pub(super) struct Writer<O: Operation> {
    tx: mpsc::Sender<Command<O>>,
    counters: Arc<Counters>,
}

impl<O: Operation> Writer<O> {
    /// Starts the task, which takes its connection from `pool` (and a new one after a failure).
    pub(super) fn start(pool: Pool) -> Writer<O> {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(pool, rx, counters.clone()));
        Writer { tx, counters }
    }

    /// Queues a write and waits for its outcome, which arrives only after its batch committed.
    /// A write whose future is dropped after it was queued still executes.
    pub(super) async fn write(&self, op: O) -> Result<(), O::Error> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Command { op, reply })
            .await
            .map_err(|_| O::backend("PostgreSQL writer has stopped".into()))?;
        outcome
            .await
            .map_err(|_| O::backend("PostgreSQL writer stopped before committing".into()))?
    }

    pub(super) fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }
}

async fn run<O: Operation>(pool: Pool, mut rx: mpsc::Receiver<Command<O>>, counters: Arc<Counters>) {
    let mut batch: Vec<Command<O>> = Vec::with_capacity(MAX_BATCH);
    let mut conn: Option<Object> = None;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Let the tasks woken with this one queue theirs too, then take everything queued.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let client = match conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => match pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, writes = batch.len(), "PostgreSQL writer has no connection");
                    let e = O::unavailable(super::describe(&e));
                    counters.record_batch(batch.len(), false, std::time::Duration::ZERO);
                    for cmd in batch.drain(..) {
                        let _ = cmd.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            },
        };
        let mut client = client;
        let ops: Vec<&O> = batch.iter().map(|c| &c.op).collect();
        let started = std::time::Instant::now();
        let results = match execute(&mut client, &ops).await {
            Ok(results) => {
                counters.record_batch(batch.len(), true, started.elapsed());
                results
            }
            Err(e) if batch.len() > 1 && !client.is_closed() => {
                // One write's statement failed and took the transaction with it: each alone.
                tracing::debug!(error = %e, writes = batch.len(), "PostgreSQL batch failed; retrying its writes one by one");
                counters.record_batch(batch.len(), false, started.elapsed());
                let mut results = Vec::with_capacity(ops.len());
                for op in &ops {
                    let started = std::time::Instant::now();
                    results.push(match execute::<O>(&mut client, &[*op]).await {
                        Ok(mut r) => {
                            counters.record_batch(1, true, started.elapsed());
                            r.remove(0)
                        }
                        Err(e) => Err(op.failure(&e)),
                    });
                }
                results
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = batch.len(), "PostgreSQL batch failed; nothing written");
                counters.record_batch(batch.len(), false, std::time::Duration::ZERO);
                ops.iter().map(|op| Err(op.failure(&e))).collect()
            }
        };
        if !client.is_closed() {
            conn = Some(client);
        }
        for (cmd, result) in batch.drain(..).zip(results) {
            // The caller may have given up waiting; its write stands regardless.
            let _ = cmd.reply.send(result);
        }
    }
    tracing::debug!("PostgreSQL writer stopped");
}

/// Runs `ops` in one transaction: `Ok` holds each write's own outcome, all committed; `Err`
/// means the transaction failed as a whole and nothing of it was written.
async fn execute<O: Operation>(
    client: &mut Object,
    ops: &[&O],
) -> Result<Vec<Result<(), O::Error>>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut results = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        // A run of writes with statements known up front goes out in one pipeline: one round
        // trip for the run rather than one per statement.
        let mut run = Vec::new();
        while let Some(statements) = ops.get(i).and_then(|op| op.pipelined()) {
            run.extend(statements);
            i += 1;
            results.push(Ok(()));
        }
        if !run.is_empty() {
            pipeline(&tx, &run).await?;
            continue;
        }
        if let Some(outcomes) = O::apply_run(&tx, &ops[i..]).await?.filter(|o| !o.is_empty()) {
            i += outcomes.len();
            results.extend(outcomes);
            continue;
        }
        results.push(ops[i].apply(&tx).await?);
        i += 1;
    }
    tx.commit().await?;
    Ok(results)
}

/// `statements` prepared (from the connection's cache) with their arguments as parameters.
async fn prepare<'s>(
    tx: &Transaction<'_>,
    statements: &'s [Statement<'_>],
) -> Result<Vec<(tokio_postgres::Statement, Vec<&'s (dyn ToSql + Sync)>)>, tokio_postgres::Error> {
    let mut prepared = Vec::with_capacity(statements.len());
    for (sql, args) in statements {
        let stmt = tx.prepare_cached(&super::placeholders(sql)).await?;
        prepared.push((stmt, args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()));
    }
    Ok(prepared)
}

/// Sends `statements` without waiting for each answer; fails with the first statement that
/// fails (the transaction is then lost, and the writer retries the batch's writes one by one).
pub(super) async fn pipeline(tx: &Transaction<'_>, statements: &[Statement<'_>]) -> Result<(), tokio_postgres::Error> {
    let prepared = prepare(tx, statements).await?;
    futures_util::future::try_join_all(prepared.iter().map(|(stmt, params)| tx.execute(stmt, params))).await?;
    Ok(())
}

/// Runs `statements` one after the other, each answered before the next is sent (a write
/// retried alone after its batch failed, or one that is not pipelined).
pub(super) async fn run_in_order(
    tx: &Transaction<'_>,
    statements: &[Statement<'_>],
) -> Result<(), tokio_postgres::Error> {
    for (stmt, params) in prepare(tx, statements).await? {
        tx.execute(&stmt, &params).await?;
    }
    Ok(())
}
