//! Reprovisioning: what a device's second registration does under each
//! `reprovisionPolicy` (`updateHubAssignment` × `migrateDeviceData`) — the hub it ends on, the
//! registration substatus, the twin and capabilities in that hub, and the identity in the hub it
//! left (service-api.md §5.6; Azure's `ReprovisionPolicy`: "migrate the device's data (twin,
//! device capabilities, and device ID) from one IoT hub to another", or "reset the device's data
//! to the initial desired configuration stored in the enrollment"; `updateHubAssignment: false`
//! "the device will stay assigned to its current IoT hub"). One table per concern, each row
//! naming its case. Engine over the in-memory store and the fake hub, which keeps each hub's
//! identities as an IoT hub would.

mod common;

use dps_core::{Engine, LinkedHub};
use dps_proto::model::service::{
    AllocationPolicy, DeviceCapabilities, IndividualEnrollment, InitialTwin, InitialTwinProperties, RegistrationStatus,
    ReprovisionPolicy, Substatus,
};
use serde_json::json;

use common::{engine_with, enroll, register_via, FakeHub, FakeIdentity, Via, HUB, HUB2};

const DEVICE: &str = "mover-1";

fn twin(version: &str) -> InitialTwin {
    InitialTwin {
        tags: Some(json!({"config": version})),
        properties: Some(InitialTwinProperties {
            desired: Some(json!({"fw": version})),
        }),
    }
}

/// The enrollment's initial twin.
fn initial() -> InitialTwin {
    twin("initial")
}

/// The twin a back-end application set in the hub after the first registration.
fn updated() -> InitialTwin {
    twin("updated")
}

fn edge(on: bool) -> DeviceCapabilities {
    DeviceCapabilities { iot_edge: on }
}

/// The enrollment: static to `hub`, the initial twin, IoT Edge `edge_on`, `policy`.
fn settings(hub: &str, edge_on: bool, policy: Option<ReprovisionPolicy>) -> IndividualEnrollment {
    IndividualEnrollment {
        allocation_policy: Some(AllocationPolicy::Static),
        iot_hub_host_name: Some(hub.into()),
        initial_twin: Some(initial()),
        capabilities: Some(edge(edge_on)),
        reprovision_policy: policy,
        ..Default::default()
    }
}

fn policy(update_hub_assignment: bool, migrate_device_data: bool) -> Option<ReprovisionPolicy> {
    Some(ReprovisionPolicy {
        update_hub_assignment,
        migrate_device_data,
    })
}

/// An engine linking [`HUB`] and [`HUB2`].
async fn two_hubs() -> (Engine, std::sync::Arc<FakeHub>) {
    engine_with(|c| c.linked_hubs = vec![LinkedHub::new(HUB), LinkedHub::new(HUB2)]).await
}

/// Provisions [`DEVICE`] through `via` to [`HUB`] with IoT Edge on, then lets a back-end
/// application change its twin there: the state every reprovisioning case starts from.
async fn provisioned(e: &Engine, hub: &FakeHub, via: Via, policy: Option<ReprovisionPolicy>) {
    enroll(e, via, DEVICE, settings(HUB, true, policy), None).await;
    let first = register_via(e, via, DEVICE).await;
    assert_eq!(first.registration_state.assigned_hub.as_deref(), Some(HUB));
    assert_eq!(first.registration_state.substatus, Some(Substatus::InitialAssignment));
    assert_eq!(
        hub.identity(HUB, DEVICE),
        Some(FakeIdentity {
            twin: Some(initial()),
            capabilities: edge(true)
        })
    );
    hub.set_twin(HUB, DEVICE, updated());
}

struct Case {
    name: &'static str,
    via: Via,
    policy: Option<ReprovisionPolicy>,
    /// The hub the enrollment names when the device registers again.
    now_names: &'static str,
    /// The hub the device is assigned to.
    hub: &'static str,
    substatus: Substatus,
    /// What that hub holds for the device. When it is not [`HUB`], the identity in [`HUB`] is
    /// deleted.
    identity: FakeIdentity,
}

/// The enrollment moves from [`HUB`] to another hub (or stays) and turns IoT Edge off; the
/// device registers again.
#[tokio::test]
async fn a_second_registration_follows_the_reprovision_policy() {
    let migrated = || FakeIdentity {
        twin: Some(updated()),
        capabilities: edge(true),
    };
    let reset = || FakeIdentity {
        twin: Some(initial()),
        capabilities: edge(false),
    };
    // Kept in place: the twin as the back end left it, the enrollment's new capabilities.
    let kept = || FakeIdentity {
        twin: Some(updated()),
        capabilities: edge(false),
    };
    let cases = [
        // The hub changes.
        Case {
            name: "update + migrate, hub changed: the device's data moves, the old identity goes",
            via: Via::Individual,
            policy: policy(true, true),
            now_names: HUB2,
            hub: HUB2,
            substatus: Substatus::DeviceDataMigrated,
            identity: migrated(),
        },
        Case {
            name: "no policy means update + migrate",
            via: Via::Individual,
            policy: None,
            now_names: HUB2,
            hub: HUB2,
            substatus: Substatus::DeviceDataMigrated,
            identity: migrated(),
        },
        Case {
            name: "update + migrate through a group",
            via: Via::Group,
            policy: policy(true, true),
            now_names: HUB2,
            hub: HUB2,
            substatus: Substatus::DeviceDataMigrated,
            identity: migrated(),
        },
        Case {
            name: "update + reset, hub changed: the enrollment's initial configuration, the old identity goes",
            via: Via::Individual,
            policy: policy(true, false),
            now_names: HUB2,
            hub: HUB2,
            substatus: Substatus::DeviceDataReset,
            identity: reset(),
        },
        Case {
            name: "update + reset through a group",
            via: Via::Group,
            policy: policy(true, false),
            now_names: HUB2,
            hub: HUB2,
            substatus: Substatus::DeviceDataReset,
            identity: reset(),
        },
        Case {
            name: "never reprovision (no update, migrate): stays on its hub, twin kept",
            via: Via::Individual,
            policy: policy(false, true),
            now_names: HUB2,
            hub: HUB,
            substatus: Substatus::InitialAssignment,
            identity: kept(),
        },
        Case {
            name: "never reprovision (no update, no migrate): stays on its hub, twin kept",
            via: Via::Individual,
            policy: policy(false, false),
            now_names: HUB2,
            hub: HUB,
            substatus: Substatus::InitialAssignment,
            identity: kept(),
        },
        // The hub stays the same.
        Case {
            name: "update + migrate, same hub: nothing to migrate, the previous substatus stays",
            via: Via::Individual,
            policy: policy(true, true),
            now_names: HUB,
            hub: HUB,
            substatus: Substatus::InitialAssignment,
            identity: kept(),
        },
        Case {
            name: "update + reset, same hub: a factory reset in place",
            via: Via::Individual,
            policy: policy(true, false),
            now_names: HUB,
            hub: HUB,
            substatus: Substatus::DeviceDataReset,
            identity: reset(),
        },
        Case {
            name: "no update + migrate, same hub",
            via: Via::Individual,
            policy: policy(false, true),
            now_names: HUB,
            hub: HUB,
            substatus: Substatus::InitialAssignment,
            identity: kept(),
        },
        Case {
            name: "no update + no migrate, same hub",
            via: Via::Individual,
            policy: policy(false, false),
            now_names: HUB,
            hub: HUB,
            substatus: Substatus::InitialAssignment,
            identity: kept(),
        },
    ];
    for case in cases {
        let name = case.name;
        let (e, hub) = two_hubs().await;
        provisioned(&e, &hub, case.via, case.policy).await;
        let first = e.get_registration(DEVICE).await.unwrap();
        enroll(
            &e,
            case.via,
            DEVICE,
            settings(case.now_names, false, case.policy),
            Some("*"),
        )
        .await;

        let again = register_via(&e, case.via, DEVICE).await;
        assert_eq!(again.status, RegistrationStatus::Assigned, "{name}");
        let st = &again.registration_state;
        assert_eq!(st.assigned_hub.as_deref(), Some(case.hub), "{name}");
        assert_eq!(st.device_id.as_deref(), Some(DEVICE), "{name}");
        assert_eq!(st.substatus, Some(case.substatus), "{name}");
        assert_eq!(st.created_date_time_utc, first.created_date_time_utc, "{name}");
        assert_eq!(hub.identity(case.hub, DEVICE), Some(case.identity), "{name}");
        // The record the service API shows says the same.
        let rec = e.get_registration(DEVICE).await.unwrap();
        assert_eq!(rec.assigned_hub.as_deref(), Some(case.hub), "{name}");
        assert_eq!(rec.substatus, Some(case.substatus), "{name}");
        // The device is in exactly one hub.
        let other = if case.hub == HUB { HUB2 } else { HUB };
        assert_eq!(hub.identity(other, DEVICE), None, "{name}");
        assert_eq!(
            *hub.deleted.lock(),
            if case.hub != HUB {
                vec![(HUB.to_string(), DEVICE.to_string())]
            } else {
                vec![]
            },
            "{name}"
        );
    }
}

/// Where a migrating device's data comes from when its old identity is not as provisioning
/// left it.
#[tokio::test]
async fn migration_carries_what_the_old_hub_holds() {
    type Before = fn(&FakeHub);
    let cases: [(&str, Before, FakeIdentity); 2] = [
        (
            "the old hub's twin and capabilities, as a back end left them",
            |hub| {
                hub.identities
                    .lock()
                    .get_mut(&(HUB.to_string(), DEVICE.to_string()))
                    .unwrap()
                    .capabilities = edge(false);
            },
            FakeIdentity {
                twin: Some(updated()),
                capabilities: edge(false),
            },
        ),
        (
            "an operator deleted the old identity: the enrollment's initial configuration",
            |hub| {
                hub.identities.lock().clear();
            },
            FakeIdentity {
                twin: Some(initial()),
                capabilities: edge(true),
            },
        ),
    ];
    for (name, before, expect) in cases {
        let (e, hub) = two_hubs().await;
        provisioned(&e, &hub, Via::Individual, policy(true, true)).await;
        before(&hub);
        enroll(
            &e,
            Via::Individual,
            DEVICE,
            settings(HUB2, true, policy(true, true)),
            Some("*"),
        )
        .await;
        let again = register_via(&e, Via::Individual, DEVICE).await;
        assert_eq!(again.registration_state.assigned_hub.as_deref(), Some(HUB2), "{name}");
        assert_eq!(
            again.registration_state.substatus,
            Some(Substatus::DeviceDataMigrated),
            "{name}"
        );
        assert_eq!(hub.identity(HUB2, DEVICE), Some(expect), "{name}");
        assert_eq!(hub.identity(HUB, DEVICE), None, "{name}");
    }
}

/// A first registration as DPS sees it (no registration record): `initialAssignment` for a new
/// device, `reprovisionedToInitialAssignment` when the hub already holds it (the record was
/// deleted, or the identity was made outside DPS) — which keeps the hub's twin.
#[tokio::test]
async fn a_registration_dps_has_no_record_of_is_initial() {
    type Before = fn(&FakeHub);
    let cases: [(&str, bool, Before, Substatus, FakeIdentity); 3] = [
        (
            "a new device",
            false,
            |_| {},
            Substatus::InitialAssignment,
            FakeIdentity {
                twin: Some(initial()),
                capabilities: edge(true),
            },
        ),
        (
            "the record was deleted; the device is still in the hub",
            true,
            |_| {},
            Substatus::ReprovisionedToInitialAssignment,
            FakeIdentity {
                twin: Some(updated()),
                capabilities: edge(true),
            },
        ),
        (
            "the record was deleted and the device removed from the hub",
            true,
            |hub| {
                hub.identities.lock().clear();
            },
            Substatus::InitialAssignment,
            FakeIdentity {
                twin: Some(initial()),
                capabilities: edge(true),
            },
        ),
    ];
    for (name, registered_before, before, substatus, expect) in cases {
        let (e, hub) = two_hubs().await;
        if registered_before {
            provisioned(&e, &hub, Via::Individual, policy(true, true)).await;
            e.delete_registration(DEVICE, None).await.unwrap();
        } else {
            enroll(
                &e,
                Via::Individual,
                DEVICE,
                settings(HUB, true, policy(true, true)),
                None,
            )
            .await;
        }
        before(&hub);
        let done = register_via(&e, Via::Individual, DEVICE).await;
        assert_eq!(done.registration_state.assigned_hub.as_deref(), Some(HUB), "{name}");
        assert_eq!(done.registration_state.substatus, Some(substatus), "{name}");
        assert_eq!(hub.identity(HUB, DEVICE), Some(expect), "{name}");
        assert!(hub.deleted.lock().is_empty(), "{name}");
    }
}

/// An operator's reprovision request moves a device its enrollment keeps on its hub
/// (`updateHubAssignment: false`) at its next registration, with its data migrated as the
/// enrollment says; after that the device sticks to its new hub again.
#[tokio::test]
async fn an_operator_request_reprovisions_a_device_that_sticks_to_its_hub() {
    let (e, hub) = two_hubs().await;
    provisioned(&e, &hub, Via::Individual, policy(false, true)).await;
    enroll(
        &e,
        Via::Individual,
        DEVICE,
        settings(HUB2, true, policy(false, true)),
        Some("*"),
    )
    .await;
    let stays = register_via(&e, Via::Individual, DEVICE).await;
    assert_eq!(
        stays.registration_state.assigned_hub.as_deref(),
        Some(HUB),
        "sticky without a request"
    );

    let marked = e.request_reprovision(DEVICE).await.unwrap();
    assert_eq!(marked.assigned_hub.as_deref(), Some(HUB));
    let moved = register_via(&e, Via::Individual, DEVICE).await;
    assert_eq!(moved.status, RegistrationStatus::Assigned);
    assert_eq!(moved.registration_state.assigned_hub.as_deref(), Some(HUB2));
    assert_eq!(moved.registration_state.substatus, Some(Substatus::DeviceDataMigrated));
    assert_eq!(
        hub.identity(HUB2, DEVICE).unwrap().twin,
        Some(updated()),
        "data migrated"
    );
    assert_eq!(hub.identity(HUB, DEVICE), None, "the old identity is gone");

    // The request was used up: back to the enrollment's policy.
    enroll(
        &e,
        Via::Individual,
        DEVICE,
        settings(HUB, true, policy(false, true)),
        Some("*"),
    )
    .await;
    let sticks = register_via(&e, Via::Individual, DEVICE).await;
    assert_eq!(sticks.registration_state.assigned_hub.as_deref(), Some(HUB2));

    let err = e.request_reprovision("never-registered").await.unwrap_err();
    assert_eq!(err.code(), dps_proto::codes::REGISTRATION_NOT_FOUND);
}
