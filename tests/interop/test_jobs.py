"""Scheduled jobs (`/jobs/v2`) with the official SDKs.

- Node `azure-iothub` `JobClient`: `scheduleTwinUpdate` over a tag condition, `scheduleDeviceMethod`
  answered by an `azure-iot-device` client over MQTT, a job scheduled an hour ahead then
  `cancelJob`, `getJob` polling, `createQuery` paging through the job list, and the per-device
  rows through `Registry.createQuery("SELECT * FROM devices.jobs …")`.
- Python `azure-iot-hub` `IoTHubJobManager`: `create_scheduled_job`, `get_scheduled_job`,
  `cancel_scheduled_job`. (Its `query_scheduled_jobs` cannot read IoT Hub's answer, a bare JSON
  array — an SDK defect, azure-iot-sdk-python#423 fixed only for `query_iot_hub`; not called.)
- Jobs survive a restart (kill -9 while one waits for its start time).
"""

from __future__ import annotations

import time

from interop_util import random_key, run_node, unique_id


def _fleet(registry_manager, size=3):
    from azure.iot.hub.models import Twin

    fleet = unique_id("jobs")
    ids, keys = [], []
    for n in range(size):
        device_id, key = f"{fleet}-{n}", random_key()
        registry_manager.create_device_with_sas(device_id, key, random_key(), "enabled")
        registry_manager.update_twin(device_id, Twin(tags={"fleet": fleet}), "*")
        ids.append(device_id)
        keys.append(key)
    return fleet, ids, keys


def test_node_job_client(dps_server, registry_manager):
    fleet, ids, keys = _fleet(registry_manager)
    marker = unique_id("k")
    out = run_node(
        dps_server,
        "jobs.js",
        {
            "hubConnectionString": dps_server.hub_connection_string,
            "deviceConnectionString": f"HostName={dps_server.hub_host};DeviceId={ids[0]};SharedAccessKey={keys[0]}",
            "deviceId": ids[0],
            "fleet": fleet,
            "marker": marker,
        },
    )
    assert "error" not in out, out
    assert out["twinCreated"]["jobId"] == f"twin-{marker}" and out["twinCreated"]["type"] == "scheduleUpdateTwin", out
    twin_job = out["twinJob"]
    assert twin_job["status"] == "completed", twin_job
    assert twin_job["deviceJobStatistics"]["deviceCount"] == 3, twin_job
    assert twin_job["deviceJobStatistics"]["succeededCount"] == 3, twin_job
    for device_id in ids:
        twin = registry_manager.get_twin(device_id)
        assert twin.tags["fw"] == marker and twin.properties.desired["rate"] == 5
    method_job = out["methodJob"]
    assert method_job["status"] == "completed", method_job
    assert method_job["deviceJobStatistics"]["succeededCount"] == 1, method_job
    assert out["laterStatus"] == "queued", out
    assert out["laterJob"]["status"] == "cancelled", out
    assert out["twinJobsListed"] == sorted([f"later-{marker}", f"twin-{marker}"]), out
    (row,) = out["methodRows"]
    assert row["deviceId"] == ids[0] and row["status"] == "completed", row
    assert row["outcome"]["deviceMethodResponse"] == {"status": 200, "payload": {"got": {"now": True}}}, row
    assert out["missing"] == "Error", out  # azure-iothub names only DeviceNotFound among 404s


def test_python_job_manager_and_restart(dps_server, registry_manager):
    from azure.iot.hub import IoTHubJobManager
    from azure.iot.hub.models import JobRequest, Twin

    fleet, ids, _ = _fleet(registry_manager, 2)
    jobs = IoTHubJobManager.from_connection_string(dps_server.hub_connection_string)
    now_job, later_job = unique_id("py-now"), unique_id("py-later")
    request = JobRequest(
        job_id=now_job,
        type="scheduleUpdateTwin",
        update_twin=Twin(etag="*", tags={"py": "yes"}),
        query_condition=f"tags.fleet = '{fleet}'",
    )
    created = jobs.create_scheduled_job(now_job, request)
    assert created.job_id == now_job and created.type == "scheduleUpdateTwin"
    deadline = time.monotonic() + 20
    while (job := jobs.get_scheduled_job(now_job)).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.status == "completed" and job.device_job_statistics.succeeded_count == 2
    assert all(registry_manager.get_twin(d).tags["py"] == "yes" for d in ids)

    # Scheduled for later: it waits across a restart, and is cancelled after it.
    later = JobRequest(
        job_id=later_job,
        type="scheduleUpdateTwin",
        update_twin=Twin(etag="*", tags={"later": 1}),
        query_condition="*",
        start_time="2099-01-01T00:00:00Z",
        max_execution_time_in_seconds=60,
    )
    assert jobs.create_scheduled_job(later_job, later).status == "queued"
    dps_server.kill9()
    dps_server.restart()
    jobs = IoTHubJobManager.from_connection_string(dps_server.hub_connection_string)
    assert jobs.get_scheduled_job(later_job).status == "queued"
    assert jobs.get_scheduled_job(now_job).status == "completed"
    assert jobs.cancel_scheduled_job(later_job).status == "cancelled"
