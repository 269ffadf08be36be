//! Module identities: the registry API, module twins, authentication, sessions, methods and
//! telemetry of modules, and what a device's delete or disable does to its modules.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dps_core::FakeClock;
use dps_hub::{
    AuthError, DeviceIdentity, Hub, HubConfig, MethodError, OutboundKind, RegistryError, MAX_MODULES_PER_DEVICE,
};
use dps_proto::hub_mqtt::HubUsername;
use dps_proto::model::hub::{
    AuthenticationMechanism, Device, Module, SymmetricKey, Twin, TwinProperties, X509Thumbprint,
};
use dps_proto::sas::build_token;
use serde_json::{json, Value};

const HOST: &str = "hub.example.test";
const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
const NOW: u64 = 1_750_000_000;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW as i64, 0).unwrap()
}

fn sas(keys: Option<(&str, &str)>) -> Option<AuthenticationMechanism> {
    Some(AuthenticationMechanism {
        kind: "sas".into(),
        symmetric_key: Some(SymmetricKey {
            primary_key: Some(keys.map_or("", |k| k.0).into()),
            secondary_key: Some(keys.map_or("", |k| k.1).into()),
        }),
        x509_thumbprint: None,
    })
}

async fn hub_with_device(id: &str) -> Hub {
    let hub = Hub::open_with_clock(HubConfig::in_memory(HOST), Arc::new(FakeClock::at(now()))).unwrap();
    let device = Device {
        device_id: id.into(),
        authentication: sas(Some((KEY1, KEY2))),
        ..Default::default()
    };
    hub.put_device(device, None).await.unwrap();
    hub
}

fn module(device: &str, id: &str, keys: Option<(&str, &str)>) -> Module {
    Module {
        device_id: device.into(),
        module_id: id.into(),
        authentication: sas(keys),
        ..Default::default()
    }
}

fn username(device: &str, module: &str) -> HubUsername {
    HubUsername::parse(&format!(
        "{HOST}/{device}/{module}/?api-version=2021-04-12&DeviceClientType=test"
    ))
    .unwrap()
}

fn module_token(device: &str, module: &str, key: &str) -> String {
    build_token(
        &format!("{HOST}/devices/{device}/modules/{module}"),
        key,
        NOW + 3600,
        None,
    )
    .unwrap()
}

async fn login(hub: &Hub, device: &str, module: &str, key: &str) -> Result<DeviceIdentity, AuthError> {
    let token = module_token(device, module, key);
    hub.authenticate(NOW, &username(device, module), Some(token.as_bytes()), None)
        .await
}

fn desired(v: Value) -> Twin {
    Twin {
        properties: Some(TwinProperties {
            desired: Some(v.as_object().unwrap().clone()),
            reported: None,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn modules_are_created_read_listed_updated_and_deleted_with_iot_hubs_rules() {
    let hub = hub_with_device("dev1").await;
    // Empty keys (what the Node SDK sends) are generated, as for devices.
    let created = hub.put_module(module("DEV1", "filter", None), None).await.unwrap();
    assert_eq!(
        (created.device_id.as_str(), created.module_id.as_str()),
        ("dev1", "filter")
    );
    let keys = created.authentication.clone().unwrap().symmetric_key.unwrap();
    assert_eq!(keys.primary_key.as_ref().unwrap().len(), 44);
    assert_ne!(keys.primary_key, keys.secondary_key);
    assert_eq!(created.connection_state.as_deref(), Some("Disconnected"));
    assert_eq!(created.cloud_to_device_message_count, 0);

    // A create over an existing module, and conditions that do not hold, are refused.
    let again = hub.put_module(module("dev1", "filter", None), None).await;
    assert!(
        matches!(again, Err(RegistryError::ModuleAlreadyExists { .. })),
        "{again:?}"
    );
    let stale = hub.put_module(module("dev1", "filter", None), Some("\"old\"")).await;
    assert!(matches!(stale, Err(RegistryError::EtagMismatch { .. })), "{stale:?}");
    let absent = hub.put_module(module("dev1", "other", None), Some("\"x\"")).await;
    assert!(
        matches!(absent, Err(RegistryError::ModuleNotFound { .. })),
        "{absent:?}"
    );
    let orphan = hub.put_module(module("nobody", "m", None), None).await;
    assert!(matches!(orphan, Err(RegistryError::NotFound { .. })), "{orphan:?}");
    let bad = hub.put_module(module("dev1", "a#b", None), None).await;
    assert!(matches!(bad, Err(RegistryError::Invalid(m)) if m.contains("'#'")));

    // An update with the etag changes the keys and the etag, not the generation.
    let mut update = module("dev1", "filter", Some((KEY1, KEY2)));
    update.managed_by = Some("IotEdge".into());
    let etag = format!("\"{}\"", created.etag.clone().unwrap());
    let updated = hub.put_module(update, Some(&etag)).await.unwrap();
    assert_eq!(updated.generation_id, created.generation_id);
    assert_ne!(updated.etag, created.etag);
    assert_eq!(updated.managed_by.as_deref(), Some("IotEdge"));
    let got = hub.get_module("dev1", "FILTER").await.unwrap();
    assert_eq!(
        got.authentication
            .unwrap()
            .symmetric_key
            .unwrap()
            .primary_key
            .as_deref(),
        Some(KEY1)
    );

    hub.put_module(module("dev1", "alpha", None), None).await.unwrap();
    let listed: Vec<String> = hub
        .list_modules("dev1")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.module_id)
        .collect();
    assert_eq!(listed, ["alpha", "filter"]);
    assert!(matches!(
        hub.list_modules("nobody").await,
        Err(RegistryError::NotFound { .. })
    ));
    // Modules are not devices.
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 1);
    assert_eq!(hub.list_devices(None, 0).await.unwrap().len(), 1);

    let stale = hub.delete_module("dev1", "alpha", Some("\"old\"")).await;
    assert!(matches!(stale, Err(RegistryError::EtagMismatch { .. })));
    hub.delete_module("dev1", "alpha", Some("*")).await.unwrap();
    assert!(matches!(
        hub.get_module("dev1", "alpha").await,
        Err(RegistryError::ModuleNotFound { .. })
    ));
    assert!(matches!(
        hub.delete_module("dev1", "alpha", None).await,
        Err(RegistryError::ModuleNotFound { .. })
    ));
    // A device id that spells a module's key names no device.
    assert!(matches!(
        hub.get_device("dev1/modules/filter").await,
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_device_has_a_bounded_number_of_modules() {
    let hub = hub_with_device("dev1").await;
    for i in 0..MAX_MODULES_PER_DEVICE {
        hub.put_module(module("dev1", &format!("m{i}"), None), None)
            .await
            .unwrap();
    }
    let over = hub.put_module(module("dev1", "one-more", None), None).await;
    assert!(
        matches!(over, Err(RegistryError::TooManyModules { limit, .. }) if limit == MAX_MODULES_PER_DEVICE),
        "{over:?}"
    );
    // Updating an existing one is not a new module.
    hub.put_module(module("dev1", "m0", None), Some("*")).await.unwrap();
}

#[tokio::test]
async fn module_twins_are_their_own_and_reach_the_module_session() {
    let hub = hub_with_device("dev1").await;
    hub.put_module(module("dev1", "filter", Some((KEY1, KEY2))), None)
        .await
        .unwrap();
    let twin = hub.get_module_twin("dev1", "filter").await.unwrap();
    assert_eq!(twin.module_id.as_deref(), Some("filter"));
    assert_eq!(twin.device_id, "dev1");
    assert_eq!(twin.status, None, "a module has no status");
    let wire = serde_json::to_value(&twin).unwrap();
    assert_eq!(
        wire["moduleId"], "filter",
        "the Node SDK patches module twins by this field"
    );

    let identity = login(&hub, "dev1", "filter", KEY1).await.unwrap();
    assert_eq!(identity.module_id(), Some("filter"));
    let (session, mut rx) = hub.open_session(identity).await.unwrap();
    assert_eq!(session.subscribe("$iothub/twin/PATCH/properties/desired/#", 0), Some(0));
    assert_eq!(session.subscribe("devices/dev1/modules/filter/inputs/#", 1), Some(1));
    assert_eq!(
        session.subscribe("devices/dev1/modules/filter/#", 1),
        Some(1),
        "the C# SDK's filter"
    );
    assert_eq!(
        session.subscribe("devices/dev1/messages/devicebound/#", 1),
        None,
        "modules get no C2D"
    );

    let patched = hub
        .patch_module_twin("dev1", "filter", desired(json!({"threshold": 7})), Some("*"))
        .await
        .unwrap();
    assert_eq!(patched.module_id.as_deref(), Some("filter"));
    let push = rx.try_recv().unwrap();
    assert!(matches!(push.kind, OutboundKind::DesiredPatch { version: 2 }));
    assert_eq!(
        serde_json::from_slice::<Value>(&push.payload).unwrap(),
        json!({"threshold": 7, "$version": 2})
    );
    // The device's twin is untouched.
    let device_twin = hub.get_twin("dev1").await.unwrap();
    assert_eq!(device_twin.properties.unwrap().desired.unwrap().get("threshold"), None);
    assert_eq!(device_twin.module_id, None);

    // Reported properties from the module land in the module's twin.
    let replies = session
        .handle_publish(
            now(),
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            br#"{"temp": 21}"#,
        )
        .await
        .unwrap();
    assert!(matches!(
        replies[0].kind,
        OutboundKind::TwinResponse { status: 204, .. }
    ));
    let twin = hub.get_module_twin("dev1", "filter").await.unwrap();
    assert_eq!(twin.properties.unwrap().reported.unwrap()["temp"], 21);

    let replaced = hub
        .replace_module_twin("dev1", "filter", desired(json!({"mode": "x"})), None)
        .await
        .unwrap();
    assert_eq!(replaced.properties.unwrap().desired.unwrap().get("threshold"), None);
    assert!(matches!(
        hub.get_module_twin("dev1", "nope").await,
        Err(RegistryError::ModuleNotFound { .. })
    ));
}

#[tokio::test]
async fn modules_authenticate_with_their_own_credentials() {
    let hub = hub_with_device("dev1").await;
    let other = ("MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=", KEY2);
    hub.put_module(module("dev1", "filter", Some(other)), None)
        .await
        .unwrap();
    login(&hub, "dev1", "filter", other.0).await.unwrap();
    // The device's key does not open its module.
    let wrong = login(&hub, "dev1", "filter", KEY1).await.unwrap_err();
    assert!(wrong.to_string().contains("wrong key"), "{wrong}");
    // A device token (audience without the module) is not a module token.
    let device_token = build_token(&format!("{HOST}/devices/dev1"), other.0, NOW + 60, None).unwrap();
    let e = hub
        .authenticate(NOW, &username("dev1", "filter"), Some(device_token.as_bytes()), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("wrong SAS audience"), "{e}");
    let e = login(&hub, "dev1", "ghost", other.0).await.unwrap_err();
    assert!(e.to_string().contains("unknown module 'ghost'"), "{e}");

    // X.509 modules pin their thumbprint.
    let tp = "0123456789ABCDEF0123456789ABCDEF01234567";
    let x509 = Module {
        authentication: Some(AuthenticationMechanism {
            kind: "selfSigned".into(),
            symmetric_key: None,
            x509_thumbprint: Some(X509Thumbprint {
                primary_thumbprint: Some(tp.into()),
                secondary_thumbprint: None,
            }),
        }),
        ..module("dev1", "cam", None)
    };
    hub.put_module(x509, None).await.unwrap();
    let id = hub
        .authenticate(
            NOW,
            &username("dev1", "cam"),
            None,
            Some(dps_hub::ClientCertificate::with_thumbprints(tp.to_lowercase(), "00")),
        )
        .await
        .unwrap();
    assert_eq!(id.client_path(), "dev1/modules/cam");

    // A disabled device's modules are refused, and their connections end.
    let (session, mut rx) = hub
        .open_session(login(&hub, "dev1", "filter", other.0).await.unwrap())
        .await
        .unwrap();
    let mut device = hub.get_device("dev1").await.unwrap();
    device.status = Some("disabled".into());
    hub.put_device(device, Some("*")).await.unwrap();
    assert!(!session.is_current());
    assert!(rx.recv().await.is_none(), "the module's channel closes");
    assert!(matches!(
        login(&hub, "dev1", "filter", other.0).await,
        Err(AuthError::DeviceDisabled { .. })
    ));
}

#[tokio::test]
async fn modules_answer_methods_and_send_telemetry_as_themselves() {
    let hub = hub_with_device("dev1").await;
    hub.put_module(module("dev1", "filter", Some((KEY1, KEY2))), None)
        .await
        .unwrap();
    let (session, mut rx) = hub
        .open_session(login(&hub, "dev1", "filter", KEY1).await.unwrap())
        .await
        .unwrap();
    assert_eq!(session.subscribe("$iothub/methods/POST/#", 0), Some(0));

    // The device itself is not connected: a call to it is not one to its module.
    let device_call = hub
        .invoke_method("dev1", "reset", json!({}), Duration::from_secs(1))
        .await;
    assert!(
        matches!(device_call, Err(MethodError::DeviceNotOnline { .. })),
        "{device_call:?}"
    );

    let call = {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.invoke_method_on(
                "dev1",
                Some("filter"),
                "reset",
                json!({"hard": true}),
                Duration::from_secs(5),
            )
            .await
        })
    };
    let request = rx.recv().await.unwrap();
    let OutboundKind::MethodRequest { name, rid } = &request.kind else {
        panic!("{request:?}")
    };
    assert_eq!(name, "reset");
    session
        .handle_publish(now(), &format!("$iothub/methods/res/200/?$rid={rid}"), br#"{"ok":1}"#)
        .await
        .unwrap();
    let answer = call.await.unwrap().unwrap();
    assert_eq!((answer.status, answer.payload), (200, json!({"ok": 1})));
    let missing = hub
        .invoke_method_on("dev1", Some("ghost"), "reset", json!(null), Duration::from_secs(1))
        .await;
    assert!(
        matches!(missing, Err(MethodError::ModuleNotFound { .. })),
        "{missing:?}"
    );

    // Telemetry on the module's topic, stamped with the module.
    session
        .handle_publish(
            now(),
            "devices/dev1/modules/filter/messages/events/%24.on=out1&k=v",
            b"{}",
        )
        .await
        .unwrap();
    let stored = hub.recent_events(Some("dev1"), None, 1).await;
    let m = &stored[0];
    assert_eq!(m.system_property("iothub-connection-module-id"), Some("filter"));
    assert!(m
        .system_property("iothub-connection-auth-method")
        .unwrap()
        .contains(r#""scope":"module""#));
    assert_eq!(m.to_monitor_event()["event"]["module"], "filter");
    // Another identity's topic ends the connection.
    assert!(session
        .handle_publish(now(), "devices/dev1/messages/events/", b"{}")
        .await
        .is_err());
}

#[tokio::test]
async fn deleting_a_device_deletes_its_modules_and_ends_their_sessions() {
    let hub = hub_with_device("dev1").await;
    hub.put_module(module("dev1", "filter", Some((KEY1, KEY2))), None)
        .await
        .unwrap();
    hub.put_module(module("dev1", "idle", None), None).await.unwrap();
    let (session, _rx) = hub
        .open_session(login(&hub, "dev1", "filter", KEY1).await.unwrap())
        .await
        .unwrap();
    assert!(session.is_current());
    hub.delete_device("dev1", None).await.unwrap();
    assert!(!session.is_current());
    // Re-creating the device does not bring its modules back.
    hub.put_device(
        Device {
            device_id: "dev1".into(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert!(hub.list_modules("dev1").await.unwrap().is_empty());
    assert!(matches!(
        hub.get_module("dev1", "filter").await,
        Err(RegistryError::ModuleNotFound { .. })
    ));
    assert!(login(&hub, "dev1", "filter", KEY1).await.is_err());
}
