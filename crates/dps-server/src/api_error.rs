//! [`ApiError`]: an error as the device, service and hub APIs answer it — HTTP status (also the
//! MQTT response-topic status), DPS `errorCode`, message and retry-after. The engine's typed
//! [`dps_core::Error`] becomes one through its own mapping ([`dps_core::Error::code`]); the
//! refusals the server makes itself (routing, body limits, WebSocket handshakes, the hub
//! registry API) are built here with their codes.

use chrono::{DateTime, Utc};
use dps_proto::codes;
use dps_proto::ErrorDetails;

/// An error response: `status` is the HTTP status, `code` the DPS `errorCode`.
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

    /// The JSON body, with `tracking_id` (fresh for every answer: [`dps_core::Engine::tracking_id`]).
    pub fn details(&self, now: DateTime<Utc>, tracking_id: String) -> ErrorDetails {
        ErrorDetails {
            error_code: self.code,
            tracking_id,
            message: self.message.clone(),
            timestamp_utc: dps_proto::timefmt::format_record(&now),
            info: None,
            hub_message: None,
            hub_exception_message: None,
        }
    }

    /// [`ApiError::details`] as the hub's APIs answer: also IoT Hub's `Message` and
    /// `ExceptionMessage` (when the code has an IoT Hub name), which the Node and C# service SDKs
    /// read the error's kind from.
    pub fn hub_details(&self, now: DateTime<Utc>, tracking_id: String) -> ErrorDetails {
        let mut d = self.details(now, tracking_id);
        if let Some(name) = codes::hub_error_name(self.code) {
            d.hub_message = Some(format!("ErrorCode:{name};{}", self.message));
            d.hub_exception_message = Some(format!(
                "Tracking ID:{}-TimeStamp:{}",
                d.tracking_id,
                now.format("%m/%d/%Y %H:%M:%S")
            ));
        }
        d
    }
}

impl From<dps_core::Error> for ApiError {
    fn from(e: dps_core::Error) -> Self {
        Self {
            status: e.status(),
            code: e.code(),
            retry_after: e.retry_after(),
            message: e.to_string(),
        }
    }
}
