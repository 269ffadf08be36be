//! The engine: one instance per service, shared by every transport and the service API.

mod absent;
mod attestation;
mod certificates;
mod credential_policies;
mod custom_allocation;
mod device;
mod geo;
mod groups;
mod issuance;
mod linked_hubs;
mod observe;
mod recovery;
mod revocations;
mod service;
mod tpm;
mod x509;

use std::sync::Arc;

use dps_proto::model::device::RegistrationOperationStatus;
use dps_proto::model::service::AllocationPolicy;

use crate::hub::HubRegistry;
use crate::random::{Random, SystemRandom};
use crate::store::Store;

pub use attestation::{Credential, DeviceRequest, CHALLENGE_TTL_SECS};
pub use custom_allocation::AllocationWebhook;
pub use device::{Authenticated, REGISTRATION_SPAN_TARGET};
pub use geo::GeoConfig;
pub use linked_hubs::MAX_LINKED_HUBS;
pub use observe::{Observer, RegistrationAttempt, Transport};

/// What another node changed in a store several nodes share (decision 0031), as this node
/// hears of it ([`Engine::store_changed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreChange {
    /// An enrollment group or a CA certificate was written or deleted.
    GroupsOrCertificates,
    /// A hub was linked, changed or unlinked.
    LinkedHubs,
    /// Revoked certificates were added or removed.
    Revocations,
    /// The individual enrollment with this registration key (lower-cased id) was written or
    /// deleted.
    Enrollment(String),
    /// Changes may have been missed (the channel to the other nodes was lost).
    Resync,
}
pub use recovery::Recovery;
pub use service::Page;
pub use tpm::KEY_NAME;

/// A hub devices can be assigned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedHub {
    /// Host name devices connect to (the `assignedHub` value).
    pub host_name: String,
    /// Relative weight for hashed allocation (1..=1000).
    pub allocation_weight: u32,
    /// Whether policy-based allocation may pick this hub.
    pub apply_allocation_policy: bool,
    /// The hub's region (`geoLatency`).
    pub location: Option<String>,
}

impl LinkedHub {
    /// A hub with weight 1 that allocation policies may pick: what a hub linked without options
    /// is in Azure.
    pub fn new(host_name: impl Into<String>) -> Self {
        Self {
            host_name: host_name.into(),
            allocation_weight: 1,
            apply_allocation_policy: true,
            location: None,
        }
    }

    /// The engine's view of a linked hub's settings (absent weight 1, absent policy flag true,
    /// as Azure reads them).
    pub fn from_description(d: &dps_proto::model::service::LinkedHubDescription) -> Self {
        Self {
            host_name: d.name.clone(),
            allocation_weight: d.allocation_weight.unwrap_or(1),
            apply_allocation_policy: d.apply_allocation_policy.unwrap_or(true),
            location: d.location.clone(),
        }
    }
}

/// Static configuration of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The service's ID scope, e.g. `0ne0012AB34`.
    pub id_scope: String,
    /// Hubs devices may be assigned to when the store links none (tests, and a server before
    /// its first start has linked its embedded hub); hubs linked through the service API
    /// ([`Engine::put_linked_hub`]) replace them.
    pub linked_hubs: Vec<LinkedHub>,
    /// Allocation policy for enrollments that set none.
    pub default_allocation: AllocationPolicy,
    /// Where devices and hubs are, for `geoLatency` allocation.
    pub geo: GeoConfig,
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
    /// On a store several nodes share: how old a stored intent must be before a node other than
    /// the one that stored it finishes it ([`Engine::recover_stale_registrations`]). Longer than
    /// any registration takes on a live node.
    pub interrupted_registration_age: std::time::Duration,
    /// Where the credential policies' revocation lists are served (`https://host:port/crl`):
    /// certificates issued at registration name `{base}/{policy}` as their CRL distribution
    /// point. `None`: they name none.
    pub crl_base_url: Option<String>,
    /// TPM manufacturers' root certificates (DER): a TPM enrolled by its endorsement key
    /// certificate is accepted only when the certificate chains to one of them. Empty: EK
    /// certificates are taken as given.
    pub tpm_manufacturer_roots: Vec<Vec<u8>>,
}

/// [`EngineConfig::interrupted_registration_age`] by default: a registration's hub write and
/// commit take milliseconds, and every request a node serves ends within its request deadline
/// (30 s by default).
pub const INTERRUPTED_REGISTRATION_AGE: std::time::Duration = std::time::Duration::from_secs(60);

impl EngineConfig {
    /// One linked hub, hashed allocation, retry-after 3 s, Azure's polling flow and the default
    /// quotas: `dps serve`'s configuration before its options are applied, and the usual
    /// starting point of a test.
    pub fn single_hub(id_scope: impl Into<String>, hub_host_name: impl Into<String>) -> Self {
        Self {
            id_scope: id_scope.into(),
            linked_hubs: vec![LinkedHub::new(hub_host_name)],
            default_allocation: AllocationPolicy::Hashed,
            geo: GeoConfig::default(),
            retry_after_secs: 3,
            immediate_assignment: false,
            quotas: crate::quota::QuotaConfig::DEFAULT,
            interrupted_registration_age: INTERRUPTED_REGISTRATION_AGE,
            crl_base_url: None,
            tpm_manufacturer_roots: Vec::new(),
        }
    }
}

/// What a register request led to, decided by the engine once for every transport: the adapter
/// formats it (HTTPS: the status and JSON body; MQTT: the response topic's status and payload)
/// and decides nothing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Registered {
    /// The registration is committed and the device polls `operation.operation_id` after
    /// `retry_after` seconds (HTTP `202`, status `assigning`): Azure's flow.
    Assigning {
        /// `RegistrationOperationStatus` with status `assigning`.
        operation: RegistrationOperationStatus,
        /// Seconds before the first poll.
        retry_after: u32,
    },
    /// The final state, answered at once (HTTP `200`): with
    /// [`EngineConfig::immediate_assignment`], whether the registration was assigned, failed or
    /// found its enrollment disabled.
    Done(RegistrationOperationStatus),
    /// A register request without a credential that carried TPM keys: the first step of TPM
    /// attestation (device-protocol.md §7.2), answered as HTTP `401` with this body. The device
    /// activates the blob and registers again with a SAS its TPM signed.
    TpmChallenge(dps_proto::model::device::TpmChallenge),
}

impl Registered {
    /// The status the transports answer: `202`, `200`, or `401` for the TPM challenge.
    pub fn status(&self) -> u16 {
        match self {
            Registered::Assigning { .. } => 202,
            Registered::Done(_) => 200,
            Registered::TpmChallenge(_) => 401,
        }
    }

    /// Seconds the device should wait before polling, while assigning.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Registered::Assigning { retry_after, .. } => Some(*retry_after),
            Registered::Done(_) | Registered::TpmChallenge(_) => None,
        }
    }

    /// The operation status, unless this is a TPM challenge.
    pub fn operation(&self) -> Option<&RegistrationOperationStatus> {
        match self {
            Registered::Assigning { operation, .. } | Registered::Done(operation) => Some(operation),
            Registered::TpmChallenge(_) => None,
        }
    }
}

/// The body every transport sends: the operation status, or the TPM challenge.
impl serde::Serialize for Registered {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Registered::Assigning { operation, .. } | Registered::Done(operation) => operation.serialize(serializer),
            Registered::TpmChallenge(challenge) => challenge.serialize(serializer),
        }
    }
}

/// A poll's reply: HTTP status (200), optional retry-after, and the body.
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
    /// The hubs allocation picks from: read (without a lock) by every registration, replaced
    /// whole when a hub is linked, changed or unlinked.
    linked: arc_swap::ArcSwap<Vec<LinkedHub>>,
    /// Sends custom allocation requests; `None`: custom allocation fails (400208).
    webhook: Option<Arc<dyn AllocationWebhook>>,
    groups: groups::GroupCache,
    /// Registration ids known to have no individual enrollment.
    absent: absent::AbsentEnrollments,
    operations: device::OperationCache,
    tpm: tpm::ChallengeCache,
    /// Credential policies' CAs, loaded once per policy version.
    issuers: issuance::IssuerCache,
    /// Revoked certificates, read by X.509 attestation and the embedded hubs.
    revocations: Arc<crate::revocation::RevocationSet>,
    /// Credential policies' revocation lists as last served.
    served_crls: revocations::ServedCrls,
    quotas: crate::quota::Quotas,
    random: Arc<dyn Random>,
    /// Told of every registration attempt and throttled request ([`Engine::set_observer`]).
    observer: std::sync::OnceLock<Arc<dyn Observer>>,
}

impl Engine {
    /// Builds an engine. Call [`Engine::load`] before serving so caches reflect the store.
    pub fn new(config: EngineConfig, store: Arc<dyn Store>, hubs: Arc<dyn HubRegistry>) -> Self {
        let quotas = crate::quota::Quotas::new(config.quotas.clone());
        Self {
            linked: arc_swap::ArcSwap::from_pointee(config.linked_hubs.clone()),
            webhook: None,
            config,
            store,
            hubs,
            groups: groups::GroupCache::default(),
            absent: absent::AbsentEnrollments::default(),
            operations: device::OperationCache::default(),
            tpm: tpm::ChallengeCache::default(),
            issuers: issuance::IssuerCache::default(),
            revocations: crate::revocation::RevocationSet::new(),
            served_crls: revocations::ServedCrls::default(),
            quotas,
            random: Arc::new(SystemRandom),
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Tells `observer` of every registration attempt and throttled request from now on (once;
    /// later calls are ignored): what the server's metrics count.
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    /// Takes randomness from `random` instead of the system's CSPRNG: with a
    /// [`SeededRandom`](crate::SeededRandom) (and time passed in, as always) the engine's answers
    /// are reproducible, which is what tests want. Never seed a serving engine.
    pub fn with_random(mut self, random: Arc<dyn Random>) -> Self {
        self.random = random;
        self
    }

    /// Calls custom allocation webhooks through `webhook` (the server's HTTPS client).
    pub fn with_webhook(mut self, webhook: Arc<dyn AllocationWebhook>) -> Self {
        self.webhook = Some(webhook);
        self
    }

    /// A fresh tracking id for an error body, from the engine's source of randomness.
    pub fn tracking_id(&self) -> String {
        crate::random::uuid(self.random.as_ref()).to_string()
    }

    /// A fresh opaque etag in the shape the real service uses: base64 of a quoted GUID.
    pub(crate) fn new_etag(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("\"{}\"", crate::random::uuid(self.random.as_ref())))
    }

    /// Loads caches (enrollment groups) from the store and finishes the registrations a crash
    /// interrupted ([`Engine::recover_registrations`]; on a shared store only those old enough
    /// to be no other node's in flight, [`Engine::recover_stale_registrations`]). Call it
    /// before serving.
    pub async fn load(&self) -> Result<(), crate::Error> {
        // First: finishing an interrupted registration may write to a linked hub.
        self.load_linked_hubs().await?;
        self.groups.reload(self.store.as_ref()).await?;
        self.reload_revocations().await?;
        if self.store.shared() {
            // Other nodes may be finishing theirs right now: only what they left long ago.
            let age = self.config.interrupted_registration_age;
            self.recover_stale_registrations(chrono::Utc::now(), age).await?;
        } else {
            self.recover_registrations().await?;
        }
        Ok(())
    }

    /// Brings this node's caches up to date with a change another node made to a store they
    /// share (decision 0031): the enrollment groups and CA certificates a registration matches
    /// against, the linked hubs allocation picks from. A store that cannot be read now leaves
    /// the cache as it was, with a warning (the next change, or resync, reads it again).
    pub async fn store_changed(&self, change: StoreChange) {
        let (groups, linked) = match change {
            StoreChange::GroupsOrCertificates => (true, false),
            StoreChange::LinkedHubs => (false, true),
            StoreChange::Enrollment(key) => {
                self.absent.forget(&key);
                return;
            }
            StoreChange::Revocations => {
                if let Err(e) = self.reload_revocations().await {
                    tracing::warn!(error = %e, "revocations changed by another node not read");
                }
                return;
            }
            StoreChange::Resync => {
                self.absent.forget_all();
                if let Err(e) = self.reload_revocations().await {
                    tracing::warn!(error = %e, "revocations not read again");
                }
                (true, true)
            }
        };
        if groups {
            if let Err(e) = self.groups.reload(self.store.as_ref()).await {
                tracing::warn!(error = %e, "enrollment groups changed by another node not read");
            }
        }
        if linked {
            if let Err(e) = self.reload_linked_hubs().await {
                tracing::warn!(error = %e, "linked hubs changed by another node not read");
            }
        }
    }

    /// The individual enrollment `id`, if any; its absence is remembered
    /// ([`absent::AbsentEnrollments`]), so a group's devices do not ask the store each time.
    pub(crate) async fn individual_enrollment(
        &self,
        id: &str,
    ) -> Result<Option<dps_proto::model::service::IndividualEnrollment>, crate::StoreError> {
        let key = dps_proto::registration_id::key(id);
        if self.absent.contains(&key) {
            return Ok(None);
        }
        let generation = self.absent.generation();
        let found = self.store.get_enrollment(id).await?;
        if found.is_none() {
            self.absent.remember(key, generation);
        }
        Ok(found)
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
