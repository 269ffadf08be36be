//! One hub's blobs in the database (hub migration 10, decision 0033): the files devices upload
//! and the import and export jobs' blobs, so that any node serves a blob whichever node wrote it.
//!
//! A blob's row names a *generation*: its bytes are the `blob_chunks` rows of that generation,
//! at most [`CHUNK`] bytes each, keyed by their offset. A staged block (Put Block) is a
//! generation of its own in `blob_blocks`; a block list (Put Block List) copies the blocks'
//! chunks into a new generation inside the database. Every write is one transaction that
//! publishes a whole generation and deletes the one it replaced, so a reader sees a blob whole
//! or not at all; one that is reading a generation that gets replaced is told so (Storage
//! would have served the old bytes; a device reading its own upload does not race itself).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::stream::BoxStream;
use tokio::io::AsyncReadExt;
use tokio_postgres::Transaction;

use super::hub::PostgresHubStore;
use crate::blobs::{etag, hex, within_block_limits, BlobError, BlobProperties};

/// Most bytes in one chunk row: small enough to hold one in memory per read or write, large
/// enough that a 256 MiB blob is a few hundred rows.
const CHUNK: usize = 1024 * 1024;

/// A blob generation being read: where its chunks are.
#[derive(Debug)]
pub(crate) struct BlobRows {
    hub: PostgresHubStore,
    generation: String,
}

fn database(e: impl std::error::Error + 'static) -> BlobError {
    BlobError::Database(super::describe(&e))
}

fn time_of(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

fn properties(size: i64, modified: i64) -> BlobProperties {
    let (size, modified) = (u64::try_from(size).unwrap_or_default(), time_of(modified));
    BlobProperties {
        size,
        etag: etag(&modified, size),
        last_modified: modified,
    }
}

/// The transaction-scoped lock one blob's writes take, so that its blocks are counted and
/// assembled one write at a time, whichever nodes they reach.
async fn lock_blob(tx: &Transaction<'_>, hub: i64, container: &str, blob: &str) -> Result<(), BlobError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($2 || '/' || $3, $1))",
        &[&hub, &container, &blob],
    )
    .await
    .map_err(database)?;
    Ok(())
}

impl PostgresHubStore {
    /// Copies the file `tmp` into chunks of a new generation; its name.
    async fn insert_chunks(tx: &Transaction<'_>, tmp: &Path) -> Result<String, BlobError> {
        let generation = uuid::Uuid::new_v4().to_string();
        let mut file = tokio::fs::File::open(tmp).await?;
        let mut start = 0i64;
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            (&mut file).take(CHUNK as u64).read_to_end(&mut chunk).await?;
            if chunk.is_empty() {
                return Ok(generation);
            }
            tx.execute(
                "INSERT INTO blob_chunks (generation, start, data) VALUES ($1, $2, $3)",
                &[&generation, &start, &chunk],
            )
            .await
            .map_err(database)?;
            start += chunk.len() as i64;
        }
    }

    /// Makes `generation` (`size` bytes) the blob, deleting the generation it replaces; with
    /// `if_none_match`, only when the blob does not exist.
    async fn publish(
        &self,
        tx: &Transaction<'_>,
        (container, blob): (&str, &str),
        generation: &str,
        size: i64,
        if_none_match: bool,
    ) -> Result<BlobProperties, BlobError> {
        let modified = Utc::now().timestamp_micros();
        let old = tx
            .query_opt(
                "SELECT generation FROM blobs WHERE hub = $1 AND container = $2 AND name = $3 FOR UPDATE",
                &[&self.hub, &container, &blob],
            )
            .await
            .map_err(database)?;
        if let Some(old) = old {
            if if_none_match {
                return Err(BlobError::AlreadyExists);
            }
            let old: String = old.try_get(0).map_err(database)?;
            tx.execute("DELETE FROM blob_chunks WHERE generation = $1", &[&old])
                .await
                .map_err(database)?;
        }
        // Two first writes at once: the loser's insert conflicts; with If-None-Match that is
        // Storage's 409, otherwise the later write wins as it would have.
        let inserted = tx
            .execute(
                if if_none_match {
                    "INSERT INTO blobs (hub, container, name, generation, size, modified) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
                } else {
                    "INSERT INTO blobs (hub, container, name, generation, size, modified) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hub, container, name) DO UPDATE \
                     SET generation = excluded.generation, size = excluded.size, modified = excluded.modified"
                },
                &[&self.hub, &container, &blob, &generation, &size, &modified],
            )
            .await
            .map_err(database)?;
        if inserted == 0 {
            return Err(BlobError::AlreadyExists);
        }
        Ok(properties(size, modified))
    }

    pub(crate) async fn put_blob(
        &self,
        tmp: &Path,
        container: &str,
        blob: &str,
        if_none_match: bool,
    ) -> Result<BlobProperties, BlobError> {
        if if_none_match && self.blob_properties(container, blob).await?.is_some() {
            return Err(BlobError::AlreadyExists);
        }
        let size = i64::try_from(tokio::fs::metadata(tmp).await?.len()).unwrap_or(i64::MAX);
        let mut client = self.client().await.map_err(database)?;
        let tx = client.transaction().await.map_err(database)?;
        let generation = Self::insert_chunks(&tx, tmp).await?;
        let props = self
            .publish(&tx, (container, blob), &generation, size, if_none_match)
            .await?;
        tx.commit().await.map_err(database)?;
        Ok(props)
    }

    pub(crate) async fn put_block(
        &self,
        tmp: &Path,
        len: u64,
        container: &str,
        blob: &str,
        id: &[u8],
        limit: u64,
    ) -> Result<(), BlobError> {
        let mut client = self.client().await.map_err(database)?;
        let tx = client.transaction().await.map_err(database)?;
        lock_blob(&tx, self.hub, container, blob).await?;
        let row = tx
            .query_one(
                "SELECT COALESCE(sum(size), 0)::BIGINT, count(*) FROM blob_blocks \
                 WHERE hub = $1 AND container = $2 AND name = $3 AND block_id <> $4",
                &[&self.hub, &container, &blob, &id],
            )
            .await
            .map_err(database)?;
        let (others, count): (i64, i64) = (row.try_get(0).map_err(database)?, row.try_get(1).map_err(database)?);
        within_block_limits(
            u64::try_from(others).unwrap_or_default() + len,
            usize::try_from(count).unwrap_or(usize::MAX).saturating_add(1),
            limit,
        )?;
        // A block put again replaces itself.
        tx.execute(
            "WITH gone AS (DELETE FROM blob_blocks WHERE hub = $1 AND container = $2 AND name = $3 \
             AND block_id = $4 RETURNING generation) \
             DELETE FROM blob_chunks WHERE generation IN (SELECT generation FROM gone)",
            &[&self.hub, &container, &blob, &id],
        )
        .await
        .map_err(database)?;
        let generation = Self::insert_chunks(&tx, tmp).await?;
        tx.execute(
            "INSERT INTO blob_blocks (hub, container, name, block_id, generation, size, staged) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &self.hub,
                &container,
                &blob,
                &id,
                &generation,
                &i64::try_from(len).unwrap_or(i64::MAX),
                &Utc::now().timestamp_micros(),
            ],
        )
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)
    }

    pub(crate) async fn put_block_list(
        &self,
        container: &str,
        blob: &str,
        ids: &[Vec<u8>],
        if_none_match: bool,
        limit: u64,
    ) -> Result<BlobProperties, BlobError> {
        let mut client = self.client().await.map_err(database)?;
        let tx = client.transaction().await.map_err(database)?;
        lock_blob(&tx, self.hub, container, blob).await?;
        let staged = tx
            .query(
                "SELECT block_id, generation, size FROM blob_blocks WHERE hub = $1 AND container = $2 AND name = $3",
                &[&self.hub, &container, &blob],
            )
            .await
            .map_err(database)?
            .iter()
            .map(|row| Ok((row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?))))
            .collect::<Result<std::collections::HashMap<Vec<u8>, (String, i64)>, tokio_postgres::Error>>()
            .map_err(database)?;
        let mut parts = Vec::with_capacity(ids.len());
        let mut size = 0i64;
        for id in ids {
            let (generation, len) = staged.get(id).ok_or_else(|| BlobError::UnknownBlock(hex(id)))?;
            parts.push((generation, size));
            size = size.saturating_add(*len);
            if u64::try_from(size).unwrap_or(u64::MAX) > limit {
                return Err(BlobError::TooLarge { limit });
            }
        }
        let generation = uuid::Uuid::new_v4().to_string();
        for (part, offset) in parts {
            tx.execute(
                "INSERT INTO blob_chunks (generation, start, data) \
                 SELECT $1, $2 + start, data FROM blob_chunks WHERE generation = $3",
                &[&generation, &offset, part],
            )
            .await
            .map_err(database)?;
        }
        let props = self
            .publish(&tx, (container, blob), &generation, size, if_none_match)
            .await?;
        // The blob's uncommitted blocks go with the commit, as in Storage.
        tx.execute(
            "WITH gone AS (DELETE FROM blob_blocks WHERE hub = $1 AND container = $2 AND name = $3 \
             RETURNING generation) \
             DELETE FROM blob_chunks WHERE generation IN (SELECT generation FROM gone)",
            &[&self.hub, &container, &blob],
        )
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)?;
        Ok(props)
    }

    pub(crate) async fn blob_properties(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<Option<BlobProperties>, BlobError> {
        Ok(self.blob_row(container, blob).await?.map(|(props, _)| props))
    }

    async fn blob_row(&self, container: &str, blob: &str) -> Result<Option<(BlobProperties, String)>, BlobError> {
        let client = self.client().await.map_err(database)?;
        let row = client
            .query_opt(
                "SELECT size, modified, generation FROM blobs WHERE hub = $1 AND container = $2 AND name = $3",
                &[&self.hub, &container, &blob],
            )
            .await
            .map_err(database)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((
            properties(row.try_get(0).map_err(database)?, row.try_get(1).map_err(database)?),
            row.try_get(2).map_err(database)?,
        )))
    }

    pub(crate) async fn open_blob(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<Option<(BlobProperties, BlobRows)>, BlobError> {
        Ok(self.blob_row(container, blob).await?.map(|(props, generation)| {
            (
                props,
                BlobRows {
                    hub: self.clone(),
                    generation,
                },
            )
        }))
    }

    pub(crate) async fn list_blobs(
        &self,
        container: &str,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, BlobProperties)>, BlobError> {
        let client = self.client().await.map_err(database)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT name, size, modified FROM blobs WHERE hub = $1 AND container = $2 \
                 AND ($3::TEXT IS NULL OR lower(split_part(name, '/', 1)) = lower($3)) ORDER BY name LIMIT $4",
                &[&self.hub, &container, &device, &limit],
            )
            .await
            .map_err(database)?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, properties(row.try_get(1)?, row.try_get(2)?))))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(database)
    }

    /// Removes the blocks staged more than `age` ago (uploads never committed) and their
    /// bytes; how many blocks went.
    pub(crate) async fn sweep_blocks(&self, age: Duration) -> Result<usize, BlobError> {
        let cutoff = Utc::now().timestamp_micros() - i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
        let client = self.client().await.map_err(database)?;
        let row = client
            .query_one(
                "WITH gone AS (DELETE FROM blob_blocks WHERE hub = $1 AND staged < $2 RETURNING generation), \
                 bytes AS (DELETE FROM blob_chunks WHERE generation IN (SELECT generation FROM gone)) \
                 SELECT count(*) FROM gone",
                &[&self.hub, &cutoff],
            )
            .await
            .map_err(database)?;
        let gone: i64 = row.try_get(0).map_err(database)?;
        Ok(usize::try_from(gone).unwrap_or_default())
    }
}

impl BlobRows {
    /// The `len` bytes from `start` on, a chunk row (or the part of one asked for) at a time.
    pub(crate) fn into_stream(self, start: u64, len: u64) -> BoxStream<'static, std::io::Result<Bytes>> {
        let end = start.saturating_add(len);
        Box::pin(futures_util::stream::try_unfold(
            (self, start),
            move |(rows, at)| async move {
                if at >= end {
                    return Ok(None);
                }
                let piece = rows.chunk_at(at).await.map_err(std::io::Error::other)?;
                let offset = usize::try_from(at - piece.0).unwrap_or(usize::MAX);
                let take = usize::try_from(end - at).unwrap_or(usize::MAX);
                let bytes = Bytes::from(piece.1);
                if offset >= bytes.len() {
                    return Err(std::io::Error::other(
                        "the blob was replaced or removed while it was read",
                    ));
                }
                let bytes = bytes.slice(offset..bytes.len().min(offset.saturating_add(take)));
                let next = at + bytes.len() as u64;
                Ok(Some((bytes, (rows, next))))
            },
        ))
    }

    /// The chunk holding byte `at`: its start and bytes (a chunk that ends before `at` when the
    /// generation is gone or shorter).
    async fn chunk_at(&self, at: u64) -> Result<(u64, Vec<u8>), BlobError> {
        let client = self.hub.client().await.map_err(database)?;
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        let row = client
            .query_opt(
                "SELECT start, data FROM blob_chunks WHERE generation = $1 AND start <= $2 \
                 ORDER BY start DESC LIMIT 1",
                &[&self.generation, &at],
            )
            .await
            .map_err(database)?;
        let Some(row) = row else {
            return Ok((u64::try_from(at).unwrap_or_default(), Vec::new()));
        };
        let start: i64 = row.try_get(0).map_err(database)?;
        Ok((
            u64::try_from(start).unwrap_or_default(),
            row.try_get(1).map_err(database)?,
        ))
    }
}
