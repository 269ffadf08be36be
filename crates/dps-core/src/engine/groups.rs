//! An in-memory snapshot of the enrollment groups and registered CA certificates.
//!
//! A device does not name its group: the engine must find the symmetric-key group whose derived
//! key validates the device's signature, or the X.509 group whose signing certificate (or CA
//! reference) the device's chain reaches first. Reading every group from the store on every
//! registration would put a scan on the hot path, so the engine keeps a snapshot (Azure allows at
//! most 100 groups per attestation type and 25 CA certificates) and replaces it after every group
//! or certificate write it makes.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dps_proto::model::service::{AttestationMechanism, AttestationType, EnrollmentGroup};
use parking_lot::RwLock;

use crate::store::{CaCertificateRecord, Store};
use crate::Error;

/// A group with its keys decoded once.
pub(crate) struct CachedGroup {
    pub group: EnrollmentGroup,
    /// Raw primary/secondary group keys (symmetric-key groups only).
    pub keys: Vec<Vec<u8>>,
    /// Certificates a device chain may reach to match this group (X.509 groups only).
    pub anchors: Vec<Anchor>,
}

/// An enrolled certificate an X.509 chain can end at.
#[derive(Clone)]
pub(crate) struct Anchor {
    pub der: Vec<u8>,
    /// Upper-case hex SHA-256 thumbprint.
    pub sha256: String,
    /// Set when the certificate comes from a registered CA certificate (`caReferences`) rather
    /// than from the group's own `signingCertificates`: `(name, verified)`.
    pub ca_reference: Option<(String, bool)>,
}

#[derive(Default)]
pub(crate) struct GroupCache {
    snapshot: RwLock<Arc<Vec<CachedGroup>>>,
    certificates: RwLock<Arc<Vec<CaCertificateRecord>>>,
}

impl GroupCache {
    pub(crate) async fn reload(&self, store: &dyn Store) -> Result<(), Error> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_groups(after.as_deref(), 500).await?;
            let done = page.len() < 500;
            after = page.last().map(|g| g.enrollment_group_id.clone());
            all.extend(page);
            if done {
                break;
            }
        }
        let certificates = store.list_certificates().await?;
        let cached = all
            .into_iter()
            .map(|group| {
                let anchors = anchors_of(&group.attestation, &certificates);
                let keys = match (&group.attestation.kind, &group.attestation.symmetric_key) {
                    (AttestationType::SymmetricKey, Some(sk)) => [&sk.primary_key, &sk.secondary_key]
                        .into_iter()
                        .flatten()
                        .filter_map(|k| B64.decode(k).ok())
                        .collect(),
                    _ => Vec::new(),
                };
                CachedGroup { group, keys, anchors }
            })
            .collect();
        *self.snapshot.write() = Arc::new(cached);
        *self.certificates.write() = Arc::new(certificates);
        Ok(())
    }

    pub(crate) fn snapshot(&self) -> Arc<Vec<CachedGroup>> {
        self.snapshot.read().clone()
    }

    /// Registered CA certificates, as of the last reload.
    pub(crate) fn certificates(&self) -> Arc<Vec<CaCertificateRecord>> {
        self.certificates.read().clone()
    }
}

/// The certificates an X.509 attestation (group, or individual with CA references) accepts as the
/// end of a device chain: its signing certificates and the CA certificates it references.
pub(crate) fn anchors_of(att: &AttestationMechanism, certificates: &[CaCertificateRecord]) -> Vec<Anchor> {
    let Some(x) = att.x509.as_ref().filter(|_| att.kind == AttestationType::X509) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in [x.signing_certificates.as_ref(), x.client_certificates.as_ref()]
        .into_iter()
        .flatten()
    {
        for entry in [c.primary.as_ref(), c.secondary.as_ref()].into_iter().flatten() {
            let Some(text) = entry.certificate.as_deref() else {
                continue;
            };
            if let Some(der) = dps_pki::pem::parse_certificates(text)
                .ok()
                .and_then(|v| v.into_iter().next())
            {
                out.push(Anchor {
                    sha256: dps_pki::thumbprint::sha256_thumbprint(&der),
                    der: der.to_vec(),
                    ca_reference: None,
                });
            }
        }
    }
    if let Some(refs) = &x.ca_references {
        for name in [refs.primary.as_deref(), refs.secondary.as_deref()]
            .into_iter()
            .flatten()
        {
            let Some(rec) = certificates.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
                continue;
            };
            if let Ok(der) = B64.decode(&rec.certificate) {
                out.push(Anchor {
                    sha256: dps_pki::thumbprint::sha256_thumbprint(&der),
                    der,
                    ca_reference: Some((rec.name.clone(), rec.is_verified)),
                });
            }
        }
    }
    out
}
