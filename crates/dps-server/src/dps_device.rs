//! The DPS device requests every transport carries — register and operation status — answered
//! the same way whether they came as an MQTT publish or an AMQP message (HTTPS has its own
//! routes over the same engine calls). Adapters parse their framing into a [`DpsOperation`] and
//! format the [`Answer`] or [`ApiError`] back into it.

use dps_core::{Authenticated, DeviceRequest};
use dps_proto::model::device::{to_ascii_json, DeviceRegistration};

use crate::{ApiError, Services};

/// A device's request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DpsOperation<'a> {
    /// Register (or re-register), with the request body (JSON `DeviceRegistration`).
    Register(&'a [u8]),
    /// Poll an operation. Whatever body came with it is junk by design (" ", the register JSON,
    /// nothing) and ignored.
    OperationStatus(&'a str),
}

/// A successful answer: status (200 or 202), seconds to wait before polling, JSON body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u32>,
    pub(crate) body: Vec<u8>,
}

/// Answers `op` for a device whose credential was already accepted when its connection opened.
/// Refused polls are logged here (throttling at debug: the engine's quotas summarize it);
/// refused registrations by the server's observer of the engine (`crate::observer`), at most
/// ten lines a second.
pub(crate) async fn answer(
    services: &Services,
    request: &DeviceRequest,
    authenticated: &Authenticated,
    op: DpsOperation<'_>,
) -> Result<Answer, ApiError> {
    let now = services.clock.now();
    let result = match op {
        DpsOperation::Register(payload) => match DeviceRegistration::parse(payload) {
            Ok(body) => services
                .engine
                .register_authenticated(now, request, authenticated, &body)
                .await
                .map(|r| Answer {
                    status: r.status(),
                    retry_after: r.retry_after(),
                    body: to_ascii_json(&r),
                })
                .map_err(ApiError::from),
            Err(e) => Err(ApiError::bad_body(e.to_string())),
        },
        DpsOperation::OperationStatus(operation_id) => services
            .engine
            .operation_status(now, request, operation_id)
            .await
            .map(|r| Answer {
                status: r.status,
                retry_after: r.retry_after,
                body: to_ascii_json(&r.body),
            })
            .map_err(ApiError::from),
    };
    if let Err(err) = &result {
        if err.status == 429 || matches!(op, DpsOperation::Register(_)) {
            tracing::debug!(registration = %request.registration_id, code = err.code, error = %err.message, "DPS request refused");
        } else {
            tracing::info!(registration = %request.registration_id, code = err.code, error = %err.message, "DPS request refused");
        }
    }
    result
}

/// The JSON error body of a refusal, as every transport sends it (`errorCode`, `trackingId`,
/// `message`, `timestampUtc`).
pub(crate) fn error_body(services: &Services, err: &ApiError) -> Vec<u8> {
    to_ascii_json(&err.details(services.clock.now(), services.engine.tracking_id()))
}
