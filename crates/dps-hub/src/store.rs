//! The hub's storage, behind a trait: device identities with their twins; the durable
//! cloud-to-device, feedback and file upload notification queues; retained telemetry; the
//! consumer groups of the Event Hub-compatible endpoint; module identities with their twins;
//! scheduled jobs and the rows of the devices they reached —
//! each a group of methods on [`HubStore`].
//!
//! The hub owns no database (the architecture's rule for dps-hub): it decides what a device's
//! state is and hands whole [`DeviceRecord`]s to a [`HubStore`] to keep. [`MemoryHubStore`] keeps
//! them in memory (tests, fuzzing, demos); `dps_store::SqliteHubStore` keeps them in the data
//! directory's `hub.db`, sharing the DPS store's writer thread and migration mechanism. Both pass
//! the same conformance suite (module `conformance`, behind the `conformance` feature), the
//! pattern of dps-core's `Store`. Decision 0013 says why the trait has this shape.

mod memory;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use async_trait::async_trait;
use serde::Serialize;

pub use crate::c2d::{C2dRecord, FeedbackRecord, QueueChange};
pub use crate::consumer_groups::ConsumerGroup;
pub use crate::error::HubStoreError;
pub use crate::file_upload::{ActiveUpload, FileNotification};
pub use crate::jobs::{DeviceJobRecord, JobRecord};
pub use crate::outbox::OutboxKind;
pub use crate::record::DeviceRecord;
pub use crate::telemetry::{decode_event, encode_event, TelemetryMessage};
pub use memory::MemoryHubStore;

/// The storage key of a device id: the registry is case-insensitive, so records are keyed (and
/// listed, and paged) by the ASCII-lower-cased id. Existing `hub.db` files use exactly this.
pub fn device_key(device_id: &str) -> String {
    crate::record::key_of(device_id)
}

/// The storage key of a module: `{device key}/modules/{module key}`, both ids lower-cased. Device
/// keys never contain `/` ([`device_key`] maps one away), so the two kinds cannot collide.
pub fn module_key(device_id: &str, module_id: &str) -> String {
    crate::record::module_key(device_id, module_id)
}

/// How many devices a store holds, by registry status (`GET /statistics/devices`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeviceCounts {
    /// Every device.
    pub total: u64,
    /// Devices whose status is `enabled`.
    pub enabled: u64,
    /// Devices whose status is `disabled`.
    pub disabled: u64,
}

/// Durable storage of one hub's devices.
///
/// A device is one [`DeviceRecord`] (identity and twin together, as IoT Hub versions them
/// together), keyed by [`device_key`]. Writes are whole-record upserts and deletes, unconditional:
/// the hub checks etags and serialises writes to one device under that device's lock before it
/// calls the store. A write must be durable when it returns (the hub answers the registry API,
/// and the provisioning engine answers the device, only after it); implementations should batch
/// concurrent writes rather than serialise callers on one lock.
///
/// Reads are by key and by page in key order, so a hub need not hold every device in memory.
#[async_trait]
pub trait HubStore: Send + Sync + std::fmt::Debug + 'static {
    /// The device with this id (case-insensitive), if stored.
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, HubStoreError>;

    /// Creates or replaces the device's record (keyed by its id); durable when it returns.
    async fn put_device(&self, record: &DeviceRecord) -> Result<(), HubStoreError>;

    /// Removes the device, its modules and its queued cloud-to-device messages, in one
    /// transaction; removing an absent device is not an error. Durable when it returns.
    async fn delete_device(&self, device_id: &str) -> Result<(), HubStoreError>;

    /// Up to `limit` devices in key order whose key is greater than `after`'s (case-insensitive;
    /// `None` starts at the first). An empty page means there are no more.
    async fn list_devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceRecord>, HubStoreError>;

    /// Up to `limit` devices in key order after `after` (a device key; `None`: from the first)
    /// whose tag at the dotted `path` below `tags` is the string `value`
    /// ([`DeviceRecord::string_tags`]): what a query pinning a tag reads instead of every
    /// device.
    async fn find_by_tag(
        &self,
        path: &str,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, HubStoreError>;

    /// Device counts by status (modules are not devices and are not counted).
    async fn count_devices(&self) -> Result<DeviceCounts, HubStoreError>;

    /// How many cloud-to-device messages are stored, for every device of the hub (queued, or
    /// delivered and not yet settled): the C2D queue depth an operator watches.
    async fn count_c2d(&self) -> Result<u64, HubStoreError>;

    /// The module `module_id` of `device_id` (both case-insensitive), if stored.
    async fn get_module(&self, device_id: &str, module_id: &str) -> Result<Option<DeviceRecord>, HubStoreError>;

    /// Creates or replaces a module's record (one with [`DeviceRecord::module_id`] set, keyed by
    /// [`module_key`]); durable when it returns. The hub creates modules only on stored devices.
    async fn put_module(&self, record: &DeviceRecord) -> Result<(), HubStoreError>;

    /// Whether other nodes write this store too (decision 0031): the hub then reads a record
    /// again before it changes it, and writes with [`put_device_if`](Self::put_device_if) and
    /// [`put_module_if`](Self::put_module_if). A store only this process uses says `false`.
    fn shared(&self) -> bool {
        false
    }

    /// [`put_device`](Self::put_device) only if the stored record is still `previous` (`None`:
    /// only if there is none), compared by its etags, of which every write changes one; else
    /// [`HubStoreError::Conflict`] and nothing written. A store no other node writes keeps
    /// records only through this hub's serialised writes, so by default it writes without
    /// looking.
    async fn put_device_if(&self, record: &DeviceRecord, previous: Option<&DeviceRecord>) -> Result<(), HubStoreError> {
        let _ = previous;
        self.put_device(record).await
    }

    /// [`put_module`](Self::put_module) with the condition of
    /// [`put_device_if`](Self::put_device_if).
    async fn put_module_if(&self, record: &DeviceRecord, previous: Option<&DeviceRecord>) -> Result<(), HubStoreError> {
        let _ = previous;
        self.put_module(record).await
    }

    /// Removes one module (absent is fine); durable when it returns.
    async fn delete_module(&self, device_id: &str, module_id: &str) -> Result<(), HubStoreError>;

    /// Every module of `device_id` (case-insensitive), in key order. A device has few (the hub
    /// bounds them, [`crate::MAX_MODULES_PER_DEVICE`]).
    async fn list_modules(&self, device_id: &str) -> Result<Vec<DeviceRecord>, HubStoreError>;

    /// Up to `limit` modules of every device in key order ([`module_key`]) whose key is greater
    /// than `after` (a key this method returned; `None` starts at the first): what a query
    /// `FROM devices.modules` reads.
    async fn list_all_modules(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceRecord>, HubStoreError>;

    /// Stores a scheduled job's record (keyed by its id, replacing it); durable when it returns.
    async fn put_job(&self, job: &JobRecord) -> Result<(), HubStoreError>;

    /// On a [`shared`](Self::shared) store: [`put_job`](Self::put_job) only if the stored
    /// record is still active (queued or running), so that the node running a job never
    /// undoes a cancel made through another node; whether it was written. A store only this
    /// process writes holds the hub's own serialised writes: it writes without looking.
    async fn put_job_if_active(&self, job: &JobRecord) -> Result<bool, HubStoreError> {
        self.put_job(job).await.map(|()| true)
    }

    /// Every stored job (at most the jobs of the retention period, and at most
    /// [`crate::MAX_KEPT_JOBS`]): read at open, and on a shared store whenever jobs are listed.
    async fn list_jobs(&self) -> Result<Vec<JobRecord>, HubStoreError>;

    /// The stored job with this id: what a node of a shared store answers `GET /jobs/v2/{id}`
    /// from, whatever node created the job. By default found in [`list_jobs`](Self::list_jobs).
    async fn get_job(&self, job_id: &str) -> Result<Option<JobRecord>, HubStoreError> {
        Ok(self.list_jobs().await?.into_iter().find(|j| j.job_id == job_id))
    }

    /// Removes a job and its device rows (absent is fine); durable when it returns.
    async fn delete_job(&self, job_id: &str) -> Result<(), HubStoreError>;

    /// Stores the rows of the devices a job reached (each keyed by [`DeviceJobRecord::key`],
    /// replacing one with that key), in one transaction; durable when it returns.
    async fn put_device_jobs(&self, rows: &[DeviceJobRecord]) -> Result<(), HubStoreError>;

    /// Up to `limit` device rows of every job in key order after `after` (`None`: from the
    /// first): what `SELECT * FROM devices.jobs` reads.
    async fn list_device_jobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceJobRecord>, HubStoreError>;

    /// Applies every part of `change` in one transaction (a settled message's deletion and its
    /// feedback are written together or not at all); durable when it returns. Putting a key that
    /// exists replaces it; deleting an absent key is not an error.
    async fn update_queues(&self, change: &QueueChange) -> Result<(), HubStoreError>;

    /// Every stored cloud-to-device message and feedback record, each in key (`seq`) order. The
    /// hub reads them once, at open: queues are bounded (50 messages per device, and the
    /// feedback limit), so they fit in memory by design.
    async fn load_queues(&self) -> Result<(Vec<C2dRecord>, Vec<FeedbackRecord>), HubStoreError>;

    /// Every stored feedback record, in key order: what a node of a
    /// [`shared`](Self::shared) store reads at open instead of [`load_queues`](Self::load_queues),
    /// since it reads a device's messages only when the device connects to it. By default taken
    /// from `load_queues`.
    async fn load_feedback(&self) -> Result<Vec<FeedbackRecord>, HubStoreError> {
        Ok(self.load_queues().await?.1)
    }

    /// The stored cloud-to-device messages of one device (its [`device_key`]), in key order: on
    /// a [`shared`](Self::shared) store, what a node reads when the device connects to it or
    /// another node queues a message for it. By default filtered from
    /// [`load_queues`](Self::load_queues); a shared store reads just the device's.
    async fn device_c2d(&self, device_key: &str) -> Result<Vec<C2dRecord>, HubStoreError> {
        let (messages, _) = self.load_queues().await?;
        Ok(messages
            .into_iter()
            .filter(|m| crate::record::key_of(&m.device_id) == device_key)
            .collect())
    }

    /// Up to `limit` stored cloud-to-device messages whose time to live passed at `now`, in key
    /// order: on a shared store no node holds the queue of a device connected to none, so the
    /// hub dead-letters such messages from here (decision 0031). By default filtered from
    /// [`load_queues`](Self::load_queues); a shared store selects them.
    async fn expired_c2d(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<C2dRecord>, HubStoreError> {
        let (messages, _) = self.load_queues().await?;
        Ok(messages
            .into_iter()
            .filter(|m| m.expires_at <= now)
            .take(limit)
            .collect())
    }

    /// A key for a new queue record (message, feedback, file notification) that no node has
    /// used, when other nodes write the queues too; `None` (the default) lets the hub number
    /// them itself, as the only writer.
    async fn queue_seq(&self) -> Result<Option<u64>, HubStoreError> {
        Ok(None)
    }

    /// On a [`shared`](Self::shared) store: locks a stored cloud-to-device message of the
    /// device at `device_key` under `lock_token` until `until`, and returns it: with `held`
    /// `None`, its oldest message that is unexpired and unlocked at `now` (skipping one another
    /// node is locking right now); with `held` a lock token, the message that lock holds at
    /// `now` (the lock moves: the old token settles nothing more). `None`: no such message.
    /// What a device that receives over HTTPS, through any node, is handed (decision 0031).
    async fn lock_c2d(
        &self,
        device_key: &str,
        held: Option<&str>,
        lock_token: &str,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<C2dRecord>, HubStoreError> {
        let _ = (device_key, held, lock_token, now, until);
        Err(HubStoreError::NotShared {
            what: "cloud-to-device locks",
        })
    }

    /// On a [`shared`](Self::shared) store: records `upload` (a file upload in progress) where
    /// every node sees it, unless its device has `limit` uploads unexpired at `now` already:
    /// whether it was recorded. Durable when it returns.
    async fn put_upload(
        &self,
        upload: &ActiveUpload,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<bool, HubStoreError> {
        let _ = (upload, now, limit);
        Err(HubStoreError::NotShared { what: "file uploads" })
    }

    /// On a shared store: removes and returns the upload `correlation_id` of the device with
    /// key `device_key` (`None` when there is none: never started, reported already, or another
    /// device's).
    async fn take_upload(&self, device_key: &str, correlation_id: &str) -> Result<Option<ActiveUpload>, HubStoreError> {
        let _ = (device_key, correlation_id);
        Err(HubStoreError::NotShared { what: "file uploads" })
    }

    /// On a shared store: drops the uploads that expired before `before`; how many.
    async fn expire_uploads(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, HubStoreError> {
        let _ = before;
        Err(HubStoreError::NotShared { what: "file uploads" })
    }

    /// On a shared store: records the new import or export job `job` at `now`, unless another
    /// is active and was written at or after `stale_before` (one runs at a time; a job not
    /// written since then was abandoned by its node), and drops the oldest beyond
    /// [`crate::MAX_KEPT_IMPORT_EXPORT_JOBS`]: whether it was recorded. Durable when it returns.
    async fn create_import_export_job(
        &self,
        job: &dps_proto::model::hub::JobProperties,
        now: chrono::DateTime<chrono::Utc>,
        stale_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, HubStoreError> {
        let _ = (job, now, stale_before);
        Err(HubStoreError::NotShared {
            what: "import and export jobs",
        })
    }

    /// On a shared store: writes `job` (written at `now`) over the stored one only if that is
    /// still active (`enqueued` or `running`): whether it was.
    async fn update_import_export_job(
        &self,
        job: &dps_proto::model::hub::JobProperties,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, HubStoreError> {
        let _ = (job, now);
        Err(HubStoreError::NotShared {
            what: "import and export jobs",
        })
    }

    /// On a shared store: every kept import or export job.
    async fn import_export_jobs(&self) -> Result<Vec<crate::StoredImportExportJob>, HubStoreError> {
        Err(HubStoreError::NotShared {
            what: "import and export jobs",
        })
    }

    /// On a shared store: writes `record` back (its delivery count changed) and frees it for
    /// the next receive; durable when it returns.
    async fn unlock_c2d(&self, record: &C2dRecord) -> Result<(), HubStoreError> {
        let _ = record;
        Err(HubStoreError::NotShared {
            what: "cloud-to-device locks",
        })
    }

    /// On a [`shared`](Self::shared) store: locks up to `max` records of the `kind` queue,
    /// oldest first, that no lock holds at `now` (nor another node is locking right now), under
    /// `lock_token` until `until`, and returns their stored documents (the records as
    /// [`update_queues`](Self::update_queues) put them, JSON) in key order; none: an empty list.
    /// Any node's records, any node's lock: the queue is the store's rows (decision 0031). A
    /// store only this process writes leaves the queue to the hub's memory and refuses this.
    async fn lock_outbox(
        &self,
        kind: OutboxKind,
        lock_token: &str,
        max: usize,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, HubStoreError> {
        let _ = (kind, lock_token, max, now, until);
        Err(HubStoreError::NotShared {
            what: "service-bound queues",
        })
    }

    /// On a shared store: deletes (`complete`), durably when it returns, or releases the
    /// records `lock_token` locks, if its lock has not run out at `now`; whether it held any.
    /// A release tells the other nodes that records are readable again.
    async fn settle_outbox(
        &self,
        kind: OutboxKind,
        lock_token: &str,
        complete: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, HubStoreError> {
        let _ = (kind, lock_token, complete, now);
        Err(HubStoreError::NotShared {
            what: "service-bound queues",
        })
    }

    /// On a shared store, the housekeeping of the `kind` queue: releases the locks that ran out
    /// at `now`, deletes the unlocked records enqueued before `older_than`, then all but the
    /// newest `keep` (the bound on unread records), telling the other nodes when records became
    /// readable again; whether any did.
    async fn tidy_outbox(
        &self,
        kind: OutboxKind,
        now: chrono::DateTime<chrono::Utc>,
        older_than: chrono::DateTime<chrono::Utc>,
        keep: usize,
    ) -> Result<bool, HubStoreError> {
        let _ = (kind, now, older_than, keep);
        Err(HubStoreError::NotShared {
            what: "service-bound queues",
        })
    }

    /// Every stored file upload notification, in key (`seq`) order (read once, at open; they
    /// are written and deleted through [`HubStore::update_queues`]).
    async fn load_file_notifications(&self) -> Result<Vec<FileNotification>, HubStoreError>;

    /// Stores telemetry messages (keyed by their hub-wide `sequence_number`, with their
    /// partition and partition sequence number already set); durable when it returns.
    async fn append_events(&self, events: &[std::sync::Arc<TelemetryMessage>]) -> Result<(), HubStoreError>;

    /// On a [`shared`](Self::shared) store: numbers `msg` (its hub-wide sequence number and its
    /// partition sequence number, `msg.partition` set) among every node's messages and stores
    /// it, durably, returning it numbered. Numbers are handed out in commit order, so readers
    /// never see a gap fill in behind them (decision 0031). A store only this process writes
    /// leaves the numbering to the hub and refuses this.
    async fn append_numbered(&self, msg: TelemetryMessage) -> Result<TelemetryMessage, HubStoreError> {
        let _ = msg;
        Err(HubStoreError::NotShared {
            what: "telemetry numbering",
        })
    }

    /// Up to `limit` stored messages of `partition` from partition sequence number `from` on,
    /// in order.
    async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError>;

    /// The partition sequence number of the first stored message of `partition` at or after
    /// `start`; `None` when there is none.
    async fn find_in_partition(&self, partition: u32, start: EventStart) -> Result<Option<u64>, HubStoreError>;

    /// Up to `limit` stored messages with a sequence number above `after` (`None`: the newest
    /// `limit`), optionally of one device (case-insensitive), oldest first.
    async fn recent_events(
        &self,
        device_id: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError>;

    /// Where each partition that holds messages stands.
    async fn partition_bounds(&self) -> Result<Vec<PartitionBounds>, HubStoreError>;

    /// Stores a consumer group (keyed by [`ConsumerGroup::key`], replacing one with that key);
    /// durable when it returns.
    async fn put_consumer_group(&self, group: &ConsumerGroup) -> Result<(), HubStoreError>;

    /// Removes the consumer group with this key (absent is fine); durable when it returns.
    async fn delete_consumer_group(&self, key: &str) -> Result<(), HubStoreError>;

    /// Every stored consumer group, in key order.
    async fn list_consumer_groups(&self) -> Result<Vec<ConsumerGroup>, HubStoreError>;

    /// Deletes messages enqueued before `older_than`, then the oldest until the stored ones take
    /// at most `max_bytes` ([`TelemetryMessage::retained_bytes`]); returns how many went.
    async fn trim_events(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
        max_bytes: u64,
    ) -> Result<u64, HubStoreError>;
}

/// Where [`HubStore::find_in_partition`] looks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStart {
    /// The first message whose hub-wide sequence number (its Event Hubs offset) is at least this.
    Offset(u64),
    /// The first message enqueued at or after this many milliseconds since the Unix epoch.
    EnqueuedAt(i64),
}

/// What a store holds of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    /// The partition.
    pub partition: u32,
    /// Its first stored partition sequence number.
    pub first: u64,
    /// Its last stored partition sequence number.
    pub last: u64,
    /// The hub-wide sequence number of its last message.
    pub last_offset: u64,
    /// When its last message was enqueued.
    pub last_enqueued: chrono::DateTime<chrono::Utc>,
}
