//! Device sessions (sans-IO), direct methods and cloud-to-device messages (hub-dice-tpm.md §A4–A7).
//!
//! The server's MQTT adapter owns the socket. After [`Hub::authenticate`] it calls
//! [`Hub::open_session`] and then, for each packet, [`DeviceSession::subscribe`],
//! [`DeviceSession::unsubscribe`] or [`DeviceSession::handle_publish`]; it writes the returned
//! [`Outbound`] publishes (direct answers) and everything arriving on the session's channel
//! (desired patches, method requests, C2D) to the device. When that channel closes, the hub has
//! ended the session (a newer connection replaced it, or the device was deleted or disabled) and
//! the server should disconnect the device.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use dps_proto::codes;
use dps_proto::hub_mqtt::{
    c2d_topic, desired_patch_topic, feed_filter, feeds_of, method_request_topic, subscription_allowed,
    twin_response_topic, Feed, HubPublish,
};
use dps_proto::model::hub::merge_patch;
use dps_proto::twin_limits::{self, Section};
use serde_json::{Map, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

mod credentials;

pub(crate) use credentials::Renewal;
pub use credentials::RenewalLimits;

use crate::auth::DeviceIdentity;
use crate::c2d::{Ack, C2dOutcome, C2dRecord, DeviceQueue, Locked, QueueChange, Settled, C2D_QUEUE_LIMIT, MAX_C2D_TTL};
use crate::error::{C2dError, MethodError, SessionError};
use crate::record::{key_of, LiveView};
use crate::{Hub, HubInner, Slot};

/// Capacity of a session's outbound channel. A device whose connection cannot drain this many
/// hub-initiated publishes is considered stuck and is disconnected (it will re-GET its twin on
/// reconnect), rather than letting its queue grow without bound.
pub const OUTBOUND_CAPACITY: usize = 256;

/// A twin response.
fn twin_response(status: u16, rid: String, version: Option<i64>, payload: Bytes) -> Outbound {
    Outbound {
        topic: twin_response_topic(status, &rid, version),
        payload,
        qos: 0,
        kind: OutboundKind::TwinResponse { rid, status, version },
    }
}

/// A message from the hub to a device. The MQTT adapter publishes it on `topic` at
/// `min(qos, granted QoS of the matching subscription)`; other transports (AMQP) read what it is
/// from `kind` and frame it their own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Its MQTT topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// 0 for twin responses, desired patches and method requests (as IoT Hub sends them), 1 for
    /// cloud-to-device messages.
    pub qos: u8,
    /// What it is, for transports without topics.
    pub kind: OutboundKind,
}

/// What an [`Outbound`] message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundKind {
    /// The answer to a twin request.
    TwinResponse {
        /// The request's id.
        rid: String,
        /// HTTP-like status (200 GET, 204 patch, 4xx/5xx refusals).
        status: u16,
        /// The reported-properties version after a patch.
        version: Option<i64>,
    },
    /// The answer to a certificate renewal (`$iothub/credentials/res/{status}/?$rid=`).
    CredentialResponse {
        /// The request's id.
        rid: String,
        /// 202 (accepted), 200 (issued), or the error's status.
        status: u16,
    },
    /// A desired-properties patch.
    DesiredPatch {
        /// The desired-properties version it brings the twin to.
        version: i64,
    },
    /// A direct-method call the device must answer with [`HubPublish::MethodResponse`].
    MethodRequest {
        /// Method name.
        name: String,
        /// Request id the answer must carry.
        rid: String,
    },
    /// A cloud-to-device message with its properties (`$.mid`, `$.to`, then application
    /// properties). The device settles it with [`DeviceSession::settle_c2d`] and `lock_token`.
    C2d {
        /// Properties, system ones with their `$.` names.
        properties: Vec<(String, String)>,
        /// Names this delivery when the device settles it.
        lock_token: String,
    },
}

/// A device's answer to a direct method: the body of the REST response, so its wire shape
/// (`{"status": int, "payload": any}`) is the registry model's.
pub type MethodResponse = dps_proto::model::hub::CloudToDeviceMethodResult;

pub(crate) struct PendingMethod {
    device_key: String,
    session_id: u64,
    tx: oneshot::Sender<MethodResponse>,
}

/// Which hub-initiated feeds the session's subscriptions cover.
#[derive(Debug, Default, Clone, Copy)]
struct Feeds {
    c2d: bool,
    twin_responses: bool,
    desired: bool,
    methods: bool,
    credentials: bool,
}

impl Feeds {
    fn of(filters: &[String]) -> Self {
        let mut f = Feeds::default();
        for feed in filters.iter().flat_map(|x| feeds_of(x)) {
            match feed {
                Feed::C2d => f.c2d = true,
                Feed::TwinResponses => f.twin_responses = true,
                Feed::DesiredPatches => f.desired = true,
                Feed::Methods => f.methods = true,
                Feed::CredentialResponses => f.credentials = true,
            }
        }
        f
    }

    fn has(self, feed: Feed) -> bool {
        match feed {
            Feed::C2d => self.c2d,
            Feed::TwinResponses => self.twin_responses,
            Feed::DesiredPatches => self.desired,
            Feed::Methods => self.methods,
            Feed::CredentialResponses => self.credentials,
        }
    }
}

struct LiveSession {
    id: u64,
    client_device_id: String,
    tx: mpsc::Sender<Outbound>,
    filters: Vec<String>,
    feeds: Feeds,
}

/// Per-device connection state (not persisted: meaningless after a restart).
#[derive(Default)]
pub(crate) struct Live {
    session: Option<LiveSession>,
    connection_state_updated: Option<DateTime<Utc>>,
    pub(crate) last_activity: Option<DateTime<Utc>>,
    pub(crate) c2d: DeviceQueue,
}

impl Live {
    /// No session and nothing queued: nothing here would be lost if the slot were dropped, but
    /// the connection timestamps (which a restart loses too).
    pub(crate) fn is_idle(&self) -> bool {
        self.session.is_none() && self.c2d.is_empty()
    }

    /// The live session's id, if there is one.
    pub(crate) fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    pub(crate) fn view(&self) -> LiveView {
        LiveView {
            connected: self.session.is_some(),
            connection_state_updated: self.connection_state_updated,
            last_activity: self.last_activity,
            c2d_queued: self.c2d.len(),
        }
    }

    /// Ends the live session, if any. Dropping its sender closes the server's receiver; the
    /// cloud-to-device messages it had not settled go back to the queue.
    pub(crate) fn disconnect(&mut self, now: DateTime<Utc>) -> Option<u64> {
        let s = self.session.take()?;
        self.c2d.unlock_all();
        self.connection_state_updated = Some(now);
        Some(s.id)
    }

    /// Hands `out` to the live session if it subscribed to `feed`. A full or closed channel ends
    /// the session (see [`OUTBOUND_CAPACITY`]).
    fn deliver(&mut self, feed: Feed, out: Outbound, now: DateTime<Utc>) -> bool {
        let Some(s) = &self.session else {
            return false;
        };
        if !s.feeds.has(feed) {
            return false;
        }
        match s.tx.try_send(out) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::warn!(device = %s.client_device_id, capacity = OUTBOUND_CAPACITY, "device is not draining its outbound queue; disconnecting it");
                self.disconnect(now);
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.disconnect(now);
                false
            }
        }
    }

    /// Delivers queued C2D messages, each under a fresh lock token, while the session takes
    /// them; expired ones met on the way are dead-lettered into `settled`.
    pub(crate) fn flush_c2d(&mut self, now: DateTime<Utc>, settled: &mut Settled) {
        loop {
            let Some(s) = self.session.as_ref().filter(|s| s.feeds.c2d) else {
                return;
            };
            let topic_device = s.client_device_id.clone();
            let Some(record) = self.c2d.next(now, settled) else {
                return;
            };
            let lock_token = uuid::Uuid::new_v4().to_string();
            let out = Outbound {
                topic: c2d_topic(&topic_device, &record.properties),
                payload: record.body.clone(),
                qos: 1,
                kind: OutboundKind::C2d {
                    properties: record.properties.clone(),
                    lock_token: lock_token.clone(),
                },
            };
            if !self.deliver(Feed::C2d, out, now) {
                self.c2d.insert(record);
                return;
            }
            self.c2d.locked.push(Locked {
                record,
                lock_token,
                until: None,
            });
        }
    }
}

/// One device connection, driven by the server's MQTT adapter. Dropping it (or
/// [`DeviceSession::close`]) marks the device Disconnected — unless a newer session already
/// replaced it.
pub struct DeviceSession {
    hub: Hub,
    slot: Arc<Slot>,
    key: String,
    identity: DeviceIdentity,
    id: u64,
}

impl std::fmt::Debug for DeviceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSession")
            .field("device_id", &self.identity.device_id)
            .field("id", &self.id)
            .finish()
    }
}

impl Hub {
    /// Starts the device's session, replacing (disconnecting) any previous one: IoT Hub allows one
    /// connection per device. Returns the session and the channel of hub-initiated publishes.
    ///
    /// Fails with [`SessionError::Closed`] if the device was deleted, re-created or disabled since
    /// it authenticated.
    pub async fn open_session(
        &self,
        identity: DeviceIdentity,
    ) -> Result<(DeviceSession, mpsc::Receiver<Outbound>), SessionError> {
        let closed = || SessionError::Closed {
            device_id: identity.device_id.clone(),
        };
        let key = identity.key();
        let (slot, _) = self
            .inner
            .find_key(&key)
            .await
            .map_err(|source| SessionError::Storage {
                device_id: identity.device_id.clone(),
                source,
            })?
            .ok_or_else(closed)?;
        let still_valid = |slot: &Slot| {
            slot.record().is_some_and(|rec| {
                rec.generation_id == identity.generation_id && rec.status != crate::record::Status::Disabled
            })
        };
        if !still_valid(&slot) {
            return Err(closed());
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let id = self.inner.next_session_id();
        let now = self.inner.now();
        {
            let mut live = slot.live.lock();
            if let Some(old) = live.disconnect(now) {
                tracing::info!(device = %identity.device_id, old_session = old, "new connection replaces the previous one");
            }
            live.session = Some(LiveSession {
                id,
                client_device_id: identity.client_device_id.clone(),
                tx,
                filters: Vec::new(),
                feeds: Feeds::default(),
            });
            live.connection_state_updated = Some(now);
            live.last_activity = Some(now);
        }
        // A delete or disable commits the record first and then ends the live session; checking
        // again after installing ours means one of the two always sees the other.
        if !still_valid(&slot) {
            let mut live = slot.live.lock();
            if live.session.as_ref().is_some_and(|s| s.id == id) {
                live.disconnect(now);
            }
            return Err(closed());
        }
        tracing::info!(device = %identity.device_id, module = ?identity.module_id, session = id, method = ?identity.method, "device connected");
        self.inner.announce(&key, id).await;
        if self.inner.store.shared() && identity.module_id.is_none() {
            // The stored queue is the truth: another node may have queued messages for it.
            self.reload_c2d(&key, &slot).await;
        }
        Ok((
            DeviceSession {
                hub: self.clone(),
                slot,
                key,
                identity,
                id,
            },
            rx,
        ))
    }

    /// Calls a direct method on a connected device and waits for its answer. The request goes out
    /// as `$iothub/methods/POST/{name}/?$rid={rid}` with the JSON payload.
    pub async fn invoke_method(
        &self,
        device_id: &str,
        method_name: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<MethodResponse, MethodError> {
        self.invoke_method_on(device_id, None, method_name, payload, timeout)
            .await
    }

    /// [`Hub::invoke_method`] on a device or, with `module_id`, on one of its modules (which
    /// answers on its own connection). An absent module is [`MethodError::ModuleNotFound`].
    /// When other nodes serve the hub too ([`Hub::set_peers`]), a device connected to another
    /// node is called there; connected nowhere is [`MethodError::DeviceNotOnline`].
    pub async fn invoke_method_on(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        method_name: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<MethodResponse, MethodError> {
        crate::counters::Counters::count(&self.inner.counters.methods_invoked);
        self.invoke(device_id, module_id, method_name, payload, timeout, true)
            .await
    }

    /// [`Hub::invoke_method_on`] for a device connected to this node only: what a node does for
    /// another node's call (which must not travel on).
    pub async fn invoke_method_here(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        method_name: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<MethodResponse, MethodError> {
        self.invoke(device_id, module_id, method_name, payload, timeout, false)
            .await
    }

    async fn invoke(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        method_name: &str,
        payload: Value,
        timeout: Duration,
        anywhere: bool,
    ) -> Result<MethodResponse, MethodError> {
        if method_name.is_empty() || method_name.contains(['/', '+', '#']) {
            return Err(MethodError::InvalidMethodName(method_name.to_string()));
        }
        let path = dps_proto::hub_mqtt::identity_path(device_id, module_id);
        let storage = |source| MethodError::Storage {
            device_id: path.clone(),
            source,
        };
        let device_not_found = || MethodError::DeviceNotFound {
            device_id: device_id.to_string(),
        };
        let (slot, _) = self
            .inner
            .find(device_id)
            .await
            .map_err(storage)?
            .ok_or_else(device_not_found)?;
        let (slot, key) =
            match module_id {
                None => (slot, key_of(device_id)),
                Some(m) => {
                    let key = crate::record::module_key(device_id, m);
                    let (slot, _) = self.inner.find_key(&key).await.map_err(storage)?.ok_or_else(|| {
                        MethodError::ModuleNotFound {
                            device_id: device_id.to_string(),
                            module_id: m.to_string(),
                        }
                    })?;
                    (slot, key)
                }
            };
        let device_id = path.as_str();
        let elsewhere = self.inner.peers.get().filter(|_| anywhere).cloned();
        let here = slot.live.lock().session_id();
        if let (Some(peers), None) = (&elsewhere, here) {
            let call = crate::peers::MethodCall {
                key,
                method: method_name.to_string(),
                payload,
                timeout,
            };
            return peers.call(&call).await?.ok_or_else(|| MethodError::DeviceNotOnline {
                device_id: device_id.to_string(),
            });
        }
        let rid = self.inner.next_rid();
        let (tx, rx) = oneshot::channel();
        let body = Bytes::from(serde_json::to_vec(&payload).unwrap_or_else(|_| b"null".to_vec()));
        let now = self.inner.now();
        {
            let mut live = slot.live.lock();
            let Some(session_id) = live.session_id() else {
                return Err(MethodError::DeviceNotOnline {
                    device_id: device_id.to_string(),
                });
            };
            // Registered before the publish leaves, so an instant answer finds it.
            self.inner.methods.insert(
                rid.clone(),
                PendingMethod {
                    device_key: key.clone(),
                    session_id,
                    tx,
                },
            );
            let out = Outbound {
                topic: method_request_topic(method_name, &rid),
                payload: body,
                qos: 0,
                kind: OutboundKind::MethodRequest {
                    name: method_name.to_string(),
                    rid: rid.clone(),
                },
            };
            if !live.deliver(Feed::Methods, out, now) {
                drop(live);
                self.inner.methods.remove(&rid);
                return Err(MethodError::DeviceNotOnline {
                    device_id: device_id.to_string(),
                });
            }
        }
        tracing::debug!(device = %device_id, method = %method_name, rid = %rid, "direct method sent");
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            // The session ended while we waited (its pending calls are dropped on close).
            Ok(Err(_)) => Err(MethodError::DeviceNotOnline {
                device_id: device_id.to_string(),
            }),
            Err(_) => {
                self.inner.methods.remove(&rid);
                Err(MethodError::Timeout {
                    device_id: device_id.to_string(),
                    method: method_name.to_string(),
                    timeout,
                })
            }
        }
    }

    /// Sends a cloud-to-device message (at most 64 KB of body and properties, IoT Hub's limit,
    /// else [`C2dError::TooLarge`]). It is written to the store first, so an accepted message
    /// survives a restart; then delivered (QoS 1) if the device has a session subscribed to
    /// `devices/{id}/messages/devicebound/#`, else queued (up to [`C2D_QUEUE_LIMIT`] with the
    /// ones delivered and not settled) until it next subscribes or the message expires.
    ///
    /// `$.mid` (a fresh UUID) and `$.to` are added when absent. `$.exp` (an RFC 3339 time) sets
    /// the expiry, else it is the hub's default time to live; `iothub-ack` (none, positive,
    /// negative, full) asks for feedback. Other properties go to the device as they are.
    pub async fn send_c2d(
        &self,
        device_id: &str,
        body: impl Into<Bytes>,
        properties: Vec<(String, String)>,
    ) -> Result<(), C2dError> {
        let sent = self.queue_c2d(device_id, body.into(), properties).await;
        if sent.is_ok() {
            crate::counters::Counters::count(&self.inner.counters.c2d_sent);
        }
        sent
    }

    /// [`Hub::send_c2d`], uncounted.
    async fn queue_c2d(&self, device_id: &str, body: Bytes, properties: Vec<(String, String)>) -> Result<(), C2dError> {
        let (slot, rec) = self.inner.c2d_device(device_id).await?;
        let now = self.inner.now();
        let storage = |source| C2dError::Storage {
            device_id: rec.device_id.clone(),
            source,
        };
        let seq = self.inner.new_queue_seq().await.map_err(storage)?;
        let record = self.inner.c2d_record(seq, &rec, body, properties, now)?;
        if self.inner.store.shared() {
            return self.send_c2d_shared(&slot, &rec, record, now).await;
        }
        {
            let mut live = slot.live.lock();
            if live.c2d.len() >= C2D_QUEUE_LIMIT {
                return Err(C2dError::QueueFull {
                    device_id: rec.device_id.clone(),
                    limit: C2D_QUEUE_LIMIT,
                });
            }
            live.c2d.reserved += 1;
        }
        let change = QueueChange {
            put_c2d: vec![record.clone()],
            ..QueueChange::default()
        };
        let stored = self.inner.store.update_queues(&change).await;
        let mut settled = Settled::default();
        {
            let mut live = slot.live.lock();
            live.c2d.reserved -= 1;
            if let Err(source) = stored {
                return Err(C2dError::Storage {
                    device_id: rec.device_id.clone(),
                    source,
                });
            }
            live.c2d.insert(record);
            live.flush_c2d(now, &mut settled);
            tracing::debug!(device = %rec.device_id, held = live.c2d.len(), "cloud-to-device message accepted");
        }
        self.inner.c2d_devices.insert(rec.key(), slot);
        self.finish(settled);
        Ok(())
    }
}

impl Hub {
    /// [`Hub::send_c2d`] on a store other nodes write too (decision 0031): the stored queue is
    /// the truth, counted against the limit whatever node queued its messages. The message is
    /// stored (other nodes hear of it: the one holding the device's session delivers it), then
    /// handed to the device if its session is on this node; a device connected nowhere reads
    /// its queue when it connects.
    async fn send_c2d_shared(
        &self,
        slot: &Arc<Slot>,
        rec: &crate::record::DeviceRecord,
        record: C2dRecord,
        now: DateTime<Utc>,
    ) -> Result<(), C2dError> {
        let storage = |source| C2dError::Storage {
            device_id: rec.device_id.clone(),
            source,
        };
        let store = &self.inner.store;
        if store.device_c2d(&rec.key()).await.map_err(storage)?.len() >= C2D_QUEUE_LIMIT {
            return Err(C2dError::QueueFull {
                device_id: rec.device_id.clone(),
                limit: C2D_QUEUE_LIMIT,
            });
        }
        let change = QueueChange {
            put_c2d: vec![record.clone()],
            ..QueueChange::default()
        };
        store.update_queues(&change).await.map_err(storage)?;
        let mut settled = Settled::default();
        let here = {
            let mut live = slot.live.lock();
            let here = live.session_id().is_some();
            if here {
                live.c2d.merge(vec![record]);
                live.flush_c2d(now, &mut settled);
            }
            here
        };
        if here {
            self.inner.c2d_devices.insert(rec.key(), slot.clone());
        }
        self.finish(settled);
        Ok(())
    }

    /// On a shared store, brings the queue of the device whose session is on this node up to
    /// the stored one (at connect, and when another node queued a message for it) and delivers
    /// what the session takes.
    pub(crate) async fn reload_c2d(&self, key: &str, slot: &Arc<Slot>) {
        let stored = match self.inner.store.device_c2d(key).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot read the device's cloud-to-device queue");
                return;
            }
        };
        let now = self.inner.now();
        let mut settled = Settled::default();
        {
            let mut live = slot.live.lock();
            if live.session_id().is_none() {
                return;
            }
            live.c2d.replace_pending(stored);
            live.flush_c2d(now, &mut settled);
        }
        self.inner.c2d_devices.insert(key.to_string(), slot.clone());
        self.finish(settled);
    }
}

impl HubInner {
    /// The message `send_c2d` stores: properties in IoT Hub's order, limits checked, expiry and
    /// acknowledgement read.
    fn c2d_record(
        &self,
        seq: u64,
        rec: &crate::record::DeviceRecord,
        body: Bytes,
        properties: Vec<(String, String)>,
        now: DateTime<Utc>,
    ) -> Result<C2dRecord, C2dError> {
        let invalid = |name: &str, value: &str, why: &str| C2dError::InvalidProperty {
            device_id: rec.device_id.clone(),
            name: name.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        };
        // `$.mid` and `$.to` lead, as IoT Hub sends them; the caller's values win.
        let take = |name: &str| properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mid = take("$.mid").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let to = take("$.to").unwrap_or_else(|| format!("/devices/{}/messages/deviceBound", rec.device_id));
        let ack = match take("iothub-ack") {
            None => Ack::None,
            Some(v) => {
                Ack::parse(&v).ok_or_else(|| invalid("iothub-ack", &v, "must be none, positive, negative or full"))?
            }
        };
        let longest = now + chrono::Duration::from_std(MAX_C2D_TTL).unwrap_or(chrono::Duration::MAX);
        let expires_at = match take("$.exp") {
            None => now + chrono::Duration::from_std(self.c2d_ttl).unwrap_or(chrono::Duration::MAX),
            Some(v) => dps_proto::timefmt::parse(&v)
                .ok_or_else(|| invalid("$.exp", &v, "must be an RFC 3339 time"))?
                .min(longest),
        };
        let mut props = Vec::with_capacity(properties.len() + 2);
        props.push(("$.mid".to_string(), mid));
        props.push(("$.to".to_string(), to));
        props.extend(properties.into_iter().filter(|(k, _)| k != "$.mid" && k != "$.to"));
        let size = twin_limits::message_size(body.len(), props.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if size > twin_limits::C2D_MAX_BYTES {
            return Err(C2dError::TooLarge {
                device_id: rec.device_id.clone(),
                size,
                limit: twin_limits::C2D_MAX_BYTES,
            });
        }
        Ok(C2dRecord {
            seq,
            device_id: rec.device_id.clone(),
            generation_id: rec.generation_id.clone(),
            body,
            properties: props,
            enqueued_at: now,
            expires_at,
            ack,
            delivery_count: 0,
        })
    }
}

impl HubInner {
    /// Pushes a desired-properties patch (only the changed part + `$version`) to the device's
    /// session if it subscribed to desired patches.
    pub(crate) fn notify_desired(&self, slot: &Slot, mut diff: Map<String, Value>, version: i64) {
        diff.insert("$version".into(), version.into());
        let payload = Bytes::from(Value::Object(diff).to_string());
        let out = Outbound {
            topic: desired_patch_topic(version),
            payload,
            qos: 0,
            kind: OutboundKind::DesiredPatch { version },
        };
        let now = self.now();
        slot.live.lock().deliver(Feed::DesiredPatches, out, now);
    }

    /// Ends the device's live session (device deleted or disabled).
    pub(crate) fn kick(&self, slot: &Slot, why: &str) {
        let now = self.now();
        if let Some(id) = slot.live.lock().disconnect(now) {
            tracing::info!(session = id, reason = why, "device session ended by the hub");
        }
    }
}

impl DeviceSession {
    /// The authenticated identity.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// Whether this is still the device's live session (not replaced, deleted, disabled, closed).
    pub fn is_current(&self) -> bool {
        self.slot.live.lock().session.as_ref().is_some_and(|s| s.id == self.id)
    }

    /// Handles SUBSCRIBE for one filter. Returns the granted QoS (`min(requested, 1)`: IoT Hub
    /// never grants QoS 2) or `None` when the filter is not one a device may use (the server
    /// answers 0x80). Subscribing to C2D delivers queued messages on the outbound channel.
    pub fn subscribe(&self, filter: &str, requested_qos: u8) -> Option<u8> {
        if !subscription_allowed(filter, &self.identity.client_path) {
            tracing::debug!(device = %self.identity.device_id, filter, "subscription refused");
            return None;
        }
        let now = self.hub.inner.now();
        let mut live = self.slot.live.lock();
        let s = live.session.as_mut().filter(|s| s.id == self.id)?;
        if !s.filters.iter().any(|f| f == filter) {
            s.filters.push(filter.to_string());
        }
        s.feeds = Feeds::of(&s.filters);
        let mut settled = Settled::default();
        if s.feeds.c2d {
            live.flush_c2d(now, &mut settled);
        }
        drop(live);
        self.hub.finish(settled);
        Some(requested_qos.min(1))
    }

    /// Turns on `feed` for this session, as subscribing to its MQTT topic filter does: the AMQP
    /// adapter calls it when the device attaches the link that carries the feed.
    pub fn enable(&self, feed: Feed) -> bool {
        self.subscribe(&feed_filter(feed, &self.identity.client_path), 1)
            .is_some()
    }

    /// Turns `feed` off again (the device detached its link).
    pub fn disable(&self, feed: Feed) {
        self.unsubscribe(&feed_filter(feed, &self.identity.client_path));
    }

    /// Settles the cloud-to-device message delivered under `lock_token` (MQTT PUBACK: complete;
    /// AMQP accepted, rejected, released or modified; the AMQP link ending first: release).
    /// An abandoned or released message goes back to the head of the queue and the queue is
    /// offered again. `false` if no message holds the lock (settled already, or it went back
    /// to the queue when its session ended).
    pub fn settle_c2d(&self, lock_token: &str, outcome: C2dOutcome) -> bool {
        self.hub
            .settle_in(&self.slot, &self.identity.device_id, lock_token, outcome)
    }

    /// Handles UNSUBSCRIBE for one filter.
    pub fn unsubscribe(&self, filter: &str) {
        let mut live = self.slot.live.lock();
        if let Some(s) = live.session.as_mut().filter(|s| s.id == self.id) {
            s.filters.retain(|f| f != filter);
            s.feeds = Feeds::of(&s.filters);
        }
    }

    /// Handles a device PUBLISH. Returns the publishes to send back right away (twin responses);
    /// telemetry and method responses produce none (the server still PUBACKs QoS 1). An error
    /// means the device broke the protocol (IoT Hub disconnects it) or the session is over.
    pub async fn handle_publish(
        &self,
        now: DateTime<Utc>,
        topic: &str,
        payload: &[u8],
    ) -> Result<Vec<Outbound>, SessionError> {
        let request = HubPublish::parse(topic, &self.identity.client_path)?;
        self.handle(now, request, payload).await
    }

    /// Handles a device's request, whatever transport framed it (the MQTT adapter parses topics
    /// with [`DeviceSession::handle_publish`]; AMQP builds the [`HubPublish`] from its link and
    /// message properties). Returns the answers to send back right away, as
    /// [`DeviceSession::handle_publish`] does.
    pub async fn handle(
        &self,
        now: DateTime<Utc>,
        request: HubPublish,
        payload: &[u8],
    ) -> Result<Vec<Outbound>, SessionError> {
        {
            let mut live = self.slot.live.lock();
            if live.session.as_ref().is_none_or(|s| s.id != self.id) {
                return Err(self.closed());
            }
            live.last_activity = Some(now);
        }
        match request {
            HubPublish::Telemetry { properties } => {
                self.telemetry(now, properties, payload).await?;
                Ok(Vec::new())
            }
            HubPublish::TwinGet { rid } => {
                let rec = self.slot.record().ok_or_else(|| self.closed())?;
                Ok(vec![twin_response(
                    200,
                    rid,
                    None,
                    Bytes::from(rec.twin.device_document().to_string()),
                )])
            }
            HubPublish::TwinReportedPatch { rid } => self.reported_patch(now, &rid, payload).await,
            HubPublish::IssueCertificate { rid } => self.issue_certificate(now, &rid, payload).await,
            HubPublish::MethodResponse { status, rid } => {
                let key = &self.key;
                match self.hub.inner.methods.remove_if(&rid, |_, p| &p.device_key == key) {
                    Some((_, pending)) => {
                        let payload = if payload.iter().all(u8::is_ascii_whitespace) {
                            Value::Null
                        } else {
                            serde_json::from_slice(payload)
                                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
                        };
                        let _ = pending.tx.send(MethodResponse { status, payload });
                    }
                    None => {
                        tracing::debug!(device = %self.identity.device_id, rid = %rid, "method response for no pending call (late or unknown rid)");
                    }
                }
                Ok(Vec::new())
            }
        }
    }

    /// Ends the session (same as dropping it).
    pub fn close(self) {}

    fn closed(&self) -> SessionError {
        SessionError::Closed {
            device_id: self.identity.device_id.clone(),
        }
    }

    async fn telemetry(
        &self,
        now: DateTime<Utc>,
        properties: Vec<(String, String)>,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        self.hub.inner.ingest(&self.identity, now, properties, payload).await
    }

    async fn reported_patch(
        &self,
        now: DateTime<Utc>,
        rid: &str,
        payload: &[u8],
    ) -> Result<Vec<Outbound>, SessionError> {
        let error = |status: u16, code: u32, message: String| {
            vec![twin_response(
                status,
                rid.to_string(),
                None,
                Bytes::from(serde_json::json!({ "errorCode": code, "message": message }).to_string()),
            )]
        };
        let patch: Map<String, Value> = match serde_json::from_slice(payload) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Ok(error(
                    400,
                    codes::HUB_ARGUMENT_INVALID,
                    "reported properties patch must be a JSON object".into(),
                ))
            }
        };
        if let Err(e) = twin_limits::validate(Section::Reported, &patch) {
            tracing::debug!(device = %self.identity.device_id, error = %e, "reported properties patch refused");
            return Ok(error(400, codes::HUB_ARGUMENT_INVALID, e.to_string()));
        }
        let inner = &self.hub.inner;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let locked = match inner.lock_device(&self.key, false).await {
                Ok(locked) => locked,
                Err(e) => {
                    tracing::error!(device = %self.identity.device_id, error = %e, "reported properties not read");
                    return Ok(error(500, 500001, "could not read the twin".into()));
                }
            };
            let (slot, _guard) = locked
                .filter(|(s, _)| Arc::ptr_eq(s, &self.slot))
                .ok_or_else(|| self.closed())?;
            let rec = slot.record().ok_or_else(|| self.closed())?;
            let mut new = (*rec).clone();
            if merge_patch(&mut new.twin.reported, &patch) {
                // Checked on the result, before anything is written: a patch that would take the
                // section over the limit is refused whole.
                if let Err(e) = twin_limits::check_size(Section::Reported, &new.twin.reported) {
                    tracing::debug!(device = %self.identity.device_id, error = %e, "reported properties patch refused");
                    return Ok(error(400, codes::HUB_ARGUMENT_INVALID, e.to_string()));
                }
                new.twin.reported_version += 1;
                new.twin.reported_updated = now;
                new.twin.touch();
                match inner.commit(&slot, new).await {
                    // Another node wrote the twin meanwhile (the service's desired properties):
                    // the patch is applied again to what it wrote.
                    Err(e) if e.lost_race() && attempt < crate::RACE_ATTEMPTS => {
                        drop(_guard);
                        crate::after_lost_race(attempt).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(device = %self.identity.device_id, error = %e, "reported properties not stored");
                        return Ok(error(500, 500001, "could not store reported properties".into()));
                    }
                    Ok(_) => {}
                }
            }
            let version = slot
                .record()
                .map(|r| r.twin.reported_version)
                .unwrap_or(rec.twin.reported_version);
            return Ok(vec![twin_response(204, rid.to_string(), Some(version), Bytes::new())]);
        }
    }
}

impl Drop for DeviceSession {
    fn drop(&mut self) {
        let now = self.hub.inner.now();
        let ended = {
            let mut live = self.slot.live.lock();
            if live.session.as_ref().is_some_and(|s| s.id == self.id) {
                live.disconnect(now);
                true
            } else {
                false
            }
        };
        if ended {
            tracing::info!(device = %self.identity.device_id, session = self.id, "device disconnected");
        }
        if self.hub.inner.store.shared() {
            // Its next node, this one or another, reads the stored queue.
            let mut live = self.slot.live.lock();
            if live.session_id().is_none() {
                live.c2d.forget_waiting();
            }
        }
        // Calls waiting on this connection can no longer be answered: fail them now rather than
        // at their timeout.
        let (key, id) = (&self.key, self.id);
        self.hub
            .inner
            .methods
            .retain(|_, p| !(p.device_key == *key && p.session_id == id));
        if let Some(peers) = self.hub.inner.peers.get().cloned() {
            let key = key.clone();
            tokio::spawn(async move {
                if let Err(e) = peers.disconnected(&key, id).await {
                    tracing::warn!(key, error = %e, "cannot record for the other nodes that the device disconnected");
                }
            });
        }
    }
}
