//! The files every node of a database shares (`dps_files`): the identity (ID scope, policies
//! and keys, embedded hubs), the local CAs and the server certificates, so that any node serves
//! the same service (issue 15 point 2). What they hold and when they are created is the data
//! directory crate's business; this module only keeps them, and makes their creation happen
//! once when several nodes start at once.

use std::collections::BTreeMap;

use super::{PgOpenError, PostgresStore};

/// The advisory lock held while the shared files are read and updated ("DPSF").
const FILES_LOCK: i64 = 0x4450_5346;

/// The notice every node hears when the shared files changed (a policy was created, changed
/// or deleted through one of them): each reads them again.
pub const FILES_NOTICE: &str = "dps files";

impl PostgresStore {
    /// Runs `update` over the shared files (name → text) and writes back the ones it returns
    /// as created or changed, in one transaction under an advisory lock: nodes starting at once
    /// against a new database create the identity once (the first one in creates it, the others
    /// wait and then find it). `update` runs on a blocking thread (making keys takes time); when
    /// it fails, nothing is written and its error is returned inside `Ok`. A change is told to
    /// every node ([`FILES_NOTICE`]) when it commits.
    pub async fn update_files<T, E, F>(&self, update: F) -> Result<Result<T, E>, PgOpenError>
    where
        F: FnOnce(BTreeMap<String, String>) -> Result<(Vec<(String, String)>, T), E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let mut client = self.pool.get().await.map_err(PgOpenError::Connect)?;
        let tx = client.transaction().await.map_err(PgOpenError::Files)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FILES_LOCK])
            .await
            .map_err(PgOpenError::Files)?;
        let files = tx
            .query("SELECT name, content FROM dps_files", &[])
            .await
            .map_err(PgOpenError::Files)?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<BTreeMap<String, String>, tokio_postgres::Error>>()
            .map_err(PgOpenError::Files)?;
        let updated = tokio::task::spawn_blocking(move || update(files))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let (changed, value) = match updated {
            Ok(done) => done,
            // Dropping the transaction rolls it back.
            Err(e) => return Ok(Err(e)),
        };
        for (name, content) in &changed {
            tx.execute(
                "INSERT INTO dps_files (name, content) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET content = excluded.content, updated_at = now()",
                &[name, content],
            )
            .await
            .map_err(PgOpenError::Files)?;
        }
        if !changed.is_empty() {
            tx.execute(super::hub::NOTIFY, &[&FILES_NOTICE])
                .await
                .map_err(PgOpenError::Files)?;
        }
        tx.commit().await.map_err(PgOpenError::Files)?;
        if !changed.is_empty() {
            tracing::info!(
                files = ?changed.iter().map(|(name, _)| name).collect::<Vec<_>>(),
                "wrote the shared files to PostgreSQL"
            );
        }
        Ok(Ok(value))
    }
}
