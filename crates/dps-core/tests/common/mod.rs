//! What the engine test files share: a recording fake hub and an engine over a memory store.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use dps_core::store::memory::MemoryStore;
use dps_core::{
    DeviceData, DeviceProvisioning, Engine, EngineConfig, HubError, HubRegistry, TwinPolicy, UpsertOutcome,
};
use dps_proto::model::service::{DeviceCapabilities, InitialTwin};
use parking_lot::Mutex;

pub const SCOPE: &str = "0ne00ABCDEF";
pub const HUB: &str = "hub.example.test";
/// A second and a third hub the fake serves (link them through [`engine_with`]).
pub const HUB2: &str = "hub2.example.test";
pub const HUB3: &str = "hub3.example.test";

/// What one hub holds for one device: the twin's tags and desired properties, and capabilities.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeIdentity {
    pub twin: Option<InitialTwin>,
    pub capabilities: DeviceCapabilities,
}

/// Records every upsert; keeps what each hub holds, as an IoT hub would (a new device gets the
/// initial twin, `Reset` replaces the twin, `Keep` keeps it); can be told to refuse devices.
#[derive(Default)]
pub struct FakeHub {
    /// Every upsert, in order.
    pub devices: Mutex<Vec<DeviceProvisioning>>,
    pub refuse: Mutex<bool>,
    /// The identities each hub holds, by (hub, lower-case device id).
    pub identities: Mutex<BTreeMap<(String, String), FakeIdentity>>,
    /// Every delete, in order: (hub, device id).
    pub deleted: Mutex<Vec<(String, String)>>,
}

impl FakeHub {
    fn known(hub: &str) -> Result<(), HubError> {
        if [HUB, HUB2, HUB3].contains(&hub) {
            Ok(())
        } else {
            Err(HubError::UnknownHub(hub.into()))
        }
    }

    /// What `hub` holds for `device_id`.
    pub fn identity(&self, hub: &str, device_id: &str) -> Option<FakeIdentity> {
        self.identities
            .lock()
            .get(&(hub.to_string(), device_id.to_ascii_lowercase()))
            .cloned()
    }

    /// Replaces the twin `hub` holds for `device_id`, as a back-end application would.
    pub fn set_twin(&self, hub: &str, device_id: &str, twin: InitialTwin) {
        self.identities
            .lock()
            .get_mut(&(hub.to_string(), device_id.to_ascii_lowercase()))
            .expect("the device exists in the hub")
            .twin = Some(twin);
    }
}

#[async_trait]
impl HubRegistry for FakeHub {
    async fn upsert_device(&self, hub: &str, d: &DeviceProvisioning) -> Result<UpsertOutcome, HubError> {
        Self::known(hub)?;
        if *self.refuse.lock() {
            return Err(HubError::Refused {
                device_id: d.device_id.clone(),
                reason: "disabled in hub".into(),
            });
        }
        self.devices.lock().push(d.clone());
        let mut identities = self.identities.lock();
        let key = (hub.to_string(), d.device_id.to_ascii_lowercase());
        let created = !identities.contains_key(&key);
        let identity = identities.entry(key).or_insert_with(|| FakeIdentity {
            twin: d.initial_twin.clone(),
            capabilities: d.capabilities,
        });
        if !created && d.twin_policy == TwinPolicy::Reset {
            identity.twin = d.initial_twin.clone();
        }
        identity.capabilities = d.capabilities;
        Ok(UpsertOutcome { created })
    }

    async fn delete_device(&self, hub: &str, device_id: &str) -> Result<(), HubError> {
        Self::known(hub)?;
        self.deleted.lock().push((hub.to_string(), device_id.to_string()));
        self.identities
            .lock()
            .remove(&(hub.to_string(), device_id.to_ascii_lowercase()));
        Ok(())
    }

    async fn device_data(&self, hub: &str, device_id: &str) -> Result<Option<DeviceData>, HubError> {
        Self::known(hub)?;
        Ok(self.identity(hub, device_id).map(|i| DeviceData {
            twin: i.twin.unwrap_or_default(),
            capabilities: i.capabilities,
        }))
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
                endorsement_key_certificate: None,
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
        source: None,
        transport: Default::default(),
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

/// The time the engine tests run at (2026-01-01T00:00:00Z).
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// A SAS expiry an hour after [`now`].
pub fn exp() -> u64 {
    now().timestamp() as u64 + 3600
}

/// Registers at [`now`] the way Azure's polling flow goes (`202 assigning`, then one poll that
/// answers `200`) and returns the final operation status.
pub async fn register_and_poll(
    e: &Engine,
    req: &dps_core::DeviceRequest,
) -> Result<dps_proto::model::device::RegistrationOperationStatus, dps_core::Error> {
    use dps_proto::model::service::RegistrationStatus;
    let r = e
        .register(now(), req, &dps_proto::model::device::DeviceRegistration::default())
        .await?;
    assert_eq!(r.status(), 202);
    let op = r
        .operation()
        .expect("a register with a credential answers an operation");
    assert_eq!(op.status, RegistrationStatus::Assigning);
    assert_eq!(op.registration_state.registration_id, req.registration_id);
    let p = e.operation_status(now(), req, &op.operation_id).await?;
    assert_eq!(p.status, 200);
    Ok(p.body)
}

/// The symmetric key of the enrollments [`enroll`] writes (a group's devices sign with the key
/// derived from it).
pub const ENROLLMENT_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The group [`enroll`] writes for [`Via::Group`].
pub const GROUP: &str = "fleet";

/// Which kind of enrollment a device registers through.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    /// Its own individual enrollment, named by its registration id.
    Individual,
    /// The symmetric-key group [`GROUP`].
    Group,
}

/// Writes (creates, or with `if_match` updates) the individual enrollment `reg`, or the group
/// [`GROUP`], with `settings`' allocation, reprovisioning, twin and capabilities and
/// [`ENROLLMENT_KEY`] as its key.
pub async fn enroll(
    e: &Engine,
    via: Via,
    reg: &str,
    settings: dps_proto::model::service::IndividualEnrollment,
    if_match: Option<&str>,
) {
    use dps_proto::model::service::{EnrollmentGroup, IndividualEnrollment};
    let s = IndividualEnrollment {
        attestation: sym(Some(ENROLLMENT_KEY), None),
        ..settings
    };
    match via {
        Via::Individual => {
            e.put_enrollment(now(), reg, s, if_match).await.unwrap();
        }
        Via::Group => {
            let g = EnrollmentGroup {
                attestation: s.attestation,
                capabilities: s.capabilities,
                iot_hub_host_name: s.iot_hub_host_name,
                initial_twin: s.initial_twin,
                reprovision_policy: s.reprovision_policy,
                allocation_policy: s.allocation_policy,
                iot_hubs: s.iot_hubs,
                ..Default::default()
            };
            e.put_group(now(), GROUP, g, if_match).await.unwrap();
        }
    }
}

/// Registers `reg` through `via` with [`register_and_poll`]; a group's device signs with its
/// derived key.
pub async fn register_via(e: &Engine, via: Via, reg: &str) -> dps_proto::model::device::RegistrationOperationStatus {
    let key = match via {
        Via::Individual => ENROLLMENT_KEY.to_string(),
        Via::Group => dps_proto::keys::derive_device_key(ENROLLMENT_KEY, reg).unwrap(),
    };
    register_and_poll(e, &sas_request(reg, &key, exp())).await.unwrap()
}
