//! The bad-input matrix for authorization, api-version, registration ids and the service and
//! hub REST APIs (issue 9): each case is one HTTPS request to a real `dps serve` on a loopback
//! address, asserting the exact status and `errorCode`, a message that says what was wrong,
//! that nothing was persisted (enrollments, groups, registration records, hub devices and
//! certificates compared before and after, etags included), and that a good client is served
//! right after.

use crate::common;
use std::sync::Arc;

use dps_proto::codes;
use dps_proto::sas::build_token;
use dps_server::RunningServer;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{dps_sas, server, KEY};

const IP: &str = "127.0.9.1";
const SVC_API: &str = "api-version=2021-10-01";
const HUB_API: &str = "api-version=2021-04-12";
const DEV_API: &str = "api-version=2021-06-01";
/// A valid base64 key that no policy or enrollment has.
const WRONG_KEY: &str = "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkhIQ==";

struct Reply {
    status: u16,
    body: Value,
}

/// One HTTPS request; `Host: 127.0.9.1` unless `headers` carry another.
async fn https(s: &RunningServer, method: &str, path: &str, headers: &[(&str, String)], body: &str) -> Reply {
    let ca = std::fs::read_to_string(s.services.config.data_dir.join("ca.pem")).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&dps_pki::tls::client_config(&ca).unwrap()));
    let tcp = tokio::net::TcpStream::connect(s.https_addr).await.unwrap();
    let mut stream = tls
        .connect(ServerName::try_from(IP.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {IP}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

fn expiry() -> u64 {
    chrono::Utc::now().timestamp() as u64 + 600
}

/// A service-API token for `audience` signed with the owner policy's key (or `key`).
fn svc_token(s: &RunningServer, audience: &str, key: Option<&str>, skn: &str) -> String {
    let owner = &s.services.identity.policies[0];
    build_token(audience, key.unwrap_or(&owner.primary_key), expiry(), Some(skn)).unwrap()
}

fn owner(s: &RunningServer) -> String {
    svc_token(s, IP, None, "provisioningserviceowner")
}

fn hub_owner(s: &RunningServer, audience: &str) -> String {
    let p = &s.services.identity.hub.policies[0];
    build_token(audience, &p.primary_key, expiry(), Some(&p.key_name)).unwrap()
}

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    enrollments: Vec<(String, Option<String>)>,
    groups: Vec<(String, Option<String>)>,
    registrations: Vec<(String, Option<String>)>,
    devices: Vec<(String, Option<String>)>,
    certificates: usize,
}

/// Registration ids the cases use; their records are compared.
const TOUCHED_IDS: &[&str] = &["dev-1", "nobody", "g-dev", "x", "d"];

async fn snapshot(s: &RunningServer) -> Snapshot {
    let e = &s.services.engine;
    let enrollments = e.query_enrollments("", None, Some(1000)).await.unwrap().items;
    let groups = e.query_groups("", None, Some(1000)).await.unwrap().items;
    let mut registrations = Vec::new();
    for id in TOUCHED_IDS {
        if let Some(r) = e.store().get_registration(id).await.unwrap() {
            registrations.push((r.state.registration_id, r.state.etag));
        }
    }
    Snapshot {
        enrollments: enrollments.into_iter().map(|x| (x.registration_id, x.etag)).collect(),
        groups: groups.into_iter().map(|g| (g.enrollment_group_id, g.etag)).collect(),
        registrations,
        devices: common::hub(s)
            .list_devices(None, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.device_id, d.etag))
            .collect(),
        certificates: e.list_certificates().await.unwrap().len(),
    }
}

/// A good client right after: the service API, the hub API and the device API all answer.
async fn good_client_is_served(s: &RunningServer) {
    let r = https(
        s,
        "GET",
        &format!("/enrollments/dev-1?{SVC_API}"),
        &[("Authorization", owner(s))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = https(
        s,
        "GET",
        &format!("/devices/hubdev?{HUB_API}"),
        &[("Authorization", hub_owner(s, IP))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: String,
    status: u16,
    code: u32,
    says: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    headers: Vec<(&'static str, String)>,
    body: impl Into<String>,
    (status, code): (u16, u32),
    says: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers,
        body: body.into(),
        status,
        code,
        says,
    }
}

fn auth(token: String) -> Vec<(&'static str, String)> {
    vec![("Authorization", token)]
}

const E401: (u16, u32) = (401, codes::UNAUTHORIZED);
const E400: (u16, u32) = (400, codes::ARGUMENT_INVALID);
const BODY400: (u16, u32) = (400, codes::BAD_REQUEST_BODY);

fn cases(s: &RunningServer) -> Vec<Case> {
    let scope = s.services.identity.id_scope.clone();
    let svc = |p: &str| format!("{p}?{SVC_API}");
    let hub = |p: &str| format!("{p}?{HUB_API}");
    let reg = |id: &str| format!("/{scope}/registrations/{id}/register?{DEV_API}");
    let owner_key = s.services.identity.policies[0].primary_key.clone();
    let sig = |sr: &str| dps_proto::sas::sign(&owner_key, sr, expiry()).unwrap();
    let enc = dps_proto::sas::encode_component;
    let get1 = svc("/enrollments/dev-1");
    let good_sas = owner(s);
    let enrollment = |id: &str| json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}).to_string();
    let dev_body = json!({"registrationId": "dev-1"}).to_string();
    vec![
        // --- SAS on the service API ---
        case("no Authorization", "GET", &get1, vec![], "", E401, "missing Authorization"),
        case("bearer token", "GET", &get1, auth("Bearer eyJhbGciOi".into()), "", E401, "bearer (Entra ID) tokens"),
        case("not a SAS", "GET", &get1, auth("Basic dXNlcjpwYXNz".into()), "", E401, "must start with 'SharedAccessSignature '"),
        case("field without =", "GET", &get1, auth("SharedAccessSignature garbage".into()), "", E401, "field 'garbage' has no '='"),
        case("missing sr", "GET", &get1, auth(format!("SharedAccessSignature sig={}&se={}&skn=provisioningserviceowner", enc(&sig(IP)), expiry())), "", E401, "missing 'sr' field"),
        case("missing sig", "GET", &get1, auth(format!("SharedAccessSignature sr={IP}&se={}&skn=provisioningserviceowner", expiry())), "", E401, "missing 'sig' field"),
        case("missing se", "GET", &get1, auth(format!("SharedAccessSignature sr={IP}&sig={}&skn=provisioningserviceowner", enc(&sig(IP)))), "", E401, "missing 'se' field"),
        case("se not a number", "GET", &get1, auth(format!("SharedAccessSignature sr={IP}&sig={}&se=tomorrow&skn=provisioningserviceowner", enc(&sig(IP)))), "", E401, "'se' is not an integer"),
        case("sig not base64", "GET", &get1, auth(format!("SharedAccessSignature sr={IP}&sig=***&se={}&skn=provisioningserviceowner", expiry())), "", E401, "'sig' is not base64"),
        case("missing skn", "GET", &get1, auth(format!("SharedAccessSignature sr={IP}&sig={}&se={}", enc(&sig(IP)), expiry())), "", E401, "has no 'skn'"),
        case("sr given twice", "GET", &get1, auth(format!("{good_sas}&sr={IP}%2Fenrollments%2Fx")), "", E401, "field 'sr' appears more than once"),
        case("expired", "GET", &get1, auth(build_token(IP, &owner_key, 1_000_000, Some("provisioningserviceowner")).unwrap()), "", E401, "expired"),
        case("wrong key", "GET", &get1, auth(svc_token(s, IP, Some(WRONG_KEY), "provisioningserviceowner")), "", E401, "is not signed by a key of policy 'provisioningserviceowner' (no such policy, or not its"),
        case("unknown policy", "GET", &get1, auth(svc_token(s, IP, None, "admin")), "", E401, "is not signed by a key of policy 'admin' (no such policy, or not its"),
        case("hub token on the service API", "GET", &get1, auth(hub_owner(s, IP)), "", E401, "is not signed by a key of policy 'iothubowner'"),
        case("audience of another host", "GET", &get1, auth(svc_token(s, "dps.evil.test", None, "provisioningserviceowner")), "", E401, "audience 'dps.evil.test' does not cover /enrollments/dev-1"),
        case("audience host prefix", "GET", &get1, auth(svc_token(s, "127.0.9.10", None, "provisioningserviceowner")), "", E401, "does not cover"),
        case("scoped token off scope", "DELETE", svc("/enrollments/dev-1"), auth(svc_token(s, &format!("{IP}/enrollments/x"), None, "provisioningserviceowner")), "", E401, "does not cover /enrollments/dev-1"),
        case("scoped token prefix of id", "DELETE", svc("/enrollments/dev-1"), auth(svc_token(s, &format!("{IP}/enrollments/dev"), None, "provisioningserviceowner")), "", E401, "does not cover"),
        case("scoped token on the collection", "POST", svc("/enrollments"), auth(svc_token(s, &format!("{IP}/enrollments/dev-1"), None, "provisioningserviceowner")), json!({"mode": "delete", "enrollments": [{"registrationId": "dev-1"}]}).to_string(), E401, "does not cover /enrollments"),
        case("scoped token + forged Host deletes", "DELETE", svc("/enrollments/dev-1"), vec![("Authorization", svc_token(s, &format!("{IP}/enrollments/x"), None, "provisioningserviceowner")), ("Host", format!("{IP}/enrollments/x"))], "", E400, "is not a name of this server; it answers to 127.0.9.1 (port 443)"),
        case("Host of another server", "GET", &get1, vec![("Authorization", good_sas.clone()), ("Host", "dps.evil.test".into())], "", E400, "host 'dps.evil.test' is not a name of this server"),
        case("Host with another port", "GET", &get1, vec![("Authorization", good_sas.clone()), ("Host", format!("{IP}:8443"))], "", E400, "is not a name of this server"),
        // --- api-version ---
        case("service: api-version missing", "GET", "/enrollments/dev-1", auth(good_sas.clone()), "", E400, "the api-version query parameter is required; supported versions: "),
        case("service: api-version garbage", "GET", "/enrollments/dev-1?api-version=garbage", auth(good_sas.clone()), "", E400, "api-version 'garbage' is not supported; supported versions: 2017-08-31-preview"),
        case("service: api-version 1999-01-01", "DELETE", "/enrollments/dev-1?api-version=1999-01-01", auth(good_sas.clone()), "", E400, "api-version '1999-01-01' is not supported"),
        case("service: api-version twice", "DELETE", "/enrollments/dev-1?api-version=2021-10-01&api-version=1999-01-01", auth(good_sas.clone()), "", E400, "given twice with different values"),
        case("device: api-version garbage", "PUT", format!("/{scope}/registrations/dev-1/register?api-version=garbage"), auth(dps_sas(s, "dev-1", KEY)), &dev_body, E400, "api-version 'garbage' is not supported"),
        case("device: api-version missing", "PUT", format!("/{scope}/registrations/dev-1/register"), auth(dps_sas(s, "dev-1", KEY)), &dev_body, E400, "the api-version query parameter is required"),
        case("hub: api-version missing", "GET", "/devices", auth(hub_owner(s, IP)), "", E400, "supported versions: 2016-02-03"),
        case("hub: api-version 1999-01-01", "DELETE", "/devices/hubdev?api-version=1999-01-01", vec![("Authorization", hub_owner(s, IP)), ("If-Match", "*".into())], "", E400, "api-version '1999-01-01' is not supported"),
        // --- registration ids and device SAS ---
        case("registration id with a space", "PUT", reg("dev%201"), auth(dps_sas(s, "dev 1", KEY)), "", E400, "contains ' '"),
        case("registration id too long", "PUT", reg(&"a".repeat(129)), auth(dps_sas(s, &"a".repeat(129), KEY)), "", E400, "longer than 128 characters"),
        case("registration id starting with '-'", "PUT", reg("-dev"), auth(dps_sas(s, "-dev", KEY)), "", E400, "must start and end with a letter or digit"),
        case("registration id with '/' encoded", "PUT", reg("dev%2F1"), auth(dps_sas(s, "dev/1", KEY)), "", E400, "contains '/'"),
        case("unknown ID scope", "PUT", format!("/0ne00000000/registrations/dev-1/register?{DEV_API}"), auth(dps_sas(s, "dev-1", KEY)), "", (404, codes::ID_SCOPE_NOT_FOUND), "unknown ID scope"),
        case("device: unknown registration", "PUT", reg("nobody"), auth(dps_sas(s, "nobody", KEY)), "", E401, "SAS signature does not match any key this service accepts for registration 'nobody'"),
        case("device: wrong key", "PUT", reg("dev-1"), auth(dps_sas(s, "dev-1", WRONG_KEY)), "", E401, "SAS signature does not match any key this service accepts for registration 'dev-1'"),
        case("device: upper-case id, wrong key", "PUT", reg("DEV-1"), auth(dps_sas(s, "DEV-1", WRONG_KEY)), "", E401, "does not match any key this service accepts for registration 'DEV-1'"),
        case("device: token for another id", "PUT", reg("dev-1"), auth(dps_sas(s, "x", KEY)), "", E401, "audience"),
        case("device: expired token", "PUT", reg("dev-1"), auth(build_token(&format!("{scope}/registrations/dev-1"), KEY, 1_000_000, None).unwrap()), "", E401, "expired"),
        case("device: body not JSON", "PUT", reg("dev-1"), auth(dps_sas(s, "dev-1", KEY)), "{\"registrationId\": ", BODY400, "DeviceRegistration"),
        case("device: body id of another device", "PUT", reg("dev-1"), auth(dps_sas(s, "dev-1", KEY)), json!({"registrationId": "x"}).to_string(), E400, "does not match the registration id"),
        case("device: body id of the wrong type", "PUT", reg("dev-1"), auth(dps_sas(s, "dev-1", KEY)), json!({"registrationId": 5}).to_string(), BODY400, "field 'registrationId'"),
        // --- service REST API bodies and ids ---
        case("enrollment id with a space", "PUT", svc("/enrollments/bad%20id"), auth(good_sas.clone()), enrollment("bad id"), E400, "contains ' '"),
        case("enrollment body not JSON", "PUT", svc("/enrollments/x"), auth(good_sas.clone()), "{", BODY400, "IndividualEnrollment"),
        case("enrollment body empty", "PUT", svc("/enrollments/x"), auth(good_sas.clone()), "", BODY400, "request body is empty"),
        case("enrollment body id of another", "PUT", svc("/enrollments/x"), auth(good_sas.clone()), enrollment("y"), E400, "does not match"),
        case("enrollment attestation type unknown", "PUT", svc("/enrollments/x"), auth(good_sas.clone()), json!({"registrationId": "x", "attestation": {"type": "magic"}}).to_string(), BODY400, "unknown AttestationType 'magic'"),
        case("enrollment key of the wrong type", "PUT", svc("/enrollments/x"), auth(good_sas.clone()), json!({"registrationId": "x", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": 5}}}).to_string(), BODY400, "field 'attestation.symmetricKey.primaryKey'"),
        case("enrollment date that is no date", "PUT", svc("/enrollments/x"), auth(good_sas.clone()), json!({"registrationId": "x", "attestation": {"type": "symmetricKey"}, "createdDateTimeUtc": "yesterday"}).to_string(), BODY400, "field 'createdDateTimeUtc'"),
        case("group iotHubs not a list", "PUT", svc("/enrollmentGroups/g"), auth(good_sas.clone()), json!({"enrollmentGroupId": "g", "attestation": {"type": "symmetricKey"}, "iotHubs": "h"}).to_string(), BODY400, "field 'iotHubs'"),
        case("bulk mode unknown", "POST", svc("/enrollments"), auth(good_sas.clone()), json!({"mode": "merge", "enrollments": [{"registrationId": "x"}]}).to_string(), BODY400, "unknown BulkMode 'merge'"),
        case("bulk item of the wrong type", "POST", svc("/enrollments"), auth(good_sas.clone()), json!({"mode": "create", "enrollments": [{"registrationId": "x", "attestation": {"type": "symmetricKey"}}, {"registrationId": []}]}).to_string(), BODY400, "field 'enrollments[1].registrationId'"),
        case("page size not a number", "POST", svc("/enrollments/query"), vec![("Authorization", good_sas.clone()), ("x-ms-max-item-count", "many".into())], "", E400, "x-ms-max-item-count must be a non-negative integer"),
        // --- hub REST API ---
        case("hub: DPS token", "GET", hub("/devices"), auth(owner(s)), "", E401, "is not signed by a key of policy 'provisioningserviceowner'"),
        case("hub: scoped token lists devices", "GET", hub("/devices"), auth(hub_owner(s, &format!("{IP}/devices/hubdev"))), "", E401, "does not cover /devices"),
        case("hub: scoped token + forged Host", "GET", hub("/devices"), vec![("Authorization", hub_owner(s, &format!("{IP}/devices/hubdev"))), ("Host", format!("{IP}/devices/hubdev"))], "", E400, "is not a name of this server"),
        case("hub: scoped token on another device", "DELETE", hub("/devices/hubdev2"), vec![("Authorization", hub_owner(s, &format!("{IP}/devices/hubdev"))), ("If-Match", "*".into())], "", E401, "does not cover /devices/hubdev2"),
        case("hub: body device id of another", "PUT", hub("/devices/d"), auth(hub_owner(s, IP)), json!({"deviceId": "e"}).to_string(), E400, "does not match the device id 'd'"),
        case("hub: status unknown", "PUT", hub("/devices/d"), auth(hub_owner(s, IP)), json!({"deviceId": "d", "status": "sleeping"}).to_string(), E400, "status must be 'enabled' or 'disabled'"),
        case("hub: status of the wrong type", "PUT", hub("/devices/d"), auth(hub_owner(s, IP)), json!({"deviceId": "d", "status": 1}).to_string(), BODY400, "field 'status'"),
        case("hub: authentication type unknown", "PUT", hub("/devices/d"), auth(hub_owner(s, IP)), json!({"deviceId": "d", "authentication": {"type": "magic"}}).to_string(), E400, "authentication.type must be"),
        case("hub: body not JSON", "PUT", hub("/devices/d"), auth(hub_owner(s, IP)), "[", BODY400, "Device"),
        case("hub: top not a number", "GET", format!("/devices?{HUB_API}&top=all"), auth(hub_owner(s, IP)), "", E400, "top must be a non-negative integer"),
        case("hub: method without a name", "POST", hub("/twins/hubdev/methods"), auth(hub_owner(s, IP)), json!({"payload": 1}).to_string(), BODY400, "methodName"),
        case("hub: twin tags of the wrong type", "PATCH", hub("/twins/hubdev"), auth(hub_owner(s, IP)), json!({"tags": "t"}).to_string(), BODY400, "tags must be a JSON object, got a string"),
    ]
}

#[tokio::test]
async fn bad_input_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(IP, dir.path()).await;
    for id in ["hubdev", "hubdev2"] {
        common::hub(&s)
            .put_device(
                dps_proto::model::hub::Device {
                    device_id: id.into(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
    }
    let before = snapshot(&s).await;
    assert_eq!(before.enrollments.len(), 1);
    assert_eq!(before.devices.len(), 2);
    let cases = cases(&s);
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for c in &cases {
        let r = https(&s, c.method, &c.path, &c.headers, &c.body).await;
        let ctx = format!("case '{}': {} {} -> {} {}", c.name, c.method, c.path, r.status, r.body);
        assert_eq!(r.status, c.status, "{ctx}");
        assert_eq!(r.body["errorCode"], json!(c.code), "{ctx}");
        let message = r.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(c.says),
            "{ctx}\n  expected the message to contain: {}",
            c.says
        );
        assert_eq!(snapshot(&s).await, before, "{ctx}: something was persisted");
        good_client_is_served(&s).await;
    }

    // Registration ids are case-insensitive (Azure): the upper-case spelling with the right key
    // registers the enrollment `dev-1`.
    let scope = &s.services.identity.id_scope;
    let r = https(
        &s,
        "PUT",
        &format!("/{scope}/registrations/DEV-1/register?{DEV_API}"),
        &[("Authorization", dps_sas(&s, "DEV-1", KEY))],
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let record = s.services.engine.store().get_registration("dev-1").await.unwrap();
    assert_eq!(record.expect("dev-1 registered").state.status.as_str(), "assigned");
    s.shutdown().await;
}
