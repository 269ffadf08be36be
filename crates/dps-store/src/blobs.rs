//! [`BlobStore`]: the local stand-in for the storage account behind IoT Hub file upload, in a
//! directory (`dps-data/blobs`): a blob `{container}/{deviceId}/{name}` is the file at that
//! relative path, readable by anyone with access to the data directory.
//!
//! Writes go to a temporary file first (`.tmp/`), then are fsynced and renamed into place, so a
//! blob is either absent or whole — a crash or a refused upload leaves no half-written blob.
//! Blocks of a staged upload (Put Block) wait in `.blocks/{hash of the blob}/{block id hex}`
//! until a block list assembles them (Put Block List) or the sweep removes them
//! ([`BlobStore::sweep`]). Names are checked by [`dps_proto::blob_storage::valid_blob_name`]
//! before they become paths, so none leaves the directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use dps_proto::blob_storage::valid_blob_name;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// What a stored blob is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProperties {
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: DateTime<Utc>,
    /// Changes with every write (size and time).
    pub etag: String,
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// `If-None-Match: *` and the blob exists (Storage's 409 `BlobAlreadyExists`); nothing was
    /// written.
    #[error("the specified blob already exists")]
    AlreadyExists,
    /// A block list names a block that was not put for this blob (Storage's 400
    /// `InvalidBlockList`); nothing was written.
    #[error("the block list names block {0} that was not put for this blob")]
    UnknownBlock(String),
    /// The blob would be larger than the store allows (Storage's 413 `RequestBodyTooLarge`).
    #[error("the blob would be larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The container or blob name cannot be a path here (checked before; a bug if reached).
    #[error("'{0}' is not a blob name this store keeps")]
    Name(String),
    /// The file system failed (disk full, permissions); nothing was published.
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

/// Blobs in a directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Largest blob, bytes.
    max_blob_bytes: u64,
}

/// A write in progress: bytes go to a temporary file that becomes a blob or a block when
/// finished, and is removed when dropped unfinished.
#[derive(Debug)]
pub struct BlobWrite {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
    limit: u64,
}

impl BlobWrite {
    /// Appends `bytes`; refuses to grow past the store's blob limit.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.written += bytes.len() as u64;
        if self.written > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes).await?;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Flushes and fsyncs the file; its path, now owned by the caller.
    async fn finish(mut self) -> Result<PathBuf, BlobError> {
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
            f.sync_all().await?;
        }
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for BlobWrite {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BlobStore {
    /// A store in `root` (created if needed) keeping blobs of at most `max_blob_bytes`.
    pub fn open(root: &Path, max_blob_bytes: u64) -> std::io::Result<BlobStore> {
        std::fs::create_dir_all(root.join(".tmp"))?;
        std::fs::create_dir_all(root.join(".blocks"))?;
        Ok(BlobStore {
            root: root.to_path_buf(),
            max_blob_bytes,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The largest blob this store keeps.
    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }

    /// Starts writing a blob or a block.
    pub async fn begin(&self) -> Result<BlobWrite, BlobError> {
        let path = self.root.join(".tmp").join(uuid::Uuid::new_v4().to_string());
        let file = tokio::fs::File::create(&path).await?;
        Ok(BlobWrite {
            path,
            file: Some(file),
            written: 0,
            limit: self.max_blob_bytes,
        })
    }

    fn blob_path(&self, container: &str, blob: &str) -> Result<PathBuf, BlobError> {
        if !valid_blob_name(container)
            || container.contains('/')
            || container.starts_with('.')
            || !valid_blob_name(blob)
        {
            return Err(BlobError::Name(format!("{container}/{blob}")));
        }
        Ok(self.root.join(container).join(blob))
    }

    fn blocks_dir(&self, container: &str, blob: &str) -> PathBuf {
        let key = Sha256::digest(format!("{container}/{blob}").as_bytes());
        self.root.join(".blocks").join(hex(&key))
    }

    /// Publishes a finished write as the blob (Put Blob); with `if_none_match`, only when the
    /// blob does not exist yet.
    pub async fn put_blob(
        &self,
        write: BlobWrite,
        container: &str,
        blob: &str,
        if_none_match: bool,
    ) -> Result<BlobProperties, BlobError> {
        let dest = self.blob_path(container, blob)?;
        let tmp = write.finish().await?;
        let published = self.publish(&tmp, &dest, if_none_match).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        published
    }

    /// Keeps a finished write as block `id` of the blob (Put Block); a block put again with the
    /// same id replaces it. The blocks staged for one blob together stay within the blob limit
    /// (and Azure's block count), so an upload that is never committed cannot fill the disk.
    pub async fn put_block(&self, write: BlobWrite, container: &str, blob: &str, id: &[u8]) -> Result<(), BlobError> {
        self.blob_path(container, blob)?;
        let dir = self.blocks_dir(container, blob);
        tokio::fs::create_dir_all(&dir).await?;
        let name = hex(id);
        let (mut staged, mut count) = (write.len(), 1usize);
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(e) = entries.next_entry().await? {
            if e.file_name().to_string_lossy() != name.as_str() {
                staged += e.metadata().await?.len();
                count += 1;
            }
        }
        if staged > self.max_blob_bytes || count > dps_proto::blob_storage::MAX_BLOCKS {
            return Err(BlobError::TooLarge {
                limit: self.max_blob_bytes,
            });
        }
        let tmp = write.finish().await?;
        let renamed = tokio::fs::rename(&tmp, dir.join(name)).await;
        if renamed.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        Ok(renamed?)
    }

    /// Assembles the blob from its blocks in `ids` order (Put Block List) and removes the
    /// staged blocks; with `if_none_match`, only when the blob does not exist yet.
    pub async fn put_block_list(
        &self,
        container: &str,
        blob: &str,
        ids: &[Vec<u8>],
        if_none_match: bool,
    ) -> Result<BlobProperties, BlobError> {
        let dest = self.blob_path(container, blob)?;
        let dir = self.blocks_dir(container, blob);
        for id in ids {
            if tokio::fs::metadata(dir.join(hex(id))).await.is_err() {
                return Err(BlobError::UnknownBlock(hex(id)));
            }
        }
        let mut write = self.begin().await?;
        for id in ids {
            let mut block = tokio::fs::File::open(dir.join(hex(id))).await?;
            let size = block.metadata().await?.len();
            if write.len() + size > self.max_blob_bytes {
                return Err(BlobError::TooLarge {
                    limit: self.max_blob_bytes,
                });
            }
            write.written += size;
            if let Some(f) = write.file.as_mut() {
                tokio::io::copy(&mut block, f).await?;
            }
        }
        let tmp = write.finish().await?;
        let published = self.publish(&tmp, &dest, if_none_match).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        if published.is_ok() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        published
    }

    /// Renames `tmp` to `dest` (creating its directories) and fsyncs the directory.
    async fn publish(&self, tmp: &Path, dest: &Path, if_none_match: bool) -> Result<BlobProperties, BlobError> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        if if_none_match && tokio::fs::metadata(dest).await.is_ok() {
            return Err(BlobError::AlreadyExists);
        }
        tokio::fs::rename(tmp, dest).await?;
        if let Some(parent) = dest.parent() {
            if let Ok(d) = tokio::fs::File::open(parent).await {
                let _ = d.sync_all().await;
            }
        }
        self.properties_of(dest)
            .await?
            .ok_or_else(|| BlobError::Io(std::io::Error::other("a published blob vanished")))
    }

    /// The blob's properties, if it exists.
    pub async fn properties(&self, container: &str, blob: &str) -> Result<Option<BlobProperties>, BlobError> {
        let path = self.blob_path(container, blob)?;
        self.properties_of(&path).await
    }

    /// The blob's file (to stream it), if it exists.
    pub async fn open_blob(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<Option<(BlobProperties, tokio::fs::File)>, BlobError> {
        let path = self.blob_path(container, blob)?;
        let Some(props) = self.properties_of(&path).await? else {
            return Ok(None);
        };
        Ok(Some((props, tokio::fs::File::open(&path).await?)))
    }

    /// The blobs of `container` by name, only those under the directory `{device}/` (its case
    /// ignored) when given, at most `limit`.
    pub async fn list(
        &self,
        container: &str,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, BlobProperties)>, BlobError> {
        let root = self.root.join(container);
        let device = device.map(str::to_string);
        let names = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
            let mut names = Vec::new();
            let Ok(top) = std::fs::read_dir(&root) else {
                return Ok(names);
            };
            for entry in top.flatten() {
                let dir_name = entry.file_name().to_string_lossy().into_owned();
                if device.as_deref().is_some_and(|d| !d.eq_ignore_ascii_case(&dir_name)) {
                    continue;
                }
                walk(&entry.path(), &dir_name, &mut names)?;
            }
            names.sort();
            names.truncate(limit);
            Ok(names)
        })
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
        let mut listed = Vec::with_capacity(names.len());
        for name in names {
            if let Some(p) = self.properties(container, &name).await? {
                listed.push((name, p));
            }
        }
        Ok(listed)
    }

    async fn properties_of(&self, path: &Path) -> Result<Option<BlobProperties>, BlobError> {
        let meta = match tokio::fs::metadata(path).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let modified: DateTime<Utc> = meta.modified().map(DateTime::from).unwrap_or_else(|_| Utc::now());
        let etag = format!(
            "\"0x{:X}{:X}\"",
            modified.timestamp_nanos_opt().unwrap_or_default(),
            meta.len()
        );
        Ok(Some(BlobProperties {
            size: meta.len(),
            last_modified: modified,
            etag,
        }))
    }

    /// Removes staged blocks and temporary files older than `age` (uploads that were never
    /// committed); returns how many entries went.
    pub fn sweep(&self, age: Duration) -> usize {
        let Some(cutoff) = SystemTime::now().checked_sub(age) else {
            return 0;
        };
        let old = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff)
        };
        let mut removed = 0;
        for (dir, is_dir) in [(".blocks", true), (".tmp", false)] {
            let Ok(entries) = std::fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if old(&p) {
                    let gone = if is_dir {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    removed += usize::from(gone.is_ok());
                }
            }
        }
        removed
    }
}

/// Collects the files under `path` (named `prefix` relative to the container) as blob names.
fn walk(path: &Path, prefix: &str, names: &mut Vec<String>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_file() {
        if valid_blob_name(prefix) {
            names.push(prefix.to_string());
        }
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            walk(&entry.path(), &format!("{prefix}/{name}"), names)?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write(store: &BlobStore, bytes: &[u8]) -> BlobWrite {
        let mut w = store.begin().await.unwrap();
        w.write(bytes).await.unwrap();
        w
    }

    #[tokio::test]
    async fn blobs_are_put_whole_or_from_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 16).unwrap();
        let w = write(&store, b"hello").await;
        let props = store.put_blob(w, "c", "dev/a.txt", true).await.unwrap();
        assert_eq!(props.size, 5);
        assert_eq!(std::fs::read(dir.path().join("c/dev/a.txt")).unwrap(), b"hello");
        // If-None-Match: * on an existing blob.
        let w = write(&store, b"again").await;
        assert!(matches!(
            store.put_blob(w, "c", "dev/a.txt", true).await,
            Err(BlobError::AlreadyExists)
        ));
        assert_eq!(std::fs::read(dir.path().join("c/dev/a.txt")).unwrap(), b"hello");

        // Blocks, listed out of put order; an unknown one refuses the list.
        for (id, bytes) in [(&b"2"[..], &b"world"[..]), (b"1", b"hello ")] {
            let w = write(&store, bytes).await;
            store.put_block(w, "c", "dev/b.txt", id).await.unwrap();
        }
        assert!(matches!(
            store
                .put_block_list("c", "dev/b.txt", &[b"1".to_vec(), b"9".to_vec()], false)
                .await,
            Err(BlobError::UnknownBlock(_))
        ));
        let props = store
            .put_block_list("c", "dev/b.txt", &[b"1".to_vec(), b"2".to_vec()], false)
            .await
            .unwrap();
        assert_eq!(props.size, 11);
        assert_eq!(std::fs::read(dir.path().join("c/dev/b.txt")).unwrap(), b"hello world");
        assert_eq!(store.properties("c", "dev/b.txt").await.unwrap(), Some(props.clone()));
        let names = |l: Vec<(String, BlobProperties)>| l.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(
            names(store.list("c", None, 10).await.unwrap()),
            ["dev/a.txt", "dev/b.txt"]
        );
        assert_eq!(names(store.list("c", Some("DEV"), 1).await.unwrap()), ["dev/a.txt"]);
        assert!(store.list("c", Some("other"), 10).await.unwrap().is_empty());
        assert!(store.list("none", None, 10).await.unwrap().is_empty());
        assert_eq!(store.properties("c", "dev/none").await.unwrap(), None);

        // Over the limit: refused while writing, and when blocks add up.
        let mut w = store.begin().await.unwrap();
        assert!(matches!(
            w.write(&[0; 17]).await,
            Err(BlobError::TooLarge { limit: 16 })
        ));
        drop(w);
        // Staged blocks of one blob stay within the limit (a block put again replaces itself);
        // a list naming a block twice may still add up past it.
        for id in [b"x", b"x", b"y"] {
            let w = write(&store, &[1; 8]).await;
            store.put_block(w, "c", "dev/big", id).await.unwrap();
        }
        let w = write(&store, &[1; 1]).await;
        assert!(matches!(
            store.put_block(w, "c", "dev/big", b"z").await,
            Err(BlobError::TooLarge { limit: 16 })
        ));
        let twice = [b"x".to_vec(), b"y".to_vec(), b"x".to_vec()];
        assert!(matches!(
            store.put_block_list("c", "dev/big", &twice, false).await,
            Err(BlobError::TooLarge { .. })
        ));
        assert!(!dir.path().join("c/dev/big").exists());
        // Nothing temporary is left behind; stale blocks are swept.
        assert_eq!(std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
        assert_eq!(store.sweep(Duration::ZERO), 1);
        assert!(matches!(
            store.put_blob(write(&store, b"x").await, "c", "../escape", false).await,
            Err(BlobError::Name(_))
        ));
    }
}
