"""The hub's Event Hub-compatible endpoint, read with the official Event Hubs consumers: Node
`@azure/event-hubs` (EventHubConsumerClient) and Python `azure-eventhub`, over AMQP (5671) and
AMQP over WebSockets (443, `/$servicebus/websocket`), with the connection string `dps info`
prints as `eventHubConnectionString`.

One device sends telemetry with a marker over every transport: the Python device SDK over MQTT,
the Node device SDK over AMQP and over HTTPS (one message and a batch); each consumer reads every
partition from the start and must see all those events with the hub's system properties.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from azure.iot.device import Message

from interop_util import run_node, hub_device_client, random_key, unique_id

PYTHON_MESSAGES = 3
# Then one over Node AMQP, and two over Node HTTPS (one message, a batch of one).
MESSAGES = PYTHON_MESSAGES + 3


_node = run_node


@pytest.fixture(scope="module")
def telemetry(dps_server, registry_manager):
    """(device id, marker): a device that sent MESSAGES events carrying the marker."""
    device_id = unique_id("eh-dev")
    key = random_key()
    registry_manager.create_device_with_sas(device_id, key, random_key(), "enabled")
    marker = unique_id("m")
    with hub_device_client(dps_server, device_id, key) as device:
        for i in range(PYTHON_MESSAGES):
            msg = Message(json.dumps({"marker": marker, "i": i}), content_encoding="utf-8", content_type="application/json")
            msg.message_id = f"{marker}-{i}"
            msg.custom_properties["index"] = str(i)
            device.send_message(msg)
    device_cs = f"HostName={dps_server.hub_host};DeviceId={device_id};SharedAccessKey={key}"
    for transport, index in [("Amqp", PYTHON_MESSAGES), ("Http", PYTHON_MESSAGES + 1)]:
        out = _node(
            dps_server,
            "send_telemetry.js",
            {"deviceConnectionString": device_cs, "transport": transport, "marker": marker, "index": index},
        )
        assert "error" not in out, out
    return device_id, marker


def test_connection_string(dps_server):
    cs = dps_server.info["eventHubConnectionString"]
    assert cs.startswith(f"Endpoint=sb://{dps_server.hub_host}/;SharedAccessKeyName="), cs
    assert ";EntityPath=" in cs


@pytest.mark.parametrize("transport", ["Amqp", "AmqpWs"])
def test_node_consumer_reads_telemetry(dps_server, telemetry, transport):
    device_id, marker = telemetry
    out = _node(
        dps_server,
        "event_hubs.js",
        {
            "connectionString": dps_server.info["eventHubConnectionString"],
            "transport": transport,
            "marker": marker,
            "expected": MESSAGES,
        },
    )
    assert "error" not in out, out
    assert out["eventHub"]["partitionIds"] == ["0", "1", "2", "3"], out
    events = sorted(out["events"], key=lambda e: e["body"]["i"])
    assert [e["body"]["i"] for e in events] == list(range(MESSAGES)), out
    assert len({e["partitionId"] for e in events}) == 1, "one device's events share a partition"
    seqs = [e["sequenceNumber"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == MESSAGES, seqs
    first = events[0]
    system = first["systemProperties"]
    assert system["iothub-connection-device-id"] == device_id, system
    assert system["iothub-message-source"] == "Telemetry", system
    assert "iothub-enqueuedtime" in system and "iothub-connection-auth-method" in system, system
    assert first["properties"]["index"] == "0", first
    assert first["messageId"] == f"{marker}-0", first
    assert first["contentType"] == "application/json", first
    # Every transport's messages carry the hub's system properties and their own properties.
    for e in events:
        i = e["body"]["i"]
        assert e["systemProperties"]["iothub-connection-device-id"] == device_id, e
        assert e["systemProperties"]["iothub-message-source"] == "Telemetry", e
        assert e["properties"]["index"] == str(i), e
    http_single = events[PYTHON_MESSAGES + 1]
    assert http_single["messageId"] == f"{marker}-{PYTHON_MESSAGES + 1}", http_single
    assert http_single["contentType"] == "application/json", http_single
    partition = next(p for p in out["partitions"] if p["partitionId"] == first["partitionId"])
    assert not partition["isEmpty"] and partition["lastEnqueuedSequenceNumber"] >= seqs[-1], partition


@pytest.mark.parametrize(
    "websockets,group", [(False, "$Default"), (True, "created")], ids=["amqp-default", "websockets-created-group"]
)
def test_python_consumer_reads_telemetry(dps_server, telemetry, websockets, group):
    """Over AMQP with `$Default`, event by event (`receive`), and over WebSockets with a
    consumer group made by `dps hub consumer-group create` (as `az iot hub consumer-group
    create` makes one), in batches (`receive_batch`)."""
    from azure.eventhub import EventHubConsumerClient, TransportType

    device_id, marker = telemetry
    if group != "$Default":
        group = unique_id("cg")[:50]
        made = dps_server.cli("hub", "consumer-group", "create", "--name", group)
        assert made["name"] == group, made
    client = EventHubConsumerClient.from_connection_string(
        dps_server.info["eventHubConnectionString"],
        consumer_group=group,
        connection_verify=dps_server.ca_path,
        transport_type=TransportType.AmqpOverWebsocket if websockets else TransportType.Amqp,
    )
    seen, errors = [], []
    done = threading.Event()

    def on_event(context, event):
        if event is None:
            return
        body = event.body_as_json()
        if body.get("marker") == marker:
            seen.append((context.partition_id, event))
            if len(seen) >= MESSAGES:
                done.set()

    with client:
        ids = client.get_partition_ids()
        assert ids == ["0", "1", "2", "3"]
        props = client.get_partition_properties("0")
        assert props["id"] == "0" and "last_enqueued_sequence_number" in props
        # The SDK's synchronous processor visits the partitions in turn on one thread, and
        # `receive` hands over one event per visit; each idle partition's visit waits for its
        # socket (about a second over WebSockets), so six events behind three idle partitions
        # take ~18 s there (~3 s over AMQP), near any fixed wait on a busy machine. So no
        # `max_wait_time` (with one, a visit hands over at most one event per that time), the
        # WebSocket consumer takes its events in batches, and the wait is generous.
        if websockets:
            receive = client.receive_batch
            handler = {"on_event_batch": lambda context, events: [on_event(context, e) for e in events]}
        else:
            receive = client.receive
            handler = {"on_event": on_event}
        worker = threading.Thread(
            target=receive,
            kwargs={
                **handler,
                "on_error": lambda ctx, e: errors.append(repr(e)),
                "starting_position": "-1",
            },
            daemon=True,
        )
        worker.start()
        done.wait(60)
    assert len(seen) == MESSAGES, (len(seen), errors)
    partition, event = seen[0]
    system = event.system_properties
    assert system[b"iothub-connection-device-id"] == device_id.encode(), system
    assert event.properties[b"index"] == str(event.body_as_json()["i"]).encode(), event.properties
    assert event.offset is not None and event.sequence_number is not None
    assert event.enqueued_time is not None
    assert all(p == partition for p, _ in seen)


def test_unknown_consumer_group_is_not_found(dps_server, telemetry):
    out = _node(
        dps_server,
        "event_hubs.js",
        {
            "connectionString": dps_server.info["eventHubConnectionString"],
            "transport": "Amqp",
            "marker": "none",
            "expected": 1,
            "consumerGroup": "nobody",
            "expectError": True,
        },
    )
    assert any("could not be found" in e for e in out.get("errors", [])), out
