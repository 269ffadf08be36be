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
