"""MQTT over WebSockets with the official `azure-iot-device` 2.14 SDK (`websockets=True`).

With ``websockets=True`` both ProvisioningDeviceClient and IoTHubDeviceClient tunnel MQTT in a
WebSocket on port 443 instead of MQTT over TLS on 8883 (azure/iot/device/common/mqtt_transport.py:
``mqtt.Client(transport="websockets")``, ``ws_set_options(path="/$iothub/websocket")``,
``connect(port=443)``; paho-mqtt 1.6 offers ``Sec-Websocket-Protocol: mqtt``). The SSL context is
the same as on 8883, client certificate included, so X.509 devices authenticate in the TLS
handshake of the 443 connection.

Each WebSocket session is proven by the server's debug line for it (``DPS_SERVE_ARGS`` turns it
on), counted before and after every SDK call: a client that silently used 8883 would not add one.
"""

from __future__ import annotations

import uuid

import requests
from azure.iot.device import Message

from interop_util import (
    assert_registered,
    assert_refused_at_connect,
    assert_registration_fails,
    call_with_timeout,
    error_body,
    hub_device_client,
    hub_device_client_x509,
    random_key,
    register_device,
    register_device_x509,
    unique_id,
)
from test_device_x509 import Pki

WS_OPENED = "MQTT over WebSocket connection opened"
DPS_SERVE_ARGS = ["--log", "info,dps_server::http::websocket=debug"]


def _ws_sessions(server) -> int:
    """How many MQTT-over-WebSocket connections the server has opened so far."""
    with open(server.stderr_path, encoding="utf-8", errors="replace") as f:
        return f.read().count(WS_OPENED)


def _create_symmetric(service_client, rid: str, key: str, **extra) -> None:
    body = {
        "registrationId": rid,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": random_key()}},
    }
    body.update(extra)
    service_client.enrollment.create_or_update(id=rid, enrollment=body)


def test_symmetric_key_device_provisions_and_uses_the_hub_over_websockets(dps_server, service_client):
    rid = unique_id("ws-sym")
    key = random_key()
    _create_symmetric(
        service_client, rid, key, initialTwin={"properties": {"desired": {"telemetryInterval": 30}}}
    )

    before = _ws_sessions(dps_server)
    result = register_device(dps_server, rid, key, websockets=True)
    assert_registered(result, dps_server, rid)
    assert _ws_sessions(dps_server) == before + 1, "register() did not go over a WebSocket"

    marker = uuid.uuid4().hex
    with hub_device_client(dps_server, rid, key, websockets=True) as device:
        assert _ws_sessions(dps_server) == before + 2, "the hub client did not connect over a WebSocket"
        call_with_timeout(lambda: device.send_message(Message('{"temperature": 19.5}')), what="send_message")
        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert twin["desired"].get("telemetryInterval") == 30, twin
        call_with_timeout(
            lambda: device.patch_twin_reported_properties({"ws": marker}), what="patch_twin_reported_properties"
        )
        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert twin["reported"].get("ws") == marker, twin


def test_wrong_key_is_refused_over_websockets(dps_server, service_client):
    rid = unique_id("ws-bad")
    _create_symmetric(service_client, rid, random_key())
    before = _ws_sessions(dps_server)
    exc = assert_registration_fails(dps_server, rid, random_key(), websockets=True)
    assert_refused_at_connect(exc)
    assert _ws_sessions(dps_server) > before


def test_x509_device_over_websockets(dps_server, service_client, tmp_path):
    pki = Pki(tmp_path)
    rid = unique_id("ws-x509")
    dev = pki.device(rid, pki.root("websockets"))
    service_client.enrollment.create_or_update(
        id=rid,
        enrollment={
            "registrationId": rid,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": dev.pem}}}},
        },
    )

    before = _ws_sessions(dps_server)
    result = register_device_x509(dps_server, rid, dev.x509(), websockets=True)
    assert_registered(result, dps_server, rid)
    with hub_device_client_x509(dps_server, rid, dev.x509(), websockets=True) as device:
        assert _ws_sessions(dps_server) == before + 2
        call_with_timeout(lambda: device.send_message('{"x509": "websockets"}'), what="send_message")
        twin = call_with_timeout(device.get_twin, what="get_twin")
        assert "desired" in twin and "reported" in twin, twin


def test_plain_get_on_the_websocket_path_is_a_clear_400(dps_server):
    resp = requests.get(
        f"https://{dps_server.provisioning_host}/$iothub/websocket",
        verify=dps_server.ca_path,
        timeout=15,
    )
    assert resp.status_code == 400, f"HTTP {resp.status_code}: {resp.text!r}"
    body = error_body(resp)
    assert body.get("errorCode") == 400001, body
    assert "WebSocket upgrade" in body.get("message", ""), body
