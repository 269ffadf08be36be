//! [`AbsentEnrollments`]: the registration ids this engine knows to have no individual
//! enrollment, so that a device of an enrollment group is attested without asking the store
//! for an individual enrollment it does not have — twice per MQTT registration (at CONNECT and
//! at the register request), each a round trip to a shared store's server.
//!
//! Only absence is remembered: an individual enrollment itself is read every time (a key
//! rotated or an enrollment disabled takes effect on the next request). Absence is forgotten
//! when this engine writes or deletes the enrollment (after the write committed) and when
//! another node tells it did (`dps enrollment <key>`, [`crate::engine::StoreChange`]); a lost
//! channel to the other nodes forgets everything. So a node may, for as long as a notice takes
//! to arrive, still match a device against its group after another node created an
//! individual enrollment for it — the same as for the enrollment groups it caches.
//!
//! A read that found nothing is remembered only if nothing was forgotten since it started (a
//! generation counter, checked and the entry inserted under the key's shard lock, which a
//! forget of the same key takes too): a read overtaken by a write cannot leave a stale entry.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// Most ids remembered; when full, everything is forgotten and the cache fills again with the
/// devices registering now (each device needs it for the seconds its registration takes).
const MOST: usize = 100_000;

/// Registration keys (lower-cased ids) with no individual enrollment.
#[derive(Default)]
pub(crate) struct AbsentEnrollments {
    keys: DashMap<String, ()>,
    generation: AtomicU64,
}

impl AbsentEnrollments {
    /// Whether `key` is known to have no individual enrollment.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// What to pass to [`AbsentEnrollments::remember`] after a read that starts now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers that a read begun at `generation` found no individual enrollment for `key`,
    /// unless something was forgotten since.
    pub(crate) fn remember(&self, key: String, generation: u64) {
        if self.keys.len() >= MOST {
            self.forget_all();
            return;
        }
        let entry = self.keys.entry(key);
        if self.generation.load(Ordering::Acquire) == generation {
            entry.insert(());
        }
    }

    /// `key` may have an individual enrollment now.
    pub(crate) fn forget(&self, key: &str) {
        // The generation moves while the key's shard is locked, so a `remember` of this key
        // either inserted before (and its entry goes here) or checks after (and inserts nothing).
        match self.keys.entry(key.to_string()) {
            dashmap::Entry::Occupied(entry) => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                entry.remove();
            }
            dashmap::Entry::Vacant(_) => {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Any key may have one now.
    pub(crate) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_overtaken_by_a_forget_is_not_remembered() {
        let a = AbsentEnrollments::default();
        let g = a.generation();
        a.remember("dev".into(), g);
        assert!(a.contains("dev"));
        a.forget("dev");
        assert!(!a.contains("dev"));

        let started = a.generation();
        a.forget("other");
        a.remember("dev".into(), started);
        assert!(!a.contains("dev"), "a write came between the read and its result");

        let g = a.generation();
        a.remember("dev".into(), g);
        a.forget_all();
        assert!(!a.contains("dev"));
    }
}
