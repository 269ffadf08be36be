//! Module identities (IoT Hub's `/devices/{id}/modules/{mid}` and `/twins/{id}/modules/{mid}`):
//! identities of their own on a device, each with its credentials, twin and connection, as the
//! ModuleClients of the official SDKs use them.
//!
//! A module is a [`DeviceRecord`] with `moduleId` set, keyed under its device
//! ([`crate::record::module_key`]), so sessions, twins, methods and authentication work for it
//! exactly as for a device. What is module-specific lives here: a module is created only on an
//! existing device (under the device's write lock, so that a concurrent delete of the device
//! cannot leave an orphan), a device has at most [`MAX_MODULES_PER_DEVICE`], and deleting or
//! disabling a device ends its modules' connections.

use std::sync::Arc;

use dps_proto::model::hub::{Module, Twin};

use crate::error::RegistryError;
use crate::record::{etag_matches, is_conditional, key_of, new_etag, validate_module_id, DeviceRecord};
use crate::registry::{resolve_auth, Identity};
use crate::{Hub, HubInner, Slot};

/// Most modules one device may have. IoT Hub refuses more with 413 `TooManyModulesOnDevice`, but
/// documents no number (docs/modules-wire-facts.md §7): this is the figure usually quoted for it.
pub const MAX_MODULES_PER_DEVICE: usize = 50;

impl Hub {
    /// `PUT /devices/{id}/modules/{mid}`: creates the module when absent, replaces its identity
    /// when present, with the If-Match rules of [`Hub::put_device`]: no `If-Match` on an existing
    /// module is [`RegistryError::ModuleAlreadyExists`], an etag that does not match is
    /// [`RegistryError::EtagMismatch`], a real etag for an absent module is
    /// [`RegistryError::ModuleNotFound`]. Keys absent or empty are generated (the Node SDK sends
    /// empty ones). The device must exist ([`RegistryError::NotFound`]) and have fewer than
    /// [`MAX_MODULES_PER_DEVICE`] modules ([`RegistryError::TooManyModules`]).
    pub async fn put_module(&self, module: Module, if_match: Option<&str>) -> Result<Module, RegistryError> {
        validate_module_id(&module.module_id).map_err(RegistryError::Invalid)?;
        let inner = &self.inner;
        let device_key = key_of(&module.device_id);
        let target = Identity::module(&module.device_id, &module.module_id);
        // The device's lock first, then the module's (the order a device delete takes them in).
        let (device_slot, _device_guard) = inner
            .lock_device(&device_key, false)
            .await?
            .ok_or_else(|| Identity::device(&module.device_id).not_found())?;
        let device = device_slot
            .record()
            .ok_or_else(|| Identity::device(&module.device_id).not_found())?;
        let key = target.key();
        crate::retrying_lost_races!(async {
        let (slot, mut guard) = inner.lock_for_create(&key).await?;
        let now = inner.now();
        let result = async {
            match slot.record() {
                None => {
                    if is_conditional(if_match) {
                        return Err(target.not_found());
                    }
                    let count = inner.store.list_modules(&device_key).await?.len();
                    if count >= MAX_MODULES_PER_DEVICE {
                        return Err(RegistryError::TooManyModules {
                            device_id: device.device_id.clone(),
                            limit: MAX_MODULES_PER_DEVICE,
                        });
                    }
                    let mut rec = DeviceRecord::created(
                        device.device_id.clone(),
                        Some(module.module_id.clone()),
                        resolve_auth(module.authentication.clone(), None)?,
                        now,
                    );
                    rec.managed_by = module.managed_by.clone();
                    let rec = inner.commit(&slot, rec).await?;
                    tracing::info!(device = %rec.device_id, module = ?rec.module_id, auth = %rec.authentication.kind, "module created");
                    Ok(rec)
                }
                Some(cur) => {
                    if if_match.is_none_or(|m| m.trim().is_empty()) {
                        return Err(RegistryError::ModuleAlreadyExists {
                            device_id: cur.device_id.clone(),
                            module_id: cur.module_id.clone().unwrap_or_default(),
                        });
                    }
                    if !etag_matches(if_match, &cur.etag) {
                        return Err(RegistryError::EtagMismatch { device_id: cur.path() });
                    }
                    let mut rec = (*cur).clone();
                    rec.authentication = resolve_auth(module.authentication.clone(), Some(&cur.authentication))?;
                    rec.managed_by = module.managed_by.clone();
                    rec.etag = new_etag();
                    let rec = inner.commit(&slot, rec).await?;
                    tracing::info!(device = %rec.device_id, module = ?rec.module_id, "module updated");
                    Ok(rec)
                }
            }
        }
        .await;
        inner.retire_if_empty(&key, &slot, &mut guard);
        Ok(result?.module_view(&slot.live_view()))
        }
        .await)
    }

    /// `GET /devices/{id}/modules/{mid}`; [`RegistryError::ModuleNotFound`] when absent.
    pub async fn get_module(&self, device_id: &str, module_id: &str) -> Result<Module, RegistryError> {
        let (slot, rec) = self.find_identity(Identity::module(device_id, module_id)).await?;
        let live = self.live_view_anywhere(rec.key(), slot.live_view()).await;
        Ok(rec.module_view(&live))
    }

    /// `GET /devices/{id}/modules`: the device's modules in key order;
    /// [`RegistryError::NotFound`] when the device does not exist.
    pub async fn list_modules(&self, device_id: &str) -> Result<Vec<Module>, RegistryError> {
        self.find_identity(Identity::device(device_id)).await?;
        let records = self.inner.store.list_modules(device_id).await?;
        let mut lives: Vec<_> = records
            .iter()
            .map(|rec| self.inner.held(&rec.key()).map(|s| s.live_view()).unwrap_or_default())
            .collect();
        self.with_presence_elsewhere(records.iter().map(DeviceRecord::key).zip(lives.iter_mut()))
            .await;
        Ok(records
            .iter()
            .zip(&lives)
            .map(|(rec, live)| rec.module_view(live))
            .collect())
    }

    /// `DELETE /devices/{id}/modules/{mid}`: `If-Match` absent or `*` is unconditional. Ends
    /// the module's connection.
    pub async fn delete_module(
        &self,
        device_id: &str,
        module_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), RegistryError> {
        let target = Identity::module(device_id, module_id);
        let key = target.key();
        let inner = &self.inner;
        crate::retrying_lost_races!(
            async {
                let (slot, mut guard) = inner
                    .lock_device(&key, false)
                    .await?
                    .ok_or_else(|| target.not_found())?;
                let Some(cur) = slot.record() else {
                    inner.retire_if_empty(&key, &slot, &mut guard);
                    return Err(target.not_found());
                };
                if !etag_matches(if_match, &cur.etag) {
                    return Err(RegistryError::EtagMismatch { device_id: cur.path() });
                }
                inner.commit_delete(&key, &slot).await?;
                inner.retire_if_empty(&key, &slot, &mut guard);
                inner.kick(&slot, "module deleted");
                tracing::info!(device = %cur.device_id, module = ?cur.module_id, "module deleted");
                Ok(())
            }
            .await
        )
    }

    /// `GET /twins/{id}/modules/{mid}`: the module's twin (with `moduleId`).
    pub async fn get_module_twin(&self, device_id: &str, module_id: &str) -> Result<Twin, RegistryError> {
        let (slot, rec) = self.find_identity(Identity::module(device_id, module_id)).await?;
        let live = self.live_view_anywhere(rec.key(), slot.live_view()).await;
        Ok(rec.twin_view(&live))
    }

    /// `PUT /twins/{id}/modules/{mid}`: [`Hub::replace_twin`] of a module's twin.
    pub async fn replace_module_twin(
        &self,
        device_id: &str,
        module_id: &str,
        twin: Twin,
        if_match: Option<&str>,
    ) -> Result<Twin, RegistryError> {
        self.replace_twin_of(Identity::module(device_id, module_id), twin, if_match)
            .await
    }

    /// `PATCH /twins/{id}/modules/{mid}`: [`Hub::patch_twin`] of a module's twin; the module's
    /// connection gets the desired-property change.
    pub async fn patch_module_twin(
        &self,
        device_id: &str,
        module_id: &str,
        patch: Twin,
        if_match: Option<&str>,
    ) -> Result<Twin, RegistryError> {
        self.patch_twin_of(Identity::module(device_id, module_id), patch, if_match)
            .await
    }

    /// The slot and record of a device or module, loaded on demand; its absence is
    /// [`Identity::not_found`].
    pub(crate) async fn find_identity(
        &self,
        target: Identity<'_>,
    ) -> Result<(Arc<Slot>, Arc<DeviceRecord>), RegistryError> {
        self.inner
            .find_key(&target.key())
            .await?
            .ok_or_else(|| target.not_found())
    }
}

/// The held modules of a device whose deletion is being committed: each locked, so that nothing
/// writes them meanwhile, and cleared once the device (and with it, in the same transaction,
/// every module) is gone.
pub(crate) struct ModuleLocks {
    held: Vec<(String, Arc<Slot>, tokio::sync::OwnedMutexGuard<bool>)>,
}

impl HubInner {
    /// Locks every stored module of the device at `device_key` (the caller holds the device's
    /// lock, so no module is created meanwhile).
    pub(crate) async fn lock_modules(&self, device_key: &str) -> Result<ModuleLocks, RegistryError> {
        let mut held = Vec::new();
        for module in self.store.list_modules(device_key).await? {
            let key = module.key();
            if let Some((slot, guard)) = self.lock_device(&key, false).await? {
                held.push((key, slot, guard));
            }
        }
        Ok(ModuleLocks { held })
    }

    /// After the device's delete committed: its modules' slots are emptied and retired and their
    /// connections ended.
    pub(crate) fn modules_deleted(&self, locks: ModuleLocks) {
        for (key, slot, mut guard) in locks.held {
            *slot.record.write() = Some(None);
            self.retire_if_empty(&key, &slot, &mut guard);
            self.kick(&slot, "device deleted");
        }
    }

    /// Ends the connections of the device's modules (the device was disabled: its modules are
    /// refused with it until it is enabled again). Only held modules can be connected.
    pub(crate) async fn kick_modules(&self, device_key: &str, why: &str) -> Result<(), RegistryError> {
        for module in self.store.list_modules(device_key).await? {
            if let Some(slot) = self.held(&module.key()) {
                self.kick(&slot, why);
            }
        }
        Ok(())
    }
}
