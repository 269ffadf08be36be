"""Import and export jobs (`/jobs/create`, `/jobs/{id}`, `/jobs`) with the official SDKs, the
server's own blob containers (`https://{hub}/{container}` = `dps-data/blobs/{container}`) in place
of a storage account.

- Node `azure-iothub`: `exportDevicesToBlob` (keys included), then `importDevicesFromBlob` of a
  `devices.txt` the test puts in the input container (new devices, an update, a delete, a bad
  line that lands in `importErrors.log`), `getJob` polling, `listJobs`.
- Python `azure-iot-hub` `IoTHubJobManager.create_import_export_job` (an export without keys),
  `get_import_export_job`, `get_import_export_jobs`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from interop_util import random_key, run_node, unique_id


def _blob(server, container: str, name: str) -> Path:
    return Path(server.data_dir) / "blobs" / container / name


def test_node_export_then_import(dps_server, registry_manager):
    from azure.iot.hub.models import Twin

    keep, gone = unique_id("ie-keep"), unique_id("ie-gone")
    key = random_key()
    registry_manager.create_device_with_sas(keep, key, random_key(), "enabled")
    registry_manager.update_twin(keep, Twin(tags={"site": "lab"}), "*")
    registry_manager.create_device_with_sas(gone, random_key(), random_key(), "enabled")
    new = unique_id("ie-new")
    host = dps_server.hub_host
    lines = [
        {"id": new, "status": "enabled", "tags": {"from": "import"}},
        {"id": keep, "importMode": "update", "status": "disabled"},
        {"id": gone, "importMode": "delete"},
        {"id": "", "importMode": "create"},
    ]
    src = _blob(dps_server, "imports", "devices.txt")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps(line) + "\r\n" for line in lines) + "not json\r\n")
    out = run_node(
        dps_server,
        "import_export.js",
        {
            "hubConnectionString": dps_server.hub_connection_string,
            "exportUri": f"https://{host}/exports?sv=2020-08-04&sig=ignored",
            "importUri": f"https://{host}/imports",
            "outputUri": f"https://{host}/import-results",
        },
    )
    assert "error" not in out, out
    assert out["exportCreated"] == {"type": "export", "status": "enqueued"}, out
    assert out["exportJob"]["status"] == "completed", out
    exported = [json.loads(l) for l in _blob(dps_server, "exports", "devices.txt").read_bytes().decode().split("\r\n") if l]
    mine = [l for l in exported if l["id"] == keep]
    assert mine and mine[0]["authentication"]["symmetricKey"]["primaryKey"] == key, mine
    assert mine[0]["tags"] == {"site": "lab"}, mine

    assert out["importJob"]["status"] == "completed", out
    assert registry_manager.get_twin(new).tags == {"from": "import"}
    assert registry_manager.get_device(keep).status == "disabled"
    assert not [d for d in registry_manager.get_devices() if d.device_id == gone]
    errors = [json.loads(l) for l in _blob(dps_server, "import-results", "importErrors.log").read_bytes().decode().split("\r\n") if l]
    assert [e["line"] for e in errors] == [4, 5], errors
    assert out["listed"] == 2, out


def test_python_export_without_keys(dps_server, registry_manager):
    from azure.iot.hub import IoTHubJobManager
    from azure.iot.hub.models import JobProperties

    device = unique_id("ie-py")
    registry_manager.create_device_with_sas(device, random_key(), random_key(), "enabled")
    jobs = IoTHubJobManager.from_connection_string(dps_server.hub_connection_string)
    job = jobs.create_import_export_job(
        JobProperties(
            type="export",
            output_blob_container_uri=f"https://{dps_server.hub_host}/py-exports",
            exclude_keys_in_export=True,
            storage_authentication_type="keyBased",
        )
    )
    deadline = time.monotonic() + 20
    while (job := jobs.get_import_export_job(job.job_id)).status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.status == "completed", job
    lines = [json.loads(l) for l in _blob(dps_server, "py-exports", "devices.txt").read_bytes().decode().split("\r\n") if l]
    mine = [l for l in lines if l["id"] == device]
    assert mine and "authentication" not in mine[0], mine
    assert any(j.job_id == job.job_id for j in jobs.get_import_export_jobs())
