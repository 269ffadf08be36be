//! What every API of the HTTPS port shares: api-version checks, unknown paths and methods, body
//! size limits, host names as SAS audiences, JSON type errors, and keep-alive on one connection.

use std::time::Duration;

use crate::common::router::*;
use axum::body::Body;
use bytes::Bytes;
use dps_proto::codes;
use dps_proto::sas::build_token;
use http::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn api_version_required_404_405_413() {
    let f = fixture().await;
    let auth = f.owner();
    let m = f
        .call(
            Method::GET,
            "/enrollments/d",
            &[("authorization", &auth)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    assert!(m.contains("api-version"), "{m}");
    // Any value is accepted.
    f.call(
        Method::GET,
        "/enrollments/d?api-version=2017-11-15",
        &[("authorization", &auth)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);

    let m = f
        .call(Method::GET, "/nowhere/at/all?x=1", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::PATH_NOT_FOUND);
    assert!(m.contains("GET /nowhere/at/all"), "{m}");
    let r = f
        .call(
            Method::PATCH,
            &format!("/enrollments/d?{API}"),
            &[("authorization", &auth)],
            Body::empty(),
        )
        .await;
    let m = r.assert_error(StatusCode::METHOD_NOT_ALLOWED, codes::METHOD_NOT_ALLOWED);
    assert!(m.contains("PATCH"), "{m}");
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));

    // Too large, announced by Content-Length.
    let big = "x".repeat(MAX_BODY + 1);
    f.svc(Method::PUT, "/enrollments/d", &[], big.clone())
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE);
    // Too large, streamed without a length.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..=MAX_BODY / 1024)
        .map(|_| Ok(Bytes::from(vec![b' '; 1024])))
        .collect();
    let streamed = Body::from_stream(futures_util::stream::iter(chunks));
    f.svc(Method::PUT, "/enrollments/d", &[], streamed)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE);
    // Device API too.
    let path = format!("/{SCOPE}/registrations/d/register?{API}");
    f.call(Method::PUT, &path, &[], big)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE);
}

/// Reads one HTTP/1.1 response with a Content-Length from `io`; returns (head, body).
async fn read_response(io: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn serve_connection_keeps_the_connection_alive() {
    use tokio::io::AsyncWriteExt;
    let f = fixture().await;
    // The listener path: HttpApp::serve_connection over a stream (the default 30 s request
    // timeout, as `dps serve` runs).
    assert_eq!(f.services.config.limits.request_timeout(), Duration::from_secs(30));
    let app = dps_server::http::HttpApp::new(f.services.clone());
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let server_task = tokio::spawn(async move { app.serve_connection(server, Vec::new()).await });
    let mut buf = Vec::new();
    // Three requests on one connection; GETs with a `{}` body (Node's poll) do not break framing.
    for path in [
        format!("/enrollments/x?{API}"),
        format!("/enrollments/x/?{API}"),
        format!("/{SCOPE}/registrations/x/operations/1?{API}"),
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {DPS_HOST}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
            f.owner()
        );
        client.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut client, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 40"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json; charset=utf-8"),
            "{head}"
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["errorCode"].is_u64(), "{v}");
    }
    client.shutdown().await.unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), server_task)
        .await
        .unwrap()
        .unwrap();
}

/// The hub's own name works with and without the server's port, as SDKs send it.
#[tokio::test]
async fn own_host_names_with_port_are_audiences() {
    let f = fixture().await;
    let with_port = build_token(
        &format!("{HUB_HOST}:443"),
        HUB_OWNER_KEY,
        f.expiry(),
        Some("iothubowner"),
    )
    .unwrap();
    f.call(
        Method::GET,
        "/devices?api-version=2021-04-12",
        &[("authorization", &with_port), ("host", &format!("{HUB_HOST}:443"))],
        Body::empty(),
    )
    .await
    .assert_json(StatusCode::OK);
    let dps_with_port = build_token(
        &format!("{DPS_HOST}:443"),
        OWNER_KEY,
        f.expiry(),
        Some("provisioningserviceowner"),
    )
    .unwrap();
    f.call(
        Method::POST,
        &format!("/enrollments/query?{API}"),
        &[("authorization", &dps_with_port), ("host", DPS_HOST)],
        Body::empty(),
    )
    .await
    .assert_json(StatusCode::OK);
    // Another port is another server.
    let other_port = build_token(
        &format!("{DPS_HOST}:8443"),
        OWNER_KEY,
        f.expiry(),
        Some("provisioningserviceowner"),
    )
    .unwrap();
    f.call(
        Method::POST,
        &format!("/enrollments/query?{API}"),
        &[("authorization", &other_port)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
}

/// Issue 9, item 6: every API refuses a missing, unknown or doubled api-version, naming the
/// supported ones.
#[tokio::test]
async fn unsupported_api_versions_are_refused_everywhere() {
    let f = fixture().await;
    let owner = f.owner();
    let hub = f.hub_owner();
    let dev = f.device_token("d", DEVICE_KEY);
    let cases: [(Method, &str, &str, &str); 3] = [
        (Method::GET, "/enrollments/d", owner.as_str(), "2021-10-01"),
        (Method::GET, "/devices/d", hub.as_str(), "2021-04-12"),
        (
            Method::PUT,
            "/0ne00ABCDEF/registrations/d/register",
            dev.as_str(),
            "2019-03-31",
        ),
    ];
    for (method, path, auth, good) in cases {
        for (query, says) in [
            ("", "the api-version query parameter is required"),
            ("?api-version=", "the api-version query parameter is required"),
            ("?api-version=garbage", "api-version 'garbage' is not supported"),
            ("?api-version=1999-01-01", "api-version '1999-01-01' is not supported"),
            ("?api-version=2021-10-01&api-version=1999-01-01", "given twice"),
        ] {
            let m = f
                .call(
                    method.clone(),
                    &format!("{path}{query}"),
                    &[("authorization", auth)],
                    Body::empty(),
                )
                .await
                .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
            assert!(m.contains(says), "{path}{query}: {m}");
            if !says.contains("twice") {
                assert!(
                    m.contains("supported versions: ") && m.contains(good),
                    "{path}{query}: {m}"
                );
            }
        }
    }
    // Case and repetition of the same value are fine.
    f.call(
        Method::GET,
        "/devices/d?api-version=2021-04-12&API-VERSION=2021-04-12",
        &[("authorization", &hub)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    // The device API lists the device versions, not the service ones.
    let m = f
        .call(
            Method::PUT,
            "/0ne00ABCDEF/registrations/d/register?api-version=2021-04-12",
            &[("authorization", &dev)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    assert!(m.contains("2021-06-01"), "{m}");
}

/// Issue 9, item 8: wrong JSON types are 400s that name the field, never silent defaults.
#[tokio::test]
async fn wrong_json_types_name_the_field() {
    let f = fixture().await;
    for (path, body, field) in [
        (
            "/enrollments/a",
            json!({"registrationId": "a", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": 5}}}),
            "attestation.symmetricKey.primaryKey",
        ),
        (
            "/enrollments/a",
            json!({"registrationId": "a", "attestation": {"type": "symmetricKey"}, "capabilities": {"iotEdge": "yes"}}),
            "capabilities.iotEdge",
        ),
        (
            "/enrollments/a",
            json!({"registrationId": "a", "attestation": {"type": "symmetricKey"}, "createdDateTimeUtc": 7}),
            "createdDateTimeUtc",
        ),
        (
            "/enrollmentGroups/g",
            json!({"enrollmentGroupId": "g", "attestation": {"type": "symmetricKey"}, "iotHubs": "h"}),
            "iotHubs",
        ),
    ] {
        let m = f
            .svc(Method::PUT, path, &[], body.to_string())
            .await
            .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
        assert!(m.contains(&format!("field '{field}'")), "{m}");
    }
    let m = f
        .reg(
            Method::PUT,
            "/devices/d",
            &[],
            json!({"deviceId": "d", "status": 1}).to_string(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert!(m.contains("field 'status'"), "{m}");
    let m = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/d/register?{API}"),
            &[("authorization", &f.device_token("d", DEVICE_KEY))],
            json!({"registrationId": "d", "payload": null, "tpm": {"endorsementKey": 1}}).to_string(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert!(m.contains("field 'tpm.endorsementKey'"), "{m}");
    // Nothing was written.
    f.svc(Method::GET, "/enrollments/a", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);
    assert!(f.hub.list_devices(None, 0).await.unwrap().is_empty());
}
