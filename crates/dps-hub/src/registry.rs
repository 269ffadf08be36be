//! The registry API behind `/devices/{id}`, `/twins/{id}`, `/devices/query` and the statistics
//! endpoints (hub-dice-tpm.md §A8), in dps-proto's `Device`/`Twin` wire shapes.
//!
//! Status codes are the server's job; this module decides semantics: If-Match rules, key
//! generation, version bumps, and pushing desired changes to connected devices.

use chrono::{DateTime, Utc};
use dps_proto::keys::validate_symmetric_key;
use dps_proto::model::hub::{merge_patch, AuthenticationMechanism, Device, SymmetricKey, Twin, X509Thumbprint};
use dps_proto::twin_limits::{self, Section};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::RegistryError;
use crate::record::LiveView;
use crate::record::{
    caps, clean_document, etag_matches, is_conditional, key_of, new_etag, new_key, validate_device_id,
    validate_status_reason, DeviceRecord, Status, TwinState,
};
use crate::Hub;

/// What a twin edit did: whether anything changed, and the desired-properties diff to push.
type TwinChange = (bool, Option<Map<String, Value>>);

/// Default `top` for device listing when the caller passes 0 (Azure's maximum).
const DEFAULT_TOP: usize = 1000;

/// Device counts for `GET /statistics/devices` (`total/enabled/disabledDeviceCount`) and
/// `GET /statistics/service` (`connectedDeviceCount`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatistics {
    /// All devices.
    pub total_device_count: u64,
    /// Devices with status `enabled`.
    pub enabled_device_count: u64,
    /// Devices with status `disabled`.
    pub disabled_device_count: u64,
    /// Devices with a live session.
    pub connected_device_count: u64,
}

impl Hub {
    /// `GET /devices/{id}` (case-insensitive id); [`RegistryError::NotFound`] when absent.
    pub async fn get_device(&self, device_id: &str) -> Result<Device, RegistryError> {
        let (slot, rec) = self.find_identity(Identity::device(device_id)).await?;
        let live = self.live_view_anywhere(rec.key(), slot.live_view()).await;
        Ok(rec.device_view(&live))
    }

    /// The device's slot and record, loaded on demand.
    /// `PUT /devices/{id}`: creates the device when absent, replaces its identity when present.
    ///
    /// * Create: `authentication` absent or `sas` without keys → fresh 256-bit keys; new
    ///   `generationId` and etag; `status` defaults to `enabled`; an empty twin. An `If-Match`
    ///   with a real etag on an absent device is [`RegistryError::NotFound`].
    /// * Replace: `If-Match` absent is [`RegistryError::AlreadyExists`] (IoT Hub refuses to create
    ///   over an existing device); `*` is unconditional (RegistryManager's `update_device_*` with
    ///   etag `*`); otherwise it must equal the device etag ([`RegistryError::EtagMismatch`]).
    ///   Keys absent on a `sas` device are kept; `status` absent is kept; the twin is untouched.
    ///   Disabling a device ends its live session.
    pub async fn put_device(&self, device: Device, if_match: Option<&str>) -> Result<Device, RegistryError> {
        validate_device_id(&device.device_id).map_err(RegistryError::Invalid)?;
        if let Some(r) = device.status_reason.as_deref() {
            validate_status_reason(r).map_err(RegistryError::Invalid)?;
        }
        let status = device
            .status
            .as_deref()
            .map(|s| {
                Status::parse(s)
                    .ok_or_else(|| RegistryError::Invalid(format!("status must be 'enabled' or 'disabled', got '{s}'")))
            })
            .transpose()?;
        let key = key_of(&device.device_id);
        let inner = &self.inner;
        crate::retrying_lost_races!(
            async {
                let (slot, mut guard) = inner.lock_for_create(&key).await?;
                let now = inner.now();
                let result = async {
                    match slot.record() {
                        None => {
                            if is_conditional(if_match) {
                                return Err(RegistryError::NotFound {
                                    device_id: device.device_id.clone(),
                                });
                            }
                            let mut rec = DeviceRecord::created(
                                device.device_id.clone(),
                                None,
                                resolve_auth(device.authentication.clone(), None)?,
                                now,
                            );
                            rec.status = status.unwrap_or(Status::Enabled);
                            rec.status_reason = device.status_reason.clone();
                            rec.capabilities = caps(device.capabilities);
                            let rec = inner.commit(&slot, rec).await?;
                            tracing::info!(device = %rec.device_id, auth = %rec.authentication.kind, "device created");
                            Ok(rec)
                        }
                        Some(cur) => {
                            if if_match.is_none_or(|m| m.trim().is_empty()) {
                                return Err(RegistryError::AlreadyExists {
                                    device_id: cur.device_id.clone(),
                                });
                            }
                            if !etag_matches(if_match, &cur.etag) {
                                return Err(RegistryError::EtagMismatch {
                                    device_id: cur.device_id.clone(),
                                });
                            }
                            let mut rec = (*cur).clone();
                            rec.authentication =
                                resolve_auth(device.authentication.clone(), Some(&cur.authentication))?;
                            rec.capabilities = device.capabilities.unwrap_or(cur.capabilities);
                            let status = status.unwrap_or(cur.status);
                            if status != cur.status {
                                rec.status = status;
                                rec.status_updated_time = now;
                            }
                            rec.status_reason = device.status_reason.clone();
                            rec.etag = new_etag();
                            let rec = inner.commit(&slot, rec).await?;
                            if rec.status == Status::Disabled {
                                inner.kick(&slot, "device disabled");
                                inner.kick_modules(&key, "device disabled").await?;
                            }
                            tracing::info!(device = %rec.device_id, status = rec.status.as_str(), "device updated");
                            Ok(rec)
                        }
                    }
                }
                .await;
                inner.retire_if_empty(&key, &slot, &mut guard);
                Ok(result?.device_view(&slot.live_view()))
            }
            .await
        )
    }

    /// `DELETE /devices/{id}`: `If-Match` absent or `*` is unconditional. Deletes the device's
    /// modules with it (one transaction) and ends its and their live sessions.
    pub async fn delete_device(&self, device_id: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
        let key = key_of(device_id);
        let inner = &self.inner;
        let not_found = || RegistryError::NotFound {
            device_id: device_id.to_string(),
        };
        crate::retrying_lost_races!(
            async {
                let (slot, mut guard) = inner.lock_device(&key, false).await?.ok_or_else(not_found)?;
                let Some(cur) = slot.record() else {
                    inner.retire_if_empty(&key, &slot, &mut guard);
                    return Err(not_found());
                };
                if !etag_matches(if_match, &cur.etag) {
                    return Err(RegistryError::EtagMismatch {
                        device_id: cur.device_id.clone(),
                    });
                }
                let modules = inner.lock_modules(&key).await?;
                inner.commit_delete(&key, &slot).await?;
                inner.modules_deleted(modules);
                inner.retire_if_empty(&key, &slot, &mut guard);
                inner.kick(&slot, "device deleted");
                tracing::info!(device = %cur.device_id, "device deleted");
                Ok(())
            }
            .await
        )
    }

    /// `GET /devices?top=N`: up to `limit` devices (0 = 1000) whose lower-cased id follows
    /// `after`'s (`None`: from the first), ordered by lower-cased id. Read from the store page by
    /// page; held devices show their live connection state.
    pub async fn list_devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<Device>, RegistryError> {
        let limit = if limit == 0 { DEFAULT_TOP } else { limit };
        let (page, _) = self.page(after, limit).await?;
        Ok(page.into_iter().map(|(rec, live)| rec.device_view(&live)).collect())
    }

    /// Device counts for the statistics endpoints: by status from the store, connected from the
    /// held sessions (a connected device is always held) and, with other nodes, theirs.
    pub async fn statistics(&self) -> Result<RegistryStatistics, RegistryError> {
        let counts = self.inner.store.count_devices().await?;
        let connected = self
            .inner
            .devices
            .slots()
            .iter()
            .filter(|s| s.record().is_some_and(|r| r.module_id.is_none()) && s.live_view().connected)
            .count() as u64;
        let elsewhere = match self.inner.peers.get() {
            Some(peers) => peers.devices_connected_elsewhere().await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "cannot count the devices connected to other nodes");
                0
            }),
            None => 0,
        };
        let connected = connected + elsewhere;
        Ok(RegistryStatistics {
            total_device_count: counts.total,
            enabled_device_count: counts.enabled,
            disabled_device_count: counts.disabled,
            connected_device_count: connected,
        })
    }

    /// `GET /twins/{id}`; [`RegistryError::NotFound`] when absent.
    pub async fn get_twin(&self, device_id: &str) -> Result<Twin, RegistryError> {
        let (slot, rec) = self.find_identity(Identity::device(device_id)).await?;
        let live = self.live_view_anywhere(rec.key(), slot.live_view()).await;
        Ok(rec.twin_view(&live))
    }

    /// `PUT /twins/{id}`: replaces tags and desired properties (reported properties are the
    /// device's and are ignored). `If-Match` is checked against the twin etag.
    pub async fn replace_twin(
        &self,
        device_id: &str,
        twin: Twin,
        if_match: Option<&str>,
    ) -> Result<Twin, RegistryError> {
        self.replace_twin_of(Identity::device(device_id), twin, if_match).await
    }

    /// `PATCH /twins/{id}`: merge-patches tags and desired properties (`null` deletes). Desired
    /// `$version` increments when desired changed, and the connected device (if subscribed)
    /// receives only the changed part plus `$version`. Returns the full twin.
    pub async fn patch_twin(
        &self,
        device_id: &str,
        patch: Twin,
        if_match: Option<&str>,
    ) -> Result<Twin, RegistryError> {
        self.patch_twin_of(Identity::device(device_id), patch, if_match).await
    }

    /// [`Hub::replace_twin`] of a device's or a module's twin.
    pub(crate) async fn replace_twin_of(
        &self,
        target: Identity<'_>,
        twin: Twin,
        if_match: Option<&str>,
    ) -> Result<Twin, RegistryError> {
        let tags = twin.tags.unwrap_or_default();
        let desired = twin.properties.and_then(|p| p.desired).unwrap_or_default();
        twin_limits::validate_document(Section::Tags, &tags)?;
        twin_limits::validate_document(Section::Desired, &desired)?;
        let (tags, desired) = (clean_document(&tags), clean_document(&desired));
        self.update_twin(target, if_match, move |t, now| {
            let tags_changed = t.tags != tags;
            t.tags = tags.clone();
            let diff = t.set_desired(desired.clone(), now);
            Ok((tags_changed || diff.is_some(), diff))
        })
        .await
    }

    /// [`Hub::patch_twin`] of a device's or a module's twin.
    pub(crate) async fn patch_twin_of(
        &self,
        target: Identity<'_>,
        patch: Twin,
        if_match: Option<&str>,
    ) -> Result<Twin, RegistryError> {
        let tags = patch.tags.unwrap_or_default();
        let desired = patch.properties.and_then(|p| p.desired).unwrap_or_default();
        twin_limits::validate(Section::Tags, &tags)?;
        twin_limits::validate(Section::Desired, &desired)?;
        self.update_twin(target, if_match, move |t, now| {
            // `t` is a copy: a refusal below leaves the stored twin as it was.
            let tags_changed = merge_patch(&mut t.tags, &tags);
            if tags_changed {
                twin_limits::check_size(Section::Tags, &t.tags)?;
            }
            let mut new_desired = t.desired.clone();
            if merge_patch(&mut new_desired, &desired) {
                twin_limits::check_size(Section::Desired, &new_desired)?;
            }
            let diff = t.set_desired(new_desired, now);
            Ok((tags_changed || diff.is_some(), diff))
        })
        .await
    }

    /// Read-modify-write of a twin under the device's write lock. `change` edits a copy and returns
    /// whether anything changed and the desired diff to push, or refuses the change (nothing is
    /// written then). A write that lost a race with another node's is made again from the
    /// stored twin ([`crate::RACE_ATTEMPTS`]), so `change` may run more than once; `if_match`
    /// is checked against the twin each attempt reads, so a client's stale etag still fails.
    pub(crate) async fn update_twin(
        &self,
        target: Identity<'_>,
        if_match: Option<&str>,
        change: impl Fn(&mut TwinState, DateTime<Utc>) -> Result<TwinChange, RegistryError>,
    ) -> Result<Twin, RegistryError> {
        let key = target.key();
        let inner = &self.inner;
        let not_found = || target.not_found();
        crate::retrying_lost_races!(
            async {
                let (slot, _guard) = inner.lock_device(&key, false).await?.ok_or_else(not_found)?;
                let cur = slot.record().ok_or_else(not_found)?;
                if !etag_matches(if_match, &cur.twin.etag) {
                    return Err(RegistryError::EtagMismatch { device_id: cur.path() });
                }
                let mut rec = (*cur).clone();
                let (changed, diff) = change(&mut rec.twin, inner.now())?;
                if !changed {
                    return Ok(cur.twin_view(&slot.live_view()));
                }
                rec.twin.touch();
                let rec = inner.commit(&slot, rec).await?;
                if let Some(diff) = diff {
                    inner.notify_desired(&slot, diff, rec.twin.desired_version);
                }
                tracing::debug!(device = %rec.device_id, version = rec.twin.version, "twin updated");
                Ok(rec.twin_view(&slot.live_view()))
            }
            .await
        )
    }

    /// Devices with key > `after`, the first `n` in key order from the store, each with the
    /// live view of its slot if the hub holds it (without loading it into the cache: a listing
    /// must not evict the devices in use), and whether more follow.
    async fn page(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Result<(Vec<(DeviceRecord, LiveView)>, bool), RegistryError> {
        let mut records = self.inner.store.list_devices(after, n.saturating_add(1)).await?;
        let more = records.len() > n;
        records.truncate(n);
        let mut page: Vec<(DeviceRecord, LiveView)> = records
            .into_iter()
            .map(|rec| {
                let live = self.inner.held(&rec.key()).map(|s| s.live_view()).unwrap_or_default();
                (rec, live)
            })
            .collect();
        self.with_presence_elsewhere(page.iter_mut().map(|(rec, live)| (rec.key(), live)))
            .await;
        Ok((page, more))
    }
}

/// A device or one of its modules, as the registry API names them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) module_id: Option<&'a str>,
}

impl<'a> Identity<'a> {
    pub(crate) fn device(device_id: &'a str) -> Self {
        Self {
            device_id,
            module_id: None,
        }
    }

    pub(crate) fn module(device_id: &'a str, module_id: &'a str) -> Self {
        Self {
            device_id,
            module_id: Some(module_id),
        }
    }

    /// Its registry key.
    pub(crate) fn key(self) -> String {
        crate::record::identity_key(self.device_id, self.module_id)
    }

    /// The error for its absence: IoT Hub's DeviceNotFound or ModuleNotFound.
    pub(crate) fn not_found(self) -> RegistryError {
        match self.module_id {
            None => RegistryError::NotFound {
                device_id: self.device_id.to_string(),
            },
            Some(m) => RegistryError::ModuleNotFound {
                device_id: self.device_id.to_string(),
                module_id: m.to_string(),
            },
        }
    }
}

/// Works out the authentication of a created or replaced device. `current` is the existing
/// device's, whose SAS keys are kept when the request omits them.
pub(crate) fn resolve_auth(
    req: Option<AuthenticationMechanism>,
    current: Option<&AuthenticationMechanism>,
) -> Result<AuthenticationMechanism, RegistryError> {
    let Some(req) = req else {
        return Ok(match current {
            Some(c) => c.clone(),
            None => crate::record::sas_auth(new_key(), new_key()),
        });
    };
    let kind = req.kind.trim();
    if kind.eq_ignore_ascii_case("sas") {
        let given = |k: Option<&String>| k.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let sk = req.symmetric_key.unwrap_or_default();
        let (mut primary, mut secondary) = (given(sk.primary_key.as_ref()), given(sk.secondary_key.as_ref()));
        if primary.is_none() && secondary.is_none() {
            if let Some(SymmetricKey {
                primary_key,
                secondary_key,
            }) = current
                .filter(|c| c.kind.eq_ignore_ascii_case("sas"))
                .and_then(|c| c.symmetric_key.clone())
            {
                primary = primary_key;
                secondary = secondary_key;
            }
        }
        for (name, k) in [("primaryKey", &primary), ("secondaryKey", &secondary)] {
            if let Some(k) = k {
                validate_symmetric_key(k)
                    .map_err(|e| RegistryError::Invalid(format!("authentication.symmetricKey.{name}: {e}")))?;
            }
        }
        Ok(crate::record::sas_auth(
            primary.unwrap_or_else(new_key),
            secondary.unwrap_or_else(new_key),
        ))
    } else if kind.eq_ignore_ascii_case("selfSigned") {
        let tp = req.x509_thumbprint.unwrap_or_default();
        let check = |name: &str, t: Option<String>| -> Result<Option<String>, RegistryError> {
            let Some(t) = t.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) else {
                return Ok(None);
            };
            let n = dps_pki::thumbprint::normalize_hex(&t);
            if !(n.len() == 40 || n.len() == 64) || !n.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(RegistryError::Invalid(format!(
                    "authentication.x509Thumbprint.{name} must be a hex SHA-1 (40) or SHA-256 (64) thumbprint"
                )));
            }
            Ok(Some(t))
        };
        let primary = check("primaryThumbprint", tp.primary_thumbprint)?.ok_or_else(|| {
            RegistryError::Invalid(
                "selfSigned authentication needs authentication.x509Thumbprint.primaryThumbprint".into(),
            )
        })?;
        let secondary = check("secondaryThumbprint", tp.secondary_thumbprint)?;
        Ok(AuthenticationMechanism {
            kind: "selfSigned".into(),
            symmetric_key: None,
            x509_thumbprint: Some(X509Thumbprint {
                primary_thumbprint: Some(primary),
                secondary_thumbprint: secondary,
            }),
        })
    } else if kind.eq_ignore_ascii_case("certificateAuthority") || kind.eq_ignore_ascii_case("none") {
        let canonical = if kind.eq_ignore_ascii_case("none") {
            "none"
        } else {
            "certificateAuthority"
        };
        Ok(AuthenticationMechanism {
            kind: canonical.into(),
            symmetric_key: None,
            x509_thumbprint: None,
        })
    } else {
        Err(RegistryError::Invalid(format!(
            "authentication.type must be 'sas', 'selfSigned', 'certificateAuthority' or 'none', got '{kind}'"
        )))
    }
}
