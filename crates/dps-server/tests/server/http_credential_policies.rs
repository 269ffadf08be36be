//! Credential policies through the service API (issue 17, point 1): built-in and brought issuing
//! CAs, etags, the CA key never shown, bad settings named, the ServiceConfig right, and
//! enrollments and groups naming a policy by either field.

use crate::common::router::*;
use axum::body::Body;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_proto::codes;
use dps_proto::sas::build_token;
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// The CA chain a policy shows, as DER.
fn chain_of(policy: &Value) -> Vec<Vec<u8>> {
    policy["certificateAuthority"]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| B64.decode(c.as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn built_in_policies_make_their_ca_and_keep_it_across_changes() {
    let f = fixture().await;
    let created = f
        .svc(Method::PUT, "/credentialPolicies/Fleet-Certs", &[], "{}")
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(created["name"], "Fleet-Certs");
    assert_eq!(created["keyType"], "P-256");
    assert_eq!(created["validityInDays"], 30);
    let ca = &created["certificateAuthority"];
    assert_eq!(ca["kind"], "builtIn");
    assert!(
        ca["subject"].as_str().unwrap().contains("Fleet-Certs issuing CA"),
        "{ca}"
    );
    // The issuing CA and the root that signed it (whose key is gone); the issuing CA may sign
    // device certificates only.
    let chain = chain_of(&created);
    assert_eq!(chain.len(), 2, "{ca}");
    dps_pki::chain::verify_issued_by(&chain[0], &chain[1], chrono::Utc::now()).unwrap();
    let issuing = dps_pki::x509::parse(&chain[0]).unwrap();
    let bc = issuing.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0), "{bc:?}");
    assert!(!String::from_utf8_lossy(
        &f.svc(Method::GET, "/credentialPolicies/fleet-certs", &[], Body::empty())
            .await
            .body
    )
    .contains("PRIVATE KEY"));

    // Create-only without If-Match; a stale etag is refused before anything is made.
    f.svc(Method::PUT, "/credentialPolicies/fleet-certs", &[], "{}")
        .await
        .assert_error(StatusCode::CONFLICT, codes::CREDENTIAL_POLICY_EXISTS);
    f.svc(
        Method::PUT,
        "/credentialPolicies/fleet-certs",
        &[("if-match", "\"stale\"")],
        r#"{"validityInDays": 7}"#,
    )
    .await
    .assert_error(StatusCode::PRECONDITION_FAILED, codes::CREDENTIAL_POLICY_ETAG_MISMATCH);

    // A new validity keeps the CA; a new key type makes a new one.
    let etag = created["etag"].as_str().unwrap();
    let longer = f
        .svc(
            Method::PUT,
            "/credentialPolicies/fleet-certs",
            &[("if-match", etag)],
            r#"{"validityInDays": 90}"#,
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(longer["validityInDays"], 90);
    assert_eq!(longer["name"], "Fleet-Certs", "the name keeps its first spelling");
    assert_eq!(longer["certificateAuthority"], created["certificateAuthority"]);
    assert_ne!(longer["etag"], created["etag"]);
    let p384 = f
        .svc(
            Method::PUT,
            "/credentialPolicies/fleet-certs",
            &[("if-match", "*")],
            r#"{"keyType": "ECC_P384"}"#,
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(p384["keyType"], "P-384");
    assert_eq!(p384["validityInDays"], 90);
    assert_ne!(
        p384["certificateAuthority"]["sha256Thumbprint"],
        created["certificateAuthority"]["sha256Thumbprint"]
    );
    let rsa = f
        .svc(
            Method::PUT,
            "/credentialPolicies/rsa-certs",
            &[],
            r#"{"keyType": "RSA-2048", "validityInDays": 1}"#,
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(rsa["keyType"], "RSA-2048");
    let chain = chain_of(&rsa);
    dps_pki::chain::verify_issued_by(&chain[0], &chain[1], chrono::Utc::now()).unwrap();

    let list = f
        .svc(Method::GET, "/credentialPolicies", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    let names: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Fleet-Certs", "rsa-certs"]);

    f.svc(Method::DELETE, "/credentialPolicies/RSA-CERTS", &[], Body::empty())
        .await
        .assert_no_content();
    f.svc(Method::GET, "/credentialPolicies/rsa-certs", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::CREDENTIAL_POLICY_NOT_FOUND);
    f.svc(Method::DELETE, "/credentialPolicies/rsa-certs", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::CREDENTIAL_POLICY_NOT_FOUND);
}

#[tokio::test]
async fn bad_settings_are_named_and_nothing_is_written() {
    let f = fixture().await;
    for (body, says) in [
        (
            r#"{"keyType": "P-521"}"#,
            "keyType 'P-521' is not one of P-256, P-384, RSA-2048",
        ),
        (r#"{"validityInDays": 0}"#, "validityInDays 0 is not between 1 and 3650"),
        (
            r#"{"validityInDays": 3651}"#,
            "validityInDays 3651 is not between 1 and 3650",
        ),
    ] {
        let m = f
            .svc(Method::PUT, "/credentialPolicies/p", &[], body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
        assert!(m.contains(says), "{m}");
    }
    let m = f
        .svc(
            Method::PUT,
            "/credentialPolicies/p",
            &[],
            r#"{"validityInDays": "ten"}"#,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert!(m.contains("validityInDays"), "{m}");
    f.svc(Method::PUT, "/credentialPolicies/bad%20name", &[], "{}")
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);

    // Brought CAs: a key of another certificate, a certificate that is no CA, a key type that
    // disagrees with the key.
    let ca = LocalCa::generate_with("Brought Root", KeyAlgorithm::EcdsaP256).unwrap();
    let other = LocalCa::generate_with("Other Root", KeyAlgorithm::EcdsaP256).unwrap();
    let leaf = ca
        .issue_device_certificate("not-a-ca", 30, KeyAlgorithm::EcdsaP256)
        .unwrap();
    for (certificates, key, key_type, says) in [
        (ca.cert_pem(), other.key_pem(), None, "not a usable CA"),
        (leaf.cert_pem.clone(), leaf.key_pem.clone(), None, "not a usable CA"),
        (
            ca.cert_pem(),
            ca.key_pem(),
            Some("RSA-2048"),
            "keyType RSA-2048 does not match the brought CA's key, which is P-256",
        ),
        ("no pem".into(), ca.key_pem(), None, "not a usable CA"),
    ] {
        let body =
            json!({"keyType": key_type, "certificateAuthority": {"certificates": certificates, "privateKey": key}});
        let m = f
            .svc(Method::PUT, "/credentialPolicies/p", &[], body.to_string())
            .await
            .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
        assert!(m.contains(says), "{m}");
    }
    let list = f
        .svc(Method::GET, "/credentialPolicies", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(list, json!({"value": []}));
}

#[tokio::test]
async fn a_brought_ca_issues_with_its_own_chain_and_its_key_is_never_shown() {
    let f = fixture().await;
    let root = LocalCa::generate_with("Contoso Root", KeyAlgorithm::EcdsaP384).unwrap();
    let issuing = root
        .issue_intermediate("Contoso Device Issuing", Some(0), KeyAlgorithm::EcdsaP256)
        .unwrap();
    let body = json!({"certificateAuthority": {"certificates": issuing.chain_pem(), "privateKey": issuing.key_pem()}});
    let p = f
        .svc(Method::PUT, "/credentialPolicies/contoso", &[], body.to_string())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(p["certificateAuthority"]["kind"], "brought");
    assert_eq!(p["keyType"], "P-256", "the issuing CA's key decides");
    assert_eq!(
        chain_of(&p),
        vec![issuing.cert_der().to_vec(), root.cert_der().to_vec()]
    );
    for path in ["/credentialPolicies/contoso", "/credentialPolicies"] {
        let r = f.svc(Method::GET, path, &[], Body::empty()).await;
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("PRIVATE KEY") && !text.contains("privateKey"), "{text}");
    }
}

#[tokio::test]
async fn enrollments_name_existing_policies_by_either_field() {
    let f = fixture().await;
    let enrollment = |policy: Value| {
        json!({"registrationId": "dev-1", "attestation": {"type": "symmetricKey", "symmetricKey": {}},
               "credentialPolicyName": policy})
        .to_string()
    };
    let m = f
        .svc(Method::PUT, "/enrollments/dev-1", &[], enrollment(json!("fleet")))
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    assert!(m.contains("credential policy 'fleet' does not exist"), "{m}");
    f.svc(Method::GET, "/enrollments/dev-1", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);

    f.svc(Method::PUT, "/credentialPolicies/fleet", &[], "{}")
        .await
        .assert_json(StatusCode::OK);
    let e = f
        .svc(Method::PUT, "/enrollments/dev-1", &[], enrollment(json!("FLEET")))
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(e["credentialPolicyName"], "FLEET");
    let got = f
        .svc(Method::GET, "/enrollments/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(got["credentialPolicyName"], "FLEET");

    // The older field, on a group; and both fields naming different policies.
    let group = |extra: Value| {
        let mut g = json!({"enrollmentGroupId": "g1", "attestation": {"type": "symmetricKey", "symmetricKey": {}}});
        g.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        g.to_string()
    };
    let g = f
        .svc(
            Method::PUT,
            "/enrollmentGroups/g1",
            &[],
            group(json!({"clientCertificateIssuancePolicy": {"certificateAuthorityName": "fleet"}})),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(
        g["clientCertificateIssuancePolicy"]["certificateAuthorityName"],
        "fleet"
    );
    let m = f
        .svc(
            Method::PUT,
            "/enrollmentGroups/g2",
            &[],
            group(json!({"credentialPolicyName": "fleet",
                          "clientCertificateIssuancePolicy": {"certificateAuthorityName": "other"}}))
            .replace("\"g1\"", "\"g2\""),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    assert!(m.contains("name different policies"), "{m}");
}

#[tokio::test]
async fn credential_policies_need_the_service_config_right() {
    let f = fixture().await;
    let reader = build_token(DPS_HOST, READER_KEY, f.expiry(), Some("reader")).unwrap();
    for (method, body) in [(Method::GET, ""), (Method::PUT, "{}"), (Method::DELETE, "")] {
        let m = f
            .call(
                method,
                &format!("/credentialPolicies/p?{API}"),
                &[("authorization", &reader)],
                body,
            )
            .await
            .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
        assert!(m.contains("ServiceConfig"), "{m}");
    }
    f.svc(Method::POST, "/credentialPolicies/p", &[], "{}")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, codes::METHOD_NOT_ALLOWED);
}
