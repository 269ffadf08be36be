//! The Rust device SDK (`dps-client`) against a real `dps serve`: registration over both
//! transports, typed errors, and the hub session (telemetry, twin read, reported patch,
//! desired-property notifications).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Server;
use dps_client::{
    ClientError, HubClient, PollOptions, ProvisioningClient, SecurityProvider, SymmetricKeyProvider, Transport,
};
use dps_proto::codes;
use dps_proto::model::service::RegistrationStatus;
use serde_json::{json, Value};

const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY2: &str = "HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";

fn client(s: &Server, provider: Arc<dyn SecurityProvider>, transport: Transport) -> ProvisioningClient {
    let info = s.info();
    // Our server assigns synchronously: poll at once.
    let fast = PollOptions {
        max_interval: Duration::ZERO,
        ..PollOptions::default()
    };
    ProvisioningClient::new(&s.ip, info["idScope"].as_str().unwrap(), provider, &s.ca())
        .with_transport(transport)
        .with_poll_options(fast)
        .with_timeout(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread")]
async fn register_then_use_the_hub() {
    let s = Server::start("127.0.0.70");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "sdk-dev",
        "--primary-key",
        KEY1,
        "--initial-twin-properties",
        r#"{"interval":30}"#,
    ]);
    let provider = Arc::new(SymmetricKeyProvider::new("sdk-dev", KEY1).unwrap());
    for transport in [Transport::Mqtt, Transport::Https] {
        let r = client(&s, provider.clone(), transport)
            .register(Some(json!({"model": "x1"})))
            .await
            .unwrap();
        assert_eq!(
            (r.assigned_hub.as_str(), r.device_id.as_str()),
            ("127.0.0.70", "sdk-dev")
        );
        assert_eq!(r.status, RegistrationStatus::Assigned);
        assert_eq!(r.registration_id, "sdk-dev");
        assert!(!r.operation_id.is_empty());
    }

    let r = client(&s, provider.clone(), Transport::Mqtt)
        .register(None)
        .await
        .unwrap();
    let hub = HubClient::from_registration(&r, provider, &s.ca())
        .connect()
        .await
        .unwrap();
    assert!(hub.is_connected());
    let mut desired = hub.desired_patches().expect("the stream can be taken once");
    assert!(hub.desired_patches().is_none());

    // The initial twin from the enrollment is there.
    let twin = hub.get_twin().await.unwrap();
    assert_eq!(twin["desired"]["interval"], 30, "{twin}");

    let v1 = hub
        .patch_reported(json!({"firmware": "1.0.0", "temp": 20}))
        .await
        .unwrap();
    let v2 = hub.patch_reported(json!({"temp": null})).await.unwrap();
    assert!(v1.is_some() && v2 > v1, "{v1:?} {v2:?}");
    let twin = hub.get_twin().await.unwrap();
    assert_eq!(twin["reported"]["firmware"], "1.0.0");
    assert!(twin["reported"].get("temp").is_none());

    // A service-side desired change reaches the device.
    let svc = s.ok(&[
        "hub",
        "device",
        "twin",
        "update",
        "-d",
        "sdk-dev",
        "--desired",
        r#"{"interval":5}"#,
    ]);
    assert!(svc.contains("\"interval\": 5"), "{svc}");
    let patch = tokio::time::timeout(Duration::from_secs(10), desired.recv())
        .await
        .expect("patch within 10 s")
        .unwrap();
    assert_eq!(patch.patch["interval"], 5);
    assert!(patch.version.is_some());

    for i in 0..3 {
        hub.send_event(
            format!(r#"{{"n":{i}}}"#),
            &[("$.ct", "application/json"), ("$.ce", "utf-8"), ("kind", "test")],
        )
        .await
        .unwrap();
    }
    let out = s.ok(&[
        "hub",
        "monitor-events",
        "--from-sequence",
        "0",
        "--timeout",
        "2",
        "--json",
    ]);
    let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 3, "{out}");
    assert_eq!(events[2]["event"]["payload"]["n"], 2);
    assert_eq!(events[0]["event"]["properties"]["application"]["kind"], "test");

    // The reported properties are visible through the registry API.
    let twin: Value = serde_json::from_str(&s.ok(&["hub", "device", "twin", "show", "-d", "sdk-dev"])).unwrap();
    assert_eq!(twin["properties"]["reported"]["firmware"], "1.0.0");

    hub.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn group_key_provider_registers_over_both_transports() {
    let s = Server::start("127.0.0.71");
    s.ok(&[
        "enrollment-group",
        "create",
        "--group-id",
        "line-a",
        "--primary-key",
        KEY2,
    ]);
    for (id, transport) in [("unit-1", Transport::Mqtt), ("unit-2", Transport::Https)] {
        let provider = Arc::new(SymmetricKeyProvider::from_group_key(id, KEY2).unwrap());
        let r = client(&s, provider.clone(), transport).register(None).await.unwrap();
        assert_eq!(r.device_id, id);
        assert_eq!(r.enrollment_group_id.as_deref(), Some("line-a"));
        // The hub knows the derived key.
        let hub = HubClient::builder(&r.assigned_hub, &r.device_id, provider, &s.ca())
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        hub.send_event("x", &[]).await.unwrap();
        hub.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_typed() {
    let s = Server::start("127.0.0.72");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "off",
        "--primary-key",
        KEY1,
        "--provisioning-status",
        "disabled",
    ]);
    s.ok(&["enrollment", "create", "--registration-id", "on", "--primary-key", KEY1]);
    for transport in [Transport::Mqtt, Transport::Https] {
        // Wrong key: HTTPS gets the service's 401 error body; MQTT a CONNACK 5, as from Azure.
        let wrong = Arc::new(SymmetricKeyProvider::new("on", KEY2).unwrap());
        match (transport, client(&s, wrong, transport).register(None).await) {
            (
                Transport::Https,
                Err(ClientError::Service {
                    status: 401,
                    error_code: Some(codes::UNAUTHORIZED),
                    message,
                    ..
                }),
            ) => assert!(!message.is_empty()),
            (Transport::Mqtt, Err(ClientError::ConnectionRefused { reason })) => {
                assert_eq!(reason, "NotAuthorized")
            }
            (_, other) => panic!("{transport}: {other:?}"),
        }
        // Disabled enrollment: 401003, whichever way the server reports it.
        let off = Arc::new(SymmetricKeyProvider::new("off", KEY1).unwrap());
        let err = client(&s, off, transport).register(None).await.unwrap_err();
        assert_eq!(
            err.error_code(),
            Some(codes::ENROLLMENT_DISABLED),
            "{transport}: {err:?}"
        );
        if let ClientError::RegistrationFailed { status, .. } = &err {
            assert_eq!(*status, RegistrationStatus::Disabled);
        }
        assert!(!err.is_transient());
    }
    // Nothing listening: a connection error, marked transient.
    let p = Arc::new(SymmetricKeyProvider::new("on", KEY1).unwrap());
    let err = client(&s, p.clone(), Transport::Https)
        .with_port(1)
        .register(None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connection { .. }), "{err:?}");
    assert!(err.is_transient());
    // A CA that is not a certificate: nothing is sent.
    let err = ProvisioningClient::new(&s.ip, "x", p.clone(), "not a pem")
        .register(None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    // The hub refuses a wrong key at CONNECT.
    s.ok(&[
        "device",
        "provision",
        "--registration-id",
        "on",
        "--symmetric-key",
        KEY1,
        "--no-message",
    ]);
    let wrong = Arc::new(SymmetricKeyProvider::new("on", KEY2).unwrap());
    let err = HubClient::builder(&s.ip, "on", wrong, &s.ca())
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ConnectionRefused { .. }), "{err:?}");
}

/// A custom security provider — here an "HSM" that only exposes a signing operation and never
/// hands out its key — plugs into the same clients.
struct CountingHsm {
    registration_id: String,
    key: Vec<u8>,
    signatures: std::sync::atomic::AtomicUsize,
}

impl SecurityProvider for CountingHsm {
    fn registration_id(&self) -> &str {
        &self.registration_id
    }

    fn kind(&self) -> dps_client::AttestationKind {
        dps_client::AttestationKind::SymmetricKey
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.signatures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(dps_proto::sas::hmac_sha256(&self.key, data))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_security_provider_provisions() {
    let s = Server::start("127.0.0.78");
    s.ok(&[
        "enrollment",
        "create",
        "--registration-id",
        "hsm-1",
        "--primary-key",
        KEY1,
    ]);
    use base64::Engine as _;
    let hsm = Arc::new(CountingHsm {
        registration_id: "hsm-1".into(),
        key: base64::engine::general_purpose::STANDARD.decode(KEY1).unwrap(),
        signatures: Default::default(),
    });
    let r = client(&s, hsm.clone(), Transport::Mqtt).register(None).await.unwrap();
    assert_eq!(r.status, RegistrationStatus::Assigned);
    let hub = HubClient::builder(&r.assigned_hub, &r.device_id, hsm.clone(), &s.ca())
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    hub.send_event("from an HSM", &[]).await.unwrap();
    hub.disconnect().await.unwrap();
    assert!(
        hsm.signatures.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "DPS and hub tokens were signed by the provider"
    );
}
