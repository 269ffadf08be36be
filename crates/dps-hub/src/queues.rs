//! The hub's side of the durable queues (module `c2d` holds the data): loading them at open,
//! writing what settled, the expiry sweep, purging a device's queue, and the feedback the
//! service reads.

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::c2d::{FeedbackBatch, FeedbackRecord, QueueChange, Settled};
use crate::error::{C2dError, HubOpenError};
use crate::outbox::Outgoing;
use crate::record::key_of;
use crate::store::HubStoreError;
use crate::Hub;

impl Hub {
    /// Reads the queued cloud-to-device messages and unread feedback back from the store at open.
    /// Messages of devices that no longer exist are deleted.
    pub(crate) async fn load_queues(&self) -> Result<(), HubOpenError> {
        let inner = &self.inner;
        // On a shared store a device's queue is read when it connects to this node, not every
        // queue by every node, and the feedback is read from the store's rows when the service
        // asks (decision 0031).
        if inner.store.shared() {
            return Ok(());
        }
        let (messages, feedback) = inner.store.load_queues().await.map_err(HubOpenError::Load)?;
        let last = messages
            .iter()
            .map(|m| m.seq)
            .chain(feedback.iter().map(|f| f.seq))
            .max()
            .unwrap_or(0);
        inner
            .next_queue_seq
            .store(last + 1, std::sync::atomic::Ordering::Relaxed);
        let mut by_device: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for m in messages {
            by_device.entry(key_of(&m.device_id)).or_default().push(m);
        }
        let (mut held, mut orphans) = (0, QueueChange::default());
        for (key, records) in by_device {
            let found = inner.find(&key).await.map_err(HubOpenError::Load)?;
            match found {
                Some((slot, rec)) => {
                    let mut live = slot.live.lock();
                    for r in records {
                        if r.generation_id == rec.generation_id {
                            held += 1;
                            live.c2d.insert(r);
                        } else {
                            orphans.delete_c2d.push(r.seq);
                        }
                    }
                    drop(live);
                    inner.c2d_devices.insert(key, slot);
                }
                None => orphans.delete_c2d.extend(records.iter().map(|r| r.seq)),
            }
        }
        if !orphans.is_empty() {
            tracing::info!(
                messages = orphans.delete_c2d.len(),
                "cloud-to-device messages of deleted devices dropped"
            );
            inner.store.update_queues(&orphans).await.map_err(HubOpenError::Load)?;
        }
        let unread = feedback.len();
        let dropped = inner.feedback.push(feedback);
        self.forget(<FeedbackRecord as Outgoing>::deleted(dropped));
        tracing::info!(messages = held, feedback = unread, "cloud-to-device queues loaded");
        Ok(())
    }

    /// Writes what settled (the messages' deletion and the feedback asked for, in one store
    /// transaction) in the background, and makes the feedback readable once it is written.
    /// Returns the write's task, for callers that want to wait for it.
    pub(crate) fn finish(&self, settled: Settled) -> Option<tokio::task::JoinHandle<()>> {
        if settled.done.is_empty() {
            return None;
        }
        let now = self.inner.now();
        let hub = self.clone();
        Some(tokio::spawn(async move {
            let mut change = QueueChange::default();
            for (r, status) in settled.done {
                change.delete_c2d.push(r.seq);
                if r.ack.wants(status) {
                    let seq = match hub.inner.new_queue_seq().await {
                        Ok(seq) => seq,
                        Err(e) => {
                            // As for a failed write: the messages stay stored and come back.
                            tracing::error!(error = %e, "feedback not numbered; settled cloud-to-device messages not written");
                            return;
                        }
                    };
                    change.put_feedback.push(FeedbackRecord {
                        seq,
                        original_message_id: r.message_id().to_string(),
                        device_id: r.device_id,
                        device_generation_id: r.generation_id,
                        status,
                        enqueued_at: now,
                    });
                }
            }
            if let Err(e) = hub.inner.store.update_queues(&change).await {
                // The messages stay stored and come back at the next restart: delivered at least
                // once, as IoT Hub promises, rather than lost.
                tracing::error!(error = %e, messages = change.delete_c2d.len(), "settled cloud-to-device messages not written");
                return;
            }
            let dropped = hub.inner.feedback.push(change.put_feedback);
            hub.forget(<FeedbackRecord as Outgoing>::deleted(dropped));
        }))
    }

    /// Deletes dropped records from the store in the background.
    pub(crate) fn forget(&self, change: QueueChange) {
        if change.is_empty() {
            return;
        }
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.update_queues(&change).await {
                tracing::error!(error = %e, "dropped records not deleted from the store");
            }
        });
    }

    /// Returns to their queues the cloud-to-device messages received over HTTPS whose lock ran
    /// out, dead-letters the queued ones whose time to live passed (with `Expired` feedback
    /// where asked), releases feedback batches whose lock ran out, and drops
    /// feedback older than its time to live. The server calls it about once a second.
    pub fn sweep(&self) {
        let inner = &self.inner;
        let now = inner.now();
        let mut settled = Settled::default();
        let mut empty = Vec::new();
        for entry in inner.c2d_devices.iter() {
            let mut live = entry.value().live.lock();
            if live.c2d.unlock_expired(now) {
                live.flush_c2d(now, &mut settled);
            }
            live.c2d.expire(now, &mut settled);
            if live.c2d.is_empty() {
                empty.push(entry.key().clone());
            }
        }
        for key in empty {
            inner
                .c2d_devices
                .remove_if(&key, |_, slot| slot.live.lock().c2d.is_empty());
        }
        self.finish(settled);
        let dropped = inner.feedback.expire(now);
        self.forget(<FeedbackRecord as Outgoing>::deleted(dropped));
        self.sweep_file_uploads(now);
        self.tidy_outboxes_periodically(now);
        if self.inner.store.shared() && due(&self.inner.last_job_scan, now, 5_000) {
            // Jobs of a node that stopped, or whose creation this node did not hear of.
            self.run_stored_jobs();
        }
        self.trim_telemetry_periodically(now);
        self.expire_stored_c2d_periodically(now);
    }

    /// On a shared store, every ten seconds, dead-letters (with `Expired` feedback where asked)
    /// the stored messages whose time to live passed and that no session on this node holds: no
    /// node holds the queue of a device connected to none (decision 0031). In the background.
    fn expire_stored_c2d_periodically(&self, now: chrono::DateTime<chrono::Utc>) {
        const AT_ONCE: usize = 256;
        if !self.inner.store.shared()
            || !self.inner.runs_housekeeping()
            || !due(&self.inner.last_c2d_expiry, now, 10_000)
        {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let expired = match hub.inner.store.expired_c2d(now, AT_ONCE).await {
                Ok(expired) => expired,
                Err(e) => {
                    tracing::warn!(error = %e, "expired cloud-to-device messages not read");
                    return;
                }
            };
            let mut settled = Settled::default();
            for r in expired {
                // A device connected here: its queue's own sweep settles it.
                let here = hub
                    .inner
                    .held(&key_of(&r.device_id))
                    .is_some_and(|slot| slot.live.lock().session_id().is_some());
                if !here {
                    settled.push(r, crate::c2d::FeedbackStatus::Expired);
                }
            }
            if let Some(write) = hub.finish(settled) {
                let _ = write.await;
            }
        });
    }

    /// On a shared store, every five seconds, on the node that runs the housekeeping: releases the
    /// feedback and file notification batches whose lock ran out and drops the records past
    /// their bounds, in the store (the in-memory outboxes of [`Hub::sweep`] hold nothing
    /// there). In the background; one round at a time.
    fn tidy_outboxes_periodically(&self, now: chrono::DateTime<chrono::Utc>) {
        if !self.inner.store.shared() || !self.inner.runs_housekeeping() || !due(&self.inner.last_tidy, now, 5_000) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let inner = &hub.inner;
            let done = tokio::try_join!(inner.feedback.tidy(now), inner.file_notifications.tidy(now));
            if let Err(e) = done {
                tracing::warn!(error = %e, "service-bound queues not tidied");
            }
        });
    }

    /// Once a minute, deletes the retained telemetry that is past the retention bounds, in the
    /// background (a big trim takes a while, and the sweep must not wait for it).
    fn trim_telemetry_periodically(&self, now: chrono::DateTime<chrono::Utc>) {
        if !self.inner.runs_housekeeping() || !due(&self.inner.last_trim, now, 60_000) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            if let Err(e) = hub.trim_telemetry().await {
                tracing::warn!(error = %e, "retained telemetry not trimmed");
            }
        });
    }

    /// Deletes the retained telemetry past the retention's age and byte bounds now (the sweep
    /// does it once a minute); returns how many messages went.
    pub async fn trim_telemetry(&self) -> Result<u64, HubStoreError> {
        let deleted = self.inner.telemetry.trim(self.inner.now()).await?;
        if deleted > 0 {
            tracing::debug!(deleted, "retained telemetry trimmed");
        }
        Ok(deleted)
    }

    /// Removes every cloud-to-device message of the device, queued or delivered and not
    /// settled (`DELETE /devices/{id}/commands`), with `Purged` feedback where asked. Returns
    /// how many were removed once the removal is written.
    pub async fn purge_c2d(&self, device_id: &str) -> Result<usize, C2dError> {
        let (slot, rec) = self.inner.c2d_device(device_id).await?;
        let mut settled = Settled::default();
        let mut purged = slot.live.lock().c2d.purge(&mut settled);
        if self.inner.store.shared() {
            // The stored queue, whatever node holds the device: what this node did not hold.
            let stored = self
                .inner
                .store
                .device_c2d(&rec.key())
                .await
                .map_err(|source| C2dError::Storage {
                    device_id: device_id.to_string(),
                    source,
                })?;
            for r in stored {
                if !settled.done.iter().any(|(d, _)| d.seq == r.seq) {
                    settled.push(r, crate::c2d::FeedbackStatus::Purged);
                    purged += 1;
                }
            }
        }
        if let Some(write) = self.finish(settled) {
            let _ = write.await;
        }
        tracing::info!(device = %device_id, purged, "cloud-to-device queue purged");
        Ok(purged)
    }

    /// Locks up to `max` unread feedback records (oldest first) for [`crate::FEEDBACK_LOCK`] and hands
    /// them out; `None` when there is none. Complete the batch with
    /// [`Hub::complete_feedback`]; abandoned, or not completed in time, it is read again.
    pub async fn receive_feedback(&self, max: usize) -> Result<Option<FeedbackBatch>, HubStoreError> {
        self.inner.feedback.take(max, self.inner.now()).await
    }

    /// Completes a feedback batch: its records are deleted, durably when this returns. `false`
    /// if no batch holds the lock (completed already, or its lock ran out).
    pub async fn complete_feedback(&self, lock_token: &str) -> Result<bool, HubStoreError> {
        self.inner.feedback.complete(lock_token, self.inner.now()).await
    }

    /// Puts a feedback batch back to be read again; `false` if no batch holds the lock.
    pub async fn abandon_feedback(&self, lock_token: &str) -> Result<bool, HubStoreError> {
        self.inner.feedback.release(lock_token, self.inner.now()).await
    }

    /// Changes whenever feedback may have become readable: receivers wait on it and then call
    /// [`Hub::receive_feedback`].
    pub fn feedback_signal(&self) -> watch::Receiver<u64> {
        self.inner.feedback.signal()
    }

    /// Unread feedback records (locked ones included) that this node holds: all of them on a
    /// store only this process writes, none on a shared one (the store's rows are the queue).
    pub fn feedback_len(&self) -> usize {
        self.inner.feedback.len()
    }
}

/// Whether a periodic task whose last round started at `last` (ms since the epoch) is due again
/// at `now`, every `every_ms`; when it is, `last` becomes `now`.
pub(crate) fn due(last: &std::sync::atomic::AtomicI64, now: chrono::DateTime<chrono::Utc>, every_ms: i64) -> bool {
    use std::sync::atomic::Ordering;
    let now = now.timestamp_millis();
    let before = last.load(Ordering::Relaxed);
    now - before >= every_ms
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
