//! Custom allocation through the engine: what the webhook is sent (Azure's `AllocationRequest`),
//! how its answer decides the hub, the twin and the payload the device gets back, and how every
//! failure is reported. The webhook's transport is a recording stand-in here (the engine takes
//! any `AllocationWebhook`); the server's HTTPS client and a real webhook are tested in
//! `tests/interop/test_custom_allocation.py`.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use dps_core::{AllocationWebhook, Engine, LinkedHub};
use dps_proto::codes;
use dps_proto::model::device::{DeviceRegistration, RegistrationOperationStatus};
use dps_proto::model::service::{
    AllocationPolicy, CustomAllocationDefinition, EnrollmentGroup, IndividualEnrollment, RegistrationStatus,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use common::{engine_with, exp, now, sas_request, sym, ENROLLMENT_KEY, HUB, HUB2, HUB3};

const URL: &str = "https://alloc.example.test/api/alloc?code=function-key";

/// Answers what it is told to, and keeps every request.
struct Webhook {
    answer: Mutex<Result<Value, String>>,
    requests: Mutex<Vec<(String, Value)>>,
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            answer: Mutex::new(Err("no answer set".into())),
            requests: Mutex::default(),
        }
    }
}

#[async_trait]
impl AllocationWebhook for Webhook {
    async fn call(&self, url: &str, request: &Value) -> Result<Value, String> {
        self.requests.lock().push((url.to_string(), request.clone()));
        self.answer.lock().clone()
    }
}

async fn engine() -> (Engine, Arc<Webhook>, Arc<common::FakeHub>) {
    let (e, hub) = engine_with(|c| {
        c.linked_hubs = vec![LinkedHub::new(HUB), LinkedHub::new(HUB2), LinkedHub::new(HUB3)];
    })
    .await;
    let webhook = Arc::new(Webhook::default());
    (e.with_webhook(webhook.clone()), webhook, hub)
}

fn custom(iot_hubs: Option<Vec<&str>>) -> IndividualEnrollment {
    IndividualEnrollment {
        attestation: sym(Some(ENROLLMENT_KEY), None),
        allocation_policy: Some(AllocationPolicy::Custom),
        custom_allocation_definition: Some(CustomAllocationDefinition {
            webhook_url: URL.into(),
            api_version: "2021-10-01".into(),
        }),
        iot_hubs: iot_hubs.map(|h| h.into_iter().map(str::to_string).collect()),
        ..Default::default()
    }
}

async fn register(e: &Engine, reg: &str, payload: Option<Value>) -> RegistrationOperationStatus {
    let req = sas_request(reg, ENROLLMENT_KEY, exp());
    let body = DeviceRegistration {
        payload,
        ..Default::default()
    };
    let op = e.register(now(), &req, &body).await.unwrap();
    let id = op.operation().unwrap().operation_id.clone();
    e.operation_status(now(), &req, &id).await.unwrap().body
}

#[tokio::test]
async fn the_webhook_decides_hub_twin_and_payload() {
    let (e, webhook, hub) = engine().await;
    e.put_enrollment(now(), "dev-1", custom(Some(vec![HUB2, HUB3])), None)
        .await
        .unwrap();
    *webhook.answer.lock() = Ok(json!({
        "iotHubHostName": HUB3,
        "initialTwin": {"tags": {"kind": "toaster"}, "properties": {"desired": {"darkness": "medium"}}},
        "payload": {"welcome": true},
    }));
    let done = register(&e, "dev-1", Some(json!({"model": "t-100"}))).await;
    assert_eq!(done.status, RegistrationStatus::Assigned, "{done:?}");
    assert_eq!(done.registration_state.assigned_hub.as_deref(), Some(HUB3));
    assert_eq!(done.registration_state.payload, Some(json!({"welcome": true})));
    let twin = hub.identity(HUB3, "dev-1").unwrap().twin.unwrap();
    assert_eq!(twin.tags, Some(json!({"kind": "toaster"})));

    let (url, request) = webhook.requests.lock()[0].clone();
    assert_eq!(url, URL, "the webhook is called with its function key");
    let enrollment = &request["individualEnrollment"];
    assert_eq!(enrollment["registrationId"], "dev-1");
    assert_eq!(
        enrollment["attestation"],
        json!({"type": "symmetricKey", "symmetricKey": {}})
    );
    assert_eq!(
        enrollment["customAllocationDefinition"]["webhookUrl"],
        "https://alloc.example.test/api/alloc?****"
    );
    assert_eq!(
        request["deviceRuntimeContext"],
        json!({"registrationId": "dev-1", "symmetricKey": {}, "payload": {"model": "t-100"}})
    );
    assert_eq!(request["linkedHubs"], json!([HUB2, HUB3]), "only the enrollment's hubs");

    // Registering again: the webhook learns where the device is, and its twin replaces the
    // migration the enrollment's reprovision policy would do.
    *webhook.answer.lock() = Ok(json!({
        "iotHubHostName": HUB2,
        "initialTwin": {"tags": {"kind": "moved"}},
    }));
    let again = register(&e, "dev-1", None).await;
    assert_eq!(again.registration_state.assigned_hub.as_deref(), Some(HUB2));
    assert_eq!(again.registration_state.payload, None);
    let context = &webhook.requests.lock()[1].1["deviceRuntimeContext"];
    assert_eq!(context["currentIotHubHostName"], HUB3);
    assert_eq!(context["currentDeviceId"], "dev-1");
    assert!(context.get("payload").is_none(), "{context}");
    let moved = hub.identity(HUB2, "dev-1").unwrap().twin.unwrap();
    assert_eq!(moved.tags, Some(json!({"kind": "moved"})));
}

#[tokio::test]
async fn a_group_sends_its_group_and_every_hub_allocation_may_pick() {
    let (e, webhook, _) = engine().await;
    let group = EnrollmentGroup {
        attestation: sym(Some(ENROLLMENT_KEY), None),
        allocation_policy: Some(AllocationPolicy::Custom),
        custom_allocation_definition: custom(None).custom_allocation_definition,
        ..Default::default()
    };
    e.put_group(now(), "grp", group, None).await.unwrap();
    *webhook.answer.lock() = Ok(json!({"iotHubHostName": HUB}));
    let reg = "grp-dev";
    let key = dps_proto::keys::derive_device_key(ENROLLMENT_KEY, reg).unwrap();
    let req = sas_request(reg, &key, exp());
    let done = common::register_and_poll(&e, &req).await.unwrap();
    assert_eq!(done.registration_state.assigned_hub.as_deref(), Some(HUB));
    let request = &webhook.requests.lock()[0].1;
    assert_eq!(request["enrollmentGroup"]["enrollmentGroupId"], "grp");
    assert!(request.get("individualEnrollment").is_none());
    assert_eq!(request["linkedHubs"], json!([HUB, HUB2, HUB3]));
}

#[tokio::test]
async fn webhook_failures_fail_the_registration_and_say_why() {
    let (e, webhook, hub) = engine().await;
    e.put_enrollment(now(), "dev-f", custom(Some(vec![HUB, HUB2])), None)
        .await
        .unwrap();
    for (answer, why) in [
        (
            Err("https://alloc.example.test/api/alloc answered 500 Internal Server Error".to_string()),
            "the custom allocation webhook failed: https://alloc.example.test/api/alloc answered 500",
        ),
        (
            Ok(json!({"iotHubHostName": HUB3})),
            "chose IoT hub 'hub3.example.test', which is not one of the hubs it was offered (hub.example.test, hub2.example.test)",
        ),
        (Ok(json!({"payload": {}})), "names no iotHubHostName"),
    ] {
        *webhook.answer.lock() = answer;
        let done = register(&e, "dev-f", None).await;
        assert_eq!(done.status, RegistrationStatus::Failed, "{why}");
        assert_eq!(done.registration_state.error_code, Some(codes::HUB_NOT_SPECIFIED));
        let msg = done.registration_state.error_message.unwrap_or_default();
        assert!(msg.contains(why), "{msg}");
        assert!(hub.devices.lock().is_empty(), "no hub was written");
        assert!(e.get_registration("dev-f").await.is_err(), "nothing was recorded");
    }

    // An engine without a webhook client says so.
    let (bare, _) = engine_with(|_| {}).await;
    bare.put_enrollment(now(), "dev-g", custom(None), None).await.unwrap();
    let done = register(&bare, "dev-g", None).await;
    let msg = done.registration_state.error_message.unwrap_or_default();
    assert!(msg.contains("this engine has no webhook client"), "{msg}");
}

#[tokio::test]
async fn custom_enrollments_need_an_https_webhook() {
    let (e, _, _) = engine().await;
    let with = |url: &str, version: &str| IndividualEnrollment {
        custom_allocation_definition: Some(CustomAllocationDefinition {
            webhook_url: url.into(),
            api_version: version.into(),
        }),
        ..custom(None)
    };
    let cases = [
        (
            IndividualEnrollment {
                custom_allocation_definition: None,
                ..custom(None)
            },
            "custom allocation needs customAllocationDefinition",
        ),
        (
            with("http://alloc.example.test/x", "2021-10-01"),
            "must be https://host/",
        ),
        (with("not a url", "2021-10-01"), "is not a URL"),
        (with(URL, ""), "apiVersion is required"),
    ];
    for (enrollment, why) in cases {
        let err = e.put_enrollment(now(), "dev-v", enrollment, None).await.unwrap_err();
        assert_eq!(err.code(), codes::ARGUMENT_INVALID);
        assert!(err.to_string().contains(why), "{err}");
    }
    // The refusal never echoes the function key.
    let err = e
        .put_enrollment(now(), "dev-v", with("http://a.example.test/x?code=secret", "v"), None)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}
