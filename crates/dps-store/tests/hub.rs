//! The embedded hub on its SQLite store: the hub store conformance suite, durability across a
//! reopen, group commit under concurrency, and `hub.db` files written by earlier builds (the hub
//! kept this file itself before its store moved here).

#[path = "../../dps-hub/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;

use dps_core::hub::{HubRegistry, TwinPolicy};
use dps_core::SystemClock;
use dps_hub::store::HubStore;
use dps_hub::{Hub, HubConfig};
use dps_store::sqlite::HUB_SCHEMA_VERSION;
use dps_store::{HubDatabase, HubSlot, OpenError, SqliteHubStore};
use serde_json::json;
use support::{desired_patch, obj, provisioning, sas_device, HOST, KEY1, KEY2};

/// A hub on the SQLite store at `path`; dropping it closes the file.
async fn open(path: &Path) -> Hub {
    let store = Arc::new(SqliteHubStore::open(path).unwrap());
    Hub::open_with_store(HubConfig::in_memory(HOST), store, Arc::new(SystemClock))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hub_store_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteHubStore::open(&dir.path().join("hub.db")).unwrap();
    dps_hub::store::conformance::run_all(&store).await;
}

#[tokio::test(flavor = "current_thread")]
async fn sqlite_hub_store_passes_conformance_on_a_single_threaded_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteHubStore::open(&dir.path().join("hub.db")).unwrap();
    dps_hub::store::conformance::run_all(&store).await;
}

/// Hubs `1..=n` of one shared file (`hub.db`, as `--hub-hostname` makes them).
fn hubs_sharing(dir: &Path, n: u32) -> (Arc<HubDatabase>, Vec<SqliteHubStore>) {
    let slots: Vec<_> = (1..=n)
        .map(|number| HubSlot {
            number,
            separate_file: None,
        })
        .collect();
    let db = HubDatabase::open(&dir.join("hub.db"), &slots).unwrap();
    let stores = (1..=n)
        .map(|i| db.hub(i, &dir.join(format!("hub-{i}-telemetry.db"))).unwrap())
        .collect();
    (db, stores)
}

/// Embedded hubs share one file and one writer (decision 0029): each hub's store is a store of
/// its own to the conformance suite (which wants a fresh store, so hubs 1 and 2 pass it one
/// after the other), and neither of two hubs sees the other's rows (hubs 3 and 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_sharing_one_file_each_pass_conformance_and_see_only_their_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (db, hubs) = hubs_sharing(dir.path(), 4);
    assert!(!(1..=4).any(|n| db.held_before(n)), "a new file held no hub");
    dps_hub::store::conformance::run_all(&hubs[0]).await;
    dps_hub::store::conformance::run_all(&hubs[1]).await;
    dps_hub::store::conformance::hubs_are_isolated(&hubs[2], &hubs[3]).await;
    assert_eq!(hubs[0].stats(), db.stats(), "one writer commits for every hub");
    drop((hubs, db));

    // Reopened, the file remembers its hubs; a fifth is new.
    let (db, _) = hubs_sharing(dir.path(), 5);
    assert!((1..=4).all(|n| db.held_before(n)) && !db.held_before(5));
}

/// A hub an earlier build kept in a file of its own (`hub-2.db`) is moved into the shared file
/// at the next open, whole, and its file removed; were the file still there after the move (a
/// crash before the removal), moving it again gives the same rows, not twice the devices.
#[tokio::test]
async fn a_hub_kept_in_a_file_of_its_own_moves_into_the_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let separate = dir.path().join("hub-2.db");
    let (dev, twin) = {
        let hub = open(&separate).await;
        hub.put_device(sas_device("moved-1", None), None).await.unwrap();
        hub.put_device(sas_device("moved-2", None), None).await.unwrap();
        let mut p = desired_patch(json!({"fan": "on"}));
        p.tags = Some(obj(json!({"site": "north"})));
        hub.patch_twin("moved-1", p, None).await.unwrap();
        (
            hub.get_device("moved-1").await.unwrap(),
            hub.get_twin("moved-1").await.unwrap(),
        )
    };
    // The file as the earlier build left it, with its write-ahead log.
    let keep = |from: &Path, to: &Path| {
        for suffix in ["", "-wal"] {
            let (mut f, mut t) = (from.as_os_str().to_owned(), to.as_os_str().to_owned());
            f.push(suffix);
            t.push(suffix);
            if Path::new(&f).exists() {
                std::fs::copy(&f, &t).unwrap();
            }
        }
    };
    let kept = dir.path().join("kept.db");
    keep(&separate, &kept);
    let slots = [
        HubSlot {
            number: 1,
            separate_file: None,
        },
        HubSlot {
            number: 2,
            separate_file: Some(&separate),
        },
    ];
    for round in 0..2 {
        let db = HubDatabase::open(&dir.path().join("hub.db"), &slots).unwrap();
        assert!(!separate.exists(), "round {round}: the hub's own file is removed");
        assert!(db.held_before(2), "round {round}: a moved hub is not new");
        let store = Arc::new(db.hub(2, &dir.path().join("hub-2-telemetry.db")).unwrap());
        let first = Arc::new(db.hub(1, &dir.path().join("telemetry.db")).unwrap());
        assert_eq!(
            first.count_devices().await.unwrap().total,
            0,
            "round {round}: hub 1 is untouched"
        );
        let tagged = store.find_by_tag("site", "north", None, 10).await.unwrap();
        assert_eq!(tagged.len(), 1, "round {round}: tags moved with the devices");
        let hub = Hub::open_with_store(HubConfig::in_memory(HOST), store, Arc::new(SystemClock))
            .await
            .unwrap();
        assert_eq!(hub.get_device("moved-1").await.unwrap(), dev);
        assert_eq!(hub.get_twin("moved-1").await.unwrap(), twin);
        assert_eq!(hub.statistics().await.unwrap().total_device_count, 2, "round {round}");
        drop((hub, first, db));
        // As if the process had died between the move's commit and the file's removal.
        keep(&kept, &separate);
    }
}

#[tokio::test]
async fn persists_devices_and_twins_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let (dev, twin) = {
        let hub = open(&path).await;
        hub.upsert_device(HOST, &provisioning("keep-me", TwinPolicy::Keep))
            .await
            .unwrap();
        hub.put_device(sas_device("Gone", None), None).await.unwrap();
        let mut p = desired_patch(json!({"fan": "on"}));
        p.tags = Some(obj(json!({"room": 7})));
        hub.patch_twin("keep-me", p, None).await.unwrap();
        hub.delete_device("gone", None).await.unwrap();
        (
            hub.get_device("keep-me").await.unwrap(),
            hub.get_twin("keep-me").await.unwrap(),
        )
    };
    let hub = open(&path).await;
    assert_eq!(hub.get_device("keep-me").await.unwrap(), dev);
    assert_eq!(hub.get_twin("keep-me").await.unwrap(), twin);
    assert!(matches!(
        hub.get_device("gone").await,
        Err(dps_hub::RegistryError::NotFound { .. })
    ));
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 1);
    // Etags survive, so a client's If-Match still works after a restart.
    hub.patch_twin("keep-me", desired_patch(json!({"fan": "off"})), twin.etag.as_deref())
        .await
        .unwrap();
}

/// Start-up recovery repeats the upsert of a registration a crash interrupted (decision 0009): the
/// repeat must report what the first attempt did, even after the hub was reopened, while another
/// operation — or a device an operator created — still reports an existing device.
#[tokio::test]
async fn a_repeated_operation_reports_its_first_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let first = provisioning("again", TwinPolicy::Keep);
    {
        let hub = open(&path).await;
        assert!(hub.upsert_device(HOST, &first).await.unwrap().created);
        hub.put_device(sas_device("by-operator", None), None).await.unwrap();
    }
    let hub = open(&path).await;
    let etag = hub.get_device("again").await.unwrap().etag;
    assert!(hub.upsert_device(HOST, &first).await.unwrap().created, "same operation");
    assert_eq!(
        hub.get_device("again").await.unwrap().etag,
        etag,
        "and nothing rewritten"
    );
    assert!(
        !hub.upsert_device(HOST, &provisioning("again", TwinPolicy::Keep))
            .await
            .unwrap()
            .created
    );
    let mut operator = provisioning("by-operator", TwinPolicy::Keep);
    operator.operation_id = String::new();
    assert!(!hub.upsert_device(HOST, &operator).await.unwrap().created);
    // The marker is internal: the registry views do not show it.
    let shown = serde_json::to_value(hub.get_device("again").await.unwrap()).unwrap();
    assert!(!shown.to_string().contains(&first.operation_id), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_upserts_are_all_durable() {
    const TASKS: usize = 50;
    const PER_TASK: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let hub = open(&path).await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let id = format!("bulk-{t:02}-{i:02}");
                let out = hub
                    .upsert_device(HOST, &provisioning(&id, TwinPolicy::Keep))
                    .await
                    .unwrap();
                assert!(out.created);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} durable upserts in {elapsed:?} ({:.0}/s)",
        TASKS * PER_TASK,
        (TASKS * PER_TASK) as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        hub.statistics().await.unwrap().total_device_count,
        (TASKS * PER_TASK) as u64
    );
    drop(hub);

    let hub = Arc::new(open(&path).await);
    assert_eq!(hub.list_devices(None, 5000).await.unwrap().len(), TASKS * PER_TASK);
    let t = hub.get_twin("bulk-49-19").await.unwrap();
    assert_eq!(t.tags.unwrap()["site"], "lab");
}

#[test]
fn refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = SqliteHubStore::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::SchemaTooNew {
                database: "hub",
                found: 99,
                supported: HUB_SCHEMA_VERSION,
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn migrates_fresh_database_to_latest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("hub.db");
    let store = SqliteHubStore::open(&path).unwrap();
    assert!(store.list_devices(None, 10).await.unwrap().is_empty());
    drop(store);
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: u32 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, HUB_SCHEMA_VERSION);
    let mode: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

/// A `hub.db` as the hub wrote it before its store moved to dps-store (schema version 1, no
/// application id, device documents in that build's JSON) opens with its devices, is migrated
/// (its devices counted by status), and the hub keeps writing to it.
#[tokio::test]
async fn opens_a_hub_db_written_by_an_earlier_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE devices (
                 id  TEXT PRIMARY KEY NOT NULL,
                 doc TEXT NOT NULL
             ) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let doc = json!({
            "deviceId": "Legacy-1",
            "generationId": "638712345678901234",
            "etag": "bGVnYWN5ZXQ=",
            "status": "disabled",
            "statusReason": "parked",
            "statusUpdatedTime": "2025-03-04T05:06:07.123456789Z",
            "createdTime": "2025-03-04T05:06:07.123456789Z",
            "authentication": {
                "type": "sas",
                "symmetricKey": {"primaryKey": KEY1, "secondaryKey": KEY2}
            },
            "capabilities": {"iotEdge": false},
            "twin": {
                "etag": "dHdpbmV0YWc=",
                "version": 5,
                "tags": {"room": 7},
                "desired": {"fan": "on"},
                "desiredVersion": 2,
                "desiredUpdated": "2025-03-04T05:06:07.123456789Z",
                "reported": {"fw": "1.0"},
                "reportedVersion": 3,
                "reportedUpdated": "2025-03-04T05:06:08Z"
            },
            "createdByOperation": "4.legacy.1"
        });
        let mut enabled = doc.clone();
        enabled["deviceId"] = json!("Legacy-2");
        enabled["status"] = json!("enabled");
        for (key, doc) in [("legacy-1", doc), ("legacy-2", enabled)] {
            c.execute(
                "INSERT INTO devices (id, doc) VALUES (?1, ?2)",
                rusqlite::params![key, doc.to_string()],
            )
            .unwrap();
        }
    }
    {
        let hub = open(&path).await;
        let d = hub.get_device("LEGACY-1").await.unwrap();
        assert_eq!(d.device_id, "Legacy-1");
        assert_eq!(d.etag.as_deref(), Some("bGVnYWN5ZXQ="));
        assert_eq!(d.status.as_deref(), Some("disabled"));
        assert_eq!(d.status_reason.as_deref(), Some("parked"));
        let t = hub.get_twin("legacy-1").await.unwrap();
        assert_eq!(t.etag.as_deref(), Some("dHdpbmV0YWc="));
        assert_eq!(t.version, Some(5));
        assert_eq!(t.tags.unwrap()["room"], 7);
        let desired = t.properties.unwrap().desired.unwrap();
        assert_eq!((&desired["fan"], &desired["$version"]), (&json!("on"), &json!(2)));
        let stats = hub.statistics().await.unwrap();
        assert_eq!((stats.total_device_count, stats.disabled_device_count), (2, 1));
        hub.put_device(sas_device("new-one", None), None).await.unwrap();
    }
    let hub = open(&path).await;
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 3);
    drop(hub);
    // The migration counted the existing devices; the triggers counted the new one.
    let store = SqliteHubStore::open(&path).unwrap();
    let counts = store.count_devices().await.unwrap();
    assert_eq!((counts.total, counts.enabled, counts.disabled), (3, 2, 1));
    drop(store);
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: u32 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, HUB_SCHEMA_VERSION);
    let id: i32 = c.pragma_query_value(None, "application_id", |r| r.get(0)).unwrap();
    assert_eq!(id, dps_store::sqlite::HUB_APPLICATION_ID);
}

/// Telemetry from devices sending at once is all published, in order, however the writes of
/// their messages interleave in the store's group commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_telemetry_is_all_published_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(&dir.path().join("hub.db")).await;
    let mut live = hub.subscribe_events();
    let mut tasks = Vec::new();
    let (devices, each) = (4, 300);
    for d in 0..devices {
        let id = format!("tel-{d}");
        hub.put_device(sas_device(&id, Some((KEY1, KEY2))), None).await.unwrap();
        let token = dps_proto::sas::build_token(&format!("{HOST}/devices/{id}"), KEY1, 4_000_000_000, None).unwrap();
        let user = dps_proto::hub_mqtt::HubUsername::parse(&format!("{HOST}/{id}/?api-version=2021-04-12")).unwrap();
        let identity = hub
            .authenticate(1_700_000_000, &user, Some(token.as_bytes()), None)
            .await
            .unwrap();
        let (session, _rx) = hub.open_session(identity).await.unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                session
                    .handle_publish(chrono::Utc::now(), &format!("devices/{id}/messages/events/"), b"{}")
                    .await
                    .unwrap();
            }
            drop(_rx);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Everything written is visible: nothing is held back behind a write that never settled.
    let visible = hub.recent_events(None, None, 10_000).await;
    assert_eq!(visible.len(), devices * each);
    let mut published = 0;
    loop {
        match live.try_recv() {
            Ok(m) => published = m.sequence_number,
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    assert_eq!(
        published as usize,
        devices * each,
        "the live feed reached the last message"
    );
}

/// A file upload notification is stored before it is readable: a hub reopened on the same file
/// hands it to the service again until it is completed.
#[tokio::test]
async fn file_upload_notifications_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let config = HubConfig {
        file_upload: Some(dps_hub::FileUploadConfig {
            host: HOST.into(),
            container: "fileupload".into(),
            account: "hub".into(),
            key: b"key".to_vec(),
            notifications: true,
        }),
        ..HubConfig::in_memory(HOST)
    };
    let open_with_uploads = |config: HubConfig| {
        let path = path.clone();
        async move {
            let store = Arc::new(SqliteHubStore::open(&path).unwrap());
            Hub::open_with_store(config, store, Arc::new(SystemClock))
                .await
                .unwrap()
        }
    };
    {
        let hub = open_with_uploads(config.clone()).await;
        hub.put_device(sas_device("uploader", Some((KEY1, KEY2))), None)
            .await
            .unwrap();
        let now = dps_core::Engine::unix_time(chrono::Utc::now());
        let token = dps_proto::sas::build_token(&format!("{HOST}/devices/uploader"), KEY1, now + 600, None).unwrap();
        let id = hub
            .authenticate_device(now, "uploader", Some(&token), None)
            .await
            .unwrap();
        let sas = hub.create_file_upload(&id, "a.txt").await.unwrap();
        let blob = hub.finish_file_upload(&id, &sas.correlation_id).await.unwrap();
        let uploaded = dps_hub::UploadedBlob {
            size: 5,
            last_modified: chrono::Utc::now(),
        };
        assert!(hub.notify_file_uploaded(&id, &blob, uploaded).await.unwrap());
        // Read but not completed when the hub goes.
        assert!(hub.receive_file_notification().await.unwrap().is_some());
    }
    let hub = open_with_uploads(config).await;
    let batch = hub
        .receive_file_notification()
        .await
        .unwrap()
        .expect("the notification is back");
    assert_eq!(batch.records[0].blob_name, "uploader/a.txt");
    assert!(hub.complete_file_notification(&batch.lock_token).await.unwrap());
    drop(hub);
    let hub = open(&path).await;
    assert!(
        hub.receive_file_notification().await.unwrap().is_none(),
        "a completed notification stays gone"
    );
}

/// A `hub.db` whose devices were stored before the tag index existed (hub migration 8 marks it
/// pending) gets them indexed when the store opens, once; queries on tags then find them.
#[tokio::test]
async fn devices_stored_before_the_tag_index_are_indexed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let hub = open(&path).await;
        for (id, site) in [("old-1", "lab"), ("old-2", "field"), ("old-3", "lab")] {
            hub.put_device(sas_device(id, None), None).await.unwrap();
            let patch: dps_proto::model::hub::Twin = serde_json::from_value(json!({"tags": {"site": site}})).unwrap();
            hub.patch_twin(id, patch, None).await.unwrap();
        }
    }
    {
        // What a file of the previous schema leaves after migration 8: no rows, the index pending.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM twin_tags; INSERT OR REPLACE INTO hub_meta (name, value) VALUES ('tag_index', 'pending');",
        )
        .unwrap();
    }
    let store = SqliteHubStore::open(&path).unwrap();
    let found: Vec<String> = store
        .find_by_tag("site", "lab", None, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.device_id().to_string())
        .collect();
    assert_eq!(found, ["old-1", "old-3"]);
    drop(store);
    let hub = open(&path).await;
    let page = hub
        .query("SELECT deviceId FROM devices WHERE tags.site = 'field'", None, 0)
        .await
        .unwrap();
    assert_eq!(page.items, vec![json!({"deviceId": "old-2"})]);
}
