//! The hub holds a bounded number of devices in memory (decision 0014): a store with many more
//! devices than the bound still answers for every one of them, while connected devices and queued
//! cloud-to-device messages are never dropped.

mod support;

use std::sync::Arc;

use dps_core::SystemClock;
use dps_hub::store::MemoryHubStore;
use dps_hub::{Hub, HubConfig, RegistryError};
use serde_json::json;
use support::{desired_patch, login, sas_device, HOST, KEY1, KEY2};

/// Far below [`DEVICES`]: one shard, so the bound is exact.
const BOUND: usize = 16;
const DEVICES: usize = 200;

fn id(i: usize) -> String {
    format!("dev-{i:03}")
}

/// A hub on a store already holding [`DEVICES`] devices, reopened so that it holds none of them.
async fn crowded_hub() -> Hub {
    let store = Arc::new(MemoryHubStore::new());
    let config = HubConfig {
        device_cache: BOUND,
        ..HubConfig::in_memory(HOST)
    };
    let writer = Hub::open_with_store(config.clone(), store.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    for i in 0..DEVICES {
        writer
            .put_device(sas_device(&id(i), Some((KEY1, KEY2))), None)
            .await
            .unwrap();
    }
    assert!(
        writer.resident_devices() <= BOUND,
        "{} held while creating",
        writer.resident_devices()
    );
    let hub = Hub::open_with_store(config, store, Arc::new(SystemClock))
        .await
        .unwrap();
    assert_eq!(hub.resident_devices(), 0, "opening a hub reads no device");
    hub
}

/// Reads every device once (device, twin, authentication), checking each.
async fn read_all(hub: &Hub) {
    for i in 0..DEVICES {
        let d = hub.get_device(&id(i)).await.unwrap();
        assert_eq!(d.device_id, id(i));
        assert_eq!(hub.get_twin(&id(i).to_uppercase()).await.unwrap().device_id, id(i));
        assert_eq!(login(hub, &id(i)).await.device_id(), id(i));
    }
}

#[tokio::test]
async fn every_device_answers_while_memory_stays_bounded() {
    let hub = crowded_hub().await;
    read_all(&hub).await;
    assert!(hub.resident_devices() <= BOUND, "{} held", hub.resident_devices());
    let stats = hub.statistics().await.unwrap();
    assert_eq!(
        (stats.total_device_count, stats.enabled_device_count),
        (DEVICES as u64, DEVICES as u64)
    );
    assert_eq!(stats.connected_device_count, 0);
    assert_eq!(hub.list_devices(None, 0).await.unwrap().len(), DEVICES);
    let page = hub.list_devices(Some(&id(189)), 5).await.unwrap();
    let ids: Vec<_> = page.iter().map(|d| d.device_id.clone()).collect();
    assert_eq!(ids, (190..195).map(id).collect::<Vec<_>>());
    assert!(hub.resident_devices() <= BOUND, "a listing fills no cache");
    // Absent devices are looked up in the store every time and never held.
    assert!(matches!(
        hub.get_device("ghost").await,
        Err(RegistryError::NotFound { .. })
    ));
    assert!(hub.resident_devices() <= BOUND);
}

#[tokio::test]
async fn etags_and_versions_survive_eviction() {
    let hub = crowded_hub().await;
    let before = hub.get_twin(&id(7)).await.unwrap();
    let device_etag = hub.get_device(&id(7)).await.unwrap().etag;
    read_all(&hub).await; // evicts dev-007
    let after = hub
        .patch_twin(&id(7), desired_patch(json!({"fan": "on"})), before.etag.as_deref())
        .await
        .expect("the etag read before the eviction still matches");
    assert_eq!(after.version, before.version.map(|v| v + 1));
    read_all(&hub).await;
    let stale = hub
        .patch_twin(&id(7), desired_patch(json!({"fan": "off"})), before.etag.as_deref())
        .await;
    assert!(matches!(stale, Err(RegistryError::EtagMismatch { .. })), "{stale:?}");
    assert_eq!(hub.get_device(&id(7)).await.unwrap().etag, device_etag);
    assert_eq!(hub.get_twin(&id(7)).await.unwrap(), after);
}

#[tokio::test]
async fn a_connected_device_is_never_evicted() {
    let hub = crowded_hub().await;
    let (session, mut rx) = hub.open_session(login(&hub, &id(0)).await).await.unwrap();
    assert_eq!(session.subscribe("$iothub/twin/PATCH/properties/desired/#", 0), Some(0));
    read_all(&hub).await;
    read_all(&hub).await;
    assert!(session.is_current(), "the session outlived the eviction pressure");
    assert!(hub.resident_devices() <= BOUND + 1, "{} held", hub.resident_devices());
    assert_eq!(hub.statistics().await.unwrap().connected_device_count, 1);
    assert_eq!(
        hub.get_device(&id(0)).await.unwrap().connection_state.as_deref(),
        Some("Connected")
    );
    // A desired change reaches it: the registry and the session still share one slot.
    hub.patch_twin(&id(0), desired_patch(json!({"a": 1})), None)
        .await
        .unwrap();
    let out = rx.try_recv().expect("desired patch delivered");
    assert_eq!(out.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    drop(session);
    assert_eq!(hub.statistics().await.unwrap().connected_device_count, 0);
}

#[tokio::test]
async fn queued_cloud_to_device_messages_survive_eviction_pressure() {
    let hub = crowded_hub().await;
    hub.send_c2d(&id(3), &b"kept"[..], vec![]).await.unwrap();
    read_all(&hub).await;
    read_all(&hub).await;
    assert!(hub.resident_devices() <= BOUND + 1, "{} held", hub.resident_devices());
    assert_eq!(hub.get_device(&id(3)).await.unwrap().cloud_to_device_message_count, 1);
    let (session, mut rx) = hub.open_session(login(&hub, &id(3)).await).await.unwrap();
    session.subscribe(&format!("devices/{}/messages/devicebound/#", id(3)), 1);
    assert_eq!(&rx.try_recv().expect("the queued message").payload[..], b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_update_is_lost_to_concurrent_eviction() {
    let hub = crowded_hub().await;
    const WRITERS: usize = 4;
    const PATCHES: usize = 25;
    let before = hub.get_twin(&id(1)).await.unwrap().version.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let writer = hub.clone();
        tasks.push(tokio::spawn(async move {
            for p in 0..PATCHES {
                let patch = desired_patch(json!({ format!("w{w}"): p }));
                writer.patch_twin(&id(1 + (p % 2)), patch, None).await.unwrap();
            }
        }));
        // Readers sweep the whole store meanwhile, evicting whatever is idle.
        let reader = hub.clone();
        tasks.push(tokio::spawn(async move { read_all(&reader).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v1 = hub.get_twin(&id(1)).await.unwrap().version.unwrap();
    let v2 = hub.get_twin(&id(2)).await.unwrap().version.unwrap();
    assert_eq!(
        (v1 - before) + (v2 - before),
        (WRITERS * PATCHES) as i64,
        "every patch counted once"
    );
    assert!(hub.resident_devices() <= BOUND, "{} held", hub.resident_devices());
}
