//! The file upload blob endpoint: the part of the Azure Blob Storage REST API that the official
//! SDKs use to upload a file with the SAS the hub handed out (`dps_proto::blob_storage` holds
//! the wire facts), served on the HTTPS port under `/{container}/{blob}`:
//!
//! - `PUT` Put Blob (`x-ms-blob-type: BlockBlob`; Python up to 64 MiB), Put Block
//!   (`comp=block&blockid=…`; Node and C always, Python above 64 MiB) and Put Block List
//!   (`comp=blocklist`), each answered `201 Created` (Node and Python take any other status as a
//!   failure); `If-None-Match: *` (Python's default) refuses to replace a blob (409);
//! - `GET`/`HEAD` to read a blob back with a SAS that grants `r`.
//!
//! Every request is judged by its SAS alone, against the account key and names the server
//! keeps. Errors are Storage's XML with the code in `x-ms-error-code` (Python picks its exception
//! type from it). Bodies go to disk as they arrive, never whole into memory.

use axum::body::Body;
use axum::response::Response;
use dps_proto::blob_storage::{self as storage, STORAGE_VERSION};
use dps_proto::rest::Route;
use dps_store::{BlobError, BlobProperties, BlobStore, BlobWrite};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED};
use http::{HeaderValue, Method, StatusCode};

use super::Ctx;
use crate::ApiError;

/// Largest Put Block List body: 50,000 ids of 64 bytes, base64, in their elements.
const MAX_BLOCK_LIST_BYTES: usize = 8 * 1024 * 1024;

/// A Storage error: status, code, message.
struct StorageError(StatusCode, &'static str, String);

impl From<ApiError> for StorageError {
    /// A body that could not be read (too large, too slow, broken).
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            413 => "RequestBodyTooLarge",
            408 => "OperationTimedOut",
            _ => "InvalidInput",
        };
        StorageError(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            e.message,
        )
    }
}

impl From<BlobError> for StorageError {
    fn from(e: BlobError) -> Self {
        let (status, code) = match &e {
            BlobError::AlreadyExists => (StatusCode::CONFLICT, "BlobAlreadyExists"),
            BlobError::UnknownBlock(_) => (StatusCode::BAD_REQUEST, "InvalidBlockList"),
            BlobError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "RequestBodyTooLarge"),
            BlobError::Name(_) => (StatusCode::BAD_REQUEST, "InvalidResourceName"),
            BlobError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            // Storage's answer when it cannot serve now; its SDKs retry it.
            BlobError::Database(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServerBusy"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "blob storage failed");
        }
        StorageError(status, code, e.to_string())
    }
}

/// Serves one blob request; every outcome is a response (Storage's errors are XML, not the
/// service's JSON).
pub(super) async fn handle(ctx: &mut Ctx<'_>, route: Route) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let now = ctx.now;
    match serve(ctx, route).await {
        Ok(resp) => with_storage_headers(resp, &request_id),
        Err(StorageError(status, code, message)) => {
            tracing::info!(status = status.as_u16(), code, "blob request refused: {message}");
            let mut resp = Response::new(Body::from(storage::error_xml(code, &message, &request_id, now)));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
            if let Ok(v) = HeaderValue::from_str(code) {
                h.insert("x-ms-error-code", v);
            }
            with_storage_headers(resp, &request_id)
        }
    }
}

async fn serve(ctx: &mut Ctx<'_>, route: Route) -> Result<Response, StorageError> {
    let (container, blob, write) = match route {
        Route::PutBlob { container, blob } => (container, blob, true),
        Route::GetBlob { container, blob } => (container, blob, false),
        other => unreachable!("not a blob route: {other:?}"),
    };
    let services = ctx.services;
    if let Some(account) = &services.storage_account {
        return Err(StorageError(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            format!("file uploads go to the storage account {}", account.endpoint()),
        ));
    }
    // The blob endpoint of the hub the upload URL names (its host is the hub's).
    let embedded = ctx.embedded_hub();
    let (Some(config), Some(store)) = (embedded.hub.file_upload_config(), embedded.blobs.as_ref()) else {
        return Err(StorageError(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            "file upload is not configured on this server".into(),
        ));
    };
    if container != config.container {
        return Err(StorageError(
            StatusCode::NOT_FOUND,
            "ContainerNotFound",
            format!("no container '{container}'"),
        ));
    }
    if !storage::valid_blob_name(&blob) {
        return Err(StorageError(
            StatusCode::BAD_REQUEST,
            "InvalidResourceName",
            format!("'{blob}' is not a blob name: '/'-separated names, none empty, '.' or '..'"),
        ));
    }
    storage::verify_sas(
        &config.key,
        &config.account,
        &container,
        &blob,
        &ctx.query,
        ctx.now,
        if write { 'w' } else { 'r' },
    )
    .map_err(|e| {
        StorageError(
            StatusCode::FORBIDDEN,
            e.code(),
            format!("Server failed to authenticate the request: {e}"),
        )
    })?;
    if !write {
        let range = ctx
            .header("x-ms-range")
            .or_else(|| ctx.header("range"))
            .map(str::to_string);
        return read(store, &container, &blob, range, ctx.method == Method::HEAD).await;
    }
    let if_none_match = ctx.header("if-none-match") == Some("*");
    let comp = ctx.query.get("comp").map(str::to_ascii_lowercase);
    match comp.as_deref() {
        Some("block") => {
            let id = ctx.query.get("blockid").and_then(storage::block_id).ok_or_else(|| {
                StorageError(
                    StatusCode::BAD_REQUEST,
                    "InvalidQueryParameterValue",
                    "blockid must be base64 of 1 to 64 bytes".into(),
                )
            })?;
            let w = receive(ctx, store).await?;
            store.put_block(w, &container, &blob, &id).await?;
            Ok(created(None))
        }
        Some("blocklist") => {
            let body = ctx.body_limited(MAX_BLOCK_LIST_BYTES).await?;
            let ids = storage::parse_block_list(&body)
                .map_err(|e| StorageError(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
            let props = store.put_block_list(&container, &blob, &ids, if_none_match).await?;
            tracing::debug!(blob = %blob, size = props.size, blocks = ids.len(), "blob written from blocks");
            Ok(created(Some(&props)))
        }
        None => {
            let kind = ctx.header("x-ms-blob-type");
            if !kind.is_some_and(|k| k.eq_ignore_ascii_case("BlockBlob")) {
                return Err(StorageError(
                    StatusCode::BAD_REQUEST,
                    "InvalidHeaderValue",
                    format!("x-ms-blob-type must be BlockBlob, not {kind:?}"),
                ));
            }
            let w = receive(ctx, store).await?;
            let props = store.put_blob(w, &container, &blob, if_none_match).await?;
            tracing::debug!(blob = %blob, size = props.size, "blob written");
            Ok(created(Some(&props)))
        }
        Some(other) => Err(StorageError(
            StatusCode::BAD_REQUEST,
            "InvalidQueryParameterValue",
            format!("comp={other} is not supported here: only block and blocklist"),
        )),
    }
}

/// Writes the request body to a new temporary file, chunk by chunk.
async fn receive(ctx: &mut Ctx<'_>, store: &BlobStore) -> Result<BlobWrite, StorageError> {
    let limit = usize::try_from(store.max_blob_bytes()).unwrap_or(usize::MAX);
    let mut reader = ctx.body_reader(limit)?;
    let mut w = store.begin().await?;
    while let Some(chunk) = reader.next().await? {
        w.write(&chunk).await?;
    }
    Ok(w)
}

/// Reads a blob (`head`: its headers only), or the `range` of it asked for.
async fn read(
    store: &BlobStore,
    container: &str,
    blob: &str,
    range: Option<String>,
    head: bool,
) -> Result<Response, StorageError> {
    let Some((props, reader)) = store.open_blob(container, blob).await? else {
        return Err(StorageError(
            StatusCode::NOT_FOUND,
            "BlobNotFound",
            "The specified blob does not exist.".into(),
        ));
    };
    // Python's downloader asks for a range (`x-ms-range: bytes=0-…`) and wants 206 and
    // `Content-Range` back.
    let range = range
        .map(|r| {
            storage::parse_range(&r, props.size).ok_or_else(|| {
                StorageError(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    format!("the range '{r}' is not a range of this blob's {} bytes", props.size),
                )
            })
        })
        .transpose()?;
    let (start, len) = range.unwrap_or((0, props.size));
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(reader.into_stream(start, len))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{}", start + len - 1, props.size)) {
            h.insert(http::header::CONTENT_RANGE, v);
        }
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    set_properties(&mut resp, &props);
    Ok(resp)
}

/// `201 Created` with the blob's ETag and time when it was written whole.
fn created(props: Option<&BlobProperties>) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::CREATED;
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(p) = props {
        set_properties(&mut resp, p);
    }
    resp
}

fn set_properties(resp: &mut Response, p: &BlobProperties) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&p.etag) {
        h.insert(ETAG, v);
    }
    let modified = p.last_modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(v) = HeaderValue::from_str(&modified) {
        h.insert(LAST_MODIFIED, v);
    }
}

/// Headers every Storage answer carries.
fn with_storage_headers(mut resp: Response, request_id: &str) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-ms-request-id", v);
    }
    h.insert("x-ms-version", HeaderValue::from_static(STORAGE_VERSION));
    h.insert("x-ms-request-server-encrypted", HeaderValue::from_static("false"));
    resp
}
