//! What the in-process server tests share: a `dps serve` on a loopback address with one
//! symmetric-key enrollment (`dev-1`, [`KEY`]), and the DPS MQTT credentials for it.

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
    let mut c = ServerConfig::defaults();
    c.data_dir = dir.to_path_buf();
    c.hostnames = vec![ip.to_string()];
    c.bind = ip.parse::<IpAddr>().unwrap();
    c.max_message_bytes = MAX_MESSAGE_BYTES;
    let s = dps_server::start(c).await.expect("server starts");
    let enrollment = IndividualEnrollment {
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some(KEY.into()),
                secondary_key: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    s.services
        .engine
        .put_enrollment(chrono::Utc::now(), "dev-1", enrollment, None)
        .await
        .unwrap();
    s
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

/// [`server`] with its configuration adjusted by `tweak` before it starts (limits, say).
#[allow(dead_code)] // not every test binary tweaks the configuration
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
#[allow(dead_code)]
pub async fn enroll(s: &RunningServer, reg: &str, key: &str) {
    let enrollment = IndividualEnrollment {
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some(key.into()),
                secondary_key: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    s.services
        .engine
        .put_enrollment(chrono::Utc::now(), reg, enrollment, None)
        .await
        .unwrap();
}

/// An HTTP answer: status, lower-cased headers, JSON body (`Null` when there is none).
#[allow(dead_code)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

#[allow(dead_code)]
impl HttpReply {
    /// A header's value (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to the server's HTTPS listener over a new TLS connection
/// (`Connection: close`), with an optional `Authorization` and JSON body.
#[allow(dead_code)]
pub async fn https(
    s: &RunningServer,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&serde_json::Value>,
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let tls = tokio_rustls::TlsConnector::from(dps_pki::tls::client_config(&ca).unwrap());
    let host = s.https_addr.ip().to_string();
    let tcp = tokio::net::TcpStream::connect(s.https_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(host.clone()).unwrap();
    let mut stream = tls.connect(name, tcp).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete HTTP response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}
