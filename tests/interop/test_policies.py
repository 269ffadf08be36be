"""Shared access policies made with `dps policy` (as `az iot hub policy` / `az iot dps policy`
make them in Azure), then used by the official SDKs the way their users use a policy's
connection string: azure-iot-hub's IoTHubRegistryManager, azure-eventhub's consumer on the
hub's Event Hub-compatible endpoint, and azure-iot-deviceprovisioning's client. The SDKs do not
manage policies (Azure does that on its management plane), so the CLI makes them here; what is
judged is that each policy is in force at once, only for its rights, and that a key made anew
or a policy deleted is refused.
"""

from __future__ import annotations

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from interop_util import random_key, unique_id


@pytest.fixture(scope="module")
def server(dps_server):
    """The module's own server (`dps_server` is one per module): its policies are changed here."""
    return dps_server


def _hub_cs(server, name: str, key: str) -> str:
    return f"HostName={server.hub_host};SharedAccessKeyName={name};SharedAccessKey={key}"


def _event_hub_cs(server, name: str, key: str) -> str:
    """The `dps info` Event Hub-compatible connection string, with another policy's name and key."""
    parts = dict(p.split("=", 1) for p in server.info["eventHubConnectionString"].split(";") if p)
    return f"Endpoint={parts['Endpoint']};SharedAccessKeyName={name};SharedAccessKey={key};EntityPath={parts['EntityPath']}"


def test_a_hub_policy_is_in_force_at_once_and_only_for_its_rights(server):
    from azure.eventhub import EventHubConsumerClient
    from azure.iot.hub import IoTHubRegistryManager
    from msrest.exceptions import HttpOperationError

    name = unique_id("backend")[:60]
    made = server.cli("policy", "create", "--hub-name", server.hub_host, "--pn", name, "--rights", "RegistryRead", "ServiceConnect")
    assert made["rights"] == "RegistryRead, ServiceConnect", made
    key = made["primaryKey"]

    # RegistryRead: reads the registry; RegistryWrite is not the policy's.
    registry = IoTHubRegistryManager.from_connection_string(_hub_cs(server, name, key))
    registry.get_devices()
    with pytest.raises(HttpOperationError) as denied:
        registry.create_device_with_sas(unique_id("dev"), random_key(), random_key(), "enabled")
    assert denied.value.response.status_code == 401
    assert denied.value.response.json()["errorCode"] == 401001

    # ServiceConnect: reads the Event Hub-compatible endpoint.
    consumer = EventHubConsumerClient.from_connection_string(
        _event_hub_cs(server, name, key), consumer_group="$Default", connection_verify=server.ca_path
    )
    with consumer:
        assert consumer.get_partition_ids() == ["0", "1", "2", "3"]

    # A fresh primary key: the old one is refused, the new one and the secondary work.
    renewed = server.cli("policy", "regenerate-key", "--hub-name", server.hub_host, "--pn", name, "--rk", "primary")
    assert renewed["primaryKey"] != key and renewed["secondaryKey"] == made["secondaryKey"]
    with pytest.raises(HttpOperationError) as stale:
        IoTHubRegistryManager.from_connection_string(_hub_cs(server, name, key)).get_devices()
    assert stale.value.response.status_code == 401
    for fresh in (renewed["primaryKey"], renewed["secondaryKey"]):
        IoTHubRegistryManager.from_connection_string(_hub_cs(server, name, fresh)).get_devices()

    server.cli("policy", "delete", "--hub-name", server.hub_host, "--pn", name)
    with pytest.raises(HttpOperationError) as gone:
        IoTHubRegistryManager.from_connection_string(_hub_cs(server, name, renewed["primaryKey"])).get_devices()
    assert gone.value.response.status_code == 401


def test_a_read_only_service_policy_reads_and_cannot_write(server):
    from azure.iot.deviceprovisioning import DeviceProvisioningClient

    name = unique_id("dashboard")[:60]
    made = server.cli("policy", "create", "--pn", name, "--rights", "EnrollmentRead,RegistrationStatusRead")
    cs = f"HostName={server.service_host};SharedAccessKeyName={name};SharedAccessKey={made['primaryKey']}"
    client = DeviceProvisioningClient.from_connection_string(cs, connection_verify=server.ca_path, retry_total=0)
    try:
        list(client.enrollment.query(query_specification={"query": "*"}))
        rid = unique_id("e")
        with pytest.raises(HttpResponseError) as denied:
            client.enrollment.create_or_update(
                id=rid,
                enrollment={
                    "registrationId": rid,
                    "attestation": {"type": "symmetricKey", "symmetricKey": {}},
                },
            )
        assert denied.value.status_code == 401
        server.cli("policy", "delete", "--pn", name)
        with pytest.raises(ClientAuthenticationError):
            list(client.enrollment.query(query_specification={"query": "*"}))
    finally:
        client.close()


def test_the_audit_trail_has_what_the_sdks_did(server):
    """Registrations made with the Python provisioning SDK (one assigned, one with a wrong key)
    and a hub device made with the registry manager are in `GET /audit`, as JSON and as JSON
    lines, with who did what; no key is in it."""
    import json

    import requests
    from azure.iot.hub import IoTHubRegistryManager

    from interop_util import SERVICE_API_VERSION, register_device, service_sas, wait_for

    rid = unique_id("audited")
    key = random_key()
    server.cli("enrollment", "create", "--registration-id", rid, "--primary-key", key)
    assert register_device(server, rid, key).status == "assigned"
    with pytest.raises(Exception):
        register_device(server, rid, random_key())
    device = unique_id("audited-dev")
    IoTHubRegistryManager.from_connection_string(server.hub_connection_string).create_device_with_sas(
        device, random_key(), random_key(), "enabled"
    )

    def audit(accept: str = "application/json", **params):
        return requests.get(
            f"https://{server.service_host}/audit",
            params={"api-version": SERVICE_API_VERSION, **params},
            headers={
                "Authorization": service_sas(server.service_host, server.service_key, server.service_policy),
                "Accept": accept,
            },
            verify=server.ca_path,
            timeout=15,
        )

    def attempts():
        answer = audit(registrationId=rid, kind="registration")
        assert answer.status_code == 200, answer.text
        entries = answer.json()
        return entries if len(entries) >= 2 else None

    entries = wait_for(attempts)
    assert [e["outcome"] for e in entries] == ["assigned", "unauthorized"], entries
    assert entries[0]["transport"] == "mqtt" and entries[0]["assignedHub"] == server.hub_host
    assert entries[1]["errorCode"] == 401000

    lines = audit("application/x-ndjson", kind="change")
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    changes = [json.loads(line) for line in lines.text.splitlines()]
    made = [c for c in changes if c.get("deviceId") == device]
    assert made and made[0]["operation"] == f"PUT /devices/{device}" and made[0]["api"] == server.hub_host, changes
    assert made[0]["policy"] == "iothubowner"
    assert key not in lines.text

    refused = audit(top="0")
    assert refused.status_code == 400 and "top must be from 1 to 1000" in refused.text
