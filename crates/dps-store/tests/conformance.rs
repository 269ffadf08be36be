//! The dps-core store conformance suite against a fresh SQLite file.

use dps_store::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("conformance.db")).unwrap();
    dps_core::store::conformance::run_all(&store).await;
}

#[tokio::test(flavor = "current_thread")]
async fn sqlite_store_passes_conformance_on_a_single_threaded_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("conformance.db")).unwrap();
    dps_core::store::conformance::run_all(&store).await;
}
