//! File upload through the router: a device gets a SAS for a blob (`POST /devices/{id}/files`),
//! uploads it to the blob endpoint as the SDKs do (Put Block + Put Block List, and Put Blob),
//! reports the outcome (`POST /devices/{id}/files/notifications`), and a successful upload
//! becomes a notification for the service. And the refusals: SAS for another blob, expired,
//! read-only; a blob that exists under `If-None-Match: *`; bad block lists; unknown, foreign
//! and expired correlation ids; a success reported for a blob that was never written; too many
//! uploads at once.

use crate::common::router::*;
use axum::body::Body;
use dps_proto::codes;
use dps_proto::sas::build_token;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const HUB_API: &str = "api-version=2021-04-12";

async fn as_device(f: &Fixture, path: &str, token: &str, body: Value) -> Resp {
    f.call(
        Method::POST,
        &format!("{path}?{HUB_API}"),
        &[
            ("authorization", token),
            ("host", HUB_HOST),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

/// Starts an upload of `name`; returns (correlation id, blob name, SAS).
async fn start(f: &Fixture, id: &str, token: &str, name: &str) -> (String, String, String) {
    let sas = as_device(f, &format!("/devices/{id}/files"), token, json!({"blobName": name}))
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(sas["hostName"], HUB_HOST);
    assert_eq!(sas["containerName"], "fileupload");
    assert_eq!(sas["blobName"], format!("{id}/{name}"));
    let token = sas["sasToken"].as_str().unwrap().to_string();
    assert!(token.starts_with("?sv=2018-03-28&sr=b&sig="), "{token}");
    assert!(token.ends_with("&sp=rw"), "{token}");
    (
        sas["correlationId"].as_str().unwrap().to_string(),
        sas["blobName"].as_str().unwrap().to_string(),
        token,
    )
}

/// A request to the blob endpoint: `/fileupload/{blob}{sas}{extra}`.
async fn blob(
    f: &Fixture,
    method: Method,
    blob: &str,
    sas: &str,
    extra: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Resp {
    let mut h = vec![("host", HUB_HOST)];
    h.extend_from_slice(headers);
    f.call(method, &format!("/fileupload/{blob}{sas}{extra}"), &h, body)
        .await
}

#[track_caller]
fn assert_storage_error(r: &Resp, status: StatusCode, code: &str) -> String {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-ms-error-code"), Some(code));
    assert_eq!(r.header("content-type"), Some("application/xml"));
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.contains(&format!("<Code>{code}</Code>")), "{body}");
    body
}

#[tokio::test]
async fn upload_by_blocks_then_notify() {
    let f = fixture().await;
    let tok = sas_device_token(&f, "up1").await;
    let (cid, name, sas) = start(&f, "up1", &tok, "logs/today.txt").await;
    // Node's order: SAS first, then comp and blockid; Python's: comp first.
    for (id, chunk) in [("AAAA", "hello "), ("AAAB", "world")] {
        let r = blob(
            &f,
            Method::PUT,
            &name,
            &sas,
            &format!("&comp=block&blockid={id}"),
            &[("x-ms-version", "2020-10-02"), ("x-ms-encryption-algorithm", "AES256")],
            chunk,
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-ms-version"), Some("2020-10-02"));
        assert!(r.header("x-ms-request-id").is_some());
    }
    // Not assembled yet: the device cannot read it.
    let r = blob(&f, Method::GET, &name, &sas, "", &[], Body::empty()).await;
    assert_storage_error(&r, StatusCode::NOT_FOUND, "BlobNotFound");
    let list = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><BlockList><Latest>AAAA</Latest><Latest>AAAB</Latest></BlockList>"#;
    let r = blob(
        &f,
        Method::PUT,
        &name,
        &format!("?comp=blocklist&{}", &sas[1..]),
        "",
        &[],
        list,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("etag").is_some() && r.header("last-modified").is_some());
    assert_eq!(
        std::fs::read(f.blob_dir.path().join("fileupload/up1/logs/today.txt")).unwrap(),
        b"hello world"
    );
    // Read back with the same SAS (sp=rw).
    let r = blob(&f, Method::GET, &name, &sas, "", &[], Body::empty()).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"hello world"[..]));
    assert_eq!(r.header("x-ms-blob-type"), Some("BlockBlob"));
    // Ranges, as Python's downloader asks: 206 with Content-Range; past the end, 416.
    let r = blob(
        &f,
        Method::GET,
        &name,
        &sas,
        "",
        &[("x-ms-range", "bytes=6-100")],
        Body::empty(),
    )
    .await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::PARTIAL_CONTENT, &b"world"[..]));
    assert_eq!(r.header("content-range"), Some("bytes 6-10/11"));
    let r = blob(
        &f,
        Method::GET,
        &name,
        &sas,
        "",
        &[("range", "bytes=11-")],
        Body::empty(),
    )
    .await;
    assert_storage_error(&r, StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange");
    let r = blob(&f, Method::HEAD, &name, &sas, "", &[], Body::empty()).await;
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (StatusCode::OK, Some("11"), 0)
    );

    // Backends list and read uploaded files with a hub policy (RegistryRead or ServiceConnect).
    let listed = f
        .reg(Method::GET, "/files?deviceId=UP1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(listed["value"][0]["name"], "up1/logs/today.txt", "{listed}");
    assert_eq!(
        (
            listed["value"][0]["deviceId"].as_str(),
            listed["value"][0]["size"].as_u64()
        ),
        (Some("up1"), Some(11))
    );
    let got = f
        .reg(Method::GET, "/files/up1/logs%2Ftoday.txt", &[], Body::empty())
        .await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"hello world"[..]));
    f.reg(Method::GET, "/files/up1/none.txt", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::PATH_NOT_FOUND);
    let reader = build_token(HUB_HOST, HUB_READER_KEY, f.expiry(), Some("registryRead")).unwrap();
    let r = f
        .call(
            Method::GET,
            &format!("/files?{HUB_API}"),
            &[("authorization", &reader)],
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(r["value"].as_array().unwrap().len(), 1);
    // A device's own token is no backend credential.
    f.call(
        Method::GET,
        &format!("/files?{HUB_API}"),
        &[("authorization", &tok)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);

    // Node reports with the correlation id in the path and no status code.
    as_device(
        &f,
        &format!("/devices/up1/files/notifications/{cid}"),
        &tok,
        json!({"isSuccess": true, "statusDescription": ""}),
    )
    .await
    .assert_no_content();
    let batch = f
        .hub
        .receive_file_notification()
        .await
        .unwrap()
        .expect("a notification");
    let n = batch.records[0].to_wire();
    assert_eq!(n["deviceId"], "up1");
    assert_eq!(n["blobName"], "up1/logs/today.txt");
    assert_eq!(
        n["blobUri"],
        format!("https://{HUB_HOST}/fileupload/up1/logs/today.txt")
    );
    assert_eq!(n["blobSizeInBytes"], 11);
    assert!(n["lastUpdatedTime"].as_str().unwrap().ends_with("+00:00"), "{n}");
    assert!(n["enqueuedTimeUtc"].as_str().unwrap().ends_with('Z'), "{n}");
    assert!(f.hub.complete_file_notification(&batch.lock_token).await.unwrap());
    assert_eq!(f.hub.file_notifications_len(), 0);

    // The upload is over: reporting it again is an unknown correlation id.
    let m = as_device(
        &f,
        "/devices/up1/files/notifications",
        &tok,
        json!({"correlationId": cid, "isSuccess": true, "statusCode": 201}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::FILE_UPLOAD_CORRELATION_INVALID);
    assert!(m.contains(&cid), "{m}");
}

#[tokio::test]
async fn put_blob_and_the_refusals() {
    let f = fixture().await;
    let tok = sas_device_token(&f, "up2").await;
    let other = sas_device_token(&f, "up3").await;
    let (cid, name, sas) = start(&f, "up2", &tok, "photo.jpg").await;
    let put = |extra: &'static str, headers: Vec<(&'static str, &'static str)>, body: &'static str| {
        let (f, name, sas) = (&f, name.clone(), sas.clone());
        async move { blob(f, Method::PUT, &name, &sas, extra, &headers, body).await }
    };
    // Python's single put, with If-None-Match: * (its default): the second one conflicts.
    let python = vec![("x-ms-blob-type", "BlockBlob"), ("if-none-match", "*")];
    let r = put("", python.clone(), "jpeg bytes").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    let r = put("", python.clone(), "other bytes").await;
    assert_storage_error(&r, StatusCode::CONFLICT, "BlobAlreadyExists");
    assert_eq!(
        std::fs::read(f.blob_dir.path().join("fileupload/up2/photo.jpg")).unwrap(),
        b"jpeg bytes"
    );
    // Without the blob type; with an unsupported comp; bad block ids and lists.
    let r = put("", vec![], "x").await;
    assert_storage_error(&r, StatusCode::BAD_REQUEST, "InvalidHeaderValue");
    let r = put("&comp=appendblock", vec![], "x").await;
    assert_storage_error(&r, StatusCode::BAD_REQUEST, "InvalidQueryParameterValue");
    let r = put("&comp=block&blockid=!!", vec![], "x").await;
    assert_storage_error(&r, StatusCode::BAD_REQUEST, "InvalidQueryParameterValue");
    let r = put(
        "&comp=blocklist",
        vec![],
        "<BlockList><Latest>AAAA</Latest></BlockList>",
    )
    .await;
    assert_storage_error(&r, StatusCode::BAD_REQUEST, "InvalidBlockList");
    let r = put("&comp=blocklist", vec![], "<BlockList><Latest>AAAA").await;
    assert_storage_error(&r, StatusCode::BAD_REQUEST, "InvalidXmlDocument");
    // Larger than the endpoint takes.
    let big = vec![b'x'; MAX_UPLOAD as usize + 1];
    let r = blob(&f, Method::PUT, &name, &sas, "&comp=block&blockid=AAAA", &[], big).await;
    assert_storage_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "RequestBodyTooLarge");

    // The SAS is for this blob only, cannot be widened, and is needed.
    let r = blob(
        &f,
        Method::PUT,
        "up2/elsewhere.jpg",
        &sas,
        "",
        &[("x-ms-blob-type", "BlockBlob")],
        "x",
    )
    .await;
    let body = assert_storage_error(&r, StatusCode::FORBIDDEN, "AuthenticationFailed");
    assert!(body.contains("not for this blob"), "{body}");
    let r = blob(
        &f,
        Method::PUT,
        &name,
        &sas.replace("sp=rw", "sp=rwd"),
        "",
        &[("x-ms-blob-type", "BlockBlob")],
        "x",
    )
    .await;
    assert_storage_error(&r, StatusCode::FORBIDDEN, "AuthenticationFailed");
    let r = blob(&f, Method::PUT, &name, "", "", &[("x-ms-blob-type", "BlockBlob")], "x").await;
    assert_storage_error(&r, StatusCode::FORBIDDEN, "AuthenticationFailed");
    // Another device cannot report this device's upload.
    as_device(
        &f,
        "/devices/up3/files/notifications",
        &other,
        json!({"correlationId": cid, "isSuccess": true}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::FILE_UPLOAD_CORRELATION_INVALID);
    // A failed upload queues no notification.
    as_device(
        &f,
        "/devices/up2/files/notifications",
        &tok,
        json!({"correlationId": cid, "isSuccess": false, "statusCode": 500, "statusDescription": "disk"}),
    )
    .await
    .assert_no_content();
    assert_eq!(f.hub.file_notifications_len(), 0);

    // A success reported for a blob never written.
    let (cid, _, _) = start(&f, "up2", &tok, "never.bin").await;
    let m = as_device(
        &f,
        "/devices/up2/files/notifications",
        &tok,
        json!({"correlationId": cid, "isSuccess": true, "statusCode": 201}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::FILE_UPLOAD_BLOB_MISSING);
    assert!(m.contains("up2/never.bin"), "{m}");

    // Bad names; ten uploads at once at most.
    as_device(&f, "/devices/up2/files", &tok, json!({"blobName": "../escape"}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    as_device(&f, "/devices/up2/files", &tok, json!({"blobName": ""}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    for i in 0..10 {
        start(&f, "up3", &other, &format!("f{i}")).await;
    }
    let m = as_device(&f, "/devices/up3/files", &other, json!({"blobName": "f10"}))
        .await
        .assert_error(StatusCode::FORBIDDEN, codes::FILE_UPLOADS_EXCEEDED);
    assert!(m.contains("cannot exceed 10"), "{m}");

    // After the hour, the SAS and the upload have expired.
    let (cid, name, sas) = start(&f, "up2", &tok, "late.bin").await;
    f.clock.advance(chrono::Duration::seconds(3601));
    f.hub.sweep();
    let r = blob(
        &f,
        Method::PUT,
        &name,
        &sas,
        "",
        &[("x-ms-blob-type", "BlockBlob")],
        "x",
    )
    .await;
    let body = assert_storage_error(&r, StatusCode::FORBIDDEN, "AuthenticationFailed");
    assert!(body.contains("has passed"), "{body}");
    as_device(
        &f,
        "/devices/up2/files/notifications",
        &build_token(&format!("{HUB_HOST}/devices/up2"), DEVICE_KEY, f.expiry(), None).unwrap(),
        json!({"correlationId": cid, "isSuccess": true}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::FILE_UPLOAD_CORRELATION_EXPIRED);
}
