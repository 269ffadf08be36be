//! Spent single-use tokens in the database (store migration 7): the portal's one-time sign-in
//! links are spent once for the whole cluster, not once per node. The node whose INSERT adds
//! the nonce is the one that spent it.

use chrono::{DateTime, Utc};
use dps_core::StoreError;

use super::{backend, PostgresStore};

impl PostgresStore {
    pub(super) async fn spend(
        &self,
        now: DateTime<Utc>,
        nonce: &str,
        expires: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        // Expired nonces go in the same statement: their tokens are refused anyway, and links
        // are rare enough that the sweep costs nothing.
        let stmt = client
            .prepare_cached(
                "WITH swept AS (DELETE FROM spent_nonces WHERE expires <= $3)
                 INSERT INTO spent_nonces (nonce, expires) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING",
            )
            .await
            .map_err(backend)?;
        let added = client
            .execute(&stmt, &[&nonce, &expires.timestamp_millis(), &now.timestamp_millis()])
            .await
            .map_err(backend)?;
        Ok(added == 1)
    }
}
