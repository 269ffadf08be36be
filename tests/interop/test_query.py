"""The IoT Hub query language and the DPS query, with the official SDKs.

- Python `azure-iot-hub` `query_iot_hub` (WHERE over tags, paged by `max_item_count` and the
  continuation token), a bad query's 400.
- Node `azure-iothub` `Registry.createQuery` with `nextAsTwin` paging while `hasMoreResults`,
  a `GROUP BY` aggregate through `next`, `FROM devices.modules`, a bad query's `ArgumentError`.
- Python `azure-iot-deviceprovisioning` `enrollment.query` with a WHERE (Azure's DPS ignores
  WHERE; dps applies it) and with the texts Azure's users send that are not queries (`SELECT *`).
"""

from __future__ import annotations

import pytest
from msrest.exceptions import HttpOperationError

from interop_util import random_key, run_node, unique_id


def _fleet(registry_manager, size: int = 6) -> tuple[str, list[str]]:
    from azure.iot.hub.models import Twin

    fleet = unique_id("fleet")
    ids = [f"{fleet}-{n}" for n in range(size)]
    for n, device_id in enumerate(ids):
        registry_manager.create_device_with_sas(device_id, random_key(), random_key(), "enabled")
        registry_manager.update_twin(device_id, Twin(tags={"fleet": fleet, "n": n, "even": n % 2 == 0}), "*")
    registry_manager.create_module_with_sas(ids[0], "agent", None, random_key(), random_key())
    from azure.iot.hub.models import Twin as ModuleTwin

    registry_manager.update_module_twin(ids[0], "agent", ModuleTwin(tags={"fleet": fleet}), "*")
    return fleet, ids


def test_python_query_with_where_pages_through_matches(registry_manager):
    from azure.iot.hub.models import QuerySpecification

    fleet, ids = _fleet(registry_manager)
    spec = QuerySpecification(query=f"SELECT * FROM devices WHERE tags.fleet = '{fleet}' AND tags.n >= 2")
    seen, token, pages = [], None, 0
    while True:
        result = registry_manager.query_iot_hub(spec, token, 3)
        pages += 1
        assert result.type == "Twin"  # .NET casing: the C# SDK parses it case-sensitively
        assert len(result.items) <= 3
        seen.extend(t.device_id for t in result.items)
        token = result.continuation_token
        if not token:
            break
    assert seen == ids[2:]
    assert pages >= 2
    # Only the devices asked for, read by key.
    spec = QuerySpecification(query=f"SELECT * FROM devices WHERE deviceId IN ['{ids[1]}', '{ids[4]}']")
    assert [t.device_id for t in registry_manager.query_iot_hub(spec).items] == [ids[1], ids[4]]

    with pytest.raises(HttpOperationError) as e:
        registry_manager.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE tags.fleet = = 1"))
    assert e.value.response.status_code == 400
    body = e.value.response.json()
    assert body["Message"].startswith("ErrorCode:ArgumentInvalid;the query is invalid at character 41"), body


def test_node_create_query_next_as_twin_aggregates_and_modules(dps_server, registry_manager):
    fleet, ids = _fleet(registry_manager)
    out = run_node(dps_server, "query.js", {"hubConnectionString": dps_server.hub_connection_string, "fleet": fleet, "pageSize": 2})
    assert "error" not in out, out
    assert out["twinIds"] == ids[2:], out
    # Two full pages; a third, empty one when devices of other tests follow in key order.
    assert out["twinPages"] in (2, 3), out
    assert out["twinIsTwin"], out
    assert sorted(out["groups"], key=lambda g: g["even"]) == [{"even": False, "n": 3}, {"even": True, "n": 3}], out
    assert out["modules"] == [f"{ids[0]}/agent"], out
    assert out["badQuery"].startswith("ArgumentError: the query is invalid at character"), out


def test_dps_enrollment_query_applies_where(service_client):
    rids = [unique_id("q-enr") for _ in range(4)]
    for n, rid in enumerate(rids):
        service_client.enrollment.create_or_update(
            rid,
            {
                "registrationId": rid,
                "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": random_key(), "secondaryKey": random_key()}},
                "provisioningStatus": "enabled" if n % 2 == 0 else "disabled",
            },
        )
    picked = ", ".join(f"'{r}'" for r in rids)
    query = f"SELECT * FROM enrollments WHERE registrationId IN [{picked}] AND provisioningStatus = 'disabled'"
    got = [e["registrationId"] for e in service_client.enrollment.query({"query": query}, top=1)]
    assert got == sorted([rids[1], rids[3]]), got
    # What Azure's users send that is not a query at all still lists everything, as Azure does.
    everything = [e["registrationId"] for e in service_client.enrollment.query({"query": "SELECT *"})]
    assert set(rids) <= set(everything)
