//! The engine: one instance per service, shared by every transport and the service API.

mod certificates;
mod device;
mod groups;
mod recovery;
mod service;
mod tpm;
mod x509;

use std::sync::Arc;

use dps_proto::model::device::RegistrationOperationStatus;
use dps_proto::model::service::AllocationPolicy;

use crate::hub::HubRegistry;
use crate::store::Store;

pub use device::{Authenticated, Credential, DeviceRequest};
pub use recovery::Recovery;
pub use service::Page;
pub use tpm::{CHALLENGE_TTL_SECS, KEY_NAME};

/// A hub devices can be assigned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedHub {
    /// Host name devices connect to (the `assignedHub` value).
    pub host_name: String,
    /// Relative weight for hashed allocation (1..=1000).
    pub allocation_weight: u32,
    /// Whether policy-based allocation may pick this hub.
    pub apply_allocation_policy: bool,
}

impl LinkedHub {
    /// A hub with weight 1 that allocation policies may pick: what a hub linked without options
    /// is in Azure.
    pub fn new(host_name: impl Into<String>) -> Self {
        Self {
            host_name: host_name.into(),
            allocation_weight: 1,
            apply_allocation_policy: true,
        }
    }
}

/// Static configuration of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The service's ID scope, e.g. `0ne0012AB34`.
    pub id_scope: String,
    /// Hubs devices may be assigned to.
    pub linked_hubs: Vec<LinkedHub>,
    /// Allocation policy for enrollments that set none.
    pub default_allocation: AllocationPolicy,
    /// `retry-after` seconds sent while an operation is `assigning`.
    pub retry_after_secs: u32,
    /// Answer a register request with its final state (`200 assigned`) instead of Azure's
    /// `202 assigning` + poll. Every official SDK accepts a final status in the register reply
    /// (device-protocol.md §2.7), and since this engine assigns before it replies, the poll only
    /// costs a round trip — and two seconds on the Python SDK, which waits a fixed 2 s before
    /// its first poll. Off by default so devices exercise the same polling path as with Azure.
    pub immediate_assignment: bool,
    /// Rate limits on the device API (Azure's DPS quotas), answered with `429` + retry-after.
    pub quotas: crate::quota::QuotaConfig,
}

impl EngineConfig {
    /// One linked hub, hashed allocation, retry-after 3 s, Azure's polling flow and the default
    /// quotas: `dps serve`'s configuration before its options are applied, and the usual
    /// starting point of a test.
    pub fn single_hub(id_scope: impl Into<String>, hub_host_name: impl Into<String>) -> Self {
        Self {
            id_scope: id_scope.into(),
            linked_hubs: vec![LinkedHub::new(hub_host_name)],
            default_allocation: AllocationPolicy::Hashed,
            retry_after_secs: 3,
            immediate_assignment: false,
            quotas: crate::quota::QuotaConfig::DEFAULT,
        }
    }
}

/// A device-API reply: HTTP status (202 while assigning, 200 when done), optional retry-after,
/// and the body.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceResponse {
    /// 200 or 202.
    pub status: u16,
    /// Seconds, when the device should poll again.
    pub retry_after: Option<u32>,
    /// `RegistrationOperationStatus`.
    pub body: RegistrationOperationStatus,
}

/// The provisioning engine.
pub struct Engine {
    config: EngineConfig,
    store: Arc<dyn Store>,
    hubs: Arc<dyn HubRegistry>,
    groups: groups::GroupCache,
    operations: device::OperationCache,
    tpm: tpm::ChallengeCache,
    quotas: crate::quota::Quotas,
}

impl Engine {
    /// Builds an engine. Call [`Engine::load`] before serving so caches reflect the store.
    pub fn new(config: EngineConfig, store: Arc<dyn Store>, hubs: Arc<dyn HubRegistry>) -> Self {
        let quotas = crate::quota::Quotas::new(config.quotas.clone());
        Self {
            config,
            store,
            hubs,
            groups: groups::GroupCache::default(),
            operations: device::OperationCache::default(),
            tpm: tpm::ChallengeCache::default(),
            quotas,
        }
    }

    /// Loads caches (enrollment groups) from the store and finishes the registrations a crash
    /// interrupted ([`Engine::recover_registrations`]). Call it before serving.
    pub async fn load(&self) -> Result<(), crate::Error> {
        self.groups.reload(self.store.as_ref()).await?;
        self.recover_registrations().await?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The quota state (for diagnostics and tests).
    pub fn quotas(&self) -> &crate::quota::Quotas {
        &self.quotas
    }

    /// The store (for tools such as `dps bench` that need counts).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
