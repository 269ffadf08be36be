//! `dps_core::HubRegistry` for the embedded hub: the provisioning engine creates or updates the
//! device identity in-process on every registration.
//!
//! This is the hot path of provisioning (thousands of registrations per second), so a
//! re-registration that changes nothing (same credentials and capabilities, twin kept) writes
//! nothing, and real writes go through the store's group commit.

use async_trait::async_trait;
use dps_core::hub::{DeviceAuth, DeviceData, DeviceProvisioning, HubError, HubRegistry, TwinPolicy, UpsertOutcome};
use dps_proto::model::hub::AuthenticationMechanism;
use dps_proto::model::service::{InitialTwin, InitialTwinProperties};
use dps_proto::twin_limits::{self, TwinLimitError};
use serde_json::{Map, Value};

use crate::error::RegistryError;
use crate::record::{
    clean_document, key_of, new_etag, sas_auth, self_signed_auth, validate_device_id, DeviceRecord, Issuance, Status,
    TwinState,
};
use crate::Hub;

fn auth_of(auth: &DeviceAuth) -> AuthenticationMechanism {
    match auth {
        DeviceAuth::Sas {
            primary_key,
            secondary_key,
        } => sas_auth(primary_key.clone(), secondary_key.clone()),
        DeviceAuth::SelfSigned {
            primary_thumbprint,
            secondary_thumbprint,
        } => self_signed_auth(primary_thumbprint.clone(), secondary_thumbprint.clone()),
    }
}

/// What the hub keeps of a certificate DPS issued for the device's CSR: the policy, for
/// renewals. A new registration starts afresh (no previous certificate is accepted).
fn issuance_of(device: &DeviceProvisioning) -> Option<Issuance> {
    device.credential_policy.as_ref().map(|policy| Issuance {
        policy: policy.clone(),
        previous_valid_until: None,
        renewed_at: None,
    })
}

/// A twin section (tags or desired properties).
type Document = Map<String, Value>;

/// Tags and desired properties of an enrollment's initial twin, checked against IoT Hub's twin
/// rules and cleaned (no `$` keys, no nulls). The DPS service API checks the same rules when the
/// enrollment is stored, so this refuses only what reached the engine some other way.
fn initial_docs(t: Option<&InitialTwin>) -> Result<(Document, Document), TwinLimitError> {
    let Some(t) = t else {
        return Ok((Map::new(), Map::new()));
    };
    twin_limits::validate_initial_twin(t)?;
    let obj = |v: Option<&Value>| match v {
        Some(Value::Object(m)) => clean_document(m),
        _ => Map::new(),
    };
    Ok((
        obj(t.tags.as_ref()),
        obj(t.properties.as_ref().and_then(|p| p.desired.as_ref())),
    ))
}

fn storage(e: RegistryError) -> HubError {
    HubError::unavailable(e)
}

impl Hub {
    /// [`HubRegistry::upsert_device`] once; `presume_absent`: a device this node has not read
    /// is taken to be new ([`HubInner::lock_for_create_unread`]), and `None` says it was not
    /// (its insert lost to the stored record, nothing written).
    async fn upsert_once(
        &self,
        key: &str,
        device: &DeviceProvisioning,
        tags: &Document,
        desired: &Document,
        presume_absent: bool,
    ) -> Result<Option<UpsertOutcome>, HubError> {
        let inner = &self.inner;
        let locked = match presume_absent {
            true => inner.lock_for_create_unread(key).await,
            false => inner.lock_for_create(key).await,
        };
        let (slot, mut guard) = locked.map_err(|e| storage(e.into()))?;
        let now = inner.now();
        let auth = auth_of(&device.auth);
        let result = async {
            match slot.record() {
                None => {
                    let mut twin = TwinState::new(now);
                    twin.tags = tags.clone();
                    twin.desired = desired.clone();
                    let mut rec = DeviceRecord::created(device.device_id.clone(), None, auth, now);
                    rec.capabilities = device.capabilities;
                    rec.twin = twin;
                    rec.created_by_operation = Some(device.operation_id.clone()).filter(|o| !o.is_empty());
                    rec.issuance = issuance_of(device);
                    match inner.commit(&slot, rec).await {
                        Err(e) if presume_absent && e.lost_race() => return Ok(None),
                        written => written.map_err(storage)?,
                    };
                    tracing::info!(device = %device.device_id, "device created by provisioning");
                    Ok(Some(UpsertOutcome { created: true }))
                }
                Some(cur) => {
                    if cur.status == Status::Disabled {
                        return Err(HubError::Refused {
                            device_id: cur.device_id.clone(),
                            reason: "the device is disabled in the IoT hub".into(),
                        });
                    }
                    // A repeat of the operation that created the device (start-up recovery) reports
                    // what the first attempt did.
                    let created =
                        !device.operation_id.is_empty() && cur.created_by_operation.as_deref() == Some(&device.operation_id);
                    let mut rec = (*cur).clone();
                    let mut identity_changed = false;
                    let issuance = issuance_of(device);
                    if rec.authentication != auth || rec.capabilities != device.capabilities || rec.issuance != issuance {
                        rec.authentication = auth;
                        rec.capabilities = device.capabilities;
                        rec.issuance = issuance;
                        rec.etag = new_etag();
                        identity_changed = true;
                    }
                    let mut diff = None;
                    let mut twin_changed = false;
                    if device.twin_policy == TwinPolicy::Reset {
                        twin_changed = rec.twin.tags != *tags;
                        rec.twin.tags = tags.clone();
                        diff = rec.twin.set_desired(desired.clone(), now);
                        twin_changed |= diff.is_some();
                        if twin_changed {
                            rec.twin.touch();
                        }
                    }
                    if identity_changed || twin_changed {
                        let rec = inner.commit(&slot, rec).await.map_err(storage)?;
                        if let Some(diff) = diff {
                            inner.notify_desired(&slot, diff, rec.twin.desired_version);
                        }
                        tracing::info!(device = %rec.device_id, identity_changed, twin_changed, "device updated by provisioning");
                    }
                    Ok(Some(UpsertOutcome { created }))
                }
            }
        }
        .await;
        inner.retire_if_empty(key, &slot, &mut guard);
        result
    }
}

#[async_trait]
impl HubRegistry for Hub {
    async fn upsert_device(&self, hub: &str, device: &DeviceProvisioning) -> Result<UpsertOutcome, HubError> {
        if !self.answers_to(hub) {
            return Err(HubError::UnknownHub(hub.to_string()));
        }
        validate_device_id(&device.device_id).map_err(|reason| HubError::Refused {
            device_id: device.device_id.clone(),
            reason: reason.into(),
        })?;
        let (tags, desired) = initial_docs(device.initial_twin.as_ref()).map_err(|e| HubError::Refused {
            device_id: device.device_id.clone(),
            reason: dps_core::Cause::new(e),
        })?;
        let key = key_of(&device.device_id);
        // A device this node has not seen is first taken to be new, and inserted if absent
        // without reading it (a shared store's round trip); if it did exist, the insert loses
        // and the upsert is made again from the stored record.
        match self.upsert_once(&key, device, &tags, &desired, true).await? {
            Some(outcome) => Ok(outcome),
            // Not presuming, it cannot lose that way; a race lost otherwise is an error.
            None => self
                .upsert_once(&key, device, &tags, &desired, false)
                .await?
                .ok_or_else(|| HubError::unavailable("the device changed while it was provisioned; retry")),
        }
    }

    async fn delete_device(&self, hub: &str, device_id: &str) -> Result<(), HubError> {
        if !self.answers_to(hub) {
            return Err(HubError::UnknownHub(hub.to_string()));
        }
        match Hub::delete_device(self, device_id, None).await {
            Ok(()) | Err(RegistryError::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }

    async fn device_data(&self, hub: &str, device_id: &str) -> Result<Option<DeviceData>, HubError> {
        if !self.answers_to(hub) {
            return Err(HubError::UnknownHub(hub.to_string()));
        }
        let twin = match self.get_twin(device_id).await {
            Ok(t) => Some(t),
            Err(RegistryError::NotFound { .. }) => None,
            Err(e) => return Err(storage(e)),
        };
        Ok(twin.map(|t| {
            // The twin view carries `$metadata`/`$version`; the data migrated is the documents.
            let doc = |m: Option<&Map<String, Value>>| m.map(|m| Value::Object(clean_document(m)));
            DeviceData {
                twin: InitialTwin {
                    tags: doc(t.tags.as_ref()),
                    properties: Some(InitialTwinProperties {
                        desired: doc(t.properties.as_ref().and_then(|p| p.desired.as_ref())),
                    }),
                },
                capabilities: t.capabilities.unwrap_or_default(),
            }
        }))
    }
}
