//! `dps_client::RegistryClient` against an in-process `dps serve`: devices and twins, a direct
//! method answered by a connected device, the statistics, and the telemetry stream — the typed
//! calls over the registry models and REST grammar the server parses.

use std::time::Duration;

use crate::common::{hub_device, hub_mqtt, hub_mqtt_until, hub_server_with, publish_acked, sas_device};
use dps_client::{ClientError, RegistryClient, RestClient};
use dps_proto::codes;
use dps_proto::connection_string::ConnectionString;
use dps_proto::model::hub::{CloudToDeviceMethod, Device, RegistryStatistics, ServiceStatistics};
use dps_server::RunningServer;
use rumqttc::{Packet, QoS};
use serde_json::json;

/// A registry client signed with the hub's owner policy, trusting the server's CA.
fn registry(s: &RunningServer) -> RegistryClient {
    let hub = &s.services.identity.hub;
    let policy = &hub.policies[0];
    let cs = ConnectionString::service(&hub.host_name, &policy.key_name, &policy.primary_key);
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    RegistryClient::new(RestClient::new(&cs, s.https_addr.port(), &ca).unwrap())
}

fn service_error(e: &ClientError) -> (u16, Option<u32>) {
    match e {
        ClientError::Service { status, error_code, .. } => (*status, *error_code),
        other => panic!("not a service answer: {other}"),
    }
}

#[tokio::test]
async fn registry_client_covers_devices_methods_statistics_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = hub_server_with("127.0.35.3", dir.path(), |_| {}).await;
    let client = registry(&s);

    // Devices: one created through the client, one disabled, one the device connects as.
    let created = client
        .put_device(
            &Device {
                status: Some("disabled".into()),
                ..sas_device("typed-1")
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.status.as_deref(), Some("disabled"));
    hub_device(&s, "dev-m").await;

    // A method to a device that is not connected: IoT Hub's 404103, typed.
    let reboot = CloudToDeviceMethod {
        method_name: "reboot".into(),
        payload: json!({"delay": 5}),
        response_timeout_in_seconds: Some(10),
        connect_timeout_in_seconds: None,
    };
    let e = client.invoke_method("dev-m", &reboot).await.unwrap_err();
    assert_eq!(service_error(&e), (404, Some(codes::DEVICE_NOT_ONLINE)));
    assert_eq!(
        service_error(&client.invoke_method("ghost", &reboot).await.unwrap_err()).0,
        404
    );

    // Statistics before and after the device connects.
    assert_eq!(
        client.device_statistics().await.unwrap(),
        RegistryStatistics {
            total_device_count: 2,
            enabled_device_count: 1,
            disabled_device_count: 1,
        }
    );
    assert_eq!(
        client.service_statistics().await.unwrap(),
        ServiceStatistics {
            connected_device_count: 0
        }
    );
    let (device, mut ev) = hub_mqtt(&s, "dev-m").await;
    assert_eq!(client.service_statistics().await.unwrap().connected_device_count, 1);

    // The device answers the method; the client gets its status and payload.
    device
        .subscribe("$iothub/methods/POST/#", QoS::AtMostOnce)
        .await
        .unwrap();
    hub_mqtt_until(&mut ev, |p| matches!(p, Packet::SubAck(_)).then_some(()))
        .await
        .unwrap();
    let call = {
        let client = client.clone();
        let reboot = reboot.clone();
        tokio::spawn(async move { client.invoke_method("dev-m", &reboot).await })
    };
    let request = hub_mqtt_until(&mut ev, |p| match p {
        Packet::Publish(p) if p.topic.starts_with("$iothub/methods/POST/reboot/") => Some(p.clone()),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&request.payload).unwrap(),
        json!({"delay": 5})
    );
    let rid = request.topic.rsplit("$rid=").next().unwrap().to_string();
    device
        .publish(
            format!("$iothub/methods/res/201/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            r#"{"rebooting":true}"#,
        )
        .await
        .unwrap();
    // Drive the device's connection (the answer goes out) until the call returns.
    tokio::pin!(call);
    let answer = loop {
        tokio::select! {
            r = &mut call => break r.unwrap().unwrap(),
            e = ev.poll() => { e.unwrap(); }
        }
    };
    assert_eq!((answer.status, answer.payload), (201, json!({"rebooting": true})));

    // The telemetry stream: a message sent before the stream opened is read back from retention
    // (from sequence 0), one sent after arrives live; other devices' are filtered out.
    publish_acked(&device, &mut ev, "devices/dev-m/messages/events/", r#"{"n":1}"#).await;
    let mut events = client.monitor_events(Some("dev-m"), Some(0)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the retained event within 10 s")
        .unwrap()
        .expect("the stream is open");
    assert_eq!(first["event"]["origin"], "dev-m");
    assert_eq!(first["event"]["payload"], json!({"n": 1}));
    device
        .publish("devices/dev-m/messages/events/", QoS::AtLeastOnce, false, r#"{"n":2}"#)
        .await
        .unwrap();
    let second = loop {
        tokio::select! {
            e = events.next() => break e.unwrap().expect("the stream is open"),
            e = ev.poll() => { e.unwrap(); }
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("no live event within 10 s"),
        }
    };
    assert_eq!(second["event"]["payload"], json!({"n": 2}));
    assert!(
        second["event"]["annotations"]["x-opt-sequence-number"].as_u64()
            > first["event"]["annotations"]["x-opt-sequence-number"].as_u64()
    );

    // A stream the policy may not open is the service's refusal, not a broken stream.
    let wrong = {
        let hub = &s.services.identity.hub;
        let cs = ConnectionString::service(
            &hub.host_name,
            "iothubowner",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        );
        let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
        RegistryClient::new(RestClient::new(&cs, s.https_addr.port(), &ca).unwrap())
    };
    let e = wrong.monitor_events(None, None).await.unwrap_err();
    assert_eq!(service_error(&e).0, 401, "{e}");
    drop(device);
    s.shutdown().await;
}
