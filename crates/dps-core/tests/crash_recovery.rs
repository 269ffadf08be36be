//! Crash consistency of registration (decision 0009): a registration writes the hub identity and
//! the registration record, which share no transaction. These tests "crash" the engine between
//! the steps — the fake hub stops a register call at a chosen point and the call is dropped, as a
//! killed process would leave it — then "restart" (a new engine over the same store and hub) and
//! check that every identity provisioning wrote has its record and every record its identity,
//! and that nothing provisioning did not write is touched.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use dps_core::store::memory::MemoryStore;
use dps_core::RegistrationIntent;
use dps_core::{
    DeviceAuth, DeviceData, DeviceProvisioning, DeviceRequest, Engine, EngineConfig, HubError, HubRegistry, LinkedHub,
    Recovery, Store, UpsertOutcome,
};
use dps_proto::keys::derive_device_key;
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::*;
use parking_lot::Mutex;
use tokio::sync::Notify;

mod common;

use common::{HUB, SCOPE};

const HUB2: &str = "hub2.example.test";
const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Where the fake hub stops the register call that reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashAt {
    /// Upsert called, nothing written.
    BeforeUpsert,
    /// Identity written (durably), the engine not told.
    AfterUpsert,
    /// The previous hub's identity deleted, the engine not told.
    AfterDelete,
}

/// One stored identity.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    auth: DeviceAuth,
    /// The operation that created it (`None`: an operator did).
    created_by: Option<String>,
}

/// A hub registry with state, idempotent per operation as the contract asks, that can crash.
#[derive(Default)]
struct CrashHub {
    /// (hub, lower-cased device id) → identity.
    devices: Mutex<BTreeMap<(String, String), Identity>>,
    crash: Mutex<Option<CrashAt>>,
    refuse: Mutex<bool>,
    /// Fails every upsert as an unreachable hub does.
    fail: Mutex<bool>,
    crashed: Notify,
}

impl CrashHub {
    fn ids(&self) -> Vec<(String, String)> {
        self.devices.lock().keys().cloned().collect()
    }

    fn has(&self, hub: &str, device: &str) -> bool {
        self.devices
            .lock()
            .contains_key(&(hub.to_string(), device.to_ascii_lowercase()))
    }

    /// Creates an identity as an operator would through the registry API.
    fn operator_create(&self, hub: &str, device: &str) {
        self.devices.lock().insert(
            (hub.to_string(), device.to_ascii_lowercase()),
            Identity {
                auth: DeviceAuth::Sas {
                    primary_key: KEY1.into(),
                    secondary_key: KEY1.into(),
                },
                created_by: None,
            },
        );
    }

    /// Stops here for good if armed at `at`: the caller is about to be dropped.
    async fn maybe_crash(&self, at: CrashAt) {
        if *self.crash.lock() == Some(at) {
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl HubRegistry for CrashHub {
    async fn upsert_device(&self, hub: &str, d: &DeviceProvisioning) -> Result<UpsertOutcome, HubError> {
        if hub != HUB && hub != HUB2 {
            return Err(HubError::UnknownHub(hub.into()));
        }
        self.maybe_crash(CrashAt::BeforeUpsert).await;
        if *self.fail.lock() {
            return Err(HubError::unavailable("the hub is down"));
        }
        if *self.refuse.lock() {
            return Err(HubError::Refused {
                device_id: d.device_id.clone(),
                reason: "disabled in hub".into(),
            });
        }
        let created = {
            let mut devices = self.devices.lock();
            let key = (hub.to_string(), d.device_id.to_ascii_lowercase());
            match devices.get_mut(&key) {
                Some(existing) => {
                    existing.auth = d.auth.clone();
                    existing.created_by.as_deref() == Some(d.operation_id.as_str())
                }
                None => {
                    devices.insert(
                        key,
                        Identity {
                            auth: d.auth.clone(),
                            created_by: Some(d.operation_id.clone()),
                        },
                    );
                    true
                }
            }
        };
        self.maybe_crash(CrashAt::AfterUpsert).await;
        Ok(UpsertOutcome { created })
    }

    async fn delete_device(&self, hub: &str, device_id: &str) -> Result<(), HubError> {
        self.devices
            .lock()
            .remove(&(hub.to_string(), device_id.to_ascii_lowercase()));
        self.maybe_crash(CrashAt::AfterDelete).await;
        Ok(())
    }

    /// This hub keeps no twins: a device it holds migrates with empty ones.
    async fn device_data(&self, hub: &str, device_id: &str) -> Result<Option<DeviceData>, HubError> {
        let key = (hub.to_string(), device_id.to_ascii_lowercase());
        Ok(self.devices.lock().get(&key).map(|_| DeviceData::default()))
    }
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn exp() -> u64 {
    now().timestamp() as u64 + 3600
}

/// A process's worth of engine over the "durable" store and hub, as after a (re)start.
async fn start(store: &Arc<MemoryStore>, hub: &Arc<CrashHub>) -> Engine {
    let config = EngineConfig {
        linked_hubs: vec![
            LinkedHub::new(HUB),
            LinkedHub {
                apply_allocation_policy: false,
                ..LinkedHub::new(HUB2)
            },
        ],
        immediate_assignment: true,
        ..EngineConfig::single_hub(SCOPE, HUB)
    };
    let e = Engine::new(config, store.clone(), hub.clone());
    e.load().await.unwrap();
    e
}

fn request(reg: &str, key: &str) -> DeviceRequest {
    common::sas_request(reg, key, exp())
}

fn group_request(reg: &str) -> DeviceRequest {
    request(reg, &derive_device_key(KEY1, reg).unwrap())
}

async fn with_group(e: &Engine) {
    e.put_group(
        now(),
        "fleet",
        EnrollmentGroup {
            attestation: common::sym(Some(KEY1), None),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
}

/// Registers and returns the final state (the engine runs with immediate assignment).
async fn register(e: &Engine, req: &DeviceRequest) -> RegistrationState {
    let r = e.register(now(), req, &DeviceRegistration::default()).await.unwrap();
    assert_eq!(r.status(), 200, "{r:?}");
    r.operation().unwrap().registration_state.clone()
}

/// Starts a registration and drops it when the hub reaches `at`: the process died there.
async fn register_and_crash(e: &Engine, hub: &CrashHub, req: &DeviceRequest, at: CrashAt) {
    register_and_crash_when(e, hub, req, at, now()).await
}

/// [`register_and_crash`] for a registration that starts at `when`.
async fn register_and_crash_when(
    e: &Engine,
    hub: &CrashHub,
    req: &DeviceRequest,
    at: CrashAt,
    when: chrono::DateTime<Utc>,
) {
    *hub.crash.lock() = Some(at);
    let body = DeviceRegistration::default();
    tokio::select! {
        r = e.register(when, req, &body) => panic!("the registration should have crashed at {at:?}: {r:?}"),
        _ = hub.crashed.notified() => {}
    }
    *hub.crash.lock() = None;
}

async fn intents(store: &MemoryStore) -> Vec<RegistrationIntent> {
    store.list_registration_intents(None, 100).await.unwrap()
}

async fn record(store: &MemoryStore, id: &str) -> Option<RegistrationState> {
    store.get_registration(id).await.unwrap().map(|r| r.state)
}

#[tokio::test]
async fn a_crash_after_the_hub_write_is_finished_at_start_up() {
    let (store, hub) = (Arc::new(MemoryStore::new()), Arc::new(CrashHub::default()));
    let e = start(&store, &hub).await;
    with_group(&e).await;
    register_and_crash(&e, &hub, &group_request("dev-after"), CrashAt::AfterUpsert).await;
    drop(e);
    // The state the issue found: a working identity and no record — but an intent.
    assert!(hub.has(HUB, "dev-after"));
    assert_eq!(record(&store, "dev-after").await, None);
    assert_eq!(intents(&store).await.len(), 1);

    let e = start(&store, &hub).await;
    let rec = record(&store, "dev-after")
        .await
        .expect("recovery committed the record");
    assert_eq!(rec.status, RegistrationStatus::Assigned);
    assert_eq!(rec.assigned_hub.as_deref(), Some(HUB));
    assert_eq!(rec.device_id.as_deref(), Some("dev-after"));
    assert_eq!(
        rec.substatus,
        Some(Substatus::InitialAssignment),
        "the hub created the device in this operation, before the crash"
    );
    assert!(intents(&store).await.is_empty());
    assert_eq!(hub.ids(), vec![(HUB.to_string(), "dev-after".to_string())]);
    // Recovery ran once; a second start finds nothing to do.
    assert_eq!(e.recover_registrations().await.unwrap(), Recovery::default());

    // The device, which never got its answer, registers again and keeps its assignment.
    let again = register(&e, &group_request("dev-after")).await;
    assert_eq!(again.assigned_hub.as_deref(), Some(HUB));
    assert_eq!(again.substatus, Some(Substatus::InitialAssignment));
    assert_eq!(again.created_date_time_utc, rec.created_date_time_utc);
}

#[tokio::test]
async fn a_crash_before_the_hub_write_is_finished_at_start_up() {
    let (store, hub) = (Arc::new(MemoryStore::new()), Arc::new(CrashHub::default()));
    let e = start(&store, &hub).await;
    with_group(&e).await;
    register_and_crash(&e, &hub, &group_request("dev-before"), CrashAt::BeforeUpsert).await;
    drop(e);
    assert!(hub.ids().is_empty());
    assert_eq!(record(&store, "dev-before").await, None);

    let e = start(&store, &hub).await;
    let rec = record(&store, "dev-before").await.expect("rolled forward");
    assert_eq!(rec.substatus, Some(Substatus::InitialAssignment));
    assert!(hub.has(HUB, "dev-before"));
    assert!(intents(&store).await.is_empty());
    // The identity carries the device's derived key: the device can connect with it.
    let auth = hub.devices.lock()[&(HUB.to_string(), "dev-before".to_string())]
        .auth
        .clone();
    let DeviceAuth::Sas { primary_key, .. } = auth else {
        panic!("{auth:?}")
    };
    assert_eq!(primary_key, derive_device_key(KEY1, "dev-before").unwrap());
    drop(e);
}

#[tokio::test]
async fn recovery_leaves_alone_what_provisioning_did_not_leave_unfinished() {
    let (store, hub) = (Arc::new(MemoryStore::new()), Arc::new(CrashHub::default()));
    let e = start(&store, &hub).await;
    with_group(&e).await;
    // Acknowledged.
    let mut acked = register(&e, &group_request("dev-acked")).await;
    acked.symmetric_key = None; // added to the device's view, not stored
                                // An operator's own device: no record, never will have one.
    hub.operator_create(HUB, "operator-made");
    // A device whose record the operator deleted: Azure keeps the hub device.
    register(&e, &group_request("dev-forgotten")).await;
    e.delete_registration("dev-forgotten", None).await.unwrap();
    // And one registration in flight when the process dies.
    register_and_crash(&e, &hub, &group_request("dev-inflight"), CrashAt::AfterUpsert).await;
    drop(e);

    let e = start(&store, &hub).await;
    assert_eq!(record(&store, "dev-acked").await.as_ref(), Some(&acked));
    assert_eq!(
        record(&store, "dev-forgotten").await,
        None,
        "a deleted record stays deleted"
    );
    assert!(record(&store, "dev-inflight").await.is_some());
    let mut want: Vec<(String, String)> = ["dev-acked", "dev-forgotten", "dev-inflight", "operator-made"]
        .into_iter()
        .map(|d| (HUB.to_string(), d.to_string()))
        .collect();
    want.sort();
    assert_eq!(hub.ids(), want, "no identity removed or added");
    assert!(intents(&store).await.is_empty());

    // The forgotten device registering again is a reprovisioned initial assignment, as before.
    let back = register(&e, &group_request("dev-forgotten")).await;
    assert_eq!(back.substatus, Some(Substatus::ReprovisionedToInitialAssignment));
}

/// An individual enrollment pinned to `hubs`, re-run allocation and migrate data on re-registration.
fn pinned(hubs: &[&str]) -> IndividualEnrollment {
    IndividualEnrollment {
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some(KEY1.into()),
                secondary_key: None,
            }),
            ..Default::default()
        },
        iot_hubs: Some(hubs.iter().map(|h| h.to_string()).collect()),
        reprovision_policy: Some(ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: true,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_device_moving_hubs_ends_up_in_one_hub_whatever_the_crash_point() {
    for at in [CrashAt::BeforeUpsert, CrashAt::AfterUpsert, CrashAt::AfterDelete] {
        let (store, hub) = (Arc::new(MemoryStore::new()), Arc::new(CrashHub::default()));
        let e = start(&store, &hub).await;
        e.put_enrollment(now(), "mover", pinned(&[HUB]), None).await.unwrap();
        let first = register(&e, &request("mover", KEY1)).await;
        assert_eq!(first.assigned_hub.as_deref(), Some(HUB));
        e.put_enrollment(now(), "mover", pinned(&[HUB2]), Some("*"))
            .await
            .unwrap();
        register_and_crash(&e, &hub, &request("mover", KEY1), at).await;
        drop(e);

        let e = start(&store, &hub).await;
        let rec = record(&store, "mover").await.unwrap();
        assert_eq!(rec.assigned_hub.as_deref(), Some(HUB2), "{at:?}");
        assert_eq!(rec.substatus, Some(Substatus::DeviceDataMigrated), "{at:?}");
        assert_eq!(rec.created_date_time_utc, first.created_date_time_utc, "{at:?}");
        assert_eq!(
            hub.ids(),
            vec![(HUB2.to_string(), "mover".to_string())],
            "{at:?}: the record's identity and no other"
        );
        assert!(intents(&store).await.is_empty(), "{at:?}");
        drop(e);
    }
}

#[tokio::test]
async fn a_hub_that_refuses_leaves_neither_identity_nor_record_nor_intent() {
    let (store, hub) = (Arc::new(MemoryStore::new()), Arc::new(CrashHub::default()));
    let e = start(&store, &hub).await;
    with_group(&e).await;

    // At run time: the device is told it failed, and the intent is dropped at once.
    *hub.refuse.lock() = true;
    let r = e
        .register(now(), &group_request("dev-refused"), &DeviceRegistration::default())
        .await
        .unwrap();
    assert_eq!(r.operation().unwrap().status, RegistrationStatus::Failed);
    assert!(intents(&store).await.is_empty());

    // At start-up: an interrupted registration the hub now refuses is given up.
    *hub.refuse.lock() = false;
    register_and_crash(&e, &hub, &group_request("dev-gone"), CrashAt::BeforeUpsert).await;
    drop(e);
    *hub.refuse.lock() = true;
    let e = Engine::new(
        EngineConfig {
            immediate_assignment: true,
            ..EngineConfig::single_hub(SCOPE, HUB)
        },
        store.clone(),
        hub.clone(),
    );
    assert_eq!(
        e.recover_registrations().await.unwrap(),
        Recovery {
            completed: 0,
            abandoned: 1,
            superseded: 0,
            postponed: 0
        }
    );
    assert!(intents(&store).await.is_empty());
    assert_eq!(record(&store, "dev-gone").await, None);
    assert!(hub.ids().is_empty());
}

#[tokio::test]
async fn two_registrations_of_one_device_in_flight_finish_in_order() {
    let (store, hub) = (Arc::new(MemoryStore::new()), Arc::new(CrashHub::default()));
    let e = start(&store, &hub).await;
    with_group(&e).await;
    register_and_crash(&e, &hub, &group_request("twice"), CrashAt::AfterUpsert).await;
    let later = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
    register_and_crash_when(&e, &hub, &group_request("twice"), CrashAt::BeforeUpsert, later).await;
    drop(e);
    assert_eq!(intents(&store).await.len(), 2);

    let e = start(&store, &hub).await;
    let rec = record(&store, "twice").await.unwrap();
    assert_eq!(
        rec.last_updated_date_time_utc,
        Some(later),
        "the later registration wins"
    );
    // As without the crash: neither saw a previous record, and the first created the device.
    assert_eq!(rec.substatus, Some(Substatus::ReprovisionedToInitialAssignment));
    assert!(intents(&store).await.is_empty());
    drop(e);
}

/// On a store several nodes share, a registration a dead node left unfinished is finished by
/// another only once it is old enough to be no live node's; one the hub fails now stays for the
/// next round (the identity may be written); one whose device registered again since is dropped,
/// the newer record kept (decision 0031).
#[tokio::test]
async fn interrupted_registrations_wait_for_their_age_and_never_undo_a_newer_one() {
    let (store, hub) = (Arc::new(MemoryStore::new()), Arc::new(CrashHub::default()));
    let e = start(&store, &hub).await;
    with_group(&e).await;
    let age = std::time::Duration::from_secs(60);
    register_and_crash(&e, &hub, &group_request("dev-a"), CrashAt::AfterUpsert).await;
    register_and_crash(&e, &hub, &group_request("dev-b"), CrashAt::AfterUpsert).await;
    assert_eq!(intents(&store).await.len(), 2);

    // Too young: another node may still be finishing them.
    let young = e.recover_stale_registrations(now(), age).await.unwrap();
    assert_eq!(young, Recovery::default());
    assert_eq!(intents(&store).await.len(), 2);

    // The hub fails: both stay.
    let later = now() + chrono::Duration::seconds(120);
    *hub.fail.lock() = true;
    let failed = e.recover_stale_registrations(later, age).await.unwrap();
    assert_eq!(failed.postponed, 2);
    assert_eq!(intents(&store).await.len(), 2);
    *hub.fail.lock() = false;

    // dev-b registers again meanwhile (through another node): its newer record stays.
    let again = e
        .register(later, &group_request("dev-b"), &DeviceRegistration::default())
        .await
        .unwrap();
    let newer = again.operation().unwrap().operation_id.clone();
    let done = e.recover_stale_registrations(later, age).await.unwrap();
    assert_eq!((done.completed, done.superseded, done.postponed), (1, 1, 0));
    assert!(intents(&store).await.is_empty());
    assert_eq!(
        record(&store, "dev-a").await.unwrap().status,
        RegistrationStatus::Assigned
    );
    let kept = store.get_registration("dev-b").await.unwrap().unwrap();
    assert_eq!(kept.operation_id.as_deref(), Some(newer.as_str()));
}
