//! [`BlobStore`]: the local stand-in for the storage account behind IoT Hub file upload and the
//! hub's import and export jobs. One hub's blobs live in a directory of the data directory
//! (module `dir`, the default), or in the PostgreSQL database every node shares
//! (`crate::postgres::blobs`, decision 0033), so that a blob written through one node is read
//! through any.
//!
//! Writes go to a temporary file of the node first (`.tmp/`), then are fsynced and published
//! whole (renamed into place, or copied into the database in one transaction), so a blob is
//! either absent or whole — a crash or a refused upload leaves no half-written blob. Names are
//! checked by [`dps_proto::blob_storage::valid_blob_name`] before they reach a backend, so none
//! leaves the directory.

mod dir;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use dps_proto::blob_storage::valid_blob_name;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::postgres::{BlobRows, PostgresHubStore};

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
    /// The database holding the blobs failed or is away (nodes on PostgreSQL); nothing was
    /// published. Worth retrying.
    #[error("blob storage in the database: {0}")]
    Database(String),
}

/// One hub's blobs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    /// The node's directory for this hub's blobs: its temporary files (`.tmp`), and the blobs
    /// themselves unless they are in the database.
    root: PathBuf,
    /// Largest blob, bytes.
    max_blob_bytes: u64,
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Dir(dir::Dir),
    Database(PostgresHubStore),
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
        self.grow(bytes.len() as u64)?;
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes).await?;
        }
        Ok(())
    }

    /// Appends the `size` bytes of `from`; refuses to grow past the store's blob limit.
    async fn copy_from(&mut self, from: &mut tokio::fs::File, size: u64) -> Result<(), BlobError> {
        self.grow(size)?;
        if let Some(f) = self.file.as_mut() {
            tokio::io::copy(from, f).await?;
        }
        Ok(())
    }

    fn grow(&mut self, by: u64) -> Result<(), BlobError> {
        self.written += by;
        if self.written > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
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

/// A stored blob opened for reading: its bytes as of when it was opened.
#[derive(Debug)]
pub struct BlobReader(Source);

#[derive(Debug)]
enum Source {
    File(tokio::fs::File),
    Rows(BlobRows),
}

/// How much of a blob file one stream item carries.
const READ_CHUNK: usize = 64 * 1024;

impl BlobReader {
    /// The `len` bytes from `start` on, in pieces. A blob in the database that is replaced or
    /// removed while it is read ends the stream with an error.
    pub fn into_stream(self, start: u64, len: u64) -> BoxStream<'static, std::io::Result<Bytes>> {
        match self.0 {
            Source::File(file) => Box::pin(futures_util::stream::try_unfold(
                (file, start, len, false),
                |(mut file, start, left, sought)| async move {
                    if !sought {
                        file.seek(std::io::SeekFrom::Start(start)).await?;
                    }
                    if left == 0 {
                        return Ok(None);
                    }
                    let mut buf = vec![0u8; READ_CHUNK.min(usize::try_from(left).unwrap_or(READ_CHUNK))];
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the blob file ended early",
                        ));
                    }
                    buf.truncate(n);
                    Ok(Some((Bytes::from(buf), (file, start, left - n as u64, true))))
                },
            )),
            Source::Rows(rows) => rows.into_stream(start, len),
        }
    }
}

impl BlobStore {
    /// A store of blobs in `root` (created if needed) keeping blobs of at most
    /// `max_blob_bytes`.
    pub fn open(root: &Path, max_blob_bytes: u64) -> std::io::Result<BlobStore> {
        std::fs::create_dir_all(root.join(".blocks"))?;
        BlobStore::with_backend(
            root,
            max_blob_bytes,
            Backend::Dir(dir::Dir {
                root: root.to_path_buf(),
            }),
        )
    }

    /// A store of `hub`'s blobs in its PostgreSQL database, which every node serving the hub
    /// shares; `root` (created if needed) holds this node's temporary files.
    pub fn in_database(root: &Path, max_blob_bytes: u64, hub: PostgresHubStore) -> std::io::Result<BlobStore> {
        BlobStore::with_backend(root, max_blob_bytes, Backend::Database(hub))
    }

    fn with_backend(root: &Path, max_blob_bytes: u64, backend: Backend) -> std::io::Result<BlobStore> {
        std::fs::create_dir_all(root.join(".tmp"))?;
        Ok(BlobStore {
            root: root.to_path_buf(),
            max_blob_bytes,
            backend,
        })
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

    /// Refuses a container or blob name no backend should see (a path out of the directory).
    fn check_name(container: &str, blob: &str) -> Result<(), BlobError> {
        if !valid_blob_name(container)
            || container.contains('/')
            || container.starts_with('.')
            || !valid_blob_name(blob)
        {
            return Err(BlobError::Name(format!("{container}/{blob}")));
        }
        Ok(())
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
        Self::check_name(container, blob)?;
        let tmp = write.finish().await?;
        let published = match &self.backend {
            Backend::Dir(dir) => dir.put_blob(&tmp, container, blob, if_none_match).await,
            Backend::Database(db) => db.put_blob(&tmp, container, blob, if_none_match).await,
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        published
    }

    /// Keeps a finished write as block `id` of the blob (Put Block); a block put again with the
    /// same id replaces it. The blocks staged for one blob together stay within the blob limit
    /// (and Azure's block count), so an upload that is never committed cannot fill the disk.
    pub async fn put_block(&self, write: BlobWrite, container: &str, blob: &str, id: &[u8]) -> Result<(), BlobError> {
        Self::check_name(container, blob)?;
        let len = write.len();
        let tmp = write.finish().await?;
        let staged = match &self.backend {
            Backend::Dir(dir) => dir.put_block(&tmp, len, container, blob, id, self.max_blob_bytes).await,
            Backend::Database(db) => db.put_block(&tmp, len, container, blob, id, self.max_blob_bytes).await,
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        staged
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
        Self::check_name(container, blob)?;
        let dir = match &self.backend {
            Backend::Dir(dir) => dir,
            Backend::Database(db) => {
                return db
                    .put_block_list(container, blob, ids, if_none_match, self.max_blob_bytes)
                    .await
            }
        };
        dir.check_blocks(container, blob, ids).await?;
        let mut write = self.begin().await?;
        dir.assemble(container, blob, ids, &mut write).await?;
        let tmp = write.finish().await?;
        let published = dir.put_blob(&tmp, container, blob, if_none_match).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        if published.is_ok() {
            dir.drop_blocks(container, blob).await;
        }
        published
    }

    /// The blob's properties, if it exists.
    pub async fn properties(&self, container: &str, blob: &str) -> Result<Option<BlobProperties>, BlobError> {
        Self::check_name(container, blob)?;
        match &self.backend {
            Backend::Dir(dir) => dir.properties(container, blob).await,
            Backend::Database(db) => db.blob_properties(container, blob).await,
        }
    }

    /// The blob (to stream it), if it exists.
    pub async fn open_blob(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<Option<(BlobProperties, BlobReader)>, BlobError> {
        Self::check_name(container, blob)?;
        Ok(match &self.backend {
            Backend::Dir(dir) => dir
                .open(container, blob)
                .await?
                .map(|(props, file)| (props, BlobReader(Source::File(file)))),
            Backend::Database(db) => db
                .open_blob(container, blob)
                .await?
                .map(|(props, rows)| (props, BlobReader(Source::Rows(rows)))),
        })
    }

    /// The blobs of `container` by name, only those under the directory `{device}/` (its case
    /// ignored) when given, at most `limit`.
    pub async fn list(
        &self,
        container: &str,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, BlobProperties)>, BlobError> {
        match &self.backend {
            Backend::Dir(dir) => dir.list(container, device, limit).await,
            Backend::Database(db) => db.list_blobs(container, device, limit).await,
        }
    }

    /// Removes staged blocks and temporary files older than `age` (uploads that were never
    /// committed); returns how many entries went.
    pub async fn sweep(&self, age: Duration) -> Result<usize, BlobError> {
        let (root, backend) = (self.root.clone(), self.backend.clone());
        let local = tokio::task::spawn_blocking(move || {
            let blocks = match backend {
                Backend::Dir(dir) => dir.sweep_blocks(age),
                Backend::Database(_) => 0,
            };
            blocks + dir::sweep_dir(&root.join(".tmp"), age, false)
        })
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        let shared = match &self.backend {
            Backend::Dir(_) => 0,
            Backend::Database(db) => db.sweep_blocks(age).await?,
        };
        Ok(local + shared)
    }
}

/// Refuses a staged block that would make the blob's staged blocks (`blocks` of them, this one
/// included) hold more than `staged` > `limit` bytes or more than Azure's block count, so that
/// an upload that is never committed cannot fill the disk or the database.
pub(crate) fn within_block_limits(staged: u64, blocks: usize, limit: u64) -> Result<(), BlobError> {
    if staged > limit || blocks > dps_proto::blob_storage::MAX_BLOCKS {
        return Err(BlobError::TooLarge { limit });
    }
    Ok(())
}

/// The entity tag of a blob written at `modified` with `size` bytes: it changes with every
/// write.
pub(crate) fn etag(modified: &DateTime<Utc>, size: u64) -> String {
    format!(
        "\"0x{:X}{:X}\"",
        modified.timestamp_nanos_opt().unwrap_or_default(),
        size
    )
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
