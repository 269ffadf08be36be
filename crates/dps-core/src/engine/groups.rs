//! An in-memory snapshot of the symmetric-key enrollment groups.
//!
//! A symmetric-key device does not name its group: the engine must find the group whose derived
//! key validates the device's signature. Reading every group from the store on every registration
//! would put a scan on the hot path, so the engine keeps a snapshot (Azure allows at most 100
//! groups per attestation type) and replaces it after every group write it makes.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_proto::model::service::{AttestationType, EnrollmentGroup};
use parking_lot::RwLock;

use crate::store::Store;
use crate::ApiError;

/// A group with its keys decoded once.
pub(crate) struct CachedGroup {
    pub group: EnrollmentGroup,
    /// Raw primary/secondary group keys (symmetric-key groups only).
    pub keys: Vec<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct GroupCache {
    snapshot: RwLock<Arc<Vec<CachedGroup>>>,
}

impl GroupCache {
    pub(crate) async fn reload(&self, store: &dyn Store) -> Result<(), ApiError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_groups(after.as_deref(), 500).await?;
            let done = page.len() < 500;
            after = page.last().map(|g| g.enrollment_group_id.clone());
            all.extend(page);
            if done {
                break;
            }
        }
        let cached = all
            .into_iter()
            .map(|group| {
                let keys = match (&group.attestation.kind, &group.attestation.symmetric_key) {
                    (AttestationType::SymmetricKey, Some(sk)) => [&sk.primary_key, &sk.secondary_key]
                        .into_iter()
                        .flatten()
                        .filter_map(|k| B64.decode(k).ok())
                        .collect(),
                    _ => Vec::new(),
                };
                CachedGroup { group, keys }
            })
            .collect();
        *self.snapshot.write() = Arc::new(cached);
        Ok(())
    }

    pub(crate) fn snapshot(&self) -> Arc<Vec<CachedGroup>> {
        self.snapshot.read().clone()
    }
}
