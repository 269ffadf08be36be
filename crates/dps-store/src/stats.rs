//! What a store's group-committing writer has done ([`StoreStats`]), counted the same way by the
//! SQLite writer thread and the PostgreSQL writer task.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the writer's work, for benchmarks and metrics. Monotonic since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed (each one durable flush: an fsync of SQLite's WAL, a WAL flush on
    /// the PostgreSQL server).
    pub transactions: u64,
    /// Write commands in committed transactions, including ones that failed their own
    /// precondition (they still rode in the batch).
    pub commands: u64,
    /// Transactions that failed as a whole (every command in them got the backend error, or on
    /// PostgreSQL was retried alone).
    pub failed_transactions: u64,
    /// The most commands one committed transaction carried.
    pub largest_batch: u64,
    /// Time spent executing and committing transactions that committed, in microseconds: divided
    /// by [`transactions`](Self::transactions), the mean commit latency.
    pub commit_micros: u64,
}

/// The live counters behind [`StoreStats`].
#[derive(Default)]
pub(crate) struct Counters {
    transactions: AtomicU64,
    commands: AtomicU64,
    failed_transactions: AtomicU64,
    largest_batch: AtomicU64,
    commit_micros: AtomicU64,
}

impl Counters {
    /// A transaction of `commands` committed (`true`) or failed as a whole, after `took`.
    pub(crate) fn record_batch(&self, commands: usize, committed: bool, took: std::time::Duration) {
        let n = commands as u64;
        if committed {
            self.transactions.fetch_add(1, Ordering::Relaxed);
            self.commit_micros
                .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
            self.commands.fetch_add(n, Ordering::Relaxed);
            self.largest_batch.fetch_max(n, Ordering::Relaxed);
        } else {
            self.failed_transactions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            failed_transactions: self.failed_transactions.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
        }
    }
}
