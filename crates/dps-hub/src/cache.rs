//! The bounded, sharded map of device slots: the hub keeps a [`Slot`] only for devices it has
//! reason to hold (decision 0014).
//!
//! A slot is *resident* — never evicted — while anyone holds it (a live [`crate::DeviceSession`],
//! a writer holding its lock, a reader loading it, a direct-method call waiting on it) or while its
//! live state matters (a connected session, cloud-to-device messages queued for the device while
//! it is offline). Other slots are a cache of stored records: once a shard holds more than its
//! share of the bound, the oldest idle slots that were not read since the last sweep are dropped
//! (CLOCK, the "second chance" approximation of LRU). The store stays the truth, so dropping a
//! slot loses nothing a later read cannot load again.
//!
//! Shards, each behind its own short (never awaited) mutex, keep the connect and register paths
//! free of a hub-wide lock.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::Slot;

/// Slots per shard below which sharding buys nothing (small bounds, e.g. in tests, get one shard
/// and so an exact bound).
const SHARD_SIZE: usize = 1024;
/// Most shards: enough that two cores never wait on each other's shard in practice.
const MAX_SHARDS: usize = 64;
/// Most slots one insert examines while evicting, so an insert into a shard full of resident
/// slots stays cheap (the shard then exceeds its share until they go idle).
const MAX_SCAN: usize = 256;

pub(crate) struct SlotCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    shard_capacity: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Arc<Slot>>,
    /// Eviction order (oldest first). Entries whose slot left the map are skipped and compacted
    /// away; a `Weak` so that the queue does not itself keep a slot resident.
    order: VecDeque<(String, Weak<Slot>)>,
}

impl SlotCache {
    /// A cache that keeps about `capacity` idle slots (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let shards = (capacity / SHARD_SIZE).clamp(1, MAX_SHARDS);
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            shard_capacity: capacity.div_ceil(shards),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[i]
    }

    /// The slot of `key`, created (unloaded) when absent. Creating one may evict idle slots of the
    /// same shard.
    pub(crate) fn get_or_insert(&self, key: &str) -> Arc<Slot> {
        let mut shard = self.shard(key).lock();
        if let Some(slot) = shard.map.get(key) {
            slot.touched.store(true, Ordering::Relaxed);
            return slot.clone();
        }
        let slot = Arc::new(Slot::new());
        shard.map.insert(key.to_string(), slot.clone());
        shard.order.push_back((key.to_string(), Arc::downgrade(&slot)));
        shard.evict(self.shard_capacity);
        slot
    }

    /// The slot of `key` if held, without creating one or counting it as a read.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Slot>> {
        self.shard(key).lock().map.get(key).cloned()
    }

    /// Removes `key`'s slot if it is still `slot` (a retired slot; a newer one stays).
    pub(crate) fn remove_if_same(&self, key: &str, slot: &Arc<Slot>) {
        let mut shard = self.shard(key).lock();
        if shard.map.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            shard.map.remove(key);
        }
    }

    /// Slots held now (resident and cached).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Every held slot with its key, copied out shard by shard (no shard lock held while the
    /// caller works through them).
    pub(crate) fn entries(&self) -> Vec<(String, Arc<Slot>)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.lock().map.iter().map(|(k, s)| (k.clone(), s.clone())));
        }
        all
    }

    /// Every held slot, for counts over live state. Copied out shard by shard so that no shard
    /// lock is held while the caller inspects them.
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.lock().map.values().cloned());
        }
        all
    }
}

impl Shard {
    fn evict(&mut self, capacity: usize) {
        let Shard { map, order } = self;
        // Two passes over the queue find an idle slot if there is one (the first pass clears the
        // second-chance marks).
        let mut budget = (2 * order.len()).min(MAX_SCAN);
        while map.len() > capacity && budget > 0 {
            budget -= 1;
            let Some((key, weak)) = order.pop_front() else { break };
            let Some(slot) = weak.upgrade() else { continue };
            if !map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                continue;
            }
            let touched = slot.touched.swap(false, Ordering::Relaxed);
            // Two strong references: the map's and `slot` here. Any other holder makes it resident;
            // holders clone only from the map, under this shard's lock, so none appears meanwhile.
            if !touched && Arc::strong_count(&slot) == 2 && slot.is_idle() {
                map.remove(&key);
                continue;
            }
            order.push_back((key, weak));
        }
        if order.len() > 2 * map.len() + 64 {
            order.retain(|(k, w)| {
                w.upgrade()
                    .is_some_and(|s| map.get(k).is_some_and(|m| Arc::ptr_eq(m, &s)))
            });
        }
    }
}
