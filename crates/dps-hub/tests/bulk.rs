//! Bulk registry operations (`POST /devices`): whole-request refusals, each import mode, per-item
//! errors with IoT Hub's names, twin sections applied with the identity.

use dps_hub::{Hub, HubConfig, RegistryError, BULK_MAX};
use dps_proto::model::hub::{ExportImportDevice, TwinProperties};
use serde_json::json;

fn item(id: &str, mode: Option<&str>) -> ExportImportDevice {
    ExportImportDevice {
        id: id.into(),
        import_mode: mode.map(str::to_string),
        ..Default::default()
    }
}

fn hub() -> Hub {
    Hub::open(HubConfig::in_memory("hub.example.test")).unwrap()
}

#[tokio::test]
async fn whole_requests_that_are_refused_change_nothing() {
    let hub = hub();
    assert!(matches!(
        hub.bulk_registry(vec![]).await,
        Err(RegistryError::Invalid(_))
    ));
    let many: Vec<_> = (0..=BULK_MAX).map(|i| item(&format!("d{i}"), Some("create"))).collect();
    let e = hub.bulk_registry(many).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::TooManyDevices { count: 101, limit: 100 }),
        "{e}"
    );
    assert_eq!(e.code(), 413_002);
    let twice = vec![item("a", Some("create")), item("b", None), item("A", Some("delete"))];
    let r = hub.bulk_registry(twice).await.unwrap();
    assert!(!r.is_successful);
    assert_eq!(
        (r.errors[0].device_id.as_str(), r.errors[0].error_code.as_str()),
        ("A", "DeviceDefinedMultipleTimes")
    );
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 0);
    // A device and its module are two identities.
    let mut module = item("a", Some("create"));
    module.module_id = Some("m".into());
    assert!(
        hub.bulk_registry(vec![item("a", Some("create")), module])
            .await
            .unwrap()
            .is_successful
    );
}

#[tokio::test]
async fn each_mode_does_what_iot_hub_does_and_failures_are_named() {
    let hub = hub();
    let mut tagged = item("d1", Some("create"));
    tagged.tags = Some(json!({"site": "lab"}).as_object().unwrap().clone());
    tagged.properties = Some(TwinProperties {
        desired: Some(json!({"rate": 5}).as_object().unwrap().clone()),
        reported: None,
    });
    let r = hub
        .bulk_registry(vec![tagged, item("d2", None), item("d3", Some("Create"))])
        .await
        .unwrap();
    assert!(r.is_successful && r.errors.is_empty(), "{r:?}");
    let twin = hub.get_twin("d1").await.unwrap();
    assert_eq!(twin.tags.unwrap()["site"], "lab");
    assert_eq!(twin.properties.unwrap().desired.unwrap()["rate"], 5);
    assert_eq!(hub.get_device("d2").await.unwrap().authentication.unwrap().kind, "sas");

    let d1 = hub.get_device("d1").await.unwrap();
    let mut disable = item("d1", Some("UpdateIfMatchETag"));
    disable.e_tag = d1.etag.clone();
    disable.status = Some("disabled".into());
    let mut stale = item("d2", Some("updateIfMatchETag"));
    stale.e_tag = Some("stale".into());
    let r = hub
        .bulk_registry(vec![
            disable,
            stale,
            item("d3", Some("create")),
            item("ghost", Some("Update")),
            item("ghost", Some("Delete")).tap_module("m"),
            item("d2", Some("bogus")).tap_module("x"),
        ])
        .await
        .unwrap();
    assert!(!r.is_successful);
    let named: Vec<(String, String)> = r
        .errors
        .iter()
        .map(|e| (e.device_id.clone(), e.error_code.clone()))
        .collect();
    assert_eq!(
        named,
        [
            ("d2".into(), "PreconditionFailed".into()),
            ("d3".into(), "DeviceAlreadyExists".into()),
            ("ghost".into(), "DeviceNotFound".into()),
            ("ghost".into(), "ModuleNotFound".into()),
            ("d2".into(), "ArgumentInvalid".into()),
        ]
    );
    assert!(
        r.errors[4].error_status.contains("importMode 'bogus'"),
        "{:?}",
        r.errors[4]
    );
    assert_eq!(
        hub.get_device("d1").await.unwrap().status.as_deref(),
        Some("disabled"),
        "the good item applied"
    );

    // Twin-only updates replace the sections given; deletes take the devices away.
    let mut twin_only = item("d1", Some("updateTwin"));
    twin_only.tags = Some(json!({"site": "field"}).as_object().unwrap().clone());
    let r = hub
        .bulk_registry(vec![twin_only, item("d2", Some("delete")), item("d3", Some("Delete"))])
        .await
        .unwrap();
    assert!(r.is_successful, "{r:?}");
    let twin = hub.get_twin("d1").await.unwrap();
    assert_eq!(
        twin.tags.unwrap(),
        json!({"site": "field"}).as_object().unwrap().clone()
    );
    assert_eq!(
        twin.properties.unwrap().desired.unwrap()["rate"],
        5,
        "desired was not given: kept"
    );
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 1);
}

trait TapModule {
    fn tap_module(self, m: &str) -> Self;
}

impl TapModule for ExportImportDevice {
    fn tap_module(mut self, m: &str) -> Self {
        self.module_id = Some(m.into());
        self
    }
}

#[tokio::test]
async fn an_export_imports_back_into_the_same_identities_and_twins() {
    let source = hub();
    let mut d1 = item("d1", Some("create"));
    d1.tags = Some(json!({"site": "lab"}).as_object().unwrap().clone());
    d1.properties = Some(TwinProperties {
        desired: Some(json!({"rate": 5, "cfg": {"a": "b"}}).as_object().unwrap().clone()),
        reported: None,
    });
    let mut d2 = item("D2", Some("create"));
    d2.status = Some("disabled".into());
    let mut module = item("d1", Some("create")).tap_module("agent");
    module.tags = Some(json!({"kind": "sidecar"}).as_object().unwrap().clone());
    assert!(source.bulk_registry(vec![d1, d2, module]).await.unwrap().is_successful);

    // Page by page (one device a page, its modules with it).
    let (mut lines, mut after) = (Vec::new(), None::<String>);
    loop {
        let (page, next) = source.export_page(after.as_deref(), 1, false).await.unwrap();
        lines.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(
        lines
            .iter()
            .map(|l| (l.id.as_str(), l.module_id.as_deref()))
            .collect::<Vec<_>>(),
        [("d1", None), ("d1", Some("agent")), ("D2", None)]
    );
    // The lines are JSON as `devices.txt` holds them, and import back as they are.
    let text: Vec<String> = lines.iter().map(|l| serde_json::to_string(l).unwrap()).collect();
    let again: Vec<ExportImportDevice> = text.iter().map(|t| serde_json::from_str(t).unwrap()).collect();
    let target = hub();
    let result = target.bulk_registry(again).await.unwrap();
    assert!(result.is_successful, "{result:?}");
    for id in ["d1", "D2"] {
        let (a, b) = (
            source.get_device(id).await.unwrap(),
            target.get_device(id).await.unwrap(),
        );
        assert_eq!((a.status, a.authentication), (b.status, b.authentication), "{id}");
    }
    let twin = target.get_twin("d1").await.unwrap();
    assert_eq!(twin.tags.unwrap()["site"], "lab");
    assert_eq!(twin.properties.unwrap().desired.unwrap()["cfg"], json!({"a": "b"}));
    let m = target.get_module("d1", "agent").await.unwrap();
    assert_eq!(
        m.authentication,
        source.get_module("d1", "agent").await.unwrap().authentication
    );
    assert_eq!(
        target.get_module_twin("d1", "agent").await.unwrap().tags.unwrap()["kind"],
        "sidecar"
    );
    // Without keys, the lines carry no authentication.
    let (keyless, _) = source.export_page(None, 10, true).await.unwrap();
    assert!(keyless.iter().all(|l| l.authentication.is_none()));
}
