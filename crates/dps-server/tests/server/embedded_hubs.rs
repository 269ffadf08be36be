//! Several embedded hubs in one server (`--hub-hostname` given more than once): each linked,
//! with its own keys and registry, on the same listeners, told apart by the name a device or
//! backend puts in its MQTT username and SAS audience; the first also answers to the server's
//! own host names.

use crate::common;
use dps_proto::model::service::{AllocationPolicy, IndividualEnrollment};

const IP: &str = "127.0.38.32";
const HUB_A: &str = "hub-a.multi.test";
const HUB_B: &str = "hub-b.multi.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_land_on_the_hub_allocation_chose_and_connect_to_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::server_with(IP, dir.path(), |c| {
        c.hub_hostnames = vec![HUB_A.into(), HUB_B.into()];
    })
    .await;
    let engine = s.services.engine.clone();
    let mut linked: Vec<_> = engine.linked_hubs().into_iter().map(|h| h.host_name).collect();
    linked.sort();
    assert_eq!(linked, [HUB_A, HUB_B], "every embedded hub is linked");
    let (a, b) = (&s.services.identity.hub, &s.services.identity.other_hubs[0]);
    assert_eq!((a.host_name.as_str(), b.host_name.as_str()), (HUB_A, HUB_B));
    assert_ne!(
        a.policies[0].primary_key, b.policies[0].primary_key,
        "keys of their own"
    );

    // A static enrollment on hub B: the device lands there, and only there.
    let enrollment = IndividualEnrollment {
        attestation: common::symmetric_key(common::KEY),
        allocation_policy: Some(AllocationPolicy::Static),
        iot_hubs: Some(vec![HUB_B.into()]),
        ..Default::default()
    };
    common::put_enrollment(&s, "dev-b", enrollment).await;
    let state = common::register_through_engine(&s, "dev-b").await;
    assert_eq!(state.assigned_hub.as_deref(), Some(HUB_B));
    let hub = |name: &str| s.services.hubs.named(name).unwrap().hub.clone();
    assert!(hub(HUB_B).get_device("dev-b").await.is_ok());
    assert!(hub(HUB_A).get_device("dev-b").await.is_err());

    // The device connects naming hub B; naming hub A it is unknown, and a token for hub A
    // does not open hub B.
    let (c, mut ev) = common::hub_mqtt_to(&s, HUB_B, HUB_B, "dev-b")
        .await
        .expect("hub B takes it");
    common::publish_acked(&c, &mut ev, "devices/dev-b/messages/events/", "from b").await;
    c.disconnect().await.ok();
    for (user, audience) in [(HUB_A, HUB_A), (HUB_B, HUB_A)] {
        let refused = common::hub_mqtt_to(&s, user, audience, "dev-b").await;
        assert!(refused.is_err(), "username {user}, audience {audience}");
    }

    // Backends: hub B's owner reads it; hub A's owner finds no such device, and hub A's key
    // signing a token for hub B is refused.
    let path = "/devices/dev-b";
    let (status, body) = common::hub_rest_as(&s, HUB_B, &b.policies[0], "GET", path, None).await;
    assert_eq!((status, body["deviceId"].as_str()), (200, Some("dev-b")));
    let (status, _) = common::hub_rest_as(&s, HUB_A, &a.policies[0], "GET", path, None).await;
    assert_eq!(status, 404);
    let (status, _) = common::hub_rest_as(&s, HUB_B, &a.policies[0], "GET", path, None).await;
    assert_eq!(status, 401);

    // Hub A, the first, also answers to the server's own name.
    common::hub_device(&s, "dev-a").await;
    for name in [HUB_A, IP] {
        let (c, mut ev) = common::hub_mqtt_to(&s, name, name, "dev-a")
            .await
            .unwrap_or_else(|e| panic!("connecting as {name}: {e}"));
        common::publish_acked(
            &c,
            &mut ev,
            "devices/dev-a/messages/events/",
            format!("from a as {name}"),
        )
        .await;
        c.disconnect().await.ok();
    }
    let (status, _) = common::hub_rest_as(&s, IP, &a.policies[0], "GET", "/devices/dev-a", None).await;
    assert_eq!(status, 200);
    s.shutdown().await;

    // Each hub's telemetry is its own, also as read back from storage after a restart (they once
    // shared one file: hub A read hub B's events, and each overwrote the other's numbers).
    let s = common::hub_server_with(IP, dir.path(), |c| {
        c.hub_hostnames = vec![HUB_A.into(), HUB_B.into()];
    })
    .await;
    let retained = |name: &'static str| {
        let hub = s.services.hubs.named(name).unwrap().hub.clone();
        async move {
            let events = hub.recent_events(None, None, 100).await;
            events
                .iter()
                .map(|m| (m.device_id.clone(), m.body_text().into_owned()))
                .collect::<Vec<_>>()
        }
    };
    let from_a = [HUB_A, IP].map(|n| ("dev-a".to_string(), format!("from a as {n}")));
    assert_eq!(retained(HUB_A).await, from_a);
    assert_eq!(retained(HUB_B).await, [("dev-b".to_string(), "from b".to_string())]);
    s.shutdown().await;

    // Restarted naming hub B alone: it is served (with its devices), hub A is kept unserved.
    let s = common::hub_server_with(IP, dir.path(), |c| c.hub_hostnames = vec![HUB_B.into()]).await;
    assert_eq!(s.services.hubs.iter().count(), 1);
    assert_eq!(s.services.hubs.first().host_name(), HUB_B);
    assert!(common::hub(&s).get_device("dev-b").await.is_ok());
    let stored = dps_server::DataDir::new(dir.path()).load_identity().unwrap();
    assert_eq!(stored.hubs().count(), 2);
    s.shutdown().await;
}
