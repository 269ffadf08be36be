//! Service API models (service-api.md §3): enrollments, groups, attestation, registration
//! states, bulk operations, queries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ci_enum;
use crate::timefmt;

ci_enum! {
    /// `provisioningStatus`.
    ProvisioningStatus { Enabled = "enabled", Disabled = "disabled" }
}

ci_enum! {
    /// `allocationPolicy`.
    AllocationPolicy { Hashed = "hashed", GeoLatency = "geoLatency", Static = "static", Custom = "custom" }
}

ci_enum! {
    /// `attestation.type`.
    AttestationType { None = "none", Tpm = "tpm", X509 = "x509", SymmetricKey = "symmetricKey" }
}

ci_enum! {
    /// Registration status (device result and registration record).
    RegistrationStatus {
        Unassigned = "unassigned",
        Assigning = "assigning",
        Assigned = "assigned",
        Failed = "failed",
        Disabled = "disabled",
    }
}

ci_enum! {
    /// Registration substatus.
    Substatus {
        InitialAssignment = "initialAssignment",
        DeviceDataMigrated = "deviceDataMigrated",
        DeviceDataReset = "deviceDataReset",
        ReprovisionedToInitialAssignment = "reprovisionedToInitialAssignment",
    }
}

ci_enum! {
    /// Bulk operation mode.
    BulkMode { Create = "create", Update = "update", UpdateIfMatchEtag = "updateIfMatchETag", Delete = "delete" }
}

/// `IndividualEnrollment`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// Registration id (required).
    #[serde(default)]
    pub registration_id: String,
    /// Hub device id; defaults to the registration id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_id: Option<String>,
    /// Read-only: the registration record, shown on GET only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub registration_state: Option<RegistrationState>,
    /// How the device proves who it is.
    #[serde(default)]
    pub attestation: AttestationMechanism,
    /// Device capabilities.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capabilities: Option<DeviceCapabilities>,
    /// Legacy single target hub.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iot_hub_host_name: Option<String>,
    /// Twin applied to the hub device on assignment.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub initial_twin: Option<InitialTwin>,
    /// Server-generated etag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// Enabled unless `disabled`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// Behaviour on re-registration.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// Read-only creation time.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub created_date_time_utc: Option<DateTime<Utc>>,
    /// Read-only last update time.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub last_updated_date_time_utc: Option<DateTime<Utc>>,
    /// Allocation policy; absent = service default.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allocation_policy: Option<AllocationPolicy>,
    /// Hubs this enrollment may be assigned to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iot_hubs: Option<Vec<String>>,
    /// Webhook for `custom` allocation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub custom_allocation_definition: Option<CustomAllocationDefinition>,
    /// Free-form device information, echoed as sent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub optional_device_information: Option<Value>,
    /// The credential policy that issues certificates to the devices that send a CSR when
    /// they register (`2025-07-01-preview`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential_policy_name: Option<String>,
    /// The older (`2021-11-01-preview`) way to name it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_certificate_issuance_policy: Option<ClientCertificateIssuancePolicy>,
}

/// `EnrollmentGroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// Group id (required).
    #[serde(default)]
    pub enrollment_group_id: String,
    /// Attestation: symmetric key or X.509 signing certificates / CA references.
    #[serde(default)]
    pub attestation: AttestationMechanism,
    /// Device capabilities.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capabilities: Option<DeviceCapabilities>,
    /// Legacy single target hub.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iot_hub_host_name: Option<String>,
    /// Twin applied to each device on assignment.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub initial_twin: Option<InitialTwin>,
    /// Server-generated etag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// Enabled unless `disabled`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// Behaviour on re-registration.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// Read-only creation time.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub created_date_time_utc: Option<DateTime<Utc>>,
    /// Read-only last update time.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub last_updated_date_time_utc: Option<DateTime<Utc>>,
    /// Allocation policy; absent = service default.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allocation_policy: Option<AllocationPolicy>,
    /// Hubs this group may assign to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iot_hubs: Option<Vec<String>>,
    /// Webhook for `custom` allocation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub custom_allocation_definition: Option<CustomAllocationDefinition>,
    /// The credential policy that issues certificates to the devices that send a CSR when
    /// they register (`2025-07-01-preview`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential_policy_name: Option<String>,
    /// The older (`2021-11-01-preview`) way to name it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_certificate_issuance_policy: Option<ClientCertificateIssuancePolicy>,
}

/// `clientCertificateIssuancePolicy` of an enrollment (`2021-11-01-preview`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateIssuancePolicy {
    /// The credential policy (an issuing CA) by name.
    #[serde(default)]
    pub certificate_authority_name: String,
}

/// The credential policy an enrollment names, by either field; an error says why the two
/// disagree (both set to different names).
pub fn named_credential_policy<'a>(
    credential_policy_name: Option<&'a str>,
    older: Option<&'a ClientCertificateIssuancePolicy>,
) -> Result<Option<&'a str>, String> {
    let older = older
        .map(|p| p.certificate_authority_name.as_str())
        .filter(|n| !n.is_empty());
    match (credential_policy_name.filter(|n| !n.is_empty()), older) {
        (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => Err(format!(
            "credentialPolicyName '{a}' and clientCertificateIssuancePolicy.certificateAuthorityName '{b}' name \
             different policies: give one"
        )),
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b),
    }
}

/// `AttestationMechanism`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationMechanism {
    /// Which of the blocks below applies.
    #[serde(rename = "type")]
    pub kind: AttestationType,
    /// TPM endorsement / storage root keys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tpm: Option<TpmAttestation>,
    /// X.509 certificates or CA references.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x509: Option<X509Attestation>,
    /// Symmetric keys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
}

impl Default for AttestationMechanism {
    fn default() -> Self {
        Self {
            kind: AttestationType::None,
            tpm: None,
            x509: None,
            symmetric_key: None,
        }
    }
}

/// TPM attestation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmAttestation {
    /// Base64 TPM2B_PUBLIC of the endorsement key (required).
    #[serde(default)]
    pub endorsement_key: Option<String>,
    /// Base64 TPM2B_PUBLIC of the storage root key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub storage_root_key: Option<String>,
    /// The TPM's endorsement key certificate (PEM or base64 DER; PEM may be followed by the
    /// manufacturer's intermediates): dps's own field. The endorsement key is taken from it
    /// when `endorsementKey` is absent, and its chain is checked against the configured TPM
    /// manufacturer roots.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub endorsement_key_certificate: Option<String>,
}

/// Symmetric-key attestation. Keys are secrets: stripped from GET and query output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    /// Base64 primary key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub primary_key: Option<String>,
    /// Base64 secondary key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secondary_key: Option<String>,
}

/// X.509 attestation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Attestation {
    /// Individual enrollments: the device's own certificate(s).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_certificates: Option<X509Certificates>,
    /// Groups: root or intermediate certificates devices chain to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signing_certificates: Option<X509Certificates>,
    /// Names of CA certificates registered with the service.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ca_references: Option<X509CaReferences>,
}

/// Primary/secondary certificate pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Certificates {
    /// Primary certificate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub primary: Option<X509CertificateWithInfo>,
    /// Secondary certificate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secondary: Option<X509CertificateWithInfo>,
}

/// A certificate as input (`certificate`: PEM or base64 DER) and as output (`info` only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateWithInfo {
    /// Input only; never echoed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub certificate: Option<String>,
    /// Output only; computed by the server.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<X509CertificateInfo>,
}

/// Facts about a certificate the service shows instead of the certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateInfo {
    /// `CN=..., O=...`
    #[serde(default)]
    pub subject_name: String,
    /// Upper-case hex SHA-1 of the DER.
    #[serde(default)]
    pub sha1_thumbprint: String,
    /// Upper-case hex SHA-256 of the DER.
    #[serde(default)]
    pub sha256_thumbprint: String,
    /// Issuer distinguished name.
    #[serde(default)]
    pub issuer_name: String,
    /// Validity start.
    #[serde(with = "timefmt::seconds", skip_serializing_if = "Option::is_none", default)]
    pub not_before_utc: Option<DateTime<Utc>>,
    /// Validity end.
    #[serde(with = "timefmt::seconds", skip_serializing_if = "Option::is_none", default)]
    pub not_after_utc: Option<DateTime<Utc>>,
    /// Upper-case hex serial.
    #[serde(default)]
    pub serial_number: String,
    /// X.509 version (3).
    #[serde(default)]
    pub version: i32,
}

/// CA certificate references.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CaReferences {
    /// Primary CA name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub primary: Option<String>,
    /// Secondary CA name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secondary: Option<String>,
}

/// `{"iotEdge": bool}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// Whether the device is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// `initialTwin`: tags and desired properties stored and echoed as the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitialTwin {
    /// Twin tags.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tags: Option<Value>,
    /// `{"desired": {...}}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub properties: Option<InitialTwinProperties>,
}

/// Initial twin properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitialTwinProperties {
    /// Desired properties.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub desired: Option<Value>,
}

/// `reprovisionPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Re-run allocation when the device registers again.
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    /// Carry the twin over when the hub changes.
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// A linked IoT hub, in the shape of Azure's ARM `iotHubs[]` item (`IotHubDefinitionDescription`)
/// plus dps's `caCertificates`: what `dps linked-hub` and `/linkedHubs/{name}` read and write.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedHubDescription {
    /// The hub's host name (the path names it; read-only).
    #[serde(default)]
    pub name: String,
    /// `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` of a hub policy with `RegistryWrite`
    /// (what DPS writes devices with). Answers carry it with the key replaced by `****`; a
    /// write without it keeps the one stored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub connection_string: String,
    /// The hub's region (for `geoLatency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Relative weight for hashed allocation, 1 to 1000 (absent: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_weight: Option<u32>,
    /// Whether allocation policies may pick the hub (absent: true); a hub left out is still
    /// used by enrollments that name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_allocation_policy: Option<bool>,
    /// PEM CA certificates to trust for the hub's TLS certificate besides the system's (a hub on
    /// another dps server, which has a CA of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

impl std::fmt::Debug for LinkedHubDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkedHubDescription")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("allocation_weight", &self.allocation_weight)
            .field("apply_allocation_policy", &self.apply_allocation_policy)
            .finish_non_exhaustive()
    }
}

impl LinkedHubDescription {
    /// The description as answers show it: the connection string's key replaced by `****`.
    pub fn redacted(&self) -> Self {
        let connection_string = self
            .connection_string
            .split(';')
            .map(|part| match part.split_once('=') {
                Some((k, _)) if k.trim().eq_ignore_ascii_case("SharedAccessKey") => format!("{k}=****"),
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(";");
        Self {
            connection_string,
            ..self.clone()
        }
    }
}

/// `GET /linkedHubs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedHubList {
    /// The linked hubs, by name.
    pub value: Vec<LinkedHubDescription>,
}

/// A shared access policy as Azure's management API writes one
/// (`SharedAccessSignatureAuthorizationRule`): `GET`/`PUT /keys/{keyName}` (the service's),
/// `/iotHubKeys/{keyName}` (a hub's). Rights are one string, names separated by `, `
/// (`"RegistryRead, RegistryWrite"`). In a `PUT`, absent keys are kept (or made, for a new
/// policy) and absent rights are kept; in an answer, the keys of a policy holding rights the
/// caller lacks are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// The policy's name (`skn` in its tokens).
    #[serde(default)]
    pub key_name: String,
    /// Base64 primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    /// Base64 secondary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
    /// The rights, `, `-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rights: Option<String>,
}

/// `GET /keys`, `GET /iotHubKeys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationRuleList {
    /// The policies, in the order they are kept.
    pub value: Vec<AuthorizationRule>,
}

ci_enum! {
    /// Which key `POST …/regenerateKey` makes anew (`az iot hub policy renew-key --renew-key`).
    PolicyKeyType { Primary = "primary", Secondary = "secondary", Swap = "swap" }
}

/// `POST /keys/{keyName}/regenerateKey`, `POST /iotHubKeys/{keyName}/regenerateKey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegenerateKeyRequest {
    /// `primary`, `secondary` or `swap`.
    pub key_type: PolicyKeyType,
}

/// `customAllocationDefinition`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomAllocationDefinition {
    /// Webhook URL.
    #[serde(default)]
    pub webhook_url: String,
    /// API version the webhook speaks.
    #[serde(default)]
    pub api_version: String,
}

impl Default for RegistrationStatus {
    /// A registration nobody attempted yet.
    fn default() -> Self {
        Self::Unassigned
    }
}

/// A registration record / device registration result. The service API shows the first block of
/// fields; the device API result adds the attestation-specific blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationState {
    /// Registration id.
    #[serde(default)]
    pub registration_id: String,
    /// When the record was created.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub created_date_time_utc: Option<DateTime<Utc>>,
    /// Assigned hub host name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub assigned_hub: Option<String>,
    /// Hub device id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_id: Option<String>,
    /// Status.
    pub status: RegistrationStatus,
    /// Substatus (assigned only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub substatus: Option<Substatus>,
    /// Error code when failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_code: Option<u32>,
    /// Error message when failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_message: Option<String>,
    /// Last update.
    #[serde(with = "timefmt::record", skip_serializing_if = "Option::is_none", default)]
    pub last_updated_date_time_utc: Option<DateTime<Utc>>,
    /// Record etag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// Custom allocation payload returned to the device.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload: Option<Value>,
    /// Device API only: TPM activation blob for the hub key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tpm: Option<TpmRegistrationResult>,
    /// Device API only: X.509 details.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x509: Option<X509RegistrationResult>,
    /// Device API only: symmetric-key details.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub symmetric_key: Option<SymmetricKeyRegistrationResult>,
    /// The certificate issued for the device's CSR, then its CA chain: base64 DER, leaf first
    /// (`2025-07-01-preview`). Only in the answer to the registration and its operation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub issued_certificate_chain: Option<Vec<String>>,
    /// The issued certificate alone, PEM (the C# SDK documents "the PEM encoded operational
    /// client certificate", and the Python SDK's tests load it as a PEM file), for devices that
    /// asked with `clientCertificateCsr` (`2021-11-01-preview`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub issued_client_certificate: Option<String>,
}

/// `registrationState.tpm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmRegistrationResult {
    /// Base64 activation blob.
    pub authentication_key: String,
}

/// `registrationState.x509`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509RegistrationResult {
    /// The device certificate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub certificate_info: Option<X509CertificateInfo>,
    /// Group that matched.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enrollment_group_id: Option<String>,
    /// Signing certificate that matched.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signing_certificate_info: Option<X509CertificateInfo>,
}

/// `registrationState.symmetricKey`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyRegistrationResult {
    /// Group that matched, for group devices.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enrollment_group_id: Option<String>,
}

/// `{"query": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuerySpecification {
    /// Query text (`SELECT * FROM enrollments WHERE …`; empty: the whole collection), in the
    /// IoT Hub query language ([`crate::query`]).
    #[serde(default)]
    pub query: String,
}

/// Bulk operation on individual enrollments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperation {
    /// Mode.
    pub mode: BulkMode,
    /// Up to 10 items.
    #[serde(default)]
    pub enrollments: Vec<IndividualEnrollment>,
}

/// Bulk operation on enrollment groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperation {
    /// Mode.
    pub mode: BulkMode,
    /// Up to 10 items.
    #[serde(default)]
    pub enrollment_groups: Vec<EnrollmentGroup>,
}

/// Result of a bulk operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkOperationResult {
    /// True when every item succeeded.
    pub is_successful: bool,
    /// Per-item failures.
    pub errors: Vec<BulkOperationError>,
}

/// One failed bulk item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkOperationError {
    /// Set for enrollments.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub registration_id: Option<String>,
    /// Set for groups.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enrollment_group_id: Option<String>,
    /// Error code.
    pub error_code: u32,
    /// Message.
    pub error_status: String,
}

/// A shared-access policy right (service-api.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessRight {
    /// Service configuration.
    ServiceConfig,
    /// Read enrollments and groups.
    EnrollmentRead,
    /// Create, update, delete enrollments and groups.
    EnrollmentWrite,
    /// Device registration API.
    DeviceConnect,
    /// Read registration records.
    RegistrationStatusRead,
    /// Delete registration records.
    RegistrationStatusWrite,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_round_trip_and_shape() {
        let json = r#"{"registrationId":"dev-01","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":null}},
            "provisioningStatus":"Enabled","allocationPolicy":"geolatency","initialTwin":{"properties":{"desired":{"k":"v"}}},
            "reprovisionPolicy":{"updateHubAssignment":true,"migrateDeviceData":false},"unknownField":1,
            "createdDateTimeUtc":null}"#;
        let e: IndividualEnrollment = serde_json::from_str(json).unwrap();
        assert_eq!(e.attestation.kind, AttestationType::SymmetricKey);
        assert_eq!(e.attestation.symmetric_key.as_ref().unwrap().primary_key, None);
        assert_eq!(e.provisioning_status, Some(ProvisioningStatus::Enabled));
        assert_eq!(e.allocation_policy, Some(AllocationPolicy::GeoLatency));
        assert_eq!(e.created_date_time_utc, None);
        let out = serde_json::to_value(&e).unwrap();
        assert_eq!(out["allocationPolicy"], "geoLatency");
        assert_eq!(out["initialTwin"]["properties"]["desired"]["k"], "v");
        assert!(out.get("deviceId").is_none());
        assert_eq!(
            out["attestation"],
            serde_json::json!({"type":"symmetricKey","symmetricKey":{}})
        );
    }

    /// Wrong types are errors that name the field, never silent defaults.
    #[test]
    fn wrong_types_name_the_field() {
        for (body, field) in [
            (r#"{"registrationId":5}"#, "registrationId"),
            (
                r#"{"registrationId":"a","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":7}}}"#,
                "attestation.symmetricKey.primaryKey",
            ),
            (r#"{"registrationId":"a","attestation":"tpm"}"#, "attestation"),
            (
                r#"{"registrationId":"a","capabilities":{"iotEdge":"yes"}}"#,
                "capabilities.iotEdge",
            ),
            (r#"{"registrationId":"a","iotHubs":"h"}"#, "iotHubs"),
            (
                r#"{"registrationId":"a","reprovisionPolicy":{"updateHubAssignment":1}}"#,
                "reprovisionPolicy.updateHubAssignment",
            ),
            (
                r#"{"registrationId":"a","provisioningStatus":"on"}"#,
                "provisioningStatus",
            ),
            (
                r#"{"registrationId":"a","createdDateTimeUtc":12}"#,
                "createdDateTimeUtc",
            ),
        ] {
            let e = crate::model::from_json::<IndividualEnrollment>(body.as_bytes()).unwrap_err();
            assert_eq!(e.path, field, "{body}: {e}");
            assert!(e.to_string().starts_with(&format!("field '{field}': ")), "{e}");
        }
        let e = crate::model::from_json::<BulkEnrollmentOperation>(
            br#"{"mode":"create","enrollments":[{"registrationId":"a"},{"registrationId":[]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, "enrollments[1].registrationId");
        let e = crate::model::from_json::<IndividualEnrollment>(b"\"x\"").unwrap_err();
        assert_eq!(e.path, "");
    }

    #[test]
    fn bulk_modes_parse_case_insensitively() {
        let b: BulkEnrollmentOperation =
            serde_json::from_str(r#"{"mode":"updateIfMatchEtag","enrollments":[]}"#).unwrap();
        assert_eq!(b.mode, BulkMode::UpdateIfMatchEtag);
        let err = serde_json::from_str::<BulkEnrollmentOperation>(r#"{"mode":"merge"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown BulkMode 'merge'"));
    }

    #[test]
    fn registration_state_shape() {
        let s = RegistrationState {
            registration_id: "d".into(),
            status: RegistrationStatus::Assigned,
            substatus: Some(Substatus::InitialAssignment),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"registrationId":"d","status":"assigned","substatus":"initialAssignment"}"#
        );
    }
}
