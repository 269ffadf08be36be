//! The engine takes its randomness from an injected source, as it takes time: with a
//! `SeededRandom` and the same clock, the same requests give the same operation ids, etags,
//! generated keys, verification codes, TPM challenge and hub-key blobs, and tracking ids.

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use dps_core::store::memory::MemoryStore;
use dps_core::{Credential, Engine, EngineConfig, Registered, SeededRandom};
use dps_proto::model::certificate::CertificateBody;
use dps_proto::model::device::{DeviceRegistration, TpmKeys};
use dps_proto::model::service::IndividualEnrollment;
use dps_tpm::software::SoftwareTpm;
use rand::SeedableRng;

mod common;

use common::{device_request, sas_request, sym, tpm_enrollment, FakeHub, HUB, SCOPE};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// The inputs, made once (they are not the engine's randomness): a TPM and a CA certificate.
fn inputs() -> &'static (SoftwareTpm, String) {
    static INPUTS: OnceLock<(SoftwareTpm, String)> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let tpm = SoftwareTpm::generate(&mut rand::rngs::StdRng::seed_from_u64(1)).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "determinism CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let ca = p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        (tpm, ca.pem())
    })
}

/// Everything random the engine hands out in one run of the same requests.
async fn transcript(seed: u64) -> Vec<String> {
    let (tpm, ca_pem) = inputs();
    let engine = Engine::new(
        EngineConfig::single_hub(SCOPE, HUB),
        Arc::new(MemoryStore::new()),
        Arc::new(FakeHub::default()),
    )
    .with_random(Arc::new(SeededRandom::new(seed)));
    engine.load().await.unwrap();
    let mut out = Vec::new();

    // Generated symmetric keys and the enrollment's etag.
    let e = engine
        .put_enrollment(
            now(),
            "dev-1",
            IndividualEnrollment {
                attestation: sym(None, None),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    out.push(e.etag.clone().unwrap());
    let key = e.attestation.symmetric_key.unwrap().primary_key.unwrap();
    out.push(key.clone());

    // The operation id, and the record's etag.
    let req = sas_request("dev-1", &key, now().timestamp() as u64 + 3600);
    let r = engine
        .register(now(), &req, &DeviceRegistration::default())
        .await
        .unwrap();
    let operation_id = r.operation().unwrap().operation_id.clone();
    out.push(operation_id.clone());
    let polled = engine.operation_status(now(), &req, &operation_id).await.unwrap();
    out.push(polled.body.registration_state.etag.unwrap());

    // The TPM challenge blob (its key and OAEP seeds), then the hub key blob.
    engine
        .put_enrollment(now(), "tpm-1", tpm_enrollment(&tpm.endorsement_key()), None)
        .await
        .unwrap();
    let body = DeviceRegistration {
        tpm: Some(TpmKeys {
            endorsement_key: B64.encode(tpm.endorsement_key()),
            storage_root_key: Some(B64.encode(tpm.storage_root_key())),
        }),
        ..Default::default()
    };
    let Registered::TpmChallenge(challenge) = engine
        .register(now(), &device_request("tpm-1", Credential::None), &body)
        .await
        .unwrap()
    else {
        panic!("a TPM challenge")
    };
    out.push(challenge.authentication_key.clone());
    let challenge_key = tpm
        .activate(&B64.decode(&challenge.authentication_key).unwrap())
        .unwrap();
    let token = dps_proto::sas::build_token(
        &format!("{SCOPE}/registrations/tpm-1"),
        &B64.encode(&challenge_key),
        now().timestamp() as u64 + 3600,
        Some("registration"),
    )
    .unwrap();
    let tpm_req = device_request("tpm-1", Credential::Sas(token));
    let r = engine.register(now(), &tpm_req, &body).await.unwrap();
    let polled = engine
        .operation_status(now(), &tpm_req, &r.operation().unwrap().operation_id)
        .await
        .unwrap();
    out.push(polled.body.registration_state.tpm.unwrap().authentication_key);

    // A CA certificate's verification code, and a tracking id.
    let body = CertificateBody {
        certificate: ca_pem.clone(),
        is_verified: false,
    };
    engine.put_certificate(now(), "ca-1", body, None).await.unwrap();
    let code = engine.generate_verification_code(now(), "ca-1", None).await.unwrap();
    out.push(code.properties.verification_code.unwrap());
    out.push(code.etag);
    out.push(engine.tracking_id());
    out
}

#[tokio::test]
async fn the_same_seed_and_clock_give_the_same_answers() {
    let first = transcript(42).await;
    assert_eq!(first, transcript(42).await);
    let other = transcript(43).await;
    assert_eq!(first.len(), other.len());
    for (a, b) in first.iter().zip(&other) {
        assert_ne!(a, b, "every value comes from the injected source");
    }
}
