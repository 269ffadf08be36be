//! `Hub::query`: the IoT Hub query language over twins and module twins, its paging with a
//! condition, what is pushed down to the store, aggregates, and refusals.

use dps_hub::{Hub, HubConfig, QueryPage, RegistryError};
use dps_proto::model::hub::{Device, Module, Twin};
use serde_json::{json, Value};

fn device(id: &str) -> Device {
    Device {
        device_id: id.into(),
        ..Default::default()
    }
}

/// Twelve devices: `site-00` … `site-11`, region `US` for even numbers and `EU` for odd, a
/// reported `temp` of 10 × n, and `probe-a`/`probe-b` with modules.
async fn fleet() -> Hub {
    let hub = Hub::open(HubConfig::in_memory("hub.example.test")).unwrap();
    for n in 0..12 {
        let id = format!("site-{n:02}");
        hub.put_device(device(&id), None).await.unwrap();
        let patch: Twin = serde_json::from_value(json!({
            "tags": {"region": if n % 2 == 0 { "US" } else { "EU" }, "n": n},
        }))
        .unwrap();
        hub.patch_twin(&id, patch, None).await.unwrap();
    }
    for d in ["probe-a", "Probe-B"] {
        hub.put_device(device(d), None).await.unwrap();
        for m in ["sensor", "filter"] {
            let module = Module {
                device_id: d.into(),
                module_id: m.into(),
                ..Default::default()
            };
            hub.put_module(module, None).await.unwrap();
            let patch: Twin = serde_json::from_value(json!({"tags": {"kind": m}})).unwrap();
            hub.patch_module_twin(d, m, patch, None).await.unwrap();
        }
    }
    hub
}

/// Every page of a query, with `page` items per page.
async fn all_pages(hub: &Hub, q: &str, page: usize) -> Vec<QueryPage> {
    let mut pages = Vec::new();
    let mut cont: Option<String> = None;
    loop {
        let p = hub.query(q, cont.as_deref(), page).await.unwrap();
        cont = p.continuation.clone();
        pages.push(p);
        if cont.is_none() {
            return pages;
        }
        assert!(pages.len() < 50, "paging does not end");
    }
}

fn ids(pages: &[QueryPage], field: &str) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p.items.iter())
        .map(|t| t[field].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn where_filters_across_pages_without_losing_or_repeating_twins() {
    let hub = fleet().await;
    let pages = all_pages(&hub, "SELECT * FROM devices WHERE tags.region = 'EU' AND tags.n > 2", 2).await;
    assert_eq!(
        ids(&pages, "deviceId"),
        ["site-03", "site-05", "site-07", "site-09", "site-11"]
    );
    assert!(pages.iter().all(|p| p.items.len() <= 2 && p.item_type == "Twin"));
    // The empty query is every device.
    assert_eq!(ids(&all_pages(&hub, "", 5).await, "deviceId").len(), 14);
    // Nothing matches: one empty page.
    let none = all_pages(&hub, "SELECT * FROM devices WHERE tags.region = 'APAC'", 3).await;
    assert_eq!(none.len(), 1);
    assert!(none[0].items.is_empty());
}

#[tokio::test]
async fn device_ids_are_pushed_down_to_the_store() {
    let hub = fleet().await;
    let q = "SELECT * FROM devices WHERE deviceId IN ['SITE-04', 'probe-b', 'absent', 'site-04'] AND tags.n >= 0";
    assert_eq!(ids(&all_pages(&hub, q, 10).await, "deviceId"), ["site-04"]);
    let q = "SELECT * FROM devices WHERE deviceId IN ['site-04', 'probe-a', 'site-10']";
    let pages = all_pages(&hub, q, 2).await;
    assert_eq!(ids(&pages, "deviceId"), ["probe-a", "site-04", "site-10"]);
    // Tags pinned to strings are read from the tag index; several values merge in key order.
    let q = "SELECT * FROM devices WHERE tags.region IN ['US', 'EU', 'US'] AND tags.n < 4";
    assert_eq!(
        ids(&all_pages(&hub, q, 1).await, "deviceId"),
        ["site-00", "site-01", "site-02", "site-03"]
    );
    let q = "SELECT * FROM devices WHERE tags.n = 3";
    assert_eq!(
        ids(&all_pages(&hub, q, 5).await, "deviceId"),
        ["site-03"],
        "numbers are scanned"
    );
    let q = "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'site-1')";
    assert_eq!(ids(&all_pages(&hub, q, 1).await, "deviceId"), ["site-10", "site-11"]);
    let q = "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'probe')";
    assert_eq!(
        ids(&all_pages(&hub, q, 10).await, "deviceId"),
        ["probe-a"],
        "STARTSWITH is case-sensitive"
    );
}

#[tokio::test]
async fn module_twins_are_queried_from_devices_modules() {
    let hub = fleet().await;
    let pages = all_pages(&hub, "SELECT * FROM devices.modules WHERE tags.kind = 'sensor'", 1).await;
    assert_eq!(ids(&pages, "deviceId"), ["probe-a", "Probe-B"]);
    assert_eq!(ids(&pages, "moduleId"), ["sensor", "sensor"]);
    let q = "Select * from devices.modules where deviceId IN ['Probe-B', 'PROBE-A']";
    // Values compare as written: `PROBE-A` is not the device `probe-a`.
    assert_eq!(ids(&all_pages(&hub, q, 10).await, "moduleId"), ["filter", "sensor"]);
    let q = "SELECT COUNT() AS modules FROM devices.modules";
    assert_eq!(hub.query(q, None, 0).await.unwrap().items, vec![json!({"modules": 4})]);
}

#[tokio::test]
async fn projections_aggregates_and_top() {
    let hub = fleet().await;
    let page = hub
        .query("SELECT DeviceId, tags.n FROM devices WHERE tags.n < 2", None, 0)
        .await
        .unwrap();
    assert_eq!(page.item_type, "Raw");
    assert_eq!(
        page.items,
        vec![
            json!({"deviceId": "site-00", "n": 0}),
            json!({"deviceId": "site-01", "n": 1})
        ]
    );
    let mut groups = hub
        .query(
            "SELECT tags.region AS region, COUNT() AS count FROM devices GROUP BY tags.region",
            None,
            0,
        )
        .await
        .unwrap()
        .items;
    groups.sort_by_key(Value::to_string);
    assert_eq!(
        groups,
        vec![
            json!({"count": 2}),
            json!({"count": 6, "region": "EU"}),
            json!({"count": 6, "region": "US"})
        ]
    );
    let top = hub
        .query("SELECT TOP 3 * FROM devices WHERE tags.region = 'US'", None, 2)
        .await
        .unwrap();
    assert_eq!(top.items.len(), 3);
    assert_eq!(top.continuation, None);
}

#[tokio::test]
async fn bad_queries_are_refused_with_where() {
    let hub = fleet().await;
    let err = |q: &'static str| {
        let hub = hub.clone();
        async move {
            match hub.query(q, None, 0).await {
                Err(RegistryError::Query(e)) => e,
                other => panic!("{q}: {other:?}"),
            }
        }
    };
    let e = err("SELECT * FROM devices WHERE tags.region == 'US'").await;
    assert_eq!(e.position, 41);
    assert_eq!(
        e.to_string(),
        "the query is invalid at character 41: expected a property path, a constant, a function or '(', found '='"
    );
    let e = err("SELECT * FROM things").await;
    assert_eq!(e.position, 14);
    assert!(e.message.contains("'things' is not a collection"), "{e}");
}
