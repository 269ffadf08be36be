//! [`MemoryHubStore`]: the [`HubStore`] that keeps devices in a sorted map in memory.

use std::collections::BTreeMap;
use std::ops::Bound;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{device_key, C2dRecord, DeviceCounts, DeviceRecord, FeedbackRecord, HubStore, HubStoreError, QueueChange};

/// A [`HubStore`] in memory: nothing survives the process. For tests, fuzzing and demos, and the
/// store [`crate::Hub::open`] uses. Key order is a `BTreeMap`'s, which is byte order of the
/// lower-cased ids, the same as SQLite's default collation, so pages match the SQLite store's.
#[derive(Default)]
pub struct MemoryHubStore {
    devices: RwLock<BTreeMap<String, DeviceRecord>>,
    queues: RwLock<Queues>,
}

/// Cloud-to-device messages and feedback, by key.
#[derive(Default)]
struct Queues {
    c2d: BTreeMap<u64, C2dRecord>,
    feedback: BTreeMap<u64, FeedbackRecord>,
}

/// Shows how many devices, never the records: they hold the devices' keys, and the hub's own
/// `Debug` (logged at open) shows its store.
impl std::fmt::Debug for MemoryHubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHubStore")
            .field("devices", &self.devices.read().len())
            .finish()
    }
}

impl MemoryHubStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl HubStore for MemoryHubStore {
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, HubStoreError> {
        Ok(self.devices.read().get(&device_key(device_id)).cloned())
    }

    async fn put_device(&self, record: &DeviceRecord) -> Result<(), HubStoreError> {
        self.devices.write().insert(record.key(), record.clone());
        Ok(())
    }

    async fn delete_device(&self, device_id: &str) -> Result<(), HubStoreError> {
        let key = device_key(device_id);
        self.devices.write().remove(&key);
        self.queues.write().c2d.retain(|_, m| device_key(&m.device_id) != key);
        Ok(())
    }

    async fn list_devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceRecord>, HubStoreError> {
        let start = match after {
            Some(a) => Bound::Excluded(device_key(a)),
            None => Bound::Unbounded,
        };
        Ok(self
            .devices
            .read()
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn count_devices(&self) -> Result<DeviceCounts, HubStoreError> {
        let devices = self.devices.read();
        let enabled = devices.values().filter(|r| r.is_enabled()).count() as u64;
        let total = devices.len() as u64;
        Ok(DeviceCounts {
            total,
            enabled,
            disabled: total - enabled,
        })
    }

    async fn update_queues(&self, change: &QueueChange) -> Result<(), HubStoreError> {
        let mut q = self.queues.write();
        for m in &change.put_c2d {
            q.c2d.insert(m.seq, m.clone());
        }
        for seq in &change.delete_c2d {
            q.c2d.remove(seq);
        }
        for f in &change.put_feedback {
            q.feedback.insert(f.seq, f.clone());
        }
        for seq in &change.delete_feedback {
            q.feedback.remove(seq);
        }
        Ok(())
    }

    async fn load_queues(&self) -> Result<(Vec<C2dRecord>, Vec<FeedbackRecord>), HubStoreError> {
        let q = self.queues.read();
        Ok((
            q.c2d.values().cloned().collect(),
            q.feedback.values().cloned().collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_hub_store_passes_conformance() {
        super::super::conformance::run_all(&MemoryHubStore::new()).await;
    }
}
