//! File uploads in progress in the database (hub migration 9), so that a device may report an
//! upload through another node than the one that started it (decision 0031).

use chrono::{DateTime, TimeZone, Utc};
use dps_hub::store::{ActiveUpload, HubStoreError};

use super::hub::{backend, PostgresHubStore};

impl PostgresHubStore {
    pub(super) async fn put_active_upload(
        &self,
        upload: &ActiveUpload,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<bool, HubStoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // One device's starts are counted one at a time, whichever nodes they reach.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($2, $1))",
            &[&self.hub, &upload.device_key],
        )
        .await
        .map_err(backend)?;
        let active: i64 = tx
            .query_one(
                "SELECT count(*) FROM file_uploads WHERE hub = $1 AND device = $2 AND expires > $3",
                &[&self.hub, &upload.device_key, &now.timestamp_millis()],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(backend)?;
        if usize::try_from(active).unwrap_or(usize::MAX) >= limit {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO file_uploads (hub, correlation_id, device, blob_name, expires) VALUES ($1, $2, $3, $4, $5)",
            &[
                &self.hub,
                &upload.correlation_id,
                &upload.device_key,
                &upload.blob_name,
                &upload.expires.timestamp_millis(),
            ],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    pub(super) async fn take_active_upload(
        &self,
        device_key: &str,
        correlation_id: &str,
    ) -> Result<Option<ActiveUpload>, HubStoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "DELETE FROM file_uploads WHERE hub = $1 AND correlation_id = $2 AND device = $3 \
                 RETURNING blob_name, expires",
                &[&self.hub, &correlation_id, &device_key],
            )
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let expires: i64 = row.try_get(1).map_err(backend)?;
        Ok(Some(ActiveUpload {
            correlation_id: correlation_id.to_string(),
            device_key: device_key.to_string(),
            blob_name: row.try_get(0).map_err(backend)?,
            expires: Utc
                .timestamp_millis_opt(expires)
                .single()
                .ok_or_else(|| HubStoreError::backend(format!("file upload expiry {expires} is out of range")))?,
        }))
    }

    pub(super) async fn expire_active_uploads(&self, before: DateTime<Utc>) -> Result<u64, HubStoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM file_uploads WHERE hub = $1 AND expires <= $2",
                &[&self.hub, &before.timestamp_millis()],
            )
            .await
            .map_err(backend)
    }
}
