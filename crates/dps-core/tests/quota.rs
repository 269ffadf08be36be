//! Quota tests: each of Azure's DPS quotas (registrations and operations per second for the
//! service, operation-status polls per device per 10 s) refuses with `429001` and the seconds to
//! wait, refills as time passes, and leaves other devices and other quotas alone. Time comes
//! from a fake clock, so every wait is exact.

use chrono::{Duration, TimeZone, Utc};
use dps_core::{Clock, Registered};
use dps_core::{DeviceRequest, Engine, Error, FakeClock, QuotaConfig};
use dps_proto::codes;
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::IndividualEnrollment;

mod common;

use common::{engine_with, FakeHub};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WRONG_KEY: &str = "HxwdGhsYGRYXFBUSExAREA8ODQwLCgkIBwYFBAMCAQA=";

fn clock() -> FakeClock {
    FakeClock::at(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
}

fn request(reg: &str, key: &str) -> DeviceRequest {
    let expiry = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap().timestamp() as u64;
    common::sas_request(reg, key, expiry)
}

/// An engine with `quotas` and symmetric-key enrollments for `devices` (all signed with [`KEY`]).
async fn engine(clock: &FakeClock, quotas: QuotaConfig, devices: &[&str]) -> (Engine, std::sync::Arc<FakeHub>) {
    let (e, hub) = engine_with(|c| c.quotas = quotas).await;
    for d in devices {
        let enrollment = IndividualEnrollment {
            attestation: common::sym(Some(KEY), None),
            ..Default::default()
        };
        e.put_enrollment(clock.now(), d, enrollment, None).await.unwrap();
    }
    (e, hub)
}

async fn register(e: &Engine, clock: &FakeClock, req: &DeviceRequest) -> Result<Registered, Error> {
    e.register(clock.now(), req, &DeviceRegistration::default()).await
}

/// Asserts a `429 THROTTLED` that says to wait `secs` and names the quota.
/// The operation id of a register that succeeded.
fn operation_id(r: Result<Registered, Error>) -> String {
    r.unwrap()
        .operation()
        .expect("not a TPM challenge")
        .operation_id
        .clone()
}

fn assert_throttled<T: std::fmt::Debug>(r: Result<T, Error>, secs: u32, names: &str) {
    let e = r.expect_err("throttled");
    assert_eq!((e.status(), e.code()), (429, codes::THROTTLED), "{e}");
    assert_eq!(e.retry_after(), Some(secs), "{e}");
    assert!(e.to_string().contains(names), "'{}' should name '{names}'", e);
    assert!(e.to_string().contains(&format!("retry after {secs} s")), "{}", e);
}

fn only(q: impl FnOnce(&mut QuotaConfig)) -> QuotaConfig {
    let mut c = QuotaConfig::UNLIMITED;
    c.max_tracked_devices = QuotaConfig::DEFAULT.max_tracked_devices;
    q(&mut c);
    c
}

#[tokio::test]
async fn registrations_per_second_refill_and_say_when_to_retry() {
    let clock = clock();
    let (e, hub) = engine(
        &clock,
        only(|q| q.registrations_per_second = 2),
        &["dev-a", "dev-b", "dev-c"],
    )
    .await;

    // Bad credentials are refused before the registration quota is touched.
    for _ in 0..5 {
        let err = register(&e, &clock, &request("dev-a", WRONG_KEY)).await.unwrap_err();
        assert_eq!(err.status(), 401);
        assert_eq!(err.retry_after(), None);
    }
    // A full bucket holds one second's worth: two.
    assert_eq!(
        register(&e, &clock, &request("dev-a", KEY)).await.unwrap().status(),
        202
    );
    assert_eq!(
        register(&e, &clock, &request("dev-b", KEY)).await.unwrap().status(),
        202
    );
    // The third waits for the next token, 0.5 s away: retry-after is whole seconds, rounded up.
    assert_throttled(
        register(&e, &clock, &request("dev-c", KEY)).await,
        1,
        "more than 2 registrations per second",
    );
    // Nothing of the refused registration was written.
    assert!(e.store().get_registration("dev-c").await.unwrap().is_none());
    assert!(!hub.devices.lock().iter().any(|d| d.device_id == "dev-c"));

    clock.advance(Duration::milliseconds(499));
    assert_throttled(register(&e, &clock, &request("dev-c", KEY)).await, 1, "registrations");
    clock.advance(Duration::milliseconds(1));
    assert_eq!(
        register(&e, &clock, &request("dev-c", KEY)).await.unwrap().status(),
        202
    );
    assert!(e.store().get_registration("dev-c").await.unwrap().is_some());

    // With the bucket empty again, polls and status lookups are still answered: they are no
    // registrations.
    assert_throttled(register(&e, &clock, &request("dev-a", KEY)).await, 1, "registrations");
    let a = request("dev-a", KEY);
    let op = e
        .store()
        .get_registration("dev-a")
        .await
        .unwrap()
        .unwrap()
        .operation_id
        .unwrap();
    assert_eq!(e.operation_status(clock.now(), &a, &op).await.unwrap().status, 200);
    assert!(e.registration_status(clock.now(), &a).await.is_ok());

    // After a quiet while the bucket is full again, but holds no more than one second's worth.
    clock.advance(Duration::seconds(60));
    for d in ["dev-a", "dev-b"] {
        assert_eq!(register(&e, &clock, &request(d, KEY)).await.unwrap().status(), 202);
    }
    assert_throttled(register(&e, &clock, &request("dev-c", KEY)).await, 1, "registrations");
}

#[tokio::test]
async fn operations_per_second_count_every_device_request_even_unauthenticated_ones() {
    let clock = clock();
    let (e, _) = engine(&clock, only(|q| q.operations_per_second = 3), &["dev-a"]).await;
    let req = request("dev-a", KEY);

    let r = register(&e, &clock, &req).await.unwrap();
    let op = r.operation().unwrap().operation_id.clone();
    assert_eq!(e.operation_status(clock.now(), &req, &op).await.unwrap().status, 200);
    assert!(e.registration_status(clock.now(), &req).await.is_ok());
    assert_throttled(
        e.operation_status(clock.now(), &req, &op).await,
        1,
        "more than 3 device requests per second",
    );
    assert_throttled(register(&e, &clock, &req).await, 1, "device requests");

    // One token every 1/3 s.
    clock.advance(Duration::nanoseconds(333_333_332));
    assert_throttled(register(&e, &clock, &req).await, 1, "device requests");
    clock.advance(Duration::nanoseconds(1));
    assert_eq!(e.operation_status(clock.now(), &req, &op).await.unwrap().status, 200);

    // Requests with bad credentials use the quota too: it bounds attestation work.
    clock.advance(Duration::seconds(1));
    for _ in 0..3 {
        let err = register(&e, &clock, &request("dev-a", WRONG_KEY)).await.unwrap_err();
        assert_eq!(err.status(), 401);
    }
    assert_throttled(register(&e, &clock, &req).await, 1, "device requests");

    // A request for another service's ID scope is refused before it is counted.
    clock.advance(Duration::seconds(1));
    let mut other = req.clone();
    other.id_scope = "0ne00FFFFFF".into();
    for _ in 0..5 {
        assert_eq!(
            register(&e, &clock, &other).await.unwrap_err().code(),
            codes::ID_SCOPE_NOT_FOUND
        );
    }
    assert_eq!(register(&e, &clock, &req).await.unwrap().status(), 202);
}

#[tokio::test]
async fn polls_per_device_are_five_per_ten_seconds_and_other_devices_are_unaffected() {
    let clock = clock();
    let (e, _) = engine(&clock, QuotaConfig::DEFAULT, &["dev-a", "dev-b"]).await;
    let (a, b) = (request("dev-a", KEY), request("dev-b", KEY));
    let op_a = operation_id(register(&e, &clock, &a).await);
    let op_b = operation_id(register(&e, &clock, &b).await);

    // Polls with a wrong key are refused before they count: nobody can use up a device's polls.
    for _ in 0..10 {
        let err = e
            .operation_status(clock.now(), &request("dev-a", WRONG_KEY), &op_a)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 401);
    }
    for _ in 0..5 {
        assert_eq!(e.operation_status(clock.now(), &a, &op_a).await.unwrap().status, 200);
    }
    // The sixth waits for the next token: one every 2 s.
    assert_throttled(
        e.operation_status(clock.now(), &a, &op_a).await,
        2,
        "more than 5 operation-status polls in 10 seconds by this device",
    );
    // The registration id is case-insensitive, so is its quota.
    assert_throttled(
        e.operation_status(clock.now(), &request("DEV-A", KEY), &op_a).await,
        2,
        "polls",
    );
    // Another device is served meanwhile, and dev-a may still register and look up its status.
    for _ in 0..5 {
        assert_eq!(e.operation_status(clock.now(), &b, &op_b).await.unwrap().status, 200);
    }
    assert!(e.registration_status(clock.now(), &a).await.is_ok());

    clock.advance(Duration::milliseconds(1500));
    assert_throttled(e.operation_status(clock.now(), &a, &op_a).await, 1, "polls");
    clock.advance(Duration::milliseconds(500));
    assert_eq!(e.operation_status(clock.now(), &a, &op_a).await.unwrap().status, 200);
    assert_throttled(e.operation_status(clock.now(), &a, &op_a).await, 2, "polls");

    // Polling every 2 s, as the Python SDK does without retry-after, is never refused.
    for _ in 0..20 {
        clock.advance(Duration::seconds(2));
        assert_eq!(e.operation_status(clock.now(), &a, &op_a).await.unwrap().status, 200);
    }
    // Ten quiet seconds refill the whole burst, and no more.
    clock.advance(Duration::seconds(10));
    for _ in 0..5 {
        assert_eq!(e.operation_status(clock.now(), &a, &op_a).await.unwrap().status, 200);
    }
    assert_throttled(e.operation_status(clock.now(), &a, &op_a).await, 2, "polls");
}

#[tokio::test]
async fn poll_tracking_is_bounded_and_fails_open_for_untracked_devices_when_full() {
    let clock = clock();
    let quotas = QuotaConfig {
        max_tracked_devices: 2,
        ..QuotaConfig::DEFAULT
    };
    let (e, _) = engine(&clock, quotas, &["dev-a", "dev-b", "dev-c"]).await;
    let reqs: Vec<DeviceRequest> = ["dev-a", "dev-b", "dev-c"].iter().map(|d| request(d, KEY)).collect();
    let mut ops = Vec::new();
    for r in &reqs {
        ops.push(
            register(&e, &clock, r)
                .await
                .unwrap()
                .operation()
                .unwrap()
                .operation_id
                .clone(),
        );
    }
    let poll = |i: usize| e.operation_status(clock.now(), &reqs[i], &ops[i]);

    for i in 0..2 {
        for _ in 0..5 {
            poll(i).await.unwrap();
        }
        assert_throttled(poll(i).await, 2, "polls");
    }
    assert_eq!(e.quotas().tracked_devices(), 2);
    // The map is full and nothing in it has expired: dev-c goes untracked, not refused.
    for _ in 0..8 {
        assert_eq!(poll(2).await.unwrap().status, 200);
    }
    assert_eq!(e.quotas().tracked_devices(), 2);
    assert_throttled(poll(0).await, 2, "polls");

    // Once dev-a's and dev-b's buckets are full again their entries are worth nothing and go at
    // the next sweep, making room for dev-c.
    clock.advance(Duration::seconds(10));
    for _ in 0..5 {
        poll(2).await.unwrap();
    }
    assert_throttled(poll(2).await, 2, "polls");
    assert_eq!(e.quotas().tracked_devices(), 1);
}
