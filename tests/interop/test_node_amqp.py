"""AMQP with the official Node SDKs: provisioning (`azure-iot-provisioning-device-amqp`) and the
device client (`azure-iot-device-amqp`), each over AMQP on 5671 (`Amqp`) and AMQP over WebSockets
on 443 at ``/$iothub/websocket`` (`AmqpWs`, subprotocol ``AMQPWSB10``), with the service side from
`azure-iothub` and `azure-iot-provisioning-service`'s REST twin.

The Node scripts live in tests/interop/node (installed by scripts/setup-node.sh from its lock
file); each prints one JSON object. Node reads the server's CA from ``NODE_EXTRA_CA_CERTS``, as Node
users point it at a private CA.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from interop_util import run_node, derive_device_key, random_key, unique_id
from test_device_x509 import Pki

TRANSPORTS = ["Amqp", "AmqpWs"]
# Each AMQP-over-WebSocket connection is proven by the server's debug line for it.
DPS_SERVE_ARGS = ["--log", "info,dps_server::http::websocket=debug"]
WS_OPENED = "AMQP over WebSocket connection opened"


_node = run_node


def _ws_sessions(server) -> int:
    with open(server.stderr_path, encoding="utf-8", errors="replace") as f:
        return f.read().count(WS_OPENED)


def _provision(server, transport: str, rid: str, **credential) -> dict:
    before = _ws_sessions(server)
    out = _node(
        server,
        "provision.js",
        {"host": server.provisioning_host, "idScope": server.id_scope, "registrationId": rid, "transport": transport, **credential},
    )
    if transport == "AmqpWs" and "result" in out:
        assert _ws_sessions(server) > before, "AmqpWs provisioning did not go through /$iothub/websocket"
    return out


def _assert_assigned(out: dict, server, device_id: str) -> None:
    assert "result" in out, out
    r = out["result"]
    assert r["status"] == "assigned", r
    assert r["assignedHub"] == server.hub_host, r
    assert r["deviceId"] == device_id, r


def _symmetric_enrollment(service_client, rid: str, key: str, **extra) -> None:
    body = {
        "registrationId": rid,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()}},
    }
    body.update(extra)
    service_client.enrollment.create_or_update(id=rid, enrollment=body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_individual_symmetric_key_provisions(dps_server, service_client, transport):
    rid = unique_id(f"node-{transport.lower()}")
    key = random_key()
    _symmetric_enrollment(service_client, rid, key)
    _assert_assigned(_provision(dps_server, transport, rid, symmetricKey=key), dps_server, rid)
    state = service_client.device_registration_state.get(id=rid)
    assert state["status"] == "assigned", state


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_group_derived_key_provisions(dps_server, service_client, transport):
    gid = unique_id("node-grp")
    group_key = random_key()
    service_client.enrollment_group.create_or_update(
        id=gid,
        enrollment_group={
            "enrollmentGroupId": gid,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": group_key, "secondaryKey": random_key()}},
        },
    )
    rid = unique_id("node-grp-dev")
    out = _provision(dps_server, transport, rid, symmetricKey=derive_device_key(group_key, rid))
    _assert_assigned(out, dps_server, rid)


def test_wrong_key_is_refused(dps_server, service_client):
    rid = unique_id("node-badkey")
    _symmetric_enrollment(service_client, rid, random_key())
    out = _provision(dps_server, "Amqp", rid, symmetricKey=random_key())
    assert "error" in out, out
    # Refused in the SASL exchange, before anything is registered: no registration record.
    assert "signature does not match" in dps_server.logs(), dps_server.logs()
    with pytest.raises(Exception):
        service_client.device_registration_state.get(id=rid)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("node-x509"))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_x509_device_provisions_by_its_tls_certificate(dps_server, service_client, pki, transport):
    root = pki.root(f"node {transport}")
    rid = unique_id(f"node-x509-{transport.lower()}")
    dev = pki.device(rid, root)
    service_client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": dev.pem}}}},
        },
    )
    out = _provision(dps_server, transport, rid, certFile=dev.chain_path, keyFile=dev.key_path)
    _assert_assigned(out, dps_server, rid)


def _monitor_events(server, device_id: str) -> list:
    proc = subprocess.run(
        [
            os.environ["DPS_BIN"] if "DPS_BIN" in os.environ else "dps",
            "hub", "monitor-events", "--data-dir", str(server.data_dir), "--device-id", device_id,
            "--from-sequence", "0", "--max-events", "1", "--timeout", "10", "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["event"] for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_device_client_uses_the_hub(dps_server, service_client, transport):
    """Telemetry the service sees, twin read, reported patch, a desired patch from the service,
    and a direct method invoked through `azure-iothub`, all over the device's AMQP connection."""
    rid = unique_id(f"node-hub-{transport.lower()}")
    key = random_key()
    _symmetric_enrollment(service_client, rid, key, initialTwin={"properties": {"desired": {"startup": 1}}})
    _assert_assigned(_provision(dps_server, "Amqp", rid, symmetricKey=key), dps_server, rid)

    before = _ws_sessions(dps_server)
    marker = unique_id("m")
    out = _node(
        dps_server,
        "hub_device.js",
        {
            "hubConnectionString": dps_server.hub_connection_string,
            "deviceConnectionString": f"HostName={dps_server.hub_host};DeviceId={rid};SharedAccessKey={key}",
            "deviceId": rid,
            "transport": transport,
            "marker": marker,
        },
    )
    assert "error" not in out, out
    if transport == "AmqpWs":
        assert _ws_sessions(dps_server) > before, "the device client did not use /$iothub/websocket"
    assert out["twinDesired"]["startup"] == 1, out
    assert out["serviceSeesReported"] == {"marker": marker}, out
    assert out["desiredPatch"]["nodeMarker"] == marker, out
    assert out["method"]["status"] == 200, out
    assert out["method"]["payload"] == {"rebooted": True, "payload": {"delay": 1}}, out

    events = _monitor_events(dps_server, rid)
    assert events, "the service saw no telemetry"
    e = events[0]
    assert e["payload"] == {"marker": marker}, e
    assert e["properties"]["application"]["marker"] == marker, e
    assert e["properties"]["system"]["message_id"] == f"mid-{marker}", e
    assert e["properties"]["system"]["content_type"] == "application/json", e
    assert e["annotations"]["iothub-connection-device-id"] == rid, e


def test_x509_device_client_uses_the_hub(dps_server, service_client, pki):
    root = pki.root("node hub")
    rid = unique_id("node-hub-x509")
    dev = pki.device(rid, root)
    service_client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": dev.pem}}}},
        },
    )
    _assert_assigned(_provision(dps_server, "Amqp", rid, certFile=dev.chain_path, keyFile=dev.key_path), dps_server, rid)
    marker = unique_id("x")
    out = _node(
        dps_server,
        "hub_device.js",
        {
            "hubConnectionString": dps_server.hub_connection_string,
            "deviceConnectionString": f"HostName={dps_server.hub_host};DeviceId={rid};x509=true",
            "deviceId": rid,
            "transport": "Amqp",
            "certFile": dev.chain_path,
            "keyFile": dev.key_path,
            "marker": marker,
        },
    )
    assert "error" not in out, out
    assert out["method"]["status"] == 200, out
    assert _monitor_events(dps_server, rid)[0]["payload"] == {"marker": marker}


@pytest.mark.parametrize(
    ("transport", "device_transport"), [("Amqp", "Amqp"), ("AmqpWs", "Amqp"), ("Amqp", "Mqtt"), ("Amqp", "Http")]
)
def test_service_sends_cloud_to_device_messages_with_feedback(dps_server, service_client, transport, device_transport):
    """`azure-iothub` Client.send over the service's AMQP endpoint (CBS put-token with the hub's
    policy, `/messages/devicebound`) with `ack: 'full'`: the device, listening over AMQP, MQTT or
    HTTPS (polling `/devices/{id}/messages/deviceBound`), receives each message with its id and
    properties and completes it (MQTT: its PUBACK) or rejects it (AMQP and HTTPS: IoT Hub's MQTT
    has no reject); the SDK's feedback receiver
    (`/messages/serviceBound/feedback`) then reads Success and Rejected for them. A device the
    hub does not know is DeviceNotFound."""
    rid = unique_id(f"node-c2d-{transport.lower()}-{device_transport.lower()}")
    key = random_key()
    _symmetric_enrollment(service_client, rid, key)
    _assert_assigned(_provision(dps_server, "Amqp", rid, symmetricKey=key), dps_server, rid)
    before = _ws_sessions(dps_server)
    marker = unique_id("c")
    out = _node(
        dps_server,
        "service_c2d.js",
        {
            "hubConnectionString": dps_server.hub_connection_string,
            "deviceConnectionString": f"HostName={dps_server.hub_host};DeviceId={rid};SharedAccessKey={key}",
            "deviceId": rid,
            "serviceTransport": transport,
            "deviceTransport": device_transport,
            "marker": marker,
        },
    )
    assert "error" not in out, out
    if transport == "AmqpWs":
        assert _ws_sessions(dps_server) > before, "the service client did not use /$iothub/websocket"
    first = out["received"][0]
    assert first["data"]["marker"] == marker, out
    assert first["messageId"] == f"c2d-{marker}", out
    assert first["properties"]["marker"] == marker, out
    expected = {f"c2d-{marker}": "Success"}
    if device_transport != "Mqtt":
        expected[f"c2d-reject-{marker}"] = "Rejected"
    got = {f["originalMessageId"]: f["statusCode"] for f in out["feedback"]}
    assert got == expected, out
    for f in out["feedback"]:
        assert f["deviceId"] == rid, out
        assert f["enqueuedTimeUtc"].endswith("Z"), out
    assert out["feedbackContentType"] == "application/vnd.microsoft.iothub.feedback.json", out
    assert "DeviceNotFound" in out["ghost"] or "not found" in out["ghost"], out
