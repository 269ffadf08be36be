//! What the in-process server tests share: a `dps serve` on a loopback address with one
//! symmetric-key enrollment (`dev-1`, [`KEY`]), and the DPS MQTT credentials for it; and, in
//! [`router`], the HTTPS router driven without sockets.

// Each test module uses a different part of what is shared here.
#![allow(dead_code)]

pub mod router;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_proto::model::service::{AttestationMechanism, AttestationType, IndividualEnrollment, SymmetricKeyAttestation};
use dps_proto::sas::build_token;
use dps_server::{RunningServer, ServerConfig};
use tokio::sync::broadcast;

/// The primary key of the `dev-1` enrollment.
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The message size limit the servers run with (small, so tests can exceed it cheaply).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Starts a server on `ip` (standard ports) with data in `dir` and enrolls `dev-1`.
pub async fn server(ip: &str, dir: &std::path::Path) -> RunningServer {
    server_with(ip, dir, |_| {}).await
}

/// The DPS MQTT CONNECT username for `reg`.
pub fn dps_user(s: &RunningServer, reg: &str) -> String {
    format!(
        "{}/registrations/{reg}/api-version=2021-06-01&ClientVersion=1.15.0",
        s.services.identity.id_scope
    )
}

/// A DPS SAS token for `reg` signed with `key`, valid for 10 minutes.
pub fn dps_sas(s: &RunningServer, reg: &str, key: &str) -> String {
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    build_token(
        &format!("{}/registrations/{reg}", s.services.identity.id_scope),
        key,
        expiry,
        Some("registration"),
    )
    .unwrap()
}

/// Waits (up to 5 s) for the hub's next telemetry message and checks its device and JSON body.
pub async fn expect_telemetry(
    events: &mut broadcast::Receiver<Arc<dps_hub::TelemetryMessage>>,
    device_id: &str,
    body: serde_json::Value,
) {
    let msg = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("telemetry within 5 s")
        .expect("the event stream is open");
    assert_eq!(msg.device_id, device_id);
    assert_eq!(msg.body_json(), Some(body));
}

/// [`server`] with its configuration adjusted by `tweak` before it starts (limits, deadlines).
pub async fn server_with(ip: &str, dir: &std::path::Path, tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut c = ServerConfig::defaults();
    c.data_dir = dir.to_path_buf();
    c.hostnames = vec![ip.to_string()];
    c.bind = ip.parse::<IpAddr>().unwrap();
    c.max_message_bytes = MAX_MESSAGE_BYTES;
    tweak(&mut c);
    let s = dps_server::start(c).await.expect("server starts");
    enroll(&s, "dev-1", KEY).await;
    s
}

/// Enrolls `reg` individually with symmetric key `key`.
pub async fn enroll(s: &RunningServer, reg: &str, key: &str) {
    let enrollment = IndividualEnrollment {
        attestation: symmetric_key(key),
        ..Default::default()
    };
    put_enrollment(s, reg, enrollment).await;
}

/// Symmetric-key attestation with primary key `key`.
pub fn symmetric_key(key: &str) -> AttestationMechanism {
    AttestationMechanism {
        kind: AttestationType::SymmetricKey,
        symmetric_key: Some(SymmetricKeyAttestation {
            primary_key: Some(key.into()),
            secondary_key: None,
        }),
        ..Default::default()
    }
}

/// Enrolls `reg` individually with the device certificate `cert_pem` (X.509 attestation).
pub async fn enroll_x509(s: &RunningServer, reg: &str, cert_pem: &str) {
    use dps_proto::model::service::{X509Attestation, X509CertificateWithInfo, X509Certificates};
    let enrollment = IndividualEnrollment {
        attestation: AttestationMechanism {
            kind: AttestationType::X509,
            x509: Some(X509Attestation {
                client_certificates: Some(X509Certificates {
                    primary: Some(X509CertificateWithInfo {
                        certificate: Some(cert_pem.into()),
                        info: None,
                    }),
                    secondary: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    put_enrollment(s, reg, enrollment).await;
}

/// Enrolls `reg` individually with TPM attestation for the endorsement key `ek` (TPM2B_PUBLIC).
pub async fn enroll_tpm(s: &RunningServer, reg: &str, ek: &[u8]) {
    use base64::Engine as _;
    use dps_proto::model::service::TpmAttestation;
    let enrollment = IndividualEnrollment {
        attestation: AttestationMechanism {
            kind: AttestationType::Tpm,
            tpm: Some(TpmAttestation {
                endorsement_key: Some(base64::engine::general_purpose::STANDARD.encode(ek)),
                storage_root_key: None,
                endorsement_key_certificate: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    put_enrollment(s, reg, enrollment).await;
}

/// Creates or replaces the individual enrollment `reg`.
pub async fn put_enrollment(s: &RunningServer, reg: &str, enrollment: IndividualEnrollment) {
    s.services
        .engine
        .put_enrollment(chrono::Utc::now(), reg, enrollment, None)
        .await
        .unwrap();
}

/// A raw TLS connection to the MQTT port, for bytes no MQTT client library would send.
pub struct RawMqtt {
    io: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: bytes::BytesMut,
}

impl RawMqtt {
    /// Connects (TLS, trusting the server's CA) to `s`'s MQTT port.
    pub async fn open(s: &RunningServer) -> Self {
        Self::open_with(s, trusting_local_ca(s)).await
    }

    /// Connects to `s`'s MQTT port with the TLS client `config`.
    pub async fn open_with(s: &RunningServer, config: Arc<rustls::ClientConfig>) -> Self {
        let tcp = tokio::net::TcpStream::connect(s.mqtt_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(s.mqtt_addr.ip().into());
        let io = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        Self {
            io,
            buf: bytes::BytesMut::new(),
        }
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        // The server may already have closed; what it answered is read by `packet`.
        let _ = self.io.write_all(bytes).await;
        let _ = self.io.flush().await;
    }

    /// Encodes and sends a packet.
    pub async fn send_packet(&mut self, p: &rumqttc::mqttbytes::v4::Packet) {
        let mut b = bytes::BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        self.send(&b).await;
    }

    /// Ends the write side (TLS close_notify), as a client that stops mid-packet.
    pub async fn shutdown_write(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.io.shutdown().await;
    }

    /// The next packet from the server, or `None` once it closed the connection. Panics when
    /// nothing happens within `wait`.
    pub async fn packet_within(&mut self, wait: Duration) -> Option<rumqttc::mqttbytes::v4::Packet> {
        use tokio::io::AsyncReadExt;
        let read = async {
            loop {
                if !self.buf.is_empty() {
                    match rumqttc::mqttbytes::v4::Packet::read(&mut self.buf, 1 << 24) {
                        Ok(p) => return Some(p),
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("the server sent bytes that are not MQTT: {e}"),
                    }
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(wait, read)
            .await
            .expect("the server neither answered nor closed")
    }

    /// [`RawMqtt::packet_within`] 10 seconds.
    pub async fn packet(&mut self) -> Option<rumqttc::mqttbytes::v4::Packet> {
        self.packet_within(Duration::from_secs(10)).await
    }
}

/// A CONNECT packet (MQTT 3.1.1, clean session).
pub fn connect_packet(
    client_id: &str,
    username: &str,
    password: &str,
    keep_alive: u16,
) -> rumqttc::mqttbytes::v4::Packet {
    let mut c = rumqttc::mqttbytes::v4::Connect::new(client_id);
    c.keep_alive = keep_alive;
    if !username.is_empty() || !password.is_empty() {
        c.login = Some(rumqttc::mqttbytes::v4::Login::new(username, password));
    }
    rumqttc::mqttbytes::v4::Packet::Connect(c)
}

/// A TLS client trusting the server's (P-256) local CA, as the SDKs are set up.
pub fn trusting_local_ca(s: &RunningServer) -> Arc<rustls::ClientConfig> {
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    dps_pki::tls::client_config(&ca).unwrap()
}

/// Registers `reg` over raw MQTT with `password` (register, then poll) and returns the final
/// operation status; panics if any step fails.
pub async fn register_raw(s: &RunningServer, reg: &str, password: &str) -> serde_json::Value {
    register_raw_with(s, trusting_local_ca(s), reg, password).await
}

/// [`register_raw`] over a connection made with the TLS client `tls`.
pub async fn register_raw_with(
    s: &RunningServer,
    tls: Arc<rustls::ClientConfig>,
    reg: &str,
    password: &str,
) -> serde_json::Value {
    use rumqttc::mqttbytes::v4::{Packet, Publish, Subscribe};
    use rumqttc::mqttbytes::QoS;
    let mut c = RawMqtt::open_with(s, tls).await;
    c.send_packet(&connect_packet(reg, &dps_user(s, reg), password, 60))
        .await;
    match c.packet().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success),
        other => panic!("expected CONNACK 0 for {reg}, got {other:?}"),
    }
    let mut sub = Subscribe::new("$dps/registrations/res/#", QoS::AtLeastOnce);
    sub.pkid = 1;
    c.send_packet(&Packet::Subscribe(sub)).await;
    assert!(matches!(c.packet().await, Some(Packet::SubAck(_))));
    let response = |p: Option<Packet>| match p {
        Some(Packet::Publish(p)) => (
            p.topic.clone(),
            serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap(),
        ),
        other => panic!("expected a response publish, got {other:?}"),
    };
    c.send_packet(&Packet::Publish(Publish::new(
        "$dps/registrations/PUT/iotdps-register/?$rid=g1",
        QoS::AtMostOnce,
        format!(r#"{{"registrationId":"{reg}"}}"#),
    )))
    .await;
    let (topic, body) = response(c.packet().await);
    assert!(
        topic.starts_with("$dps/registrations/res/202/?$rid=g1"),
        "{topic} {body}"
    );
    let op = body["operationId"].as_str().unwrap().to_string();
    c.send_packet(&Packet::Publish(Publish::new(
        format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=g2&operationId={op}"),
        QoS::AtMostOnce,
        " ",
    )))
    .await;
    let (topic, body) = response(c.packet().await);
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=g2", "{body}");
    c.send_packet(&Packet::Disconnect).await;
    body
}

/// Starts a server on `ip` with the default message size (256 KiB, IoT Hub's D2C limit) and
/// `configure` applied, for the hub's limit tests; nothing is enrolled.
pub async fn hub_server_with(
    ip: &str,
    dir: &std::path::Path,
    configure: impl FnOnce(&mut ServerConfig),
) -> RunningServer {
    let mut c = ServerConfig::defaults();
    c.data_dir = dir.to_path_buf();
    c.hostnames = vec![ip.to_string()];
    c.bind = ip.parse::<IpAddr>().unwrap();
    configure(&mut c);
    dps_server::start(c).await.expect("server starts")
}

/// Hub device `id` authenticating with SAS keys [`KEY`] (primary and secondary).
pub fn sas_device(id: &str) -> dps_proto::model::hub::Device {
    use dps_proto::model::hub::{AuthenticationMechanism, Device, SymmetricKey};
    Device {
        device_id: id.into(),
        authentication: Some(AuthenticationMechanism {
            kind: "sas".into(),
            symmetric_key: Some(SymmetricKey {
                primary_key: Some(KEY.into()),
                secondary_key: Some(KEY.into()),
            }),
            x509_thumbprint: None,
        }),
        ..Default::default()
    }
}

/// The server's first (or only) embedded hub.
pub fn hub(s: &RunningServer) -> &dps_hub::Hub {
    &s.services.hubs.first().hub
}

/// Creates hub device `id` with SAS primary key [`KEY`] through the hub API.
pub async fn hub_device(s: &RunningServer, id: &str) {
    hub(s).put_device(sas_device(id), None).await.unwrap();
}

/// An MQTT+TLS client connected (CONNACK 0) to the hub as device `id` (key [`KEY`]), with large
/// packets allowed both ways.
pub async fn hub_mqtt(s: &RunningServer, id: &str) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let hub = s.services.identity.hub.host_name.clone();
    hub_mqtt_to(s, &hub, &hub, id)
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}"))
}

/// An MQTT+TLS connection to the server as device `id` (key [`KEY`]) naming hub `user_host` in
/// its username and `audience_host` in its token's audience: the client after CONNACK 0, or
/// the error that ended the connection.
pub async fn hub_mqtt_to(
    s: &RunningServer,
    user_host: &str,
    audience_host: &str,
    id: &str,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), rumqttc::ConnectionError> {
    hub_mqtt_with_key(s, user_host, audience_host, id, KEY).await
}

/// [`hub_mqtt_to`] with a token signed by the device key `key`.
pub async fn hub_mqtt_with_key(
    s: &RunningServer,
    user_host: &str,
    audience_host: &str,
    id: &str,
    key: &str,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), rumqttc::ConnectionError> {
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let token = build_token(&format!("{audience_host}/devices/{id}"), key, expiry, None).unwrap();
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let tls = dps_pki::tls::client_config(&ca).unwrap();
    hub_mqtt_connect(s, user_host, id, token, tls).await
}

/// An MQTT+TLS connection to the hub as X.509 device `id`, presenting `chain_pem` (leaf first)
/// with its key `key_pem` and no password: the client after CONNACK 0, or the error that ended
/// the connection.
pub async fn hub_mqtt_x509(
    s: &RunningServer,
    id: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), rumqttc::ConnectionError> {
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let tls = dps_pki::tls::client_config_with_identity(&ca, chain_pem, key_pem).unwrap();
    let hub = s.services.identity.hub.host_name.clone();
    hub_mqtt_connect(s, &hub, id, String::new(), tls).await
}

/// Connects to the hub's MQTT port as `id` with `password` over `tls`, naming `user_host`.
async fn hub_mqtt_connect(
    s: &RunningServer,
    user_host: &str,
    id: &str,
    password: String,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), rumqttc::ConnectionError> {
    use rumqttc::{Event, MqttOptions, Packet, TlsConfiguration, Transport};
    let mut o = MqttOptions::new(id, s.mqtt_addr.ip().to_string(), s.mqtt_addr.port());
    o.set_credentials(format!("{user_host}/{id}/?api-version=2021-04-12"), password);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut ev) = rumqttc::AsyncClient::new(o, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("connack within 10 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((c, ev)),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Drives `ev` until the next incoming packet that `want` accepts, or the connection ends
/// (`Err`), within 10 s.
pub async fn hub_mqtt_until<T>(
    ev: &mut rumqttc::EventLoop,
    mut want: impl FnMut(&rumqttc::Packet) -> Option<T>,
) -> Result<T, rumqttc::ConnectionError> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("an event within 10 s")?;
        if let rumqttc::Event::Incoming(p) = e {
            if let Some(t) = want(&p) {
                return Ok(t);
            }
        }
    }
}

/// Publishes `payload` on `topic` at QoS 1 and waits for the hub's PUBACK (within 10 s).
pub async fn publish_acked(
    c: &rumqttc::AsyncClient,
    ev: &mut rumqttc::EventLoop,
    topic: &str,
    payload: impl Into<Vec<u8>>,
) {
    c.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    hub_mqtt_until(ev, |p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("a message on {topic} not acknowledged: {e}"));
}

/// One request to the hub's registry REST API as `iothubowner`: status and JSON body (`Null`
/// when empty).
pub async fn hub_rest(
    s: &RunningServer,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let hub = &s.services.identity.hub;
    hub_rest_as(s, &hub.host_name, &hub.policies[0], method, path, body).await
}

/// [`hub_rest`] with a token for hub `audience_host` signed by `policy`.
pub async fn hub_rest_as(
    s: &RunningServer,
    audience_host: &str,
    policy: &dps_core::auth::SharedAccessPolicy,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let config = dps_pki::tls::client_config(&ca).unwrap();
    let tcp = tokio::net::TcpStream::connect(s.https_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(s.https_addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let sas = build_token(audience_host, &policy.primary_key, expiry, Some(&policy.key_name)).unwrap();
    let sep = if path.contains('?') { '&' } else { '?' };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{path}{sep}api-version=2021-04-12"))
        .header("host", s.https_addr.ip().to_string())
        .header("authorization", sas)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, json)
}

/// An HTTP answer: status, lower-cased headers, JSON body (`Null` when there is none).
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl HttpReply {
    /// A header's value (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to the server's HTTPS listener over a new TLS connection
/// (`Connection: close`), with an optional `Authorization` and JSON body.
pub async fn https(
    s: &RunningServer,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&serde_json::Value>,
) -> HttpReply {
    https_with(s, trusting_local_ca(s), method, path, auth, body).await
}

/// [`https`] over a connection made with the TLS client `tls`.
pub async fn https_with(
    s: &RunningServer,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&serde_json::Value>,
) -> HttpReply {
    let mut headers = vec![
        ("accept", "application/json"),
        ("content-type", "application/json; charset=utf-8"),
    ];
    headers.extend(auth.map(|a| ("authorization", a)));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, headers, body) = https_raw(s, tls, method, path, &headers, body.as_bytes()).await;
    HttpReply {
        status,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    }
}

/// One HTTP/1.1 request with any headers and body (`Host` is the server's address unless
/// `headers` name one) over a new TLS connection: status, lower-cased headers, body bytes.
pub async fn https_raw(
    s: &RunningServer,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = tokio_rustls::TlsConnector::from(tls);
    let address = s.https_addr.ip().to_string();
    let tcp = tokio::net::TcpStream::connect(s.https_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(address.clone()).unwrap();
    let mut stream = tls.connect(name, tcp).await.unwrap();
    let host = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or(address.as_str(), |(_, v)| v);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers.iter().filter(|(n, _)| !n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

/// Registers `reg` (enrolled with [`KEY`]) through the engine, as a device over any transport
/// would; its registration state once assigned.
pub async fn register_through_engine(s: &RunningServer, reg: &str) -> dps_proto::model::service::RegistrationState {
    let engine = &s.services.engine;
    let req = dps_core::DeviceRequest {
        id_scope: s.services.identity.id_scope.clone(),
        registration_id: reg.into(),
        credential: dps_core::Credential::Sas(dps_sas(s, reg, KEY)),
        api_version: None,
        source: None,
        transport: Default::default(),
    };
    let now = chrono::Utc::now();
    let op = engine
        .register(now, &req, &dps_proto::model::device::DeviceRegistration::default())
        .await
        .unwrap();
    let id = op.operation().unwrap().operation_id.clone();
    let done = engine.operation_status(now, &req, &id).await.unwrap().body;
    assert_eq!(
        done.status,
        dps_proto::model::service::RegistrationStatus::Assigned,
        "{done:?}"
    );
    done.registration_state
}

/// A certificate issued at registration: the chain (base64 DER, leaf first), the same as PEM,
/// and the device's key (PEM).
pub struct Issued {
    pub chain: Vec<String>,
    pub chain_pem: String,
    pub key_pem: String,
}

/// Creates credential policy `fleet` (or keeps it) and the symmetric-key enrollment `reg` (key
/// [`KEY`]) naming it.
pub async fn enroll_with_credential_policy(s: &RunningServer, reg: &str) {
    let now = chrono::Utc::now();
    let _ = s
        .services
        .engine
        .put_credential_policy(now, "fleet", Default::default(), Some("*"))
        .await
        .unwrap();
    put_enrollment(
        s,
        reg,
        IndividualEnrollment {
            attestation: symmetric_key(KEY),
            credential_policy_name: Some("fleet".into()),
            ..Default::default()
        },
    )
    .await;
}

/// [`enroll_with_credential_policy`], then registers `reg` with a P-256 CSR through the Rust
/// client over MQTT (the server's host name is `ip`): what was issued.
pub async fn provision_with_csr(s: &RunningServer, ip: &str, reg: &str) -> Issued {
    use base64::Engine as _;
    use std::sync::Arc;
    enroll_with_credential_policy(s, reg).await;
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let (key_pem, csr) = dps_pki::csr::new_key_and_request(reg, dps_pki::ca::KeyAlgorithm::EcdsaP256).unwrap();
    let provider = Arc::new(dps_client::SymmetricKeyProvider::new(reg, KEY).unwrap());
    let registration = dps_client::ProvisioningClient::new(ip, &s.services.identity.id_scope, provider, &ca)
        .with_port(s.mqtt_addr.port())
        .with_csr(csr)
        .register(None)
        .await
        .unwrap();
    let chain = registration.issued_certificate_chain.unwrap();
    let chain_pem = chain
        .iter()
        .map(|c| {
            let der = base64::engine::general_purpose::STANDARD.decode(c).unwrap();
            dps_pki::pem::to_pem("CERTIFICATE", &der)
        })
        .collect();
    Issued {
        chain,
        chain_pem,
        key_pem,
    }
}

/// Checks `chain` (a registration's `issuedCertificateChain`) as a device would: three base64
/// DER certificates, the first for `reg` and for the key of `csr_der`, signed by the second.
pub fn assert_issued_for(chain: &serde_json::Value, reg: &str, csr_der: &[u8]) {
    use base64::Engine as _;
    let chain: Vec<Vec<u8>> = chain
        .as_array()
        .unwrap_or_else(|| panic!("no issued chain: {chain}"))
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(chain.len(), 3, "leaf, issuing CA, root");
    let leaf = dps_pki::info::summarize(&chain[0]).unwrap();
    assert_eq!(leaf.common_name.as_deref(), Some(reg));
    let request = dps_pki::csr::CertificateRequest::parse(csr_der).unwrap();
    let cert = dps_pki::x509::parse(&chain[0]).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        request.public_key_bits(),
        "the certificate is for the request's key"
    );
    dps_pki::chain::verify_issued_by(&chain[0], &chain[1], chrono::Utc::now()).unwrap();
}
