//! Engine tests: in-memory store, a recording fake hub, a fake clock. Deterministic and fast.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_core::{Credential, DeviceRequest, TwinPolicy};
use dps_proto::codes;
use dps_proto::keys::derive_device_key;
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::*;
use dps_tpm::RsaPublic;

mod common;

use common::{engine, engine_with, exp, now, register_and_poll, sym, HUB};
const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY2: &str = "HxwdGhsYGRYXFBUSExAREA8ODQwLCgkIBwYFBAMCAQA=";

fn request(reg: &str, key: &str, expiry: u64) -> DeviceRequest {
    common::sas_request(reg, key, expiry)
}

#[tokio::test]
async fn individual_enrollment_registers_and_reregisters_idempotently() {
    let (e, hub) = engine().await;
    let mut enr = IndividualEnrollment {
        attestation: sym(Some(KEY1), Some(KEY2)),
        ..Default::default()
    };
    enr.initial_twin = Some(InitialTwin {
        tags: None,
        properties: Some(InitialTwinProperties {
            desired: Some(serde_json::json!({"fw": "1.0"})),
        }),
    });
    e.put_enrollment(now(), "dev-01", enr, None).await.unwrap();

    let done = register_and_poll(&e, &request("dev-01", KEY1, exp())).await.unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    let st = &done.registration_state;
    assert_eq!(st.assigned_hub.as_deref(), Some(HUB));
    assert_eq!(st.device_id.as_deref(), Some("dev-01"));
    assert_eq!(st.substatus, Some(Substatus::InitialAssignment));
    assert!(st.etag.is_some() && st.created_date_time_utc.is_some() && st.last_updated_date_time_utc.is_some());
    {
        let devs = hub.devices.lock();
        assert_eq!(devs.len(), 1);
        assert_eq!(
            devs[0].auth,
            dps_core::DeviceAuth::Sas {
                primary_key: KEY1.into(),
                secondary_key: KEY2.into()
            }
        );
        assert!(devs[0].initial_twin.is_some());
    }

    // Secondary key works too; re-registration keeps hub and device id.
    let again = register_and_poll(&e, &request("dev-01", KEY2, exp())).await.unwrap();
    assert_eq!(again.registration_state.assigned_hub.as_deref(), Some(HUB));
    assert_eq!(again.registration_state.device_id.as_deref(), Some("dev-01"));
    assert_eq!(again.registration_state.created_date_time_utc, st.created_date_time_utc);
    assert_eq!(hub.devices.lock()[1].twin_policy, TwinPolicy::Keep);

    // Service view.
    let rec = e.get_registration("DEV-01").await.unwrap();
    assert_eq!(rec.status, RegistrationStatus::Assigned);
    let got = e.get_enrollment("dev-01").await.unwrap();
    assert_eq!(got.registration_state.unwrap().status, RegistrationStatus::Assigned);

    // Deleting the record lets the device register again (device already in hub).
    e.delete_registration("dev-01", None).await.unwrap();
    let fresh = register_and_poll(&e, &request("dev-01", KEY1, exp())).await.unwrap();
    assert_eq!(
        fresh.registration_state.substatus,
        Some(Substatus::ReprovisionedToInitialAssignment)
    );
}

#[tokio::test]
async fn group_devices_use_derived_keys() {
    let (e, hub) = engine().await;
    e.put_group(
        now(),
        "grp",
        EnrollmentGroup {
            attestation: sym(Some(KEY1), Some(KEY2)),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let dk = derive_device_key(KEY1, "sensor-7").unwrap();
    let done = register_and_poll(&e, &request("sensor-7", &dk, exp())).await.unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    assert_eq!(
        done.registration_state
            .symmetric_key
            .unwrap()
            .enrollment_group_id
            .as_deref(),
        Some("grp")
    );
    assert_eq!(
        hub.devices.lock()[0].auth,
        dps_core::DeviceAuth::Sas {
            primary_key: dk.clone(),
            secondary_key: derive_device_key(KEY2, "sensor-7").unwrap()
        }
    );
    let page = e.query_registrations("grp", "", None, None).await.unwrap();
    assert_eq!(page.items.len(), 1);

    // Signing with the group key itself is explained.
    let err = e
        .register(now(), &request("sensor-8", KEY1, exp()), &DeviceRegistration::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::UNAUTHORIZED);
    assert!(
        err.to_string()
            .contains("signed with the key of enrollment group 'grp' itself"),
        "{}",
        err
    );

    // An individual enrollment takes precedence over the group; disabled blocks the device.
    e.put_enrollment(
        now(),
        "sensor-7",
        IndividualEnrollment {
            attestation: sym(Some(&dk), None),
            provisioning_status: Some(ProvisioningStatus::Disabled),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let blocked = register_and_poll(&e, &request("sensor-7", &dk, exp())).await.unwrap();
    assert_eq!(blocked.status, RegistrationStatus::Disabled);
    assert_eq!(blocked.registration_state.error_code, Some(codes::ENROLLMENT_DISABLED));
    assert!(blocked
        .registration_state
        .error_message
        .unwrap()
        .contains("individual enrollment 'sensor-7' is disabled"));
}

#[tokio::test]
async fn disabled_group_and_bad_credentials() {
    let (e, _hub) = engine().await;
    e.put_group(
        now(),
        "off",
        EnrollmentGroup {
            attestation: sym(Some(KEY1), None),
            provisioning_status: Some(ProvisioningStatus::Disabled),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let dk = derive_device_key(KEY1, "d1").unwrap();
    let r = register_and_poll(&e, &request("d1", &dk, exp())).await.unwrap();
    assert_eq!(r.status, RegistrationStatus::Disabled);
    assert!(r
        .registration_state
        .error_message
        .unwrap()
        .contains("enrollment group 'off' is disabled"));
    assert!(
        e.get_registration("d1").await.is_err(),
        "a refused attempt writes nothing"
    );

    e.put_enrollment(
        now(),
        "ind",
        IndividualEnrollment {
            attestation: sym(Some(KEY1), Some(KEY2)),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let reg = DeviceRegistration::default();
    // Expired.
    let err = e
        .register(now(), &request("ind", KEY1, now().timestamp() as u64 - 3600), &reg)
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (401, codes::UNAUTHORIZED));
    assert!(err.to_string().contains("expired"), "{}", err);
    // Wrong key.
    let err = e
        .register(now(), &request("ind", "d3Jvbmcga2V5IHdyb25nIGtleQ==", exp()), &reg)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("SAS signature does not match any key this service accepts for registration 'ind'"),
        "{}",
        err
    );
    // Malformed.
    let mut bad = request("ind", KEY1, exp());
    bad.credential = Credential::Sas("SharedAccessSignature sig=x".into());
    let err = e.register(now(), &bad, &reg).await.unwrap_err();
    assert!(err.to_string().contains("malformed"), "{}", err);
    // Token for another device.
    let mut other = request("ind", KEY1, exp());
    other.registration_id = "ind2".into();
    let err = e.register(now(), &other, &reg).await.unwrap_err();
    assert!(err.to_string().contains("audience"), "{}", err);
    // Unknown scope.
    let mut scope = request("ind", KEY1, exp());
    scope.id_scope = "0neWRONG".into();
    let err = e.register(now(), &scope, &reg).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (404, codes::ID_SCOPE_NOT_FOUND));
    // Unknown registration id.
    let err = e
        .register(now(), &request("nobody", KEY2, exp()), &reg)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("SAS signature does not match any key this service accepts for registration 'nobody'"),
        "{}",
        err
    );
    // An unknown id and a wrong key read the same, and no refusal says how many groups exist.
    let wrong_key = e
        .register(now(), &request("ind", "d3Jvbmcga2V5IHdyb25nIGtleQ==", exp()), &reg)
        .await
        .unwrap_err();
    assert_eq!(
        (
            wrong_key.status(),
            wrong_key.code(),
            wrong_key.to_string().replace("'ind'", "'nobody'")
        ),
        (err.status(), err.code(), err.to_string().clone())
    );
    assert!(!err.to_string().contains("group(s)"), "{}", err);
    // Bad registration id.
    let err = e
        .register(now(), &request("bad id!", KEY1, exp()), &reg)
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (400, codes::ARGUMENT_INVALID));
    // Body id mismatch.
    let body = DeviceRegistration {
        registration_id: Some("other".into()),
        ..Default::default()
    };
    let err = e
        .register(now(), &request("ind", KEY1, exp()), &body)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not match"));
    // Unknown operation.
    let err = e
        .operation_status(now(), &request("ind", KEY1, exp()), "4.nope")
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::OPERATION_NOT_FOUND);
    // Nothing was written by any of these.
    assert!(e.get_registration("ind").await.is_err());
}

#[tokio::test]
async fn hub_failures_are_reported_not_persisted() {
    let (e, hub) = engine().await;
    e.put_enrollment(
        now(),
        "nohub",
        IndividualEnrollment {
            attestation: sym(Some(KEY1), None),
            // Static allocation naming no hub: written fine, and no hub to assign.
            allocation_policy: Some(dps_proto::model::service::AllocationPolicy::Static),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let r = register_and_poll(&e, &request("nohub", KEY1, exp())).await.unwrap();
    assert_eq!(r.status, RegistrationStatus::Failed);
    assert_eq!(r.registration_state.error_code, Some(codes::HUB_NOT_SPECIFIED));

    e.put_enrollment(
        now(),
        "refused",
        IndividualEnrollment {
            attestation: sym(Some(KEY1), None),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    *hub.refuse.lock() = true;
    let r = register_and_poll(&e, &request("refused", KEY1, exp())).await.unwrap();
    assert_eq!(r.status, RegistrationStatus::Failed);
    assert_eq!(r.registration_state.error_code, Some(codes::HUB_UNAUTHORIZED));
    assert!(e.get_registration("refused").await.is_err());
}

#[tokio::test]
async fn service_api_secrets_etags_and_paging() {
    let (e, _) = engine().await;
    // Keys generated when absent, returned on PUT, stripped on GET, kept on GET -> PUT.
    let created = e
        .put_enrollment(
            now(),
            "svc-1",
            IndividualEnrollment {
                attestation: sym(None, None),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let keys = created.attestation.symmetric_key.clone().unwrap();
    assert_eq!(base64_len(keys.primary_key.as_deref().unwrap()), 64);
    let got = e.get_enrollment("svc-1").await.unwrap();
    assert_eq!(got.attestation.symmetric_key, Some(SymmetricKeyAttestation::default()));
    assert_eq!(
        got.registration_state.as_ref().unwrap().status,
        RegistrationStatus::Unassigned
    );
    let etag = got.etag.clone();
    let mut upd = got.clone();
    upd.provisioning_status = Some(ProvisioningStatus::Disabled);
    let updated = e
        .put_enrollment(now(), "svc-1", upd.clone(), etag.as_deref())
        .await
        .unwrap();
    assert_eq!(
        updated.attestation.symmetric_key.unwrap(),
        keys,
        "GET -> PUT keeps the keys"
    );
    assert_ne!(updated.etag, etag);
    assert_eq!(
        e.enrollment_attestation("svc-1").await.unwrap().symmetric_key.unwrap(),
        keys
    );
    // Stale etag, create-without-etag on existing.
    let err = e
        .put_enrollment(now(), "svc-1", upd.clone(), etag.as_deref())
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (412, codes::ENROLLMENT_ETAG_MISMATCH));
    let err = e
        .put_enrollment(
            now(),
            "svc-1",
            IndividualEnrollment {
                attestation: sym(None, None),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (409, codes::ENROLLMENT_EXISTS));
    // Validation.
    let err = e
        .put_enrollment(
            now(),
            "svc-2",
            IndividualEnrollment {
                attestation: sym(Some("c2hvcnQ="), None),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("16..=64"), "{}", err);
    let err = e
        .put_enrollment(now(), "svc-2", IndividualEnrollment::default(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("'none' is not allowed"));
    let tpm = AttestationMechanism {
        kind: AttestationType::Tpm,
        tpm: Some(TpmAttestation {
            endorsement_key: Some(B64.encode(RsaPublic::endorsement_template(vec![0xc5; 256]).to_tpm2b())),
            storage_root_key: None,
            endorsement_key_certificate: None,
        }),
        ..Default::default()
    };
    let t = e
        .put_enrollment(
            now(),
            "tpm-1",
            IndividualEnrollment {
                attestation: tpm.clone(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(t.attestation, tpm, "TPM attestation stored faithfully");

    // Paging: 7 items, pages of 3 -> 3, 3, 1 (+ the two above).
    for i in 0..7 {
        e.put_enrollment(
            now(),
            &format!("page-{i}"),
            IndividualEnrollment {
                attestation: sym(None, None),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    }
    let mut sizes = vec![];
    let mut token = None;
    loop {
        let p = e.query_enrollments("", token.as_deref(), Some(3)).await.unwrap();
        sizes.push(p.items.len());
        assert!(p.items.iter().all(|i| i
            .attestation
            .symmetric_key
            .as_ref()
            .is_none_or(|k| k.primary_key.is_none())));
        token = p.continuation;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(sizes, vec![3, 3, 3]); // 9 items in all
    let err = e.query_enrollments("", Some("%%%"), None).await.unwrap_err();
    assert_eq!(err.status(), 400);

    // A WHERE filters (Azure's DPS ignores it; dps applies it), across pages, resuming after
    // the last item of each page.
    let q = "SELECT * FROM enrollments WHERE registrationId IN ['page-1', 'page-4', 'page-5', 'page-6'] \
             AND attestation.type = 'symmetricKey'";
    let (mut ids, mut token) = (vec![], None);
    loop {
        let p = e.query_enrollments(q, token.as_deref(), Some(2)).await.unwrap();
        assert!(p.items.len() <= 2);
        ids.extend(p.items.into_iter().map(|i| i.registration_id));
        token = p.continuation;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(ids, ["page-1", "page-4", "page-5", "page-6"]);
    for not_a_query in ["SELECT *", "*", "everything please"] {
        let all = e.query_enrollments(not_a_query, None, None).await.unwrap();
        assert_eq!(all.items.len(), 9, "{not_a_query}");
    }
    let top = e
        .query_enrollments("SELECT TOP 2 * FROM enrollments", None, None)
        .await
        .unwrap();
    assert_eq!((top.items.len(), top.continuation), (2, None));
    // What DPS cannot answer, and what does not parse, is a 400 naming where.
    let err = e
        .query_enrollments("SELECT registrationId FROM enrollments", None, None)
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (400, 400001));
    assert!(err.to_string().contains("SELECT *"), "{err}");
    let err = e
        .query_groups("SELECT * FROM enrollmentGroups WHERE", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "the query is invalid at character 36: expected a property path, a constant, a function or '(', found the end of the query");

    // Bulk.
    let bulk = BulkEnrollmentOperation {
        mode: BulkMode::Create,
        enrollments: vec![
            IndividualEnrollment {
                registration_id: "b-1".into(),
                attestation: sym(None, None),
                ..Default::default()
            },
            IndividualEnrollment {
                registration_id: "svc-1".into(),
                attestation: sym(None, None),
                ..Default::default()
            },
        ],
    };
    let res = e.bulk_enrollments(now(), bulk).await.unwrap();
    assert!(!res.is_successful);
    assert_eq!(res.errors.len(), 1);
    assert_eq!(res.errors[0].error_code, codes::ENROLLMENT_EXISTS);
    assert!(e.get_enrollment("b-1").await.is_ok());
    let dup = BulkEnrollmentOperation {
        mode: BulkMode::Delete,
        enrollments: vec![
            IndividualEnrollment {
                registration_id: "b-1".into(),
                ..Default::default()
            },
            IndividualEnrollment {
                registration_id: "B-1".into(),
                ..Default::default()
            },
        ],
    };
    assert_eq!(
        e.bulk_enrollments(now(), dup).await.unwrap_err().code(),
        codes::BULK_INVALID
    );

    // Delete with stale etag, then delete.
    assert_eq!(
        e.delete_enrollment("svc-1", Some("\"stale\""))
            .await
            .unwrap_err()
            .status(),
        412
    );
    e.delete_enrollment("svc-1", None).await.unwrap();
    assert_eq!(
        e.get_enrollment("svc-1").await.unwrap_err().code(),
        codes::ENROLLMENT_NOT_FOUND
    );
}

fn base64_len(s: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap().len()
}

#[tokio::test]
async fn time_comes_from_the_clock_passed_in() {
    use dps_core::{Clock, FakeClock};
    let (e, _) = engine().await;
    e.put_enrollment(
        now(),
        "timed",
        IndividualEnrollment {
            attestation: sym(Some(KEY1), None),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let clock = FakeClock::at(now());
    // A token valid for ten minutes.
    let req = request("timed", KEY1, clock.now().timestamp() as u64 + 600);
    let r = e
        .register(clock.now(), &req, &DeviceRegistration::default())
        .await
        .unwrap();
    let created = e.get_registration("timed").await.unwrap();
    assert_eq!(created.created_date_time_utc, Some(clock.now()));
    // Within the 5-minute skew after expiry it still works; beyond it the same token is refused.
    clock.advance(chrono::Duration::seconds(600 + 299));
    e.register(clock.now(), &req, &DeviceRegistration::default())
        .await
        .unwrap();
    let later = e.get_registration("timed").await.unwrap();
    assert_eq!(
        later.created_date_time_utc, created.created_date_time_utc,
        "creation time is kept"
    );
    assert_eq!(later.last_updated_date_time_utc, Some(clock.now()));
    clock.advance(chrono::Duration::seconds(2));
    let err = e
        .register(clock.now(), &req, &DeviceRegistration::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{}", err);
    // Polling the first operation with the now-expired token is refused too.
    let err = e
        .operation_status(clock.now(), &req, &r.operation().unwrap().operation_id)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{}", err);
}

#[tokio::test]
async fn immediate_assignment_answers_register_with_the_final_state() {
    let (e, hub) = engine_with(|c| c.immediate_assignment = true).await;
    e.put_enrollment(
        now(),
        "dev-imm",
        IndividualEnrollment {
            attestation: sym(Some(KEY1), Some(KEY2)),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let req = request("dev-imm", KEY1, exp());
    let r = e.register(now(), &req, &DeviceRegistration::default()).await.unwrap();
    assert_eq!((r.status(), r.retry_after()), (200, None));
    assert_eq!(r.operation().unwrap().status, RegistrationStatus::Assigned);
    assert_eq!(
        r.operation().unwrap().registration_state.assigned_hub.as_deref(),
        Some(HUB)
    );
    assert_eq!(
        r.operation().unwrap().registration_state.device_id.as_deref(),
        Some("dev-imm")
    );
    assert_eq!(hub.devices.lock().len(), 1, "the hub identity exists before the reply");
    // The record is committed, and a device that polls anyway gets the same answer.
    assert_eq!(
        e.get_registration("dev-imm").await.unwrap().status,
        RegistrationStatus::Assigned
    );
    let p = e
        .operation_status(now(), &req, &r.operation().unwrap().operation_id)
        .await
        .unwrap();
    assert_eq!((p.status, p.body), (200, r.operation().unwrap().clone()));
    // Failures are final answers too: a disabled enrollment says so in the register reply.
    e.put_enrollment(
        now(),
        "dev-off",
        IndividualEnrollment {
            attestation: sym(Some(KEY1), None),
            provisioning_status: Some(ProvisioningStatus::Disabled),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let off = e
        .register(now(), &request("dev-off", KEY1, exp()), &DeviceRegistration::default())
        .await
        .unwrap();
    assert_eq!(
        (off.status(), off.operation().unwrap().status),
        (200, RegistrationStatus::Disabled)
    );
}

/// `initialTwin` is checked against IoT Hub's twin rules when an enrollment or group is stored
/// (issue 9 item 5): a wrong type, a bad key, too deep or too large is a 400 naming the field,
/// nothing is stored, and the same id with a good twin is accepted right after.
#[tokio::test]
async fn initial_twin_is_validated_when_stored() {
    use serde_json::{json, Value};
    let (e, hub) = engine().await;
    let twin = |tags: Value, desired: Value| InitialTwin {
        tags: Some(tags),
        properties: Some(InitialTwinProperties { desired: Some(desired) }),
    };
    let mut deep = json!({"leaf": 1});
    for i in 0..11 {
        deep = json!({ format!("l{i}"): deep });
    }
    let big: serde_json::Map<String, Value> = (0..9).map(|i| (format!("k{i}"), json!("x".repeat(4096)))).collect();
    let cases: Vec<(InitialTwin, &str)> = vec![
        (
            twin(json!("hello"), json!({})),
            "initialTwin.tags must be a JSON object, got a string",
        ),
        (
            twin(json!({}), json!([1, 2])),
            "initialTwin.properties.desired must be a JSON object, got an array",
        ),
        (twin(json!({"a.b": 1}), json!({})), "initialTwin.tags"),
        (twin(json!({}), deep), "nested 11 levels deep"),
        (
            twin(Value::Object(big), json!({})),
            "initialTwin.tags would be 36882 bytes",
        ),
        (twin(json!({}), json!({"n": 9_007_199_254_740_993u64})), "out of range"),
    ];
    for (bad, expected) in cases {
        let enr = IndividualEnrollment {
            attestation: sym(Some(KEY1), Some(KEY2)),
            initial_twin: Some(bad.clone()),
            ..Default::default()
        };
        let err = e.put_enrollment(now(), "twin-1", enr, None).await.unwrap_err();
        assert_eq!((err.status(), err.code()), (400, codes::ARGUMENT_INVALID), "{err:?}");
        assert!(err.to_string().contains(expected), "{expected:?} not in {:?}", err);
        assert_eq!(e.get_enrollment("twin-1").await.unwrap_err().status(), 404);

        let group = EnrollmentGroup {
            attestation: sym(Some(KEY1), Some(KEY2)),
            initial_twin: Some(bad.clone()),
            ..Default::default()
        };
        let err = e.put_group(now(), "twin-group", group, None).await.unwrap_err();
        assert_eq!((err.status(), err.code()), (400, codes::ARGUMENT_INVALID), "{err:?}");
        assert!(err.to_string().contains(expected), "{expected:?} not in {:?}", err);
        assert_eq!(e.get_group("twin-group").await.unwrap_err().status(), 404);

        // Bulk reports the same error for the item and stores nothing.
        let bulk = BulkEnrollmentOperation {
            mode: BulkMode::Create,
            enrollments: vec![IndividualEnrollment {
                registration_id: "twin-bulk".into(),
                attestation: sym(Some(KEY1), Some(KEY2)),
                initial_twin: Some(bad),
                ..Default::default()
            }],
        };
        let res = e.bulk_enrollments(now(), bulk).await.unwrap();
        assert!(!res.is_successful);
        assert_eq!(res.errors[0].error_code, codes::ARGUMENT_INVALID);
        assert!(res.errors[0].error_status.contains(expected));
        assert_eq!(e.get_enrollment("twin-bulk").await.unwrap_err().status(), 404);
    }
    assert!(hub.devices.lock().is_empty());

    // At the limits exactly, and with the read-only echoes a client copies from a twin it read.
    let mut fits = json!({"leaf": 1});
    for i in 0..10 {
        fits = json!({ format!("l{i}"): fits });
    }
    let good = twin(json!({"site": "a", "$version": 3}), fits);
    let enr = IndividualEnrollment {
        attestation: sym(Some(KEY1), Some(KEY2)),
        initial_twin: Some(good.clone()),
        ..Default::default()
    };
    e.put_enrollment(now(), "twin-1", enr, None).await.unwrap();
    assert_eq!(e.get_enrollment("twin-1").await.unwrap().initial_twin, Some(good));
    let done = register_and_poll(&e, &request("twin-1", KEY1, exp())).await.unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
}
