//! Batch-level behaviour that needs the writer's test hooks: holding the writer still lets a test
//! put an exact set of commands into one transaction.

use std::sync::Arc;
use std::time::Duration;

use dps_core::{RegistrationRecord, Store, StoreError, WriteCondition};
use dps_proto::model::service::{AttestationType, IndividualEnrollment, RegistrationState, RegistrationStatus};
use tokio::task::JoinHandle;

use super::SqliteStore;
use crate::documents::{Documents, Op};

fn record(id: &str) -> RegistrationRecord {
    RegistrationRecord {
        state: RegistrationState {
            registration_id: id.into(),
            status: RegistrationStatus::Assigned,
            etag: Some("r".into()),
            ..Default::default()
        },
        enrollment_group_id: None,
        attestation: AttestationType::SymmetricKey,
        operation_id: None,
        reprovision_requested: false,
    }
}

fn enrollment(id: &str) -> IndividualEnrollment {
    IndividualEnrollment {
        registration_id: id.into(),
        etag: Some("e".into()),
        ..Default::default()
    }
}

/// Holds the writer inside a transaction until the returned closure is called.
async fn pause(store: &Arc<SqliteStore>) -> (JoinHandle<Result<(), StoreError>>, impl FnOnce()) {
    let (reached_tx, reached_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let s = Arc::clone(store);
    let task = tokio::spawn(async move {
        s.write(Op::Pause {
            reached: reached_tx,
            release: std::sync::Mutex::new(release_rx),
        })
        .await
    });
    tokio::task::spawn_blocking(move || reached_rx.recv().unwrap())
        .await
        .unwrap();
    (task, move || release_tx.send(()).unwrap())
}

/// Waits until `n` commands sit in the writer's queue.
async fn queued(store: &SqliteStore, n: usize) {
    for _ in 0..2_000 {
        if store.db.writer.queued() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("commands were never queued");
}

fn spawn_write(store: &Arc<SqliteStore>, op: Op) -> JoinHandle<Result<(), StoreError>> {
    let s = Arc::clone(store);
    tokio::spawn(async move { s.write(op).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_fails_alone_in_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
    store
        .put_enrollment(&enrollment("dup"), &WriteCondition::None)
        .await
        .unwrap();
    let before = store.stats();

    let (paused, release) = pause(&store).await;
    let mut ok = Vec::new();
    for i in 0..10 {
        ok.push(tokio::spawn({
            let s = Arc::clone(&store);
            async move { s.commit_registration(&record(&format!("ok-{i}"))).await }
        }));
    }
    let dup = tokio::spawn({
        let s = Arc::clone(&store);
        async move { s.put_enrollment(&enrollment("DUP"), &WriteCondition::None).await }
    });
    let stale = tokio::spawn({
        let s = Arc::clone(&store);
        async move {
            s.put_enrollment(&enrollment("absent"), &WriteCondition::Etag("stale".into()))
                .await
        }
    });
    let ghost = spawn_write(&store, Op::WriteThenFail { key: "ghost".into() });
    for i in 10..20 {
        ok.push(tokio::spawn({
            let s = Arc::clone(&store);
            async move { s.commit_registration(&record(&format!("ok-{i}"))).await }
        }));
    }
    queued(&store, 23).await;
    release();

    paused.await.unwrap().unwrap();
    for t in ok {
        t.await.unwrap().unwrap();
    }
    assert_eq!(dup.await.unwrap(), Err(StoreError::AlreadyExists));
    assert_eq!(stale.await.unwrap(), Err(StoreError::NotFound));
    assert!(matches!(ghost.await.unwrap(), Err(StoreError::Backend(_))));

    let after = store.stats();
    assert_eq!(
        after.transactions - before.transactions,
        2,
        "the pause, then all 23 commands in one transaction"
    );
    assert_eq!(after.largest_batch, 23);
    assert_eq!(after.failed_transactions, 0);
    assert_eq!(store.count_registrations().await.unwrap(), 20);
    assert_eq!(store.get_registration("ghost").await.unwrap(), None);
    assert_eq!(
        store.get_enrollment("dup").await.unwrap().unwrap().registration_id,
        "dup",
        "the failed create-only put left the original"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_every_command_and_the_writer_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());

    let (paused, release) = pause(&store).await;
    let first = spawn_write(
        &store,
        Op::CommitRegistration {
            key: "lost".into(),
            group_key: None,
            etag: None,
            doc: serde_json::to_string(&record("lost")).unwrap(),
            operation_id: None,
        },
    );
    let poison = spawn_write(&store, Op::PoisonCommit);
    let put = tokio::spawn({
        let s = Arc::clone(&store);
        async move { s.put_enrollment(&enrollment("lost-too"), &WriteCondition::None).await }
    });
    queued(&store, 3).await;
    release();
    paused.await.unwrap().unwrap();

    for r in [first.await.unwrap(), poison.await.unwrap(), put.await.unwrap()] {
        assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    }
    assert_eq!(store.stats().failed_transactions, 1);
    assert_eq!(store.get_registration("lost").await.unwrap(), None);
    assert_eq!(store.get_enrollment("lost-too").await.unwrap(), None);

    // The next batch starts clean.
    store.commit_registration(&record("after")).await.unwrap();
    store
        .put_enrollment(&enrollment("lost-too"), &WriteCondition::None)
        .await
        .unwrap();
    assert!(store.get_registration("after").await.unwrap().is_some());
}

/// A spent nonce stays spent after the store is reopened (a portal sign-in link opens once,
/// whatever restarts in between), and expired ones are dropped by the next spend.
#[tokio::test]
async fn a_spent_nonce_stays_spent_across_reopen_until_it_expires() {
    use chrono::{TimeDelta, Utc};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let now = Utc::now();
    let expires = now + TimeDelta::minutes(15);
    {
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.spend_nonce(now, "n1", expires).await.unwrap());
        assert!(!store.spend_nonce(now, "n1", expires).await.unwrap());
        assert!(store.spend_nonce(now, "n2", now + TimeDelta::minutes(1)).await.unwrap());
    }
    let store = SqliteStore::open(&path).unwrap();
    assert!(
        !store.spend_nonce(now, "n1", expires).await.unwrap(),
        "spent before the reopen"
    );
    // Past n2's expiry, a spend sweeps it out (its token is refused by then anyway); n1 stays.
    let later = now + TimeDelta::minutes(5);
    assert!(store.spend_nonce(later, "n3", expires).await.unwrap());
    assert!(store.spend_nonce(later, "n2", expires).await.unwrap());
    assert!(!store.spend_nonce(later, "n1", expires).await.unwrap());
}
