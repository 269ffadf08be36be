//! Bulk registry operations (`POST /devices`, IoT Hub's "bulk registry update"): up to
//! [`BULK_MAX`] identities created, updated or deleted in one request, each item with its own
//! result, as `Registry.addDevices`/`updateDevices`/`removeDevices` (Node),
//! `bulk_create_or_update_devices` (Python) and `AddDevices2Async`… (C#) send them
//! (docs/bulk-jobs-wire-facts.md §1).
//!
//! The request as a whole is refused — nothing done — when it is empty, has more than
//! [`BULK_MAX`] items (413 `TooManyDevices`) or names an identity twice (a result whose one
//! error is `DeviceDefinedMultipleTimes`). Otherwise each item is applied on its own
//! through the same registry calls as the single-identity API (so the same rules, etags and
//! limits hold), and an item that fails is reported with IoT Hub's name of its error while the
//! others still apply, as IoT Hub's bulk API is not a transaction. A failure of the store stops
//! the request there (the items before it are applied and durable).
//!
//! The same per-item operation serves import jobs ([`Hub::import_item`]).

use std::collections::HashSet;

use dps_proto::codes;
use dps_proto::model::hub::{
    BulkRegistryOperationResult, Device, DeviceRegistryOperationError, ExportImportDevice, Module,
};
use dps_proto::twin_limits::{self, Section};

use crate::error::RegistryError;
use crate::record::{clean_document, DeviceRecord};
use crate::registry::Identity;
use crate::Hub;

/// Most items of one bulk registry operation (IoT Hub's).
pub const BULK_MAX: usize = 100;

/// IoT Hub's name of an item's error.
fn error_name(code: u32) -> String {
    codes::hub_error_name(code).unwrap_or("ArgumentInvalid").to_string()
}

/// What an item asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    CreateOrUpdate,
    CreateOrUpdateIfMatch,
    Update,
    UpdateIfMatch,
    Delete,
    DeleteIfMatch,
    UpdateTwin,
    UpdateTwinIfMatch,
}

impl Mode {
    /// IoT Hub's import modes, in any case (Node sends `Update`, C# `update`); absent means
    /// `createOrUpdate` (C# leaves its default out).
    fn parse(mode: Option<&str>) -> Result<Self, RegistryError> {
        let Some(m) = mode.map(str::trim).filter(|m| !m.is_empty()) else {
            return Ok(Mode::CreateOrUpdate);
        };
        Ok(match m.to_ascii_lowercase().as_str() {
            "create" => Mode::Create,
            "createorupdate" => Mode::CreateOrUpdate,
            "createorupdateifmatchetag" => Mode::CreateOrUpdateIfMatch,
            "update" => Mode::Update,
            "updateifmatchetag" => Mode::UpdateIfMatch,
            "delete" => Mode::Delete,
            "deleteifmatchetag" => Mode::DeleteIfMatch,
            "updatetwin" => Mode::UpdateTwin,
            "updatetwinifmatchetag" => Mode::UpdateTwinIfMatch,
            other => {
                return Err(RegistryError::Invalid(format!(
                    "importMode '{other}' is not one of create, createOrUpdate, createOrUpdateIfMatchETag, update, \
                     updateIfMatchETag, delete, deleteIfMatchETag, updateTwin, updateTwinIfMatchETag"
                )))
            }
        })
    }
}

impl Hub {
    /// One page of an export (IoT Hub's `devices.txt`, one [`ExportImportDevice`] per line):
    /// up to `limit` devices in key order after `after` (a device key), each followed by its
    /// modules; their twins' tags and properties; keys left out with `exclude_keys` (as
    /// `excludeKeysInExport`). Returns the lines and the key to continue after (`None`: the
    /// last page). An import of these lines (`createOrUpdate`, [`Hub::bulk_registry`]) makes
    /// the same identities and twins again.
    pub async fn export_page(
        &self,
        after: Option<&str>,
        limit: usize,
        exclude_keys: bool,
    ) -> Result<(Vec<ExportImportDevice>, Option<String>), RegistryError> {
        let store = &self.inner.store;
        let mut devices = store.list_devices(after, limit.saturating_add(1)).await?;
        let more = devices.len() > limit;
        devices.truncate(limit);
        let next = more.then(|| devices.last().map(DeviceRecord::key)).flatten();
        let mut lines = Vec::with_capacity(devices.len());
        for device in devices {
            let modules = store.list_modules(device.device_id()).await?;
            lines.push(export_line(&device, exclude_keys));
            lines.extend(modules.iter().map(|m| export_line(m, exclude_keys)));
        }
        Ok((lines, next))
    }

    /// `POST /devices`: applies each item and reports the ones that failed (see the module docs).
    pub async fn bulk_registry(
        &self,
        items: Vec<ExportImportDevice>,
    ) -> Result<BulkRegistryOperationResult, RegistryError> {
        if items.is_empty() {
            return Err(RegistryError::Invalid(
                "a bulk registry operation needs at least one device".into(),
            ));
        }
        if items.len() > BULK_MAX {
            return Err(RegistryError::TooManyDevices {
                count: items.len(),
                limit: BULK_MAX,
            });
        }
        let mut seen = HashSet::new();
        for item in &items {
            let target = Identity {
                device_id: &item.id,
                module_id: item.module_id.as_deref(),
            };
            if !seen.insert(target.key()) {
                // Refused whole, in the result's shape: the Python SDK reads every 400 as one.
                let path = dps_proto::hub_mqtt::identity_path(&item.id, item.module_id.as_deref());
                return Ok(BulkRegistryOperationResult {
                    is_successful: false,
                    errors: vec![DeviceRegistryOperationError {
                        device_id: item.id.clone(),
                        module_id: item.module_id.clone(),
                        error_code: error_name(codes::DEVICE_DEFINED_MULTIPLE_TIMES),
                        error_status: format!(
                            "'{path}' appears more than once in the bulk registry operation; nothing was done"
                        ),
                    }],
                    warnings: Vec::new(),
                });
            }
        }
        let mut errors = Vec::new();
        for item in items {
            let (device_id, module_id) = (item.id.clone(), item.module_id.clone());
            match self.import_item(item).await {
                Ok(()) => {}
                Err(e @ RegistryError::Storage(_)) => return Err(e),
                Err(e) => errors.push(DeviceRegistryOperationError {
                    device_id,
                    module_id,
                    error_code: error_name(e.code()),
                    error_status: e.to_string(),
                }),
            }
        }
        if !errors.is_empty() {
            tracing::info!(failed = errors.len(), "bulk registry operation: some items failed");
        }
        Ok(BulkRegistryOperationResult {
            is_successful: errors.is_empty(),
            errors,
            warnings: Vec::new(),
        })
    }

    /// Applies one bulk or import item (an item of [`Hub::bulk_registry`], or a line of an
    /// import, on its own): its identity by its mode, then the twin sections it carries (tags,
    /// desired properties), which replace the twin's.
    pub async fn import_item(&self, item: ExportImportDevice) -> Result<(), RegistryError> {
        let mode = Mode::parse(item.import_mode.as_deref())?;
        let etag = |e: &Option<String>, what: &str| -> Result<String, RegistryError> {
            e.as_deref()
                .map(|t| format!("\"{}\"", t.trim().trim_matches('"')))
                .filter(|t| t.len() > 2)
                .ok_or_else(|| RegistryError::Invalid(format!("importMode {mode:?} needs the {what}")))
        };
        let target = match &item.module_id {
            None => Identity::device(&item.id),
            Some(m) => Identity::module(&item.id, m),
        };
        // The twin sections are checked first, so an item is refused whole rather than applied
        // without its twin.
        let tags = item.tags.clone();
        let desired = item.properties.clone().and_then(|p| p.desired);
        if let Some(t) = &tags {
            twin_limits::validate_document(Section::Tags, t)?;
        }
        if let Some(d) = &desired {
            twin_limits::validate_document(Section::Desired, d)?;
        }
        let exists = || async {
            match self.find_identity(target).await {
                Ok(_) => Ok(true),
                Err(RegistryError::NotFound { .. } | RegistryError::ModuleNotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        match mode {
            Mode::Delete | Mode::DeleteIfMatch => {
                let if_match = match mode {
                    Mode::DeleteIfMatch => Some(etag(&item.e_tag, "eTag")?),
                    _ => None,
                };
                return match &item.module_id {
                    None => self.delete_device(&item.id, if_match.as_deref()).await,
                    Some(m) => self.delete_module(&item.id, m, if_match.as_deref()).await,
                };
            }
            Mode::UpdateTwin | Mode::UpdateTwinIfMatch => {
                let if_match = match mode {
                    Mode::UpdateTwinIfMatch => Some(etag(&item.twin_e_tag, "twinETag")?),
                    _ => None,
                };
                return self.replace_sections(target, tags, desired, if_match.as_deref()).await;
            }
            Mode::Create => self.put_identity(&item, None).await?,
            Mode::CreateOrUpdate => self.put_identity(&item, Some("*")).await?,
            Mode::CreateOrUpdateIfMatch => {
                let if_match = if exists().await? {
                    etag(&item.e_tag, "eTag")?
                } else {
                    String::new()
                };
                self.put_identity(&item, Some(&if_match).filter(|m| !m.is_empty()).map(String::as_str))
                    .await?
            }
            Mode::Update | Mode::UpdateIfMatch => {
                if !exists().await? {
                    return Err(target.not_found());
                }
                let if_match = match mode {
                    Mode::UpdateIfMatch => etag(&item.e_tag, "eTag")?,
                    _ => "*".to_string(),
                };
                self.put_identity(&item, Some(&if_match)).await?
            }
        }
        if tags.is_some() || desired.is_some() {
            self.replace_sections(target, tags, desired, None).await?;
        }
        Ok(())
    }

    /// Creates or replaces the item's identity (a device, or a module of one).
    async fn put_identity(&self, item: &ExportImportDevice, if_match: Option<&str>) -> Result<(), RegistryError> {
        match &item.module_id {
            None => {
                let device = Device {
                    device_id: item.id.clone(),
                    status: item.status.clone(),
                    status_reason: item.status_reason.clone(),
                    authentication: item.authentication.clone(),
                    capabilities: item.capabilities,
                    ..Default::default()
                };
                self.put_device(device, if_match).await.map(drop)
            }
            Some(m) => {
                let module = Module {
                    device_id: item.id.clone(),
                    module_id: m.clone(),
                    authentication: item.authentication.clone(),
                    ..Default::default()
                };
                self.put_module(module, if_match).await.map(drop)
            }
        }
    }

    /// Replaces the twin sections given (tags, desired properties); the others stay. One
    /// read-modify-write under the identity's lock, as a twin `PUT` is.
    async fn replace_sections(
        &self,
        target: Identity<'_>,
        tags: Option<serde_json::Map<String, serde_json::Value>>,
        desired: Option<serde_json::Map<String, serde_json::Value>>,
        if_match: Option<&str>,
    ) -> Result<(), RegistryError> {
        self.update_twin(target, if_match, move |t, now| {
            let mut changed = false;
            if let Some(tags) = &tags {
                let tags = clean_document(tags);
                changed = t.tags != tags;
                t.tags = tags;
            }
            let diff = desired.as_ref().and_then(|d| t.set_desired(clean_document(d), now));
            Ok((changed || diff.is_some(), diff))
        })
        .await
        .map(drop)
    }
}

/// A device's or module's export line: identity, status, authentication (unless excluded) and
/// its twin as the registry shows it.
fn export_line(rec: &DeviceRecord, exclude_keys: bool) -> ExportImportDevice {
    let twin = rec.twin_view(&Default::default());
    ExportImportDevice {
        id: rec.device_id.clone(),
        module_id: rec.module_id.clone(),
        e_tag: Some(rec.etag.clone()),
        import_mode: None,
        status: rec.module_id.is_none().then(|| rec.status.as_str().to_string()),
        status_reason: rec.status_reason.clone(),
        authentication: (!exclude_keys).then(|| rec.authentication.clone()),
        twin_e_tag: twin.etag,
        tags: twin.tags,
        properties: twin.properties,
        capabilities: rec.module_id.is_none().then_some(rec.capabilities),
    }
}
