//! What the engine refuses and why: one typed [`Error`] that every engine call returns, with each
//! cause as a variant callers can match on, and the one mapping of those causes to the DPS HTTP
//! status and `errorCode` ([`Error::code`], [`Error::status`], [`Error::retry_after`]).
//! Transports format it (HTTP status + JSON body, MQTT response topic + JSON body) without
//! deciding anything; the message is the variant's `Display`, which the SDKs and tests read, so
//! it is worded once, here.
//!
//! Refusals to unauthenticated callers say what was wrong with what the caller sent, never which
//! enrollments, groups, policies or CAs exist (the precise reason goes to the server log where
//! the refusal is made).

use chrono::{DateTime, Utc};
use dps_proto::codes;
use dps_proto::registration_id::IdError;
use dps_proto::sas::SasError;
use dps_proto::twin_limits::TwinLimitError;

use crate::hub::HubError;
use crate::quota::{Quota, Throttled};
use crate::store::StoreError;

/// Why an engine call failed. Each variant says its cause; [`Error::code`] maps it to the DPS
/// `errorCode` (and so the HTTP status), and `Display` is the message the client reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request names an ID scope this service does not have (`404200`).
    #[error("unknown ID scope '{id_scope}'; this service's ID scope is different")]
    UnknownIdScope {
        /// The scope the request named.
        id_scope: String,
    },
    /// An argument of the request breaks a rule (`400001`); the variant names the field.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    /// A bulk enrollment request is invalid as a whole (`400005`).
    #[error(transparent)]
    Bulk(#[from] BulkInvalid),
    /// The device sent no credential at all (`401000`).
    #[error(
        "no credential: send a SharedAccessSignature (symmetric key, or TPM-signed after a TPM challenge) in the MQTT password or the Authorization header, or a client certificate (X.509)"
    )]
    NoCredential,
    /// A shared access signature (a device's, or a service policy's) was refused (`401000`).
    #[error(transparent)]
    Sas(#[from] SasRefusal),
    /// A device's X.509 certificate or chain was refused (`401000`).
    #[error(transparent)]
    X509(#[from] X509Refusal),
    /// TPM attestation failed or cannot happen here (`400006`, `400001`, `401000` or `500000`,
    /// by cause).
    #[error(transparent)]
    Tpm(#[from] TpmRefusal),
    /// The shared access policy is valid but lacks the right the operation needs (`401001`).
    #[error("policy '{policy}' lacks {} needed for this operation", needed_rights(.needed))]
    InsufficientRights {
        /// The policy that signed the request.
        policy: String,
        /// The rights of which any one would do.
        needed: Vec<String>,
    },
    /// A quota is exhausted (`429001`); the client retries after [`Throttled::retry_after_secs`].
    #[error("{}", throttled_message(.0))]
    Throttled(Throttled),
    /// The resource does not exist (`404201`, `404202`, `404203`, `404301`, by resource).
    #[error("{resource} '{id}' not found")]
    NotFound {
        /// What kind of resource.
        resource: Resource,
        /// Its id (or name).
        id: String,
    },
    /// A create-only write (no `If-Match`) found the resource already there (`409201`,
    /// `409202`, `409301`).
    #[error("{}", exists_message(*.resource, .id))]
    AlreadyExists {
        /// What kind of resource.
        resource: Resource,
        /// Its id (or name).
        id: String,
    },
    /// `If-Match` does not match the resource's current etag (`412201`, `412202`, `412203`,
    /// `412301`).
    #[error("If-Match does not match the current etag of {resource} '{id}'")]
    EtagMismatch {
        /// What kind of resource.
        resource: Resource,
        /// Its id (or name).
        id: String,
    },
    /// A device polled an operation id that is not one of its own (`404204`).
    #[error("operation '{operation_id}' not found for registration '{registration_id}'")]
    OperationNotFound {
        /// The polled operation id.
        operation_id: String,
        /// The device's registration id.
        registration_id: String,
    },
    /// A device asked for its registration record before it ever registered (`404203`).
    #[error("registration '{registration_id}' has no registration record")]
    NoRegistrationRecord {
        /// The device's registration id.
        registration_id: String,
    },
    /// A CA certificate upload or its proof of possession was refused (`400301`, `400302`).
    #[error(transparent)]
    CaCertificate(#[from] CaCertificateError),
    /// The enrollment (or group) the device matched is disabled (`401003`): a registration
    /// result (status `disabled`), not an HTTP error.
    #[error("{} '{id}' is disabled", if *.group { "enrollment group" } else { "individual enrollment" })]
    EnrollmentDisabled {
        /// True for an enrollment group, false for an individual enrollment.
        group: bool,
        /// The enrollment's registration id or the group's id.
        id: String,
    },
    /// No IoT hub could be assigned (`400208`): a registration result (status `failed`).
    #[error(transparent)]
    Allocation(#[from] AllocationError),
    /// The IoT hub refused or failed the device (`400209`): a registration result (status
    /// `failed`); nothing was provisioned.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The store failed (`500000`), or cannot be reached now (`503001`, with a time to retry
    /// after: [`StoreError::Unavailable`]); nothing was written.
    #[error("storage: {0}")]
    Storage(#[source] StoreError),
}

/// The kinds of resource the service API's errors are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource {
    /// An individual enrollment (`/enrollments/{id}`).
    Enrollment,
    /// An enrollment group (`/enrollmentGroups/{id}`).
    Group,
    /// A registration record (`/registrations/{id}`).
    Registration,
    /// A CA certificate (`/certificates/{name}`).
    Certificate,
    /// A linked IoT hub (`/linkedHubs/{name}`).
    LinkedHub,
    /// A shared access policy (`/sharedAccessPolicies/{name}`).
    SharedAccessPolicy,
    /// A credential policy (`/credentialPolicies/{name}`).
    CredentialPolicy,
    /// A revoked certificate (`/revocations/{id}`).
    Revocation,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Enrollment => "individual enrollment",
            Resource::Group => "enrollment group",
            Resource::Registration => "registration record",
            Resource::Certificate => "CA certificate",
            Resource::LinkedHub => "linked hub",
            Resource::SharedAccessPolicy => "shared access policy",
            Resource::CredentialPolicy => "credential policy",
            Resource::Revocation => "revocation",
        })
    }
}

/// An argument that breaks a rule (`400001`), by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidArgument {
    /// The registration id of a device request breaks the id rules.
    #[error("registration id: {0}")]
    RegistrationId(#[source] IdError),
    /// The id (or name) of a service resource in the path breaks the id rules.
    #[error("{} {}: {source}", resource, if matches!(.resource, Resource::Certificate | Resource::CredentialPolicy) { "name" } else { "id" })]
    ResourceId {
        /// The resource the id names.
        resource: Resource,
        /// The rule it breaks.
        source: IdError,
    },
    /// The device body's `registrationId` is not the request's.
    #[error("body registrationId '{body_id}' does not match the registration id '{registration_id}' of the request")]
    BodyRegistrationId {
        /// What the body said.
        body_id: String,
        /// What the path or user name said.
        registration_id: String,
    },
    /// The id in a service body is not the id in the path.
    #[error("{resource} id '{body_id}' in the body does not match the path id '{path_id}'")]
    BodyId {
        /// The resource.
        resource: Resource,
        /// What the body said.
        body_id: String,
        /// What the path said.
        path_id: String,
    },
    /// An enrollment's `deviceId` is not a valid IoT Hub device id.
    #[error(
        "deviceId '{0}' is not a valid IoT Hub device id (at most 128 letters, digits and - . % _ * ? ! ( ) , : = @ $ ')"
    )]
    DeviceId(String),
    /// A query (`POST …/query`) that does not parse, or that asks for what DPS does not answer
    /// (projections, aggregates); the error names the character where it went wrong.
    #[error("{0}")]
    Query(#[source] dps_proto::query::QueryError),
    /// An `x-ms-continuation` token this service did not issue.
    #[error("x-ms-continuation '{0}' is not a token this service issued")]
    Continuation(String),
    /// An enrollment's `initialTwin` breaks IoT Hub's twin rules.
    #[error("{resource}: {source}")]
    InitialTwin {
        /// The resource whose twin it is.
        resource: Resource,
        /// The rule it breaks (names the field).
        source: TwinLimitError,
    },
    /// An enrollment names IoT hubs (`iotHubs`, `iotHubHostName`) that are not linked to this
    /// service.
    #[error("{resource}: IoT hub(s) {} not linked to this service (link them first: dps linked-hub create)", .hubs.join(", "))]
    HubsNotLinked {
        /// The resource that names them.
        resource: Resource,
        /// The hubs that are not linked.
        hubs: Vec<String>,
    },
    /// A custom allocation enrollment without a usable webhook (`customAllocationDefinition`).
    #[error("{resource}: {reason}")]
    CustomAllocation {
        /// The resource.
        resource: Resource,
        /// What is wrong.
        reason: String,
    },
    /// A linked hub's settings break a rule (its connection string, weight, CA certificates);
    /// the reason names the field.
    #[error("linked hub '{name}': {reason}")]
    LinkedHub {
        /// The hub's host name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A shared access policy change breaks a rule (its name, rights or keys, or it would
    /// leave no policy holding every right); the reason says which.
    #[error("shared access policy '{name}': {reason}")]
    Policy {
        /// The policy's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A credential policy's settings break a rule (key type, validity, its brought CA); the
    /// reason names the field.
    #[error("credential policy '{name}': {reason}")]
    CredentialPolicy {
        /// The policy's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An enrollment names a credential policy that does not exist, or names two
    /// (`credentialPolicyName` and `clientCertificateIssuancePolicy` disagree).
    #[error("{resource}: {reason}")]
    EnrollmentCredentialPolicy {
        /// The enrollment or group.
        resource: Resource,
        /// What is wrong.
        reason: String,
    },
    /// A revocation or an imported revocation list is refused (it names no certificate, the
    /// list does not parse or no known CA signed it); the reason says which.
    #[error("{0}")]
    Revocation(String),
    /// A device's certificate signing request cannot be issued for: not a valid request, its
    /// CN is not the registration id, or its enrollment names no (existing) credential policy;
    /// the reason says which.
    #[error("{0}")]
    CertificateSigningRequest(String),
    /// An enrollment's attestation mechanism is invalid (missing or malformed keys or
    /// certificates, a kind the resource does not support); the reason names the field.
    #[error("{0}")]
    Attestation(String),
}

/// A bulk enrollment request that is invalid as a whole (`400005`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BulkInvalid {
    /// No items.
    #[error("bulk operation has no items")]
    Empty,
    /// More items than Azure allows.
    #[error("bulk operation has {count} items; at most {max} are allowed")]
    TooMany {
        /// Items sent.
        count: usize,
        /// Items allowed.
        max: usize,
    },
    /// An item without an id.
    #[error("bulk operation item has no id")]
    NoId,
    /// The same id twice.
    #[error("bulk operation names '{0}' more than once")]
    Duplicate(String),
}

/// Why a shared access signature was refused (`401000`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SasRefusal {
    /// The token is malformed, expired, or for another audience (device tokens name the
    /// audience exactly).
    #[error(transparent)]
    Token(#[from] SasError),
    /// A device token that no enrollment accepts. One answer whatever the reason — no
    /// enrollment with that id, one with another attestation, a wrong key, no outstanding TPM
    /// challenge, no group whose derived key fits — so that an unauthenticated caller learns
    /// nothing about which enrollments or groups exist.
    #[error(
        "the SAS signature does not match any key this service accepts for registration '{registration_id}': \
         sign with the individual enrollment's key, or with the key derived from an enrollment group's key \
         (base64(HMAC-SHA256(base64decode(groupKey), registrationId))); a TPM device signs with the key of \
         a TPM challenge, which lasts {challenge_ttl_secs} s and serves one registration"
    )]
    NoMatchingKey {
        /// The device's registration id.
        registration_id: String,
        /// How long a TPM challenge lasts, for the hint to TPM devices.
        challenge_ttl_secs: i64,
    },
    /// A device signed with an enrollment group's own key instead of its derived key. Only a
    /// holder of that key gets this answer, so naming the group reveals nothing.
    #[error(
        "the SAS token was signed with the key of enrollment group '{group_id}' itself; a device must sign with its derived key, base64(HMAC-SHA256(base64decode(groupKey), registrationId))"
    )]
    GroupKey {
        /// The group whose key signed the token.
        group_id: String,
    },
    /// A service request without `Authorization`.
    #[error("missing Authorization header (expected a SharedAccessSignature)")]
    MissingAuthorization,
    /// A service request with an Entra ID bearer token.
    #[error("bearer (Entra ID) tokens are not supported; use a SharedAccessSignature from a shared access policy")]
    Bearer,
    /// A service token without `skn`.
    #[error("shared access signature has no 'skn' (policy name)")]
    NoPolicyName,
    /// A service token that no key of the named policy signed — or the policy does not exist:
    /// one answer for both.
    #[error(
        "shared access signature is not signed by a key of policy '{policy}' (no such policy, or not its primary or secondary key)"
    )]
    NotSignedByPolicy {
        /// The `skn` of the token.
        policy: String,
    },
    /// A service token whose audience does not cover the requested resource.
    #[error(
        "shared access signature audience '{audience}' does not cover {path}: it must be this server's host name ({}) or a resource path under it that contains {path}",
        .hosts.join(", ")
    )]
    AudienceNotCovering {
        /// The token's audience.
        audience: String,
        /// The resource path requested.
        path: String,
        /// The server's own names.
        hosts: Vec<String>,
    },
}

/// Why a device's X.509 certificate was refused (`401000`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum X509Refusal {
    /// The TLS connection carried no client certificate.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The leaf certificate cannot be parsed.
    #[error("the device certificate cannot be parsed: {0}")]
    Unparsable(#[source] dps_pki::PkiError),
    /// The leaf has no common name.
    #[error("device certificate '{subject}' has no common name (CN)")]
    NoCommonName {
        /// The leaf's subject.
        subject: String,
    },
    /// The leaf's CN is not the registration id.
    #[error("device certificate CN '{common_name}' does not match registration id '{registration_id}'")]
    CommonNameMismatch {
        /// The leaf's CN.
        common_name: String,
        /// The request's registration id.
        registration_id: String,
    },
    /// A certificate of the device's chain is revoked (`dps revocation`, or an imported
    /// revocation list).
    #[error("certificate '{subject}' (serial {serial}, issuer '{issuer}') is revoked")]
    Revoked {
        /// The revoked certificate's subject.
        subject: String,
        /// Its serial number.
        serial: String,
        /// Its issuer.
        issuer: String,
    },
    /// The leaf is not valid yet.
    #[error("device certificate '{subject}' is not valid before {}", dps_proto::timefmt::format_seconds(.not_before))]
    NotYetValid {
        /// The leaf's subject.
        subject: String,
        /// Start of its validity.
        not_before: DateTime<Utc>,
    },
    /// The leaf has expired.
    #[error("device certificate '{subject}' expired at {}", dps_proto::timefmt::format_seconds(.not_after))]
    Expired {
        /// The leaf's subject.
        subject: String,
        /// End of its validity.
        not_after: DateTime<Utc>,
    },
    /// The chain reaches no enrolled certificate. One answer whatever the reason (unknown
    /// issuer, a signature that does not verify, no enrolled anchor, another attestation), so
    /// that it says nothing about which enrollments, groups or CAs exist.
    #[error(
        "device certificate '{subject}' (SHA-256 {sha256}) is not enrolled for registration '{registration_id}': it is not the certificate of an individual enrollment, and its chain reaches no enrolled signing certificate or verified CA certificate"
    )]
    NotEnrolled {
        /// The leaf's subject.
        subject: String,
        /// The leaf's SHA-256 thumbprint.
        sha256: String,
        /// The request's registration id.
        registration_id: String,
    },
    /// A link of the chain the device sent is unacceptable (validity, CA constraints, key
    /// usage, length); the source names the link.
    #[error("certificate chain rejected: {0}")]
    Chain(#[source] dps_pki::chain::ChainError),
    /// The chain reaches a CA certificate whose proof of possession is not done.
    #[error("CA certificate '{ca}' referenced by {referenced_by} is not verified; complete proof of possession first")]
    CaNotVerified {
        /// The CA certificate's name.
        ca: String,
        /// The enrollment or group that references it, e.g. `enrollment group 'g'`.
        referenced_by: String,
    },
}

/// Why TPM attestation failed or cannot happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmRefusal {
    /// A SAS for a TPM enrollment was checked ahead of a register (MQTT's CONNECT): its proof is
    /// the one-use challenge of a register request, which must not be spent there (`400006`).
    #[error(
        "individual enrollment '{registration_id}' uses TPM attestation, which is proven by the challenge of a register request over HTTPS (or AMQP), not ahead of it"
    )]
    NotAheadOfRegister {
        /// The enrollment's registration id.
        registration_id: String,
    },
    /// A challenge request without the device's keys (`400001`).
    #[error(
        "a TPM challenge needs the device's keys in the body: {{\"tpm\":{{\"endorsementKey\":\"<base64 TPM2B_PUBLIC>\",\"storageRootKey\":\"<base64 TPM2B_PUBLIC>\"}}}}"
    )]
    KeysMissing,
    /// A key the device sent is not base64 (`400001`); `field` is `endorsementKey` or
    /// `storageRootKey`.
    #[error("tpm.{field} is not valid base64")]
    KeyEncoding {
        /// The field.
        field: &'static str,
    },
    /// A challenge request without the storage root key (`400001`).
    #[error("tpm.storageRootKey is required: the challenge is bound to the device's storage root key")]
    StorageRootKeyMissing,
    /// The storage root key is not an RSA-2048 storage key (`400001`).
    #[error("tpm.storageRootKey: {0}")]
    StorageRootKey(#[source] dps_tpm::TpmError),
    /// The activation blob cannot be built for these keys (`400001`).
    #[error("cannot build the TPM activation blob: {0}")]
    ActivationBlob(#[source] dps_tpm::TpmError),
    /// No TPM individual enrollment has the keys sent (`401000`). One answer for every
    /// mismatch (no enrollment, another attestation, another EK or SRK).
    #[error(
        "no TPM individual enrollment for registration '{registration_id}' has the endorsement key and storage root key sent; TPM devices need an individual enrollment with their endorsement key (enrollment groups do not support TPM)"
    )]
    NotEnrolled {
        /// The request's registration id.
        registration_id: String,
    },
    /// The enrollment's TPM keys changed between the challenge and the register (`401000`).
    #[error(
        "the TPM keys of individual enrollment '{registration_id}' changed after the challenge was issued; request a new challenge"
    )]
    KeysChanged {
        /// The enrollment's registration id.
        registration_id: String,
    },
    /// The stored enrollment's key is not usable (it was validated when written), `500000`.
    #[error("individual enrollment '{registration_id}' has no valid {key}; update the enrollment")]
    EnrollmentBroken {
        /// The enrollment's registration id.
        registration_id: String,
        /// `endorsementKey` or `storageRootKey`.
        key: &'static str,
    },
}

/// Why a CA certificate upload or its proof of possession was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaCertificateError {
    /// An uploaded certificate (`what`: `certificate` or `verification certificate`) cannot be
    /// parsed (`400301`).
    #[error("{what}: {source}")]
    Unparsable {
        /// Which upload.
        what: &'static str,
        /// The parser's reason.
        source: dps_pki::PkiError,
    },
    /// An upload contained no certificate (`400301`).
    #[error("{what}: no certificate found")]
    Empty {
        /// Which upload.
        what: &'static str,
    },
    /// The uploaded CA certificate has expired (`400301`).
    #[error("certificate '{subject}' expired at {}", dps_proto::timefmt::format_seconds(.not_after))]
    Expired {
        /// The certificate's subject.
        subject: String,
        /// End of its validity.
        not_after: DateTime<Utc>,
    },
    /// A verification certificate for a CA with no verification code pending (`400302`).
    #[error("no verification code is pending for CA certificate '{name}'; generate one first")]
    NoVerificationCode {
        /// The CA certificate's name.
        name: String,
    },
    /// The verification certificate's CN is not the pending code (`400302`).
    #[error("verification certificate CN '{common_name}' is not the verification code of CA certificate '{name}'")]
    WrongCode {
        /// The CN presented.
        common_name: String,
        /// The CA certificate's name.
        name: String,
    },
    /// The verification certificate was not issued by the CA (`400302`).
    #[error("verification certificate is not a valid certificate issued by CA certificate '{name}': {source}")]
    NotIssuedByCa {
        /// The CA certificate's name.
        name: String,
        /// Why the signature or validity check failed.
        source: dps_pki::chain::ChainError,
    },
    /// The stored certificate is not base64 (`500000`): the store was altered.
    #[error("stored certificate: {0}")]
    Stored(#[source] base64::DecodeError),
}

/// Why no IoT hub could be assigned (`400208`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocationError {
    /// No linked hub takes part in allocation.
    #[error("no linked IoT hub is available for allocation")]
    NoLinkedHub,
    /// The enrollment names only hubs that are not linked.
    #[error("none of the enrollment's IoT hubs ({}) is linked to this service", .0.join(", "))]
    HubsNotLinked(Vec<String>),
    /// Static allocation with other than one hub.
    #[error("static allocation needs exactly one IoT hub on the enrollment, found {0}")]
    StaticNeedsOneHub(usize),
    /// Custom allocation, and the engine has no webhook transport ([`crate::Engine::with_webhook`]).
    #[error("custom allocation (webhook) is not available: this engine has no webhook client")]
    CustomUnsupported,
    /// Custom allocation on an enrollment without `customAllocationDefinition.webhookUrl`
    /// (written before the rule that refuses it).
    #[error("custom allocation needs customAllocationDefinition.webhookUrl on the enrollment")]
    NoWebhook,
    /// The custom allocation webhook could not be called, or answered what is not an
    /// `AllocationResponse`.
    #[error("the custom allocation webhook failed: {0}")]
    Webhook(String),
    /// The custom allocation webhook chose a hub it was not offered.
    #[error("the custom allocation webhook chose IoT hub '{hub}', which is not one of the hubs it was offered ({})", .offered.join(", "))]
    WebhookHub {
        /// The hub it named.
        hub: String,
        /// The hubs it was offered (`linkedHubs`).
        offered: Vec<String>,
    },
}

impl Error {
    /// The DPS `errorCode` (HTTP status × 1000 + sub-code): the one mapping of causes to codes.
    /// `docs/error-codes.md` lists every code this returns (checked by a test).
    pub fn code(&self) -> u32 {
        match self {
            Error::UnknownIdScope { .. } => codes::ID_SCOPE_NOT_FOUND,
            Error::InvalidArgument(_) => codes::ARGUMENT_INVALID,
            Error::Bulk(_) => codes::BULK_INVALID,
            Error::NoCredential | Error::Sas(_) | Error::X509(_) => codes::UNAUTHORIZED,
            Error::Tpm(t) => match t {
                TpmRefusal::NotAheadOfRegister { .. } => codes::TPM_TRANSPORT_UNSUPPORTED,
                TpmRefusal::KeysMissing
                | TpmRefusal::KeyEncoding { .. }
                | TpmRefusal::StorageRootKeyMissing
                | TpmRefusal::StorageRootKey(_)
                | TpmRefusal::ActivationBlob(_) => codes::ARGUMENT_INVALID,
                TpmRefusal::NotEnrolled { .. } | TpmRefusal::KeysChanged { .. } => codes::UNAUTHORIZED,
                TpmRefusal::EnrollmentBroken { .. } => codes::INTERNAL,
            },
            Error::InsufficientRights { .. } => codes::INSUFFICIENT_RIGHTS,
            Error::Throttled(_) => codes::THROTTLED,
            Error::NotFound { resource, .. } => match resource {
                Resource::Enrollment => codes::ENROLLMENT_NOT_FOUND,
                Resource::Group => codes::ENROLLMENT_GROUP_NOT_FOUND,
                Resource::Registration => codes::REGISTRATION_NOT_FOUND,
                Resource::Certificate => codes::CERTIFICATE_NOT_FOUND,
                Resource::CredentialPolicy => codes::CREDENTIAL_POLICY_NOT_FOUND,
                Resource::LinkedHub | Resource::SharedAccessPolicy | Resource::Revocation => codes::PATH_NOT_FOUND,
            },
            Error::AlreadyExists { resource, .. } => match resource {
                Resource::Enrollment => codes::ENROLLMENT_EXISTS,
                Resource::Group => codes::ENROLLMENT_GROUP_EXISTS,
                // Registration records are never created through the API, so a create-only
                // write cannot find one; the code is the record's not-found, as it always was.
                Resource::Registration => codes::REGISTRATION_NOT_FOUND,
                Resource::Certificate => codes::CERTIFICATE_EXISTS,
                Resource::CredentialPolicy => codes::CREDENTIAL_POLICY_EXISTS,
                // Linked hubs and policies are written create-or-replace; no write finds one in
                // the way.
                Resource::LinkedHub | Resource::SharedAccessPolicy | Resource::Revocation => codes::ARGUMENT_INVALID,
            },
            Error::EtagMismatch { resource, .. } => match resource {
                Resource::Enrollment => codes::ENROLLMENT_ETAG_MISMATCH,
                Resource::Group => codes::ENROLLMENT_GROUP_ETAG_MISMATCH,
                Resource::Registration => codes::REGISTRATION_ETAG_MISMATCH,
                Resource::Certificate => codes::CERTIFICATE_ETAG_MISMATCH,
                Resource::CredentialPolicy => codes::CREDENTIAL_POLICY_ETAG_MISMATCH,
                Resource::LinkedHub | Resource::SharedAccessPolicy | Resource::Revocation => codes::ARGUMENT_INVALID,
            },
            Error::OperationNotFound { .. } => codes::OPERATION_NOT_FOUND,
            Error::NoRegistrationRecord { .. } => codes::REGISTRATION_NOT_FOUND,
            Error::CaCertificate(c) => match c {
                CaCertificateError::Unparsable { .. }
                | CaCertificateError::Empty { .. }
                | CaCertificateError::Expired { .. } => codes::CERTIFICATE_INVALID,
                CaCertificateError::NoVerificationCode { .. }
                | CaCertificateError::WrongCode { .. }
                | CaCertificateError::NotIssuedByCa { .. } => codes::CERTIFICATE_VERIFICATION_FAILED,
                CaCertificateError::Stored(_) => codes::INTERNAL,
            },
            Error::EnrollmentDisabled { .. } => codes::ENROLLMENT_DISABLED,
            Error::Allocation(_) => codes::HUB_NOT_SPECIFIED,
            Error::Hub(_) => codes::HUB_UNAUTHORIZED,
            Error::Storage(StoreError::Unavailable(_)) => codes::SERVICE_UNAVAILABLE,
            Error::Storage(_) => codes::INTERNAL,
        }
    }

    /// The HTTP status (also the MQTT response-topic status): the code's first three digits.
    pub fn status(&self) -> u16 {
        (self.code() / 1000) as u16
    }

    /// Seconds the client should wait before retrying (throttling, a store that cannot be
    /// reached now): the `Retry-After` header on HTTPS, `&retry-after=` in the MQTT response
    /// topic.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Error::Throttled(t) => Some(t.retry_after_secs()),
            Error::Storage(StoreError::Unavailable(_)) => Some(STORE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// A storage failure, or the outcome of a conditional write on `resource` `id`: the codes of
    /// not-found, already-exists and etag-mismatch depend on the resource.
    pub fn from_store(e: StoreError, resource: Resource, id: &str) -> Self {
        let id = id.to_string();
        match e {
            StoreError::NotFound => Error::NotFound { resource, id },
            StoreError::AlreadyExists => Error::AlreadyExists { resource, id },
            StoreError::EtagMismatch => Error::EtagMismatch { resource, id },
            other => Error::Storage(other),
        }
    }
}

/// What a device or client is told to wait before retrying while the store cannot be reached:
/// about what a database server takes to restart or a standby to be promoted.
pub const STORE_RETRY_AFTER_SECS: u32 = 5;

impl From<Throttled> for Error {
    fn from(t: Throttled) -> Self {
        Error::Throttled(t)
    }
}

impl From<StoreError> for Error {
    /// Only backend failures reach here unmapped; callers map the precondition outcomes with
    /// [`Error::from_store`] because their codes depend on the resource.
    fn from(e: StoreError) -> Self {
        Error::Storage(e)
    }
}

/// Says which quota was exhausted and its configured rate, so an operator who sees it in a
/// device's log knows which limit to raise.
fn throttled_message(t: &Throttled) -> String {
    let what = match t.quota {
        Quota::Registrations => format!("more than {} registrations per second for this service", t.limit),
        Quota::Operations => format!("more than {} device requests per second for this service", t.limit),
        Quota::DevicePolls => format!(
            "more than {} operation-status polls in 10 seconds by this device",
            t.limit
        ),
    };
    format!("throttled: {what}; retry after {} s", t.retry_after_secs())
}

fn exists_message(resource: Resource, id: &str) -> String {
    match resource {
        Resource::Certificate | Resource::CredentialPolicy => {
            format!("{resource} '{id}' already exists; send its etag in If-Match (or '*') to replace it")
        }
        _ => format!("{resource} '{id}' already exists; to update it send its current etag in If-Match (or '*')"),
    }
}

fn needed_rights(needed: &[String]) -> String {
    match needed {
        [one] => format!("the {one} right"),
        more => format!("one of the rights {}", more.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::quota::Quota;

    /// `docs/error-codes.md`'s table: code → status column.
    fn documented() -> BTreeMap<u32, u16> {
        let doc = include_str!("../../../docs/error-codes.md");
        let mut out = BTreeMap::new();
        for line in doc.lines() {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(code), Some(status)) = (cols.get(1), cols.get(2)) else {
                continue;
            };
            let (Ok(code), Ok(status)) = (code.trim_start_matches('★').parse(), status.parse()) else {
                continue;
            };
            out.insert(code, status);
        }
        out
    }

    /// One error of every cause. The `match` in the test lists every variant (and sub-variant
    /// whose code differs) without a wildcard, so a new cause does not compile until it is
    /// placed — and the count below makes sure an example of it is here too.
    fn examples() -> Vec<Error> {
        let id = || "x".to_string();
        let throttled = Throttled {
            quota: Quota::Registrations,
            limit: 1,
            wait: std::time::Duration::from_millis(1500),
        };
        let chain = dps_pki::chain::ChainError::NoCertificate;
        let mut out = vec![
            Error::UnknownIdScope { id_scope: id() },
            InvalidArgument::DeviceId(id()).into(),
            BulkInvalid::Empty.into(),
            Error::NoCredential,
            SasRefusal::Bearer.into(),
            X509Refusal::NoCertificate.into(),
            Error::InsufficientRights {
                policy: id(),
                needed: vec!["EnrollmentRead".into()],
            },
            Error::Throttled(throttled),
            Error::OperationNotFound {
                operation_id: id(),
                registration_id: id(),
            },
            Error::NoRegistrationRecord { registration_id: id() },
            Error::EnrollmentDisabled { group: true, id: id() },
            AllocationError::NoLinkedHub.into(),
            HubError::UnknownHub(id()).into(),
            Error::Storage(StoreError::backend("disk full")),
            Error::Storage(StoreError::unavailable("connection refused")),
            TpmRefusal::NotAheadOfRegister { registration_id: id() }.into(),
            TpmRefusal::KeysMissing.into(),
            TpmRefusal::NotEnrolled { registration_id: id() }.into(),
            TpmRefusal::EnrollmentBroken {
                registration_id: id(),
                key: "endorsementKey",
            }
            .into(),
            CaCertificateError::Empty { what: "certificate" }.into(),
            CaCertificateError::NotIssuedByCa {
                name: id(),
                source: chain,
            }
            .into(),
            CaCertificateError::Stored(base64::DecodeError::InvalidLength(3)).into(),
        ];
        for resource in [
            Resource::Enrollment,
            Resource::Group,
            Resource::Registration,
            Resource::Certificate,
            Resource::CredentialPolicy,
        ] {
            out.push(Error::NotFound { resource, id: id() });
            out.push(Error::AlreadyExists { resource, id: id() });
            out.push(Error::EtagMismatch { resource, id: id() });
        }
        out
    }

    #[test]
    fn every_code_the_engine_answers_is_documented_with_its_status() {
        let docs = documented();
        assert!(
            docs.len() > 30,
            "the table of docs/error-codes.md was not found: {docs:?}"
        );
        let mut placed = std::collections::BTreeSet::new();
        for e in examples() {
            // Every variant, no wildcard: a new one must be placed here (and get an example).
            let slot = match &e {
                Error::UnknownIdScope { .. } => 0,
                Error::InvalidArgument(_) => 1,
                Error::Bulk(_) => 2,
                Error::NoCredential => 3,
                Error::Sas(_) => 4,
                Error::X509(_) => 5,
                Error::Tpm(_) => 6,
                Error::InsufficientRights { .. } => 7,
                Error::Throttled(_) => 8,
                Error::NotFound { .. } => 9,
                Error::AlreadyExists { .. } => 10,
                Error::EtagMismatch { .. } => 11,
                Error::OperationNotFound { .. } => 12,
                Error::NoRegistrationRecord { .. } => 13,
                Error::CaCertificate(_) => 14,
                Error::EnrollmentDisabled { .. } => 15,
                Error::Allocation(_) => 16,
                Error::Hub(_) => 17,
                Error::Storage(_) => 18,
            };
            placed.insert(slot);
            let code = e.code();
            assert_eq!(
                docs.get(&code),
                Some(&e.status()),
                "{code} ({e}) is not in docs/error-codes.md with status {}",
                e.status()
            );
            assert_eq!(u32::from(e.status()), code / 1000, "{e}");
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(placed.len(), 19, "every variant has an example");
    }

    #[test]
    fn throttling_says_when_to_retry_and_nothing_else_does() {
        let throttled = Error::Throttled(Throttled {
            quota: Quota::DevicePolls,
            limit: 5,
            wait: std::time::Duration::from_millis(1500),
        });
        assert_eq!(throttled.retry_after(), Some(2));
        assert_eq!(
            throttled.to_string(),
            "throttled: more than 5 operation-status polls in 10 seconds by this device; retry after 2 s"
        );
        assert_eq!(Error::NoCredential.retry_after(), None);
        let away = Error::Storage(StoreError::unavailable("connection refused"));
        assert_eq!((away.status(), away.retry_after()), (503, Some(STORE_RETRY_AFTER_SECS)));
        assert_eq!(Error::Storage(StoreError::backend("disk full")).retry_after(), None);
    }

    #[test]
    fn storage_and_hub_failures_keep_their_typed_cause() {
        let io = std::io::Error::other("disk full");
        let e = Error::from(StoreError::backend(io));
        assert_eq!(e.to_string(), "storage: storage backend failure: disk full");
        let StoreError::Backend(cause) = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<StoreError>())
            .expect("the store error is the source")
        else {
            panic!("a backend failure")
        };
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        let hub = Error::from(HubError::unavailable(std::io::Error::other("unreachable")));
        assert_eq!(hub.code(), codes::HUB_UNAUTHORIZED);
    }
}
