//! The query language (`POST /devices/query`, `/enrollments/query`, …): any text is parsed
//! without a panic, a refusal names a character inside the text, and a query that parses is
//! evaluated over twins (matches, projections, aggregates) and answered by the hub and the DPS
//! engine as a page or a client error — never a server error.

use dps_proto::model::hub::{Module, Twin};
use dps_proto::query::Query;
use serde_json::json;

use crate::bodies::{client_error, hub_device};
use crate::support::{block_on, engine, hub};

/// See the module docs.
pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Query::parse(text, "devices") {
        Err(e) => assert!(
            e.position <= text.chars().count(),
            "an error position past the text: {e} (length {})",
            text.chars().count()
        ),
        Ok(q) => {
            let docs = [
                json!({"deviceId": "d1", "status": "enabled", "tags": {"a": 1, "b": [1, "x", null], "c": {"d": "e"}},
                       "properties": {"desired": {"$version": 2}, "reported": {"t": 21.5}}}),
                json!({"deviceId": "d2", "moduleId": "m", "tags": {}, "properties": {}}),
                json!(null),
            ];
            let mut aggregator = q.aggregator();
            for doc in &docs {
                if q.matches(doc) {
                    let _ = q.project(doc);
                    aggregator.add(doc);
                }
            }
            let rows = aggregator.finish();
            assert!(
                !q.group_by.is_empty() || rows.len() == 1,
                "one total row without GROUP BY"
            );
        }
    }
    let hub = hub();
    let engine = engine(&hub);
    block_on(async {
        hub_device(&hub).await;
        let module = Module {
            device_id: crate::support::DEVICE.into(),
            module_id: "m".into(),
            ..Default::default()
        };
        hub.put_module(module, None)
            .await
            .expect("the fixture module is created");
        let patch: Twin = serde_json::from_value(json!({"tags": {"a": 1}})).expect("a twin patch");
        hub.patch_twin(crate::support::DEVICE, patch, None)
            .await
            .expect("the fixture twin is patched");
        match hub.query(text, None, 2).await {
            Ok(page) => assert!(
                page.items.len() <= 2 || page.item_type == "raw",
                "a page holds at most its size"
            ),
            Err(dps_hub::RegistryError::Query(_)) => {}
            Err(e) => panic!("a query answered with a server error: {e}"),
        }
        for r in [
            engine.query_enrollments(text, None, Some(2)).await.map(drop),
            engine.query_groups(text, None, Some(2)).await.map(drop),
            engine.query_registrations("grp-1", text, None, Some(2)).await.map(drop),
        ] {
            if let Err(e) = r {
                client_error(&e, "a DPS query");
            }
        }
    });
}
