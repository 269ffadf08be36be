//! The embedded hub as a linked hub across restarts: linked on first start, and relinked under
//! its new name (with its settings) when `--hub-hostname` changes, so that devices keep being
//! assigned to a name the hub answers to; its devices stay its devices (not migrated, their
//! twins kept), and it keeps answering to its former name.

use crate::common;
use dps_proto::model::service::LinkedHubDescription;

const IP: &str = "127.0.38.31";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_embedded_hub_stays_linked_with_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::server(IP, dir.path()).await;
    let engine = s.services.engine.clone();
    let names = |e: &dps_core::Engine| e.linked_hubs().into_iter().map(|h| h.host_name).collect::<Vec<_>>();
    assert_eq!(names(&engine), [IP]);
    let first = common::register_through_engine(&s, "dev-1").await;
    assert_eq!(first.assigned_hub.as_deref(), Some(IP));
    let hub = common::hub(&s).clone();
    let patch = serde_json::from_value(serde_json::json!({"properties": {"desired": {"kept": 1}}})).unwrap();
    hub.patch_twin("dev-1", patch, None).await.unwrap();
    let generation = hub.get_device("dev-1").await.unwrap().generation_id;
    engine
        .put_linked_hub(
            IP,
            LinkedHubDescription {
                allocation_weight: Some(7),
                location: Some("westeurope".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.shutdown().await;

    // Restarted on the same data (dev-1 stays enrolled) with the hub renamed.
    let mut c = dps_server::ServerConfig::defaults();
    c.data_dir = dir.path().to_path_buf();
    c.hostnames = vec![IP.to_string()];
    c.bind = IP.parse().unwrap();
    c.hub_hostnames = vec!["hub.renamed.test".into()];
    let s = dps_server::start(c).await.expect("the server restarts");
    let engine = s.services.engine.clone();
    assert_eq!(names(&engine), ["hub.renamed.test"]);
    let hub = &engine.linked_hubs()[0];
    assert_eq!(
        (hub.allocation_weight, hub.location.as_deref()),
        (7, Some("westeurope"))
    );
    let listed = engine.list_linked_hubs().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0].connection_string.starts_with("HostName=hub.renamed.test;"),
        "{listed:?}"
    );

    // The device registers again: to the hub under its new name, as the same device (not
    // migrated from the hub to itself, its twin kept).
    let again = common::register_through_engine(&s, "dev-1").await;
    assert_eq!(again.assigned_hub.as_deref(), Some("hub.renamed.test"));
    assert_eq!(again.substatus, first.substatus, "{again:?}");
    let hub = common::hub(&s).clone();
    assert_eq!(hub.get_device("dev-1").await.unwrap().generation_id, generation);
    let twin = hub.get_twin("dev-1").await.unwrap();
    assert_eq!(twin.properties.unwrap().desired.unwrap()["kept"], 1);
    // It connects by the new name, and by the former one (a device not yet re-registered).
    for name in ["hub.renamed.test", IP] {
        common::hub_mqtt_to(&s, name, name, "dev-1")
            .await
            .unwrap_or_else(|e| panic!("connecting as {name}: {e}"));
    }
    s.shutdown().await;
}
