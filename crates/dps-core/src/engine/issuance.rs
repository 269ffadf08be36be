//! Certificates issued to devices that send a certificate signing request when they register
//! (`csr`, API `2025-07-01-preview`; `clientCertificateCsr`, `2021-11-01-preview`), by the
//! credential policy their enrollment names (decision 0039).
//!
//! `csr` is taken under api-version `2025-07-01-preview` and later only, as Azure does; the older
//! field under any version. The request is checked after the device attested and before
//! anything is written: its CN
//! must be the registration id, its signature must verify, its key must be one devices and
//! verifiers share. The hub identity is then created to authenticate with the issued
//! certificate (by its thumbprint), and the registration result carries the chain: the device's
//! certificate, the policy's issuing CA, its root.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use dps_pki::ca::LocalCa;
use dps_pki::csr::{CertificateRequest, IssuePolicy};
use dps_proto::api_version;
use dps_proto::model::device::DeviceRegistration;
use parking_lot::Mutex;

use super::attestation::{Attested, DeviceRequest};
use super::Engine;
use crate::error::{Error, InvalidArgument};
use crate::hub::{CertificateIssuer, DeviceAuth, IssueError, IssuedCertificate};
use crate::store::StoreError;

/// A certificate issued for a registration.
#[derive(Debug, Clone)]
pub(super) struct Issued {
    /// The device's certificate, then the policy's CA chain: base64 DER, leaf first.
    pub(super) chain: Vec<String>,
    /// The hub identity that authenticates with it.
    pub(super) hub_auth: DeviceAuth,
    /// The credential policy that issued it (the hub renews under it).
    pub(super) policy: String,
    /// The device asked with the older field (`clientCertificateCsr`), so it reads the older
    /// answer (`issuedClientCertificate`).
    pub(super) older_api: bool,
}

impl Issued {
    /// The device's certificate as PEM: the older preview's `issuedClientCertificate`.
    pub(super) fn leaf_pem(&self) -> Option<String> {
        let der = B64.decode(self.chain.first()?).ok()?;
        Some(dps_pki::pem::to_pem("CERTIFICATE", &der))
    }
}

/// Issuing CAs loaded from their policies, by lower-cased policy name with the etag they were
/// loaded at: loading one signs a throw-away certificate (rcgen's view of the CA), which a
/// registration should not pay for. A changed policy (new etag) is loaded again.
#[derive(Default)]
pub(super) struct IssuerCache {
    loaded: Mutex<HashMap<String, (String, Arc<LocalCa>)>>,
}

/// Policies whose CAs are kept loaded; past this the cache starts over (policies are few).
const MAX_LOADED_ISSUERS: usize = 64;

fn refused(reason: impl Into<String>) -> Error {
    InvalidArgument::CertificateSigningRequest(reason.into()).into()
}

impl IssuerCache {
    pub(super) fn get(
        &self,
        key: &str,
        etag: &str,
        load: impl FnOnce() -> Result<LocalCa, Error>,
    ) -> Result<Arc<LocalCa>, Error> {
        if let Some((loaded_etag, ca)) = self.loaded.lock().get(key) {
            if loaded_etag == etag {
                return Ok(ca.clone());
            }
        }
        let ca = Arc::new(load()?);
        let mut loaded = self.loaded.lock();
        if loaded.len() >= MAX_LOADED_ISSUERS {
            loaded.clear();
        }
        loaded.insert(key.to_string(), (etag.to_string(), ca.clone()));
        Ok(ca)
    }
}

/// How a request arrived: `csr` (`2025-07-01-preview`, hub renewal) is base64 DER only; the
/// older `clientCertificateCsr` (`2021-11-01-preview`) is also taken as PEM, which the older
/// SDKs' samples send (the C SDK's `x509csr` and the Python e2e tests pass an `openssl req`
/// PEM file as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsrField {
    Csr,
    ClientCertificateCsr,
}

/// Parses a device's request and checks that it asks for `common_name` (`what` the name is,
/// for the message: the registration id, the device id).
fn request_for(csr: &str, field: CsrField, common_name: &str, what: &str) -> Result<CertificateRequest, String> {
    let der = match field {
        CsrField::Csr => B64
            .decode(csr.trim())
            .map_err(|e| format!("the csr is not base64 DER: {e}"))?,
        CsrField::ClientCertificateCsr => dps_pki::pem::parse_certificate_request(csr)
            .map_err(|e| format!("the clientCertificateCsr is neither PEM nor base64 DER: {e}"))?,
    };
    let request = CertificateRequest::parse(&der).map_err(|e| e.to_string())?;
    if !request.common_name().eq_ignore_ascii_case(common_name) {
        return Err(format!(
            "the certificate signing request's subject CN '{}' is not {what} '{common_name}'",
            request.common_name()
        ));
    }
    Ok(request)
}

/// Why [`Engine::issue_under`] issued nothing.
enum NotIssued {
    /// The policy does not exist (the message names it).
    NoPolicy(String),
    /// The store or the CA failed.
    Failed(Error),
}

impl Engine {
    /// Issues a certificate with subject CN `common_name` for `request` under the policy
    /// `policy_name`: the chain (leaf first, base64 DER) and the leaf's SHA-256 thumbprint.
    async fn issue_under(
        &self,
        now: DateTime<Utc>,
        policy_name: &str,
        request: &CertificateRequest,
        common_name: &str,
    ) -> Result<IssuedCertificate, NotIssued> {
        let policy = match self.store.get_credential_policy(policy_name).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(NotIssued::NoPolicy(policy_name.to_string())),
            Err(e) => return Err(NotIssued::Failed(e.into())),
        };
        let key = dps_proto::registration_id::key(&policy.name);
        let ca = self
            .issuers
            .get(&key, &policy.etag, || {
                LocalCa::from_pem(&policy.ca_certificates, &policy.ca_key).map_err(|e| {
                    Error::Storage(StoreError::backend(format!(
                        "the CA of credential policy '{}' does not load: {e}",
                        policy.name
                    )))
                })
            })
            .map_err(NotIssued::Failed)?;
        let issue = IssuePolicy {
            common_name: common_name.to_string(),
            validity_days: i64::from(policy.validity_in_days),
            now,
            crl_url: self
                .config
                .crl_base_url
                .as_ref()
                .map(|base| format!("{base}/{}", dps_proto::rest::encode_segment(&policy.name))),
        };
        let leaf = ca.issue_for_request(request, &issue).map_err(|e| {
            NotIssued::Failed(Error::Storage(StoreError::backend(format!(
                "issuing with credential policy '{}' failed: {e}",
                policy.name
            ))))
        })?;
        let sha256_thumbprint = dps_pki::thumbprint::sha256_thumbprint(&leaf);
        let chain = std::iter::once(leaf)
            .chain(ca.chain_der())
            .map(|c| B64.encode(c))
            .collect();
        Ok(IssuedCertificate {
            chain,
            sha256_thumbprint,
        })
    }

    /// Issues the certificate a registration asks for with a CSR, if it asks for one; `None`
    /// when it does not, or when its enrollment is disabled (the registration fails anyway).
    pub(super) async fn issue_for_registration(
        &self,
        now: DateTime<Utc>,
        req: &DeviceRequest,
        body: &DeviceRegistration,
        attested: &Attested,
    ) -> Result<Option<Issued>, Error> {
        let registration_id = req.registration_id.as_str();
        let (csr, field) = match (&body.csr, &body.client_certificate_csr) {
            (Some(csr), _) => (csr, CsrField::Csr),
            (None, Some(csr)) => (csr, CsrField::ClientCertificateCsr),
            (None, None) => return Ok(None),
        };
        let version = req.api_version.as_deref().unwrap_or_default();
        if field == CsrField::Csr && !api_version::takes_csr(version) {
            return Err(refused(format!(
                "a csr is taken from api-version {} on; this request names {}",
                api_version::CSR_FROM,
                if version.is_empty() { "none" } else { version }
            )));
        }
        if attested.matched.disabled().is_some() {
            return Ok(None);
        }
        let request = request_for(csr, field, registration_id, "the registration id").map_err(refused)?;
        let policy = attested.matched.credential_policy().map_err(refused)?.ok_or_else(|| {
            refused(format!(
                "the {} names no credential policy, so no certificate can be issued for the CSR",
                attested.matched.describe()
            ))
        })?;
        let issued = match self.issue_under(now, policy, &request, registration_id).await {
            Ok(issued) => issued,
            Err(NotIssued::NoPolicy(name)) => {
                return Err(refused(format!(
                    "the credential policy '{name}' that the {} names does not exist",
                    attested.matched.describe()
                )))
            }
            Err(NotIssued::Failed(e)) => return Err(e),
        };
        Ok(Some(Issued {
            hub_auth: DeviceAuth::SelfSigned {
                primary_thumbprint: issued.sha256_thumbprint.clone(),
                secondary_thumbprint: issued.sha256_thumbprint,
            },
            chain: issued.chain,
            policy: policy.to_string(),
            older_api: field == CsrField::ClientCertificateCsr,
        }))
    }
}

#[async_trait::async_trait]
impl CertificateIssuer for Engine {
    async fn issue(
        &self,
        now: DateTime<Utc>,
        policy: &str,
        common_name: &str,
        csr: &str,
    ) -> Result<IssuedCertificate, IssueError> {
        let request = request_for(csr, CsrField::Csr, common_name, "the device id").map_err(IssueError::Request)?;
        self.issue_under(now, policy, &request, common_name)
            .await
            .map_err(|e| match e {
                NotIssued::NoPolicy(name) => IssueError::NoPolicy(format!(
                    "the credential policy '{name}' that issued the device's certificate no longer exists"
                )),
                NotIssued::Failed(e) => IssueError::Unavailable(e.to_string()),
            })
    }
}
