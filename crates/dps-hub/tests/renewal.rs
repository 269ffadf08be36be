//! Certificate renewal bounds (`$iothub/credentials/…`): a device renews at most once per
//! minimum interval (`429002`), and of two renewals racing for one device only the first is
//! recorded (`409005` for the other). The end-to-end renewal over MQTT, with the provisioning
//! engine issuing, is in dps-server's `credential_renewal` test; here the hub's own rules are
//! driven through its sessions, with a CA of the test's issuing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use dps_core::hub::{DeviceAuth, DeviceProvisioning, HubRegistry, TwinPolicy};
use dps_core::{CertificateIssuer, FakeClock, IssueError, IssuedCertificate};
use dps_hub::{ClientCertificate, DeviceSession, Hub, HubConfig, Outbound, OutboundKind, RenewalLimits};
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_pki::csr::{CertificateRequest, IssuePolicy};
use dps_proto::hub_mqtt::{issue_certificate_topic, HubUsername};
use serde_json::Value;
use tokio::sync::Notify;

const HOST: &str = "hub.example.test";
const DEVICE: &str = "renewing-dev";
const NOW: i64 = 1_750_000_000;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(NOW + secs, 0).unwrap()
}

/// Issues from a test CA; the first request waits at `gate` (after saying so on `entered`),
/// so that a test can let another renewal overtake it.
struct GatedIssuer {
    ca: LocalCa,
    hold_first: AtomicBool,
    entered: Notify,
    gate: Notify,
}

#[async_trait]
impl CertificateIssuer for GatedIssuer {
    async fn issue(
        &self,
        now: DateTime<Utc>,
        _policy: &str,
        common_name: &str,
        csr: &str,
    ) -> Result<IssuedCertificate, IssueError> {
        if self.hold_first.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.gate.notified().await;
        }
        let der = B64.decode(csr).map_err(|e| IssueError::Request(e.to_string()))?;
        let request = CertificateRequest::parse(&der).map_err(|e| IssueError::Request(e.to_string()))?;
        let policy = IssuePolicy {
            common_name: common_name.to_string(),
            validity_days: 30,
            now,
            crl_url: None,
        };
        let leaf = self.ca.issue_for_request(&request, &policy).unwrap();
        Ok(IssuedCertificate {
            sha256_thumbprint: dps_pki::thumbprint::sha256_thumbprint(&leaf),
            chain: vec![B64.encode(&leaf)],
        })
    }
}

/// A hub whose device `DEVICE` holds a certificate (thumbprint `first`) issued under a policy.
async fn hub_with_issued_device(first: &str, issuer: &Arc<dyn CertificateIssuer>) -> Hub {
    let hub = Hub::open_with_clock(HubConfig::in_memory(HOST), Arc::new(FakeClock::at(at(0)))).unwrap();
    hub.set_certificate_issuer(
        issuer,
        RenewalLimits {
            grace: Duration::from_secs(3600),
            min_interval: Duration::from_secs(60),
        },
    );
    let device = DeviceProvisioning {
        device_id: DEVICE.into(),
        auth: DeviceAuth::SelfSigned {
            primary_thumbprint: first.into(),
            secondary_thumbprint: String::new(),
        },
        capabilities: Default::default(),
        initial_twin: None,
        twin_policy: TwinPolicy::Keep,
        operation_id: "op-1".into(),
        credential_policy: Some("fleet".into()),
    };
    HubRegistry::upsert_device(&hub, HOST, &device).await.unwrap();
    hub
}

/// A session of `DEVICE` presenting the certificate with SHA-256 thumbprint `thumbprint`.
async fn connect(hub: &Hub, thumbprint: &str) -> DeviceSession {
    let username = HubUsername::parse(&format!("{HOST}/{DEVICE}/?api-version=2021-04-12")).unwrap();
    let presented = ClientCertificate::with_thumbprints("0".repeat(40), thumbprint);
    let identity = hub
        .authenticate(NOW as u64, &username, None, Some(presented))
        .await
        .unwrap();
    hub.open_session(identity).await.unwrap().0
}

/// Asks for a renewal with a fresh CSR; returns the answers as (status, body).
async fn renew(session: &DeviceSession, now: DateTime<Utc>, rid: &str) -> Vec<(u16, Value)> {
    let (_, csr) = dps_pki::csr::new_key_and_request(DEVICE, KeyAlgorithm::EcdsaP256).unwrap();
    let body = serde_json::json!({"id": DEVICE, "csr": B64.encode(&csr)}).to_string();
    let answers = session
        .handle_publish(now, &issue_certificate_topic(rid), body.as_bytes())
        .await
        .unwrap();
    answers.iter().map(answer).collect()
}

fn answer(o: &Outbound) -> (u16, Value) {
    let OutboundKind::CredentialResponse { status, .. } = &o.kind else {
        panic!("not a credential response: {o:?}");
    };
    (*status, serde_json::from_slice(&o.payload).unwrap())
}

async fn primary_thumbprint(hub: &Hub) -> String {
    let device = hub.get_device(DEVICE).await.unwrap();
    device
        .authentication
        .unwrap()
        .x509_thumbprint
        .unwrap()
        .primary_thumbprint
        .unwrap()
}

fn issued_thumbprint(answers: &[(u16, Value)]) -> String {
    let (status, body) = answers.last().unwrap();
    assert_eq!(*status, 200, "{answers:?}");
    let leaf = B64.decode(body["certificates"][0].as_str().unwrap()).unwrap();
    dps_pki::thumbprint::sha256_thumbprint(&leaf)
}

fn error_of(answers: &[(u16, Value)]) -> (u16, u64, String, String) {
    let (status, body) = answers.last().unwrap();
    (
        *status,
        body["errorCode"].as_u64().unwrap(),
        body["info"]["credentialError"].as_str().unwrap().to_string(),
        body["info"]["credentialMessage"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_device_renews_at_most_once_per_interval() {
    let first = "A".repeat(64);
    let issuer: Arc<dyn CertificateIssuer> = Arc::new(GatedIssuer {
        ca: LocalCa::generate("renewal test CA").unwrap(),
        hold_first: AtomicBool::new(false),
        entered: Notify::new(),
        gate: Notify::new(),
    });
    let hub = hub_with_issued_device(&first, &issuer).await;
    let session = connect(&hub, &first).await;

    // The first renewal since registration is taken at once.
    let answers = renew(&session, at(10), "r1").await;
    let second = issued_thumbprint(&answers);
    assert_eq!(primary_thumbprint(&hub).await, second);

    // Again 59 s later: too soon, refused as IoT Hub throttles, nothing recorded.
    let answers = renew(&session, at(69), "r2").await;
    let (status, code, cause, message) = error_of(&answers);
    assert_eq!(
        (status, code, cause.as_str()),
        (429, 429_002, "RenewalTooSoon"),
        "{answers:?}"
    );
    assert!(
        message.contains("less than 60 s ago") && message.contains(&at(70).to_rfc3339().replace("+00:00", "Z")),
        "{message}"
    );
    assert_eq!(answers.len(), 1, "a throttled request gets no 202: {answers:?}");
    assert_eq!(primary_thumbprint(&hub).await, second);

    // Once the interval is over, it renews again (from another connection too: the time is
    // in the device's record, not in the session).
    drop(session);
    let session = connect(&hub, &second).await;
    let third = issued_thumbprint(&renew(&session, at(70), "r3").await);
    assert_eq!(primary_thumbprint(&hub).await, third);
    let (status, code, ..) = error_of(&renew(&session, at(71), "r4").await);
    assert_eq!((status, code), (429, 429_002));
}

#[tokio::test]
async fn of_two_racing_renewals_only_the_first_recorded_counts() {
    let first = "B".repeat(64);
    let gated = Arc::new(GatedIssuer {
        ca: LocalCa::generate("renewal test CA").unwrap(),
        hold_first: AtomicBool::new(true),
        entered: Notify::new(),
        gate: Notify::new(),
    });
    let issuer: Arc<dyn CertificateIssuer> = gated.clone();
    let hub = hub_with_issued_device(&first, &issuer).await;

    // The device asks, and while its certificate is being issued it reconnects (a new
    // connection replaces the old one) and asks again; the second is recorded first.
    let slow_session = connect(&hub, &first).await;
    let slow = tokio::spawn(async move { renew(&slow_session, at(5), "slow").await });
    gated.entered.notified().await;
    let session = connect(&hub, &first).await;
    let fast = issued_thumbprint(&renew(&session, at(6), "fast").await);
    gated.gate.notify_one();
    let answers = slow.await.unwrap();

    assert_eq!(answers[0].0, 202, "{answers:?}");
    let (status, code, cause, _) = error_of(&answers);
    assert_eq!(
        (status, code, cause.as_str()),
        (409, 409_005, "CredentialOperationActive"),
        "{answers:?}"
    );
    let device = hub.get_device(DEVICE).await.unwrap();
    let thumbprints = device.authentication.unwrap().x509_thumbprint.unwrap();
    assert_eq!(thumbprints.primary_thumbprint.as_deref(), Some(fast.as_str()));
    assert_eq!(
        thumbprints.secondary_thumbprint.as_deref(),
        Some(first.as_str()),
        "the certificate the device held stays the secondary, not the one the lost race issued"
    );
}
