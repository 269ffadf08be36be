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
