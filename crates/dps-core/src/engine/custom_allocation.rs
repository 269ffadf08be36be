//! Custom allocation: the enrollment names a webhook, and the engine asks it which hub a device
//! goes to, as Azure DPS asks an Azure Function (concepts-custom-allocation.md):
//!
//! - the request (`AllocationRequest`) is `individualEnrollment` or `enrollmentGroup` (as the
//!   service API shows it: no keys, the webhook URL's query hidden), `deviceRuntimeContext`
//!   (`registrationId`; `currentIotHubHostName` and `currentDeviceId` when the device was
//!   assigned before; `symmetricKey: {}`, `x509` or `tpm` by attestation; the device's
//!   `payload`) and `linkedHubs`, the hubs it may choose from;
//! - the answer (`AllocationResponse`) names `iotHubHostName`, which must be one of them, and may
//!   carry an `initialTwin` (which overrides the enrollment's, and migration) and a `payload`
//!   returned to the device in `registrationState.payload`. Its keys are read without regard to
//!   case (the documentation spells `iotHubHostname` in one place and `iotHubHostName` in
//!   another).
//!
//! The engine builds and judges the JSON; sending it is the [`AllocationWebhook`]'s, a transport
//! the server provides (HTTPS with deadlines, decision 0027), so this module touches no socket.

use async_trait::async_trait;
use dps_proto::model::service::{AttestationType, InitialTwin};
use dps_proto::twin_limits;
use serde_json::{json, Value};

use super::attestation::{Attested, Matched};
use super::{Engine, LinkedHub};
use crate::error::AllocationError;
use crate::store::RegistrationRecord;

/// Sends a custom allocation request: the transport of [`Engine::with_webhook`].
#[async_trait]
pub trait AllocationWebhook: Send + Sync + 'static {
    /// POSTs `request` to `url` and returns the answer's JSON; an error says why there is none
    /// (not reached, timed out, a status other than 2xx, not JSON).
    async fn call(&self, url: &str, request: &Value) -> Result<Value, String>;
}

/// What the webhook decided.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CustomAllocation {
    /// The hub, spelled as it is linked.
    pub(super) hub: String,
    /// The twin the device starts with, replacing the enrollment's (and any migration).
    pub(super) initial_twin: Option<InitialTwin>,
    /// Returned to the device.
    pub(super) payload: Option<Value>,
}

impl Engine {
    /// Asks the enrollment's webhook to choose among `candidates`.
    pub(super) async fn allocate_custom(
        &self,
        attested: &Attested,
        registration_id: &str,
        payload: Option<&Value>,
        previous: Option<&RegistrationRecord>,
        candidates: &[&LinkedHub],
    ) -> Result<CustomAllocation, AllocationError> {
        let definition = match &attested.matched {
            Matched::Individual(e) => e.custom_allocation_definition.as_ref(),
            Matched::Group(g) => g.custom_allocation_definition.as_ref(),
        };
        let url = definition
            .map(|d| d.webhook_url.as_str())
            .filter(|u| !u.is_empty())
            .ok_or(AllocationError::NoWebhook)?;
        let Some(webhook) = &self.webhook else {
            return Err(AllocationError::CustomUnsupported);
        };
        let linked: Vec<&str> = candidates.iter().map(|h| h.host_name.as_str()).collect();
        let request = request(attested, registration_id, payload, previous, &linked);
        let started = std::time::Instant::now();
        let answer = webhook.call(url, &request).await;
        if let Some(observer) = self.observer.get() {
            observer.webhook(started.elapsed(), answer.is_ok());
        }
        let answer = answer.map_err(AllocationError::Webhook)?;
        judge(&answer, candidates)
    }
}

/// The `AllocationRequest` for this device.
fn request(
    attested: &Attested,
    registration_id: &str,
    payload: Option<&Value>,
    previous: Option<&RegistrationRecord>,
    linked: &[&str],
) -> Value {
    let (key, enrollment) = match &attested.matched {
        Matched::Individual(e) => {
            let mut e = (**e).clone();
            super::service::strip_secrets(&mut e.attestation);
            e.registration_state = None;
            hide_webhook_query(&mut e.custom_allocation_definition);
            ("individualEnrollment", serde_json::to_value(e))
        }
        Matched::Group(g) => {
            let mut g = (**g).clone();
            super::service::strip_secrets(&mut g.attestation);
            hide_webhook_query(&mut g.custom_allocation_definition);
            ("enrollmentGroup", serde_json::to_value(g))
        }
    };
    let mut context = json!({ "registrationId": registration_id });
    if let Some(p) = previous {
        if let Some(hub) = &p.state.assigned_hub {
            context["currentIotHubHostName"] = json!(hub);
        }
        if let Some(device) = &p.state.device_id {
            context["currentDeviceId"] = json!(device);
        }
    }
    match attested.attestation {
        AttestationType::SymmetricKey => context["symmetricKey"] = json!({}),
        AttestationType::X509 => {
            context["x509"] = attested
                .x509
                .as_ref()
                .and_then(|x| serde_json::to_value(x).ok())
                .unwrap_or_else(|| json!({}));
        }
        AttestationType::Tpm => {
            let ek = match &attested.matched {
                Matched::Individual(e) => e.attestation.tpm.as_ref().map(|t| t.endorsement_key.clone()),
                Matched::Group(_) => None,
            };
            context["tpm"] = json!({ "endorsementKey": ek });
        }
        // No device attests with none.
        AttestationType::None => {}
    }
    if let Some(p) = payload {
        context["payload"] = p.clone();
    }
    json!({
        key: enrollment.unwrap_or(Value::Null),
        "deviceRuntimeContext": context,
        "linkedHubs": linked,
    })
}

/// The webhook URL as the request shows it: its query (which holds the function key) hidden,
/// as Azure shows it (`?****`).
fn hide_webhook_query(definition: &mut Option<dps_proto::model::service::CustomAllocationDefinition>) {
    if let Some(d) = definition {
        if let Some((base, _)) = d.webhook_url.split_once('?') {
            d.webhook_url = format!("{base}?****");
        }
    }
}

/// The webhook's answer, judged: a hub among the candidates, a twin within IoT Hub's rules, any
/// payload.
fn judge(answer: &Value, candidates: &[&LinkedHub]) -> Result<CustomAllocation, AllocationError> {
    let Some(fields) = answer.as_object() else {
        return Err(AllocationError::Webhook(
            "the answer is not a JSON object (an AllocationResponse)".into(),
        ));
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    };
    let named = field("iotHubHostName")
        .and_then(Value::as_str)
        .ok_or_else(|| AllocationError::Webhook("the answer names no iotHubHostName".into()))?;
    let hub = candidates
        .iter()
        .find(|h| h.host_name.eq_ignore_ascii_case(named))
        .ok_or_else(|| AllocationError::WebhookHub {
            hub: named.to_string(),
            offered: candidates.iter().map(|h| h.host_name.clone()).collect(),
        })?;
    let initial_twin = match field("initialTwin") {
        None => None,
        Some(t) => {
            let twin: InitialTwin = serde_json::from_value(t.clone())
                .map_err(|e| AllocationError::Webhook(format!("its initialTwin is not a twin: {e}")))?;
            twin_limits::validate_initial_twin(&twin)
                .map_err(|e| AllocationError::Webhook(format!("its initialTwin: {e}")))?;
            Some(twin)
        }
    };
    Ok(CustomAllocation {
        hub: hub.host_name.clone(),
        initial_twin,
        payload: field("payload").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `answer` judged against the hubs `a.example.test` and `b.example.test`.
    fn judged(answer: &Value) -> Result<CustomAllocation, AllocationError> {
        let hubs = [LinkedHub::new("a.example.test"), LinkedHub::new("b.example.test")];
        judge(answer, &hubs.iter().collect::<Vec<_>>())
    }

    #[test]
    fn answers_are_read_as_azure_documents_them() {
        let got = judged(
            &json!({"iotHubHostname": "B.example.test", "initialTwin": {"tags": {"t": 1}, "properties": {"desired": {"d": true}}}, "payload": {"x": 1}}),
        )
        .unwrap();
        assert_eq!(got.hub, "b.example.test");
        assert_eq!(got.payload, Some(json!({"x": 1})));
        assert_eq!(got.initial_twin.unwrap().tags, Some(json!({"t": 1})));
        let bare = judged(&json!({"iotHubHostName": "a.example.test", "payload": null})).unwrap();
        assert_eq!((bare.initial_twin, bare.payload), (None, None));
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        let cases = [
            (json!([]), "not a JSON object"),
            (json!({}), "names no iotHubHostName"),
            (json!({"iotHubHostName": 3}), "names no iotHubHostName"),
            (
                json!({"iotHubHostName": "c.example.test"}),
                "chose IoT hub 'c.example.test', which is not one of the hubs it was offered (a.example.test, b.example.test)",
            ),
            (json!({"iotHubHostName": "a.example.test", "initialTwin": 5}), "initialTwin is not a twin"),
            (
                json!({"iotHubHostName": "a.example.test", "initialTwin": {"tags": {"$bad": 1}}}),
                "its initialTwin",
            ),
        ];
        for (answer, why) in cases {
            let err = judged(&answer).unwrap_err().to_string();
            assert!(err.contains(why), "{answer}: {err}");
        }
    }

    #[test]
    fn the_function_key_is_hidden_from_the_webhook() {
        let mut d = Some(dps_proto::model::service::CustomAllocationDefinition {
            webhook_url: "https://f.example.test/api/alloc?code=secret".into(),
            api_version: "2021-10-01".into(),
        });
        hide_webhook_query(&mut d);
        assert_eq!(d.unwrap().webhook_url, "https://f.example.test/api/alloc?****");
    }
}
