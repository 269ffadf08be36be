//! `Engine::authenticate` (the credential check MQTT makes at CONNECT) and
//! `Engine::register_authenticated` (a register that reuses it while it is still current).

use chrono::{TimeZone, Utc};
use dps_core::{Credential, DeviceRequest};
use dps_proto::codes;
use dps_proto::keys::derive_device_key;
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::*;
use dps_proto::sas::build_token;

mod common;

use common::{engine, SCOPE};

const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY2: &str = "HxwdGhsYGRYXFBUSExAREA8ODQwLCgkIBwYFBAMCAQA=";

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn sym(primary: &str) -> AttestationMechanism {
    common::sym(Some(primary), None)
}

fn token(audience: &str, key: &str, expiry: i64) -> String {
    build_token(audience, key, expiry as u64, Some("registration")).unwrap()
}

fn request(scope: &str, reg: &str, credential: Credential) -> DeviceRequest {
    DeviceRequest {
        id_scope: scope.into(),
        registration_id: reg.into(),
        credential,
        api_version: Some("2019-03-31".into()),
        source: None,
        transport: Default::default(),
    }
}

fn sas(reg: &str, key: &str) -> DeviceRequest {
    common::sas_request(reg, key, now().timestamp() as u64 + 600)
}

#[tokio::test]
async fn authenticate_judges_the_credential_without_registering() {
    let (e, hub) = engine().await;
    let body = || IndividualEnrollment {
        attestation: sym(KEY1),
        ..Default::default()
    };
    e.put_enrollment(now(), "ind", body(), None).await.unwrap();
    e.put_group(
        now(),
        "grp",
        EnrollmentGroup {
            attestation: sym(KEY2),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();

    // Individual key and group-derived key are accepted; nothing is written.
    let a = e.authenticate(now(), &sas("ind", KEY1)).await.unwrap();
    assert_eq!(a.attestation(), AttestationType::SymmetricKey);
    let dk = derive_device_key(KEY2, "member").unwrap();
    e.authenticate(now(), &sas("member", &dk)).await.unwrap();
    assert!(hub.devices.lock().is_empty());
    assert!(e.get_registration("ind").await.is_err());

    // Each refusal is a 401 (or the scope's 404) with its reason.
    let refuse = |req: DeviceRequest| {
        let e = &e;
        async move { e.authenticate(now(), &req).await.unwrap_err() }
    };
    let wrong_key = refuse(sas("ind", KEY2)).await;
    assert_eq!(wrong_key.code(), codes::UNAUTHORIZED);
    let aud = format!("{SCOPE}/registrations/ind");
    let expired = refuse(request(
        SCOPE,
        "ind",
        Credential::Sas(token(&aud, KEY1, now().timestamp() - 3600)),
    ))
    .await;
    assert_eq!(expired.code(), codes::UNAUTHORIZED);
    assert!(expired.to_string().contains("expired"), "{}", expired);
    let other_audience = refuse(request(
        SCOPE,
        "ind",
        Credential::Sas(token(
            &format!("{SCOPE}/registrations/other"),
            KEY1,
            now().timestamp() + 600,
        )),
    ))
    .await;
    assert_eq!(other_audience.code(), codes::UNAUTHORIZED);
    let group_key_itself = refuse(sas("member", KEY2)).await;
    assert_eq!(group_key_itself.code(), codes::UNAUTHORIZED);
    let nothing = refuse(request(SCOPE, "ind", Credential::None)).await;
    assert_eq!(nothing.code(), codes::UNAUTHORIZED);
    let scope = refuse(request(
        "0neNOPE",
        "ind",
        Credential::Sas(token(&aud, KEY1, now().timestamp() + 600)),
    ))
    .await;
    assert_eq!(scope.code(), codes::ID_SCOPE_NOT_FOUND);
    let not_a_cert = refuse(request(SCOPE, "ind", Credential::X509(vec![b"junk".to_vec()]))).await;
    assert_eq!(not_a_cert.code(), codes::UNAUTHORIZED);

    // A disabled enrollment still authenticates: "disabled" is the registration's result.
    e.put_enrollment(
        now(),
        "off",
        IndividualEnrollment {
            attestation: sym(KEY1),
            provisioning_status: Some(ProvisioningStatus::Disabled),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let off = sas("off", KEY1);
    let a = e.authenticate(now(), &off).await.unwrap();
    let r = e
        .register_authenticated(now(), &off, &a, &DeviceRegistration::default())
        .await
        .unwrap();
    let p = e
        .operation_status(now(), &off, &r.operation().unwrap().operation_id)
        .await
        .unwrap();
    assert_eq!(p.body.status, RegistrationStatus::Disabled);
    assert_eq!(p.body.registration_state.error_code, Some(codes::ENROLLMENT_DISABLED));
}

#[tokio::test]
async fn tpm_enrollments_cannot_be_authenticated_ahead_of_a_register() {
    let (e, _hub) = engine().await;
    let tpm = dps_tpm::software::SoftwareTpm::generate(&mut rand::thread_rng()).unwrap();
    e.put_enrollment(now(), "tpm-dev", common::tpm_enrollment(&tpm.endorsement_key()), None)
        .await
        .unwrap();
    let err = e.authenticate(now(), &sas("tpm-dev", KEY1)).await.unwrap_err();
    assert_eq!(err.code(), codes::TPM_TRANSPORT_UNSUPPORTED, "{}", err);
}

#[tokio::test]
async fn register_reuses_the_authentication_only_while_it_is_current() {
    let (e, hub) = engine().await;
    e.put_enrollment(
        now(),
        "dev",
        IndividualEnrollment {
            attestation: sym(KEY1),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let req = sas("dev", KEY1);
    let a = e.authenticate(now(), &req).await.unwrap();
    let body = DeviceRegistration::default();
    let r = e.register_authenticated(now(), &req, &a, &body).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(hub.devices.lock().len(), 1);

    // The enrollment's key is rotated after CONNECT: the old result is not reused, and the
    // register is refused exactly as a fresh attestation would refuse it.
    let current = e.get_enrollment("dev").await.unwrap();
    e.put_enrollment(
        now(),
        "dev",
        IndividualEnrollment {
            attestation: sym(KEY2),
            ..Default::default()
        },
        current.etag.as_deref(),
    )
    .await
    .unwrap();
    let err = e.register_authenticated(now(), &req, &a, &body).await.unwrap_err();
    assert_eq!(err.code(), codes::UNAUTHORIZED);
    assert_eq!(hub.devices.lock().len(), 1, "nothing more was provisioned");

    // A result for another device, or another credential, is never taken for this one.
    let req2 = sas("dev", KEY2);
    let err = e.register_authenticated(now(), &req2, &a, &body).await;
    assert!(err.is_ok(), "a fresh attestation of the new key succeeds: {err:?}");
    let stranger = sas("stranger", KEY1);
    let err = e.register_authenticated(now(), &stranger, &a, &body).await.unwrap_err();
    assert_eq!(err.code(), codes::UNAUTHORIZED);

    // An enrollment group written after CONNECT (the snapshot changed) also forces a fresh check.
    let a2 = e.authenticate(now(), &req2).await.unwrap();
    e.put_group(
        now(),
        "g",
        EnrollmentGroup {
            attestation: sym(KEY1),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    e.register_authenticated(now(), &req2, &a2, &body).await.unwrap();
    // A SAS that expired since CONNECT is judged again, and refused.
    let later = now() + chrono::Duration::seconds(3600);
    let err = e.register_authenticated(later, &req2, &a2, &body).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{}", err);
}

/// The engine remembers that a group's device has no individual enrollment, and forgets it
/// when one is written or deleted: the individual enrollment takes precedence at once, and its
/// deletion gives the device back to its group.
#[tokio::test]
async fn an_individual_enrollment_takes_precedence_as_soon_as_it_is_written() {
    let (e, _hub) = engine().await;
    let group = EnrollmentGroup {
        attestation: sym(KEY2),
        ..Default::default()
    };
    e.put_group(now(), "grp", group, None).await.unwrap();
    let derived = derive_device_key(KEY2, "member").unwrap();
    let body = DeviceRegistration::default();
    e.register(now(), &sas("member", &derived), &body).await.unwrap();
    e.authenticate(now(), &sas("member", &derived)).await.unwrap();

    let own = IndividualEnrollment {
        attestation: sym(KEY1),
        ..Default::default()
    };
    e.put_enrollment(now(), "Member", own, None).await.unwrap();
    let err = e.authenticate(now(), &sas("member", &derived)).await.unwrap_err();
    assert_eq!(err.code(), codes::UNAUTHORIZED, "{err}");
    e.register(now(), &sas("member", KEY1), &body).await.unwrap();

    e.delete_enrollment("member", None).await.unwrap();
    e.register(now(), &sas("member", &derived), &body).await.unwrap();
}
