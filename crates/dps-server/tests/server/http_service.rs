//! The DPS service API through the router: enrollments and groups (CRUD, etags, bulk, query
//! paging), body errors, SAS authorization and rights, scoped tokens.

use crate::common::router::*;
use axum::body::Body;
use dps_proto::codes;
use dps_proto::sas::build_token;
use http::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn enrollment_crud_with_etags() {
    let f = fixture().await;
    let created = f
        .svc(
            Method::PUT,
            "/enrollments/dev-1",
            &[],
            sym_enrollment("dev-1", Some(DEVICE_KEY)),
        )
        .await
        .assert_json(StatusCode::OK);
    let etag = created["etag"].as_str().unwrap().to_string();
    assert_eq!(created["attestation"]["symmetricKey"]["primaryKey"], DEVICE_KEY);

    // Existing record, no If-Match: conflict.
    let msg = f
        .svc(Method::PUT, "/enrollments/dev-1", &[], sym_enrollment("dev-1", None))
        .await
        .assert_error(StatusCode::CONFLICT, codes::ENROLLMENT_EXISTS);
    assert!(msg.contains("already exists"), "{msg}");
    // Wrong etag: 412.
    f.svc(
        Method::PUT,
        "/enrollments/dev-1",
        &[("if-match", "\"nope\"")],
        sym_enrollment("dev-1", None),
    )
    .await
    .assert_error(StatusCode::PRECONDITION_FAILED, codes::ENROLLMENT_ETAG_MISMATCH);
    // Right etag (C# quotes it): 200, never 201, new etag.
    let quoted = format!("\"{etag}\"");
    let updated = f
        .svc(
            Method::PUT,
            "/enrollments/dev-1",
            &[("if-match", &quoted)],
            sym_enrollment("dev-1", None),
        )
        .await
        .assert_json(StatusCode::OK);
    let etag2 = updated["etag"].as_str().unwrap().to_string();
    assert_ne!(etag, etag2);

    // GET strips keys; attestationmechanism returns them (Node: lower-case path, empty POST).
    let got = f
        .svc(Method::GET, "/Enrollments/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(got["registrationId"], "dev-1");
    assert!(got["attestation"]["symmetricKey"].get("primaryKey").is_none());
    let att = f
        .svc(
            Method::POST,
            "/enrollments/dev-1/attestationmechanism",
            &[],
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(att["symmetricKey"]["primaryKey"], DEVICE_KEY);

    // Percent-encoded id.
    f.svc(Method::GET, "/enrollments/dev%2D1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);

    // DELETE with a stale etag: 412; with the current one: 204, empty, no content type.
    f.svc(
        Method::DELETE,
        "/enrollments/dev-1",
        &[("if-match", &etag)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::PRECONDITION_FAILED, codes::ENROLLMENT_ETAG_MISMATCH);
    f.svc(
        Method::DELETE,
        "/enrollments/dev-1",
        &[("if-match", &etag2)],
        Body::empty(),
    )
    .await
    .assert_no_content();
    f.svc(Method::GET, "/enrollments/dev-1", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);
    f.svc(Method::DELETE, "/enrollments/dev-1", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);
}

#[tokio::test]
async fn groups_bulk_and_paging_headers() {
    let f = fixture().await;
    // Node's bulk call: trailing slash before the query.
    let bulk = json!({"mode": "create", "enrollments": [
        {"registrationId": "a", "attestation": {"type": "symmetricKey"}},
        {"registrationId": "b", "attestation": {"type": "symmetricKey"}},
        {"registrationId": "c", "attestation": {"type": "symmetricKey"}},
    ]});
    let r = f
        .svc(Method::POST, "/enrollments/", &[], bulk.to_string())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(r, json!({"isSuccessful": true, "errors": []}));

    // Page 1 of 2.
    let p1 = f
        .svc(
            Method::POST,
            "/enrollments/query",
            &[("x-ms-max-item-count", "2")],
            json!({"query": "*"}).to_string(),
        )
        .await;
    let items = p1.assert_json(StatusCode::OK);
    assert_eq!(items.as_array().unwrap().len(), 2);
    assert_eq!(p1.header("x-ms-item-type"), Some("Enrollment"));
    let cont = p1.header("x-ms-continuation").expect("more pages").to_string();
    // Page 2: the last, so no continuation header; empty body is fine (Node sends none).
    let p2 = f
        .svc(
            Method::POST,
            "/enrollments/query",
            &[("x-ms-max-item-count", "2"), ("x-ms-continuation", &cont)],
            Body::empty(),
        )
        .await;
    let items = p2.assert_json(StatusCode::OK);
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["registrationId"], "c");
    assert!(p2.header("x-ms-continuation").is_none());
    assert_eq!(p2.header("x-ms-item-type"), Some("Enrollment"));
    // Exactly-full page: no trailing continuation.
    let p = f
        .svc(
            Method::POST,
            "/enrollments/query",
            &[("x-ms-max-item-count", "3")],
            Body::empty(),
        )
        .await;
    assert_eq!(p.assert_json(StatusCode::OK).as_array().unwrap().len(), 3);
    assert!(p.header("x-ms-continuation").is_none());
    f.svc(
        Method::POST,
        "/enrollments/query",
        &[("x-ms-max-item-count", "many")],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);

    // Empty group query: [] with the item type.
    let g = f
        .svc(
            Method::POST,
            "/enrollmentGroups/query",
            &[],
            json!({"query": "SELECT * FROM enrollmentGroups"}).to_string(),
        )
        .await;
    assert_eq!(g.assert_json(StatusCode::OK), json!([]));
    assert_eq!(g.header("x-ms-item-type"), Some("EnrollmentGroup"));
    assert!(g.header("x-ms-continuation").is_none());

    // Group CRUD, Node-style lower-case path for the attestation.
    let body = json!({"enrollmentGroupId": "grp1", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY2}}});
    f.svc(Method::PUT, "/enrollmentGroups/grp1", &[], body.to_string())
        .await
        .assert_json(StatusCode::OK);
    let att = f
        .svc(
            Method::POST,
            "/enrollmentgroups/grp1/attestationmechanism",
            &[],
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(att["symmetricKey"]["secondaryKey"], DEVICE_KEY2);
    let regs = f
        .svc(
            Method::POST,
            "/registrations/grp1/query",
            &[],
            json!({"query": "*"}).to_string(),
        )
        .await;
    assert_eq!(regs.assert_json(StatusCode::OK), json!([]));
    assert_eq!(regs.header("x-ms-item-type"), Some("DeviceRegistration"));
    f.svc(
        Method::DELETE,
        "/enrollmentGroups/grp1",
        &[("if-match", "*")],
        Body::empty(),
    )
    .await
    .assert_no_content();

    // Bulk over the limit is refused as a whole.
    let many: Vec<Value> = (0..11)
        .map(|i| json!({"registrationId": format!("x{i}"), "attestation": {"type": "symmetricKey"}}))
        .collect();
    f.svc(
        Method::POST,
        "/enrollments",
        &[],
        json!({"mode": "create", "enrollments": many}).to_string(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::BULK_INVALID);
}

#[tokio::test]
async fn malformed_bodies_name_the_problem() {
    let f = fixture().await;
    let m = f
        .svc(Method::PUT, "/enrollments/d", &[], "{not json")
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert!(m.contains("IndividualEnrollment"), "{m}");
    let m = f
        .svc(
            Method::PUT,
            "/enrollments/d",
            &[],
            json!({"registrationId": 5, "attestation": {"type": "symmetricKey"}}).to_string(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert!(m.contains("invalid type"), "{m}");
    f.svc(Method::PUT, "/enrollments/d", &[], Body::empty())
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    f.svc(
        Method::POST,
        "/enrollments",
        &[],
        json!({"mode": "explode", "enrollments": []}).to_string(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
}

#[tokio::test]
async fn service_auth_failures() {
    let f = fixture().await;
    let path = format!("/enrollments/d?{API}");
    let m = f
        .call(Method::GET, &path, &[], Body::empty())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("missing Authorization"), "{m}");
    let wrong = build_token(DPS_HOST, READER_KEY, f.expiry(), Some("provisioningserviceowner")).unwrap();
    let m = f
        .call(Method::GET, &path, &[("authorization", &wrong)], Body::empty())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(
        m.contains("is not signed by a key of policy 'provisioningserviceowner'"),
        "{m}"
    );
    let expired = build_token(
        DPS_HOST,
        OWNER_KEY,
        f.expiry() - 7200 - 600,
        Some("provisioningserviceowner"),
    )
    .unwrap();
    let m = f
        .call(Method::GET, &path, &[("authorization", &expired)], Body::empty())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("expired"), "{m}");
    let other_host = build_token(
        "other.example.test",
        OWNER_KEY,
        f.expiry(),
        Some("provisioningserviceowner"),
    )
    .unwrap();
    f.call(Method::GET, &path, &[("authorization", &other_host)], Body::empty())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    // A hub token is not a DPS token.
    f.call(Method::GET, &path, &[("authorization", &f.hub_owner())], Body::empty())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);

    // Reader: may read, may not write.
    let reader = build_token(DPS_HOST, READER_KEY, f.expiry(), Some("reader")).unwrap();
    f.call(Method::GET, &path, &[("authorization", &reader)], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);
    let m = f
        .call(
            Method::PUT,
            &path,
            &[("authorization", &reader)],
            sym_enrollment("d", None),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
    assert!(m.contains("EnrollmentWrite"), "{m}");
    let m = f
        .call(
            Method::DELETE,
            &format!("/registrations/d?{API}"),
            &[("authorization", &reader)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
    assert!(m.contains("RegistrationStatusWrite"), "{m}");

    // PYNEW signs `https://host` as the audience; Host without port is accepted too.
    let with_scheme = build_token(
        &format!("https://{DPS_HOST}"),
        OWNER_KEY,
        f.expiry(),
        Some("provisioningserviceowner"),
    )
    .unwrap();
    f.call(Method::GET, &path, &[("authorization", &with_scheme)], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);
}

/// Issue 9, item 1: a token scoped to one enrollment, sent with a `Host` header that names that
/// enrollment, used to be checked against `{Host}{path}` — and so deleted any enrollment.
#[tokio::test]
async fn scoped_service_token_with_forged_host_reaches_nothing_else() {
    let f = fixture().await;
    for id in ["victim", "x", "xy"] {
        f.svc(
            Method::PUT,
            &format!("/enrollments/{id}"),
            &[],
            sym_enrollment(id, None),
        )
        .await
        .assert_json(StatusCode::OK);
    }
    let scoped = build_token(
        &format!("{DPS_HOST}/enrollments/x"),
        OWNER_KEY,
        f.expiry(),
        Some("provisioningserviceowner"),
    )
    .unwrap();
    let forged_host = format!("{DPS_HOST}/enrollments/x");
    let del = |path: &str| format!("{path}?{API}");
    // The attack as reproduced: forged Host, scoped token, another enrollment.
    let m = f
        .call(
            Method::DELETE,
            &del("/enrollments/victim"),
            &[("authorization", &scoped), ("host", &forged_host)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    assert!(
        m.contains(&format!("answers to {DPS_HOST}, {HUB_HOST} (port 443)")),
        "{m}"
    );
    // With an honest Host the token still covers only its own enrollment.
    for other in ["/enrollments/victim", "/enrollments/xy"] {
        let m = f
            .call(
                Method::DELETE,
                &del(other),
                &[("authorization", &scoped)],
                Body::empty(),
            )
            .await
            .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
        assert!(m.contains("does not cover"), "{m}");
    }
    // Nor the collection: no query, no bulk.
    f.call(
        Method::POST,
        &del("/enrollments/query"),
        &[("authorization", &scoped)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    // Nothing changed.
    for id in ["victim", "x", "xy"] {
        f.svc(Method::GET, &format!("/enrollments/{id}"), &[], Body::empty())
            .await
            .assert_json(StatusCode::OK);
    }
    // The scoped token works on its own resource and below it, percent-encoded or not.
    f.call(
        Method::POST,
        &del("/enrollments/%78/attestationmechanism"),
        &[("authorization", &scoped)],
        Body::empty(),
    )
    .await
    .assert_json(StatusCode::OK);
    f.call(
        Method::DELETE,
        &del("/enrollments/x"),
        &[("authorization", &scoped)],
        Body::empty(),
    )
    .await
    .assert_no_content();
    f.svc(Method::GET, "/enrollments/x", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);
}
