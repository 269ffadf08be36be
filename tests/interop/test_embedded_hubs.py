"""Several embedded hubs in one server (`dps serve --hub-hostname A --hub-hostname B`), so that
allocation among hubs can be tried on one machine.

- `dps info` lists each hub with connection strings of its own keys; both are linked hubs.
- A hashed enrollment group spreads devices provisioned with the official Python SDK over both
  hubs; an official device SDK (Python over MQTT, Node over MQTT and AMQP) then reaches each
  device's hub. The hub names do not resolve by DNS here, so each device's connection string
  names the server as its `GatewayHostName`, as the SDKs reach a hub through a gateway: the SDK
  connects to the server and names its hub in the MQTT username and the SAS audiences, which is
  how the server tells the hubs apart.
- Each hub's registry (REST, with that hub's owner key) holds its own devices only, with the
  twins their devices reported; the other hub's key opens nothing there.
"""

from __future__ import annotations

import requests

from interop_util import (
    call_with_timeout,
    derive_device_key,
    random_key,
    register_device,
    run_node,
    sas_token,
    unique_id,
)

HUB_A = "hub-a.embedded.test"
HUB_B = "hub-b.embedded.test"
DPS_SERVE_ARGS = ["--hub-hostname", HUB_A, "--hub-hostname", HUB_B]
HUB_API_VERSION = "2021-04-12"


def _hubs(server) -> dict:
    """Host name → `dps info` entry of each embedded hub."""
    return {h["hostName"]: h for h in server.info["hubs"]}


def _owner(server, hub: str) -> tuple[str, str]:
    cs = dict(part.split("=", 1) for part in _hubs(server)[hub]["connectionString"].split(";"))
    return cs["SharedAccessKeyName"], cs["SharedAccessKey"]


def _registry(server, hub: str, path: str, *, signed_by: str | None = None) -> requests.Response:
    """GET `path` of `hub`'s registry API on the server, with a token for `hub` signed by the
    owner key of `signed_by` (default: `hub` itself)."""
    policy, key = _owner(server, signed_by or hub)
    return requests.get(
        f"https://{server.host}{path}",
        params={"api-version": HUB_API_VERSION},
        headers={"Authorization": sas_token(hub, key, policy=policy)},
        verify=server.ca_path,
        timeout=15,
    )


def _connection_string(server, hub: str, device_id: str, key: str) -> str:
    return f"HostName={hub};DeviceId={device_id};SharedAccessKey={key};GatewayHostName={server.host}"


def _provision_until_both_hubs(server, service_client) -> dict:
    """Provisions devices of one hashed group until each hub has one: hub → (device id, key)."""
    gid = unique_id("multi-hub")
    group_key = random_key(64)
    service_client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": group_key, "secondaryKey": random_key(64)}},
            "allocationPolicy": "hashed",
            "initialTwin": {"properties": {"desired": {"fleet": gid}}},
        },
    )
    landed: dict = {}
    for _ in range(16):
        rid = unique_id("mh-dev")
        key = derive_device_key(group_key, rid)
        result = register_device(server, rid, key)
        assert result.status == "assigned", result
        hub = result.registration_state.assigned_hub
        assert hub in (HUB_A, HUB_B), hub
        landed.setdefault(hub, (rid, key))
        if len(landed) == 2:
            return landed
    raise AssertionError(f"16 hashed registrations all landed on {list(landed)}")


def test_each_hub_is_listed_with_its_own_keys_and_linked(dps_server):
    hubs = _hubs(dps_server)
    assert list(hubs) == [HUB_A, HUB_B], dps_server.info["hubs"]
    assert _owner(dps_server, HUB_A)[1] != _owner(dps_server, HUB_B)[1]
    linked = sorted(h["name"] for h in dps_server.cli("linked-hub", "list"))
    assert linked == [HUB_A, HUB_B], linked


def test_devices_spread_over_both_hubs_and_the_sdks_reach_each(dps_server, service_client):
    from azure.iot.device import IoTHubDeviceClient

    landed = _provision_until_both_hubs(dps_server, service_client)
    for hub, (rid, key) in landed.items():
        other = HUB_B if hub == HUB_A else HUB_A
        # The official Python device SDK over MQTT: twin read and reported patch on its hub.
        client = IoTHubDeviceClient.create_from_connection_string(
            _connection_string(dps_server, hub, rid, key),
            server_verification_cert=dps_server.ca_pem,
            connection_retry=False,
        )
        try:
            call_with_timeout(client.connect, what=f"connect {rid} to {hub}")
            twin = call_with_timeout(client.get_twin, what="get_twin")
            assert twin["desired"]["fleet"].startswith("multi-hub"), twin
            call_with_timeout(lambda: client.patch_twin_reported_properties({"python": hub}), what="reported patch")
        finally:
            call_with_timeout(client.shutdown, timeout=15, what="shutdown")

        # The official Node device SDK, over MQTT and over AMQP, on the same hub.
        for transport in ("Mqtt", "Amqp"):
            marker = unique_id(transport.lower())
            out = run_node(
                dps_server,
                "gateway_device.js",
                {"deviceConnectionString": _connection_string(dps_server, hub, rid, key), "transport": transport, "marker": marker},
            )
            assert "error" not in out, (hub, transport, out)
            assert out["twinDesired"]["fleet"].startswith("multi-hub"), out
            reported = _registry(dps_server, hub, f"/twins/{rid}").json()["properties"]["reported"]
            assert (reported["python"], reported["node"]) == (hub, marker), reported

        # The device is its hub's alone: the other hub has no such device, and the other hub's
        # owner key opens nothing on this one.
        assert _registry(dps_server, hub, f"/devices/{rid}").status_code == 200
        assert _registry(dps_server, other, f"/devices/{rid}").status_code == 404
        assert _registry(dps_server, hub, f"/devices/{rid}", signed_by=other).status_code == 401
