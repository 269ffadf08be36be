"""Module identities with the official SDKs.

- Node: `azure-iothub` `Registry.addModule` / `getModule` / `getModulesOnDevice` / module twins
  (`getModuleTwin`, `updateModuleTwin`, and `Twin.update`, which patches the module's twin only
  because the twin carries `moduleId`) / `removeModule`, `Client.invokeDeviceMethod(deviceId,
  moduleId, ...)`; `azure-iot-device` `ModuleClient` over MQTT and AMQP (telemetry, an output
  message, twin read, reported and desired patches, a direct method).
- Python: `azure-iot-hub` `create_module_with_sas`, `update_module_with_sas`, `get_module(s)`,
  module twins, `invoke_device_module_method`, `delete_module`; `azure-iot-device`
  `IoTHubModuleClient` over MQTT.
- What the service sees of module telemetry: `iothub-connection-module-id` on the events read
  with `dps hub monitor-events` (the same store the Event Hub-compatible endpoint reads).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess

import pytest
from msrest.exceptions import HttpOperationError

from interop_util import call_with_timeout, random_key, run_node, unique_id


def _events(server, device_id: str, count: int) -> list:
    proc = subprocess.run(
        [
            os.environ.get("DPS_BIN", "dps"),
            "hub", "monitor-events", "--data-dir", str(server.data_dir), "--device-id", device_id,
            "--from-sequence", "0", "--max-events", str(count), "--timeout", "10", "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["event"] for line in proc.stdout.splitlines() if line.strip()]


def _device(registry_manager) -> str:
    device_id = unique_id("mod-dev")
    registry_manager.create_device_with_sas(device_id, random_key(), random_key(), "enabled")
    return device_id


@pytest.mark.parametrize("transport", ["Mqtt", "Amqp"])
def test_node_module_client_and_registry(dps_server, registry_manager, transport):
    device_id = _device(registry_manager)
    module_id = "filter-" + transport.lower()
    marker = unique_id("m")
    out = run_node(
        dps_server,
        "modules.js",
        {
            "hubConnectionString": dps_server.hub_connection_string,
            "hubHost": dps_server.hub_host,
            "deviceId": device_id,
            "moduleId": module_id,
            "transport": transport,
            "marker": marker,
        },
    )
    assert "error" not in out, out
    m = out["module"]
    assert (m["deviceId"], m["moduleId"]) == (device_id, module_id), m
    assert m["authentication"]["type"] == "sas", m
    assert len(m["authentication"]["symmetricKey"]["primaryKey"]) == 44, "the hub generates the keys"
    assert out["moduleIds"] == [module_id], out
    assert out["duplicateError"] and "409301" in out["duplicateError"], out
    assert out["serviceTwin"] == {"moduleId": module_id, "reported": marker}, out
    assert out["desiredPatch"]["fromService"] == marker, out
    assert out["moduleTwinTags"] == {"role": "filter"}, out
    assert not out["deviceTwinTags"], "the device's twin is not the module's"
    assert out["method"] == {"status": 200, "payload": {"module": module_id, "payload": {"hard": True}}}, out
    # azure-iothub names only DeviceNotFound among 404s; any other is a plain `Error`.
    assert out["afterRemove"] == "Error", out
    assert out["missingDevice"] == "DeviceNotFoundError", out

    events = _events(dps_server, device_id, 2)
    assert [e["payload"] for e in events] == [{"marker": marker}, {"output": marker}], events
    for e in events:
        assert e["module"] == module_id, e
        assert e["annotations"]["iothub-connection-module-id"] == module_id, e
        assert json.loads(e["annotations"]["iothub-connection-auth-method"])["scope"] == "module", e
    assert events[0]["properties"]["application"]["marker"] == marker, events[0]


def test_python_modules_registry_twin_and_module_client(dps_server, registry_manager):
    from azure.iot.device import IoTHubModuleClient, Message
    from azure.iot.device import MethodResponse
    from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties

    device_id = _device(registry_manager)
    key, key2 = random_key(), random_key()
    created = registry_manager.create_module_with_sas(device_id, "sensor", None, key, key2)
    assert (created.device_id, created.module_id) == (device_id, "sensor")
    assert created.authentication.symmetric_key.primary_key == key
    # Creating it again is IoT Hub's 409 ModuleAlreadyExistsOnDevice.
    with pytest.raises(HttpOperationError) as e:
        registry_manager.create_module_with_sas(device_id, "sensor", None, key, key2)
    assert e.value.response.status_code == 409
    assert e.value.response.json()["errorCode"] == 409301
    updated = registry_manager.update_module_with_sas(device_id, "sensor", "tester", created.etag, key, key2)
    assert updated.managed_by == "tester" and updated.generation_id == created.generation_id
    with pytest.raises(HttpOperationError) as e:
        registry_manager.get_module(device_id, "absent")
    assert e.value.response.status_code == 404 and e.value.response.json()["errorCode"] == 404010

    conn = f"HostName={dps_server.hub_host};DeviceId={device_id};ModuleId=sensor;SharedAccessKey={key}"
    client = IoTHubModuleClient.create_from_connection_string(
        conn, server_verification_cert=dps_server.ca_pem, connection_retry=False
    )
    patches: "queue.Queue[dict]" = queue.Queue()
    client.on_twin_desired_properties_patch_received = patches.put

    def on_method(request):
        client.send_method_response(MethodResponse.create_from_method_request(request, 201, {"got": request.payload}))

    client.on_method_request_received = on_method
    call_with_timeout(client.connect, what="module connect")
    try:
        client.send_message(Message(json.dumps({"py": "module"})))
        client.send_message_to_output(Message(json.dumps({"py": "output"})), "alerts")
        twin = client.get_twin()
        assert twin["desired"]["$version"] == 1, twin
        client.patch_twin_reported_properties({"firmware": "2.0"})
        service_twin = registry_manager.get_module_twin(device_id, "sensor")
        assert service_twin.module_id == "sensor"
        assert service_twin.properties.reported["firmware"] == "2.0"
        registry_manager.update_module_twin(
            device_id, "sensor", Twin(properties=TwinProperties(desired={"rate": 5})), service_twin.etag
        )
        # The SDK's EnsureDesiredPropertiesStage hands over the whole desired document
        # (`{"$version": 1}`) as a patch after it subscribes; the service's patch follows.
        patch = patches.get(timeout=15)
        while patch.get("$version") == 1:
            patch = patches.get(timeout=15)
        assert patch == {"rate": 5, "$version": 2}, patch
        result = registry_manager.invoke_device_module_method(
            device_id, "sensor", CloudToDeviceMethod(method_name="calibrate", payload={"x": 1}, response_timeout_in_seconds=15)
        )
        assert (result.status, result.payload) == (201, {"got": {"x": 1}})
    finally:
        call_with_timeout(client.shutdown, timeout=15, what="module shutdown")

    events = _events(dps_server, device_id, 2)
    assert [e["payload"] for e in events] == [{"py": "module"}, {"py": "output"}], events
    assert all(e["module"] == "sensor" for e in events), events
    modules = registry_manager.get_modules(device_id)
    assert [m.module_id for m in modules] == ["sensor"]
    assert modules[0].connection_state == "Disconnected"

    # Deleting the device takes its modules with it.
    registry_manager.delete_device(device_id)
    registry_manager.create_device_with_sas(device_id, random_key(), random_key(), "enabled")
    assert registry_manager.get_modules(device_id) == []
    registry_manager.delete_device(device_id)
