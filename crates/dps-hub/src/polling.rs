//! Devices that talk to the hub request by request, without a session: the HTTPS device API
//! (`POST /devices/{id}/messages/events`, `GET /devices/{id}/messages/deviceBound`, complete,
//! reject and abandon by lock token), as the C, C# and Node HTTP transports use it.
//!
//! Each request authenticates on its own ([`Hub::authenticate_device`]). Telemetry goes the same
//! way as a session's ([`HubInner::ingest`]). A received cloud-to-device message is locked for
//! [`C2D_LOCK`]: the device settles it by its lock token, or the hub's sweep puts it back in
//! the queue when the lock runs out (uncounted, as Azure documents). A message is never both
//! delivered to a session and locked for a request: both take from the same queue. On a shared
//! store the lock is kept in the stored queue instead, so that a request may reach any node
//! (decision 0031).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use dps_proto::hub_mqtt::HubUsername;
use dps_proto::timefmt::format_record;
use dps_proto::twin_limits;

use crate::auth::DeviceIdentity;
use crate::c2d::{dispose, C2dOutcome, C2dRecord, Locked, Settled, C2D_LOCK};
use crate::error::{AuthError, C2dError, SessionError};
use crate::record::DeviceRecord;
use crate::store::HubStoreError;
use crate::telemetry::{system_property_name, TelemetryMessage};
use crate::{Hub, HubInner, Slot};

/// A store failure while serving `rec`'s queue.
fn storage(rec: &DeviceRecord, source: HubStoreError) -> C2dError {
    C2dError::Storage {
        device_id: rec.device_id.clone(),
        source,
    }
}

/// A cloud-to-device message handed to a device that asked for one, locked until it settles it
/// or [`PolledC2d::locked_until`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledC2d {
    /// Settles it ([`Hub::settle_polled_c2d`]).
    pub lock_token: String,
    /// The message.
    pub record: C2dRecord,
    /// When the lock runs out.
    pub locked_until: DateTime<Utc>,
}

impl Hub {
    /// Checks the credential of a request that names its device (the HTTPS device API): `token`
    /// a SAS token for `{this hub}/devices/{device_id}`, or else the TLS client certificate's
    /// thumbprints. Only the hub's own host name and the device's registered keys are judged.
    pub async fn authenticate_device(
        &self,
        now_unix: u64,
        device_id: &str,
        token: Option<&str>,
        client_cert: Option<crate::ClientCertificate>,
    ) -> Result<DeviceIdentity, AuthError> {
        self.authenticate_identity(now_unix, device_id, None, token, client_cert)
            .await
    }

    /// [`Hub::authenticate_device`] for a device or, with `module_id`, one of its modules (the
    /// token's audience then `{this hub}/devices/{device_id}/modules/{module_id}`): AMQP's CBS
    /// and links name either.
    pub async fn authenticate_identity(
        &self,
        now_unix: u64,
        device_id: &str,
        module_id: Option<&str>,
        token: Option<&str>,
        client_cert: Option<crate::ClientCertificate>,
    ) -> Result<DeviceIdentity, AuthError> {
        let username = HubUsername {
            host_name: self.inner.host_name.clone(),
            device_id: device_id.to_string(),
            module_id: module_id.map(str::to_string),
            api_version: None,
        };
        self.authenticate(now_unix, &username, token.map(str::as_bytes), client_cert)
            .await
    }

    /// Accepts a telemetry message from an authenticated device outside any session (HTTPS);
    /// `properties` are keyed as in MQTT topics (`$.mid`, … and application names). Returns
    /// once the message is stored.
    pub async fn send_telemetry(
        &self,
        identity: &DeviceIdentity,
        properties: Vec<(String, String)>,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        let now = self.inner.now();
        self.touch(identity, now);
        self.inner.ingest(identity, now, properties, payload).await
    }

    /// The device's next cloud-to-device message, locked for it for [`C2D_LOCK`]; `None` when
    /// none waits. Expired messages met on the way are dead-lettered.
    pub async fn receive_c2d(&self, identity: &DeviceIdentity) -> Result<Option<PolledC2d>, C2dError> {
        let (slot, rec) = self.inner.c2d_device(identity.device_id()).await?;
        let now = self.inner.now();
        if self.inner.store.shared() {
            slot.live.lock().last_activity = Some(now);
            return self.receive_stored_c2d(&rec, now).await;
        }
        let mut settled = Settled::default();
        let polled = {
            let mut live = slot.live.lock();
            live.last_activity = Some(now);
            live.c2d.next(now, &mut settled).map(|record| {
                let polled = PolledC2d {
                    lock_token: uuid::Uuid::new_v4().to_string(),
                    record,
                    locked_until: now + chrono::Duration::from_std(C2D_LOCK).unwrap_or(chrono::Duration::MAX),
                };
                live.c2d.locked.push(Locked {
                    record: polled.record.clone(),
                    lock_token: polled.lock_token.clone(),
                    until: Some(polled.locked_until),
                });
                polled
            })
        };
        if polled.is_some() {
            // The sweep returns the message to the queue if its lock runs out.
            self.inner.c2d_devices.insert(rec.key(), slot.clone());
        }
        self.finish(settled);
        Ok(polled)
    }

    /// Settles a message the device received under `lock_token` (complete, reject or abandon).
    /// `Ok(false)` when no message of this device holds the lock: settled already, or the lock
    /// ran out and the message went back to the queue (Azure's 412 `DeviceMessageLockLost`).
    pub async fn settle_polled_c2d(
        &self,
        identity: &DeviceIdentity,
        lock_token: &str,
        outcome: C2dOutcome,
    ) -> Result<bool, C2dError> {
        let (slot, rec) = self.inner.c2d_device(identity.device_id()).await?;
        slot.live.lock().last_activity = Some(self.inner.now());
        if self.inner.store.shared() {
            return self.settle_stored_c2d(&rec, lock_token, outcome).await;
        }
        Ok(self.settle_in(&slot, &identity.device_id, lock_token, outcome))
    }

    /// [`Hub::receive_c2d`] on a shared store, where no node holds the queue of a device
    /// without a session: the lock is taken in the stored queue, so that the device may settle
    /// the message through any node and no node hands it out again meanwhile (decision 0031).
    /// Expired messages are skipped here and dead-lettered by the housekeeping.
    async fn receive_stored_c2d(&self, rec: &DeviceRecord, now: DateTime<Utc>) -> Result<Option<PolledC2d>, C2dError> {
        let lock_token = uuid::Uuid::new_v4().to_string();
        let locked_until = now + chrono::Duration::from_std(C2D_LOCK).unwrap_or(chrono::Duration::MAX);
        let record = self
            .inner
            .store
            .lock_c2d(&rec.key(), None, &lock_token, now, locked_until)
            .await
            .map_err(|source| storage(rec, source))?;
        Ok(record.map(|record| PolledC2d {
            lock_token,
            record,
            locked_until,
        }))
    }

    /// [`Hub::settle_polled_c2d`] on a shared store: the lock is moved to one of this node's
    /// (so that it settles once, and nobody receives the message meanwhile), then the message
    /// leaves with its feedback or goes back to the stored queue, counted. A failure after the
    /// move leaves the message to come back when that lock runs out: delivered at least once.
    async fn settle_stored_c2d(
        &self,
        rec: &DeviceRecord,
        lock_token: &str,
        outcome: C2dOutcome,
    ) -> Result<bool, C2dError> {
        let now = self.inner.now();
        let hold = uuid::Uuid::new_v4().to_string();
        let until = now + chrono::Duration::from_std(C2D_LOCK).unwrap_or(chrono::Duration::MAX);
        let store = &self.inner.store;
        let Some(mut record) = store
            .lock_c2d(&rec.key(), Some(lock_token), &hold, now, until)
            .await
            .map_err(|source| storage(rec, source))?
        else {
            tracing::debug!(device = %rec.device_id, lock_token, ?outcome, "settlement of a cloud-to-device message not locked (any more)");
            return Ok(false);
        };
        match dispose(&mut record, outcome) {
            Some(status) => {
                let mut settled = Settled::default();
                settled.push(record, status);
                if let Some(write) = self.finish(settled) {
                    let _ = write.await;
                }
            }
            None => store.unlock_c2d(&record).await.map_err(|source| storage(rec, source))?,
        }
        Ok(true)
    }

    /// Settles the message delivered under `lock_token` in `slot`'s queue; an abandoned or
    /// released one goes back to the head of the queue and the queue is offered to the
    /// device's session again. Whether the lock was held.
    pub(crate) fn settle_in(&self, slot: &Slot, device_id: &str, lock_token: &str, outcome: C2dOutcome) -> bool {
        let now = self.inner.now();
        let mut settled = Settled::default();
        let found = {
            let mut live = slot.live.lock();
            let found = live.c2d.settle(lock_token, outcome, &mut settled);
            if found && matches!(outcome, C2dOutcome::Abandon | C2dOutcome::Release) {
                live.flush_c2d(now, &mut settled);
            }
            found
        };
        if !found {
            tracing::debug!(device = %device_id, lock_token, ?outcome, "settlement of a cloud-to-device message not locked (any more)");
        }
        self.finish(settled);
        found
    }

    /// Records the device's activity, when the hub holds it (it was just authenticated, so it
    /// usually does).
    fn touch(&self, identity: &DeviceIdentity, now: DateTime<Utc>) {
        if let Some(slot) = self.inner.held(&crate::record::key_of(&identity.device_id)) {
            slot.live.lock().last_activity = Some(now);
        }
    }
}

impl HubInner {
    /// Stores a device's telemetry message with IoT Hub's system properties, whatever
    /// transport brought it; `properties` are keyed as in MQTT topics (`$.` names for system
    /// properties). Returns once it is stored.
    pub(crate) async fn ingest(
        &self,
        id: &DeviceIdentity,
        now: DateTime<Utc>,
        properties: Vec<(String, String)>,
        payload: &[u8],
    ) -> Result<(), SessionError> {
        let size = twin_limits::message_size(payload.len(), properties.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if size > twin_limits::D2C_MAX_BYTES {
            return Err(SessionError::TooLarge {
                size,
                limit: twin_limits::D2C_MAX_BYTES,
            });
        }
        let mut system = Vec::new();
        let mut app = Vec::new();
        for (k, v) in properties {
            if k.starts_with("$.") {
                system.push((system_property_name(&k).into_owned(), v));
            } else {
                app.push((k, v));
            }
        }
        let auth_method = serde_json::json!({
            "scope": if id.module_id.is_some() { "module" } else { "device" },
            "type": id.method.type_name(),
            "issuer": "iothub",
            "acceptingIpFilterRule": null,
        });
        system.push(("iothub-connection-device-id".into(), id.device_id.clone()));
        if let Some(m) = &id.module_id {
            system.push(("iothub-connection-module-id".into(), m.clone()));
        }
        system.extend([
            ("iothub-connection-auth-method".into(), auth_method.to_string()),
            ("iothub-connection-auth-generation-id".into(), id.generation_id.clone()),
            ("iothub-enqueuedtime".into(), format_record(&now)),
            ("iothub-message-source".into(), "Telemetry".into()),
        ]);
        let appended = self.telemetry.append(TelemetryMessage {
            sequence_number: 0,
            partition: 0,
            partition_sequence: 0,
            device_id: id.device_id.clone(),
            enqueued_time: now,
            properties: app,
            system_properties: system,
            body: Bytes::copy_from_slice(payload),
        });
        let msg = appended.await.map_err(|source| SessionError::Storage {
            device_id: id.device_id.clone(),
            source,
        })?;
        crate::counters::Counters::count(&self.counters.telemetry_in);
        tracing::trace!(device = %id.device_id, seq = msg.sequence_number, bytes = payload.len(), "telemetry");
        Ok(())
    }
}
