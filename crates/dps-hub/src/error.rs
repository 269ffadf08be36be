//! Errors at the crate edge. Each variant says what the caller (the server's REST or MQTT adapter)
//! needs to pick a status code and to log a useful line; none carries key material.

use std::time::Duration;

use dps_proto::hub_mqtt::HubTopicError;
use dps_proto::twin_limits::TwinLimitError;

/// Why a hub could not be opened ([`crate::Hub::open`], [`crate::Hub::open_with_store`]).
/// Nothing is running when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubOpenError {
    /// `HubConfig::host_name` was empty; a hub is addressed by its host name (SAS audiences,
    /// MQTT usernames, `assignedHub`), so it must have one.
    #[error("hub host name must not be empty")]
    EmptyHostName,
    /// Reading the stored devices failed (the backend's error, or a record that does not
    /// decode).
    #[error("cannot load the hub's devices: {0}")]
    Load(#[source] HubStoreError),
}

/// Why a [`crate::store::HubStore`] operation failed. A failed write changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubStoreError {
    /// The backend could not read or write: a database error, I/O, a full disk, or its writer
    /// has stopped. The cause is the backend's own error (or a message when the cause is the
    /// backend's state, e.g. a stopped writer).
    #[error("hub storage failure: {0}")]
    Backend(#[source] dps_core::Cause),
    /// A conditional write ([`crate::store::HubStore::put_device_if`]) found the record changed
    /// by another node since it was read; nothing was written. Retrying reads it again.
    #[error("device '{key}' was changed by another node meanwhile; nothing was written, retry")]
    Conflict {
        /// Registry key of the record.
        key: String,
    },
    /// A call meant for a store other nodes share (numbering telemetry, the service-bound
    /// queues' rows) reached one only this process writes: the hub keeps that itself there and
    /// never makes the call, so this is a bug in the caller.
    #[error("this store leaves {what} to the hub (it is not shared)")]
    NotShared {
        /// What the call was about.
        what: &'static str,
    },
    /// A stored record does not decode as this build's record shape (a hand-edited or damaged
    /// file); the store refuses it rather than guess.
    #[error("stored record of device '{key}' is corrupt: {source}")]
    Corrupt {
        /// Lower-cased device id of the record.
        key: String,
        /// What the decoder said (the JSON error).
        source: dps_core::Cause,
    },
}

impl HubStoreError {
    /// A backend failure caused by `e`.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        HubStoreError::Backend(dps_core::Cause::new(e))
    }
}

/// Why a registry operation (`/devices/{id}`, `/twins/{id}`) failed. The server maps these to
/// HTTP statuses (404, 412, 400, 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No device with this id exists in the hub.
    #[error("device '{device_id}' not found")]
    NotFound {
        /// Requested device id.
        device_id: String,
    },
    /// The request's `If-Match` etag is not the current etag of the device, module or twin.
    #[error("etag mismatch for '{device_id}': the resource was changed since it was read")]
    EtagMismatch {
        /// Device id, or `{deviceId}/modules/{moduleId}` for a module.
        device_id: String,
    },
    /// The device exists but has no module with this id (IoT Hub's ModuleNotFound).
    #[error("module '{module_id}' not found on device '{device_id}'")]
    ModuleNotFound {
        /// Device id.
        device_id: String,
        /// Requested module id.
        module_id: String,
    },
    /// `PUT /devices/{id}/modules/{mid}` without `If-Match` found an existing module (IoT Hub's
    /// ModuleAlreadyExistsOnDevice); updates send the etag or `*`.
    #[error("module '{module_id}' already exists on device '{device_id}'; send If-Match with its etag (or '*') to update it")]
    ModuleAlreadyExists {
        /// Device id.
        device_id: String,
        /// Module id.
        module_id: String,
    },
    /// Creating the module would give the device more than `limit` modules (IoT Hub's
    /// TooManyModulesOnDevice).
    #[error("device '{device_id}' already has {limit} modules, the most a device may have")]
    TooManyModules {
        /// Device id.
        device_id: String,
        /// Most modules per device.
        limit: usize,
    },
    /// `PUT /devices/{id}` without `If-Match` found an existing device: creating is refused, as
    /// IoT Hub does (RegistryManager's `create_device_*`); updates send the etag or `*`.
    #[error("device '{device_id}' already exists; send If-Match with its etag (or '*') to update it")]
    AlreadyExists {
        /// Device id.
        device_id: String,
    },
    /// The request body or id is not acceptable (bad device id, bad key, unknown status,
    /// unsupported authentication type, ...); the message says which.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The database failed to make the change durable; nothing was changed in memory.
    #[error(transparent)]
    Storage(#[from] HubStoreError),
    /// A bulk registry operation names more identities than IoT Hub takes at once (IoT Hub's
    /// TooManyDevices); nothing was done.
    #[error("a bulk registry operation takes at most {limit} devices, got {count}")]
    TooManyDevices {
        /// Items sent.
        count: usize,
        /// Most items.
        limit: usize,
    },
    /// A query does not parse, or asks for what the hub cannot answer; the error names the
    /// character where it went wrong. Azure answers 400.
    #[error(transparent)]
    Query(#[from] dps_proto::query::QueryError),
    /// A twin document or patch breaks IoT Hub's twin rules (size, depth, keys, value types);
    /// nothing was written. Azure answers 400 `ArgumentInvalid`.
    #[error("invalid twin: {0}")]
    TwinInvalid(#[from] TwinLimitError),
}

impl RegistryError {
    /// Whether this is a write that lost a race with another node's write to the same record
    /// ([`HubStoreError::Conflict`]): made again from the stored record, it may succeed.
    pub(crate) fn lost_race(&self) -> bool {
        matches!(self, RegistryError::Storage(HubStoreError::Conflict { .. }))
    }

    /// The error code the registry API answers with (`dps_proto::codes`; IoT Hub's name of it
    /// is `codes::hub_error_name`).
    pub fn code(&self) -> u32 {
        use dps_proto::codes;
        match self {
            RegistryError::NotFound { .. } => codes::DEVICE_NOT_FOUND,
            RegistryError::EtagMismatch { .. } => codes::DEVICE_ETAG_MISMATCH,
            RegistryError::AlreadyExists { .. } => codes::DEVICE_EXISTS,
            RegistryError::ModuleNotFound { .. } => codes::MODULE_NOT_FOUND,
            RegistryError::ModuleAlreadyExists { .. } => codes::MODULE_EXISTS,
            RegistryError::TooManyModules { .. } => codes::TOO_MANY_MODULES,
            RegistryError::TooManyDevices { .. } => codes::TOO_MANY_DEVICES,
            RegistryError::Invalid(_) => codes::ARGUMENT_INVALID,
            RegistryError::Query(_) | RegistryError::TwinInvalid(_) => codes::HUB_ARGUMENT_INVALID,
            RegistryError::Storage(HubStoreError::Conflict { .. }) => codes::SERVICE_UNAVAILABLE,
            RegistryError::Storage(_) => codes::INTERNAL,
        }
    }
}

/// Why a scheduled job request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The request is not a job the hub can run (bad id, type, method, twin, start time); the
    /// message says which.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The job's query condition does not parse.
    #[error("invalid job: queryCondition: {0}")]
    Query(dps_proto::query::QueryError),
    /// No job has this id (IoT Hub's JobNotFound).
    #[error("job '{job_id}' not found")]
    NotFound {
        /// Requested job id.
        job_id: String,
    },
    /// A job with this id exists (IoT Hub's JobAlreadyExists).
    #[error("job '{job_id}' already exists")]
    AlreadyExists {
        /// The job id.
        job_id: String,
    },
    /// As many jobs are queued or running as the hub runs at once.
    #[error("{limit} jobs are queued or running already; wait for one to end or cancel one")]
    TooManyActive {
        /// Most active jobs.
        limit: usize,
    },
    /// The job could not be stored; it was not created.
    #[error(transparent)]
    Storage(#[from] HubStoreError),
}

impl JobError {
    /// The error code the jobs API answers with.
    pub fn code(&self) -> u32 {
        use dps_proto::codes;
        match self {
            JobError::Invalid(_) | JobError::Query(_) => codes::HUB_ARGUMENT_INVALID,
            JobError::NotFound { .. } => codes::JOB_NOT_FOUND,
            JobError::AlreadyExists { .. } => codes::JOB_EXISTS,
            JobError::TooManyActive { .. } => codes::TOO_MANY_ACTIVE_JOBS,
            JobError::Storage(_) => codes::INTERNAL,
        }
    }
}

/// Why a device was refused at MQTT CONNECT. The server answers CONNACK 5 for
/// [`AuthError::NotAuthorized`] and CONNACK 3 for [`AuthError::DeviceDisabled`] (the C SDK reports
/// 3 as "device disabled"), and logs the Display text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Bad or missing credentials, unknown device, wrong host, unsupported identity kind; the
    /// reason says exactly which (expired token, wrong key, wrong audience, ...).
    #[error("device '{device_id}' not authorized: {reason}")]
    NotAuthorized {
        /// Device id from the username.
        device_id: String,
        /// What was wrong.
        reason: String,
    },
    /// The device exists and its credentials may be fine, but its registry status is `disabled`.
    #[error("device '{device_id}' is disabled")]
    DeviceDisabled {
        /// Device id.
        device_id: String,
    },
    /// The device's record could not be read from the hub's store; nothing was judged. The
    /// server answers CONNACK 3 (server unavailable) so the device retries.
    #[error("device '{device_id}' cannot be authenticated now: {source}")]
    Storage {
        /// Device id from the username.
        device_id: String,
        /// The store's error.
        #[source]
        source: HubStoreError,
    },
}

/// Why a device session refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session is no longer the device's live session: a newer connection replaced it, the
    /// device was deleted or disabled, or the session was closed. The server should disconnect.
    #[error("session of device '{device_id}' is closed (replaced by a newer connection, or the device was deleted or disabled)")]
    Closed {
        /// Device id.
        device_id: String,
    },
    /// The device published on a topic it may not use (another device's telemetry topic or an
    /// unknown topic). IoT Hub disconnects the device in that case.
    #[error(transparent)]
    Topic(#[from] HubTopicError),
    /// The hub's store failed: the device's record could not be read while opening the session,
    /// or a telemetry message could not be written (it was not accepted; the device is not
    /// acknowledged and may send it again).
    #[error("device '{device_id}': the hub's store failed: {source}")]
    Storage {
        /// Device id.
        device_id: String,
        /// The store's error.
        #[source]
        source: HubStoreError,
    },
    /// A telemetry message (body plus properties) exceeded IoT Hub's device-to-cloud limit
    /// (256 KB). IoT Hub closes the MQTT connection without an error (azure-iot-sdk-node#501:
    /// "the service bluntly disconnects the client when the message is too big"), so the
    /// server does the same; nothing was stored.
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Body plus property bytes.
        size: usize,
        /// Limit.
        limit: usize,
    },
}

/// Why a direct-method invocation failed. Azure answers 404 `DeviceNotOnline` and 504
/// `GatewayTimeout` for the first two.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MethodError {
    /// The device exists but has no live session subscribed to `$iothub/methods/POST/#`.
    #[error("device '{device_id}' is not online (no connection subscribed to direct methods)")]
    DeviceNotOnline {
        /// Device id.
        device_id: String,
    },
    /// No device with this id exists in the hub.
    #[error("device '{device_id}' not found")]
    DeviceNotFound {
        /// Device id.
        device_id: String,
    },
    /// The device has no module with this id.
    #[error("module '{module_id}' not found on device '{device_id}'")]
    ModuleNotFound {
        /// Device id.
        device_id: String,
        /// Module id.
        module_id: String,
    },
    /// The device did not answer within the response timeout.
    #[error("device '{device_id}' did not answer method '{method}' within {timeout:?}")]
    Timeout {
        /// Device id.
        device_id: String,
        /// Method name.
        method: String,
        /// Timeout that elapsed.
        timeout: Duration,
    },
    /// The method name cannot be put in an MQTT topic (empty, or contains `/`, `+`, `#`).
    #[error("invalid method name '{0}'")]
    InvalidMethodName(String),
    /// The device's record could not be read from the hub's store; nothing was sent.
    #[error("device '{device_id}' cannot be looked up now: {source}")]
    Storage {
        /// Device id.
        device_id: String,
        /// The store's error.
        #[source]
        source: HubStoreError,
    },
}

/// Why a cloud-to-device message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum C2dError {
    /// No device with this id exists in the hub.
    #[error("device '{device_id}' not found")]
    DeviceNotFound {
        /// Device id.
        device_id: String,
    },
    /// The message (body plus properties) is larger than IoT Hub's cloud-to-device limit
    /// (64 KB); Azure answers 413 `MessageTooLarge`. Nothing was queued.
    #[error("cloud-to-device message of {size} bytes for device '{device_id}' exceeds the {limit}-byte limit")]
    TooLarge {
        /// Device id.
        device_id: String,
        /// Body plus property bytes.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The device's record could not be read from the hub's store; nothing was queued.
    #[error("device '{device_id}' cannot be looked up now: {source}")]
    Storage {
        /// Device id.
        device_id: String,
        /// The store's error.
        #[source]
        source: HubStoreError,
    },
    /// A property the hub reads (`iothub-ack`, `$.exp`) has a value it cannot use; nothing was
    /// queued.
    #[error("cloud-to-device message for device '{device_id}': property {name} = {value:?} {why}")]
    InvalidProperty {
        /// Device id.
        device_id: String,
        /// The property.
        name: String,
        /// Its value.
        value: String,
        /// What it must be.
        why: String,
    },
    /// The device already holds the maximum number of messages, queued or delivered and not
    /// settled (Azure's per-device queue limit is 50).
    #[error("cloud-to-device queue of device '{device_id}' is full ({limit} messages)")]
    QueueFull {
        /// Device id.
        device_id: String,
        /// Queue limit.
        limit: usize,
    },
}

/// Why a consumer group of the Event Hub-compatible endpoint was not created or deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerGroupError {
    /// The name breaks Event Hubs' rule (1 to 50 letters, digits, `.`, `_`, `-`, starting with a
    /// letter or digit).
    #[error("'{name}' is not a consumer group name: 1 to 50 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    InvalidName {
        /// The name asked for.
        name: String,
    },
    /// The hub has as many groups as it may (Azure's quota, `$Default` included).
    #[error("the built-in endpoint already has the most consumer groups it may ({limit}, $Default included)")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// No group has this name.
    #[error("no consumer group '{name}'")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// `$Default` is built in and cannot be deleted.
    #[error("the $Default consumer group cannot be deleted")]
    Default,
    /// The store did not make the change durable; nothing changed.
    #[error("consumer groups: the hub's store failed: {0}")]
    Storage(#[from] HubStoreError),
}

/// Why a file upload was refused (IoT Hub's errors for `POST /devices/{id}/files` and
/// `/files/notifications`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileUploadError {
    /// The hub has no blob endpoint (Azure's 400014 `DefaultStorageEndpointNotConfigured`).
    #[error("file upload is not configured on this hub")]
    NotConfigured,
    /// `{deviceId}/{blobName}` cannot be a blob name (empty, `..`, control characters, over
    /// 1024 bytes).
    #[error("'{blob_name}' cannot be a blob name: 1 to 1024 bytes of '/'-separated names, none empty, '.' or '..', no control characters")]
    InvalidBlobName {
        /// The name asked for.
        blob_name: String,
    },
    /// The device already has the most uploads in progress (Azure's 403006
    /// `DeviceMaximumActiveFileUploadLimitExceeded`).
    #[error("the number of active file upload requests cannot exceed {limit}")]
    TooManyActive {
        /// The limit.
        limit: usize,
    },
    /// No upload of this device has this correlation id (Azure's 400015
    /// `InvalidFileUploadCorrelationId`): never issued, notified already, or another device's.
    #[error("no file upload of this device has correlation id '{correlation_id}'")]
    UnknownCorrelationId {
        /// The correlation id given.
        correlation_id: String,
    },
    /// The upload's time ran out before the device reported it (Azure's 400016
    /// `ExpiredFileUploadCorrelationId`).
    #[error("the file upload with correlation id '{correlation_id}' expired")]
    ExpiredCorrelationId {
        /// The correlation id given.
        correlation_id: String,
    },
    /// On a store several nodes share, the uploads in progress live in it, and it failed;
    /// nothing was started or ended (the server answers 503: the device retries).
    #[error("file uploads cannot be read or written now: {0}")]
    Storage(#[source] HubStoreError),
}
