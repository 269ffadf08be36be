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

/// [`server`] with `edit` applied to the configuration first (limits, deadlines).
pub async fn server_with(ip: &str, dir: &std::path::Path, edit: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut c = ServerConfig::defaults();
    c.data_dir = dir.to_path_buf();
    c.hostnames = vec![ip.to_string()];
    c.bind = ip.parse::<IpAddr>().unwrap();
    c.max_message_bytes = MAX_MESSAGE_BYTES;
    edit(&mut c);
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
