//! TPM challenges in the database (store migration 3), so that the device's signed registration
//! (and its polls) may reach another node than its challenge request did (decision 0031). The
//! engine verifies the token against each unexpired key and spends the one that signed it; the
//! node whose UPDATE marks the row spent is the one that spent it.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use dps_core::store::StoredTpmChallenge;
use dps_core::StoreError;

use super::{backend, PostgresStore};

/// Every this many challenges a node stores, it also drops every registration's expired ones
/// (a registration's own are dropped whenever it asks again).
const SWEEP_EVERY: u64 = 256;

/// Challenges this node has stored, for [`SWEEP_EVERY`].
static STORED: AtomicU64 = AtomicU64::new(0);

impl PostgresStore {
    pub(super) async fn put_challenge(
        &self,
        now: DateTime<Utc>,
        c: &StoredTpmChallenge,
        keep: usize,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let now = now.timestamp_millis();
        // Drop the registration's expired challenges and all but its newest `keep - 1`, then
        // add this one: one statement, so two nodes asking at once keep at most `keep` each.
        let keep_others = i64::try_from(keep.saturating_sub(1)).unwrap_or(i64::MAX);
        let stmt = client
            .prepare_cached(
                "WITH dropped AS (
                     DELETE FROM tpm_challenges WHERE registration_key = $1 AND (expires <= $6 OR id NOT IN (
                         SELECT id FROM tpm_challenges WHERE registration_key = $1 AND expires > $6
                         ORDER BY id DESC LIMIT $7))
                 )
                 INSERT INTO tpm_challenges (registration_key, key, ek, srk, expires) VALUES ($1, $2, $3, $4, $5)",
            )
            .await
            .map_err(backend)?;
        let key: &[u8] = &c.key;
        client
            .execute(
                &stmt,
                &[
                    &c.registration_key,
                    &key,
                    &c.ek,
                    &c.srk,
                    &c.expires.timestamp_millis(),
                    &now,
                    &keep_others,
                ],
            )
            .await
            .map_err(backend)?;
        if STORED.fetch_add(1, Ordering::Relaxed).is_multiple_of(SWEEP_EVERY) {
            client
                .execute("DELETE FROM tpm_challenges WHERE expires <= $1", &[&now])
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    pub(super) async fn challenges(
        &self,
        now: DateTime<Utc>,
        registration_key: &str,
    ) -> Result<Vec<StoredTpmChallenge>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, key, ek, srk, expires, spent FROM tpm_challenges
                 WHERE registration_key = $1 AND expires > $2 ORDER BY id",
            )
            .await
            .map_err(backend)?;
        let rows = client
            .query(&stmt, &[&registration_key, &now.timestamp_millis()])
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let expires: i64 = row.try_get(4).map_err(backend)?;
                Ok(StoredTpmChallenge {
                    id: row.try_get(0).map_err(backend)?,
                    registration_key: registration_key.to_string(),
                    key: zeroize::Zeroizing::new(row.try_get(1).map_err(backend)?),
                    ek: row.try_get(2).map_err(backend)?,
                    srk: row.try_get(3).map_err(backend)?,
                    expires: Utc.timestamp_millis_opt(expires).single().ok_or_else(|| {
                        StoreError::backend(format!("TPM challenge expiry {expires} is out of range"))
                    })?,
                    spent: row.try_get(5).map_err(backend)?,
                })
            })
            .collect()
    }

    pub(super) async fn spend_challenge(&self, id: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("UPDATE tpm_challenges SET spent = true WHERE id = $1 AND NOT spent")
            .await
            .map_err(backend)?;
        Ok(client.execute(&stmt, &[&id]).await.map_err(backend)? == 1)
    }
}
