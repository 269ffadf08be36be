"""`dps serve --immediate-assignment`: register replies carry the final state (`200 assigned`)
instead of `202 assigning`, and the official device SDK accepts that without polling.

The wire-level difference (status code, no operation poll needed) is checked in the Rust engine
and MQTT tests; here the point is that the unmodified Python SDK provisions and then uses the
hub exactly as it does against the default, Azure-like reply.
"""

from __future__ import annotations

from azure.iot.device import Message

from interop_util import (
    assert_registered,
    assert_registration_fails,
    call_with_timeout,
    derive_device_key,
    hub_device_client,
    random_key,
    register_device,
    unique_id,
)

DPS_SERVE_ARGS = ["--immediate-assignment"]


def test_individual_device_is_assigned_from_the_register_reply(dps_server, service_client):
    rid = unique_id("imm-ind")
    key = random_key()
    service_client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()}},
        },
    )
    result = register_device(dps_server, rid, key)
    assert_registered(result, dps_server, rid)
    with hub_device_client(dps_server, rid, key) as device:
        call_with_timeout(lambda: device.send_message(Message('{"immediate": true}')), what="send_message")
        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert "desired" in twin and "reported" in twin, twin
    # Registering again answers immediately too, with the same hub.
    again = register_device(dps_server, rid, key)
    assert_registered(again, dps_server, rid)


def test_group_device_and_rejection_with_immediate_replies(dps_server, service_client):
    gid = unique_id("imm-grp")
    group_key = random_key()
    service_client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": group_key, "secondaryKey": random_key()},
            },
        },
    )
    rid = unique_id("imm-dev")
    assert_registered(register_device(dps_server, rid, derive_device_key(group_key, rid)), dps_server, rid)
    # A wrong key is still refused (the refusal never depended on polling).
    assert_registration_fails(dps_server, unique_id("imm-bad"), random_key())
