//! The embedded hub as a linked hub across restarts: linked on first start, and relinked under
//! its new name (with its settings) when `--hub-hostname` changes, so that devices keep being
//! assigned to a name the hub answers to.

mod common;

use dps_core::{Credential, DeviceRequest};
use dps_proto::model::device::DeviceRegistration;
use dps_proto::model::service::{LinkedHubDescription, RegistrationStatus};

const IP: &str = "127.0.38.31";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_embedded_hub_stays_linked_with_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::server(IP, dir.path()).await;
    let engine = s.services.engine.clone();
    let names = |e: &dps_core::Engine| e.linked_hubs().into_iter().map(|h| h.host_name).collect::<Vec<_>>();
    assert_eq!(names(&engine), [IP]);
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
    c.hub_hostname = Some("hub.renamed.test".into());
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

    // A device registers to the hub under its new name.
    let req = DeviceRequest {
        id_scope: s.services.identity.id_scope.clone(),
        registration_id: "dev-1".into(),
        credential: Credential::Sas(common::dps_sas(&s, "dev-1", common::KEY)),
        api_version: None,
        source: None,
    };
    let now = chrono::Utc::now();
    let op = engine
        .register(now, &req, &DeviceRegistration::default())
        .await
        .unwrap();
    let id = op.operation().unwrap().operation_id.clone();
    let done = engine.operation_status(now, &req, &id).await.unwrap().body;
    assert_eq!(done.status, RegistrationStatus::Assigned, "{done:?}");
    assert_eq!(
        done.registration_state.assigned_hub.as_deref(),
        Some("hub.renamed.test")
    );
    s.shutdown().await;
}
