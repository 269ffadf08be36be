//! Registry API and HubRegistry upserts. (Persistence across a reopen is tested where the SQLite
//! hub store lives: dps-store's `tests/hub.rs`.)

mod support;

use dps_core::hub::{DeviceAuth, DeviceProvisioning, HubError, HubRegistry, TwinPolicy};
use dps_hub::{Hub, HubConfig, RegistryError};
use dps_proto::keys::validate_symmetric_key;
use dps_proto::model::hub::{AuthenticationMechanism, Device, Twin, TwinProperties, X509Thumbprint};
use dps_proto::model::service::{DeviceCapabilities, InitialTwin};
use serde_json::{json, Map, Value};
use support::{desired_of, desired_patch, obj, provisioning, sas_device, HOST, KEY1, KEY2};

fn hub() -> Hub {
    Hub::open(HubConfig::in_memory(HOST)).unwrap()
}

#[tokio::test]
async fn device_crud_with_etags() {
    let hub = hub();
    // Create with null keys: the hub generates them.
    let d = hub.put_device(sas_device("Dev-1", None), None).await.unwrap();
    let keys = d.authentication.as_ref().unwrap().symmetric_key.clone().unwrap();
    validate_symmetric_key(keys.primary_key.as_deref().unwrap()).unwrap();
    validate_symmetric_key(keys.secondary_key.as_deref().unwrap()).unwrap();
    assert_ne!(keys.primary_key, keys.secondary_key);
    assert_eq!(d.status.as_deref(), Some("enabled"));
    assert_eq!(d.connection_state.as_deref(), Some("Disconnected"));
    assert_eq!(d.device_id, "Dev-1");
    let gen1 = d.generation_id.clone().unwrap();
    let etag1 = d.etag.clone().unwrap();
    assert!(d.last_activity_time.is_none());
    assert!(d.status_updated_time.is_some());

    // Case-insensitive lookup, same document.
    assert_eq!(hub.get_device("dev-1").await.unwrap(), d);

    // Conditional replace: a stale etag is refused, the current one works.
    let mut upd = sas_device("dev-1", Some((KEY1, KEY2)));
    upd.status = Some("Disabled".into());
    upd.status_reason = Some("maintenance".into());
    assert_eq!(
        hub.put_device(upd.clone(), Some("\"not-the-etag\"")).await.unwrap_err(),
        RegistryError::EtagMismatch {
            device_id: "Dev-1".into()
        }
    );
    let d2 = hub
        .put_device(upd.clone(), Some(&format!("\"{etag1}\"")))
        .await
        .unwrap();
    assert_eq!(d2.status.as_deref(), Some("disabled"));
    assert_eq!(d2.status_reason.as_deref(), Some("maintenance"));
    assert_eq!(d2.generation_id.as_deref(), Some(gen1.as_str()));
    assert_ne!(d2.etag.as_deref(), Some(etag1.as_str()));
    let k2 = d2.authentication.unwrap().symmetric_key.unwrap();
    assert_eq!(k2.primary_key.as_deref(), Some(KEY1));
    // The old etag no longer matches; `*` and absent are unconditional.
    assert!(matches!(
        hub.put_device(upd.clone(), Some(&etag1)).await,
        Err(RegistryError::EtagMismatch { .. })
    ));
    hub.put_device(upd.clone(), Some("*")).await.unwrap();
    // Without If-Match, PUT on an existing device is a create and is refused, as in IoT Hub.
    assert!(matches!(
        hub.put_device(upd.clone(), None).await,
        Err(RegistryError::AlreadyExists { .. })
    ));
    // Keys omitted on update are kept; status omitted is kept.
    let kept = hub.put_device(sas_device("dev-1", None), Some("*")).await.unwrap();
    assert_eq!(
        kept.authentication
            .unwrap()
            .symmetric_key
            .unwrap()
            .primary_key
            .as_deref(),
        Some(KEY1)
    );
    assert_eq!(kept.status.as_deref(), Some("disabled"));

    // If-Match with a real etag on an absent device.
    assert!(matches!(
        hub.put_device(sas_device("ghost", None), Some("\"abc\"")).await,
        Err(RegistryError::NotFound { .. })
    ));
    assert!(matches!(
        hub.get_device("ghost").await,
        Err(dps_hub::RegistryError::NotFound { .. })
    ));

    // Validation.
    for (dev, what) in [
        (sas_device("a/b", None), "invalid character"),
        (sas_device("k", Some(("!!", KEY2))), "primaryKey"),
        (
            Device {
                status: Some("paused".into()),
                ..sas_device("s", None)
            },
            "status",
        ),
        (
            Device {
                authentication: Some(AuthenticationMechanism {
                    kind: "kerberos".into(),
                    symmetric_key: None,
                    x509_thumbprint: None,
                }),
                ..sas_device("t", None)
            },
            "authentication.type",
        ),
        (
            Device {
                authentication: Some(AuthenticationMechanism {
                    kind: "selfSigned".into(),
                    symmetric_key: None,
                    x509_thumbprint: Some(X509Thumbprint {
                        primary_thumbprint: Some("xyz".into()),
                        secondary_thumbprint: None,
                    }),
                }),
                ..sas_device("u", None)
            },
            "primaryThumbprint",
        ),
    ] {
        match hub.put_device(dev, None).await {
            Err(RegistryError::Invalid(msg)) => assert!(msg.contains(what), "{msg}"),
            other => panic!("expected Invalid({what}), got {other:?}"),
        }
    }
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 1);

    // Delete: etag checked, then gone; a re-create gets a new generation.
    let cur = hub.get_device("dev-1").await.unwrap().etag.unwrap();
    assert!(matches!(
        hub.delete_device("dev-1", Some("\"stale\"")).await,
        Err(RegistryError::EtagMismatch { .. })
    ));
    hub.delete_device("DEV-1", Some(&format!("\"{cur}\""))).await.unwrap();
    assert!(matches!(
        hub.get_device("dev-1").await,
        Err(dps_hub::RegistryError::NotFound { .. })
    ));
    assert!(matches!(
        hub.delete_device("dev-1", None).await,
        Err(RegistryError::NotFound { .. })
    ));
    let again = hub.put_device(sas_device("dev-1", None), None).await.unwrap();
    assert_ne!(again.generation_id.unwrap(), gen1);
}

#[tokio::test]
async fn listing_and_query_paging() {
    let hub = hub();
    for id in ["d3", "d1", "D5", "d2", "d4"] {
        hub.put_device(sas_device(id, None), None).await.unwrap();
    }
    let ids: Vec<String> = hub
        .list_devices(None, 3)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(ids, ["d1", "d2", "d3"]);
    assert_eq!(hub.list_devices(None, 0).await.unwrap().len(), 5);

    let mut seen = Vec::new();
    let mut cont = None;
    let mut pages = 0;
    loop {
        let page = hub.query("SELECT * FROM devices", cont.as_deref(), 2).await.unwrap();
        assert_eq!(page.item_type, "Twin");
        pages += 1;
        seen.extend(page.items.into_iter().map(|t| {
            assert_eq!(t["version"], 1);
            assert_eq!(t["authenticationType"], "sas");
            t["deviceId"].as_str().unwrap().to_string()
        }));
        match page.continuation {
            Some(c) => cont = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["d1", "d2", "d3", "d4", "D5"]);
    let stats = hub.statistics().await.unwrap();
    assert_eq!((stats.total_device_count, stats.enabled_device_count), (5, 5));
}

#[tokio::test]
async fn twin_patch_and_replace_bump_versions() {
    let hub = hub();
    hub.put_device(sas_device("dev", None), None).await.unwrap();
    let t0 = hub.get_twin("dev").await.unwrap();
    assert_eq!(t0.version, Some(1));
    assert_eq!(desired_of(&t0)["$version"], 1);
    assert!(desired_of(&t0)["$metadata"]["$lastUpdated"].is_string());
    assert_eq!(
        t0.properties.as_ref().unwrap().reported.as_ref().unwrap()["$version"],
        1
    );
    assert_eq!(t0.connection_state.as_deref(), Some("Disconnected"));

    let mut patch = desired_patch(json!({"a": 1, "nested": {"x": 1, "y": 2}}));
    patch.tags = Some(obj(json!({"floor": 3})));
    assert!(matches!(
        hub.patch_twin("dev", patch.clone(), Some("\"nope\"")).await,
        Err(RegistryError::EtagMismatch { .. })
    ));
    let t1 = hub.patch_twin("dev", patch.clone(), t0.etag.as_deref()).await.unwrap();
    assert_eq!(t1.version, Some(2));
    assert_eq!(desired_of(&t1)["$version"], 2);
    assert_eq!(desired_of(&t1)["a"], 1);
    assert_eq!(t1.tags.as_ref().unwrap()["floor"], 3);
    assert_ne!(t1.etag, t0.etag);

    // A patch that changes nothing changes no version and no etag.
    let same = hub.patch_twin("dev", patch, None).await.unwrap();
    assert_eq!((same.version, same.etag.clone()), (t1.version, t1.etag.clone()));

    // Merge-patch: null deletes, objects merge.
    let t2 = hub
        .patch_twin("dev", desired_patch(json!({"a": null, "nested": {"y": 3}})), None)
        .await
        .unwrap();
    let d = desired_of(&t2);
    assert!(d.get("a").is_none());
    assert_eq!(d["nested"], json!({"x": 1, "y": 3}));
    assert_eq!(d["$version"], 3);
    // A tags-only patch bumps the twin version but not desired $version.
    let t3 = hub
        .patch_twin(
            "dev",
            Twin {
                tags: Some(obj(json!({"floor": 4}))),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(t3.version, Some(4));
    assert_eq!(desired_of(&t3)["$version"], 3);

    // Replace: desired and tags become exactly the given documents.
    let mut repl = desired_patch(json!({"b": 2, "$version": 99, "$metadata": {}}));
    repl.tags = Some(obj(json!({"owner": "ops"})));
    let t4 = hub.replace_twin("dev", repl, t3.etag.as_deref()).await.unwrap();
    let d = desired_of(&t4);
    assert_eq!(d["b"], 2);
    assert!(d.get("nested").is_none());
    assert_eq!(d["$version"], 4);
    assert_eq!(t4.tags.unwrap(), obj(json!({"owner": "ops"})));

    assert!(matches!(
        hub.patch_twin("missing", desired_patch(json!({})), None).await,
        Err(RegistryError::NotFound { .. })
    ));
    assert!(matches!(
        hub.get_twin("missing").await,
        Err(dps_hub::RegistryError::NotFound { .. })
    ));
}

#[tokio::test]
async fn upsert_creates_and_applies_initial_twin() {
    let hub = hub();
    assert_eq!(
        hub.upsert_device("other.example.test", &provisioning("p1", TwinPolicy::Keep))
            .await
            .unwrap_err(),
        HubError::UnknownHub("other.example.test".into())
    );
    let out = hub
        .upsert_device("HUB.example.test", &provisioning("p1", TwinPolicy::Keep))
        .await
        .unwrap();
    assert!(out.created);
    let d = hub.get_device("p1").await.unwrap();
    let sk = d.authentication.unwrap().symmetric_key.unwrap();
    assert_eq!(
        (sk.primary_key.as_deref(), sk.secondary_key.as_deref()),
        (Some(KEY1), Some(KEY2))
    );
    let t = hub.get_twin("p1").await.unwrap();
    assert_eq!(t.tags.clone().unwrap(), obj(json!({"site": "lab"})));
    let des = desired_of(&t);
    assert_eq!(
        (des["interval"].clone(), des["$version"].clone()),
        (json!(10), json!(1))
    );

    // Identical re-registration: nothing changes, not even the etag.
    let etag = d.etag.clone();
    assert!(
        !hub.upsert_device(HOST, &provisioning("p1", TwinPolicy::Keep))
            .await
            .unwrap()
            .created
    );
    assert_eq!(hub.get_device("p1").await.unwrap().etag, etag);

    // The twin drifts through the registry API...
    hub.patch_twin("p1", desired_patch(json!({"interval": 60})), None)
        .await
        .unwrap();
    // ...Keep with new credentials keeps the twin and updates auth + capabilities.
    let mut keep = provisioning("p1", TwinPolicy::Keep);
    keep.auth = DeviceAuth::Sas {
        primary_key: KEY2.into(),
        secondary_key: KEY1.into(),
    };
    keep.capabilities.iot_edge = true;
    assert!(!hub.upsert_device(HOST, &keep).await.unwrap().created);
    let d = hub.get_device("p1").await.unwrap();
    assert_eq!(
        d.authentication.unwrap().symmetric_key.unwrap().primary_key.as_deref(),
        Some(KEY2)
    );
    assert!(d.capabilities.unwrap().iot_edge);
    assert_ne!(d.etag, etag);
    let t = hub.get_twin("p1").await.unwrap();
    assert_eq!(desired_of(&t)["interval"], 60);
    assert_eq!(desired_of(&t)["$version"], 2);

    // Reset puts tags and desired back to the initial twin and bumps desired $version.
    hub.patch_twin(
        "p1",
        Twin {
            tags: Some(obj(json!({"extra": true}))),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    hub.upsert_device(HOST, &provisioning("p1", TwinPolicy::Reset))
        .await
        .unwrap();
    let t = hub.get_twin("p1").await.unwrap();
    assert_eq!(t.tags.clone().unwrap(), obj(json!({"site": "lab"})));
    let des = desired_of(&t);
    assert_eq!(des["interval"], 10);
    assert_eq!(des["mode"], "fast");
    assert_eq!(des["$version"], 3);

    // X.509 devices become selfSigned with both thumbprints.
    let x = DeviceProvisioning {
        auth: DeviceAuth::SelfSigned {
            primary_thumbprint: "A".repeat(40),
            secondary_thumbprint: "B".repeat(40),
        },
        initial_twin: None,
        ..provisioning("x1", TwinPolicy::Keep)
    };
    assert!(hub.upsert_device(HOST, &x).await.unwrap().created);
    let a = hub.get_device("x1").await.unwrap().authentication.unwrap();
    assert_eq!(a.kind, "selfSigned");
    assert_eq!(a.x509_thumbprint.unwrap().secondary_thumbprint, Some("B".repeat(40)));
    assert_eq!(hub.get_twin("x1").await.unwrap().tags.unwrap(), Map::new());

    // A disabled device is refused and left alone.
    let mut dis = sas_device("x1", None);
    dis.status = Some("disabled".into());
    dis.authentication = None;
    hub.put_device(dis, Some("*")).await.unwrap();
    assert!(matches!(
        hub.upsert_device(HOST, &x).await,
        Err(HubError::Refused { .. })
    ));

    // HubRegistry::delete_device: absent is fine, present is removed.
    HubRegistry::delete_device(&hub, HOST, "x1").await.unwrap();
    HubRegistry::delete_device(&hub, HOST, "x1").await.unwrap();
    assert!(matches!(
        hub.get_device("x1").await,
        Err(dps_hub::RegistryError::NotFound { .. })
    ));
    assert!(matches!(
        HubRegistry::delete_device(&hub, "nope.test", "p1").await,
        Err(HubError::UnknownHub(_))
    ));
}

/// `HubRegistry::device_data`: what reprovisioning with `migrateDeviceData` carries to another
/// hub — the twin's documents without `$` keys, and capabilities — which, provisioned as a new
/// device's initial twin, gives that device the same twin.
#[tokio::test]
async fn device_data_is_what_a_migration_carries() {
    let hub = hub();
    assert_eq!(HubRegistry::device_data(&hub, HOST, "p1").await.unwrap(), None);
    assert!(matches!(
        HubRegistry::device_data(&hub, "nope.test", "p1").await,
        Err(HubError::UnknownHub(_))
    ));
    let mut first = provisioning("p1", TwinPolicy::Keep);
    first.capabilities.iot_edge = true;
    hub.upsert_device(HOST, &first).await.unwrap();
    hub.patch_twin(
        "p1",
        Twin {
            tags: Some(obj(json!({"owner": "ops"}))),
            ..desired_patch(json!({"interval": 60, "limits": {"max": 5}}))
        },
        None,
    )
    .await
    .unwrap();

    let data = HubRegistry::device_data(&hub, "HUB.example.test", "P1")
        .await
        .unwrap()
        .unwrap();
    assert!(data.capabilities.iot_edge);
    assert_eq!(data.twin.tags, Some(json!({"site": "lab", "owner": "ops"})));
    assert_eq!(
        data.twin.properties.as_ref().unwrap().desired,
        Some(json!({"interval": 60, "mode": "fast", "limits": {"max": 5}}))
    );

    let moved = DeviceProvisioning {
        capabilities: data.capabilities,
        initial_twin: Some(data.twin),
        ..provisioning("p2", TwinPolicy::Keep)
    };
    assert!(hub.upsert_device(HOST, &moved).await.unwrap().created);
    let (a, b) = (hub.get_twin("p1").await.unwrap(), hub.get_twin("p2").await.unwrap());
    assert_eq!(a.tags, b.tags);
    let strip = |mut m: Map<String, Value>| {
        m.retain(|k, _| !k.starts_with('$'));
        m
    };
    assert_eq!(strip(desired_of(&a)), strip(desired_of(&b)));
    assert_eq!(b.capabilities, Some(DeviceCapabilities { iot_edge: true }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_to_one_device_serialise() {
    let hub = hub();
    hub.put_device(sas_device("hot", None), None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            hub.patch_twin("hot", desired_patch(json!({ format!("k{i}"): i })), None)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let t = hub.get_twin("hot").await.unwrap();
    let d = desired_of(&t);
    // Every patch landed; none overwrote another.
    assert_eq!(d.len(), 100 + 2); // + $metadata, $version
    assert_eq!(d["$version"], 101);
    assert_eq!(t.version, Some(101));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creates_and_deletes_stay_consistent() {
    let hub = hub();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                hub.put_device(sas_device("flappy", None), Some("*")).await.unwrap();
            } else {
                // NotFound is fine: the device may be gone already.
                let _ = hub.delete_device("flappy", None).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let exists = hub.get_device("flappy").await.is_ok();
    assert_eq!(hub.statistics().await.unwrap().total_device_count, u64::from(exists));
    // Whatever happened, the registry still works for this id.
    hub.put_device(sas_device("flappy", None), Some("*")).await.unwrap();
    hub.patch_twin("flappy", desired_patch(json!({"ok": true})), None)
        .await
        .unwrap();
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 1);
    hub.delete_device("flappy", None).await.unwrap();
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 0);
}

#[test]
fn handles_are_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Hub>();
    assert_send_sync::<dps_hub::DeviceSession>();
    assert_send_sync::<dps_hub::TelemetryMessage>();
}

/// The registry API enforces IoT Hub's twin rules: a replace or patch that breaks them is
/// `RegistryError::TwinInvalid` naming the field, and nothing is written (same etag, same
/// document), including a patch that would only grow a section past 32 KB.
#[tokio::test]
async fn twin_writes_within_iot_hub_limits() {
    let hub = hub();
    hub.put_device(sas_device("dev", None), None).await.unwrap();
    let chunk = |k: &str| json!({ k: {"a": "x".repeat(4000), "b": "y".repeat(4000), "c": "z".repeat(4000)} });
    let tags_patch = |v: Value| Twin {
        tags: Some(obj(v)),
        ..Default::default()
    };
    hub.patch_twin("dev", tags_patch(chunk("one")), None).await.unwrap();
    hub.patch_twin("dev", desired_patch(chunk("one")), None).await.unwrap();
    hub.patch_twin("dev", desired_patch(chunk("two")), None).await.unwrap();
    let before = hub.get_twin("dev").await.unwrap();

    let deep = (0..12).fold(json!(1), |v, i| json!({ format!("l{i}"): v }));
    let cases: Vec<(Twin, bool, &str)> = vec![
        (desired_patch(chunk("three")), false, "properties.desired would be"),
        (tags_patch(json!({"k": {"with space": 1}})), false, "contains ' '"),
        (tags_patch(deep.clone()), false, "tags.l11.l10"),
        (
            desired_patch(json!({"n": 4_503_599_627_370_496i64})),
            false,
            "out of range",
        ),
        // Replace: whole documents, checked the same way.
        (tags_patch(deep), true, "nested 11 levels"),
        (desired_patch(json!({ "k": "x".repeat(5000) })), true, "4 KB"),
        (
            Twin {
                tags: Some(obj(chunk("a"))),
                properties: Some(TwinProperties {
                    desired: Some(obj(json!({"x": chunk("b"), "y": chunk("c"), "z": chunk("d")}))),
                    reported: None,
                }),
                ..Default::default()
            },
            true,
            "properties.desired would be",
        ),
    ];
    for (twin, replace, expected) in cases {
        let err = if replace {
            hub.replace_twin("dev", twin, None).await.unwrap_err()
        } else {
            hub.patch_twin("dev", twin, None).await.unwrap_err()
        };
        assert!(matches!(err, RegistryError::TwinInvalid(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(expected) || (expected == "4 KB" && msg.contains("4096 bytes")),
            "{expected:?} in {msg}"
        );
        assert_eq!(hub.get_twin("dev").await.unwrap(), before, "nothing written for {msg}");
    }
    // A replace that echoes the twin read (with `$metadata`/`$version`) is fine.
    let echoed = hub.get_twin("dev").await.unwrap();
    hub.replace_twin("dev", echoed, None).await.unwrap();
}

/// Provisioning applies only initial twins within IoT Hub's rules; the DPS service API refuses
/// the others when the enrollment is stored, so this is the last line, not the usual one.
#[tokio::test]
async fn provisioning_refuses_an_initial_twin_beyond_limits() {
    let hub = hub();
    let mut p = provisioning("prov", TwinPolicy::Reset);
    p.initial_twin = Some(InitialTwin {
        tags: Some(json!("hello")),
        properties: None,
    });
    let err = hub.upsert_device(HOST, &p).await.unwrap_err();
    assert_eq!(
        err,
        HubError::Refused {
            device_id: "prov".into(),
            reason: "initialTwin.tags must be a JSON object, got a string".into()
        }
    );
    assert!(matches!(
        hub.get_device("prov").await,
        Err(dps_hub::RegistryError::NotFound { .. })
    ));
    assert_eq!(hub.statistics().await.unwrap().total_device_count, 0);
    hub.upsert_device(HOST, &provisioning("prov", TwinPolicy::Reset))
        .await
        .unwrap();
    assert_eq!(
        hub.get_twin("prov").await.unwrap().tags.unwrap(),
        obj(json!({"site": "lab"}))
    );
}
