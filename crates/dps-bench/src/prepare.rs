//! The bench's own enrollment, created through the service API before the run, and the cleanup
//! after it: registration records, the hub devices they created, and the group.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dps_client::{RegistryClient, ServiceClient};
use dps_pki::ca::{KeyAlgorithm, LocalCa};
use dps_proto::model::service::{
    AttestationMechanism, AttestationType, EnrollmentGroup, SymmetricKeyAttestation, X509Attestation,
    X509CertificateWithInfo, X509Certificates,
};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::identity::{issue_certificates, Credentials};
use super::{Attestation, BenchError};

/// REST calls in flight while cleaning up (deleting 50,000 records one by one would take minutes).
const CLEANUP_CONCURRENCY: usize = 16;

/// The credentials of a run's devices and the attestation of the group they register through.
pub struct Prepared {
    /// How devices authenticate.
    pub credentials: Credentials,
    /// The enrollment group's attestation.
    pub group_attestation: AttestationMechanism,
    /// Seconds spent creating the CA and the device certificates (X.509).
    pub certificate_seconds: f64,
}

/// Makes the credentials of `devices` devices.
///
/// Symmetric key: one random group key; device keys are derived from it, so any number of
/// devices needs one group. X.509: a fresh P-256 root and an intermediate (path length 0) under
/// it; the group's signing certificate is the intermediate — the shortest real path, no proof of
/// possession needed — and every device gets a certificate issued by the intermediate (CN = its
/// registration id) and presents leaf + intermediate, as factory devices do.
pub async fn credentials(attestation: Attestation, run_id: &str, devices: usize) -> Result<Prepared, BenchError> {
    Ok(match attestation {
        Attestation::SymmetricKey => {
            let raw = rand_bytes::<32>();
            let key = dps_proto::keys::encode_key(&raw);
            Prepared {
                group_attestation: AttestationMechanism {
                    kind: AttestationType::SymmetricKey,
                    symmetric_key: Some(SymmetricKeyAttestation {
                        primary_key: Some(key.clone()),
                        secondary_key: Some(key.clone()),
                    }),
                    ..AttestationMechanism::default()
                },
                credentials: Credentials::SymmetricKey {
                    group_key_b64: key,
                    group_key: raw.to_vec(),
                },
                certificate_seconds: 0.0,
            }
        }
        Attestation::X509 => {
            let t0 = Instant::now();
            let root = LocalCa::generate(&format!("{run_id} root"))
                .map_err(|e| BenchError::certificates("cannot create the bench CA", e))?;
            let intermediate = root
                .issue_intermediate(&format!("{run_id} devices"), Some(0), KeyAlgorithm::EcdsaP256)
                .map_err(|e| BenchError::certificates("cannot create the bench intermediate CA", e))?;
            let signing = intermediate.cert_pem();
            let ids = issue_certificates(Arc::new(intermediate), run_id, devices).await?;
            Prepared {
                group_attestation: AttestationMechanism {
                    kind: AttestationType::X509,
                    x509: Some(X509Attestation {
                        signing_certificates: Some(X509Certificates {
                            primary: Some(X509CertificateWithInfo {
                                certificate: Some(signing),
                                info: None,
                            }),
                            secondary: None,
                        }),
                        ..X509Attestation::default()
                    }),
                    ..AttestationMechanism::default()
                },
                credentials: Credentials::X509(ids),
                certificate_seconds: t0.elapsed().as_secs_f64(),
            }
        }
    })
}

/// Creates the credential policy `run_id` (a built-in P-256 CA) through the service API, for
/// runs whose devices send a CSR; returns its name.
pub async fn create_credential_policy(dps: &ServiceClient, run_id: &str) -> Result<String, BenchError> {
    dps.put_credential_policy(run_id, &Default::default(), None)
        .await
        .map_err(BenchError::CreateGroup)?;
    Ok(run_id.to_string())
}

/// Creates the enrollment group `run_id` through the service API; with `webhook`, its devices
/// are allocated by that custom allocation webhook; with `credential_policy`, a device that
/// sends a CSR gets its certificate from it.
pub async fn create_group(
    dps: &ServiceClient,
    run_id: &str,
    attestation: &AttestationMechanism,
    webhook: Option<&str>,
    credential_policy: Option<&str>,
) -> Result<(), BenchError> {
    let group = EnrollmentGroup {
        enrollment_group_id: run_id.into(),
        credential_policy_name: credential_policy.map(str::to_string),
        attestation: attestation.clone(),
        allocation_policy: webhook.map(|_| dps_proto::model::service::AllocationPolicy::Custom),
        custom_allocation_definition: webhook.map(|url| dps_proto::model::service::CustomAllocationDefinition {
            webhook_url: url.to_string(),
            api_version: "2021-10-01".into(),
        }),
        ..EnrollmentGroup::default()
    };
    dps.put_group(&group, None).await.map_err(BenchError::CreateGroup)?;
    Ok(())
}

/// Deletes what the run left: every registration record of the group, the hub device each one
/// created (through the registry API of its hub among `hubs`; none given: devices stay), and
/// the group. Failures are counted, not fatal — the results of the run matter more. Returns
/// the `cleanup` report object.
pub async fn cleanup(dps: Arc<ServiceClient>, hubs: Vec<Arc<RegistryClient>>, run_id: &str) -> Value {
    let t0 = Instant::now();
    let records = match dps.query_registrations(run_id, None).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cleanup: cannot list the bench registrations: {e:#}");
            Vec::new()
        }
    };
    if records.len() > 1000 {
        eprintln!("cleanup: deleting {} registrations and hub devices", records.len());
    }
    let (deleted, devices, failures) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tasks = JoinSet::new();
    for r in records {
        while tasks.len() >= CLEANUP_CONCURRENCY {
            tasks.join_next().await;
        }
        let assigned = r.assigned_hub.as_deref().unwrap_or_default();
        let hub = hubs
            .iter()
            .find(|h| h.rest().host().eq_ignore_ascii_case(assigned))
            .or(hubs.first())
            .cloned();
        let dps = dps.clone();
        let (deleted, devices, failures) = (deleted.clone(), devices.clone(), failures.clone());
        tasks.spawn(async move {
            match dps.delete_registration(&r.registration_id, None).await {
                Ok(_) => deleted.fetch_add(1, Ordering::Relaxed),
                Err(_) => failures.fetch_add(1, Ordering::Relaxed),
            };
            if let (Some(hub), Some(device)) = (hub, r.device_id.as_deref()) {
                match hub.delete_device(device, None).await {
                    Ok(_) => devices.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let group = dps.delete_group(run_id, None).await;
    if let Err(e) = &group {
        eprintln!("cleanup: cannot delete the bench enrollment group {run_id}: {e:#}");
    }
    // The run's credential policy, when it made one (absent otherwise: nothing to report).
    let _ = dps.delete_credential_policy(run_id, None).await;
    json!({
        "registrationsDeleted": deleted.load(Ordering::Relaxed),
        "hubDevicesDeleted": (!hubs.is_empty()).then(|| devices.load(Ordering::Relaxed)),
        "groupDeleted": group.is_ok(),
        "failures": failures.load(Ordering::Relaxed),
        "seconds": super::report::round3(t0.elapsed().as_secs_f64()),
    })
}

/// `N` random bytes.
pub fn rand_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}
