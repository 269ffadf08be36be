//! The other nodes serving the same hub (decision 0031). When several `dps serve` nodes share
//! one database, each caches device records and holds the sessions of the devices connected to
//! it; another node's write makes that cache stale and may concern one of those devices. The
//! store's backend hears of such writes (PostgreSQL's NOTIFY; dps-store's
//! `PostgresHubDatabase::hear_other_nodes`, which `dps serve` runs) and hands them to
//! [`Hub::peer_changed`]: records written, messages queued, telemetry stored, devices connected
//! elsewhere. A hub whose store no other node shares never gets any.
//!
//! The node re-reads what changed rather than trusting the notice: a notice says *where*, the
//! store says *what*. From the record it had and the one it reads, it does what the writing node
//! would have done for a device connected to it: push the desired-properties patch, end the
//! session of a device deleted, re-created or disabled, deliver the queued messages.
//!
//! The other way, a hub reaches the other nodes through [`Peers`]: it records where its devices
//! are connected, calls a direct method on a device connected elsewhere, and learns whether it
//! is the node that does the shared store's housekeeping.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::MethodError;
use crate::record::{merge_diff, split_key, DeviceRecord, Status};
use crate::session::MethodResponse;
use crate::store::HubStoreError;
use crate::{Hub, HubInner, Slot};

/// A direct-method call for a device connected to another node.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCall {
    /// The device's or module's registry key.
    pub key: String,
    /// Method name.
    pub method: String,
    /// The request's JSON payload.
    pub payload: Value,
    /// How long the device has to answer.
    pub timeout: Duration,
}

/// The other nodes serving this hub, as the hub reaches them (decision 0031): where devices are
/// connected, and direct methods for a device connected elsewhere. Set once, at start, on a hub
/// whose store other nodes share ([`Hub::set_peers`]).
#[async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Records that the identity at `key` is connected to this node now, in session `session`
    /// (the node it was connected to before ends its session).
    async fn connected(&self, key: &str, session: u64) -> Result<(), HubStoreError>;

    /// Records that session `session` of `key` ended (unless a newer one was recorded since).
    async fn disconnected(&self, key: &str, session: u64) -> Result<(), HubStoreError>;

    /// Calls a direct method on a device connected to another node and waits for its answer;
    /// `Ok(None)` when it is connected to no node.
    async fn call(&self, call: &MethodCall) -> Result<Option<MethodResponse>, MethodError>;

    /// Which of the identities at `keys` are connected to another node now (one that is
    /// alive): what a read of a device, a module or a twin through this node reports as their
    /// `connectionState`, as IoT Hub reports it whichever of its front ends is asked. By
    /// default none.
    async fn connected_elsewhere(&self, keys: &[String]) -> Result<std::collections::HashSet<String>, HubStoreError> {
        let _ = keys;
        Ok(Default::default())
    }

    /// How many devices (not modules) are connected to other nodes now: what the statistics of
    /// this node add to its own. By default none.
    async fn devices_connected_elsewhere(&self) -> Result<u64, HubStoreError> {
        Ok(0)
    }

    /// Whether this node runs the housekeeping of the shared store that one node does for all
    /// (dead-lettering expired stored messages, trimming retained telemetry); another node
    /// takes over when it stops.
    fn runs_housekeeping(&self) -> bool;
}

/// A change another node made to this hub's data, as this node hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerChange {
    /// The device or module at this registry key ([`crate::store::device_key`],
    /// [`crate::store::module_key`]) was written or deleted.
    Record {
        /// Its registry key.
        key: String,
    },
    /// Cloud-to-device messages were queued for the device at this registry key: the node
    /// holding its session delivers them.
    C2dQueued {
        /// Its registry key.
        key: String,
    },
    /// Another node stored telemetry: the last message of `partition` it committed.
    Telemetry {
        /// The partition.
        partition: u32,
        /// Its partition sequence number.
        partition_sequence: u64,
        /// Its hub-wide sequence number.
        sequence_number: u64,
        /// When it was enqueued (ms since the epoch).
        enqueued_ms: i64,
    },
    /// The identity at this registry key connected to another node: a session of it here is
    /// an older connection, which IoT Hub ends (one connection per device).
    Connected {
        /// Its registry key.
        key: String,
    },
    /// A job's record was written or deleted through another node: the node that runs jobs
    /// starts it, or stops it when it was cancelled.
    Job {
        /// The job's id.
        id: String,
    },
    /// A consumer group of the Event Hub-compatible endpoint was created or deleted through
    /// another node.
    ConsumerGroups,
    /// Another node stored records in a service-bound queue, or released a batch of them:
    /// this node's receivers of that queue look again.
    Outbox {
        /// The queue.
        kind: crate::outbox::OutboxKind,
    },
    /// This node may have missed changes (its channel to the others was lost): whatever it
    /// caches may be stale, and what it recorded of its own connections may be gone.
    Resync,
}

impl Hub {
    /// Marks `Connected` the views of identities connected to another node (their keys and
    /// views, as this node sees them). Without other nodes, or when they cannot be asked now,
    /// the views stay as this node sees them.
    pub(crate) async fn with_presence_elsewhere<'v>(
        &self,
        views: impl IntoIterator<Item = (String, &'v mut crate::record::LiveView)>,
    ) {
        let Some(peers) = self.inner.peers.get() else { return };
        let mut unseen: Vec<(String, &mut crate::record::LiveView)> =
            views.into_iter().filter(|(_, live)| !live.connected).collect();
        if unseen.is_empty() {
            return;
        }
        let keys: Vec<String> = unseen.iter().map(|(key, _)| key.clone()).collect();
        match peers.connected_elsewhere(&keys).await {
            Ok(elsewhere) => {
                for (key, live) in &mut unseen {
                    live.connected |= elsewhere.contains(key.as_str());
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot ask where devices are connected; reporting this node's view"),
        }
    }

    /// [`with_presence_elsewhere`](Self::with_presence_elsewhere) for one identity.
    pub(crate) async fn live_view_anywhere(
        &self,
        key: String,
        mut live: crate::record::LiveView,
    ) -> crate::record::LiveView {
        self.with_presence_elsewhere([(key, &mut live)]).await;
        live
    }

    /// Connects this hub to the other nodes serving it (once, at start; later calls are
    /// ignored): its devices' connections are recorded where the others find them, and a
    /// direct method for a device connected elsewhere goes to that node.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.inner.peers.set(peers);
    }

    /// Brings this node up to date with a change another node made (see the module docs).
    /// Returns once done; a store that cannot be read now leaves the record to be read again
    /// when next needed.
    pub async fn peer_changed(&self, change: PeerChange) {
        let inner = &self.inner;
        match change {
            PeerChange::Record { key } => {
                if let Some(slot) = inner.held(&key) {
                    inner.refresh(&key, &slot).await;
                }
            }
            PeerChange::C2dQueued { key } => {
                if let Some(slot) = inner.held(&key) {
                    self.reload_c2d(&key, &slot).await;
                }
            }
            PeerChange::Telemetry {
                partition,
                partition_sequence,
                sequence_number,
                enqueued_ms,
            } => {
                let enqueued = chrono::DateTime::from_timestamp_millis(enqueued_ms).unwrap_or_default();
                inner
                    .telemetry
                    .advanced(partition, partition_sequence, sequence_number, enqueued);
            }
            PeerChange::Job { id } => self.job_changed(&id).await,
            PeerChange::ConsumerGroups => self.reload_consumer_groups().await,
            PeerChange::Outbox { kind } => match kind {
                crate::outbox::OutboxKind::Feedback => inner.feedback.wake(),
                crate::outbox::OutboxKind::FileNotifications => inner.file_notifications.wake(),
            },
            PeerChange::Connected { key } => {
                if let Some(slot) = inner.held(&key) {
                    inner.kick(&slot, "the device connected to another node");
                }
            }
            PeerChange::Resync => {
                tracing::info!(hub = %inner.host_name, held = inner.devices.len(), "re-reading every device held: changes by other nodes may have been missed");
                for (key, slot) in inner.devices.entries() {
                    let session = slot.live.lock().session_id();
                    match session {
                        Some(session) => {
                            inner.refresh(&key, &slot).await;
                            inner.announce(&key, session).await;
                            if split_key(&key).1.is_none() {
                                self.reload_c2d(&key, &slot).await;
                            }
                        }
                        None => inner.forget(&slot).await,
                    }
                }
                // Records stored or released meanwhile: receivers look again; jobs created or
                // cancelled meanwhile are picked up.
                inner.feedback.wake();
                inner.file_notifications.wake();
                self.run_stored_jobs();
                self.reload_consumer_groups().await;
            }
        }
    }
}

impl HubInner {
    /// Whether this node does the housekeeping of the store: always, unless other nodes serve
    /// the hub too and another one does it.
    pub(crate) fn runs_housekeeping(&self) -> bool {
        self.peers.get().is_none_or(|p| p.runs_housekeeping())
    }

    /// Records, for the other nodes, that `key` is connected here in `session`. A failure is
    /// logged, not the device's: it stays connected, and only calls through other nodes miss it
    /// until the node's next resync.
    pub(crate) async fn announce(&self, key: &str, session: u64) {
        if let Some(peers) = self.peers.get() {
            if let Err(e) = peers.connected(key, session).await {
                tracing::warn!(key, error = %e, "cannot record the device's connection for the other nodes");
            }
        }
    }

    /// Re-reads the record of the held slot `key` under its write lock, and acts for a live
    /// session on what changed.
    async fn refresh(&self, key: &str, slot: &Arc<Slot>) {
        let mut guard = slot.write.clone().lock_owned().await;
        if *guard {
            return;
        }
        let stored = match split_key(key) {
            (device, Some(module)) => self.store.get_module(device, module).await,
            (device, None) => self.store.get_device(device).await,
        };
        let new = match stored {
            Ok(rec) => rec.map(Arc::new),
            Err(e) => {
                // A connected device keeps the record it has (its session reads it); another is
                // read again when next needed.
                tracing::warn!(key, error = %e, "cannot re-read a device another node changed");
                if !slot.live.lock().view().connected {
                    *slot.record.write() = None;
                }
                return;
            }
        };
        let old = slot.record();
        *slot.record.write() = Some(new.clone());
        let gone = match (&old, &new) {
            (Some(old), Some(new)) if new.generation_id == old.generation_id => {
                if new.status == Status::Disabled {
                    Some("device disabled on another node")
                } else {
                    self.push_desired_change(slot, old, new);
                    None
                }
            }
            (Some(_), Some(_)) => Some("device re-created on another node"),
            (Some(_), None) => Some("device deleted on another node"),
            (None, _) => None,
        };
        if let Some(why) = gone {
            self.kick(slot, why);
            if split_key(key).1.is_none() {
                self.kick_held_modules(key, why);
            }
        }
        self.retire_if_empty(key, slot, &mut guard);
    }

    /// Pushes the desired-properties change from `old` to `new` to the slot's session, as the
    /// patch the writing node sent its own devices: what changed, removals as `null`.
    fn push_desired_change(&self, slot: &Slot, old: &DeviceRecord, new: &DeviceRecord) {
        if new.twin.desired_version <= old.twin.desired_version {
            return;
        }
        let diff = merge_diff(&old.twin.desired, &new.twin.desired);
        if !diff.is_empty() {
            self.notify_desired(slot, diff, new.twin.desired_version);
        }
    }

    /// Ends the sessions of the held modules of the device `device_key`.
    fn kick_held_modules(&self, device_key: &str, why: &str) {
        let prefix = crate::record::module_key(device_key, "");
        for (key, slot) in self.devices.entries() {
            if key.starts_with(&prefix) {
                self.kick(&slot, why);
            }
        }
    }

    /// Drops the cached record of an idle slot, under its write lock: it is read again when next
    /// needed.
    async fn forget(&self, slot: &Slot) {
        let guard = slot.write.clone().lock_owned().await;
        if !*guard {
            *slot.record.write() = None;
        }
    }
}
