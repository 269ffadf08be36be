//! The HTTPS router without sockets: real `http::Request`s through `tower::ServiceExt::oneshot`
//! into the router `dps serve` runs, over the engine on the in-memory store, an in-memory
//! embedded hub and a fake clock. The `http_*` test binaries share it; servers on real sockets
//! are in the parent module.

use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use dps_core::auth::{PolicyAuthorizer, SharedAccessPolicy};
use dps_core::store::memory::MemoryStore;
use dps_core::{Engine, EngineConfig, FakeClock};
use dps_hub::{Hub, HubConfig};
use dps_proto::hub_mqtt::HubUsername;
use dps_proto::sas::build_token;
use dps_server::datadir::{HubIdentity, Identity, DPS_OWNER_RIGHTS, HUB_OWNER_RIGHTS};
use dps_server::http::{router, JSON_CONTENT_TYPE};
use dps_server::hubs::{EmbeddedHub, EmbeddedHubs};
use dps_server::{ServerConfig, Services};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const SCOPE: &str = "0ne00ABCDEF";
pub const DPS_HOST: &str = "dps.example.test";
pub const HUB_HOST: &str = "hub.example.test";
pub const OWNER_KEY: &str = "b3duZXJrZXlvd25lcmtleW93bmVya2V5b3duZXJrZXk=";
pub const READER_KEY: &str = "cmVhZGVya2V5cmVhZGVya2V5cmVhZGVya2V5cmVhZGU=";
pub const HUB_OWNER_KEY: &str = "aHVib3duZXJodWJvd25lcmh1Ym93bmVyaHVib3duZXI=";
pub const HUB_READER_KEY: &str = "aHVicmVhZGVyaHVicmVhZGVyaHVicmVhZGVyaHVicmU=";
pub const DEVICE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const DEVICE_KEY2: &str = "HxwdGhsYGRYXFBUSExAREA8ODQwLCgkIBwYFBAMCAQA=";
/// `max_message_bytes` of the fixture's server (small, so tests exceed it cheaply).
pub const MAX_BODY: usize = 4096;
/// The service and device API version the tests send.
pub const API: &str = "api-version=2021-10-01";

/// The router over its services, with the hub and clock the tests drive directly.
pub struct Fixture {
    pub app: Router,
    pub services: Arc<Services>,
    pub hub: Hub,
    pub clock: Arc<FakeClock>,
    /// The file upload blob endpoint's directory.
    pub blob_dir: tempfile::TempDir,
}

/// The fixture's storage account key (raw bytes) for file upload SAS.
pub const STORAGE_KEY: &[u8] = b"fixture storage account key 0123";

/// Largest upload the fixture's blob endpoint takes.
pub const MAX_UPLOAD: u64 = 64 * 1024;

fn policy(name: &str, key: &str, rights: &[&str]) -> SharedAccessPolicy {
    SharedAccessPolicy {
        key_name: name.into(),
        primary_key: key.into(),
        secondary_key: key.into(),
        rights: rights.iter().map(|r| r.to_string()).collect(),
    }
}

/// A fresh router: scope [`SCOPE`], host names [`DPS_HOST`] and [`HUB_HOST`], owner and reader
/// policies on both APIs, the clock at 2026-01-01T00:00:00Z, nothing enrolled.
pub async fn fixture() -> Fixture {
    let clock = Arc::new(FakeClock::at(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()));
    let hub_config = HubConfig {
        file_upload: Some(dps_hub::FileUploadConfig {
            host: HUB_HOST.into(),
            container: "fileupload".into(),
            account: "hub".into(),
            key: STORAGE_KEY.to_vec(),
            notifications: true,
        }),
        ..HubConfig::in_memory(HUB_HOST)
    };
    let hub = Hub::open_with_clock(hub_config, clock.clone()).unwrap();
    let blob_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn dps_core::Store> = Arc::new(MemoryStore::new());
    let engine = Engine::new(
        EngineConfig::single_hub(SCOPE, HUB_HOST),
        store.clone(),
        Arc::new(hub.clone()),
    );
    engine.load().await.unwrap();
    let dps_policies = vec![
        policy("provisioningserviceowner", OWNER_KEY, DPS_OWNER_RIGHTS),
        policy("reader", READER_KEY, &["EnrollmentRead", "RegistrationStatusRead"]),
    ];
    let hub_policies = vec![
        policy("iothubowner", HUB_OWNER_KEY, HUB_OWNER_RIGHTS),
        policy("registryRead", HUB_READER_KEY, &["RegistryRead"]),
    ];
    let mut config = ServerConfig::defaults();
    config.hostnames = vec![DPS_HOST.into()];
    config.max_message_bytes = MAX_BODY;
    let hub_identity = HubIdentity {
        host_name: HUB_HOST.into(),
        policies: hub_policies,
        ..Default::default()
    };
    let blobs = dps_store::BlobStore::open(blob_dir.path(), MAX_UPLOAD).unwrap();
    let identity = Identity {
        id_scope: SCOPE.into(),
        policies: dps_policies.clone(),
        hub: hub_identity.clone(),
        other_hubs: Vec::new(),
        portal_key: dps_server::datadir::random_key(),
    };
    // The policies are kept in a data directory of their own, as a server keeps them.
    let data_dir = dps_server::DataDir::new(blob_dir.path().join("data"));
    std::fs::create_dir_all(data_dir.root()).unwrap();
    std::fs::write(data_dir.identity_path(), serde_json::to_string(&identity).unwrap()).unwrap();
    let hubs = EmbeddedHubs::new(EmbeddedHub::new(hub.clone(), hub_identity, Some(blobs)), []);
    let dps_auth = PolicyAuthorizer::new(dps_policies);
    let policies = Arc::new(dps_server::policies::PolicyBook::new(
        dps_server::policies::IdentityKeeper::DataDir(data_dir),
        dps_auth.clone(),
        hubs.authorizers(),
    ));
    let services = Arc::new(Services {
        engine: Arc::new(engine),
        hubs,
        dps_auth,
        policies,
        // Never told to stop: it stops with the fixture.
        audit: dps_server::audit::AuditTrail::start(
            store,
            std::time::Duration::from_secs(30 * 86400),
            tokio::sync::watch::channel(false).1,
        ),
        portal: Arc::new(dps_server::portal::Portal::new(&identity.portal_key)),
        identity,
        config,
        clock: clock.clone(),
        storage_account: None,
        metrics: Default::default(),
        readiness: Default::default(),
    });
    Fixture {
        app: router(services.clone()),
        services,
        hub,
        clock,
        blob_dir,
    }
}

impl Fixture {
    /// An hour from the fake clock's now, as a SAS expiry.
    pub fn expiry(&self) -> u64 {
        Engine::unix_time(dps_core::Clock::now(self.clock.as_ref())) + 3600
    }

    /// A service API token for `provisioningserviceowner`.
    pub fn owner(&self) -> String {
        build_token(DPS_HOST, OWNER_KEY, self.expiry(), Some("provisioningserviceowner")).unwrap()
    }

    /// A hub registry token for `iothubowner`.
    pub fn hub_owner(&self) -> String {
        build_token(HUB_HOST, HUB_OWNER_KEY, self.expiry(), Some("iothubowner")).unwrap()
    }

    /// A device API token for `registration_id` signed with `key`.
    pub fn device_token(&self, registration_id: &str, key: &str) -> String {
        build_token(
            &format!("{SCOPE}/registrations/{registration_id}"),
            key,
            self.expiry(),
            None,
        )
        .unwrap()
    }

    /// A request with `Host: {DPS_HOST}:443` unless `headers` name another host.
    pub async fn call(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Resp {
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
    pub async fn svc(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Resp {
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
    pub async fn reg(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Resp {
        let auth = self.hub_owner();
        let mut h = vec![("authorization", auth.as_str())];
        h.extend_from_slice(headers);
        let sep = if path.contains('?') { '&' } else { '?' };
        self.call(method, &format!("{path}{sep}api-version=2021-04-12"), &h, body)
            .await
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts the status and the JSON content type; returns the body.
    #[track_caller]
    pub fn assert_json(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.header("content-type"), Some(JSON_CONTENT_TYPE));
        self.json()
    }

    /// Asserts a DPS error (status, `errorCode` in the body and `x-ms-error-code`, tracking id
    /// and timestamp); returns its message.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: u32) -> String {
        let v = self.assert_json(status);
        assert_eq!(v["errorCode"], json!(code), "body: {v}");
        assert_eq!(self.header("x-ms-error-code"), Some(code.to_string().as_str()));
        assert!(v["trackingId"].is_string() && v["timestampUtc"].is_string());
        v["message"].as_str().unwrap().to_string()
    }

    /// Asserts `204` with no body and no content type.
    #[track_caller]
    pub fn assert_no_content(&self) {
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

/// An individual symmetric-key enrollment body; `key` is the primary key (secondary
/// [`DEVICE_KEY2`]), `None` lets the service generate both.
pub fn sym_enrollment(id: &str, key: Option<&str>) -> String {
    let sk = match key {
        Some(k) => json!({"primaryKey": k, "secondaryKey": DEVICE_KEY2}),
        None => json!({}),
    };
    json!({"registrationId": id, "attestation": {"type": "symmetricKey", "symmetricKey": sk}}).to_string()
}

/// Creates SAS device `id` (keys [`DEVICE_KEY`], [`DEVICE_KEY2`]) through the registry API and
/// returns a device token for it (audience `{HUB_HOST}/devices/{id}`, primary key).
pub async fn sas_device_token(f: &Fixture, id: &str) -> String {
    let dev = json!({"deviceId": id, "authentication": {"type": "sas", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY2}}});
    f.reg(Method::PUT, &format!("/devices/{id}"), &[], dev.to_string())
        .await
        .assert_json(StatusCode::OK);
    build_token(&format!("{HUB_HOST}/devices/{id}"), DEVICE_KEY, f.expiry(), None).unwrap()
}

/// Creates a SAS device in the hub and opens its session (as the MQTT adapter would).
pub async fn connect_device(
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
    let identity = f
        .hub
        .authenticate(now, &user, Some(token.as_bytes()), None)
        .await
        .unwrap();
    f.hub.open_session(identity).await.unwrap()
}
