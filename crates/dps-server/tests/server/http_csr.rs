//! Registration with a certificate signing request (issue 17, point 2), through the router: the
//! chain is issued by the enrollment's credential policy and openssl verifies it; the hub device
//! authenticates with the issued certificate; every bad request is refused with its reason and
//! leaves nothing behind.

use crate::common::router::*;
use axum::body::Body;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_pki::ca::KeyAlgorithm;
use dps_proto::codes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// The fixture at the real time: the built-in CAs are made with the real clock, and the
/// certificates they issue must be valid within theirs.
fn fixture_now(f: &Fixture) {
    use dps_core::Clock as _;
    f.clock.advance(chrono::Utc::now() - f.clock.now());
}

/// A P-256 request for `cn`, base64 DER.
fn csr_for(cn: &str) -> String {
    let (_, der) = dps_pki::csr::new_key_and_request(cn, KeyAlgorithm::EcdsaP256).unwrap();
    B64.encode(der)
}

/// Creates policy `fleet` and the symmetric-key enrollment `reg` naming `policy`.
async fn enroll_with_policy(f: &Fixture, reg: &str, policy: Option<&str>) {
    f.svc(Method::PUT, "/credentialPolicies/fleet", &[("if-match", "*")], "{}")
        .await
        .assert_json(StatusCode::OK);
    let body = json!({"registrationId": reg, "credentialPolicyName": policy,
                      "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY2}}});
    f.svc(
        Method::PUT,
        &format!("/enrollments/{reg}"),
        &[("if-match", "*")],
        body.to_string(),
    )
    .await
    .assert_json(StatusCode::OK);
}

/// Registers `reg` over HTTPS with `body` and polls to the end; the final operation, or the
/// refusal (status, error code, message).
async fn register(f: &Fixture, reg: &str, body: Value) -> Result<Value, (StatusCode, u32, String)> {
    register_as(f, reg, body, "2025-07-01-preview").await
}

/// [`register`] naming `api_version`.
async fn register_as(
    f: &Fixture,
    reg: &str,
    body: Value,
    api_version: &str,
) -> Result<Value, (StatusCode, u32, String)> {
    let token = f.device_token(reg, DEVICE_KEY);
    let auth = [("authorization", token.as_str()), ("content-type", "application/json")];
    let r = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/{reg}/register?api-version={api_version}"),
            &auth,
            body.to_string(),
        )
        .await;
    if r.status != StatusCode::ACCEPTED {
        let v = r.json();
        return Err((
            r.status,
            v["errorCode"].as_u64().unwrap() as u32,
            v["message"].as_str().unwrap().into(),
        ));
    }
    let op = r.json()["operationId"].as_str().unwrap().to_string();
    let polled = f
        .call(
            Method::GET,
            &format!("/{SCOPE}/registrations/{reg}/operations/{op}?api-version={api_version}"),
            &auth,
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    Ok(polled)
}

fn der_chain(state: &Value) -> Vec<Vec<u8>> {
    state["issuedCertificateChain"]
        .as_array()
        .unwrap_or_else(|| panic!("no chain in {state}"))
        .iter()
        .map(|c| B64.decode(c.as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_csr_gets_a_chain_openssl_verifies_and_the_hub_knows_the_certificate() {
    let f = fixture().await;
    fixture_now(&f);
    enroll_with_policy(&f, "dev-1", Some("fleet")).await;
    let op = register(&f, "dev-1", json!({"registrationId": "dev-1", "csr": csr_for("dev-1")}))
        .await
        .unwrap();
    assert_eq!(op["status"], "assigned", "{op}");
    let state = &op["registrationState"];
    let chain = der_chain(state);
    assert_eq!(chain.len(), 3, "leaf, issuing CA, root");
    let policy = f
        .svc(Method::GET, "/credentialPolicies/fleet", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    let policy_chain: Vec<Vec<u8>> = policy["certificateAuthority"]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| B64.decode(c.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(chain[1..], policy_chain[..]);
    let leaf = dps_pki::info::summarize(&chain[0]).unwrap();
    assert_eq!(leaf.common_name.as_deref(), Some("dev-1"));
    let days = (leaf.not_after - leaf.not_before).num_days();
    assert!((30..=31).contains(&days), "{days}");

    // openssl: the leaf is a TLS client certificate under the root, through the issuing CA.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, der: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, dps_pki::pem::to_pem("CERTIFICATE", der)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (leaf_pem, issuing_pem, root_pem) = (
        write("leaf.pem", &chain[0]),
        write("issuing.pem", &chain[1]),
        write("root.pem", &chain[2]),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            &root_pem,
            "-untrusted",
            &issuing_pem,
            &leaf_pem,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The hub device authenticates with exactly that certificate.
    let device = f
        .reg(Method::GET, "/devices/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(device["authentication"]["type"], "selfSigned", "{device}");
    assert_eq!(
        device["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        leaf.sha256_thumbprint.as_str()
    );

    // Only the registration's answer carries the chain: not the status lookup, not the
    // service's registration record.
    let token = f.device_token("dev-1", DEVICE_KEY);
    let status = f
        .call(
            Method::POST,
            &format!("/{SCOPE}/registrations/dev-1?api-version=2025-07-01-preview"),
            &[("authorization", token.as_str()), ("content-type", "application/json")],
            json!({"registrationId": "dev-1"}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(status["status"], "assigned");
    assert!(status.get("issuedCertificateChain").is_none(), "{status}");
    let record = f
        .svc(Method::GET, "/registrations/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert!(record.get("issuedCertificateChain").is_none(), "{record}");

    // Registering again issues a new certificate, which replaces the old one at the hub.
    let again = register(&f, "dev-1", json!({"csr": csr_for("DEV-1")})).await.unwrap();
    let renewed = der_chain(&again["registrationState"]);
    let renewed_leaf = dps_pki::info::summarize(&renewed[0]).unwrap();
    assert_ne!(renewed_leaf.serial_number, leaf.serial_number);
    let device = f
        .reg(Method::GET, "/devices/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(
        device["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        renewed_leaf.sha256_thumbprint.as_str()
    );
}

/// The older preview's SDKs send the `openssl req` output as it is (PEM) and read PEM back.
#[tokio::test]
async fn the_older_preview_field_gets_the_older_answer() {
    let f = fixture().await;
    fixture_now(&f);
    f.svc(Method::PUT, "/credentialPolicies/fleet", &[], "{}")
        .await
        .assert_json(StatusCode::OK);
    let group = json!({"enrollmentGroupId": "g1", "clientCertificateIssuancePolicy": {"certificateAuthorityName": "fleet"},
                       "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY2}}});
    f.svc(Method::PUT, "/enrollmentGroups/g1", &[], group.to_string())
        .await
        .assert_json(StatusCode::OK);
    let (_, der) = dps_pki::csr::new_key_and_request("grp-dev", KeyAlgorithm::EcdsaP256).unwrap();
    let pem_csr = dps_pki::pem::to_pem("CERTIFICATE REQUEST", &der);
    // A group device signs with its derived key.
    let derived = dps_proto::keys::derive_device_key(DEVICE_KEY, "grp-dev").unwrap();
    let token = f.device_token("grp-dev", &derived);
    let auth = [("authorization", token.as_str()), ("content-type", "application/json")];
    let r = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/grp-dev/register?api-version=2021-11-01-preview"),
            &auth,
            json!({"registrationId": "grp-dev", "clientCertificateCsr": pem_csr}).to_string(),
        )
        .await
        .assert_json(StatusCode::ACCEPTED);
    let op = r["operationId"].as_str().unwrap();
    let done = f
        .call(
            Method::GET,
            &format!("/{SCOPE}/registrations/grp-dev/operations/{op}?api-version=2021-11-01-preview"),
            &auth,
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    let state = &done["registrationState"];
    assert!(state.get("issuedCertificateChain").is_none(), "{state}");
    let pem = state["issuedClientCertificate"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    let leaf = dps_pki::pem::parse_certificates(pem).unwrap();
    assert_eq!(leaf.len(), 1, "the device's certificate alone");
    assert_eq!(
        dps_pki::info::summarize(&leaf[0]).unwrap().common_name.as_deref(),
        Some("grp-dev")
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_reason_and_leave_nothing() {
    let f = fixture().await;
    fixture_now(&f);
    enroll_with_policy(&f, "dev-1", Some("fleet")).await;
    let (_, good) = dps_pki::csr::new_key_and_request("dev-1", KeyAlgorithm::EcdsaP256).unwrap();
    let mut tampered = good.clone();
    let at = tampered.windows(5).position(|w| w == b"dev-1").unwrap();
    tampered[at + 4] = b'2';
    for (csr, says) in [
        (
            csr_for("dev-2"),
            "subject CN 'dev-2' is not the registration id 'dev-1'",
        ),
        ("not base64!".to_string(), "the csr is not base64 DER"),
        (
            B64.encode(b"\x30\x03\x02\x01\x00"),
            "not a DER PKCS#10 certificate signing request",
        ),
        (B64.encode(&tampered), "signature does not verify"),
    ] {
        let (status, code, message) = register(&f, "dev-1", json!({"csr": csr})).await.unwrap_err();
        assert_eq!(
            (status, code),
            (StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID),
            "{message}"
        );
        assert!(message.contains(says), "{message}");
    }
    // `csr` under a version from before it, as the GA SDKs send: refused, as Azure does.
    let (status, code, message) = register_as(&f, "dev-1", json!({"csr": csr_for("dev-1")}), "2021-10-01")
        .await
        .unwrap_err();
    assert_eq!((status, code), (StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID));
    assert!(
        message.contains("a csr is taken from api-version 2025-07-01-preview on; this request names 2021-10-01"),
        "{message}"
    );

    // An enrollment that names no policy, or one that is gone.
    enroll_with_policy(&f, "dev-3", None).await;
    let (_, _, message) = register(&f, "dev-3", json!({"csr": csr_for("dev-3")}))
        .await
        .unwrap_err();
    assert!(
        message.contains("individual enrollment 'dev-3' names no credential policy"),
        "{message}"
    );
    enroll_with_policy(&f, "dev-4", Some("fleet")).await;
    f.svc(Method::DELETE, "/credentialPolicies/fleet", &[], Body::empty())
        .await
        .assert_no_content();
    let (_, _, message) = register(&f, "dev-4", json!({"csr": csr_for("dev-4")}))
        .await
        .unwrap_err();
    assert!(
        message.contains("credential policy 'fleet' that the individual enrollment 'dev-4' names does not exist"),
        "{message}"
    );

    for reg in ["dev-1", "dev-3", "dev-4"] {
        f.svc(Method::GET, &format!("/registrations/{reg}"), &[], Body::empty())
            .await
            .assert_error(StatusCode::NOT_FOUND, codes::REGISTRATION_NOT_FOUND);
        f.reg(Method::GET, &format!("/devices/{reg}"), &[], Body::empty())
            .await
            .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    }
    // Without a CSR the same enrollment registers as before.
    let op = register(&f, "dev-3", json!({})).await.unwrap();
    assert_eq!(op["status"], "assigned");
    assert!(op["registrationState"].get("issuedCertificateChain").is_none());
}
