//! SqliteStore behaviour beyond the shared conformance suite: durability across reopen,
//! migrations, group commit under concurrency, refusing files that are not ours, and reporting
//! damaged documents.

use std::sync::Arc;
use std::time::Instant;

use dps_core::{RegistrationRecord, Store, StoreError, WriteCondition};
use dps_proto::model::service::{
    AttestationType, EnrollmentGroup, IndividualEnrollment, RegistrationState, RegistrationStatus,
};
use dps_store::{sqlite::SCHEMA_VERSION, OpenError, SqliteStore};

fn record(id: &str, group: Option<&str>) -> RegistrationRecord {
    RegistrationRecord {
        state: RegistrationState {
            registration_id: id.into(),
            status: RegistrationStatus::Assigned,
            assigned_hub: Some("hub.example.test".into()),
            device_id: Some(id.into()),
            etag: Some(format!("etag-{id}")),
            ..Default::default()
        },
        enrollment_group_id: group.map(Into::into),
        attestation: AttestationType::SymmetricKey,
        operation_id: Some(format!("4.{id}")),
        reprovision_requested: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_drop_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // A nested path: open creates the directories.
    let path = dir.path().join("data").join("nested").join("dps.db");
    let enrollment = IndividualEnrollment {
        registration_id: "Dev-1".into(),
        etag: Some("e1".into()),
        ..Default::default()
    };
    let group = EnrollmentGroup {
        enrollment_group_id: "Grp".into(),
        etag: Some("g1".into()),
        ..Default::default()
    };
    {
        let store = SqliteStore::open(&path).unwrap();
        store.put_enrollment(&enrollment, &WriteCondition::None).await.unwrap();
        store.put_group(&group, &WriteCondition::None).await.unwrap();
        store.commit_registration(&record("Dev-1", Some("Grp"))).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get_enrollment("dev-1").await.unwrap(), Some(enrollment));
    assert_eq!(store.get_group("GRP").await.unwrap(), Some(group));
    assert_eq!(
        store.get_registration("DEV-1").await.unwrap(),
        Some(record("Dev-1", Some("Grp")))
    );
    assert_eq!(
        store.list_registrations_by_group("grp", None, 10).await.unwrap().len(),
        1
    );
    // Preconditions see the reopened etags.
    assert_eq!(
        store
            .delete_enrollment("dev-1", &WriteCondition::Etag("old".into()))
            .await,
        Err(StoreError::EtagMismatch)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dps.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let store = SqliteStore::open(&path).unwrap();
        store.commit_registration(&record("kept", None)).await.unwrap();
    }
    // Migration 1 is plain CREATE TABLE: were it run again, this open would fail.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.count_registrations().await.unwrap(), 1);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

/// A store written before registration intents existed (schema 2) gains the table on open and
/// keeps its data; intents then survive a reopen like everything else (decision 0009).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_a_store_without_intents_and_keeps_intents_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dps.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store.commit_registration(&record("old", None)).await.unwrap();
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE registration_intents; DROP TABLE linked_hubs; DROP TABLE audit; DROP TABLE credential_policies; \
             DROP TABLE revocations; DROP TABLE spent_nonces; \
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let intent = {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_registration("old").await.unwrap(), Some(record("old", None)));
        let new = record("new", None);
        let intent = dps_core::RegistrationIntent {
            operation_id: new.operation_id.clone().unwrap(),
            hub: "hub.example.test".into(),
            device: dps_core::DeviceProvisioning {
                device_id: "new".into(),
                auth: dps_core::DeviceAuth::SelfSigned {
                    primary_thumbprint: "AB".repeat(20),
                    secondary_thumbprint: "AB".repeat(20),
                },
                capabilities: Default::default(),
                initial_twin: None,
                twin_policy: dps_core::TwinPolicy::Keep,
                operation_id: new.operation_id.clone().unwrap(),
                credential_policy: None,
            },
            record: new,
            previous: None,
        };
        store.put_registration_intent(&intent).await.unwrap();
        intent
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.list_registration_intents(None, 10).await.unwrap(),
        vec![intent.clone()]
    );
    store.commit_registration(&intent.record).await.unwrap();
    assert!(store.list_registration_intents(None, 10).await.unwrap().is_empty());
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn refuses_a_database_that_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE devices (id TEXT); PRAGMA user_version = 2;")
            .unwrap();
    }
    assert!(matches!(
        SqliteStore::open(&path),
        Err(OpenError::ForeignDatabase { user_version: 2, .. })
    ));
}

#[test]
fn reports_an_uncreatable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        SqliteStore::open(&file.join("sub").join("dps.db")),
        Err(OpenError::CreateDir { .. })
    ));
}

/// Many concurrent registrations share transactions: far fewer commits (fsyncs) than commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_are_group_committed() {
    const N: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("dps.db")).unwrap());
    let before = store.stats();
    let started = Instant::now();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let group = format!("group-{}", i % 4);
                store
                    .commit_registration(&record(&format!("device-{i:05}"), Some(&group)))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    let stats = store.stats();
    let transactions = stats.transactions - before.transactions;
    println!(
        "{N} concurrent commits in {elapsed:?} ({:.0}/s), {transactions} transactions, \
         largest batch {}",
        N as f64 / elapsed.as_secs_f64(),
        stats.largest_batch
    );
    assert_eq!(stats.commands - before.commands, N as u64);
    assert!(
        transactions * 10 <= N as u64,
        "{transactions} transactions for {N} commands: not batched"
    );

    assert_eq!(store.count_registrations().await.unwrap(), N as u64);
    for i in (0..N).step_by(97) {
        let id = format!("device-{i:05}");
        assert_eq!(
            store.get_registration(&id).await.unwrap(),
            Some(record(&id, Some(&format!("group-{}", i % 4))))
        );
    }
    // Page through one group completely.
    let mut after: Option<String> = None;
    let mut seen = 0;
    loop {
        let page = store
            .list_registrations_by_group("GROUP-1", after.as_deref(), 128)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        seen += page.len();
        after = page.last().map(|r| r.state.registration_id.clone());
    }
    assert_eq!(seen, N / 4);
}

/// Reads proceed while the writer is busy (WAL), and see only committed data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_run_beside_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("dps.db")).unwrap());
    store.commit_registration(&record("stable", None)).await.unwrap();
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..500 {
                store
                    .commit_registration(&record(&format!("w-{i}"), None))
                    .await
                    .unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..200 {
                    assert!(store.get_registration("stable").await.unwrap().is_some());
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    writer.await.unwrap();
    assert_eq!(store.count_registrations().await.unwrap(), 501);
}

/// A document damaged on disk is reported as [`StoreError::Corrupt`], naming its table and key and
/// keeping the JSON error as its source, on a lookup and on a listing; the other records still
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_document_is_reported_as_corrupt_with_its_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dps.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        for id in ["dev-1", "dev-2"] {
            let e = IndividualEnrollment {
                registration_id: id.into(),
                etag: Some("e1".into()),
                ..Default::default()
            };
            store.put_enrollment(&e, &WriteCondition::None).await.unwrap();
        }
    }
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE enrollments SET doc = '{\"registrationId\": 7' WHERE key = 'dev-1'",
            [],
        )
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let check = |e: StoreError| {
        let message = e.to_string();
        let StoreError::Corrupt { table, key, source } = e else {
            panic!("not reported as corrupt: {e:?}")
        };
        assert_eq!((table.as_str(), key.as_str()), ("enrollments", "dev-1"));
        let json = source
            .downcast_ref::<serde_json::Error>()
            .expect("the JSON error is the source");
        assert_eq!(
            message,
            format!("stored document 'dev-1' in enrollments does not decode: {json}")
        );
        assert!(message.contains("line 1 column"), "{message}");
    };
    check(store.get_enrollment("DEV-1").await.unwrap_err());
    check(store.list_enrollments(None, 10).await.unwrap_err());
    assert_eq!(
        store.get_enrollment("dev-2").await.unwrap().unwrap().registration_id,
        "dev-2"
    );
}
