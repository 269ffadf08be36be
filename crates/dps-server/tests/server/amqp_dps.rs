//! The Rust device SDK (`dps-client`) over AMQP against `dps serve` in-process: provisioning
//! SASL PLAIN with a SAS token (individual and group-derived keys), an X.509 device known by its
//! TLS client certificate (no SASL), the SASL `TPM` mechanism with a software TPM, and the
//! refusals: a wrong key at SASL, a request the server rejects (its DPS error JSON read back as
//! the typed error); then the hub over AMQP (`AmqpHubClient`: CBS put-token, telemetry, twin).

use crate::common;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_client::{
    AmqpHubClient, AttestationKind, ClientError, PollOptions, ProvisioningClient, SecurityProvider,
    SymmetricKeyProvider, TpmPublicKeys, Transport, X509Provider,
};
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_proto::model::service::{
    EnrollmentGroup, IndividualEnrollment, ProvisioningStatus, RegistrationStatus, Substatus,
};
use dps_server::RunningServer;
use dps_tpm::software::SoftwareTpm;
use parking_lot::Mutex;

use crate::common::{server, KEY};

const GROUP_KEY: &str = "HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";

/// The CA the server's certificate chains to, PEM.
fn server_ca(s: &RunningServer) -> String {
    std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap()
}

/// An X.509 device `id` with a certificate issued by `ca`, enrolled individually.
async fn x509_device(s: &RunningServer, ca: &LocalCa, id: &str) -> Arc<X509Provider> {
    let device = ca.issue_device_certificate(id, 30, KeyAlgorithm::EcdsaP256).unwrap();
    common::enroll_x509(s, id, &device.cert_pem).await;
    Arc::new(X509Provider::from_pem(&device.cert_pem, &device.key_pem).unwrap())
}

/// Connects `device_id` to `s`'s hub over AMQP.
async fn hub_amqp(
    s: &RunningServer,
    device_id: &str,
    provider: Arc<dyn SecurityProvider>,
) -> Result<AmqpHubClient, ClientError> {
    let host = s.services.identity.hub.host_name.clone();
    let port = s.amqp_addr.port();
    let timeout = Duration::from_secs(10);
    AmqpHubClient::connect(&host, port, device_id, provider, &server_ca(s), timeout, timeout * 60).await
}

/// A client for `s`'s AMQP port, polling at once (the server assigns synchronously).
fn client(s: &RunningServer, provider: Arc<dyn SecurityProvider>) -> ProvisioningClient {
    let ca = server_ca(s);
    let fast = PollOptions {
        max_interval: Duration::ZERO,
        ..PollOptions::default()
    };
    ProvisioningClient::new(
        &s.amqp_addr.ip().to_string(),
        &s.services.identity.id_scope,
        provider,
        &ca,
    )
    .with_transport(Transport::Amqp)
    .with_port(s.amqp_addr.port())
    .with_poll_options(fast)
    .with_timeout(Duration::from_secs(30))
}

#[tokio::test]
async fn symmetric_keys_register_with_sasl_plain() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.38.1", dir.path()).await;
    s.services
        .engine
        .put_group(
            chrono::Utc::now(),
            "line-a",
            EnrollmentGroup {
                attestation: common::symmetric_key(GROUP_KEY),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();

    // Individual enrollment, with a custom payload; a second registration reports the same hub.
    let provider = Arc::new(SymmetricKeyProvider::new("dev-1", KEY).unwrap());
    let r = client(&s, provider.clone())
        .register(Some(serde_json::json!({"model": "x1"})))
        .await
        .unwrap();
    assert_eq!(r.status, RegistrationStatus::Assigned);
    assert_eq!((r.registration_id.as_str(), r.device_id.as_str()), ("dev-1", "dev-1"));
    assert_eq!(r.assigned_hub, s.services.identity.hub.host_name);
    assert_eq!(r.substatus, Some(Substatus::InitialAssignment));
    assert!(!r.operation_id.is_empty());
    let again = client(&s, provider).register(None).await.unwrap();
    assert_eq!(again.device_id, "dev-1");
    assert!(common::hub(&s).get_device("dev-1").await.is_ok());

    // Group-derived key.
    let member = Arc::new(SymmetricKeyProvider::from_group_key("unit-7", GROUP_KEY).unwrap());
    let r = client(&s, member).register(None).await.unwrap();
    assert_eq!(r.device_id, "unit-7");
    assert_eq!(r.enrollment_group_id.as_deref(), Some("line-a"));
    s.shutdown().await;
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.38.2", dir.path()).await;

    // A SAS signed with the wrong key: refused in the SASL layer, before the connection opens.
    let wrong = Arc::new(SymmetricKeyProvider::new("dev-1", GROUP_KEY).unwrap());
    let err = client(&s, wrong).register(None).await.unwrap_err();
    match &err {
        ClientError::SaslRefused { mechanism, code } => {
            assert_eq!((mechanism.as_str(), code.as_str()), ("PLAIN", "auth"))
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("SASL PLAIN authentication failed"), "{err}");
    assert!(!err.is_transient());
    // Not enrolled at all reads the same: nobody learns which ids are enrolled.
    let stranger = Arc::new(SymmetricKeyProvider::new("nobody", KEY).unwrap());
    assert!(matches!(
        client(&s, stranger).register(None).await,
        Err(ClientError::SaslRefused { .. })
    ));

    // A payload over the link's max-message-size (the server's limit) is refused before it is
    // sent, clearly.
    let provider = Arc::new(SymmetricKeyProvider::new("dev-1", KEY).unwrap());
    let big = serde_json::json!({ "blob": "x".repeat(common::MAX_MESSAGE_BYTES) });
    match client(&s, provider).register(Some(big)).await {
        Err(ClientError::Unsupported(m)) => assert!(m.contains("larger than the server accepts"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A disabled enrollment authenticates, and its registration's result is the typed error.
    let off = IndividualEnrollment {
        attestation: common::symmetric_key(KEY),
        provisioning_status: Some(ProvisioningStatus::Disabled),
        ..Default::default()
    };
    common::put_enrollment(&s, "off", off).await;
    let provider = Arc::new(SymmetricKeyProvider::new("off", KEY).unwrap());
    let err = client(&s, provider).register(None).await.unwrap_err();
    assert_eq!(err.error_code(), Some(dps_proto::codes::ENROLLMENT_DISABLED), "{err:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn x509_device_registers_with_its_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.38.3", dir.path()).await;
    let ca = LocalCa::generate("amqp test CA").unwrap();
    let provider = x509_device(&s, &ca, "dev-x509").await;
    let r = client(&s, provider).register(None).await.unwrap();
    assert_eq!(r.device_id, "dev-x509");
    assert!(r.registration_state.x509.is_some(), "{:?}", r.registration_state);

    // Another device's certificate may not register as dev-x509: the link is refused.
    let other = ca
        .issue_device_certificate("dev-other", 30, KeyAlgorithm::EcdsaP256)
        .unwrap();
    let provider = Arc::new(X509Provider::from_pem(&other.cert_pem, &other.key_pem).unwrap());
    match client(&s, provider).register(None).await {
        Err(ClientError::Service {
            status: 401, message, ..
        }) => {
            assert!(
                message.contains("'CN=dev-other'") && message.contains("is not enrolled"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    s.shutdown().await;
}

/// A TPM device whose TPM is `dps_tpm::software::SoftwareTpm`: the same activation (credential
/// blob, secret, duplicate) as a TPM 2.0 performs, the imported key held in memory.
struct SoftTpmProvider {
    tpm: SoftwareTpm,
    registration_id: String,
    key: Mutex<Option<Vec<u8>>>,
    imports: Mutex<u32>,
}

impl SecurityProvider for SoftTpmProvider {
    fn registration_id(&self) -> &str {
        &self.registration_id
    }
    fn kind(&self) -> AttestationKind {
        AttestationKind::Tpm
    }
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        let key = self.key.lock();
        let key = key
            .as_ref()
            .ok_or_else(|| ClientError::Credential("no key imported yet".into()))?;
        Ok(dps_proto::sas::hmac_sha256(key, data))
    }
    fn tpm_keys(&self) -> Result<TpmPublicKeys, ClientError> {
        Ok(TpmPublicKeys {
            endorsement_key: self.tpm.endorsement_key(),
            storage_root_key: self.tpm.storage_root_key(),
        })
    }
    fn import_authentication_key(&self, blob: &[u8]) -> Result<(), ClientError> {
        let key = self
            .tpm
            .activate(blob)
            .map_err(|e| ClientError::Credential(e.to_string()))?;
        *self.key.lock() = Some(key.to_vec());
        *self.imports.lock() += 1;
        Ok(())
    }
}

#[tokio::test]
async fn tpm_registers_through_the_sasl_tpm_mechanism() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.38.4", dir.path()).await;
    let tpm = SoftwareTpm::generate(&mut rand::thread_rng()).unwrap();
    let reg = dps_tpm::registration_id(&tpm.endorsement_key());
    common::enroll_tpm(&s, &reg, &tpm.endorsement_key()).await;
    let provider = Arc::new(SoftTpmProvider {
        tpm,
        registration_id: reg.clone(),
        key: Mutex::new(None),
        imports: Mutex::new(0),
    });
    let r = client(&s, provider.clone()).register(None).await.unwrap();
    assert_eq!(r.device_id, reg);
    // Two imports: the SASL challenge's key, then the hub key from the assigned registration,
    // which is the key the hub now knows the device by.
    assert_eq!(*provider.imports.lock(), 2);
    let device = common::hub(&s).get_device(&reg).await.unwrap();
    let hub_key = device
        .authentication
        .unwrap()
        .symmetric_key
        .unwrap()
        .primary_key
        .unwrap();
    assert_eq!(B64.decode(hub_key).unwrap(), provider.key.lock().clone().unwrap());

    // Re-registering the same TPM takes a new challenge.
    let again = client(&s, provider.clone()).register(None).await.unwrap();
    assert_eq!(again.device_id, reg);
    assert_eq!(*provider.imports.lock(), 4);

    // Another TPM, not enrolled: refused in the SASL layer at the challenge.
    let stranger = Arc::new(SoftTpmProvider {
        tpm: SoftwareTpm::generate(&mut rand::thread_rng()).unwrap(),
        registration_id: reg.clone(),
        key: Mutex::new(None),
        imports: Mutex::new(0),
    });
    match client(&s, stranger.clone()).register(None).await {
        Err(ClientError::SaslRefused { mechanism, code }) => {
            assert_eq!((mechanism.as_str(), code.as_str()), ("TPM", "auth"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(*stranger.imports.lock(), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn throttled_requests_are_rejected_and_retried_after_the_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::server_with("127.0.38.5", dir.path(), |c| c.limits.registrations_per_second = 1).await;
    let devices = ["dev-2", "dev-3", "dev-4", "dev-5"];
    for d in devices {
        common::enroll(&s, d, KEY).await;
    }
    // Four devices at once against a bucket of one registration per second: the quota lets
    // them through no faster than one a second, so all but one are rejected with 429 and
    // `retry-after` in the rejection's info at least once, wait it out and complete.
    let started = std::time::Instant::now();
    let runs = devices.iter().map(|d| {
        let c = client(&s, Arc::new(SymmetricKeyProvider::new(*d, KEY).unwrap()));
        async move { c.register(None).await }
    });
    for (d, r) in devices.iter().zip(futures_util::future::join_all(runs).await) {
        assert_eq!(r.unwrap_or_else(|e| panic!("{d}: {e}")).device_id, *d);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "four registrations at one a second: {:?}",
        started.elapsed()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn provisioned_devices_use_the_hub_over_amqp() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.38.6", dir.path()).await;
    let initial = dps_proto::model::service::InitialTwin {
        tags: None,
        properties: Some(dps_proto::model::service::InitialTwinProperties {
            desired: Some(serde_json::json!({"interval": 30})),
        }),
    };
    common::put_enrollment(
        &s,
        "dev-twin",
        IndividualEnrollment {
            attestation: common::symmetric_key(KEY),
            initial_twin: Some(initial),
            ..Default::default()
        },
    )
    .await;
    let provider = Arc::new(SymmetricKeyProvider::new("dev-twin", KEY).unwrap());
    let r = client(&s, provider.clone()).register(None).await.unwrap();
    assert_eq!(r.assigned_hub, s.services.identity.hub.host_name);

    // SAS device: CBS put-token, then telemetry with its properties and the twin.
    let mut events = common::hub(&s).subscribe_events();
    let hub = hub_amqp(&s, &r.device_id, provider.clone()).await.unwrap();
    assert!(hub.is_connected());
    assert_eq!(hub.device_id(), "dev-twin");
    hub.send_event(
        r#"{"t":1}"#,
        &[("$.ct", "application/json"), ("$.ce", "utf-8"), ("kind", "test")],
    )
    .await
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("telemetry within 5 s")
        .unwrap();
    assert_eq!(msg.device_id, "dev-twin");
    assert_eq!(msg.body_json(), Some(serde_json::json!({"t": 1})));
    assert!(
        msg.properties.contains(&("kind".into(), "test".into())),
        "{:?}",
        msg.properties
    );
    let twin = hub.get_twin().await.unwrap();
    assert_eq!(twin["desired"]["interval"], 30, "{twin}");
    assert!(twin["reported"].is_object(), "{twin}");
    // Twice on the same links.
    assert_eq!(hub.get_twin().await.unwrap()["desired"]["interval"], 30);
    hub.disconnect().await.unwrap();

    // A token signed with another key: the CBS reply refuses it, with the hub's reason.
    let wrong = Arc::new(SymmetricKeyProvider::new("dev-twin", GROUP_KEY).unwrap());
    match hub_amqp(&s, &r.device_id, wrong).await {
        Err(ClientError::Service {
            status: 401, message, ..
        }) => assert!(message.contains("CBS put-token"), "{message}"),
        other => panic!("{other:?}"),
    }
    s.shutdown().await;
}

#[tokio::test]
async fn x509_devices_use_the_hub_over_amqp_without_cbs() {
    let dir = tempfile::tempdir().unwrap();
    let s = server("127.0.38.7", dir.path()).await;
    let ca = LocalCa::generate("amqp hub test CA").unwrap();
    let provider = x509_device(&s, &ca, "dev-x509").await;
    let r = client(&s, provider.clone()).register(None).await.unwrap();
    assert_eq!(r.assigned_hub, s.services.identity.hub.host_name);
    let mut events = common::hub(&s).subscribe_events();
    let hub = hub_amqp(&s, "dev-x509", provider).await.unwrap();
    hub.send_event("x", &[]).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("telemetry within 5 s")
        .unwrap();
    assert_eq!((msg.device_id.as_str(), &msg.body[..]), ("dev-x509", &b"x"[..]));
    hub.get_twin().await.unwrap();
    hub.disconnect().await.unwrap();
    s.shutdown().await;
}
