//! End-to-end tests of the router with real `http::Request`s: engine over the in-memory store,
//! an in-memory embedded hub, a fake clock.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use dps_core::auth::{PolicyAuthorizer, SharedAccessPolicy};
use dps_core::store::memory::MemoryStore;
use dps_core::{Engine, EngineConfig, FakeClock};
use dps_hub::{Hub, HubConfig};
use dps_proto::codes;
use dps_proto::hub_mqtt::HubUsername;
use dps_proto::sas::build_token;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, HttpApp, JSON_CONTENT_TYPE};
use crate::datadir::{HubIdentity, Identity};
use crate::{ServerConfig, Services};

const SCOPE: &str = "0ne00ABCDEF";
const DPS_HOST: &str = "dps.example.test";
const HUB_HOST: &str = "hub.example.test";
const OWNER_KEY: &str = "b3duZXJrZXlvd25lcmtleW93bmVya2V5b3duZXJrZXk=";
const READER_KEY: &str = "cmVhZGVya2V5cmVhZGVya2V5cmVhZGVya2V5cmVhZGU=";
const HUB_OWNER_KEY: &str = "aHVib3duZXJodWJvd25lcmh1Ym93bmVyaHVib3duZXI=";
const HUB_READER_KEY: &str = "aHVicmVhZGVyaHVicmVhZGVyaHVicmVhZGVyaHVicmU=";
const DEVICE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const DEVICE_KEY2: &str = "HxwdGhsYGRYXFBUSExAREA8ODQwLCgkIBwYFBAMCAQA=";
const MAX_BODY: usize = 4096;
const API: &str = "api-version=2021-10-01";

struct Fixture {
    app: Router,
    hub: Hub,
    clock: Arc<FakeClock>,
}

fn policy(name: &str, key: &str, rights: &[&str]) -> SharedAccessPolicy {
    SharedAccessPolicy {
        key_name: name.into(),
        primary_key: key.into(),
        secondary_key: key.into(),
        rights: rights.iter().map(|r| r.to_string()).collect(),
    }
}

async fn fixture() -> Fixture {
    let clock = Arc::new(FakeClock::at(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()));
    let hub = Hub::open_with_clock(HubConfig::in_memory(HUB_HOST), clock.clone()).unwrap();
    let engine = Engine::new(
        EngineConfig::single_hub(SCOPE, HUB_HOST),
        Arc::new(MemoryStore::new()),
        Arc::new(hub.clone()),
    );
    engine.load().await.unwrap();
    let dps_policies = vec![
        policy("provisioningserviceowner", OWNER_KEY, crate::datadir::DPS_OWNER_RIGHTS),
        policy("reader", READER_KEY, &["EnrollmentRead", "RegistrationStatusRead"]),
    ];
    let hub_policies = vec![
        policy("iothubowner", HUB_OWNER_KEY, crate::datadir::HUB_OWNER_RIGHTS),
        policy("registryRead", HUB_READER_KEY, &["RegistryRead"]),
    ];
    let mut config = ServerConfig::defaults();
    config.hostnames = vec![DPS_HOST.into()];
    config.max_message_bytes = MAX_BODY;
    let services = Arc::new(Services {
        engine: Arc::new(engine),
        hub: hub.clone(),
        dps_auth: PolicyAuthorizer::new(dps_policies.clone()),
        hub_auth: PolicyAuthorizer::new(hub_policies.clone()),
        identity: Identity {
            id_scope: SCOPE.into(),
            policies: dps_policies,
            hub: HubIdentity {
                host_name: HUB_HOST.into(),
                policies: hub_policies,
            },
        },
        config,
        clock: clock.clone(),
    });
    Fixture {
        app: router(services),
        hub,
        clock,
    }
}

impl Fixture {
    fn expiry(&self) -> u64 {
        Engine::unix_time(dps_core::Clock::now(self.clock.as_ref())) + 3600
    }

    fn owner(&self) -> String {
        build_token(DPS_HOST, OWNER_KEY, self.expiry(), Some("provisioningserviceowner")).unwrap()
    }

    fn hub_owner(&self) -> String {
        build_token(HUB_HOST, HUB_OWNER_KEY, self.expiry(), Some("iothubowner")).unwrap()
    }

    fn device_token(&self, registration_id: &str, key: &str) -> String {
        build_token(
            &format!("{SCOPE}/registrations/{registration_id}"),
            key,
            self.expiry(),
            None,
        )
        .unwrap()
    }

    /// A request with `Host: {DPS_HOST}:443` unless `headers` name another host.
    async fn call(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", format!("{DPS_HOST}:443"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.app.clone().oneshot(b.body(body.into()).unwrap()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp { status, headers, body }
    }

    /// Service API call as the owner.
    async fn svc(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Resp {
        let auth = self.owner();
        let mut h = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json; charset=utf-8"),
        ];
        h.extend_from_slice(headers);
        let sep = if path.contains('?') { '&' } else { '?' };
        self.call(method, &format!("{path}{sep}{API}"), &h, body).await
    }

    /// Hub registry call as iothubowner (Host = the hub).
    async fn reg(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Resp {
        let auth = self.hub_owner();
        let mut h = vec![("authorization", auth.as_str())];
        h.extend_from_slice(headers);
        let sep = if path.contains('?') { '&' } else { '?' };
        self.call(method, &format!("{path}{sep}api-version=2021-04-12"), &h, body)
            .await
    }
}

#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[track_caller]
    fn assert_json(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.header("content-type"), Some(JSON_CONTENT_TYPE));
        self.json()
    }

    #[track_caller]
    fn assert_error(&self, status: StatusCode, code: u32) -> String {
        let v = self.assert_json(status);
        assert_eq!(v["errorCode"], json!(code), "body: {v}");
        assert_eq!(self.header("x-ms-error-code"), Some(code.to_string().as_str()));
        assert!(v["trackingId"].is_string() && v["timestampUtc"].is_string());
        v["message"].as_str().unwrap().to_string()
    }

    #[track_caller]
    fn assert_no_content(&self) {
        assert_eq!(
            self.status,
            StatusCode::NO_CONTENT,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(self.body.is_empty());
        assert!(self.headers.get("content-type").is_none());
    }
}

fn sym_enrollment(id: &str, key: Option<&str>) -> String {
    let sk = match key {
        Some(k) => json!({"primaryKey": k, "secondaryKey": DEVICE_KEY2}),
        None => json!({}),
    };
    json!({"registrationId": id, "attestation": {"type": "symmetricKey", "symmetricKey": sk}}).to_string()
}

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

#[tokio::test]
async fn api_version_required_404_405_413() {
    let f = fixture().await;
    let auth = f.owner();
    let m = f
        .call(
            Method::GET,
            "/enrollments/d",
            &[("authorization", &auth)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    assert!(m.contains("api-version"), "{m}");
    // Any value is accepted.
    f.call(
        Method::GET,
        "/enrollments/d?api-version=2017-11-15",
        &[("authorization", &auth)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);

    let m = f
        .call(Method::GET, "/nowhere/at/all?x=1", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::PATH_NOT_FOUND);
    assert!(m.contains("GET /nowhere/at/all"), "{m}");
    let r = f
        .call(
            Method::PATCH,
            &format!("/enrollments/d?{API}"),
            &[("authorization", &auth)],
            Body::empty(),
        )
        .await;
    let m = r.assert_error(StatusCode::METHOD_NOT_ALLOWED, codes::METHOD_NOT_ALLOWED);
    assert!(m.contains("PATCH"), "{m}");
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));

    // Too large, announced by Content-Length.
    let big = "x".repeat(MAX_BODY + 1);
    f.svc(Method::PUT, "/enrollments/d", &[], big.clone())
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE);
    // Too large, streamed without a length.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..=MAX_BODY / 1024)
        .map(|_| Ok(Bytes::from(vec![b' '; 1024])))
        .collect();
    let streamed = Body::from_stream(futures_util::stream::iter(chunks));
    f.svc(Method::PUT, "/enrollments/d", &[], streamed)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE);
    // Device API too.
    let path = format!("/{SCOPE}/registrations/d/register?{API}");
    f.call(Method::PUT, &path, &[], big)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn device_register_and_poll_with_sas() {
    let f = fixture().await;
    f.svc(
        Method::PUT,
        "/enrollments/dev-1",
        &[],
        sym_enrollment("dev-1", Some(DEVICE_KEY)),
    )
    .await
    .assert_json(StatusCode::OK);
    let token = f.device_token("dev-1", DEVICE_KEY);
    let auth = [
        ("authorization", token.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];

    let r = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/dev-1/register?{API}"),
            &auth,
            json!({"registrationId": "dev-1"}).to_string(),
        )
        .await;
    let v = r.assert_json(StatusCode::ACCEPTED);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(v["status"], "assigning");
    assert_eq!(v["registrationState"]["registrationId"], "dev-1");
    let op = v["operationId"].as_str().unwrap().to_string();

    // Poll: Node sends `{}` on the GET.
    let r = f
        .call(
            Method::GET,
            &format!("/{SCOPE}/registrations/dev-1/operations/{op}?{API}"),
            &auth,
            "{}",
        )
        .await;
    let v = r.assert_json(StatusCode::OK);
    assert!(r.header("retry-after").is_none());
    assert_eq!(v["status"], "assigned");
    assert_eq!(v["registrationState"]["assignedHub"], HUB_HOST);
    assert_eq!(v["registrationState"]["deviceId"], "dev-1");

    // Status lookup.
    let v = f
        .call(
            Method::POST,
            &format!("/{SCOPE}/registrations/dev-1?{API}"),
            &auth,
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(v["status"], "assigned");

    // The record through the service API, and the device in the hub.
    let v = f
        .svc(Method::GET, "/registrations/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(v["assignedHub"], HUB_HOST);
    let d = f
        .reg(Method::GET, "/devices/dev-1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(d["authentication"]["type"], "sas");
    f.svc(Method::DELETE, "/registrations/dev-1", &[], Body::empty())
        .await
        .assert_no_content();

    // Failures: unknown operation, bad body, wrong key, no credential, wrong scope.
    f.call(
        Method::GET,
        &format!("/{SCOPE}/registrations/dev-1/operations/4.nope.nope?{API}"),
        &auth,
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::OPERATION_NOT_FOUND);
    f.call(
        Method::PUT,
        &format!("/{SCOPE}/registrations/dev-1/register?{API}"),
        &auth,
        "{oops",
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    let bad = f.device_token("dev-1", DEVICE_KEY2.replace('H', "G").as_str());
    let m = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/dev-1/register?{API}"),
            &[("authorization", &bad)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("SAS signature"), "{m}");
    let m = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/dev-1/register?{API}"),
            &[],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("no credential"), "{m}");
    f.call(
        Method::PUT,
        &format!("/0ne00000000/registrations/dev-1/register?{API}"),
        &auth,
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::ID_SCOPE_NOT_FOUND);
    // api-version is required on the device API too.
    f.call(
        Method::PUT,
        &format!("/{SCOPE}/registrations/dev-1/register"),
        &auth,
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
}

#[tokio::test]
async fn peer_certificates_reach_the_engine() {
    let f = fixture().await;
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/{SCOPE}/registrations/dev-x/register?{API}"))
        .header("host", DPS_HOST)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(super::PeerCertificates(Arc::new(vec![vec![0x30, 0x00]])));
    let resp = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    // The engine judged an X.509 credential, not "no credential".
    assert!(body["message"].as_str().unwrap().contains("X.509"), "{body}");
}

#[tokio::test]
async fn hub_registry_devices_twins_query() {
    let f = fixture().await;
    // Create (200, never 201) with keys.
    let dev = json!({"deviceId": "d1", "status": "enabled", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY2}}});
    let d = f
        .reg(
            Method::PUT,
            "/devices/d1",
            &[("content-type", "application/json; charset=utf-8")],
            dev.to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    let etag = d["etag"].as_str().unwrap().to_string();
    for id in ["d2", "d3"] {
        f.reg(
            Method::PUT,
            &format!("/devices/{id}"),
            &[],
            json!({"deviceId": id}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    }
    // Body/path mismatch.
    f.reg(
        Method::PUT,
        "/devices/d9",
        &[],
        json!({"deviceId": "other"}).to_string(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    // Update with a stale quoted etag: 412.
    f.reg(
        Method::PUT,
        "/devices/d1",
        &[("if-match", "\"stale\"")],
        dev.to_string(),
    )
    .await
    .assert_error(StatusCode::PRECONDITION_FAILED, codes::DEVICE_ETAG_MISMATCH);
    f.reg(
        Method::PUT,
        "/devices/d1",
        &[("if-match", &format!("\"{etag}\""))],
        dev.to_string(),
    )
    .await
    .assert_json(StatusCode::OK);

    let list = f
        .reg(Method::GET, "/devices?top=2", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    f.reg(Method::GET, "/devices?top=x", &[], Body::empty())
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);

    // Query paging.
    let q = json!({"query": "SELECT * FROM devices"}).to_string();
    let p1 = f
        .reg(
            Method::POST,
            "/devices/query",
            &[("x-ms-max-item-count", "2")],
            q.clone(),
        )
        .await;
    assert_eq!(p1.assert_json(StatusCode::OK).as_array().unwrap().len(), 2);
    assert_eq!(p1.header("x-ms-item-type"), Some("twin"));
    let cont = p1.header("x-ms-continuation").unwrap().to_string();
    let p2 = f
        .reg(
            Method::POST,
            "/devices/query",
            &[("x-ms-max-item-count", "2"), ("x-ms-continuation", &cont)],
            q,
        )
        .await;
    let items = p2.assert_json(StatusCode::OK);
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["deviceId"], "d3");
    assert!(p2.header("x-ms-continuation").is_none());

    // Twins: GET, PATCH with the quoted etag, PUT.
    let t = f
        .reg(Method::GET, "/twins/d1", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    let tetag = format!("\"{}\"", t["etag"].as_str().unwrap());
    let patch = json!({"properties": {"desired": {"temp": 21}}, "tags": {"site": "a"}});
    let t = f
        .reg(Method::PATCH, "/twins/d1", &[("if-match", &tetag)], patch.to_string())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(t["properties"]["desired"]["temp"], 21);
    assert_eq!(t["tags"]["site"], "a");
    f.reg(Method::PATCH, "/twins/d1", &[("if-match", &tetag)], patch.to_string())
        .await
        .assert_error(StatusCode::PRECONDITION_FAILED, codes::DEVICE_ETAG_MISMATCH);
    let t = f
        .reg(
            Method::PUT,
            "/twins/d1",
            &[("if-match", "*")],
            json!({"properties": {"desired": {"x": 1}}}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert!(t["properties"]["desired"].get("temp").is_none());
    f.reg(Method::GET, "/twins/nobody", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);

    // Statistics.
    let s = f
        .reg(Method::GET, "/statistics/devices", &[], Body::empty())
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(s["totalDeviceCount"], 3);

    // Delete: 204; then 404.
    f.reg(Method::DELETE, "/devices/d2", &[("if-match", "*")], Body::empty())
        .await
        .assert_no_content();
    f.reg(Method::GET, "/devices/d2", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    f.reg(Method::DELETE, "/devices/d2", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
}

#[tokio::test]
async fn hub_auth() {
    let f = fixture().await;
    let m = f
        .call(Method::GET, "/devices/d1?api-version=2021-04-12", &[], Body::empty())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(m.contains("missing Authorization"), "{m}");
    // A DPS token is not a hub token.
    f.call(
        Method::GET,
        "/devices/d1?api-version=2021-04-12",
        &[("authorization", &f.owner())],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    let reader = build_token(HUB_HOST, HUB_READER_KEY, f.expiry(), Some("registryRead")).unwrap();
    f.call(
        Method::GET,
        "/devices/d1?api-version=2021-04-12",
        &[("authorization", &reader)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    let m = f
        .call(
            Method::PUT,
            "/devices/d1?api-version=2021-04-12",
            &[("authorization", &reader)],
            json!({"deviceId": "d1"}).to_string(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
    assert!(m.contains("RegistryWrite"), "{m}");
    // Twin reads accept RegistryRead; methods need ServiceConnect.
    f.call(
        Method::GET,
        "/twins/d1?api-version=2021-04-12",
        &[("authorization", &reader)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    let m = f
        .call(
            Method::POST,
            "/twins/d1/methods?api-version=2021-04-12",
            &[("authorization", &reader)],
            json!({"methodName": "m"}).to_string(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::INSUFFICIENT_RIGHTS);
    assert!(m.contains("ServiceConnect"), "{m}");
    // The audience must be the hub's own host name: a token for another name the client put
    // in its Host header (here the DPS host, which this server also answers to) is refused.
    let by_host_header = build_token(DPS_HOST, HUB_OWNER_KEY, f.expiry(), Some("iothubowner")).unwrap();
    let m = f
        .call(
            Method::GET,
            "/devices/d1?api-version=2021-04-12",
            &[("authorization", &by_host_header)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
    assert!(
        m.contains(&format!("this server's host name ({HUB_HOST}, {HUB_HOST}:443)")),
        "{m}"
    );
}

/// Creates a SAS device in the hub and opens its session (as the MQTT adapter would).
async fn connect_device(
    f: &Fixture,
    id: &str,
) -> (dps_hub::DeviceSession, tokio::sync::mpsc::Receiver<dps_hub::Outbound>) {
    let dev = json!({"deviceId": id, "authentication": {"type": "sas", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY2}}});
    f.reg(Method::PUT, &format!("/devices/{id}"), &[], dev.to_string())
        .await
        .assert_json(StatusCode::OK);
    let now = Engine::unix_time(dps_core::Clock::now(f.clock.as_ref()));
    let token = build_token(&format!("{HUB_HOST}/devices/{id}"), DEVICE_KEY, now + 3600, None).unwrap();
    let user = HubUsername::parse(&format!("{HUB_HOST}/{id}/?api-version=2021-04-12")).unwrap();
    let identity = f.hub.authenticate(now, &user, Some(token.as_bytes()), None).unwrap();
    f.hub.open_session(identity).unwrap()
}

#[tokio::test]
async fn direct_methods() {
    let f = fixture().await;
    let body = json!({"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 5}).to_string();
    f.reg(Method::POST, "/twins/ghost/methods", &[], body.clone())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    // Exists but offline.
    f.reg(Method::PUT, "/devices/off", &[], json!({"deviceId": "off"}).to_string())
        .await
        .assert_json(StatusCode::OK);
    let m = f
        .reg(Method::POST, "/twins/off/methods", &[], body.clone())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_ONLINE);
    assert!(m.contains("not online"), "{m}");

    let (session, mut rx) = connect_device(&f, "m1").await;
    assert_eq!(session.subscribe("$iothub/methods/POST/#", 0), Some(0));
    let call = {
        let f_app = f.app.clone();
        let auth = f.hub_owner();
        let body = body.clone();
        tokio::spawn(async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/twins/m1/methods?api-version=2021-04-12")
                .header("host", HUB_HOST)
                .header("authorization", auth)
                .body(Body::from(body))
                .unwrap();
            let resp = f_app.oneshot(req).await.unwrap();
            let status = resp.status();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.topic.starts_with("$iothub/methods/POST/reboot/?$rid="),
        "{}",
        out.topic
    );
    let rid = out.topic.rsplit('=').next().unwrap().to_string();
    let now = dps_core::Clock::now(f.clock.as_ref());
    session
        .handle_publish(now, &format!("$iothub/methods/res/201/?$rid={rid}"), br#"{"ok":true}"#)
        .await
        .unwrap();
    let (status, bytes) = call.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        json!({"status": 201, "payload": {"ok": true}})
    );
}

async fn next_line(body: &mut Body) -> Value {
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap();
    let data = frame.into_data().unwrap();
    assert_eq!(data.last(), Some(&b'\n'));
    serde_json::from_slice::<Value>(&data).unwrap()
}

#[tokio::test]
async fn monitor_events_stream() {
    let f = fixture().await;
    let (session, _rx) = connect_device(&f, "t1").await;
    let (other, _rx2) = connect_device(&f, "t2").await;
    let now = dps_core::Clock::now(f.clock.as_ref());
    session
        .handle_publish(now, "devices/t1/messages/events/", br#"{"n":1}"#)
        .await
        .unwrap();
    other
        .handle_publish(now, "devices/t2/messages/events/", br#"{"n":2}"#)
        .await
        .unwrap();

    // From the start, filtered to t1: the retained event first, then live ones.
    let req = Request::builder()
        .method(Method::GET)
        .uri("/messages/events?api-version=2021-04-12&from-sequence=0&deviceId=T1")
        .header("host", HUB_HOST)
        .header("authorization", f.hub_owner())
        .body(Body::empty())
        .unwrap();
    let resp = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("content-type").unwrap(), "application/x-ndjson");
    let mut body = resp.into_body();
    let e = next_line(&mut body).await;
    assert_eq!(e["event"]["origin"], "t1");
    assert_eq!(e["event"]["payload"], json!({"n": 1}));
    assert_eq!(e["event"]["annotations"]["x-opt-sequence-number"], 1);
    other
        .handle_publish(now, "devices/t2/messages/events/", br#"{"n":3}"#)
        .await
        .unwrap();
    session
        .handle_publish(now, "devices/t1/messages/events/", br#"{"n":4}"#)
        .await
        .unwrap();
    let e = next_line(&mut body).await;
    assert_eq!(e["event"]["payload"], json!({"n": 4}));
    assert_eq!(e["event"]["annotations"]["x-opt-sequence-number"], 4);
    drop(body);

    // Without from-sequence: only new events.
    let req = Request::builder()
        .method(Method::GET)
        .uri("/messages/events?api-version=2021-04-12")
        .header("host", HUB_HOST)
        .header("authorization", f.hub_owner())
        .body(Body::empty())
        .unwrap();
    let mut body = f.app.clone().oneshot(req).await.unwrap().into_body();
    other
        .handle_publish(now, "devices/t2/messages/events/", b"plain text")
        .await
        .unwrap();
    let e = next_line(&mut body).await;
    assert_eq!(e["event"]["annotations"]["x-opt-sequence-number"], 5);
    assert_eq!(e["event"]["payload"], "plain text");

    // Bad parameter.
    let auth = f.hub_owner();
    f.call(
        Method::GET,
        "/messages/events?api-version=2021-04-12&from-sequence=-1",
        &[("authorization", &auth)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
}

/// Reads one HTTP/1.1 response with a Content-Length from `io`; returns (head, body).
async fn read_response(io: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn serve_connection_keeps_the_connection_alive() {
    use tokio::io::AsyncWriteExt;
    let f = fixture().await;
    // The listener path: HttpApp::serve_connection over a stream.
    let app = HttpApp {
        router: f.app.clone(),
        request_timeout: Duration::from_secs(30),
    };
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let server_task = tokio::spawn(async move { app.serve_connection(server, Vec::new()).await });
    let mut buf = Vec::new();
    // Three requests on one connection; GETs with a `{}` body (Node's poll) do not break framing.
    for path in [
        format!("/enrollments/x?{API}"),
        format!("/enrollments/x/?{API}"),
        format!("/{SCOPE}/registrations/x/operations/1?{API}"),
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {DPS_HOST}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
            f.owner()
        );
        client.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut client, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 40"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json; charset=utf-8"),
            "{head}"
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["errorCode"].is_u64(), "{v}");
    }
    client.shutdown().await.unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), server_task)
        .await
        .unwrap()
        .unwrap();
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

/// Issue 9, item 1, on the hub: `sr=hub/devices/d` with that Host header listed every device.
#[tokio::test]
async fn scoped_hub_token_with_forged_host_lists_nothing() {
    let f = fixture().await;
    for id in ["d", "e"] {
        f.reg(
            Method::PUT,
            &format!("/devices/{id}"),
            &[],
            json!({"deviceId": id}).to_string(),
        )
        .await
        .assert_json(StatusCode::OK);
    }
    let scoped = build_token(
        &format!("{HUB_HOST}/devices/d"),
        HUB_OWNER_KEY,
        f.expiry(),
        Some("iothubowner"),
    )
    .unwrap();
    let q = "api-version=2021-04-12";
    let forged_host = format!("{HUB_HOST}/devices/d");
    f.call(
        Method::GET,
        &format!("/devices?{q}"),
        &[("authorization", &scoped), ("host", &forged_host)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    for (method, path) in [
        (Method::GET, "/devices"),
        (Method::POST, "/devices/query"),
        (Method::GET, "/devices/e"),
        (Method::DELETE, "/devices/e"),
        (Method::GET, "/twins/e"),
        (Method::GET, "/statistics/devices"),
    ] {
        let m = f
            .call(
                method.clone(),
                &format!("{path}?{q}"),
                &[("authorization", &scoped), ("host", HUB_HOST), ("if-match", "*")],
                Body::empty(),
            )
            .await
            .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
        assert!(m.contains("does not cover"), "{method} {path}: {m}");
    }
    // Nothing changed, and the token reaches its own device.
    assert_eq!(f.hub.list_devices(0).len(), 2);
    let d = f
        .call(
            Method::GET,
            &format!("/devices/D?{q}"),
            &[("authorization", &scoped), ("host", HUB_HOST)],
            Body::empty(),
        )
        .await
        .assert_json(StatusCode::OK);
    assert_eq!(d["deviceId"], "d");
}

/// The hub's own name works with and without the server's port, as SDKs send it.
#[tokio::test]
async fn own_host_names_with_port_are_audiences() {
    let f = fixture().await;
    let with_port = build_token(
        &format!("{HUB_HOST}:443"),
        HUB_OWNER_KEY,
        f.expiry(),
        Some("iothubowner"),
    )
    .unwrap();
    f.call(
        Method::GET,
        "/devices?api-version=2021-04-12",
        &[("authorization", &with_port), ("host", &format!("{HUB_HOST}:443"))],
        Body::empty(),
    )
    .await
    .assert_json(StatusCode::OK);
    let dps_with_port = build_token(
        &format!("{DPS_HOST}:443"),
        OWNER_KEY,
        f.expiry(),
        Some("provisioningserviceowner"),
    )
    .unwrap();
    f.call(
        Method::POST,
        &format!("/enrollments/query?{API}"),
        &[("authorization", &dps_with_port), ("host", DPS_HOST)],
        Body::empty(),
    )
    .await
    .assert_json(StatusCode::OK);
    // Another port is another server.
    let other_port = build_token(
        &format!("{DPS_HOST}:8443"),
        OWNER_KEY,
        f.expiry(),
        Some("provisioningserviceowner"),
    )
    .unwrap();
    f.call(
        Method::POST,
        &format!("/enrollments/query?{API}"),
        &[("authorization", &other_port)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED);
}

/// Issue 9, item 6: every API refuses a missing, unknown or doubled api-version, naming the
/// supported ones.
#[tokio::test]
async fn unsupported_api_versions_are_refused_everywhere() {
    let f = fixture().await;
    let owner = f.owner();
    let hub = f.hub_owner();
    let dev = f.device_token("d", DEVICE_KEY);
    let cases: [(Method, &str, &str, &str); 3] = [
        (Method::GET, "/enrollments/d", owner.as_str(), "2021-10-01"),
        (Method::GET, "/devices/d", hub.as_str(), "2021-04-12"),
        (
            Method::PUT,
            "/0ne00ABCDEF/registrations/d/register",
            dev.as_str(),
            "2019-03-31",
        ),
    ];
    for (method, path, auth, good) in cases {
        for (query, says) in [
            ("", "the api-version query parameter is required"),
            ("?api-version=", "the api-version query parameter is required"),
            ("?api-version=garbage", "api-version 'garbage' is not supported"),
            ("?api-version=1999-01-01", "api-version '1999-01-01' is not supported"),
            ("?api-version=2021-10-01&api-version=1999-01-01", "given twice"),
        ] {
            let m = f
                .call(
                    method.clone(),
                    &format!("{path}{query}"),
                    &[("authorization", auth)],
                    Body::empty(),
                )
                .await
                .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
            assert!(m.contains(says), "{path}{query}: {m}");
            if !says.contains("twice") {
                assert!(
                    m.contains("supported versions: ") && m.contains(good),
                    "{path}{query}: {m}"
                );
            }
        }
    }
    // Case and repetition of the same value are fine.
    f.call(
        Method::GET,
        "/devices/d?api-version=2021-04-12&API-VERSION=2021-04-12",
        &[("authorization", &hub)],
        Body::empty(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, codes::DEVICE_NOT_FOUND);
    // The device API lists the device versions, not the service ones.
    let m = f
        .call(
            Method::PUT,
            "/0ne00ABCDEF/registrations/d/register?api-version=2021-04-12",
            &[("authorization", &dev)],
            Body::empty(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::ARGUMENT_INVALID);
    assert!(m.contains("2021-06-01"), "{m}");
}

/// Issue 9, item 8: wrong JSON types are 400s that name the field, never silent defaults.
#[tokio::test]
async fn wrong_json_types_name_the_field() {
    let f = fixture().await;
    for (path, body, field) in [
        (
            "/enrollments/a",
            json!({"registrationId": "a", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": 5}}}),
            "attestation.symmetricKey.primaryKey",
        ),
        (
            "/enrollments/a",
            json!({"registrationId": "a", "attestation": {"type": "symmetricKey"}, "capabilities": {"iotEdge": "yes"}}),
            "capabilities.iotEdge",
        ),
        (
            "/enrollments/a",
            json!({"registrationId": "a", "attestation": {"type": "symmetricKey"}, "createdDateTimeUtc": 7}),
            "createdDateTimeUtc",
        ),
        (
            "/enrollmentGroups/g",
            json!({"enrollmentGroupId": "g", "attestation": {"type": "symmetricKey"}, "iotHubs": "h"}),
            "iotHubs",
        ),
    ] {
        let m = f
            .svc(Method::PUT, path, &[], body.to_string())
            .await
            .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
        assert!(m.contains(&format!("field '{field}'")), "{m}");
    }
    let m = f
        .reg(
            Method::PUT,
            "/devices/d",
            &[],
            json!({"deviceId": "d", "status": 1}).to_string(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert!(m.contains("field 'status'"), "{m}");
    let m = f
        .call(
            Method::PUT,
            &format!("/{SCOPE}/registrations/d/register?{API}"),
            &[("authorization", &f.device_token("d", DEVICE_KEY))],
            json!({"registrationId": "d", "payload": null, "tpm": {"endorsementKey": 1}}).to_string(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST_BODY);
    assert!(m.contains("field 'tpm.endorsementKey'"), "{m}");
    // Nothing was written.
    f.svc(Method::GET, "/enrollments/a", &[], Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, codes::ENROLLMENT_NOT_FOUND);
    assert!(f.hub.list_devices(0).is_empty());
}
