//! `dps serve` in-process on a loopback address, driven over MQTT tunnelled in WebSockets on the
//! HTTPS port — what the SDKs' MQTT_WS transports (Python `websockets=True`) do: a tokio-tungstenite
//! client over rustls, `GET /$iothub/websocket` with subprotocol `mqtt`, MQTT packets in binary
//! messages. DPS registration (SAS and X.509 — the client certificate of the 443 handshake), hub
//! CONNECT and telemetry, the packet size limit, and refused upgrades that leave HTTP working.

use crate::common;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{dps_sas, dps_user, expect_telemetry, server, KEY};
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_proto::sas::build_token;
use dps_server::mqtt::framed::Framed;
use dps_server::ws::WsByteStream;
use dps_server::RunningServer;
use http_body_util::{BodyExt, Empty};
use rumqttc::mqttbytes::v4::{ConnAck, Connect, Login, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use rumqttc::ConnectReturnCode;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

type Mqtt = Framed<WsByteStream<TlsStream<TcpStream>>>;

/// A TLS connection to the HTTPS port, presenting `identity` (chain PEM, key PEM) if given.
async fn tls(s: &RunningServer, identity: Option<(&str, &str)>) -> TlsStream<TcpStream> {
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let config = match identity {
        Some((chain, key)) => dps_pki::tls::client_config_with_identity(&ca, chain, key).unwrap(),
        None => dps_pki::tls::client_config(&ca).unwrap(),
    };
    let tcp = TcpStream::connect(s.https_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(s.https_addr.ip().into());
    TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// The WebSocket upgrade request the SDKs send (Java and C# add the query string).
fn upgrade_request(
    s: &RunningServer,
    subprotocol: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    upgrade_request_at(s, "/$iothub/websocket?iothub-no-client-cert=true", subprotocol)
}

fn upgrade_request_at(
    s: &RunningServer,
    path: &str,
    subprotocol: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("wss://{}{path}", s.https_addr.ip())
        .into_client_request()
        .unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    req
}

/// MQTT over a fresh WebSocket on the HTTPS port.
async fn mqtt_over_wss(s: &RunningServer, identity: Option<(&str, &str)>) -> Mqtt {
    let (ws, resp) = tokio_tungstenite::client_async(upgrade_request(s, Some("mqtt")), tls(s, identity).await)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mqtt");
    Framed::new(WsByteStream::new(ws), 1 << 20)
}

async fn next(io: &mut Mqtt) -> Packet {
    tokio::time::timeout(Duration::from_secs(10), io.next())
        .await
        .expect("a packet within 10 s")
        .expect("the connection works")
        .expect("the connection is open")
}

async fn connect(io: &mut Mqtt, client_id: &str, username: &str, password: &str) -> ConnAck {
    let mut c = Connect::new(client_id);
    c.keep_alive = 60;
    c.login = Some(Login::new(username, password));
    io.send(&Packet::Connect(c)).await.unwrap();
    match next(io).await {
        Packet::ConnAck(a) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// The next PUBLISH (acknowledging it if QoS 1), as topic and JSON body.
async fn next_publish(io: &mut Mqtt) -> (String, Value) {
    loop {
        if let Packet::Publish(p) = next(io).await {
            if p.qos == QoS::AtLeastOnce {
                io.send(&Packet::PubAck(PubAck::new(p.pkid))).await.unwrap();
            }
            return (p.topic.clone(), serde_json::from_slice(&p.payload).expect("JSON"));
        }
    }
}

/// Expiry of the hub SAS tokens: 10 minutes from now.
fn expiry() -> u64 {
    chrono::Utc::now().timestamp() as u64 + 600
}

/// Registers `reg` on an open DPS connection the way the Python SDK does (QoS 1, poll on 202)
/// and returns the final operation status.
async fn register(io: &mut Mqtt, reg: &str) -> Value {
    io.send(&Packet::Subscribe(Subscribe::new(
        "$dps/registrations/res/#",
        QoS::AtLeastOnce,
    )))
    .await
    .unwrap();
    assert!(matches!(next(io).await, Packet::SubAck(_)));
    let mut publish = Publish::new(
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        QoS::AtLeastOnce,
        format!(r#"{{"registrationId":"{reg}"}}"#),
    );
    publish.pkid = 1;
    io.send(&Packet::Publish(publish)).await.unwrap();
    for rid in 2u16.. {
        let (topic, body) = next_publish(io).await;
        if !topic.starts_with("$dps/registrations/res/202/") {
            assert!(topic.starts_with("$dps/registrations/res/200/"), "{topic} {body}");
            return body;
        }
        assert!(rid < 20, "still assigning after {rid} polls: {body}");
        let op = body["operationId"].as_str().expect("operationId").to_string();
        let mut poll = Publish::new(
            format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"),
            QoS::AtLeastOnce,
            "",
        );
        poll.pkid = rid;
        io.send(&Packet::Publish(poll)).await.unwrap();
    }
    unreachable!()
}

#[tokio::test]
async fn dps_and_hub_over_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.0.33", dir.path()).await;
    let hub = s.services.identity.hub.host_name.clone();

    // SAS device: provision over WSS.
    let mut io = mqtt_over_wss(&s, None).await;
    let ack = connect(&mut io, "dev-1", &dps_user(&s, "dev-1"), &dps_sas(&s, "dev-1", KEY)).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let status = register(&mut io, "dev-1").await;
    assert_eq!(status["status"], "assigned", "{status}");
    assert_eq!(status["registrationState"]["assignedHub"], hub.as_str());
    assert_eq!(status["registrationState"]["deviceId"], "dev-1");
    io.close().await;

    // Then the hub over WSS: a wrong key is refused at CONNECT, the right one sends telemetry.
    let user = format!("{hub}/dev-1/?api-version=2021-04-12");
    let mut io = mqtt_over_wss(&s, None).await;
    let bad = build_token(
        &format!("{hub}/devices/dev-1"),
        "d3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmc=",
        expiry(),
        None,
    )
    .unwrap();
    assert_eq!(
        connect(&mut io, "dev-1", &user, &bad).await.code,
        ConnectReturnCode::NotAuthorized
    );
    let mut io = mqtt_over_wss(&s, None).await;
    let good = build_token(&format!("{hub}/devices/dev-1"), KEY, expiry(), None).unwrap();
    assert_eq!(
        connect(&mut io, "dev-1", &user, &good).await.code,
        ConnectReturnCode::Success
    );
    let mut events = common::hub(&s).subscribe_events();
    let mut telemetry = Publish::new("devices/dev-1/messages/events/k=v", QoS::AtLeastOnce, r#"{"t":1}"#);
    telemetry.pkid = 1;
    io.send(&Packet::Publish(telemetry)).await.unwrap();
    assert!(matches!(next(&mut io).await, Packet::PubAck(a) if a.pkid == 1));
    expect_telemetry(&mut events, "dev-1", serde_json::json!({"t": 1})).await;
    // Keep-alive is MQTT's own, through the tunnel.
    io.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(next(&mut io).await, Packet::PingResp));

    // A packet over the MQTT limit (the WebSocket message limit is the same number) ends the
    // connection instead of being buffered.
    let huge = Publish::new(
        "devices/dev-1/messages/events/",
        QoS::AtMostOnce,
        vec![b'x'; 100 * 1024],
    );
    io.send(&Packet::Publish(huge)).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), io.next()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn x509_device_registers_with_the_certificate_of_the_443_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.0.34", dir.path()).await;
    let ca = LocalCa::generate("websocket test CA").unwrap();
    let device = ca
        .issue_device_certificate("dev-x509", 30, KeyAlgorithm::EcdsaP256)
        .unwrap();
    common::enroll_x509(&s, "dev-x509", &device.cert_pem).await;

    // X.509 devices send a username and no password; the certificate is the credential.
    let mut io = mqtt_over_wss(&s, Some((&device.cert_pem, &device.key_pem))).await;
    let ack = connect(&mut io, "dev-x509", &dps_user(&s, "dev-x509"), "").await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let status = register(&mut io, "dev-x509").await;
    assert_eq!(status["status"], "assigned", "{status}");
    assert_eq!(status["registrationState"]["deviceId"], "dev-x509");

    // Without the certificate (and no SAS) the CONNECT itself is refused, as Azure does.
    let mut io = mqtt_over_wss(&s, None).await;
    let ack = connect(&mut io, "dev-x509", &dps_user(&s, "dev-x509"), "").await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    s.shutdown().await;
}

#[tokio::test]
async fn refused_upgrades_are_400s_and_http_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.0.36", dir.path()).await;

    // No subprotocol offered: 400 with the reason, as the WebSocket client sees it.
    match tokio_tungstenite::client_async(upgrade_request(&s, None), tls(&s, None).await).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("no WebSocket subprotocol"), "{body}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    // A subprotocol served neither as MQTT nor as AMQP (`AMQPWSB10` is served: tests/amqp.rs).
    match tokio_tungstenite::client_async(upgrade_request(&s, Some("stomp")), tls(&s, None).await).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected a 400, got {other:?}"),
    }

    // A plain GET on the path: 400, and the connection goes on serving HTTP/1.1 requests.
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls(&s, None).await))
        .await
        .unwrap();
    tokio::spawn(conn);
    let host = s.https_addr.ip().to_string();
    let get = |path: &str| {
        http::Request::get(path)
            .header("host", &host)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let resp = send.send_request(get("/$iothub/websocket")).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("must be a WebSocket upgrade"),
        "{body}"
    );
    let resp = send
        .send_request(get("/devices/dev-1?api-version=2021-04-12"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the same connection serves the next request");
    s.shutdown().await;
}

#[tokio::test]
async fn amqp_is_tunnelled_at_the_root_path_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.0.47", dir.path()).await;
    // The C# SDK's provisioning over AMQP-WebSockets connects to `wss://{host}:443/`.
    let (ws, resp) =
        tokio_tungstenite::client_async(upgrade_request_at(&s, "/", Some("AMQPWSB10")), tls(&s, None).await)
            .await
            .expect("WebSocket upgrade at /");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "AMQPWSB10");
    let mut amqp = WsByteStream::new(ws);
    amqp.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
    amqp.flush().await.unwrap();
    let mut header = [0u8; 8];
    amqp.read_exact(&mut header).await.unwrap();
    assert_eq!(&header, b"AMQP\x03\x01\x00\x00", "the SASL layer answers");
    // A plain GET of the root stays an HTTP request (no WebSocket endpoint there).
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls(&s, None).await))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = http::Request::get("/")
        .header("host", s.https_addr.ip().to_string())
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(get).await.unwrap().status(), 404);
    s.shutdown().await;
}
