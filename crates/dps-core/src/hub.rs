//! The contract between the engine and the IoT hubs it assigns devices to. The embedded hub
//! (`dps-hub`) implements it in-process; a linked external hub would implement it over the hub's
//! registry REST API.

use async_trait::async_trait;
use dps_proto::model::service::{DeviceCapabilities, InitialTwin, LinkedHubDescription};
use serde::{Deserialize, Serialize};

use crate::cause::Cause;

/// How the hub authenticates the device. Serializable because a registration intent carries it
/// (decision 0009).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum DeviceAuth {
    /// SAS with these base64 keys (symmetric key and TPM devices).
    Sas {
        /// Primary key.
        primary_key: String,
        /// Secondary key.
        secondary_key: String,
    },
    /// X.509 `selfSigned` with upper-case hex thumbprints (what Azure DPS creates for X.509 devices).
    SelfSigned {
        /// Primary thumbprint.
        primary_thumbprint: String,
        /// Secondary thumbprint.
        secondary_thumbprint: String,
    },
}

/// What to do with the twin of a device that already exists in the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TwinPolicy {
    /// Keep the existing twin (re-registration with data migration / same hub).
    Keep,
    /// Replace tags and desired properties with the enrollment's initial twin (reset policy).
    Reset,
}

/// The device identity the engine wants in a hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProvisioning {
    /// Hub device id.
    pub device_id: String,
    /// How the device will authenticate to the hub.
    pub auth: DeviceAuth,
    /// Capabilities from the enrollment.
    pub capabilities: DeviceCapabilities,
    /// The enrollment's initial twin, applied to new devices (and on `Reset`).
    pub initial_twin: Option<InitialTwin>,
    /// For devices that already exist.
    pub twin_policy: TwinPolicy,
    /// The DPS operation writing this identity: an idempotency key. Start-up recovery repeats the
    /// upsert of a registration a crash interrupted (decision 0009), and the hub must then answer
    /// as it did the first time — in particular `created: true` for a device that this same
    /// operation created.
    pub operation_id: String,
    /// The credential policy that issued the certificate `auth` names, when the device
    /// registered with a CSR: the hub renews the certificate under the same policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_policy: Option<String>,
}

/// A certificate issued under a credential policy, for a hub renewing a device's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The device's certificate, then the policy's CA chain: base64 DER, leaf first.
    pub chain: Vec<String>,
    /// Upper-case hex SHA-256 thumbprint of the device's certificate.
    pub sha256_thumbprint: String,
}

/// Why a certificate could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The request is not one that can be issued for (not base64 DER PKCS#10, a bad signature,
    /// an unsupported key, a CN that is not the device's); the message says which.
    #[error("{0}")]
    Request(String),
    /// The credential policy is gone (deleted since the device got its certificate).
    #[error("{0}")]
    NoPolicy(String),
    /// The store or the policy's CA failed; nothing was issued. Retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
}

/// Issues device certificates under a credential policy: the provisioning engine, for the
/// embedded hubs' certificate renewal (`$iothub/credentials/…`).
#[async_trait]
pub trait CertificateIssuer: Send + Sync + 'static {
    /// A certificate with subject CN `common_name` for the key of `csr` (base64 DER PKCS#10,
    /// whose CN must be `common_name`), under `policy`.
    async fn issue(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        policy: &str,
        common_name: &str,
        csr: &str,
    ) -> Result<IssuedCertificate, IssueError>;
}

/// A device's data in a hub that reprovisioning with `migrateDeviceData` carries to the device's
/// new hub: Azure migrates "the device's data (twin, device capabilities, and device ID)" rather
/// than applying the enrollment's initial configuration again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceData {
    /// The twin's tags and desired properties (no `$metadata`/`$version`). Reported properties are
    /// the device's own and it reports them again to its new hub.
    pub twin: InitialTwin,
    /// The device's capabilities in the hub.
    pub capabilities: DeviceCapabilities,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpsertOutcome {
    /// True when the device identity did not exist before this operation (also when an earlier
    /// attempt of the same operation created it).
    pub created: bool,
}

/// Why a hub refused or failed an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The engine named a hub this registry does not serve.
    #[error("unknown IoT hub '{0}'")]
    UnknownHub(String),
    /// The hub refused the device (e.g. an existing identity is disabled).
    #[error("IoT hub refused device '{device_id}': {reason}")]
    Refused {
        /// Device id.
        device_id: String,
        /// Why: the hub's rule the device breaks (e.g. its twin's), or its state.
        #[source]
        reason: Cause,
    },
    /// The hub could not be reached or failed; nothing was changed.
    #[error("IoT hub failure: {0}")]
    Unavailable(#[source] Cause),
}

impl HubError {
    /// The hub could not be reached or failed because of `e` (its storage's or transport's own
    /// error).
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        HubError::Unavailable(Cause::new(e))
    }
}

/// A set of hubs devices can be assigned to.
#[async_trait]
pub trait HubRegistry: Send + Sync + 'static {
    /// Creates the device identity in `hub`, or updates its authentication and capabilities if it
    /// exists (applying `twin_policy`). Durable when it returns. Idempotent per
    /// [`DeviceProvisioning::operation_id`]: repeating an operation's upsert changes nothing more
    /// and reports the same outcome. An error means nothing was changed.
    async fn upsert_device(&self, hub: &str, device: &DeviceProvisioning) -> Result<UpsertOutcome, HubError>;
    /// Removes a device identity (after migrating the device to another hub). Absent is not an error.
    async fn delete_device(&self, hub: &str, device_id: &str) -> Result<(), HubError>;
    /// The data a migration carries from `hub` to another hub; `None` when `hub` holds no such
    /// device. Changes nothing.
    async fn device_data(&self, hub: &str, device_id: &str) -> Result<Option<DeviceData>, HubError>;

    /// Makes the linked hub `hub` usable by the calls above, before the engine assigns devices
    /// to it: a registry of in-process hubs has nothing to do (the default); one that reaches
    /// hubs over the network opens a client with the hub's connection string and CA. An error
    /// refuses the link (and says why: an unusable CA certificate, a hub it cannot serve).
    async fn link(&self, hub: &LinkedHubDescription) -> Result<(), HubError> {
        let _ = hub;
        Ok(())
    }

    /// Forgets a hub that was unlinked.
    async fn unlink(&self, hub: &str) {
        let _ = hub;
    }

    /// The name a hub goes by now when `hub` is another name of it (a name it had before a
    /// rename); `None` when `hub` is already its name or no hub answers to it (the default).
    /// A device assigned under a former name is then the same hub's device: re-registering it
    /// must not migrate it from its own hub to itself.
    fn current_name(&self, hub: &str) -> Option<String> {
        let _ = hub;
        None
    }
}
