"""The embedded hub and DPS on PostgreSQL (`dps serve --store postgres://…`, issue 15), judged by
the official SDKs: the hub registry module's tests (devices provisioned through DPS, twins and
desired patches, C2D with feedback over AMQP and HTTPS, ...) run again, unchanged, against a
server whose every piece of data is in PostgreSQL; then the server is killed and started again,
and finds its identity and its devices there.

Needs `DPS_TEST_POSTGRES` (a database URL whose user may create databases), which
`scripts/test.sh` sets from its throwaway cluster; each run of this module makes a database of
its own.
"""

from __future__ import annotations

from azure.iot.device import Message

# The same tests, collected again here: they run against this module's server.
from test_hub_registry import *  # noqa: F401,F403
from interop_util import call_with_timeout, fresh_postgres_database, hub_device_client


DPS_SERVE_ARGS = ["--store", fresh_postgres_database()]


def test_zz_a_killed_server_finds_its_identity_and_devices_in_postgresql(
    dps_server, registry_manager, provisioned_device
):
    """Last in the module (it restarts the server): SIGKILL, start again on the same database.
    The ID scope and the hub's keys are the database's (the registry manager's connection
    string still works), the device is still registered, and it connects and sends telemetry
    with its key."""
    device_id, key = provisioned_device["device_id"], provisioned_device["primary"]
    for file in ("dps.db", "hub.db", "telemetry.db"):
        assert not (dps_server.data_dir / file).exists(), f"{file} made although the store is PostgreSQL"
    scope = dps_server.id_scope
    dps_server.kill9()
    dps_server.restart()
    assert dps_server.cli("info")["idScope"] == scope
    assert registry_manager.get_device(device_id).status == "enabled"
    with hub_device_client(dps_server, device_id, key) as device:
        call_with_timeout(lambda: device.send_message(Message('{"after": "restart"}')), what="send_message")
    assert registry_manager.get_twin(device_id).properties.desired.get("initial") is True
