//! The storage contract. Implementations: in-memory (tests, [`memory::MemoryStore`]), SQLite and
//! PostgreSQL (`dps-store`). All of them pass the same conformance suite.
//!
//! Ids are compared case-insensitively: implementations key rows by the lower-cased id
//! ([`dps_proto::registration_id::key`]) and keep the original casing inside the document.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;

use async_trait::async_trait;
use dps_proto::model::service::{
    AttestationType, EnrollmentGroup, IndividualEnrollment, LinkedHubDescription, RegistrationState, Substatus,
};
use serde::{Deserialize, Serialize};

use crate::cause::Cause;
use crate::hub::DeviceProvisioning;

/// The precondition of a write, from `If-Match` (service-api.md §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCondition {
    /// No `If-Match`: PUT creates only (fails with [`StoreError::AlreadyExists`] if present);
    /// DELETE deletes whatever is there.
    None,
    /// `If-Match: *`: PUT creates or replaces; DELETE deletes whatever is there.
    Any,
    /// `If-Match: <etag>`: the record must exist with exactly this etag.
    Etag(String),
}

impl WriteCondition {
    /// Normalises an `If-Match` header value: trims, drops `W/`, strips one pair of quotes (C# quotes
    /// etags, other SDKs do not).
    pub fn from_if_match(header: Option<&str>) -> Self {
        let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Self::None;
        };
        let h = h.strip_prefix("W/").unwrap_or(h);
        let h = h.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(h);
        if h == "*" {
            Self::Any
        } else {
            Self::Etag(h.to_string())
        }
    }

    /// Checks the condition against the current etag (`None` = record absent) for a PUT.
    pub fn check_put(&self, current: Option<&str>) -> Result<(), StoreError> {
        match (self, current) {
            (Self::None, Some(_)) => Err(StoreError::AlreadyExists),
            (Self::None | Self::Any, _) => Ok(()),
            (Self::Etag(_), None) => Err(StoreError::NotFound),
            (Self::Etag(want), Some(have)) if want == have => Ok(()),
            (Self::Etag(_), Some(_)) => Err(StoreError::EtagMismatch),
        }
    }

    /// Checks the condition for a DELETE.
    pub fn check_delete(&self, current: Option<&str>) -> Result<(), StoreError> {
        match (self, current) {
            (_, None) => Err(StoreError::NotFound),
            (Self::None | Self::Any, Some(_)) => Ok(()),
            (Self::Etag(want), Some(have)) if want == have => Ok(()),
            (Self::Etag(_), Some(_)) => Err(StoreError::EtagMismatch),
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record does not exist.
    #[error("not found")]
    NotFound,
    /// A create-only write found an existing record.
    #[error("already exists")]
    AlreadyExists,
    /// `If-Match` did not match the stored etag.
    #[error("etag mismatch")]
    EtagMismatch,
    /// The backend failed (I/O, a damaged file, connection loss); nothing was written. The
    /// cause is the backend's own error (or a message when the cause is the backend's state,
    /// e.g. a stopped writer).
    #[error("storage backend failure: {0}")]
    Backend(#[source] Cause),
    /// The backend cannot be reached now: its database server is restarting or unreachable, or
    /// the connection was lost. Nothing was written; the same call later succeeds once it is
    /// back, so devices and clients are told to retry ([`crate::Error::retry_after`]).
    #[error("storage unavailable, retry later: {0}")]
    Unavailable(#[source] Cause),
    /// A stored document does not decode as this build's record shape (a hand-edited or damaged
    /// database, or one written by an incompatible build); the store refuses it rather than
    /// guess. Other records still read; nothing was written.
    #[error("stored document '{key}' in {table} does not decode: {source}")]
    Corrupt {
        /// Where the document is stored (the backend's table or collection, e.g.
        /// `enrollments`), so an operator knows what to repair.
        table: String,
        /// Lower-cased id of the record (registration id, group id, certificate name, ...).
        key: String,
        /// What the decoder said (the JSON error).
        source: Cause,
    },
}

impl StoreError {
    /// A backend failure caused by `e` (the backend's own error, or a message when the cause
    /// is the backend's state, e.g. a stopped writer).
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        StoreError::Backend(Cause::new(e))
    }

    /// The backend cannot be reached now because of `e` (see [`StoreError::Unavailable`]).
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        StoreError::Unavailable(Cause::new(e))
    }

    /// Whether retrying later may succeed where this failed ([`StoreError::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A registration record: the service-visible state plus what the engine needs to answer polls
/// and re-registrations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRecord {
    /// Service-visible state (`registrationId`, `assignedHub`, `deviceId`, `status`, ...).
    pub state: RegistrationState,
    /// The group the device registered through, if any (for per-group queries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// How the device attested.
    pub attestation: AttestationType,
    /// The operation that produced this state, so a poll after a restart still finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// An operator asked that the device be reprovisioned at its next registration
    /// ([`crate::Engine::request_reprovision`]): allocation runs again whatever the
    /// enrollment's `updateHubAssignment` says. The next registration's record has it cleared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reprovision_requested: bool,
}

/// A CA certificate registered with the service (`/certificates/{name}`), referenced by
/// `caReferences` in X.509 enrollments. Groups that reference a CA accept devices only once the
/// CA is verified (proof of possession of its private key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificateRecord {
    /// Name as given at upload (case kept; looked up case-insensitively).
    pub name: String,
    /// Etag, new on every write.
    pub etag: String,
    /// The certificate, base64 DER.
    pub certificate: String,
    /// Proof of possession completed (or waived at upload).
    pub is_verified: bool,
    /// The outstanding verification code, if one was generated and not yet used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_code: Option<String>,
    /// Upload time.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Last change.
    pub updated: chrono::DateTime<chrono::Utc>,
}

/// A credential policy (`/credentialPolicies/{name}`): the CA that issues certificates to devices
/// that send a CSR when they register, and how. Its CA key is a secret: never shown by the API,
/// redacted in `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialPolicyRecord {
    /// Name as given at creation (case kept; looked up case-insensitively).
    pub name: String,
    /// Etag, new on every write.
    pub etag: String,
    /// The issuing CA's key type (`P-256`, `P-384`, `RSA-2048`).
    pub key_type: String,
    /// Validity of issued device certificates, in days.
    pub validity_in_days: u32,
    /// Built in (made by the server) or brought.
    pub kind: dps_proto::model::credential_policy::CertificateAuthorityKind,
    /// PEM: the issuing CA's certificate, then the CAs above it.
    pub ca_certificates: String,
    /// PEM PKCS#8: the issuing CA's private key.
    pub ca_key: String,
    /// Creation time.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Last change.
    pub updated: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for CredentialPolicyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialPolicyRecord")
            .field("name", &self.name)
            .field("etag", &self.etag)
            .field("key_type", &self.key_type)
            .field("validity_in_days", &self.validity_in_days)
            .field("kind", &self.kind)
            .field("ca_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A registration between its first durable step and its record (decision 0009).
///
/// The engine stores it before it writes the device identity to the hub, and the store removes it
/// in the transaction that commits the record ([`Store::commit_registration`]). An intent still
/// stored at start-up belongs to a registration that a crash interrupted somewhere between the
/// two; the engine finishes it from what the intent holds (the hub upsert is idempotent per
/// operation), so no hub identity written by provisioning outlives a crash without its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationIntent {
    /// The operation (one per register request): the intent's key. Also in `device` and `record`.
    pub operation_id: String,
    /// The hub the identity is written to.
    pub hub: String,
    /// The identity to create or update (it holds the device's hub credentials).
    pub device: DeviceProvisioning,
    /// The record to commit once the hub has the identity. Its `substatus` is not set yet: it
    /// depends on whether the hub created the device.
    pub record: RegistrationRecord,
    /// The assignment the device had before this registration, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousAssignment>,
}

/// What a device's earlier registration record said, as far as finishing a new one needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousAssignment {
    /// The hub it was assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Its device id there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Its substatus (kept when nothing about the assignment changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<Substatus>,
}

impl RegistrationRecord {
    /// The storage key (lower-cased registration id).
    pub fn key(&self) -> String {
        dps_proto::registration_id::key(&self.state.registration_id)
    }
}

/// An outstanding TPM challenge (the first step of TPM attestation) as a store shared by several
/// nodes keeps it, so that the device's signed registration may reach another node than its
/// challenge request did (decision 0031). A store of one node never sees one: the engine keeps
/// its challenges in memory then.
pub struct StoredTpmChallenge {
    /// Assigned by the store ([`Store::tpm_challenges`]); ignored by [`Store::put_tpm_challenge`].
    pub id: i64,
    /// The lower-cased registration id ([`dps_proto::registration_id::key`]).
    pub registration_key: String,
    /// The challenge key the device's TPM signs its SAS token with: a secret, redacted in
    /// `Debug` and wiped when dropped.
    pub key: zeroize::Zeroizing<Vec<u8>>,
    /// The EK (`TPM2B_PUBLIC`) the key was wrapped for.
    pub ek: Vec<u8>,
    /// The SRK (`TPM2B_PUBLIC`) the key was wrapped for.
    pub srk: Vec<u8>,
    /// When the challenge lapses.
    pub expires: chrono::DateTime<chrono::Utc>,
    /// Spent by a registration ([`Store::spend_tpm_challenge`]): it may authenticate the
    /// device's polls still, but starts no other registration.
    pub spent: bool,
}

impl std::fmt::Debug for StoredTpmChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTpmChallenge")
            .field("id", &self.id)
            .field("registration_key", &self.registration_key)
            .field("key", &"<redacted>")
            .field("expires", &self.expires)
            .field("spent", &self.spent)
            .finish_non_exhaustive()
    }
}

/// Durable storage of enrollments, groups and registration records.
///
/// Writes carry the new document (with its new etag already set by the engine) and the caller's
/// precondition; the store checks the precondition against the stored etag atomically with the
/// write. `commit_registration` must be durable when it returns: the engine acknowledges a
/// registration to the device only after it. Implementations should batch concurrent commits
/// rather than serialize callers on one lock.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether other nodes write this store too (decision 0031): their registrations in flight
    /// leave intents here that this node must not finish while they may still be finishing
    /// them ([`crate::Engine::recover_stale_registrations`]).
    fn shared(&self) -> bool {
        false
    }

    /// Individual enrollment by id (case-insensitive).
    async fn get_enrollment(&self, id: &str) -> Result<Option<IndividualEnrollment>, StoreError>;
    /// Creates or replaces an enrollment under `cond`.
    async fn put_enrollment(&self, e: &IndividualEnrollment, cond: &WriteCondition) -> Result<(), StoreError>;
    /// Deletes an enrollment under `cond`, and its registration record with it.
    async fn delete_enrollment(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError>;
    /// Enrollments ordered by lower-cased id, strictly after `after`, at most `limit`.
    async fn list_enrollments(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>, StoreError>;

    /// Enrollment group by id (case-insensitive).
    async fn get_group(&self, id: &str) -> Result<Option<EnrollmentGroup>, StoreError>;
    /// Creates or replaces a group under `cond`.
    async fn put_group(&self, g: &EnrollmentGroup, cond: &WriteCondition) -> Result<(), StoreError>;
    /// Deletes a group under `cond` (its registration records stay, as in Azure).
    async fn delete_group(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError>;
    /// Groups ordered by lower-cased id, strictly after `after`, at most `limit`.
    async fn list_groups(&self, after: Option<&str>, limit: usize) -> Result<Vec<EnrollmentGroup>, StoreError>;

    /// Registration record by registration id (case-insensitive).
    async fn get_registration(&self, id: &str) -> Result<Option<RegistrationRecord>, StoreError>;
    /// Durably inserts or replaces a registration record and, in the same transaction, removes
    /// the [`RegistrationIntent`] of the operation that produced it (`r.operation_id`), if one is
    /// stored. Returns only once committed.
    async fn commit_registration(&self, r: &RegistrationRecord) -> Result<(), StoreError>;
    /// Marks the registration record `id` for reprovisioning
    /// ([`RegistrationRecord::reprovision_requested`]), atomically with respect to other writes
    /// of it (a registration committing at the same moment is not undone);
    /// [`StoreError::NotFound`] when there is none.
    async fn request_reprovision(&self, id: &str) -> Result<(), StoreError>;
    /// Deletes a registration record under `cond`.
    async fn delete_registration(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError>;
    /// Records of devices registered through `group_id`, ordered by lower-cased registration id.
    async fn list_registrations_by_group(
        &self,
        group_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationRecord>, StoreError>;

    /// Durably stores a registration intent under its operation id (replacing one with the same
    /// id). Returns only once committed: the engine writes the hub identity after it.
    async fn put_registration_intent(&self, intent: &RegistrationIntent) -> Result<(), StoreError>;
    /// Removes the intent of `operation_id` (its registration failed before it reached the hub, or
    /// recovery gave it up). Absent is not an error.
    async fn delete_registration_intent(&self, operation_id: &str) -> Result<(), StoreError>;
    /// Stored intents ordered by operation id, strictly after `after`, at most `limit`. At start-up
    /// these are the registrations a crash interrupted.
    async fn list_registration_intents(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationIntent>, StoreError>;

    /// CA certificate by name (case-insensitive).
    async fn get_certificate(&self, name: &str) -> Result<Option<CaCertificateRecord>, StoreError>;
    /// Creates or replaces a CA certificate under `cond`.
    async fn put_certificate(&self, c: &CaCertificateRecord, cond: &WriteCondition) -> Result<(), StoreError>;
    /// Deletes a CA certificate under `cond`.
    async fn delete_certificate(&self, name: &str, cond: &WriteCondition) -> Result<(), StoreError>;
    /// All CA certificates, ordered by lower-cased name (Azure allows 25; no paging needed).
    async fn list_certificates(&self) -> Result<Vec<CaCertificateRecord>, StoreError>;

    /// Credential policy by name (case-insensitive).
    async fn get_credential_policy(&self, name: &str) -> Result<Option<CredentialPolicyRecord>, StoreError>;
    /// Creates or replaces a credential policy under `cond`.
    async fn put_credential_policy(&self, p: &CredentialPolicyRecord, cond: &WriteCondition) -> Result<(), StoreError>;
    /// Deletes a credential policy under `cond`.
    async fn delete_credential_policy(&self, name: &str, cond: &WriteCondition) -> Result<(), StoreError>;
    /// Every credential policy, ordered by lower-cased name (a few per service; no paging).
    async fn list_credential_policies(&self) -> Result<Vec<CredentialPolicyRecord>, StoreError>;

    /// A revocation entry by id.
    async fn get_revocation(&self, id: &str) -> Result<Option<dps_proto::model::revocation::Revocation>, StoreError>;
    /// Revocation entries ordered by id, strictly after `after`, at most `limit`.
    async fn list_revocations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<dps_proto::model::revocation::Revocation>, StoreError>;
    /// In one commit: creates or replaces the entries `put` (by id) and removes the entries
    /// `remove` (absent ones are fine), so that a revocation list replaces its predecessor whole.
    async fn change_revocations(
        &self,
        put: &[dps_proto::model::revocation::Revocation],
        remove: &[String],
    ) -> Result<(), StoreError>;

    /// Appends audit entries (their `sequence` is the store's to give), in one commit;
    /// returns once they are durable.
    async fn append_audit(&self, entries: &[crate::audit::AuditEntry]) -> Result<(), StoreError>;
    /// The audit entries matching `filter`, in sequence order, at most `limit`.
    async fn query_audit(
        &self,
        filter: &crate::audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditEntry>, StoreError>;
    /// One retention step: removes up to some thousands of the audit entries from before
    /// `before` (oldest first), so that no step holds the store for long; called again and
    /// again, it removes them all.
    async fn prune_audit(&self, before: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError>;

    /// Every linked hub, ordered by lower-cased name (Azure allows 50; no paging needed).
    async fn list_linked_hubs(&self) -> Result<Vec<LinkedHubDescription>, StoreError>;
    /// Creates or replaces the linked hub named `hub.name` (case-insensitive).
    async fn put_linked_hub(&self, hub: &LinkedHubDescription) -> Result<(), StoreError>;
    /// Removes the linked hub `name`; [`StoreError::NotFound`] when there is none.
    async fn delete_linked_hub(&self, name: &str) -> Result<(), StoreError>;

    /// Keeps a new TPM challenge where every node sees it, keeping at most `keep` of the
    /// registration's unexpired ones (the newest) and dropping its expired ones. Only
    /// called on a [`Store::shared`] store; the others refuse. Need not be durable: a
    /// challenge lost to a crash is asked for again.
    async fn put_tpm_challenge(
        &self,
        _now: chrono::DateTime<chrono::Utc>,
        _challenge: &StoredTpmChallenge,
        _keep: usize,
    ) -> Result<(), StoreError> {
        Err(StoreError::backend(
            "this store is not shared: the engine keeps TPM challenges in memory",
        ))
    }
    /// The unexpired challenges of `registration_key` (spent or not), oldest first.
    async fn tpm_challenges(
        &self,
        _now: chrono::DateTime<chrono::Utc>,
        _registration_key: &str,
    ) -> Result<Vec<StoredTpmChallenge>, StoreError> {
        Err(StoreError::backend(
            "this store is not shared: the engine keeps TPM challenges in memory",
        ))
    }
    /// Spends the challenge `id`: true for the one caller that spent it, false when it was spent
    /// or gone already (another node spent it first).
    async fn spend_tpm_challenge(&self, _id: i64) -> Result<bool, StoreError> {
        Err(StoreError::backend(
            "this store is not shared: the engine keeps TPM challenges in memory",
        ))
    }

    /// Spends a single-use token's `nonce` (a portal sign-in link's): true for the one caller
    /// that spent it, false when it was spent already — by this node before a restart, or by
    /// another node of a shared store. Kept until `expires`, when the token is refused anyway;
    /// expired ones (older than `now`) are dropped on the way. Durable once it returns.
    async fn spend_nonce(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        nonce: &str,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_normalisation_and_rules() {
        assert_eq!(WriteCondition::from_if_match(None), WriteCondition::None);
        assert_eq!(WriteCondition::from_if_match(Some(" * ")), WriteCondition::Any);
        assert_eq!(
            WriteCondition::from_if_match(Some("\"abc\"")),
            WriteCondition::Etag("abc".into())
        );
        assert_eq!(
            WriteCondition::from_if_match(Some("W/\"abc\"")),
            WriteCondition::Etag("abc".into())
        );
        assert_eq!(
            WriteCondition::None.check_put(Some("x")),
            Err(StoreError::AlreadyExists)
        );
        assert_eq!(WriteCondition::None.check_put(None), Ok(()));
        assert_eq!(WriteCondition::Any.check_put(Some("x")), Ok(()));
        assert_eq!(WriteCondition::Etag("x".into()).check_put(Some("x")), Ok(()));
        assert_eq!(
            WriteCondition::Etag("x".into()).check_put(Some("y")),
            Err(StoreError::EtagMismatch)
        );
        assert_eq!(
            WriteCondition::Etag("x".into()).check_put(None),
            Err(StoreError::NotFound)
        );
        assert_eq!(WriteCondition::None.check_delete(None), Err(StoreError::NotFound));
        assert_eq!(
            WriteCondition::Etag("x".into()).check_delete(Some("y")),
            Err(StoreError::EtagMismatch)
        );
    }
}
