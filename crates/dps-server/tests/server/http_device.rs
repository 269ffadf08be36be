//! The DPS device API through the router: register and poll with a SAS token, its failures, and
//! TLS client certificates reaching the engine.

use std::sync::Arc;

use crate::common::router::*;
use axum::body::Body;
use dps_proto::codes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

#[tokio::test]
async fn device_register_and_poll_with_sas() {
    let f = fixture().await;
    f.svc(
        Method::PUT,
        "/enrollments/dev-1",
        &[],
        sym_enrollment("dev-1", Some(DEVICE_KEY)),
    )
    .await
    .assert_json(StatusCode::OK);
    let token = f.device_token("dev-1", DEVICE_KEY);
    let auth = [
        ("authorization", token.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];

    let r = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/dev-1/register?{API}"),
            &auth,
            json!({"registrationId": "dev-1"}).to_string(),
        )
        .await;
    let v = r.assert_json(StatusCode::ACCEPTED);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(v["status"], "assigning");
    assert_eq!(v["registrationState"]["registrationId"], "dev-1");
    let op = v["operationId"].as_str().unwrap().to_string();

    // Poll: Node sends `{}` on the GET.
    let r = f
        .call(
            Method::GET,
            &format!("/{SCOPE}/registrations/dev-1/operations/{op}?{API}"),
            &auth,
            "{}",
        )
        .await;
    let v = r.assert_json(StatusCode::OK);
    assert!(r.header("retry-after").is_none());
    assert_eq!(v["status"], "assigned");
    assert_eq!(v["registrationState"]["assignedHub"], HUB_HOST);
    assert_eq!(v["registrationState"]["deviceId"], "dev-1");

    // Status lookup.
    let v = f
        .call(
            Method::POST,
            &format!("/{SCOPE}/registrations/dev-1?{API}"),
            &auth,
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(v["status"], "assigned");

    // The record through the service API, and the device in the hub.
    let v = f
        .svc(Method::GET, "/registrations/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(v["assignedHub"], HUB_HOST);
    let d = f
        .reg(Method::GET, "/devices/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(d["authentication"]["type"], "sas");
    f.svc(Method::DELETE, "/registrations/dev-1", &[], Body::empty())
        .await
        .assert_no_content();

    // Failures: unknown operation, bad body, wrong key, no credential, wrong scope.
    f.call(
        Method::GET,
        &format!("/{SCOPE}/registrations/dev-1/operations/4.nope.nope?{API}"),
        &auth,
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::OPERATION_NOT_FOUND);
    f.call(
        Method::PUT,
        &format!("/{SCOPE}/registrations/dev-1/register?{API}"),
        &auth,
        "{oops",
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    let bad = f.device_token("dev-1", DEVICE_KEY2.replace('H', "G").as_str());
    let m = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/dev-1/register?{API}"),
            &[("authorization", &bad)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("SAS signature"), "{m}");
    let m = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/dev-1/register?{API}"),
            &[],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("no credential"), "{m}");
    f.call(
        Method::PUT,
        &format!("/0ne00000000/registrations/dev-1/register?{API}"),
        &auth,
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::ID_SCOPE_NOT_FOUND);
    // api-version is required on the device API too.
    f.call(
        Method::PUT,
        &format!("/{SCOPE}/registrations/dev-1/register"),
        &auth,
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
}

#[tokio::test]
async fn peer_certificates_reach_the_engine() {
    let f = fixture().await;
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/{SCOPE}/registrations/dev-x/register?{API}"))
        .header("host", DPS_HOST)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(dps_server::http::PeerCertificates(Arc::new(vec![vec![0x30, 0x00]])));
    let resp = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    // The engine judged an X.509 credential, not "no credential".
    assert!(body["message"].as_str().unwrap().contains("X.509"), "{body}");
}
