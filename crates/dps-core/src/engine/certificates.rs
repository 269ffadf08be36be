//! CA certificates with proof of possession (`/certificates`): upload a CA, get a verification
//! code, prove possession of the CA key by presenting a certificate the CA signed whose CN is the
//! code. Enrollments reference verified CAs by name (`caReferences`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use dps_proto::model::certificate::{
    CertificateBody, CertificateProperties, CertificateResponse, VerificationCertificate,
};
use dps_proto::registration_id;

use super::Engine;
use crate::error::{CaCertificateError, Error, InvalidArgument, Resource};
use crate::store::{CaCertificateRecord, StoreError, WriteCondition};

fn store_error(e: StoreError, name: &str) -> Error {
    Error::from_store(e, Resource::Certificate, name)
}

fn not_found(name: &str) -> Error {
    store_error(StoreError::NotFound, name)
}

/// The API view of a stored certificate.
fn response(r: &CaCertificateRecord, verification_code: Option<String>) -> CertificateResponse {
    let summary = B64
        .decode(&r.certificate)
        .ok()
        .and_then(|der| dps_pki::info::summarize(&der).ok());
    CertificateResponse {
        name: r.name.clone(),
        etag: r.etag.clone(),
        properties: CertificateProperties {
            subject: summary.as_ref().map(|s| s.subject_name.clone()).unwrap_or_default(),
            expiry: summary.as_ref().map(|s| s.not_after),
            thumbprint: summary.as_ref().map(|s| s.sha1_thumbprint.clone()).unwrap_or_default(),
            sha256_thumbprint: summary
                .as_ref()
                .map(|s| s.sha256_thumbprint.clone())
                .unwrap_or_default(),
            is_verified: r.is_verified,
            certificate: Some(r.certificate.clone()),
            verification_code,
            created: Some(r.created),
            updated: Some(r.updated),
        },
    }
}

/// Parses one certificate given as PEM or base64 DER.
fn parse_one(text: &str, what: &'static str) -> Result<Vec<u8>, CaCertificateError> {
    let certs =
        dps_pki::pem::parse_certificates(text).map_err(|source| CaCertificateError::Unparsable { what, source })?;
    certs
        .into_iter()
        .next()
        .map(|c| c.to_vec())
        .ok_or(CaCertificateError::Empty { what })
}

impl Engine {
    /// `PUT /certificates/{name}`: uploads (or replaces) a CA certificate. Replacing the
    /// certificate resets verification unless the body marks it verified.
    pub async fn put_certificate(
        &self,
        now: DateTime<Utc>,
        name: &str,
        body: CertificateBody,
        if_match: Option<&str>,
    ) -> Result<CertificateResponse, Error> {
        registration_id::validate(name).map_err(|source| InvalidArgument::ResourceId {
            resource: Resource::Certificate,
            source,
        })?;
        let der = parse_one(&body.certificate, "certificate")?;
        let summary = dps_pki::info::summarize(&der).map_err(|source| CaCertificateError::Unparsable {
            what: "certificate",
            source,
        })?;
        if now > summary.not_after {
            return Err(CaCertificateError::Expired {
                subject: summary.subject_name,
                not_after: summary.not_after,
            }
            .into());
        }
        let stored = self.store.get_certificate(name).await?;
        let record = CaCertificateRecord {
            name: stored
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_else(|| name.to_string()),
            etag: self.new_etag(),
            certificate: B64.encode(&der),
            is_verified: body.is_verified,
            verification_code: None,
            created: stored.as_ref().map(|s| s.created).unwrap_or(now),
            updated: now,
        };
        let result = self
            .store
            .put_certificate(&record, &WriteCondition::from_if_match(if_match))
            .await
            .map_err(|e| store_error(e, name));
        self.groups.reload(self.store.as_ref()).await?;
        result?;
        Ok(response(&record, None))
    }

    /// `GET /certificates/{name}`.
    pub async fn get_certificate(&self, name: &str) -> Result<CertificateResponse, Error> {
        let r = self.store.get_certificate(name).await?.ok_or_else(|| not_found(name))?;
        Ok(response(&r, None))
    }

    /// `GET /certificates`.
    pub async fn list_certificates(&self) -> Result<Vec<CertificateResponse>, Error> {
        Ok(self
            .store
            .list_certificates()
            .await?
            .iter()
            .map(|r| response(r, None))
            .collect())
    }

    /// `DELETE /certificates/{name}`.
    pub async fn delete_certificate(&self, name: &str, if_match: Option<&str>) -> Result<(), Error> {
        let result = self
            .store
            .delete_certificate(name, &WriteCondition::from_if_match(if_match))
            .await
            .map_err(|e| store_error(e, name));
        self.groups.reload(self.store.as_ref()).await?;
        result
    }

    /// `POST /certificates/{name}/generateVerificationCode`: a fresh code replaces any earlier one.
    pub async fn generate_verification_code(
        &self,
        now: DateTime<Utc>,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<CertificateResponse, Error> {
        let mut r = self.store.get_certificate(name).await?.ok_or_else(|| not_found(name))?;
        let cond = match WriteCondition::from_if_match(if_match) {
            WriteCondition::None => WriteCondition::Etag(r.etag.clone()),
            c => c,
        };
        let mut raw = [0u8; 24];
        self.random.fill(&mut raw);
        let code: String = raw.iter().map(|b| format!("{b:02X}")).collect();
        r.verification_code = Some(code.clone());
        r.etag = self.new_etag();
        r.updated = now;
        self.store
            .put_certificate(&r, &cond)
            .await
            .map_err(|e| store_error(e, name))?;
        Ok(response(&r, Some(code)))
    }

    /// `POST /certificates/{name}/verify`: completes proof of possession.
    pub async fn verify_certificate(
        &self,
        now: DateTime<Utc>,
        name: &str,
        if_match: Option<&str>,
        body: VerificationCertificate,
    ) -> Result<CertificateResponse, Error> {
        let mut r = self.store.get_certificate(name).await?.ok_or_else(|| not_found(name))?;
        let cond = match WriteCondition::from_if_match(if_match) {
            WriteCondition::None => WriteCondition::Etag(r.etag.clone()),
            c => c,
        };
        let code = r
            .verification_code
            .clone()
            .ok_or_else(|| CaCertificateError::NoVerificationCode { name: name.to_string() })?;
        let leaf = parse_one(&body.certificate, "verification certificate")?;
        let leaf_summary = dps_pki::info::summarize(&leaf).map_err(|source| CaCertificateError::Unparsable {
            what: "verification certificate",
            source,
        })?;
        if leaf_summary.common_name.as_deref().map(str::trim) != Some(code.as_str()) {
            return Err(CaCertificateError::WrongCode {
                common_name: leaf_summary.common_name.unwrap_or_default(),
                name: name.to_string(),
            }
            .into());
        }
        let ca = B64.decode(&r.certificate).map_err(CaCertificateError::Stored)?;
        dps_pki::chain::verify_issued_by(&leaf, &ca, now).map_err(|source| CaCertificateError::NotIssuedByCa {
            name: name.to_string(),
            source,
        })?;
        r.is_verified = true;
        r.verification_code = None;
        r.etag = self.new_etag();
        r.updated = now;
        let result = self
            .store
            .put_certificate(&r, &cond)
            .await
            .map_err(|e| store_error(e, name));
        self.groups.reload(self.store.as_ref()).await?;
        result?;
        Ok(response(&r, None))
    }
}
