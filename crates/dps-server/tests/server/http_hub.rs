//! The embedded hub's registry API through the router: devices, twins, query paging, statistics,
//! authorization, scoped tokens and direct methods to a connected device.

use std::time::Duration;

use crate::common::router::*;
use axum::body::Body;
use dps_proto::codes;
use dps_proto::sas::build_token;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

#[tokio::test]
async fn hub_registry_devices_twins_query() {
    let f = fixture().await;
    // Create (200, never 201) with keys.
    let dev = json!({"deviceId": "d1", "status": "enabled", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY2}}});
    let d = f
        .reg(
            Method::PUT,
            "/devices/d1",
            &[("content-type", "application/json; charset=utf-8")],
            dev.to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    let etag = d["etag"].as_str().unwrap().to_string();
    for id in ["d2", "d3"] {
        f.reg(
            Method::PUT,
            &format!("/devices/{id}"),
            &[],
            json!({"deviceId": id}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    }
    // Body/path mismatch.
    f.reg(
        Method::PUT,
        "/devices/d9",
        &[],
        json!({"deviceId": "other"}).to_string(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    // Update with a stale quoted etag: 412.
    f.reg(
        Method::PUT,
        "/devices/d1",
        &[("if-match", "\"stale\"")],
        dev.to_string(),
    )
    .await
    .assert_error(StatusCode::PRECONDITION_FAILED, codes::DEVICE_ETAG_MISMATCH);
    f.reg(
        Method::PUT,
        "/devices/d1",
        &[("if-match", &format!("\"{etag}\""))],
        dev.to_string(),
    )
    .await
    .assert_json(StatusCode::OK);

    let list = f
        .reg(Method::GET, "/devices?top=2", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    f.reg(Method::GET, "/devices?top=x", &[], Body::empty())
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);

    // Query paging.
    let q = json!({"query": "SELECT * FROM devices"}).to_string();
    let p1 = f
        .reg(
            Method::POST,
            "/devices/query",
            &[("x-ms-max-item-count", "2")],
            q.clone(),
        )
        .await;
    assert_eq!(p1.assert_json(StatusCode::OK).as_array().unwrap().len(), 2);
    assert_eq!(p1.header("x-ms-item-type"), Some("Twin"));
    let cont = p1.header("x-ms-continuation").unwrap().to_string();
    let p2 = f
        .reg(
            Method::POST,
            "/devices/query",
            &[("x-ms-max-item-count", "2"), ("x-ms-continuation", &cont)],
            q,
        )
        .await;
    let items = p2.assert_json(StatusCode::OK);
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["deviceId"], "d3");
    assert!(p2.header("x-ms-continuation").is_none());

    // Twins: GET, PATCH with the quoted etag, PUT.
    let t = f
        .reg(Method::GET, "/twins/d1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    let tetag = format!("\"{}\"", t["etag"].as_str().unwrap());
    let patch = json!({"properties": {"desired": {"temp": 21}}, "tags": {"site": "a"}});
    let t = f
        .reg(Method::PATCH, "/twins/d1", &[("if-match", &tetag)], patch.to_string())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(t["properties"]["desired"]["temp"], 21);
    assert_eq!(t["tags"]["site"], "a");
    f.reg(Method::PATCH, "/twins/d1", &[("if-match", &tetag)], patch.to_string())
        .await
        .assert_error(StatusCode::PRECONDITION_FAILED, codes::DEVICE_ETAG_MISMATCH);
    let t = f
        .reg(
            Method::PUT,
            "/twins/d1",
            &[("if-match", "*")],
            json!({"properties": {"desired": {"x": 1}}}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert!(t["properties"]["desired"].get("temp").is_none());
    f.reg(Method::GET, "/twins/nobody", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);

    // Statistics.
    let s = f
        .reg(Method::GET, "/statistics/devices", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(s["totalDeviceCount"], 3);

    // Delete: 204; then 404.
    f.reg(Method::DELETE, "/devices/d2", &[("if-match", "*")], Body::empty())
        .await
        .assert_no_content();
    f.reg(Method::GET, "/devices/d2", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    f.reg(Method::DELETE, "/devices/d2", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
}

#[tokio::test]
async fn hub_auth() {
    let f = fixture().await;
    let m = f
        .call(Method::GET, "/devices/d1?api-version=2021-04-12", &[], Body::empty())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("missing Authorization"), "{m}");
    // A DPS token is not a hub token.
    f.call(
        Method::GET,
        "/devices/d1?api-version=2021-04-12",
        &[("authorization", &f.owner())],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    let reader = build_token(HUB_HOST, HUB_READER_KEY, f.expiry(), Some("registryRead")).unwrap();
    f.call(
        Method::GET,
        "/devices/d1?api-version=2021-04-12",
        &[("authorization", &reader)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    let m = f
        .call(
            Method::PUT,
            "/devices/d1?api-version=2021-04-12",
            &[("authorization", &reader)],
            json!({"deviceId": "d1"}).to_string(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
    assert!(m.contains("RegistryWrite"), "{m}");
    // Twin reads accept RegistryRead; methods need ServiceConnect.
    f.call(
        Method::GET,
        "/twins/d1?api-version=2021-04-12",
        &[("authorization", &reader)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    let m = f
        .call(
            Method::POST,
            "/twins/d1/methods?api-version=2021-04-12",
            &[("authorization", &reader)],
            json!({"methodName": "m"}).to_string(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
    assert!(m.contains("ServiceConnect"), "{m}");
    // The audience must be the hub's own host name: a token for another name the client put
    // in its Host header (here the DPS host, which this server also answers to) is refused.
    let by_host_header = build_token(DPS_HOST, HUB_OWNER_KEY, f.expiry(), Some("iothubowner")).unwrap();
    let m = f
        .call(
            Method::GET,
            "/devices/d1?api-version=2021-04-12",
            &[("authorization", &by_host_header)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(
        m.contains(&format!("this server's host name ({HUB_HOST}, {HUB_HOST}:443)")),
        "{m}"
    );
}

#[tokio::test]
async fn direct_methods() {
    let f = fixture().await;
    let body = json!({"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 5}).to_string();
    f.reg(Method::POST, "/twins/ghost/methods", &[], body.clone())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    // Exists but offline.
    f.reg(Method::PUT, "/devices/off", &[], json!({"deviceId": "off"}).to_string())
        .await
        .assert_json(StatusCode::OK);
    let m = f
        .reg(Method::POST, "/twins/off/methods", &[], body.clone())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_ONLINE);
    assert!(m.contains("not online"), "{m}");

    let (session, mut rx) = connect_device(&f, "m1").await;
    assert_eq!(session.subscribe("$iothub/methods/POST/#", 0), Some(0));
    let call = {
        let f_app = f.app.clone();
        let auth = f.hub_owner();
        let body = body.clone();
        tokio::spawn(async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/twins/m1/methods?api-version=2021-04-12")
                .header("host", HUB_HOST)
                .header("authorization", auth)
                .body(Body::from(body))
                .unwrap();
            let resp = f_app.oneshot(req).await.unwrap();
            let status = resp.status();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.topic.starts_with("$iothub/methods/POST/reboot/?$rid="),
        "{}",
        out.topic
    );
    let rid = out.topic.rsplit('=').next().unwrap().to_string();
    let now = dps_core::Clock::now(f.clock.as_ref());
    session
        .handle_publish(now, &format!("$iothub/methods/res/201/?$rid={rid}"), br#"{"ok":true}"#)
        .await
        .unwrap();
    let (status, bytes) = call.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        json!({"status": 201, "payload": {"ok": true}})
    );
}

/// Issue 9, item 1, on the hub: `sr=hub/devices/d` with that Host header listed every device.
#[tokio::test]
async fn scoped_hub_token_with_forged_host_lists_nothing() {
    let f = fixture().await;
    for id in ["d", "e"] {
        f.reg(
            Method::PUT,
            &format!("/devices/{id}"),
            &[],
            json!({"deviceId": id}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    }
    let scoped = build_token(
        &format!("{HUB_HOST}/devices/d"),
        HUB_OWNER_KEY,
        f.expiry(),
        Some("iothubowner"),
    )
    .unwrap();
    let q = "api-version=2021-04-12";
    let forged_host = format!("{HUB_HOST}/devices/d");
    f.call(
        Method::GET,
        &format!("/devices?{q}"),
        &[("authorization", &scoped), ("host", &forged_host)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    for (method, path) in [
        (Method::GET, "/devices"),
        (Method::POST, "/devices/query"),
        (Method::GET, "/devices/e"),
        (Method::DELETE, "/devices/e"),
        (Method::GET, "/twins/e"),
        (Method::GET, "/statistics/devices"),
    ] {
        let m = f
            .call(
                method.clone(),
                &format!("{path}?{q}"),
                &[("authorization", &scoped), ("host", HUB_HOST), ("if-match", "*")],
                Body::empty(),
            )
            .await
            .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
        assert!(m.contains("does not cover"), "{method} {path}: {m}");
    }
    // Nothing changed, and the token reaches its own device.
    assert_eq!(f.hub.list_devices(None, 0).await.unwrap().len(), 2);
    let d = f
        .call(
            Method::GET,
            &format!("/devices/D?{q}"),
            &[("authorization", &scoped), ("host", HUB_HOST)],
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(d["deviceId"], "d");
}

/// The built-in endpoint's consumer groups: listed with a read right, made and deleted with
/// RegistryWrite; creating is idempotent; `$Default` is built in and stays; bad names and
/// missing groups get clear errors.
#[tokio::test]
async fn consumer_groups() {
    let f = fixture().await;
    let groups = "/eventHubEndpoints/events/consumerGroups";
    let names = |v: &Value| -> Vec<String> {
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect()
    };
    let listed = f
        .reg(Method::GET, groups, &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(names(&listed), ["$Default"]);
    assert_eq!(
        listed["value"][0]["type"],
        "Microsoft.Devices/IotHubs/EventHubEndpoints/ConsumerGroups"
    );

    let created = f
        .reg(Method::PUT, &format!("{groups}/Analytics"), &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(created["name"], "Analytics");
    assert_eq!(created["id"], "/eventHubEndpoints/events/ConsumerGroups/Analytics");
    let when = created["properties"]["created"].as_str().unwrap().to_string();
    // Again, in another case: the same group, unchanged.
    let again = f
        .reg(Method::PUT, &format!("{groups}/analytics"), &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(
        (again["name"].as_str(), again["properties"]["created"].as_str()),
        (Some("Analytics"), Some(when.as_str()))
    );
    let shown = f
        .reg(Method::GET, &format!("{groups}/ANALYTICS"), &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(shown, created);

    // A reader lists and shows, but cannot make or delete.
    let reader = build_token(HUB_HOST, HUB_READER_KEY, f.expiry(), Some("registryRead")).unwrap();
    let as_reader = |method: Method, path: String| {
        let reader = reader.clone();
        let f = &f;
        async move {
            f.call(
                method,
                &format!("{path}?api-version=2021-04-12"),
                &[("authorization", &reader)],
                Body::empty(),
            )
            .await
        }
    };
    let listed = as_reader(Method::GET, groups.to_string())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(names(&listed), ["$Default", "Analytics"]);
    let m = as_reader(Method::PUT, format!("{groups}/other"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
    assert!(m.contains("RegistryWrite"), "{m}");
    as_reader(Method::DELETE, format!("{groups}/Analytics"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);

    // Bad names, $Default, missing groups.
    let m = f
        .reg(Method::PUT, &format!("{groups}/-bad"), &[], Body::empty())
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::HUB_ARGUMENT_INVALID);
    assert!(m.contains("not a consumer group name"), "{m}");
    let long = "g".repeat(51);
    f.reg(Method::PUT, &format!("{groups}/{long}"), &[], Body::empty())
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::HUB_ARGUMENT_INVALID);
    let m = f
        .reg(Method::DELETE, &format!("{groups}/$Default"), &[], Body::empty())
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::HUB_ARGUMENT_INVALID);
    assert!(m.contains("$Default"), "{m}");
    let m = f
        .reg(Method::DELETE, &format!("{groups}/ghost"), &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::CONSUMER_GROUP_NOT_FOUND);
    assert!(m.contains("ghost"), "{m}");

    f.reg(Method::DELETE, &format!("{groups}/analytics"), &[], Body::empty())
        .await
        .assert_no_content();
    f.reg(Method::GET, &format!("{groups}/Analytics"), &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::CONSUMER_GROUP_NOT_FOUND);

    // At most 20, $Default included.
    for i in 0..19 {
        f.reg(Method::PUT, &format!("{groups}/g{i}"), &[], Body::empty())
            .await
            .assert_json(StatusCode::OK);
    }
    let m = f
        .reg(Method::PUT, &format!("{groups}/one-too-many"), &[], Body::empty())
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::HUB_ARGUMENT_INVALID);
    assert!(m.contains("20"), "{m}");
}
