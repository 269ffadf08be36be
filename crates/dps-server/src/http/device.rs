//! Device API over HTTPS (device-protocol.md §3): register, operation status, registration
//! status lookup. Authentication is judged by the engine: a SAS token from `Authorization`, else
//! the TLS client certificate, else nothing — which, on a register request carrying TPM keys, the
//! engine answers with the TPM challenge (§7.2), sent here as a 401 with the activation blob.

use crate::ApiError;
use axum::response::Response;
use dps_core::{Credential, DeviceRequest, DeviceResponse, Registered};
use dps_proto::model::device::DeviceRegistration;
use http::StatusCode;

use super::{json_response, ok, set_header, Ctx};
use dps_proto::rest::Route;

pub(super) async fn handle(ctx: &mut Ctx<'_>, route: Route) -> Result<Response, ApiError> {
    let engine = ctx.services.engine.clone();
    match route {
        Route::Register { scope, registration_id } => {
            let body = registration_body(ctx).await?;
            let req = request(ctx, scope, registration_id)?;
            Ok(registered(engine.register(ctx.now, &req, &body).await?))
        }
        Route::OperationStatus {
            scope,
            registration_id,
            operation_id,
        } => {
            // Node sends `{}` on this GET; the body is read (so the connection can be reused)
            // and ignored.
            let _ = ctx.body().await?;
            let req = request(ctx, scope, registration_id)?;
            let resp = engine.operation_status(ctx.now, &req, &operation_id).await?;
            Ok(device_response(resp))
        }
        Route::RegistrationStatus { scope, registration_id } => {
            let _ = registration_body(ctx).await?;
            let req = request(ctx, scope, registration_id)?;
            let state = engine.registration_status(ctx.now, &req).await?;
            Ok(ok(&state))
        }
        other => unreachable!("not a device route: {other:?}"),
    }
}

async fn registration_body(ctx: &mut Ctx<'_>) -> Result<DeviceRegistration, ApiError> {
    let body = ctx.body().await?;
    DeviceRegistration::parse(&body).map_err(|e| ApiError::bad_body(e.to_string()))
}

fn request(ctx: &Ctx<'_>, id_scope: String, registration_id: String) -> Result<DeviceRequest, ApiError> {
    let credential = match ctx.headers.get("authorization") {
        Some(v) if !v.as_bytes().iter().all(u8::is_ascii_whitespace) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::unauthorized("the Authorization header is not valid ASCII text"))?;
            Credential::Sas(text.trim().to_string())
        }
        _ => match &ctx.peer_certs {
            Some(c) if !c.0.is_empty() => Credential::X509(c.0.as_ref().clone()),
            _ => Credential::None,
        },
    };
    Ok(DeviceRequest {
        id_scope,
        registration_id,
        credential,
        api_version: ctx.query.get(dps_proto::rest::API_VERSION).map(str::to_string),
        source: ctx.peer_addr,
        transport: dps_core::Transport::Https,
    })
}

/// A register outcome as HTTPS answers it: the operation status (202 with `retry-after`, or
/// 200), or the TPM challenge as a 401 whose body is the challenge.
fn registered(r: Registered) -> Response {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::OK);
    let mut resp = json_response(status, &r);
    if let Some(secs) = r.retry_after() {
        set_header(&mut resp, "retry-after", &secs.to_string());
    }
    resp
}

fn device_response(r: DeviceResponse) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let mut resp = json_response(status, &r.body);
    if let Some(secs) = r.retry_after {
        set_header(&mut resp, "retry-after", &secs.to_string());
    }
    resp
}
