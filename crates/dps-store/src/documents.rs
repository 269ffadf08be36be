//! What the DPS store keeps, independent of the database that keeps it: the writes ([`Op`]),
//! the tables ([`Table`], [`Doc`]) with their SQL, and the [`Store`] contract implemented once
//! over a backend's few primitives ([`Documents`]), so that SQLite and PostgreSQL turn the same
//! calls into the same writes.
//!
//! The SQL here is what both databases accept, written with SQLite's `?N` placeholders; the
//! PostgreSQL backend rewrites them to `$N` (`postgres::placeholders`).

use async_trait::async_trait;
use dps_core::{StoreError, WriteCondition};
use serde::de::DeserializeOwned;

/// The service-managed document tables (conditional put and delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Enrollments,
    Groups,
    Certificates,
    CredentialPolicies,
    LinkedHubs,
    Revocations,
}

impl Table {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Enrollments => "enrollments",
            Table::Groups => "enrollment_groups",
            Table::Certificates => "certificates",
            Table::CredentialPolicies => "credential_policies",
            Table::LinkedHubs => "linked_hubs",
            Table::Revocations => "revocations",
        }
    }

    pub(crate) fn select_etag(self) -> &'static str {
        match self {
            Table::Enrollments => "SELECT etag FROM enrollments WHERE key = ?1",
            Table::Groups => "SELECT etag FROM enrollment_groups WHERE key = ?1",
            Table::Certificates => "SELECT etag FROM certificates WHERE key = ?1",
            Table::CredentialPolicies => "SELECT etag FROM credential_policies WHERE key = ?1",
            Table::LinkedHubs => "SELECT etag FROM linked_hubs WHERE key = ?1",
            Table::Revocations => "SELECT etag FROM revocations WHERE key = ?1",
        }
    }

    pub(crate) fn upsert(self) -> &'static str {
        match self {
            Table::Enrollments => {
                "INSERT INTO enrollments (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::Groups => {
                "INSERT INTO enrollment_groups (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::Certificates => {
                "INSERT INTO certificates (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::CredentialPolicies => {
                "INSERT INTO credential_policies (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::LinkedHubs => {
                "INSERT INTO linked_hubs (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
            Table::Revocations => {
                "INSERT INTO revocations (key, etag, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, doc = excluded.doc"
            }
        }
    }

    pub(crate) fn delete(self) -> &'static str {
        match self {
            Table::Enrollments => "DELETE FROM enrollments WHERE key = ?1",
            Table::Groups => "DELETE FROM enrollment_groups WHERE key = ?1",
            Table::Certificates => "DELETE FROM certificates WHERE key = ?1",
            Table::CredentialPolicies => "DELETE FROM credential_policies WHERE key = ?1",
            Table::LinkedHubs => "DELETE FROM linked_hubs WHERE key = ?1",
            Table::Revocations => "DELETE FROM revocations WHERE key = ?1",
        }
    }
}

pub(crate) const SELECT_REGISTRATION_ETAG: &str = "SELECT etag FROM registrations WHERE key = ?1";
pub(crate) const DELETE_REGISTRATION: &str = "DELETE FROM registrations WHERE key = ?1";
pub(crate) const UPSERT_INTENT: &str = "INSERT INTO registration_intents (key, doc) VALUES (?1, ?2) \
     ON CONFLICT (key) DO UPDATE SET doc = excluded.doc";
pub(crate) const DELETE_INTENT: &str = "DELETE FROM registration_intents WHERE key = ?1";
pub(crate) const UPSERT_REGISTRATION: &str = "INSERT INTO registrations (key, group_key, etag, doc) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET \
     group_key = excluded.group_key, etag = excluded.etag, doc = excluded.doc";

/// One audit entry as it is stored: indexed columns beside the entry's JSON.
pub(crate) struct AuditRow {
    /// Unix milliseconds.
    pub(crate) at_ms: i64,
    pub(crate) kind: &'static str,
    /// The lower-cased registration id, if any.
    pub(crate) registration_key: Option<String>,
    /// Lower-cased.
    pub(crate) outcome: String,
    pub(crate) doc: String,
}

impl AuditRow {
    pub(crate) fn of(entry: &dps_core::audit::AuditEntry) -> Result<Self, StoreError> {
        Ok(Self {
            at_ms: entry.time.timestamp_millis(),
            kind: entry.kind.as_str(),
            registration_key: entry.registration_key(),
            outcome: entry.outcome.to_ascii_lowercase(),
            doc: doc(entry)?,
        })
    }
}

pub(crate) const INSERT_AUDIT: &str =
    "INSERT INTO audit (at_ms, kind, registration_key, outcome, doc) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Removes up to `?2` entries from before `?1` (Unix ms), oldest first: retention deletes in
/// bounded steps, never in one long transaction.
pub(crate) const PRUNE_AUDIT: &str = "DELETE FROM audit WHERE seq IN \
     (SELECT seq FROM audit WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)";

/// Drops the spent nonces expired at `?1`.
pub(crate) const SWEEP_NONCES: &str = "DELETE FROM spent_nonces WHERE expires <= ?1";
/// Records a spent nonce (`?1`) until `?2`; changes no row when it was spent already.
pub(crate) const SPEND_NONCE: &str =
    "INSERT INTO spent_nonces (nonce, expires) VALUES (?1, ?2) ON CONFLICT (nonce) DO NOTHING";

/// Most entries one retention step removes.
pub(crate) const PRUNE_AUDIT_STEP: i64 = 20_000;

/// An audit query as both databases bind it: `?1` the sequence to follow, `?2`..`?3` the time
/// range (Unix ms; the widest when not asked), `?4` the outcome and `?5` the kind (empty: any),
/// `?6` the limit, and with [`AUDIT_BY_REGISTRATION`] `?7` the registration key. No NULL
/// parameter: PostgreSQL cannot tell a bare NULL's type.
pub(crate) struct AuditQuery {
    pub(crate) after: i64,
    pub(crate) since: i64,
    pub(crate) until: i64,
    pub(crate) outcome: String,
    pub(crate) kind: String,
    pub(crate) limit: i64,
    pub(crate) registration_key: Option<String>,
}

const AUDIT_WHERE: &str = "seq > ?1 AND at_ms >= ?2 AND at_ms < ?3 AND (?4 = '' OR outcome = ?4) \
     AND (?5 = '' OR kind = ?5)";

impl AuditQuery {
    pub(crate) fn of(filter: &dps_core::audit::AuditFilter, limit: usize) -> Self {
        let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
        Self {
            after: filter.after.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX)),
            since: filter.since.map_or(i64::MIN, ms),
            until: filter.until.map_or(i64::MAX, ms),
            outcome: filter.outcome.as_deref().unwrap_or_default().to_ascii_lowercase(),
            kind: filter.kind.map(|k| k.as_str()).unwrap_or_default().to_string(),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            registration_key: filter.registration_id.as_deref().map(dps_proto::registration_id::key),
        }
    }

    /// The SQL: by the registration's index when one is named.
    pub(crate) fn sql(&self) -> String {
        match self.registration_key {
            Some(_) => format!(
                "SELECT seq, doc FROM audit WHERE registration_key = ?7 AND {AUDIT_WHERE} ORDER BY seq LIMIT ?6"
            ),
            None => format!("SELECT seq, doc FROM audit WHERE {AUDIT_WHERE} ORDER BY seq LIMIT ?6"),
        }
    }
}

/// One write. Documents arrive already serialised: JSON encoding runs on the callers' threads,
/// in parallel, keeping the single writer's critical path to SQL only.
pub(crate) enum Op {
    /// Conditional create/replace of an enrollment, group or CA certificate.
    Put {
        table: Table,
        key: String,
        etag: Option<String>,
        doc: String,
        cond: WriteCondition,
    },
    /// Conditional delete; deleting an enrollment also deletes the registration with its key.
    Delete {
        table: Table,
        key: String,
        cond: WriteCondition,
    },
    /// Conditional delete of a registration record.
    DeleteRegistration { key: String, cond: WriteCondition },
    /// Unconditional upsert of a registration record, removing its operation's intent.
    CommitRegistration {
        key: String,
        group_key: Option<String>,
        etag: Option<String>,
        doc: String,
        operation_id: Option<String>,
    },
    /// Unconditional upsert of a registration intent (keyed by operation id).
    PutIntent { operation_id: String, doc: String },
    /// Removal of a registration intent; absent is fine.
    DeleteIntent { operation_id: String },
    /// Marks a registration record for reprovisioning, in place (`NotFound` when absent).
    RequestReprovision { key: String },
    /// Appends audit entries.
    AppendAudit { rows: Vec<AuditRow> },
    /// Revocation entries written (key, document) and removed (keys; absent ones are fine),
    /// together.
    ChangeRevocations {
        put: Vec<(String, String)>,
        remove: Vec<String>,
    },
    /// One retention step: removes up to [`PRUNE_AUDIT_STEP`] entries from before `before_ms`.
    PruneAudit { before_ms: i64 },
    /// Records a single-use token's nonce as spent until `expires_ms`
    /// ([`StoreError::AlreadyExists`] when it was already), dropping the nonces expired at
    /// `now_ms`.
    SpendNonce {
        nonce: String,
        expires_ms: i64,
        now_ms: i64,
    },
    /// Test hook: tells the test it is running, then blocks the writer (inside its transaction)
    /// until released, so the test can queue a batch deterministically.
    #[cfg(test)]
    Pause {
        reached: std::sync::mpsc::Sender<()>,
        // In a mutex so that `Op` is `Sync`, as the async writers need.
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    },
    /// Test hook: writes a registration row, then fails, to prove the savepoint undoes it.
    #[cfg(test)]
    WriteThenFail { key: String },
    /// Test hook: leaves a deferred foreign-key violation so that COMMIT itself fails.
    #[cfg(test)]
    PoisonCommit,
}

/// The tables a read addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Doc {
    Enrollments,
    Groups,
    Registrations,
    Certificates,
    CredentialPolicies,
    Intents,
    LinkedHubs,
    Revocations,
}

impl Doc {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Doc::Enrollments => "enrollments",
            Doc::Groups => "enrollment_groups",
            Doc::Registrations => "registrations",
            Doc::Certificates => "certificates",
            Doc::CredentialPolicies => "credential_policies",
            Doc::Intents => "registration_intents",
            Doc::LinkedHubs => "linked_hubs",
            Doc::Revocations => "revocations",
        }
    }

    pub(crate) fn get_sql(self) -> &'static str {
        match self {
            Doc::Enrollments => "SELECT doc FROM enrollments WHERE key = ?1",
            Doc::Groups => "SELECT doc FROM enrollment_groups WHERE key = ?1",
            Doc::Registrations => "SELECT doc FROM registrations WHERE key = ?1",
            Doc::Certificates => "SELECT doc FROM certificates WHERE key = ?1",
            Doc::CredentialPolicies => "SELECT doc FROM credential_policies WHERE key = ?1",
            Doc::Intents => "SELECT doc FROM registration_intents WHERE key = ?1",
            Doc::LinkedHubs => "SELECT doc FROM linked_hubs WHERE key = ?1",
            Doc::Revocations => "SELECT doc FROM revocations WHERE key = ?1",
        }
    }

    /// (first page, next page) queries; `?1` is the limit, `?2` the `after` key.
    pub(crate) fn list_sql(self) -> (&'static str, &'static str) {
        match self {
            Doc::Enrollments => (
                "SELECT key, doc FROM enrollments ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM enrollments WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Groups => (
                "SELECT key, doc FROM enrollment_groups ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM enrollment_groups WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Registrations => (
                "SELECT key, doc FROM registrations ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM registrations WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Certificates => (
                "SELECT key, doc FROM certificates ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM certificates WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::CredentialPolicies => (
                "SELECT key, doc FROM credential_policies ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM credential_policies WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Intents => (
                "SELECT key, doc FROM registration_intents ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM registration_intents WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::LinkedHubs => (
                "SELECT key, doc FROM linked_hubs ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM linked_hubs WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
            Doc::Revocations => (
                "SELECT key, doc FROM revocations ORDER BY key LIMIT ?1",
                "SELECT key, doc FROM revocations WHERE key > ?2 ORDER BY key LIMIT ?1",
            ),
        }
    }
}

/// (first page, next page) of the registrations made through a group: `?1` the limit, `?2` the
/// group's key, `?3` the key to follow.
pub(crate) const LIST_BY_GROUP: (&str, &str) = (
    "SELECT key, doc FROM registrations WHERE group_key = ?2 ORDER BY key LIMIT ?1",
    "SELECT key, doc FROM registrations WHERE group_key = ?2 AND key > ?3 ORDER BY key LIMIT ?1",
);

/// The error for the stored document of `key` in `table` that does not decode: an operator
/// edited it, or a newer build wrote it.
pub(crate) fn undecodable(table: &str, key: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        table: table.to_string(),
        key: key.to_string(),
        source: dps_core::Cause::new(e),
    }
}

/// The primitives a database gives the DPS store: queue a write and wait for its commit; read one
/// document by key; read a page of documents in key order. Everything else is [`Store`]'s
/// implementation, written once ([`store_over_documents`]).
#[async_trait]
pub(crate) trait Documents: Send + Sync + 'static {
    /// See [`dps_core::Store::shared`].
    fn shared(&self) -> bool {
        false
    }

    /// Queues `op` and waits until its batch committed (durably), with `op`'s own outcome.
    async fn write(&self, op: Op) -> Result<(), StoreError>;

    /// The document with `key` (lower-cased) in `table`, decoded.
    async fn get<T: DeserializeOwned + Send + 'static>(&self, table: Doc, key: String)
        -> Result<Option<T>, StoreError>;

    /// A page of `table` in key order, strictly after `after`.
    async fn list<T: DeserializeOwned + Send + 'static>(
        &self,
        table: Doc,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError>;

    /// The audit entries `query` selects: (sequence, JSON) in sequence order.
    async fn audit_page(&self, query: AuditQuery) -> Result<Vec<(i64, String)>, StoreError>;

    /// A page of the registrations made through the group with key `group`, in key order.
    async fn list_by_group<T: DeserializeOwned + Send + 'static>(
        &self,
        group: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError>;
}

/// A document as it is stored (JSON).
pub(crate) fn doc<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::backend(format!("cannot encode document: {e}")))
}

/// How many CA certificates and linked hubs a listing returns (both are few: Azure allows 25
/// certificates and 50 linked hubs).
pub(crate) const SMALL_TABLE: usize = 1000;

/// Implements [`Store`] for a [`Documents`] backend (a macro rather than a blanket impl: the
/// orphan rule forbids implementing dps-core's trait for every `D`).
///
/// Methods a backend implements besides (the shared stores' TPM challenges) follow a `;`.
macro_rules! store_over_documents {
    ($backend:ty $(; $($extra:tt)*)?) => {
        const _: () = {
            use async_trait::async_trait;
            use dps_core::{CaCertificateRecord, CredentialPolicyRecord, RegistrationIntent, RegistrationRecord, StoreError, WriteCondition};
            use dps_proto::model::service::{EnrollmentGroup, IndividualEnrollment, LinkedHubDescription};
            use dps_proto::registration_id::key;
            use $crate::documents::{doc, Doc, Documents, Op, Table, SMALL_TABLE};

            #[async_trait]
            impl dps_core::Store for $backend {
                fn shared(&self) -> bool {
                    Documents::shared(self)
                }

                async fn get_enrollment(&self, id: &str) -> Result<Option<IndividualEnrollment>, StoreError> {
                    self.get(Doc::Enrollments, key(id)).await
                }

                async fn put_enrollment(
                    &self,
                    e: &IndividualEnrollment,
                    cond: &WriteCondition,
                ) -> Result<(), StoreError> {
                    self.write(Op::Put {
                        table: Table::Enrollments,
                        key: key(&e.registration_id),
                        etag: e.etag.clone(),
                        doc: doc(e)?,
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn delete_enrollment(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
                    self.write(Op::Delete {
                        table: Table::Enrollments,
                        key: key(id),
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn list_enrollments(
                    &self,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<IndividualEnrollment>, StoreError> {
                    self.list(Doc::Enrollments, after.map(key), limit).await
                }

                async fn get_group(&self, id: &str) -> Result<Option<EnrollmentGroup>, StoreError> {
                    self.get(Doc::Groups, key(id)).await
                }

                async fn put_group(&self, g: &EnrollmentGroup, cond: &WriteCondition) -> Result<(), StoreError> {
                    self.write(Op::Put {
                        table: Table::Groups,
                        key: key(&g.enrollment_group_id),
                        etag: g.etag.clone(),
                        doc: doc(g)?,
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn delete_group(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
                    self.write(Op::Delete {
                        table: Table::Groups,
                        key: key(id),
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn list_groups(
                    &self,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<EnrollmentGroup>, StoreError> {
                    self.list(Doc::Groups, after.map(key), limit).await
                }

                async fn get_registration(&self, id: &str) -> Result<Option<RegistrationRecord>, StoreError> {
                    self.get(Doc::Registrations, key(id)).await
                }

                async fn commit_registration(&self, r: &RegistrationRecord) -> Result<(), StoreError> {
                    self.write(Op::CommitRegistration {
                        key: r.key(),
                        group_key: r.enrollment_group_id.as_deref().map(key),
                        etag: r.state.etag.clone(),
                        doc: doc(r)?,
                        operation_id: r.operation_id.clone(),
                    })
                    .await
                }

                async fn request_reprovision(&self, id: &str) -> Result<(), StoreError> {
                    self.write(Op::RequestReprovision { key: key(id) }).await
                }

                async fn delete_registration(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
                    self.write(Op::DeleteRegistration {
                        key: key(id),
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn list_registrations_by_group(
                    &self,
                    group_id: &str,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<RegistrationRecord>, StoreError> {
                    self.list_by_group(key(group_id), after.map(key), limit).await
                }

                async fn put_registration_intent(&self, intent: &RegistrationIntent) -> Result<(), StoreError> {
                    self.write(Op::PutIntent {
                        operation_id: intent.operation_id.clone(),
                        doc: doc(intent)?,
                    })
                    .await
                }

                async fn delete_registration_intent(&self, operation_id: &str) -> Result<(), StoreError> {
                    self.write(Op::DeleteIntent {
                        operation_id: operation_id.to_string(),
                    })
                    .await
                }

                async fn list_registration_intents(
                    &self,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<RegistrationIntent>, StoreError> {
                    // Keyed by operation id as it is (not lower-cased).
                    self.list(Doc::Intents, after.map(str::to_string), limit).await
                }

                async fn get_certificate(&self, name: &str) -> Result<Option<CaCertificateRecord>, StoreError> {
                    self.get(Doc::Certificates, key(name)).await
                }

                async fn put_certificate(
                    &self,
                    cert: &CaCertificateRecord,
                    cond: &WriteCondition,
                ) -> Result<(), StoreError> {
                    self.write(Op::Put {
                        table: Table::Certificates,
                        key: key(&cert.name),
                        etag: Some(cert.etag.clone()),
                        doc: doc(cert)?,
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn delete_certificate(&self, name: &str, cond: &WriteCondition) -> Result<(), StoreError> {
                    self.write(Op::Delete {
                        table: Table::Certificates,
                        key: key(name),
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn list_certificates(&self) -> Result<Vec<CaCertificateRecord>, StoreError> {
                    self.list(Doc::Certificates, None, SMALL_TABLE).await
                }

                async fn get_credential_policy(&self, name: &str) -> Result<Option<CredentialPolicyRecord>, StoreError> {
                    self.get(Doc::CredentialPolicies, key(name)).await
                }

                async fn put_credential_policy(
                    &self,
                    policy: &CredentialPolicyRecord,
                    cond: &WriteCondition,
                ) -> Result<(), StoreError> {
                    self.write(Op::Put {
                        table: Table::CredentialPolicies,
                        key: key(&policy.name),
                        etag: Some(policy.etag.clone()),
                        doc: doc(policy)?,
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn delete_credential_policy(&self, name: &str, cond: &WriteCondition) -> Result<(), StoreError> {
                    self.write(Op::Delete {
                        table: Table::CredentialPolicies,
                        key: key(name),
                        cond: cond.clone(),
                    })
                    .await
                }

                async fn list_credential_policies(&self) -> Result<Vec<CredentialPolicyRecord>, StoreError> {
                    self.list(Doc::CredentialPolicies, None, SMALL_TABLE).await
                }

                async fn get_revocation(
                    &self,
                    id: &str,
                ) -> Result<Option<dps_proto::model::revocation::Revocation>, StoreError> {
                    self.get(Doc::Revocations, id.to_string()).await
                }

                async fn list_revocations(
                    &self,
                    after: Option<&str>,
                    limit: usize,
                ) -> Result<Vec<dps_proto::model::revocation::Revocation>, StoreError> {
                    self.list(Doc::Revocations, after.map(str::to_string), limit).await
                }

                async fn change_revocations(
                    &self,
                    put: &[dps_proto::model::revocation::Revocation],
                    remove: &[String],
                ) -> Result<(), StoreError> {
                    if put.is_empty() && remove.is_empty() {
                        return Ok(());
                    }
                    let put = put
                        .iter()
                        .map(|r| Ok((r.id.clone(), doc(r)?)))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    self.write(Op::ChangeRevocations {
                        put,
                        remove: remove.to_vec(),
                    })
                    .await
                }

                async fn list_linked_hubs(&self) -> Result<Vec<LinkedHubDescription>, StoreError> {
                    self.list(Doc::LinkedHubs, None, SMALL_TABLE).await
                }

                async fn put_linked_hub(&self, hub: &LinkedHubDescription) -> Result<(), StoreError> {
                    self.write(Op::Put {
                        table: Table::LinkedHubs,
                        key: key(&hub.name),
                        etag: None,
                        doc: doc(hub)?,
                        cond: WriteCondition::Any,
                    })
                    .await
                }

                async fn delete_linked_hub(&self, name: &str) -> Result<(), StoreError> {
                    self.write(Op::Delete {
                        table: Table::LinkedHubs,
                        key: key(name),
                        cond: WriteCondition::Any,
                    })
                    .await
                }

                async fn append_audit(&self, entries: &[dps_core::audit::AuditEntry]) -> Result<(), StoreError> {
                    if entries.is_empty() {
                        return Ok(());
                    }
                    let rows = entries
                        .iter()
                        .map($crate::documents::AuditRow::of)
                        .collect::<Result<Vec<_>, _>>()?;
                    self.write(Op::AppendAudit { rows }).await
                }

                async fn query_audit(
                    &self,
                    filter: &dps_core::audit::AuditFilter,
                    limit: usize,
                ) -> Result<Vec<dps_core::audit::AuditEntry>, StoreError> {
                    let page = self.audit_page($crate::documents::AuditQuery::of(filter, limit)).await?;
                    page.into_iter()
                        .map(|(seq, text)| {
                            let mut entry: dps_core::audit::AuditEntry = serde_json::from_str(&text)
                                .map_err(|e| $crate::documents::undecodable("audit", &seq.to_string(), e))?;
                            entry.sequence = u64::try_from(seq).unwrap_or_default();
                            Ok(entry)
                        })
                        .collect()
                }

                async fn prune_audit(&self, before: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
                    self.write(Op::PruneAudit {
                        before_ms: before.timestamp_millis(),
                    })
                    .await
                }

                async fn spend_nonce(
                    &self,
                    now: chrono::DateTime<chrono::Utc>,
                    nonce: &str,
                    expires: chrono::DateTime<chrono::Utc>,
                ) -> Result<bool, StoreError> {
                    let spent = self.write(Op::SpendNonce {
                        nonce: nonce.to_string(),
                        expires_ms: expires.timestamp_millis(),
                        now_ms: now.timestamp_millis(),
                    });
                    match spent.await {
                        Ok(()) => Ok(true),
                        Err(StoreError::AlreadyExists) => Ok(false),
                        Err(e) => Err(e),
                    }
                }

                $($($extra)*)?
            }
        };
    };
}
pub(crate) use store_over_documents;
