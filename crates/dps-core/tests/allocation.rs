//! Allocation: which linked hub the engine assigns a device to (service-api.md §5.4). One table
//! per concern — the hub a policy names, the share of devices weights give each hub, and the
//! hash's determinism — each row naming its case. Engine over the in-memory store and the fake
//! hub, Azure's polling flow, time fixed.

mod common;

use dps_core::{Engine, EngineConfig, LinkedHub, QuotaConfig};
use dps_proto::codes;
use dps_proto::model::service::{AllocationPolicy, IndividualEnrollment, RegistrationStatus};

use common::{engine_with, enroll, register_via, FakeHub, Via, GROUP, HUB, HUB2, HUB3};

/// A linked hub with `weight` that allocation policies may pick.
fn weighted(host: &str, weight: u32) -> LinkedHub {
    LinkedHub {
        allocation_weight: weight,
        ..LinkedHub::new(host)
    }
}

/// A linked hub with `applyAllocationPolicy: false`: only an enrollment that names it gets it.
fn excluded(host: &str) -> LinkedHub {
    LinkedHub {
        apply_allocation_policy: false,
        ..LinkedHub::new(host)
    }
}

/// Where an enrollment (or group) says its devices go.
#[derive(Clone, Copy, Default)]
struct Target {
    policy: Option<AllocationPolicy>,
    iot_hubs: Option<&'static [&'static str]>,
    iot_hub_host_name: Option<&'static str>,
}

/// An engine linking `hubs`, with `default` as the service's allocation policy and no quotas
/// (the weight rows register thousands of devices at one instant).
async fn engine(hubs: &[LinkedHub], default: AllocationPolicy) -> (Engine, std::sync::Arc<FakeHub>) {
    engine_with(|c: &mut EngineConfig| {
        c.linked_hubs = hubs.to_vec();
        c.default_allocation = default;
        c.quotas = QuotaConfig::UNLIMITED;
    })
    .await
}

/// Writes the enrollment `reg` (or the group) targeting `t`.
async fn enroll_to(e: &Engine, via: Via, reg: &str, t: Target) {
    let settings = IndividualEnrollment {
        allocation_policy: t.policy,
        iot_hubs: t.iot_hubs.map(|h| h.iter().map(|s| s.to_string()).collect()),
        iot_hub_host_name: t.iot_hub_host_name.map(str::to_string),
        ..Default::default()
    };
    enroll(e, via, reg, settings, None).await;
}

/// What a registration ends in.
#[derive(Debug)]
enum Expect {
    /// `assigned` to this hub.
    Hub(&'static str),
    /// `failed` with this errorCode and a message containing this text; nothing is persisted
    /// and the hub is not touched.
    Failed(u32, &'static str),
}

struct HubCase {
    name: &'static str,
    linked: Vec<LinkedHub>,
    default: AllocationPolicy,
    via: Via,
    target: Target,
    expect: Expect,
}

/// Each row registers 20 devices: a hub a policy may not pick is never picked, whatever the
/// hash says about the device.
#[tokio::test]
async fn the_policy_decides_the_hub() {
    use AllocationPolicy::{GeoLatency, Hashed, Static};
    use Expect::{Failed, Hub};
    let three = || vec![LinkedHub::new(HUB), LinkedHub::new(HUB2), LinkedHub::new(HUB3)];
    let t = Target::default;
    let cases = [
        HubCase {
            name: "hashed over the one linked hub",
            linked: vec![LinkedHub::new(HUB)],
            default: Hashed,
            via: Via::Individual,
            target: t(),
            expect: Hub(HUB),
        },
        HubCase {
            name: "hashed never picks a hub with applyAllocationPolicy false, whatever its weight",
            linked: vec![
                LinkedHub {
                    allocation_weight: 1000,
                    ..excluded(HUB)
                },
                LinkedHub::new(HUB2),
            ],
            default: Hashed,
            via: Via::Individual,
            target: t(),
            expect: Hub(HUB2),
        },
        HubCase {
            name: "geoLatency (no latency signal) hashes like hashed and skips excluded hubs",
            linked: vec![excluded(HUB), LinkedHub::new(HUB2)],
            default: Hashed,
            via: Via::Individual,
            target: Target {
                policy: Some(GeoLatency),
                ..t()
            },
            expect: Hub(HUB2),
        },
        HubCase {
            name: "an empty iotHubs list means every linked hub policies may pick",
            linked: vec![excluded(HUB), LinkedHub::new(HUB2)],
            default: Hashed,
            via: Via::Individual,
            target: Target {
                iot_hubs: Some(&[]),
                ..t()
            },
            expect: Hub(HUB2),
        },
        HubCase {
            name: "hashed over an explicit one-hub list",
            linked: three(),
            default: Hashed,
            via: Via::Individual,
            target: Target {
                iot_hubs: Some(&[HUB3]),
                ..t()
            },
            expect: Hub(HUB3),
        },
        HubCase {
            name: "an explicit list may name a hub policies may not pick",
            linked: vec![LinkedHub::new(HUB), excluded(HUB2)],
            default: Hashed,
            via: Via::Individual,
            target: Target {
                iot_hubs: Some(&[HUB2]),
                ..t()
            },
            expect: Hub(HUB2),
        },
        HubCase {
            name: "an explicit list on a group",
            linked: three(),
            default: Hashed,
            via: Via::Group,
            target: Target {
                iot_hubs: Some(&[HUB2]),
                ..t()
            },
            expect: Hub(HUB2),
        },
        HubCase {
            name: "static through the legacy iotHubHostName",
            linked: three(),
            default: Hashed,
            via: Via::Individual,
            target: Target {
                policy: Some(Static),
                iot_hub_host_name: Some(HUB2),
                ..t()
            },
            expect: Hub(HUB2),
        },
        HubCase {
            name: "static through a one-hub iotHubs",
            linked: three(),
            default: Hashed,
            via: Via::Individual,
            target: Target {
                policy: Some(Static),
                iot_hubs: Some(&[HUB3]),
                ..t()
            },
            expect: Hub(HUB3),
        },
        HubCase {
            name: "static: iotHubs wins over iotHubHostName",
            linked: three(),
            default: Hashed,
            via: Via::Individual,
            target: Target {
                policy: Some(Static),
                iot_hubs: Some(&[HUB3]),
                iot_hub_host_name: Some(HUB2),
            },
            expect: Hub(HUB3),
        },
        HubCase {
            name: "static: host names compare case-insensitively, the linked spelling is assigned",
            linked: three(),
            default: Hashed,
            via: Via::Individual,
            target: Target {
                policy: Some(Static),
                iot_hubs: Some(&["HUB2.Example.TEST"]),
                ..t()
            },
            expect: Hub(HUB2),
        },
        HubCase {
            name: "static may name a hub policies may not pick",
            linked: vec![LinkedHub::new(HUB), excluded(HUB2)],
            default: Hashed,
            via: Via::Individual,
            target: Target {
                policy: Some(Static),
                iot_hub_host_name: Some(HUB2),
                ..t()
            },
            expect: Hub(HUB2),
        },
        HubCase {
            name: "static on a group",
            linked: three(),
            default: Hashed,
            via: Via::Group,
            target: Target {
                policy: Some(Static),
                iot_hub_host_name: Some(HUB3),
                ..t()
            },
            expect: Hub(HUB3),
        },
        HubCase {
            name: "the service default applies when the enrollment sets no policy",
            linked: three(),
            default: Static,
            via: Via::Individual,
            target: Target {
                iot_hub_host_name: Some(HUB2),
                ..t()
            },
            expect: Hub(HUB2),
        },
        HubCase {
            name: "no linked hub",
            linked: vec![],
            default: Hashed,
            via: Via::Individual,
            target: t(),
            expect: Failed(
                codes::HUB_NOT_SPECIFIED,
                "no linked IoT hub is available for allocation",
            ),
        },
        HubCase {
            name: "no linked hub on a group",
            linked: vec![],
            default: Hashed,
            via: Via::Group,
            target: t(),
            expect: Failed(
                codes::HUB_NOT_SPECIFIED,
                "no linked IoT hub is available for allocation",
            ),
        },
        HubCase {
            name: "every linked hub has applyAllocationPolicy false",
            linked: vec![excluded(HUB), excluded(HUB2)],
            default: Hashed,
            via: Via::Individual,
            target: t(),
            expect: Failed(
                codes::HUB_NOT_SPECIFIED,
                "no linked IoT hub is available for allocation",
            ),
        },
        HubCase {
            name: "static with two hubs on the enrollment",
            linked: three(),
            default: Hashed,
            via: Via::Individual,
            target: Target {
                policy: Some(Static),
                iot_hubs: Some(&[HUB, HUB2]),
                ..t()
            },
            expect: Failed(
                codes::HUB_NOT_SPECIFIED,
                "static allocation needs exactly one IoT hub on the enrollment, found 2",
            ),
        },
        // Azure: the hub "must be specified on the enrollment"; one linked hub is no default.
        HubCase {
            name: "static naming no hub, even with a single linked hub",
            linked: vec![LinkedHub::new(HUB)],
            default: Hashed,
            via: Via::Individual,
            target: Target {
                policy: Some(Static),
                ..t()
            },
            expect: Failed(
                codes::HUB_NOT_SPECIFIED,
                "static allocation needs exactly one IoT hub on the enrollment, found 0",
            ),
        },
        HubCase {
            name: "static as the service default, on a group naming no hub",
            linked: vec![LinkedHub::new(HUB)],
            default: Static,
            via: Via::Group,
            target: t(),
            expect: Failed(
                codes::HUB_NOT_SPECIFIED,
                "static allocation needs exactly one IoT hub on the enrollment, found 0",
            ),
        },
    ];
    for case in cases {
        let (e, hub) = engine(&case.linked, case.default).await;
        if let Via::Group = case.via {
            enroll_to(&e, Via::Group, GROUP, case.target).await;
        }
        for i in 0..20 {
            let reg = format!("dev-{i}");
            if let Via::Individual = case.via {
                enroll_to(&e, Via::Individual, &reg, case.target).await;
            }
            let done = register_via(&e, case.via, &reg).await;
            let st = &done.registration_state;
            let what = format!("{}: {reg}", case.name);
            match case.expect {
                Expect::Hub(h) => {
                    assert_eq!(done.status, RegistrationStatus::Assigned, "{what}: {st:?}");
                    assert_eq!(st.assigned_hub.as_deref(), Some(h), "{what}");
                    assert_eq!(
                        hub.identity(h, &reg).map(|_| ()),
                        Some(()),
                        "{what}: the device is in its hub"
                    );
                }
                Expect::Failed(code, message) => {
                    assert_eq!(done.status, RegistrationStatus::Failed, "{what}: {st:?}");
                    assert_eq!(st.status, RegistrationStatus::Failed, "{what}");
                    assert_eq!(st.error_code, Some(code), "{what}");
                    let m = st.error_message.as_deref().unwrap_or_default();
                    assert!(m.contains(message), "{what}: {m}");
                    assert_eq!(st.assigned_hub, None, "{what}");
                    assert!(e.get_registration(&reg).await.is_err(), "{what}: no record");
                    assert!(hub.devices.lock().is_empty(), "{what}: the hub untouched");
                }
            }
        }
    }
}

struct WeightCase {
    name: &'static str,
    linked: Vec<LinkedHub>,
    /// Each hub's expected share of the devices, in percent.
    shares: &'static [(&'static str, f64)],
}

/// Hashed allocation spreads devices in proportion to the hubs' `allocationWeight`. The hash is
/// deterministic, so these counts are exact every run; the tolerance only says how close to the
/// weights a 2,000-device sample must come.
#[tokio::test]
async fn weights_decide_each_hubs_share() {
    const DEVICES: usize = 2_000;
    const TOLERANCE: f64 = 3.0;
    let cases = [
        WeightCase {
            name: "equal weights split evenly",
            linked: vec![LinkedHub::new(HUB), LinkedHub::new(HUB2)],
            shares: &[(HUB, 50.0), (HUB2, 50.0)],
        },
        WeightCase {
            name: "weight 3 against 1",
            linked: vec![weighted(HUB, 3), weighted(HUB2, 1)],
            shares: &[(HUB, 75.0), (HUB2, 25.0)],
        },
        WeightCase {
            name: "weights 1, 2 and 7",
            linked: vec![weighted(HUB, 1), weighted(HUB2, 2), weighted(HUB3, 7)],
            shares: &[(HUB, 10.0), (HUB2, 20.0), (HUB3, 70.0)],
        },
        WeightCase {
            name: "the largest weight against the smallest",
            linked: vec![weighted(HUB, 1000), weighted(HUB2, 1)],
            shares: &[(HUB, 99.9), (HUB2, 0.1)],
        },
        WeightCase {
            name: "an excluded hub gets nothing and its weight counts for nothing",
            linked: vec![
                LinkedHub {
                    allocation_weight: 1000,
                    ..excluded(HUB)
                },
                weighted(HUB2, 1),
                weighted(HUB3, 1),
            ],
            shares: &[(HUB, 0.0), (HUB2, 50.0), (HUB3, 50.0)],
        },
    ];
    for case in cases {
        let (e, hub) = engine(&case.linked, AllocationPolicy::Hashed).await;
        enroll_to(&e, Via::Group, GROUP, Target::default()).await;
        for i in 0..DEVICES {
            let done = register_via(&e, Via::Group, &format!("sensor-{i:04}")).await;
            assert_eq!(done.status, RegistrationStatus::Assigned, "{}", case.name);
        }
        let identities = hub.identities.lock();
        assert_eq!(identities.len(), DEVICES, "{}", case.name);
        for (h, share) in case.shares {
            let n = identities.keys().filter(|(hub, _)| hub == h).count();
            let got = 100.0 * n as f64 / DEVICES as f64;
            assert!(
                (got - share).abs() <= TOLERANCE && (*share > 0.0 || n == 0),
                "{}: {h} got {got:.1}% ({n} devices), expected {share}%",
                case.name
            );
        }
    }
}

/// The hub each of 300 devices is assigned to by an engine linking `hubs`.
async fn assignments(hubs: &[LinkedHub], ids: impl Fn(usize) -> String) -> Vec<String> {
    let (e, _) = engine(hubs, AllocationPolicy::Hashed).await;
    enroll_to(&e, Via::Group, GROUP, Target::default()).await;
    let mut out = Vec::new();
    for i in 0..300 {
        let done = register_via(&e, Via::Group, &ids(i)).await;
        out.push(done.registration_state.assigned_hub.unwrap());
    }
    out
}

/// How a variant's assignments must relate to the reference's.
enum Same {
    /// Every device on the same hub.
    Everywhere,
    /// Devices either stay or move to this (new) hub, never between the old ones.
    ExceptMovesTo(&'static str),
}

/// The hash is a function of the registration id and the linked hubs alone: not of the engine
/// instance, the order hubs are listed in, or the registration id's case; adding a hub only
/// moves devices to the new hub (rendezvous hashing).
#[tokio::test]
async fn the_hash_is_deterministic() {
    let reference_hubs = vec![LinkedHub::new(HUB), weighted(HUB2, 2)];
    let lower = |i: usize| format!("unit-{i}");
    let reference = assignments(&reference_hubs, lower).await;
    assert!(reference.iter().any(|h| h == HUB) && reference.iter().any(|h| h == HUB2));
    type Ids = fn(usize) -> String;
    let cases: [(&str, Vec<LinkedHub>, Ids, Same); 4] = [
        (
            "the same ids on another engine",
            reference_hubs.clone(),
            |i| format!("unit-{i}"),
            Same::Everywhere,
        ),
        (
            "the linked hubs listed in the other order",
            reference_hubs.iter().rev().cloned().collect(),
            |i| format!("unit-{i}"),
            Same::Everywhere,
        ),
        (
            "the registration ids in upper case",
            reference_hubs.clone(),
            |i| format!("UNIT-{i}"),
            Same::Everywhere,
        ),
        (
            "a third hub linked",
            vec![LinkedHub::new(HUB), weighted(HUB2, 2), LinkedHub::new(HUB3)],
            |i| format!("unit-{i}"),
            Same::ExceptMovesTo(HUB3),
        ),
    ];
    for (name, hubs, ids, same) in cases {
        let got = assignments(&hubs, ids).await;
        for (i, (before, after)) in reference.iter().zip(&got).enumerate() {
            match same {
                Same::Everywhere => assert_eq!(before, after, "{name}: device {i}"),
                Same::ExceptMovesTo(new) => assert!(before == after || after == new, "{name}: device {i}"),
            }
        }
        if let Same::ExceptMovesTo(new) = same {
            let moved = got.iter().filter(|h| *h == new).count();
            assert!((50..=150).contains(&moved), "{name}: {moved} of 300 moved to {new}");
        }
    }
}
