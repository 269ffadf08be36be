//! The files devices uploaded, for backends and the `dps hub file` CLI: `GET /files[?deviceId=]`
//! lists them, `GET /files/{deviceId}/{name}` reads one. In Azure a backend reads them from the
//! storage account; here they live in the data directory's blob store (or the external storage
//! account, when one is configured), and this hub resource (authorized by the hub's policies,
//! see `hub.rs`) reads them without a storage key.

use axum::body::Body;
use axum::response::Response;
use dps_proto::blob_storage::valid_blob_name;
use dps_proto::codes;
use dps_proto::model::hub::{UploadedFile, UploadedFileList};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderValue;

use super::ok;
use crate::hubs::EmbeddedHub;
use crate::{ApiError, Services};

/// The blob store and its container, or 400014 when file upload is not configured.
fn store(hub: &EmbeddedHub) -> Result<(&dps_store::BlobStore, &str), ApiError> {
    match (hub.blobs.as_ref(), hub.hub.file_upload_config()) {
        (Some(b), Some(c)) => Ok((b, c.container.as_str())),
        _ => Err(ApiError::new(
            codes::FILE_UPLOAD_NOT_CONFIGURED,
            "file upload is not configured on this server",
        )),
    }
}

/// A blob store failure as the service API reports it: 503 while the database is away.
pub(super) fn storage_error(e: dps_store::BlobError) -> ApiError {
    match e {
        dps_store::BlobError::Database(_) => ApiError::new(codes::SERVICE_UNAVAILABLE, e.to_string()),
        e => ApiError::internal(format!("blob storage: {e}")),
    }
}

fn account_error(e: crate::storage_account::StorageAccountError) -> ApiError {
    ApiError::new(codes::SERVICE_UNAVAILABLE, e.to_string())
}

/// `GET /files`: every uploaded file by name (only `device`'s when given), at most
/// [`UploadedFileList::MAX`].
pub(super) async fn list(services: &Services, hub: &EmbeddedHub, device: Option<&str>) -> Result<Response, ApiError> {
    let file = |name: String, size: u64, last_modified: &chrono::DateTime<chrono::Utc>| UploadedFile {
        device_id: name.split('/').next().unwrap_or_default().to_string(),
        name,
        size,
        last_modified: dps_proto::timefmt::format_record(last_modified),
    };
    let value = if let Some(account) = &services.storage_account {
        let prefix = device.map(|d| format!("{d}/"));
        let listed = account
            .list(prefix.as_deref(), UploadedFileList::MAX)
            .await
            .map_err(account_error)?;
        listed
            .into_iter()
            .map(|b| file(b.name, b.size, &b.last_modified))
            .collect()
    } else {
        let (blobs, container) = store(hub)?;
        let listed = blobs
            .list(container, device, UploadedFileList::MAX)
            .await
            .map_err(storage_error)?;
        listed
            .into_iter()
            .map(|(name, p)| file(name, p.size, &p.last_modified))
            .collect()
    };
    Ok(ok(&UploadedFileList { value }))
}

/// `GET /files/{name}`: the file's bytes, streamed.
pub(super) async fn read(services: &Services, hub: &EmbeddedHub, name: &str) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(codes::PATH_NOT_FOUND, format!("no uploaded file '{name}'"));
    if !valid_blob_name(name) {
        return Err(not_found());
    }
    let (size, body) = if let Some(account) = &services.storage_account {
        let Some((size, stream)) = account.open(name).await.map_err(account_error)? else {
            return Err(not_found());
        };
        (size, Body::from_stream(stream))
    } else {
        let (blobs, container) = store(hub)?;
        let Some((props, reader)) = blobs.open_blob(container, name).await.map_err(storage_error)? else {
            return Err(not_found());
        };
        (props.size, Body::from_stream(reader.into_stream(0, props.size)))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(resp)
}
