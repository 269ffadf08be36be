//! `dps serve` in-process on a loopback address, driven over MQTT+TLS by a plain MQTT client the
//! way the C SDK drives it (QoS 0 requests, integer `$rid`s): the happy path and bad input on the
//! DPS and hub endpoints, and the server keeps serving everyone else.

use crate::common;
use std::time::Duration;

use crate::common::{dps_sas, dps_user, expect_telemetry, server, KEY};
use dps_proto::codes;
use dps_proto::sas::build_token;
use dps_server::RunningServer;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use serde_json::Value;

fn client(s: &RunningServer, client_id: &str, username: &str, password: &str) -> (AsyncClient, EventLoop) {
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let tls = dps_pki::tls::client_config(&ca).unwrap();
    let mut o = MqttOptions::new(client_id, s.mqtt_addr.ip().to_string(), s.mqtt_addr.port());
    o.set_credentials(username, password);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(o, 16)
}

/// Polls the event loop until a publish arrives (or the connection fails).
async fn next_publish(ev: &mut EventLoop) -> Result<(String, Value), ConnectionError> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("no event within 10 s")?;
        if let Event::Incoming(Packet::Publish(p)) = e {
            // DPS responses are always JSON; a hub 204 (reported patch) has an empty body.
            let body = if p.payload.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&p.payload).expect("responses are JSON")
            };
            return Ok((p.topic.clone(), body));
        }
    }
}

async fn connected(ev: &mut EventLoop) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("connack within 10 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return,
            Ok(_) => {}
            Err(e) => panic!("connect failed: {e}"),
        }
    }
}

#[tokio::test]
async fn dps_over_mqtt_happy_path_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.0.31", dir.path()).await;

    // Wrong key: the CONNECT is refused with 5 (not authorized), as Azure does.
    let (_c, mut ev) = client(
        &s,
        "dev-1",
        &dps_user(&s, "dev-1"),
        &dps_sas(&s, "dev-1", "d3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmc="),
    );
    match ev.poll().await {
        Err(ConnectionError::ConnectionRefused(code)) => assert_eq!(code, ConnectReturnCode::NotAuthorized),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The right key: C-style QoS 0 register and poll with integer rids.
    let (c, mut ev) = client(&s, "dev-1", &dps_user(&s, "dev-1"), &dps_sas(&s, "dev-1", KEY));
    connected(&mut ev).await;
    c.subscribe("$dps/registrations/res/#", QoS::AtLeastOnce).await.unwrap();
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=7",
        QoS::AtMostOnce,
        false,
        r#"{"registrationId":"dev-1"}"#,
    )
    .await
    .unwrap();
    let (topic, body) = next_publish(&mut ev).await.unwrap();
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=7&retry-after=3");
    assert_eq!(body["status"], "assigning");
    assert_eq!(body["registrationState"]["registrationId"], "dev-1");
    let op = body["operationId"].as_str().unwrap().to_string();
    assert!(
        op.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
        "{op}"
    );
    // C re-sends the register JSON as the poll body; it must be ignored.
    c.publish(
        format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=8&operationId={op}"),
        QoS::AtLeastOnce,
        false,
        r#"{"registrationId":"dev-1"}"#,
    )
    .await
    .unwrap();
    let (topic, body) = next_publish(&mut ev).await.unwrap();
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=8");
    assert_eq!(body["status"], "assigned");
    assert_eq!(
        body["registrationState"]["assignedHub"],
        s.services.identity.hub.host_name.as_str()
    );
    assert_eq!(body["registrationState"]["deviceId"], "dev-1");

    // Bad input on the same connection; each gets its documented status, the connection lives on.
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=9",
        QoS::AtLeastOnce,
        false,
        "{not json",
    )
    .await
    .unwrap();
    let (topic, body) = next_publish(&mut ev).await.unwrap();
    assert_eq!(topic, "$dps/registrations/res/400/?$rid=9");
    assert_eq!(body["errorCode"], codes::BAD_REQUEST_BODY);
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=10",
        QoS::AtLeastOnce,
        false,
        vec![b' '; 5000],
    )
    .await
    .unwrap();
    let (topic, body) = next_publish(&mut ev).await.unwrap();
    assert_eq!(topic, "$dps/registrations/res/413/?$rid=10");
    assert_eq!(body["errorCode"], codes::PAYLOAD_TOO_LARGE);
    c.publish(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=11",
        QoS::AtLeastOnce,
        false,
        " ",
    )
    .await
    .unwrap();
    let (topic, body) = next_publish(&mut ev).await.unwrap();
    assert_eq!(
        topic, "$dps/registrations/res/400/?$rid=11",
        "the refusal carries the $rid sent"
    );
    assert!(body["message"].as_str().unwrap().contains("operationId"), "{body}");
    c.publish(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=12&operationId=4.bogus",
        QoS::AtLeastOnce,
        false,
        " ",
    )
    .await
    .unwrap();
    let (topic, body) = next_publish(&mut ev).await.unwrap();
    assert_eq!(topic, "$dps/registrations/res/404/?$rid=12");
    assert_eq!(body["errorCode"], codes::OPERATION_NOT_FOUND);
    c.publish(
        "$dps/registrations/POST/whatever/?$rid=13",
        QoS::AtLeastOnce,
        false,
        "{}",
    )
    .await
    .unwrap();
    let (topic, _) = next_publish(&mut ev).await.unwrap();
    assert!(topic.starts_with("$dps/registrations/res/400/"), "{topic}");
    // Still serving: register again.
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=14",
        QoS::AtLeastOnce,
        false,
        "",
    )
    .await
    .unwrap();
    let (topic, _) = next_publish(&mut ev).await.unwrap();
    assert!(topic.starts_with("$dps/registrations/res/202/?$rid=14"), "{topic}");

    // Client id must equal the registration id.
    let (_c2, mut ev2) = client(&s, "someone-else", &dps_user(&s, "dev-1"), &dps_sas(&s, "dev-1", KEY));
    match ev2.poll().await {
        Err(ConnectionError::ConnectionRefused(code)) => assert_eq!(code, ConnectReturnCode::BadClientId),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Unknown ID scope and an id breaking the rules: no credential can match, so CONNACK 5.
    let (_c3, mut ev3) = client(
        &s,
        "bad!id",
        "0neNOPE/registrations/bad!id/api-version=2019-03-31",
        &dps_sas(&s, "bad!id", KEY),
    );
    match ev3.poll().await {
        Err(ConnectionError::ConnectionRefused(code)) => assert_eq!(code, ConnectReturnCode::NotAuthorized),
        other => panic!("expected a refusal, got {other:?}"),
    }
    s.shutdown().await;
}

#[tokio::test]
async fn hub_endpoint_authenticates_and_serves_twin() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.0.32", dir.path()).await;
    // Register through the engine so the device exists in the hub.
    let req = dps_core::DeviceRequest {
        id_scope: s.services.identity.id_scope.clone(),
        registration_id: "dev-1".into(),
        credential: dps_core::Credential::Sas(dps_sas(&s, "dev-1", KEY)),
        api_version: None,
        source: None,
        transport: dps_core::Transport::Mqtt,
    };
    s.services
        .engine
        .register(chrono::Utc::now(), &req, &Default::default())
        .await
        .unwrap();
    let hub = s.services.identity.hub.host_name.clone();
    let user = format!("{hub}/dev-1/?api-version=2021-04-12");
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;

    let bad = build_token(
        &format!("{hub}/devices/dev-1"),
        "d3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmc=",
        expiry,
        None,
    )
    .unwrap();
    let (_c, mut ev) = client(&s, "dev-1", &user, &bad);
    match ev.poll().await {
        Err(ConnectionError::ConnectionRefused(code)) => assert_eq!(code, ConnectReturnCode::NotAuthorized),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let expired = build_token(&format!("{hub}/devices/dev-1"), KEY, 1000, None).unwrap();
    let (_c, mut ev) = client(&s, "dev-1", &user, &expired);
    assert!(matches!(
        ev.poll().await,
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized))
    ));

    let good = build_token(&format!("{hub}/devices/dev-1"), KEY, expiry, None).unwrap();
    let (c, mut ev) = client(&s, "dev-1", &user, &good);
    connected(&mut ev).await;
    c.subscribe("$iothub/twin/res/#", QoS::AtMostOnce).await.unwrap();
    c.publish("$iothub/twin/GET/?$rid=5", QoS::AtMostOnce, false, "")
        .await
        .unwrap();
    let (topic, body) = next_publish(&mut ev).await.unwrap();
    assert_eq!(topic, "$iothub/twin/res/200/?$rid=5");
    assert!(
        body["desired"]["$version"].is_number() && body["reported"]["$version"].is_number(),
        "{body}"
    );
    c.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=6",
        QoS::AtMostOnce,
        false,
        r#"{"temp": 21}"#,
    )
    .await
    .unwrap();
    let (topic, _) = next_publish(&mut ev).await.unwrap();
    assert!(topic.starts_with("$iothub/twin/res/204/?$rid=6&$version="), "{topic}");
    let mut events = common::hub(&s).subscribe_events();
    c.publish(
        "devices/dev-1/messages/events/k=v",
        QoS::AtLeastOnce,
        false,
        r#"{"t":1}"#,
    )
    .await
    .unwrap();
    // Drive the client until the hub acknowledges the telemetry.
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .unwrap()
            .unwrap();
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            break;
        }
    }
    expect_telemetry(&mut events, "dev-1", serde_json::json!({"t": 1})).await;
    assert_eq!(
        common::hub(&s)
            .get_twin("dev-1")
            .await
            .unwrap()
            .properties
            .unwrap()
            .reported
            .unwrap()["temp"],
        21
    );
    s.shutdown().await;
}

/// Issue 17: a certificate signing request hand-framed over MQTT, as a device without an SDK
/// sends it: the CONNECT username names api-version `2025-07-01-preview`, the register body
/// carries `csr` (base64 DER), and the operation's `registrationState.issuedCertificateChain`
/// carries the certificate for the request's key. Under the GA version the same request is
/// refused with the reason.
#[tokio::test]
async fn a_csr_hand_framed_over_mqtt_gets_its_certificate() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.39.30", dir.path()).await;
    common::enroll_with_credential_policy(&s, "csr-dev").await;
    let (_, csr) = dps_pki::csr::new_key_and_request("csr-dev", dps_pki::ca::KeyAlgorithm::EcdsaP256).unwrap();
    let body = serde_json::json!({
        "registrationId": "csr-dev",
        "csr": base64::engine::general_purpose::STANDARD.encode(&csr),
    })
    .to_string();
    let scope = s.services.identity.id_scope.clone();
    let user = |version: &str| format!("{scope}/registrations/csr-dev/api-version={version}&ClientVersion=raw");
    let password = dps_sas(&s, "csr-dev", KEY);

    // The GA version: refused at once, naming the version that takes a CSR.
    let (c, mut ev) = client(&s, "csr-dev", &user("2021-10-01"), &password);
    connected(&mut ev).await;
    c.subscribe("$dps/registrations/res/#", QoS::AtLeastOnce).await.unwrap();
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        QoS::AtLeastOnce,
        false,
        body.clone(),
    )
    .await
    .unwrap();
    let (topic, refusal) = next_publish(&mut ev).await.unwrap();
    assert_eq!(topic, "$dps/registrations/res/400/?$rid=1", "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("api-version 2025-07-01-preview"),
        "{refusal}"
    );
    drop((c, ev));

    // The preview version: 202 assigning, then the operation with the chain.
    let (c, mut ev) = client(&s, "csr-dev", &user("2025-07-01-preview"), &password);
    connected(&mut ev).await;
    c.subscribe("$dps/registrations/res/#", QoS::AtLeastOnce).await.unwrap();
    c.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=2",
        QoS::AtLeastOnce,
        false,
        body,
    )
    .await
    .unwrap();
    let (topic, accepted) = next_publish(&mut ev).await.unwrap();
    assert!(topic.starts_with("$dps/registrations/res/202/?$rid=2"), "{topic}");
    let op = accepted["operationId"].as_str().unwrap().to_string();
    let done = loop {
        c.publish(
            format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=3&operationId={op}"),
            QoS::AtLeastOnce,
            false,
            "",
        )
        .await
        .unwrap();
        let (_, polled) = next_publish(&mut ev).await.unwrap();
        if polled["status"] != "assigning" {
            break polled;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "assigned", "{done}");
    common::assert_issued_for(&done["registrationState"]["issuedCertificateChain"], "csr-dev", &csr);
    s.shutdown().await;
}
