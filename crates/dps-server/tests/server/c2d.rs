//! Cloud-to-device messages through a real `dps serve` on its SQLite store: a message handed to
//! an MQTT device that leaves before its PUBACK is delivered again; queued messages and unread
//! feedback survive a restart; feedback is read, abandoned and completed over HTTPS; a purge
//! empties a device's queue.

use crate::common;
use std::time::Duration;

use crate::common::{connect_packet, https, hub_device, hub_server_with, RawMqtt, KEY};
use dps_proto::sas::build_token;
use dps_server::RunningServer;
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;

const IP: &str = "127.0.40.1";
const DEVICE: &str = "c2d-dev";

/// An MQTT device that acknowledges nothing by itself: connected, subscribed to its
/// cloud-to-device topic.
async fn device(s: &RunningServer) -> RawMqtt {
    let hub = s.services.identity.hub.host_name.clone();
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let token = build_token(&format!("{hub}/devices/{DEVICE}"), KEY, expiry, None).unwrap();
    let mut m = RawMqtt::open(s).await;
    let user = format!("{hub}/{DEVICE}/?api-version=2021-04-12");
    m.send_packet(&connect_packet(DEVICE, &user, &token, 60)).await;
    assert!(matches!(m.packet().await, Some(Packet::ConnAck(_))));
    let filter = format!("devices/{DEVICE}/messages/devicebound/#");
    m.send_packet(&Packet::Subscribe(Subscribe::new(&filter, QoS::AtLeastOnce)))
        .await;
    m
}

/// The next cloud-to-device publish (skipping the SUBACK).
async fn next_c2d(m: &mut RawMqtt) -> Publish {
    loop {
        match m.packet().await {
            Some(Packet::Publish(p)) => return p,
            Some(Packet::SubAck(_)) => {}
            other => panic!("expected a cloud-to-device publish, got {other:?}"),
        }
    }
}

fn ack_full(mid: &str) -> Vec<(String, String)> {
    vec![("$.mid".into(), mid.into()), ("iothub-ack".into(), "full".into())]
}

/// `iothubowner`'s SAS token for the hub's REST API.
fn service_sas(s: &RunningServer) -> String {
    let hub = &s.services.identity.hub;
    let policy = &hub.policies[0];
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    build_token(&hub.host_name, &policy.primary_key, expiry, Some(&policy.key_name)).unwrap()
}

async fn feedback_count_becomes(s: &RunningServer, n: usize) {
    for _ in 0..400 {
        if common::hub(s).feedback_len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("feedback count stayed {}, not {n}", common::hub(s).feedback_len());
}

#[tokio::test]
async fn cloud_to_device_messages_are_delivered_at_least_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = hub_server_with(IP, dir.path(), |_| {}).await;
    hub_device(&s, DEVICE).await;
    let hub = common::hub(&s).clone();
    hub.send_c2d(DEVICE, &b"one"[..], ack_full("m1")).await.unwrap();

    // The device gets it and leaves without its PUBACK: not completed, so delivered again.
    let mut m = device(&s).await;
    let p = next_c2d(&mut m).await;
    assert_eq!(&p.payload[..], b"one");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(p.topic.contains("iothub-ack=full"), "{}", p.topic);
    drop(m);
    let mut m = device(&s).await;
    let p = next_c2d(&mut m).await;
    assert_eq!(&p.payload[..], b"one");
    m.send_packet(&Packet::PubAck(PubAck::new(p.pkid))).await;
    feedback_count_becomes(&s, 1).await;
    drop(m);

    // Queued for an offline device, then the server restarts on the same data directory.
    hub.send_c2d(DEVICE, &b"two"[..], ack_full("m2")).await.unwrap();
    drop(hub);
    s.shutdown().await;
    let s = hub_server_with(IP, dir.path(), |_| {}).await;
    assert_eq!(common::hub(&s).feedback_len(), 1, "unread feedback is kept");
    let mut m = device(&s).await;
    let p = next_c2d(&mut m).await;
    assert_eq!(&p.payload[..], b"two");
    m.send_packet(&Packet::PubAck(PubAck::new(p.pkid))).await;
    feedback_count_becomes(&s, 2).await;

    // Feedback over HTTPS: a batch is locked by the read (the ETag is its lock token),
    // readable again after an abandon, gone after complete.
    let sas = service_sas(&s);
    let feedback = "/messages/serviceBound/feedback?api-version=2021-04-12";
    let read = https(&s, "GET", feedback, Some(&sas), None).await;
    assert_eq!(read.status, 200);
    assert_eq!(
        read.header("content-type"),
        Some("application/vnd.microsoft.iothub.feedback.json")
    );
    let ids: Vec<&str> = read
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["originalMessageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
    assert!(read
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["statusCode"] == "Success"));
    let lock = read.header("etag").unwrap().trim_matches('"').to_string();
    assert_eq!(https(&s, "GET", feedback, Some(&sas), None).await.status, 204, "locked");
    let abandon = format!("/messages/serviceBound/feedback/{lock}/abandon?api-version=2021-04-12");
    assert_eq!(https(&s, "POST", &abandon, Some(&sas), None).await.status, 204);
    let again = https(&s, "GET", feedback, Some(&sas), None).await;
    assert_eq!(again.body, read.body);
    let lock = again.header("etag").unwrap().trim_matches('"').to_string();
    let complete = format!("/messages/serviceBound/feedback/{lock}?api-version=2021-04-12");
    assert_eq!(https(&s, "DELETE", &complete, Some(&sas), None).await.status, 204);
    let lost = https(&s, "DELETE", &complete, Some(&sas), None).await;
    assert_eq!(lost.status, 412);
    assert_eq!(lost.body["errorCode"], 412002);
    assert!(lost.body["Message"]
        .as_str()
        .unwrap()
        .starts_with("ErrorCode:DeviceMessageLockLost;"));
    assert_eq!(https(&s, "GET", feedback, Some(&sas), None).await.status, 204);
    // Without a token, nothing is read.
    assert_eq!(https(&s, "GET", feedback, None, None).await.status, 401);

    // A purge removes what is queued, and says how much.
    drop(m);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Queued through the REST send (dps's own; the portal's "Message to device").
    let send = format!("/devices/{DEVICE}/messages/deviceBound?api-version=2021-04-12");
    let message = serde_json::json!({ "body": "three", "properties": { "source": "rest" } });
    let sent = https(&s, "POST", &send, Some(&sas), Some(&message)).await;
    assert_eq!(sent.status, 204, "{:?}", sent.body);
    let nowhere = https(
        &s,
        "POST",
        "/devices/ghost/messages/deviceBound?api-version=2021-04-12",
        Some(&sas),
        Some(&message),
    )
    .await;
    assert_eq!(nowhere.status, 404);
    assert_eq!(https(&s, "POST", &send, None, Some(&message)).await.status, 401);
    let purge = format!("/devices/{DEVICE}/commands?api-version=2021-04-12");
    let purged = https(&s, "DELETE", &purge, Some(&sas), None).await;
    assert_eq!(purged.status, 200, "{:?}", purged.body);
    assert_eq!(purged.body["totalMessagesPurged"], 1);
    assert_eq!(purged.body["deviceId"], DEVICE);
    let ghost = https(
        &s,
        "DELETE",
        "/devices/ghost/commands?api-version=2021-04-12",
        Some(&sas),
        None,
    )
    .await;
    assert_eq!(ghost.status, 404);
    s.shutdown().await;
}
