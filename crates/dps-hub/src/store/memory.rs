//! [`MemoryHubStore`]: the [`HubStore`] that keeps devices in a sorted map in memory.

use std::collections::BTreeMap;
use std::ops::Bound;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{device_key, DeviceCounts, DeviceRecord, HubStore, HubStoreError};

/// A [`HubStore`] in memory: nothing survives the process. For tests, fuzzing and demos, and the
/// store [`crate::Hub::open`] uses. Key order is a `BTreeMap`'s, which is byte order of the
/// lower-cased ids, the same as SQLite's default collation, so pages match the SQLite store's.
#[derive(Default)]
pub struct MemoryHubStore {
    devices: RwLock<BTreeMap<String, DeviceRecord>>,
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
        self.devices.write().remove(&device_key(device_id));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_hub_store_passes_conformance() {
        super::super::conformance::run_all(&MemoryHubStore::new()).await;
    }
}
