//! Azure's DPS quotas on the wire: `dps serve` in-process on loopback with low limits answers
//! `429` + `retry-after` over HTTPS (header) and MQTT (response topic), keeps serving other
//! devices while one is throttled, and the Rust device SDK gets through by waiting as told.
//!
//! Real time runs here, so no test depends on how fast requests are sent: a refusal is sought by
//! sending until one comes (bounded), or set up with a window (10 s) that a loopback round trip
//! cannot outlast.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{dps_sas, dps_user, enroll, https, server_with, HttpReply, KEY};
use dps_client::{ProvisioningClient, SymmetricKeyProvider, Transport};
use dps_proto::codes;
use dps_server::RunningServer;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration};
use serde_json::{json, Value};

const API: &str = "api-version=2021-06-01";

fn register_path(s: &RunningServer, reg: &str) -> String {
    format!("/{}/registrations/{reg}/register?{API}", s.services.identity.id_scope)
}

fn poll_path(s: &RunningServer, reg: &str, op: &str) -> String {
    format!(
        "/{}/registrations/{reg}/operations/{op}?{API}",
        s.services.identity.id_scope
    )
}

/// Registers `reg` over HTTPS (expecting `202`) and returns the operation id.
async fn register_https(s: &RunningServer, reg: &str) -> String {
    let sas = dps_sas(s, reg, KEY);
    let r = https(
        s,
        "PUT",
        &register_path(s, reg),
        Some(&sas),
        Some(&json!({"registrationId": reg})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("3"));
    r.body["operationId"].as_str().unwrap().to_string()
}

/// Asserts an HTTPS `429 THROTTLED` whose `retry-after` is within `secs` and returns it.
fn assert_throttled_https(r: &HttpReply, secs: std::ops::RangeInclusive<u32>, names: &str) -> u32 {
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["errorCode"], codes::THROTTLED, "{}", r.body);
    assert_eq!(r.header("x-ms-error-code"), Some("429001"));
    let retry: u32 = r.header("retry-after").expect("retry-after header").parse().unwrap();
    assert!(secs.contains(&retry), "retry-after {retry}");
    let message = r.body["message"].as_str().unwrap();
    assert!(message.contains(names), "{message}");
    retry
}

#[tokio::test]
async fn https_poll_limit_answers_429_with_retry_after_and_other_devices_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with("127.0.14.1", dir.path(), |c| c.limits.polls_per_device_per_10s = 1).await;
    enroll(&s, "dev-2", KEY).await;

    let op = register_https(&s, "dev-1").await;
    let sas = dps_sas(&s, "dev-1", KEY);
    let first = https(&s, "GET", &poll_path(&s, "dev-1", &op), Some(&sas), None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "assigned");
    // One poll per 10 s: the next token is at most 10 s away.
    let second = https(&s, "GET", &poll_path(&s, "dev-1", &op), Some(&sas), None).await;
    assert_throttled_https(&second, 1..=10, "more than 1 operation-status polls in 10 seconds");

    // While dev-1 is throttled, dev-2 registers and polls, and dev-1 may still look up its
    // registration (a status lookup is no poll).
    let op2 = register_https(&s, "dev-2").await;
    let sas2 = dps_sas(&s, "dev-2", KEY);
    let r = https(&s, "GET", &poll_path(&s, "dev-2", &op2), Some(&sas2), None).await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("assigned")), "{}", r.body);
    let lookup = format!("/{}/registrations/dev-1?{API}", s.services.identity.id_scope);
    let r = https(
        &s,
        "POST",
        &lookup,
        Some(&sas),
        Some(&json!({"registrationId": "dev-1"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["assignedHub"], s.services.identity.hub.host_name);
    s.shutdown().await;
}

#[tokio::test]
async fn https_registration_limit_answers_429_and_the_rust_sdk_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with("127.0.14.2", dir.path(), |c| c.limits.registrations_per_second = 1).await;
    let devices = ["dev-2", "dev-3", "dev-4", "dev-5"];
    for d in devices {
        enroll(&s, d, KEY).await;
    }
    // One registration per second, a bucket of one: register until refused.
    let sas = dps_sas(&s, "dev-1", KEY);
    let throttled = async {
        for _ in 0..50 {
            let r = https(&s, "PUT", &register_path(&s, "dev-1"), Some(&sas), Some(&json!({}))).await;
            if r.status != 202 {
                return r;
            }
        }
        panic!("50 registrations of one device were never throttled at 1 per second");
    }
    .await;
    assert_eq!(
        assert_throttled_https(&throttled, 1..=1, "more than 1 registrations per second"),
        1
    );

    // Four devices of the Rust SDK at once, over both transports, against a bucket that holds
    // one: at least three are throttled, wait the retry-after they are given, and all complete.
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let scope = s.services.identity.id_scope.clone();
    let runs = devices.iter().enumerate().map(|(i, d)| {
        let provider = Arc::new(SymmetricKeyProvider::new(*d, KEY).unwrap());
        let client = ProvisioningClient::new("127.0.14.2", &scope, provider, &ca)
            .with_transport(if i % 2 == 0 { Transport::Https } else { Transport::Mqtt })
            .with_timeout(Duration::from_secs(60));
        async move { client.register(None).await }
    });
    for (d, r) in devices.iter().zip(futures_util::future::join_all(runs).await) {
        let r = r.unwrap_or_else(|e| panic!("{d}: {e}"));
        assert_eq!(r.device_id, *d);
    }
    s.shutdown().await;
}

/// A DPS MQTT session of `reg`, connected and subscribed to the responses.
async fn mqtt_session(s: &RunningServer, reg: &str) -> (AsyncClient, EventLoop) {
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let tls = dps_pki::tls::client_config(&ca).unwrap();
    let mut o = MqttOptions::new(reg, s.mqtt_addr.ip().to_string(), s.mqtt_addr.port());
    o.set_credentials(dps_user(s, reg), dps_sas(s, reg, KEY));
    o.set_transport(rumqttc::Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (c, mut ev) = AsyncClient::new(o, 16);
    c.subscribe("$dps/registrations/res/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("SUBACK within 10 s");
        if let Event::Incoming(Packet::SubAck(_)) = e.expect("connected") {
            return (c, ev);
        }
    }
}

/// Publishes one DPS request and returns the response's topic and JSON body.
async fn request(c: &AsyncClient, ev: &mut EventLoop, topic: String) -> (String, Value) {
    c.publish(topic, QoS::AtLeastOnce, false, "{}").await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("an answer within 10 s");
        if let Event::Incoming(Packet::Publish(p)) = e.expect("still connected") {
            return (p.topic.clone(), serde_json::from_slice(&p.payload).expect("JSON"));
        }
    }
}

fn register_topic(rid: u32) -> String {
    format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}")
}

fn poll_topic(rid: u32, op: &str) -> String {
    format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}")
}

/// The `retry-after` of a `429` response topic for `rid`, which must be exactly Azure's shape.
fn throttled_topic(topic: &str, body: &Value, rid: u32) -> u32 {
    let prefix = format!("$dps/registrations/res/429/?$rid={rid}&retry-after=");
    let secs = topic
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{topic} is not {prefix}N"));
    assert_eq!(body["errorCode"], codes::THROTTLED, "{body}");
    secs.parse().unwrap()
}

#[tokio::test]
async fn mqtt_poll_limit_answers_on_the_429_topic_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with("127.0.14.3", dir.path(), |c| c.limits.polls_per_device_per_10s = 1).await;
    enroll(&s, "dev-2", KEY).await;

    let (c, mut ev) = mqtt_session(&s, "dev-1").await;
    let (topic, body) = request(&c, &mut ev, register_topic(1)).await;
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=1&retry-after=3");
    let op = body["operationId"].as_str().unwrap().to_string();
    let (topic, body) = request(&c, &mut ev, poll_topic(2, &op)).await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=2", "{body}");
    let (topic, body) = request(&c, &mut ev, poll_topic(3, &op)).await;
    let secs = throttled_topic(&topic, &body, 3);
    assert!((1..=10).contains(&secs), "{topic}");
    assert!(
        body["message"].as_str().unwrap().contains("operation-status polls"),
        "{body}"
    );

    // Another device on its own connection is served meanwhile, and dev-1's session stays open:
    // a throttled device retries on the same connection.
    let (c2, mut ev2) = mqtt_session(&s, "dev-2").await;
    let (topic, body) = request(&c2, &mut ev2, register_topic(1)).await;
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=1&retry-after=3");
    let op2 = body["operationId"].as_str().unwrap().to_string();
    let (topic, body) = request(&c2, &mut ev2, poll_topic(2, &op2)).await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=2");
    assert_eq!(body["status"], "assigned");
    let (topic, body) = request(&c, &mut ev, register_topic(4)).await;
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=4&retry-after=3", "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn mqtt_registration_limit_answers_on_the_429_topic_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_with("127.0.14.4", dir.path(), |c| c.limits.registrations_per_second = 1).await;
    let (c, mut ev) = mqtt_session(&s, "dev-1").await;
    for rid in 1..=50 {
        let (topic, body) = request(&c, &mut ev, register_topic(rid)).await;
        if topic.starts_with("$dps/registrations/res/202/") {
            continue;
        }
        assert_eq!(throttled_topic(&topic, &body, rid), 1);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("more than 1 registrations per second"),
            "{body}"
        );
        s.shutdown().await;
        return;
    }
    panic!("50 registrations of one device were never throttled at 1 per second");
}
