//! The embedded hub's device API over HTTPS, through the router: telemetry (one message with
//! header properties, and batches as the Node, C and C# SDKs write them), cloud-to-device
//! messages received under a lock, completed, rejected and abandoned by lock token, locks that
//! run out, and the refusals (credentials, another device's token, bad batches, lost locks).

use std::time::Duration;

use crate::common::router::*;
use axum::body::Body;
use dps_hub::FeedbackStatus;
use dps_proto::codes;
use dps_proto::sas::build_token;
use http::{Method, StatusCode};
use serde_json::json;

const HUB_API: &str = "api-version=2021-04-12";

fn token(f: &Fixture, id: &str, key: &str) -> String {
    build_token(&format!("{HUB_HOST}/devices/{id}"), key, f.expiry(), None).unwrap()
}

/// A request of device `id` with its token.
async fn as_device(
    f: &Fixture,
    method: Method,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Resp {
    let mut h = vec![("authorization", token), ("host", HUB_HOST)];
    h.extend_from_slice(headers);
    let sep = if path.contains('?') { '&' } else { '?' };
    f.call(method, &format!("{path}{sep}{HUB_API}"), &h, body).await
}

#[tokio::test]
async fn telemetry_one_message_and_batches() {
    let f = fixture().await;
    let tok = sas_device_token(&f, "h1").await;
    // One message, as the Node SDK sends it: properties as headers, no Content-Type.
    as_device(
        &f,
        Method::POST,
        "/devices/h1/messages/events",
        &tok,
        &[
            ("iothub-to", "/devices/h1/messages/events"),
            ("IoTHub-MessageId", "m-1"),
            ("iothub-correlationid", "c-1"),
            ("iothub-contenttype", "application/json"),
            ("iothub-contentencoding", "utf-8"),
            ("iothub-app-color", "red"),
        ],
        r#"{"t":1}"#,
    )
    .await
    .assert_no_content();
    // A batch: Node's base64 item, C's text item.
    as_device(
        &f,
        Method::POST,
        "/devices/h1/messages/events",
        &tok,
        &[("content-type", "application/vnd.microsoft.iothub.json")],
        r#"[{"body":"AAEC/w==","properties":{"iothub-app-k":"v"}},{"body":"{\"t\":2}","base64Encoded":false,"properties":{"iothub-messageid":"m-3"}}]"#,
    )
    .await
    .assert_no_content();
    let events = f.hub.recent_events(Some("h1"), None, 10).await;
    assert_eq!(events.len(), 3);
    let first = &events[0];
    assert_eq!(&first.body[..], br#"{"t":1}"#);
    assert_eq!(first.system_property("message-id"), Some("m-1"));
    assert_eq!(first.system_property("correlation-id"), Some("c-1"));
    assert_eq!(first.system_property("content-type"), Some("application/json"));
    assert_eq!(first.system_property("iothub-connection-device-id"), Some("h1"));
    assert!(first
        .system_property("iothub-connection-auth-method")
        .is_some_and(|m| m.contains("\"sas\"")));
    assert_eq!(first.properties, [("color".to_string(), "red".to_string())]);
    assert_eq!(&events[1].body[..], [0, 1, 2, 255]);
    assert_eq!(events[1].properties, [("k".to_string(), "v".to_string())]);
    assert_eq!(&events[2].body[..], br#"{"t":2}"#);
    assert_eq!(events[2].system_property("message-id"), Some("m-3"));

    // Bad batches: nothing of them is kept.
    let m = as_device(
        &f,
        Method::POST,
        "/devices/h1/messages/events",
        &tok,
        &[("content-type", "application/vnd.microsoft.iothub.json")],
        r#"[{"body":"aGk="},{"body":"not base64!"}]"#,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert!(m.contains("message 1 of the batch"), "{m}");
    as_device(
        &f,
        Method::POST,
        "/devices/h1/messages/events",
        &tok,
        &[("content-type", "application/vnd.microsoft.iothub.json")],
        r#"[{"body":"aGk=","properties":{"iothub-app-a":"b"c"}}]"#,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert_eq!(f.hub.recent_events(Some("h1"), None, 10).await.len(), 3);
    // Larger than the body limit.
    as_device(
        &f,
        Method::POST,
        "/devices/h1/messages/events",
        &tok,
        &[],
        vec![b'x'; MAX_BODY + 1],
    )
    .await
    .assert_error(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn credentials_are_judged_against_the_path_device_and_this_hub() {
    let f = fixture().await;
    let tok = sas_device_token(&f, "h2").await;
    let other = sas_device_token(&f, "h3").await;
    let post = |token: String, path: &'static str| {
        let f = &f;
        async move { as_device(f, Method::POST, path, &token, &[], "x").await }
    };
    let m = f
        .call(
            Method::POST,
            &format!("/devices/h2/messages/events?{HUB_API}"),
            &[("host", HUB_HOST)],
            "x",
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("missing Authorization"), "{m}");
    // Another device's token, for its own path, is not this device's credential.
    let m = post(other, "/devices/h2/messages/events")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("wrong SAS audience"), "{m}");
    let wrong_key = token(&f, "h2", "d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3JvbmdrZXk=");
    let m = post(wrong_key, "/devices/h2/messages/events")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("wrong key"), "{m}");
    let m = post(tok.clone(), "/devices/ghost/messages/events")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("unknown device"), "{m}");
    // The hub-owner policy token is not a device credential.
    let m = post(f.hub_owner(), "/devices/h2/messages/events")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("audience"), "{m}");
    // A disabled device is refused.
    let dev = json!({"deviceId": "h2", "status": "disabled", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY2}}});
    f.reg(Method::PUT, "/devices/h2", &[("if-match", "*")], dev.to_string())
        .await
        .assert_json(StatusCode::OK);
    // Posting to its own queue is a backend's send (a policy's), not the device's.
    let m = post(tok, "/devices/h2/messages/devicebound")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("skn"), "{m}");
    let tok = token(&f, "h2", DEVICE_KEY);
    let m = as_device(
        &f,
        Method::GET,
        "/devices/h2/messages/deviceBound",
        &tok,
        &[],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("disabled"), "{m}");
    assert!(f.hub.recent_events(None, None, 10).await.is_empty());
}

#[tokio::test]
async fn c2d_received_under_a_lock_then_completed_rejected_or_abandoned() {
    let f = fixture().await;
    let tok = sas_device_token(&f, "h4").await;
    for (mid, ack) in [("one", "full"), ("two", "full"), ("three", "full")] {
        f.hub
            .send_c2d(
                "h4",
                format!("body-{mid}"),
                vec![
                    ("$.mid".into(), mid.into()),
                    ("$.cid".into(), format!("c-{mid}")),
                    ("iothub-ack".into(), ack.into()),
                    ("color".into(), "blue".into()),
                ],
            )
            .await
            .unwrap();
    }
    let receive = || {
        as_device(
            &f,
            Method::GET,
            "/devices/h4/messages/devicebound",
            &tok,
            &[],
            Body::empty(),
        )
    };
    let got = receive().await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"body-one");
    let etag = got.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2, "{etag}");
    let lock = etag.trim_matches('"').to_string();
    assert_eq!(got.header("iothub-messageid"), Some("one"));
    assert_eq!(got.header("iothub-correlationid"), Some("c-one"));
    assert_eq!(got.header("iothub-to"), Some("/devices/h4/messages/deviceBound"));
    assert_eq!(got.header("iothub-ack"), Some("full"));
    assert_eq!(got.header("iothub-app-color"), Some("blue"));
    assert_eq!(got.header("iothub-deliverycount"), Some("0"));
    assert!(got.header("iothub-enqueuedtime").is_some() && got.header("iothub-sequencenumber").is_some());

    // The next GET gets the next message (the first is locked).
    let second = receive().await;
    assert_eq!(&second.body[..], b"body-two");
    let lock2 = second.header("etag").unwrap().trim_matches('"').to_string();
    let third = receive().await;
    assert_eq!(&third.body[..], b"body-three");
    let lock3 = third.header("etag").unwrap().trim_matches('"').to_string();
    receive().await.assert_no_content();

    // Complete (If-Match as Node sends it, unquoted), reject, abandon.
    as_device(
        &f,
        Method::DELETE,
        &format!("/devices/h4/messages/devicebound/{lock}"),
        &tok,
        &[("if-match", &lock)],
        Body::empty(),
    )
    .await
    .assert_no_content();
    as_device(
        &f,
        Method::DELETE,
        &format!("/devices/h4/messages/deviceBound/{lock2}?{HUB_API}&reject"),
        &tok,
        &[],
        Body::empty(),
    )
    .await
    .assert_no_content();
    as_device(
        &f,
        Method::POST,
        &format!("/devices/h4/messages/devicebound/{lock3}/abandon"),
        &tok,
        &[("content-length", "0")],
        Body::empty(),
    )
    .await
    .assert_no_content();
    // A lock settles once.
    let m = as_device(
        &f,
        Method::DELETE,
        &format!("/devices/h4/messages/devicebound/{lock}"),
        &tok,
        &[],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::PRECONDITION_FAILED, codes::MESSAGE_LOCK_LOST);
    assert!(m.contains("settled already"), "{m}");

    // The abandoned one comes again, counted.
    let again = receive().await;
    assert_eq!(&again.body[..], b"body-three");
    assert_eq!(again.header("iothub-deliverycount"), Some("1"));
    let lock4 = again.header("etag").unwrap().trim_matches('"').to_string();

    // Another device cannot settle this device's lock.
    let other = sas_device_token(&f, "h5").await;
    as_device(
        &f,
        Method::DELETE,
        &format!("/devices/h5/messages/devicebound/{lock4}"),
        &other,
        &[],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::PRECONDITION_FAILED, codes::MESSAGE_LOCK_LOST);

    // The lock runs out after a minute: the message is back, uncounted, and the old lock is lost.
    f.clock.advance(chrono::Duration::seconds(61));
    f.hub.sweep();
    let back = receive().await;
    assert_eq!(&back.body[..], b"body-three");
    assert_eq!(back.header("iothub-deliverycount"), Some("1"));
    as_device(
        &f,
        Method::DELETE,
        &format!("/devices/h4/messages/devicebound/{lock4}"),
        &tok,
        &[],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::PRECONDITION_FAILED, codes::MESSAGE_LOCK_LOST);
    let lock5 = back.header("etag").unwrap().to_string();
    // The ETag as C# echoes it, quoted, in the path.
    as_device(
        &f,
        Method::DELETE,
        &format!("/devices/h4/messages/devicebound/{}", lock5.replace('"', "%22")),
        &tok,
        &[],
        Body::empty(),
    )
    .await
    .assert_no_content();

    // Feedback: one Success, one Rejected, then Success for the abandoned one.
    let mut statuses = Vec::new();
    for _ in 0..50 {
        if let Some(batch) = f.hub.receive_feedback(10).await.unwrap() {
            statuses.extend(batch.records.iter().map(|r| (r.original_message_id.clone(), r.status)));
            f.hub.complete_feedback(&batch.lock_token).await.unwrap();
        }
        if statuses.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    statuses.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        statuses,
        [
            ("one".to_string(), FeedbackStatus::Success),
            ("three".to_string(), FeedbackStatus::Success),
            ("two".to_string(), FeedbackStatus::Rejected),
        ]
    );
}
