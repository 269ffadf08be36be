//! [`Outbox`]: a durable queue of records the service reads in locked batches — cloud-to-device
//! feedback (`/messages/serviceBound/feedback`) and file upload notifications
//! (`/messages/serviceBound/filenotifications`) — with IoT Hub's rules for both: a record is
//! readable once it is stored, a batch handed out stays locked until the service completes it
//! (deleted, durably) or abandons it (readable again), a lock that runs out releases the batch,
//! unread records expire after their time to live, and at most a bounded number wait (the oldest
//! are dropped past it, with a warning: a service that never reads must not grow the store).
//!
//! On a store only this process writes the records are held here, in memory, and the store is
//! written through. On a [`shared`](HubStore::shared) store the store's rows are the queue, so
//! that a batch is handed out once whichever node the service reads through and whichever node
//! made the records (decision 0031): a batch is locked in the store
//! ([`HubStore::lock_outbox`]), settled there ([`HubStore::settle_outbox`]), and the node that
//! runs the housekeeping releases run-out locks and drops what is past its bounds
//! ([`HubStore::tidy_outbox`]). Receivers wake on this node's records and on the other nodes'
//! notices ([`Outbox::wake`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::c2d::QueueChange;
use crate::store::{HubStore, HubStoreError};

/// Which of a hub's two service-bound queues (an [`Outbox`]) a store call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxKind {
    /// Cloud-to-device feedback ([`crate::store::FeedbackRecord`]).
    Feedback,
    /// File upload notifications ([`crate::store::FileNotification`]).
    FileNotifications,
}

/// A record an [`Outbox`] keeps.
pub(crate) trait Outgoing: Clone + Send + Sync + serde::de::DeserializeOwned + 'static {
    /// What the records are, for logs.
    const WHAT: &'static str;
    /// Which queue they are in.
    const KIND: OutboxKind;
    /// Its key in the store.
    fn seq(&self) -> u64;
    /// When it was queued (its time to live runs from here).
    fn enqueued_at(&self) -> DateTime<Utc>;
    /// The store change that deletes the records with these keys.
    fn deleted(seqs: Vec<u64>) -> QueueChange;
}

/// Records handed to the service under one lock token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<R> {
    /// Settles the batch (complete or abandon).
    pub lock_token: String,
    /// The records, oldest first.
    pub records: Vec<R>,
}

/// The bounds of an [`Outbox`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxLimits {
    /// Most unread records.
    pub(crate) count: usize,
    /// How long an unread record is kept.
    pub(crate) ttl: Duration,
    /// How long a batch stays locked.
    pub(crate) lock: Duration,
}

#[derive(Debug)]
struct Queue<R> {
    pending: VecDeque<R>,
    locked: HashMap<String, (Vec<R>, DateTime<Utc>)>,
}

/// A durable service-bound queue (see the module docs).
#[derive(Debug)]
pub(crate) struct Outbox<R> {
    /// What this node holds; empty on a shared store, whose rows are the queue.
    queue: Mutex<Queue<R>>,
    /// Bumped whenever records may have become readable, so that receivers waiting wake.
    ready: watch::Sender<u64>,
    limits: OutboxLimits,
    store: Arc<dyn HubStore>,
}

impl<R: Outgoing> Outbox<R> {
    pub(crate) fn new(limits: OutboxLimits, store: Arc<dyn HubStore>) -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                locked: HashMap::new(),
            }),
            ready: watch::channel(0).0,
            limits,
            store,
        }
    }

    /// Wakes receivers: records may have become readable (another node stored some, or
    /// released a batch).
    pub(crate) fn wake(&self) {
        self.ready.send_modify(|n| *n += 1);
    }

    /// Makes stored records readable and wakes receivers; returns the keys of those that fell
    /// off the end (over the count bound), for the caller to delete. On a shared store the
    /// stored rows are readable already and the housekeeping bounds them: this only wakes.
    pub(crate) fn push(&self, records: Vec<R>) -> Vec<u64> {
        if records.is_empty() {
            return Vec::new();
        }
        if self.store.shared() {
            self.wake();
            return Vec::new();
        }
        let dropped = {
            let mut q = self.queue.lock();
            q.pending.extend(records);
            let mut dropped = Vec::new();
            while q.pending.len() > self.limits.count {
                if let Some(r) = q.pending.pop_front() {
                    dropped.push(r.seq());
                }
            }
            dropped
        };
        if !dropped.is_empty() {
            tracing::warn!(
                dropped = dropped.len(),
                limit = self.limits.count,
                what = R::WHAT,
                "unread records over the limit: the oldest were dropped"
            );
        }
        self.wake();
        dropped
    }

    /// Locks up to `max` unread records (oldest first) until `now` plus the lock duration.
    pub(crate) async fn take(&self, max: usize, now: DateTime<Utc>) -> Result<Option<Batch<R>>, HubStoreError> {
        let until = now + chrono::Duration::from_std(self.limits.lock).unwrap_or(chrono::Duration::MAX);
        let lock_token = uuid::Uuid::new_v4().to_string();
        if max == 0 {
            return Ok(None);
        }
        if self.store.shared() {
            let docs = self.store.lock_outbox(R::KIND, &lock_token, max, now, until).await?;
            let records = docs
                .iter()
                .map(|doc| {
                    serde_json::from_str(doc)
                        .map_err(|e| HubStoreError::backend(format!("undecodable stored {}: {e}", R::WHAT)))
                })
                .collect::<Result<Vec<R>, _>>()?;
            return Ok((!records.is_empty()).then_some(Batch { lock_token, records }));
        }
        let mut q = self.queue.lock();
        if q.pending.is_empty() {
            return Ok(None);
        }
        let n = max.min(q.pending.len());
        let records: Vec<R> = q.pending.drain(..n).collect();
        q.locked.insert(lock_token.clone(), (records.clone(), until));
        Ok(Some(Batch { lock_token, records }))
    }

    /// Completes a batch: its records are deleted, durably when this returns. `false` if no
    /// batch holds the lock (completed already, or its lock ran out).
    pub(crate) async fn complete(&self, lock_token: &str, now: DateTime<Utc>) -> Result<bool, HubStoreError> {
        if self.store.shared() {
            return self.store.settle_outbox(R::KIND, lock_token, true, now).await;
        }
        let Some((records, _)) = self.queue.lock().locked.remove(lock_token) else {
            return Ok(false);
        };
        if let Err(e) = self
            .store
            .update_queues(&R::deleted(records.iter().map(R::seq).collect()))
            .await
        {
            // Readable again: the service completes it again later.
            let mut q = self.queue.lock();
            for r in records.into_iter().rev() {
                q.pending.push_front(r);
            }
            return Err(e);
        }
        Ok(true)
    }

    /// Puts a batch back at the head, to be read again; `false` if no batch holds the lock.
    pub(crate) async fn release(&self, lock_token: &str, now: DateTime<Utc>) -> Result<bool, HubStoreError> {
        if self.store.shared() {
            // The store tells the other nodes that the records are readable again.
            let released = self.store.settle_outbox(R::KIND, lock_token, false, now).await?;
            if released {
                self.wake();
            }
            return Ok(released);
        }
        let released = {
            let mut q = self.queue.lock();
            match q.locked.remove(lock_token) {
                Some((records, _)) => {
                    for r in records.into_iter().rev() {
                        q.pending.push_front(r);
                    }
                    true
                }
                None => false,
            }
        };
        if released {
            self.wake();
        }
        Ok(released)
    }

    /// On a shared store, where the housekeeping bounds the stored rows: releases batches whose
    /// lock ran out and drops records past their time to live or over the count bound, in the
    /// store (the store tells the other nodes when records are readable again).
    pub(crate) async fn tidy(&self, now: DateTime<Utc>) -> Result<(), HubStoreError> {
        let ttl = chrono::Duration::from_std(self.limits.ttl).unwrap_or(chrono::Duration::MAX);
        if self
            .store
            .tidy_outbox(R::KIND, now, now - ttl, self.limits.count)
            .await?
        {
            self.wake();
        }
        Ok(())
    }

    /// Releases batches whose lock ran out and drops records past their time to live; returns
    /// the dropped ones' keys, for the caller to delete. (Records held in memory: on a shared
    /// store, [`Outbox::tidy`] does it.)
    pub(crate) fn expire(&self, now: DateTime<Utc>) -> Vec<u64> {
        let ttl = chrono::Duration::from_std(self.limits.ttl).unwrap_or(chrono::Duration::MAX);
        let (dropped, released) = {
            let mut q = self.queue.lock();
            let stale: Vec<String> = q
                .locked
                .iter()
                .filter(|(_, (_, until))| *until <= now)
                .map(|(t, _)| t.clone())
                .collect();
            let released = !stale.is_empty();
            for t in stale {
                if let Some((records, _)) = q.locked.remove(&t) {
                    q.pending.extend(records);
                }
            }
            if released {
                // Back in queue order, whatever order the locks ran out in.
                q.pending.make_contiguous().sort_by_key(R::seq);
            }
            let mut dropped = Vec::new();
            q.pending.retain(|r| {
                let keep = r.enqueued_at() + ttl > now;
                if !keep {
                    dropped.push(r.seq());
                }
                keep
            });
            (dropped, released)
        };
        if released {
            self.wake();
        }
        dropped
    }

    /// Changes whenever records may have become readable.
    pub(crate) fn signal(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }

    /// Records not completed yet (locked ones included) that this node holds: on a shared
    /// store, none (the store's rows are the queue).
    pub(crate) fn len(&self) -> usize {
        let q = self.queue.lock();
        q.pending.len() + q.locked.values().map(|(r, _)| r.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::c2d::{FeedbackRecord, FeedbackStatus};
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn fb(seq: u64) -> FeedbackRecord {
        FeedbackRecord {
            seq,
            original_message_id: format!("m{seq}"),
            device_id: "d".into(),
            device_generation_id: "g".into(),
            status: FeedbackStatus::Success,
            enqueued_at: at(0),
        }
    }

    fn outbox(count: usize) -> Outbox<FeedbackRecord> {
        let limits = OutboxLimits {
            count,
            ttl: Duration::from_secs(3600),
            lock: Duration::from_secs(60),
        };
        Outbox::new(limits, Arc::new(crate::store::MemoryHubStore::new()))
    }

    #[tokio::test]
    async fn batches_are_locked_until_released_or_their_lock_runs_out() {
        let q = outbox(4);
        let mut ready = q.signal();
        assert!(q.push(vec![fb(1), fb(2), fb(3)]).is_empty());
        assert!(ready.has_changed().unwrap());
        ready.borrow_and_update();
        let b = q.take(2, at(0)).await.unwrap().unwrap();
        assert_eq!(b.records.len(), 2);
        assert_eq!(q.take(5, at(0)).await.unwrap().unwrap().records.len(), 1);
        assert!(q.take(5, at(0)).await.unwrap().is_none());
        assert!(q.expire(at(30)).is_empty());
        assert!(q.take(5, at(30)).await.unwrap().is_none(), "still locked");
        assert_eq!(q.len(), 3);
        q.expire(at(61));
        assert!(ready.has_changed().unwrap(), "released batches wake receivers");
        assert_eq!(
            q.take(5, at(61))
                .await
                .unwrap()
                .unwrap()
                .records
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(!q.release("no such lock", at(61)).await.unwrap());
        // Past the bound, the oldest go.
        let q = outbox(2);
        assert_eq!(q.push(vec![fb(1), fb(2), fb(3)]), [1]);
        assert_eq!(q.expire(at(4000)), [2, 3], "past the time to live");
    }
}
