//! Scheduled jobs (`/jobs/v2`): twin updates and direct methods over a query condition, their
//! statistics and `devices.jobs` rows, cancel, refusals, and a job resumed after a restart.

use std::sync::Arc;
use std::time::Duration;

mod support;

use dps_core::SystemClock;
use dps_hub::store::{DeviceJobRecord, HubStore, JobRecord, MemoryHubStore};
use dps_hub::{Hub, HubConfig, JobError, OutboundKind};
use dps_proto::hub_mqtt::HubUsername;
use dps_proto::model::hub::{CloudToDeviceMethod, JobRequest, JobResponse, Twin};
use dps_proto::sas::build_token;
use serde_json::{json, Value};

const HOST: &str = "hub.example.test";
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

async fn fleet(hub: &Hub) {
    for (id, site) in [("d1", "lab"), ("d2", "lab"), ("d3", "field")] {
        let device = support::sas_device(id, Some((KEY, KEY)));
        hub.put_device(device, None).await.unwrap();
        let patch: Twin = serde_json::from_value(json!({"tags": {"site": site}})).unwrap();
        hub.patch_twin(id, patch, None).await.unwrap();
    }
}

async fn finished(hub: &Hub, id: &str) -> JobResponse {
    for _ in 0..200 {
        let job = hub.get_job(id).await.unwrap();
        if !matches!(job.status.as_str(), "queued" | "running") {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id} did not finish: {:?}", hub.get_job(id).await);
}

fn twin_job(condition: &str) -> JobRequest {
    JobRequest {
        kind: "scheduleUpdateTwin".into(),
        // As the C# SDK sends it: deviceId, a null etag and version, empty reported properties.
        update_twin: Some(
            json!({"deviceId": "x", "etag": null, "version": null, "tags": {"fw": "2.0"},
                                 "properties": {"desired": {"rate": 9}, "reported": {}}}),
        ),
        query_condition: Some(condition.into()),
        ..Default::default()
    }
}

async fn job_rows(hub: &Hub, job: &str) -> Vec<Value> {
    hub.query(
        &format!("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{job}'"),
        None,
        100,
    )
    .await
    .unwrap()
    .items
}

#[tokio::test]
async fn a_twin_job_updates_the_devices_of_its_condition() {
    let hub = Hub::open(HubConfig::in_memory(HOST)).unwrap();
    fleet(&hub).await;
    let created = hub.create_job("tw-1", twin_job("tags.site = 'lab'")).await.unwrap();
    assert_eq!(
        (created.job_id.as_str(), created.kind.as_str()),
        ("tw-1", "scheduleUpdateTwin")
    );
    let job = finished(&hub, "tw-1").await;
    assert_eq!(job.status, "completed", "{job:?}");
    let stats = job.device_job_statistics.unwrap();
    assert_eq!(
        (stats.device_count, stats.succeeded_count, stats.failed_count),
        (2, 2, 0)
    );
    for (id, updated) in [("d1", true), ("d2", true), ("d3", false)] {
        let twin = hub.get_twin(id).await.unwrap();
        assert_eq!(twin.tags.unwrap().get("fw").is_some(), updated, "{id}");
    }
    let rows = job_rows(&hub, "tw-1").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["deviceId"], "d1");
    assert_eq!(rows[0]["jobType"], "scheduleUpdateTwin");
    assert_eq!(rows[0]["status"], "completed");
    assert!(rows[0].get("devices").is_none(), "the row comes back as stored");
    // Listing, by type and status in any case (C# sends .NET names).
    assert_eq!(
        hub.list_jobs(Some("ScheduleUpdateTwin"), Some("Completed"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(hub
        .list_jobs(Some("scheduleDeviceMethod"), None)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_method_job_calls_connected_devices_and_records_the_others_as_failed() {
    let hub = Hub::open(HubConfig::in_memory(HOST)).unwrap();
    fleet(&hub).await;
    let username = HubUsername::parse(&format!("{HOST}/d1/?api-version=2021-04-12")).unwrap();
    let now = dps_core::Engine::unix_time(chrono::Utc::now());
    let token = build_token(&format!("{HOST}/devices/d1"), KEY, now + 600, None).unwrap();
    let identity = hub
        .authenticate(now, &username, Some(token.as_bytes()), None)
        .await
        .unwrap();
    let (session, mut rx) = hub.open_session(identity).await.unwrap();
    session.subscribe("$iothub/methods/POST/#", 0).unwrap();
    let answering = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            if let OutboundKind::MethodRequest { rid, .. } = out.kind {
                let topic = format!("$iothub/methods/res/200/?$rid={rid}");
                session
                    .handle_publish(chrono::Utc::now(), &topic, br#"{"rebooted":true}"#)
                    .await
                    .unwrap();
            }
        }
    });
    let request = JobRequest {
        job_id: "m-1".into(),
        kind: "scheduleDeviceMethod".into(),
        cloud_to_device_method: Some(CloudToDeviceMethod {
            method_name: "reboot".into(),
            payload: json!({"delay": 0}),
            response_timeout_in_seconds: Some(5),
            connect_timeout_in_seconds: None,
        }),
        query_condition: Some("DeviceId IN ['d1', 'd2']".into()),
        start_time: None,
        max_execution_time_in_seconds: None,
        update_twin: None,
    };
    hub.create_job("m-1", request).await.unwrap();
    let job = finished(&hub, "m-1").await;
    let stats = job.device_job_statistics.unwrap();
    assert_eq!(
        (stats.device_count, stats.succeeded_count, stats.failed_count),
        (2, 1, 1),
        "{job:?}"
    );
    assert_eq!(job.max_execution_time_in_seconds, Some(3600));
    let rows = job_rows(&hub, "m-1").await;
    assert_eq!(
        rows[0]["outcome"]["deviceMethodResponse"],
        json!({"status": 200, "payload": {"rebooted": true}})
    );
    assert_eq!(rows[1]["status"], "failed");
    assert_eq!(rows[1]["error"]["code"], "DeviceNotOnline");
    answering.abort();
}

#[tokio::test]
async fn a_queued_job_is_cancelled_and_refusals_say_why() {
    let hub = Hub::open(HubConfig::in_memory(HOST)).unwrap();
    fleet(&hub).await;
    let mut later = twin_job("*");
    later.start_time = Some((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    assert_eq!(hub.create_job("later", later.clone()).await.unwrap().status, "queued");
    assert!(matches!(
        hub.create_job("later", later.clone()).await,
        Err(JobError::AlreadyExists { .. })
    ));
    let cancelled = hub.cancel_job("later").await.unwrap();
    assert_eq!(cancelled.status, "cancelled");
    assert_eq!(cancelled.device_job_statistics.unwrap().device_count, 0);
    assert!(hub.get_twin("d1").await.unwrap().tags.unwrap().get("fw").is_none());

    let refused = |r: Result<JobResponse, JobError>| r.unwrap_err().to_string();
    let mut bad = twin_job("*");
    bad.kind = "scheduleTwinUpdate".into();
    assert!(refused(hub.create_job("j", bad).await).contains("not a job type"));
    let mut other = twin_job("*");
    other.job_id = "other".into();
    assert!(refused(hub.create_job("j", other).await).contains("does not match"));
    assert!(refused(hub.create_job("j", twin_job("tags.site = = 'x'")).await).contains("queryCondition"));
    assert!(refused(hub.create_job("a/b", twin_job("*")).await).contains("job id"));
    let mut no_method = twin_job("*");
    no_method.kind = "scheduleDeviceMethod".into();
    assert!(refused(hub.create_job("j", no_method).await).contains("cloudToDeviceMethod"));
    assert!(matches!(hub.get_job("nope").await, Err(JobError::NotFound { .. })));
    assert_eq!(hub.get_job("nope").await.unwrap_err().code(), 404_002);
}

#[tokio::test]
async fn an_unfinished_job_resumes_after_a_restart_without_redoing_a_device() {
    let store = Arc::new(MemoryHubStore::new());
    let open = || Hub::open_with_store(HubConfig::in_memory(HOST), store.clone(), Arc::new(SystemClock));
    let hub = open().await.unwrap();
    fleet(&hub).await;
    drop(hub);
    // What a crash mid-job leaves: the job running, one device's row stored.
    let now = chrono::Utc::now();
    let record: JobRecord = serde_json::from_value(json!({
        "jobId": "resume", "kind": "scheduleUpdateTwin", "queryCondition": "*",
        "createdTime": now, "startTime": now, "maxExecutionTimeInSeconds": 600,
        "updateTwin": {"tags": {"fw": "3.0"}}, "status": "running",
        "statistics": {"deviceCount": 1, "failedCount": 0, "succeededCount": 1, "runningCount": 0, "pendingCount": 0}
    }))
    .unwrap();
    store.put_job(&record).await.unwrap();
    let done: DeviceJobRecord = serde_json::from_value(json!({
        "deviceId": "d1", "jobId": "resume", "jobType": "scheduleUpdateTwin", "status": "completed",
        "startTimeUtc": "x", "endTimeUtc": "x", "createdDateTimeUtc": "x", "lastUpdatedDateTimeUtc": "x",
        "outcome": {"deviceMethodResponse": null}
    }))
    .unwrap();
    store.put_device_jobs(&[done]).await.unwrap();

    let hub = open().await.unwrap();
    let job = finished(&hub, "resume").await;
    assert_eq!(job.status, "completed");
    assert_eq!(job.device_job_statistics.unwrap().device_count, 3);
    assert!(
        hub.get_twin("d1").await.unwrap().tags.unwrap().get("fw").is_none(),
        "d1 was done before the crash"
    );
    for id in ["d2", "d3"] {
        assert_eq!(hub.get_twin(id).await.unwrap().tags.unwrap()["fw"], "3.0");
    }
    assert_eq!(job_rows(&hub, "resume").await.len(), 3);
}

#[tokio::test]
async fn finished_jobs_are_kept_up_to_a_bound() {
    let hub = Hub::open(HubConfig::in_memory(HOST)).unwrap();
    for i in 0..=dps_hub::MAX_KEPT_JOBS {
        hub.create_job(&format!("j{i:04}"), twin_job("deviceId = 'nobody'"))
            .await
            .unwrap();
        while matches!(
            hub.get_job(&format!("j{i:04}")).await.unwrap().status.as_str(),
            "queued" | "running"
        ) {
            tokio::task::yield_now().await;
        }
    }
    let kept = hub.list_jobs(None, None).await.unwrap();
    assert_eq!(kept.len(), dps_hub::MAX_KEPT_JOBS);
    assert!(
        matches!(hub.get_job("j0000").await, Err(JobError::NotFound { .. })),
        "the oldest went"
    );
    hub.get_job("j1000").await.unwrap();
}
