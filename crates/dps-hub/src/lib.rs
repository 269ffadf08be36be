//! The embedded IoT hub: where provisioned devices land by default.
//!
//! It holds the device registry and twins (persisted in SQLite, cached in memory), authenticates
//! devices at MQTT CONNECT, runs their sessions (twin GET / reported patches / desired pushes /
//! direct methods / cloud-to-device / telemetry), and keeps recent telemetry for watchers. It
//! implements [`dps_core::HubRegistry`] so the provisioning engine creates devices in-process.
//!
//! It never touches a socket: the server crate owns TLS, TCP, MQTT framing and HTTP, and calls
//! this API. Device sessions are sans-IO — the server hands in the topics and payloads it read and
//! writes out the [`Outbound`] publishes it gets back or receives on the session's channel.
//!
//! Concurrency: each device has its own slot (a `DashMap` entry) with a write lock that
//! serialises read-modify-write-persist of that device only, an `RwLock`ed committed snapshot that
//! readers clone without waiting for disk, and a small mutex for its live connection state. There
//! is no hub-wide lock on the registry or session paths; durability cost is shared through group
//! commit in the store's writer thread.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod auth;
mod error;
mod provisioning;
mod record;
mod registry;
mod session;
mod store;
mod telemetry;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dps_core::{Clock, SystemClock};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, OwnedMutexGuard};

pub use auth::{AuthMethod, CredentialSlot, DeviceIdentity};
pub use error::{AuthError, C2dError, HubOpenError, MethodError, RegistryError, SessionError};
pub use registry::RegistryStatistics;
pub use session::{DeviceSession, MethodResponse, Outbound, C2D_QUEUE_LIMIT, OUTBOUND_CAPACITY};
pub use telemetry::TelemetryMessage;

use record::{DeviceRecord, LiveView};
use session::{Live, PendingMethod};
use store::{Store, WriteOp};
use telemetry::{Retention, TelemetryLog};

/// How to open a hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The hub's host name (`assignedHub`, SAS audience, MQTT username prefix). Use a dotted name
    /// (`hub.local`): the C SDK refuses host names without a dot.
    pub host_name: String,
    /// SQLite database file; `None` keeps everything in memory (tests, demos).
    pub db_path: Option<PathBuf>,
    /// How many acknowledged telemetry messages to keep for [`Hub::recent_events`] (e.g. 10 000).
    pub telemetry_retention: usize,
    /// Most bytes of telemetry to keep ([`TelemetryMessage::retained_bytes`]): the count alone
    /// lets large messages take gigabytes.
    pub telemetry_retention_bytes: u64,
    /// Oldest telemetry to keep, by enqueued time on the hub's clock.
    pub telemetry_retention_age: Duration,
}

impl HubConfig {
    /// An in-memory hub keeping the last 10 000 telemetry messages, at most 256 MiB of them and
    /// none older than 24 hours.
    pub fn in_memory(host_name: impl Into<String>) -> Self {
        Self {
            host_name: host_name.into(),
            db_path: None,
            telemetry_retention: 10_000,
            telemetry_retention_bytes: 256 * 1024 * 1024,
            telemetry_retention_age: Duration::from_secs(24 * 3600),
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
            .field("devices", &self.inner.devices.len())
            .field("store", &self.inner.store)
            .finish()
    }
}

pub(crate) struct HubInner {
    host_name: String,
    /// Lower-cased device id → slot. Slots are removed ("retired") when a device is deleted.
    devices: DashMap<String, Arc<Slot>>,
    store: Option<Store>,
    clock: Arc<dyn Clock>,
    telemetry: TelemetryLog,
    /// Outstanding direct-method calls by request id.
    methods: DashMap<String, PendingMethod>,
    next_rid: AtomicU64,
    next_session: AtomicU64,
}

/// Per-device state.
pub(crate) struct Slot {
    /// Serialises read-modify-write-persist of this device. `true` once the slot was retired by a
    /// delete: a writer that waited on a retired slot looks the device up again.
    write: Arc<tokio::sync::Mutex<bool>>,
    /// Last committed record; `None` while a create is in flight or after a delete.
    record: RwLock<Option<Arc<DeviceRecord>>>,
    /// Connection state, the live session, queued C2D.
    live: Mutex<Live>,
}

impl Slot {
    fn new(record: Option<DeviceRecord>) -> Self {
        Self {
            write: Arc::new(tokio::sync::Mutex::new(false)),
            record: RwLock::new(record.map(Arc::new)),
            live: Mutex::new(Live::default()),
        }
    }

    pub(crate) fn record(&self) -> Option<Arc<DeviceRecord>> {
        self.record.read().clone()
    }

    pub(crate) fn live_view(&self) -> LiveView {
        self.live.lock().view()
    }
}

impl Hub {
    /// Opens a hub: creates/migrates the database and loads every device into memory. Must be
    /// called outside of async code or accept that it blocks briefly on disk.
    pub fn open(config: HubConfig) -> Result<Hub, HubOpenError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// [`Hub::open`] with a clock for the registry's timestamps (tests pass a `FakeClock`).
    pub fn open_with_clock(config: HubConfig, clock: Arc<dyn Clock>) -> Result<Hub, HubOpenError> {
        let host_name = config.host_name.trim().to_string();
        if host_name.is_empty() {
            return Err(HubOpenError::EmptyHostName);
        }
        let devices = DashMap::new();
        let store = match &config.db_path {
            Some(path) => {
                let (store, records) = Store::open(path)?;
                for (key, rec) in records {
                    devices.insert(key, Arc::new(Slot::new(Some(rec))));
                }
                Some(store)
            }
            None => None,
        };
        tracing::info!(host = %host_name, devices = devices.len(), persistent = store.is_some(), "embedded hub opened");
        Ok(Hub {
            inner: Arc::new(HubInner {
                host_name,
                devices,
                store,
                clock,
                telemetry: TelemetryLog::new(Retention {
                    count: config.telemetry_retention,
                    bytes: config.telemetry_retention_bytes,
                    age: config.telemetry_retention_age,
                }),
                methods: DashMap::new(),
                next_rid: AtomicU64::new(1),
                next_session: AtomicU64::new(1),
            }),
        })
    }

    /// The hub's host name.
    pub fn host_name(&self) -> &str {
        &self.inner.host_name
    }

    /// Live telemetry: every acknowledged device-to-cloud message from now on. A receiver that
    /// falls more than 256 messages behind (the live feed's byte budget: 64 MiB of the largest
    /// messages) gets `Lagged` and can catch up with [`Hub::recent_events`].
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<TelemetryMessage>> {
        self.inner.telemetry.subscribe()
    }

    /// Retained telemetry (within the count, byte and age bounds of [`HubConfig`]), oldest first, optionally for one device (case-insensitive). With
    /// `after_sequence`, the first `limit` messages newer than it (for polling: pass the last
    /// sequence number seen); without, the newest `limit` messages.
    pub fn recent_events(
        &self,
        device_id: Option<&str>,
        after_sequence: Option<u64>,
        limit: usize,
    ) -> Vec<Arc<TelemetryMessage>> {
        self.inner
            .telemetry
            .recent(self.inner.now(), device_id, after_sequence, limit)
    }
}

impl HubInner {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn slot(&self, device_id: &str) -> Option<Arc<Slot>> {
        self.devices.get(&record::key_of(device_id)).map(|s| s.clone())
    }

    /// Takes the write lock of a device's slot, creating an empty slot when `create` and absent.
    /// Never holds a `DashMap` guard across the await.
    pub(crate) async fn lock_device(&self, key: &str, create: bool) -> Option<(Arc<Slot>, OwnedMutexGuard<bool>)> {
        loop {
            let slot = if create {
                self.devices
                    .entry(key.to_string())
                    .or_insert_with(|| Arc::new(Slot::new(None)))
                    .clone()
            } else {
                self.devices.get(key)?.clone()
            };
            let guard = slot.write.clone().lock_owned().await;
            if *guard {
                // Retired by a concurrent delete; the map no longer points at it.
                continue;
            }
            return Some((slot, guard));
        }
    }

    /// Removes a slot whose device does not exist (after a delete, or a failed create), so that
    /// the map only holds real devices. Must be called with the slot's write guard held.
    pub(crate) fn retire_if_empty(&self, key: &str, slot: &Arc<Slot>, guard: &mut bool) {
        if slot.record.read().is_none() {
            *guard = true;
            self.devices.remove_if(key, |_, s| Arc::ptr_eq(s, slot));
        }
    }

    /// Persists `rec` (durably, when a database is configured) and publishes it as the slot's
    /// committed snapshot. Must be called with the slot's write guard held.
    pub(crate) async fn commit(
        &self,
        key: &str,
        slot: &Slot,
        rec: DeviceRecord,
    ) -> Result<Arc<DeviceRecord>, RegistryError> {
        if let Some(store) = &self.store {
            let doc = serde_json::to_string(&rec)
                .map_err(|e| RegistryError::Storage(format!("cannot encode device record: {e}")))?;
            store
                .write(WriteOp::Put {
                    key: key.to_string(),
                    doc,
                })
                .await
                .map_err(RegistryError::Storage)?;
        }
        let rec = Arc::new(rec);
        *slot.record.write() = Some(rec.clone());
        Ok(rec)
    }

    /// Deletes the device durably and clears the slot's snapshot. Must be called with the
    /// slot's write guard held.
    pub(crate) async fn commit_delete(&self, key: &str, slot: &Slot) -> Result<(), RegistryError> {
        if let Some(store) = &self.store {
            store
                .write(WriteOp::Delete { key: key.to_string() })
                .await
                .map_err(RegistryError::Storage)?;
        }
        *slot.record.write() = None;
        Ok(())
    }

    pub(crate) fn next_rid(&self) -> String {
        self.next_rid.fetch_add(1, Ordering::Relaxed).to_string()
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// Queue for [`Live`] C2D messages, re-exported for the session module.
pub(crate) type C2dQueue = VecDeque<session::QueuedC2d>;
