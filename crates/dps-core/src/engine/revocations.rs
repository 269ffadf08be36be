//! Revoked certificates (`/revocations`, `/crls`; decision 0040): entered by hand, imported
//! from the revocation lists of CAs the service knows, and served as revocation lists for the
//! credential policies' CAs. The engine keeps them in a [`RevocationSet`] that X.509
//! attestation and the embedded hubs read.

use std::collections::HashSet;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use dps_pki::crl::Crl;
use dps_proto::model::revocation::{CrlImport, CrlImportResult, Revocation, RevocationBody};

use super::{Engine, Page};
use crate::error::{Error, InvalidArgument, Resource};
use crate::revocation::{normalize_name, normalize_serial, serial_id, thumbprint_id, RevocationSet};
use crate::store::StoreError;

/// Entries read from the store per page when the set is rebuilt.
const LOAD_PAGE: usize = 1_000;
/// Most entries one list request returns.
pub(super) const MAX_REVOCATION_PAGE: usize = 1_000;
/// How long a served revocation list is valid: clients fetch it again after this.
const SERVED_CRL_VALIDITY: chrono::TimeDelta = chrono::TimeDelta::hours(24);

fn invalid(reason: impl Into<String>) -> Error {
    InvalidArgument::Revocation(reason.into()).into()
}

fn not_found(id: &str) -> Error {
    Error::from_store(StoreError::NotFound, Resource::Revocation, id)
}

impl Engine {
    /// The revoked certificates, for the embedded hubs' device authentication.
    pub fn revocations(&self) -> Arc<RevocationSet> {
        self.revocations.clone()
    }

    /// Every stored revocation, read a page at a time.
    async fn all_revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_revocations(after.as_deref(), LOAD_PAGE).await?;
            let full = page.len() == LOAD_PAGE;
            after = page.last().map(|r| r.id.clone());
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Rebuilds the revoked set from the store.
    pub(super) async fn reload_revocations(&self) -> Result<(), StoreError> {
        let all = self.all_revocations().await?;
        self.revocations.replace(&all);
        Ok(())
    }

    /// `POST /revocations`: revokes a certificate (by the certificate, by issuer and serial
    /// number, or by thumbprint). Revoking it again replaces the entry.
    pub async fn add_revocation(&self, now: DateTime<Utc>, body: RevocationBody) -> Result<Revocation, Error> {
        let reason = body.reason.filter(|r| !r.trim().is_empty());
        let entry = match (
            &body.certificate,
            &body.issuer,
            &body.serial_number,
            &body.sha256_thumbprint,
        ) {
            (Some(cert), None, None, None) => {
                let der = dps_pki::pem::parse_certificates(cert)
                    .map_err(|e| invalid(format!("certificate: {e}")))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| invalid("certificate: no certificate found"))?;
                let s = dps_pki::info::summarize(&der).map_err(|e| invalid(format!("certificate: {e}")))?;
                Revocation {
                    id: serial_id(&s.issuer_name, &s.serial_number),
                    serial_number: Some(normalize_serial(&s.serial_number)),
                    issuer: Some(s.issuer_name),
                    sha256_thumbprint: Some(s.sha256_thumbprint),
                    subject: Some(s.subject_name),
                    ..Default::default()
                }
            }
            (None, Some(issuer), Some(serial), None) => {
                let serial = normalize_serial(serial);
                if issuer.trim().is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(
                        "issuer must be a distinguished name and serialNumber hex digits (colons allowed)",
                    ));
                }
                Revocation {
                    id: serial_id(issuer, &serial),
                    issuer: Some(issuer.trim().to_string()),
                    serial_number: Some(serial),
                    ..Default::default()
                }
            }
            (None, None, None, Some(thumbprint)) => {
                let t = dps_pki::thumbprint::normalize_hex(thumbprint);
                if t.len() != 64 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid("sha256Thumbprint must be 64 hex digits"));
                }
                Revocation {
                    id: thumbprint_id(&t),
                    sha256_thumbprint: Some(t),
                    ..Default::default()
                }
            }
            _ => {
                return Err(invalid(
                    "name the certificate one way: certificate, or issuer with serialNumber, or sha256Thumbprint",
                ))
            }
        };
        let entry = Revocation {
            reason,
            source: "manual".into(),
            revoked_date_time_utc: Some(now),
            ..entry
        };
        self.store.change_revocations(std::slice::from_ref(&entry), &[]).await?;
        self.reload_revocations().await?;
        tracing::info!(id = %entry.id, issuer = ?entry.issuer, serial = ?entry.serial_number, thumbprint = ?entry.sha256_thumbprint, "certificate revoked");
        Ok(entry)
    }

    /// `GET /revocations/{id}`.
    pub async fn get_revocation(&self, id: &str) -> Result<Revocation, Error> {
        self.store.get_revocation(id).await?.ok_or_else(|| not_found(id))
    }

    /// `GET /revocations`: entries by id after `continuation`, at most `page`.
    pub async fn list_revocations(
        &self,
        continuation: Option<&str>,
        page: Option<usize>,
    ) -> Result<Page<Revocation>, Error> {
        let limit = page.unwrap_or(MAX_REVOCATION_PAGE).clamp(1, MAX_REVOCATION_PAGE);
        let items = self.store.list_revocations(continuation, limit).await?;
        let continuation = (items.len() == limit)
            .then(|| items.last().map(|r| r.id.clone()))
            .flatten();
        Ok(Page { items, continuation })
    }

    /// `DELETE /revocations/{id}`: the certificate is accepted again (unless a list names it).
    pub async fn delete_revocation(&self, id: &str) -> Result<(), Error> {
        if self.store.get_revocation(id).await?.is_none() {
            return Err(not_found(id));
        }
        self.store.change_revocations(&[], &[id.to_string()]).await?;
        self.reload_revocations().await?;
        Ok(())
    }

    /// The CA certificates the service knows: registered ones, groups' signing certificates,
    /// credential policies' CAs (DER).
    async fn known_cas(&self) -> Result<Vec<Vec<u8>>, Error> {
        let mut out: Vec<Vec<u8>> = self
            .store
            .list_certificates()
            .await?
            .iter()
            .filter_map(|c| B64.decode(&c.certificate).ok())
            .collect();
        for g in self.groups.snapshot().iter() {
            out.extend(g.anchors.iter().map(|a| a.der.clone()));
        }
        for p in self.store.list_credential_policies().await? {
            out.extend(
                dps_pki::pem::parse_certificates(&p.ca_certificates)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.to_vec()),
            );
        }
        Ok(out)
    }

    /// `POST /crls`: imports the revocation list of a CA the service knows, replacing the list
    /// imported from it before. Nothing is written unless the whole list reads and its
    /// signature verifies.
    pub async fn import_crl(&self, body: CrlImport) -> Result<CrlImportResult, Error> {
        let crl = Crl::parse_text(&body.crl).map_err(|e| invalid(format!("crl: {e}")))?;
        let cas = self.known_cas().await?;
        if !cas.iter().any(|ca| crl.is_signed_by(ca)) {
            return Err(invalid(format!(
                "the revocation list of '{}' is not signed by a CA this service knows: upload the CA \
                 (dps certificate create) or enroll it in a group first",
                crl.issuer
            )));
        }
        let put: Vec<Revocation> = crl
            .entries
            .iter()
            .map(|e| Revocation {
                id: serial_id(&crl.issuer, &e.serial_number),
                issuer: Some(crl.issuer.clone()),
                serial_number: Some(normalize_serial(&e.serial_number)),
                reason: e.reason.clone(),
                source: "crl".into(),
                revoked_date_time_utc: Some(e.revoked),
                ..Default::default()
            })
            .collect();
        let keep: HashSet<&str> = put.iter().map(|r| r.id.as_str()).collect();
        let issuer = normalize_name(&crl.issuer);
        let remove: Vec<String> = self
            .all_revocations()
            .await?
            .into_iter()
            .filter(|r| r.source == "crl" && r.issuer.as_deref().map(normalize_name) == Some(issuer.clone()))
            .filter(|r| !keep.contains(r.id.as_str()))
            .map(|r| r.id)
            .collect();
        self.store.change_revocations(&put, &remove).await?;
        self.reload_revocations().await?;
        tracing::info!(issuer = %crl.issuer, revoked = put.len(), removed = remove.len(), "revocation list imported");
        Ok(CrlImportResult {
            issuer: crl.issuer,
            revoked: put.len(),
            removed: remove.len(),
            this_update: Some(crl.this_update),
            next_update: crl.next_update,
        })
    }

    /// `GET /crl/{policy}`: the revocation list of a credential policy's issuing CA (DER),
    /// naming the certificates it issued that are revoked, valid for a day; signed again when the
    /// policy or the revocations change, or after an hour ([`ServedCrls`]).
    pub async fn policy_crl(&self, now: DateTime<Utc>, policy: &str) -> Result<Arc<Vec<u8>>, Error> {
        let record = self
            .store
            .get_credential_policy(policy)
            .await?
            .ok_or_else(|| Error::from_store(StoreError::NotFound, Resource::CredentialPolicy, policy))?;
        let key = dps_proto::registration_id::key(&record.name);
        let generation = self.revocations.generation();
        if let Some(der) = self.served_crls.fresh(&key, &record.etag, generation, now) {
            return Ok(der);
        }
        let ca = self.issuers.get(&key, &record.etag, || {
            dps_pki::ca::LocalCa::from_pem(&record.ca_certificates, &record.ca_key).map_err(|e| {
                Error::Storage(StoreError::backend(format!(
                    "the CA of credential policy '{policy}': {e}"
                )))
            })
        })?;
        let subject = dps_pki::info::summarize(&ca.cert_der())
            .map(|s| normalize_name(&s.subject_name))
            .unwrap_or_default();
        let revoked: Vec<(String, DateTime<Utc>)> = self
            .all_revocations()
            .await?
            .into_iter()
            .filter(|r| r.issuer.as_deref().map(normalize_name) == Some(subject.clone()))
            .filter_map(|r| {
                let serial = r.serial_number?;
                let even = if serial.len() % 2 == 1 {
                    format!("0{serial}")
                } else {
                    serial
                };
                Some((even, r.revoked_date_time_utc.unwrap_or(now)))
            })
            .collect();
        let der = ca
            .issue_crl(&revoked, now, SERVED_CRL_VALIDITY, now.timestamp().max(0) as u64)
            .map_err(|e| {
                Error::Storage(StoreError::backend(format!(
                    "signing the revocation list of '{policy}': {e}"
                )))
            })?;
        let der = Arc::new(der);
        self.served_crls.keep(key, record.etag, generation, now, der.clone());
        Ok(der)
    }
}

/// Revocation lists served recently, by policy: the endpoint is public, so a list is signed
/// once and served until the policy or the revocations change, or it is an hour old.
#[derive(Default)]
pub(super) struct ServedCrls {
    lists: parking_lot::Mutex<std::collections::HashMap<String, ServedCrl>>,
}

struct ServedCrl {
    etag: String,
    generation: u64,
    made: DateTime<Utc>,
    der: Arc<Vec<u8>>,
}

/// How long a served list is reused while nothing changes.
const SERVED_CRL_REUSE: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Policies whose lists are kept; past this the cache starts over (policies are few).
const MAX_SERVED_CRLS: usize = 64;

impl ServedCrls {
    fn fresh(&self, key: &str, etag: &str, generation: u64, now: DateTime<Utc>) -> Option<Arc<Vec<u8>>> {
        self.lists
            .lock()
            .get(key)
            .filter(|c| c.etag == etag && c.generation == generation && now - c.made < SERVED_CRL_REUSE)
            .map(|c| c.der.clone())
    }

    fn keep(&self, key: String, etag: String, generation: u64, now: DateTime<Utc>, der: Arc<Vec<u8>>) {
        let mut lists = self.lists.lock();
        if lists.len() >= MAX_SERVED_CRLS {
            lists.clear();
        }
        lists.insert(
            key,
            ServedCrl {
                etag,
                generation,
                made: now,
                der,
            },
        );
    }
}
