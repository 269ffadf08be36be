"""Symmetric-key devices using the official `azure-iot-device` 2.14 SDK end to end.

Provisioning: ProvisioningDeviceClient (MQTT over TLS, port 8883, the local CA passed as
PEM text in `server_verification_cert`). Hub: IoTHubDeviceClient against the assigned hub.
Enrollments are created through the `azure-iot-deviceprovisioning` service SDK.
"""

from __future__ import annotations

import uuid

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.iot.device import Message

from interop_util import (
    assert_registered,
    assert_refused_at_connect,
    assert_registration_fails,
    call_with_timeout,
    derive_device_key,
    hub_device_client,
    random_key,
    register_device,
    unique_id,
)


def _create_individual(service_client, rid, primary, secondary=None, **extra):
    body = {
        "registrationId": rid,
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary or random_key()},
        },
    }
    body.update(extra)
    return service_client.enrollment.create_or_update(id=rid, enrollment=body)


def test_individual_enrollment_register_and_use_hub(dps_server, service_client):
    rid = unique_id("dev-ind")
    key = random_key()
    _create_individual(
        service_client,
        rid,
        key,
        initialTwin={"tags": {"floor": "3"}, "properties": {"desired": {"telemetryInterval": 15}}},
    )

    result = register_device(dps_server, rid, key)
    assert_registered(result, dps_server, rid)
    assert result.registration_state.sub_status in (None, "initialAssignment")

    marker = uuid.uuid4().hex
    with hub_device_client(dps_server, rid, key) as device:
        call_with_timeout(lambda: device.send_message(Message('{"temperature": 21.5}')), what="send_message")
        call_with_timeout(lambda: device.send_message("plain text telemetry"), what="send_message(str)")

        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert "desired" in twin and "reported" in twin, twin
        # the enrollment's initialTwin desired properties are applied to the new device
        assert twin["desired"].get("telemetryInterval") == 15, twin

        call_with_timeout(
            lambda: device.patch_twin_reported_properties({"interop": {"marker": marker}, "fw": "1.0.0"}),
            what="patch_twin_reported_properties",
        )
        twin2 = call_with_timeout(device.get_twin, what="get_twin")
        assert twin2["reported"].get("interop") == {"marker": marker}, twin2
        assert twin2["reported"].get("fw") == "1.0.0", twin2
        assert twin2["desired"].get("telemetryInterval") == 15, twin2


def test_individual_enrollment_custom_device_id(dps_server, service_client):
    rid = unique_id("dev-cid")
    device_id = f"{rid}-custom"
    key = random_key()
    _create_individual(service_client, rid, key, deviceId=device_id)

    result = register_device(dps_server, rid, key)
    assert_registered(result, dps_server, device_id)
    with hub_device_client(dps_server, device_id, key) as device:
        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert "desired" in twin


def test_secondary_key_registers(dps_server, service_client):
    rid = unique_id("dev-sec")
    primary, secondary = random_key(), random_key()
    _create_individual(service_client, rid, primary, secondary)
    assert_registered(register_device(dps_server, rid, secondary), dps_server, rid)


def test_reregistration_and_registration_state(dps_server, service_client):
    rid = unique_id("dev-rereg")
    key = random_key()
    _create_individual(service_client, rid, key)

    first = register_device(dps_server, rid, key)
    assert_registered(first, dps_server, rid)

    # re-registration of an already-assigned device: same hub, same device id
    second = register_device(dps_server, rid, key)
    assert_registered(second, dps_server, rid)
    assert second.registration_state.assigned_hub == first.registration_state.assigned_hub
    assert second.registration_state.device_id == first.registration_state.device_id

    # the service SDK sees the registration record
    states = service_client.device_registration_state
    state = states.get(id=rid)
    assert state["registrationId"] == rid
    assert state["status"] == "assigned"
    assert state["assignedHub"] == dps_server.hub_host
    assert state["deviceId"] == rid
    assert state.get("etag")
    # ... and so does the enrollment's embedded registration state
    assert service_client.enrollment.get(id=rid)["registrationState"]["status"] == "assigned"

    # delete the record (SDK requires 204), then it is gone
    states.delete(id=rid)
    with pytest.raises(ResourceNotFoundError):
        states.get(id=rid)

    # registering again works and recreates the record
    third = register_device(dps_server, rid, key)
    assert_registered(third, dps_server, rid)
    assert states.get(id=rid)["status"] == "assigned"

    # the device still authenticates against the hub with its key
    with hub_device_client(dps_server, rid, key) as device:
        assert "reported" in call_with_timeout(device.get_twin, what="get_twin")


def test_disabled_individual_enrollment_is_rejected(dps_server, service_client):
    rid = unique_id("dev-dis")
    key = random_key()
    _create_individual(service_client, rid, key)
    assert_registered(register_device(dps_server, rid, key), dps_server, rid)

    # disable the enrollment (GET -> modify -> PUT with If-Match): registration now fails
    current = service_client.enrollment.get(id=rid)
    current.pop("registrationState", None)
    current["provisioningStatus"] = "disabled"
    service_client.enrollment.create_or_update(id=rid, enrollment=current, if_match=current["etag"])
    assert_registration_fails(dps_server, rid, key)

    # an enrollment created disabled never registers
    rid2 = unique_id("dev-dis")
    _create_individual(service_client, rid2, key, provisioningStatus="disabled")
    assert_registration_fails(dps_server, rid2, key)


def test_group_enrollment_derived_key(dps_server, service_client):
    gid = unique_id("grp")
    group_key = random_key(64)
    service_client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": group_key, "secondaryKey": random_key(64)},
            },
            "initialTwin": {"properties": {"desired": {"groupSetting": "on"}}},
        },
    )

    rid = unique_id("grp-dev")
    device_key = derive_device_key(group_key, rid)
    result = register_device(dps_server, rid, device_key)
    assert_registered(result, dps_server, rid)

    with hub_device_client(dps_server, rid, device_key) as device:
        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert twin["desired"].get("groupSetting") == "on", twin
        call_with_timeout(lambda: device.send_message("hello from a group device"), what="send_message")

    # a second device of the same group gets its own identity
    rid2 = unique_id("grp-dev")
    assert_registered(register_device(dps_server, rid2, derive_device_key(group_key, rid2)), dps_server, rid2)

    # registration states of the group's devices
    registered = {
        s["registrationId"]: s for s in service_client.device_registration_state.query(id=gid)
    }
    assert {rid, rid2} <= set(registered), registered
    assert registered[rid]["status"] == "assigned"
    assert service_client.device_registration_state.get(id=rid)["deviceId"] == rid

    # the group key itself is not a valid device key; nor is another device's derived key
    assert_refused_at_connect(assert_registration_fails(dps_server, unique_id("grp-raw"), group_key))
    assert_refused_at_connect(assert_registration_fails(dps_server, unique_id("grp-other"), device_key))
