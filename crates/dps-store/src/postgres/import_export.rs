//! Import and export jobs in the database (hub migration 10, decision 0033), so that any node
//! answers for a job and may cancel it while the node it was created through runs it.

use chrono::{DateTime, TimeZone, Utc};
use dps_hub::store::HubStoreError;
use dps_hub::StoredImportExportJob;
use dps_proto::model::hub::JobProperties;

use super::hub::{backend, PostgresHubStore};

/// The statuses of a job that may still change.
const ACTIVE: &str = "status IN ('enqueued', 'running')";

fn encode(job: &JobProperties) -> Result<String, HubStoreError> {
    serde_json::to_string(job).map_err(|e| HubStoreError::backend(format!("cannot encode an import/export job: {e}")))
}

impl PostgresHubStore {
    pub(super) async fn insert_import_export_job(
        &self,
        job: &JobProperties,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<bool, HubStoreError> {
        let doc = encode(job)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // One creation at a time per hub, whichever nodes they reach.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('import-export jobs', $1))",
            &[&self.hub],
        )
        .await
        .map_err(backend)?;
        let active: i64 = tx
            .query_one(
                &format!("SELECT count(*) FROM import_export_jobs WHERE hub = $1 AND {ACTIVE} AND updated >= $2"),
                &[&self.hub, &stale_before.timestamp_millis()],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(backend)?;
        if active > 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO import_export_jobs (hub, id, status, doc, created, updated) VALUES ($1, $2, $3, $4, $5, $5)",
            &[&self.hub, &job.job_id, &job.status, &doc, &now.timestamp_millis()],
        )
        .await
        .map_err(backend)?;
        let keep = i64::try_from(dps_hub::MAX_KEPT_IMPORT_EXPORT_JOBS).unwrap_or(i64::MAX);
        tx.execute(
            "DELETE FROM import_export_jobs WHERE hub = $1 AND id IN \
             (SELECT id FROM import_export_jobs WHERE hub = $1 ORDER BY created DESC, id OFFSET $2)",
            &[&self.hub, &keep],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    pub(super) async fn write_active_import_export_job(
        &self,
        job: &JobProperties,
        now: DateTime<Utc>,
    ) -> Result<bool, HubStoreError> {
        let doc = encode(job)?;
        let client = self.client().await?;
        let changed = client
            .execute(
                &format!(
                    "UPDATE import_export_jobs SET status = $3, doc = $4, updated = $5 \
                     WHERE hub = $1 AND id = $2 AND {ACTIVE}"
                ),
                &[&self.hub, &job.job_id, &job.status, &doc, &now.timestamp_millis()],
            )
            .await
            .map_err(backend)?;
        Ok(changed > 0)
    }

    pub(super) async fn read_import_export_jobs(&self) -> Result<Vec<StoredImportExportJob>, HubStoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT doc, updated FROM import_export_jobs WHERE hub = $1",
                &[&self.hub],
            )
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let doc: String = row.try_get(0).map_err(backend)?;
                let updated: i64 = row.try_get(1).map_err(backend)?;
                Ok(StoredImportExportJob {
                    properties: serde_json::from_str(&doc)
                        .map_err(|e| HubStoreError::backend(format!("undecodable import/export job: {e}")))?,
                    updated: Utc.timestamp_millis_opt(updated).single().unwrap_or_default(),
                })
            })
            .collect()
    }
}
