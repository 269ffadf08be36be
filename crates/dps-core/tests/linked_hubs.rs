//! Linked hubs through the engine's service API: linking, changing and unlinking hubs, what is
//! refused and why, and how allocation follows (an enrollment naming an unlinked hub is refused
//! when it is written; a hub unlinked later fails the registration, not the enrollment).

mod common;

use dps_core::{Engine, Error, MAX_LINKED_HUBS};
use dps_proto::codes;
use dps_proto::model::service::{
    AllocationPolicy, BulkEnrollmentOperation, BulkMode, EnrollmentGroup, IndividualEnrollment, LinkedHubDescription,
    RegistrationStatus,
};

use common::{engine_with, enroll, now, register_via, sym, Via, ENROLLMENT_KEY, HUB, HUB2, HUB3};

const KEY: &str = "a2V5IGZvciB0aGUgaHViIHBvbGljeQ==";

fn description(host: &str) -> LinkedHubDescription {
    LinkedHubDescription {
        connection_string: format!("HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"),
        ..Default::default()
    }
}

fn refusal(e: Error) -> (u32, String) {
    (e.code(), e.to_string())
}

async fn linked(e: &Engine, hosts: &[&str]) {
    for h in hosts {
        e.put_linked_hub(h, description(h)).await.unwrap();
    }
}

#[tokio::test]
async fn hubs_are_linked_changed_and_unlinked_with_their_keys_never_shown() {
    let (e, _) = engine_with(|_| {}).await;
    let put = e
        .put_linked_hub(
            "Hub2.Example.test",
            LinkedHubDescription {
                allocation_weight: Some(5),
                location: Some("westeurope".into()),
                ..description(HUB2)
            },
        )
        .await
        .unwrap();
    assert_eq!(put.name, HUB2);
    assert_eq!(
        put.connection_string,
        format!("HostName={HUB2};SharedAccessKeyName=iothubowner;SharedAccessKey=****")
    );
    assert_eq!(e.get_linked_hub(HUB2).await.unwrap(), put);
    assert_eq!(e.list_linked_hubs().await.unwrap(), vec![put.clone()]);
    assert!(e.is_linked("HUB2.example.test"));
    // (The engine's configured hub stays beside it: this store linked none before.)
    let seen = |e: &Engine| e.linked_hubs().into_iter().find(|h| h.host_name == HUB2).unwrap();
    assert_eq!(
        (seen(&e).allocation_weight, seen(&e).location),
        (5, Some("westeurope".into()))
    );

    // A change without a connection string keeps the stored one (and its key).
    let changed = e
        .put_linked_hub(
            HUB2,
            LinkedHubDescription {
                allocation_weight: Some(9),
                apply_allocation_policy: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.connection_string, put.connection_string);
    assert_eq!(seen(&e).allocation_weight, 9);
    assert!(!seen(&e).apply_allocation_policy);

    e.delete_linked_hub(HUB2).await.unwrap();
    assert!(!e.is_linked(HUB2));
    let (code, msg) = refusal(e.delete_linked_hub(HUB2).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (codes::PATH_NOT_FOUND, "linked hub 'hub2.example.test' not found")
    );
    assert_eq!(
        refusal(e.get_linked_hub(HUB2).await.unwrap_err()).0,
        codes::PATH_NOT_FOUND
    );
}

#[tokio::test]
async fn bad_linked_hub_settings_are_refused_saying_which() {
    let (e, _) = engine_with(|_| {}).await;
    let cases: Vec<(LinkedHubDescription, &str)> = vec![
        (
            LinkedHubDescription::default(),
            "connectionString is required to link a hub",
        ),
        (
            description(HUB3),
            "connectionString names HostName=hub3.example.test, not this hub",
        ),
        (
            LinkedHubDescription {
                connection_string: format!("HostName={HUB2};SharedAccessKey={KEY}"),
                ..Default::default()
            },
            "needs SharedAccessKeyName and SharedAccessKey",
        ),
        (
            LinkedHubDescription {
                connection_string: format!("HostName={HUB2};SharedAccessKeyName=p;SharedAccessKey=not base64!"),
                ..Default::default()
            },
            "SharedAccessKey is not base64",
        ),
        (
            LinkedHubDescription {
                allocation_weight: Some(1001),
                ..description(HUB2)
            },
            "allocationWeight must be from 1 to 1000, not 1001",
        ),
        (
            LinkedHubDescription {
                name: HUB3.into(),
                ..description(HUB2)
            },
            "does not match the path id",
        ),
    ];
    for (d, why) in cases {
        let (code, msg) = refusal(e.put_linked_hub(HUB2, d).await.unwrap_err());
        assert_eq!(code, codes::ARGUMENT_INVALID, "{msg}");
        assert!(msg.contains(why), "{msg} (expected: {why})");
    }
    assert!(e.list_linked_hubs().await.unwrap().is_empty(), "nothing was linked");

    // Azure's limit of 50 linked hubs.
    for i in 0..MAX_LINKED_HUBS {
        let h = format!("hub-{i}.example.test");
        e.put_linked_hub(&h, description(&h)).await.unwrap();
    }
    let (code, msg) = refusal(e.put_linked_hub(HUB2, description(HUB2)).await.unwrap_err());
    assert_eq!(code, codes::ARGUMENT_INVALID);
    assert!(msg.contains("at most 50 hubs"), "{msg}");
    // Changing one of the 50 is still fine.
    e.put_linked_hub("hub-0.example.test", description("hub-0.example.test"))
        .await
        .unwrap();
}

#[tokio::test]
async fn enrollments_naming_unlinked_hubs_are_refused_when_written() {
    let (e, _) = engine_with(|_| {}).await;
    linked(&e, &[HUB2]).await;
    let naming = |hubs: &[&str], legacy: Option<&str>| IndividualEnrollment {
        attestation: sym(Some(ENROLLMENT_KEY), None),
        iot_hubs: Some(hubs.iter().map(|h| h.to_string()).collect()),
        iot_hub_host_name: legacy.map(str::to_string),
        allocation_policy: Some(AllocationPolicy::Hashed),
        ..Default::default()
    };
    for (enrollment, unlinked) in [
        (naming(&["elsewhere.example", HUB2], None), "elsewhere.example"),
        (naming(&[], Some("legacy.example")), "legacy.example"),
    ] {
        let (code, msg) = refusal(e.put_enrollment(now(), "dev-1", enrollment, None).await.unwrap_err());
        assert_eq!(code, codes::ARGUMENT_INVALID, "{msg}");
        assert!(msg.contains(&format!("IoT hub(s) {unlinked} not linked")), "{msg}");
    }
    let group = EnrollmentGroup {
        attestation: sym(Some(ENROLLMENT_KEY), None),
        iot_hubs: Some(vec!["elsewhere.example".into()]),
        ..Default::default()
    };
    let (code, msg) = refusal(e.put_group(now(), "grp", group, None).await.unwrap_err());
    assert_eq!(code, codes::ARGUMENT_INVALID);
    assert!(
        msg.starts_with("enrollment group: IoT hub(s) elsewhere.example not linked"),
        "{msg}"
    );
    // Bulk writes apply the same rule per item.
    let bulk = e
        .bulk_enrollments(
            now(),
            BulkEnrollmentOperation {
                mode: BulkMode::Create,
                enrollments: vec![IndividualEnrollment {
                    registration_id: "dev-2".into(),
                    ..naming(&["elsewhere.example"], None)
                }],
            },
        )
        .await
        .unwrap();
    assert!(!bulk.is_successful, "{bulk:?}");
    // Case does not matter, and a linked hub is accepted.
    e.put_enrollment(now(), "dev-3", naming(&["HUB2.example.TEST"], None), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn allocation_follows_the_hubs_as_they_are_linked_and_unlinked() {
    let (e, hub) = engine_with(|_| {}).await;
    linked(&e, &[HUB, HUB2]).await;
    let to_hub2 = IndividualEnrollment {
        iot_hubs: Some(vec![HUB2.into()]),
        ..Default::default()
    };
    enroll(&e, Via::Individual, "dev-a", to_hub2.clone(), None).await;
    let done = register_via(&e, Via::Individual, "dev-a").await;
    assert_eq!(done.registration_state.assigned_hub.as_deref(), Some(HUB2));
    assert!(hub.identity(HUB2, "dev-a").is_some());

    // Unlinked after the enrollment was written: the registration fails (400208), the
    // enrollment stays as it was.
    enroll(&e, Via::Individual, "dev-b", to_hub2, None).await;
    e.delete_linked_hub(HUB2).await.unwrap();
    let done = register_via(&e, Via::Individual, "dev-b").await;
    assert_eq!(done.status, RegistrationStatus::Failed);
    assert_eq!(done.registration_state.error_code, Some(codes::HUB_NOT_SPECIFIED));
    let msg = done.registration_state.error_message.unwrap_or_default();
    assert!(
        msg.contains("none of the enrollment's IoT hubs (hub2.example.test) is linked"),
        "{msg}"
    );
    assert!(hub.identity(HUB2, "dev-b").is_none());

    // Hashed allocation over every linked hub picks only linked ones.
    linked(&e, &[HUB3]).await;
    for i in 0..20 {
        let reg = format!("dev-h{i}");
        enroll(&e, Via::Individual, &reg, IndividualEnrollment::default(), None).await;
        let done = register_via(&e, Via::Individual, &reg).await;
        let assigned = done.registration_state.assigned_hub.unwrap();
        assert!(assigned == HUB || assigned == HUB3, "{assigned}");
    }
}

#[tokio::test]
async fn geo_latency_places_devices_by_their_source_network() {
    let (e, _) = engine_with(|c| {
        c.linked_hubs = vec![
            dps_core::LinkedHub {
                location: Some("westeurope".into()),
                ..dps_core::LinkedHub::new(HUB)
            },
            dps_core::LinkedHub {
                location: Some("eastus".into()),
                ..dps_core::LinkedHub::new(HUB2)
            },
        ];
        c.geo.networks = vec![
            ("192.0.2.0/24".parse().unwrap(), "northeurope".into()),
            ("198.51.100.0/24".parse().unwrap(), "centralus".into()),
        ];
        c.quotas = dps_core::QuotaConfig::UNLIMITED;
    })
    .await;
    for i in 0..10 {
        for (source, expected) in [("192.0.2.7", HUB), ("198.51.100.7", HUB2)] {
            let reg = format!("geo-{i}-{source}");
            let enrollment = IndividualEnrollment {
                allocation_policy: Some(AllocationPolicy::GeoLatency),
                ..Default::default()
            };
            enroll(&e, Via::Individual, &reg, enrollment, None).await;
            let mut req = common::sas_request(&reg, ENROLLMENT_KEY, common::exp());
            req.source = Some(source.parse().unwrap());
            let done = common::register_and_poll(&e, &req).await.unwrap();
            assert_eq!(done.registration_state.assigned_hub.as_deref(), Some(expected), "{reg}");
        }
    }
}
