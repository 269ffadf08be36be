//! The consumer groups of the hub's Event Hub-compatible endpoint: `$Default`, built in, and the
//! ones an operator creates (`dps hub consumer-group create`, the REST resource, or the
//! `event-hub-consumer-groups` setting). Created groups are stored, so they outlive a restart.
//!
//! A consumer group only names an independent reader of the partitions here: the hub keeps no
//! per-group position (Event Hubs consumers keep their own checkpoints), so a group is just a
//! name the endpoint accepts in `{event hub}/ConsumerGroups/{group}/Partitions/{n}`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dps_proto::event_hubs::{valid_consumer_group_name, DEFAULT_CONSUMER_GROUP, MAX_CONSUMER_GROUPS};
use serde::{Deserialize, Serialize};

use crate::error::ConsumerGroupError;
use crate::Hub;

/// One consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroup {
    /// The name, as it was created (groups are matched case-insensitively).
    pub name: String,
    /// When it was created; `None` for `$Default`, which always exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
}

impl ConsumerGroup {
    /// The storage key: the lower-cased name.
    pub fn key(&self) -> String {
        self.name.to_ascii_lowercase()
    }
}

/// The created groups, by key (`$Default` is not among them).
pub(crate) type Groups = BTreeMap<String, ConsumerGroup>;

impl Hub {
    /// Every consumer group: `$Default` first, then the created ones by name.
    pub fn consumer_groups(&self) -> Vec<ConsumerGroup> {
        let mut all = vec![default_group()];
        all.extend(self.inner.consumer_groups.read().values().cloned());
        all
    }

    /// The consumer group called `name` (case-insensitive), if there is one.
    pub fn consumer_group(&self, name: &str) -> Option<ConsumerGroup> {
        if name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP) {
            return Some(default_group());
        }
        self.inner
            .consumer_groups
            .read()
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// Creates the consumer group `name`, durably; a group that exists is returned as it is
    /// (creating is idempotent, as Azure's `PUT` of a consumer group is).
    pub async fn create_consumer_group(&self, name: &str) -> Result<ConsumerGroup, ConsumerGroupError> {
        // Changes are rare: one at a time keeps the check, the write and the map in step.
        let _one = self.inner.consumer_group_writes.lock().await;
        if let Some(existing) = self.consumer_group(name) {
            return Ok(existing);
        }
        if !valid_consumer_group_name(name) {
            return Err(ConsumerGroupError::InvalidName { name: name.to_string() });
        }
        if self.inner.consumer_groups.read().len() + 1 >= MAX_CONSUMER_GROUPS {
            return Err(ConsumerGroupError::TooMany {
                limit: MAX_CONSUMER_GROUPS,
            });
        }
        let group = ConsumerGroup {
            name: name.to_string(),
            created: Some(self.inner.now()),
        };
        self.inner.store.put_consumer_group(&group).await?;
        self.inner.consumer_groups.write().insert(group.key(), group.clone());
        Ok(group)
    }

    /// Deletes the consumer group `name` (case-insensitive), durably. Readers attached through it
    /// keep reading until they detach; new ones are refused.
    pub async fn delete_consumer_group(&self, name: &str) -> Result<(), ConsumerGroupError> {
        if name.eq_ignore_ascii_case(DEFAULT_CONSUMER_GROUP) {
            return Err(ConsumerGroupError::Default);
        }
        let key = name.to_ascii_lowercase();
        let _one = self.inner.consumer_group_writes.lock().await;
        if !self.inner.consumer_groups.read().contains_key(&key) {
            return Err(ConsumerGroupError::NotFound { name: name.to_string() });
        }
        self.inner.store.delete_consumer_group(&key).await?;
        self.inner.consumer_groups.write().remove(&key);
        Ok(())
    }

    /// Reads the groups again after another node changed them (decision 0031); a store that
    /// cannot be read now keeps the ones known, with a warning.
    pub(crate) async fn reload_consumer_groups(&self) {
        let _one = self.inner.consumer_group_writes.lock().await;
        if let Err(e) = self.load_consumer_groups().await {
            tracing::warn!(error = %e, "consumer groups changed by another node not read");
        }
    }

    /// Reads the stored groups (at open).
    pub(crate) async fn load_consumer_groups(&self) -> Result<(), crate::store::HubStoreError> {
        let stored = self.inner.store.list_consumer_groups().await?;
        *self.inner.consumer_groups.write() = stored.into_iter().map(|g| (g.key(), g)).collect();
        Ok(())
    }
}

fn default_group() -> ConsumerGroup {
    ConsumerGroup {
        name: DEFAULT_CONSUMER_GROUP.to_string(),
        created: None,
    }
}
