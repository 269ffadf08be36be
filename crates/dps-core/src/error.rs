//! The one error type every engine call returns: an HTTP status, a DPS error code and a message
//! that says what was wrong. Transports format it (HTTP status + JSON body, MQTT response topic +
//! JSON body) without adding logic.

use chrono::{DateTime, Utc};
use dps_proto::codes;
use dps_proto::ErrorDetails;

use crate::quota::{Quota, Throttled};
use crate::store::StoreError;

/// An API error: `status` is the HTTP status, `code` the DPS `errorCode`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status (also the MQTT response-topic status).
    pub status: u16,
    /// DPS error code (`status * 1000 + sub-code`).
    pub code: u32,
    /// Human-readable cause.
    pub message: String,
    /// Seconds the client should wait before retrying (throttling): the `Retry-After` header
    /// on HTTPS, `&retry-after=` in the MQTT response topic.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error whose HTTP status is derived from the code.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            status: (code / 1000) as u16,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `429001 Throttled`, with the seconds to wait.
    pub fn throttled(message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(codes::THROTTLED, message)
        }
    }

    /// `401000 Unauthorized` with the reason.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(codes::UNAUTHORIZED, message)
    }

    /// `400004` malformed body.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(codes::BAD_REQUEST_BODY, message)
    }

    /// `400001` invalid argument.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(codes::ARGUMENT_INVALID, message)
    }

    /// Storage failure: 500, nothing written.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL, message)
    }

    /// The JSON body, with a fresh tracking id.
    pub fn details(&self, now: DateTime<Utc>) -> ErrorDetails {
        ErrorDetails {
            error_code: self.code,
            tracking_id: uuid::Uuid::new_v4().to_string(),
            message: self.message.clone(),
            timestamp_utc: dps_proto::timefmt::format_record(&now),
            info: None,
        }
    }
}

impl From<Throttled> for ApiError {
    /// Says which quota was exhausted and its configured rate, so an operator who sees it in a
    /// device's log knows which limit to raise.
    fn from(t: Throttled) -> Self {
        let what = match t.quota {
            Quota::Registrations => format!("more than {} registrations per second for this service", t.limit),
            Quota::Operations => format!("more than {} device requests per second for this service", t.limit),
            Quota::DevicePolls => format!(
                "more than {} operation-status polls in 10 seconds by this device",
                t.limit
            ),
        };
        let secs = t.retry_after_secs();
        ApiError::throttled(format!("throttled: {what}; retry after {secs} s"), secs)
    }
}

impl From<StoreError> for ApiError {
    /// Only backend failures reach here unmapped; callers map the precondition outcomes themselves
    /// because their codes depend on the resource.
    fn from(e: StoreError) -> Self {
        ApiError::internal(format!("storage: {e}"))
    }
}
