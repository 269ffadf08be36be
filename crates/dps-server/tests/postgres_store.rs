//! `dps serve --store postgres://…`: a node keeps its registrations and its embedded hub's
//! devices in PostgreSQL (nothing in SQLite files), and its identity, CAs and server
//! certificates too, finds them there after a restart on another machine, and a
//! second node on the same database is refused while the first serves it (issue 15, decision
//! 0030).
//!
//! Needs `DPS_TEST_POSTGRES` (a database URL whose user may create databases), which
//! `scripts/test.sh` sets from its throwaway cluster.

mod common;

const IP: &str = "127.0.38.51";
const SECOND: &str = "127.0.38.52";
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

    // A second node on the same database is refused while the first serves it.
    let other = tempfile::tempdir().unwrap();
    let mut c = dps_server::ServerConfig::defaults();
    c.data_dir = other.path().to_path_buf();
    c.hostnames = vec![SECOND.into()];
    c.bind = SECOND.parse().unwrap();
    c.store = Some(url.clone());
    let refused = dps_server::start(c).await.err().expect("a second node is refused");
    assert!(refused.to_string().contains("another dps node"), "{refused}");
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

    pg.halt();
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
    let state = common::register_through_engine(&s, "dev-1").await;
    assert_eq!(state.device_id.as_deref(), Some("dev-1"));
    s.shutdown().await;
}
