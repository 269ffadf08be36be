"""Embedded IoT hub driven by the official `azure-iot-hub` 2.7 IoTHubRegistryManager (REST).

The registry manager talks HTTPS through msrest/requests, which trusts the local CA via
REQUESTS_CA_BUNDLE (set by conftest when the server starts). A device provisioned through
DPS must then be visible in, and controllable through, the hub registry.
"""

from __future__ import annotations

import queue
import time
import uuid

import pytest
from azure.iot.hub import IoTHubHttpRuntimeManager
from azure.iot.hub.models import Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from interop_util import (
    assert_registered,
    call_with_timeout,
    hub_device_client,
    random_key,
    register_device,
    unique_id,
)

PATCH_WAIT_SECONDS = 10


@pytest.fixture(scope="module")
def provisioned_device(dps_server, service_client):
    """(device_id, primary_key) of a device registered through DPS with an individual enrollment."""
    rid = unique_id("hub-dev")
    primary, secondary = random_key(), random_key()
    service_client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary},
            },
            "initialTwin": {"tags": {"building": "b1"}, "properties": {"desired": {"initial": True}}},
        },
    )
    result = register_device(dps_server, rid, primary)
    assert_registered(result, dps_server, rid)
    return {"device_id": rid, "primary": primary, "secondary": secondary}


def test_get_device(registry_manager, provisioned_device):
    device = registry_manager.get_device(provisioned_device["device_id"])
    assert device.device_id == provisioned_device["device_id"]
    assert device.status == "enabled"
    assert device.authentication.type == "sas"
    # the hub identity uses the enrollment's keys (devices reuse them for the hub connection)
    assert device.authentication.symmetric_key.primary_key == provisioned_device["primary"]
    assert device.authentication.symmetric_key.secondary_key == provisioned_device["secondary"]
    assert device.etag


def test_get_twin_has_initial_twin(registry_manager, provisioned_device):
    twin = registry_manager.get_twin(provisioned_device["device_id"])
    assert twin.device_id == provisioned_device["device_id"]
    assert twin.etag
    assert twin.tags.get("building") == "b1", twin.tags
    assert twin.properties.desired.get("initial") is True, twin.properties.desired


def test_desired_patch_reaches_connected_device_and_reported_reaches_registry(
    dps_server, registry_manager, provisioned_device
):
    device_id, key = provisioned_device["device_id"], provisioned_device["primary"]
    marker = uuid.uuid4().hex
    patches: "queue.Queue[dict]" = queue.Queue()

    with hub_device_client(dps_server, device_id, key) as device:
        # Setting the handler subscribes synchronously, so no patch can be missed afterwards.
        call_with_timeout(
            lambda: setattr(device, "on_twin_desired_properties_patch_received", patches.put),
            what="enable twin patches",
        )

        twin = registry_manager.get_twin(device_id)
        updated = registry_manager.update_twin(
            device_id,
            Twin(properties=TwinProperties(desired={"marker": marker, "interval": 5})),
            twin.etag,
        )
        assert updated.properties.desired.get("marker") == marker
        assert updated.properties.desired.get("initial") is True, "PATCH must merge, not replace"

        received = None
        try:
            while received is None:
                patch = patches.get(timeout=PATCH_WAIT_SECONDS)
                # ensure_desired_properties may deliver an earlier full desired set first
                if patch.get("marker") == marker:
                    received = patch
        except queue.Empty:
            pytest.fail(f"device did not receive the desired-property patch within {PATCH_WAIT_SECONDS}s")
        assert received.get("interval") == 5, received
        assert isinstance(received.get("$version"), int), received

        device_twin = call_with_timeout(device.get_twin, what="get_twin")
        assert device_twin["desired"].get("marker") == marker, device_twin

        call_with_timeout(
            lambda: device.patch_twin_reported_properties({"ack": marker}),
            what="patch_twin_reported_properties",
        )

    twin_after = registry_manager.get_twin(device_id)
    assert twin_after.properties.reported.get("ack") == marker, twin_after.properties.reported
    assert twin_after.properties.desired.get("marker") == marker


def test_update_twin_with_stale_etag_fails(registry_manager, provisioned_device):
    from msrest.exceptions import HttpOperationError

    device_id = provisioned_device["device_id"]
    twin = registry_manager.get_twin(device_id)
    registry_manager.update_twin(device_id, Twin(properties=TwinProperties(desired={"n": 1})), twin.etag)
    with pytest.raises(HttpOperationError) as stale:
        registry_manager.update_twin(device_id, Twin(properties=TwinProperties(desired={"n": 2})), twin.etag)
    assert stale.value.response.status_code == 412
    assert registry_manager.get_twin(device_id).properties.desired.get("n") == 1


def test_unknown_device_is_404(registry_manager):
    from msrest.exceptions import HttpOperationError

    with pytest.raises(HttpOperationError) as missing:
        registry_manager.get_device(unique_id("no-such-device"))
    assert missing.value.response.status_code == 404


def test_send_c2d_message_reaches_the_device(dps_server, registry_manager, provisioned_device, monkeypatch):
    """`IoTHubRegistryManager.send_c2d_message`: uamqp to the service AMQP endpoint (CBS put-token
    with the policy's token, `/messages/devicebound`), received by the device over MQTT with its
    properties. uamqp's OpenSSL trusts what `SSL_CERT_FILE` names, as its users point it at a
    private CA."""
    monkeypatch.setenv("SSL_CERT_FILE", dps_server.ca_path)
    device_id, key = provisioned_device["device_id"], provisioned_device["primary"]
    marker = unique_id("c2d")
    with hub_device_client(dps_server, device_id, key) as device:
        registry_manager.send_c2d_message(device_id, f"hello {marker}", properties={"marker": marker, "contentType": "text/plain"})
        msg = call_with_timeout(lambda: device.receive_message(timeout=PATCH_WAIT_SECONDS), PATCH_WAIT_SECONDS + 5)
    assert msg is not None, "the device received no message"
    assert msg.data.decode() == f"hello {marker}"
    assert msg.custom_properties.get("marker") == marker, msg.custom_properties
    assert msg.content_type == "text/plain"


def _read_feedback(runtime, want_id, deadline_s=15):
    """The feedback batch (lock token, records) holding the record for `want_id`, read with the
    generated protocol client and `raw=True`: `IoTHubHttpRuntimeManager.receive_feedback_notification`
    (azure-iot-hub 2.7) throws the response away and returns None, so its users read the body and
    the ETag (the lock token) this way. Batches without the record are completed on the way."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        raw = runtime.protocol.cloud_to_device_messages.receive_feedback_notification(raw=True)
        if raw.response.status_code == 204:
            time.sleep(0.2)
            continue
        lock = raw.response.headers["ETag"].strip('"')
        records = raw.response.json()
        if any(r["originalMessageId"] == want_id for r in records):
            return lock, records, raw.response.headers
        runtime.complete_feedback_notification(lock)
    raise AssertionError(f"no feedback for {want_id} within {deadline_s} s")


def test_c2d_feedback_over_https(dps_server, registry_manager, provisioned_device, monkeypatch):
    """A message sent with `iothub-ack: full` and completed by the device (the Python device SDK
    acknowledges it with its MQTT PUBACK) gives Success feedback, read over HTTPS
    (`/messages/serviceBound/feedback`) with `IoTHubHttpRuntimeManager`: locked by a read,
    read again after an abandon, gone after complete."""
    monkeypatch.setenv("SSL_CERT_FILE", dps_server.ca_path)
    device_id, key = provisioned_device["device_id"], provisioned_device["primary"]
    mid = unique_id("fb")
    runtime = IoTHubHttpRuntimeManager.from_connection_string(dps_server.hub_connection_string)
    with hub_device_client(dps_server, device_id, key) as device:
        registry_manager.send_c2d_message(device_id, "ack me", properties={"messageId": mid, "iothub-ack": "full"})
        msg = call_with_timeout(lambda: device.receive_message(timeout=PATCH_WAIT_SECONDS), PATCH_WAIT_SECONDS + 5)
        assert msg is not None and msg.message_id == mid, msg
        assert msg.ack == "full", msg.ack
        lock, records, headers = _read_feedback(runtime, mid)
    assert headers["Content-Type"] == "application/vnd.microsoft.iothub.feedback.json"
    record = next(r for r in records if r["originalMessageId"] == mid)
    assert record["statusCode"] == "Success" and record["description"] == "Success", record
    assert record["deviceId"] == device_id, record
    assert record["deviceGenerationId"] == registry_manager.get_device(device_id).generation_id, record

    runtime.abandon_feedback_notification(lock)
    lock2, records2, _ = _read_feedback(runtime, mid)
    assert lock2 != lock and records2 == records
    runtime.complete_feedback_notification(lock2)
    with pytest.raises(HttpOperationError) as lost:
        runtime.complete_feedback_notification(lock2)
    assert lost.value.response.status_code == 412
    assert lost.value.response.json()["errorCode"] == 412002
    # The SDK's own receive copes with an empty queue (204) and with a batch (200) alike.
    assert runtime.receive_feedback_notification() is None
