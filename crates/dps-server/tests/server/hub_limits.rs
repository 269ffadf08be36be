//! IoT Hub's limits on an in-process `dps serve`, from the accepting side: what is exactly at a
//! limit is served over MQTT and REST, twins read and written back round-trip, and telemetry
//! retention follows `[limits] telemetry-retention-bytes` (refusals are in `bad_input_twin.rs`);
//! the hub holds no more idle devices than `hub-device-cache`, and refuses to start with 0.

use crate::common;
use crate::common::{hub_device, hub_mqtt, hub_mqtt_until, hub_rest, hub_server_with, publish_acked};
use dps_proto::twin_limits::{self, Section, D2C_MAX_BYTES, SECTION_MAX_BYTES, STRING_MAX_BYTES};
use dps_server::{ServerConfig, StartError};
use rumqttc::{Packet, QoS};
use serde_json::{json, Map, Value};

/// A section of exactly [`SECTION_MAX_BYTES`] in IoT Hub's measure.
fn full_section() -> Value {
    let mut m = Map::new();
    let mut size = 0;
    for i in 0.. {
        let k = format!("k{i:02}");
        if size + k.len() + STRING_MAX_BYTES > SECTION_MAX_BYTES {
            break;
        }
        size += k.len() + STRING_MAX_BYTES;
        m.insert(k, json!("x".repeat(STRING_MAX_BYTES)));
    }
    m.insert("z".into(), json!("y".repeat(SECTION_MAX_BYTES - size - 1)));
    assert_eq!(twin_limits::check_size(Section::Tags, &m), Ok(SECTION_MAX_BYTES));
    Value::Object(m)
}

#[tokio::test]
async fn limits_accept_what_fits_and_bound_retention() {
    let dir = tempfile::tempdir().unwrap();
    let s = hub_server_with("127.0.13.2", dir.path(), |c| {
        c.limits.telemetry_retention_bytes = 1024 * 1024;
    })
    .await;
    hub_device(&s, "dev-1").await;
    let (c, mut ev) = hub_mqtt(&s, "dev-1").await;
    c.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await.unwrap();
    hub_mqtt_until(&mut ev, |p| matches!(p, Packet::SubAck(_)).then_some(()))
        .await
        .unwrap();

    // Each section exactly at 32 KB: tags and desired over REST, reported over MQTT.
    let full = full_section();
    let (status, t) = hub_rest(
        &s,
        "PUT",
        "/twins/dev-1",
        Some(&json!({"tags": full, "properties": {"desired": full}})),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["tags"], full);
    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=1",
        QoS::AtMostOnce,
        false,
        full.to_string(),
    )
    .await
    .unwrap();
    let topic = hub_mqtt_until(&mut ev, |p| match p {
        Packet::Publish(p) if p.topic.starts_with("$iothub/twin/res/") => Some(p.topic.clone()),
        _ => None,
    })
    .await
    .unwrap();
    assert!(topic.starts_with("$iothub/twin/res/204/?$rid=1"), "{topic}");

    // GET then PUT back (with `$metadata`, `$version` and the read-only fields) is accepted.
    let (_, twin) = hub_rest(&s, "GET", "/twins/dev-1", None).await;
    assert_eq!(twin["properties"]["reported"]["z"], full["z"]);
    let (status, back) = hub_rest(&s, "PUT", "/twins/dev-1", Some(&twin)).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["properties"]["desired"]["k00"], full["k00"]);
    // One byte more anywhere is refused (the refusals themselves are bad_input_twin.rs's).
    let (status, _) = hub_rest(&s, "PATCH", "/twins/dev-1", Some(&json!({"tags": {"a": "b"}}))).await;
    assert_eq!(status, 400);

    // A device-to-cloud message of exactly 256 KB is acknowledged; retention keeps what fits in
    // the configured 1 MiB, the newest.
    for _ in 0..8u16 {
        publish_acked(&c, &mut ev, "devices/dev-1/messages/events/", vec![b'x'; D2C_MAX_BYTES]).await;
    }
    // The retained telemetry is trimmed to its bounds once a minute; now, here.
    common::hub(&s).trim_telemetry().await.unwrap();
    let kept = common::hub(&s).recent_events(None, None, 100).await;
    let bytes: u64 = kept.iter().map(|m| m.retained_bytes()).sum();
    assert_eq!(kept.len(), 3, "three 256 KB messages (plus properties) fit in 1 MiB");
    assert!(bytes <= 1024 * 1024, "{bytes}");
    assert_eq!(kept.last().unwrap().sequence_number, 8);
    assert!(kept.iter().all(|m| m.body.len() == D2C_MAX_BYTES));
    s.shutdown().await;
}

#[tokio::test]
async fn the_hub_device_cache_setting_bounds_the_devices_held() {
    const BOUND: usize = 16;
    const DEVICES: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let s = hub_server_with("127.0.35.1", dir.path(), |c| c.hub_device_cache = BOUND).await;
    for i in 0..DEVICES {
        hub_device(&s, &format!("dev-{i:02}")).await;
    }
    for i in 0..DEVICES {
        let (status, d) = hub_rest(&s, "GET", &format!("/devices/dev-{i:02}"), None).await;
        assert_eq!(
            (status, d["deviceId"].as_str()),
            (200, Some(format!("dev-{i:02}").as_str()))
        );
    }
    let held = common::hub(&s).resident_devices();
    assert!(held <= BOUND, "{held} devices held with hub-device-cache = {BOUND}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_zero_hub_device_cache_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServerConfig::defaults();
    c.data_dir = dir.path().to_path_buf();
    c.bind = "127.0.35.2".parse().unwrap();
    c.hub_device_cache = 0;
    match dps_server::start(c).await {
        Err(StartError::Config(msg)) => assert!(msg.contains("hub-device-cache must be at least 1"), "{msg}"),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a zero hub device cache was accepted"),
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing is written to the data directory before the configuration is checked"
    );
}
