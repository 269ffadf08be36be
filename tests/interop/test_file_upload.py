"""IoT Hub file upload with the official SDKs: devices get a SAS for a blob from the hub, upload
with the Azure Storage clients to the server's blob endpoint (on its HTTPS port), report the
outcome, and a backend reads the file upload notification.

- Node: `azure-iot-device` `uploadToBlob` (Put Block + Put Block List through
  `@azure/storage-blob`, notification with the correlation id in the path) and `azure-iothub`
  `getFileNotificationReceiver` over AMQP.
- Python: `azure-iot-device` `get_storage_info_for_blob` and `notify_blob_upload_status`, the
  upload itself with `azure-storage-blob` (`BlobClient.from_blob_url(...).upload_blob`: one Put
  Blob with `If-None-Match: *`), as the SDK's own sample does. The Python service SDK has no
  file notification API; the Node receiver reads those too.
- The operator's side: `dps hub file list` and `dps hub file download`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interop_util import hub_device_client, random_key, run_node, unique_id


def _device(dps_server, registry_manager) -> tuple[str, str]:
    device_id = unique_id("fu-dev")
    key = random_key()
    registry_manager.create_device_with_sas(device_id, key, random_key(), "enabled")
    return device_id, key


def test_node_upload_to_blob_and_file_notification(dps_server, registry_manager):
    device_id, key = _device(dps_server, registry_manager)
    name = f"reports/{unique_id('r')}.txt"
    content = "node file upload " * 100
    out = run_node(
        dps_server,
        "file_upload.js",
        {
            "hubConnectionString": dps_server.hub_connection_string,
            "deviceConnectionString": f"HostName={dps_server.hub_host};DeviceId={device_id};SharedAccessKey={key}",
            "blobName": name,
            "content": content,
        },
    )
    assert "error" not in out, out
    n = out["notification"]
    assert n["deviceId"] == device_id, n
    assert n["blobName"] == f"{device_id}/{name}", n
    assert n["blobSizeInBytes"] == len(content), n
    assert n["blobUri"] == f"https://{dps_server.hub_host}/fileupload/{device_id}/{name}", n
    assert out["contentType"] == "application/vnd.microsoft.iothub.filenotification.json", out
    assert out["completeError"] is None, out
    stored = Path(dps_server.data_dir) / "blobs" / "fileupload" / device_id / name
    assert stored.read_text() == content


def test_python_storage_info_upload_and_notify(dps_server, registry_manager):
    from azure.core.exceptions import ClientAuthenticationError, ResourceExistsError
    from azure.storage.blob import BlobClient

    device_id, key = _device(dps_server, registry_manager)
    name = f"{unique_id('p')}.bin"
    data = bytes(range(256)) * 40
    with hub_device_client(dps_server, device_id, key) as device:
        info = device.get_storage_info_for_blob(name)
        assert info["blobName"] == f"{device_id}/{name}", info
        url = f"https://{info['hostName']}/{info['containerName']}/{info['blobName']}{info['sasToken']}"
        blob = BlobClient.from_blob_url(url, connection_verify=dps_server.ca_path)
        blob.upload_blob(data)
        # The SDK's default `overwrite=False` sends `If-None-Match: *`: a second upload conflicts,
        # with the exception type Python picks from `x-ms-error-code`.
        with pytest.raises(ResourceExistsError):
            blob.upload_blob(b"again")
        assert blob.download_blob().readall() == data
        # A SAS for this blob does not open another one.
        other = url.replace(name, "other.bin")
        with pytest.raises(ClientAuthenticationError):
            BlobClient.from_blob_url(other, connection_verify=dps_server.ca_path).upload_blob(b"x")
        device.notify_blob_upload_status(info["correlationId"], True, 201, "OK")

        # A failed upload is reported too; it queues no notification (nothing to check here
        # beyond the hub's 204, which the SDK requires).
        failed = device.get_storage_info_for_blob(f"{unique_id('f')}.bin")
        device.notify_blob_upload_status(failed["correlationId"], False, 500, "disk full")
    stored = Path(dps_server.data_dir) / "blobs" / "fileupload" / device_id / name
    assert stored.read_bytes() == data
    # An operator lists and downloads uploaded files with the CLI (the hub's `/files` resource).
    listed = dps_server.cli("hub", "file", "list", "--device-id", device_id)
    assert [f["name"] for f in listed] == [f"{device_id}/{name}"], listed
    assert listed[0]["size"] == len(data), listed
    out = Path(dps_server.base_dir) / f"downloaded-{name}"
    got = dps_server.cli("hub", "file", "download", "--name", f"{device_id}/{name}", "--out", str(out))
    assert got["bytes"] == len(data), got
    assert out.read_bytes() == data
