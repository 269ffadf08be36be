//! The DPS error body and the error codes this implementation emits.
//!
//! `errorCode` = HTTP status × 1000 + sub-code. Codes confirmed from SDK sources are marked; the
//! rest are ours, chosen in the same pattern and listed in `docs/error-codes.md`.

use serde::{Deserialize, Serialize};

/// `ProvisioningServiceErrorDetails`: the JSON body of every error response (device and service
/// APIs), e.g. `{"errorCode":401000,"trackingId":"..","message":"..","timestampUtc":".."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetails {
    /// HTTP status × 1000 + sub-code.
    pub error_code: u32,
    /// Id for correlating with server logs.
    pub tracking_id: String,
    /// What was wrong, for a human.
    pub message: String,
    /// When the error happened (7-digit RFC 3339).
    pub timestamp_utc: String,
    /// Optional extra information.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<serde_json::Map<String, serde_json::Value>>,
    /// IoT Hub's form of the same error, on the hub's APIs: `ErrorCode:{name};{message}` with the
    /// name of [`codes::hub_error_name`]. The Node service SDK reads only this (its
    /// `parseErrorBody`: `DeviceNotFound` becomes `DeviceNotFoundError`), and the C# one takes
    /// the error code's name from it.
    #[serde(rename = "Message", skip_serializing_if = "Option::is_none", default)]
    pub hub_message: Option<String>,
    /// IoT Hub's companion of [`ErrorDetails::hub_message`]: `Tracking ID:{id}-TimeStamp:{time}`.
    #[serde(rename = "ExceptionMessage", skip_serializing_if = "Option::is_none", default)]
    pub hub_exception_message: Option<String>,
}

impl ErrorDetails {
    /// The HTTP status implied by the code.
    pub fn http_status(&self) -> u16 {
        (self.error_code / 1000) as u16
    }
}

/// Error codes. `*` marks codes seen in SDK sources or real service traffic.
pub mod codes {
    /// Generic invalid argument (bad id, bad field value, bad api path).
    pub const ARGUMENT_INVALID: u32 = 400_001;
    /// Request body is not valid JSON or does not match the schema.
    pub const BAD_REQUEST_BODY: u32 = 400_004;
    /// Bulk operation invalid as a whole (too many items, duplicate ids, unknown mode).
    pub const BULK_INVALID: u32 = 400_005;
    /// `*` (hub) A device appears more than once in one bulk registry operation (IoT Hub's
    /// DeviceDefinedMultipleTimes).
    pub const DEVICE_DEFINED_MULTIPLE_TIMES: u32 = 400_011;
    /// An uploaded CA certificate cannot be parsed.
    pub const CERTIFICATE_INVALID: u32 = 400_301;
    /// Proof of possession failed: no code pending, CN is not the code, or not signed by the CA.
    pub const CERTIFICATE_VERIFICATION_FAILED: u32 = 400_302;
    /// TPM attestation over a transport without the challenge step (MQTT).
    pub const TPM_TRANSPORT_UNSUPPORTED: u32 = 400_006;
    /// `*` No IoT hub could be assigned.
    pub const HUB_NOT_SPECIFIED: u32 = 400_208;
    /// `*` The hub refused the device.
    pub const HUB_UNAUTHORIZED: u32 = 400_209;
    /// The hub has no blob endpoint for file upload (IoT Hub's DefaultStorageEndpointNotConfigured).
    pub const FILE_UPLOAD_NOT_CONFIGURED: u32 = 400_014;
    /// A file upload notification names no upload of the device (IoT Hub's
    /// InvalidFileUploadCorrelationId).
    pub const FILE_UPLOAD_CORRELATION_INVALID: u32 = 400_015;
    /// A file upload notification came after the upload expired (IoT Hub's
    /// ExpiredFileUploadCorrelationId).
    pub const FILE_UPLOAD_CORRELATION_EXPIRED: u32 = 400_016;
    /// A successful file upload was reported but its blob is not there (IoT Hub's
    /// InvalidStorageEndpointOrBlob).
    pub const FILE_UPLOAD_BLOB_MISSING: u32 = 400_020;
    /// The device has the most file uploads in progress (IoT Hub's
    /// DeviceMaximumActiveFileUploadLimitExceeded).
    pub const FILE_UPLOADS_EXCEEDED: u32 = 403_006;
    /// `*` Authentication failed (SAS malformed, expired, wrong key, wrong audience).
    pub const UNAUTHORIZED: u32 = 401_000;
    /// The credential is valid but lacks the right for this operation.
    pub const INSUFFICIENT_RIGHTS: u32 = 401_001;
    /// The enrollment (individual or group) that matched is disabled.
    pub const ENROLLMENT_DISABLED: u32 = 401_003;
    /// Unknown ID scope.
    pub const ID_SCOPE_NOT_FOUND: u32 = 404_200;
    /// No such route / resource path.
    pub const PATH_NOT_FOUND: u32 = 404_002;
    /// `*` Individual enrollment (or registration id) not found.
    pub const ENROLLMENT_NOT_FOUND: u32 = 404_201;
    /// Enrollment group not found.
    pub const ENROLLMENT_GROUP_NOT_FOUND: u32 = 404_202;
    /// Registration record not found.
    pub const REGISTRATION_NOT_FOUND: u32 = 404_203;
    /// CA certificate not found.
    pub const CERTIFICATE_NOT_FOUND: u32 = 404_301;
    /// No credential policy has this name (dps's own resource and number).
    pub const CREDENTIAL_POLICY_NOT_FOUND: u32 = 404_401;
    /// Operation id unknown (or belongs to another registration).
    pub const OPERATION_NOT_FOUND: u32 = 404_204;
    /// `*` Hub device not found (IoT Hub's DeviceNotFound).
    pub const DEVICE_NOT_FOUND: u32 = 404_001;
    /// No consumer group of the built-in endpoint has this name. dps's own number (Azure's
    /// management API, whose resource this is, answers with a named code; 404010 is IoT Hub's
    /// ModuleNotFound).
    pub const CONSUMER_GROUP_NOT_FOUND: u32 = 404_050;
    /// `*` (hub) No scheduled job has this id (IoT Hub's JobNotFound; the same number as
    /// [`PATH_NOT_FOUND`], which no hub route answers).
    pub const JOB_NOT_FOUND: u32 = 404_002;
    /// `*` No module with this id on the device (IoT Hub's ModuleNotFound).
    pub const MODULE_NOT_FOUND: u32 = 404_010;
    /// `*` Hub device has no live connection for a direct method (IoT Hub's DeviceNotOnline).
    pub const DEVICE_NOT_ONLINE: u32 = 404_103;
    /// Method not allowed on this path.
    pub const METHOD_NOT_ALLOWED: u32 = 405_000;
    /// The request (its body) did not arrive within the request timeout.
    pub const REQUEST_TIMEOUT: u32 = 408_001;
    /// `*` Enrollment already exists (create without etag).
    pub const ENROLLMENT_EXISTS: u32 = 409_201;
    /// `*` Enrollment group already exists.
    pub const ENROLLMENT_GROUP_EXISTS: u32 = 409_202;
    /// `*` A concurrent registration of the same device is in progress.
    pub const PRECONDITION_CONCURRENT: u32 = 409_203;
    /// CA certificate already exists (PUT without If-Match).
    pub const CERTIFICATE_EXISTS: u32 = 409_301;
    /// A credential policy with this name exists already (PUT without If-Match).
    pub const CREDENTIAL_POLICY_EXISTS: u32 = 409_401;
    /// `*` Hub device already exists (PUT without If-Match; IoT Hub's DeviceAlreadyExists).
    pub const DEVICE_EXISTS: u32 = 409_001;
    /// `*` The device already has a module with this id (PUT without If-Match; IoT Hub's
    /// ModuleAlreadyExistsOnDevice). The same number as [`CERTIFICATE_EXISTS`] on DPS's API.
    pub const MODULE_EXISTS: u32 = 409_301;
    /// (hub) A scheduled job with this id exists already (IoT Hub's JobAlreadyExists).
    pub const JOB_EXISTS: u32 = 409_002;
    /// If-Match does not match the enrollment's etag.
    pub const ENROLLMENT_ETAG_MISMATCH: u32 = 412_201;
    /// If-Match does not match the group's etag.
    pub const ENROLLMENT_GROUP_ETAG_MISMATCH: u32 = 412_202;
    /// If-Match does not match the registration record's etag.
    pub const REGISTRATION_ETAG_MISMATCH: u32 = 412_203;
    /// If-Match does not match the CA certificate's etag.
    pub const CERTIFICATE_ETAG_MISMATCH: u32 = 412_301;
    /// If-Match does not match the credential policy's etag.
    pub const CREDENTIAL_POLICY_ETAG_MISMATCH: u32 = 412_401;
    /// `*` If-Match does not match a hub device, module or twin etag (IoT Hub's PreconditionFailed).
    pub const DEVICE_ETAG_MISMATCH: u32 = 412_001;
    /// A lock token names no locked message (IoT Hub's DeviceMessageLockLost): the message was
    /// settled already, or its lock ran out and it can be read again.
    pub const MESSAGE_LOCK_LOST: u32 = 412_002;
    /// Request body larger than allowed.
    pub const PAYLOAD_TOO_LARGE: u32 = 413_001;
    /// `*` (hub) More devices in one bulk registry operation than IoT Hub takes, 100 (IoT Hub's
    /// TooManyDevices).
    pub const TOO_MANY_DEVICES: u32 = 413_002;
    /// `*` The device has as many modules as a device may have (IoT Hub's TooManyModulesOnDevice).
    pub const TOO_MANY_MODULES: u32 = 413_003;
    /// Unsupported content type.
    pub const UNSUPPORTED_MEDIA_TYPE: u32 = 415_001;
    /// Throttled; retry after the indicated delay.
    pub const THROTTLED: u32 = 429_001;
    /// `*` (hub) As many scheduled jobs are active as the hub runs at once (IoT Hub's
    /// ThrottlingMaxActiveJobCountExceeded).
    pub const TOO_MANY_ACTIVE_JOBS: u32 = 429_004;
    /// Unexpected server error (storage failure and the like).
    pub const INTERNAL: u32 = 500_000;
    /// The hub's store could not be read or written now (IoT Hub's ServiceUnavailable); the
    /// client retries, and nothing was changed.
    pub const SERVICE_UNAVAILABLE: u32 = 503_001;
    /// `*` The device did not answer a direct method in time (IoT Hub's GatewayTimeout).
    pub const METHOD_TIMEOUT: u32 = 504_101;
    /// `*` IoT Hub's ArgumentInvalid (C# `ErrorCode.ArgumentInvalid`; the body IoT Hub sends for a
    /// refused reported-properties patch): a twin document or patch breaks IoT Hub's twin rules
    /// ([`crate::twin_limits`]). The same number as [`BAD_REQUEST_BODY`], by IoT Hub's numbering.
    pub const HUB_ARGUMENT_INVALID: u32 = 400_004;

    /// IoT Hub's name of an error the hub's APIs answer (C# service `ErrorCode`; the `ErrorCode:`
    /// part of IoT Hub's error bodies and its `iothub-errorcode` header). Codes of dps's own
    /// fall back to the name of their HTTP status's usual error; `None` where there is none.
    pub fn hub_error_name(code: u32) -> Option<&'static str> {
        Some(match code {
            DEVICE_NOT_FOUND => "DeviceNotFound",
            MODULE_NOT_FOUND => "ModuleNotFound",
            DEVICE_NOT_ONLINE => "DeviceNotOnline",
            DEVICE_EXISTS => "DeviceAlreadyExists",
            MODULE_EXISTS => "ModuleAlreadyExistsOnDevice",
            DEVICE_ETAG_MISMATCH => "PreconditionFailed",
            MESSAGE_LOCK_LOST => "DeviceMessageLockLost",
            PAYLOAD_TOO_LARGE => "MessageTooLarge",
            TOO_MANY_MODULES => "TooManyModulesOnDevice",
            TOO_MANY_DEVICES => "TooManyDevices",
            DEVICE_DEFINED_MULTIPLE_TIMES => "DeviceDefinedMultipleTimes",
            JOB_NOT_FOUND => "JobNotFound",
            JOB_EXISTS => "JobAlreadyExists",
            TOO_MANY_ACTIVE_JOBS => "ThrottlingMaxActiveJobCountExceeded",
            SERVICE_UNAVAILABLE => "ServiceUnavailable",
            METHOD_TIMEOUT => "GatewayTimeout",
            _ => match code / 1000 {
                400 => "ArgumentInvalid",
                401 => "IotHubUnauthorizedAccess",
                429 => "ThrottlingException",
                500 => "ServerError",
                _ => return None,
            },
        })
    }
}
/// `err` and its sources, `: `-separated: reqwest and rumqttc keep the useful part (an
/// untrusted certificate, a refused connection) in the source chain, not in the top message.
/// Shared so that every HTTP client of dps (the device SDK, the CLI, the server's own calls to
/// storage accounts, linked hubs and webhooks) reports errors alike.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
