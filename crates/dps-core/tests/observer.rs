//! What the engine tells its observer (`Engine::set_observer`): every registration attempt as it
//! ends — decided, with the registration's state and the enrollment's attestation, or refused,
//! with the error — at connect time too, each with the request's transport; every request a
//! quota refused; every custom allocation webhook call and how long it took.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dps_core::quota::Quota;
use dps_core::{AllocationWebhook, Observer, QuotaConfig, RegistrationAttempt, Transport};
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::{AllocationPolicy, AttestationType, IndividualEnrollment, RegistrationStatus};
use parking_lot::Mutex;
use serde_json::{json, Value};

use common::{engine_with, exp, now, sas_request, sym, ENROLLMENT_KEY, HUB};

/// One attempt as heard: registration id, transport, attestation, status or error code.
type Attempt = (
    String,
    Transport,
    Option<AttestationType>,
    Result<RegistrationStatus, u32>,
);

/// What the observer heard.
#[derive(Default)]
struct Heard {
    attempts: Mutex<Vec<Attempt>>,
    throttled: Mutex<Vec<Quota>>,
    webhooks: Mutex<Vec<bool>>,
}

impl Observer for Heard {
    fn registration(&self, a: &RegistrationAttempt<'_>) {
        assert!(a.elapsed < Duration::from_secs(10));
        self.attempts.lock().push((
            a.request.registration_id.clone(),
            a.request.transport,
            a.attestation,
            a.outcome.map(|s| s.status).map_err(|e| e.code()),
        ));
    }

    fn throttled(&self, quota: Quota) {
        self.throttled.lock().push(quota);
    }

    fn webhook(&self, _took: Duration, ok: bool) {
        self.webhooks.lock().push(ok);
    }
}

struct FailingWebhook;

#[async_trait]
impl AllocationWebhook for FailingWebhook {
    async fn call(&self, _url: &str, _request: &Value) -> Result<Value, String> {
        Err("answered 500".into())
    }
}

#[tokio::test]
async fn the_observer_hears_every_attempt_refusal_and_webhook_call() {
    let (e, _hub) = engine_with(|c| {
        c.quotas = QuotaConfig {
            registrations_per_second: 2,
            ..QuotaConfig::UNLIMITED
        };
    })
    .await;
    let e = e.with_webhook(Arc::new(FailingWebhook));
    let heard = Arc::new(Heard::default());
    e.set_observer(heard.clone());
    let enrollment = IndividualEnrollment {
        attestation: sym(Some(ENROLLMENT_KEY), None),
        ..Default::default()
    };
    e.put_enrollment(now(), "dev-o", enrollment, None).await.unwrap();
    let body = DeviceRegistration::default();

    // Assigned over MQTT, authenticated at connect first.
    let mut req = sas_request("dev-o", ENROLLMENT_KEY, exp());
    req.transport = Transport::Mqtt;
    let auth = e.authenticate(now(), &req).await.unwrap();
    e.register_authenticated(now(), &req, &auth, &body).await.unwrap();
    // A wrong key, refused at connect over AMQP.
    let mut wrong = sas_request("dev-o", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3I=", exp());
    wrong.transport = Transport::Amqp;
    assert!(e.authenticate(now(), &wrong).await.is_err());
    // A custom allocation whose webhook fails: a decided, failed registration over HTTPS.
    let custom = IndividualEnrollment {
        attestation: sym(Some(ENROLLMENT_KEY), None),
        allocation_policy: Some(AllocationPolicy::Custom),
        custom_allocation_definition: Some(
            serde_json::from_value(json!({"webhookUrl": "https://alloc.example.test/x", "apiVersion": "2021-10-01"}))
                .unwrap(),
        ),
        iot_hubs: Some(vec![HUB.into()]),
        ..Default::default()
    };
    e.put_enrollment(now(), "dev-c", custom, None).await.unwrap();
    let mut https = sas_request("dev-c", ENROLLMENT_KEY, exp());
    https.transport = Transport::Https;
    e.register(now(), &https, &body).await.unwrap();
    // Over the registrations quota (2 a second): throttled.
    let refused = e.register(now(), &https, &body).await.unwrap_err();
    assert_eq!(refused.status(), 429);

    let attempts = heard.attempts.lock().clone();
    assert_eq!(
        attempts,
        [
            (
                "dev-o".into(),
                Transport::Mqtt,
                Some(AttestationType::SymmetricKey),
                Ok(RegistrationStatus::Assigned)
            ),
            (
                "dev-o".into(),
                Transport::Amqp,
                None,
                Err(dps_proto::codes::UNAUTHORIZED)
            ),
            (
                "dev-c".into(),
                Transport::Https,
                Some(AttestationType::SymmetricKey),
                Ok(RegistrationStatus::Failed)
            ),
            ("dev-c".into(), Transport::Https, None, Err(refused.code())),
        ]
    );
    assert_eq!(heard.throttled.lock().as_slice(), [Quota::Registrations]);
    assert_eq!(heard.webhooks.lock().as_slice(), [false]);
}
