//! [`Outbox`]: a durable queue of records the service reads in locked batches — cloud-to-device
//! feedback (`/messages/serviceBound/feedback`) and file upload notifications
//! (`/messages/serviceBound/filenotifications`) — with IoT Hub's rules for both: a record is
//! readable once it is stored, a batch handed out stays locked until the service completes it
//! (deleted, durably) or abandons it (readable again), a lock that runs out releases the batch,
//! unread records expire after their time to live, and at most a bounded number wait (the oldest
//! are dropped past it, with a warning: a service that never reads must not grow the store).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::c2d::QueueChange;
use crate::store::{HubStore, HubStoreError};

/// A record an [`Outbox`] keeps.
pub(crate) trait Outgoing: Clone + Send + Sync + 'static {
    /// What the records are, for logs.
    const WHAT: &'static str;
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
    queue: Mutex<Queue<R>>,
    /// Bumped whenever records may have become readable, so that receivers waiting wake.
    ready: watch::Sender<u64>,
    limits: OutboxLimits,
}

impl<R: Outgoing> Outbox<R> {
    pub(crate) fn new(limits: OutboxLimits) -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                locked: HashMap::new(),
            }),
            ready: watch::channel(0).0,
            limits,
        }
    }

    /// Makes stored records readable and wakes receivers; returns the keys of those that fell
    /// off the end (over the count bound), for the caller to delete.
    pub(crate) fn push(&self, records: Vec<R>) -> Vec<u64> {
        if records.is_empty() {
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
        self.ready.send_modify(|n| *n += 1);
        dropped
    }

    /// Locks up to `max` unread records (oldest first) until `now` plus the lock duration.
    pub(crate) fn take(&self, max: usize, now: DateTime<Utc>) -> Option<Batch<R>> {
        let until = now + chrono::Duration::from_std(self.limits.lock).unwrap_or(chrono::Duration::MAX);
        let mut q = self.queue.lock();
        if q.pending.is_empty() || max == 0 {
            return None;
        }
        let n = max.min(q.pending.len());
        let records: Vec<R> = q.pending.drain(..n).collect();
        let lock_token = uuid::Uuid::new_v4().to_string();
        q.locked.insert(lock_token.clone(), (records.clone(), until));
        Some(Batch { lock_token, records })
    }

    /// Completes a batch: its records are deleted, durably when this returns. `false` if no
    /// batch holds the lock (completed already, or its lock ran out).
    pub(crate) async fn complete(&self, store: &dyn HubStore, lock_token: &str) -> Result<bool, HubStoreError> {
        let Some((records, _)) = self.queue.lock().locked.remove(lock_token) else {
            return Ok(false);
        };
        if let Err(e) = store
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
    pub(crate) fn release(&self, lock_token: &str) -> bool {
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
            self.ready.send_modify(|n| *n += 1);
        }
        released
    }

    /// Releases batches whose lock ran out and drops records past their time to live; returns
    /// the dropped ones' keys, for the caller to delete.
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
            self.ready.send_modify(|n| *n += 1);
        }
        dropped
    }

    /// Changes whenever records may have become readable.
    pub(crate) fn signal(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }

    /// Records not completed yet (locked ones included).
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

    #[test]
    fn batches_are_locked_until_released_or_their_lock_runs_out() {
        let q = Outbox::new(OutboxLimits {
            count: 4,
            ttl: Duration::from_secs(3600),
            lock: Duration::from_secs(60),
        });
        let mut ready = q.signal();
        assert!(q.push(vec![fb(1), fb(2), fb(3)]).is_empty());
        assert!(ready.has_changed().unwrap());
        ready.borrow_and_update();
        let b = q.take(2, at(0)).unwrap();
        assert_eq!(b.records.len(), 2);
        assert_eq!(q.take(5, at(0)).unwrap().records.len(), 1);
        assert!(q.take(5, at(0)).is_none());
        assert!(q.expire(at(30)).is_empty());
        assert!(q.take(5, at(30)).is_none(), "still locked");
        assert_eq!(q.len(), 3);
        q.expire(at(61));
        assert!(ready.has_changed().unwrap(), "released batches wake receivers");
        assert_eq!(
            q.take(5, at(61))
                .unwrap()
                .records
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(!q.release("no such lock"));
        // Past the bound, the oldest go.
        let q = Outbox::new(OutboxLimits {
            count: 2,
            ttl: Duration::from_secs(3600),
            lock: Duration::from_secs(60),
        });
        assert_eq!(q.push(vec![fb(1), fb(2), fb(3)]), [1]);
        assert_eq!(q.expire(at(4000)), [2, 3], "past the time to live");
    }
}
