//! JSON request bodies, parsed as the HTTP and MQTT adapters parse them and then handed to the
//! real engine and hub (in memory), so the validation after parsing is fuzzed too.
//!
//! Invariants: what parses round-trips through its serialization; the engine answers client
//! input with a 4xx, never a 5xx; a refused write leaves nothing behind; an accepted one reads
//! back as it was answered.

use dps_core::{Credential, DeviceRequest, Error};
use dps_hub::{Hub, RegistryError};
use dps_proto::hub_mqtt::{self, HubUsername};
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::hub::{
    AuthenticationMechanism, Device, ExportImportDevice, FileUploadCompletionNotification, FileUploadSasUriRequest,
    JobProperties, JobRequest, SymmetricKey, Twin,
};
use dps_proto::model::service::{
    AttestationMechanism, AttestationType, BulkEnrollmentGroupOperation, BulkEnrollmentOperation, EnrollmentGroup,
    IndividualEnrollment, LinkedHubDescription, RegistrationStatus, SymmetricKeyAttestation,
};
use dps_proto::sas;

use crate::json::round_trip;
use crate::support::{block_on, engine, hub, now, now_unix, DEVICE, HUB_HOST, ID_SCOPE, KEY};

/// A client's input must never be answered with a server error.
pub(crate) fn client_error(e: &Error, what: &str) {
    assert!(
        (400..500).contains(&e.status()),
        "{what}: client input answered with {} {}: {e}",
        e.status(),
        e.code(),
    );
}

/// `dps_proto::model::from_json` exactly as `dps_server::http` parses bodies (after refusing an
/// all-whitespace body).
fn parse<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    dps_proto::model::from_json(data).ok()
}

/// The register request body (`DeviceRegistration`, HTTP and MQTT), through
/// `Engine::register` for a device with a valid SAS token and a symmetric-key enrollment: the
/// body decides whether the registration is accepted (registrationId must match, TPM keys need
/// a TPM enrollment, the payload is stored).
pub fn registration_body(data: &[u8]) {
    if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(data) {
        webhook_answer(answer);
    }
    let Ok(body) = DeviceRegistration::parse(data) else {
        return;
    };
    round_trip(&body, "DeviceRegistration");
    let hub = hub();
    let engine = engine(&hub);
    block_on(async {
        enroll_device(&engine).await;
        let req = fixture_request();
        match engine.register(now(), &req, &body).await {
            Ok(resp) => {
                assert_eq!(resp.status(), 202);
                let started = resp.operation().expect("a SAS register is not a TPM challenge");
                let op = engine
                    .operation_status(now(), &req, &started.operation_id)
                    .await
                    .expect("the operation just started can be polled");
                round_trip(&op.body, "RegistrationOperationStatus");
                let state = op.body.registration_state;
                assert_eq!(state.registration_id, DEVICE);
                assert!(
                    matches!(state.status, RegistrationStatus::Assigned | RegistrationStatus::Failed),
                    "{state:?}"
                );
            }
            Err(e) => {
                client_error(&e, "register");
                assert!(
                    engine.get_registration(DEVICE).await.is_err(),
                    "a refused registration left a record"
                );
                assert!(
                    matches!(
                        hub.get_device(DEVICE).await,
                        Err(dps_hub::RegistryError::NotFound { .. })
                    ),
                    "a refused registration left a hub device"
                );
            }
        }
    });
}

/// The path id a body is PUT under: the body's own id when it has one, as clients send.
fn path_id(body_id: &str) -> &str {
    if body_id.is_empty() {
        "fuzz-enrollment"
    } else {
        body_id
    }
}

/// Service API bodies (`PUT /enrollments/{id}`, `PUT /enrollmentGroups/{id}`, `POST
/// /enrollments`, `POST /enrollmentGroups`, `PUT /linkedHubs/{name}`, `PUT /keys/{name}`): the input is tried as each, and what parses goes
/// through the engine; the input is also the `x-ms-continuation` token of the service queries. Attestation validation (symmetric keys, TPM endorsement keys, X.509
/// certificates in PEM or base64) runs on the way.
pub fn service_body(data: &[u8]) {
    let hub = hub();
    let engine = engine(&hub);
    block_on(async {
        if let Some(e) = parse::<IndividualEnrollment>(data) {
            round_trip(&e, "IndividualEnrollment");
            let id = path_id(&e.registration_id).to_string();
            match engine.put_enrollment(now(), &id, e, None).await {
                Ok(stored) => {
                    round_trip(&stored, "IndividualEnrollment response");
                    let got = engine
                        .get_enrollment(&id)
                        .await
                        .expect("an accepted enrollment reads back");
                    assert_eq!(got.etag, stored.etag);
                    assert!(got.registration_id.eq_ignore_ascii_case(&id));
                }
                Err(err) => {
                    client_error(&err, "put enrollment");
                    assert!(
                        engine.get_enrollment(&id).await.is_err(),
                        "a refused enrollment was stored"
                    );
                }
            }
        }
        if let Some(g) = parse::<EnrollmentGroup>(data) {
            round_trip(&g, "EnrollmentGroup");
            let id = path_id(&g.enrollment_group_id).to_string();
            match engine.put_group(now(), &id, g, None).await {
                Ok(stored) => {
                    round_trip(&stored, "EnrollmentGroup response");
                    let got = engine.get_group(&id).await.expect("an accepted group reads back");
                    assert_eq!(got.etag, stored.etag);
                }
                Err(err) => {
                    client_error(&err, "put group");
                    assert!(engine.get_group(&id).await.is_err(), "a refused group was stored");
                }
            }
        }
        // The input as an `x-ms-continuation` header of the three service queries.
        if let Ok(token) = std::str::from_utf8(data) {
            let size = data.first().map(|b| usize::from(*b));
            for r in [
                engine.query_enrollments("", Some(token), size).await.map(drop),
                engine.query_groups("", Some(token), size).await.map(drop),
                engine
                    .query_registrations("grp-1", "", Some(token), size)
                    .await
                    .map(drop),
            ] {
                if let Err(e) = r {
                    client_error(&e, "query with a continuation token");
                }
            }
        }
        if let Some(h) = parse::<LinkedHubDescription>(data) {
            round_trip(&h, "LinkedHubDescription");
            let name = if h.name.is_empty() {
                "hub.fuzz.test".to_string()
            } else {
                h.name.clone()
            };
            match engine.put_linked_hub(&name, h.clone()).await {
                Ok(linked) => {
                    round_trip(&linked, "LinkedHubDescription response");
                    let got = engine.get_linked_hub(&name).await.expect("a linked hub reads back");
                    assert_eq!(got, linked);
                    assert!(engine.is_linked(&name));
                    let shown = dps_proto::connection_string::ConnectionString::parse(&got.connection_string)
                        .expect("a linked hub's connection string parses");
                    assert_eq!(shown.key.as_deref(), Some("****"), "a linked hub's key was shown");
                }
                Err(err) => {
                    client_error(&err, "put linked hub");
                    assert!(engine.get_linked_hub(&name).await.is_err(), "a refused hub was linked");
                }
            }
        }
        if let Some(rule) = parse::<dps_proto::model::service::AuthorizationRule>(data) {
            round_trip(&rule, "AuthorizationRule");
            policy_rule(rule);
        }
        if let Some(op) = parse::<BulkEnrollmentOperation>(data) {
            round_trip(&op, "BulkEnrollmentOperation");
            bulk_result(engine.bulk_enrollments(now(), op).await, "bulk enrollments");
        }
        if let Some(op) = parse::<BulkEnrollmentGroupOperation>(data) {
            round_trip(&op, "BulkEnrollmentGroupOperation");
            bulk_result(engine.bulk_groups(now(), op).await, "bulk groups");
        }
    });
}

/// A `PUT /keys/{name}` or `/iotHubKeys/{name}` body through the policy rules, asked by each
/// scope's owner: a refusal changes nothing; an accepted change leaves an owner, and the policy
/// it answers is the one kept, with keys.
fn policy_rule(rule: dps_proto::model::service::AuthorizationRule) {
    use dps_core::auth::manage::{PolicyChange, PolicyScope, PolicyWrite};
    use dps_core::auth::SharedAccessPolicy;
    for scope in [PolicyScope::Dps, PolicyScope::Hub] {
        let owner = SharedAccessPolicy {
            key_name: "owner".into(),
            primary_key: dps_core::auth::manage::new_key(),
            secondary_key: dps_core::auth::manage::new_key(),
            rights: scope.rights().iter().map(|r| r.to_string()).collect(),
        };
        let rights = match rule.rights.as_deref().map(|text| scope.parse_rights(text)).transpose() {
            Ok(rights) => rights,
            Err(_) => continue,
        };
        let mut set = vec![owner.clone()];
        let name = if rule.key_name.is_empty() {
            "fuzz"
        } else {
            rule.key_name.as_str()
        };
        let write = PolicyWrite {
            rights,
            primary_key: rule.primary_key.clone(),
            secondary_key: rule.secondary_key.clone(),
        };
        let mut change = PolicyChange {
            scope,
            policies: &mut set,
            caller: &owner,
        };
        match change.put(name, write, dps_core::auth::manage::new_key) {
            Ok((policy, _)) => {
                assert!(set.iter().any(|p| scope.is_owner(p)), "a change left no owner");
                let kept = set
                    .iter()
                    .find(|p| p.key_name.eq_ignore_ascii_case(name))
                    .expect("the policy put is kept");
                assert_eq!(kept, &policy);
                assert!(!policy.primary_key.is_empty() && !policy.secondary_key.is_empty());
            }
            Err(err) => {
                client_error(&err, "put policy");
                assert_eq!(set, vec![owner], "a refused policy change changed the set");
            }
        }
    }
}

fn bulk_result(r: Result<dps_proto::model::service::BulkOperationResult, Error>, what: &str) {
    match r {
        Ok(result) => {
            assert_eq!(result.is_successful, result.errors.is_empty(), "{what}: {result:?}");
            round_trip(&result, "BulkOperationResult");
        }
        Err(e) => client_error(&e, what),
    }
}

/// The in-memory hub has no storage to fail: any other error is the client's (a 4xx).
fn not_a_storage_error(e: &RegistryError, what: &str) {
    assert!(!matches!(e, RegistryError::Storage(_)), "{what}: {e}");
}

/// A custom allocation webhook that answers `self.0` whatever it is asked.
struct Answers(serde_json::Value);

#[async_trait::async_trait]
impl dps_core::AllocationWebhook for Answers {
    async fn call(&self, _url: &str, _request: &serde_json::Value) -> Result<serde_json::Value, String> {
        Ok(self.0.clone())
    }
}

/// The input as a custom allocation webhook's answer (`AllocationResponse`): the fixture device,
/// enrolled for custom allocation, is assigned to the one linked hub, or fails with 400208 (the
/// answer judged unusable) or 400209 (the hub refused it), leaving no record.
fn webhook_answer(answer: serde_json::Value) {
    let hub = hub();
    let engine = engine(&hub).with_webhook(std::sync::Arc::new(Answers(answer)));
    block_on(async {
        let mut enrollment = fixture_enrollment();
        enrollment.allocation_policy = Some(dps_proto::model::service::AllocationPolicy::Custom);
        enrollment.custom_allocation_definition = Some(dps_proto::model::service::CustomAllocationDefinition {
            webhook_url: "https://alloc.fuzz.test/api/alloc?code=k".into(),
            api_version: "2021-10-01".into(),
        });
        engine
            .put_enrollment(now(), DEVICE, enrollment, None)
            .await
            .expect("the custom enrollment is valid");
        let req = fixture_request();
        let resp = engine
            .register(now(), &req, &DeviceRegistration::default())
            .await
            .expect("the fixture device's credential is good");
        let started = resp.operation().expect("a SAS register is not a TPM challenge");
        let op = engine
            .operation_status(now(), &req, &started.operation_id)
            .await
            .expect("the operation just started can be polled");
        let state = op.body.registration_state;
        match state.status {
            RegistrationStatus::Assigned => assert_eq!(state.assigned_hub.as_deref(), Some(HUB_HOST), "{state:?}"),
            RegistrationStatus::Failed => {
                assert!(
                    matches!(
                        state.error_code,
                        Some(dps_proto::codes::HUB_NOT_SPECIFIED | dps_proto::codes::HUB_UNAUTHORIZED)
                    ),
                    "{state:?}"
                );
                assert!(
                    engine.get_registration(DEVICE).await.is_err(),
                    "a failed registration left a record"
                );
            }
            other => panic!("a custom allocation ended {other:?}"),
        }
    });
}

/// The fixture device's register request, signed with its enrollment key.
fn fixture_request() -> DeviceRequest {
    let audience = format!("{ID_SCOPE}/registrations/{DEVICE}");
    let token = sas::build_token(&audience, KEY, now_unix() + 3600, Some("registration")).expect("KEY is base64");
    DeviceRequest {
        id_scope: ID_SCOPE.into(),
        registration_id: DEVICE.into(),
        credential: Credential::Sas(token),
        api_version: Some("2021-06-01".into()),
        source: None,
        transport: Default::default(),
    }
}

/// `DEVICE`'s individual enrollment, symmetric key `KEY`.
fn fixture_enrollment() -> IndividualEnrollment {
    IndividualEnrollment {
        registration_id: DEVICE.into(),
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some(KEY.into()),
                secondary_key: Some(KEY.into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Enrolls `DEVICE` ([`fixture_enrollment`]).
pub(crate) async fn enroll_device(engine: &dps_core::Engine) {
    engine
        .put_enrollment(now(), DEVICE, fixture_enrollment(), None)
        .await
        .expect("the fixture enrollment is valid");
}

/// A device in the hub with SAS keys, and its MQTT session's identity.
/// The fixture device, authenticated with its SAS as the HTTPS device API authenticates a request.
async fn fixture_identity(hub: &Hub) -> dps_hub::DeviceIdentity {
    let token =
        sas::build_token(&format!("{HUB_HOST}/devices/{DEVICE}"), KEY, now_unix() + 3600, None).expect("KEY is base64");
    hub.authenticate_device(now_unix(), DEVICE, Some(&token), None)
        .await
        .expect("the fixture device authenticates")
}

pub(crate) async fn hub_device(hub: &Hub) -> Device {
    hub.put_device(
        Device {
            device_id: DEVICE.into(),
            authentication: Some(AuthenticationMechanism {
                kind: "sas".into(),
                symmetric_key: Some(SymmetricKey {
                    primary_key: Some(KEY.into()),
                    secondary_key: Some(KEY.into()),
                }),
                x509_thumbprint: None,
            }),
            ..Default::default()
        },
        None,
    )
    .await
    .expect("the fixture device is valid")
}

/// Hub bodies: a reported-properties patch published by a connected device (MQTT), and the
/// registry API's twin replace (`PUT /twins/{id}`), twin patch (`PATCH /twins/{id}`) and device
/// (`PUT /devices/{id}`) bodies, through the in-memory hub.
pub fn hub_body(data: &[u8]) {
    let hub = hub();
    block_on(async {
        hub_device(&hub).await;

        // The device's own MQTT session: reported patch, then a twin GET that must still work.
        let username = HubUsername::parse(&hub_mqtt::username(HUB_HOST, DEVICE, "2021-04-12")).expect("our username");
        let token = sas::build_token(&format!("{HUB_HOST}/devices/{DEVICE}"), KEY, now_unix() + 3600, None)
            .expect("KEY is base64");
        let identity = hub
            .authenticate(now_unix(), &username, Some(token.as_bytes()), None)
            .await
            .expect("the fixture device authenticates");
        let (session, _outbound) = hub.open_session(identity).await.expect("a session opens");
        let _ = session
            .handle_publish(now(), &hub_mqtt::reported_patch_topic("1"), data)
            .await;
        let got = session
            .handle_publish(now(), &hub_mqtt::twin_get_topic("2"), b"")
            .await
            .expect("a twin GET after any reported patch is answered");
        for out in &got {
            serde_json::from_slice::<serde_json::Value>(&out.payload).expect("the twin document is JSON");
        }
        drop(session);

        if let Some(twin) = parse::<Twin>(data) {
            round_trip(&twin, "Twin");
            for (replace, what) in [(true, "replace twin"), (false, "patch twin")] {
                let result = if replace {
                    hub.replace_twin(DEVICE, twin.clone(), None).await
                } else {
                    hub.patch_twin(DEVICE, twin.clone(), None).await
                };
                if let Ok(t) = result {
                    round_trip(&t, what);
                    assert_eq!(
                        hub.get_twin(DEVICE).await.ok().as_ref(),
                        Some(&t),
                        "{what}: the twin reads back as answered"
                    );
                }
            }
        }

        if let Some(device) = parse::<Device>(data) {
            round_trip(&device, "Device");
            let id = device.device_id.clone();
            let existed = hub.get_device(&id).await.is_ok();
            match hub.put_device(device, None).await {
                Ok(d) => {
                    round_trip(&d, "Device response");
                    assert!(
                        hub.get_device(&d.device_id).await.is_ok(),
                        "an accepted device reads back"
                    );
                }
                Err(e) => {
                    not_a_storage_error(&e, "put device");
                    assert_eq!(
                        hub.get_device(&id).await.is_ok(),
                        existed,
                        "a refused device was stored"
                    );
                }
            }
        }
        // A scheduled job (`PUT /jobs/v2/{id}`): refused with a client error, or created (and
        // cancelled again, so that no input leaves a task behind).
        if let Some(request) = parse::<JobRequest>(data) {
            round_trip(&request, "JobRequest");
            match hub.create_job("fuzz-job", request).await {
                Ok(created) => {
                    round_trip(&created, "JobResponse");
                    let cancelled = hub
                        .cancel_job("fuzz-job")
                        .await
                        .expect("a created job can be cancelled");
                    assert!(cancelled.status != "queued", "a cancelled job is no longer queued");
                    // Let the job's task see the cancel and end: this runtime runs spawned
                    // tasks only while a future it drives waits.
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) => assert!(!matches!(e, dps_hub::JobError::Storage(_)), "create job: {e}"),
            }
        }
        // An import or export job request (`POST /jobs/create`): its JSON round-trips (the
        // container URIs it names are fuzzed by `blob_request`).
        if let Some(request) = parse::<JobProperties>(data) {
            round_trip(&request, "JobProperties");
        }
        // A bulk registry operation (`POST /devices`): refused whole, or one result whose
        // errors name items of the request.
        if let Some(items) = parse::<Vec<ExportImportDevice>>(data) {
            round_trip(&items, "ExportImportDevice list");
            let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
            match hub.bulk_registry(items).await {
                Ok(r) => {
                    round_trip(&r, "BulkRegistryOperationResult");
                    assert_eq!(r.is_successful, r.errors.is_empty());
                    assert!(
                        r.errors.iter().all(|e| ids.contains(&e.device_id)),
                        "an error about no item"
                    );
                }
                Err(e) => not_a_storage_error(&e, "bulk registry operation"),
            }
        }
    });
}

/// The hub's device API over HTTPS: a telemetry batch (`POST /devices/{id}/messages/events` with
/// `application/vnd.microsoft.iothub.json`), parsed, then every message sent through the
/// in-memory hub as the authenticated device. A batch is taken whole or refused: when it parses,
/// each message is stored or refused as too large (never a store failure), and the hub keeps
/// exactly the stored ones; system properties come out under their `$.` keys. The same bytes,
/// read as `name: value` lines, go through the header mapping; as file upload bodies
/// (`FileUploadSasUriRequest`, `FileUploadCompletionNotification`) they round-trip, and a blob
/// name the hub accepts is a valid blob name under the device's directory whose SAS checks.
pub fn telemetry_batch(data: &[u8]) {
    let headers: Vec<(&str, &str)> = std::str::from_utf8(data)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .collect();
    for (k, _) in dps_proto::hub_http::properties_from_headers(headers.iter().copied()) {
        assert!(!k.is_empty(), "a header became a nameless property");
    }
    if let Some(n) = parse::<FileUploadCompletionNotification>(data) {
        round_trip(&n, "FileUploadCompletionNotification");
    }
    if let Some(req) = parse::<FileUploadSasUriRequest>(data) {
        round_trip(&req, "FileUploadSasUriRequest");
        file_upload_request(&req.blob_name);
    }
    let Ok(messages) = dps_proto::hub_http::parse_batch(data) else {
        return;
    };
    assert!(!messages.is_empty(), "an empty batch parsed");
    let hub = hub();
    block_on(async {
        hub_device(&hub).await;
        let identity = fixture_identity(&hub).await;
        let mut stored = 0;
        for m in messages {
            for (k, _) in &m.properties {
                assert!(!k.is_empty(), "a nameless property");
            }
            match hub.send_telemetry(&identity, m.properties, &m.body).await {
                Ok(()) => stored += 1,
                Err(dps_hub::SessionError::TooLarge { .. }) => {}
                Err(e) => panic!("a batch message was refused for another cause than its size: {e}"),
            }
        }
        assert_eq!(
            hub.recent_events(Some(DEVICE), None, usize::MAX).await.len(),
            stored,
            "the hub keeps exactly the accepted messages"
        );
    });
}

/// Asks the hub for an upload of `blob_name` as the fixture device: accepted only for a valid
/// blob name under the device's directory, with a SAS for exactly that blob.
fn file_upload_request(blob_name: &str) {
    let hub = hub();
    let key = b"fuzz storage key".to_vec();
    hub.set_file_upload(dps_hub::FileUploadConfig {
        host: HUB_HOST.into(),
        container: "fileupload".into(),
        account: "hub".into(),
        key: key.clone(),
        notifications: true,
    });
    block_on(async {
        hub_device(&hub).await;
        let identity = fixture_identity(&hub).await;
        if let Ok(sas) = hub.create_file_upload(&identity, blob_name).await {
            assert!(
                dps_proto::blob_storage::valid_blob_name(&sas.blob_name),
                "{:?}",
                sas.blob_name
            );
            assert_eq!(sas.blob_name, format!("{DEVICE}/{blob_name}"));
            let query = dps_proto::rest::QueryParams::parse(Some(&sas.sas_token[1..]));
            dps_proto::blob_storage::verify_sas(&key, "hub", "fileupload", &sas.blob_name, &query, now(), 'w')
                .expect("the SAS handed out checks for its blob");
        }
    });
}
