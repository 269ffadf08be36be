//! Device authentication, sessions, direct methods, C2D and telemetry.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dps_core::{Clock, FakeClock};
use dps_hub::{
    AuthError, AuthMethod, C2dError, C2dOutcome, CredentialSlot, DeviceIdentity, Hub, HubConfig, MethodError, Outbound,
    SessionError,
};
use dps_proto::hub_mqtt::HubUsername;
use dps_proto::model::hub::{AuthenticationMechanism, Device, SymmetricKey, Twin, TwinProperties, X509Thumbprint};
use dps_proto::sas::{build_token, encode_component, sign};
use serde_json::{json, Value};
use tokio::sync::mpsc::error::TryRecvError;

const HOST: &str = "hub.example.test";
const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
const NOW: u64 = 1_750_000_000;
const SHA1: &str = "0123456789ABCDEF0123456789ABCDEF01234567";
const SHA256: &str = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW as i64, 0).unwrap()
}

fn username(device: &str) -> HubUsername {
    HubUsername::parse(&format!(
        "{HOST}/{device}/?api-version=2021-04-12&DeviceClientType=test"
    ))
    .unwrap()
}

async fn hub_with_device(id: &str) -> Hub {
    // The hub's clock and the `now` the tests hand to sessions agree, as the server's do.
    let hub = Hub::open_with_clock(HubConfig::in_memory(HOST), Arc::new(FakeClock::at(now()))).unwrap();
    add_device(&hub, id).await;
    hub
}

/// Creates `id` with the SAS keys [`login`] signs with.
async fn add_device(hub: &Hub, id: &str) {
    hub.put_device(
        Device {
            device_id: id.into(),
            authentication: Some(AuthenticationMechanism {
                kind: "sas".into(),
                symmetric_key: Some(SymmetricKey {
                    primary_key: Some(KEY1.into()),
                    secondary_key: Some(KEY2.into()),
                }),
                x509_thumbprint: None,
            }),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
}

fn py_token(device: &str, key: &str, expiry: u64) -> String {
    build_token(&format!("{HOST}/devices/{device}"), key, expiry, None).unwrap()
}

/// The lock token a cloud-to-device message was delivered under.
fn lock_of(m: &Outbound) -> String {
    match &m.kind {
        dps_hub::OutboundKind::C2d { lock_token, .. } => lock_token.clone(),
        other => panic!("not a cloud-to-device message: {other:?}"),
    }
}

async fn login(hub: &Hub, device: &str) -> DeviceIdentity {
    hub.authenticate(
        NOW,
        &username(device),
        Some(py_token(device, KEY1, NOW + 3600).as_bytes()),
        None,
    )
    .await
    .unwrap()
}

fn reason(e: AuthError) -> String {
    match e {
        AuthError::NotAuthorized { reason, .. } => reason,
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
}

fn desired_patch(v: Value) -> Twin {
    Twin {
        properties: Some(TwinProperties {
            desired: Some(v.as_object().unwrap().clone()),
            reported: None,
        }),
        ..Default::default()
    }
}

fn json_of(o: &Outbound) -> Value {
    serde_json::from_slice(&o.payload).unwrap()
}

#[tokio::test]
async fn sas_authentication_in_every_sdk_encoding() {
    let hub = hub_with_device("dev1").await;

    // Python style: sr percent-encoded.
    let id = hub
        .authenticate(
            NOW,
            &username("dev1"),
            Some(py_token("dev1", KEY1, NOW + 60).as_bytes()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(id.device_id(), "dev1");
    assert_eq!(id.method(), AuthMethod::Sas(CredentialSlot::Primary));
    let id = hub
        .authenticate(
            NOW,
            &username("dev1"),
            Some(py_token("dev1", KEY2, NOW + 60).as_bytes()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(id.method(), AuthMethod::Sas(CredentialSlot::Secondary));

    // C style: raw sr, lower-case hex in sig, empty skn (older c-utility).
    let sr = format!("{HOST}/devices/dev1");
    let sig = encode_component(&sign(KEY1, &sr, NOW + 60).unwrap())
        .replace("%2B", "%2b")
        .replace("%2F", "%2f")
        .replace("%3D", "%3d");
    let c_token = format!("SharedAccessSignature sr={sr}&sig={sig}&se={}&skn=", NOW + 60);
    let id = hub
        .authenticate(NOW, &username("dev1"), Some(c_token.as_bytes()), None)
        .await
        .unwrap();
    assert_eq!(id.method(), AuthMethod::Sas(CredentialSlot::Primary));
    // Host name and device id are compared case-insensitively.
    let u = HubUsername::parse("HUB.example.test/DEV1/?api-version=2019-10-01").unwrap();
    let id = hub
        .authenticate(NOW, &u, Some(py_token("DEV1", KEY1, NOW + 60).as_bytes()), None)
        .await
        .unwrap();
    assert_eq!((id.device_id(), id.client_device_id()), ("dev1", "DEV1"));
}

#[tokio::test]
async fn sas_refusals_say_what_was_wrong() {
    let hub = hub_with_device("dev1").await;
    hub.put_device(
        Device {
            device_id: "dev2".into(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();

    let expired = py_token("dev1", KEY1, NOW - 3600);
    let r = reason(
        hub.authenticate(NOW, &username("dev1"), Some(expired.as_bytes()), None)
            .await
            .unwrap_err(),
    );
    assert!(r.contains("expired"), "{r}");

    let wrong_key = py_token("dev1", "d3Jvbmd3cm9uZ3dyb25nd3Jvbmc=", NOW + 60);
    let r = reason(
        hub.authenticate(NOW, &username("dev1"), Some(wrong_key.as_bytes()), None)
            .await
            .unwrap_err(),
    );
    assert!(r.contains("wrong key"), "{r}");

    // A valid dev2 token used to connect as dev1: wrong audience.
    let other = py_token("dev2", KEY1, NOW + 60);
    let r = reason(
        hub.authenticate(NOW, &username("dev1"), Some(other.as_bytes()), None)
            .await
            .unwrap_err(),
    );
    assert!(r.contains("audience"), "{r}");

    let r = reason(
        hub.authenticate(
            NOW,
            &username("nobody"),
            Some(py_token("nobody", KEY1, NOW + 60).as_bytes()),
            None,
        )
        .await
        .unwrap_err(),
    );
    assert!(r.contains("unknown device"), "{r}");

    let u = HubUsername::parse("other.example.test/dev1/?api-version=1").unwrap();
    let r = reason(
        hub.authenticate(NOW, &u, Some(py_token("dev1", KEY1, NOW + 60).as_bytes()), None)
            .await
            .unwrap_err(),
    );
    assert!(r.contains("other.example.test"), "{r}");

    let r = reason(
        hub.authenticate(NOW, &username("dev1"), Some(b"garbage"), None)
            .await
            .unwrap_err(),
    );
    assert!(r.contains("SharedAccessSignature"), "{r}");

    let r = reason(hub.authenticate(NOW, &username("dev1"), None, None).await.unwrap_err());
    assert!(r.contains("no SAS token"), "{r}");

    // Disabled: its own variant, and the Display names the device.
    let mut d = hub.get_device("dev1").await.unwrap();
    d.status = Some("disabled".into());
    hub.put_device(d, Some("*")).await.unwrap();
    let err = hub
        .authenticate(
            NOW,
            &username("dev1"),
            Some(py_token("dev1", KEY1, NOW + 60).as_bytes()),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AuthError::DeviceDisabled {
            device_id: "dev1".into()
        }
    );
    assert_eq!(err.to_string(), "device 'dev1' is disabled");
}

#[tokio::test]
async fn x509_self_signed_authentication() {
    let hub = Hub::open(HubConfig::in_memory(HOST)).unwrap();
    hub.put_device(
        Device {
            device_id: "cam".into(),
            authentication: Some(AuthenticationMechanism {
                kind: "selfSigned".into(),
                symmetric_key: None,
                x509_thumbprint: Some(X509Thumbprint {
                    primary_thumbprint: Some(SHA1.into()),
                    secondary_thumbprint: Some(SHA256.to_ascii_lowercase()),
                }),
            }),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let presented = |sha1: &str, sha256: &str| Some(dps_hub::ClientCertificate::with_thumbprints(sha1, sha256));

    // SHA-1 match on the primary, case-insensitive; empty password = no password.
    let id = hub
        .authenticate(
            NOW,
            &username("cam"),
            Some(b""),
            presented(&SHA1.to_ascii_lowercase(), &"0".repeat(64)),
        )
        .await
        .unwrap();
    assert_eq!(id.method(), AuthMethod::X509SelfSigned(CredentialSlot::Primary));
    // SHA-256 match on the secondary.
    let id = hub
        .authenticate(NOW, &username("cam"), None, presented(&"1".repeat(40), SHA256))
        .await
        .unwrap();
    assert_eq!(id.method(), AuthMethod::X509SelfSigned(CredentialSlot::Secondary));
    let r = reason(
        hub.authenticate(NOW, &username("cam"), None, presented(&"1".repeat(40), &"2".repeat(64)))
            .await
            .unwrap_err(),
    );
    assert!(r.contains("matches neither"), "{r}");
    let r = reason(hub.authenticate(NOW, &username("cam"), None, None).await.unwrap_err());
    assert!(r.contains("no client certificate"), "{r}");
    // An X.509 device cannot use a SAS token.
    let r = reason(
        hub.authenticate(
            NOW,
            &username("cam"),
            Some(py_token("cam", KEY1, NOW + 60).as_bytes()),
            None,
        )
        .await
        .unwrap_err(),
    );
    assert!(r.contains("selfSigned"), "{r}");
}

#[tokio::test]
async fn twin_get_and_reported_patch() {
    let hub = hub_with_device("dev1").await;
    let (session, _rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    assert_eq!(
        hub.get_device("dev1").await.unwrap().connection_state.as_deref(),
        Some("Connected")
    );

    assert_eq!(session.subscribe("$iothub/twin/res/#", 1), Some(1));
    assert_eq!(session.subscribe("$iothub/methods/POST/#", 0), Some(0));
    assert_eq!(session.subscribe("devices/dev1/messages/devicebound/#", 2), Some(1));
    assert_eq!(session.subscribe("#", 1), None);
    assert_eq!(session.subscribe("devices/dev2/messages/devicebound/#", 1), None);

    let out = session
        .handle_publish(now(), "$iothub/twin/GET/?$rid=0fa7c5e8", b" ")
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "$iothub/twin/res/200/?$rid=0fa7c5e8");
    assert_eq!(
        json_of(&out[0]),
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );

    let out = session
        .handle_publish(
            now(),
            "$iothub/twin/PATCH/properties/reported/?$rid=7",
            br#"{"temp": 21.5, "fw": {"v": "1.0"}}"#,
        )
        .await
        .unwrap();
    assert_eq!(out[0].topic, "$iothub/twin/res/204/?$rid=7&$version=2");
    assert!(out[0].payload.is_empty());
    // The same patch again changes nothing: version stays.
    let out = session
        .handle_publish(
            now(),
            "$iothub/twin/PATCH/properties/reported/?$rid=8",
            br#"{"temp": 21.5}"#,
        )
        .await
        .unwrap();
    assert_eq!(out[0].topic, "$iothub/twin/res/204/?$rid=8&$version=2");
    // null deletes.
    let out = session
        .handle_publish(
            now(),
            "$iothub/twin/PATCH/properties/reported/?$rid=9",
            br#"{"fw": null}"#,
        )
        .await
        .unwrap();
    assert_eq!(out[0].topic, "$iothub/twin/res/204/?$rid=9&$version=3");

    let t = hub.get_twin("dev1").await.unwrap();
    let reported = t.properties.unwrap().reported.unwrap();
    assert_eq!(reported["temp"], 21.5);
    assert!(reported.get("fw").is_none());
    assert_eq!(reported["$version"], 3);
    assert!(t.last_activity_time.is_some());
    assert_eq!(t.connection_state.as_deref(), Some("Connected"));

    let out = session
        .handle_publish(now(), "$iothub/twin/GET/?$rid=10", b"")
        .await
        .unwrap();
    assert_eq!(
        json_of(&out[0]),
        json!({"desired": {"$version": 1}, "reported": {"temp": 21.5, "$version": 3}})
    );

    // Not a JSON object: 400 with an error body the SDKs understand.
    let out = session
        .handle_publish(now(), "$iothub/twin/PATCH/properties/reported/?$rid=11", b"[1]")
        .await
        .unwrap();
    assert_eq!(out[0].topic, "$iothub/twin/res/400/?$rid=11");
    assert!(json_of(&out[0])["errorCode"].is_number());

    assert!(matches!(
        session.handle_publish(now(), "$iothub/nope", b"").await,
        Err(SessionError::Topic(_))
    ));

    drop(session);
    assert_eq!(
        hub.get_device("dev1").await.unwrap().connection_state.as_deref(),
        Some("Disconnected")
    );
}

#[tokio::test]
async fn desired_patches_only_after_subscribing() {
    let hub = hub_with_device("dev1").await;
    let (session, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    session.subscribe("$iothub/twin/res/#", 0);

    hub.patch_twin("dev1", desired_patch(json!({"a": 1})), None)
        .await
        .unwrap();
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);

    assert_eq!(session.subscribe("$iothub/twin/PATCH/properties/desired/#", 0), Some(0));
    hub.patch_twin("dev1", desired_patch(json!({"a": 1, "b": {"c": 2}})), None)
        .await
        .unwrap();
    let out = rx.try_recv().unwrap();
    assert_eq!(out.topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
    // Only the changed part (a is unchanged) plus $version.
    assert_eq!(json_of(&out), json!({"b": {"c": 2}, "$version": 3}));
    assert_eq!(out.qos, 0);

    // Replace sends deletions as nulls.
    hub.replace_twin("dev1", desired_patch(json!({"b": {"c": 2}})), None)
        .await
        .unwrap();
    let out = rx.try_recv().unwrap();
    assert_eq!(json_of(&out), json!({"a": null, "$version": 4}));

    // Unsubscribing stops the feed.
    session.unsubscribe("$iothub/twin/PATCH/properties/desired/#");
    hub.patch_twin("dev1", desired_patch(json!({"z": 0})), None)
        .await
        .unwrap();
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[tokio::test]
async fn direct_method_round_trip() {
    let hub = hub_with_device("dev1").await;
    let t = Duration::from_secs(5);
    assert_eq!(
        hub.invoke_method("dev1", "reboot", json!({}), t).await.unwrap_err(),
        MethodError::DeviceNotOnline {
            device_id: "dev1".into()
        }
    );
    assert!(matches!(
        hub.invoke_method("ghost", "reboot", json!({}), t).await,
        Err(MethodError::DeviceNotFound { .. })
    ));
    assert!(matches!(
        hub.invoke_method("dev1", "a/b", json!({}), t).await,
        Err(MethodError::InvalidMethodName(_))
    ));

    let (session, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    // Connected but not subscribed to methods: still not online for methods.
    assert!(matches!(
        hub.invoke_method("dev1", "reboot", json!({}), t).await,
        Err(MethodError::DeviceNotOnline { .. })
    ));
    session.subscribe("$iothub/methods/POST/#", 1);

    let call = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.invoke_method("dev1", "reboot", json!({"delay": 5}), t).await })
    };
    let req = rx.recv().await.unwrap();
    let rid = req
        .topic
        .strip_prefix("$iothub/methods/POST/reboot/?$rid=")
        .expect("method topic")
        .to_string();
    assert!(!rid.is_empty() && !rid.contains('&'));
    assert_eq!(json_of(&req), json!({"delay": 5}));
    let out = session
        .handle_publish(
            now(),
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            br#"{"rebooting": true}"#,
        )
        .await
        .unwrap();
    assert!(out.is_empty());
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.payload, json!({"rebooting": true}));
    assert_eq!(
        serde_json::to_value(&resp).unwrap(),
        json!({"status": 200, "payload": {"rebooting": true}})
    );

    // No answer: timeout.
    let err = hub
        .invoke_method("dev1", "slow", Value::Null, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, MethodError::Timeout { .. }), "{err}");
    let req = rx.recv().await.unwrap();
    assert_eq!(&req.payload[..], b"null");

    // The connection drops while a call waits: the call fails at once, not at its timeout.
    let call = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.invoke_method("dev1", "x", json!(1), Duration::from_secs(30)).await })
    };
    rx.recv().await.unwrap();
    drop(session);
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("call ended promptly")
            .unwrap(),
        Err(MethodError::DeviceNotOnline { .. })
    ));
}

#[tokio::test]
async fn telemetry_is_stored_and_broadcast() {
    let hub = hub_with_device("dev1").await;
    let mut events = hub.subscribe_events();
    let (session, _rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    let out = session
        .handle_publish(
            now(),
            "devices/dev1/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=m1&alert=high%20temp",
            br#"{"temperature": 30}"#,
        )
        .await
        .unwrap();
    assert!(out.is_empty());
    session
        .handle_publish(now(), "devices/dev1/messages/events/", b"plain text")
        .await
        .unwrap();

    let m = events.recv().await.unwrap();
    assert_eq!(m.sequence_number, 1);
    assert_eq!(m.device_id, "dev1");
    assert_eq!(m.properties, vec![("alert".to_string(), "high temp".to_string())]);
    assert_eq!(m.system_property("content-type"), Some("application/json"));
    assert_eq!(m.system_property("message-id"), Some("m1"));
    assert_eq!(m.system_property("iothub-connection-device-id"), Some("dev1"));
    assert_eq!(m.body_json(), Some(json!({"temperature": 30})));
    let v = serde_json::to_value(&*m).unwrap();
    assert_eq!(v["deviceId"], "dev1");
    assert_eq!(v["sequenceNumber"], 1);
    assert_eq!(v["body"], json!({"temperature": 30}));
    assert_eq!(v["properties"], json!({"alert": "high temp"}));
    assert_eq!(v["systemProperties"]["content-encoding"], "utf-8");
    assert_eq!(v["enqueuedTimeUtc"], "2025-06-15T15:06:40.0000000Z");
    let e = m.to_monitor_event();
    assert_eq!(e["event"]["origin"], "dev1");
    assert_eq!(e["event"]["payload"], json!({"temperature": 30}));
    assert_eq!(e["event"]["properties"]["application"]["alert"], "high temp");

    let m2 = events.recv().await.unwrap();
    assert_eq!(m2.sequence_number, 2);
    assert_eq!(m2.body_value(), json!("plain text"));

    let recent = hub.recent_events(Some("DEV1"), None, 10).await;
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0], m);
    assert_eq!(hub.recent_events(None, Some(1), 10).await, vec![m2]);
    assert!(hub.recent_events(Some("other"), None, 10).await.is_empty());

    // Another device's topic is refused; so is an oversized message.
    assert!(matches!(
        session
            .handle_publish(now(), "devices/dev2/messages/events/", b"{}")
            .await,
        Err(SessionError::Topic(_))
    ));
    assert!(matches!(
        session
            .handle_publish(now(), "devices/dev1/messages/events/", &vec![b'x'; 300_000])
            .await,
        Err(SessionError::TooLarge { .. })
    ));
    assert_eq!(hub.recent_events(None, None, 10).await.len(), 2);
}

#[tokio::test]
async fn new_connection_replaces_the_old_one() {
    let hub = hub_with_device("dev1").await;
    let (old, mut old_rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    let (new, _new_rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    // The old channel closes: that is how the server learns to drop the old connection.
    assert!(old_rx.recv().await.is_none());
    assert!(!old.is_current());
    assert!(new.is_current());
    assert!(matches!(
        old.handle_publish(now(), "$iothub/twin/GET/?$rid=1", b"").await,
        Err(SessionError::Closed { .. })
    ));
    // Dropping the replaced session must not mark the device disconnected.
    drop(old);
    assert_eq!(
        hub.get_device("dev1").await.unwrap().connection_state.as_deref(),
        Some("Connected")
    );
    assert_eq!(hub.statistics().await.unwrap().connected_device_count, 1);
    new.close();
    assert_eq!(
        hub.get_device("dev1").await.unwrap().connection_state.as_deref(),
        Some("Disconnected")
    );

    // Deleting or disabling a device ends its session too.
    let (s, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    let id = s.identity().clone();
    hub.delete_device("dev1", None).await.unwrap();
    assert!(rx.recv().await.is_none());
    assert!(!s.is_current());
    // An identity from before the delete cannot open a session for a re-created device.
    hub.put_device(
        Device {
            device_id: "dev1".into(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert!(matches!(hub.open_session(id).await, Err(SessionError::Closed { .. })));
}

#[tokio::test]
async fn cloud_to_device_delivery_and_queue() {
    let hub = hub_with_device("dev1").await;
    hub.send_c2d("dev1", b"queued".to_vec(), vec![("k".into(), "v 1".into())])
        .await
        .unwrap();
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 1);
    let (session, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
    session.subscribe("devices/dev1/messages/devicebound/#", 1);
    let m = rx.try_recv().unwrap();
    assert!(
        m.topic.starts_with("devices/dev1/messages/devicebound/%24.mid="),
        "{}",
        m.topic
    );
    assert!(m.topic.contains("&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound"));
    assert!(m.topic.ends_with("&k=v%201"));
    assert_eq!(&m.payload[..], b"queued");
    assert_eq!(m.qos, 1);
    // Delivered but not settled: still the device's, until it completes it (MQTT PUBACK).
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 1);
    assert!(session.settle_c2d(&lock_of(&m), C2dOutcome::Complete));
    assert!(
        !session.settle_c2d(&lock_of(&m), C2dOutcome::Complete),
        "a lock settles once"
    );
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 0);

    hub.send_c2d("dev1", &b"live"[..], vec![("$.mid".into(), "mine".into())])
        .await
        .unwrap();
    let m = rx.try_recv().unwrap();
    assert!(m.topic.starts_with("devices/dev1/messages/devicebound/%24.mid=mine&"));

    // The connection ends before the device settled it: it stays queued for the next one.
    drop(session);
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 1);
    for _ in 1..dps_hub::C2D_QUEUE_LIMIT {
        hub.send_c2d("dev1", &b"x"[..], vec![]).await.unwrap();
    }
    assert!(matches!(
        hub.send_c2d("dev1", &b"x"[..], vec![]).await,
        Err(dps_hub::C2dError::QueueFull { limit: 50, .. })
    ));
    assert!(matches!(
        hub.send_c2d("ghost", &b"x"[..], vec![]).await,
        Err(dps_hub::C2dError::DeviceNotFound { .. })
    ));
}

#[tokio::test]
async fn embedded_c_wildcard_c2d_subscription() {
    let hub = hub_with_device("dev1").await;
    let (session, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    assert_eq!(session.subscribe("devices/+/messages/devicebound/#", 1), Some(1));
    hub.send_c2d("dev1", &b"hi"[..], vec![]).await.unwrap();
    assert!(rx
        .try_recv()
        .unwrap()
        .topic
        .starts_with("devices/dev1/messages/devicebound/"));
}

/// A reported patch that breaks IoT Hub's twin rules is answered 400 / 400004 on the response
/// topic, with a message naming the field, and writes nothing; a patch that would take the
/// section past 32 KB is refused whole, however the size was reached.
#[tokio::test]
async fn reported_patches_within_iot_hub_limits() {
    let hub = hub_with_device("dev1").await;
    let (session, _rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    let patch = |rid: u32, body: Value| {
        let session = &session;
        async move {
            let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}");
            let mut out = session
                .handle_publish(now(), &topic, body.to_string().as_bytes())
                .await
                .unwrap();
            assert_eq!(out.len(), 1);
            out.remove(0)
        }
    };
    // Three 12 KB patches: the first two fit (about 24 KB), the third would make about 36 KB.
    let chunk = |k: &str| json!({ k: {"a": "x".repeat(4000), "b": "y".repeat(4000), "c": "z".repeat(4000)} });
    assert_eq!(
        patch(1, chunk("one")).await.topic,
        "$iothub/twin/res/204/?$rid=1&$version=2"
    );
    assert_eq!(
        patch(2, chunk("two")).await.topic,
        "$iothub/twin/res/204/?$rid=2&$version=3"
    );
    let before = hub.get_twin("dev1").await.unwrap();
    let refused = patch(3, chunk("three")).await;
    assert_eq!(refused.topic, "$iothub/twin/res/400/?$rid=3");
    let body = json_of(&refused);
    assert_eq!(body["errorCode"], 400004);
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("properties.reported would be") && msg.contains("32768"),
        "{msg}"
    );
    for (rid, bad, expected) in [
        (4, json!({"a.b": 1}), "contains '.'"),
        (5, json!({"$secret": 1, "ok": 2}), "contains '$'"),
        (6, json!({"s": "x".repeat(4097)}), "properties.reported.s is 4097 bytes"),
        (
            7,
            (0..12).fold(json!(1), |v, i| json!({ format!("l{i}"): v })),
            "nested 11 levels",
        ),
        (8, json!({"arr": [1, null]}), "contains null"),
    ] {
        let out = patch(rid, bad).await;
        assert_eq!(out.topic, format!("$iothub/twin/res/400/?$rid={rid}"));
        let body = json_of(&out);
        assert_eq!(body["errorCode"], 400004);
        assert!(body["message"].as_str().unwrap().contains(expected), "{body}");
    }
    // Control characters are free in IoT Hub's measure but not in storage: six 4 KB strings of
    // them (147 KB of JSON) are refused although they "weigh" 18 bytes.
    let controls: serde_json::Map<String, Value> =
        (0..6).map(|i| (format!("c{i}"), json!("\u{1}".repeat(4096)))).collect();
    let out = patch(20, Value::Object(controls)).await;
    assert_eq!(out.topic, "$iothub/twin/res/400/?$rid=20");
    assert!(
        json_of(&out)["message"].as_str().unwrap().contains("bytes of JSON"),
        "{:?}",
        out
    );
    // Nothing was written by any refusal: same etag, same version, same document.
    assert_eq!(hub.get_twin("dev1").await.unwrap(), before);
    // Deleting makes room; then the refused patch fits.
    assert_eq!(
        patch(9, json!({"one": null})).await.topic,
        "$iothub/twin/res/204/?$rid=9&$version=4"
    );
    assert_eq!(
        patch(10, chunk("three")).await.topic,
        "$iothub/twin/res/204/?$rid=10&$version=5"
    );
}

/// Device-to-cloud messages are limited to 256 KB of body and properties (IoT Hub closes the
/// connection: the server drops it on this error); cloud-to-device messages to 64 KB.
#[tokio::test]
async fn message_size_limits() {
    let hub = hub_with_device("dev1").await;
    let (session, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    let limit = dps_proto::twin_limits::D2C_MAX_BYTES;
    session
        .handle_publish(now(), "devices/dev1/messages/events/", &vec![b'x'; limit])
        .await
        .unwrap();
    // The same body with one property is over.
    let err = session
        .handle_publish(now(), "devices/dev1/messages/events/k=v", &vec![b'x'; limit])
        .await
        .unwrap_err();
    assert_eq!(err, SessionError::TooLarge { size: limit + 2, limit });
    assert_eq!(hub.recent_events(None, None, 10).await.len(), 1);

    let c2d = dps_proto::twin_limits::C2D_MAX_BYTES;
    let err = hub.send_c2d("dev1", vec![b'x'; c2d], vec![]).await.unwrap_err();
    assert!(matches!(err, C2dError::TooLarge { limit, .. } if limit == c2d), "{err}");
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 0);
    // Body plus `$.mid` and `$.to` must fit: a message that leaves room for them goes.
    hub.send_c2d("dev1", vec![b'x'; c2d - 200], vec![]).await.unwrap();
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 1);
    session.subscribe("devices/dev1/messages/devicebound/#", 1);
    assert_eq!(rx.recv().await.unwrap().payload.len(), c2d - 200);
}

/// Retention is bounded by bytes and by age on the hub's clock, not by count alone (the store's
/// is applied by trimming, which the sweep does once a minute).
#[tokio::test]
async fn telemetry_retention_by_bytes_and_age() {
    let clock = Arc::new(FakeClock::at(now()));
    let config = HubConfig {
        telemetry_retention: 1000,
        telemetry_retention_bytes: 3 * 1024 * 1024,
        telemetry_retention_age: Duration::from_secs(3600),
        ..HubConfig::in_memory(HOST)
    };
    let hub = Hub::open_with_clock(config, clock.clone()).unwrap();
    add_device(&hub, "dev1").await;
    let (session, _rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    // Twenty 200 KiB messages: only the newest that fit in 3 MiB stay.
    let body = vec![b'x'; 200 * 1024];
    for _ in 0..20 {
        session
            .handle_publish(clock.now(), "devices/dev1/messages/events/", &body)
            .await
            .unwrap();
    }
    hub.trim_telemetry().await.unwrap();
    let kept = hub.recent_events(None, None, 100).await;
    let each = kept[0].retained_bytes();
    assert!(each > 200 * 1024);
    let fit = (3 * 1024 * 1024 / each) as usize;
    assert_eq!(fit, 15);
    assert_eq!(kept.len(), fit);
    assert_eq!(kept.last().unwrap().sequence_number, 20);
    assert_eq!(kept[0].sequence_number, 21 - fit as u64);
    // Half an hour later, one more (small); an hour and a minute after the burst, only it is left.
    clock.advance(chrono::Duration::minutes(30));
    session
        .handle_publish(clock.now(), "devices/dev1/messages/events/", b"{\"late\":1}")
        .await
        .unwrap();
    hub.trim_telemetry().await.unwrap();
    let kept = hub.recent_events(None, None, 100).await;
    assert_eq!(kept.len(), fit + 1);
    assert_eq!(kept[0].sequence_number, 21 - fit as u64);
    clock.advance(chrono::Duration::minutes(31));
    hub.trim_telemetry().await.unwrap();
    let kept = hub.recent_events(None, None, 100).await;
    assert_eq!(kept.iter().map(|m| m.sequence_number).collect::<Vec<_>>(), vec![21]);
}

/// Waits until the hub holds `n` feedback records: feedback becomes readable once its write
/// finished, in the background.
async fn feedback_settles_at(hub: &Hub, n: usize) {
    for _ in 0..200 {
        if hub.feedback_len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("feedback count is {}, not {n}", hub.feedback_len());
}

fn ack(kind: &str, mid: &str) -> Vec<(String, String)> {
    vec![("$.mid".into(), mid.into()), ("iothub-ack".into(), kind.into())]
}

/// Each final outcome gives the feedback its sender asked for (`iothub-ack`), in IoT Hub's
/// shape; a batch is locked until completed, and read again when abandoned.
#[tokio::test]
async fn feedback_reports_each_final_outcome_as_asked() {
    let hub = hub_with_device("dev1").await;
    let (session, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    session.subscribe("devices/dev1/messages/devicebound/#", 1);

    hub.send_c2d("dev1", &b"1"[..], ack("full", "m1")).await.unwrap();
    let m = rx.try_recv().unwrap();
    assert!(
        m.topic.contains("iothub-ack=full"),
        "the device sees the ack request: {}",
        m.topic
    );
    session.settle_c2d(&lock_of(&m), C2dOutcome::Complete);

    hub.send_c2d("dev1", &b"2"[..], ack("negative", "m2")).await.unwrap();
    session.settle_c2d(&lock_of(&rx.try_recv().unwrap()), C2dOutcome::Reject);

    // Positive only: a rejection gives no feedback.
    hub.send_c2d("dev1", &b"3"[..], ack("positive", "m3")).await.unwrap();
    session.settle_c2d(&lock_of(&rx.try_recv().unwrap()), C2dOutcome::Reject);

    // Abandoned ten times: delivered again each time, then dead-lettered.
    hub.send_c2d("dev1", &b"4"[..], ack("full", "m4")).await.unwrap();
    for _ in 0..dps_hub::C2D_MAX_DELIVERIES {
        let m = rx.try_recv().expect("an abandoned message is delivered again");
        assert_eq!(&m.payload[..], b"4");
        session.settle_c2d(&lock_of(&m), C2dOutcome::Abandon);
    }
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 0);

    feedback_settles_at(&hub, 3).await;
    let batch = hub.receive_feedback(64).await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&batch.body()).unwrap();
    let got: Vec<(String, String)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["originalMessageId"].as_str().unwrap().into(),
                r["statusCode"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [("m1", "Success"), ("m2", "Rejected"), ("m4", "DeliveryCountExceeded")];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    let first = &body[0];
    assert_eq!(first["deviceId"], "dev1");
    assert_eq!(first["description"], "Success");
    assert!(first["deviceGenerationId"].as_str().is_some_and(|g| !g.is_empty()));
    assert!(first["enqueuedTimeUtc"].as_str().is_some_and(|t| t.ends_with('Z')));

    // Locked: not handed out twice; abandoned: read again, whole and in order.
    assert!(hub.receive_feedback(64).await.unwrap().is_none());
    assert!(hub.abandon_feedback(&batch.lock_token).await.unwrap());
    let again = hub.receive_feedback(2).await.unwrap().unwrap();
    assert_eq!(again.records, batch.records[..2]);
    assert!(hub.complete_feedback(&again.lock_token).await.unwrap());
    assert!(
        !hub.complete_feedback(&again.lock_token).await.unwrap(),
        "completes once"
    );
    assert_eq!(hub.feedback_len(), 1);
}

/// A message past its time to live is dead-lettered by the sweep (Expired); a purge removes
/// what is queued (Purged); properties the hub reads must be valid.
#[tokio::test]
async fn expired_and_purged_messages_give_feedback() {
    let clock = Arc::new(FakeClock::at(now()));
    let hub = Hub::open_with_clock(HubConfig::in_memory(HOST), clock.clone()).unwrap();
    add_device(&hub, "dev1").await;
    let soon = dps_proto::timefmt::format_record(&(now() + chrono::Duration::seconds(10)));
    let mut short = ack("full", "short");
    short.push(("$.exp".into(), soon));
    hub.send_c2d("dev1", &b"s"[..], short).await.unwrap();
    hub.send_c2d("dev1", &b"l"[..], ack("negative", "long")).await.unwrap();
    hub.send_c2d("dev1", &b"q"[..], ack("none", "quiet")).await.unwrap();

    clock.advance(chrono::Duration::seconds(11));
    hub.sweep();
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 2);
    assert_eq!(hub.purge_c2d("DEV1").await.unwrap(), 2);
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 0);
    feedback_settles_at(&hub, 2).await;
    let batch = hub.receive_feedback(64).await.unwrap().unwrap();
    let got: Vec<_> = batch
        .records
        .iter()
        .map(|r| (r.original_message_id.as_str(), r.status))
        .collect();
    assert_eq!(
        got,
        [
            ("short", dps_hub::FeedbackStatus::Expired),
            ("long", dps_hub::FeedbackStatus::Purged)
        ]
    );

    for bad in [("iothub-ack", "sometimes"), ("$.exp", "tomorrow")] {
        let e = hub
            .send_c2d("dev1", &b"x"[..], vec![(bad.0.into(), bad.1.into())])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, C2dError::InvalidProperty { name, .. } if name == bad.0),
            "{e}"
        );
    }
    assert!(matches!(
        hub.purge_c2d("ghost").await,
        Err(C2dError::DeviceNotFound { .. })
    ));
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 0);
}

/// Queued messages (delivered-but-unsettled ones too) and unread feedback are in the store: a
/// hub opened again on it has them.
#[tokio::test]
async fn queued_messages_and_feedback_survive_a_restart() {
    let store = Arc::new(dps_hub::store::MemoryHubStore::new());
    let clock: Arc<dyn Clock> = Arc::new(FakeClock::at(now()));
    let open = || Hub::open_with_store(HubConfig::in_memory(HOST), store.clone(), clock.clone());
    let hub = open().await.unwrap();
    add_device(&hub, "dev1").await;
    for (body, mid) in [("one", "m1"), ("two", "m2"), ("three", "m3")] {
        hub.send_c2d("dev1", body.as_bytes().to_vec(), ack("full", mid))
            .await
            .unwrap();
    }
    let (session, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    session.subscribe("devices/dev1/messages/devicebound/#", 1);
    let first = rx.try_recv().unwrap();
    session.settle_c2d(&lock_of(&first), C2dOutcome::Complete);
    feedback_settles_at(&hub, 1).await;
    // m2 and m3 were handed to the session and never settled.
    drop((session, rx, hub));

    let hub = open().await.unwrap();
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 2);
    assert_eq!(hub.feedback_len(), 1);
    let (session, mut rx) = hub.open_session(login(&hub, "dev1").await).await.unwrap();
    session.subscribe("devices/dev1/messages/devicebound/#", 1);
    let bodies: Vec<Vec<u8>> = (0..2).map(|_| rx.try_recv().unwrap().payload.to_vec()).collect();
    assert_eq!(bodies, [b"two".to_vec(), b"three".to_vec()]);
    let batch = hub.receive_feedback(64).await.unwrap().unwrap();
    assert_eq!(batch.records[0].original_message_id, "m1");
    assert!(hub.complete_feedback(&batch.lock_token).await.unwrap());

    // Deleting the device deletes its queue; new keys never collide with stored ones.
    hub.delete_device("dev1", None).await.unwrap();
    drop((session, rx, hub));
    let hub = open().await.unwrap();
    assert_eq!(hub.feedback_len(), 0);
    add_device(&hub, "dev1").await;
    assert_eq!(hub.get_device("dev1").await.unwrap().cloud_to_device_message_count, 0);
}
