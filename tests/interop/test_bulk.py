"""Bulk registry operations (`POST /devices`) with the official SDKs.

- Node `azure-iothub` `Registry.addDevices`, `updateDevices(…, true)`, `removeDevices(…, true)`
  (importModes `create`, `Update`, `Delete`), and the 400 with per-item errors a repeated add
  gets (raised as `ArgumentError` with the result in its body).
- Python `azure-iot-hub` `bulk_create_or_update_devices` (accepts 200 and 400, returns the result),
  with a twin in the create, a failing item among good ones, and the whole-request refusals
  (more than 100 devices: 413; one device twice: a 400 result naming it, nothing done).
"""

from __future__ import annotations

import pytest
from msrest.exceptions import HttpOperationError

from interop_util import random_key, run_node, unique_id


def test_node_add_update_remove_devices(dps_server):
    ids = [unique_id("bulk-n") for _ in range(3)]
    out = run_node(dps_server, "bulk.js", {"hubConnectionString": dps_server.hub_connection_string, "ids": ids})
    assert "error" not in out, out
    for step in ("added", "updated", "removed"):
        assert out[step] == {"isSuccessful": True, "errors": [], "warnings": []}, (step, out)
    assert out["firstKeyLength"] == 44, "empty keys are generated"
    assert out["firstStatus"] == "disabled", out
    again = out["again"]
    assert again["name"] == "ArgumentError", out
    assert again["body"]["isSuccessful"] is False
    assert [(e["deviceId"], e["errorCode"]) for e in again["body"]["errors"]] == [(i, "DeviceAlreadyExists") for i in ids]
    assert out["afterRemove"] == "DeviceNotFoundError", out


def test_python_bulk_create_or_update_devices(registry_manager):
    from azure.iot.hub.models import AuthenticationMechanism, ExportImportDevice, PropertyContainer, SymmetricKey

    def sas():
        return AuthenticationMechanism(
            type="sas", symmetric_key=SymmetricKey(primary_key=random_key(), secondary_key=random_key())
        )

    a, b = unique_id("bulk-p"), unique_id("bulk-p")
    result = registry_manager.bulk_create_or_update_devices(
        [
            ExportImportDevice(id=a, import_mode="create", status="enabled", authentication=sas(),
                               tags={"fleet": "bulk"}, properties=PropertyContainer(desired={"rate": 7})),
            ExportImportDevice(id=b, import_mode="create", status="enabled", authentication=sas()),
        ]
    )
    assert result.is_successful and result.errors == []
    twin = registry_manager.get_twin(a)
    assert twin.tags == {"fleet": "bulk"} and twin.properties.desired["rate"] == 7

    # One item fails, the other applies: 400 with the result, which Python returns.
    result = registry_manager.bulk_create_or_update_devices(
        [
            ExportImportDevice(id=a, import_mode="create", authentication=sas()),
            ExportImportDevice(id=b, import_mode="delete"),
        ]
    )
    assert result.is_successful is False
    assert [(e.device_id, e.error_code) for e in result.errors] == [(a, "DeviceAlreadyExists")]
    with pytest.raises(HttpOperationError) as e:
        registry_manager.get_device(b)
    assert e.value.response.status_code == 404

    # Refused whole: more than 100, or one device twice.
    with pytest.raises(HttpOperationError) as e:
        registry_manager.bulk_create_or_update_devices(
            [ExportImportDevice(id=f"{a}-{i}", import_mode="create") for i in range(101)]
        )
    assert e.value.response.status_code == 413
    assert e.value.response.json()["Message"].startswith("ErrorCode:TooManyDevices;")
    twice = registry_manager.bulk_create_or_update_devices(
        [ExportImportDevice(id=a, import_mode="delete"), ExportImportDevice(id=a.upper(), import_mode="delete")]
    )
    assert twice.is_successful is False
    assert [e.error_code for e in twice.errors] == ["DeviceDefinedMultipleTimes"]
    registry_manager.get_device(a)  # nothing was done
