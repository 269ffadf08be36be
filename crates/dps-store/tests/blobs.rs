//! The blob store behind file uploads and import/export jobs behaves as Storage does on both
//! backends: a directory of the node, and the PostgreSQL database several nodes share, where a
//! blob written through one node is read through another.
//!
//! The PostgreSQL tests need `DPS_TEST_POSTGRES` (set by `scripts/test.sh`, see
//! `tests/postgres.rs`).

use std::time::Duration;

use dps_store::{BlobError, BlobProperties, BlobStore, BlobWrite};
use futures_util::TryStreamExt;

/// The largest blob the stores under test keep.
const LIMIT: u64 = 3 * 1024 * 1024;

async fn write(store: &BlobStore, bytes: &[u8]) -> BlobWrite {
    let mut w = store.begin().await.unwrap();
    w.write(bytes).await.unwrap();
    w
}

async fn read(store: &BlobStore, container: &str, blob: &str, range: Option<(u64, u64)>) -> Option<Vec<u8>> {
    let (props, reader) = store.open_blob(container, blob).await.unwrap()?;
    let (start, len) = range.unwrap_or((0, props.size));
    let pieces: Vec<bytes::Bytes> = reader.into_stream(start, len).try_collect().await.unwrap();
    Some(pieces.concat())
}

fn names(listed: Vec<(String, BlobProperties)>) -> Vec<String> {
    listed.into_iter().map(|(n, _)| n).collect()
}

/// Bytes that differ from offset to offset, so that a misplaced piece shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// What every backend must do. `writer` and `reader` may be two nodes' stores of one hub.
async fn behaves_as_storage(writer: &BlobStore, reader: &BlobStore) {
    // Put Blob, then If-None-Match: * on it.
    let props = writer
        .put_blob(write(writer, b"hello").await, "c", "dev/a.txt", true)
        .await
        .unwrap();
    assert_eq!(props.size, 5);
    assert_eq!(read(reader, "c", "dev/a.txt", None).await.unwrap(), b"hello");
    assert_eq!(reader.properties("c", "dev/a.txt").await.unwrap(), Some(props.clone()));
    assert!(matches!(
        writer
            .put_blob(write(writer, b"again").await, "c", "dev/a.txt", true)
            .await,
        Err(BlobError::AlreadyExists)
    ));
    assert_eq!(read(reader, "c", "dev/a.txt", None).await.unwrap(), b"hello");

    // A blob larger than a database chunk (1 MiB), read whole and by ranges across chunks.
    let big = pattern(2 * 1024 * 1024 + 17, 7);
    let props = writer
        .put_blob(write(writer, &big).await, "c", "dev/big.bin", false)
        .await
        .unwrap();
    assert_eq!(props.size, big.len() as u64);
    assert_eq!(read(reader, "c", "dev/big.bin", None).await.unwrap(), big);
    for (start, len) in [(0, 1), (1024 * 1024 - 3, 10), (1024 * 1024, 1024 * 1024 + 17), (5, 0)] {
        let got = read(reader, "c", "dev/big.bin", Some((start, len))).await.unwrap();
        assert_eq!(got, big[start as usize..(start + len) as usize], "range {start}+{len}");
    }
    // Written again: the new bytes, a new entity tag.
    let replaced = writer
        .put_blob(write(writer, b"short").await, "c", "dev/big.bin", false)
        .await
        .unwrap();
    assert_ne!(replaced.etag, props.etag);
    assert_eq!(read(reader, "c", "dev/big.bin", None).await.unwrap(), b"short");

    // Blocks put through one store, listed out of put order (and one replaced) through the other.
    let (one, two) = (pattern(1024 * 1024 + 5, 1), pattern(300, 2));
    for (id, bytes) in [(&b"2"[..], &b"stale"[..]), (b"2", &two[..]), (b"1", &one[..])] {
        writer
            .put_block(write(writer, bytes).await, "c", "dev/b.bin", id)
            .await
            .unwrap();
    }
    assert!(matches!(
        reader
            .put_block_list("c", "dev/b.bin", &[b"1".to_vec(), b"9".to_vec()], false)
            .await,
        Err(BlobError::UnknownBlock(_))
    ));
    assert_eq!(reader.properties("c", "dev/b.bin").await.unwrap(), None);
    let props = reader
        .put_block_list("c", "dev/b.bin", &[b"1".to_vec(), b"2".to_vec(), b"1".to_vec()], false)
        .await
        .unwrap();
    let whole = [&one[..], &two[..], &one[..]].concat();
    assert_eq!(props.size, whole.len() as u64);
    assert_eq!(read(writer, "c", "dev/b.bin", None).await.unwrap(), whole);
    // The committed blocks are gone: a list naming them again is refused, the blob stays.
    assert!(matches!(
        writer.put_block_list("c", "dev/b.bin", &[b"1".to_vec()], false).await,
        Err(BlobError::UnknownBlock(_))
    ));
    assert_eq!(read(reader, "c", "dev/b.bin", None).await.unwrap(), whole);
    // If-None-Match: * on a block list for an existing blob.
    writer
        .put_block(write(writer, b"x").await, "c", "dev/b.bin", b"3")
        .await
        .unwrap();
    assert!(matches!(
        reader.put_block_list("c", "dev/b.bin", &[b"3".to_vec()], true).await,
        Err(BlobError::AlreadyExists)
    ));

    // Listing: by name, by device (its case ignored), bounded; another container is apart.
    writer
        .put_blob(write(writer, b"o").await, "other", "dev/a.txt", false)
        .await
        .unwrap();
    assert_eq!(
        names(reader.list("c", None, 10).await.unwrap()),
        ["dev/a.txt", "dev/b.bin", "dev/big.bin"]
    );
    assert_eq!(names(reader.list("c", Some("DEV"), 1).await.unwrap()), ["dev/a.txt"]);
    assert!(reader.list("c", Some("devx"), 10).await.unwrap().is_empty());
    assert!(reader.list("none", None, 10).await.unwrap().is_empty());
    assert_eq!(reader.properties("c", "dev/none").await.unwrap(), None);
    assert!(reader.open_blob("c", "dev/none").await.unwrap().is_none());

    // Over the limit: refused while writing, and when staged blocks add up.
    let mut w = writer.begin().await.unwrap();
    assert!(matches!(
        w.write(&vec![0; LIMIT as usize + 1]).await,
        Err(BlobError::TooLarge { limit: LIMIT })
    ));
    drop(w);
    let third = vec![1; LIMIT as usize / 3 + 1];
    for id in [b"x", b"x", b"y"] {
        writer
            .put_block(write(writer, &third).await, "c", "dev/huge", id)
            .await
            .unwrap();
    }
    assert!(matches!(
        reader
            .put_block(write(reader, &third).await, "c", "dev/huge", b"z")
            .await,
        Err(BlobError::TooLarge { limit: LIMIT })
    ));
    let thrice = [b"x".to_vec(), b"y".to_vec(), b"x".to_vec()];
    assert!(matches!(
        reader.put_block_list("c", "dev/huge", &thrice, false).await,
        Err(BlobError::TooLarge { .. })
    ));
    assert_eq!(reader.properties("c", "dev/huge").await.unwrap(), None);

    // Names that could leave the store are refused before they reach it.
    assert!(matches!(
        writer
            .put_blob(write(writer, b"x").await, "c", "../escape", false)
            .await,
        Err(BlobError::Name(_))
    ));

    // Stale blocks are swept (those of dev/b.bin and dev/huge), whole blobs stay.
    assert!(writer.sweep(Duration::ZERO).await.unwrap() >= 2);
    assert!(matches!(
        reader.put_block_list("c", "dev/huge", &[b"x".to_vec()], false).await,
        Err(BlobError::UnknownBlock(_))
    ));
    assert_eq!(read(reader, "c", "dev/a.txt", None).await.unwrap(), b"hello");
}

#[tokio::test]
async fn blobs_in_a_directory_behave_as_storage() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), LIMIT).unwrap();
    behaves_as_storage(&store, &store).await;
    // A blob is the file at its path; nothing temporary is left behind.
    assert_eq!(std::fs::read(dir.path().join("c/dev/a.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
}

/// Two nodes' stores of hub 1 on one database, each with a temporary directory of its own.
async fn two_nodes(url: &str) -> ([BlobStore; 2], [tempfile::TempDir; 2]) {
    let mut stores = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let db = dps_store::PostgresHubDatabase::connect(url).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        stores.push(BlobStore::in_database(dir.path(), LIMIT, db.hub(1)).unwrap());
        dirs.push(dir);
    }
    (stores.try_into().unwrap(), dirs.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_in_postgresql_behave_as_storage_through_any_node() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let ([a, b], dirs) = two_nodes(&url).await;
    behaves_as_storage(&a, &b).await;
    // Nothing of a blob is on a node's disk.
    for dir in &dirs {
        let entries: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(entries, [".tmp"]);
        assert_eq!(std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
    }
    // Another hub on the same database sees none of hub 1's blobs.
    let db = dps_store::PostgresHubDatabase::connect(&url).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let hub2 = BlobStore::in_database(tmp.path(), LIMIT, db.hub(2)).unwrap();
    assert!(hub2.list("c", None, 10).await.unwrap().is_empty());
    assert!(hub2.open_blob("c", "dev/a.txt").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_replaced_while_it_is_read_ends_the_read_with_an_error() {
    let url = dps_store::postgres::testing::fresh_database().await;
    let ([a, b], _dirs) = two_nodes(&url).await;
    let big = pattern(2 * 1024 * 1024, 3);
    a.put_blob(write(&a, &big).await, "c", "dev/f", false).await.unwrap();
    let (props, reader) = b.open_blob("c", "dev/f").await.unwrap().unwrap();
    let mut stream = reader.into_stream(0, props.size);
    let first = stream.try_next().await.unwrap().unwrap();
    assert_eq!(first, big[..first.len()]);
    a.put_blob(write(&a, b"new").await, "c", "dev/f", false).await.unwrap();
    let rest: Result<Vec<_>, _> = stream.try_collect().await;
    assert!(rest.unwrap_err().to_string().contains("replaced or removed"));
}
