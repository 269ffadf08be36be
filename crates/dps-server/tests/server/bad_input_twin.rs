//! Bad input against IoT Hub's twin and message limits (issue 9 item 5), over the hub's MQTT
//! device endpoint and its registry REST API on an in-process `dps serve`: each case asserts the
//! exact answer (status and errorCode, or the connection closed as IoT Hub closes it), that
//! nothing was persisted (the twin is unchanged, no telemetry kept, nothing queued), and that a
//! good client is served right after.

use crate::common;
use crate::common::{hub_device, hub_mqtt, hub_mqtt_until, hub_rest, hub_server_with};
use dps_hub::C2dError;
use dps_proto::codes;
use dps_proto::twin_limits::{C2D_MAX_BYTES, D2C_MAX_BYTES, STRING_MAX_BYTES};
use dps_server::RunningServer;
use rumqttc::{AsyncClient, EventLoop, Packet, QoS};
use serde_json::{json, Value};

/// How a bad input reaches the server.
enum Via {
    /// Reported-properties patch over MQTT (raw payload).
    Reported(Vec<u8>),
    /// `PATCH /twins/dev-1`.
    RestPatch(Value),
    /// `PUT /twins/dev-1`.
    RestPut(Value),
    /// Telemetry of `body` bytes with topic properties `props` over MQTT, QoS 1.
    D2c { props: &'static str, body: usize },
    /// `PUT /devices/fresh` (a create).
    RestPutDevice(Value),
    /// A cloud-to-device message of `body` bytes through the hub API (service SDKs send C2D over
    /// AMQP, which this server does not speak; the hub API is what a C2D front end calls).
    C2d { body: usize },
}

/// What the server must answer.
enum Expect {
    /// HTTP status (or `$iothub/twin/res/{status}`), errorCode, and a part of the message.
    Error(u16, u32, &'static str),
    /// The connection is closed without PUBACK, as IoT Hub closes it.
    Disconnect,
    /// The hub API refuses with `C2dError::TooLarge`.
    C2dTooLarge,
}

/// `{"l11": {"l10": ... {"l0": 1}}}`: objects 12 levels deep, one more than IoT Hub allows below
/// a section when the section itself is the outer object, and 11 below it otherwise.
fn deep(levels: usize) -> Value {
    (0..levels).fold(json!(1), |v, i| json!({ format!("l{i}"): v }))
}

/// Nine 4 KB strings: 36 882 bytes in IoT Hub's measure, over the 32 KB section limit (a patch
/// adds them to what is there: `{"temp": 20}` is 12 more, `{"site": "a"}` 5).
fn oversize() -> Value {
    Value::Object(
        (0..9)
            .map(|i| (format!("k{i}"), json!("x".repeat(STRING_MAX_BYTES))))
            .collect(),
    )
}

fn cases() -> Vec<(&'static str, Via, Expect)> {
    use Expect::*;
    use Via::*;
    let bytes = |v: Value| v.to_string().into_bytes();
    let arg = |m| Error(400, codes::HUB_ARGUMENT_INVALID, m);
    vec![
        (
            "oversize reported (MQTT)",
            Reported(bytes(oversize())),
            arg("properties.reported would be 36894 bytes"),
        ),
        (
            "too deep reported (MQTT)",
            Reported(bytes(deep(12))),
            arg("nested 11 levels deep"),
        ),
        (
            "key with '.' (MQTT)",
            Reported(bytes(json!({"a.b": 1}))),
            arg("contains '.'"),
        ),
        (
            "key with '$' (MQTT)",
            Reported(bytes(json!({"$x": 1, "ok": 2}))),
            arg("contains '$'"),
        ),
        (
            "reported not an object (MQTT)",
            Reported(b"[1, 2]".to_vec()),
            arg("must be a JSON object"),
        ),
        (
            "string over 4 KB (MQTT)",
            Reported(bytes(json!({"s": "x".repeat(4097)}))),
            arg("properties.reported.s is 4097 bytes"),
        ),
        (
            "null in an array (MQTT)",
            Reported(bytes(json!({"a": [1, null]}))),
            arg("contains null"),
        ),
        (
            "oversize tags (REST PATCH)",
            RestPatch(json!({"tags": oversize()})),
            arg("tags would be 36887 bytes"),
        ),
        (
            "oversize desired (REST PUT)",
            RestPut(json!({"properties": {"desired": oversize()}})),
            arg("properties.desired would be 36882 bytes"),
        ),
        (
            "too deep desired (REST PATCH)",
            RestPatch(json!({"properties": {"desired": deep(12)}})),
            arg("nested 11 levels deep"),
        ),
        (
            "key with space (REST PUT)",
            RestPut(json!({"tags": {"a b": 1}})),
            arg("contains ' '"),
        ),
        (
            "tags a string (REST PATCH)",
            RestPatch(json!({"tags": "hello"})),
            arg("tags must be a JSON object, got a string"),
        ),
        (
            "desired an array (REST PUT)",
            RestPut(json!({"properties": {"desired": [1]}})),
            arg("properties.desired must be a JSON object, got an array"),
        ),
        (
            "integer beyond 2^52 (REST PATCH)",
            RestPatch(json!({"properties": {"desired": {"n": 4_503_599_627_370_496i64}}})),
            arg("out of range"),
        ),
        (
            "D2C over 256 KB with properties (MQTT)",
            D2c {
                props: "k=v",
                body: D2C_MAX_BYTES,
            },
            Disconnect,
        ),
        (
            "D2C over the packet limit (MQTT)",
            D2c {
                props: "",
                body: D2C_MAX_BYTES + 70 * 1024,
            },
            Disconnect,
        ),
        ("C2D over 64 KB", C2d { body: C2D_MAX_BYTES }, C2dTooLarge),
        (
            "statusReason over 128 characters (REST PUT device)",
            RestPutDevice(json!({"deviceId": "fresh", "statusReason": "r".repeat(129)})),
            Error(400, codes::ARGUMENT_INVALID, "statusReason is 129 characters long"),
        ),
    ]
}

/// The persisted parts of a twin (not connection state or activity times).
async fn persisted_twin(s: &RunningServer, id: &str) -> Value {
    let (status, t) = hub_rest(s, "GET", &format!("/twins/{id}"), None).await;
    assert_eq!(status, 200, "{t}");
    json!({"etag": t["etag"], "version": t["version"], "tags": t["tags"], "properties": t["properties"]})
}

async fn subscribed(s: &RunningServer, id: &str) -> (AsyncClient, EventLoop) {
    let (c, mut ev) = hub_mqtt(s, id).await;
    c.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await.unwrap();
    c.subscribe(format!("devices/{id}/messages/devicebound/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    // Two SUBACKs.
    for _ in 0..2 {
        hub_mqtt_until(&mut ev, |p| matches!(p, Packet::SubAck(_)).then_some(()))
            .await
            .unwrap();
    }
    (c, ev)
}

/// Publishes a reported patch with `$rid={rid}` and returns the response topic and JSON body.
async fn reported(c: &AsyncClient, ev: &mut EventLoop, rid: u32, body: Vec<u8>) -> (String, Value) {
    c.publish(
        format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
        QoS::AtMostOnce,
        false,
        body,
    )
    .await
    .unwrap();
    let prefix = "$iothub/twin/res/";
    let rid = format!("$rid={rid}");
    hub_mqtt_until(ev, |p| match p {
        Packet::Publish(p) if p.topic.starts_with(prefix) && p.topic.contains(&rid) => Some((
            p.topic.clone(),
            serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
        )),
        _ => None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn twin_and_message_limits_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = hub_server_with("127.0.13.1", dir.path(), |_| {}).await;
    hub_device(&s, "dev-1").await;
    hub_device(&s, "good").await;
    let (mut bad, mut bad_ev) = subscribed(&s, "dev-1").await;
    let (good, mut good_ev) = subscribed(&s, "good").await;
    // Something in every section, so "unchanged" means something.
    let (status, _) = hub_rest(
        &s,
        "PATCH",
        "/twins/dev-1",
        Some(&json!({"tags": {"site": "a"}, "properties": {"desired": {"fw": "1.0"}}})),
    )
    .await;
    assert_eq!(status, 200);
    let (topic, _) = reported(&bad, &mut bad_ev, 1, br#"{"temp": 20}"#.to_vec()).await;
    assert!(topic.starts_with("$iothub/twin/res/204/"), "{topic}");

    let cases = cases();
    assert!(cases.len() >= 10);
    for (i, (name, via, expect)) in cases.into_iter().enumerate() {
        let rid = 100 + i as u32;
        let before = persisted_twin(&s, "dev-1").await;
        let events_before = common::hub(&s).recent_events(None, None, 1000).await.len();
        match (via, expect) {
            (Via::Reported(body), Expect::Error(status, code, msg)) => {
                let (topic, err) = reported(&bad, &mut bad_ev, rid, body).await;
                assert_eq!(topic, format!("$iothub/twin/res/{status}/?$rid={rid}"), "{name}");
                assert_eq!(err["errorCode"], code, "{name}: {err}");
                assert!(err["message"].as_str().unwrap().contains(msg), "{name}: {err}");
            }
            (Via::RestPatch(body), Expect::Error(status, code, msg))
            | (Via::RestPut(body), Expect::Error(status, code, msg)) => {
                let (got, err) = hub_rest(&s, rest_method(name), "/twins/dev-1", Some(&body)).await;
                assert_eq!(got, status, "{name}: {err}");
                assert_eq!(err["errorCode"], code, "{name}: {err}");
                assert!(err["message"].as_str().unwrap().contains(msg), "{name}: {err}");
            }
            (Via::RestPutDevice(body), Expect::Error(status, code, msg)) => {
                let (got, err) = hub_rest(&s, "PUT", "/devices/fresh", Some(&body)).await;
                assert_eq!(got, status, "{name}: {err}");
                assert_eq!(err["errorCode"], code, "{name}: {err}");
                assert!(err["message"].as_str().unwrap().contains(msg), "{name}: {err}");
                let (got, _) = hub_rest(&s, "GET", "/devices/fresh", None).await;
                assert_eq!(got, 404, "{name}: the device was created");
            }
            (Via::D2c { props, body }, Expect::Disconnect) => {
                bad.publish(
                    format!("devices/dev-1/messages/events/{props}"),
                    QoS::AtLeastOnce,
                    false,
                    vec![b'x'; body],
                )
                .await
                .unwrap();
                let end = hub_mqtt_until(&mut bad_ev, |p| match p {
                    Packet::PubAck(_) => panic!("{name}: an oversize message was acknowledged"),
                    _ => None::<()>,
                })
                .await;
                assert!(end.is_err(), "{name}: the connection must close");
                (bad, bad_ev) = subscribed(&s, "dev-1").await;
            }
            (Via::C2d { body }, Expect::C2dTooLarge) => {
                let err = common::hub(&s)
                    .send_c2d("dev-1", vec![b'x'; body], vec![])
                    .await
                    .unwrap_err();
                assert!(
                    matches!(err, C2dError::TooLarge { limit, size, .. } if limit == C2D_MAX_BYTES && size > C2D_MAX_BYTES),
                    "{name}: {err}"
                );
                // Nothing was sent: the next message the device gets is the good one.
                common::hub(&s).send_c2d("dev-1", &b"small"[..], vec![]).await.unwrap();
                let got = hub_mqtt_until(&mut bad_ev, |p| match p {
                    Packet::Publish(p) if p.topic.starts_with("devices/dev-1/messages/devicebound/") => {
                        Some(p.payload.clone())
                    }
                    _ => None,
                })
                .await
                .unwrap();
                assert_eq!(&got[..], b"small", "{name}");
            }
            _ => unreachable!("{name}: no such combination"),
        }
        // Nothing persisted.
        assert_eq!(persisted_twin(&s, "dev-1").await, before, "{name}: the twin changed");
        assert_eq!(
            common::hub(&s).recent_events(None, None, 1000).await.len(),
            events_before,
            "{name}: telemetry was kept"
        );
        assert_eq!(
            common::hub(&s)
                .get_device("dev-1")
                .await
                .unwrap()
                .cloud_to_device_message_count,
            0,
            "{name}: a message was queued"
        );
        // A good client is served right after, over MQTT and REST.
        let (topic, _) = reported(&good, &mut good_ev, rid, json!({ "case": i }).to_string().into_bytes()).await;
        assert!(
            topic.starts_with(&format!("$iothub/twin/res/204/?$rid={rid}")),
            "{name}: {topic}"
        );
        let (status, t) = hub_rest(&s, "GET", "/twins/good", None).await;
        assert_eq!(
            (status, &t["properties"]["reported"]["case"]),
            (200, &json!(i)),
            "{name}"
        );
    }
    // The device that sent bad input is still served too.
    let (topic, _) = reported(&bad, &mut bad_ev, 999, br#"{"temp": 21}"#.to_vec()).await;
    assert!(topic.starts_with("$iothub/twin/res/204/?$rid=999"), "{topic}");
    s.shutdown().await;
}

/// Cases named "(REST PUT)" replace the twin; the others patch it.
fn rest_method(name: &str) -> &'static str {
    if name.contains("REST PUT") {
        "PUT"
    } else {
        "PATCH"
    }
}
