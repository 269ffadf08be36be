//! What the engine test files share: a recording fake hub and an engine over a memory store.

#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use dps_core::store::memory::MemoryStore;
use dps_core::{DeviceProvisioning, Engine, EngineConfig, HubError, HubRegistry, UpsertOutcome};
use parking_lot::Mutex;

pub const SCOPE: &str = "0ne00ABCDEF";
pub const HUB: &str = "hub.example.test";

/// Records every upsert; can be told to refuse devices.
#[derive(Default)]
pub struct FakeHub {
    pub devices: Mutex<Vec<DeviceProvisioning>>,
    pub refuse: Mutex<bool>,
}

#[async_trait]
impl HubRegistry for FakeHub {
    async fn upsert_device(&self, hub: &str, d: &DeviceProvisioning) -> Result<UpsertOutcome, HubError> {
        if hub != HUB && hub != "hub2.example.test" {
            return Err(HubError::UnknownHub(hub.into()));
        }
        if *self.refuse.lock() {
            return Err(HubError::Refused {
                device_id: d.device_id.clone(),
                reason: "disabled in hub".into(),
            });
        }
        let mut devs = self.devices.lock();
        let created = !devs.iter().any(|x| x.device_id == d.device_id);
        devs.push(d.clone());
        Ok(UpsertOutcome { created })
    }

    async fn delete_device(&self, _hub: &str, _device_id: &str) -> Result<(), HubError> {
        Ok(())
    }
}

/// An engine with one linked hub ([`HUB`]) over an empty memory store.
pub async fn engine() -> (Engine, Arc<FakeHub>) {
    engine_with(|_| {}).await
}

/// [`engine`] with its configuration adjusted by `tweak`.
#[allow(dead_code)] // not every test binary tweaks the configuration
pub async fn engine_with(tweak: impl FnOnce(&mut EngineConfig)) -> (Engine, Arc<FakeHub>) {
    let hub = Arc::new(FakeHub::default());
    let mut config = EngineConfig::single_hub(SCOPE, HUB);
    tweak(&mut config);
    let e = Engine::new(config, Arc::new(MemoryStore::new()), hub.clone());
    e.load().await.unwrap();
    (e, hub)
}

/// A symmetric-key attestation with these keys.
pub fn sym(primary: Option<&str>, secondary: Option<&str>) -> dps_proto::model::service::AttestationMechanism {
    use dps_proto::model::service::{AttestationMechanism, AttestationType, SymmetricKeyAttestation};
    AttestationMechanism {
        kind: AttestationType::SymmetricKey,
        symmetric_key: Some(SymmetricKeyAttestation {
            primary_key: primary.map(Into::into),
            secondary_key: secondary.map(Into::into),
        }),
        ..Default::default()
    }
}

/// An individual enrollment with TPM attestation for this endorsement key (no SRK named).
#[allow(dead_code)] // not every test binary enrolls a TPM
pub fn tpm_enrollment(endorsement_key: &[u8]) -> dps_proto::model::service::IndividualEnrollment {
    use base64::Engine as _;
    use dps_proto::model::service::{AttestationMechanism, AttestationType, IndividualEnrollment, TpmAttestation};
    IndividualEnrollment {
        attestation: AttestationMechanism {
            kind: AttestationType::Tpm,
            tpm: Some(TpmAttestation {
                endorsement_key: Some(base64::engine::general_purpose::STANDARD.encode(endorsement_key)),
                storage_root_key: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A device request for `reg` in [`SCOPE`] carrying `credential`.
pub fn device_request(reg: &str, credential: dps_core::Credential) -> dps_core::DeviceRequest {
    dps_core::DeviceRequest {
        id_scope: SCOPE.into(),
        registration_id: reg.into(),
        credential,
        api_version: Some("2019-03-31".into()),
    }
}

/// A device request for `reg` with a registration SAS signed by `key`, valid until `expiry`
/// (Unix seconds).
pub fn sas_request(reg: &str, key: &str, expiry: u64) -> dps_core::DeviceRequest {
    let token = dps_proto::sas::build_token(
        &format!("{SCOPE}/registrations/{reg}"),
        key,
        expiry,
        Some("registration"),
    )
    .unwrap();
    device_request(reg, dps_core::Credential::Sas(token))
}
