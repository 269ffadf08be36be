//! An in-memory [`Store`] for engine tests and for `dps serve --store memory`. Not durable.

use std::collections::BTreeMap;

use async_trait::async_trait;
use dps_proto::model::service::{EnrollmentGroup, IndividualEnrollment, LinkedHubDescription};
use dps_proto::registration_id::key;
use parking_lot::RwLock;

use super::{
    CaCertificateRecord, CredentialPolicyRecord, RegistrationIntent, RegistrationRecord, Store, StoreError,
    WriteCondition,
};

/// Ordered maps behind one lock each; fine for tests and small deployments.
#[derive(Default)]
pub struct MemoryStore {
    enrollments: RwLock<BTreeMap<String, IndividualEnrollment>>,
    groups: RwLock<BTreeMap<String, EnrollmentGroup>>,
    registrations: RwLock<BTreeMap<String, RegistrationRecord>>,
    certificates: RwLock<BTreeMap<String, CaCertificateRecord>>,
    credential_policies: RwLock<BTreeMap<String, CredentialPolicyRecord>>,
    revocations: RwLock<BTreeMap<String, dps_proto::model::revocation::Revocation>>,
    linked_hubs: RwLock<BTreeMap<String, LinkedHubDescription>>,
    /// Registration intents by operation id (case kept: operation ids are not user input).
    intents: RwLock<BTreeMap<String, RegistrationIntent>>,
    /// The audit trail, in sequence order, and the last sequence given (kept when pruned).
    audit: RwLock<(u64, Vec<crate::audit::AuditEntry>)>,
    /// Spent single-use nonces and when each expires.
    nonces: RwLock<BTreeMap<String, chrono::DateTime<chrono::Utc>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A named document with an etag (CA certificates, credential policies).
trait Named: Clone {
    fn name(&self) -> &str;
    fn etag(&self) -> &str;
}

impl Named for CaCertificateRecord {
    fn name(&self) -> &str {
        &self.name
    }
    fn etag(&self) -> &str {
        &self.etag
    }
}

impl Named for CredentialPolicyRecord {
    fn name(&self) -> &str {
        &self.name
    }
    fn etag(&self) -> &str {
        &self.etag
    }
}

fn put_named<T: Named>(map: &RwLock<BTreeMap<String, T>>, doc: &T, cond: &WriteCondition) -> Result<(), StoreError> {
    let mut map = map.write();
    let k = key(doc.name());
    cond.check_put(map.get(&k).map(Named::etag))?;
    map.insert(k, doc.clone());
    Ok(())
}

fn delete_named<T: Named>(
    map: &RwLock<BTreeMap<String, T>>,
    name: &str,
    cond: &WriteCondition,
) -> Result<(), StoreError> {
    let mut map = map.write();
    let k = key(name);
    cond.check_delete(map.get(&k).map(Named::etag))?;
    map.remove(&k);
    Ok(())
}

fn page<T: Clone>(map: &BTreeMap<String, T>, after: Option<&str>, limit: usize) -> Vec<T> {
    let start = after.map(key);
    map.iter()
        .filter(|(k, _)| start.as_deref().is_none_or(|s| k.as_str() > s))
        .take(limit)
        .map(|(_, v)| v.clone())
        .collect()
}

#[async_trait]
impl Store for MemoryStore {
    async fn spend_nonce(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        nonce: &str,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let mut nonces = self.nonces.write();
        nonces.retain(|_, until| *until > now);
        Ok(nonces.insert(nonce.to_string(), expires).is_none())
    }

    async fn append_audit(&self, entries: &[crate::audit::AuditEntry]) -> Result<(), StoreError> {
        let (last, trail) = &mut *self.audit.write();
        for entry in entries {
            *last += 1;
            let mut entry = entry.clone();
            entry.sequence = *last;
            trail.push(entry);
        }
        Ok(())
    }

    async fn query_audit(
        &self,
        filter: &crate::audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditEntry>, StoreError> {
        Ok(self
            .audit
            .read()
            .1
            .iter()
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn prune_audit(&self, before: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
        self.audit.write().1.retain(|e| e.time >= before);
        Ok(())
    }

    async fn get_enrollment(&self, id: &str) -> Result<Option<IndividualEnrollment>, StoreError> {
        Ok(self.enrollments.read().get(&key(id)).cloned())
    }

    async fn put_enrollment(&self, e: &IndividualEnrollment, cond: &WriteCondition) -> Result<(), StoreError> {
        let mut map = self.enrollments.write();
        let k = key(&e.registration_id);
        cond.check_put(map.get(&k).map(|x| x.etag.as_deref().unwrap_or("")))?;
        map.insert(k, e.clone());
        Ok(())
    }

    async fn delete_enrollment(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        let mut map = self.enrollments.write();
        let k = key(id);
        cond.check_delete(map.get(&k).map(|x| x.etag.as_deref().unwrap_or("")))?;
        map.remove(&k);
        self.registrations.write().remove(&k);
        Ok(())
    }

    async fn list_enrollments(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IndividualEnrollment>, StoreError> {
        Ok(page(&self.enrollments.read(), after, limit))
    }

    async fn get_group(&self, id: &str) -> Result<Option<EnrollmentGroup>, StoreError> {
        Ok(self.groups.read().get(&key(id)).cloned())
    }

    async fn put_group(&self, g: &EnrollmentGroup, cond: &WriteCondition) -> Result<(), StoreError> {
        let mut map = self.groups.write();
        let k = key(&g.enrollment_group_id);
        cond.check_put(map.get(&k).map(|x| x.etag.as_deref().unwrap_or("")))?;
        map.insert(k, g.clone());
        Ok(())
    }

    async fn delete_group(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        let mut map = self.groups.write();
        let k = key(id);
        cond.check_delete(map.get(&k).map(|x| x.etag.as_deref().unwrap_or("")))?;
        map.remove(&k);
        Ok(())
    }

    async fn list_groups(&self, after: Option<&str>, limit: usize) -> Result<Vec<EnrollmentGroup>, StoreError> {
        Ok(page(&self.groups.read(), after, limit))
    }

    async fn get_registration(&self, id: &str) -> Result<Option<RegistrationRecord>, StoreError> {
        Ok(self.registrations.read().get(&key(id)).cloned())
    }

    async fn commit_registration(&self, r: &RegistrationRecord) -> Result<(), StoreError> {
        // Both locks at once, in the order the other methods never invert, so no reader sees the
        // record without the intent gone or the intent gone without the record.
        let mut registrations = self.registrations.write();
        let mut intents = self.intents.write();
        registrations.insert(r.key(), r.clone());
        if let Some(op) = &r.operation_id {
            intents.remove(op);
        }
        Ok(())
    }

    async fn request_reprovision(&self, id: &str) -> Result<(), StoreError> {
        match self.registrations.write().get_mut(&key(id)) {
            Some(r) => {
                r.reprovision_requested = true;
                Ok(())
            }
            None => Err(StoreError::NotFound),
        }
    }

    async fn delete_registration(&self, id: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        let mut map = self.registrations.write();
        let k = key(id);
        cond.check_delete(map.get(&k).map(|x| x.state.etag.as_deref().unwrap_or("")))?;
        map.remove(&k);
        Ok(())
    }

    async fn list_registrations_by_group(
        &self,
        group_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        let g = key(group_id);
        let start = after.map(key);
        Ok(self
            .registrations
            .read()
            .iter()
            .filter(|(k, r)| {
                r.enrollment_group_id.as_deref().map(key).as_deref() == Some(g.as_str())
                    && start.as_deref().is_none_or(|s| k.as_str() > s)
            })
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn put_registration_intent(&self, intent: &RegistrationIntent) -> Result<(), StoreError> {
        self.intents.write().insert(intent.operation_id.clone(), intent.clone());
        Ok(())
    }

    async fn delete_registration_intent(&self, operation_id: &str) -> Result<(), StoreError> {
        self.intents.write().remove(operation_id);
        Ok(())
    }

    async fn list_registration_intents(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RegistrationIntent>, StoreError> {
        Ok(self
            .intents
            .read()
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|(_, i)| i.clone())
            .collect())
    }

    async fn get_certificate(&self, name: &str) -> Result<Option<CaCertificateRecord>, StoreError> {
        Ok(self.certificates.read().get(&key(name)).cloned())
    }

    async fn put_certificate(&self, c: &CaCertificateRecord, cond: &WriteCondition) -> Result<(), StoreError> {
        put_named(&self.certificates, c, cond)
    }

    async fn delete_certificate(&self, name: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        delete_named(&self.certificates, name, cond)
    }

    async fn list_certificates(&self) -> Result<Vec<CaCertificateRecord>, StoreError> {
        Ok(self.certificates.read().values().cloned().collect())
    }

    async fn get_credential_policy(&self, name: &str) -> Result<Option<CredentialPolicyRecord>, StoreError> {
        Ok(self.credential_policies.read().get(&key(name)).cloned())
    }

    async fn put_credential_policy(&self, p: &CredentialPolicyRecord, cond: &WriteCondition) -> Result<(), StoreError> {
        put_named(&self.credential_policies, p, cond)
    }

    async fn delete_credential_policy(&self, name: &str, cond: &WriteCondition) -> Result<(), StoreError> {
        delete_named(&self.credential_policies, name, cond)
    }

    async fn list_credential_policies(&self) -> Result<Vec<CredentialPolicyRecord>, StoreError> {
        Ok(self.credential_policies.read().values().cloned().collect())
    }

    async fn get_revocation(&self, id: &str) -> Result<Option<dps_proto::model::revocation::Revocation>, StoreError> {
        Ok(self.revocations.read().get(id).cloned())
    }

    async fn list_revocations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<dps_proto::model::revocation::Revocation>, StoreError> {
        Ok(self
            .revocations
            .read()
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn change_revocations(
        &self,
        put: &[dps_proto::model::revocation::Revocation],
        remove: &[String],
    ) -> Result<(), StoreError> {
        let mut map = self.revocations.write();
        for r in put {
            map.insert(r.id.clone(), r.clone());
        }
        for id in remove {
            map.remove(id);
        }
        Ok(())
    }

    async fn list_linked_hubs(&self) -> Result<Vec<LinkedHubDescription>, StoreError> {
        Ok(self.linked_hubs.read().values().cloned().collect())
    }

    async fn put_linked_hub(&self, hub: &LinkedHubDescription) -> Result<(), StoreError> {
        self.linked_hubs.write().insert(key(&hub.name), hub.clone());
        Ok(())
    }

    async fn delete_linked_hub(&self, name: &str) -> Result<(), StoreError> {
        match self.linked_hubs.write().remove(&key(name)) {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_conformance() {
        crate::store::conformance::run_all(&MemoryStore::new()).await;
    }
}
