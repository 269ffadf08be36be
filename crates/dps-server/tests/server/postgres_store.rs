//! `dps serve --store postgres://…`: a node keeps its registrations and its embedded hub's
//! devices in PostgreSQL (nothing in SQLite files), and its identity, CAs and server
//! certificates too, and finds them there after a restart on another machine (issue 15,
//! decision 0030); several nodes on one database serve one service (decision 0031).
//!
//! Needs `DPS_TEST_POSTGRES` (a database URL whose user may create databases), which
//! `scripts/test.sh` sets from its throwaway cluster.

use crate::common;

const IP: &str = "127.0.38.51";
const THIRD: &str = "127.0.38.53";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_registrations_and_hub_devices_in_postgresql() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    // A node of an earlier build kept its identity in its data directory: the database, which
    // holds none yet, adopts it.
    let (earlier, _) = dps_server::DataDir::new(dir.path()).init_identity(IP, &[]).unwrap();
    let s = common::server_with(IP, dir.path(), |c| c.store = Some(url.clone())).await;
    assert_eq!(s.services.identity.id_scope, earlier.id_scope);
    assert_eq!(s.services.identity.hub.policies, earlier.hub.policies);
    let state = common::register_through_engine(&s, "dev-1").await;
    let hub_name = s.services.identity.hub.host_name.clone();
    assert_eq!(state.assigned_hub.as_deref(), Some(hub_name.as_str()));
    let generation = |d: dps_proto::model::hub::Device| serde_json::to_value(d).unwrap()["generationId"].clone();
    let first = generation(common::hub(&s).get_device("dev-1").await.unwrap());
    for file in ["dps.db", "hub.db", "telemetry.db"] {
        assert!(
            !dir.path().join(file).exists(),
            "{file} made although the store is PostgreSQL"
        );
    }

    s.shutdown().await;

    // Restarted on another machine (a new data directory): the identity, the CA and the server
    // certificates are the database's, mirrored into the directory for the client commands;
    // the registration and the hub device come back from PostgreSQL; the device connects to
    // its hub, and registers again as the same device.
    let moved = tempfile::tempdir().unwrap();
    let s = common::hub_server_with(IP, moved.path(), |c| c.store = Some(url.clone())).await;
    assert_eq!(s.services.identity.id_scope, earlier.id_scope);
    let moved_dir = dps_server::DataDir::new(moved.path());
    assert_eq!(moved_dir.load_identity().unwrap().id_scope, earlier.id_scope);
    for file in ["ca.pem", "ca-rsa.pem", "server.pem", "server-rsa-key.pem"] {
        assert_eq!(
            std::fs::read(moved.path().join(file)).unwrap(),
            std::fs::read(dir.path().join(file)).unwrap(),
            "{file} is the database's"
        );
    }
    let stored = s.services.engine.get_registration("dev-1").await.unwrap();
    assert_eq!(stored.device_id.as_deref(), Some("dev-1"));
    assert_eq!(stored.assigned_hub.as_deref(), Some(hub_name.as_str()));
    let (c, _ev) = common::hub_mqtt(&s, "dev-1").await;
    c.disconnect().await.ok();
    common::register_through_engine(&s, "dev-1").await;
    let again = generation(common::hub(&s).get_device("dev-1").await.unwrap());
    assert_eq!(again, first, "the same hub identity");
    s.shutdown().await;
}

/// A PostgreSQL cluster of this test's own, which it may stop and start (the shared one serves
/// the other tests): `scripts/pg-test-cluster.sh` in a temporary directory, removed on drop.
struct OwnCluster {
    dir: std::path::PathBuf,
    url: String,
    _parent: tempfile::TempDir,
}

impl OwnCluster {
    fn script(command: &str, dir: &std::path::Path) -> String {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-test-cluster.sh");
        let out = std::process::Command::new(script)
            .arg(command)
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-test-cluster.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn start() -> Self {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("pg");
        let url = Self::script("start", &dir);
        Self {
            dir,
            url,
            _parent: parent,
        }
    }

    /// Stops the server as a restart does (fast shutdown: sessions are ended).
    fn halt(&self) {
        Self::script("halt", &self.dir);
    }

    /// Starts it again at the same address.
    fn resume(&self) {
        Self::script("resume", &self.dir);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        Self::script("stop", &self.dir);
    }
}

/// While PostgreSQL restarts, a node fails requests cleanly, telling devices and clients when to
/// retry (503, `Retry-After`), and once it is back the node serves again by itself (issue 15
/// point 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_with_503_while_postgresql_restarts_and_succeed_after() {
    let pg = OwnCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let s = common::server_with(THIRD, dir.path(), |c| c.store = Some(pg.url.clone())).await;
    let scope = s.services.identity.id_scope.clone();
    let register = format!("/{scope}/registrations/dev-1/register?api-version=2021-06-01");
    let body = serde_json::json!({"registrationId": "dev-1"});
    let sas = common::dps_sas(&s, "dev-1", common::KEY);

    let ready = || async {
        let (status, _, body) = common::https_raw(&s, common::trusting_local_ca(&s), "GET", "/readyz", &[], &[]).await;
        (status, String::from_utf8(body).unwrap())
    };
    assert_eq!(ready().await.0, 200);

    pg.halt();
    // A load balancer probing the node learns that it cannot serve now, and why (once the
    // answer it got a moment ago is over a second old: answers are kept that long).
    tokio::time::sleep(dps_server::readiness::READINESS_TTL).await;
    let (status, why) = ready().await;
    assert_eq!(status, 503, "{why}");
    assert!(why.starts_with("not ready: DPS store:"), "{why}");
    let r = common::https(&s, "PUT", &register, Some(&sas), Some(&body)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["errorCode"], 503001, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        r.body["message"].as_str().unwrap().contains("retry later"),
        "{}",
        r.body
    );
    // The device asks again before the database is back: still told to retry, nothing kept.
    let r = common::https(&s, "PUT", &register, Some(&sas), Some(&body)).await;
    assert_eq!(r.status, 503, "{}", r.body);

    pg.resume();
    // Back by itself: connections lost in the restart are replaced, the device registers.
    let mut tries = 0;
    let done = loop {
        let r = common::https(&s, "PUT", &register, Some(&sas), Some(&body)).await;
        if r.status != 503 || tries == 20 {
            break r;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(done.status, 202, "{}", done.body);
    tokio::time::sleep(dps_server::readiness::READINESS_TTL).await;
    assert_eq!(ready().await.0, 200);
    let state = common::register_through_engine(&s, "dev-1").await;
    assert_eq!(state.device_id.as_deref(), Some("dev-1"));
    s.shutdown().await;
}

/// Three nodes, started at once with the same `--store` and `--hostname` values, serve one
/// service (issue 15 points 2, 3 and 5; decision 0031): one identity; an enrollment group
/// created through one node registers a device through another; the device, connected to the
/// third, gets a desired-property patch, a cloud-to-device message and a direct method sent
/// through the other two; its telemetry is read through any node; disabled through one, its
/// connection to another ends.
/// Nodes on the addresses `ips`, started at once on one fresh database with every address as a
/// host name (as an operator starts a cluster behind a load balancer), and their data
/// directories (which must outlive them).
async fn cluster<const N: usize>(ips: [&'static str; N]) -> ([dps_server::RunningServer; N], [tempfile::TempDir; N]) {
    cluster_with(ips, |_| {}).await
}

/// [`cluster`] with `configure` applied to every node's configuration.
async fn cluster_with<const N: usize>(
    ips: [&'static str; N],
    configure: impl Fn(&mut dps_server::ServerConfig),
) -> ([dps_server::RunningServer; N], [tempfile::TempDir; N]) {
    let url = dps_store::postgres::testing::fresh_database().await;
    let dirs = [(); N].map(|_| tempfile::tempdir().unwrap());
    let configure = &configure;
    let starting = ips.iter().zip(&dirs).map(|(ip, dir)| {
        let url = url.clone();
        common::hub_server_with(ip, dir.path(), move |c| {
            c.store = Some(url);
            c.hostnames = ips.map(String::from).to_vec();
            configure(c);
        })
    });
    let nodes = futures_util::future::join_all(starting).await;
    match nodes.try_into() {
        Ok(nodes) => (nodes, dirs),
        Err(_) => unreachable!("one node per address"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_service() {
    use rumqttc::{Packet, QoS};
    use std::time::Duration;
    const NODES: [&str; 3] = ["127.0.38.61", "127.0.38.62", "127.0.38.63"];
    const GROUP_KEY: &str = "Z3JvdXAta2V5LWZvci10aHJlZS1ub2Rlcy0wMTIzNDU2Nzg5";
    let ([a, b, c], _dirs) = cluster(NODES).await;
    for other in [&b, &c] {
        assert_eq!(other.services.identity.id_scope, a.services.identity.id_scope);
        assert_eq!(other.services.identity.hub.host_name, a.services.identity.hub.host_name);
        assert_eq!(other.services.identity.hub.policies, a.services.identity.hub.policies);
    }
    let hub_host = a.services.identity.hub.host_name.clone();

    // A group created through A registers a device through B, once B heard of it.
    let group = dps_proto::model::service::EnrollmentGroup {
        attestation: common::symmetric_key(GROUP_KEY),
        ..Default::default()
    };
    let now = chrono::Utc::now();
    a.services.engine.put_group(now, "fleet", group, None).await.unwrap();
    let device_key = dps_proto::keys::derive_device_key(GROUP_KEY, "dev-1").unwrap();
    let req = dps_core::DeviceRequest {
        id_scope: b.services.identity.id_scope.clone(),
        registration_id: "dev-1".into(),
        credential: dps_core::Credential::Sas(common::dps_sas(&b, "dev-1", &device_key)),
        api_version: None,
        source: None,
        transport: Default::default(),
    };
    let body = dps_proto::model::device::DeviceRegistration::default();
    let mut registered = None;
    for _ in 0..50 {
        match b.services.engine.register(chrono::Utc::now(), &req, &body).await {
            Ok(op) => {
                registered = Some(op);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let op = registered.expect("node B registers a device of the group made through A within 5 s");
    let id = op.operation().unwrap().operation_id.clone();
    // The operation is polled through another node than the one it started on.
    let state = c
        .services
        .engine
        .operation_status(chrono::Utc::now(), &req, &id)
        .await
        .unwrap()
        .body
        .registration_state;
    assert_eq!(state.assigned_hub.as_deref(), Some(hub_host.as_str()), "{state:?}");

    // The device connects to C.
    let (client, mut ev) = common::hub_mqtt_with_key(&c, &hub_host, &hub_host, "dev-1", &device_key)
        .await
        .unwrap();
    for topic in [
        "$iothub/twin/PATCH/properties/desired/#",
        "devices/dev-1/messages/devicebound/#",
        "$iothub/methods/POST/#",
    ] {
        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        common::hub_mqtt_until(&mut ev, |p| matches!(p, Packet::SubAck(_)).then_some(()))
            .await
            .unwrap();
    }
    let publish_on = |prefix: &'static str| {
        move |p: &Packet| match p {
            Packet::Publish(p) if p.topic.starts_with(prefix) => Some((p.topic.clone(), p.payload.to_vec())),
            _ => None,
        }
    };
    let desired: dps_proto::model::hub::Twin =
        serde_json::from_value(serde_json::json!({"properties": {"desired": {"rate": 5}}})).unwrap();
    common::hub(&a).patch_twin("dev-1", desired, None).await.unwrap();
    let (_, patch) = common::hub_mqtt_until(&mut ev, publish_on("$iothub/twin/PATCH/properties/desired/"))
        .await
        .unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&patch).unwrap()["rate"], 5);

    common::hub(&b).send_c2d("dev-1", "hello", Vec::new()).await.unwrap();
    let (_, message) = common::hub_mqtt_until(&mut ev, publish_on("devices/dev-1/messages/devicebound/"))
        .await
        .unwrap();
    assert_eq!(message, b"hello");

    let a_hub = common::hub(&a).clone();
    let mut call = tokio::spawn(async move {
        a_hub
            .invoke_method(
                "dev-1",
                "reboot",
                serde_json::json!({"now": true}),
                Duration::from_secs(10),
            )
            .await
    });
    let (topic, _) = common::hub_mqtt_until(&mut ev, publish_on("$iothub/methods/POST/reboot/"))
        .await
        .unwrap();
    let rid = topic.rsplit('=').next().unwrap().to_string();
    client
        .publish(
            format!("$iothub/methods/res/201/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            br#"{"ok":true}"#.to_vec(),
        )
        .await
        .unwrap();
    let answer = loop {
        tokio::select! {
            answer = &mut call => break answer.unwrap().unwrap(),
            polled = ev.poll() => { polled.unwrap(); }
        }
    };
    assert_eq!(answer.status, 201);

    // Telemetry through C, read through B.
    common::publish_acked(&client, &mut ev, "devices/dev-1/messages/events/", r#"{"t":1}"#).await;
    // Readable through B once B heard that it is stored (readers never see a gap fill in).
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = common::hub(&b).recent_events(Some("dev-1"), None, 10).await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_json(), Some(serde_json::json!({"t": 1})));

    // Disabled through B: its connection to C ends.
    let mut device = common::hub(&b).get_device("dev-1").await.unwrap();
    device.status = Some("disabled".into());
    common::hub(&b).put_device(device, Some("*")).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if ev.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the disabled device's connection to node C ends within 10 s"
    );
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

/// A TPM device may send its challenge request to one node and its signed registration to
/// another (issue 15 point 2, decision 0031): the challenge lives in the database, and is
/// consumed once, whichever node consumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_challenge_from_one_node_is_answered_through_another() {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use dps_tpm::software::SoftwareTpm;
    use serde_json::json;
    const NODES: [&str; 2] = ["127.0.38.71", "127.0.38.72"];
    let ([a, b], _dirs) = cluster(NODES).await;
    let scope = a.services.identity.id_scope.clone();

    let tpm = SoftwareTpm::generate(&mut rand::thread_rng()).unwrap();
    let reg = dps_tpm::registration_id(&tpm.endorsement_key());
    common::enroll_tpm(&a, &reg, &tpm.endorsement_key()).await;
    let path = format!("/{scope}/registrations/{reg}/register?api-version=2021-06-01");
    let body = json!({
        "registrationId": reg,
        "tpm": {"endorsementKey": B64.encode(tpm.endorsement_key()), "storageRootKey": B64.encode(tpm.storage_root_key())},
    });
    let challenge = common::https(&a, "PUT", &path, None, Some(&body)).await;
    assert_eq!(challenge.status, 401, "{}", challenge.body);
    let blob = B64
        .decode(challenge.body["authenticationKey"].as_str().unwrap())
        .unwrap();
    let key = tpm.activate(&blob).unwrap();
    let sas = dps_proto::sas::build_token(
        &format!("{scope}/registrations/{reg}"),
        &B64.encode(&key[..]),
        chrono::Utc::now().timestamp() as u64 + 2400,
        Some("registration"),
    )
    .unwrap();

    // Signed with the key of A's challenge, accepted by B, polled through A.
    let accepted = common::https(&b, "PUT", &path, Some(&sas), Some(&body)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let op = accepted.body["operationId"].as_str().unwrap();
    let poll = format!("/{scope}/registrations/{reg}/operations/{op}?api-version=2021-06-01");
    let mut done = common::https(&a, "GET", &poll, Some(&sas), None).await;
    for _ in 0..50 {
        if done.body["status"] != "assigning" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        done = common::https(&a, "GET", &poll, Some(&sas), None).await;
    }
    assert_eq!(done.body["status"], "assigned", "{}", done.body);
    let hub_blob = B64
        .decode(
            done.body["registrationState"]["tpm"]["authenticationKey"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let hub_key = tpm.activate(&hub_blob).unwrap();
    let device = common::hub(&b).get_device(&reg).await.expect("hub device");
    let keys = device.authentication.unwrap().symmetric_key.unwrap();
    assert_eq!(keys.primary_key.unwrap(), B64.encode(&hub_key[..]));

    // The challenge was consumed: the same token starts nothing more, through either node.
    for node in [&a, &b] {
        let again = common::https(node, "PUT", &path, Some(&sas), Some(&body)).await;
        assert_eq!(again.status, 401, "{}", again.body);
    }
}

/// A node remembers which devices have no individual enrollment (so a group's devices are
/// attested without asking the database each time); an individual enrollment created through
/// another node takes precedence there once the node hears of it (decision 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_individual_enrollment_made_through_one_node_takes_precedence_on_another() {
    use std::time::Duration;
    const NODES: [&str; 2] = ["127.0.38.73", "127.0.38.74"];
    const GROUP_KEY: &str = "Z3JvdXAta2V5LWZvci1wcmVjZWRlbmNlLTAxMjM0NTY3ODk=";
    const OWN_KEY: &str = "b3duLWtleS1vZi10aGUtZGV2aWNlLTAxMjM0NTY3ODlhYg==";
    let ([a, b], _dirs) = cluster(NODES).await;
    let group = dps_proto::model::service::EnrollmentGroup {
        attestation: common::symmetric_key(GROUP_KEY),
        ..Default::default()
    };
    b.services
        .engine
        .put_group(chrono::Utc::now(), "fleet", group, None)
        .await
        .unwrap();
    let request = |key: &str| dps_core::DeviceRequest {
        id_scope: b.services.identity.id_scope.clone(),
        registration_id: "dev-7".into(),
        credential: dps_core::Credential::Sas(common::dps_sas(&b, "dev-7", key)),
        api_version: None,
        source: None,
        transport: Default::default(),
    };
    let body = dps_proto::model::device::DeviceRegistration::default();
    let derived = dps_proto::keys::derive_device_key(GROUP_KEY, "dev-7").unwrap();
    // Through the group, on B: B now knows dev-7 has no individual enrollment.
    b.services
        .engine
        .register(chrono::Utc::now(), &request(&derived), &body)
        .await
        .unwrap();
    b.services
        .engine
        .register(chrono::Utc::now(), &request(&derived), &body)
        .await
        .unwrap();

    let own = dps_proto::model::service::IndividualEnrollment {
        attestation: common::symmetric_key(OWN_KEY),
        ..Default::default()
    };
    a.services
        .engine
        .put_enrollment(chrono::Utc::now(), "dev-7", own, None)
        .await
        .unwrap();
    let mut refused = false;
    for _ in 0..50 {
        match b
            .services
            .engine
            .register(chrono::Utc::now(), &request(&derived), &body)
            .await
        {
            Err(e) => {
                assert_eq!(e.code(), dps_proto::codes::UNAUTHORIZED, "{e}");
                refused = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(refused, "B heard of the individual enrollment within 5 s");
    b.services
        .engine
        .register(chrono::Utc::now(), &request(OWN_KEY), &body)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_through_one_node_is_read_and_reported_through_another() {
    use serde_json::json;
    const NODES: [&str; 2] = ["127.0.38.75", "127.0.38.76"];
    let ([a, b], dirs) = cluster(NODES).await;
    common::hub_device(&a, "up-1").await;
    let hub_host = a.services.identity.hub.host_name.clone();
    let expiry = chrono::Utc::now().timestamp() as u64 + 600;
    let token = dps_proto::sas::build_token(&format!("{hub_host}/devices/up-1"), common::KEY, expiry, None).unwrap();
    let started = common::https(
        &a,
        "POST",
        "/devices/up-1/files?api-version=2021-04-12",
        Some(&token),
        Some(&json!({"blobName": "logs/today.txt"})),
    )
    .await;
    assert_eq!(started.status, 200, "{:?}", started.body);
    let (blob, sas) = (
        started.body["blobName"].as_str().unwrap().to_string(),
        started.body["sasToken"].as_str().unwrap().to_string(),
    );
    let host = started.body["hostName"].as_str().unwrap().to_string();
    // The device's requests to the blob endpoint land on either node, as behind a balancer.
    async fn put(node: &dps_server::RunningServer, host: &str, path: String, body: &[u8]) {
        let headers = [("host", host), ("x-ms-version", "2020-10-02")];
        let (status, _, body) =
            common::https_raw(node, common::trusting_local_ca(node), "PUT", &path, &headers, body).await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    }
    let blob_path = |query: String| format!("/{}/{blob}{query}", dps_proto::rest::FILE_UPLOAD_CONTAINER);
    put(
        &a,
        &host,
        blob_path(format!("{sas}&comp=block&blockid=AAAA")),
        b"hello ",
    )
    .await;
    put(&b, &host, blob_path(format!("{sas}&comp=block&blockid=AAAB")), b"world").await;
    let list =
        br#"<?xml version="1.0" encoding="utf-8"?><BlockList><Latest>AAAA</Latest><Latest>AAAB</Latest></BlockList>"#;
    put(&a, &host, blob_path(format!("?comp=blocklist&{}", &sas[1..])), list).await;
    // Read back through the other node, with the device's SAS and as the service.
    let path = blob_path(sas.clone());
    let (status, _, bytes) = common::https_raw(
        &b,
        common::trusting_local_ca(&b),
        "GET",
        &path,
        &[("host", host.as_str())],
        &[],
    )
    .await;
    assert_eq!((status, bytes.as_slice()), (200, &b"hello world"[..]));
    let (status, files) = common::hub_rest(&b, "GET", "/files", None).await;
    assert_eq!(status, 200, "{files}");
    assert_eq!(files["value"][0]["name"], "up-1/logs/today.txt");
    assert_eq!(files["value"][0]["size"], 11);
    // Reported through the other node: the notification carries the blob's size.
    let reported = common::https(
        &b,
        "POST",
        "/devices/up-1/files/notifications?api-version=2021-04-12",
        Some(&token),
        Some(&json!({"correlationId": started.body["correlationId"], "isSuccess": true, "statusCode": 200, "statusDescription": "done"})),
    )
    .await;
    assert_eq!(reported.status, 204, "{:?}", reported.body);
    // Nothing of the blob is on either node's disk.
    for dir in &dirs {
        let on_disk = walk(dir.path());
        assert!(
            !on_disk
                .iter()
                .any(|p| p.ends_with("today.txt") || p.contains("/.blocks/")),
            "{on_disk:?}"
        );
    }
}

/// Every file under `dir`, as paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_export_job_made_through_one_node_is_seen_through_another_and_its_blobs_shared() {
    use serde_json::json;
    use std::time::Duration;
    const NODES: [&str; 2] = ["127.0.38.77", "127.0.38.78"];
    let ([a, b], _dirs) = cluster(NODES).await;
    for id in ["ie-1", "ie-2"] {
        common::hub_device(&a, id).await;
    }
    let host = a.services.identity.hub.host_name.clone();
    let job = |node: &'static str, body: serde_json::Value| {
        let node = if node == "a" { &a } else { &b };
        async move {
            let (status, job) = common::hub_rest(node, "POST", "/jobs/create", Some(&body)).await;
            assert_eq!(status, 200, "{job}");
            job["jobId"].as_str().unwrap().to_string()
        }
    };
    // Polled through the node that did not create it, until it ends.
    let finished = |node: &'static str, id: String| {
        let node = if node == "a" { &a } else { &b };
        async move {
            for _ in 0..100 {
                let (status, job) = common::hub_rest(node, "GET", &format!("/jobs/{id}"), None).await;
                assert_eq!(status, 200, "{job}");
                if !dps_hub::import_export_is_active(job["status"].as_str().unwrap()) {
                    return job;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("job {id} did not end");
        }
    };
    let export = job(
        "a",
        json!({"type": "export", "outputBlobContainerUri": format!("https://{host}/exports"), "excludeKeysInExport": false}),
    )
    .await;
    // One at a time, across nodes.
    let (status, busy) = common::hub_rest(
        &b,
        "POST",
        "/jobs/create",
        Some(&json!({"type": "export", "outputBlobContainerUri": format!("https://{host}/other")})),
    )
    .await;
    if status != 200 {
        assert_eq!(
            busy["ErrorCode"].as_str().or(busy["errorCode"].as_str()),
            Some("TooManyActiveJobs"),
            "{busy}"
        );
    } else {
        // The first ended before the second arrived; let it end too.
        finished("a", busy["jobId"].as_str().unwrap().to_string()).await;
    }
    let done = finished("b", export.clone()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);

    // The export's devices.txt, written by A into the database, is imported through B: the
    // devices are updated (disabled) from it.
    let hub = common::hub(&a);
    let mut exported = String::new();
    let blobs = a.services.hubs.first().blobs.clone().unwrap();
    let (props, reader) = blobs.open_blob("exports", "devices.txt").await.unwrap().unwrap();
    for piece in futures_util::TryStreamExt::try_collect::<Vec<_>>(reader.into_stream(0, props.size))
        .await
        .unwrap()
    {
        exported.push_str(std::str::from_utf8(&piece).unwrap());
    }
    assert_eq!(exported.lines().count(), 2, "{exported}");
    let disabled: String = exported
        .lines()
        .map(|l| {
            let mut device: serde_json::Value = serde_json::from_str(l).unwrap();
            device["status"] = json!("disabled");
            device["importMode"] = json!("update");
            format!("{device}\r\n")
        })
        .collect();
    let mut write = blobs.begin().await.unwrap();
    write.write(disabled.as_bytes()).await.unwrap();
    blobs.put_blob(write, "imports", "devices.txt", false).await.unwrap();
    let import = job(
        "b",
        json!({"type": "import", "inputBlobContainerUri": format!("https://{host}/imports"), "outputBlobContainerUri": format!("https://{host}/results")}),
    )
    .await;
    let done = finished("a", import.clone()).await;
    assert_eq!(done["status"], "completed", "{done}");
    for id in ["ie-1", "ie-2"] {
        let device = hub.get_device(id).await.unwrap();
        assert_eq!(device.status.as_deref(), Some("disabled"), "{id}");
    }
    // Both jobs are listed through either node.
    for node in [&a, &b] {
        let (status, jobs) = common::hub_rest(node, "GET", "/jobs", None).await;
        assert_eq!(status, 200, "{jobs}");
        let ids: Vec<&str> = jobs
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["jobId"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&export.as_str()) && ids.contains(&import.as_str()),
            "{ids:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_divide_the_service_wide_quotas_among_them() {
    use std::time::Duration;
    const NODES: [&str; 2] = ["127.0.38.79", "127.0.38.80"];
    let ([a, b], _dirs) = cluster_with(NODES, |c| c.limits.registrations_per_second = 10).await;
    // How many registrations a node admits in one instant (a full bucket), an hour ahead so
    // that each probe finds the bucket full again.
    let admitted = |node: &dps_server::RunningServer, hour: i64| {
        let at = chrono::Utc::now() + chrono::Duration::hours(hour);
        let quotas = node.services.engine.quotas();
        (0..100).take_while(|_| quotas.registration(at).is_ok()).count()
    };
    let mut shares = (0, 0);
    for hour in 1..=40 {
        shares = (admitted(&a, hour), admitted(&b, hour));
        if shares == (5, 5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        shares,
        (5, 5),
        "each of two nodes takes half of 10 registrations a second"
    );
    // One node left: after its heartbeat has not been heard for 15 s, the other takes it all.
    b.shutdown().await;
    for hour in 41..=120 {
        if admitted(&a, hour) == 10 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the remaining node did not take the whole quota back");
}

/// A policy created, re-keyed and deleted through one node is in force on the other at once
/// (the shared identity is written in one transaction and every node is told), and mirrored
/// into each node's data directory for the client commands beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_changed_through_one_node_is_in_force_on_another() {
    use dps_client::{ClientError, RestClient, ServiceClient};
    use dps_proto::connection_string::ConnectionString;
    use dps_proto::model::service::{AuthorizationRule, PolicyKeyType};
    use std::time::Duration;
    const NODES: [&str; 2] = ["127.0.39.21", "127.0.39.22"];
    let ([a, b], _dirs) = cluster(NODES).await;
    let client = |node: &dps_server::RunningServer, name: &str, key: &str| {
        let cs = ConnectionString::service(&node.https_addr.ip().to_string(), name, key);
        let ca = std::fs::read_to_string(node.services.config.data_dir.join("ca.pem")).unwrap();
        ServiceClient::new(RestClient::new(&cs, node.https_addr.port(), &ca).unwrap())
    };
    let owner = a.services.identity.owner_policy().unwrap().clone();
    let through_a = client(&a, &owner.key_name, &owner.primary_key);
    let made = through_a
        .policies()
        .put(
            "reader",
            &AuthorizationRule {
                rights: Some("EnrollmentRead".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let key = made.primary_key.clone().unwrap();
    // B hears of it: the reader's token is accepted there within moments.
    let on_b = client(&b, "reader", &key);
    let mut accepted = false;
    for _ in 0..50 {
        if on_b.query_enrollments(None).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "B put the policy made through A in force within 5 s");
    let mirrored = std::fs::read_to_string(b.services.config.data_dir.join("dps.json")).unwrap();
    assert!(mirrored.contains(&key), "B's data directory holds the new policy");

    // A fresh primary key through B: the old key is refused through A.
    let renewed = client(&b, &owner.key_name, &owner.primary_key)
        .policies()
        .regenerate_key("reader", PolicyKeyType::Primary)
        .await
        .unwrap();
    assert_ne!(renewed.primary_key.as_deref(), Some(key.as_str()));
    let old_on_a = client(&a, "reader", &key);
    let mut refused = false;
    for _ in 0..50 {
        match old_on_a.query_enrollments(None).await {
            Err(ClientError::Service { status: 401, .. }) => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(refused, "A retired the old key within 5 s");
    client(&a, "reader", renewed.primary_key.as_deref().unwrap())
        .query_enrollments(None)
        .await
        .unwrap();

    // One audit trail: the changes made through each node, read through either.
    let changes = a
        .services
        .audit
        .query(
            &dps_core::audit::AuditFilter {
                kind: Some(dps_core::audit::AuditKind::Change),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    let operations: Vec<_> = changes.iter().filter_map(|c| c.operation.as_deref()).collect();
    assert_eq!(
        operations,
        ["PUT /keys/reader", "POST /keys/reader/regenerateKey"],
        "{changes:?}"
    );
}

/// A portal sign-in link opens once for the whole cluster: spent through one node, it is refused
/// through every other (and through the first again), since the nodes share the spent links in
/// the database rather than each keeping its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_sign_in_link_opens_once_across_the_nodes() {
    const NODES: [&str; 2] = ["127.0.39.33", "127.0.39.34"];
    let ([a, b], _dirs) = cluster(NODES).await;
    assert_eq!(a.services.identity.portal_key, b.services.identity.portal_key);
    let now = chrono::Utc::now().timestamp() as u64;
    let link = dps_server::portal::sign_in_link(&a.services.identity.portal_key, "https://x", now);
    let path = link.strip_prefix("https://x").unwrap();
    async fn open(node: &dps_server::RunningServer, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        common::https_raw(node, common::trusting_local_ca(node), "GET", path, &[], &[]).await
    }

    let (status, headers, _) = open(&b, path).await;
    assert_eq!(status, 303, "the first opening signs in");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.starts_with("dps_portal=")),
        "{headers:?}"
    );
    for node in [&a, &b] {
        let (status, _, body) = open(node, path).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("used already"));
    }
    // Another link still opens, through the other node.
    let other = dps_server::portal::sign_in_link(&a.services.identity.portal_key, "https://x", now);
    let (status, _, _) = open(&a, other.strip_prefix("https://x").unwrap()).await;
    assert_eq!(status, 303);
}
