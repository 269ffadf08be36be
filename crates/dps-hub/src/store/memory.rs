//! [`MemoryHubStore`]: the [`HubStore`] that keeps devices in a sorted map in memory.

use std::collections::BTreeMap;
use std::ops::Bound;

use async_trait::async_trait;
use parking_lot::RwLock;

use std::sync::Arc;

use super::{
    device_key, module_key, C2dRecord, ConsumerGroup, DeviceCounts, DeviceJobRecord, DeviceRecord, EventStart,
    FeedbackRecord, FileNotification, HubStore, HubStoreError, JobRecord, PartitionBounds, QueueChange,
    TelemetryMessage,
};

/// A [`HubStore`] in memory: nothing survives the process. For tests, fuzzing and demos, and the
/// store [`crate::Hub::open`] uses. Key order is a `BTreeMap`'s, which is byte order of the
/// lower-cased ids, the same as SQLite's default collation, so pages match the SQLite store's.
#[derive(Default)]
pub struct MemoryHubStore {
    devices: RwLock<BTreeMap<String, DeviceRecord>>,
    /// Modules by [`super::module_key`] (so a device's modules are one key range).
    modules: RwLock<BTreeMap<String, DeviceRecord>>,
    queues: RwLock<Queues>,
    /// Telemetry by hub-wide sequence number.
    events: RwLock<BTreeMap<u64, Arc<TelemetryMessage>>>,
    consumer_groups: RwLock<BTreeMap<String, ConsumerGroup>>,
    jobs: RwLock<BTreeMap<String, JobRecord>>,
    /// Device rows of jobs by [`DeviceJobRecord::key`].
    device_jobs: RwLock<BTreeMap<String, DeviceJobRecord>>,
}

/// Cloud-to-device messages and feedback, by key.
#[derive(Default)]
struct Queues {
    c2d: BTreeMap<u64, C2dRecord>,
    feedback: BTreeMap<u64, FeedbackRecord>,
    file_notifications: BTreeMap<u64, FileNotification>,
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

/// Up to `limit` values of `map` whose key follows `after` (`None`: from the first) and that
/// `keep` accepts, in key order: every paged read of this store.
fn page_of<V: Clone>(
    map: &BTreeMap<String, V>,
    after: Option<String>,
    limit: usize,
    keep: impl Fn(&V) -> bool,
) -> Vec<V> {
    let start = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    map.range((start, Bound::Unbounded))
        .map(|(_, v)| v)
        .filter(|v| keep(v))
        .take(limit)
        .cloned()
        .collect()
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
        let prefix = format!("{key}/modules/");
        self.modules.write().retain(|k, _| !k.starts_with(&prefix));
        self.queues.write().c2d.retain(|_, m| device_key(&m.device_id) != key);
        Ok(())
    }

    async fn list_devices(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceRecord>, HubStoreError> {
        Ok(page_of(&self.devices.read(), after.map(device_key), limit, |_| true))
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

    async fn count_c2d(&self) -> Result<u64, HubStoreError> {
        Ok(self.queues.read().c2d.len() as u64)
    }

    async fn find_by_tag(
        &self,
        path: &str,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, HubStoreError> {
        let tagged = |r: &DeviceRecord| r.string_tags().iter().any(|(p, v)| p == path && v == value);
        Ok(page_of(&self.devices.read(), after.map(str::to_string), limit, tagged))
    }

    async fn get_module(&self, device_id: &str, module_id: &str) -> Result<Option<DeviceRecord>, HubStoreError> {
        Ok(self.modules.read().get(&module_key(device_id, module_id)).cloned())
    }

    async fn put_module(&self, record: &DeviceRecord) -> Result<(), HubStoreError> {
        self.modules.write().insert(record.key(), record.clone());
        Ok(())
    }

    async fn delete_module(&self, device_id: &str, module_id: &str) -> Result<(), HubStoreError> {
        self.modules.write().remove(&module_key(device_id, module_id));
        Ok(())
    }

    async fn list_modules(&self, device_id: &str) -> Result<Vec<DeviceRecord>, HubStoreError> {
        let prefix = format!("{}/modules/", device_key(device_id));
        Ok(self
            .modules
            .read()
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn list_all_modules(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceRecord>, HubStoreError> {
        Ok(page_of(&self.modules.read(), after.map(str::to_string), limit, |_| {
            true
        }))
    }

    async fn put_job(&self, job: &JobRecord) -> Result<(), HubStoreError> {
        self.jobs.write().insert(job.job_id.clone(), job.clone());
        Ok(())
    }

    async fn list_jobs(&self) -> Result<Vec<JobRecord>, HubStoreError> {
        Ok(self.jobs.read().values().cloned().collect())
    }

    async fn delete_job(&self, job_id: &str) -> Result<(), HubStoreError> {
        self.jobs.write().remove(job_id);
        let prefix = format!("{job_id}/");
        self.device_jobs.write().retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }

    async fn put_device_jobs(&self, rows: &[DeviceJobRecord]) -> Result<(), HubStoreError> {
        let mut map = self.device_jobs.write();
        for r in rows {
            map.insert(r.key(), r.clone());
        }
        Ok(())
    }

    async fn list_device_jobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeviceJobRecord>, HubStoreError> {
        Ok(page_of(
            &self.device_jobs.read(),
            after.map(str::to_string),
            limit,
            |_| true,
        ))
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
        for n in &change.put_file_notifications {
            q.file_notifications.insert(n.seq, n.clone());
        }
        for seq in &change.delete_file_notifications {
            q.file_notifications.remove(seq);
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

    async fn load_file_notifications(&self) -> Result<Vec<FileNotification>, HubStoreError> {
        Ok(self.queues.read().file_notifications.values().cloned().collect())
    }

    async fn append_events(&self, events: &[Arc<TelemetryMessage>]) -> Result<(), HubStoreError> {
        let mut stored = self.events.write();
        for e in events {
            stored.insert(e.sequence_number, e.clone());
        }
        Ok(())
    }

    async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        Ok(self
            .events
            .read()
            .values()
            .filter(|e| e.partition == partition && e.partition_sequence >= from)
            .take(limit)
            .map(|e| (**e).clone())
            .collect())
    }

    async fn find_in_partition(&self, partition: u32, start: EventStart) -> Result<Option<u64>, HubStoreError> {
        Ok(self
            .events
            .read()
            .values()
            .filter(|e| e.partition == partition)
            .find(|e| match start {
                EventStart::Offset(o) => e.sequence_number >= o,
                EventStart::EnqueuedAt(ms) => e.enqueued_time.timestamp_millis() >= ms,
            })
            .map(|e| e.partition_sequence))
    }

    async fn recent_events(
        &self,
        device_id: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TelemetryMessage>, HubStoreError> {
        let events = self.events.read();
        let wanted = |e: &&Arc<TelemetryMessage>| device_id.is_none_or(|d| e.device_id.eq_ignore_ascii_case(d));
        Ok(match after {
            Some(a) => events
                .range(a.saturating_add(1)..)
                .map(|(_, e)| e)
                .filter(wanted)
                .take(limit)
                .map(|e| (**e).clone())
                .collect(),
            None => {
                let mut newest: Vec<TelemetryMessage> = events
                    .values()
                    .rev()
                    .filter(wanted)
                    .take(limit)
                    .map(|e| (**e).clone())
                    .collect();
                newest.reverse();
                newest
            }
        })
    }

    async fn partition_bounds(&self) -> Result<Vec<PartitionBounds>, HubStoreError> {
        let mut bounds: BTreeMap<u32, PartitionBounds> = BTreeMap::new();
        for e in self.events.read().values() {
            bounds
                .entry(e.partition)
                .and_modify(|b| {
                    b.last = e.partition_sequence;
                    b.last_offset = e.sequence_number;
                    b.last_enqueued = e.enqueued_time;
                })
                .or_insert(PartitionBounds {
                    partition: e.partition,
                    first: e.partition_sequence,
                    last: e.partition_sequence,
                    last_offset: e.sequence_number,
                    last_enqueued: e.enqueued_time,
                });
        }
        Ok(bounds.into_values().collect())
    }

    async fn put_consumer_group(&self, group: &ConsumerGroup) -> Result<(), HubStoreError> {
        self.consumer_groups.write().insert(group.key(), group.clone());
        Ok(())
    }

    async fn delete_consumer_group(&self, key: &str) -> Result<(), HubStoreError> {
        self.consumer_groups.write().remove(key);
        Ok(())
    }

    async fn list_consumer_groups(&self) -> Result<Vec<ConsumerGroup>, HubStoreError> {
        Ok(self.consumer_groups.read().values().cloned().collect())
    }

    async fn trim_events(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
        max_bytes: u64,
    ) -> Result<u64, HubStoreError> {
        let mut events = self.events.write();
        let before = events.len();
        events.retain(|_, e| e.enqueued_time >= older_than);
        let mut bytes: u64 = events.values().map(|e| e.retained_bytes()).sum();
        while bytes > max_bytes {
            let Some((_, e)) = events.pop_first() else { break };
            bytes -= e.retained_bytes();
        }
        Ok((before - events.len()) as u64)
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
