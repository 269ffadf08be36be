"""Linked hubs across servers: a provisioning service (`dps_server`) links the embedded hub of
another `dps serve` by its connection string (`dps linked-hub create --connection-string …
--ca …`), and devices enrolled to that hub land there.

- The official Python device SDK provisions through the first server, gets the other server's
  hub host name, connects to it there, reads the initial twin and sends telemetry; the other
  hub's registry (the official `azure-iot-hub` service SDK) holds the device and its tags.
- Reprovisioning moves the device back to the first server's hub with its twin migrated and
  its identity removed from the hub it left.
- Failures: an enrollment naming a hub that is not linked is refused when written; a linked hub
  that is down, or whose policy key is wrong, fails the registration with a message saying so
  (read over the device HTTPS API, which shows the failed operation's registration state).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.iot.hub import IoTHubRegistryManager
from msrest.exceptions import HttpOperationError

from conftest import running_server, start_server
from interop_util import call_with_timeout, hub_device_client, random_key, register_device, register_over_https, unique_id

@pytest.fixture(scope="module")
def other_server():
    """A second `dps serve` whose embedded hub the first one links."""
    with running_server() as srv:
        yield srv


def _enroll(service_client, rid: str, key: str, **extra):
    body = {
        "registrationId": rid,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()}},
    }
    body.update(extra)
    return service_client.enrollment.create_or_update(id=rid, enrollment=body)


def _retarget(service_client, rid: str, hub: str) -> None:
    """Points the enrollment `rid` at `hub` (its keys kept: an update without them keeps them)."""
    current = service_client.enrollment.get(id=rid)
    current["iotHubs"] = [hub]
    service_client.enrollment.create_or_update(id=rid, enrollment=current, if_match=current["etag"])


def _link(dps_server, hub_server) -> dict:
    return dps_server.cli(
        "linked-hub", "create", "--connection-string", hub_server.hub_connection_string, "--ca", hub_server.ca_path
    )


def test_the_embedded_hub_is_linked_from_the_start(dps_server):
    hubs = dps_server.cli("linked-hub", "list")
    assert [h["name"] for h in hubs] == [dps_server.hub_host.lower()], hubs
    assert hubs[0]["connectionString"].endswith(";SharedAccessKey=****"), hubs


def test_a_device_lands_on_another_servers_hub_and_moves_back(dps_server, other_server, service_client):
    linked = _link(dps_server, other_server)
    assert linked["name"] == other_server.hub_host.lower(), linked
    assert linked["connectionString"].endswith(";SharedAccessKey=****"), linked
    updated = dps_server.cli(
        "linked-hub", "update", "--hub-host-name", other_server.hub_host, "--allocation-weight", "3", "--location", "westeurope"
    )
    assert (updated["allocationWeight"], updated["location"]) == (3, "westeurope"), updated
    listed = {h["name"] for h in dps_server.cli("linked-hub", "list")}
    assert listed == {dps_server.hub_host.lower(), other_server.hub_host.lower()}, listed

    rid = unique_id("lh-dev")
    key = random_key()
    _enroll(
        service_client,
        rid,
        key,
        allocationPolicy="static",
        iotHubs=[other_server.hub_host],
        initialTwin={"tags": {"site": "b"}, "properties": {"desired": {"interval": 7}}},
    )
    result = register_device(dps_server, rid, key)
    assert result.status == "assigned", result
    assert result.registration_state.assigned_hub == other_server.hub_host, result
    with hub_device_client(other_server, rid, key) as device:
        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert twin["desired"]["interval"] == 7, twin
        call_with_timeout(lambda: device.send_message("hello from a linked hub"), what="send_message")
    there = IoTHubRegistryManager(other_server.hub_connection_string)
    assert there.get_twin(rid).tags == {"site": "b"}
    here = IoTHubRegistryManager(dps_server.hub_connection_string)
    with pytest.raises(HttpOperationError) as absent:
        here.get_device(rid)
    assert absent.value.response.status_code == 404

    # Reprovisioned to the first server's hub: the twin comes along (migrateDeviceData, the
    # default), the identity leaves the other hub.
    there.update_twin(rid, {"tags": {"site": "b", "moved": True}}, "*")
    _retarget(service_client, rid, dps_server.hub_host)
    again = register_device(dps_server, rid, key)
    assert again.registration_state.assigned_hub == dps_server.hub_host, again
    assert again.registration_state.sub_status == "deviceDataMigrated", again
    assert here.get_twin(rid).tags == {"site": "b", "moved": True}
    with pytest.raises(HttpOperationError) as gone:
        there.get_device(rid)
    assert gone.value.response.status_code == 404


def test_an_enrollment_naming_an_unlinked_hub_is_refused(service_client):
    rid = unique_id("lh-unlinked")
    with pytest.raises(HttpResponseError) as refused:
        _enroll(service_client, rid, random_key(), iotHubs=["nowhere.example.test"])
    assert refused.value.status_code == 400
    assert "nowhere.example.test not linked" in str(refused.value), refused.value


def test_a_hub_that_is_down_or_refuses_the_policy_fails_the_registration(dps_server, service_client):
    down = start_server()
    try:
        _link(dps_server, down)
    finally:
        down.stop()
    rid = unique_id("lh-down")
    key = random_key()
    _enroll(service_client, rid, key, allocationPolicy="static", iotHubs=[down.hub_host])
    op = register_over_https(dps_server, rid, key)
    state = op["registrationState"]
    assert (op["status"], state["errorCode"]) == ("failed", 400209), op
    assert f"IoT hub {down.hub_host} did not answer" in state["errorMessage"], op
    # A failed registration leaves no record.
    with pytest.raises(HttpResponseError):
        service_client.device_registration_state.get(id=rid)
    dps_server.cli("linked-hub", "delete", "--hub-host-name", down.hub_host)

    # A hub that answers but refuses the linked policy: a wrong key, then a policy of the hub's
    # own that lacks RegistryWrite (Azure's default `registryRead`). Both 401, saying what the
    # policy needs.
    wrong = start_server()
    try:
        policies = json.loads((Path(wrong.data_dir) / "dps.json").read_text())["hub"]["policies"]
        read_only = next(p for p in policies if p["keyName"] == "registryRead")
        host = f"HostName={wrong.hub_host}"
        for name, cs, why in [
            ("bad-key", f"{host};SharedAccessKeyName=iothubowner;SharedAccessKey={random_key()}", "not signed by a key"),
            (
                "read-only",
                f"{host};SharedAccessKeyName=registryRead;SharedAccessKey={read_only['primaryKey']}",
                "policy 'registryRead' lacks the RegistryWrite right",
            ),
        ]:
            dps_server.cli("linked-hub", "create", "--connection-string", cs, "--ca", wrong.ca_path)
            rid = unique_id(f"lh-{name}")
            _enroll(service_client, rid, key, allocationPolicy="static", iotHubs=[wrong.hub_host])
            op = register_over_https(dps_server, rid, key)
            state = op["registrationState"]
            assert (op["status"], state["errorCode"]) == ("failed", 400209), op
            assert "401" in state["errorMessage"] and "needs RegistryWrite" in state["errorMessage"], op
            assert why in state["errorMessage"], op
    finally:
        wrong.stop()


def test_hubs_in_the_config_file_are_linked_at_start(other_server, tmp_path):
    config = tmp_path / "dps.toml"
    config.write_text(
        "[[linked-hub]]\n"
        f'connection-string = "{other_server.hub_connection_string}"\n'
        f'ca = "{other_server.ca_path}"\n'
        "allocation-weight = 4\n"
        'location = "northeurope"\n'
    )
    srv = start_server("--config", str(config))
    try:
        hubs = {h["name"]: h for h in srv.cli("linked-hub", "list")}
        assert set(hubs) == {srv.hub_host.lower(), other_server.hub_host.lower()}, hubs
        other = hubs[other_server.hub_host.lower()]
        assert (other["allocationWeight"], other["location"]) == (4, "northeurope"), other
    finally:
        srv.stop()


def test_geo_latency_sends_devices_to_the_nearest_hub(other_server, tmp_path):
    """Devices are placed by the network they connect from (`[[geo-network]]`), hubs by their
    linked `location`; each device lands on the nearest hub. Loopback addresses stand in for
    two sites: 127.0.77.0/24 in Dublin (northeurope), 127.0.78.0/24 in a factory near Phoenix
    (a `[[geo-location]]` of its own)."""
    config = tmp_path / "geo.toml"
    config.write_text(
        "[[geo-network]]\nnetwork = \"127.0.77.0/24\"\nlocation = \"northeurope\"\n"
        "[[geo-network]]\nnetwork = \"127.0.78.0/24\"\nlocation = \"factory-az\"\n"
        "[[geo-location]]\nname = \"factory-az\"\nlatitude = 33.3\nlongitude = -111.9\n"
        "[[linked-hub]]\n"
        f'connection-string = "{other_server.hub_connection_string}"\n'
        f'ca = "{other_server.ca_path}"\n'
        'location = "westus3"\n'
    )
    srv = start_server("--config", str(config))
    try:
        srv.cli("linked-hub", "update", "--hub-host-name", srv.hub_host, "--location", "westeurope")
        key = random_key()
        landed = {"eu": set(), "us": set()}
        # Three devices per site: a hash that happened to agree would rarely do it six times.
        for site, source in [("eu", "127.0.77.5"), ("us", "127.0.78.5")] * 3:
            rid = unique_id(f"geo-{site}")
            srv.cli(
                "enrollment", "create", "--registration-id", rid, "--primary-key", key,
                "--allocation-policy", "geolatency",
            )
            op = register_over_https(srv, rid, key, source=source)
            assert op["status"] == "assigned", op
            landed[site].add(op["registrationState"]["assignedHub"])
        assert landed == {"eu": {srv.hub_host}, "us": {other_server.hub_host}}, landed
    finally:
        srv.stop()


def test_an_operator_reprovisions_a_device_that_sticks_to_its_hub(dps_server, other_server, service_client):
    """`dps registration reprovision` moves a device whose enrollment keeps it on its hub
    (`updateHubAssignment: false`) at its next registration."""
    _link(dps_server, other_server)
    rid, key = unique_id("lh-sticky"), random_key()
    _enroll(
        service_client,
        rid,
        key,
        allocationPolicy="static",
        iotHubs=[other_server.hub_host],
        reprovisionPolicy={"updateHubAssignment": False, "migrateDeviceData": True},
    )
    assert register_device(dps_server, rid, key).registration_state.assigned_hub == other_server.hub_host
    _retarget(service_client, rid, dps_server.hub_host)
    assert register_device(dps_server, rid, key).registration_state.assigned_hub == other_server.hub_host

    marked = dps_server.cli("registration", "reprovision", "--registration-id", rid)
    assert [m["registrationId"] for m in marked] == [rid], marked
    moved = register_device(dps_server, rid, key)
    assert moved.registration_state.assigned_hub == dps_server.hub_host, moved
    assert moved.registration_state.sub_status == "deviceDataMigrated", moved
