//! The DPS store on PostgreSQL: the same conformance suite as SQLite, schema creation by several
//! nodes at once, group commit under concurrency, and two nodes' writes meeting in one database.
//!
//! Needs a PostgreSQL server: `DPS_TEST_POSTGRES` is the URL of a database on it whose user may
//! create databases. `scripts/test.sh` starts a throwaway cluster and sets it
//! (`scripts/pg-test-cluster.sh`); each test here works in a fresh database of its own.

use std::sync::Arc;

use dps_core::{RegistrationRecord, Store, StoreError, WriteCondition};
use dps_proto::model::service::{
    AttestationType, IndividualEnrollment, RegistrationState, RegistrationStatus, SymmetricKeyAttestation,
};
use dps_store::{PgOpenError, PostgresStore};

async fn store() -> PostgresStore {
    PostgresStore::connect(&dps_store::postgres::testing::fresh_database().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_conformance() {
    dps_core::store::conformance::run_all(&store().await).await;
}

#[tokio::test(flavor = "current_thread")]
async fn postgres_store_passes_conformance_on_a_single_threaded_runtime() {
    dps_core::store::conformance::run_all(&store().await).await;
}

/// Nodes starting together against a new database: one creates the schema, the others find it
/// made, and all of them work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_share_one_schema() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let starting: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    let mut nodes = Vec::new();
    for node in starting {
        nodes.push(node.await.unwrap().unwrap());
    }
    nodes[0]
        .put_enrollment(&enrollment("made-on-0"), &WriteCondition::None)
        .await
        .unwrap();
    for node in &nodes {
        assert!(node.get_enrollment("MADE-ON-0").await.unwrap().is_some());
    }
}

/// The shared files (identity, CAs) are created once when nodes start at once: each node's
/// update sees what the ones before it committed, and a failed update writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_files_are_created_once_by_nodes_starting_at_once() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(Arc::new(PostgresStore::connect(&url).await.unwrap()));
    }
    let starting: Vec<_> = nodes
        .iter()
        .map(|node| {
            let node = node.clone();
            tokio::spawn(async move {
                node.update_files(|files| {
                    // Slow enough that unlocked nodes would all find nothing and all create.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    Ok::<_, ()>(match files.get("dps.json") {
                        Some(found) => (vec![], (false, found.clone())),
                        None => {
                            let made = uuid::Uuid::new_v4().to_string();
                            (vec![("dps.json".to_string(), made.clone())], (true, made))
                        }
                    })
                })
                .await
            })
        })
        .collect();
    let mut seen = Vec::new();
    for node in starting {
        seen.push(node.await.unwrap().unwrap().unwrap());
    }
    assert_eq!(seen.iter().filter(|(created, _)| *created).count(), 1, "{seen:?}");
    assert!(seen.iter().all(|(_, value)| *value == seen[0].1), "{seen:?}");

    let failed = nodes[1]
        .update_files(|_| Err::<(Vec<(String, String)>, ()), _>("refused"))
        .await
        .unwrap();
    assert_eq!(failed, Err("refused"));
    let kept = nodes[2]
        .update_files(|files| Ok::<_, ()>((vec![], files)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept["dps.json"], seen[0].1);
}

/// Every node hears what any node notifies, once, and only when its transaction commits; a node
/// whose listening connection was lost listens again by itself and is told to resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_hear_each_others_notices_and_resync_after_a_lost_connection() {
    use dps_store::postgres::{BusEvent, NodeBus};
    use tokio::sync::broadcast::Receiver;
    async fn next(r: &mut Receiver<BusEvent>) -> BusEvent {
        tokio::time::timeout(std::time::Duration::from_secs(15), r.recv())
            .await
            .expect("an event within 15 s")
            .unwrap()
    }
    let notice = |s: &str| BusEvent::Notice(s.into());
    let url = dps_store::postgres::testing::fresh_database().await;
    let store = PostgresStore::connect(&url).await.unwrap();
    let (a, b) = (
        NodeBus::listen(&url).await.unwrap(),
        NodeBus::listen(&url).await.unwrap(),
    );
    let (mut heard_a, mut heard_b) = (a.subscribe(), b.subscribe());
    store.notify("device 1 dev-1").await.unwrap();
    assert_eq!(next(&mut heard_a).await, notice("device 1 dev-1"));
    assert_eq!(next(&mut heard_b).await, notice("device 1 dev-1"));
    assert!(store
        .notify(&"x".repeat(dps_store::postgres::MAX_NOTICE + 1))
        .await
        .is_err());

    let (mut raw, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let tx = raw.transaction().await.unwrap();
    tx.execute("SELECT pg_notify('dps', 'rolled back')", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = raw.transaction().await.unwrap();
    for _ in 0..2 {
        tx.execute("SELECT pg_notify('dps', 'committed')", &[]).await.unwrap();
    }
    tx.commit().await.unwrap();
    store.notify("last").await.unwrap();
    for heard in [&mut heard_a, &mut heard_b] {
        assert_eq!(next(heard).await, notice("committed"), "nothing of the rollback");
        assert_eq!(
            next(heard).await,
            notice("last"),
            "the same notice twice in a transaction is one"
        );
    }

    // PostgreSQL ends the listening sessions (as a restart or a failover does).
    raw.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'dps-bus' AND datname = current_database()",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next(&mut heard_a).await, BusEvent::Resync);
    assert_eq!(next(&mut heard_b).await, BusEvent::Resync);
    store.notify("after").await.unwrap();
    assert_eq!(next(&mut heard_a).await, notice("after"));
    assert_eq!(next(&mut heard_b).await, notice("after"));
}

/// A create-only write of the same enrollment on two nodes at once: exactly one wins, the other
/// is told it exists (the check and the insert cannot interleave across nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_creating_one_enrollment_one_wins() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let (a, b) = (
        PostgresStore::connect(&url).await.unwrap(),
        PostgresStore::connect(&url).await.unwrap(),
    );
    for round in 0..20 {
        let id = format!("race-{round}");
        let e = enrollment(&id);
        let (ra, rb) = tokio::join!(
            a.put_enrollment(&e, &WriteCondition::None),
            b.put_enrollment(&e, &WriteCondition::None)
        );
        let mut outcomes = [ra, rb];
        outcomes.sort_by_key(Result::is_ok);
        assert_eq!(outcomes, [Err(StoreError::AlreadyExists), Ok(())], "round {round}");
    }
}

/// Registrations committed at once share transactions, and every one is there afterwards, also
/// as another node reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_are_group_committed_and_all_durable() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let store = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let n = 400;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.commit_registration(&record(&format!("dev-{i}"))).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.commands, n);
    assert!(
        stats.transactions < n,
        "{n} concurrent commits took {} transactions: not grouped",
        stats.transactions
    );
    let other = PostgresStore::connect(&url).await.unwrap();
    for i in (0..n).step_by(37) {
        let r = other.get_registration(&format!("DEV-{i}")).await.unwrap();
        assert_eq!(r.unwrap().state.registration_id, format!("dev-{i}"));
    }
}

/// A write PostgreSQL refuses (a key with a NUL byte, which its text cannot hold) aborts the
/// transaction of its batch; the writer then retries the batch's writes one by one, so that one
/// fails alone and the writes queued with it are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_write_fails_alone_in_its_batch() {
    let store = Arc::new(store().await);
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let store = store.clone();
            let id = if i == 30 {
                "bad\0id".to_string()
            } else {
                format!("ok-{i}")
            };
            tokio::spawn(async move { (id.clone(), store.commit_registration(&record(&id)).await) })
        })
        .collect();
    for t in tasks {
        let (id, result) = t.await.unwrap();
        if id.contains('\0') {
            let err = result.unwrap_err();
            assert!(matches!(err, StoreError::Backend(_)), "{err}");
        } else {
            result.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert!(store.get_registration(&id).await.unwrap().is_some(), "{id}");
        }
    }
    let stats = store.stats();
    assert_eq!(stats.commands, 59, "every good write committed once");
}

/// A URL that is not one, and a server that is not there, fail the start with errors that say
/// which.
#[tokio::test]
async fn bad_urls_and_absent_servers_are_told_apart() {
    let err = PostgresStore::connect("postgres://dps@127.0.0.1:notaport/dps")
        .await
        .unwrap_err();
    assert!(matches!(err, PgOpenError::Url(_)), "{err}");
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PostgresStore::connect(&format!("postgres://dps@127.0.0.1:{port}/dps"))
        .await
        .unwrap_err();
    assert!(matches!(err, PgOpenError::Connect(_)), "{err}");
    assert!(err.to_string().contains("cannot connect to PostgreSQL"), "{err}");
}

fn enrollment(id: &str) -> IndividualEnrollment {
    IndividualEnrollment {
        registration_id: id.into(),
        attestation: dps_proto::model::service::AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some("cHJpbWFyeQ==".into()),
                secondary_key: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn record(id: &str) -> RegistrationRecord {
    RegistrationRecord {
        state: RegistrationState {
            registration_id: id.into(),
            status: RegistrationStatus::Assigned,
            assigned_hub: Some("hub.test".into()),
            device_id: Some(id.into()),
            ..Default::default()
        },
        enrollment_group_id: None,
        attestation: AttestationType::SymmetricKey,
        operation_id: None,
        reprovision_requested: false,
    }
}

/// The embedded hubs' stores on PostgreSQL: each hub passes the hub store conformance suite
/// (hubs 1 and 2, one after the other: the suite wants a fresh store), and two hubs of one
/// database see only their own rows (hubs 3 and 4), as on SQLite's shared `hub.db`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hub_stores_pass_conformance_and_see_only_their_own_rows() {
    let db = dps_store::PostgresHubDatabase::connect(&dps_store::postgres::testing::fresh_database().await)
        .await
        .unwrap();
    dps_hub::store::conformance::run_all(&db.hub(1)).await;
    dps_hub::store::conformance::run_all(&db.hub(2)).await;
    dps_hub::store::conformance::hubs_are_isolated(&db.hub(3), &db.hub(4)).await;
    assert!(db.stats().transactions > 0);
}

/// Two nodes serving one hub on PostgreSQL (decision 0031): a registry write on one sends a
/// notice naming the record when it commits; the other node, handed it, reads the record again
/// instead of serving the one it cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_write_on_one_node_reaches_the_other_through_its_notice() {
    use dps_hub::PeerChange;
    use dps_store::postgres::{BusEvent, HubNotice, NodeBus, Notice};
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((db_a, a), (db_b, b)) = (hub_node(&url).await, hub_node(&url).await);
    assert_ne!(db_a.node(), db_b.node());
    let bus = NodeBus::listen(&url).await.unwrap();
    let mut heard = bus.subscribe();

    a.put_device(hub_device("Dev-1"), None).await.unwrap();
    assert!(
        b.get_twin("dev-1").await.unwrap().properties.is_some(),
        "node B holds it now"
    );
    a.patch_twin("dev-1", desired(serde_json::json!({"x": 1})), None)
        .await
        .unwrap();
    let desired_x = |t: dps_proto::model::hub::Twin| t.properties.unwrap().desired.unwrap().get("x").cloned();
    assert_eq!(
        desired_x(b.get_twin("dev-1").await.unwrap()),
        None,
        "node B serves what it cached"
    );

    // The two writes' notices, in commit order, each naming node A and the record.
    for _ in 0..2 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv())
            .await
            .unwrap()
            .unwrap();
        let BusEvent::Notice(payload) = event else {
            panic!("{event:?}")
        };
        let notice = HubNotice::parse(&payload).unwrap();
        assert_eq!((notice.hub, notice.node), (1, db_a.node()));
        let Notice::Change(change) = notice.what else {
            panic!("{notice:?}")
        };
        assert_eq!(change, PeerChange::Record { key: "dev-1".into() });
        b.peer_changed(change).await;
    }
    assert_eq!(desired_x(b.get_twin("dev-1").await.unwrap()), Some(1.into()));
    assert_eq!(HubNotice::parse("something else"), None);
}

/// A node serving hub 1 of the database at `url`: its hub database and the hub on it.
async fn hub_node(url: &str) -> (Arc<dps_store::PostgresHubDatabase>, dps_hub::Hub) {
    let db = dps_store::PostgresHubDatabase::connect(url).await.unwrap();
    let hub = dps_hub::Hub::open_with_store(
        dps_hub::HubConfig::in_memory("hub.test"),
        Arc::new(db.hub(1)),
        Arc::new(dps_core::SystemClock),
    )
    .await
    .unwrap();
    (db, hub)
}

fn hub_device(id: &str) -> dps_proto::model::hub::Device {
    serde_json::from_value(serde_json::json!({ "deviceId": id })).unwrap()
}

fn desired(v: serde_json::Value) -> dps_proto::model::hub::Twin {
    serde_json::from_value(serde_json::json!({"properties": {"desired": v}})).unwrap()
}

/// Two nodes changing one twin, the second without having heard of the first's change: neither
/// change is lost. A write starts from the stored record, and a write whose record another node
/// replaced after it was read is refused whole (decision 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_two_nodes_never_lose_each_other() {
    use dps_hub::store::{HubStore, HubStoreError};
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((_, a), (db_b, b)) = (hub_node(&url).await, hub_node(&url).await);
    a.put_device(hub_device("dev-1"), None).await.unwrap();
    b.get_twin("dev-1").await.unwrap();
    a.patch_twin("dev-1", desired(serde_json::json!({"x": 1})), None)
        .await
        .unwrap();
    let twin = b
        .patch_twin("dev-1", desired(serde_json::json!({"y": 2})), None)
        .await
        .unwrap();
    let x_and_y = |t: dps_proto::model::hub::Twin| {
        let d = t.properties.unwrap().desired.unwrap();
        (d.get("x").cloned(), d.get("y").cloned())
    };
    let both = (Some(1.into()), Some(2.into()));
    assert_eq!(x_and_y(twin), both);
    // Node A, once it hears of B's write, serves both too.
    a.peer_changed(dps_hub::PeerChange::Record { key: "dev-1".into() })
        .await;
    assert_eq!(x_and_y(a.get_twin("dev-1").await.unwrap()), both);

    let store = db_b.hub(1);
    assert!(store.shared());
    let read = store.get_device("dev-1").await.unwrap().unwrap();
    a.patch_twin("dev-1", desired(serde_json::json!({"z": 3})), None)
        .await
        .unwrap();
    let conflict = HubStoreError::Conflict { key: "dev-1".into() };
    let (stale, absent) = tokio::join!(
        store.put_device_if(&read, Some(&read)),
        store.put_device_if(&read, None)
    );
    assert_eq!(stale.unwrap_err(), conflict);
    assert_eq!(absent.unwrap_err(), conflict);
    let now = store.get_device("dev-1").await.unwrap().unwrap();
    assert_ne!(now.etags(), read.etags(), "nothing written");
    store.put_device_if(&now, Some(&now)).await.unwrap();
    let other = dps_hub::store::device_key("dev-2");
    a.put_device(hub_device("dev-2"), None).await.unwrap();
    assert!(store.get_device(&other).await.unwrap().is_some());
}

const DEVICE_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A node of a cluster on the database at `url` serving hub 1: its hub, reaching the other nodes
/// through PostgreSQL and hearing them (as `dps serve` sets it up), and what keeps it listening.
async fn cluster_node(url: &str) -> (dps_hub::Hub, dps_store::postgres::NodeBus) {
    let (db, hub) = hub_node(url).await;
    hub.set_peers(Arc::new(db.hub(1)));
    let bus = dps_store::postgres::NodeBus::listen(url).await.unwrap();
    tokio::spawn(db.hear_other_nodes(bus.subscribe(), vec![(1, hub.clone())]));
    (hub, bus)
}

/// Two nodes of a cluster on `url` ([`cluster_node`]), and a device with a symmetric key
/// ([`DEVICE_KEY`]) created through the first.
async fn two_nodes_with_device(
    url: &str,
    device_id: &str,
) -> (
    (dps_hub::Hub, dps_store::postgres::NodeBus),
    (dps_hub::Hub, dps_store::postgres::NodeBus),
) {
    let (a, b) = (cluster_node(url).await, cluster_node(url).await);
    let device = serde_json::json!({
        "deviceId": device_id,
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY}}
    });
    a.0.put_device(serde_json::from_value(device).unwrap(), None)
        .await
        .unwrap();
    (a, b)
}

async fn device_login(hub: &dps_hub::Hub, device: &str) -> dps_hub::DeviceIdentity {
    let now = chrono::Utc::now().timestamp() as u64;
    let user = dps_proto::hub_mqtt::HubUsername::parse(&format!("hub.test/{device}/?api-version=2021-04-12")).unwrap();
    let token =
        dps_proto::sas::build_token(&format!("hub.test/devices/{device}"), DEVICE_KEY, now + 3600, None).unwrap();
    hub.authenticate(now, &user, Some(token.as_bytes()), None)
        .await
        .unwrap()
}

/// A direct method invoked through one node reaches the device connected to another and comes
/// back with its answer; a device connected nowhere is offline at once (404103 on the API);
/// the device connecting to another node ends its connection to the first, as IoT Hub allows
/// one connection per device (decision 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_method_reaches_a_device_connected_to_another_node() {
    use dps_hub::{MethodError, OutboundKind};
    use std::time::Duration;
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((a, _bus_a), (b, _bus_b)) = two_nodes_with_device(&url, "dev-1").await;
    let offline = a
        .invoke_method("dev-1", "reboot", serde_json::json!({}), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(offline, MethodError::DeviceNotOnline { .. }), "{offline}");

    let (session, mut rx) = b.open_session(device_login(&b, "dev-1").await).await.unwrap();
    assert_eq!(session.subscribe("$iothub/methods/POST/#", 0), Some(0));
    let device = tokio::spawn(async move {
        // The device answers each call with its payload; returns once its session ended.
        while let Some(out) = rx.recv().await {
            if let OutboundKind::MethodRequest { rid, .. } = out.kind {
                let topic = format!("$iothub/methods/res/201/?$rid={rid}");
                session
                    .handle_publish(chrono::Utc::now(), &topic, &out.payload)
                    .await
                    .unwrap();
            }
        }
    });
    let answer = a
        .invoke_method(
            "dev-1",
            "reboot",
            serde_json::json!({"delay": 7}),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 201);
    assert_eq!(answer.payload, serde_json::json!({"delay": 7}));

    // The device connects to node A: its connection to node B ends.
    let (_here, _rx) = a.open_session(device_login(&a, "dev-1").await).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), device)
        .await
        .expect("node B ends the older connection")
        .unwrap();
    // A call through node B now goes to node A (where the device has not subscribed to
    // methods: offline for methods, as over one node).
    let not_subscribed = b
        .invoke_method("dev-1", "reboot", serde_json::json!({}), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(not_subscribed, MethodError::DeviceNotOnline { .. }),
        "{not_subscribed}"
    );
}

/// Cloud-to-device messages sent through one node reach the device connected to another, and
/// those sent while it was connected nowhere, through either node, wait in the database for
/// whichever node it connects to next; a settled message is gone for every node (decision
/// 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_to_device_messages_reach_the_device_whatever_node_it_is_connected_to() {
    use dps_hub::store::{device_key, HubStore};
    use dps_hub::{C2dOutcome, Outbound, OutboundKind};
    use std::time::Duration;
    async fn next(rx: &mut tokio::sync::mpsc::Receiver<Outbound>) -> (String, String) {
        let out = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("the session is open");
        let OutboundKind::C2d { lock_token, .. } = out.kind else {
            panic!("{out:?}")
        };
        (String::from_utf8(out.payload.to_vec()).unwrap(), lock_token)
    }
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((a, _bus_a), (b, _bus_b)) = two_nodes_with_device(&url, "dev-1").await;
    let c2d = "devices/dev-1/messages/devicebound/#";

    let (session, mut rx) = b.open_session(device_login(&b, "dev-1").await).await.unwrap();
    assert_eq!(session.subscribe(c2d, 1), Some(1));
    a.send_c2d("dev-1", "through A", Vec::new()).await.unwrap();
    let (body, lock) = next(&mut rx).await;
    assert_eq!(body, "through A");
    assert!(session.settle_c2d(&lock, C2dOutcome::Complete));
    drop(session);

    // Connected nowhere: one message through each node, both kept, in the order sent.
    a.send_c2d("dev-1", "first", Vec::new()).await.unwrap();
    b.send_c2d("dev-1", "second", Vec::new()).await.unwrap();
    let (session, mut rx) = a.open_session(device_login(&a, "dev-1").await).await.unwrap();
    assert_eq!(session.subscribe(c2d, 1), Some(1));
    let (first, lock) = next(&mut rx).await;
    assert_eq!(first, "first");
    assert!(session.settle_c2d(&lock, C2dOutcome::Complete));
    let (second, lock) = next(&mut rx).await;
    assert_eq!(second, "second");
    assert!(session.settle_c2d(&lock, C2dOutcome::Complete));

    // A device without a session (HTTPS) receives through any node what either queued, and
    // settles through any node: the lock is the database's.
    drop(session);
    // The completions above are written in the background: first wait until the stored queue
    // is empty (a read before then may hand a completed message out again, as at-least-once
    // delivery allows).
    let identity = device_login(&a, "dev-1").await;
    for _ in 0..50 {
        match a.receive_c2d(&identity).await.unwrap() {
            None => break,
            Some(early) => {
                a.settle_polled_c2d(&identity, &early.lock_token, C2dOutcome::Abandon)
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    b.send_c2d("dev-1", "polled", Vec::new()).await.unwrap();
    let polled = a.receive_c2d(&identity).await.unwrap().expect("a message");
    assert_eq!(&polled.record.body[..], b"polled");
    assert_eq!(b.receive_c2d(&identity).await.unwrap(), None, "locked through A");
    assert!(b
        .settle_polled_c2d(&identity, &polled.lock_token, C2dOutcome::Abandon)
        .await
        .unwrap());
    let again = b.receive_c2d(&identity).await.unwrap().expect("abandoned: back");
    assert_eq!((again.record.seq, again.record.delivery_count), (polled.record.seq, 1));
    assert!(
        !a.settle_polled_c2d(&identity, &polled.lock_token, C2dOutcome::Complete)
            .await
            .unwrap(),
        "the first lock settles nothing more"
    );
    assert!(a
        .settle_polled_c2d(&identity, &again.lock_token, C2dOutcome::Complete)
        .await
        .unwrap());
    assert_eq!(a.receive_c2d(&identity).await.unwrap(), None, "settled: not taken back");
    assert_eq!(b.receive_c2d(&identity).await.unwrap(), None);

    // Settled: gone from the database, for every node.
    let (db, _) = hub_node(&url).await;
    let store = db.hub(1);
    let drained = || async {
        for _ in 0..50 {
            if store.device_c2d(&device_key("dev-1")).await.unwrap().is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(drained().await, "settled messages are still stored");

    // A message for a device connected nowhere expires in the database: the sweep of the node
    // that runs the housekeeping (one of the two, once elected) dead-letters it, with the
    // feedback asked for.
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
    let properties = vec![
        ("$.exp".to_string(), soon),
        ("iothub-ack".to_string(), "full".to_string()),
    ];
    b.send_c2d("dev-1", "too late", properties).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut feedback = None;
    for _ in 0..100 {
        a.sweep();
        b.sweep();
        // Whichever node the service reads through: the store's rows are the queue.
        feedback = a.receive_feedback(10).await.unwrap();
        if feedback.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained().await, "the expired message is still stored");
    let feedback = feedback.expect("feedback within 10 s");
    assert_eq!(feedback.records.len(), 1);
    assert_eq!(feedback.records[0].status, dps_hub::FeedbackStatus::Expired);
}

/// One node at a time runs the housekeeping every node would otherwise repeat (dead-lettering
/// expired stored messages, trimming telemetry); when it goes, another takes over (decision
/// 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_at_a_time_runs_the_housekeeping() {
    use std::time::Duration;
    let url = dps_store::postgres::testing::fresh_database().await;
    let a = dps_store::PostgresHubDatabase::connect(&url).await.unwrap();
    let b = dps_store::PostgresHubDatabase::connect(&url).await.unwrap();
    let mut one = None;
    for _ in 0..100 {
        let (x, y) = (a.runs_housekeeping(), b.runs_housekeeping());
        assert!(!(x && y), "two nodes run the housekeeping");
        if x != y {
            one = Some(x);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a_leads = one.expect("one node runs the housekeeping within 10 s");
    // Both have tried by now: still the same one, alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((a.runs_housekeeping(), b.runs_housekeeping()), (a_leads, !a_leads));
    let other = if a_leads {
        drop(a);
        b
    } else {
        drop(b);
        a
    };
    for _ in 0..150 {
        if other.runs_housekeeping() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no node took the housekeeping over within 15 s");
}

/// Telemetry through two nodes is numbered once among both (decision 0031): hub-wide sequence
/// numbers 1, 2, … and each partition's from 0, without a number twice or a gap; each node reads
/// the other's messages once it heard of them, and its readers are woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_through_two_nodes_is_numbered_once_among_both() {
    use std::time::Duration;
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((a, _bus_a), (b, _bus_b)) = two_nodes_with_device(&url, "dev-1").await;
    let (on_a, on_b) = (device_login(&a, "dev-1").await, device_login(&b, "dev-1").await);
    // Sent, and heard of by both nodes, before anyone watched: not in the live feed.
    let (mut a_arrivals, mut b_arrivals) = (a.telemetry_arrivals(), b.telemetry_arrivals());
    a.send_telemetry(&on_a, Vec::new(), b"before").await.unwrap();
    // Node A too hears of its own message through the database, after the send returned.
    for arrivals in [&mut a_arrivals, &mut b_arrivals] {
        tokio::time::timeout(Duration::from_secs(5), arrivals.changed())
            .await
            .expect("both nodes hear of it")
            .unwrap();
    }
    b_arrivals.borrow_and_update();
    let mut live = [a.subscribe_events(), b.subscribe_events()];
    for i in 0..3 {
        a.send_telemetry(&on_a, Vec::new(), format!("a{i}").as_bytes())
            .await
            .unwrap();
        b.send_telemetry(&on_b, Vec::new(), format!("b{i}").as_bytes())
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), b_arrivals.changed())
        .await
        .expect("node B's readers are woken")
        .unwrap();
    for node in [&a, &b] {
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen = node.recent_events(None, None, 100).await;
            if seen.len() == 7 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let numbers: Vec<(u64, u64)> = seen.iter().map(|m| (m.sequence_number, m.partition_sequence)).collect();
        assert_eq!(
            numbers,
            (1..=7).map(|n| (n, n - 1)).collect::<Vec<_>>(),
            "one device, one partition"
        );
        let bodies: Vec<_> = seen.iter().map(|m| m.body_text().to_string()).collect();
        assert_eq!(bodies, ["before", "a0", "b0", "a1", "b1", "a2", "b2"]);
        let partition = seen[0].partition;
        let (read, next) = node.read_partition(partition, 0, 100).await.unwrap();
        assert_eq!((read.len(), next), (7, 7));
        let info = node.partition_info(partition).await.unwrap().unwrap();
        assert_eq!(info.last_sequence_number, Some(6));
    }
    // Each node's live feed carries both nodes' messages, once each, in number order.
    for feed in &mut live {
        let mut bodies = Vec::new();
        while bodies.len() < 6 {
            let msg = tokio::time::timeout(Duration::from_secs(5), feed.recv())
                .await
                .expect("the live feed within 5 s")
                .unwrap();
            bodies.push(msg.body_text().to_string());
        }
        assert_eq!(bodies, ["a0", "b0", "a1", "b1", "a2", "b2"]);
        assert!(feed.try_recv().is_err(), "nothing twice");
    }
}

/// Feedback made on one node is read once, through any node: a batch locked through one is not
/// handed out by the other; abandoned (through either) it is readable again and the other
/// node's receivers wake; completed it is gone (decision 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_read_once_through_any_node() {
    use dps_hub::{C2dOutcome, OutboundKind};
    use std::time::Duration;
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((a, _bus_a), (b, _bus_b)) = two_nodes_with_device(&url, "dev-1").await;
    let mut ready = a.feedback_signal();
    ready.borrow_and_update();

    let (session, mut rx) = b.open_session(device_login(&b, "dev-1").await).await.unwrap();
    assert_eq!(session.subscribe("devices/dev-1/messages/devicebound/#", 1), Some(1));
    let ack = vec![("iothub-ack".to_string(), "full".to_string())];
    b.send_c2d("dev-1", "ack me", ack).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the message within 5 s")
        .unwrap();
    let OutboundKind::C2d { lock_token, .. } = out.kind else {
        panic!("{out:?}")
    };
    assert!(session.settle_c2d(&lock_token, C2dOutcome::Complete));

    let within = |what: &'static str| move |_| panic!("{what} within 5 s");
    tokio::time::timeout(Duration::from_secs(5), ready.changed())
        .await
        .unwrap_or_else(within("node A hearing of B's feedback"))
        .unwrap();
    let batch = a
        .receive_feedback(10)
        .await
        .unwrap()
        .expect("feedback made on B, read through A");
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].status, dps_hub::FeedbackStatus::Success);
    assert!(b.receive_feedback(10).await.unwrap().is_none(), "locked through A");

    ready.borrow_and_update();
    assert!(
        b.abandon_feedback(&batch.lock_token).await.unwrap(),
        "any node settles any lock"
    );
    tokio::time::timeout(Duration::from_secs(5), ready.changed())
        .await
        .unwrap_or_else(within("node A hearing of the release"))
        .unwrap();
    let again = a.receive_feedback(10).await.unwrap().expect("readable again");
    assert_eq!(again.records, batch.records);
    assert!(
        !a.complete_feedback(&batch.lock_token).await.unwrap(),
        "the released lock holds nothing"
    );
    assert!(b.complete_feedback(&again.lock_token).await.unwrap());
    assert!(a.receive_feedback(10).await.unwrap().is_none());
    assert!(b.receive_feedback(10).await.unwrap().is_none());
}

/// The keys of the feedback `store` holds.
async fn stored_feedback(store: &dps_store::PostgresHubStore) -> Vec<u64> {
    use dps_hub::store::HubStore;
    store.load_feedback().await.unwrap().iter().map(|f| f.seq).collect()
}

/// The rows of a shared store's service-bound queues: locks are taken oldest first and never
/// twice, a lock that ran out holds nothing and the housekeeping frees its rows, unread records
/// past their time to live or over the bound are dropped (decision 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_bound_queue_rows_are_locked_released_and_bounded() {
    use dps_hub::store::{FeedbackRecord, FileNotification, HubStore, OutboxKind, QueueChange};
    use dps_hub::FeedbackStatus;
    let url = dps_store::postgres::testing::fresh_database().await;
    let (db, _) = hub_node(&url).await;
    let store = db.hub(1);
    let now = chrono::Utc::now();
    let secs = chrono::Duration::seconds;
    let feedback = |seq| FeedbackRecord {
        seq,
        original_message_id: format!("m{seq}"),
        device_id: "dev-1".into(),
        device_generation_id: "g".into(),
        status: FeedbackStatus::Success,
        enqueued_at: now,
    };
    let change = QueueChange {
        put_feedback: vec![feedback(11), feedback(12), feedback(13)],
        put_file_notifications: vec![FileNotification {
            seq: 14,
            device_id: "dev-1".into(),
            blob_uri: "https://hub.test/files/dev-1/a.txt".into(),
            blob_name: "dev-1/a.txt".into(),
            last_updated_time: now,
            blob_size_in_bytes: 1,
            enqueued_time_utc: now,
        }],
        ..QueueChange::default()
    };
    store.update_queues(&change).await.unwrap();
    let seqs = |docs: Vec<String>| {
        docs.iter()
            .map(|d| serde_json::from_str::<FeedbackRecord>(d).unwrap().seq)
            .collect::<Vec<_>>()
    };
    let fb = OutboxKind::Feedback;

    let first = store.lock_outbox(fb, "t1", 2, now, now + secs(1)).await.unwrap();
    assert_eq!(seqs(first), [11, 12]);
    let rest = store.lock_outbox(fb, "t2", 5, now, now + secs(60)).await.unwrap();
    assert_eq!(seqs(rest), [13]);
    assert!(store
        .lock_outbox(fb, "t3", 5, now, now + secs(60))
        .await
        .unwrap()
        .is_empty());
    // t1 ran out: it holds nothing, and the housekeeping frees its rows.
    assert!(!store.settle_outbox(fb, "t1", true, now + secs(2)).await.unwrap());
    assert!(
        store
            .tidy_outbox(fb, now + secs(2), now - secs(3600), 100)
            .await
            .unwrap(),
        "a lock ran out: records are readable again"
    );
    let again = store
        .lock_outbox(fb, "t4", 5, now + secs(2), now + secs(60))
        .await
        .unwrap();
    assert_eq!(seqs(again), [11, 12]);
    // Released, then bounded to the newest unlocked one; then past its time to live.
    assert!(store.settle_outbox(fb, "t4", false, now + secs(2)).await.unwrap());
    store.tidy_outbox(fb, now + secs(2), now - secs(3600), 1).await.unwrap();
    assert_eq!(stored_feedback(&store).await, [12, 13]);
    store.tidy_outbox(fb, now + secs(2), now + secs(1), 100).await.unwrap();
    assert_eq!(stored_feedback(&store).await, [13], "locked ones stay");
    assert!(store.settle_outbox(fb, "t2", true, now + secs(2)).await.unwrap());
    assert!(store.load_feedback().await.unwrap().is_empty());

    // File upload notifications: their own rows and their own time stamp.
    let files = OutboxKind::FileNotifications;
    let one = store.lock_outbox(files, "f1", 5, now, now + secs(60)).await.unwrap();
    assert_eq!(serde_json::from_str::<FileNotification>(&one[0]).unwrap().seq, 14);
    assert!(store.settle_outbox(files, "f1", false, now).await.unwrap());
    store.tidy_outbox(files, now, now + secs(1), 100).await.unwrap();
    assert!(store.load_file_notifications().await.unwrap().is_empty());
}

/// A job created through either node is answered by both and run once, by the node that runs
/// the housekeeping; a job cancelled through a node that does not run it stays cancelled
/// (decision 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_answered_by_every_node_and_run_by_one() {
    use dps_proto::model::hub::JobRequest;
    use std::time::Duration;
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((a, _bus_a), (b, _bus_b)) = two_nodes_with_device(&url, "dev-1").await;
    let twin_job = |start: Option<String>| JobRequest {
        kind: "scheduleUpdateTwin".into(),
        update_twin: Some(serde_json::json!({"etag": "*", "properties": {"desired": {"rate": 9}}})),
        query_condition: Some("deviceId = 'dev-1'".into()),
        start_time: start,
        ..Default::default()
    };
    a.create_job("now", twin_job(None)).await.unwrap();
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    b.create_job("later", twin_job(Some(later))).await.unwrap();
    assert!(matches!(
        b.create_job("now", twin_job(None)).await,
        Err(dps_hub::JobError::AlreadyExists { .. })
    ));

    let mut done = None;
    for _ in 0..150 {
        // The sweep is where a node that runs the housekeeping looks for jobs it missed.
        a.sweep();
        b.sweep();
        let job = b.get_job("now").await.unwrap();
        if job.status == "completed" {
            done = Some(job);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = done.expect("the job completes within 15 s");
    assert_eq!(done.device_job_statistics.unwrap().succeeded_count, 1, "{done:?}");
    assert_eq!(a.get_job("now").await.unwrap(), done, "both nodes answer the same");
    let desired = a.get_twin("dev-1").await.unwrap().properties.unwrap().desired.unwrap();
    assert_eq!(desired.get("rate"), Some(&serde_json::json!(9)));

    // Whichever node waits with it, a cancel through either node ends it for good.
    let cancelled = a.cancel_job("later").await.unwrap();
    assert_eq!(cancelled.status, "cancelled");
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.sweep();
    b.sweep();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in [&a, &b] {
        assert_eq!(node.get_job("later").await.unwrap().status, "cancelled");
        let listed = node.list_jobs(None, None).await.unwrap();
        assert_eq!(
            listed.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
            ["later", "now"]
        );
    }
}

/// A file upload started through one node is reported through another (decision 0031): once,
/// by its own device only, and a device's uploads in progress are counted across the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_upload_started_on_one_node_is_reported_through_another() {
    use dps_hub::{FileUploadError, MAX_ACTIVE_UPLOADS};
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((a, _bus_a), (b, _bus_b)) = two_nodes_with_device(&url, "dev-1").await;
    let other = serde_json::json!({
        "deviceId": "dev-2",
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": DEVICE_KEY, "secondaryKey": DEVICE_KEY}}
    });
    a.put_device(serde_json::from_value(other).unwrap(), None)
        .await
        .unwrap();
    for hub in [&a, &b] {
        hub.set_file_upload(dps_hub::FileUploadConfig {
            host: "blobs.test".into(),
            container: "uploads".into(),
            account: "hub".into(),
            key: b"storage key".to_vec(),
            notifications: true,
        });
    }
    let (on_a, on_b) = (device_login(&a, "dev-1").await, device_login(&b, "dev-1").await);
    let sas = a.create_file_upload(&on_a, "logs/today.txt").await.unwrap();
    assert_eq!(sas.blob_name, "dev-1/logs/today.txt");

    // Another device cannot report it, through either node; its own device can, once.
    let intruder = device_login(&b, "dev-2").await;
    let refused = b.finish_file_upload(&intruder, &sas.correlation_id).await.unwrap_err();
    assert!(
        matches!(refused, FileUploadError::UnknownCorrelationId { .. }),
        "{refused}"
    );
    let blob = b.finish_file_upload(&on_b, &sas.correlation_id).await.unwrap();
    assert_eq!(blob, "dev-1/logs/today.txt");
    let again = a.finish_file_upload(&on_a, &sas.correlation_id).await.unwrap_err();
    assert!(matches!(again, FileUploadError::UnknownCorrelationId { .. }), "{again}");

    // The limit counts the uploads started through both nodes.
    for i in 0..MAX_ACTIVE_UPLOADS {
        let (hub, id) = if i % 2 == 0 { (&a, &on_a) } else { (&b, &on_b) };
        hub.create_file_upload(id, &format!("f{i}")).await.unwrap();
    }
    for (hub, id) in [(&a, &on_a), (&b, &on_b)] {
        let over = hub.create_file_upload(id, "one-more").await.unwrap_err();
        assert!(matches!(over, FileUploadError::TooManyActive { .. }), "{over}");
    }
    // Other devices have their own count.
    b.create_file_upload(&intruder, "mine").await.unwrap();
}

/// Two nodes patching one twin at the same moment, many times over: a write that loses the race
/// to the other node's is made again from what that node wrote, so every patch succeeds and
/// none is lost (no 503 for an ordinary race; decision 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_twin_patches_through_two_nodes_all_succeed() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((_, a), (_, b)) = (hub_node(&url).await, hub_node(&url).await);
    a.put_device(hub_device("dev-1"), None).await.unwrap();
    const EACH: usize = 25;
    let patches = |hub: dps_hub::Hub, prefix: &'static str| async move {
        for i in 0..EACH {
            hub.patch_twin("dev-1", desired(serde_json::json!({format!("{prefix}{i}"): i})), None)
                .await
                .unwrap_or_else(|e| panic!("patch {prefix}{i}: {e}"));
        }
    };
    tokio::join!(patches(a.clone(), "a"), patches(b.clone(), "b"));
    // Read through a node that holds nothing yet: what the database holds.
    let (_, c) = hub_node(&url).await;
    let d = c.get_twin("dev-1").await.unwrap().properties.unwrap().desired.unwrap();
    for i in 0..EACH {
        assert_eq!(d.get(format!("a{i}").as_str()), Some(&i.into()), "{d:?}");
        assert_eq!(d.get(format!("b{i}").as_str()), Some(&i.into()), "{d:?}");
    }
}

/// Provisioning a device a node has not seen takes it to be new and inserts it without reading
/// it first; when another node had made it, the insert loses and the device is updated from
/// the stored record instead, as if read: not created again, its twin kept (decision 0031).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_a_device_another_node_made_updates_it() {
    use dps_core::hub::{DeviceAuth, DeviceProvisioning, HubRegistry, TwinPolicy};
    use dps_proto::model::service::DeviceCapabilities;
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((_, a), (_, b)) = (hub_node(&url).await, hub_node(&url).await);
    let provisioning = |operation: &str, key: &str| DeviceProvisioning {
        device_id: "dev-1".into(),
        auth: DeviceAuth::Sas {
            primary_key: key.into(),
            secondary_key: key.into(),
        },
        capabilities: DeviceCapabilities { iot_edge: false },
        initial_twin: None,
        twin_policy: TwinPolicy::Keep,
        operation_id: operation.into(),
        credential_policy: None,
    };
    let made = a
        .upsert_device("hub.test", &provisioning("op-1", DEVICE_KEY))
        .await
        .unwrap();
    assert!(made.created);
    a.patch_twin("dev-1", desired(serde_json::json!({"kept": true})), None)
        .await
        .unwrap();

    let other_key = "b3RoZXIta2V5LTAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg=";
    let again = b
        .upsert_device("hub.test", &provisioning("op-2", other_key))
        .await
        .unwrap();
    assert!(!again.created, "the device existed");
    let (_, c) = hub_node(&url).await;
    let device = c.get_device("dev-1").await.unwrap();
    let keys = device.authentication.unwrap().symmetric_key.unwrap();
    assert_eq!(keys.primary_key.as_deref(), Some(other_key));
    let twin = c.get_twin("dev-1").await.unwrap();
    assert_eq!(twin.properties.unwrap().desired.unwrap()["kept"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_export_jobs_run_one_at_a_time_across_nodes_and_are_cancelled_through_any() {
    use chrono::{Duration, Utc};
    use dps_hub::store::HubStore;
    use dps_proto::model::hub::JobProperties;
    let url = dps_store::postgres::testing::fresh_database().await;
    let a = dps_store::PostgresHubDatabase::connect(&url).await.unwrap().hub(1);
    let b = dps_store::PostgresHubDatabase::connect(&url).await.unwrap().hub(1);
    let job = |id: &str, status: &str| JobProperties {
        job_id: id.into(),
        kind: "export".into(),
        status: status.into(),
        ..Default::default()
    };
    let now = Utc::now();
    let stale_before = now - Duration::seconds(60);
    assert!(a
        .create_import_export_job(&job("j1", "enqueued"), now, stale_before)
        .await
        .unwrap());
    // One at a time, whichever node is asked.
    assert!(!b
        .create_import_export_job(&job("j2", "enqueued"), now, stale_before)
        .await
        .unwrap());
    // A runs it; B cancels it; A's next write is refused, and the cancellation stays.
    assert!(a.update_import_export_job(&job("j1", "running"), now).await.unwrap());
    assert!(b.update_import_export_job(&job("j1", "cancelled"), now).await.unwrap());
    assert!(!a.update_import_export_job(&job("j1", "completed"), now).await.unwrap());
    let stored = b.import_export_jobs().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].properties.status, "cancelled");
    // A job its node stopped writing blocks nothing once stale, and reads as failed.
    assert!(b
        .create_import_export_job(&job("j2", "running"), now, stale_before)
        .await
        .unwrap());
    let later = now + Duration::seconds(120);
    assert!(a
        .create_import_export_job(&job("j3", "enqueued"), later, later - Duration::seconds(60))
        .await
        .unwrap());
    let seen: Vec<_> = a
        .import_export_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.as_seen(later))
        .map(|j| (j.job_id, j.status))
        .collect();
    assert!(seen.contains(&("j2".into(), "failed".into())), "{seen:?}");
    assert!(seen.contains(&("j3".into(), "enqueued".into())), "{seen:?}");
    // At most MAX_KEPT_IMPORT_EXPORT_JOBS are kept, the oldest going first.
    for n in 0..dps_hub::MAX_KEPT_IMPORT_EXPORT_JOBS {
        let at = later + Duration::seconds(n as i64 + 1);
        assert!(b
            .create_import_export_job(&job(&format!("k{n}"), "completed"), at, at)
            .await
            .unwrap());
    }
    let kept = a.import_export_jobs().await.unwrap();
    assert_eq!(kept.len(), dps_hub::MAX_KEPT_IMPORT_EXPORT_JOBS);
    assert!(!kept.iter().any(|j| j.properties.job_id == "j1"));
}

/// Unconditional identity writes (`If-Match: *`) to one device, and to one of its modules,
/// through two nodes at once all succeed, the last one written standing, as on one IoT hub; a write with a stale etag is
/// still refused (412), and creating a device another node just created is still 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_identity_writes_through_two_nodes_all_succeed() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let ((_, a), (_, b)) = (hub_node(&url).await, hub_node(&url).await);
    let created = a.put_device(hub_device("dev-1"), None).await.unwrap();
    const EACH: usize = 20;
    let writes = |hub: dps_hub::Hub, reason: &'static str| async move {
        for i in 0..EACH {
            let mut device = hub_device("dev-1");
            device.status_reason = Some(format!("{reason}{i}"));
            hub.put_device(device, Some("*"))
                .await
                .unwrap_or_else(|e| panic!("write {reason}{i}: {e}"));
        }
    };
    tokio::join!(writes(a.clone(), "a"), writes(b.clone(), "b"));
    let stale = created.etag.clone();
    let refused = b.put_device(hub_device("dev-1"), stale.as_deref()).await.unwrap_err();
    assert!(
        matches!(refused, dps_hub::RegistryError::EtagMismatch { .. }),
        "{refused}"
    );
    let refused = b.put_device(hub_device("dev-1"), None).await.unwrap_err();
    assert!(
        matches!(refused, dps_hub::RegistryError::AlreadyExists { .. }),
        "{refused}"
    );
    // A module's identity likewise.
    let module = |managed: String| dps_proto::model::hub::Module {
        device_id: "dev-1".into(),
        module_id: "m".into(),
        managed_by: Some(managed),
        ..Default::default()
    };
    a.put_module(module("first".into()), None).await.unwrap();
    let module_writes = |hub: dps_hub::Hub, who: &'static str| async move {
        for i in 0..EACH {
            hub.put_module(module(format!("{who}{i}")), Some("*"))
                .await
                .unwrap_or_else(|e| panic!("module write {who}{i}: {e}"));
        }
    };
    tokio::join!(module_writes(a.clone(), "a"), module_writes(b.clone(), "b"));
    // Deleting through both at once: one deletes, the other finds nothing.
    let (x, y) = tokio::join!(a.delete_device("dev-1", Some("*")), b.delete_device("dev-1", Some("*")));
    assert!(x.is_ok() || y.is_ok(), "{x:?} {y:?}");
    for r in [x, y] {
        if let Err(e) = r {
            assert!(matches!(e, dps_hub::RegistryError::NotFound { .. }), "{e}");
        }
    }
}
