//! The embedded IoT hub: where provisioned devices land by default.
//!
//! It holds the device registry and twins (persisted through a [`store::HubStore`], cached in
//! memory), authenticates devices (at MQTT CONNECT, on AMQP's CBS, per HTTPS request), runs
//! their sessions (twin GET / reported patches / desired pushes / direct methods /
//! cloud-to-device / telemetry) and serves devices that poll over HTTPS (`polling`), keeps
//! telemetry durably for the Event Hub-compatible endpoint, and holds the service-bound queues
//! (feedback, file upload notifications: `outbox`) and file upload's policy (`file_upload`). It
//! implements [`dps_core::HubRegistry`] so the provisioning engine creates devices in-process.
//!
//! It never touches a socket: the server crate owns TLS, TCP, MQTT framing and HTTP, and calls
//! this API. Device sessions are sans-IO — the server hands in the topics and payloads it read and
//! writes out the [`Outbound`] publishes it gets back or receives on the session's channel.
//!
//! Memory: the store is the registry's truth. The hub holds a slot only for devices it has reason
//! to hold — connected, being written, queued cloud-to-device messages — plus a bounded cache of
//! recently read ones ([`HubConfig::device_cache`]); any other device is loaded from the store
//! when asked for (module `cache`, decision 0014). Opening a hub reads no device.
//!
//! Concurrency: each held device has its own slot (in a shard of the slot cache) with a write
//! lock that serialises load and read-modify-write-persist of that device only, an `RwLock`ed
//! committed snapshot that readers clone without waiting for disk, and a small mutex for its live
//! connection state. There is no hub-wide lock on the registry or session paths; durability cost
//! is shared through group commit in the store (the SQLite store's writer thread).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod auth;
mod bulk;
mod c2d;
mod cache;
mod consumer_groups;
mod counters;
mod error;
mod file_upload;
mod import_export;
mod jobs;
mod modules;
mod outbox;
mod peers;
mod polling;
mod provisioning;
mod query;
mod queues;
mod record;
mod registry;
mod session;
pub mod store;
mod telemetry;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dps_core::{Clock, SystemClock};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, watch, OwnedMutexGuard};

pub use auth::{AuthMethod, ClientCertificate, CredentialSlot, DeviceIdentity};
pub use bulk::BULK_MAX;
pub use c2d::{
    Ack, C2dOutcome, C2dRecord, FeedbackBatch, FeedbackRecord, FeedbackStatus, QueueChange, C2D_LOCK,
    C2D_MAX_DELIVERIES, C2D_QUEUE_LIMIT, DEFAULT_C2D_TTL, FEEDBACK_BATCH, FEEDBACK_LIMIT, FEEDBACK_LOCK, FEEDBACK_TTL,
    MAX_C2D_TTL,
};
pub use consumer_groups::ConsumerGroup;
pub use counters::HubCounters;
pub use error::{
    AuthError, C2dError, ConsumerGroupError, FileUploadError, HubOpenError, JobError, MethodError, RegistryError,
    SessionError,
};
pub use file_upload::{
    FileNotification, FileUploadConfig, FileUploadSas, UploadedBlob, FILE_NOTIFICATION_LOCK, FILE_NOTIFICATION_TTL,
    FILE_UPLOAD_TTL, MAX_ACTIVE_UPLOADS,
};
pub use import_export::{
    import_export_stale_after, is_active as import_export_is_active, StoredImportExportJob, IMPORT_EXPORT_HEARTBEAT,
    MAX_KEPT_IMPORT_EXPORT_JOBS,
};
pub use jobs::{DEFAULT_MAX_EXECUTION, JOB_RETENTION, MAX_ACTIVE_JOBS, MAX_KEPT_JOBS};
pub use modules::MAX_MODULES_PER_DEVICE;
pub use outbox::{Batch, OutboxKind};
pub use peers::{MethodCall, PeerChange, Peers};
pub use polling::PolledC2d;
pub use query::QueryPage;
pub use registry::RegistryStatistics;
pub use session::{DeviceSession, MethodResponse, Outbound, OutboundKind, RenewalLimits, OUTBOUND_CAPACITY};
pub use telemetry::{partition_of, PartitionInfo, TelemetryMessage};

use cache::SlotCache;
use record::{DeviceRecord, LiveView};
use session::{Live, PendingMethod};
use store::{HubStore, HubStoreError, MemoryHubStore};
use telemetry::{Retention, TelemetryLog};

/// How to open a hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The hub's host name (`assignedHub`, SAS audience, MQTT username prefix). Use a dotted name
    /// (`hub.local`): the C SDK refuses host names without a dot.
    pub host_name: String,
    /// Other names the hub answers to in MQTT usernames, SAS audiences and provisioning calls:
    /// names it had before a rename, and the server's own host names for the hub a server
    /// serves by default. Devices are always assigned `host_name`.
    pub aliases: Vec<String>,
    /// How many acknowledged telemetry messages to keep for [`Hub::recent_events`] (e.g. 10 000).
    pub telemetry_retention: usize,
    /// Most bytes of telemetry to keep ([`TelemetryMessage::retained_bytes`]): the count alone
    /// lets large messages take gigabytes.
    pub telemetry_retention_bytes: u64,
    /// Oldest telemetry to keep, by enqueued time on the hub's clock.
    pub telemetry_retention_age: Duration,
    /// About how many idle devices to keep in memory after reading them ([`DEFAULT_DEVICE_CACHE`]).
    /// Connected devices, and devices with queued cloud-to-device messages, are held besides.
    pub device_cache: usize,
    /// A cloud-to-device message's time to live when its sender sets no expiry
    /// ([`DEFAULT_C2D_TTL`], Azure's `defaultTtlAsIso8601`; at most [`MAX_C2D_TTL`]).
    pub c2d_ttl: Duration,
    /// Partitions of the Event Hub-compatible endpoint ([`DEFAULT_PARTITIONS`]); each device's
    /// messages go to one of them ([`partition_of`]).
    pub partitions: u32,
    /// Where devices upload files; `None`: file upload is not configured (Azure's 400014).
    pub file_upload: Option<FileUploadConfig>,
}

/// How many times a read-modify-write of a device record is made when it keeps losing races
/// with other nodes' writes to the same record (a shared store's [`HubStoreError::Conflict`]),
/// each time from the stored record, before the client is told to retry (503). Two nodes
/// writing one twin at once (a device's reported properties, the service's desired ones) is
/// ordinary; losing twelve times in a row, with the pauses of [`after_lost_race`] between (about
/// four seconds in all at most), is not.
pub(crate) const RACE_ATTEMPTS: usize = 12;

/// Waits before attempt `attempt` (2, 3, …) of a write that lost a race: a random pause of up
/// to 10 ms, doubled with every attempt (at most 640 ms), so that two nodes writing in lockstep
/// fall out of it. A lost race means the other node committed within about one commit time,
/// which is what the pauses are measured in.
pub(crate) async fn after_lost_race(attempt: usize) {
    use rand::Rng;
    let most = 10_000u64 << attempt.saturating_sub(2).min(6);
    let pause = rand::thread_rng().gen_range(0..most);
    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
}

/// Evaluates `$write` — one read-modify-write of a registry record under its lock, which it
/// takes and releases itself, written `async { … }.await` — again while it loses races with
/// other nodes' writes to the record, at most [`RACE_ATTEMPTS`] times with the pauses of
/// [`after_lost_race`] between. Each attempt judges the request against the record it reads, so
/// a conditional write that lost finds the etag changed (412), and a create, the record made
/// (409), as one hub would answer. (A macro, not a function taking an async closure: the
/// futures of `async_trait` methods must be `Send` for every lifetime, which such a closure's
/// are not.)
macro_rules! retrying_lost_races {
    ($write:expr) => {{
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            let written: Result<_, $crate::error::RegistryError> = $write;
            match written {
                Err(e) if e.lost_race() && attempt < $crate::RACE_ATTEMPTS => {
                    $crate::after_lost_race(attempt + 1).await
                }
                done => break done,
            }
        }
    }};
}
pub(crate) use retrying_lost_races;

/// The default [`HubConfig::partitions`], as an IoT hub's built-in endpoint has by default.
pub const DEFAULT_PARTITIONS: u32 = 4;

/// The default [`HubConfig::device_cache`]: about 80 MB of typical records, so that a hub with
/// millions of devices idles small while the devices in use are read without the store.
pub const DEFAULT_DEVICE_CACHE: usize = 65_536;

impl HubConfig {
    /// A hub keeping the last 10 000 telemetry messages, at most 256 MiB of them and none older
    /// than 24 hours. Named for [`Hub::open`], which keeps its devices in memory; give it a
    /// durable store with [`Hub::open_with_store`].
    pub fn in_memory(host_name: impl Into<String>) -> Self {
        Self {
            host_name: host_name.into(),
            aliases: Vec::new(),
            telemetry_retention: 10_000,
            telemetry_retention_bytes: 256 * 1024 * 1024,
            telemetry_retention_age: Duration::from_secs(24 * 3600),
            device_cache: DEFAULT_DEVICE_CACHE,
            c2d_ttl: DEFAULT_C2D_TTL,
            partitions: DEFAULT_PARTITIONS,
            file_upload: None,
        }
    }
}

/// The embedded hub. Cheap to clone (an `Arc`); all clones are the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("host_name", &self.inner.host_name)
            .field("resident_devices", &self.inner.devices.len())
            .field("store", &self.inner.store)
            .finish()
    }
}

pub(crate) struct HubInner {
    host_name: String,
    /// See [`HubConfig::aliases`].
    aliases: Vec<String>,
    /// Lower-cased device id → slot, for held devices only. Slots are removed ("retired") when a
    /// device is deleted or found absent, and evicted when idle and over the bound.
    devices: SlotCache,
    store: Arc<dyn HubStore>,
    clock: Arc<dyn Clock>,
    telemetry: TelemetryLog,
    /// Outstanding direct-method calls by request id.
    methods: DashMap<String, PendingMethod>,
    next_rid: AtomicU64,
    next_session: AtomicU64,
    /// What passed through this node since it opened the hub ([`Hub::counters`]).
    counters: counters::Counters,
    /// Default time to live of cloud-to-device messages.
    c2d_ttl: Duration,
    /// Devices with cloud-to-device messages held, for the expiry sweep.
    c2d_devices: DashMap<String, Arc<Slot>>,
    /// The next key of a stored message or feedback record.
    next_queue_seq: AtomicU64,
    /// Feedback not yet completed by the service.
    feedback: outbox::Outbox<FeedbackRecord>,
    /// When retained telemetry was last trimmed (ms since the epoch).
    last_trim: std::sync::atomic::AtomicI64,
    /// When the stored queues were last searched for expired messages (ms since the epoch; a
    /// shared store's).
    last_c2d_expiry: std::sync::atomic::AtomicI64,
    /// When the shared store's service-bound queues were last tidied (ms since the epoch).
    last_tidy: std::sync::atomic::AtomicI64,
    /// When this node last dropped the expired file uploads of a shared store.
    last_upload_expiry: std::sync::atomic::AtomicI64,
    /// When a shared store's jobs were last looked through for ones to run (ms since the epoch).
    last_job_scan: std::sync::atomic::AtomicI64,
    /// The created consumer groups of the Event Hub-compatible endpoint.
    consumer_groups: RwLock<consumer_groups::Groups>,
    /// Serialises consumer group changes.
    consumer_group_writes: tokio::sync::Mutex<()>,
    /// Where devices upload files (set once: at open, or by [`Hub::set_file_upload`] when the
    /// server knows its port).
    file_upload: std::sync::OnceLock<FileUploadConfig>,
    /// Uploads in progress.
    uploads: file_upload::ActiveUploads,
    /// File upload notifications not yet completed by the service.
    file_notifications: outbox::Outbox<FileNotification>,
    /// Scheduled jobs.
    jobs: Mutex<jobs::Jobs>,
    /// The other nodes serving this hub, when its store is shared ([`Hub::set_peers`]).
    peers: std::sync::OnceLock<Arc<dyn peers::Peers>>,
    /// Who issues renewed device certificates ([`Hub::set_certificate_issuer`]).
    renewal: std::sync::OnceLock<session::Renewal>,
    /// Revoked certificates, refused at connect ([`Hub::set_revocations`]).
    revocations: std::sync::OnceLock<Arc<dps_core::revocation::RevocationSet>>,
}

/// Per-device state.
pub(crate) struct Slot {
    /// Serialises read-modify-write-persist of this device. `true` once the slot was retired by a
    /// delete: a writer that waited on a retired slot looks the device up again.
    write: Arc<tokio::sync::Mutex<bool>>,
    /// `None` until the record was read from the store (under `write`); then the last committed
    /// record, `Some(None)` while a create is in flight or after a delete.
    record: RwLock<Option<Option<Arc<DeviceRecord>>>>,
    /// Connection state, the live session, queued C2D.
    live: Mutex<Live>,
    /// Read since the cache last swept past it (its second chance).
    touched: AtomicBool,
}

impl Slot {
    fn new() -> Self {
        Self {
            write: Arc::new(tokio::sync::Mutex::new(false)),
            record: RwLock::new(None),
            live: Mutex::new(Live::default()),
            touched: AtomicBool::new(false),
        }
    }

    /// The committed record; `None` when the device does not exist or was not loaded yet.
    pub(crate) fn record(&self) -> Option<Arc<DeviceRecord>> {
        self.record.read().clone().flatten()
    }

    /// The committed record if loaded (`Some(None)`: loaded, absent).
    fn loaded(&self) -> Option<Option<Arc<DeviceRecord>>> {
        self.record.read().clone()
    }

    /// Whether nothing but the cached record is held: no session, no queued C2D. A slot that is
    /// not idle is never evicted.
    fn is_idle(&self) -> bool {
        self.live.try_lock().is_some_and(|l| l.is_idle())
    }

    pub(crate) fn live_view(&self) -> LiveView {
        self.live.lock().view()
    }
}

impl Hub {
    /// Opens a hub that keeps its devices in memory ([`MemoryHubStore`]): nothing survives the
    /// process. For tests, fuzzing and demos.
    pub fn open(config: HubConfig) -> Result<Hub, HubOpenError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// [`Hub::open`] with a clock for the registry's timestamps (tests pass a `FakeClock`).
    pub fn open_with_clock(config: HubConfig, clock: Arc<dyn Clock>) -> Result<Hub, HubOpenError> {
        Self::assemble(config, Arc::new(MemoryHubStore::new()), clock)
    }

    /// Opens a hub on `store` (`dps_store::SqliteHubStore` for `dps serve`). Devices are read
    /// from the store when asked for, not at open (see the crate docs). Every registry change is
    /// written to the store, durably, before it is answered.
    pub async fn open_with_store(
        config: HubConfig,
        store: Arc<dyn HubStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Hub, HubOpenError> {
        // One cheap read proves the store answers before the hub serves anyone.
        let counts = store.count_devices().await.map_err(HubOpenError::Load)?;
        tracing::info!(devices = counts.total, "hub store opened");
        let hub = Self::assemble(config, store, clock)?;
        hub.load_queues().await?;
        let last = hub.load_file_notifications().await.map_err(HubOpenError::Load)?;
        hub.inner.next_queue_seq.fetch_max(last + 1, Ordering::Relaxed);
        hub.load_consumer_groups().await.map_err(HubOpenError::Load)?;
        hub.inner.telemetry.load().await.map_err(HubOpenError::Load)?;
        hub.load_jobs().await.map_err(HubOpenError::Load)?;
        Ok(hub)
    }

    fn assemble(config: HubConfig, store: Arc<dyn HubStore>, clock: Arc<dyn Clock>) -> Result<Hub, HubOpenError> {
        let host_name = config.host_name.trim().to_string();
        if host_name.is_empty() {
            return Err(HubOpenError::EmptyHostName);
        }
        tracing::info!(host = %host_name, device_cache = config.device_cache, store = ?store, "embedded hub opened");
        Ok(Hub {
            inner: Arc::new(HubInner {
                host_name,
                aliases: config.aliases.iter().map(|a| a.trim().to_string()).collect(),
                devices: SlotCache::new(config.device_cache),
                store: store.clone(),
                clock,
                telemetry: TelemetryLog::new(
                    Retention {
                        count: config.telemetry_retention,
                        bytes: config.telemetry_retention_bytes,
                        age: config.telemetry_retention_age,
                    },
                    config.partitions,
                    store.clone(),
                ),
                methods: DashMap::new(),
                next_rid: AtomicU64::new(1),
                next_session: AtomicU64::new(1),
                counters: Default::default(),
                c2d_ttl: config.c2d_ttl.min(MAX_C2D_TTL),
                c2d_devices: DashMap::new(),
                next_queue_seq: AtomicU64::new(1),
                feedback: outbox::Outbox::new(
                    outbox::OutboxLimits {
                        count: FEEDBACK_LIMIT,
                        ttl: FEEDBACK_TTL,
                        lock: FEEDBACK_LOCK,
                    },
                    store.clone(),
                ),
                last_trim: std::sync::atomic::AtomicI64::new(0),
                last_c2d_expiry: std::sync::atomic::AtomicI64::new(0),
                last_tidy: std::sync::atomic::AtomicI64::new(0),
                last_upload_expiry: std::sync::atomic::AtomicI64::new(0),
                last_job_scan: std::sync::atomic::AtomicI64::new(0),
                consumer_groups: RwLock::new(Default::default()),
                consumer_group_writes: tokio::sync::Mutex::new(()),
                file_upload: config.file_upload.map(std::sync::OnceLock::from).unwrap_or_default(),
                uploads: Default::default(),
                file_notifications: outbox::Outbox::new(
                    outbox::OutboxLimits {
                        count: file_upload::FILE_NOTIFICATION_LIMIT,
                        ttl: FILE_NOTIFICATION_TTL,
                        lock: FILE_NOTIFICATION_LOCK,
                    },
                    store.clone(),
                ),
                jobs: Mutex::new(Default::default()),
                peers: std::sync::OnceLock::new(),
                renewal: std::sync::OnceLock::new(),
                revocations: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The hub's host name.
    pub fn host_name(&self) -> &str {
        &self.inner.host_name
    }

    /// Whether `name` is the hub's host name or one of its [aliases](HubConfig::aliases)
    /// (case-insensitive).
    pub fn answers_to(&self, name: &str) -> bool {
        self.names().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Every name the hub answers to, its host name first.
    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        std::iter::once(&self.inner.host_name)
            .chain(&self.inner.aliases)
            .map(String::as_str)
    }

    /// Live telemetry: every acknowledged device-to-cloud message from now on. A receiver that
    /// falls more than 256 messages behind (the live feed's byte budget: 64 MiB of the largest
    /// messages) gets `Lagged` and can catch up with [`Hub::recent_events`].
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<TelemetryMessage>> {
        self.inner.telemetry.subscribe()
    }

    /// Retained telemetry (within the byte and age bounds of [`HubConfig`]), oldest first,
    /// optionally for one device (case-insensitive). With `after_sequence`, the first `limit`
    /// messages newer than it (for polling: pass the last sequence number seen); without, the
    /// newest `limit` messages. Read from the store: empty (with an error logged) when it fails.
    pub async fn recent_events(
        &self,
        device_id: Option<&str>,
        after_sequence: Option<u64>,
        limit: usize,
    ) -> Vec<Arc<TelemetryMessage>> {
        self.inner
            .telemetry
            .recent(device_id, after_sequence, limit)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "retained telemetry not read");
                Vec::new()
            })
    }

    /// Partitions of the Event Hub-compatible endpoint.
    pub fn partition_count(&self) -> u32 {
        self.inner.telemetry.partition_count()
    }

    /// Where a partition stands (`Ok(None)`: no such partition).
    pub async fn partition_info(&self, partition: u32) -> Result<Option<PartitionInfo>, HubStoreError> {
        self.inner.telemetry.partition_info(partition).await
    }

    /// The partition sequence number a consumer starting at `position` reads first (`Ok(None)`:
    /// no such partition).
    pub async fn partition_start(
        &self,
        partition: u32,
        position: dps_proto::event_hubs::EventPosition,
    ) -> Result<Option<u64>, HubStoreError> {
        self.inner.telemetry.start_of(partition, position).await
    }

    /// Up to `limit` retained messages of `partition` from sequence number `from` on, and the
    /// sequence number to read next.
    pub async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<TelemetryMessage>>, u64), HubStoreError> {
        self.inner.telemetry.read_partition(partition, from, limit).await
    }

    /// Changes whenever a message arrives, in any partition.
    pub fn telemetry_arrivals(&self) -> watch::Receiver<u64> {
        self.inner.telemetry.arrivals()
    }

    /// How many devices the hub holds in memory now: connected or otherwise resident ones plus
    /// the cache of recently read ones (about [`HubConfig::device_cache`] at most, besides the
    /// resident).
    pub fn resident_devices(&self) -> usize {
        self.inner.devices.len()
    }
}

impl HubInner {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The slot of a device the hub holds now (lower-cased key), without loading anything.
    pub(crate) fn held(&self, key: &str) -> Option<Arc<Slot>> {
        self.devices.get(key)
    }

    /// The device's slot and committed record, loading it from the store when the hub does not
    /// hold it; `None` when no such device exists (or its create is still in flight).
    pub(crate) async fn find(&self, device_id: &str) -> Result<Option<(Arc<Slot>, Arc<DeviceRecord>)>, HubStoreError> {
        self.find_key(&record::key_of(device_id)).await
    }

    /// [`HubInner::find`] by registry key (a device's or a module's).
    pub(crate) async fn find_key(&self, key: &str) -> Result<Option<(Arc<Slot>, Arc<DeviceRecord>)>, HubStoreError> {
        let key = key.to_string();
        let slot = self.devices.get_or_insert(&key);
        if let Some(rec) = slot.loaded() {
            return Ok(rec.map(|r| (slot, r)));
        }
        drop(slot);
        Ok(self
            .lock_device(&key, false)
            .await?
            .and_then(|(slot, _guard)| slot.record().map(|r| (slot, r))))
    }

    /// The device a cloud-to-device operation is for, with its slot (loaded if need be):
    /// [`C2dError::DeviceNotFound`] when it does not exist, [`C2dError::Storage`] when it cannot
    /// be read.
    pub(crate) async fn c2d_device(&self, device_id: &str) -> Result<(Arc<Slot>, Arc<DeviceRecord>), C2dError> {
        self.find(device_id)
            .await
            .map_err(|source| C2dError::Storage {
                device_id: device_id.to_string(),
                source,
            })?
            .ok_or_else(|| C2dError::DeviceNotFound {
                device_id: device_id.to_string(),
            })
    }

    /// Takes the write lock of a device's slot, loading its record from the store when the slot
    /// is new. Without `create`, an absent device is `None` (and holds no slot); with it, the
    /// caller gets the empty slot to create the device in.
    pub(crate) async fn lock_device(
        &self,
        key: &str,
        create: bool,
    ) -> Result<Option<(Arc<Slot>, OwnedMutexGuard<bool>)>, HubStoreError> {
        self.lock_device_presuming(key, create, false).await
    }

    /// [`HubInner::lock_device`]; with `presume_absent`, on a shared store a slot this node has
    /// not read is taken to hold no record ([`HubInner::lock_for_create_unread`]).
    async fn lock_device_presuming(
        &self,
        key: &str,
        create: bool,
        presume_absent: bool,
    ) -> Result<Option<(Arc<Slot>, OwnedMutexGuard<bool>)>, HubStoreError> {
        loop {
            let slot = self.devices.get_or_insert(key);
            let mut guard = slot.write.clone().lock_owned().await;
            if *guard {
                // Retired by a concurrent delete (or a failed load); the map no longer points at it.
                continue;
            }
            if presume_absent && self.store.shared() && slot.loaded().is_none() {
                *slot.record.write() = Some(None);
            } else if slot.loaded().is_none() || self.store.shared() {
                // Another node may have changed a record held here since it was read: a write
                // on a shared store starts from the stored one (decision 0031).
                let stored = match record::split_key(key) {
                    (device, Some(module)) => self.store.get_module(device, module).await,
                    (device, None) => self.store.get_device(device).await,
                };
                match stored {
                    Ok(rec) => *slot.record.write() = Some(rec.map(Arc::new)),
                    Err(e) => {
                        self.retire_if_empty(key, &slot, &mut guard);
                        return Err(e);
                    }
                }
            }
            if !create && slot.record().is_none() {
                self.retire_if_empty(key, &slot, &mut guard);
                return Ok(None);
            }
            return Ok(Some((slot, guard)));
        }
    }

    /// [`HubInner::lock_device`] to create or replace the identity at `key`: the slot is yours
    /// whether or not it holds a record yet.
    pub(crate) async fn lock_for_create(&self, key: &str) -> Result<(Arc<Slot>, OwnedMutexGuard<bool>), HubStoreError> {
        self.lock_slot_for_create(key, false).await
    }

    async fn lock_slot_for_create(
        &self,
        key: &str,
        presume_absent: bool,
    ) -> Result<(Arc<Slot>, OwnedMutexGuard<bool>), HubStoreError> {
        Ok(self
            .lock_device_presuming(key, true, presume_absent)
            .await?
            .expect("lock_device with create always yields a slot"))
    }

    /// [`HubInner::lock_for_create`], except that on a shared store a slot this node has not
    /// read is taken to hold no record, without reading it: the caller's write is then an
    /// insert-if-absent ([`HubInner::commit`] writes conditionally there), and if the record
    /// did exist the write fails with [`HubStoreError::Conflict`], the slot forgets what it
    /// presumed, and the caller starts again with `lock_for_create`. Until that write settles
    /// (milliseconds), a read of the device on this node that does not take the lock sees the
    /// presumption: an existing device re-provisioned here at the very moment it connects here
    /// may be told to retry. On a store no other node writes, whose writes are not
    /// conditional, this is `lock_for_create`.
    pub(crate) async fn lock_for_create_unread(
        &self,
        key: &str,
    ) -> Result<(Arc<Slot>, OwnedMutexGuard<bool>), HubStoreError> {
        self.lock_slot_for_create(key, true).await
    }

    /// Removes a slot whose device does not exist (after a delete, a failed create, or a lookup
    /// of an absent device), so that the map only holds real devices. Must be called with the
    /// slot's write guard held.
    pub(crate) fn retire_if_empty(&self, key: &str, slot: &Arc<Slot>, guard: &mut bool) {
        if slot.record().is_none() {
            *guard = true;
            self.devices.remove_if_same(key, slot);
        }
    }

    /// Persists `rec` durably in the store and publishes it as the slot's committed snapshot.
    /// Must be called with the slot's write guard held.
    ///
    /// On a store other nodes write too, the write is conditional on the record this node read
    /// (under the guard) being still the stored one; when another node changed it meanwhile,
    /// nothing is written, the slot forgets what it read, and the caller's client is told to
    /// retry ([`HubStoreError::Conflict`]).
    pub(crate) async fn commit(&self, slot: &Slot, rec: DeviceRecord) -> Result<Arc<DeviceRecord>, RegistryError> {
        let written = match (self.store.shared(), &rec.module_id) {
            (false, None) => self.store.put_device(&rec).await,
            (false, Some(_)) => self.store.put_module(&rec).await,
            (true, None) => self.store.put_device_if(&rec, slot.record().as_deref()).await,
            (true, Some(_)) => self.store.put_module_if(&rec, slot.record().as_deref()).await,
        };
        if let Err(e) = written {
            if matches!(e, HubStoreError::Conflict { .. }) && !slot.live_view().connected {
                *slot.record.write() = None;
            }
            return Err(RegistryError::Storage(e));
        }
        let rec = Arc::new(rec);
        *slot.record.write() = Some(Some(rec.clone()));
        Ok(rec)
    }

    /// Deletes the device (with its modules: the caller clears their slots) or the module
    /// durably and clears the slot's snapshot. Must be called with the slot's write guard held.
    pub(crate) async fn commit_delete(&self, key: &str, slot: &Slot) -> Result<(), RegistryError> {
        match record::split_key(key) {
            (device, Some(module)) => self.store.delete_module(device, module).await,
            (device, None) => self.store.delete_device(device).await,
        }
        .map_err(RegistryError::Storage)?;
        *slot.record.write() = Some(None);
        Ok(())
    }

    pub(crate) fn next_rid(&self) -> String {
        self.next_rid.fetch_add(1, Ordering::Relaxed).to_string()
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// A key for a new queue record: the store's when other nodes write the queues too
    /// ([`HubStore::queue_seq`]), else the next of this hub's own.
    pub(crate) async fn new_queue_seq(&self) -> Result<u64, HubStoreError> {
        Ok(match self.store.queue_seq().await? {
            Some(seq) => seq,
            None => self.next_queue_seq.fetch_add(1, Ordering::Relaxed),
        })
    }
}
