//! TPM attestation through the engine: the challenge, the TPM-signed SAS, the hub key blob. The
//! device's TPM is played by `dps_tpm::software::SoftwareTpm` (EK/SRK private keys in memory),
//! which checks every integrity value a TPM checks; `dps-tpm/tests/swtpm.rs` proves the same
//! blobs against a real TPM.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Duration, TimeZone, Utc};
use dps_core::{Clock, Credential, DeviceAuth, DeviceRequest, Engine, Error, FakeClock, Registered};
use dps_proto::codes;
use dps_proto::model::device::{DeviceRegistration, TpmKeys};
use dps_proto::model::service::*;
use dps_proto::sas::build_token;
use dps_tpm::software::SoftwareTpm;

mod common;

use common::{engine, engine_with, FakeHub, SCOPE};

/// Two simulated TPMs, made once: RSA key generation is the slow part of these tests.
fn tpms() -> &'static [SoftwareTpm; 2] {
    static TPMS: OnceLock<[SoftwareTpm; 2]> = OnceLock::new();
    TPMS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        [
            SoftwareTpm::generate(&mut rng).unwrap(),
            SoftwareTpm::generate(&mut rng).unwrap(),
        ]
    })
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

/// A TPM enrollment for `tpm`'s EK, with its SRK when `with_srk`.
fn enrollment(tpm: &SoftwareTpm, with_srk: bool) -> IndividualEnrollment {
    IndividualEnrollment {
        attestation: AttestationMechanism {
            kind: AttestationType::Tpm,
            tpm: Some(TpmAttestation {
                endorsement_key: Some(b64(&tpm.endorsement_key())),
                storage_root_key: with_srk.then(|| b64(&tpm.storage_root_key())),
                endorsement_key_certificate: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The register body a TPM device sends (both requests).
fn body(tpm: &SoftwareTpm) -> DeviceRegistration {
    DeviceRegistration {
        tpm: Some(TpmKeys {
            endorsement_key: b64(&tpm.endorsement_key()),
            storage_root_key: Some(b64(&tpm.storage_root_key())),
        }),
        ..Default::default()
    }
}

fn request(reg: &str, credential: Credential) -> DeviceRequest {
    DeviceRequest {
        id_scope: SCOPE.into(),
        registration_id: reg.into(),
        credential,
        api_version: Some("2021-06-01".into()),
        source: None,
        transport: Default::default(),
    }
}

/// A SAS token as the device's TPM signs it: HMAC-SHA256 with the imported key.
fn sas(reg: &str, key: &[u8], now: DateTime<Utc>) -> Credential {
    let expiry = now.timestamp() as u64 + 2400;
    Credential::Sas(
        build_token(
            &format!("{SCOPE}/registrations/{reg}"),
            &b64(key),
            expiry,
            Some("registration"),
        )
        .unwrap(),
    )
}

/// Asks for a challenge as HTTPS does — a register request without a credential that carries
/// the TPM's keys, which the engine answers with the challenge — and opens it in `tpm`: the
/// challenge key.
async fn challenge_key(e: &Engine, now: DateTime<Utc>, reg: &str, tpm: &SoftwareTpm) -> Vec<u8> {
    let asked = e
        .register(now, &request(reg, Credential::None), &body(tpm))
        .await
        .unwrap();
    assert_eq!(
        (asked.status(), asked.retry_after(), asked.operation()),
        (401, None, None)
    );
    let Registered::TpmChallenge(c) = asked else {
        panic!("a TPM challenge: {asked:?}")
    };
    assert_eq!(c.key_name, "registration");
    assert!(c.message.contains("TPM challenge"), "{}", c.message);
    tpm.activate(&B64.decode(&c.authentication_key).unwrap())
        .unwrap()
        .to_vec()
}

/// Register + poll with a TPM-signed SAS; the final operation status.
async fn register(
    e: &Engine,
    now: DateTime<Utc>,
    reg: &str,
    tpm: &SoftwareTpm,
    key: &[u8],
) -> Result<RegistrationState, Error> {
    let req = request(reg, sas(reg, key, now));
    let r = e.register(now, &req, &body(tpm)).await?;
    assert_eq!(r.status(), 202);
    let p = e
        .operation_status(now, &req, &r.operation().unwrap().operation_id)
        .await?;
    assert_eq!(p.status, 200);
    Ok(p.body.registration_state)
}

/// Asserts the error's code (and the status it implies) and that its message says `needle`.
#[track_caller]
fn refused(err: &Error, code: u32, needle: &str) {
    assert_eq!((u32::from(err.status()), err.code()), (code / 1000, code), "{}", err);
    assert!(err.to_string().contains(needle), "{}", err);
}

fn hub_primary_key(hub: &FakeHub) -> Vec<u8> {
    match &hub.devices.lock().last().expect("a hub device").auth {
        DeviceAuth::Sas { primary_key, .. } => B64.decode(primary_key).unwrap(),
        other => panic!("TPM devices get SAS keys in the hub, not {other:?}"),
    }
}

#[tokio::test]
async fn challenge_then_tpm_signed_sas_assigns_and_delivers_the_hub_key() {
    let (e, hub) = engine().await;
    let tpm = &tpms()[0];
    // The enrollment's registration id need not be the TPM's default (base32 of the EK hash).
    e.put_enrollment(start(), "tpm-device-1", enrollment(tpm, true), None)
        .await
        .unwrap();

    let key = challenge_key(&e, start(), "tpm-device-1", tpm).await;
    assert_eq!(key.len(), 32);
    let st = register(&e, start(), "tpm-device-1", tpm, &key).await.unwrap();
    assert_eq!(st.status, RegistrationStatus::Assigned, "{st:?}");
    assert_eq!(st.device_id.as_deref(), Some("tpm-device-1"));
    assert_eq!(st.substatus, Some(Substatus::InitialAssignment));

    // The result carries the hub key, wrapped for the same TPM; it is the hub device's primary key.
    let blob = &st.tpm.as_ref().expect("registrationState.tpm").authentication_key;
    let hub_key = tpm.activate(&B64.decode(blob).unwrap()).unwrap();
    assert_eq!(hub_key.len(), 32);
    assert_eq!(&hub_key[..], &hub_primary_key(&hub)[..]);
    assert_ne!(&hub_key[..], &key[..], "the challenge key is not the hub key");
    match &hub.devices.lock()[0].auth {
        DeviceAuth::Sas {
            primary_key,
            secondary_key,
        } => assert_ne!(primary_key, secondary_key),
        other => panic!("{other:?}"),
    }

    // The registration record (service view) says tpm and shows no blob.
    let rec = e.get_registration("tpm-device-1").await.unwrap();
    assert_eq!(rec.status, RegistrationStatus::Assigned);
    assert!(rec.tpm.is_none());

    // The spent challenge still authenticates the device's reads while it lasts (a poll that
    // reaches another node than the registration did, its registration status)...
    let again = request("tpm-device-1", sas("tpm-device-1", &key, start()));
    let status = e.registration_status(start(), &again).await.unwrap();
    assert_eq!(status.device_id.as_deref(), Some("tpm-device-1"));
    // ...but the same token cannot register again.
    let err = e.register(start(), &again, &body(tpm)).await.unwrap_err();
    // Answered like any unmatched SAS token (a distinct answer would reveal the TPM
    // enrollment to whoever asks), with the hint a TPM device needs.
    refused(&err, codes::UNAUTHORIZED, "does not match any key this service accepts");
    assert!(
        err.to_string()
            .contains("TPM challenge, which lasts 300 s and serves one registration"),
        "{}",
        err
    );

    // Re-provisioning: a new challenge, new hub keys, same hub and device.
    let later = start() + Duration::minutes(10);
    let key2 = challenge_key(&e, later, "tpm-device-1", tpm).await;
    let st2 = register(&e, later, "tpm-device-1", tpm, &key2).await.unwrap();
    assert_eq!(st2.status, RegistrationStatus::Assigned);
    assert_eq!(st2.assigned_hub, st.assigned_hub);
    assert_eq!(st2.created_date_time_utc, st.created_date_time_utc);
    let hub_key2 = tpm
        .activate(&B64.decode(&st2.tpm.unwrap().authentication_key).unwrap())
        .unwrap();
    assert_eq!(&hub_key2[..], &hub_primary_key(&hub)[..]);
    assert_ne!(hub_key2, hub_key, "each registration rotates the hub key");
}

#[tokio::test]
async fn challenges_expire_and_only_their_key_signs() {
    let (e, _hub) = engine().await;
    let tpm = &tpms()[0];
    e.put_enrollment(start(), "dev", enrollment(tpm, false), None)
        .await
        .unwrap();
    let clock = FakeClock::at(start());

    // Never asked.
    let err = register(&e, clock.now(), "dev", tpm, &[7; 32]).await.unwrap_err();
    refused(&err, codes::UNAUTHORIZED, "does not match any key this service accepts");

    // Outstanding, but the token is signed with another key.
    let key = challenge_key(&e, clock.now(), "dev", tpm).await;
    let err = register(&e, clock.now(), "dev", tpm, &[7; 32]).await.unwrap_err();
    refused(&err, codes::UNAUTHORIZED, "does not match any key this service accepts");

    // Expired after five minutes.
    clock.advance(Duration::seconds(301));
    let err = register(&e, clock.now(), "dev", tpm, &key).await.unwrap_err();
    refused(&err, codes::UNAUTHORIZED, "does not match any key this service accepts");

    // Within the lifetime, it works; an older outstanding challenge of the same device too.
    let first = challenge_key(&e, clock.now(), "dev", tpm).await;
    clock.advance(Duration::seconds(30));
    let second = challenge_key(&e, clock.now(), "dev", tpm).await;
    assert_ne!(first, second);
    clock.advance(Duration::seconds(200));
    let st = register(&e, clock.now(), "dev", tpm, &first).await.unwrap();
    assert_eq!(st.status, RegistrationStatus::Assigned);
    let st = register(&e, clock.now(), "dev", tpm, &second).await.unwrap();
    assert_eq!(st.status, RegistrationStatus::Assigned);

    // Only the newest few are kept: the oldest of five is gone.
    let keys = [
        challenge_key(&e, clock.now(), "dev", tpm).await,
        challenge_key(&e, clock.now(), "dev", tpm).await,
        challenge_key(&e, clock.now(), "dev", tpm).await,
        challenge_key(&e, clock.now(), "dev", tpm).await,
        challenge_key(&e, clock.now(), "dev", tpm).await,
    ];
    let err = register(&e, clock.now(), "dev", tpm, &keys[0]).await.unwrap_err();
    assert_eq!(err.code(), codes::UNAUTHORIZED, "{}", err);
    register(&e, clock.now(), "dev", tpm, &keys[4]).await.unwrap();
}

#[tokio::test]
async fn the_challenge_is_refused_to_devices_that_do_not_match_their_enrollment() {
    let (e, _hub) = engine().await;
    let [a, b] = tpms();
    let ask = |reg: &'static str, body: DeviceRegistration| {
        let e = &e;
        async move {
            e.tpm_challenge(start(), &request(reg, Credential::None), &body)
                .await
                .unwrap_err()
        }
    };

    let err = ask("nobody", body(a)).await;
    // Every mismatch reads the same: nothing tells an unauthenticated caller which ids exist.
    const NO_MATCH: &str = "has the endorsement key and storage root key sent";
    refused(&err, codes::UNAUTHORIZED, NO_MATCH);
    let nobody = err.to_string().clone();

    // Enrolled with B's EK; A asks.
    e.put_enrollment(start(), "ek-b", enrollment(b, false), None)
        .await
        .unwrap();
    let err = ask("ek-b", body(a)).await;
    refused(&err, codes::UNAUTHORIZED, NO_MATCH);
    assert_eq!(err.to_string(), nobody.replace("'nobody'", "'ek-b'"));

    // Enrolled with B's EK and A's SRK; B asks with its own SRK.
    let mut mixed = enrollment(b, false);
    mixed.attestation.tpm.as_mut().unwrap().storage_root_key = Some(b64(&a.storage_root_key()));
    e.put_enrollment(start(), "srk-a", mixed, None).await.unwrap();
    let err = ask("srk-a", body(b)).await;
    refused(&err, codes::UNAUTHORIZED, NO_MATCH);
    assert_eq!(err.to_string(), nobody.replace("'nobody'", "'srk-a'"));

    // A symmetric-key enrollment.
    let sym = IndividualEnrollment {
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            ..Default::default()
        },
        ..Default::default()
    };
    e.put_enrollment(start(), "sym", sym, None).await.unwrap();
    let err = ask("sym", body(a)).await;
    refused(&err, codes::UNAUTHORIZED, NO_MATCH);
    assert_eq!(err.to_string(), nobody.replace("'nobody'", "'sym'"));

    // Bad device input: no SRK, an SRK that is not base64 or not a key, a body id that is not
    // the request's, no TPM keys at all.
    e.put_enrollment(start(), "ok", enrollment(a, false), None)
        .await
        .unwrap();
    let with_srk = |srk: Option<String>| {
        let mut d = body(a);
        d.tpm.as_mut().unwrap().storage_root_key = srk;
        d
    };
    let invalid = codes::ARGUMENT_INVALID;
    refused(
        &ask("ok", with_srk(None)).await,
        invalid,
        "tpm.storageRootKey is required",
    );
    let err = ask("ok", with_srk(Some("not base64!".into()))).await;
    refused(&err, invalid, "tpm.storageRootKey is not valid base64");
    let err = ask("ok", with_srk(Some(b64(&[0, 2, 0, 0x23])))).await;
    refused(&err, invalid, "tpm.storageRootKey: storage root key");
    let mut other_id = body(a);
    other_id.registration_id = Some("someone-else".into());
    refused(
        &ask("ok", other_id).await,
        invalid,
        "does not match the registration id 'ok'",
    );
    let err = ask("ok", DeviceRegistration::default()).await;
    refused(&err, invalid, "needs the device's keys");
}

#[tokio::test]
async fn enrollment_rules_disabled_devices_and_transports() {
    let (e, _hub) = engine().await;
    let tpm = &tpms()[0];

    // Enrollments accept only keys the challenge can be built for.
    let mut junk = enrollment(tpm, false);
    junk.attestation.tpm.as_mut().unwrap().endorsement_key = Some("AAECAwQ=".into());
    let err = e.put_enrollment(start(), "junk", junk, None).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (400, codes::ARGUMENT_INVALID));
    assert_eq!(
        err.to_string(),
        "tpm endorsementKey: endorsement key: the TPM2B size says 1 byte(s) but 3 follow"
    );
    let mut srk_as_ek = enrollment(tpm, true);
    srk_as_ek.attestation.tpm.as_mut().unwrap().storage_root_key = Some(b64(b"\x00\x01x"));
    let err = e.put_enrollment(start(), "junk", srk_as_ek, None).await.unwrap_err();
    refused(&err, codes::ARGUMENT_INVALID, "tpm storageRootKey: storage root key");
    let group = EnrollmentGroup {
        attestation: enrollment(tpm, false).attestation,
        ..Default::default()
    };
    let err = e.put_group(start(), "g", group, None).await.unwrap_err();
    refused(&err, codes::ARGUMENT_INVALID, "enrollment groups do not support TPM");

    // A disabled enrollment: attestation works, the registration reports `disabled`.
    let mut off = enrollment(tpm, false);
    off.provisioning_status = Some(ProvisioningStatus::Disabled);
    e.put_enrollment(start(), "off", off, None).await.unwrap();
    let key = challenge_key(&e, start(), "off", tpm).await;
    let st = register(&e, start(), "off", tpm, &key).await.unwrap();
    assert_eq!(st.status, RegistrationStatus::Disabled);
    assert_eq!(st.error_code, Some(codes::ENROLLMENT_DISABLED));
    assert!(st.tpm.is_none());

    // A transport without the challenge step (MQTT) judges the credential before any register
    // (`authenticate`, at CONNECT): a TPM device has none to show there, and a TPM-signed SAS is
    // not judged ahead of a register (tests/authenticate.rs), so it never reaches a register.
    e.put_enrollment(start(), "mqtt", enrollment(tpm, false), None)
        .await
        .unwrap();
    let err = e
        .authenticate(start(), &request("mqtt", Credential::None))
        .await
        .unwrap_err();
    refused(&err, codes::UNAUTHORIZED, "no credential");
    assert!(matches!(err, Error::NoCredential), "{err:?}");
}

/// The engine decides the challenge: a register request without a credential that carries TPM
/// keys is answered with it (what HTTPS sends as the 401 body; [`challenge_key`] checks the
/// outcome), and the key it carries registers the device. Without TPM keys, no credential is
/// simply unauthenticated.
#[tokio::test]
async fn a_register_without_a_credential_but_with_tpm_keys_is_answered_with_the_challenge() {
    let (e, _) = engine().await;
    let tpm = &tpms()[0];
    e.put_enrollment(start(), "tpm-reg", enrollment(tpm, true), None)
        .await
        .unwrap();
    let key = challenge_key(&e, start(), "tpm-reg", tpm).await;
    let st = register(&e, start(), "tpm-reg", tpm, &key).await.unwrap();
    assert_eq!(st.status, RegistrationStatus::Assigned);
    let err = e
        .register(
            start(),
            &request("tpm-reg", Credential::None),
            &DeviceRegistration::default(),
        )
        .await
        .unwrap_err();
    refused(&err, codes::UNAUTHORIZED, "no credential");
}

#[tokio::test]
async fn a_throttled_registration_keeps_its_challenge_so_the_same_request_succeeds_later() {
    let clock = FakeClock::at(start());
    let (e, _) = engine_with(|c| c.quotas.registrations_per_second = 1).await;
    let tpm = &tpms()[0];
    e.put_enrollment(clock.now(), "tpm-thr", enrollment(tpm, true), None)
        .await
        .unwrap();
    let key = challenge_key(&e, clock.now(), "tpm-thr", tpm).await;
    register(&e, clock.now(), "tpm-thr", tpm, &key).await.unwrap();

    // The second registration within the second is throttled before attestation, so its new
    // challenge key is not spent: the device sends the very same request after retry-after.
    let key = challenge_key(&e, clock.now(), "tpm-thr", tpm).await;
    let req = request("tpm-thr", sas("tpm-thr", &key, clock.now()));
    let err = e.register(clock.now(), &req, &body(tpm)).await.unwrap_err();
    refused(&err, codes::THROTTLED, "registrations per second");
    assert_eq!(err.retry_after(), Some(1));
    clock.advance(Duration::seconds(1));
    assert_eq!(e.register(clock.now(), &req, &body(tpm)).await.unwrap().status(), 202);
}

/// AMQP's SASL `TPM` mechanism asks for the challenge inside the exchange and ends it with the
/// TPM-signed SAS: `authenticate_challenged` judges that SAS and spends the challenge then (plain
/// `authenticate` still refuses a TPM credential ahead of a register), and the registration runs
/// on that acceptance, delivering the hub key as over HTTPS.
#[tokio::test]
async fn a_challenge_answered_in_the_connection_authenticates_the_registration() {
    let (e, hub) = engine().await;
    let tpm = &tpms()[0];
    e.put_enrollment(start(), "tpm-amqp", enrollment(tpm, true), None)
        .await
        .unwrap();
    let challenge = e
        .tpm_challenge(start(), &request("tpm-amqp", Credential::None), &body(tpm))
        .await
        .unwrap();
    let key = tpm
        .activate(&B64.decode(&challenge.authentication_key).unwrap())
        .unwrap();
    let req = request("tpm-amqp", sas("tpm-amqp", &key, start()));
    let ahead = e.authenticate(start(), &req).await.unwrap_err();
    assert_eq!(ahead.code(), codes::TPM_TRANSPORT_UNSUPPORTED, "{ahead}");
    let accepted = e.authenticate_challenged(start(), &req).await.unwrap();
    // Spent: the same SAS is not accepted twice.
    let again = e.authenticate_challenged(start(), &req).await.unwrap_err();
    refused(
        &again,
        codes::UNAUTHORIZED,
        "does not match any key this service accepts",
    );

    let r = e
        .register_authenticated(start(), &req, &accepted, &body(tpm))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let p = e
        .operation_status(start(), &req, &r.operation().unwrap().operation_id)
        .await
        .unwrap();
    let st = p.body.registration_state;
    assert_eq!(st.status, RegistrationStatus::Assigned, "{st:?}");
    let hub_key = tpm
        .activate(
            &B64.decode(&st.tpm.expect("registrationState.tpm").authentication_key)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(&hub_key[..], &hub_primary_key(&hub)[..]);
}
