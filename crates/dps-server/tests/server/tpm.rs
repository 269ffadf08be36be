//! TPM attestation over HTTPS, byte for byte as the C and Node SDKs see it (device-protocol.md
//! §7.2): `dps serve` in-process on a loopback address, plain HTTP/1.1 requests over TLS, the
//! device's TPM played by `dps_tpm::software::SoftwareTpm`.

use crate::common;
use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_proto::sas::build_token;
use dps_server::ServerConfig;
use dps_tpm::software::SoftwareTpm;
use serde_json::json;

use crate::common::https;

const IP: &str = "127.0.0.35";

#[tokio::test]
async fn http_challenge_register_poll_and_hub_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServerConfig::defaults();
    c.data_dir = dir.path().to_path_buf();
    c.hostnames = vec![IP.to_string()];
    c.bind = IP.parse::<IpAddr>().unwrap();
    let s = dps_server::start(c).await.expect("server starts");
    let scope = s.services.identity.id_scope.clone();

    let tpm = SoftwareTpm::generate(&mut rand::thread_rng()).unwrap();
    let (ek, srk) = (B64.encode(tpm.endorsement_key()), B64.encode(tpm.storage_root_key()));
    let reg = dps_tpm::registration_id(&tpm.endorsement_key());
    common::enroll_tpm(&s, &reg, &tpm.endorsement_key()).await;

    // What the C SDK sends first: no Authorization, the TPM keys in the body.
    let path = format!("/{scope}/registrations/{reg}/register?api-version=2021-06-01");
    let body = json!({"registrationId": reg, "tpm": {"endorsementKey": ek, "storageRootKey": srk}});
    let challenge = https(&s, "PUT", &path, None, Some(&body)).await;
    assert_eq!(challenge.status, 401, "{}", challenge.body);
    assert!(challenge
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let fields: Vec<&String> = challenge.body.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["authenticationKey", "keyName", "message"],
        "{}",
        challenge.body
    );
    assert_eq!(challenge.body["keyName"], "registration");
    let blob = B64
        .decode(challenge.body["authenticationKey"].as_str().unwrap())
        .unwrap();
    let key = tpm.activate(&blob).unwrap();

    // The same PUT with a SAS the TPM signed; then the poll with the same token.
    let sas = build_token(
        &format!("{scope}/registrations/{reg}"),
        &B64.encode(&key[..]),
        chrono::Utc::now().timestamp() as u64 + 2400,
        Some("registration"),
    )
    .unwrap();
    let accepted = https(&s, "PUT", &path, Some(&sas), Some(&body)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let op = accepted.body["operationId"].as_str().unwrap();
    let poll = format!("/{scope}/registrations/{reg}/operations/{op}?api-version=2021-06-01");
    let done = https(&s, "GET", &poll, Some(&sas), None).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["status"], "assigned", "{}", done.body);
    let state = &done.body["registrationState"];
    assert_eq!(state["deviceId"], reg.as_str());

    // The second blob carries the key the embedded hub now knows the device by.
    let hub_blob = B64.decode(state["tpm"]["authenticationKey"].as_str().unwrap()).unwrap();
    let hub_key = tpm.activate(&hub_blob).unwrap();
    let device = common::hub(&s).get_device(&reg).await.expect("hub device");
    let keys = device.authentication.unwrap().symmetric_key.unwrap();
    assert_eq!(keys.primary_key.unwrap(), B64.encode(&hub_key[..]));

    // The token is spent for registering.
    let replay = https(&s, "PUT", &path, Some(&sas), Some(&body)).await;
    assert_eq!(replay.status, 401);
    // Answered like any SAS no enrollment accepts, so nobody learns the id has a TPM enrollment.
    assert_eq!(replay.body["errorCode"], 401000, "{}", replay.body);
    assert!(
        replay.body["message"]
            .as_str()
            .unwrap()
            .contains("TPM challenge, which lasts"),
        "{}",
        replay.body
    );

    // Without the TPM keys, an unauthenticated register is just unauthenticated.
    let bare = https(&s, "PUT", &path, None, Some(&json!({"registrationId": reg}))).await;
    assert_eq!(bare.status, 401);
    assert_eq!(bare.body["errorCode"], 401000, "{}", bare.body);
    s.shutdown().await;
}
