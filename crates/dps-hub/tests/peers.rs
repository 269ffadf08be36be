//! Two nodes serving one hub (decision 0031): two `Hub`s on one store, each told of the other's
//! writes as the server tells it ([`Hub::peer_changed`]). A device connected to one node gets
//! the desired patch made through the other, and its session ends when the other node disables
//! or deletes it; records the other node changed are read again, not served stale.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dps_core::SystemClock;
use dps_hub::store::{device_key, MemoryHubStore};
use dps_hub::{Hub, HubConfig, Outbound, OutboundKind, PeerChange};
use serde_json::json;
use support::{desired_patch, login, sas_device, HOST, KEY1, KEY2};
use tokio::sync::mpsc::Receiver;

async fn two_nodes() -> (Hub, Hub) {
    let store = Arc::new(MemoryHubStore::new());
    let open = || Hub::open_with_store(HubConfig::in_memory(HOST), store.clone(), Arc::new(SystemClock));
    (open().await.unwrap(), open().await.unwrap())
}

async fn next(rx: &mut Receiver<Outbound>) -> Option<Outbound> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("within 5 s")
}

fn changed(key: &str) -> PeerChange {
    PeerChange::Record { key: key.to_string() }
}

#[tokio::test]
async fn a_device_on_one_node_hears_what_the_other_node_changes() {
    let (a, b) = two_nodes().await;
    a.put_device(sas_device("dev-1", Some((KEY1, KEY2))), None)
        .await
        .unwrap();
    let (session, mut rx) = b.open_session(login(&b, "dev-1").await).await.unwrap();
    assert_eq!(session.subscribe("$iothub/twin/PATCH/properties/desired/#", 0), Some(0));

    // Two patches through node A before node B hears of either: one patch with both, at the
    // newest version, as the SDKs apply them.
    a.patch_twin("dev-1", desired_patch(json!({"fan": "on", "temp": 20})), None)
        .await
        .unwrap();
    a.patch_twin("dev-1", desired_patch(json!({"temp": null, "mode": "eco"})), None)
        .await
        .unwrap();
    b.peer_changed(changed(&device_key("dev-1"))).await;
    let patch = next(&mut rx).await.expect("a desired patch");
    assert_eq!(patch.kind, OutboundKind::DesiredPatch { version: 3 });
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&patch.payload).unwrap(),
        json!({"fan": "on", "mode": "eco", "$version": 3})
    );
    // Node B reads the twin as A wrote it, not the one it cached.
    assert_eq!(support::desired_of(&b.get_twin("dev-1").await.unwrap())["mode"], "eco");
    // A notice for a record that did not change, or one the node does not hold, does nothing.
    b.peer_changed(changed(&device_key("dev-1"))).await;
    b.peer_changed(changed(&device_key("not-held"))).await;
    assert!(rx.try_recv().is_err());

    // Disabled through node A: node B ends the session.
    let mut disabled = a.get_device("dev-1").await.unwrap();
    disabled.status = Some("disabled".into());
    a.put_device(disabled, Some("*")).await.unwrap();
    b.peer_changed(changed(&device_key("dev-1"))).await;
    assert_eq!(next(&mut rx).await, None, "the session ended");
    assert!(!session.is_current());
    assert_eq!(b.get_device("dev-1").await.unwrap().status.as_deref(), Some("disabled"));
}

#[tokio::test]
async fn a_device_deleted_or_re_created_on_one_node_is_disconnected_on_the_other() {
    let (a, b) = two_nodes().await;
    for id in ["dev-1", "dev-2"] {
        a.put_device(sas_device(id, Some((KEY1, KEY2))), None).await.unwrap();
    }
    let (_one, mut rx1) = b.open_session(login(&b, "dev-1").await).await.unwrap();
    let (_two, mut rx2) = b.open_session(login(&b, "dev-2").await).await.unwrap();
    a.delete_device("dev-1", None).await.unwrap();
    a.delete_device("dev-2", None).await.unwrap();
    a.put_device(sas_device("dev-2", Some((KEY1, KEY2))), None)
        .await
        .unwrap();
    b.peer_changed(changed(&device_key("dev-1"))).await;
    b.peer_changed(changed(&device_key("dev-2"))).await;
    assert_eq!(next(&mut rx1).await, None, "deleted");
    assert_eq!(next(&mut rx2).await, None, "re-created: another identity");
    assert!(b.get_device("dev-1").await.is_err());

    // After a resync, what the other node changed meanwhile is read again.
    let (_again, _rx) = b.open_session(login(&b, "dev-2").await).await.unwrap();
    a.patch_twin("dev-2", desired_patch(json!({"x": 1})), None)
        .await
        .unwrap();
    b.peer_changed(PeerChange::Resync).await;
    assert_eq!(support::desired_of(&b.get_twin("dev-2").await.unwrap())["x"], 1);
}
