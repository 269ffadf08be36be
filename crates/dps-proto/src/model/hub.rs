//! IoT Hub registry REST models (hub-dice-tpm.md §A8), as `azure-iot-hub`'s RegistryManager
//! (msrest) reads and writes them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::service::DeviceCapabilities;

/// A hub device identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Device id.
    #[serde(default)]
    pub device_id: String,
    /// Changes each time the identity is re-created.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generation_id: Option<String>,
    /// Identity etag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// `Connected` / `Disconnected`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connection_state: Option<String>,
    /// `enabled` / `disabled`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
    /// Why disabled.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_reason: Option<String>,
    /// ISO-8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connection_state_updated_time: Option<String>,
    /// ISO-8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_updated_time: Option<String>,
    /// ISO-8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_activity_time: Option<String>,
    /// Queued cloud-to-device messages.
    #[serde(default)]
    pub cloud_to_device_message_count: i64,
    /// How the device authenticates.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub authentication: Option<AuthenticationMechanism>,
    /// Capabilities.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capabilities: Option<DeviceCapabilities>,
}

/// A module identity on a device (IoT Hub's `Module`): its own credentials and twin, without
/// the device's status or capabilities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Module {
    /// The device the module belongs to.
    #[serde(default)]
    pub device_id: String,
    /// Module id.
    #[serde(default)]
    pub module_id: String,
    /// Changes each time the identity is re-created.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generation_id: Option<String>,
    /// Identity etag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// `Connected` / `Disconnected`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connection_state: Option<String>,
    /// ISO-8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connection_state_updated_time: Option<String>,
    /// ISO-8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_activity_time: Option<String>,
    /// Always 0: cloud-to-device messages go to devices, not modules. A number or a string
    /// (the Node SDK's model types it as a string).
    #[serde(default, deserialize_with = "lenient_count")]
    pub cloud_to_device_message_count: i64,
    /// How the module authenticates.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub authentication: Option<AuthenticationMechanism>,
    /// Who manages the module (`IotEdge` for Edge's modules); set by the caller.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub managed_by: Option<String>,
}

/// A count sent as a number or a numeric string; anything else reads as 0 (it is output only).
fn lenient_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    })
}

/// `authentication`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationMechanism {
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    #[serde(rename = "type", default = "sas")]
    pub kind: String,
    /// Keys for `sas`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub symmetric_key: Option<SymmetricKey>,
    /// Thumbprints for `selfSigned`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x509_thumbprint: Option<X509Thumbprint>,
}

fn sas() -> String {
    "sas".into()
}

/// Primary/secondary base64 keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// Primary key.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// Secondary key.
    #[serde(default)]
    pub secondary_key: Option<String>,
}

/// Primary/secondary certificate thumbprints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// Primary thumbprint (hex).
    #[serde(default)]
    pub primary_thumbprint: Option<String>,
    /// Secondary thumbprint (hex).
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

/// A device twin as the registry API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Device id.
    #[serde(default)]
    pub device_id: String,
    /// Module id, on a module's twin. The Node service SDK's `Twin` sends its updates to the
    /// module twin's path only when this is present.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module_id: Option<String>,
    /// Twin etag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// Twin version.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<i64>,
    /// Tags.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tags: Option<Map<String, Value>>,
    /// Desired and reported properties.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub properties: Option<TwinProperties>,
    /// `enabled` / `disabled`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
    /// `Connected` / `Disconnected`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connection_state: Option<String>,
    /// ISO-8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_activity_time: Option<String>,
    /// `sas`, `selfSigned`, ...
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub authentication_type: Option<String>,
    /// Capabilities.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capabilities: Option<DeviceCapabilities>,
    /// Queued cloud-to-device messages.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cloud_to_device_message_count: Option<i64>,
}

/// Twin properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinProperties {
    /// Desired properties (with `$version` and `$metadata` on output).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub desired: Option<Map<String, Value>>,
    /// Reported properties (read-only through the registry API).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reported: Option<Map<String, Value>>,
}

/// One item of a bulk registry operation (`POST /devices`) or a line of an import or export
/// file (IoT Hub's `ExportImportDevice`): an identity, what to do with it, and its twin's tags
/// and desired properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportImportDevice {
    /// Device id.
    #[serde(default)]
    pub id: String,
    /// Module id, for a module's item.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module_id: Option<String>,
    /// The identity's etag, for the `…IfMatchETag` modes (quotes are ignored).
    #[serde(rename = "eTag", skip_serializing_if = "Option::is_none", default)]
    pub e_tag: Option<String>,
    /// `create`, `createOrUpdate` (also when absent), `update`, `updateIfMatchETag`,
    /// `createOrUpdateIfMatchETag`, `delete`, `deleteIfMatchETag`, `updateTwin`,
    /// `updateTwinIfMatchETag`, in any case (Node sends `Update` and `Delete`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub import_mode: Option<String>,
    /// `enabled` / `disabled`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
    /// Why disabled.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_reason: Option<String>,
    /// How the identity authenticates (absent, or SAS without keys: keys are generated).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub authentication: Option<AuthenticationMechanism>,
    /// The twin's etag, for `updateTwinIfMatchETag`.
    #[serde(rename = "twinETag", skip_serializing_if = "Option::is_none", default)]
    pub twin_e_tag: Option<String>,
    /// Twin tags.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tags: Option<Map<String, Value>>,
    /// Twin desired (and, in exports, reported) properties.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub properties: Option<TwinProperties>,
    /// Capabilities.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capabilities: Option<DeviceCapabilities>,
}

/// The answer to a bulk registry operation (IoT Hub's `BulkRegistryOperationResult`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkRegistryOperationResult {
    /// Whether every item succeeded.
    pub is_successful: bool,
    /// The items that failed (always present, `[]` on success: the Node SDK's tests read it).
    #[serde(default)]
    pub errors: Vec<DeviceRegistryOperationError>,
    /// Warnings (always present).
    #[serde(default)]
    pub warnings: Vec<DeviceRegistryOperationWarning>,
}

/// One failed item of a bulk registry operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationError {
    /// The item's device id.
    pub device_id: String,
    /// The item's module id, for a module's item.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module_id: Option<String>,
    /// IoT Hub's name of the error (`DeviceAlreadyExists`, `PreconditionFailed`, …).
    pub error_code: String,
    /// What was wrong.
    pub error_status: String,
}

/// A warning about one item of a bulk registry operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistryOperationWarning {
    /// The item's device id.
    pub device_id: String,
    /// The warning's name.
    pub warning_code: String,
    /// What it is about.
    pub warning_status: String,
}

/// `POST /twins/{id}/methods`: the direct method to call on a connected device
/// (`CloudToDeviceMethod` in the service SDKs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudToDeviceMethod {
    /// The method's name, as the device subscribed to it (`$iothub/methods/POST/{name}`).
    pub method_name: String,
    /// The request payload, any JSON (`null` when the method takes none).
    #[serde(default)]
    pub payload: Value,
    /// Seconds to wait for the device's answer (IoT Hub: 5 to 300, default 30).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub response_timeout_in_seconds: Option<u64>,
    /// Seconds to wait for an offline device to connect (accepted; a device that is not
    /// connected is answered at once with 404103, as IoT Hub does for 0).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connect_timeout_in_seconds: Option<u64>,
}

/// An import or export job (`POST /jobs/create`, IoT Hub's `JobProperties`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProperties {
    /// Job id (the hub's; ignored in a request).
    #[serde(default)]
    pub job_id: String,
    /// `export` or `import` (C# requires it in every answer).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `enqueued`, `running`, `completed`, `failed`, `cancelled`.
    #[serde(default)]
    pub status: String,
    /// Percent done.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<i32>,
    /// ISO 8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_time_utc: Option<String>,
    /// ISO 8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_time_utc: Option<String>,
    /// The container an import reads.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub input_blob_container_uri: Option<String>,
    /// The blob an import reads (`devices.txt`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub input_blob_name: Option<String>,
    /// The container an export writes (and an import its error log).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub output_blob_container_uri: Option<String>,
    /// The blob an export writes (`devices.txt`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub output_blob_name: Option<String>,
    /// Whether an export leaves the keys out.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exclude_keys_in_export: Option<bool>,
    /// `keyBased` or `identityBased` (accepted; the blobs are the server's own).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub storage_authentication_type: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure_reason: Option<String>,
}

/// `PUT /jobs/v2/{id}`: a scheduled job (IoT Hub's `JobRequest`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    /// Job id (the path's).
    #[serde(default)]
    pub job_id: String,
    /// `scheduleDeviceMethod` or `scheduleUpdateTwin`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The method, for `scheduleDeviceMethod`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cloud_to_device_method: Option<CloudToDeviceMethod>,
    /// The twin patch, for `scheduleUpdateTwin` (a `Twin`; SDKs add `deviceId`, `etag`,
    /// `version` and empty reported properties, all ignored but a concrete `etag`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub update_twin: Option<Value>,
    /// Which devices: a twin query's `WHERE` condition, or `*` for all.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub query_condition: Option<String>,
    /// When to start (ISO 8601; `null` or absent: now).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_time: Option<String>,
    /// Its deadline after the start, seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_execution_time_in_seconds: Option<u64>,
}

/// A scheduled job as the registry API shows it (IoT Hub's `JobResponse`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResponse {
    /// Job id.
    pub job_id: String,
    /// `scheduleDeviceMethod` or `scheduleUpdateTwin` (C# requires it in every answer).
    #[serde(rename = "type")]
    pub kind: String,
    /// Which devices.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub query_condition: Option<String>,
    /// ISO 8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub created_time: Option<String>,
    /// ISO 8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_time: Option<String>,
    /// ISO 8601.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_time: Option<String>,
    /// Its deadline after the start, seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_execution_time_in_seconds: Option<u64>,
    /// The method, for a method job.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cloud_to_device_method: Option<CloudToDeviceMethod>,
    /// The twin patch, for a twin job.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub update_twin: Option<Value>,
    /// `queued`, `running`, `completed`, `failed`, `cancelled`.
    pub status: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure_reason: Option<String>,
    /// A status message.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_message: Option<String>,
    /// Device counts.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_job_statistics: Option<DeviceJobStatistics>,
}

/// A job's device counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJobStatistics {
    /// Devices reached.
    pub device_count: u64,
    /// Devices where it failed.
    pub failed_count: u64,
    /// Devices where it succeeded.
    pub succeeded_count: u64,
    /// Devices being reached now.
    pub running_count: u64,
    /// Devices not reached yet.
    pub pending_count: u64,
}

/// The answer to a direct method: what the device replied (`CloudToDeviceMethodResult` in the
/// service SDKs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudToDeviceMethodResult {
    /// The status the device chose (any integer; HTTP-like by convention).
    pub status: i32,
    /// The device's JSON payload (`null` when it sent nothing; a string when it sent non-JSON).
    #[serde(default)]
    pub payload: Value,
}

/// `GET /statistics/devices`: device counts of the registry (`RegistryStatistics` in the service
/// SDKs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatistics {
    /// All device identities.
    pub total_device_count: u64,
    /// Devices with status `enabled`.
    pub enabled_device_count: u64,
    /// Devices with status `disabled`.
    pub disabled_device_count: u64,
}

/// `GET /statistics/service`: the hub's live counts (`ServiceStatistics` in the service SDKs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatistics {
    /// Devices connected now.
    pub connected_device_count: u64,
}

/// `POST /devices/{id}/files`: the blob a device wants to upload (IoT Hub's
/// `FileUploadSasUriRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileUploadSasUriRequest {
    /// The name, under the device's own directory.
    pub blob_name: String,
}

/// `POST /devices/{id}/files/notifications[/{correlationId}]`: how an upload went (IoT Hub's
/// `FileUploadCompletionNotification`). Only `isSuccess` decides: the C SDK reports status
/// 400 for successful uploads, and Node may send no status at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileUploadCompletionNotification {
    /// The upload (Node sends it in the path instead).
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Whether the file was uploaded.
    pub is_success: bool,
    /// The device's status code for the upload.
    #[serde(default)]
    pub status_code: Option<i64>,
    /// The device's description of the outcome.
    #[serde(default)]
    pub status_description: Option<String>,
}

/// A file a device uploaded (`GET /files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadedFile {
    /// The blob name, `{deviceId}/{name}` (`GET /files/{name}` reads it).
    pub name: String,
    /// The device that uploaded it.
    pub device_id: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written (ISO 8601).
    pub last_modified: String,
}

/// `GET /files`: uploaded files by name, at most [`UploadedFileList::MAX`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadedFileList {
    /// The files, by name.
    pub value: Vec<UploadedFile>,
}

impl UploadedFileList {
    /// Most files one answer lists.
    pub const MAX: usize = 5000;
}

/// A consumer group of the built-in Event Hub-compatible endpoint, in the shape of Azure's
/// management API (`EventHubConsumerGroupInfo`), which `az iot hub consumer-group` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventHubConsumerGroupInfo {
    /// The group's path under the hub (`/eventHubEndpoints/events/ConsumerGroups/{name}`).
    pub id: String,
    /// The group's name.
    pub name: String,
    /// Always [`EventHubConsumerGroupInfo::TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// `created`: when it was created (absent for `$Default`, which is built in).
    pub properties: ConsumerGroupProperties,
}

/// [`EventHubConsumerGroupInfo::properties`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupProperties {
    /// When the group was created (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

impl EventHubConsumerGroupInfo {
    /// Azure's resource type of a consumer group.
    pub const TYPE: &'static str = "Microsoft.Devices/IotHubs/EventHubEndpoints/ConsumerGroups";

    /// The group `name`, created at `created` (`None` for `$Default`).
    pub fn new(name: &str, created: Option<String>) -> Self {
        Self {
            id: format!("/eventHubEndpoints/events/ConsumerGroups/{name}"),
            name: name.to_string(),
            kind: Self::TYPE.to_string(),
            properties: ConsumerGroupProperties { created },
        }
    }
}

/// A page of consumer groups (`GET /eventHubEndpoints/events/consumerGroups`), as Azure's
/// management API lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupList {
    /// Every group, `$Default` first.
    pub value: Vec<EventHubConsumerGroupInfo>,
}

/// Applies a JSON merge patch (RFC 7396) of `patch` onto `target`: objects merge recursively and
/// `null` deletes. Returns whether anything changed. Keys starting with `$` in the patch are ignored
/// (clients may echo `$version`/`$metadata`).
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => changed |= target.remove(k).is_some(),
            Value::Object(p) => {
                let entry = target.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                    changed = true;
                }
                if let Value::Object(t) = entry {
                    changed |= merge_patch(t, p);
                }
            }
            other => {
                if target.get(k) != Some(other) {
                    target.insert(k.clone(), other.clone());
                    changed = true;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn method_and_statistics_shapes_of_the_service_sdks() {
        let m: CloudToDeviceMethod =
            serde_json::from_str(r#"{"methodName":"reboot","payload":{"delay":5},"responseTimeoutInSeconds":10}"#)
                .unwrap();
        assert_eq!(
            (m.method_name.as_str(), m.response_timeout_in_seconds),
            ("reboot", Some(10))
        );
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"methodName": "reboot", "payload": {"delay": 5}, "responseTimeoutInSeconds": 10})
        );
        assert!(
            serde_json::from_str::<CloudToDeviceMethod>(r#"{"payload":1}"#).is_err(),
            "the name is required"
        );
        let r: CloudToDeviceMethodResult = serde_json::from_str(r#"{"status":200}"#).unwrap();
        assert_eq!((r.status, r.payload), (200, Value::Null));
        let s = RegistryStatistics {
            total_device_count: 3,
            enabled_device_count: 2,
            disabled_device_count: 1,
        };
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            json!({"totalDeviceCount": 3, "enabledDeviceCount": 2, "disabledDeviceCount": 1})
        );
        assert_eq!(
            serde_json::to_value(ServiceStatistics {
                connected_device_count: 4
            })
            .unwrap(),
            json!({"connectedDeviceCount": 4})
        );
    }

    #[test]
    fn merge_patch_rules() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}}).as_object().unwrap().clone();
        let p = json!({"a": null, "b": {"c": 5, "d": null}, "e": [1], "$version": 9})
            .as_object()
            .unwrap()
            .clone();
        assert!(merge_patch(&mut t, &p));
        assert_eq!(Value::Object(t.clone()), json!({"b": {"c": 5}, "e": [1]}));
        assert!(!merge_patch(
            &mut t,
            &json!({"b": {"c": 5}}).as_object().unwrap().clone()
        ));
    }

    #[test]
    fn device_shape_for_msrest() {
        let d: Device = serde_json::from_str(
            r#"{"deviceId":"d","authentication":{"type":"sas","symmetricKey":{"primaryKey":"a","secondaryKey":"b"}},"status":"enabled"}"#,
        )
        .unwrap();
        assert_eq!(d.authentication.as_ref().unwrap().kind, "sas");
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["cloudToDeviceMessageCount"], 0);
    }
}
