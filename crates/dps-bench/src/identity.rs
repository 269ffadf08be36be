//! The simulated devices' identities: registration ids, keys derived from the group key, and
//! X.509 device certificates issued before the timed phase.

use std::sync::Arc;

use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_pki::PkiError;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::wire::Trust;
use super::BenchError;

/// Validity of bench device certificates: the run is short, but a day avoids clock-edge cases.
const DEVICE_CERT_DAYS: i64 = 2;

/// One X.509 device: its certificate chain (leaf, then the intermediate) and key, as PEM for the
/// device SDK and as DER for the lean client.
pub struct X509Identity {
    chain_pem: String,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
}

impl X509Identity {
    /// `(chain PEM, key PEM)` for `dps_client::X509Provider`.
    pub fn pem(&self) -> (&str, &str) {
        (&self.chain_pem, &self.key_pem)
    }
}

/// How every device of a run authenticates.
pub enum Credentials {
    /// SAS tokens signed with `HMAC(groupKey, registrationId)`.
    SymmetricKey {
        /// The group key, base64 (for the device SDK's provider).
        group_key_b64: String,
        /// The group key, raw.
        group_key: Vec<u8>,
    },
    /// A device certificate per device, indexed like the devices.
    X509(Vec<X509Identity>),
}

impl Credentials {
    /// The raw device key of `registration_id` (symmetric key only).
    pub fn device_key(&self, registration_id: &str) -> Option<Vec<u8>> {
        match self {
            Credentials::SymmetricKey { group_key, .. } => {
                Some(dps_proto::sas::hmac_sha256(group_key, registration_id.as_bytes()))
            }
            Credentials::X509(_) => None,
        }
    }

    /// The TLS configuration of device `index`: the shared one, or one presenting its certificate
    /// (certificates are reused round-robin beyond the issued ones: the `tls` ceiling of an
    /// X.509 run handshakes more often than there are devices).
    pub fn tls_config(&self, trust: &Trust, index: usize) -> Result<Arc<ClientConfig>, String> {
        match self {
            Credentials::SymmetricKey { .. } => Ok(trust.anonymous()),
            Credentials::X509(ids) => {
                if ids.is_empty() {
                    return Err("no device certificates".into());
                }
                let id = &ids[index % ids.len().max(1)];
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_pkcs8.clone()));
                trust.with_identity(id.chain.clone(), key)
            }
        }
    }

    /// The X.509 identity of device `index`.
    pub fn x509(&self, index: usize) -> Option<&X509Identity> {
        match self {
            Credentials::X509(ids) => ids.get(index),
            Credentials::SymmetricKey { .. } => None,
        }
    }
}

/// The registration id (and X.509 common name) of device `index` of run `run_id`.
pub fn registration_id(run_id: &str, index: usize) -> String {
    format!("{run_id}-{index}")
}

/// Issues one P-256 certificate per device (CN = registration id) under `intermediate`, spread
/// over all cores. Runs on blocking threads: key generation
/// and signing are pure CPU.
pub async fn issue_certificates(
    intermediate: Arc<LocalCa>,
    run_id: &str,
    count: usize,
) -> Result<Vec<X509Identity>, BenchError> {
    let run_id = run_id.to_string();
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let chunk = count.div_ceil(threads).max(1);
        let intermediate_der = intermediate.cert_der();
        let parts: Vec<Result<Vec<X509Identity>, BenchError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..count)
                .step_by(chunk)
                .map(|start| {
                    let (ca, run_id, int_der) = (&intermediate, &run_id, &intermediate_der);
                    s.spawn(move || {
                        (start..(start + chunk).min(count))
                            .map(|i| issue_one(ca, int_der, &registration_id(run_id, i)))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                // A thread's panic becomes the blocking task's, reported as its JoinError.
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        let mut all = Vec::with_capacity(count);
        for p in parts {
            all.extend(p?);
        }
        Ok(all)
    })
    .await
    .map_err(BenchError::CertificateTask)?
}

fn issue_one(ca: &LocalCa, intermediate: &CertificateDer<'static>, cn: &str) -> Result<X509Identity, BenchError> {
    let failed = |e| BenchError::certificates(format!("cannot issue the certificate of {cn}"), e);
    let issued = ca
        .issue_device_certificate(cn, DEVICE_CERT_DAYS, KeyAlgorithm::EcdsaP256)
        .map_err(failed)?;
    let leaf = dps_pki::pem::parse_certificates(&issued.cert_pem)
        .map_err(failed)?
        .remove(0);
    let key_pkcs8 = match dps_pki::pem::parse_private_key(&issued.key_pem).map_err(failed)? {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => return Err(failed(PkiError::UnsupportedKey("the issued key is not PKCS#8".into()))),
    };
    let chain_pem = format!(
        "{}{}",
        issued.cert_pem,
        dps_pki::pem::to_pem("CERTIFICATE", intermediate)
    );
    Ok(X509Identity {
        chain_pem,
        key_pem: issued.key_pem,
        chain: vec![leaf, intermediate.clone()],
        key_pkcs8,
    })
}
