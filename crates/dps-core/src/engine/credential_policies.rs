//! Credential policies (`/credentialPolicies/{name}`): the CAs that issue operational
//! certificates to devices sending a certificate signing request when they register
//! (decision 0039).
//!
//! A built-in policy's CA is made when the policy is created: a root of its own, which signs an
//! issuing CA (path length 0) and is then discarded, so that no key able to mint other CAs is
//! kept anywhere; the issuing CA's key is kept in the store, where every node finds it. A
//! brought CA is the operator's certificate chain and PKCS#8 key.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_proto::model::credential_policy::{
    CertificateAuthorityInfo, CertificateAuthorityKind, CredentialPolicy, CredentialPolicyBody,
};
use dps_proto::registration_id;

use super::Engine;
use crate::error::{Error, InvalidArgument, Resource};
use crate::store::{CredentialPolicyRecord, StoreError, WriteCondition};

/// Validity of issued device certificates when a policy sets none: short enough that renewal
/// is routine, as Azure's certificate management intends (it allows 1 to 90 days).
pub(super) const DEFAULT_VALIDITY_DAYS: u32 = 30;
/// The longest validity a policy may set: ten years, the life of a built-in root.
pub(super) const MAX_VALIDITY_DAYS: u32 = 3650;

fn store_error(e: StoreError, name: &str) -> Error {
    Error::from_store(e, Resource::CredentialPolicy, name)
}

fn invalid(name: &str, reason: impl Into<String>) -> Error {
    InvalidArgument::CredentialPolicy {
        name: name.to_string(),
        reason: reason.into(),
    }
    .into()
}

/// The API view of a stored policy: facts about its CA, never its key.
fn view(r: &CredentialPolicyRecord) -> CredentialPolicy {
    let certs = dps_pki::pem::parse_certificates(&r.ca_certificates).unwrap_or_default();
    let summary = certs.first().and_then(|c| dps_pki::info::summarize(c).ok());
    CredentialPolicy {
        name: r.name.clone(),
        etag: r.etag.clone(),
        key_type: r.key_type.clone(),
        validity_in_days: r.validity_in_days,
        certificate_authority: CertificateAuthorityInfo {
            kind: r.kind,
            subject: summary.as_ref().map(|s| s.subject_name.clone()).unwrap_or_default(),
            sha256_thumbprint: summary
                .as_ref()
                .map(|s| s.sha256_thumbprint.clone())
                .unwrap_or_default(),
            not_after_utc: summary.as_ref().map(|s| s.not_after),
            certificates: certs.iter().map(|c| B64.encode(c)).collect(),
        },
        created_date_time_utc: Some(r.created),
        last_updated_date_time_utc: Some(r.updated),
    }
}

/// A policy's issuing CA: its chain (PEM, issuing CA first), key (PEM) and key type.
struct IssuingCa {
    kind: CertificateAuthorityKind,
    alg: KeyAlgorithm,
    certificates: String,
    key: String,
}

/// Makes a built-in CA: a root that signs an issuing CA and is dropped (its key with it).
fn built_in_ca(name: &str, alg: KeyAlgorithm) -> Result<IssuingCa, dps_pki::PkiError> {
    let root = LocalCa::generate_with(&format!("dps credential policy {name} root"), alg)?;
    let issuing = root.issue_intermediate(&format!("dps credential policy {name} issuing CA"), Some(0), alg)?;
    Ok(IssuingCa {
        kind: CertificateAuthorityKind::BuiltIn,
        alg,
        certificates: issuing.chain_pem(),
        key: issuing.key_pem(),
    })
}

/// Checks a brought CA: a CA certificate matching its PKCS#8 key, of a supported key type, not
/// expired.
fn brought_ca(now: DateTime<Utc>, name: &str, certificates: &str, key: &str) -> Result<IssuingCa, Error> {
    let ca = LocalCa::from_pem(certificates, key)
        .map_err(|e| invalid(name, format!("certificateAuthority is not a usable CA: {e}")))?;
    let alg = ca.key_algorithm().ok_or_else(|| {
        invalid(
            name,
            "certificateAuthority.privateKey is of a type this service does not issue with (use P-256, P-384 or RSA-2048)",
        )
    })?;
    let summary = dps_pki::info::summarize(&ca.cert_der())
        .map_err(|e| invalid(name, format!("certificateAuthority.certificates: {e}")))?;
    if now > summary.not_after {
        return Err(invalid(
            name,
            format!(
                "the CA certificate '{}' expired at {}",
                summary.subject_name,
                dps_proto::timefmt::format_seconds(&summary.not_after)
            ),
        ));
    }
    Ok(IssuingCa {
        kind: CertificateAuthorityKind::Brought,
        alg,
        certificates: ca.chain_pem(),
        key: ca.key_pem(),
    })
}

impl Engine {
    /// `PUT /credentialPolicies/{name}`: creates a policy (making its built-in CA, or taking the
    /// brought one), or changes one. A change keeps the policy's CA unless it brings another or
    /// asks for another key type (then a new built-in CA is made: devices renew into it).
    pub async fn put_credential_policy(
        &self,
        now: DateTime<Utc>,
        name: &str,
        body: CredentialPolicyBody,
        if_match: Option<&str>,
    ) -> Result<CredentialPolicy, Error> {
        registration_id::validate(name).map_err(|source| InvalidArgument::ResourceId {
            resource: Resource::CredentialPolicy,
            source,
        })?;
        let requested = match body.key_type.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => Some(
                KeyAlgorithm::from_name(k)
                    .ok_or_else(|| invalid(name, format!("keyType '{k}' is not one of P-256, P-384, RSA-2048")))?,
            ),
        };
        let stored = self.store.get_credential_policy(name).await?;
        let validity = body
            .validity_in_days
            .or(stored.as_ref().map(|s| s.validity_in_days))
            .unwrap_or(DEFAULT_VALIDITY_DAYS);
        if !(1..=MAX_VALIDITY_DAYS).contains(&validity) {
            return Err(invalid(
                name,
                format!("validityInDays {validity} is not between 1 and {MAX_VALIDITY_DAYS}"),
            ));
        }
        let cond = WriteCondition::from_if_match(if_match.or(body.etag.as_deref()));
        // The precondition is checked before a CA is made for nothing (and again by the store).
        cond.check_put(stored.as_ref().map(|s| s.etag.as_str()))
            .map_err(|e| store_error(e, name))?;
        let kept = stored.as_ref().filter(|s| {
            body.certificate_authority.is_none()
                && requested.is_none_or(|alg| KeyAlgorithm::from_name(&s.key_type) == Some(alg))
        });
        let ca = match (&body.certificate_authority, kept) {
            (Some(brought), _) => {
                let ca = brought_ca(now, name, &brought.certificates, &brought.private_key)?;
                if let Some(alg) = requested.filter(|alg| *alg != ca.alg) {
                    return Err(invalid(
                        name,
                        format!("keyType {alg} does not match the brought CA's key, which is {}", ca.alg),
                    ));
                }
                ca
            }
            (None, Some(s)) => IssuingCa {
                kind: s.kind,
                alg: KeyAlgorithm::from_name(&s.key_type).unwrap_or_default(),
                certificates: s.ca_certificates.clone(),
                key: s.ca_key.clone(),
            },
            // Key generation takes a millisecond (RSA: a good part of a second) on the thread
            // serving this request; policies are created rarely, and the engine stays free of
            // any one runtime.
            (None, None) => built_in_ca(name, requested.unwrap_or_default())
                .map_err(|e| invalid(name, format!("making its CA failed: {e}")))?,
        };
        let record = CredentialPolicyRecord {
            name: stored
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_else(|| name.to_string()),
            etag: self.new_etag(),
            key_type: ca.alg.name().to_string(),
            validity_in_days: validity,
            kind: ca.kind,
            ca_certificates: ca.certificates,
            ca_key: ca.key,
            created: stored.as_ref().map(|s| s.created).unwrap_or(now),
            updated: now,
        };
        self.store
            .put_credential_policy(&record, &cond)
            .await
            .map_err(|e| store_error(e, name))?;
        Ok(view(&record))
    }

    /// `GET /credentialPolicies/{name}`.
    pub async fn get_credential_policy(&self, name: &str) -> Result<CredentialPolicy, Error> {
        let r = self
            .store
            .get_credential_policy(name)
            .await?
            .ok_or_else(|| store_error(StoreError::NotFound, name))?;
        Ok(view(&r))
    }

    /// `GET /credentialPolicies`.
    pub async fn list_credential_policies(&self) -> Result<Vec<CredentialPolicy>, Error> {
        Ok(self.store.list_credential_policies().await?.iter().map(view).collect())
    }

    /// `DELETE /credentialPolicies/{name}`. Enrollments that name it keep their other settings;
    /// their devices' registrations with a CSR fail, saying the policy is gone, until it is
    /// created again or the enrollments name another.
    pub async fn delete_credential_policy(&self, name: &str, if_match: Option<&str>) -> Result<(), Error> {
        self.store
            .delete_credential_policy(name, &WriteCondition::from_if_match(if_match))
            .await
            .map_err(|e| store_error(e, name))
    }

    /// Checks the credential policy an enrollment or group names (by either field): it must
    /// exist when the enrollment is written, so that no device fails later for it.
    pub(super) async fn check_named_credential_policy(
        &self,
        resource: Resource,
        credential_policy_name: Option<&str>,
        older: Option<&dps_proto::model::service::ClientCertificateIssuancePolicy>,
    ) -> Result<(), Error> {
        let named = dps_proto::model::service::named_credential_policy(credential_policy_name, older)
            .map_err(|reason| InvalidArgument::EnrollmentCredentialPolicy { resource, reason })?;
        let Some(name) = named else {
            return Ok(());
        };
        if self.store.get_credential_policy(name).await?.is_none() {
            return Err(InvalidArgument::EnrollmentCredentialPolicy {
                resource,
                reason: format!(
                    "credential policy '{name}' does not exist (create it first: dps credential-policy create)"
                ),
            }
            .into());
        }
        Ok(())
    }
}
