//! The embedded hub's device API over HTTPS (newer-surfaces.md "Hub device API over HTTPS";
//! wire facts in `dps_proto::hub_http`): telemetry, one message or a batch, and cloud-to-device
//! messages received, completed, rejected and abandoned by lock token, as the Node, C and C#
//! HTTP transports use them; and file upload: a SAS for a blob on the blob endpoint
//! (`POST /devices/{id}/files`, served by `blob`) and the device's report of how the upload went
//! (`POST /devices/{id}/files/notifications`), which queues a notification for the service.
//!
//! Every request authenticates on its own: a device SAS token in `Authorization` for
//! `{hub}/devices/{id}` (the id of the path, the hub's own host name), else the TLS client
//! certificate of an X.509 device. A blank `Authorization` counts as none (the C SDK sends one
//! with its certificate).

use axum::body::Body;
use axum::response::Response;
use dps_hub::{
    AuthError, C2dError, C2dOutcome, DeviceIdentity, FileUploadError, PolledC2d, SessionError, UploadedBlob,
};
use dps_proto::codes;
use dps_proto::hub_http::{self, BATCH_CONTENT_TYPE};
use dps_proto::model::hub::{FileUploadCompletionNotification, FileUploadSasUriRequest};
use dps_proto::rest::Route;
use dps_proto::timefmt::format_record;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, ETAG};

use super::{no_content, ok, Ctx};
use crate::ApiError;

pub(super) async fn handle(ctx: &mut Ctx<'_>, route: Route) -> Result<Response, ApiError> {
    let device_id = match &route {
        Route::SendDeviceEvent(id) | Route::ReceiveC2d(id) => id.clone(),
        Route::CompleteC2d { device_id, .. }
        | Route::AbandonC2d { device_id, .. }
        | Route::CompleteFileUpload { device_id, .. } => device_id.clone(),
        Route::CreateFileUpload(id) => id.clone(),
        other => unreachable!("not a hub device route: {other:?}"),
    };
    let token = ctx.header("authorization").map(str::to_string);
    let client_cert = ctx
        .peer_certs
        .as_ref()
        .and_then(|c| dps_hub::ClientCertificate::leaf_of(&c.0));
    let embedded = ctx.embedded_hub();
    let identity = authenticate(&embedded.hub, ctx.now, &device_id, token.as_deref(), client_cert).await?;
    let hub = embedded.hub.clone();
    match route {
        Route::SendDeviceEvent(_) => {
            let body = ctx.body().await?;
            let batch = ctx
                .header(CONTENT_TYPE.as_str())
                .is_some_and(|t| t.to_ascii_lowercase().starts_with(BATCH_CONTENT_TYPE));
            if batch {
                let messages = hub_http::parse_batch(&body).map_err(|e| ApiError::bad_body(e.to_string()))?;
                // Refused whole, before any of it is kept.
                if let Some((i, size)) = hub_http::first_oversized(&messages) {
                    return Err(ApiError::new(
                        codes::PAYLOAD_TOO_LARGE,
                        format!(
                            "message {i} of the batch is {size} bytes, over IoT Hub's {}-byte limit; nothing of the batch was kept",
                            dps_proto::twin_limits::D2C_MAX_BYTES
                        ),
                    ));
                }
                for m in messages {
                    hub.send_telemetry(&identity, m.properties, &m.body)
                        .await
                        .map_err(telemetry_error)?;
                }
            } else {
                let properties = hub_http::properties_from_headers(
                    ctx.headers
                        .iter()
                        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))),
                );
                hub.send_telemetry(&identity, properties, &body)
                    .await
                    .map_err(telemetry_error)?;
            }
            Ok(no_content())
        }
        Route::ReceiveC2d(_) => match hub.receive_c2d(&identity).await.map_err(c2d_error)? {
            Some(m) => Ok(c2d_response(m)),
            None => Ok(no_content()),
        },
        Route::CompleteC2d { lock_token, .. } => {
            // A valueless `reject` query parameter (`?api-version=…&reject`) rejects.
            let outcome = if ctx.query.pairs().any(|(k, _)| k.eq_ignore_ascii_case("reject")) {
                C2dOutcome::Reject
            } else {
                C2dOutcome::Complete
            };
            settle(&hub, &identity, &lock_token, outcome).await
        }
        Route::AbandonC2d { lock_token, .. } => {
            // Java sends a one-byte body; nothing in it matters.
            let _ = ctx.body().await?;
            settle(&hub, &identity, &lock_token, C2dOutcome::Abandon).await
        }
        Route::CreateFileUpload(_) => {
            let req: FileUploadSasUriRequest = ctx.json("FileUploadSasUriRequest").await?;
            Ok(ok(&hub
                .create_file_upload(&identity, &req.blob_name)
                .await
                .map_err(file_upload_error)?))
        }
        Route::CompleteFileUpload { correlation_id, .. } => {
            let status: FileUploadCompletionNotification = ctx.json("FileUploadCompletionNotification").await?;
            let correlation_id = correlation_id.or(status.correlation_id).ok_or_else(|| {
                ApiError::new(
                    codes::FILE_UPLOAD_CORRELATION_INVALID,
                    "the notification names no correlationId (in the body or the path)",
                )
            })?;
            let blob_name = hub
                .finish_file_upload(&identity, &correlation_id)
                .await
                .map_err(file_upload_error)?;
            tracing::debug!(device = %identity.device_id(), blob = %blob_name, success = status.is_success, code = ?status.status_code, "file upload reported");
            if status.is_success {
                let blob = uploaded(ctx.services, &embedded, &blob_name).await?;
                hub.notify_file_uploaded(&identity, &blob_name, blob)
                    .await
                    .map_err(|e| ApiError::new(codes::SERVICE_UNAVAILABLE, format!("hub storage: {e}")))?;
            }
            Ok(no_content())
        }
        other => unreachable!("not a hub device route: {other:?}"),
    }
}

async fn authenticate(
    hub: &dps_hub::Hub,
    now: chrono::DateTime<chrono::Utc>,
    device_id: &str,
    token: Option<&str>,
    client_cert: Option<dps_hub::ClientCertificate>,
) -> Result<DeviceIdentity, ApiError> {
    if token.is_none() && client_cert.is_none() {
        return Err(ApiError::unauthorized(format!(
            "missing Authorization: send a SAS token for devices/{device_id}, or connect with the device's X.509 certificate"
        )));
    }
    let now = dps_core::Engine::unix_time(now);
    hub.authenticate_device(now, device_id, token, client_cert)
        .await
        .map_err(|e| match e {
            AuthError::Storage { .. } => ApiError::new(codes::SERVICE_UNAVAILABLE, e.to_string()),
            // Refused credentials and disabled devices alike: 401, as IoT Hub answers both.
            _ => ApiError::unauthorized(e.to_string()),
        })
}

async fn settle(
    hub: &dps_hub::Hub,
    identity: &DeviceIdentity,
    lock_token: &str,
    outcome: C2dOutcome,
) -> Result<Response, ApiError> {
    // The ETag as some SDKs echo it, quoted.
    let lock_token = lock_token.trim_matches('"');
    if hub
        .settle_polled_c2d(identity, lock_token, outcome)
        .await
        .map_err(c2d_error)?
    {
        Ok(no_content())
    } else {
        Err(ApiError::new(
            codes::MESSAGE_LOCK_LOST,
            format!(
                "no cloud-to-device message of device '{}' is locked with token '{lock_token}': it was settled \
                 already, or its lock ran out and it went back to the queue",
                identity.device_id()
            ),
        ))
    }
}

/// A received message: 200, its body, the lock token as the quoted `ETag`, its properties and
/// IoT Hub's delivery headers.
fn c2d_response(m: PolledC2d) -> Response {
    let record = &m.record;
    let mut resp = Response::new(Body::from(record.body.clone()));
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&hub_http::lock_etag(&m.lock_token)) {
        headers.insert(ETAG, v);
    }
    let delivery = [
        ("iothub-sequencenumber", record.seq.to_string()),
        ("iothub-enqueuedtime", format_record(&record.enqueued_at)),
        ("iothub-deliverycount", record.delivery_count.to_string()),
    ];
    for (name, value) in hub_http::c2d_headers(&record.properties)
        .into_iter()
        .chain(delivery.map(|(k, v)| (k.to_string(), v)))
    {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            // A property that cannot be an HTTP header (a control character, a space in its
            // name) is not sent rather than failing the delivery.
            _ => tracing::debug!(device = %record.device_id, property = %name, "property not sent over HTTPS"),
        }
    }
    resp
}

/// What the blob endpoint (or the external storage account) holds for a blob the device says
/// it uploaded (IoT Hub checks it: 400020 when it is not there).
async fn uploaded(
    services: &crate::Services,
    embedded: &crate::hubs::EmbeddedHub,
    blob_name: &str,
) -> Result<UploadedBlob, ApiError> {
    let missing = || {
        ApiError::new(
            codes::FILE_UPLOAD_BLOB_MISSING,
            format!("the upload is reported successful, but blob '{blob_name}' was not uploaded"),
        )
    };
    if let Some(account) = &services.storage_account {
        return match account.properties(blob_name).await {
            Ok(Some(blob)) => Ok(blob),
            Ok(None) => Err(missing()),
            Err(e) => Err(ApiError::new(
                codes::SERVICE_UNAVAILABLE,
                format!("cannot read the uploaded blob's properties: {e}"),
            )),
        };
    }
    let (Some(config), Some(blobs)) = (embedded.hub.file_upload_config(), embedded.blobs.as_ref()) else {
        return Err(missing());
    };
    match blobs.properties(&config.container, blob_name).await {
        Ok(Some(p)) => Ok(UploadedBlob {
            size: p.size,
            last_modified: p.last_modified,
        }),
        Ok(None) => Err(missing()),
        Err(e) => Err(super::files::storage_error(e)),
    }
}

fn file_upload_error(e: FileUploadError) -> ApiError {
    let code = match &e {
        FileUploadError::NotConfigured => codes::FILE_UPLOAD_NOT_CONFIGURED,
        FileUploadError::TooManyActive { .. } => codes::FILE_UPLOADS_EXCEEDED,
        FileUploadError::UnknownCorrelationId { .. } => codes::FILE_UPLOAD_CORRELATION_INVALID,
        FileUploadError::ExpiredCorrelationId { .. } => codes::FILE_UPLOAD_CORRELATION_EXPIRED,
        FileUploadError::Storage(_) => codes::SERVICE_UNAVAILABLE,
        _ => codes::ARGUMENT_INVALID,
    };
    ApiError::new(code, e.to_string())
}

fn telemetry_error(e: SessionError) -> ApiError {
    match &e {
        SessionError::TooLarge { .. } => ApiError::new(codes::PAYLOAD_TOO_LARGE, e.to_string()),
        SessionError::Storage { .. } => ApiError::new(codes::SERVICE_UNAVAILABLE, e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

fn c2d_error(e: C2dError) -> ApiError {
    match &e {
        C2dError::DeviceNotFound { .. } => ApiError::new(codes::DEVICE_NOT_FOUND, e.to_string()),
        C2dError::Storage { .. } => ApiError::new(codes::SERVICE_UNAVAILABLE, e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}
