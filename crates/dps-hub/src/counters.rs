//! What passed through this node's hub since it opened: the counts an operator's metrics rate
//! (`dps_hub_messages_total` in the server's `/metrics`). Atomics, one add per message; on a
//! cluster each node counts what it handled.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Hub;

/// The hub's message counts since it opened, on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubCounters {
    /// Device-to-cloud messages stored (telemetry, from devices and modules, over any
    /// transport).
    pub telemetry_in: u64,
    /// Cloud-to-device messages the service sent (queued for a device).
    pub c2d_sent: u64,
    /// Direct-method calls the service made through this node.
    pub methods_invoked: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) telemetry_in: AtomicU64,
    pub(crate) c2d_sent: AtomicU64,
    pub(crate) methods_invoked: AtomicU64,
}

impl Counters {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// How many cloud-to-device messages the hub holds for its devices (queued, or delivered
    /// and not settled): what its store holds, whichever node queued them.
    pub async fn c2d_queued(&self) -> Result<u64, crate::store::HubStoreError> {
        self.inner.store.count_c2d().await
    }

    /// The message counts since this node opened the hub.
    pub fn counters(&self) -> HubCounters {
        let c = &self.inner.counters;
        HubCounters {
            telemetry_in: c.telemetry_in.load(Ordering::Relaxed),
            c2d_sent: c.c2d_sent.load(Ordering::Relaxed),
            methods_invoked: c.methods_invoked.load(Ordering::Relaxed),
        }
    }
}
