//! The embedded hub's telemetry stream (`GET /messages/events`, NDJSON) through the router.

use std::time::Duration;

use crate::common::router::*;
use axum::body::Body;
use dps_proto::codes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn next_line(body: &mut Body) -> Value {
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap();
    let data = frame.into_data().unwrap();
    assert_eq!(data.last(), Some(&b'\n'));
    serde_json::from_slice::<Value>(&data).unwrap()
}

#[tokio::test]
async fn monitor_events_stream() {
    let f = fixture().await;
    let (session, _rx) = connect_device(&f, "t1").await;
    let (other, _rx2) = connect_device(&f, "t2").await;
    let now = dps_core::Clock::now(f.clock.as_ref());
    session
        .handle_publish(now, "devices/t1/messages/events/", br#"{"n":1}"#)
        .await
        .unwrap();
    other
        .handle_publish(now, "devices/t2/messages/events/", br#"{"n":2}"#)
        .await
        .unwrap();

    // From the start, filtered to t1: the retained event first, then live ones.
    let req = Request::builder()
        .method(Method::GET)
        .uri("/messages/events?api-version=2021-04-12&from-sequence=0&deviceId=T1")
        .header("host", HUB_HOST)
        .header("authorization", f.hub_owner())
        .body(Body::empty())
        .unwrap();
    let resp = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("content-type").unwrap(), "application/x-ndjson");
    let mut body = resp.into_body();
    let e = next_line(&mut body).await;
    assert_eq!(e["event"]["origin"], "t1");
    assert_eq!(e["event"]["payload"], json!({"n": 1}));
    assert_eq!(e["event"]["annotations"]["x-opt-sequence-number"], 1);
    other
        .handle_publish(now, "devices/t2/messages/events/", br#"{"n":3}"#)
        .await
        .unwrap();
    session
        .handle_publish(now, "devices/t1/messages/events/", br#"{"n":4}"#)
        .await
        .unwrap();
    let e = next_line(&mut body).await;
    assert_eq!(e["event"]["payload"], json!({"n": 4}));
    assert_eq!(e["event"]["annotations"]["x-opt-sequence-number"], 4);
    drop(body);

    // Without from-sequence: only new events.
    let req = Request::builder()
        .method(Method::GET)
        .uri("/messages/events?api-version=2021-04-12")
        .header("host", HUB_HOST)
        .header("authorization", f.hub_owner())
        .body(Body::empty())
        .unwrap();
    let mut body = f.app.clone().oneshot(req).await.unwrap().into_body();
    other
        .handle_publish(now, "devices/t2/messages/events/", b"plain text")
        .await
        .unwrap();
    let e = next_line(&mut body).await;
    assert_eq!(e["event"]["annotations"]["x-opt-sequence-number"], 5);
    assert_eq!(e["event"]["payload"], "plain text");

    // Bad parameter.
    let auth = f.hub_owner();
    f.call(
        Method::GET,
        "/messages/events?api-version=2021-04-12&from-sequence=-1",
        &[("authorization", &auth)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
}
