"""IoT Hub file upload to an external storage account (`dps serve --file-upload-storage`), as an
IoT hub with `storageEndpoints.$default` set: devices get the account's blob host and a SAS the
server signs with the account key, upload to the account itself, and the server reads the blob's
properties from the account for the file upload notification.

The account is Azurite (Microsoft's Azure Storage emulator, from npm, served over HTTPS with a
CA of this test's own), in path style: its blob endpoint is `https://{host}:10000/devstoreaccount1`,
so the `hostName` devices get is `{host}:10000/devstoreaccount1`; the SDKs build
`https://{hostName}/{container}/{blob}{sas}` from it.

- Node: `azure-iot-device` `uploadToBlob` (Put Block + Put Block List through
  `@azure/storage-blob`) and the `azure-iothub` file notification receiver.
- Python: `get_storage_info_for_blob`, the upload with `azure-storage-blob`, and
  `notify_blob_upload_status`; a report of an upload that never happened is refused.
- The operator: `dps hub file list` and `download` read the account.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import types
from pathlib import Path

import pytest

from conftest import _register_ca, allocate_host, dps_bin, running_server
from interop_util import NODE_DIR, hub_device_client, issue_server_certificate, random_key, run_node, unique_id

# Azurite's well-known development account (its documentation publishes the key).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PORT = 10000
CONTAINER = "uploads"


def _wait_port(host: str, port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Azurite exited with {proc.returncode}:\n{log.read_text()}", pytrace=False)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"Azurite did not listen on {host}:{port}:\n{log.read_text()}", pytrace=False)


@pytest.fixture(scope="module")
def azurite():
    """Azurite's blob service over HTTPS on a fresh loopback address, with the `uploads`
    container created; yields (endpoint, CA path, process)."""
    binary = Path(NODE_DIR) / "node_modules" / ".bin" / "azurite-blob"
    assert binary.exists(), f"{binary} is missing: run scripts/setup-node.sh"
    host = allocate_host()
    work = Path(tempfile.mkdtemp(prefix="dps-azurite-"))
    ca, cert, key = issue_server_certificate(host, work)
    log = work / "azurite.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "--blobHost", host,
                "--blobPort", str(PORT),
                "--cert", str(cert),
                "--key", str(key),
                "--location", str(work / "data"),
                # Azurite's own limits, not the account's: it refuses the newer x-ms-version
                # of azure-storage-blob 12.31, and in its strict mode the Put Block of
                # @azure/storage-blob 12.8 ("x-ms-encryption-algorithm header or parameter is
                # not supported"); Azure Storage accepts both.
                "--skipApiVersionCheck",
                "--loose",
                "--disableProductStyleUrl",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_port(host, PORT, proc, log)
        endpoint = f"https://{host}:{PORT}/{ACCOUNT}"
        _service(endpoint, ca).create_container(CONTAINER)
        yield endpoint, ca, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _service(endpoint: str, ca: Path):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient(
        account_url=endpoint,
        credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY},
        connection_verify=str(ca),
    )


@pytest.fixture(scope="module")
def server(azurite):
    endpoint, ca, _ = azurite
    connection = f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={endpoint};"
    with running_server(
        "--file-upload-storage", connection,
        "--file-upload-container", CONTAINER,
        "--file-upload-storage-ca", str(ca),
    ) as srv:
        # The devices' and the tests' HTTPS clients trust both the server's CA and Azurite's.
        _register_ca(Path(ca).read_text())
        bundle = srv.base_dir / "trust.pem"
        bundle.write_text(srv.ca_pem.strip() + "\n" + Path(ca).read_text())
        yield srv, types.SimpleNamespace(ca_path=str(bundle))


def _device(srv) -> tuple[str, str]:
    from azure.iot.hub import IoTHubRegistryManager

    device_id = unique_id("fus-dev")
    key = random_key()
    IoTHubRegistryManager(srv.hub_connection_string).create_device_with_sas(device_id, key, random_key(), "enabled")
    return device_id, key


def test_node_upload_to_blob_goes_to_the_account(server, azurite):
    srv, trust = server
    endpoint, ca, _ = azurite
    device_id, key = _device(srv)
    name = f"reports/{unique_id('r')}.txt"
    content = "node upload to an external account " * 50
    out = run_node(
        trust,
        "file_upload.js",
        {
            "hubConnectionString": srv.hub_connection_string,
            "deviceConnectionString": f"HostName={srv.hub_host};DeviceId={device_id};SharedAccessKey={key}",
            "blobName": name,
            "content": content,
        },
    )
    assert "error" not in out, out
    n = out["notification"]
    assert n["blobName"] == f"{device_id}/{name}", n
    assert n["blobUri"] == f"{endpoint}/{CONTAINER}/{device_id}/{name}", n
    # The size the server read from the account.
    assert n["blobSizeInBytes"] == len(content), n
    stored = _service(endpoint, ca).get_blob_client(CONTAINER, f"{device_id}/{name}").download_blob().readall()
    assert stored.decode() == content
    # Nothing went to the server's own blob store.
    assert not (Path(srv.data_dir) / "blobs" / "fileupload" / device_id).exists()


def test_python_upload_notify_and_the_operators_cli(server, azurite):
    from azure.iot.device.exceptions import ClientError
    from azure.storage.blob import BlobClient

    srv, _ = server
    endpoint, ca, _ = azurite
    device_id, key = _device(srv)
    name = f"{unique_id('p')}.bin"
    data = bytes(range(256)) * 30
    with hub_device_client(srv, device_id, key) as device:
        info = device.get_storage_info_for_blob(name)
        assert info["hostName"] == endpoint.removeprefix("https://"), info
        assert info["containerName"] == CONTAINER, info
        assert info["blobName"] == f"{device_id}/{name}", info
        assert "sr=b" in info["sasToken"] and "sp=rw" in info["sasToken"], info
        url = f"https://{info['hostName']}/{info['containerName']}/{info['blobName']}{info['sasToken']}"
        BlobClient.from_blob_url(url, connection_verify=str(ca)).upload_blob(data)
        device.notify_blob_upload_status(info["correlationId"], True, 201, "OK")
        # An upload reported successful that the account does not hold: IoT Hub's 400 (the
        # SDK raises a ClientError caused by the ServiceError), and no notification.
        never = device.get_storage_info_for_blob(f"{unique_id('n')}.bin")
        with pytest.raises(ClientError) as refused:
            device.notify_blob_upload_status(never["correlationId"], True, 201, "OK")
        assert "400" in str(refused.value.__cause__), repr(refused.value.__cause__)
    listed = srv.cli("hub", "file", "list", "--device-id", device_id)
    assert [(f["name"], f["size"]) for f in listed] == [(f"{device_id}/{name}", len(data))], listed
    out = Path(srv.base_dir) / f"downloaded-{name}"
    got = srv.cli("hub", "file", "download", "--name", f"{device_id}/{name}", "--out", str(out))
    assert got["bytes"] == len(data), got
    assert out.read_bytes() == data


def test_an_account_that_is_down_is_a_clear_503(server, azurite):
    """Last in the module: it stops Azurite. A success report the server cannot check is
    refused with 503 (the device may report again), and the operator's listing says why."""
    from azure.iot.device.exceptions import ClientError

    srv, _ = server
    *_, proc = azurite
    device_id, key = _device(srv)
    with hub_device_client(srv, device_id, key) as device:
        info = device.get_storage_info_for_blob("late.bin")
        # Gone at once, as a crash: SIGTERM waits for the open keep-alive connections.
        proc.kill()
        proc.wait(timeout=10)
        with pytest.raises(ClientError) as refused:
            device.notify_blob_upload_status(info["correlationId"], True, 201, "OK")
        assert "503" in str(refused.value.__cause__), repr(refused.value.__cause__)
    res = subprocess.run(
        [str(dps_bin()), "hub", "file", "list", "--data-dir", str(srv.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "did not answer" in res.stderr, res.stderr
