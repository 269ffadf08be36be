//! Revocations through the service API (issue 17, point 4): add (by certificate, issuer and
//! serial, or thumbprint), list with continuation, get, delete; bad requests named; CRL import
//! refused unless a known CA signed it; the ServiceConfig right.

use crate::common::router::*;
use axum::body::Body;
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_proto::codes;
use dps_proto::sas::build_token;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn revocations_are_added_listed_and_removed() {
    let f = fixture().await;
    let ca = LocalCa::generate_with("REST Revocation CA", KeyAlgorithm::EcdsaP256).unwrap();
    let dev = ca
        .issue_device_certificate("rest-dev", 30, KeyAlgorithm::EcdsaP256)
        .unwrap();
    let by_cert = f
        .svc(
            Method::POST,
            "/revocations",
            &[],
            json!({"certificate": dev.cert_pem, "reason": "lost"}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(by_cert["subject"], "CN=rest-dev");
    assert_eq!(by_cert["issuer"], "CN=REST Revocation CA");
    assert_eq!(by_cert["source"], "manual");
    assert_eq!(by_cert["reason"], "lost");
    assert_eq!(by_cert["sha256Thumbprint"].as_str().unwrap().len(), 64);
    // The same certificate by issuer and serial is the same entry.
    let again = f
        .svc(
            Method::POST,
            "/revocations",
            &[],
            json!({"issuer": "cn=rest revocation ca", "serialNumber": by_cert["serialNumber"]}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(again["id"], by_cert["id"]);
    let by_thumbprint = f
        .svc(
            Method::POST,
            "/revocations",
            &[],
            json!({"sha256Thumbprint": "ab".repeat(32)}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(by_thumbprint["id"], format!("tp-{}", "ab".repeat(32)));

    let list = f.svc(Method::GET, "/revocations", &[], Body::empty()).await;
    assert_eq!(list.assert_json(StatusCode::OK)["value"].as_array().unwrap().len(), 2);
    let first = f
        .svc(
            Method::GET,
            "/revocations",
            &[("x-ms-max-item-count", "1")],
            Body::empty(),
        )
        .await;
    let continuation = first.header("x-ms-continuation").unwrap().to_string();
    let rest = f
        .svc(
            Method::GET,
            "/revocations",
            &[("x-ms-max-item-count", "1"), ("x-ms-continuation", &continuation)],
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(rest["value"].as_array().unwrap().len(), 1);
    assert_ne!(
        rest["value"][0]["id"],
        first.assert_json(StatusCode::OK)["value"][0]["id"]
    );

    let id = by_cert["id"].as_str().unwrap();
    f.svc(Method::GET, &format!("/revocations/{id}"), &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    f.svc(Method::DELETE, &format!("/revocations/{id}"), &[], Body::empty())
        .await
        .assert_no_content();
    f.svc(Method::DELETE, &format!("/revocations/{id}"), &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::PATH_NOT_FOUND);
}

#[tokio::test]
async fn bad_revocations_and_unknown_crls_are_refused() {
    let f = fixture().await;
    for (body, says) in [
        (json!({}), "name the certificate one way"),
        (json!({"issuer": "CN=x"}), "name the certificate one way"),
        (
            json!({"issuer": "CN=x", "serialNumber": "zz"}),
            "serialNumber hex digits",
        ),
        (json!({"sha256Thumbprint": "abc"}), "64 hex digits"),
        (
            json!({"sha256Thumbprint": format!("zz{}", "ab".repeat(32))}),
            "64 hex digits",
        ),
        (json!({"certificate": "nope"}), "certificate:"),
        (json!({"certificate": "x", "sha256Thumbprint": "ab"}), "one way"),
    ] {
        let m = f
            .svc(Method::POST, "/revocations", &[], body.to_string())
            .await
            .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
        assert!(m.contains(says), "{body}: {m}");
    }
    let m = f
        .svc(Method::POST, "/crls", &[], json!({"crl": "bm90IGEgY3Js"}).to_string())
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    assert!(m.contains("not a DER revocation list"), "{m}");
    let list = f
        .svc(Method::GET, "/revocations", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(list, json!({"value": []}));

    let reader = build_token(DPS_HOST, READER_KEY, f.expiry(), Some("reader")).unwrap();
    for (method, path) in [
        (Method::GET, "/revocations"),
        (Method::POST, "/revocations"),
        (Method::POST, "/crls"),
    ] {
        let m = f
            .call(method, &format!("{path}?{API}"), &[("authorization", &reader)], "{}")
            .await
            .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
        assert!(m.contains("ServiceConfig"), "{m}");
    }
}

/// A large CA's revocation list is larger than any device message: `/crls` takes bodies up to a
/// 4 MiB list whatever the message limit (the fixture's is 4 KiB), while other requests keep it.
#[tokio::test]
async fn a_revocation_list_larger_than_the_message_limit_imports() {
    let f = fixture().await;
    let ca = LocalCa::generate_with("Big Fleet CA", KeyAlgorithm::EcdsaP256).unwrap();
    f.svc(
        Method::PUT,
        "/certificates/big-fleet",
        &[],
        json!({"certificate": ca.cert_pem()}).to_string(),
    )
    .await
    .assert_json(StatusCode::OK);
    let now = chrono::Utc::now();
    let revoked: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        (0..500u32).map(|i| (format!("7F{i:030X}"), now)).collect();
    let der = ca.issue_crl(&revoked, now, chrono::TimeDelta::days(7), 1).unwrap();
    let body = json!({"crl": dps_pki::pem::to_pem("X509 CRL", &der)}).to_string();
    assert!(body.len() > 4 * MAX_BODY, "{} bytes", body.len());
    let imported = f
        .svc(Method::POST, "/crls", &[], body.clone())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(imported["revoked"], 500, "{imported}");
    f.svc(Method::POST, "/revocations", &[], body)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE);
}
