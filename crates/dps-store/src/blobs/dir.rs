//! Blobs in a directory (`dps-data/blobs/{hub}`): a blob `{container}/{deviceId}/{name}` is the
//! file at that relative path, readable by anyone with access to the data directory. Blocks of a
//! staged upload (Put Block) wait in `.blocks/{hash of the blob}/{block id hex}` until a block
//! list assembles them (Put Block List) or the sweep removes them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use dps_proto::blob_storage::valid_blob_name;
use sha2::{Digest, Sha256};

use super::{etag, hex, BlobError, BlobProperties, BlobWrite};

/// The directory of one hub's blobs.
#[derive(Debug, Clone)]
pub(super) struct Dir {
    pub(super) root: PathBuf,
}

impl Dir {
    fn blob_path(&self, container: &str, blob: &str) -> PathBuf {
        self.root.join(container).join(blob)
    }

    fn blocks_dir(&self, container: &str, blob: &str) -> PathBuf {
        let key = Sha256::digest(format!("{container}/{blob}").as_bytes());
        self.root.join(".blocks").join(hex(&key))
    }

    /// Publishes the finished write `tmp` as the blob.
    pub(super) async fn put_blob(
        &self,
        tmp: &Path,
        container: &str,
        blob: &str,
        if_none_match: bool,
    ) -> Result<BlobProperties, BlobError> {
        self.publish(tmp, &self.blob_path(container, blob), if_none_match).await
    }

    /// Keeps the finished write `tmp` (`len` bytes) as block `id` of the blob; the blocks
    /// staged for one blob together stay within `limit` bytes and Azure's block count.
    pub(super) async fn put_block(
        &self,
        tmp: &Path,
        len: u64,
        container: &str,
        blob: &str,
        id: &[u8],
        limit: u64,
    ) -> Result<(), BlobError> {
        let dir = self.blocks_dir(container, blob);
        tokio::fs::create_dir_all(&dir).await?;
        let name = hex(id);
        let (mut staged, mut count) = (len, 1usize);
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(e) = entries.next_entry().await? {
            if e.file_name().to_string_lossy() != name.as_str() {
                staged += e.metadata().await?.len();
                count += 1;
            }
        }
        super::within_block_limits(staged, count, limit)?;
        Ok(tokio::fs::rename(tmp, dir.join(name)).await?)
    }

    /// Checks that every block of `ids` was put for the blob.
    pub(super) async fn check_blocks(&self, container: &str, blob: &str, ids: &[Vec<u8>]) -> Result<(), BlobError> {
        let dir = self.blocks_dir(container, blob);
        for id in ids {
            if tokio::fs::metadata(dir.join(hex(id))).await.is_err() {
                return Err(BlobError::UnknownBlock(hex(id)));
            }
        }
        Ok(())
    }

    /// Appends the blocks `ids`, in order, to `write`.
    pub(super) async fn assemble(
        &self,
        container: &str,
        blob: &str,
        ids: &[Vec<u8>],
        write: &mut BlobWrite,
    ) -> Result<(), BlobError> {
        let dir = self.blocks_dir(container, blob);
        for id in ids {
            let mut block = tokio::fs::File::open(dir.join(hex(id))).await?;
            let size = block.metadata().await?.len();
            write.copy_from(&mut block, size).await?;
        }
        Ok(())
    }

    /// Removes the blob's staged blocks (after its block list was committed).
    pub(super) async fn drop_blocks(&self, container: &str, blob: &str) {
        let _ = tokio::fs::remove_dir_all(self.blocks_dir(container, blob)).await;
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
        properties_of(dest)
            .await?
            .ok_or_else(|| BlobError::Io(std::io::Error::other("a published blob vanished")))
    }

    pub(super) async fn properties(&self, container: &str, blob: &str) -> Result<Option<BlobProperties>, BlobError> {
        properties_of(&self.blob_path(container, blob)).await
    }

    pub(super) async fn open(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<Option<(BlobProperties, tokio::fs::File)>, BlobError> {
        let path = self.blob_path(container, blob);
        let Some(props) = properties_of(&path).await? else {
            return Ok(None);
        };
        Ok(Some((props, tokio::fs::File::open(&path).await?)))
    }

    pub(super) async fn list(
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

    /// Removes staged blocks older than `age`; how many went.
    pub(super) fn sweep_blocks(&self, age: Duration) -> usize {
        sweep_dir(&self.root.join(".blocks"), age, true)
    }
}

/// Removes the entries of `dir` last changed more than `age` ago (directories with what they
/// hold when `are_dirs`); how many went.
pub(super) fn sweep_dir(dir: &Path, age: Duration, are_dirs: bool) -> usize {
    let Some(cutoff) = SystemTime::now().checked_sub(age) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let p = e.path();
        let old = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if old {
            let gone = if are_dirs {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed += usize::from(gone.is_ok());
        }
    }
    removed
}

async fn properties_of(path: &Path) -> Result<Option<BlobProperties>, BlobError> {
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let modified: DateTime<Utc> = meta.modified().map(DateTime::from).unwrap_or_else(|_| Utc::now());
    Ok(Some(BlobProperties {
        size: meta.len(),
        etag: etag(&modified, meta.len()),
        last_modified: modified,
    }))
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
