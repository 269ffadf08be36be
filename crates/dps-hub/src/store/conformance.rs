//! The hub store conformance suite: every [`HubStore`] runs exactly these checks (the in-memory
//! store in dps-hub's own tests, `dps_store::SqliteHubStore` in dps-store's).
//!
//! Each check uses its own device ids and measures counts as differences, so a store needs to be
//! fresh only once, and the checks may run in any order.

use chrono::{DateTime, Duration, TimeZone, Utc};
use dps_proto::model::service::DeviceCapabilities;
use serde_json::json;

use super::{
    C2dRecord, ConsumerGroup, DeviceJobRecord, DeviceRecord, EventStart, FeedbackRecord, FileNotification, HubStore,
    JobRecord, PartitionBounds, QueueChange, TelemetryMessage,
};
use crate::c2d::{Ack, FeedbackStatus};
use crate::record::{sas_auth, self_signed_auth, Status, TwinState};

fn at() -> DateTime<Utc> {
    // Sub-second precision: a store must not round timestamps.
    Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap() + Duration::nanoseconds(123_456_789)
}

fn record(id: &str, status: Status) -> DeviceRecord {
    DeviceRecord {
        device_id: id.into(),
        module_id: None,
        managed_by: None,
        generation_id: "638000000000000001".into(),
        etag: format!("etag-{id}"),
        status,
        status_reason: None,
        status_updated_time: at(),
        created_time: at(),
        authentication: sas_auth("cHJpbWFyeQ==".into(), "c2Vjb25kYXJ5".into()),
        capabilities: DeviceCapabilities::default(),
        twin: TwinState::new(at()),
        created_by_operation: None,
        issuance: None,
    }
}

/// A record using every field, with nested and non-ASCII twin content.
fn rich(id: &str) -> DeviceRecord {
    let mut r = record(id, Status::Disabled);
    r.status_reason = Some("décommissionné".into());
    r.status_updated_time = at() + Duration::days(3);
    r.authentication = self_signed_auth("AB".repeat(20), "CD".repeat(32));
    r.capabilities = DeviceCapabilities { iot_edge: true };
    r.created_by_operation = Some("4.0123456789abcdef.op".into());
    let obj = |v: serde_json::Value| v.as_object().cloned().unwrap();
    r.twin.tags = obj(json!({"site": {"building": 7, "floors": [1, 2.5, "三"]}, "ok": true}));
    r.twin.desired = obj(json!({"fan": {"speed": 3}, "mode": "eco"}));
    r.twin.desired_version = 4;
    r.twin.reported = obj(json!({"firmware": "1.2.3", "uptime": 123456789012_i64}));
    r.twin.reported_version = 9;
    r.twin.version = 12;
    r
}

/// Runs every check.
pub async fn run_all(store: &dyn HubStore) {
    crud(store).await;
    records_round_trip_whole(store).await;
    ids_are_case_insensitive(store).await;
    pages_in_key_order(store).await;
    counts_by_status(store).await;
    queues_round_trip_and_change_together(store).await;
    telemetry_is_read_by_partition_time_and_device_and_trimmed(store).await;
    consumer_groups_are_kept_by_key(store).await;
    file_notifications_round_trip(store).await;
    modules_live_under_their_device(store).await;
    jobs_and_their_device_rows_round_trip(store).await;
    devices_are_found_by_string_tags(store).await;
}

/// Two hubs whose stores share storage (several embedded hubs in one file) see only their own
/// rows: the same keys in both hubs are two rows, and a write or delete in one leaves the other
/// as it was. Both stores must be fresh.
pub async fn hubs_are_isolated(a: &dyn HubStore, b: &dyn HubStore) {
    let tagged = |status: Status, site: &str| {
        let mut r = record("Shared", status);
        r.twin.tags = json!({"site": site}).as_object().cloned().unwrap();
        r
    };
    let mut other_module = module("Shared", "m1");
    other_module.managed_by = None;
    let mut other_job = job("iso-job");
    other_job.query_condition = "tags.b = 2".into();
    let stores: [(&dyn HubStore, DeviceRecord, DeviceRecord, JobRecord, &str); 2] = [
        (
            a,
            tagged(Status::Enabled, "north"),
            module("Shared", "m1"),
            job("iso-job"),
            "Shared",
        ),
        (b, tagged(Status::Disabled, "south"), other_module, other_job, "Other"),
    ];
    for (s, device, module, job, c2d_device) in &stores {
        s.put_device(device).await.unwrap();
        s.put_module(module).await.unwrap();
        s.put_job(job).await.unwrap();
        s.put_device_jobs(&[row("iso-job", c2d_device, "running")])
            .await
            .unwrap();
        s.update_queues(&QueueChange {
            put_c2d: vec![message(1, c2d_device)],
            put_feedback: vec![feedback(1)],
            put_file_notifications: vec![notification(1)],
            ..QueueChange::default()
        })
        .await
        .unwrap();
        s.put_consumer_group(&group(&format!("cg-{c2d_device}"), 1))
            .await
            .unwrap();
    }
    let names = |v: &[DeviceRecord]| v.iter().map(|r| r.device_id().to_string()).collect::<Vec<_>>();
    for (s, device, module, job, c2d_device) in &stores {
        assert_eq!(s.get_device("shared").await.unwrap().as_ref(), Some(device));
        assert_eq!(s.list_devices(None, 10).await.unwrap(), std::slice::from_ref(device));
        let counts = s.count_devices().await.unwrap();
        assert_eq!(counts.total, 1, "each hub counts its own devices");
        assert_eq!(counts.enabled, u64::from(device.status == Status::Enabled));
        let site = device.twin.tags["site"].as_str().unwrap();
        assert_eq!(names(&s.find_by_tag("site", site, None, 10).await.unwrap()), ["Shared"]);
        let elsewhere = if site == "north" { "south" } else { "north" };
        assert!(s.find_by_tag("site", elsewhere, None, 10).await.unwrap().is_empty());
        assert_eq!(s.get_module("shared", "m1").await.unwrap().as_ref(), Some(module));
        assert_eq!(
            s.list_all_modules(None, 10).await.unwrap(),
            std::slice::from_ref(module)
        );
        assert_eq!(s.list_jobs().await.unwrap(), std::slice::from_ref(job));
        let rows = s.list_device_jobs(None, 10).await.unwrap();
        assert_eq!(rows, [row("iso-job", c2d_device, "running")]);
        let (c2d, fb) = s.load_queues().await.unwrap();
        assert_eq!((c2d, fb), (vec![message(1, c2d_device)], vec![feedback(1)]));
        assert_eq!(s.load_file_notifications().await.unwrap(), [notification(1)]);
        let groups = s.list_consumer_groups().await.unwrap();
        assert_eq!(groups, [group(&format!("cg-{c2d_device}"), 1)]);
    }

    // Deleting in hub B (the device takes its modules and messages; the job its rows) leaves
    // hub A whole.
    b.delete_device("shared").await.unwrap();
    b.delete_job("iso-job").await.unwrap();
    b.delete_consumer_group("cg-other").await.unwrap();
    b.update_queues(&QueueChange {
        delete_c2d: vec![1],
        delete_feedback: vec![1],
        delete_file_notifications: vec![1],
        ..QueueChange::default()
    })
    .await
    .unwrap();
    assert_eq!(b.count_devices().await.unwrap().total, 0);
    assert!(b.list_all_modules(None, 10).await.unwrap().is_empty());
    let (_, a_device, a_module, a_job, _) = &stores[0];
    assert_eq!(a.get_device("shared").await.unwrap().as_ref(), Some(a_device));
    assert_eq!(a.count_devices().await.unwrap().total, 1);
    assert_eq!(
        names(&a.find_by_tag("site", "north", None, 10).await.unwrap()),
        ["Shared"]
    );
    assert_eq!(
        a.list_all_modules(None, 10).await.unwrap(),
        std::slice::from_ref(a_module)
    );
    assert_eq!(a.list_jobs().await.unwrap(), std::slice::from_ref(a_job));
    assert_eq!(a.list_device_jobs(None, 10).await.unwrap().len(), 1);
    let (c2d, fb) = a.load_queues().await.unwrap();
    assert_eq!((c2d.len(), fb.len()), (1, 1));
    assert_eq!(a.load_file_notifications().await.unwrap().len(), 1);
    assert_eq!(a.list_consumer_groups().await.unwrap().len(), 1);
}

/// The tag index follows every write: found by a string leaf's dotted path, in key order from
/// after a key; a replaced or deleted device no longer found by its old tags.
async fn devices_are_found_by_string_tags(s: &dyn HubStore) {
    let tagged = |id: &str, site: &str| {
        let mut r = record(id, Status::Enabled);
        r.twin.tags = json!({"loc": {"site": site, "floor": 3}, "kind": "tag-conf"})
            .as_object()
            .cloned()
            .unwrap();
        r
    };
    for (id, site) in [("Tag-C", "north"), ("tag-a", "north"), ("tag-b", "south")] {
        s.put_device(&tagged(id, site)).await.unwrap();
    }
    let ids = |v: Vec<DeviceRecord>| v.iter().map(|r| r.device_id().to_string()).collect::<Vec<_>>();
    assert_eq!(
        ids(s.find_by_tag("loc.site", "north", None, 10).await.unwrap()),
        ["tag-a", "Tag-C"]
    );
    assert_eq!(
        ids(s.find_by_tag("loc.site", "north", Some("tag-a"), 10).await.unwrap()),
        ["Tag-C"]
    );
    assert_eq!(
        ids(s.find_by_tag("kind", "tag-conf", None, 2).await.unwrap()),
        ["tag-a", "tag-b"]
    );
    assert!(
        s.find_by_tag("loc.floor", "3", None, 10).await.unwrap().is_empty(),
        "only strings are indexed"
    );
    assert!(s.find_by_tag("loc", "north", None, 10).await.unwrap().is_empty());
    s.put_device(&tagged("tag-a", "south")).await.unwrap();
    assert_eq!(
        ids(s.find_by_tag("loc.site", "north", None, 10).await.unwrap()),
        ["Tag-C"]
    );
    s.delete_device("tag-c").await.unwrap();
    assert!(s.find_by_tag("loc.site", "north", None, 10).await.unwrap().is_empty());
    assert_eq!(
        ids(s.find_by_tag("loc.site", "south", None, 10).await.unwrap()),
        ["tag-a", "tag-b"]
    );
    s.delete_device("tag-a").await.unwrap();
    s.delete_device("tag-b").await.unwrap();
}

/// Jobs come back whole; device rows are listed in key order, replaced by key, and go with
/// their job.
fn job(id: &str) -> JobRecord {
    JobRecord {
        job_id: id.into(),
        kind: crate::jobs::JobKind::ScheduleUpdateTwin,
        query_condition: "tags.a = 'ü'".into(),
        created_time: at(),
        start_time: at(),
        end_time: None,
        max_execution_time_in_seconds: 60,
        cloud_to_device_method: None,
        update_twin: Some(json!({"tags": {"a": 1}, "etag": "*"})),
        status: crate::jobs::JobStatus::Queued,
        failure_reason: None,
        statistics: Default::default(),
    }
}

fn row(job: &str, device: &str, status: &str) -> DeviceJobRecord {
    DeviceJobRecord {
        device_id: device.into(),
        job_id: job.into(),
        job_type: "scheduleUpdateTwin".into(),
        status: status.into(),
        start_time_utc: "2025-01-02T03:04:05Z".into(),
        end_time_utc: "2025-01-02T03:04:06Z".into(),
        created_date_time_utc: "2025-01-02T03:04:05Z".into(),
        last_updated_date_time_utc: "2025-01-02T03:04:06Z".into(),
        outcome: json!({"deviceMethodResponse": null}),
        error: None,
    }
}

async fn jobs_and_their_device_rows_round_trip(s: &dyn HubStore) {
    use crate::jobs::JobStatus;
    let mut j1 = job("conf-job-1");
    s.put_job(&j1).await.unwrap();
    s.put_job(&job("conf-job-2")).await.unwrap();
    j1.status = JobStatus::Completed;
    j1.statistics.device_count = 2;
    s.put_job(&j1).await.unwrap();
    let stored: Vec<JobRecord> = s
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.job_id.starts_with("conf-job-"))
        .collect();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored.iter().find(|j| j.job_id == "conf-job-1"), Some(&j1));
    s.put_device_jobs(&[row("conf-job-1", "B", "failed"), row("conf-job-1", "a", "completed")])
        .await
        .unwrap();
    s.put_device_jobs(&[row("conf-job-1", "b", "completed"), row("conf-job-2", "a", "completed")])
        .await
        .unwrap();
    let keys = |rows: Vec<DeviceJobRecord>| rows.iter().map(|r| (r.key(), r.status.clone())).collect::<Vec<_>>();
    let all = keys(s.list_device_jobs(Some("conf-job-"), 10).await.unwrap());
    assert_eq!(
        all,
        [
            ("conf-job-1/a".to_string(), "completed".to_string()),
            ("conf-job-1/b".to_string(), "completed".to_string()),
            ("conf-job-2/a".to_string(), "completed".to_string()),
        ]
    );
    assert_eq!(
        keys(s.list_device_jobs(Some("conf-job-1/a"), 1).await.unwrap())[0].0,
        "conf-job-1/b"
    );
    s.delete_job("conf-job-1").await.unwrap();
    assert_eq!(keys(s.list_device_jobs(Some("conf-job-"), 10).await.unwrap()).len(), 1);
    assert!(!s.list_jobs().await.unwrap().iter().any(|j| j.job_id == "conf-job-1"));
    s.delete_job("conf-job-2").await.unwrap();
}

/// Modules are kept apart from devices (not listed, not counted), listed per device in key order,
/// found without case, and deleted with their device.
fn module(device: &str, id: &str) -> DeviceRecord {
    let mut r = rich(device);
    r.module_id = Some(id.into());
    r.managed_by = Some("IotEdge".into());
    r
}

async fn modules_live_under_their_device(s: &dyn HubStore) {
    let before = s.count_devices().await.unwrap();
    let device = record("Mod-Dev", Status::Enabled);
    s.put_device(&device).await.unwrap();
    let zeta = module("Mod-Dev", "Zeta");
    s.put_module(&zeta).await.unwrap();
    for m in ["alpha", "Beta"] {
        s.put_module(&module("Mod-Dev", m)).await.unwrap();
    }
    // Another device whose key starts like this one's: its modules are not this one's.
    s.put_device(&record("Mod-Dev2", Status::Enabled)).await.unwrap();
    s.put_module(&module("Mod-Dev2", "alpha")).await.unwrap();
    assert_eq!(s.count_devices().await.unwrap().total, before.total + 2);
    let got = s.get_module("mod-dev", "ZETA").await.unwrap().unwrap();
    assert_eq!(got, zeta, "a module comes back whole");
    assert_eq!(s.get_module("Mod-Dev", "gamma").await.unwrap(), None);
    assert_eq!(
        s.get_device("Mod-Dev").await.unwrap().unwrap(),
        device,
        "the device is its own record"
    );
    let ids = |v: Vec<DeviceRecord>| v.iter().map(|r| r.module_id().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(s.list_modules("MOD-DEV").await.unwrap()), ["alpha", "Beta", "Zeta"]);
    let all = s.list_all_modules(None, 100).await.unwrap();
    let keys: Vec<String> = all
        .iter()
        .map(|r| r.key())
        .filter(|k| k.starts_with("mod-dev"))
        .collect();
    assert_eq!(
        keys,
        [
            "mod-dev/modules/alpha",
            "mod-dev/modules/beta",
            "mod-dev/modules/zeta",
            "mod-dev2/modules/alpha"
        ]
    );
    let next = s.list_all_modules(Some("mod-dev/modules/beta"), 2).await.unwrap();
    assert_eq!(
        next.iter().map(|r| r.key()).collect::<Vec<_>>(),
        ["mod-dev/modules/zeta", "mod-dev2/modules/alpha"]
    );
    let listed = s.list_devices(Some("mod-dev"), 1).await.unwrap();
    assert_eq!(listed[0].device_id(), "Mod-Dev2", "modules are not devices");
    // Replacing and deleting one module.
    let mut changed = module("Mod-Dev", "Beta");
    changed.twin.version = 99;
    s.put_module(&changed).await.unwrap();
    assert_eq!(s.get_module("Mod-Dev", "beta").await.unwrap().unwrap().twin.version, 99);
    s.delete_module("Mod-Dev", "BETA").await.unwrap();
    s.delete_module("Mod-Dev", "absent").await.unwrap();
    assert_eq!(ids(s.list_modules("Mod-Dev").await.unwrap()), ["alpha", "Zeta"]);
    // Deleting the device takes its modules, and only its own.
    s.delete_device("mod-dev").await.unwrap();
    assert!(s.list_modules("Mod-Dev").await.unwrap().is_empty());
    assert_eq!(s.get_module("Mod-Dev", "alpha").await.unwrap(), None);
    assert_eq!(ids(s.list_modules("Mod-Dev2").await.unwrap()), ["alpha"]);
    s.delete_device("Mod-Dev2").await.unwrap();
    assert_eq!(s.count_devices().await.unwrap(), before);
}

/// File upload notifications come back whole, in key order, and go when deleted.
fn notification(seq: u64) -> FileNotification {
    FileNotification {
        seq,
        device_id: "Dev-ü".into(),
        blob_uri: format!("https://hub.test/fileupload/Dev-ü/f{seq}.txt"),
        blob_name: format!("Dev-ü/f{seq}.txt"),
        last_updated_time: at(),
        blob_size_in_bytes: seq * 1000,
        enqueued_time_utc: at() + Duration::seconds(seq as i64),
    }
}

async fn file_notifications_round_trip(s: &dyn HubStore) {
    let n = notification;
    s.update_queues(&QueueChange {
        put_file_notifications: vec![n(7), n(3)],
        ..QueueChange::default()
    })
    .await
    .unwrap();
    assert_eq!(s.load_file_notifications().await.unwrap(), [n(3), n(7)]);
    s.update_queues(&QueueChange {
        delete_file_notifications: vec![3, 99],
        ..QueueChange::default()
    })
    .await
    .unwrap();
    assert_eq!(s.load_file_notifications().await.unwrap(), [n(7)]);
    s.update_queues(&QueueChange {
        delete_file_notifications: vec![7],
        ..QueueChange::default()
    })
    .await
    .unwrap();
    assert!(s.load_file_notifications().await.unwrap().is_empty());
}

/// Consumer groups come back whole in key order; a put with the same key replaces, a delete
/// of an absent key is no error.
fn group(name: &str, secs: i64) -> ConsumerGroup {
    ConsumerGroup {
        name: name.into(),
        created: Some(at() + Duration::seconds(secs)),
    }
}

async fn consumer_groups_are_kept_by_key(s: &dyn HubStore) {
    s.put_consumer_group(&group("Zeta", 1)).await.unwrap();
    s.put_consumer_group(&group("alpha.1", 2)).await.unwrap();
    s.put_consumer_group(&group("ZETA", 3)).await.unwrap();
    assert_eq!(
        s.list_consumer_groups().await.unwrap(),
        [group("alpha.1", 2), group("ZETA", 3)]
    );
    s.delete_consumer_group("zeta").await.unwrap();
    s.delete_consumer_group("zeta").await.unwrap();
    assert_eq!(s.list_consumer_groups().await.unwrap(), [group("alpha.1", 2)]);
    s.delete_consumer_group("alpha.1").await.unwrap();
    assert!(s.list_consumer_groups().await.unwrap().is_empty());
}

fn event(seq: u64, partition: u32, pseq: u64, device: &str, secs: i64) -> TelemetryMessage {
    TelemetryMessage {
        sequence_number: seq,
        partition,
        partition_sequence: pseq,
        device_id: device.into(),
        enqueued_time: at() + Duration::seconds(secs),
        properties: vec![("k".into(), format!("v{seq}")), ("ü".into(), "ß".into())],
        system_properties: vec![("iothub-connection-device-id".into(), device.into())],
        // Every byte value: a store keeps the body exactly.
        body: (0..=255u8).chain([seq as u8]).collect::<Vec<u8>>().into(),
    }
}

/// Telemetry comes back whole, by partition and position, by time, by device; trimming goes
/// by age, then by size, oldest first.
async fn telemetry_is_read_by_partition_time_and_device_and_trimmed(s: &dyn HubStore) {
    let base = 10_000_000;
    // Two partitions, interleaved, as the hub numbers them: hub-wide `seq`, per-partition `pseq`.
    let events: Vec<_> = [
        event(base + 1, 7, 0, "Ev-A", 0),
        event(base + 2, 8, 0, "ev-b", 1),
        event(base + 3, 7, 1, "ev-a", 2),
        event(base + 4, 7, 2, "ev-a", 3),
        event(base + 5, 8, 1, "ev-b", 4),
    ]
    .into_iter()
    .map(std::sync::Arc::new)
    .collect();
    s.append_events(&events[..2]).await.unwrap();
    s.append_events(&events[2..]).await.unwrap();
    let got = s.read_partition(7, 0, 10).await.unwrap();
    assert_eq!(got, [(*events[0]).clone(), (*events[2]).clone(), (*events[3]).clone()]);
    let page = s.read_partition(7, 1, 1).await.unwrap();
    assert_eq!(page.iter().map(|e| e.partition_sequence).collect::<Vec<_>>(), [1]);
    assert!(s.read_partition(7, 3, 10).await.unwrap().is_empty());
    assert_eq!(
        s.find_in_partition(7, EventStart::Offset(base + 2)).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        s.find_in_partition(8, EventStart::Offset(base + 2)).await.unwrap(),
        Some(0)
    );
    assert_eq!(
        s.find_in_partition(7, EventStart::Offset(base + 5)).await.unwrap(),
        None
    );
    let t3 = (at() + Duration::seconds(3)).timestamp_millis();
    assert_eq!(
        s.find_in_partition(7, EventStart::EnqueuedAt(t3)).await.unwrap(),
        Some(2)
    );

    let of_a = s.recent_events(Some("EV-a"), None, 2).await.unwrap();
    assert_eq!(
        of_a.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
        [base + 3, base + 4],
        "newest two, oldest first"
    );
    let after = s.recent_events(Some("ev-b"), Some(base + 2), 10).await.unwrap();
    assert_eq!(after.iter().map(|e| e.sequence_number).collect::<Vec<_>>(), [base + 5]);

    let bounds: Vec<PartitionBounds> = s
        .partition_bounds()
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.partition == 7 || b.partition == 8)
        .collect();
    assert_eq!(
        bounds,
        [
            PartitionBounds {
                partition: 7,
                first: 0,
                last: 2,
                last_offset: base + 4,
                last_enqueued: events[3].enqueued_time
            },
            PartitionBounds {
                partition: 8,
                first: 0,
                last: 1,
                last_offset: base + 5,
                last_enqueued: events[4].enqueued_time
            },
        ]
    );

    // By age: the first two go. By size: then the oldest until two fit.
    assert!(s.trim_events(at() + Duration::seconds(2), u64::MAX).await.unwrap() >= 2);
    assert_eq!(s.read_partition(7, 0, 10).await.unwrap().len(), 2);
    let two = events[3].retained_bytes() + events[4].retained_bytes();
    s.trim_events(at(), two).await.unwrap();
    let left: Vec<u64> = s
        .recent_events(None, Some(base), 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence_number)
        .collect();
    assert_eq!(left, [base + 4, base + 5]);
    s.trim_events(at() + Duration::days(1), u64::MAX).await.unwrap();
    assert!(s.recent_events(None, Some(base), 10).await.unwrap().is_empty());
}

fn message(seq: u64, device: &str) -> C2dRecord {
    C2dRecord {
        seq,
        device_id: device.into(),
        generation_id: "638000000000000001".into(),
        // Every byte value, so a store must keep the body exactly.
        body: (0..=255u8).collect::<Vec<u8>>().into(),
        properties: vec![
            ("$.mid".into(), format!("mid-{seq}")),
            ("$.to".into(), format!("/devices/{device}/messages/deviceBound")),
            ("iothub-ack".into(), "full".into()),
            ("clé".into(), "värde & more".into()),
        ],
        enqueued_at: at(),
        expires_at: at() + Duration::hours(1),
        ack: Ack::Full,
        delivery_count: 3,
    }
}

fn feedback(seq: u64) -> FeedbackRecord {
    FeedbackRecord {
        seq,
        original_message_id: format!("mid-{seq}"),
        device_id: "Queue-Dev".into(),
        device_generation_id: "638000000000000001".into(),
        status: FeedbackStatus::DeliveryCountExceeded,
        enqueued_at: at(),
    }
}

/// Messages and feedback come back whole and in key order; a change applies all its parts; a
/// device's deletion takes its messages with it.
async fn queues_round_trip_and_change_together(s: &dyn HubStore) {
    let base = 1_000_000;
    let (before_c2d, before_fb) = s.load_queues().await.unwrap();
    let counted_before = s.count_c2d().await.unwrap();
    assert_eq!(
        counted_before,
        before_c2d.len() as u64,
        "count_c2d counts what load_queues loads"
    );
    let mine = |c: &[C2dRecord]| c.iter().filter(|m| m.seq >= base).cloned().collect::<Vec<_>>();
    let mine_fb = |f: &[FeedbackRecord]| f.iter().filter(|r| r.seq >= base).cloned().collect::<Vec<_>>();
    assert!(mine(&before_c2d).is_empty() && mine_fb(&before_fb).is_empty());

    s.put_device(&record("Queue-Dev", Status::Enabled)).await.unwrap();
    let put = QueueChange {
        put_c2d: vec![
            message(base + 2, "Queue-Dev"),
            message(base + 1, "Queue-Dev"),
            message(base + 3, "other-q"),
        ],
        put_feedback: vec![feedback(base + 5), feedback(base + 4)],
        ..QueueChange::default()
    };
    s.update_queues(&put).await.unwrap();
    let (c2d, fb) = s.load_queues().await.unwrap();
    assert_eq!(
        mine(&c2d),
        vec![
            message(base + 1, "Queue-Dev"),
            message(base + 2, "Queue-Dev"),
            message(base + 3, "other-q")
        ]
    );
    assert_eq!(mine_fb(&fb), vec![feedback(base + 4), feedback(base + 5)]);
    assert_eq!(s.count_c2d().await.unwrap(), counted_before + 3);

    // Settling: the message goes and its feedback comes in one change; absent keys are fine.
    let settle = QueueChange {
        delete_c2d: vec![base + 1, base + 99],
        put_feedback: vec![feedback(base + 6)],
        delete_feedback: vec![base + 4, base + 98],
        ..QueueChange::default()
    };
    s.update_queues(&settle).await.unwrap();
    let (c2d, fb) = s.load_queues().await.unwrap();
    assert_eq!(
        mine(&c2d).iter().map(|m| m.seq).collect::<Vec<_>>(),
        [base + 2, base + 3]
    );
    assert_eq!(
        mine_fb(&fb).iter().map(|r| r.seq).collect::<Vec<_>>(),
        [base + 5, base + 6]
    );

    // Deleting the device (by any case of its id) deletes its messages, not others'.
    s.delete_device("QUEUE-dev").await.unwrap();
    let (c2d, fb) = s.load_queues().await.unwrap();
    assert_eq!(mine(&c2d).iter().map(|m| m.seq).collect::<Vec<_>>(), [base + 3]);
    assert_eq!(s.count_c2d().await.unwrap(), counted_before + 1);
    assert_eq!(mine_fb(&fb).len(), 2, "feedback outlives the device");
    s.update_queues(&QueueChange {
        delete_c2d: vec![base + 3],
        delete_feedback: vec![base + 5, base + 6],
        ..QueueChange::default()
    })
    .await
    .unwrap();
}

async fn crud(s: &dyn HubStore) {
    assert_eq!(s.get_device("crud-1").await.unwrap(), None);
    let first = record("crud-1", Status::Enabled);
    s.put_device(&first).await.unwrap();
    assert_eq!(s.get_device("crud-1").await.unwrap(), Some(first.clone()));

    let mut second = first.clone();
    second.etag = "etag-2".into();
    second.twin.touch();
    s.put_device(&second).await.unwrap();
    assert_eq!(s.get_device("crud-1").await.unwrap(), Some(second), "a put replaces");

    s.delete_device("crud-1").await.unwrap();
    assert_eq!(s.get_device("crud-1").await.unwrap(), None);
    s.delete_device("crud-1").await.unwrap();
    s.delete_device("never-was").await.unwrap();

    // A deleted id can be created again.
    s.put_device(&first).await.unwrap();
    assert_eq!(s.get_device("crud-1").await.unwrap(), Some(first));
}

async fn records_round_trip_whole(s: &dyn HubStore) {
    let r = rich("Rich-1");
    s.put_device(&r).await.unwrap();
    let got = s.get_device("rich-1").await.unwrap().expect("stored");
    assert_eq!(got, r);
    assert_eq!(got.device_id(), "Rich-1", "the id keeps its spelling");
    assert!(!got.is_enabled());
    let listed = s.list_devices(Some("rich-0"), 1).await.unwrap();
    assert_eq!(listed, vec![r], "pages carry whole records too");
}

async fn ids_are_case_insensitive(s: &dyn HubStore) {
    s.put_device(&record("Case-X", Status::Enabled)).await.unwrap();
    assert_eq!(s.get_device("CASE-x").await.unwrap().unwrap().device_id(), "Case-X");
    let before = s.count_devices().await.unwrap().total;
    // The same key under another spelling replaces the record (the hub never does this, but the
    // key, not the spelling, identifies a row).
    s.put_device(&record("CASE-X", Status::Enabled)).await.unwrap();
    assert_eq!(s.count_devices().await.unwrap().total, before);
    assert_eq!(s.get_device("case-x").await.unwrap().unwrap().device_id(), "CASE-X");
    s.delete_device("cAsE-X").await.unwrap();
    assert_eq!(s.get_device("Case-X").await.unwrap(), None);
}

async fn pages_in_key_order(s: &dyn HubStore) {
    // Ids whose spelling order differs from their key order: keys compare lower-cased.
    let ids: Vec<String> = (0..25)
        .map(|i| {
            if i % 2 == 0 {
                format!("PAGE-{i:02}")
            } else {
                format!("page-{i:02}")
            }
        })
        .collect();
    for id in ids.iter().rev() {
        s.put_device(&record(id, Status::Enabled)).await.unwrap();
    }
    let in_range = |r: &DeviceRecord| r.key().starts_with("page-");
    let mut seen = Vec::new();
    let mut after = "page-".to_string();
    loop {
        let page = s.list_devices(Some(&after), 10).await.unwrap();
        assert!(page.len() <= 10);
        let mine: Vec<_> = page.iter().filter(|r| in_range(r)).collect();
        seen.extend(mine.iter().map(|r| r.device_id().to_string()));
        if mine.len() < page.len() || page.len() < 10 {
            break;
        }
        // Continue from the last id in its stored spelling: `after` is case-insensitive.
        after = page.last().unwrap().device_id().to_string();
    }
    assert_eq!(seen, ids, "every device once, in key order");

    // `after` need not be a stored key.
    let page = s.list_devices(Some("PAGE-10a"), 2).await.unwrap();
    let got: Vec<_> = page.iter().map(DeviceRecord::device_id).collect();
    assert_eq!(got, ["page-11", "PAGE-12"]);
    assert!(s.list_devices(Some("page-"), 0).await.unwrap().is_empty());
    // From the start: keys in order, whatever else the store holds.
    let all = s.list_devices(None, 10_000).await.unwrap();
    assert!(
        all.windows(2).all(|w| w[0].key() < w[1].key()),
        "strictly ascending keys"
    );
    assert_eq!(all.iter().filter(|r| in_range(r)).count(), ids.len());
}

async fn counts_by_status(s: &dyn HubStore) {
    let before = s.count_devices().await.unwrap();
    assert_eq!(before.total, before.enabled + before.disabled);
    for i in 0..3 {
        s.put_device(&record(&format!("count-on-{i}"), Status::Enabled))
            .await
            .unwrap();
    }
    for i in 0..2 {
        s.put_device(&record(&format!("count-off-{i}"), Status::Disabled))
            .await
            .unwrap();
    }
    let after = s.count_devices().await.unwrap();
    assert_eq!(after.total - before.total, 5);
    assert_eq!(after.enabled - before.enabled, 3);
    assert_eq!(after.disabled - before.disabled, 2);

    // Disabling moves a device between the counts; deleting removes it.
    s.put_device(&record("count-on-0", Status::Disabled)).await.unwrap();
    s.delete_device("count-off-1").await.unwrap();
    let last = s.count_devices().await.unwrap();
    assert_eq!(last.total - before.total, 4);
    assert_eq!(last.enabled - before.enabled, 2);
    assert_eq!(last.disabled - before.disabled, 2);
}
